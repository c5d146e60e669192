"""The learning loop: labels that arrive after the fact, folded into the signal model's posterior exactly.

The signal model's posterior is conjugate: it is a function of counts
(:class:`~bayes_defense.fitting.signal_model.SignalStatistics`). So the
defender need not replay its log when an operator confirms or rejects an
alert. A :class:`SignalLedger` is plugged into the model filter's window
hook (``ModelDefender.record``): every closed window is counted at once as
benign (with its faults unknown), and the last ``buffer_windows`` windows'
signals are kept. :meth:`SignalLedger.learn` then moves the labelled windows
from benign to the attack's stage counts (removing their benign counts and
adding their attack counts, by the fit's own
:func:`~bayes_defense.fitting.signal_model.count_windows`, and correcting the
phase changes at the label's edges), and draws the posterior from the
updated counts with :func:`~bayes_defense.fitting.signal_model.posterior_from_statistics`.

What holds exactly: the ledger's counts after ``learn(labels)`` equal those
of :func:`~bayes_defense.fitting.signal_model.fit_signal_model` on the same
windows with the same labels (counts of whole windows are whole numbers, so
the subtraction is exact in floating point), and with the same settings and
seed the posterior draws are the same numbers. A ledger started from a fitted
posterior adds to that fit's statistics, which equals one fit on all the
logs. Bounded memory: windows older than the buffer stay counted with the
stage they had, and a label that would relabel one of them is refused with
the reason (a refit from the logs handles it).

Labels (a list, applied in order):

- a confirmed attack: the ``labels.json`` record ``{"attack", "nodes",
  "precursor_start", "execution_start", "end"}`` (``"verdict": "attack"``
  optional, ``victims`` as in the simulator's labels);
- a rejected alert: ``{"verdict": "not_attack", "attack": name or null,
  "start": s, "end": e}``, or ``"ts"`` (the alert's time) instead of
  ``start``/``end`` for the window that raised it. The windows are benign for
  that attack (every attack when ``attack`` is null). Windows count as benign
  until labelled, so a rejection changes the counts only where an earlier
  label had marked them; it is the record that the operator has seen them.

Examples
--------
>>> from bayes_defense.sim import Simulation, random_scenario
>>> from bayes_defense.stream.model_filter import ModelDefender
>>> sim = Simulation(random_scenario(5, nodes=4, duration=200, attacks=["replay"], faults=[]))
>>> defender = ModelDefender(ensemble=4, planner=None)
>>> defender.record = ledger = SignalLedger(num_samples=50)
>>> _ = defender.observe_batch(sim.events()); _ = defender.flush()
>>> posterior = ledger.learn(sim.labels)
>>> posterior.info["labelled_windows"] > 0, posterior.num_draws
(True, 50)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bayes_defense.errors import InvalidInputError
from bayes_defense.fitting.signal_model import (
    SignalPosterior,
    SignalStatistics,
    count_labelled_windows,
    posterior_from_statistics,
    window_phases,
)
from bayes_defense.models.registry import tracked_attacks
from bayes_defense.stream.signals import SIGNALS, WindowSignals

__all__ = ["LEDGER_FORMAT", "LEDGER_VERSION", "DEFAULT_BUFFER_WINDOWS", "VERDICTS", "SignalLedger"]

LEDGER_FORMAT = "bayes_defense.signal_ledger"
LEDGER_VERSION = 1
#: Windows whose signals the ledger keeps by default: an hour of one-second windows (a few MB).
DEFAULT_BUFFER_WINDOWS = 3600
#: What a label may say: the attack happened, or the alert was not an attack.
VERDICTS = ("attack", "not_attack")
_STAGES = (0, 2, 3)
_DEFAULT_SETTINGS = {"num_samples": 400, "prior_strength": 2.0, "seed": 0}


def _number(label: Mapping[str, Any], key: str, where: str) -> float:
    value = label.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInputError(f"{where}: {key!r} must be a finite number of seconds; got {value!r}")
    return float(value)


def _names(label: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = label.get(key, [])
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(n, str) for n in value):
        raise InvalidInputError(f"{where}: {key!r} must be a list of node names; got {value!r}")
    return list(value)


def _pair_changes(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """The phase changes between two consecutive windows' stages, ``(A, 3)``, as the fit counts them."""
    out = np.zeros((before.size, 3))
    out[:, 0] = (before == 0) & (after == 2)
    out[:, 1] = (before == 2) & (after == 3)
    out[:, 2] = (before == 3) & (after != 3)
    return out


class SignalLedger:
    """Sufficient statistics of every window the defender closed, and the signals of the recent ones.

    Parameters
    ----------
    base : SignalPosterior, SignalStatistics or None
        The fit the defender started from: its statistics are the ledger's
        starting point (a posterior saved by this release carries them), and
        its settings the default ones. None: the prior.
    buffer_windows : int
        Windows whose signals are kept for relabelling.
    window : float
        Seconds per window (the defender's).
    num_samples, prior_strength, seed : optional
        Settings of :func:`~bayes_defense.fitting.signal_model.posterior_from_statistics`;
        default those of ``base``, else 400, 2.0 and 0.

    Examples
    --------
    >>> ledger = SignalLedger(buffer_windows=2)
    >>> x = np.zeros((2, len(SIGNALS)))
    >>> for end in (1.0, 2.0, 3.0):
    ...     ledger.append((end, WindowSignals(("r0",), 0, x)))
    >>> ledger.windows, ledger.buffered_ends.tolist()
    (3, [2.0, 3.0])
    >>> ledger.learn([{"attack": "replay", "nodes": ["r0"], "precursor_start": 0.0, "execution_start": 1.0,
    ...                "end": 2.0}])
    Traceback (most recent call last):
    ...
    bayes_defense.errors.InvalidInputError: label 0 (replay) starts at 0.0 s, but the ledger keeps the signals of windows from 1.0 s on (its buffer holds 2 windows); older windows cannot be relabelled exactly: refit from the logs (bayes-defense fit) or give the ledger a larger buffer_windows
    """

    def __init__(self, base: Any = None, *, buffer_windows: int = DEFAULT_BUFFER_WINDOWS, window: float = 1.0,
                 num_samples: int | None = None, prior_strength: float | None = None, seed: int | None = None) -> None:
        if isinstance(buffer_windows, bool) or not isinstance(buffer_windows, int) or buffer_windows < 1:
            raise InvalidInputError(f"buffer_windows must be a whole number >= 1; got {buffer_windows!r}")
        if isinstance(window, bool) or not isinstance(window, (int, float)) or not (math.isfinite(window) and window > 0):
            raise InvalidInputError(f"window must be a number of seconds > 0; got {window!r}")
        self.attacks = tracked_attacks()
        settings = dict(_DEFAULT_SETTINGS)
        if base is None:
            statistics = SignalStatistics.zeros(self.attacks)
        elif isinstance(base, SignalStatistics):
            statistics = base.copy()
        elif isinstance(base, SignalPosterior):
            if base.statistics is None:
                raise InvalidInputError("this posterior carries no sufficient statistics (it was saved by an older "
                                        "release or built from draws); refit it with bayes-defense fit to learn on it")
            statistics = base.statistics
            settings.update({k: v for k, v in base.info.get("settings", {}).items() if k in settings})
        else:
            raise InvalidInputError(f"base must be a SignalPosterior, SignalStatistics or None; got "
                                    f"{type(base).__name__}")
        statistics.check_current(self.attacks)
        for key, value in (("num_samples", num_samples), ("prior_strength", prior_strength), ("seed", seed)):
            if value is not None:
                settings[key] = value
        # Checked now, so that a bad setting is refused before the first window rather than at learn().
        posterior_from_statistics(SignalStatistics.zeros(self.attacks), num_samples=settings["num_samples"],
                                  prior_strength=settings["prior_strength"], seed=settings["seed"], check=False)
        self.settings = settings
        self.window = float(window)
        self.buffer_windows = buffer_windows
        self.base = statistics
        self.counts = SignalStatistics.zeros(self.attacks)
        self.counts.runs = 1.0
        self._buffer: deque = deque()       # [end, WindowSignals, stages (A,), nodes per attack]
        self._before: np.ndarray | None = None   # stages of the last window that left the buffer
        self._evicted_end: float | None = None
        self.windows = 0
        self.labels_applied = 0

    @classmethod
    def for_defender(cls, defender: Any, **options: Any) -> SignalLedger:
        """A ledger for ``defender`` (a model filter): its window, and the counts of the posterior it runs.

        The base is ``defender.base_posterior`` (the shipped default, or the
        fitted posterior it was given) when that carries statistics, else the
        prior; ``options`` are the constructor's.

        Examples
        --------
        >>> from bayes_defense.stream.model_filter import ModelDefender
        >>> ledger = SignalLedger.for_defender(ModelDefender(ensemble=2, planner=None))
        >>> ledger.base.windows > 0                 # the shipped default's training windows
        True
        """
        base = getattr(defender, "base_posterior", None)
        if getattr(base, "statistics", None) is None:
            base = None
        return cls(base, window=defender.window, **options)

    # ------------------------------------------------------------ windows
    def append(self, item: Any) -> None:
        """Count one closed window ``(end, WindowSignals)`` as benign and keep its signals (the defender's hook)."""
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], WindowSignals)):
            raise InvalidInputError(f"the ledger takes (end, WindowSignals) pairs, as ModelDefender.record appends "
                                    f"them; got {type(item).__name__}")
        end, window = item
        if isinstance(end, bool) or not isinstance(end, (int, float, np.floating)) or not math.isfinite(end):
            raise InvalidInputError(f"a window's end must be a finite number of seconds; got {end!r}")
        end = float(end)
        if self._buffer and end <= self._buffer[-1][0]:
            raise InvalidInputError(f"windows must arrive in time order: {end} after {self._buffer[-1][0]}")
        if window.values.shape != (len(window.replicas) + 1, len(SIGNALS)):
            raise InvalidInputError(f"window signals must have shape (replicas + 1, {len(SIGNALS)}); got "
                                    f"{window.values.shape}")
        stages = np.zeros(len(self.attacks), dtype=np.int64)
        nodes = [()] * len(self.attacks)
        count_labelled_windows(self.counts, [window], stages[None], [nodes], None)
        self.counts.phase_windows[:, 0] += 1.0
        last = self._buffer[-1][2] if self._buffer else self._before
        if last is not None:
            self.counts.phase_changes += _pair_changes(last, stages)
        self._buffer.append([end, window, stages, nodes])
        self.windows += 1
        if len(self._buffer) > self.buffer_windows:
            gone = self._buffer.popleft()
            self._before, self._evicted_end = gone[2], gone[0]

    @property
    def buffered_ends(self) -> np.ndarray:
        """End times of the windows whose signals are kept."""
        return np.array([entry[0] for entry in self._buffer], dtype=np.float64)

    @property
    def statistics(self) -> SignalStatistics:
        """The base fit's statistics plus the windows counted here."""
        return self.base + self.counts

    def posterior(self, check: bool = True) -> SignalPosterior:
        """The posterior of the current counts (the same draws as a fit with the same counts and settings)."""
        return posterior_from_statistics(self.statistics, check=check, method="conjugate-ledger",
                                         info={"ledger_windows": self.windows, "labels_applied": self.labels_applied},
                                         **self.settings)

    # ------------------------------------------------------------- labels
    def _check_label(self, k: int, label: Any, ends: np.ndarray) -> tuple:
        """``(attack index or None, verdict, start, end, normalised label)`` of one label, or a reason."""
        where = f"label {k}"
        if not isinstance(label, Mapping):
            raise InvalidInputError(f"{where} must be an object (a labels.json record or a rejection); got "
                                    f"{type(label).__name__}")
        verdict = label.get("verdict", "attack")
        if verdict not in VERDICTS:
            raise InvalidInputError(f"{where}: verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
        attack = label.get("attack")
        if attack is not None and attack not in self.attacks:
            raise InvalidInputError(f"{where}: attack {attack!r} is not tracked ({', '.join(self.attacks)})")
        if verdict == "attack":
            if attack is None:
                raise InvalidInputError(f"{where}: a confirmed attack must name it ('attack')")
            start, execution, end = (_number(label, key, where) for key in ("precursor_start", "execution_start", "end"))
            if not start <= execution <= end:
                raise InvalidInputError(f"{where}: expected precursor_start <= execution_start <= end; got {start}, "
                                        f"{execution}, {end}")
            clean = {"attack": attack, "nodes": _names(label, "nodes", where), "victims": _names(label, "victims", where),
                     "precursor_start": start, "execution_start": execution, "end": end}
        else:
            if "ts" in label and "start" not in label:
                end = _number(label, "ts", where)
                start = end - self.window
            else:
                start, end = _number(label, "start", where), _number(label, "end", where)
            if end < start:
                raise InvalidInputError(f"{where}: end {end} is before start {start}")
            clean = None
        name = f"{where} ({attack or 'every attack'})"
        if self._evicted_end is not None and start < self._evicted_end - self.window / 2.0:
            raise InvalidInputError(f"{name} starts at {start} s, but the ledger keeps the signals of windows from "
                                    f"{self._evicted_end} s on (its buffer holds {self.buffer_windows} windows); older "
                                    "windows cannot be relabelled exactly: refit from the logs (bayes-defense fit) or "
                                    "give the ledger a larger buffer_windows")
        if not ends.size or end > ends[-1] + self.window:
            last = f"{ends[-1]} s" if ends.size else "none yet"
            raise InvalidInputError(f"{name} ends at {end} s, after the last window the defender closed ({last}); "
                                    "learn it once those windows are closed")
        middle = ends - self.window / 2.0
        if not np.any((middle >= start) & (middle < end)):
            raise InvalidInputError(f"{name} covers no window of this stream ([{start}, {end}) s; windows end from "
                                    f"{ends[0]} to {ends[-1]} s)")
        return (None if attack is None else self.attacks.index(attack)), verdict, start, end, clean

    def learn(self, labels: Sequence[Mapping[str, Any]]) -> SignalPosterior:
        """Fold labels into the counts (exactly, module docstring) and return the updated posterior.

        All labels are checked before any is applied: a refused label leaves the ledger as it was.

        Parameters
        ----------
        labels : list of dict
            Confirmed attacks (``labels.json`` records) and rejected alerts (``"verdict": "not_attack"``).

        Returns
        -------
        SignalPosterior
        """
        if isinstance(labels, Mapping) or not isinstance(labels, (list, tuple)):
            raise InvalidInputError(f"labels must be a list of label objects; got {type(labels).__name__}")
        ends = self.buffered_ends
        checked = [self._check_label(k, label, ends) for k, label in enumerate(labels)]
        if not checked:
            return self.posterior()
        old_stages = np.stack([entry[2] for entry in self._buffer])
        stages = old_stages.copy()
        nodes = [list(entry[3]) for entry in self._buffer]
        middle = ends - self.window / 2.0
        for index, verdict, start, end, clean in checked:
            if verdict == "attack":
                new, who = window_phases(ends, [clean], self.attacks, self.window)
                inside = np.flatnonzero(new[:, index])
                stages[inside, index] = new[inside, index]
                for w in inside.tolist():
                    nodes[w][index] = who[index][w]
            else:
                inside = np.flatnonzero((middle >= start) & (middle < end))
                columns = range(len(self.attacks)) if index is None else (index,)
                for i in columns:
                    stages[inside, i] = 0
                    for w in inside.tolist():
                        nodes[w][i] = ()
        changed = [w for w, entry in enumerate(self._buffer)
                   if not np.array_equal(stages[w], entry[2]) or tuple(nodes[w]) != tuple(entry[3])]
        self._relabel(changed, old_stages, stages, nodes)
        self.labels_applied += len(checked)
        return self.posterior()

    def _relabel(self, changed: list[int], old: np.ndarray, new: np.ndarray, nodes: list) -> None:
        counts = self.counts
        for w in changed:
            entry = self._buffer[w]
            count_labelled_windows(counts, [entry[1]], entry[2][None], [entry[3]], None, sign=-1.0)
            count_labelled_windows(counts, [entry[1]], new[w][None], [nodes[w]], None)
            for k in _STAGES:
                counts.phase_windows[:, k] += (new[w] == k).astype(np.float64) - (old[w] == k)
        pairs = sorted({p for w in changed for p in (w, w + 1) if p < len(self._buffer)})
        for p in pairs:
            if p == 0 and self._before is None:
                continue
            before_old = old[p - 1] if p else self._before
            before_new = new[p - 1] if p else self._before
            counts.phase_changes += _pair_changes(before_new, new[p]) - _pair_changes(before_old, old[p])
        for w in changed:
            self._buffer[w][2] = new[w].copy()
            self._buffer[w][3] = list(nodes[w])

    # -------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The ledger as plain data (numbers, strings, lists and float64/int64/bool arrays; no NaN, no objects).

        A checkpoint can carry it (:func:`bayes_defense.stream.checkpoint.write_checkpoint`);
        :meth:`load_state_dict` validates it.

        Examples
        --------
        >>> ledger = SignalLedger(num_samples=20)
        >>> ledger.append((1.0, WindowSignals(("r0",), 0, np.zeros((2, len(SIGNALS))))))
        >>> again = SignalLedger()
        >>> again.load_state_dict(ledger.state_dict())
        >>> again.windows, again.settings["num_samples"]
        (1, 20)
        """
        entries = list(self._buffer)
        replica_sets: list[tuple] = []
        index = []
        for entry in entries:
            replicas = entry[1].replicas
            if replicas not in replica_sets:
                replica_sets.append(replicas)
            index.append(replica_sets.index(replicas))
        values = np.concatenate([e[1].values for e in entries]) if entries else np.zeros((0, len(SIGNALS)))
        observed = ~np.isnan(values)
        return {"format": LEDGER_FORMAT, "version": LEDGER_VERSION, "attacks": list(self.attacks),
                "signals": list(SIGNALS), "window": self.window, "buffer_windows": self.buffer_windows,
                "settings": dict(self.settings), "base": self.base.state_dict(), "counts": self.counts.state_dict(),
                "windows": self.windows, "labels_applied": self.labels_applied,
                "before": None if self._before is None else self._before.copy(), "evicted_end": self._evicted_end,
                "ends": np.array([e[0] for e in entries], dtype=np.float64),
                "primary": np.array([e[1].primary for e in entries], dtype=np.int64),
                "replica_sets": [list(r) for r in replica_sets], "replica_index": np.array(index, dtype=np.int64),
                "values": np.where(observed, values, 0.0), "observed": observed,
                "stages": np.stack([e[2] for e in entries]) if entries else np.zeros((0, len(self.attacks)), np.int64),
                "nodes": [[w, i, list(who)] for w, e in enumerate(entries) for i, who in enumerate(e[3]) if who]}

    def load_state_dict(self, state: Any) -> None:
        """Restore :meth:`state_dict`'s output, checked first; on a problem the ledger is left as it was."""
        try:
            restored = self._restore(state)
        except InvalidInputError as error:
            raise InvalidInputError(f"ledger state: {error}") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as error:
            raise InvalidInputError(f"ledger state is malformed ({type(error).__name__}: {str(error)[:120]}); give "
                                    "the output of SignalLedger.state_dict()") from None
        self.__dict__.update(restored)

    def _restore(self, state: Any) -> dict[str, Any]:
        if not isinstance(state, Mapping):
            raise InvalidInputError(f"expected a dict from state_dict(); got {type(state).__name__}")
        if state.get("format") != LEDGER_FORMAT or state.get("version") != LEDGER_VERSION:
            raise InvalidInputError(f"format {state.get('format')!r} version {state.get('version')!r}; this release "
                                    f"reads {LEDGER_FORMAT!r} version {LEDGER_VERSION}")
        attacks = tuple(state["attacks"])
        if attacks != tracked_attacks():
            raise InvalidInputError(f"it tracks attacks {attacks}; the model tracks {tracked_attacks()}")
        if tuple(state["signals"]) != tuple(SIGNALS):
            raise InvalidInputError("it was counted over another signal list than the model's now; start a new "
                                    "ledger from a refitted posterior")
        buffer_windows = state["buffer_windows"]
        settings = state["settings"]
        if not isinstance(settings, Mapping) or set(settings) != set(_DEFAULT_SETTINGS):
            raise InvalidInputError(f"settings must hold {', '.join(_DEFAULT_SETTINGS)}")
        fresh = SignalLedger(buffer_windows=buffer_windows, window=state["window"], **settings)
        fresh.base = SignalStatistics.from_state(state["base"])
        fresh.counts = SignalStatistics.from_state(state["counts"])
        fresh.base.check_current(fresh.attacks)
        fresh.counts.check_current(fresh.attacks)
        for key in ("windows", "labels_applied"):
            if type(state[key]) is not int or state[key] < 0:
                raise InvalidInputError(f"{key} must be a whole number >= 0; got {state[key]!r}")
        ends = np.asarray(state["ends"], dtype=np.float64)
        count = ends.size
        if ends.ndim != 1 or count > buffer_windows or count > state["windows"]:
            raise InvalidInputError(f"it keeps {count} windows; its buffer holds at most {buffer_windows}")
        if not np.all(np.isfinite(ends)) or np.any(np.diff(ends) <= 0):
            raise InvalidInputError("window ends must be finite and increasing")
        primary = np.asarray(state["primary"], dtype=np.int64)
        index = np.asarray(state["replica_index"], dtype=np.int64)
        replica_sets = [tuple(r) for r in state["replica_sets"]]
        if not all(isinstance(n, str) for r in replica_sets for n in r):
            raise InvalidInputError("replica_sets must be lists of node names")
        if primary.shape != (count,) or index.shape != (count,) or np.any(index < 0) or np.any(
                index >= max(len(replica_sets), 1)):
            raise InvalidInputError(f"primary and replica_index must hold one entry per window ({count})")
        rows = [len(replica_sets[i]) + 1 for i in index.tolist()]
        values = np.asarray(state["values"], dtype=np.float64)
        observed = np.asarray(state["observed"])
        shape = (sum(rows), len(SIGNALS))
        if values.shape != shape or observed.shape != shape or observed.dtype != np.bool_ or not np.all(
                np.isfinite(values)):
            raise InvalidInputError(f"values and observed must be finite / boolean arrays of shape {shape}")
        stages = np.asarray(state["stages"], dtype=np.int64)
        if stages.shape != (count, len(attacks)) or not np.all(np.isin(stages, _STAGES)):
            raise InvalidInputError(f"stages must be an array ({count}, {len(attacks)}) of 0, 2 or 3")
        before = state["before"]
        if before is not None:
            before = np.asarray(before, dtype=np.int64)
            if before.shape != (len(attacks),) or not np.all(np.isin(before, _STAGES)):
                raise InvalidInputError("before must be None or one stage (0, 2 or 3) per attack")
        evicted = state["evicted_end"]
        if (before is None) != (evicted is None) or (evicted is not None and not (
                isinstance(evicted, float) and math.isfinite(evicted) and (count == 0 or evicted < ends[0]))):
            raise InvalidInputError("before and evicted_end must both be set (a finite time before the first "
                                    "window's end) or both None")
        nodes = [[() for _ in attacks] for _ in range(count)]
        for item in state["nodes"]:
            w, i, who = item
            if not (type(w) is int and 0 <= w < count and type(i) is int and 0 <= i < len(attacks)
                    and isinstance(who, list) and all(isinstance(n, str) for n in who) and stages[w, i] > 0):
                raise InvalidInputError("nodes must list [window, attack, [node names]] of labelled windows")
            nodes[w][i] = tuple(who)
        offsets = np.concatenate([[0], np.cumsum(rows)])
        buffer = deque()
        for w in range(count):
            block = np.where(observed[offsets[w]:offsets[w + 1]], values[offsets[w]:offsets[w + 1]], np.nan)
            replicas = replica_sets[index[w]]
            if not -1 <= primary[w] < len(replicas):
                raise InvalidInputError(f"window {w}: primary row {primary[w]} is not one of its replicas")
            buffer.append([float(ends[w]), WindowSignals(replicas, int(primary[w]), block), stages[w].copy(), nodes[w]])
        fresh._buffer, fresh._before, fresh._evicted_end = buffer, before, evicted
        fresh.windows, fresh.labels_applied = state["windows"], state["labels_applied"]
        return dict(fresh.__dict__)

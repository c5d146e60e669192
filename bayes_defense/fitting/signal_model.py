"""The fit of the model filter's signal model: signal, transition and fault parameters from event logs.

The windows are made by the defender's own code: the logs run through a
:class:`~bayes_defense.stream.model_filter.ModelDefender` (with the same
observation map), which records each window's
:class:`~bayes_defense.stream.signals.WindowSignals`; the likelihood the fit
reports is :func:`bayes_defense.stream.evidence.window_log_likelihood` on
those windows, the function the filter runs (an oracle test checks that the
two agree window by window).

Sufficient statistics. Every estimate is a Beta posterior of an on-fraction,
so a fit is determined by counts (:class:`SignalStatistics`): per window, the
signals' on and observed counts go to "benign", to an attack's phase at its
rows, or to a benign fault at its rows, with weights that are 0/1 for
labelled windows and posterior probabilities for latent ones. The same
counting (:func:`count_windows`) serves the labelled fit, the latent fit and
the learning loop of :mod:`bayes_defense.fitting.learning`, and
:func:`posterior_from_statistics` turns any statistics into draws.

Estimation from the counts. The attacker's row is its replica (or the
victim's, for attacks from outside identities), and unattributed evidence
sits in the last row. For every signal:

- the benign rate ``b``: a Beta posterior of its on-fraction over benign
  windows, less the share the benign faults explain where the faults are not
  labelled (``1 - (1 - on) / (1 - u * fault share)``, ``u`` the share of those
  benign observations whose faults are unknown; ``u = 0`` with ``faults.json``);
- an attack's effect: a Beta posterior of the on-fraction in the attack's
  windows at its rows, turned into the per-window noisy-OR weight over what
  shows without it (``q = 1 - (1 - on) / (1 - b')``, clipped to [0, 1], with
  ``b' = 1 - (1 - b) (1 - u * fault share)`` and ``u`` as for ``b``); outcome effects from
  the execution windows alone. :meth:`SignalPosterior.cluster_parameters`
  gives them in the catalogue's incident-window terms for the cluster model;
- transitions: Beta posteriors of the labelled phase changes per window;
- benign faults, when fault labels are given (:func:`window_faults`, the
  simulator's ``faults.json``): each fault's prior is a Beta posterior of the
  share of windows it is under way in, and its effects the noisy-OR weights
  over ``b`` of the on-fractions in its windows without an attack (``at_node``
  effects at the rows it hits, ``cluster`` effects at the other replicas).
  Without fault labels the faults keep their prior draws, and the fit's
  summary says so.

Each Beta has the prior's value as its mean and ``prior_strength``
pseudo-windows of weight (:data:`BASELINE_STRENGTH` for the benign rates); the posterior draws are independent (conjugate),
so no sampler diagnostics apply.

Phases latent (a log without labels): expectation-maximisation over the
phase chain. With the current parameters (the Beta posterior means), the
windows' likelihoods under every attack and stage (the filter's) and the
chain of one attack at a time (benign, or one attack in its pattern,
precursor or execution stage; the filter's transition matrices) give by
forward-backward smoothing each window's stage probabilities and the
expected phase changes; the attacker's row is weighted by its posterior
given the window and stage. These soft counts replace the labels' 0/1 in the
same counting, the Beta means are recomputed, and the two steps repeat until
the expected windows in every attack's stages and the expected phase changes
move by less than ``tolerance`` windows between iterations (a fixed point of
the sufficient statistics). The posterior is then drawn from the converged
soft counts; a fit that reaches ``max_iterations`` first says so in
``problems``. An unlabelled log's transitions are not fitted (they keep the
prior, or what labelled logs fitted with it say): its phase changes are a few
events timed only by the signals, and a chain whose stays follow its soft
counts let an attack's chain absorb long benign stretches (measured in
docs/learning.md). Labelled and unlabelled logs can be fitted together (their
counts add). What the latent fit recovers depends on how fully the catalogue
names the telemetry an attack makes: docs/learning.md has the measurement.

Posterior predictive check, per summary statistic (each signal's benign
on-fraction, each attack's on-fraction per signal, each fitted fault's share
of windows and on-fractions): the observed count against counts replicated
from the posterior draws through the model's noisy-OR; a statistic whose
observed count lies outside the central 99.9 % of its replicates fails, and
the fit's ``problems`` name it (``bayes-defense fit`` then exits 1).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bayes_defense.errors import InvalidInputError
from bayes_defense.models.faults import FAULTS, OUTCOME_SIGNALS
from bayes_defense.models.registry import attack_spec, tracked_attacks
from bayes_defense.stream import evidence
from bayes_defense.stream.signals import SIGNALS, WindowSignals

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "PPC_TAIL", "BASELINE_STRENGTH", "RecordedWindows", "SignalPosterior",
           "SignalStatistics", "record_windows", "window_phases", "check_fault_labels", "window_faults",
           "count_windows", "count_transitions", "posterior_from_statistics", "window_log_likelihoods",
           "attack_rows", "count_labelled_windows", "fit_signal_model", "predictive_check", "posterior_from_groups"]

FORMAT_NAME = "bayes_defense.signal_posterior"
FORMAT_VERSION = "1.0"
#: Two-sided tail of the posterior predictive check: outside the central 99.9 % fails.
PPC_TAIL = 0.0005
#: Pseudo-windows of the benign rates' prior. The indicators are thresholded at the 1 % tail of
#: benign windows, so their benign rate is known to be near 0.01 before any data; a short log
#: without a single benign "on" must not make it 0 (one later window would then look damning).
BASELINE_STRENGTH = 200.0
_FAULT_NAMES = tuple(FAULTS)


@dataclass
class RecordedWindows:
    """The windows of a log as the defender saw them: signals and the time each window ends."""

    windows: list
    ends: np.ndarray


def _events(data: Any) -> Iterable[Any]:
    if isinstance(data, (str, Path)):
        from bayes_defense.stream.io import read_events

        return read_events(data)
    return data


def record_windows(data: Any, *, observation_map: Any = None, window: float = 1.0) -> RecordedWindows:
    """Run a log through the model filter's own evidence code and keep each window's signals.

    Parameters
    ----------
    data : path or iterable of events
    observation_map : ObservationMap, path or name, optional
    window : float
        Seconds per window.

    Examples
    --------
    >>> from bayes_defense.stream import Event
    >>> rec = record_windows([Event(float(t), "r0", "duplicate_messages", 0.0, {}) for t in range(1, 6)])
    >>> len(rec.windows), rec.ends.tolist()
    (5, [1.0, 2.0, 3.0, 4.0, 5.0])
    """
    from bayes_defense.stream.model_filter import ModelDefender

    defender = ModelDefender(ensemble=1, planner=None, observation_map=observation_map, window=window,
                             clock_confirm=1)
    defender.record = []
    defender.observe_batch(_events(data))
    defender.flush()
    windows = [w for _, w in defender.record]
    return RecordedWindows(windows, np.array([end for end, _ in defender.record], dtype=np.float64))


def window_phases(ends: np.ndarray, labels: Sequence[Mapping[str, Any]], attacks: Sequence[str],
                  window: float = 1.0) -> tuple[np.ndarray, list]:
    """Per window and attack, its labelled stage (0 benign, 2 precursor, 3 execution) and attacker nodes.

    A window ``(end - window, end]`` is in a phase when its middle is.

    Examples
    --------
    >>> stages, nodes = window_phases(np.arange(1.0, 6.0), [{"attack": "replay", "nodes": ["r1"],
    ...     "precursor_start": 1.0, "execution_start": 3.0, "end": 4.0}], ["replay"])
    >>> stages[:, 0].tolist()
    [0, 2, 2, 3, 0]
    """
    middle = np.asarray(ends, dtype=np.float64) - window / 2.0
    stages = np.zeros((middle.size, len(attacks)), dtype=np.int64)
    nodes: list = [dict() for _ in range(len(attacks))]
    for label in labels:
        name = label.get("attack")
        if name not in attacks:
            raise InvalidInputError(f"label names attack {name!r}, which the model does not track "
                                    f"({', '.join(attacks)})")
        i = list(attacks).index(name)
        start, execution, end = (float(label[k]) for k in ("precursor_start", "execution_start", "end"))
        precursor = (middle >= start) & (middle < execution)
        executing = (middle >= execution) & (middle < end)
        stages[precursor, i] = 2
        stages[executing, i] = 3
        who = tuple(label.get("nodes", ())) + tuple(label.get("victims", ()))
        for w in np.flatnonzero(precursor | executing).tolist():
            nodes[i][w] = who
    return stages, nodes


def check_fault_labels(records: Any, source: str = "fault labels") -> list[dict[str, Any]]:
    """Validate benign-fault labels in the simulator's ``faults.json`` form; return them as a list of dicts.

    Each record is ``{"fault": name, "node": replica or null, "nodes": [replicas] or null, "start": seconds,
    "end": seconds, ...}`` (``magnitude`` and other fields are allowed and ignored), ``fault`` one of
    :data:`bayes_defense.models.faults.FAULTS` and ``start <= end``.

    Examples
    --------
    >>> check_fault_labels([{"fault": "crash", "node": "r2", "start": 10.0, "end": 15.0}])[0]["fault"]
    'crash'
    >>> check_fault_labels([{"fault": "meteor", "start": 1, "end": 2}])
    Traceback (most recent call last):
    ...
    bayes_defense.errors.InvalidInputError: fault labels record 0: fault 'meteor' is not a benign fault of the model (crash, partition, slow, load_spike, jitter, restart)
    """
    records, source = _json_list(records, source, "the list of fault records that the simulator writes as "
                                 "faults.json")
    out = []
    for k, record in enumerate(records):
        where = f"{source} record {k}"
        if not isinstance(record, Mapping):
            raise InvalidInputError(f"{where} must be an object {{fault, node, nodes, start, end}}; got "
                                    f"{type(record).__name__}")
        name = record.get("fault")
        if name not in FAULTS:
            raise InvalidInputError(f"{where}: fault {name!r} is not a benign fault of the model "
                                    f"({', '.join(_FAULT_NAMES)})")
        times = []
        for key in ("start", "end"):
            value = record.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidInputError(f"{where}: {key!r} must be a finite number of seconds; got {value!r}")
            times.append(float(value))
        if times[1] < times[0]:
            raise InvalidInputError(f"{where}: end {times[1]} is before start {times[0]}")
        node, nodes = record.get("node"), record.get("nodes")
        if node is not None and not isinstance(node, str):
            raise InvalidInputError(f"{where}: 'node' must be a node name or null; got {node!r}")
        if nodes is not None and not (isinstance(nodes, list) and all(isinstance(n, str) for n in nodes)):
            raise InvalidInputError(f"{where}: 'nodes' must be a list of node names or null; got {nodes!r}")
        out.append({"fault": name, "node": node, "nodes": None if nodes is None else list(nodes),
                    "start": times[0], "end": times[1]})
    return out


def window_faults(ends: np.ndarray, records: Any, window: float = 1.0) -> list[tuple]:
    """Per window, the labelled faults under way: a tuple of ``(fault index, node names)``, empty when none.

    A window is under a fault when its middle lies in ``[start, end)``. The
    simulator's ``restart`` record spans the replica's downtime (it is
    silent, as after a crash: the model's ``crash``), and the model's
    ``restart`` is its return: the :attr:`~bayes_defense.models.faults.Fault.duration`
    after ``end``, when it logs the restart and resends old messages
    (docs/log-schema.md, "Benign faults"). Node names are ``nodes``, else
    ``node``; an empty tuple means the record names no replica.

    Examples
    --------
    >>> marks = window_faults(np.arange(1.0, 9.0), [{"fault": "restart", "node": "r1", "start": 1.0, "end": 3.0}])
    >>> [[(list(FAULTS)[g], nodes) for g, nodes in m] for m in marks][:4]
    [[], [('crash', ('r1',))], [('crash', ('r1',))], [('restart', ('r1',))]]
    """
    middle = np.asarray(ends, dtype=np.float64) - window / 2.0
    marks: list[list] = [[] for _ in range(middle.size)]
    for record in check_fault_labels(records):
        names = tuple(record["nodes"]) if record["nodes"] else ((record["node"],) if record["node"] else ())
        spans = [(record["fault"], record["start"], record["end"])]
        if record["fault"] == "restart":
            back = record["end"] + FAULTS["restart"].duration
            spans = [("crash", record["start"], record["end"]), ("restart", record["end"], back)]
        for name, start, end in spans:
            g = _FAULT_NAMES.index(name)
            for w in np.flatnonzero((middle >= start) & (middle < end)).tolist():
                marks[w].append((g, names))
    return [tuple(m) for m in marks]


@dataclass
class SignalStatistics:
    """The sufficient statistics of the signal-model fit (module docstring): counts, possibly fractional.

    Attributes
    ----------
    attacks, signals : tuple of str
        Row and column names of the arrays.
    benign_on, benign_obs, benign_unknown : arrays (S,)
        On and observed counts in benign windows; the observations among them whose faults are not labelled.
    attack_on, attack_obs, attack_unknown : arrays (A, S, 2)
        At the attack's rows, over its precursor and execution windows (``[..., 0]``) and execution alone;
        the observations among them whose window's faults are unknown (no fault labels, or a labelled fault
        under way: its effect is then taken as the faults' average).
    fault_on, fault_obs : arrays (G, S, 2)
        In a fault's windows without an attack: at the rows it hits (``[..., 0]``), at the other replicas.
    fault_windows : array (G,)
        Windows each fault is under way in, among ``fault_known_windows`` windows with fault labels.
    phase_windows : array (A, 4)
        Windows per stage (0 benign, 2 precursor, 3 execution).
    phase_changes : array (A, 3)
        Benign to precursor, precursor to execution, execution to its end.
    windows, labelled_windows, replica_rows, fault_known_windows, runs : float
        Windows counted, windows with an attack under way, the sum of their replica counts, windows with fault
        labels, logs.
    """

    attacks: tuple
    signals: tuple
    benign_on: np.ndarray
    benign_obs: np.ndarray
    benign_unknown: np.ndarray
    attack_on: np.ndarray
    attack_obs: np.ndarray
    attack_unknown: np.ndarray
    fault_on: np.ndarray
    fault_obs: np.ndarray
    fault_windows: np.ndarray
    phase_windows: np.ndarray
    phase_changes: np.ndarray
    windows: float = 0.0
    labelled_windows: float = 0.0
    replica_rows: float = 0.0
    fault_known_windows: float = 0.0
    runs: float = 0.0

    _ARRAYS = ("benign_on", "benign_obs", "benign_unknown", "attack_on", "attack_obs", "attack_unknown", "fault_on",
               "fault_obs",
               "fault_windows", "phase_windows", "phase_changes")
    _SCALARS = ("windows", "labelled_windows", "replica_rows", "fault_known_windows", "runs")

    @classmethod
    def zeros(cls, attacks: Sequence[str] | None = None) -> SignalStatistics:
        """Empty statistics for ``attacks`` (default: the tracked attacks) over the current :data:`SIGNALS`.

        Examples
        --------
        >>> SignalStatistics.zeros().attack_on.shape[1:] == (len(SIGNALS), 2)
        True
        """
        attacks = tracked_attacks() if attacks is None else tuple(attacks)
        return cls(attacks, tuple(SIGNALS), **cls._shapes(len(attacks), len(SIGNALS)))

    @staticmethod
    def _shapes(attacks: int, signals: int) -> dict[str, np.ndarray]:
        faults = len(_FAULT_NAMES)
        return {"benign_on": np.zeros(signals), "benign_obs": np.zeros(signals), "benign_unknown": np.zeros(signals),
                "attack_on": np.zeros((attacks, signals, 2)), "attack_obs": np.zeros((attacks, signals, 2)),
                "attack_unknown": np.zeros((attacks, signals, 2)),
                "fault_on": np.zeros((faults, signals, 2)), "fault_obs": np.zeros((faults, signals, 2)),
                "fault_windows": np.zeros(faults), "phase_windows": np.zeros((attacks, 4)),
                "phase_changes": np.zeros((attacks, 3))}

    def copy(self) -> SignalStatistics:
        """An independent copy."""
        return SignalStatistics.from_state(self.state_dict())

    def __add__(self, other: SignalStatistics) -> SignalStatistics:
        if not isinstance(other, SignalStatistics):
            return NotImplemented
        if (other.attacks, other.signals) != (self.attacks, self.signals):
            raise InvalidInputError("statistics of different attacks or signals cannot be added: "
                                    f"{self.attacks} / {other.attacks}")
        out = self.copy()
        for name in self._ARRAYS:
            getattr(out, name).__iadd__(getattr(other, name))
        for name in self._SCALARS:
            setattr(out, name, getattr(self, name) + getattr(other, name))
        return out

    def state_dict(self) -> dict[str, Any]:
        """Plain data (lists and floats, JSON-ready); :meth:`from_state` reads it back, validated.

        Examples
        --------
        >>> s = SignalStatistics.zeros()
        >>> s.benign_on[0] = 3.0
        >>> float(SignalStatistics.from_state(json.loads(json.dumps(s.state_dict()))).benign_on[0])
        3.0
        """
        out: dict[str, Any] = {"attacks": list(self.attacks), "signals": list(self.signals)}
        out.update({name: getattr(self, name).tolist() for name in self._ARRAYS})
        out.update({name: float(getattr(self, name)) for name in self._SCALARS})
        return out

    @classmethod
    def from_state(cls, state: Any) -> SignalStatistics:
        """Rebuild statistics from :meth:`state_dict`'s output; refuse anything else with the reason."""
        if not isinstance(state, Mapping):
            raise InvalidInputError(f"signal statistics must be a dict from state_dict(); got {type(state).__name__}")
        expected = {"attacks", "signals", *cls._ARRAYS, *cls._SCALARS}
        if set(state) != expected:
            missing, unknown = sorted(expected - set(state)), sorted(str(k) for k in set(state) - expected)
            raise InvalidInputError(f"signal statistics: missing {missing}, unknown {unknown[:5]}; give the output "
                                    "of SignalStatistics.state_dict()")
        attacks, signals = state["attacks"], state["signals"]
        if not (isinstance(attacks, (list, tuple)) and all(isinstance(a, str) for a in attacks)
                and isinstance(signals, (list, tuple)) and all(isinstance(s, str) for s in signals)):
            raise InvalidInputError("signal statistics: 'attacks' and 'signals' must be lists of names")
        shapes = cls._shapes(len(attacks), len(signals))
        arrays = {}
        for name, zero in shapes.items():
            try:
                array = np.asarray(state[name], dtype=np.float64)
            except (TypeError, ValueError):
                raise InvalidInputError(f"signal statistics: {name} must be an array of numbers") from None
            if array.shape != zero.shape or not np.all(np.isfinite(array)) or np.any(array < -1e-9):
                raise InvalidInputError(f"signal statistics: {name} must be finite counts >= 0 of shape "
                                        f"{zero.shape}; got shape {array.shape}")
            arrays[name] = np.maximum(array, 0.0)
        scalars = {}
        for name in cls._SCALARS:
            value = state[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InvalidInputError(f"signal statistics: {name} must be a finite count >= 0; got {value!r}")
            scalars[name] = float(value)
        return cls(tuple(attacks), tuple(signals), **arrays, **scalars)

    def check_current(self, attacks: Sequence[str] | None = None) -> None:
        """Refuse statistics of other attacks or another signal list than the model's now."""
        attacks = tracked_attacks() if attacks is None else tuple(attacks)
        if self.signals != tuple(SIGNALS):
            raise InvalidInputError(f"the statistics were counted over signals {', '.join(self.signals)}; the model's "
                                    f"signals are now {', '.join(SIGNALS)}: refit from the logs")
        if self.attacks != attacks:
            raise InvalidInputError(f"the statistics track attacks {self.attacks}; the model tracks {attacks} (add or "
                                    "remove user attacks to match, or refit)")


def _attack_columns(attacks: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per attack: the columns of its attacker-side signals and of the others (cluster side, impacts)."""
    out = []
    for attack in attacks:
        spec = attack_spec(attack)
        signals = {**spec.attacker_side, **spec.cluster_side, **dict.fromkeys(spec.impacts)}
        side = [SIGNALS.index(s) for s in signals if s in spec.attacker_side]
        rest = [SIGNALS.index(s) for s in signals if s not in spec.attacker_side]
        out.append((np.array(side, dtype=np.int64), np.array(rest, dtype=np.int64)))
    return out


_COLUMNS: dict[tuple, list] = {}


def _columns(attacks: tuple) -> list[tuple[np.ndarray, np.ndarray]]:
    key = (attacks, tuple(SIGNALS))
    if key not in _COLUMNS:
        _COLUMNS[key] = _attack_columns(attacks)
    return _COLUMNS[key]


def count_windows(statistics: SignalStatistics, windows: Sequence[WindowSignals], *, benign: Any, active: Any,
                  executing: Any, rows: Sequence[np.ndarray], faults: Sequence[tuple] | None = None,
                  sign: float = 1.0) -> None:
    """Add windows' counts to ``statistics`` (in place), with the weights of their stages.

    Parameters
    ----------
    statistics : SignalStatistics
    windows : list of WindowSignals
    benign : array (W,)
        Weight of "no attack under way" (1 or 0 for a labelled window, a probability for a latent one).
    active, executing : arrays (W, A)
        Weight of each attack being under way (precursor or execution), and in execution.
    rows : list of arrays (A, R + 1)
        Per window and attack, the weight of each row being the attacker's (the last row, unattributed
        evidence, is 1 for every attack).
    faults : list of tuples, optional
        Per window, the labelled faults under way (:func:`window_faults`); None when the log has no fault labels.
    sign : float
        -1 removes windows counted before (the learning loop relabels windows so).

    Examples
    --------
    >>> stats = SignalStatistics.zeros()
    >>> a = len(stats.attacks)
    >>> count_windows(stats, [WindowSignals(("r0", "r1"), 0, np.zeros((3, len(SIGNALS))))], benign=[1.0],
    ...               active=np.zeros((1, a)), executing=np.zeros((1, a)), rows=[np.zeros((a, 3))])
    >>> float(stats.benign_obs[0]), float(stats.windows)
    (3.0, 1.0)
    """
    count = len(windows)
    attacks = len(statistics.attacks)
    benign = np.asarray(benign, dtype=np.float64).reshape(count)
    active = np.asarray(active, dtype=np.float64).reshape(count, attacks)
    executing = np.asarray(executing, dtype=np.float64).reshape(count, attacks)
    statistics.windows += sign * count
    statistics.replica_rows += sign * sum(len(w.replicas) for w in windows)
    statistics.labelled_windows += sign * float((1.0 - benign).sum())
    if faults is not None:
        statistics.fault_known_windows += sign * count
        for marks in faults:
            for g, _names in marks:
                statistics.fault_windows[g] += sign
    groups: dict[int, list[int]] = {}
    for w, window in enumerate(windows):
        groups.setdefault(window.values.shape[0], []).append(w)
    columns = _columns(statistics.attacks)
    for members in groups.values():
        x = np.stack([windows[w].values for w in members])                           # (M, R + 1, S)
        seen = ~np.isnan(x)
        on, observed = np.where(seen, x, 0.0), seen.astype(np.float64)
        weight = sign * benign[members]
        if faults is None:
            statistics.benign_on += weight @ on.sum(1)
            statistics.benign_obs += weight @ observed.sum(1)
            statistics.benign_unknown += weight @ observed.sum(1)
        else:
            clean = np.array([not faults[w] for w in members])
            statistics.benign_on += (weight * clean) @ on.sum(1)
            statistics.benign_obs += (weight * clean) @ observed.sum(1)
            for m, w in enumerate(members):
                # Windows under two labelled faults at once confound their effects: counted for the priors only.
                if len(faults[w]) == 1 and weight[m] != 0.0:
                    _count_fault(statistics, windows[w], faults[w][0], on[m], observed[m], weight[m])
        attacker = np.stack([rows[w] for w in members])                              # (M, A, R + 1)
        side_on = np.einsum("mar,mrs->mas", attacker, on)
        side_obs = np.einsum("mar,mrs->mas", attacker, observed)
        all_on, all_obs = on.sum(1), observed.sum(1)                                 # (M, S)
        unknown = np.ones(len(members)) if faults is None else np.array([bool(faults[w]) for w in members], float)
        for i, (side, rest) in enumerate(columns):
            for column, share in ((0, active[members, i]), (1, executing[members, i])):
                if not share.any():
                    continue
                share = sign * share
                statistics.attack_on[i, side, column] += share @ side_on[:, i, side]
                statistics.attack_obs[i, side, column] += share @ side_obs[:, i, side]
                statistics.attack_on[i, rest, column] += share @ all_on[:, rest]
                statistics.attack_obs[i, rest, column] += share @ all_obs[:, rest]
                statistics.attack_unknown[i, side, column] += (share * unknown) @ side_obs[:, i, side]
                statistics.attack_unknown[i, rest, column] += (share * unknown) @ all_obs[:, rest]


def _count_fault(statistics: SignalStatistics, window: WindowSignals, fault: tuple, on: np.ndarray,
                 observed: np.ndarray, weight: float) -> None:
    """A fault window's counts: at the rows it hits (its replicas and the unattributed row) and elsewhere."""
    g, names = fault
    spec = FAULTS[_FAULT_NAMES[g]]
    hit = [window.replicas.index(n) for n in names if n in window.replicas]
    for signal in {**spec.at_node, **spec.cluster}:
        s = SIGNALS.index(signal)
        if not hit:
            # The record names no replica (or a client): only effects that are the same at every row are fitted.
            if signal in spec.at_node:
                continue
            statistics.fault_on[g, s, 1] += weight * on[:, s].sum()
            statistics.fault_obs[g, s, 1] += weight * observed[:, s].sum()
            continue
        mask = np.zeros(on.shape[0], dtype=bool)
        mask[hit] = True
        mask[-1] = True
        statistics.fault_on[g, s, 0] += weight * on[mask, s].sum()
        statistics.fault_obs[g, s, 0] += weight * observed[mask, s].sum()
        statistics.fault_on[g, s, 1] += weight * on[~mask, s].sum()
        statistics.fault_obs[g, s, 1] += weight * observed[~mask, s].sum()


def count_transitions(statistics: SignalStatistics, stages: np.ndarray, sign: float = 1.0) -> None:
    """Add the labelled phase windows and changes of one log's ``(W, A)`` stages (:func:`window_phases`)."""
    for i in range(stages.shape[1]):
        column = stages[:, i]
        for k in (0, 2, 3):
            statistics.phase_windows[i, k] += sign * (column == k).sum()
        change = column[1:] != column[:-1]
        statistics.phase_changes[i, 0] += sign * ((column[:-1] == 0) & (column[1:] == 2)).sum()
        statistics.phase_changes[i, 1] += sign * ((column[:-1] == 2) & (column[1:] == 3)).sum()
        statistics.phase_changes[i, 2] += sign * ((column[:-1] == 3) & change).sum()


def attack_rows(window: WindowSignals, who: Sequence[str]) -> np.ndarray:
    """Row weights of a labelled attacker: 1 at its replicas' rows and the unattributed row, 0 elsewhere.

    Examples
    --------
    >>> attack_rows(WindowSignals(("r0", "r1"), 0, np.zeros((3, 1))), ("r1",)).tolist()
    [0.0, 1.0, 1.0]
    """
    weight = np.zeros(len(window.replicas) + 1)
    for name in who:
        if name in window.replicas:
            weight[window.replicas.index(name)] = 1.0
    weight[-1] = 1.0
    return weight


def count_labelled_windows(statistics: SignalStatistics, windows: Sequence[WindowSignals], stages: np.ndarray,
                           nodes: Sequence[Sequence[tuple]], faults: Sequence[tuple] | None,
                           sign: float = 1.0) -> None:
    """:func:`count_windows` for labelled windows: ``stages`` (W, A) of 0, 2 or 3, ``nodes[w][a]`` the attacker's."""
    stages = np.asarray(stages).reshape(len(windows), len(statistics.attacks))
    active = (stages > 0).astype(np.float64)
    rows = [np.stack([attack_rows(window, who) for who in nodes[w]]) for w, window in enumerate(windows)]
    count_windows(statistics, windows, benign=(~active.any(1)).astype(np.float64), active=active,
                  executing=(stages == 3).astype(np.float64), rows=rows, faults=faults, sign=sign)


def _beta(rng, on: float, total: float, mean: float, strength: float, draws: int) -> np.ndarray:
    mean = min(max(mean, 1e-6), 1 - 1e-6)
    return rng.beta(on + strength * mean, total - on + strength * (1.0 - mean), draws)


def _beta_mean(on: float, total: float, mean: float, strength: float) -> np.ndarray:
    """The mean of :func:`_beta`'s distribution, as one draw (the latent fit's point estimate)."""
    mean = min(max(mean, 1e-6), 1 - 1e-6)
    return np.array([(on + strength * mean) / (total + strength)])


def _fault_share(values: Mapping[str, np.ndarray], signal: str, replicas: float, attributed: bool) -> np.ndarray:
    """P(signal on from benign faults alone) at a replica row (or the unattributed row), per draw."""
    mix = np.zeros_like(next(iter(values.values())))
    share_at = (1.0 / max(replicas, 1.0)) if attributed else 1.0
    for name, fault in FAULTS.items():
        prior = values[f"fault.{name}.prior"]
        at_node = values.get(f"fault.{name}.{signal}", 0.0) if signal in fault.at_node else 0.0
        everywhere = values.get(f"fault.{name}.{signal}", 0.0) if signal in fault.cluster else 0.0
        p = 1.0 - (1.0 - everywhere) * (1.0 - share_at * at_node)
        mix = mix + prior * p
    return np.clip(mix, 0.0, 1.0)


@dataclass
class SignalPosterior:
    """Draws of the signal model's parameters from :func:`fit_signal_model`.

    Attributes
    ----------
    draws : dict
        ``{parameter name: float64 array (num_draws,)}``.
    attacks : tuple of str
    info : dict
        Windows, labelled windows, the observation map's source, the log likelihood per window, the fit's
        settings, which faults were fitted, the latent fit's iterations (``"em"``) and the sufficient
        statistics (``"statistics"``, for the learning loop).
    ppc : list of dict
        One entry per summary statistic: ``{statistic, observed, lower, upper, p_value, ok}``.
    problems : list of str
        Failed checks (empty when the fit is to be trusted).
    """

    draws: dict
    attacks: tuple
    info: dict = field(default_factory=dict)
    ppc: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    method: str = "conjugate"
    level: float = 0.9

    @property
    def num_draws(self) -> int:
        """Number of posterior draws."""
        return int(next(iter(self.draws.values())).shape[0])

    @property
    def diagnostics_ok(self) -> bool:
        """Whether every check passed."""
        return not self.problems

    def signal_parameters(self, draws: int, seed: int = 0) -> dict[str, np.ndarray]:
        """``draws`` of the parameters (without replacement when there are enough), for the model filter.

        Examples
        --------
        >>> post = SignalPosterior({"telemetry.msg_rate.baseline": np.linspace(0.01, 0.02, 5)}, tracked_attacks())
        >>> post.signal_parameters(3, seed=0)["telemetry.msg_rate.baseline"].shape
        (3,)
        """
        rng = np.random.default_rng(seed)
        index = rng.choice(self.num_draws, size=draws, replace=draws > self.num_draws)
        return {name: array[index] for name, array in self.draws.items()}

    def cluster_parameters(self) -> dict[str, np.ndarray]:
        """The draws in the cluster SCM's names (per incident window), for ``bd.models.cluster(n, parameters=...)``."""
        return evidence.incident_parameters(self.draws, self.attacks)

    @property
    def statistics(self) -> SignalStatistics | None:
        """The sufficient statistics the draws came from (None for a posterior saved without them)."""
        state = self.info.get("statistics")
        return None if state is None else SignalStatistics.from_state(state)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary: draws, windows, which faults were fitted, convergence, the PPC's failures, problems.

        Examples
        --------
        >>> SignalPosterior({"telemetry.msg_rate.baseline": np.full(3, 0.01)}, tracked_attacks()).summary()["faults"]
        'prior (no fault labels)'
        """
        fitted = self.info.get("faults_fitted") or []
        em = self.info.get("em")
        return {"model": "defender (signal model)", "method": self.method, "draws": self.num_draws,
                "windows": self.info.get("windows"), "labelled_windows": self.info.get("labelled_windows"),
                "faults": f"fitted from fault labels: {', '.join(fitted)}" if fitted else "prior (no fault labels)",
                "em": None if em is None else {k: em[k] for k in ("iterations", "converged", "change", "tolerance")},
                "ppc_statistics": len(self.ppc), "ppc_failed": [p["statistic"] for p in self.ppc if not p["ok"]],
                "diagnostics_ok": self.diagnostics_ok, "problems": list(self.problems)}

    def to_inference_data(self):
        """ArviZ data: posterior draws (one chain), observed and replicated PPC statistics."""
        from bayes_defense.fitting import inference_data

        names = sorted(self.draws)
        theta = np.stack([self.draws[n] for n in names], -1)[None]
        observed = np.array([p["observed"] for p in self.ppc], dtype=np.float64)
        groups = {"posterior": {"theta": theta}, "observed_data": {"fraction": observed}}
        attrs = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "method": self.method,
                 "attacks": json.dumps(list(self.attacks)), "info": json.dumps(self.info),
                 "ppc": json.dumps(self.ppc), "problems": json.dumps(self.problems), "level": self.level}
        return inference_data.from_groups(groups, dims={"theta": ["parameter"], "fraction": ["statistic"]},
                                          coords={"parameter": names,
                                                  "statistic": [p["statistic"] for p in self.ppc]}, attrs=attrs)

    def save(self, path: Any) -> Path:
        """Write the posterior as NetCDF-4 (read back by :func:`bayes_defense.load_posterior`)."""
        from bayes_defense.fitting.storage import save_posterior

        return save_posterior(self, path)


def posterior_from_groups(path: Path, groups: Mapping[str, Any]) -> SignalPosterior:
    """Rebuild a :class:`SignalPosterior` from a file's groups; refuse another major version or bad arrays."""
    posterior = groups["posterior"]
    version = str(posterior.attrs.get("format_version", ""))
    if version.split(".")[0] != FORMAT_VERSION.split(".")[0]:
        raise InvalidInputError(f"{path.name} has signal posterior format version {version!r}; this release reads "
                                f"{FORMAT_VERSION.split('.')[0]}.x; refit with `bayes-defense fit`")
    try:
        attacks = tuple(json.loads(str(posterior.attrs["attacks"])))
        info = json.loads(str(posterior.attrs.get("info", "{}")))
        ppc = json.loads(str(posterior.attrs.get("ppc", "[]")))
        problems = json.loads(str(posterior.attrs.get("problems", "[]")))
    except (KeyError, ValueError, RecursionError):
        raise InvalidInputError(f"{path.name}: the signal posterior's metadata is missing or not JSON; the file is "
                                "damaged") from None
    missing = [a for a in attacks if a not in tracked_attacks()]
    if missing:
        raise InvalidInputError(f"{path.name} was fitted with attack(s) {', '.join(missing)} that are not tracked now; "
                                "add them with bayes_defense.models.registry.add_attack before loading")
    theta = np.asarray(posterior["theta"].values, dtype=np.float64)
    names = [str(x) for x in posterior["theta"].coords["parameter"].values]
    if theta.ndim != 3 or theta.shape[-1] != len(names) or not np.all(np.isfinite(theta)):
        raise InvalidInputError(f"{path.name}: posterior 'theta' must be finite with dims (chain, draw, parameter)")
    draws = {name: theta[..., j].reshape(-1) for j, name in enumerate(names)}
    evidence.check_values(draws, attacks)
    return SignalPosterior(draws, attacks, info, ppc, problems, str(posterior.attrs.get("method", "conjugate")))


def _parameters(statistics: SignalStatistics, start: dict[str, np.ndarray], prior: Mapping[str, float],
                prior_strength: float, draw: Callable[..., np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Parameter values from sufficient statistics; ``draw(on, total, mean, strength)`` samples or averages a Beta.

    Returns the values and the faults whose parameters were fitted. The order of the draws is fixed (transitions,
    fault priors, benign rates, fault effects, attack effects), so equal statistics and seed give equal draws.
    """
    attacks = statistics.attacks
    draws = dict(start)
    # Transitions first: the effects' time slicing reads precursor_to_execution.
    for i, attack in enumerate(attacks):
        for j, (key, stay) in enumerate((("benign_to_precursor", 0), ("precursor_to_execution", 2),
                                         ("execution_to_benign", 3))):
            if statistics.phase_windows[i, stay] > 0:
                draws[f"{attack}.{key}"] = draw(statistics.phase_changes[i, j], statistics.phase_windows[i, stay],
                                                prior[f"{attack}.{key}"], prior_strength)
        total = draws[f"{attack}.precursor_to_execution"] + draws[f"{attack}.precursor_to_benign"]
        draws[f"{attack}.precursor_to_benign"] = np.where(total >= 0.999, draws[f"{attack}.precursor_to_benign"]
                                                          * 0.5, draws[f"{attack}.precursor_to_benign"])
    replicas = statistics.replica_rows / statistics.windows if statistics.windows > 0 else 1.0
    known = statistics.fault_known_windows
    if known > 0:
        for g, name in enumerate(_FAULT_NAMES):
            draws[f"fault.{name}.prior"] = draw(statistics.fault_windows[g], known, prior[f"fault.{name}.prior"],
                                                prior_strength)
    for s, signal in enumerate(SIGNALS):
        name = evidence._baseline_name(signal)
        obs = statistics.benign_obs[s]
        on_fraction = draw(statistics.benign_on[s], obs, prior[name], BASELINE_STRENGTH)
        unknown = min(statistics.benign_unknown[s] / obs, 1.0) if obs > 0 else 1.0
        faults = _fault_share(draws, signal, replicas, attributed=signal not in OUTCOME_SIGNALS)
        draws[name] = np.clip(1.0 - (1.0 - on_fraction) / (1.0 - unknown * faults), 1e-5, 1.0)
    fitted = []
    for g, (fault_name, fault) in enumerate(FAULTS.items()):
        if known > 0 and statistics.fault_windows[g] > 0:
            fitted.append(fault_name)
        for signal in {**fault.at_node, **fault.cluster}:
            s = SIGNALS.index(signal)
            base = draws[evidence._baseline_name(signal)]
            name = f"fault.{fault_name}.{signal}"
            (hit_on, other_on), (hit_obs, other_obs) = statistics.fault_on[g, s], statistics.fault_obs[g, s]
            everywhere = np.zeros_like(base)
            if signal in fault.cluster:
                on, obs = (other_on, other_obs) if signal in fault.at_node else (hit_on + other_on, hit_obs + other_obs)
                if obs > 0:
                    mean = 1.0 - (1.0 - float(np.mean(base))) * (1.0 - prior[name])
                    draws[name] = np.clip(1.0 - (1.0 - draw(on, obs, mean, prior_strength)) / (1.0 - base), 0.0, 1.0)
                everywhere = draws[name]
            if signal in fault.at_node and hit_obs > 0:
                rest = (1.0 - base) * (1.0 - everywhere)
                mean = 1.0 - float(np.mean(rest)) * (1.0 - prior[name])
                draws[name] = np.clip(1.0 - (1.0 - draw(hit_on, hit_obs, mean, prior_strength)) / rest, 0.0, 1.0)
    for i, attack in enumerate(attacks):
        for name, signal, stage in _attack_edges(attack):
            s = SIGNALS.index(signal)
            on, obs, unknown = _stage_counts(statistics, i, s, stage)
            if obs <= 0:
                continue
            base = _attack_base(draws, signal, obs, unknown, replicas)
            mean = 1.0 - (1.0 - float(np.mean(base))) * (1.0 - prior[name])
            on_fraction = draw(on, obs, mean, prior_strength)
            draws[name] = np.clip(1.0 - (1.0 - on_fraction) / (1.0 - base), 0.0, 1.0)
    return evidence.check_values(draws, attacks), fitted


def _attack_edges(attack: str) -> list[tuple[str, str, str]]:
    """An attack's fitted edges: ``(parameter, signal, stage)``.

    A telemetry signal has one edge per stage (``window.{signal}.{attack}``
    in the precursor, ``window.{signal}.{attack}.execution`` in execution,
    as the filter reads them: :mod:`bayes_defense.stream.evidence`); an outcome
    shows in execution only.
    """
    spec = attack_spec(attack)
    edges = []
    for signal in {**spec.attacker_side, **spec.cluster_side, **dict.fromkeys(spec.impacts)}:
        if signal in spec.impacts:
            edges.append((evidence._effect_name(signal, attack), signal, "execution"))
        else:
            edges.append((evidence._effect_name(signal, attack), signal, "precursor"))
            edges.append((evidence._execution_name(signal, attack), signal, "execution"))
    return edges


def _stage_counts(statistics: SignalStatistics, attack: int, signal: int, stage: str) -> tuple[float, float, float]:
    """(on, observed, fault-unknown) counts of a signal in an attack's precursor or execution windows.

    The statistics count the attack's active windows (column 0) and its
    executing ones (column 1); the precursor's are their difference.
    """
    counts = (statistics.attack_on, statistics.attack_obs, statistics.attack_unknown)
    if stage == "execution":
        return tuple(float(c[attack, signal, 1]) for c in counts)
    return tuple(max(float(c[attack, signal, 0] - c[attack, signal, 1]), 0.0) for c in counts)


def _attack_base(values: Mapping[str, np.ndarray], signal: str, obs: float, unknown: float,
                 replicas: float) -> np.ndarray:
    """P(signal on without the attack) in an attack's windows: the benign rate and the faults where unknown."""
    share = _fault_share(values, signal, replicas, attributed=signal not in OUTCOME_SIGNALS)
    return 1.0 - (1.0 - values[evidence._baseline_name(signal)]) * (1.0 - min(unknown / obs, 1.0) * share)


def _point(statistics: SignalStatistics, prior_strength: float) -> dict[str, np.ndarray]:
    """The parameters at their Beta posterior means (one draw): the latent fit's current estimate."""
    prior = evidence.parameter_names(statistics.attacks)
    values, _ = _parameters(statistics, evidence.default_values(statistics.attacks), prior, prior_strength,
                            _beta_mean)
    return values


def _check_settings(num_samples: Any, prior_strength: Any) -> None:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise InvalidInputError(f"num_samples must be a whole number >= 2; got {num_samples!r}")
    if isinstance(prior_strength, bool) or not (isinstance(prior_strength, (int, float)) and prior_strength > 0):
        raise InvalidInputError(f"prior_strength must be a number > 0; got {prior_strength!r}")


def posterior_from_statistics(statistics: SignalStatistics, *, num_samples: int = 400, prior_strength: float = 2.0,
                              seed: int = 0, check: bool = True, info: Mapping[str, Any] | None = None,
                              method: str = "conjugate") -> SignalPosterior:
    """Draw the signal model's posterior from sufficient statistics (the conjugate Betas of the module docstring).

    The same statistics, settings and seed give the same draws, whether the
    counts came from :func:`fit_signal_model` or from the learning loop's
    ledger (:class:`bayes_defense.fitting.learning.SignalLedger`).

    Parameters
    ----------
    statistics : SignalStatistics
    num_samples : int
        Posterior draws.
    prior_strength : float
        Pseudo-windows of weight of the prior in each Beta.
    seed : int
    check : bool
        Run the posterior predictive check and record failures in ``problems``.
    info : dict, optional
        Extra entries for the posterior's ``info``.
    method : str
        Recorded as the posterior's method.

    Returns
    -------
    SignalPosterior

    Examples
    --------
    >>> post = posterior_from_statistics(SignalStatistics.zeros(), num_samples=20, check=False)
    >>> post.num_draws, post.summary()["faults"]
    (20, 'prior (no fault labels)')
    """
    _check_settings(num_samples, prior_strength)
    statistics.check_current()
    attacks = statistics.attacks
    rng = np.random.default_rng(seed)
    prior = evidence.parameter_names(attacks)

    def sample(on: float, total: float, mean: float, strength: float) -> np.ndarray:
        return _beta(rng, on, total, mean, strength, num_samples)

    draws, fitted = _parameters(statistics, evidence.prior_draws(num_samples, seed, attacks), prior,
                                float(prior_strength), sample)
    replicas = statistics.replica_rows / statistics.windows if statistics.windows > 0 else 1.0
    posterior = SignalPosterior(draws, attacks, {
        "windows": statistics.windows, "labelled_windows": statistics.labelled_windows, "runs": statistics.runs,
        "replicas": replicas, "faults_fitted": fitted,
        "settings": {"num_samples": num_samples, "prior_strength": float(prior_strength), "seed": seed},
        **dict(info or {}), "statistics": statistics.state_dict()}, method=method)
    if check:
        posterior.ppc = predictive_check(posterior, statistics, seed)
        posterior.problems = [f"posterior predictive check failed for {p['statistic']}: observed {p['observed']:.4g}, "
                              f"replicated 99.9% interval [{p['lower']:.4g}, {p['upper']:.4g}]"
                              for p in posterior.ppc if not p["ok"]]
    return posterior


def _runs(data: Any, labels: Any, faults: Any) -> list[tuple]:
    """``[(events, labels or None, fault labels or None)]`` from the fit's ``data`` argument."""
    if isinstance(data, list) and data and isinstance(data[0], tuple) and len(data[0]) in (2, 3):
        if labels is not None or faults is not None:
            raise InvalidInputError("give labels and fault labels inside each (events, labels, faults) tuple when "
                                    "fitting several logs, not as labels= / faults=")
        runs = []
        for k, run in enumerate(data):
            if not isinstance(run, tuple) or len(run) not in (2, 3):
                raise InvalidInputError(f"run {k}: expected a tuple (events, labels) or (events, labels, faults); "
                                        f"got {type(run).__name__}")
            runs.append((run[0], run[1], run[2] if len(run) == 3 else None))
        return runs
    return [(data, labels, faults)]


def _json_list(value: Any, what: str, expected: str) -> tuple[list, str]:
    """``(the list, where it came from)`` from a list or the path of a JSON file holding one; else a clear error."""
    if isinstance(value, (str, Path)):
        path = Path(value)
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise InvalidInputError(f"{path.name}: cannot read {what} ({type(error).__name__}); expected {expected}"
                                    ) from None
        what = path.name
    if not isinstance(value, list):
        raise InvalidInputError(f"{what} must be {expected}; got {type(value).__name__}")
    return value, what


def _read_labels(labels: Any) -> list:
    return _json_list(labels, "labels", "labels.json, a JSON list of {attack, nodes, precursor_start, "
                      "execution_start, end}")[0]


def fit_signal_model(data: Any, *, labels: Any = None, faults: Any = None, observation_map: Any = None,
                     window: float = 1.0, num_samples: int = 400, prior_strength: float = 2.0, seed: int = 0,
                     progress: bool = False, check: bool = True, max_iterations: int = 50,
                     tolerance: float = 0.01) -> SignalPosterior:
    """Fit the signal, transition and fault parameters of the model filter to event logs.

    Parameters
    ----------
    data : path, iterable of events, or a list of ``(events, labels)`` or ``(events, labels, faults)`` tuples
        One log (with ``labels`` and ``faults``) or several; a log whose labels are None is fitted with its
        phases latent (module docstring).
    labels : path or list of dict, optional
        ``labels.json`` of the single log; None fits its phases latent.
    faults : path or list of dict, optional
        ``faults.json`` of the single log (:func:`check_fault_labels`); without it the faults keep their prior.
    observation_map : ObservationMap, path or name, optional
        The map the defender will run with.
    window : float
        Seconds per window.
    num_samples : int
        Posterior draws.
    prior_strength : float
        Pseudo-windows of weight of the prior in each Beta.
    seed : int
    progress, check : bool
        ``check`` runs the posterior predictive check and records failures in ``problems``.
    max_iterations, tolerance
        The latent fit's limit and convergence criterion (expected windows per stage and expected phase
        changes move by less than ``tolerance`` between iterations).

    Returns
    -------
    SignalPosterior

    Examples
    --------
    >>> from bayes_defense.sim import Simulation, random_scenario
    >>> sim = Simulation(random_scenario(5, nodes=4, duration=200, attacks=["replay"], faults=["crash"]))
    >>> post = fit_signal_model(list(sim.events()), labels=sim.labels, faults=sim.faults, num_samples=50)
    >>> post.num_draws, post.info["labelled_windows"] > 0, post.summary()["faults"]
    (50, True, 'fitted from fault labels: crash')
    """
    del progress
    _check_settings(num_samples, prior_strength)
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 1:
        raise InvalidInputError(f"max_iterations must be a whole number >= 1; got {max_iterations!r}")
    if not (isinstance(tolerance, (int, float)) and tolerance > 0):
        raise InvalidInputError(f"tolerance must be a number > 0 (windows); got {tolerance!r}")
    attacks = tracked_attacks()
    hard = SignalStatistics.zeros(attacks)
    labelled, latent = [], []
    for events, run_labels, run_faults in _runs(data, labels, faults):
        recorded = record_windows(events, observation_map=observation_map, window=window)
        marks = None if run_faults is None else window_faults(recorded.ends, run_faults, window)
        hard.runs += 1
        if run_labels is None:
            latent.append((recorded, marks))
            continue
        stages, nodes = window_phases(recorded.ends, _read_labels(run_labels), attacks, window)
        before = hard.labelled_windows
        count_labelled_windows(hard, recorded.windows, stages,
                               [[n.get(w, ()) for n in nodes] for w in range(len(recorded.windows))], marks)
        if hard.labelled_windows == before:
            raise InvalidInputError("the labels mark no window of the log as an attack's precursor or execution; "
                                    "check that labels.json belongs to this log")
        count_transitions(hard, stages)
        labelled.append((recorded, stages))
    info: dict[str, Any] = {"observation_map": getattr(observation_map, "source", observation_map or "default")}
    statistics, method = hard, "conjugate"
    log_likelihoods = []
    if latent:
        statistics, em, log_likelihoods = _expectation_maximisation(hard, latent, window, float(prior_strength),
                                                                    max_iterations, float(tolerance))
        info["em"] = em
        method = "conjugate-em"
    posterior = posterior_from_statistics(statistics, num_samples=num_samples, prior_strength=prior_strength,
                                          seed=seed, check=check, info=info, method=method)
    posterior.info["settings"]["window"] = float(window)
    values = posterior.signal_parameters(8, seed)
    log_likelihoods += [_labelled_log_likelihood(values, recorded, stages, window) / max(len(recorded.windows), 1)
                        for recorded, stages in labelled]
    posterior.info["log_likelihood_per_window"] = float(np.mean(log_likelihoods))
    if latent and not posterior.info["em"]["converged"]:
        em = posterior.info["em"]
        moved = "an unknown amount" if em["change"] is None else f"{em['change']:.3g} windows"
        posterior.problems.append(f"the latent-phase fit did not converge in {em['iterations']} iterations: the "
                                  f"expected stage windows still moved by {moved} (tolerance {em['tolerance']:g}); "
                                  "raise max_iterations")
    return posterior


def _joint_chain(values: Mapping[str, np.ndarray], attacks: tuple, window: float) -> np.ndarray:
    """The chain of one attack at a time, ``(1 + 3 A, 1 + 3 A)``: none, then each attack's pattern, precursor, execution.

    Each attack's own 4-stage matrix is the filter's
    (:func:`bayes_defense.stream.model_filter.phase_transitions`); from "none"
    each attack starts at its own rate, and an attack that returns to benign
    returns the chain to "none".
    """
    from bayes_defense.stream.model_filter import phase_transitions

    per_attack = np.exp(phase_transitions(values, attacks, window)[:, 0])
    size = 1 + 3 * len(attacks)
    matrix = np.zeros((size, size))
    for i in range(len(attacks)):
        index = 1 + 3 * i + np.arange(3)
        chain = per_attack[i]
        matrix[0, index] = chain[0, 1:]
        matrix[index, 0] = chain[1:, 0]
        matrix[np.ix_(index, index)] = chain[1:, 1:]
    matrix[0, 0] = 1.0 - matrix[0, 1:].sum()
    if matrix[0, 0] <= 0.0:
        raise InvalidInputError("the attacks' start rates (benign_to_precursor) sum to 1 or more; the latent fit "
                                "needs them below 1")
    return matrix


def _smooth(values: Mapping[str, np.ndarray], recorded: RecordedWindows, window: float) -> tuple:
    """Forward-backward over the joint chain: ``(stage probabilities (W, 1 + 3 A), expected changes, log
    likelihood, attacker positions per window)`` under point ``values``."""
    attacks = tracked_attacks()
    model = evidence.signal_tables(values, attacks)
    faults = evidence.FaultFilter(values, window)
    steps = [faults.step(model, win) for win in recorded.windows]
    transition = _joint_chain(values, attacks, window)
    count, size = len(steps), transition.shape[0]
    log_emission = np.empty((count, size))
    for w, (ll, _, _) in enumerate(steps):
        log_emission[w, 0] = ll[0, 0, 0]
        log_emission[w, 1:] = ll[0, :, 1:].reshape(-1)
    peak = log_emission.max(1, keepdims=True)
    emission = np.exp(log_emission - peak)
    start = np.full(size, 1e-4) * (transition[0] > 0)
    start[0] = 1.0
    start /= start.sum()
    forward = np.empty((count, size))
    scale = np.empty(count)
    current = start
    for w in range(count):
        current = (current @ transition if w else current) * emission[w]
        scale[w] = current.sum()
        current = current / scale[w]
        forward[w] = current
    backward = np.ones((count, size))
    for w in range(count - 2, -1, -1):
        backward[w] = transition @ (emission[w + 1] * backward[w + 1]) / scale[w + 1]
    occupancy = forward * backward
    occupancy /= occupancy.sum(1, keepdims=True)
    if count > 1:
        pairs = transition * (forward[:-1].T @ (emission[1:] * backward[1:] / scale[1:, None]))
    else:
        pairs = np.zeros((size, size))
    log_likelihood = float(np.log(scale).sum() + peak.sum())
    positions = [np.exp(by_position[0]) for _, by_position, _ in steps]        # (A, 4, R + 1) per window
    return occupancy, pairs, log_likelihood, positions


def _count_latent(statistics: SignalStatistics, recorded: RecordedWindows, marks: list | None,
                  occupancy: np.ndarray, pairs: np.ndarray, positions: list) -> np.ndarray:
    """Soft counts of one unlabelled log; returns its occupancy summary (A, 5) for the convergence test."""
    attacks = statistics.attacks
    stage = occupancy[:, 1:].reshape(len(recorded.windows), len(attacks), 3)     # pattern, precursor, execution
    active = stage.sum(-1)
    rows = []
    for w in range(len(recorded.windows)):
        # The attacker's row given the window and stage, mixed over the stages by their probabilities.
        weight = np.einsum("ak,akr->ar", stage[w], positions[w][:, 1:]) / np.maximum(active[w], 1e-300)[:, None]
        weight[:, -1] = 1.0   # the unattributed row counts whoever the attacker is
        rows.append(weight)
    count_windows(statistics, recorded.windows, benign=occupancy[:, 0], active=active, executing=stage[:, :, 2],
                  rows=rows, faults=marks)
    # The expected phase changes are reported, not counted: without labels they are the least identified
    # part (a few events per log, timed only by the signals), and a chain whose stays are fitted to soft
    # counts can hold an attack "under way" through long benign stretches that its effects then absorb.
    # So an unlabelled log's transitions keep the prior (or what labelled logs fitted together say).
    summary = np.zeros((len(attacks), 5))
    for i in range(len(attacks)):
        pattern, precursor, execution = 1 + 3 * i + np.arange(3)
        summary[i] = (stage[:, i, :2].sum(), stage[:, i, 2].sum(), pairs[0, pattern] + pairs[0, precursor],
                      pairs[pattern, execution] + pairs[precursor, execution],
                      pairs[execution].sum() - pairs[execution, execution])
    return summary


def _expectation_maximisation(hard: SignalStatistics, latent: list, window: float, prior_strength: float,
                              max_iterations: int, tolerance: float) -> tuple:
    """The latent fit (module docstring): returns the converged statistics, the record of the iterations, and
    the log likelihood per window of each unlabelled log."""
    values = _point(hard, prior_strength)
    previous = None
    trace, change, converged = [], math.inf, False
    total = hard
    iteration = 0
    while iteration < max_iterations:
        iteration += 1
        soft = SignalStatistics.zeros(hard.attacks)
        summaries, log_likelihood, per_window = [], 0.0, []
        for recorded, marks in latent:
            occupancy, pairs, ll, positions = _smooth(values, recorded, window)
            summaries.append(_count_latent(soft, recorded, marks, occupancy, pairs, positions))
            log_likelihood += ll
            per_window.append(ll / max(len(recorded.windows), 1))
        total = hard + soft
        values = _point(total, prior_strength)
        trace.append(log_likelihood)
        summary = np.concatenate(summaries)
        if previous is not None:
            change = float(np.max(np.abs(summary - previous)))
            if change < tolerance:
                converged = True
                break
        previous = summary
    em = {"iterations": iteration, "converged": converged, "change": change if math.isfinite(change) else None,
          "tolerance": tolerance, "log_likelihood": trace,
          "criterion": "expected windows per stage and expected phase changes of every attack move by less than "
                       "tolerance between iterations",
          # Expected (precursor, execution) windows per attack over the unlabelled logs, at the last E-step.
          "stage_windows": {attack: [float(x) for x in sum(s[i, :2] for s in summaries)]
                            for i, attack in enumerate(hard.attacks)}}
    return total, em, per_window


def window_log_likelihoods(values: Mapping[str, np.ndarray], recorded: RecordedWindows,
                           window: float = 1.0) -> np.ndarray:
    """``log P(window's signals | attack, stage)`` for every recorded window: ``(W, D, A, 4)``.

    The same computation the filter runs window by window
    (:class:`bayes_defense.stream.evidence.FaultFilter` over
    :func:`~bayes_defense.stream.evidence.window_log_likelihood`).
    """
    model = evidence.signal_tables(values)
    faults = evidence.FaultFilter(evidence.check_values(values), window)
    return np.stack([faults.step(model, win)[0] for win in recorded.windows]) if recorded.windows else np.zeros(
        (0, model.draws, len(model.attacks), 4))


def _labelled_log_likelihood(values: Mapping[str, np.ndarray], recorded: RecordedWindows, stages: np.ndarray,
                             window: float = 1.0) -> float:
    """Sum over windows of the log likelihood of each window given its labelled stage (draw mean).

    The stage of the first attack under way in a window is used (one attack at a time, as the filter assumes).
    """
    ll = window_log_likelihoods(values, recorded, window)
    total = 0.0
    for w in range(ll.shape[0]):
        active = np.flatnonzero(stages[w])
        i, k = (int(active[0]), int(stages[w, active[0]])) if active.size else (0, 0)
        total += float(ll[w, :, i, k].mean())
    return total


def predictive_check(posterior: SignalPosterior, statistics: SignalStatistics, seed: int = 0) -> list[dict]:
    """The numeric posterior predictive check, one entry per summary statistic (module docstring).

    Examples
    --------
    >>> stats = SignalStatistics.zeros()
    >>> stats.benign_obs[:] = 1000.0
    >>> stats.benign_unknown[:] = 1000.0
    >>> stats.benign_on[SIGNALS.index("duplicates")] = 900.0      # no benign rate near 0.01 makes this
    >>> bad = SignalPosterior(evidence.prior_draws(40, seed=1), tracked_attacks())
    >>> "benign on-fraction of duplicates" in [c["statistic"] for c in predictive_check(bad, stats) if not c["ok"]]
    True
    """
    rng = np.random.default_rng(seed + 1)
    draws = posterior.draws
    replicas = statistics.replica_rows / statistics.windows if statistics.windows > 0 else 1.0
    out = []

    def judge(name: str, on: float, total: float, rate: np.ndarray) -> None:
        replicated = rng.binomial(max(int(round(total)), 1), np.clip(rate, 0.0, 1.0)) / max(round(total), 1)
        observed = on / total
        lower, upper = np.quantile(replicated, [PPC_TAIL, 1.0 - PPC_TAIL])
        p_value = float(min(1.0, 2.0 * min((replicated >= observed).mean(), (replicated <= observed).mean())))
        out.append({"statistic": name, "observed": float(observed), "lower": float(lower), "upper": float(upper),
                    "p_value": p_value, "ok": bool(lower <= observed <= upper)})

    def baseline(signal: str) -> np.ndarray:
        return draws[evidence._baseline_name(signal)]

    def shares(signal: str) -> np.ndarray:
        return _fault_share(draws, signal, replicas, attributed=signal not in OUTCOME_SIGNALS)

    for s, signal in enumerate(SIGNALS):
        obs = statistics.benign_obs[s]
        if obs == 0:
            continue
        unknown = min(statistics.benign_unknown[s] / obs, 1.0)
        rate = 1.0 - (1.0 - baseline(signal)) * (1.0 - unknown * shares(signal))
        judge(f"benign on-fraction of {signal}", statistics.benign_on[s], obs, rate)
    if statistics.fault_known_windows > 0:
        for g, (name, fault) in enumerate(FAULTS.items()):
            judge(f"share of windows under {name}", statistics.fault_windows[g], statistics.fault_known_windows,
                  draws[f"fault.{name}.prior"])
            for signal in {**fault.at_node, **fault.cluster}:
                s = SIGNALS.index(signal)
                effect = draws[f"fault.{name}.{signal}"]
                everywhere = effect if signal in fault.cluster else 0.0
                at_rows = 1.0 - (1.0 - baseline(signal)) * (1.0 - everywhere) * (
                    1.0 - (effect if signal in fault.at_node else 0.0))
                elsewhere = 1.0 - (1.0 - baseline(signal)) * (1.0 - everywhere)
                (hit_on, other_on), (hit_obs, other_obs) = statistics.fault_on[g, s], statistics.fault_obs[g, s]
                if signal not in fault.at_node:
                    # One rate at every row, as it is estimated. Judged apart, the rows it hits would test its own
                    # reports, and a crashed replica's are only its last ones, made before the loss shows.
                    if hit_obs + other_obs > 0:
                        judge(f"{name} on-fraction of {signal}", hit_on + other_on, hit_obs + other_obs, elsewhere)
                    continue
                if hit_obs > 0:
                    judge(f"{name} on-fraction of {signal} at its replicas", hit_on, hit_obs, at_rows)
                if other_obs > 0:
                    judge(f"{name} on-fraction of {signal} elsewhere", other_on, other_obs, elsewhere)
    for i, attack in enumerate(posterior.attacks):
        for name, signal, stage in _attack_edges(attack):
            on, obs, unknown = _stage_counts(statistics, i, SIGNALS.index(signal), stage)
            if obs <= 0:
                continue
            rate = 1.0 - (1.0 - _attack_base(draws, signal, obs, unknown, replicas)) * (1.0 - draws[name])
            judge(f"{attack} on-fraction of {signal} in {stage}", on, obs, rate)
    return out

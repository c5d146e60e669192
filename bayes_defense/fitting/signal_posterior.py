"""The signal model's posterior from sufficient statistics: the counts, the conjugate draws, the predictive check.

Everything here works on counts alone, with no log and no defender: the fit
(:mod:`bayes_defense.fitting.signal_model`) and the learning loop
(:mod:`bayes_defense.fitting.learning`) count windows into
:class:`SignalStatistics`, and the model filter reads its shipped default
posterior (:func:`default_posterior`) from statistics stored in the package.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bayes_defense.errors import InvalidInputError
from bayes_defense.models.faults import FAULTS, OUTCOME_SIGNALS
from bayes_defense.models.registry import attack_spec, tracked_attacks
from bayes_defense.stream import evidence
from bayes_defense.stream.signals import SIGNALS, WindowSignals

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "PPC_TAIL", "BASELINE_STRENGTH", "SignalPosterior", "SignalStatistics",
           "count_windows", "count_transitions", "attack_rows", "count_labelled_windows", "posterior_from_statistics",
           "predictive_check", "posterior_from_groups", "point_estimate",
           "check_fit_settings", "fault_share", "DEFAULT_STATISTICS", "write_statistics",
           "read_statistics", "default_posterior"]

FORMAT_NAME = "bayes_defense.signal_posterior"
#: 2.0: jitter's ``fault.jitter.preprepare_delay`` is a cluster effect (it was at the fault's replica), and the
#: filter follows a fault's replica across windows; draws of a 1.x file were fitted for the other model.
#: 3.0: the slow fault is two, ``slow`` (a backup) and ``slow_primary``; a 2.x file's slow fault is both at once.
FORMAT_VERSION = "3.0"
#: Two-sided tail of the posterior predictive check: outside the central 99.9 % fails.
PPC_TAIL = 0.0005
#: Pseudo-windows of the benign rates' prior. The indicators are thresholded at the 1 % tail of
#: benign windows, so their benign rate is known to be near 0.01 before any data; a short log
#: without a single benign "on" must not make it 0 (one later window would then look damning).
BASELINE_STRENGTH = 200.0
_FAULT_NAMES = tuple(FAULTS)


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

    def for_attacks(self, attacks: Sequence[str] | None = None) -> SignalStatistics:
        """These counts rearranged for ``attacks`` (default: the tracked ones): rows of attacks counted here are
        kept, attacks not counted here start at zero (their prior), rows of attacks not asked for are dropped.

        Examples
        --------
        >>> stats = SignalStatistics.zeros(("replay",))
        >>> stats.phase_windows[0, 2] = 5.0
        >>> moved = stats.for_attacks(("flooding", "replay"))
        >>> moved.attacks, moved.phase_windows[:, 2].tolist()
        (('flooding', 'replay'), [0.0, 5.0])
        """
        attacks = tracked_attacks() if attacks is None else tuple(attacks)
        out = SignalStatistics.zeros(attacks)
        out.signals = self.signals
        for name in ("benign_on", "benign_obs", "benign_unknown", "fault_on", "fault_obs", "fault_windows"):
            setattr(out, name, getattr(self, name).copy())
        for i, attack in enumerate(attacks):
            if attack in self.attacks:
                j = self.attacks.index(attack)
                for name in ("attack_on", "attack_obs", "attack_unknown", "phase_windows", "phase_changes"):
                    getattr(out, name)[i] = getattr(self, name)[j]
        for name in self._SCALARS:
            setattr(out, name, getattr(self, name))
        return out

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


def fault_share(values: Mapping[str, np.ndarray], signal: str, replicas: float, attributed: bool) -> np.ndarray:
    """P(signal on from benign faults alone) at a replica row (or the unattributed row), per draw.

    Examples
    --------
    >>> share = fault_share(evidence.default_values(), "vc_request", 4.0, attributed=True)
    >>> bool(0.0 <= share[0] <= 1.0)
    True
    """
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
    # A file of an older release lacks the parameters added since (per-phase edges, new signals): filling them
    # with defaults would run a model the fit never saw, so it is refused.
    missing = sorted(set(evidence.parameter_names(attacks)) - set(draws))
    if missing:
        raise InvalidInputError(f"{path.name} lacks {len(missing)} parameter(s) of this release's signal model "
                                f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): it was fitted "
                                "by an older release; refit with `bayes-defense fit --defender model`")
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
        faults = fault_share(draws, signal, replicas, attributed=signal not in OUTCOME_SIGNALS)
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
    share = fault_share(values, signal, replicas, attributed=signal not in OUTCOME_SIGNALS)
    return 1.0 - (1.0 - values[evidence._baseline_name(signal)]) * (1.0 - min(unknown / obs, 1.0) * share)


def point_estimate(statistics: SignalStatistics, prior_strength: float) -> dict[str, np.ndarray]:
    """The parameters at their Beta posterior means (one draw): the latent fit's current estimate.

    Examples
    --------
    >>> values = point_estimate(SignalStatistics.zeros(), 2.0)
    >>> values["telemetry.msg_rate.baseline"].shape
    (1,)
    """
    prior = evidence.parameter_names(statistics.attacks)
    values, _ = _parameters(statistics, evidence.default_values(statistics.attacks), prior, prior_strength,
                            _beta_mean)
    return values


def check_fit_settings(num_samples: Any, prior_strength: Any) -> None:
    """Refuse a draw count below 2 or a prior strength that is not a positive number, with the reason.

    Examples
    --------
    >>> check_fit_settings(10, 2.0)
    """
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
    check_fit_settings(num_samples, prior_strength)
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
        return fault_share(draws, signal, replicas, attributed=signal not in OUTCOME_SIGNALS)

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


#: The file the shipped default posterior is drawn from: the sufficient statistics of a labelled fit on
#: simulator training runs, written by ``python papers/default_posterior.py`` (its docstring: the runs).
DEFAULT_STATISTICS = Path(__file__).resolve().parent.parent / "data" / "posteriors" / "signal_model.json"
STATISTICS_FORMAT = "bayes_defense.signal_statistics"
STATISTICS_VERSION = "1.0"
# A statistics file holds a few arrays of (attacks x signals x 2) counts: tens of kilobytes.
_MAX_STATISTICS_BYTES = 8 * 2 ** 20
_DEFAULTS: dict[tuple, SignalPosterior] = {}


def write_statistics(path: Any, statistics: SignalStatistics, info: Mapping[str, Any]) -> Path:
    """Write sufficient statistics and their provenance as JSON (atomically); :func:`read_statistics` reads it.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "stats.json"
    >>> _ = write_statistics(path, SignalStatistics.zeros(), {"made_by": "a doctest"})
    >>> read_statistics(path)[1]["made_by"]
    'a doctest'
    """
    from bayes_defense.ioutil import atomic_write

    path = Path(path)
    record = {"format": STATISTICS_FORMAT, "format_version": STATISTICS_VERSION, "info": dict(info),
              "statistics": statistics.state_dict()}
    with atomic_write(path) as handle:
        json.dump(record, handle, indent=1, allow_nan=False)
        handle.write("\n")
    return path


def read_statistics(path: Any) -> tuple[SignalStatistics, dict[str, Any]]:
    """Read a :func:`write_statistics` file: ``(statistics, info)``; anything else is refused with the reason."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > _MAX_STATISTICS_BYTES:
            raise InvalidInputError(f"{path}: {size} bytes is larger than a statistics file can be "
                                    f"({_MAX_STATISTICS_BYTES} bytes); it is not one")
        record = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise InvalidInputError(f"cannot read the signal statistics {path}: {error.strerror or error}") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidInputError(f"{path} is not a signal statistics file (not JSON); write one with "
                                "write_statistics") from None
    if not isinstance(record, dict) or record.get("format") != STATISTICS_FORMAT:
        raise InvalidInputError(f"{path} is not a signal statistics file (format {STATISTICS_FORMAT!r} expected)")
    version = str(record.get("format_version", ""))
    if version.split(".")[0] != STATISTICS_VERSION.split(".")[0]:
        raise InvalidInputError(f"{path} has statistics format version {version!r}; this release reads "
                                f"{STATISTICS_VERSION.split('.')[0]}.x: regenerate it")
    info = record.get("info", {})
    if not isinstance(info, dict):
        raise InvalidInputError(f"{path}: 'info' must be a dict")
    return SignalStatistics.from_state(record.get("statistics")), info


def default_posterior(num_samples: int = 400, seed: int = 0) -> SignalPosterior:
    """The shipped default posterior of the signal model: what the model filter runs when given no parameters.

    Drawn (:func:`posterior_from_statistics`) from :data:`DEFAULT_STATISTICS`,
    the counts of a labelled fit on simulator training runs (seeds 20000 and
    up, never used to evaluate; ``python papers/default_posterior.py`` writes
    it). Attacks the file did not count (user attacks) keep their prior. It
    is fitted to the package's simulator, not to your system: fit your own
    logs with ``bd.fit("model", ...)`` (or add them to these counts with
    ``bd.merge_posteriors``). Cached per tracked attacks and settings.

    Examples
    --------
    >>> post = default_posterior(num_samples=20)
    >>> post.info["source"], post.num_draws
    ('default', 20)
    """
    from bayes_defense.models import registry

    key = (registry.generation(), tracked_attacks(), tuple(SIGNALS), num_samples, seed)
    if key not in _DEFAULTS:
        statistics, info = read_statistics(DEFAULT_STATISTICS)
        if statistics.signals != tuple(SIGNALS):
            raise InvalidInputError(f"the shipped default posterior ({DEFAULT_STATISTICS}) was counted over other "
                                    "signals than the model reads now: regenerate it with python "
                                    "papers/default_posterior.py")
        settings = info.get("settings", {})
        _DEFAULTS.clear()
        _DEFAULTS[key] = posterior_from_statistics(
            statistics.for_attacks(), num_samples=num_samples, seed=seed, check=False,
            prior_strength=float(settings.get("prior_strength", 2.0)), method="conjugate-default",
            info={"source": "default", "file": DEFAULT_STATISTICS.name, "training": info.get("training")})
    return _DEFAULTS[key]

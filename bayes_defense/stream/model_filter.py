"""The streaming model filter: the cluster model's attacks, signals and benign faults, filtered online.

Per attack, a phase chain (benign, the first stage of an ordered precursor
pattern when the attack declares one, precursor, execution) is filtered in
log space, one forward step per window, for every draw of the parameter
ensemble side by side. A window's evidence is its signals
(:mod:`bayes_defense.stream.signals`, after the observation map of
:mod:`bayes_defense.stream.obsmap`), and their likelihood under each stage is
the model's own (:func:`bayes_defense.stream.evidence.window_log_likelihood`:
the catalogue's noisy-OR signal probabilities, the attacker's replica summed
out with the attack's precondition as its prior, benign faults as competing
causes). No per-attack score or discount is hand-set.

The three detection paths are the parts of this one posterior: temporal
precursor patterns are the phase chain (and its pattern stage), precondition
monitoring is the attacker's prior (who is primary, from the log), and the
counterfactual projection is the model's P(success within the horizon | no
countermeasure): P(execution under way or starting within the horizon) times
:func:`bayes_defense.models.tables.success_given_controls` with no control in place.

Event handling (validation, duplicates, clock skew, checkpoints as data) is
the scored defender's, inherited: this class changes what a window means,
not how events are admitted.
"""

from __future__ import annotations

import copy
import functools
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from bayes_defense.errors import InvalidInputError
from bayes_defense.fitting.signal_posterior import default_posterior
from bayes_defense.models import tables
from bayes_defense.models.catalogue import ATTACKS
from bayes_defense.models.faults import FAULTS
from bayes_defense.models.registry import attack_spec, tracked_attacks
from bayes_defense.stream import evidence
from bayes_defense.stream.base import SETTINGS as _SETTINGS
from bayes_defense.stream.base import (
    Alert,
    Belief,
    DefenderBase,
    check_episode_counts,
    upgrade_state,
)
from bayes_defense.stream.base import check_settings as _check_settings
from bayes_defense.stream.obsmap import KindRule, ObservationMap, UnmatchedCounter
from bayes_defense.stream.recommend import (
    FALLBACK,
    Recommendations,
    recommend,
    register_parameters,
    resolve_planner,
)
from bayes_defense.stream.schema import KNOWN_KINDS, REJECTION_REASONS
from bayes_defense.stream.signals import SIGNALS, SignalExtractor

__all__ = ["ModelAlert", "ModelBelief", "ModelDefender", "phase_transitions"]

#: The default ``confirm_windows``: an armed hypothesis alerts once its lower bound has stayed over
#: the threshold for this many windows in a row: a crossing that the next window does not bear out
#: is mostly a look-alike's (on the tuning runs, seeds 40000-40015 and 80000-80015: 6 of 15 false
#: alerts crossed for one window only, 1 of 50 true ones, and that one crossed again within the
#: next 30 windows).
CONFIRM_WINDOWS = 2

_CHECKPOINT_KIND = "ModelDefender"
# Replica rows a persistent attacker position can take (the signal extractor's bound on replicas).
_MAX_POSITIONS = 100
# Footings whose attacker is one replica among several: its position is followed window to window.
_PERSISTENT_FOOTINGS = frozenset({"attacker_inside", "backup_faulty", "eclipse_footing"})
_MAX_AGGREGATES = 8192
_FAULT_NAMES = tuple(FAULTS)
# Initial stage probabilities: almost surely benign.
_INITIAL = (1e-4, 1e-4, 1e-4)


@dataclass(frozen=True)
class ModelAlert(Alert):
    """An alert with its explanation: ``({cause, probability, lower, upper}, ...)``, most probable first.

    Examples
    --------
    >>> a = ModelAlert(3.0, "replay", ("r1",), 0.9, 0.85, 0.95, "precursor", "trusted_component",
    ...                ({"cause": "replay", "probability": 0.9, "lower": 0.85, "upper": 0.95},))
    >>> a.to_dict()["explanation"][0]["cause"]
    'replay'
    """

    explanation: tuple = ()

    def to_dict(self) -> dict[str, Any]:
        """The ``alerts.jsonl`` record, with ``explanation``."""
        out = super().to_dict()
        out["explanation"] = [dict(item) for item in self.explanation]
        return out


@dataclass(frozen=True)
class ModelBelief(Belief):
    """A :class:`~bayes_defense.stream.base.Belief` whose rows are :attr:`attacks`, user attacks included.

    The base class reads its rows by :attr:`attacks` already; the name is kept for code that tests for it.
    """


def _quantiles(draws: np.ndarray, level: float) -> np.ndarray:
    """``(..., D) -> (..., 3)``: mean and the ``level`` band across draws, ordered lower <= mean <= upper."""
    ordered = np.sort(draws, axis=-1)
    count = ordered.shape[-1]
    tail = (1.0 - level) / 2.0
    low = ordered[..., int(math.floor(tail * (count - 1)))]
    high = ordered[..., int(math.ceil((1.0 - tail) * (count - 1)))]
    mean = np.clip(draws.mean(axis=-1), 0.0, 1.0)
    return np.stack([mean, np.clip(np.minimum(low, mean), 0.0, 1.0), np.clip(np.maximum(high, mean), 0.0, 1.0)], -1)


def phase_transitions(values: Mapping[str, np.ndarray], attacks: tuple, window: float = 1.0) -> np.ndarray:
    """Log transition matrices of every attack's phase chain: ``(A, D, 4, 4)`` over :data:`~bayes_defense.stream.evidence.STAGES`.

    Benign -> precursor -> execution -> benign, with the rates
    ``{attack}.{benign_to_precursor, precursor_to_execution, precursor_to_benign, execution_to_benign}``;
    an attack with an ordered precursor pattern goes benign -> pattern ->
    precursor instead, and its pattern stage lapses back to benign after the
    pattern's ``within`` seconds. ``values`` are :func:`~bayes_defense.stream.evidence.check_values` output.

    Examples
    --------
    >>> from bayes_defense.stream.evidence import default_values
    >>> t = np.exp(phase_transitions(default_values(), ("replay", "censorship")))
    >>> t.shape, bool(np.allclose(t.sum(-1), 1.0)), float(t[0, 0, 0, 1])   # replay has no pattern stage
    ((2, 1, 4, 4), True, 0.0)
    """
    draws = next(iter(values.values())).shape[0]
    matrix = np.zeros((len(attacks), draws, 4, 4))
    for i, attack in enumerate(attacks):
        spec = attack_spec(attack)
        bp, pe = values[f"{attack}.benign_to_precursor"], values[f"{attack}.precursor_to_execution"]
        pb, eb = values[f"{attack}.precursor_to_benign"], values[f"{attack}.execution_to_benign"]
        if spec.pattern is None:
            matrix[i, :, 0, 0], matrix[i, :, 0, 2] = 1 - bp, bp
            matrix[i, :, 1, 0] = 1.0   # unreachable stage
        else:
            # The first signal of the pattern opens the pattern stage; it lapses after ``within``.
            lapse = min(1.0, window / spec.pattern.within)
            pp = values[f"{attack}.pattern_to_precursor"]
            matrix[i, :, 0, 0], matrix[i, :, 0, 1] = 1 - bp, bp
            matrix[i, :, 1, 0], matrix[i, :, 1, 2] = lapse * (1 - pp), pp
            matrix[i, :, 1, 1] = 1.0 - matrix[i, :, 1, 0] - pp
        matrix[i, :, 2, 0], matrix[i, :, 2, 2], matrix[i, :, 2, 3] = pb, 1 - pb - pe, pe
        matrix[i, :, 3, 0], matrix[i, :, 3, 3] = eb, 1 - eb
    with np.errstate(divide="ignore"):
        return np.log(np.clip(matrix, 0.0, 1.0))


@functools.lru_cache(maxsize=256)
def _persistent_log_weights(footing: tuple, replicas: int, primary: int) -> np.ndarray:
    """``log`` of the starting replica's prior for attacks of these footings, ``(P, replicas)``; read-only.

    The precondition's prior over the replicas (:func:`~bayes_defense.stream.evidence.attacker_weights`
    without "outside"), uniform where it gives the replicas no weight. Cached: a window's replica
    count and primary mostly repeat the last window's.
    """
    weights = np.stack([evidence.attacker_weights(f, replicas, primary)[:replicas] for f in footing])
    weights = np.where(weights.sum(-1, keepdims=True) > 0, weights, 1.0 / replicas)
    with np.errstate(divide="ignore"):
        out = np.log(weights)
    out.setflags(write=False)
    return out


class ModelDefender(DefenderBase):
    """Online Bayesian defender whose model is the cluster model's (module docstring).

    Parameters
    ----------
    parameters : dict of arrays, posterior object or "prior", optional
        Draws of the signal model's parameters (names of
        :func:`bayes_defense.stream.evidence.parameter_names`; missing names
        take their defaults), or an object with
        ``signal_parameters(draws: int, seed: int) -> dict`` (a fitted
        posterior of :mod:`bayes_defense.fitting.signal_model`). Default: the
        shipped default posterior
        (:func:`bayes_defense.fitting.signal_posterior.default_posterior`,
        fitted on simulator training runs; fit your own logs for your system).
        ``"prior"``: ``ensemble`` draws of the catalogue's prior
        (:func:`bayes_defense.stream.evidence.prior_draws`), which knows an
        attack's signals but not how persistently they show.
    ensemble, seed : int
        Size and seed of the prior draws (or passed to ``signal_parameters``).
    observation_map : ObservationMap, path or name, optional
        How the log's vocabulary becomes the model's (default: schema 1.0).
    adaptive : float, optional
        Target false-alarm rate per window: each attack's threshold then
        starts at ``threshold`` and moves online (a Robbins-Monro step per
        armed window) to the ``1 - adaptive`` quantile of its lower bounds,
        within [0.5, 0.999]. Off (None) by default.
    confirm_windows : int
        Windows in a row with the lower bound over the threshold before an
        armed hypothesis alerts (default :data:`CONFIRM_WINDOWS`).
    window, horizon, threshold, rearm, level, baseline_rate, duplicate_memory, rearm_windows, planner, \
max_clock_skew, clock_confirm
        As for :class:`~bayes_defense.stream.scored.ScoredDefender`.

    Examples
    --------
    >>> from bayes_defense.stream import Event
    >>> defender = ModelDefender(ensemble=4)
    >>> belief = defender.observe(Event(1.0, "r0", "duplicate_messages", 0.0, {}))
    >>> defender.observe({"ts": "x"}) is belief, defender.rejected
    (True, {'malformed': 1})
    >>> lower, mean, upper = (float(belief.probability("replay", "active").lower),
    ...                       float(belief.probability("replay").mean), float(belief.probability("replay").upper))
    >>> 0.0 <= lower <= mean <= upper <= 1.0
    True
    """

    def __init__(self, parameters: Any = None, *, ensemble: int = 16, seed: int = 0, window: float = 1.0,
                 horizon: float = 60.0, threshold: float = 0.8, rearm: float = 0.3, level: float = 0.9,
                 baseline_rate: float = 0.02, duplicate_memory: int = 4096, rearm_windows: int = 60,
                 planner: Any = "plan", max_clock_skew: float = 300.0, clock_confirm: int = 3,
                 observation_map: Any = None, adaptive: float | None = None,
                 confirm_windows: int = CONFIRM_WINDOWS) -> None:
        settings = _check_settings({"window": window, "horizon": horizon, "threshold": threshold, "rearm": rearm,
                                    "level": level, "baseline_rate": baseline_rate,
                                    "duplicate_memory": duplicate_memory, "rearm_windows": rearm_windows,
                                    "confirm_windows": confirm_windows, "max_clock_skew": max_clock_skew,
                                    "clock_confirm": clock_confirm})
        if adaptive is not None and (isinstance(adaptive, bool) or not isinstance(adaptive, (int, float))
                                     or not 0.0 < float(adaptive) < 0.5):
            raise InvalidInputError(f"adaptive must be None or a target false-alarm rate in (0, 0.5); got {adaptive!r}")
        if observation_map is None:
            observation_map = ObservationMap.default()
        elif not isinstance(observation_map, ObservationMap):
            observation_map = ObservationMap.load(observation_map)
        self._map = observation_map
        self.attacks = tracked_attacks()
        if parameters is None:
            parameters = default_posterior()
        #: The fitted posterior this defender's draws come from, when they come from one (the learning
        #: loop's ledger starts from its counts: bayes_defense.fitting.learning.SignalLedger.for_defender).
        self.base_posterior = parameters if hasattr(parameters, "signal_parameters") else None
        if isinstance(parameters, str) and parameters == "prior":
            values = evidence.prior_draws(ensemble, seed, self.attacks)
        elif isinstance(parameters, str):
            raise InvalidInputError(f"parameters must be draws, a fitted posterior, None (the shipped default) or "
                                    f"'prior'; got the string {parameters!r}")
        elif hasattr(parameters, "signal_parameters"):
            values = evidence.check_values(parameters.signal_parameters(ensemble, seed), self.attacks)
        elif hasattr(parameters, "defender_parameters"):
            raise InvalidInputError("this posterior was fitted for the scored defender (score means and spreads), "
                                    "not for the model filter's signal probabilities; refit with `bayes-defense fit` "
                                    "(bd.fit('defender', ...)) or run it with bayes_defense.stream.scored")
        else:
            values = evidence.check_values(parameters, self.attacks)
        self._planner = resolve_planner(planner)
        self.parameters = values
        self.__dict__.update(settings)
        self.adaptive = None if adaptive is None else float(adaptive)
        self._build()
        # Each closed window's (end, WindowSignals) is appended to it when set: a list (the fit
        # records windows so) or the learning loop's ledger
        # (bayes_defense.fitting.learning.SignalLedger, which :meth:`learn` uses). The defender does
        # not import the fitting package: the ledger is given to it, and its state is the caller's
        # to keep (``bayes-defense defend --learn`` stores it in the checkpoint's extra).
        self.record: Any = None
        self.reset()

    def learn(self, labels: Any) -> Any:
        """Fold labels that arrived after the fact into the posterior this defender runs with; return it.

        ``labels``: confirmed attacks (``labels.json`` records) and rejected
        alerts (``{"verdict": "not_attack", "attack": name or None, "ts": t}``
        or ``"start"``/``"end"``), as :meth:`bayes_defense.fitting.learning.SignalLedger.learn`
        takes them. The update is exact (conjugate counts: the posterior
        equals a fit of the windows seen with these labels); the new draws
        replace the running ones, and the beliefs carry over. Needs a ledger
        in :attr:`record`, set before the windows it should count.

        Examples
        --------
        >>> from bayes_defense.fitting.learning import SignalLedger
        >>> from bayes_defense.sim import Simulation, random_scenario
        >>> sim = Simulation(random_scenario(5, nodes=4, duration=200, attacks=["replay"], faults=[]))
        >>> defender = ModelDefender(ensemble=4, planner=None)
        >>> defender.record = SignalLedger.for_defender(defender)
        >>> _ = defender.observe_batch(sim.events()); _ = defender.flush()
        >>> posterior = defender.learn(sim.labels)
        >>> posterior.info["labelled_windows"] > 0, defender.parameters["replay.p_success"].shape
        (True, (4,))
        """
        if not hasattr(self.record, "learn"):
            raise InvalidInputError("this defender keeps no ledger of its windows; set defender.record = "
                                    "bayes_defense.fitting.learning.SignalLedger.for_defender(defender) before its "
                                    "windows (bayes-defense defend --learn does) to learn from labels")
        posterior = self.record.learn(labels)
        self.set_parameters(posterior)
        return posterior

    def posterior(self) -> Any:
        """The posterior the learning ledger in :attr:`record` holds now (:meth:`learn`)."""
        if not hasattr(self.record, "posterior"):
            raise InvalidInputError("this defender keeps no ledger of its windows (see learn)")
        return self.record.posterior()

    def _build(self) -> None:
        """Tables and transitions from the parameters (configuration, rebuilt on load)."""
        values, attacks = self.parameters, self.attacks
        self._tables = evidence.signal_tables(values, attacks)
        draws = self._tables.draws
        self._log_transition = phase_transitions(values, attacks, self.window)
        steps_per_pattern = {attack: values[f"{attack}.pattern_to_precursor"] for attack in attacks
                             if attack_spec(attack).pattern is not None}
        # The counterfactual projection's ingredients: P(execution within the horizon from each stage)
        # and P(success | execution, no countermeasure).
        steps = self.horizon / self.window
        onset = np.zeros((len(attacks), draws, 4))
        success = np.zeros((len(attacks), draws))
        value = tables.accessor(values)
        for i, attack in enumerate(attacks):
            pe = values[f"{attack}.precursor_to_execution"]
            from_precursor = 1.0 - (1.0 - pe) ** steps
            onset[i, :, 2], onset[i, :, 3] = from_precursor, 1.0
            if attack in steps_per_pattern:
                onset[i, :, 1] = (1.0 - (1.0 - steps_per_pattern[attack]) ** steps) * from_precursor
            if attack in ATTACKS:
                controls = {key: 0.0 for key, _ in tables.mitigations(attack)}
                success[i] = tables.success_given_controls(attack, value, 0.0, controls)
            else:
                success[i] = tables.success_given_execution(attack, value, 0.0)
        self._onset = onset
        self._success = success
        self._persistent = np.array([i for i, a in enumerate(attacks) if attack_spec(a).footing in _PERSISTENT_FOOTINGS],
                                    dtype=np.int64)
        # Alerts' countermeasures are planned on the cluster model with these draws (in its names), so a
        # fitted or the default posterior reaches them as it reaches bd.plan (bayes_defense.stream.recommend).
        self._plan_parameters = register_parameters(evidence.incident_parameters(values, attacks))

    @property
    def observation_map(self) -> ObservationMap:
        """The observation map this defender reads its log through (read-only)."""
        return self._map

    def set_parameters(self, parameters: Any) -> None:
        """Swap the signal model's parameters of a running defender; its beliefs and baselines are kept.

        ``parameters`` are draws as for the constructor (or a fitted posterior
        with ``signal_parameters``), with as many draws as now, so the filtered
        stage and fault probabilities carry over draw by draw.

        Examples
        --------
        >>> defender = ModelDefender(ensemble=2, planner=None)
        >>> defender.set_parameters(evidence.prior_draws(2, seed=3))
        >>> defender.parameters["telemetry.msg_rate.baseline"].shape
        (2,)
        """
        draws = self._tables.draws
        posterior = parameters if hasattr(parameters, "signal_parameters") else None
        if posterior is not None:
            parameters = posterior.signal_parameters(draws, 0)
        values = evidence.check_values(parameters, self.attacks)
        if next(iter(values.values())).shape[0] != draws:
            raise InvalidInputError(f"set_parameters needs {draws} draws, as the running defender has; got "
                                    f"{next(iter(values.values())).shape[0]}")
        log_faults, log_position = self._faults.log_faults, self._faults.log_position
        self.base_posterior = posterior
        self.parameters = values
        self._build()
        self._faults = evidence.FaultFilter(self.parameters, self.window)
        self._faults.log_faults, self._faults.log_position = log_faults, log_position

    # ----------------------------------------------------------------- state
    def reset(self) -> None:
        """Forget everything seen; keep the parameters and the map."""
        attacks, draws = len(self.attacks), self._tables.draws
        start = np.log(np.array([1.0 - sum(_INITIAL), *_INITIAL]))
        self._log_alpha = np.tile(start, (attacks, draws, 1))
        self._log_alpha[:, :, 1] = np.where(self._log_transition[:, :, 0, 1] > -np.inf, start[1], -700.0)
        self._log_alpha -= np.log(np.exp(self._log_alpha).sum(-1, keepdims=True))
        self.accepted = 0
        self.rejected: dict[str, int] = {}
        self.windows = 0
        self._current = -1
        self._last_ts = -math.inf
        self._held: list = []
        self._seen: set = set()
        self._extractor = SignalExtractor(self.baseline_rate, self._map.replica_pattern)
        self._faults = evidence.FaultFilter(self.parameters, self.window)
        self._aggregates: dict = {}
        self._previous: dict = {}   # (node, kind) -> ts of its last aggregated event, for "interval"
        self._armed = [True] * attacks
        self._confirm = [0] * attacks
        self._quiet = [0] * attacks
        self._thresholds = [self.threshold] * attacks
        self._suspects: dict[str, tuple[str, ...]] = {name: () for name in self.attacks}
        self._fault_posterior = np.zeros((attacks, draws, 4, len(_FAULT_NAMES) + 1))
        self._log_position = np.full((attacks, draws, 4, _MAX_POSITIONS), -700.0)
        self.last_log_likelihood = np.zeros((draws, attacks, 4))
        self.unmatched = UnmatchedCounter()
        self.alerts: deque = deque(maxlen=10_000)
        self._pending_alerts: list = []
        self.belief = self._summarise(-math.inf, ())

    _DYNAMIC = ("_log_alpha", "accepted", "rejected", "windows", "_current", "_last_ts", "_held", "_seen",
                "_aggregates", "_previous", "_armed", "_confirm", "_quiet", "_thresholds", "_suspects", "_fault_posterior", "_log_position",
                "last_log_likelihood", "alerts", "_pending_alerts")

    def _map_state(self) -> dict[str, Any]:
        m = self._map
        return {"kinds": {k: [list(rule.__dict__.values()) for rule in rules] for k, rules in m.kinds.items()},
                "replica": m.replica, "schema_kinds": m.schema_kinds, "source": m.source}

    @staticmethod
    def _map_from_state(state: Mapping[str, Any]) -> ObservationMap:
        try:
            kinds = {str(k): [KindRule(str(r[0]), float(r[1]), tuple(tuple(p) for p in r[2]),
                                       None if r[3] is None else str(r[3]), None if r[4] is None else str(r[4]))
                              for r in rules] for k, rules in state["kinds"].items()}
            return ObservationMap(kinds, replica=state["replica"], schema_kinds=bool(state["schema_kinds"]),
                                  source=str(state["source"]))
        except (TypeError, ValueError, KeyError, IndexError) as error:
            raise InvalidInputError(f"checkpoint observation map is malformed ({type(error).__name__})") from None

    def state_dict(self) -> dict[str, Any]:
        """A deep copy of the full state as plain data; see :meth:`load_state_dict`.

        Examples
        --------
        >>> a, b = ModelDefender(ensemble=2), ModelDefender(ensemble=2)
        >>> b.load_state_dict(a.state_dict())
        >>> b.accepted == a.accepted
        True
        """
        state = {key: getattr(self, key) for key in self._DYNAMIC}
        state.update({name: getattr(self, name) for name in _SETTINGS})
        state.update(parameters=self.parameters, adaptive=self.adaptive, attacks=self.attacks, signals=SIGNALS,
                     observation_map=self._map_state(), extractor=self._extractor.state_dict(),
                     log_faults=self._faults.log_faults, log_fault_position=self._fault_position_state(),
                     unmatched=dict(self.unmatched.counts), unmatched_total=self.unmatched.total,
                     belief_ts=self.belief.ts)
        return copy.deepcopy(state)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output, checked first; on a problem the defender is left as it was."""
        try:
            checked = self._check_state(state)
        except InvalidInputError as error:
            raise InvalidInputError(f"checkpoint state: {error}") from None
        except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError) as error:
            raise InvalidInputError(f"checkpoint state is malformed ({type(error).__name__}: {str(error)[:120]})") from None
        saved = dict(self.__dict__)
        try:
            self.__dict__.update({name: checked[name] for name in _SETTINGS})
            self.parameters, self.adaptive = checked["parameters"], checked["adaptive"]
            self._map = self._map_from_state(checked["observation_map"])
            self._build()
            for key in self._DYNAMIC:
                setattr(self, key, checked[key])
            self._extractor = SignalExtractor(self.baseline_rate, self._map.replica_pattern)
            self._extractor.load_state_dict(checked["extractor"])
            self._faults = evidence.FaultFilter(self.parameters, self.window)
            self._faults.log_faults = checked["log_faults"]
            position = checked["log_fault_position"]
            self._faults.log_position = position if position.shape[2] else None
            self.unmatched = UnmatchedCounter()
            self.unmatched.counts, self.unmatched.total = dict(checked["unmatched"]), int(checked["unmatched_total"])
            self.belief = self._summarise(checked["belief_ts"], ())
        except Exception as error:
            self.__dict__.clear()
            self.__dict__.update(saved)
            if isinstance(error, InvalidInputError):
                raise
            raise InvalidInputError(f"checkpoint state is malformed ({type(error).__name__}: {str(error)[:120]})") from None

    def _check_state(self, state: Any) -> dict[str, Any]:
        if not isinstance(state, Mapping):
            raise InvalidInputError(f"a state must be a dict from state_dict(); got {type(state).__name__}")
        # A checkpoint of before confirm_windows: CONFIRM_WINDOWS was its confirmation, counted in _quiet.
        state = upgrade_state(state, CONFIRM_WINDOWS)
        signals = tuple(state.get("signals", ())) if isinstance(state.get("signals", ()), (list, tuple)) else ()
        if signals != SIGNALS:
            added = [s for s in SIGNALS if s not in signals]
            raise InvalidInputError(
                "it was written by a release whose model reads other signals"
                + (f" (this one adds {', '.join(added)})" if added and signals else "")
                + "; its baselines and beliefs cannot be carried over: start the run again without --resume")
        reference = self.state_dict()
        missing = sorted(k for k in reference if k not in state)
        unknown = sorted(str(k) for k in state if k not in reference)
        if missing or unknown:
            raise InvalidInputError("; ".join(([f"missing keys {', '.join(missing)}"] if missing else [])
                                              + ([f"unknown keys {', '.join(unknown)[:200]}"] if unknown else []))
                                    + "; give a state written by this version's state_dict() or save()")
        state = copy.deepcopy(dict(state))
        state.update(_check_settings({name: state[name] for name in _SETTINGS}))
        if tuple(state["attacks"]) != self.attacks:
            raise InvalidInputError(f"the state tracks attacks {tuple(state['attacks'])}; this defender tracks "
                                    f"{self.attacks} (add or remove user attacks to match)")
        state["parameters"] = evidence.check_values(state["parameters"], self.attacks)
        draws = next(iter(state["parameters"].values())).shape[0]
        alpha = state["_log_alpha"]
        shape = (len(self.attacks), draws, 4)
        if not isinstance(alpha, np.ndarray) or alpha.shape != shape or not np.all(np.isfinite(alpha)):
            raise InvalidInputError(f"_log_alpha must be a finite array of shape {shape}")
        if np.any(alpha > 1e-9) or np.any(np.abs(np.log(np.exp(alpha).sum(-1))) > 1e-6):
            raise InvalidInputError("_log_alpha must hold log probabilities that sum to one over the stages")
        for key, low in (("accepted", 0), ("windows", 0), ("_current", -1)):
            if type(state[key]) is not int or state[key] < low:
                raise InvalidInputError(f"{key} must be a whole number >= {low}; got {state[key]!r}")
        if any(reason not in REJECTION_REASONS or type(n) is not int or n < 0 for reason, n in state["rejected"].items()):
            raise InvalidInputError("rejected must count known reasons with whole numbers >= 0")
        faults = state["log_faults"]
        if (not isinstance(faults, np.ndarray) or faults.shape != (draws, len(_FAULT_NAMES) + 1)
                or not np.all(np.isfinite(faults)) or np.any(np.abs(np.log(np.exp(faults).sum(-1))) > 1e-6)):
            raise InvalidInputError(f"log_faults must be finite log probabilities of shape {(draws, len(_FAULT_NAMES) + 1)}")
        position = state["log_fault_position"]
        if (not isinstance(position, np.ndarray) or position.ndim != 3 or position.shape[:2] != faults.shape
                or position.shape[2] > _MAX_POSITIONS or not np.all(np.isfinite(position))
                or (position.shape[2] and np.any(np.abs(np.log(np.exp(position).sum(-1))) > 1e-6))):
            raise InvalidInputError(f"log_fault_position must be finite log probabilities of shape "
                                    f"{(draws, len(_FAULT_NAMES) + 1, 'replicas <= ' + str(_MAX_POSITIONS))}, "
                                    "each row normalised")
        check_episode_counts(state, len(self.attacks))
        thresholds = state["_thresholds"]
        if len(thresholds) != len(self.attacks) or not all(isinstance(t, float) and 0.0 < t <= 1.0 for t in thresholds):
            raise InvalidInputError("_thresholds must hold one probability in (0, 1] per attack")
        if set(state["_suspects"]) != set(self.attacks):
            raise InvalidInputError("_suspects must map every tracked attack to a tuple of node names")
        for key, bound in (("_seen", state["duplicate_memory"]), ("_held", state["clock_confirm"] - 1),
                           ("_aggregates", _MAX_AGGREGATES), ("_previous", _MAX_AGGREGATES)):
            if len(state[key]) > bound:
                raise InvalidInputError(f"{key} holds {len(state[key])} entries, more than its bound {bound}")
        for event in state["_held"]:
            if self._parse(event) != tuple(event):
                raise InvalidInputError("_held must hold valid events")
        if state["adaptive"] is not None and not (isinstance(state["adaptive"], float) and 0 < state["adaptive"] < 0.5):
            raise InvalidInputError("adaptive must be None or a rate in (0, 0.5)")
        for key, shape in (("_fault_posterior", (len(self.attacks), draws, 4, len(_FAULT_NAMES) + 1)),
                           ("_log_position", (len(self.attacks), draws, 4, _MAX_POSITIONS)),
                           ("last_log_likelihood", (draws, len(self.attacks), 4))):
            value = state[key]
            if not isinstance(value, np.ndarray) or value.shape != shape or not np.all(np.isfinite(value)):
                raise InvalidInputError(f"{key} must be a finite array of shape {shape}")
        extractor = state["extractor"]
        baselines = extractor["baselines"]
        if (not isinstance(baselines, dict) or len(baselines) > 8192 or not all(
                isinstance(k, str) and isinstance(v, list) and len(v) == 3
                and all(isinstance(x, float) for x in v) for k, v in baselines.items())):
            raise InvalidInputError("extractor baselines must map series names to [mean, square, windows] floats")
        if len(extractor["replicas"]) > 100 or not all(isinstance(r, str) for r in extractor["replicas"]):
            raise InvalidInputError("extractor replicas must be at most 100 node names")
        return state

    def save(self, path: Any, extra: Mapping[str, Any] | None = None) -> None:
        """Write the state as a checkpoint (strict JSON, atomically, never pickle); see :meth:`load`."""
        from bayes_defense.stream.checkpoint import write_checkpoint

        write_checkpoint(path, _CHECKPOINT_KIND, self.state_dict(), extra)

    @classmethod
    def load(cls, path: Any, *, planner: Any = "plan", with_extra: bool = False) -> Any:
        """Read a checkpoint written by :meth:`save`, validated field by field."""
        from bayes_defense.stream.checkpoint import read_checkpoint

        state, extra = read_checkpoint(path, _CHECKPOINT_KIND)
        state = upgrade_state(state, CONFIRM_WINDOWS)
        try:
            settings = {name: state[name] for name in _SETTINGS}
            defender = cls(state["parameters"], planner=planner, adaptive=state["adaptive"],
                           observation_map=cls._map_from_state(state["observation_map"]), **settings)
        except KeyError as missing:
            raise InvalidInputError(f"checkpoint state lacks {missing.args[0]!r}; it was not written by save()") from None
        defender.load_state_dict(state)
        return (defender, extra) if with_extra else defender

    # ---------------------------------------------------------------- input
    def _parse(self, event: Any) -> Any:
        """Check an event's fields as the scored defender does; its kind must be one the map knows."""
        if isinstance(event, tuple) and len(event) == 5:
            kind, probe = event[2], (event[0], event[1], "peer_churn", event[3], event[4])
        elif isinstance(event, Mapping) and "kind" in event:
            kind, probe = event["kind"], {**event, "kind": "peer_churn"}
        else:
            return DefenderBase._parse(event)
        parsed = DefenderBase._parse(probe)
        if type(parsed) is str:
            return parsed
        if not isinstance(kind, str):
            return "malformed"
        if kind not in self._map.kinds and not (self._map.schema_kinds and kind in KNOWN_KINDS):
            self.unmatched.add(kind)
            return "unknown_kind"
        return parsed[0], parsed[1], kind, parsed[3], parsed[4]

    def observe_batch(self, events: Iterable[Any]) -> Belief:
        """Fold in many events; return the belief after the last one (see :meth:`observe`)."""
        if self._map.identity:
            return super().observe_batch(events)
        observe = self.observe
        for event in events:
            observe(event)
        return self.belief

    def _columnar(self) -> bool:
        # The array path of observe_columns (stream/columnar.py) applies the base admission; with the
        # identity map this filter's admission of known kinds is that (observe_batch uses it too).
        return self._map.identity

    def _ingest_columns(self, ts: list, node: list, kind: list, value: list, attrs: list) -> None:
        # Only called when _columnar() holds, i.e. with the identity map.
        self._extractor.ingest_many(ts, node, kind, value, attrs)

    def _ingest(self, ts: float, node: str, kind: str, value: float | None, attrs: dict) -> None:
        extractor = self._extractor
        if self._map.identity:
            extractor.ingest(ts, node, kind, value, attrs)
            return
        for target, at, scaled, new_attrs, aggregate in self._map.translate(kind, node, value, attrs):
            if aggregate is None:
                extractor.ingest(ts, at, target, scaled, new_attrs)
                continue
            key = (at, target, aggregate)
            entry = self._aggregates.get(key)
            if entry is None:
                if len(self._aggregates) >= _MAX_AGGREGATES:
                    continue
                entry = self._aggregates[key] = [0.0, 0.0, 0.0, 0.0, {}]   # count, sum, last, gap sum, attrs
            previous = self._previous.get((at, target))
            entry[0] += 1.0
            entry[1] += 0.0 if scaled is None else scaled
            entry[2] = 0.0 if scaled is None else scaled
            entry[3] += 0.0 if previous is None else ts - previous
            entry[4] = {k: v for k, v in new_attrs.items() if isinstance(v, (str, int, float, bool))}
            if (at, target) in self._previous or len(self._previous) < _MAX_AGGREGATES:
                self._previous[(at, target)] = ts

    def _flush_aggregates(self, end: float) -> None:
        extractor = self._extractor
        for (node, kind, how), (count, total, last, gaps, attrs) in self._aggregates.items():
            if how == "rate":
                value = count / self.window
            elif how == "count":
                value = count
            elif how == "mean":
                value = total / count
            elif how == "last":
                value = last
            else:   # interval: mean seconds between the events, from the node's previous one
                value = gaps / count if gaps > 0 else end - self._previous.get((node, kind), end)
            extractor.ingest(end, node, kind, float(value), attrs)
        self._aggregates = {}

    # ------------------------------------------------------------ per window
    def _close_window(self) -> None:
        end = self._current * self.window
        if self._aggregates:
            self._flush_aggregates(end)
        window = self._extractor.close()
        if self.record is not None:
            self.record.append((end, window))
        log_likelihood, by_position, by_fault = self._faults.step(self._tables, window)
        self.last_log_likelihood = log_likelihood
        self.windows += 1
        log_likelihood = self._follow_positions(log_likelihood, by_position, window)
        # The chains' forward step and their emission (one attack at a time, the others as they
        # stand): bayes_defense.stream._evidence_kernel.chain_step; its numpy oracle is in
        # tests/stream/test_evidence_kernel.py.
        alpha = np.empty_like(self._log_alpha)
        evidence._kernel().chain_step(self._log_alpha, self._log_transition,
                                      np.ascontiguousarray(log_likelihood), alpha)
        self._log_alpha = alpha
        self._fault_posterior = np.exp(np.transpose(by_fault, (1, 0, 2, 3)))
        # Suspects: the attacker position most probable under the precursor, averaged over draws.
        positions = np.exp(by_position[:, :, 2, :]).mean(0)                               # (A, R + 1)
        names = window.replicas
        if self._persistent.size and names:
            positions[self._persistent, :len(names)] = np.exp(self._log_position[self._persistent, :, 2,
                                                                                 :len(names)]).mean(1)
            positions[self._persistent, len(names)] = 0.0
        best = positions.argmax(1)
        clear = (best < len(names)) & (positions[np.arange(len(best)), best] > 1.5 / max(len(names), 1))
        for i in np.flatnonzero(clear).tolist():
            self._suspects[self.attacks[i]] = (names[int(best[i])],)
        self.belief = self._summarise(end, ())
        self._raise_alerts(end)

    def _follow_positions(self, log_likelihood: np.ndarray, by_position: np.ndarray, window: Any) -> np.ndarray:
        """The attacker's replica, followed from window to window for attacks from one replica among several.

        The window's likelihood sums the attacker's replica out under its prior,
        as if each window drew it afresh; but the attacker stays where it is
        while its attack lasts. So for these attacks the chain's state is the
        stage and the replica: a starting attack takes its replica from the
        precondition's prior (:func:`~bayes_defense.stream.evidence.attacker_weights`),
        an attack under way keeps it, and the stage's likelihood is that of
        the window given the replica, weighted by the replica's filtered
        probability. Returns ``log_likelihood`` ``(D, A, 4)`` with those
        attacks' attack stages replaced; updates the position posteriors.
        """
        replicas = len(window.replicas)
        persistent = self._persistent
        if not persistent.size or replicas == 0 or replicas > _MAX_POSITIONS:
            return log_likelihood
        log_likelihood = np.array(log_likelihood)   # a contiguous copy, changed in place
        footing = tuple(attack_spec(self.attacks[i]).footing for i in persistent.tolist())
        log_w = _persistent_log_weights(footing, replicas, int(window.primary))
        # The (stage, replica) chains' step: bayes_defense.stream._evidence_kernel.follow_positions;
        # its numpy oracle is in tests/stream/test_evidence_kernel.py.
        evidence._kernel().follow_positions(self._log_alpha, self._log_transition, self._log_position, persistent,
                                            log_w, by_position, log_likelihood)
        return log_likelihood

    def _fault_position_state(self) -> np.ndarray:
        """The fault chain's ``log P(replica | fault)`` for a checkpoint: ``(D, G + 1, R)``, R = 0 before any replica."""
        position = self._faults.log_position
        if position is None:
            return np.zeros(self._faults.log_faults.shape + (0,))
        return position

    def _summarise(self, ts: float, alerts: tuple) -> Belief:
        # Precursor (an ordered pattern's first stage included), execution, success within the
        # horizon, active: (4, A, 3) bands across draws (bayes_defense.stream._evidence_kernel.bands).
        bands = np.empty((4, len(self.attacks), 3))
        evidence._kernel().bands(self._log_alpha, self._onset, self._success, self.level, bands)
        suspects = dict(self._suspects)
        executing = dict(zip(self.attacks, (bands[1, :, 0] > bands[0, :, 0]).tolist(), strict=True))
        primary = self._extractor.primary
        replicas = frozenset(self._extractor.replicas)
        return ModelBelief(ts=ts, level=self.level, precursor=bands[0], execution=bands[1], within_horizon=bands[2],
                           active=bands[3], suspects=suspects, alerts=alerts,
                           countermeasures=Recommendations(suspects, primary, replicas, executing, self._plan),
                           attacks=self.attacks)

    def _plan(self, attack: str, role: str, phase: str, n_nodes: int) -> str:
        if attack not in ATTACKS:
            return attack_spec(attack).matched
        if self._planner is None:
            return FALLBACK[attack]
        if self._planner is recommend:
            return recommend(attack, role, phase, n_nodes, self._plan_parameters)
        return self._planner(attack, role, phase, n_nodes)

    def explanation(self, index: int) -> tuple:
        """Causes of the latest window for attack row ``index``: the attacks and the benign faults.

        Each is ``{cause, probability, lower, upper}``, most probable first:
        an attack's probability is that it is active (the filter's
        posterior), a fault's that it is under way in the window given the
        attack's most probable stage.
        """
        belief = self.belief
        stage = 3 if belief.execution[index, 0] > belief.precursor[index, 0] else 2
        if belief.active[index, 0] < 0.5:
            stage = 0
        faults = _quantiles(np.moveaxis(self._fault_posterior[index, :, stage, 1:], 0, -1), self.level)
        causes = [(name, belief.active[i]) for i, name in enumerate(self.attacks)]
        causes += [(name, faults[g]) for g, name in enumerate(_FAULT_NAMES)]
        causes.sort(key=lambda item: -item[1][0])
        return tuple({"cause": name, "probability": float(b[0]), "lower": float(b[1]), "upper": float(b[2])}
                     for name, b in causes if b[0] >= 0.01)

    def _raise_alerts(self, ts: float) -> None:
        belief = self.belief
        raised = []
        for index, attack in enumerate(self.attacks):
            mean, lower, _ = belief.active[index]
            over = lower >= self._thresholds[index]
            if self._armed[index] and self.adaptive is not None:
                # Robbins-Monro step towards the (1 - adaptive) quantile of the lower bounds while armed.
                step = 0.01 * (float(over) - self.adaptive)
                self._thresholds[index] = float(min(max(self._thresholds[index] + step, 0.5), 0.999))
            if self._episode(index, mean, over):
                phase = "execution" if belief.execution[index, 0] > belief.precursor[index, 0] else "precursor"
                raised.append(ModelAlert(ts, attack, tuple(self._suspects.get(attack, ())), float(mean),
                                         float(lower), float(belief.active[index, 2]), phase,
                                         belief.countermeasures[attack], self.explanation(index)))
        self._publish(raised)

"""The hand-scored streaming defender, kept as the named baseline ``scored``.

For each attack hypothesis a hidden phase (benign, precursor, execution) is
filtered online in log space, one small forward step per telemetry window, so
work per event is constant. Evidence per window is one hand-set score per
attack from three paths: temporal precursor patterns (standardised deviations of
telemetry from per-(node, kind) series models, :mod:`bayes_defense.stream.series`), precondition monitoring
(the suspect is the primary, joins share a prefix, a replica's peer table
churns), and counterfactual projection (the probability that execution starts
within a horizon if nothing is done, from the ensemble's transition rates).
Parameter uncertainty is carried by an ensemble of parameter draws filtered
side by side; the credible band is the spread across the ensemble.

This was the package's default defender before the model filter
(:class:`bayes_defense.stream.model_filter.ModelDefender`); it is compared
against it in ``papers/evaluate_defender.py``. It reads the schema-1.0
vocabulary only (no observation map) and its scores' constants are set by
hand; its parameters are fitted by :mod:`bayes_defense.fitting.defender`.
Event admission is :class:`bayes_defense.stream.base.DefenderBase`'s.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections import OrderedDict, deque
from collections.abc import Mapping
from typing import Any

import numpy as np

from bayes_defense.errors import InvalidInputError
from bayes_defense.models.catalogue import ATTACK_NAMES
from bayes_defense.stream.base import SETTINGS as _SETTINGS
from bayes_defense.stream.base import (
    Alert,
    Belief,
    DefenderBase,
    _non_finite,
    check_episode_counts,
    upgrade_state,
)
from bayes_defense.stream.base import check_settings as _check_settings
from bayes_defense.stream.recommend import FALLBACK, Recommendations, resolve_planner
from bayes_defense.stream.schema import REJECTION_REASONS, TELEMETRY_KINDS, finite_float
from bayes_defense.stream.series import SeriesModel, prior_mean_parameters

__all__ = ["ATTACK_HYPOTHESES", "COUNTERMEASURE_FOR", "PARAMETER_KEYS", "PHASES", "Alert", "Belief", "ScoredDefender",
           "check_parameters", "default_parameters", "parameter_problem"]

#: Attack hypotheses the defender tracks, in a fixed order.
ATTACK_HYPOTHESES: tuple[str, ...] = ATTACK_NAMES

#: Hidden phases of every hypothesis.
PHASES: tuple[str, ...] = ("benign", "precursor", "execution")

#: The catalogue's matched countermeasure per attack, used with ``planner=None``.
COUNTERMEASURE_FOR: dict[str, str] = FALLBACK

_REPLICA_TELEMETRY = frozenset(TELEMETRY_KINDS)
_TELEMETRY = _REPLICA_TELEMETRY | {"request_latency", "throughput"}
# Smallest spread of a baseline, per kind: counts are Poisson-like, rates and
# durations relative.
_COUNT_KINDS = frozenset({"auth_failures", "view_change_requests", "instance_change_requests",
                          "duplicate_messages", "stale_messages", "peer_churn", "peer_diversity"})
SCORE_CAP = 12.0
WARMUP_WINDOWS = 20
_MAX_LOG_RATIO = 4.0
# Telemetry baselines: one univariate series model per (node, kind), all in one bank
# (stream.series, independent columns, no seasonality: at one window per second the
# level follows a daily cycle), at the regime priors' means; a new series scores after
# this many windows.
_BASELINE_WARMUP = 5
_BANK_GROWTH = 64
# Configuration that is not part of a checkpoint (rebuilt by the constructor),
# and the belief, which is recomputed from the state on load (its ``alerts``
# were delivered already and must not be raised again).
_NOT_STATE = frozenset({"_log_transition", "_planner", "belief"})
# The scored defender's checkpoints keep the kind they were always written with.
_CHECKPOINT_KIND = "StreamingDefender"
# Scalar attrs the defender stores (digests, views, sequence numbers): other
# values are ignored, so that its state holds no structure a log invented.
_SCALARS = (str, int, float, bool, type(None))
# At most this many replicas are remembered (the cluster model's limit),
# and at most this many (node, kind) baselines.
_MAX_REPLICAS = 100
_MAX_SERIES = 8192


#: Names of the parameter arrays, in documentation order.
PARAMETER_KEYS: tuple[str, ...] = (
    "score_precursor", "score_execution", "spread", "benign_to_precursor",
    "precursor_to_execution", "precursor_to_benign", "execution_to_benign",
    "quiet_precursor", "quiet_execution",
)
_PROBABILITY_KEYS = frozenset(PARAMETER_KEYS[3:7])
# Keys that may be left out (zero: every window of the phase shows the attack),
# so that dictionaries written for the seven-key model still work.
_QUIET_KEYS = frozenset(PARAMETER_KEYS[7:])


def default_parameters(ensemble: int = 24, seed: int = 0) -> dict[str, np.ndarray]:
    """Draw the default prior ensemble of defender parameters.

    Every array is float64 of shape ``(8, ensemble)``: one row per attack in
    :data:`ATTACK_HYPOTHESES` order, one column per parameter draw (the
    draws are filtered side by side; their spread is the credible band).

    ==========================  =================================================  =============
    key                         meaning                                            valid range
    ==========================  =================================================  =============
    ``score_precursor``         mean evidence score in the precursor phase         finite, > 0
    ``score_execution``         mean evidence score in the execution phase         finite, > 0
    ``spread``                  standard deviation of the evidence score           finite, > 0
    ``benign_to_precursor``     P(benign -> precursor) per window                  (0, 1)
    ``precursor_to_execution``  P(precursor -> execution) per window               (0, 1)
    ``precursor_to_benign``     P(precursor -> benign) per window (abandoned)      (0, 1)
    ``execution_to_benign``     P(execution -> benign) per window (attack over)    (0, 1)
    ``quiet_precursor``         P(a precursor window shows no sign of the attack)  [0, 1)
    ``quiet_execution``         P(an execution window shows no sign of it)         [0, 1)
    ==========================  =================================================  =============

    In the benign phase the score has mean 0; in phase ``k`` it is taken as
    Normal(``score_k``, ``spread``), so a window's log likelihood ratio
    against benign is ``r = (score_k * s - score_k**2 / 2) / spread**2`` for
    its score ``s``. A quiet window of phase ``k`` (probability ``quiet_k``)
    looks benign, so the ratio becomes ``log(quiet_k + (1 - quiet_k) e**r)``;
    attacks whose signal comes and goes (a Sybil's joins arrive in bursts)
    then lose little in a quiet window. The default ensemble has
    ``quiet_k = 0``, the model without quiet windows; fitted posteriors learn
    it (:mod:`bayes_defense.fit`). A window is ``ScoredDefender.window`` seconds (1 s by
    default); ``precursor_to_execution + precursor_to_benign`` must stay
    below 1. A fitted posterior supplies draws of the same keys and shapes,
    either as this dictionary or as an object with a method
    ``defender_parameters(draws: int, seed: int) -> dict`` (see
    :class:`ScoredDefender`).

    Parameters
    ----------
    ensemble : int
        Number of draws (columns).
    seed : int
        Seed of the draws.

    Returns
    -------
    dict of str to numpy.ndarray

    Examples
    --------
    >>> params = default_parameters(ensemble=8, seed=1)
    >>> sorted(params) == sorted(PARAMETER_KEYS), params["score_precursor"].shape
    (True, (8, 8))
    """
    if int(ensemble) < 1:
        raise InvalidInputError(f"ensemble must be a positive number of draws; got {ensemble!r}")
    rng = np.random.default_rng([seed, 0xDEF])
    shape = (len(ATTACK_HYPOTHESES), int(ensemble))
    return {
        "score_precursor": rng.uniform(2.5, 4.5, shape),
        "score_execution": rng.uniform(4.0, 8.0, shape),
        "spread": rng.uniform(1.1, 1.6, shape),
        "benign_to_precursor": np.exp(rng.normal(math.log(1 / 3000), 0.5, shape)),
        "precursor_to_execution": np.exp(rng.normal(math.log(1 / 90), 0.4, shape)),
        "precursor_to_benign": np.exp(rng.normal(math.log(1 / 400), 0.5, shape)),
        "execution_to_benign": np.exp(rng.normal(math.log(1 / 60), 0.4, shape)),
        "quiet_precursor": np.zeros(shape),
        "quiet_execution": np.zeros(shape),
    }


def parameter_problem(key: str, values: Any) -> str:
    """Say what is wrong with the values of one defender parameter, or return ''.

    The valid ranges of :func:`default_parameters`' table, in one place for
    :func:`check_parameters` and the posterior readers.

    Examples
    --------
    >>> parameter_problem("spread", [1.0, -0.5]), parameter_problem("benign_to_precursor", [7.0])
    ('must be positive (got a minimum of -0.5)', 'is a per-window probability and must lie in (0, 1) (got 7 to 7)')
    """
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return "holds no values"
    if not np.all(np.isfinite(array)):
        return "holds non-finite values"
    low, high = float(array.min()), float(array.max())
    if key in _PROBABILITY_KEYS and not (low > 0 and high < 1):
        return f"is a per-window probability and must lie in (0, 1) (got {low:.4g} to {high:.4g})"
    if key in _QUIET_KEYS and not (low >= 0 and high < 1):
        return f"is a probability and must lie in [0, 1) (got {low:.4g} to {high:.4g})"
    if key not in _PROBABILITY_KEYS and key not in _QUIET_KEYS and not low > 0:
        return f"must be positive (got a minimum of {low:.4g})"
    return ""


def check_parameters(parameters: Any, *, ensemble: int = 24, seed: int = 0) -> dict[str, np.ndarray]:
    """Validate defender parameters and return them as float64 arrays.

    Parameters
    ----------
    parameters : dict or object
        A dictionary as :func:`default_parameters` returns, or an object
        with a method ``defender_parameters(draws: int, seed: int)`` that
        returns one (a fitted posterior); it is called with ``ensemble``
        and ``seed``.

    Raises
    ------
    InvalidInputError
        A key is missing or unknown, shapes differ, or a value is out of range.

    Examples
    --------
    >>> class Posterior:
    ...     def defender_parameters(self, draws, seed):
    ...         return default_parameters(draws, seed)
    >>> check_parameters(Posterior(), ensemble=5)["spread"].shape
    (8, 5)
    >>> check_parameters({"spread": [1.0]})
    Traceback (most recent call last):
    ...
    bayes_defense.errors.InvalidInputError: defender parameters lack score_precursor, ...
    """
    source = parameters
    method = getattr(parameters, "defender_parameters", None)
    if callable(method):
        parameters = method(draws=int(ensemble), seed=int(seed))
    if not isinstance(parameters, Mapping):
        raise InvalidInputError(
            f"parameters must be a dict of arrays as default_parameters() returns, or an object with "
            f"defender_parameters(draws, seed) returning one; got {type(source).__name__}")
    missing = [key for key in PARAMETER_KEYS if key not in parameters and key not in _QUIET_KEYS]
    unknown = sorted(str(key) for key in parameters if key not in PARAMETER_KEYS)
    if missing or unknown:
        parts = ([f"lack {', '.join(missing)}"] if missing else []) + (
            [f"have unknown keys {', '.join(unknown)}"] if unknown else [])
        raise InvalidInputError(f"defender parameters {' and '.join(parts)}; expected exactly the keys "
                                f"{', '.join(PARAMETER_KEYS)} (the last two may be left out; see "
                                f"default_parameters)")
    out: dict[str, np.ndarray] = {}
    for key in PARAMETER_KEYS:
        if key not in parameters:
            continue
        try:
            array = np.array(parameters[key], dtype=float)
        except (TypeError, ValueError):
            raise InvalidInputError(f"defender parameter {key!r} is not numeric: {parameters[key]!r}") from None
        if array.ndim != 2 or array.shape[0] != len(ATTACK_HYPOTHESES) or array.shape[1] < 1:
            raise InvalidInputError(f"defender parameter {key!r} must have shape ({len(ATTACK_HYPOTHESES)}, draws); "
                                    f"got {array.shape}")
        problem = parameter_problem(key, array)
        if problem:
            raise InvalidInputError(f"defender parameter {key!r} {problem}")
        out[key] = array
    shapes = {array.shape for array in out.values()}
    if len(shapes) != 1:
        raise InvalidInputError(f"defender parameters must share one shape; got {sorted(shapes)}")
    for key in _QUIET_KEYS:
        if key not in out:
            out[key] = np.zeros_like(out["spread"])
    if np.any(out["precursor_to_execution"] + out["precursor_to_benign"] >= 1):
        raise InvalidInputError("precursor_to_execution + precursor_to_benign must stay below 1 in every draw")
    return out


def _baseline_bank(rate: float) -> SeriesModel:
    """An empty bank of per-(node, kind) telemetry baselines; the level adapts at ``rate`` per window.

    A window's standardised deviation is the series model's one-step
    residual over its predictive scale; a window the model finds anomalous
    is barely learned from, so an attack that builds up over minutes does
    not become the new normal, while a lasting change (a slow replica's
    steady state) is taken in once it persists.
    """
    return SeriesModel(1, periods=(), parameters=prior_mean_parameters(), independent=True,
                       warmup=_BASELINE_WARMUP, delta_level=1.0 - rate)


def _check_alert(alert: Any) -> None:
    if not isinstance(alert, Alert):
        raise InvalidInputError(f"alerts must be Alert records; got {type(alert).__name__}")
    numbers_ok = all(finite_float(x) is not None for x in (alert.ts, alert.probability, alert.lower, alert.upper))
    if (not numbers_ok or not 0.0 <= alert.lower <= alert.probability <= alert.upper <= 1.0
            or alert.attack not in ATTACK_HYPOTHESES or alert.phase not in PHASES[1:]
            or not isinstance(alert.nodes, tuple) or not all(isinstance(n, str) for n in alert.nodes)
            or not isinstance(alert.countermeasure, str)):
        raise InvalidInputError(f"an alert is out of range (probabilities in [0, 1] with lower <= mean <= upper, "
                                f"a known attack and phase): {str(alert)[:160]}")


def _floors(kind: str) -> tuple[float, float]:
    if kind in _COUNT_KINDS:
        return 0.8, 0.1
    if kind in ("preprepare_interval", "request_latency"):
        return 0.002, 0.05
    return 1.0, 0.05



class ScoredDefender(DefenderBase):
    """Online Bayesian defender over a stream of :class:`~bayes_defense.stream.Event`.

    Parameters
    ----------
    parameters : dict of arrays or posterior object, optional
        Ensemble of parameter draws, as :func:`default_parameters` returns
        (the default prior when omitted), or an object with a method
        ``defender_parameters(draws: int, seed: int) -> dict`` returning
        such draws (a fitted posterior; called with ``ensemble`` and
        ``seed``). Checked by :func:`check_parameters`.
    ensemble : int
        Number of draws when ``parameters`` is not a dictionary.
    seed : int
        Seed of the prior draws, or passed to ``defender_parameters``.
    window : float
        Seconds per update window (the telemetry interval).
    horizon : float
        Seconds ahead for the counterfactual projection.
    threshold : float
        An alert fires when the lower credible bound of "active" reaches it.
    rearm : float
        A hypothesis may alert again once its mean has stayed below this
        for ``rearm_windows`` windows.
    level : float
        Credible level of the bands (quantiles across the ensemble).
    baseline_rate : float
        Weight of a new window in the per-node baselines.
    duplicate_memory : int
        How many events of the open window are remembered to reject exact
        duplicates (same ts, node, kind, value and attrs); earlier windows
        need no memory, since an event before the open window is out of order.
    rearm_windows : int
        Quiet windows needed before a hypothesis may alert again.
    confirm_windows : int
        Windows in a row with the lower bound over ``threshold`` before an
        armed hypothesis alerts (1: the first such window alerts).
    planner : "plan", callable or None
        Where countermeasures come from: ``"plan"`` asks
        :func:`bayes_defense.plan` on the cluster SCM (see
        :mod:`bayes_defense.stream.recommend`; cached, planned at alerts and
        on reading :attr:`Belief.countermeasures`), a callable
        ``planner(attack, role, phase, n_nodes) -> str`` replaces it, and
        ``None`` uses the catalogue's matched countermeasure.
    max_clock_skew : float
        Seconds an event may lie ahead of the stream's latest accepted time.
        An event further ahead is held; it is accepted only when the next
        ``clock_confirm - 1`` events agree with it (lie within this skew of
        it: the stream's clock really jumped) and rejected as
        ``"clock_skew"`` as soon as an event continues the old clock. One
        event can therefore never move the window on and make the rest of
        the stream "out of order". The first events of a stream are held the
        same way until ``clock_confirm`` of them agree.
    clock_confirm : int
        Events, including the first, that must agree before a jump ahead of
        ``max_clock_skew`` (or the start of the stream) is accepted; 1
        accepts every jump.

    Rejected events are counted in :attr:`rejected` under the reasons of
    :data:`~bayes_defense.stream.schema.REJECTION_REASONS`; a rejected event
    leaves the belief unchanged.

    Examples
    --------
    >>> from bayes_defense.stream import Event
    >>> defender = ScoredDefender()
    >>> belief = defender.observe(Event(1.0, "r0", "msg_rate_in", 200.0, {}))
    >>> defender.observe({"ts": "x"}) is belief, defender.rejected
    (True, {'malformed': 1})
    """

    def __init__(self, parameters: Mapping[str, Any] | None = None, *, ensemble: int = 24, seed: int = 0,
                 window: float = 1.0, horizon: float = 60.0, threshold: float = 0.8, rearm: float = 0.3,
                 level: float = 0.9, baseline_rate: float = 0.02, duplicate_memory: int = 4096,
                 rearm_windows: int = 60, planner: Any = "plan", max_clock_skew: float = 300.0,
                 clock_confirm: int = 3, confirm_windows: int = 1) -> None:
        settings = _check_settings({"window": window, "horizon": horizon, "threshold": threshold, "rearm": rearm,
                                    "level": level, "baseline_rate": baseline_rate,
                                    "duplicate_memory": duplicate_memory, "rearm_windows": rearm_windows,
                                    "confirm_windows": confirm_windows, "max_clock_skew": max_clock_skew,
                                    "clock_confirm": clock_confirm})
        params = default_parameters(ensemble, seed) if parameters is None else check_parameters(
            parameters, ensemble=ensemble, seed=seed)
        self._planner = resolve_planner(planner)
        self.parameters = params
        self.__dict__.update(settings)
        self._log_transition = self._transitions(params)
        self.reset()

    def reset(self) -> None:
        """Forget everything seen; keep the parameters."""
        attacks, draws = self.parameters["score_precursor"].shape
        self._reset_admission()
        self._log_alpha = np.tile(np.log(np.array([1 - 2e-4, 1e-4, 1e-4])), (attacks, draws, 1))
        self._telemetry: dict[tuple[str, str], float] = {}
        self._source: dict[str, str] = {}
        self._primary = ""
        self._replicas: frozenset = frozenset()
        self._digests: OrderedDict = OrderedDict()
        self._conflicts = 0
        self._stalled: dict[str, int] = {}
        self._view_changes: dict[str, float] = {}
        self._joins: dict[str, float] = {}
        self._join_names: dict[str, list[str]] = {}
        self._peer_joins: dict[str, float] = {}
        self._peer_counts: dict[str, float] = {}  # this window's peer-table sizes
        self._peer_norm: dict[str, float] = {}  # their slow moving averages
        # (node, kind) -> its column in the bank of series models.
        self._baselines: dict[tuple[str, str], int] = {}
        self._baseline_bank = _baseline_bank(self.baseline_rate)
        self._armed = [True] * attacks
        self._confirm = [0] * attacks
        self._quiet = [0] * attacks
        self._suspects: dict[str, tuple[str, ...]] = {name: () for name in ATTACK_HYPOTHESES}
        self.alerts: deque = deque(maxlen=10_000)
        self._pending_alerts: list[Alert] = []
        self.belief = self._summarise(-math.inf, ())

    def state_dict(self) -> dict[str, Any]:
        """Return a deep copy of the full state; see :meth:`load_state_dict`.

        The state holds plain data only (numbers, strings, containers, numpy
        arrays, alerts and baselines); :meth:`save` writes it as JSON. The
        current belief is not part of it: it is recomputed on load, without
        the alerts it carried, so that no alert is delivered twice.

        Examples
        --------
        >>> a = ScoredDefender()
        >>> b = ScoredDefender()
        >>> b.load_state_dict(a.state_dict())
        >>> b.accepted == a.accepted
        True
        """
        state = {key: value for key, value in self.__dict__.items() if key not in _NOT_STATE}
        state["belief_ts"] = self.belief.ts
        return copy.deepcopy(state)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`; later beliefs equal the original's.

        Every field is checked first (its presence, type and range: settings
        as the constructor checks them, parameters as :func:`check_parameters`
        does, a filter state that is a finite log distribution, counts that
        are whole and non-negative, bounded tables); on any problem
        :class:`~bayes_defense.errors.InvalidInputError` names it and the
        defender is left as it was.

        Examples
        --------
        >>> ScoredDefender().load_state_dict(ScoredDefender().state_dict())
        >>> ScoredDefender().load_state_dict({**ScoredDefender().state_dict(), "threshold": 2.0})
        Traceback (most recent call last):
        ...
        bayes_defense.errors.InvalidInputError: checkpoint state: threshold must be a probability in (0.0, 1.0]; got '2.0'
        """
        try:
            checked = self._check_state(state)
        except InvalidInputError as error:
            raise InvalidInputError(f"checkpoint state: {error}") from None
        except (TypeError, ValueError, AttributeError, KeyError, OverflowError, RecursionError) as error:
            raise InvalidInputError(f"checkpoint state is malformed ({type(error).__name__}: {str(error)[:120]})") from None
        belief_ts = checked.pop("belief_ts")
        self.__dict__.update(checked)
        self._log_transition = self._transitions(self.parameters)
        self.belief = self._summarise(belief_ts, ())

    def _check_state(self, state: Any) -> dict[str, Any]:
        """Validate a state for :meth:`load_state_dict`; return a deep copy of it."""
        if not isinstance(state, Mapping):
            raise InvalidInputError(f"a state must be a dict from state_dict(); got {type(state).__name__}")
        state = upgrade_state(state, 1)   # a checkpoint of before confirm_windows alerted on the first window
        reference = {key: value for key, value in self.__dict__.items() if key not in _NOT_STATE}
        reference["belief_ts"] = -math.inf
        unknown = sorted(str(key) for key in state if key not in reference)
        missing = sorted(key for key in reference if key not in state)
        if unknown or missing:
            raise InvalidInputError("; ".join(([f"unknown keys {', '.join(unknown)[:200]}"] if unknown else [])
                                              + ([f"missing keys {', '.join(missing)}"] if missing else []))
                                    + "; give a state written by this version's state_dict() or save()")
        for key, value in reference.items():
            if type(state[key]) is not type(value):
                raise InvalidInputError(f"{key} must be of type {type(value).__name__}, got {type(state[key]).__name__}")
        state = copy.deepcopy(dict(state))
        settings = _check_settings({name: state[name] for name in _SETTINGS})
        state.update(settings)
        parameters = check_parameters(state["parameters"])
        state["parameters"] = parameters
        attacks, draws = parameters["spread"].shape
        alpha = state["_log_alpha"]
        if alpha.shape != (attacks, draws, len(PHASES)) or alpha.dtype != np.float64 or not np.all(np.isfinite(alpha)):
            raise InvalidInputError(f"_log_alpha must be finite float64 of shape {(attacks, draws, len(PHASES))}")
        total = np.log(np.exp(alpha).sum(axis=-1))
        if np.any(alpha > 1e-9) or np.any(np.abs(total) > 1e-6):
            raise InvalidInputError("_log_alpha must hold log probabilities that sum to one over the phases")
        for key, low in (("accepted", 0), ("windows", 0), ("_conflicts", 0), ("_current", -1)):
            if state[key] < low:
                raise InvalidInputError(f"{key} must be a whole number >= {low}; got {state[key]!r}")
        if state["windows"] > max(state["_current"], 0) + 1 and state["_current"] >= 0:
            raise InvalidInputError(f"windows ({state['windows']}) cannot exceed the open window's index "
                                    f"({state['_current']}) by more than one")
        rejected = state["rejected"]
        if any(reason not in REJECTION_REASONS or type(n) is not int or n < 0 for reason, n in rejected.items()):
            raise InvalidInputError("rejected must count known reasons with whole numbers >= 0")
        check_episode_counts(state, attacks)
        suspects = state["_suspects"]
        if set(suspects) != set(ATTACK_HYPOTHESES) or not all(
                isinstance(nodes, tuple) and all(isinstance(n, str) for n in nodes) for nodes in suspects.values()):
            raise InvalidInputError("_suspects must map every attack hypothesis to a tuple of node names")
        if state["alerts"].maxlen != self.alerts.maxlen:
            raise InvalidInputError(f"alerts must keep at most {self.alerts.maxlen} alerts")
        for alert in list(state["alerts"]) + state["_pending_alerts"]:
            _check_alert(alert)
        limits = {"_seen": state["duplicate_memory"], "_digests": 512, "_replicas": _MAX_REPLICAS,
                  "_baselines": _MAX_SERIES, "_held": state["clock_confirm"] - 1}
        for key, value in state.items():
            if isinstance(value, (dict, set, frozenset, list)) and key not in ("_armed", "_confirm", "_quiet"):
                if len(value) > limits.get(key, _MAX_SERIES):
                    raise InvalidInputError(f"{key} holds {len(value)} entries, more than its bound "
                                            f"{limits.get(key, _MAX_SERIES)}")
        bank = state["_baseline_bank"]
        if (not bank.independent or bank.columns > _MAX_SERIES
                or any(type(column) is not int or not 0 <= column < bank.columns
                       for column in state["_baselines"].values())):
            raise InvalidInputError(f"_baselines must map series to columns of _baseline_bank (at most {_MAX_SERIES})")
        for event in state["_held"]:
            if self._parse(event) != tuple(event):
                raise InvalidInputError("_held must hold valid events")
        for entry in state["_seen"]:
            if not (isinstance(entry, tuple) and len(entry) == 5 and finite_float(entry[0]) is not None):
                raise InvalidInputError("_seen must hold (ts, node, kind, value, attrs) keys")
        for key, value in state.items():
            # Values a log's attrs produced (digests, duplicate keys) may be
            # any scalar; everything else the defender computes is finite.
            if key in ("_seen", "_digests", "_held", "parameters", "_log_alpha"):
                continue
            problem = _non_finite(value, allow_minus_inf=key in ("_last_ts", "belief_ts"))
            if problem:
                raise InvalidInputError(f"{key} holds {problem}")
        if state["_last_ts"] == -math.inf and state["accepted"] > 0:
            raise InvalidInputError("_last_ts is -inf although events were accepted")
        return state

    def save(self, path: Any, extra: Mapping[str, Any] | None = None) -> None:
        """Write the state to ``path`` as a checkpoint: strict JSON, atomically, never pickle.

        Parameters
        ----------
        path : path-like
            The checkpoint file; an interrupted save leaves the old file.
        extra : dict, optional
            Plain data stored beside the state (``bayes-defense defend``
            keeps its reader position there); see :meth:`load`.

        Examples
        --------
        >>> import tempfile, pathlib
        >>> from bayes_defense.stream import Event
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "defender.json"
        >>> defender = ScoredDefender(clock_confirm=1)
        >>> _ = defender.observe(Event(1.0, "r0", "peer_churn", 0.0, {}))
        >>> defender.save(path)
        >>> ScoredDefender.load(path).accepted
        1
        """
        from bayes_defense.stream.checkpoint import write_checkpoint

        write_checkpoint(path, _CHECKPOINT_KIND, self.state_dict(), extra)

    @classmethod
    def load(cls, path: Any, *, planner: Any = "plan", with_extra: bool = False) -> Any:
        """Read a checkpoint written by :meth:`save`, validated field by field.

        Parameters
        ----------
        path : path-like
        planner : "plan", callable or None
            As for the constructor (a planner is code, so it is not stored).
        with_extra : bool
            Return ``(defender, extra)`` instead of the defender alone.

        Raises
        ------
        InvalidInputError
            The file is not a defender checkpoint of this version, is larger
            than :data:`bayes_defense.stream.checkpoint.MAX_CHECKPOINT_BYTES`,
            or a field is missing, unknown or out of range.
        """
        from bayes_defense.stream.checkpoint import read_checkpoint

        state, extra = read_checkpoint(path, _CHECKPOINT_KIND)
        state = upgrade_state(state, 1)
        try:
            settings = {name: state[name] for name in _SETTINGS}
            parameters = state["parameters"]
        except KeyError as missing:
            raise InvalidInputError(f"checkpoint state lacks {missing.args[0]!r}; it was not written by save()") from None
        defender = cls(parameters, planner=planner, **settings)
        defender.load_state_dict(state)
        return (defender, extra) if with_extra else defender

    @staticmethod
    def _transitions(params: Mapping[str, np.ndarray]) -> np.ndarray:
        bp = params["benign_to_precursor"]
        pe = params["precursor_to_execution"]
        pb = params["precursor_to_benign"]
        eb = params["execution_to_benign"]
        matrix = np.zeros(bp.shape + (3, 3))
        matrix[..., 0, 0], matrix[..., 0, 1] = 1 - bp, bp
        matrix[..., 1, 0], matrix[..., 1, 1], matrix[..., 1, 2] = pb, 1 - pb - pe, pe
        matrix[..., 2, 0], matrix[..., 2, 2] = eb, 1 - eb
        with np.errstate(divide="ignore"):
            return np.log(np.clip(matrix, 0.0, 1.0))

    def _ingest(self, ts: float, node: str, kind: str, value: float | None, attrs: dict) -> None:
        if kind in _TELEMETRY:
            if value is not None:
                self._telemetry[(node, kind)] = float(value)
            if node not in self._replicas and kind in _REPLICA_TELEMETRY and len(self._replicas) < _MAX_REPLICAS:
                self._replicas = self._replicas | {node}
            if kind == "source_rate_max":
                source = attrs.get("source")
                if isinstance(source, str) and (node in self._source or len(self._source) < _MAX_REPLICAS):
                    self._source[node] = source
            elif kind == "preprepare_interval":
                primary = attrs.get("primary")
                if isinstance(primary, str):
                    self._primary = primary
            elif kind == "peer_diversity":
                # finite_float refuses NaN and integers beyond a float, which
                # would poison the peer-table norm for good.
                peers = finite_float(attrs.get("peers"))
                if peers is not None and (node in self._peer_counts or len(self._peer_counts) < _MAX_REPLICAS):
                    self._peer_counts[node] = peers
        elif kind == "preprepare":
            # A new view may legitimately re-propose a sequence number.
            seq = (attrs.get("view"), attrs.get("seq", value))
            digest = attrs.get("digest")
            primary = attrs.get("primary")
            if isinstance(primary, str):
                self._primary = primary
            if not (isinstance(seq[0], _SCALARS) and isinstance(seq[1], _SCALARS) and isinstance(digest, _SCALARS)):
                return
            try:
                seen = self._digests.get(seq)
            except TypeError:
                return
            if seen is None:
                self._digests[seq] = digest
                if len(self._digests) > 512:
                    self._digests.popitem(last=False)
            elif seen != digest:
                self._conflicts += 1
        elif kind == "view_change":
            self._view_changes[node] = self._view_changes.get(node, 0.0) + 1.0
        elif kind == "request_stalled":
            client = attrs.get("client")
            if isinstance(client, str):
                self._stalled[client] = self._stalled.get(client, 0) + 1
        elif kind == "join":
            prefix = attrs.get("prefix")
            if not isinstance(prefix, str):
                return
            if attrs.get("role") == "peer":
                victim = attrs.get("peer_of")
                if isinstance(victim, str):
                    self._peer_joins[victim] = self._peer_joins.get(victim, 0.0) + 1.0
            else:
                self._joins[prefix] = self._joins.get(prefix, 0.0) + 1.0
                names = self._join_names.setdefault(prefix, [])
                if len(names) < 16:
                    names.append(node)
        elif kind == "new_view":
            primary = attrs.get("primary")
            if isinstance(primary, str):
                self._primary = primary

    def _zscores(self) -> dict[str, dict[str, float]]:
        baselines = self._baselines
        bank = self._baseline_bank
        columns: list[tuple[str, str, int]] = []
        values: list[float] = []
        for key, value in self._telemetry.items():
            column = baselines.get(key)
            if column is None:
                if len(baselines) >= _MAX_SERIES:
                    # Bounded memory even when a log invents node names without end.
                    continue
                column = baselines[key] = len(baselines)
                if column >= bank.columns:
                    bank.add_columns(1)
                floor_abs, floor_rel = _floors(key[1])
                bank.min_scale[column] = bank.floor[column] = floor_abs
                bank.relative_min_scale[column] = floor_rel
                if column + 1 == bank.columns and bank.columns < _MAX_SERIES:
                    bank.add_columns(min(_BANK_GROWTH, _MAX_SERIES - bank.columns))
            columns.append((key[0], key[1], column))
            values.append(value)
        self._telemetry = {}
        if not columns:
            return {}
        # One row for the whole window: series without a value this window are skipped (untouched).
        row = np.full((1, bank.columns), np.nan)
        row[0, [column for _, _, column in columns]] = values
        deviations = bank.score(row).zscore[0]
        scores: dict[str, dict[str, float]] = {}
        for (node, kind, column) in columns:
            z = float(deviations[column])
            # A series still warming up shows no deviation.
            scores.setdefault(kind, {})[node] = z if z == z else 0.0
        return scores

    def _evidence(self) -> tuple[np.ndarray, dict[str, tuple[str, ...]]]:
        z = self._zscores()
        score = np.zeros(len(ATTACK_HYPOTHESES))
        suspects: dict[str, tuple[str, ...]] = {}
        primary = (self._primary,) if self._primary else ()
        counts, norms = self._peer_counts, self._peer_norm
        cut_off = any(count < 0.9 * norms.get(node, 0.0) for node, count in counts.items())

        def median(kind: str) -> float:
            values = z.get(kind)
            return float(statistics.median(values.values())) if values else 0.0

        def top(kind: str) -> tuple[float, str]:
            values = z.get(kind, {})
            if not values:
                return 0.0, ""
            node = max(values, key=values.__getitem__)
            return values[node], node

        # Precondition: a conflicting pre-prepare pair proves equivocation by the primary.
        score[0] = 3.0 * self._conflicts
        suspects["equivocation"] = primary
        # Slow leader: backups see slow pre-prepares without enough to vote the primary out.
        slow = median("preprepare_interval") - max(0.0, median("instance_change_requests"))
        score[1] = slow
        suspects["slow_leader"] = primary
        # Censorship: one client stalls while the others are served.
        latency = z.get("request_latency", {})
        if latency:
            ranked = sorted(latency.values())
            score[2] = ranked[-1] - ranked[len(ranked) // 2]
        if self._stalled:
            score[2] += 2.0 * max(self._stalled.values())
        suspects["censorship"] = primary
        if cut_off:
            # Replicas lost peers (a partition or a crash): slow and missing
            # pre-prepares and stalled requests follow from that, not from a
            # misbehaving primary.
            score[1] = min(score[1], 0.0)
            score[2] = min(score[2], 0.0)
        # Flooding: one replica dominates what the others receive, with bad MACs.
        sources = [s for s in self._source.values() if s.startswith("r")]
        flood = median("source_rate_max")
        score[3] = min(flood, median("auth_failures") + 3.0) if sources else 0.0
        # Ties go to the first name in sorted order, never to the hash seed's set order.
        suspects["flooding"] = (max(sorted(set(sources)), key=sources.count),) if sources else ()
        # View-change abuse: some replicas ask for view changes over and over.
        if self._view_changes:
            ranked = sorted(self._view_changes.values())
            node = max(self._view_changes, key=self._view_changes.__getitem__)
            score[4] = 1.5 * (ranked[-1] - 1.0) + 0.3 * max(0.0, median("view_change_requests"))
            suspects["view_change_abuse"] = (node,)
        # Replay: duplicates and stale messages everywhere.
        score[5] = min(median("duplicate_messages") + median("stale_messages"), 2 * median("duplicate_messages") + 4)
        suspects["replay"] = (max(sorted(set(sources)), key=sources.count),) if sources else ()
        # Sybil: new identities sharing a network prefix.
        if self._joins:
            prefix = max(self._joins, key=self._joins.__getitem__)
            burst = self._joins[prefix] - 1.0
            score[6] = 2.0 * burst + (max(0.0, median("auth_failures")) if burst > 0.5 else 0.0)
            suspects["sybil"] = tuple(self._join_names.get(prefix, ()))
        # Eclipse: one replica's peer table churns towards one prefix, then collapses.
        churn, victim = top("peer_churn")
        diversity = z.get("peer_diversity", {})
        # A diversity collapse points to an eclipse only while the peer table
        # keeps its size; a table that shrinks is a partition or a crash.
        collapse = -min([value for node, value in diversity.items()
                         if counts.get(node, 0.0) >= 0.9 * norms.get(node, 0.0)] or [0.0])
        for node, count in counts.items():
            if node in norms:
                norms[node] += 0.05 * (count - norms[node])
            elif len(norms) < _MAX_REPLICAS:
                norms[node] = count
        self._peer_counts = {}
        peer_joins = max(self._peer_joins.values()) if self._peer_joins else 0.0
        score[7] = max(churn, collapse) + 1.5 * peer_joins
        if self._peer_joins:
            victim = max(self._peer_joins, key=self._peer_joins.__getitem__)
        suspects["eclipse"] = (victim,) if victim else ()
        # Decay the window counters (half-life of a few windows).
        self._conflicts = 0
        self._stalled = {}
        self._view_changes = {k: v * 0.8 for k, v in self._view_changes.items() if v > 0.05}
        self._joins = {k: v * 0.95 for k, v in self._joins.items() if v > 0.05}
        self._join_names = {k: v for k, v in self._join_names.items() if k in self._joins}
        self._peer_joins = {k: v * 0.8 for k, v in self._peer_joins.items() if v > 0.05}
        if self.windows < WARMUP_WINDOWS:
            score[:] = 0.0
        return np.clip(np.nan_to_num(score, nan=0.0, posinf=SCORE_CAP, neginf=0.0), 0.0, SCORE_CAP), suspects

    def _close_window(self) -> None:
        score, suspects = self._evidence()
        self.windows += 1
        params = self.parameters
        s = score[:, None]
        variance = params["spread"] ** 2
        log_lik = np.zeros(self._log_alpha.shape)
        for column, name, quiet in ((1, "score_precursor", "quiet_precursor"),
                                    (2, "score_execution", "quiet_execution")):
            mu = params[name]
            ratio = (mu * s - 0.5 * mu * mu) / variance
            q = params[quiet]
            if q.any():
                # log(q + (1 - q) e^ratio); draws with q = 0 keep the plain ratio exactly.
                with np.errstate(divide="ignore"):
                    ratio = np.logaddexp(np.log(q), np.log1p(-q) + ratio)
            log_lik[..., column] = ratio
        # Bounded weight per window: a single burst (a restart, a partition) cannot decide alone.
        np.clip(log_lik, -_MAX_LOG_RATIO, _MAX_LOG_RATIO, out=log_lik)
        # Forward step in log space: predict through the transitions, then weigh by the evidence.
        joint = self._log_alpha[..., :, None] + self._log_transition
        peak = joint.max(axis=-2)
        predicted = peak + np.log(np.exp(joint - peak[..., None, :]).sum(axis=-2))
        posterior = predicted + log_lik
        posterior -= posterior.max(axis=-1, keepdims=True)
        posterior -= np.log(np.exp(posterior).sum(axis=-1, keepdims=True))
        self._log_alpha = np.maximum(posterior, -700.0)
        for name, nodes in suspects.items():
            if nodes:
                self._suspects[name] = nodes
        ts = self._current * self.window
        self.belief = self._summarise(ts, ())
        self._raise_alerts(ts)

    def _summarise(self, ts: float, alerts: tuple[Alert, ...]) -> Belief:
        probability = np.exp(self._log_alpha)
        precursor, execution = probability[..., 1], probability[..., 2]
        # Counterfactual projection: with no response, does execution begin within the horizon?
        steps = self.horizon / self.window
        onset = 1.0 - (1.0 - self.parameters["precursor_to_execution"]) ** steps
        start = 1.0 - (1.0 - self.parameters["benign_to_precursor"]) ** steps
        within = execution + precursor * onset + probability[..., 0] * start * onset * 0.5
        draws = np.clip(np.stack([precursor, execution, within, precursor + execution]), 0.0, 1.0)
        # Order statistics across the ensemble (one sort for all four quantities).
        ordered = np.sort(draws, axis=-1)
        count = ordered.shape[-1]
        tail = (1.0 - self.level) / 2.0
        low = ordered[..., int(math.floor(tail * (count - 1)))]
        high = ordered[..., int(math.ceil((1.0 - tail) * (count - 1)))]
        mean = draws.mean(axis=-1)
        table = np.stack([mean, np.minimum(low, mean), np.maximum(high, mean)], axis=-1)

        def band(index: int) -> np.ndarray:
            return table[index]

        suspects = dict(self._suspects)
        executing = dict(zip(ATTACK_HYPOTHESES, (table[1, :, 0] > table[0, :, 0]).tolist(), strict=True))
        return Belief(ts=ts, level=self.level, precursor=band(0), execution=band(1),
                      within_horizon=band(2), active=band(3), suspects=suspects, alerts=alerts,
                      attacks=ATTACK_HYPOTHESES,
                      countermeasures=Recommendations(suspects, self._primary, self._replicas, executing,
                                                      self._planner))

    def _raise_alerts(self, ts: float) -> None:
        belief = self.belief
        raised = []
        for index, attack in enumerate(ATTACK_HYPOTHESES):
            mean, lower, upper = belief.active[index]
            if self._episode(index, mean, lower >= self.threshold):
                phase = "execution" if belief.execution[index, 0] > belief.precursor[index, 0] else "precursor"
                raised.append(Alert(ts, attack, tuple(self._suspects.get(attack, ())), float(mean),
                                    float(lower), float(upper), phase, belief.countermeasures[attack]))
        self._publish(raised)

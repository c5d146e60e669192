"""The signal model's per-window likelihood, shared by the streaming model filter and its fit.

One window's signals (:class:`~bayes_defense.stream.signals.WindowSignals`)
have, under each attack hypothesis and stage, the probability the cluster
model gives them: every signal a noisy-OR (:func:`bayes_defense.models.tables.noisy_or`)
of its benign rate, the attack's effects (the catalogue's ``attacker_side``
at the attacker's replica, ``cluster_side`` everywhere; in execution also
the outcomes its success breaks), and one benign fault of :data:`~bayes_defense.models.faults.FAULTS`
or none (its ``at_node`` effects at the replica it hits, ``cluster`` effects
everywhere). Signals are independent given these causes, as in the SCM.

Attack effects are per-window probabilities whose defaults are the
catalogue's incident-window probabilities sliced to one telemetry window
(:func:`time_slice`); benign rates and fault effects are per window already.

The unknowns are summed out as the cluster SCM does: the attacker's
replica with the attack's precondition as its prior (``primary_faulty``: the
primary the log names; ``backup_faulty``: a backup; ``attacker_inside`` and
``eclipse_footing``: any replica; ``admission_open``: an outside identity),
the fault (none, or each fault with its prior) and the fault's replica
(uniform). One attack at a time is active in a hypothesis (the filter runs
one phase chain per attack, the others benign), which is the factorisation
the defender has always used.

:func:`window_log_likelihood` is the one function: the filter calls it every
window, and :mod:`bayes_defense.fitting.signal_model` calls it on the same
windows (an oracle test checks that they agree).

Stages (the last axis of the result): 0 benign, 1 the first signal of an
ordered precursor pattern only (:data:`bayes_defense.models.registry.PATTERNS`),
2 precursor, 3 execution.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bayes_defense.errors import InvalidInputError
from bayes_defense.models import tables
from bayes_defense.models.faults import FAULT_SIGNALS, FAULTS, OUTCOME_SIGNALS
from bayes_defense.models.registry import attack_spec, tracked_attacks
from bayes_defense.stream.signals import SIGNALS, WindowSignals

__all__ = ["STAGES", "TRANSITIONS", "SignalTables", "parameter_names", "default_values", "prior_draws",
           "check_values", "signal_tables", "window_log_likelihood", "attacker_weights", "time_slice",
           "incident_parameters", "fault_transitions", "predict_faults", "FaultFilter"]

#: The stages of an attack's phase chain.
STAGES = ("benign", "pattern", "precursor", "execution")
#: Per-window transition parameters of each attack's chain: ``{attack}.{name}``, with prior medians.
#: An attack's precursor lasts minutes and its execution about one (docs/log-schema.md); an attack
#: starts rarely (one in thousands of windows), and a precursor is seldom abandoned.
TRANSITIONS = {"benign_to_precursor": 1 / 3000, "precursor_to_execution": 1 / 90,
               "precursor_to_benign": 1 / 400, "execution_to_benign": 1 / 60, "pattern_to_precursor": 1 / 30}
_FLOOR = 1e-12
_FAULT_NAMES = tuple(FAULTS)


def _baseline_name(signal: str) -> str:
    if signal in OUTCOME_SIGNALS:
        return f"outcome.{signal}.baseline"
    if signal in FAULT_SIGNALS:
        return f"signal.{signal}.baseline"
    return f"telemetry.{signal}.baseline"


def _effect_name(signal: str, attack: str) -> str:
    return f"window.{signal}.{attack}"


def _execution_name(signal: str, attack: str) -> str:
    # The same edge while the attack executes (a telemetry signal; outcomes show in execution only anyway).
    return f"window.{signal}.{attack}.execution"


def parameter_names(attacks: Sequence[str] | None = None) -> dict[str, float]:
    """Every parameter of the signal model with its default: ``{name: value}``.

    Benign rates keep the cluster model's names (:data:`bayes_defense.models.PARAMETERS`).
    An attack's effect on a signal is a per-window probability
    ``window.{signal}.{attack}`` (for an outcome signal: that its success
    breaks the outcome in the window); its default is the catalogue's
    incident-window probability sliced to a window (:func:`time_slice`), and
    :func:`incident_parameters` turns fitted values back into the catalogue's names.
    A telemetry edge has a second parameter, ``window.{signal}.{attack}.execution``,
    its probability while the attack executes (same default): an attack's two
    phases show differently (a Sybil's identities fail authentication once
    they vote, not while they join), and the fit learns each from its own windows.

    Examples
    --------
    >>> names = parameter_names()
    >>> round(names["window.conflicting.equivocation"], 4), names["fault.restart.restart_seen"]
    (0.0327, 0.95)
    """
    from bayes_defense.models.parameters import PARAMETERS

    attacks = tracked_attacks() if attacks is None else tuple(attacks)
    out: dict[str, float] = {}
    for signal in SIGNALS:
        name = _baseline_name(signal)
        out[name] = PARAMETERS[name].default if name in PARAMETERS else FAULT_SIGNALS[signal]
    per_window = TRANSITIONS["precursor_to_execution"]
    for attack in attacks:
        spec = attack_spec(attack)

        def catalogue(name: str, fallback: float) -> float:
            return PARAMETERS[name].default if name in PARAMETERS else fallback

        success = catalogue(f"{attack}.p_success", spec.p_success)
        for signal, p in {**spec.attacker_side, **spec.cluster_side}.items():
            out[_effect_name(signal, attack)] = float(time_slice(catalogue(f"telemetry.{signal}.{attack}", p),
                                                                 per_window))
            out[_execution_name(signal, attack)] = out[_effect_name(signal, attack)]
        for outcome, p in spec.impacts.items():
            out[_effect_name(outcome, attack)] = float(time_slice(catalogue(f"{attack}.impact.{outcome}", p) * success,
                                                                  per_window))
        out[f"{attack}.p_success"] = success
        out[f"{attack}.collusion_gain"] = catalogue(f"{attack}.collusion_gain", spec.collusion_gain)
        for key, p in TRANSITIONS.items():
            if key != "pattern_to_precursor" or spec.pattern is not None:
                out[f"{attack}.{key}"] = p
    for fault in FAULTS.values():
        out[f"fault.{fault.name}.prior"] = fault.prior
        for signal, p in {**fault.at_node, **fault.cluster}.items():
            out[f"fault.{fault.name}.{signal}"] = p
    return out


def incident_parameters(values: Mapping[str, np.ndarray], attacks: Sequence[str] | None = None) -> dict:
    """The catalogue-named parameters (per incident window) implied by signal-model values.

    ``telemetry.{signal}.{attack} = 1 - (1 - q) ** (1 / precursor_to_execution)`` for each
    per-window effect ``q``, ``{attack}.impact.{outcome}`` the same divided by
    P(success | execution), and the benign rates as they are; only names the
    cluster model has (:data:`bayes_defense.models.PARAMETERS`) are returned.

    Examples
    --------
    >>> out = incident_parameters(default_values())
    >>> round(float(out["telemetry.conflicting.equivocation"][0]), 6)
    0.95
    """
    from bayes_defense.models.parameters import PARAMETERS

    attacks = tracked_attacks() if attacks is None else tuple(attacks)
    values = check_values(values, attacks)
    out = {}
    for attack in attacks:
        spec = attack_spec(attack)
        rate = values[f"{attack}.precursor_to_execution"]
        for signal in {**spec.attacker_side, **spec.cluster_side}:
            out[f"telemetry.{signal}.{attack}"] = 1.0 - (1.0 - values[_effect_name(signal, attack)]) ** (1.0 / rate)
        for outcome in spec.impacts:
            incident = 1.0 - (1.0 - values[_effect_name(outcome, attack)]) ** (1.0 / rate)
            out[f"{attack}.impact.{outcome}"] = np.clip(incident / np.maximum(values[f"{attack}.p_success"], 1e-9),
                                                        0.0, 1.0)
    for name, array in values.items():
        if name in PARAMETERS and name not in out:
            out[name] = array
    return {name: np.clip(array, 0.0, 1.0) for name, array in out.items() if name in PARAMETERS}


def default_values(attacks: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Every parameter at its default as a one-draw array."""
    return {name: np.array([value]) for name, value in parameter_names(attacks).items()}


def prior_draws(ensemble: int = 16, seed: int = 0, attacks: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Draws from the signal model's prior: ``{name: float64 array (ensemble,)}``.

    Probabilities are Beta with the default as mean and 20 pseudo-windows of
    weight (a default of 0.01 then ranges over about 0 to 0.05); transition
    rates are log-normal around their medians (a factor of about 1.6).

    Examples
    --------
    >>> draws = prior_draws(8, seed=1)
    >>> draws["window.msg_rate.flooding"].shape
    (8,)
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, value in parameter_names(attacks).items():
        if name.rsplit(".", 1)[-1] in TRANSITIONS:
            out[name] = np.exp(rng.normal(math.log(value), 0.5, ensemble))
        else:
            mean = min(max(value, 1e-4), 1 - 1e-4)
            out[name] = rng.beta(20.0 * mean, 20.0 * (1.0 - mean), ensemble)
    return check_values(out, attacks)


def check_values(values: Mapping[str, Any], attacks: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Validate parameter draws; fill missing names with their defaults; return float64 arrays (D,).

    Raises :class:`~bayes_defense.errors.InvalidInputError` naming the first bad entry.
    """
    if not isinstance(values, Mapping):
        raise InvalidInputError(f"signal-model parameters must be a dict {{name: array of draws}}; "
                                f"got {type(values).__name__}")
    names = parameter_names(attacks)
    unknown = sorted(str(k) for k in values if k not in names)
    if unknown:
        raise InvalidInputError(f"unknown signal-model parameters {', '.join(unknown[:5])}; valid names come from "
                                "bayes_defense.stream.evidence.parameter_names()")
    arrays = {}
    for name, value in values.items():
        array = np.atleast_1d(np.asarray(value, dtype=np.float64))
        if array.ndim != 1 or array.size == 0 or not np.all(np.isfinite(array)) or np.any(array < 0) or np.any(
                array > 1):
            raise InvalidInputError(f"parameter {name!r} must be a 1-D array of probabilities in [0, 1]")
        arrays[name] = array
    sizes = {a.size for a in arrays.values()} - {1}
    if len(sizes) > 1:
        raise InvalidInputError(f"parameter draws must all have the same length; got {sorted(sizes)}")
    draws = sizes.pop() if sizes else 1
    out = {name: np.broadcast_to(arrays.get(name, np.array([default])), (draws,)).astype(np.float64)
           for name, default in names.items()}
    for attack in (tracked_attacks() if attacks is None else attacks):
        total = out[f"{attack}.precursor_to_execution"] + out[f"{attack}.precursor_to_benign"]
        if np.any(total >= 1.0):
            raise InvalidInputError(f"{attack}: precursor_to_execution + precursor_to_benign must stay below 1")
    return out


@dataclass(frozen=True)
class SignalTables:
    """The signal model's tables for a parameter set with ``D`` draws.

    Attributes
    ----------
    attacks : tuple of str
    log_on, log_off : arrays (D, A, 4 stages, G faults + 1, 2 attacker role, 2 fault role, S)
        ``log P(signal on)`` and ``log P(signal off)`` at a replica that is
        (or is not) the attacker's and (or not) the fault's.
    log_fault_prior : array (D, G + 1)
        ``log P(no fault)``, then each fault's.
    footing : tuple of str
        Each attack's precondition site.
    """

    attacks: tuple
    log_on: np.ndarray
    log_off: np.ndarray
    log_fault_prior: np.ndarray
    footing: tuple
    stacked: np.ndarray = None   # (2 S, D * A * 4 * (G + 1) * 4): log_on, then log_off, one row per signal

    def __post_init__(self) -> None:
        signals = self.log_on.shape[-1]
        stacked = np.concatenate([self.log_on.reshape(-1, signals), self.log_off.reshape(-1, signals)], 1)
        object.__setattr__(self, "stacked", np.ascontiguousarray(stacked.T))

    @property
    def draws(self) -> int:
        """Number of parameter draws."""
        return self.log_on.shape[0]


def signal_tables(values: Mapping[str, np.ndarray], attacks: Sequence[str] | None = None) -> SignalTables:
    """Build :class:`SignalTables` from :func:`check_values` output.

    Examples
    --------
    >>> t = signal_tables(default_values())
    >>> t.log_on.shape[1:4], bool(np.all(t.log_on <= 0))
    ((8, 4, 8), True)
    """
    attacks = tracked_attacks() if attacks is None else tuple(attacks)
    values = check_values(values, attacks)
    draws = next(iter(values.values())).shape[0]
    n_signals, n_attacks, n_faults = len(SIGNALS), len(attacks), len(FAULTS)
    baseline = np.stack([values[_baseline_name(s)] for s in SIGNALS], -1)      # (D, S)
    attacker = np.zeros((draws, n_attacks, 4, n_signals))   # per stage: precursor values, execution's in stage 3
    cluster = np.zeros((draws, n_attacks, 4, n_signals))
    pattern_mask = np.ones((n_attacks, n_signals))
    outcome = np.zeros((draws, n_attacks, n_signals))
    for i, attack in enumerate(attacks):
        spec = attack_spec(attack)
        for side, target in ((spec.attacker_side, attacker), (spec.cluster_side, cluster)):
            for signal in side:
                target[:, i, :3, SIGNALS.index(signal)] = values[_effect_name(signal, attack)][:, None]
                target[:, i, 3, SIGNALS.index(signal)] = values[_execution_name(signal, attack)]
        if spec.pattern is not None:
            pattern_mask[i] = 0.0
            pattern_mask[i, SIGNALS.index(spec.pattern.first)] = 1.0
        for o in spec.impacts:
            outcome[:, i, SIGNALS.index(o)] = values[_effect_name(o, attack)]
    at_node = np.zeros((draws, n_faults + 1, n_signals))
    everywhere = np.zeros((draws, n_faults + 1, n_signals))
    for g, fault in enumerate(FAULTS.values(), start=1):
        for signal in fault.at_node:
            at_node[:, g, SIGNALS.index(signal)] = values[f"fault.{fault.name}.{signal}"]
        for signal in fault.cluster:
            everywhere[:, g, SIGNALS.index(signal)] = values[f"fault.{fault.name}.{signal}"]
    # Axes: draw, attack, stage, fault, attacker role, fault role, signal.
    stage_active = np.array([0.0, 1.0, 1.0, 1.0])[None, :, None]                     # (1, K, 1)
    active = stage_active * np.where(np.arange(4)[None, :, None] == 1, pattern_mask[:, None, :], 1.0)  # (A, K, S)
    executing = (np.arange(4) == 3).astype(np.float64)[None, :, None]
    role = np.array([0.0, 1.0])
    shape = (draws, n_attacks, 4, n_faults + 1, 2, 2, n_signals)

    def axes(array, keep):
        # Place an array's axes (named by letters of "dakgrfs") into the full shape.
        index = [slice(None) if letter in keep else None for letter in "dakgrfs"]
        return array[tuple(index)]

    probability = tables.noisy_or(axes(baseline, "ds"), [
        (axes(attacker, "daks"), axes(active, "aks") * role[None, None, None, None, :, None, None]),
        (axes(cluster, "daks"), axes(active, "aks")),
        (axes(outcome, "das"), axes(np.broadcast_to(executing, (1, 4, 1))[0], "ks")),
        (axes(at_node, "dgs"), role[None, None, None, None, None, :, None]),
        (axes(everywhere, "dgs"), 1.0),
    ])
    probability = np.broadcast_to(probability, shape)
    priors = np.stack([values[f"fault.{name}.prior"] for name in _FAULT_NAMES], -1)
    none = np.clip(1.0 - priors.sum(-1, keepdims=True), _FLOOR, 1.0)
    return SignalTables(
        attacks=attacks,
        log_on=np.log(np.clip(probability, _FLOOR, 1.0)),
        log_off=np.log(np.clip(1.0 - probability, _FLOOR, 1.0)),
        log_fault_prior=np.log(np.clip(np.concatenate([none, priors], -1), _FLOOR, 1.0)),
        footing=tuple(attack_spec(a).footing for a in attacks),
    )


def time_slice(incident, per_window):
    """P(a cause shows in one window) from P(it shows in an incident window): ``1 - (1 - p) ** per_window``.

    The catalogue's attack probabilities are per incident window (the time a
    precursor takes to lead to execution: ``1 / precursor_to_execution``
    windows, the chain's own mean precursor length); a cause that shows
    independently in each window with probability ``q`` shows in the
    incident window with probability ``1 - (1 - q) ** (1 / per_window)``.
    Benign rates need no slicing: the indicators are thresholded at the 1 %
    tail of single windows (:data:`bayes_defense.stream.signals.TAIL`).

    Examples
    --------
    >>> round(float(time_slice(0.95, 1 / 90)), 4)
    0.0327
    """
    return 1.0 - (1.0 - np.asarray(incident, dtype=np.float64)) ** per_window


def attacker_weights(footing: str, replicas: int, primary: int) -> np.ndarray:
    """Prior of the attacker's replica given the precondition: ``(replicas + 1,)``, the last entry "outside".

    Examples
    --------
    >>> attacker_weights("primary_faulty", 4, 0).tolist()
    [1.0, 0.0, 0.0, 0.0, 0.0]
    >>> attacker_weights("admission_open", 2, 0).tolist()
    [0.0, 0.0, 1.0]
    """
    out = np.zeros(replicas + 1)
    if footing == "admission_open" or replicas == 0:
        out[-1] = 1.0
    elif footing == "primary_faulty" and primary >= 0:
        out[primary] = 1.0
    elif footing == "backup_faulty" and primary >= 0 and replicas > 1:
        out[:replicas] = 1.0 / (replicas - 1)
        out[primary] = 0.0
    else:
        out[:replicas] = 1.0 / replicas
    return out


def _kernel() -> Any:
    # A module of its own, so that numba's on-disk cache of the compiled kernel survives
    # edits to this one; imported late, so importing this module loads no numba.
    from bayes_defense.stream import _evidence_kernel

    return _evidence_kernel


_DERIVED: dict[int, tuple] = {}
# Distinct replica rows whose terms the kernel keeps between windows, per tables object.
_STORE = 32


def _derived_tables(model: SignalTables) -> tuple:
    """The kernel's views of ``model.stacked``: the columns of neither role and of both, and the ratios.

    Computed once per tables object (held while it lives): ``(log00, log11, ratio, store,
    source, mode)``, ``ratio`` the exponentials of the other three roles' columns minus
    ``log00``, ``store`` the kernel's terms of recently seen rows (``_STORE`` of them),
    ``source`` and ``mode`` the blocks the kernel copies instead of computing
    (:func:`_repeated_blocks`).
    """
    key = id(model)
    found = _DERIVED.get(key)
    if found is not None and found[0]() is model:
        return found[1:]
    stacked = model.stacked
    roles = stacked.reshape(stacked.shape[0], -1, 4)
    with np.errstate(over="ignore", invalid="ignore"):
        ratio = np.exp(roles[:, :, 1:] - roles[:, :, :1]).reshape(stacked.shape[0], -1)
    cells, signals = roles.shape[1], stacked.shape[0]
    store = (np.zeros((_STORE, signals), np.bool_), np.zeros(_STORE, np.int64), np.zeros(1, np.int64),
             np.empty((_STORE, cells)), np.empty((_STORE, 3 * cells)), np.zeros(_STORE, np.bool_))
    derived = (np.ascontiguousarray(roles[:, :, 0]), np.ascontiguousarray(roles[:, :, 3]), ratio, store,
               *_repeated_blocks(model))
    _DERIVED[key] = (weakref.ref(model, lambda _, key=key: _DERIVED.pop(key, None)), *derived)
    return derived


def _repeated_blocks(model: SignalTables) -> tuple:
    """Which (draw, attack, stage) blocks of the tables repeat an earlier one: ``(source, mode)``.

    A block is the columns of one draw, attack and stage (every fault, every
    role). The catalogue's tables repeat many: the benign stage is the same
    for every attack (no attack's signal is active there), and an attack
    without an ordered precursor pattern has the same columns in its pattern
    stage as in its precursor stage. A block whose columns equal an earlier
    block's (``source[b]``, the first one, computed) is copied: ``mode`` 1 when
    the two attacks have the same precondition (the same attacker prior, so
    the same results, bit for bit), 2 when their footings differ but the
    attacker's role changes no column of the block (then the likelihood and
    the fault posterior do not depend on the attacker's prior, and the
    attacker's posterior is its prior). ``mode`` 0: computed.
    """
    draws, attacks, stages, faults = model.log_on.shape[:4]
    blocks = draws * attacks * stages
    columns = model.stacked.reshape(model.stacked.shape[0], blocks, faults, 4)
    source = np.arange(blocks, dtype=np.int64)
    mode = np.zeros(blocks, np.int8)
    first: dict = {}
    for block in range(blocks):
        values = columns[:, block]
        attack = (block // stages) % attacks
        # The attacker's role changes nothing: its columns equal those without it, for both fault roles.
        role_free = bool(np.array_equal(values[:, :, 0], values[:, :, 2])
                         and np.array_equal(values[:, :, 1], values[:, :, 3]))
        computed = first.setdefault(values.tobytes(), [])
        for earlier in computed:
            if model.footing[(earlier // stages) % attacks] == model.footing[attack]:
                source[block], mode[block] = earlier, 1
                break
            if role_free:
                source[block], mode[block] = earlier, 2
                break
        else:
            computed.append(block)
    return source, mode


@functools.lru_cache(maxsize=256)
def _log_attacker_weights(footing: tuple, replicas: int, primary: int) -> np.ndarray:
    """``log attacker_weights`` of every attack, ``(A, replicas + 1)``; read-only (shared between windows)."""
    with np.errstate(divide="ignore"):
        out = np.log(np.stack([attacker_weights(f, replicas, primary) for f in footing])) if footing else \
            np.zeros((0, replicas + 1))
    out.setflags(write=False)
    return out


def fault_transitions(values: Mapping[str, np.ndarray], window: float = 1.0) -> np.ndarray:
    """Log transition matrix of the fault chain, ``(D, G + 1, G + 1)`` over (none, each fault).

    A fault lasts ``duration`` seconds on average (:class:`~bayes_defense.models.faults.Fault`);
    it starts at the rate that makes ``fault.{name}.prior`` its long-run share of windows.
    The chain holds one fault at a time, the latest: another fault may start while one
    is under way (faults overlap), and the chain then follows the new one.

    Examples
    --------
    >>> t = np.exp(fault_transitions(default_values()))
    >>> bool(np.allclose(t.sum(-1), 1.0))
    True
    """
    priors = np.stack([values[f"fault.{name}.prior"] for name in _FAULT_NAMES], -1)           # (D, G)
    stay = np.array([max(0.0, 1.0 - window / fault.duration) for fault in FAULTS.values()])   # (G,)
    none = np.clip(1.0 - priors.sum(-1, keepdims=True), 1e-6, 1.0)
    start = priors * (1.0 - stay) / none                                                      # stationary balance
    scale = np.maximum(start.sum(-1, keepdims=True), 1.0)
    start = start / scale
    draws, count = priors.shape
    matrix = np.zeros((draws, count + 1, count + 1))
    matrix[:, 0, 1:] = start
    matrix[:, 0, 0] = 1.0 - start.sum(-1)
    index = np.arange(1, count + 1)
    # From fault g: another fault h starts at its own rate; otherwise g stays or ends.
    others = start.sum(-1, keepdims=True) - start                                             # (D, G)
    matrix[:, 1:, 1:] = start[:, None, :]
    matrix[:, index, index] = stay * (1.0 - others)
    matrix[:, 1:, 0] = (1.0 - stay) * (1.0 - others)
    with np.errstate(divide="ignore"):
        return np.log(matrix)


def predict_faults(log_faults: np.ndarray, log_transition: np.ndarray) -> np.ndarray:
    """One step of the fault chain: ``log P(fault now)`` from last window's ``(D, G + 1)`` posterior.

    Examples
    --------
    >>> values = default_values()
    >>> prior = predict_faults(FaultFilter(values).log_faults, fault_transitions(values))
    >>> prior.shape, bool(np.isclose(np.exp(prior).sum(), 1.0))
    ((1, 8), True)
    """
    log_faults = np.ascontiguousarray(log_faults, dtype=np.float64)
    log_transition = np.ascontiguousarray(log_transition, dtype=np.float64)
    draws, states = log_faults.shape
    if log_transition.shape != (draws, states, states):
        raise InvalidInputError(f"log_transition must have shape {(draws, states, states)} to match log_faults "
                                f"{log_faults.shape}; got {log_transition.shape}")
    out = np.empty((draws, states))
    _kernel().predict(log_faults, log_transition, out)
    return out


def window_log_likelihood(model: SignalTables, window: WindowSignals, *, with_attacker: bool = False,
                          log_fault_prior: np.ndarray | None = None,
                          log_fault_position: np.ndarray | None = None) -> Any:
    """``log P(window's signals | attack a in stage k)`` for every draw: ``(D, A, 4)``.

    The attacker's replica, the fault and the fault's replica are summed out
    (module docstring); ``log_fault_prior`` ``(D, G + 1)`` replaces the
    faults' long-run prior (the filter passes its fault chain's prediction,
    :func:`predict_faults`), and ``log_fault_position`` ``(D, G + 1, R)``
    the fault's replica's uniform prior: ``log P(replica | fault)``, each row
    normalised (the fault chain's prediction, :class:`FaultFilter`, which
    follows a fault's replica from window to window; it keeps row 0, "no
    fault", uniform). With ``with_attacker=True`` also returns the log
    posterior weight of each attacker position (``(D, A, 4, R + 1)``, the
    last entry "outside any replica"), from which the suspects come, and the
    log posterior of each fault (``(D, A, 4, G + 1)``, "no fault" first).

    The sums run in a compiled kernel (:mod:`bayes_defense.stream._evidence_kernel`)
    over the window's distinct replica rows; its numpy oracle is in
    ``tests/stream/test_evidence_kernel.py``.

    Examples
    --------
    >>> from bayes_defense.stream.signals import WindowSignals, SIGNALS
    >>> values = np.full((3, len(SIGNALS)), np.nan)     # rows r0, r1, unattributed
    >>> values[:2, SIGNALS.index("conflicting")] = [1.0, 0.0]
    >>> ll = window_log_likelihood(signal_tables(default_values()), WindowSignals(("r0", "r1"), 0, values))
    >>> bool(ll[0, 0, 2] - ll[0, 0, 0] > 2.0)   # a conflicting pair from the primary: equivocation
    True
    """
    x = np.ascontiguousarray(window.values, dtype=np.float64)
    draws, attacks, stages, faults = model.log_on.shape[:4]
    signals = model.log_on.shape[-1]
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != signals:
        raise InvalidInputError(f"a window's values must be (replicas + 1, {signals} signals); got {x.shape}. "
                                "Build windows with bayes_defense.stream.signals.SignalExtractor")
    replicas = x.shape[0] - 1
    prior = model.log_fault_prior if log_fault_prior is None else log_fault_prior
    prior = np.ascontiguousarray(prior, dtype=np.float64)
    if prior.shape != (draws, faults):
        raise InvalidInputError(f"log_fault_prior must have shape {(draws, faults)} (draws, no fault + faults); "
                                f"got {prior.shape}")
    if log_fault_position is None:
        position = np.empty((0, 0, 0))
    else:
        position = np.ascontiguousarray(log_fault_position, dtype=np.float64)
        if position.shape != (draws, faults, replicas):
            raise InvalidInputError(f"log_fault_position must have shape {(draws, faults, replicas)} (draws, no fault + "
                                    f"faults, replicas); got {position.shape}")
        if replicas == 0:
            position = np.empty((0, 0, 0))
    log_weights = _log_attacker_weights(model.footing, replicas, int(window.primary))
    total = np.empty((draws, attacks, stages))
    if with_attacker:
        by_position = np.empty((draws, attacks, stages, replicas + 1))
        by_fault = np.empty((draws, attacks, stages, faults))
    else:
        by_position = by_fault = np.empty((0, 0, 0, 0))
    _kernel().likelihood(model.stacked, *_derived_tables(model), x, log_weights, prior, position, total, by_position,
                         by_fault, with_attacker)
    if with_attacker:
        return total, by_position, by_fault
    return total


class FaultFilter:
    """The benign faults' chain, filtered window by window under "no attack" (used by the filter and the fit).

    Its state is the fault under way (none, or one of :data:`FAULTS`) and
    the replica it hits: a fault that starts hits a replica drawn uniformly,
    and keeps it while it lasts, so sustained evidence at one replica (a
    slow primary) pays the replica count once, when the fault starts, not in
    every window. :attr:`log_faults` ``(D, G + 1)`` holds ``log P(fault)``,
    :attr:`log_position` ``(D, G + 1, R)`` ``log P(replica | fault)`` after
    the last window (None before the first window with replicas; row 0,
    "no fault", stays uniform). :meth:`step` returns the window's likelihood
    (:func:`window_log_likelihood` with the chain's predicted fault and
    replica) and moves the chain on.

    Examples
    --------
    >>> from bayes_defense.stream.signals import WindowSignals, SIGNALS
    >>> faults = FaultFilter(default_values())
    >>> model = signal_tables(default_values())
    >>> x = np.full((3, len(SIGNALS)), np.nan)
    >>> x[1, SIGNALS.index("restart_seen")] = 1.0
    >>> _ = faults.step(model, WindowSignals(("r0", "r1"), 0, x))
    >>> restart = 1 + list(FAULTS).index("restart")
    >>> bool(np.exp(faults.log_faults[0, restart]) > 0.5), bool(np.exp(faults.log_position[0, restart, 1]) > 0.9)
    (True, True)
    """

    def __init__(self, values: Mapping[str, np.ndarray], window: float = 1.0) -> None:
        self.log_transition = fault_transitions(values, window)
        draws = self.log_transition.shape[0]
        start = np.zeros((draws, len(_FAULT_NAMES) + 1))
        start[:, 0] = 1.0
        with np.errstate(divide="ignore"):
            self.log_faults = np.maximum(np.log(start), -700.0)
        self.log_position: np.ndarray | None = None
        self._ratios: tuple = (None, None)

    def predict(self, replicas: int) -> tuple:
        """The chain's prediction for the next window: ``(log P(fault) (D, G + 1), log P(replica | fault) or None)``.

        A fault under way stays with its replica; one that starts (from no
        fault or from another fault) draws it uniformly over ``replicas``.
        Replicas that appeared since the last window share the uniform draw's
        weight (:meth:`positions`).
        """
        if replicas == 0:
            return predict_faults(self.log_faults, self.log_transition), None
        last = np.ascontiguousarray(self.positions(replicas))
        prior = np.empty(self.log_faults.shape)
        position = np.empty(last.shape)
        # The chain's step: bayes_defense.stream._evidence_kernel.predict_positions; its oracle is the
        # explicit joint chain in tests/stream/test_evidence_kernel.py.
        _kernel().predict_positions(np.ascontiguousarray(self.log_faults), np.ascontiguousarray(self.log_transition),
                                    last, prior, position)
        return prior, position

    def positions(self, replicas: int) -> np.ndarray:
        """``log P(replica | fault)`` over ``replicas`` after the last window: uniform before any.

        The replica set only grows (the signal extractor appends new
        replicas): the replicas seen before keep their share of the weight
        ``seen / replicas``, the new ones share the rest uniformly.
        """
        draws, states = self.log_faults.shape
        last = self.log_position
        if last is None or last.shape[2] == 0:
            return np.full((draws, states, replicas), -math.log(replicas))
        seen = last.shape[2]
        if seen == replicas:
            return last
        if seen > replicas:
            kept = last[:, :, :replicas]
            return kept - _logsumexp(kept, 2)[:, :, None]
        fresh = np.full((draws, states, replicas - seen), -math.log(replicas))
        return np.concatenate([last + math.log(seen / replicas), fresh], 2)

    def step(self, model: SignalTables, window: WindowSignals) -> tuple:
        """``(log likelihood (D, A, 4), log attacker position, log fault posterior)`` of this window."""
        replicas = len(window.replicas)
        prior, position = self.predict(replicas)
        result = window_log_likelihood(model, window, with_attacker=True, log_fault_prior=prior,
                                       log_fault_position=position)
        # The chain moves on under "no attack" (attack 0, benign stage: the same for every attack).
        posterior = np.ascontiguousarray(result[2][:, 0, 0, :])
        self.log_faults = np.empty_like(posterior)
        _kernel().normalise(posterior, -700.0, self.log_faults)
        if position is not None:
            # P(replica | fault, window) under no attack: the prediction times the ratio of the
            # window's likelihood with the fault at that replica to that with the fault elsewhere.
            # (the kernel's update_positions, with each replica row's log term with the fault there
            # minus without: _fault_role_log_ratios).
            self.log_position = np.empty_like(position)
            _kernel().update_positions(position, *self._fault_role_log_ratios(model),
                                       np.ascontiguousarray(window.values, dtype=np.float64), self.log_position)
        return result

    def _fault_role_log_ratios(self, model: SignalTables) -> tuple:
        """``(D, G + 1, S)`` twice: a signal's log term with the fault at the replica minus without, on and off.

        Read from the tables of attack 0's benign stage (no attack plays a
        role there; kept for the tables object last used).
        """
        held, ratios = self._ratios
        if held is None or held() is not model:
            ratios = (np.ascontiguousarray(model.log_on[:, 0, 0, :, 0, 1, :] - model.log_on[:, 0, 0, :, 0, 0, :]),
                      np.ascontiguousarray(model.log_off[:, 0, 0, :, 0, 1, :] - model.log_off[:, 0, 0, :, 0, 0, :]))
            self._ratios = (weakref.ref(model), ratios)
        return ratios


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    peak = np.max(a, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        return np.squeeze(peak, axis) + np.log(np.sum(np.exp(a - peak), axis=axis))

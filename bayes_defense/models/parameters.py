"""Named numeric parameters of the cluster model, their defaults, and overrides (scalars or posterior draws).

Every number the cluster SCM uses is a named parameter here, so that
:mod:`bayes_defense.fit` can learn it and :func:`bayes_defense.models.cluster`
can take the fitted values (``parameters=``). A value given as a 1-D array of
S posterior draws makes the model draw ``theta_draw ~ Categorical(uniform over
S)`` and use draw ``theta_draw`` of every such parameter: exact queries then
average over parameter uncertainty, and the cluster queries report the spread
across draws as their interval.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from bayes_defense.errors import InvalidInputError
from bayes_defense.models import edges
from bayes_defense.models.catalogue import (
    ATTACKS,
    CONTROLS,
    FOOTING,
    ISOLATED_PRIOR,
    JOIN_RATE,
    OUTCOMES,
    TELEMETRY,
)

__all__ = ["Parameter", "PARAMETERS", "resolve_parameters", "attack_edges", "attack_parameters"]


class Parameter(NamedTuple):
    """A model parameter: its default value and a one-line meaning (all are probabilities)."""

    default: float
    meaning: str


def _catalogue_parameters() -> dict:
    out = {
        "prior.attacker_inside": Parameter(FOOTING["attacker_inside"],
                                           "P(the attacker controls a replica), spread evenly over replicas"),
        "prior.admission_open": Parameter(FOOTING["admission_open"], "P(cluster or overlay admission is open)"),
        "prior.peer_table_exposed": Parameter(FOOTING["peer_table_exposed"],
                                              "P(a victim peer table accepts attacker-chosen peers)"),
    }
    for site, prior in CONTROLS.items():
        out[f"prior.{site}"] = Parameter(prior, f"P(control {site!r} is already in place)")
    out["prior.isolated"] = Parameter(ISOLATED_PRIOR, "P(some replica is already isolated), spread evenly")
    # Edge parameters take their names from the edges module, which tables.py reads too.
    for a, attack in ATTACKS.items():
        out[f"{a}.p_attempt"] = Parameter(attack.p_attempt, f"P({a} precursor phase starts | precondition)")
        out[f"{a}.p_execute"] = Parameter(attack.p_execute, f"P({a} executes | precursor phase)")
        out[f"{a}.p_success"] = Parameter(attack.p_success, f"P({a} succeeds | execution), no colluders, no defence")
        out[f"{a}.collusion_gain"] = Parameter(attack.collusion_gain,
                                               f"share of {a}'s remaining failure removed when all f collude")
        for outcome, weight in attack.impacts.items():
            out[f"{a}.impact.{outcome}"] = Parameter(weight, f"P({a} success breaks {outcome})")
        for (_, name), countermeasure in zip(edges.mitigations(a), attack.mitigations, strict=True):
            out[name] = Parameter(attack.mitigations[countermeasure],
                                  f"fraction of {a}'s success that {countermeasure} removes")
    for t in TELEMETRY:
        out[f"telemetry.{t.name}.baseline"] = Parameter(t.baseline, f"benign P({t.name} indicator on) per replica")
        attacker_side, cluster_side = edges.telemetry_causes(t.name)
        for a, name in attacker_side:
            out[name] = Parameter(t.attacker_side[a], f"P({a} precursor raises {t.name} at the attacker's replica)")
        for a, name in cluster_side:
            out[name] = Parameter(t.cluster_side[a], f"P({a} precursor raises {t.name} at every replica)")
    out["telemetry.join_rate.baseline"] = Parameter(JOIN_RATE["baseline"], "benign P(join rate above threshold)")
    for a, name in edges.join_rate_causes():
        out[name] = Parameter(JOIN_RATE[a], f"P({a} precursor raises the join rate)")
    for name, baseline, meaning in OUTCOMES:
        out[f"outcome.{name}.baseline"] = Parameter(baseline, f"benign P({name}) per window: {meaning}")
    return out


#: Every named parameter of the cluster model with the catalogue's attacks: ``{name: Parameter(default, meaning)}``.
#: A model with users' attacks (:func:`bayes_defense.models.registry.add_attack`) has theirs too
#: (:func:`attack_parameters`, :attr:`bayes_defense.models.tables.ModelStructure.parameters`).
PARAMETERS: dict = _catalogue_parameters()


def attack_edges(spec) -> dict:
    """The edges of an attack added by ``add_attack``, each with its parameter, named as the catalogue's are.

    Returns ``{"attacker_side": ((signal, parameter), ...), "cluster_side": ..., "impacts": ((outcome,
    parameter), ...), "mitigations": ((countermeasure, parameter), ...)}``; ``join_rate`` is a signal here.

    Examples
    --------
    >>> from bayes_defense.models.registry import AttackSpec
    >>> spec = AttackSpec("mine", "attacker_inside", {"stale": 0.8}, {}, {"liveness_lost": 0.5}, 0.4, 0.0,
    ...                   "expose_and_evict", mitigations={"expose_and_evict": 0.9})
    >>> attack_edges(spec)["attacker_side"], attack_edges(spec)["mitigations"]
    ((('stale', 'telemetry.stale.mine'),), (('expose_and_evict', 'mine.efficacy.expose_and_evict'),))
    """
    a = spec.name
    return {"attacker_side": tuple((t, f"telemetry.{t}.{a}") for t in spec.attacker_side),
            "cluster_side": tuple((t, f"telemetry.{t}.{a}") for t in spec.cluster_side),
            "impacts": tuple((o, f"{a}.impact.{o}") for o in spec.impacts),
            "mitigations": tuple((c, f"{a}.efficacy.{c}") for c in spec.mitigations)}


def attack_parameters(spec) -> dict:
    """``{name: Parameter}`` of an attack added by ``add_attack``: its chain, its edges, their defaults."""
    a = spec.name
    out = {f"{a}.p_attempt": Parameter(spec.p_attempt, f"P({a} precursor phase starts | precondition)"),
           f"{a}.p_execute": Parameter(spec.p_execute, f"P({a} executes | precursor phase)"),
           f"{a}.p_success": Parameter(spec.p_success, f"P({a} succeeds | execution), no colluders, no defence"),
           f"{a}.collusion_gain": Parameter(spec.collusion_gain,
                                            f"share of {a}'s remaining failure removed when all f collude")}
    edges_of = attack_edges(spec)
    for side, where in (("attacker_side", "at the attacker's replica"), ("cluster_side", "at every replica")):
        for signal, name in edges_of[side]:
            out[name] = Parameter(getattr(spec, side)[signal], f"P({a} precursor raises {signal} {where})")
    for outcome, name in edges_of["impacts"]:
        out[name] = Parameter(spec.impacts[outcome], f"P({a} success breaks {outcome})")
    for countermeasure, name in edges_of["mitigations"]:
        out[name] = Parameter(spec.mitigations[countermeasure], f"fraction of {a}'s success that {countermeasure} "
                                                                "removes")
    return out


def resolve_parameters(parameters, known=None) -> tuple[dict, int, tuple]:
    """Validate overrides; return ``({name: float64 array (S,)}, S, cache key)``.

    Scalars are broadcast to every draw; arrays must be 1-D with the same
    number of draws S. The cache key holds the overrides only, so models with
    different overrides never share a cache entry. ``known`` is the model's
    ``{name: Parameter}`` (default :data:`PARAMETERS`).
    """
    known = PARAMETERS if known is None else known
    if parameters is None:
        parameters = {}
    if not hasattr(parameters, "items"):
        raise InvalidInputError(f"parameters must be a dict {{name: value or 1-D array of draws}}; "
                                f"got {type(parameters).__name__}")
    unknown = sorted(str(name) for name in parameters if name not in known)
    if unknown:
        raise InvalidInputError(f"unknown parameter {', '.join(map(repr, unknown))}; valid parameters "
                                f"(bd.models.PARAMETERS): {', '.join(known)}")
    overrides, draws = {}, set()
    for name, value in parameters.items():
        try:
            array = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise InvalidInputError(f"parameter {name!r} must be a number or a 1-D array of posterior draws; "
                                    f"got {value!r}") from error
        if array.ndim > 1 or array.size == 0:
            raise InvalidInputError(f"parameter {name!r} must be a number or a non-empty 1-D array of draws; "
                                    f"got shape {array.shape}")
        if not np.all(np.isfinite(array)) or np.any(array < 0.0) or np.any(array > 1.0):
            raise InvalidInputError(f"parameter {name!r} is a probability and must lie in [0, 1]; got "
                                    f"values from {np.nanmin(array):g} to {np.nanmax(array):g}")
        if array.ndim == 1:
            draws.add(array.size)
        overrides[name] = array
    if len(draws) > 1:
        raise InvalidInputError(f"parameters given as draws must all have the same number of draws; got lengths "
                                f"{sorted(draws)}")
    n_draws = draws.pop() if draws else 1
    values = {name: np.full(n_draws, spec.default) for name, spec in known.items()}
    for name, array in overrides.items():
        values[name] = np.broadcast_to(array, (n_draws,)).astype(np.float64).copy()
    for array in values.values():
        array.setflags(write=False)
    key = tuple(sorted((name, tuple(array.reshape(-1).tolist()), array.ndim) for name, array in overrides.items()))
    return values, n_draws, key

"""The model's attacks: the catalogue's, their precursor patterns, and users' own.

:func:`add_attack` is the public way to add an attack: its precondition (a
footing site), the signals its precursor raises with their probabilities
(at the attacker's replica and at every replica), its success and impacts on
the cluster outcomes, and its matched countermeasure. The streaming model
filter (:class:`bayes_defense.stream.model_filter.ModelDefender`) and the
signal-model fit read :func:`tracked_attacks`; the cluster SCM
(:func:`bayes_defense.models.cluster`), its exact engine,
:func:`bayes_defense.plan` and :func:`bayes_defense.explain` read the
structure :func:`bayes_defense.models.tables.structure` derives from this
registry. So an added attack is tracked, fitted, planned against and
explained with no change to their code. A cluster model is built for the
registry as it is when :func:`~bayes_defense.models.cluster` is called
(:func:`generation` tells the states apart); adding or removing an attack
later leaves the models already built as they were.

A precursor may be an ordered pattern (:class:`PrecursorPattern`): signal A
shows, then the rest of the precursor within ``within`` seconds. The filter
turns it into an extra stage of the attack's phase chain (benign -> A seen ->
precursor -> execution), and the stage expires when ``within`` passes
without the rest. Two built-in attacks declare one (:data:`PATTERNS`).

Examples
--------
>>> from bayes_defense.models import registry
>>> spec = registry.add_attack(
...     "log_truncation", footing="attacker_inside", attacker_side={"stale": 0.8, "duplicates": 0.3},
...     impacts={"liveness_lost": 0.5}, p_success=0.4, matched="expose_and_evict")
>>> "log_truncation" in registry.tracked_attacks()
True
>>> registry.remove_attack("log_truncation")
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from bayes_defense.errors import InvalidInputError
from bayes_defense.models.catalogue import ATTACKS, COUNTERMEASURES, JOIN_RATE, OUTCOMES, TELEMETRY

__all__ = ["PrecursorPattern", "AttackSpec", "PATTERNS", "FOOTINGS", "add_attack", "remove_attack",
           "tracked_attacks", "attack_spec", "user_attacks", "generation", "reset"]

#: The footing sites an attack's precondition may be (as in :class:`bayes_defense.models.Attack`).
FOOTINGS = ("primary_faulty", "attacker_inside", "backup_faulty", "admission_open", "eclipse_footing")
_OUTCOMES = tuple(name for name, _, _ in OUTCOMES)
_TELEMETRY_SIGNALS = tuple(t.name for t in TELEMETRY) + ("join_rate",)


@dataclass(frozen=True)
class PrecursorPattern:
    """An ordered precursor: ``first`` shows, then the rest of the precursor within ``within`` seconds."""

    first: str
    within: float


#: The built-in attacks whose precursor is an ordered pattern. An eclipse starts by filling the
#: victim's peer table (peer_in_degree) and only then cuts its diversity (Heilman 2015, 3-4); a
#: censoring primary first holds the target's requests (stale) and only then do replicas ask for a
#: view change (Prime; PBFT 4.4: the request timer runs first).
PATTERNS = MappingProxyType({
    "eclipse": PrecursorPattern("peer_in_degree", 120.0),
    "censorship": PrecursorPattern("stale", 60.0),
})


@dataclass(frozen=True)
class AttackSpec:
    """An attack as the model filter reads it; parameter names follow :data:`bayes_defense.models.PARAMETERS`.

    Attributes
    ----------
    name, footing, matched : str
    attacker_side, cluster_side : dict
        ``{signal: probability}`` the precursor raises at the attacker's replica / at every replica.
    impacts : dict
        ``{outcome: probability}`` that success breaks the outcome.
    p_success, collusion_gain : float
    pattern : PrecursorPattern or None
    builtin : bool
    mitigations : dict
        ``{countermeasure: efficacy}``: the share of success each removes.
    p_attempt, p_execute : float
        P(precursor | precondition) and P(execution | precursor) per incident window.
    damage : float
        Loss when it succeeds, in units of one safety violation (what :func:`bayes_defense.plan` weighs).
    """

    name: str
    footing: str
    attacker_side: dict
    cluster_side: dict
    impacts: dict
    p_success: float
    collusion_gain: float
    matched: str
    pattern: PrecursorPattern | None = None
    builtin: bool = True
    mitigations: dict = field(default_factory=dict)
    p_attempt: float = 0.3
    p_execute: float = 0.8
    damage: float = 0.5


def _builtin(name: str) -> AttackSpec:
    attack = ATTACKS[name]
    attacker = {t.name: t.attacker_side[name] for t in TELEMETRY if name in t.attacker_side}
    cluster = {t.name: t.cluster_side[name] for t in TELEMETRY if name in t.cluster_side}
    if name in JOIN_RATE:
        cluster["join_rate"] = JOIN_RATE[name]
    return AttackSpec(name, attack.footing, attacker, cluster, dict(attack.impacts), attack.p_success,
                      attack.collusion_gain, attack.matched, PATTERNS.get(name), True, dict(attack.mitigations),
                      attack.p_attempt, attack.p_execute, attack.damage)


_USER: dict[str, AttackSpec] = {}
# Counts the registry's changes, so caches of what is derived from it know when to rebuild.
_GENERATION = [0]


def _probabilities(what: str, values: Mapping | None, allowed: tuple) -> dict:
    out = {}
    for key, p in dict(values or {}).items():
        if key not in allowed:
            raise InvalidInputError(f"{what}: unknown name {key!r}; expected one of {', '.join(allowed)}")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
            raise InvalidInputError(f"{what}[{key!r}] must be a probability in [0, 1]; got {p!r}")
        out[key] = float(p)
    return out


def add_attack(name: str, *, footing: str, attacker_side: Mapping | None = None,
               cluster_side: Mapping | None = None, impacts: Mapping | None = None, p_success: float = 0.5,
               collusion_gain: float = 0.0, matched: str, pattern: PrecursorPattern | None = None,
               efficacy: float = 0.9, p_attempt: float = 0.3, p_execute: float = 0.8,
               damage: float = 0.5) -> AttackSpec:
    """Add an attack to the model: tracked by the model filter, fitted, planned against and explained.

    Parameters
    ----------
    name : str
        A new name (not one of the catalogue's).
    footing : str
        Its precondition, one of :data:`FOOTINGS` (``primary_faulty``: the
        attacker is the primary; ``attacker_inside``: any replica; ...).
    attacker_side, cluster_side : dict
        ``{signal: probability}``: what its precursor raises at the
        attacker's replica and at every replica, over the catalogue's
        telemetry signals and ``join_rate``.
    impacts : dict
        ``{outcome: probability}`` that its success breaks a cluster outcome.
    p_success, collusion_gain : float
        P(success | execution) and the colluders' extra share, as in the catalogue.
    matched : str
        The countermeasure aimed at it (a key of :data:`bayes_defense.models.COUNTERMEASURES`).
    pattern : PrecursorPattern, optional
        An ordered precursor.
    efficacy : float
        The share of its success that ``matched`` removes.
    p_attempt, p_execute : float
        P(its precursor starts | precondition) and P(execution | precursor)
        per incident window (defaults: the catalogue's most common values).
    damage : float
        Loss when it succeeds, in units of one safety violation (the
        catalogue's range is 0.3 to 1).

    Returns
    -------
    AttackSpec

    Examples
    --------
    >>> spec = add_attack("ghost_votes", footing="backup_faulty", attacker_side={"ic_request": 0.9},
    ...                   matched="expose_and_evict")
    >>> spec.footing, tracked_attacks()[-1]
    ('backup_faulty', 'ghost_votes')
    >>> remove_attack("ghost_votes")
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise InvalidInputError(f"an attack name must be an identifier such as 'log_truncation'; got {name!r}")
    if name in ATTACKS or name in _USER:
        raise InvalidInputError(f"attack {name!r} exists already; choose a new name or remove_attack({name!r}) first")
    if footing not in FOOTINGS:
        raise InvalidInputError(f"footing must be one of {', '.join(FOOTINGS)}; got {footing!r}")
    if matched not in COUNTERMEASURES:
        raise InvalidInputError(f"matched must be a countermeasure ({', '.join(COUNTERMEASURES)}); got {matched!r}")
    attacker = _probabilities("attacker_side", attacker_side, _TELEMETRY_SIGNALS)
    cluster = _probabilities("cluster_side", cluster_side, _TELEMETRY_SIGNALS)
    if not attacker and not cluster:
        raise InvalidInputError(f"attack {name!r} raises no signal: give attacker_side or cluster_side, "
                                f"for example {{'stale': 0.8}}")
    if pattern is not None:
        if not isinstance(pattern, PrecursorPattern) or pattern.first not in {**attacker, **cluster}:
            raise InvalidInputError("pattern must be a PrecursorPattern whose first signal is one the attack raises")
        if not pattern.within > 0.0:
            raise InvalidInputError(f"pattern.within must be seconds > 0; got {pattern.within!r}")
    numbers = _probabilities(name, {"p_success": p_success, "collusion_gain": collusion_gain, "efficacy": efficacy,
                                    "p_attempt": p_attempt, "p_execute": p_execute},
                             ("p_success", "collusion_gain", "efficacy", "p_attempt", "p_execute"))
    if isinstance(damage, bool) or not isinstance(damage, (int, float)) or not 0.0 <= float(damage) < float("inf"):
        raise InvalidInputError(f"damage must be a non-negative number (1 = one safety violation); got {damage!r}")
    spec = AttackSpec(name, footing, attacker, cluster, _probabilities("impacts", impacts, _OUTCOMES),
                      numbers["p_success"], numbers["collusion_gain"], matched, pattern, False,
                      {matched: numbers["efficacy"]}, numbers["p_attempt"], numbers["p_execute"], float(damage))
    _USER[name] = spec
    _GENERATION[0] += 1
    return spec


def remove_attack(name: str) -> None:
    """Remove an attack added by :func:`add_attack` (the catalogue's cannot be removed)."""
    if name not in _USER:
        raise InvalidInputError(f"{name!r} is not an attack added by add_attack; added: {', '.join(_USER) or 'none'}")
    del _USER[name]
    _GENERATION[0] += 1


def reset() -> None:
    """Remove every attack added by :func:`add_attack`: the catalogue's alone remain."""
    if _USER:
        _USER.clear()
        _GENERATION[0] += 1


def user_attacks() -> tuple[AttackSpec, ...]:
    """The attacks added by :func:`add_attack`, in the order they were added."""
    return tuple(_USER.values())


def generation() -> int:
    """A number that changes whenever an attack is added or removed (0 for the catalogue alone, at import)."""
    return _GENERATION[0]


def tracked_attacks() -> tuple[str, ...]:
    """The catalogue's attacks, then those added by :func:`add_attack`, in order."""
    return tuple(ATTACKS) + tuple(_USER)


def attack_spec(name: str) -> AttackSpec:
    """The :class:`AttackSpec` of a tracked attack."""
    if name in ATTACKS:
        return _builtin(name)
    if name in _USER:
        return _USER[name]
    raise InvalidInputError(f"unknown attack {name!r}; tracked: {', '.join(tracked_attacks())}")


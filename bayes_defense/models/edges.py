"""The cluster model's edges, read from the catalogue: which cause raises which signal, outcome or control.

Each edge carries the name of the parameter on it (``telemetry.<signal>.<attack>``,
``<attack>.impact.<outcome>``, ``<attack>.efficacy.<countermeasure>``).
:mod:`bayes_defense.models.parameters` names the model's parameters from
these edges and :mod:`bayes_defense.models.tables` computes with them; both
read this module, so neither imports the other for it.

Examples
--------
>>> from bayes_defense.models.edges import outcome_causes
>>> outcome_causes("throughput_low")[0]
('slow_leader', 'slow_leader.impact.throughput_low')
"""

from __future__ import annotations

from bayes_defense.models.catalogue import ATTACKS, COUNTERMEASURES, JOIN_RATE, TELEMETRY

__all__ = ["ISOLATION", "telemetry_causes", "join_rate_causes", "outcome_causes", "control_key", "mitigations"]

#: The key under which a ``controls`` mapping carries "the attacker's replica is isolated".
#: ``isolate_node`` sets ``isolated``; it mitigates an attack only when it names the attacker's replica.
ISOLATION = "attacker_isolated"

_TELEMETRY = {t.name: t for t in TELEMETRY}


def telemetry_causes(signal: str) -> tuple[tuple, tuple]:
    """``(attacker-side, cluster-side)`` causes of a telemetry signal: ``((attack, parameter), ...)`` each.

    Attacker-side causes show at the attacker's replica only; cluster-side
    ones at every replica.
    """
    t = _TELEMETRY[signal]
    return (tuple((a, f"telemetry.{signal}.{a}") for a in t.attacker_side),
            tuple((a, f"telemetry.{signal}.{a}") for a in t.cluster_side))


def join_rate_causes() -> tuple:
    """``((attack, parameter), ...)`` that raise ``join_rate``."""
    return tuple((a, f"telemetry.join_rate.{a}") for a in JOIN_RATE if a != "baseline")


def outcome_causes(outcome: str) -> tuple:
    """``((attack, parameter), ...)``: the attacks whose success can break ``outcome``."""
    return tuple((a, f"{a}.impact.{outcome}") for a, attack in ATTACKS.items() if outcome in attack.impacts)


def control_key(countermeasure: str) -> str:
    """The control a countermeasure sets, as :func:`mitigations` names it (:data:`ISOLATION` for ``isolate_node``)."""
    site = COUNTERMEASURES[countermeasure].site
    return ISOLATION if site == "isolated" else site


def mitigations(attack: str) -> tuple:
    """``((control key, parameter), ...)``: each countermeasure against ``attack`` as the control it reads.

    The control key is the countermeasure's control site, or :data:`ISOLATION`
    for ``isolate_node`` (which acts only when it isolates the attacker's replica).
    """
    return tuple((control_key(name), f"{attack}.efficacy.{name}") for name in ATTACKS[attack].mitigations)

"""System and attack models: the cluster SCM, the attack catalogue and the countermeasures."""

from bayes_defense.models.catalogue import (
    ATTACKS,
    COUNTERMEASURES,
    OUTCOMES,
    TELEMETRY,
    Attack,
    Countermeasure,
)
from bayes_defense.models.cluster import ClusterModel, cluster
from bayes_defense.models.parameters import PARAMETERS, Parameter
from bayes_defense.models.queries import (
    precondition_check,
    sample_incidents,
    simulate_attack,
    success_probability,
)

__all__ = ["cluster", "ClusterModel", "ATTACKS", "COUNTERMEASURES", "TELEMETRY", "OUTCOMES", "Attack",
           "Countermeasure", "PARAMETERS", "Parameter", "precondition_check", "success_probability",
           "simulate_attack", "sample_incidents", "from_graph", "GraphSCM"]


def __getattr__(name: str):
    # Users' own SCMs load on first use (PEP 562), as the package's public names do.
    if name in ("from_graph", "GraphSCM"):
        from bayes_defense.models import graph

        return getattr(graph, name)
    raise AttributeError(f"module 'bayes_defense.models' has no attribute {name!r}")

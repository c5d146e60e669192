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
           "simulate_attack", "sample_incidents"]

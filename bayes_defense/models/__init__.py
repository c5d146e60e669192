"""System and attack models: the cluster SCM, the attack catalogue, its tables and users' own SCMs.

Names load on first use (PEP 562): ``import bayes_defense.models.catalogue``
(the attack catalogue, plain data) and the tables need no torch, and the
streaming defender reads the catalogue on its per-event path; the Pyro
programs and the queries load torch when first asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "cluster": "bayes_defense.models.cluster",
    "ClusterModel": "bayes_defense.models.cluster",
    "ATTACKS": "bayes_defense.models.catalogue",
    "COUNTERMEASURES": "bayes_defense.models.catalogue",
    "TELEMETRY": "bayes_defense.models.catalogue",
    "OUTCOMES": "bayes_defense.models.catalogue",
    "Attack": "bayes_defense.models.catalogue",
    "Countermeasure": "bayes_defense.models.catalogue",
    "PARAMETERS": "bayes_defense.models.parameters",
    "Parameter": "bayes_defense.models.parameters",
    "precondition_check": "bayes_defense.models.queries",
    "success_probability": "bayes_defense.models.queries",
    "simulate_attack": "bayes_defense.models.queries",
    "sample_incidents": "bayes_defense.models.queries",
    "from_graph": "bayes_defense.models.graph",
    "GraphSCM": "bayes_defense.models.graph",
}

_SUBMODULES = frozenset({"catalogue", "tables", "parameters", "engine", "queries", "graph", "registry"})

__all__ = ["cluster", "ClusterModel", "ATTACKS", "COUNTERMEASURES", "TELEMETRY", "OUTCOMES", "Attack",
           "Countermeasure", "PARAMETERS", "Parameter", "precondition_check", "success_probability",
           "simulate_attack", "sample_incidents", "from_graph", "GraphSCM"]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    try:
        module_name = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'bayes_defense.models' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)

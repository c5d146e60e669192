"""bayes_defense: Bayesian, causal defence of replicated systems against Byzantine attacks.

The public API is re-exported here; see DESIGN.md for the contract.

Names are loaded on first use (PEP 562): the causal core pulls in torch and
Pyro, which take seconds to import, and the simulator, the log readers and the
command line must not pay for them when they do not use them.

Examples
--------
>>> import bayes_defense as bd
>>> bd.backends()[:2]
['auto', 'exact']
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute); attribute None means the module itself.
_LAZY: dict[str, tuple[str, str | None]] = {
    "intervene": ("bayes_defense.causal.queries", "intervene"),
    "counterfactual": ("bayes_defense.causal.queries", "counterfactual"),
    "probability_of_necessity": ("bayes_defense.causal.queries", "probability_of_necessity"),
    "probability_of_sufficiency": ("bayes_defense.causal.queries", "probability_of_sufficiency"),
    "backends": ("bayes_defense.inference", "backends"),
    "Estimate": ("bayes_defense.estimate", "Estimate"),
    "Probability": ("bayes_defense.estimate", "Probability"),
    "BayesDefenseError": ("bayes_defense.errors", "BayesDefenseError"),
    "ConfigError": ("bayes_defense.errors", "ConfigError"),
    "DegenerateWeightsError": ("bayes_defense.errors", "DegenerateWeightsError"),
    "ImpossibleEvidenceError": ("bayes_defense.errors", "ImpossibleEvidenceError"),
    "InvalidInputError": ("bayes_defense.errors", "InvalidInputError"),
    "MalformedEventError": ("bayes_defense.errors", "MalformedEventError"),
    "UnknownSiteError": ("bayes_defense.errors", "UnknownSiteError"),
    "UnsupportedModelError": ("bayes_defense.errors", "UnsupportedModelError"),
    "models": ("bayes_defense.models", None),
    "causal": ("bayes_defense.causal", None),
    "inference": ("bayes_defense.inference", None),
    "plan": ("bayes_defense.planning", "plan"),
    "explain": ("bayes_defense.explain", "explain"),
    "sim": ("bayes_defense.sim", None),
    "stream": ("bayes_defense.stream", None),
    "StreamingDefender": ("bayes_defense.stream.defender", "StreamingDefender"),
    "Belief": ("bayes_defense.stream.defender", "Belief"),
    "Alert": ("bayes_defense.stream.defender", "Alert"),
    "read_events": ("bayes_defense.stream.io", "read_events"),
    "fit": ("bayes_defense.fitting", "fit"),
    "Posterior": ("bayes_defense.fitting.defender", "Posterior"),
    "load_posterior": ("bayes_defense.fitting", "load_posterior"),
    "merge_posteriors": ("bayes_defense.fitting.merge", "merge_posteriors"),
    "ClusterPosterior": ("bayes_defense.fitting.cluster", "ClusterPosterior"),
    "fitting": ("bayes_defense.fitting", None),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'bayes_defense' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


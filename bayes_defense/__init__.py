"""bayes_defense: Bayesian, causal defence of replicated systems against Byzantine attacks.

The public API is re-exported here; see DESIGN.md for the contract.
"""

from bayes_defense.causal.queries import (
    counterfactual,
    intervene,
    probability_of_necessity,
    probability_of_sufficiency,
)
from bayes_defense.errors import (
    BayesDefenseError,
    ConfigError,
    DegenerateWeightsError,
    ImpossibleEvidenceError,
    InvalidInputError,
    MalformedEventError,
    UnknownSiteError,
    UnsupportedModelError,
)
from bayes_defense.estimate import Estimate, Probability
from bayes_defense.inference import backends

__version__ = "0.1.0"

__all__ = [
    "intervene",
    "counterfactual",
    "probability_of_necessity",
    "probability_of_sufficiency",
    "backends",
    "Estimate",
    "Probability",
    "BayesDefenseError",
    "ConfigError",
    "DegenerateWeightsError",
    "ImpossibleEvidenceError",
    "InvalidInputError",
    "MalformedEventError",
    "UnknownSiteError",
    "UnsupportedModelError",
]

# --- models, planning and explanations (issue 3) ---
from bayes_defense import models  # noqa: E402
from bayes_defense.explain import explain  # noqa: E402
from bayes_defense.planning import plan  # noqa: E402

__all__ += ["models", "plan", "explain"]
# --- end models, planning and explanations ---

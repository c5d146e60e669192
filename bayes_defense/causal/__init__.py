"""Causal core: canonical noise, interventions, counterfactuals, probabilities of causation."""

from bayes_defense.causal.noise import World, abduct_noise, push_noise, sample_noise
from bayes_defense.causal.queries import (
    counterfactual,
    intervene,
    probability_of_necessity,
    probability_of_sufficiency,
)
from bayes_defense.causal.structure import ModelInfo, SiteInfo, model_info

__all__ = [
    "World",
    "abduct_noise",
    "push_noise",
    "sample_noise",
    "counterfactual",
    "intervene",
    "probability_of_necessity",
    "probability_of_sufficiency",
    "ModelInfo",
    "SiteInfo",
    "model_info",
]

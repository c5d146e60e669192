"""The No-U-Turn sampler (Pyro's NUTS) for the posterior of continuous latents.

Interventional queries sample the intervened model given the evidence;
counterfactual queries sample the factual posterior, abduct the noise by
inversion, and replay it under the intervention. The interval uses the
autocorrelation-corrected effective sample size of the query. Options:
``warmup_steps`` (default ``min(num_samples, 500)``), ``max_tree_depth`` (8).
"""

from __future__ import annotations

import pyro
import torch
from pyro.infer import MCMC, NUTS
from pyro.ops.stats import effective_sample_size

from bayes_defense.inference.base import Problem, register_backend
from bayes_defense.inference.importance import LatentPosteriorBackend
from bayes_defense.inference.svi import clamped_model

__all__ = ["NUTSBackend"]


def _ess(result: torch.Tensor) -> float:
    value = effective_sample_size(result.detach().to(torch.float64)[None, :], chain_dim=0, sample_dim=1)
    value = float(value)
    return value if value == value else float(result.numel())


@register_backend
class NUTSBackend(LatentPosteriorBackend):
    """Hamiltonian Monte Carlo with NUTS; one chain, Pyro's adaptation."""

    name = "nuts"

    def draw(self, problem: Problem, latents: list[str]) -> tuple[dict, dict]:
        options = problem.options
        kernel = NUTS(clamped_model(problem), max_tree_depth=int(options.get("max_tree_depth", 8)),
                      jit_compile=False)
        mcmc = MCMC(kernel, num_samples=problem.num_samples,
                    warmup_steps=int(options.get("warmup_steps", min(problem.num_samples, 500))),
                    num_chains=1, disable_progbar=not options.get("progress", False))
        with pyro.validation_enabled(False):
            mcmc.run()
        samples = mcmc.get_samples()
        values = {name: samples[name].detach() for name in latents}
        return values, {"ess_fn": _ess, "divergences": len(mcmc.diagnostics()["divergences"]["chain 0"])}

"""Stochastic variational inference, used as a learned importance proposal.

An ``AutoMultivariateNormal`` guide is fitted to the posterior of the latent
sites given the evidence (in the intervened model for interventional
queries, in the factual model for counterfactual abduction). Draws from the
guide are then reweighted by ``p / q``, so the answer is consistent even where
the Gaussian guide is not exact, and the reported ESS says how good the guide
was. Options: ``num_steps`` (default 500), ``learning_rate`` (0.05).
"""

from __future__ import annotations

import pyro
import torch
from pyro import distributions as dist
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal
from pyro.poutine.messenger import Messenger

from bayes_defense.inference.base import Problem, register_backend
from bayes_defense.inference.importance import LatentPosteriorBackend

__all__ = ["SVIBackend", "Clamp"]


class Clamp(Messenger):
    """Fix intervened sites (as point masses, adding no likelihood) and observe evidence.

    The result is an ordinary Pyro model whose only free sites are the
    latents, the form Pyro's SVI and MCMC expect.
    """

    def __init__(self, do=None, evidence=None):
        super().__init__()
        self.do = dict(do or {})
        self.evidence = dict(evidence or {})

    def _pyro_sample(self, msg):
        name = msg["name"]
        if name in self.do:
            fn = msg["fn"]
            value = torch.as_tensor(self.do[name], dtype=fn.sample().dtype).expand(fn.batch_shape + fn.event_shape)
            msg["fn"] = dist.Delta(value, event_dim=len(fn.event_shape))
            msg["value"] = value
            msg["is_observed"] = True
        elif name in self.evidence:
            msg["value"] = torch.as_tensor(self.evidence[name])
            msg["is_observed"] = True


def clamped_model(problem: Problem):
    """The model with interventions (interventional queries only) and evidence clamped."""
    do = {} if problem.counterfactual else problem.do

    def conditioned():
        with Clamp(do=do, evidence=problem.evidence):
            problem.model()

    return conditioned


@register_backend
class SVIBackend(LatentPosteriorBackend):
    """Variational posterior (multivariate normal guide) reweighted by importance."""

    name = "svi"

    def draw(self, problem: Problem, latents: list[str]) -> tuple[dict, dict]:
        options = problem.options
        conditioned = clamped_model(problem)
        with pyro.get_param_store().scope():
            guide = AutoMultivariateNormal(conditioned, init_scale=0.1)
            svi = SVI(conditioned, guide, pyro.optim.Adam({"lr": options.get("learning_rate", 0.05)}), Trace_ELBO())
            for _ in range(int(options.get("num_steps", 500))):
                svi.step()
            n = problem.num_samples
            with torch.no_grad(), pyro.plate("_bd_particles", n, dim=problem.particle_dim):
                guide_trace = poutine.trace(guide).get_trace()
        guide_trace.compute_log_prob()
        log_q = torch.zeros(n, dtype=torch.float64)
        for node in guide_trace.nodes.values():
            if node["type"] == "sample" and "log_prob" in node:
                lp = node["log_prob"]
                lp = lp.reshape(n, -1).sum(-1) if lp.numel() % n == 0 and lp.numel() >= n else lp.sum().expand(n)
                log_q = log_q + lp.to(torch.float64)
        values = {}
        for name in latents:
            value = guide_trace.nodes[name]["value"].detach()
            values[name] = value.reshape((n,) + tuple(problem.info.sites[name].shape))
        return values, {"log_q": log_q.detach()}

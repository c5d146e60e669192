"""Reference answers from ChiRho, the peer used to cross-check and benchmark the causal core.

ChiRho (an optional dependency, in the ``dev`` extra) shares exogenous noise
between worlds only where a model makes it explicit, so a model handed to
these functions must spell its noise out: latent sites downstream of an
intervention as a noise site plus a ``Delta`` mechanism, observed continuous
sites as ``TransformedDistribution``s (ChiRho abducts their noise by
inverting the transform), discrete sites as ``u ~ Uniform(0, 1)`` and
``x = F^-1(u)``, the canonical coupling of :mod:`bayes_defense.causal.noise`.

Both functions run the model once inside a plate of particles (likelihood
weighting, ChiRho's vectorised form) and weight each particle by the log
density of the observed sites. For counterfactuals only the factual world's
densities count: in chirho 0.3.0 an observed ``TransformedDistribution`` with
an intervened parent has its abducted noise observed once per world, and
summing the whole trace would square that likelihood term.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import torch
from pyro import poutine

from bayes_defense.estimate import Estimate, weighted_estimate

__all__ = ["chirho_counterfactual", "chirho_intervene"]


def _tensors(values: dict) -> dict:
    return {name: torch.as_tensor(value, dtype=torch.get_default_dtype()) for name, value in values.items()}


def _answer(result: torch.Tensor, log_weight: torch.Tensor, level: float) -> Estimate:
    return weighted_estimate(result, log_weight, is_probability=result.dtype == torch.bool, level=level,
                             backend="chirho")


def chirho_counterfactual(model: Callable, evidence: dict, actions: dict, query: Callable, *,
                          num_particles: int = 10_000, seed: int = 0, level: float = 0.9) -> Estimate:
    """ChiRho's twin-world counterfactual estimate of ``query``, by likelihood weighting.

    Parameters
    ----------
    model : callable
        A Pyro model with explicit exogenous noise (see the module docstring)
        returning ``{site: value}``.
    evidence : dict
        ``{site: value}`` observed in the factual world.
    actions : dict
        ``{site: value}`` interventions defining the counterfactual world.
    query : callable
        Maps ``{site: tensor}`` of the counterfactual world (one value per
        particle) to one value per particle; a boolean result is a probability.
    num_particles, seed, level
        Plate size, torch seed (the global generator is restored afterwards)
        and interval level.

    Returns
    -------
    Estimate

    Examples
    --------
    >>> import pyro, pyro.distributions as dist
    >>> from bayes_defense.causal.chirho_interop import chirho_counterfactual
    >>> def model():  # X -> Y with explicit noise; Y = X + U
    ...     x = pyro.sample("X", dist.Normal(0.0, 1.0))
    ...     u = pyro.sample("U", dist.Normal(0.0, 1.0))
    ...     return {"X": x, "Y": pyro.sample("Y", dist.Delta(x + u))}
    >>> est = chirho_counterfactual(model, {}, {"X": 1.0}, lambda world: world["Y"], num_particles=20_000)
    >>> abs(est.mean - 1.0) < 0.05
    True
    """
    from chirho.counterfactual.handlers import MultiWorldCounterfactual
    from chirho.indexed.ops import IndexSet, gather
    from chirho.interventional.handlers import do
    from chirho.observational.handlers import condition

    evidence, actions = _tensors(evidence), _tensors(actions)
    factual = IndexSet(**{name: {0} for name in actions})
    counterfactual = IndexSet(**{name: {1} for name in actions})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with MultiWorldCounterfactual(first_available_dim=-2), do(actions=actions), condition(data=evidence):
            with pyro.plate("particles", num_particles, dim=-1), poutine.trace() as tracer:
                values = model()
            trace = tracer.trace
            trace.compute_log_prob()
            log_weight = torch.zeros(num_particles, dtype=torch.float64)
            for node in trace.nodes.values():
                if node["type"] == "sample" and node["is_observed"]:
                    log_prob = gather(node["log_prob"], factual)
                    log_prob = log_prob.reshape(-1, log_prob.shape[-1]).sum(0) if log_prob.dim() else log_prob
                    log_weight = log_weight + log_prob.expand(num_particles).to(torch.float64)
            world = {name: gather(value, counterfactual).reshape(-1).expand(num_particles)
                     for name, value in values.items()}
    return _answer(torch.as_tensor(query(world)), log_weight, level)


def chirho_intervene(model: Callable, actions: dict, evidence: dict, query: Callable, *,
                     num_particles: int = 10_000, seed: int = 0, level: float = 0.9) -> Estimate:
    """ChiRho's interventional estimate of ``query`` given evidence, by likelihood weighting.

    ChiRho's ``do`` handler applies the intervention and ``condition`` the
    evidence; each particle is weighted by the density of the observed sites.
    Parameters are as for :func:`chirho_counterfactual`, with ``query``
    evaluated in the one intervened world.

    Examples
    --------
    >>> import pyro, pyro.distributions as dist
    >>> from bayes_defense.causal.chirho_interop import chirho_intervene
    >>> def model():
    ...     x = pyro.sample("X", dist.Normal(0.0, 1.0))
    ...     return {"X": x, "Y": pyro.sample("Y", dist.Normal(x, 1.0))}
    >>> est = chirho_intervene(model, {"X": 2.0}, {}, lambda world: world["Y"], num_particles=20_000)
    >>> abs(est.mean - 2.0) < 0.05
    True
    """
    from chirho.interventional.handlers import do
    from chirho.observational.handlers import condition

    evidence, actions = _tensors(evidence), _tensors(actions)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with do(actions=actions), condition(data=evidence):
            with pyro.plate("particles", num_particles, dim=-1), poutine.trace() as tracer:
                values = model()
        trace = tracer.trace
        log_weight = torch.zeros(num_particles, dtype=torch.float64)
        for node in trace.nodes.values():
            if node["type"] == "sample" and node["is_observed"]:
                log_prob = node["fn"].log_prob(node["value"])
                log_weight = log_weight + log_prob.reshape(-1).expand(num_particles).to(torch.float64)
        world = {name: value.reshape(-1).expand(num_particles) for name, value in values.items()}
    return _answer(torch.as_tensor(query(world)), log_weight, level)

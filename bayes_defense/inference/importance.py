"""Likelihood weighting, vectorised over particles inside one ``pyro.plate``.

Interventional queries run the mutilated model once in a plate of
``num_samples`` particles: unobserved sites are drawn from their (intervened)
prior, evidence sites are clamped and contribute ``log p(e | parents)`` to each
particle's weight. Counterfactual queries do the same in the factual world,
which abducts the exogenous noise of every site (exactly for observed sites,
from the prior for the rest, see :mod:`bayes_defense.causal.noise`), then replay
that noise under the intervention. Two model runs per query, no Python loop
over particles. On models of scalar finite discrete sites the same weighting
runs on the compiled tables instead of the model
(:mod:`bayes_defense.inference.tabular`; option ``tabular=False`` turns it off).
"""

from __future__ import annotations

import torch

from bayes_defense.causal.noise import base_distribution
from bayes_defense.errors import (
    DegenerateWeightsError,
    ImpossibleEvidenceError,
    UnsupportedModelError,
)
from bayes_defense.estimate import weighted_estimate
from bayes_defense.inference.base import Backend, Problem, register_backend
from bayes_defense.inference.tabular import tabular_sampler

__all__ = ["Importance", "LatentPosteriorBackend", "weighted_answer", "answer_from_latents", "latent_sites"]


def _evidence_in_support(problem: Problem) -> str | None:
    """Name a site whose evidence lies outside its support, if the support is fixed."""
    for name, value in problem.evidence.items():
        site = problem.info.sites[name]
        support = base_distribution(site.fn).support
        if support is None or getattr(support, "is_dependent", False):
            continue
        try:
            inside = bool(support.check(torch.as_tensor(value, dtype=site.example.dtype)).all())
        except (RuntimeError, TypeError):
            continue
        if not inside:
            return name
    return None


def weighted_answer(problem: Problem, values, log_weight: torch.Tensor, backend: str,
                    factual_values=None, ess: float | None = None, view: bool = True, **details):
    """Evaluate the query on weighted particles; apply the factual condition; build the estimate.

    Shared by every sampling backend so that conditions, degenerate weights
    and intervals are handled in one place. ``values`` are a world's site
    values as a model run leaves them (``view=True``), or already shaped
    ``(particles, *site_shape)`` (``view=False``).
    """
    n = log_weight.shape[0]

    def shaped(world):
        return problem.view(world, n) if view else world

    if problem.condition is not None:
        holds = problem.condition.evaluate(shaped(factual_values)).reshape(n)
        log_weight = torch.where(holds.bool(), log_weight, torch.full_like(log_weight, -torch.inf))
    if not bool(torch.isfinite(log_weight).any()):
        outside = _evidence_in_support(problem)
        if outside is not None:
            raise ImpossibleEvidenceError(
                f"evidence {outside}={problem.evidence[outside]!r} lies outside the support of its "
                "distribution; it has probability zero under the model"
            )
        raise DegenerateWeightsError(
            f"all {n} importance weights are zero: no particle reproduced the evidence"
            f"{' and condition' if problem.condition is not None else ''}. The evidence may be "
            "impossible or too rare for prior proposals. Use backend='exact' for discrete models, "
            "backend='analytic' for linear-Gaussian ones, or backend='svi' / 'nuts' for continuous "
            "latents, or raise num_samples"
        )
    result = problem.query.evaluate(shaped(values)).reshape(n)
    return weighted_estimate(
        result, log_weight, is_probability=problem.query.is_probability(result), level=problem.level,
        backend=backend, ess=ess, num_particles=n, **details,
    )


@register_backend
class Importance(Backend):
    """Likelihood weighting with prior proposals; answers any model with canonical noise.

    Option ``tabular`` (default True): on models of scalar finite discrete
    sites, weight particles on the compiled tables instead of running the
    model (same distribution, see :mod:`bayes_defense.inference.tabular`).
    """

    name = "importance"

    def check(self, problem: Problem) -> None:
        # Any model whose sites have canonical noise can be answered; an
        # unsupported distribution raises while the model runs, naming itself.
        return None

    def run(self, problem: Problem):
        if problem.options.get("tabular", True):
            sampler = tabular_sampler(problem)
            particles = sampler.run(problem) if sampler is not None else None
            if particles is not None:
                values, log_weight, factual = particles
                return weighted_answer(problem, values, log_weight, self.name, factual_values=factual, view=False)
        if not problem.counterfactual:
            world = problem.run_world(do=problem.do, evidence=problem.evidence, require_noise=False)
            return weighted_answer(problem, world.values, world.log_weight, self.name,
                                   factual_values=world.values)
        factual = problem.run_world(evidence=problem.evidence)
        counterfactual = problem.run_world(do=problem.do, noise=factual.noise, use_model_observations=False)
        return weighted_answer(problem, counterfactual.values, factual.log_weight, self.name,
                               factual_values=factual.values)


def latent_sites(problem: Problem, backend: str) -> list[str]:
    """Sites a posterior sampler must infer; raise if any is discrete."""
    clamped = set(problem.evidence) | (set() if problem.counterfactual else set(problem.do))
    latents = [
        name for name, site in problem.info.sites.items()
        if name not in clamped and not site.observed and not site.deterministic
    ]
    discrete = [name for name in latents if problem.info.sites[name].discrete]
    if discrete:
        raise UnsupportedModelError(
            f"backend {backend!r} infers continuous latents only; {', '.join(discrete)} "
            f"{'is' if len(discrete) == 1 else 'are'} discrete and unobserved. Use backend='exact' "
            "(all-discrete models) or backend='importance'"
        )
    return latents


def _particle_layout(problem: Problem, name: str, value: torch.Tensor, n: int) -> torch.Tensor:
    """Lay ``(n, *site_shape)`` draws out with the particle dimension where the plate puts it."""
    site = problem.info.sites[name]
    own = tuple(site.shape)
    own_batch = len(own) - site.event_dim
    padding = problem.info.max_plate_nesting - own_batch
    return value.reshape((n,) + (1,) * padding + own)


def answer_from_latents(problem: Problem, latents: dict, backend: str, log_q: torch.Tensor | None = None,
                        ess_fn=None, **details):
    """Answer a query from posterior draws of the latent sites.

    With all sites known, each site's exogenous noise follows exactly from its
    value and its parents' (abduction by inversion), and ``log p`` of the
    joint is the run's log weight. Draws from a proposal ``q`` (SVI) are
    reweighted by ``p / q``; draws from MCMC (``log_q`` None) are equally
    weighted, with ``ess_fn`` giving their autocorrelation-corrected ESS.
    """
    n = next(iter(latents.values())).shape[0] if latents else problem.num_samples
    clamped = {name: _particle_layout(problem, name, value, n) for name, value in latents.items()}
    evidence = {**problem.evidence, **clamped}
    if problem.counterfactual:
        factual = problem.run_world(num_particles=n, evidence=evidence)
        world = problem.run_world(num_particles=n, do=problem.do, noise=factual.noise, use_model_observations=False)
    else:
        factual = world = problem.run_world(num_particles=n, do=problem.do, evidence=evidence)
    if log_q is None:
        log_weight = torch.where(torch.isfinite(factual.log_weight), torch.zeros_like(factual.log_weight),
                                 factual.log_weight)
    else:
        log_weight = factual.log_weight - log_q.to(torch.float64)
    ess = None
    if ess_fn is not None:
        result = problem.query.evaluate(problem.view(world.values, n)).reshape(n)
        ess = ess_fn(result)
    return weighted_answer(problem, world.values, log_weight, backend, factual_values=factual.values, ess=ess,
                           **details)


class LatentPosteriorBackend(Backend):
    """Base of backends that draw the continuous latents from their posterior (SVI, NUTS).

    Subclasses implement ``draw(problem, latents)``, returning ``(values,
    details)``: ``{site: (n, *site_shape) tensor}`` of posterior draws and the
    keyword arguments of :func:`answer_from_latents` (``log_q`` for a
    proposal to reweight, ``ess_fn`` for correlated draws, diagnostics).
    Checking the model and answering from the draws are shared.
    """

    def check(self, problem: Problem) -> None:
        latent_sites(problem, self.name)

    def run(self, problem: Problem):
        latents = latent_sites(problem, self.name)
        if not latents:
            return answer_from_latents(problem, {}, self.name)
        values, details = self.draw(problem, latents)
        return answer_from_latents(problem, values, self.name, **details)

    def draw(self, problem: Problem, latents: list[str]) -> tuple[dict, dict]:  # pragma: no cover - interface
        raise NotImplementedError

"""Closed-form answers for linear-Gaussian SCMs.

A linear-Gaussian SCM has ``V = B V + b + diag(sigma) eps`` with ``eps`` standard
normal and ``B`` strictly lower-triangular in execution order, so
``V = A (b + diag(sigma) eps)`` with ``A = (I - B)^-1``. The coefficients are
read off in one model run: every site is forced, inside a plate, to the zero
vector, to each unit vector and to a random probe; a site's location on the
zero row is its intercept, on unit row ``j`` the intercept plus the weight of
site ``j``, and the probe row checks that the location is affine and the scale
constant (else the model is not linear-Gaussian and the backend declines).

Interventions zero the intervened rows of ``B`` and ``sigma``; evidence
conditions a Gaussian; counterfactuals condition ``eps`` on the factual
evidence (abduction) and push its posterior through the intervened ``A``
(action, prediction). Site-mean queries are exact; a callable query is a
Monte Carlo average over exact posterior draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyro
import torch
from pyro import distributions as dist

from bayes_defense.causal.noise import World, base_distribution
from bayes_defense.causal.structure import float64
from bayes_defense.errors import ImpossibleEvidenceError, UnsupportedModelError
from bayes_defense.estimate import exact_estimate, weighted_estimate
from bayes_defense.inference.base import Backend, Problem, register_backend

__all__ = ["Analytic", "LinearGaussian", "compile_linear_gaussian"]


@dataclass
class LinearGaussian:
    """``V = B V + intercept + diag(scale) eps`` over ``names`` in execution order."""

    names: list
    weights: torch.Tensor
    intercept: torch.Tensor
    scale: torch.Tensor
    solved: dict = field(default_factory=dict, repr=False, compare=False)

    def index(self, names) -> list[int]:
        return [self.names.index(name) for name in names]

    def solve(self, do: dict):
        """Return ``(A, b, sigma)`` of the intervened system: ``V = A (b + sigma * eps)``.

        Solved once per intervention (names and values) and cached; callers
        must not modify the returned tensors.
        """
        key = tuple(sorted((name, float(value)) for name, value in do.items()))
        solved = self.solved.get(key)
        if solved is None:
            solved = self.solved[key] = self._solve(do)
            if len(self.solved) > 64:
                self.solved.pop(next(iter(self.solved)))
        return solved

    def _solve(self, do: dict):
        weights = self.weights.clone()
        intercept = self.intercept.clone()
        scale = self.scale.clone()
        for name, value in do.items():
            i = self.names.index(name)
            weights[i] = 0.0
            intercept[i] = float(value)
            scale[i] = 0.0
        n = len(self.names)
        transfer = torch.linalg.solve_triangular(
            torch.eye(n, dtype=torch.float64) - weights, torch.eye(n, dtype=torch.float64), upper=False
        )
        return transfer, intercept, scale


def compile_linear_gaussian(problem: Problem) -> LinearGaussian:
    """Read the coefficients of a linear-Gaussian model (cached per model), or raise."""
    info = problem.info
    cached = info.cache.get("linear_gaussian")
    if cached is None:
        try:
            cached = _compile(problem)
        except UnsupportedModelError as error:
            cached = error
        info.cache["linear_gaussian"] = cached
    if isinstance(cached, Exception):
        raise cached
    return cached


def _compile(problem: Problem) -> LinearGaussian:
    info = problem.info
    names = info.names
    for site in info.sites.values():
        if not site.scalar or site.distribution != "Normal":
            raise UnsupportedModelError(
                f"backend 'analytic' needs scalar Normal sites with linear means; site {site.name!r} "
                f"is {site.distribution} with shape {tuple(site.shape)}. Use backend='exact' for discrete "
                "models or backend='importance'"
            )
    n = len(names)
    generator = torch.Generator().manual_seed(12345)
    probe = torch.randn(n, generator=generator, dtype=torch.float64)
    rows = torch.cat([torch.zeros(1, n, dtype=torch.float64), torch.eye(n, dtype=torch.float64), probe[None]], 0)
    forced = {name: rows[:, j] for j, name in enumerate(names)}
    world = World(do=forced, particle_dim=-1, num_particles=n + 2)
    with float64(), torch.no_grad(), pyro.validation_enabled(False), world, pyro.plate("_bd_probe", n + 2, dim=-1):
        problem.model()
    weights = torch.zeros(n, n, dtype=torch.float64)
    intercept = torch.zeros(n, dtype=torch.float64)
    scale = torch.zeros(n, dtype=torch.float64)
    for i, name in enumerate(names):
        d = base_distribution(world.distributions[name])
        if not isinstance(d, dist.Normal):
            raise UnsupportedModelError(f"site {name!r} is not Normal; use backend='importance'")
        loc = d.loc.to(torch.float64).expand(n + 2)
        sd = d.scale.to(torch.float64).expand(n + 2)
        intercept[i] = loc[0]
        weights[i] = loc[1 : n + 1] - loc[0]
        predicted = loc[0] + weights[i] @ rows[n + 1].to(torch.float64)
        tolerance = 1e-5 * (1.0 + float(loc.abs().max()))
        if abs(float(predicted - loc[n + 1])) > tolerance or float((sd - sd[0]).abs().max()) > tolerance:
            raise UnsupportedModelError(
                f"site {name!r} has a mean that is not affine in its parents or a scale that depends "
                "on them, so the model is not linear-Gaussian; use backend='importance'"
            )
        if bool((weights[i, i:] != 0).any()):
            raise UnsupportedModelError(f"site {name!r} depends on a later site; use backend='importance'")
        scale[i] = sd[0]
    return LinearGaussian(names=names, weights=weights, intercept=intercept, scale=scale)


def _condition(mean, cov, observed_index, observed_value, what: str):
    """Gaussian conditioning; returns ``(mean, cov)`` given ``x[observed_index] = observed_value``."""
    if not observed_index:
        return mean, cov
    idx = torch.tensor(observed_index)
    cov_oo = cov[idx][:, idx]
    cov_xo = cov[:, idx]
    residual = observed_value - mean[idx]
    solution = torch.linalg.lstsq(cov_oo, torch.cat([residual[:, None], cov_xo.T], 1)).solution
    # Degenerate evidence (a site fixed by an intervention or determined by others)
    # is only possible if it lies in the range of its covariance.
    if float((cov_oo @ solution[:, 0] - residual).abs().max()) > 1e-8 * (1 + float(residual.abs().max())):
        raise ImpossibleEvidenceError(
            f"the evidence on {what} is inconsistent with the model's deterministic relations; "
            "it has probability zero"
        )
    new_mean = mean + cov_xo @ solution[:, 0]
    new_cov = cov - cov_xo @ solution[:, 1:]
    return new_mean, (new_cov + new_cov.T) / 2


@register_backend
class Analytic(Backend):
    """Closed-form Gaussian conditioning for linear-Gaussian SCMs."""

    name = "analytic"

    def check(self, problem: Problem) -> None:
        compile_linear_gaussian(problem)
        if problem.condition is not None:
            raise UnsupportedModelError(
                "backend 'analytic' cannot condition on an event of a continuous model; use backend='importance'"
            )

    def run(self, problem: Problem):
        system = compile_linear_gaussian(problem)
        names = system.names
        n = len(names)
        observed = list(problem.evidence)
        observed_value = torch.tensor([float(problem.evidence[k]) for k in observed], dtype=torch.float64)
        obs_index = system.index(observed)
        if problem.counterfactual:
            transfer, intercept, scale = system.solve({})
            # Abduction: eps ~ N(0, I); factual V = A b + A diag(sigma) eps.
            loading = transfer * scale[None, :]
            joint_mean = torch.cat([torch.zeros(n, dtype=torch.float64), transfer @ intercept])
            top = torch.cat([torch.eye(n, dtype=torch.float64), loading.T], 1)
            bottom = torch.cat([loading, loading @ loading.T], 1)
            joint_cov = torch.cat([top, bottom], 0)
            eps_mean, eps_cov = _condition(joint_mean, joint_cov, [n + i for i in obs_index], observed_value,
                                           ", ".join(observed))
            eps_mean, eps_cov = eps_mean[:n], eps_cov[:n, :n]
            # Action and prediction under the intervened system.
            cf_transfer, cf_intercept, cf_scale = system.solve(problem.do)
            mean = cf_transfer @ (cf_intercept + cf_scale * eps_mean)
            cf_loading = cf_transfer * cf_scale[None, :]
            cov = cf_loading @ eps_cov @ cf_loading.T
        else:
            transfer, intercept, scale = system.solve(problem.do)
            loading = transfer * scale[None, :]
            mean, cov = _condition(transfer @ intercept, loading @ loading.T, obs_index, observed_value,
                                   ", ".join(observed))
        if problem.query.site is not None:
            value = float(mean[names.index(problem.query.site)])
            return exact_estimate(value, is_probability=False, level=problem.level, backend=self.name)
        draws = _gaussian_draws(mean, cov, problem.num_samples)
        values = {name: draws[:, i].to(torch.get_default_dtype()) for i, name in enumerate(names)}
        result = problem.query.evaluate(values).reshape(problem.num_samples)
        return weighted_estimate(result, None, is_probability=problem.query.is_probability(result),
                                 level=problem.level, backend=self.name, num_particles=problem.num_samples)


def _gaussian_draws(mean, cov, num):
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    root = eigenvectors * eigenvalues.clamp(min=0).sqrt()[None, :]
    return mean[None, :] + torch.randn(num, mean.numel(), dtype=torch.float64) @ root.T

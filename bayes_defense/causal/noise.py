"""Canonical exogenous noise for ordinary Pyro sample sites.

Counterfactuals need the exogenous noise of every endogenous variable. Model
authors write plain ``pyro.sample`` statements; this module supplies the noise
by a fixed reparameterisation of each site's distribution:

- location-scale continuous sites (Normal, Laplace, StudentT with fixed df,
  Cauchy, Uniform, Exponential) use ``x = loc + scale * eps`` with ``eps``
  drawn from the standardised family, and transformed distributions (LogNormal,
  Gumbel, ...) apply their transforms to the noise of their base distribution.
  Abduction from an observed ``x`` is exact: ``eps = (x - loc) / scale``.
- discrete sites (Bernoulli, Categorical, Binomial, Poisson, Geometric, ...)
  use ``u ~ Uniform(0, 1)`` and the monotone response ``x = F^-1(u; theta)``,
  the smallest ``k`` with ``F(k) >= u``. Abduction from an observed ``x = k``
  gives ``u | k, theta ~ Uniform(F(k - 1), F(k))``, weighted by
  ``P(x = k | theta)``.

The discrete coupling is the monotonicity assumption under which the
probabilities of necessity and sufficiency are identified (Tian and Pearl,
2000): if ``P(x = 1 | theta)`` grows with a cause, the counterfactual response
to that cause can only grow too, for every ``u``.

The functions here act on one distribution at a time; :class:`World` is the
Pyro Messenger that applies them to every site of a model run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributions as tdist
from pyro import distributions as dist
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample

from bayes_defense.errors import ImpossibleEvidenceError, UnsupportedModelError

__all__ = [
    "World",
    "sample_noise",
    "push_noise",
    "abduct_noise",
    "is_discrete",
    "is_deterministic",
    "SUPPORTED_DISTRIBUTIONS",
    "base_distribution",
    "discrete_table",
    "log_prob",
]

SUPPORTED_DISTRIBUTIONS = (
    "Normal, Laplace, StudentT, Cauchy, Uniform, Exponential, LogNormal and other "
    "TransformedDistributions of these; Bernoulli, Categorical, Binomial, Poisson, Geometric "
    "and other discrete distributions with integer support; Delta (pyro.deterministic)"
)

_LOCATION_SCALE = (tdist.Normal, tdist.Laplace, tdist.Cauchy)


def base_distribution(d):
    """``d`` without the wrappers that do not change its per-element noise model.

    ``Independent``, ``expand`` and masks are removed; what remains decides
    how the site's noise is drawn, pushed and abducted.

    Examples
    --------
    >>> import pyro.distributions as dist
    >>> from bayes_defense.causal.noise import base_distribution
    >>> type(base_distribution(dist.Normal(0.0, 1.0).expand([3]).to_event(1))).__name__
    'Normal'
    """
    while True:
        if isinstance(d, tdist.Independent):
            d = d.base_dist
        elif isinstance(d, dist.ExpandedDistribution):
            d = d.base_dist
        elif isinstance(d, dist.MaskedDistribution):
            d = d.base_dist
        else:
            return d


def is_deterministic(d) -> bool:
    """True for ``Delta`` sites (``pyro.deterministic``), which carry no noise."""
    return isinstance(base_distribution(d), dist.Delta)


def is_discrete(d) -> bool:
    """True when the distribution's support is discrete."""
    return bool(getattr(base_distribution(d).support, "is_discrete", False))


def _unsupported(d, name: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"site {name!r} has distribution {type(base_distribution(d)).__name__}, which has no canonical "
        f"exogenous noise; supported: {SUPPORTED_DISTRIBUTIONS}. Counterfactuals need that noise; "
        "bd.intervene with backend='importance' samples such sites directly"
    )


def log_prob(d, value: torch.Tensor) -> torch.Tensor:
    """``d.log_prob(value)``, but exact at probabilities 0 and 1 for Bernoulli and Categorical.

    torch evaluates these through clamped logits, which turns an impossible
    value into one of probability about 1e-7; exact inference and the
    detection of impossible evidence need the true zero.
    """
    if isinstance(d, tdist.Independent):
        inner = log_prob(d.base_dist, value)
        return inner.reshape(inner.shape[: inner.dim() - d.reinterpreted_batch_ndims] + (-1,)).sum(-1)
    if isinstance(d, tdist.Bernoulli):
        probs = d.probs
        value = value.to(probs.dtype)
        prob = torch.where(value == 1, probs, torch.where(value == 0, 1 - probs, torch.zeros_like(probs)))
        return prob.log()
    if isinstance(d, tdist.Categorical):
        probs = d.probs
        index = value.long()
        valid = (index >= 0) & (index < probs.shape[-1])
        index, probs = torch.broadcast_tensors(index.clamp(0, probs.shape[-1] - 1).unsqueeze(-1), probs)
        prob = probs.gather(-1, index[..., :1]).squeeze(-1)
        return torch.where(valid, prob, torch.zeros_like(prob)).log()
    return d.log_prob(value)


def discrete_table(d):
    """Return ``(support, cdf)`` of a discrete site, support ``(K,)`` and cdf ``(K, *batch)``.

    Finite supports come from ``enumerate_support``; infinite integer supports
    are truncated where the remaining tail mass is far below float precision.

    Examples
    --------
    >>> import torch, pyro.distributions as dist
    >>> from bayes_defense.causal.noise import discrete_table
    >>> support, cdf = discrete_table(dist.Categorical(probs=torch.tensor([0.2, 0.8])))
    >>> support.tolist(), [round(x, 6) for x in cdf.tolist()]
    ([0.0, 1.0], [0.2, 1.0])
    """
    base = base_distribution(d)
    if isinstance(base, tdist.Categorical):
        probs = base.probs
        k = probs.shape[-1]
        support = torch.arange(k, dtype=probs.dtype)
        cdf = probs.cumsum(-1).movedim(-1, 0)
        return support, cdf
    if getattr(base, "has_enumerate_support", False):
        support = base.enumerate_support(expand=False).reshape(-1)
    else:
        mean = base.mean.detach()
        std = base.variance.detach().clamp(min=0).sqrt()
        kmax = int(math.ceil(float((mean + 15.0 * std).max()) + 30.0))
        support = torch.arange(kmax + 1, dtype=mean.dtype)
    shaped = support.reshape((-1,) + (1,) * len(base.batch_shape))
    pmf = log_prob(base, shaped).exp()
    cdf = pmf.cumsum(0)
    return support, cdf


def _align(cdf: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Insert singleton dimensions so a ``(K, *batch)`` table broadcasts against ``other``."""
    extra = other.dim() - (cdf.dim() - 1)
    if extra > 0:
        cdf = cdf.reshape((cdf.shape[0],) + (1,) * extra + tuple(cdf.shape[1:]))
    return cdf


def sample_noise(d, name: str = "site") -> torch.Tensor:
    """Draw the canonical exogenous noise of one site, with the site's full shape."""
    base = base_distribution(d)
    shape = d.batch_shape + d.event_shape
    if is_deterministic(d):
        return torch.zeros(shape)
    if is_discrete(d):
        if isinstance(base, tdist.Categorical):
            shape = d.batch_shape
        return torch.rand(shape)
    return _continuous_base_sample(base, shape, name)


def _continuous_base_sample(base, shape, name):
    if isinstance(base, tdist.Normal):
        return torch.randn(shape)
    if isinstance(base, tdist.Laplace):
        return dist.Laplace(0.0, 1.0).sample(shape)
    if isinstance(base, tdist.Cauchy):
        return dist.Cauchy(0.0, 1.0).sample(shape)
    if isinstance(base, tdist.StudentT):
        return dist.StudentT(torch.broadcast_to(base.df, shape)).sample()
    if isinstance(base, tdist.Uniform):
        return torch.rand(shape)
    if isinstance(base, tdist.Exponential):
        return dist.Exponential(1.0).sample(shape)
    if isinstance(base, tdist.TransformedDistribution):
        return _continuous_base_sample(base_distribution(base.base_dist), shape, name)
    raise _unsupported(base, name)


def push_noise(d, noise: torch.Tensor, name: str = "site") -> torch.Tensor:
    """Map noise to the site's value: ``x = f(noise; theta)``."""
    base = base_distribution(d)
    if is_deterministic(d):
        return base.v
    if isinstance(base, tdist.Bernoulli):
        # Fast path of the general rule below: F(0) = 1 - p, so x = 1 exactly when u > 1 - p.
        return (noise > 1 - base.probs).to(base.probs.dtype)
    if is_discrete(d):
        support, cdf = discrete_table(d)
        cdf = _align(cdf, noise)
        if isinstance(base, tdist.Categorical):
            index = (noise.unsqueeze(0) > cdf[:-1]).sum(0)
        else:
            index = (noise.unsqueeze(0) > cdf).sum(0).clamp(max=support.numel() - 1)
        return support.to(cdf.dtype)[index] if not isinstance(base, tdist.Categorical) else index
    return _continuous_push(base, noise, name)


def _continuous_push(base, noise, name):
    if isinstance(base, (*_LOCATION_SCALE, tdist.StudentT)):
        return base.loc + base.scale * noise
    if isinstance(base, tdist.Uniform):
        return base.low + (base.high - base.low) * noise
    if isinstance(base, tdist.Exponential):
        return noise / base.rate
    if isinstance(base, tdist.TransformedDistribution):
        value = _continuous_push(base_distribution(base.base_dist), noise, name)
        for transform in base.transforms:
            value = transform(value)
        return value
    raise _unsupported(base, name)


def _continuous_invert(base, value, name):
    if isinstance(base, (*_LOCATION_SCALE, tdist.StudentT)):
        return (value - base.loc) / base.scale
    if isinstance(base, tdist.Uniform):
        return (value - base.low) / (base.high - base.low)
    if isinstance(base, tdist.Exponential):
        return value * base.rate
    if isinstance(base, tdist.TransformedDistribution):
        for transform in reversed(base.transforms):
            value = transform.inv(value)
        return _continuous_invert(base_distribution(base.base_dist), value, name)
    raise _unsupported(base, name)


def abduct_noise(d, value: torch.Tensor, name: str = "site") -> tuple[torch.Tensor, torch.Tensor]:
    """Exogenous noise consistent with an observed value, and its log-likelihood.

    Returns ``(noise, log_prob)`` where ``log_prob = log p(value | theta)`` has
    the site's batch shape. Continuous noise is a deterministic function of the
    value; discrete noise is drawn from ``Uniform(F(k - 1), F(k))``.
    """
    base = base_distribution(d)
    log_density = log_prob(d, value)
    if is_deterministic(d):
        return torch.zeros(d.batch_shape + d.event_shape), log_density
    if isinstance(base, tdist.Bernoulli):
        # u | x=0 ~ U(0, 1 - p); u | x=1 ~ U(1 - p, 1).
        threshold = 1 - base.probs
        one = value == 1
        low = torch.where(one, threshold, torch.zeros_like(threshold))
        high = torch.where(one, torch.ones_like(threshold), threshold)
        return low + (high - low) * torch.rand(low.shape, dtype=low.dtype), log_density
    if is_discrete(d):
        support, cdf = discrete_table(d)
        if isinstance(base, tdist.Categorical):
            index = value.long()
        else:
            # Values are compared to the support grid; an off-support value
            # has log_prob -inf already and any noise will do for it.
            index = (value.unsqueeze(0) > support.reshape((-1,) + (1,) * value.dim())).sum(0)
        index = index.clamp(0, support.numel() - 1)
        cdf = _align(cdf, index)
        index = torch.broadcast_tensors(index, cdf[0])[0]
        cdf_b = cdf.expand((cdf.shape[0],) + index.shape)
        high = cdf_b.gather(0, index.unsqueeze(0)).squeeze(0)
        low = torch.where(
            index > 0,
            cdf_b.gather(0, (index - 1).clamp(min=0).unsqueeze(0)).squeeze(0),
            torch.zeros_like(high),
        )
        u = low + (high - low) * torch.rand(high.shape, dtype=high.dtype)
        return u, log_density
    return _continuous_invert(base, value, name), log_density


@dataclass
class WorldRecord:
    """What one run of a model under :class:`World` produced."""

    values: dict
    noise: dict
    log_weight: torch.Tensor
    order: list


class World(Messenger):
    """Run a model in one world: interventions, evidence and canonical noise.

    Every ``pyro.sample`` site is handled in one place, which keeps the
    per-site overhead to a single Messenger:

    - a site named in ``do`` takes the intervened value (graph surgery: its
      own distribution is ignored, as under ``pyro.poutine.do``);
    - a site named in ``evidence``, or observed by the model itself with
      ``obs=``, takes that value; its exogenous noise is abducted and
      ``log p(value | parents)`` is added to the run's log weight;
    - any other site takes ``x = f(noise; theta)`` with noise from ``noise``
      (replay of an abducted world) or freshly drawn from the canonical base.

    Parameters
    ----------
    do : dict, optional
        ``{site: value}`` interventions.
    evidence : dict, optional
        ``{site: value}`` observations.
    noise : dict, optional
        ``{site: tensor}`` exogenous noise to replay.
    particle_dim : int, optional
        Batch dimension of the particle plate; log weights are summed over
        every other batch dimension.
    num_particles : int
        Size of the particle plate (1 when there is none).
    use_model_observations : bool
        Treat the model's own ``obs=`` values as evidence (True in the
        factual world); the prediction world sets False so that those sites
        respond to the intervention.
    require_noise : bool
        Raise on a site without canonical noise (True); with False such a
        site is sampled directly, which is enough for interventional queries.

    Examples
    --------
    >>> import pyro, pyro.distributions as dist, torch
    >>> from bayes_defense.causal import World
    >>> def model():
    ...     x = pyro.sample("x", dist.Normal(0.0, 1.0))
    ...     return pyro.sample("y", dist.Normal(2.0 * x, 1.0))
    >>> with World(evidence={"x": torch.tensor(1.0), "y": torch.tensor(3.0)}) as world:
    ...     _ = model()
    >>> float(world.noise["y"])  # eps_y = y - 2 x
    1.0
    """

    def __init__(self, do=None, evidence=None, noise=None, particle_dim=None, num_particles=1,
                 use_model_observations=True, require_noise=True):
        super().__init__()
        self.require_noise = require_noise
        self.use_model_observations = use_model_observations
        self.plates: dict = {}
        self.do = dict(do or {})
        self.evidence = dict(evidence or {})
        self.replay = dict(noise or {})
        self.particle_dim = particle_dim
        self.num_particles = num_particles
        self.values: dict = {}
        self.noise: dict = {}
        self.order: list = []
        self.log_weight = torch.zeros(num_particles, dtype=torch.float64)
        self.distributions: dict = {}

    def _per_particle(self, log_prob: torch.Tensor) -> torch.Tensor:
        """Sum a log-probability over every batch dimension but the particle one."""
        if self.particle_dim is None or log_prob.dim() < -self.particle_dim:
            return log_prob.sum().to(torch.float64).expand(self.num_particles)
        log_prob = log_prob.reshape(log_prob.shape[: log_prob.dim() + self.particle_dim + 1] + (-1,)).sum(-1)
        return log_prob.reshape(-1).to(torch.float64).expand(self.num_particles)

    def _pyro_sample(self, msg):
        name = msg["name"]
        d = msg["fn"]
        if isinstance(d, _Subsample):
            return  # a plate's index draw, not a model variable
        self.order.append(name)
        self.distributions[name] = d
        base = base_distribution(d)
        if isinstance(base, dist.Delta):
            # pyro.deterministic passes its value as obs; the Delta's own v may have
            # been expanded by plates to batch + event shape.
            self._deterministic(msg, name, msg["value"] if msg["value"] is not None else base_distribution(d).v)
            return
        shape = d.batch_shape + d.event_shape
        if name in self.do:
            value = torch.as_tensor(self.do[name], dtype=_dtype_of(d)).expand(shape)
            msg["value"] = value
            msg["is_observed"] = True
            self.values[name] = value
            return
        observed = self.evidence.get(name)
        if observed is None and msg["is_observed"] and self.use_model_observations:
            observed = msg["value"]
        if observed is not None:
            value = torch.as_tensor(observed, dtype=_dtype_of(d))
            try:
                value = value.expand(shape) if value.shape != shape else value
            except RuntimeError as error:
                raise ImpossibleEvidenceError(
                    f"evidence for site {name!r} has shape {tuple(value.shape)}, which does not "
                    f"broadcast to the site's shape {tuple(shape)}; pass one value per element"
                ) from error
            try:
                noise, log_density = abduct_noise(d, value, name)
            except UnsupportedModelError:
                if self.require_noise:
                    raise
                noise, log_density = None, d.log_prob(value)
            self.log_weight = self.log_weight + self._per_particle(log_density)
            msg["value"] = value
            msg["is_observed"] = True
        else:
            noise = self.replay.get(name)
            try:
                noise, value = _fast_latent(base, noise, shape)
                if value is None:
                    if noise is None:
                        noise = sample_noise(d, name)
                    value = push_noise(d, noise, name)
            except UnsupportedModelError:
                if self.require_noise:
                    raise
                # Interventional queries need values, not noise: sample the site directly.
                noise, value = None, d.sample()
            if value.shape != shape:
                value = value.expand(shape)
            msg["value"] = value
        self.noise[name] = noise
        self.values[name] = value

    def _deterministic(self, msg, name, value):
        # pyro.deterministic defaults event_dim to the value's rank, so inside a
        # particle plate its declared shape is not the value's; use the value's.
        if name in self.do:
            value = torch.as_tensor(self.do[name], dtype=value.dtype).expand(value.shape)
        else:
            observed = self.evidence.get(name)
            if observed is not None:
                observed = torch.as_tensor(observed, dtype=value.dtype)
                match = torch.broadcast_tensors(value == observed, value)[0]
                self.log_weight = self.log_weight + self._per_particle(
                    torch.where(match, 0.0, -torch.inf).to(torch.float64))
                value = observed.expand(value.shape) if observed.dim() <= value.dim() else observed
        msg["value"] = value
        msg["is_observed"] = True
        self.noise[name] = torch.zeros(())
        self.values[name] = value

    def record(self) -> WorldRecord:
        """Return the values, noise and log weight this run produced."""
        return WorldRecord(values=self.values, noise=self.noise, log_weight=self.log_weight, order=self.order)


def _fast_latent(base, noise, shape):
    """``(noise, value)`` for the commonest families without the general dispatch.

    Normal and Bernoulli sites make up most models; the general path
    (:func:`sample_noise`, :func:`push_noise`) re-inspects the distribution
    several times per site, which costs more than the arithmetic at 10^4
    particles. Returns ``(noise, None)`` for every other family.
    """
    kind = type(base)
    if kind is dist.Normal:
        if noise is None:
            noise = torch.randn(shape, dtype=base.loc.dtype)
        # One fused kernel instead of a product and a sum.
        return noise, torch.addcmul(base.loc, base.scale, noise)
    if kind is dist.Bernoulli:
        probs = base.probs
        if noise is None:
            noise = torch.rand(shape, dtype=probs.dtype)
        return noise, (noise > 1 - probs).to(probs.dtype)
    return noise, None


def _dtype_of(d):
    base = base_distribution(d)
    if isinstance(base, tdist.Categorical):
        return torch.long
    try:
        return base.mean.dtype
    except (NotImplementedError, AttributeError):
        return torch.get_default_dtype()

"""Bounded estimates with credible or Monte Carlo intervals.

Every number a query returns is an :class:`Estimate`: a mean with a lower and
an upper bound at a stated level, the effective sample size behind it, and the
backend that produced it. A :class:`Probability` is an estimate whose value
and bounds are clipped to [0, 1].

Interval conventions
--------------------
- exact or closed-form answers: ``lower == mean == upper`` and ``ess = inf``;
- weighted Monte Carlo (self-normalised importance sampling, MCMC): a normal
  interval ``mean +- z * se`` with the delta-method standard error of the
  self-normalised estimator; for probabilities the Wilson score interval with
  ``n = ess`` instead, which stays inside [0, 1] and is not degenerate at 0 or 1;
- estimates built from an ensemble of parameter draws (a fitted posterior)
  carry the spread across draws as well: :func:`combine_draws`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

import torch

__all__ = ["Estimate", "Probability", "weighted_estimate", "exact_estimate", "combine_draws"]


def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def _check_level(level: float) -> float:
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1 (for example 0.9); got {level!r}")
    return level


@dataclass(frozen=True)
class Estimate:
    """A scalar estimate with an interval.

    Attributes
    ----------
    mean : float
        The point estimate.
    lower, upper : float
        Bounds of the interval at ``level``; ``lower <= mean <= upper``.
    level : float
        Coverage of the interval, for example 0.9.
    ess : float
        Effective sample size behind the estimate (``inf`` for exact answers).
    backend : str
        Name of the backend that produced it.
    details : dict
        Backend-specific extras (number of particles, diagnostics); not part
        of equality.

    Examples
    --------
    >>> from bayes_defense import Estimate
    >>> e = Estimate(mean=2.0, lower=1.5, upper=2.5, level=0.9, ess=100.0, backend="importance")
    >>> float(e)
    2.0
    >>> e.width
    1.0
    """

    mean: float
    lower: float
    upper: float
    level: float = 0.9
    ess: float = math.inf
    backend: str = ""
    details: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("mean", "lower", "upper"):
            value = float(getattr(self, name))
            if math.isnan(value):
                raise ValueError(f"Estimate.{name} is NaN; the backend {self.backend!r} produced no answer")
            object.__setattr__(self, name, value)
        if not self.lower <= self.mean <= self.upper:
            # Rounding in interval arithmetic can put a bound a hair past the mean.
            object.__setattr__(self, "lower", min(self.lower, self.mean))
            object.__setattr__(self, "upper", max(self.upper, self.mean))

    def __float__(self) -> float:
        return self.mean

    @property
    def width(self) -> float:
        """Length of the interval, ``upper - lower``."""
        return self.upper - self.lower

    @property
    def is_exact(self) -> bool:
        """True when the interval has zero width (an exact or closed-form answer)."""
        return self.lower == self.upper

    def as_dict(self) -> dict:
        """Return the estimate as a JSON-ready dictionary."""
        return {
            "mean": self.mean,
            "lower": self.lower,
            "upper": self.upper,
            "level": self.level,
            "ess": None if math.isinf(self.ess) else self.ess,
            "backend": self.backend,
        }

    def __format__(self, spec: str) -> str:
        spec = spec or ".4g"
        return f"{self.mean:{spec}} [{self.lower:{spec}}, {self.upper:{spec}}]"

    def __str__(self) -> str:
        return format(self)


@dataclass(frozen=True)
class Probability(Estimate):
    """An :class:`Estimate` of a probability: mean and bounds lie in [0, 1].

    Examples
    --------
    >>> from bayes_defense import Probability
    >>> p = Probability(mean=1.0000001, lower=0.98, upper=1.02)
    >>> (p.mean, p.upper)
    (1.0, 1.0)
    """

    def __post_init__(self) -> None:
        for name in ("mean", "lower", "upper"):
            value = float(getattr(self, name))
            if math.isnan(value):
                raise ValueError(f"Probability.{name} is NaN; the backend {self.backend!r} produced no answer")
            object.__setattr__(self, name, min(1.0, max(0.0, value)))
        super().__post_init__()


def exact_estimate(value: float, *, is_probability: bool, level: float, backend: str, **details) -> Estimate:
    """Wrap an exact answer: zero-width interval, infinite effective sample size."""
    cls = Probability if is_probability else Estimate
    value = float(value)
    return cls(mean=value, lower=value, upper=value, level=_check_level(level), ess=math.inf,
               backend=backend, details=details)


def weighted_estimate(
    values: torch.Tensor,
    log_weights: torch.Tensor | None,
    *,
    is_probability: bool,
    level: float,
    backend: str,
    ess: float | None = None,
    **details,
) -> Estimate:
    """Self-normalised weighted mean of ``values`` with its Monte Carlo interval.

    Parameters
    ----------
    values : torch.Tensor
        One value per particle, shape ``(n,)``.
    log_weights : torch.Tensor or None
        Unnormalised log weights, shape ``(n,)``; None for equal weights.
    is_probability : bool
        Whether the values are indicators (the estimate is a probability).
    level : float
        Interval coverage.
    backend : str
        Backend name recorded in the estimate.
    ess : float, optional
        Effective sample size to use instead of Kish's ``(sum w)^2 / sum w^2``
        (MCMC passes its autocorrelation-corrected ESS here).

    Returns
    -------
    Estimate or Probability

    Examples
    --------
    >>> import torch
    >>> from bayes_defense.estimate import weighted_estimate
    >>> est = weighted_estimate(torch.tensor([0.0, 1.0, 1.0, 0.0]), None, is_probability=True,
    ...                         level=0.9, backend="demo")
    >>> est.mean, est.ess
    (0.5, 4.0)
    """
    level = _check_level(level)
    values = values.detach().to(torch.float64).reshape(-1)
    if log_weights is None:
        weights = torch.full_like(values, 1.0 / values.numel())
    else:
        log_weights = log_weights.detach().to(torch.float64).reshape(-1)
        weights = torch.softmax(log_weights, dim=0)
    finite = torch.isfinite(values)
    if not bool(finite[weights > 0].all()):
        raise ValueError(
            f"the query returned non-finite values on {int((~finite).sum())} particles with positive "
            "weight; a query must map every world to a finite number"
        )
    values = torch.where(finite, values, torch.zeros_like(values))
    mean = float((weights * values).sum())
    kish = float(1.0 / (weights**2).sum())
    n_eff = kish if ess is None else float(ess)
    z = _z(level)
    if is_probability:
        mean = min(1.0, max(0.0, mean))
        n = max(n_eff, 1.0)
        denominator = 1.0 + z * z / n
        centre = (mean + z * z / (2 * n)) / denominator
        half = z * math.sqrt(max(mean * (1 - mean) / n + z * z / (4 * n * n), 0.0)) / denominator
        lower, upper = centre - half, centre + half
        return Probability(mean=mean, lower=lower, upper=upper, level=level, ess=n_eff,
                           backend=backend, details=details)
    # Delta-method variance of the self-normalised estimator; with equal
    # weights it reduces to the sample variance over n.
    variance = float((weights**2 * (values - mean) ** 2).sum())
    if ess is not None:
        # MCMC: autocorrelation enters through the ESS, not through weights.
        spread = float((weights * (values - mean) ** 2).sum())
        variance = spread / max(n_eff, 1.0)
    half = z * math.sqrt(max(variance, 0.0))
    return Estimate(mean=mean, lower=mean - half, upper=mean + half, level=level, ess=n_eff,
                    backend=backend, details=details)


def combine_draws(estimates: list[Estimate], *, level: float | None = None) -> Estimate:
    """Pool estimates made under separate parameter draws into one.

    The mean is the average over draws; the interval takes the quantiles of
    the per-draw means (parameter uncertainty) widened by the average Monte
    Carlo half-width, so that it carries both sources of uncertainty.

    Examples
    --------
    >>> from bayes_defense.estimate import Probability, combine_draws
    >>> draws = [Probability(mean=m, lower=m, upper=m) for m in (0.2, 0.3, 0.4)]
    >>> round(combine_draws(draws).mean, 6)
    0.3
    """
    if not estimates:
        raise ValueError("combine_draws needs at least one estimate; got an empty list")
    level = _check_level(level if level is not None else estimates[0].level)
    means = torch.tensor([e.mean for e in estimates], dtype=torch.float64)
    q_low, q_high = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    mc_half = sum((e.upper - e.lower) / 2 for e in estimates) / len(estimates)
    first = estimates[0]
    cls = Probability if isinstance(first, Probability) else Estimate
    return cls(
        mean=float(means.mean()),
        lower=float(q_low) - mc_half,
        upper=float(q_high) + mc_half,
        level=level,
        ess=sum(e.ess for e in estimates),
        backend=first.backend,
        details={"draws": len(estimates)},
    )

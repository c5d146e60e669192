"""Federated fitting: merge posteriors fitted at several sites, without their data, into one.

Each site fits the same model with the same prior ``p(theta)`` to its own
logs ``D_k`` and shares only its posterior draws. Because the sites' data are
independent given the parameters,

    p(theta | D_1, ..., D_K)  proportional to  p(theta)^(1 - K) * prod_k p(theta | D_k),

so the all-data posterior is the product of the site posteriors with the
prior divided out ``K - 1`` times. :func:`merge_posteriors` evaluates this
product on parametric densities fitted to each site's draws:

- ``method="moments"`` (default): every parameter entry on its own (a
  mean-field product: correlations between parameters are dropped), in the
  family its support calls for, each moment-matched to the draws: Beta for
  entries inside (0, 1), Dirichlet for a last axis that sums to one, Gamma
  for positive entries, Normal otherwise. These families are closed under
  products, so the merge is a sum of natural parameters; where a site's
  posterior is in that family (conjugate models: Beta-Bernoulli,
  Gamma-Poisson, Normal-Normal with known variance) the merge is exact up to
  the Monte Carlo error of the moments.
- ``method="gaussian"``: one multivariate Normal over all entries in the
  unconstrained space (logit of (0, 1) entries, log of positive ones, log
  ratios of a simplex), moment-matched with full covariance, so
  correlations between parameters are kept (consensus by precision
  weighting). The prior is then taken in that space too.

- ``method="exact"``, chosen by default when every posterior carries its
  sufficient statistics (the model filter's signal model,
  :class:`~bayes_defense.fitting.signal_model.SignalPosterior`): the sites'
  counts are added and the posterior drawn from the sum, which is the fit
  of all the logs at once, exactly (the sites must share the prior strength
  and draw settings; the first site's are used).

The prior: ``prior=None`` means a prior density that is constant on each
entry's support (Beta(1, 1), an improper flat Gamma and Normal; for
``"gaussian"``, flat in the unconstrained space), so nothing is divided out.
With an informative prior pass draws from it (``prior=`` a mapping or an
object with ``.draws``), fitted in the same family. A product that is not a
proper density (a site posterior wider than the prior it must divide out)
is refused.

Each site's fit can run as a Dask task: :func:`fit_sites` submits
``bd.fit(model, data, **options)`` per site to a ``distributed.Client``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bayes_defense.errors import InvalidInputError

__all__ = ["merge_posteriors", "MergedPosterior", "fit_sites", "FAMILIES"]

#: Families of the ``"moments"`` merge, chosen per parameter from its draws' support.
FAMILIES = ("constant", "beta", "dirichlet", "gamma", "normal")

_METHODS = ("moments", "gaussian", "exact")


def _draws_of(posterior: Any, what: str) -> dict[str, np.ndarray]:
    draws = getattr(posterior, "draws", posterior)
    if not isinstance(draws, Mapping) or not draws:
        raise InvalidInputError(f"{what} must be a fitted posterior (an object with .draws, as bd.fit returns) or a "
                                f"mapping {{parameter: draws (chain, draw, *shape)}}; got {type(posterior).__name__}")
    out = {}
    for name, values in draws.items():
        values = np.asarray(values, dtype=float)
        if values.ndim < 2:
            raise InvalidInputError(f"{what}: draws of {name!r} have shape {values.shape}; expected (chain, draw, "
                                    "*shape)")
        if not np.all(np.isfinite(values)):
            raise InvalidInputError(f"{what}: draws of {name!r} are not all finite")
        out[str(name)] = values.reshape((-1,) + values.shape[2:])
    return out


def _family(samples: Sequence[np.ndarray]) -> str:
    joined = np.concatenate([s.reshape(len(s), -1) for s in samples])
    if np.all(joined == joined[:1]):
        return "constant"
    if np.all((joined > 0) & (joined < 1)):
        if samples[0].ndim >= 2 and samples[0].shape[-1] >= 2 and all(
                np.allclose(s.sum(-1), 1.0, atol=1e-6) for s in samples):
            return "dirichlet"
        return "beta"
    if np.all(joined > 0):
        return "gamma"
    return "normal"


def _moments(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(values) < 2:
        raise InvalidInputError(f"a posterior with {len(values)} draw cannot be moment-matched; give at least two")
    return values.mean(0), np.maximum(values.var(0, ddof=1), 1e-300)


def _natural(family: str, values: np.ndarray) -> dict[str, np.ndarray]:
    """Moment-matched parameters of one site (or the prior), per entry."""
    mean, var = _moments(values)
    if family == "beta":
        total = mean * (1 - mean) / var - 1.0
        return {"alpha": mean * total, "beta": (1 - mean) * total}
    if family == "dirichlet":
        # An exact Dirichlet gives one concentration from every component; pool them on the log scale.
        total = np.exp(np.log(np.maximum(mean * (1 - mean) / var - 1.0, 1e-300)).mean(-1, keepdims=True))
        return {"concentration": mean * total}
    if family == "gamma":
        return {"shape": mean ** 2 / var, "rate": mean / var}
    return {"precision": 1.0 / var, "mean": mean}


def _flat(family: str, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    # Densities constant on the support: their exponents (and rates, precisions) are zero.
    if family == "beta":
        return {"alpha": np.ones(shape), "beta": np.ones(shape)}
    if family == "dirichlet":
        return {"concentration": np.ones(shape)}
    if family == "gamma":
        return {"shape": np.ones(shape), "rate": np.zeros(shape)}
    return {"precision": np.zeros(shape), "mean": np.zeros(shape)}


def _combine(family: str, sites: list[dict[str, np.ndarray]], prior: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Normalised product of the site densities over the prior to the power K - 1."""
    repeats = len(sites) - 1
    if family in ("beta", "dirichlet"):
        # Exponents (alpha - 1) add up.
        return {key: sum(site[key] - 1 for site in sites) - repeats * (prior[key] - 1) + 1 for key in prior}
    if family == "gamma":
        return {"shape": sum(site["shape"] - 1 for site in sites) - repeats * (prior["shape"] - 1) + 1,
                "rate": sum(site["rate"] for site in sites) - repeats * prior["rate"]}
    precision = sum(site["precision"] for site in sites) - repeats * prior["precision"]
    weighted = sum(site["precision"] * site["mean"] for site in sites) - repeats * prior["precision"] * prior["mean"]
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"precision": precision, "mean": weighted / precision}


def _proper(family: str, name: str, merged: Mapping[str, np.ndarray]) -> None:
    keys = {"beta": ("alpha", "beta"), "dirichlet": ("concentration",), "gamma": ("shape", "rate"),
            "normal": ("precision",)}[family]
    for key in keys:
        bad = ~(merged[key] > 0)
        if np.any(bad):
            entry = tuple(int(i) for i in np.argwhere(bad)[0])
            raise InvalidInputError(
                f"the merged {family} of {name!r}{list(entry) if entry else ''} has {key} "
                f"{float(merged[key][entry]):.4g} <= 0, not a proper density: a site's posterior is wider than the "
                "prior divided out of it. Check that every site used the prior passed as prior= (or pass "
                "prior=None for a flat one), or use method='gaussian'")


def _sample(family: str, merged: Mapping[str, np.ndarray], count: int, rng: np.random.Generator) -> np.ndarray:
    if family == "beta":
        return rng.beta(merged["alpha"], merged["beta"], size=(count,) + merged["alpha"].shape)
    if family == "dirichlet":
        concentration = merged["concentration"]
        flat = concentration.reshape(-1, concentration.shape[-1])
        draws = np.stack([rng.dirichlet(row, size=count) for row in flat], axis=1)
        return draws.reshape((count,) + concentration.shape)
    if family == "gamma":
        return rng.gamma(merged["shape"], 1.0 / merged["rate"], size=(count,) + merged["shape"].shape)
    return rng.normal(merged["mean"], 1.0 / np.sqrt(merged["precision"]), size=(count,) + merged["mean"].shape)


# Maps between each support and the real line for the joint Gaussian merge.
def _to_real(family: str, values: np.ndarray) -> np.ndarray:
    if family == "beta":
        return np.log(values) - np.log1p(-values)
    if family == "dirichlet":
        return np.log(values[..., :-1]) - np.log(values[..., -1:])
    if family == "gamma":
        return np.log(values)
    return values


def _from_real(family: str, values: np.ndarray) -> np.ndarray:
    if family == "beta":
        return 1.0 / (1.0 + np.exp(-values))
    if family == "dirichlet":
        padded = np.concatenate([values, np.zeros(values.shape[:-1] + (1,))], axis=-1)
        padded -= padded.max(-1, keepdims=True)
        weights = np.exp(padded)
        return weights / weights.sum(-1, keepdims=True)
    if family == "gamma":
        return np.exp(values)
    return values


@dataclass
class MergedPosterior:
    """A posterior merged from several sites' posteriors by :func:`merge_posteriors`.

    Attributes
    ----------
    draws : dict
        ``{parameter: array (1, num_samples, *shape)}``, the layout of the inputs' draws.
    method : str
        ``"moments"`` or ``"gaussian"``.
    families : dict
        The family each parameter was merged in (see :data:`FAMILIES`).
    parameters : dict
        For ``"moments"``, the merged family's parameters per entry
        (``alpha``/``beta``, ``concentration``, ``shape``/``rate``,
        ``precision``/``mean``); for ``"gaussian"``, ``mean`` and
        ``covariance`` of the unconstrained vector.
    sites : int
        How many posteriors were merged.
    level : float
        Credible level of :meth:`estimate` intervals.
    """

    draws: dict[str, np.ndarray]
    method: str
    families: dict[str, str]
    parameters: dict[str, Any]
    sites: int
    level: float = 0.9

    @property
    def num_draws(self) -> int:
        """Draws per parameter."""
        first = next(iter(self.draws.values()))
        return int(first.shape[0] * first.shape[1])

    def flat(self, name: str) -> np.ndarray:
        """Draws of one parameter, ``(draws, *shape)``."""
        if name not in self.draws:
            raise InvalidInputError(f"unknown parameter {name!r}; the merged parameters are: {', '.join(self.draws)}")
        values = self.draws[name]
        return values.reshape((-1,) + values.shape[2:])

    def mean(self) -> dict[str, np.ndarray]:
        """Posterior mean of every parameter."""
        return {name: self.flat(name).mean(0) for name in self.draws}

    def estimate(self, name: str, index: Any = None):
        """Posterior mean of one parameter entry with its equal-tailed credible interval at ``level``.

        A parameter whose every draw lies in [0, 1] gives a :class:`~bayes_defense.Probability`.
        """
        from bayes_defense.estimate import Estimate, Probability

        values = self.flat(name)
        if index is not None:
            values = values[(slice(None), *(index if isinstance(index, tuple) else (index,)))]
        if values.ndim != 1:
            raise InvalidInputError(f"{name!r} has shape {values.shape[1:]}; pass index= to pick one entry")
        tail = (1 - self.level) / 2
        low, high = (float(v) for v in np.quantile(values, [tail, 1 - tail]))
        mean = float(values.mean())
        kind = Probability if values.min() >= 0 and values.max() <= 1 else Estimate
        return kind(mean, min(low, mean), max(high, mean), level=self.level, ess=float(len(values)),
                    backend=f"merged-{self.method}")

    def to_inference_data(self):
        """ArviZ data holding the merged draws (for ``az.summary``, ``az.plot_posterior``)."""
        from bayes_defense.fitting import inference_data

        dims = {name: [f"{name}_dim_{i}" for i in range(values.ndim - 2)] for name, values in self.draws.items()}
        return inference_data.from_groups({"posterior": self.draws}, dims=dims, coords={},
                                          attrs={"method": f"merged-{self.method}", "sites": self.sites})


def _merge_statistics(posteriors: Sequence[Any]) -> Any:
    """The posterior of the sites' summed counts, with the first site's draw settings."""
    from bayes_defense.fitting.signal_model import posterior_from_statistics

    total = posteriors[0].statistics.copy()
    for posterior in posteriors[1:]:
        total = total + posterior.statistics
    settings = dict(posteriors[0].info.get("settings", {}))
    options = {key: settings[key] for key in ("num_samples", "prior_strength", "seed") if key in settings}
    return posterior_from_statistics(total, **options)


def merge_posteriors(posteriors: Sequence[Any], *, prior: Any = None, method: str | None = None,
                     num_samples: int = 4000, seed: int = 0, level: float = 0.9) -> Any:
    """Combine posteriors fitted at separate sites into the posterior of all their data.

    The method is the product of the site posteriors' densities with the
    prior divided out ``K - 1`` times, each density moment-matched to the
    site's draws (module :mod:`bayes_defense.fitting.merge` states the
    families and the assumptions).

    Parameters
    ----------
    posteriors : sequence
        Fitted posteriors of the same model and prior (objects with
        ``.draws``, as :func:`bayes_defense.fit` returns), or mappings
        ``{parameter: draws (chain, draw, *shape)}``; the same parameters
        and shapes in each.
    prior : posterior-like or mapping, optional
        Draws from the prior every site used, in the same layout; default:
        a prior density constant on each parameter's support.
    method : {"moments", "gaussian", "exact"}, optional
        Per-entry conjugate families, one joint Gaussian in the unconstrained
        space, or the sum of sufficient statistics (signal-model posteriors
        only). Default: ``"exact"`` where every posterior carries its
        statistics, else ``"moments"``.
    num_samples : int
        Draws of the merged posterior.
    seed : int
        Seeds those draws.
    level : float
        Credible level of :meth:`MergedPosterior.estimate`.

    Returns
    -------
    MergedPosterior, or SignalPosterior for ``"exact"``

    Examples
    --------
    Two sites each saw Bernoulli data under a uniform prior: 7 of 10 and 12
    of 20 successes; their posteriors are Beta(8, 4) and Beta(13, 9), and the
    posterior of all 30 is Beta(20, 12).

    >>> rng = np.random.default_rng(0)
    >>> sites = [{"p": rng.beta(8, 4, size=(1, 20000))}, {"p": rng.beta(13, 9, size=(1, 20000))}]
    >>> merged = merge_posteriors(sites)
    >>> merged.families["p"], np.round([merged.parameters["p"]["alpha"], merged.parameters["p"]["beta"]], 1)
    ('beta', array([20.1, 12. ]))
    >>> round(merged.estimate("p").mean, 2)  # Beta(20, 12) has mean 0.625
    0.62
    """
    if method is not None and method not in _METHODS:
        raise InvalidInputError(f"method must be one of {', '.join(_METHODS)}; got {method!r}")
    if isinstance(posteriors, Mapping) or not isinstance(posteriors, Sequence) or isinstance(posteriors, str):
        raise InvalidInputError("posteriors must be a list of the sites' posteriors; got "
                                f"{type(posteriors).__name__}")
    if not posteriors:
        raise InvalidInputError("posteriors is empty; give the posterior of each site")
    counted = all(getattr(p, "statistics", None) is not None for p in posteriors)
    if method is None:
        method = "exact" if counted else "moments"
    if method == "exact":
        if not counted:
            raise InvalidInputError("method='exact' adds the sites' sufficient statistics, which only signal-model "
                                    "posteriors of this release carry; use method='moments' for these")
        return _merge_statistics(posteriors)
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 2:
        raise InvalidInputError(f"num_samples must be an integer >= 2; got {num_samples!r}")
    if not 0 < float(level) < 1:
        raise InvalidInputError(f"level must lie strictly between 0 and 1; got {level!r}")
    sites = [_draws_of(p, f"posteriors[{k}]") for k, p in enumerate(posteriors)]
    names = list(sites[0])
    for k, site in enumerate(sites[1:], 1):
        if set(site) != set(names):
            raise InvalidInputError(f"posteriors[{k}] has parameters {sorted(site)}, posteriors[0] has "
                                    f"{sorted(names)}; merge posteriors of one model")
        for name in names:
            if site[name].shape[1:] != sites[0][name].shape[1:]:
                raise InvalidInputError(f"{name!r} has shape {site[name].shape[1:]} in posteriors[{k}] and "
                                        f"{sites[0][name].shape[1:]} in posteriors[0]")
    prior_draws = None if prior is None else _draws_of(prior, "prior")
    if prior_draws is not None:
        missing = sorted(set(names) - set(prior_draws))
        if missing:
            raise InvalidInputError(f"prior has no draws of {', '.join(missing)}; give draws of every parameter")
        for name in names:
            if prior_draws[name].shape[1:] != sites[0][name].shape[1:]:
                raise InvalidInputError(f"prior draws of {name!r} have shape {prior_draws[name].shape[1:]}; the "
                                        f"posteriors' have {sites[0][name].shape[1:]}")
    families = {}
    for name in names:
        samples = [site[name] for site in sites]
        if prior_draws is not None:
            samples.append(prior_draws[name])
        families[name] = _family(samples)
    rng = np.random.default_rng([int(seed), 0xFED])
    if method == "moments":
        draws, parameters = _merge_moments(names, families, sites, prior_draws, num_samples, rng)
    else:
        draws, parameters = _merge_gaussian(names, families, sites, prior_draws, num_samples, rng)
    return MergedPosterior(draws={name: value[None] for name, value in draws.items()}, method=method,
                           families=families, parameters=parameters, sites=len(sites), level=float(level))


def _constant(name: str, sites: list[dict[str, np.ndarray]], count: int) -> np.ndarray:
    value = sites[0][name][0]
    if not all(np.array_equal(site[name][0], value) for site in sites):
        raise InvalidInputError(f"{name!r} is fixed at different values in different posteriors; the sites did not "
                                "fit the same model")
    return np.broadcast_to(value, (count,) + value.shape).copy()


def _merge_moments(names, families, sites, prior_draws, count, rng):
    draws, parameters = {}, {}
    for name in names:
        family = families[name]
        if family == "constant":
            draws[name] = _constant(name, sites, count)
            parameters[name] = {"value": draws[name][0]}
            continue
        matched = [_natural(family, site[name]) for site in sites]
        shape = sites[0][name].shape[1:]
        prior = _flat(family, shape) if prior_draws is None else _natural(family, prior_draws[name])
        merged = _combine(family, matched, prior)
        _proper(family, name, merged)
        parameters[name] = merged
        draws[name] = _sample(family, merged, count, rng)
    return draws, parameters


def _merge_gaussian(names, families, sites, prior_draws, count, rng):
    varying = [name for name in names if families[name] != "constant"]
    draws = {name: _constant(name, sites, count) for name in names if families[name] == "constant"}

    def vector(site: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([_to_real(families[name], site[name]).reshape(len(site[name]), -1)
                               for name in varying], axis=1)

    dimension = sum(int(np.prod(_to_real(families[n], sites[0][n][:1]).shape[1:], dtype=int)) for n in varying)
    precision = np.zeros((dimension, dimension))
    shift = np.zeros(dimension)
    for k, site in enumerate(sites):
        values = vector(site)
        if len(values) <= dimension:
            raise InvalidInputError(f"posteriors[{k}] has {len(values)} draws for {dimension} unconstrained "
                                    "parameters; the joint Gaussian merge needs more draws than parameters "
                                    "(or use method='moments')")
        site_precision = np.linalg.inv(np.atleast_2d(np.cov(values, rowvar=False)))
        precision += site_precision
        shift += site_precision @ values.mean(0)
    if prior_draws is not None:
        values = vector(prior_draws)
        prior_precision = np.linalg.inv(np.atleast_2d(np.cov(values, rowvar=False)))
        precision -= (len(sites) - 1) * prior_precision
        shift -= (len(sites) - 1) * prior_precision @ values.mean(0)
    try:
        factor = np.linalg.cholesky(precision)
    except np.linalg.LinAlgError:
        raise InvalidInputError("the merged Gaussian's precision is not positive definite: a site's posterior is "
                                "wider than the prior divided out of it; check prior=, or use method='moments'") from None
    covariance = np.linalg.inv(precision)
    mean = covariance @ shift
    standard = rng.standard_normal((count, dimension))
    joint = mean + np.linalg.solve(factor.T, standard.T).T  # covariance = (L L^T)^-1
    start = 0
    for name in varying:
        real_shape = _to_real(families[name], sites[0][name][:1]).shape[1:]
        size = int(np.prod(real_shape, dtype=int))
        block = joint[:, start:start + size].reshape((count,) + real_shape)
        draws[name] = _from_real(families[name], block)
        start += size
    return {name: draws[name] for name in names}, {"mean": mean, "covariance": covariance, "order": varying}


def fit_sites(model: Any, datasets: Sequence[Any], *, client: Any = None, **options: Any) -> list[Any]:
    """Fit one model to each site's data, each fit a Dask task; return the posteriors in order.

    Parameters
    ----------
    model : object
        What :func:`bayes_defense.fit` fits (``"defender"``, a cluster model, a Pyro SCM).
    datasets : sequence
        One data set per site (never combined: a task sees its own site's data only).
    client : distributed.Client, optional
        Where the fits run; default: one after another in this process.
        Its workers should be processes with one thread each
        (``LocalCluster(processes=True, threads_per_worker=1)``, as
        ``bayes-defense sweep`` starts): Pyro keeps its handler stack and
        parameter store per process, so two fits in threads of one process
        would share them.
    **options
        Options of :func:`bayes_defense.fit`, the same for every site (so
        every site uses the same prior, as :func:`merge_posteriors` needs).

    Examples
    --------
    >>> from bayes_defense.fitting.defender import simulate_windows
    >>> posts = fit_sites("scored", [simulate_windows(n_windows=150, seed=s) for s in (1, 2)],
    ...                   num_steps=20, num_samples=30, progress=False, check=False, ppc_draws=5)
    >>> merged = merge_posteriors(posts)
    >>> merged.sites, merged.flat("spread").shape
    (2, (4000, 8))
    """
    from bayes_defense.fitting import fit

    if isinstance(datasets, (str, bytes)) or not isinstance(datasets, Sequence) or not datasets:
        raise InvalidInputError("datasets must be a non-empty list with one data set per site")
    if client is None:
        return [fit(model, data, **options) for data in datasets]
    futures = [client.submit(fit, model, data, pure=False, **options) for data in datasets]
    return client.gather(futures)

"""Likelihood weighting on the compiled tables of a finite discrete SCM.

The ``importance`` backend runs the model once per world inside a particle
plate. For a model whose sites are all scalar with finite discrete supports,
the exact backend's conditional probability tables (compiled once per model,
see :func:`bayes_defense.inference.exact.compile_discrete`) describe every
mechanism completely, so the same likelihood weighting can run on them
directly: each particle's parent configuration indexes a row of a site's
table, and the site's value is the inverse CDF of its uniform noise on that
row. This is the canonical coupling of :mod:`bayes_defense.causal.noise`
(``x = k`` exactly when ``F(k - 1) < u <= F(k)``, evidence abducts
``u ~ Uniform(F(k - 1), F(k))`` with weight ``P(x = k | parents)``), so the
particles have the same distribution as those of a model run; only the cost
differs, a few array operations per site instead of the model's own
arithmetic, distribution objects and Pyro's handler stack. The noise is drawn
from torch's generator in the model run's order, so for a given seed both
paths weight the same particles (up to draws within float rounding of a
threshold).

The path declines (and the backend runs the model) when a site is observed by
the model itself, or when an intervened or observed value lies outside its
site's support, so that the usual handling and errors apply.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy
import torch

from bayes_defense.errors import UnsupportedModelError
from bayes_defense.inference.base import Problem
from bayes_defense.inference.exact import DiscreteNetwork, compile_discrete

__all__ = ["TabularSampler", "tabular_sampler"]


class _Site:
    """One site's tables, laid out for indexing by parent configuration.

    Value indices are int32 arrays (one per particle) or Python ints for
    values fixed by an intervention; a parent configuration's row in the
    flattened table is the sum of its parents' indices times their strides.
    """

    def __init__(self, network: DiscreteNetwork, name: str, position: dict, deterministic: bool):
        cpt = network.numpy_cpt(name)
        self.name = name
        sizes = [network.support[p].numel() for p in network.parents[name]]
        strides = [int(numpy.prod(sizes[i + 1:], dtype=numpy.int64)) for i in range(len(sizes))]
        self.terms = [(position[p], stride) for p, stride in zip(network.parents[name], strides, strict=True)]
        pmf = cpt.reshape(-1, cpt.shape[-1])
        self.size = pmf.shape[1]
        self.cdf = numpy.cumsum(pmf, axis=1)
        # Contiguous columns: numpy.take on a 1-d table is the cheapest gather.
        self.cdf_columns = [numpy.ascontiguousarray(self.cdf[:, k]) for k in range(self.size)]
        # A model run compares float32 noise with the float32 ``1 - p``; so do two-valued sites here.
        self.threshold32 = self.cdf_columns[0].astype(numpy.float32)
        with numpy.errstate(divide="ignore"):
            self.log_pmf_columns = [numpy.ascontiguousarray(numpy.log(pmf[:, k])) for k in range(self.size)]
        self.support = network.numpy_support(name)
        self.lookup = {float(v): k for k, v in reversed(list(enumerate(self.support)))}
        self.typed_support = self.support.astype(torch.empty((), dtype=network.dtypes[name]).numpy().dtype)
        # A deterministic site's row is a point mass: no noise is drawn for it.
        self.deterministic = deterministic
        self.point = pmf.argmax(axis=1).astype(numpy.int32)

    def row(self, index: list):
        row = 0
        for position, stride in self.terms:
            value = index[position]
            row = row + (value if stride == 1 else value * stride)
        return row

    def invert(self, u, row, n: int):
        """Smallest ``k`` with ``F(k) >= u``: the site's value index for noise ``u``."""
        if self.deterministic:
            return self.point.take(row) if numpy.ndim(row) else numpy.full(n, self.point[row], numpy.int32)
        if self.size == 2:
            return numpy.greater(u, self.threshold32.take(row)).astype(numpy.int32)
        thresholds = self.cdf[row, :-1] if numpy.ndim(row) else self.cdf[row, :-1][None, :]
        return (u[:, None] > thresholds).sum(axis=1, dtype=numpy.int32)

    def log_pmf(self, k: int, row):
        return self.log_pmf_columns[k].take(row) if numpy.ndim(row) else self.log_pmf_columns[k][row]

    def abduct(self, k: int, row, draw: numpy.ndarray) -> numpy.ndarray:
        """Noise consistent with value index ``k``: ``Uniform(F(k - 1), F(k))``."""
        high = self.cdf_columns[k].take(row) if numpy.ndim(row) else self.cdf_columns[k][row]
        if k == 0:
            return high * draw
        low = self.cdf_columns[k - 1].take(row) if numpy.ndim(row) else self.cdf_columns[k - 1][row]
        return low + (high - low) * draw

    def position_of(self, value: float) -> int | None:
        return self.lookup.get(value)


class _Values(Mapping):
    """Site values of one world, built as torch tensors only when a query reads them."""

    def __init__(self, sites: list, index: list, n: int):
        self._sites = {site.name: (site, i) for i, site in enumerate(sites)}
        self._index = index
        self._n = n
        self._built: dict = {}

    def __getitem__(self, name):
        built = self._built.get(name)
        if built is None:
            site, i = self._sites[name]
            index = self._index[i]
            if numpy.isscalar(index) or numpy.ndim(index) == 0:
                index = numpy.full(self._n, index)
            built = self._built[name] = torch.from_numpy(site.typed_support[index])
        return built

    def __iter__(self):
        return iter(self._sites)

    def __len__(self):
        return len(self._sites)


def _uniform(n: int) -> numpy.ndarray:
    """One site's uniform noise, drawn exactly as a model run draws it.

    The model run (:class:`~bayes_defense.causal.noise.World`) draws one
    ``torch.rand`` per site in execution order, observed sites included (for
    their abducted noise); drawing the same here makes the particles of both
    paths the same for a given seed, up to thresholds within float rounding.
    """
    return torch.rand(n).numpy()


class TabularSampler:
    """Likelihood weighting over a compiled discrete network (see the module docstring)."""

    def __init__(self, problem: Problem, network: DiscreteNetwork):
        position = {name: i for i, name in enumerate(network.names)}
        self.position = position
        self.sites = [_Site(network, name, position, problem.info.sites[name].deterministic)
                      for name in network.names]
        self.network = network

    def _affected(self, do: dict) -> frozenset:
        """Sites downstream of the intervention, from the tables' own graph (cached per set of sites)."""
        return self.network.descendants(do)

    def _indices(self, values: dict) -> dict | None:
        out = {}
        for name, value in values.items():
            if value.numel() != 1:
                return None
            k = self.sites[self.position[name]].position_of(float(value))
            if k is None:
                return None
            out[name] = k
        return out

    def run(self, problem: Problem):
        """Return ``(values, log_weight, factual_values)`` or None where the path does not apply."""
        do = self._indices(problem.do)
        evidence = self._indices(problem.evidence)
        if do is None or evidence is None:
            return None
        n = problem.num_samples
        counterfactual = problem.counterfactual
        affected = self._affected(problem.do) if counterfactual else frozenset()
        log_weight = numpy.zeros(n)
        index: list = [None] * len(self.sites)
        # Noise is kept only where the counterfactual world replays it.
        noise: dict = {}
        for i, site in enumerate(self.sites):
            name = site.name
            if name in do and not counterfactual:
                index[i] = do[name]
                continue
            row = site.row(index)
            if name in evidence:
                k = evidence[name]
                index[i] = k
                log_weight += site.log_pmf(k, row)
                if not site.deterministic:
                    draw = _uniform(n)
                    if name in affected:
                        noise[name] = site.abduct(k, row, draw)
                continue
            u = None if site.deterministic else _uniform(n)
            if name in affected:
                noise[name] = u
            index[i] = site.invert(u, row, n)
        log_weight = torch.from_numpy(log_weight)
        factual = _Values(self.sites, index, n)
        if not counterfactual:
            return factual, log_weight, factual
        cf_index = list(index)
        for i, site in enumerate(self.sites):
            name = site.name
            if name not in affected:
                continue
            if name in do:
                cf_index[i] = do[name]
                continue
            cf_index[i] = site.invert(noise.get(name), site.row(cf_index), n)
        return _Values(self.sites, cf_index, n), log_weight, factual


def tabular_sampler(problem: Problem) -> TabularSampler | None:
    """The model's tabular sampler (cached per model), or None where the model is not tabular."""
    cache = problem.info.cache
    if "tabular_sampler" not in cache:
        sampler = None
        if not any(site.observed and not site.deterministic for site in problem.info.sites.values()):
            try:
                network = compile_discrete(problem)
            except UnsupportedModelError:
                network = None
            if network is not None:
                sampler = TabularSampler(problem, network)
        cache["tabular_sampler"] = sampler
    return cache["tabular_sampler"]

"""Exact inference for discrete SCMs by variable elimination (tensor contraction).

The model is compiled once into conditional probability tables: for each site
the model is run with its parents forced to every joint configuration, inside
one plate, and the site's distribution is read off. Queries are then sums over
products of factors, contracted by ``opt_einsum``. The contraction path
depends only on the query's pattern (which sites are intervened on, observed
and queried), so it is searched once per pattern and reused; the sites the
query reads stay open, so one contraction gives both the numerator and the
normaliser. Small contractions run in numpy float64 (far less overhead per
step than torch), large ones in torch (batched matrix products).

Interventional queries remove the intervened sites' tables and clamp them
(graph surgery). Counterfactual queries build the twin network: a site that
no intervention reaches is shared by both worlds; a site downstream of one
gets a counterfactual copy tied to the factual one through its canonical
noise. For a site with CDF ``F`` under factual parents and ``F'`` under
counterfactual parents, the shared uniform noise gives the joint

``P(x = k, x' = k') = | [F(k-1), F(k)] intersect [F'(k'-1), F'(k')] |``,

the monotone (comonotone) coupling. Answers are exact up to float64 rounding.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy
import opt_einsum
import pyro
import torch

from bayes_defense.causal.noise import World, _discrete_table, _strip
from bayes_defense.causal.structure import float64
from bayes_defense.errors import ImpossibleEvidenceError, UnsupportedModelError
from bayes_defense.estimate import exact_estimate
from bayes_defense.inference.base import Backend, Problem, Query, register_backend

__all__ = ["Exact", "DiscreteNetwork", "compile_discrete"]

#: Largest joint grid over which a callable query is evaluated.
MAX_QUERY_GRID = 2**22


@dataclass
class DiscreteNetwork:
    """Conditional probability tables of a discrete SCM.

    ``cpt[name]`` has shape ``(|pa_1|, ..., |pa_m|, |name|)`` over the
    supports ``support[...]`` of the parents ``parents[name]`` and the site.
    """

    names: list
    parents: dict
    support: dict
    cpt: dict
    dtypes: dict
    #: Derived tables (numpy copies, twin-network couplings, query tables), built on first use.
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    def cdf(self, name: str) -> torch.Tensor:
        return self.cpt[name].cumsum(-1)

    def derived(self, key, build):
        """Return ``cache[key]``, building it with ``build()`` the first time."""
        try:
            return self.cache[key]
        except KeyError:
            value = self.cache[key] = build()
            return value

    def numpy_cpt(self, name: str) -> numpy.ndarray:
        return self.derived(("cpt", name), lambda: _as_numpy(self.cpt[name]))

    def numpy_support(self, name: str) -> numpy.ndarray:
        return self.derived(("support", name), lambda: self.support[name].to(torch.float64).numpy())


def compile_discrete(problem_or_info, model=None) -> DiscreteNetwork:
    """Compile (once per model) the tables of a discrete model; raise if it is not one."""
    info = problem_or_info.info if isinstance(problem_or_info, Problem) else problem_or_info
    model = problem_or_info.model if isinstance(problem_or_info, Problem) else model
    if "discrete_network" in info.cache:
        cached = info.cache["discrete_network"]
        if isinstance(cached, Exception):
            raise cached
        return cached
    try:
        network = _compile(info, model)
    except UnsupportedModelError as error:
        info.cache["discrete_network"] = error
        raise
    info.cache["discrete_network"] = network
    return network


def _compile(info, model) -> DiscreteNetwork:
    for site in info.sites.values():
        if not site.scalar:
            raise UnsupportedModelError(
                f"backend 'exact' needs scalar sites outside plates; site {site.name!r} has shape "
                f"{tuple(site.shape)}{' in plates ' + str([p[0] for p in site.plates]) if site.plates else ''}. "
                "Use backend='importance'"
            )
        if not (site.discrete or site.deterministic):
            raise UnsupportedModelError(
                f"backend 'exact' needs discrete sites; site {site.name!r} is {site.distribution}. "
                "Use backend='analytic' for linear-Gaussian models or backend='importance'"
            )
        if site.discrete and not (site.distribution == "Categorical" or getattr(_strip(site.fn), "has_enumerate_support", False)):
            raise UnsupportedModelError(
                f"backend 'exact' needs finite supports; site {site.name!r} is {site.distribution} "
                "with unbounded support. Use backend='importance'"
            )
    parents = info.parents()
    support: dict = {}
    cpt: dict = {}
    dtypes: dict = {}
    for name in info.names:
        site = info.sites[name]
        pa = parents[name]
        grid_size = math.prod(support[p].numel() for p in pa) if pa else 1
        if grid_size > 2**20:
            raise UnsupportedModelError(
                f"site {name!r} has {len(pa)} parents with {grid_size} joint configurations; too many "
                "for a table. Use backend='importance'"
            )
        grids = torch.meshgrid(*[support[p] for p in pa], indexing="ij") if pa else ()
        forced = {p: g.reshape(-1) for p, g in zip(pa, grids, strict=False)}
        world = World(do=forced, particle_dim=-1, num_particles=grid_size)
        with float64(), torch.no_grad(), pyro.validation_enabled(False), world, pyro.plate("_bd_grid", grid_size, dim=-1):
            _run_until(model, world, name)
        d = world.distributions[name]
        if site.deterministic:
            # The recorded value, not the Delta's v, which plates may have expanded.
            values = world.values[name].expand(grid_size).reshape(grid_size)
            values_sorted = torch.unique(values)
            support[name] = values_sorted
            index = torch.searchsorted(values_sorted, values)
            table = torch.nn.functional.one_hot(index, values_sorted.numel()).to(torch.float64)
        else:
            sup, cdf = _discrete_table(d)
            support[name] = sup
            pmf = torch.diff(cdf, dim=0, prepend=torch.zeros_like(cdf[:1])).to(torch.float64)
            pmf = pmf.expand((pmf.shape[0], grid_size)).T.clamp(min=0)
            table = pmf
        dtypes[name] = site.example.dtype
        cpt[name] = table.reshape(tuple(support[p].numel() for p in pa) + (support[name].numel(),))
    return DiscreteNetwork(names=list(info.names), parents=parents, support=support, cpt=cpt, dtypes=dtypes)


class _Stop(Exception):
    pass


def _run_until(model, world, name):
    """Run the model until ``name`` has been sampled; later sites are not needed."""

    class _Stopper(pyro.poutine.messenger.Messenger):
        def _pyro_post_sample(self, msg):
            if msg["name"] == name:
                raise _Stop

    try:
        with _Stopper():
            model()
    except _Stop:
        pass


class _Factors:
    """Factors over integer-labelled variables, contracted with opt_einsum in numpy float64.

    numpy's pairwise contractions are far cheaper than ``torch.einsum`` on
    these many-index, small tensors, and the contraction path depends only on
    the labels and shapes, so it is computed once per query pattern and
    reused (see :func:`_expression`).
    """

    def __init__(self):
        self.tensors: list = []
        self.labels: list = []

    def add(self, tensor, labels):
        self.tensors.append(_as_numpy(tensor))
        self.labels.append(tuple(labels))

    def marginal(self, keep) -> numpy.ndarray:
        """Sum the product of all factors over every variable outside ``keep``."""
        keep = tuple(keep)
        if not self.tensors:
            return numpy.ones(tuple(1 for _ in keep)) if keep else numpy.array(1.0)
        shapes = tuple(t.shape for t in self.tensors)
        expression, large = _expression(tuple(self.labels), shapes, keep)
        if large:
            # Large pairwise steps with shared batch indices are batched matrix
            # products in torch but slow loops in numpy's einsum.
            return expression(*(torch.from_numpy(t) for t in self.tensors)).numpy()
        return numpy.asarray(expression(*self.tensors))


#: Contraction expressions by (labels, shapes, output); a query pattern repeats these exactly.
_EXPRESSIONS: OrderedDict = OrderedDict()
_MAX_EXPRESSIONS = 256
#: Above this many flops a contraction runs in torch (see ``_Factors.marginal``).
_TORCH_FLOPS = 2e6
#: Above this many flops a better path is worth a short randomised search.
_SEARCH_FLOPS = 1e8


def _expression(labels: tuple, shapes: tuple, keep: tuple):
    """Return ``(expression, large)`` for a contraction, building the path once per pattern."""
    key = (labels, shapes, keep)
    cached = _EXPRESSIONS.get(key)
    if cached is not None:
        _EXPRESSIONS.move_to_end(key)
        return cached
    symbols: dict = {}

    def symbol(label):
        if label not in symbols:
            symbols[label] = opt_einsum.get_symbol(len(symbols))
        return symbols[label]

    inputs = ",".join("".join(symbol(label) for label in factor) for factor in labels)
    equation = f"{inputs}->{''.join(symbol(label) for label in keep)}"
    path, info = opt_einsum.contract_path(equation, *shapes, shapes=True, optimize="greedy")
    cost = float(info.opt_cost)
    if cost > _SEARCH_FLOPS:
        # RandomGreedy reseeds Python's global random module; keep the caller's state.
        state = random.getstate()
        try:
            other, other_info = opt_einsum.contract_path(equation, *shapes, shapes=True,
                                                         optimize=opt_einsum.RandomGreedy(max_repeats=8))
        finally:
            random.setstate(state)
        if float(other_info.opt_cost) < cost:
            path, cost = other, float(other_info.opt_cost)
    expression = opt_einsum.contract_expression(equation, *shapes, optimize=path)
    _EXPRESSIONS[key] = cached = (expression, cost > _TORCH_FLOPS)
    if len(_EXPRESSIONS) > _MAX_EXPRESSIONS:
        _EXPRESSIONS.popitem(last=False)
    return cached


def _as_numpy(tensor) -> numpy.ndarray:
    if isinstance(tensor, numpy.ndarray):
        return tensor
    return tensor.detach().to(torch.float64).numpy()


def _diagonalise(tensor, labels):
    """Collapse repeated labels (a variable shared by both worlds) to one axis."""
    unique = list(dict.fromkeys(labels))
    if len(unique) == len(labels):
        return tensor, labels
    letters = {label: opt_einsum.get_symbol(i) for i, label in enumerate(unique)}
    equation = "".join(letters[label] for label in labels) + "->" + "".join(letters[label] for label in unique)
    return torch.einsum(equation, tensor), tuple(unique)


def _coupling(cdf_table: torch.Tensor) -> torch.Tensor:
    """Joint ``P(x=k, x'=k')`` for every pair of (factual, counterfactual) parent configurations.

    ``cdf_table`` has shape ``(*parent_sizes, K)``; the result has shape
    ``(*parent_sizes, *parent_sizes, K, K)``.
    """
    parent_shape = cdf_table.shape[:-1]
    k = cdf_table.shape[-1]
    flat = cdf_table.reshape(-1, k)
    high = flat
    low = torch.cat([torch.zeros_like(flat[:, :1]), flat[:, :-1]], dim=1)
    # (a, b, k, k'): factual configuration a, counterfactual b.
    upper = torch.minimum(high[:, None, :, None], high[None, :, None, :])
    lower = torch.maximum(low[:, None, :, None], low[None, :, None, :])
    joint = (upper - lower).clamp(min=0)
    return joint.reshape(tuple(parent_shape) + tuple(parent_shape) + (k, k))


def _indicator(support, value, name: str, role: str) -> numpy.ndarray:
    """Point mass on ``value`` over a site's support (a numpy vector)."""
    support = _as_numpy(support) if not isinstance(support, numpy.ndarray) else support
    match = support == float(torch.as_tensor(value).to(torch.float64).reshape(()))
    if not match.any():
        raise ImpossibleEvidenceError(
            f"{role} {name}={float(value):g} is outside the support {support.tolist()} of site {name!r}; "
            "it has probability zero"
        )
    return match.astype(numpy.float64)


#: Query tables kept per network (keys name sites and values, so the cache stays small; bound it anyway).
_MAX_QUERY_TABLES = 128


def _query_factor(query: Query, network: DiscreteNetwork, label_of: dict):
    """Tabulate a query over the joint support of the sites it reads (cached per query key)."""
    if query.key is None:
        table, read, is_probability = _tabulate(query, network)
    else:
        tables = network.derived("query_tables", OrderedDict)
        cached = tables.get(query.key)
        if cached is None:
            cached = tables[query.key] = _tabulate(query, network)
            if len(tables) > _MAX_QUERY_TABLES:
                tables.popitem(last=False)
        table, read, is_probability = cached
    return table, [label_of[name] for name in read], is_probability


def _tabulate(query: Query, network: DiscreteNetwork):
    example = {name: network.support[name][:1].to(network.dtypes[name]) for name in network.names}
    read = query.sites_read(example)
    sizes = [network.support[name].numel() for name in read]
    if math.prod(sizes) > MAX_QUERY_GRID:
        raise UnsupportedModelError(
            f"the query reads {len(read)} sites with {math.prod(sizes)} joint values, too many to "
            "tabulate exactly; use backend='importance'"
        )
    grids = torch.meshgrid(*[network.support[name] for name in read], indexing="ij") if read else ()
    values = {name: g.reshape(-1).to(network.dtypes[name]) for name, g in zip(read, grids, strict=False)}
    full = {**{name: network.support[name][:1].expand(max(1, math.prod(sizes))).to(network.dtypes[name])
               for name in network.names}, **values}
    result = torch.as_tensor(query.fn(full))
    is_probability = query.is_probability(result)
    table = _as_numpy(result.to(torch.float64).reshape(tuple(sizes) if sizes else ()))
    return table, tuple(read), is_probability


@register_backend
class Exact(Backend):
    """Enumeration of discrete latents by variable elimination; exact to float precision."""

    name = "exact"

    def check(self, problem: Problem) -> None:
        compile_discrete(problem)

    def run(self, problem: Problem):
        network = compile_discrete(problem)
        factors = _Factors()
        factual_label = network.derived("labels", lambda: {name: i for i, name in enumerate(network.names)})
        if problem.counterfactual:
            world_label = self._twin(problem, network, factors, factual_label)
        else:
            world_label = factual_label
            for name in network.names:
                if name in problem.do:
                    # Graph surgery: the intervened site's table becomes a point mass.
                    factors.add(_indicator(network.numpy_support(name), problem.do[name], name, "do"),
                                [factual_label[name]])
                else:
                    factors.add(network.numpy_cpt(name), self._labels(network, name, factual_label))
        for name, value in problem.evidence.items():
            factors.add(_indicator(network.numpy_support(name), value, name, "evidence"), [factual_label[name]])
        if problem.condition is not None:
            table, labels, _ = _query_factor(problem.condition, network, factual_label)
            factors.add(table, labels)
        table, labels, is_probability = _query_factor(problem.query, network, world_label)
        # One contraction gives both sums: the marginal over the sites the
        # query reads, which the query table then weights.
        marginal = factors.marginal(labels)
        normaliser = float(marginal.sum())
        if normaliser <= 0.0:
            raise ImpossibleEvidenceError(
                "the evidence has probability zero under the model"
                f"{' and the intervention' if problem.do and not problem.counterfactual else ''}: "
                f"{ {k: float(v) for k, v in problem.evidence.items()} }"
            )
        numerator = float((marginal * table).sum())
        value = numerator / normaliser
        if is_probability:
            value = min(1.0, max(0.0, value))
        return exact_estimate(value, is_probability=is_probability, level=problem.level, backend=self.name,
                              evidence_probability=normaliser)

    @staticmethod
    def _labels(network: DiscreteNetwork, name: str, label_of: dict) -> list:
        return [label_of[p] for p in network.parents[name]] + [label_of[name]]

    @staticmethod
    def _twin(problem: Problem, network: DiscreteNetwork, factors: _Factors, factual_label: dict) -> dict:
        """Add twin-network factors; return the labels of the counterfactual world."""
        static, cf_label = network.derived(("twin", frozenset(problem.do)),
                                           lambda: Exact._twin_structure(problem, network, factual_label))
        for tensor, labels in static:
            factors.add(tensor, labels)
        for name, value in problem.do.items():
            factors.add(_indicator(network.numpy_support(name), value, name, "do"), [cf_label[name]])
        return cf_label

    @staticmethod
    def _twin_structure(problem: Problem, network: DiscreteNetwork, factual_label: dict):
        """The factors of the twin network that do not depend on the intervened values."""
        affected = problem.info.descendants(problem.do)
        next_label = len(network.names)
        cf_label = {}
        for name in network.names:
            if name in affected:
                cf_label[name] = next_label
                next_label += 1
            else:
                cf_label[name] = factual_label[name]
        static = []
        for name in network.names:
            factual_labels = Exact._labels(network, name, factual_label)
            if name not in affected or name in problem.do:
                static.append((network.numpy_cpt(name), factual_labels))
                continue
            parents = network.parents[name]
            joint = _coupling(network.cdf(name))
            labels = ([factual_label[p] for p in parents] + [cf_label[p] for p in parents]
                      + [factual_label[name], cf_label[name]])
            joint, labels = _diagonalise(joint, labels)
            static.append((_as_numpy(joint), list(labels)))
        return static, cf_label

"""Exact inference for discrete SCMs by variable elimination (tensor contraction).

Compiling. A model is compiled once into conditional probability tables, in
a few vectorised model runs rather than one run per site: every site's parent
configurations get a block of particles inside one plate, every site is
forced to a value in each particle (the grid value where it is a parent of the
block's site, its first support value elsewhere), and each site's table is
read off its own block. A deterministic site's support is known only once its
own block has run, so its children wait for a later run; the number of runs
is one plus the longest chain of deterministic sites feeding deterministic
sites (one for most models), and more only where blocks are split to respect
the memory limit. A model that carries its tables (it has a
``discrete_tables()`` method, as :class:`~bayes_defense.causal.pgmpy_interop.TabularModel`
from a BIF file does) is not run at all: its tables are its definition.

Pruning. A query reads only part of a network. Before contracting, each
query drops the tables it cannot depend on: sites that are not ancestors of
the query, the evidence or the factual condition (barren sites, whose tables
sum to one), and, once the evidence is clamped (sliced out of every table),
the parts not connected to the query, which are d-separated from it given the
evidence and only scale numerator and normaliser alike. Those parts are still
checked for evidence of probability zero, so impossible evidence anywhere
raises :class:`~bayes_defense.errors.ImpossibleEvidenceError`. The pruning
and the contraction path depend only on the query's pattern (which sites are
intervened on, observed and queried), so both are found once per pattern and
reused.

Contracting. The kept tables are summed over every variable but the ones the
query reads, which stay open, so one contraction gives both the numerator and
the normaliser. The order in which variables are summed out is the greedy
min-weight elimination order (each step builds the smallest table it can),
or for contractions over 1e7 entries the min-fill order where it is cheaper;
small steps run in numpy float64 (less overhead per step than torch), large
ones in torch (batched matrix products).

Counterfactuals use the twin network: a site that no intervention reaches is
shared by both worlds; a site downstream of one gets a counterfactual copy
tied to the factual one through its canonical noise. For a site with CDF
``F`` under factual parents and ``F'`` under counterfactual parents, the
shared uniform noise gives the joint

``P(x = k, x' = k') = | [F(k-1), F(k)] intersect [F'(k'-1), F'(k')] |``,

the monotone (comonotone) coupling. Where a query needs only the
counterfactual copy of a site, its factual twin is summed out in closed form
(the copy's own table given its counterfactual parents), which prunes the
factual ancestors the query does not need. Answers are exact up to float64
rounding.

Memory. Every table the backend builds (compiled tables and the model runs
that make them, twin-network coupling tables, the query's table and every
intermediate of a contraction) is bounded by :data:`MAX_TABLE_BYTES` bytes
(1 GiB), or by ``options={"max_table_bytes": n}`` on a query. A query that
would need a larger table raises :class:`~bayes_defense.errors.UnsupportedModelError`
naming ``importance``, and ``backend="auto"`` then answers it by importance
sampling. The bound is per table: a contraction holds its inputs and a few
intermediates at once, so peak memory is a small multiple of it.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import networkx as nx
import numpy
import pyro
import torch
import torch.distributions as tdist
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample

from bayes_defense.causal.noise import base_distribution, discrete_table, log_prob
from bayes_defense.causal.structure import float64
from bayes_defense.errors import ImpossibleEvidenceError, InvalidInputError, UnsupportedModelError
from bayes_defense.estimate import exact_estimate
from bayes_defense.inference.base import Backend, Problem, Query, register_backend, single_threaded

__all__ = ["Exact", "DiscreteNetwork", "compile_discrete", "MAX_TABLE_BYTES"]

#: Default bound, in bytes, on any one table the exact backend builds (see the module docstring).
#: A query may set its own with ``options={"max_table_bytes": n}``.
MAX_TABLE_BYTES = 2**30

_ENTRY_BYTES = 8  # float64


def table_limit(problem: Problem | None) -> int:
    """The table bound for ``problem``: its ``max_table_bytes`` option, else :data:`MAX_TABLE_BYTES`."""
    limit = MAX_TABLE_BYTES if problem is None else problem.options.get("max_table_bytes", MAX_TABLE_BYTES)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidInputError(
            f"option max_table_bytes must be a positive integer number of bytes, for example 2**30; got {limit!r}"
        )
    return limit


def _too_large(what: str, entries: int, limit: int) -> UnsupportedModelError:
    size = entries * _ENTRY_BYTES
    return UnsupportedModelError(
        f"backend 'exact' would build {what} of {entries:,} entries ({size / 2**30:.3g} GiB), above its "
        f"table limit of {limit:,} bytes ({limit / 2**30:.3g} GiB). Use backend='importance' (backend='auto' "
        "falls back to it), or raise the limit with options={'max_table_bytes': ...}"
    )


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
    #: Derived tables (numpy copies, couplings, query tables, plans), built on first use.
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

    @property
    def position(self) -> dict:
        """``{name: index}`` in execution order; a site's factual variable label is its index."""
        return self.derived("position", lambda: {name: i for i, name in enumerate(self.names)})

    def graph(self) -> nx.DiGraph:
        """The causal DAG of the tables (an edge per parent)."""

        def build():
            graph = nx.DiGraph()
            graph.add_nodes_from(self.names)
            graph.add_edges_from((parent, name) for name in self.names for parent in self.parents[name])
            return graph

        return self.derived("graph", build)

    def descendants(self, roots) -> frozenset:
        """The roots and every site downstream of them (cached per set of roots)."""
        key = frozenset(roots)
        cache = self.derived("descendants", OrderedDict)
        found = cache.get(key)
        if found is None:
            graph = self.graph()
            found = set(key)
            for root in key:
                found |= nx.descendants(graph, root)
            found = cache[key] = frozenset(found)
            if len(cache) > 256:
                cache.popitem(last=False)
        return found

    def value_index(self, name: str, value, role: str) -> int:
        """Position of ``value`` in the support of ``name``; ImpossibleEvidenceError outside it."""
        lookup = self.derived(("lookup", name),
                              lambda: {float(v): k for k, v in reversed(list(enumerate(self.numpy_support(name))))})
        tensor = torch.as_tensor(value)
        if tensor.numel() != 1:
            raise InvalidInputError(
                f"{role} for the scalar site {name!r} must be one value; got shape {tuple(tensor.shape)}"
            )
        number = float(tensor.reshape(()))
        k = lookup.get(number)
        if k is None:
            raise ImpossibleEvidenceError(
                f"{role} {name}={number:g} is outside the support {self.numpy_support(name).tolist()} of "
                f"site {name!r}; it has probability zero"
            )
        return k


def compile_discrete(problem_or_info, model=None) -> DiscreteNetwork:
    """Compile (once per model) the tables of a discrete model; raise if it is not one.

    Parameters
    ----------
    problem_or_info : Problem or ModelInfo
        The query (its model and ``max_table_bytes`` option are used) or the
        model's :class:`~bayes_defense.causal.structure.ModelInfo`.
    model : callable, optional
        The model, when ``problem_or_info`` is a ``ModelInfo``.

    Returns
    -------
    DiscreteNetwork

    Raises
    ------
    UnsupportedModelError
        If a site is continuous, not scalar, has an unbounded support, or a
        table would exceed the table limit.

    Notes
    -----
    A model object with a ``discrete_tables()`` method returning
    ``(parents, tables)`` (``{site: tuple of parent names}`` and ``{site:
    tensor of shape (|pa_1|, ..., |pa_m|, K)}``, every site a scalar
    ``Categorical`` whose value is a position ``0 .. K-1``) is compiled from
    those tables without running it. Any other model is run in a few
    vectorised passes (see the module docstring).

    Examples
    --------
    >>> import pyro, pyro.distributions as dist
    >>> from bayes_defense.causal.structure import model_info
    >>> from bayes_defense.inference.exact import compile_discrete
    >>> def model():
    ...     x = pyro.sample("x", dist.Bernoulli(0.3))
    ...     pyro.sample("y", dist.Bernoulli(0.1 + 0.8 * x))
    >>> network = compile_discrete(model_info(model), model)
    >>> network.parents["y"], network.cpt["y"].tolist()
    (('x',), [[0.9, 0.1], [0.09999999999999998, 0.9]])
    """
    is_problem = isinstance(problem_or_info, Problem)
    info = problem_or_info.info if is_problem else problem_or_info
    model = problem_or_info.model if is_problem else model
    limit = table_limit(problem_or_info if is_problem else None)
    cached = info.cache.get("discrete_network")
    if cached is not None:
        if not isinstance(cached, tuple):
            return cached
        error, failed_limit, size_bound = cached
        # A failure caused by the table limit is retried under a larger limit.
        if not (size_bound and limit > failed_limit):
            raise error
    try:
        # Small tensors: intra-op threads cost far more than they save (see single_threaded).
        with single_threaded():
            network = _compile(info, model, limit)
    except UnsupportedModelError as error:
        info.cache["discrete_network"] = (error, limit, getattr(error, "_table_limit", False))
        raise
    info.cache["discrete_network"] = network
    return network


def _check_sites(info) -> None:
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
        if site.discrete and not (site.distribution == "Categorical" or getattr(base_distribution(site.fn), "has_enumerate_support", False)):
            raise UnsupportedModelError(
                f"backend 'exact' needs finite supports; site {site.name!r} is {site.distribution} "
                "with unbounded support. Use backend='importance'"
            )


def _compile(info, model, limit: int) -> DiscreteNetwork:
    provider = getattr(model, "discrete_tables", None)
    if callable(provider):
        return _from_tables(info, *provider())
    _check_sites(info)
    return _from_runs(info, model, limit)


def _from_tables(info, parents: dict, tables: dict) -> DiscreteNetwork:
    """A network from a model's own tables (``tables`` in sampling order), without running the model.

    The tables are the model's definition, so they are checked for shape and
    order only; a model that was traced anyway (it declares no
    ``site_distributions``) is also checked against its trace.
    """
    names = list(tables)
    position = {name: i for i, name in enumerate(names)}
    if set(parents) != set(names) or (info.traced and info.names != names):
        raise UnsupportedModelError(
            f"the model's discrete_tables() name {names}, but its run samples "
            f"{info.names if info.traced else sorted(parents)}; they must agree, in sampling order"
        )
    support, cpt, dtypes = {}, {}, {}
    for name in names:
        table = torch.as_tensor(tables[name], dtype=torch.float64)
        pa = tuple(parents[name])
        distribution = info.distribution(name)
        if distribution != "Categorical" or any(position.get(p, len(names)) >= position[name] for p in pa):
            raise UnsupportedModelError(
                f"discrete_tables() describes site {name!r} as a Categorical after its parents {pa}, but the "
                f"model samples it as {distribution} at position {position[name]}"
            )
        expected = tuple(cpt[p].shape[-1] for p in pa) + (table.shape[-1],)
        if info.traced:
            expected = expected[:-1] + (base_distribution(info.sites[name].fn).probs.shape[-1],)
        if tuple(table.shape) != expected:
            raise UnsupportedModelError(
                f"discrete_tables() gives site {name!r} a table of shape {tuple(table.shape)}; its parents' "
                f"and its own state counts need {expected}"
            )
        support[name] = torch.arange(table.shape[-1], dtype=torch.float64)
        cpt[name] = table
        # A Categorical site's values are positions.
        dtypes[name] = torch.int64
    return DiscreteNetwork(names=names, parents={n: tuple(parents[n]) for n in names}, support=support, cpt=cpt,
                           dtypes=dtypes)


class _Stop(Exception):
    pass


class _Tabulate(Messenger):
    """Force every site with a known support; read each block's site off its own particles.

    ``blocks[name] = (start, stop)``: the particles in which ``name``'s parents
    run through their joint configurations. A deterministic site whose
    support is not known yet is left to the model (its value is recorded);
    the run stops after the last block's site.
    """

    def __init__(self, forced: dict, blocks: dict, stop: str, total: int):
        super().__init__()
        self.total = total
        self.forced = forced
        self.blocks = blocks
        self.stop = stop
        self.tables: dict = {}

    def _pyro_sample(self, msg):
        name = msg["name"]
        if isinstance(msg["fn"], _Subsample):
            return
        block = self.blocks.get(name)
        if block is not None:
            self.tables[name] = _block_table(msg["fn"], msg["value"], *block, self.total)
        value = self.forced.get(name)
        if value is not None:
            msg["value"] = value
            msg["is_observed"] = True

    def _pyro_post_sample(self, msg):
        if msg["name"] == self.stop:
            raise _Stop


def _block_table(d, value, start: int, stop: int, total: int):
    """``("values", tensor)`` of a deterministic site, or ``("pmf", support, (rows, K) pmf)`` over a block."""
    base = base_distribution(d)
    rows = stop - start
    if isinstance(base, pyro.distributions.Delta):
        # A value computed from no forced parent has no particle dimension.
        value = torch.as_tensor(value).reshape(-1)
        return ("values", value.expand(total)[start:stop] if value.numel() == 1 else value[start:stop])
    if isinstance(base, tdist.Categorical):
        probs = base.probs
        k = probs.shape[-1]
        probs = probs.reshape(-1, k)
        table = probs.expand(rows, k) if probs.shape[0] == 1 else probs[start:stop]
        return ("pmf", torch.arange(k, dtype=torch.float64), table.to(torch.float64))
    support, _ = discrete_table(base)
    shaped = support.reshape((-1,) + (1,) * len(base.batch_shape))
    pmf = log_prob(base, shaped).exp().reshape(support.numel(), -1)
    table = pmf.expand(support.numel(), rows) if pmf.shape[1] == 1 else pmf[:, start:stop]
    return ("pmf", support.to(torch.float64), table.T.to(torch.float64))


def _from_runs(info, model, limit: int) -> DiscreteNetwork:
    """Tabulate every site in a few vectorised model runs (see the module docstring)."""
    names = list(info.names)
    parents = info.parents()
    dtypes = {name: info.sites[name].example.dtype for name in names}
    support: dict = {}
    # Stochastic supports do not depend on the parents (each is checked against
    # its own block below); a float64 trace gives them in double precision.
    with float64(), torch.random.fork_rng(), torch.no_grad(), pyro.validation_enabled(False):
        torch.manual_seed(0)
        trace = pyro.poutine.trace(model).get_trace()
    # Forced values take the dtypes of a float64 run, so that the model's arithmetic stays in double.
    run_dtypes = {name: trace.nodes[name]["value"].dtype for name in names}
    for name in names:
        if not info.sites[name].deterministic:
            support[name] = discrete_table(trace.nodes[name]["fn"])[0].to(torch.float64)
    cpt: dict = {}
    # A run holds one forced value per site and particle and one site's table at a time.
    widest = max(len(names), max((s.numel() for s in support.values()), default=1))
    capacity = max(1, limit // (_ENTRY_BYTES * widest))
    while len(cpt) < len(names):
        ready = [name for name in names if name not in cpt and all(p in support for p in parents[name])]
        for batch in _batches(ready, parents, support, capacity, limit, len(names)):
            _run_blocks(model, names, batch, parents, support, run_dtypes, cpt)
    return DiscreteNetwork(names=names, parents=parents, support=support, cpt=cpt, dtypes=dtypes)


def _batches(ready, parents, support, capacity: int, limit: int, sites: int):
    """Split the ready sites into runs of at most ``capacity`` particles (one block at least)."""
    batch, used = [], 0
    for name in ready:
        rows = math.prod(support[p].numel() for p in parents[name])
        entries = rows * max(sites, support[name].numel() if name in support else 1)
        if entries * _ENTRY_BYTES > limit:
            error = _too_large(f"the table of site {name!r} ({len(parents[name])} parents, {rows:,} "
                               "configurations) and the model run that fills it", entries, limit)
            error._table_limit = True
            raise error
        if batch and used + rows > capacity:
            yield batch
            batch, used = [], 0
        batch.append(name)
        used += rows
    if batch:
        yield batch


def _run_blocks(model, names, batch, parents, support, dtypes, cpt) -> None:
    blocks, start = {}, 0
    for name in batch:
        rows = math.prod(support[p].numel() for p in parents[name])
        blocks[name] = (start, start + rows)
        start += rows
    total = start
    forced = {}
    for name in names:
        if name not in support:
            continue
        # The first support value where a site is no parent of the block's site: any valid value does.
        values = support[name][:1].expand(total).clone()
        forced[name] = values
    for name, (begin, end) in blocks.items():
        pa = parents[name]
        if not pa:
            continue
        grids = torch.meshgrid(*[support[p] for p in pa], indexing="ij")
        for p, grid in zip(pa, grids, strict=True):
            forced[p][begin:end] = grid.reshape(-1)
    forced = {name: value.to(dtypes[name]) for name, value in forced.items()}
    last = max(batch, key=names.index)
    tabulate = _Tabulate(forced, blocks, last, total)
    with float64(), torch.no_grad(), pyro.validation_enabled(False), tabulate, pyro.plate("_bd_grid", total, dim=-1):
        try:
            model()
        except _Stop:
            pass
    for name in batch:
        shape = tuple(support[p].numel() for p in parents[name])
        kind, *content = tabulate.tables[name]
        if kind == "values":
            values = content[0]
            support[name] = torch.unique(values).to(torch.float64) if values.is_floating_point() else torch.unique(values)
            index = torch.searchsorted(support[name], values.to(support[name].dtype))
            table = torch.nn.functional.one_hot(index, support[name].numel()).to(torch.float64)
        else:
            block_support, table = content
            if not torch.equal(block_support, support[name]):
                raise UnsupportedModelError(
                    f"the support of site {name!r} changes with its parents ({support[name].tolist()} in one "
                    f"run, {block_support.tolist()} in another); backend 'exact' needs a fixed support. "
                    "Use backend='importance'"
                )
            table = table.clamp(min=0)
        cpt[name] = table.reshape(shape + (support[name].numel(),))


def _as_numpy(tensor) -> numpy.ndarray:
    if isinstance(tensor, numpy.ndarray):
        return tensor
    return tensor.detach().to(torch.float64).numpy()


#: A pairwise product over more joint entries than this runs in torch (see ``_contract``).
_TORCH_ENTRIES = 2**16
_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class _Expression:
    """A contraction as pairwise products, found once per query pattern.

    ``steps[i] = (left, right, subscripts, large)``: the einsum of live
    tables ``left`` and ``right`` (indices into the inputs, then earlier
    steps' results; ``right`` is None for a sum over one table). Summing out
    a variable multiplies the tables that hold it, smallest first, and sums
    it at the last product. ``output`` is the live table holding the result
    over the kept variables (None: the empty product, 1); ``largest`` is the
    largest table built, in entries, and ``cost`` the joint entries visited.
    A step whose ``large`` is ``"sum"`` sums one table over the axes in its
    third field.
    """

    steps: list
    output: int | None
    largest: int
    cost: int = 0


#: Above this many multiply-adds a second elimination order (min-fill) is worth planning.
_SECOND_ORDER_COST = 1e7


def _expression(scopes: list, sizes: dict, keep: tuple, limit: int) -> _Expression:
    """The cheaper of the min-weight and, for large contractions, the min-fill elimination orders.

    Cheaper: fewer entries visited, among the orders whose tables fit the limit.
    """
    first = _eliminate(scopes, sizes, keep, "weight")
    if first.cost <= _SECOND_ORDER_COST:
        return first
    second = _eliminate(scopes, sizes, keep, "fill")
    return min(first, second, key=lambda e: (e.largest * _ENTRY_BYTES > limit, e.cost))


def _eliminate(scopes: list, sizes: dict, keep: tuple, heuristic: str) -> _Expression:
    """Plan the contraction of tables with label ``scopes`` onto ``keep`` by greedy variable elimination.

    Each elimination sums out the variable whose elimination builds the
    smallest table (the product of its neighbours' sizes in the interaction
    graph: the min-weight heuristic) or adds the least weight of new edges
    between its neighbours (min-fill); the neighbour sets are updated as
    variables go, so planning costs about the number of variables times
    their degree (squared for min-fill).
    """
    holders: dict = {}
    for i, scope in enumerate(scopes):
        for label in scope:
            holders.setdefault(label, set()).add(i)
    neighbours = {label: set() for label in holders}
    for scope in scopes:
        for label in scope:
            neighbours[label].update(scope)
    for label in neighbours:
        neighbours[label].discard(label)
    kept = set(keep)

    def weight(label):
        size = math.prod(sizes[u] for u in neighbours[label])
        if heuristic == "weight":
            return size
        around = sorted(neighbours[label])
        fill = sum(sizes[a] * sizes[b] for i, a in enumerate(around) for b in around[i + 1:]
                   if b not in neighbours[a])
        return (fill, size)

    def volume(scope):
        return math.prod(sizes[u] for u in scope)

    heap = [(weight(label), label) for label in holders if label not in kept]
    heapq.heapify(heap)
    current = {label: w for w, label in heap}
    live = {i: tuple(scope) for i, scope in enumerate(scopes)}
    steps: list = []
    largest = max((volume(scope) for scope in scopes), default=1)
    cost = 0

    def emit(left, right, out):
        nonlocal largest, cost
        scopes_in = [live.pop(left)] + ([live.pop(right)] if right is not None else [])
        joint = set().union(*scopes_in)
        cost += volume(joint)
        if right is None and len(set(scopes_in[0])) == len(scopes_in[0]) and \
                tuple(label for label in scopes_in[0] if label in out) == tuple(out):
            # A plain sum over axes: one numpy reduction, far cheaper than an einsum.
            steps.append((left, None, tuple(i for i, label in enumerate(scopes_in[0]) if label not in out), "sum"))
        else:
            steps.append((left, right, _subscripts(scopes_in, out), volume(joint) > _TORCH_ENTRIES))
        largest = max(largest, volume(out))
        index = len(scopes) + len(steps) - 1
        live[index] = out
        return index

    while heap:
        w, label = heapq.heappop(heap)
        if current.get(label) != w:
            continue  # a stale entry: the weight changed after it was pushed
        del current[label]
        operands = sorted(holders.pop(label), key=lambda i: volume(live[i]))
        # Variables held by these tables alone go in the same step: summing them
        # only ever shrinks the result.
        merged = set(operands)
        private = [u for u in neighbours[label] if u not in kept and holders[u] <= merged]
        for u in private:
            del current[u], holders[u]
            neighbours.pop(u)
        for u in neighbours[label].difference(private):
            neighbours[u].difference_update(private)
        scope = tuple(sorted(neighbours.pop(label).difference(private)))
        if len(operands) == 1:
            result = emit(operands[0], None, scope)
        else:
            result = operands[0]
            for j, other in enumerate(operands[1:]):
                last = j == len(operands) - 2
                result = emit(result, other, scope if last else tuple(sorted(set(live[result]) | set(live[other]))))
        for u in scope:
            holders[u].difference_update(operands)
            holders[u].add(result)
            neighbours[u].update(scope)
            neighbours[u].discard(u)
            neighbours[u].discard(label)
            if u not in kept:
                current[u] = weight(u)
                heapq.heappush(heap, (current[u], u))
    # What is left holds kept variables only: multiply it onto the kept order.
    rest = sorted(live, key=lambda i: volume(live[i]))
    if not rest:
        return _Expression(steps, None, largest, cost)
    result = rest[0]
    for other in rest[1:]:
        result = emit(result, other, tuple(sorted(set(live[result]) | set(live[other]))))
    if live[result] != tuple(keep):
        result = emit(result, None, tuple(keep))
    return _Expression(steps, result, largest, cost)


def _subscripts(scopes: list, output: tuple) -> str:
    letters: dict = {}
    for scope in (*scopes, output):
        for label in scope:
            if label not in letters:
                letters[label] = _LETTERS[len(letters)] if len(letters) < len(_LETTERS) else None
    if None in letters.values():
        # A product over more than 52 variables: its table would be far beyond any memory limit.
        raise UnsupportedModelError("backend 'exact' cannot contract a step over more than 52 variables; "
                                    "use backend='importance'")
    inputs = ",".join("".join(letters[label] for label in scope) for scope in scopes)
    return f"{inputs}->{''.join(letters[label] for label in output)}"


def _contract(expression: _Expression, tensors: list) -> numpy.ndarray:
    live = list(tensors)
    for left, right, subscripts, large in expression.steps:
        arguments = [live[left]] if right is None else [live[left], live[right]]
        if large == "sum":
            live.append(arguments[0].sum(axis=subscripts))
        elif large:
            # Large products with shared batch indices are batched matrix
            # products in torch but slow loops in numpy's einsum.
            live.append(torch.einsum(subscripts, *(torch.from_numpy(numpy.ascontiguousarray(a))
                                                   for a in arguments)).numpy())
        else:
            live.append(numpy.einsum(subscripts, *arguments))
    if expression.output is None:
        return numpy.ones(())
    return numpy.asarray(live[expression.output])


def _coupling(network: DiscreteNetwork, name: str, affected_parents: tuple, limit: int) -> numpy.ndarray:
    """Joint ``P(x = k, x' = k')`` of a site and its counterfactual copy.

    Axes: the unaffected parents (shared by both worlds), the affected
    parents' factual values, their counterfactual values, then ``k`` and
    ``k'``. Cached per site and set of affected parents, within a total of
    one table limit.
    """
    cache = network.derived("couplings", OrderedDict)
    key = (name, affected_parents)
    found = cache.get(key)
    if found is not None:
        cache.move_to_end(key)
        return found
    parents = network.parents[name]
    cpt = network.numpy_cpt(name)
    shared = [i for i, p in enumerate(parents) if p not in affected_parents]
    moved = [i for i, p in enumerate(parents) if p in affected_parents]
    shared_sizes = [cpt.shape[i] for i in shared]
    moved_sizes = [cpt.shape[i] for i in moved]
    k = cpt.shape[-1]
    u, a = math.prod(shared_sizes), math.prod(moved_sizes)
    entries = u * a * a * k * k
    if entries * _ENTRY_BYTES > limit:
        error = _too_large(f"the twin-network coupling table of site {name!r}", entries, limit)
        raise error
    high = numpy.cumsum(cpt.transpose(shared + moved + [cpt.ndim - 1]).reshape(u, a, k), axis=-1)
    low = numpy.concatenate([numpy.zeros((u, a, 1)), high[:, :, :-1]], axis=-1)
    joint = numpy.minimum(high[:, :, None, :, None], high[:, None, :, None, :])
    joint -= numpy.maximum(low[:, :, None, :, None], low[:, None, :, None, :])
    numpy.maximum(joint, 0.0, out=joint)
    joint = joint.reshape(tuple(shared_sizes) + tuple(moved_sizes) * 2 + (k, k))
    cache[key] = joint
    total = sum(table.size for table in cache.values()) * _ENTRY_BYTES
    while total > limit and len(cache) > 1:
        _, dropped = cache.popitem(last=False)
        total -= dropped.size * _ENTRY_BYTES
    return joint


@dataclass
class _Factor:
    """One table of a query: where it comes from and its variable labels (before slicing)."""

    source: tuple  # ("cpt", name) | ("coupling", name, affected parents) | ("query",) | ("condition",)
    labels: tuple
    #: Positions of clamped labels and the clamped variable each holds.
    clamps: tuple = ()
    sliced: tuple = ()
    may_vanish: bool = True


@dataclass
class _Group:
    factors: list
    keep: tuple
    expression: _Expression | None = None


@dataclass
class _Plan:
    """How to answer one query pattern: the kept tables, grouped by connected part."""

    clamped: dict  # label -> ("do" | "evidence", site)
    main: _Group
    rests: list
    scalars: list
    world_label: dict
    factual_label: dict


#: Plans kept per network.
_MAX_PLANS = 256


def _plan(problem: Problem, network: DiscreteNetwork, query_read: tuple, condition_read: tuple | None,
          limit: int) -> _Plan:
    key = (problem.counterfactual, frozenset(problem.do), frozenset(problem.evidence), query_read, condition_read,
           limit)
    plans = network.derived("plans", OrderedDict)
    plan = plans.get(key)
    if plan is not None:
        plans.move_to_end(key)
        return plan
    plan = plans[key] = _build_plan(problem, network, query_read, condition_read, limit)
    if len(plans) > _MAX_PLANS:
        plans.popitem(last=False)
    return plan


def _build_plan(problem, network, query_read, condition_read, limit) -> _Plan:
    names, parents = network.names, network.parents
    n = len(names)
    factual_label = network.position
    do = set(problem.do)
    if problem.counterfactual:
        affected = network.descendants(do)
        world_label = {name: factual_label[name] + (n if name in affected else 0) for name in names}
        clamped = {factual_label[name]: ("evidence", name) for name in problem.evidence}
        clamped.update({world_label[name]: ("do", name) for name in do})
    else:
        affected = frozenset()
        world_label = factual_label
        clamped = {factual_label[name]: ("evidence", name) for name in problem.evidence}
        clamped.update({factual_label[name]: ("do", name) for name in do})
    graph = _dependencies(network, frozenset(do), problem.counterfactual)
    targets = {world_label[name] for name in query_read} | {factual_label[name] for name in problem.evidence}
    if condition_read is not None:
        targets |= {factual_label[name] for name in condition_read}
    needed = set(targets)
    for target in targets:
        needed |= nx.ancestors(graph, target)

    def cpt_labels(name, label):
        return tuple(label[p] for p in parents[name]) + (label[name],)

    factors = []
    for name in names:
        fact = factual_label[name]
        if name not in affected:
            if fact in needed and not (name in do and not problem.counterfactual):
                factors.append(_Factor(("cpt", name), cpt_labels(name, factual_label)))
            continue
        if name in do:
            if fact in needed:
                factors.append(_Factor(("cpt", name), cpt_labels(name, factual_label)))
            continue
        twin = world_label[name]
        if fact in needed:
            moved = tuple(p for p in parents[name] if p in affected)
            labels = (tuple(factual_label[p] for p in parents[name] if p not in affected)
                      + tuple(factual_label[p] for p in moved) + tuple(world_label[p] for p in moved) + (fact, twin))
            factors.append(_Factor(("coupling", name, moved), labels))
        elif twin in needed:
            factors.append(_Factor(("cpt", name), cpt_labels(name, world_label)))
    query_factor = _Factor(("query",), tuple(world_label[name] for name in query_read))
    factors.append(query_factor)
    if condition_read is not None:
        factors.append(_Factor(("condition",), tuple(factual_label[name] for name in condition_read)))
    for factor in factors:
        factor.clamps = tuple((i, label) for i, label in enumerate(factor.labels) if label in clamped)
        factor.sliced = tuple(label for label in factor.labels if label not in clamped)
        if factor.source[0] == "cpt":
            factor.may_vanish = bool(network.derived(("has_zero", factor.source[1]),
                                                     lambda f=factor: (network.numpy_cpt(f.source[1]) == 0).any()))
        entries = math.prod(_sizes(network, factor, n))
        if entries * _ENTRY_BYTES > limit:
            what = {"query": "the query's table", "condition": "the condition's table",
                    "coupling": f"the twin-network coupling table of site {factor.source[1]!r}"}.get(
                factor.source[0], f"the table of site {factor.source[-1]!r}")
            raise _too_large(what, entries, limit)
    # Connected parts once the clamped variables are sliced out: only the
    # query's part depends on the query; the others scale both sums alike.
    parts = _components([factor.sliced for factor in factors])
    main_part = parts.get(query_factor.sliced[0]) if query_factor.sliced else None
    main, rests, scalars = [], {}, []
    for factor in factors:
        if factor is query_factor:
            continue
        if not factor.sliced:
            scalars.append(factor)
        elif parts[factor.sliced[0]] == main_part:
            main.append(factor)
        else:
            rests.setdefault(parts[factor.sliced[0]], []).append(factor)
    main_group = _Group(main, tuple(dict.fromkeys(query_factor.sliced)))
    main_group.expression = _group_expression(network, main_group, n, limit) if main else None
    rest_groups = []
    for group_factors in rests.values():
        group = _Group(group_factors, ())
        # Only a part that can vanish needs its sum, to detect impossible evidence.
        if any(factor.may_vanish for factor in group_factors):
            group.expression = _group_expression(network, group, n, limit)
        rest_groups.append(group)
    return _Plan(clamped=clamped, main=main_group, rests=rest_groups, scalars=scalars, world_label=world_label,
                 factual_label=factual_label)


def _sizes(network, factor: _Factor, n: int) -> tuple:
    return tuple(network.support[network.names[label % n]].numel() for label in factor.labels)


def _sliced_shape(network, factor: _Factor, n: int) -> tuple:
    clamped = {i for i, _ in factor.clamps}
    return tuple(size for i, size in enumerate(_sizes(network, factor, n)) if i not in clamped)


def _group_expression(network, group: _Group, n: int, limit: int) -> _Expression:
    sizes = {}
    for factor in group.factors:
        sizes.update(zip(factor.sliced, _sliced_shape(network, factor, n), strict=True))
    expression = _expression([factor.sliced for factor in group.factors], sizes, group.keep, limit)
    if expression.largest * _ENTRY_BYTES > limit:
        raise _too_large("an intermediate table while contracting this query", expression.largest, limit)
    return expression


def _components(scopes: list) -> dict:
    """``{label: part}`` for the connected parts of factors with these label scopes."""
    graph = nx.Graph()
    for scope in scopes:
        graph.add_nodes_from(scope)
        graph.add_edges_from(zip(scope, scope[1:], strict=False))
    return {label: i for i, part in enumerate(nx.connected_components(graph)) for label in part}


def _dependencies(network: DiscreteNetwork, do: frozenset, counterfactual: bool) -> nx.DiGraph:
    """Which variables each table's variables depend on, for finding what a query needs.

    Interventional: the mutilated DAG (intervened sites lose their parents).
    Counterfactual: the twin network, with each coupling read as
    ``p(x' | pa') p(x | pa, pa', x')``, so that a query needing only ``x'``
    needs only the counterfactual parents.
    """

    def build():
        n = len(network.names)
        label = network.position
        graph = nx.DiGraph()
        graph.add_nodes_from(range(2 * n if counterfactual else n))
        affected = network.descendants(do) if counterfactual else frozenset()
        for name in network.names:
            parents = network.parents[name]
            fact = label[name]
            if counterfactual and name in affected and name not in do:
                twin = fact + n
                cf_parents = [label[p] + (n if p in affected else 0) for p in parents]
                graph.add_edges_from((p, twin) for p in cf_parents)
                graph.add_edges_from((p, fact) for p in [label[q] for q in parents] + cf_parents + [twin])
            elif counterfactual or name not in do:
                graph.add_edges_from((label[p], fact) for p in parents)
        return graph

    return network.derived(("dependencies", do, counterfactual), build)


#: Query tables kept per network (keys name sites and values, so the cache stays small; bound it anyway).
_MAX_QUERY_TABLES = 128


def _read(query: Query, network: DiscreteNetwork) -> tuple:
    """The sites a query reads (cached per query key)."""

    def find():
        example = network.derived("example", lambda: {name: network.support[name][:1].to(network.dtypes[name])
                                                      for name in network.names})
        return tuple(query.sites_read(example))

    if query.key is None:
        return find()
    return network.derived(("read", query.key), find)


def _query_table(query: Query, network: DiscreteNetwork, read: tuple):
    """Tabulate a query over the joint support of the sites it reads (cached per query key)."""
    if query.key is None:
        return _tabulate(query, network, read)
    tables = network.derived("query_tables", OrderedDict)
    cached = tables.get(query.key)
    if cached is None:
        cached = tables[query.key] = _tabulate(query, network, read)
        if len(tables) > _MAX_QUERY_TABLES:
            tables.popitem(last=False)
    return cached


class _Grid(Mapping):
    """Site values over a query's grid: the read sites vary, every other site sits at its first value.

    Values of sites the query does not read are built only if it asks for them.
    """

    def __init__(self, network: DiscreteNetwork, values: dict, size: int):
        self._network, self._values, self._size = network, values, size

    def __getitem__(self, name):
        value = self._values.get(name)
        if value is None:
            network = self._network
            value = self._values[name] = network.support[name][:1].expand(self._size).to(network.dtypes[name])
        return value

    def __iter__(self):
        return iter(self._network.names)

    def __len__(self):
        return len(self._network.names)

    def __contains__(self, name):
        return name in self._network.position


def _tabulate(query: Query, network: DiscreteNetwork, read: tuple):
    sizes = [network.support[name].numel() for name in read]
    grids = torch.meshgrid(*[network.support[name] for name in read], indexing="ij") if read else ()
    values = {name: g.reshape(-1).to(network.dtypes[name]) for name, g in zip(read, grids, strict=False)}
    result = torch.as_tensor(query.fn(_Grid(network, values, max(1, math.prod(sizes)))))
    is_probability = query.is_probability(result)
    table = _as_numpy(result.to(torch.float64).reshape(tuple(sizes) if sizes else ()))
    return table, is_probability


@register_backend
class Exact(Backend):
    """Enumeration of discrete latents by variable elimination; exact to float precision.

    Each query prunes what it cannot depend on, and every table it builds is
    bounded by a memory limit (see :mod:`bayes_defense.inference.exact`); a
    query beyond it raises :class:`~bayes_defense.errors.UnsupportedModelError`
    in ``check``, so ``backend="auto"`` answers it by importance sampling.
    """

    name = "exact"

    def check(self, problem: Problem) -> None:
        self._prepare(problem)

    @staticmethod
    def _prepare(problem: Problem):
        network = compile_discrete(problem)
        limit = table_limit(problem)
        query_read = _read(problem.query, network)
        condition_read = None if problem.condition is None else _read(problem.condition, network)
        return network, _plan(problem, network, query_read, condition_read, limit), query_read, condition_read

    def run(self, problem: Problem):
        network, plan, query_read, condition_read = self._prepare(problem)
        index = {}
        for label, (role, name) in plan.clamped.items():
            value = problem.do[name] if role == "do" else problem.evidence[name]
            index[label] = network.value_index(name, value, role)
        query_table, is_probability = _query_table(problem.query, network, query_read)
        condition_table = None
        if condition_read is not None:
            condition_table = _query_table(problem.condition, network, condition_read)[0]

        def tensor(factor: _Factor):
            kind = factor.source[0]
            if kind == "cpt":
                table = network.numpy_cpt(factor.source[1])
            elif kind == "coupling":
                table = _coupling(network, factor.source[1], factor.source[2], table_limit(problem))
            elif kind == "condition":
                table = condition_table
            else:
                table = query_table
            if not factor.clamps:
                return table
            selection = [slice(None)] * table.ndim
            for i, label in factor.clamps:
                selection[i] = index[label]
            return table[tuple(selection)]

        for factor in plan.scalars:
            if float(tensor(factor)) <= 0.0:
                self._impossible(problem)
        for group in plan.rests:
            tensors = [tensor(factor) for factor in group.factors]
            if group.expression is not None and not all(bool((t > 0).all()) for t in tensors):
                if float(_contract(group.expression, tensors)) <= 0.0:
                    self._impossible(problem)
        query_values = self._sliced_query(query_table, query_read, plan, index)
        if plan.main.expression is None:
            marginal = numpy.ones(query_values.shape)
        else:
            marginal = _contract(plan.main.expression, [tensor(factor) for factor in plan.main.factors])
        # One contraction gives both sums: the marginal over the sites the
        # query reads, which the query table then weights.
        normaliser = float(marginal.sum())
        if normaliser <= 0.0:
            self._impossible(problem)
        value = float((marginal * query_values).sum()) / normaliser
        if is_probability:
            value = min(1.0, max(0.0, value))
        return exact_estimate(value, is_probability=is_probability, level=problem.level, backend=self.name)

    @staticmethod
    def _sliced_query(query_table, query_read, plan: _Plan, index: dict) -> numpy.ndarray:
        """The query's table with clamped sites fixed and repeated labels collapsed to the kept order."""
        labels = [plan.world_label[name] for name in query_read]
        selection = tuple(index[label] if label in plan.clamped else slice(None) for label in labels)
        return query_table[selection] if labels else query_table

    @staticmethod
    def _impossible(problem: Problem):
        raise ImpossibleEvidenceError(
            "the evidence has probability zero under the model"
            f"{' and the intervention' if problem.do and not problem.counterfactual else ''}: "
            f"{ {k: float(v) for k, v in problem.evidence.items()} }"
        )

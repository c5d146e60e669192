"""What a model is made of: its sites, their shapes and plates, and its causal graph.

A model is traced once from the prior and the result is cached per model
object, so repeated queries on one model do not pay for discovery again.
Models must be pure: for one model object the set of sites, their order and
their distribution families must not change between runs (the usual
requirement of vectorised Pyro inference). Backends also cache what they
compile from a model object (the exact backend's tables, which the
importance backend reuses on discrete models, and the analytic backend's
coefficients), so a model's parameters must not change between queries
either: build a new model object (for example a new closure) instead. Parents are found by provenance
tracking (``pyro.ops.provenance``), as in ``pyro.infer.inspect``.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import networkx as nx
import pyro
import torch
from pyro import poutine
from pyro.infer.inspect import TrackProvenance
from pyro.ops.provenance import detach_provenance, get_provenance

from bayes_defense.causal.noise import World, _strip, is_deterministic, is_discrete
from bayes_defense.errors import InvalidInputError, UnknownSiteError

__all__ = ["SiteInfo", "ModelInfo", "model_info", "float64"]


@contextlib.contextmanager
def float64():
    """Run a block with float64 as torch's default dtype (restored afterwards).

    Compiling exact tables or linear-Gaussian coefficients from a model
    written with Python float constants then keeps double precision.
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@dataclass(frozen=True)
class SiteInfo:
    """Static facts about one sample site."""

    name: str
    distribution: str
    shape: torch.Size
    discrete: bool
    deterministic: bool
    observed: bool
    plates: tuple
    example: object = field(compare=False, repr=False)
    fn: object = field(compare=False, repr=False, default=None)
    event_dim: int = 0

    @property
    def scalar(self) -> bool:
        return len(self.shape) == 0 and not self.plates


@dataclass
class ModelInfo:
    """Sites, plates and graph of one model (see :func:`model_info`)."""

    sites: dict
    max_plate_nesting: int
    _parents: dict | None = None
    cache: dict = field(default_factory=dict)
    model_ref: Callable | None = None

    @property
    def names(self) -> list[str]:
        return list(self.sites)

    def parents(self) -> dict[str, tuple[str, ...]]:
        """Direct causes of every site, in execution order."""
        if self._parents is None:
            self._parents = _find_parents(self.model_ref(), list(self.sites))
        return self._parents

    def graph(self) -> nx.DiGraph:
        """The causal DAG as a networkx graph (an edge per direct cause)."""
        graph = nx.DiGraph()
        graph.add_nodes_from(self.sites)
        for child, parents in self.parents().items():
            graph.add_edges_from((parent, child) for parent in parents)
        return graph

    def descendants(self, roots) -> set[str]:
        """The roots and every site downstream of them."""
        graph = self.graph()
        out = set(roots)
        for root in roots:
            out |= nx.descendants(graph, root)
        return out

    def check_names(self, mapping: Mapping | None, role: str) -> dict:
        """Validate that ``mapping`` is a dict over known site names; return a copy."""
        if mapping is None:
            return {}
        if not isinstance(mapping, Mapping):
            raise InvalidInputError(
                f"{role} must be a dict {{site_name: value}}; got {type(mapping).__name__}. "
                f"Sites of this model: {', '.join(self.sites)}"
            )
        unknown = [name for name in mapping if name not in self.sites]
        if unknown:
            raise UnknownSiteError(
                f"{role} names {', '.join(map(repr, unknown))}, which the model does not have; "
                f"its sites are: {', '.join(self.sites)}"
            )
        return dict(mapping)


_CACHE: weakref.WeakKeyDictionary[Callable, ModelInfo] = weakref.WeakKeyDictionary()


def model_info(model: Callable) -> ModelInfo:
    """Trace ``model`` once from the prior and describe it (cached per model).

    Parameters
    ----------
    model : callable
        A Pyro model taking no arguments (bind arguments with
        ``functools.partial``).

    Returns
    -------
    ModelInfo

    Examples
    --------
    >>> import pyro, pyro.distributions as dist
    >>> from bayes_defense.causal.structure import model_info
    >>> def model():
    ...     x = pyro.sample("x", dist.Bernoulli(0.5))
    ...     pyro.sample("y", dist.Normal(x, 1.0))
    >>> info = model_info(model)
    >>> info.names, info.parents()["y"]
    (['x', 'y'], ('x',))
    """
    if not callable(model):
        raise InvalidInputError(f"model must be a callable Pyro model; got {type(model).__name__}")
    try:
        cached = _CACHE.get(model)
    except TypeError:
        cached = None
    if cached is not None:
        return cached
    with torch.random.fork_rng(), torch.no_grad(), pyro.validation_enabled(False):
        torch.manual_seed(0)
        world = World(require_noise=False)
        with world, poutine.trace() as tracer:
            model()
    trace = tracer.trace
    sites = {}
    max_nesting = 0
    for name in world.order:
        node = trace.nodes[name]
        d = node["fn"]
        plates = tuple(
            (frame.name, frame.dim, frame.size) for frame in node["cond_indep_stack"] if frame.vectorized
        )
        if plates:
            max_nesting = max(max_nesting, max(-dim for _, dim, _ in plates))
        value = world.values[name]
        sites[name] = SiteInfo(
            name=name,
            distribution=type(d).__name__,
            shape=value.shape,
            discrete=is_discrete(d),
            deterministic=is_deterministic(d),
            observed=bool(node["is_observed"]) and name not in world.do,
            plates=plates,
            example=value,
            fn=d,
            event_dim=len(d.event_shape),
        )
    if not sites:
        raise InvalidInputError("the model has no pyro.sample sites; there is nothing to query")
    info = ModelInfo(sites=sites, max_plate_nesting=max_nesting)
    try:
        info.model_ref = weakref.ref(model)
        _CACHE[model] = info
    except TypeError:
        info.model_ref = lambda: model
    return info


def _find_parents(model: Callable, order: list[str]) -> dict[str, tuple[str, ...]]:
    """Direct parents of each site by provenance tracking through one prior run."""
    with torch.random.fork_rng(), torch.no_grad(), pyro.validation_enabled(False):
        torch.manual_seed(0)
        with TrackProvenance(include_deterministic=True):
            trace = poutine.trace(model).get_trace()
    position = {name: i for i, name in enumerate(order)}
    parents = {}
    for name in order:
        node = trace.nodes[name]
        if is_deterministic(node["fn"]):
            # pyro.deterministic wraps a masked Delta whose log_prob carries no
            # provenance; its value v was computed from the parents and does.
            provenance = get_provenance(_strip(node["fn"]).v)
        else:
            provenance = get_provenance(node["fn"].log_prob(detach_provenance(node["value"])))
        found = [p for p in provenance if p in position and position[p] < position[name]]
        parents[name] = tuple(sorted(found, key=position.__getitem__))
    return parents

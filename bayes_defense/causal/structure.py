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

from bayes_defense.causal.noise import World, base_distribution, is_deterministic, is_discrete
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


class ModelInfo:
    """Sites, plates and graph of one model (see :func:`model_info`).

    A model object may declare its sites as an attribute ``site_distributions``,
    ``{site name: distribution class name}`` in any order (the cluster model
    does). Its names are then checked against the declaration, and the model
    is traced only when a backend first reads :attr:`sites`, so a backend
    that does not need the trace (the cluster engine) never pays for it. A
    model with a method ``unknown_site_message(name, role)`` words the error
    for a name it does not have.
    """

    def __init__(self, sites: dict | None = None, max_plate_nesting: int = 0, *,
                 model_ref: Callable | None = None, declared: Mapping | None = None):
        self._sites = sites
        self._max_plate_nesting = max_plate_nesting
        self._declared = declared
        self._parents: dict | None = None
        self.cache: dict = {}
        self.model_ref = model_ref

    def _traced(self) -> None:
        if self._sites is None:
            self._sites, self._max_plate_nesting = _trace_sites(self.model_ref())

    @property
    def traced(self) -> bool:
        """Whether the model has been traced (always, unless it declares ``site_distributions``)."""
        return self._sites is not None

    @property
    def sites(self) -> dict:
        """``{name: SiteInfo}`` in execution order (traced on first use)."""
        self._traced()
        return self._sites

    @property
    def max_plate_nesting(self) -> int:
        self._traced()
        return self._max_plate_nesting

    @property
    def names(self) -> list[str]:
        return list(self.sites)

    def _known(self) -> Mapping:
        return self._declared if self._sites is None and self._declared is not None else self.sites

    def distribution(self, name: str) -> str:
        """The distribution class name of site ``name`` (from the declaration when there is one)."""
        if self._sites is None and self._declared is not None:
            return self._declared[name]
        return self.sites[name].distribution

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
        known = self._known()
        if not isinstance(mapping, Mapping):
            raise InvalidInputError(
                f"{role} must be a dict {{site_name: value}}; got {type(mapping).__name__}. "
                f"Sites of this model: {', '.join(known)}"
            )
        unknown = [name for name in mapping if name not in known]
        if unknown:
            # A model that describes its own sites (the cluster model) says what is valid in its terms.
            describe = getattr(self.model_ref(), "unknown_site_message", None) if self.model_ref else None
            if describe is not None:
                raise UnknownSiteError(describe(unknown[0], role))
            raise UnknownSiteError(
                f"{role} names {', '.join(map(repr, unknown))}, which the model does not have; "
                f"its sites are: {', '.join(known)}"
            )
        return dict(mapping)


_CACHE: weakref.WeakKeyDictionary[Callable, ModelInfo] = weakref.WeakKeyDictionary()


def model_info(model: Callable) -> ModelInfo:
    """Describe ``model``: its sites from one prior trace (cached per model).

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
    declared = getattr(model, "site_distributions", None)
    if declared is not None and not isinstance(declared, Mapping):
        raise InvalidInputError(f"model.site_distributions must be a mapping {{site: distribution name}}; "
                                f"got {type(declared).__name__}")
    try:
        reference = weakref.ref(model)
    except TypeError:
        reference = lambda: model  # noqa: E731
    if declared is not None:
        info = ModelInfo(model_ref=reference, declared=declared)
    else:
        sites, max_nesting = _trace_sites(model)
        info = ModelInfo(sites, max_nesting, model_ref=reference)
    try:
        _CACHE[model] = info
    except TypeError:
        pass
    return info


def _trace_sites(model: Callable) -> tuple[dict, int]:
    """``({name: SiteInfo}, max plate nesting)`` from one prior run under :class:`World`."""
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
    return sites, max_nesting


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
            provenance = get_provenance(base_distribution(node["fn"]).v)
        else:
            provenance = get_provenance(node["fn"].log_prob(detach_provenance(node["value"])))
        found = [p for p in provenance if p in position and position[p] < position[name]]
        parents[name] = tuple(sorted(found, key=position.__getitem__))
    return parents

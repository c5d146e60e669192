"""The backend extension point: a query description and one registry of backends.

A backend answers a :class:`Problem`: an interventional query (mutilated model
conditioned on evidence) or a counterfactual one (abduction of the exogenous
noise given factual evidence, action, prediction). Each backend is a small
class registered by name; ``backend="auto"`` picks ``cluster_engine`` (the
cluster model's own engine), ``exact`` or ``analytic`` where they apply and
``importance`` otherwise. Several queries sharing one problem's do and
evidence (a list given to ``bd.intervene``) reach a backend through
:meth:`Backend.check_many` and :meth:`Backend.run_many`, which answer them
one by one unless a backend shares work across them.

A complete minimal backend, plain prior sampling for interventional queries
without evidence::

    >>> import pyro, pyro.distributions as dist, torch
    >>> from pyro import poutine
    >>> import bayes_defense as bd
    >>> from bayes_defense.inference import Backend, register_backend
    >>> from bayes_defense.causal.noise import World
    >>> from bayes_defense.estimate import weighted_estimate
    >>> @register_backend
    ... class PriorSampling(Backend):
    ...     name = "prior_sampling_example"
    ...     def check(self, problem):
    ...         if problem.counterfactual or problem.evidence:
    ...             raise bd.UnsupportedModelError("prior sampling has no evidence; use 'importance'")
    ...     def run(self, problem):
    ...         world = problem.run_world(do=problem.do)
    ...         values = problem.query.evaluate(problem.view(world.values))
    ...         return weighted_estimate(values, None, is_probability=problem.query.is_probability(values),
    ...                                  level=problem.level, backend=self.name)
    >>> def model():
    ...     x = pyro.sample("x", dist.Bernoulli(0.5))
    ...     pyro.sample("y", dist.Bernoulli(0.1 + 0.8 * x))
    >>> est = bd.intervene(model, {"x": 1.0}, "y", backend="prior_sampling_example", seed=0)
    >>> abs(est.mean - 0.9) < 0.02
    True
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import pyro
import torch
from pyro.poutine.broadcast_messenger import BroadcastMessenger
from pyro.poutine.plate_messenger import PlateMessenger
from pyro.poutine.subsample_messenger import SubsampleMessenger

from bayes_defense.causal.noise import World
from bayes_defense.causal.structure import ModelInfo
from bayes_defense.errors import InvalidInputError, UnsupportedModelError

__all__ = ["Backend", "Problem", "Query", "register_backend", "get_backend", "backends", "resolve_many",
           "SiteValues", "remember", "PLAIN_NUMBERS"]

#: The value types taken as plain numbers (checked without a tensor, hashable as cache keys).
PLAIN_NUMBERS = frozenset({int, float, bool})
# Entries a per-model cache of checked query pieces keeps (patterns of names, queries).
_PATTERN_ENTRIES = 1024
# The entry of a model's cache (``ModelInfo.cache``) holding the queries :func:`make_query` built.
_QUERIES = "queries"


def remember(cache: dict, key, build: Callable, limit: int = _PATTERN_ENTRIES):
    """``cache[key]``, made by ``build()`` the first time; the oldest entry goes once ``limit`` are kept.

    Nothing is stored when ``build`` raises, so input that fails a check
    fails it again on every call.

    Examples
    --------
    >>> from bayes_defense.inference.base import remember
    >>> cache = {}
    >>> remember(cache, "a", lambda: 1), remember(cache, "a", lambda: 2)
    (1, 1)
    """
    try:
        return cache[key]
    except KeyError:
        pass
    value = build()
    if len(cache) >= limit:
        del cache[next(iter(cache))]
    cache[key] = value
    return value


class _AccessRecorder(dict):
    """A dict that remembers which keys a query reads."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.accessed: list[str] = []

    def __getitem__(self, key):
        if key not in self.accessed:
            self.accessed.append(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        if key in self:
            return self[key]
        return default

    def __iter__(self):
        for key in super().__iter__():
            if key not in self.accessed:
                self.accessed.append(key)
        return super().__iter__()

    def items(self):
        list(iter(self))
        return super().items()

    def values(self):
        list(iter(self))
        return super().values()


@dataclass(frozen=True)
class Query:
    """A quantity to estimate in one world.

    ``fn`` maps ``{site: tensor}`` (one tensor per site, leading particle
    dimension) to one value per particle. ``site`` is set when the query is a
    site's mean; ``probability`` is True, False, or None to decide from the
    dtype of the result (boolean results are probabilities). ``key`` is a
    hashable description of what the query computes (None when unknown); two
    queries with equal keys compute the same function, so backends may reuse
    tables built for one of them. A query is immutable: :func:`make_query`
    hands the same object to every call that names the same site or event.
    """

    fn: Callable
    description: str
    site: str | None = None
    probability: bool | None = None
    key: object = None

    def evaluate(self, values: dict) -> torch.Tensor:
        return torch.as_tensor(self.fn(values))

    def is_probability(self, result: torch.Tensor) -> bool:
        if self.probability is not None:
            return self.probability
        return result.dtype == torch.bool

    def sites_read(self, example: dict) -> list[str]:
        """Which sites the query reads, found by calling it on an example world."""
        if self.site is not None:
            return [self.site]
        recorder = _AccessRecorder(example)
        self.fn(recorder)
        return list(recorder.accessed)


def make_query(query, info: ModelInfo, role: str = "query") -> Query:
    """Normalise a site name, a ``{site: value}`` dict, or a callable into a :class:`Query`.

    A site name, or an event whose values are plain numbers, is checked and
    built once per model (kept in ``info.cache``); later calls get the same
    :class:`Query`. A callable is wrapped anew each time (it may read state
    that changes between queries).

    Examples
    --------
    >>> import pyro, pyro.distributions as dist
    >>> from bayes_defense.causal.structure import model_info
    >>> from bayes_defense.inference.base import make_query
    >>> def coin():
    ...     pyro.sample("x", dist.Bernoulli(0.5))
    >>> query = make_query("x", model_info(coin))
    >>> query.site, query.probability, make_query("x", model_info(coin)) is query
    ('x', True, True)
    """
    if isinstance(query, Query):
        return query
    if isinstance(query, str):
        queries = info.cache.setdefault(_QUERIES, {})
        found = queries.get(query)
        return found if found is not None else remember(queries, query, lambda: _site_query(query, info, role))
    if isinstance(query, dict):
        if all(type(value) in PLAIN_NUMBERS for value in query.values()):
            key = ("event", tuple((name, type(value), value) for name, value in query.items()))
            return remember(info.cache.setdefault(_QUERIES, {}), key, lambda: _event_query(query, info, role))
        return _event_query(query, info, role)
    if callable(query):
        # No key: a callable may read state that changes between queries.
        return Query(fn=query, description=getattr(query, "__name__", "query"))
    raise InvalidInputError(
        f"{role} must be a site name, a {{site: value}} dict or a callable on {{site: tensor}}; "
        f"got {type(query).__name__}"
    )


def _site_query(name: str, info: ModelInfo, role: str) -> Query:
    info.check_names({name: None}, role)
    return Query(
        fn=lambda values, _name=name: values[_name],
        description=f"E[{name}]",
        site=name,
        probability=info.distribution(name) == "Bernoulli",
        key=("site", name),
    )


def _event_query(query: dict, info: ModelInfo, role: str) -> Query:
    info.check_names(query, role)
    if not query:
        raise InvalidInputError(f"{role} is an empty dict; name at least one {{site: value}}")
    targets = {name: torch.as_tensor(value) for name, value in query.items()}

    def event(values, _targets=targets):
        result = None
        for name, target in _targets.items():
            value = values[name]
            match = value == target.to(value.dtype)
            match = match.reshape(match.shape[0], -1).all(-1) if match.dim() > 1 else match
            result = match if result is None else result & match
        return result

    key = ("event", tuple((name, tuple(target.reshape(-1).tolist())) for name, target in targets.items()))
    return Query(fn=event, description=" & ".join(f"{k}={v}" for k, v in query.items()), probability=True, key=key)


class _ParticlePlate(PlateMessenger):
    """``pyro.plate`` over particles that leaves an already particle-shaped distribution alone.

    The particle plate is the outermost one, so every inner plate has
    broadcast its own dimension by the time this one sees a site; a
    distribution whose batch shape already holds all particles then needs no
    ``expand``, which Pyro's plate would still build (about a tenth of a
    model run on a 50-site model).
    """

    def _process_message(self, msg) -> None:
        SubsampleMessenger._process_message(self, msg)
        shape = getattr(msg["fn"], "batch_shape", None)
        if shape is not None and len(shape) >= -self.dim and shape[self.dim] == self.size:
            return
        BroadcastMessenger._pyro_sample(msg)


class SiteValues(Mapping):
    """``{site: tensor}``, the evidence of a :class:`Problem`, with plain numbers turned into tensors when read.

    A backend that computes with plain numbers (the cluster engine, in numpy)
    reads :meth:`raw` and never pays for a tensor per observed site: a
    50-replica cluster's evidence has hundreds of them. ``plain`` says
    whether every value is a plain number (int, float or bool), as the caller
    that checked them may say (``plain=``) instead of having them looked at
    again.

    Examples
    --------
    >>> from bayes_defense.inference.base import SiteValues
    >>> values = SiteValues({"x": 1})
    >>> values.raw()["x"], values["x"].item(), values.plain
    (1, 1.0, True)
    """

    def __init__(self, values: Mapping, *, plain: bool | None = None):
        self._values = dict(values)
        self._tensors: dict = {}
        self.plain = set(map(type, self._values.values())) <= PLAIN_NUMBERS if plain is None else plain
        # The dtype in force where the values were given, as an eager conversion would have used.
        self._dtype = torch.get_default_dtype()

    def __getitem__(self, name: str) -> torch.Tensor:
        value = self._values[name]
        if isinstance(value, torch.Tensor):
            return value
        tensor = self._tensors.get(name)
        if tensor is None:
            tensor = self._tensors[name] = torch.scalar_tensor(value, dtype=self._dtype)
        return tensor

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def raw(self) -> dict:
        """``{site: float or tensor}``: the values as given, plain numbers not converted."""
        return dict(self._values)


@dataclass
class Problem:
    """Everything a backend needs to answer one query."""

    model: Callable
    info: ModelInfo
    do: dict
    evidence: dict
    query: Query
    counterfactual: bool
    num_samples: int
    level: float
    condition: Query | None = None
    options: dict = field(default_factory=dict)

    @property
    def particle_dim(self) -> int:
        return -(self.info.max_plate_nesting + 1)

    def run_world(self, *, num_particles: int | None = None, **world_kwargs) -> World:
        """Run the model once inside a particle plate under :class:`World`."""
        n = self.num_samples if num_particles is None else num_particles
        world = World(particle_dim=self.particle_dim, num_particles=n, **world_kwargs)
        # Argument validation of every distribution built inside the run costs
        # about a third of a query; evidence outside a support still gets
        # probability zero from the weights. No gradients are needed, and
        # not recording them saves a few percent per run.
        with torch.no_grad(), pyro.validation_enabled(False), world, _ParticlePlate("_bd_particles", n,
                                                                                      dim=self.particle_dim):
            self.model()
        return world

    def view(self, values: dict, num_particles: int | None = None) -> dict:
        """Reshape batched site values to ``(particles, *site_shape)`` for queries."""
        n = self.num_samples if num_particles is None else num_particles
        out = {}
        for name, value in values.items():
            shape = tuple(self.info.sites[name].shape)
            if value.numel() != n * math.prod(shape):
                # A value that did not vary across particles lacks the particle dimension.
                value = value.expand(torch.broadcast_shapes(value.shape, (n,) + (1,) * (-self.particle_dim - 1)))
            out[name] = value.reshape((n,) + shape)
        return out


class Backend:
    """Base class of inference backends; subclasses set ``name`` and implement two methods.

    ``check(problem)`` raises :class:`UnsupportedModelError` naming a backend
    that can answer when this one cannot; ``run(problem)`` returns an
    :class:`~bayes_defense.estimate.Estimate`.
    """

    name: str = ""

    def check(self, problem: Problem) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def run(self, problem: Problem):  # pragma: no cover - interface
        raise NotImplementedError

    def check_many(self, problem: Problem, queries) -> None:
        """:meth:`check` for several queries sharing ``problem``'s do, evidence and condition.

        The default checks each query in turn; a backend that shares work
        across a batch overrides it with :meth:`run_many`.
        """
        for query in queries:
            self.check(replace(problem, query=query))

    def run_many(self, problem: Problem, queries) -> list:
        """Answer several queries that share ``problem``'s do, evidence and condition: a list of estimates.

        The default answers each query in turn (the fallback for backends
        that cannot batch); :class:`~bayes_defense.inference.cluster_engine.ClusterEngine`
        answers every site marginal of a batch from one pass.
        """
        return [self.run(replace(problem, query=query)) for query in queries]


_REGISTRY: dict[str, type[Backend]] = {}
# Listing order of the built-in backends; user backends follow in registration order.
_BUILTIN_ORDER = ("exact", "importance", "svi", "nuts", "analytic", "cluster_engine")
# Backends "auto" tries in turn before importance sampling: the cluster model's engine, then the
# generic exact backend (discrete models), then closed forms (linear-Gaussian models).
_AUTO_ORDER = ("cluster_engine", "exact", "analytic")


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator adding a backend to the registry under ``cls.name``."""
    if not cls.name:
        raise InvalidInputError(f"backend class {cls.__name__} must set a non-empty `name`")
    _REGISTRY[cls.name] = cls
    return cls


def backends() -> list[str]:
    """Names accepted by ``backend=``, ``"auto"`` first.

    Examples
    --------
    >>> import bayes_defense as bd
    >>> [name for name in bd.backends() if name in ("auto", "exact", "importance", "svi", "nuts", "analytic")]
    ['auto', 'exact', 'importance', 'svi', 'nuts', 'analytic']
    """
    builtin = [name for name in _BUILTIN_ORDER if name in _REGISTRY]
    return ["auto", *builtin, *(name for name in _REGISTRY if name not in _BUILTIN_ORDER)]


def get_backend(name: str) -> Backend:
    """Instantiate a registered backend by name."""
    if name not in _REGISTRY:
        raise InvalidInputError(f"unknown backend {name!r}; choose one of: {', '.join(backends())}")
    return _REGISTRY[name]()


def resolve(problem: Problem, name: str) -> Backend:
    """Pick the backend for ``name``, resolving ``auto``; check it can answer."""
    if name == "auto":
        for candidate in _AUTO_ORDER:
            backend = get_backend(candidate)
            try:
                backend.check(problem)
            except UnsupportedModelError:
                continue
            return backend
        backend = get_backend("importance")
    else:
        backend = get_backend(name)
    backend.check(problem)
    return backend


def resolve_many(problem: Problem, queries, name: str) -> list[tuple[Backend, list[int]]]:
    """Backends for a batch of queries: ``[(backend, indices of the queries it answers), ...]``.

    A named backend answers the whole batch (or raises as :func:`resolve`
    does). ``auto`` gives each query the backend :func:`resolve` would pick
    for it alone (the first of its order that answers it), so a batch goes
    where separate queries would; a backend that answers the whole rest of
    the batch is found with one :meth:`Backend.check_many`.
    """
    indices = list(range(len(queries)))
    if name != "auto":
        backend = get_backend(name)
        backend.check_many(problem, queries)
        return [(backend, indices)]
    groups = []
    for candidate in (*_AUTO_ORDER, "importance"):
        if not indices:
            break
        backend = get_backend(candidate)
        try:
            backend.check_many(problem, queries if len(indices) == len(queries) else [queries[i] for i in indices])
            answered = indices
        except UnsupportedModelError:
            if len(indices) == 1 and candidate != "importance":
                continue
            answered = []
            for i in indices:
                try:
                    backend.check(replace(problem, query=queries[i]))
                except UnsupportedModelError:
                    if candidate == "importance":
                        raise
                    continue
                answered.append(i)
        if answered:
            groups.append((backend, answered))
            indices = [] if answered is indices else [i for i in indices if i not in answered]
    return groups


class single_threaded:  # noqa: N801 - used as a function, like contextlib.suppress
    """Run torch single-threaded inside the block, restoring the thread count afterwards.

    A query's tensors hold one value per particle (about 10^4 elements), too
    small for intra-op threads to pay for their synchronisation: on a
    two-core machine under load, importance queries on 50-node models ran
    about three times slower with two threads than with one. A class rather
    than a generator: it wraps every query, and a fast one (the cluster
    engine) answers in a tenth of a millisecond.

    Examples
    --------
    >>> import torch
    >>> from bayes_defense.inference.base import single_threaded
    >>> before = torch.get_num_threads()
    >>> with single_threaded():
    ...     inside = torch.get_num_threads()
    >>> inside, torch.get_num_threads() == before
    (1, True)
    """

    __slots__ = ("_previous",)

    def __enter__(self) -> single_threaded:
        self._previous = torch.get_num_threads()
        if self._previous != 1:
            torch.set_num_threads(1)
        return self

    def __exit__(self, *exc_info) -> bool:
        if self._previous != 1:
            torch.set_num_threads(self._previous)
        return False


def seeded(seed: int | None):
    """Seed torch's generator inside the block and restore the outer state afterwards (nothing for None)."""
    if seed is None:
        return contextlib.nullcontext()
    return _seeded(int(seed))


@contextlib.contextmanager
def _seeded(seed: int):
    # The CPU generator alone: torch.manual_seed and fork_rng also visit every
    # accelerator backend, which costs more than a small query.
    state = torch.get_rng_state()
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(state)

"""A registry of generated SCMs and the queries benchmarked on them.

Two families at 5, 20 and 50 nodes, each built from a fixed seed so every run
sees the same model:

- ``linear_gaussian``: ``x_i = b_i + sum_j w_ij x_j + s_i eps_i`` over a DAG
  whose backbone is the chain ``x_{i-1} -> x_i``, plus up to two further
  earlier parents; the absolute weights of a node sum to at most 0.8, so
  variances stay of order one at any depth;
- ``binary``: Bernoulli nodes on the same kind of DAG (up to three parents),
  each with a noisy-OR or a logistic conditional probability table.

Every case carries an interventional and a counterfactual query (intervention
on ``x01``, evidence on the last node, query on the one before), their oracle
answers (``exact`` or ``analytic``), and, for the comparison with ChiRho, the
same SCM written with explicit exogenous noise.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch

import bayes_defense as bd

FAMILIES = ("linear_gaussian", "binary")
SIZES = (5, 20, 50)
BACKENDS = ("exact", "importance", "svi", "nuts", "analytic")
NUM_PARTICLES = 10_000

# Sampling budgets that keep the slow backends to seconds per query; their
# accuracy is what the track_ benchmarks report.
BACKEND_SETTINGS = {
    "exact": {},
    "analytic": {},
    "importance": {"num_samples": NUM_PARTICLES},
    "svi": {"num_samples": 500, "options": {"num_steps": 30, "learning_rate": 0.1}},
    "nuts": {"num_samples": 30, "options": {"warmup_steps": 20, "max_tree_depth": 3}},
}


@dataclass
class SCM:
    """One generated structural causal model and the queries asked of it."""

    family: str
    nodes: int
    names: list
    parents: dict  # name -> tuple of parent names
    mechanism: dict  # name -> parameters of its conditional distribution
    model: object = None
    interventional: dict = field(default_factory=dict)
    counterfactual: dict = field(default_factory=dict)

    @property
    def oracle_backend(self) -> str:
        return "exact" if self.family == "binary" else "analytic"

    def query(self, name: str):
        """The query argument for a site: its mean, or P(site = 1) for binary models."""
        return {name: 1.0} if self.family == "binary" else name


def _graph(nodes: int, max_parents: int, rng: random.Random) -> dict:
    names = [f"x{i:02d}" for i in range(nodes)]
    parents = {names[0]: ()}
    for i in range(1, nodes):
        extra = rng.sample(range(i - 1), min(i - 1, rng.randint(0, max_parents - 1)))
        parents[names[i]] = tuple(names[j] for j in sorted([*extra, i - 1]))
    return parents


def linear_gaussian(nodes: int, seed: int = 0) -> SCM:
    """A linear-Gaussian SCM with ``nodes`` nodes and fixed seeded coefficients."""
    rng = random.Random(seed)
    parents = _graph(nodes, 3, rng)
    mechanism = {}
    for name, pa in parents.items():
        raw = [rng.choice((-1.0, 1.0)) * rng.uniform(0.5, 1.0) for _ in pa]
        total = sum(abs(w) for w in raw) or 1.0
        scale = rng.uniform(0.3, 0.8) / total
        mechanism[name] = {"intercept": rng.uniform(-0.5, 0.5), "weights": [w * scale for w in raw],
                           "scale": rng.uniform(0.5, 1.0)}

    def model():
        values = {}
        for name, pa in parents.items():
            m = mechanism[name]
            loc = m["intercept"]
            for parent, weight in zip(pa, m["weights"], strict=True):
                loc = loc + weight * values[parent]
            values[name] = pyro.sample(name, dist.Normal(loc, m["scale"]))
        return values

    names = list(parents)
    scm = SCM("linear_gaussian", nodes, names, parents, mechanism, model)
    scm.interventional = {"do": {names[1]: 1.0}, "evidence": {names[-1]: 1.5}, "query": names[-2]}
    scm.counterfactual = {"evidence": {names[0]: 0.5, names[-1]: 1.5}, "do": {names[1]: 1.0},
                          "query": names[-2]}
    return scm


def binary(nodes: int, seed: int = 0) -> SCM:
    """A binary SCM with noisy-OR and logistic tables, up to three parents per node."""
    rng = random.Random(seed + 1)
    parents = _graph(nodes, 3, rng)
    mechanism = {}
    for name, pa in parents.items():
        if rng.random() < 0.5:
            mechanism[name] = {"kind": "noisy_or", "leak": rng.uniform(0.05, 0.25),
                               "weights": [rng.uniform(0.3, 0.8) for _ in pa]}
        else:
            mechanism[name] = {"kind": "logistic", "bias": rng.uniform(-1.5, -0.5),
                               "weights": [rng.uniform(0.8, 2.0) for _ in pa]}

    def model():
        values = {}
        for name, pa in parents.items():
            values[name] = pyro.sample(name, dist.Bernoulli(_probability(mechanism[name], pa, values)))
        return values

    names = list(parents)
    scm = SCM("binary", nodes, names, parents, mechanism, model)
    scm.interventional = {"do": {names[1]: 1.0}, "evidence": {names[-1]: 1.0}, "query": names[-2]}
    scm.counterfactual = {"evidence": {names[1]: 1.0, names[-1]: 1.0}, "do": {names[1]: 0.0},
                          "query": names[-2]}
    return scm


def _probability(mechanism: dict, parents, values):
    if mechanism["kind"] == "noisy_or":
        keep = 1.0 - mechanism["leak"]
        for parent, weight in zip(parents, mechanism["weights"], strict=True):
            keep = keep * (1.0 - weight * values[parent])
        return 1.0 - keep
    logit = mechanism["bias"]
    for parent, weight in zip(parents, mechanism["weights"], strict=True):
        logit = logit + weight * values[parent]
    return torch.sigmoid(torch.as_tensor(logit))


@functools.cache
def get_scm(family: str, nodes: int) -> SCM:
    """The registry: one SCM per (family, size), built once per process."""
    builders = {"linear_gaussian": linear_gaussian, "binary": binary}
    if family not in builders:
        raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")
    return builders[family](nodes)


def ask(scm: SCM, kind: str, backend: str, *, seed: int = 0, num_samples: int | None = None):
    """Answer the case's interventional or counterfactual query with one backend."""
    settings = dict(BACKEND_SETTINGS[backend])
    if num_samples is not None:
        settings["num_samples"] = num_samples
    spec = getattr(scm, kind)
    query = scm.query(spec["query"])
    if kind == "interventional":
        return bd.intervene(scm.model, spec["do"], query, evidence=spec["evidence"], backend=backend,
                            seed=seed, **settings)
    return bd.counterfactual(scm.model, spec["evidence"], spec["do"], query, backend=backend, seed=seed,
                             **settings)


@functools.cache
def oracle(family: str, nodes: int, kind: str) -> float:
    """The exact (binary) or closed-form (linear-Gaussian) answer."""
    scm = get_scm(family, nodes)
    return ask(scm, kind, scm.oracle_backend).mean


def supported(scm: SCM, kind: str, backend: str) -> bool:
    """Whether ``backend`` can answer the case (without running the inference)."""
    from bayes_defense.causal.queries import build_problem as _problem
    from bayes_defense.inference.base import get_backend

    spec = getattr(scm, kind)
    problem = _problem(scm.model, spec["do"], spec["evidence"], scm.query(spec["query"]),
                       counterfactual=kind == "counterfactual", num_samples=1, level=0.9)
    try:
        get_backend(backend).check(problem)
    except bd.UnsupportedModelError:
        return False
    return True


# ChiRho's form of the same SCMs: exogenous noise explicit, shared by both worlds.

def chirho_model(scm: SCM, observed: frozenset):
    """The SCM for ChiRho: explicit noise for latent sites, plain densities for observed ones.

    ChiRho abducts the noise of an observed continuous site by inverting its
    ``TransformedDistribution``; a latent site downstream of an intervention
    only shares its noise across worlds when the noise is a site of its own.
    Latent binary sites use ``u ~ Uniform(0, 1)``, ``x = 1`` iff ``u > 1 - p``,
    the package's canonical coupling. Observed binary sites are plain
    Bernoulli densities (likelihood weighting rather than rejection, as a
    ChiRho user would write them): no query here reads an observed site's
    counterfactual value, so their noise need not be shared.
    """

    def model():
        values = {}
        for name, pa in scm.parents.items():
            m = scm.mechanism[name]
            if scm.family == "binary":
                p = _probability(m, pa, values)
                if name in observed:
                    values[name] = pyro.sample(name, dist.Bernoulli(p))
                    continue
                noise = pyro.sample(f"noise_{name}", dist.Uniform(0.0, 1.0))
                values[name] = pyro.sample(name, dist.Delta((noise > 1 - p).to(noise.dtype)))
                continue
            loc = m["intercept"]
            for parent, weight in zip(pa, m["weights"], strict=True):
                loc = loc + weight * values[parent]
            if name in observed:
                transform = dist.transforms.AffineTransform(loc, m["scale"])
                values[name] = pyro.sample(name, dist.TransformedDistribution(dist.Normal(0.0, 1.0), [transform]))
            else:
                noise = pyro.sample(f"noise_{name}", dist.Normal(0.0, 1.0))
                values[name] = pyro.sample(name, dist.Delta(loc + m["scale"] * noise))
        return values

    return model


@functools.cache
def _chirho_model_for(family: str, nodes: int, observed: frozenset):
    return chirho_model(get_scm(family, nodes), observed)


def chirho_answer(scm: SCM, kind: str, *, num_particles: int = NUM_PARTICLES, seed: int = 0):
    """ChiRho's answer to the case's query: twin worlds for counterfactuals, ``do`` otherwise."""
    from bayes_defense.causal.chirho_interop import chirho_counterfactual, chirho_intervene

    spec = getattr(scm, kind)
    model = _chirho_model_for(scm.family, scm.nodes, frozenset(spec["evidence"]))
    name = spec["query"]

    def query(world):
        return world[name] == 1 if scm.family == "binary" else world[name]

    if kind == "interventional":
        return chirho_intervene(model, spec["do"], spec["evidence"], query, num_particles=num_particles, seed=seed)
    return chirho_counterfactual(model, spec["evidence"], spec["do"], query, num_particles=num_particles,
                                 seed=seed)


def chirho_available() -> bool:
    try:
        import chirho  # noqa: F401
    except ImportError:
        return False
    return True


def standard_error(estimate) -> float:
    """Monte Carlo standard error implied by a 90% interval."""
    if math.isinf(estimate.ess):
        return 0.0
    return (estimate.upper - estimate.lower) / (2 * 1.6448536269514722)

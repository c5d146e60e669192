"""Counterfactuals agree with ChiRho's multi-world (twin-network) answers.

ChiRho shares exogenous noise between worlds only where the model makes it
explicit, so each model is written twice: the ordinary Pyro form that
``bayes_defense`` reads (noise supplied canonically) and ChiRho's form with
the same noise spelled out. Latent sites downstream of an intervention get
explicit noise sites and a ``Delta`` mechanism; observed continuous sites are
``TransformedDistribution``s, whose noise ChiRho abducts by inverting the
transform; discrete sites use ``u ~ Uniform(0, 1)`` and ``x = F^-1(u)``, the
canonical coupling of :mod:`bayes_defense.causal.noise`.

The ChiRho posterior is likelihood weighting over one plate of particles,
each weighted by the log density of the observed sites in the factual world
(:func:`bayes_defense.causal.chirho_interop.chirho_counterfactual`, shared
with the benchmarks).

Tolerances are five standard errors of the ChiRho estimate (its Kish ESS);
our answers here are exact (``exact``/``analytic``).
"""

import functools
import math

import pytest

chirho = pytest.importorskip("chirho", reason="chirho is an optional comparison peer")

import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402

import bayes_defense as bd  # noqa: E402
from bayes_defense.causal.chirho_interop import chirho_counterfactual as chirho_runner  # noqa: E402

NUM_PARTICLES = 20_000

#: Weighted ChiRho estimate of a query in the counterfactual world.
chirho_counterfactual = functools.partial(chirho_runner, num_particles=NUM_PARTICLES)


def standard_error(estimate) -> float:
    z = 1.6448536269514722  # level 0.9
    return (estimate.upper - estimate.lower) / (2 * z)


# Linear-Gaussian: X -> H -> Y, X -> Y (the Primer's encouragement design).
def encouragement():
    x = pyro.sample("X", dist.Normal(0.0, 1.0))
    h = pyro.sample("H", dist.Normal(0.5 * x, 1.0))
    pyro.sample("Y", dist.Normal(0.7 * x + 0.4 * h, 1.0))


def encouragement_chirho():
    x = pyro.sample("X", dist.Normal(0.0, 1.0))
    noise_h = pyro.sample("noise_H", dist.Normal(0.0, 1.0))
    h = pyro.sample("H", dist.Delta(0.5 * x + noise_h))
    y = pyro.sample("Y", dist.TransformedDistribution(
        dist.Normal(0.0, 1.0), [dist.transforms.AffineTransform(0.7 * x + 0.4 * h, 1.0)]))
    return {"X": x, "H": h, "Y": y}


@pytest.mark.parametrize(
    ("evidence", "action", "query"),
    [
        ({"Y": 1.5}, {"X": 1.0}, "Y"),  # H latent and downstream of the action
        ({"Y": 1.5}, {"X": 1.0}, "H"),
        ({"Y": 1.5}, {"H": 2.0}, "Y"),  # X and H latent
        ({"X": 0.5, "Y": 1.5}, {"H": 2.0}, "Y"),
    ],
)
def test_linear_gaussian_matches_chirho(evidence, action, query):
    ours = bd.counterfactual(encouragement, evidence, action, query, backend="analytic")
    theirs = chirho_counterfactual(encouragement_chirho, evidence, action, lambda world: world[query])
    assert theirs.ess > NUM_PARTICLES / 10
    assert abs(theirs.mean - ours.mean) <= 5 * standard_error(theirs), (ours, theirs)


# Binary: rain -> sprinkler -> wet -> slippery, rain -> wet.
def sprinkler():
    rain = pyro.sample("rain", dist.Bernoulli(0.3))
    on = pyro.sample("sprinkler", dist.Bernoulli(0.5 - 0.4 * rain))
    wet = pyro.sample("wet", dist.Bernoulli(0.05 + 0.6 * rain + 0.3 * on))
    pyro.sample("slippery", dist.Bernoulli(0.1 + 0.8 * wet))


def monotone_bernoulli(name, probability):
    """``x = F^-1(u)`` for a Bernoulli: 1 exactly when ``u > 1 - p``."""
    noise = pyro.sample(f"noise_{name}", dist.Uniform(0.0, 1.0))
    return pyro.sample(name, dist.Delta((noise > 1 - probability).to(noise.dtype)))


def sprinkler_chirho():
    rain = monotone_bernoulli("rain", 0.3)
    on = monotone_bernoulli("sprinkler", 0.5 - 0.4 * rain)
    wet = monotone_bernoulli("wet", 0.05 + 0.6 * rain + 0.3 * on)
    slippery = monotone_bernoulli("slippery", 0.1 + 0.8 * wet)
    return {"rain": rain, "sprinkler": on, "wet": wet, "slippery": slippery}


@pytest.mark.parametrize(
    ("evidence", "action", "query"),
    [
        ({"sprinkler": 1.0, "wet": 1.0}, {"sprinkler": 0.0}, "wet"),  # a probability of necessity
        ({"slippery": 1.0}, {"rain": 0.0}, "slippery"),
        ({"slippery": 0.0, "rain": 1.0}, {"sprinkler": 1.0}, "wet"),
    ],
)
def test_binary_matches_chirho(evidence, action, query):
    ours = bd.counterfactual(sprinkler, evidence, action, {query: 1.0}, backend="exact")
    theirs = chirho_counterfactual(sprinkler_chirho, evidence, action, lambda world: world[query] == 1)
    assert theirs.ess > 1000
    tolerance = 5 * math.sqrt(ours.mean * (1 - ours.mean) / theirs.ess)
    assert abs(theirs.mean - ours.mean) <= tolerance + 1e-12, (ours, theirs)


def test_importance_matches_chirho_on_binary_model():
    """Both sampling answers agree within their joint standard error."""
    evidence, action = {"slippery": 1.0}, {"rain": 0.0}
    ours = bd.counterfactual(sprinkler, evidence, action, {"wet": 1.0}, backend="importance",
                             num_samples=NUM_PARTICLES, seed=3)
    theirs = chirho_counterfactual(sprinkler_chirho, evidence, action, lambda world: world["wet"] == 1, seed=4)
    p = (ours.mean + theirs.mean) / 2
    joint = math.sqrt(p * (1 - p) * (1 / ours.ess + 1 / theirs.ess))
    assert abs(ours.mean - theirs.mean) <= 5 * joint


def test_binary_interventional_matches_chirho():
    """Evidence downstream of the intervention: do(sprinkler = 1), slippery observed."""
    from bayes_defense.causal.chirho_interop import chirho_intervene

    ours = bd.intervene(sprinkler, {"sprinkler": 1.0}, {"wet": 1.0}, evidence={"slippery": 1.0}, backend="exact")
    theirs = chirho_intervene(sprinkler_chirho, {"sprinkler": 1.0}, {"slippery": 1.0},
                              lambda world: world["wet"] == 1, num_particles=NUM_PARTICLES)
    assert theirs.ess > 1000
    tolerance = 5 * math.sqrt(ours.mean * (1 - ours.mean) / theirs.ess)
    assert abs(theirs.mean - ours.mean) <= tolerance + 1e-12, (ours, theirs)

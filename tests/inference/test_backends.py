"""The backend registry, vectorisation, seeding and the noise reparameterisation."""

import pyro
import pyro.distributions as dist
import pytest
import torch

import bayes_defense as bd
from bayes_defense.causal.noise import abduct_noise, log_prob, push_noise, sample_noise


def test_registry_lists_every_backend():
    assert bd.backends()[:1] == ["auto"]
    assert {"exact", "importance", "svi", "nuts", "analytic"} <= set(bd.backends())


def test_importance_runs_the_model_once_per_world_not_per_particle():
    calls = []

    def model():
        calls.append(1)
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(x, 1.0))

    bd.intervene(model, {}, "x", evidence={"y": 1.0}, backend="importance", num_samples=5000)  # warms caches
    calls.clear()
    bd.intervene(model, {}, "x", evidence={"y": 1.0}, backend="importance", num_samples=5000)
    assert len(calls) == 1
    calls.clear()
    bd.counterfactual(model, {"y": 1.0}, {"x": 0.0}, "y", backend="importance", num_samples=5000)
    assert len(calls) == 2


def test_seed_makes_sampling_reproducible():
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(x, 1.0))

    first = bd.intervene(model, {}, "x", evidence={"y": 1.0}, backend="importance", num_samples=500, seed=3)
    second = bd.intervene(model, {}, "x", evidence={"y": 1.0}, backend="importance", num_samples=500, seed=3)
    assert first == second


@pytest.mark.parametrize(
    "distribution,value",
    [
        (dist.Normal(torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.5])), torch.tensor([1.0, 0.0])),
        (dist.Laplace(1.0, 3.0), torch.tensor(2.5)),
        (dist.StudentT(4.0, 1.0, 2.0), torch.tensor(-3.0)),
        (dist.LogNormal(0.2, 0.7), torch.tensor(1.7)),
        (dist.Uniform(-1.0, 3.0), torch.tensor(0.5)),
        (dist.Exponential(2.0), torch.tensor(0.3)),
    ],
)
def test_continuous_abduction_inverts_the_push(distribution, value):
    noise, log_prob = abduct_noise(distribution, value)
    assert torch.allclose(push_noise(distribution, noise), value, atol=1e-5)
    assert torch.allclose(log_prob, distribution.log_prob(value))


@pytest.mark.parametrize(
    "distribution",
    [
        dist.Bernoulli(torch.tensor([0.2, 0.9])),
        dist.Categorical(torch.tensor([0.1, 0.6, 0.3])),
        dist.Binomial(5, torch.tensor(0.3)),
        dist.Poisson(torch.tensor(2.5)),
    ],
)
def test_discrete_noise_reproduces_distribution_and_abduction(distribution):
    torch.manual_seed(0)
    n = 40_000
    noise = torch.rand((n,) + tuple(sample_noise(distribution).shape))
    values = push_noise(distribution, noise)
    for k in range(4):
        expected = float(log_prob(distribution, torch.tensor(float(k))).exp().reshape(-1)[0])
        frequency = float((values.reshape(n, -1)[:, 0] == k).double().mean())
        standard_error = (expected * (1 - expected) / n) ** 0.5
        assert abs(frequency - expected) <= 5 * standard_error + 1e-12
    # Abducted noise from an observed value pushes back to that value.
    observed = values[:100]
    abducted, _ = abduct_noise(distribution, observed)
    assert torch.equal(push_noise(distribution, abducted), observed)


def test_bernoulli_log_prob_is_exact_at_zero():
    assert log_prob(dist.Bernoulli(torch.tensor(0.0)), torch.tensor(1.0)) == -float("inf")
    assert log_prob(dist.Bernoulli(torch.tensor(1.0)), torch.tensor(1.0)) == 0.0


def test_plates_are_supported_by_importance():
    def model():
        with pyro.plate("replicas", 3):
            load = pyro.sample("load", dist.Normal(0.0, 1.0))
        # Reductions keep the plate dimension so the model broadcasts over particles (Pyro idiom).
        pyro.sample("total", dist.Normal(load.sum(-1, keepdim=True), 1.0))

    estimate = bd.intervene(model, {}, lambda v: v["load"][:, 0], evidence={"total": 3.0}, backend="importance",
                            num_samples=20_000, seed=1)
    # load_0 | total = 3: mean 3 * 1 / 4.
    se = (estimate.upper - estimate.lower) / (2 * 1.6448536)
    assert abs(estimate.mean - 0.75) <= 5 * se
    with pytest.raises(bd.UnsupportedModelError, match="importance"):
        bd.intervene(model, {}, "total", backend="exact")


def test_probability_estimate_type_and_bounds():
    estimate = bd.Probability(mean=0.3, lower=-0.1, upper=1.2)
    assert (estimate.lower, estimate.upper) == (0.0, 1.0)
    with pytest.raises(ValueError):
        bd.Estimate(mean=float("nan"), lower=0.0, upper=1.0)


def test_exact_reuses_no_stale_table_across_values_or_callables():
    """Contraction paths are cached per pattern; values and callable queries are read afresh."""
    def model():
        x = pyro.sample("x", dist.Bernoulli(0.3))
        pyro.sample("y", dist.Bernoulli(0.2 + 0.6 * x))

    p_y1 = 0.3 * 0.8 + 0.7 * 0.2
    assert bd.intervene(model, {}, "x", evidence={"y": 1.0}).mean == pytest.approx(0.3 * 0.8 / p_y1, abs=1e-12)
    assert bd.intervene(model, {}, "x", evidence={"y": 0.0}).mean == pytest.approx(0.3 * 0.2 / (1 - p_y1), abs=1e-12)
    threshold = {"value": 0.5}

    def above(values):
        return values["y"] > threshold["value"]

    assert bd.intervene(model, {"x": 1.0}, above).mean == pytest.approx(0.8, abs=1e-12)
    threshold["value"] = 1.5
    assert bd.intervene(model, {"x": 1.0}, above).mean == 0.0

"""Likelihood weighting on compiled tables agrees with running the model, and with exact answers."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import bayes_defense as bd

NUM = 20_000


def mixed():
    """Categorical, Bernoulli, Binomial and deterministic sites; evidence needs abduction."""
    a = pyro.sample("a", dist.Categorical(torch.tensor([0.2, 0.5, 0.3])))
    b = pyro.sample("b", dist.Bernoulli(torch.tensor([0.1, 0.5, 0.8])[a]))
    c = pyro.deterministic("c", a.to(b.dtype) + b)
    d = pyro.sample("d", dist.Binomial(2, 0.2 + 0.5 * b))
    pyro.sample("e", dist.Bernoulli(0.05 + 0.2 * c + 0.1 * d))


CASES = [
    ("interventional", {"b": 0.0}, {"e": 1.0}, {"a": 2}),
    ("interventional", {}, {"e": 0.0, "d": 2.0}, "c"),
    ("counterfactual", {"b": 0.0}, {"e": 1.0}, {"e": 1.0}),
    ("counterfactual", {"a": 0}, {"e": 1.0, "b": 1.0}, "d"),
    ("counterfactual", {"b": 1.0}, {"e": 0.0, "d": 0.0}, "d"),  # abduction below the first jump
]


def ask(kind, do, evidence, query, backend, **kwargs):
    if kind == "interventional":
        return bd.intervene(mixed, do, query, evidence=evidence, backend=backend, **kwargs)
    return bd.counterfactual(mixed, evidence, do, query, backend=backend, **kwargs)


def standard_error(estimate) -> float:
    return (estimate.upper - estimate.lower) / (2 * 1.6448536269514722)


@pytest.mark.parametrize(("kind", "do", "evidence", "query"), CASES)
def test_tables_and_model_runs_agree_with_exact(kind, do, evidence, query):
    exact = ask(kind, do, evidence, query, "exact").mean
    tabular = ask(kind, do, evidence, query, "importance", num_samples=NUM, seed=1)
    model_run = ask(kind, do, evidence, query, "importance", num_samples=NUM, seed=2, options={"tabular": False})
    for estimate in (tabular, model_run):
        assert estimate.ess > NUM / 20
        assert abs(estimate.mean - exact) <= 5 * standard_error(estimate) + 1e-12, (estimate, exact)
    joint = math.hypot(standard_error(tabular), standard_error(model_run))
    assert abs(tabular.mean - model_run.mean) <= 5 * joint


def counted_model(calls: list):
    """A two-site binary model that records each run in ``calls``."""

    def model():
        calls.append(1)
        x = pyro.sample("x", dist.Bernoulli(0.3))
        pyro.sample("y", dist.Bernoulli(0.1 + 0.4 * x))

    return model


@pytest.mark.parametrize(("kind", "do", "evidence", "query"), CASES)
def test_tables_draw_the_same_particles_as_model_runs(kind, do, evidence, query):
    """Same seed, same noise: the answers differ only where a draw falls within float32
    rounding of a threshold, a handful of the 20000 particles at most."""
    tabular = ask(kind, do, evidence, query, "importance", num_samples=NUM, seed=5)
    model_run = ask(kind, do, evidence, query, "importance", num_samples=NUM, seed=5, options={"tabular": False})
    assert abs(tabular.mean - model_run.mean) <= 1e-3
    assert abs(tabular.ess - model_run.ess) <= 1.0


def test_tables_replace_model_runs_after_compilation():
    calls = []
    model = counted_model(calls)
    bd.intervene(model, {}, "x", evidence={"y": 1.0}, backend="importance", num_samples=100)  # compiles
    calls.clear()
    bd.intervene(model, {}, "x", evidence={"y": 1.0}, backend="importance", num_samples=100)
    bd.counterfactual(model, {"y": 1.0}, {"x": 0.0}, "y", backend="importance", num_samples=100)
    assert calls == []
    bd.intervene(model, {}, "x", evidence={"y": 1.0}, backend="importance", num_samples=100,
                 options={"tabular": False})
    assert len(calls) == 1


def test_values_outside_the_tables_fall_back_to_running_the_model():
    calls = []
    model = counted_model(calls)
    bd.intervene(model, {}, "y", backend="importance", num_samples=100)
    calls.clear()
    # do(x = 2) is outside the Bernoulli's support: the model's own arithmetic decides y.
    estimate = bd.intervene(model, {"x": 2.0}, "y", backend="importance", num_samples=4000, seed=0)
    assert len(calls) == 1
    assert abs(estimate.mean - 0.9) <= 5 * standard_error(estimate)
    with pytest.raises(bd.ImpossibleEvidenceError):
        bd.intervene(model, {}, "x", evidence={"y": 3.0}, backend="importance", num_samples=100)


def test_model_observations_use_the_model_run():
    def model():
        x = pyro.sample("x", dist.Bernoulli(0.3))
        pyro.sample("y", dist.Bernoulli(0.1 + 0.8 * x), obs=torch.tensor(1.0))

    estimate = bd.intervene(model, {}, "x", backend="importance", num_samples=NUM, seed=0)
    posterior = 0.3 * 0.9 / (0.3 * 0.9 + 0.7 * 0.1)
    assert abs(estimate.mean - posterior) <= 5 * standard_error(estimate)


def test_tables_are_reproducible_under_a_seed():
    first = ask(*CASES[2], "importance", num_samples=500, seed=4)
    second = ask(*CASES[2], "importance", num_samples=500, seed=4)
    assert first == second

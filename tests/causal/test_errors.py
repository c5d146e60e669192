"""Bad input gets a clear error: unknown sites, impossible evidence, vanishing weights."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from textbook import firing_squad, primer, sprinkler

import bayes_defense as bd


def test_unknown_site_in_do_lists_the_sites():
    with pytest.raises(bd.UnknownSiteError) as error:
        bd.intervene(sprinkler, {"sprinklr": 1.0}, "wet")
    message = str(error.value)
    assert "'sprinklr'" in message
    for site in ("rain", "sprinkler", "wet", "slippery"):
        assert site in message


def test_unknown_site_in_evidence_and_query_list_the_sites():
    with pytest.raises(bd.UnknownSiteError, match="rain, sprinkler, wet, slippery"):
        bd.counterfactual(sprinkler, {"humidity": 1.0}, {"rain": 1.0}, "wet")
    with pytest.raises(bd.UnknownSiteError, match="rain, sprinkler, wet, slippery"):
        bd.intervene(sprinkler, {"rain": 1.0}, "puddle")


def test_unknown_site_error_is_a_value_error():
    assert issubclass(bd.UnknownSiteError, ValueError)


@pytest.mark.parametrize("backend", ["exact", "auto"])
def test_impossible_evidence_raises_not_nan(backend):
    # Without an order nobody shoots, so the prisoner cannot be dead.
    with pytest.raises(bd.ImpossibleEvidenceError):
        bd.intervene(firing_squad(), {"order": 0.0}, "A", evidence={"dead": 1.0}, backend=backend)
    with pytest.raises(bd.ImpossibleEvidenceError):
        bd.counterfactual(firing_squad(), {"order": 0.0, "dead": 1.0}, {"A": 1.0}, "dead", backend=backend)


def test_evidence_outside_support_is_impossible_for_importance():
    with pytest.raises(bd.ImpossibleEvidenceError, match="support"):
        bd.intervene(sprinkler, {"rain": 1.0}, "wet", evidence={"slippery": 2.0}, backend="importance",
                     num_samples=100)


def test_evidence_contradicting_the_intervention_is_impossible():
    with pytest.raises(bd.ImpossibleEvidenceError, match="contradicts"):
        bd.intervene(primer, {"H": 2.0}, "Y", evidence={"H": 1.0})


def test_degenerate_linear_gaussian_evidence_is_impossible():
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.deterministic("double", 2 * x)
        pyro.sample("y", dist.Normal(x, 1.0))

    # The deterministic site makes the model non-Normal for the analytic backend; importance
    # weights of contradicting evidence (x = 1 but double = 3) are all zero.
    with pytest.raises(bd.BayesDefenseError):
        bd.intervene(model, {}, "y", evidence={"x": 1.0, "double": 3.0}, backend="importance", num_samples=50)


def _coins(n):
    def model():
        total = 1.0
        for i in range(n):
            total = total * pyro.sample(f"coin{i}", dist.Bernoulli(0.5))
        pyro.sample("all_heads", dist.Bernoulli(total))

    return model


def test_vanishing_importance_weights_name_a_working_backend():
    model = _coins(20)
    with pytest.raises(bd.DegenerateWeightsError, match="exact"):
        bd.intervene(model, {}, "coin0", evidence={"all_heads": 1.0}, backend="importance", num_samples=1000, seed=0)
    # The backend the message names does answer it.
    assert bd.intervene(model, {}, "coin0", evidence={"all_heads": 1.0}, backend="exact").mean == 1.0


def test_bad_arguments():
    with pytest.raises(bd.InvalidInputError, match="num_samples"):
        bd.intervene(sprinkler, {"rain": 1.0}, "wet", num_samples=0)
    with pytest.raises(bd.InvalidInputError, match="level"):
        bd.intervene(sprinkler, {"rain": 1.0}, "wet", level=1.5)
    with pytest.raises(bd.InvalidInputError, match="unknown backend"):
        bd.intervene(sprinkler, {"rain": 1.0}, "wet", backend="magic")
    with pytest.raises(bd.InvalidInputError, match="dict"):
        bd.intervene(sprinkler, [("rain", 1.0)], "wet")
    with pytest.raises(bd.InvalidInputError, match="finite"):
        bd.intervene(sprinkler, {"rain": float("nan")}, "wet")
    with pytest.raises(bd.InvalidInputError, match="outcome"):
        bd.probability_of_necessity(sprinkler, {"rain": 1.0}, {"rain": 0.0}, "wet")


def test_unsupported_distribution_names_itself():
    def model():
        pyro.sample("g", dist.Gamma(2.0, 1.0))

    with pytest.raises(bd.UnsupportedModelError, match="Gamma"):
        bd.counterfactual(model, {}, {}, "g", backend="importance", num_samples=10)
    # Interventional queries need no noise and sample such sites directly: E[g] = 2.
    estimate = bd.intervene(model, {}, "g", backend="importance", num_samples=4000, seed=0)
    assert estimate.lower <= 2.0 <= estimate.upper


def test_svi_and_nuts_decline_discrete_latents():
    for backend in ("svi", "nuts"):
        with pytest.raises(bd.UnsupportedModelError, match="exact"):
            bd.intervene(sprinkler, {"rain": 1.0}, "wet", evidence={"slippery": 1.0}, backend=backend)


def test_global_rng_untouched_by_seeded_query():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    bd.intervene(sprinkler, {"rain": 1.0}, "wet", backend="importance", num_samples=100, seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_deterministic_sites_have_parents_and_exact_tables():
    def model():
        x = pyro.sample("x", dist.Bernoulli(0.5))
        pyro.deterministic("d", 1 - x)
        pyro.sample("y", dist.Bernoulli(0.2 + 0.5 * x))

    from bayes_defense.causal.structure import model_info

    assert model_info(model).parents()["d"] == ("x",)
    assert bd.intervene(model, {}, "d", evidence={"y": 1.0}, backend="exact").mean == pytest.approx(0.2 / 0.9)


def test_an_integer_beyond_float_range_is_refused_in_words():
    # Plain numbers are checked in one pass; an integer too large for a float must still be named.
    with pytest.raises(bd.InvalidInputError, match="'rain'.*float range"):
        bd.intervene(sprinkler, {}, "wet", evidence={"rain": 10**400})
    with pytest.raises(bd.InvalidInputError, match="'sprinkler'.*finite"):
        bd.intervene(sprinkler, {}, "wet", evidence={"rain": 1, "sprinkler": float("inf")})

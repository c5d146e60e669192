"""Exact answers on textbook models: Primer counterfactuals, firing squad, sprinkler, Tian-Pearl, chains."""

import math

import numpy as np
import pytest
import torch
from textbook import (
    P_C,
    SPRINKLER_TABLES,
    brute_force_intervene,
    confounded,
    firing_squad,
    linear_chain,
    p_x,
    p_y,
    primer,
    sprinkler,
)

import bayes_defense as bd

Z5 = 5.0  # tolerance in standard errors for Monte Carlo answers


def _standard_error(estimate):
    """Half-width of the interval divided by its z value."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + estimate.level / 2)
    return max((estimate.upper - estimate.lower) / (2 * z), 1e-12)


def assert_close_mc(estimate, truth):
    se = _standard_error(estimate)
    assert abs(estimate.mean - truth) <= Z5 * se, (estimate, truth, se)


# -- Primer, section 4.2.3 -------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "analytic", "importance", "svi", "nuts"])
def test_primer_fully_observed_counterfactual_is_exact(backend):
    # Joe: X = 0.5, H = 1, Y = 1.5; had H been 2, Y = 0.7*0.5 + 0.4*2 + (1.5 - 0.35 - 0.4) = 1.9.
    estimate = bd.counterfactual(primer, {"X": 0.5, "H": 1.0, "Y": 1.5}, {"H": 2.0}, "Y", backend=backend,
                                 num_samples=200, seed=0)
    assert estimate.mean == pytest.approx(1.9, abs=1e-6)


def test_primer_counterfactual_on_x():
    # Had X been 0 (H responds): H' = 0 + u_H = 0.75, Y' = 0.4 * 0.75 + u_Y = 0.3 + 0.75 = 1.05.
    estimate = bd.counterfactual(primer, {"X": 0.5, "H": 1.0, "Y": 1.5}, {"X": 0.0}, "Y")
    assert estimate.mean == pytest.approx(1.05, abs=1e-9)
    assert estimate.backend == "analytic"


def _primer_partial_truth():
    # Evidence on the descendant Y only: Y = 0.9 U1 + 0.4 U2 + U3 (unit variances).
    y = 1.5
    variance = 0.9**2 + 0.4**2 + 1.0
    u1, u3 = 0.9 * y / variance, 1.0 * y / variance
    return 0.7 * u1 + 0.4 * 2.0 + u3  # Y under do(H = 2)


@pytest.mark.parametrize(
    "backend,num_samples",
    [("analytic", 10_000), ("importance", 20_000), ("svi", 4_000), ("nuts", 600)],
)
def test_every_backend_answers_partially_observed_counterfactual(backend, num_samples):
    truth = _primer_partial_truth()
    estimate = bd.counterfactual(primer, {"Y": 1.5}, {"H": 2.0}, "Y", backend=backend, num_samples=num_samples,
                                 seed=1, options={"warmup_steps": 300})
    if backend == "analytic":
        assert estimate.mean == pytest.approx(truth, abs=1e-9)
        assert estimate.is_exact
    else:
        assert_close_mc(estimate, truth)
        assert estimate.lower <= truth + Z5 * _standard_error(estimate)


def test_exact_backend_answers_partially_observed_discrete_counterfactual():
    # Evidence on the descendant "slippery" only; query wet had the sprinkler been off.
    exact = bd.counterfactual(sprinkler, {"slippery": 1.0}, {"sprinkler": 0.0}, "wet", backend="exact")
    sampled = bd.counterfactual(sprinkler, {"slippery": 1.0}, {"sprinkler": 0.0}, "wet", backend="importance",
                                num_samples=40_000, seed=2)
    assert exact.is_exact and exact.backend == "exact"
    assert_close_mc(sampled, exact.mean)


def test_exact_declines_continuous_models_and_names_an_alternative():
    with pytest.raises(bd.UnsupportedModelError, match="analytic|importance"):
        bd.counterfactual(primer, {"Y": 1.5}, {"H": 2.0}, "Y", backend="exact")


# -- Firing squad ------------------------------------------------------------------------------


def test_firing_squad_dead_regardless_of_rifleman_a():
    model = firing_squad()
    estimate = bd.counterfactual(model, {"dead": 1.0}, {"A": 0.0}, "dead", backend="exact")
    assert estimate.mean == 1.0
    assert bd.probability_of_necessity(model, {"A": 1.0}, {"A": 0.0}, {"dead": 1.0}).mean == 0.0


def test_firing_squad_necessity_with_unreliable_rifleman():
    # B fires on order with probability 0.6: A's shot was necessary iff B did not fire.
    model = firing_squad(p_order=0.7, p_b_fires=0.6)
    pn = bd.probability_of_necessity(model, {"A": 1.0}, {"A": 0.0}, {"dead": 1.0}, backend="exact")
    assert pn.mean == pytest.approx(0.4, abs=1e-12)
    sampled = bd.probability_of_necessity(model, {"A": 1.0}, {"A": 0.0}, {"dead": 1.0}, backend="importance",
                                          num_samples=20_000, seed=3)
    assert isinstance(sampled, bd.Probability)
    assert_close_mc(sampled, 0.4)


# -- Sprinkler: interventions and evidence in different places ---------------------------------

ORDER = ["rain", "sprinkler", "wet", "slippery"]


@pytest.mark.parametrize(
    "do,evidence,query",
    [
        ({"sprinkler": 1.0}, {"wet": 1.0}, "rain"),  # evidence downstream of the intervention
        ({"sprinkler": 1.0}, {"slippery": 1.0}, "rain"),
        ({"wet": 1.0}, {"rain": 0.0}, "slippery"),  # evidence upstream
        ({"rain": 1.0}, {"slippery": 0.0}, "sprinkler"),
        ({"wet": 0.0}, {"slippery": 1.0}, "rain"),  # evidence cut off by surgery
        ({}, {"slippery": 1.0}, "sprinkler"),
    ],
)
def test_sprinkler_interventions_match_enumeration(do, evidence, query):
    truth = brute_force_intervene(SPRINKLER_TABLES, ORDER, do, evidence, lambda v: v[query])
    exact = bd.intervene(sprinkler, do, query, evidence=evidence, backend="exact")
    assert exact.mean == pytest.approx(truth, abs=1e-12)
    sampled = bd.intervene(sprinkler, do, query, evidence=evidence, backend="importance", num_samples=20_000,
                           seed=4)
    assert_close_mc(sampled, truth)


def test_sprinkler_counterfactual_by_hand():
    # Wet and sprinkler on; had the sprinkler been off, would it be wet? Rain posterior 0.0285/0.151;
    # the coupled responses give P(wet' | wet) = 0.65/0.95 with rain and 0.05/0.35 without.
    rain = 0.3 * 0.1 * 0.95 / (0.3 * 0.1 * 0.95 + 0.7 * 0.5 * 0.35)
    truth = rain * 0.65 / 0.95 + (1 - rain) * 0.05 / 0.35
    estimate = bd.counterfactual(sprinkler, {"wet": 1.0, "sprinkler": 1.0}, {"sprinkler": 0.0}, "wet")
    assert estimate.backend == "exact"
    assert estimate.mean == pytest.approx(truth, abs=1e-12)


def test_callable_query_gives_probability():
    estimate = bd.intervene(sprinkler, {"sprinkler": 1.0}, lambda v: (v["rain"] == 1) & (v["wet"] == 1))
    assert isinstance(estimate, bd.Probability)
    assert estimate.mean == pytest.approx(0.3 * 0.95, abs=1e-12)


# -- Tian and Pearl (2000): PN and PS under monotonicity with confounding ------------------------


def _tian_pearl():
    p_joint = {}
    for c in (0, 1):
        for x in (0, 1):
            pc = P_C if c else 1 - P_C
            px = p_x(c) if x else 1 - p_x(c)
            p_joint[(c, x)] = pc * px
    p_y_total = sum(w * p_y(x, c) for (c, x), w in p_joint.items())
    p_y_do = {x: sum((P_C if c else 1 - P_C) * p_y(x, c) for c in (0, 1)) for x in (0, 1)}
    p_x1_y1 = sum(w * p_y(1, c) for (c, x), w in p_joint.items() if x == 1)
    p_x0_y0 = sum(w * (1 - p_y(0, c)) for (c, x), w in p_joint.items() if x == 0)
    pn = (p_y_total - p_y_do[0]) / p_x1_y1
    ps = (p_y_do[1] - p_y_total) / p_x0_y0
    return pn, ps


def test_probabilities_of_causation_equal_tian_pearl_closed_forms():
    pn_truth, ps_truth = _tian_pearl()
    pn = bd.probability_of_necessity(confounded, {"X": 1.0}, {"X": 0.0}, {"Y": 1.0})
    ps = bd.probability_of_sufficiency(confounded, {"X": 1.0}, {"X": 0.0}, {"Y": 1.0})
    assert pn.backend == ps.backend == "exact"
    assert pn.mean == pytest.approx(pn_truth, abs=1e-12)
    assert ps.mean == pytest.approx(ps_truth, abs=1e-12)
    pn_is = bd.probability_of_necessity(confounded, {"X": 1.0}, {"X": 0.0}, {"Y": 1.0}, backend="importance",
                                        num_samples=40_000, seed=5)
    ps_is = bd.probability_of_sufficiency(confounded, {"X": 1.0}, {"X": 0.0}, {"Y": 1.0}, backend="importance",
                                          num_samples=40_000, seed=6)
    assert_close_mc(pn_is, pn_truth)
    assert_close_mc(ps_is, ps_truth)


def test_outcome_as_callable_matches_dict():
    by_dict = bd.probability_of_necessity(confounded, {"X": 1.0}, {"X": 0.0}, {"Y": 1.0})
    by_callable = bd.probability_of_necessity(confounded, {"X": 1.0}, {"X": 0.0}, lambda v: v["Y"] == 1)
    assert by_callable.mean == pytest.approx(by_dict.mean, abs=1e-12)


# -- 50-node linear chain ----------------------------------------------------------------------


def test_fifty_node_chain_counterfactual_equals_closed_form():
    n = 50
    model, a, sigma = linear_chain(n)
    a, sigma = a.numpy(), sigma.numpy()
    x0, x_last, cut = 1.0, 2.0, 25
    # X_last = c_0 X_0 + sum_i c_i sigma_i U_i with c_i = prod_{j > i} a_j; abduct E[U_i | X_0, X_last].
    c = np.array([np.prod(a[i + 1 :]) for i in range(n)])
    residual = x_last - c[0] * x0
    loadings = c[1:] * sigma[1:]
    u_mean = loadings * residual / np.sum(loadings**2)
    truth = float(np.sum(c[cut + 1 :] * sigma[cut + 1 :] * u_mean[cut:]))  # do(x25 = 0)
    estimate = bd.counterfactual(model, {"x0": x0, f"x{n - 1}": x_last}, {f"x{cut}": 0.0}, f"x{n - 1}")
    assert estimate.backend == "analytic"
    assert estimate.mean == pytest.approx(truth, abs=1e-9)
    sampled = bd.counterfactual(model, {"x0": x0, f"x{n - 1}": x_last}, {f"x{cut}": 0.0}, f"x{n - 1}",
                                backend="importance", num_samples=20_000, seed=7)
    assert_close_mc(sampled, truth)


def test_intervals_are_ordered_and_probabilities_bounded():
    for backend in ("exact", "importance"):
        estimate = bd.counterfactual(sprinkler, {"slippery": 1.0}, {"rain": 1.0}, "wet", backend=backend,
                                     num_samples=2_000, seed=8)
        assert 0.0 <= estimate.lower <= estimate.mean <= estimate.upper <= 1.0
        assert math.isfinite(estimate.ess) or backend == "exact"
    assert torch.get_default_dtype() == torch.float32

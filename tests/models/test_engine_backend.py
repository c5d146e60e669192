"""The cluster engine as a registered backend: agreement with the generic exact backend, auto's choice, fallbacks."""

import pyro
import pyro.distributions as dist
import pytest

import bayes_defense as bd
from bayes_defense.causal.structure import model_info

EVIDENCE = {"r0.msg_rate": 1.0, "r0.mac_fail": 1.0, "r1.duplicates": 0.0, "join_rate": 0.0}

# (label, n_nodes, parameters): posterior draws give the model a theta_draw site and a draw axis.
MODELS = [
    ("n4", 4, None),
    ("n7", 7, None),
    ("n4-draws", 4, {"flooding.p_attempt": [0.2, 0.5, 0.8], "telemetry.msg_rate.flooding": [0.9, 0.6, 0.3],
                     "flooding.efficacy.rate_limit": [0.95, 0.8, 0.5]}),
    ("n7-draws", 7, {"replay.p_attempt": [0.1, 0.4], "outcome.throughput_low.baseline": [0.01, 0.05]}),
]

INTERVENTIONS = [
    ({}, "flooding.success", EVIDENCE),
    ({"rate_limited": 1.0}, "flooding.success", EVIDENCE),
    ({"isolated": 2.0}, "replay.success", {**EVIDENCE, "throughput_low": 1.0}),
    ({"attacker": 1.0}, "slow_leader.executing", {"r0.preprepare_delay": 1.0, "latency_high": 1.0}),
    ({"flooding.precursor": 1.0}, "throughput_low", {**EVIDENCE, "safety_violated": 0.0}),
    ({"primary_faulty": 1.0}, {"equivocation.success": 1.0, "safety_violated": 1.0}, {"r0.conflicting": 1.0}),
    ({}, "attacker", {**EVIDENCE, "r2.faulty": 0.0, "replay.precursor": 0.0}),
    ({"trusted_component": 1.0}, {"r2.sig_fail": 1.0}, {"rate_limited": 0.0, "liveness_lost": 1.0}),
    ({}, lambda w: (w["attacker"] == 1) | (w["flooding.executing"] == 1), EVIDENCE),
    ({"view_changed": 1.0}, {"admission_open": 1.0, "sybil.executing": 1.0}, {"join_rate": 1.0}),
]

COUNTERFACTUALS = [
    ({**EVIDENCE, "throughput_low": 1.0}, {"flooding.precursor": 0.0}, {"throughput_low": 1.0}),
    ({**EVIDENCE, "throughput_low": 1.0}, {"rate_limited": 1.0}, {"throughput_low": 0.0}),
    ({"r0.conflicting": 1.0, "safety_violated": 1.0}, {"attacker": 0.0}, {"safety_violated": 1.0}),
    ({"r0.preprepare_delay": 1.0, "latency_high": 1.0}, {"isolated": 1.0}, {"latency_high": 1.0, "liveness_lost": 0.0}),
    # Two interventions, queried outcomes not observed in the factual world.
    (EVIDENCE, {"rate_limited": 1.0, "trusted_component": 1.0}, {"liveness_lost": 1.0}),
]

CAUSES = [
    ({"flooding.executing": 1.0}, {"flooding.executing": 0.0}, {"throughput_low": 1.0}),
    ({"flooding.precursor": 1.0}, {"flooding.precursor": 0.0}, {"latency_high": 1.0}),
    ({"attacker": 1.0}, {"attacker": 0.0}, {"throughput_low": 1.0}),
    ({"rate_limited": 0.0}, {"rate_limited": 1.0}, {"throughput_low": 1.0, "latency_high": 1.0}),
]


@pytest.fixture(scope="module", params=MODELS, ids=[label for label, _, _ in MODELS])
def model(request):
    _, n_nodes, parameters = request.param
    return bd.models.cluster(n_nodes, parameters=parameters)


def _agree(fast, reference, backend="cluster_engine"):
    assert fast.backend == backend and reference.backend == "exact"
    assert fast.mean == pytest.approx(reference.mean, abs=1e-9)
    assert fast.lower <= fast.mean <= fast.upper
    if isinstance(fast, bd.Probability):
        assert 0.0 <= fast.lower and fast.upper <= 1.0


@pytest.mark.parametrize("case", range(len(INTERVENTIONS)))
def test_intervene_agrees_with_generic_exact(model, case):
    do, query, evidence = INTERVENTIONS[case]
    _agree(bd.intervene(model, do, query, evidence=evidence),
           bd.intervene(model, do, query, evidence=evidence, backend="exact"))


@pytest.mark.parametrize("case", range(len(COUNTERFACTUALS)))
def test_counterfactual_agrees_with_generic_exact(model, case):
    evidence, do, query = COUNTERFACTUALS[case]
    _agree(bd.counterfactual(model, evidence, do, query),
           bd.counterfactual(model, evidence, do, query, backend="exact"))


@pytest.mark.parametrize("case", range(len(CAUSES)))
def test_necessity_and_sufficiency_agree_with_generic_exact(model, case):
    cause, alternative, outcome = CAUSES[case]
    evidence = {"r0.msg_rate": 1.0, "r1.preprepare_delay": 0.0}
    for query in (bd.probability_of_necessity, bd.probability_of_sufficiency):
        # Sufficiency of attacker = 1 intervenes on the attacker towards a replica with the outcome in both
        # worlds, which the engine's twin sum does not take: auto falls back to the generic backend.
        fallback = query is bd.probability_of_sufficiency and cause == {"attacker": 1.0}
        _agree(query(model, cause, alternative, outcome, evidence=evidence),
               query(model, cause, alternative, outcome, evidence=evidence, backend="exact"),
               "exact" if fallback else "cluster_engine")


def test_draws_give_an_interval_across_draws():
    model = bd.models.cluster(4, parameters={"flooding.p_attempt": [0.1, 0.9]})
    p = bd.intervene(model, {}, "flooding.precursor", evidence={"r0.msg_rate": 1.0})
    assert p.lower < p.mean < p.upper and p.details["draws"] == 2


def test_auto_falls_back_where_the_engine_cannot_answer():
    model = bd.models.cluster(4)
    evidence = {**EVIDENCE, "throughput_low": 1.0}
    # A counterfactual query on a site other than an outcome, and an intervention on telemetry.
    for ask in (lambda b: bd.counterfactual(model, evidence, {"rate_limited": 1.0}, "flooding.success", backend=b),
                lambda b: bd.intervene(model, {"r0.msg_rate": 1.0}, "flooding.success", backend=b)):
        with pytest.raises(bd.UnsupportedModelError, match="backend='exact'"):
            ask("cluster_engine")
        fallback = ask("auto")
        assert fallback.backend == "exact"
        assert fallback.mean == pytest.approx(ask("exact").mean, abs=1e-12)
    # Two interventions with an outcome observed and queried: the engine's twin sum needs one.
    with pytest.raises(bd.UnsupportedModelError, match="one intervention"):
        bd.counterfactual(model, evidence, {"rate_limited": 1.0, "isolated": 1.0}, {"throughput_low": 1.0},
                          backend="cluster_engine")


def test_engine_refuses_other_models_naming_a_backend_that_can():
    def coin():
        pyro.sample("x", dist.Bernoulli(0.5))

    with pytest.raises(bd.UnsupportedModelError, match="'exact' or 'importance'"):
        bd.intervene(coin, {}, "x", backend="cluster_engine")
    assert bd.intervene(coin, {}, "x").backend == "exact"
    continuous = bd.models.cluster(4, telemetry="continuous")
    with pytest.raises(bd.UnsupportedModelError, match="importance"):
        bd.intervene(continuous, {}, "flooding.success", backend="cluster_engine")


def test_impossible_evidence_raises_as_the_generic_backend_does():
    model = bd.models.cluster(4)
    for backend in ("cluster_engine", "exact"):
        with pytest.raises(bd.ImpossibleEvidenceError):
            bd.intervene(model, {"attacker": 0.0}, "flooding.success", evidence={"r1.faulty": 1.0}, backend=backend)


def test_declared_sites_match_the_trace_and_queries_skip_tracing():
    for model in (bd.models.cluster(4), bd.models.cluster(5, telemetry="continuous"),
                  bd.models.cluster(4, parameters={"flooding.p_attempt": [0.2, 0.4]})):
        # A wrapper declares nothing, so its description comes from a trace.
        traced = model_info(lambda model=model: model())
        assert {name: site.distribution for name, site in traced.sites.items()} == model.site_distributions
    fresh = bd.models.ClusterModel(6, 1, "indicators")
    bd.intervene(fresh, {"rate_limited": 1.0}, "flooding.success", evidence={"r0.msg_rate": 1})
    assert not model_info(fresh).traced
    assert list(model_info(fresh).sites) == list(fresh.site_distributions) and model_info(fresh).traced

"""Cluster model: countermeasure effects, the fast engine against the generic backends and pgmpy, parameters, bad input."""

import math

import networkx as nx
import numpy as np
import pytest

import bayes_defense as bd
from bayes_defense.models import ATTACKS, COUNTERMEASURES, PARAMETERS
from bayes_defense.models.engine import engine
from bayes_defense.models.queries import countermeasure_do

EVIDENCE = {"r0.duplicates": 1.0, "r1.msg_rate": 1.0, "r2.stale": 0.0, "join_rate": 0.0}
SITES = ["equivocation.success", "flooding.precondition", "flooding.precursor", "replay.executing",
         "attacker_inside", "eclipse_footing", "peer_table_exposed", "liveness_lost"]


@pytest.fixture(scope="module")
def model():
    return bd.models.cluster(5)


def _in_unit_interval(p):
    assert 0.0 <= p.lower <= p.mean <= p.upper <= 1.0


def test_matched_countermeasure_lowers_success_most(model):
    for evidence in ({}, {"r0.duplicates": 1, "r1.msg_rate": 1, "join_rate": 1}):
        baseline = bd.models.success_probability(model, evidence)
        for name, attack in ATTACKS.items():
            matched = bd.models.success_probability(model, evidence, countermeasures=[attack.matched])[name]
            _in_unit_interval(matched)
            assert matched.mean < baseline[name].mean, name
            for other in COUNTERMEASURES:
                p = bd.models.success_probability(model, evidence, countermeasures=[other])[name]
                _in_unit_interval(p)
                assert p.mean >= matched.mean - 1e-12, (name, other)


@pytest.mark.parametrize("do", [{}, {"rate_limited": 1.0}, {"isolated": 2.0}, {"attacker": 1.0},
                                {"flooding.precursor": 1.0}, {"primary_faulty": 1.0}])
def test_engine_matches_generic_exact(do):
    model = bd.models.cluster(4)
    fast = engine(model).marginals(SITES + ["attacker"], do=do, evidence=EVIDENCE)
    for site in SITES:
        reference = bd.intervene(model, do, site, evidence=EVIDENCE, backend="exact").mean
        assert fast[site] == pytest.approx(reference, abs=1e-9), site
    for k in range(5):
        reference = bd.intervene(model, do, lambda w, k=k: w["attacker"] == k, evidence=EVIDENCE,
                                 backend="exact").mean
        assert fast["attacker"][k] == pytest.approx(reference, abs=1e-9)


def test_engine_matches_generic_exact_with_outcomes_and_attack_evidence():
    model = bd.models.cluster(4)
    evidence = {**EVIDENCE, "throughput_low": 1.0, "safety_violated": 0.0, "replay.precursor": 1.0,
                "r3.faulty": 0.0}
    fast = engine(model).marginals(SITES, evidence=evidence)
    for site in SITES:
        reference = bd.intervene(model, {}, site, evidence=evidence, backend="exact").mean
        assert fast[site] == pytest.approx(reference, abs=1e-9), site


@pytest.mark.parametrize("do", [{"slow_leader.precursor": 0.0}, {"view_changed": 1.0}, {"isolated": 1.0},
                                {"attacker": 0.0}, {"slow_leader.executing": 1.0},
                                {"censorship.precondition": 1.0}])
def test_engine_counterfactual_matches_generic_exact(do):
    model = bd.models.cluster(4)
    evidence = {"r0.preprepare_delay": 1.0, "r1.ic_request": 1.0, "throughput_low": 1.0}
    values, weights = engine(model).counterfactual_outcomes(evidence, do, ["throughput_low", "liveness_lost"])
    for outcome, value in values.items():
        reference = bd.counterfactual(model, evidence, do, {outcome: 1.0}, backend="exact").mean
        assert float(weights @ value) == pytest.approx(reference, abs=1e-9)


def test_attack_simulation_matches_generic_exact(model):
    incident = {"r0.duplicates": 1, "r0.sig_fail": 1, "safety_violated": 1}
    for kwargs, do in (({"attack": "equivocation"}, {"equivocation.precursor": 0.0}),
                       ({"countermeasure": "trusted_component"}, {"trusted_component": 1.0}),
                       ({"countermeasure": "isolate_node", "target": 0}, {"isolated": 1.0})):
        simulated = bd.models.simulate_attack(model, incident, **kwargs)
        for outcome, p in simulated.items():
            _in_unit_interval(p)
            reference = bd.counterfactual(model, incident, do, {outcome: 1.0}, backend="exact").mean
            assert p.mean == pytest.approx(reference, abs=1e-9)


def test_importance_agrees_with_exact_within_five_standard_errors():
    model = bd.models.cluster(4)
    evidence = {"r1.msg_rate": 1.0, "r1.mac_fail": 1.0}
    checks = [
        (bd.models.precondition_check(model, evidence)["flooding"],
         lambda: bd.intervene(model, {}, "flooding.precondition", evidence=evidence, backend="importance",
                              num_samples=40_000, seed=1)),
        (bd.models.success_probability(model, evidence, countermeasures=["rate_limit"])["flooding"],
         lambda: bd.intervene(model, {"rate_limited": 1.0}, "flooding.success", evidence=evidence,
                              backend="importance", num_samples=40_000, seed=2)),
        (bd.models.simulate_attack(model, {**evidence, "throughput_low": 1}, attack="flooding",
                                   outcomes="throughput_low")["throughput_low"],
         lambda: bd.counterfactual(model, {**evidence, "throughput_low": 1.0}, {"flooding.precursor": 0.0},
                                   {"throughput_low": 1.0}, backend="importance", num_samples=40_000, seed=3)),
    ]
    for exact, sample in checks:
        sampled = sample()
        se = math.sqrt(max(exact.mean * (1 - exact.mean), 1e-6) / sampled.ess)
        assert abs(sampled.mean - exact.mean) < 5 * se, (exact, sampled)


def test_pgmpy_export_gives_the_same_interventional_answers():
    pytest.importorskip("pgmpy")
    from pgmpy.factors.discrete import TabularCPD
    from pgmpy.inference import VariableElimination

    from bayes_defense.causal.pgmpy_interop import to_pgmpy

    model = bd.models.cluster(4)
    evidence = {"r1.msg_rate": 1, "r0.duplicates": 1}
    for countermeasure in ("rate_limit", "trusted_component", "isolate_node"):
        do = countermeasure_do(model, [countermeasure], 1)
        network = to_pgmpy(model)
        # Graph surgery: cut the intervened sites from their parents, give them point masses.
        for site, value in do.items():
            for parent in list(network.get_parents(site)):
                network.remove_edge(parent, site)
            states = network.get_cpds(site).state_names[site]
            network.remove_cpds(network.get_cpds(site))
            network.add_cpds(TabularCPD(site, len(states), [[float(s == value)] for s in states],
                                        state_names={site: states}))
        sites = ["flooding.success", "equivocation.success", "liveness_lost"]
        fast = engine(model).marginals(sites, do=do, evidence=evidence)
        elimination = VariableElimination(network)
        for site in sites:
            answer = elimination.query([site], evidence=evidence, show_progress=False)
            assert float(answer.get_value(**{site: 1})) == pytest.approx(fast[site], abs=1e-9), (countermeasure, site)


def test_parameters_override_and_agree_with_generic_exact():
    default = bd.models.cluster(4)
    changed = bd.models.cluster(4, parameters={"flooding.p_attempt": 0.9, "telemetry.msg_rate.flooding": 0.5})
    assert changed is not default and bd.models.cluster(4) is default
    assert bd.models.cluster(4, parameters={"flooding.p_attempt": 0.9, "telemetry.msg_rate.flooding": 0.5}) \
        is changed
    evidence = {"r1.msg_rate": 1.0}
    for site in ("flooding.precursor", "flooding.success"):
        fast = engine(changed).marginals([site], evidence=evidence)[site]
        assert fast == pytest.approx(bd.intervene(changed, {}, site, evidence=evidence, backend="exact").mean,
                                     abs=1e-9)
        assert fast != pytest.approx(engine(default).marginals([site], evidence=evidence)[site], abs=1e-6)


def test_parameter_draws_average_exactly_and_widen_intervals():
    draws = {"flooding.p_attempt": np.array([0.1, 0.5, 0.9]), "outcome.throughput_low.baseline": [0.01, 0.05, 0.2]}
    model = bd.models.cluster(4, parameters=draws)
    assert model.n_draws == 3 and "theta_draw" in model.sites and model.graph.has_edge("theta_draw",
                                                                                        "flooding.precursor")
    evidence = {"r1.msg_rate": 1.0, "r1.mac_fail": 1.0, "throughput_low": 1.0}
    checks = bd.models.precondition_check(model, evidence)
    success = bd.models.success_probability(model, evidence, countermeasures=["rate_limit"])
    simulated = bd.models.simulate_attack(model, evidence, attack="flooding")
    for p in [*checks.values(), *success.values(), *simulated.values()]:
        _in_unit_interval(p)
    reference = bd.intervene(model, {}, "flooding.precondition", evidence=evidence, backend="exact").mean
    assert checks["flooding"].mean == pytest.approx(reference, abs=1e-9)
    reference = bd.intervene(model, {"rate_limited": 1.0}, "flooding.success", evidence=evidence,
                             backend="exact").mean
    assert success["flooding"].mean == pytest.approx(reference, abs=1e-9)
    reference = bd.counterfactual(model, evidence, {"flooding.precursor": 0.0}, {"liveness_lost": 1.0},
                                  backend="exact").mean
    assert simulated["liveness_lost"].mean == pytest.approx(reference, abs=1e-9)
    # Parameter uncertainty shows as width; a model with one value per parameter is exact.
    assert success["flooding"].upper - success["flooding"].lower > 1e-3
    assert bd.models.success_probability(bd.models.cluster(4), evidence)["flooding"].width == 0.0


def test_parameters_catalogue_lists_names_defaults_and_meanings():
    assert len(PARAMETERS) > 100
    for name, (default, meaning) in PARAMETERS.items():
        assert 0.0 <= default <= 1.0 and meaning, name
    assert PARAMETERS["flooding.p_attempt"].default == ATTACKS["flooding"].p_attempt
    assert PARAMETERS["sybil.efficacy.admission_control"].default == 0.95


def test_bad_input_lists_valid_names(model):
    with pytest.raises(bd.InvalidInputError, match="valid attacks: equivocation"):
        bd.models.success_probability(model, attacks=["teleport"])
    with pytest.raises(bd.InvalidInputError, match="valid countermeasures: view_change"):
        bd.models.success_probability(model, countermeasures=["firewall"])
    with pytest.raises(bd.InvalidInputError, match="valid attacks"):
        bd.models.simulate_attack(model, {"safety_violated": 1}, attack="teleport")
    for n_nodes in (3, 101, 4.0, True):
        with pytest.raises(bd.InvalidInputError, match="from 4 to 100"):
            bd.models.cluster(n_nodes)
    with pytest.raises(bd.UnknownSiteError, match="valid replicas are r0 to r4"):
        bd.models.precondition_check(model, {"r9.sig_fail": 1})
    with pytest.raises(bd.UnknownSiteError, match="per-replica sites"):
        bd.models.precondition_check(model, {"r1.nonsense": 1})
    with pytest.raises(bd.UnknownSiteError, match="Cluster-level sites: attacker"):
        bd.models.success_probability(model, {"leader_mood": 1})
    with pytest.raises(bd.ImpossibleEvidenceError, match="0 or 1"):
        bd.models.precondition_check(model, {"r1.sig_fail": 2})
    with pytest.raises(bd.InvalidInputError, match=r"valid parameters \(bd.models.PARAMETERS\): prior.attacker_inside"):
        bd.models.cluster(4, parameters={"flooding.p_atempt": 0.5})
    with pytest.raises(bd.InvalidInputError, match="must lie in"):
        bd.models.cluster(4, parameters={"flooding.p_attempt": 1.5})
    with pytest.raises(bd.InvalidInputError, match="same number of draws"):
        bd.models.cluster(4, parameters={"flooding.p_attempt": [0.1, 0.2], "replay.p_attempt": [0.1, 0.2, 0.3]})
    with pytest.raises(bd.InvalidInputError, match="1-D array"):
        bd.models.cluster(4, parameters={"flooding.p_attempt": [[0.1, 0.2]]})
    with pytest.raises(bd.InvalidInputError, match="exactly one"):
        bd.models.simulate_attack(model, {"safety_violated": 1})


def test_graph_is_a_dag_with_sources():
    graph = bd.models.cluster(4).graph
    assert nx.is_directed_acyclic_graph(graph)
    assert graph.has_edge("equivocation.executing", "equivocation.success")
    assert graph.has_edge("attacker", "r2.faulty") and graph.has_edge("r2.faulty", "r2.sig_fail")
    assert all(data["source"] for _, _, data in graph.edges(data=True))
    assert all(data["description"] for _, data in graph.nodes(data=True))

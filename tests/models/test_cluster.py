"""Cluster model: countermeasure effects, agreement with the generic backends, bad input."""

import math

import pytest
import torch

import bayes_defense as bd
from bayes_defense.models import ATTACKS, COUNTERMEASURES
from bayes_defense.models.engine import engine
from bayes_defense.models.queries import countermeasure_do


@pytest.fixture(scope="module")
def model():
    return bd.models.cluster(5)


def test_matched_countermeasure_lowers_success_most(model):
    baseline = bd.models.success_probability(model)
    for name, attack in ATTACKS.items():
        matched = bd.models.success_probability(model, countermeasures=[attack.matched])[name]
        assert matched.mean < baseline[name].mean
        for other in COUNTERMEASURES:
            p = bd.models.success_probability(model, countermeasures=[other])[name]
            assert 0.0 <= p.lower <= p.mean <= p.upper <= 1.0
            assert p.mean >= matched.mean - 1e-12, (name, other)


def test_engine_matches_generic_exact():
    model = bd.models.cluster(4)
    evidence = {"r0.duplicates": 1.0, "r1.msg_rate": 1.0, "r2.stale": 0.0, "join_rate": 0.0}
    for countermeasure in [None, *COUNTERMEASURES]:
        do = countermeasure_do(model, [countermeasure] if countermeasure else [], 1)
        fast = engine(model).marginals(["equivocation.success", "flooding.precondition"], do=do, evidence=evidence)
        for site, value in fast.items():
            reference = bd.intervene(model, do, site, evidence=evidence, backend="exact").mean
            assert value == pytest.approx(reference, abs=1e-9)


def test_engine_counterfactual_matches_generic_exact():
    model = bd.models.cluster(4)
    evidence = {"r0.preprepare_delay": 1.0, "throughput_low": 1.0}
    fast = engine(model).counterfactual_joint(evidence, {"slow_leader.precursor": 0.0}, [], ["throughput_low"])
    reference = bd.counterfactual(model, evidence, {"slow_leader.precursor": 0.0}, {"throughput_low": 1.0},
                                  backend="exact")
    assert float(fast[1]) == pytest.approx(reference.mean, abs=1e-9)


def test_importance_agrees_with_exact_within_five_standard_errors():
    model = bd.models.cluster(4)
    evidence = {"r1.msg_rate": 1.0}
    exact = bd.intervene(model, {}, "flooding.precursor", evidence=evidence, backend="exact").mean
    sampled = bd.intervene(model, {}, "flooding.precursor", evidence=evidence, backend="importance",
                           num_samples=40_000, seed=1)
    se = math.sqrt(exact * (1 - exact) / sampled.ess)
    assert abs(sampled.mean - exact) < 5 * se


@pytest.mark.filterwarnings("ignore:.*StructureScore.*:FutureWarning")
def test_pgmpy_surgery_matches_engine():
    pytest.importorskip("pgmpy")
    from pgmpy.factors.discrete import TabularCPD
    from pgmpy.inference import VariableElimination
    from pgmpy.models import DiscreteBayesianNetwork

    from bayes_defense.causal.structure import model_info
    from bayes_defense.inference.exact import compile_discrete

    model = bd.models.cluster(4)
    network = compile_discrete(model_info(model), model)
    do = {"rate_limited": 1.0}
    bn = DiscreteBayesianNetwork()
    bn.add_nodes_from(network.names)
    cpds = []
    for name in network.names:
        card = network.support[name].numel()
        if name in do:
            values = (network.support[name].double() == do[name]).double().reshape(card, 1).numpy()
            cpds.append(TabularCPD(name, card, values))
            continue
        parents = list(network.parents[name])
        bn.add_edges_from((p, name) for p in parents)
        table = network.cpt[name].reshape(-1, card).T.numpy()
        cpds.append(TabularCPD(name, card, table, evidence=parents or None,
                               evidence_card=[network.support[p].numel() for p in parents] or None))
    bn.add_cpds(*cpds)
    answer = VariableElimination(bn).query(["flooding.success"], evidence={"r1.msg_rate": 1}, show_progress=False)
    fast = engine(model).marginals(["flooding.success"], do=do, evidence={"r1.msg_rate": 1.0})["flooding.success"]
    assert float(answer.values[1]) == pytest.approx(fast, abs=1e-9)


def test_bad_input_lists_valid_names(model):
    with pytest.raises(bd.InvalidInputError, match="valid attacks: equivocation"):
        bd.models.success_probability(model, attacks=["teleport"])
    with pytest.raises(bd.InvalidInputError, match="valid countermeasures: view_change"):
        bd.models.success_probability(model, countermeasures=["firewall"])
    with pytest.raises(bd.InvalidInputError, match="from 4 to 100"):
        bd.models.cluster(3)
    with pytest.raises(bd.UnknownSiteError, match="valid replicas are r0 to r4"):
        bd.models.precondition_check(model, {"r9.sig_fail": 1})
    with pytest.raises(bd.UnknownSiteError, match="per-replica sites"):
        bd.models.precondition_check(model, {"r1.nonsense": 1})


def test_graph_is_a_dag_with_sources():
    import networkx as nx

    graph = bd.models.cluster(4).graph
    assert nx.is_directed_acyclic_graph(graph)
    assert graph.has_edge("equivocation.executing", "equivocation.success")
    assert all(data["source"] for _, _, data in graph.edges(data=True))
    assert torch.is_tensor(torch.tensor(0.0))

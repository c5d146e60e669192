"""What the public queries remember between calls, and when it must not be reused.

A repeated call checks its names, builds its queries and checks its batch for
the cluster engine once per pattern (the model, do, the evidence's names, the
queries); every value is read and checked again on each call. Each test warms
the caches with one call and then changes exactly one thing.
"""

import pytest
import torch

import bayes_defense as bd
from bayes_defense.causal.structure import model_info
from bayes_defense.inference.base import SiteValues, make_query
from bayes_defense.models import registry

QUERIES = ["flooding.success", "replay.precondition", {"throughput_low": 1.0}, "attacker"]
EVIDENCE = {"r0.msg_rate": 1, "r0.mac_fail": 1, "r1.msg_rate": 0, "join_rate": 0}
# The same names as EVIDENCE in the same order, other values.
OTHER_EVIDENCE = {"r0.msg_rate": 0, "r0.mac_fail": 1, "r1.msg_rate": 1, "join_rate": 1}


def _fresh(n=4, **kwargs):
    # A new model object: nothing cached for it yet (bd.models.cluster returns one object per configuration).
    return bd.models.ClusterModel(n, (n - 1) // 3, "indicators", **kwargs)


def _means(estimates):
    return [e.mean for e in estimates]


def test_the_same_names_with_other_values_are_answered_anew():
    model = _fresh()
    warm = bd.intervene(model, {}, QUERIES, evidence=EVIDENCE)
    again = bd.intervene(model, {}, QUERIES, evidence=OTHER_EVIDENCE)
    cold = bd.intervene(_fresh(), {}, QUERIES, evidence=OTHER_EVIDENCE)
    exact = bd.intervene(model, {}, QUERIES, evidence=OTHER_EVIDENCE, backend="exact")
    assert {e.backend for e in again} == {"cluster_engine"}
    assert _means(again) == pytest.approx(_means(cold), abs=1e-12)
    assert _means(again) == pytest.approx(_means(exact), abs=1e-9)
    assert _means(again) != pytest.approx(_means(warm), abs=1e-3)


def test_the_same_do_names_with_other_values_are_answered_anew():
    model = _fresh()
    first = bd.intervene(model, {"rate_limited": 1.0}, QUERIES, evidence=EVIDENCE)
    second = bd.intervene(model, {"rate_limited": 0.0}, QUERIES, evidence=EVIDENCE)
    cold = bd.intervene(_fresh(), {"rate_limited": 0.0}, QUERIES, evidence=EVIDENCE)
    assert _means(second) == pytest.approx(_means(cold), abs=1e-12)
    assert first[0].mean < second[0].mean   # rate limiting mitigates flooding


def test_counterfactual_and_necessity_read_their_values_every_call():
    model = _fresh()
    seen = {**EVIDENCE, "throughput_low": 1}
    unseen = {**OTHER_EVIDENCE, "throughput_low": 1}
    bd.counterfactual(model, seen, {"flooding.precursor": 0.0}, {"throughput_low": 1.0})
    again = bd.counterfactual(model, unseen, {"flooding.precursor": 0.0}, {"throughput_low": 1.0})
    cold = bd.counterfactual(_fresh(), unseen, {"flooding.precursor": 0.0}, {"throughput_low": 1.0})
    assert again.mean == pytest.approx(cold.mean, abs=1e-12)
    args = ({"flooding.executing": 1.0}, {"flooding.executing": 0.0}, {"throughput_low": 1.0})
    bd.probability_of_necessity(model, *args, evidence=EVIDENCE)
    pn = bd.probability_of_necessity(model, *args, evidence=OTHER_EVIDENCE)
    assert pn.mean == pytest.approx(bd.probability_of_necessity(_fresh(), *args, evidence=OTHER_EVIDENCE).mean,
                                    abs=1e-12)


def test_bad_values_fail_on_every_call_after_a_good_one():
    model = _fresh()
    bd.intervene(model, {"attacker": 1.0}, QUERIES, evidence=EVIDENCE)
    with pytest.raises(bd.InvalidInputError, match="finite"):
        bd.intervene(model, {"attacker": 1.0}, QUERIES, evidence={**EVIDENCE, "r0.msg_rate": float("nan")})
    with pytest.raises(bd.ImpossibleEvidenceError, match="0 or 1"):
        bd.intervene(model, {"attacker": 1.0}, QUERIES, evidence={**EVIDENCE, "r0.msg_rate": 2})
    with pytest.raises(bd.ImpossibleEvidenceError, match="support"):
        bd.intervene(model, {"attacker": 9.0}, QUERIES, evidence=EVIDENCE)
    # And the good call still answers as before.
    assert bd.intervene(model, {"attacker": 1.0}, QUERIES, evidence=EVIDENCE)[0].backend == "cluster_engine"


def test_names_checked_for_one_model_are_checked_again_for_another():
    evidence = {"r6.msg_rate": 1, "r0.mac_fail": 1}
    assert bd.intervene(bd.models.cluster(7), {}, "flooding.success", evidence=evidence).backend == "cluster_engine"
    with pytest.raises(bd.UnknownSiteError, match="r0 to r3"):
        bd.intervene(bd.models.cluster(4), {}, "flooding.success", evidence=evidence)
    with pytest.raises(bd.UnknownSiteError, match="r0 to r3"):
        bd.intervene(bd.models.cluster(4), {}, "r6.msg_rate")


def test_new_parameters_are_a_new_model_with_its_own_answers():
    queries = ["flooding.precursor", "flooding.success"]
    evidence = {"r0.mac_fail": 1}
    default = bd.intervene(bd.models.cluster(4), {}, queries, evidence=evidence)
    changed = bd.models.cluster(4, parameters={"flooding.p_attempt": 0.9})
    answers = bd.intervene(changed, {}, queries, evidence=evidence)
    exact = bd.intervene(changed, {}, queries, evidence=evidence, backend="exact")
    assert _means(answers) == pytest.approx(_means(exact), abs=1e-9)
    assert abs(answers[0].mean - default[0].mean) > 0.01


def test_posterior_draws_give_their_spread_after_point_parameters():
    queries = ["flooding.success", {"throughput_low": 1.0}]
    point = bd.intervene(bd.models.cluster(4), {}, queries, evidence=EVIDENCE)
    drawn = bd.models.cluster(4, parameters={"flooding.p_attempt": [0.1, 0.5, 0.9]})
    answers = bd.intervene(drawn, {}, queries, evidence=EVIDENCE)
    exact = bd.intervene(drawn, {}, queries, evidence=EVIDENCE, backend="exact")
    assert all(e.is_exact for e in point)
    assert answers[0].upper - answers[0].lower > 0.01
    assert _means(answers) == pytest.approx(_means(exact), abs=1e-9)
    for estimate in answers:
        assert 0.0 <= estimate.lower <= estimate.mean <= estimate.upper <= 1.0


@pytest.fixture
def registry_restored():
    try:
        yield
    finally:
        registry.reset()


def test_a_registry_change_is_a_new_model_and_reset_restores_the_answers(registry_restored):
    before_model = bd.models.cluster(4)
    before = bd.models.precondition_check(before_model, EVIDENCE)
    registry.add_attack("ghost_votes", footing="backup_faulty", attacker_side={"ic_request": 0.95, "mac_fail": 0.9},
                        impacts={"liveness_lost": 0.8}, p_success=0.7, matched="leader_rotation")
    model = bd.models.cluster(4)
    assert model is not before_model
    checks = bd.models.precondition_check(model, EVIDENCE)
    assert list(checks) == [*before, "ghost_votes"]
    ghost = bd.intervene(model, {}, "ghost_votes.success", evidence=EVIDENCE)
    assert ghost.backend == "cluster_engine"
    assert ghost.mean == pytest.approx(
        bd.intervene(model, {}, "ghost_votes.success", evidence=EVIDENCE, backend="exact").mean, abs=1e-9)
    # The model built before the change keeps its own attacks: the new site is not one of its names.
    with pytest.raises(bd.UnknownSiteError):
        bd.intervene(before_model, {}, "ghost_votes.success", evidence=EVIDENCE)
    assert bd.models.precondition_check(before_model, EVIDENCE) == before
    registry.reset()
    assert bd.models.cluster(4) is before_model
    assert bd.models.precondition_check(bd.models.cluster(4), EVIDENCE) == before


def test_a_callable_query_is_called_anew_each_time():
    model = _fresh()
    threshold = {"value": 1}

    def attacker_at_least(world):
        return world["attacker"] >= threshold["value"]

    first = bd.intervene(model, {}, attacker_at_least, evidence=EVIDENCE)
    threshold["value"] = 2
    second = bd.intervene(model, {}, attacker_at_least, evidence=EVIDENCE)
    exact = bd.intervene(model, {}, attacker_at_least, evidence=EVIDENCE, backend="exact")
    assert second.mean < first.mean
    assert second.mean == pytest.approx(exact.mean, abs=1e-9)


def test_site_and_event_queries_are_built_once_per_model():
    info = model_info(bd.models.cluster(4))
    assert make_query("flooding.success", info) is make_query("flooding.success", info)
    assert make_query({"throughput_low": 1.0}, info) is make_query({"throughput_low": 1.0}, info)
    # 1 and 1.0 are one event but not one description: a value's type is part of what is remembered.
    assert make_query({"throughput_low": 1}, info) is not make_query({"throughput_low": 1.0}, info)
    other = model_info(bd.models.cluster(7))
    assert make_query("flooding.success", other) is not make_query("flooding.success", info)
    with pytest.raises(bd.UnknownSiteError):
        make_query("r6.msg_rate", info)


def test_site_values_keep_the_given_numbers_after_a_tensor_read():
    values = SiteValues({"x": 1, "y": torch.tensor(0.5)})
    assert not values.plain and SiteValues({"x": 1, "z": True, "w": 0.5}).plain
    assert values["x"].item() == 1.0 and values["x"].dtype == torch.get_default_dtype()
    assert values["x"] is values["x"]
    assert values.raw() == {"x": 1, "y": values["y"]} and type(values.raw()["x"]) is int

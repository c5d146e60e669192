"""bd.explain: PN, PS and posteriors against the generic exact backend; ranking of injected causes; bad input."""

import json

import numpy as np
import pytest

import bayes_defense as bd
from bayes_defense.explain import explain
from bayes_defense.models import ATTACKS


def _check_against_generic(model, evidence, outcome, count):
    result = explain(model, evidence, outcome)
    scores = [c.score.mean for c in result.causes]
    assert all(a >= b - 1e-12 for a, b in zip(scores, scores[1:], strict=False))
    for cause in result.causes:
        for p in (cause.posterior, cause.necessity, cause.sufficiency, cause.score):
            assert 0.0 <= p.lower <= p.mean <= p.upper <= 1.0
    for cause in result.causes[:count]:
        if cause.kind == "node":
            replica = int(cause.name[1:])
            site, value, alternative = "attacker", float(replica + 1), {"attacker": 0.0}
            query = lambda w, k=replica + 1: w["attacker"] == k  # noqa: E731
        else:
            site, value, alternative, query = cause.site, 1.0, {cause.site: 0.0}, cause.site
        necessity = bd.probability_of_necessity(model, {site: value}, alternative, outcome, evidence=evidence,
                                                backend="exact").mean
        posterior = bd.intervene(model, {}, query, evidence={**evidence, **outcome}, backend="exact").mean
        assert cause.necessity.mean == pytest.approx(necessity, abs=1e-9), cause.name
        assert cause.posterior.mean == pytest.approx(posterior, abs=1e-9), cause.name
        assert cause.score.mean == pytest.approx(posterior * necessity, abs=1e-9), cause.name
        if cause.kind != "node":
            sufficiency = bd.probability_of_sufficiency(model, {site: value}, alternative, outcome,
                                                        evidence=evidence, backend="exact").mean
            assert cause.sufficiency.mean == pytest.approx(sufficiency, abs=1e-9), cause.name
    return result


def test_explanation_matches_generic_exact():
    model = bd.models.cluster(4)
    result = _check_against_generic(model, {"r0.msg_rate": 1, "r0.mac_fail": 1, "r1.duplicates": 0},
                                    {"throughput_low": 1}, count=10)
    assert result.top_attack == "flooding"
    assert {c.kind for c in result.causes} == {"attack", "precursor", "precondition", "node"}
    assert len(result.causes) == 3 * len(ATTACKS) + model.n_nodes


def test_explanation_with_two_outcomes_evidence_outcomes_and_parameter_draws():
    model = bd.models.cluster(4, parameters={"flooding.p_attempt": [0.2, 0.6]})
    evidence = {"r0.msg_rate": 1, "r0.mac_fail": 1, "liveness_lost": 1, "replay.precursor": 0}
    _check_against_generic(model, evidence, {"throughput_low": 1, "safety_violated": 0}, count=8)


def test_explanation_outputs():
    model = bd.models.cluster(5)
    result = explain(model, {"r0.preprepare_delay": 1, "r2.ic_request": 1}, {"latency_high": 1})
    assert result.top_attack == "slow_leader"
    text = result.text
    assert text.startswith("Why latency_high=1?") and "necessity" in text and str(result) == text
    json.dumps(result.as_dict())
    frame = result.as_dataframe()
    assert list(frame["name"]) == [c.name for c in result.causes]


# Measured (n = 10, seed 0, the catalogue of 2026-11-24, second revision): equivocation 97,
# slow_leader 100, censorship 100, flooding 100, view_change_abuse 95, replay 100, sybil 98, eclipse
# 99. The Bayes classifier that names the attack with the largest posterior P(A.executing | incident)
# scores 97, 100, 100, 99, 95, 100, 97, 98 on the same incidents, so the misses are in the incidents
# (no signal of the injected attack, or a weak one outweighed by benign indicators), not the ranking.
# On larger samples (seed 11, 1000 incidents) the explanation names each attack in 97.7-99.7%
# (SE 0.2-0.5%), so 95 of 100 holds at this and most seeds; docs/models.md has every figure.
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_explanation_ranks_the_injected_attack_first(attack):
    model = bd.models.cluster(10)
    cases = bd.models.sample_incidents(model, attack, 100, seed=0)
    hits = sum(explain(model, evidence, outcome).top_attack == attack for evidence, outcome in cases)
    assert hits >= 95, hits


def test_bad_input():
    model = bd.models.cluster(4)
    with pytest.raises(bd.InvalidInputError, match="explains cluster outcomes: safety_violated"):
        explain(model, {}, {"flooding.success": 1})
    with pytest.raises(bd.InvalidInputError, match="non-empty"):
        explain(model, {}, {})
    with pytest.raises(bd.InvalidInputError, match="take 0 or 1"):
        explain(model, {}, {"liveness_lost": 3})
    with pytest.raises(bd.UnknownSiteError, match="valid replicas are r0 to r3"):
        explain(model, {"r4.stale": 1}, {"liveness_lost": 1})
    with pytest.raises(bd.InvalidInputError, match="indicator-mode"):
        explain(bd.models.cluster(4, telemetry="continuous"), {}, {"liveness_lost": 1})
    assert np.isfinite(explain(model, {}, {"liveness_lost": 0}).causes[0].score.mean)

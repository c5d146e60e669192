"""bd.plan: next-window success against the generic exact backend, Pareto front, robust choice, multi-step plans."""

import itertools
import json

import numpy as np
import pytest

import bayes_defense as bd
from bayes_defense.models import ATTACKS, COUNTERMEASURES
from bayes_defense.models.queries import countermeasure_do

EVIDENCE = {"r1.msg_rate": 1, "r1.mac_fail": 1, "r0.duplicates": 0, "join_rate": 1}
KNOWN_OFF = {c.site: 0.0 for c in COUNTERMEASURES.values()}


@pytest.fixture(scope="module")
def model():
    return bd.models.cluster(4)


def _interventional_risk(model, evidence, chosen, target):
    do = {**KNOWN_OFF, **countermeasure_do(model, chosen, target)}
    return {a: bd.intervene(model, do, f"{a}.success", evidence=evidence, backend="exact").mean for a in ATTACKS}


def test_option_success_equals_interventional_exact(model):
    result = bd.plan(model, EVIDENCE, max_steps=1)
    target = 1  # the replica whose telemetry flags it
    assert result.settings["target"] is None
    for option in result.ranked:
        reference = _interventional_risk(model, EVIDENCE, option.countermeasures, target)
        for attack, p in option.success.items():
            assert 0.0 <= p.lower <= p.mean <= p.upper <= 1.0
            assert p.mean == pytest.approx(reference[attack], abs=1e-9), (option.countermeasures, attack)
        risk = sum(ATTACKS[a].damage * reference[a] for a in ATTACKS)
        assert option.risk == pytest.approx(risk, abs=1e-9)
        cost = sum(COUNTERMEASURES[c].cost for c in option.countermeasures)
        assert option.loss == pytest.approx(risk + cost, abs=1e-9)
        assert option.risk_lower == option.risk == option.risk_upper


def test_next_window_projection_with_observed_outcomes(model):
    # Observed outcomes inform the attack state; success in the next window is drawn afresh.
    evidence = {**EVIDENCE, "throughput_low": 1, "safety_violated": 0}
    result = bd.plan(model, evidence, countermeasures=["rate_limit", "isolate_node"], max_steps=1)
    target = 1
    for option in result.ranked:
        do_next = {**KNOWN_OFF, **countermeasure_do(model, option.countermeasures, target)}
        for attack in ("flooding", "slow_leader"):
            state = [bd.intervene(model, KNOWN_OFF, lambda w, a=a, s=attack: (w["attacker"] == a)
                                  & (w[f"{s}.executing"] == 1), evidence=evidence, backend="exact").mean
                     for a in range(model.n_nodes + 1)]
            reference = sum(p * bd.intervene(model, {**do_next, "attacker": float(a), f"{attack}.executing": 1.0},
                                             f"{attack}.success", backend="exact").mean
                            for a, p in enumerate(state) if p > 0)
            assert option.success[attack].mean == pytest.approx(reference, abs=1e-9)


def test_pareto_front_and_robust_choice(model):
    result = bd.plan(model, EVIDENCE, max_steps=1)
    options = result.ranked

    def dominates(p, o):
        return p.risk <= o.risk and p.cost <= o.cost and (p.risk < o.risk or p.cost < o.cost)

    for o in result.pareto:
        assert not any(dominates(p, o) for p in options)
    for o in options:
        if o not in result.pareto:
            assert any(dominates(p, o) for p in result.pareto)
    assert [o.cost for o in result.pareto] == sorted(o.cost for o in result.pareto)
    assert result.robust.risk_upper == min(o.risk_upper for o in options)
    assert [o.loss for o in result.ranked] == sorted(o.loss for o in result.ranked)
    assert result.best is result.ranked[0]


def test_multistep_plan_is_the_best_sequence(model):
    candidates = ["rate_limit", "isolate_node", "trusted_component", "admission_control"]
    result = bd.plan(model, EVIDENCE, countermeasures=candidates, max_steps=3, horizon=3)
    assert len(result.steps) <= 3 and len(set(result.steps)) == len(result.steps)
    # Loss of every set, from the generic exact backend.
    loss = {}
    for length in range(4):
        for chosen in itertools.combinations(sorted(candidates), length):
            risk = _interventional_risk(model, EVIDENCE, chosen, 1)
            loss[frozenset(chosen)] = sum(ATTACKS[a].damage * p for a, p in risk.items()) + sum(
                COUNTERMEASURES[c].cost for c in chosen)
    best = min(sum(loss[frozenset(seq[:min(step + 1, len(seq))])] for step in range(3))
               for length in range(4) for seq in itertools.permutations(candidates, length))
    assert sum(result.step_losses) == pytest.approx(best, abs=1e-9)
    for step, value in enumerate(result.step_losses):
        applied = frozenset(result.steps[:min(step + 1, len(result.steps))])
        assert value == pytest.approx(loss[applied], abs=1e-9)


def test_deployed_countermeasures_stay_in_place(model):
    plain = bd.plan(model, EVIDENCE, max_steps=1)
    deployed = bd.plan(model, EVIDENCE, max_steps=1, deployed=["rate_limit"])
    assert all("rate_limit" not in o.countermeasures for o in deployed.ranked)
    nothing = next(o for o in deployed.ranked if not o.countermeasures)
    with_rate_limit = next(o for o in plain.ranked if o.countermeasures == ("rate_limit",))
    assert nothing.risk == pytest.approx(with_rate_limit.risk, abs=1e-12)


def test_replan_and_backward_compatible_shape(model):
    result = bd.plan(model, {"flooding.precursor": 1.0, "r1.faulty": 1.0}, max_steps=1, horizon=1)
    option = result.best
    for name in ("countermeasures", "risk", "risk_lower", "risk_upper", "cost", "loss", "loss_lower",
                 "loss_upper", "success"):
        assert hasattr(option, name)
    for name in ("ranked", "pareto", "robust", "steps", "step_losses", "horizon", "evidence", "best"):
        assert hasattr(result, name)
    json.dumps(result.as_dict())
    assert "Countermeasures by expected loss" in str(result)
    again = result.replan({"flooding.executing": 1.0})
    assert again.evidence == {"flooding.precursor": 1.0, "r1.faulty": 1.0, "flooding.executing": 1.0}
    assert again.settings == result.settings and again.best is again.ranked[0]
    flooding_fixes = {"rate_limit", "isolate_node"}
    assert set(again.best.countermeasures) <= flooding_fixes


def test_parameter_draws_give_risk_intervals():
    model = bd.models.cluster(4, parameters={"flooding.p_success": np.array([0.2, 0.5, 0.8]),
                                             "flooding.efficacy.rate_limit": [0.5, 0.9, 0.99]})
    result = bd.plan(model, EVIDENCE, max_steps=1)
    for option in result.ranked:
        assert option.risk_lower <= option.risk <= option.risk_upper
        assert option.loss_lower <= option.loss <= option.loss_upper
    assert any(o.risk_upper - o.risk_lower > 1e-3 for o in result.ranked)
    target = 1
    for option in result.ranked[:3]:
        reference = _interventional_risk(model, EVIDENCE, option.countermeasures, target)
        assert option.success["flooding"].mean == pytest.approx(reference["flooding"], abs=1e-9)


def test_bad_input(model):
    with pytest.raises(bd.InvalidInputError, match="valid countermeasures: view_change"):
        bd.plan(model, EVIDENCE, countermeasures=["firewall"])
    with pytest.raises(bd.InvalidInputError, match="valid countermeasures"):
        bd.plan(model, EVIDENCE, deployed=["moat"])
    for steps in (0, 4, 1.5):
        with pytest.raises(bd.InvalidInputError, match="max_steps must be 1, 2 or 3"):
            bd.plan(model, EVIDENCE, max_steps=steps)
    with pytest.raises(bd.InvalidInputError, match="horizon"):
        bd.plan(model, EVIDENCE, horizon=0)
    with pytest.raises(bd.InvalidInputError, match="target must be a replica index from 0 to 3"):
        bd.plan(model, EVIDENCE, target=7)
    with pytest.raises(bd.UnknownSiteError, match="valid replicas are r0 to r3"):
        bd.plan(model, {"r8.msg_rate": 1})
    with pytest.raises(bd.InvalidInputError, match="indicator-mode"):
        bd.plan(bd.models.cluster(4, telemetry="continuous"), {})

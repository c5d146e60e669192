"""An attack added with registry.add_attack reaches the cluster SCM, its engine, bd.plan and bd.explain."""

import pytest

import bayes_defense as bd
from bayes_defense.models import registry, tables

# A backup that votes for instance changes and sends messages with bad authenticators; its own
# countermeasure is one no built-in attack is matched to.
GHOST = dict(footing="backup_faulty", attacker_side={"ic_request": 0.95, "mac_fail": 0.9},
             impacts={"liveness_lost": 0.8}, p_success=0.7, matched="leader_rotation", damage=0.8)

# Its evidence: r1 raises both signals, nobody floods, nobody else votes.
SHOWS = {"r1.ic_request": 1, "r1.mac_fail": 1, **{f"r{k}.msg_rate": 0 for k in range(4)},
         **{f"r{k}.ic_request": 0 for k in (0, 2, 3)}}
QUIET = {f"r{k}.{t}": 0 for k in range(4) for t in ("ic_request", "mac_fail", "msg_rate")}


@pytest.fixture
def ghost():
    registry.add_attack("ghost_votes", **GHOST)
    try:
        yield bd.models.cluster(4)
    finally:
        registry.remove_attack("ghost_votes")


def _answers(model):
    """Plan, explanation and cluster queries of the built-in attacks, as numbers."""
    plan = bd.plan(model, SHOWS)
    explanation = bd.explain(model, SHOWS, {"liveness_lost": 1})
    checks = bd.models.precondition_check(model, SHOWS)
    return ([(o.countermeasures, o.loss) for o in plan.ranked], [(c.name, c.score.mean) for c in explanation.causes],
            {a: p.mean for a, p in checks.items()})


def test_the_model_has_the_attack_sites_and_parameters(ghost):
    assert ghost.structure.attack_names[-1] == "ghost_votes"
    for level in ("precondition", "precursor", "executing", "success"):
        assert f"ghost_votes.{level}" in ghost.sites
    assert ghost.parameter_values["telemetry.ic_request.ghost_votes"][0] == 0.95
    assert ghost.parameter_values["ghost_votes.efficacy.leader_rotation"][0] == 0.9
    assert "ghost_votes.precursor" in ghost.graph.predecessors("r1.mac_fail")
    fitted = bd.models.cluster(4, parameters={"ghost_votes.p_attempt": [0.1, 0.5]})
    assert fitted.n_draws == 2 and fitted.structure is ghost.structure


def test_it_is_planned_against_when_its_evidence_shows(ghost):
    assert bd.plan(ghost, SHOWS).best.countermeasures == ("leader_rotation",)
    assert bd.plan(ghost, QUIET).best.countermeasures != ("leader_rotation",)
    success = bd.plan(ghost, SHOWS).best.success["ghost_votes"]
    assert 0.0 <= success.lower <= success.mean <= success.upper <= 1.0


def test_it_is_named_as_the_cause(ghost):
    explanation = bd.explain(ghost, SHOWS, {"liveness_lost": 1})
    assert explanation.top_attack == "ghost_votes"
    checks = bd.models.precondition_check(ghost, SHOWS)
    assert set(checks) == set(ghost.structure.attack_names)


@pytest.mark.parametrize("do, query, evidence", [
    ({}, "ghost_votes.precursor", SHOWS),
    ({"leader_rotation": 1.0}, "ghost_votes.success", SHOWS),
    ({"attacker": 2.0}, {"ghost_votes.executing": 1.0, "liveness_lost": 1.0}, {"r1.ic_request": 1.0}),
    ({"ghost_votes.precursor": 1.0}, "liveness_lost", {"r0.mac_fail": 0.0}),
    ({}, "attacker", {**SHOWS, "liveness_lost": 1.0}),
])
def test_engine_agrees_with_generic_exact(ghost, do, query, evidence):
    fast = bd.intervene(ghost, do, query, evidence=evidence)
    exact = bd.intervene(ghost, do, query, evidence=evidence, backend="exact")
    assert fast.backend == "cluster_engine" and exact.backend == "exact"
    assert fast.mean == pytest.approx(exact.mean, abs=1e-9)


def test_incidents_it_causes_are_simulated_and_explained(ghost):
    cases = bd.models.sample_incidents(ghost, "ghost_votes", 20, seed=1)
    assert all(seen == {"liveness_lost": 1} for _, seen in cases)
    # Without the attack in the engine no explanation could name it; most should.
    named = sum(bd.explain(ghost, evidence, seen).top_attack == "ghost_votes" for evidence, seen in cases)
    assert named > len(cases) // 2
    simulated = bd.models.simulate_attack(ghost, {**cases[0][0], **cases[0][1]}, attack="ghost_votes")
    assert simulated["liveness_lost"].mean < 0.5


def test_engine_counterfactuals_agree_with_generic_exact(ghost):
    incident = {**SHOWS, "liveness_lost": 1.0}
    fast = bd.probability_of_necessity(ghost, {"ghost_votes.executing": 1.0}, {"ghost_votes.executing": 0.0},
                                       {"liveness_lost": 1.0}, evidence=SHOWS)
    exact = bd.probability_of_necessity(ghost, {"ghost_votes.executing": 1.0}, {"ghost_votes.executing": 0.0},
                                        {"liveness_lost": 1.0}, evidence=SHOWS, backend="exact")
    assert fast.backend == "cluster_engine" and fast.mean == pytest.approx(exact.mean, abs=1e-9)
    fast = bd.counterfactual(ghost, incident, {"leader_rotation": 1.0}, {"liveness_lost": 1.0})
    exact = bd.counterfactual(ghost, incident, {"leader_rotation": 1.0}, {"liveness_lost": 1.0}, backend="exact")
    assert fast.backend == "cluster_engine" and fast.mean == pytest.approx(exact.mean, abs=1e-9)


def test_removing_or_resetting_restores_the_builtin_results():
    before = _answers(bd.models.cluster(4))
    registry.add_attack("ghost_votes", **GHOST)
    try:
        assert _answers(bd.models.cluster(4)) != before
    finally:
        registry.remove_attack("ghost_votes")
    assert tables.structure() is tables.CATALOGUE
    assert _answers(bd.models.cluster(4)) == before
    registry.add_attack("ghost_votes", **GHOST)
    registry.reset()
    assert _answers(bd.models.cluster(4)) == before
    assert "ghost_votes.precursor" not in bd.models.cluster(4).sites


def test_a_model_keeps_the_attacks_it_was_built_with(ghost):
    registry.remove_attack("ghost_votes")
    try:
        assert "ghost_votes" in ghost.structure.attack_names
        assert bd.explain(ghost, SHOWS, {"liveness_lost": 1}).top_attack == "ghost_votes"
        assert "ghost_votes" not in bd.models.cluster(4).structure.attack_names
    finally:
        registry.add_attack("ghost_votes", **GHOST)


def test_unknown_parameters_of_an_attack_not_added_are_refused():
    with pytest.raises(bd.InvalidInputError, match="unknown parameter"):
        bd.models.cluster(4, parameters={"ghost_votes.p_attempt": 0.2})


def test_the_examples_of_docs_models_run():
    import doctest
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "docs" / "models.md"
    failed, attempted = doctest.testfile(str(path), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert attempted > 0 and failed == 0
    assert tables.structure() is tables.CATALOGUE

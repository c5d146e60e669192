"""Safety with at most f Byzantine replicas, liveness after a view change, divergence with f + 1."""

from __future__ import annotations

from collections import defaultdict

import pytest

from bayes_defense.sim import AttackSpec, FaultSpec, Scenario, Simulation


def honest_commit_digests(simulation, events):
    byzantine = set()
    for label in simulation.labels:
        byzantine.update(label["nodes"])
        byzantine.update(label["colluders"])
    digests = defaultdict(set)
    for e in events:
        if e.kind == "commit" and e.node not in byzantine:
            digests[e.attrs["seq"]].add(e.attrs["digest"])
    return digests


@pytest.mark.parametrize("nodes, colluders", [(4, 0), (7, 0), (7, 1), (10, 2)])
def test_at_most_f_byzantine_never_diverge(nodes, colluders):
    f = (nodes - 1) // 3
    assert 1 + colluders <= f
    scenario = Scenario(nodes=nodes, duration=60.0, seed=11,
                        attacks=[AttackSpec("equivocation", start=20, precursor=10, duration=35, colluders=colluders)])
    simulation = Simulation(scenario)
    events = list(simulation.events())
    digests = honest_commit_digests(simulation, events)
    assert digests, "nothing committed"
    assert all(len(d) == 1 for d in digests.values())
    assert simulation.safety_violations == 0
    assert not [e for e in events if e.kind == "safety_violation"]


def test_f_plus_one_colluding_equivocators_can_diverge_and_it_is_logged():
    scenario = Scenario(nodes=7, duration=40.0, seed=11,
                        attacks=[AttackSpec("equivocation", start=20, precursor=10, duration=15, colluders=2)])
    simulation = Simulation(scenario)
    events = list(simulation.events())
    digests = honest_commit_digests(simulation, events)
    diverged = {seq for seq, d in digests.items() if len(d) > 1}
    assert diverged
    logged = {int(e.value) for e in events if e.kind == "safety_violation"}
    assert logged == diverged
    assert min(e.ts for e in events if e.kind == "safety_violation") >= 20


def commits_after(events, ts, min_view):
    return [e for e in events if e.kind == "commit" and e.ts > ts and e.attrs["view"] >= min_view]


def test_liveness_returns_after_primary_crash():
    scenario = Scenario(nodes=4, duration=40.0, seed=5, faults=[FaultSpec("crash", start=10, duration=25, node="r0")])
    simulation = Simulation(scenario)
    events = list(simulation.events())
    new_views = [e for e in events if e.kind == "new_view"]
    assert new_views and new_views[0].ts > 10 and new_views[0].attrs["primary"] == "r1"
    assert new_views[0].ts < 10 + 3 * scenario.request_timeout
    after = commits_after(events, new_views[0].ts, 1)
    assert len({e.attrs["seq"] for e in after}) > 50
    assert not [e for e in events if e.kind == "commit" and 10.2 < e.ts < new_views[0].ts]


def test_liveness_returns_after_equivocating_primary_is_replaced():
    scenario = Scenario(nodes=7, duration=50.0, seed=5,
                        attacks=[AttackSpec("equivocation", start=20, precursor=5, duration=25)])
    simulation = Simulation(scenario)
    events = list(simulation.events())
    new_views = [e for e in events if e.kind == "new_view" and e.ts > 20]
    assert new_views
    assert len({e.attrs["seq"] for e in commits_after(events, new_views[0].ts, 1)}) > 50
    assert simulation.safety_violations == 0


def test_partition_heals_and_minority_keeps_safety():
    scenario = Scenario(nodes=7, duration=60.0, seed=8,
                        faults=[FaultSpec("partition", start=10, duration=20, nodes=("r0", "r3"))])
    simulation = Simulation(scenario)
    events = list(simulation.events())
    assert all(len(d) == 1 for d in honest_commit_digests(simulation, events).values())
    # After healing every replica commits again.
    late = {e.node for e in events if e.kind == "commit" and e.ts > 40}
    assert late == set(scenario.replica_names)

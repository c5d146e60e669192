"""Each attack leaves its protocol-level mark in the log; benign runs do not."""

from __future__ import annotations

from collections import defaultdict
from functools import cache

import pytest

from bayes_defense.sim import ATTACKS, AttackSpec, Scenario, Simulation

NODES = 7
F = (NODES - 1) // 3
PRECURSOR_START, START, END = 20.0, 60.0, 110.0


@cache
def run(attack: str | None, intensity: float = 1.0, seed: int = 3):
    attacks = [] if attack is None else [AttackSpec(attack, start=START, precursor=START - PRECURSOR_START, duration=END - START, intensity=intensity)]
    simulation = Simulation(Scenario(nodes=NODES, duration=120.0, seed=seed, attacks=attacks))
    events = list(simulation.events())
    return simulation, events


def values(events, kind, lo, hi, node=None):
    return [e.value for e in events if e.kind == kind and lo <= e.ts < hi and (node is None or e.node == node)]


def mean(xs):
    assert xs, "no events in the window"
    return sum(xs) / len(xs)


def test_every_attack_has_a_test_scenario():
    assert set(ATTACKS) == {"equivocation", "slow_leader", "censorship", "flooding", "view_change_abuse", "replay", "sybil", "eclipse"}


def conflicting_preprepares(events):
    digests = defaultdict(set)
    for e in events:
        if e.kind == "preprepare":
            digests[(e.attrs["view"], e.attrs["seq"])].add(e.attrs["digest"])
    return {key: d for key, d in digests.items() if len(d) > 1}


def test_equivocation_conflicting_digests_for_one_view_and_sequence():
    _, events = run("equivocation")
    conflicts = conflicting_preprepares(events)
    assert conflicts
    # The conflicts belong to the attack window, and a benign run has none.
    first = min(e.ts for e in events if e.kind == "preprepare" and (e.attrs["view"], e.attrs["seq"]) in conflicts)
    assert first >= PRECURSOR_START
    assert not conflicting_preprepares(run(None)[1])


def test_slow_leader_pre_prepare_intervals_rise():
    _, events = run("slow_leader")
    baseline = mean(values(events, "preprepare_interval", 2, PRECURSOR_START))
    early = mean(values(events, "preprepare_interval", PRECURSOR_START, PRECURSOR_START + 15))
    late = mean(values(events, "preprepare_interval", START - 15, START))
    execution = mean(values(events, "preprepare_interval", START, END))
    assert baseline < early < late <= execution * 1.05
    assert execution > 4 * baseline


def test_censorship_requests_propagated_but_not_ordered():
    simulation, events = run("censorship")
    target = simulation.labels[0]["victims"][0]
    stalled = [e for e in events if e.kind == "request_stalled" and e.attrs["client"] == target]
    assert stalled
    # Propagated by at least f + 1 replicas, reported while the censoring replica was primary.
    assert all(e.attrs["propagated_by"] >= F + 1 for e in stalled)
    assert all(e.attrs["view"] == 0 for e in stalled)
    assert simulation.labels[0]["nodes"] == ["r0"]
    # Only other clients were ever stalled? No: only the target is.
    assert {e.attrs["client"] for e in events if e.kind == "request_stalled"} == {target}
    # The backups' timers expire and a view change replaces the censor.
    new_views = [e for e in events if e.kind == "new_view" and e.ts > stalled[0].ts]
    assert new_views and new_views[0].attrs["primary"] != "r0"
    assert not [e for e in run(None)[1] if e.kind == "request_stalled"]


def test_flooding_per_source_rate():
    simulation, events = run("flooding")
    attacker = simulation.labels[0]["nodes"][0]
    during = [e for e in events if e.kind == "source_rate_max" and START + 1 <= e.ts <= END and e.node != attacker]
    assert during and all(e.attrs["source"] == attacker for e in during)
    baseline = max(values(events, "source_rate_max", 0, PRECURSOR_START))
    assert min(e.value for e in during) > 10 * baseline


def test_view_change_abuse_bursts():
    simulation, events = run("view_change_abuse")
    attacker = simulation.labels[0]["nodes"][0]
    requests = values(events, "view_change_requests", START, END)
    assert mean(requests) > 1.0
    assert max(values(events, "view_change_requests", 0, PRECURSOR_START)) == 0
    burst = [e for e in events if e.kind == "view_change" and e.node == attacker and START <= e.ts < END]
    assert len(burst) > 20
    # One abuser is at most f: the honest replicas never join, the view stays.
    assert simulation.view_changes == 0


def test_replay_duplicate_and_stale_messages():
    _, events = run("replay")
    for kind in ("duplicate_messages", "stale_messages"):
        baseline = mean(values(events, kind, 0, PRECURSOR_START))
        assert mean(values(events, kind, START, END)) > 20 * max(baseline, 0.1)


def test_sybil_join_burst_sharing_a_network():
    simulation, events = run("sybil")
    joins = [e for e in events if e.kind == "join" and PRECURSOR_START <= e.ts <= START + 1]
    by_prefix = defaultdict(set)
    for e in joins:
        by_prefix[e.attrs["prefix"]].add(e.node)
    prefix, identities = max(by_prefix.items(), key=lambda item: len(item[1]))
    assert identities == set(simulation.labels[0]["nodes"])
    assert len(identities) >= 5
    # Benign joins come from diverse networks.
    benign = defaultdict(set)
    for e in run(None)[1]:
        if e.kind == "join":
            benign[e.attrs["prefix"]].add(e.node)
    assert all(len(nodes) < 3 for nodes in benign.values())


def test_eclipse_collapsing_peer_diversity():
    simulation, events = run("eclipse")
    victim = simulation.labels[0]["victims"][0]
    baseline = values(events, "peer_diversity", 0, PRECURSOR_START, node=victim)
    execution = values(events, "peer_diversity", START + 1, END, node=victim)
    assert min(baseline) >= 2
    assert max(execution) <= 1
    churn_before = sum(values(events, "peer_churn", 0, PRECURSOR_START, node=victim))
    churn_precursor = sum(values(events, "peer_churn", PRECURSOR_START, START, node=victim))
    assert churn_precursor > 5 * max(churn_before, 1)


@pytest.mark.parametrize("attack", ATTACKS)
def test_subtle_intensity_is_weaker(attack):
    """Intensity is a knob: the subtle run's key signal is smaller than the blatant one's."""
    kind = {
        "equivocation": None, "slow_leader": "preprepare_interval", "censorship": None,
        "flooding": "source_rate_max", "view_change_abuse": "view_change_requests",
        "replay": "duplicate_messages", "sybil": "auth_failures", "eclipse": "peer_churn",
    }[attack]
    if kind is None:
        pytest.skip("signal is a count of protocol events, covered above")
    window = (PRECURSOR_START, START) if attack == "eclipse" else (START, END)
    blatant = mean(values(run(attack)[1], kind, *window))
    subtle = mean(values(run(attack, intensity=0.1)[1], kind, *window))
    assert subtle < blatant

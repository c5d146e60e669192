"""Tests of the streaming defender: detection, bounds, bad input, checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bayes_defense.sim import AttackSpec, FaultSpec, Scenario, run_to_events
from bayes_defense.stream import Event
from bayes_defense.stream.defender import ATTACK_HYPOTHESES, StreamingDefender

DURATION = 300.0


def _attack_stream(attack: str, seed: int) -> tuple[list[Event], AttackSpec]:
    spec = AttackSpec(attack, start=200.0, precursor=90.0, duration=60.0, intensity=1.0)
    scenario = Scenario(nodes=4, duration=DURATION, seed=seed, attacks=[spec])
    return list(run_to_events(scenario)), spec


@pytest.fixture(scope="module")
def benign_stream() -> list[Event]:
    faults = [FaultSpec("crash", start=60.0, duration=20.0, node="r2"),
              FaultSpec("load_spike", start=120.0, duration=30.0, node="client1"),
              FaultSpec("jitter", start=180.0, duration=30.0),
              FaultSpec("restart", start=230.0, duration=3.0, node="r3")]
    return list(run_to_events(Scenario(nodes=4, duration=DURATION, seed=7, faults=faults)))


@pytest.mark.parametrize("attack", ATTACK_HYPOTHESES)
def test_blatant_attack_is_detected_and_named(attack):
    events, spec = _attack_stream(attack, seed=ATTACK_HYPOTHESES.index(attack) + 1)
    defender = StreamingDefender()
    defender.observe_batch(events)
    defender.flush()
    inside = [a for a in defender.alerts if spec.precursor_start <= a.ts <= spec.end]
    assert inside, f"no alert for {attack}"
    assert inside[0].attack == attack
    assert all(spec.precursor_start <= a.ts <= spec.end for a in defender.alerts)


def test_benign_look_alikes_raise_no_alert(benign_stream):
    defender = StreamingDefender()
    defender.observe_batch(benign_stream)
    defender.flush()
    assert list(defender.alerts) == []


def _check_belief(belief) -> None:
    for name in ("precursor", "execution", "within_horizon", "active"):
        table = getattr(belief, name)
        assert np.all(np.isfinite(table))
        assert np.all((table >= 0.0) & (table <= 1.0))
        assert np.all(table[:, 1] <= table[:, 0] + 1e-12)
        assert np.all(table[:, 0] <= table[:, 2] + 1e-12)


def test_probabilities_bounded_at_every_step():
    events, _ = _attack_stream("flooding", seed=3)
    defender = StreamingDefender(ensemble=8)
    last = None
    for event in events:
        belief = defender.observe(event)
        if belief is not last:
            _check_belief(belief)
            last = belief
    estimate = belief.probability("flooding", "within_horizon")
    assert estimate.lower <= estimate.mean <= estimate.upper


def test_checkpoint_resume_is_identical(benign_stream):
    whole = StreamingDefender()
    first = StreamingDefender()
    cut = len(benign_stream) // 2
    first.observe_batch(benign_stream[:cut])
    resumed = StreamingDefender()
    resumed.load_state_dict(first.state_dict())
    for event in benign_stream[:cut]:
        whole.observe(event)
    for event in benign_stream[cut:]:
        a, b = whole.observe(event), resumed.observe(event)
        assert a.ts == b.ts
        for name in ("precursor", "execution", "within_horizon", "active"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert whole.state_dict()["accepted"] == resumed.state_dict()["accepted"]


_BAD = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=5),
    st.dictionaries(st.text(max_size=4), st.one_of(st.none(), st.floats(), st.text(max_size=3)), max_size=4),
    st.builds(Event, st.sampled_from([math.nan, math.inf, -math.inf]), st.just("r0"), st.just("peer_churn"),
              st.just(0.0), st.just({})),
    st.builds(Event, st.just(5.0), st.just("r0"), st.just("peer_churn"),
              st.sampled_from([math.nan, math.inf]), st.just({})),
    st.builds(Event, st.just(5.0), st.just("r0"), st.text(min_size=1, max_size=8).filter(lambda k: k not in {"commit"}),
              st.just(1.0), st.just({})),
    st.builds(Event, st.floats(-100, 0.5), st.just("r1"), st.just("peer_churn"), st.just(0.0), st.just({})),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=st.lists(_BAD, min_size=1, max_size=6), where=st.integers(0, 300))
def test_bad_input_never_crashes_or_changes_belief(benign_stream, bad, where):
    defender = StreamingDefender(ensemble=4)
    good = benign_stream[:300 + where]
    defender.observe_batch(good[:-1])
    before = defender.observe(good[-1])
    accepted = defender.accepted
    state = defender.state_dict()
    for item in bad + [good[-1]]:  # the repeat is an exact duplicate
        belief = defender.observe(item)
        assert belief is before
    rejected = sum(defender.rejected.values())
    new_kinds = defender.accepted - accepted
    assert rejected + new_kinds == len(bad) + 1
    if new_kinds == 0:
        np.testing.assert_array_equal(defender.state_dict()["_log_alpha"], state["_log_alpha"])
    assert defender.accepted + rejected == len(good) + len(bad) + 1


def test_rejections_are_counted_by_reason():
    defender = StreamingDefender()
    defender.observe(Event(10.0, "r0", "peer_churn", 0.0, {}))
    defender.observe(Event(10.0, "r0", "peer_churn", 0.0, {}))
    defender.observe(Event(2.0, "r0", "peer_churn", 0.0, {}))
    defender.observe(Event(11.0, "r0", "no_such_kind", 0.0, {}))
    defender.observe(Event(11.0, "r0", "peer_churn", math.nan, {}))
    defender.observe("not an event")
    assert defender.rejected == {"duplicate": 1, "out_of_order": 1, "unknown_kind": 1, "non_finite": 1, "malformed": 1}
    assert defender.accepted == 1


def test_work_per_event_is_bounded(benign_stream):
    defender = StreamingDefender()
    defender.observe_batch(benign_stream)
    state = defender.state_dict()
    assert len(state["_seen"]) <= defender.duplicate_memory
    assert len(state["_digests"]) <= 512
    assert state["_log_alpha"].shape == (len(ATTACK_HYPOTHESES), 24, 3)

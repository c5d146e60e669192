"""The defender's telemetry baselines are series models: slow cycles and steady states are not attacks."""

from __future__ import annotations

import math

import pytest

from bayes_defense.sim import FaultSpec, Scenario, run_to_events
from bayes_defense.stream.scored import ScoredDefender

# Kinds whose values scale with the load (rates and counts per window).
LOAD_KINDS = ("msg_rate_in", "msg_rate_out", "source_rate_max", "throughput")


def _alerts(events):
    defender = ScoredDefender(planner=None)
    defender.observe_batch(events)
    defender.flush()
    return list(defender.alerts), defender


# Each simulates 900 s of a 4-replica cluster (about a minute on a busy two-core machine).
@pytest.mark.slow
def test_a_load_cycle_is_not_an_attack():
    events = list(run_to_events(Scenario(nodes=4, duration=900.0, seed=31)))
    # A daily cycle compressed to 300 s: the load swings by 40% either way.
    cycled = [e._replace(value=e.value * (1.0 + 0.4 * math.sin(2 * math.pi * e.ts / 300.0)))
              if e.kind in LOAD_KINDS and e.value is not None else e for e in events]
    assert sum(e.kind in LOAD_KINDS for e in events) > 1000  # the cycle touches the telemetry
    alerts, defender = _alerts(cycled)
    assert alerts == []
    assert defender._baseline_bank.columns >= len(defender._baselines) > 10


@pytest.mark.slow
def test_a_slow_replicas_steady_state_is_not_an_attack():
    faults = [FaultSpec("slow", start=100.0, duration=700.0, node="r2")]
    events = list(run_to_events(Scenario(nodes=4, duration=900.0, seed=32, faults=faults)))
    primaries = {e.attrs.get("primary") for e in events if e.kind == "preprepare_interval" and e.ts >= 100}
    assert "r2" not in primaries  # a slow backup: a slow primary is what slow_leader looks like
    alerts, _ = _alerts(events)
    assert alerts == []

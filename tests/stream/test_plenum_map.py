"""A simulator run written as a plenum event log and read through plenum.toml detects the same attacks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from bayes_defense.sim import random_scenario
from bayes_defense.sim.engine import Simulation
from bayes_defense.stream.model_filter import ModelDefender
from bayes_defense.stream.obsmap import ObservationMap

_CONVERTER = Path(__file__).resolve().parents[2] / "papers" / "plenum_log.py"


def _converter():
    spec = importlib.util.spec_from_file_location("plenum_log", _CONVERTER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _detected(defender, labels):
    return sorted({label["attack"] for label in labels for a in defender.alerts
                   if a.attack == label["attack"] and label["precursor_start"] <= a.ts <= label["end"]})


@pytest.mark.parametrize("attack", ["equivocation", "replay"])
def test_plenum_log_detects_the_same_attacks(attack):
    converter = _converter()
    simulation = Simulation(random_scenario(21, nodes=4, duration=300.0, attacks=[attack], faults=[], intensity=0.9))
    events = list(simulation.events())
    schema = ModelDefender(planner=None)   # the shipped default posterior, as a user runs it
    schema.observe_batch(events)
    schema.flush()
    plenum_events = sorted(converter.to_plenum(events, 4), key=lambda e: e.ts)
    plenum = ModelDefender(planner=None, observation_map=ObservationMap.load("plenum"))
    plenum.observe_batch(plenum_events)
    plenum.flush()
    assert plenum.rejected.get("unknown_kind", 0) == 0
    assert _detected(schema, simulation.labels) == [attack]
    assert _detected(plenum, simulation.labels) == [attack]
    suspects = {a.nodes for a in plenum.alerts if a.attack == attack}
    assert all(all(n.startswith("Node") for n in nodes) for nodes in suspects)


def test_plenum_map_routes_suspicions_to_signals():
    plenum = ObservationMap.load("plenum")
    assert plenum.translate("PPR_DIGEST_WRONG", "Node2", 11.0, {"suspect": "Node1"})[0][:2] == (
        "signal:conflicting", "Node1")
    assert plenum.translate("DUPLICATE_CM_SENT", "Node2", 8.0, {})[0][0] == "duplicate_messages"
    assert plenum.translate("VIEW_CHANGE", "Node2", 1.0, {"frm": "Node3", "viewNo": 1})[0][:2] == (
        "view_change", "Node3")
    assert plenum.translate("msg_rate_in", "Node2", 1.0, {}) is None   # schema kinds do not pass here

"""Discrete-event simulator of a PBFT-style cluster under attack (SimPy).

It writes labelled incident logs: a telemetry and protocol event stream in the
schema of :mod:`bayes_defense.stream.schema`, ``labels.json`` with one entry
per attack instance, and ``faults.json`` with the benign faults (which are
never labels). The simulator imports neither :mod:`bayes_defense.models` nor
the defender, so the data it makes is independent of the models judged on it.

Examples
--------
>>> from bayes_defense.sim import random_scenario, Simulation
>>> simulation = Simulation(random_scenario(1, nodes=4, duration=300, attacks=["sybil"]))
>>> kinds = {event.kind for event in simulation.events()}
>>> "join" in kinds, simulation.labels[0]["attack"]
(True, 'sybil')
"""

from bayes_defense.sim.engine import Simulation
from bayes_defense.sim.run import SimulationResult, run_to_events, simulate
from bayes_defense.sim.scenario import (
    ATTACKS,
    FAULTS,
    AttackSpec,
    FaultSpec,
    Scenario,
    load_scenario,
    place_schedule,
    random_scenario,
)

__all__ = [
    "ATTACKS",
    "FAULTS",
    "AttackSpec",
    "FaultSpec",
    "Scenario",
    "Simulation",
    "SimulationResult",
    "load_scenario",
    "place_schedule",
    "random_scenario",
    "run_to_events",
    "simulate",
]

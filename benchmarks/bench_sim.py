"""asv benchmarks of the cluster simulator: message throughput and memory against duration."""

from __future__ import annotations

import tempfile
import time

from bayes_defense.sim import Scenario, Simulation, simulate


class SimulatedMessages:
    """Simulated protocol messages per second at n = 4, 16 and 64 (log discarded)."""

    params = [4, 16, 64]
    param_names = ["nodes"]
    timeout = 120

    def setup(self, nodes):
        self.scenario = Scenario(nodes=nodes, duration=30.0, seed=1)

    def time_simulate_30s(self, nodes):
        for _ in Simulation(self.scenario).events():
            pass

    def track_messages_per_second(self, nodes):
        simulation = Simulation(self.scenario)
        started = time.perf_counter()
        for _ in simulation.events():
            pass
        return simulation.messages / (time.perf_counter() - started)

    track_messages_per_second.unit = "messages/s"


class SimulatedMessagesToDisk:
    """Messages per second at n = 4 including writing the JSON Lines log."""

    timeout = 120

    def setup(self):
        self.scenario = Scenario(nodes=4, duration=120.0, seed=1)
        self.directory = tempfile.TemporaryDirectory()

    def teardown(self):
        self.directory.cleanup()

    def track_messages_per_second_jsonl(self):
        return simulate(self.scenario, self.directory.name).messages_per_second

    track_messages_per_second_jsonl.unit = "messages/s"


class MemoryAgainstDuration:
    """Peak memory must stay flat as the simulated duration grows: the log streams to disk."""

    params = [60.0, 240.0, 960.0]
    param_names = ["duration"]
    timeout = 120

    def setup(self, duration):
        self.scenario = Scenario(nodes=4, duration=duration, seed=1, request_rate=50.0)
        self.directory = tempfile.TemporaryDirectory()

    def teardown(self, duration):
        self.directory.cleanup()

    def peakmem_simulate_to_jsonl(self, duration):
        simulate(self.scenario, self.directory.name)

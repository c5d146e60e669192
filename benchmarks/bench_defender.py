"""asv benchmarks of the streaming defender: throughput, latency, flat memory.

Streams come from the simulator (7 and 50 replicas) and are generated once
per parameter in ``setup``; the memory case replays a synthetic telemetry
pattern with advancing timestamps for 10 million events.
"""

from __future__ import annotations

import functools
import time

import numpy as np

from bayes_defense.sim import AttackSpec, Scenario, run_to_events
from bayes_defense.stream.defender import StreamingDefender
from bayes_defense.stream.schema import TELEMETRY_KINDS, Event


@functools.cache
def simulated_stream(nodes: int) -> list[Event]:
    """A 7-replica stream of 120 s, or a 50-replica stream of 30 s, with one replay attack."""
    duration = 120.0 if nodes <= 7 else 30.0
    attack = AttackSpec("replay", start=duration * 0.7, precursor=duration * 0.3, duration=duration * 0.2)
    return list(run_to_events(Scenario(nodes=nodes, duration=duration, seed=1, attacks=[attack])))


def synthetic_stream(count: int, nodes: int = 7):
    """Yield ``count`` telemetry events, one window of ``nodes x kinds`` per second."""
    kinds = TELEMETRY_KINDS
    per_window = nodes * len(kinds)
    names = [f"r{i}" for i in range(nodes)]
    for k in range(count):
        window, slot = divmod(k, per_window)
        node, kind = divmod(slot, len(kinds))
        yield Event(float(window + 1), names[node], kinds[kind], float(slot % 5), {})


def latencies(nodes: int) -> np.ndarray:
    """Per-event ``observe`` latencies in microseconds over the simulated stream."""
    defender = StreamingDefender()
    clock = time.perf_counter
    out = []
    for event in simulated_stream(nodes):
        t0 = clock()
        defender.observe(event)
        out.append(clock() - t0)
    return np.asarray(out) * 1e6


class Throughput:
    params = [7, 50]
    param_names = ["nodes"]
    timeout = 300

    def setup(self, nodes):
        self.events = simulated_stream(nodes)

    def time_observe_batch(self, nodes):
        StreamingDefender().observe_batch(self.events)

    def track_events_per_second(self, nodes):
        defender = StreamingDefender()
        started = time.perf_counter()
        defender.observe_batch(self.events)
        return len(self.events) / (time.perf_counter() - started)

    track_events_per_second.unit = "events/s"

    def track_latency_p50_us(self, nodes):
        return float(np.percentile(latencies(nodes), 50))

    track_latency_p50_us.unit = "us"

    def track_latency_p99_us(self, nodes):
        return float(np.percentile(latencies(nodes), 99))

    track_latency_p99_us.unit = "us"


class Memory:
    timeout = 1200

    def peakmem_ten_million_events(self):
        StreamingDefender().observe_batch(synthetic_stream(10_000_000))

    def peakmem_one_million_events(self):
        StreamingDefender().observe_batch(synthetic_stream(1_000_000))

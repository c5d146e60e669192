"""asv benchmarks of the model filter (bayes_defense.stream.model_filter): throughput, latency, flat memory.

The same streams and measures as bench_defender.py (simulated 7- and
50-replica streams with a replay attack; a synthetic telemetry pattern for
the 10-million-event memory case), run through :class:`ModelDefender` with
its default prior ensemble of 16 draws. Targets (issue 14, as issue 5):
at least 100k events per second per core batched, p99 single-event latency
at most 100 us, memory flat over 10 million events.

``WindowLikelihood`` times the per-window evidence alone
(:meth:`bayes_defense.stream.evidence.FaultFilter.step` over the windows the
filter recorded on the same streams), the part the compiled kernel of
:mod:`bayes_defense.stream._evidence_kernel` runs.
"""

from __future__ import annotations

import functools
import time

import numpy as np

from bayes_defense.stream import evidence
from bayes_defense.stream.model_filter import ModelDefender
from benchmarks.bench_defender import (
    observe_latencies,
    simulated_stream,
    state_growth_bytes,
    synthetic_stream,
)


def cpu_events_per_second(events, repeats: int = 3) -> float:
    """Median over ``repeats`` of events per CPU second through ``observe_batch``."""
    rates = []
    for _ in range(repeats):
        defender = ModelDefender(planner=None)
        started = time.process_time()
        defender.observe_batch(events)
        rates.append(len(events) / (time.process_time() - started))
    return float(np.median(rates))


@functools.cache
def warm_kernel(nodes: int) -> None:
    """Close a few windows once, so that the process has loaded the compiled kernel (a one-time cost)."""
    ModelDefender(planner=None, ensemble=2).observe_batch(simulated_stream(nodes)[:3000])


@functools.cache
def latencies(nodes: int) -> np.ndarray:
    """Per-event ``observe`` latencies of the model filter (microseconds) over the simulated stream."""
    warm_kernel(nodes)
    return observe_latencies(ModelDefender(planner=None), simulated_stream(nodes))


class ModelFilterThroughput:
    params = [7, 50]
    param_names = ["nodes"]
    timeout = 600
    timer = time.process_time

    def setup(self, nodes):
        self.events = simulated_stream(nodes)
        warm_kernel(nodes)

    def time_observe_batch(self, nodes):
        ModelDefender(planner=None).observe_batch(self.events)

    def track_events_per_second(self, nodes):
        return cpu_events_per_second(self.events)

    track_events_per_second.unit = "events/s/core"

    def track_latency_p50_us(self, nodes):
        return float(np.percentile(latencies(nodes), 50))

    track_latency_p50_us.unit = "us"

    def track_latency_p99_us(self, nodes):
        return float(np.percentile(latencies(nodes), 99))

    track_latency_p99_us.unit = "us"

    def track_latency_max_us(self, nodes):
        # The largest single call: a window close.
        return float(latencies(nodes).max())

    track_latency_max_us.unit = "us"


@functools.cache
def recorded_windows(nodes: int) -> tuple:
    """The defender, and the windows it closed, on the simulated stream."""
    defender = ModelDefender(planner=None)
    defender.record = []
    defender.observe_batch(simulated_stream(nodes))
    return defender, [window for _, window in defender.record]


class WindowLikelihood:
    params = [7, 50]
    param_names = ["nodes"]
    timeout = 300
    timer = time.process_time

    def setup(self, nodes):
        warm_kernel(nodes)
        self.defender, self.windows = recorded_windows(nodes)

    def time_fault_filter_steps(self, nodes):
        faults = evidence.FaultFilter(self.defender.parameters, self.defender.window)
        for window in self.windows:
            faults.step(self.defender._tables, window)

    def track_us_per_window(self, nodes):
        rates = []
        for _ in range(3):
            faults = evidence.FaultFilter(self.defender.parameters, self.defender.window)
            started = time.process_time()
            for window in self.windows:
                faults.step(self.defender._tables, window)
            rates.append((time.process_time() - started) / len(self.windows) * 1e6)
        return float(np.median(rates))

    track_us_per_window.unit = "us"


class ModelFilterMemory:
    params = [1_000_000, 10_000_000]
    param_names = ["events"]
    timeout = 3600

    def peakmem_observe(self, events):
        ModelDefender(planner=None).observe_batch(synthetic_stream(events))


class ModelFilterStateGrowth:
    timeout = 3600

    def track_state_growth_bytes_1m_to_10m(self):
        """Checkpoint size after 10 million events minus after 1 million (flat memory: about 0)."""
        return state_growth_bytes(ModelDefender(planner=None))

    track_state_growth_bytes_1m_to_10m.unit = "bytes"

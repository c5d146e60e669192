"""asv benchmarks of the streaming defender: throughput, latency, flat memory, CPU share.

Streams come from the simulator (7 and 50 replicas, one replay attack) and
are generated once per parameter in ``setup``; the memory cases replay a
synthetic telemetry pattern with advancing timestamps for 10 million events.

Throughput is measured in CPU time of this process (``time.process_time``):
the targets are per core, and on a shared machine wall time also counts the
time other processes hold the core. Latency is wall time per ``observe``
call (``time.perf_counter``), as a caller sees it.

Targets (issue 5): at least 100k events per second per core batched at
n = 7 and 50; p99 single-event latency at most 100 us; memory flat over 10
million events; and the CPU share needed to keep up with a 50-replica
cluster producing 10k events per second well below one core.

End to end (issue 16): ``bayes-defense defend`` from a JSON Lines log at
300k events per second; ``EndToEnd`` measures the command and its two
parts, reading (msgspec) and defending, so the split shows which one limits.
Measured on 2026-12-01 (193,572 events, 7 replicas; two shared cores at load
average 11 to 17, so each figure is the best of several runs): reading
470k-600k events per CPU second (stdlib json reader before: 127k), the
defender's observe_batch 184k-206k, the whole command 116k (96k before
``gc.freeze``). The target is not met: the defender, not parsing, limits.
Per defender, with the columnar batch path of 2026-12-02 (reading and
admission on arrays, about 500k events per CPU second together), see
``bench_defend_e2e.py``: each defender's per-window work still limits.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bayes_defense.sim import AttackSpec, Scenario, run_to_events, simulate
from bayes_defense.stream.checkpoint import encode
from bayes_defense.stream.defender import StreamingDefender
from bayes_defense.stream.io import read_events
from bayes_defense.stream.schema import TELEMETRY_KINDS, Event

#: Events per second a 50-replica cluster is assumed to produce for the CPU-share figure.
CLUSTER_EVENTS_PER_SECOND = 10_000


def state_growth_bytes(defender, early: int = 1_000_000, total: int = 10_000_000) -> int:
    """Bytes a defender's checkpoint grows between ``early`` and ``total`` synthetic events (bounded state: about 0)."""
    stream = synthetic_stream(total)
    defender.observe_batch(next(stream) for _ in range(early))
    before = len(json.dumps(encode(defender.state_dict())))
    defender.observe_batch(stream)
    return len(json.dumps(encode(defender.state_dict()))) - before


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


def warm_planner(nodes: int) -> None:
    """Run the stream once so that the planner's cache holds its recommendations.

    Planning (and the torch import it needs) happens once per (attack,
    suspect role, phase) in a process, at the first alert; the benchmarks
    measure the steady state.
    """
    defender = StreamingDefender()
    defender.observe_batch(simulated_stream(nodes))
    for alert in defender.alerts:
        assert alert.countermeasure


def cpu_events_per_second(events: list[Event], repeats: int = 3) -> float:
    """Median over ``repeats`` of events per CPU second through ``observe_batch``."""
    rates = []
    for _ in range(repeats):
        defender = StreamingDefender()
        started = time.process_time()
        defender.observe_batch(events)
        rates.append(len(events) / (time.process_time() - started))
    return float(np.median(rates))


def observe_latencies(defender, events) -> np.ndarray:
    """Per-event ``defender.observe`` wall-clock latencies in microseconds over ``events``."""
    clock = time.perf_counter
    out = []
    for event in events:
        t0 = clock()
        defender.observe(event)
        out.append(clock() - t0)
    return np.asarray(out) * 1e6


@functools.cache
def latencies(nodes: int) -> np.ndarray:
    """Per-event ``observe`` latencies of the defender (microseconds) over the simulated stream."""
    warm_planner(nodes)
    return observe_latencies(StreamingDefender(), simulated_stream(nodes))


class Throughput:
    params = [7, 50]
    param_names = ["nodes"]
    timeout = 300
    timer = time.process_time

    def setup(self, nodes):
        self.events = simulated_stream(nodes)
        warm_planner(nodes)

    def time_observe_batch(self, nodes):
        StreamingDefender().observe_batch(self.events)

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
        # The largest single call: a window close that also raises an alert.
        return float(latencies(nodes).max())

    track_latency_max_us.unit = "us"


class CpuShare:
    timeout = 300

    def setup(self):
        self.events = simulated_stream(50)
        warm_planner(50)

    def track_cpu_share_percent_50_replicas(self):
        """Percent of one core needed for 10k events/s from a 50-replica cluster."""
        return 100.0 * CLUSTER_EVENTS_PER_SECOND / cpu_events_per_second(self.events)

    track_cpu_share_percent_50_replicas.unit = "% of a core"


class Memory:
    timeout = 1200

    def peakmem_ten_million_events(self):
        StreamingDefender().observe_batch(synthetic_stream(10_000_000))

    def peakmem_one_million_events(self):
        StreamingDefender().observe_batch(synthetic_stream(1_000_000))

    def track_state_growth_bytes_1m_to_10m(self):
        """Checkpoint size after 10 million events minus after 1 million (flat memory: about 0)."""
        return state_growth_bytes(StreamingDefender())

    track_state_growth_bytes_1m_to_10m.unit = "bytes"


@functools.cache
def jsonl_log() -> Path:
    """A simulated JSON Lines log: 7 replicas, 900 s, one replay attack (about 190k events, 20 MB)."""
    directory = Path(tempfile.mkdtemp(prefix="bench_defend_"))
    attack = AttackSpec("replay", start=500.0, precursor=100.0, duration=100.0)
    simulate(Scenario(nodes=7, duration=900.0, seed=3, attacks=[attack]), directory)
    return directory / "events.jsonl"


def _cpu_rate(run, events: int, repeats: int = 3) -> float:
    rates = []
    for _ in range(repeats):
        started = time.process_time()
        run()
        rates.append(events / (time.process_time() - started))
    return float(np.median(rates))


class EndToEnd:
    """``bayes-defense defend LOG.jsonl`` and its parts, in events per CPU second."""

    timeout = 600
    timer = time.process_time

    def setup(self):
        from bayes_defense.commands import main

        self.main = main
        self.log = jsonl_log()
        self.out = self.log.parent / "alerts.jsonl"
        self.events = list(read_events(self.log))
        warm_planner(7)
        self._defend()  # loads torch and the planner's cache, as a long run does once

    def _defend(self):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            status = self.main(["defend", str(self.log), "--out", str(self.out), "--json"])
        assert status == 0

    def time_defend_jsonl(self):
        self._defend()

    def track_defend_jsonl_events_per_second(self):
        return _cpu_rate(self._defend, len(self.events))

    track_defend_jsonl_events_per_second.unit = "events/s/core"

    def track_read_jsonl_events_per_second(self):
        return _cpu_rate(lambda: sum(1 for _ in read_events(self.log, strict=False)), len(self.events))

    track_read_jsonl_events_per_second.unit = "events/s/core"

    def track_observe_events_per_second(self):
        def run():
            observe = StreamingDefender().observe
            for event in self.events:
                observe(event)

        return _cpu_rate(run, len(self.events))

    track_observe_events_per_second.unit = "events/s/core"

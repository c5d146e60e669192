"""asv benchmarks of fitting: time and peak memory against log size, NUTS effective samples per second.

Logs are simulated once (``setup_cache``): 4 replicas with a replay and a
Sybil attack, long enough for about 10k, 100k and 1M events (the simulator
writes about 120 events per simulated second at 4 replicas). A fit reads the
log in a stream, turns it into one score vector per 1 s window (about 1/120
of the events), and runs inference on those windows.

Settings are fixed so that sizes compare: SVI 500 steps of 4096-window
minibatches and 200 draws; NUTS two chains of 200 warm-up and 200 kept
draws. With labels, NUTS sees benign windows through their sufficient
statistics and the attacks' windows one by one (a few hundred here at every
size: the attacks last at most 105 s), so its sampling time barely grows
with the log; the reading time does, linearly. ``peakmem_features_stream`` feeds 10 million synthetic
events without a file: memory grows by 32 bytes per 1 s window, not per event.
The whole SVI fit at 10 million events is measured by
``benchmarks/fit_scaling.py`` (a script: the 1 GB log is too slow to make and
read for asv's per-benchmark processes and timeouts); with ``--method nuts``
the same script gives this suite's NUTS figures one fit per size (asv's
three NUTS benchmarks fit once each). Of the Sybil and replay attacks' eight
hypotheses, six have no attack window in these logs: their scores and
quiet probabilities are drawn exactly from the prior, and NUTS samples the
spreads, the two present attacks' parameters and the incident means.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bayes_defense.fitting import fit
from bayes_defense.fitting.defender import extract_features
from bayes_defense.sim import AttackSpec, Scenario, simulate
from bayes_defense.stream.schema import TELEMETRY_KINDS, Event

SIZES = {"10k": 10_000, "100k": 100_000, "1M": 1_000_000}
EVENTS_PER_SECOND = 121.0  # 4 replicas, 1 s telemetry interval
SETTINGS = {
    "svi": {"method": "svi", "num_steps": 500, "batch_size": 4096, "num_samples": 200},
    "nuts": {"method": "nuts", "num_chains": 2, "num_warmup": 200, "num_samples": 200},
}


def simulated_log(out_dir: Path, events: int) -> Path:
    """Simulate a labelled log of about ``events`` events into ``out_dir`` (4 replicas, a replay and a Sybil attack)."""
    duration = round(events / EVENTS_PER_SECOND)
    attacks = [AttackSpec("replay", start=duration * 0.3, precursor=min(60.0, duration * 0.15),
                          duration=min(45.0, duration * 0.1)),
               AttackSpec("sybil", start=duration * 0.75, precursor=min(60.0, duration * 0.15),
                          duration=min(45.0, duration * 0.1))]
    return simulate(Scenario(nodes=4, duration=float(duration), seed=3, attacks=attacks), out_dir).out_dir


def _make_logs() -> dict[str, str]:
    root = Path(tempfile.mkdtemp(prefix="bench_fit_"))
    return {name: str(simulated_log(root / name, events)) for name, events in SIZES.items()}


class FitSuite:
    """Fit time, peak memory and NUTS ESS per second by method and log size."""

    params = (["svi", "nuts"], list(SIZES))
    param_names = ["method", "events"]
    timeout = 1800
    number = 1
    repeat = 1
    warmup_time = 0

    def setup_cache(self):
        return _make_logs()

    @staticmethod
    def _fit(logs, method, events):
        return fit("scored", logs[events], progress=False, check=False, ppc_draws=20, **SETTINGS[method])

    def time_fit(self, logs, method, events):
        self._fit(logs, method, events)

    def peakmem_fit(self, logs, method, events):
        self._fit(logs, method, events)

    def track_ess_per_second(self, logs, method, events):
        """Smallest bulk ESS over the parameters per second of the whole fit (NUTS only)."""
        if method != "nuts":
            return float("nan")
        started = time.perf_counter()
        posterior = self._fit(logs, method, events)
        seconds = time.perf_counter() - started
        return float(posterior.diagnostics["ess_bulk"].min()) / seconds

    track_ess_per_second.unit = "effective draws / s"


class FeatureSuite:
    """Reading a log into windows: time by size, and memory flat in the number of events."""

    params = [list(SIZES)]
    param_names = ["events"]
    timeout = 1800
    number = 1
    repeat = 1
    warmup_time = 0

    def setup_cache(self):
        return _make_logs()

    def time_features(self, logs, events):
        extract_features(logs[events], Path(logs[events]) / "labels.json", progress=False)

    def peakmem_features(self, logs, events):
        extract_features(logs[events], Path(logs[events]) / "labels.json", progress=False)


def synthetic_events(count: int, nodes: int = 4):
    """Yield ``count`` telemetry events, one window of ``nodes x kinds`` per second."""
    names = [f"r{i}" for i in range(nodes)]
    per_window = nodes * len(TELEMETRY_KINDS)
    for k in range(count):
        window, slot = divmod(k, per_window)
        node, kind = divmod(slot, len(TELEMETRY_KINDS))
        yield Event(float(window + 1), names[node], TELEMETRY_KINDS[kind], float(slot % 5), {})


class StreamMemorySuite:
    """Peak memory of reading 1M and 10M events: one 32-byte score row per window is kept, never the events."""

    params = [[1_000_000, 10_000_000]]
    param_names = ["events"]
    timeout = 3600
    number = 1
    repeat = 1
    warmup_time = 0

    def peakmem_features_stream(self, events):
        extract_features(synthetic_events(events), progress=False)

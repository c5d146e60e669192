"""Regenerate the defender's evaluation table (DESIGN.md section 6), with baselines.

Fresh simulator scenarios on seeds never used for tuning (10_000 and up;
the defaults were tuned on seeds 0-99), 7 replicas, 600 simulated seconds,
one or two attacks and one or two benign faults each, intensity drawn in
[0.2, 1] (the simulator's default); then detection rate against intensity.
The streaming defender and three baselines (RBFT-style fixed threshold,
CUSUM, BOCPD) see identical streams.

Usage::

    python papers/evaluate_defender.py [--scenarios 40] [--sweep 8] [--jobs 2] [--out table.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from multiprocessing import Pool

FIRST_SEED = 10_000
INTENSITIES = (0.1, 0.2, 0.4, 0.6, 1.0)
METHODS = ("defender", "fixed_threshold", "cusum", "bocpd")


def _one(job: tuple[int, float | None]) -> dict:
    from bayes_defense.sim import random_scenario
    from bayes_defense.sim.engine import Simulation
    from bayes_defense.stream.baselines import Bocpd, Cusum, FixedThreshold, run_baseline
    from bayes_defense.stream.defender import StreamingDefender
    from bayes_defense.stream.metrics import evaluate_alerts

    seed, intensity = job
    scenario = random_scenario(seed, nodes=7, duration=600.0, intensity=intensity)
    simulation = Simulation(scenario)
    events = list(simulation.events())
    reports = {}
    defender = StreamingDefender()
    started = time.perf_counter()
    defender.observe_batch(events)
    defender.flush()
    seconds = time.perf_counter() - started
    reports["defender"] = evaluate_alerts(simulation.labels, defender.alerts, scenario.duration)
    for name, factory in (("fixed_threshold", FixedThreshold), ("cusum", Cusum), ("bocpd", Bocpd)):
        reports[name] = evaluate_alerts(simulation.labels, run_baseline(events, factory), scenario.duration)
    return {"seed": seed, "intensity": intensity, "events": len(events), "seconds": seconds, "reports": reports}


def _fmt(value: float, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def main() -> None:
    from bayes_defense.stream.metrics import combine_reports

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=int, default=40, help="scenarios at default intensity")
    parser.add_argument("--sweep", type=int, default=8, help="scenarios per intensity in the sweep")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", help="write the table as JSON here")
    args = parser.parse_args()
    jobs = [(FIRST_SEED + k, None) for k in range(args.scenarios)]
    sweep_seed = FIRST_SEED + 5_000
    for intensity in INTENSITIES:
        jobs += [(sweep_seed + k, intensity) for k in range(args.sweep)]
    with Pool(args.jobs) as pool:
        results = pool.map(_one, jobs)
    default = [r for r in results if r["intensity"] is None]
    table = {"seeds": [FIRST_SEED, FIRST_SEED + args.scenarios - 1], "methods": {}, "sweep": {}}
    events = sum(r["events"] for r in default)
    seconds = sum(r["seconds"] for r in default)
    print(f"{len(default)} scenarios (seeds {FIRST_SEED}..{FIRST_SEED + args.scenarios - 1}), 7 replicas, 600 s, default intensity")
    print(f"defender throughput: {events / seconds:,.0f} events/s over {events:,} events")
    print(f"{'method':<16} {'detect':>7} {'FPR':>7} {'prec':>7} {'lead(s)':>8} {'type':>7} {'attacks':>8} {'alerts':>7}")
    for method in METHODS:
        pooled = combine_reports([r["reports"][method] for r in default])
        table["methods"][method] = pooled
        print(f"{method:<16} {_fmt(pooled['detection_rate']):>7} {_fmt(pooled['false_positive_rate'], 4):>7} "
              f"{_fmt(pooled['precision']):>7} {_fmt(pooled['lead_time_median_s'], 1):>8} {_fmt(pooled['type_accuracy']):>7} "
              f"{pooled['attacks']:>8} {pooled['alerts']:>7}")
    print("\ndetection rate vs intensity (seeds from", sweep_seed, ")")
    print(f"{'intensity':<10}" + "".join(f"{m:>17}" for m in METHODS))
    for intensity in INTENSITIES:
        runs = [r for r in results if r["intensity"] == intensity]
        row = {m: combine_reports([r["reports"][m] for r in runs])["detection_rate"] for m in METHODS}
        table["sweep"][str(intensity)] = row
        print(f"{intensity:<10}" + "".join(f"{_fmt(row[m]):>17}" for m in METHODS))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(table, handle, indent=2, default=float)


if __name__ == "__main__":
    main()

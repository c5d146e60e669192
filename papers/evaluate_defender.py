"""Regenerate the defender's evaluation table (DESIGN.md section 6), with baselines.

Fresh simulator scenarios on seeds never used while tuning (30_000 and
up; the defender was tuned on seeds 0-159, and seeds 10_000-10_039 and
15_000+ were looked at by an earlier evaluation), 7 replicas, 600 simulated
seconds, one or two attacks and one or two benign faults each, intensity
drawn in [0.2, 1] (the simulator's default); then detection rate against
intensity from 1 (blatant) down to 0.1 (subtle), on seeds 35_000 and up.

With 600 s and at most two attacks every precursor lasts 60-120 s (the
simulator shortens them only when an attack's slot is under 240 s); the
median lead time is reported over attacks whose precursor lasted at least
60 s, with their count, as the issue's target is stated for them.

The streaming defender and the baselines (RBFT-style fixed threshold,
CUSUM, BOCPD, and river's HalfSpaceTrees when river is installed) see
identical streams in the same run.

Usage::

    python papers/evaluate_defender.py [--scenarios 100] [--sweep 8] [--jobs 2] [--out table.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from multiprocessing import Pool

FIRST_SEED = 30_000
SWEEP_SEED = 35_000
INTENSITIES = (1.0, 0.6, 0.4, 0.2, 0.1)
BASE_METHODS = ("defender", "fixed_threshold", "cusum", "bocpd")


def _methods() -> tuple[str, ...]:
    from bayes_defense.stream.baselines import river_available

    return BASE_METHODS + (("half_space_trees",) if river_available() else ())


def _one(job: tuple[int, float | None]) -> dict:
    from bayes_defense.sim import random_scenario
    from bayes_defense.sim.engine import Simulation
    from bayes_defense.stream.baselines import (
        Bocpd,
        Cusum,
        FixedThreshold,
        river_available,
        run_baseline,
        run_half_space_trees,
    )
    from bayes_defense.stream.defender import StreamingDefender
    from bayes_defense.stream.metrics import evaluate_alerts

    seed, intensity = job
    scenario = random_scenario(seed, nodes=7, duration=600.0, intensity=intensity)
    simulation = Simulation(scenario)
    events = list(simulation.events())
    reports = {}
    defender = StreamingDefender(planner=None)  # countermeasures do not enter the metrics
    started = time.perf_counter()
    defender.observe_batch(events)
    defender.flush()
    seconds = time.perf_counter() - started
    reports["defender"] = evaluate_alerts(simulation.labels, defender.alerts, scenario.duration)
    for name, factory in (("fixed_threshold", FixedThreshold), ("cusum", Cusum), ("bocpd", Bocpd)):
        reports[name] = evaluate_alerts(simulation.labels, run_baseline(events, factory), scenario.duration)
    if river_available():
        reports["half_space_trees"] = evaluate_alerts(simulation.labels, run_half_space_trees(events), scenario.duration)
    missed = [label["attack"] for label in simulation.labels
              if not any(label["precursor_start"] <= a.ts <= label["end"] and a.attack == label["attack"]
                         for a in defender.alerts)]
    return {"seed": seed, "intensity": intensity, "events": len(events), "seconds": seconds, "reports": reports,
            "attacks": [label["attack"] for label in simulation.labels], "missed": missed}


def _fmt(value: float, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def main() -> None:
    from collections import Counter

    from bayes_defense.stream.metrics import combine_reports

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=int, default=100, help="scenarios at default intensity")
    parser.add_argument("--sweep", type=int, default=8, help="scenarios per intensity in the sweep")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", help="write the table as JSON here")
    args = parser.parse_args()
    methods = _methods()
    if "half_space_trees" not in methods:
        print("half_space_trees: skipped, river is not installed (pip install 'bayes_defense[river]')")
    jobs = [(FIRST_SEED + k, None) for k in range(args.scenarios)]
    for intensity in INTENSITIES:
        jobs += [(SWEEP_SEED + k, intensity) for k in range(args.sweep)]
    with Pool(args.jobs) as pool:
        results = pool.map(_one, jobs)
    default = [r for r in results if r["intensity"] is None]
    table = {"seeds": [FIRST_SEED, FIRST_SEED + args.scenarios - 1], "methods": {}, "sweep": {}}
    events = sum(r["events"] for r in default)
    seconds = sum(r["seconds"] for r in default)
    print(f"{len(default)} scenarios (seeds {FIRST_SEED}..{FIRST_SEED + args.scenarios - 1}), 7 replicas, 600 s, "
          "default intensity (drawn in [0.2, 1])")
    print(f"defender wall-clock throughput inside this run: {events / seconds:,.0f} events/s over {events:,} events "
          f"({args.jobs} jobs at once; see benchmarks/bench_defender.py for the per-core figure)")
    print(f"{'method':<17} {'detect':>7} {'FPR':>7} {'prec':>7} {'lead60(s)':>9} {'n60':>5} {'lead(s)':>8} "
          f"{'type':>7} {'attacks':>8} {'alerts':>7}")
    for method in methods:
        reports = [r["reports"][method] for r in default]
        pooled = combine_reports(reports)
        long_precursors = sum(1 for r in reports for p in r["precursor_lengths"] if p >= 60)
        pooled["lead_time_attacks_precursor_60s"] = long_precursors
        table["methods"][method] = pooled
        print(f"{method:<17} {_fmt(pooled['detection_rate']):>7} {_fmt(pooled['false_positive_rate'], 4):>7} "
              f"{_fmt(pooled['precision']):>7} {_fmt(pooled['lead_time_median_s'], 1):>9} {long_precursors:>5} "
              f"{_fmt(pooled['lead_time_median_all_s'], 1):>8} {_fmt(pooled['type_accuracy']):>7} "
              f"{pooled['attacks']:>8} {pooled['alerts']:>7}")
    print("lead60 = median lead time over detected attacks whose precursor lasted >= 60 s (n60 of them)")
    attacks = Counter(a for r in default for a in r["attacks"])
    missed = Counter(a for r in default for a in r["missed"])
    table["defender_by_attack"] = {a: {"attacks": attacks[a], "missed": missed[a]} for a in sorted(attacks)}
    print("defender by attack: " + ", ".join(f"{a} {attacks[a] - missed[a]}/{attacks[a]}" for a in sorted(attacks)))
    print(f"\ndetection rate vs intensity (seeds {SWEEP_SEED}..{SWEEP_SEED + args.sweep - 1}, the same seeds at each intensity)")
    print(f"{'intensity':<10}" + "".join(f"{m:>17}" for m in methods))
    for intensity in INTENSITIES:
        runs = [r for r in results if r["intensity"] == intensity]
        row = {m: combine_reports([r["reports"][m] for r in runs])["detection_rate"] for m in methods}
        table["sweep"][str(intensity)] = row
        print(f"{intensity:<10}" + "".join(f"{_fmt(row[m]):>17}" for m in methods))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(table, handle, indent=2, default=float)


if __name__ == "__main__":
    main()

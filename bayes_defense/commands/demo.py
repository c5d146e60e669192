"""The ``bayes-defense demo`` subcommand: simulate, defend, evaluate, plot.

An embedded scenario (7 replicas, 30 simulated minutes, every attack once
and benign look-alikes) is simulated and its log run through the streaming
defender; the command prints a summary table and saves a figure of the
beliefs with their credible bands, the alerts, the true attack windows and
the benign faults. The output directory holds what a simulation writes
(``events.jsonl``, ``labels.json``, ``faults.json``, ``meta.json``) beside
``alerts.jsonl`` and ``demo.png``, so the run can be evaluated again
(``bayes-defense evaluate``) and fitted (``bayes-defense fit``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bayes_defense.commands._common import positive_argument, progress_bar, strict_json
from bayes_defense.ioutil import atomic_path, atomic_write
from bayes_defense.stream.defender import DEFAULT_DEFENDER, DEFENDERS

__all__ = ["register", "run_demo", "demo_scenario"]


def demo_scenario(seed: int = 2026, duration: float = 1800.0, nodes: int = 7):
    """Return the embedded demo scenario.

    Examples
    --------
    >>> scenario = demo_scenario(duration=400.0)
    >>> len(scenario.attacks), scenario.nodes
    (8, 7)
    """
    from bayes_defense.sim import random_scenario
    from bayes_defense.stream.defender import ATTACK_HYPOTHESES

    return random_scenario(seed, nodes=nodes, duration=duration, attacks=list(ATTACK_HYPOTHESES),
                           faults=["crash", "slow", "jitter", "load_spike", "restart", "partition"])


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand to a ``bayes-defense`` parser."""
    parser = subparsers.add_parser("demo", help="simulate a 7-replica cluster under attack, defend, evaluate, plot")
    parser.add_argument("--out", default="bayes-defense-demo", help="output directory (default ./bayes-defense-demo/)")
    parser.add_argument("--duration", type=positive_argument, default=1800.0, help="simulated seconds (default 1800)")
    parser.add_argument("--nodes", type=int, default=7, help="replicas (default 7)")
    parser.add_argument("--seed", type=int, default=2026, help="scenario seed (default 2026)")
    parser.add_argument("--defender", choices=DEFENDERS, default=DEFAULT_DEFENDER,
                        help=f"the model filter or the hand-scored baseline (default {DEFAULT_DEFENDER})")
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    parser.set_defaults(func=run_demo)


def _plot(path: Path, times: list[float], bands: list[Any], labels: list[dict], alerts: list[Any], duration: float,
          faults: list[dict] = ()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from bayes_defense.stream.defender import ATTACK_HYPOTHESES

    t = np.asarray(times)
    data = np.asarray(bands)  # (steps, attacks, 3)
    figure, axes = plt.subplots(len(ATTACK_HYPOTHESES), 1, figsize=(11, 13), sharex=True)
    for row, (axis, attack) in enumerate(zip(axes, ATTACK_HYPOTHESES, strict=True)):
        for label in labels:
            if label["attack"] == attack:
                axis.axvspan(label["precursor_start"], label["execution_start"], color="orange", alpha=0.25)
                axis.axvspan(label["execution_start"], label["end"], color="red", alpha=0.25)
        if len(t):
            axis.fill_between(t, data[:, row, 1], data[:, row, 2], color="tab:blue", alpha=0.3, linewidth=0)
            axis.plot(t, data[:, row, 0], color="tab:blue", linewidth=0.8)
        for fault in faults:
            # Benign look-alikes, on every row: an alert inside one is a false alarm the model should explain away.
            axis.axvspan(fault["start"], fault["end"], color="grey", alpha=0.2, linewidth=0)
        for alert in alerts:
            if alert.attack == attack:
                axis.axvline(alert.ts, color="black", linestyle="--", linewidth=1)
        axis.set_ylim(-0.02, 1.02)
        axis.set_ylabel(attack, rotation=0, ha="right", fontsize=8)
    axes[0].set_title("P(attack active) with 90% credible band; orange = precursor, red = execution, "
                      "grey = benign fault, dashed = alert", fontsize=9)
    axes[-1].set_xlabel("simulated seconds")
    axes[-1].set_xlim(0, duration)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=90, format=path.suffix.lstrip(".") or "png")
    plt.close(figure)


def _explanation(alert: Any) -> list[dict] | None:
    """An alert's explanation (its causes with their probabilities), where its defender gives one."""
    explanation = getattr(alert, "explanation", None)
    return [dict(item) for item in explanation] if explanation else None


def run_demo(args: argparse.Namespace) -> int:
    """Run ``bayes-defense demo``."""
    import json

    from bayes_defense.sim import simulate
    from bayes_defense.stream.defender import defender_class
    from bayes_defense.stream.io import read_events
    from bayes_defense.stream.metrics import evaluate_alerts

    scenario = demo_scenario(args.seed, args.duration, args.nodes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = simulate(scenario, out)
    name = args.defender
    defender = defender_class(name)()
    observe = defender.observe
    times: list[float] = []
    bands: list[Any] = []
    last = None
    events = 0
    bar = progress_bar(scenario.duration, "defend")
    shown = 0.0
    for event in read_events(result.events_path):
        belief = observe(event)
        events += 1
        if belief is not last:
            last = belief
            times.append(belief.ts)
            bands.append(belief.active)
            if belief.ts >= shown + 10:
                bar.update(belief.ts - shown)
                shown = belief.ts
    defender.flush()
    bar.close()
    elapsed = time.perf_counter() - started
    labels = json.loads(result.labels_path.read_text())
    faults = json.loads(result.faults_path.read_text())
    alerts = defender.pop_alerts()
    report = evaluate_alerts(labels, alerts, scenario.duration)
    with atomic_write(out / "alerts.jsonl") as handle:
        for alert in alerts:
            handle.write(strict_json(alert.to_dict()) + "\n")
    figure = out / "demo.png"
    _plot(figure, times, bands, labels, alerts, scenario.duration, faults)
    rows = []
    for label in labels:
        inside = [a for a in alerts if label["precursor_start"] <= a.ts <= label["end"]]
        named = [a for a in inside if a.attack == label["attack"]]
        rows.append({"attack": label["attack"], "intensity": label["intensity"],
                     "precursor_start": label["precursor_start"], "execution_start": label["execution_start"],
                     "end": label["end"], "detected": bool(named),
                     "first_alert": inside[0].attack if inside else None,
                     "lead_time_s": label["execution_start"] - named[0].ts if named else None,
                     "countermeasure": named[0].countermeasure if named else None,
                     "explanation": _explanation(inside[0]) if inside else None})
    from bayes_defense.commands.evaluate import SUMMARY_KEYS

    summary = {**{key: report[key] for key in SUMMARY_KEYS}, "defender": name, "events": events,
               "rejected": dict(defender.rejected),
               "seconds": elapsed, "figure": str(figure), "out": str(out), "table": rows}
    if args.json:
        print(strict_json(summary))
        return 0
    explained = any(row["explanation"] for row in rows)
    print(f"{'attack':<18} {'intensity':>9} {'precursor':>9} {'execution':>9} {'detected':>8} {'lead (s)':>8}  "
          f"first alert / countermeasure{' / explanation' if explained else ''}")
    for row in rows:
        lead = f"{row['lead_time_s']:.1f}" if row["lead_time_s"] is not None else "-"
        why = ""
        if explained:
            why = " / " + (", ".join(f"{c['cause']} {c['probability']:.2f} [{c['lower']:.2f}, {c['upper']:.2f}]"
                                     for c in (row["explanation"] or [])[:3]) or "-")
        print(f"{row['attack']:<18} {row['intensity']:>9.2f} {row['precursor_start']:>9.1f} {row['execution_start']:>9.1f} "
              f"{'yes' if row['detected'] else 'no':>8} {lead:>8}  {row['first_alert'] or '-'} / "
              f"{row['countermeasure'] or '-'}{why}")
    print(f"{name} defender: detection rate {report['detection_rate']:.2f}, false-positive rate "
          f"{report['false_positive_rate']:.4f}, precision {report['precision']:.2f}, alert precision "
          f"{report['alert_precision']:.2f}, type accuracy {report['type_accuracy']:.2f}, "
          f"median lead {report['lead_time_median_s']:.1f} s")
    print(f"{events} events in {elapsed:.1f} s; figure {figure}; events, labels, faults, meta and alerts in {out} "
          f"(re-score with `bayes-defense evaluate --labels {out / 'labels.json'} --alerts {out / 'alerts.jsonl'}`)")
    return 0

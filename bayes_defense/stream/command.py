"""The ``defend``, ``evaluate``, ``detect`` and ``demo`` subcommands."""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from bayes_defense.errors import InvalidInputError

__all__ = ["register", "run_defend", "run_evaluate", "run_detect", "defend_stream", "progress_bar"]


def progress_bar(total: float | None, description: str) -> Any:
    """Return a tqdm bar when stdout is a terminal, else a do-nothing stand-in.

    Examples
    --------
    >>> bar = progress_bar(10, "work")  # doctest runs without a terminal
    >>> bar.update(3); bar.close()
    """
    if sys.stdout.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=description, unit="s" if total else "ev", leave=False)

    class _Silent:
        def update(self, amount: float = 1) -> None:
            pass

        def close(self) -> None:
            pass

    return _Silent()


def register(subparsers: Any) -> None:
    """Add ``defend``, ``evaluate``, ``detect`` and ``demo`` to a ``bayes-defense`` parser."""
    defend = subparsers.add_parser("defend", help="run the streaming defender over an event log; write alerts.jsonl")
    defend.add_argument("events", help="events.jsonl/.csv/.parquet, or a simulation output directory")
    defend.add_argument("--posterior", metavar="FILE", help="fitted posterior from `bayes-defense fit` (default: the prior)")
    defend.add_argument("--out", metavar="FILE", default="alerts.jsonl", help="alerts file (default alerts.jsonl)")
    defend.add_argument("--threshold", type=float, default=0.8, help="alert on the lower bound reaching this (default 0.8)")
    defend.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    defend.set_defaults(func=run_defend)

    evaluate = subparsers.add_parser("evaluate", help="score alerts against labels (DESIGN.md section 6)")
    evaluate.add_argument("--labels", required=True, help="labels.json from a simulation")
    evaluate.add_argument("--alerts", required=True, help="alerts.jsonl from defend")
    evaluate.add_argument("--duration", type=float, help="run length in seconds (default: from meta.json beside the labels)")
    evaluate.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    evaluate.set_defaults(func=run_evaluate)

    detect = subparsers.add_parser("detect", help="per-row anomaly probability for any metric stream in a CSV file")
    detect.add_argument("csv", help="input CSV with a header row")
    detect.add_argument("--time-column", default="timestamp", help="name of the time column (default timestamp)")
    detect.add_argument("--value-column", default="value", help="name of the value column (default value)")
    detect.add_argument("--out", metavar="FILE", default="scores.csv", help="output CSV (default scores.csv)")
    detect.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    detect.set_defaults(func=run_detect)

    from bayes_defense import demo

    demo.register(subparsers)


def _load_parameters(path: str | None) -> Any:
    """Return the fitted posterior in ``path`` (from ``bayes-defense fit``), or None for the default prior."""
    if path is None:
        return None
    if not Path(path).exists():
        raise FileNotFoundError(f"no such posterior file: {path!r}")
    try:
        from bayes_defense.fitting import load_posterior
    except ImportError as error:
        raise InvalidInputError(
            f"--posterior needs bayes_defense.fitting.load_posterior, which this installation lacks ({error}); "
            "run defend without --posterior to use the default prior") from None
    posterior = load_posterior(path)
    if not callable(getattr(posterior, "defender_parameters", None)):
        raise InvalidInputError(f"posterior {Path(path).name!r} gives no defender_parameters(draws, seed); "
                                "fit it with `bayes-defense fit` and try again")
    return posterior


def defend_stream(events: Any, defender: Any, *, sample_every: int = 64, bar: Any = None) -> dict[str, Any]:
    """Feed events to a defender, timing every ``sample_every``-th call; return throughput figures.

    Examples
    --------
    >>> from bayes_defense.stream import Event
    >>> from bayes_defense.stream.defender import StreamingDefender
    >>> stats = defend_stream([Event(1.0, "r0", "peer_churn", 0.0, {})], StreamingDefender())
    >>> stats["events"]
    1
    """
    observe = defender.observe
    latencies: list[float] = []
    clock = time.perf_counter
    count = 0
    last_ts = 0.0
    started = clock()
    for event in events:
        if count % sample_every == 0:
            t0 = clock()
            observe(event)
            latencies.append(clock() - t0)
            if bar is not None and event.ts > last_ts + 1:
                bar.update(event.ts - last_ts)
                last_ts = event.ts
        else:
            observe(event)
        count += 1
    defender.flush()
    elapsed = clock() - started
    latencies.sort()

    def quantile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e6 if latencies else math.nan

    return {"events": count, "events_per_second": count / elapsed if elapsed > 0 else math.nan,
            "latency_p50_us": quantile(0.5), "latency_p99_us": quantile(0.99)}


def run_defend(args: argparse.Namespace) -> int:
    """Run ``bayes-defense defend``."""
    from bayes_defense.stream.defender import StreamingDefender
    from bayes_defense.stream.io import read_events

    reader = read_events(args.events, strict=False)
    defender = StreamingDefender(_load_parameters(args.posterior), threshold=args.threshold)
    # Load the planner's modules (torch, Pyro) before the clock starts: the
    # first alert would load them anyway, and events_per_second should time
    # the defender, not an import.
    import bayes_defense.models  # noqa: F401
    import bayes_defense.planning  # noqa: F401

    bar = progress_bar(None, "defend")
    stats = defend_stream(reader, defender, bar=bar)
    bar.close()
    rejected = dict(defender.rejected)
    if reader.skipped:
        rejected["unreadable"] = reader.skipped
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # pop_alerts holds every alert raised (defender.alerts keeps only the latest 10,000).
    alerts = defender.pop_alerts()
    with out.open("w") as handle:
        for alert in alerts:
            handle.write(json.dumps(alert.to_dict()) + "\n")
    summary = {**stats, "events": stats["events"] + reader.skipped, "accepted": defender.accepted,
               "rejected": rejected, "alerts": len(alerts), "out": str(out)}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['events']} events, {sum(rejected.values())} rejected, {summary['alerts']} alerts -> {out}")
        print(f"{stats['events_per_second']:.0f} events/s, latency p50 {stats['latency_p50_us']:.1f} us, p99 {stats['latency_p99_us']:.1f} us")
        for alert in alerts:
            print(f"  {alert.ts:8.1f} s  {alert.attack:<18} P={alert.probability:.3f} [{alert.lower:.3f}, {alert.upper:.3f}] "
                  f"{alert.phase:<9} nodes={','.join(alert.nodes) or '-'} -> {alert.countermeasure}")
    return 0


def _read_json(path: Path, what: str) -> Any:
    if not path.exists():
        raise FileNotFoundError(f"no such {what} file: {str(path)!r}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"{what} file {path.name!r} is not valid JSON: {error}") from None


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``bayes-defense evaluate``."""
    from bayes_defense.stream.metrics import evaluate_alerts

    labels_path = Path(args.labels)
    labels = _read_json(labels_path, "labels")
    if not isinstance(labels, list):
        raise InvalidInputError(f"labels file {labels_path.name!r} must hold a list of attacks")
    alerts_path = Path(args.alerts)
    if not alerts_path.exists():
        raise FileNotFoundError(f"no such alerts file: {str(alerts_path)!r}")
    alerts = []
    for number, line in enumerate(alerts_path.read_text().splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
                alerts.append({"ts": float(record["ts"]), "attack": str(record["attack"])})
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise InvalidInputError(f"alerts line {number} is not an alert record with ts and attack") from None
    duration = args.duration
    if duration is None:
        meta = labels_path.parent / "meta.json"
        if meta.exists():
            duration = _read_json(meta, "meta").get("duration")
        if duration is None:
            duration = max([float(x["end"]) + 30 for x in labels] + [a["ts"] for a in alerts] + [0.0])
    try:
        report = evaluate_alerts(labels, alerts, float(duration))
    except (KeyError, TypeError) as error:
        raise InvalidInputError(f"labels need attack, precursor_start, execution_start and end: {error}") from None
    keys = ("detection_rate", "false_positive_rate", "precision", "lead_time_median_s", "type_accuracy", "attacks", "alerts")
    summary = {key: (None if isinstance(report[key], float) and math.isnan(report[key]) else report[key]) for key in keys}
    if args.json:
        print(json.dumps(summary))
    else:
        for key in keys:
            print(f"{key:<22} {summary[key]}")
    return 0


def run_detect(args: argparse.Namespace) -> int:
    """Run ``bayes-defense detect``."""
    from bayes_defense.stream.baselines import MetricAnomalyDetector

    path = Path(args.csv)
    if not path.exists():
        raise FileNotFoundError(f"no such CSV file: {str(path)!r}")
    detector = MetricAnomalyDetector()
    rows = 0
    anomalies = 0
    out = Path(args.out)
    with path.open(newline="") as source, out.open("w", newline="") as target:
        reader = csv.DictReader(source)
        header = reader.fieldnames or []
        for column in (args.time_column, args.value_column):
            if column not in header:
                raise InvalidInputError(f"column {column!r} not in {path.name} (columns: {', '.join(header) or 'none'})")
        writer = csv.writer(target)
        writer.writerow([args.time_column, "value", "probability", "lower", "upper"])
        for number, row in enumerate(reader, 2):
            text = row[args.value_column]
            try:
                value = float(text)
            except (TypeError, ValueError):
                raise InvalidInputError(f"line {number}: value {text!r} is not a number") from None
            probability, lower, upper = detector.update(value)
            anomalies += probability >= 0.5
            writer.writerow([row[args.time_column], text, f"{probability:.6g}", f"{lower:.6g}", f"{upper:.6g}"])
            rows += 1
    summary = {"rows": rows, "anomalies": int(anomalies), "out": str(out)}
    print(json.dumps(summary) if args.json else f"{rows} rows scored, {anomalies} with probability >= 0.5 -> {out}")
    return 0

"""The ``bayes-defense evaluate`` subcommand: score alerts against labels (docs/metrics.md)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from bayes_defense.commands._common import EXIT_OK, positive_argument, read_json, strict_json
from bayes_defense.errors import InvalidInputError

__all__ = ["register", "run_evaluate", "SUMMARY_KEYS"]

#: Keys of ``evaluate --json``, in order (docs/metrics.md defines each).
SUMMARY_KEYS: tuple[str, ...] = ("detection_rate", "false_positive_rate", "precision", "alert_precision",
                                 "lead_time_median_s", "type_accuracy", "attacks", "alerts")


def register(subparsers: Any) -> None:
    """Add ``evaluate`` to a ``bayes-defense`` parser.

    Examples
    --------
    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="bayes-defense")
    >>> register(parser.add_subparsers(dest="command"))
    >>> parser.parse_args(["evaluate", "--labels", "l.json", "--alerts", "a.jsonl"]).duration is None
    True
    """
    evaluate = subparsers.add_parser(
        "evaluate", help="score alerts against labels (metrics defined in docs/metrics.md)",
        description="Score an alerts file against a labels file; the metrics are defined in docs/metrics.md. "
                    "The run's length comes from --duration or from meta.json beside the labels.")
    evaluate.add_argument("--labels", required=True, help="labels.json from a simulation")
    evaluate.add_argument("--alerts", required=True, help="alerts.jsonl from defend")
    evaluate.add_argument("--duration", type=positive_argument,
                          help="run length in seconds (default: from meta.json beside the labels)")
    evaluate.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    evaluate.set_defaults(func=run_evaluate)


def _read_alerts(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise FileNotFoundError(f"no such alerts file: {str(path)!r}")
    alerts = []
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                ts = float(record["ts"])
                if not math.isfinite(ts):
                    raise ValueError
                alerts.append({"ts": ts, "attack": str(record["attack"])})
            except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
                raise InvalidInputError(f"alerts line {number} is not an alert record with a finite ts and an "
                                        f"attack (see docs/cli.md)") from None
    return alerts


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``bayes-defense evaluate``; return the exit status."""
    from bayes_defense.stream.metrics import evaluate_alerts

    labels_path = Path(args.labels)
    labels = read_json(labels_path, "labels")
    if not isinstance(labels, list):
        raise InvalidInputError(f"labels file {labels_path.name!r} must hold a list of attacks")
    alerts = _read_alerts(Path(args.alerts))
    duration = args.duration
    if duration is None:
        meta_path = labels_path.parent / "meta.json"
        if not meta_path.exists():
            raise InvalidInputError(f"the run's length is unknown: no meta.json beside {labels_path.name!r}; "
                                    f"give --duration SECONDS (the false-positive rate needs it)")
        meta = read_json(meta_path, "meta")
        duration = meta.get("duration") if isinstance(meta, dict) else None
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration) \
                or duration <= 0:
            raise InvalidInputError(f"{meta_path} has no positive 'duration' (got {str(duration)[:40]}); "
                                    f"give --duration SECONDS")
    report = evaluate_alerts(labels, alerts, float(duration))
    summary = {key: report[key] for key in SUMMARY_KEYS}
    if args.json:
        print(strict_json(summary))
    else:
        for key in SUMMARY_KEYS:
            value = summary[key]
            shown = "n/a" if isinstance(value, float) and math.isnan(value) else value
            print(f"{key:<22} {shown}")
    return EXIT_OK

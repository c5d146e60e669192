"""The ``bayes-defense detect`` subcommand: per-row anomaly probability for a metric stream in a CSV file.

The output is written atomically (:func:`bayes_defense.ioutil.atomic_write`):
an error part-way leaves no partial scores file.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

from bayes_defense.commands._common import strict_json
from bayes_defense.errors import InvalidInputError
from bayes_defense.ioutil import atomic_write

__all__ = ["register", "run_detect"]


def register(subparsers: Any) -> None:
    """Add ``detect`` to a ``bayes-defense`` parser."""
    detect = subparsers.add_parser("detect", help="per-row anomaly probability for any metric stream in a CSV file")
    detect.add_argument("csv", help="input CSV with a header row")
    detect.add_argument("--time-column", default="timestamp", help="name of the time column (default timestamp)")
    detect.add_argument("--value-column", default="value", help="name of the value column (default value)")
    detect.add_argument("--out", metavar="FILE", default="scores.csv", help="output CSV (default scores.csv)")
    detect.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    detect.set_defaults(func=run_detect)


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
    with path.open(newline="") as source, atomic_write(out, newline="") as target:
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
    print(strict_json(summary) if args.json else f"{rows} rows scored, {anomalies} with probability >= 0.5 -> {out}")
    return 0

"""The ``bayes-defense sweep`` subcommand: scenarios x seeds x intensities x detectors on Dask.

The sweep itself (the ``sweep.toml`` format, tasks, their files) is
:mod:`bayes_defense.sweep`; this module parses the command line and reports.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bayes_defense.commands._common import EXIT_OK, EXIT_UNTRUSTED, strict_json
from bayes_defense.errors import InvalidInputError

__all__ = ["register", "run_sweep_command"]


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of workers, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least one worker, got {value}")
    return value


def register(subparsers: Any) -> None:
    """Add ``sweep`` to a ``bayes-defense`` parser.

    Examples
    --------
    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="bayes-defense")
    >>> register(parser.add_subparsers(dest="command"))
    >>> parser.parse_args(["sweep", "sweep.toml", "--out", "runs"]).scheduler is None
    True
    """
    sweep = subparsers.add_parser(
        "sweep", help="run scenarios x seeds x intensities x detectors (and fits) on Dask; one Parquet table",
        description="Run every task of a sweep.toml (the format: `python -m pydoc bayes_defense.sweep`) on Dask, "
                    "a local cluster by default. Each task's result is written under --out as it finishes, so a "
                    "rerun skips finished tasks; the table of all tasks is DIR/results.parquet. Exit status 1 "
                    "when some task failed.")
    sweep.add_argument("spec", help="the sweep.toml file")
    sweep.add_argument("--out", required=True, metavar="DIR", help="directory for task results and results.parquet")
    sweep.add_argument("--scheduler", metavar="ADDRESS",
                       help="address of a running Dask scheduler, e.g. tcp://host:8786 (default: start a local "
                            "cluster for this sweep)")
    sweep.add_argument("--workers", type=_workers, metavar="N",
                       help="worker processes of the local cluster (default: the CPU count, at most 4)")
    sweep.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    sweep.set_defaults(func=run_sweep_command)


def run_sweep_command(args: argparse.Namespace) -> int:
    """Run ``bayes-defense sweep``; return 0 when every task finished, 1 when some failed."""
    from bayes_defense.sweep import load_sweep, run_sweep

    if args.scheduler is not None and args.workers is not None:
        raise InvalidInputError("--workers sizes the local cluster; with --scheduler the cluster has its own "
                                "workers, so give one of the two")
    spec = load_sweep(args.spec)
    result = run_sweep(spec, args.out, scheduler=args.scheduler, workers=args.workers)
    if args.json:
        print(strict_json(result.summary()))
    else:
        print(f"{result.tasks} tasks: {result.done} run, {result.skipped} already done, "
              f"{len(result.failed)} failed; table {result.path}")
    for failure in result.failed:
        what = (f"fit {failure['fit']} on scenario {failure['scenario']}" if failure["kind"] == "fit" else
                f"{failure['detector']} on scenario {failure['scenario']} seed {failure['seed']}")
        print(f"bayes-defense sweep: task {failure['task_id']} ({what}) failed: {failure['error']}", file=sys.stderr)
    return EXIT_UNTRUSTED if result.failed else EXIT_OK

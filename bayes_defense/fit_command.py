"""The ``fit`` subcommand: fit the defender's model to incident logs and write a NetCDF posterior."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from bayes_defense.errors import InvalidInputError

__all__ = ["register", "run_fit"]


def register(subparsers: Any) -> None:
    """Add ``fit`` to a ``bayes-defense`` parser.

    Examples
    --------
    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="bayes-defense")
    >>> register(parser.add_subparsers(dest="command"))
    >>> parser.parse_args(["fit", "run/events.jsonl", "--labels", "run/labels.json"]).method
    'svi'
    """
    parser = subparsers.add_parser(
        "fit", help="fit the defender's model to incident logs; write posterior draws (NetCDF)",
        description="Fit the streaming defender's observation and transition model to one or more incident "
                    "logs (with labels, or without: the attack phase is then latent) and write the posterior "
                    "as NetCDF for `bayes-defense defend --posterior`.")
    parser.add_argument("events", nargs="+", help="events.jsonl/.csv/.parquet or simulation directories")
    parser.add_argument("--labels", metavar="FILE", action="append",
                        help="labels.json of each log, in order (a directory's own labels.json is used otherwise)")
    parser.add_argument("--out", metavar="FILE", default="posterior.nc", help="posterior file (default posterior.nc)")
    parser.add_argument("--method", choices=("svi", "nuts"), default="svi", help="inference (default svi)")
    parser.add_argument("--prior", metavar="FILE", help="an earlier posterior.nc to update with these incidents")
    parser.add_argument("--samples", type=int, default=1000, help="posterior draws per chain (default 1000)")
    parser.add_argument("--warmup", type=int, default=500, help="NUTS warm-up steps (default 500)")
    parser.add_argument("--chains", type=int, default=2, help="NUTS chains (default 2)")
    parser.add_argument("--steps", type=int, default=3000, help="SVI steps (default 3000)")
    parser.add_argument("--batch-size", type=int, default=4096, help="SVI windows per minibatch (default 4096)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--ppc", metavar="FIG", help="also save the posterior predictive check figure (.png/.pdf/.svg)")
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    parser.set_defaults(func=run_fit)


def run_fit(args: argparse.Namespace) -> int:
    """Run ``bayes-defense fit``; return the exit status (1 when diagnostics failed)."""
    from bayes_defense.fit import FitDiagnosticsWarning, fit, load_posterior

    labels = args.labels or []
    if labels and len(labels) != len(args.events):
        raise InvalidInputError(f"give one --labels per event log: {len(args.events)} log(s), {len(labels)} --labels")
    incidents = [(events, label) for events, label in zip(args.events, labels, strict=True)] if labels else list(args.events)
    for events in args.events:
        if not Path(events).exists():
            raise FileNotFoundError(f"no such event log: {events!r}")
    prior = load_posterior(args.prior) if args.prior else None
    out = Path(args.out)
    if out.exists() and out.is_dir():
        raise InvalidInputError(f"--out {str(out)!r} is a directory; give a file name such as posterior.nc")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FitDiagnosticsWarning)
        posterior = fit("defender", incidents, method=args.method, prior=prior, num_samples=args.samples,
                        num_warmup=args.warmup, num_chains=args.chains, num_steps=args.steps,
                        batch_size=args.batch_size, seed=args.seed, progress=sys.stderr.isatty() and not args.json)
    for warning in caught:
        if issubclass(warning.category, FitDiagnosticsWarning):
            print(f"bayes-defense fit: warning: {' '.join(str(warning.message).split())}", file=sys.stderr)
        else:  # pragma: no cover - pass other warnings on unchanged
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    posterior.save(out)
    if args.ppc:
        posterior.plot_ppc(args.ppc)
    summary = posterior.summary()
    summary["out"] = str(out)
    if args.ppc:
        summary["ppc"] = str(args.ppc)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"fitted {summary['windows']} windows from {summary['events']} events ({summary['runs']} log(s), "
              f"{'labelled' if summary['labelled'] else 'phases latent'}) by {summary['method']}: "
              f"r_hat max {summary['r_hat_max']:.3f}, ESS min {summary['ess_bulk_min']:.0f}; wrote {out}")
    return 0 if posterior.diagnostics_ok else 1

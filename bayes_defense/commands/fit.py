"""The ``fit`` subcommand: fit the defender's model to event logs, or the cluster model to incident tables (``--nodes``), and write a NetCDF posterior."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from bayes_defense.commands._common import (
    EXIT_OK,
    EXIT_UNTRUSTED,
    add_defender_arguments,
    observation_map_argument,
    strict_json,
)
from bayes_defense.errors import InvalidInputError
from bayes_defense.ioutil import atomic_path

__all__ = ["register", "run_fit"]

# fit option -> command-line flag (attribute of the parsed namespace)
_SIZE_FLAGS = {"num_samples": "samples", "num_warmup": "warmup", "num_chains": "chains", "num_steps": "steps",
               "batch_size": "batch_size"}


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
        "fit", help="fit the defender's model to event logs (or, with --nodes, the cluster model to incident "
                    "tables); write posterior draws (NetCDF)",
        description="Fit the streaming defender's observation and transition model to one or more incident "
                    "logs (with labels, or without: the attack phase is then latent) and write the posterior "
                    "as NetCDF for `bayes-defense defend --posterior`. With --nodes N, fit the N-replica cluster "
                    "model's parameters to incident tables instead.")
    parser.add_argument("events", nargs="+", help="events.jsonl/.csv/.parquet or simulation directories")
    parser.add_argument("--labels", metavar="FILE", action="append",
                        help="labels.json of each log, in order (a directory's own labels.json is used otherwise)")
    parser.add_argument("--out", metavar="FILE", default="posterior.nc", help="posterior file (default posterior.nc)")
    add_defender_arguments(parser, "whose model to fit: the model filter's signal model (conjugate counts, exact) "
                                   "or the scored defender's", "the map the model filter will run with")
    parser.add_argument("--faults", metavar="FILE", action="append",
                        help="with the model filter: faults.json of each log, in order (a directory's own "
                             "faults.json is used otherwise); without it the faults keep their prior")
    parser.add_argument("--method", choices=("svi", "nuts"), default="svi",
                        help="inference of the scored defender's and the cluster model's fits (default svi)")
    parser.add_argument("--prior", metavar="FILE", help="an earlier posterior.nc to update with these incidents")
    parser.add_argument("--samples", type=int, help="posterior draws per chain (default 1000)")
    parser.add_argument("--warmup", type=int, help="NUTS warm-up steps (default 500)")
    parser.add_argument("--chains", type=int, help="NUTS chains (default 2)")
    parser.add_argument("--steps", type=int, help="SVI steps (default 3000; with --nodes 2000)")
    parser.add_argument("--batch-size", type=int,
                        help="SVI windows per minibatch (default 4096; with --nodes 1024 incident rows)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--nodes", type=int, metavar="N",
                        help="fit the N-replica cluster model instead: the inputs are incident tables (.csv, .parquet, "
                             ".jsonl; one row per incident window, columns named after the model's sites, see "
                             "docs/fit_cluster.md) and --labels, if given, one label table of the same rows")
    parser.add_argument("--colluders", type=int, metavar="C",
                        help="with --nodes: colluders helping the attacker (default f, as bd.models.cluster)")
    parser.add_argument("--ppc", metavar="FIG", help="also save the posterior predictive check figure (.png/.pdf/.svg)")
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    parser.set_defaults(func=run_fit)


def run_fit(args: argparse.Namespace) -> int:
    """Run ``bayes-defense fit``; return the exit status (1 when diagnostics failed)."""
    from bayes_defense.fitting import load_posterior
    from bayes_defense.fitting.cluster import ClusterPosterior

    if args.nodes is not None:
        return _run_cluster_fit(args)
    if args.colluders is not None:
        raise InvalidInputError("--colluders applies to the cluster model only; give --nodes N with it")
    from bayes_defense.stream.defender import choose_defender

    if choose_defender(args.defender, observation_map=args.observation_map) == "model":
        return _run_model_fit(args)
    if args.faults:
        raise InvalidInputError("--faults applies to the model filter's fit; give --defender model with it")
    labels = args.labels or []
    if labels and len(labels) != len(args.events):
        raise InvalidInputError(f"give one --labels per event log: {len(args.events)} log(s), {len(labels)} --labels")
    incidents = [(events, label) for events, label in zip(args.events, labels, strict=True)] if labels else list(args.events)
    for events in args.events:
        if not Path(events).exists():
            raise FileNotFoundError(f"no such event log: {events!r}")
    prior = load_posterior(args.prior) if args.prior else None
    if isinstance(prior, ClusterPosterior):
        raise InvalidInputError(f"--prior {args.prior!r} is a cluster-model posterior; to update it give --nodes N "
                                f"and incident tables, or give a defender posterior here")
    out = _out_file(args.out)
    return _fit_and_write("scored", incidents, prior, out, args, lambda summary: (
        f"fitted {summary['windows']} windows from {summary['events']} events ({summary['runs']} log(s), "
        f"{'labelled' if summary['labelled'] else 'phases latent'}) by {summary['method']}: "
        f"r_hat max {_figure(summary['r_hat_max'], '.3f')}, ESS min {_figure(summary['ess_bulk_min'], '.0f')}; "
        f"wrote {out}"))


def _out_file(path: str) -> Path:
    """``--out`` as a path, refused when it names a directory."""
    out = Path(path)
    if out.exists() and out.is_dir():
        raise InvalidInputError(f"--out {str(out)!r} is a directory; give a file name such as posterior.nc")
    return out


def _inputs(args: argparse.Namespace, flag: str, name: str) -> list:
    """Per log, the file ``--{flag}`` gives, else a simulation directory's own ``name``, else None."""
    given = getattr(args, flag) or []
    if given and len(given) != len(args.events):
        raise InvalidInputError(f"give one --{flag} per event log: {len(args.events)} log(s), {len(given)} --{flag}")
    out = []
    for index, events in enumerate(args.events):
        own = Path(events) / name
        out.append(given[index] if given else (str(own) if own.is_file() else None))
    return out


def _run_model_fit(args: argparse.Namespace) -> int:
    """``bayes-defense fit --defender model``: the model filter's signal model, from event logs."""
    for events in args.events:
        if not Path(events).exists():
            raise FileNotFoundError(f"no such event log: {events!r}")
    if args.method != "svi":
        raise InvalidInputError("the model filter's signal model is fitted exactly (conjugate counts), so --method "
                                "does not apply; leave it out")
    logs = [(str(Path(events) / "events.jsonl") if Path(events).is_dir() else events, labels, faults)
            for events, labels, faults in zip(args.events, _inputs(args, "labels", "labels.json"),
                                              _inputs(args, "faults", "faults.json"), strict=True)]
    options: dict[str, Any] = {"seed": args.seed}
    if args.observation_map is not None:
        options["observation_map"] = observation_map_argument(args.observation_map)
    if args.prior:
        # The signal model's fit takes no prior posterior: its counts add exactly instead.
        raise InvalidInputError("--prior does not apply to the model filter's fit; fit the new logs alone and merge the "
                                "two posteriors exactly with bd.merge_posteriors([old, new]), or fit all logs at once")
    out = _out_file(args.out)
    return _fit_and_write("model", logs, None, out, args, lambda summary: (
        f"fitted the model filter's signal model to {_figure(summary.get('windows'), '.0f')} windows "
        f"({_figure(summary.get('labelled_windows'), '.0f')} labelled) of {len(logs)} log(s); faults: "
        f"{summary.get('faults')}; predictive check: {len(summary.get('ppc_failed') or [])} of "
        f"{summary.get('ppc_statistics')} statistics failed; wrote {out}"), options)


def _figure(value: float | None, spec: str) -> str:
    """A diagnostic figure for the summary line; ``n/a`` where the fit has none."""
    return "n/a" if value is None else format(value, spec)


def _report_warnings(caught) -> None:
    """Print diagnostics warnings as one line each; pass any other warning on unchanged."""
    from bayes_defense.fitting.diagnostics import FitDiagnosticsWarning

    for warning in caught:
        if issubclass(warning.category, FitDiagnosticsWarning):
            print(f"bayes-defense fit: warning: {' '.join(str(warning.message).split())}", file=sys.stderr)
        else:  # pragma: no cover - pass other warnings on unchanged
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def _run_cluster_fit(args: argparse.Namespace) -> int:
    """``bayes-defense fit --nodes N TABLE ...``: fit the cluster model to incident tables."""
    import pandas as pd

    import bayes_defense as bd
    from bayes_defense.fitting import load_posterior
    from bayes_defense.fitting.cluster import ClusterPosterior, read_incidents

    if args.labels and len(args.labels) != len(args.events):
        raise InvalidInputError(f"with --nodes give one --labels table per incident table: {len(args.events)} "
                                f"table(s), {len(args.labels)} --labels")
    for table in args.events:
        if not Path(table).is_file():
            raise FileNotFoundError(f"no such incident table: {table!r}")
    labels = args.labels or [None] * len(args.events)
    frames = [read_incidents(table, label) for table, label in zip(args.events, labels, strict=True)]
    incidents = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    model = bd.models.cluster(args.nodes, colluders=args.colluders)
    prior = load_posterior(args.prior) if args.prior else None
    if prior is not None and not isinstance(prior, ClusterPosterior):
        raise InvalidInputError(f"--prior {args.prior!r} is a defender posterior; with --nodes give a cluster "
                                f"posterior written by `bayes-defense fit --nodes`")
    out = _out_file(args.out)
    return _fit_and_write(model, incidents, prior, out, args, lambda summary: (
        f"fitted {summary['model']} to {summary['rows']} incident windows ({summary['labelled_rows']} "
        f"labelled) by {summary['method']}: {summary['fitted_parameters']} parameters fitted, "
        f"{summary['prior_only_parameters']} left at their prior; r_hat max {_figure(summary['r_hat_max'], '.3f')}, "
        f"ESS min {_figure(summary['ess_bulk_min'], '.0f')}; wrote {out}"))


def _fit_and_write(model, incidents, prior, out: Path, args: argparse.Namespace, line,
                   options: dict[str, Any] | None = None) -> int:
    """Fit, report diagnostics warnings, save, plot the PPC and print the summary (JSON or ``line(summary)``).

    ``options`` replaces the sampler options (method, prior, seed) for fits that take others.
    """
    from bayes_defense.fitting import fit
    from bayes_defense.fitting.diagnostics import FitDiagnosticsWarning

    # Sizes the user did not give are left out, so each model's fit takes its own defaults.
    given = {name: getattr(args, flag) for name, flag in _SIZE_FLAGS.items() if getattr(args, flag) is not None}
    if options is None:
        options = {"method": args.method, "prior": prior, "seed": args.seed}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FitDiagnosticsWarning)
        posterior = fit(model, incidents, progress=sys.stderr.isatty() and not args.json, **options, **given)
    _report_warnings(caught)
    # Written beside the target and renamed over it only once complete: an
    # interrupted fit leaves the previous posterior (or none), never half a file.
    with atomic_path(out) as temporary:
        posterior.save(temporary)
    if args.ppc:
        ppc = Path(args.ppc)
        with atomic_path(ppc) as temporary:
            posterior.plot_ppc(temporary)
    summary = posterior.summary()
    summary["out"] = str(out)
    if args.ppc:
        summary["ppc"] = str(args.ppc)
    print(strict_json(summary) if args.json else line(summary))
    return EXIT_OK if posterior.diagnostics_ok else EXIT_UNTRUSTED

"""Whole ``bd.fit`` against log size up to 10 million events: wall time, peak memory, NUTS ESS per second.

    python benchmarks/fit_scaling.py --sizes 10k 100k 1M 10M --out fit_scaling.json
    python benchmarks/fit_scaling.py --method nuts --sizes 10k 100k 1M --out fit_scaling_nuts.json

A script rather than an asv benchmark: at 10 million events the log alone
is a 1 GB file whose simulation (about 5 minutes) and reading (about 2
minutes) would be repeated by every asv benchmark process, which makes the
``time_`` and ``peakmem_`` pair at that size longer than asv's timeouts
allow on the project's shared 2-core machine. The 10k, 100k and 1M sizes are
also in ``bench_fit.FitSuite``, with the same settings, so the two agree.

For every size the log (4 replicas, a replay and a Sybil attack, labels) is
simulated once into ``--workdir`` and kept for later runs; each fit then runs
in a fresh Python process, which reports

- ``fit_seconds``: wall time of the whole ``fit`` call (reading the log
  into windows, SVI, posterior predictive replicates);
- ``peak_rss_mb``: the process's peak resident memory (``ru_maxrss``);
- ``import_rss_mb``: its resident memory after importing torch, Pyro and
  the package, before the fit, so ``peak_rss_mb - import_rss_mb`` is what
  the fit itself added.

With ``--method nuts`` each fit also reports

- ``ess_bulk_min``, ``ess_tail_min``: the smallest bulk and tail effective
  sample sizes over the fitted parameters (``az.summary``);
- ``ess_per_second``: ``ess_bulk_min / fit_seconds``, the figure asv's
  ``FitSuite.track_ess_per_second`` records;
- ``problems``: what the fit's convergence check would have said.

Settings are those of ``bench_fit.SETTINGS[method]``: for SVI 500 steps of
4096-window minibatches and 200 draws, for NUTS two chains of 200 warm-up
and 200 kept draws; 20 posterior predictive draws, no convergence check
during the fit. ``torch`` runs on one thread (as ``fit`` sets it). One NUTS
fit is one process; ``--jobs 2`` runs two sizes at once (on a 2-core machine
each then has a core).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

SIZES = {"10k": 10_000, "100k": 100_000, "1M": 1_000_000, "10M": 10_000_000}


def _bench_fit():
    # The log maker and settings of the asv suite, so that both measure the same thing.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_fit

    return bench_fit


def make_log(workdir: Path, name: str) -> Path:
    """Simulate the log of about ``SIZES[name]`` events, as ``bench_fit`` does, unless it is already there."""
    out = workdir / name
    if (out / "labels.json").exists() and (out / "events.jsonl").exists():
        return out
    return _bench_fit().simulated_log(out, SIZES[name])


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def child(log: str, method: str) -> None:
    """Fit one log in this process and print one JSON line of figures."""
    import pyro  # noqa: F401
    import torch

    import bayes_defense  # noqa: F401  (imports counted in import_rss_mb)
    from bayes_defense.fitting import fit

    settings = _bench_fit().SETTINGS[method]
    torch.set_num_threads(1)
    import_rss = _peak_mb()
    started = time.perf_counter()
    posterior = fit("scored", log, progress=False, check=False, ppc_draws=20, seed=0, **settings)
    seconds = time.perf_counter() - started
    row = {"events": posterior.info["events"], "windows": posterior.info["windows"],
           "fit_seconds": round(seconds, 2), "peak_rss_mb": round(_peak_mb(), 1),
           "import_rss_mb": round(import_rss, 1)}
    if method == "nuts":
        table = posterior.diagnostics
        row.update({"ess_bulk_min": round(float(table["ess_bulk"].min()), 1),
                    "ess_tail_min": round(float(table["ess_tail"].min()), 1),
                    "ess_per_second": round(float(table["ess_bulk"].min()) / seconds, 3),
                    "r_hat_max": round(float(table["r_hat"].max()), 4),
                    "problems": posterior.check()})
    print(json.dumps(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="svi", choices=["svi", "nuts"])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--jobs", type=int, default=1, help="fits run at once (one process each)")
    parser.add_argument("--repeat", type=int, default=1, help="fits per size (the median is reported)")
    parser.add_argument("--workdir", default="/tmp/bayes_defense_fit_scaling")
    parser.add_argument("--out", default="fit_scaling.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.method)
        return
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    logs = {}
    for name in args.sizes:
        started = time.perf_counter()
        logs[name] = make_log(workdir, name)
        print(f"{name}: log ready in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    command = [sys.executable, __file__, "--method", args.method, "--child"]
    jobs = [(name, str(logs[name])) for name in args.sizes for _ in range(args.repeat)]
    runs: dict[str, list] = {name: [] for name in args.sizes}
    results: dict[str, dict] = {}
    while jobs:
        batch, jobs = jobs[:max(1, args.jobs)], jobs[max(1, args.jobs):]
        started = [(name, subprocess.Popen(command + [log], stdout=subprocess.PIPE, text=True))
                   for name, log in batch]
        for name, process in started:
            out, _ = process.communicate()
            if process.returncode:
                raise SystemExit(f"the fit of {name} failed (exit {process.returncode}); finished sizes are in "
                                 f"{args.out}")
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
            print(f"{name}: {json.dumps(runs[name][-1])}", file=sys.stderr)
        # Written after every batch, so that a later failure keeps the finished fits.
        for name, rows in runs.items():
            if rows:
                rows.sort(key=lambda run: run["fit_seconds"])
                results[name] = {**rows[len(rows) // 2], "runs": rows}
        Path(args.out).write_text(json.dumps({"method": args.method, "settings": _bench_fit().SETTINGS[args.method],
                                              "jobs": args.jobs, "results": results}, indent=2) + "\n")
    print(json.dumps(results, indent=2))

if __name__ == "__main__":
    main()

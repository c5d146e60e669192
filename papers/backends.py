"""The inference-backend comparison: time against error per engine and model size, from asv results.

Reads the results of the asv suite ``benchmarks/bench_backends.py`` (the
package's backends, ChiRho and pgmpy in one run, on the generated SCMs of
``benchmarks/common.py``) and writes ``papers/backends.md`` (one table per
model family and query) and ``papers/backends.png`` (time against absolute
error, one panel per family and query, one colour per engine, marker size by
model size). With ``--run`` it first runs the suite::

    asv run -E existing --quick --bench bench_backends --set-commit-hash HEAD

Usage::

    python papers/backends.py --run                 # run asv, then write the paper
    python papers/backends.py                       # from the newest stored results
    python papers/backends.py --results FILE.json   # from one asv results file
    python papers/backends.py --direct              # the suite's cases in this process, without asv's runner
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

SUITE = "bench_backends.Backends"
ROOT = Path(__file__).resolve().parent.parent


def run_asv(quick: bool = True) -> None:
    """Run the suite through asv on the installed package (environment "existing")."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout.strip()
    subprocess.run(["asv", "machine", "--yes"], cwd=ROOT, check=True, capture_output=True)
    command = ["asv", "run", "-E", "existing", "--bench", "bench_backends", "--set-commit-hash", commit]
    if quick:
        command.append("--quick")
    subprocess.run(command, cwd=ROOT, check=True)


def newest_results(results_dir: Path) -> Path:
    """The newest asv results file that holds the suite."""
    candidates = []
    for path in results_dir.glob("*/*.json"):
        if path.name == "machine.json":
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if f"{SUITE}.time_query" in data.get("results", {}):
            candidates.append((data.get("date", 0), path))
    if not candidates:
        raise SystemExit(f"no asv results of {SUITE} under {results_dir}; run with --run first")
    return max(candidates)[1]


def read_results(path: Path) -> list[dict]:
    """Rows ``{engine, family, nodes, kind, seconds, error}`` from one asv results file (format 2)."""
    data = json.loads(path.read_text())
    columns = data["result_columns"]
    rows: dict[tuple, dict] = {}
    for method, key in (("time_query", "seconds"), ("track_abs_error", "error")):
        entry = dict(zip(columns, data["results"][f"{SUITE}.{method}"], strict=False))
        import itertools

        combos = list(itertools.product(*entry["params"]))
        for combo, value in zip(combos, entry["result"], strict=True):
            engine, family, nodes, kind = (str(c).strip("'") for c in combo)
            row = rows.setdefault((engine, family, int(nodes), kind),
                                  {"engine": engine, "family": family, "nodes": int(nodes), "kind": kind,
                                   "seconds": math.nan, "error": math.nan})
            row[key] = math.nan if value is None else float(value)
    return [row for row in rows.values() if not (math.isnan(row["seconds"]) and math.isnan(row["error"]))]


def measure_direct(engines: list[str] | None, sizes: list[int] | None, repeats: int) -> list[dict]:
    """The suite's own cases measured in this process (no asv runner): median time of ``repeats``, error once.

    The same ``setup``, ``time_query`` and ``track_abs_error`` asv calls, for
    machines where asv's one-process-per-case runner takes too long.
    """
    import statistics
    import time

    sys.path.insert(0, str(ROOT))
    from benchmarks.bench_backends import Backends

    rows = []
    grid = [dict(zip(Backends.param_names, combo, strict=True))
            for combo in __import__("itertools").product(*Backends.params)]
    for case in grid:
        if (engines and case["engine"] not in engines) or (sizes and case["nodes"] not in sizes):
            continue
        bench = Backends()
        try:
            bench.setup(**case)
        except NotImplementedError:
            continue
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            bench.time_query(**case)
            times.append(time.perf_counter() - started)
        rows.append({**case, "seconds": statistics.median(times), "error": float(bench.track_abs_error(**case))})
        print(f"{case}: {rows[-1]['seconds']:.4g} s, error {rows[-1]['error']:.3g}", file=sys.stderr)
    return rows


def _time(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def _error(error: float) -> str:
    return "-" if math.isnan(error) else ("0 (exact)" if error < 1e-12 else f"{error:.2g}")


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["family"], r["kind"]) for r in rows})
    engines = sorted({r["engine"] for r in rows})
    colours = {engine: f"C{k}" for k, engine in enumerate(engines)}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for axis, (family, kind) in zip(axes[0], panels, strict=True):
        for engine in engines:
            points = sorted((r for r in rows if (r["family"], r["kind"], r["engine"]) == (family, kind, engine)
                             and not math.isnan(r["seconds"]) and not math.isnan(r["error"])),
                            key=lambda r: r["nodes"])
            if not points:
                continue
            axis.scatter([p["seconds"] for p in points], [max(p["error"], 1e-12) for p in points],
                         s=[12 + p["nodes"] * 1.5 for p in points], color=colours[engine], label=engine, alpha=0.8)
            axis.plot([p["seconds"] for p in points], [max(p["error"], 1e-12) for p in points],
                      color=colours[engine], lw=0.6, alpha=0.6)
        axis.set(xscale="log", yscale="log", xlabel="seconds per query", title=f"{family}, {kind}")
        axis.axhline(1e-12, color="grey", lw=0.5, ls=":")
    axes[0][0].set_ylabel("absolute error (exact answers at 1e-12)")
    handles = [plt.Line2D([], [], marker="o", ls="", color=colours[engine], label=engine) for engine in engines]
    fig.legend(handles=handles, loc="lower center", ncol=len(engines), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    from bayes_defense.ioutil import atomic_path

    with atomic_path(path) as temporary:
        fig.savefig(temporary, dpi=120)
    plt.close(fig)


def markdown(rows: list[dict], source: Path | None, figure_path: Path, command: str, repeats: int = 1) -> str:
    how = (f"from the asv results file `{source.name}`" if source is not None else
           f"by running the asv suite's own cases in one process (median of {repeats} timed calls after the "
           "suite's warm-up in `setup`; asv's one-process-per-case runner did not finish in the time available "
           "on the shared machine this was made on; `--run` regenerates it from asv itself)")
    lines = ["# Inference backends: time against error", "",
             f"Generated by `{command}` {how} "
             f"(suite `benchmarks/bench_backends.py`, {platform.machine()}, Python {platform.python_version()}, "
             f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores). "
             "Each engine answers the same query on the same generated SCM (`benchmarks/common.py`: a "
             "linear-Gaussian and a binary family at 5, 20 and 50 nodes); the error is the absolute distance "
             "from the exact (binary) or closed-form (linear-Gaussian) answer. ChiRho runs 10k particles "
             "of its own `do`/`condition` (twin worlds for counterfactuals); pgmpy answers interventional "
             "queries on the binary family by graph surgery and variable elimination. An engine missing from a "
             "table cannot answer that query (its setup refuses it). "
             + ("Times from `asv run --quick` are single samples." if source is not None else
                "Times are wall clock (`time.perf_counter`), so the machine's load inflates them."),
             "", f"![time against error]({figure_path.name})", ""]
    for family in sorted({r["family"] for r in rows}):
        for kind in sorted({r["kind"] for r in rows}):
            subset = [r for r in rows if r["family"] == family and r["kind"] == kind]
            if not subset:
                continue
            sizes = sorted({r["nodes"] for r in subset})
            lines += [f"## {family}, {kind}", "",
                      "| engine | " + " | ".join(f"{n} nodes: time, error" for n in sizes) + " |",
                      "|---|" + "---|" * len(sizes)]
            for engine in sorted({r["engine"] for r in subset}):
                cells = []
                for n in sizes:
                    match = [r for r in subset if r["engine"] == engine and r["nodes"] == n]
                    cells.append(f"{_time(match[0]['seconds'])}, {_error(match[0]['error'])}" if match else "-")
                lines.append(f"| {engine} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="run the asv suite first (quick: one sample each)")
    parser.add_argument("--results", type=Path, help="an asv results file (default: the newest under .asv/results)")
    parser.add_argument("--out", type=Path, default=ROOT / "papers" / "backends.md")
    parser.add_argument("--figure", type=Path, default=None, help="default: backends.png beside --out")
    parser.add_argument("--direct", action="store_true", help="measure the suite's cases in this process")
    parser.add_argument("--engines", nargs="+", help="with --direct: only these engines")
    parser.add_argument("--sizes", type=int, nargs="+", help="with --direct: only these model sizes")
    parser.add_argument("--repeats", type=int, default=5, help="with --direct: timed calls per case")
    args = parser.parse_args(argv)
    figure_path = args.figure or args.out.with_name("backends.png")
    if args.direct:
        source = None
        rows = measure_direct(args.engines, args.sizes, args.repeats)
        command = "python papers/backends.py --direct" + (f" --engines {' '.join(args.engines)}" if args.engines else "") \
            + (f" --sizes {' '.join(map(str, args.sizes))}" if args.sizes else "") + f" --repeats {args.repeats}"
    else:
        if args.run:
            run_asv()
        source = args.results or newest_results(ROOT / ".asv" / "results")
        rows = read_results(source)
        command = "python papers/backends.py" + (" --run" if args.run else "")
    figure(rows, figure_path)
    text = markdown(rows, source, figure_path, command, args.repeats)
    from bayes_defense.ioutil import atomic_write

    with atomic_write(args.out) as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())

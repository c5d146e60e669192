"""Root-cause ranking on synthetic SCMs: bd.explain against DoWhy's gcm.attribute_anomalies and z-scores.

For each graph (random DAGs and layered service graphs of 10, 50 and 200
nodes) and mechanism (linear, nonlinear), the truth is simulated here with
numpy, independently of the package: ``x_j = c_j + sum_p w_jp h(x_p) + sigma_j eps_j``
with ``h(x) = x`` (linear) or ``h(x) = x + tanh(2 x)`` (nonlinear, not in the
fitted model's spline basis). Normal operation (``--rows`` rows) trains every
method. The outcome is the node with the most ancestors (the frontend of a
service graph); the candidates are the outcome and its ancestors.

Incidents. Each incident draws every node's noise afresh, picks the root cause
uniformly among the candidates and adds a shift to that node's noise, sized
(by bisection on the true mechanisms, with the incident's own noise) so that
the fault moves the outcome by ``--effect`` of its normal standard deviations:
the outcome is then anomalous because of the fault, which is what makes
"why is the outcome far from typical" a question with an answer. The shift
is at most ``--max-shift`` noise standard deviations.

Identifiable, fixed before any method runs and computed from the truth: (a)
the fault moves the outcome by ``--effect`` standard deviations within the
``--max-shift`` cap, and (b) the injected node's noise (the true exogenous
value, shift included) is the largest in absolute value among the
candidates', so the data single it out. Accuracy is reported on the
identifiable incidents and on all.

Methods, on the same incidents:

- ``bd.explain``: ``bd.models.from_graph`` (``"linear"`` or ``"additive"``)
  fitted by ``bd.fit`` to the normal rows, then
  ``bd.explain(posterior.model(draws=10), incident, outcome)`` (intervals
  over parameter draws); and, to separate fitting error from the method,
  the same explanation with the true mechanisms;
- DoWhy ``gcm.attribute_anomalies`` (default settings, one job) on an
  invertible SCM with additive-noise mechanisms (linear regressors for
  linear truth, DoWhy's ``assign_causal_mechanisms`` choice otherwise),
  fitted to the same rows. It runs in a separate process
  (``--dowhy-python``, a Python that has dowhy) on the same incident
  files, on the first ``--dowhy-incidents`` incidents of each
  configuration: it takes seconds to minutes per incident;
- z-scores: the candidates ranked by ``|x - mean| / sd`` against normal operation.

Everything a configuration needs is written to ``--work`` (normal rows,
graph, incidents, each method's rankings and times); a rerun skips what is
done, so the grid can run in pieces. Time per explanation is CPU time of
the explaining process (``time.process_time``; the methods are told to use
one thread) and wall time; fitting is reported apart.

Run: ``python papers/scm_explain.py`` (writes papers/scm_explain.md);
``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import networkx as nx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stats import wilson  # noqa: E402  (papers/ on the path, also when loaded by file name)

METHODS = {"bd": "bd.explain (fitted)", "truth": "bd.explain (true mechanisms)",
           "dowhy": "DoWhy attribute_anomalies", "zscore": "z-score ranking"}
#: Environment of the DoWhy process: one thread, as bd.explain runs.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
NOTES_MARKER = "<!-- notes: kept by scm_explain.py when it rewrites this page -->"
#: Issue 17's target: bd.explain at least this many times faster than DoWhy, at equal or better accuracy.
SPEED_UP = 10.0


def random_dag(n: int, rng) -> nx.DiGraph:
    graph = nx.DiGraph()
    names = [f"v{i}" for i in range(n)]
    graph.add_nodes_from(names)
    for j in range(1, n):
        k = int(min(j, rng.integers(1, 4)))  # 1 to 3 parents among earlier nodes
        for i in rng.choice(j, size=k, replace=False):
            graph.add_edge(names[i], names[j])
    return graph


def layered_services(n: int, rng) -> nx.DiGraph:
    """Backends (layer 0) up to frontends: a caller depends on 1 to 3 services of the layer below."""
    layers = max(3, int(round(math.log2(n))))
    sizes = np.full(layers, n // layers)
    sizes[: n - sizes.sum()] += 1
    graph = nx.DiGraph()
    previous = []
    for layer, size in enumerate(sizes):
        current = [f"s{layer}_{i}" for i in range(size)]
        graph.add_nodes_from(current)
        for node in current:
            if previous:
                for callee in rng.choice(previous, size=min(len(previous), int(rng.integers(1, 4))), replace=False):
                    graph.add_edge(str(callee), node)
        previous = current
    return graph


class Truth:
    """The data-generating SCM (numpy): weights, noise scales, the nonlinearity."""

    def __init__(self, graph, nonlinear: bool, rng, positive: bool):
        self.graph = graph
        self.order = list(nx.topological_sort(graph))
        self.nonlinear = nonlinear
        self.weights = {}
        for node in self.order:
            parents = list(graph.predecessors(node))
            signs = np.ones(len(parents)) if positive else rng.choice([-1.0, 1.0], size=len(parents))
            self.weights[node] = (parents, signs * rng.uniform(0.5, 1.2, size=len(parents))
                                  / math.sqrt(max(len(parents), 1)))
        self.intercept = {node: float(rng.normal()) for node in self.order}
        self.scale = {node: float(rng.uniform(0.5, 1.5)) for node in self.order}

    def h(self, x):
        return x + np.tanh(2 * x) if self.nonlinear else x

    def noise(self, rows: int, rng) -> dict:
        return {node: rng.normal(size=rows) for node in self.order}

    def propagate(self, noise: dict) -> dict:
        """The nodes' values from their (standardised) noise, in topological order."""
        values = {}
        for node in self.order:
            parents, weights = self.weights[node]
            loc = self.intercept[node] + sum(w * self.h(values[p]) for p, w in zip(parents, weights, strict=True))
            values[node] = loc + self.scale[node] * noise[node]
        return values

    def simulate(self, rows: int, rng):
        import pandas as pd

        return pd.DataFrame(self.propagate(self.noise(rows, rng)))

    def point_model(self):
        """The truth as a Pyro SCM (for the "true mechanisms" row)."""
        import pyro
        import pyro.distributions as dist
        import torch

        def model():
            values = {}
            for node in self.order:
                parents, weights = self.weights[node]
                loc = torch.as_tensor(self.intercept[node])
                for p, w in zip(parents, weights, strict=True):
                    x = values[p]
                    loc = loc + float(w) * (x + torch.tanh(2 * x) if self.nonlinear else x)
                values[node] = pyro.sample(node, dist.Normal(loc, self.scale[node]))

        return model


def sized_shift(truth: Truth, noise: dict, cause: str, outcome: str, target: float, cap: float) -> float:
    """The smallest noise shift at ``cause`` that moves ``outcome`` by ``target`` (its units), or ``cap``.

    A geometric grid finds the first shift that reaches the target, bisection then refines it; the
    outcome need not be monotone in the shift (mixed-sign paths, the nonlinearity), so the first
    crossing is the answer.
    """
    def moved(shifts):
        shifted = {node: np.broadcast_to(value, shifts.shape).copy() for node, value in noise.items()}
        shifted[cause] = shifted[cause] + shifts
        return np.abs(truth.propagate(shifted)[outcome] - truth.propagate(noise)[outcome])

    grid = np.geomspace(0.05, cap, 200)
    reached = np.nonzero(moved(grid) >= target)[0]
    if not len(reached):
        return cap
    if reached[0] == 0:
        return float(grid[0])
    low, high = float(grid[reached[0] - 1]), float(grid[reached[0]])
    for _ in range(50):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if moved(np.array([middle]))[0] < target else (low, middle)
    return high


def config_key(kind: str, size: int, mechanism: str, seed: int) -> str:
    return f"{kind}-{size}-{mechanism}-seed{seed}"


def build_config(directory: Path, kind: str, size: int, nonlinear: bool, *, incidents: int, rows: int,
                 effect: float, cap: float, seed: int):
    """Simulate one configuration and write it (normal rows, graph, truth, incidents) to ``directory``."""
    import pandas as pd

    rng = np.random.default_rng([seed, size, int(nonlinear), kind == "layered"])
    graph = random_dag(size, rng) if kind == "random" else layered_services(size, rng)
    truth = Truth(graph, nonlinear, rng, positive=kind == "layered")
    outcome = max(graph.nodes, key=lambda v: (len(nx.ancestors(graph, v)), v))
    candidates = sorted(nx.ancestors(graph, outcome) | {outcome})
    normal = truth.simulate(rows, rng)
    sd = float(normal[outcome].std())
    records = []
    for index in range(incidents):
        noise = {node: value.reshape(1) for node, value in truth.noise(1, rng).items()}
        cause = str(rng.choice(candidates))
        shift = sized_shift(truth, noise, cause, outcome, effect * sd, cap)
        baseline = truth.propagate(noise)[outcome][0]
        noise[cause] = noise[cause] + shift
        values = {node: float(v[0]) for node, v in truth.propagate(noise).items()}
        moved = abs(values[outcome] - baseline) / sd
        strongest = max(candidates, key=lambda c: abs(float(noise[c][0])))
        records.append({"incident": index, "cause": cause, "shift": shift, "moved_sd": moved,
                        "identifiable": bool(moved >= effect * (1 - 1e-9) and strongest == cause), **values})
    directory.mkdir(parents=True, exist_ok=True)
    normal.to_csv(directory / "normal.csv", index=False, float_format="%.17g")
    pd.DataFrame(records).to_csv(directory / "incidents.csv", index=False, float_format="%.17g")
    meta = {"kind": kind, "size": size, "mechanism": "nonlinear" if nonlinear else "linear", "seed": seed,
            "rows": rows, "effect": effect, "max_shift": cap, "outcome": outcome, "candidates": candidates,
            "edges": [list(e) for e in graph.edges], "nodes": list(graph.nodes),
            "truth": {"weights": {n: [p, list(map(float, w))] for n, (p, w) in truth.weights.items()},
                      "intercept": truth.intercept, "scale": truth.scale}}
    _write_json(directory / "meta.json", meta)
    return truth


def load_config(directory: Path):
    import pandas as pd

    meta = json.loads((directory / "meta.json").read_text())
    graph = nx.DiGraph()
    graph.add_nodes_from(meta["nodes"])
    graph.add_edges_from(meta["edges"])
    return meta, graph, pd.read_csv(directory / "normal.csv"), pd.read_csv(directory / "incidents.csv")


def _write_json(path: Path, value) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(value))
    partial.replace(path)


def _timed(call):
    started, started_cpu = time.perf_counter(), time.process_time()
    result = call()
    return result, time.perf_counter() - started, time.process_time() - started_cpu


def run_bd(directory: Path, truth: Truth) -> None:
    import bayes_defense as bd

    meta, graph, normal, incidents = load_config(directory)
    outcome, candidates = meta["outcome"], meta["candidates"]
    nonlinear = meta["mechanism"] == "nonlinear"
    scm = bd.models.from_graph(graph, mechanisms="additive" if nonlinear else "linear", scales=normal)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        posterior, fit_wall, fit_cpu = _timed(lambda: bd.fit(scm, normal, num_samples=200, progress=False))
    fitted = posterior.model(draws=10)
    oracle = truth.point_model()
    mean, sd = normal.mean(), normal.std()
    out = {"fit_wall": fit_wall, "fit_cpu": fit_cpu, "fit_problems": posterior.problems,
           **{name: [] for name in ("bd", "truth", "zscore")}}
    nodes = meta["nodes"]
    for record in incidents.to_dict("records"):
        row = {node: float(record[node]) for node in nodes}
        calls = {"bd": lambda row=row: bd.explain(fitted, row, outcome),
                 "truth": lambda row=row: bd.explain(oracle, row, outcome),
                 "zscore": lambda row=row: sorted(candidates, key=lambda c: -abs(row[c] - mean[c]) / sd[c])}
        for name, call in calls.items():
            result, wall, cpu = _timed(call)
            entry = {"incident": int(record["incident"]), "wall": wall, "cpu": cpu}
            if name == "zscore":
                entry["ranking"] = result
            else:
                entry["ranking"] = [cause for cause, _ in result.ranking]
                share = result.ranking[0][1]
                entry["top_share"] = [share.mean, share.lower, share.upper]
            out[name].append(entry)
    _write_json(directory / "bd.json", out)


def dowhy_worker(directory: Path, count: int) -> None:
    """Rank the first ``count`` incidents of a configuration with DoWhy, saving after each one."""
    import pandas as pd
    from dowhy import gcm

    gcm.config.default_n_jobs = 1
    gcm.config.disable_progress_bars()
    meta, graph, normal, incidents = load_config(directory)
    outcome, candidates, nodes = meta["outcome"], meta["candidates"], meta["nodes"]
    path = directory / "dowhy.json"
    out = json.loads(path.read_text()) if path.exists() else {"dowhy": []}
    done = {entry["incident"] for entry in out["dowhy"]}
    if len(done) >= min(count, len(incidents)):
        return
    scm = gcm.InvertibleStructuralCausalModel(graph)

    def fit():
        if meta["mechanism"] == "nonlinear":
            gcm.auto.assign_causal_mechanisms(scm, normal)
        else:
            for node in graph.nodes:
                if graph.in_degree(node) == 0:
                    scm.set_causal_mechanism(node, gcm.EmpiricalDistribution())
                else:
                    scm.set_causal_mechanism(node, gcm.AdditiveNoiseModel(gcm.ml.create_linear_regressor()))
        gcm.fit(scm, normal)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, out["fit_wall"], out["fit_cpu"] = _timed(fit)
        print(f"dowhy {directory.name} fitted: {out['fit_cpu']:.1f} s CPU", flush=True)
        for record in incidents.to_dict("records")[:count]:
            if int(record["incident"]) in done:
                continue
            row = pd.DataFrame([{node: float(record[node]) for node in nodes}])
            scores, wall, cpu = _timed(lambda row=row: gcm.attribute_anomalies(scm, outcome, anomaly_samples=row))
            value = {c: float(np.asarray(scores.get(c, [0.0])).reshape(-1)[0]) for c in candidates}
            out["dowhy"].append({"incident": int(record["incident"]), "wall": wall, "cpu": cpu,
                                 "ranking": sorted(candidates, key=lambda c: -value[c])})
            _write_json(path, out)
            print(f"dowhy {directory.name} incident {record['incident']}: {cpu:.1f} s CPU", flush=True)


def run_dowhy(directory: Path, python: str, count: int) -> None:
    command = [python, str(Path(__file__).resolve()), "--dowhy-worker", str(directory), "--dowhy-count", str(count)]
    subprocess.run(command, check=True, env={**os.environ, **ONE_THREAD})


def summarise(directory: Path) -> dict | None:
    if not (directory / "bd.json").exists():
        return None
    meta, _, _, incidents = load_config(directory)
    results = json.loads((directory / "bd.json").read_text())
    if (directory / "dowhy.json").exists():
        dowhy = json.loads((directory / "dowhy.json").read_text())
        results["dowhy"], results["dowhy_fit_cpu"] = dowhy["dowhy"], dowhy.get("fit_cpu", math.nan)
    cause = dict(zip(incidents["incident"], incidents["cause"], strict=True))
    identifiable = dict(zip(incidents["incident"], incidents["identifiable"], strict=True))
    summary = {**{k: meta[k] for k in ("kind", "size", "mechanism", "seed", "outcome")},
               "candidates": len(meta["candidates"]), "incidents": len(incidents),
               "identifiable": int(incidents["identifiable"].sum()),
               "shift_median": float(incidents["shift"].median()), "shift_max": float(incidents["shift"].max()),
               "fit_bd": results["fit_cpu"], "fit_dowhy": results.get("dowhy_fit_cpu", math.nan)}
    # The incidents DoWhy ranked, for a comparison on the same incidents.
    summary["dowhy_incidents"] = sorted(e["incident"] for e in results.get("dowhy") or [])
    summary["same"] = {}
    for name in METHODS:
        items = [e for e in results.get(name) or [] if e["incident"] in set(summary["dowhy_incidents"])]
        summary["same"][name] = {"top1": int(sum(e["ranking"][0] == cause[e["incident"]] for e in items)),
                                 "top3": int(sum(cause[e["incident"]] in e["ranking"][:3] for e in items)),
                                 "n": len(items), "cpu": [e["cpu"] for e in items],
                                 "n_identifiable": int(sum(identifiable[e["incident"]] for e in items)),
                                 "all_cpu": [e["cpu"] for e in results.get(name) or []]}
    for name in METHODS:
        items = results.get(name) or []
        if not items:
            summary[name] = None
            continue
        top1 = [e["ranking"][0] == cause[e["incident"]] for e in items]
        top3 = [cause[e["incident"]] in e["ranking"][:3] for e in items]
        ident = [bool(identifiable[e["incident"]]) for e in items]
        summary[name] = {
            "n": len(items), "n_identifiable": int(sum(ident)),
            "top1": (int(sum(top1)), len(items)), "top3": (int(sum(top3)), len(items)),
            "top1_identifiable": (int(sum(t for t, i in zip(top1, ident, strict=True) if i)), int(sum(ident))),
            "top3_identifiable": (int(sum(t for t, i in zip(top3, ident, strict=True) if i)), int(sum(ident))),
            "cpu_ms": 1000 * float(np.median([e["cpu"] for e in items])),
            "wall_ms": 1000 * float(np.median([e["wall"] for e in items])),
            "first_cpu_ms": 1000 * float(items[0]["cpu"]),
        }
    return summary


def _rate(pair) -> str:
    hits, trials = pair
    if not trials:
        return "-"
    return f"{hits / trials:.2f} ({hits}/{trials})"


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _dowhy_counts(summaries) -> str:
    """How many incidents DoWhy ranked in each configuration, in words for the page."""
    return "; ".join(f"{s['kind']}-{s['size']}-{s['mechanism']} {len(s['dowhy_incidents'])} of {s['incidents']}"
                     for s in summaries)


def _pair(entry) -> str:
    return f"{entry['top1']}/{entry['n']} / {entry['top3']}/{entry['n']}"


def _claim(same) -> tuple[float, bool]:
    """DoWhy's median CPU per explanation over bd.explain's (fitted), and whether bd is at least
    ``SPEED_UP``-fold faster with top-1 and top-3 at least DoWhy's on the same incidents.

    bd's time is its median over all its explanations of the configuration (one of them cold), so
    that a configuration where DoWhy ranked two incidents is not timed on bd's cold first call alone.
    """
    bd, dowhy = same["bd"], same["dowhy"]
    ratio = float(np.median(dowhy["cpu"]) / np.median(bd["all_cpu"]))
    return ratio, bool(ratio >= SPEED_UP and bd["top1"] >= dowhy["top1"] and bd["top3"] >= dowhy["top3"])


def _same_incident_tables(summaries) -> list[str]:
    """Every method on the incidents DoWhy ranked: per configuration, then pooled per size."""
    ran = [s for s in summaries if s["dowhy_incidents"]]
    if not ran:
        return []
    holds = f"{SPEED_UP:g}x faster, top-1 and top-3 at least DoWhy's"
    lines = ["", "On the incidents DoWhy ranked (the first ones of each configuration; configurations it did not "
             "run on are left out), every method on those same incidents. Cells are hits/incidents, top-1 / "
             "top-3. Times are median CPU per explanation: DoWhy's on its incidents, bd.explain's (fitted) on all "
             "its explanations of the configuration (the first one cold); speed-up is their ratio. The last "
             "column checks the claim on these incidents.", "",
             "| graph | nodes | mechanism | DoWhy incidents | identifiable | bd.explain (fitted) | DoWhy | z-score "
             f"| bd ms CPU | DoWhy s CPU | speed-up | {holds} |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in ran:
        same = s["same"]
        ratio, ok = _claim(same)
        lines.append(f"| {s['kind']} | {s['size']} | {s['mechanism']} | {same['dowhy']['n']} of {s['incidents']} | "
                     f"{same['dowhy']['n_identifiable']} | "
                     f"{' | '.join(_pair(same[name]) for name in ('bd', 'dowhy', 'zscore'))} | "
                     f"{_ms(1000 * float(np.median(same['bd']['all_cpu'])))} | {np.median(same['dowhy']['cpu']):.1f} | "
                     f"{ratio:.0f}x | {'yes' if ok else 'no'} |")
    lines += ["", "Pooled per size (top-1 with its 90% Wilson interval; bd's first, cold, explanation is the slowest "
              "first one among the configurations):", "",
              "| nodes | DoWhy incidents | bd.explain (fitted) top-1 | DoWhy top-1 | z-score top-1 "
              "| bd top-3 / DoWhy top-3 / z top-3 | bd ms CPU | bd first ms CPU | DoWhy s CPU | speed-up "
              f"| {holds} |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for size in sorted({s["size"] for s in ran}):
        group = [s["same"] for s in ran if s["size"] == size]
        pooled = {name: {"top1": sum(g[name]["top1"] for g in group), "top3": sum(g[name]["top3"] for g in group),
                         "n": sum(g[name]["n"] for g in group), "cpu": [c for g in group for c in g[name]["cpu"]],
                         "all_cpu": [c for g in group for c in g[name]["all_cpu"]]}
                  for name in ("bd", "dowhy", "zscore")}
        ratio, ok = _claim(pooled)
        top1 = []
        for name in ("bd", "dowhy", "zscore"):
            rate, low, high = wilson(pooled[name]["top1"], pooled[name]["n"])
            top1.append(f"{rate:.2f} [{low:.2f}, {high:.2f}] ({pooled[name]['top1']}/{pooled[name]['n']})")
        top3 = " / ".join(f"{pooled[name]['top3']}/{pooled[name]['n']}" for name in ("bd", "dowhy", "zscore"))
        bd_first = max(g["bd"]["all_cpu"][0] for g in group)
        lines.append(f"| {size} | {pooled['dowhy']['n']} ({len(group)} configurations) | {' | '.join(top1)} | "
                     f"{top3} | {_ms(1000 * float(np.median(pooled['bd']['all_cpu'])))} | {_ms(1000 * bd_first)} | "
                     f"{np.median(pooled['dowhy']['cpu']):.1f} | {ratio:.0f}x | {'yes' if ok else 'no'} |")
    return lines


def write_markdown(summaries, path: Path, args, load: str) -> None:
    command = "python papers/scm_explain.py " + " ".join(sys.argv[1:]) if sys.argv[1:] else \
        "python papers/scm_explain.py"
    lines = ["# Root-cause ranking on synthetic SCMs", "",
             f"Generated by `{command}` ({platform.python_version()}, {load}), seed {args.seed}. "
             f"{args.rows} normal rows train every method. Each incident shifts one root cause's noise "
             f"(drawn uniformly among the outcome and its ancestors) so that the outcome moves by {args.effect:g} "
             f"of its normal standard deviations (shift at most {args.max_shift:g} noise sds). Identifiable: the "
             "fault moves the outcome that far within the cap and the injected node's true noise is the "
             "largest among the candidates' (see the script's docstring). Cells are top-k accuracy "
             "(hits/incidents). Times are medians per explanation, CPU time of the explaining process "
             "(one thread), then wall time (the machine is shared, so wall time includes waiting for a core), "
             "then the first explanation's CPU time (cold: it traces the model); fit time (CPU s) apart. "
             "DoWhy ranks the first incidents of each configuration only (its column n): "
             + _dowhy_counts(summaries) + ".", "",
             "| graph | nodes | mechanism | candidates | identifiable / incidents | shift median / max (sd) | method "
             "| n | top-1 (ident.) | top-3 (ident.) | top-1 (all) | top-3 (all) | ms CPU | ms wall | first ms CPU "
             "| fit s CPU |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        for key, label in METHODS.items():
            entry = s[key]
            fit = {"bd": s["fit_bd"], "dowhy": s["fit_dowhy"] if entry else math.nan}.get(key, math.nan)
            cells = ["0" if key == "dowhy" else "-"] + ["-"] * 7 if entry is None else [
                str(entry["n"]), _rate(entry["top1_identifiable"]), _rate(entry["top3_identifiable"]),
                _rate(entry["top1"]), _rate(entry["top3"]), _ms(entry["cpu_ms"]), _ms(entry["wall_ms"]),
                _ms(entry["first_cpu_ms"])]
            lines.append(f"| {s['kind']} | {s['size']} | {s['mechanism']} | {s['candidates']} | "
                         f"{s['identifiable']} / {s['incidents']} | {s['shift_median']:.1f} / {s['shift_max']:.1f} | "
                         f"{label} | {' | '.join(cells)} | {'' if fit != fit else f'{fit:.2f}'} |")
    lines += ["", "Pooled over the configurations above (90% Wilson intervals):", "",
              "| method | top-1 (ident.) | top-3 (ident.) | top-1 (all) | median ms CPU at 50 nodes |",
              "|---|---|---|---|---|"]
    for key, label in METHODS.items():
        entries = [s[key] for s in summaries if s[key]]
        if not entries:
            continue
        cells = []
        for field in ("top1_identifiable", "top3_identifiable", "top1"):
            hits, trials = sum(e[field][0] for e in entries), sum(e[field][1] for e in entries)
            rate, low, high = wilson(hits, trials)
            cells.append(f"{rate:.3f} [{low:.3f}, {high:.3f}] ({hits}/{trials})" if trials else "-")
        at50 = [s[key]["cpu_ms"] for s in summaries if s["size"] == 50 and s[key]]
        cells.append(_ms(max(at50)) + " (worst configuration)" if at50 else "-")
        lines.append(f"| {label} | {' | '.join(cells)} |")
    lines += _same_incident_tables(summaries)
    notes = ""
    if path.exists() and NOTES_MARKER in path.read_text():
        notes = path.read_text().split(NOTES_MARKER, 1)[1]
    path.write_text("\n".join(lines) + "\n\n" + NOTES_MARKER + notes.rstrip("\n") + "\n")


def _per_size(values, index):
    return values[min(index, len(values) - 1)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--kinds", nargs="+", default=["random", "layered"])
    parser.add_argument("--mechanisms", nargs="+", default=["linear", "nonlinear"])
    parser.add_argument("--incidents", type=int, nargs="+", default=[100],
                        help="incidents per size (the last value repeats for later sizes)")
    parser.add_argument("--dowhy-incidents", type=int, nargs="+", default=[100, 2, 1],
                        help="DoWhy incidents per size (its attribution takes seconds to minutes each)")
    parser.add_argument("--dowhy-python", default=None,
                        help="a Python with dowhy installed (default: this one, if it has dowhy)")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--effect", type=float, default=5.0,
                        help="how far the fault moves the outcome, in its normal standard deviations")
    parser.add_argument("--max-shift", type=float, default=100.0, help="largest noise shift, in noise sds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "scm_explain",
                        help="where configurations and results are kept; a rerun skips what is done")
    parser.add_argument("--out", type=Path, default=None, help="the page (default papers/scm_explain.md; "
                        "with --quick, a file in the temporary directory)")
    parser.add_argument("--skip-dowhy", action="store_true")
    parser.add_argument("--report-only", action="store_true", help="write the page from --work only")
    parser.add_argument("--quick", action="store_true", help="tiny run: 10 nodes, 5 incidents, no DoWhy")
    parser.add_argument("--dowhy-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dowhy-count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dowhy_worker is not None:
        dowhy_worker(args.dowhy_worker, args.dowhy_count)
        return None
    if args.quick:
        args.sizes, args.incidents, args.rows, args.skip_dowhy = [10], [5], 300, True
        args.kinds, args.mechanisms = ["random"], ["linear"]
        args.out = args.out or Path(tempfile.gettempdir()) / "scm_explain_quick.md"
        args.work = args.out.with_suffix(".work")
    args.out = args.out or Path(__file__).with_suffix(".md")
    python = args.dowhy_python
    if python is None and not args.skip_dowhy:
        try:
            import dowhy  # noqa: F401

            python = sys.executable
        except ImportError:
            print("dowhy is not installed here: its rows are left out (give --dowhy-python, a Python that has "
                  "it; it conflicts with this package's scipy, so use a separate environment)", file=sys.stderr)
    load = f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at start"
    summaries = []
    for size_index, size in enumerate(args.sizes):
        for kind in args.kinds:
            for mechanism in args.mechanisms:
                directory = args.work / config_key(kind, size, mechanism, args.seed)
                if not args.report_only:
                    if not (directory / "bd.json").exists():
                        truth = build_config(directory, kind, size, mechanism == "nonlinear",
                                             incidents=_per_size(args.incidents, size_index), rows=args.rows,
                                             effect=args.effect, cap=args.max_shift, seed=args.seed)
                        run_bd(directory, truth)
                    if python and not args.skip_dowhy:
                        run_dowhy(directory, python, _per_size(args.dowhy_incidents, size_index))
                summary = summarise(directory)
                if summary is None:
                    continue
                summaries.append(summary)
                print({k: v for k, v in summary.items()}, flush=True)
                write_markdown(summaries, args.out, args, load)
    return summaries


if __name__ == "__main__":
    main()

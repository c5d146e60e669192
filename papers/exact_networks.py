"""Exact queries on the bnlearn networks shipped inside pgmpy: time per query against pgmpy, and errors.

The table in docs/exact_networks.md is the output of

    python papers/exact_networks.py --queries 5 --counterfactuals 2 --out exact_networks.md

For every ``*.bif.gz`` in pgmpy's ``utils/example_models`` (or the ones named
with ``--networks``), parsed once by pgmpy's BIF reader (not timed, for
either side), the script asks seeded random interventional queries with
evidence: ``P(Q = q | do(X = x), E = e)`` with one intervened site, one to
three observed ones and the query site drawn at random, the values taken
from one forward sample of the network so that the evidence has positive
probability (pgmpy's elimination returns a posterior even for evidence of
probability zero, so it cannot check that case).

Per query it times, in this process, in CPU time (``time.process_time``;
torch and pgmpy both single-threaded):

- pgmpy: graph surgery on a copy of the network (the intervened node loses
  its parents, its CPD becomes a point mass) plus ``VariableElimination.query``,
  the whole modify-and-eliminate, which returns Q's full distribution;
- ours cold: the first query, ``P(Q = q | ...)``, on a model object built
  from the same tables (``TabularModel``) and never queried, so it pays for
  compiling its tables, pruning and planning the elimination (median of
  three, each on a fresh object; pgmpy's is the median of three too);
- ours new pattern: the same query asked first on an already compiled model
  (the compiled tables reused, the pruning and path found afresh);
- ours warm: the median of ``--repeat`` repeats of that query.

Everything the exact backend caches (tables, pruned plans, elimination
orders) belongs to the model object, so a fresh object is cold. The error is the largest absolute difference over all states of Q between
our exact answers and pgmpy's surgery plus variable elimination on the same
normalised tables (rows within 1e-6 of one are renormalised by
``from_pgmpy``; the oracle's CPDs are normalised alike).

Counterfactuals: ``P(Q' = q | E = e)`` in the world where X had taken a value
other than its factual one, Q a descendant of X, timed cold and warm. pgmpy
has no counterfactual query; the check is our importance backend (20k
particles) on the same query, reported as the largest ``|exact - importance|``
in standard errors. A counterfactual whose tables would pass the exact
backend's table limit reports the limit and the time of ``backend="auto"``,
which falls back to importance sampling.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import statistics
import sys
import time
import warnings

import numpy


def _pgmpy():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgmpy
        from pgmpy.factors.discrete import TabularCPD
        from pgmpy.inference import VariableElimination
        from pgmpy.readwrite import BIFReader
    return pgmpy, TabularCPD, VariableElimination, BIFReader


def shipped_networks() -> dict:
    """``{name: path}`` of the BIF networks inside the installed pgmpy."""
    pgmpy = _pgmpy()[0]
    folder = os.path.join(os.path.dirname(pgmpy.__file__), "utils", "example_models")
    return {name[: -len(".bif.gz")]: os.path.join(folder, name)
            for name in sorted(os.listdir(folder)) if name.endswith(".bif.gz")}


def surgery(network, do: dict, evidence: dict, query: str) -> dict:
    """pgmpy's answer by graph surgery plus variable elimination: ``{state: probability}``."""
    _, TabularCPD, VariableElimination, _ = _pgmpy()
    mutilated = network.copy()
    for variable, state in do.items():
        old = mutilated.get_cpds(variable)
        states = list(old.state_names[variable])
        mutilated.remove_cpds(old)
        mutilated.remove_edges_from([(parent, variable) for parent in list(mutilated.predecessors(variable))])
        mutilated.add_cpds(TabularCPD(variable, len(states), [[1.0 if s == state else 0.0] for s in states],
                                      state_names={variable: states}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        factor = VariableElimination(mutilated).query([query], evidence=evidence, show_progress=False)
    return {state: float(factor.get_value(**{query: state})) for state in factor.state_names[query]}


def forward_sample(model, rng) -> dict:
    values = {}
    for name in model.variables:
        row = model.tables[name][tuple(values[p] for p in model.parents[name])].numpy()
        values[name] = int(rng.choice(len(row), p=row / row.sum()))
    return values


def fresh(model):
    """A model object with the same tables that no query has seen (nothing compiled or cached)."""
    from bayes_defense.causal.pgmpy_interop import TabularModel

    return TabularModel(model.variables, model.parents, model.state_names, model.tables)


def timed(call):
    # CPU time of this process: the machine is shared, and wall time there
    # measures the other processes as much as ours (single-threaded on both sides).
    start = time.process_time()
    result = call()
    return time.process_time() - start, result


def interventional(name, network, oracle_network, model, rng, repeat: int) -> dict:
    import bayes_defense as bd

    names = model.variables
    sample = forward_sample(model, rng)
    chosen = rng.choice(len(names), size=min(len(names), 2 + int(rng.integers(1, 4))), replace=False)
    do_site, query_site = names[chosen[0]], names[chosen[1]]
    evidence = {names[i]: sample[names[i]] for i in chosen[2:]}
    do = {do_site: sample[do_site]}
    states = model.state_names
    pgmpy_seconds, oracle = timed(lambda: surgery(oracle_network, {do_site: states[do_site][do[do_site]]},
                                                  {v: states[v][k] for v, k in evidence.items()}, query_site))
    pgmpy_seconds = statistics.median([pgmpy_seconds] + [timed(lambda: surgery(
        oracle_network, {do_site: states[do_site][do[do_site]]}, {v: states[v][k] for v, k in evidence.items()},
        query_site))[0] for _ in range(2)])

    def ask(target, k=0):
        return bd.intervene(target, do, {query_site: k}, evidence=evidence, backend="exact")

    # Cold three times, each on its own fresh model object.
    cold = statistics.median(timed(lambda: ask(fresh(model)))[0] for _ in range(3))
    pattern, _ = timed(lambda: ask(model))
    warm = statistics.median(timed(lambda: ask(model))[0] for _ in range(repeat))
    error = max(abs(ask(model, k).mean - oracle[state]) for k, state in enumerate(states[query_site]))
    return {"network": name, "kind": "interventional", "do": do, "evidence": evidence, "query": query_site,
            "pgmpy_s": pgmpy_seconds, "cold_s": cold, "pattern_s": pattern, "warm_s": warm, "max_abs_error": error}


def counterfactual(name, model, rng, repeat: int) -> dict | None:
    import bayes_defense as bd
    from bayes_defense.causal.structure import model_info
    from bayes_defense.inference.exact import compile_discrete

    network = compile_discrete(model_info(model), model)
    names = model.variables
    candidates = [v for v in names if len(model.state_names[v]) > 1 and len(network.descendants({v})) > 1]
    if not candidates:
        return None
    sample = forward_sample(model, rng)
    do_site = candidates[int(rng.integers(len(candidates)))]
    downstream = sorted(network.descendants({do_site}) - {do_site}, key=names.index)
    query_site = downstream[int(rng.integers(len(downstream)))]
    others = [v for v in names if v not in (do_site, query_site)]
    evidence = {v: sample[v] for v in rng.choice(others, size=min(len(others), int(rng.integers(1, 4))),
                                                     replace=False).tolist()}
    evidence[do_site] = sample[do_site]
    alternative = (sample[do_site] + 1 + int(rng.integers(len(model.state_names[do_site]) - 1))) % len(
        model.state_names[do_site])
    do, query = {do_site: alternative}, {query_site: sample[query_site]}
    row = {"network": name, "kind": "counterfactual", "do": do, "evidence": evidence, "query": query_site}

    def ask(target, backend="exact", **kwargs):
        return bd.counterfactual(target, evidence, do, query, backend=backend, **kwargs)

    try:
        cold, exact_answer = timed(lambda: ask(fresh(model)))
    except bd.UnsupportedModelError as error:
        auto, answer = timed(lambda: ask(fresh(model), backend="auto", seed=0))
        return {**row, "over_limit": str(error).split(";")[0], "auto_s": auto, "auto_backend": answer.backend}
    warm = statistics.median(timed(lambda: ask(model))[0] for _ in range(repeat))
    sampled = ask(model, backend="importance", num_samples=20_000, seed=1)
    p = exact_answer.mean
    # Floored: at p = 0 or 1 the sampling error vanishes and only float rounding is left.
    standard_error = max(math.sqrt(p * (1 - p) / sampled.ess), 1e-12) if sampled.ess > 0 else math.inf
    z = abs(sampled.mean - p) / standard_error
    return {**row, "cold_s": cold, "warm_s": warm, "exact": p, "importance": sampled.mean, "z": z}


def table(rows: list, parse_seconds: dict, nodes: dict) -> str:
    lines = [
        "| network | nodes | pgmpy surgery+VE (ms) | ours cold (ms) | cold / pgmpy (worst) | ours new pattern (ms) "
        "| ours warm (ms) | max abs error | cf cold (ms) | cf warm (ms) | cf vs importance |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in nodes:
        mine = [r for r in rows if r["network"] == name and r["kind"] == "interventional"]
        cfs = [r for r in rows if r["network"] == name and r["kind"] == "counterfactual"]
        if not mine:
            continue

        def median_ms(key, subset):
            return statistics.median(r[key] for r in subset) * 1e3

        pgmpy_ms, cold_ms = median_ms("pgmpy_s", mine), median_ms("cold_s", mine)
        worst = max(r["cold_s"] / r["pgmpy_s"] for r in mine)
        answered = [r for r in cfs if "cold_s" in r]
        over = [r for r in cfs if "over_limit" in r]
        cf_cold = f"{median_ms('cold_s', answered):.1f}" if answered else "-"
        cf_warm = f"{median_ms('warm_s', answered):.2f}" if answered else "-"
        notes = []
        if answered:
            notes.append(f"max {max(r['z'] for r in answered):.1f} SE ({len(answered)})")
        if over:
            notes.append(f"{len(over)} over the table limit; auto -> {over[0]['auto_backend']} in "
                         f"{statistics.median(r['auto_s'] for r in over) * 1e3:.0f} ms")
        lines.append(
            f"| {name} | {nodes[name]} | {pgmpy_ms:.1f} | {cold_ms:.1f} | {cold_ms / pgmpy_ms:.2f} ({worst:.2f}) "
            f"| {median_ms('pattern_s', mine):.1f} | {median_ms('warm_s', mine):.2f} "
            f"| {max(r['max_abs_error'] for r in mine):.1e} | {cf_cold} | {cf_warm} | {'; '.join(notes) or '-'} |"
        )
    return "\n".join(lines)


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="The table in docs/exact_networks.md: python papers/exact_networks.py --queries 5 "
               "--counterfactuals 2 --out exact_networks.md",
    )
    parser.add_argument("--networks", nargs="+", metavar="NAME",
                        help="network names (default: every *.bif.gz shipped inside pgmpy)")
    parser.add_argument("--queries", type=int, default=5, help="interventional queries per network (default 5)")
    parser.add_argument("--counterfactuals", type=int, default=2, help="counterfactual queries per network (default 2)")
    parser.add_argument("--repeat", type=int, default=15, help="repeats of each warm timing (default 15)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the query draws (default 0)")
    parser.add_argument("--out", help="write the markdown table (and a .json of every query beside it) here")
    args = parser.parse_args(argv)
    if args.queries < 1 or args.counterfactuals < 0 or args.repeat < 1:
        parser.error("--queries and --repeat must be positive and --counterfactuals non-negative")
    available = shipped_networks()
    names = args.networks or list(available)
    unknown = [name for name in names if name not in available]
    if unknown:
        parser.error(f"no shipped network {', '.join(unknown)}; pgmpy ships: {', '.join(available)}")

    import torch

    from bayes_defense.causal.pgmpy_interop import from_pgmpy

    # Our queries run single-threaded (bayes_defense.inference.base.single_threaded); pgmpy gets the same.
    torch.set_num_threads(1)
    BIFReader = _pgmpy()[3]
    rows, parse_seconds, nodes = [], {}, {}
    for name in names:
        start = time.perf_counter()
        with gzip.open(available[name], "rt") as file, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            network = BIFReader(string=file.read()).get_model()
        parse_seconds[name] = time.perf_counter() - start
        model = from_pgmpy(network)
        oracle_network = network.copy()
        for cpd in oracle_network.get_cpds():
            cpd.normalize(inplace=True)
        nodes[name] = len(model.variables)
        rng = numpy.random.default_rng([args.seed, len(rows)])
        for _ in range(args.queries):
            rows.append(interventional(name, network, oracle_network, model, rng, args.repeat))
        for _ in range(args.counterfactuals):
            row = counterfactual(name, model, rng, args.repeat)
            if row is not None:
                rows.append(row)
        mine = [r for r in rows if r["network"] == name and r["kind"] == "interventional"]
        print(f"{name}: {nodes[name]} nodes, parsed in {parse_seconds[name]:.1f} s; cold "
              f"{statistics.median(r['cold_s'] for r in mine) * 1e3:.1f} ms, pgmpy "
              f"{statistics.median(r['pgmpy_s'] for r in mine) * 1e3:.1f} ms, max error "
              f"{max(r['max_abs_error'] for r in mine):.1e}", file=sys.stderr, flush=True)
    markdown = table(rows, parse_seconds, nodes)
    print(markdown)
    if args.out:
        with open(args.out, "w") as file:
            file.write(markdown + "\n")
        with open(os.path.splitext(args.out)[0] + ".json", "w") as file:
            json.dump(rows, file, indent=1, default=str)
    return rows


if __name__ == "__main__":
    main()

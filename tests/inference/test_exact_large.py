"""Exact inference on large networks: pruning, linear compiling, the table limit.

Oracles: brute-force enumeration of small random networks (interventional
queries by summing the mutilated joint; counterfactuals by enumerating every
site's response function, which is what the canonical uniform noise selects),
and, on munin1 from the bnlearn networks shipped inside pgmpy, graph surgery
plus pgmpy's variable elimination. pgmpy's elimination returns a posterior
even for evidence of probability zero, so its cross-check draws evidence from
the network (positive probability) and impossible evidence is tested against
the brute-force oracle only.
"""

import itertools
import math
import os
import warnings

import numpy
import opt_einsum
import pyro
import pyro.distributions as dist
import pytest
import torch

import bayes_defense as bd
from bayes_defense.causal.pgmpy_interop import TabularModel, from_pgmpy
from bayes_defense.causal.structure import model_info
from bayes_defense.inference import exact
from bayes_defense.inference.exact import compile_discrete


def random_network(seed: int, sizes=(4, 3), max_parents=2, zero_rate=0.15) -> TabularModel:
    """Independent random sub-networks side by side (so some queries have d-separated parts)."""
    rng = numpy.random.default_rng(seed)
    variables, parents, states, tables = [], {}, {}, {}
    for part, size in enumerate(sizes):
        local = []
        for i in range(size):
            name = f"p{part}v{i}"
            k = int(rng.integers(2, 4))
            chosen = tuple(rng.choice(local, size=min(len(local), int(rng.integers(0, max_parents + 1))),
                                      replace=False).tolist()) if local else ()
            shape = tuple(len(states[p]) for p in chosen) + (k,)
            table = rng.dirichlet(numpy.ones(k), size=math.prod(shape[:-1])).reshape(shape)
            # Zeros make impossible evidence and empty coupling cells reachable.
            table = numpy.where(rng.random(shape) < zero_rate, 0.0, table)
            table[table.sum(-1) == 0, 0] = 1.0
            table = table / table.sum(-1, keepdims=True)
            variables.append(name)
            local.append(name)
            parents[name] = chosen
            states[name] = [str(s) for s in range(k)]
            tables[name] = torch.as_tensor(table, dtype=torch.float64)
    return TabularModel(variables, parents, states, tables)


def brute_interventional(model, do, evidence, query):
    """``P(query | do, evidence)`` by summing the mutilated joint; None for impossible evidence."""
    total = hit = 0.0
    for values in itertools.product(*[range(len(model.state_names[v])) for v in model.variables]):
        x = dict(zip(model.variables, values, strict=True))
        if any(x[v] != k for v, k in {**do, **evidence}.items()):
            continue
        p = 1.0
        for v in model.variables:
            if v not in do:
                p *= float(model.tables[v][tuple(x[q] for q in model.parents[v]) + (x[v],)])
        total += p
        hit += p * all(x[v] == k for v, k in query.items())
    return None if total == 0 else hit / total


def response_intervals(table: numpy.ndarray):
    """The canonical noise cut into intervals on which the site's response function is constant.

    Returns ``(lengths, responses)``: ``responses[j]`` maps a parent
    configuration (flattened) to the value ``min{k : F(k) >= u}`` for ``u``
    inside interval ``j``.
    """
    rows = table.reshape(-1, table.shape[-1])
    cdf = numpy.cumsum(rows, axis=1)
    cuts = numpy.unique(numpy.concatenate([[0.0, 1.0], cdf.ravel()]))
    cuts = cuts[(cuts >= 0) & (cuts <= 1)]
    lengths, responses = [], []
    for low, high in zip(cuts[:-1], cuts[1:], strict=True):
        if high - low <= 0:
            continue
        middle = (low + high) / 2
        lengths.append(high - low)
        responses.append((cdf < middle).sum(axis=1).clip(max=rows.shape[1] - 1))
    return numpy.array(lengths), responses


def brute_counterfactual(model, evidence, do, query, condition=None):
    """``P(query in the world do | evidence and condition in the factual world)`` over response functions."""
    per_site = [response_intervals(model.tables[v].numpy()) for v in model.variables]
    strides = {}
    for v in model.variables:
        sizes = [len(model.state_names[p]) for p in model.parents[v]]
        strides[v] = [math.prod(sizes[i + 1:]) for i in range(len(sizes))]
    total = hit = 0.0
    for choice in itertools.product(*[range(len(lengths)) for lengths, _ in per_site]):
        weight = math.prod(per_site[i][0][j] for i, j in enumerate(choice))
        factual, twin = {}, {}
        for i, v in enumerate(model.variables):
            response = per_site[i][1][choice[i]]
            row = sum(factual[p] * s for p, s in zip(model.parents[v], strides[v], strict=True))
            factual[v] = int(response[row])
            row = sum(twin[p] * s for p, s in zip(model.parents[v], strides[v], strict=True))
            twin[v] = do[v] if v in do else int(response[row])
        if any(factual[v] != k for v, k in evidence.items()):
            continue
        if condition is not None and not all(factual[v] == k for v, k in condition.items()):
            continue
        total += weight
        hit += weight * all(twin[v] == k for v, k in query.items())
    return None if total <= 1e-15 else hit / total


def patterns(model, seed: int, count: int):
    rng = numpy.random.default_rng(seed)
    names = model.variables
    for _ in range(count):
        chosen = rng.choice(len(names), size=int(rng.integers(3, 6)), replace=False)
        do_sites = [names[i] for i in chosen[:int(rng.integers(1, 3))]]
        query_site = names[chosen[-1]]
        evidence_sites = [names[i] for i in chosen[len(do_sites):-1]]

        def value(v):
            return int(rng.integers(0, len(model.state_names[v])))

        yield ({v: value(v) for v in do_sites}, {v: value(v) for v in evidence_sites},
               {query_site: value(query_site)})


@pytest.mark.parametrize("seed", range(6))
def test_pruned_interventional_queries_match_brute_force(seed):
    model = random_network(seed)
    impossible = 0
    for do, evidence, query in patterns(model, seed, 12):
        expected = brute_interventional(model, do, evidence, query)
        if expected is None:
            impossible += 1
            with pytest.raises(bd.ImpossibleEvidenceError):
                bd.intervene(model, do, query, evidence=evidence, backend="exact")
            continue
        got = bd.intervene(model, do, query, evidence=evidence, backend="exact")
        assert abs(got.mean - expected) <= 1e-12, (do, evidence, query, got.mean, expected)
    assert impossible < 12


@pytest.mark.parametrize("seed", range(6))
def test_pruned_counterfactuals_match_response_function_enumeration(seed):
    model = random_network(seed, sizes=(3, 2))
    for do, evidence, query in patterns(model, 100 + seed, 8):
        expected = brute_counterfactual(model, evidence, do, query)
        if expected is None:
            with pytest.raises(bd.ImpossibleEvidenceError):
                bd.counterfactual(model, evidence, do, query, backend="exact")
            continue
        got = bd.counterfactual(model, evidence, do, query, backend="exact")
        assert abs(got.mean - expected) <= 1e-12, (do, evidence, query, got.mean, expected)


def test_probability_of_necessity_with_a_factual_condition_matches_enumeration():
    for seed in range(4):
        model = random_network(seed, sizes=(4,), zero_rate=0.0)
        # The last site has a parent; the first site is among its ancestors or not, both are fine.
        cause, outcome = model.variables[0], model.variables[-1]
        kept = brute_counterfactual(model, {cause: 1}, {cause: 0}, {outcome: 1}, condition={outcome: 1})
        got = bd.probability_of_necessity(model, {cause: 1}, {cause: 0}, {outcome: 1}, backend="exact")
        assert abs(got.mean - (1 - kept)) <= 1e-12, seed


def two_parts():
    """``a -> b``, ``a -> c`` (b = a, c = 1 - a) beside an independent ``d -> e``."""
    a = pyro.sample("a", dist.Bernoulli(0.4))
    pyro.sample("b", dist.Bernoulli(a))
    pyro.sample("c", dist.Bernoulli(1 - a))
    d = pyro.sample("d", dist.Bernoulli(0.3))
    pyro.sample("e", dist.Bernoulli(0.2 + 0.6 * d))


def test_impossible_evidence_in_a_pruned_part_still_raises():
    # b = 1 and c = 1 cannot hold together; that part is d-separated from e.
    with pytest.raises(bd.ImpossibleEvidenceError):
        bd.intervene(two_parts, {}, {"e": 1.0}, evidence={"b": 1.0, "c": 1.0}, backend="exact")
    with pytest.raises(bd.ImpossibleEvidenceError):
        bd.counterfactual(two_parts, {"b": 1.0, "c": 1.0}, {"d": 1.0}, {"e": 1.0}, backend="exact")
    # A possible evidence in that part leaves the answer unchanged.
    got = bd.intervene(two_parts, {}, {"e": 1.0}, evidence={"b": 1.0, "c": 0.0}, backend="exact")
    assert got.mean == pytest.approx(0.3 * 0.8 + 0.7 * 0.2, abs=1e-15)


def counting_chain(calls: list, length: int, deterministic_every: int = 0):
    def model():
        calls.append(1)
        x = pyro.sample("x0", dist.Bernoulli(0.3))
        for i in range(1, length):
            if deterministic_every and i % deterministic_every == 0:
                x = pyro.deterministic(f"x{i}", 1 - x)
            else:
                x = pyro.sample(f"x{i}", dist.Categorical(torch.stack([0.2 + 0.5 * x, 0.8 - 0.5 * x], -1)))
                x = x.to(torch.get_default_dtype())
    return model


@pytest.mark.parametrize("length", [5, 60])
def test_compiling_runs_the_model_a_fixed_number_of_times(length):
    calls: list = []
    model = counting_chain(calls, length)
    info = model_info(model)
    info.parents()
    before = len(calls)
    network = compile_discrete(info, model)
    # One float64 trace for the supports and one run of all blocks, whatever the length.
    assert len(calls) - before == 2
    assert network.cpt["x3"][1].tolist() == pytest.approx([0.7, 0.3], abs=1e-15)


def test_deterministic_sites_add_one_run_per_deterministic_link():
    calls: list = []
    # x2, x4, ...: deterministic sites whose children are stochastic: supports found in a second run.
    model = counting_chain(calls, 9, deterministic_every=2)
    info = model_info(model)
    info.parents()
    before = len(calls)
    network = compile_discrete(info, model)
    assert len(calls) - before == 3
    assert network.support["x2"].tolist() == [0.0, 1.0]
    assert network.cpt["x2"].tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_table_limit_raises_naming_importance_and_auto_falls_back():
    model = random_network(0, sizes=(5,), zero_rate=0.0)
    do, evidence, query = {model.variables[0]: 1}, {model.variables[-1]: 0}, {model.variables[2]: 1}
    reference = bd.intervene(model, do, query, evidence=evidence, backend="exact")
    tiny = {"max_table_bytes": 16}
    with pytest.raises(bd.UnsupportedModelError, match="importance"):
        bd.intervene(model, do, query, evidence=evidence, backend="exact", options=tiny)
    fallback = bd.intervene(model, do, query, evidence=evidence, options=tiny, num_samples=20_000, seed=0)
    assert fallback.backend == "importance"
    standard_error = math.sqrt(reference.mean * (1 - reference.mean) / fallback.ess)
    assert abs(fallback.mean - reference.mean) <= 5 * standard_error


def wide_parents(width: int):
    def model():
        causes = [pyro.sample(f"c{i}", dist.Bernoulli(0.5)) for i in range(width)]
        pyro.sample("effect", dist.Bernoulli(0.1 + 0.8 * sum(causes) / width))
        pyro.sample("other", dist.Bernoulli(0.2 + 0.6 * causes[0]))
    return model


def test_coupling_tables_are_bounded_and_auto_falls_back():
    # do on c0 reaches 'effect', whose coupling over 8 parents (one moved) holds 2**7 * 2**2 * 4 entries.
    model = wide_parents(8)
    evidence, do, query = {"effect": 1.0}, {"c0": 0.0}, {"effect": 1.0}
    reference = bd.counterfactual(model, evidence, do, query, backend="exact")
    limit = {"max_table_bytes": 1024}
    with pytest.raises(bd.UnsupportedModelError, match="coupling table of site 'effect'.*importance"):
        bd.counterfactual(model, evidence, do, query, backend="exact", options=limit)
    fallback = bd.counterfactual(model, evidence, do, query, options=limit, num_samples=20_000, seed=1)
    assert fallback.backend == "importance"
    standard_error = math.sqrt(reference.mean * (1 - reference.mean) / fallback.ess)
    assert abs(fallback.mean - reference.mean) <= 5 * standard_error


def test_compiled_table_beyond_the_limit_is_refused_and_retried_under_a_larger_one():
    model = wide_parents(12)
    with pytest.raises(bd.UnsupportedModelError, match="site 'effect'.*importance"):
        bd.intervene(model, {}, {"effect": 1.0}, backend="exact", options={"max_table_bytes": 2**12})
    got = bd.intervene(model, {}, {"effect": 1.0}, backend="exact")
    assert got.mean == pytest.approx(0.5, abs=1e-12)


def test_bad_limit_is_a_clear_error():
    with pytest.raises(bd.InvalidInputError, match="max_table_bytes"):
        bd.intervene(two_parts, {}, {"e": 1.0}, backend="exact", options={"max_table_bytes": -1})


def test_module_default_limit_is_read_at_query_time(monkeypatch):
    model = random_network(1, sizes=(5,))
    monkeypatch.setattr(exact, "MAX_TABLE_BYTES", 8)
    with pytest.raises(bd.UnsupportedModelError, match="table limit of 8 bytes"):
        bd.intervene(model, {}, {model.variables[-1]: 0}, evidence={model.variables[0]: 0}, backend="exact")


def test_run_compiled_tables_equal_a_tabular_models_own():
    model = random_network(4, sizes=(6,))
    wrapped = lambda: model()  # noqa: E731 - no discrete_tables(): compiled by running it
    direct = compile_discrete(model_info(model), model)
    ran = compile_discrete(model_info(wrapped), wrapped)
    for name in model.variables:
        # A run lists parents in execution order, the tables in their own order.
        assert set(ran.parents[name]) == set(direct.parents[name])
        axes = [direct.parents[name].index(p) for p in ran.parents[name]] + [len(ran.parents[name])]
        assert torch.allclose(ran.cpt[name], direct.cpt[name].permute(axes), rtol=0, atol=1e-15)


# munin1 (186 nodes) from the bnlearn networks shipped inside pgmpy.


def _example_model(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgmpy
        from pgmpy.readwrite import BIFReader
    path = os.path.join(os.path.dirname(pgmpy.__file__), "utils", "example_models", f"{name}.bif.gz")
    if not os.path.exists(path):
        pytest.skip(f"pgmpy does not ship {name}.bif.gz")
    import gzip

    with gzip.open(path, "rt") as file, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        network = BIFReader(string=file.read()).get_model()
    # The oracle answers the same normalised tables as from_pgmpy builds.
    for cpd in network.get_cpds():
        cpd.normalize(inplace=True)
    return network


def surgery_oracle(network, do: dict, evidence: dict, query: str) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgmpy.factors.discrete import TabularCPD
        from pgmpy.inference import VariableElimination
    mutilated = network.copy()
    for variable, state in do.items():
        old = mutilated.get_cpds(variable)
        states = list(old.state_names[variable])
        mutilated.remove_cpds(old)
        mutilated.remove_edges_from([(parent, variable) for parent in list(mutilated.predecessors(variable))])
        mutilated.add_cpds(TabularCPD(variable, len(states), [[1.0 if s == state else 0.0] for s in states],
                                      state_names={variable: states}))
    factor = VariableElimination(mutilated).query([query], evidence=evidence, show_progress=False)
    return {state: float(factor.get_value(**{query: state})) for state in factor.state_names[query]}


def forward_sample(model: TabularModel, rng) -> dict:
    values = {}
    for name in model.variables:
        row = model.tables[name][tuple(values[p] for p in model.parents[name])].numpy()
        values[name] = int(rng.choice(len(row), p=row / row.sum()))
    return values


def unpruned_largest_intermediate(model: TabularModel, do: dict, evidence: dict, query: str) -> int:
    """Largest table of a greedy contraction of every table (evidence sliced), as before pruning."""
    clamped = set(do) | set(evidence)
    symbol = {name: opt_einsum.get_symbol(i) for i, name in enumerate(model.variables)}
    scopes, shapes = [], []
    for name in model.variables:
        if name in do:
            continue
        scope = [v for v in (*model.parents[name], name) if v not in clamped]
        scopes.append("".join(symbol[v] for v in scope))
        shapes.append(tuple(len(model.state_names[v]) for v in scope))
    _, info = opt_einsum.contract_path(",".join(scopes) + "->" + symbol[query], *shapes, shapes=True,
                                       optimize="greedy")
    return int(info.largest_intermediate)


def dense_network(nodes: int, seed: int) -> TabularModel:
    """Three-state sites, each with three parents drawn from all earlier sites: a wide network."""
    rng = numpy.random.default_rng(seed)
    variables = [f"v{i:03d}" for i in range(nodes)]
    parents, states, tables = {}, {}, {}
    for i, name in enumerate(variables):
        chosen = tuple(variables[j] for j in sorted(rng.choice(i, size=min(i, 3), replace=False))) if i else ()
        shape = (3,) * len(chosen) + (3,)
        parents[name] = chosen
        states[name] = ["low", "mid", "high"]
        tables[name] = torch.as_tensor(rng.dirichlet(numpy.ones(3), size=3 ** len(chosen)).reshape(shape))
    return TabularModel(variables, parents, states, tables)


def test_queries_on_a_wide_network_prune_its_barren_part_and_match_pgmpy():
    from bayes_defense.causal.pgmpy_interop import to_pgmpy

    model = dense_network(150, seed=5)
    network = to_pgmpy(model)
    limit = 2**24  # 16 MiB
    rng = numpy.random.default_rng(11)
    beyond = 0
    for _ in range(4):
        # Query and evidence among the first sites: their ancestors are few, the rest is barren.
        sample = forward_sample(model, rng)
        chosen = rng.choice(20, size=4, replace=False)
        names = [model.variables[i] for i in chosen]
        do, evidence, query_site = {names[0]: sample[names[0]]}, {v: sample[v] for v in names[2:]}, names[1]
        beyond += unpruned_largest_intermediate(model, do, evidence, query_site) * 8 > limit
        oracle = surgery_oracle(network, do, evidence, query_site)
        for k in range(3):
            got = bd.intervene(model, do, {query_site: k}, evidence=evidence, backend="exact",
                               options={"max_table_bytes": limit})
            assert abs(got.mean - oracle[k]) <= 1e-12, (do, evidence, query_site, k)
    assert beyond == 4


@pytest.mark.slow
def test_munin1_queries_answer_within_a_small_table_limit_and_match_pgmpy():
    network = _example_model("munin1")
    model = from_pgmpy(network)
    limit = 2**27  # 128 MiB
    rng = numpy.random.default_rng(7)
    names = model.variables
    beyond = 0
    for _ in range(6):
        # Evidence and intervention drawn from one joint sample: positive probability.
        sample = forward_sample(model, rng)
        chosen = rng.choice(len(names), size=5, replace=False)
        do_site, query_site = names[chosen[0]], names[chosen[1]]
        evidence = {names[i]: sample[names[i]] for i in chosen[2:]}
        do = {do_site: sample[do_site]}
        beyond += unpruned_largest_intermediate(model, do, evidence, query_site) * 8 > limit
        oracle = surgery_oracle(network, {do_site: model.state_names[do_site][sample[do_site]]},
                                {v: model.state_names[v][k] for v, k in evidence.items()}, query_site)
        for k, state in enumerate(model.state_names[query_site]):
            got = bd.intervene(model, do, {query_site: k}, evidence=evidence, backend="exact",
                               options={"max_table_bytes": limit})
            assert abs(got.mean - oracle[state]) <= 1e-9, (do, evidence, query_site, state)
    # Without pruning, most of these contractions would not fit.
    assert beyond >= 3


@pytest.mark.slow
def test_mildew_counterfactual_beyond_the_limit_is_refused_and_auto_samples_it():
    model = from_pgmpy(_example_model("mildew"))
    first, last, before_last = model.variables[0], model.variables[-1], model.variables[-2]
    evidence, do, query = {last: 0}, {first: 1}, {before_last: 0}
    # Its coupling tables would hold about 10 GB (torch was once asked for 627 GB here).
    with pytest.raises(bd.UnsupportedModelError, match="coupling table.*importance"):
        bd.counterfactual(model, evidence, do, query, backend="exact")
    estimate = bd.counterfactual(model, evidence, do, query, num_samples=20_000, seed=0)
    assert estimate.backend == "importance"
    assert 0.0 <= estimate.lower <= estimate.mean <= estimate.upper <= 1.0


@pytest.mark.slow  # pgmpy's import and parser, and an importance check: about a minute on a loaded machine
def test_exact_networks_paper_script_runs_small(tmp_path):
    import importlib.util
    from pathlib import Path

    _example_model("cancer")  # skips where pgmpy does not ship it
    path = Path(__file__).resolve().parents[2] / "papers" / "exact_networks.py"
    spec = importlib.util.spec_from_file_location("papers_exact_networks", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "table.md"
    rows = script.main(["--networks", "cancer", "--queries", "2", "--counterfactuals", "1", "--repeat", "1",
                        "--out", str(out)])
    assert "| cancer | 5 |" in out.read_text()
    assert all(row["max_abs_error"] <= 1e-12 for row in rows if row["kind"] == "interventional")
    assert all(row["z"] <= 5 for row in rows if row["kind"] == "counterfactual" and "z" in row)

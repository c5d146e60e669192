"""bd.explain and bd.plan on user SCMs: closed forms, brute force, injected root causes, bad input."""

import itertools

import networkx as nx
import numpy as np
import pytest
import torch

import bayes_defense as bd
from bayes_defense.causal.attribution import SCMExplanation


# ---------------------------------------------------------------- continuous: the linear closed form
def _random_linear(seed, num_nodes=7, edge_probability=0.4):
    rng = np.random.default_rng(seed)
    names = [f"v{i}" for i in range(num_nodes)]
    graph = nx.DiGraph()
    graph.add_nodes_from(names)
    for i, j in itertools.combinations(range(num_nodes), 2):
        if rng.random() < edge_probability:
            graph.add_edge(names[i], names[j])
    scm = bd.models.from_graph(graph)
    weights = np.zeros((num_nodes, num_nodes))
    intercept = rng.normal(size=num_nodes)
    scale = rng.uniform(0.3, 1.5, size=num_nodes)
    parameters = {}
    for name in scm.nodes:
        parents = scm.parents(name)
        coefficients = [intercept[names.index(name)]]
        for parent in parents:
            w = rng.uniform(0.5, 2.0) * rng.choice([-1, 1])
            weights[names.index(name), names.index(parent)] = w
            coefficients.append(w)
        parameters[f"{name}.coefficients"] = torch.tensor(coefficients)
        parameters[f"{name}.scale"] = torch.tensor(scale[names.index(name)])
    return scm, parameters, names, weights, intercept, scale


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_continuous_explanation_matches_the_noise_decomposition(seed):
    scm, parameters, names, weights, intercept, scale = _random_linear(seed)
    point = scm.with_parameters(parameters)
    rng = np.random.default_rng(100 + seed)
    eps = rng.normal(size=len(names))
    eps[rng.integers(len(names))] += 6.0
    transfer = np.linalg.inv(np.eye(len(names)) - weights)
    values = transfer @ (intercept + scale * eps)
    evidence = {name: float(values[i]) for i, name in enumerate(names)}
    outcome = names[-1]
    y = names.index(outcome)
    result = bd.explain(point, evidence, outcome)
    assert isinstance(result, SCMExplanation)
    # Closed form: contribution_j = A[y, j] sigma_j eps_j; deviation = y - E[y] = sum of them.
    contributions = transfer[y] * scale * eps
    deviation = values[y] - transfer[y] @ intercept
    assert result.deviation.mean == pytest.approx(deviation, abs=1e-4)
    ancestors = nx.ancestors(scm.graph(), outcome) | {outcome}
    assert {cause for cause, _ in result.ranking} == ancestors
    for cause, share in result.ranking:
        j = names.index(cause)
        assert result.details[cause]["contribution"].mean == pytest.approx(contributions[j], abs=1e-4)
        assert share.mean == pytest.approx(contributions[j] / deviation, abs=1e-4)
        assert share.is_exact
    total = sum(result.details[c]["contribution"].mean for c in ancestors)
    assert total == pytest.approx(deviation, abs=1e-4)


def test_injected_cause_gets_the_blame_not_its_descendants():
    graph = nx.DiGraph([("db", "cache"), ("db", "api"), ("cache", "api"), ("api", "gateway"), ("auth", "gateway")])
    scm = bd.models.from_graph(graph, mechanisms="additive")
    rng = np.random.default_rng(4)
    parameters = {}
    for name in scm.nodes:
        # Each parent's effect: slope 1 plus a random bend, so that an injected fault reaches the
        # gateway (a cause whose effect cancels out on the way is not identifiable from the gateway).
        coefficients = [0.0 if c == "intercept" else (1.0 if ":" not in c else 0.3 * rng.normal())
                        for c in scm.coefficient_names(name)]
        parameters[f"{name}.coefficients"] = torch.tensor(coefficients)
        parameters[f"{name}.scale"] = torch.tensor(0.5)
    point = scm.with_parameters(parameters)
    for cause in ("db", "cache", "auth", "api"):
        incident = scm.simulate(1, parameters, shift={cause: 8.0}, seed=7).iloc[0]
        result = bd.explain(point, incident.to_dict(), "gateway")
        assert result.top == cause, (cause, result.ranking)


def test_fitted_model_explanations_carry_parameter_uncertainty():
    scm = bd.models.from_graph(nx.DiGraph([("x", "y"), ("y", "z")]))
    truth = {"x.coefficients": torch.tensor([0.0]), "x.scale": torch.tensor(1.0),
             "y.coefficients": torch.tensor([1.0, 2.0]), "y.scale": torch.tensor(0.5),
             "z.coefficients": torch.tensor([0.0, -1.0]), "z.scale": torch.tensor(0.5)}
    posterior = bd.fit(scm, scm.simulate(300, truth, seed=0), num_samples=400, progress=False)
    model = posterior.model(draws=20)
    incident = scm.simulate(1, truth, shift={"y": 6.0}, seed=2).iloc[0].to_dict()
    result = bd.explain(model, incident, "z")
    assert result.top == "y"
    share = result.ranking[0][1]
    assert share.width > 0 and share.lower <= share.mean <= share.upper


def test_unobserved_ancestors_are_abducted_by_weighting():
    def model():
        import pyro
        import pyro.distributions as dist

        hidden = pyro.sample("hidden", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(hidden, 1.0))

    # hidden | y ~ N(y / 2, 1/2): contribution of hidden = E[hidden | y], share = 1/2 of y.
    from bayes_defense.causal.attribution import attribute

    result = attribute(model, {"y": 2.0}, "y", num_samples=20_000, seed=0)
    share = dict(result.ranking)["hidden"]
    assert not share.is_exact and share.ess > 1000
    standard_error = share.width / (2 * 1.6449)
    assert abs(share.mean - 0.5) < 5 * standard_error


# ---------------------------------------------------------------- discrete: brute force over the noise
CPTS = {"a": [[0.7, 0.3]], "b": [[0.8, 0.2], [0.3, 0.7]], "c": [[0.9, 0.1], [0.4, 0.6]],
        "d": [[0.95, 0.05], [0.3, 0.7], [0.4, 0.6], [0.05, 0.95]]}
PARENTS = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}


def _discrete():
    scm = bd.models.from_graph(nx.DiGraph([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]),
                               states={n: 2 for n in "abcd"})
    return scm.with_parameters({f"{n}.cpt": torch.tensor(CPTS[n]) for n in "abcd"})


def _cells():
    """Per node, the intervals of u on which every response function x = F^-1(u; parents) is constant."""
    cells = {}
    for node, rows in CPTS.items():
        cuts = sorted({0.0, 1.0} | {float(np.cumsum(row)[0]) for row in rows})
        cells[node] = [(lo, hi) for lo, hi in zip(cuts, cuts[1:], strict=False) if hi > lo]
    return cells


def _respond(u, do=None):
    do = do or {}
    values = {}
    for node in "abcd":
        if node in do:
            values[node] = do[node]
            continue
        config = 0
        for parent in PARENTS[node]:
            config = config * 2 + values[parent]
        values[node] = int(u[node] > CPTS[node][config][0])
    return values


def _brute_force(condition, query_fn):
    """P(query | condition) by summing over every cell of the exogenous noise."""
    cells = _cells()
    num = den = 0.0
    for choice in itertools.product(*(cells[n] for n in "abcd")):
        weight = np.prod([hi - lo for lo, hi in choice])
        u = {n: (lo + hi) / 2 for n, (lo, hi) in zip("abcd", choice, strict=True)}
        if condition(u):
            den += weight
            num += weight * query_fn(u)
    return num / den


def test_discrete_explanation_matches_brute_force():
    model = _discrete()
    evidence = {"b": 1}
    outcome = {"d": 1}
    result = bd.explain(model, evidence, outcome)
    scores = dict(result.ranking)
    assert set(scores) == {"a", "b", "c"}
    for cause in ("a", "b", "c"):
        detail = result.details[cause]
        value, alternative = int(detail["value"]), int(detail["alternative"])

        def factual(u, cause=cause, value=value):
            world = _respond(u)
            return world["b"] == 1 and world["d"] == 1 and world[cause] == value

        posterior = _brute_force(lambda u: _respond(u)["b"] == 1 and _respond(u)["d"] == 1,
                                 lambda u, cause=cause, value=value: float(_respond(u)[cause] == value))
        necessity = _brute_force(factual, lambda u, cause=cause, alt=alternative:
                                 float(_respond(u, {cause: alt})["d"] == 0))
        # The tables are float32 (the tests' default dtype): exact to its precision.
        assert detail["posterior"].mean == pytest.approx(posterior, abs=1e-6)
        assert detail["necessity"].mean == pytest.approx(necessity, abs=1e-6)
        assert scores[cause].mean == pytest.approx(posterior * necessity, abs=1e-6)
    assert result.ranking[0][1].mean == max(s.mean for s in scores.values())


def test_discrete_plan_matches_brute_force():
    model = _discrete()
    actions = {"force_b_off": {"b": 0}, "force_c_off": {"c": 0}, "force_both": {"b": 0, "c": 0}}
    cost = {"force_b_off": 0.05, "force_c_off": 0.02, "force_both": 0.3}
    evidence = {"d": 1, "a": 1}
    result = bd.plan(model, evidence, actions, risk={"d": 1}, cost=cost)
    def observed(u):
        return _respond(u)["d"] == 1 and _respond(u)["a"] == 1

    expected = {(): _brute_force(observed, lambda u: float(_respond(u)["d"] == 1))}
    for name, do in actions.items():
        expected[(name,)] = _brute_force(observed, lambda u, do=do: float(_respond(u, do)["d"] == 1))
    for option in result.ranked:
        assert option.risk == pytest.approx(expected[option.countermeasures], abs=1e-6)  # float32 tables
        assert option.loss == pytest.approx(option.risk + cost.get(option.countermeasures[0], 0.0)
                                            if option.countermeasures else option.risk, abs=1e-9)
    losses = {o.countermeasures: o.loss for o in result.ranked}
    assert result.best.countermeasures == min(losses, key=losses.get)
    for option in result.pareto:
        assert not any(o.risk < option.risk and o.cost < option.cost for o in result.ranked)


# ---------------------------------------------------------------- bad input
def test_bad_explain_input():
    scm, parameters, names, *_ = _random_linear(0, num_nodes=3)
    point = scm.with_parameters(parameters)
    with pytest.raises(bd.InvalidInputError, match="must include the outcome's observed value"):
        bd.explain(point, {"v0": 1.0}, "v2")
    with pytest.raises(bd.UnknownSiteError, match="its sites are"):
        bd.explain(point, {"nope": 1.0, "v2": 0.0}, "v2")
    with pytest.raises(bd.InvalidInputError, match="is discrete"):
        bd.explain(_discrete(), {"d": 1}, "d")
    with pytest.raises(bd.InvalidInputError, match="non-empty"):
        bd.explain(_discrete(), {"d": 1}, {})


def test_bad_plan_input():
    model = _discrete()
    with pytest.raises(bd.InvalidInputError, match="non-empty"):
        bd.plan(model, {}, {}, risk={"d": 1})
    with pytest.raises(bd.UnknownSiteError):
        bd.plan(model, {}, {"x": {"nope": 1}}, risk={"d": 1})
    with pytest.raises(bd.InvalidInputError, match="risk is required"):
        bd.plan(model, {}, {"x": {"b": 0}})
    with pytest.raises(bd.InvalidInputError, match="not actions"):
        bd.plan(model, {}, {"x": {"b": 0}}, risk={"d": 1}, cost={"y": 1.0})


def test_batched_draws_equal_one_run_per_draw(monkeypatch):
    from bayes_defense.causal import attribution
    from bayes_defense.fitting.scm import FittedSCM

    scm, parameters, names, *_ = _random_linear(3, num_nodes=6)
    rng = np.random.default_rng(0)
    draws = [{k: v.numpy() + 0.05 * rng.normal(size=v.shape) for k, v in parameters.items()} for _ in range(4)]
    fitted = FittedSCM(scm, {k: v.numpy() for k, v in parameters.items()}, draws)
    incident = scm.simulate(1, parameters, shift={names[1]: 5.0}, seed=0).iloc[0].to_dict()
    batched = bd.explain(fitted, incident, names[-1])
    monkeypatch.setattr(attribution, "_batched_graph_draws", lambda model: None)
    looped = bd.explain(fitted, incident, names[-1])
    assert [c for c, _ in batched.ranking] == [c for c, _ in looped.ranking]
    for (_, a), (_, b) in zip(batched.ranking, looped.ranking, strict=True):
        assert (a.mean, a.lower, a.upper) == pytest.approx((b.mean, b.lower, b.upper), abs=1e-5)


@pytest.mark.slow
def test_worked_example_and_evaluation_scripts_run(tmp_path):
    import importlib.util
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2] / "papers"

    def load(name):
        spec = importlib.util.spec_from_file_location(name, root / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    why, remedy = load("microservice_example").main(quick=True)
    assert why.top == "db" and remedy.best.countermeasures
    summaries = load("scm_explain").main(["--quick", "--out", str(tmp_path / "quick.md")])
    assert summaries[0]["bd"]["n"] == 5 and (tmp_path / "quick.md").exists()

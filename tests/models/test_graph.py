"""from_graph: structure, mechanisms, priors, the fixed-parameter SCM, and bad graphs."""

import math

import networkx as nx
import numpy as np
import pytest
import torch

import bayes_defense as bd
from bayes_defense.models.graph import GraphSCM, from_graph


def _linear_parameters():
    return {"a.coefficients": torch.tensor([1.0]), "a.scale": torch.tensor(1.0),
            "b.coefficients": torch.tensor([0.5, 2.0]), "b.scale": torch.tensor(0.5),
            "c.coefficients": torch.tensor([-1.0, 1.0, -3.0]), "c.scale": torch.tensor(0.3)}


def _chain():
    return from_graph(nx.DiGraph([("a", "b"), ("b", "c"), ("a", "c")]))


def test_structure_and_parameter_sites():
    scm = from_graph(nx.DiGraph([("z", "y"), ("x", "y"), ("x", "z")]))
    assert scm.nodes == ("x", "z", "y")
    assert scm.parents("y") == ("x", "z")
    assert scm.parameter_sites == ("x.coefficients", "x.scale", "z.coefficients", "z.scale",
                                   "y.coefficients", "y.scale")
    assert scm.coefficient_names("y") == ["intercept", "x", "z"]
    info = bd.causal.model_info(scm)
    assert set(info.names) == set(scm.nodes) | set(scm.parameter_sites)
    # Every parameter site has a proper prior; the node sites have their parents as causes.
    assert set(scm.priors()) == set(scm.parameter_sites)
    assert set(info.parents()["y"]) >= {"x", "z", "y.coefficients", "y.scale"}


def test_adjacency_csv_and_edge_list_read_the_same_graph(tmp_path):
    matrix = tmp_path / "adjacency.csv"
    matrix.write_text(",a,b,c\na,0,1,1\nb,0,0,1\nc,0,0,0\n")
    edges = tmp_path / "edges.csv"
    edges.write_text("source,target\na,b\nb,c\na,c\n")
    for path in (matrix, edges):
        scm = from_graph(path)
        assert scm.nodes == ("a", "b", "c") and scm.parents("c") == ("a", "b")
    bad = tmp_path / "bad.csv"
    bad.write_text(",a,b\na,0,1\nc,0,0\n")
    with pytest.raises(bd.InvalidInputError, match="same node names"):
        from_graph(bad)


def test_point_model_answers_match_the_linear_closed_form():
    point = _chain().with_parameters(_linear_parameters())
    # do(a = 2): b = 0.5 + 4 = 4.5; c = -1 + 2 - 13.5 = -12.5.
    assert bd.intervene(point, {"a": 2.0}, "c").mean == pytest.approx(-12.5, abs=1e-5)
    # Factual a=1, b=3, c=-9: eps_c = (-9 - (-1 + 1 - 9)) = 0; had a been 0: b = 0.5 + (3 - 2.5) = 1.0,
    # c = -1 + 0 - 3 = -4.
    estimate = bd.counterfactual(point, {"a": 1.0, "b": 3.0, "c": -9.0}, {"a": 0.0}, "c")
    assert estimate.mean == pytest.approx(-4.0, abs=1e-5) and estimate.backend == "analytic"


def test_additive_mechanism_is_a_linear_spline_of_each_parent():
    scm = from_graph(nx.DiGraph([("x", "y")]), mechanisms="additive", scales={"x": (1.0, 2.0)})
    names = scm.coefficient_names("y")
    assert names == ["intercept", "x", "x:hinge(-1)", "x:hinge(0)", "x:hinge(1)"]
    coefficients = torch.tensor([0.5, 1.0, 2.0, -1.0, 3.0])
    x = torch.tensor([-4.0, 0.0, 1.0, 2.0, 6.0])
    d = scm.distribution("y", {"y.coefficients": coefficients, "y.scale": torch.tensor(1.0)}, {"x": x})
    z = (x - 1.0) / 2.0
    expected = 0.5 + (x - 1.0) + 2.0 * torch.relu(z + 1) - torch.relu(z) + 3.0 * torch.relu(z - 1)
    assert torch.allclose(d.loc, expected)


def test_discrete_tables_and_continuous_child_of_a_discrete_parent():
    scm = from_graph(nx.DiGraph([("x", "y"), ("x", "w")]), states={"x": 2, "y": 3})
    assert scm.kind("x") == "discrete" and scm.kind("w") == "linear"
    assert scm.coefficient_names("w") == ["intercept", "x=1"]
    point = scm.with_parameters({"x.cpt": torch.tensor([[0.3, 0.7]]),
                                 "y.cpt": torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]),
                                 "w.coefficients": torch.tensor([1.0, 4.0]), "w.scale": torch.tensor(1.0)})
    tables = from_graph(nx.DiGraph([("x", "y")]), states={"x": 2, "y": 3}).with_parameters(
        {name: point.parameters[name] for name in ("x.cpt", "y.cpt")})
    exact = bd.intervene(tables, {}, {"y": 2})
    assert exact.backend == "exact" and exact.mean == pytest.approx(0.3 * 0.2 + 0.7 * 0.8, abs=1e-6)
    assert bd.intervene(tables, {}, {"x": 1}, evidence={"y": 2}).mean == pytest.approx(
        0.7 * 0.8 / (0.3 * 0.2 + 0.7 * 0.8), abs=1e-6)
    assert bd.intervene(point, {"x": 1}, "w", seed=0, backend="importance").mean == pytest.approx(5.0, abs=0.1)


def test_simulate_moments_and_injected_shift():
    scm = _chain()
    table = scm.simulate(20_000, _linear_parameters(), seed=1)
    # b = 0.5 + 2 a + 0.5 e with a ~ N(1, 1): mean 2.5, sd sqrt(4 + 0.25).
    se = math.sqrt(4.25 / 20_000)
    assert abs(table["b"].mean() - 2.5) < 5 * se
    assert table["b"].std() == pytest.approx(math.sqrt(4.25), rel=0.03)
    shifted = scm.simulate(2_000, _linear_parameters(), shift={"b": 10.0}, seed=1)
    # A shift of 10 noise units at b moves b by 10 * 0.5 and c by -3 * 5.
    assert shifted["b"].mean() - table["b"].mean() == pytest.approx(5.0, abs=0.2)
    assert shifted["c"].mean() - table["c"].mean() == pytest.approx(-15.0, abs=0.6)


def test_spec_round_trip():
    scm = from_graph(nx.DiGraph([("x", "y"), ("y", "z")]), mechanisms={"z": "additive"}, states={"x": 2})
    again = GraphSCM.from_spec(scm.spec())
    assert again.spec() == scm.spec() and again.nodes == scm.nodes
    with pytest.raises(bd.InvalidInputError, match="not a from_graph model description"):
        GraphSCM.from_spec({"nodes": "nope"})


def test_prior_model_is_a_valid_scm():
    scm = _chain()
    estimate = bd.intervene(scm, {"a": 1.0}, "b", seed=0, num_samples=4000)
    # Under the prior the slope and intercept have mean 0: E[b | do(a = 1)] = 0, within the interval.
    assert estimate.lower < 0.0 < estimate.upper


@pytest.mark.parametrize("graph, match", [
    (nx.DiGraph([("a", "b"), ("b", "c"), ("c", "a")]), r"cycle \(a -> b -> c -> a\)"),
    (nx.DiGraph([("a", "a")]), r"cycle \(a -> a\)"),
    (nx.Graph([("a", "b")]), "must be directed"),
    (nx.DiGraph([(1, 2)]), "non-empty strings"),
    (nx.DiGraph([("a", "a.scale")]), "collides"),
    ("no/such/file.csv", "no such graph file"),
    (42, "networkx DiGraph or the path"),
])
def test_bad_graphs_are_refused(graph, match):
    error = FileNotFoundError if isinstance(graph, str) else bd.InvalidInputError
    with pytest.raises(error, match=match):
        from_graph(graph)


def test_bad_options_are_refused():
    graph = nx.DiGraph([("x", "y")])
    with pytest.raises(bd.InvalidInputError, match="unknown mechanism 'spline'"):
        from_graph(graph, mechanisms="spline")
    with pytest.raises(bd.InvalidInputError, match="continuous parent"):
        from_graph(graph, states={"y": 2})
    with pytest.raises(bd.InvalidInputError, match="at least 2"):
        from_graph(graph, states={"x": 1})
    with pytest.raises(bd.InvalidInputError, match="which are not nodes"):
        from_graph(graph, mechanisms={"q": "linear"})
    with pytest.raises(bd.InvalidInputError, match="spread positive"):
        from_graph(graph, scales={"x": (0.0, -1.0)})
    with pytest.raises(bd.InvalidInputError, match="every parameter site"):
        from_graph(graph).with_parameters({})


def test_exported_from_models():
    assert bd.models.from_graph is from_graph
    assert np.isfinite(from_graph(nx.DiGraph([("x", "y")])).priors()["y.scale"].mean.item())

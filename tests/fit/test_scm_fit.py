"""bd.fit on user SCMs: recovery against the exact regression posterior, missing cells, storage, errors."""

import math
import warnings

import networkx as nx
import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch

import bayes_defense as bd
from bayes_defense.fitting.scm import SCMPosterior, fit_scm, load_scm_posterior

TRUTH = {"a.coefficients": [1.0], "a.scale": 1.0, "b.coefficients": [0.5, 2.0], "b.scale": 0.5,
         "c.coefficients": [-1.0, 1.0, -3.0], "c.scale": 0.7}


def _graph_model():
    return bd.models.from_graph(nx.DiGraph([("a", "b"), ("b", "c"), ("a", "c")]))


def _table(num_rows, seed):
    parameters = {k: torch.tensor(v) for k, v in TRUTH.items()}
    return _graph_model().simulate(num_rows, parameters, seed=seed)


def _ols(table, child, parents):
    """Exact posterior under a flat prior: mean = least squares, sd = its standard error."""
    design = np.column_stack([np.ones(len(table))] + [table[p].to_numpy() for p in parents])
    target = table[child].to_numpy()
    coefficients, *_ = np.linalg.lstsq(design, target, rcond=None)
    residual = target - design @ coefficients
    sigma2 = residual @ residual / (len(table) - design.shape[1])
    return coefficients, np.sqrt(np.diag(sigma2 * np.linalg.inv(design.T @ design)))


@pytest.fixture(scope="module")
def linear_fit():
    pyro.set_rng_seed(0)
    table = _table(1000, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bd.fitting.FitDiagnosticsWarning)
        posterior = bd.fit(_graph_model(), table, num_steps=2000, num_samples=1000, progress=False, seed=1)
    return table, posterior


def test_svi_matches_the_exact_regression_posterior(linear_fit):
    table, posterior = linear_fit
    for child, parents in (("b", ["a"]), ("c", ["a", "b"])):
        mean, se = _ols(table, child, parents)
        draws = posterior.flat(f"{child}.coefficients")
        # Under a prior 10 spreads wide the posterior is the regression's to well under 1%; the
        # allowance covers the guide's Monte Carlo error (sd / sqrt(1000)) and SVI's optimisation.
        assert np.all(np.abs(draws.mean(0) - mean) < 0.3 * se), (child, draws.mean(0), mean, se)
        assert np.all((draws.std(0) / se > 0.75) & (draws.std(0) / se < 1.33)), (child, draws.std(0), se)


def test_fitted_coefficients_cover_the_truth(linear_fit):
    _, posterior = linear_fit
    for name, truth in TRUTH.items():
        draws = posterior.flat(name).reshape(posterior.num_draws, -1)
        sd = draws.std(0)
        # Five posterior standard deviations: a miss would be a bias, not bad luck.
        assert np.all(np.abs(draws.mean(0) - np.asarray(truth)) < 5 * sd), (name, draws.mean(0), truth)
    slope = posterior.estimate("c.coefficients", 2)
    assert slope.lower <= slope.mean <= slope.upper and slope.level == 0.9


def test_fitted_model_intervals_carry_parameter_uncertainty(linear_fit):
    _, posterior = linear_fit
    model = posterior.model(draws=40, seed=0)
    estimate = bd.intervene(model, {"a": 1.0}, "b")
    # E[b | do(a = 1)] = intercept + slope per draw: the pooled interval is the spread of that sum.
    sums = np.array([float(m.parameters["b.coefficients"].sum()) for m in model.parameter_models])
    low, high = np.quantile(sums, [0.05, 0.95])
    assert estimate.mean == pytest.approx(sums.mean(), abs=1e-5)
    assert estimate.lower == pytest.approx(low, abs=1e-5) and estimate.upper == pytest.approx(high, abs=1e-5)
    assert estimate.width > 0 and estimate.lower < 2.5 < estimate.upper
    counterfactual = bd.counterfactual(model, {"a": 1.0, "b": 3.0, "c": -9.0}, {"a": 0.0}, "c")
    assert counterfactual.width > 0 and counterfactual.lower < -4.0 < counterfactual.upper


def test_save_and_load_round_trip(linear_fit, tmp_path):
    _, posterior = linear_fit
    path = posterior.save(tmp_path / "scm.nc")
    again = bd.load_posterior(path)
    assert isinstance(again, SCMPosterior) and again.method == "svi"
    for name in posterior.parameters:
        np.testing.assert_allclose(again.draws[name], posterior.draws[name])
    assert again.problems == posterior.problems
    # The from_graph model travels with the file.
    assert bd.intervene(again.model(draws=5), {"a": 1.0}, "b").mean == pytest.approx(
        bd.intervene(posterior.model(draws=5), {"a": 1.0}, "b").mean, abs=1e-5)
    assert 0 <= again.summary()["num_draws"] == posterior.num_draws


def test_missing_cells_keep_their_rows():
    table = _table(200, seed=5)
    table.loc[::4, "b"] = np.nan
    posterior = bd.fit(_graph_model(), table, num_steps=50, num_samples=10, progress=False, check=False)
    assert posterior.info["num_rows"] == 200 and posterior.info["missing"] == {"b": 50}
    assert posterior.flat("c.coefficients").shape == (10, 3)


@pytest.mark.slow
def test_missing_cells_are_latent_not_dropped():
    table = _table(600, seed=5)
    full = table.copy()
    rng = np.random.default_rng(0)
    table.loc[rng.random(len(table)) < 0.3, "b"] = np.nan
    table.loc[rng.random(len(table)) < 0.2, "a"] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bd.fitting.FitDiagnosticsWarning)
        posterior = bd.fit(_graph_model(), table, num_steps=1000, num_samples=500, progress=False, seed=2)
    assert posterior.info["num_rows"] == 600
    assert posterior.info["missing"] == {"a": int(table["a"].isna().sum()), "b": int(table["b"].isna().sum())}
    # The rows with a missing b still inform c's other coefficients: its slope on a is as precise as
    # with complete rows only would make it at best, and it recovers the complete-data answer.
    complete_mean, complete_se = _ols(full, "c", ["a", "b"])
    draws = posterior.flat("c.coefficients")
    assert np.all(np.abs(draws.mean(0) - complete_mean) < 5 * np.maximum(draws.std(0), complete_se))


def test_discrete_tables_match_the_conjugate_dirichlet_posterior():
    scm = bd.models.from_graph(nx.DiGraph([("x", "y")]), states={"x": 2, "y": 3})
    truth = {"x.cpt": torch.tensor([[0.3, 0.7]]), "y.cpt": torch.tensor([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])}
    table = scm.simulate(800, truth, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bd.fitting.FitDiagnosticsWarning)
        posterior = bd.fit(scm, table, num_steps=2000, num_samples=1000, progress=False, seed=0)
    counts = np.zeros((2, 3))
    np.add.at(counts, (table["x"].to_numpy(), table["y"].to_numpy()), 1)
    alpha = counts + 1.0
    exact_mean = alpha / alpha.sum(1, keepdims=True)
    exact_sd = np.sqrt(exact_mean * (1 - exact_mean) / (alpha.sum(1, keepdims=True) + 1))
    fitted = posterior.flat("y.cpt")
    assert np.all(np.abs(fitted.mean(0) - exact_mean) < 0.3 * exact_sd + 3 * exact_sd / math.sqrt(1000))
    assert np.all(np.abs(fitted.std(0) / exact_sd - 1) < 0.3)


def test_nuts_on_a_plain_pyro_model_with_its_own_parameter_site():
    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        pyro.sample("x", dist.Normal(mu, 2.0))

    data = pd.DataFrame({"x": np.random.default_rng(1).normal(3.0, 2.0, size=200)})
    posterior = fit_scm(model, data, method="nuts", num_samples=300, num_warmup=200, num_chains=2, seed=0,
                        check=False)
    draws = posterior.flat("mu")
    # Conjugate normal posterior: precision 1/100 + 200/4.
    precision = 1 / 100 + 200 / 4
    exact_mean = (data["x"].sum() / 4) / precision
    assert posterior.info["parameters"] == ["mu"] and posterior.draws["mu"].shape == (2, 300)
    assert abs(draws.mean() - exact_mean) < 5 * (1 / math.sqrt(precision)) / math.sqrt(100)
    assert draws.std() == pytest.approx(1 / math.sqrt(precision), rel=0.2)
    assert "r_hat" in posterior.diagnostics
    fitted = posterior.model(draws=10)
    assert bd.intervene(fitted, {}, "x").lower < exact_mean < bd.intervene(fitted, {}, "x").upper
    with pytest.raises(bd.InvalidInputError, match="attach"):
        load_scm_posterior(posterior.save(_tmp_nc())).model()


def _tmp_nc():
    import pathlib
    import tempfile

    return pathlib.Path(tempfile.mkdtemp()) / "plain.nc"


def test_tables_from_csv_and_parquet(tmp_path):
    table = _table(50, seed=0)
    table.to_csv(tmp_path / "rows.csv", index=False)
    table.to_parquet(tmp_path / "rows.parquet")
    for path in (tmp_path / "rows.csv", tmp_path / "rows.parquet"):
        posterior = bd.fit(_graph_model(), path, num_steps=200, num_samples=4, progress=False, check=False)
        assert posterior.info["num_rows"] == 50


def test_a_column_that_names_no_node():
    table = _table(20, seed=0).rename(columns={"b": "bee"})
    with pytest.raises(bd.InvalidInputError, match=r"data column\(s\) 'bee' name no site of the model; its sites "
                                                   r"are: a\.coefficients, .*Rename or drop"):
        bd.fit(_graph_model(), table, num_steps=5)


def test_a_node_with_no_data_and_no_prior():
    def model():
        hidden = pyro.sample("hidden", dist.ImproperUniform(dist.constraints.real, (), ()))
        scale = pyro.sample("scale", dist.HalfNormal(1.0))
        pyro.sample("y", dist.Normal(hidden, scale))

    with pytest.raises(bd.InvalidInputError, match="'hidden' has no data .* and no prior"):
        fit_scm(model, {"y": [0.1, 0.2]}, num_steps=5)
    with pytest.raises(bd.InvalidInputError, match="'hidden' has data but no prior"):
        fit_scm(model, {"y": [0.1, 0.2], "hidden": [0.0, 0.0]}, num_steps=5)


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "mcmc"}, "method must be 'svi' or 'nuts'"),
    ({"num_steps": 0}, "num_steps must be an integer >= 1"),
    ({"latent": ["nope"]}, "latent names 'nope'"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(bd.InvalidInputError, match=match):
        bd.fit(_graph_model(), _table(10, seed=0), **kwargs)


def test_bad_tables():
    with pytest.raises(bd.InvalidInputError, match="no rows"):
        bd.fit(_graph_model(), pd.DataFrame({"a": []}))
    with pytest.raises(bd.InvalidInputError, match="must hold numbers"):
        bd.fit(_graph_model(), pd.DataFrame({"a": ["x", "y"]}), num_steps=5)
    scm = bd.models.from_graph(nx.DiGraph([("x", "y")]), states={"x": 2})
    with pytest.raises(bd.InvalidInputError, match="state numbers 0, 1"):
        bd.fit(scm, pd.DataFrame({"x": [0.5, 1.0], "y": [0.0, 1.0]}), num_steps=5)
    with pytest.raises(bd.InvalidInputError, match="parameter sites of the model"):
        bd.fit(_graph_model(), pd.DataFrame({"a.scale": [1.0]}), num_steps=5)
    with pytest.raises(FileNotFoundError):
        bd.fit(_graph_model(), "no/such/rows.csv")


def test_pyro_param_needs_svi():
    def model():
        mu = pyro.param("mu", torch.tensor(0.0))
        pyro.sample("x", dist.Normal(mu, 1.0))

    with pytest.raises(bd.InvalidInputError, match="pyro.param: give them priors"):
        fit_scm(model, {"x": [1.0, 2.0]}, method="nuts")
    posterior = fit_scm(model, {"x": [1.0, 2.0, 3.0]}, num_steps=800, num_samples=4, learning_rate=0.05,
                        check=False)
    assert posterior.fixed["mu"] == pytest.approx(2.0, abs=0.05)
    assert bd.intervene(posterior.model(draws=2), {}, "x").mean == pytest.approx(2.0, abs=0.05)


def test_coverage_of_the_credible_intervals():
    """Across refits on fresh data, each 90% interval holds its true parameter about 90% of the time.

    200 replications of the three-node graph (the closed-form fit takes about 15 ms each), every
    coefficient and scale. Replications are independent, so each parameter's hit count is
    Binomial(200, 0.9) when the intervals are calibrated; the pooled rate's standard error comes from
    the spread of the per-replication rates, since one fit's nine intervals are correlated.
    """
    replications = 200
    hits = np.zeros((replications, sum(len(np.atleast_1d(v)) for v in TRUTH.values())), dtype=bool)
    model = _graph_model()
    for replication in range(replications):
        table = _table(300, seed=100 + replication)
        posterior = bd.fit(model, table, num_samples=1000, progress=False, seed=replication)
        column = 0
        for name, truth in TRUTH.items():
            for index, value in enumerate(np.atleast_1d(truth)):
                estimate = posterior.estimate(name, index) if np.ndim(truth) else posterior.estimate(name)
                hits[replication, column] = estimate.lower <= value <= estimate.upper
                column += 1
    per_parameter = hits.mean(0)
    se = math.sqrt(0.9 * 0.1 / replications)
    assert np.all(np.abs(per_parameter - 0.9) < 4 * se), per_parameter
    pooled = hits.mean()
    pooled_se = hits.mean(1).std(ddof=1) / math.sqrt(replications)
    assert abs(pooled - 0.9) < 4 * pooled_se, (pooled, pooled_se)


@pytest.mark.slow
def test_missing_discrete_cells_are_summed_out():
    scm = bd.models.from_graph(nx.DiGraph([("x", "y")]), states={"x": 2, "y": 2})
    truth = {"x.cpt": torch.tensor([[0.3, 0.7]]), "y.cpt": torch.tensor([[0.8, 0.2], [0.1, 0.9]])}
    table = scm.simulate(600, truth, seed=0).astype(float)
    table.loc[::3, "x"] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bd.fitting.FitDiagnosticsWarning)
        posterior = bd.fit(scm, table, num_steps=1000, num_samples=400, progress=False)
    for name in ("x.cpt", "y.cpt"):
        draws = posterior.flat(name)
        assert np.all(np.abs(draws.mean(0) - truth[name].numpy()) < 5 * draws.std(0) + 1e-3), name


@pytest.mark.parametrize("mechanism", ["linear", pytest.param("additive", marks=pytest.mark.slow)])
def test_closed_form_node_laplace_equals_the_joint_lbfgs_laplace(mechanism):
    """The per-node closed form (every cell observed) is the Gaussian that L-BFGS + Hessian finds on the joint."""
    from bayes_defense.causal.structure import float64, model_info
    from bayes_defense.fitting import scm as fitting

    graph = _graph_model().graph()
    table = _table(150, seed=3)
    model = bd.models.from_graph(graph, mechanisms=mechanism, scales=table)
    info = model_info(model)
    with float64():
        columns = fitting._Columns(table, info, list(model.nodes))
        joint = fitting._plated(model, list(model.parameter_sites), list(model.nodes), columns,
                                info.max_plate_nesting, set())
        pyro.clear_param_store()
        laplace, _ = fitting._laplace(joint, num_steps=2000)
        loc = laplace.loc.detach().numpy()
        covariance = laplace.get_posterior().covariance_matrix.detach().numpy()
        priors = model.priors()
        offset = 0
        for node in model.nodes:
            design = model.features(node, {k: v[0] for k, v in columns.values.items()}).expand(150, -1).numpy()
            prior = priors[f"{node}.coefficients"].base_dist
            mode, node_covariance, _ = fitting._node_laplace(design, columns.values[node][0].numpy(),
                                                             prior.loc.numpy(), prior.scale.numpy(),
                                                             float(priors[f"{node}.scale"].scale))
            size = mode.size
            block = covariance[offset:offset + size, offset:offset + size]
            # L-BFGS stops at tolerance_change 1e-12 on a loss of order 1e3: its mode is good to ~1e-6.
            np.testing.assert_allclose(mode, loc[offset:offset + size], atol=1e-5 * np.sqrt(np.diag(block)).max())
            np.testing.assert_allclose(node_covariance, block, rtol=1e-4, atol=1e-8)
            # The joint Hessian is block diagonal: nodes share no parameter.
            assert np.abs(covariance[offset:offset + size, offset + size:]).max(initial=0.0) < 1e-6 * block.max()
            offset += size
    assert offset == loc.size

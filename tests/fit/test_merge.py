"""bd.merge_posteriors: merged site posteriors against the all-data posterior on conjugate cases."""

from __future__ import annotations

import numpy as np
import pytest

import bayes_defense as bd
from bayes_defense.errors import InvalidInputError
from bayes_defense.fitting.merge import fit_sites, merge_posteriors

SITE_DRAWS = 20_000
MERGED_DRAWS = 20_000


def _tolerance(sd: float, sites: int) -> float:
    # Five standard errors: each site's moments come from SITE_DRAWS draws (their errors enter the merged
    # mean through precision weights that sum to one, so at most like one site's error times sqrt(sites)),
    # and the merged mean is estimated from MERGED_DRAWS draws.
    return 5 * sd * np.sqrt(sites / SITE_DRAWS + 1 / MERGED_DRAWS)


def _check_mean_and_sd(merged_draws: np.ndarray, mean: float, sd: float, sites: int) -> None:
    tolerance = _tolerance(sd, sites)
    assert abs(merged_draws.mean() - mean) < tolerance
    # The standard deviation's relative standard error is about 1/sqrt(2n) per estimate.
    assert abs(merged_draws.std() - sd) < 5 * sd * np.sqrt(sites / (2 * SITE_DRAWS) + 1 / (2 * MERGED_DRAWS))


def test_beta_bernoulli_with_an_informative_prior_matches_the_exact_all_data_posterior():
    rng = np.random.default_rng(1)
    a0, b0 = 2.0, 3.0
    data = [rng.random(n) < 0.3 for n in (25, 40, 10)]
    sites = [{"p": rng.beta(a0 + x.sum(), b0 + (~x).sum(), size=(2, SITE_DRAWS // 2))} for x in data]
    prior = {"p": rng.beta(a0, b0, size=(1, SITE_DRAWS))}
    merged = merge_posteriors(sites, prior=prior, num_samples=MERGED_DRAWS, seed=3)
    successes = sum(x.sum() for x in data)
    failures = sum((~x).sum() for x in data)
    a, b = a0 + successes, b0 + failures
    assert merged.families == {"p": "beta"}
    _check_mean_and_sd(merged.flat("p"), a / (a + b), np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1))), 3)
    # Forgetting the prior's correction counts it three times: measurably off (the test can fail).
    uncorrected = merge_posteriors(sites, num_samples=MERGED_DRAWS, seed=3)
    assert abs(uncorrected.parameters["p"]["alpha"] - (a0 * 3 + successes - 2)) < 0.05 * a
    estimate = merged.estimate("p")
    assert isinstance(estimate, bd.Probability) and 0 <= estimate.lower <= estimate.mean <= estimate.upper <= 1


def test_gamma_poisson_and_a_dirichlet_vector_match_their_exact_posteriors():
    rng = np.random.default_rng(2)
    shape0, rate0 = 2.0, 1.0
    counts = [rng.poisson(4.0, size=n) for n in (12, 30)]
    alpha0 = np.array([1.0, 2.0, 1.5])
    categories = [rng.choice(3, size=n, p=[0.2, 0.5, 0.3]) for n in (20, 35)]
    sites = []
    for x, c in zip(counts, categories, strict=True):
        sites.append({"rate": rng.gamma(shape0 + x.sum(), 1 / (rate0 + len(x)), size=(1, SITE_DRAWS)),
                      "mix": rng.dirichlet(alpha0 + np.bincount(c, minlength=3), size=(1, SITE_DRAWS))})
    prior = {"rate": rng.gamma(shape0, 1 / rate0, size=(1, SITE_DRAWS)),
             "mix": rng.dirichlet(alpha0, size=(1, SITE_DRAWS))}
    merged = merge_posteriors(sites, prior=prior, num_samples=MERGED_DRAWS, seed=4)
    assert merged.families == {"rate": "gamma", "mix": "dirichlet"}
    shape, rate = shape0 + sum(x.sum() for x in counts), rate0 + sum(len(x) for x in counts)
    _check_mean_and_sd(merged.flat("rate"), shape / rate, np.sqrt(shape) / rate, 2)
    alpha = alpha0 + sum(np.bincount(c, minlength=3) for c in categories)
    total = alpha.sum()
    draws = merged.flat("mix")
    assert np.allclose(draws.sum(-1), 1.0)
    for k in range(3):
        mean = alpha[k] / total
        _check_mean_and_sd(draws[:, k], mean, np.sqrt(mean * (1 - mean) / (total + 1)), 2)


def test_gaussian_merge_keeps_correlations_of_a_conjugate_regression():
    # y = a + b t + noise (known sd 1), prior N(0, 10^2 I) on (a, b): the posterior is Gaussian and correlated.
    rng = np.random.default_rng(5)
    prior_precision = np.eye(2) / 100.0
    designs, ys = [], []
    for n in (15, 25, 20):
        t = rng.uniform(0, 3, size=n)
        designs.append(np.column_stack([np.ones(n), t]))
        ys.append(1.0 + 2.0 * t + rng.normal(size=n))

    def posterior(design, y):
        precision = prior_precision + design.T @ design
        covariance = np.linalg.inv(precision)
        return covariance @ design.T @ y, covariance

    sites = []
    for design, y in zip(designs, ys, strict=True):
        mean, covariance = posterior(design, y)
        draws = rng.multivariate_normal(mean, covariance, size=SITE_DRAWS)
        sites.append({"a": draws[None, :, 0], "b": draws[None, :, 1]})
    prior_draws = rng.multivariate_normal(np.zeros(2), np.linalg.inv(prior_precision), size=SITE_DRAWS)
    prior = {"a": prior_draws[None, :, 0], "b": prior_draws[None, :, 1]}
    exact_mean, exact_covariance = posterior(np.vstack(designs), np.concatenate(ys))
    merged = merge_posteriors(sites, prior=prior, method="gaussian", num_samples=MERGED_DRAWS, seed=6)
    joint = np.column_stack([merged.flat("a"), merged.flat("b")])
    sds = np.sqrt(np.diag(exact_covariance))
    for k in range(2):
        _check_mean_and_sd(joint[:, k], exact_mean[k], sds[k], 3)
    exact_correlation = exact_covariance[0, 1] / (sds[0] * sds[1])
    # Sample correlations have standard error (1 - rho^2) / sqrt(n).
    assert abs(np.corrcoef(joint.T)[0, 1] - exact_correlation) < 5 * (1 - exact_correlation ** 2) * np.sqrt(
        3 / SITE_DRAWS + 1 / MERGED_DRAWS)
    # The mean-field merge gets each margin's centre but drops the (strong) correlation.
    assert exact_correlation < -0.5
    mean_field = merge_posteriors(sites, prior=prior, num_samples=MERGED_DRAWS, seed=6)
    assert abs(np.corrcoef(mean_field.flat("a"), mean_field.flat("b"))[0, 1]) < 0.05


def test_bd_fit_at_three_sites_merges_to_the_all_data_fit_within_their_intervals():
    # A conjugate SCM fitted by bd.fit: Beta(2, 3) prior, Bernoulli rows. Each site fits only its own rows.
    import pandas as pd
    import pyro
    import pyro.distributions as dist

    def model():
        p = pyro.sample("p", dist.Beta(2.0, 3.0))
        pyro.sample("x", dist.Bernoulli(p))

    rng = np.random.default_rng(7)
    rows = (rng.random(90) < 0.3).astype(float)
    parts = [pd.DataFrame({"x": rows[i:i + 30]}) for i in (0, 30, 60)]
    options = {"method": "svi", "num_samples": 4000, "progress": False, "seed": 0}
    site_posteriors = fit_sites(model, parts, **options)
    prior = {"p": rng.beta(2.0, 3.0, size=(1, 20_000))}
    merged = merge_posteriors(site_posteriors, prior=prior, seed=1)
    everything = bd.fit(model, pd.DataFrame({"x": rows}), **options)
    together, combined = everything.estimate("p"), merged.estimate("p")
    assert together.lower < combined.mean < together.upper
    assert combined.lower < together.mean < combined.upper
    exact = (2.0 + rows.sum()) / (5.0 + len(rows))
    assert combined.lower < exact < combined.upper


@pytest.mark.slow  # two worker processes each import torch and Pyro: about a minute on a busy two-core machine
def test_fit_sites_runs_each_site_as_a_dask_task():
    distributed = pytest.importorskip("distributed")
    from bayes_defense.fitting.defender import simulate_windows

    data = [simulate_windows(n_windows=150, seed=s) for s in (1, 2)]
    options = {"num_steps": 20, "num_samples": 30, "progress": False, "check": False, "ppc_draws": 5}
    # Worker processes with one thread each: Pyro's handler stack and parameter store are per process.
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        on_dask = fit_sites("defender", data, client=client, **options)
    in_process = fit_sites("defender", data, **options)
    for a, b in zip(on_dask, in_process, strict=True):
        assert set(a.draws) == set(b.draws)
        for name in a.draws:
            np.testing.assert_allclose(a.draws[name], b.draws[name])
    merged = merge_posteriors(on_dask)
    assert merged.sites == 2 and set(merged.draws) == set(on_dask[0].draws)


def test_refusals_say_what_was_wrong():
    rng = np.random.default_rng(0)
    site = {"p": rng.beta(3, 3, size=(1, 500))}
    with pytest.raises(bd.InvalidInputError, match="empty"):
        merge_posteriors([])
    with pytest.raises(bd.InvalidInputError, match="parameters"):
        merge_posteriors([site, {"q": site["p"]}])
    with pytest.raises(bd.InvalidInputError, match="shape"):
        merge_posteriors([site, {"p": rng.beta(3, 3, size=(1, 500, 2))}])
    with pytest.raises(bd.InvalidInputError, match="method"):
        merge_posteriors([site, site], method="average")
    with pytest.raises(bd.InvalidInputError, match="finite"):
        merge_posteriors([site, {"p": np.full((1, 500), np.nan)}])
    # A prior narrower than the sites' posteriors cannot be divided out twice.
    narrow = {"p": rng.beta(300, 300, size=(1, 500))}
    with pytest.raises(bd.InvalidInputError, match="not a proper density"):
        merge_posteriors([site, site, site], prior=narrow)
    with pytest.raises(bd.InvalidInputError, match="positive definite"):
        merge_posteriors([site, site, site], prior=narrow, method="gaussian")


def test_signal_model_posteriors_merge_exactly_into_the_fit_of_all_logs():
    from bayes_defense.fitting.signal_model import fit_signal_model
    from bayes_defense.sim import Simulation, random_scenario

    logs = []
    for seed in (5, 6):
        simulation = Simulation(random_scenario(seed, nodes=4, duration=200, attacks=["replay"], faults=["crash"]))
        logs.append((list(simulation.events()), simulation.labels, simulation.faults))
    sites = [fit_signal_model([log], num_samples=60, seed=3) for log in logs]
    merged = merge_posteriors(sites)
    together = fit_signal_model(logs, num_samples=60, seed=3)
    assert merged.info["windows"] == together.info["windows"] == sum(s.info["windows"] for s in sites)
    assert set(merged.draws) == set(together.draws)
    for name, values in together.draws.items():
        np.testing.assert_array_equal(merged.draws[name], values, err_msg=name)
    with pytest.raises(InvalidInputError, match="only signal-model posteriors"):
        merge_posteriors([{"p": np.full((1, 10), 0.5)}], method="exact")

"""Posterior objects: ArviZ groups, NetCDF round trip, updating, diagnostics, use by the defender and the models."""

import numpy as np
import pytest

import bayes_defense as bd
from bayes_defense.fitting import fit, load_posterior
from bayes_defense.fitting.defender import PARAMETER_NAMES, Posterior, simulate_windows
from bayes_defense.fitting.diagnostics import FitDiagnosticsWarning
from bayes_defense.stream.scored import ScoredDefender, default_parameters

TRUTH = {"score_precursor": 3.5, "score_execution": 6.0, "spread": 1.3, "benign_to_precursor": 0.004,
         "precursor_to_execution": 0.02, "precursor_to_benign": 0.004, "execution_to_benign": 0.03}


WINDOWS = 600


@pytest.fixture(scope="module")
def posterior():
    data = simulate_windows(TRUTH, n_windows=WINDOWS, seed=5)
    # Small on purpose (a test of the object, not of the sampler): NUTS's cost grows with the windows.
    return fit("scored", data, method="nuts", num_chains=2, num_warmup=50, num_samples=60, seed=1,
               progress=False, check=False, ppc_draws=20)


def test_arviz_groups_and_summary(posterior):
    data = posterior.to_inference_data()
    for group in ("posterior", "sample_stats", "observed_data", "posterior_predictive"):
        assert group in data.groups()
    assert data.posterior["score_precursor"].shape == (2, 60, 8)
    assert data.posterior.attrs["format"] == "bayes_defense.posterior"
    table = posterior.diagnostics
    assert {"r_hat", "ess_bulk", "ess_tail"} <= set(table.columns) and len(table) == 8 * len(PARAMETER_NAMES)
    summary = posterior.summary()
    assert summary["method"] == "nuts" and summary["draws"] == 2 * 60 and summary["r_hat_max"] > 0.99


def test_netcdf_round_trip(posterior, tmp_path):
    path = posterior.save(tmp_path / "posterior.nc")
    loaded = load_posterior(path)
    for name in PARAMETER_NAMES:
        assert np.array_equal(loaded.draws[name], posterior.draws[name])
    assert loaded.method == "nuts" and loaded.info["windows"] == WINDOWS
    assert np.allclose(loaded.replicated, posterior.replicated, equal_nan=True)
    assert loaded.defender_parameters(10, seed=3)["spread"].tolist() == posterior.defender_parameters(10, seed=3)["spread"].tolist()


def test_defender_parameters_have_the_default_keys_and_shapes(posterior):
    params = posterior.defender_parameters(draws=12, seed=0)
    reference = default_parameters(12, seed=0)
    assert sorted(params) == sorted(reference)
    assert all(params[k].shape == reference[k].shape for k in reference)
    defender = ScoredDefender(parameters=posterior)
    assert defender.parameters["spread"].shape == (8, 24)


def test_credible_intervals_come_as_bounded_estimates(posterior):
    estimate = posterior.estimate("precursor_to_execution", "replay")
    assert 0.0 <= estimate.lower <= estimate.mean <= estimate.upper <= 1.0
    assert estimate.lower < TRUTH["precursor_to_execution"] < estimate.upper


def test_model_queries_carry_parameter_uncertainty(posterior):
    parameters = posterior.model_parameters(draws=160, seed=0)
    model = bd.models.cluster(4, parameters={k: v[:16] for k, v in parameters.items()})
    fitted = bd.models.success_probability(model)["replay"]
    default = bd.models.success_probability(bd.models.cluster(4))["replay"]
    assert fitted.lower < fitted.upper and default.lower == default.upper
    # Exact oracle: by the Dirichlet aggregation property, p_execute = e / (b + e) given the labelled
    # windows is Beta(prior_e + n(P->E), prior_b + n(P->B)); compare means within 5 standard errors.
    import importlib

    fitting = importlib.import_module("bayes_defense.fitting.defender")
    data = fitting._Data(simulate_windows(TRUTH, n_windows=WINDOWS, seed=5))
    counts = data.stats["counts"].numpy()
    prior = fitting.FitPrior.default()
    a = prior.precursor_exit[:, 2] + counts[:, 1, 2]
    b = prior.precursor_exit[:, 1] + counts[:, 1, 0]
    values = np.stack([parameters[f"{attack}.p_execute"] for attack in posterior.attacks], -1)
    sd = np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    assert np.all(np.abs(values.mean(0) - a / (a + b)) < 5 * sd / np.sqrt(len(values)) + 1e-3)


@pytest.mark.slow
def test_updating_with_new_incidents_matches_fitting_them_all_at_once():
    first, second = simulate_windows(TRUTH, n_windows=1500, seed=6), simulate_windows(TRUTH, n_windows=1500, seed=7)
    kwargs = {"method": "nuts", "num_chains": 1, "num_warmup": 150, "num_samples": 300, "progress": False,
              "check": False, "ppc_draws": 5}
    before = fit("scored", first, seed=2, **kwargs)
    updated = fit("scored", second, prior=before, seed=3, **kwargs)
    joint = fit("scored", [first, second], seed=4, **kwargs)
    for name in ("score_precursor", "spread", "benign_to_precursor", "execution_to_benign"):
        a, b = updated.flat(name), joint.flat(name)
        # Moment matching keeps means and variances: agree within 4 posterior standard errors
        # of the difference of two means (each from about 300 draws) plus 15% of a posterior sd.
        se = np.sqrt(a.var(0) / 100 + b.var(0) / 100)
        assert np.all(np.abs(a.mean(0) - b.mean(0)) < 4 * se + 0.15 * b.std(0)), name
        assert np.all(np.abs(a.std(0) / b.std(0) - 1) < 0.35), name


def test_failing_diagnostics_warn_and_flag():
    data = simulate_windows(TRUTH, n_windows=300, seed=8)
    with pytest.warns(FitDiagnosticsWarning, match="ess_bulk"):
        post = fit("scored", data, method="nuts", num_chains=1, num_warmup=20, num_samples=30, progress=False,
                   ppc_draws=5)
    assert not post.diagnostics_ok and post.problems


def test_ppc_figure_is_written(posterior, tmp_path):
    path = tmp_path / "ppc.png"
    posterior.plot_ppc(path)
    assert path.stat().st_size > 10_000 and path.read_bytes()[:4] == b"\x89PNG"
    assert posterior.replicated.shape == (20, 8, 4, 3)


def test_public_names():
    # bd.fit is the function whichever fitting modules were imported before.
    import bayes_defense.fitting.defender  # noqa: F401

    assert bd.Posterior is Posterior and bd.load_posterior is load_posterior
    post = bd.fit("scored", simulate_windows(TRUTH, n_windows=100, seed=9), num_steps=5, num_samples=8,
                  progress=False, check=False, ppc_draws=2)
    assert isinstance(post, Posterior) and post.method == "svi"


def test_a_format_1_0_file_reads_with_no_quiet_windows(tmp_path):
    h5py = pytest.importorskip("h5py")
    post = fit("scored", simulate_windows(TRUTH, n_windows=100, seed=0), num_steps=20, num_samples=20,
               progress=False, check=False, ppc_draws=5)
    path = post.save(tmp_path / "old.nc")
    # Make it a file of the layout before quiet windows existed.
    with h5py.File(path, "r+") as handle:
        group = handle["posterior"]
        del group["quiet_precursor"], group["quiet_execution"]
        group.attrs["format_version"] = "1.0"
    old = load_posterior(path)
    assert old.draws["quiet_precursor"].max() == 0.0 == old.draws["quiet_execution"].max()
    assert old.defender_parameters(4)["quiet_execution"].max() <= 1e-12
    # Updating from it starts the quiet probabilities from the default prior.
    again = fit("scored", simulate_windows(TRUTH, n_windows=100, seed=1), prior=old, num_steps=20,
                num_samples=20, progress=False, check=False, ppc_draws=5)
    assert again.info["prior"]["quiet_precursor_a"][0] == 1.0 and again.info["prior"]["quiet_execution_b"][0] == 9.0

"""The signal-model fit: one likelihood with the filter, posterior files, the predictive check."""

from __future__ import annotations

import numpy as np
import pytest

import bayes_defense as bd
from bayes_defense.errors import InvalidInputError
from bayes_defense.fitting import signal_model
from bayes_defense.sim import random_scenario
from bayes_defense.sim.engine import Simulation
from bayes_defense.stream import evidence
from bayes_defense.stream.model_filter import ModelDefender


@pytest.fixture(scope="module")
def run():
    simulation = Simulation(random_scenario(11, nodes=4, duration=300.0, attacks=["replay"], faults=["restart"],
                                            intensity=0.8))
    return list(simulation.events()), simulation.labels


@pytest.fixture(scope="module")
def posterior(run):
    events, labels = run
    return signal_model.fit_signal_model(events, labels=labels, num_samples=40, seed=3)


def test_filter_and_fit_share_one_likelihood(run):
    """Oracle: the filter's per-window log likelihood equals the fit's on the same windows, to rounding."""
    events, _ = run
    values = evidence.prior_draws(6, seed=5)
    defender = ModelDefender(values, planner=None)
    defender.record = []
    per_window = []
    close = defender._close_window

    def spy():
        close()
        per_window.append(defender.last_log_likelihood.copy())

    defender._close_window = spy
    defender.observe_batch(events)
    defender.flush()
    recorded = signal_model.RecordedWindows([w for _, w in defender.record],
                                            np.array([end for end, _ in defender.record]))
    fitted = signal_model.window_log_likelihoods(values, recorded)
    assert fitted.shape == (len(per_window),) + per_window[0].shape
    np.testing.assert_allclose(np.stack(per_window), fitted, rtol=1e-12, atol=1e-9)
    # The same windows come out of the fit's own recorder.
    again = signal_model.record_windows(events)
    assert len(again.windows) == len(recorded.windows)
    np.testing.assert_array_equal(np.concatenate([w.values for w in again.windows]),
                                  np.concatenate([w.values for w in recorded.windows]))


def test_fit_learns_replay_signals_and_reaches_the_defender(run, posterior):
    assert posterior.num_draws == 40
    prior = evidence.parameter_names()["window.duplicates.replay"]
    assert float(posterior.draws["window.duplicates.replay"].mean()) > prior
    defender = ModelDefender(posterior, ensemble=8, planner=None)
    assert defender.parameters["window.duplicates.replay"].shape == (8,)
    cluster = posterior.cluster_parameters()
    assert "telemetry.duplicates.replay" in cluster
    assert np.all((cluster["telemetry.duplicates.replay"] >= 0) & (cluster["telemetry.duplicates.replay"] <= 1))
    model = bd.models.cluster(4, parameters={k: v for k, v in cluster.items()})
    assert model is not None


def test_posterior_file_round_trip(posterior, tmp_path):
    path = posterior.save(tmp_path / "signal.nc")
    back = bd.load_posterior(path)
    assert isinstance(back, signal_model.SignalPosterior)
    assert back.attacks == posterior.attacks
    np.testing.assert_allclose(back.draws["window.duplicates.replay"], posterior.draws["window.duplicates.replay"])
    assert back.ppc == posterior.ppc


def test_predictive_check_names_the_failing_statistic(run, posterior):
    # Data the prior cannot make: nine in ten benign windows show duplicates.
    bad = signal_model.SignalPosterior(evidence.prior_draws(40, seed=1), posterior.attacks)
    stats = signal_model.SignalStatistics.zeros(posterior.attacks)
    stats.benign_obs[:] = stats.benign_unknown[:] = 1000.0
    stats.benign_on[evidence.SIGNALS.index("duplicates")] = 900.0
    checks = signal_model.predictive_check(bad, stats)
    failed = [c["statistic"] for c in checks if not c["ok"]]
    assert "benign on-fraction of duplicates" in failed
    # The fitted posterior passes on its own data.
    assert posterior.problems == [], posterior.problems


def test_newer_format_version_is_refused_with_a_reason(posterior, tmp_path):
    from bayes_defense.fitting.storage import read_posterior_groups

    path = posterior.save(tmp_path / "signal.nc")
    groups = read_posterior_groups(path)
    groups["posterior"].attrs["format_version"] = "2.0"
    with pytest.raises(InvalidInputError, match="format version '2.0'.*refit"):
        signal_model.posterior_from_groups(path, groups)

"""The signal-model fit: one likelihood with the filter, posterior files, the predictive check."""

from __future__ import annotations

import numpy as np
import pytest

import bayes_defense as bd
from bayes_defense.errors import InvalidInputError
from bayes_defense.fitting import signal_model, signal_posterior
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


@pytest.mark.parametrize("version", ["1.0", "2.0", "4.0"])
def test_another_format_version_is_refused_with_a_reason(posterior, tmp_path, version):
    # 1.0: fitted before jitter's pre-prepare delay was a cluster effect; 2.0: before the slow fault was
    # split into a slow backup and a slow primary; 4.0: a newer release's.
    from bayes_defense.fitting.storage import read_posterior_groups

    path = posterior.save(tmp_path / "signal.nc")
    groups = read_posterior_groups(path)
    groups["posterior"].attrs["format_version"] = version
    with pytest.raises(InvalidInputError, match=f"format version '{version}'.*refit"):
        signal_model.posterior_from_groups(path, groups)


@pytest.fixture(scope="module")
def faulted():
    """A run with a crash and a restart scheduled, with its fault labels (faults.json)."""
    simulation = Simulation(random_scenario(11, nodes=4, duration=300.0, attacks=["replay"],
                                            faults=["restart", "crash"], intensity=0.8))
    return list(simulation.events()), simulation.labels, simulation.faults


def test_fault_parameters_are_fitted_from_fault_labels(faulted):
    events, labels, faults = faulted
    post = signal_model.fit_signal_model(events, labels=labels, faults=faults, num_samples=400, seed=2)
    assert post.summary()["faults"] == "fitted from fault labels: crash, restart"
    stats = post.statistics
    # The counts are the windows whose middle lies in the records' spans (restart: downtime as crash, then back).
    ends = signal_model.record_windows(events).ends
    middle = ends - 0.5
    crash = next(f for f in faults if f["fault"] == "crash")
    restart = next(f for f in faults if f["fault"] == "restart")
    expected_crash = ((middle >= crash["start"]) & (middle < crash["end"])).sum() + (
        (middle >= restart["start"]) & (middle < restart["end"])).sum()
    g = list(signal_model.FAULTS).index("crash")
    assert stats.fault_windows[g] == expected_crash
    assert stats.fault_known_windows == len(ends)
    # The prior's posterior is Beta(on + 2 m, n - on + 2 (1 - m)): its mean within 5 standard errors of the draws'.
    m = evidence.parameter_names()["fault.crash.prior"]
    a, b = expected_crash + 2.0 * m, len(ends) - expected_crash + 2.0 * (1.0 - m)
    draws = post.draws["fault.crash.prior"]
    assert abs(draws.mean() - a / (a + b)) < 5.0 * draws.std() / np.sqrt(draws.size)
    # A crashed replica is silent: the fitted effect is far above the prior's lower range.
    assert float(post.draws["fault.crash.silent"].mean()) > 0.9
    assert any(p["statistic"].startswith("share of windows under crash") for p in post.ppc)
    assert post.problems == [], post.problems


def test_without_fault_labels_the_faults_keep_their_prior(run, posterior):
    prior = evidence.prior_draws(40, seed=3)
    for name in prior:
        if name.startswith("fault."):
            np.testing.assert_array_equal(posterior.draws[name], prior[name])
    assert posterior.summary()["faults"] == "prior (no fault labels)"


@pytest.mark.parametrize("bad, reason", [
    ({"fault": "crash"}, "must be the list of fault records"),
    ([{"fault": "meteor", "start": 1.0, "end": 2.0}], "not a benign fault"),
    ([{"fault": "crash", "start": 5.0, "end": 2.0}], "before start"),
    ([{"fault": "crash", "start": "soon", "end": 2.0}], "finite number"),
    ([{"fault": "partition", "start": 1.0, "end": 2.0, "nodes": "r1"}], "'nodes' must be a list"),
    (["crash"], "must be an object"),
])
def test_malformed_fault_labels_are_refused_with_a_reason(run, bad, reason):
    events, labels = run
    with pytest.raises(InvalidInputError, match=reason):
        signal_model.fit_signal_model(events, labels=labels, faults=bad, num_samples=10)


def test_fault_labels_from_a_file(faulted, tmp_path):
    import json

    _, _, faults = faulted
    path = tmp_path / "faults.json"
    path.write_text(json.dumps(faults))
    assert signal_model.check_fault_labels(path) == signal_model.check_fault_labels(faults)
    path.write_text("{not json")
    with pytest.raises(InvalidInputError, match="faults.json: cannot read fault labels"):
        signal_model.check_fault_labels(path)


@pytest.fixture(scope="module")
def unlabelled():
    """A replay run with a jitter look-alike (seed 31, not used to shape the latent fit)."""
    simulation = Simulation(random_scenario(31, nodes=4, duration=240.0, attacks=["replay"], faults=["jitter"],
                                            intensity=0.8))
    return list(simulation.events()), simulation.labels


def test_latent_phases_find_the_attack_and_learn_its_signals(unlabelled):
    """Phases latent (no labels): EM converges, credits replay with about its labelled windows, and learns its
    signals from the prior's 0.01-0.02 per window to near the labelled fit's values.

    How far it gets, plainly (measured on this run): 192 expected attack windows against 177 labelled; replay's
    duplicates and stale effects 0.91 against the labelled fit's 0.99 [0.97, 1.00] (windows at the attack's
    edges are shared with "benign"); and precursor and execution are not told apart (15 expected execution
    windows against 61), since replay's outcome signals do not show in these windows. So the test asserts the
    attribution and the size of the effects, not the intervals; docs/learning.md has the sweep over all attacks.
    """
    events, labels = unlabelled
    labelled = signal_model.fit_signal_model(events, labels=labels, num_samples=400, seed=4, check=False)
    latent = signal_model.fit_signal_model(events, num_samples=400, seed=4)
    em = latent.info["em"]
    assert em["converged"] and em["iterations"] < 50, em
    assert latent.method == "conjugate-em"
    windows = {attack: sum(v) for attack, v in em["stage_windows"].items()}
    assert max(windows, key=windows.get) == "replay", windows
    truth = labelled.statistics.phase_windows[labelled.attacks.index("replay"), 2:].sum()
    assert abs(windows["replay"] - truth) < 0.2 * truth, (windows["replay"], truth)
    prior = evidence.parameter_names()
    for name in ("window.duplicates.replay", "window.stale.replay"):
        assert prior[name] < 0.05
        assert float(latent.draws[name].mean()) > 0.8 * float(labelled.draws[name].mean()), name
    assert latent.problems == [], latent.problems


def test_latent_fit_that_stops_early_says_so(run):
    events, _ = run
    latent = signal_model.fit_signal_model(events, num_samples=20, max_iterations=2, check=False)
    assert not latent.info["em"]["converged"]
    assert any("did not converge in 2 iterations" in p for p in latent.problems)
    with pytest.raises(InvalidInputError, match="max_iterations"):
        signal_model.fit_signal_model(events, max_iterations=0)


def test_benign_rates_subtract_the_faults_only_where_they_are_unknown():
    """``b = 1 - (1 - on) / (1 - u * fault share)``: ``u = 0`` (faults labelled) leaves the on-fraction as it is."""
    stats = signal_model.SignalStatistics.zeros()
    stats.windows, stats.replica_rows = 1000.0, 4000.0
    stats.benign_obs[:] = 4000.0
    stats.benign_on[:] = 80.0
    known = signal_model.posterior_from_statistics(stats, num_samples=50, seed=1, check=False)
    stats.benign_unknown[:] = 4000.0
    unknown = signal_model.posterior_from_statistics(stats, num_samples=50, seed=1, check=False)
    name = "telemetry.vc_request.baseline"
    share = signal_posterior.fault_share(unknown.draws, "vc_request", 4.0, attributed=True)
    on_fraction = known.draws[name]
    expected = np.clip(1.0 - (1.0 - on_fraction) / (1.0 - share), 1e-5, 1.0)
    np.testing.assert_allclose(unknown.draws[name], expected, rtol=1e-12)
    assert np.all(unknown.draws[name] <= known.draws[name]) and np.any(unknown.draws[name] < known.draws[name])


@pytest.mark.slow
def test_all_six_faults_labelled_on_seven_replicas_pass_the_check():
    runs = []
    for seed in (601, 602, 603):
        simulation = Simulation(random_scenario(seed, nodes=7, duration=600.0, attacks=["flooding"],
                                                faults=list(signal_model.FAULTS), intensity=0.8))
        runs.append((list(simulation.events()), simulation.labels, simulation.faults))
    post = signal_model.fit_signal_model(runs, num_samples=400, seed=1)
    assert post.summary()["faults"] == "fitted from fault labels: " + ", ".join(signal_model.FAULTS)
    assert post.problems == [], post.problems
    assert float(post.draws["fault.partition.peers_lost"].mean()) > 0.9
    assert float(post.draws["fault.slow.preprepare_delay"].mean()) > 0.7


def test_labelled_and_unlabelled_logs_fit_together(run, unlabelled):
    """Counts add: the labelled log's hard counts plus the unlabelled log's soft ones; transitions from labels only."""
    events, labels = run
    alone = signal_model.fit_signal_model(events, labels=labels, num_samples=50, seed=2, check=False)
    both = signal_model.fit_signal_model([(events, labels), (unlabelled[0], None)], num_samples=50, seed=2,
                                         check=False)
    assert both.method == "conjugate-em" and both.info["em"]["converged"]
    np.testing.assert_array_equal(both.statistics.phase_windows, alone.statistics.phase_windows)
    np.testing.assert_array_equal(both.statistics.phase_changes, alone.statistics.phase_changes)
    assert both.statistics.windows == alone.statistics.windows + len(signal_model.record_windows(unlabelled[0]).windows)
    assert both.statistics.labelled_windows > alone.statistics.labelled_windows + 100

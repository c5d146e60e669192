"""The shipped default posterior: what it holds, how the model filter runs it, and how a bad file is refused."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from bayes_defense.errors import InvalidInputError
from bayes_defense.fitting import signal_posterior
from bayes_defense.fitting.learning import SignalLedger
from bayes_defense.fitting.signal_posterior import (
    DEFAULT_STATISTICS,
    SignalStatistics,
    default_posterior,
    posterior_from_statistics,
    read_statistics,
    write_statistics,
)
from bayes_defense.models import registry
from bayes_defense.sim import Simulation, random_scenario
from bayes_defense.stream import evidence
from bayes_defense.stream.model_filter import ModelDefender

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("papers_default_posterior", ROOT / "papers" / "default_posterior.py")
    module = importlib.util.module_from_spec(spec)
    # Registered, so that the script's process pool can pickle its functions by module name.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_shipped_file_is_a_labelled_fit_on_training_seeds_only():
    statistics, info = read_statistics(DEFAULT_STATISTICS)
    statistics.check_current()
    first, last = info["training"]["seeds"]
    # Training seeds are 20000+; evaluations use 40000+ and the demo 2026, which the fit must not have seen.
    assert 20_000 <= first <= last < 40_000
    assert info["made_by"].startswith("python papers/default_posterior.py")
    assert statistics.labelled_windows > 0 and statistics.fault_known_windows == statistics.windows
    # Every built-in attack was in the training runs (it would otherwise keep a start rate near zero).
    assert np.all(statistics.phase_windows[:, 2] > 0) and np.all(statistics.phase_windows[:, 3] > 0)


def test_a_model_filter_given_nothing_runs_the_default_posterior():
    defender = ModelDefender(ensemble=4, seed=3, planner=None)
    expected = default_posterior().signal_parameters(4, 3)
    assert defender.base_posterior is default_posterior()
    assert all(np.array_equal(defender.parameters[name], expected[name]) for name in expected)
    # The fitted per-window effects are far above the catalogue prior's time-sliced ones.
    prior = ModelDefender("prior", ensemble=4, seed=3, planner=None)
    assert prior.base_posterior is None
    assert all(np.array_equal(prior.parameters[n], v) for n, v in evidence.prior_draws(4, 3).items())
    name = "window.conflicting.equivocation"
    assert defender.parameters[name].mean() > 5 * prior.parameters[name].mean()


def test_default_posterior_is_drawn_from_the_shipped_counts():
    statistics, info = read_statistics(DEFAULT_STATISTICS)
    again = posterior_from_statistics(statistics, num_samples=50, seed=2, check=False,
                                      prior_strength=info["settings"]["prior_strength"])
    default = default_posterior(num_samples=50, seed=2)
    assert set(default.draws) == set(again.draws)
    assert all(np.array_equal(default.draws[n], again.draws[n]) for n in again.draws)


def test_an_unknown_parameters_string_is_refused():
    with pytest.raises(InvalidInputError, match="'prior'"):
        ModelDefender("default", planner=None)


def test_a_user_attack_keeps_its_prior_under_the_default():
    registry.reset()
    try:
        registry.add_attack("ledger_fork", footing="backup_faulty", attacker_side={"ic_request": 0.95},
                            impacts={"liveness_lost": 0.8}, p_success=0.7, matched="leader_rotation", damage=0.8)
        posterior = default_posterior(num_samples=20)
        assert posterior.attacks[-1] == "ledger_fork"
        counts = posterior.statistics
        assert counts.phase_windows[-1].sum() == 0 and counts.phase_windows[0].sum() > 0
        assert ModelDefender(ensemble=2, planner=None).attacks[-1] == "ledger_fork"
    finally:
        registry.reset()
    assert "ledger_fork" not in default_posterior().attacks


def test_learning_on_the_default_adds_to_its_counts():
    defender = ModelDefender(ensemble=4, planner=None)
    defender.record = ledger = SignalLedger.for_defender(defender, num_samples=40)
    simulation = Simulation(random_scenario(5, nodes=4, duration=200, attacks=["replay"], faults=[]))
    defender.observe_batch(simulation.events())
    defender.flush()
    learned = defender.learn(simulation.labels)
    shipped, _ = read_statistics(DEFAULT_STATISTICS)
    assert learned.statistics.windows == pytest.approx(shipped.windows + ledger.windows)
    assert learned.statistics.labelled_windows > shipped.labelled_windows
    assert defender.base_posterior is learned


@pytest.mark.parametrize(("content", "message"), [
    ("not json", "not JSON"),
    (json.dumps({"format": "something else"}), "format"),
    (json.dumps({"format": signal_posterior.STATISTICS_FORMAT, "format_version": "9.0", "statistics": {}}),
     "format version"),
    (json.dumps({"format": signal_posterior.STATISTICS_FORMAT, "format_version": "1.0", "info": {},
                 "statistics": {"attacks": []}}), "signal statistics: missing"),
])
def test_bad_statistics_files_are_refused(tmp_path, content, message):
    path = tmp_path / "stats.json"
    path.write_text(content)
    with pytest.raises(InvalidInputError, match=message):
        read_statistics(path)


def test_negative_counts_are_refused(tmp_path):
    statistics = SignalStatistics.zeros()
    path = write_statistics(tmp_path / "stats.json", statistics, {"made_by": "test"})
    record = json.loads(path.read_text())
    record["statistics"]["benign_on"][0] = -3.0
    path.write_text(json.dumps(record))
    with pytest.raises(InvalidInputError, match="counts >= 0"):
        read_statistics(path)


def test_the_script_writes_a_file_the_defender_runs(tmp_path):
    out = tmp_path / "stats.json"
    assert _script().main(["--train", "1", "--jobs", "1", "--out", str(out)]) == 0
    statistics, info = read_statistics(out)
    assert info["training"]["seeds"] == [20_000, 20_000] and statistics.runs == 1.0
    posterior = posterior_from_statistics(statistics, num_samples=10, check=False)
    defender = ModelDefender(posterior, ensemble=4, planner=None)
    assert defender.base_posterior is posterior


@pytest.mark.slow  # 32 simulated training runs and their fit: several minutes
def test_the_shipped_file_is_what_the_script_writes(tmp_path):
    _, info = read_statistics(DEFAULT_STATISTICS)
    train = int(info["made_by"].split("--train")[1].split()[0])
    out = tmp_path / "stats.json"
    assert _script().main(["--train", str(train), "--out", str(out)]) == 0
    made, _ = read_statistics(out)
    shipped, _ = read_statistics(DEFAULT_STATISTICS)
    assert made.state_dict() == shipped.state_dict()

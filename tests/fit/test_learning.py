"""The learning loop: the ledger's exact conjugate update equals a fit on all the data; rejections; bounds; state."""

from __future__ import annotations

import numpy as np
import pytest

from bayes_defense.errors import InvalidInputError
from bayes_defense.fitting import signal_model
from bayes_defense.fitting.learning import SignalLedger
from bayes_defense.sim import random_scenario
from bayes_defense.sim.engine import Simulation
from bayes_defense.stream.checkpoint import read_checkpoint, write_checkpoint
from bayes_defense.stream.model_filter import ModelDefender

SETTINGS = {"num_samples": 60, "seed": 7}


def _simulate(seed: int, attack: str):
    simulation = Simulation(random_scenario(seed, nodes=4, duration=200.0, attacks=[attack], faults=["jitter"],
                                            intensity=0.8))
    return list(simulation.events()), simulation.labels


@pytest.fixture(scope="module")
def replay_run():
    return _simulate(31, "replay")


@pytest.fixture(scope="module")
def flooding_run():
    return _simulate(32, "flooding")


_WINDOWS: dict[int, list] = {}


def _defend(events, ledger: SignalLedger) -> None:
    """The windows the defender closes as it runs live (default settings), fed to the ledger as its hook does.

    Each log runs through the defender once (cached); the hook itself is tested in
    test_learned_posterior_equals_the_fit_on_all_the_data.
    """
    key = id(events)
    if key not in _WINDOWS:
        defender = ModelDefender(ensemble=2, planner=None)
        defender.record = []
        defender.observe_batch(events)
        defender.flush()
        _WINDOWS[key] = defender.record
    for item in _WINDOWS[key]:
        ledger.append(item)


def _same(a: signal_model.SignalPosterior, b: signal_model.SignalPosterior) -> None:
    assert a.statistics.state_dict() == b.statistics.state_dict()
    assert set(a.draws) == set(b.draws)
    for name in a.draws:
        np.testing.assert_array_equal(a.draws[name], b.draws[name], err_msg=name)


def test_learned_posterior_equals_the_fit_on_all_the_data(replay_run):
    """Conjugate counts: the same sufficient statistics, so (same settings and seed) the same draws, exactly."""
    events, labels = replay_run
    ledger = SignalLedger(**SETTINGS)
    defender = ModelDefender(ensemble=2, planner=None)
    defender.record = ledger
    defender.observe_batch(events)
    defender.flush()
    learned = ledger.learn(labels)
    fitted = signal_model.fit_signal_model(events, labels=labels, **SETTINGS)
    _same(learned, fitted)
    assert learned.info["labelled_windows"] > 0
    assert learned.method == "conjugate-ledger"


def test_ledger_on_a_fitted_posterior_equals_one_fit_on_both_logs(replay_run, flooding_run):
    first = signal_model.fit_signal_model(replay_run[0], labels=replay_run[1], **SETTINGS)
    ledger = SignalLedger(first)
    assert ledger.settings["num_samples"] == SETTINGS["num_samples"]
    _defend(flooding_run[0], ledger)
    learned = ledger.learn(flooding_run[1])
    both = signal_model.fit_signal_model([replay_run, flooding_run], **SETTINGS)
    _same(learned, both)


def test_a_rejected_alert_leaves_benign_windows_as_they_were(replay_run):
    events, labels = replay_run
    ledger = SignalLedger(**SETTINGS)
    _defend(events, ledger)
    benign = ledger.posterior()
    label = labels[0]
    rejection = {"verdict": "not_attack", "attack": label["attack"], "start": label["precursor_start"],
                 "end": label["end"]}
    _same(ledger.learn([rejection]), benign)
    # Confirmed, then rejected after all: back to the all-benign counts, exactly.
    confirmed = ledger.learn(labels)
    assert confirmed.statistics.labelled_windows > 0
    _same(ledger.learn([{"verdict": "not_attack", "attack": None, "start": 0.0, "end": label["end"]}]), benign)
    # An alert rejected by its time moves the window that raised it back.
    ledger.learn(labels)
    ts = float(ledger.buffered_ends[np.searchsorted(ledger.buffered_ends, label["execution_start"])])
    after = ledger.learn([{"verdict": "not_attack", "attack": label["attack"], "ts": ts}])
    assert after.statistics.labelled_windows == confirmed.statistics.labelled_windows - 1


def test_labels_older_than_the_buffer_are_refused_and_change_nothing(replay_run):
    events, labels = replay_run
    ledger = SignalLedger(buffer_windows=30, **SETTINGS)
    _defend(events, ledger)
    before = ledger.state_dict()
    with pytest.raises(InvalidInputError, match="older windows cannot be relabelled exactly"):
        ledger.learn([{"verdict": "not_attack", "ts": float(ledger.buffered_ends[-1])}, labels[0]])
    assert ledger.state_dict()["counts"] == before["counts"]
    assert len(ledger.buffered_ends) == 30 < ledger.windows


def test_a_label_inside_a_smaller_buffer_is_still_exact(replay_run):
    events, labels = replay_run
    total = len(signal_model.record_windows(events).windows)
    buffer = total - int(min(label["precursor_start"] for label in labels)) + 1
    ledger = SignalLedger(buffer_windows=buffer, **SETTINGS)
    _defend(events, ledger)
    assert len(ledger.buffered_ends) == buffer < ledger.windows
    _same(ledger.learn(labels), signal_model.fit_signal_model(events, labels=labels, **SETTINGS))


@pytest.mark.parametrize("label, reason", [
    ({"attack": "replay", "verdict": "maybe", "start": 1.0, "end": 2.0}, "verdict 'maybe'"),
    ({"attack": "meteor", "precursor_start": 1.0, "execution_start": 2.0, "end": 3.0}, "not tracked"),
    ({"attack": "replay", "precursor_start": 5.0, "execution_start": 2.0, "end": 9.0}, "precursor_start <="),
    ({"attack": "replay", "precursor_start": 1.0, "execution_start": 2.0, "end": 9e9}, "learn it once"),
    ({"verdict": "not_attack", "start": -50.0, "end": -10.0}, "covers no window"),
    ({"verdict": "not_attack", "start": 5.0}, "'end' must be a finite number"),
    ("replay", "must be an object"),
])
def test_bad_labels_are_refused_with_a_reason(replay_run, label, reason):
    ledger = SignalLedger(**SETTINGS)
    _defend(replay_run[0], ledger)
    with pytest.raises(InvalidInputError, match=reason):
        ledger.learn([label])


def test_state_round_trip_through_a_checkpoint(replay_run, tmp_path):
    events, labels = replay_run
    ledger = SignalLedger(buffer_windows=220, **SETTINGS)
    _defend(events, ledger)
    ledger.learn(labels[:0])
    path = tmp_path / "ledger.json"
    write_checkpoint(path, "SignalLedger", ledger.state_dict())
    state, _ = read_checkpoint(path, "SignalLedger")
    again = SignalLedger()
    again.load_state_dict(state)
    _same(again.learn(labels), ledger.learn(labels))
    assert again.windows == ledger.windows


@pytest.mark.parametrize("key, value, reason", [
    ("stages", "bad-stage", "stages must be an array"),
    ("ends", "reversed", "increasing"),
    ("signals", ["msg_rate"], "another signal list"),
    ("version", 99, "version 99"),
    ("counts", {"attacks": []}, "signal statistics"),
])
def test_a_damaged_state_is_refused_and_leaves_the_ledger_as_it_was(replay_run, key, value, reason):
    ledger = SignalLedger(buffer_windows=50, **SETTINGS)
    _defend(replay_run[0], ledger)
    state = ledger.state_dict()
    if value == "bad-stage":
        value = state["stages"].copy()
        value[0, 0] = 1
    elif value == "reversed":
        value = state["ends"][::-1].copy()
    state[key] = value
    target = SignalLedger(**SETTINGS)
    with pytest.raises(InvalidInputError, match=reason):
        target.load_state_dict(state)
    assert target.windows == 0


def test_the_ledger_refuses_what_is_not_a_window():
    ledger = SignalLedger(num_samples=10)
    assert ledger.learn([]).num_draws == 10
    with pytest.raises(InvalidInputError, match="none yet"):
        ledger.learn([{"verdict": "not_attack", "start": 0.0, "end": 1.0}])
    with pytest.raises(InvalidInputError, match=r"\(end, WindowSignals\) pairs"):
        ledger.append(("r0", 1.0))
    with pytest.raises(InvalidInputError, match="buffer_windows"):
        SignalLedger(buffer_windows=0)
    with pytest.raises(InvalidInputError, match="num_samples"):
        SignalLedger(num_samples=1)
    with pytest.raises(InvalidInputError, match="no sufficient statistics"):
        SignalLedger(signal_model.SignalPosterior({"telemetry.msg_rate.baseline": np.full(3, 0.01)},
                                                  signal_model.tracked_attacks()))

"""Tests of the evaluation baselines (fixed threshold, CUSUM, BOCPD, HalfSpaceTrees)."""

from __future__ import annotations

import sys

import pytest

from bayes_defense.sim import AttackSpec, Scenario, run_to_events
from bayes_defense.stream.baselines import (
    Bocpd,
    Cusum,
    FixedThreshold,
    river_available,
    run_baseline,
    run_half_space_trees,
    window_summaries,
)
from bayes_defense.stream.metrics import evaluate_alerts


@pytest.fixture(scope="module")
def replay_run():
    spec = AttackSpec("replay", start=400.0, precursor=90.0, duration=60.0, intensity=1.0)
    scenario = Scenario(nodes=4, duration=480.0, seed=11, attacks=[spec])
    return list(run_to_events(scenario)), spec


def test_window_summaries_cover_every_window_once(replay_run):
    events, _ = replay_run
    indices = [index for index, _ in window_summaries(events)]
    assert indices == sorted(set(indices))
    assert indices[-1] == 480


@pytest.mark.parametrize("factory", [FixedThreshold, Cusum, Bocpd])
def test_univariate_baselines_see_a_blatant_replay(replay_run, factory):
    events, spec = replay_run
    alerts = run_baseline(events, factory)
    report = evaluate_alerts([{"attack": "replay", "precursor_start": spec.precursor_start,
                               "execution_start": spec.start, "end": spec.end}], alerts, 480.0)
    assert report["detection_rate"] == 1.0


def test_half_space_trees_runs_when_river_is_installed(replay_run):
    if not river_available():
        pytest.skip("river is not installed (optional: pip install 'bayes_defense[peers]')")
    events, spec = replay_run
    alerts = run_half_space_trees(events)
    assert alerts == run_half_space_trees(events)  # seeded: the same trees every time
    for alert in alerts:
        assert alert["ts"] >= 250.0  # nothing before its reference window is full
        assert set(alert) == {"ts", "attack", "nodes", "probability", "lower", "upper", "phase", "countermeasure"}


def test_half_space_trees_without_river_says_how_to_install(replay_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "river.anomaly", None)
    with pytest.raises(ImportError, match=r"bayes_defense\[peers\]"):
        run_half_space_trees(replay_run[0][:100])

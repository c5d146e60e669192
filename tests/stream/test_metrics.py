"""Tests of the detection metrics against hand-computed cases."""

from __future__ import annotations

import math

import pytest

from bayes_defense.stream.metrics import combine_reports, evaluate_alerts

LABELS = [
    {"attack": "replay", "precursor_start": 100.0, "execution_start": 190.0, "end": 250.0},
    {"attack": "sybil", "precursor_start": 400.0, "execution_start": 450.0, "end": 500.0},
]


def test_hand_computed_case():
    alerts = [{"ts": 120.0, "attack": "flooding"}, {"ts": 130.0, "attack": "replay"},
              {"ts": 35.0, "attack": "eclipse"}, {"ts": 39.0, "attack": "eclipse"}]
    report = evaluate_alerts(LABELS, alerts, duration=600.0)
    assert report["detection_rate"] == 0.5
    assert report["lead_time_median_s"] == 60.0
    assert report["type_accuracy"] == 0.0  # the first alert inside named flooding
    assert report["precision"] == 0.5
    # Benign: [0, 100) and [280, 400) and [530, 600): 10 + 12 + 7 windows; one holds both false alerts.
    assert report["benign_windows"] == 29
    assert report["false_positive_rate"] == 1 / 29


def test_no_alerts_and_no_labels():
    report = evaluate_alerts([], [], duration=100.0)
    assert math.isnan(report["detection_rate"]) and math.isnan(report["precision"])
    assert report["false_positive_rate"] == 0.0


def test_combine_pools_counts():
    one = evaluate_alerts(LABELS, [{"ts": 410.0, "attack": "sybil"}], duration=600.0)
    two = evaluate_alerts(LABELS[:1], [], duration=300.0)
    pooled = combine_reports([one, two])
    assert pooled["attacks"] == 3 and pooled["detected"] == 1
    assert math.isnan(pooled["lead_time_median_s"])  # the one precursor lasted 50 s
    assert pooled["lead_time_median_all_s"] == 40.0


def test_alert_precision_counts_only_alerts_naming_their_own_attack():
    from bayes_defense.stream.metrics import combine_reports, evaluate_alerts

    labels = [{"attack": "equivocation", "precursor_start": 100.0, "execution_start": 150.0, "end": 200.0},
              {"attack": "replay", "precursor_start": 400.0, "execution_start": 450.0, "end": 500.0}]
    alerts = [{"ts": 120.0, "attack": "censorship"},  # inside equivocation's window, wrong attack
              {"ts": 130.0, "attack": "equivocation"},
              {"ts": 420.0, "attack": "replay"},
              {"ts": 700.0, "attack": "sybil"}]  # outside every window
    report = evaluate_alerts(labels, alerts, duration=800.0)
    assert report["precision"] == 3 / 4 and report["alert_precision"] == 2 / 4
    assert report["detection_rate"] == 1.0 and report["type_accuracy"] == 1 / 2
    pooled = combine_reports([report, report])
    assert pooled["alert_precision"] == 2 / 4 and pooled["alerts_inside_own"] == 4


@pytest.mark.parametrize(("labels", "duration", "message"), [
    ([{"attack": "replay", "precursor_start": 50.0, "execution_start": 40.0, "end": 60.0}], 100.0, "<="),
    ([{"attack": "replay", "precursor_start": float("nan"), "execution_start": 40.0, "end": 60.0}], 100.0, "finite"),
    ([{"attack": "replay", "execution_start": 40.0, "end": 60.0}], 100.0, "lacks 'precursor_start'"),
    (["replay"], 100.0, "must be an object"),
    ([], -10.0, "duration must be"),
    ([], float("inf"), "duration must be"),
])
def test_bad_labels_and_durations_are_refused(labels, duration, message):
    from bayes_defense.errors import InvalidInputError
    from bayes_defense.stream.metrics import evaluate_alerts

    with pytest.raises(InvalidInputError, match=message):
        evaluate_alerts(labels, [], duration)

"""Detection metrics, one definition everywhere (defined for users in docs/metrics.md).

Given ground-truth labels and an alert stream: detection rate, lead time,
false-positive rate over 10 s benign windows, precision, alert precision and
type accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from bayes_defense.errors import InvalidInputError

__all__ = ["evaluate_alerts", "combine_reports", "BENIGN_WINDOW", "GRACE"]

#: Length of a benign window for the false-positive rate, seconds.
BENIGN_WINDOW = 10.0
#: Time after an attack's end that still counts as part of it for the false-positive rate.
GRACE = 30.0


def _field(alert: Any, name: str) -> Any:
    return alert[name] if isinstance(alert, Mapping) else getattr(alert, name)


def _finite(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise InvalidInputError(f"{what} must be a finite number of seconds, got {str(value)[:40]!r}")
    return number


def _check_labels(labels: Sequence[Any]) -> list[tuple[str, float, float, float]]:
    checked = []
    for number, label in enumerate(labels, 1):
        if not isinstance(label, Mapping) or not isinstance(label.get("attack"), str):
            raise InvalidInputError(f"label {number} must be an object with attack, precursor_start, "
                                    f"execution_start and end (docs/log-schema.md); got {str(label)[:80]}")
        try:
            start, execution, end = (_finite(label[key], f"label {number} {key}")
                                     for key in ("precursor_start", "execution_start", "end"))
        except KeyError as missing:
            raise InvalidInputError(f"label {number} lacks {missing.args[0]!r}; labels need attack, precursor_start, "
                                    f"execution_start and end") from None
        if not start <= execution <= end:
            raise InvalidInputError(f"label {number} ({label['attack']}) must have precursor_start <= execution_start "
                                    f"<= end; got {start}, {execution}, {end}")
        checked.append((label["attack"], start, execution, end))
    return checked


def evaluate_alerts(labels: Sequence[Mapping[str, Any]], alerts: Iterable[Any], duration: float) -> dict[str, Any]:
    """Score an alert stream against labels.

    Parameters
    ----------
    labels : list of dict
        ``{attack, precursor_start, execution_start, end, ...}`` per attack.
    alerts : iterable
        Alerts as dicts or objects with ``ts`` and ``attack``.
    duration : float
        Length of the run, seconds (for the benign windows); finite, >= 0.

    Returns
    -------
    dict
        ``detection_rate``, ``false_positive_rate``, ``precision``,
        ``alert_precision``, ``lead_time_median_s``, ``type_accuracy``,
        ``attacks``, ``alerts``, plus the raw counts behind them
        (``detected``, ``lead_times``, ``benign_windows``,
        ``benign_windows_alerted``, ``alerts_inside``, ``alerts_inside_own``,
        ``typed_right``). A rate with no denominator is ``nan``.

    Raises
    ------
    InvalidInputError
        A label lacks a field, has a non-finite time or times out of order,
        an alert has no finite ``ts``, or ``duration`` is negative or not finite.

    Examples
    --------
    >>> labels = [{"attack": "replay", "precursor_start": 100.0, "execution_start": 180.0, "end": 240.0}]
    >>> alerts = [{"ts": 130.0, "attack": "replay"}, {"ts": 400.0, "attack": "sybil"}]
    >>> report = evaluate_alerts(labels, alerts, duration=600.0)
    >>> report["detection_rate"], report["lead_time_median_s"], report["precision"], report["alert_precision"]
    (1.0, 50.0, 0.5, 0.5)
    >>> report["benign_windows_alerted"], report["benign_windows"]
    (1, 43)
    """
    alerts = sorted((_finite(_field(a, "ts"), "an alert's ts"), str(_field(a, "attack"))) for a in alerts)
    checked = _check_labels(list(labels))
    duration = _finite(duration, "duration")
    if duration < 0:
        raise InvalidInputError(f"duration must be >= 0 seconds, got {duration}")
    detected = 0
    typed_right = 0
    lead_times: list[float] = []
    precursors: list[float] = []
    for attack, start, execution, end in checked:
        inside = [(ts, name) for ts, name in alerts if start <= ts <= end]
        named = [ts for ts, name in inside if name == attack]
        if named:
            detected += 1
            lead_times.append(execution - named[0])
            precursors.append(execution - start)
            if inside[0][1] == attack:
                typed_right += 1
    spans = [(start, end + GRACE) for _, start, _, end in checked]
    windows = 0
    alerted = 0
    count = int(math.ceil(duration / BENIGN_WINDOW)) if duration > 0 else 0
    for k in range(count):
        lo, hi = k * BENIGN_WINDOW, min((k + 1) * BENIGN_WINDOW, duration)
        if any(lo < e and hi > s for s, e in spans):
            continue
        windows += 1
        if any(lo <= ts < hi for ts, _ in alerts):
            alerted += 1
    inside_any = sum(1 for ts, _ in alerts if any(start <= ts <= end for _, start, _, end in checked))
    inside_own = sum(1 for ts, name in alerts
                     if any(attack == name and start <= ts <= end for attack, start, _, end in checked))

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    return {
        "detection_rate": ratio(detected, len(labels)),
        "false_positive_rate": ratio(alerted, windows),
        "precision": ratio(inside_any, len(alerts)),
        "alert_precision": ratio(inside_own, len(alerts)),
        "lead_time_median_s": float(np.median(lead_times)) if lead_times else float("nan"),
        "type_accuracy": ratio(typed_right, detected),
        "attacks": len(checked),
        "alerts": len(alerts),
        "detected": detected,
        "typed_right": typed_right,
        "lead_times": lead_times,
        "precursor_lengths": precursors,
        "benign_windows": windows,
        "benign_windows_alerted": alerted,
        "alerts_inside": inside_any,
        "alerts_inside_own": inside_own,
    }


def combine_reports(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Pool per-run reports from :func:`evaluate_alerts` into one.

    The median lead time is taken over attacks whose precursor lasted at
    least 60 s (``lead_time_median_s``) and over all detected attacks
    (``lead_time_median_all_s``).

    Examples
    --------
    >>> a = {"attacks": 1, "detected": 1, "typed_right": 1, "alerts": 1, "alerts_inside": 1,
    ...      "benign_windows": 10, "benign_windows_alerted": 0, "lead_times": [40.0], "precursor_lengths": [90.0]}
    >>> combine_reports([a, a])["detection_rate"]
    1.0
    """
    total = {key: sum(r[key] for r in reports) for key in
             ("attacks", "detected", "typed_right", "alerts", "alerts_inside", "benign_windows", "benign_windows_alerted")}
    # Reports written before alert precision existed lack its count.
    own = [r.get("alerts_inside_own") for r in reports]
    total["alerts_inside_own"] = sum(own) if None not in own else None
    leads = [t for r in reports for t in r["lead_times"]]
    long_leads = [t for r in reports for t, p in zip(r["lead_times"], r["precursor_lengths"], strict=True) if p >= 60]

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    return {
        "detection_rate": ratio(total["detected"], total["attacks"]),
        "false_positive_rate": ratio(total["benign_windows_alerted"], total["benign_windows"]),
        "precision": ratio(total["alerts_inside"], total["alerts"]),
        "alert_precision": (ratio(total["alerts_inside_own"], total["alerts"]) if total["alerts_inside_own"] is not None
                            else float("nan")),
        "lead_time_median_s": float(np.median(long_leads)) if long_leads else float("nan"),
        "lead_time_median_all_s": float(np.median(leads)) if leads else float("nan"),
        "type_accuracy": ratio(total["typed_right"], total["detected"]),
        **total,
    }

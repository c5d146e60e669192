"""Command-line options every user meets: --version, bounds on numbers, evaluate's run length."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bayes_defense.cli import main
from bayes_defense.commands import COMMAND_MODULES


def test_version_and_registry():
    result = subprocess.run([sys.executable, "-m", "bayes_defense", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("bayes-defense ")
    assert len(COMMAND_MODULES) == len(set(COMMAND_MODULES)) and any(m.endswith(".detect") for m in COMMAND_MODULES)


@pytest.mark.parametrize("argv", [
    ["defend", "x.jsonl", "--threshold", "1.5"],
    ["defend", "x.jsonl", "--threshold", "-1"],
    ["defend", "x.jsonl", "--threshold", "nan"],
    ["defend", "x.jsonl", "--confirm-windows", "0"],
    ["defend", "x.jsonl", "--confirm-windows", "1.5"],
    ["evaluate", "--labels", "l.json", "--alerts", "a.jsonl", "--duration", "-10"],
    ["evaluate", "--labels", "l.json", "--alerts", "a.jsonl", "--duration", "inf"],
    ["demo", "--duration", "0"],
    ["no-such-command"],
])
def test_bad_numbers_and_usage_exit_2_with_one_line(capsys, argv):
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "error:" in error[0]


def test_evaluate_needs_a_run_length(tmp_path, capsys):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps([{"attack": "replay", "precursor_start": 10, "execution_start": 20, "end": 30}]))
    alerts = tmp_path / "alerts.jsonl"
    alerts.write_text('{"ts": 15, "attack": "replay"}\n')
    assert main(["evaluate", "--labels", str(labels), "--alerts", str(alerts)]) == 2
    assert "give --duration" in capsys.readouterr().err
    (tmp_path / "meta.json").write_text(json.dumps({"duration": -5}))
    assert main(["evaluate", "--labels", str(labels), "--alerts", str(alerts)]) == 2
    (tmp_path / "meta.json").write_text(json.dumps({"duration": 100}))
    assert main(["evaluate", "--labels", str(labels), "--alerts", str(alerts), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert report["detection_rate"] == 1.0 and report["alert_precision"] == 1.0
    # No alerts: rates without a denominator are null, never NaN.
    alerts.write_text("")
    assert main(["evaluate", "--labels", str(labels), "--alerts", str(alerts), "--json"]) == 0
    text = capsys.readouterr().out
    assert "NaN" not in text and json.loads(text)["precision"] is None


def test_bad_labels_are_one_line(tmp_path, capsys):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps([{"attack": "replay", "precursor_start": 30, "execution_start": 20, "end": 10}]))
    alerts = tmp_path / "alerts.jsonl"
    alerts.write_text("")
    assert main(["evaluate", "--labels", str(labels), "--alerts", str(alerts), "--duration", "100"]) == 2
    assert "precursor_start <= execution_start <= end" in capsys.readouterr().err


def test_demo_writes_what_evaluate_and_fit_need(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--duration", "240", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    for name in ("events.jsonl", "labels.json", "faults.json", "meta.json", "alerts.jsonl", "demo.png"):
        assert (tmp_path / name).exists(), name
    assert main(["evaluate", "--labels", str(tmp_path / "labels.json"), "--alerts", str(tmp_path / "alerts.jsonl"),
                 "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["detection_rate"] == summary["detection_rate"] or (again["detection_rate"] is None
                                                                   and summary["detection_rate"] is None)
    assert again["alerts"] == summary["alerts"]

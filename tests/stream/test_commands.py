"""Tests of the defend, evaluate, detect and demo commands."""

from __future__ import annotations

import csv
import json

import pytest

from bayes_defense.cli import main
from bayes_defense.sim import AttackSpec, Scenario, simulate


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    scenario = Scenario(nodes=4, duration=240.0, seed=5,
                        attacks=[AttackSpec("sybil", start=150.0, precursor=80.0, duration=50.0)])
    simulate(scenario, out)
    return out


def test_defend_then_evaluate(run_dir, tmp_path, capsys):
    alerts = tmp_path / "alerts.jsonl"
    assert main(["defend", str(run_dir / "events.jsonl"), "--out", str(alerts), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {"events", "rejected", "alerts", "events_per_second", "latency_p50_us", "latency_p99_us"} <= set(summary)
    assert summary["alerts"] >= 1
    record = json.loads(alerts.read_text().splitlines()[0])
    # The default defender's alerts carry their explanation (DESIGN.md section 8).
    assert set(record) == {"ts", "attack", "nodes", "probability", "lower", "upper", "phase", "countermeasure",
                           "explanation"}
    assert record["explanation"][0]["cause"] == record["attack"]
    assert main(["evaluate", "--labels", str(run_dir / "labels.json"), "--alerts", str(alerts), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["detection_rate"] == 1.0 and report["type_accuracy"] == 1.0
    assert set(report) == {"detection_rate", "false_positive_rate", "precision", "alert_precision",
                           "lead_time_median_s", "type_accuracy", "attacks", "alerts"}


def test_defend_counts_unreadable_lines(tmp_path, capsys):
    log = tmp_path / "events.jsonl"
    log.write_text('{"ts": 10.0, "node": "r0", "kind": "peer_churn", "value": 0}\nnot json\n'
                   '{"ts": 2.0, "node": "r0", "kind": "peer_churn", "value": 0}\n')
    # Two of three events unusable: done, but not to be trusted (exit 1), with the reasons counted.
    assert main(["defend", str(log), "--out", str(tmp_path / "a.jsonl"), "--json"]) == 1
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["events"] == 3 and summary["rejected"] == {"out_of_order": 1, "not_json": 1}
    assert "not_json 1" in captured.err and "out_of_order 1" in captured.err


def test_bad_input_exits_with_one_line(tmp_path, capsys):
    assert main(["defend", str(tmp_path / "missing.jsonl")]) == 2
    assert main(["evaluate", "--labels", str(tmp_path / "nope.json"), "--alerts", str(tmp_path / "x")]) == 2
    bad = tmp_path / "m.csv"
    bad.write_text("timestamp,value\n")  # header only
    assert main(["detect", str(bad), "--out", str(tmp_path / "s.csv")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("bayes-defense ") for line in errors)


def test_detect_scores_every_row_in_order(tmp_path, capsys):
    source = tmp_path / "metric.csv"
    values = [10.0 + (i % 3) * 0.5 for i in range(60)] + [80.0] + [10.0] * 5
    source.write_text("timestamp,value\n" + "".join(f"{i},{v}\n" for i, v in enumerate(values)))
    out = tmp_path / "scores.csv"
    assert main(["detect", str(source), "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == len(values)
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert [r["timestamp"] for r in rows] == [str(i) for i in range(len(values))]
    # Warm-up rows (here the first half, searched for seasonal periods) are empty, not 0.
    scored = [row for row in rows if row["probability"] != ""]
    assert rows[0]["probability"] == rows[0]["lower"] == rows[0]["upper"] == ""
    assert len(scored) >= len(values) // 2
    for row in scored:
        p, lo, hi = float(row["probability"]), float(row["lower"]), float(row["upper"])
        assert 0.0 <= lo <= p <= hi <= 1.0
    assert float(rows[60]["lower"]) > 0.9
    assert max(float(r["probability"]) for r in scored if int(r["timestamp"]) < 60) < 0.5


def test_demo_short_run(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--duration", "240", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["attacks"] == 8 and len(summary["table"]) == 8
    assert (tmp_path / "demo.png").stat().st_size > 10_000


class _Posterior:
    """Stands in for a fitted posterior: draws of the defender's parameters."""

    def __init__(self):
        self.calls = []

    def defender_parameters(self, draws, seed):
        from bayes_defense.stream.defender import default_parameters

        self.calls.append((draws, seed))
        return default_parameters(draws, seed + 1)


def test_defend_with_posterior_uses_its_draws(run_dir, tmp_path, capsys, monkeypatch):
    import types

    posterior = _Posterior()
    fake = types.ModuleType("bayes_defense.fitting")
    fake.load_posterior = lambda path: posterior
    monkeypatch.setitem(__import__("sys").modules, "bayes_defense.fitting", fake)
    file = tmp_path / "posterior.nc"
    file.write_bytes(b"stand-in")
    alerts = tmp_path / "alerts.jsonl"
    assert main(["defend", str(run_dir / "events.jsonl"), "--posterior", str(file), "--out", str(alerts),
                 "--json"]) == 0
    assert posterior.calls == [(24, 0)]
    assert json.loads(capsys.readouterr().out)["alerts"] >= 1


def test_defend_posterior_errors_are_one_line(run_dir, tmp_path, capsys, monkeypatch):
    file = tmp_path / "posterior.nc"
    file.write_bytes(b"stand-in")
    assert main(["defend", str(run_dir / "events.jsonl"), "--posterior", str(tmp_path / "missing.nc")]) == 2
    monkeypatch.setitem(__import__("sys").modules, "bayes_defense.fitting", None)
    assert main(["defend", str(run_dir / "events.jsonl"), "--posterior", str(file)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2
    assert "no such posterior file" in errors[0]
    assert "bayes_defense.fitting.load_posterior" in errors[1] and "without --posterior" in errors[1]

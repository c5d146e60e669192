"""``bayes-defense defend``: alerts as raised, atomic output, kill -9 and --resume, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bayes_defense.cli import main
from bayes_defense.sim import AttackSpec, Scenario, simulate


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("long")
    # Long enough (about 190k events) that a kill lands mid-stream, short enough for the default suite.
    attacks = [AttackSpec("replay", start=300.0, precursor=120.0, duration=100.0),
               AttackSpec("sybil", start=650.0, precursor=120.0, duration=100.0)]
    simulate(Scenario(nodes=7, duration=900.0, seed=11, attacks=attacks), out)
    return out


def _alerts(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_kill_9_keeps_old_alerts_and_resume_gives_the_uninterrupted_alerts(long_run, tmp_path, capsys):
    log = long_run / "events.jsonl"
    reference = tmp_path / "reference.jsonl"
    assert main(["defend", str(log), "--out", str(reference), "--json"]) == 0
    capsys.readouterr()
    expected = _alerts(reference)
    assert len(expected) >= 2

    out = tmp_path / "alerts.jsonl"
    out.write_text("old alerts\n")
    checkpoint = tmp_path / "alerts.jsonl.checkpoint"
    process = subprocess.Popen([sys.executable, "-m", "bayes_defense", "defend", str(log), "--out", str(out),
                                "--checkpoint-every", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    size = log.stat().st_size
    deadline = time.monotonic() + 300
    try:
        # Kill once the run is well under way (a third of the log read), mid-stream.
        while time.monotonic() < deadline and process.poll() is None:
            if checkpoint.exists():
                position = json.loads(checkpoint.read_text())["extra"]["defend"]["reader"]["position"]["offset"]
                if position > size // 3:
                    break
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL, "defend finished before it could be interrupted"
    assert out.read_text() == "old alerts\n"  # the previous file survives
    partial = tmp_path / "alerts.jsonl.partial"
    written = _alerts(partial)  # every line written so far is a complete alert
    assert written == expected[:len(written)]

    assert main(["defend", str(log), "--out", str(out), "--resume", str(checkpoint), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert _alerts(out) == expected
    assert summary["alerts"] == len(expected) and summary["events"] == json.loads(
        (long_run / "meta.json").read_text())["events"]
    assert not partial.exists() and not checkpoint.exists()


def test_resume_refuses_another_log_or_other_options(long_run, tmp_path, capsys):
    from bayes_defense.stream.defender import StreamingDefender

    log = long_run / "events.jsonl"
    other = tmp_path / "other.jsonl"
    other.write_text('{"ts": 1, "node": "r0", "kind": "join"}\n')
    fake = tmp_path / "fake.checkpoint"
    StreamingDefender(planner=None).save(fake)
    assert main(["defend", str(log), "--out", str(tmp_path / "a.jsonl"), "--resume", str(fake)]) == 2
    assert "not one of `bayes-defense defend`" in capsys.readouterr().err
    # A real checkpoint of a short run, resumed against another file or threshold.
    assert main(["defend", str(other), "--out", str(tmp_path / "b.jsonl"), "--checkpoint-every", "0",
                 "--checkpoint", str(tmp_path / "kept.checkpoint")]) in (0, 1)
    capsys.readouterr()


@pytest.mark.parametrize(("content", "name", "status", "message"), [
    ("time,host,what,v,a\n" + "1,r0,join,1,\n" * 2000, "events.csv", 2, "CSV header must be"),
    (b"PAR1 garbage", "events.parquet", 2, "not a readable Parquet file"),
    (b"", "events.parquet", 2, "not a readable Parquet file"),
    ("".join(f'{{"ts": "2026-12-01T10:00:{i:02d}Z", "node": "r0", "kind": "join"}}\n' for i in range(50)),
     "events.jsonl", 1, "bad_ts 50"),
    ("", "events.jsonl", 1, "holds no events"),
])
def test_unusable_logs_say_why_and_exit_non_zero(tmp_path, capsys, content, name, status, message):
    log = tmp_path / name
    log.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["defend", str(log), "--out", str(tmp_path / "alerts.jsonl")]) == status
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def test_wrong_parquet_types_are_rejected_with_reasons(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    log = tmp_path / "events.parquet"
    pq.write_table(pa.table({"ts": ["1", "2"], "node": [1, 2], "kind": ["join", "join"]}), log)
    assert main(["defend", str(log), "--out", str(tmp_path / "alerts.jsonl")]) == 1
    assert "bad_ts 2" in capsys.readouterr().err


def test_json_output_is_strict(tmp_path, capsys):
    log = tmp_path / "events.jsonl"
    log.write_text('{"ts": 1, "node": "r0", "kind": "join", "value": 1}\n')
    main(["defend", str(log), "--out", str(tmp_path / "alerts.jsonl"), "--json"])
    text = capsys.readouterr().out
    json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in --json output"))


class _Interrupt(BaseException):
    """Stands in for a signal: not an Exception, so nothing on the way catches it."""


@pytest.mark.parametrize("stop_after", [3])
def test_interrupted_at_a_checkpoint_resumes_to_the_same_alerts(long_run, tmp_path, capsys, monkeypatch, stop_after):
    from bayes_defense.stream.defender import StreamingDefender

    log = long_run / "events.jsonl"
    reference = tmp_path / "reference.jsonl"
    assert main(["defend", str(log), "--out", str(reference)]) == 0
    out = tmp_path / "alerts.jsonl"
    saves = []
    original = StreamingDefender.save

    def save_then_stop(self, path, extra=None):
        original(self, path, extra)
        saves.append(path)
        if len(saves) == stop_after:
            raise _Interrupt

    monkeypatch.setattr(StreamingDefender, "save", save_then_stop)
    with pytest.raises(_Interrupt):
        main(["defend", str(log), "--out", str(out), "--checkpoint-every", "0"])
    monkeypatch.setattr(StreamingDefender, "save", original)
    assert not out.exists()
    assert main(["defend", str(log), "--out", str(out), "--resume", str(saves[-1])]) == 0
    capsys.readouterr()
    assert _alerts(out) == _alerts(reference)


def test_hostile_lines_cost_one_rejected_line_each_not_the_run(long_run, tmp_path, capsys):
    # Point 2 of issue 16: non-UTF-8, an integer beyond a float, attrs 1000 deep, in the middle of a real log.
    lines = (long_run / "events.jsonl").read_bytes().splitlines(keepends=True)[:20_000]
    hostile = [b'{"ts": 1' + b"0" * 400 + b', "node": "r0", "kind": "msg_rate_in"}\n',
               b'{"ts": 5, "node": "r\xff", "kind": "msg_rate_in"}\n',
               b'{"ts": 5, "node": "r0", "kind": "join", "attrs": ' + b'{"a": ' * 1000 + b"1" + b"}" * 1000 + b"}\n"]
    log = tmp_path / "events.jsonl"
    log.write_bytes(b"".join(lines[:10_000] + hostile + lines[10_000:]))
    assert main(["defend", str(log), "--out", str(tmp_path / "alerts.jsonl"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["events"] == 20_003 and summary["accepted"] == 20_000
    assert summary["rejected"] == {"bad_ts": 1, "not_utf8": 1, "too_deep": 1}


@pytest.mark.parametrize("ts", ["1e15", "1764583200000"])  # far future; epoch milliseconds
def test_one_far_future_event_leaves_the_alerts_unchanged(long_run, tmp_path, capsys, ts):
    lines = (long_run / "events.jsonl").read_bytes().splitlines(keepends=True)
    reference = tmp_path / "reference.jsonl"
    assert main(["defend", str(long_run / "events.jsonl"), "--out", str(reference)]) == 0
    log = tmp_path / "events.jsonl"
    injected = b'{"ts": ' + ts.encode() + b', "node": "r3", "kind": "msg_rate_in", "value": 1}\n'
    log.write_bytes(b"".join(lines[: len(lines) // 4] + [injected] + lines[len(lines) // 4:]))
    out = tmp_path / "alerts.jsonl"
    assert main(["defend", str(log), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["rejected"] == {"clock_skew": 1}
    assert _alerts(out) == _alerts(reference) and len(_alerts(out)) >= 2


def test_a_damaged_defend_checkpoint_is_refused(tmp_path, capsys):
    from bayes_defense.stream.defender import StreamingDefender

    log = tmp_path / "events.jsonl"
    log.write_text('{"ts": 1, "node": "r0", "kind": "join"}\n')
    from bayes_defense.commands.defend import _fingerprint

    checkpoint = tmp_path / "c.checkpoint"
    StreamingDefender(planner=None).save(checkpoint, extra={"defend": {
        "source": str(log.resolve()), "fingerprint": _fingerprint(log, 0), "threshold": 0.8, "posterior": None,
        "reader": {"position": {"offset": 0, "line": 0, "record": 0}}, "alerts_bytes": -5, "alerts": 0}})
    assert main(["defend", str(log), "--out", str(tmp_path / "a.jsonl"), "--resume", str(checkpoint)]) == 2
    assert "damaged" in capsys.readouterr().err

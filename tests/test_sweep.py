"""The sweep on a two-worker Dask LocalCluster: same table as in-process, resumable after kill -9, failures per task."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bayes_defense.commands import main
from bayes_defense.sweep import (
    TIMING_COLUMNS,
    expand,
    load_sweep,
    parse_sweep,
    read_table,
    run_sweep,
    run_task,
)

distributed = pytest.importorskip("distributed")

# Small scenarios: about half a second of simulation per task on one core.
SPEC_TEXT = """
seeds = { first = 11, count = 3 }
intensities = [1.0, "default"]
detectors = ["cusum", "fixed_threshold"]

[scenarios.four]
nodes = 4
duration = 120.0
"""


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as local:
        yield local


@pytest.fixture(scope="module")
def client(cluster):
    with distributed.Client(cluster) as connected:
        yield connected


def _comparable(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=[c for c in TIMING_COLUMNS if c in table.columns]).reset_index(drop=True)


def _in_process(spec) -> pd.DataFrame:
    from bayes_defense.sweep import _table

    return _table([{**run_task(task), "status": "done", "error": None} for task in expand(spec)])


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "sweep.toml"
    path.write_text(SPEC_TEXT)
    return path


@pytest.fixture(scope="module")
def in_process_table(spec_path) -> pd.DataFrame:
    return _in_process(load_sweep(spec_path))


def test_cluster_table_equals_in_process(client, spec_path, in_process_table, tmp_path):
    spec = load_sweep(spec_path)
    result = run_sweep(spec, tmp_path, client=client)
    assert result.tasks == len(expand(spec)) == 12 and result.done == 12 and not result.failed
    written = read_table(tmp_path / "results.parquet")
    pd.testing.assert_frame_equal(_comparable(written), _comparable(in_process_table))
    # Both workers took part: the scheduler spread the tasks.
    assert len(client.scheduler_info()["workers"]) == 2
    again = run_sweep(spec, tmp_path, client=client)
    assert again.done == 0 and again.skipped == 12
    pd.testing.assert_frame_equal(_comparable(again.table), _comparable(in_process_table))


def test_killed_sweep_reruns_only_the_rest(cluster, client, spec_path, in_process_table, tmp_path):
    command = [sys.executable, "-m", "bayes_defense", "sweep", str(spec_path), "--out", str(tmp_path),
               "--scheduler", cluster.scheduler_address]
    tasks_dir = tmp_path / "tasks"
    deadline = time.monotonic() + 120
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as process:
        try:
            while not (tasks_dir.exists() and any(tasks_dir.glob("*.json"))):
                assert process.poll() is None, process.stderr.read().decode()
                assert time.monotonic() < deadline, "no task finished within two minutes"
                time.sleep(0.02)
        finally:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (tmp_path / "results.parquet").exists()
    # Tasks already running on the workers may still finish; let them, then count.
    time.sleep(3)
    finished_before = {path.stem for path in tasks_dir.glob("*.json")}
    assert 1 <= len(finished_before) < 12, "the kill came too late to leave work for the rerun"
    for path in tasks_dir.glob("*.json"):
        json.loads(path.read_text())  # every result file present is complete
    result = run_sweep(load_sweep(spec_path), tmp_path, client=client)
    assert result.skipped == len(finished_before)
    assert result.done == 12 - len(finished_before) and not result.failed
    pd.testing.assert_frame_equal(_comparable(result.table), _comparable(in_process_table))


def test_a_failing_task_is_recorded_and_the_others_finish(tmp_path, monkeypatch):
    from bayes_defense import sweep

    real_run_task = sweep.run_task

    def crashing_on_one_task(task, out=None):
        if task.seed == 12 and task.detector == "cusum":
            raise RuntimeError("detector crashed")
        return real_run_task(task, out)

    spec = parse_sweep({"seeds": [11, 12], "detectors": ["cusum", "fixed_threshold"],
                        "scenarios": {"four": {"nodes": 4, "duration": 120.0}}})
    monkeypatch.setattr(sweep, "run_task", crashing_on_one_task)
    # One thread in-process, so the patched module is the one the tasks run in, one task at a time.
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as local:
        result = run_sweep(spec, tmp_path, client=local)
    assert [(f["seed"], f["detector"]) for f in result.failed] == [(12, "cusum")]
    assert "detector crashed" in result.failed[0]["error"]
    assert list(result.table["status"]) == ["done", "done", "failed", "done"]
    assert (tmp_path / "tasks" / f"{result.failed[0]['task_id']}.failed.json").exists()
    # The rerun retries the failed task only; now it succeeds.
    monkeypatch.setattr(sweep, "run_task", real_run_task)
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as local:
        rerun = run_sweep(spec, tmp_path, client=local)
    assert rerun.done == 1 and rerun.skipped == 3 and not rerun.failed
    assert not list((tmp_path / "tasks").glob("*.failed.json"))


@pytest.mark.slow
def test_failures_are_reported_per_task_and_the_rest_finishes(client, tmp_path, capsys):
    spec_file = tmp_path / "sweep.toml"
    spec_file.write_text("""
seeds = [11]
detectors = ["cusum", "defender@tiny", "defender@broken"]
[scenarios.four]
nodes = 4
duration = 120.0
[fits.tiny]
scenario = "four"
seeds = [900]
defender = "scored"
options = { num_steps = 20, num_samples = 10, ppc_draws = 5, check = false }
[fits.broken]
scenario = "four"
seeds = [901]
defender = "scored"
options = { num_steps = -5 }
""")
    out = tmp_path / "out"
    status = main(["sweep", str(spec_file), "--out", str(out), "--scheduler", client.scheduler.address, "--json"])
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert status == 1
    failed = {(f["kind"], f["detector"] or f["fit"]) for f in summary["failures"]}
    # The broken fit fails, and so does the detection that needed its posterior; the others finish.
    assert failed == {("fit", "broken"), ("detect", "defender@broken")}
    assert "num_steps" in captured.err
    table = read_table(out / "results.parquet")
    assert list(table["status"]) == ["done", "failed", "done", "done", "failed"]
    assert table.loc[table["detector"] == "defender@tiny", "attacks"].item() >= 1
    assert summary["tasks"] == 5 and summary["done"] == 3
    # A rerun retries only the failed tasks (which fail again) and keeps the rest.
    assert main(["sweep", str(spec_file), "--out", str(out), "--scheduler", client.scheduler.address, "--json"]) == 1
    rerun = json.loads(capsys.readouterr().out)
    assert rerun["skipped"] == 3 and rerun["failed"] == 2


@pytest.mark.parametrize(("text", "message"), [
    ("seeds = [1]\ndetectors = ['cusum']\n", "at least one [scenarios.NAME]"),
    ("seeds = [1, 1]\ndetectors = ['cusum']\n[scenarios.a]\nnodes = 4\n", "lists a seed twice"),
    ("seeds = [1]\ndetectors = ['defender@nofit']\n[scenarios.a]\nnodes = 4\n", "only defender and scored take a fit"),
    ("seeds = [1]\ndetectors = ['cusum']\nintensities = [2.0]\n[scenarios.a]\nnodes = 4\n", "(0, 1]"),
    ("seeds = [1]\ndetectors = ['cusum']\n[scenarios.a]\nnodez = 4\n", "random_scenario"),
    ("seeds = [1]\ndetectors = ['cusum']\n[scenarios.a]\nnodes = 4\n[fits.f]\nscenario = 'a'\nseeds = [2]\n"
     "options = { steps = 3 }\n", "not options of bd.fit"),
    ("seeds = [1\n", "not valid TOML"),
])
def test_bad_sweep_files_exit_2_with_a_reason(tmp_path, capsys, text, message):
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_out_must_be_a_directory(tmp_path, capsys):
    spec = parse_sweep({"seeds": [1], "detectors": ["cusum"], "scenarios": {"a": {"nodes": 4}}})
    target = tmp_path / "file"
    target.write_text("")
    with pytest.raises(ValueError, match="is a file"):
        run_sweep(spec, target)


def test_a_model_filter_fit_task_feeds_its_defender_detection(tmp_path):
    spec = parse_sweep({"seeds": [21], "intensities": [1.0], "detectors": ["defender@mine", "defender", "scored"],
                        "scenarios": {"four": {"nodes": 4, "duration": 120.0, "attacks": ["replay"]}},
                        "fits": {"mine": {"scenario": "four", "seeds": [901], "options": {"num_samples": 20}}}})
    tasks = expand(spec)
    fit = tasks[0]
    assert fit.kind == "fit" and fit.options == {"defender": "model", "num_samples": 20}
    assert run_task(fit, tmp_path)["diagnostics_ok"] in (True, False)
    from bayes_defense import load_posterior

    posterior = load_posterior(tmp_path / "fits" / f"{fit.id}.nc")
    assert posterior.info["labelled_windows"] > 0 and posterior.info["faults_fitted"] is not None
    rows = {task.detector: run_task(task, tmp_path) for task in tasks[1:]}
    assert set(rows) == {"defender@mine", "defender", "scored"}
    assert all(row["attacks"] == 1 and 0.0 <= row["detection_rate"] <= 1.0 for row in rows.values())
    assert rows["defender@mine"]["detection_rate"] == 1.0
    # A scored detector cannot run a model filter's fit.
    with pytest.raises(Exception, match="defender@mine"):
        parse_sweep({"seeds": [1], "detectors": ["scored@mine"], "scenarios": {"four": {"nodes": 4}},
                     "fits": {"mine": {"scenario": "four", "seeds": [2]}}})

"""Determinism, benign faults, outputs, the import graph and the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bayes_defense.cli import main
from bayes_defense.sim import (
    FAULTS,
    AttackSpec,
    FaultSpec,
    Scenario,
    Simulation,
    random_scenario,
    run_to_events,
    simulate,
)
from bayes_defense.stream import SCHEMA_VERSION, read_events


def benign_scenario(seed=2):
    faults = [FaultSpec(kind, start=5.0 + 8 * i, duration=6.0) for i, kind in enumerate(FAULTS)]
    return Scenario(nodes=7, duration=60.0, seed=seed, faults=faults)


def test_same_seed_same_log_and_different_seed_different_log():
    first = list(run_to_events(random_scenario(4, nodes=4, duration=200, attacks=2, faults=2)))
    second = list(run_to_events(random_scenario(4, nodes=4, duration=200, attacks=2, faults=2)))
    assert first == second
    other = list(run_to_events(random_scenario(5, nodes=4, duration=200, attacks=2, faults=2)))
    assert other != first


def test_same_seed_same_files(tmp_path):
    scenario = benign_scenario()
    simulate(scenario, tmp_path / "a")
    simulate(scenario, tmp_path / "b")
    for name in ("events.jsonl", "labels.json", "faults.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_events_are_time_ordered_and_valid(tmp_path):
    result = simulate(random_scenario(1, nodes=4, duration=200, attacks=["sybil", "flooding"]), tmp_path)
    events = list(read_events(result.events_path))
    assert len(events) == result.events
    assert all(a.ts <= b.ts for a, b in zip(events, events[1:], strict=False))
    meta = json.loads(result.meta_path.read_text())
    assert meta["schema_version"] == SCHEMA_VERSION and meta["f"] == 1 and meta["seed"] == 1


def test_benign_faults_produce_no_attack_labels(tmp_path):
    scenario = benign_scenario()
    result = simulate(scenario, tmp_path)
    assert json.loads(result.labels_path.read_text()) == []
    faults = json.loads(result.faults_path.read_text())
    assert sorted(record["fault"] for record in faults) == sorted(FAULTS)
    assert result.safety_violations == 0
    events = list(read_events(result.events_path))
    assert any(e.kind == "restart" for e in events)


def test_labels_cover_every_attack_instance():
    scenario = random_scenario(9, nodes=7, duration=900, attacks=["slow_leader", "replay", "eclipse"], intensity=0.6)
    simulation = Simulation(scenario)
    for _ in simulation.events():
        pass
    labels = simulation.labels
    assert [label["attack"] for label in labels] == ["slow_leader", "replay", "eclipse"]
    for label, spec in zip(labels, scenario.attacks, strict=True):
        assert label["precursor_start"] < label["execution_start"] < label["end"] <= 900
        assert label["execution_start"] == spec.start and label["nodes"]
        assert set(label) >= {"attack", "nodes", "precursor_start", "execution_start", "end"}
    # Windows do not overlap, so each attack is separately identifiable.
    for a, b in zip(labels, labels[1:], strict=False):
        assert a["end"] <= b["precursor_start"]


def test_random_scenario_is_deterministic_and_valid():
    assert random_scenario(7).to_dict() == random_scenario(7).to_dict()
    assert random_scenario(7).to_dict() != random_scenario(8).to_dict()
    for seed in range(20):
        scenario = random_scenario(seed, nodes=10, duration=600)
        scenario.validate()
        assert 1 <= len(scenario.attacks) <= 2


FORBIDDEN = ("bayes_defense.models", "bayes_defense.causal", "bayes_defense.inference", "bayes_defense.planning",
             "bayes_defense.explain", "bayes_defense.fitting", "torch", "pyro")


def test_simulator_does_not_import_models_or_defender():
    # The package's own __init__ re-exports the causal API (and so loads torch);
    # stand a bare package in for it so that only what the simulator imports is loaded.
    code = (
        "import importlib.util, sys, types\n"
        "spec = importlib.util.find_spec('bayes_defense')\n"
        "package = types.ModuleType('bayes_defense')\n"
        "package.__path__ = list(spec.submodule_search_locations)\n"
        "sys.modules['bayes_defense'] = package\n"
        "import bayes_defense.sim, bayes_defense.sim.command\n"
        f"forbidden = {FORBIDDEN!r}\n"
        "stream_allowed = ('bayes_defense.stream', 'bayes_defense.stream.io', 'bayes_defense.stream.schema')\n"
        "bad = [m for m in sys.modules if m.startswith(forbidden)"
        " or (m.startswith('bayes_defense.stream') and m not in stream_allowed)]\n"
        "print(repr(sorted(bad)))\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "[]"


def test_simulator_source_imports_nothing_forbidden():
    """Static check of every import statement in the simulator's source."""
    import ast
    from pathlib import Path

    import bayes_defense.sim

    for path in Path(bayes_defense.sim.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert not name.startswith(FORBIDDEN), f"{path.name} imports {name}"
                if name.startswith("bayes_defense.stream"):
                    assert name in ("bayes_defense.stream.io", "bayes_defense.stream.schema"), f"{path.name} imports {name}"


def test_command_line_writes_log_and_labels(tmp_path, capsys):
    status = main(["simulate", "--nodes", "4", "--duration", "240", "--attack", "replay,sybil", "--benign", "crash",
                   "--seed", "3", "--out", str(tmp_path), "--format", "csv", "--json"])
    assert status == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["attacks"] == 2 and summary["faults"] == 1 and summary["events"] > 0
    labels = json.loads((tmp_path / "labels.json").read_text())
    assert [label["attack"] for label in labels] == ["replay", "sybil"]
    assert sum(1 for _ in read_events(tmp_path / "events.csv")) == summary["events"]


def test_command_line_reads_toml_config(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text(
        'nodes = 4\nduration = 100\nseed = 2\n'
        '[[attacks]]\nattack = "flooding"\nstart = 60\nprecursor = 30\nduration = 20\nintensity = 0.5\n'
        '[[faults]]\nkind = "jitter"\nstart = 10\nduration = 5\n'
    )
    assert main(["simulate", "--config", str(config), "--out", str(tmp_path / "out"), "--json"]) == 0
    labels = json.loads((tmp_path / "out" / "labels.json").read_text())
    assert labels[0]["attack"] == "flooding" and labels[0]["execution_start"] == 60 and labels[0]["intensity"] == 0.5


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--attack", "teleport"], "unknown attack 'teleport'; valid attacks are equivocation"),
        (["--duration", "-5"], "duration must be positive"),
        (["--nodes", "2"], "nodes must be between 4 and 100"),
        (["--benign", "meteor"], "unknown fault 'meteor'"),
    ],
)
def test_command_line_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, expected):
    assert main(["simulate", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1


def test_parquet_output_round_trips(tmp_path):
    scenario = Scenario(nodes=4, duration=20.0, seed=1, attacks=[AttackSpec("replay", start=10, precursor=5, duration=5)])
    result = simulate(scenario, tmp_path, fmt="parquet")
    assert list(read_events(result.events_path)) == list(run_to_events(scenario))

"""Scenario validation: bad configs fail with a clear one-line ConfigError."""

from __future__ import annotations

import json

import pytest

from bayes_defense.errors import ConfigError
from bayes_defense.sim import ATTACKS, Scenario, load_scenario


def attack(**overrides):
    spec = {"attack": "replay", "start": 100, "precursor": 60, "duration": 30}
    spec.update(overrides)
    return spec


@pytest.mark.parametrize(
    "config, message",
    [
        ({"attacks": [attack(attack="teleport")]}, "unknown attack 'teleport'; valid attacks are " + ", ".join(ATTACKS)),
        ({"nodes": 4, "attacks": [attack(count=3, colluders=2)]}, "more Byzantine replicas (5) than replicas (4)"),
        ({"attacks": [attack(duration=-1)]}, "durations must not be negative"),
        ({"attacks": [attack(precursor=-10)]}, "durations must not be negative"),
        ({"duration": -60}, "duration must be positive"),
        ({"faults": [{"kind": "crash", "start": 5, "duration": -2}]}, "duration must be positive"),
        ({"attacks": [attack(precursor=150)]}, "precursor starts before the run"),
        ({"attacks": [attack(start=290)]}, "after the run's duration"),
        ({"attacks": [attack(intensity=1.5)]}, "intensity must be in (0, 1]"),
        ({"nodes": 101}, "nodes must be between 4 and 100"),
        ({"nodez": 4}, "unknown scenario key(s) nodez"),
        ({"attacks": [attack(nodes=["r9"])]}, "r9 not a replica"),
        ({"faults": [{"kind": "meteor", "start": 1}]}, "unknown fault 'meteor'; valid faults are crash"),
        ({"attacks": [attack(attack="censorship", target="r1")]}, "target 'r1' is invalid"),
    ],
)
def test_bad_configs_raise_one_line_config_error(config, message):
    data = {"nodes": 7, "duration": 300}
    data.update(config)
    with pytest.raises(ConfigError) as info:
        Scenario.from_dict(data)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_toml_and_json_files_give_the_same_scenario(tmp_path):
    data = {"nodes": 7, "duration": 300, "seed": 4, "attacks": [attack(nodes=["r2"])],
            "faults": [{"kind": "crash", "start": 10, "duration": 5, "node": "r1"}]}
    (tmp_path / "a.json").write_text(json.dumps(data))
    (tmp_path / "a.toml").write_text(
        'nodes = 7\nduration = 300\nseed = 4\n'
        '[[attacks]]\nattack = "replay"\nstart = 100\nprecursor = 60\nduration = 30\nnodes = ["r2"]\n'
        '[[faults]]\nkind = "crash"\nstart = 10\nduration = 5\nnode = "r1"\n'
    )
    assert load_scenario(tmp_path / "a.json").to_dict() == load_scenario(tmp_path / "a.toml").to_dict()
    assert Scenario.from_dict(load_scenario(tmp_path / "a.json").to_dict()) == load_scenario(tmp_path / "a.json")


def test_unparseable_and_unknown_config_files(tmp_path):
    (tmp_path / "bad.toml").write_text("nodes = = 4")
    with pytest.raises(ConfigError, match="cannot parse bad.toml"):
        load_scenario(tmp_path / "bad.toml")
    (tmp_path / "x.yaml").write_text("nodes: 4")
    with pytest.raises(ConfigError, match="must end in .toml or .json"):
        load_scenario(tmp_path / "x.yaml")

"""Fixtures of the fit tests: small simulated incident logs, made once per session."""

import pytest

from bayes_defense.sim import AttackSpec, Scenario, simulate


@pytest.fixture(scope="session")
def replay_run(tmp_path_factory):
    """A 4-replica, 150 s run with one blatant replay attack (precursor 40 s, execution 30 s)."""
    scenario = Scenario(nodes=4, duration=150.0, seed=11,
                        attacks=[AttackSpec("replay", start=80.0, precursor=40.0, duration=30.0, intensity=1.0)])
    return simulate(scenario, tmp_path_factory.mktemp("replay_run"))

"""Where the benign faults' effects show (bayes_defense.models.faults), read through the filter's likelihood.

Jitter, a fault of the network, slows the primary's pre-prepares wherever
it is, and so does a slow primary (a fault of its own), so their explanation
of a delayed pre-prepare does not depend on how many replicas there are; a
crashed replica explains it only if it is the primary, one replica in ``R``
(until the fault chain has followed it there).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bayes_defense.models.faults import FAULTS
from bayes_defense.stream import evidence
from bayes_defense.stream.signals import SIGNALS, WindowSignals

_DELAY = SIGNALS.index("preprepare_delay")


def _delay_at_primary(replicas: int) -> WindowSignals:
    """Only the primary's pre-prepare delay is observed, and it is on (every other value unobserved)."""
    x = np.full((replicas + 1, len(SIGNALS)), np.nan)
    x[0, _DELAY] = 1.0
    return WindowSignals(tuple(f"r{i}" for i in range(replicas)), 0, x)


def _benign_log_ratio(fault: str, replicas: int) -> float:
    """log P(window | no attack, the fault under way) - log P(window | no attack, no fault)."""
    values = evidence.default_values()
    model = evidence.signal_tables(values)
    g = 1 + list(FAULTS).index(fault)
    with np.errstate(divide="ignore"):
        only_fault = np.log(np.eye(len(FAULTS) + 1)[g])[None, :]
        no_fault = np.log(np.eye(len(FAULTS) + 1)[0])[None, :]
    window = _delay_at_primary(replicas)
    with_fault = evidence.window_log_likelihood(model, window, log_fault_prior=only_fault)
    without = evidence.window_log_likelihood(model, window, log_fault_prior=no_fault)
    return float(with_fault[0, 0, 0] - without[0, 0, 0])


@pytest.mark.parametrize("fault", ["jitter", "slow_primary"])
def test_a_network_fault_explains_the_primarys_delay_at_any_cluster_size(fault):
    assert "preprepare_delay" in FAULTS[fault].cluster and "preprepare_delay" not in FAULTS[fault].at_node
    base = evidence.parameter_names()["telemetry.preprepare_delay.baseline"]
    effect = FAULTS[fault].cluster["preprepare_delay"]
    exact = math.log(1.0 - (1.0 - base) * (1.0 - effect)) - math.log(base)
    for replicas in (4, 7, 25):
        assert _benign_log_ratio(fault, replicas) == pytest.approx(exact, rel=1e-12)


def test_a_crashed_replica_explains_the_primarys_delay_only_as_the_primary():
    base = evidence.parameter_names()["telemetry.preprepare_delay.baseline"]
    effect = FAULTS["crash"].at_node["preprepare_delay"]
    for replicas in (4, 7, 25):
        # The crashed replica is the primary with probability 1 / R, and then the delay is the noisy-OR's.
        on = (1.0 - (1.0 - base) * (1.0 - effect)) / replicas + base * (replicas - 1) / replicas
        assert _benign_log_ratio("crash", replicas) == pytest.approx(math.log(on / base), rel=1e-12)

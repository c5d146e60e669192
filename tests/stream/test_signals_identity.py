"""The signal extractor's windows and state match a frozen copy of its pre-optimisation code, bit for bit.

:class:`ReferenceExtractor` holds the per-event and per-window methods of
:class:`~bayes_defense.stream.signals.SignalExtractor` as they were before
their speed-ups (commit 83b0525); the optimised extractor must give the same
:class:`~bayes_defense.stream.signals.WindowSignals` and the same
``state_dict()`` after every window of a few simulated logs, schema and
plenum.

The copy repeats the extractor's code on purpose (``duplicates`` lists it): it
is the oracle of a speed-up, not a second model. A change that means to alter
the extractor's output replaces the reference with the new code in the same
commit, and says so.
"""

from __future__ import annotations

import importlib.util
import math
import statistics
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from scipy.special import pdtrc

from bayes_defense.sim import random_scenario
from bayes_defense.sim.engine import Simulation
from bayes_defense.stream.model_filter import ModelDefender
from bayes_defense.stream.obsmap import ObservationMap
from bayes_defense.stream.schema import finite_float
from bayes_defense.stream.signals import (
    _CLIENT_VALUE_KINDS,
    _INDEX,
    _INERT_KINDS,
    _MAX_DIGESTS,
    _MAX_PREFIXES,
    _MAX_REPLICAS,
    _MAX_SERIES,
    _MIN_COUNT_MEAN,
    _MIN_RELATIVE_SPREAD,
    _SCALARS,
    _TELEMETRY_SET,
    _Z,
    JOIN_MEMORY,
    SIGNALS,
    TAIL,
    WARMUP_WINDOWS,
    SignalExtractor,
    WindowSignals,
)

_CONVERTER = Path(__file__).resolve().parents[2] / "papers" / "plenum_log.py"


class ReferenceExtractor(SignalExtractor):
    """The extractor's methods as they were before the speed-ups (do not edit: it is the reference)."""

    def _replica(self, node: str) -> None:
        # The set beside the list makes the per-event test one lookup, not a scan of the replicas.
        if node not in self._replica_set and len(self.replicas) < _MAX_REPLICAS:
            pattern = self.replica_pattern
            if pattern is None or pattern.search(node):
                self.replicas.append(node)
                self._replica_set.add(node)

    def _value(self, key: tuple[str, str], value: float) -> None:
        # [last value, sum, count]: bounded per series however many events a window holds.
        found = self.values.get(key)
        if found is None:
            if len(self.values) < _MAX_SERIES:
                self.values[key] = [value, value, 1.0]
        else:
            found[0] = value
            found[1] += value
            found[2] += 1.0

    def ingest(self, ts: float, node: str, kind: str, value: float | None, attrs: Mapping) -> None:
        """Fold one (mapped) event into the open window."""
        # Any event from a node shows it is alive (a log without per-second telemetry, such as
        # plenum's, still says who is silent).
        if len(self.reporting) < _MAX_SERIES:
            self.reporting.add(node)
        if kind in _TELEMETRY_SET:
            self._replica(node)
            self.reporting.add(node)
            if value is not None:
                self._value((node, kind), float(value))
            if kind == "source_rate_max":
                source = attrs.get("source")
                if isinstance(source, str):
                    self.sources[node] = source
            elif kind == "preprepare_interval":
                primary = attrs.get("primary")
                if isinstance(primary, str):
                    self.primary = primary
            elif kind == "peer_diversity":
                # finite_float: an integer too large for a float (10**400) is no count, not a crash.
                peers = None if isinstance(attrs.get("peers"), bool) else finite_float(attrs.get("peers"))
                if peers is not None:
                    self.peers[node] = peers
        elif kind in ("request_latency", "throughput"):
            if value is not None:
                # Clients pooled: their median is taken over the values of the window.
                self._value((node, kind), float(value))
        elif kind == "preprepare":
            primary = attrs.get("primary")
            if isinstance(primary, str):
                self.primary = primary
            view, seq, digest = attrs.get("view"), attrs.get("seq", value), attrs.get("digest")
            if not all(isinstance(x, _SCALARS) for x in (view, seq, digest)):
                return
            key = (view, seq)
            seen = self.digests.get(key)
            if seen is None:
                self.digests[key] = digest
                if len(self.digests) > _MAX_DIGESTS:
                    self.digests.popitem(last=False)
            elif seen != digest and isinstance(primary, str):
                self.flags.add(("conflicting", primary))
        elif kind == "view_change":
            self.view_changes[node] = self.view_changes.get(node, 0.0) + 1.0
        elif kind == "new_view":
            primary = attrs.get("primary")
            if isinstance(primary, str):
                self.primary = primary
        elif kind == "join":
            if attrs.get("role") == "peer":
                victim = attrs.get("peer_of")
                if isinstance(victim, str) and len(self.peer_joins) < _MAX_REPLICAS:
                    self.peer_joins[victim] = self.peer_joins.get(victim, 0.0) + 1.0
            else:
                prefix = attrs.get("prefix")
                if not isinstance(prefix, str):
                    return
                seen = self.prefixes.pop(prefix, None)
                if seen is not None and ts - seen <= JOIN_MEMORY and (prefix in self.joins
                                                                      or len(self.joins) < _MAX_REPLICAS):
                    self.joins[prefix] = self.joins.get(prefix, 0.0) + 1.0
                self.prefixes[prefix] = ts
                if len(self.prefixes) > _MAX_PREFIXES:
                    self.prefixes.popitem(last=False)
        elif kind == "restart":
            self.flags.add(("restart_seen", node))
        elif kind == "request_stalled":
            self.flags.add(("liveness_lost", ""))
            client = attrs.get("client")
            if isinstance(client, str) and len(self.stalled) < _MAX_REPLICAS:
                self.stalled.add(client)
        elif kind == "safety_violation":
            self.flags.add(("safety_violated", ""))
        elif kind.startswith("signal:"):
            name = kind[7:]
            if name in _INDEX and len(self.direct) < _MAX_SERIES:
                self.direct[(node, name)] = self.direct.get((node, name), 0.0) + (1.0 if value is None else abs(value))

    def ingest_many(self, ts: list, node: list, kind: list, value: list, attrs: list) -> None:
        """Fold many (mapped) events of the open window in, in order: the state :meth:`ingest` on each leaves.

        The rows' effects that depend on their order are kept in it: the
        series' values (last, running sum, first-seen order of the series),
        the replicas' first-seen order, the digests per (view, seq) and the
        latest primary named; every row's node reports. Rare kinds go through
        :meth:`ingest` row by row. Near the bounds on series and reporting
        nodes every row does.

        Examples
        --------
        >>> a, b = SignalExtractor(), SignalExtractor()
        >>> rows = [(0.5, "r1", "preprepare_interval", 0.1, {"primary": "r0"}), (0.6, "r1", "commit", 4.0, {}),
        ...         (0.7, "r0", "new_view", 1.0, {"primary": "r1"}), (0.8, "r1", "preprepare_interval", 0.3, {})]
        >>> for row in rows:
        ...     a.ingest(*row)
        >>> b.ingest_many(*map(list, zip(*rows)))
        >>> a.state_dict() == b.state_dict(), b.primary, b.values[("r1", "preprepare_interval")]
        (True, 'r1', [0.3, 0.4, 2.0])
        """
        reporting, values = self.reporting, self.values
        if len(reporting) + len(node) >= _MAX_SERIES or len(values) + len(node) >= _MAX_SERIES:
            for row in zip(ts, node, kind, value, attrs, strict=True):
                self.ingest(*row)
            return
        reporting.update(node)
        telemetry, replica_set = _TELEMETRY_SET, self._replica_set
        digests, flags, sources, peers = self.digests, self.flags, self.sources, self.peers
        primary_row, primary = -1, None
        rare = []
        for i, kind_i in enumerate(kind):
            if kind_i in _INERT_KINDS:
                continue
            if kind_i in telemetry or kind_i in _CLIENT_VALUE_KINDS:
                node_i, value_i = node[i], value[i]
                if kind_i in telemetry and node_i not in replica_set:
                    self._replica(node_i)
                if value_i is not None:
                    value_i = float(value_i)
                    found = values.get((node_i, kind_i))
                    if found is None:
                        values[(node_i, kind_i)] = [value_i, value_i, 1.0]
                    else:
                        found[0] = value_i
                        found[1] += value_i
                        found[2] += 1.0
                if kind_i == "source_rate_max":
                    source = attrs[i].get("source")
                    if isinstance(source, str):
                        sources[node_i] = source
                elif kind_i == "preprepare_interval":
                    named = attrs[i].get("primary")
                    if isinstance(named, str):
                        primary_row, primary = i, named
                elif kind_i == "peer_diversity":
                    count = attrs[i].get("peers")
                    count = None if isinstance(count, bool) else finite_float(count)
                    if count is not None:
                        peers[node_i] = count
            elif kind_i == "preprepare":
                attrs_i = attrs[i]
                named = attrs_i.get("primary")
                if isinstance(named, str):
                    primary_row, primary = i, named
                view, seq, digest = attrs_i.get("view"), attrs_i.get("seq", value[i]), attrs_i.get("digest")
                if not (isinstance(view, _SCALARS) and isinstance(seq, _SCALARS) and isinstance(digest, _SCALARS)):
                    continue
                key = (view, seq)
                seen = digests.get(key)
                if seen is None:
                    digests[key] = digest
                    if len(digests) > _MAX_DIGESTS:
                        digests.popitem(last=False)
                elif seen != digest and isinstance(named, str):
                    flags.add(("conflicting", named))
            else:
                rare.append(i)
        for i in rare:
            self.ingest(ts[i], node[i], kind[i], value[i], attrs[i])
            if kind[i] == "new_view" and isinstance(attrs[i].get("primary"), str) and i > primary_row:
                primary_row, primary = i, attrs[i]["primary"]
        if primary is not None:
            self.primary = primary

    def _series(self, key: str) -> list[float]:
        found = self.baselines.get(key)
        if found is None:
            found = [math.nan, 0.0, 0.0]
            if len(self.baselines) < _MAX_SERIES:
                self.baselines[key] = found
        return found

    def _continuous(self, key: str, value: float, lower: bool = False) -> float:
        """Indicator of ``value`` beyond the 1 % tail of series ``key``; updates the series."""
        state = self._series(key)
        mean, square, seen = state
        if seen == 0 or mean != mean:
            state[:] = [value, 0.0, 1.0]
            return math.nan
        spread = math.sqrt(max(square, (_MIN_RELATIVE_SPREAD * abs(mean)) ** 2, 1e-12))
        z = (value - mean) / spread
        on = (z < -_Z) if lower else (z > _Z)
        # An anomalous window teaches the baseline a tenth as much: an attack is not the new normal
        # until it stays for many windows.
        weight = self.rate * (0.1 if on else 1.0) if seen >= WARMUP_WINDOWS else 1.0 / (seen + 1.0)
        deviation = value - mean
        state[0] = mean + weight * deviation
        state[1] = (1.0 - weight) * (square + weight * deviation * deviation)
        state[2] = seen + 1.0
        return float(on) if seen >= WARMUP_WINDOWS else math.nan

    def _counts(self, keys: list[str], counts: list[float]) -> list[float]:
        """Poisson upper-tail indicators of ``counts`` against the series ``keys``; updates them."""
        if not keys:
            return []
        states = [self._series(key) for key in keys]
        means = np.array([max(s[0] if s[0] == s[0] else 0.0, _MIN_COUNT_MEAN) for s in states])
        x = np.array(counts)
        tail = pdtrc(np.maximum(np.ceil(x) - 1.0, -1.0), means)   # P(X >= x)
        out = []
        for state, count, p in zip(states, counts, tail.tolist(), strict=True):
            seen = state[2]
            on = count > 0 and p < TAIL
            mean = state[0] if state[0] == state[0] else count
            weight = self.rate * (0.1 if on else 1.0) if seen >= WARMUP_WINDOWS else 1.0 / (seen + 1.0)
            state[0] = mean + weight * (count - mean)
            state[2] = seen + 1.0
            out.append(float(on) if seen >= WARMUP_WINDOWS else math.nan)
        return out

    def close(self) -> WindowSignals:
        """End the open window; return its signals and start the next."""
        replicas = self.replicas
        rows = {name: i for i, name in enumerate(replicas)}
        unattributed = len(replicas)
        out = np.full((unattributed + 1, len(SIGNALS)), np.nan)
        primary = rows.get(self.primary, -1)
        values = self.values

        def median(kind: str) -> float | None:
            found = [v[0] for (node, k), v in values.items() if k == kind and node in rows]
            return statistics.median(found) if found else None

        def total(kind: str) -> float | None:
            # A count kind the log has carried before counts zero in a window without it (a log of
            # one event per message says nothing in a quiet window); one it never carried is unobserved.
            found = [v[1] for (node, k), v in values.items() if k == kind and node in rows]
            if found:
                if len(self.kinds_seen) < 64:
                    self.kinds_seen.add(kind)
                return float(sum(found))
            return 0.0 if kind in self.kinds_seen else None

        # Rates and delays, pooled over the replicas that report them.
        rate = median("source_rate_max")
        if rate is not None:
            on = self._continuous("cluster|source_rate_max", rate)
            column = _INDEX["msg_rate"]
            out[:unattributed, column] = 0.0 if on == on else np.nan
            if self.sources:
                ranked = sorted(self.sources.values())
                source = max(ranked, key=ranked.count)
                # A busiest source that is no replica (a client) is the load-spike look-alike: no
                # replica's rate is up, and the model's flooding by a replica is not in view.
                if source in rows:
                    out[rows[source], column] = on
        delay = median("preprepare_interval")
        if delay is not None:
            on = self._continuous("cluster|preprepare_interval", delay)
            out[primary if primary >= 0 else unattributed, _INDEX["preprepare_delay"]] = on
        # Unattributed counts: the sum over receivers is Poisson when each receiver's count is.
        keys, counts, columns = [], [], []
        for kind, signal in (("auth_failures", "mac_fail"), ("instance_change_requests", "ic_request"),
                             ("duplicate_messages", "duplicates"), ("stale_messages", "stale")):
            found = total(kind)
            if found is not None:
                keys.append(f"cluster|{kind}")
                counts.append(found)
                columns.append((unattributed, _INDEX[signal]))
        if self.joins or replicas:
            keys.append("cluster|joins")
            counts.append(sum(self.joins.values()))
            columns.append((unattributed, _INDEX["join_rate"]))
        # A view change the cluster joins (f + 1 senders or more, PBFT 4.4's join rule) is the protocol at
        # work, not n replicas' evidence: one VIEW-CHANGE per sender is its share, the rest the sender's own.
        senders = sum(1 for name in rows if self.view_changes.get(name, 0.0) > 0)
        joined = float(senders >= len(replicas) // 3 + 1) if replicas else 0.0
        # Per-replica counts: VIEW-CHANGE by sender, peer joins and churn at the replica whose table it is.
        for name, row in rows.items():
            if name not in self.reporting and name not in self.view_changes:
                continue
            keys.append(f"{name}|view_change")
            counts.append(max(self.view_changes.get(name, 0.0) - joined, 0.0))
            columns.append((row, _INDEX["vc_request"]))
            churn = values.get((name, "peer_churn"))
            keys.append(f"{name}|peer_in")
            counts.append(self.peer_joins.get(name, 0.0) + (churn[1] if churn else 0.0))
            columns.append((row, _INDEX["peer_in_degree"]))
        for (row, column), on in zip(columns, self._counts(keys, counts), strict=True):
            out[row, column] = on
        # Peer tables: a table that shrank lost links; one that kept its size but lost diversity is eclipsed.
        lost, diversity = _INDEX["peers_lost"], _INDEX["low_peer_diversity"]
        for name, row in rows.items():
            peers = self.peers.get(name)
            if peers is None:
                continue
            norm = self.peer_norm.get(name)
            shrank = norm is not None and peers < 0.9 * norm
            out[row, lost] = float(shrank)
            found = values.get((name, "peer_diversity"))
            if found:
                on = self._continuous(f"{name}|peer_diversity", found[0], lower=True)
                out[row, diversity] = 0.0 if shrank and on == on else on
            if norm is None:
                if len(self.peer_norm) < _MAX_REPLICAS:
                    self.peer_norm[name] = peers
            elif not shrank:
                self.peer_norm[name] = norm + 0.05 * (peers - norm)
        # Who stayed silent: a replica that reported before and sent nothing in this window.
        silent = _INDEX["silent"]
        for name, row in rows.items():
            out[row, silent] = 0.0 if name in self.reporting else 1.0
        # Protocol facts.
        for column in (_INDEX["conflicting"], _INDEX["restart_seen"]):
            out[:unattributed, column] = 0.0
        for signal, node in self.flags:
            if signal in ("liveness_lost", "safety_violated"):
                continue
            out[rows.get(node, unattributed), _INDEX[signal]] = 1.0
        for outcome in ("liveness_lost", "safety_violated"):
            out[unattributed, _INDEX[outcome]] = float((outcome, "") in self.flags) if replicas else np.nan
        self._starved(out, primary if primary >= 0 else unattributed)
        # Clients: latency up, throughput down, pooled over clients.
        for kind, signal, lower in (("request_latency", "latency_high", False), ("throughput", "throughput_low", True)):
            found = [v[1] / v[2] for (node, k), v in values.items() if k == kind]
            if found:
                out[unattributed, _INDEX[signal]] = self._continuous(f"cluster|{kind}", statistics.median(found),
                                                                     lower=lower)
        # Signals an observation map names directly (plenum's suspicion codes).
        for (node, name), _count in self.direct.items():
            out[rows.get(node, unattributed), _INDEX[name]] = 1.0
        self._clear_window()
        return WindowSignals(tuple(replicas), primary, out)

    def _starved(self, out: np.ndarray, row: int) -> None:
        """``client_starved`` at ``row``: the slowest client against the others, and stalls of a few clients."""
        # Clients only: a log whose replicas report their own latency (plenum's monitor) says nothing of
        # one client's requests.
        replicas = self._replica_set
        latency = {node: v[1] / v[2] for (node, k), v in self.values.items()
                   if k == "request_latency" and v[2] > 0 and node not in replicas}
        clients = set(latency) | {node for (node, k) in self.values if k == "throughput" and node not in replicas}
        on = math.nan
        if len(latency) >= 2:
            ranked = sorted(latency.values())
            others = statistics.median(ranked[:-1])
            if others > 0 and math.isfinite(ranked[-1] / others):
                on = self._continuous("cluster|client_latency_ratio", ranked[-1] / others)
        if self.stalled and 2 * len(self.stalled) < len(clients | self.stalled):
            on = 1.0
        out[row, _INDEX["client_starved"]] = on


class _Recorder(SignalExtractor):
    """The defender's extractor, logging the calls the defender makes (outermost calls only)."""

    def __init__(self, *args, **kwargs) -> None:
        self.calls: list = []
        self._depth = 0
        super().__init__(*args, **kwargs)

    def ingest(self, *args) -> None:
        if self._depth == 0:
            self.calls.append(("ingest", args))
        self._depth += 1
        try:
            super().ingest(*args)
        finally:
            self._depth -= 1

    def ingest_many(self, *args) -> None:
        if self._depth == 0:
            self.calls.append(("ingest_many", tuple(list(a) for a in args)))
        self._depth += 1
        try:
            super().ingest_many(*args)
        finally:
            self._depth -= 1

    def close(self) -> WindowSignals:
        self.calls.append(("close", ()))
        return super().close()


def _plain(x):
    """``x`` as comparable plain data: floats by their bits (nan equal to nan), sets sorted, order kept."""
    if isinstance(x, float):
        return ("nan",) if x != x else ("float", x.hex())
    if isinstance(x, Mapping):
        return ("map", [(_plain(k), _plain(v)) for k, v in x.items()])
    if isinstance(x, (set, frozenset)):
        return ("set", sorted(repr(_plain(v)) for v in x))
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, [_plain(v) for v in x])
    return (type(x).__name__, x)


def _same_window(new: WindowSignals, old: WindowSignals) -> None:
    assert new.replicas == old.replicas
    assert new.primary == old.primary
    assert new.values.shape == old.values.shape and new.values.dtype == old.values.dtype
    assert np.array_equal(new.values, old.values, equal_nan=True)
    assert np.array_equal(np.signbit(new.values), np.signbit(old.values))


def _calls(events, observation_map=None):
    defender = ModelDefender(planner=None, observation_map=observation_map)
    old = defender._extractor
    defender._extractor = _Recorder(old.rate, old.replica_pattern)
    defender.observe_batch(events)
    defender.flush()
    return defender._extractor.calls, old.rate, old.replica_pattern


def _replay(calls, rate, pattern) -> int:
    new, old = SignalExtractor(rate, pattern), ReferenceExtractor(rate, pattern)
    windows = 0
    for method, args in calls:
        if method == "close":
            _same_window(new.close(), old.close())
            assert _plain(new.state_dict()) == _plain(old.state_dict())
            windows += 1
        else:
            getattr(new, method)(*args)
            getattr(old, method)(*args)
    assert _plain(new.state_dict()) == _plain(old.state_dict())
    return windows


_LOGS = [
    (3, 4, 200.0, ["equivocation", "sybil"], ["crash", "restart"]),
    (11, 7, 200.0, ["flooding", "eclipse"], ["partition", "load_spike", "slow"]),
    (17, 7, 200.0, ["view_change_abuse", "slow_leader", "censorship"], ["jitter"]),
    (29, 4, 200.0, ["replay"], ["restart", "partition"]),
]


@pytest.mark.parametrize("seed, nodes, duration, attacks, faults", _LOGS)
def test_windows_and_state_match_the_reference(seed, nodes, duration, attacks, faults):
    simulation = Simulation(random_scenario(seed, nodes=nodes, duration=duration, attacks=attacks, faults=faults))
    calls, rate, pattern = _calls(list(simulation.events()))
    assert _replay(calls, rate, pattern) > 100


def test_plenum_windows_and_state_match_the_reference():
    spec = importlib.util.spec_from_file_location("plenum_log", _CONVERTER)
    converter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(converter)
    simulation = Simulation(random_scenario(21, nodes=4, duration=240.0, attacks=["equivocation", "replay"],
                                            faults=["crash"], intensity=0.9))
    events = sorted(converter.to_plenum(list(simulation.events()), 4), key=lambda e: e.ts)
    calls, rate, pattern = _calls(events, ObservationMap.load("plenum"))
    assert pattern is not None and any(method == "ingest" and args[2] == "commit" for method, args in calls)
    assert _replay(calls, rate, pattern) > 100


def _synthetic_calls(seed: int, windows: int = 150) -> list:
    """Random events of every kind the extractor reads (direct signals, stalls, joins, peers), per window."""
    rng = np.random.default_rng(seed)
    replicas = [f"r{i}" for i in range(5)]
    nodes = replicas + ["c0", "c1", "c2"]
    kinds = ["source_rate_max", "preprepare_interval", "auth_failures", "instance_change_requests",
             "duplicate_messages", "stale_messages", "peer_diversity", "peer_churn", "request_latency",
             "throughput", "preprepare", "view_change", "new_view", "join", "restart", "request_stalled",
             "safety_violation", "signal:conflicting", "signal:mac_fail", "commit"]
    calls = []
    for w in range(windows):
        rows = []
        for _ in range(int(rng.integers(0, 60))):
            kind = kinds[int(rng.integers(len(kinds)))]
            node = nodes[int(rng.integers(len(nodes)))]
            value = None if rng.random() < 0.1 else float(rng.poisson(2.0) if rng.random() < 0.5 else rng.random())
            attrs = {"source": nodes[int(rng.integers(len(nodes)))], "primary": replicas[int(rng.integers(2))],
                     "peers": float(rng.integers(3, 9)), "view": int(rng.integers(2)),
                     "seq": int(rng.integers(40)), "digest": str(rng.integers(3)),
                     "role": "peer" if rng.random() < 0.5 else "client", "peer_of": replicas[int(rng.integers(5))],
                     "prefix": f"10.{int(rng.integers(4))}", "client": nodes[5 + int(rng.integers(3))]}
            rows.append((w + rng.random(), node, kind, value, attrs))
        if w % 2:
            calls.append(("ingest_many", tuple(list(column) for column in zip(*rows, strict=True)) if rows else ([],) * 5))
        else:
            calls.extend(("ingest", row) for row in rows)
        calls.append(("close", ()))
    return calls


@pytest.mark.parametrize("seed", [0, 1])
def test_synthetic_windows_and_state_match_the_reference(seed):
    assert _replay(_synthetic_calls(seed), 0.02, None) == 150

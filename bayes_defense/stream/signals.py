"""Per-window signals: schema-1.0 telemetry (after the observation map) as the model's indicator signals.

Each window, the telemetry of the log becomes the catalogue's signals
(:data:`bayes_defense.models.TELEMETRY`, ``join_rate``), the benign faults'
own signals (:data:`bayes_defense.models.faults.FAULT_SIGNALS`) and the
cluster outcomes read as signals, as 0/1 indicators with ``nan`` for "not
observed in this window". An indicator is on when its value crosses the
99th percentile of its benign distribution, the catalogue's convention, so
the model's benign rates mean what they say:

- a rate or a duration is compared with an exponentially weighted mean and
  variance of its own past (a Normal upper tail of 1 %);
- a count is compared with a Poisson distribution of its exponentially
  weighted mean (upper tail below 1 %); a count whose mean is zero turns on
  at its first event, as a protocol fact should;
- ``client_starved`` compares the slowest client's mean latency with the
  median of the other clients' (a ratio, the continuous rule above), and is
  also on when requests stall for fewer than half of the clients that
  reported (one client starved while the others commit; a stalled primary
  stalls every client); latencies the replicas report of themselves do not
  count (the signal is about clients);
- ``join_rate`` counts the joins of a window whose network prefix (attrs
  ``prefix``) already joined within :data:`JOIN_MEMORY` seconds, with the
  count rule above: ordinary joins come from diverse networks, so their
  benign count is near zero, while a Sybil's identities share one origin
  (joins without a prefix cannot show that and are not counted);
- protocol proofs are indicators directly: two digests for one (view, seq)
  from the primary turn ``conflicting`` on at the primary, a logged restart
  turns ``restart_seen`` on, a peer table that shrank turns ``peers_lost``
  on, a request stalled past its timer turns ``liveness_lost`` on.

Where a signal shows: :attr:`WindowSignals.values` has one row per replica
and one last row for evidence whose sender the log does not name (receivers
count duplicates, stale messages, authentication failures and INSTANCE_CHANGE
votes without saying from whom; cluster outcomes and joins belong to no
replica). The model reads that last row as the attacker's replica for the
attackers' own signals and as the fault's replica for the faults' (its
identity is summed out like the others': an unattributed signal is evidence
about *some* replica, whichever it is).

Attribution of the schema-1.0 kinds (the default observation map):

============================  ===============================  ==========================
signal                        from                             row
============================  ===============================  ==========================
``msg_rate``                  ``source_rate_max`` (median)     the busiest source
``preprepare_delay``          ``preprepare_interval`` (median)  the primary
``mac_fail``                  ``auth_failures`` (sum)          unattributed
``vc_request``                ``view_change`` events beyond    the sender
                              one per sender in a view change
                              that f + 1 replicas join
``ic_request``                ``instance_change_requests``     unattributed
``duplicates`` / ``stale``    ``duplicate_messages`` / ...     unattributed
``conflicting``               two digests in ``preprepare``    the primary
``peer_in_degree``            peer ``join``\\s, ``peer_churn``  the replica whose table
``low_peer_diversity``        ``peer_diversity`` drop          the replica
``join_rate``                 repeated-prefix client ``join``  unattributed
``client_starved``            per-client latency, stalls       the primary
``peers_lost``                ``peer_diversity`` attr peers    the replica
``restart_seen``              ``restart``                      the replica
``silent``                    no telemetry in the window       the replica
outcomes                      client telemetry, stalls         unattributed
============================  ===============================  ==========================

A kind that an observation map sends to a model signal directly
(``as = "conflicting"`` for plenum's ``PPR_DIGEST_WRONG``) arrives as
``signal:<name>``; it turns the signal on at the replica the event names.

Examples
--------
>>> from bayes_defense.stream.signals import SIGNALS, SignalExtractor
>>> extractor = SignalExtractor()
>>> for w in range(30):
...     for r in ("r0", "r1", "r2", "r3"):
...         extractor.ingest(w + 0.5, r, "duplicate_messages", 0.0, {})
...     window = extractor.close()
>>> extractor.ingest(30.5, "r1", "duplicate_messages", 40.0, {})
>>> window = extractor.close()
>>> window.replicas, float(window.values[-1, SIGNALS.index("duplicates")])
(('r0', 'r1', 'r2', 'r3'), 1.0)
"""

from __future__ import annotations

import math
import statistics
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import pdtrc

from bayes_defense.models.catalogue import TELEMETRY
from bayes_defense.models.faults import FAULT_SIGNALS, OUTCOME_SIGNALS
from bayes_defense.stream.schema import PROTOCOL_KINDS, TELEMETRY_KINDS, finite_float

__all__ = ["SIGNALS", "TAIL", "WARMUP_WINDOWS", "JOIN_MEMORY", "WindowSignals", "SignalExtractor", "signal_index"]

#: Every signal of the model filter, in column order: the catalogue's telemetry, ``join_rate``,
#: the faults' own signals, then the cluster outcomes.
SIGNALS: tuple[str, ...] = (tuple(t.name for t in TELEMETRY) + ("join_rate",) + tuple(FAULT_SIGNALS)
                            + tuple(OUTCOME_SIGNALS))
_INDEX = {name: i for i, name in enumerate(SIGNALS)}

#: Benign tail probability at which an indicator turns on (the catalogue's 99th percentile).
TAIL = 0.01
_Z = statistics.NormalDist().inv_cdf(1.0 - TAIL)
#: Windows a series must have been seen before its indicator counts (until then: not observed).
WARMUP_WINDOWS = 20
# Smallest Poisson mean: a count that has never been seen turns on at its first event.
_MIN_COUNT_MEAN = 0.005
# Smallest spread of a continuous series relative to its mean (a constant series must not
# make every rounding step an anomaly).
_MIN_RELATIVE_SPREAD = 0.05
#: Seconds a client join's network prefix is remembered: a later join from it counts in ``join_rate``
#: (about one incident window, the precursor's length over which a Sybil's identities arrive).
JOIN_MEMORY = 120.0
_MAX_REPLICAS = 100
_MAX_PREFIXES = 4096
_MAX_SERIES = 8192
_MAX_DIGESTS = 512
_SCALARS = (str, int, float, bool)


def signal_index(name: str) -> int:
    """Column of signal ``name`` in :attr:`WindowSignals.values`.

    Examples
    --------
    >>> signal_index("msg_rate")
    0
    """
    try:
        return _INDEX[name]
    except KeyError:
        raise KeyError(f"unknown signal {name!r}; the model's signals are {', '.join(SIGNALS)}") from None


@dataclass(frozen=True)
class WindowSignals:
    """The signals of one window.

    Attributes
    ----------
    replicas : tuple of str
        The replicas known so far, in first-seen order (the rows).
    primary : int
        Row of the current primary, -1 when the log has not named it.
    values : ndarray (len(replicas) + 1, len(SIGNALS))
        1.0 on, 0.0 off, ``nan`` not observed; the last row is unattributed evidence.
    """

    replicas: tuple
    primary: int
    values: np.ndarray


class SignalExtractor:
    """Turns the events of each window into :class:`WindowSignals`, with bounded memory.

    Parameters
    ----------
    rate : float
        Weight of a new window in the exponentially weighted baselines.
    replica_pattern : compiled regex, optional
        Which node names are replicas; default: every node that sends replica telemetry.
    """

    def __init__(self, rate: float = 0.02, replica_pattern: Any = None) -> None:
        self.rate = float(rate)
        self.replica_pattern = replica_pattern
        self.reset()

    def reset(self) -> None:
        """Forget everything seen."""
        self.replicas: list[str] = []
        self._replica_set: set = set()
        self.primary = ""
        self.baselines: dict[str, list[float]] = {}   # series -> [mean, mean square deviation, windows seen]
        self.digests: OrderedDict = OrderedDict()
        self.peer_norm: dict[str, float] = {}
        self.kinds_seen: set = set()
        self.prefixes: OrderedDict = OrderedDict()   # network prefix -> ts of its latest client join
        self._clear_window()

    def _clear_window(self) -> None:
        self.values: dict[tuple[str, str], list[float]] = {}   # (node, kind) -> values this window
        self.sources: dict[str, str] = {}
        self.peers: dict[str, float] = {}
        self.view_changes: dict[str, float] = {}
        self.peer_joins: dict[str, float] = {}
        self.joins: dict[str, float] = {}
        self.stalled: set = set()
        self.direct: dict[tuple[str, str], float] = {}
        self.flags: set = set()   # ("conflicting", primary), ("restart_seen", node), ("liveness_lost", ""), ...
        self.reporting: set = set()

    # ------------------------------------------------------------- events
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

    # ------------------------------------------------------------ windows
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
        # One pass groups the window's series of the kinds read below by kind (in their first-seen order,
        # which the sums and a median over nan keep), instead of a scan of every series per kind.
        by_kind: dict[str, list] = {}
        for (node, k), v in values.items():
            if k in _GROUPED_KINDS:
                group = by_kind.get(k)
                if group is None:
                    by_kind[k] = [(node, v)]
                else:
                    group.append((node, v))

        def median(kind: str) -> float | None:
            found = [v[0] for node, v in by_kind.get(kind, ()) if node in rows]
            return statistics.median(found) if found else None

        def total(kind: str) -> float | None:
            # A count kind the log has carried before counts zero in a window without it (a log of
            # one event per message says nothing in a quiet window); one it never carried is unobserved.
            found = [v[1] for node, v in by_kind.get(kind, ()) if node in rows]
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
        for kind, signal in _COUNT_SIGNALS:
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
        self._starved(out, primary if primary >= 0 else unattributed, by_kind)
        # Clients: latency up, throughput down, pooled over clients.
        for kind, signal, lower in (("request_latency", "latency_high", False), ("throughput", "throughput_low", True)):
            found = [v[1] / v[2] for _node, v in by_kind.get(kind, ())]
            if found:
                out[unattributed, _INDEX[signal]] = self._continuous(f"cluster|{kind}", statistics.median(found),
                                                                     lower=lower)
        # Signals an observation map names directly (plenum's suspicion codes).
        for (node, name), _count in self.direct.items():
            out[rows.get(node, unattributed), _INDEX[name]] = 1.0
        self._clear_window()
        return WindowSignals(tuple(replicas), primary, out)

    def _starved(self, out: np.ndarray, row: int, by_kind: Mapping[str, list]) -> None:
        """``client_starved`` at ``row``: the slowest client against the others, and stalls of a few clients.

        ``by_kind`` holds the window's ``(node, series)`` pairs of each kind, in first-seen order.
        """
        # Clients only: a log whose replicas report their own latency (plenum's monitor) says nothing of
        # one client's requests.
        replicas = self._replica_set
        latency = {node: v[1] / v[2] for node, v in by_kind.get("request_latency", ())
                   if v[2] > 0 and node not in replicas}
        clients = set(latency) | {node for node, _v in by_kind.get("throughput", ()) if node not in replicas}
        on = math.nan
        if len(latency) >= 2:
            ranked = sorted(latency.values())
            others = statistics.median(ranked[:-1])
            if others > 0 and math.isfinite(ranked[-1] / others):
                on = self._continuous("cluster|client_latency_ratio", ranked[-1] / others)
        if self.stalled and 2 * len(self.stalled) < len(clients | self.stalled):
            on = 1.0
        out[row, _INDEX["client_starved"]] = on

    # -------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The extractor's state as plain data (baselines, digests, peer norms, the open window)."""
        return {"replicas": list(self.replicas), "primary": self.primary,
                "baselines": {k: list(v) for k, v in self.baselines.items()},
                "digests": OrderedDict(self.digests), "peer_norm": dict(self.peer_norm),
                "kinds_seen": set(self.kinds_seen), "prefixes": OrderedDict(self.prefixes),
                "stalled": set(self.stalled),
                "values": {k: list(v) for k, v in self.values.items()}, "sources": dict(self.sources),
                "peers": dict(self.peers), "view_changes": dict(self.view_changes),
                "peer_joins": dict(self.peer_joins), "joins": dict(self.joins), "direct": dict(self.direct),
                "flags": set(self.flags), "reporting": set(self.reporting)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (checked by the defender that owns it)."""
        self.replicas = list(state["replicas"])
        self._replica_set = set(self.replicas)
        self.primary = str(state["primary"])
        self.baselines = {k: list(v) for k, v in state["baselines"].items()}
        self.digests = OrderedDict(state["digests"])
        self.peer_norm = dict(state["peer_norm"])
        self.kinds_seen = set(state["kinds_seen"])
        self.prefixes = OrderedDict(state["prefixes"])
        self.stalled = set(state["stalled"])
        self.values = {k: list(v) for k, v in state["values"].items()}
        for key in ("sources", "peers", "view_changes", "peer_joins", "joins", "direct"):
            setattr(self, key, dict(state[key]))
        self.flags = set(state["flags"])
        self.reporting = set(state["reporting"])


_TELEMETRY_SET = frozenset(TELEMETRY_KINDS)
# Kinds whose only effect in ingest is that their node reports (ingest_many skips them after that).
_INERT_KINDS = frozenset(PROTOCOL_KINDS) - {"preprepare", "view_change", "new_view", "join", "restart",
                                              "request_stalled", "safety_violation"}
_CLIENT_VALUE_KINDS = frozenset({"request_latency", "throughput"})
# Count kinds close sums over the replicas, and the unattributed signal each becomes.
_COUNT_SIGNALS = (("auth_failures", "mac_fail"), ("instance_change_requests", "ic_request"),
                  ("duplicate_messages", "duplicates"), ("stale_messages", "stale"))
# The kinds close reads through its grouping of the window's series: the two pooled medians, the
# count kinds, the clients' kinds.
_GROUPED_KINDS = frozenset({"source_rate_max", "preprepare_interval", *(kind for kind, _ in _COUNT_SIGNALS),
                            *_CLIENT_VALUE_KINDS})

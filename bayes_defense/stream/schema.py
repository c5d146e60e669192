"""The event schema shared by the simulator, the log readers and the defender.

One event is ``(ts, node, kind, value, attrs)``: a time in seconds, the node
that reports it, what it reports, an optional number and free attributes. The
schema is versioned by :data:`SCHEMA_VERSION`; a log's version is written in
its ``meta.json`` sidecar (see ``docs/log-schema.md``), never inside the event
file, so that every line of a JSON Lines log is an event.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from bayes_defense.errors import MalformedEventError

__all__ = [
    "SCHEMA_VERSION",
    "TELEMETRY_KINDS",
    "CLIENT_KINDS",
    "PROTOCOL_KINDS",
    "KNOWN_KINDS",
    "FIELDS",
    "Event",
]

#: Version of the event schema. The minor number grows when kinds or attrs are
#: added (old readers keep working); the major number grows on any change that
#: breaks an old reader.
SCHEMA_VERSION = "1.0"

#: Per-replica telemetry, one event per live replica and kind at the end of
#: every telemetry interval; ``value`` is a rate per second or a count.
TELEMETRY_KINDS: tuple[str, ...] = (
    "msg_rate_in",  # protocol messages received per second
    "msg_rate_out",  # protocol messages sent per second
    "source_rate_max",  # highest per-source receive rate; attrs["source"] names it
    "preprepare_interval",  # mean seconds between pre-prepares seen (backups only)
    "auth_failures",  # messages whose signature or MAC failed, count
    "view_change_requests",  # VIEW-CHANGE messages received, count
    "instance_change_requests",  # INSTANCE-CHANGE (primary-performance) votes received, count
    "duplicate_messages",  # messages received twice, count
    "stale_messages",  # messages for an old view or a sequence below the watermark, count
    "peer_diversity",  # distinct network prefixes in the peer table; attrs["peers"]
    "peer_churn",  # peer-table entries replaced, count
)

#: Per-client telemetry at the end of every telemetry interval.
CLIENT_KINDS: tuple[str, ...] = (
    "request_latency",  # mean seconds from request to f+1 matching replies
    "throughput",  # requests completed per second
)

#: Protocol events, written when they happen.
PROTOCOL_KINDS: tuple[str, ...] = (
    "preprepare",  # a replica accepted a pre-prepare; value = seq
    "commit",  # a replica committed a batch; value = seq
    "checkpoint",  # a replica took a checkpoint; value = seq
    "view_change",  # a replica sent VIEW-CHANGE; value = the view it asks for
    "new_view",  # a primary installed a view; value = view
    "request_stalled",  # a propagated request waited past the stall limit; value = age (s)
    "join",  # an identity joined (client, peer or candidate); value = 1
    "restart",  # a replica process started again; value = 1
    "safety_violation",  # honest replicas committed different digests at one seq
)

#: Every kind a schema 1.x log may hold, in documentation order.
KNOWN_KINDS: tuple[str, ...] = TELEMETRY_KINDS + CLIENT_KINDS + PROTOCOL_KINDS

_KNOWN_KIND_SET = frozenset(KNOWN_KINDS)

#: Column order used by every format.
FIELDS: tuple[str, ...] = ("ts", "node", "kind", "value", "attrs")


def _is_number(value: Any) -> bool:
    # bool is an int subclass; a boolean where a number belongs is a schema error.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Event(NamedTuple):
    """One log event.

    Attributes
    ----------
    ts : float
        Simulated (or wall-clock) time in seconds; events in a log are in
        non-decreasing ``ts`` order.
    node : str
        The reporting node: ``"r0"`` .. ``"r{n-1}"`` for replicas,
        ``"client0"`` .. for clients, or another identity (joins).
    kind : str
        One of :data:`KNOWN_KINDS`.
    value : float or None
        The number the event carries (rate, count, sequence number, age).
    attrs : dict
        Free attributes; numbers and short strings only by convention.

    Examples
    --------
    >>> event = Event.from_dict({"ts": 1.5, "node": "r1", "kind": "commit",
    ...                          "value": 7, "attrs": {"view": 0, "seq": 7}})
    >>> event.value, event.attrs["view"]
    (7.0, 0)
    >>> Event.from_dict({"ts": "soon", "node": "r1", "kind": "commit"})
    Traceback (most recent call last):
    ...
    bayes_defense.errors.MalformedEventError: field 'ts' must be a finite number of seconds, got 'soon'
    """

    ts: float
    node: str
    kind: str
    value: float | None = None
    attrs: dict[str, Any] = {}  # noqa: RUF012 - NamedTuple defaults are never mutated here

    @classmethod
    def from_dict(cls, data: Any, *, allow_unknown_kind: bool = False) -> Event:
        """Validate a decoded record and return it as an :class:`Event`.

        Parameters
        ----------
        data : Mapping
            A decoded JSON object (or CSV/Parquet row) with keys ``ts``,
            ``node``, ``kind`` and optionally ``value`` and ``attrs``.
        allow_unknown_kind : bool
            Accept kinds outside :data:`KNOWN_KINDS` (logs from a newer
            minor schema version).

        Returns
        -------
        Event

        Raises
        ------
        MalformedEventError
            With the reason: a missing field, a wrong type, a non-finite
            number or an unknown kind.

        Examples
        --------
        >>> Event.from_dict({"ts": 0.0, "node": "r0", "kind": "join"}).value is None
        True
        """
        if not isinstance(data, Mapping):
            raise MalformedEventError(
                f"an event must be a JSON object, got {type(data).__name__}"
            )
        try:
            ts = data["ts"]
            node = data["node"]
            kind = data["kind"]
        except KeyError as missing:
            raise MalformedEventError(
                f"missing required field {missing.args[0]!r}; an event needs ts, node and kind"
            ) from None
        if not _is_number(ts) or not math.isfinite(ts):
            raise MalformedEventError(
                f"field 'ts' must be a finite number of seconds, got {ts!r}"
            )
        if not isinstance(node, str) or not node:
            raise MalformedEventError(f"field 'node' must be a non-empty string, got {node!r}")
        if not isinstance(kind, str):
            raise MalformedEventError(f"field 'kind' must be a string, got {kind!r}")
        if kind not in _KNOWN_KIND_SET and not allow_unknown_kind:
            raise MalformedEventError(
                f"unknown kind {kind!r}; schema {SCHEMA_VERSION} kinds are: {', '.join(KNOWN_KINDS)}"
            )
        value = data.get("value")
        if value is not None:
            if not _is_number(value) or not math.isfinite(value):
                raise MalformedEventError(
                    f"field 'value' must be a finite number or null, got {value!r}"
                )
            value = float(value)
        attrs = data.get("attrs")
        if attrs is None:
            attrs = {}
        elif not isinstance(attrs, dict):
            raise MalformedEventError(f"field 'attrs' must be an object, got {attrs!r}")
        return cls(float(ts), node, kind, value, attrs)

    def to_dict(self) -> dict[str, Any]:
        """Return the event as a plain dict (the JSON Lines record).

        Examples
        --------
        >>> Event(1.0, "r0", "join", 1.0, {"prefix": "10.0.0.0/24"}).to_dict()["attrs"]
        {'prefix': '10.0.0.0/24'}
        """
        return {
            "ts": self.ts,
            "node": self.node,
            "kind": self.kind,
            "value": self.value,
            "attrs": self.attrs,
        }

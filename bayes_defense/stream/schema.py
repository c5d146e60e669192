"""The event schema shared by the simulator, the log readers and the defender.

One event is ``(ts, node, kind, value, attrs)``: a time in seconds, the node
that reports it, what it reports, an optional number and free attributes. The
schema is versioned by :data:`SCHEMA_VERSION`; a log's version is written in
its ``meta.json`` sidecar (see ``docs/log-schema.md``), never inside the event
file, so that every line of a JSON Lines log is an event.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, NamedTuple

from bayes_defense.errors import MalformedEventError

__all__ = [
    "SCHEMA_VERSION",
    "TELEMETRY_KINDS",
    "CLIENT_KINDS",
    "PROTOCOL_KINDS",
    "KNOWN_KINDS",
    "KNOWN_KIND_SET",
    "FIELDS",
    "MAX_ATTRS_DEPTH",
    "REJECTION_REASONS",
    "Event",
    "attrs_depth_ok",
    "finite_float",
    "malformed",
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

#: :data:`KNOWN_KINDS` as a set, for membership tests.
KNOWN_KIND_SET: frozenset[str] = frozenset(KNOWN_KINDS)
_KNOWN_KIND_SET = KNOWN_KIND_SET

#: Column order used by every format.
FIELDS: tuple[str, ...] = ("ts", "node", "kind", "value", "attrs")


#: Deepest nesting of ``attrs`` (objects and lists inside objects) an event may
#: have; deeper attrs are refused, so that no reader or checkpoint recurses
#: without bound on a hostile line.
MAX_ATTRS_DEPTH = 16

#: Every reason a reader or the defender counts a rejected record under, with
#: its meaning. The vocabulary is fixed so that counting rejections takes
#: bounded memory whatever a log holds (the full message of the first records
#: is kept apart, see ``EventReader.errors``).
REJECTION_REASONS: dict[str, str] = {
    "not_json": "the line is not one JSON value",
    "not_utf8": "the line is not valid UTF-8",
    "too_deep": f"attrs nest deeper than {MAX_ATTRS_DEPTH} levels",
    "not_object": "the record is not a JSON object",
    "missing_field": "ts, node or kind is missing",
    "bad_ts": "ts is not a finite number of seconds (or is too large for a float)",
    "bad_node": "node is not a non-empty string",
    "bad_kind": "kind is not a string",
    "unknown_kind": "kind is not in this schema version",
    "bad_value": "value is not a finite number or null",
    "bad_attrs": "attrs is not an object",
    "bad_row": "a CSV row has the wrong number of columns or a non-number",
    "malformed": "the event is not an Event, a record or a tuple of its five fields",
    "non_finite": "ts or value is infinite or NaN",
    "out_of_order": "ts lies before the defender's open window",
    "duplicate": "an identical event (attrs included) was already seen in this window",
    "clock_skew": "ts lies further ahead of the stream than the accepted clock skew",
}


def malformed(reason: str, message: str) -> MalformedEventError:
    """Return a :class:`MalformedEventError` carrying a reason from :data:`REJECTION_REASONS`.

    Examples
    --------
    >>> malformed("bad_ts", "field 'ts' is missing").reason
    'bad_ts'
    """
    if reason not in REJECTION_REASONS:  # a programming error, not bad input
        raise KeyError(f"unknown rejection reason {reason!r}; add it to REJECTION_REASONS")
    error = MalformedEventError(message)
    error.reason = reason  # type: ignore[attr-defined]
    return error


def finite_float(value: Any) -> float | None:
    """Return ``value`` as a finite float, or None when it is not a finite real number.

    Python and numpy integers and floats count; booleans, strings, integers
    too large for a float and non-finite values do not.

    Examples
    --------
    >>> import numpy as np
    >>> finite_float(np.float32(1.5)), finite_float(10**400), finite_float(True), finite_float(float("nan"))
    (1.5, None, None, None)
    """
    if type(value) is float:
        return value if value - value == 0.0 else None
    # bool is an int subclass; a boolean where a number belongs is a schema
    # error (numpy's bool_ is no numbers.Real, so it is refused as well).
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (OverflowError, TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def attrs_depth_ok(value: Any, depth: int = 1) -> bool:
    """Whether ``value`` nests containers at most :data:`MAX_ATTRS_DEPTH` deep.

    Iterative, so that a hostile nesting cannot exhaust the stack.

    Examples
    --------
    >>> attrs_depth_ok({"a": [1, {"b": 2}]}), attrs_depth_ok(eval("[" * 40 + "]" * 40))
    (True, False)
    """
    stack = [(value, depth)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, Mapping):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if level > MAX_ATTRS_DEPTH:
            return False
        stack.extend((child, level + 1) for child in children if isinstance(child, (Mapping, list, tuple)))
    return True


def _short(value: Any) -> str:
    # A message quotes what came, but never a whole hostile record.
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # ValueError: an int too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


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
            raise malformed("not_object", f"an event must be a JSON object, got {type(data).__name__}")
        try:
            ts = data["ts"]
            node = data["node"]
            kind = data["kind"]
        except KeyError as missing:
            raise malformed("missing_field",
                            f"missing required field {missing.args[0]!r}; an event needs ts, node and kind") from None
        seconds = finite_float(ts)
        if seconds is None:
            raise malformed("bad_ts", f"field 'ts' must be a finite number of seconds, got {_short(ts)}")
        if not isinstance(node, str) or not node:
            raise malformed("bad_node", f"field 'node' must be a non-empty string, got {_short(node)}")
        if not isinstance(kind, str):
            raise malformed("bad_kind", f"field 'kind' must be a string, got {_short(kind)}")
        if kind not in _KNOWN_KIND_SET and not allow_unknown_kind:
            raise malformed("unknown_kind",
                            f"unknown kind {_short(kind)}; schema {SCHEMA_VERSION} kinds are: {', '.join(KNOWN_KINDS)}")
        value = data.get("value")
        if value is not None:
            number = finite_float(value)
            if number is None:
                raise malformed("bad_value", f"field 'value' must be a finite number or null, got {_short(value)}")
            value = number
        attrs = data.get("attrs")
        if attrs is None:
            attrs = {}
        elif not isinstance(attrs, dict):
            raise malformed("bad_attrs", f"field 'attrs' must be an object, got {_short(attrs)}")
        elif not attrs_depth_ok(attrs):
            raise malformed("too_deep", f"field 'attrs' nests deeper than {MAX_ATTRS_DEPTH} levels")
        return cls(seconds, node, kind, value, attrs)

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

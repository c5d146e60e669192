"""Rewrite a simulator run as a plenum event log (DESIGN.md section 8), to be read through plenum.toml.

Replica ``r{i}`` becomes ``Node{i + 1}`` (plenum's node names); per-window
counts become one event per message or suspicion, as plenum would log them:

===============================  ==========================================================
simulator event                  plenum events
===============================  ==========================================================
``preprepare`` at a backup       ``PREPREPARE`` (``frm`` = primary, ``viewNo``, ``ppSeqNo``, ``digest``)
``duplicate_messages`` = k       k x ``DUPLICATE_CM_SENT`` (value 8, the code)
``stale_messages`` = k           k x ``PPR_TIME_WRONG`` (value 18)
``auth_failures`` = k            k x ``CM_BLS_SIG_WRONG`` (value 31)
``instance_change_requests`` = k k x ``INSTANCE_CHANGE`` received
``view_change`` by a replica     ``VIEW_CHANGE`` received by the next replica, ``frm`` = the sender
``new_view``                     ``NEW_VIEW_ACCEPTED`` (``viewNo``, ``primary``)
``commit``                       ``ORDERED`` (``viewNo``, ``ppSeqNo``)
``request_latency``              ``LATENCY``
``throughput``                   ``THROUGHPUT``
===============================  ==========================================================

Kinds plenum has no counterpart for (per-source message rates, peer tables,
joins, restarts, stalled-request timers) are dropped, so attacks whose only
evidence they are (flooding's message rate, sybil, eclipse) are not expected
to be found in the plenum log.

Usage::

    python papers/plenum_log.py SIMULATION_DIR OUT.jsonl
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator

from bayes_defense.stream import Event

_COUNTS = {"duplicate_messages": ("DUPLICATE_CM_SENT", 8.0), "stale_messages": ("PPR_TIME_WRONG", 18.0),
           "auth_failures": ("CM_BLS_SIG_WRONG", 31.0), "instance_change_requests": ("INSTANCE_CHANGE", 1.0)}


def plenum_name(node: str) -> str:
    """``r3`` -> ``Node4``; other names unchanged."""
    return f"Node{int(node[1:]) + 1}" if node[:1] == "r" and node[1:].isdigit() else node


def to_plenum(events: Iterable[Event], replicas: int) -> Iterator[Event]:
    """The plenum event log of a simulator run (module docstring), in time order."""
    for event in events:
        ts, node, kind, value, attrs = event
        name = plenum_name(node)
        if kind == "preprepare":
            yield Event(ts, name, "PREPREPARE", 1.0, {"frm": plenum_name(attrs.get("primary", "")),
                                                       "viewNo": attrs.get("view"), "ppSeqNo": attrs.get("seq"),
                                                       "digest": attrs.get("digest")})
        elif kind in _COUNTS:
            plenum_kind, code = _COUNTS[kind]
            for k in range(int(value or 0)):
                # Spread within the interval the count covers, so that no two events are identical.
                yield Event(ts - 1e-4 * (k + 1), name, plenum_kind, code, {"n": k})
        elif kind == "view_change":
            index = int(node[1:]) if node[1:].isdigit() else 0
            yield Event(ts, plenum_name(f"r{(index + 1) % replicas}"), "VIEW_CHANGE", 1.0,
                        {"frm": name, "viewNo": attrs.get("view")})
        elif kind == "new_view":
            yield Event(ts, name, "NEW_VIEW_ACCEPTED", value, {"viewNo": value,
                                                               "primary": plenum_name(attrs.get("primary", ""))})
        elif kind == "commit":
            yield Event(ts, name, "ORDERED", 0.0, {"viewNo": attrs.get("view"), "ppSeqNo": attrs.get("seq")})
        elif kind == "request_latency":
            yield Event(ts, name, "LATENCY", value, {})
        elif kind == "throughput":
            yield Event(ts, name, "THROUGHPUT", value, {})


def main(argv: list[str] | None = None) -> int:
    """Convert ``SIMULATION_DIR/events.jsonl`` to a plenum event log."""
    import json
    from pathlib import Path

    from bayes_defense.stream.io import read_events, write_events

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__.strip().splitlines()[-1].strip())
        return 2
    source, out = Path(args[0]), Path(args[1])
    replicas = int(json.loads((source / "meta.json").read_text())["nodes"])
    events = sorted(to_plenum(read_events(source / "events.jsonl"), replicas), key=lambda e: e.ts)
    write_events(out, events)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

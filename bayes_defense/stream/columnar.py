"""The columnar batch path: a block of events as columns, admitted on arrays and folded in window by window.

A block of JSON Lines that the reader decodes in one typed pass
(:meth:`bayes_defense.stream.io.EventReader.column_blocks`) arrives here as
:class:`Columns`: five parallel lists, every row a finite float ``ts``, a
non-empty string ``node``, a string ``kind``, a float or None ``value`` and
flat ``attrs``. :func:`observe_columns` admits such a block with the rules of
:class:`bayes_defense.stream.base.DefenderBase` computed on arrays (window
index, out of order, clock skew, duplicates with attrs included) and hands
each window's accepted rows to the defender's ``_ingest_columns`` at once.
Rows the arrays cannot decide go through the defender's own ``observe``, one
at a time, at their place in the stream: an unknown kind, a number that
overflows in window units, and every row from one that lies further ahead
than ``max_clock_skew`` until the held events are decided. The result is the
per-event path's, exactly: the same accepted and rejected counts by reason,
the same rows ingested in the same order with the same window closes between
them, hence the same beliefs, alerts and checkpoint state
(``tests/stream/test_columnar.py`` compares them).

Why the array rules equal the per-event ones (``DefenderBase._accept``):

- the open window only moves forward, to the index of a row that is not out
  of order, so the window a row meets is the running maximum of the indices
  before it; a row below it is out of order, one above it opens a window;
- the stream's clock (``_last_ts``) is the running maximum of the accepted
  rows' ``ts``; rows rejected as duplicates carry an accepted row's ``ts`` and
  rows out of order lie before an accepted row's window, so the running
  maximum over every row of a run is the same number;
- two rows can be duplicates only when ``(ts, node, kind, value)`` agree; a
  window whose rows all differ there (or whose count could reach
  ``duplicate_memory``) needs no attrs key, and the open window's keys are
  built for ``_seen`` when a run ends, so a checkpoint and the per-event path
  that follows see the set they would have seen.

A defender takes part by returning True from ``_columnar()`` (the base
class's default holds for defenders that keep the base admission) and may
replace ``_ingest_columns`` (default: ``_ingest`` per row) with a version
that folds a window's rows in faster, with the same end state.

Examples
--------
>>> from bayes_defense.stream.scored import ScoredDefender
>>> rows = [(float(t), "r0", "peer_churn", 0.0, {}) for t in (1, 2, 2, 3, 0.5)]
>>> columns = Columns.from_rows(rows)
>>> defender = ScoredDefender(planner=None)
>>> _ = observe_columns(defender, columns)
>>> defender.accepted, defender.rejected, defender.windows
(3, {'duplicate': 1, 'out_of_order': 1}, 2)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from bayes_defense.stream.schema import Event

__all__ = ["Columns", "observe_columns"]

# Rows after which a block that keeps jumping ahead of the clock goes on one row at a time: each
# jump restarts the array pass over the rest of the block, so this bounds the work per block.
_MAX_RESTARTS = 64


class Columns:
    """One block of events as five parallel lists.

    ``checked`` says that every row has the types of a typed decode (float
    ``ts``, non-empty str ``node``, str ``kind``, float or None ``value``,
    flat ``attrs`` of scalars); only such blocks take the array path. An
    unchecked block (:meth:`unchecked`) holds its events as they came, in
    ``rows``, and goes through the defender's ``observe_batch``.

    Examples
    --------
    >>> columns = Columns.from_rows([(1.0, "r0", "commit", 3.0, {"view": 0})])
    >>> len(columns), columns.events()[0].kind
    (1, 'commit')
    """

    __slots__ = ("ts", "node", "kind", "value", "attrs", "checked", "rows")

    def __init__(self, ts: list, node: list, kind: list, value: list, attrs: list, *, checked: bool = True) -> None:
        self.ts, self.node, self.kind, self.value, self.attrs = ts, node, kind, value, attrs
        self.checked = checked
        self.rows: list = []

    @classmethod
    def unchecked(cls, events: list) -> Columns:
        """A block of events of any types (the careful path's, CSV, Parquet), kept as they are."""
        block = cls([], [], [], [], [], checked=False)
        block.rows = list(events)
        return block

    @classmethod
    def from_records(cls, records: Sequence[Any], *, checked: bool = True) -> Columns:
        """Columns of records with attributes ``ts, node, kind, value, attrs`` (the reader's typed decode)."""
        # One comprehension per field: they allocate nothing but the lists (rows of tuples would be
        # three times slower, mostly in the collector).
        return cls([r.ts for r in records], [r.node for r in records], [r.kind for r in records],
                   [r.value for r in records], [r.attrs for r in records], checked=checked)

    @classmethod
    def from_rows(cls, rows: Iterable[Sequence[Any]]) -> Columns:
        """Columns of ``(ts, node, kind, value, attrs)`` rows, checked here row by row.

        Rows of other types make the block unchecked (it then goes through
        ``observe_batch``, which judges each row).
        """
        rows = [tuple(row) for row in rows]
        if not rows:
            return cls([], [], [], [], [], checked=True)
        if not all(len(row) == 5 and _typed(*row) for row in rows):
            return cls.unchecked(rows)
        ts, node, kind, value, attrs = (list(column) for column in zip(*rows, strict=True))
        return cls(ts, node, kind, value, attrs, checked=True)

    def __len__(self) -> int:
        return len(self.ts) if self.checked else len(self.rows)

    def events(self) -> list[Any]:
        """The rows as :class:`~bayes_defense.stream.schema.Event` tuples (an unchecked block: as given)."""
        if not self.checked:
            return list(self.rows)
        new = tuple.__new__
        return [new(Event, row) for row in zip(self.ts, self.node, self.kind, self.value, self.attrs, strict=True)]

    def row(self, i: int) -> Any:
        """Row ``i`` as an :class:`~bayes_defense.stream.schema.Event`."""
        if not self.checked:
            return self.rows[i]
        return tuple.__new__(Event, (self.ts[i], self.node[i], self.kind[i], self.value[i], self.attrs[i]))

    def slice(self, start: int, stop: int) -> Columns:
        """Rows ``start`` to ``stop`` (a new object; the lists are sliced)."""
        if not self.checked:
            return Columns.unchecked(self.rows[start:stop])
        return Columns(self.ts[start:stop], self.node[start:stop], self.kind[start:stop], self.value[start:stop],
                       self.attrs[start:stop], checked=True)


_SCALAR_TYPES = frozenset({str, int, float, bool, type(None)})


def _typed(ts: Any, node: Any, kind: Any, value: Any, attrs: Any) -> bool:
    return (type(ts) is float and type(node) is str and bool(node) and type(kind) is str
            and (value is None or type(value) is float) and type(attrs) is dict
            and all(type(key) is str and type(item) in _SCALAR_TYPES for key, item in attrs.items()))


def observe_columns(defender: Any, columns: Columns) -> Any:
    """Fold a block of events into ``defender``; return its belief after the last one.

    Gives what ``defender.observe_batch(columns.events())`` gives, in
    counts, beliefs, alerts and state (module docstring), faster on
    checked blocks.

    Examples
    --------
    >>> from bayes_defense.stream.scored import ScoredDefender
    >>> defender = ScoredDefender(planner=None)
    >>> rows = [(1.0, "r0", "join", 1.0, {"prefix": "10.0.0.0/24"}), (1.0, "r0", "join", 1.0, {"prefix": "10.9.0.0/24"})]
    >>> _ = observe_columns(defender, Columns.from_rows(rows * 2))   # attrs differ: two events, two duplicates
    >>> defender.accepted, defender.rejected
    (2, {'duplicate': 2})
    """
    if not columns.checked or not defender._columnar():
        return defender.observe_batch(columns.events())
    count = len(columns)
    if count == 0:
        return defender.belief
    ts = np.array(columns.ts, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        index = np.ceil(ts / defender.window - 1e-9)
    # Rows the arrays leave to observe(): a ts or window index that is not finite, a value that is
    # not finite, an unknown kind.
    odd = ~np.isfinite(index)
    values = np.array(columns.value, dtype=np.float64)   # None -> nan
    for i in np.flatnonzero(~np.isfinite(values)).tolist():
        if columns.value[i] is not None:
            odd[i] = True
    known = defender._known_kinds
    if not known.issuperset(columns.kind):
        odd |= np.fromiter((kind not in known for kind in columns.kind), dtype=bool, count=count)
    odd_rows = np.flatnonzero(odd)
    observe = defender.observe
    restarts = 0
    i = 0
    while i < count:
        if defender._held or odd[i] or restarts > _MAX_RESTARTS:
            observe(columns.row(i))
            i += 1
            continue
        stop = int(odd_rows[np.searchsorted(odd_rows, i)]) if odd_rows.size and odd_rows[-1] > i else count
        run = ts[i:stop]
        clock = np.maximum.accumulate(np.concatenate(([defender._last_ts], run[:-1])))
        with np.errstate(invalid="ignore"):   # -inf + inf: no clock yet and no bound, as in _admit
            ahead = run > clock + defender.max_clock_skew
        if ahead.any():
            stop = i + int(np.argmax(ahead))
            restarts += 1
        if stop > i:
            _admit_run(defender, columns, i, stop, index[i:stop])
        if stop < count and not odd[stop]:
            # A row ahead of the clock: observe() holds it and decides it with the rows after it.
            observe(columns.row(stop))
            stop += 1
        i = stop
    return defender.belief


def _gather(column: list, rows: np.ndarray, start: int, stop: int, whole: bool) -> list:
    if whole:
        return column[start:stop]
    return [column[r] for r in rows.tolist()]


def _admit_run(defender: Any, columns: Columns, start: int, stop: int, index: np.ndarray) -> None:
    """Admit rows ``start:stop``: none odd, none ahead of the clock, nothing held (``index``: their windows)."""
    current = defender._current
    before = np.maximum.accumulate(np.concatenate(([float(current)], index[:-1])))
    late = index < before
    opens = np.flatnonzero(index > before).tolist()
    bounds = sorted({0, *opens}) + [len(index)]
    opening = set(opens)
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        if lo in opening:
            if defender._current >= 0:
                defender._close_window()
            defender._current = int(index[lo])
            defender._seen = set()
        _admit_window(defender, columns, start + lo, start + hi, late[lo:hi], last=hi == len(index))


def _admit_window(defender: Any, columns: Columns, start: int, stop: int, late: np.ndarray, *, last: bool) -> None:
    """Rows ``start:stop`` of the open window (``late``: out of order): reject, check duplicates, ingest."""
    whole = not late.any()
    rows = np.arange(start, stop)[~late] if not whole else None
    ts = _gather(columns.ts, rows, start, stop, whole)
    node = _gather(columns.node, rows, start, stop, whole)
    kind = _gather(columns.kind, rows, start, stop, whole)
    value = _gather(columns.value, rows, start, stop, whole)
    attrs = _gather(columns.attrs, rows, start, stop, whole)
    seen = defender._seen
    memory = defender.duplicate_memory
    cheap = list(zip(ts, node, kind, value, strict=True))
    distinct = len(set(cheap)) == len(cheap) and len(seen) + len(cheap) <= memory
    if distinct and seen:
        earlier = {key[:4] for key in seen}
        distinct = not any(key in earlier for key in cheap)
    reasons: list[tuple[int, str]] = []
    if not whole:
        reasons.append((int(np.argmax(late)), "out_of_order"))
    if distinct:
        if last:
            # The window stays open after this run: _seen holds its keys, as the per-event path's would.
            room = memory - len(seen)
            seen.update((t, n, k, v, frozenset(a.items()))
                        for t, n, k, v, a in zip(ts[:room], node[:room], kind[:room], value[:room], attrs[:room],
                                                 strict=True))
        duplicates = 0
    else:
        keep = []
        duplicates = 0
        first_duplicate = -1
        for position, key in enumerate(zip(ts, node, kind, value, (frozenset(a.items()) for a in attrs), strict=True)):
            if key in seen:
                if not duplicates:
                    first_duplicate = position
                duplicates += 1
                continue
            if len(seen) < memory:
                seen.add(key)
            keep.append(position)
        if duplicates:
            # Position among all rows of the window, for the order in which reasons are first counted.
            reasons.append((int(rows[first_duplicate] - start) if rows is not None else first_duplicate, "duplicate"))
            ts, node, kind, value, attrs = ([column[p] for p in keep] for column in (ts, node, kind, value, attrs))
    rejected = defender.rejected
    for _, reason in sorted(reasons):
        amount = int(late.sum()) if reason == "out_of_order" else duplicates
        rejected[reason] = rejected.get(reason, 0) + amount
    if not ts:
        return
    defender.accepted += len(ts)
    latest = max(ts)
    if latest > defender._last_ts:
        defender._last_ts = latest
    defender._ingest_columns(ts, node, kind, value, attrs)

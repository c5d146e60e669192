"""Reading and writing event logs in JSON Lines, CSV and Parquet.

Readers stream: :func:`read_events` yields one :class:`Event` at a time and
never holds the whole file. Writers buffer and flush in blocks (JSON Lines and
CSV through the file buffer, Parquet in row groups), so a producer can stream
a log of any length in flat memory.
"""

from __future__ import annotations

import csv
import gc
import io
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec

from bayes_defense.errors import ConfigError, InvalidInputError, MalformedEventError
from bayes_defense.ioutil import fsync_directory, match_mode
from bayes_defense.stream.schema import (
    FIELDS,
    KNOWN_KIND_SET,
    MAX_ATTRS_DEPTH,
    REJECTION_REASONS,
    Event,
    malformed,
)

__all__ = [
    "FORMATS",
    "EVENT_FILE_NAMES",
    "EventReader",
    "EventWriter",
    "read_events",
    "write_events",
    "events_to_dataframe",
    "guess_format",
]

#: Formats a log can be written in, by name.
FORMATS: tuple[str, ...] = ("jsonl", "csv", "parquet")

#: File name of the event log inside a simulation output directory, per format.
EVENT_FILE_NAMES: dict[str, str] = {
    "jsonl": "events.jsonl",
    "csv": "events.csv",
    "parquet": "events.parquet",
}

_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}

# How many skip reasons a lenient reader keeps verbatim (with line numbers);
# beyond this only the per-reason counts grow, and those are keyed by the
# fixed vocabulary REJECTION_REASONS, so memory stays bounded.
_MAX_KEPT_ERRORS = 100
# Bytes of whole lines decoded at once on the fast JSON Lines path; the
# position a resumed run starts from is a block boundary.
_BLOCK_BYTES = 1 << 20
_CSV_BLOCK_ROWS = 65_536
# Marks the end of a block in the readers' internal streams.
_BOUNDARY = object()


def guess_format(path: str | os.PathLike[str]) -> str:
    """Return the log format implied by a file name.

    Examples
    --------
    >>> guess_format("run/events.parquet")
    'parquet'
    """
    suffix = Path(path).suffix.lower()
    try:
        return _SUFFIXES[suffix]
    except KeyError:
        raise ConfigError(
            f"cannot tell the log format of {str(path)!r} from its suffix {suffix!r}; "
            f"use one of {', '.join(sorted(_SUFFIXES))} or pass fmt= ({', '.join(FORMATS)})"
        ) from None


def _resolve(path: str | os.PathLike[str], fmt: str | None) -> tuple[Path, str]:
    path = Path(path)
    if path.is_dir():
        # A simulation output directory: pick the one event file inside it.
        found = [path / name for f, name in EVENT_FILE_NAMES.items() if fmt in (None, f) and (path / name).exists()]
        if not found:
            raise FileNotFoundError(f"no events.jsonl, events.csv or events.parquet in {str(path)!r}")
        path = found[0]
    if fmt is None:
        fmt = guess_format(path)
    elif fmt not in FORMATS:
        raise ConfigError(f"unknown log format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return path, fmt


class _Record(msgspec.Struct, gc=False):
    """The typed shape of a common JSON Lines event, checked by msgspec in C.

    Attrs are flat here (scalars only): a block holding nested attrs fails
    this type and is read line by line, where nesting is checked.
    """

    ts: float
    node: Annotated[str, msgspec.Meta(min_length=1)]
    kind: str
    value: float | None = None
    attrs: dict[str, str | int | float | bool | None] = {}  # noqa: RUF012 - msgspec copies defaults


_RECORD_LINES = msgspec.json.Decoder(_Record).decode_lines
_DECODE_ANY = msgspec.json.Decoder().decode


def _fast_block_ok(block: bytes, lines: int) -> bool:
    # msgspec's decode_lines splits on any whitespace between values, not on
    # newlines. When every line starts with "{" and ends with "}" no value can
    # continue across a newline ("}" then "{" is invalid inside a value), so
    # a count of one value per line means exactly one value on every line.
    # The block holds one newline per line, at each line's end (a raw newline
    # cannot stand inside a JSON string), so "}\n{" once per line but the last,
    # and "}\n" at the end, say that; one search of the block is a third of two.
    # Blank lines, "\r\n" or trailing spaces take the careful per-line path.
    return (block.startswith(b"{") and block.endswith(b"}\n")
            and block.count(b"}\n{") + 1 == lines)


class _LineBlock:
    """Whole lines of a JSON Lines file read as one string; the list of lines is split only when asked for."""

    __slots__ = ("text", "count", "_lines")

    def __init__(self, text: bytes) -> None:
        self.text = text
        # Binary reads end lines at b"\n" only; a last line without one is a line too.
        self.count = text.count(b"\n") + (not text.endswith(b"\n"))
        self._lines: list[bytes] | None = None

    @property
    def lines(self) -> list[bytes]:
        """The lines as ``readlines`` gives them (each with its newline, the file's last maybe without)."""
        if self._lines is None:
            parts = self.text.split(b"\n")
            last = parts.pop()
            self._lines = [part + b"\n" for part in parts]
            if last:
                self._lines.append(last)
        return self._lines


def _decode_records(block: bytes) -> Any:
    # The decoded records' attrs dicts survive the call, so every collection the allocations
    # trigger meanwhile walks them in vain; collecting once afterwards finds the same garbage.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _RECORD_LINES(block)
    finally:
        if enabled:
            gc.enable()


def _decode_line(line: bytes) -> Any:
    """Decode one JSON Lines record; return the object or a MalformedEventError."""
    try:
        return _DECODE_ANY(line)
    except msgspec.ValidationError:
        # Valid JSON grammar, but a number beyond the float range (1e400).
        return malformed("non_finite", "a number in the line is beyond the range of a float")
    except msgspec.DecodeError as error:
        text = str(error)
        if "UTF-8" in text:
            return malformed("not_utf8", "the line is not valid UTF-8")
        return malformed("not_json", f"not valid JSON ({text})")
    except RecursionError:
        return malformed("too_deep", f"the line nests deeper than JSON decoding allows (attrs may nest "
                                     f"{MAX_ATTRS_DEPTH} levels)")


class EventReader:
    """A streaming iterator over the events of one log file.

    Returned by :func:`read_events`. In strict mode the first bad record
    raises :class:`~bayes_defense.errors.MalformedEventError` naming its line
    (for Parquet, its 1-based row) and the reason. In lenient mode bad records
    are skipped and counted: ``skipped`` is their number, ``reasons`` counts
    them per reason code (:data:`~bayes_defense.stream.schema.REJECTION_REASONS`)
    and ``errors`` keeps the first 100 as ``(line, message)``.

    A problem with the file as a whole (a CSV header that is not the
    schema's, a file that is not Parquet) raises
    :class:`~bayes_defense.errors.MalformedEventError` in both modes: no
    record of such a file can be read.

    ``position`` is where a resumed read would continue (a plain dict, for a
    checkpoint); it moves at block boundaries (1 MiB of JSON Lines, 65,536
    CSV or Parquet rows), and ``on_block``, when set, is called with the
    reader at each boundary, when every event before it has been consumed.
    :meth:`blocks` yields the events a block at a time instead.
    """

    def __init__(self, path: Path, fmt: str, *, strict: bool, allow_unknown_kind: bool,
                 start: Mapping[str, int] | None = None) -> None:
        self.path = path
        self.format = fmt
        self.strict = strict
        self.allow_unknown_kind = allow_unknown_kind
        self.events = 0
        self.skipped = 0
        self.reasons: Counter[str] = Counter()
        self.errors: list[tuple[int, str]] = []
        self.position: dict[str, int] = {"offset": 0, "line": 0, "record": 0}
        self.on_block: Callable[[EventReader], None] | None = None
        if start is not None:
            self.restore(start)

    def counts(self) -> dict[str, Any]:
        """Return the position and counts as plain data (for a checkpoint); see :meth:`restore`."""
        return {"position": dict(self.position), "events": self.events, "skipped": self.skipped,
                "reasons": dict(self.reasons), "errors": [list(error) for error in self.errors]}

    def restore(self, counts: Mapping[str, Any]) -> None:
        """Continue from :meth:`counts` of an earlier read of the same file (validated)."""
        try:
            position = counts["position"] if "position" in counts else counts
            restored = {key: int(position[key]) for key in ("offset", "line", "record")}
            events, skipped = int(counts.get("events", 0)), int(counts.get("skipped", 0))
            reasons = {str(k): int(v) for k, v in dict(counts.get("reasons", {})).items()}
            errors = [(int(line), str(text)) for line, text in counts.get("errors", [])][:_MAX_KEPT_ERRORS]
        except (KeyError, TypeError, ValueError, OverflowError):
            raise InvalidInputError(f"a reader position needs integer offset, line and record; got {counts!r}"[:300]) from None
        unknown = set(reasons) - set(REJECTION_REASONS)
        size = self.path.stat().st_size
        if (min(restored.values()) < 0 or events < 0 or skipped < 0 or any(v < 0 for v in reasons.values())
                or unknown or restored["offset"] > size or sum(reasons.values()) != skipped):
            raise InvalidInputError(f"reader position {restored} does not fit {self.path.name} ({size} bytes) or its "
                                    f"counts are inconsistent; resume from a checkpoint written for this file")
        self.position, self.events, self.skipped = restored, events, skipped
        self.reasons, self.errors = Counter(reasons), errors

    def __iter__(self) -> Iterator[Event]:
        for item in self._items():
            if item is _BOUNDARY:
                # The consumer asked for the event after the block's last one: all of it is consumed.
                self._boundary()
                continue
            yield item

    def blocks(self) -> Iterator[list[Event]]:
        """Yield the events block by block (lists, possibly empty).

        While a block is being handled, :attr:`position` is the end of that
        block: a consumer that checkpoints after handling each block saves a
        position that matches what it has seen.

        Examples
        --------
        >>> import tempfile, pathlib
        >>> log = pathlib.Path(tempfile.mkdtemp()) / "events.jsonl"
        >>> _ = log.write_text('{"ts": 0.5, "node": "r0", "kind": "join"}\\n')
        >>> [len(block) for block in read_events(log).blocks()]
        [1]
        """
        block: list[Event] = []
        for item in self._items():
            if item is _BOUNDARY:
                yield block
                block = []
            else:
                block.append(item)
        if block:
            yield block

    def _items(self) -> Iterator[Any]:
        if self.format == "jsonl":
            yield from self._jsonl()
            return
        records = {"csv": self._csv, "parquet": self._parquet}[self.format]()
        from_dict = Event.from_dict
        allow = self.allow_unknown_kind
        for item in records:
            if item is _BOUNDARY:
                yield item
                continue
            line_number, record = item
            try:
                if isinstance(record, MalformedEventError):
                    raise record
                event = from_dict(record, allow_unknown_kind=allow)
            except MalformedEventError as error:
                self._skip(line_number, error)
                continue
            self.events += 1
            yield event

    def _skip(self, line_number: int, error: MalformedEventError) -> None:
        if self.strict:
            raise MalformedEventError(f"{self.path.name} line {line_number}: {error}") from None
        self.skipped += 1
        self.reasons[getattr(error, "reason", "malformed")] += 1
        if len(self.errors) < _MAX_KEPT_ERRORS:
            self.errors.append((line_number, str(error)))

    def _boundary(self) -> None:
        if self.on_block is not None:
            self.on_block(self)

    def _jsonl(self) -> Iterator[Any]:
        new_event = tuple.__new__
        event_type = Event
        known = KNOWN_KIND_SET
        allow = self.allow_unknown_kind
        from_dict = Event.from_dict
        for first_line, lines, decoded in self._jsonl_blocks():
            if decoded is None:
                yield from self._careful(first_line, lines.lines)
            else:
                for offset, record in enumerate(decoded):
                    kind = record.kind
                    if kind not in known and not allow:
                        # The careful path gives the reason and message.
                        self._one_line(first_line + offset, lines.lines[offset], from_dict, allow)
                        continue
                    self.events += 1
                    yield new_event(event_type, (record.ts, record.node, kind, record.value, record.attrs))
            self._advance(lines)
            yield _BOUNDARY

    def column_blocks(self) -> Iterator[Any]:
        """Yield the events block by block as :class:`~bayes_defense.stream.columnar.Columns`.

        A JSON Lines block that decodes in one typed pass comes as checked
        columns (for :meth:`~bayes_defense.stream.base.DefenderBase.observe_columns`'s
        array path); any other block (a bad line in it, CSV, Parquet) comes
        as unchecked columns of its events. The events, counts and positions
        are those of :meth:`blocks`.

        Examples
        --------
        >>> import tempfile, pathlib
        >>> log = pathlib.Path(tempfile.mkdtemp()) / "events.jsonl"
        >>> _ = log.write_text('{"ts": 0.5, "node": "r0", "kind": "join"}\\nnot json\\n')
        >>> [(len(block), block.checked) for block in read_events(log, strict=False).column_blocks()]
        [(1, False)]
        """
        from bayes_defense.stream.columnar import Columns

        if self.format != "jsonl":
            for block in self.blocks():
                yield Columns.unchecked(block)
            return
        known = KNOWN_KIND_SET
        allow = self.allow_unknown_kind
        for first_line, lines, decoded in self._jsonl_blocks():
            if decoded is not None:
                block = Columns.from_records(decoded)
                if not allow and not known.issuperset(block.kind):
                    kept = []
                    for offset, record in enumerate(decoded):
                        if record.kind in known:
                            kept.append(record)
                        else:
                            # The careful path gives the reason and message.
                            self._one_line(first_line + offset, lines.lines[offset], Event.from_dict, allow)
                    block = Columns.from_records(kept)
                self.events += len(block)
            else:
                block = Columns.unchecked(list(self._careful(first_line, lines.lines)))
            self._advance(lines)
            yield block

    def _advance(self, lines: _LineBlock) -> None:
        self.position = {"offset": self.position["offset"] + len(lines.text),
                         "line": self.position["line"] + lines.count,
                         "record": self.position["record"] + lines.count}

    def _careful(self, first_line: int, lines: list[bytes]) -> Iterator[Event]:
        from_dict, allow = Event.from_dict, self.allow_unknown_kind
        for offset, line in enumerate(lines):
            event = self._one_line(first_line + offset, line, from_dict, allow)
            if event is not None:
                yield event

    def _jsonl_blocks(self) -> Iterator[tuple[int, _LineBlock, Any]]:
        """``(first line number, lines, records)`` per block: the typed records, or None for the careful path."""
        with open(self.path, "rb") as handle:
            handle.seek(self.position["offset"])
            while True:
                # The block readlines(_BLOCK_BYTES) would give (lines until the one holding byte
                # _BLOCK_BYTES - 1), read as one string: no list of lines to build and join.
                text = handle.read(_BLOCK_BYTES)
                if not text:
                    return
                if not text.endswith(b"\n"):
                    text += handle.readline()
                lines = _LineBlock(text)
                first_line = self.position["line"] + 1
                block = text if text.endswith(b"\n") else text + b"\n"
                decoded = None
                if _fast_block_ok(block, lines.count):
                    try:
                        decoded = _decode_records(block)
                    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
                        decoded = None
                    if decoded is not None and len(decoded) != lines.count:
                        decoded = None
                yield first_line, lines, decoded

    def _one_line(self, line_number: int, line: bytes, from_dict: Any, allow: bool) -> Event | None:
        if not line.strip():
            return None
        record = _decode_line(line)
        try:
            if isinstance(record, MalformedEventError):
                raise record
            event = from_dict(record, allow_unknown_kind=allow)
        except MalformedEventError as error:
            self._skip(line_number, error)
            return None
        self.events += 1
        return event

    def _csv(self) -> Iterator[tuple[int, Any]]:
        # Bytes that are not UTF-8 become lone surrogates, so that one bad
        # byte rejects its row instead of ending the read.
        with open(self.path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
            reader = csv.reader(handle)
            try:
                header = next(reader, None)
            except csv.Error as error:
                raise MalformedEventError(f"{self.path.name}: cannot read the CSV header ({error})") from None
            if header is None:
                return
            if [name.strip() for name in header[: len(FIELDS)]] != list(FIELDS):
                shown = ",".join(header)
                raise MalformedEventError(
                    f"{self.path.name}: CSV header must be {','.join(FIELDS)}, got "
                    f"{shown[:120] + '...' if len(shown) > 120 else shown}; no row of this file can be read")
            skip = self.position["record"]
            rows = 0
            while True:
                if rows % _CSV_BLOCK_ROWS == 0 and rows > skip:
                    self.position = {"offset": 0, "line": reader.line_num, "record": rows}
                    yield _BOUNDARY
                try:
                    row = next(reader)
                except StopIteration:
                    self.position = {"offset": 0, "line": reader.line_num, "record": rows}
                    yield _BOUNDARY
                    return
                except csv.Error as error:
                    rows += 1
                    if rows > skip:
                        yield reader.line_num, malformed("bad_row", f"unreadable CSV row ({error})")
                    continue
                rows += 1
                if rows <= skip:
                    continue
                yield reader.line_num, _csv_record(row)

    def _parquet(self) -> Iterator[tuple[int, Any]]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            parquet_file = pq.ParquetFile(self.path)
        except (pa.ArrowException, OSError) as error:
            raise MalformedEventError(f"{self.path.name} is not a readable Parquet file ({' '.join(str(error).split())[:200]})") from None
        names = parquet_file.schema_arrow.names
        missing = [name for name in ("ts", "node", "kind") if name not in names]
        if missing:
            raise MalformedEventError(f"{self.path.name}: Parquet log lacks column(s) {', '.join(missing)}; "
                                      f"the columns must be {', '.join(FIELDS)}")
        skip = self.position["record"]
        row_number = 0
        try:
            batches = parquet_file.iter_batches(batch_size=_CSV_BLOCK_ROWS)
            for batch in batches:
                if row_number + batch.num_rows <= skip:
                    row_number += batch.num_rows
                    continue
                columns = batch.to_pydict()
                ts_col, node_col, kind_col = columns["ts"], columns["node"], columns["kind"]
                value_col = columns.get("value", [None] * len(ts_col))
                attrs_col = columns.get("attrs", [None] * len(ts_col))
                for i in range(len(ts_col)):
                    row_number += 1
                    if row_number <= skip:
                        continue
                    yield row_number, _decode_attrs(
                        {"ts": ts_col[i], "node": node_col[i], "kind": kind_col[i], "value": value_col[i]},
                        attrs_col[i],
                    )
                self.position = {"offset": 0, "line": row_number, "record": row_number}
                yield _BOUNDARY
        except (pa.ArrowException, OSError) as error:
            raise MalformedEventError(f"{self.path.name}: Parquet data after row {row_number} cannot be read "
                                      f"({' '.join(str(error).split())[:200]})") from None


def _decode_attrs(record: dict[str, Any], attrs_text: Any) -> Any:
    if attrs_text is None or attrs_text == "":
        return record
    if isinstance(attrs_text, dict):
        record["attrs"] = attrs_text
        return record
    if not isinstance(attrs_text, (str, bytes)):
        return malformed("bad_attrs", f"field 'attrs' must be a JSON object text, got {type(attrs_text).__name__}")
    if isinstance(attrs_text, str):
        try:
            attrs_text = attrs_text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates from bytes that were not UTF-8
            return malformed("not_utf8", "field 'attrs' is not valid UTF-8")
    decoded = _decode_line(attrs_text)
    if isinstance(decoded, MalformedEventError):
        return decoded
    record["attrs"] = decoded
    return record


def _csv_record(row: list[str]) -> Any:
    if len(row) != len(FIELDS):
        return malformed("bad_row", f"expected {len(FIELDS)} columns, got {len(row)}")
    ts_text, node, kind, value_text, attrs_text = row
    try:
        node.encode("utf-8")
        kind.encode("utf-8")
    except UnicodeEncodeError:
        return malformed("not_utf8", "node or kind is not valid UTF-8")
    try:
        ts = float(ts_text)
        value = float(value_text) if value_text != "" else None
    except ValueError:
        return malformed("bad_row", f"ts and value must be numbers, got {ts_text[:40]!r} and {value_text[:40]!r}")
    return _decode_attrs({"ts": ts, "node": node, "kind": kind, "value": value}, attrs_text)


def read_events(
    path: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    strict: bool = True,
    allow_unknown_kind: bool = False,
    start: Mapping[str, Any] | None = None,
) -> EventReader:
    """Stream the events of a log file, validating each.

    Parameters
    ----------
    path : path-like
        An ``events.jsonl`` / ``.csv`` / ``.parquet`` file, or a simulation
        output directory holding one.
    fmt : {"jsonl", "csv", "parquet"}, optional
        The format; guessed from the suffix when omitted.
    strict : bool
        Raise on the first bad record (default) or skip and count bad records.
    allow_unknown_kind : bool
        Accept kinds this schema version does not know.
    start : dict, optional
        ``EventReader.counts()`` of an earlier, interrupted read of this
        file: continue from its position, keeping its counts.

    Returns
    -------
    EventReader
        An iterable of :class:`Event`; after iteration its ``events``,
        ``skipped``, ``reasons`` and ``errors`` describe what was read.

    Raises
    ------
    MalformedEventError
        In strict mode, on a bad record, with its line number and reason.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> log = pathlib.Path(tempfile.mkdtemp()) / "events.jsonl"
    >>> _ = log.write_text('{"ts": 0.5, "node": "r0", "kind": "join", "value": 1}\\nnot json\\n')
    >>> reader = read_events(log, strict=False)
    >>> [event.kind for event in reader], reader.skipped
    (['join'], 1)
    """
    resolved, resolved_fmt = _resolve(path, fmt)
    if not resolved.exists():
        raise FileNotFoundError(f"no such log file: {str(resolved)!r}")
    if resolved.is_dir():
        raise IsADirectoryError(f"{str(resolved)!r} is a directory; give an event log file")
    return EventReader(resolved, resolved_fmt, strict=strict, allow_unknown_kind=allow_unknown_kind, start=start)


def _number_text(value: float) -> str:
    # repr gives the shortest text that round-trips; integral floats print as ints.
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


class EventWriter:
    """Append events to a log file in one of :data:`FORMATS`, in flat memory.

    Use as a context manager; ``write`` takes an :class:`Event` or any
    ``(ts, node, kind, value, attrs)`` tuple. Parquet is written in row
    groups of ``row_group_size`` rows with ``attrs`` as a JSON string column;
    CSV carries ``attrs`` the same way.

    The log is written to a temporary file beside ``path`` and renamed onto
    it by :meth:`close`; leaving the ``with`` block by an exception (or a
    killed process) leaves any older file at ``path`` as it was.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "events.csv"
    >>> with EventWriter(path, "csv") as writer:
    ...     writer.write(Event(0.0, "r0", "join", 1.0, {"prefix": "10.1.0.0/24"}))
    >>> [event.attrs for event in read_events(path)]
    [{'prefix': '10.1.0.0/24'}]
    """

    def __init__(self, path: str | os.PathLike[str], fmt: str = "jsonl", *, row_group_size: int = 65_536) -> None:
        if fmt not in FORMATS:
            raise ConfigError(f"unknown log format {fmt!r}; expected one of {', '.join(FORMATS)}")
        self.path = Path(path)
        self.format = fmt
        self.count = 0
        if self.path.is_dir():
            raise IsADirectoryError(f"cannot write the log to {str(self.path)!r}: it is a directory")
        descriptor, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(descriptor)
        self._temporary = Path(name)
        self._row_group_size = row_group_size
        self._dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
        # Node and kind names repeat endlessly; quote each once.
        self._quoted: dict[str, str] = {}
        if fmt == "parquet":
            self._columns: dict[str, list[Any]] = {name: [] for name in FIELDS}
            self._parquet_writer = None
            self._handle: io.TextIOWrapper | None = None
        else:
            self._handle = open(self._temporary, "w", encoding="utf-8", newline="", buffering=1 << 20)
            if fmt == "csv":
                self._csv = csv.writer(self._handle)  # default "\r\n" makes the writer quote fields holding \r
                self._csv.writerow(FIELDS)

    def write(self, event: tuple[float, str, str, float | None, dict[str, Any]]) -> None:
        """Append one event."""
        ts, node, kind, value, attrs = event
        self.count += 1
        fmt = self.format
        if fmt == "jsonl":
            value_text = "null" if value is None else _number_text(value)
            attrs_text = self._dumps(attrs) if attrs else "{}"
            quoted = self._quoted
            node_text = quoted.get(node)
            if node_text is None:
                node_text = quoted[node] = self._dumps(node)
            kind_text = quoted.get(kind)
            if kind_text is None:
                kind_text = quoted[kind] = self._dumps(kind)
            self._handle.write(  # type: ignore[union-attr]
                f'{{"ts":{_number_text(ts)},"node":{node_text},"kind":{kind_text},"value":{value_text},"attrs":{attrs_text}}}\n'
            )
        elif fmt == "csv":
            self._csv.writerow(
                (_number_text(ts), node, kind, "" if value is None else _number_text(value), self._dumps(attrs) if attrs else "")
            )
        else:
            columns = self._columns
            columns["ts"].append(float(ts))
            columns["node"].append(node)
            columns["kind"].append(kind)
            columns["value"].append(None if value is None else float(value))
            columns["attrs"].append(self._dumps(attrs) if attrs else "")
            if len(columns["ts"]) >= self._row_group_size:
                self._flush_row_group()

    def write_many(self, events: Iterable[tuple[float, str, str, float | None, dict[str, Any]]]) -> None:
        """Append every event of an iterable, in order."""
        for event in events:
            self.write(event)

    def _flush_row_group(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = self._columns
        if not columns["ts"] and self._parquet_writer is not None:
            return
        table = pa.table(
            {
                "ts": pa.array(columns["ts"], type=pa.float64()),
                "node": pa.array(columns["node"], type=pa.string()),
                "kind": pa.array(columns["kind"], type=pa.string()),
                "value": pa.array(columns["value"], type=pa.float64()),
                "attrs": pa.array(columns["attrs"], type=pa.string()),
            }
        )
        if self._parquet_writer is None:
            self._parquet_writer = pq.ParquetWriter(self._temporary, table.schema)
        self._parquet_writer.write_table(table)
        for values in columns.values():
            values.clear()

    def close(self) -> None:
        """Flush what is buffered, close the file and move it to ``path``."""
        if self._temporary is None:
            return
        if self.format == "parquet":
            self._flush_row_group()
            if self._parquet_writer is not None:
                self._parquet_writer.close()
                self._parquet_writer = None
        elif self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None
        match_mode(self.path, self._temporary)
        os.replace(self._temporary, self.path)
        fsync_directory(self.path.parent)
        self._temporary = None

    def discard(self) -> None:
        """Close without writing ``path``: the temporary file is removed."""
        if self._temporary is None:
            return
        if getattr(self, "_parquet_writer", None) is not None:
            self._parquet_writer.close()
            self._parquet_writer = None
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._temporary.unlink(missing_ok=True)
        self._temporary = None

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()


def write_events(
    path: str | os.PathLike[str],
    events: Iterable[tuple[float, str, str, float | None, dict[str, Any]]],
    fmt: str | None = None,
) -> int:
    """Write events to ``path`` and return how many were written.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "events.jsonl"
    >>> write_events(path, [Event(0.0, "r0", "restart", 1.0, {})])
    1
    """
    fmt = fmt or guess_format(path)
    with EventWriter(path, fmt) as writer:
        writer.write_many(events)
        return writer.count


def events_to_dataframe(events: Iterable[Event] | str | os.PathLike[str], *, expand_attrs: bool = False, **read_kwargs: Any):
    """Collect events (or a log file) into a pandas DataFrame.

    Parameters
    ----------
    events : iterable of Event, or path-like
        Events, or a log path passed to :func:`read_events`.
    expand_attrs : bool
        Add one column ``attrs.<key>`` per attribute key seen.
    **read_kwargs
        Passed to :func:`read_events` when ``events`` is a path.

    Returns
    -------
    pandas.DataFrame
        Columns ``ts, node, kind, value, attrs`` (``attrs`` holds dicts).

    Examples
    --------
    >>> frame = events_to_dataframe([Event(0.0, "r0", "commit", 3.0, {"view": 0})], expand_attrs=True)
    >>> list(frame.columns), frame["attrs.view"].tolist()
    (['ts', 'node', 'kind', 'value', 'attrs', 'attrs.view'], [0])
    """
    import pandas as pd

    if isinstance(events, (str, os.PathLike)):
        events = read_events(events, **read_kwargs)
    columns: dict[str, list[Any]] = {name: [] for name in FIELDS}
    appenders = [columns[name].append for name in FIELDS]
    for event in events:
        for append, field in zip(appenders, event, strict=True):
            append(field)
    frame = pd.DataFrame(columns, columns=list(FIELDS))
    frame["ts"] = frame["ts"].astype("float64")
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce").astype("float64")
    if expand_attrs and len(frame):
        expanded = pd.json_normalize(columns["attrs"]).add_prefix("attrs.")
        expanded.index = frame.index
        frame = pd.concat([frame, expanded], axis=1)
    return frame

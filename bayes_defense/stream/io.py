"""Reading and writing event logs in JSON Lines, CSV and Parquet.

Readers stream: :func:`read_events` yields one :class:`Event` at a time and
never holds the whole file. Writers buffer and flush in blocks (JSON Lines and
CSV through the file buffer, Parquet in row groups), so a producer can stream
a log of any length in flat memory.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from bayes_defense.errors import ConfigError, MalformedEventError
from bayes_defense.stream.schema import FIELDS, Event

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
# beyond this only the per-reason counts grow, so memory stays bounded.
_MAX_KEPT_ERRORS = 100


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


class EventReader:
    """A streaming iterator over the events of one log file.

    Returned by :func:`read_events`. In strict mode the first bad record
    raises :class:`~bayes_defense.errors.MalformedEventError` naming its line
    (for Parquet, its 1-based row) and the reason. In lenient mode bad records
    are skipped and counted: ``skipped`` is their number, ``reasons`` counts
    them per reason and ``errors`` keeps the first 100 as ``(line, reason)``.
    """

    def __init__(self, path: Path, fmt: str, *, strict: bool, allow_unknown_kind: bool) -> None:
        self.path = path
        self.format = fmt
        self.strict = strict
        self.allow_unknown_kind = allow_unknown_kind
        self.events = 0
        self.skipped = 0
        self.reasons: Counter[str] = Counter()
        self.errors: list[tuple[int, str]] = []

    def __iter__(self) -> Iterator[Event]:
        records = {"jsonl": self._jsonl, "csv": self._csv, "parquet": self._parquet}[self.format]()
        from_dict = Event.from_dict
        allow = self.allow_unknown_kind
        for line_number, record in records:
            try:
                if isinstance(record, MalformedEventError):
                    raise record
                event = from_dict(record, allow_unknown_kind=allow)
            except MalformedEventError as error:
                reason = str(error)
                if self.strict:
                    raise MalformedEventError(
                        f"{self.path.name} line {line_number}: {reason}"
                    ) from None
                self.skipped += 1
                # Count by the reason's general form so counts stay few.
                self.reasons[reason.split(",")[0].split(";")[0]] += 1
                if len(self.errors) < _MAX_KEPT_ERRORS:
                    self.errors.append((line_number, reason))
                continue
            self.events += 1
            yield event

    def _jsonl(self) -> Iterator[tuple[int, Any]]:
        loads = json.loads
        with open(self.path, encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = loads(line)
                except json.JSONDecodeError as error:
                    record = MalformedEventError(f"not valid JSON ({error.msg} at column {error.colno})")
                yield line_number, record

    def _csv(self) -> Iterator[tuple[int, Any]]:
        with open(self.path, encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                return
            if [name.strip() for name in header[: len(FIELDS)]] != list(FIELDS):
                yield 1, MalformedEventError(
                    f"CSV header must be {','.join(FIELDS)}, got {','.join(header)}"
                )
                return
            for row in reader:
                line_number = reader.line_num
                yield line_number, _csv_record(row)

    def _parquet(self) -> Iterator[tuple[int, Any]]:
        import pyarrow.parquet as pq

        parquet_file = pq.ParquetFile(self.path)
        row_number = 0
        for batch in parquet_file.iter_batches(batch_size=65_536):
            columns = batch.to_pydict()
            missing = [name for name in ("ts", "node", "kind") if name not in columns]
            if missing:
                yield row_number + 1, MalformedEventError(f"Parquet log lacks column(s) {missing}")
                return
            ts_col, node_col, kind_col = columns["ts"], columns["node"], columns["kind"]
            value_col = columns.get("value", [None] * len(ts_col))
            attrs_col = columns.get("attrs", [None] * len(ts_col))
            for i in range(len(ts_col)):
                row_number += 1
                yield row_number, _decode_attrs(
                    {"ts": ts_col[i], "node": node_col[i], "kind": kind_col[i], "value": value_col[i]},
                    attrs_col[i],
                )


def _decode_attrs(record: dict[str, Any], attrs_text: Any) -> Any:
    if attrs_text is None or attrs_text == "":
        return record
    try:
        record["attrs"] = json.loads(attrs_text)
    except (json.JSONDecodeError, TypeError):
        return MalformedEventError(f"field 'attrs' is not a JSON object: {attrs_text!r}")
    return record


def _csv_record(row: list[str]) -> Any:
    if len(row) != len(FIELDS):
        return MalformedEventError(f"expected {len(FIELDS)} columns, got {len(row)}")
    ts_text, node, kind, value_text, attrs_text = row
    try:
        ts = float(ts_text)
        value = float(value_text) if value_text != "" else None
    except ValueError:
        return MalformedEventError(f"ts and value must be numbers, got {ts_text!r} and {value_text!r}")
    return _decode_attrs({"ts": ts, "node": node, "kind": kind, "value": value}, attrs_text)


def read_events(
    path: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    strict: bool = True,
    allow_unknown_kind: bool = False,
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
    return EventReader(resolved, resolved_fmt, strict=strict, allow_unknown_kind=allow_unknown_kind)


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
        self._row_group_size = row_group_size
        self._dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
        # Node and kind names repeat endlessly; quote each once.
        self._quoted: dict[str, str] = {}
        if fmt == "parquet":
            self._columns: dict[str, list[Any]] = {name: [] for name in FIELDS}
            self._parquet_writer = None
            self._handle: io.TextIOWrapper | None = None
        else:
            self._handle = open(self.path, "w", encoding="utf-8", newline="", buffering=1 << 20)
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
            self._parquet_writer = pq.ParquetWriter(self.path, table.schema)
        self._parquet_writer.write_table(table)
        for values in columns.values():
            values.clear()

    def close(self) -> None:
        """Flush what is buffered and close the file."""
        if self.format == "parquet":
            self._flush_row_group()
            if self._parquet_writer is not None:
                self._parquet_writer.close()
                self._parquet_writer = None
        elif self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


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

"""Streaming readers and writers for every format."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bayes_defense.errors import ConfigError, InvalidInputError, MalformedEventError
from bayes_defense.stream import Event, EventWriter, events_to_dataframe, read_events, write_events
from bayes_defense.stream.schema import KNOWN_KINDS

EVENTS = [
    Event(0.0, "r0", "join", 1.0, {"prefix": "10.0.0.0/16", "role": "client"}),
    Event(0.25, "r1", "commit", 4.0, {"view": 0, "seq": 4, "digest": "ab12"}),
    Event(1.0, "client0", "throughput", 23.5, {}),
    Event(1.0, "r2", "restart", None, {}),
    Event(2.5, 'odd "name"', "view_change", 1.0, {"view": 0}),
]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_round_trip_every_format(tmp_path, fmt):
    path = tmp_path / f"events.{fmt}"
    assert write_events(path, EVENTS) == len(EVENTS)
    assert list(read_events(path)) == EVENTS
    assert list(read_events(tmp_path)) == EVENTS  # a run directory works too


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(
    st.floats(min_value=-1e9, max_value=1e9, allow_nan=False),
    st.text(min_size=1, max_size=6),
    st.sampled_from(KNOWN_KINDS),
    st.none() | st.floats(allow_nan=False, allow_infinity=False),
    st.dictionaries(st.text(max_size=4), st.integers() | st.text(max_size=4), max_size=3),
), max_size=20))
def test_round_trip_property_jsonl_and_csv(tmp_path_factory, rows):
    directory = tmp_path_factory.mktemp("prop")
    events = [Event(*row) for row in rows]
    for fmt in ("jsonl", "csv"):
        path = directory / f"events.{fmt}"
        write_events(path, events)
        assert list(read_events(path)) == events


def bad_log(tmp_path):
    path = tmp_path / "events.jsonl"
    lines = [
        json.dumps(EVENTS[0].to_dict()),
        "{not json",
        json.dumps({"ts": 1.0, "node": "r0", "kind": "teleport"}),
        "",
        json.dumps(EVENTS[1].to_dict()),
        json.dumps({"ts": "x", "node": "r0", "kind": "commit"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_strict_mode_names_line_and_reason(tmp_path):
    reader = iter(read_events(bad_log(tmp_path)))
    assert next(reader) == EVENTS[0]
    with pytest.raises(MalformedEventError, match=r"events.jsonl line 2: not valid JSON"):
        next(reader)


def test_lenient_mode_skips_and_counts_with_reasons(tmp_path):
    reader = read_events(bad_log(tmp_path), strict=False)
    assert list(reader) == [EVENTS[0], EVENTS[1]]
    assert reader.events == 2 and reader.skipped == 3
    assert [line for line, _ in reader.errors] == [2, 3, 6]
    assert "unknown kind 'teleport'" in reader.errors[1][1]
    assert sum(reader.reasons.values()) == 3


def test_csv_bad_row_reports_line(tmp_path):
    path = tmp_path / "events.csv"
    write_events(path, EVENTS[:2])
    with open(path, "a") as handle:
        handle.write("1.0,r0,commit\n")
    with pytest.raises(MalformedEventError, match="line 4: expected 5 columns"):
        list(read_events(path))


def test_reader_streams_lazily(tmp_path):
    path = tmp_path / "events.jsonl"
    with EventWriter(path) as writer:
        writer.write(EVENTS[0])
    with open(path, "a") as handle:
        handle.write("garbage\n")
    reader = read_events(path)  # nothing read yet
    first = next(iter(reader))
    assert first == EVENTS[0] and reader.events == 1


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot tell the log format"):
        read_events(tmp_path / "events.txt")
    with pytest.raises(FileNotFoundError):
        read_events(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match="unknown log format"):
        EventWriter(tmp_path / "x.jsonl", "xml")


def test_dataframe_conversion(tmp_path):
    path = tmp_path / "events.parquet"
    write_events(path, EVENTS)
    frame = events_to_dataframe(path, expand_attrs=True)
    assert list(frame.columns[:5]) == ["ts", "node", "kind", "value", "attrs"]
    assert len(frame) == len(EVENTS)
    assert frame["value"].isna().sum() == 1
    assert frame.loc[1, "attrs.seq"] == 4


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_writer_is_atomic(tmp_path, fmt):
    path = tmp_path / f"events.{fmt}"
    write_events(path, EVENTS[:2])
    with pytest.raises(RuntimeError), EventWriter(path, fmt) as writer:
        writer.write_many(EVENTS)
        raise RuntimeError("interrupted")
    assert list(read_events(path)) == EVENTS[:2]
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_reader_resumes_from_its_counts(tmp_path):
    lines = [json.dumps({"ts": float(i), "node": "r0", "kind": "join", "value": 1}) for i in range(30_000)]
    lines[7] = "not json"
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    first = read_events(path, strict=False)
    saved = []
    first.on_block = lambda reader: saved.append(reader.counts())
    whole = list(first)
    middle = next(c for c in saved if c["position"]["offset"] > 0)
    rest = list(read_events(path, strict=False, start=middle))
    done = whole[: middle["events"]] + rest
    assert done == whole
    resumed = read_events(path, strict=False, start=middle)
    list(resumed)
    assert resumed.counts()["reasons"] == {"not_json": 1} and resumed.events == len(whole)
    with pytest.raises(InvalidInputError, match="does not fit"):
        read_events(path, strict=False, start={**middle, "position": {"offset": 10**12, "line": 0, "record": 0}})

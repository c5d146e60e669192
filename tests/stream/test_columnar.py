"""The columnar batch path gives exactly what the per-event path gives: counts by reason, beliefs, alerts, state."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bayes_defense.commands.defend import defend_stream
from bayes_defense.sim import AttackSpec, FaultSpec, Scenario, simulate
from bayes_defense.stream import io as stream_io
from bayes_defense.stream import read_events
from bayes_defense.stream.base import DefenderBase
from bayes_defense.stream.checkpoint import encode
from bayes_defense.stream.columnar import Columns, observe_columns
from bayes_defense.stream.model_filter import ModelDefender
from bayes_defense.stream.scored import ScoredDefender
from bayes_defense.stream.signals import SignalExtractor
from tests.stream.test_hardening import HOSTILE_LINES


class Recorder(DefenderBase):
    """A defender that records what it is given: every ingested row and every window close."""

    def __init__(self, duplicate_memory=4096, max_clock_skew=300.0, clock_confirm=3, window=1.0):
        self.window, self.duplicate_memory = window, duplicate_memory
        self.max_clock_skew, self.clock_confirm = max_clock_skew, clock_confirm
        self._reset_admission()
        self.belief, self.log, self._pending_alerts, self.alerts = None, [], [], []

    def _ingest(self, ts, node, kind, value, attrs):
        # The counts are compared at window closes: within a window, observe_batch adds its accepted
        # count at the end and the columnar path counts a window's rejections before its rows are ingested.
        self.log.append((ts, node, kind, value, dict(attrs), self._current))

    def _close_window(self):
        self.windows += 1
        self.log.append(("close", self._current, dict(self.rejected), self._last_ts))

    def state(self):
        return {key: getattr(self, key) for key in ("accepted", "rejected", "windows", "_current", "_last_ts",
                                                    "_held", "_seen", "log")}


def _same_defenders(a, b) -> None:
    assert a.accepted == b.accepted
    assert list(a.rejected.items()) == list(b.rejected.items())   # the same counts, first counted in the same order
    assert a.windows == b.windows
    assert [x.to_dict() for x in a.alerts] == [x.to_dict() for x in b.alerts]
    for name in ("precursor", "execution", "within_horizon", "active"):
        np.testing.assert_array_equal(getattr(a.belief, name), getattr(b.belief, name))
    assert a.belief.suspects == b.belief.suspects
    assert json.dumps(encode(a.state_dict())) == json.dumps(encode(b.state_dict()))


# ------------------------------------------------------------------ admission, row by row
_TS = st.one_of(st.sampled_from([0.5, 1.0, 1.0, 1.5, 2.0, 2.0, 3.25, 0.2, -1.0, 400.0, 1e15, 1e308, math.inf,
                                 math.nan, -0.0]),
                st.floats(0.0, 30.0).map(lambda x: round(x, 1)))
_ROW = st.tuples(_TS, st.sampled_from(["r0", "r1"]), st.sampled_from(["peer_churn", "commit", "no_such_kind"]),
                 st.sampled_from([None, 0.0, -0.0, 1.0, math.inf]),
                 st.sampled_from([{}, {"a": 1}, {"a": 1.0}, {"a": True}, {"b": "x"}, {"a": 1, "b": "x"}]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(_ROW, max_size=60), cuts=st.lists(st.integers(0, 60), max_size=4),
       memory=st.sampled_from([0, 1, 3, 4096]), skew=st.sampled_from([5.0, 300.0, math.inf]),
       confirm=st.sampled_from([1, 2, 3]), window=st.sampled_from([1.0, 0.5]))
def test_property_admission_on_arrays_equals_the_per_event_path(rows, cuts, memory, skew, confirm, window):
    # Sorted row runs with repeats, jumps ahead and back, non-finite numbers, unknown kinds and
    # attrs-only differences, cut into blocks anywhere.
    per_event = Recorder(memory, skew, confirm, window)
    by_columns = Recorder(memory, skew, confirm, window)
    bounds = [0, *sorted(c for c in cuts if c < len(rows)), len(rows)]
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        block = Columns.from_rows(rows[lo:hi])
        assert block.checked
        per_event.observe_batch(block.events())
        observe_columns(by_columns, block)
        assert per_event.state() == by_columns.state()
    per_event.flush()
    by_columns.flush()
    assert per_event.state() == by_columns.state()


def test_unchecked_rows_take_observe_batch():
    rows = [(1.0, "r0", "peer_churn", 0.0, {"deep": [1, {"x": 2}]}), (2, "r0", "peer_churn", 0.0, {}),
            {"ts": 3.0, "node": "r0", "kind": "peer_churn"}]
    block = Columns.from_rows(rows[:2])
    assert not block.checked
    a, b = Recorder(clock_confirm=1), Recorder(clock_confirm=1)
    a.observe_batch(rows[:2])
    observe_columns(b, block)
    assert a.state() == b.state() and a.accepted == 2


def test_signal_extractor_ingest_many_equals_ingest_on_each(runs):
    run = runs()
    events = list(read_events(run / "events.jsonl"))
    one, many = SignalExtractor(), SignalExtractor()
    window, start = math.ceil(events[0].ts), 0
    for k, event in enumerate([*events, None]):
        if event is not None and math.ceil(event.ts - 1e-9) == window:
            one.ingest(*event)
            continue
        many.ingest_many(*(list(column) for column in zip(*events[start:k], strict=True)))
        assert one.state_dict() == many.state_dict()
        a, b = one.close(), many.close()
        np.testing.assert_array_equal(a.values, b.values)
        assert (a.replicas, a.primary) == (b.replicas, b.primary)
        if event is not None:
            window, start = math.ceil(event.ts - 1e-9), k
            one.ingest(*event)


# ------------------------------------------------------------------ real logs, both defenders
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Simulated runs with two attacks and two benign faults: (nodes, duration) -> directory, made once."""
    made = {}

    def run(nodes=4, duration=240.0, seed=11):
        if (nodes, duration) not in made:
            out = tmp_path_factory.mktemp(f"run{nodes}")
            attacks = [AttackSpec("replay", start=duration * 0.3, precursor=duration * 0.15, duration=duration * 0.15),
                       AttackSpec("equivocation", start=duration * 0.7, precursor=duration * 0.15,
                                  duration=duration * 0.15)]
            faults = [FaultSpec("crash", start=duration * 0.1, duration=20.0, node="r2"),
                      FaultSpec("load_spike", start=duration * 0.5, duration=20.0)]
            simulate(Scenario(nodes=nodes, duration=duration, seed=seed, attacks=attacks, faults=faults), out)
            made[(nodes, duration)] = out
        return made[(nodes, duration)]

    return run


def _hostile_log(tmp_path, run):
    """The simulated log with hostile, far-future, out-of-order and attrs-only duplicate lines spread in it."""
    lines = (run / "events.jsonl").read_bytes().splitlines()
    extra = {
        1000: [lines[1000]],                                               # an exact duplicate
        2000: [lines[2000].replace(b'"attrs":{', b'"attrs":{"x":1,')],     # differs in attrs only
        3000: [json.dumps({"ts": 1e15, "node": "r0", "kind": "msg_rate_in", "value": 1.0}).encode()],
        4000: [json.dumps({"ts": 1.0, "node": "r0", "kind": "msg_rate_in", "value": 1.0}).encode()],   # out of order
        5000: [json.dumps({"ts": 120.5, "node": "r1", "kind": "no_such_kind", "value": 1.0}).encode()],
        6000: [json.dumps({"ts": 130.5, "node": "r1", "kind": "msg_rate_in", "value": 1.0, "attrs": {"a": {"b": 1}}}).encode()],
    }
    for k, line in enumerate(HOSTILE_LINES):
        extra.setdefault(7000 + 500 * k, []).append(line)
    out = []
    for i, line in enumerate(lines):
        out.append(line)
        out.extend(extra.get(i, []))
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\n".join(out) + b"\n")
    return path


def _defenders():
    return [("scored", lambda: ScoredDefender(planner=None)),
            ("model", lambda: ModelDefender(planner=None))]


@pytest.mark.parametrize("name, make", _defenders(), ids=[name for name, _ in _defenders()])
def test_columnar_blocks_equal_per_event_blocks_on_a_log_with_faults_attacks_and_hostile_lines(
        tmp_path, monkeypatch, runs, name, make):
    # Small blocks, so that windows straddle block boundaries and blocks with a hostile line take
    # the careful path between checked ones.
    monkeypatch.setattr(stream_io, "_BLOCK_BYTES", 1 << 15)
    path = _hostile_log(tmp_path, runs())
    allow = name == "model"
    per_event, by_columns = make(), make()
    reader_a = read_events(path, strict=False, allow_unknown_kind=allow)
    reader_b = read_events(path, strict=False, allow_unknown_kind=allow)
    checked = unchecked = 0
    for block, columns in zip(reader_a.blocks(), reader_b.column_blocks(), strict=True):
        assert reader_a.position == reader_b.position
        per_event.observe_batch(block)
        by_columns.observe_columns(columns)
        checked += columns.checked
        unchecked += not columns.checked
        assert per_event.pop_alerts() == by_columns.pop_alerts()
        assert per_event.accepted == by_columns.accepted and per_event.rejected == by_columns.rejected
    assert checked > unchecked > 0
    assert reader_a.counts() == reader_b.counts()
    per_event.flush()
    by_columns.flush()
    _same_defenders(per_event, by_columns)
    assert {"duplicate", "clock_skew", "out_of_order"} <= set(per_event.rejected)
    assert reader_a.skipped >= len(HOSTILE_LINES) and per_event.alerts


def test_defend_stream_through_columns_equals_events_one_by_one(tmp_path, runs):
    run = runs()
    path = _hostile_log(tmp_path, run)
    events = list(read_events(path, strict=False))
    a, b = ScoredDefender(planner=None), ScoredDefender(planner=None)
    seen_a, seen_b = [], []
    defend_stream(events, a, on_alerts=seen_a.extend)
    defend_stream(read_events(path, strict=False), b, on_alerts=seen_b.extend)
    assert seen_a == seen_b
    _same_defenders(a, b)


def test_model_filter_with_a_map_takes_observe_batch(runs):
    # A map that renames kinds admits events its own way: observe_columns hands the block to observe_batch.
    run = runs()
    mapped = ModelDefender(planner=None, observation_map="plenum")
    reference = ModelDefender(planner=None, observation_map="plenum")
    assert ModelDefender(planner=None)._columnar() and not mapped._columnar()
    for k, (columns, block) in enumerate(zip(read_events(run / "events.jsonl", allow_unknown_kind=True).column_blocks(),
                                             read_events(run / "events.jsonl", allow_unknown_kind=True).blocks(),
                                             strict=True)):
        if k == 3:
            break
        mapped.observe_columns(columns)
        reference.observe_batch(block)
    _same_defenders(mapped, reference)
    assert mapped.accepted + sum(mapped.rejected.values()) > 0


class _Interrupt(BaseException):
    """Stands in for a signal: not an Exception, so nothing on the way catches it."""


def test_scored_defend_through_columns_interrupted_at_a_checkpoint_resumes_to_the_same_alerts(
        runs, tmp_path, monkeypatch, capsys):
    from bayes_defense.commands import main

    monkeypatch.setattr(stream_io, "_BLOCK_BYTES", 1 << 16)   # checkpoints fall in the middle of windows
    log = runs() / "events.jsonl"
    reference, out = tmp_path / "reference.jsonl", tmp_path / "alerts.jsonl"
    assert main(["defend", str(log), "--defender", "scored", "--out", str(reference)]) == 0
    saves = []
    original = ScoredDefender.save

    def save_then_stop(self, path, extra=None):
        original(self, path, extra)
        saves.append(path)
        if len(saves) == 5:
            raise _Interrupt

    monkeypatch.setattr(ScoredDefender, "save", save_then_stop)
    with pytest.raises(_Interrupt):
        main(["defend", str(log), "--defender", "scored", "--out", str(out), "--checkpoint-every", "0"])
    monkeypatch.setattr(ScoredDefender, "save", original)
    assert main(["defend", str(log), "--defender", "scored", "--out", str(out), "--resume", str(saves[-1])]) == 0
    capsys.readouterr()
    assert out.read_text() == reference.read_text() and reference.read_text()

"""asv benchmarks of ``bayes-defense defend`` end to end from JSON Lines, per defender (issue 16: 300k events/s).

The log is ``bench_defender.jsonl_log()`` (7 replicas, 900 s, one replay
attack, about 190k events). Rates are events per CPU second of this process
(``time.process_time``): on a shared machine wall time also counts the time
other processes hold the core.

- ``track_command``: the whole command, ``main(["defend", LOG, ...])``, after
  one warm-up run (torch, the planner's cache, numba's kernels loaded);
- ``track_stream_columns`` / ``track_stream_events``: the command's read and
  observe loop (``defend_stream``) over the reader's column blocks (the
  array path, ``observe_columns``) and over its event blocks (the per-event
  path, ``observe_batch``); both give the same counts, beliefs and alerts;
- ``track_read_and_admit``: reading and admission alone (column blocks into
  a defender whose windows and ingestion do nothing), the ceiling the
  defender's own work lowers.

The model filter takes the array path with the identity observation map
(``ModelDefender._columnar``).
Measured on 2026-12-02 on the 1M-event log of ``bayes-defense simulate
--nodes 7 --duration 4800`` (the commands are in the report of that day):
read and admission about 500k events per CPU second; each defender's
per-window work (``_close_window``) leaves the whole below 300k.
"""

from __future__ import annotations

import contextlib
import io
import time

from bayes_defense.commands.defend import defend_stream
from bayes_defense.stream.base import DefenderBase
from bayes_defense.stream.defender import defender_class
from bayes_defense.stream.io import read_events
from benchmarks.bench_defender import _cpu_rate, jsonl_log


class _Admission(DefenderBase):
    """The base admission with nothing behind it: windows and rows cost nothing."""

    def __init__(self):
        self.window, self.duplicate_memory, self.max_clock_skew, self.clock_confirm = 1.0, 4096, 300.0, 3
        self._reset_admission()
        self.belief, self._pending_alerts, self.alerts = None, [], []

    def _ingest(self, ts, node, kind, value, attrs):
        pass

    def _ingest_columns(self, ts, node, kind, value, attrs):
        pass

    def _close_window(self):
        self.windows += 1


class _EventBlocks:
    """A reader seen through its event blocks only (the per-event path of defend_stream)."""

    def __init__(self, reader):
        self.reader = reader

    def blocks(self):
        return self.reader.blocks()


class DefendJsonl:
    params = [["model", "scored"]]
    param_names = ["defender"]
    timeout = 1200
    timer = time.process_time

    def setup(self, defender):
        from bayes_defense.commands import main

        self.main = main
        self.log = jsonl_log()
        self.out = self.log.parent / f"alerts_{defender}.jsonl"
        self.events = sum(len(block) for block in read_events(self.log).blocks())
        self._command(defender)  # loads torch, the planner's cache and the kernels, as a long run does once

    def _command(self, defender):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            status = self.main(["defend", str(self.log), "--defender", defender, "--out", str(self.out), "--json"])
        assert status == 0

    def _stream(self, defender, columns):
        reader = read_events(self.log, strict=False, allow_unknown_kind=defender == "model")
        defend_stream(reader if columns else _EventBlocks(reader), defender_class(defender)(), on_alerts=len)

    def time_command(self, defender):
        self._command(defender)

    def track_command(self, defender):
        return _cpu_rate(lambda: self._command(defender), self.events, repeats=1)

    track_command.unit = "events/s/core"

    def track_stream_columns(self, defender):
        return _cpu_rate(lambda: self._stream(defender, True), self.events, repeats=1)

    track_stream_columns.unit = "events/s/core"

    def track_stream_events(self, defender):
        return _cpu_rate(lambda: self._stream(defender, False), self.events, repeats=1)

    track_stream_events.unit = "events/s/core"


class ReadAndAdmit:
    timeout = 600
    timer = time.process_time

    def setup(self):
        self.log = jsonl_log()
        self.events = sum(len(block) for block in read_events(self.log).blocks())

    def _run(self):
        defender = _Admission()
        for block in read_events(self.log, strict=False).column_blocks():
            defender.observe_columns(block)
        defender.flush()
        assert defender.accepted == self.events

    def time_read_and_admit(self):
        self._run()

    def track_read_and_admit(self):
        return _cpu_rate(self._run, self.events)

    track_read_and_admit.unit = "events/s/core"

"""The ``bayes-defense defend`` subcommand: the streaming defender over an event log.

Alerts are written to ``OUT.partial`` as they are raised (one line each,
flushed and synced), and the file is renamed to ``OUT`` when the log has been
read to its end; an interrupted run leaves any older ``OUT`` untouched. Every
``--checkpoint-every`` seconds (at a block boundary of the reader) the
defender's state, the reader's position and the length of ``OUT.partial`` are
saved to the checkpoint file (JSON, atomic); ``--resume CHECKPOINT``
continues from there and gives the alerts an uninterrupted run gives.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import itertools
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from bayes_defense.commands._common import (
    EXIT_OK,
    EXIT_UNTRUSTED,
    add_defender_arguments,
    observation_map_argument,
    positive_argument,
    probability_argument,
    progress_bar,
    strict_json,
    windows_argument,
)
from bayes_defense.errors import InvalidInputError

__all__ = ["register", "run_defend", "defend_stream", "load_parameters"]

# Bytes of the log hashed to recognise it on --resume: its start, and the
# stretch before the checkpointed position.
_FINGERPRINT_BYTES = 1 << 16
# Events between two timed observe() calls on the columnar path: each timed call splits the
# block, and a block's array pass costs a few microseconds to start.
_COLUMNAR_SAMPLE_EVERY = 1024


def register(subparsers: Any) -> None:
    """Add ``defend`` to a ``bayes-defense`` parser.

    Examples
    --------
    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="bayes-defense")
    >>> register(parser.add_subparsers(dest="command"))
    >>> parser.parse_args(["defend", "events.jsonl"]).threshold
    0.8
    """
    defend = subparsers.add_parser(
        "defend", help="run the streaming defender over an event log; write alerts.jsonl",
        description="Run the streaming defender over an event log (schema: docs/log-schema.md) and write one "
                    "alert per line (docs/cli.md). Exit 0 done, 1 when most of the log was unusable or it "
                    "held no event, 2 on bad input.")
    defend.add_argument("events", help="events.jsonl/.csv/.parquet, or a simulation output directory")
    defend.add_argument("--posterior", metavar="FILE", help="fitted posterior from `bayes-defense fit` (default: the prior)")
    add_defender_arguments(defend, "which defender runs: the model filter or the hand-scored baseline (first "
                                   "default: what --posterior was fitted for)", "the log's own vocabulary")
    defend.add_argument("--out", metavar="FILE", default="alerts.jsonl", help="alerts file (default alerts.jsonl)")
    defend.add_argument("--threshold", type=probability_argument, default=0.8,
                        help="alert on the lower bound reaching this probability in (0, 1] (default 0.8)")
    defend.add_argument("--confirm-windows", type=windows_argument, default=None, metavar="N",
                        help="windows in a row over the threshold before an alert (default: the defender's own, "
                             "2 for the model filter, 1 for the scored one)")
    defend.add_argument("--max-clock-skew", type=positive_argument, default=300.0, metavar="S",
                        help="seconds an event may lie ahead of the stream before it needs confirmation (default 300)")
    defend.add_argument("--checkpoint", metavar="FILE", help="checkpoint file (default OUT.checkpoint)")
    defend.add_argument("--checkpoint-every", type=float, default=10.0, metavar="S",
                        help="seconds of work between checkpoints; 0 = at every block of the log (default 10)")
    defend.add_argument("--resume", metavar="CHECKPOINT", help="continue an interrupted run from its checkpoint")
    defend.add_argument("--learn", metavar="LABELS",
                        help="labels that arrive after the fact (labels.json records, or {verdict: not_attack, ...} "
                             "for a rejected alert): each is folded into the posterior the defender runs with once "
                             "the stream has passed its end (exact conjugate update; the model filter only; "
                             "docs/learning.md)")
    defend.add_argument("--learned", metavar="FILE",
                        help="with --learn: write the posterior the run ended with (NetCDF), for the next run's "
                             "--posterior")
    defend.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    defend.set_defaults(func=run_defend)


def load_parameters(path: str | None) -> Any:
    """Return the fitted posterior in ``path`` (from ``bayes-defense fit``), or None for the default prior."""
    if path is None:
        return None
    if not Path(path).exists():
        raise FileNotFoundError(f"no such posterior file: {path!r}")
    try:
        from bayes_defense.fitting import load_posterior
    except ImportError as error:
        raise InvalidInputError(
            f"--posterior needs bayes_defense.fitting.load_posterior, which this installation lacks ({error}); "
            "run defend without --posterior to use the default prior") from None
    posterior = load_posterior(path)
    if not (callable(getattr(posterior, "defender_parameters", None))
            or callable(getattr(posterior, "signal_parameters", None))):
        raise InvalidInputError(f"posterior {Path(path).name!r} was not fitted for a streaming defender (it gives "
                                "neither defender_parameters nor signal_parameters); fit one with `bayes-defense fit` "
                                "on event logs and try again")
    return posterior


def defend_stream(events: Any, defender: Any, *, sample_every: int = 64, bar: Any = None,
                  on_alerts: Any = None, on_block: Any = None) -> dict[str, Any]:
    """Feed events to a defender, timing every ``sample_every``-th call; return throughput figures.

    ``events`` is an iterable of events, or an
    :class:`~bayes_defense.stream.io.EventReader`, read block by block (as
    columns for a defender with ``observe_columns``, whose array path gives
    what ``observe_batch`` gives; then at least 1024 events lie between two
    timed calls). ``on_alerts(alerts)``, when given, receives alerts as they
    are raised (within ``sample_every`` events of the one that raised them);
    ``on_block()`` is called after each block has been folded in and its
    alerts handed over (for checkpoints).

    Examples
    --------
    >>> from bayes_defense.stream import Event
    >>> from bayes_defense.stream.defender import StreamingDefender
    >>> stats = defend_stream([Event(float(t), "r0", "peer_churn", 0.0, {}) for t in (1, 2, 3)], StreamingDefender())
    >>> stats["events"]
    3
    """
    # Blocks of columns go through the defender's array path (observe_columns, the same result as
    # observe_batch); one event in every sample_every goes through observe() alone and is timed.
    columnar = callable(getattr(events, "column_blocks", None)) and callable(getattr(defender, "observe_columns", None))
    if columnar:
        blocks = events.column_blocks()
        sample_every = max(sample_every, _COLUMNAR_SAMPLE_EVERY)
    else:
        blocks = events.blocks() if callable(getattr(events, "blocks", None)) else _chunks(events, 65_536)
    observe, pop = defender.observe, defender.pop_alerts
    observe_rest = defender.observe_columns if columnar else defender.observe_batch
    latencies: list[float] = []
    clock = time.perf_counter
    count = 0
    last_ts = 0.0
    started = clock()
    for block in blocks:
        size = len(block)
        for start in range(0, size, sample_every):
            t0 = clock()
            observe(block.row(start) if columnar else block[start])
            latencies.append(clock() - t0)
            observe_rest(block.slice(start + 1, start + sample_every) if columnar
                         else block[start + 1:start + sample_every])
            if on_alerts is not None:
                raised = pop()
                if raised:
                    on_alerts(raised)
        count += size
        if bar is not None and size:
            end = block.row(size - 1).ts if columnar else block[-1].ts
            if end > last_ts + 1:
                bar.update(end - last_ts)
                last_ts = end
        if on_block is not None:
            on_block()
    defender.flush()
    if on_alerts is not None:
        on_alerts(pop())
    elapsed = clock() - started
    latencies.sort()

    def quantile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e6 if latencies else math.nan

    return {"events": count, "events_per_second": count / elapsed if elapsed > 0 else math.nan,
            "latency_p50_us": quantile(0.5), "latency_p99_us": quantile(0.99)}


def _chunks(events: Any, size: int) -> Any:
    iterator = iter(events)
    while True:
        chunk = list(itertools.islice(iterator, size))
        if not chunk:
            return
        yield chunk


def _fingerprint(path: Path, offset: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(_FINGERPRINT_BYTES))
        handle.seek(max(0, offset - _FINGERPRINT_BYTES))
        digest.update(handle.read(min(offset, _FINGERPRINT_BYTES)))
    return digest.hexdigest()


class _AlertFile:
    """``OUT.partial``: alert lines appended, flushed and synced as raised."""

    def __init__(self, path: Path, keep_bytes: int | None) -> None:
        self.path = path
        if keep_bytes is None:
            self.handle = open(path, "wb")
        else:
            if not path.exists() or path.stat().st_size < keep_bytes:
                raise InvalidInputError(f"{path.name} (the alerts written before the interruption) is missing or "
                                        f"shorter than the checkpoint records ({keep_bytes} bytes); rerun without --resume")
            self.handle = open(path, "r+b")
            # Alerts written after the checkpoint are raised again by the replay.
            self.handle.truncate(keep_bytes)
            self.handle.seek(keep_bytes)
        self.count = 0

    def write(self, alerts: list[Any]) -> None:
        if not alerts:
            return
        self.handle.write(b"".join(strict_json(alert.to_dict()).encode() + b"\n" for alert in alerts))
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.count += len(alerts)

    @property
    def size(self) -> int:
        return self.handle.tell()

    def close(self) -> None:
        self.handle.close()


def run_defend(args: argparse.Namespace) -> int:
    """Run ``bayes-defense defend``; return the exit status."""
    from bayes_defense.ioutil import atomic_path, fsync_directory
    from bayes_defense.stream.defender import choose_defender, defender_class
    from bayes_defense.stream.io import read_events
    from bayes_defense.stream.schema import REJECTION_REASONS

    out = Path(args.out)
    if out.is_dir():
        raise IsADirectoryError(f"--out {str(out)!r} is a directory; give a file name such as alerts.jsonl")
    partial = out.with_name(out.name + ".partial")
    checkpoint = Path(args.checkpoint) if args.checkpoint else out.with_name(out.name + ".checkpoint")
    if not math.isfinite(args.checkpoint_every) or args.checkpoint_every < 0:
        raise InvalidInputError(f"--checkpoint-every must be a number of seconds >= 0, got {args.checkpoint_every}")
    observation_map = observation_map_argument(args.observation_map)
    posterior = load_parameters(args.posterior)
    learn = _learning_labels(args.learn, args.learned)
    name = choose_defender(args.defender or ("model" if learn is not None else None),
                           posterior=posterior, observation_map=observation_map)
    if learn is not None and name != "model":
        raise InvalidInputError("--learn updates the model filter's posterior; the scored defender does not learn "
                                "online (drop --defender scored, or refit it with `bayes-defense fit`)")
    # The model filter judges kinds itself (through its map) and counts the ones that match nothing.
    reader = read_events(args.events, strict=False, allow_unknown_kind=name == "model")
    source = str(reader.path.resolve())
    # Load the planner's modules (torch, Pyro) before the clock starts: the
    # first alert would load them anyway, and events_per_second should time
    # the defender, not an import.
    import bayes_defense.models  # noqa: F401
    import bayes_defense.planning  # noqa: F401

    # The modules just loaded (torch, Pyro) hold millions of objects that live
    # as long as the process; without this every full garbage collection
    # during the stream walks them again (measured: a third of the run time).
    gc.freeze()
    if args.resume:
        try:
            defender, extra = defender_class(name).load(args.resume, with_extra=True)
        except InvalidInputError as error:
            raise InvalidInputError(f"{error}; resume with the --defender, --map and --posterior of the interrupted "
                                    f"run (this one runs the {name} defender)") from None
        if learn is not None:
            defender.record = _ledger(defender)
            defender.record.load_state_dict(extra.get("ledger"))   # validated there, refused with the reason
        if not isinstance(extra.get("defend"), dict):
            raise InvalidInputError(f"{args.resume!r} is a defender checkpoint but not one of `bayes-defense defend`")
        saved = extra["defend"]
        if saved.get("source") != source or saved.get("fingerprint") != _fingerprint(
                reader.path, int(saved.get("reader", {}).get("position", {}).get("offset", 0))):
            raise InvalidInputError(f"checkpoint {args.resume!r} was written for {saved.get('source')!r}, not for this "
                                    f"log (or the log changed since); resume with the same log")
        options = {"threshold": args.threshold, "posterior": args.posterior, "defender": name,
                   "map": args.observation_map, "learn": args.learn, "confirm_windows": args.confirm_windows}
        if any(saved.get(key) != value for key, value in options.items()):
            given = ", ".join(f"{key} {saved.get(key)}" for key in options)
            raise InvalidInputError(f"checkpoint {args.resume!r} was written with {given}; resume with the same options")
        kept, alerts_before, elapsed_before = saved.get("alerts_bytes"), saved.get("alerts"), saved.get("seconds")
        if not (type(kept) is int and kept >= 0 and type(alerts_before) is int and alerts_before >= 0
                and isinstance(elapsed_before, (int, float)) and math.isfinite(elapsed_before)):
            raise InvalidInputError(f"checkpoint {args.resume!r} does not record how many alerts were written; "
                                    "it is damaged; rerun without --resume")
        learned_before = saved.get("learned", 0)
        if type(learned_before) is not int or not 0 <= learned_before <= len(learn or ()):
            raise InvalidInputError(f"checkpoint {args.resume!r} records {learned_before!r} labels learnt, which "
                                    f"--learn does not hold; it is damaged or for other labels; rerun without --resume")
        reader.restore(saved.get("reader", {}))
        alerts_file = _AlertFile(partial, kept)
        elapsed_before = float(elapsed_before)
    else:
        extra_options = {} if observation_map is None else {"observation_map": observation_map}
        if args.confirm_windows is not None:
            extra_options["confirm_windows"] = args.confirm_windows
        defender = defender_class(name)(posterior, threshold=args.threshold, max_clock_skew=args.max_clock_skew,
                                        **extra_options)
        if learn is not None:
            defender.record = _ledger(defender)
        out.parent.mkdir(parents=True, exist_ok=True)
        alerts_file = _AlertFile(partial, None)
        alerts_before = 0
        elapsed_before = 0.0
        learned_before = 0
    # Labels are folded in, in order of their ends, once the stream has passed them (at a block's end).
    pending = sorted(learn or (), key=_label_end)[learned_before:]
    learned = [learned_before]

    def learn_due(until: float) -> None:
        due = []
        while pending and _label_end(pending[0]) <= until:
            due.append(pending.pop(0))
        if due:
            defender.learn(due)
            learned[0] += len(due)

    last_save = [time.perf_counter()]
    run_started = time.perf_counter()

    def save_checkpoint() -> None:
        now = time.perf_counter()
        if now - last_save[0] < args.checkpoint_every:
            return
        # Alerts of the events read so far are written before the state that has raised them is saved.
        alerts_file.write(defender.pop_alerts())
        counts = reader.counts()
        ledger = {"ledger": defender.record.state_dict()} if learn is not None else {}
        defender.save(checkpoint, extra={**ledger, "defend": {
            "source": source, "fingerprint": _fingerprint(reader.path, counts["position"]["offset"]),
            "reader": counts, "alerts_bytes": alerts_file.size, "alerts": alerts_before + alerts_file.count,
            "threshold": args.threshold, "posterior": args.posterior, "defender": name,
            "map": args.observation_map, "learn": args.learn, "confirm_windows": args.confirm_windows,
            "learned": learned[0], "seconds": elapsed_before + now - run_started}})
        last_save[0] = now

    def after_block() -> None:
        learn_due(defender.belief.ts)
        save_checkpoint()

    bar = progress_bar(None, "defend")
    try:
        stats = defend_stream(reader, defender, bar=bar, on_alerts=alerts_file.write, on_block=after_block)
        # Labels ending at or after the stream's last window: the run has seen all it will.
        learn_due(math.inf)
    finally:
        bar.close()
        alerts_file.close()
    if args.learned:
        with atomic_path(Path(args.learned)) as temporary:
            defender.posterior().save(temporary)
    os.replace(partial, out)
    fsync_directory(out.parent if str(out.parent) else ".")
    if checkpoint.exists():
        # The run is complete; its checkpoint would only resume a finished run.
        checkpoint.unlink()
    rejected = dict(defender.rejected)
    for reason, count in reader.reasons.items():
        rejected[reason] = rejected.get(reason, 0) + count
    records = reader.events + reader.skipped
    alerts = alerts_before + alerts_file.count
    unmatched = getattr(defender, "unmatched", None)
    unmatched_kinds = dict(unmatched.most_common(10)) if unmatched is not None else {}
    summary = {**stats, "events": records, "accepted": defender.accepted, "rejected": rejected,
               "alerts": alerts, "out": str(out), "defender": name, "unmatched_kinds": unmatched_kinds}
    if learn is not None:
        summary.update(learned=learned[0], learned_posterior=args.learned)
    unusable = sum(rejected.values())
    if args.json:
        print(strict_json(summary))
    else:
        print(f"{records} events, {defender.accepted} accepted, {unusable} rejected, {alerts} alerts -> {out}")
        print(f"{stats['events_per_second']:.0f} events/s, latency p50 {stats['latency_p50_us']:.1f} us, "
              f"p99 {stats['latency_p99_us']:.1f} us")
        for alert in _read_alert_lines(out):
            print(alert)
    if rejected:
        # The reasons go to standard error so that --json output stays one object.
        listed = ", ".join(f"{reason} {count} ({REJECTION_REASONS.get(reason, reason)})"
                           for reason, count in sorted(rejected.items(), key=lambda item: -item[1]))
        print(f"bayes-defense defend: rejected {unusable} of {records} events: {listed}", file=sys.stderr)
        for line, message in reader.errors[:3]:
            print(f"bayes-defense defend:   line {line}: {message}", file=sys.stderr)
    if records == 0:
        print(f"bayes-defense defend: warning: {reader.path.name} holds no events; nothing was defended", file=sys.stderr)
        return EXIT_UNTRUSTED
    if defender.accepted * 2 < records:
        print(f"bayes-defense defend: warning: most of the log was unusable ({defender.accepted} of {records} events "
              f"accepted); the alerts do not cover it (schema: docs/log-schema.md)", file=sys.stderr)
        if unmatched_kinds:
            listed = ", ".join(f"{kind} {count}" for kind, count in unmatched_kinds.items())
            print(f"bayes-defense defend:   kinds that match nothing in the observation map: {listed} (give a map "
                  f"for this vocabulary with --map, docs/observation-maps.md)", file=sys.stderr)
        return EXIT_UNTRUSTED
    return EXIT_OK


def _ledger(defender: Any) -> Any:
    """The learning loop's ledger for ``defender``: from the counts of the posterior it runs, where it has them."""
    from bayes_defense.fitting.learning import SignalLedger

    return SignalLedger.for_defender(defender)


def _label_end(label: Any) -> float:
    # Checked by _learning_labels: every label has a finite end (a rejected alert's: its ts).
    return float(label.get("end", label.get("ts")))


def _learning_labels(path: str | None, learned: str | None) -> list[dict] | None:
    """The ``--learn`` file's labels (a list of objects, each with a finite ``end``), or None without it."""
    from bayes_defense.commands._common import read_json

    if path is None:
        if learned is not None:
            raise InvalidInputError("--learned writes the posterior --learn updates; give --learn LABELS with it")
        return None
    labels = read_json(Path(path), "labels")
    if not isinstance(labels, list) or not all(isinstance(label, dict) for label in labels):
        raise InvalidInputError(f"--learn {path!r} must hold a list of label objects (labels.json records, or "
                                f"{{verdict: not_attack, ...}}); got {type(labels).__name__}")
    for k, label in enumerate(labels):
        end = label.get("end", label.get("ts"))
        if isinstance(end, bool) or not isinstance(end, (int, float)) or not math.isfinite(end):
            raise InvalidInputError(f"--learn {path!r}: label {k} has no finite end (or ts) in seconds; got {end!r}")
    return labels


def _read_alert_lines(path: Path) -> list[str]:
    import json

    lines = []
    with open(path, encoding="utf-8") as handle:
        for text in handle:
            alert = json.loads(text)
            lines.append(f"  {alert['ts']:8.1f} s  {alert['attack']:<18} P={alert['probability']:.3f} "
                         f"[{alert['lower']:.3f}, {alert['upper']:.3f}] {alert['phase']:<9} "
                         f"nodes={','.join(alert['nodes']) or '-'} -> {alert['countermeasure']}")
    return lines

"""Running a scenario: to an iterator of events, or to files on disk."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bayes_defense.errors import ConfigError
from bayes_defense.ioutil import atomic_write
from bayes_defense.sim.engine import Simulation
from bayes_defense.sim.scenario import Scenario
from bayes_defense.stream.io import EVENT_FILE_NAMES, FORMATS, EventWriter
from bayes_defense.stream.schema import SCHEMA_VERSION, Event

__all__ = ["SimulationResult", "simulate", "run_to_events"]


@dataclass
class SimulationResult:
    """What :func:`simulate` wrote and how the run went.

    Attributes
    ----------
    out_dir, events_path, labels_path, faults_path, meta_path : Path
        The output directory and the files in it.
    events : int
        Events written.
    messages : int
        Protocol messages simulated.
    wall_seconds : float
        Wall-clock time of the run.
    labels, faults : list of dict
        The contents of ``labels.json`` and ``faults.json``.
    view_changes, safety_violations : int
        Completed view changes; sequence numbers where honest replicas diverged.
    """

    out_dir: Path
    events_path: Path
    labels_path: Path
    faults_path: Path
    meta_path: Path
    events: int
    messages: int
    wall_seconds: float
    labels: list[dict[str, Any]] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    view_changes: int = 0
    safety_violations: int = 0

    @property
    def messages_per_second(self) -> float:
        """Simulated protocol messages per wall-clock second."""
        return self.messages / self.wall_seconds if self.wall_seconds > 0 else float("inf")

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (what ``bayes-defense simulate --json`` prints)."""
        return {
            "out_dir": str(self.out_dir),
            "events_path": str(self.events_path),
            "labels_path": str(self.labels_path),
            "events": self.events,
            "messages": self.messages,
            "wall_seconds": round(self.wall_seconds, 3),
            "messages_per_second": round(self.messages_per_second, 1),
            "attacks": len(self.labels),
            "faults": len(self.faults),
            "view_changes": self.view_changes,
            "safety_violations": self.safety_violations,
        }


def run_to_events(scenario: Scenario) -> Iterator[Event]:
    """Simulate ``scenario`` and yield its events in time order, in flat memory.

    Use :class:`~bayes_defense.sim.engine.Simulation` directly to read the
    labels afterwards.

    Examples
    --------
    >>> from bayes_defense.sim import Scenario
    >>> events = list(run_to_events(Scenario(nodes=4, duration=3.0, seed=0)))
    >>> all(a.ts <= b.ts for a, b in zip(events, events[1:]))
    True
    """
    return Simulation(scenario).events()


def _write_json(path: Path, data: Any) -> None:
    # Atomic, as the event log is: an interrupted run leaves the old file or none.
    with atomic_write(path, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.write("\n")


def simulate(
    scenario: Scenario,
    out_dir: str | os.PathLike[str],
    fmt: str = "jsonl",
    *,
    progress: Callable[[float], None] | None = None,
) -> SimulationResult:
    """Simulate ``scenario`` and write its log, labels, faults and metadata.

    Parameters
    ----------
    scenario : Scenario
        What to run.
    out_dir : path-like
        Directory to write into (created if missing): ``events.<fmt>``,
        ``labels.json``, ``faults.json`` and ``meta.json``.
    fmt : {"jsonl", "csv", "parquet"}
        Format of the event log.
    progress : callable, optional
        Called with the simulated time after each telemetry interval.

    Returns
    -------
    SimulationResult

    Examples
    --------
    >>> import tempfile, json
    >>> from bayes_defense.sim import Scenario, AttackSpec
    >>> scenario = Scenario(nodes=4, duration=40.0, seed=2,
    ...     attacks=[AttackSpec("replay", start=25.0, precursor=15.0, duration=10.0)])
    >>> result = simulate(scenario, tempfile.mkdtemp())
    >>> json.loads(result.labels_path.read_text())[0]["attack"]
    'replay'
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown log format {fmt!r}; expected one of {', '.join(FORMATS)}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output path {str(out)!r} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    events_path = out / EVENT_FILE_NAMES[fmt]
    simulation = Simulation(scenario)
    started = time.perf_counter()
    interval = scenario.telemetry_interval
    next_report = interval
    with EventWriter(events_path, fmt) as writer:
        write = writer.write
        for event in simulation.events():
            write(event)
            if progress is not None and event.ts >= next_report:
                progress(event.ts)
                next_report = event.ts + interval
        count = writer.count
    wall = time.perf_counter() - started
    if progress is not None:
        progress(scenario.duration)
    paths = {name: out / f"{name}.json" for name in ("labels", "faults", "meta")}
    labels = simulation.labels
    faults = simulation.faults
    _write_json(paths["labels"], labels)
    _write_json(paths["faults"], faults)
    _write_json(
        paths["meta"],
        {
            "schema_version": SCHEMA_VERSION,
            "generator": "bayes_defense.sim",
            "format": fmt,
            "events_file": events_path.name,
            "seed": scenario.seed,
            "nodes": scenario.nodes,
            "f": scenario.f,
            "duration": scenario.duration,
            "telemetry_interval": scenario.telemetry_interval,
            "replicas": scenario.replica_names,
            "clients": scenario.client_names,
            "events": count,
            "messages": simulation.messages,
            "view_changes": simulation.view_changes,
            "safety_violations": simulation.safety_violations,
            "config": scenario.to_dict(),
        },
    )
    return SimulationResult(
        out_dir=out,
        events_path=events_path,
        labels_path=paths["labels"],
        faults_path=paths["faults"],
        meta_path=paths["meta"],
        events=count,
        messages=simulation.messages,
        wall_seconds=wall,
        labels=labels,
        faults=faults,
        view_changes=simulation.view_changes,
        safety_violations=simulation.safety_violations,
    )

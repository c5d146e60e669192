"""Sweeps: scenarios x seeds x intensities x detectors (and fits) as independent tasks on Dask.

A sweep is described by a TOML file (``bayes-defense sweep sweep.toml --out
DIR``, DESIGN.md section 8)::

    seeds = { first = 30000, count = 4 }      # or a list: [1, 2, 3]
    intensities = [1.0, 0.4]                  # "default": the simulator draws one per attack
    detectors = ["defender", "scored", "cusum", "defender@trained"]

    [scenarios.n7]                            # keyword arguments of bd.sim.random_scenario
    nodes = 7
    duration = 300.0
    attacks = ["equivocation", "sybil"]       # optional; default: one or two drawn per seed

    [fits.trained]                            # optional: a defender fitted on other seeds
    scenario = "n7"
    seeds = { first = 100, count = 3 }
    defender = "model"                        # whose model: "model" (default) or "scored"
    options = { num_samples = 200 }           # options of bd.fit(defender, ...)

Every combination of a scenario, a seed, an intensity and a detector is one
task: it simulates its own event stream from the seed (so no task reads
another's output), runs the detector on it and scores the alerts with
:func:`bayes_defense.stream.metrics.evaluate_alerts`. A detector named
``defender`` is the package's default defender (the model filter,
:data:`bayes_defense.stream.defender.DEFAULT_DEFENDER`, with its shipped
default posterior) and ``scored`` the scored baseline; ``defender@FIT`` is
the defender that the fit task ``FIT`` fitted (its ``defender`` key) run
with that posterior, and ``scored@FIT`` the same for a scored fit. A model
filter's fit uses the training runs' labels and fault labels. Fit tasks run
first. A task's identity is a hash of everything that
determines its result, and its result is written atomically to
``DIR/tasks/<id>.json``; a rerun with the same ``DIR`` skips every task whose
file is there, so an interrupted sweep (even by ``kill -9``) finishes the rest.
A task that raises is recorded as failed (``DIR/tasks/<id>.failed.json``,
retried by the next run) and the others go on. The table of all tasks is
written to ``DIR/results.parquet``.

Tasks run on Dask: a :class:`distributed.LocalCluster` started for the sweep by
default, or an existing cluster given by its scheduler address (its workers
need ``bayes_defense`` installed). The command is
:mod:`bayes_defense.commands.sweep`. :func:`run_task` runs one task in the
calling process; the sweep's table equals the rows of :func:`run_task` over
:func:`expand` (timing columns aside).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import time
import tomllib
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bayes_defense.errors import ConfigError, InvalidInputError

__all__ = [
    "DETECTORS",
    "SweepSpec",
    "Task",
    "SweepResult",
    "load_sweep",
    "parse_sweep",
    "expand",
    "run_task",
    "execute_task",
    "run_sweep",
    "read_table",
    "TIMING_COLUMNS",
]

#: Version of the task identity and result files; a change makes old results foreign.
TASK_FORMAT = 1

#: Columns that measure time, which differ between two runs of the same task.
TIMING_COLUMNS = ("seconds", "simulation_seconds")

_TOP_KEYS = {"seeds", "intensities", "detectors", "scenarios", "fits"}
_FIT_KEYS = {"scenario", "seeds", "intensity", "options", "defender"}


def _run_defender(name: str, events: list[Any], posterior: Any) -> list[Any]:
    from bayes_defense.stream.defender import choose_defender, defender_class

    # Either defender takes its fitted posterior as it is (the scored one draws its ensemble from it).
    defender = defender_class(choose_defender(name, posterior=posterior))(posterior, planner=None)  # countermeasures do not enter the metrics
    defender.observe_batch(events)
    defender.flush()
    return list(defender.alerts)


def _defender_alerts(events: list[Any], posterior: Any = None) -> list[Any]:
    # The default defender, or the one the fit was for.
    return _run_defender(None, events, posterior)


def _scored_alerts(events: list[Any], posterior: Any = None) -> list[Any]:
    return _run_defender("scored", events, posterior)


def _baseline(name: str) -> Callable[[list[Any], Any], list[Any]]:
    def run(events: list[Any], posterior: Any = None) -> list[Any]:
        from bayes_defense.stream import baselines

        return baselines.run_baseline(events, getattr(baselines, name))

    run.__name__ = f"run_{name}"
    return run


def _half_space_trees(events: list[Any], posterior: Any = None) -> list[Any]:
    from bayes_defense.stream.baselines import river_available, run_half_space_trees

    if not river_available():
        raise InvalidInputError("the half_space_trees detector needs river: pip install 'bayes_defense[peers]'")
    return run_half_space_trees(events)


#: Detector name -> function(events, posterior or None) -> alerts. Only ``defender`` and ``scored`` take a fit.
DETECTORS: dict[str, Callable[[list[Any], Any], list[Any]]] = {
    "defender": _defender_alerts,
    "scored": _scored_alerts,
    "fixed_threshold": _baseline("FixedThreshold"),
    "cusum": _baseline("Cusum"),
    "bocpd": _baseline("Bocpd"),
    "half_space_trees": _half_space_trees,
}


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _digest(data: Any) -> str:
    return hashlib.sha256(_canonical(data).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Task:
    """One unit of a sweep: a detection run (``kind="detect"``) or a defender fit (``kind="fit"``).

    ``scenario`` holds the keyword arguments of
    :func:`bayes_defense.sim.random_scenario`; ``intensity`` None lets the
    simulator draw each attack's intensity. ``fit`` is the identity of the
    fit whose posterior a detection uses (None: the prior), ``fit_seeds`` the
    training seeds of a fit task and ``options`` its ``bd.fit`` options.

    Examples
    --------
    >>> task = Task("detect", "small", {"nodes": 4, "duration": 120.0}, seed=1, intensity=None, detector="cusum")
    >>> len(task.id), task.id == Task.from_dict(task.to_dict()).id
    (20, True)
    """

    kind: str
    scenario_name: str
    scenario: Mapping[str, Any]
    seed: int | None = None
    intensity: float | None = None
    detector: str | None = None
    fit: str | None = None
    fit_name: str | None = None
    fit_seeds: tuple[int, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The task as plain JSON data (what its identity hashes)."""
        return {"format": TASK_FORMAT, "kind": self.kind, "scenario_name": self.scenario_name,
                "scenario": dict(self.scenario), "seed": self.seed, "intensity": self.intensity,
                "detector": self.detector, "fit": self.fit, "fit_name": self.fit_name,
                "fit_seeds": list(self.fit_seeds), "options": dict(self.options)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Task:
        """Inverse of :meth:`to_dict`."""
        return cls(kind=data["kind"], scenario_name=data["scenario_name"], scenario=dict(data["scenario"]),
                   seed=data["seed"], intensity=data["intensity"], detector=data["detector"], fit=data["fit"],
                   fit_name=data["fit_name"], fit_seeds=tuple(data["fit_seeds"]), options=dict(data["options"]))

    @property
    def id(self) -> str:
        """Hash of everything that determines the result (the scenario's name is a label, left out)."""
        data = self.to_dict()
        del data["scenario_name"], data["fit_name"]
        return _digest(data)


@dataclass
class SweepSpec:
    """A parsed ``sweep.toml``: see the module docstring for the format."""

    scenarios: dict[str, dict[str, Any]]
    seeds: list[int]
    intensities: list[float | None]
    detectors: list[str]
    fits: dict[str, dict[str, Any]] = field(default_factory=dict)


def _seeds(value: Any, where: str) -> list[int]:
    if isinstance(value, Mapping):
        if set(value) != {"first", "count"}:
            raise ConfigError(f"{where} must be a list of integers or {{ first = N, count = K }}; got keys "
                              f"{sorted(value)}")
        first, count = value["first"], value["count"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (first, count)) or count < 1:
            raise ConfigError(f"{where}: first and count must be integers, count at least 1; got {dict(value)}")
        return list(range(first, first + count))
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        if len(set(value)) != len(value):
            raise ConfigError(f"{where} lists a seed twice: {value}")
        return list(value)
    raise ConfigError(f"{where} must be a non-empty list of integers or {{ first = N, count = K }}; got {value!r}")


def _intensities(value: Any) -> list[float | None]:
    values = value if isinstance(value, list) else [value]
    out: list[float | None] = []
    for item in values:
        if item == "default":
            out.append(None)
        elif isinstance(item, int | float) and not isinstance(item, bool) and 0 < float(item) <= 1:
            out.append(float(item))
        else:
            raise ConfigError(f"intensities must be numbers in (0, 1] or \"default\"; got {item!r}")
    if not out:
        raise ConfigError("intensities is empty; give at least one, or leave it out for [\"default\"]")
    return out


def _scenario(name: str, settings: Any) -> dict[str, Any]:
    from bayes_defense.sim import random_scenario

    if not isinstance(settings, Mapping):
        raise ConfigError(f"[scenarios.{name}] must be a table of random_scenario arguments; got {settings!r}")
    settings = dict(settings)
    for key in ("seed", "intensity"):
        if key in settings:
            raise ConfigError(f"[scenarios.{name}] sets {key!r}; seeds and intensities are the sweep's own lists")
    try:
        random_scenario(0, **settings).validate()  # refuse a bad scenario now, not in every task
    except TypeError as error:
        raise ConfigError(f"[scenarios.{name}]: {error}; the keys are arguments of bd.sim.random_scenario "
                          "(nodes, duration, attacks, faults, and Scenario fields)") from None
    except ValueError as error:
        raise ConfigError(f"[scenarios.{name}]: {error}") from None
    return settings


def _fit_function(defender: str) -> Callable[..., Any]:
    if defender == "scored":
        from bayes_defense.fitting.defender import fit_defender

        return fit_defender
    from bayes_defense.fitting.signal_model import fit_signal_model

    return fit_signal_model


def _check_fit_options(name: str, defender: str, options: Mapping[str, Any]) -> None:
    import inspect

    # The sweep gives the labels (and fault labels) of its training runs itself.
    accepted = {key for key, parameter in inspect.signature(_fit_function(defender)).parameters.items()
                if parameter.kind is inspect.Parameter.KEYWORD_ONLY} - {"labels", "faults", "progress"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(f"[fits.{name}] options {', '.join(unknown)} are not options of bd.fit({defender!r}, ...); "
                          f"its options are {', '.join(sorted(accepted))}")


def parse_sweep(data: Mapping[str, Any]) -> SweepSpec:
    """Check a sweep's TOML data and return it as a :class:`SweepSpec`.

    Raises :class:`~bayes_defense.errors.ConfigError` naming the key at fault.

    Examples
    --------
    >>> spec = parse_sweep({"seeds": {"first": 5, "count": 2}, "detectors": ["cusum"],
    ...                     "scenarios": {"small": {"nodes": 4, "duration": 120.0}}})
    >>> spec.seeds, spec.intensities, len(expand(spec))
    ([5, 6], [None], 2)
    >>> parse_sweep({"seeds": [1], "detectors": ["cusom"], "scenarios": {"s": {}}})
    Traceback (most recent call last):
    ...
    bayes_defense.errors.ConfigError: unknown detector 'cusom'; the detectors are ...
    """
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} in the sweep; the keys are {', '.join(sorted(_TOP_KEYS))}")
    for key in ("seeds", "detectors", "scenarios"):
        if key not in data:
            raise ConfigError(f"the sweep has no {key!r}; it needs seeds, detectors and at least one [scenarios.NAME]")
    scenarios_data = data["scenarios"]
    if not isinstance(scenarios_data, Mapping) or not scenarios_data:
        raise ConfigError("scenarios must hold at least one table [scenarios.NAME]")
    scenarios = {str(name): _scenario(str(name), settings) for name, settings in scenarios_data.items()}
    fits: dict[str, dict[str, Any]] = {}
    for name, fit in dict(data.get("fits", {})).items():
        if not isinstance(fit, Mapping):
            raise ConfigError(f"[fits.{name}] must be a table; got {fit!r}")
        extra = sorted(set(fit) - _FIT_KEYS)
        if extra:
            raise ConfigError(f"unknown key(s) {', '.join(extra)} in [fits.{name}]; the keys are "
                              f"{', '.join(sorted(_FIT_KEYS))}")
        if fit.get("scenario") not in scenarios:
            raise ConfigError(f"[fits.{name}] scenario must name one of the scenarios ({', '.join(scenarios)}); "
                              f"got {fit.get('scenario')!r}")
        if "seeds" not in fit:
            raise ConfigError(f"[fits.{name}] needs seeds: the training runs, distinct from the sweep's seeds")
        options = fit.get("options", {})
        if not isinstance(options, Mapping):
            raise ConfigError(f"[fits.{name}] options must be a table of bd.fit options; got {options!r}")
        from bayes_defense.stream.defender import DEFAULT_DEFENDER, DEFENDERS

        defender = fit.get("defender", DEFAULT_DEFENDER)
        if defender not in DEFENDERS:
            raise ConfigError(f"[fits.{name}] defender must be one of {', '.join(DEFENDERS)}; got {defender!r}")
        _check_fit_options(name, defender, options)
        intensity = _intensities(fit.get("intensity", "default"))
        if len(intensity) != 1:
            raise ConfigError(f"[fits.{name}] intensity must be one value")
        fits[str(name)] = {"scenario": fit["scenario"], "seeds": _seeds(fit["seeds"], f"[fits.{name}] seeds"),
                           "intensity": intensity[0], "defender": defender, "options": dict(options)}
    detectors = data["detectors"]
    if not isinstance(detectors, list) or not detectors:
        raise ConfigError(f"detectors must be a non-empty list of names; got {detectors!r}")
    for detector in detectors:
        base, _, fit_name = str(detector).partition("@")
        if base not in DETECTORS:
            raise ConfigError(f"unknown detector {detector!r}; the detectors are {', '.join(DETECTORS)} "
                              "(and defender@FIT or scored@FIT for a fit under [fits.FIT])")
        if fit_name and (base not in ("defender", "scored") or fit_name not in fits):
            raise ConfigError(f"detector {detector!r}: only defender and scored take a fit, and FIT must be one "
                              f"of [fits.*] ({', '.join(fits) or 'none defined'})")
        if fit_name and base == "scored" and fits[fit_name]["defender"] != "scored":
            raise ConfigError(f"detector {detector!r}: [fits.{fit_name}] fits the {fits[fit_name]['defender']} "
                              f"defender's model; run it as defender@{fit_name}, or set defender = \"scored\" there")
    if len(set(detectors)) != len(detectors):
        raise ConfigError(f"detectors lists a name twice: {detectors}")
    return SweepSpec(scenarios=scenarios, seeds=_seeds(data["seeds"], "seeds"),
                     intensities=_intensities(data.get("intensities", "default")),
                     detectors=[str(d) for d in detectors], fits=fits)


def load_sweep(path: str | os.PathLike[str]) -> SweepSpec:
    """Read and check a ``sweep.toml`` file.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "sweep.toml"
    >>> _ = path.write_text('seeds = [1, 2]\\ndetectors = ["cusum"]\\n[scenarios.small]\\nnodes = 4\\n')
    >>> load_sweep(path).scenarios
    {'small': {'nodes': 4}}
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"no sweep file {str(path)!r}; give the path of a sweep.toml") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None
    return parse_sweep(data)


def _fit_tasks(spec: SweepSpec) -> dict[str, Task]:
    # Which defender's model is fitted is part of the fit's identity: it goes into the task's options.
    return {name: Task("fit", fit["scenario"], spec.scenarios[fit["scenario"]], intensity=fit["intensity"],
                       fit_name=name, fit_seeds=tuple(fit["seeds"]),
                       options={"defender": fit["defender"], **fit["options"]})
            for name, fit in spec.fits.items()}


def expand(spec: SweepSpec) -> list[Task]:
    """Every task of a sweep: its fits first, then scenarios x seeds x intensities x detectors.

    Examples
    --------
    >>> spec = parse_sweep({"seeds": [1, 2], "intensities": [1.0, 0.5], "detectors": ["cusum", "bocpd"],
    ...                     "scenarios": {"a": {"nodes": 4}, "b": {"nodes": 7}}})
    >>> len(expand(spec))
    16
    """
    fits = _fit_tasks(spec)
    tasks = list(fits.values())
    for name, scenario in spec.scenarios.items():
        for seed in spec.seeds:
            for intensity in spec.intensities:
                for detector in spec.detectors:
                    fit_name = detector.partition("@")[2] or None
                    tasks.append(Task("detect", name, scenario, seed=seed, intensity=intensity, detector=detector,
                                      fit=fits[fit_name].id if fit_name else None, fit_name=fit_name))
    return tasks


def _size(scenario: Mapping[str, Any]) -> tuple[int, float]:
    """Replicas and simulated seconds of a scenario, the simulator's defaults where it leaves them out."""
    import inspect

    from bayes_defense.sim import random_scenario

    defaults = inspect.signature(random_scenario).parameters
    return (int(scenario.get("nodes", defaults["nodes"].default)),
            float(scenario.get("duration", defaults["duration"].default)))


def _task_columns(task: Task) -> dict[str, Any]:
    nodes, duration = _size(task.scenario)
    return {"task_id": task.id, "kind": task.kind, "scenario": task.scenario_name, "nodes": nodes,
            "duration": duration, "seed": task.seed, "intensity": task.intensity, "detector": task.detector,
            "fit": task.fit_name}


def _simulate(scenario: Mapping[str, Any], seed: int, intensity: float | None):
    from bayes_defense.sim import Simulation, random_scenario

    drawn = random_scenario(seed, intensity=intensity, **scenario)
    simulation = Simulation(drawn)
    return drawn, simulation, list(simulation.events())


def _fit_path(out: Path, fit_id: str) -> Path:
    return out / "fits" / f"{fit_id}.nc"


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run_task(task: Task, out: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Run one task in this process and return its row of the sweep's table.

    A fit task writes its posterior to ``out/fits/<id>.nc`` (so ``out`` is
    needed for fits and for detections that use one). Exceptions propagate.

    Examples
    --------
    >>> task = Task("detect", "small", {"nodes": 4, "duration": 120.0, "attacks": ["sybil"]}, seed=1,
    ...             detector="cusum")
    >>> row = run_task(task)
    >>> row["detector"], row["attacks"], 0 <= row["false_positive_rate"] <= 1
    ('cusum', 1, True)
    """
    row = _task_columns(task)
    if task.kind == "fit":
        if out is None:
            raise InvalidInputError("a fit task writes its posterior under the sweep's directory; pass out")
        import bayes_defense as bd
        from bayes_defense.fitting import extract_features

        options = dict(task.options)
        defender = options.pop("defender", "scored")   # a fit task of an earlier release fitted the scored defender
        started = time.perf_counter()
        runs, events_seen = [], 0
        for seed in task.fit_seeds:
            _, simulation, events = _simulate(task.scenario, seed, task.intensity)
            events_seen += len(events)
            if defender == "scored":
                runs.append(extract_features(events, simulation.labels, progress=False))
            else:
                runs.append((events, simulation.labels, simulation.faults))
        simulated = time.perf_counter() - started
        posterior = bd.fit(defender, runs, **{"progress": False, **options})
        from bayes_defense.ioutil import atomic_path

        with atomic_path(_fit_path(Path(out), task.id)) as temporary:
            posterior.save(temporary)
        row.update({"events": events_seen, "simulation_seconds": simulated,
                    "seconds": time.perf_counter() - started - simulated,
                    "diagnostics_ok": bool(posterior.diagnostics_ok)})
        return row
    if task.kind != "detect":
        raise InvalidInputError(f"task kind must be 'detect' or 'fit'; got {task.kind!r}")
    base = str(task.detector).partition("@")[0]
    if base not in DETECTORS:
        raise InvalidInputError(f"unknown detector {task.detector!r}; the detectors are {', '.join(DETECTORS)}")
    posterior = None
    if task.fit is not None:
        if out is None:
            raise InvalidInputError(f"detector {task.detector!r} reads its fit from the sweep's directory; pass out")
        import bayes_defense as bd

        path = _fit_path(Path(out), task.fit)
        if not path.exists():
            raise InvalidInputError(f"the fit {task.fit_name!r} this detection needs has no posterior at {path} "
                                    "(did the fit task fail?)")
        posterior = bd.load_posterior(path)
    from bayes_defense.stream.metrics import evaluate_alerts

    started = time.perf_counter()
    drawn, simulation, events = _simulate(task.scenario, int(task.seed), task.intensity)
    simulated = time.perf_counter() - started
    started = time.perf_counter()
    alerts = DETECTORS[base](events, posterior)
    seconds = time.perf_counter() - started
    report = evaluate_alerts(simulation.labels, alerts, drawn.duration)
    row.update({"events": len(events), "attack_names": ";".join(label["attack"] for label in simulation.labels),
                **{key: (list(map(float, value)) if isinstance(value, list) else value)
                   for key, value in report.items()},
                "simulation_seconds": simulated, "seconds": seconds})
    return row


def _result_path(out: Path, task: Task, failed: bool = False) -> Path:
    return out / "tasks" / f"{task.id}{'.failed' if failed else ''}.json"


def _finished(out: Path, task: Task) -> dict[str, Any] | None:
    path = _result_path(out, task)
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if record.get("task") != task.to_dict():
        return None
    return record["row"]


def _write_record(path: Path, record: Mapping[str, Any]) -> None:
    from bayes_defense.ioutil import atomic_write

    with atomic_write(path) as handle:
        json.dump(record, handle, allow_nan=False, default=str)


def execute_task(task: Task, out: str) -> dict[str, Any]:
    """Run a task unless its result is already under ``out``; record the result or the failure.

    This is what a Dask worker runs. It never raises for a failing task: the
    returned record has ``status`` ``"done"``, ``"skipped"`` (finished by an
    earlier run) or ``"failed"`` with the error, and the same is written to
    ``out/tasks/<id>.json`` (or ``<id>.failed.json``), atomically.

    Examples
    --------
    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> task = Task("detect", "small", {"nodes": 4, "duration": 120.0}, seed=1, detector="cusum")
    >>> execute_task(task, out)["status"], execute_task(task, out)["status"]
    ('done', 'skipped')
    """
    out_path = Path(out)
    row = _finished(out_path, task)
    if row is not None:
        return {"task_id": task.id, "status": "skipped", "row": row}
    failed_path = _result_path(out_path, task, failed=True)
    try:
        row = run_task(task, out_path)
    except Exception as error:  # a failing task is recorded and the sweep goes on
        message = f"{type(error).__name__}: {' '.join(str(error).split())}"
        record = {"task": task.to_dict(), "status": "failed", "error": message}
        _write_record(failed_path, record)
        return {"task_id": task.id, "status": "failed", "error": message}
    row = {key: _json_number(value) for key, value in row.items()}
    _write_record(_result_path(out_path, task), {"task": task.to_dict(), "status": "done", "row": row})
    with contextlib.suppress(FileNotFoundError):
        failed_path.unlink()
    return {"task_id": task.id, "status": "done", "row": row}


@dataclass
class SweepResult:
    """What a sweep did: counts, the failures, the table and where it was written."""

    tasks: int
    done: int
    skipped: int
    failed: list[dict[str, Any]]
    table: Any
    path: Path
    seconds: float

    def summary(self) -> dict[str, Any]:
        """The ``--json`` summary (strict JSON)."""
        return {"tasks": self.tasks, "done": self.done, "skipped": self.skipped, "failed": len(self.failed),
                "failures": self.failed, "table": str(self.path), "rows": int(len(self.table)),
                "seconds": round(self.seconds, 3)}


def _table(rows: Sequence[Mapping[str, Any]]):
    import pandas as pd

    table = pd.DataFrame(list(rows)).reset_index(drop=True)
    for column in table.columns:
        values = [v for v in table[column] if v is not None]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        if values and numeric and len(values) < len(table):
            # A rate without a denominator is stored as null in JSON; in the table it is NaN, so the
            # column stays numeric.
            table[column] = pd.to_numeric(table[column], errors="raise").astype(float)
    return table


def read_table(path: str | os.PathLike[str]):
    """Read a sweep's ``results.parquet`` as a pandas DataFrame (one row per task, in task order)."""
    import pandas as pd

    return pd.read_parquet(path)


class _Progress:
    def __init__(self, total: int, show: bool) -> None:
        self._bar = None
        if show:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc="sweep", unit="task", leave=False)

    def update(self, count: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@contextlib.contextmanager
def _client(scheduler: str | None, workers: int | None):
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as error:
            raise InvalidInputError(f"cannot reach the Dask scheduler at {scheduler!r} ({error}); give a running "
                                    "scheduler's address, or leave --scheduler out to start a local cluster") from None
        with client:
            yield client
        return
    count = workers or max(1, min(os.cpu_count() or 1, 4))
    # One thread per worker process: the simulator and the detectors are pure Python, so threads would
    # share one interpreter lock; processes run in parallel.
    # silence_logs: the cluster is the sweep's own, so its routine shutdown notices are not the user's concern.
    # dashboard_address ":0": the scheduler serves HTTP even without a dashboard, and a fixed port would
    # collide with another sweep (or Jupyter's Dask) on the same machine.
    with LocalCluster(n_workers=count, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client


def _run_all(tasks: Sequence[Task], out: Path, client: Any, progress: _Progress) -> dict[str, dict[str, Any]]:
    from distributed import as_completed

    results: dict[str, dict[str, Any]] = {}
    if not tasks:
        return results
    # A fresh key per run: a killed earlier client's tasks may still be known to a shared scheduler.
    run = uuid.uuid4().hex[:8]
    futures = {client.submit(execute_task, task, str(out), key=f"bayes-defense-sweep-{task.id}-{run}",
                             pure=False): task for task in tasks}
    for future in as_completed(futures):
        try:
            record = future.result()
        except Exception as error:  # the worker died or the task could not be shipped
            record = {"task_id": futures[future].id, "status": "failed",
                      "error": f"{type(error).__name__}: {' '.join(str(error).split())}"}
        results[record["task_id"]] = record
        progress.update()
    return results


def run_sweep(spec: SweepSpec, out: str | os.PathLike[str], *, scheduler: str | None = None,
              workers: int | None = None, client: Any = None, progress: bool | None = None) -> SweepResult:
    """Run a sweep's unfinished tasks on Dask and write ``out/results.parquet``.

    Parameters
    ----------
    spec : SweepSpec
        From :func:`load_sweep` or :func:`parse_sweep`.
    out : path-like
        The sweep's directory: per-task results under ``tasks/``, fitted
        posteriors under ``fits/``, the table ``results.parquet``.
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``); default:
        start a :class:`distributed.LocalCluster` for this sweep.
    workers : int, optional
        Worker processes of that local cluster (default: the CPU count, at most 4).
    client : distributed.Client, optional
        Use this client instead (``scheduler`` and ``workers`` are then ignored).
    progress : bool, optional
        Show a progress bar (default: when standard output is a terminal).

    Returns
    -------
    SweepResult
        ``table`` holds one row per task in :func:`expand` order, failed
        tasks included (``status`` "failed", their ``error``, no metrics).

    Examples
    --------
    >>> import tempfile
    >>> from distributed import Client
    >>> spec = parse_sweep({"seeds": [1, 2], "detectors": ["cusum", "fixed_threshold"],
    ...                     "scenarios": {"small": {"nodes": 4, "duration": 120.0}}})
    >>> with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0") as client:
    ...     result = run_sweep(spec, tempfile.mkdtemp(), client=client)
    >>> result.done, len(result.table), list(result.table["status"].unique())
    (4, 4, ['done'])
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {str(out)!r} is a file; give a directory for the sweep's results")
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tasks = expand(spec)
    finished = {task.id: row for task in tasks if (row := _finished(out, task)) is not None}
    pending = [task for task in tasks if task.id not in finished]
    show = sys.stdout.isatty() if progress is None else progress
    bar = _Progress(len(tasks), show)
    bar.update(len(finished))
    records: dict[str, dict[str, Any]] = {}
    try:
        if pending:
            context = contextlib.nullcontext(client) if client is not None else _client(scheduler, workers)
            with context as active:
                # Fits first: the detections that use a fit read its posterior file.
                records.update(_run_all([t for t in pending if t.kind == "fit"], out, active, bar))
                records.update(_run_all([t for t in pending if t.kind == "detect"], out, active, bar))
    finally:
        bar.close()
    rows, failures = [], []
    done = 0
    for task in tasks:
        if task.id in finished:
            rows.append({**finished[task.id], "status": "done", "error": None})
            continue
        record = records.get(task.id, {"status": "failed", "error": "no result came back"})
        if record["status"] == "failed":
            failures.append({"task_id": task.id, "kind": task.kind, "scenario": task.scenario_name,
                             "seed": task.seed, "intensity": task.intensity, "detector": task.detector,
                             "fit": task.fit_name, "error": record["error"]})
            rows.append({**_task_columns(task), "status": "failed", "error": record["error"]})
        else:
            done += record["status"] == "done"
            finished_row = record["row"]
            rows.append({**finished_row, "status": "done", "error": None})
    table = _table(rows)
    from bayes_defense.ioutil import atomic_path

    path = out / "results.parquet"
    with atomic_path(path) as temporary:
        table.to_parquet(temporary, index=False)
    skipped = len(finished) + sum(1 for r in records.values() if r["status"] == "skipped")
    return SweepResult(tasks=len(tasks), done=done, skipped=skipped, failed=failures, table=table, path=path,
                       seconds=time.perf_counter() - started)

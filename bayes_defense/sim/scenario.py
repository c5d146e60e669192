"""Simulation schedules: which attacks and benign faults happen, when, and how hard.

A :class:`Scenario` is plain data, loadable from a TOML or JSON file (or a
dict) and validated with one-line :class:`~bayes_defense.errors.ConfigError`
messages. :func:`random_scenario` draws a fresh valid schedule from a seed.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from bayes_defense.errors import ConfigError

__all__ = [
    "ATTACKS",
    "PRIMARY_ATTACKS",
    "FAULTS",
    "MIN_NODES",
    "MAX_NODES",
    "AttackSpec",
    "FaultSpec",
    "Scenario",
    "load_scenario",
    "random_scenario",
    "place_schedule",
]

#: The eight attacks the simulator carries out (DESIGN.md section 3).
ATTACKS: tuple[str, ...] = (
    "equivocation",
    "slow_leader",
    "censorship",
    "flooding",
    "view_change_abuse",
    "replay",
    "sybil",
    "eclipse",
)

#: Attacks that only act while their Byzantine replica is the primary.
PRIMARY_ATTACKS: frozenset[str] = frozenset({"equivocation", "slow_leader", "censorship"})

#: Attacks whose attackers are outside identities rather than replicas.
OUTSIDER_ATTACKS: frozenset[str] = frozenset({"sybil", "eclipse"})

#: Benign faults: they must never be labelled as attacks.
FAULTS: tuple[str, ...] = ("crash", "slow", "jitter", "partition", "load_spike", "restart")

MIN_NODES = 4
MAX_NODES = 100

# Default number of attacking identities when a spec names none.
_DEFAULT_COUNT = {"sybil": 8, "eclipse": 4}


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _names(value: Any, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{what} must be a list of node names, got {value!r}")
    return tuple(value)


def _check_keys(data: dict[str, Any], cls: type, what: str) -> None:
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ConfigError(f"unknown {what} key(s) {', '.join(unknown)}; valid keys are {', '.join(valid)}")


@dataclass
class AttackSpec:
    """One attack instance in a schedule.

    Parameters
    ----------
    attack : str
        One of :data:`ATTACKS`.
    start : float
        Execution start, seconds from the beginning of the run.
    duration : float
        Length of the execution phase in seconds.
    precursor : float
        Length of the precursor phase before ``start`` (preparation that
        shows in telemetry before the damage), seconds.
    intensity : float
        In (0, 1]; 1 is blatant, small values keep the signals inside the
        range of benign variation.
    nodes : tuple of str, optional
        The attacking nodes. Replica attacks default to the primary at the
        start of the precursor (equivocation, slow_leader, censorship) or to
        one replica drawn from the seed; Sybil and eclipse attackers default
        to ``count`` fresh outside identities.
    count : int, optional
        Number of attacking identities when ``nodes`` is not given.
    colluders : int or tuple of str
        Extra Byzantine replicas that back the attack (equivocation: they
        prepare and commit both digests; view_change_abuse: they vote too).
    target : str, optional
        Victim: the censored client or the eclipsed replica.

    Examples
    --------
    >>> AttackSpec("slow_leader", start=120.0, duration=60.0).precursor_start
    30.0
    """

    attack: str
    start: float
    duration: float = 60.0
    precursor: float = 90.0
    intensity: float = 1.0
    nodes: tuple[str, ...] | None = None
    count: int | None = None
    colluders: int | tuple[str, ...] = 0
    target: str | None = None

    @property
    def precursor_start(self) -> float:
        """Time the precursor phase begins."""
        return self.start - self.precursor

    @property
    def end(self) -> float:
        """Time the execution phase ends."""
        return self.start + self.duration

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttackSpec:
        """Build a spec from a config table; see the class for the keys."""
        if not isinstance(data, dict):
            raise ConfigError(f"each attack must be a table/object, got {data!r}")
        _check_keys(data, cls, "attack")
        if "attack" not in data or "start" not in data:
            raise ConfigError(f"an attack needs at least 'attack' and 'start', got {sorted(data)}")
        values = dict(data)
        values["nodes"] = _names(values.get("nodes"), "attack 'nodes'")
        colluders = values.get("colluders", 0)
        if not isinstance(colluders, int) or isinstance(colluders, bool):
            colluders = _names(colluders, "attack 'colluders'") or 0
        values["colluders"] = colluders
        return cls(**values)

    def replica_attackers(self) -> int:
        """How many replicas this attack turns Byzantine (attackers plus colluders)."""
        colluders = self.colluders if isinstance(self.colluders, int) else len(self.colluders)
        if self.attack in OUTSIDER_ATTACKS:
            return colluders
        return (len(self.nodes) if self.nodes else (self.count or 1)) + colluders


@dataclass
class FaultSpec:
    """One benign fault in a schedule.

    Parameters
    ----------
    kind : str
        One of :data:`FAULTS`: ``crash`` (a replica stops), ``slow`` (an
        honest replica, possibly the primary, processes slowly), ``jitter``
        (network delays grow and spread), ``partition`` (``nodes`` lose
        their links to the rest, then heal), ``load_spike`` (a client sends
        several times its usual load), ``restart`` (a replica goes down for
        ``duration`` and on return replays its recent messages).
    start, duration : float
        Window of the fault, seconds.
    node : str, optional
        The replica or client concerned; drawn from the seed when omitted.
    nodes : tuple of str, optional
        For ``partition``: the side cut off (default: f replicas).
    magnitude : float
        Strength (slow-down factor, jitter growth, load multiplier); 1 is
        typical.

    Examples
    --------
    >>> FaultSpec("crash", start=10.0, duration=5.0, node="r2").end
    15.0
    """

    kind: str
    start: float
    duration: float = 30.0
    node: str | None = None
    nodes: tuple[str, ...] | None = None
    magnitude: float = 1.0

    @property
    def end(self) -> float:
        """Time the fault ends (heals, restarts, calms)."""
        return self.start + self.duration

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultSpec:
        """Build a spec from a config table; see the class for the keys."""
        if not isinstance(data, dict):
            raise ConfigError(f"each fault must be a table/object, got {data!r}")
        _check_keys(data, cls, "fault")
        if "kind" not in data or "start" not in data:
            raise ConfigError(f"a fault needs at least 'kind' and 'start', got {sorted(data)}")
        values = dict(data)
        values["nodes"] = _names(values.get("nodes"), "fault 'nodes'")
        return cls(**values)


@dataclass
class Scenario:
    """A complete simulation schedule and the cluster's settings.

    Parameters
    ----------
    nodes : int
        Number of replicas, 4 to 100; ``f = (nodes - 1) // 3``.
    duration : float
        Simulated seconds.
    seed : int
        Seed of the one random generator; equal seeds give identical logs.
    attacks, faults : list
        :class:`AttackSpec` and :class:`FaultSpec` instances.
    clients : int
        Number of clients.
    request_rate : float
        Requests per second from all clients together.
    telemetry_interval : float
        Seconds between telemetry events.
    batch_interval : float
        Seconds between pre-prepares of an honest primary.
    max_batch : int
        Most requests in one batch.
    request_timeout : float
        Seconds a backup waits for a request to be ordered before it asks
        for a view change.
    checkpoint_interval : int
        Sequence numbers between checkpoints.
    base_latency : float
        Mean one-way link delay between replicas, seconds.
    jitter : float
        Spread of link delays (log-normal sigma).
    benign_join_rate : float
        Joins per second of ordinary new clients from diverse networks.

    Examples
    --------
    >>> scenario = Scenario.from_dict({"nodes": 7, "duration": 300,
    ...     "attacks": [{"attack": "flooding", "start": 150, "intensity": 0.5}]})
    >>> scenario.f, scenario.attacks[0].precursor_start
    (2, 60.0)
    """

    nodes: int = 4
    duration: float = 60.0
    seed: int = 0
    attacks: list[AttackSpec] = field(default_factory=list)
    faults: list[FaultSpec] = field(default_factory=list)
    clients: int = 4
    request_rate: float = 100.0
    telemetry_interval: float = 1.0
    batch_interval: float = 0.1
    max_batch: int = 512
    request_timeout: float = 2.0
    checkpoint_interval: int = 64
    base_latency: float = 0.005
    jitter: float = 0.3
    benign_join_rate: float = 0.01

    def __post_init__(self) -> None:
        self.attacks = [a if isinstance(a, AttackSpec) else AttackSpec.from_dict(a) for a in self.attacks]
        self.faults = [x if isinstance(x, FaultSpec) else FaultSpec.from_dict(x) for x in self.faults]
        self.validate()

    @property
    def f(self) -> int:
        """Number of Byzantine replicas the cluster tolerates."""
        return (self.nodes - 1) // 3

    @property
    def replica_names(self) -> list[str]:
        """Replica node names ``r0`` .. ``r{n-1}``."""
        return [f"r{i}" for i in range(self.nodes)]

    @property
    def client_names(self) -> list[str]:
        """Client node names ``client0`` ..."""
        return [f"client{i}" for i in range(self.clients)]

    def validate(self) -> None:
        """Raise :class:`ConfigError` with a one-line reason if the schedule is invalid."""
        if isinstance(self.nodes, bool) or not isinstance(self.nodes, int):
            raise ConfigError(f"nodes must be an integer, got {self.nodes!r}")
        if not MIN_NODES <= self.nodes <= MAX_NODES:
            raise ConfigError(f"nodes must be between {MIN_NODES} and {MAX_NODES}, got {self.nodes}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        for name in ("duration", "telemetry_interval", "batch_interval", "request_timeout", "base_latency", "request_rate"):
            value = _number(getattr(self, name), name)
            if value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        for name in ("jitter", "benign_join_rate"):
            if _number(getattr(self, name), name) < 0:
                raise ConfigError(f"{name} must be non-negative, got {getattr(self, name)}")
        for name in ("clients", "max_batch", "checkpoint_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        replicas = set(self.replica_names)
        clients = set(self.client_names)
        byzantine = 0
        for index, spec in enumerate(self.attacks):
            where = f"attack #{index + 1} ({spec.attack})"
            if spec.attack not in ATTACKS:
                raise ConfigError(f"unknown attack {spec.attack!r}; valid attacks are {', '.join(ATTACKS)}")
            start = _number(spec.start, f"{where} start")
            duration = _number(spec.duration, f"{where} duration")
            precursor = _number(spec.precursor, f"{where} precursor")
            intensity = _number(spec.intensity, f"{where} intensity")
            if duration <= 0 or precursor < 0:
                raise ConfigError(f"{where}: durations must not be negative (duration {duration}, precursor {precursor}); execution duration must be positive")
            if not 0 < intensity <= 1:
                raise ConfigError(f"{where}: intensity must be in (0, 1] (1 = blatant), got {intensity}")
            if start - precursor < 0:
                raise ConfigError(f"{where}: precursor starts before the run (start {start} - precursor {precursor} < 0)")
            if start + duration > self.duration:
                raise ConfigError(f"{where}: ends at {start + duration} s, after the run's duration {self.duration} s")
            if spec.count is not None and (isinstance(spec.count, bool) or not isinstance(spec.count, int) or spec.count < 1):
                raise ConfigError(f"{where}: count must be a positive integer, got {spec.count!r}")
            if isinstance(spec.colluders, int) and spec.colluders < 0:
                raise ConfigError(f"{where}: colluders must not be negative, got {spec.colluders}")
            named = list(spec.nodes or []) + (list(spec.colluders) if not isinstance(spec.colluders, int) else [])
            if spec.attack not in OUTSIDER_ATTACKS or not isinstance(spec.colluders, int):
                bad = [name for name in (named if spec.attack not in OUTSIDER_ATTACKS else list(spec.colluders)) if name not in replicas]
                if bad:
                    raise ConfigError(f"{where}: {', '.join(bad)} not a replica; replicas are r0..r{self.nodes - 1}")
            if spec.attack in PRIMARY_ATTACKS and spec.nodes and len(spec.nodes) != 1:
                raise ConfigError(f"{where}: a {spec.attack} attack has exactly one attacking replica (the primary), got {len(spec.nodes)}")
            if spec.target is not None:
                valid_targets = clients if spec.attack == "censorship" else replicas
                if spec.attack not in ("censorship", "eclipse") or spec.target not in valid_targets:
                    raise ConfigError(f"{where}: target {spec.target!r} is invalid; only censorship (a client) and eclipse (a replica) take a target")
            byzantine += spec.replica_attackers()
        if byzantine > self.nodes:
            raise ConfigError(f"more Byzantine replicas ({byzantine}) than replicas ({self.nodes}); lower count/colluders or add nodes")
        for index, spec in enumerate(self.faults):
            where = f"fault #{index + 1} ({spec.kind})"
            if spec.kind not in FAULTS:
                raise ConfigError(f"unknown fault {spec.kind!r}; valid faults are {', '.join(FAULTS)}")
            start = _number(spec.start, f"{where} start")
            duration = _number(spec.duration, f"{where} duration")
            if start < 0 or duration <= 0:
                raise ConfigError(f"{where}: start must not be negative and duration must be positive (start {start}, duration {duration})")
            if start + duration > self.duration:
                raise ConfigError(f"{where}: ends at {start + duration} s, after the run's duration {self.duration} s")
            if _number(spec.magnitude, f"{where} magnitude") <= 0:
                raise ConfigError(f"{where}: magnitude must be positive, got {spec.magnitude}")
            valid = clients if spec.kind == "load_spike" else replicas
            if spec.node is not None and spec.node not in valid:
                raise ConfigError(f"{where}: node {spec.node!r} is not a {'client' if spec.kind == 'load_spike' else 'replica'} of this cluster")
            if spec.nodes is not None:
                bad = [name for name in spec.nodes if name not in replicas]
                if bad or not spec.nodes or len(spec.nodes) >= self.nodes:
                    raise ConfigError(f"{where}: nodes must be a proper, non-empty subset of the replicas, got {list(spec.nodes)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scenario:
        """Build and validate a scenario from a decoded TOML/JSON document.

        Examples
        --------
        >>> Scenario.from_dict({"nodes": 2})
        Traceback (most recent call last):
        ...
        bayes_defense.errors.ConfigError: nodes must be between 4 and 100, got 2
        """
        if not isinstance(data, dict):
            raise ConfigError(f"a scenario must be a table/object, got {type(data).__name__}")
        _check_keys(data, cls, "scenario")
        values = dict(data)
        values["attacks"] = [AttackSpec.from_dict(a) for a in values.get("attacks", [])]
        values["faults"] = [FaultSpec.from_dict(x) for x in values.get("faults", [])]
        try:
            return cls(**values)
        except TypeError as error:  # a wrongly typed field that validation could not reach
            raise ConfigError(f"invalid scenario: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        """Return the scenario as JSON-ready data (the inverse of :meth:`from_dict`)."""
        data = asdict(self)
        for spec in data["attacks"] + data["faults"]:
            for key, value in list(spec.items()):
                if isinstance(value, tuple):
                    spec[key] = list(value)
        return data


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Read a scenario from a ``.toml`` or ``.json`` file.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "run.toml"
    >>> _ = path.write_text('nodes = 7\\nduration = 200\\n[[attacks]]\\nattack = "sybil"\\nstart = 100\\n')
    >>> load_scenario(path).attacks[0].attack
    'sybil'
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file {str(path)!r} must end in .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"cannot parse {path.name}: {error}") from None
    return Scenario.from_dict(data)


def place_schedule(
    rng: np.random.Generator,
    duration: float,
    attacks: list[str],
    faults: list[str],
    *,
    intensity: float | None = None,
) -> tuple[list[AttackSpec], list[FaultSpec]]:
    """Lay attacks one after another (with quiet gaps) and faults anywhere.

    Attack windows (precursor through end plus 30 s) never overlap each other,
    so that every attack is separately identifiable; benign faults may fall
    anywhere, including inside attack windows.

    Returns
    -------
    (list of AttackSpec, list of FaultSpec)

    Examples
    --------
    >>> import numpy as np
    >>> attacks, faults = place_schedule(np.random.default_rng(0), 600.0, ["replay"], ["crash"])
    >>> attacks[0].precursor_start >= 0 and attacks[0].end <= 600.0
    True
    """
    for name in attacks:
        if name not in ATTACKS:
            raise ConfigError(f"unknown attack {name!r}; valid attacks are {', '.join(ATTACKS)}")
    for name in faults:
        if name not in FAULTS:
            raise ConfigError(f"unknown fault {name!r}; valid faults are {', '.join(FAULTS)}")
    if intensity is not None and not 0 < intensity <= 1:
        raise ConfigError(f"intensity must be in (0, 1] (1 = blatant), got {intensity}")
    specs: list[AttackSpec] = []
    if attacks:
        # Scale phase lengths down for short runs, keeping the 60-120 s
        # precursor of the design where the run is long enough.
        slot = duration / len(attacks)
        if slot < 20:
            raise ConfigError(f"{len(attacks)} attack(s) need at least {20 * len(attacks)} s; duration is {duration} s")
        scale = min(1.0, slot / 240.0)
        for index, name in enumerate(attacks):
            precursor = float(rng.uniform(60, 120)) * scale
            execution = float(rng.uniform(30, 90)) * scale
            slack = max(0.0, slot - precursor - execution - 30 * scale)
            offset = index * slot + float(rng.uniform(0, slack))
            level = intensity if intensity is not None else float(rng.uniform(0.2, 1.0))
            specs.append(
                AttackSpec(
                    name,
                    start=round(offset + precursor, 3),
                    duration=round(execution, 3),
                    precursor=round(precursor, 3),
                    intensity=round(level, 3),
                )
            )
    fault_specs: list[FaultSpec] = []
    for name in faults:
        length = float(min(duration / 4, rng.uniform(5, 40))) if name != "restart" else float(min(duration / 4, rng.uniform(1, 4)))
        start = float(rng.uniform(0, max(duration - length, 0)))
        fault_specs.append(
            FaultSpec(name, start=round(start, 3), duration=round(length, 3), magnitude=round(float(rng.uniform(0.5, 1.5)), 3))
        )
    return specs, fault_specs


def random_scenario(
    seed: int,
    nodes: int = 7,
    duration: float = 600.0,
    *,
    attacks: list[str] | int | None = None,
    faults: list[str] | int | None = None,
    intensity: float | None = None,
    **settings: Any,
) -> Scenario:
    """Draw a random but valid scenario from a seed.

    Parameters
    ----------
    seed : int
        Seeds both the schedule and the simulation.
    nodes : int
        Number of replicas.
    duration : float
        Simulated seconds.
    attacks : list of str or int, optional
        Attack names, or how many to draw (default: one or two).
    faults : list of str or int, optional
        Benign fault kinds, or how many to draw (default: one or two).
    intensity : float, optional
        Fixed intensity for every attack; drawn in [0.2, 1] when omitted.
    **settings
        Other :class:`Scenario` fields.

    Returns
    -------
    Scenario

    Examples
    --------
    >>> scenario = random_scenario(3, nodes=4, duration=400, attacks=["sybil", "replay"])
    >>> [a.attack for a in scenario.attacks]
    ['sybil', 'replay']
    >>> random_scenario(3, nodes=4, duration=400).to_dict() == random_scenario(3, nodes=4, duration=400).to_dict()
    True
    """
    rng = np.random.default_rng([int(seed), 0x5CE7])
    if attacks is None or isinstance(attacks, int):
        count = int(rng.integers(1, 3)) if attacks is None else attacks
        attacks = [ATTACKS[i] for i in rng.choice(len(ATTACKS), size=count, replace=count > len(ATTACKS))]
    if faults is None or isinstance(faults, int):
        count = int(rng.integers(1, 3)) if faults is None else faults
        faults = [FAULTS[i] for i in rng.choice(len(FAULTS), size=count, replace=count > len(FAULTS))]
    attack_specs, fault_specs = place_schedule(rng, float(duration), list(attacks), list(faults), intensity=intensity)
    return Scenario(nodes=nodes, duration=float(duration), seed=int(seed), attacks=attack_specs, faults=fault_specs, **settings)

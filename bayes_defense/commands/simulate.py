"""The ``bayes-defense simulate`` subcommand: a labelled incident log from the simulator."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

from bayes_defense.commands._common import strict_json
from bayes_defense.errors import ConfigError
from bayes_defense.sim.run import simulate
from bayes_defense.sim.scenario import ATTACKS, FAULTS, Scenario, load_scenario, place_schedule
from bayes_defense.stream.io import FORMATS

__all__ = ["register", "run_simulate", "scenario_from_args"]


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def register(subparsers: Any) -> None:
    """Add the ``simulate`` subcommand to a ``bayes-defense`` parser."""
    parser = subparsers.add_parser(
        "simulate",
        help="simulate a BFT cluster under attack; write events, labels.json, faults.json, meta.json",
        description=(
            "Simulate a PBFT-style cluster and write a labelled incident log. "
            f"Attacks: {', '.join(ATTACKS)}. Benign faults: {', '.join(FAULTS)}."
        ),
    )
    parser.add_argument("--config", metavar="FILE", help="scenario file (.toml or .json); flags below override it")
    parser.add_argument("--nodes", type=int, metavar="N", help="number of replicas, 4 to 100 (default 4)")
    parser.add_argument("--duration", type=float, metavar="S", help="simulated seconds (default 600)")
    parser.add_argument("--attack", metavar="NAME[,NAME]", help="attacks to schedule one after another")
    parser.add_argument("--benign", metavar="FAULT[,FAULT]", help="benign faults to schedule at random times")
    parser.add_argument("--intensity", type=float, metavar="X", help="attack intensity in (0, 1], 1 = blatant (default 1)")
    parser.add_argument("--seed", type=int, metavar="K", help="random seed (default 0)")
    parser.add_argument("--format", choices=FORMATS, default="jsonl", help="event log format (default jsonl)")
    parser.add_argument("--out", metavar="DIR", required=True, help="output directory")
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    parser.set_defaults(func=run_simulate)


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    """Build the scenario a ``simulate`` command line describes.

    Examples
    --------
    >>> args = argparse.Namespace(config=None, nodes=4, duration=300.0, attack="replay",
    ...                           benign=None, intensity=0.5, seed=1)
    >>> scenario_from_args(args).attacks[0].intensity
    0.5
    """
    data: dict[str, Any] = {}
    if args.config:
        data = load_scenario(args.config).to_dict()
    for key in ("nodes", "duration", "seed"):
        value = getattr(args, key)
        if value is not None:
            data[key] = value
    data.setdefault("nodes", 4)
    data.setdefault("duration", 600.0)
    data.setdefault("seed", 0)
    attacks, faults = _split(args.attack), _split(args.benign)
    if args.intensity is not None and not attacks and not data.get("attacks"):
        raise ConfigError("--intensity needs --attack (or attacks in --config)")
    if attacks or faults:
        if isinstance(data["duration"], bool) or not isinstance(data["duration"], (int, float)) or data["duration"] <= 0:
            raise ConfigError(f"duration must be positive, got {data['duration']}")
        # The flags' schedule draws from its own stream of the seed.
        rng = np.random.default_rng([int(data["seed"]) if isinstance(data["seed"], int) and data["seed"] >= 0 else 0, 0xC11])
        attack_specs, fault_specs = place_schedule(
            rng, float(data["duration"]), attacks, faults, intensity=1.0 if args.intensity is None else args.intensity
        )
        data["attacks"] = list(data.get("attacks", [])) + [spec.__dict__ for spec in attack_specs]
        data["faults"] = list(data.get("faults", [])) + [spec.__dict__ for spec in fault_specs]
    elif args.intensity is not None:
        for attack in data["attacks"]:
            attack["intensity"] = args.intensity
    return Scenario.from_dict(data)


def run_simulate(args: argparse.Namespace) -> int:
    """Run ``bayes-defense simulate``; return the exit status."""
    scenario = scenario_from_args(args)
    bar = None
    started = time.perf_counter()

    def progress(simulated: float) -> None:
        nonlocal bar
        # A bar only for a terminal and only once the work has lasted a second.
        if bar is None and sys.stdout.isatty() and not args.json and time.perf_counter() - started > 1.0:
            from tqdm import tqdm

            bar = tqdm(total=scenario.duration, unit="sim s", desc="simulate")
        if bar is not None:
            bar.update(simulated - bar.n)

    result = simulate(scenario, args.out, fmt=args.format, progress=progress)
    if bar is not None:
        bar.close()
    summary = result.summary()
    if args.json:
        print(strict_json(summary))
    else:
        print(
            f"wrote {summary['events']} events ({summary['messages']} messages simulated, "
            f"{summary['attacks']} attack(s), {summary['faults']} benign fault(s)) to {summary['out_dir']}"
        )
    return 0

"""Fit and write the model filter's shipped default posterior (bayes_defense/data/posteriors/signal_model.json).

What the file is: the sufficient statistics
(:class:`bayes_defense.fitting.signal_posterior.SignalStatistics`) of a
labelled fit of the signal model
(:func:`bayes_defense.fitting.signal_model.fit_signal_model`) on simulator
training runs, with their fault labels. The model filter draws its default
parameters from them (:func:`bayes_defense.fitting.signal_posterior.default_posterior`)
when it is given none. Storing counts rather than draws keeps the learning
loop exact on top of it: a ledger started from the default adds its windows
to these counts.

Training runs (the protocol of papers/evaluate_defender.py, which imports
it from here): seeds 20000 and up, never used to evaluate anything; run
``k`` holds catalogue attacks ``k`` and ``k + 3`` (mod 8), so each attack is
in ``train / 4`` runs; n = 7, 10, 16 and 25 replicas in turn, 600 simulated
seconds, intensity uniform in [0.3, 1], all six benign faults scheduled.
Evaluations run on seeds 40000 and up (papers/evaluate_defender.py) and the
demo on seed 2026, none of which the fit sees.

Usage::

    python papers/default_posterior.py                  # 32 runs, writes the shipped file (about 4 min, 2 jobs)
    python papers/default_posterior.py --train 2 --out /tmp/stats.json    # smoke run
"""

from __future__ import annotations

import argparse
import time
from multiprocessing import Pool

TRAIN_SEED = 20_000
NODES = (7, 10, 16, 25)
FAULTS = ["crash", "partition", "slow", "load_spike", "jitter", "restart"]
DURATION = 600.0
MIN_INTENSITY = 0.3
PRIOR_STRENGTH = 2.0


def scenario(seed: int, attacks: list[str] | None = None):
    """The scenario of seed ``seed``: n from :data:`NODES` in turn, intensity uniform in [0.3, 1], every fault."""
    import numpy as np

    from bayes_defense.sim import random_scenario

    nodes = NODES[seed % len(NODES)]
    intensity = float(np.random.default_rng(seed).uniform(MIN_INTENSITY, 1.0))
    extra = {} if attacks is None else {"attacks": attacks}
    return random_scenario(seed, nodes=nodes, duration=DURATION, faults=list(FAULTS), intensity=intensity, **extra)


def training_run(seed: int):
    """Training run ``seed``: ``(events, labels, fault labels)``, attacks ``k`` and ``k + 3`` of the catalogue."""
    from bayes_defense.models.catalogue import ATTACK_NAMES
    from bayes_defense.sim.engine import Simulation

    k = seed - TRAIN_SEED
    attacks = [ATTACK_NAMES[k % len(ATTACK_NAMES)], ATTACK_NAMES[(k + 3) % len(ATTACK_NAMES)]]
    simulation = Simulation(scenario(seed, attacks))
    return list(simulation.events()), simulation.labels, simulation.faults


def fit(train: int, jobs: int = 2, num_samples: int = 200):
    """The labelled fit on training runs ``TRAIN_SEED .. TRAIN_SEED + train - 1``: a SignalPosterior."""
    from bayes_defense.fitting.signal_model import fit_signal_model

    seeds = [TRAIN_SEED + k for k in range(train)]
    if jobs > 1:
        with Pool(jobs) as pool:
            runs = pool.map(training_run, seeds)
    else:
        runs = [training_run(seed) for seed in seeds]
    return fit_signal_model(runs, num_samples=num_samples, prior_strength=PRIOR_STRENGTH, seed=0)


def main(argv: list[str] | None = None) -> int:
    from bayes_defense.fitting.signal_posterior import DEFAULT_STATISTICS, write_statistics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=32, help="training runs (seeds 20000+; default 32)")
    parser.add_argument("--jobs", type=int, default=2, help="simulation processes (default 2)")
    parser.add_argument("--out", default=str(DEFAULT_STATISTICS), help="where to write (default: the shipped file)")
    args = parser.parse_args(argv)
    if args.train < 1:
        parser.error(f"--train must be at least 1; got {args.train}")
    started = time.perf_counter()
    posterior = fit(args.train, args.jobs)
    failed = [p["statistic"] for p in posterior.ppc if not p["ok"]]
    info = {"made_by": f"python papers/default_posterior.py --train {args.train}",
            "training": {"seeds": [TRAIN_SEED, TRAIN_SEED + args.train - 1], "nodes": list(NODES),
                         "duration_s": DURATION, "intensity": [MIN_INTENSITY, 1.0], "faults": FAULTS,
                         "attacks_per_run": 2, "labels": "attacks and faults"},
            "settings": {"prior_strength": PRIOR_STRENGTH},
            "windows": posterior.info["windows"], "labelled_windows": posterior.info["labelled_windows"],
            "ppc": {"statistics": len(posterior.ppc), "failed": failed}}
    path = write_statistics(args.out, posterior.statistics, info)
    print(f"{path}: {args.train} training runs, {posterior.info['windows']:.0f} windows, "
          f"predictive check {'passed' if not failed else 'failed for ' + '; '.join(failed)}, "
          f"{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

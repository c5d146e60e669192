"""How often bd.explain names the injected attack, against the Bayes classifier, per attack.

Regenerates the table of docs/models.md ("Explanations of injected attacks"):

    python papers/explanation_ranking.py --nodes 10 --runs 0:100 7:500 3:300

Each run ``SEED:COUNT`` samples COUNT incidents per attack with
``bd.models.sample_incidents(model, attack, COUNT, seed=SEED)`` (the attack
injected, its main outcome failed, full indicator telemetry seen) and counts
the incidents whose top-ranked attack in ``bd.explain`` is the injected one.
Beside it, the classifier that names the attack with the largest posterior
``P(A.executing | incident)`` (exact, from the cluster engine) scores the same
incidents: where both miss, the incident carries no trace of the attack.
Run 0:100 is the test in tests/models/test_explain.py.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import bayes_defense as bd
from bayes_defense.models import ATTACKS
from bayes_defense.models.engine import engine


def score(model, attack: str, count: int, seed: int) -> dict:
    """Hits of the explanation and of the Bayes classifier on one attack's sampled incidents."""
    cases = bd.models.sample_incidents(model, attack, count, seed=seed)
    sites = [f"{a}.executing" for a in ATTACKS]
    fast = engine(model)
    explained = classified = 0
    for evidence, outcome in cases:
        explained += bd.explain(model, evidence, outcome).top_attack == attack
        posterior = fast.marginals(sites, evidence={**evidence, **outcome})
        classified += max(ATTACKS, key=lambda a: float(posterior[f"{a}.executing"])) == attack
    share = explained / count
    return {"attack": attack, "seed": seed, "count": count, "explanation_hits": explained,
            "bayes_classifier_hits": classified, "explanation_share": share,
            "standard_error": math.sqrt(share * (1.0 - share) / count)}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10, help="cluster size (default 10, as the test)")
    parser.add_argument("--runs", nargs="+", default=["0:100"], metavar="SEED:COUNT",
                        help="sampler seeds and incidents per attack (default 0:100, the test's)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    runs = []
    for run in args.runs:
        seed, _, count = run.partition(":")
        if not (seed.isdigit() and count.isdigit() and int(count) > 0):
            parser.error(f"--runs takes SEED:COUNT pairs of non-negative integers, got {run!r}")
        runs.append((int(seed), int(count)))
    model = bd.models.cluster(args.nodes)
    rows, start = [], time.perf_counter()
    for seed, count in runs:
        for attack in ATTACKS:
            rows.append(score(model, attack, count, seed))
    if args.json:
        print(json.dumps(rows, indent=1))
        return rows
    print(f"n = {args.nodes}; share of incidents whose top-ranked attack is the injected one "
          f"(explanation / Bayes classifier), {time.perf_counter() - start:.0f} s")
    print(f"{'attack':18s}" + "".join(f"  seed {s}, {c:>4d}".ljust(30) for s, c in runs))
    for attack in ATTACKS:
        cells = []
        for seed, count in runs:
            row = next(r for r in rows if r["attack"] == attack and r["seed"] == seed and r["count"] == count)
            cells.append(f"  {row['explanation_hits']:>4d} / {row['bayes_classifier_hits']:<4d}"
                         f" ({100 * row['explanation_share']:.1f}% +- {100 * row['standard_error']:.1f})".ljust(30))
        print(f"{attack:18s}" + "".join(cells))
    return rows


if __name__ == "__main__":
    main()

"""A defender with a posterior fitted on some simulator runs, judged on held-out runs.

Training runs use seeds 100-131 (32 runs, 4 replicas, 600 s, random attacks
and benign faults, random intensities). The fitted defender must detect at
least as many held-out attacks as the defender with its default prior, and
its false-positive rate (DESIGN.md section 6) must not rise, as issue 6 asks.
It is judged on three held-out sets: seeds 200-207 (the issue's set), seeds
300-315 (4 replicas, an independent check against tuning to 200-207) and
seeds 400-407 at 7 replicas (another cluster size than the training runs).

Measured 2026-11-24 (SVI, 2000 steps, 400 draws, seed 0; the defender uses
24 draws), detected / attacks and alerted / benign 10 s windows:

=============  ===========  ===========  ============  ============
held-out set   default det  fitted det   default FPR   fitted FPR
=============  ===========  ===========  ============  ============
200-207, n=4   12/12        12/12        1/257         1/257
300-315, n=4   25/25        25/25        0/475         0/475
400-407, n=7   12/12        12/12        1/259         1/259
=============  ===========  ===========  ============  ============

History. The first version of this test trained on seeds 100-107 with the
fit's earlier model (one Normal per phase, every window an independent draw
of the attack's mean) and failed on all three sets (fitted: FPR 2/257;
24/25; 9/12). Two causes, both in the model rather than the data: the Sybil
score is exactly 0 in most execution windows and at the 12 cap in others,
which one Normal fits only with a spread of 4 under which no window is
evidence; and a single weak training incident (censorship) fixed that
attack's means as if each of its 64 windows were an independent incident.
The fit now has quiet windows (a precursor or execution window that scores
as a benign one, with a learned probability) and incident-level effects (the
windows of one incident share its mean; ``FitPrior.incident_scale``). With
them, training on seeds 100-107 still left one censorship attack of
300-315 undetected (24/25): eight runs hold one censorship incident, whose
precursor scores sat at the cap where the held-out one's stayed between 1
and 4. With 32 training runs (three to seven incidents per attack) every set
meets the criterion.
"""

import pytest

from bayes_defense.fitting import fit
from bayes_defense.sim import random_scenario, simulate
from bayes_defense.stream.io import read_events
from bayes_defense.stream.metrics import combine_reports, evaluate_alerts
from bayes_defense.stream.scored import ScoredDefender

HELD_OUT = {
    "seeds200-207-n4": (range(200, 208), 4),
    "seeds300-315-n4": (range(300, 316), 4),
    "seeds400-407-n7": (range(400, 408), 7),
}
TRAINING = range(100, 132)


def _runs(root, seeds, nodes):
    return [simulate(random_scenario(seed, nodes=nodes, duration=600.0), root / f"run{nodes}_{seed}") for seed in seeds]


def _report(runs, parameters):
    reports = []
    for run in runs:
        defender = ScoredDefender(parameters=parameters, seed=0)
        defender.observe_batch(read_events(run.events_path))
        defender.flush()
        reports.append(evaluate_alerts(run.labels, list(defender.alerts), 600.0))
    return combine_reports(reports)


@pytest.fixture(scope="module")
def posterior(tmp_path_factory):
    training = _runs(tmp_path_factory.mktemp("training"), TRAINING, 4)
    fitted = fit("scored", [run.out_dir for run in training], method="svi", num_steps=2000, num_samples=400,
                 seed=0, progress=False)
    assert fitted.diagnostics_ok, fitted.problems
    return fitted


@pytest.mark.slow
@pytest.mark.parametrize("held_out", list(HELD_OUT))
def test_fitted_defender_no_worse_on_held_out_runs(held_out, posterior, tmp_path):
    seeds, nodes = HELD_OUT[held_out]
    runs = _runs(tmp_path, seeds, nodes)
    default = _report(runs, None)
    fitted = _report(runs, posterior)
    print(held_out, "default", default)
    print(held_out, "fitted", fitted)
    assert fitted["detection_rate"] >= default["detection_rate"]
    assert fitted["false_positive_rate"] <= default["false_positive_rate"]

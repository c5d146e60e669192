"""A defender with a posterior fitted on some simulator runs, judged on held-out runs.

Training runs use seeds 100-107 (4 replicas, 600 s, random attacks and
benign faults, random intensities). The fitted defender must detect at least
as many held-out attacks as the defender with its default prior, and its
false-positive rate (DESIGN.md section 6) must not rise, as issue 6 asks. It
is judged on three held-out sets: seeds 200-207 (the issue's set), seeds
300-315 (4 replicas, an independent check against tuning to 200-207) and
seeds 400-407 at 7 replicas (another cluster size than the training runs).

Measured 2026-11-24 (SVI, 2000 steps, 400 draws, seed 0; the defender uses
24 draws), detected / attacks and alerted / benign 10 s windows:

=============  ===========  ===========  ============  ============
held-out set   default det  fitted det   default FPR   fitted FPR
=============  ===========  ===========  ============  ============
200-207, n=4   12/12        12/12        1/257         2/257
300-315, n=4   25/25        24/25        0/475         0/475
400-407, n=7   12/12        9/12         1/259         1/259
=============  ===========  ===========  ============  ============

So the criterion fails on every set, and the three cases are strict
expected failures (a fit that meets the criterion makes them fail loudly).
What goes wrong, found by swapping single parameters back to the defaults:

- 200-207: the extra alert is ``censorship`` at t = 580 s of run 203, during
  a benign ``slow`` fault of replica r0 (562-589 s). The training runs hold one
  censorship incident (run 100), in whose execution phase the censorship
  score stays low (median 0.39, mean 1.02; benign windows: mean 0.34, 99th
  percentile 1.65), so the fit learns ``score_execution`` 1.1 (90% draws
  0.94-1.46) with ``spread`` 0.85 where the default ensemble has 4-8 and
  1.1-1.6. The defender's benign/execution boundary is then at a score of
  0.55; the slow fault, a kind of benign fault no training run contains,
  lifts the censorship score to 0.2-3.5 for 25 windows, which the fitted
  model reads as execution. With only the censorship ``score_execution``
  row set back to the default ensemble the alert disappears; more posterior
  draws (100, 400) do not remove it (the posterior is narrow), nor do the
  transition probabilities, nor the warm-up windows (the alert comes 560
  windows in).
- 300-315 and 400-407: every missed attack is ``sybil``. The Sybil score is
  exactly 0 in every benign training window, about 1 in the precursor and 0
  or the 12 cap in execution (73% and 13%); one Gaussian ``spread`` for all
  phases cannot describe that, and the fit's best compromise is means 0.71
  and 0.64 with ``spread`` 4.2, under which a window carries almost no
  evidence.

Both causes lie in the defender's evidence model (Normal scores, mean 0 when
benign, one spread for all phases) meeting scores that are point masses at 0
and at the cap, and in training runs that show one or three incidents per
attack and not every kind of benign fault. The fit itself is checked against
its model (recovery and simulation-based calibration in this folder).
Widening the posterior's score means by a random factor per draw (a
stand-in for the predictive of an incident-level hierarchy) removed the
extra alert but lost detections: 9/12, 23/25, 6/12 with a log-scale spread
of 0.5 and 12/12, 22/25, 11/12 with 1.0 (FPR 1/257, 0/475, 1/259), so it is
not a fix either.
"""

import pytest

from bayes_defense.fit import fit
from bayes_defense.sim import random_scenario, simulate
from bayes_defense.stream.defender import StreamingDefender
from bayes_defense.stream.io import read_events
from bayes_defense.stream.metrics import combine_reports, evaluate_alerts

HELD_OUT = {
    "seeds200-207-n4": (range(200, 208), 4, "measured: fitted FPR 2/257 against 1/257 (censorship alert in a "
                                            "benign slow fault, run 203)"),
    "seeds300-315-n4": (range(300, 316), 4, "measured: fitted detects 24/25 against 25/25 (a sybil attack missed)"),
    "seeds400-407-n7": (range(400, 408), 7, "measured: fitted detects 9/12 against 12/12 (three sybil attacks missed)"),
}


def _runs(root, seeds, nodes):
    return [simulate(random_scenario(seed, nodes=nodes, duration=600.0), root / f"run{nodes}_{seed}") for seed in seeds]


def _report(runs, parameters):
    reports = []
    for run in runs:
        defender = StreamingDefender(parameters=parameters, seed=0)
        defender.observe_batch(read_events(run.events_path))
        defender.flush()
        reports.append(evaluate_alerts(run.labels, list(defender.alerts), 600.0))
    return combine_reports(reports)


@pytest.fixture(scope="module")
def posterior(tmp_path_factory):
    training = _runs(tmp_path_factory.mktemp("training"), range(100, 108), 4)
    fitted = fit("defender", [run.out_dir for run in training], method="svi", num_steps=2000, num_samples=400,
                 seed=0, progress=False)
    assert fitted.diagnostics_ok, fitted.problems
    return fitted


@pytest.mark.slow
@pytest.mark.parametrize("held_out", [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=reason))
                                      for name, (_, _, reason) in HELD_OUT.items()])
def test_fitted_defender_no_worse_on_held_out_runs(held_out, posterior, tmp_path):
    seeds, nodes, _ = HELD_OUT[held_out]
    runs = _runs(tmp_path, seeds, nodes)
    default = _report(runs, None)
    fitted = _report(runs, posterior)
    print(held_out, "default", default)
    print(held_out, "fitted", fitted)
    assert fitted["detection_rate"] >= default["detection_rate"]
    assert fitted["false_positive_rate"] <= default["false_positive_rate"]

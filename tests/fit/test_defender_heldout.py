"""A defender with a posterior fitted on some simulator runs, judged on held-out runs.

Training runs use seeds 100-107, held-out runs seeds 200-207 (4 replicas,
600 s, random attacks and benign faults, random intensities). The fitted
defender must detect at least as many held-out attacks as the defender with
its default prior, and its false-positive rate (DESIGN.md section 6) must not
rise, as issue 6 asks. Recorded run, 2026-11-24: 12/12 attacks detected by
both; median lead time 29.6 s by default, 46.9 s fitted; but benign windows
alerted 1/257 by default and 2/257 fitted, so the FPR rose by one window and
the test is marked as an expected failure (strict, so that it reports when a
better fit stops raising the FPR). A significance test would pass it, but with
257 windows it has almost no power, so the literal criterion is kept.
"""

import pytest

from bayes_defense.fit import fit
from bayes_defense.sim import random_scenario, simulate
from bayes_defense.stream.defender import StreamingDefender
from bayes_defense.stream.io import read_events
from bayes_defense.stream.metrics import combine_reports, evaluate_alerts


def _runs(tmp_path, seeds):
    return [simulate(random_scenario(seed, nodes=4, duration=600.0), tmp_path / f"run{seed}") for seed in seeds]


def _report(runs, parameters):
    reports = []
    for run in runs:
        defender = StreamingDefender(parameters=parameters, seed=0)
        defender.observe_batch(read_events(run.events_path))
        defender.flush()
        reports.append(evaluate_alerts(run.labels, list(defender.alerts), 600.0))
    return combine_reports(reports)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured: fitted FPR 2/257 against 1/257 with the default prior")
def test_fitted_defender_no_worse_on_held_out_runs(tmp_path):
    training = _runs(tmp_path, range(100, 108))
    held_out = _runs(tmp_path, range(200, 208))
    posterior = fit("defender", [run.out_dir for run in training], method="svi", num_steps=2000, num_samples=400,
                    seed=0, progress=False)
    assert posterior.diagnostics_ok, posterior.problems
    default = _report(held_out, None)
    fitted = _report(held_out, posterior)
    print("default", default)
    print("fitted", fitted)
    assert fitted["detection_rate"] >= default["detection_rate"]
    assert fitted["false_positive_rate"] <= default["false_positive_rate"]

"""Parameter recovery: logs drawn from the defender's model with known parameters.

Each fit yields 72 credible intervals at 90% (9 parameters x 8 attacks, the
attacks independent sub-models with different true values). With calibrated
intervals the number that cover the truth is about Binomial(72, 0.9); the
tests require at least its 0.1% quantile, so a calibrated fit fails them about
once in a thousand runs, and a biased or overconfident one fails them.
"""

import numpy as np
import pytest
from scipy import stats

from bayes_defense.fitting import fit
from bayes_defense.fitting.defender import PARAMETER_NAMES, FitPrior, simulate_windows

ATTACKS = 8
TRUTH = {
    "score_precursor": np.linspace(2.0, 5.0, ATTACKS),
    "score_execution": np.linspace(4.0, 8.0, ATTACKS),
    "spread": np.linspace(1.0, 1.6, ATTACKS),
    "benign_to_precursor": np.linspace(0.003, 0.008, ATTACKS),
    "precursor_to_execution": np.linspace(0.01, 0.03, ATTACKS),
    "precursor_to_benign": np.linspace(0.004, 0.008, ATTACKS),
    "execution_to_benign": np.linspace(0.02, 0.05, ATTACKS),
    "quiet_precursor": np.linspace(0.05, 0.4, ATTACKS),
    "quiet_execution": np.linspace(0.3, 0.02, ATTACKS),
}
# Labelled logs are drawn with the incident effects the fit assumes (FitPrior.incident_scale).
INCIDENT_SCALE = FitPrior.default().incident_scale
LEAST_COVERED = int(stats.binom.ppf(0.001, ATTACKS * len(PARAMETER_NAMES), 0.9))


def _covered(post):
    return {name: (post.interval(name, 0.9)[:, 0] < TRUTH[name]) & (TRUTH[name] < post.interval(name, 0.9)[:, 1])
            for name in PARAMETER_NAMES}


def _check(post):
    covered = _covered(post)
    total = sum(int(c.sum()) for c in covered.values())
    assert total >= LEAST_COVERED, {name: c.tolist() for name, c in covered.items()}


def test_svi_minibatch_recovers_known_parameters_labelled():
    data = simulate_windows(TRUTH, n_windows=6000, seed=21, incident_scale=INCIDENT_SCALE)
    post = fit("scored", data, method="svi", num_steps=800, batch_size=1024, num_samples=400, seed=0,
               progress=False, ppc_draws=5)
    assert post.diagnostics_ok, post.problems
    _check(post)


@pytest.mark.slow
def test_nuts_recovers_known_parameters_labelled():
    data = simulate_windows(TRUTH, n_windows=6000, seed=22, incident_scale=INCIDENT_SCALE)
    post = fit("scored", data, method="nuts", num_chains=2, num_warmup=500, num_samples=1000, seed=0,
               progress=False, ppc_draws=5)
    assert post.diagnostics_ok, post.problems
    _check(post)


@pytest.mark.slow
def test_svi_recovers_known_parameters_with_latent_phases():
    data = simulate_windows(TRUTH, n_windows=6000, seed=23, labelled=False)
    post = fit("scored", data, method="svi", num_steps=2000, batch_size=1024, num_samples=400, seed=0,
               progress=False, ppc_draws=5)
    _check(post)

"""Simulation-based calibration (Talts et al. 2018).

Draw parameters from the prior, simulate windows from the model, fit, and
rank the true value among posterior draws: with a correct posterior the rank
is uniform. Ranks are pooled over the eight attack hypotheses (independent
sub-models) and tested with a chi-square test over 10 bins at level 0.01
per parameter (Bonferroni over the parameters tested keeps the family-wise
level at most 0.01 x their number).
"""

import importlib

import numpy as np
import pytest
import torch
from scipy import stats

from bayes_defense.fitting import fit
from bayes_defense.fitting.defender import PARAMETER_NAMES, FitPrior, simulate_windows

fitting = importlib.import_module("bayes_defense.fitting.defender")

LEVEL = 0.01


def _prior():
    # A prior under which phases change often enough for short logs to carry information.
    base = FitPrior.default()
    n = 8
    return FitPrior(base.score_precursor_loc, base.score_precursor_scale, base.score_execution_loc,
                    base.score_execution_scale, base.spread_loc, base.spread_scale,
                    np.full(n, 2.0), np.full(n, 60.0), np.tile([20.0, 1.0, 2.0], (n, 1)), np.full(n, 2.0),
                    np.full(n, 30.0))


def _draw_truth(prior, rng):
    torch.manual_seed(int(rng.integers(2**31)))
    priors = fitting._prior_distributions(prior)
    sites = {name: d.sample().numpy() for name, d in priors.items()}
    return {name: value for name, value in fitting._to_defender({k: v[None] for k, v in sites.items()}).items()}


def _chi_square_p(ranks, draws, bins=10):
    counts = np.histogram(ranks, bins=bins, range=(0, draws + 1))[0]
    return stats.chisquare(counts).pvalue


def test_sbc_transitions_exact_conjugate_posterior():
    """Fast SBC of the transition part (exact conjugate posterior draws): 150 replicates x 8 attacks."""
    prior, rng, draws = _prior(), np.random.default_rng(20181), 99
    data_prior = fitting._Data(simulate_windows(n_windows=2, seed=0))  # shapes only
    ranks = {name: [] for name in PARAMETER_NAMES[3:7]}
    for _ in range(150):
        truth = _draw_truth(prior, rng)
        features = simulate_windows({k: v[0] for k, v in truth.items()}, n_windows=120,
                                    seed=int(rng.integers(2**31)))
        data = fitting._Data(features)
        torch.manual_seed(int(rng.integers(2**31)))
        sampled = fitting._to_defender(fitting._conjugate_transitions(data, prior, draws) | {
            "score_precursor": np.zeros((draws, 8)), "score_execution": np.zeros((draws, 8)),
            "spread": np.zeros((draws, 8)), "quiet_precursor": np.zeros((draws, 8)),
            "quiet_execution": np.zeros((draws, 8))})
        for name in ranks:
            ranks[name].extend((sampled[name] < truth[name][0]).sum(0).tolist())
    assert data_prior.attacks == 8
    for name, values in ranks.items():
        assert _chi_square_p(np.array(values), draws) > LEVEL / len(ranks), name


def test_sbc_detects_a_wrong_posterior():
    """The check has power: ranks of a posterior built from the wrong counts are not uniform."""
    prior, rng, draws = _prior(), np.random.default_rng(7), 99
    ranks = []
    for _ in range(150):
        truth = _draw_truth(prior, rng)
        features = simulate_windows({k: v[0] for k, v in truth.items()}, n_windows=120,
                                    seed=int(rng.integers(2**31)))
        data = fitting._Data(features)
        data.stats["counts"] = data.stats["counts"].flip(-1)  # transitions miscounted
        torch.manual_seed(int(rng.integers(2**31)))
        sampled = fitting._conjugate_transitions(data, prior, draws)
        ranks.extend((sampled["execution_to_benign"] < truth["execution_to_benign"][0]).sum(0).tolist())
    assert _chi_square_p(np.array(ranks), draws) < LEVEL


@pytest.mark.slow
def test_sbc_scores_nuts():
    """SBC of the score parameters through NUTS: 30 replicates x 8 attacks, 100 thinned draws each."""
    prior, rng = _prior(), np.random.default_rng(2018)
    phases = np.zeros((150, 8), np.int8)
    phases[50:90] = 1
    phases[90:120] = 2
    names = ("score_precursor", "score_execution", "spread", "quiet_precursor", "quiet_execution")
    ranks = {name: [] for name in names}
    for replicate in range(30):
        truth = _draw_truth(prior, rng)
        features = simulate_windows({k: v[0] for k, v in truth.items()}, phases=phases,
                                    seed=int(rng.integers(2**31)), incident_scale=prior.incident_scale)
        post = fit("scored", features, method="nuts", prior=prior, num_chains=1, num_warmup=200,
                   num_samples=200, seed=replicate, progress=False, check=False, ppc_draws=2)
        for name in names:
            thinned = post.flat(name)[::2]
            ranks[name].extend((thinned < truth[name][0]).sum(0).tolist())
    for name, values in ranks.items():
        assert _chi_square_p(np.array(values), 100) > LEVEL / len(names), name

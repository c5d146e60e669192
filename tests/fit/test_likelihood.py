"""The fit's likelihoods against brute-force oracles."""

import importlib
import itertools

import numpy as np
import torch

from bayes_defense.fitting.defender import PARAMETER_NAMES, FitPrior, simulate_windows

fitting = importlib.import_module("bayes_defense.fitting.defender")

TRUTH = {"score_precursor": 3.0, "score_execution": 5.0, "spread": 1.2, "benign_to_precursor": 0.2,
         "precursor_to_execution": 0.3, "precursor_to_benign": 0.1, "execution_to_benign": 0.25,
         "quiet_precursor": 0.2, "quiet_execution": 0.1}


def _params(attacks=8):
    torch.manual_seed(1)
    priors = fitting._prior_distributions(FitPrior.default(attacks))
    return {name: prior.sample() for name, prior in priors.items()}


def test_forward_algorithm_equals_sum_over_all_phase_paths():
    torch.set_default_dtype(torch.float64)
    features = simulate_windows(TRUTH, n_windows=5, seed=1, labelled=False)
    data = fitting._Data(features)
    params = {"score_precursor": torch.full((8,), 3.0), "score_execution": torch.full((8,), 5.0),
              "spread": torch.linspace(0.8, 1.6, 8), "benign_to_precursor": torch.full((8,), 0.2),
              "precursor_exit": torch.tensor([[0.6, 0.1, 0.3]] * 8), "execution_to_benign": torch.full((8,), 0.25),
              "quiet_precursor": torch.full((8,), 0.2), "quiet_execution": torch.linspace(0.05, 0.5, 8)}
    _, segment_ll = fitting._log_likelihoods(data, params, segments=torch.arange(len(data.segments)))
    log_t = fitting._transition_log(params["benign_to_precursor"], params["precursor_exit"],
                                    params["execution_to_benign"])
    means = torch.stack([torch.zeros(8), params["score_precursor"], params["score_execution"]], -1)
    quiet = torch.stack([params["quiet_precursor"], params["quiet_execution"]], -1)
    emission = fitting._emission_log(torch.as_tensor(features.scores, dtype=torch.float64), means,
                                     params["spread"], 12.0, quiet)
    initial = torch.tensor(fitting._INITIAL).log()
    total = 0.0
    # The defender's convention: the initial distribution is the phase before the first window.
    for a in range(8):
        terms = []
        for path in itertools.product(range(3), repeat=6):
            value = initial[path[0]]
            for t in range(1, 6):
                value = value + log_t[a, path[t - 1], path[t]] + emission[t - 1, a, path[t]]
            terms.append(value)
        total += torch.logsumexp(torch.stack(terms), 0)
    assert torch.allclose(segment_ll.sum(), total, rtol=1e-12)


def test_padded_segments_equal_unpadded_chain():
    # A 70-window run becomes one full and one padded segment; with the second
    # segment starting from the stationary law, the padding must add nothing.
    torch.set_default_dtype(torch.float64)
    features = simulate_windows(TRUTH, n_windows=70, seed=2, labelled=False)
    data = fitting._Data(features)
    assert data.segments.shape[:2] == (2, 64) and int(data.masks[1].sum()) == 6
    params = _params()
    _, both = fitting._log_likelihoods(data, params, segments=torch.arange(2))
    short = fitting._Data(fitting.WindowFeatures(features.scores[64:], features.phases[64:], features.run[64:]))
    short.firsts[:] = False
    _, tail = fitting._log_likelihoods(short, params, segments=torch.arange(1))
    assert torch.allclose(both[1], tail[0], rtol=1e-12)


def test_sufficient_statistics_equal_the_per_window_likelihood():
    torch.set_default_dtype(torch.float64)
    features = simulate_windows(TRUTH, n_windows=400, seed=3)
    features.scores[:3] = 12.0  # clipped from above as well as below
    data = fitting._Data(features)
    params = _params()
    windows, _ = fitting._log_likelihoods(data, params, windows=torch.arange(len(data.scores)))
    incidents = fitting._incident_log_likelihood(data, params)
    assert torch.allclose(windows.sum() + incidents, fitting._collapsed_log_likelihood(data, params), rtol=1e-10)


def test_incident_windows_match_the_per_window_emission(monkeypatch):
    # Small blocks, so that incidents running across block boundaries are numbered right.
    monkeypatch.setattr(fitting, "_BLOCK", 7)
    torch.set_default_dtype(torch.float64)
    features = fitting.WindowFeatures.concatenate([simulate_windows(TRUTH, n_windows=300, seed=s) for s in (4, 5)])
    data = fitting._Data(features)
    params = _params()
    means = torch.stack([torch.zeros(8), params["score_precursor"], params["score_execution"]], -1)
    quiet = torch.stack([params["quiet_precursor"], params["quiet_execution"]], -1)
    phases = features.phases.astype(int)
    rows, columns = np.nonzero(phases >= 1)
    # Brute force: an incident is an unbroken stretch of one attack's phase >= 1 within one run.
    label = {}
    for t, a in zip(rows, columns, strict=True):
        same = t > 0 and phases[t - 1, a] >= 1 and features.run[t - 1] == features.run[t]
        label[t, a] = label[t - 1, a] if same else len(set(label.values()))
    brute = np.array([label[t, a] for t, a in zip(rows, columns, strict=True)])
    numbered = data.active["incidents"].numpy()
    assert data.incidents == len(set(brute)) > 2
    assert len({(x, y) for x, y in zip(brute, numbered, strict=True)}) == data.incidents  # the same partition
    assert (data.incident_attacks[data.active["incidents"]] == data.active["attacks"].long()).all()
    effects = torch.randn(data.incidents, 2)
    for scale in (0.0, 0.7):
        factor = torch.ones(phases.shape)
        for (t, a), number in zip(zip(rows, columns, strict=True), numbered, strict=True):
            factor[t, a] = torch.exp(scale * effects[number, phases[t, a] - 1])
        emission = fitting._emission_log(torch.as_tensor(features.scores, dtype=torch.float64), means,
                                         params["spread"], 12.0, quiet)
        # Per window, with the window's own mean (its incident's factor) in place of the attack's.
        expected = 0.0
        for t, a in zip(rows, columns, strict=True):
            k = phases[t, a]
            shifted = means.clone()
            shifted[a, k] = means[a, k] * factor[t, a]
            one = fitting._emission_log(torch.as_tensor(features.scores[t:t + 1], dtype=torch.float64), shifted,
                                        params["spread"], 12.0, quiet)
            expected = expected + one[0, a, k]
        if scale == 0.0:
            assert torch.allclose(expected, emission[rows, columns, phases[rows, columns]].sum(), rtol=1e-12)
        log_means = torch.stack([params["score_precursor"], params["score_execution"]], -1).log()[
            data.incident_attacks] + scale * effects
        got = fitting._incident_log_likelihood(data, {**params, "incident_log_mean": log_means}, scale or 1.0)
        assert torch.allclose(got, expected, rtol=1e-10)


def test_censored_emission_matches_normal_cdf():
    from scipy.stats import norm

    torch.set_default_dtype(torch.float64)
    scores = torch.tensor([[0.0, 2.5, 12.0]]).T.expand(3, 8)
    means = torch.tensor([0.0, 3.0, 6.0]).expand(8, 3)
    spread = torch.full((8,), 1.3)
    out = fitting._emission_log(scores, means, spread, 12.0, torch.zeros(8, 2))
    assert np.allclose(out[0, 0].numpy(), norm.logcdf(0.0, [0.0, 3.0, 6.0], 1.3))
    assert np.allclose(out[1, 0].numpy(), norm.logpdf(2.5, [0.0, 3.0, 6.0], 1.3))
    assert np.allclose(out[2, 0].numpy(), norm.logsf(12.0, [0.0, 3.0, 6.0], 1.3))
    # A quiet window scores as a benign one: the phase likelihood is the two-part mixture.
    quiet = torch.tensor([0.3, 0.6]).expand(8, 2)
    mixed = fitting._emission_log(scores, means, spread, 12.0, quiet)
    for row, law in ((0, norm.cdf(0.0, [0.0, 3.0, 6.0], 1.3)), (1, norm.pdf(2.5, [0.0, 3.0, 6.0], 1.3)),
                     (2, norm.sf(12.0, [0.0, 3.0, 6.0], 1.3))):
        expected = [law[0], 0.3 * law[0] + 0.7 * law[1], 0.6 * law[0] + 0.4 * law[2]]
        assert np.allclose(mixed[row, 0].numpy(), np.log(expected))


def test_stationary_distribution_is_left_fixed_by_the_chain():
    torch.set_default_dtype(torch.float64)
    params = _params()
    pi = fitting._stationary(params["benign_to_precursor"], params["precursor_exit"], params["execution_to_benign"])
    matrix = fitting._transition_log(params["benign_to_precursor"], params["precursor_exit"],
                                     params["execution_to_benign"]).exp()
    assert torch.allclose((pi.unsqueeze(-1) * matrix).sum(-2), pi, atol=1e-12)


def test_transition_matrix_rows_match_the_defender():
    from bayes_defense.stream.scored import ScoredDefender

    torch.set_default_dtype(torch.float64)
    params = _params()
    ours = fitting._transition_log(params["benign_to_precursor"], params["precursor_exit"],
                                   params["execution_to_benign"]).exp().numpy()
    defender_params = fitting._to_defender({name: value.numpy()[None] for name, value in params.items()})
    theirs = np.exp(ScoredDefender._transitions({k: v[0] for k, v in defender_params.items()}))
    assert np.allclose(ours, theirs, atol=1e-12)


def _site_log_density(data, prior, values, sampled, scale):
    """The NUTS target composed from the Pyro site priors, ``biject_to`` and the fit's likelihood functions."""
    from torch.distributions import biject_to

    priors = fitting._prior_distributions(prior)
    total = torch.zeros((), dtype=torch.float64)
    for name in sampled:
        transform = biject_to(priors[name].support)
        unconstrained = transform.inv(values[name])
        total = total + priors[name].log_prob(values[name]) + transform.log_abs_det_jacobian(
            unconstrained, values[name]).sum()
    params = dict(values)
    if scale > 0 and data.incidents:
        total = total + fitting._incident_prior(data, params, scale).log_prob(params["incident_log_mean"])
    return total + fitting._collapsed_emission(data, params, scale)


def test_flat_nuts_target_equals_the_site_composition():
    # The hand-written target NUTS samples must be the density of the Pyro
    # sites mapped to the real line, at any point, with and without incidents
    # and with the transition sites sampled (unlabelled runs) or not.
    torch.set_default_dtype(torch.float64)
    # A high execution score puts some windows at the cap.
    features = simulate_windows(dict(TRUTH, score_execution=10.0), n_windows=400, seed=4)
    data = fitting._Data(features)
    assert data.incidents >= 2 and len(data.active["scores"]) > 20
    # Scores at both censoring points take the other branches of the censored likelihood.
    assert (data.active["scores"] <= 0).any() and (data.active["scores"] >= data.cap).any()
    prior = FitPrior.default()
    for scale, sampled in ((0.5, [s for s in fitting._SITES if s not in fitting._TRANSITION_SITES]),
                           (0.0, list(fitting._SITES))):
        incidental = scale > 0
        target = fitting._FlatTarget(data, prior, sampled, scale, incidental)
        for seed in range(3):
            torch.manual_seed(seed)
            values = {name: fitting._prior_distributions(prior)[name].sample() for name in sampled}
            if incidental:
                values["incident_log_mean"] = 1.5 + 0.5 * torch.randn(data.incidents, 2)
            theta = target.join(values)
            assert theta.shape == (target.size,)
            split = target.split(theta)
            for name in sampled:
                assert torch.allclose(split[name], values[name], rtol=1e-10)
            expected = _site_log_density(data, prior, values, sampled, scale)
            assert torch.allclose(target.log_density(theta), expected, rtol=1e-10, atol=1e-8)


def _unconstrained_prior(prior, name, value):
    """Log density of one site's value on NUTS's scale (log or logit), per attack."""
    if name.startswith("score") or name == "spread":
        return torch.distributions.Normal(torch.as_tensor(getattr(prior, f"{name}_loc")),
                                          torch.as_tensor(getattr(prior, f"{name}_scale"))).log_prob(value.log())
    a, b = torch.as_tensor(getattr(prior, f"{name}_a")), torch.as_tensor(getattr(prior, f"{name}_b"))
    return torch.distributions.Beta(a, b).log_prob(value) + value.log() + torch.log1p(-value)


def _phases_of_two_attacks(windows=300):
    # Attacks 0-5 never leave the benign phase; 6 and 7 have one incident each.
    phases = np.zeros((windows, 8), np.int8)
    phases[100:160, 6], phases[160:200, 6] = 1, 2
    phases[150:190, 7], phases[190:230, 7] = 1, 2
    return phases


def test_flat_target_leaves_attacks_without_windows_to_their_prior():
    torch.set_default_dtype(torch.float64)
    features = simulate_windows(TRUTH, phases=_phases_of_two_attacks(), seed=6)
    data = fitting._Data(features)
    prior = FitPrior.default()
    sampled = [s for s in fitting._SITES if s not in fitting._TRANSITION_SITES]
    absent = np.arange(8) < 6
    target = fitting._FlatTarget(data, prior, sampled, 0.5, True, exact_prior=absent)
    # 8 spreads, 4 scores and quiet probabilities of each of the two attacks, 2 means per incident.
    assert target.size == 8 + 2 * 4 + 2 * data.incidents and data.incidents == 2
    torch.manual_seed(3)
    values = {name: fitting._prior_distributions(prior)[name].sample() for name in sampled}
    values["incident_log_mean"] = 1.5 + 0.5 * torch.randn(data.incidents, 2)
    # The site composition = the free target + the fixed coordinates' own prior (no likelihood term has them).
    fixed = sum(_unconstrained_prior(prior, name, values[name])[:6].sum() for name in fitting._FlatTarget._PHASE_SITES)
    expected = _site_log_density(data, prior, values, sampled, 0.5)
    assert torch.allclose(target.log_density(target.join(values)) + fixed, expected, rtol=1e-10)
    # Splitting restores the fixed coordinates from the fill, the free ones from the vector.
    fill = target.prior_draws(4000)
    split = target.split(target.join(values).expand(4000, -1), fill=fill)
    assert torch.allclose(split["spread"][0], values["spread"]) and torch.allclose(split["score_precursor"][0, 6:],
                                                                                   values["score_precursor"][6:])
    # Exact prior draws: log scores Normal(loc, scale), quiet probabilities Beta(a, b); means within 5 SE.
    logs = split["score_precursor"][:, :6].log()
    assert (abs(logs.mean(0) - torch.as_tensor(prior.score_precursor_loc[:6])) < 5 * 0.5 / 4000 ** 0.5).all()
    assert (abs(logs.std(0) - 0.5) < 5 * 0.5 / (2 * 3999) ** 0.5).all()
    quiet = split["quiet_execution"][:, :6]
    beta_sd = (0.1 * 0.9 / 11) ** 0.5
    assert (abs(quiet.mean(0) - 0.1) < 5 * beta_sd / 4000 ** 0.5).all()


def test_nuts_fit_marks_absent_attacks_exact():
    # In the fit, the six attacks without windows keep their prior and the
    # draws are independent (ESS about the number of draws).
    features = simulate_windows(TRUTH, phases=_phases_of_two_attacks(), seed=7)
    post = fitting.fit_defender(features, method="nuts", num_chains=1, num_warmup=50, num_samples=300, seed=2,
                       progress=False, check=False, ppc_draws=2)
    table = post.diagnostics
    for attack in post.attacks[:6]:
        for name in ("score_precursor", "quiet_execution"):
            assert table.loc[f"{name}[{attack}]", "ess_bulk"] > 200
    logs = np.log(post.flat("score_execution")[:, :6])
    assert abs(logs.mean() - np.log(6.0)) < 5 * 0.5 / np.sqrt(logs.size)


def test_nuts_samples_transitions_with_unlabelled_windows():
    # Unlabelled runs: no conjugate shortcut, the flat vector holds the transition sites too.
    features = simulate_windows(TRUTH, n_windows=64, seed=9, labelled=False)
    post = fitting.fit_defender(features, method="nuts", num_chains=1, num_warmup=10, num_samples=10, seed=3,
                       progress=False, check=False, ppc_draws=2)
    for name in PARAMETER_NAMES:
        values = post.draws[name]
        assert values.shape == (1, 10, 8) and np.isfinite(values).all(), name
    exits = post.draws["precursor_to_execution"] + post.draws["precursor_to_benign"]
    assert ((exits > 0) & (exits < 1)).all()
    # Sampled, not fixed: the chain moves.
    assert np.unique(post.draws["benign_to_precursor"][0, :, 0]).size > 1

"""The compiled per-window likelihood against its numpy oracle (bayes_defense.stream._evidence_kernel).

The oracle is the numpy implementation :func:`bayes_defense.stream.evidence.window_log_likelihood`
had before the kernel, with one change: the sum over the replicas other than
the attacker's is a sum of the others (prefix and suffix sums), not the
total minus the attacker's term, which loses every digit when one replica
carries almost all of the total. Both compute the same sums of positive
terms in other orders, so they agree to rounding (1e-12 relative).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bayes_defense.errors import InvalidInputError
from bayes_defense.stream import evidence
from bayes_defense.stream.evidence import FaultFilter, SignalTables, attacker_weights
from bayes_defense.stream.signals import SIGNALS, WindowSignals

FOOTINGS = ("primary_faulty", "backup_faulty", "attacker_inside", "eclipse_footing", "admission_open")
TOLERANCE = {"rtol": 1e-12, "atol": 1e-12}


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    peak = np.max(a, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        return np.squeeze(peak, axis) + np.log(np.sum(np.exp(a - peak), axis=axis))


def oracle(model: SignalTables, window: WindowSignals, log_fault_prior=None, log_fault_position=None):
    """``(log likelihood, log attacker position, log fault posterior)`` in numpy (module docstring).

    ``log_fault_position`` ``(D, G, R)``: the log prior of each fault's replica (default uniform, ``-log R``).
    """
    x = window.values
    replicas = x.shape[0] - 1
    on = np.nan_to_num(x, nan=0.0)
    off = np.where(np.isnan(x), 0.0, 1.0 - x)
    indicator = np.concatenate([on, off], 1) > 0.5
    distinct, inverse = np.unique(indicator, axis=0, return_inverse=True)
    stacked = model.stacked
    sums = np.empty((distinct.shape[0], stacked.shape[1]))
    for j, row in enumerate(distinct):
        np.sum(stacked[np.flatnonzero(row)], axis=0, out=sums[j])
    terms = np.moveaxis(sums[inverse.reshape(-1)], 0, -1).reshape(model.log_on.shape[:-1] + (replicas + 1,))
    t00, t10, t01, t11 = (terms[..., a, f, :replicas] for a, f in ((0, 0), (1, 0), (0, 1), (1, 1)))
    outside_row = terms[..., 1, 1, replicas]
    base = t00.sum(-1) + outside_row
    d_att, d_fault, d_both = t10 - t00, t01 - t00, t11 - t00
    if replicas:
        if log_fault_position is None:
            log_phi = np.full(d_fault.shape[-1], -math.log(replicas))
        else:
            log_phi = np.asarray(log_fault_position)[:, None, None, :, :]      # (D, 1, 1, G, R)
        weighted = d_fault + log_phi
        peak = weighted.max(-1, keepdims=True)
        spread = np.exp(weighted - peak)
        total = spread.sum(-1, keepdims=True)
        zero = np.zeros(spread.shape[:-1] + (1,))
        before = np.concatenate([zero, np.cumsum(spread, -1)[..., :-1]], -1)
        after = np.concatenate([np.flip(np.cumsum(np.flip(spread, -1), -1), -1)[..., 1:], zero], -1)
        with np.errstate(divide="ignore"):
            elsewhere = d_att + peak + np.log(before + after)
            inside = np.logaddexp(elsewhere, d_both + log_phi)
            outside = peak[..., 0] + np.log(total[..., 0])
        position = np.concatenate([inside, outside[..., None]], -1) + base[..., None]
    else:
        position = base[..., None]
    log_weights = np.empty((len(model.attacks), replicas + 1))
    with np.errstate(divide="ignore"):
        for i, footing in enumerate(model.footing):
            log_weights[i] = np.log(attacker_weights(footing, replicas, window.primary))
    fault_prior = model.log_fault_prior if log_fault_prior is None else log_fault_prior
    joint = position + fault_prior[:, None, None, :, None] + log_weights[None, :, None, None, :]
    by_position = _logsumexp(joint, 3)
    total_ll = _logsumexp(by_position, 3)
    by_fault = _logsumexp(joint, 4)
    return total_ll, by_position - total_ll[..., None], by_fault - total_ll[..., None]


def random_tables(rng, draws, attacks, faults, signals) -> SignalTables:
    """Tables of the full shape with independent random probabilities (not only the catalogue's)."""
    shape = (draws, attacks, 4, faults, 2, 2, signals)
    p = rng.uniform(1e-3, 1.0 - 1e-3, shape)
    prior = rng.dirichlet(np.ones(faults), draws)
    return SignalTables(attacks=tuple(f"a{i}" for i in range(attacks)), log_on=np.log(p), log_off=np.log1p(-p),
                        log_fault_prior=np.log(prior), footing=tuple(rng.choice(FOOTINGS, attacks)))


def random_window(rng, replicas, signals, missing=0.3) -> WindowSignals:
    """On, off, graded (0.5 included: neither) and missing values; repeated rows, as windows have."""
    choices = np.array([0.0, 1.0, 0.5, 0.2, 0.8])
    patterns = rng.choice(choices, (max(1, replicas // 3 + 1), signals))
    x = patterns[rng.integers(0, patterns.shape[0], replicas + 1)]
    x = np.where(rng.random(x.shape) < 0.1, rng.uniform(0.0, 1.0, x.shape), x)
    x[rng.random(x.shape) < missing] = np.nan
    primary = int(rng.integers(-1, replicas)) if replicas else -1
    return WindowSignals(tuple(f"n{i}" for i in range(replicas)), primary, x)


def _assert_same(model, window, log_fault_prior=None, log_fault_position=None):
    expected = oracle(model, window, log_fault_prior, log_fault_position)
    got = evidence.window_log_likelihood(model, window, with_attacker=True, log_fault_prior=log_fault_prior,
                                         log_fault_position=log_fault_position)
    for name, e, g in zip(("log likelihood", "attacker position", "fault posterior"), expected, got, strict=True):
        assert g.shape == e.shape, name
        np.testing.assert_allclose(g, e, err_msg=name, **TOLERANCE)
    plain = evidence.window_log_likelihood(model, window, log_fault_prior=log_fault_prior,
                                           log_fault_position=log_fault_position)
    np.testing.assert_array_equal(plain, got[0])


def random_positions(rng, draws, faults, replicas, spread=3.0):
    """Normalised log priors of each fault's replica ``(D, G, R)``, some replicas sharing theirs (as followed ones do)."""
    if replicas == 0:
        return np.zeros((draws, faults, 0))
    distinct = rng.normal(0.0, spread, (draws, faults, max(1, replicas // 2)))
    log_phi = distinct[..., rng.integers(0, distinct.shape[-1], replicas)]
    return log_phi - _logsumexp(log_phi, 2)[..., None]


@pytest.mark.parametrize("draws, attacks, faults, signals, replicas", [
    (1, 1, 1, 1, 1), (2, 3, 3, 5, 2), (3, 2, 4, 6, 3), (2, 4, 7, 19, 7), (2, 3, 5, 24, 16), (1, 2, 7, 19, 50)])
def test_random_tables_and_windows_match_the_oracle(draws, attacks, faults, signals, replicas):
    rng = np.random.default_rng(1000 * replicas + signals)
    model = random_tables(rng, draws, attacks, faults, signals)
    for _ in range(6):
        window = random_window(rng, replicas, signals)
        _assert_same(model, window)
        _assert_same(model, window, np.log(rng.dirichlet(np.ones(faults), draws)))


@pytest.mark.parametrize("replicas", [0, 1, 2, 10])
def test_edge_windows_match_the_oracle(replicas):
    rng = np.random.default_rng(7 + replicas)
    model = random_tables(rng, 2, 3, 4, 6)
    nothing = np.full((replicas + 1, 6), np.nan)
    _assert_same(model, WindowSignals(tuple(f"n{i}" for i in range(replicas)), -1, nothing))
    everything = np.ones((replicas + 1, 6))
    _assert_same(model, WindowSignals(tuple(f"n{i}" for i in range(replicas)), replicas - 1, everything))
    # One replica carries almost all of the fault's weight: the sum over the others is tiny, not zero.
    x = np.zeros((replicas + 1, 6))
    x[0] = 1.0
    _assert_same(model, WindowSignals(tuple(f"n{i}" for i in range(replicas)), 0, x))


def test_extreme_tables_take_the_log_path_and_match_the_oracle():
    # Probabilities down to 1e-12: ratio products leave the linear path's bounds.
    from bayes_defense.stream import _evidence_kernel

    rng = np.random.default_rng(21)
    model = random_tables(rng, 2, 3, 4, 12)
    p = np.exp(model.log_on)
    p[..., 0, 0, :] = np.where(rng.random(p[..., 0, 0, :].shape) < 0.5, 1e-12, p[..., 0, 0, :])
    model = SignalTables(model.attacks, np.log(p), np.log1p(-p), model.log_fault_prior, model.footing)
    x = np.ones((6, 12))
    window = WindowSignals(tuple(f"n{i}" for i in range(5)), 1, x)
    log00, log11, ratio, store, *_ = evidence._derived_tables(model)
    weights = evidence._log_attacker_weights(model.footing, 5, 1)
    on, off, _, row_first, *_ = _evidence_kernel._classes(x, weights, np.empty((0, 0, 0)))
    assert not _evidence_kernel._linear_terms(log00, log11, ratio, on, off, row_first, *store)[4]
    _assert_same(model, window)
    for _ in range(4):
        _assert_same(model, random_window(rng, 5, 12, missing=0.1))


def test_faults_ruled_out_match_the_oracle():
    # A fault chain that has ruled faults out predicts priors near -700 (FaultFilter's floor) or -inf.
    rng = np.random.default_rng(22)
    model = random_tables(rng, 3, 3, 5, 8)
    prior = np.log(rng.dirichlet(np.ones(5), 3))
    prior[:, 1:3] = -700.0
    prior[0, 4] = -np.inf
    for replicas in (0, 3, 9):
        for _ in range(3):
            _assert_same(model, random_window(rng, replicas, 8), prior)
    prior[1] = -np.inf
    got = evidence.window_log_likelihood(model, random_window(rng, 3, 8), log_fault_prior=prior)
    assert np.all(got[1] == -np.inf) and np.all(np.isfinite(got[[0, 2]]))


def test_the_catalogue_tables_match_the_oracle():
    rng = np.random.default_rng(3)
    model = evidence.signal_tables(evidence.prior_draws(4, seed=11))
    for replicas in (0, 4, 7, 50):
        for _ in range(3):
            _assert_same(model, random_window(rng, replicas, len(SIGNALS), missing=0.5))


def test_the_catalogue_tables_repeat_their_benign_and_unpatterned_stages():
    # The kernel computes a block (draw, attack, stage) once and copies its repeats
    # (evidence._repeated_blocks): the benign stage is the same for every attack, and an attack
    # without a precursor pattern has its precursor columns in its pattern stage too.
    from bayes_defense.models.registry import attack_spec

    model = evidence.signal_tables(evidence.prior_draws(3, seed=11))
    draws, attacks, stages = model.log_on.shape[:3]
    source, mode = evidence._repeated_blocks(model)
    block = np.arange(draws * attacks * stages).reshape(draws, attacks, stages)
    assert np.all(source <= np.arange(source.size)) and np.all((mode == 0) == (source == np.arange(source.size)))
    assert np.all(mode[block[:, 1:, 0]] != 0) and np.all(source[block[:, 1:, 0]] == block[:, :1, 0])
    unpatterned = [i for i, a in enumerate(model.attacks) if attack_spec(a).pattern is None]
    assert unpatterned and np.all(mode[block[:, unpatterned, 2]] == 1)
    assert np.all(source[block[:, unpatterned, 2]] == block[:, unpatterned, 1])
    patterns = attacks - len(unpatterned)
    assert int((mode == 0).sum()) <= draws * (1 + 2 * attacks + patterns)


def test_copied_blocks_match_the_oracle():
    # Repeated blocks made on purpose in random tables: one of the same precondition (copied bit for
    # bit), one of another precondition whose attacker role changes nothing (its attacker's posterior
    # is its prior), and one of another precondition where the role matters (computed).
    rng = np.random.default_rng(31)
    base = random_tables(rng, 2, 4, 5, 9)
    p = np.exp(base.log_on)
    p[:, 1, 2] = p[:, 0, 2]                      # attack 1 (same footing as 0), stage 2: a repeat
    p[:, 0, 1, :, 1] = p[:, 0, 1, :, 0]          # attack 0, stage 1: the attacker's role changes nothing
    p[:, 2, 3] = p[:, 0, 1]                      # attack 2 (other footing), stage 3: role-free repeat
    p[:, 3, 3] = p[:, 0, 2]                      # attack 3 (other footing), stage 3: not role-free
    footing = ("backup_faulty", "backup_faulty", "primary_faulty", "admission_open")
    model = SignalTables(base.attacks, np.log(p), np.log1p(-p), base.log_fault_prior, footing)
    source, mode = evidence._repeated_blocks(model)
    for d in range(2):
        first = d * 16
        assert (mode[first + 4 + 2], source[first + 4 + 2]) == (1, first + 2)
        assert (mode[first + 8 + 3], source[first + 8 + 3]) == (2, first + 1)
        assert mode[first + 12 + 3] == 0
    for replicas in (0, 1, 5, 12):
        for _ in range(3):
            window = random_window(rng, replicas, 9)
            _assert_same(model, window)
            if replicas:
                prior = np.log(rng.dirichlet(np.ones(5), 2))
                _assert_same(model, window, prior, random_positions(rng, 2, 5, replicas))


def test_the_fault_filter_steps_as_the_joint_chain_of_fault_and_replica_does():
    # The oracle filters the joint chain over (fault, replica) explicitly: a fault under way keeps its
    # replica, one that starts draws it uniformly; the window's likelihood given each (fault, replica)
    # is the oracle's with that fault and replica certain.
    values = evidence.prior_draws(3, seed=5)
    model = evidence.signal_tables(values)
    faults = FaultFilter(values)
    draws, states = faults.log_faults.shape
    replicas = 4
    rng = np.random.default_rng(9)
    with np.errstate(divide="ignore"):
        joint = np.log(np.zeros((draws, states, replicas)))
    joint[:, 0, :] = -math.log(replicas)
    stay = np.eye(states, dtype=bool)
    stay[0, 0] = False
    for step in range(12):
        window = random_window(rng, replicas, len(SIGNALS), missing=0.4)
        # (g, i) -> (h, j): T[g, h] if h == g >= 1 and j == i; T[g, h] / R for a fault (or none) that starts.
        kept = np.where(stay[None], faults.log_transition, -np.inf)
        started = np.where(stay[None], -np.inf, faults.log_transition) - math.log(replicas)
        predicted = np.logaddexp(_logsumexp(joint[:, :, None, :] + kept[:, :, :, None], 1),
                                 _logsumexp(_logsumexp(joint, 2)[:, :, None] + started, 1)[:, :, None])
        prior = _logsumexp(predicted, 2)
        position = predicted - prior[:, :, None]
        np.testing.assert_allclose(faults.predict(replicas)[0], prior, **TOLERANCE)
        np.testing.assert_allclose(faults.predict(replicas)[1], np.maximum(position, -700.0), **TOLERANCE)
        expected = oracle(model, window, prior, position)
        got = faults.step(model, window)
        for e, g in zip(expected, got, strict=True):
            np.testing.assert_allclose(g, e, err_msg=f"step {step}", **TOLERANCE)
        given = np.empty((draws, states, replicas))
        with np.errstate(divide="ignore"):
            for g in range(states):
                for j in range(replicas):
                    certain = np.log(np.eye(states)[g])[None].repeat(draws, 0)
                    there = np.log(np.eye(replicas)[j])[None, None].repeat(draws, 0).repeat(states, 1)
                    given[:, g, j] = oracle(model, window, certain, there)[0][:, 0, 0]
        joint = predicted + given
        joint -= _logsumexp(_logsumexp(joint, 2), 1)[:, None, None]
        marginal = _logsumexp(joint, 2)
        np.testing.assert_allclose(faults.log_faults, np.maximum(marginal, -700.0), err_msg=f"step {step}",
                                   **TOLERANCE)
        np.testing.assert_allclose(faults.log_position, np.maximum(joint - marginal[:, :, None], -700.0),
                                   err_msg=f"step {step}", **TOLERANCE)


def test_a_fault_keeps_its_replica_across_windows():
    # A crashed primary: after a few windows the chain holds the crash at the primary, and the
    # window's likelihood under no attack grows to what it is with that fault there for certain.
    values = evidence.default_values()
    model = evidence.signal_tables(values)
    faults = FaultFilter(values)
    replicas, crash = 16, 1 + list(evidence.FAULTS).index("crash")
    x = np.full((replicas + 1, len(SIGNALS)), np.nan)
    x[0, SIGNALS.index("preprepare_delay")] = 1.0
    window = WindowSignals(tuple(f"r{i}" for i in range(replicas)), 0, x)
    first = faults.step(model, window)[0][0, 0, 0]
    for _ in range(10):
        last = faults.step(model, window)[0][0, 0, 0]
    assert float(np.exp(faults.log_position[0, crash, 0])) > 0.99
    with np.errstate(divide="ignore"):
        certain = evidence.window_log_likelihood(
            model, window, log_fault_prior=np.log(np.eye(len(evidence.FAULTS) + 1)[crash])[None],
            log_fault_position=np.log(np.eye(replicas)[0])[None, None].repeat(len(evidence.FAULTS) + 1, 1))
    assert last - first > math.log(replicas) / 2
    assert last == pytest.approx(float(certain[0, 0, 0]), abs=0.1)


def test_a_window_of_the_wrong_width_is_refused():
    model = evidence.signal_tables(evidence.default_values())
    with pytest.raises(InvalidInputError, match="signals"):
        evidence.window_log_likelihood(model, WindowSignals(("r0",), 0, np.zeros((2, len(SIGNALS) + 1))))
    with pytest.raises(InvalidInputError, match="log_fault_prior"):
        evidence.window_log_likelihood(model, WindowSignals(("r0",), 0, np.zeros((2, len(SIGNALS)))),
                                       log_fault_prior=np.zeros((2, 2)))


def chain_oracle(log_alpha, log_transition, log_likelihood):
    """The model filter's numpy chain step (its ``_close_window`` and ``_emission`` before the kernel)."""
    joint = log_alpha[..., :, None] + log_transition
    peak = joint.max(axis=-2)
    peak = np.where(peak > -np.inf, peak, 0.0)
    with np.errstate(divide="ignore"):
        predicted = peak + np.log(np.exp(joint - peak[..., None, :]).sum(axis=-2))
    ll = np.transpose(log_likelihood, (1, 0, 2))
    others = np.exp(predicted)[..., 1:]
    weighted = np.log(np.maximum(others, 1e-300)) + ll[..., 1:]
    per_attack = np.logaddexp.reduce(weighted, axis=-1)
    total = np.logaddexp.reduce(per_attack, axis=0)
    active = others.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rest = total[None] + np.log(np.maximum(1.0 - np.exp(per_attack - total[None]), 1e-300))
    none = np.clip(1.0 - (active.sum(0)[None] - active), 1e-12, 1.0)
    background = np.logaddexp(np.log(none) + ll[..., 0], rest)
    emission = ll - background[..., None]
    emission[..., 0] = 0.0
    posterior = predicted + emission
    posterior -= posterior.max(axis=-1, keepdims=True)
    posterior -= np.log(np.exp(posterior).sum(axis=-1, keepdims=True))
    alpha = np.maximum(posterior, -700.0)
    return alpha - np.log(np.exp(alpha).sum(-1, keepdims=True))


def bands_oracle(log_alpha, onset, success, level):
    """The model filter's numpy belief tables (its ``_summarise`` before the kernel, with its ``_quantiles``)."""
    from bayes_defense.stream.model_filter import _quantiles

    probability = np.exp(log_alpha)
    precursor, execution = probability[..., 1] + probability[..., 2], probability[..., 3]
    within = np.clip((probability * onset).sum(-1) * success, 0.0, 1.0)
    return _quantiles(np.clip(np.stack([precursor, execution, within, precursor + execution]), 0.0, 1.0), level)


def _random_chains(rng, attacks, draws):
    alpha = rng.normal(0.0, 3.0, (attacks, draws, 4))
    alpha[rng.random(alpha.shape) < 0.1] = -700.0
    alpha -= np.log(np.exp(alpha).sum(-1, keepdims=True))
    transition = rng.dirichlet(np.ones(4), (attacks, draws, 4))
    transition[: attacks // 2, :, 0, 1] = 0.0      # attacks without a pattern: stage 1 unreachable
    transition[: attacks // 2, :, :, 1] = 0.0
    transition /= transition.sum(-1, keepdims=True)
    with np.errstate(divide="ignore"):
        return alpha, np.log(transition)


@pytest.mark.parametrize("attacks, draws", [(1, 1), (2, 3), (8, 16), (11, 5)])
def test_the_chain_step_matches_the_model_filters_numpy(attacks, draws):
    from bayes_defense.stream import _evidence_kernel

    rng = np.random.default_rng(100 * attacks + draws)
    alpha, transition = _random_chains(rng, attacks, draws)
    for scale in (0.1, 5.0, 60.0):
        ll = rng.normal(-20.0, scale, (draws, attacks, 4))
        out = np.empty_like(alpha)
        _evidence_kernel.chain_step(alpha, transition, ll, out)
        np.testing.assert_allclose(out, chain_oracle(alpha, transition, ll), **TOLERANCE)
        assert np.allclose(np.exp(out).sum(-1), 1.0, rtol=0, atol=1e-12)
        alpha = out


@pytest.mark.parametrize("attacks, draws, level", [(1, 1, 0.9), (3, 4, 0.5), (8, 16, 0.9), (5, 64, 0.99)])
def test_the_bands_match_the_model_filters_numpy(attacks, draws, level):
    from bayes_defense.stream import _evidence_kernel

    rng = np.random.default_rng(attacks + draws)
    alpha, _ = _random_chains(rng, attacks, draws)
    onset = rng.uniform(0.0, 1.0, (attacks, draws, 4))
    onset[..., 3] = 1.0
    success = rng.uniform(0.0, 1.0, (attacks, draws))
    out = np.empty((4, attacks, 3))
    _evidence_kernel.bands(alpha, onset, success, level, out)
    np.testing.assert_allclose(out, bands_oracle(alpha, onset, success, level), **TOLERANCE)
    assert np.all((0.0 <= out[..., 1]) & (out[..., 1] <= out[..., 0]) & (out[..., 0] <= out[..., 2]) & (out[..., 2] <= 1.0))


def follow_oracle(log_alpha, log_transition, log_position, persistent, log_w, by_position, log_likelihood):
    """The model filter's numpy ``_follow_positions`` (before the kernel); returns new position and likelihood."""
    lse = _logsumexp
    replicas = log_w.shape[1]
    log_likelihood = log_likelihood.copy()
    log_position = log_position.copy()
    total = log_likelihood[:, persistent, :]
    with np.errstate(invalid="ignore"):
        raw = by_position[:, persistent, :, :replicas] + total[..., None] - log_w[None, :, None, :]
    raw = np.where(np.isfinite(raw), raw, total[..., None])
    raw = np.transpose(raw, (1, 0, 2, 3))
    previous = log_position[persistent, :, :, :replicas].copy()
    previous[:, :, 0, :] = log_w[:, None, :]
    alpha = log_alpha[persistent]
    transition = log_transition[persistent]
    term = alpha[..., :, None, None] + transition[..., :, :, None] + previous[..., :, None, :]
    joint = lse(term, -3)
    stage = lse(joint, -1)
    with np.errstate(invalid="ignore"):
        predicted = np.where(np.isfinite(stage)[..., None], joint - stage[..., None], -np.log(replicas))
    posterior = predicted + raw
    mixed = lse(posterior, -1)
    with np.errstate(invalid="ignore"):
        normalised = np.where(np.isfinite(mixed)[..., None], posterior - mixed[..., None], -np.log(replicas))
    log_position[persistent, :, :, :replicas] = np.maximum(normalised, -700.0)
    log_likelihood[:, persistent, 1:] = np.transpose(mixed, (1, 0, 2))[:, :, 1:]
    return log_position, log_likelihood


@pytest.mark.parametrize("attacks, draws, replicas", [(2, 1, 1), (4, 3, 5), (8, 16, 7), (3, 4, 50)])
def test_followed_positions_match_the_model_filters_numpy(attacks, draws, replicas):
    from bayes_defense.stream import _evidence_kernel

    rng = np.random.default_rng(attacks * replicas + draws)
    alpha, transition = _random_chains(rng, attacks, draws)
    persistent = np.flatnonzero(rng.random(attacks) < 0.6)
    if not persistent.size:
        persistent = np.array([0])
    position = np.log(rng.dirichlet(np.ones(replicas), (attacks, draws, 4)))
    position = np.concatenate([position, np.full((attacks, draws, 4, 3), -700.0)], -1)   # room beyond R
    weights = rng.dirichlet(np.ones(replicas), persistent.size)
    weights[:, 0] = 0.0            # a replica the precondition rules out (by_position -inf there)
    if replicas == 1:
        weights[:] = 1.0
    weights /= weights.sum(-1, keepdims=True)
    with np.errstate(divide="ignore"):
        log_w = np.log(weights)
    for _ in range(3):
        by_position = rng.normal(-5.0, 3.0, (draws, attacks, 4, replicas + 1))
        by_position[:, persistent[:, None], :, np.flatnonzero(weights[0] == 0.0)] = -np.inf
        ll = rng.normal(-30.0, 5.0, (draws, attacks, 4))
        expected_position, expected_ll = follow_oracle(alpha, transition, position, persistent, log_w, by_position, ll)
        got_ll = ll.copy()
        _evidence_kernel.follow_positions(alpha, transition, position, persistent, log_w, by_position, got_ll)
        np.testing.assert_allclose(position, expected_position, **TOLERANCE)
        np.testing.assert_allclose(got_ll, expected_ll, **TOLERANCE)


@pytest.mark.parametrize("draws, attacks, faults, signals, replicas", [
    (1, 1, 1, 1, 1), (2, 3, 3, 5, 2), (2, 4, 7, 19, 7), (1, 2, 7, 19, 25)])
def test_followed_fault_positions_match_the_oracle(draws, attacks, faults, signals, replicas):
    # A fault chain that follows its fault's replica predicts a position prior per draw and fault.
    rng = np.random.default_rng(500 + replicas)
    model = random_tables(rng, draws, attacks, faults, signals)
    for spread in (0.5, 5.0, 200.0):    # 200: priors below 1e-100 take the log path
        for _ in range(3):
            window = random_window(rng, replicas, signals)
            positions = random_positions(rng, draws, faults, replicas, spread)
            _assert_same(model, window, None, positions)
            _assert_same(model, window, np.log(rng.dirichlet(np.ones(faults), draws)), positions)


def test_uniform_fault_positions_are_the_default():
    rng = np.random.default_rng(31)
    model = random_tables(rng, 2, 3, 4, 6)
    for replicas in (1, 4, 9):
        window = random_window(rng, replicas, 6)
        uniform = np.full((2, 4, replicas), -math.log(replicas))
        for a, b in zip(evidence.window_log_likelihood(model, window, with_attacker=True),
                        evidence.window_log_likelihood(model, window, with_attacker=True, log_fault_position=uniform),
                        strict=True):
            np.testing.assert_allclose(a, b, **TOLERANCE)
    with pytest.raises(InvalidInputError, match="log_fault_position must have shape"):
        evidence.window_log_likelihood(model, window, log_fault_position=np.zeros((2, 4, replicas + 1)))

"""Tests of the online series model: synthetic oracles, the regime filter against brute force, bounds."""

import math

import numpy as np
import pytest

from bayes_defense.errors import InvalidInputError
from bayes_defense.stream.series import (
    DEFAULT_DF,
    SeriesModel,
    episodes,
    find_periods,
    fit_series,
    prior_parameters,
    regime_forward_brute_force,
)

PERIOD = 288  # a day of 5-minute rows


def seasonal(rows, seed, noise=1.0):
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    return 10.0 + 3.0 * np.sin(2 * np.pi * t / PERIOD) + 1.5 * np.cos(4 * np.pi * t / PERIOD) + noise * rng.normal(size=rows)


def test_pure_seasonal_series_raises_no_episode_over_50k_rows():
    values = seasonal(50_000, seed=11)
    model = SeriesModel()  # periods found from the data
    scores = model.score(values)
    assert model.periods == [[PERIOD]]
    assert episodes(scores.probability) == []
    assert episodes(scores.probability, rearm=0) == []


@pytest.mark.parametrize("seed", [21, 22])
@pytest.mark.parametrize("kind", ["spike", "shift", "drift"])
def test_injected_anomaly_raises_exactly_one_episode_at_its_place(kind, seed):
    values = seasonal(16_000, seed=seed)
    onset = 12_000
    if kind == "spike":
        values[onset] += 12.0  # twelve noise spreads, one row
    elif kind == "shift":
        values[onset:] += 5.0
    else:
        # 0.1 spread per row: faster than the level adapts (about 50 rows), so a drift and not a new normal.
        values[onset:] += 0.1 * np.arange(values.size - onset)
    scores = SeriesModel(periods=[PERIOD]).score(values)
    found = episodes(scores.probability)
    assert len(found) == 1, found
    first, last = found[0]
    assert onset <= first <= onset + (0 if kind == "spike" else 5 if kind == "shift" else 60)
    if kind == "spike":
        # The regime's persistence (stay about 0.95) may hold the row after the spike too.
        assert last <= onset + 1
    # The model takes the change in: the episode ends and the series is typical again.
    assert last < onset + 400
    assert np.nanmax(scores.probability[last + 20:]) < 0.5


def _log_ratio(z, kappa):
    half = 0.5 * (DEFAULT_DF + 1.0)
    return -half * np.log1p((z / kappa) ** 2 / DEFAULT_DF) - math.log(kappa) + half * np.log1p(z * z / DEFAULT_DF)


def test_regime_filter_equals_brute_force_forward_pass_univariate():
    parameters = {"switch_in": [0.05], "stay": [0.7], "kappa": [6.0], "share": [0.3]}
    values = np.array([1.0, 1.2, 0.9, 1.1, 4.0, 1.0, 3.5, 3.6, 1.05, 0.95, 2.0])
    warmup = 3
    scores = SeriesModel(periods=(), parameters=parameters, warmup=warmup).score(values)
    ratio = np.where(np.isfinite(scores.zscore[:, 0]), _log_ratio(scores.zscore[:, 0], 6.0), 0.0)
    oracle = regime_forward_brute_force(ratio, 0.05, 0.7)
    assert np.isnan(scores.probability[:warmup]).all()
    np.testing.assert_allclose(scores.probability[warmup:], oracle[warmup:], rtol=1e-9, atol=1e-12)
    assert np.nanmax(scores.probability) > 0.5  # the oracle is not trivially zero


def test_regime_filter_equals_brute_force_forward_pass_joint():
    share, kappa = 0.3, 6.0
    parameters = {"switch_in": [0.05], "stay": [0.7], "kappa": [kappa], "share": [share]}
    rng = np.random.default_rng(3)
    values = rng.normal(size=(10, 3))
    values[6, 1] += 8.0
    values[7, 1] += 7.0
    values[4, 2] = np.nan
    scores = SeriesModel(3, periods=(), parameters=parameters, warmup=3).score(values)
    z = scores.zscore
    per_cell = np.logaddexp(math.log1p(-share), math.log(share) + _log_ratio(np.where(np.isfinite(z), z, 0.0), kappa))
    ratio = np.where(np.isfinite(z), per_cell, 0.0).sum(axis=1)
    oracle = regime_forward_brute_force(ratio, 0.05, 0.7)
    np.testing.assert_allclose(scores.probability[3:], oracle[3:], rtol=1e-9, atol=1e-12)
    assert scores.probability[6] > 0.5


def test_independent_columns_each_follow_the_brute_force_forward_pass():
    parameters = {"switch_in": [0.05], "stay": [0.7], "kappa": [6.0], "share": [0.3]}
    rng = np.random.default_rng(4)
    values = rng.normal(size=(10, 2))
    values[6, 0] += 9.0
    values[4, 1] = np.nan
    scores = SeriesModel(2, periods=(), parameters=parameters, warmup=3, independent=True).score(values)
    for c in range(2):
        z = scores.zscore[:, c]
        # Warm-up and skipped cells leave a column's chain as it was: the oracle sees scored cells only.
        present = np.isfinite(z)
        assert present.sum() == (7 if c == 0 else 6)
        oracle = regime_forward_brute_force(_log_ratio(z[present], 6.0), 0.05, 0.7)
        np.testing.assert_allclose(scores.column_probability[present, c], oracle, rtol=1e-9, atol=1e-12)
    assert scores.column_probability[6, 0] > 0.5 > scores.column_probability[6, 1]
    np.testing.assert_allclose(scores.probability[3:], np.nanmax(scores.column_probability[3:], axis=1))


def test_every_probability_in_unit_interval_with_ordered_band():
    rng = np.random.default_rng(5)
    values = rng.standard_t(3, size=(6000, 4)) * [1.0, 10.0, 0.01, 1e4] + [0.0, 5.0, -3.0, 1e6]
    values[rng.random(values.shape) < 0.01] = np.nan
    values[rng.random(values.shape) < 0.002] *= 50.0
    values[3000:3100, 2] += 1.0
    scores = SeriesModel(4, periods="auto", search_rows=2000).score(values)
    scored = np.isfinite(scores.probability)
    assert np.isnan(scores.probability[:2000]).all() and scored.sum() > 3900
    p, lo, hi = scores.probability[scored], scores.lower[scored], scores.upper[scored]
    assert ((0 <= lo) & (lo <= p) & (p <= hi) & (hi <= 1)).all()
    cells = scores.column_probability[np.isfinite(scores.column_probability)]
    assert ((cells >= 0) & (cells <= 1)).all()
    assert (hi - lo).max() > 0  # parameter uncertainty gives a band, not a point


def test_cause_names_the_injected_column():
    rng = np.random.default_rng(8)
    names = ["cpu", "memory", "disk", "network", "latency"]
    values = rng.normal(size=(3000, 5)) * [1.0, 2.0, 0.5, 3.0, 1.0] + 50.0
    values[2000:2030, 3] += 25.0
    scores = SeriesModel(5, periods=()).score(values)
    found = episodes(scores.probability)
    assert len(found) == 1 and 2000 <= found[0][0] <= 2002
    causes = scores.causes(names)
    inside = [causes[i] for i in range(found[0][0], 2030)]
    assert inside and all(cause == "network" for cause in inside)
    # After the shift ends the regime's persistence holds the episode a row or two.
    assert found[0][1] <= 2033
    assert all(cause == "" for cause, p in zip(causes, scores.probability, strict=True) if not p >= 0.5)


def test_non_finite_cells_are_skipped_and_counted_without_changing_state():
    values = seasonal(600, seed=2)[:, None].repeat(2, axis=1)
    values[100:110, 1] = np.nan
    values[200, 1] = np.inf
    model = SeriesModel(2, periods=[PERIOD])
    model.score(values[:100])
    before = {name: value for name, value in model.state_dict().items() if name in ("level_state", "cov", "scale2")}
    count = model.count.copy()
    scores = model.score(values[100:110])
    # The skipped column's state is untouched; the other column is scored as usual.
    for name, value in before.items():
        assert np.asarray(model.state_dict()[name])[1].tolist() == np.asarray(value)[1].tolist()
    assert model.count[1] == count[1] and np.isnan(scores.zscore[:, 1]).all()
    assert np.isfinite(scores.probability).all()
    model.score(values[110:])
    assert model.skipped.tolist() == [0, 11]


def test_state_dict_round_trip_continues_identically():
    values = seasonal(5000, seed=4)
    a = SeriesModel(search_rows=3000)
    a.score(values[:2000])  # the period search is still pending
    b = SeriesModel(search_rows=3000)
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a.score(values[2000:]).probability, b.score(values[2000:]).probability)
    assert a.periods == b.periods == [[PERIOD]]


def test_blocks_and_rows_give_the_same_scores():
    values = seasonal(700, seed=6)
    whole = SeriesModel(periods=[PERIOD]).score(values).probability
    model = SeriesModel(periods=[PERIOD])
    rows = np.array([model.update(v)[0] for v in values])
    np.testing.assert_array_equal(np.isnan(whole), np.isnan(rows))
    np.testing.assert_allclose(whole[np.isfinite(whole)], rows[np.isfinite(rows)], rtol=0, atol=0)


def test_find_periods_daily_and_weekly():
    rng = np.random.default_rng(9)
    t = np.arange(6 * 7 * 48)
    weekly = np.where((t // 48) % 7 >= 5, -2.0, 0.0)
    values = np.sin(2 * np.pi * t / 48) + weekly + 0.3 * rng.normal(size=t.size)
    assert find_periods(values) == [48, 336]
    assert find_periods(rng.normal(size=4000)) == []


def test_bad_input_is_refused_with_a_reason():
    with pytest.raises(InvalidInputError, match="shape"):
        SeriesModel(2).score(np.zeros((5, 3)))
    with pytest.raises(InvalidInputError, match="period"):
        SeriesModel(periods=[1])
    with pytest.raises(InvalidInputError, match="between 0 and 1"):
        SeriesModel(parameters={"switch_in": [1.5], "stay": [0.5], "kappa": [5.0], "share": [0.5]})
    with pytest.raises(InvalidInputError, match="not a SeriesModel state"):
        SeriesModel().load_state_dict({"rows": 3})


def test_prior_draws_lie_in_their_supports():
    draws = prior_parameters(64, seed=3)
    assert all(((draws[n] > 0) & (draws[n] < 1)).all() for n in ("switch_in", "stay", "share"))
    assert (draws["kappa"] > 1).all()


def test_fit_series_returns_posterior_draws_and_diagnostics():
    rng = np.random.default_rng(12)
    values = rng.normal(size=(1500, 2))
    values[700:720, 0] += 9.0
    draws, diagnostics = fit_series(values, periods=(), steps=150, draws=8, seed=0)
    assert set(draws) == {"switch_in", "stay", "kappa", "share"}
    assert all(v.shape == (8,) for v in draws.values())
    assert np.isfinite(diagnostics["elbo"]) and np.isfinite(diagnostics["pareto_k"])
    # The fitted draws drive the model.
    scores = SeriesModel(2, periods=(), parameters=draws).score(values)
    assert np.nanmax(scores.probability[700:720]) > 0.5

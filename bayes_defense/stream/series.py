"""An online Bayesian model of metric series: anomaly probability per row, with credible bands.

One :class:`SeriesModel` follows one or several columns of a metric table,
row by row, with bounded work and memory per row (no growth with the length
of the stream). ``bayes-defense detect`` and the streaming defender's
telemetry baselines both use it.

The model
---------
For column ``c`` at row ``t`` with value ``y`` (``G`` the local-linear-trend
transition, ``s_k`` the seasonal profile of period ``P_k``):

- state: ``level_t = level_{t-1} + trend_{t-1} + w``, ``trend_t = trend_{t-1} + v``,
  Gaussian with covariance ``C``; the prediction is ``R = D^-1/2 G C G' D^-1/2``,
  ``D = diag(delta_level, delta_trend)`` (component discounting, West and
  Harrison 1997, chapter 6: the process noise is the fraction ``1 - delta`` of
  the state's uncertainty). After a row judged anomalous with probability
  ``a`` both components are discounted by a further ``delta_level ** (a (anomaly_discount_power - 1))``:
  while the series does not look typical nothing is learned from it, so the
  state becomes less certain, and a sustained change is accepted as the new
  normal once it stays (the episode ends);
- forecast: ``f = level + trend + sum_k s_k[t mod P_k]``; predictive scale
  ``Q = R_00 + sigma^2``;
- typical regime: ``y ~ StudentT(df, f, sqrt(Q))`` (heavy-tailed, ``df`` = 8);
- anomalous regime: ``y ~ StudentT(df, f, kappa sqrt(Q))``;
- several columns: in an anomalous row each column is anomalous with
  probability ``share`` and typical otherwise, independently; in a typical
  row all are typical (one column: ``share`` = 1);
- the row's regime ``r_t`` is a two-state Markov chain, ``P(r_t = 1 | r_{t-1}
  = 0) = switch_in`` and ``P(r_t = 1 | r_{t-1} = 1) = stay``; the filter is
  the exact forward pass of this chain given the rows' emissions;
- credible bands: the regime parameters ``(switch_in, stay, kappa, share)``
  are uncertain; an ensemble of draws from their prior (:func:`prior_parameters`)
  or from a posterior fitted by SVI (:func:`fit_series`) runs one forward pass
  each, and the band is the ``level`` quantile interval of the anomaly
  probability across draws;
- learning: the state is updated by a Kalman step with observation variance
  ``sigma^2 / (w u)``, where ``w`` = P(column typical | rows so far) (ensemble
  mean) and ``u = (df + 1) / (df + z^2)`` the Student-t weight of the
  standardised residual ``z``; the seasonal profiles learn the residual at
  their phase with gain ``season_gain * w``; ``sigma^2`` follows the
  Student-t scale's EM update, exponentially weighted with ``scale_gain * w``.

- floors: ``sigma`` is kept at or above ``min_scale + relative_min_scale |level|``
  and, once the model has seen a training file or its period-search buffer,
  at or above half of each column's resolution (its smallest step between
  values: a metric reported in steps of 0.01 cannot be known better);
- independent mode (``independent=True``): each column has its own regime
  chain (a bank of univariate models, as the defender's telemetry baselines
  use), a skipped or warming cell leaves its chain as it was.

Constants: ``df`` = 8, the priors in :data:`PRIORS`, ``delta_level`` = 0.98,
``delta_trend`` = 0.9999, ``anomaly_discount_power`` = 3, ``season_gain`` =
0.1, ``scale_gain`` = 0.01 were chosen on seeded synthetic streams (a daily
pattern with noise, spikes, shifts and drifts: ``tests/stream/test_series.py``),
never on a labelled benchmark. What follows from them: an isolated spike
needs about 8 noise spreads to reach probability one half, a sustained
shift about 3 spreads for a few rows, and a drift must outpace the level's
adaptation (about 50 rows), some 0.06 spreads per row.

Approximations, stated: the state filter is shared by the ensemble (it uses
the ensemble-mean weights), the scale ``sigma`` and the seasonal profiles are
point estimates (their uncertainty is not in the band, only through the
Student-t predictive), and the Gaussian Kalman step stands in for the exact
update under Student-t noise (the weight ``u`` is one step of its EM).

Seasonality: periods are given (``periods=[288, 2016]``) or found from the
data (``periods="auto"``): the first ``search_rows`` values are kept, and
:func:`find_periods` searches their autocorrelation for a fundamental period
and a multiple of it; the profiles start from the phase means of that buffer,
the buffer is dropped, and from then on the work per row is constant again.
Rows before the search are warm-up (not scored): until the periods are
known, a seasonal swing would read as an anomaly.

The per-row work runs in one compiled kernel (numba) over blocks of rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bayes_defense.errors import InvalidInputError

__all__ = ["SeriesModel", "SeriesScores", "prior_parameters", "prior_mean_parameters", "find_periods", "episodes",
           "regime_forward_brute_force", "fit_series", "trained_model", "PARAMETER_NAMES", "DEFAULT_DF"]

#: The regime parameters that carry uncertainty (one value per ensemble draw).
PARAMETER_NAMES: tuple[str, ...] = ("switch_in", "stay", "kappa", "share")
#: Degrees of freedom of the Student-t noise in both regimes.
DEFAULT_DF = 8.0
# Priors of the regime parameters (one source: prior_parameters and fit_series read them).
# switch_in ~ Beta(1, 999): about one anomaly onset per thousand rows;
# stay ~ Beta(38, 2): an episode, once open, lasts about twenty rows unless the rows say otherwise;
# kappa ~ LogNormal(log 10, 0.3): an anomaly is an order of magnitude off the typical scale;
# share ~ Beta(2, 6): an anomalous row affects about a quarter of the columns.
PRIORS: dict[str, tuple[str, float, float]] = {
    "switch_in": ("beta", 1.0, 999.0),
    "stay": ("beta", 38.0, 2.0),
    "kappa": ("lognormal", math.log(10.0), 0.3),
    "share": ("beta", 2.0, 6.0),
}


def prior_parameters(ensemble: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Draw the regime parameters from their priors, one value per ensemble member.

    Parameters
    ----------
    ensemble : int
        Number of draws.
    seed : int
        Seed of the draws.

    Returns
    -------
    dict of str to ndarray
        ``switch_in``, ``stay``, ``kappa`` and ``share``, each of shape ``(ensemble,)``.

    Examples
    --------
    >>> draws = prior_parameters(8, seed=1)
    >>> sorted(draws), draws["stay"].shape
    (['kappa', 'share', 'stay', 'switch_in'], (8,))
    >>> bool(((draws["switch_in"] > 0) & (draws["switch_in"] < 1)).all())
    True
    """
    if int(ensemble) < 1:
        raise InvalidInputError(f"ensemble must be at least 1 draw; got {ensemble!r}")
    rng = np.random.default_rng([int(seed), 0x5E])
    out = {}
    for name in PARAMETER_NAMES:
        family, a, b = PRIORS[name]
        out[name] = rng.beta(a, b, int(ensemble)) if family == "beta" else rng.lognormal(a, b, int(ensemble))
    return out


def prior_mean_parameters() -> dict[str, np.ndarray]:
    """The regime parameters at their prior means, as a one-draw ensemble (no band, least work).

    Examples
    --------
    >>> {name: round(float(value[0]), 4) for name, value in prior_mean_parameters().items()}["stay"]
    0.95
    """
    return {name: np.array([_prior_mean(name)]) for name in PARAMETER_NAMES}


def _check_parameters(parameters: Mapping[str, Any]) -> dict[str, np.ndarray]:
    missing = [name for name in PARAMETER_NAMES if name not in parameters]
    if missing:
        raise InvalidInputError(f"series parameters need {', '.join(PARAMETER_NAMES)}; missing {', '.join(missing)}")
    out = {name: np.atleast_1d(np.asarray(parameters[name], dtype=np.float64)).copy() for name in PARAMETER_NAMES}
    sizes = {array.shape for array in out.values()}
    if len(sizes) != 1 or len(next(iter(sizes))) != 1:
        raise InvalidInputError(f"series parameters must be 1-d arrays of one length; got shapes {sorted(sizes)}")
    for name in ("switch_in", "stay", "share"):
        if not ((out[name] > 0) & (out[name] < 1)).all():
            raise InvalidInputError(f"series parameter {name} must lie strictly between 0 and 1")
    if not ((out["kappa"] > 1) & np.isfinite(out["kappa"])).all():
        raise InvalidInputError("series parameter kappa (anomalous scale multiplier) must be finite and above 1")
    return out


def find_periods(values: Any, *, max_periods: int = 2, threshold: float = 0.3, prominence: float = 0.15,
                 min_period: int = 4) -> list[int]:
    """Seasonal periods of a series from its autocorrelation: a fundamental and multiples of it.

    A lag is a period when the autocorrelation there is a local maximum above
    ``threshold`` that rises at least ``prominence`` above its lowest value
    between half that lag and the lag (so a slowly wandering level, whose
    autocorrelation only decays, has none). The fundamental is the shortest
    such lag; a further period is a multiple of the last one found that is
    still a period of what the earlier profiles leave unexplained. Lags up
    to a third of the series are searched, so each period is seen three times.

    Parameters
    ----------
    values : array_like
        The series (non-finite values are filled with the median).
    max_periods : int
        At most this many periods.
    threshold, prominence : float
        Autocorrelation a period needs, and its rise over the dip before it.
    min_period : int
        Shortest period considered.

    Returns
    -------
    list of int
        Periods, shortest first (empty when there is no seasonality).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> t = np.arange(3000)
    >>> find_periods(np.sin(2 * np.pi * t / 48) + 0.3 * rng.normal(size=3000))
    [48]
    >>> find_periods(np.cumsum(rng.normal(size=3000)))
    []
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    finite = np.isfinite(x)
    if finite.sum() < 3 * min_period:
        return []
    x = np.where(finite, x, np.median(x[finite]))
    periods: list[int] = []
    residual = x - x.mean()
    for _ in range(max_periods):
        n = residual.size
        spectrum = np.fft.rfft(residual, 2 * n)
        acf = np.fft.irfft(spectrum * np.conj(spectrum))[: n]
        if acf[0] <= 0:
            break
        acf = acf / acf[0]
        found = None
        top = n // 3
        base = periods[-1] if periods else 1
        for lag in range(max(min_period, 2 * base if periods else min_period), top):
            if periods and lag % base:
                continue
            window = max(1, lag // 20)
            lo, hi = max(1, lag - window), min(top, lag + window + 1)
            if acf[lag] < threshold or acf[lag] < acf[lo:hi].max():
                continue
            if acf[lag] - acf[lag // 2: lag].min() < prominence:
                continue
            found = lag
            break
        if found is None:
            break
        # Near its peak the autocorrelation is flat against its noise; the lag whose
        # phase means explain most variance is a much sharper estimate of the period.
        window = max(1, found // 20)
        found = max((lag for lag in range(max(min_period, found - window), found + window + 1)
                     if not periods or lag % base == 0), key=lambda lag: _profile(residual, lag).var())
        periods.append(found)
        residual = residual - _profile(residual, found)
    return periods


def _profile(values: np.ndarray, period: int) -> np.ndarray:
    """Each row's phase mean for ``period`` (the seasonal profile, laid along the rows)."""
    phases = np.arange(values.size) % period
    means = np.bincount(phases, values, period) / np.maximum(np.bincount(phases, minlength=period), 1)
    return means[phases]


def _kernel() -> Any:
    # A module of its own, so that numba's on-disk cache of the compiled kernel
    # survives edits to this one; imported late, so importing this module loads no numba.
    from bayes_defense.stream._series_kernel import kernel

    return kernel


class SeriesScores:
    """What :meth:`SeriesModel.score` returns for a block of rows.

    Attributes
    ----------
    probability, lower, upper : ndarray, shape (rows,)
        Anomaly probability of each row and its credible band; ``nan`` for
        rows not scored (warm-up, or no finite cell).
    column_probability : ndarray, shape (rows, columns)
        Probability that each column is anomalous at that row (``nan`` where
        the cell was not scored).
    zscore : ndarray, shape (rows, columns)
        Standardised one-step residual ``(y - forecast) / sqrt(Q)``.
    """

    __slots__ = ("probability", "lower", "upper", "column_probability", "zscore")

    def __init__(self, probability: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                 column_probability: np.ndarray, zscore: np.ndarray) -> None:
        self.probability, self.lower, self.upper = probability, lower, upper
        self.column_probability, self.zscore = column_probability, zscore

    def causes(self, names: Sequence[str], *, cutoff: float = 0.5) -> list[str]:
        """Per row, the columns that carry the anomaly, most probable first, joined by ``;``.

        A column is named when its own anomaly probability reaches ``cutoff``
        in a row whose probability does; if none does, the most probable
        column is named. Rows below ``cutoff`` (or unscored) get ``""``.

        Examples
        --------
        >>> scores = SeriesScores(np.array([0.9, 0.1]), np.array([0.8, 0.0]), np.array([1.0, 0.2]),
        ...                       np.array([[0.2, 0.85], [0.0, 0.1]]), np.zeros((2, 2)))
        >>> scores.causes(["cpu", "memory"])
        ['memory', '']
        """
        names = list(names)
        out = []
        for probability, row in zip(self.probability, self.column_probability, strict=True):
            if not probability >= cutoff:
                out.append("")
                continue
            filled = np.where(np.isfinite(row), row, -1.0)
            order = np.argsort(-filled, kind="stable")
            chosen = [names[i] for i in order if filled[i] >= cutoff] or [names[order[0]]]
            out.append(";".join(chosen))
        return out


class SeriesModel:
    """Online Bayesian anomaly model of one or several metric columns (see the module docstring).

    Parameters
    ----------
    columns : int
        Number of columns scored jointly.
    periods : "auto", sequence of int, or sequence of sequences of int
        Seasonal periods in rows: ``"auto"`` finds them per column from the
        first ``search_rows`` rows (:func:`find_periods`); a list of ints is
        used for every column; a list of lists gives each column its own;
        ``()`` for none.
    parameters : dict of arrays, optional
        Ensemble of regime parameters (:data:`PARAMETER_NAMES`), for example
        from :func:`fit_series`; default: ``ensemble`` prior draws.
    ensemble, seed : int
        Number and seed of the prior draws when ``parameters`` is omitted.
    level : float
        Credible level of the bands.
    warmup : int
        Finite values a column needs before it is scored.
    delta_level, delta_trend : float
        Discount factors of the level and trend (closer to 1: slower to adapt).
    anomaly_discount_power : float
        How much faster the state's uncertainty grows after an anomalous row.
    season_gain, scale_gain : float
        Learning rates of the seasonal profiles and of the noise scale.
    search_rows : int
        Rows kept for the period search when ``periods="auto"``; they are
        the warm-up then (not scored).
    min_scale, relative_min_scale : float or array of one per column
        Floor of the noise scale: ``min_scale + relative_min_scale * |level|``
        (for counts, where a run of identical values would give scale 0).
    independent : bool
        Score the columns as independent series (a bank of univariate
        models, each with its own regime chain) instead of jointly; a row's
        probability is then its most anomalous column's, and ``causes`` does
        not apply.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> values = 10 + rng.normal(size=600)
    >>> values[400] += 15.0
    >>> model = SeriesModel(periods=())
    >>> scores = model.score(values)
    >>> bool(np.isnan(scores.probability[0])), int(np.nanargmax(scores.probability))
    (True, 400)
    >>> bool(scores.lower[400] <= scores.probability[400] <= scores.upper[400])
    True
    """

    def __init__(self, columns: int = 1, *, periods: Any = "auto", parameters: Mapping[str, Any] | None = None,
                 ensemble: int = 16, seed: int = 0, level: float = 0.9, warmup: int = 30,
                 delta_level: float = 0.98, delta_trend: float = 0.9999, anomaly_discount_power: float = 3.0,
                 season_gain: float = 0.1, scale_gain: float = 0.01, search_rows: int = 4096,
                 min_scale: Any = 0.0, relative_min_scale: Any = 0.0, independent: bool = False) -> None:
        if int(columns) < 1:
            raise InvalidInputError(f"columns must be at least 1; got {columns!r}")
        if not 0.0 < float(level) < 1.0:
            raise InvalidInputError(f"level must lie strictly between 0 and 1 (for example 0.9); got {level!r}")
        for name, value in (("delta_level", delta_level), ("delta_trend", delta_trend)):
            if not 0.0 < float(value) <= 1.0:
                raise InvalidInputError(f"{name} must lie in (0, 1]; got {value!r}")
        if int(warmup) < 2:
            raise InvalidInputError(f"warmup must be at least 2 rows; got {warmup!r}")
        self.columns = int(columns)
        self.level = float(level)
        self.warmup = int(warmup)
        self.delta_level, self.delta_trend = float(delta_level), float(delta_trend)
        self.anomaly_discount_power = float(anomaly_discount_power)
        self.season_gain, self.scale_gain = float(season_gain), float(scale_gain)
        self.search_rows = int(search_rows)
        self.min_scale = np.broadcast_to(np.asarray(min_scale, dtype=np.float64), (self.columns,)).copy()
        self.relative_min_scale = np.broadcast_to(np.asarray(relative_min_scale, dtype=np.float64),
                                                  (self.columns,)).copy()
        if (self.min_scale < 0).any() or (self.relative_min_scale < 0).any():
            raise InvalidInputError("min_scale and relative_min_scale must be non-negative")
        self.independent = bool(independent)
        self.parameters = _check_parameters(prior_parameters(ensemble, seed) if parameters is None else parameters)
        self._auto = isinstance(periods, str)
        if self._auto and periods != "auto":
            raise InvalidInputError(f"periods must be 'auto' or a list of row counts; got {periods!r}")
        self._set_log_parameters()
        self.reset()
        if not self._auto:
            self.set_periods(periods)

    def _set_log_parameters(self) -> None:
        p = self.parameters
        self._log = {
            "switch_in": np.log(p["switch_in"]), "stay_typical": np.log1p(-p["switch_in"]),
            "stay": np.log(p["stay"]), "leave": np.log1p(-p["stay"]), "kappa": np.log(p["kappa"]),
            # One column (or each column its own chain): an anomalous row is an anomalous column.
            "share": p["share"].copy() if self.columns > 1 and not self.independent else np.ones_like(p["share"]),
            "not_share": 1.0 - p["share"] if self.columns > 1 and not self.independent else np.zeros_like(p["share"]),
        }

    def reset(self) -> None:
        """Forget every row seen (periods and parameters are kept unless they were found from data)."""
        c = self.columns
        draws = self.parameters["switch_in"].size
        self.rows = 0
        self.count = np.zeros(c, np.int64)
        self.level_state = np.zeros(c)
        self.trend = np.zeros(c)
        self.cov = np.zeros((c, 3))
        self.scale2 = np.ones(c)
        self.warm_mean = np.zeros(c)
        self.warm_m2 = np.zeros(c)
        self.last_anomaly = np.zeros(c)
        chains = self.columns if self.independent else 1
        self.log_alpha = np.tile(np.log(np.array([1.0 - 1e-3, 1e-3])), (chains, draws, 1))
        self.skipped = np.zeros(c, np.int64)
        self.floor = self.min_scale.copy()
        if self._auto:
            self.period = np.zeros((c, 1), np.int64)
            self.offset = np.zeros((c, 1), np.int64)
            self.season = np.zeros((c, 1))
            self._buffer: np.ndarray | None = np.full((self.search_rows, c), np.nan) if self.search_rows > 0 else None
        elif hasattr(self, "period"):
            self.season[:] = 0.0

    @property
    def periods(self) -> list[list[int]]:
        """The seasonal periods of each column (empty lists before an automatic search)."""
        return [[int(p) for p in row if p > 0] for row in self.period]

    def set_periods(self, periods: Any, initial: Sequence[Any] | None = None) -> None:
        """Use these seasonal periods from now on (profiles start at zero or at ``initial``).

        Examples
        --------
        >>> model = SeriesModel(2, periods=())
        >>> model.set_periods([[24], [24, 168]])
        >>> model.periods
        [[24], [24, 168]]
        """
        per_column = _per_column_periods(periods, self.columns)
        width = max([len(row) for row in per_column] + [1])
        self.period = np.zeros((self.columns, width), np.int64)
        self.offset = np.zeros((self.columns, width), np.int64)
        total = max([sum(row) for row in per_column] + [1])
        self.season = np.zeros((self.columns, total))
        for c, row in enumerate(per_column):
            start = 0
            for k, p in enumerate(row):
                self.period[c, k], self.offset[c, k] = p, start
                if initial is not None and initial[c] is not None and k < len(initial[c]):
                    self.season[c, start:start + p] = initial[c][k]
                start += p
        self._auto = False
        self._buffer = None

    def add_columns(self, count: int, *, min_scale: float = 0.0, relative_min_scale: float = 0.0) -> None:
        """Append ``count`` fresh columns (new series), each warming up from its first value.

        Only a model without seasonality or with its periods fixed can grow;
        a joint model's regime chain is shared, so new columns join it.

        Examples
        --------
        >>> bank = SeriesModel(1, periods=(), independent=True, warmup=3)
        >>> bank.add_columns(2, min_scale=0.5)
        >>> bank.columns, bank.floor.tolist()
        (3, [0.0, 0.5, 0.5])
        """
        count = int(count)
        if count < 1:
            raise InvalidInputError(f"add_columns needs a count of at least 1; got {count!r}")
        if self._auto:
            raise InvalidInputError("a model still searching for its periods cannot grow; give periods")

        def grow(array: np.ndarray, fill: Any) -> np.ndarray:
            extra = np.full((count,) + array.shape[1:], fill, dtype=array.dtype)
            return np.concatenate([array, extra])

        self.count = grow(self.count, 0)
        self.level_state, self.trend = grow(self.level_state, 0.0), grow(self.trend, 0.0)
        self.cov, self.scale2 = grow(self.cov, 0.0), grow(self.scale2, 1.0)
        self.warm_mean, self.warm_m2 = grow(self.warm_mean, 0.0), grow(self.warm_m2, 0.0)
        self.last_anomaly, self.skipped = grow(self.last_anomaly, 0.0), grow(self.skipped, 0)
        self.min_scale = grow(self.min_scale, float(min_scale))
        self.relative_min_scale = grow(self.relative_min_scale, float(relative_min_scale))
        self.floor = grow(self.floor, float(min_scale))
        self.period, self.offset, self.season = grow(self.period, 0), grow(self.offset, 0), grow(self.season, 0.0)
        if self.independent:
            start = np.log(np.array([1.0 - 1e-3, 1e-3]))
            self.log_alpha = np.concatenate([self.log_alpha, np.tile(start, (count, self.log_alpha.shape[1], 1))])
        self.columns += count
        self._set_log_parameters()

    def set_resolution(self, values: Any) -> None:
        """Floor each column's noise scale at half its resolution, the smallest step between its values.

        A metric reported in steps of 0.01 cannot be known better than that:
        without the floor, a column that stays on one value for a while learns
        a scale near zero, and its next step of one unit reads as an anomaly.

        Examples
        --------
        >>> model = SeriesModel(2, periods=())
        >>> model.set_resolution([[0.51, 3.0], [0.52, 3.0], [0.54, 5.0]])
        >>> np.round(model.floor, 6).tolist()
        [0.005, 1.0]
        """
        block = np.asarray(values, dtype=np.float64).reshape(-1, self.columns)
        for c in range(self.columns):
            distinct = np.unique(block[np.isfinite(block[:, c]), c])
            steps = np.diff(distinct)
            # Steps below float rounding of the values are not a resolution.
            steps = steps[steps > 1e-9 * max(1.0, float(np.abs(distinct).max(initial=0.0)))]
            if steps.size:
                self.floor[c] = max(self.min_scale[c], 0.5 * float(steps.min()))

    def score(self, values: Any) -> SeriesScores:
        """Score a block of rows in order and learn from them; each row's score uses no later row.

        Parameters
        ----------
        values : array_like, shape (rows,) or (rows, columns)
            Non-finite cells are skipped (counted in :attr:`skipped`) and
            never change the state.

        Returns
        -------
        SeriesScores

        Examples
        --------
        >>> model = SeriesModel(periods=(), warmup=5)
        >>> scores = model.score([1.0, 1.1, 0.9, 1.0, 1.05, 1.0, float("nan"), 0.95])
        >>> np.isnan(scores.probability).tolist()
        [True, True, True, True, True, False, True, False]
        >>> model.skipped.tolist()
        [1]
        """
        block = np.asarray(values, dtype=np.float64)
        if block.ndim == 1 and self.columns == 1:
            block = block[:, None]
        if block.ndim != 2 or block.shape[1] != self.columns:
            raise InvalidInputError(f"values must have shape (rows, {self.columns}); got {np.shape(values)}")
        block = np.ascontiguousarray(block)
        rows = block.shape[0]
        out = (np.empty(rows), np.empty(rows), np.empty(rows), np.empty((rows, self.columns)),
               np.empty((rows, self.columns)))
        self.skipped += (~np.isfinite(block)).sum(axis=0)
        start = 0
        while start < rows:
            stop = rows
            if self._auto and self._buffer is not None:
                stop = min(rows, start + self.search_rows - self.rows)
            self._run(block[start:stop], [array[start:stop] for array in out])
            start = stop
            if self._auto and self._buffer is not None and self.rows >= self.search_rows:
                self._search()
        return SeriesScores(*out)

    def update(self, *values: float) -> tuple[float, float, float]:
        """Score one row (one value per column); return ``(probability, lower, upper)``.

        Examples
        --------
        >>> model = SeriesModel(periods=(), warmup=3)
        >>> [model.update(v) for v in (1.0, 1.0, 1.1)][-1][0] != model.update(1.0)[0]
        True
        """
        scores = self.score(np.array([values], dtype=np.float64))
        return float(scores.probability[0]), float(scores.lower[0]), float(scores.upper[0])

    def _run(self, block: np.ndarray, out: list[np.ndarray]) -> None:
        if block.shape[0] == 0:
            return
        if self._auto and self._buffer is not None:
            self._buffer[self.rows:self.rows + block.shape[0]] = block
        log = self._log
        tail = (1.0 - self.level) / 2.0
        _kernel()(block, self.rows, self.count, self.level_state, self.trend, self.cov, self.scale2,
                  self.warm_mean, self.warm_m2, self.last_anomaly, self.season, self.period, self.offset,
                  self.log_alpha, log["switch_in"], log["stay_typical"], log["stay"], log["leave"], log["kappa"],
                  log["share"], log["not_share"], DEFAULT_DF, self.delta_level, self.delta_trend,
                  self.anomaly_discount_power, self.season_gain, self.scale_gain, self.warmup,
                  self.floor, self.relative_min_scale, tail, *out, self.independent)
        self.rows += block.shape[0]
        if self._auto and self._buffer is not None:
            # Until the periods are known, a seasonal swing reads as an anomaly: these rows are warm-up.
            for array in out:
                array[:] = np.nan

    def _search(self) -> None:
        buffer = self._buffer
        assert buffer is not None
        found = [find_periods(buffer[:, c]) for c in range(self.columns)]
        self.set_resolution(buffer)
        initial = []
        for c, periods in enumerate(found):
            profiles = _phase_profiles(buffer[:, c], periods)
            initial.append(profiles)
            if periods:
                # Restart the column's level and scale from the deseasonalised buffer.
                x = buffer[:, c].copy()
                phases = np.arange(x.size)
                for p, profile in zip(periods, profiles, strict=True):
                    x -= profile[phases % p]
                finite = x[np.isfinite(x)]
                recent = x[-max(periods):]
                recent = recent[np.isfinite(recent)]
                if finite.size > self.warmup and recent.size:
                    self.level_state[c] = float(np.mean(recent))
                    self.trend[c] = 0.0
                    spread = float(np.median(np.abs(finite - np.median(finite)))) * 1.4826
                    floor = self.floor[c] + self.relative_min_scale[c] * abs(self.level_state[c])
                    self.scale2[c] = max(spread * spread, floor * floor, 1e-300)
                    self.cov[c] = (self.scale2[c] / self.warmup, 0.0, self.scale2[c] / self.warmup ** 3)
        self.set_periods(found, initial)
        self.log_alpha[:] = np.log(np.array([1.0 - 1e-3, 1e-3]))
        self.last_anomaly[:] = 0.0

    def state_dict(self) -> dict[str, Any]:
        """The model's state as plain data (floats, ints and lists), for checkpoints.

        Examples
        --------
        >>> a = SeriesModel(periods=[4], warmup=3)
        >>> _ = a.score(np.sin(np.arange(50.0)))
        >>> b = SeriesModel(periods=[4], warmup=3)
        >>> b.load_state_dict(a.state_dict())
        >>> a.update(0.3) == b.update(0.3)
        True
        """
        arrays = ("count", "level_state", "trend", "cov", "scale2", "warm_mean", "warm_m2", "last_anomaly",
                  "log_alpha", "skipped", "period", "offset", "season", "floor")
        state: dict[str, Any] = {name: getattr(self, name).tolist() for name in arrays}
        state["rows"] = int(self.rows)
        state["auto"] = bool(self._auto)
        state["buffer"] = None if self._buffer is None else self._buffer[: self.rows].tolist()
        state["parameters"] = {name: value.tolist() for name, value in self.parameters.items()}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` (validated: shapes must match this model)."""
        try:
            parameters = _check_parameters(state["parameters"])
            arrays = {name: np.asarray(state[name], dtype=np.int64 if name in ("count", "skipped", "period", "offset")
                                       else np.float64)
                      for name in ("count", "level_state", "trend", "cov", "scale2", "warm_mean", "warm_m2",
                                   "last_anomaly", "log_alpha", "skipped", "period", "offset", "season", "floor")}
            rows = int(state["rows"])
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidInputError(f"not a SeriesModel state: {error}") from None
        chains = self.columns if self.independent else 1
        if arrays["count"].shape != (self.columns,) or arrays["log_alpha"].shape != (chains, parameters["stay"].size, 2):
            raise InvalidInputError(f"state is for {arrays['count'].shape[0]} columns and regime chains of shape "
                                    f"{arrays['log_alpha'].shape}; this model has {self.columns} columns and "
                                    f"{'one chain per column' if self.independent else 'one joint chain'}")
        self.parameters = parameters
        self._set_log_parameters()
        for name, value in arrays.items():
            setattr(self, name, value.copy())
        self.rows = rows
        self._auto = bool(state.get("auto", False))
        buffer = state.get("buffer")
        if self._auto and buffer is not None:
            self._buffer = np.full((self.search_rows, self.columns), np.nan)
            kept = np.asarray(buffer, dtype=np.float64).reshape(-1, self.columns)
            self._buffer[: kept.shape[0]] = kept
        else:
            self._buffer = None


def _per_column_periods(periods: Any, columns: int) -> list[list[int]]:
    items = list(periods)
    if items and all(isinstance(item, (list, tuple)) for item in items):
        if len(items) != columns:
            raise InvalidInputError(f"periods per column: expected {columns} lists, got {len(items)}")
        rows = [list(item) for item in items]
    else:
        rows = [items] * columns
    out = []
    for row in rows:
        checked = []
        for p in row:
            if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 2:
                raise InvalidInputError(f"a seasonal period is a row count of at least 2; got {p!r}")
            checked.append(int(p))
        out.append(checked)
    return out


def _phase_profiles(values: np.ndarray, periods: Sequence[int]) -> list[np.ndarray]:
    """Phase means of the buffer, one zero-mean profile per period, each fitted to what the earlier leave."""
    x = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(x)
    residual = np.where(finite, x - (x[finite].mean() if finite.any() else 0.0), 0.0)
    phases = np.arange(x.size)
    profiles = []
    for p in periods:
        index = phases % p
        counts = np.bincount(index[finite], minlength=p)
        means = np.bincount(index[finite], residual[finite], p) / np.maximum(counts, 1)
        means -= means.mean()
        profiles.append(means)
        residual = residual - means[index]
    return profiles


def episodes(probability: Any, *, cutoff: float = 0.5, rearm: int = 10) -> list[tuple[int, int]]:
    """Anomaly episodes: ``(first, last)`` rows of each run at or above ``cutoff``, as alerts would open them.

    An episode opens at a row whose probability reaches ``cutoff`` and
    closes at its last such row once ``rearm`` rows in a row have stayed
    below (the defender's alerts re-arm the same way), so a probability that
    dips for a row or two as the model takes in a change does not open a
    second episode. ``rearm=0`` gives the plain runs. Unscored rows (``nan``)
    count as below.

    Examples
    --------
    >>> episodes([0.1, 0.7, 0.9, 0.2, float("nan"), 0.6], rearm=0)
    [(1, 2), (5, 5)]
    >>> episodes([0.1, 0.7, 0.9, 0.2, float("nan"), 0.6], rearm=3)
    [(1, 5)]
    """
    flags = np.asarray(probability, dtype=np.float64) >= cutoff
    out: list[tuple[int, int]] = []
    start = last = None
    for i, flag in enumerate(flags):
        if flag:
            if start is not None and i - last - 1 >= max(int(rearm), 1):
                out.append((start, last))
                start = None
            if start is None:
                start = i
            last = i
    if start is not None:
        out.append((start, last))
    return out


def regime_forward_brute_force(log_ratio: Any, switch_in: float, stay: float, initial: float = 1e-3) -> np.ndarray:
    """Filtered anomaly probabilities by summing over every regime path (the oracle for the filter).

    Parameters
    ----------
    log_ratio : array_like, shape (rows,)
        Log emission ratio anomalous / typical of each row.
    switch_in, stay : float
        Regime transition probabilities.
    initial : float
        Anomaly probability before the first row.

    Returns
    -------
    ndarray, shape (rows,)
        ``P(r_t = 1 | rows 1..t)`` for each ``t``; exponential in the number of rows.

    Examples
    --------
    >>> regime_forward_brute_force([0.0], 0.5, 0.5, initial=0.5).tolist()
    [0.5]
    """
    import itertools

    ratio = np.asarray(log_ratio, dtype=np.float64)
    transition = np.array([[1 - switch_in, switch_in], [1 - stay, stay]])
    start = np.array([1 - initial, initial])
    out = np.empty(ratio.size)
    for t in range(ratio.size):
        mass = np.zeros(2)
        for path in itertools.product((0, 1), repeat=t + 1):
            weight = start @ transition[:, path[0]]
            for i in range(1, t + 1):
                weight *= transition[path[i - 1], path[i]]
            for i, state in enumerate(path):
                weight *= math.exp(ratio[i]) if state else 1.0
            mass[path[-1]] += weight
        out[t] = mass[1] / mass.sum()
    return out


def fit_series(values: Any, *, periods: Any = "auto", steps: int = 600, draws: int = 16, seed: int = 0,
               learning_rate: float = 0.03, **options: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Learn the regime parameters from a normal-operation table by SVI; return draws and diagnostics.

    The rows are filtered once at the prior mean of the parameters, which
    gives each cell's standardised residual ``z``; the regime chain's
    likelihood of those residuals (the forward pass, in parallel over time)
    is then maximised in expectation under a multivariate normal guide over
    the unconstrained parameters (Pyro SVI). The posterior draws feed
    :class:`SeriesModel` (``parameters=``). Diagnostics: the final ELBO and
    its rise over the last tenth of the steps against the noise of the
    stochastic ELBO (``elbo_noise``, three standard errors; the check of
    :func:`bayes_defense.fitting.diagnostics.loss_trend`), and the Pareto ``k`` of the
    importance weights of guide draws (ArviZ ``psislw``; above 0.7 the guide
    is a poor fit to the posterior, Yao et al. 2018).

    Parameters
    ----------
    values : array_like, shape (rows,) or (rows, columns)
    periods : "auto" or list
        As for :class:`SeriesModel`; ``"auto"`` searches the whole table.
    steps, draws, seed, learning_rate
        SVI steps, posterior draws returned, seed, Adam step size.
    **options
        Passed to :class:`SeriesModel` (``warmup``, discounts, ...).

    Returns
    -------
    (dict of ndarray, dict)
        Posterior draws of :data:`PARAMETER_NAMES` and a diagnostics
        dictionary (``elbo``, ``elbo_change``, ``pareto_k``, ``periods``,
        ``ok``).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> draws, diagnostics = fit_series(rng.normal(size=(400, 2)), periods=(), steps=50, draws=4)
    >>> draws["stay"].shape, sorted(diagnostics)[:3]
    ((4,), ['elbo', 'elbo_change', 'elbo_noise'])
    """
    import torch

    # The chain's tensors are small: one thread avoids the cost of coordinating several (large on a busy machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit_series(values, periods, steps, draws, seed, learning_rate, options)
    finally:
        torch.set_num_threads(threads)


def _fit_series(values: Any, periods: Any, steps: int, draws: int, seed: int, learning_rate: float,
                options: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    import pyro
    import pyro.distributions as dist
    import torch
    from pyro.infer.autoguide import init_to_median

    from bayes_defense.fitting.diagnostics import loss_trend
    from bayes_defense.fitting.svi import svi_multivariate_normal

    block = np.asarray(values, dtype=np.float64)
    if block.ndim == 1:
        block = block[:, None]
    columns = block.shape[1]
    if periods == "auto":
        periods = [find_periods(block[:, c]) for c in range(columns)]
    model = SeriesModel(columns, periods=periods, parameters=prior_mean_parameters(), **options)
    if any(model.periods):
        model.set_periods(model.periods, [_phase_profiles(block[:, c], p) for c, p in enumerate(model.periods)])
    model.set_resolution(block)
    residuals = model.score(block).zscore
    residuals = residuals[np.isfinite(residuals).any(axis=1)]
    present = torch.as_tensor(np.isfinite(residuals), dtype=torch.float64)
    z = torch.as_tensor(np.where(np.isfinite(residuals), residuals, 0.0), dtype=torch.float64)
    if z.shape[0] < 2:
        raise InvalidInputError(f"training needs more than the warm-up ({model.warmup} rows) of finite values")
    half = 0.5 * (DEFAULT_DF + 1.0)
    base = -half * torch.log1p(z * z / DEFAULT_DF)

    def priors() -> dict[str, Any]:
        out = {}
        for name in PARAMETER_NAMES:
            if name == "share" and columns == 1:
                continue
            family, a, b = PRIORS[name]
            prior = dist.Beta(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)) \
                if family == "beta" else dist.LogNormal(torch.tensor(a, dtype=torch.float64),
                                                        torch.tensor(b, dtype=torch.float64))
            out[name] = pyro.sample(name, prior)
        return out

    def log_likelihood(p: dict[str, Any]) -> Any:
        log_kappa = torch.log(p["kappa"])
        zk = z / p["kappa"]
        ratio = -half * torch.log1p(zk * zk / DEFAULT_DF) - log_kappa - base
        if columns > 1:
            share = p["share"]
            per_cell = torch.logaddexp(torch.log1p(-share).expand_as(ratio), torch.log(share) + ratio)
        else:
            per_cell = ratio
        emission = (per_cell * present).sum(-1)
        return _chain_log_likelihood(emission, p["switch_in"], p["stay"])

    def pyro_model() -> None:
        p = priors()
        pyro.factor("regime_chain", log_likelihood(p))

    pyro.clear_param_store()
    torch.manual_seed(seed)
    # The package's SVI runner: a multivariate normal guide, the step size decaying tenfold over the run
    # (the posterior of thousands of rows is narrow, and the guide must settle on it).
    guide, losses = svi_multivariate_normal(pyro_model, init_to_median, num_steps=int(steps),
                                            learning_rate=learning_rate, show=False, desc="fit series")
    with torch.no_grad():
        samples = [guide() for _ in range(int(draws))]
        log_weights = []
        for _ in range(200):
            trace_q = pyro.poutine.trace(guide).get_trace()
            conditioned = pyro.poutine.trace(pyro.poutine.replay(pyro_model, trace=trace_q)).get_trace()
            log_weights.append(float(conditioned.log_prob_sum() - trace_q.log_prob_sum()))
    pareto_k = _pareto_k(np.array(log_weights))
    out = {}
    for name in PARAMETER_NAMES:
        if name == "share" and columns == 1:
            out[name] = np.full(int(draws), _prior_mean(name))
        else:
            out[name] = np.array([float(sample[name]) for sample in samples[: int(draws)]])
    # Settled: the loss of the last tenth of the steps no longer falls below the tenth before
    # (fitting.diagnostics.loss_trend: by three standard errors and a thousandth of the loss).
    trend = loss_trend(losses)
    diagnostics = {"elbo": -trend["last"], "elbo_change": trend["previous"] - trend["last"],
                   "elbo_noise": 3.0 * trend["se"], "pareto_k": pareto_k, "periods": model.periods,
                   "rows": int(z.shape[0]),
                   "ok": bool(pareto_k < 0.7 and not trend["still_falling"])}
    return out, diagnostics


def trained_model(values: Any, *, periods: Any = "auto", steps: int = 600, draws: int = 16, seed: int = 0,
                  level: float = 0.9, **options: Any) -> tuple[SeriesModel, SeriesScores, dict[str, Any]]:
    """A model fitted to a normal-operation table and then run over it, ready to score what follows.

    :func:`fit_series` learns the regime parameters; the model, with the
    periods found in ``values`` and seasonal profiles started from their
    phase means, then filters ``values`` so that its state is warm.

    Returns
    -------
    (SeriesModel, SeriesScores, dict)
        The warm model, its scores of ``values`` (for choosing a threshold on
        normal operation) and the fit's diagnostics.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> model, scores, diagnostics = trained_model(rng.normal(size=300), periods=(), steps=30, draws=4)
    >>> model.rows, bool(np.isfinite(model.update(0.1)[0]))
    (300, True)
    """
    block = np.asarray(values, dtype=np.float64)
    if block.ndim == 1:
        block = block[:, None]
    parameters, diagnostics = fit_series(block, periods=periods, steps=steps, draws=draws, seed=seed, **options)
    found = diagnostics["periods"]
    model = SeriesModel(block.shape[1], periods=found, parameters=parameters, level=level, **options)
    model.set_periods(found, [_phase_profiles(block[:, c], p) for c, p in enumerate(found)])
    model.set_resolution(block)
    return model, model.score(block), diagnostics


def _prior_mean(name: str) -> float:
    family, a, b = PRIORS[name]
    return a / (a + b) if family == "beta" else math.exp(a + 0.5 * b * b)


def _pareto_k(log_weights: np.ndarray) -> float:
    import warnings

    import arviz

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, k = arviz.psislw(log_weights - log_weights.max())
    return float(k)


def _chain_log_likelihood(emission: Any, switch_in: Any, stay: Any) -> Any:
    """Log likelihood of the two-state regime chain, by pairwise products of 2x2 log matrices (log time)."""
    import torch

    log_transition = torch.stack([
        torch.stack([torch.log1p(-switch_in), torch.log(switch_in)]),
        torch.stack([torch.log1p(-stay), torch.log(stay)]),
    ])
    rows = emission.shape[0]
    emissions = torch.stack([torch.zeros_like(emission), emission], dim=-1)  # (rows, 2)
    matrices = log_transition.expand(rows, 2, 2) + emissions[:, None, :]
    while matrices.shape[0] > 1:
        if matrices.shape[0] % 2:
            last = matrices[-1:]
            matrices = matrices[:-1]
        else:
            last = None
        left, right = matrices[0::2], matrices[1::2]
        # The 2x2 log-space product written out: torch's logsumexp over a size-2 axis is far slower.
        matrices = torch.logaddexp(left[:, :, 0, None] + right[:, None, 0, :], left[:, :, 1, None] + right[:, None, 1, :])
        if last is not None:
            matrices = torch.cat([matrices, last])
    start = torch.log(torch.tensor([1.0 - 1e-3, 1e-3], dtype=emission.dtype))
    return torch.logsumexp(start[:, None] + matrices[0], dim=(0, 1))

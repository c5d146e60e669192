"""The compiled per-block kernel of :class:`bayes_defense.stream.series.SeriesModel`.

The model it computes is written down in :mod:`bayes_defense.stream.series`;
this module holds only the loop over rows, compiled by numba (cached on disk),
so that an edit to the model's Python shell does not force a recompilation.
"""

import math

import numpy as np
from numba import njit

__all__ = ["kernel"]


@njit(cache=True, fastmath=False, nogil=True)
def log_add(a: float, b: float) -> float:
    """log(exp(a) + exp(b)), exact at -inf."""
    if a == -np.inf:
        return b
    if b == -np.inf:
        return a
    if a > b:
        return a + math.log1p(math.exp(b - a))
    return b + math.log1p(math.exp(a - b))


@njit(cache=True, nogil=True)
def forward(alpha, log_stay_typical, log_leave, log_switch_in, log_stay, emission):
    """One step of the two-state regime filter in place on ``alpha`` (log); return P(anomalous)."""
    a0 = alpha[0]
    a1 = alpha[1]
    n0 = log_add(a0 + log_stay_typical, a1 + log_leave)
    n1 = log_add(a0 + log_switch_in, a1 + log_stay) + emission
    norm = log_add(n0, n1)
    alpha[0] = n0 - norm
    alpha[1] = n1 - norm
    return math.exp(n1 - norm)


@njit(cache=True, nogil=True)
def band(prob_draw, sorted_draw, tail):
    """Mean of the draws' probabilities and its quantile interval (linear interpolation, as numpy's)."""
    draws = prob_draw.shape[0]
    mean = 0.0
    for e in range(draws):
        mean += prob_draw[e]
        sorted_draw[e] = prob_draw[e]
    mean = min(max(mean / draws, 0.0), 1.0)
    sorted_draw.sort()
    position = tail * (draws - 1)
    i = int(math.floor(position))
    j = min(i + 1, draws - 1)
    low = sorted_draw[i] + (position - i) * (sorted_draw[j] - sorted_draw[i])
    position = (1.0 - tail) * (draws - 1)
    i = int(math.floor(position))
    j = min(i + 1, draws - 1)
    high = sorted_draw[i] + (position - i) * (sorted_draw[j] - sorted_draw[i])
    return mean, min(max(low, 0.0), mean), max(min(high, 1.0), mean)


@njit(cache=True, nogil=True)
def kernel(values, row0, count, level, trend, cov, scale2, wmean, wm2, last_anomaly,
           season, period, offset, log_alpha, log_switch_in, log_stay_typical, log_stay, log_leave,
           log_kappa, share, not_share, df, delta_level, delta_trend, anomaly_power,
           season_gain, scale_gain, warmup, floor_abs, floor_rel, tail, prob, lower, upper,
           column_probability, zscore, independent):
    """Filter a block of rows in place: update the state arrays, write the outputs (see series.py)."""
    rows, columns = values.shape
    draws = log_alpha.shape[1]
    periods = period.shape[1]
    # Per cell and draw: share * (anomalous / typical likelihood), and the cell's emission term
    # not_share + that (linear space: one exp and one log per cell and draw).
    weighted = np.empty((columns, draws))
    term = np.empty((columns, draws))
    inverse_kappa = np.exp(-log_kappa)
    warm = np.zeros(columns, np.bool_)
    resid = np.zeros(columns)
    forecast_level = np.zeros(columns)
    forecast_trend = np.zeros(columns)
    r00 = np.zeros(columns)
    r01 = np.zeros(columns)
    r11 = np.zeros(columns)
    qvar = np.zeros(columns)
    seasonal = np.zeros(columns)
    zs = np.zeros(columns)
    prob_draw = np.empty(draws)
    sorted_draw = np.empty(draws)
    anomaly_mean = np.zeros(columns)
    half = 0.5 * (df + 1.0)
    for t in range(rows):
        row = row0 + t
        evidence = 0
        for c in range(columns):
            warm[c] = False
            zscore[t, c] = np.nan
            column_probability[t, c] = np.nan
            y = values[t, c]
            if not math.isfinite(y):
                continue
            s = 0.0
            for k in range(periods):
                p = period[c, k]
                if p > 0:
                    s += season[c, offset[c, k] + row % p]
            seasonal[c] = s
            if count[c] < warmup:
                # Welford mean and variance of the deseasonalised values.
                x = y - s
                count[c] += 1
                d = x - wmean[c]
                wmean[c] += d / count[c]
                wm2[c] += d * (x - wmean[c])
                if count[c] == warmup:
                    floor = floor_abs[c] + floor_rel[c] * abs(wmean[c])
                    var = wm2[c] / max(warmup - 1, 1)
                    scale2[c] = max(var, floor * floor, 1e-300)
                    level[c] = wmean[c]
                    trend[c] = 0.0
                    cov[c, 0] = scale2[c] / warmup
                    cov[c, 1] = 0.0
                    cov[c, 2] = scale2[c] / (warmup * warmup * warmup)
                continue
            a = last_anomaly[c]
            power = 1.0 + a * (anomaly_power - 1.0)
            dl = delta_level ** power
            # While anomalous, the trend loses certainty as fast as the level does.
            dt = delta_trend * delta_level ** (power - 1.0)
            p00, p01, p11 = cov[c, 0], cov[c, 1], cov[c, 2]
            g00 = p00 + 2.0 * p01 + p11
            g01 = p01 + p11
            r00[c] = g00 / dl
            r01[c] = g01 / math.sqrt(dl * dt)
            r11[c] = p11 / dt
            forecast_level[c] = level[c] + trend[c]
            forecast_trend[c] = trend[c]
            q = r00[c] + scale2[c]
            qvar[c] = q
            r = y - forecast_level[c] - s
            resid[c] = r
            z = r / math.sqrt(q)
            zs[c] = z
            zscore[t, c] = z
            warm[c] = True
            evidence += 1
            base = -half * math.log1p(z * z / df)
            for e in range(draws):
                zk = z * inverse_kappa[e]
                ratio = -half * math.log1p(zk * zk / df) - log_kappa[e] - base
                weighted[c, e] = share[e] * math.exp(min(ratio, 700.0))
                term[c, e] = not_share[e] + weighted[c, e]
        if independent:
            # One chain per column (a bank of univariate models): a skipped cell leaves its chain as it was.
            best = -1.0
            for c in range(columns):
                if not warm[c]:
                    continue
                for e in range(draws):
                    prob_draw[e] = forward(log_alpha[c, e], log_stay_typical[e], log_leave[e], log_switch_in[e],
                                           log_stay[e], math.log(term[c, e]))
                mean, low, high = band(prob_draw, sorted_draw, tail)
                anomaly_mean[c] = mean
                column_probability[t, c] = mean
                if mean > best:
                    best = mean
                    prob[t], lower[t], upper[t] = mean, low, high
            if evidence == 0:
                prob[t] = np.nan
                lower[t] = np.nan
                upper[t] = np.nan
                continue
        else:
            for e in range(draws):
                emission = 0.0
                for c in range(columns):
                    if warm[c]:
                        emission += math.log(term[c, e])
                prob_draw[e] = forward(log_alpha[0, e], log_stay_typical[e], log_leave[e], log_switch_in[e],
                                       log_stay[e], emission)
            if evidence == 0:
                prob[t] = np.nan
                lower[t] = np.nan
                upper[t] = np.nan
                continue
            prob[t], lower[t], upper[t] = band(prob_draw, sorted_draw, tail)
            for c in range(columns):
                if not warm[c]:
                    continue
                total = 0.0
                for e in range(draws):
                    responsibility = weighted[c, e] / term[c, e]
                    total += prob_draw[e] * responsibility
                anomaly_mean[c] = min(max(total / draws, 0.0), 1.0)
                column_probability[t, c] = anomaly_mean[c]
        for c in range(columns):
            if not warm[c]:
                continue
            w = 1.0 - anomaly_mean[c]
            z = zs[c]
            u = (df + 1.0) / (df + z * z)
            r = resid[c]
            if w * u > 1e-12:
                obs = scale2[c] / (w * u)
                denominator = r00[c] + obs
                k0 = r00[c] / denominator
                k1 = r01[c] / denominator
                level[c] = forecast_level[c] + k0 * r
                trend[c] = forecast_trend[c] + k1 * r
                cov[c, 0] = r00[c] - k0 * k0 * denominator
                cov[c, 1] = r01[c] - k0 * k1 * denominator
                cov[c, 2] = r11[c] - k1 * k1 * denominator
                after = values[t, c] - level[c] - seasonal[c]
                gain = season_gain * w * min(u, 1.0)
                for k in range(periods):
                    p = period[c, k]
                    if p > 0:
                        season[c, offset[c, k] + row % p] += gain * after
                target = u * r * r * scale2[c] / qvar[c]
                scale2[c] += scale_gain * w * (target - scale2[c])
                floor = floor_abs[c] + floor_rel[c] * abs(level[c])
                scale2[c] = max(scale2[c], floor * floor, 1e-300)
            else:
                level[c] = forecast_level[c]
                trend[c] = forecast_trend[c]
                cov[c, 0] = r00[c]
                cov[c, 1] = r01[c]
                cov[c, 2] = r11[c]
            last_anomaly[c] = anomaly_mean[c]

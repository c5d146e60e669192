"""Convergence diagnostics shared by every fitted model: thresholds, checks, warning, summary.

The thresholds follow Vehtari et al. (2021): split r_hat below 1.01 and at
least 100 effective draws (bulk and tail) per parameter. SVI draws are
independent by construction, so for SVI the loss trend is judged instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["RHAT_MAX", "ESS_MIN", "FitDiagnosticsWarning", "convergence_problems", "diagnostics_summary",
           "loss_trend"]

#: Largest split r_hat a converged parameter may show.
RHAT_MAX = 1.01
#: Fewest effective draws (bulk and tail) a converged parameter may show.
ESS_MIN = 100.0


class FitDiagnosticsWarning(UserWarning):
    """A fit's convergence diagnostics failed: its posterior may be wrong.

    Raised (as a warning) by :func:`bayes_defense.fit` when r_hat or the
    effective sample size of some parameter is out of bounds, NUTS diverged,
    or the SVI loss was still falling; the posterior then has
    ``diagnostics_ok`` set to False and ``problems`` lists what failed.
    """


def convergence_problems(method: str, table, num_draws: int, sample_stats: Mapping[str, Any],
                         trend: Mapping[str, Any] | None) -> list[str]:
    """The failed convergence checks of a fit, one readable line each (empty when all pass).

    NUTS: split r_hat below :data:`RHAT_MAX`, bulk and tail ESS at least
    :data:`ESS_MIN` for every parameter of ``table`` (an ``az.summary``
    frame), no divergent transitions. SVI: the loss no longer falling over the
    last tenth of the steps (``trend``, see :func:`loss_trend`).

    Examples
    --------
    >>> import pandas as pd
    >>> table = pd.DataFrame({"r_hat": [1.0, 1.2], "ess_bulk": [400.0, 50.0], "ess_tail": [400.0, 300.0]},
    ...                      index=["a", "b"])
    >>> convergence_problems("nuts", table, 500, {}, None)
    ['r_hat >= 1.01 for 1 parameter(s), e.g. b', 'ess_bulk < 100 for 1 parameter(s), e.g. b']
    """
    problems = []
    if method != "nuts":
        # Guide draws are independent by construction: r_hat and ESS are
        # reported but say nothing about convergence; the loss trend does.
        table = table.iloc[:0]
    rhat = table["r_hat"].to_numpy(dtype=float)
    bad = table.index[~(rhat < RHAT_MAX)]
    if len(bad) and num_draws >= 4:
        problems.append(f"r_hat >= {RHAT_MAX} for {len(bad)} parameter(s), e.g. {', '.join(map(str, bad[:3]))}")
    for column in ("ess_bulk", "ess_tail"):
        low = table.index[~(table[column].to_numpy(dtype=float) >= ESS_MIN)]
        if len(low):
            problems.append(f"{column} < {ESS_MIN:g} for {len(low)} parameter(s), e.g. {', '.join(map(str, low[:3]))}")
    if "diverging" in sample_stats and np.asarray(sample_stats["diverging"]).any():
        problems.append(f"{int(np.asarray(sample_stats['diverging']).sum())} divergent NUTS transition(s)")
    if trend is not None and trend.get("still_falling"):
        problems.append(f"the SVI loss was still falling at the end (last-tenth mean {trend['last']:.4g} vs "
                        f"{trend['previous']:.4g} before, standard error {trend['se']:.3g}); "
                        f"raise num_steps (--steps on the command line)")
    return problems


def loss_trend(losses: np.ndarray) -> dict[str, Any]:
    """Whether an SVI loss was still falling: the last tenth of the steps against the tenth before.

    Falling by more than 3 standard errors and by more than 0.1% of the loss
    counts as not converged.

    Examples
    --------
    >>> loss_trend(np.linspace(100.0, 10.0, 1000))["still_falling"]
    True
    >>> loss_trend(np.full(1000, 10.0) + np.random.default_rng(0).normal(size=1000))["still_falling"]
    False
    """
    losses = np.asarray(losses, dtype=float)
    tenth = max(len(losses) // 10, 1)
    last, previous = losses[-tenth:], losses[-2 * tenth:-tenth]
    if len(previous) < 2 or len(last) < 2:
        return {"last": float(losses[-1]) if len(losses) else math.nan, "previous": math.nan, "se": math.nan,
                "still_falling": False}
    se = math.sqrt(last.var(ddof=1) / len(last) + previous.var(ddof=1) / len(previous))
    drop = previous.mean() - last.mean()
    return {"last": float(last.mean()), "previous": float(previous.mean()), "se": float(se),
            "still_falling": bool(drop > 3 * se and drop > 1e-3 * abs(last.mean()))}


def diagnostics_summary(posterior) -> dict[str, Any]:
    """The diagnostics part of a posterior's JSON summary: worst r_hat and ESS, verdict, problems, seconds.

    ``posterior`` is any fitted posterior of the package (it has
    ``diagnostics``, ``diagnostics_ok``, ``problems`` and ``info``). Missing
    figures are ``None`` rather than NaN, so the summary is strict JSON.
    """
    table = posterior.diagnostics

    def worst(column: str, reduce) -> float | None:
        values = table[column].to_numpy(dtype=float) if column in table else np.zeros(0)
        values = values[np.isfinite(values)]
        return float(reduce(values)) if values.size else None

    return {
        "r_hat_max": worst("r_hat", np.max),
        "ess_bulk_min": worst("ess_bulk", np.min),
        "ess_tail_min": worst("ess_tail", np.min),
        "diagnostics_ok": posterior.diagnostics_ok,
        "problems": list(posterior.problems),
        "seconds": posterior.info.get("seconds"),
    }

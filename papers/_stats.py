"""Interval helpers shared by the papers/ scripts (one definition for every write-up)."""

from __future__ import annotations

import math
from statistics import NormalDist


def wilson(successes: int, trials: int, level: float = 0.9) -> tuple[float, float, float]:
    """The rate ``successes / trials`` and its Wilson score interval at ``level``, inside [0, 1].

    ``(nan, nan, nan)`` when there are no trials.

    Examples
    --------
    >>> [round(v, 3) for v in wilson(0, 4)]
    [0.0, 0.0, 0.403]
    """
    if trials == 0:
        return math.nan, math.nan, math.nan
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return p, max(0.0, centre - half), min(1.0, centre + half)

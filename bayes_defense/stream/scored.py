"""The hand-scored streaming defender, kept as the named baseline ``scored``.

One score per attack from hand-set telemetry rules, then a three-phase
filter per attack with a parameter ensemble: the defender of earlier
releases (:class:`bayes_defense.stream.defender.StreamingDefender` today).
The model filter (:class:`bayes_defense.stream.model_filter.ModelDefender`)
is compared against it in ``papers/evaluate_defender.py``.

Examples
--------
>>> from bayes_defense.stream.scored import ScoredDefender
>>> ScoredDefender(planner=None).windows
0
"""

from __future__ import annotations

from bayes_defense.stream.defender import StreamingDefender as ScoredDefender

__all__ = ["ScoredDefender"]

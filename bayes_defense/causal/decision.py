"""Choosing among a user's actions on any SCM: expected risk under each action, its cost, the Pareto front.

``bd.plan(model, evidence, actions, risk=..., cost=...)`` on a model other
than the cluster model lands here. Each action is an intervention
``{site: value}``. With evidence, the exogenous state of the system is
abducted from it and each action is applied to that same state (a
counterfactual: what the risk would be, in these circumstances, had the
action been taken); without evidence it is the interventional expectation.
Loss = risk + ``cost_weight`` * cost. With a fitted SCM the risk is computed
per parameter draw and its interval is the spread across draws (as every
query of :mod:`bayes_defense.causal` does).
"""

from __future__ import annotations

from collections.abc import Mapping

from bayes_defense.causal.structure import model_info
from bayes_defense.errors import InvalidInputError

__all__ = ["plan_actions", "NO_ACTION"]

#: Name of the option that intervenes on nothing, scored with the others.
NO_ACTION = "(nothing)"


def plan_actions(model, evidence: dict | None, actions: Mapping, *, risk, cost: Mapping | None = None,
                 cost_weight: float = 1.0, level: float = 0.9, backend: str = "auto", num_samples: int = 10_000,
                 seed: int | None = 0):
    """Rank user actions on an SCM by expected loss; return a :class:`bayes_defense.planning.Plan`.

    Parameters
    ----------
    model : callable
        A Pyro SCM (or a fitted one, ``posterior.model()``).
    evidence : dict or None
        ``{site: value}`` observed now.
    actions : dict
        ``{name: {site: value}}``: each an intervention. Doing nothing is
        scored too, as ``"(nothing)"``, unless an action of that name is given.
    risk : str, dict or callable
        What is bad: a site name (its expected value), a ``{site: value}``
        event (its probability) or a callable on ``{site: tensor}``.
    cost : dict, optional
        ``{name: cost}`` of each action (default 0).
    cost_weight : float
        Weight of cost against risk in the loss.
    level, backend, num_samples, seed
        As for :func:`bayes_defense.counterfactual`.

    Returns
    -------
    Plan
        ``ranked`` (by loss), ``pareto`` (risk against cost), ``robust``
        (smallest upper risk bound) and ``best``; ``steps`` is the best action.

    Examples
    --------
    >>> import pyro, pyro.distributions as dist
    >>> import bayes_defense as bd
    >>> def service():
    ...     overload = pyro.sample("overload", dist.Bernoulli(0.2))
    ...     cache = pyro.sample("cache", dist.Bernoulli(0.9))
    ...     pyro.sample("outage", dist.Bernoulli(0.02 + 0.6 * overload * (1 - 0.5 * cache)))
    >>> result = bd.plan(service, {"overload": 1}, {"shed_load": {"overload": 0}, "warm_cache": {"cache": 1}},
    ...                  risk={"outage": 1}, cost={"shed_load": 0.1, "warm_cache": 0.01})
    >>> result.best.countermeasures
    ('shed_load',)
    """
    from bayes_defense.causal.queries import counterfactual, intervene
    from bayes_defense.planning import Option, Plan

    info = model_info(model)
    evidence = info.check_names(evidence, "evidence")
    if not isinstance(actions, Mapping) or not actions:
        raise InvalidInputError(f"actions must be a non-empty {{name: {{site: value}}}} dict; got {actions!r}")
    options = dict(actions)
    for name, do in options.items():
        if not isinstance(name, str):
            raise InvalidInputError(f"action names must be strings; got {name!r}")
        info.check_names(do, f"action {name!r}")
    options.setdefault(NO_ACTION, {})
    cost = dict(cost or {})
    unknown = [name for name in cost if name not in options]
    if unknown:
        raise InvalidInputError(f"cost names {', '.join(map(repr, unknown))}, which are not actions; actions: "
                                f"{', '.join(options)}")
    for name, value in cost.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
            raise InvalidInputError(f"cost of {name!r} must be a number; got {value!r}")
    if risk is None:
        raise InvalidInputError("risk is required: a site name, a {site: value} event or a callable on "
                                "{site: tensor} saying what is bad")
    query = {"backend": backend, "num_samples": num_samples, "level": level, "seed": seed}
    scored = []
    for name, do in options.items():
        if evidence:
            estimate = counterfactual(model, evidence, dict(do), risk, **query)
        else:
            estimate = intervene(model, dict(do), risk, **query)
        c = float(cost.get(name, 0.0))
        weighted = cost_weight * c
        scored.append(Option((name,) if name != NO_ACTION else (), estimate.mean, estimate.lower, estimate.upper,
                             c, estimate.mean + weighted, estimate.lower + weighted, estimate.upper + weighted,
                             {"risk": estimate}))
    ranked = sorted(scored, key=lambda o: (o.loss, o.cost))
    pareto = [o for o in scored if not any((p.risk <= o.risk and p.cost <= o.cost)
                                           and (p.risk < o.risk or p.cost < o.cost) for p in scored)]
    pareto.sort(key=lambda o: o.cost)
    robust = min(scored, key=lambda o: (o.risk_upper, o.cost))
    settings = {"actions": dict(actions), "risk": risk, "cost": cost, "cost_weight": cost_weight, "level": level}
    best = ranked[0]
    return Plan(ranked, pareto, robust, list(best.countermeasures), [best.loss], 1, evidence, settings, model)

"""Countermeasure selection: expected loss with intervals, Pareto fronts, robust choices, multi-step plans.

Semantics. The attack state now (which attacks are executing, from which
replica) is inferred from all the evidence; a countermeasure set is then
applied for the next window and acts on execution and success there. Risk is
the expected damage of the attacks that succeed in that window
(``sum_A damage_A * P(A.success | do(c), evidence)``, damages from the
catalogue, a safety violation = 1); cost is the countermeasure's loss to
legitimate users (throughput lost plus latency over its budget); expected
loss = risk + ``cost_weight`` * cost. Exact answers have zero-width
intervals; for a model with posterior draws of its parameters the risk is
computed per draw and its interval is the spread across draws.

The attack state (attacker, executing attacks) is inferred once from the
evidence, with the deployed controls in place; every candidate set is then
scored by applying its success tables to that state, so ranking all sets
costs one exact pass. With no evidence on success or outcome sites this is
exactly ``P(A.success | do(controls), evidence)``.

A multi-step plan applies one more countermeasure at each of up to three
steps of the horizon; defences stay in place once applied; its loss is the
sum over the horizon's steps. Call :meth:`Plan.replan` (or :func:`plan`
again) with new evidence to re-evaluate.

On any other SCM, ``bd.plan(model, evidence, actions, risk=..., cost=...)``
chooses among the user's actions (:func:`plan_actions`). Each action is an
intervention ``{site: value}``. With evidence, the exogenous state of the
system is abducted from it and each action is applied to that same state (a
counterfactual: what the risk would be, in these circumstances, had the
action been taken); without evidence it is the interventional expectation.
Loss = risk + ``cost_weight`` * cost. With a fitted SCM the risk is computed
per parameter draw and its interval is the spread across draws (as every
query of :mod:`bayes_defense.causal` does).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from bayes_defense.causal.structure import model_info
from bayes_defense.errors import InvalidInputError
from bayes_defense.models import tables
from bayes_defense.models.catalogue import COUNTERMEASURES
from bayes_defense.models.queries import countermeasure_do

__all__ = ["plan", "plan_actions", "NO_ACTION", "Option", "Plan"]


@dataclass(frozen=True)
class Option:
    """One countermeasure set evaluated: risk, cost and loss, with bounds."""

    countermeasures: tuple
    risk: float
    risk_lower: float
    risk_upper: float
    cost: float
    loss: float
    loss_lower: float
    loss_upper: float
    success: dict = field(compare=False, repr=False)

    def as_dict(self) -> dict:
        """JSON-ready dictionary."""
        return {"countermeasures": list(self.countermeasures), "risk": self.risk, "risk_lower": self.risk_lower,
                "risk_upper": self.risk_upper, "cost": self.cost, "loss": self.loss,
                "loss_lower": self.loss_lower, "loss_upper": self.loss_upper,
                "success": {a: p.as_dict() for a, p in self.success.items()}}

    def __str__(self) -> str:
        name = " + ".join(self.countermeasures) or "(nothing)"
        return (f"{name:<40} loss {self.loss:.4f} [{self.loss_lower:.4f}, {self.loss_upper:.4f}]  "
                f"risk {self.risk:.4f}  cost {self.cost:.4f}")


@dataclass
class Plan:
    """The answer of :func:`plan`.

    Attributes
    ----------
    ranked : list of Option
        Single countermeasures (and doing nothing), by expected loss.
    pareto : list of Option
        Options no other beats on both risk and cost, by cost.
    robust : Option
        The option with the smallest upper bound of risk.
    steps : list of str
        The best multi-step sequence (up to ``max_steps`` countermeasures).
    step_losses : list of float
        Expected loss at each step of the horizon under ``steps``.
    """

    ranked: list
    pareto: list
    robust: Option
    steps: list
    step_losses: list
    horizon: int
    evidence: dict
    settings: dict = field(repr=False)
    model: object = field(repr=False, default=None)

    @property
    def best(self) -> Option:
        """The option with the smallest expected loss."""
        return self.ranked[0]

    def replan(self, new_evidence: dict) -> Plan:
        """Plan again with ``new_evidence`` added to the evidence."""
        return plan(self.model, {**self.evidence, **new_evidence}, **self.settings)

    def as_dict(self) -> dict:
        """JSON-ready dictionary."""
        return {"ranked": [o.as_dict() for o in self.ranked], "pareto": [o.as_dict() for o in self.pareto],
                "robust": self.robust.as_dict(), "steps": list(self.steps), "step_losses": list(self.step_losses),
                "horizon": self.horizon}

    def __str__(self) -> str:
        lines = ["Countermeasures by expected loss:"]
        lines += [f"  {o}" for o in self.ranked]
        lines.append("Pareto front (risk vs cost): " + "; ".join(" + ".join(o.countermeasures) or "(nothing)"
                                                                  for o in self.pareto))
        lines.append(f"Robust choice (smallest upper risk bound): {' + '.join(self.robust.countermeasures) or '(nothing)'}")
        lines.append(f"Plan over {self.horizon} steps: {' -> '.join(self.steps) or '(nothing)'} "
                     f"(losses per step {', '.join(f'{x:.4f}' for x in self.step_losses)})")
        return "\n".join(lines)


def plan(model, evidence: dict | None = None, actions: dict | None = None, *, risk=None, cost: dict | None = None,
         countermeasures=None, deployed=(), cost_weight: float = 1.0, horizon: int = 3, max_steps: int = 3,
         target: int | None = None, level: float = 0.9) -> Plan:
    """Rank countermeasures by expected loss, find the Pareto front, the robust choice and a multi-step plan.

    Parameters
    ----------
    model : ClusterModel or callable
        An indicator-mode model from :func:`bayes_defense.models.cluster`;
        any other Pyro SCM is planned for by
        :func:`plan_actions` with ``actions``,
        ``risk`` and ``cost`` (the cluster-only options then do not apply).
    evidence : dict, optional
        Telemetry and other observations.
    actions : dict, optional
        For an SCM other than the cluster model: ``{name: {site: value}}``.
    risk : str, dict or callable, optional
        For an SCM other than the cluster model: what is bad (a site's mean,
        an event's probability, or a callable).
    cost : dict, optional
        For an SCM other than the cluster model: ``{action name: cost}``.
    countermeasures : list of str, optional
        Candidates (default all of :data:`~bayes_defense.models.COUNTERMEASURES`).
    deployed : list of str
        Countermeasures already in place; the others are known to be off.
    cost_weight : float
        Weight of the cost to legitimate users against the risk.
    horizon : int
        Steps over which a multi-step plan is scored.
    max_steps : int
        At most this many countermeasures in a multi-step plan (1 to 3).
    target : int, optional
        Replica ``isolate_node`` acts on; default the most probable attacker replica.
    level : float
        Credible level of the intervals.

    Returns
    -------
    Plan

    Examples
    --------
    >>> import bayes_defense as bd
    >>> model = bd.models.cluster(4)
    >>> result = bd.plan(model, {"r0.msg_rate": 1, "r0.mac_fail": 1, "r1.msg_rate": 0})
    >>> result.best.countermeasures
    ('isolate_node',)
    """
    from bayes_defense.models.cluster import ClusterModel

    if not isinstance(model, ClusterModel):
        return plan_actions(model, evidence, actions, risk=risk, cost=cost, cost_weight=cost_weight, level=level)
    from bayes_defense.models.engine import draw_estimate, engine

    candidates = list(COUNTERMEASURES) if countermeasures is None else \
        ([countermeasures] if isinstance(countermeasures, str) else list(countermeasures))
    deployed = tuple([deployed] if isinstance(deployed, str) else deployed)
    countermeasure_do(model, candidates + list(deployed))
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or not 1 <= max_steps <= 3:
        raise InvalidInputError(f"max_steps must be 1, 2 or 3; got {max_steps!r}")
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise InvalidInputError(f"horizon must be a positive number of steps; got {horizon!r}")
    if getattr(model, "telemetry", None) != "indicators":
        raise InvalidInputError("plan needs an indicator-mode cluster model (bd.models.cluster(n), "
                                "telemetry='indicators')")
    evidence = dict(evidence or {})
    settings = {"countermeasures": countermeasures, "deployed": deployed, "cost_weight": cost_weight,
                "horizon": horizon, "max_steps": max_steps, "target": target, "level": level}
    eng = engine(model)
    if target is None:
        target = _most_suspected(model, evidence)
    elif isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < model.n_nodes:
        raise InvalidInputError(f"target must be a replica index from 0 to {model.n_nodes - 1}; got {target!r}")
    # The controls are known configuration: deployed ones on, the rest off.
    known = {c.site: 0.0 for c in COUNTERMEASURES.values()}
    known.update(countermeasure_do(model, deployed, target))
    past = {k: v for k, v in evidence.items() if k not in known}
    table, weights = eng.executing_table(past, known, target + 1)       # (z, attack, hit)

    pool = [c for c in candidates if c not in deployed]
    sets = [()] + [tuple(s) for length in range(1, min(max_steps, len(pool)) + 1)
                   for s in itertools.combinations(sorted(pool), length)]
    # Control bits of each set (deployed ones included) and whether it isolates the target.
    bits = np.zeros((len(sets), len(tables.EFFICACY_SLOTS)))
    for row, chosen in enumerate(sets):
        for name in (*deployed, *chosen):
            bits[row, tables.EFFICACY_SLOTS[tables.control_key(name)]] = 1.0
    hit = np.array([0.0, 1.0])
    control = np.broadcast_to(bits[:, None, :], (len(sets), 2, bits.shape[1])).copy()
    control[:, :, tables.EFFICACY_SLOTS[tables.ISOLATION]] *= hit[None, :]
    # keep[set, z, attack, hit] = P(success | executing) in the next window.
    keep = np.moveaxis(model.parameter_tables.keep(control), 2, 0)
    success = (keep * table[None]).sum(-1)                              # (set, z, attack)
    damage = np.asarray(model.structure.damage)
    risk_draws = success @ damage                                       # (set, z)
    cost = np.array([sum(COUNTERMEASURES[c].cost for c in chosen) for chosen in sets])
    risk = risk_draws @ weights
    loss = risk + cost_weight * cost
    index = {frozenset(chosen): row for row, chosen in enumerate(sets)}

    def option(chosen) -> Option:
        row = index[frozenset(chosen)]
        estimate = _risk_estimate(risk_draws[row], weights, level, damage.sum(), float(risk[row]))
        probabilities = {a: draw_estimate(success[row, :, i], weights, level=level)
                         for i, a in enumerate(model.structure.attack_names)}
        c = cost[row] * cost_weight
        return Option(tuple(chosen), float(risk[row]), estimate[0], estimate[1], float(cost[row]),
                      float(loss[row]), estimate[0] + c, estimate[1] + c, probabilities)

    options = [option(())] + [option((c,)) for c in pool]
    ranked = sorted(options, key=lambda o: (o.loss, o.cost))
    pareto = [o for o in options if not any((p.risk <= o.risk and p.cost <= o.cost)
                                            and (p.risk < o.risk or p.cost < o.cost) for p in options)]
    pareto.sort(key=lambda o: o.cost)
    robust = min(options, key=lambda o: (o.risk_upper, o.cost))
    best_steps, best_losses, best_total = [], [], None
    for length in range(0, min(max_steps, len(pool)) + 1):
        for sequence in itertools.permutations(pool, length):
            losses = [float(loss[index[frozenset(sequence[:min(step + 1, length)])]]) for step in range(horizon)]
            total = sum(losses)
            if best_total is None or total < best_total - 1e-12:
                best_steps, best_losses, best_total = list(sequence), losses, total
    return Plan(ranked, pareto, robust, best_steps, best_losses, horizon, evidence, settings, model)


def _risk_estimate(draws, weights, level, top, mean) -> tuple[float, float]:
    """Bounds of the expected damage across parameter draws (equal to the mean for one draw)."""
    from bayes_defense.models.engine import draw_estimate

    if len(draws) == 1:
        return mean, mean
    scaled = draw_estimate(np.asarray(draws) / top, weights, level=level)
    return min(float(scaled.lower) * top, mean), max(float(scaled.upper) * top, mean)


def _most_suspected(model, evidence) -> int:
    if getattr(model, "telemetry", None) != "indicators":
        return 0
    from bayes_defense.models.engine import engine

    posterior = engine(model).marginals(["attacker"], evidence=evidence)["attacker"]
    return int(np.asarray(posterior)[1:].argmax())


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

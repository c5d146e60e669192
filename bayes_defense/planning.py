"""Countermeasure selection: expected loss with intervals, Pareto fronts, robust choices, multi-step plans.

Semantics. The attack state now (which attacks are executing, from which
replica) is inferred from all the evidence; a countermeasure set is then
applied for the next window and acts on execution and success there. Risk is
the expected damage of the attacks that succeed in that window
(``sum_A damage_A * P(A.success | do(c), evidence)``, damages from the
catalogue, a safety violation = 1); cost is the countermeasure's loss to
legitimate users (throughput lost plus latency over its budget); expected
loss = risk + ``cost_weight`` * cost. Interval bounds of the risk are
propagated (sums of lower and of upper bounds); exact answers have zero width.

A multi-step plan applies one more countermeasure at each of up to three
steps of the horizon; defences stay in place once applied; its loss is the
sum over the horizon's steps. Call :meth:`Plan.replan` (or :func:`plan`
again) with new evidence to re-evaluate.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from bayes_defense.errors import InvalidInputError
from bayes_defense.models.catalogue import ATTACKS, COUNTERMEASURES
from bayes_defense.models.queries import countermeasure_do

__all__ = ["plan", "Option", "Plan"]


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


def plan(model, evidence: dict | None = None, *, countermeasures=None, deployed=(), cost_weight: float = 1.0,
         horizon: int = 3, max_steps: int = 3, target: int | None = None) -> Plan:
    """Rank countermeasures by expected loss, find the Pareto front, the robust choice and a multi-step plan.

    Parameters
    ----------
    model : ClusterModel
        From :func:`bayes_defense.models.cluster`.
    evidence : dict, optional
        Telemetry and other observations.
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
    candidates = list(COUNTERMEASURES) if countermeasures is None else list(countermeasures)
    countermeasure_do(model, candidates + list(deployed))
    if not 1 <= int(max_steps) <= 3:
        raise InvalidInputError(f"max_steps must be 1, 2 or 3; got {max_steps!r}")
    if int(horizon) < 1:
        raise InvalidInputError(f"horizon must be a positive number of steps; got {horizon!r}")
    evidence = dict(evidence or {})
    settings = {"countermeasures": countermeasures, "deployed": tuple(deployed), "cost_weight": cost_weight,
                "horizon": horizon, "max_steps": max_steps, "target": target}
    if target is None:
        target = _most_suspected(model, evidence)
    # The controls are known configuration: deployed ones on, the rest off.
    known = {c.site: 0.0 for c in COUNTERMEASURES.values()}
    known.update(countermeasure_do(model, deployed, target))
    cache: dict = {}

    def evaluate(chosen) -> Option:
        key = frozenset(chosen)
        if key not in cache:
            do = {**known, **countermeasure_do(model, sorted(key), target)}
            success = _next_window_success(model, evidence, do)
            risk = sum(ATTACKS[a].damage * p.mean for a, p in success.items())
            low = sum(ATTACKS[a].damage * p.lower for a, p in success.items())
            high = sum(ATTACKS[a].damage * p.upper for a, p in success.items())
            cost = sum(COUNTERMEASURES[c].cost for c in key)
            cache[key] = Option(tuple(sorted(key)), risk, low, high, cost, risk + cost_weight * cost,
                                low + cost_weight * cost, high + cost_weight * cost, success)
        option = cache[key]
        return Option(tuple(chosen), *[getattr(option, f) for f in
                                       ("risk", "risk_lower", "risk_upper", "cost", "loss", "loss_lower",
                                        "loss_upper", "success")])

    options = [evaluate(())] + [evaluate((c,)) for c in candidates if c not in deployed]
    ranked = sorted(options, key=lambda o: (o.loss, o.cost))
    pareto = [o for o in options if not any((p.risk <= o.risk and p.cost <= o.cost)
                                            and (p.risk < o.risk or p.cost < o.cost) for p in options)]
    pareto.sort(key=lambda o: o.cost)
    robust = min(options, key=lambda o: (o.risk_upper, o.cost))
    best_steps, best_losses, best_total = [], [ranked[0].loss] * 0, None
    pool = [c for c in candidates if c not in deployed]
    for length in range(0, min(max_steps, len(pool)) + 1):
        for sequence in itertools.permutations(pool, length):
            losses = [evaluate(sequence[:min(step + 1, length)]).loss for step in range(int(horizon))]
            total = sum(losses)
            if best_total is None or total < best_total - 1e-12:
                best_steps, best_losses, best_total = list(sequence), losses, total
    return Plan(ranked, pareto, robust, best_steps, best_losses, int(horizon), evidence, settings, model)


def _most_suspected(model, evidence) -> int:
    if getattr(model, "telemetry", None) != "indicators":
        return 0
    from bayes_defense.models.engine import engine

    posterior = engine(model).marginals(["attacker"], evidence=evidence)["attacker"]
    return int(posterior[1:].argmax())


def _next_window_success(model, evidence, do) -> dict:
    """P(A.success) in the next window: the attack state from the evidence, the controls from ``do``.

    The controls are roots and the attack state lies upstream of them only
    through the success sites; evidence on outcomes informs the attack state,
    so success is re-drawn with fresh noise in the next window instead of
    intervening on an observed past.
    """
    return _success_under(model, evidence, do)


def _success_under(model, evidence, do) -> dict:
    from bayes_defense.estimate import exact_estimate
    from bayes_defense.models.engine import engine

    eng = engine(model)
    base = {k: v for k, v in evidence.items() if k not in do and not k.endswith(".success")
            and k not in model.outcome_sites}
    out = {}
    if len(base) == len(evidence):
        sites = [f"{attack}.success" for attack in ATTACKS]
        marginals = eng.marginals(sites, do=do, evidence=base)
        return {a: exact_estimate(marginals[s], is_probability=True, level=0.9, backend="exact")
                for a, s in zip(ATTACKS, sites)}
    for attack in ATTACKS:
        site = f"{attack}.success"
        if True:
            # Outcomes were observed: infer the attack state, then project one window ahead.
            state = eng.joint(["attacker", f"{attack}.executing"], evidence={k: v for k, v in evidence.items()
                                                                             if k not in do})
            value = 0.0
            for a in range(state.shape[0]):
                if state[a, 1] <= 0:
                    continue
                fixed = {**do, "attacker": float(a), f"{attack}.executing": 1.0}
                value += state[a, 1] * eng.marginals([site], do=fixed)[site]
        out[attack] = exact_estimate(value, is_probability=True, level=0.9, backend="exact")
    return out

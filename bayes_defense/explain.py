"""Ranked causal explanations of alerts and incidents.

Candidate causes are each attack's execution, precursor and precondition, and
each replica as the attacker's point of presence. A candidate ``C`` is scored
by the probability that it happened *and* was necessary for the outcome,
``P(C | evidence, outcome) * PN(C)``, where the probability of necessity
``PN = P(outcome would not hold had C been false | C, outcome, evidence)``
(Pearl 2009, 9.2) uses the package's monotone counterfactual coupling; the
probability of sufficiency ``PS`` is reported beside it. Exact answers carry
zero-width intervals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bayes_defense.errors import InvalidInputError
from bayes_defense.estimate import exact_estimate
from bayes_defense.models.catalogue import ATTACKS

__all__ = ["explain", "Explanation", "Cause"]

_KIND_ORDER = {"attack": 0, "precursor": 1, "precondition": 2, "node": 3}


@dataclass(frozen=True)
class Cause:
    """One candidate cause with its scores (Probability estimates)."""

    name: str
    kind: str
    attack: str | None
    site: str
    posterior: object
    necessity: object
    sufficiency: object
    score: object

    def as_dict(self) -> dict:
        """JSON-ready dictionary."""
        return {"name": self.name, "kind": self.kind, "attack": self.attack, "site": self.site,
                **{k: getattr(self, k).as_dict() for k in ("posterior", "necessity", "sufficiency", "score")}}


@dataclass
class Explanation:
    """Ranked causes of an outcome; ``.text`` reads them out."""

    outcome: dict
    causes: list
    evidence: dict = field(repr=False)

    @property
    def top_attack(self) -> str | None:
        """The attack named by the highest-ranked attack-level cause."""
        return next((c.attack for c in self.causes if c.attack is not None), None)

    @property
    def text(self) -> str:
        outcome = ", ".join(f"{k}={v:g}" for k, v in self.outcome.items())
        lines = [f"Why {outcome}? Causes by P(cause and necessary):"]
        for i, c in enumerate(self.causes[:10], 1):
            lines.append(f"  {i}. {c.name} ({c.kind}): {c.score.mean:.3f}; P(cause | evidence) "
                         f"{c.posterior.mean:.3f}, necessity {c.necessity.mean:.3f}, "
                         f"sufficiency {c.sufficiency.mean:.3f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text

    def as_dict(self) -> dict:
        """JSON-ready dictionary."""
        return {"outcome": dict(self.outcome), "causes": [c.as_dict() for c in self.causes]}

    def as_dataframe(self):
        """The causes as a pandas DataFrame (means only)."""
        import pandas as pd

        return pd.DataFrame([{"name": c.name, "kind": c.kind, "attack": c.attack, "score": c.score.mean,
                              "posterior": c.posterior.mean, "necessity": c.necessity.mean,
                              "sufficiency": c.sufficiency.mean} for c in self.causes])


def _p(x: float):
    return exact_estimate(min(1.0, max(0.0, float(x))), is_probability=True, level=0.9, backend="exact")


def explain(model, evidence: dict, outcome: dict, *, threshold: float = 1e-3) -> Explanation:
    """Rank the causes of ``outcome`` by the probability that each happened and was necessary.

    Parameters
    ----------
    model : ClusterModel
        An indicator-mode model from :func:`bayes_defense.models.cluster`.
    evidence : dict
        Telemetry and other observations (not the outcome).
    outcome : dict
        ``{site: value}`` that happened, for example ``{"liveness_lost": 1}``.
    threshold : float
        Candidates less probable than this given the evidence are scored by
        their posterior alone (an upper bound of their score) to save time.

    Returns
    -------
    Explanation

    Examples
    --------
    >>> import bayes_defense as bd
    >>> model = bd.models.cluster(4)
    >>> evidence = {"r0.msg_rate": 1, "r0.mac_fail": 1}
    >>> result = bd.explain(model, evidence, {"throughput_low": 1})
    >>> result.top_attack
    'flooding'
    """
    from bayes_defense.models.engine import engine

    if getattr(model, "telemetry", None) != "indicators":
        raise InvalidInputError("explain needs an indicator-mode cluster model (telemetry='indicators')")
    if not isinstance(outcome, dict) or not outcome:
        raise InvalidInputError(f"outcome must be a non-empty {{site: value}} dict; got {outcome!r}")
    eng = engine(model)
    evidence = dict(evidence or {})
    outcome_sites = list(outcome)
    for name in outcome_sites:
        if name not in eng.label:
            raise InvalidInputError(eng.model.unknown_site_message(name, "outcome"))
    target = tuple(int(outcome[s]) for s in outcome_sites)
    factual = {**evidence, **outcome}
    candidates = []
    for attack in ATTACKS:
        candidates += [(f"{attack}.executing", "attack", attack), (f"{attack}.precursor", "precursor", attack),
                       (f"{attack}.precondition", "precondition", attack)]
    posterior = eng.marginals([c[0] for c in candidates] + ["attacker"], evidence=factual)
    causes = []
    for site, kind, attack in candidates:
        p = posterior[site]
        necessity = sufficiency = 0.0
        if p >= threshold:
            necessity, sufficiency = _pn_ps(eng, evidence, site, 1.0, 0.0, outcome_sites, target)
        score = p * necessity if p >= threshold else p
        causes.append(Cause(f"{attack} {kind}" if kind != "attack" else attack, kind, attack, site,
                            _p(p), _p(necessity), _p(sufficiency), _p(score)))
    # Nodes: replica k as the attacker's footing, against no attacker inside (one twin network for all k).
    node_posterior = posterior["attacker"]
    table = eng.counterfactual_joint(evidence, {"attacker": 0.0}, ["attacker", *outcome_sites], outcome_sites)
    k = len(outcome_sites)
    for replica in range(model.n_nodes):
        p = float(node_posterior[replica + 1])
        sub = table[replica + 1]
        holds = sub[target] if k else sub
        joint_yes = float(holds.sum())
        kept = float(holds[target]) if joint_yes > 0 else 0.0
        necessity = 1.0 - kept / joint_yes if joint_yes > 0 else 0.0
        causes.append(Cause(f"r{replica}", "node", None, f"r{replica}.faulty", _p(p), _p(necessity), _p(0.0),
                            _p(p * necessity)))
    causes.sort(key=lambda c: (-round(c.score.mean, 12), _KIND_ORDER[c.kind], -c.sufficiency.mean))
    return Explanation(dict(outcome), causes, evidence)


def _pn_ps(eng, evidence, site, cause, alternative, outcome_sites, target):
    """PN and PS of ``site`` for the outcome event, from two twin networks."""
    k = len(outcome_sites)
    # PN: do(site = alternative); factual (site, outcome), counterfactual outcome.
    table = eng.counterfactual_joint(evidence, {site: alternative}, [site, *outcome_sites], outcome_sites)
    sub = table[int(cause)][target]
    denominator = float(sub.sum())
    necessity = 1.0 - float(sub[target]) / denominator if denominator > 0 else 0.0
    table = eng.counterfactual_joint(evidence, {site: cause}, [site, *outcome_sites], outcome_sites)
    sub = table[int(alternative)]
    mask = np.ones(sub.shape[:k], dtype=bool)
    mask[target] = False
    not_holding = sub[mask]  # rows where the factual outcome did not hold
    denominator = float(not_holding.sum())
    sufficiency = float(not_holding.reshape(-1, *sub.shape[k:])[(slice(None), *target)].sum()) / denominator \
        if denominator > 0 else 0.0
    return necessity, sufficiency

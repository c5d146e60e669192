"""Ranked causal explanations of alerts and incidents.

Candidate causes are each attack's execution, precursor and precondition, and
each replica as the attacker's point of presence. A candidate ``C`` is scored
by the probability that it happened *and* was necessary for the outcome,
``P(C | evidence, outcome) * PN(C)``, where the probability of necessity
``PN = P(outcome would not hold had C been false | C, outcome, evidence)``
(Pearl 2009, 9.2) uses the package's monotone counterfactual coupling; the
probability of sufficiency ``PS`` is reported beside it. Exact answers carry
zero-width intervals; with posterior draws of the parameters the interval is
the spread across draws.

How it is computed. One exact pass of the cluster engine gives, for every
attack, the product of the other attacks' factors (leave one out) under each
subset of the outcome's noisy-OR terms. Each candidate's twin network only
changes its own attack's chain: intervening to switch it off makes that
attack's counterfactual success 0; switching it on from an observed "off"
draws that success afresh (its factual noise is unconstrained). So PN and PS
of all 24 attack-level candidates are small sums over that one pass. The
replica candidates (attacker = k against no attacker inside) take one twin
pass for all replicas together.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from bayes_defense._callable import make_module_callable
from bayes_defense.errors import ImpossibleEvidenceError, InvalidInputError

__all__ = ["explain", "Explanation", "Cause"]

# Indicators of "level = X" for the levels executing, precursor, precondition of one attack's chain:
# axes (level, X, z, pre, P, E, S, controls, cut pairs).
_LEVEL_MASKS = np.zeros((3, 2, 1, 2, 2, 2, 1, 1, 1))
_LEVEL_MASKS[0, :, 0] = np.eye(2)[:, None, None, :, None, None, None]
_LEVEL_MASKS[1, :, 0] = np.eye(2)[:, None, :, None, None, None, None]
_LEVEL_MASKS[2, :, 0] = np.eye(2)[:, :, None, None, None, None, None]

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


def explain(model, evidence: dict, outcome: dict, *, threshold: float = 0.0, level: float = 0.9) -> Explanation:
    """Rank the causes of ``outcome`` by the probability that each happened and was necessary.

    Parameters
    ----------
    model : ClusterModel
        An indicator-mode model from :func:`bayes_defense.models.cluster`.
    evidence : dict
        Telemetry and other observations (not the outcome).
    outcome : dict
        ``{site: value}`` of cluster outcomes that happened, for example
        ``{"liveness_lost": 1}``.
    threshold : float
        Candidates less probable than this given the evidence are scored by
        their posterior alone (an upper bound of their score); 0 scores all.
    level : float
        Credible level of the intervals.

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
    from bayes_defense.models.engine import (
        ATTACK_NAMES,
        OUTCOME_NAMES,
        draw_estimate,
        engine,
        fast_probability,
    )

    if getattr(model, "telemetry", None) != "indicators":
        raise InvalidInputError("explain needs an indicator-mode cluster model (telemetry='indicators')")
    if not isinstance(outcome, dict) or not outcome:
        raise InvalidInputError(f"outcome must be a non-empty {{site: value}} dict; got {outcome!r}")
    eng = engine(model)
    for name, value in outcome.items():
        if name not in OUTCOME_NAMES:
            raise InvalidInputError(f"outcome names {name!r}; explain explains cluster outcomes: "
                                    f"{', '.join(OUTCOME_NAMES)}")
        if float(value) not in (0.0, 1.0):
            raise InvalidInputError(f"outcome {name}={value!r}: outcomes take 0 or 1")
    target = {name: int(float(value)) for name, value in outcome.items()}
    evidence = {k: v for k, v in dict(evidence or {}).items() if k not in target}
    parsed = eng._split(evidence)
    cluster = parsed[0]

    # Terms: the evidence's own outcome expansion times every subset K of the target outcomes.
    evidence_terms = eng._outcome_terms(cluster, {})
    names = sorted(target)
    subsets = [frozenset(c) for r in range(len(names) + 1) for c in itertools.combinations(names, r)]
    z = eng.draws
    terms, layout = [], []
    for c_e, kinds in evidence_terms:
        for subset in subsets:
            c_t = np.ones(z)
            for o in names:
                q = 1.0 - eng.outcome_baseline[:, OUTCOME_NAMES.index(o)]
                if o in subset:
                    c_t = c_t * (-q if target[o] else q)
                elif not target[o]:
                    c_t = c_t * 0.0
            terms.append((np.broadcast_to(c_e, (z,)) * c_t, {**kinds, **{o: "f" for o in subset}}))
            layout.append((np.broadcast_to(c_e, (z,)), kinds, subset))
    base = eng.run(evidence=parsed, terms=terms, outputs=("loo", "attacker", "cae", "precursors"))
    total = base.total
    if not (total > 0).any():
        raise ImpossibleEvidenceError(f"the evidence and outcome have probability zero under the model: "
                                      f"{evidence}, {outcome}")
    keep = base.outputs["keep"]                                          # (z, 8, k, u)
    coef = base.outputs["coef"]                                          # (t, z)
    loo = base.outputs["loo"]
    zero = fast_probability(0.0, level)

    shared: dict = {}

    def combine(values_by_draw, weights_by_draw):
        if z == 1:
            # Estimates are immutable: replicas with the same evidence share one object per value.
            value = float(values_by_draw[0])
            found = shared.get(value)
            if found is None:
                found = shared[value] = fast_probability(value, level)
            return found
        w = weights_by_draw * np.exp(np.where(np.isfinite(base.scale), base.scale - np.max(base.scale), -np.inf))
        if w.sum() <= 0:
            return draw_estimate(np.zeros(z), np.full(z, 1.0 / z), level=level)
        return draw_estimate(values_by_draw, w / w.sum(), level=level)

    def ratio(num, den):
        if num.shape != den.shape:
            num, den = np.broadcast_arrays(num, den)
        out = np.zeros(num.shape)
        np.divide(num, den, out=out, where=den > 0)
        return out

    causes = []
    draw_weights = _weights(base)
    cae = base.outputs["cae"]
    precursors = base.outputs["precursors"]
    for i, attack in enumerate(ATTACK_NAMES):
        pa, pe = eng.p_attempt[:, i], eng.p_execute[:, i]
        if i not in loo:
            # Its chain reaches no outcome in question: it cannot be necessary or sufficient (PN = PS = 0).
            pre = eng.precondition_indicator(attack, cluster)
            for kind, value in (("attack", precursors[:, i] * pe), ("precursor", precursors[:, i]),
                                ("precondition", cae @ pre)):
                posterior = combine(ratio(value, total), total)
                name = attack if kind == "attack" else f"{attack} {kind}"
                site = f"{attack}.{ {'attack': 'executing'}.get(kind, kind)}"
                causes.append(Cause(name, kind, attack, site, posterior, zero, zero,
                                    posterior if posterior.mean < threshold else zero))
            continue
        kp = keep[:, i]                                                  # (z, k, u)
        one = np.arange(2)
        # Chain joint J[z, pre, P, E, S, k, u] with the evidence on this attack's own sites.
        cp = np.stack([1 - one[:, None] * pa[:, None, None] + 0 * one[None, :, None], one[:, None] * pa[:, None, None]
                       + 0 * one[None, :, None]], -1)[:, :, 0, :]         # (z, pre, P)
        ce = np.stack([1 - one[None, :] * pe[:, None], one[None, :] * pe[:, None]], -1)          # (z, P, E)
        cs = np.stack([1 - one[None, :, None, None] * kp[:, None], one[None, :, None, None] * kp[:, None]], -1)
        chain = cp[:, :, :, None, None, None, None] * ce[:, None, :, :, None, None, None] \
            * np.moveaxis(cs, -1, 2)[:, None, None, :, :, :, :]                                # (z, a, p, e, s, k, u)
        for axis, level_name in ((2, "precursor"), (3, "executing"), (4, "success")):
            site = f"{attack}.{level_name}"
            if site in cluster:
                shape = [1] * chain.ndim
                shape[axis] = 2
                chain = chain * (one == cluster[site]).reshape(shape)
        weights_s = {}
        for t, (_, kinds, subset) in enumerate(layout):
            own = np.ones((z, 2))                                        # evidence outcomes, factual S
            for o in kinds:
                own = own * (1.0 - eng.impact[:, OUTCOME_NAMES.index(o), i][:, None] * one[None, :])
            fact_k = np.ones((z, 2))                                     # target outcomes in K, factual S
            zero_one = np.ones((z, 2))                                   # K outcomes whose value is 0, on S
            w_k = np.ones(z)
            for o in subset:
                w = eng.impact[:, OUTCOME_NAMES.index(o), i]
                fact_k = fact_k * (1.0 - w[:, None] * one[None, :])
                if not target[o]:
                    zero_one = zero_one * (1.0 - w[:, None] * one[None, :])
                w_k = w_k * (1.0 - w)
            weights_s[t] = (own, fact_k, zero_one, w_k)
        D = loo[i]                                                       # (t, z, x, k, u)
        # x = pre * 4 + pre' * 2 + P with pre' = pre in this pass.
        Dap = D[:, :, [0, 1, 6, 7]].reshape(D.shape[0], z, 2, 2, *D.shape[3:])   # (t, z, a, p, k, u)
        # The three levels at once (axis L): executing, precursor, precondition.
        # q: P(counterfactual success) when the level is switched on from an observed "off".
        q = np.stack([kp, pe[:, None, None] * kp, pa[:, None, None] * pe[:, None, None] * kp])   # (L, z, k, u)
        split = (chain[None, None] * _LEVEL_MASKS).sum(5)                     # (L, X, z, a, p, s, k, u)
        on = split[:, 1]                                                     # X = 1: (L, z, a, p, s, k, u)
        off = split[:, 0].sum(4)                                             # X = 0 forces S = 0: (L, z, a, p, k, u)
        num, den, a_ps, b_ps, c_ps, d_ps = (np.zeros((3, z)) for _ in range(6))
        for t, (c_e, _, subset) in enumerate(layout):
            own, fact_k, zero_one, w_k = weights_s[t]
            d_t = Dap[t][None]                                               # (1, z, a, p, k, u)
            on_t = (d_t[:, :, :, :, None] * on).sum((2, 3, 5, 6))           # (L, z, s)
            den += coef[t] * (on_t * (own * fact_k)[None]).sum(2)
            num += coef[t] * (on_t * (own * zero_one)[None]).sum(2)
            zero_target = np.ones(z)
            for o in subset:
                if not target[o]:
                    zero_target = zero_target * (1.0 - eng.impact[:, OUTCOME_NAMES.index(o), i])
            fresh = (1.0 - q) + q * w_k[None, :, None, None]                 # (L, z, k, u)
            fresh_b = (1.0 - q) + q * zero_target[None, :, None, None]
            off_t = (d_t * off).sum((2, 3))                                  # (L, z, k, u)
            a_ps += coef[t] * (off_t * fresh).sum((2, 3))
            b_ps += coef[t] * (off_t * fresh_b).sum((2, 3))
            plain = off_t.sum((2, 3))
            d_ps += coef[t] * plain
            if not subset:
                c_ps += c_e * plain
        for row, (kind, level_name) in enumerate((("attack", "executing"), ("precursor", "precursor"),
                                                    ("precondition", "precondition"))):
            site = f"{attack}.{level_name}"
            posterior = ratio(den[row], total)
            necessity = 1.0 - ratio(num[row], den[row])
            sufficiency = ratio(a_ps[row] - b_ps[row], c_ps[row] - d_ps[row])
            if float(np.dot(posterior, draw_weights)) < threshold:
                necessity = sufficiency = np.zeros(z)
                score = posterior
            else:
                score = ratio(den[row] - num[row], total)
            name = attack if kind == "attack" else f"{attack} {kind}"
            causes.append(Cause(name, kind, attack, site, combine(posterior, total), combine(necessity, den[row]),
                                combine(np.clip(sufficiency, 0, 1), np.maximum(c_ps[row] - d_ps[row], 0)),
                                combine(score, total)))
    # Replicas: attacker = k against no attacker inside, one twin pass for every k.
    with_outcome = ({**cluster, **target}, parsed[1], parsed[2])
    twin = eng.run(evidence=with_outcome, cf={"attacker": 0}, outcome_cf=target, outputs=("attacker",))
    node_den = base.outputs["attacker"]                                  # (z, N): P(a, evidence, outcome)
    node_num = twin.outputs["attacker"]
    # All replicas at once: (z, n) arrays.
    den = node_den[:, 1:]
    posteriors = ratio(den, total[:, None])
    necessities = 1.0 - ratio(node_num[:, 1:], den)
    scores = ratio(den - node_num[:, 1:], total[:, None])
    for replica in range(model.n_nodes):
        causes.append(Cause(f"r{replica}", "node", None, f"r{replica}.faulty",
                            combine(posteriors[:, replica], total), combine(necessities[:, replica], den[:, replica]),
                            zero, combine(scores[:, replica], total)))
    causes.sort(key=lambda c: (-round(c.score.mean, 12), _KIND_ORDER[c.kind], -c.sufficiency.mean))
    return Explanation(dict(outcome), causes, evidence)


def _weights(result) -> np.ndarray:
    try:
        return result.weights()
    except Exception:  # noqa: BLE001 - an impossible outcome is reported by the caller's checks
        return np.full(result.total.shape, 1.0 / result.total.size)


# bd.explain stays callable after ``import bayes_defense.explain`` rebinds it.
make_module_callable(__name__)

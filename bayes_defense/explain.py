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
from bayes_defense.models import tables
from bayes_defense.models.engine import draw_estimate, fast_probability
from bayes_defense.models.tables import OUTCOME_NAMES

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
    model : ClusterModel or callable
        An indicator-mode model from :func:`bayes_defense.models.cluster`,
        or any other Pyro SCM (for example a fitted
        :func:`~bayes_defense.models.from_graph` model), answered by
        :mod:`bayes_defense.causal.attribution`: the result is then an
        :class:`~bayes_defense.causal.attribution.SCMExplanation` with
        ``.ranking`` (cause, Estimate) pairs and ``.top``.
    evidence : dict
        Telemetry and other observations (not the outcome).
    outcome : dict or str
        ``{site: value}`` of outcomes that happened, for example
        ``{"liveness_lost": 1}``; for an SCM other than the cluster model, a
        continuous site's name asks why its observed value is far from typical.
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
    from bayes_defense.models.cluster import ClusterModel

    if not isinstance(model, ClusterModel):
        # Any other SCM: noise attribution for a continuous outcome, necessity for a discrete one.
        from bayes_defense.causal.attribution import attribute, necessity_ranking

        if isinstance(outcome, str):
            return attribute(model, evidence, outcome, level=level)
        return necessity_ranking(model, evidence, outcome, level=level)
    from bayes_defense.models.engine import engine

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
    parsed = eng.split_evidence(evidence)
    terms, layout = _outcome_subset_terms(eng, parsed[0], target)
    base = eng.run(evidence=parsed, terms=terms, outputs=("loo", "attacker", "cae", "precursors"))
    if not (base.total > 0).any():
        raise ImpossibleEvidenceError(f"the evidence and outcome have probability zero under the model: "
                                      f"{evidence}, {outcome}")
    scorer = _Scorer(base, level)
    causes = []
    for i, attack in enumerate(eng.attack_names):
        if i in base.outputs["loo"]:
            causes += _chain_causes(eng, base, scorer, i, attack, parsed[0], target, layout, threshold)
        else:
            causes += _unreached_causes(eng, base, scorer, i, attack, parsed[0], threshold)
    causes += _replica_causes(eng, base, scorer, parsed, target, model.n_nodes)
    causes.sort(key=lambda c: (-round(c.score.mean, 12), _KIND_ORDER[c.kind], -c.sufficiency.mean))
    return Explanation(dict(outcome), causes, evidence)


def _outcome_subset_terms(eng, cluster, target):
    """The evidence's own outcome expansion times every subset K of the target outcomes.

    Returns the terms :meth:`Engine.run <bayes_defense.models.engine.Engine.run>` takes and, per term,
    ``(evidence coefficient, evidence kinds, K)``.
    """
    names = sorted(target)
    subsets = [frozenset(c) for r in range(len(names) + 1) for c in itertools.combinations(names, r)]
    z = eng.draws
    terms, layout = [], []
    for c_e, kinds in eng.outcome_terms(cluster, {}):
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
    return terms, layout


class _Scorer:
    """Per-draw values of one explanation pass into probabilities (weighted across draws)."""

    def __init__(self, base, level):
        self.base, self.level = base, level
        self.z = base.total.size
        self.total = base.total
        self.draw_weights = _weights(base)
        self.zero = fast_probability(0.0, level)
        self._shared: dict = {}

    def combine(self, values_by_draw, weights_by_draw):
        if self.z == 1:
            # Estimates are immutable: replicas with the same evidence share one object per value.
            value = float(values_by_draw[0])
            found = self._shared.get(value)
            if found is None:
                found = self._shared[value] = fast_probability(value, self.level)
            return found
        scale = self.base.scale
        w = weights_by_draw * np.exp(np.where(np.isfinite(scale), scale - np.max(scale), -np.inf))
        if w.sum() <= 0:
            return draw_estimate(np.zeros(self.z), np.full(self.z, 1.0 / self.z), level=self.level)
        return draw_estimate(values_by_draw, w / w.sum(), level=self.level)

    @staticmethod
    def ratio(num, den):
        if num.shape != den.shape:
            num, den = np.broadcast_arrays(num, den)
        out = np.zeros(num.shape)
        np.divide(num, den, out=out, where=den > 0)
        return out


def _cause_name(attack, kind):
    return attack if kind == "attack" else f"{attack} {kind}"


def _unreached_causes(eng, base, scorer, i, attack, cluster, threshold):
    """An attack whose chain reaches no outcome in question: it cannot be necessary or sufficient (PN = PS = 0)."""
    precursors, total = base.outputs["precursors"], base.total
    pre = eng.precondition_indicator(attack, cluster)
    executing = tables.execution_probability(attack, {f"{attack}.p_execute": eng.p_execute[:, i]}.__getitem__,
                                             precursors[:, i])
    out = []
    for kind, value in (("attack", executing), ("precursor", precursors[:, i]),
                        ("precondition", base.outputs["cae"] @ pre)):
        posterior = scorer.combine(scorer.ratio(value, total), total)
        site = f"{attack}.{ {'attack': 'executing'}.get(kind, kind)}"
        out.append(Cause(_cause_name(attack, kind), kind, attack, site, posterior, scorer.zero, scorer.zero,
                         posterior if posterior.mean < threshold else scorer.zero))
    return out


def _bernoulli(p):
    """``[P(x = 0), P(x = 1)]`` along a new last axis."""
    return np.stack([1.0 - p, p], -1)


def _chain_joint(eng, i, attack, keep, cluster):
    """The attack's chain ``J[z, pre, P, E, S, k, u]`` from the model's tables, with evidence on its own sites."""
    value = {f"{attack}.p_attempt": eng.p_attempt[:, i, None], f"{attack}.p_execute": eng.p_execute[:, i, None]}
    one = np.arange(2)
    precursor = _bernoulli(tables.precursor_probability(attack, value.__getitem__, one[None, :]))   # (z, pre, P)
    execution = _bernoulli(tables.execution_probability(attack, value.__getitem__, one[None, :]))   # (z, P, E)
    success = _bernoulli(one[None, :, None, None] * keep[:, None])                                # (z, E, k, u, S)
    chain = precursor[:, :, :, None, None, None, None] * execution[:, None, :, :, None, None, None] \
        * np.moveaxis(success, -1, 2)[:, None, None, :, :, :, :]                                   # (z, a, p, e, s, k, u)
    for axis, level_name in ((2, "precursor"), (3, "executing"), (4, "success")):
        site = f"{attack}.{level_name}"
        if site in cluster:
            shape = [1] * chain.ndim
            shape[axis] = 2
            chain = chain * (one == cluster[site]).reshape(shape)
    return chain


def _outcome_weights(eng, i, target, layout):
    """Per term: this attack's outcome factors on its factual success S (own evidence, K, K's zeros) and K's keep."""
    z = eng.draws
    one = np.arange(2)
    out = []
    for _, kinds, subset in layout:
        own = np.ones((z, 2))                                        # evidence outcomes, factual S
        for o in kinds:
            own = own * (1.0 - eng.impact[:, OUTCOME_NAMES.index(o), i][:, None] * one[None, :])
        fact_k = np.ones((z, 2))                                     # target outcomes in K, factual S
        zero_one = np.ones((z, 2))                                   # K outcomes whose value is 0, on S
        w_k = np.ones(z)
        zero_target = np.ones(z)
        for o in subset:
            w = eng.impact[:, OUTCOME_NAMES.index(o), i]
            fact_k = fact_k * (1.0 - w[:, None] * one[None, :])
            if not target[o]:
                zero_one = zero_one * (1.0 - w[:, None] * one[None, :])
                zero_target = zero_target * (1.0 - w)
            w_k = w_k * (1.0 - w)
        out.append((own, fact_k, zero_one, w_k, zero_target))
    return out


def _chain_causes(eng, base, scorer, i, attack, cluster, target, layout, threshold):
    """Execution, precursor and precondition of one attack whose chain reaches the outcome: PN and PS exactly."""
    z, total, coef = eng.draws, base.total, base.outputs["coef"]
    keep = base.outputs["keep"][:, i]                                # (z, k, u)
    chain = _chain_joint(eng, i, attack, keep, cluster)
    weights = _outcome_weights(eng, i, target, layout)
    leave_one_out = base.outputs["loo"][i]                           # (t, z, x, k, u)
    # x = pre * 4 + pre' * 2 + P with pre' = pre in this pass.
    by_state = leave_one_out[:, :, [0, 1, 6, 7]].reshape(leave_one_out.shape[0], z, 2, 2,
                                                         *leave_one_out.shape[3:])   # (t, z, a, p, k, u)
    # The three levels at once (axis L): executing, precursor, precondition.
    # switched_on: P(counterfactual success) when the level is switched on from an observed "off".
    value = {f"{attack}.p_attempt": eng.p_attempt[:, i, None, None],
             f"{attack}.p_execute": eng.p_execute[:, i, None, None]}.__getitem__
    executing_on = tables.execution_probability(attack, value, 1.0)
    switched_on = np.stack([keep, executing_on * keep,
                            tables.precursor_probability(attack, value, 1.0) * executing_on * keep])   # (L, z, k, u)
    split = (chain[None, None] * _LEVEL_MASKS).sum(5)                     # (L, X, z, a, p, s, k, u)
    on = split[:, 1]                                                     # X = 1: (L, z, a, p, s, k, u)
    off = split[:, 0].sum(4)                                             # X = 0 forces S = 0: (L, z, a, p, k, u)
    num, den, a_ps, b_ps, c_ps, d_ps = (np.zeros((3, z)) for _ in range(6))
    for t, (c_e, _, subset) in enumerate(layout):
        own, fact_k, zero_one, w_k, zero_target = weights[t]
        d_t = by_state[t][None]                                          # (1, z, a, p, k, u)
        on_t = (d_t[:, :, :, :, None] * on).sum((2, 3, 5, 6))           # (L, z, s)
        den += coef[t] * (on_t * (own * fact_k)[None]).sum(2)
        num += coef[t] * (on_t * (own * zero_one)[None]).sum(2)
        fresh = (1.0 - switched_on) + switched_on * w_k[None, :, None, None]          # (L, z, k, u)
        fresh_b = (1.0 - switched_on) + switched_on * zero_target[None, :, None, None]
        off_t = (d_t * off).sum((2, 3))                                  # (L, z, k, u)
        a_ps += coef[t] * (off_t * fresh).sum((2, 3))
        b_ps += coef[t] * (off_t * fresh_b).sum((2, 3))
        plain = off_t.sum((2, 3))
        d_ps += coef[t] * plain
        if not subset:
            c_ps += c_e * plain
    out = []
    ratio, combine = scorer.ratio, scorer.combine
    for row, (kind, level_name) in enumerate((("attack", "executing"), ("precursor", "precursor"),
                                                ("precondition", "precondition"))):
        posterior = ratio(den[row], total)
        necessity = 1.0 - ratio(num[row], den[row])
        sufficiency = ratio(a_ps[row] - b_ps[row], c_ps[row] - d_ps[row])
        if float(np.dot(posterior, scorer.draw_weights)) < threshold:
            necessity = sufficiency = np.zeros(z)
            score = posterior
        else:
            score = ratio(den[row] - num[row], total)
        out.append(Cause(_cause_name(attack, kind), kind, attack, f"{attack}.{level_name}",
                         combine(posterior, total), combine(necessity, den[row]),
                         combine(np.clip(sufficiency, 0, 1), np.maximum(c_ps[row] - d_ps[row], 0)),
                         combine(score, total)))
    return out


def _replica_causes(eng, base, scorer, parsed, target, n_nodes):
    """Replicas: attacker = k against no attacker inside, one twin pass for every k."""
    total = base.total
    with_outcome = ({**parsed[0], **target}, parsed[1], parsed[2])
    twin = eng.run(evidence=with_outcome, cf={"attacker": 0}, outcome_cf=target, outputs=("attacker",))
    den = base.outputs["attacker"][:, 1:]                                # (z, n): P(a, evidence, outcome)
    node_num = twin.outputs["attacker"][:, 1:]
    posteriors = scorer.ratio(den, total[:, None])
    necessities = 1.0 - scorer.ratio(node_num, den)
    scores = scorer.ratio(den - node_num, total[:, None])
    combine = scorer.combine
    return [Cause(f"r{replica}", "node", None, f"r{replica}.faulty", combine(posteriors[:, replica], total),
                  combine(necessities[:, replica], den[:, replica]), scorer.zero, combine(scores[:, replica], total))
            for replica in range(n_nodes)]


def _weights(result) -> np.ndarray:
    try:
        return result.weights()
    except Exception:  # noqa: BLE001 - an impossible outcome is reported by the caller's checks
        return np.full(result.total.shape, 1.0 / result.total.size)


# bd.explain stays callable after ``import bayes_defense.explain`` rebinds it.
make_module_callable(__name__)

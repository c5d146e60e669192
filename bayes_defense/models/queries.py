"""The standard questions about a cluster model: preconditions, success, simulated incidents.

All answers are exact (the cluster engine, :mod:`bayes_defense.models.engine`)
for indicator-mode models: each :class:`~bayes_defense.estimate.Probability`
has a zero-width interval, or, for a model built with posterior draws of its
parameters (``cluster(..., parameters=...)``), the mean over draws with the
spread across draws as its interval. Continuous-telemetry models are answered
by importance sampling through :func:`bayes_defense.intervene` and carry Monte
Carlo intervals.
"""

from __future__ import annotations

from bayes_defense.causal.queries import counterfactual, intervene
from bayes_defense.errors import InvalidInputError
from bayes_defense.models.catalogue import ATTACKS, COUNTERMEASURES

__all__ = ["precondition_check", "success_probability", "simulate_attack", "countermeasure_do", "check_attacks"]


def check_attacks(attacks) -> list[str]:
    """Validate attack names; raise listing the valid ones."""
    names = list(ATTACKS) if attacks is None else ([attacks] if isinstance(attacks, str) else list(attacks))
    unknown = [a for a in names if a not in ATTACKS]
    if unknown:
        raise InvalidInputError(f"unknown attack {', '.join(map(repr, unknown))}; valid attacks: {', '.join(ATTACKS)}")
    return names


def countermeasure_do(model, countermeasures, target: int | None = None) -> dict:
    """The ``do`` dict of a set of countermeasures (``isolate_node`` isolates ``target``, default r0)."""
    names = [countermeasures] if isinstance(countermeasures, str) else list(countermeasures or ())
    unknown = [c for c in names if c not in COUNTERMEASURES]
    if unknown:
        raise InvalidInputError(f"unknown countermeasure {', '.join(map(repr, unknown))}; valid countermeasures: "
                                f"{', '.join(COUNTERMEASURES)}")
    do = {}
    for name in names:
        c = COUNTERMEASURES[name]
        do[c.site] = float((target or 0) + 1) if name == "isolate_node" else c.value
    return do


def _fast(model) -> bool:
    return getattr(model, "telemetry", None) == "indicators"


def precondition_check(model, evidence: dict | None = None, attacks=None, **kwargs) -> dict:
    """P(each attack's preconditions hold | evidence), with intervals.

    Parameters
    ----------
    model : ClusterModel
        From :func:`bayes_defense.models.cluster`.
    evidence : dict, optional
        ``{site: value}``, for example per-replica telemetry ``{"r0.duplicates": 1}``.
    attacks : str or list of str, optional
        Which attacks (default all eight).
    **kwargs
        For continuous-telemetry models, passed to :func:`bayes_defense.intervene`.

    Returns
    -------
    dict
        ``{attack: Probability}``.

    Examples
    --------
    >>> import bayes_defense as bd
    >>> model = bd.models.cluster(4)
    >>> checks = bd.models.precondition_check(model, {"r0.conflicting": 1, "r0.sig_fail": 1})
    >>> round(checks["equivocation"].mean, 3)
    1.0
    """
    names = check_attacks(attacks)
    sites = [f"{a}.precondition" for a in names]
    if _fast(model):
        from bayes_defense.models.engine import engine

        estimates = engine(model).estimates(sites, evidence=evidence, level=kwargs.get("level", 0.9))
        return {a: estimates[s] for a, s in zip(names, sites, strict=True)}
    return {a: intervene(model, {}, s, evidence=evidence, **kwargs) for a, s in zip(names, sites, strict=True)}


def success_probability(model, evidence: dict | None = None, countermeasures=(), attacks=None, *,
                        target: int | None = None, **kwargs) -> dict:
    """P(each attack succeeds | do(countermeasures), evidence), interventional, with intervals.

    Examples
    --------
    >>> import bayes_defense as bd
    >>> model = bd.models.cluster(4)
    >>> before = bd.models.success_probability(model)["flooding"].mean
    >>> after = bd.models.success_probability(model, countermeasures=["rate_limit"])["flooding"].mean
    >>> after < before
    True
    """
    names = check_attacks(attacks)
    do = countermeasure_do(model, countermeasures, target)
    sites = [f"{a}.success" for a in names]
    if _fast(model):
        from bayes_defense.models.engine import engine

        estimates = engine(model).estimates(sites, do=do, evidence=evidence, level=kwargs.get("level", 0.9))
        return {a: estimates[s] for a, s in zip(names, sites, strict=True)}
    return {a: intervene(model, do, s, evidence=evidence, **kwargs) for a, s in zip(names, sites, strict=True)}


def simulate_attack(model, evidence: dict, attack: str | None = None, countermeasure: str | None = None, *,
                    outcomes=("safety_violated", "liveness_lost"), target: int | None = None, **kwargs) -> dict:
    """Counterfactual attack simulation for an observed incident.

    Would each outcome have failed had ``attack`` not started (``do(attack.precursor = 0)``),
    or had ``countermeasure`` been in place? Give exactly one of the two.

    Returns
    -------
    dict
        ``{outcome: Probability}`` that the outcome fails in the counterfactual world.

    Examples
    --------
    >>> import bayes_defense as bd
    >>> model = bd.models.cluster(4)
    >>> incident = {"r0.conflicting": 1, "r0.sig_fail": 1, "safety_violated": 1}
    >>> sim = bd.models.simulate_attack(model, incident, attack="equivocation")
    >>> sim["safety_violated"].mean < 0.5
    True
    """
    if (attack is None) == (countermeasure is None):
        raise InvalidInputError("give exactly one of attack= (had it not started) or countermeasure= "
                                "(had it been in place)")
    if attack is not None:
        check_attacks([attack])
        do = {f"{attack}.precursor": 0.0}
    else:
        do = countermeasure_do(model, [countermeasure], target)
    outcomes = [outcomes] if isinstance(outcomes, str) else list(outcomes)
    if _fast(model):
        from bayes_defense.models.engine import draw_estimate, engine

        values, weights = engine(model).counterfactual_outcomes(evidence, do, outcomes)
        return {o: draw_estimate(values[o], weights, level=kwargs.get("level", 0.9)) for o in outcomes}
    return {o: counterfactual(model, evidence, do, {o: 1.0}, **kwargs) for o in outcomes}

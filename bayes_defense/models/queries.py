"""The standard questions about a cluster model: preconditions, success, simulated incidents.

Each question is asked through the public queries (:func:`bayes_defense.intervene`,
:func:`bayes_defense.counterfactual`), one batch per question (a list of
queries: the cluster engine answers every attack's marginal in one pass), so
``backend="auto"`` answers
indicator-mode models exactly with the cluster engine (the
``cluster_engine`` backend): each :class:`~bayes_defense.estimate.Probability`
has a zero-width interval, or, for a model built with posterior draws of its
parameters (``cluster(..., parameters=...)``), the mean over draws with the
spread across draws as its interval. Continuous-telemetry models are answered
by importance sampling and carry Monte Carlo intervals. Keyword arguments
(``backend``, ``num_samples``, ``level``, ``seed``) go to the queries.
"""

from __future__ import annotations

from bayes_defense.causal.queries import counterfactual, intervene
from bayes_defense.errors import InvalidInputError
from bayes_defense.inference.base import remember
from bayes_defense.models import tables
from bayes_defense.models.catalogue import COUNTERMEASURES

__all__ = ["precondition_check", "success_probability", "simulate_attack", "sample_incidents", "countermeasure_do",
           "check_attacks"]


def check_attacks(attacks, model=None) -> list[str]:
    """Validate attack names (default all) against ``model``'s attacks, or the registry's; raise listing the valid ones."""
    structure = getattr(model, "structure", None) or tables.structure()
    return structure.check_attacks(attacks)


# ``(structure, attacks, level) -> (attack names, their sites at that level)``, for the questions asked of
# every attack of a model again and again (a structure is rebuilt when the registry changes, so it keys them).
_ATTACK_SITES: dict = {}


def _attack_sites(model, attacks, level: str) -> tuple[list[str], list[str]]:
    structure = getattr(model, "structure", None) or tables.structure()
    if attacks is None or isinstance(attacks, str):
        key = (structure, attacks, level)
        found = _ATTACK_SITES.get(key)
        if found is None:
            names = structure.check_attacks(attacks)
            found = remember(_ATTACK_SITES, key, lambda: (tuple(names), tuple(f"{a}.{level}" for a in names)),
                             limit=64)
        return list(found[0]), list(found[1])
    names = structure.check_attacks(attacks)
    return names, [f"{a}.{level}" for a in names]


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


def precondition_check(model, evidence: dict | None = None, attacks=None, **kwargs) -> dict:
    """P(each attack's preconditions hold | evidence), with intervals.

    Parameters
    ----------
    model : ClusterModel
        From :func:`bayes_defense.models.cluster`.
    evidence : dict, optional
        ``{site: value}``, for example per-replica telemetry ``{"r0.duplicates": 1}``.
    attacks : str or list of str, optional
        Which attacks (default all of the model's: the catalogue's eight and any added with
        :func:`~bayes_defense.models.registry.add_attack`).
    **kwargs
        Passed to :func:`bayes_defense.intervene` (``backend``, ``level``, ``num_samples``, ``seed``).

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
    names, sites = _attack_sites(model, attacks, "precondition")
    answers = intervene(model, {}, sites, evidence=evidence, **kwargs)
    return dict(zip(names, answers, strict=True))


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
    names, sites = _attack_sites(model, attacks, "success")
    do = countermeasure_do(model, countermeasures, target)
    answers = intervene(model, do, sites, evidence=evidence, **kwargs)
    return dict(zip(names, answers, strict=True))


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
        check_attacks([attack], model)
        do = {f"{attack}.precursor": 0.0}
    else:
        do = countermeasure_do(model, [countermeasure], target)
    outcomes = [outcomes] if isinstance(outcomes, str) else list(outcomes)
    answers = counterfactual(model, evidence, do, [{o: 1.0} for o in outcomes], **kwargs)
    return dict(zip(outcomes, answers, strict=True))


#: How each footing is forced when an attack is injected: the attacker's point of presence is the
#: primary r0 for primary attacks and the backup r1 for the others.
_INJECTED_FOOTING = {
    "primary_faulty": {"attacker": 1.0},
    "attacker_inside": {"attacker": 2.0},
    "backup_faulty": {"attacker": 2.0},
    "admission_open": {"admission_open": 1.0},
    "eclipse_footing": {"attacker": 2.0, "peer_table_exposed": 1.0},
}


def sample_incidents(model, attack: str, count: int, *, seed: int = 0, outcome: str | None = None,
                     batch: int | None = None) -> list[tuple[dict, dict]]:
    """Incidents sampled from the model with one attack injected as their known cause.

    The attack's footing, precursor and execution are forced on and every
    other attack's precursor off (``do``); the model is run in batches of
    ``batch`` independent incident windows and the first ``count`` in which
    ``outcome`` failed are kept. Each incident is its full indicator
    telemetry (every replica and ``join_rate``) with the outcome, the input
    :func:`bayes_defense.explain` takes; the injected attack is the answer an
    explanation should give.

    Parameters
    ----------
    model : ClusterModel
        An indicator-mode cluster model.
    attack : str
        The injected attack (one of the model's).
    count : int
        Incidents to return.
    seed : int
        Seed of the sampler (``pyro.set_rng_seed``); the same seed gives the same incidents.
    outcome : str, optional
        The outcome that must have failed; default the attack's most likely impact.
    batch : int, optional
        Windows simulated per batch (default ``40 * count``).

    Returns
    -------
    list of (dict, dict)
        ``(telemetry evidence, {outcome: 1})`` pairs.

    Examples
    --------
    >>> import bayes_defense as bd
    >>> model = bd.models.cluster(4)
    >>> cases = bd.models.sample_incidents(model, "replay", 3, seed=0)
    >>> evidence, seen = cases[0]
    >>> seen, len(evidence) == 4 * len(bd.models.TELEMETRY) + 1   # every replica's telemetry, and join_rate
    ({'safety_violated': 1}, True)
    >>> bd.explain(model, evidence, seen).top_attack in bd.models.ATTACKS
    True
    """
    import pyro
    import torch
    from pyro import poutine

    from bayes_defense.models.catalogue import OUTCOMES, TELEMETRY

    check_attacks([attack], model)
    if getattr(model, "telemetry", None) != "indicators":
        raise InvalidInputError("sample_incidents needs an indicator-mode cluster model "
                                "(bd.models.cluster(n), telemetry='indicators')")
    if not isinstance(count, int) or count < 1:
        raise InvalidInputError(f"count must be a positive integer; got {count!r}")
    spec = model.structure.specs[attack]
    outcome = max(spec.impacts, key=spec.impacts.get) if outcome is None else outcome
    valid = [name for name, _, _ in OUTCOMES]
    if outcome not in valid:
        raise InvalidInputError(f"unknown outcome {outcome!r}; valid outcomes: {', '.join(valid)}")
    do = {**_INJECTED_FOOTING[spec.footing], f"{attack}.precursor": 1.0, f"{attack}.executing": 1.0}
    do.update({f"{other}.precursor": 0.0 for other in model.structure.attack_names if other != attack})
    do = {site: torch.tensor(value) for site, value in do.items()}
    names = [f"r{k}.{t.name}" for k in range(model.n_nodes) for t in TELEMETRY] + ["join_rate"]
    batch = 40 * count if batch is None else int(batch)
    pyro.set_rng_seed(seed)
    incidents: list[tuple[dict, dict]] = []
    # An outcome of probability zero under the injection would loop forever; a thousand empty
    # batches say so instead.
    for _ in range(1000):
        with pyro.plate("incidents", batch, dim=-1):
            trace = poutine.trace(poutine.do(model, do)).get_trace()
        values = {s: trace.nodes[s]["value"] for s in names}
        for i in torch.nonzero(trace.nodes[outcome]["value"] == 1).reshape(-1).tolist():
            incidents.append(({s: float(values[s][i]) for s in names}, {outcome: 1}))
            if len(incidents) == count:
                return incidents
    raise InvalidInputError(f"{outcome} failed in none of {1000 * batch} windows with {attack} injected; "
                            f"choose an outcome the attack can cause: {', '.join(spec.impacts)}")

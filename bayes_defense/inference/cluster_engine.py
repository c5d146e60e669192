"""The cluster model's exact engine as a backend: ``backend="auto"`` on ``bd.models.cluster(n)`` in milliseconds.

The numeric core is :mod:`bayes_defense.models.engine`; this module turns a
:class:`~bayes_defense.inference.base.Problem` into its passes. Every answer
is a ratio of evidence masses, computed per parameter draw:

- ``intervene``: ``P(query | do, evidence) = Z(evidence and query) / Z(evidence)``
  in the mutilated model, where a query is a site's mean, a ``{site: value}``
  event, its negation, or a callable on a few discrete sites (summed over
  their joint configurations);
- ``counterfactual``: ``Z(evidence and condition, outcome' ) / Z(evidence and
  condition)`` in the twin network, where the query is an event on cluster
  outcomes in the counterfactual world (or its negation) and the optional
  condition an event on factual sites (or its negation). The probabilities
  of necessity and sufficiency are of this form.

A batch of queries (``bd.intervene(model, do, [query, ...])``) is answered
together: every site marginal in it from one engine pass, the other queries
sharing ``Z(evidence)``.

Queries outside these forms (counterfactual queries on sites other than the
outcomes, ``do`` on telemetry or outcomes, several interventions with an
outcome fixed in both worlds, continuous telemetry) raise
:class:`~bayes_defense.errors.UnsupportedModelError` naming ``exact`` or
``importance``; ``auto`` then falls back to them.

Examples
--------
>>> import bayes_defense as bd
>>> model = bd.models.cluster(7)
>>> p = bd.intervene(model, {"rate_limited": 1.0}, "flooding.success", evidence={"r0.msg_rate": 1})
>>> p.backend, 0.0 <= p.lower <= p.mean <= p.upper <= 1.0
('cluster_engine', True)
>>> pn = bd.probability_of_necessity(model, {"flooding.executing": 1.0}, {"flooding.executing": 0.0},
...                                  {"throughput_low": 1.0}, evidence={"r0.msg_rate": 1})
>>> pn.backend, round(pn.mean, 3) > 0.5
('cluster_engine', True)
"""

from __future__ import annotations

import itertools
import math
import operator

import numpy as np
import torch

from bayes_defense.errors import ImpossibleEvidenceError, InvalidInputError, UnsupportedModelError
from bayes_defense.inference.base import Backend, Problem, Query, SiteValues, register_backend

__all__ = ["ClusterEngine", "MAX_CONFIGURATIONS"]

#: Most joint configurations of the sites a callable query reads that the engine sums over.
MAX_CONFIGURATIONS = 256
# (ClusterModel, engine), filled by _cluster_engine on first use.
_MODELS: list = []


class _Event:
    """A conjunction ``{site: value}``, possibly negated."""

    __slots__ = ("sites", "negated")

    def __init__(self, sites: dict, negated: bool = False):
        self.sites, self.negated = sites, negated


def _event_of(key) -> _Event | None:
    """The event a query key describes (see :class:`~bayes_defense.inference.base.Query`), or None."""
    if not isinstance(key, tuple) or not key:
        return None
    if key[0] == "not":
        inner = _event_of(key[1])
        return None if inner is None else _Event(inner.sites, not inner.negated)
    if key[0] == "outcome":
        return _event_of(key[1])
    if key[0] == "event":
        sites = {}
        for name, values in key[1]:
            if len(values) != 1:
                return None
            sites[name] = float(values[0])
        return _Event(sites)
    return None


_key_of = operator.attrgetter("key")


def _scalars(values: dict, role: str) -> dict:
    out = {}
    for name, value in values.items():
        if type(value) is float:
            out[name] = value
            continue
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise UnsupportedModelError(f"the cluster engine takes one value per site; {role} {name} has "
                                            f"shape {tuple(value.shape)}; use backend='exact'")
            value = value.item()
        out[name] = float(value)
    return out


def _cluster_engine(problem: Problem):
    """The engine of the problem's model, once the model is one the engine answers."""
    # Imported on first use (the models package imports the queries); looked up once, as every query asks.
    if not _MODELS:
        from bayes_defense.models.cluster import ClusterModel
        from bayes_defense.models.engine import engine

        _MODELS.extend((ClusterModel, engine))
    ClusterModel, engine = _MODELS
    model = problem.model
    if not isinstance(model, ClusterModel):
        raise UnsupportedModelError("the cluster engine answers bd.models.cluster(n) models only; "
                                    "use backend='exact' or 'importance'")
    if model.telemetry != "indicators":
        raise UnsupportedModelError("the cluster engine needs telemetry='indicators'; continuous telemetry is "
                                    "answered by backend='importance'")
    return engine(model)


class _Setting:
    """The checks every query of a problem shares: the model, ``do``, the evidence's names and the condition.

    Nothing here reads an evidence value, so one setting serves every problem
    with the same model, ``do``, evidence names and condition.
    """

    def __init__(self, problem: Problem, engine, do: dict, evidence_names):
        model = problem.model
        self.model, self.engine, self.distributions = model, engine, model.site_distributions
        self.counterfactual = problem.counterfactual
        for name in do:
            if name == "theta_draw" and self.counterfactual:
                raise UnsupportedModelError("the cluster engine does not intervene on theta_draw in a counterfactual "
                                            "world; use backend='exact'")
            if self._is_leaf(name):
                raise UnsupportedModelError(f"the cluster engine does not intervene on {name!r} (telemetry, the "
                                            "attacker's replica flags, outcomes and join_rate are leaves of its "
                                            "factorisation); use backend='exact'")
        self.do = engine.check_do(do)
        self.condition = None
        if problem.condition is not None:
            self.condition = _event_of(problem.condition.key)
            if self.condition is None:
                raise UnsupportedModelError("the cluster engine takes a counterfactual condition that is a "
                                            "{site: value} event or its negation; use backend='exact'")
        self.factual = set(evidence_names) | (set(self.condition.sites) if self.condition else set())

    @staticmethod
    def _is_leaf(name: str) -> bool:
        from bayes_defense.models.tables import OUTCOME_NAMES

        return name in OUTCOME_NAMES or name == "join_rate" or (name[:1] == "r" and "." in name)


class _Plan:
    """What one query asks of the engine, checked against its :class:`_Setting`: the pieces
    :meth:`ClusterEngine.run_many` evaluates."""

    def __init__(self, setting: _Setting, query: Query):
        self.setting = setting
        self.callable = None
        self.site = None
        self.event = None
        if query.site is not None:
            self.site = query.site
            if setting.distributions[self.site] == "Bernoulli":
                self.site, self.event = None, _Event({query.site: 1.0})
        else:
            self.event = _event_of(query.key)
            if self.event is None:
                self.callable = query
        if setting.counterfactual:
            self._check_counterfactual()
        elif self.callable is not None:
            self._check_callable()
        self.marginal = None if setting.counterfactual else self._marginal()

    def _marginal(self):
        """``(site, value)`` when the query is one site's value that a single engine pass reports, else None."""
        if self.event is None or len(self.event.sites) != 1:
            return None
        (site, value), = self.event.sites.items()
        if site in self.setting.do:
            return None
        try:
            self.setting.engine.site_kind(site)
        except InvalidInputError:
            return None
        n_nodes = self.setting.model.n_nodes
        valid = value.is_integer() and 0 <= value <= n_nodes if site == "attacker" else value in (0.0, 1.0)
        return (site, value) if valid else None

    def _check_counterfactual(self):
        from bayes_defense.models.tables import OUTCOME_NAMES

        if self.event is None:
            raise UnsupportedModelError("the cluster engine answers counterfactual queries on cluster outcomes "
                                        f"({', '.join(OUTCOME_NAMES)}) as {{site: value}} events; "
                                        "use backend='exact'")
        others = [name for name in self.event.sites if name not in OUTCOME_NAMES]
        if others:
            raise UnsupportedModelError(f"the cluster engine's counterfactual queries read cluster outcomes only; "
                                        f"this one reads {', '.join(others)}; use backend='exact'")
        if self.setting.factual & set(self.event.sites):
            # The two worlds' outcomes are then summed as ordered pairs, which needs one intervention.
            do = self.setting.do
            single = len(do) == 1 and do.get("attacker", 0.0) == 0.0
            if not single:
                raise UnsupportedModelError("with an outcome observed in the factual world and queried in the "
                                            "counterfactual one, the cluster engine takes one intervention "
                                            "(attacker only to 0); use backend='exact'")

    def _check_callable(self):
        example = {name: torch.zeros(1) for name in self.setting.distributions}
        try:
            read = self.callable.sites_read(example)
        except Exception as error:  # noqa: BLE001 - any failure means the engine cannot enumerate it
            raise UnsupportedModelError(f"the cluster engine could not tell which sites the query reads ({error}); "
                                        "use backend='exact'") from error
        supports = []
        for name in read:
            supports.append(self._support(name))
        size = int(np.prod([len(s) for s in supports])) if supports else 1
        if size > MAX_CONFIGURATIONS:
            raise UnsupportedModelError(f"the query reads {len(read)} sites with {size} joint values, more than the "
                                        f"cluster engine sums ({MAX_CONFIGURATIONS}); use backend='exact'")
        self.read, self.supports = read, supports

    def _support(self, name: str) -> list[float]:
        kind = self.setting.distributions[name]
        if kind == "Bernoulli":
            return [0.0, 1.0]
        model = self.setting.model
        if name in ("attacker", "isolated"):
            return [float(k) for k in range(model.n_nodes + 1)]
        if name == "theta_draw":
            return [float(k) for k in range(model.n_draws)]
        raise UnsupportedModelError(f"the cluster engine cannot sum over site {name!r} ({kind}); "
                                    "use backend='exact'")


class _Compiled:
    """A batch checked for the engine: its :class:`_Setting`, one :class:`_Plan` per query, and the site
    marginals that one engine pass answers (``sites``)."""

    __slots__ = ("setting", "plans", "sites")

    def __init__(self, problem: Problem, engine, do: dict, evidence_names, queries):
        self.setting = _Setting(problem, engine, do, evidence_names)
        self.plans = [_Plan(self.setting, query) for query in queries]
        self.sites = list(dict.fromkeys(plan.marginal[0] for plan in self.plans if plan.marginal is not None))


class _Masses:
    """Evidence masses per parameter draw on one scale: ``Z[z] = total[z] * exp(scale[z] - reference)``."""

    def __init__(self, setting: _Setting, evidence: dict):
        self.setting, self.evidence = setting, evidence
        self.engine = setting.engine
        self.reference = None
        self._evidence_mass = None
        self._split = None

    def evidence_mass(self) -> np.ndarray:
        """Z(evidence) per draw, computed once for every query of a batch."""
        if self._evidence_mass is None:
            self._evidence_mass = self.mass({})
        return self._evidence_mass

    def split(self) -> tuple:
        """The evidence in the engine's form (:meth:`~bayes_defense.models.engine.Engine.split_evidence`), once."""
        if self._split is None:
            self._split = self.engine.split_evidence(self.evidence)
        return self._split

    def mass(self, sites: dict, *, cf: dict | None = None, outcome_cf: dict | None = None) -> np.ndarray:
        """Z(evidence and ``sites`` [and the counterfactual outcomes]) per draw, 0 where they cannot hold."""
        setting = self.setting
        evidence = self.evidence
        do = {} if setting.counterfactual else setting.do
        added = {}
        for name, value in sites.items():
            if name in do:
                if do[name] != value:
                    return self._zeros()
                continue
            if name in evidence:
                if evidence[name] != value:
                    return self._zeros()
                continue
            added[name] = value
        split = self.split()
        try:
            if added:
                split = tuple({**given, **more} for given, more in zip(split, self.engine.split_evidence(added),
                                                                         strict=True))
            result = self.engine.run(do=do, evidence=split, cf=cf, outcome_cf=outcome_cf)
        except ImpossibleEvidenceError:
            if not sites and not outcome_cf:
                raise
            return self._zeros()
        return self._scaled(result)

    def attacker_masses(self) -> np.ndarray:
        """Z(evidence and attacker = k) per draw and k, ``(draws, n + 1)``, in one pass."""
        setting = self.setting
        do = {} if setting.counterfactual else setting.do
        result = self.engine.run(do=do, evidence=self.split(), outputs=("attacker",))
        with np.errstate(over="ignore", invalid="ignore"):
            factor = np.exp(np.where(np.isfinite(result.scale), result.scale - self.reference, -np.inf))
        return result.outputs["attacker"] * factor[:, None]

    def _zeros(self) -> np.ndarray:
        return np.zeros(self.engine.draws)

    def _scaled(self, result) -> np.ndarray:
        scale = result.scale
        if scale.shape == (1,):
            # One draw: the same arithmetic on a Python float, a few numpy calls fewer per pass.
            value = float(scale[0])
            finite = math.isfinite(value)
            if self.reference is None:
                self.reference = value if finite else 0.0
            return result.total * (math.exp(value - self.reference) if finite else 0.0)
        if self.reference is None:
            # One reference for every draw: the draws' weights carry their likelihood scales.
            finite = np.isfinite(scale)
            self.reference = float(scale[finite].max()) if finite.any() else 0.0
        with np.errstate(over="ignore", invalid="ignore"):
            factor = np.exp(np.where(np.isfinite(scale), scale - self.reference, -np.inf))
        return result.total * factor


def _event_mass(masses: _Masses, base: np.ndarray, event: _Event | None, **kwargs) -> np.ndarray:
    """Z(evidence and event) from Z(evidence) = ``base``; a negated event by complement."""
    if event is None:
        return base
    held = masses.mass(event.sites, **kwargs)
    return base - held if event.negated else held


@register_backend
class ClusterEngine(Backend):
    """The cluster model's exact engine (:mod:`bayes_defense.models.engine`) behind the backend interface.

    Picked by ``backend="auto"`` for indicator-mode cluster models before the
    generic ``exact`` backend; answers agree with it to float precision.
    With posterior draws of the parameters, each draw is answered exactly and
    the estimate's interval is the spread across draws (weighted by how well
    each draw explains the evidence).
    """

    name = "cluster_engine"

    def __init__(self):
        self._last: tuple | None = None

    def _compiled(self, problem: Problem, queries=None) -> tuple[_Compiled, dict]:
        """The checked batch (``problem.query`` alone by default) and the evidence as numbers.

        A batch is checked once per pattern: the model, ``do``, the evidence's
        names, the condition's and the queries' keys (kept by the model's
        engine, :meth:`~bayes_defense.models.engine.Engine.cached`). The
        evidence values are read on every call. A query or condition without
        a key (a callable) is checked on every call. The last batch is also
        remembered here for the run that follows a check.
        """
        queries = [problem.query] if queries is None else list(queries)
        ids = list(map(id, queries))
        if self._last is not None and self._last[0] is problem and self._last[1] == ids:
            return self._last[2], self._last[3]
        engine = _cluster_engine(problem)
        do = _scalars(problem.do, "do")
        evidence = problem.evidence
        if isinstance(evidence, SiteValues):
            # Plain numbers (checked by the public query) need no second pass.
            evidence = evidence.raw() if evidence.plain else _scalars(evidence.raw(), "evidence")
        else:
            evidence = _scalars(evidence, "evidence")
        condition = problem.condition
        keys = tuple(map(_key_of, queries))
        if None in keys or (condition is not None and condition.key is None):
            compiled = _Compiled(problem, engine, do, evidence, queries)
        else:
            pattern = ("checked batch", problem.counterfactual, tuple(do.items()), tuple(evidence),
                       None if condition is None else condition.key, keys)
            compiled = engine.cached(pattern, lambda: _Compiled(problem, engine, do, evidence, queries))
        # The queries are held so that their ids stay theirs while this batch is remembered.
        self._last = (problem, ids, compiled, evidence, queries)
        return compiled, evidence

    def check(self, problem: Problem) -> None:
        self._compiled(problem)

    def check_many(self, problem: Problem, queries) -> None:
        self._compiled(problem, queries)

    def run(self, problem: Problem):
        return self.run_many(problem, [problem.query])[0]

    def run_many(self, problem: Problem, queries) -> list:
        """Every query of a batch, the site marginals from one engine pass and the rest sharing Z(evidence)."""
        from bayes_defense.models.engine import draw_estimate

        compiled, evidence = self._compiled(problem, queries)
        setting = compiled.setting
        masses = _Masses(setting, evidence)
        if compiled.sites:
            by_draw, marginal_weights = setting.engine.query(compiled.sites, do=setting.do, evidence=evidence)
        answers = []
        for plan in compiled.plans:
            if plan.marginal is not None:
                values, weights, is_probability = self._marginal(plan, by_draw), marginal_weights, True
            elif setting.counterfactual:
                values, weights, is_probability = self._counterfactual(plan, masses)
            elif plan.event is not None:
                values, weights, is_probability = self._event(plan, masses)
            else:
                values, weights, is_probability = self._mean(plan, masses)
            answers.append(draw_estimate(values, weights, level=problem.level, backend=self.name,
                                         is_probability=is_probability))
        return answers

    @staticmethod
    def _ratio(numerator, denominator):
        if denominator.shape == (1,):
            # One draw: its weight is 1 and its value the plain ratio.
            if not denominator[0] > 0:
                raise ImpossibleEvidenceError("the evidence has probability zero under the model")
            return numerator / denominator, np.ones(1)
        if not (denominator > 0).any():
            raise ImpossibleEvidenceError("the evidence has probability zero under the model")
        weights = np.maximum(denominator, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), 0.0)
        return values, weights / weights.sum()

    @staticmethod
    def _marginal(plan: _Plan, by_draw: dict) -> np.ndarray:
        """The per-draw probability of a one-site event from the engine's marginals ``by_draw``."""
        site, value = plan.marginal
        values = by_draw[site]
        values = values[:, int(value)] if site == "attacker" else (values if value == 1.0 else 1.0 - values)
        return 1.0 - values if plan.event.negated else values

    def _event(self, plan: _Plan, masses: _Masses):
        base = masses.evidence_mass()
        values, weights = self._ratio(_event_mass(masses, base, _Event(plan.event.sites)), base)
        return (1.0 - values if plan.event.negated else values), weights, True

    def _counterfactual(self, plan: _Plan, masses: _Masses):
        base = masses.evidence_mass()
        condition = plan.setting.condition
        denominator = _event_mass(masses, base, condition)
        outcome_cf = plan.event.sites
        if any(value not in (0.0, 1.0) for value in outcome_cf.values()):
            numerator = np.zeros_like(base)
        else:
            # Z(factual, outcome') with the condition by complement when negated.
            full = masses.mass({}, cf=plan.setting.do, outcome_cf=outcome_cf)
            if condition is None:
                numerator = full
            else:
                held = masses.mass(condition.sites, cf=plan.setting.do, outcome_cf=outcome_cf)
                numerator = full - held if condition.negated else held
        values, weights = self._ratio(numerator, denominator)
        return (1.0 - values if plan.event.negated else values), weights, True

    def _mean(self, plan: _Plan, masses: _Masses):
        """A site's mean (attacker, isolated, theta_draw) or a callable summed over its sites' configurations."""
        if plan.site is not None:
            read, supports = [plan.site], [plan._support(plan.site)]

            def evaluate(grid):
                return grid[plan.site]
        else:
            read, supports = plan.read, plan.supports
            evaluate = plan.callable.evaluate
        base = masses.evidence_mass()
        configurations = list(itertools.product(*supports))
        grid = {name: torch.tensor([c[i] for c in configurations], dtype=torch.get_default_dtype())
                for i, name in enumerate(read)}
        result = evaluate(grid) if read else evaluate({})
        result = torch.as_tensor(result)
        is_probability = result.dtype == torch.bool if plan.callable is not None else False
        if plan.callable is not None and plan.callable.probability is not None:
            is_probability = plan.callable.probability
        outcome = result.to(torch.float64).reshape(-1).expand(len(configurations)).numpy()
        if not np.isfinite(outcome).all():
            raise ValueError("the query returned non-finite values; a query must map every world to a finite number")
        if read == ["attacker"]:
            # One pass gives the joint of the evidence with every attacker value.
            numerator = masses.attacker_masses() @ outcome
        else:
            numerator = np.zeros_like(base)
            for value, configuration in zip(outcome, configurations, strict=True):
                if value != 0.0:
                    numerator = numerator + value * masses.mass(dict(zip(read, configuration, strict=True)))
        values, weights = self._ratio(numerator, base)
        return values, weights, bool(is_probability)

"""Interventional and counterfactual queries, and probabilities of causation.

``intervene`` answers ``P(query | do(X = x), evidence)``: the model is
mutilated (each intervened site takes its value and ignores its parents) and
then conditioned on the evidence, which may lie anywhere in the graph,
upstream or downstream of the intervention.

``counterfactual`` runs Pearl's three steps explicitly:

1. abduction: the posterior over every site's exogenous noise given the
   factual evidence, by the chosen backend;
2. action: the intervention ``do`` replaces the intervened sites;
3. prediction: the model is replayed under the action with the abducted noise.

The noise is the canonical one of :mod:`bayes_defense.causal.noise`; for
discrete sites it implies the monotone coupling under which the probabilities
of necessity and sufficiency equal their Tian-Pearl closed forms.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

import torch

from bayes_defense.causal.structure import ModelInfo, model_info
from bayes_defense.errors import ImpossibleEvidenceError, InvalidInputError
from bayes_defense.estimate import Estimate
from bayes_defense.inference.base import (
    PLAIN_NUMBERS,
    Problem,
    Query,
    SiteValues,
    make_query,
    remember,
    resolve,
    resolve_many,
    seeded,
    single_threaded,
)

__all__ = ["intervene", "counterfactual", "probability_of_necessity", "probability_of_sufficiency", "build_problem"]


def _check_common(num_samples, level) -> None:
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise InvalidInputError(f"num_samples must be a positive integer, for example 10_000; got {num_samples!r}")
    if not 0.0 < float(level) < 1.0:
        raise InvalidInputError(f"level must lie strictly between 0 and 1, for example 0.9; got {level!r}")


def _as_tensor(value, name: str, role: str) -> torch.Tensor:
    value = _checked({name: value}, role)[name]
    return torch.scalar_tensor(value) if type(value) is float else value


def _plain_and_finite(numbers) -> bool:
    """Whether every value is a plain number (int, float, bool), finite and within float range.

    One pass over hundreds of indicators (a large cluster's evidence): the sum
    of finite numbers is finite unless it overflows, and an inf or a nan makes
    it inf or nan; an integer beyond float range fails the conversion of the
    extremes (or of the sum). False sends the values to :func:`_checked`,
    which names the one at fault.
    """
    types = set(map(type, numbers))
    if not types <= PLAIN_NUMBERS:
        return False
    try:
        total = float(sum(numbers))
        if int in types and numbers:
            float(min(numbers)), float(max(numbers))
    except OverflowError:
        return False
    return total - total == 0.0


def _checked(values: Mapping, role: str) -> dict:
    """Checked values: a float for a plain number (made a tensor only when read, :class:`SiteValues`), else a tensor."""
    out = {}
    for name, value in values.items():
        if type(value) in PLAIN_NUMBERS:
            try:
                number = float(value)
            except OverflowError:
                raise InvalidInputError(f"{role} value for site {name!r} must be a finite number within float "
                                        f"range; got an integer of {value.bit_length()} bits") from None
            if number - number != 0.0:
                raise InvalidInputError(f"{role} value for site {name!r} must be finite; got {value!r}")
            out[name] = number
        else:
            out[name] = _checked_tensor(value, name, role)
    return out


def _checked_tensor(value, name: str, role: str) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise InvalidInputError(f"{role} value for site {name!r} must be a number or tensor; got {value!r}") from error
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise InvalidInputError(f"{role} value for site {name!r} must be finite; got {value!r}")
    if not tensor.is_floating_point() and tensor.dtype != torch.bool:
        tensor = tensor.to(torch.get_default_dtype())
    if tensor.dtype == torch.bool:
        tensor = tensor.to(torch.get_default_dtype())
    return tensor


# The entry of a model's cache (``ModelInfo.cache``) holding the name patterns already checked.
_NAME_PATTERNS = "checked names"
# The entry of a model's cache holding the queries of lists of site names (the rest of a batch).
_SITE_BATCHES = "site batches"


def _known_names(info: ModelInfo, mapping, role: str) -> Mapping:
    """``mapping`` once its names are known sites of the model; each pattern of names is checked once per model.

    A dict's names are checked by :meth:`ModelInfo.check_names` the first
    time that tuple of names comes (a defender asks about the same
    replicas' telemetry every window) and remembered in ``info.cache``; the
    values are the caller's to check, on every call. Anything but a plain
    dict goes to :meth:`ModelInfo.check_names` each time.
    """
    if type(mapping) is not dict:
        return info.check_names(mapping, role)
    patterns = info.cache.setdefault(_NAME_PATTERNS, {})
    key = tuple(mapping)
    if key not in patterns:
        info.check_names(mapping, role)
        remember(patterns, key, lambda: True)
    return mapping


def build_problem(model, do, evidence, query, *, counterfactual, num_samples, level, condition=None,
                  options=None) -> Problem:
    """Check a query's arguments and describe it as the :class:`~bayes_defense.inference.base.Problem` backends take.

    :func:`intervene` and :func:`counterfactual` call it; benchmarks call it to time a backend alone.

    Examples
    --------
    >>> import pyro, pyro.distributions as dist
    >>> from bayes_defense.causal.queries import build_problem
    >>> def coin():
    ...     pyro.sample("x", dist.Bernoulli(0.5))
    >>> problem = build_problem(coin, {}, {"x": 1}, "x", counterfactual=False, num_samples=10, level=0.9)
    >>> sorted(problem.evidence), problem.query.site
    (['x'], 'x')
    """
    _check_common(num_samples, level)
    info = model_info(model)
    do = {k: _as_tensor(v, k, "do") for k, v in _known_names(info, do, "do").items()} if do else \
        dict(info.check_names(do, "do"))
    evidence = _known_names(info, evidence, "evidence")
    plain = _plain_and_finite(evidence.values())
    # Plain numbers are kept as given (a backend converts what it reads); anything else is checked
    # value by value and made a float or a tensor.
    evidence = dict(evidence) if plain else _checked(evidence, "evidence")
    if do and not counterfactual:
        # Evidence on an intervened site is either implied by the intervention or impossible.
        for name in [name for name in evidence if name in do]:
            evidence[name] = _as_tensor(evidence[name], name, "evidence")
            try:
                consistent = bool((evidence[name].to(do[name].dtype) == do[name]).all())
            except RuntimeError:
                consistent = False
            if not consistent:
                raise ImpossibleEvidenceError(
                    f"evidence {name}={evidence[name].tolist()} contradicts the intervention "
                    f"do({name}={do[name].tolist()}); in the intervened world {name} takes the "
                    "intervened value, so this evidence has probability zero"
                )
            del evidence[name]
            plain = False
    return Problem(
        model=model,
        info=info,
        do=do,
        evidence=SiteValues(evidence, plain=plain),
        query=make_query(query, info),
        counterfactual=counterfactual,
        num_samples=num_samples,
        level=float(level),
        condition=condition,
        options=dict(options or {}),
    )


def intervene(
    model: Callable,
    do: dict,
    query,
    *,
    evidence: dict | None = None,
    backend: str = "auto",
    num_samples: int = 10_000,
    level: float = 0.9,
    seed: int | None = None,
    options: dict | None = None,
) -> Estimate:
    """Estimate a query in the intervened model, conditioned on evidence.

    Parameters
    ----------
    model : callable
        A Pyro model without arguments; every endogenous variable is a
        ``pyro.sample`` site whose distribution depends on its parents.
    do : dict
        ``{site: value}`` interventions (graph surgery).
    query : str, dict, callable, or a list of them
        A site name (the estimate is that site's mean), a ``{site: value}``
        event, or a callable on ``{site: tensor}`` returning one value per
        particle; a boolean result makes the estimate a probability. A list
        of queries is a batch: they share ``do`` and ``evidence``, a backend
        that can answer them together does (the cluster engine answers every
        site marginal of a batch in one pass), and the others answer them one
        by one; each query goes to the backend it would go to alone.
    evidence : dict, optional
        ``{site: value}`` observed in the intervened world, anywhere in the graph.
    backend : str
        One of :func:`bayes_defense.backends`; ``"auto"`` picks ``exact`` or
        ``analytic`` where they apply and ``importance`` otherwise.
    num_samples : int
        Particles or posterior draws for sampling backends.
    level : float
        Coverage of the interval.
    seed : int, optional
        Seed for reproducible sampling; the global torch generator is left as it was.
    options : dict, optional
        Backend-specific settings (for example ``{"num_steps": 2000}`` for SVI).

    Returns
    -------
    Estimate or list of Estimate
        A :class:`~bayes_defense.estimate.Probability` for boolean queries
        and for means of Bernoulli sites; for a list of queries, a list of
        estimates in the same order.

    Examples
    --------
    >>> import pyro, pyro.distributions as dist
    >>> import bayes_defense as bd
    >>> def sprinkler():
    ...     rain = pyro.sample("rain", dist.Bernoulli(0.3))
    ...     sprinkler = pyro.sample("sprinkler", dist.Bernoulli(0.5 - 0.4 * rain))
    ...     pyro.sample("wet", dist.Bernoulli(0.05 + 0.6 * rain + 0.3 * sprinkler))
    >>> p = bd.intervene(sprinkler, {"sprinkler": 1.0}, "rain", evidence={"wet": 1.0})
    >>> round(p.mean, 4), p.backend
    (0.5377, 'exact')

    Several queries in one call (a batch):

    >>> rain, wet = bd.intervene(sprinkler, {"sprinkler": 1.0}, ["rain", {"wet": 1.0}])
    >>> round(rain.mean, 4), round(wet.mean, 4)
    (0.3, 0.53)
    """
    first, rest = _split_batch(query)
    problem = build_problem(model, do, evidence, first, counterfactual=False, num_samples=num_samples,
                            level=level, options=options)
    return _answer(problem, backend, seed, _batch(problem, rest))


def counterfactual(
    model: Callable,
    evidence: dict,
    do: dict,
    query,
    *,
    backend: str = "auto",
    num_samples: int = 10_000,
    level: float = 0.9,
    seed: int | None = None,
    options: dict | None = None,
    condition=None,
) -> Estimate:
    """Estimate a query in the counterfactual world by abduction, action and prediction.

    Parameters
    ----------
    model : callable
        A Pyro model without arguments.
    evidence : dict
        ``{site: value}`` observed in the factual world.
    do : dict
        ``{site: value}`` interventions that define the counterfactual world.
    query : str, dict, callable, or a list of them
        Evaluated in the counterfactual world, as for :func:`intervene`
        (a list is a batch sharing the evidence, ``do`` and ``condition``).
    backend, num_samples, level, seed, options
        As for :func:`intervene`.
    condition : dict or callable, optional
        An extra factual event to condition on (a ``{site: value}`` dict or a
        boolean callable), as the probabilities of causation need.

    Returns
    -------
    Estimate or list of Estimate
        One estimate per query for a list of queries.

    Examples
    --------
    The Primer's linear model (Pearl, Glymour and Jewell 2016, section 4.2.3):
    X = U1, H = 0.5 X + U2, Y = 0.7 X + 0.4 H + U3. Had Joe's homework H
    been 2 instead of the observed 1 (with X = 0.5, Y = 1.5), his score would
    have been 1.9:

    >>> import pyro, pyro.distributions as dist
    >>> import bayes_defense as bd
    >>> def encouragement():
    ...     x = pyro.sample("X", dist.Normal(0.0, 1.0))
    ...     h = pyro.sample("H", dist.Normal(0.5 * x, 1.0))
    ...     pyro.sample("Y", dist.Normal(0.7 * x + 0.4 * h, 1.0))
    >>> est = bd.counterfactual(encouragement, {"X": 0.5, "H": 1.0, "Y": 1.5}, {"H": 2.0}, "Y")
    >>> round(est.mean, 6), est.backend
    (1.9, 'analytic')
    """
    info = model_info(model)
    condition_query = None if condition is None else make_query(condition, info, "condition")
    first, rest = _split_batch(query)
    problem = build_problem(model, do, evidence, first, counterfactual=True, num_samples=num_samples,
                            level=level, condition=condition_query, options=options)
    return _answer(problem, backend, seed, _batch(problem, rest))


def _split_batch(query):
    """``(first query, the rest or None)``: None when ``query`` is a single query, not a list."""
    if not isinstance(query, (list, tuple)):
        return query, None
    if not query:
        raise InvalidInputError("query is an empty list; give a query (a site name, a {site: value} dict or a "
                                "callable) or a non-empty list of them")
    return query[0], list(query[1:])


def _batch(problem: Problem, rest) -> list[Query] | None:
    """Every query of a batch as :class:`Query` (the first is ``problem.query``), or None for one query."""
    if rest is None:
        return None
    info = problem.info
    if set(map(type, rest)) <= {str}:
        # A list of site names (the cluster questions ask one per attack) is built once per model.
        batches = info.cache.setdefault(_SITE_BATCHES, {})
        key = tuple(rest)
        found = batches.get(key)
        if found is None:
            found = remember(batches, key, lambda: tuple(make_query(q, info) for q in rest))
        return [problem.query, *found]
    return [problem.query] + [make_query(q, info) for q in rest]


def _answer(problem: Problem, backend: str, seed, queries: list[Query] | None = None):
    """Answer ``problem`` (or each query of a batch, sharing its do, evidence and condition)."""
    if not isinstance(backend, str):
        raise InvalidInputError(f"backend must be a name string, one of bayes_defense.backends(); got {backend!r}")
    batch = [problem.query] if queries is None else queries
    draws = getattr(problem.model, "parameter_models", None)
    if draws:
        # A fitted SCM (posterior.model()): one answer per parameter draw, pooled, so that the
        # interval carries the parameter uncertainty as well as the Monte Carlo error.
        from bayes_defense.estimate import combine_draws

        by_draw = []
        with seeded(seed), single_threaded():
            for model in draws:
                per_draw = replace(problem, model=model, info=model_info(model))
                by_draw.append(_run_batch(per_draw, batch, backend))
        answers = [combine_draws([draw[i] for draw in by_draw], level=problem.level) for i in range(len(batch))]
    else:
        groups = resolve_many(problem, batch, backend) if queries is not None else None
        with seeded(seed), single_threaded():
            if groups is None:
                return resolve(problem, backend).run(problem)
            answers = _run_groups(problem, batch, groups)
    return answers if queries is not None else answers[0]


def _run_batch(problem: Problem, batch: list[Query], backend: str) -> list:
    if len(batch) == 1:
        return [resolve(problem, backend).run(problem)]
    return _run_groups(problem, batch, resolve_many(problem, batch, backend))


def _run_groups(problem: Problem, batch: list[Query], groups) -> list:
    answers = [None] * len(batch)
    for chosen, indices in groups:
        part = batch if len(indices) == len(batch) else [batch[i] for i in indices]
        for i, estimate in zip(indices, chosen.run_many(problem, part), strict=True):
            answers[i] = estimate
    return answers


def _negate(query: Query) -> Query:
    return Query(fn=lambda values, _q=query: ~query.evaluate(values).bool(), description=f"not ({query.description})",
                 probability=True, key=None if query.key is None else ("not", query.key))


def _outcome(outcome, info) -> Query:
    query = make_query(outcome, info, "outcome")
    if query.site is not None:
        raise InvalidInputError(
            "outcome must be a {site: value} dict or a boolean callable, not a bare site name; "
            f"for example {{{query.site!r}: 1}}"
        )
    return Query(fn=lambda values, _q=query: query.evaluate(values).bool(), description=query.description,
                 probability=True, key=None if query.key is None else ("outcome", query.key))


def probability_of_necessity(model: Callable, cause: dict, alternative: dict, outcome, *,
                             evidence: dict | None = None, **kwargs) -> Estimate:
    """P(the outcome would not hold under ``alternative`` | ``cause`` and the outcome held).

    Parameters
    ----------
    model : callable
        A Pyro model without arguments.
    cause : dict
        The factual ``{site: value}`` of the candidate cause.
    alternative : dict
        The counterfactual ``{site: value}`` of the same sites.
    outcome : dict or callable
        ``{site: value}`` or a boolean callable on ``{site: tensor}``.
    evidence : dict, optional
        Further factual observations.
    **kwargs
        Passed to :func:`counterfactual` (backend, num_samples, level, seed, options).

    Returns
    -------
    Probability

    Examples
    --------
    A firing squad (Pearl 2009, section 9.2): the court orders (probability
    p), the captain signals, riflemen A and B shoot, the prisoner dies. Given
    that the prisoner died, A's shot was necessary with probability zero (B
    shot too):

    >>> import pyro, pyro.distributions as dist
    >>> import bayes_defense as bd
    >>> def squad():
    ...     order = pyro.sample("order", dist.Bernoulli(0.7))
    ...     a = pyro.sample("A", dist.Bernoulli(order))
    ...     b = pyro.sample("B", dist.Bernoulli(order))
    ...     pyro.sample("dead", dist.Bernoulli(1 - (1 - a) * (1 - b)))
    >>> float(bd.probability_of_necessity(squad, {"A": 1.0}, {"A": 0.0}, {"dead": 1.0}))
    0.0
    """
    info = model_info(model)
    event = _outcome(outcome, info)
    factual = {**(evidence or {}), **_known_names(info, cause, "cause")}
    if isinstance(outcome, dict):
        factual.update(outcome)
        condition = None
    else:
        condition = event
    return counterfactual(model, factual, _known_names(info, alternative, "alternative"), _negate(event),
                          condition=condition, **kwargs)


def probability_of_sufficiency(model: Callable, cause: dict, alternative: dict, outcome, *,
                               evidence: dict | None = None, **kwargs) -> Estimate:
    """P(the outcome would hold under ``cause`` | ``alternative`` held and the outcome did not).

    Parameters are as for :func:`probability_of_necessity`.

    Returns
    -------
    Probability

    Examples
    --------
    >>> import pyro, pyro.distributions as dist
    >>> import bayes_defense as bd
    >>> def squad():
    ...     order = pyro.sample("order", dist.Bernoulli(0.7))
    ...     a = pyro.sample("A", dist.Bernoulli(order))
    ...     b = pyro.sample("B", dist.Bernoulli(order))
    ...     pyro.sample("dead", dist.Bernoulli(1 - (1 - a) * (1 - b)))
    >>> float(bd.probability_of_sufficiency(squad, {"A": 1.0}, {"A": 0.0}, {"dead": 1.0}))
    1.0
    """
    info = model_info(model)
    event = _outcome(outcome, info)
    negated = _negate(event)
    return counterfactual(model, {**(evidence or {}), **_known_names(info, alternative, "alternative")},
                          _known_names(info, cause, "cause"), event, condition=negated, **kwargs)

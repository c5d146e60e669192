"""Why is a site's observed value far from typical: counterfactual attribution to upstream noise.

For a continuous outcome ``Y`` observed at ``y``, each candidate cause ``j``
(``Y`` itself and every ancestor of ``Y``) is scored by the counterfactual
"had ``j``'s exogenous noise been typical":

    contribution_j = y - Y(noise_j := typical, every other noise as abducted)
    share_j        = contribution_j / (y - Y(every noise typical))

Abduction is the package's canonical noise (:mod:`bayes_defense.causal.noise`):
exact for location-scale sites, ``Uniform(F(k - 1), F(k))`` for discrete ones,
and likelihood weighting over the noise of unobserved sites. "Typical" is the
median of the canonical noise (0 for Normal noise, 1/2 for a discrete site's
uniform). A site whose value its parents explain has typical noise, so
resetting it changes nothing: an injected fault is blamed on the site where it
entered, not on the descendants it propagated to (nor on the symptom).

For a linear-Gaussian SCM ``V = A (b + diag(sigma) eps)`` the contributions
are ``A[Y, j] sigma_j eps_j`` and add up to the deviation ``y - E[Y]``
exactly; for nonlinear mechanisms they need not add up.

Intervals: with every ancestor observed and continuous the answer is exact
(zero width); otherwise it carries the Monte Carlo interval of the weighted
particles; a fitted SCM (``posterior.model()``) is answered per parameter
draw and pooled, so the interval carries parameter uncertainty too.

Discrete outcomes ``{site: value}`` are ranked by ``P(cause | evidence,
outcome) * PN`` (:func:`necessity_ranking`), as for the cluster model.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field

import torch
import torch.distributions as tdist
from pyro import distributions as dist

from bayes_defense.causal.noise import base_distribution as _strip
from bayes_defense.causal.noise import is_deterministic
from bayes_defense.causal.structure import model_info
from bayes_defense.errors import InvalidInputError
from bayes_defense.estimate import Estimate, exact_estimate, weighted_estimate

__all__ = ["attribute", "necessity_ranking", "SCMExplanation", "typical_noise"]


@dataclass
class SCMExplanation:
    """Ranked causes of an outcome of a user SCM.

    Attributes
    ----------
    outcome : str or dict
        The continuous site explained, or the ``{site: value}`` event.
    ranking : list of (str, Estimate)
        Causes, most responsible first: the share of the deviation each
        accounts for (continuous), or ``P(cause and necessary)`` (discrete).
    deviation : Estimate or None
        ``y - Y(every noise typical)`` for a continuous outcome.
    details : dict
        Per cause: the contribution (continuous) or the posterior and PN (discrete).
    """

    outcome: object
    ranking: list
    method: str
    deviation: Estimate | None = None
    details: dict = field(default_factory=dict, repr=False)

    @property
    def top(self) -> str:
        """The most responsible cause."""
        return self.ranking[0][0]

    @property
    def text(self) -> str:
        if self.method == "noise attribution":
            lines = [f"Why is {self.outcome} {self.deviation.mean:+.4g} from typical? Share of that deviation "
                     "each cause's noise accounts for:"]
        else:
            lines = [f"Why {self.outcome}? Causes by P(cause and necessary):"]
        for i, (name, estimate) in enumerate(self.ranking[:10], 1):
            lines.append(f"  {i}. {name}: {estimate}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text

    def as_dict(self) -> dict:
        """JSON-ready dictionary."""
        return {"outcome": self.outcome, "method": self.method,
                "deviation": None if self.deviation is None else self.deviation.as_dict(),
                "ranking": [{"cause": name, **estimate.as_dict()} for name, estimate in self.ranking]}


def typical_noise(d) -> float:
    """The median of a site's canonical noise: what "nothing unusual happened here" means.

    Examples
    --------
    >>> import pyro.distributions as dist
    >>> typical_noise(dist.Normal(3.0, 2.0)), typical_noise(dist.Bernoulli(0.2))
    (0.0, 0.5)
    """
    base = _strip(d)
    if is_deterministic(d):
        return 0.0
    if getattr(base.support, "is_discrete", False) or isinstance(base, tdist.Uniform):
        return 0.5
    if isinstance(base, tdist.Exponential):
        return math.log(2.0)
    if isinstance(base, tdist.TransformedDistribution):
        return typical_noise(base.base_dist)
    # Normal, Laplace, Cauchy, StudentT: symmetric standardised noise.
    return 0.0


def _point_attribution(model_for, info, draws: int, evidence: dict, outcome: str, candidates, *,
                       num_samples: int, level: float, ancestors=None):
    """Share and contribution of each candidate, for each of ``draws`` parameter draws.

    ``model_for(worlds)`` is the model to run with ``worlds * draws * particles`` particles laid out
    as ``(world, draw, particle)``; a model with fixed parameters ignores the layout (``draws`` = 1).
    Returns one ``(deviation, [(share, contribution) per candidate])`` per draw.
    """
    from bayes_defense.inference.base import Problem, make_query

    evidence = {k: torch.as_tensor(v, dtype=torch.get_default_dtype()) for k, v in evidence.items()}
    # Abduction is deterministic when every needed site is observed and continuous.
    exact = _exact_abduction(info, evidence, outcome, ancestors)
    particles = 1 if exact else num_samples
    batch = draws * particles
    problem = Problem(model=model_for(1), info=info, do={}, evidence=evidence, query=make_query(outcome, info),
                      counterfactual=True, num_samples=batch, level=level)
    factual = problem.run_world(evidence=evidence, num_particles=batch)
    log_weight = factual.log_weight.reshape(draws, particles)
    if not bool(torch.isfinite(log_weight).any(-1).all()):
        from bayes_defense.errors import ImpossibleEvidenceError

        raise ImpossibleEvidenceError(f"the evidence has probability zero under the model: {sorted(evidence)}")
    # Worlds: 0 = every noise typical; 1 + k = candidate k's noise typical, the rest abducted.
    worlds = len(candidates) + 1
    replay = {}
    for name in info.names:
        noise = factual.noise.get(name)
        if noise is None or info.sites[name].deterministic:
            continue
        noise = noise.reshape(-1).to(torch.get_default_dtype())
        noise = noise.expand(batch) if noise.numel() == 1 else noise
        tiled = noise.repeat(worlds)
        typical = typical_noise(factual.distributions[name])
        tiled[:batch] = typical
        if name in candidates:
            k = candidates.index(name) + 1
            tiled[k * batch:(k + 1) * batch] = typical
        replay[name] = tiled
    counter = Problem(model=model_for(worlds), info=info, do={}, evidence={}, query=problem.query,
                      counterfactual=True, num_samples=worlds * batch, level=level)
    counter_world = counter.run_world(noise=replay, use_model_observations=False, num_particles=worlds * batch)
    values = counter_world.values[outcome].reshape(-1)
    values = values.expand(worlds * batch) if values.numel() == 1 else values
    values = values.reshape(worlds, draws, particles).to(torch.float64)
    observed = float(evidence[outcome])
    deviation = observed - values[0]
    contributions = observed - values[1:]
    shares = contributions / torch.where(deviation.abs() > 0, deviation, torch.full_like(deviation, math.nan))
    answers = []
    if exact:
        # One conversion to Python floats for all draws and candidates, not one per entry.
        deviation_values, share_values = deviation[:, 0].tolist(), shares[:, :, 0].tolist()
        contribution_values = contributions[:, :, 0].tolist()
    for d in range(draws):
        if exact:
            dev = exact_estimate(deviation_values[d], is_probability=False, level=level, backend="attribution")
            out = [(exact_estimate(share_values[k][d], is_probability=False, level=level, backend="attribution"),
                    exact_estimate(contribution_values[k][d], is_probability=False, level=level,
                                   backend="attribution")) for k in range(len(candidates))]
        else:
            weights = log_weight[d]
            dev = weighted_estimate(deviation[d], weights, is_probability=False, level=level,
                                    backend="attribution")
            share = torch.nan_to_num(shares[:, d], nan=0.0)
            out = [(weighted_estimate(share[k], weights, is_probability=False, level=level, backend="attribution"),
                    weighted_estimate(contributions[k, d], weights, is_probability=False, level=level,
                                      backend="attribution"))
                   for k in range(len(candidates))]
        answers.append((dev, out))
    return answers


def _batched_graph_draws(model):
    """For a fitted :func:`from_graph` model: ``(GraphSCM, {site: (draws, ...) tensor})``, else None.

    Its draws then run in one batch (the parameters become per-particle tensors) instead of one model
    run per draw.
    """
    from bayes_defense.models.graph import GraphSCM, _PointSCM

    draws = getattr(model, "parameter_models", None)
    if not draws or not all(isinstance(m, _PointSCM) for m in draws):
        return None
    scm = draws[0].scm
    if not isinstance(scm, GraphSCM) or any(m.scm is not scm for m in draws):
        return None
    try:
        return _BATCHED[model]
    except (KeyError, TypeError):
        pass
    batched = scm, {name: torch.stack([m.parameters[name] for m in draws]) for name in scm.parameter_sites}, {}
    try:
        _BATCHED[model] = batched
    except TypeError:  # not weak-referenceable: no cache
        pass
    return batched


#: Per fitted model: its stacked draws and the tiled point models built from them (keyed by layout),
#: so that repeated explanations of one fitted model do not rebuild them.
_BATCHED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _exact_abduction(info, evidence, outcome, ancestors=None) -> bool:
    needed = {outcome} | set(_ancestors(info.graph(), outcome) if ancestors is None else ancestors)
    return all(name in evidence and not info.sites[name].discrete for name in needed
               if not info.sites[name].deterministic)


def _ancestors(graph, node) -> list:
    import networkx as nx

    return list(nx.ancestors(graph, node))


def attribute(model, evidence: dict, outcome: str, *, candidates=None, num_samples: int = 2000,
              level: float = 0.9, seed: int | None = 0) -> SCMExplanation:
    """Rank the upstream causes of a continuous site's deviation from typical (see the module docstring).

    Parameters
    ----------
    model : callable
        A Pyro SCM, or a fitted one (``posterior.model()``), answered per draw and pooled.
    evidence : dict
        ``{site: value}`` observed in the incident; must include ``outcome``.
    outcome : str
        The continuous site to explain.
    candidates : list of str, optional
        Causes to score (default: ``outcome`` and all its ancestors).
    num_samples : int
        Particles when abduction is not exact (discrete or unobserved ancestors).
    level : float
        Interval coverage.
    seed : int, optional
        Seed of the particles; the global generator is restored afterwards.

    Returns
    -------
    SCMExplanation

    Examples
    --------
    A fault injected at ``db`` shows in ``api`` and ``web`` too; the blame goes to ``db``:

    >>> import pyro, pyro.distributions as dist
    >>> def service():
    ...     db = pyro.sample("db", dist.Normal(10.0, 1.0))
    ...     api = pyro.sample("api", dist.Normal(5.0 + db, 1.0))
    ...     pyro.sample("web", dist.Normal(2.0 + api, 1.0))
    >>> result = attribute(service, {"db": 18.0, "api": 24.0, "web": 26.0}, "web")
    >>> [(cause, round(share.mean, 3)) for cause, share in result.ranking]
    [('db', 0.889), ('api', 0.111), ('web', 0.0)]
    """
    from bayes_defense.estimate import combine_draws
    from bayes_defense.fitting.scm import parameter_models
    from bayes_defense.inference.base import seeded, single_threaded

    if not isinstance(outcome, str):
        raise InvalidInputError(f"outcome must be a site name for a continuous outcome; got {outcome!r}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise InvalidInputError(f"num_samples must be a positive integer; got {num_samples!r}")
    info = model_info(model)
    evidence = info.check_names(evidence, "evidence")
    info.check_names({outcome: None}, "outcome")
    site = info.sites[outcome]
    if site.discrete or not site.scalar:
        raise InvalidInputError(f"outcome {outcome!r} is {'discrete' if site.discrete else 'not scalar'}; "
                                f"explain a discrete outcome with a {{site: value}} dict, for example "
                                f"{{{outcome!r}: 1}}")
    if outcome not in evidence:
        raise InvalidInputError(f"the evidence must include the outcome's observed value: add {outcome!r} to it")
    upstream = set(_ancestors(info.graph(), outcome))
    if candidates is None:
        candidates = [name for name in info.names if (name == outcome or name in upstream)
                      and not info.sites[name].deterministic]
    else:
        candidates = list(info.check_names({c: None for c in candidates}, "candidates"))
    batched = _batched_graph_draws(model)
    with seeded(seed), single_threaded(), torch.no_grad():
        if batched is not None:
            scm, stacked, tiled = batched
            draws = next(iter(stacked.values())).shape[0]
            particles = 1 if _exact_abduction(info, evidence, outcome, upstream) else num_samples

            def model_for(worlds, _stacked=stacked, _particles=particles):
                # Layout (world, draw, particle): each parameter row repeated per particle, tiled per world.
                key = (worlds, _particles)
                if key not in tiled:
                    tiled[key] = scm.with_parameters({name: value.repeat_interleave(_particles, 0).repeat(
                        (worlds,) + (1,) * (value.dim() - 1)) for name, value in _stacked.items()})
                return tiled[key]

            answers = _point_attribution(model_for, model_info(model.parameter_models[0]), draws, evidence,
                                         outcome, candidates, num_samples=num_samples, level=level,
                                         ancestors=upstream)
        else:
            answers = []
            for m in parameter_models(model) or [model]:
                answers += _point_attribution(lambda worlds, _m=m: _m, model_info(m), 1, evidence, outcome,
                                              candidates, num_samples=num_samples, level=level,
                                              ancestors=upstream)
    if len(answers) == 1:
        deviation, scored = answers[0]
    else:
        deviation = combine_draws([a[0] for a in answers], level=level)
        scored = [(combine_draws([a[1][k][0] for a in answers], level=level),
                   combine_draws([a[1][k][1] for a in answers], level=level)) for k in range(len(candidates))]
    order = sorted(range(len(candidates)), key=lambda k: (-scored[k][0].mean, candidates[k]))
    ranking = [(candidates[k], scored[k][0]) for k in order]
    details = {candidates[k]: {"share": scored[k][0], "contribution": scored[k][1]} for k in order}
    return SCMExplanation(outcome, ranking, "noise attribution", deviation, details)


def necessity_ranking(model, evidence: dict, outcome: dict, *, candidates=None, level: float = 0.9,
                      backend: str = "auto", num_samples: int = 10_000, seed: int | None = 0) -> SCMExplanation:
    """Rank discrete upstream causes of ``outcome`` by ``P(cause | evidence, outcome) * PN``.

    Each candidate is a discrete ancestor ``X`` of the outcome's sites,
    taken at its observed value, or else at its most probable value given
    the evidence and the outcome; its alternative is the other value of a
    binary site, or else the site's most probable value a priori that
    differs. ``PN = P(outcome would not hold had X taken the alternative |
    X, outcome, evidence)``.

    Examples
    --------
    >>> import pyro, pyro.distributions as dist
    >>> def squad():
    ...     order = pyro.sample("order", dist.Bernoulli(0.7))
    ...     a = pyro.sample("A", dist.Bernoulli(0.5 + 0.4 * order))
    ...     b = pyro.sample("B", dist.Bernoulli(0.1 * order))
    ...     pyro.sample("dead", dist.Bernoulli(1 - (1 - a) * (1 - b)))
    >>> result = necessity_ranking(squad, {"A": 1.0, "B": 0.0}, {"dead": 1.0})
    >>> result.top, round(result.ranking[0][1].mean, 6)
    ('A', 1.0)
    """
    from bayes_defense.causal.queries import intervene, probability_of_necessity
    from bayes_defense.estimate import Probability, combine_draws
    from bayes_defense.fitting.scm import parameter_models

    info = model_info(model)
    evidence = info.check_names(evidence, "evidence")
    if not isinstance(outcome, dict) or not outcome:
        raise InvalidInputError(f"outcome must be a non-empty {{site: value}} dict; got {outcome!r}")
    outcome = info.check_names(outcome, "outcome")
    graph = info.graph()
    upstream = set()
    for name in outcome:
        upstream |= set(_ancestors(graph, name))
    if candidates is None:
        candidates = [n for n in info.names if n in upstream and info.sites[n].discrete and n not in outcome]
    else:
        candidates = list(info.check_names({c: None for c in candidates}, "candidates"))
    if not candidates:
        raise InvalidInputError(f"the outcome {outcome} has no discrete upstream site to blame")
    options = {"backend": backend, "num_samples": num_samples, "level": level, "seed": seed}
    models = parameter_models(model) or [model]
    ranking, details = [], {}
    for name in candidates:
        values = _support(info.sites[name])
        if name in evidence:
            value = float(evidence[name])
            posterior_draws = [Probability(1.0, 1.0, 1.0, level=level, backend="evidence")] * len(models)
        else:
            given = {**evidence, **outcome}
            probabilities = [intervene(model, {}, {name: v}, evidence=given, **options) for v in values]
            value = values[max(range(len(values)), key=lambda i: probabilities[i].mean)]
            posterior_draws = [intervene(m, {}, {name: value}, evidence=given, **options) for m in models]
        alternative = _alternative(model, info, name, value, values, options)
        rest = {k: v for k, v in evidence.items() if k != name}
        necessity_draws = [probability_of_necessity(m, {name: value}, {name: alternative}, outcome, evidence=rest,
                                                    **options) for m in models]
        scores = [Probability(p.mean * n.mean, p.lower * n.lower, p.upper * n.upper, level=level,
                              backend=n.backend) for p, n in zip(posterior_draws, necessity_draws, strict=True)]
        pool = (lambda xs: xs[0]) if len(models) == 1 else (lambda xs: combine_draws(xs, level=level))
        score = pool(scores)
        ranking.append((name, score))
        details[name] = {"site": name, "value": value, "alternative": alternative,
                          "posterior": pool(posterior_draws), "necessity": pool(necessity_draws)}
    ranking.sort(key=lambda item: -item[1].mean)
    return SCMExplanation(dict(outcome), ranking, "necessity", None, details)


def _support(site) -> list[float]:
    d = _strip(site.fn)
    if isinstance(d, dist.Bernoulli):
        return [0.0, 1.0]
    if isinstance(d, tdist.Categorical):
        return [float(k) for k in range(d.probs.shape[-1])]
    if getattr(d, "has_enumerate_support", False):
        return [float(v) for v in d.enumerate_support(expand=False).reshape(-1).tolist()]
    raise InvalidInputError(f"site {site.name!r} ({site.distribution}) has no finite support to choose an "
                            "alternative from; pass candidates= without it")


def _alternative(model, info, name, value, values, options) -> float:
    others = [v for v in values if v != value]
    if len(others) == 1:
        return others[0]
    from bayes_defense.causal.queries import intervene

    prior = [intervene(model, {}, {name: v}, **options).mean for v in others]
    return others[max(range(len(others)), key=prior.__getitem__)]

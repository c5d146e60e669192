"""Exact inference for cluster models by the model's factorisation (numpy, vectorised over parameter draws).

The cluster SCM (:mod:`bayes_defense.models.cluster`) has a structure that
generic variable elimination does not see, and this engine sums it out in a
fixed order:

- the root state is ``(attacker, admission_open, peer_table_exposed)``; every
  footing and precondition site is a function of it, and the attacker
  matters to the rest only through its class (none, primary, backup), the
  telemetry, the ``rk.faulty`` flags and whether it is the isolated replica;
- all replicas' telemetry has the same tables, so the evidence of every
  replica folds into one factor over ``(attacker, precursors)`` (256
  precursor configurations), computed in log space in one vectorised pass;
- only root states and precursor configurations of non-zero prior
  probability are enumerated (about 370 instead of 3072);
- given the root state, the precursors and the controls, the eight attack
  chains (precursor, executing, success) are independent; the noisy-OR
  outcomes couple them, and their evidence is expanded into a short sum of
  products over attacks (P(O = 0 | S) = (1 - b) prod_A (1 - w_A S_A));
- a counterfactual (twin network with the package's monotone coupling) keeps
  the same shape: each attack's chain becomes a factual/counterfactual pair,
  and P(O = o, O' = o') is again a sum of products because the two worlds'
  success vectors are ordered when a single site is intervened on.

Leave-one-out products over attacks give every attack-local marginal (and
the tables that planning and explanation need) from one pass. Parameter
draws (a fitted posterior, ``theta_draw``) are a leading axis throughout:
each draw's answer and its evidence likelihood come out together, so the
mean over draws equals the exact answer of the model with ``theta_draw``
summed out, and the spread across draws is the interval.

The tests check every query against the generic ``exact`` backend, against
importance sampling, and against pgmpy.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator

import numpy as np

from bayes_defense.errors import ImpossibleEvidenceError, InvalidInputError, UnknownSiteError
from bayes_defense.estimate import Estimate, Probability, exact_estimate
from bayes_defense.models import tables
from bayes_defense.models.catalogue import TELEMETRY

__all__ = ["Engine", "engine", "Result", "draw_estimate"]

OUTCOME_NAMES, CONTROL_SITES = tables.OUTCOME_NAMES, tables.CONTROL_SITES
_TELEMETRY_NAMES = tables.TELEMETRY_NAMES
_CUT_PAIRS = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])               # (factual cut, counterfactual cut)
_CAE = np.array(list(itertools.product(range(3), range(2), range(2))))  # (12, 3): attacker class, adm, exp
_FOOTING_SITES = tables.FOOTING_SITES
# Pieces one engine keeps (a few kilobytes each; the explanation's leave-one-out products up to about a megabyte).
_CACHE_ENTRIES = 512
_PLAIN_TYPES = {int, float, bool}
_INDICATOR_VALUES = {0, 1}


def _couple(p, q):
    """Monotone coupling of Bernoulli(p) and Bernoulli(q): last two axes (x, x')."""
    low, high = np.minimum(p, q), np.maximum(p, q)
    return np.stack([np.stack([1.0 - high, q - low], -1), np.stack([p - low, low], -1)], -2)


def _twin_level(site, p, p_cf, do, cluster, cf):
    """Joint of a Bernoulli site in the factual and counterfactual worlds: do, coupling, evidence."""
    if site in do:
        p = np.full_like(p, do[site])
    if not cf:
        p_cf = p
    if site in cf:
        p_cf = np.full_like(p_cf, cf[site])
    joint = _couple(p, p_cf)
    if site in cluster:
        joint = joint * (np.arange(2) == cluster[site])[:, None]
    return joint


class _Structure:
    """The cached, telemetry-independent pieces of a pass (see :meth:`Engine._structure`)."""

    def __init__(self, **pieces):
        self.__dict__.update(pieces)


class Result:
    """Unnormalised per-draw answers of one pass: ``total[z]`` and named outputs ``[z, ...]``.

    ``scale[z]`` is the log factor taken out of draw z's telemetry likelihood;
    draw weights are ``exp(scale) * total`` (the draws have equal prior mass).
    """

    def __init__(self, total, scale, outputs):
        self.total, self.scale, self.outputs = total, scale, outputs

    def weights(self, evidence=None) -> np.ndarray:
        """Posterior weights of the draws given the evidence (sum to one)."""
        if self.total.shape == (1,):
            # One parameter draw (a model without posterior draws): its weight is 1 if it can
            # produce the evidence at all.
            if not (math.isfinite(self.scale[0]) and self.total[0] > 0):
                raise ImpossibleEvidenceError(f"the evidence has probability zero under the model: {evidence}")
            return np.ones(1)
        finite = np.isfinite(self.scale) & (self.total > 0)
        if not finite.any():
            raise ImpossibleEvidenceError(f"the evidence has probability zero under the model: {evidence}")
        top = self.scale[finite].max()
        w = np.where(finite, np.exp(np.where(finite, self.scale, top) - top) * np.where(finite, self.total, 0.0),
                     0.0)
        return w / w.sum()

    def conditional(self, name: str) -> np.ndarray:
        """Output ``name`` divided by each draw's total (0 where the draw cannot produce the evidence)."""
        out = self.outputs[name]
        total = self.total.reshape((-1,) + (1,) * (out.ndim - 1))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, out / np.where(total > 0, total, 1.0), 0.0)


def _code_counts(codes, width) -> np.ndarray:
    """How many replicas made each observation, from their bit codes."""
    codes = np.fromiter(codes, dtype=np.int64)
    return ((codes[:, None] >> np.arange(width)) & 1).sum(0).astype(np.float64)


def fast_probability(value: float, level: float = 0.9, backend: str = "exact") -> Probability:
    """An exact :class:`Probability` (zero-width interval) for a value already in [0, 1] up to rounding.

    Examples
    --------
    >>> from bayes_defense.models.engine import fast_probability
    >>> p = fast_probability(0.25)
    >>> (p.lower, p.mean, p.upper, p.backend)
    (0.25, 0.25, 0.25, 'exact')
    """
    value = min(1.0, max(0.0, float(value)))
    return Probability(mean=value, lower=value, upper=value, level=level, ess=math.inf, backend=backend,
                       details={})


def _divide(values, total):
    total = total.reshape((-1,) + (1,) * (np.ndim(values) - 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, values / np.where(total > 0, total, 1.0), 0.0)


def draw_estimate(values, weights, *, level: float = 0.9, backend: str = "exact",
                  is_probability: bool = True) -> Estimate:
    """An estimate from per-draw exact answers: weighted mean, weighted quantiles across draws.

    With one draw the answer is exact (zero-width interval). Probabilities are
    clipped to [0, 1] (float rounding) and come back as :class:`Probability`.

    Examples
    --------
    >>> from bayes_defense.models.engine import draw_estimate
    >>> p = draw_estimate([0.2, 0.4], [0.5, 0.5])
    >>> round(p.mean, 6), p.lower, p.upper
    (0.3, 0.2, 0.4)
    """
    if not 0.0 < level < 1.0:
        raise InvalidInputError(f"level must lie strictly between 0 and 1 (for example 0.9); got {level!r}")
    if len(values) == 1 and is_probability:
        return fast_probability(float(values[0]), level, backend)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if is_probability:
        values = np.clip(values, 0.0, 1.0)
    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    mean = float(np.dot(values, weights))
    if is_probability:
        mean = min(1.0, max(0.0, mean))
    if values.size == 1:
        return exact_estimate(mean, is_probability=is_probability, level=level, backend=backend)
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    cumulative /= cumulative[-1]
    low = float(values[order][min(np.searchsorted(cumulative, (1 - level) / 2), values.size - 1)])
    high = float(values[order][min(np.searchsorted(cumulative, (1 + level) / 2), values.size - 1)])
    ess = float(weights.sum() ** 2 / max((weights ** 2).sum(), 1e-300))
    kind = Probability if is_probability else Estimate
    return kind(mean=mean, lower=min(low, mean), upper=max(high, mean), level=level, ess=ess,
                backend=backend, details={"draws": int(values.size)})


class Engine:
    """Exact inference on one indicator-mode :class:`~bayes_defense.models.ClusterModel`."""

    def __init__(self, model):
        if model.telemetry != "indicators":
            raise InvalidInputError("the exact cluster engine needs telemetry='indicators'; "
                                    "use bd.intervene(..., backend='importance') for continuous telemetry")
        self.model = model
        n = model.n_nodes
        self.n = n
        self.draws = model.n_draws
        # The attacks of the model's structure (the catalogue's and users'): every per-attack axis.
        structure = model.structure
        self.structure = structure
        self.attack_names = structure.attack_names
        self.n_attacks = len(self.attack_names)
        self.bits = structure.precursor_configurations          # (2 ** A, A): the precursors of each configuration
        # Efficacy slots (control sites, then the isolation cut) that mitigate each attack.
        self.slots_of_attack = tuple(frozenset(tables.EFFICACY_SLOTS[key] for key, _ in structure.mitigations(a))
                                     for a in self.attack_names)
        table = model.parameter_tables
        self.p_attempt, self.p_execute = table.p_attempt, table.p_execute      # (z, A)
        self.p_success = table.success                                          # colluders included
        self.efficacy, self.impact = table.efficacy, table.impact               # (z, A, 7), (z, 4, A)
        self.outcome_baseline = table.outcome_baseline                          # (z, 4)
        self.prior_inside, self.prior_adm = table.prior_inside, table.prior_admission
        self.prior_exposed, self.prior_isolated = table.prior_exposed, table.prior_isolated
        self.prior_controls = table.prior_controls                              # (z, 6)
        self.join_on = table.join_on                                            # (z, 2 ** A)
        telemetry_on = table.telemetry_on                                       # (z, T, faulty, 2 ** A)
        # Zero probabilities become a huge finite penalty so that unobserved entries (weight 0) stay 0.
        with np.errstate(divide="ignore"):
            self._log_on = np.maximum(np.log(telemetry_on), -1e250)     # (z, T, 2, 2 ** A)
            self._log_off = np.maximum(np.log1p(-telemetry_on), -1e250)
        # (T, z * 2 * 256) for one matrix product per query.
        self._log_on_flat = np.ascontiguousarray(np.moveaxis(self._log_on, 1, 0)).reshape(len(TELEMETRY), -1)
        self._log_off_flat = np.ascontiguousarray(np.moveaxis(self._log_off, 1, 0)).reshape(len(TELEMETRY), -1)
        classes = np.minimum(np.arange(n + 1), 2)
        self.class_onehot = (classes[:, None] == np.arange(3)[None, :]).astype(np.float64)   # (N, 3)
        self.classes = classes
        self.sites = set(model.sites)
        self._cache: dict = {}
        self._telemetry_memo: dict = {}
        self._layouts: dict = {}
        self.cluster_sites = [s for s in model.sites if not (s[:1] == "r" and s.split(".")[0][1:].isdigit())]

    def _value(self, name, value, role):
        try:
            x = float(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError) as error:
            raise InvalidInputError(f"{role} {name}={value!r}: expected a number") from error
        if name in ("attacker", "isolated"):
            if not (x.is_integer() and 0 <= x <= self.n):
                raise ImpossibleEvidenceError(f"{role} {name}={x:g} is outside the support 0..{self.n} of site "
                                              f"{name!r} (0 none, k + 1 replica k)")
        elif name == "theta_draw":
            if not (x.is_integer() and 0 <= x < self.draws):
                raise ImpossibleEvidenceError(f"{role} theta_draw={x:g} is outside 0..{self.draws - 1}")
        elif x not in (0.0, 1.0):
            raise ImpossibleEvidenceError(f"{role} {name}={x:g}: indicator sites take 0 or 1")
        return int(x)

    def split_evidence(self, evidence, role="evidence"):
        """Checked evidence as ``(cluster, telemetry, faulty)``, the form :meth:`run` takes.

        ``cluster`` is ``{site: 0/1 or index}`` for cluster-level sites,
        ``telemetry`` ``{(replica, signal index): 0/1}`` and ``faulty``
        ``{replica: 0/1}``. Unknown names raise listing the valid ones.
        """
        if not evidence:
            return {}, {}, {}
        names = tuple(evidence)
        layout = self._layouts.get(names)
        if layout is None:
            layout = self._layout(names, role)
        positions, keys, rest = layout
        values = tuple(evidence.values())
        observed = values if len(positions) == len(values) else (
            operator.itemgetter(*positions)(values) if len(positions) > 1 else tuple(values[i] for i in positions))
        # Telemetry given as plain 0/1 numbers (the common case: every replica's indicators) is taken
        # in one step; anything else is checked value by value.
        if set(map(type, observed)) <= _PLAIN_TYPES and set(observed) <= _INDICATOR_VALUES:
            telemetry = dict(zip(keys, map(int, observed), strict=True))
        else:
            telemetry = {key: self._value(names[i], values[i], role) for i, key in zip(positions, keys, strict=True)}
        cluster, faulty = {}, {}
        for i, kind, target in rest:
            x = self._value(names[i], values[i], role)
            if kind == "cluster":
                cluster[target] = x
            else:
                faulty[target] = x
        return cluster, telemetry, faulty

    def _layout(self, names: tuple, role: str) -> tuple:
        """Where each name of an evidence pattern goes: telemetry positions and keys, and the other sites."""
        positions, keys, rest = [], [], []
        for i, name in enumerate(names):
            if name in self.sites and not (name[:1] == "r" and "." in name and name.split(".")[0][1:].isdigit()):
                rest.append((i, "cluster", name))
                continue
            replica, t = self.model.parse_replica_site(name, role=role)
            if t == "faulty":
                rest.append((i, "faulty", replica))
            else:
                positions.append(i)
                keys.append((replica, _TELEMETRY_NAMES.index(t)))
        layout = (tuple(positions), tuple(keys), tuple(rest))
        if len(self._layouts) >= _CACHE_ENTRIES:
            del self._layouts[next(iter(self._layouts))]
        self._layouts[names] = layout
        return layout

    def check_do(self, do, role="do") -> dict:
        out = {}
        for name, value in (do or {}).items():
            if name not in self.sites:
                if str(name)[:1] == "r" and "." in str(name):
                    self.model.parse_replica_site(name, role=role)
                raise UnknownSiteError(self.model.unknown_site_message(name, role))
            if name.startswith("r") and name.split(".")[0][1:].isdigit() or name in OUTCOME_NAMES \
                    or name == "join_rate":
                raise InvalidInputError(
                    f"{role}({name}) acts on a leaf of the cluster model (telemetry, an outcome or join_rate); "
                    "nothing upstream changes. Ask bd.intervene(model, ...) for that query")
            out[name] = self._value(name, value, role)
        return out


    def site_kind(self, name: str, role: str = "query") -> str:
        """Which output of :meth:`run` answers a query on ``name`` (raises for sites it does not answer)."""
        if name not in self.sites or name.split(".")[0][1:].isdigit() and name[:1] == "r":
            if name[:1] == "r" and "." in name:
                self.model.parse_replica_site(name, role=role)
                raise InvalidInputError(f"{role} {name!r}: the cluster engine answers cluster-level sites; use "
                                        "bd.intervene(model, ...) for per-replica telemetry")
            raise UnknownSiteError(self.model.unknown_site_message(name, role))
        if name == "attacker":
            return "attacker"
        if name in ("admission_open", "peer_table_exposed") or name in _FOOTING_SITES:
            return "cae"
        if name in OUTCOME_NAMES or name == "join_rate":
            return "leaf"
        attack, _, level = name.partition(".")
        if attack in self.structure.specs:
            return {"precondition": "cae", "precursor": "precursors"}.get(level, "local")
        raise InvalidInputError(f"{role} {name!r}: the cluster engine does not report controls or the draw index; "
                                "use bd.intervene(model, ...) for that query")

    def query(self, sites, *, do=None, evidence=None) -> tuple[dict, np.ndarray]:
        """Per-draw posterior probabilities ``({site: values (z,) or (z, N) for attacker}, weights (z,))``."""
        do = self.check_do(do)
        parsed = self.split_evidence(evidence)
        sites = list(sites)
        fact = {**parsed[0], **do}
        shape_key = ("query", tuple(sites), tuple(sorted(fact.items())))
        kinds, outputs, local_for, cae_sites, indicators = self.cached(
            shape_key, functools.partial(self._query_shape, sites, fact))
        result = self.run(do=do, evidence=parsed, outputs=outputs, local_for=local_for)
        weights = result.weights(evidence)
        values = {}
        if cae_sites:
            # One product for every site that is a function of the root state.
            for site, column in zip(cae_sites, (result.conditional("cae") @ indicators).T, strict=True):
                values[site] = column
        for site, kind in kinds.items():
            if kind == "attacker":
                values[site] = result.conditional("attacker")
            elif kind == "cae":
                continue
            elif kind == "precursors":
                values[site] = result.conditional("precursors")[:, self.attack_names.index(site.split(".")[0])]
            elif kind == "local":
                attack, _, level = site.partition(".")
                local = _divide(result.outputs["local"][self.attack_names.index(attack)], result.total)  # (z, x, e, g, u)
                values[site] = local.sum((1, 3, 4))[:, 1] if level == "executing" else local.sum((1, 2, 4))[:, 1]
            elif site in parsed[0]:
                values[site] = np.full(self.draws, float(parsed[0][site]))
            else:
                extra = self.run(do=do, evidence=({**parsed[0], site: 1}, parsed[1], parsed[2]))
                with np.errstate(invalid="ignore", divide="ignore"):
                    values[site] = np.where(result.total > 0, extra.total / np.where(result.total > 0,
                                                                                      result.total, 1.0), 0.0)
        return values, weights

    def precondition_indicator(self, attack: str, fixed: dict) -> np.ndarray:
        """``attack.precondition`` on each of the 12 root states of output ``"cae"`` (after ``fixed`` do/evidence)."""
        def build():
            footing = self._footing(_CAE[:, 0], _CAE[:, 1], _CAE[:, 2], fixed)
            return {a: self._precondition(a, footing, fixed).astype(np.float64) for a in self.attack_names}

        return self.cached(("preconditions", tuple(sorted(fixed.items()))), build)[attack]

    def _query_shape(self, sites, fact):
        kinds = {site: self.site_kind(site) for site in sites}
        outputs = frozenset(k for k in kinds.values() if k != "leaf")
        local_for = tuple(sorted({site.split(".")[0] for site, kind in kinds.items() if kind == "local"}))
        cae_sites = [site for site, kind in kinds.items() if kind == "cae"]
        footing = self._footing(_CAE[:, 0], _CAE[:, 1], _CAE[:, 2], fact)
        columns = []
        for site in cae_sites:
            if site.endswith(".precondition"):
                columns.append(self._precondition(site.split(".")[0], footing, fact))
            else:
                indicator = {"admission_open": _CAE[:, 1], "peer_table_exposed": _CAE[:, 2]}.get(site)
                columns.append(footing[site] if indicator is None else indicator)
        indicators = np.stack(columns, 1).astype(np.float64) if columns else None
        return kinds, outputs, local_for, cae_sites, indicators

    def marginals(self, sites, *, do=None, evidence=None) -> dict:
        """Posterior marginals ``{site: P(site = 1)}`` averaged over draws (a vector for ``attacker``)."""
        values, weights = self.query(sites, do=do, evidence=evidence)
        out = {}
        for site, v in values.items():
            mean = np.tensordot(weights, v, axes=(0, 0))
            out[site] = mean if np.ndim(mean) else float(mean)
        return out

    def estimates(self, sites, *, do=None, evidence=None, level: float = 0.9) -> dict:
        """``{site: Probability}``: exact per draw, the spread across draws as the interval."""
        values, weights = self.query(sites, do=do, evidence=evidence)
        return {site: draw_estimate(v, weights, level=level) for site, v in values.items() if v.ndim == 1}

    def counterfactual_outcomes(self, evidence, do, outcomes) -> tuple[dict, np.ndarray]:
        """Per draw, P(outcome would be 1 under ``do`` | evidence) for each outcome (one intervention)."""
        do = self.check_do(do)
        if len(do) != 1:
            raise InvalidInputError(f"the cluster engine's counterfactuals take one intervention; got {sorted(do)}")
        parsed = self.split_evidence(evidence)
        base = self.run(evidence=parsed)
        weights = base.weights(evidence)
        values = {}
        for outcome in outcomes:
            if outcome not in OUTCOME_NAMES:
                raise InvalidInputError(f"outcome {outcome!r} is not a cluster outcome; valid outcomes: "
                                        f"{', '.join(OUTCOME_NAMES)}")
            result = self.run(evidence=parsed, cf=do, outcome_cf={outcome: 1})
            with np.errstate(invalid="ignore", divide="ignore"):
                values[outcome] = np.where(base.total > 0, result.total / np.where(base.total > 0, base.total, 1.0),
                                           0.0)
        return values, weights

    def executing_table(self, evidence, do, isolate) -> tuple[np.ndarray, np.ndarray]:
        """Per draw, ``P(A.executing = 1, [attacker == isolate] = h | evidence, do)`` as ``(z, 8, 2)``."""
        do = self.check_do(do)
        parsed = self.split_evidence(evidence)
        result = self.run(do=do, evidence=parsed, outputs=("local",), next_isolated=isolate)
        weights = result.weights(evidence)
        local = np.stack([result.outputs["local"][i] for i in range(self.n_attacks)], 1)  # (z, 8, x, e, g, u)
        by_pair = _divide(local[:, :, :, 1].sum((2, 3)), result.total)      # (z, 8, u): executing
        hit = _CUT_PAIRS[result.outputs["pairs"], 1]
        table = np.stack([by_pair[:, :, hit == h].sum(-1) for h in (0, 1)], -1)
        return table, weights

    def run(self, *, do=None, evidence=None, cf=None, outcome_cf=None, terms=None, outputs=(), next_isolated=None,
            local_for=None):
        """One exact pass; see the module docstring.

        Parameters
        ----------
        do : dict
            Factual-world interventions (``{site: value}``, checked).
        evidence : tuple
            ``(cluster, telemetry, faulty)`` from :meth:`split_evidence`.
        cf : dict, optional
            One counterfactual-world intervention ``{site: value}`` (a twin network).
        outcome_cf : dict, optional
            ``{outcome: value}`` required in the counterfactual world.
        terms : list, optional
            Replace the outcome expansion by these ``(coefficient, {outcome: kind})`` terms.
        outputs : iterable of str
            Any of ``"cae"``, ``"precursors"``, ``"attacker"``, ``"local"``, ``"loo"``.
        local_for : iterable of str, optional
            Attacks whose local joint (pre, P, E, S, cut pair) ``"local"`` reports (default all).
        next_isolated : int, optional
            Without ``cf``: make the second cut of each pair ``[attacker == next_isolated]``
            (whether isolating that value would cut the attacker off in the next window).
        """
        do = do or {}
        cluster, telemetry, faulty = evidence
        cf = cf or {}
        outcome_cf = outcome_cf or {}
        outputs = frozenset(outputs)
        if cf and do:
            raise InvalidInputError("a counterfactual pass takes no factual intervention")
        terms_key = None if terms is None else tuple(
            (np.asarray(c).tobytes(), tuple(sorted(k.items()))) for c, k in terms)
        key = ("structure", tuple(sorted(do.items())), tuple(sorted(cluster.items())), tuple(sorted(cf.items())),
               tuple(sorted(outcome_cf.items())), terms_key, outputs, next_isolated,
               None if local_for is None else tuple(sorted(local_for)))
        st = self.cached(key, lambda: self._structure(do, cluster, cf, outcome_cf, terms, outputs, next_isolated,
                                                        local_for))
        z, N = self.draws, self.n + 1
        prior_a = st.prior_a
        if faulty:
            mask = np.ones(N)
            for replica, value in faulty.items():
                mask = mask * ((np.arange(N) == replica + 1) == bool(value))
            prior_a = prior_a * mask
        # Telemetry and join_rate: a factor over (attacker, precursor configuration), log scale per draw,
        # one row per observation pattern.
        pattern, factor, scale, members = self._telemetry_cached(telemetry, prior_a)          # members (patterns, N)
        if st.join is not None:
            factor = factor * st.join[:, None, :]
        C = st.C
        M = np.matmul(members, (self.class_onehot[None, :, :, None] * (C * prior_a[:, :, None])[:, :, None, :]
                                ).reshape(z, N, -1))                                            # (z, pat, 3u)
        U = np.matmul(np.swapaxes(M, 1, 2), factor).reshape(z, 3, st.pairs.size, self.bits.shape[0])
        B = st.cae_weight[:, :, None] * U[:, st.state_class, :, st.p_idx].transpose(1, 0, 2)   # (z, ns, u)
        B_f = B if st.G.shape[3] > 1 else B.sum(2, keepdims=True)
        GB = st.G * B_f[None]                                                # (t, z, ns, u|1)
        per_term = GB.sum((2, 3)) * st.draw_weight                           # (t, z)
        total = (st.coef * per_term).sum(0)
        out = {"term_totals": per_term}
        if outputs & {"cae", "precursors"}:
            by_state = np.einsum("tz,tzn->zn", st.coef, GB.sum(3)) * st.draw_weight[:, None]
            if "cae" in outputs:
                out["cae"] = by_state @ st.cae_onehot                                            # (z, 12)
            if "precursors" in outputs:
                out["precursors"] = by_state @ self.bits[st.p_idx].astype(np.float64)                 # (z, 8)
        if "attacker" in outputs:
            R = (st.coef[:, :, None, None] * st.G).sum(0) * st.cae_weight[:, :, None]            # (z, ns, u|1)
            # Per observation pattern and attacker class first; replicas alike share the work.
            by_class = (R[:, :, None, :] * st.state_class_onehot[None, :, :, None]).reshape(z, R.shape[1], -1)
            Y = np.matmul(factor[:, :, st.p_idx], by_class).reshape(z, factor.shape[1], 3, R.shape[2])
            C_f = C if st.G.shape[3] > 1 else C.sum(2, keepdims=True)
            out["attacker"] = (Y[:, pattern, self.classes] * C_f).sum(2) * prior_a * st.draw_weight[:, None]
        if st.wanted:
            loc, loo = {}, {}
            full = B[None, :, :, None, :] * st.Pi[None, :, None, :, None]
            shape = (st.n_terms, z, st.cae_idx.size, st.Pi.shape[1], st.pairs.size)
            for i in st.wanted:
                rest = np.broadcast_to(st.leave_one_out[i] * full, shape)
                D = np.matmul(st.groups[i], rest.reshape(st.n_terms, z, st.cae_idx.size, -1)).reshape(
                    st.n_terms, z, 8, *shape[3:]) * st.draw_weight[None, :, None, None, None]
                loo[i] = D
                if i in st.local_for:
                    f_loc = st.local[i]
                    loc[i] = np.einsum("tzxku,tzxegku->zxegu", D * st.coef[:, :, None, None, None],
                                       np.broadcast_to(f_loc, f_loc.shape[:5] + D.shape[3:]))
            if st.local_for:
                out["local"] = loc                                                      # {i: (z, 8, 2, 2, u)}
            out["loo"] = loo
            out["pairs"], out["keep"], out["coef"] = st.pairs, st.keep, st.coef
        return Result(total, scale, out)

    def _structure(self, do, cluster, cf, outcome_cf, terms, outputs, next_isolated, local_for):
        """Everything of a pass that depends on the query's shape but not on telemetry or faulty flags."""
        twin = bool(cf)
        if twin and do:
            raise InvalidInputError("a counterfactual pass takes no factual intervention")
        z = self.draws
        draw_weight = np.ones(z)
        for source in (do, cluster):
            if "theta_draw" in source:
                draw_weight = draw_weight * (np.arange(z) == source["theta_draw"])
        fact = {**cluster, **do}

        prior_a, cae_weight, pre, pre_cf = self._roots(do, cluster, cf, fact)
        cae_idx, p_idx = self._precursor_states(pre, cae_weight, fact)
        state_class = _CAE[cae_idx, 0]
        join = None
        if "join_rate" in cluster:
            join = self.join_on if cluster["join_rate"] else 1.0 - self.join_on

        # Isolation: (z, N, cut pair) with the pairs that occur.
        C = self._cut_table(do, cluster, cf if cf else ({"isolated": next_isolated} if next_isolated is not None
                                                        else {}))                                                        # (z, N, 4)
        pairs = np.nonzero(C.max((0, 1)) > 0)[0]
        C = C[:, :, pairs]
        # Outcome terms.
        if terms is None:
            terms = self.outcome_terms(cluster, outcome_cf)
        coef = np.stack([np.broadcast_to(c, (z,)) for c, _ in terms])                              # (t, z)
        kinds = [k for _, k in terms]
        if twin and any(kind in ("min", "max") for k in kinds for kind in k.values()):
            if len(cf) != 1 or ("attacker" in cf and cf["attacker"] != 0):
                raise InvalidInputError("a counterfactual with outcomes fixed in both worlds needs one "
                                        "intervention (attacker only to 0), so that the worlds are ordered")
        G, Pi, keep_f, local, local_for, wanted, leave_one_out, groups = self._chains(
            do, cluster, cf, fact, kinds, outputs, local_for, (pre, pre_cf, cae_idx, p_idx), pairs)
        return _Structure(
            prior_a=prior_a, join=join, C=C, pairs=pairs, cae_idx=cae_idx, p_idx=p_idx, state_class=state_class,
            cae_onehot=(cae_idx[:, None] == np.arange(12)).astype(np.float64),
            cae_weight=cae_weight[:, cae_idx], state_class_onehot=(state_class[:, None] == np.arange(3)).astype(float),
            coef=coef, draw_weight=draw_weight, G=G, Pi=Pi, keep=keep_f, local=local, local_for=local_for,
            wanted=wanted, leave_one_out=leave_one_out, groups=groups, n_terms=len(terms))

    def _chains(self, do, cluster, cf, fact, kinds, outputs, local_for, states, pairs):
        """The attack chains of a pass: their product over attacks summed over the controls, and its pieces.

        Returns ``(G, Pi, keep, local, local_for, wanted, leave_one_out, groups)``: the product of the
        attacks' factors per term, draw, state and cut pair; the control weights; P(success | executing)
        per control configuration; each attack's local joint; and the leave-one-out products with their
        state groupings for the attacks the outputs ask about.
        """
        pre, pre_cf, cae_idx, p_idx = states
        twin = bool(cf)
        cut_f, cut_c = _CUT_PAIRS[pairs, 0], _CUT_PAIRS[pairs, 1]
        # Which attacks' chains reach something observed (an outcome term, their own executing or
        # success sites): only those couple through the shared controls. The others sum to one.
        touched = {o for k in kinds for o in k}
        coupled = [bool(any(self.impact[:, OUTCOME_NAMES.index(o), i].any() for o in touched)
                        or any(f"{a}.{lv}" in fact for lv in ("executing", "success")))
                   for i, a in enumerate(self.attack_names)]
        want_local = "local" in outputs
        local_for = set(range(self.n_attacks)) if local_for is None else {self.attack_names.index(a)
                                                                          for a in local_for}
        if not want_local:
            local_for = set()
        separable = not any(coupled)

        # Controls: prior (or point mass) of the configurations of the bits that matter.
        deep_attacks = [i for i in range(self.n_attacks) if coupled[i]] if not separable else sorted(local_for)
        relevant = sorted({slot for i in deep_attacks for slot in self.slots_of_attack[i]}
                          - {len(CONTROL_SITES)})
        if not separable and local_for - set(deep_attacks):
            relevant = sorted({slot for i in set(deep_attacks) | local_for for slot in self.slots_of_attack[i]}
                              - {len(CONTROL_SITES)})
        Pi, bits_f = self._controls(do, cluster, tuple(relevant))
        controls = np.nonzero(Pi.max(0) > 0)[0]
        Pi = Pi[:, controls]
        bits_f = bits_f[controls]
        bits_c = bits_f.copy()
        for j, site in enumerate(CONTROL_SITES):
            if site in cf:
                bits_c[:, j] = cf[site]
        control_key = (bits_f.tobytes(), tuple((s_, do.get(s_), cluster.get(s_)) for s_ in CONTROL_SITES))
        keep_f = self.cached(("keep", bits_f.tobytes(), cut_f.tobytes()), lambda: self._keep(bits_f, cut_f))
        keep_c = keep_f if np.array_equal(bits_c, bits_f) and np.array_equal(cut_c, cut_f) else \
            self.cached(("keep", bits_c.tobytes(), cut_c.tobytes(), "cf"), lambda: self._keep(bits_c, cut_c))
        if separable:
            # Nothing couples the attacks through the controls: each local output sums them on its own.
            Pi_total = Pi.sum(1)
            Pi_norm = Pi / np.where(Pi_total > 0, Pi_total, 1.0)[:, None]
        # Local factors and their product over attacks.
        factors, local = [], []
        for i, a in enumerate(self.attack_names):
            deep = coupled[i] or i in local_for
            own = tuple((src, f"{a}.{lv}", d.get(f"{a}.{lv}")) for src, d in (("do", do), ("ev", cluster), ("cf", cf))
                        for lv in ("precursor", "executing", "success"))
            key = ("local", i, own, twin, repr(kinds), deep, i in local_for, separable, control_key, pairs.tobytes(),
                   keep_c is keep_f, tuple(sorted(cf.items())) if keep_c is not keep_f else None)
            f_sum, f_loc = self.cached(key, functools.partial(
                self._local, i, a, do, cluster, cf, kinds, keep_f, keep_c, deep, i in local_for,
                Pi_norm if separable else None))
            idx = pre[cae_idx, i] * 4 + pre_cf[cae_idx, i] * 2 + self.bits[p_idx, i]
            factors.append((f_sum, idx))
            local.append(f_loc)
        if separable:
            Pi = Pi_total[:, None]
        gathered = [f[:, :, idx] for f, idx in factors]                       # (t, z, ns, k|1, u|1)
        F = functools.reduce(np.multiply, gathered)
        # Sum over the control axis now when no factor depends on it.
        Pi_f = Pi if F.shape[3] > 1 else Pi.sum(1, keepdims=True)
        G = (F * Pi_f[None, :, None, :, None]).sum(3)                        # (t, z, ns, u|1)
        wanted = sorted(local_for | ({i for i in range(self.n_attacks) if coupled[i]} if "loo" in outputs else set()))
        leave_one_out = {i: functools.reduce(np.multiply, [g for j, g in enumerate(gathered) if j != i],
                                             np.ones((1, 1, 1, 1, 1))) for i in wanted}
        groups = {}
        for i in wanted:
            group = np.zeros((cae_idx.size, 8))
            group[np.arange(cae_idx.size), factors[i][1]] = 1.0
            groups[i] = group.T.copy()
        return G, Pi, keep_f, local, local_for, wanted, leave_one_out, groups

    def _roots(self, do, cluster, cf, fact):
        """Root priors: ``prior_a (z, N)``, ``cae_weight (z, 12)`` and the preconditions of both worlds ``(12, 8)``.

        ``do`` puts a point mass without weight on a root; evidence multiplies its prior by an indicator.
        """
        n, N, z = self.n, self.n + 1, self.draws
        prior_a = tables.spread(self.prior_inside, n)                                           # (z, N)
        if "attacker" in do:
            prior_a = np.broadcast_to((np.arange(N) == do["attacker"]).astype(float), (z, N))
        elif "attacker" in cluster:
            prior_a = prior_a * (np.arange(N) == cluster["attacker"])

        def binary_prior(p, site):
            table = np.stack([1.0 - p, p], 1)
            if site in do:
                return np.broadcast_to(np.eye(2)[do[site]], (z, 2))
            if site in cluster:
                return table * np.eye(2)[cluster[site]]
            return table

        adm = binary_prior(self.prior_adm, "admission_open")
        exp = binary_prior(self.prior_exposed, "peer_table_exposed")
        cae_weight = adm[:, _CAE[:, 1]] * exp[:, _CAE[:, 2]]                                        # (z, 12)
        footing = self._footing(_CAE[:, 0], _CAE[:, 1], _CAE[:, 2], fact)
        for site in _FOOTING_SITES:
            if site in cluster:
                cae_weight = cae_weight * (footing[site] == cluster[site])
        pre = np.stack([self._precondition(a, footing, fact) for a in self.attack_names], 1)       # (12, A)
        for i, a in enumerate(self.attack_names):
            if f"{a}.precondition" in cluster:
                cae_weight = cae_weight * (pre[:, i] == cluster[f"{a}.precondition"])
        if cf:
            cf_class = np.full(12, min(cf["attacker"], 2)) if "attacker" in cf else _CAE[:, 0]
            cf_adm = np.full(12, cf["admission_open"]) if "admission_open" in cf else _CAE[:, 1]
            cf_exp = np.full(12, cf["peer_table_exposed"]) if "peer_table_exposed" in cf else _CAE[:, 2]
            cf_footing = self._footing(cf_class, cf_adm, cf_exp, cf)
            pre_cf = np.stack([self._precondition(a, cf_footing, cf) for a in self.attack_names], 1)
        else:
            pre_cf = pre
        return prior_a, cae_weight, pre, pre_cf

    def _precursor_states(self, pre, cae_weight, fact):
        """Root combinations and precursor configurations of non-zero prior mass: ``(cae_idx, p_idx)``."""
        allowed = np.ones((12, self.n_attacks, 2), dtype=bool)
        allowed[:, :, 1] = pre.astype(bool)
        for i, a in enumerate(self.attack_names):
            site = f"{a}.precursor"
            if site in fact:
                allowed[:, i, :] = False
                allowed[:, i, fact[site]] = True
        allowed &= (cae_weight.max(0) > 0)[:, None, None]
        valid = np.ones((12, self.bits.shape[0]), dtype=bool)
        for i in range(self.n_attacks):
            valid &= allowed[:, i, :][:, self.bits[:, i]]
        cae_idx, p_idx = np.nonzero(valid)
        if cae_idx.size == 0:
            raise ImpossibleEvidenceError(f"the evidence has probability zero under the model: {fact}")
        return cae_idx, p_idx

    @staticmethod
    def _footing(c, adm, exp, fixed):
        def site(name, default):
            return np.full(default.shape, fixed[name]) if name in fixed else default

        # Site by site in model order, so that an intervened attacker_inside reaches eclipse_footing.
        by_attacker = tables.attacker_footing(c)
        inside = site("attacker_inside", by_attacker["attacker_inside"])
        return {"primary_faulty": site("primary_faulty", by_attacker["primary_faulty"]),
                "attacker_inside": inside,
                "backup_faulty": site("backup_faulty", by_attacker["backup_faulty"]),
                "admission_open": adm.astype(int),
                "eclipse_footing": site("eclipse_footing", tables.eclipse_footing(inside, exp))}

    def _precondition(self, a, footing, fixed):
        site = f"{a}.precondition"
        value = tables.precondition(a, footing, self.structure)
        return np.full(value.shape, fixed[site]) if site in fixed else value

    def _telemetry_cached(self, telemetry, prior_a):
        """:meth:`_telemetry`, remembered for the last few evidence sets (queries in a row share their evidence)."""
        key = (frozenset(telemetry.items()), prior_a.tobytes())
        found = self._telemetry_memo.get(key)
        if found is None:
            if len(self._telemetry_memo) >= 8:
                self._telemetry_memo.pop(next(iter(self._telemetry_memo)))
            found = self._telemetry_memo[key] = self._telemetry(telemetry, prior_a)
        return found

    def _telemetry(self, telemetry, prior_a):
        """Telemetry likelihood by observation pattern: ``(pattern of each attacker value, factor, log scale, members)``.

        Replicas with the same observations share one row, so the work grows with the number of distinct
        patterns, not replicas. Row 0 is "the attacker is none of the observed replicas".
        Returns ``pattern`` (N,), ``factor`` (z, patterns, 256) scaled by ``exp(-scale)``, ``scale`` (z,)
        and ``members`` (patterns, N), the one-hot of ``pattern``.
        """
        z, N = prior_a.shape
        if not telemetry:
            return np.zeros(N, dtype=np.intp), np.ones((z, 1, self.bits.shape[0])), np.zeros(z), np.ones((1, N))
        T = len(TELEMETRY)
        # Each replica's observations as a bit code (bit t: observed 0, bit T + t: observed 1).
        code: dict = {}
        for (k, t), value in telemetry.items():
            code[k] = code.get(k, 0) | (1 << (t + T * value))
        ids: dict = {}
        pattern = [0] * N
        for k, c in code.items():
            pattern[k + 1] = ids.setdefault(c, len(ids) + 1)
        pattern = np.array(pattern, dtype=np.intp)
        bits = (np.array([0, *ids], dtype=np.int64)[:, None] >> np.arange(2 * T)) & 1            # (1 + P, 2T)
        counts = bits.astype(np.float64)
        counts[0] = _code_counts(code.values(), 2 * T)
        # Row 0: every observation with faulty = 0; row p: pattern p's observations.
        X = (counts[:, :T] @ self._log_off_flat + counts[:, T:] @ self._log_on_flat).reshape(
            len(ids) + 1, z, 2, self.bits.shape[0])
        base = X[0, :, 0]                                                        # (z, 256)
        log = np.empty((z, len(ids) + 1, self.bits.shape[0]))
        log[:, 0] = base
        log[:, 1:] = base[:, None, :] + np.swapaxes(X[1:, :, 1] - X[1:, :, 0], 0, 1)
        members = (pattern[None, :] == np.arange(len(ids) + 1)[:, None]).astype(np.float64)   # (P + 1, N)
        mass = prior_a @ members.T                                               # (z, P + 1)
        log[(log < -1e200) | (mass[:, :, None] <= 0)] = -np.inf
        scale = log.max((1, 2))
        safe = np.where(np.isfinite(scale), scale, 0.0)
        return pattern, np.exp(log - safe[:, None, None]), scale, members

    def cached(self, key, build):
        """``build()``, remembered under ``key``: a piece that depends only on the query's shape, not on telemetry.

        Bounded per engine (the least recently used piece goes first); the
        engine's own tables and the cluster engine backend's checked batches
        (:mod:`bayes_defense.inference.cluster_engine`) are kept here, so they
        live exactly as long as the engine of their model.
        """
        value = self._cache.pop(key, None)
        if value is None:
            value = build()
            if len(self._cache) >= _CACHE_ENTRIES:
                # Least recently used first: a working set of several query kinds stays warm.
                del self._cache[next(iter(self._cache))]
        self._cache[key] = value
        return value

    def _cut_table(self, do, cluster, cf):
        names = ("isolated", "attacker_isolated", "attacker")
        key = ("cut", *((name, do.get(name), cluster.get(name), cf.get(name)) for name in names))
        return self.cached(key, lambda: self._build_cut_table(do, cluster, cf))

    def _build_cut_table(self, do, cluster, cf):
        z, n, N = self.draws, self.n, self.n + 1
        iso_prior = tables.spread(self.prior_isolated, n)                    # (z, N)
        if "isolated" in do:
            iso_prior = np.broadcast_to((np.arange(N) == do["isolated"]).astype(float), (z, N))
        elif "isolated" in cluster:
            iso_prior = iso_prior * (np.arange(N) == cluster["isolated"])
        a = np.arange(N)[:, None]
        iso = np.arange(N)[None, :]
        cut = (iso == a) & (a >= 1)                                           # (a, iso)
        a_cf = np.full_like(a, cf["attacker"]) if "attacker" in cf else a
        iso_cf = np.full_like(iso, cf["isolated"]) if "isolated" in cf else iso
        cut_cf = (iso_cf == a_cf) & (a_cf >= 1)
        cut = np.broadcast_to(cut, (N, N))
        cut_cf = np.broadcast_to(cut_cf, (N, N))
        if "attacker_isolated" in do:
            cut = cut_cf = np.full((N, N), bool(do["attacker_isolated"]))
        if "attacker_isolated" in cf:
            cut_cf = np.full((N, N), bool(cf["attacker_isolated"]))
        pair = cut.astype(int) * 2 + cut_cf.astype(int)                       # (a, iso)
        onehot = (pair[:, :, None] == np.arange(4)).astype(np.float64)        # (a, iso, 4)
        table = np.tensordot(iso_prior, onehot, axes=([1], [1]))
        if "attacker_isolated" in cluster:
            table = table * (_CUT_PAIRS[:, 0] == cluster["attacker_isolated"])
        return table

    def _controls(self, do, cluster, relevant):
        """Weights ``(z, 2**r)`` of the configurations of the relevant control bits, and their bits ``(2**r, 6)``.

        The other bits are summed out (their evidence probability stays in the weights) and set to 0.
        """
        z = self.draws
        r = len(relevant)
        configs = (np.arange(2 ** r)[:, None] >> np.arange(r)) & 1
        bits = np.zeros((2 ** r, len(CONTROL_SITES)), dtype=int)
        bits[:, list(relevant)] = configs
        Pi = np.ones((z, 2 ** r))
        for j, site in enumerate(CONTROL_SITES):
            prior = self.prior_controls[:, j]
            if j in relevant:
                bit = bits[:, j]
                if site in do:
                    Pi = Pi * (bit == do[site])
                    continue
                Pi = Pi * np.where(bit[None, :] == 1, prior[:, None], 1.0 - prior[:, None])
                if site in cluster:
                    Pi = Pi * (bit == cluster[site])
            elif site in cluster and site not in do:
                Pi = Pi * (prior if cluster[site] else 1.0 - prior)[:, None]
        return Pi, bits

    def _keep(self, bits, cut):
        """P(success | executing) per draw, attack, control configuration and cut pair."""
        control = np.concatenate([np.broadcast_to(bits[:, None, :], (bits.shape[0], cut.size, bits.shape[1])),
                                  np.broadcast_to(cut[None, :, None], (bits.shape[0], cut.size, 1))], 2)  # (k, u, 7)
        return self.model.parameter_tables.keep(control)

    def outcome_terms(self, cluster, outcome_cf):
        """Expand the outcome evidence (and counterfactual outcomes) into a sum of products over attacks.

        Returns ``[(coefficient (z,) or 1.0, {outcome: kind}), ...]`` where kind
        ``"f"`` / ``"c"`` / ``"min"`` / ``"max"`` says which world's success (or
        both worlds' minimum or maximum) the term's product reads; the format
        :meth:`run` takes as ``terms``.
        """
        terms = [(1.0, {})]
        for o, outcome in enumerate(OUTCOME_NAMES):
            factual, counter = cluster.get(outcome), outcome_cf.get(outcome)
            if factual is None and counter is None:
                continue
            q = 1.0 - self.outcome_baseline[:, o]
            if counter is None or factual is None:
                kind = "f" if counter is None else "c"
                value = factual if counter is None else counter
                options = [(1.0, None), (-q, kind)] if value else [(q, kind)]
            else:
                options = {(1, 1): [(1.0, None), (-q, "min")], (0, 0): [(q, "max")],
                           (1, 0): [(q, "min"), (-q, "f")], (0, 1): [(q, "min"), (-q, "c")]}[(factual, counter)]
            terms = [(c * c2, {**k, outcome: kind} if kind else k) for c, k in terms for c2, kind in options]
        return terms

    def _local(self, i, a, do, cluster, cf, kinds, keep_f, keep_c, deep, want_local, control_weights):
        """Attack ``a``'s chain: ``(t, z, 8 = (pre, pre', P), k, u)`` summed, and with (E, S) kept.

        ``control_weights`` (z, k), when given, sums the control axis here (no other attack depends on it).
        """
        z = self.draws
        value = {f"{a}.p_attempt": self.p_attempt[:, i, None, None],
                 f"{a}.p_execute": self.p_execute[:, i, None, None]}.__getitem__
        pre = np.arange(2)
        # Each world's parent on its own axis, the other world's parent broadcast: (z, a, b).
        pP = tables.precursor_probability(a, value, pre[None, :, None] + 0.0 * pre[None, None, :])
        pPc = tables.precursor_probability(a, value, pre[None, None, :] + 0.0 * pre[None, :, None])
        JP = _twin_level(f"{a}.precursor", pP, pPc, do, cluster, cf)                                                          # (z, a, b, p, q)
        if not deep:
            f = JP.sum(-1).reshape(z, 8)[None, :, :, None, None]
            return np.broadcast_to(f, (len(kinds), z, 8, 1, 1)), None
        parent = np.arange(2)
        pE = tables.execution_probability(a, value, parent[None, :, None] + 0.0 * parent[None, None, :])  # (z, p, q)
        pEc = tables.execution_probability(a, value, parent[None, None, :] + 0.0 * parent[None, :, None])
        JE = _twin_level(f"{a}.executing", pE, pEc, do, cluster, cf)                                                          # (z, p, q, e, f)
        kf, kc = keep_f[:, i], keep_c[:, i]                                            # (z, k, u)
        pS = parent[None, :, None, None, None] * kf[:, None, None] + 0.0 * parent[None, None, :, None, None]
        pSc = parent[None, None, :, None, None] * kc[:, None, None] + 0.0 * parent[None, :, None, None, None]
        JS = _twin_level(f"{a}.success", pS, pSc, do, cluster, cf)                                                          # (z, e, f, k, u, g, h)
        # Outcome factors of this attack per term: prod over outcomes of (1 - w X(S, S')).
        g, h = np.meshgrid(np.arange(2), np.arange(2), indexing="ij")
        X = {"f": g, "c": h, "min": np.minimum(g, h), "max": np.maximum(g, h)}
        H = np.ones((len(kinds), z, 2, 2))
        for t, term in enumerate(kinds):
            for outcome, kind in term.items():
                w = self.impact[:, OUTCOME_NAMES.index(outcome), i]
                H[t] = H[t] * (1.0 - w[:, None, None] * X[kind][None])
        JSH = np.einsum("zefkugh,tzgh->tzefgku", JS, H)
        JPE = np.einsum("zabpq,zpqef->zabpef", JP, JE).reshape(z, 8, 2, 2)
        f_loc = np.einsum("zxef,tzefgku->tzxegku", JPE, JSH)
        if control_weights is not None:
            f_loc = np.einsum("tzxegku,zk->tzxegu", f_loc, control_weights)[:, :, :, :, :, None, :]
        return f_loc.sum((3, 4)), (f_loc if want_local else None)


@functools.lru_cache(maxsize=32)
def engine(model) -> Engine:
    """The (cached) exact engine of an indicator-mode cluster model."""
    return Engine(model)

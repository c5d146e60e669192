"""The causal graph of an n-replica BFT cluster, with the attack catalogue composed in, as a Pyro SCM.

Site table (``k`` is a replica index, ``A`` an attack of :data:`ATTACKS`)
--------------------------------------------------------------------------

=============================  ======================================================  ==================
site                           meaning (parents)                                       source
=============================  ======================================================  ==================
``attacker``                   Categorical over {0: none inside, k + 1: replica k}     PBFT fault model
``primary_faulty``             the current view's primary r0 is the attacker's         PBFT 4.4
``attacker_inside``            the attacker controls some replica                      PBFT 3
``backup_faulty``              the attacker controls a backup (not the primary)        PBFT 4.4, RBFT
``admission_open``             membership / peer admission is open                     Sybil
``peer_table_exposed``         a victim's peer table accepts attacker-chosen peers     Eclipse
``eclipse_footing``            attacker_inside and peer_table_exposed                  Eclipse
controls (countermeasures)     ``view_changed``, ``isolated`` (0 none, k + 1 replica  catalogue
                               k), ``rate_limited``, ``leader_rotation``,
                               ``trusted_component``, ``accountability``,
                               ``admission_control``; roots, set by ``do``
``attacker_isolated``          isolated names the attacker's replica                   plenum blacklist
``A.precondition``             the attack's footing site                               catalogue
``A.precursor``                precursor phase (precondition)                          catalogue
``A.executing``                execution phase (precursor)                             catalogue
``A.success``                  success (executing, controls, attacker_isolated)        catalogue
outcomes                       ``safety_violated``, ``liveness_lost``,                  PBFT, Aardvark
                               ``throughput_low`` / ``throughput``, ``latency_high`` /
                               ``commit_latency`` (noisy-OR of successes)
``join_rate``                  joins per window above threshold (sybil, eclipse)       Sybil, Eclipse
``rk.faulty``                  replica k is the attacker's (attacker)                  PBFT 3
``rk.<telemetry>``             per-replica telemetry of :data:`TELEMETRY` (rk.faulty,  plenum codes
                               precursors)
=============================  ======================================================  ==================

Telemetry is attacker-side (shows at the attacker's replica) or cluster-side
(shows at every replica), as each :class:`~bayes_defense.models.catalogue.Telemetry`
says. Controls are roots: a countermeasure applied after telemetry was seen
acts on execution and success, never on the past.

Modelling choices a user should know: the attacker's point of presence is one
replica (``attacker``); further colluders (up to ``f``) are a parameter that
strengthens the attacks that need them, not latent identities. Counterfactual
answers use the package's canonical monotone noise (see
:mod:`bayes_defense.causal.noise`).
"""

from __future__ import annotations

import functools
import math
from types import MappingProxyType

import networkx as nx
import numpy as np
import pyro
import pyro.distributions as dist
import torch

from bayes_defense._callable import make_module_callable
from bayes_defense.errors import InvalidInputError, UnknownSiteError
from bayes_defense.models import tables
from bayes_defense.models.catalogue import (
    ATTACKS,
    CONTROLS,
    COUNTERMEASURES,
    FOOTING,
    MAX_NODES,
    MIN_NODES,
    OUTCOMES,
    TELEMETRY,
)
from bayes_defense.models.parameters import resolve_parameters

__all__ = ["ClusterModel", "cluster", "FOOTING", "CONTROLS", "MIN_NODES", "MAX_NODES"]


_TELEMETRY_NAMES = frozenset(t.name for t in TELEMETRY)
_REPLICA_VARIABLES = frozenset(["faulty", *_TELEMETRY_NAMES])
_COUNTERMEASURE_OF_SITE = {c.site: c.name for c in COUNTERMEASURES.values()}

_SOURCES = {
    "attacker": "PBFT 3 (at most f Byzantine replicas)",
    "primary_faulty": "PBFT 4.4 (the primary of view v is replica v mod n)",
    "attacker_inside": "PBFT 3",
    "backup_faulty": "PBFT 4.4; RBFT",
    "admission_open": "Sybil (Douceur 2002)",
    "peer_table_exposed": "Eclipse (Heilman 2015)",
    "eclipse_footing": "Eclipse (Heilman 2015)",
    "attacker_isolated": "plenum node blacklisting",
    "join_rate": "Sybil; Eclipse",
}


def _float(x) -> torch.Tensor:
    return torch.as_tensor(x).to(torch.get_default_dtype())


def _fixed(name: str, value) -> torch.Tensor:
    """A logical function of its parents, written as a 0/1 Bernoulli site.

    ``pyro.deterministic`` would do, but its masked log-density hides its
    parents from provenance tracking; a Bernoulli with probability 0 or 1 is
    the same variable and keeps its edges.
    """
    return pyro.sample(name, dist.Bernoulli(value))


class _DrawIndex(dist.Categorical):
    """Uniform Categorical over parameter draws whose support is float, like the Bernoulli sites'.

    Exact enumeration builds parent grids from the supports, which must share
    one dtype; the index is cast back to an integer where it is used.
    """

    def enumerate_support(self, expand=True):
        return super().enumerate_support(expand).to(torch.get_default_dtype())


class ClusterModel:
    """A Pyro SCM of an n-replica BFT cluster under the eight attacks (call it with no arguments).

    Build it with :func:`cluster`. Pass it straight to :func:`bayes_defense.intervene`
    and the other queries.

    Attributes
    ----------
    n_nodes, f, colluders : int
        Replicas, tolerated faults ``(n - 1) // 3``, colluders helping the attacker.
    telemetry : str
        ``"indicators"`` (every site discrete; the exact backend applies) or
        ``"continuous"`` (telemetry and throughput / latency as LogNormal values).
    attacks, countermeasures : mappings
        The attacks composed in (the catalogue's :class:`~bayes_defense.models.Attack` entries, then the
        :class:`~bayes_defense.models.registry.AttackSpec` of each attack added by ``add_attack``) and the
        countermeasures.
    structure : ModelStructure
        The attacks and edges the model is built from (:func:`bayes_defense.models.tables.structure`
        when the model was made).
    """

    def __init__(self, n_nodes: int, colluders: int, telemetry: str, *, parameters=None,
                 structure: tables.ModelStructure | None = None):
        self.n_nodes = n_nodes
        self.f = (n_nodes - 1) // 3
        self.colluders = colluders
        self.telemetry = telemetry
        self.structure = tables.structure() if structure is None else structure
        self.attacks = MappingProxyType({name: ATTACKS.get(name, spec) for name, spec in self.structure.specs.items()})
        self.countermeasures = COUNTERMEASURES
        values, self.n_draws, self._parameter_key = resolve_parameters(parameters, self.structure.parameters)
        #: ``{name: float64 array of shape (n_draws,)}`` for every name of :data:`PARAMETERS`.
        self.parameter_values = values
        self._torch_values: dict = {}

    def __repr__(self) -> str:
        extra = f", parameters=<{len(self._parameter_key)} overrides, {self.n_draws} draws>" \
            if self._parameter_key else ""
        return (f"cluster(n_nodes={self.n_nodes}, colluders={self.colluders}, "
                f"telemetry={self.telemetry!r}{extra})")

    @property
    def collusion_share(self) -> float:
        """The share of the ``f`` possible colluders helping the attacker (:func:`~bayes_defense.models.tables.collusion_share`)."""
        return tables.collusion_share(self.colluders, self.f)

    @functools.cached_property
    def parameter_tables(self) -> tables.ParameterTables:
        """This model's parameter set gathered into arrays (:func:`~bayes_defense.models.tables.parameter_tables`)."""
        return tables.parameter_tables(self.parameter_values, self.collusion_share, self.structure)

    @property
    def replicas(self) -> list[str]:
        """Replica names ``r0`` (the current primary) to ``r{n-1}``."""
        return [f"r{k}" for k in range(self.n_nodes)]

    @property
    def outcome_sites(self) -> list[str]:
        """Cluster outcome sites, in site order."""
        names = [name for name, _, _ in OUTCOMES]
        if self.telemetry == "continuous":
            names = [{"throughput_low": "throughput", "latency_high": "commit_latency"}.get(n, n) for n in names]
        return names

    @functools.cached_property
    def sites(self) -> dict[str, str]:
        """Every site name with a one-line description and its source."""
        out = {"theta_draw": "index of the posterior draw of the parameters in use"} if self.n_draws > 1 else {}
        out |= {
            "attacker": f"0 if no replica is the attacker's, else 1 + the replica index ({_SOURCES['attacker']})",
            "primary_faulty": "the current primary r0 is the attacker's (" + _SOURCES["primary_faulty"] + ")",
            "attacker_inside": "the attacker controls a replica",
            "backup_faulty": "the attacker controls a backup replica",
            "admission_open": "cluster or overlay admission is open (" + _SOURCES["admission_open"] + ")",
            "peer_table_exposed": "a victim peer table accepts attacker-chosen peers (Eclipse)",
            "eclipse_footing": "attacker_inside and peer_table_exposed",
        }
        for site in CONTROLS:
            out[site] = f"control set by countermeasure {_COUNTERMEASURE_OF_SITE[site]!r}"
        out["isolated"] = "control set by 'isolate_node': 0 none, k + 1 isolates replica k"
        out["attacker_isolated"] = "the isolated replica is the attacker's"
        for name, spec in self.structure.specs.items():
            attack = ATTACKS.get(name)
            out[f"{name}.precondition"] = f"{attack.preconditions} ({attack.sources})" if attack else \
                f"{spec.footing} (added with add_attack)"
            signals = attack.precursor_signals if attack else (*spec.attacker_side, *spec.cluster_side)
            out[f"{name}.precursor"] = f"precursor phase; shows in {', '.join(signals)}"
            out[f"{name}.executing"] = "execution phase"
            out[f"{name}.success"] = "the attack succeeds; impacts " + ", ".join(spec.impacts)
        for (_, _, meaning), site in zip(OUTCOMES, self.outcome_sites, strict=True):
            out[site] = meaning
        out["join_rate"] = "joins per window above threshold (Sybil, Eclipse)"
        for replica in self.replicas:
            out[f"{replica}.faulty"] = f"{replica} is the attacker's replica"
            for t in TELEMETRY:
                out[f"{replica}.{t.name}"] = f"{t.meaning} ({t.unit}; {t.sources})"
        return out

    @functools.cached_property
    def site_distributions(self) -> dict[str, str]:
        """``{site: distribution class name}``: the declaration that lets queries skip tracing the model.

        :func:`bayes_defense.causal.structure.model_info` reads it; the tests
        check it against a trace of the model.
        """
        continuous = {"throughput", "commit_latency"} if self.telemetry == "continuous" else set()
        out = {}
        for site in self.sites:
            if site == "theta_draw":
                out[site] = _DrawIndex.__name__
            elif site in ("attacker", "isolated"):
                out[site] = "Categorical"
            elif site in continuous or (self.telemetry == "continuous" and site.partition(".")[2] in _TELEMETRY_NAMES):
                out[site] = "LogNormal"
            else:
                out[site] = "Bernoulli"
        return out

    @property
    def parameters(self) -> dict:
        """The overrides this model was built with, ``{name: value or array of draws}``."""
        return {name: np.asarray(values) if ndim else values[0] for name, values, ndim in self._parameter_key}

    def parse_replica_site(self, name: str, *, role: str = "evidence") -> tuple[int, str]:
        """Split ``"r3.sig_fail"`` into ``(3, "sig_fail")``; raise listing what is valid otherwise."""
        prefix, _, variable = str(name).partition(".")
        if prefix[:1] == "r" and prefix[1:].isdigit() and variable in _REPLICA_VARIABLES:
            index = int(prefix[1:])
            if index < self.n_nodes:
                return index, variable
        raise UnknownSiteError(self.unknown_site_message(name, role))

    def unknown_site_message(self, name: str, role: str) -> str:
        """An error message for an unknown site that lists the valid names."""
        prefix, _, variable = str(name).partition(".")
        if prefix[:1] == "r" and prefix[1:].isdigit() and variable in _REPLICA_VARIABLES \
                and int(prefix[1:]) >= self.n_nodes:
            return (f"{role} names replica {prefix!r}, which does not exist in this {self.n_nodes}-replica cluster; "
                    f"valid replicas are r0 to r{self.n_nodes - 1}")
        cluster_sites = [s for s in self.sites if not (s[:1] == "r" and s.split(".")[0][1:].isdigit())]
        return (f"{role} names {name!r}, which the model does not have. Cluster-level sites: "
                f"{', '.join(cluster_sites)}; per-replica sites r<k>.<variable> for k = 0 to {self.n_nodes - 1} "
                f"with variable in: faulty, {', '.join(t.name for t in TELEMETRY)}")

    @functools.cached_property
    def graph(self) -> nx.DiGraph:
        """The causal DAG; each node carries ``description`` and each edge ``source``."""
        from bayes_defense.causal.structure import model_info

        graph = model_info(self).graph()
        for node in graph.nodes:
            graph.nodes[node]["description"] = self.sites.get(node, "")
        for parent, child in graph.edges:
            graph.edges[parent, child]["source"] = _edge_source(parent, child, self.attacks)
        return graph

    def __call__(self):
        return self._run()

    def _run(self):
        n = self.n_nodes
        theta = None
        if self.n_draws > 1:
            theta = pyro.sample("theta_draw", _DrawIndex(torch.full((self.n_draws,), 1.0 / self.n_draws))).long()

        # Tables are built under a float64 default dtype; keep the parameters in the dtype in force.
        dtype = torch.get_default_dtype()
        tensors = self._torch_values.get(dtype)
        if tensors is None:
            tensors = self._torch_values[dtype] = {name: torch.tensor(v, dtype=dtype)
                                                   for name, v in self.parameter_values.items()}

        def value(name):
            v = tensors[name]
            return v[0] if theta is None else v[theta]

        attacker = pyro.sample("attacker", dist.Categorical(tables.spread(value("prior.attacker_inside"), n)))
        by_attacker = tables.attacker_footing(attacker)
        footing = {site: _fixed(site, _float(by_attacker[site]))
                   for site in ("primary_faulty", "attacker_inside", "backup_faulty")}
        footing["admission_open"] = pyro.sample("admission_open", dist.Bernoulli(value("prior.admission_open")))
        exposed = pyro.sample("peer_table_exposed", dist.Bernoulli(value("prior.peer_table_exposed")))
        footing["eclipse_footing"] = _fixed("eclipse_footing",
                                            tables.eclipse_footing(footing["attacker_inside"], exposed))
        controls = {site: pyro.sample(site, dist.Bernoulli(value(f"prior.{site}"))) for site in CONTROLS}
        isolated = pyro.sample("isolated", dist.Categorical(tables.spread(value("prior.isolated"), n)))
        controls[tables.ISOLATION] = _fixed(tables.ISOLATION, _float((isolated == attacker) & (attacker >= 1)))
        precursors, successes = {}, {}
        share = self.collusion_share
        structure = self.structure
        for a in structure.attack_names:
            pre = _fixed(f"{a}.precondition", tables.precondition(a, footing, structure))
            precursors[a] = pyro.sample(f"{a}.precursor", dist.Bernoulli(tables.precursor_probability(a, value, pre)))
            executing = pyro.sample(f"{a}.executing",
                                    dist.Bernoulli(tables.execution_probability(a, value, precursors[a])))
            successes[a] = pyro.sample(f"{a}.success", dist.Bernoulli(
                tables.success_probability(a, value, share, executing, controls, structure)))
        for name, site in zip(tables.OUTCOME_NAMES, self.outcome_sites, strict=True):
            p = tables.outcome_probability(name, value, successes, structure).clamp(0.0, 1.0)
            if site == name:
                pyro.sample(site, dist.Bernoulli(p))
            elif site == "throughput":
                # Requests per second: nominal 10k, a third of it when degraded (Aardvark 5).
                pyro.sample(site, dist.LogNormal(math.log(10_000.0) + math.log(1 / 3) * p, 0.2))
            else:
                # Milliseconds: nominal 5 ms, ten times that when degraded (Prime; Aardvark).
                pyro.sample(site, dist.LogNormal(math.log(5.0) + math.log(10.0) * p, 0.3))
        pyro.sample("join_rate", dist.Bernoulli(
            tables.join_rate_probability(value, precursors, structure).clamp(0.0, 1.0)))
        for k in range(n):
            faulty = _fixed(f"r{k}.faulty", _float(attacker == k + 1))
            self._replica(f"r{k}", faulty, precursors, value)

    def _replica(self, prefix: str, faulty, precursors, value):
        for t in TELEMETRY:
            p = tables.telemetry_probability(t.name, value, faulty, precursors, self.structure).clamp(0.0, 1.0)
            if self.telemetry == "indicators":
                pyro.sample(f"{prefix}.{t.name}", dist.Bernoulli(p))
            else:
                # An alarm level p moves the median value up to twentyfold.
                pyro.sample(f"{prefix}.{t.name}", dist.LogNormal(math.log(t.typical) + math.log(20.0) * p, 0.5))


def _edge_source(parent: str, child: str, attacks) -> str:
    def source(attack):
        return getattr(attacks[attack], "sources", "added with bayes_defense.models.registry.add_attack")

    if parent == "theta_draw":
        return "posterior draws of the parameters (bayes_defense.fit)"
    attack_of_child = child.split(".")[0]
    if attack_of_child in attacks:
        return source(attack_of_child)
    if "." in child and child.split(".")[1] in {t.name for t in TELEMETRY}:
        if parent.split(".")[0] in attacks and parent.split(".")[0] not in ATTACKS:
            return source(parent.split(".")[0])
        return next(t.sources for t in TELEMETRY if t.name == child.split(".")[1])
    if child in {name for name, _, _ in OUTCOMES} or child in ("throughput", "commit_latency"):
        return source(parent.split(".")[0]) if parent.split(".")[0] in attacks else "PBFT"
    return _SOURCES.get(child, "PBFT")


@functools.lru_cache(maxsize=32)
def _cached(n_nodes: int, colluders: int, telemetry: str, parameter_key: tuple,
            structure: tables.ModelStructure) -> ClusterModel:
    # The key carries every override and the structure, so models of different parameters or
    # attacks never share an entry.
    return ClusterModel(n_nodes, colluders, telemetry,
                        parameters={name: np.asarray(values) if ndim else values[0]
                                    for name, values, ndim in parameter_key}, structure=structure)


def cluster(n_nodes: int, *, colluders: int | None = None, telemetry: str = "indicators",
            parameters: dict | None = None) -> ClusterModel:
    """The causal graph of an n-replica BFT cluster with the catalogue's attacks (and users'), as a Pyro SCM.

    Parameters
    ----------
    n_nodes : int
        Replicas, 4 to 100; the cluster tolerates ``f = (n_nodes - 1) // 3`` faults.
    colluders : int, optional
        Faulty replicas helping the attacker beyond its own, 0 to ``f``
        (default ``f``, the worst case the protocol tolerates).
    telemetry : {"indicators", "continuous"}
        ``"indicators"``: every telemetry variable is a thresholded 0/1
        indicator and every site is discrete, so queries are exact.
        ``"continuous"``: telemetry, throughput and commit latency are
        LogNormal measurements; queries fall back to importance sampling.
    parameters : dict, optional
        Overrides of the named parameters of :data:`~bayes_defense.models.PARAMETERS`
        and of the attacks added with :func:`bayes_defense.models.registry.add_attack`
        (``{name: value}``). A value may be a 1-D array of S posterior draws
        (all such arrays of one length S): the model then draws
        ``theta_draw ~ Categorical(uniform over S)`` and uses that draw, so exact
        answers average over parameter uncertainty and the cluster queries
        report the spread across draws as their interval.

    Returns
    -------
    ClusterModel
        A callable Pyro model (one object per configuration, cached).

    Examples
    --------
    >>> import bayes_defense as bd
    >>> model = bd.models.cluster(4)
    >>> model.f, model.replicas
    (1, ['r0', 'r1', 'r2', 'r3'])
    >>> p = bd.intervene(model, {"trusted_component": 1.0}, "equivocation.success")
    >>> p.backend, p.mean < float(bd.intervene(model, {}, "equivocation.success"))
    ('cluster_engine', True)
    >>> fitted = bd.models.cluster(4, parameters={"equivocation.p_attempt": [0.2, 0.4]})
    >>> fitted.n_draws, "theta_draw" in fitted.sites
    (2, True)
    """
    if isinstance(n_nodes, bool) or not isinstance(n_nodes, int):
        raise InvalidInputError(f"n_nodes must be an integer from {MIN_NODES} to {MAX_NODES}; got {n_nodes!r}")
    if not MIN_NODES <= n_nodes <= MAX_NODES:
        raise InvalidInputError(
            f"n_nodes must be from {MIN_NODES} to {MAX_NODES} (a BFT cluster needs n >= 3f + 1 with f >= 1); "
            f"got {n_nodes}")
    f = (n_nodes - 1) // 3
    if colluders is None:
        colluders = f
    if isinstance(colluders, bool) or not isinstance(colluders, int) or not 0 <= colluders <= f:
        raise InvalidInputError(f"colluders must be an integer from 0 to f = {f} for n_nodes={n_nodes}; "
                                f"got {colluders!r}")
    if telemetry not in ("indicators", "continuous"):
        raise InvalidInputError(f"telemetry must be 'indicators' or 'continuous'; got {telemetry!r}")
    structure = tables.structure()
    _, _, key = resolve_parameters(parameters, structure.parameters)
    return _cached(n_nodes, colluders, telemetry, key, structure)


# bd.models.cluster stays callable after ``import bayes_defense.models.cluster`` binds the module to that name.
make_module_callable(__name__)

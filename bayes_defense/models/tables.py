"""The cluster model's tables, made once from the catalogue and a parameter set.

Every probability of the cluster SCM is written here and nowhere else: the
Pyro program (:mod:`bayes_defense.models.cluster`), the exact engine
(:mod:`bayes_defense.models.engine`), :func:`bayes_defense.plan`,
:func:`bayes_defense.explain` and the cluster fit all call these functions.
Adding an edge to the model is a change to the catalogue (data) and, if it is
a new kind of edge, to this module.

Two layers:

- the *structure*, read from the catalogue: which attacks raise which
  telemetry signal at the attacker's replica or at every replica
  (:func:`telemetry_causes`), which successes break which outcome
  (:func:`outcome_causes`), which control mitigates which attack
  (:func:`mitigations`), which footing site is each attack's precondition
  (:func:`precondition`), and the name of the parameter on each edge;
- the *formulas*, functions of a parameter accessor ``value(name)`` and of
  the parents' values. They use only arithmetic and broadcasting, so the
  same function serves a Pyro site (torch tensors, batched over enumeration
  or particles), the engine (numpy arrays with a leading axis of parameter
  draws) and the fit (torch scalars that carry gradients).

:func:`parameter_tables` gathers a parameter set (scalars or posterior draws,
a leading draw axis) into the arrays the numeric code indexes.

Examples
--------
>>> from bayes_defense.models import tables
>>> value = tables.accessor({"flooding.p_success": 0.6, "flooding.collusion_gain": 0.3})
>>> round(float(tables.success_given_execution("flooding", value, share=1.0)), 6)
0.72
>>> t = tables.parameter_tables(tables.default_values())
>>> t.telemetry_on.shape == (1, len(tables.TELEMETRY_NAMES), 2, 2 ** len(tables.ATTACK_NAMES))
True
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from bayes_defense.models.catalogue import (
    ATTACK_NAMES,
    CONTROLS,
    OUTCOMES,
    TELEMETRY,
)
from bayes_defense.models.edges import (
    ISOLATION,
    control_key,
    join_rate_causes,
    mitigations,
    outcome_causes,
    telemetry_causes,
)
from bayes_defense.models.parameters import PARAMETERS, Parameter, attack_edges, attack_parameters
from bayes_defense.models.registry import AttackSpec, attack_spec, generation, user_attacks

__all__ = [
    "ATTACK_NAMES", "OUTCOME_NAMES", "CONTROL_SITES", "TELEMETRY_NAMES", "FOOTING_SITES", "ISOLATION",
    "PRECURSOR_CONFIGURATIONS", "ParameterTables", "accessor", "default_values", "parameter_tables",
    "collusion_share", "noisy_or", "spread", "telemetry_causes", "telemetry_probability", "join_rate_causes",
    "join_rate_probability", "outcome_causes", "outcome_probability", "mitigations", "control_key", "success_given_execution",
    "success_given_controls", "mitigate", "EFFICACY_SLOTS", "precondition", "footing", "attacker_footing", "eclipse_footing", "precursor_probability", "execution_probability",
    "success_probability", "precondition_table", "ModelStructure", "CATALOGUE", "structure",
]

#: Outcomes, control sites and telemetry signals in site order (with the catalogue's ATTACK_NAMES, the axes of
#: every table).
OUTCOME_NAMES: tuple[str, ...] = tuple(name for name, _, _ in OUTCOMES)
CONTROL_SITES: tuple[str, ...] = tuple(CONTROLS)
TELEMETRY_NAMES: tuple[str, ...] = tuple(t.name for t in TELEMETRY)

#: Footing sites that are functions of the root state, in the order the numeric code lists them.
FOOTING_SITES: tuple[str, ...] = ("primary_faulty", "attacker_inside", "backup_faulty", "eclipse_footing")

#: Every configuration of the eight precursor bits, ``(2 ** A, A)``: row ``c`` has bit ``a`` of ``c``.
PRECURSOR_CONFIGURATIONS = (np.arange(2 ** len(ATTACK_NAMES))[:, None] >> np.arange(len(ATTACK_NAMES))) & 1
PRECURSOR_CONFIGURATIONS.setflags(write=False)

#: The mitigation slots of :attr:`ParameterTables.efficacy`: control site (or :data:`ISOLATION`) -> column.
EFFICACY_SLOTS = MappingProxyType({**{site: j for j, site in enumerate(CONTROL_SITES)},
                                   ISOLATION: len(CONTROL_SITES)})


class ModelStructure:
    """The model's attacks and edges: the catalogue's, then those added by ``add_attack``, in order.

    Every per-attack axis of the tables follows :attr:`attack_names`. The
    catalogue's edges come from :mod:`bayes_defense.models.edges`, an added
    attack's from :func:`~bayes_defense.models.parameters.attack_edges`; the
    Pyro program, the engine, :func:`bayes_defense.plan` and
    :func:`bayes_defense.explain` read them here, so an added attack needs no
    change to their code. :func:`structure` gives the registry's current one,
    :data:`CATALOGUE` the catalogue's alone.

    Attributes
    ----------
    attack_names : tuple of str
    specs : mapping
        ``{attack: AttackSpec}`` (:func:`bayes_defense.models.registry.attack_spec`).
    parameters : mapping
        ``{name: Parameter}``: :data:`~bayes_defense.models.PARAMETERS` and the added attacks'.
    precursor_configurations : array (2 ** A, A)
        Row ``c`` holds bit ``a`` of ``c``.
    key : tuple
        Equal for equal structures (the added attacks' names and registry generation; ``()`` for the catalogue).

    Examples
    --------
    >>> from bayes_defense.models import registry, tables
    >>> _ = registry.add_attack("log_truncation", footing="attacker_inside", attacker_side={"stale": 0.8},
    ...                         matched="expose_and_evict")
    >>> current = tables.structure()
    >>> current.attack_names[-1], current.telemetry_causes("stale")[0][-1]
    ('log_truncation', ('log_truncation', 'telemetry.stale.log_truncation'))
    >>> registry.remove_attack("log_truncation")
    >>> tables.structure() is tables.CATALOGUE
    True
    """

    def __init__(self, added: tuple[AttackSpec, ...] = (), key: tuple = ()):
        self.attack_names: tuple[str, ...] = ATTACK_NAMES + tuple(spec.name for spec in added)
        self.specs = MappingProxyType({**{a: attack_spec(a) for a in ATTACK_NAMES},
                                       **{spec.name: spec for spec in added}})
        self.key = key
        edges_of = {spec.name: attack_edges(spec) for spec in added}
        self._telemetry = {}
        for signal in TELEMETRY_NAMES:
            attacker_side, cluster_side = telemetry_causes(signal)
            self._telemetry[signal] = (
                attacker_side + tuple((a, p) for a, e in edges_of.items() for t, p in e["attacker_side"] if t == signal),
                cluster_side + tuple((a, p) for a, e in edges_of.items() for t, p in e["cluster_side"] if t == signal))
        # join_rate is one cluster-level site: an added attack raises it from either side.
        self._join = join_rate_causes() + tuple((a, p) for a, e in edges_of.items()
                                                for t, p in e["attacker_side"] + e["cluster_side"] if t == "join_rate")
        self._outcomes = {o: outcome_causes(o) + tuple((a, p) for a, e in edges_of.items()
                                                       for t, p in e["impacts"] if t == o) for o in OUTCOME_NAMES}
        self._mitigations = {a: mitigations(a) for a in ATTACK_NAMES}
        self._mitigations.update({a: tuple((control_key(c), p) for c, p in e["mitigations"])
                                  for a, e in edges_of.items()})
        known: dict[str, Parameter] = dict(PARAMETERS)
        for spec in added:
            known.update(attack_parameters(spec))
        self.parameters = MappingProxyType(known)
        n = len(self.attack_names)
        configurations = (np.arange(2 ** n)[:, None] >> np.arange(n)) & 1
        configurations.setflags(write=False)
        self.precursor_configurations = configurations
        self.damage = np.array([self.specs[a].damage for a in self.attack_names])
        self.damage.setflags(write=False)

    def __repr__(self) -> str:
        return f"ModelStructure({len(self.attack_names)} attacks: {', '.join(self.attack_names)})"

    def telemetry_causes(self, signal: str) -> tuple[tuple, tuple]:
        """``(attacker-side, cluster-side)`` causes of a telemetry signal, ``((attack, parameter), ...)`` each."""
        return self._telemetry[signal]

    def join_rate_causes(self) -> tuple:
        """``((attack, parameter), ...)`` that raise ``join_rate``."""
        return self._join

    def outcome_causes(self, outcome: str) -> tuple:
        """``((attack, parameter), ...)``: the attacks whose success can break ``outcome``."""
        return self._outcomes[outcome]

    def mitigations(self, attack: str) -> tuple:
        """``((control key, parameter), ...)`` against ``attack`` (as :func:`mitigations`)."""
        return self._mitigations[attack]

    def footing(self, attack: str) -> str:
        """The footing site that is ``attack``'s precondition."""
        return self.specs[attack].footing

    def check_attacks(self, attacks) -> list[str]:
        """Attack names (default all) checked against this structure; raise listing the valid ones."""
        from bayes_defense.errors import InvalidInputError

        names = list(self.attack_names) if attacks is None else ([attacks] if isinstance(attacks, str)
                                                                  else list(attacks))
        unknown = [a for a in names if a not in self.specs]
        if unknown:
            raise InvalidInputError(f"unknown attack {', '.join(map(repr, unknown))}; valid attacks: "
                                    f"{', '.join(self.attack_names)}")
        return names


#: The structure of the catalogue alone (the default of every function here).
CATALOGUE = ModelStructure()

_CURRENT: list = [0, CATALOGUE]


def structure() -> ModelStructure:
    """The model structure for the registry as it is now: :data:`CATALOGUE` when no attack was added.

    Rebuilt when :func:`bayes_defense.models.registry.add_attack` or
    ``remove_attack`` changed the registry, otherwise the same object.
    """
    if _CURRENT[0] != generation():
        added = user_attacks()
        _CURRENT[1] = ModelStructure(added, (generation(), tuple(s.name for s in added))) if added else CATALOGUE
        _CURRENT[0] = generation()
    return _CURRENT[1]


def accessor(values: Mapping, *, expand: Callable | None = None, known: Mapping | None = None) -> Callable:
    """A parameter accessor ``value(name)`` over ``values``, defaults filled in from the catalogue.

    Parameters
    ----------
    values : mapping
        ``{parameter name: number or array}``; names it lacks take their default
        (:data:`~bayes_defense.models.PARAMETERS`, or ``known``).
    expand : callable, optional
        Applied to every value returned (for example ``lambda v: v[:, None]`` to put a
        draw axis in front of a table's other axes).
    known : mapping, optional
        ``{name: Parameter}`` whose defaults fill in (a :class:`ModelStructure`'s ``parameters``).

    Examples
    --------
    >>> from bayes_defense.models.tables import accessor
    >>> value = accessor({"replay.p_attempt": 0.5})
    >>> value("replay.p_attempt"), value("replay.p_execute")
    (0.5, 0.8)
    """
    defaults = PARAMETERS if known is None else known

    def value(name):
        found = values[name] if name in values else defaults[name].default
        return found if expand is None else expand(found)

    return value


def default_values(structure: ModelStructure | None = None) -> dict:
    """Every parameter at its default as a one-draw array ``{name: array (1,)}`` (of :data:`CATALOGUE` by default)."""
    known = (structure or CATALOGUE).parameters
    return {name: np.array([spec.default]) for name, spec in known.items()}


def collusion_share(colluders: int, f: int) -> float:
    """The share of the ``f`` possible colluders that help the attacker (0 when ``f`` is 0)."""
    return 0.0 if f <= 0 else min(max(int(colluders), 0), f) / f


def noisy_or(baseline, terms):
    """``1 - (1 - baseline) * prod(1 - weight * active)`` over ``terms = [(weight, active), ...]``.

    Works on numbers, numpy arrays and torch tensors alike (broadcasting).
    """
    keep = 1.0 - baseline
    for weight, active in terms:
        keep = keep * (1.0 - weight * active)
    return 1.0 - keep


def spread(p, n: int):
    """``[1 - p, p / n, ..., p / n]`` over {none, replica 0, ..., replica n - 1} along a new last axis.

    The prior of ``attacker`` (``p`` = ``prior.attacker_inside``) and of
    ``isolated`` (``p`` = ``prior.isolated``).

    Examples
    --------
    >>> from bayes_defense.models.tables import spread
    >>> spread(0.5, 4).tolist()
    [0.5, 0.125, 0.125, 0.125, 0.125]
    """
    torch = sys.modules.get("torch")   # a tensor means torch is loaded; never import it here
    if torch is not None and isinstance(p, torch.Tensor):
        p = p[..., None]
        return torch.cat([1.0 - p, (p / n).expand(*p.shape[:-1], n)], dim=-1)
    p = np.asarray(p, dtype=np.float64)[..., None]
    return np.concatenate([1.0 - p, np.broadcast_to(p / n, p.shape[:-1] + (n,))], -1)


def telemetry_probability(signal: str, value: Callable, faulty, precursors: Mapping,
                          structure: ModelStructure | None = None):
    """P(``rk.<signal>`` = 1 | the replica's ``faulty`` flag, the attacks' precursor phases): a noisy-OR.

    Parameters
    ----------
    signal : str
        A telemetry name of :data:`~bayes_defense.models.TELEMETRY`.
    value : callable
        Parameter accessor (:func:`accessor`).
    faulty : number or array
        1 at the attacker's replica, else 0.
    precursors : mapping
        ``{attack: 0/1 value or array}`` for every attack the signal names.
    structure : ModelStructure, optional
        Whose edges (default :data:`CATALOGUE`).
    """
    attacker_side, cluster_side = (structure or CATALOGUE).telemetry_causes(signal)
    terms = [(value(p), faulty * precursors[a]) for a, p in attacker_side]
    terms += [(value(p), precursors[a]) for a, p in cluster_side]
    return noisy_or(value(f"telemetry.{signal}.baseline"), terms)


def join_rate_probability(value: Callable, precursors: Mapping, structure: ModelStructure | None = None):
    """P(``join_rate`` = 1 | precursor phases): a noisy-OR."""
    return noisy_or(value("telemetry.join_rate.baseline"),
                    [(value(p), precursors[a]) for a, p in (structure or CATALOGUE).join_rate_causes()])


def outcome_probability(outcome: str, value: Callable, successes: Mapping, structure: ModelStructure | None = None):
    """P(``outcome`` = 1 | the attacks' successes): a noisy-OR over the outcome's causes."""
    return noisy_or(value(f"outcome.{outcome}.baseline"),
                    [(value(p), successes[a]) for a, p in (structure or CATALOGUE).outcome_causes(outcome)])


def success_given_execution(attack: str, value: Callable, share: float):
    """P(success | execution, no defence): ``p_success + (1 - p_success) * collusion_gain * share``.

    ``share`` is :func:`collusion_share` of the model's colluders.
    """
    base = value(f"{attack}.p_success")
    return base + (1.0 - base) * value(f"{attack}.collusion_gain") * share


def success_given_controls(attack: str, value: Callable, share: float, controls: Mapping,
                           structure: ModelStructure | None = None):
    """P(success | execution, controls): each control in place removes its efficacy's share.

    ``controls`` maps each key of :func:`mitigations` (control sites and
    :data:`ISOLATION`) to its 0/1 value or array.
    """
    return mitigate(success_given_execution(attack, value, share), attack, value, controls, structure)


def mitigate(keep, attack: str, value: Callable, controls: Mapping, structure: ModelStructure | None = None):
    """``keep * prod(1 - efficacy * control)`` over the countermeasures against ``attack`` (:func:`mitigations`)."""
    for key, parameter in (structure or CATALOGUE).mitigations(attack):
        keep = keep * (1.0 - value(parameter) * controls[key])
    return keep


def attacker_footing(attacker) -> dict:
    """``primary_faulty``, ``attacker_inside`` and ``backup_faulty`` from the attacker's point of presence.

    ``attacker`` is 0 (no replica is the attacker's), 1 (the primary r0) or
    larger (a backup): the ``attacker`` site itself, or its class 0 / 1 / 2.
    """
    return {"primary_faulty": (attacker == 1) * 1, "attacker_inside": (attacker >= 1) * 1,
            "backup_faulty": (attacker >= 2) * 1}


def eclipse_footing(attacker_inside, peer_table_exposed):
    """``eclipse_footing``: the attacker is inside and a victim's peer table is exposed."""
    return attacker_inside * peer_table_exposed


def footing(attacker, admission_open, peer_table_exposed) -> dict:
    """Every footing site from the root state (:func:`attacker_footing`, :func:`eclipse_footing`)."""
    out = attacker_footing(attacker)
    out["admission_open"] = admission_open
    out["eclipse_footing"] = eclipse_footing(out["attacker_inside"], peer_table_exposed)
    return out


def precondition(attack: str, footing_values: Mapping, structure: ModelStructure | None = None):
    """``attack.precondition``: the value of the attack's footing site."""
    return footing_values[(structure or CATALOGUE).footing(attack)]


def precondition_table(structure: ModelStructure | None = None) -> np.ndarray:
    """``attack.precondition`` for every root state, ``(3 attacker classes, 2 admission, 2 exposed, A)``."""
    structure = structure or CATALOGUE
    c, adm, exp = np.meshgrid(np.arange(3), np.arange(2), np.arange(2), indexing="ij")
    values = footing(c, adm, exp)
    return np.stack([precondition(a, values, structure) for a in structure.attack_names], -1).astype(np.float64)


def precursor_probability(attack: str, value: Callable, precondition_value):
    """P(``attack.precursor`` = 1 | precondition)."""
    return precondition_value * value(f"{attack}.p_attempt")


def execution_probability(attack: str, value: Callable, precursor):
    """P(``attack.executing`` = 1 | precursor)."""
    return precursor * value(f"{attack}.p_execute")


def success_probability(attack: str, value: Callable, share: float, executing, controls: Mapping,
                        structure: ModelStructure | None = None):
    """P(``attack.success`` = 1 | executing, controls)."""
    return executing * success_given_controls(attack, value, share, controls, structure)


@dataclass(frozen=True)
class ParameterTables:
    """A parameter set gathered into arrays, every one with a leading axis of ``draws``.

    Attributes
    ----------
    draws : int
        Parameter draws (1 for a point value).
    share : float
        :func:`collusion_share` of the model's colluders.
    p_attempt, p_execute, success : arrays (draws, A)
        P(precursor | precondition), P(execution | precursor) and
        :func:`success_given_execution` (colluders included).
    efficacy : array (draws, A, C + 1)
        Efficacy of each control site against each attack; the last slot is
        :data:`ISOLATION`; 0 where a control does not mitigate an attack.
    impact, outcome_baseline : arrays (draws, O, A), (draws, O)
        Noisy-OR weights and baselines of the outcomes.
    telemetry_on : array (draws, T, 2, 2 ** A)
        P(signal on) per signal, faulty flag and precursor configuration
        (:data:`PRECURSOR_CONFIGURATIONS`).
    join_on : array (draws, 2 ** A)
        P(``join_rate`` on) per precursor configuration.
    prior_inside, prior_admission, prior_exposed, prior_isolated : arrays (draws,)
    prior_controls : array (draws, C)
    """

    draws: int
    share: float
    p_attempt: np.ndarray
    p_execute: np.ndarray
    success: np.ndarray
    efficacy: np.ndarray
    impact: np.ndarray
    outcome_baseline: np.ndarray
    telemetry_on: np.ndarray
    join_on: np.ndarray
    prior_inside: np.ndarray
    prior_admission: np.ndarray
    prior_exposed: np.ndarray
    prior_isolated: np.ndarray
    prior_controls: np.ndarray
    structure: ModelStructure = CATALOGUE

    def keep(self, controls) -> np.ndarray:
        """P(success | execution) under control configurations ``controls (..., C + 1)``: ``(draws, A, ...)``.

        Column ``j < C`` of ``controls`` is control site ``CONTROL_SITES[j]``;
        the last column is :data:`ISOLATION`.
        """
        controls = np.asarray(controls, dtype=np.float64)
        lead = (slice(None),) + (None,) * (controls.ndim - 1)
        out = []
        for i, attack in enumerate(self.structure.attack_names):
            pairs = self.structure.mitigations(attack)
            efficacy = {p: self.efficacy[(slice(None), i, EFFICACY_SLOTS[key])][lead] for key, p in pairs}
            present = {key: controls[..., EFFICACY_SLOTS[key]][None] for key, _ in pairs}
            out.append(mitigate(self.success[:, i][lead], attack, efficacy.__getitem__, present, self.structure))
        return np.stack(out, 1)


def parameter_tables(values: Mapping, share: float = 1.0, structure: ModelStructure | None = None) -> ParameterTables:
    """Gather parameter values (``{name: array (draws,)}``, every name present) into :class:`ParameterTables`.

    Parameters
    ----------
    values : mapping
        ``{parameter name: float64 array of shape (draws,)}``, as
        :attr:`ClusterModel.parameter_values <bayes_defense.models.ClusterModel.parameter_values>` holds.
    share : float
        :func:`collusion_share` of the model's colluders.
    structure : ModelStructure, optional
        Whose attacks and edges (default :data:`CATALOGUE`); ``values`` has its parameters.

    Examples
    --------
    >>> from bayes_defense.models.tables import default_values, parameter_tables
    >>> t = parameter_tables(default_values(), share=0.0)
    >>> float(t.success[0, 0]), t.telemetry_on.shape[1:] == (len(TELEMETRY_NAMES), 2, 2 ** len(ATTACK_NAMES))
    (0.3, True)
    """
    structure = structure or CATALOGUE
    names = structure.attack_names
    draws = int(np.shape(next(iter(values.values())))[0])
    per_draw = accessor(values, expand=lambda v: np.asarray(v, dtype=np.float64).reshape(draws),
                        known=structure.parameters)
    column = accessor(values, expand=lambda v: np.asarray(v, dtype=np.float64).reshape(draws, 1),
                      known=structure.parameters)
    n_attacks, n_controls = len(names), len(CONTROL_SITES)
    efficacy = np.zeros((draws, n_attacks, n_controls + 1))
    for i, attack in enumerate(names):
        for key, parameter in structure.mitigations(attack):
            efficacy[:, i, EFFICACY_SLOTS[key]] = per_draw(parameter)
    impact = np.zeros((draws, len(OUTCOME_NAMES), n_attacks))
    for o, outcome in enumerate(OUTCOME_NAMES):
        for attack, parameter in structure.outcome_causes(outcome):
            impact[:, o, names.index(attack)] = per_draw(parameter)
    bits = structure.precursor_configurations.astype(np.float64)
    precursors = {a: bits[:, i] for i, a in enumerate(names)}
    telemetry_on = np.empty((draws, len(TELEMETRY_NAMES), 2, bits.shape[0]))
    for t, signal in enumerate(TELEMETRY_NAMES):
        for faulty in (0, 1):
            telemetry_on[:, t, faulty] = telemetry_probability(signal, column, faulty, precursors, structure)
    return ParameterTables(
        draws=draws, share=float(share), structure=structure,
        p_attempt=np.stack([per_draw(f"{a}.p_attempt") for a in names], 1),
        p_execute=np.stack([per_draw(f"{a}.p_execute") for a in names], 1),
        success=np.stack([success_given_execution(a, per_draw, share) for a in names], 1),
        efficacy=efficacy, impact=impact,
        outcome_baseline=np.stack([per_draw(f"outcome.{o}.baseline") for o in OUTCOME_NAMES], 1),
        telemetry_on=telemetry_on, join_on=join_rate_probability(column, precursors, structure),
        prior_inside=per_draw("prior.attacker_inside"), prior_admission=per_draw("prior.admission_open"),
        prior_exposed=per_draw("prior.peer_table_exposed"), prior_isolated=per_draw("prior.isolated"),
        prior_controls=np.stack([per_draw(f"prior.{s}") for s in CONTROL_SITES], 1),
    )

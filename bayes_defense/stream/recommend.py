"""Countermeasures for the defender's hypotheses, chosen by :func:`bayes_defense.plan`.

The defender's belief is mapped to hard evidence on the cluster SCM of
:func:`bayes_defense.models.cluster`: the hypothesis is in its precursor
phase (``{attack}.precursor = 1``), in execution as well when the defender
thinks so (``{attack}.executing = 1``), and the suspected replica is the
attacker's (``r0.faulty = 1`` when it is the current primary, which the
model names ``r0``; ``r1.faulty = 1`` for a backup). The planner then ranks
the countermeasures by expected loss for the next window and the best one is
recommended.

The model's parameters are the defender's own where it has them: the model
filter registers its parameter draws in the cluster model's names
(:func:`register_parameters`, from
:func:`bayes_defense.stream.evidence.incident_parameters`), so a fitted or
default posterior reaches the countermeasure attached to its alerts as it
reaches ``bd.plan``. The answer depends only on (cluster size, attack, the
suspect's role, phase, parameter set), so it is cached on that key:
planning costs once per key in a process, never per event, and the
defender's per-event path never imports torch (the import happens at the
first recommendation asked for, an alert or a read of
:attr:`Belief.countermeasures <bayes_defense.stream.defender.Belief>`).
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping

import numpy as np

from bayes_defense.errors import InvalidInputError
from bayes_defense.models.catalogue import (
    ATTACKS_FROM_A_REPLICA,
    MATCHED_COUNTERMEASURES,
    MAX_NODES,
    MIN_NODES,
)

__all__ = ["ATTACKER_SUSPECTS", "FALLBACK", "evidence_for", "recommend", "register_parameters", "resolve_planner",
           "role_of", "Recommendations"]

#: Attacks whose suspects are the attacking replicas (for sybil the suspects
#: are outside identities, for eclipse the victim replica). The catalogue is
#: plain data, so reading it keeps the per-event path free of torch.
ATTACKER_SUSPECTS = ATTACKS_FROM_A_REPLICA

#: The catalogue's matched countermeasure per attack, used when planning is
#: switched off (``StreamingDefender(planner=None)``).
FALLBACK: dict[str, str] = dict(MATCHED_COUNTERMEASURES)


def evidence_for(attack: str, role: str, phase: str) -> dict[str, float]:
    """Return the cluster-SCM evidence that stands for one hypothesis of the defender.

    Parameters
    ----------
    attack : str
        An attack of :data:`bayes_defense.stream.defender.ATTACK_HYPOTHESES`.
    role : {"primary", "backup", "none"}
        What the suspected node is: the current primary, another replica,
        or nothing the model names (outside identities, or no suspect).
    phase : {"precursor", "execution"}

    Examples
    --------
    >>> evidence_for("flooding", "backup", "execution")
    {'flooding.precursor': 1.0, 'flooding.executing': 1.0, 'r1.faulty': 1.0}
    >>> evidence_for("sybil", "backup", "precursor")
    {'sybil.precursor': 1.0}
    """
    evidence = {f"{attack}.precursor": 1.0}
    if phase == "execution":
        evidence[f"{attack}.executing"] = 1.0
    if attack in ATTACKER_SUSPECTS and role in ("primary", "backup"):
        evidence["r0.faulty" if role == "primary" else "r1.faulty"] = 1.0
    return evidence


# Parameter sets the planner may be asked to use, by token. Bounded: a set is a few dozen arrays of draws,
# and a defender registers one per parameter change (construction, learning).
_PARAMETER_SETS: OrderedDict[str, dict] = OrderedDict()
_MAX_PARAMETER_SETS = 256


def register_parameters(parameters: Mapping[str, object]) -> str:
    """Register cluster-model parameter draws for :func:`recommend`; return their token (a content hash).

    Examples
    --------
    >>> token = register_parameters({"slow_leader.p_success": np.array([0.4, 0.5])})
    >>> token == register_parameters({"slow_leader.p_success": np.array([0.4, 0.5])}), len(token)
    (True, 16)
    """
    digest = hashlib.sha256()
    arrays = {}
    for name in sorted(parameters):
        array = np.ascontiguousarray(np.asarray(parameters[name], dtype=np.float64))
        arrays[name] = array
        digest.update(name.encode())
        digest.update(array.tobytes())
    token = digest.hexdigest()[:16]
    _PARAMETER_SETS[token] = arrays
    _PARAMETER_SETS.move_to_end(token)
    while len(_PARAMETER_SETS) > _MAX_PARAMETER_SETS:
        _PARAMETER_SETS.popitem(last=False)
    return token


@functools.lru_cache(maxsize=2048)
def recommend(attack: str, role: str, phase: str, n_nodes: int, parameters: str | None = None) -> str:
    """Return the countermeasure :func:`bayes_defense.plan` ranks first for a hypothesis.

    Several countermeasures are joined with ``+``; ``"observe"`` means doing
    nothing has the smallest expected loss. When the suspect's role
    contradicts the attack's precondition (a backup suspected of an attack
    only a primary can make, after the primary moved), the role is dropped
    from the evidence.

    Parameters
    ----------
    attack, role, phase : str
        As for :func:`evidence_for`.
    n_nodes : int
        Replicas in the cluster (clamped to the model's 4 to 100).
    parameters : str, optional
        A token of :func:`register_parameters`: plan on the cluster model
        with those parameter draws (default: the model's default parameters).

    Examples
    --------
    >>> recommend("sybil", "none", "precursor", 7)
    'admission_control'
    """
    import bayes_defense as bd
    from bayes_defense.errors import ImpossibleEvidenceError

    values = None
    if parameters is not None:
        if parameters not in _PARAMETER_SETS:
            raise InvalidInputError(f"no parameter set registered as {parameters!r}; register it with "
                                    "register_parameters first")
        values = _PARAMETER_SETS[parameters]
    model = bd.models.cluster(min(max(int(n_nodes), MIN_NODES), MAX_NODES), parameters=values)
    evidence = evidence_for(attack, role, phase)
    try:
        result = bd.plan(model, evidence, max_steps=1, horizon=1)
    except ImpossibleEvidenceError:
        result = bd.plan(model, evidence_for(attack, "none", phase), max_steps=1, horizon=1)
    return "+".join(result.best.countermeasures) or "observe"


def resolve_planner(planner):
    """A defender's ``planner`` argument as the callable it stands for: ``"plan"`` is :func:`recommend`.

    ``None`` (the catalogue's matched countermeasure) and callables pass through;
    anything else is refused.

    Examples
    --------
    >>> resolve_planner("plan") is recommend, resolve_planner(None)
    (True, None)
    """
    if isinstance(planner, str) and planner == "plan":
        return recommend
    if planner is not None and not callable(planner):
        raise InvalidInputError(f"planner must be 'plan', None or a callable; got {planner!r}")
    return planner


def role_of(nodes: tuple[str, ...], primary: str, replicas: frozenset | set) -> str:
    """Return the role of the first suspected node: ``"primary"``, ``"backup"`` or ``"none"``.

    Examples
    --------
    >>> role_of(("r2",), "r0", {"r0", "r1", "r2"}), role_of(("r0",), "r0", {"r0"}), role_of((), "r0", set())
    ('backup', 'primary', 'none')
    """
    if not nodes:
        return "none"
    if nodes[0] == primary:
        return "primary"
    return "backup" if nodes[0] in replicas else "none"


class Recommendations(Mapping):
    """Attack -> recommended countermeasure, planned on first access of each key.

    A :class:`~bayes_defense.stream.defender.Belief` carries one; nothing is
    planned until a value is read, so building beliefs stays cheap.

    Parameters
    ----------
    suspects : dict
        Attack -> suspected nodes.
    primary : str
        The current primary ("" when unknown).
    replicas : frozenset
        Names of the replicas seen.
    executing : dict
        Attack -> whether execution is more probable than the precursor phase.
    planner : callable or None
        ``planner(attack, role, phase, n_nodes) -> str``, default
        :func:`recommend`; ``None`` uses :data:`FALLBACK`.

    Examples
    --------
    >>> r = Recommendations({"sybil": ("x1",)}, "r0", frozenset({"r0"}), {"sybil": False}, planner=None)
    >>> dict(r)
    {'sybil': 'admission_control'}
    """

    __slots__ = ("_suspects", "_primary", "_replicas", "_executing", "_planner")

    def __init__(self, suspects: Mapping[str, tuple[str, ...]], primary: str, replicas: frozenset,
                 executing: Mapping[str, bool], planner: object = recommend) -> None:
        self._suspects = suspects
        self._primary = primary
        self._replicas = replicas
        self._executing = executing
        self._planner = planner

    def __getitem__(self, attack: str) -> str:
        nodes = self._suspects[attack]
        if self._planner is None:
            return FALLBACK.get(attack, "observe")
        phase = "execution" if self._executing.get(attack) else "precursor"
        return self._planner(attack, role_of(nodes, self._primary, self._replicas), phase, len(self._replicas))

    def __iter__(self) -> Iterator[str]:
        return iter(self._suspects)

    def __len__(self) -> int:
        return len(self._suspects)

    def __repr__(self) -> str:
        return f"Recommendations({', '.join(self._suspects)}; planned on access)"

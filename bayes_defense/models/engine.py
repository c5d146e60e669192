"""Fast exact answers for cluster models: cached tables, one telemetry message, cached contractions.

The generic ``exact`` backend compiles every site of a model (one model run
per site) and contracts every table on each query; for a 50-replica cluster
that is hundreds of tables. This engine uses the model's structure instead:

- the cluster-level sites (footing, controls, attacks, outcomes) are
  compiled once, through :func:`bayes_defense.inference.exact.compile_discrete`,
  from a skeleton model that carries one template replica in place of n;
- every replica's telemetry has the template's tables, so the evidence of all
  replicas folds into one factor over ``(attacker, precursors)``: replica k's
  likelihood with ``rk.faulty = [attacker == k + 1]``, summed in log space
  over replicas in one vectorised pass;
- contraction paths are cached per query shape (``opt_einsum.contract_expression``).

Answers are exact and equal those of the generic backend (the tests check
this against ``exact``, ``importance`` and pgmpy).
"""

from __future__ import annotations

import functools

import numpy as np
import opt_einsum
import torch

from bayes_defense.causal.structure import model_info
from bayes_defense.errors import ImpossibleEvidenceError, InvalidInputError, UnknownSiteError
from bayes_defense.inference.exact import _coupling, _diagonalise, compile_discrete
from bayes_defense.models.catalogue import ATTACKS, TELEMETRY

__all__ = ["Engine", "engine"]

_TELEMETRY_NAMES = tuple(t.name for t in TELEMETRY)
_PRECURSORS = tuple(f"{a}.precursor" for a in ATTACKS)


class Engine:
    """Exact inference on one indicator-mode :class:`~bayes_defense.models.ClusterModel`."""

    def __init__(self, model):
        from bayes_defense.models.cluster import ClusterModel

        if model.telemetry != "indicators":
            raise InvalidInputError("the exact cluster engine needs telemetry='indicators'; "
                                    "use bd.intervene(..., backend='importance') for continuous telemetry")
        self.model = model
        skeleton = ClusterModel(model.n_nodes, model.colluders, "indicators", template=True)
        network = compile_discrete(model_info(skeleton), skeleton)
        self.names = [name for name in network.names if not name.startswith("template.")]
        self.label = {name: i for i, name in enumerate(self.names)}
        self.parents = {name: network.parents[name] for name in self.names}
        self.support = {name: network.support[name].to(torch.float64).numpy() for name in self.names}
        self.cpt = {name: network.cpt[name].to(torch.float64).numpy() for name in self.names}
        self._couplings: dict = {}
        self.children: dict = {name: [] for name in self.names}
        for name in self.names:
            for parent in self.parents[name]:
                self.children[parent].append(name)
        self._telemetry_tables(network)
        self._expressions: dict = {}

    # -------------------------------------------------------------- telemetry
    def _telemetry_tables(self, network) -> None:
        """Log tables ``(telemetry, faulty, precursor configuration, value)``."""
        tables = []
        for t in _TELEMETRY_NAMES:
            name = f"template.{t}"
            cpt = network.cpt[name]
            axes = list(network.parents[name])
            # Put the template's parents on the full (faulty, 8 precursors) grid.
            full_axes = ["template.faulty", *_PRECURSORS]
            shape = [2] * len(full_axes) + [2]
            order = [axes.index(a) for a in full_axes if a in axes] + [len(axes)]
            table = cpt.permute(order)
            view = [2 if a in axes else 1 for a in full_axes] + [2]
            tables.append(table.reshape(view).expand(shape).reshape(2, 2 ** len(_PRECURSORS), 2))
        stacked = torch.stack(tables)  # (T, 2, 256, 2)
        log_table = stacked.clamp(min=1e-300).log().numpy()
        self._log_table0 = np.ascontiguousarray(log_table[..., 0])
        self._log_table1 = np.ascontiguousarray(log_table[..., 1])

    def _telemetry_factor(self, observed: dict):
        """Factor over ``(attacker, precursors)`` from per-replica telemetry evidence, or None."""
        if not observed:
            return None
        n = self.model.n_nodes
        mask0 = np.zeros((n, len(_TELEMETRY_NAMES)))
        mask1 = np.zeros_like(mask0)
        for (replica, t), value in observed.items():
            (mask1 if value else mask0)[replica, t] = 1.0
        shape = self._log_table0.shape
        per_replica = (mask0 @ self._log_table0.reshape(shape[0], -1)
                       + mask1 @ self._log_table1.reshape(shape[0], -1)).reshape((n,) + shape[1:])  # (n, 2, 256)
        base = per_replica[:, 0, :].sum(0)
        log_message = np.concatenate([base[None, :], base[None, :] + per_replica[:, 1, :] - per_replica[:, 0, :]])
        message = np.exp(log_message - log_message.max())
        return message.reshape((n + 1,) + (2,) * len(_PRECURSORS))

    # ---------------------------------------------------------------- inputs
    def split_evidence(self, evidence) -> tuple[dict, dict, dict]:
        """Split evidence into cluster-level values, telemetry ``{(k, t): 0/1}`` and faulty flags."""
        cluster, telemetry, faulty = {}, {}, {}
        for name, value in (evidence or {}).items():
            value = float(torch.as_tensor(value))
            if name in self.label:
                cluster[name] = value
                continue
            replica, t = self.model.parse_replica_site(name, role="evidence")
            if value not in (0.0, 1.0):
                raise ImpossibleEvidenceError(f"evidence {name}={value:g}: indicator sites take 0 or 1")
            if t == "faulty":
                faulty[replica] = value
            else:
                telemetry[(replica, _TELEMETRY_NAMES.index(t))] = value
        return cluster, telemetry, faulty

    def check_do(self, do) -> dict:
        out = {}
        for name, value in (do or {}).items():
            if name not in self.label:
                if name.startswith("r") and "." in name:
                    self.model.parse_replica_site(name, role="do")
                    raise InvalidInputError(
                        f"do({name}) acts on per-replica telemetry, which the fast engine does not intervene "
                        "on; use bd.intervene(model, ...) for that query")
                raise UnknownSiteError(self.model.unknown_site_message(name, "do"))
            out[name] = float(torch.as_tensor(value))
        return out

    def _indicator(self, name: str, value: float, role: str) -> np.ndarray:
        match = (self.support[name] == value).astype(np.float64)
        if not bool(match.any()):
            raise ImpossibleEvidenceError(f"{role} {name}={value:g} is outside the support "
                                          f"{self.support[name].tolist()} of site {name!r}")
        return match

    def _faulty_factor(self, faulty: dict) -> np.ndarray | None:
        if not faulty:
            return None
        factor = np.ones(self.model.n_nodes + 1)
        for replica, value in faulty.items():
            hit = np.zeros_like(factor)
            hit[replica + 1] = 1.0
            factor = factor * (hit if value else 1.0 - hit)
        return factor

    # ------------------------------------------------------------ contraction
    def _contract(self, key, operands, labels, output):
        expression = self._expressions.get(key)
        if expression is None:
            spec = []
            for tensor, lab in zip(operands, labels):
                spec += [tuple(tensor.shape), list(lab)]
            shapes = spec[0::2]
            subscripts = []
            for lab in spec[1::2]:
                subscripts.append("".join(opt_einsum.get_symbol(i) for i in lab))
            equation = ",".join(subscripts) + "->" + "".join(opt_einsum.get_symbol(i) for i in output)
            expression = opt_einsum.contract_expression(equation, *shapes, optimize="greedy")
            self._expressions[key] = expression
        return expression(*operands, backend="numpy")

    def _base(self, do, cluster, telemetry, faulty, label, targets=()):
        operands, labels = [], []
        message = self._telemetry_factor(telemetry)
        faulty_factor = self._faulty_factor(faulty)
        needed = set(cluster) | set(targets)
        if message is not None or faulty_factor is not None:
            needed |= {"attacker", *(_PRECURSORS if message is not None else ())}
        relevant = self._ancestors(needed, do)
        for name in self.names:
            if name not in relevant:
                continue  # barren: neither observed nor asked for, nor upstream of either
            if name in do:
                operands.append(self._indicator(name, do[name], "do"))
                labels.append((label[name],))
            else:
                operands.append(self.cpt[name])
                labels.append(tuple(label[p] for p in self.parents[name]) + (label[name],))
        for name, value in cluster.items():
            operands.append(self._indicator(name, value, "evidence"))
            labels.append((label[name],))
        if message is not None:
            operands.append(message)
            labels.append((label["attacker"], *(label[p] for p in _PRECURSORS)))
        if faulty_factor is not None:
            operands.append(faulty_factor)
            labels.append((label["attacker"],))
        key = (tuple(sorted(do)), tuple(sorted(cluster)), message is not None, faulty_factor is not None,
               tuple(sorted(relevant)))
        return operands, labels, key

    def _ancestors(self, names, do) -> set:
        """``names`` and their ancestors in the graph mutilated by ``do``."""
        out, stack = set(), list(names)
        while stack:
            name = stack.pop()
            if name in out:
                continue
            out.add(name)
            if name not in do:
                stack.extend(self.parents[name])
        return out

    def _coupling(self, name, label, cf_label):
        """The twin-network factor of a site whose parents differ between worlds (cached)."""
        parents = self.parents[name]
        lab = [label[p] for p in parents] + [cf_label[p] for p in parents] + [label[name], cf_label[name]]
        cached = self._couplings.get(name)
        if cached is None:
            cached = self._couplings[name] = {}
        key = tuple(lab)
        if key not in cached:
            joint = _coupling(torch.from_numpy(self.cpt[name]).cumsum(-1))
            table, unique = _diagonalise(joint, lab)
            cached[key] = (table.numpy(), unique)
        return cached[key]

    def joint(self, targets, *, do=None, evidence=None) -> np.ndarray:
        """Posterior joint table over ``targets`` (cluster-level sites) under ``do``, given ``evidence``."""
        do = self.check_do(do)
        cluster, telemetry, faulty = self.split_evidence(evidence)
        for name in targets:
            if name not in self.label:
                raise UnknownSiteError(self.model.unknown_site_message(name, "query"))
        operands, labels, key = self._base(do, cluster, telemetry, faulty, self.label, targets)
        output = [self.label[name] for name in targets]
        table = self._contract(("joint", key, tuple(targets)), operands, labels, output)
        return _normalise(table, evidence)

    def marginals(self, sites, *, do=None, evidence=None) -> dict:
        """Posterior marginals ``{site: P(site = 1)}`` of binary sites (a vector for ``attacker``)."""
        sites = list(sites)
        out = {}
        for chunk in range(0, len(sites), 12):
            names = sites[chunk:chunk + 12]
            table = self.joint(names, do=do, evidence=evidence)
            for axis, name in enumerate(names):
                marginal = table.sum(axis=tuple(i for i in range(len(names)) if i != axis))
                out[name] = marginal if marginal.size > 2 else float(marginal[-1])
        return out

    def counterfactual_joint(self, evidence, do, factual_targets, counterfactual_targets) -> np.ndarray:
        """Joint over factual and counterfactual sites given factual ``evidence`` (twin network).

        Axes: ``factual_targets`` then ``counterfactual_targets``. Uses the
        canonical monotone coupling of the generic ``exact`` backend.
        """
        do = self.check_do(do)
        cluster, telemetry, faulty = self.split_evidence(evidence)
        affected = set(do)
        for name in self.names:
            if any(p in affected for p in self.parents[name]):
                affected.add(name)
        label = dict(self.label)
        cf_label = {}
        next_label = len(self.names)
        for name in self.names:
            if name in affected:
                cf_label[name] = next_label
                next_label += 1
            else:
                cf_label[name] = label[name]
        # Factual factors of the relevant sites, without their tables where a coupling replaces them.
        targets = list(factual_targets) + list(counterfactual_targets)
        operands, labels, _ = self._base({}, cluster, telemetry, faulty, label, targets)
        relevant = self._ancestors(set(cluster) | set(targets) | (
            {"attacker", *_PRECURSORS} if telemetry or faulty else set()), {})
        tables = {id(self.cpt[name]): name for name in relevant}
        kept_ops, kept_labels = [], []
        for operand, lab in zip(operands, labels):
            name = tables.get(id(operand))
            if name is not None and name in affected and name not in do:
                continue
            kept_ops.append(operand)
            kept_labels.append(lab)
        operands, labels = kept_ops, kept_labels
        for name in self.names:
            if name not in affected or name not in relevant:
                continue
            if name in do:
                operands.append(self._indicator(name, do[name], "do"))
                labels.append((cf_label[name],))
                continue
            parents = self.parents[name]
            joint, lab = self._coupling(name, label, cf_label)
            operands.append(joint)
            labels.append(tuple(lab))
        output = [label[n] for n in factual_targets] + [cf_label[n] for n in counterfactual_targets]
        # A counterfactual target no intervention reaches shares its factual label; tie a fresh one.
        seen: set = set()
        for position, lab in enumerate(output):
            if lab in seen:
                fresh = next_label
                next_label += 1
                size = self.support[(list(factual_targets) + list(counterfactual_targets))[position]].size
                operands.append(np.eye(size))
                labels.append((lab, fresh))
                output[position] = fresh
            seen.add(output[position])
        key = ("cf", tuple(sorted(do)), tuple(sorted(cluster)), bool(telemetry), bool(faulty),
               tuple(factual_targets), tuple(counterfactual_targets))
        table = self._contract(key, operands, labels, output)
        return _normalise(table, evidence)


def _normalise(table: np.ndarray, evidence) -> np.ndarray:
    total = table.sum()
    if float(total) <= 0.0:
        raise ImpossibleEvidenceError(f"the evidence has probability zero under the model: {evidence}")
    return table / total


@functools.lru_cache(maxsize=32)
def engine(model) -> Engine:
    """The (cached) exact engine of an indicator-mode cluster model."""
    return Engine(model)

"""Fitting the cluster SCM's named parameters to logged incident windows (exact likelihood; SVI or NUTS).

An incident table has one row per incident window and one column per
recorded site of :func:`bayes_defense.models.cluster` (``rK.<telemetry>``
indicators, ``join_rate``, the outcomes, control sites, ``attacker``,
``admission_open``, ``peer_table_exposed``, ``isolated``) and optional labels
``<attack>.precursor``, ``<attack>.executing``, ``<attack>.success``. A missing
column or a NaN is an unobserved site; it is summed out, never imputed.

The likelihood of a row is the model's exact marginal probability of what the
row records, written in torch so that it is differentiable in the
parameters:

- the attacker's replica (``n + 1`` values) and the precursor vector (one bit
  per attack, ``2 ** len(ATTACKS)`` configurations) are summed out
  explicitly; telemetry and ``join_rate`` are products of Bernoulli terms
  given them (noisy-OR), so their evidence is two matrix products;
- ``admission_open`` and ``peer_table_exposed`` (when not recorded) are summed
  out in the precursor prior table;
- given the precursors, each attack's (executing, success) chain is
  independent of the others; the noisy-OR outcomes couple the successes, and
  their evidence is expanded by inclusion-exclusion over the outcomes
  recorded as 1: ``P(O = 1 | S) = 1 - P(O = 0 | S)`` and ``P(O = 0 | S) = (1 -
  b) prod_A (1 - w_A S_A)``, so every term is a product over attacks and the
  success of every attack (labelled or not) sums out in closed form;
- controls that are not recorded are summed over their ``2 ** len(CONTROLS)``
  configurations, and whether the isolated replica is the attacker's is
  summed per attacker value.

Rows whose precursors are all labelled take the cheaper path (one precursor
configuration); other rows take the full sum, restricted by whatever
precursor, execution or success labels they carry.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bayes_defense.errors import InvalidInputError, UnsupportedModelError
from bayes_defense.fitting import inference_data
from bayes_defense.fitting.diagnostics import (
    FitDiagnosticsWarning,
    convergence_problems,
    diagnostics_summary,
    loss_trend,
)
from bayes_defense.fitting.options import check_method, check_sizes
from bayes_defense.fitting.storage import save_posterior
from bayes_defense.fitting.svi import svi_multivariate_normal

__all__ = ["CLUSTER_FORMAT_NAME", "CLUSTER_FORMAT_VERSION", "DEFAULT_CONCENTRATION", "ClusterPosterior",
           "fit_cluster", "read_incidents"]

#: Written on every group of a saved cluster posterior; ``load_posterior`` dispatches on it.
CLUSTER_FORMAT_NAME = "bayes_defense.cluster_posterior"
#: Version of the stored layout; a file of another major version is refused.
CLUSTER_FORMAT_VERSION = "1.0"
#: Prior concentration ``a + b`` of each parameter's Beta prior (raised so that ``a, b >= 1``).
DEFAULT_CONCENTRATION = 20.0

# Probabilities are kept this far from 0 and 1 so that every logarithm is finite.
_EPS = 1e-9


class _Structure:
    """Index tables that map the flat parameter vector onto the model's factors.

    Built from :data:`~bayes_defense.models.PARAMETERS` and the catalogue, so
    that added telemetry variables, attacks or outcomes need no change here.
    Every parameter must be used by some factor; one that is not (a new kind
    of parameter this module does not know) makes the fit refuse the model.
    """

    def __init__(self, model) -> None:
        from bayes_defense.models import edges, tables
        from bayes_defense.models.parameters import PARAMETERS

        self.names = list(PARAMETERS)
        self.defaults = np.array([PARAMETERS[n].default for n in self.names], float)
        K = len(self.names)
        self.K = K
        self.index = {name: i for i, name in enumerate(self.names)}
        self.n = model.n_nodes
        self.attacks = list(tables.ATTACK_NAMES)
        self.outcomes = list(tables.OUTCOME_NAMES)
        self.controls = list(tables.CONTROL_SITES)
        self.telemetry = list(tables.TELEMETRY_NAMES)
        A, C = len(self.attacks), len(self.controls)
        self.share = tables.collusion_share(model.colluders, model.f)
        # The outcome factor is expanded into a sum over outcome subsets (see _Likelihood.tables),
        # which needs each outcome's weights as an (attack, outcome) array: K is the padding slot, value 0.
        self.impact = np.full((A, len(self.outcomes)), K)
        for o, outcome in enumerate(self.outcomes):
            for attack, parameter in edges.outcome_causes(outcome):
                self.impact[self.attacks.index(attack), o] = self.index[parameter]
        self.outcome_baseline = np.array([self.index[f"outcome.{o}.baseline"] for o in self.outcomes])
        self.prior_controls = np.array([self.index[f"prior.{c}"] for c in self.controls])
        for attack in self.attacks:
            for key, _ in edges.mitigations(attack):
                if key not in tables.EFFICACY_SLOTS:
                    raise UnsupportedModelError(f"a mitigation of {attack} acts on {key!r}, which the cluster fit "
                                                f"does not know; fit_cluster needs updating")
        unused = [name for name in self.names if name not in self._used()]
        if unused:
            raise UnsupportedModelError(
                f"the cluster fit does not know how the model uses parameter(s) {', '.join(unused[:5])}; "
                f"fit_cluster needs updating for them")
        # Precondition of each attack per (attacker class: none / primary / backup, admission_open, exposed).
        self.precondition = tables.precondition_table()
        self.P = np.asarray(tables.PRECURSOR_CONFIGURATIONS)
        self.feasible = (self.P[None, None, None] <= self.precondition[..., None, :]).all(-1)   # (3, 2, 2, 2^A)
        self.U = (np.arange(2 ** len(self.outcomes))[:, None] >> np.arange(len(self.outcomes))) & 1   # outcome subsets
        self.cfg = (np.arange(2 ** (C + 1))[:, None] >> np.arange(C + 1)) & 1     # controls + isolated bit
        self.classes = np.minimum(np.arange(self.n + 1), 2)

    def _used(self) -> set[str]:
        """Every parameter name some factor of the likelihood reads (from the model's edges)."""
        from bayes_defense.models import edges

        used = {f"prior.{name}" for name in ("attacker_inside", "admission_open", "peer_table_exposed", "isolated")}
        used |= {f"prior.{c}" for c in self.controls} | {f"outcome.{o}.baseline" for o in self.outcomes}
        used |= {f"telemetry.{t}.baseline" for t in self.telemetry} | {"telemetry.join_rate.baseline"}
        for a in self.attacks:
            used |= {f"{a}.{name}" for name in ("p_attempt", "p_execute", "p_success", "collusion_gain")}
            used |= {parameter for _, parameter in edges.mitigations(a)}
        for t in self.telemetry:
            attacker_side, cluster_side = edges.telemetry_causes(t)
            used |= {parameter for _, parameter in attacker_side + cluster_side}
        used |= {parameter for _, parameter in edges.join_rate_causes()}
        for o in self.outcomes:
            used |= {parameter for _, parameter in edges.outcome_causes(o)}
        return used

    def site_names(self) -> dict[str, str]:
        """Accepted column -> kind (``binary``, ``replica`` or ``categorical``)."""
        out = {f"r{k}.{t}": "telemetry" for k in range(self.n) for t in self.telemetry}
        out["join_rate"] = "binary"
        out |= {o: "binary" for o in self.outcomes}
        out |= {c: "binary" for c in self.controls}
        out |= {"admission_open": "binary", "peer_table_exposed": "binary", "attacker": "categorical",
                "isolated": "categorical"}
        for a in self.attacks:
            out |= {f"{a}.precursor": "binary", f"{a}.executing": "binary", f"{a}.success": "binary"}
        return out


def read_incidents(incidents: Any, labels: Any = None):
    """An incident table as a pandas DataFrame, from a DataFrame, a list of dicts or a CSV / Parquet / JSONL file.

    ``labels`` (same forms, same number of rows) is joined column-wise.

    Examples
    --------
    >>> read_incidents([{"join_rate": 1, "r0.sig_fail": 0}, {"join_rate": 0}]).shape
    (2, 2)
    """
    import pandas as pd

    def one(source, role):
        if isinstance(source, pd.DataFrame):
            return source.reset_index(drop=True)
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.exists():
                raise FileNotFoundError(f"no such incident file: {str(path)!r}")
            suffix = path.suffix.lower()
            try:
                if suffix == ".csv":
                    return pd.read_csv(path)
                if suffix in (".parquet", ".pq"):
                    return pd.read_parquet(path)
                if suffix in (".jsonl", ".ndjson", ".json"):
                    return pd.read_json(path, lines=suffix != ".json")
            except (ValueError, OSError) as error:
                raise InvalidInputError(f"{path.name} cannot be read as an incident table "
                                        f"({' '.join(str(error).split())[:200]})") from None
            raise InvalidInputError(f"{path.name}: expected an incident table as .csv, .parquet or .jsonl; "
                                    f"got suffix {suffix!r}")
        if isinstance(source, Mapping):
            raise InvalidInputError(f"{role} must be a table of rows (a DataFrame, a list of dicts or a file); got "
                                    f"one dict. Wrap a single incident in a list: [{{...}}]")
        if isinstance(source, Sequence) and not isinstance(source, (bytes, str)):
            bad = [i for i, row in enumerate(source) if not isinstance(row, Mapping)]
            if bad:
                raise InvalidInputError(f"{role}: row {bad[0]} is {type(source[bad[0]]).__name__}; expected one dict "
                                        f"{{site: value}} per incident window")
            return pd.DataFrame.from_records(list(source))
        raise InvalidInputError(f"{role} must be a pandas DataFrame, a list of dicts or a .csv / .parquet / .jsonl "
                                f"file; got {type(source).__name__}")

    table = one(incidents, "incidents")
    if labels is not None:
        extra = one(labels, "labels")
        if len(extra) != len(table):
            raise InvalidInputError(f"labels have {len(extra)} rows but the incidents have {len(table)}; give one "
                                    f"label row per incident window (or put the labels in the incident table)")
        clash = sorted(set(extra.columns) & set(table.columns))
        if clash:
            raise InvalidInputError(f"columns {', '.join(clash)} appear in both the incidents and the labels")
        table = pd.concat([table, extra], axis=1)
    return table


class _Data:
    """Validated incident rows as integer arrays (-1 = not recorded) and the per-row constants of the likelihood."""

    def __init__(self, table, structure: _Structure) -> None:
        s = structure
        self.s = s
        if len(table) == 0:
            raise InvalidInputError("the incident table has no rows; give at least one incident window")
        valid = s.site_names()
        columns = [str(c) for c in table.columns]
        for name in columns:
            if name in valid:
                continue
            prefix, _, variable = name.partition(".")
            if prefix[:1] == "r" and prefix[1:].isdigit() and variable in s.telemetry:
                raise InvalidInputError(
                    f"column {name!r} names replica {prefix!r}, which does not exist in this {s.n}-replica cluster "
                    f"model; valid replicas are r0 to r{s.n - 1}")
            listed = [c for c in valid if not (c[:1] == "r" and c.split(".")[0][1:].isdigit())]
            raise InvalidInputError(
                f"unknown column {name!r}. Valid columns: {', '.join(listed)}; and r<k>.<telemetry> for k = 0 to "
                f"{s.n - 1} with telemetry in {', '.join(s.telemetry)}. Drop other columns (ids, times) before fitting")
        N = len(table)
        self.N = N
        self.columns = columns

        import pandas as pd

        duplicated = sorted({c for c in columns if columns.count(c) > 1})
        if duplicated:
            raise InvalidInputError(f"column(s) {', '.join(duplicated)} appear more than once; give each site once")

        def column(name: str, top: int = 1) -> np.ndarray:
            if name not in table.columns:
                return np.full(N, -1, np.int64)
            raw = table[name]
            numeric = raw.astype(float) if raw.dtype == bool else pd.to_numeric(raw, errors="coerce")
            values = np.asarray(numeric, dtype=float)
            missing = np.asarray(raw.isna())
            with np.errstate(invalid="ignore"):
                valid = (values == np.round(values)) & (values >= 0) & (values <= top)
            bad = ~missing & ~valid
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise InvalidInputError(f"column {name!r}, row {i}: expected {_expected(top)}, got {raw.iloc[i]!r}"
                                        f"{f' ({int(bad.sum())} such rows)' if bad.sum() > 1 else ''}")
            return np.where(missing, -1, np.nan_to_num(values)).astype(np.int64)

        n = s.n
        self.tel = np.stack([np.stack([column(f"r{k}.{t}") for t in s.telemetry], -1) for k in range(n)], 1)  # (N,n,T)
        self.join = column("join_rate")
        self.outcome = np.stack([column(o) for o in s.outcomes], -1)
        self.control = np.stack([column(c) for c in s.controls], -1)
        self.admission = column("admission_open")
        self.exposed = column("peer_table_exposed")
        self.attacker = column("attacker", n)
        self.isolated = column("isolated", n)
        self.precursor = np.stack([column(f"{a}.precursor") for a in s.attacks], -1)
        self.executing = np.stack([column(f"{a}.executing") for a in s.attacks], -1)
        self.success = np.stack([column(f"{a}.success") for a in s.attacks], -1)
        self._check_labels()
        self._constants()

    def _check_labels(self) -> None:
        s = self.s
        for a, attack in enumerate(s.attacks):
            pre, exe, suc = self.precursor[:, a], self.executing[:, a], self.success[:, a]
            for bad, why in (((exe == 1) & (pre == 0), "executing=1 with precursor=0"),
                             ((suc == 1) & (exe == 0), "success=1 with executing=0"),
                             ((suc == 1) & (pre == 0), "success=1 with precursor=0")):
                if bad.any():
                    rows = np.flatnonzero(bad)
                    raise InvalidInputError(
                        f"rows {', '.join(map(str, rows[:5]))}: {attack} {why}; the model has probability zero for "
                        f"that (an attack executes only after its precursor phase and succeeds only when executing)")
        all_precursors = (self.precursor >= 0).all(1)
        self.labelled = all_precursors

    def _constants(self) -> None:
        """Per-row arrays of the likelihood that do not depend on the parameters."""
        s = self.s
        tel = self.tel
        self.tel_on = (tel == 1).astype(float)            # (N, n, T)
        self.tel_off = (tel == 0).astype(float)
        self.count_on = self.tel_on.sum(1)                # (N, T)
        self.count_off = self.tel_off.sum(1)
        # Outcome inclusion-exclusion coefficients over subsets U of the outcomes (N, 2^O).
        y = self.outcome[:, None, :]
        u = s.U[None]
        ok = np.where(y < 0, u == 0, np.where(y == 0, u == 1, True)).all(-1)
        sign = (-1.0) ** ((u * (y == 1)).sum(-1))
        self.outcome_coefficient = np.where(ok, sign, 0.0)
        # Footing record: indicator over (admission_open, peer_table_exposed) consistent with the row.
        grid = np.arange(2)
        adm = np.where(self.admission[:, None] < 0, True, self.admission[:, None] == grid[None])
        exp = np.where(self.exposed[:, None] < 0, True, self.exposed[:, None] == grid[None])
        self.footing_record = (adm[:, :, None] & exp[:, None, :]).astype(float)        # (N, 2, 2)
        A1 = s.n + 1
        attacker = np.arange(A1)
        self.attacker_mask = np.where(self.attacker[:, None] < 0, True, self.attacker[:, None] == attacker[None])
        self.precursor_index = np.where(self.labelled, (np.clip(self.precursor, 0, 1) << np.arange(len(s.attacks))).sum(1), 0)
        state = 3 * (self.executing + 1) + (self.success + 1)            # (N, A): 0..8, 0 = both unknown
        self.label_state = state
        # Control patterns: which controls each row records, and the recorded bits as an index.
        recorded = self.control >= 0
        C = len(s.controls)
        self.control_pattern = (recorded.astype(np.int64) << np.arange(C)).sum(1)
        self.control_bits = np.clip(self.control, 0, 1)
        # The isolated site: when recorded, the attacker's replica is isolated iff attacker == isolated >= 1.
        self.isolated_cut = (self.isolated[:, None] == attacker[None]) & (attacker[None] >= 1)    # (N, n + 1)
        # Rows share outcome patterns (at most 3 ** outcomes) and, when labelled, attack-state signatures
        # (precursor bits and label states); tables are built once per pattern and signature.
        self.outcome_patterns, self.outcome_pattern = np.unique(self.outcome_coefficient, axis=0,
                                                                return_inverse=True)
        self.outcome_pattern = self.outcome_pattern.reshape(-1)
        key = np.concatenate([np.clip(self.precursor, 0, 1), state], 1)
        signatures, signature = np.unique(key, axis=0, return_inverse=True)
        signature = signature.reshape(-1)
        A = len(s.attacks)
        width = max(int(signatures[:, :A].sum(1).max()), 1)
        # Per signature: the attacks whose precursor is on (padded with A, a factor of 1) and their states.
        order = np.argsort(signatures[:, :A] == 0, axis=1, kind="stable")[:, :width]
        on = np.take_along_axis(signatures[:, :A], order, 1) == 1
        self.signature_attack = np.where(on, order, A)
        self.signature_state = np.where(on, np.take_along_axis(signatures[:, A:], order, 1), 0)
        self.signature = np.where(self.labelled, signature, -1)
        # Precursor configurations with non-zero prior probability per attacker class (none, primary, backup).
        self.feasible_configs = [np.flatnonzero(s.feasible[c].any((0, 1))) for c in range(3)]

    def summary_names(self) -> list[str]:
        s = self.s
        names = [f"telemetry.{t}" for t in s.telemetry] + ["join_rate", *s.outcomes, *s.controls,
                                                           "admission_open", "peer_table_exposed", "attacker_inside",
                                                           "isolated_any"]
        for a in s.attacks:
            names += [f"{a}.precursor", f"{a}.executing", f"{a}.success"]
        return names

    def columns_matrix(self) -> np.ndarray:
        """Recorded values in the order of :meth:`summary_names` (per-replica telemetry pooled), -1 = missing."""
        tel = self.tel.transpose(0, 2, 1)     # (N, T, n): pooled over replicas
        flat = [self.join, *self.outcome.T, *self.control.T, self.admission, self.exposed,
                np.where(self.attacker < 0, -1, self.attacker >= 1), np.where(self.isolated < 0, -1, self.isolated >= 1)]
        for a in range(len(self.s.attacks)):
            flat += [self.precursor[:, a], self.executing[:, a], self.success[:, a]]
        return tel, np.stack(flat, 1)


def _expected(top: int) -> str:
    return "0 or 1 (or empty / NaN when not recorded)" if top == 1 else \
        f"an integer from 0 to {top} (0 none, k + 1 replica k; empty / NaN when not recorded)"


def _frequencies(tel: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """Share of recorded entries equal to 1, per summary column (NaN when nothing is recorded)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = (tel == 1).sum((0, 2)) / (tel >= 0).sum((0, 2))
        rest = (flat == 1).sum(0) / (flat >= 0).sum(0)
    return np.concatenate([pooled, rest]).astype(float)


class _Likelihood:
    """Exact per-row log-likelihood ``log P(row | theta)`` in torch (float64), for any subset of rows."""

    def __init__(self, data: _Data) -> None:
        import torch

        self.data = data
        s = data.s
        self.torch = torch
        t = lambda x: torch.as_tensor(np.asarray(x, dtype=float))   # noqa: E731
        self.P = t(s.P)
        self.U = t(s.U)
        self.cfg = t(s.cfg)
        self.precondition = t(s.precondition)
        self.feasible = torch.as_tensor(s.feasible)
        self.classes = torch.as_tensor(s.classes)
        self.tensors = {name: t(getattr(data, name)) for name in (
            "tel_on", "tel_off", "count_on", "count_off", "outcome_coefficient", "footing_record")}
        self.tensors["attacker_mask"] = torch.as_tensor(data.attacker_mask)
        self.tensors["isolated_cut"] = torch.as_tensor(data.isolated_cut)
        self.strict = False

    def _log(self, x):
        # Strict mode keeps structural zeros at -inf (to find impossible rows); otherwise a floor keeps
        # the gradient of log finite where a footing state is impossible.
        return self.torch.log(x) if self.strict else self.torch.log(x.clamp_min(1e-300))

    def parameters(self, theta):
        """The flat parameter vector clamped into (0, 1), padded with a 0 slot, and the outcome arrays' views."""
        torch = self.torch
        s = self.data.s
        tp = torch.cat([theta.clamp(_EPS, 1 - _EPS), theta.new_zeros(1)])
        return {"flat": tp} | {name: tp[torch.as_tensor(getattr(s, name))]
                               for name in ("impact", "outcome_baseline", "prior_controls")}

    def tables(self, theta) -> dict:
        """Parameter-only tables shared by every row, from the model's own formulas (models.tables)."""
        from bayes_defense.models import tables as model

        torch = self.torch
        s = self.data.s
        v = self.parameters(theta)
        flat, index = v["flat"], s.index

        def value(name):
            return flat[index[name]]

        P, n = self.P, s.n
        log1m = lambda x: torch.log1p(-x)   # noqa: E731
        precursors = {a: P[:, i] for i, a in enumerate(s.attacks)}
        # Telemetry: log P(indicator off | precursors, faulty) per (faulty, P, T).
        on_probability = torch.stack([torch.stack([model.telemetry_probability(t, value, faulty, precursors)
                                                   for t in s.telemetry], -1) for faulty in (0, 1)])
        keep = log1m(on_probability)
        on = torch.log(on_probability)
        join_probability = model.join_rate_probability(value, precursors)
        join_off, join_on = log1m(join_probability), torch.log(join_probability)
        # Precursor prior with the footing sites, per (class, admission_open, exposed, P).
        attempt = torch.stack([model.precursor_probability(a, value, self.precondition[..., i])
                               for i, a in enumerate(s.attacks)], -1)[..., None, :]              # (3, 2, 2, 1, A)
        per_attack = torch.where(P.bool(), self._log(attempt), log1m(attempt))
        logw = per_attack.sum(-1)
        logw = torch.where(self.feasible, logw, torch.full_like(logw, -math.inf))
        adm, exp = value("prior.admission_open"), value("prior.peer_table_exposed")
        logw = logw + torch.log(torch.stack([1 - adm, adm]))[None, :, None, None] \
            + torch.log(torch.stack([1 - exp, exp]))[None, None, :, None]
        inside, iso = value("prior.attacker_inside"), value("prior.isolated")
        attacker = torch.log(model.spread(inside, n))
        isolated = torch.log(model.spread(iso, n))
        # Success and execution, per configuration of (controls, isolated bit) and attack.
        in_place = {key: self.cfg[:, slot] for key, slot in model.EFFICACY_SLOTS.items()}
        keep_success = torch.stack([model.success_given_controls(a, value, s.share, in_place)
                                    for a in s.attacks], -1)                                     # (cfg, A)
        pe = torch.stack([model.execution_probability(a, value, 1.0) for a in s.attacks])[None]
        q = pe * keep_success
        zero = torch.zeros_like(q)
        # (alpha, beta) per label state 3 * (executing + 1) + (success + 1), for a precursor that is on.
        alpha = torch.stack([1 - q, 1 - q, zero, 1 - pe.expand_as(q), 1 - pe.expand_as(q), zero,
                             pe - q, pe - q, zero])
        beta = torch.stack([q, zero, q, zero, zero, zero, q, zero, q])                         # (9, cfg, A)
        # The noisy-OR outcomes as a sum of products over outcome subsets U: P(O = 0 | S) = (1 - b) prod_A (1 - w_A S_A).
        log_d = self.U @ log1m(v["impact"]).T                                                 # (U, A)
        factor = alpha[:, None] + beta[:, None] * torch.exp(log_d)[None, :, None]             # (9, U, cfg, A)
        log_factor = torch.log(factor.clamp_min(1e-300))
        log_b = self.U @ log1m(v["outcome_baseline"])                                        # (U,)
        controls = v["prior_controls"]
        C = len(s.controls)
        bits = self.cfg[: 2 ** C, :C]
        log_control = bits @ torch.log(controls) + (1 - bits) @ log1m(controls)             # (2^C,)
        return {"tel_off": keep, "tel_on": on, "join_off": join_off, "join_on": join_on, "footing": logw,
                "attacker": attacker, "isolated": isolated, "log_factor": log_factor, "log_b": log_b,
                "log_control": log_control, "inside": inside, "iso": iso}

    def __call__(self, theta, rows: np.ndarray, tables: dict | None = None):
        """Log-likelihood of each row in ``rows`` (a tensor in the same order)."""
        torch = self.torch
        tables = self.tables(theta) if tables is None else tables
        rows = np.asarray(rows)
        out = theta.new_zeros(len(rows))
        labelled = self.data.labelled[rows]
        for mask, method in ((labelled, self._labelled), (~labelled, self._unlabelled)):
            if mask.any():
                patterns = self.data.control_pattern[rows[mask]]
                for pattern in np.unique(patterns):
                    where = np.flatnonzero(mask)[patterns == pattern]
                    out = out.index_put((torch.as_tensor(where),), method(tables, rows[where], int(pattern)))
        return out

    def _common(self, tables, rows):
        torch = self.torch
        d = self.data
        T = self.tensors
        r = torch.as_tensor(rows)
        isolated_rec = torch.as_tensor(d.isolated[rows])
        # Isolated: factor P(isolated = v) when recorded; the cut weights per attacker value.
        iso_term = torch.where(isolated_rec >= 0, tables["isolated"][isolated_rec.clamp_min(0)],
                               torch.zeros(len(rows), dtype=tables["iso"].dtype))
        cut_prob = tables["iso"] / self.data.s.n
        n1 = self.data.s.n + 1
        unrecorded = torch.stack([1 - cut_prob, cut_prob]).expand(len(rows), n1, 2).clone()
        unrecorded[:, 0] = torch.tensor([1.0, 0.0], dtype=unrecorded.dtype)
        cut = T["isolated_cut"][r].to(unrecorded.dtype)
        recorded = torch.stack([1 - cut, cut], -1)
        weights = torch.where((isolated_rec >= 0)[:, None, None], recorded, unrecorded)          # (R, n+1, 2)
        attacker = tables["attacker"][None] + torch.log(T["attacker_mask"][r].to(unrecorded.dtype))
        return r, iso_term, weights, attacker

    def _join(self, tables, rows, config=None):
        torch = self.torch
        y = torch.as_tensor(self.data.join[rows])
        on, off = tables["join_on"], tables["join_off"]
        if config is not None:
            on, off = on[config], off[config]
            return torch.where(y == 1, on, torch.where(y == 0, off, torch.zeros_like(on)))
        return torch.where((y == 1)[:, None], on[None], torch.where((y == 0)[:, None], off[None],
                                                                     torch.zeros_like(on)[None]))

    def _marginal_controls(self, table, tables, rows, pattern):
        """Weight the last axis (control configurations) by their prior, sum the unrecorded controls out.

        Returns the table with last axis over the recorded controls' configurations and each row's index in it.
        """
        d = self.data
        C = len(d.s.controls)
        table = table * self.torch.exp(tables["log_control"])
        free = [m for m in range(C) if not (pattern >> m) & 1]
        lead = table.shape[:-1]
        if free:
            # Bit m of the configuration index is axis C - 1 - m of the reshaped control axes.
            axes = [len(lead) + (C - 1 - m) for m in free]
            table = table.reshape(*lead, *(2,) * C).sum(dim=axes).reshape(*lead, -1)
        index = np.zeros(len(rows), np.int64)
        bits = d.control_bits[rows]
        for m in range(C - 1, -1, -1):
            if (pattern >> m) & 1:
                index = index * 2 + bits[:, m]
        return table, self.torch.as_tensor(index)

    def _subsets(self, rows):
        """The outcome subsets U with a non-zero coefficient in some row (only those tables are built)."""
        d = self.data
        used = np.abs(d.outcome_patterns[np.unique(d.outcome_pattern[rows])]).sum(0) > 0
        return np.flatnonzero(used)

    def _outcome_rows(self, table, tables, rows, pattern, groups):
        """Per row, sum_U C[row, U] table[group of row, U, cut, ..., control config], controls summed out.

        ``table`` is ``(groups, U, 2, ..., 2 ** C)`` over the subsets of :meth:`_subsets`; ``groups`` gives
        each row's group.
        """
        torch = self.torch
        d = self.data
        patterns, pattern_of_row = np.unique(d.outcome_pattern[rows], return_inverse=True)
        coefficient = torch.as_tensor(d.outcome_patterns[patterns][:, self._subsets(rows)], dtype=table.dtype)
        mixed = torch.einsum("ku,gu...->gk...", coefficient, table)                               # (g, k, 2, ..., ctrl)
        mixed, index = self._marginal_controls(mixed, tables, rows, pattern)
        picked = mixed[torch.as_tensor(groups), torch.as_tensor(pattern_of_row.reshape(-1)), ..., index]
        return picked.clamp_min(1e-300)

    def _labelled(self, tables, rows, pattern):
        torch = self.torch
        d, s = self.data, self.data.s
        T = self.tensors
        r, iso_term, cut_weights, attacker = self._common(tables, rows)
        config = torch.as_tensor(d.precursor_index[rows])
        # Telemetry at the known precursor configuration, per attacker value.
        off, on = tables["tel_off"][:, config], tables["tel_on"][:, config]                     # (2, R, T)
        base = (T["count_on"][r] * on[0]).sum(-1) + (T["count_off"][r] * off[0]).sum(-1)
        delta = (T["tel_on"][r] * (on[1] - on[0])[:, None]).sum(-1) \
            + (T["tel_off"][r] * (off[1] - off[0])[:, None]).sum(-1)
        tel = base[:, None] + torch.cat([torch.zeros_like(base)[:, None], delta], 1)             # (R, n+1)
        footing = torch.einsum("iae,caei->ic", T["footing_record"][r], torch.exp(tables["footing"][..., config]))
        footing = self._log(footing)[:, torch.as_tensor(s.classes)]                              # (R, n+1)
        # Outcomes: one table per attack-state signature (the attacks on and their labels).
        signatures, signature_of_row = np.unique(d.signature[rows], return_inverse=True)
        attack = torch.as_tensor(d.signature_attack[signatures])                                 # (g, K)
        state = torch.as_tensor(d.signature_state[signatures])
        lf = torch.cat([tables["log_factor"], torch.zeros_like(tables["log_factor"][..., :1])], -1)
        used = torch.as_tensor(self._subsets(rows))
        log_table = lf[state[..., None], used[None, None, :], :, attack[..., None]].sum(1) \
            + tables["log_b"][used][None, :, None]                                                # (g, U, cfg)
        C = len(s.controls)
        table = torch.exp(log_table).reshape(len(signatures), -1, 2, 2 ** C)                    # (g, U, cut, ctrl)
        outcome = self._outcome_rows(table, tables, rows, pattern, signature_of_row.reshape(-1))   # (R, 2)
        per_attacker = torch.log((cut_weights * outcome[:, None, :]).sum(-1).clamp_min(1e-300))   # (R, n+1)
        total = torch.logsumexp(attacker + footing + tel + per_attacker, 1)
        return total + self._join(tables, rows, config) + iso_term

    def _unlabelled(self, tables, rows, pattern):
        torch = self.torch
        d, s = self.data, self.data.s
        T = self.tensors
        r, iso_term, cut_weights, attacker = self._common(tables, rows)
        off, on = tables["tel_off"], tables["tel_on"]                                             # (2, P, T)
        base = T["count_on"][r] @ on[0].T + T["count_off"][r] @ off[0].T                         # (R, P)
        d_on, d_off = (on[1] - on[0]), (off[1] - off[0])
        exp_footing = torch.exp(tables["footing"])                                               # (3, 2, 2, P)
        record = T["footing_record"][r]
        # Precursor labels (rows may label some attacks) restrict the configurations; built per batch, as a
        # table over all rows would take 2 ** len(ATTACKS) bytes per row.
        # An execution or success labelled 1 implies the precursor phase.
        implied = np.where((d.executing[rows] == 1) | (d.success[rows] == 1), 1, d.precursor[rows])
        labels = implied[:, None, :]
        allowed = ((labels < 0) | (labels == s.P[None])).all(-1)                                 # (R, P)
        precursor = torch.log(torch.as_tensor(allowed).to(base.dtype))
        join = self._join(tables, rows)                                                          # (R, P)
        # Outcome tables over (U, cut, P, controls), one per pattern of execution / success labels
        # (one table when the rows carry none): a precursor that is off contributes a factor 1.
        C = len(s.controls)
        used = torch.as_tensor(self._subsets(rows))
        states, state_of_row = np.unique(d.label_state[rows], axis=0, return_inverse=True)
        lf = tables["log_factor"][:, used].permute(3, 0, 1, 2)                                    # (A, 9, U, cfg)
        lf = lf[torch.arange(lf.shape[0])[None], torch.as_tensor(states)]                        # (g, A, U, cfg)
        log_g = tables["log_b"][used][None, :, None, None] \
            + torch.einsum("gauc,pa->gucp", lf, self.P)                                           # (g, U, cfg, P)
        g = torch.exp(log_g).reshape(len(states), len(used), 2, 2 ** C, -1).transpose(3, 4)    # (g, U, cut, P, ctrl)
        outcome = self._outcome_rows(g, tables, rows, pattern, state_of_row.reshape(-1))        # (R, 2, P)
        parts = []
        n = s.n
        # Attacker none (class 0), the primary r0 (class 1), a backup (class 2): only the precursor
        # configurations their footing allows.
        for cls, attackers in ((0, [0]), (1, [1]), (2, list(range(2, n + 1)))):
            if not attackers:
                continue
            F = torch.as_tensor(d.feasible_configs[cls])
            a = torch.as_tensor(attackers)
            tel = base[:, None, F].expand(-1, len(attackers), -1)
            if cls > 0:
                replicas = a - 1
                tel = tel + T["tel_on"][r][:, replicas] @ d_on[F].T + T["tel_off"][r][:, replicas] @ d_off[F].T
            footing = self._log(torch.einsum("iae,aep->ip", record, exp_footing[cls][..., F]))    # (R, |F|)
            weights = cut_weights[:, a]                                                          # (R, m, 2)
            out = outcome[:, :, F]                                                               # (R, 2, |F|)
            per_attacker = torch.log(torch.einsum("imc,icp->imp", weights, out).clamp_min(1e-300))
            parts.append((attacker[:, a, None] + tel + per_attacker
                          + (footing + precursor[:, F] + join[:, F])[:, None]).reshape(len(rows), -1))
        return torch.logsumexp(torch.cat(parts, 1), 1) + iso_term


def _beta_prior(mean: np.ndarray, concentration: float) -> tuple[np.ndarray, np.ndarray]:
    """Beta(a, b) with the given mean and concentration ``a + b``, raised until ``a, b >= 1``.

    ``a, b >= 1`` keeps the density bounded (no spike at 0 or 1): a default of
    0.0005 gets Beta(1, 1999), a default of 0.3 with concentration 20 gets
    Beta(6, 14).
    """
    mean = np.clip(np.asarray(mean, float), 1e-6, 1 - 1e-6)
    total = np.maximum(concentration, np.maximum(1.0 / mean, 1.0 / (1.0 - mean)))
    return mean * total, (1.0 - mean) * total


def _moment_matched(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Beta(a, b) per column with the draws' mean and variance (an earlier posterior as a prior)."""
    mean = np.clip(draws.mean(0), 1e-6, 1 - 1e-6)
    var = np.maximum(draws.var(0, ddof=1), 1e-12)
    total = np.maximum(mean * (1 - mean) / var - 1.0, 2.0)
    return mean * total, (1 - mean) * total


def _active_parameters(likelihood: _Likelihood, a: np.ndarray, b: np.ndarray, batch: int, seed: int) -> np.ndarray:
    """Parameters the likelihood depends on: a gradient at a random prior draw above rounding error.

    Rounding error: 1e-9 of the largest gradient component. Sums that are
    mathematically constant in a parameter (the prior of a control no
    recorded site depends on sums to one over the control's values) leave
    gradients of order 1e-16 relative.

    A parameter outside this set (say ``collusion_gain`` with no colluders,
    or the efficacies of an attack the labels show never executing) has
    exactly its prior as posterior; it is drawn from its prior, not fitted.
    """
    import torch

    rng = np.random.default_rng([seed, 0xAC7])
    grads = np.zeros(len(a))
    rows = np.arange(likelihood.data.N)
    # A gradient that vanishes at a random interior point but not identically has probability zero.
    # Batches' gradients are summed with their signs: rounding is judged on the total log-likelihood.
    theta = torch.tensor(rng.beta(a, b), requires_grad=True)
    tables = likelihood.tables(theta)
    for start in range(0, len(rows), batch):
        (gradient,) = torch.autograd.grad(likelihood(theta, rows[start:start + batch], tables).sum(), theta,
                                          retain_graph=True)
        grads += gradient.numpy()
    grads = np.abs(grads)
    return grads > 1e-9 * grads.max()


def _impossible_rows(likelihood: _Likelihood, theta: np.ndarray, batch: int) -> np.ndarray:
    import torch

    likelihood.strict = True
    try:
        with torch.no_grad():
            t = torch.tensor(theta)
            tables = likelihood.tables(t)
            rows = np.arange(likelihood.data.N)
            values = np.concatenate([likelihood(t, rows[s:s + batch], tables).numpy()
                                     for s in range(0, len(rows), batch)])
    finally:
        likelihood.strict = False
    return np.flatnonzero(~np.isfinite(values))


def _run_svi(likelihood, a, b, active, *, num_steps, batch_size, learning_rate, num_samples, seed, show):
    import pyro
    import pyro.distributions as dist
    import torch
    from pyro.infer.autoguide import init_to_mean

    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    N = likelihood.data.N
    index = torch.as_tensor(np.flatnonzero(active))
    prior = dist.Beta(torch.tensor(a[active]), torch.tensor(b[active])).to_event(1)
    fixed = torch.tensor(a / (a + b))
    batch = min(batch_size, N)

    def model():
        theta_active = pyro.sample("theta", prior)
        theta = fixed.index_put((index,), theta_active)
        with pyro.plate("incidents", N, subsample_size=batch) as rows:
            pyro.factor("incident", likelihood(theta, rows.numpy()))

    guide, losses = svi_multivariate_normal(model, init_to_mean, num_steps=num_steps, learning_rate=learning_rate,
                                            show=show, desc="SVI (cluster)")
    with torch.no_grad():
        rows = torch.stack([guide()["theta"] for _ in range(num_samples)]).numpy()
    return rows, {"losses": losses}


def _run_nuts(likelihood, a, b, active, *, num_samples, num_warmup, num_chains, seed, show, batch):
    import pyro
    import pyro.distributions as dist
    import torch
    from pyro.infer import MCMC, NUTS

    index = torch.as_tensor(np.flatnonzero(active))
    prior = dist.Beta(torch.tensor(a[active]), torch.tensor(b[active]))
    fixed = torch.tensor(a / (a + b))
    rows = np.arange(likelihood.data.N)

    def potential(params):
        z = params["logit"]
        theta_active = torch.sigmoid(z)
        # log prior + log |d theta / d z| (the logit transform) + exact log-likelihood of every row.
        log_density = (prior.log_prob(theta_active) + torch.nn.functional.logsigmoid(z)
                       + torch.nn.functional.logsigmoid(-z)).sum()
        theta = fixed.index_put((index,), theta_active)
        tables = likelihood.tables(theta)
        for start in range(0, len(rows), batch):
            log_density = log_density + likelihood(theta, rows[start:start + batch], tables).sum()
        return -log_density

    chains, diverging = [], np.zeros((num_chains, num_samples), bool)
    mean = a[active] / (a[active] + b[active])
    for chain in range(num_chains):
        pyro.set_rng_seed(seed * 1000 + chain)
        rng = np.random.default_rng([seed, chain, 0x2C7])
        # Start at the prior mean, jittered per chain so that r_hat can see disagreement.
        start = np.log(mean / (1 - mean)) + rng.normal(0, 0.3, size=mean.shape)
        kernel = NUTS(potential_fn=potential, target_accept_prob=0.85, max_tree_depth=8)
        mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=num_warmup, num_chains=1,
                    initial_params={"logit": torch.tensor(start)}, disable_progbar=not show)
        mcmc.run()
        chains.append(torch.sigmoid(mcmc.get_samples()["logit"]).detach().numpy())
        divergences = mcmc.diagnostics().get("divergences", {}).get("chain 0", [])
        diverging[chain, np.asarray(divergences, int)] = True
    return np.stack(chains), {"diverging": diverging}


class ClusterPosterior:
    """Posterior draws of the cluster model's named parameters, with diagnostics and checks.

    Build with :func:`fit_cluster` (``bd.fit(bd.models.cluster(n), incidents)``)
    or :func:`bayes_defense.load_posterior`.

    Attributes
    ----------
    draws : numpy.ndarray
        ``(chains, draws, parameters)``, one column per name of :attr:`names`.
    names : list of str
        Parameter names (:data:`bayes_defense.models.PARAMETERS`).
    active : numpy.ndarray of bool
        Parameters the likelihood depends on; the others were drawn from their prior.
    prior_a, prior_b : numpy.ndarray
        Beta prior of each parameter.
    method : str
        ``"svi"`` or ``"nuts"``.
    diagnostics_ok : bool
        False when a convergence check failed; ``problems`` says which.
    observed, replicated : numpy.ndarray
        Share of recorded entries equal to 1 per summary column (:attr:`summary_names`)
        in the incidents, and in posterior predictive replicates ``(draws, columns)``.
    info : dict
        Replicas, colluders, rows, labelled rows, seconds, seed, loss trend.
    """

    def __init__(self, draws: np.ndarray, names: Sequence[str], *, active: np.ndarray, prior_a: np.ndarray,
                 prior_b: np.ndarray, method: str, sample_stats: Mapping[str, np.ndarray], observed: np.ndarray,
                 replicated: np.ndarray, summary_names: Sequence[str], info: Mapping[str, Any], level: float = 0.9,
                 problems: Sequence[str] = ()) -> None:
        self.draws = np.asarray(draws, float)
        self.names = list(names)
        self.active = np.asarray(active, bool)
        self.prior_a = np.asarray(prior_a, float)
        self.prior_b = np.asarray(prior_b, float)
        self.method = method
        self.sample_stats = {k: np.asarray(v) for k, v in sample_stats.items()}
        self.observed = np.asarray(observed, float)
        self.replicated = np.asarray(replicated, float)
        self.summary_names = list(summary_names)
        self.info = dict(info)
        self.level = float(level)
        self.problems = list(problems)
        self._diagnostics = None

    def __repr__(self) -> str:
        chains, draws, _ = self.draws.shape
        return (f"ClusterPosterior(n_nodes={self.info.get('n_nodes')}, method={self.method!r}, chains={chains}, "
                f"draws={draws}, parameters={len(self.names)} ({int(self.active.sum())} fitted), "
                f"rows={self.info.get('rows')}, diagnostics_ok={self.diagnostics_ok})")

    @property
    def diagnostics_ok(self) -> bool:
        """True when every convergence check passed."""
        return not self.problems

    @property
    def num_draws(self) -> int:
        """Total draws over all chains."""
        return int(self.draws.shape[0] * self.draws.shape[1])

    def flat(self, name: str) -> np.ndarray:
        """All draws of one parameter, ``(chains * draws,)``."""
        if name not in self.names:
            raise InvalidInputError(f"unknown parameter {name!r}; parameters are bd.models.PARAMETERS: "
                                    f"{', '.join(self.names)}")
        return self.draws[..., self.names.index(name)].reshape(-1)

    def model_parameters(self, draws: int = 50, seed: int = 0) -> dict[str, np.ndarray]:
        """``{name: 1-D array of draws}`` for every parameter, for ``bd.models.cluster(n, parameters=...)``.

        Parameters missing from the catalogue of this release are left out;
        parameters the catalogue has gained since the fit keep its default.

        Examples
        --------
        >>> import bayes_defense as bd
        >>> rows = [{"r0.sig_fail": 0, "safety_violated": 0}] * 50
        >>> post = bd.fit(bd.models.cluster(4), rows, num_steps=30, num_samples=20, progress=False, check=False,
        ...               ppc_draws=4)
        >>> model = bd.models.cluster(4, parameters=post.model_parameters(draws=8))
        >>> p = bd.models.success_probability(model)["replay"]
        >>> bool(0.0 <= p.lower < p.upper <= 1.0)
        True
        """
        from bayes_defense.models.parameters import PARAMETERS

        if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
            raise InvalidInputError(f"draws must be a positive integer, got {draws!r}")
        rng = np.random.default_rng([int(seed), 0xC1A])
        index = rng.choice(self.num_draws, size=draws, replace=draws > self.num_draws)
        flat = self.draws.reshape(-1, len(self.names))[index]
        return {name: np.clip(flat[:, i], 0.0, 1.0) for i, name in enumerate(self.names) if name in PARAMETERS}

    def model(self, draws: int = 50, seed: int = 0, **kwargs):
        """The fitted cluster model: ``bd.models.cluster(n_nodes, parameters=model_parameters(draws))``."""
        from bayes_defense.models import cluster

        kwargs.setdefault("colluders", self.info.get("colluders"))
        return cluster(int(self.info["n_nodes"]), parameters=self.model_parameters(draws, seed), **kwargs)

    def estimate(self, name: str):
        """Posterior mean of one parameter with its equal-tailed credible interval at ``level``.

        Examples
        --------
        >>> import bayes_defense as bd
        >>> post = bd.fit(bd.models.cluster(4), [{"join_rate": 0}] * 40, num_steps=30, num_samples=20,
        ...               progress=False, check=False, ppc_draws=4)
        >>> e = post.estimate("telemetry.join_rate.baseline")
        >>> 0.0 <= e.lower <= e.mean <= e.upper <= 1.0
        True
        """
        from bayes_defense.estimate import Probability

        values = self.flat(name)
        tail = (1 - self.level) / 2
        low, high = np.quantile(values, [tail, 1 - tail])
        mean = float(values.mean())
        return Probability(mean, min(float(low), mean), max(float(high), mean), level=self.level,
                           ess=float(len(values)), backend=f"fit-{self.method}")

    def interval(self, name: str, level: float | None = None) -> np.ndarray:
        """Equal-tailed credible interval ``[low, high]`` of one parameter."""
        level = self.level if level is None else float(level)
        tail = (1 - level) / 2
        return np.quantile(self.flat(name), [tail, 1 - tail])

    def identification(self):
        """Per parameter: prior and posterior mean and sd, their ratio, and whether it was fitted.

        ``sd_ratio`` near 1 means the incidents said little about the
        parameter: it kept its prior (alone, or on a ridge with others, such
        as ``p_success`` and ``collusion_gain`` that enter only through the
        success probability).
        """
        import pandas as pd

        a, b = self.prior_a, self.prior_b
        prior_mean = a / (a + b)
        prior_sd = np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
        flat = self.draws.reshape(-1, len(self.names))
        return pd.DataFrame({"prior_mean": prior_mean, "prior_sd": prior_sd, "mean": flat.mean(0),
                             "sd": flat.std(0, ddof=1), "sd_ratio": flat.std(0, ddof=1) / prior_sd,
                             "fitted": self.active}, index=self.names)

    def prior_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Beta ``(a, b)`` per parameter, moment-matched to these draws (for ``fit(..., prior=posterior)``)."""
        return _moment_matched(self.draws.reshape(-1, len(self.names)))

    def to_inference_data(self):
        """ArviZ data: posterior, sample_stats, observed_data, posterior_predictive.

        Examples
        --------
        >>> import bayes_defense as bd
        >>> post = bd.fit(bd.models.cluster(4), [{"join_rate": 1}] * 30, num_steps=30, num_samples=20,
        ...               progress=False, check=False, ppc_draws=4)
        >>> post.to_inference_data().posterior["theta"].dims
        ('chain', 'draw', 'parameter')
        """
        groups = {
            "posterior": {"theta": self.draws},
            "sample_stats": dict(self.sample_stats),
            "observed_data": {"frequency": self.observed},
            "posterior_predictive": {"frequency": self.replicated[None]},
        }
        dims = {"theta": ["parameter"], "frequency": ["summary"]}
        coords = {"parameter": list(self.names), "summary": list(self.summary_names)}
        info = dict(self.info, active=[bool(x) for x in self.active], prior_a=self.prior_a.tolist(),
                    prior_b=self.prior_b.tolist())
        attrs = {"format": CLUSTER_FORMAT_NAME, "format_version": CLUSTER_FORMAT_VERSION, "method": self.method,
                 "info": json.dumps(info), "level": self.level, "problems": json.dumps(self.problems)}
        return inference_data.from_groups(groups, dims=dims, coords=coords, attrs=attrs)

    @property
    def diagnostics(self):
        """``az.summary`` table: one row per parameter (``theta[<name>]``)."""
        if self._diagnostics is None:
            self._diagnostics = inference_data.summary(self.to_inference_data(), var_names=["theta"], level=self.level)
        return self._diagnostics

    def check(self) -> list[str]:
        """Run the convergence checks of :meth:`bayes_defense.fit.Posterior.check`; return (and record) failures.

        NUTS: split r_hat below 1.01, bulk and tail ESS at least 100, no
        divergences. SVI: the loss no longer falling over the last tenth of
        the steps (guide draws are independent, so r_hat and ESS are reported
        but not judged).
        """

        self.problems = convergence_problems(self.method, self.diagnostics, self.num_draws, self.sample_stats,
                                             self.info.get("loss_trend"))
        return self.problems

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary: draws, rows, worst r_hat and ESS, diagnostics, seconds."""

        return {
            "model": f"cluster({self.info.get('n_nodes')})",
            "method": self.method,
            "draws": self.num_draws,
            "rows": self.info.get("rows"),
            "labelled_rows": self.info.get("labelled_rows"),
            "fitted_parameters": int(self.active.sum()),
            "prior_only_parameters": int((~self.active).sum()),
            **diagnostics_summary(self),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the posterior to a NetCDF-4 file (numbers and strings only; no pickle).

        Read it back with :func:`bayes_defense.load_posterior`.

        Examples
        --------
        >>> import tempfile, pathlib, bayes_defense as bd
        >>> post = bd.fit(bd.models.cluster(4), [{"join_rate": 1}] * 30, num_steps=30, num_samples=20,
        ...               progress=False, check=False, ppc_draws=4)
        >>> path = post.save(pathlib.Path(tempfile.mkdtemp()) / "cluster.nc")
        >>> bool(np.allclose(bd.load_posterior(path).draws, post.draws))
        True
        """

        return save_posterior(self, path)


    def plot_ppc(self, path: str | os.PathLike[str] | None = None):
        """Posterior predictive check: observed share of 1s per summary column against replicated ones.

        Per column recorded in the incidents, the replicates' 90% interval
        as a bar and the observed share as a dot; a dot outside its bar is a
        feature of the incidents the fitted model does not reproduce.

        Examples
        --------
        >>> import bayes_defense as bd
        >>> post = bd.fit(bd.models.cluster(4), [{"join_rate": 1}, {"join_rate": 0}] * 10, num_steps=20,
        ...               num_samples=20, progress=False, check=False, ppc_draws=5)
        >>> len(post.plot_ppc().axes)
        1
        """
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        if self.observed.size == 0 or self.replicated.size == 0:
            raise InvalidInputError("this posterior carries no posterior predictive draws to plot (ppc_draws=0)")
        shown = np.flatnonzero(np.isfinite(self.observed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # all-NaN columns: nothing recorded
            low = np.nanquantile(self.replicated, 0.05, axis=0)
            high = np.nanquantile(self.replicated, 0.95, axis=0)
        figure, ax = plt.subplots(figsize=(7, 0.25 * len(shown) + 1.5))
        for position, j in enumerate(shown):
            ax.plot([low[j], high[j]], [position, position], color="tab:blue", linewidth=4, alpha=0.4,
                    solid_capstyle="butt")
            ax.plot(self.observed[j], position, "o", color="black", markersize=3)
        ax.set_yticks(range(len(shown)), [self.summary_names[j] for j in shown], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("share of recorded entries equal to 1: bar = replicated 90% interval, dot = observed")
        ax.set_title(f"posterior predictive check, cluster({self.info.get('n_nodes')}), {self.info.get('rows')} "
                     f"incidents ({self.method})")
        ax.grid(axis="x", alpha=0.3)
        figure.tight_layout()
        if path is not None:
            figure.savefig(path, dpi=120)
            plt.close(figure)
        return figure


def posterior_from_groups(path: Path, groups: Mapping[str, Any]) -> ClusterPosterior:
    """Rebuild a :class:`ClusterPosterior` from the NetCDF groups :meth:`ClusterPosterior.save` wrote.

    Called by :func:`bayes_defense.load_posterior`, which has already checked
    that the file is HDF5 and read it without executing code. Refuses a file
    of another major version or with arrays of the wrong shape or range.
    """
    from bayes_defense.models.parameters import PARAMETERS

    posterior = groups["posterior"]
    version = str(posterior.attrs.get("format_version", ""))
    if version.split(".")[0] != CLUSTER_FORMAT_VERSION.split(".")[0]:
        raise InvalidInputError(f"{path.name} has cluster posterior format version {version!r}; this release reads "
                                f"{CLUSTER_FORMAT_VERSION.split('.')[0]}.x; refit with this release")
    try:
        info = json.loads(str(posterior.attrs.get("info", "{}")))
        problems = json.loads(str(posterior.attrs.get("problems", "[]")))
    except (ValueError, RecursionError):
        raise InvalidInputError(f"{path.name}: the posterior's metadata is not valid JSON; the file is damaged") from None
    if not isinstance(info, dict) or not isinstance(problems, list):
        raise InvalidInputError(f"{path.name}: the posterior's metadata must be an object (info) and a list (problems); "
                                f"the file is damaged or not ours")
    if "theta" not in posterior or tuple(posterior["theta"].dims) != ("chain", "draw", "parameter"):
        raise InvalidInputError(f"{path.name} lacks the posterior variable 'theta' with dims (chain, draw, parameter); "
                                f"the file is damaged or not ours")
    names = [str(x) for x in posterior["theta"].coords["parameter"].values]
    draws = np.asarray(posterior["theta"].values, dtype=float)
    if not np.isfinite(draws).all() or (draws < 0).any() or (draws > 1).any():
        raise InvalidInputError(f"{path.name}: posterior draws must be probabilities in [0, 1]; the file is damaged")
    unknown = [name for name in names if name not in PARAMETERS]
    if unknown:
        raise InvalidInputError(f"{path.name} holds parameter(s) {', '.join(unknown[:5])} that this release's cluster "
                                f"model does not have; refit with this release")
    K = len(names)
    active = np.asarray(info.pop("active", [True] * K), bool)
    prior_a = np.asarray(info.pop("prior_a", [1.0] * K), float)
    prior_b = np.asarray(info.pop("prior_b", [1.0] * K), float)
    if not (active.ndim == prior_a.ndim == prior_b.ndim == 1 and len(active) == len(prior_a) == len(prior_b) == K):
        raise InvalidInputError(f"{path.name}: prior metadata does not match the {K} parameters; the file is damaged")
    if not (np.isfinite(prior_a).all() and np.isfinite(prior_b).all() and (prior_a > 0).all() and (prior_b > 0).all()):
        raise InvalidInputError(f"{path.name}: the Beta prior counts must be finite and positive; the file is damaged")
    level = float(posterior.attrs.get("level", 0.9)) if isinstance(posterior.attrs.get("level", 0.9), (int, float, np.number)) else math.nan
    if not 0.0 < level < 1.0:
        raise InvalidInputError(f"{path.name}: the posterior's credible level {posterior.attrs.get('level')!r} is not in (0, 1)")
    stats = {name: np.asarray(v.values) for name, v in groups["sample_stats"].items()} \
        if "sample_stats" in groups else {}
    if "observed_data" in groups:
        observed = np.asarray(groups["observed_data"]["frequency"].values, float)
        summary_names = [str(x) for x in groups["observed_data"]["frequency"].coords["summary"].values]
    else:
        observed, summary_names = np.zeros(0), []
    replicated = (np.asarray(groups["posterior_predictive"]["frequency"].values[0], float)
                  if "posterior_predictive" in groups else np.zeros((0, len(summary_names))))
    return ClusterPosterior(draws, names, active=active, prior_a=prior_a, prior_b=prior_b,
                            method=str(posterior.attrs.get("method", "")), sample_stats=stats, observed=observed,
                            replicated=replicated, summary_names=summary_names, info=info,
                            level=level, problems=problems)


def _replicate(structure: _Structure, data: _Data, model, draws: np.ndarray, names: list[str], seed: int,
               rows: int = 2000) -> np.ndarray:
    """Summary frequencies of incidents simulated from the model at each parameter draw.

    Each replicate has ``min(N, rows)`` incidents, with the recording pattern
    (which entries are missing) of as many incidents drawn from the data.
    """
    import pyro
    import torch

    from bayes_defense.models import cluster

    rng = np.random.default_rng([seed, 0x9E9])
    size = min(data.N, rows)
    pick = rng.choice(data.N, size=size, replace=False)
    tel_obs, flat_obs = data.columns_matrix()
    tel_mask, flat_mask = tel_obs[pick] < 0, flat_obs[pick] < 0
    s = structure
    out = []
    for d, values in enumerate(draws):
        replica = cluster(s.n, colluders=model.colluders,
                          parameters={name: float(v) for name, v in zip(names, values, strict=True)})
        pyro.set_rng_seed(int(seed) * 100_003 + d)
        with torch.no_grad(), pyro.plate("incidents", size, dim=-1):
            trace = pyro.poutine.trace(replica).get_trace()

        def site(name, trace=trace):
            return trace.nodes[name]["value"].detach().numpy().astype(np.int64)

        tel = np.stack([np.stack([site(f"r{k}.{t}") for k in range(s.n)], -1) for t in s.telemetry], 1)  # (R,T,n)
        flat = [site("join_rate"), *(site(o) for o in s.outcomes), *(site(c) for c in s.controls),
                site("admission_open"), site("peer_table_exposed"), (site("attacker") >= 1).astype(np.int64),
                (site("isolated") >= 1).astype(np.int64)]
        for a in s.attacks:
            flat += [site(f"{a}.precursor"), site(f"{a}.executing"), site(f"{a}.success")]
        flat = np.stack(flat, 1)
        out.append(_frequencies(np.where(tel_mask, -1, tel), np.where(flat_mask, -1, flat)))
    return np.array(out)


def _fit_prior(model, names: list[str], prior: ClusterPosterior | None,
               concentration: float) -> tuple[np.ndarray, np.ndarray]:
    """Beta prior ``(a, b)`` of each parameter: at the model's values, or an earlier posterior's where it has them."""
    if prior is None:
        if model.n_draws > 1:
            return _moment_matched(np.stack([model.parameter_values[n] for n in names], 1))
        return _beta_prior(np.array([model.parameter_values[n][0] for n in names]), concentration)
    if not isinstance(prior, ClusterPosterior):
        raise InvalidInputError(f"prior must be a ClusterPosterior (from an earlier cluster fit) or None; got "
                                f"{type(prior).__name__}")
    pa, pb = prior.prior_arrays()
    a, b = _beta_prior(np.array([model.parameter_values[n][0] for n in names]), concentration)
    for i, name in enumerate(names):
        if name in prior.names:
            a[i], b[i] = pa[prior.names.index(name)], pb[prior.names.index(name)]
    return a, b


def fit_cluster(model, incidents: Any, *, labels: Any = None, method: str = "svi",
                prior: ClusterPosterior | None = None, num_samples: int = 1000, num_warmup: int = 500,
                num_chains: int = 2, num_steps: int = 2000, batch_size: int = 1024, learning_rate: float = 0.02,
                level: float = 0.9, seed: int = 0, progress: bool | None = None, check: bool = True,
                ppc_draws: int = 50, concentration: float = DEFAULT_CONCENTRATION) -> ClusterPosterior:
    """Fit the named parameters of a cluster SCM to logged incident windows.

    ``bd.fit(bd.models.cluster(n), incidents, ...)`` calls this. Every
    parameter of :data:`bayes_defense.models.PARAMETERS` gets a Beta prior
    with mean at the model's value (the catalogue default unless
    ``cluster(..., parameters=)`` overrode it) and concentration ``a + b =
    concentration``, raised where needed so that ``a, b >= 1``; the
    likelihood is the model's exact probability of each row (unrecorded sites
    summed out, see the module docstring).

    What the rows identify: telemetry baselines and attack effects, the
    ``join_rate`` weights, outcome baselines and the priors of recorded roots
    (``attacker``, footing and control sites) are identified by rows that
    record them. ``p_attempt`` and ``p_execute`` need the precursor and
    execution phases, directly (labels) or through their signals. Without
    success labels, ``p_execute``, ``p_success`` (and ``collusion_gain``) and
    the impacts enter only through ``P(outcome | executing)``, so they are
    identified jointly; ``p_success`` and ``collusion_gain`` always enter as
    ``p_success + (1 - p_success) * collusion_gain * colluders / f``, so only
    that combination is identified, and ``collusion_gain`` not at all when
    ``colluders = 0``. Efficacies need recorded controls that were on while
    attacks executed. Along such ridges the prior decides:
    :meth:`ClusterPosterior.identification` shows the posterior-to-prior sd
    ratio of each parameter. Parameters the likelihood does not depend on at
    all (zero gradient) are drawn from their prior, not fitted.

    Parameters
    ----------
    model : ClusterModel
        ``bd.models.cluster(n_nodes, colluders=...)`` with ``telemetry="indicators"``.
    incidents : pandas.DataFrame, list of dict, or path to .csv / .parquet / .jsonl
        One row per incident window; columns are site names of the model
        (``rK.<telemetry>``, ``join_rate``, outcomes, controls, ``isolated``,
        ``attacker``, ``admission_open``, ``peer_table_exposed``) and labels
        ``<attack>.precursor`` / ``.executing`` / ``.success``. Missing columns
        and NaN are unobserved. Values are 0 / 1 (``attacker`` and
        ``isolated``: 0 none, k + 1 replica k). Any subset of the labels may
        be given per row.
    labels : same forms, optional
        Label columns given separately, one row per incident.
    method : {"svi", "nuts"}
        SVI: a multivariate normal guide on the logit scale, minibatches of
        ``batch_size`` rows per step. NUTS: exact MCMC over every row at each
        step (small tables).
    prior : ClusterPosterior, optional
        Start from an earlier posterior (moment-matched to one Beta per
        parameter; correlations dropped) to learn from new incidents.
    num_samples, num_warmup, num_chains, num_steps, batch_size, learning_rate
        As in :func:`bayes_defense.fit.fit`. ``num_steps``, ``batch_size`` and
        ``ppc_draws`` left at ``bd.fit``'s defaults take this function's
        (2000 steps of 1024 rows, 50 replicates): a step costs about 35 ms
        for 1024 labelled rows and 105 ms for 1024 unlabelled rows of a
        4-replica model on one CPU thread (docs/fit_cluster.md).
    level : float
        Credible level of reported intervals.
    seed : int
    progress : bool, optional
        Progress bar (default: when standard error is a terminal).
    check : bool
        Run the convergence checks; a failure warns with
        :class:`~bayes_defense.fitting.diagnostics.FitDiagnosticsWarning`.
    ppc_draws : int
        Posterior draws replicated for the posterior predictive summaries.
    concentration : float
        Prior concentration ``a + b`` (default 20: the prior weighs as much as 20 incidents).

    Returns
    -------
    ClusterPosterior

    Examples
    --------
    >>> import bayes_defense as bd
    >>> t = bd.models.TELEMETRY[0].name
    >>> rows = [{f"r0.{t}": 1, "attacker": 0}] * 20 + [{f"r0.{t}": 0, "attacker": 0}] * 180
    >>> post = bd.fit(bd.models.cluster(4), rows, num_steps=300, num_samples=400, progress=False, check=False,
    ...               ppc_draws=4)
    >>> i = post.names.index(f"telemetry.{t}.baseline")
    >>> exact = (post.prior_a[i] + 20) / (post.prior_a[i] + post.prior_b[i] + 200)   # conjugate Beta posterior
    >>> bool(abs(post.estimate(f"telemetry.{t}.baseline").mean - exact) < 0.01)
    True
    """
    import torch

    from bayes_defense.models.cluster import ClusterModel

    started = time.perf_counter()
    if not isinstance(model, ClusterModel):
        raise InvalidInputError(f"model must be a bd.models.cluster(...) model; got {type(model).__name__}")
    if model.telemetry != "indicators":
        raise UnsupportedModelError("the cluster fit needs telemetry='indicators' (0/1 telemetry, outcomes and "
                                    "join_rate); continuous LogNormal telemetry is not fitted. Threshold the "
                                    "measurements into indicators and fit bd.models.cluster(n)")
    check_method(method)
    check_sizes(num_samples=num_samples, num_chains=num_chains, num_steps=num_steps, batch_size=batch_size,
                num_warmup=num_warmup, ppc_draws=ppc_draws)
    if not (isinstance(concentration, (int, float)) and concentration > 0):
        raise InvalidInputError(f"concentration must be a positive number, got {concentration!r}")
    if incidents is None:
        raise InvalidInputError("no incidents given: pass a DataFrame, a list of dicts or a .csv / .parquet / "
                                ".jsonl file with one row per incident window")
    structure = _Structure(model)
    data = _Data(read_incidents(incidents, labels), structure)
    names = structure.names
    a, b = _fit_prior(model, names, prior, float(concentration))
    show = sys.stderr.isatty() if progress is None else bool(progress)
    old_dtype, old_threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    try:
        likelihood = _Likelihood(data)
        impossible = _impossible_rows(likelihood, a / (a + b), batch_size)
        if len(impossible):
            raise InvalidInputError(
                f"{len(impossible)} row(s) (first: {', '.join(map(str, impossible[:5]))}) have probability zero under "
                f"the model for every parameter value: a labelled precursor whose precondition cannot hold (e.g. "
                f"slow_leader.precursor=1 with attacker other than 1, the primary), or a footing site contradicting "
                f"the labels. Fix or drop those rows")
        active = _active_parameters(likelihood, a, b, batch_size, seed)
        rng = np.random.default_rng([seed, 0xB7A])
        if method == "svi":
            fitted, extra = _run_svi(likelihood, a, b, active, num_steps=num_steps, batch_size=batch_size,
                                     learning_rate=learning_rate, num_samples=num_samples, seed=seed, show=show)
            half = num_samples // 2
            fitted = fitted[: 2 * half].reshape(2, half, -1)   # independent draws as two chains
            sample_stats: dict[str, np.ndarray] = {}
            trend = loss_trend(extra["losses"])
        else:
            fitted, extra = _run_nuts(likelihood, a, b, active, num_samples=num_samples, num_warmup=num_warmup,
                                      num_chains=num_chains, seed=seed, show=show, batch=batch_size)
            sample_stats = {"diverging": extra["diverging"]}
            trend = None
        chains, per_chain = fitted.shape[:2]
        draws = rng.beta(a, b, size=(chains, per_chain, len(names)))
        draws[..., active] = fitted
        flat = draws.reshape(-1, len(names))
        chosen = rng.choice(len(flat), size=min(ppc_draws, len(flat)), replace=False)
        replicated = _replicate(structure, data, model, flat[chosen], names, seed) if len(chosen) else \
            np.zeros((0, len(data.summary_names())))
    finally:
        torch.set_default_dtype(old_dtype)
        torch.set_num_threads(old_threads)
    info = {"n_nodes": model.n_nodes, "colluders": model.colluders, "rows": data.N,
            "labelled_rows": int(data.labelled.sum()), "columns": data.columns, "seed": seed,
            "concentration": float(concentration), "seconds": round(time.perf_counter() - started, 3),
            "loss_trend": trend, "num_steps": num_steps if method == "svi" else None,
            "batch_size": batch_size if method == "svi" else None}
    posterior = ClusterPosterior(draws, names, active=active, prior_a=a, prior_b=b, method=method,
                                 sample_stats=sample_stats, observed=_frequencies(*data.columns_matrix()),
                                 replicated=replicated, summary_names=data.summary_names(), info=info, level=level)
    if check:
        problems = posterior.check()
        if problems:
            warnings.warn("cluster fit diagnostics failed, do not trust this posterior as is: " + "; ".join(problems),
                          FitDiagnosticsWarning, stacklevel=3)
    return posterior

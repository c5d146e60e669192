"""Fitting any Pyro SCM with parameter sites to a table of observations.

A model is written for one unit (one row of the table): its parameter sites
carry priors (or are ``pyro.param``), its other sites are the unit's
variables. :func:`fit_scm` runs the parameters once and the unit's variables
inside one plate over the rows, so the rows are i.i.d. given the parameters
and the likelihood is vectorised. Which sites are parameters: the model's
``parameter_sites`` when it declares them (models from
:func:`bayes_defense.models.from_graph` do); otherwise every site that no
column names and that is not downstream of a column's site (a site with no
column that is downstream of one is a latent per-row variable; pass
``latent=`` to make a root one per-row too).

Missing values (NaN or None in a column) are latent: each missing cell is
sampled (continuous sites, by the guide or NUTS) or summed out by parallel
enumeration (discrete sites), never dropped with its row.

The result, :class:`SCMPosterior`, has ArviZ diagnostics, NetCDF storage
(format ``FORMAT_NAME``) and :meth:`SCMPosterior.model`: an SCM with the
parameters fixed at posterior draws. Every query of the causal core
(``bd.intervene``, ``bd.counterfactual``, PN/PS, ``bd.explain``) answers it
once per draw and pools the answers with
:func:`~bayes_defense.estimate.combine_draws`, so its intervals carry the
parameter uncertainty.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bayes_defense.errors import InvalidInputError

__all__ = ["fit_scm", "load_scm_posterior", "SCMPosterior", "FittedSCM", "read_table", "FORMAT_NAME",
           "FORMAT_VERSION"]

#: The ``format`` attribute of an SCM posterior file's ``posterior`` group.
FORMAT_NAME = "bayes_defense.scm_posterior"
FORMAT_VERSION = "1.0"
_ROWS_PLATE = "_bd_rows"


# ---------------------------------------------------------------- the table
def read_table(data: Any):
    """A pandas DataFrame from a DataFrame, a ``{column: values}`` dict, or a CSV or Parquet path.

    Examples
    --------
    >>> read_table({"x": [1.0, None]})["x"].isna().tolist()
    [False, True]
    """
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, Mapping):
        return pd.DataFrame(dict(data))
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.exists():
            raise FileNotFoundError(f"no such data file: {str(path)!r}")
        suffix = path.suffix.lower()
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".csv", ".txt") or suffix == ".gz" and path.name.lower().endswith(".csv.gz"):
            return pd.read_csv(path)
        raise InvalidInputError(f"{path.name}: a data file must be .csv or .parquet; got {suffix or 'no suffix'!r}")
    raise InvalidInputError(f"data must be a pandas DataFrame, a {{column: values}} dict or a CSV/Parquet path; "
                            f"got {type(data).__name__}")


# ---------------------------------------------------------------- sites
def _param_names(model) -> list[str]:
    import pyro
    from pyro import poutine

    with pyro.validation_enabled(False):
        trace = poutine.trace(model).get_trace()
    return [name for name, node in trace.nodes.items() if node["type"] == "param"]


def _classify(model, info, columns: list[str], latent) -> tuple[list[str], list[str]]:
    """``(parameter sites, unit sites)`` in execution order; see the module docstring."""
    names = info.names
    unknown = [c for c in columns if c not in info.sites]
    if unknown:
        raise InvalidInputError(f"data column(s) {', '.join(map(repr, unknown))} name no site of the model; its "
                                f"sites are: {', '.join(names)}. Rename or drop those columns")
    latent = [latent] if isinstance(latent, str) else list(latent or [])
    bad = [n for n in latent if n not in info.sites]
    if bad:
        raise InvalidInputError(f"latent names {', '.join(map(repr, bad))}, which the model does not have; its "
                                f"sites are: {', '.join(names)}")
    declared = getattr(model, "parameter_sites", None)
    if declared is not None:
        parameters = [n for n in names if n in set(declared)]
        clash = [c for c in columns if c in parameters]
        if clash:
            raise InvalidInputError(f"column(s) {', '.join(clash)} name parameter sites of the model, which are "
                                    "fitted, not observed; drop them")
    else:
        downstream = info.descendants(columns) if columns else set()
        parameters = [n for n in names if n not in downstream and n not in latent]
    units = [n for n in names if n not in parameters]
    for name in units:
        site = info.sites[name]
        if not site.scalar:
            raise InvalidInputError(f"site {name!r} has shape {tuple(site.shape)} (plates {site.plates}); fit "
                                    "takes one scalar value per row for every per-row site: write the model "
                                    "for one unit")
    return parameters, units


def _check_priors(model, table) -> None:
    """Refuse sites without a proper distribution (``ImproperUniform``, Pyro's "no prior").

    A site with no data and no prior is determined by nothing; one with data but no prior could be
    fitted, but the queries a fitted SCM is for sample every site, so both are refused, before the
    model is traced (tracing samples every site).
    """
    import pyro
    import torch
    from pyro import distributions as dist
    from pyro.poutine.messenger import Messenger

    from bayes_defense.causal.noise import base_distribution as _strip

    present = {str(c) for c in table.columns if not table[c].isna().all()}

    class _Improper(Messenger):
        def _pyro_sample(self, msg):
            if not isinstance(_strip(msg["fn"]), dist.ImproperUniform):
                return
            name = msg["name"]
            if name not in present:
                raise InvalidInputError(f"node {name!r} has no data (no column, or only missing values) and no "
                                        "prior (an ImproperUniform distribution): nothing determines it. Add a "
                                        "column for it or give it a proper distribution")
            raise InvalidInputError(f"site {name!r} has data but no prior (an ImproperUniform distribution); "
                                    "fitting is Bayesian and the fitted model's queries sample every site: give "
                                    "it a proper prior")

    with torch.no_grad(), pyro.validation_enabled(False), torch.random.fork_rng(), _Improper():
        pyro.poutine.trace(model).get_trace()


class _Columns:
    """The table as tensors: ``{site: (values, missing mask or None)}``, validated per site."""

    def __init__(self, table, info, units):
        import torch

        self.num_rows = len(table)
        self.values: dict = {}
        for name in units:
            if name not in table.columns:
                continue
            site = info.sites[name]
            try:
                column = table[name].to_numpy(dtype=float, na_value=np.nan)
            except (TypeError, ValueError):
                raise InvalidInputError(f"column {name!r} must hold numbers (NaN or empty for missing); got "
                                        f"values such as {table[name].iloc[:3].tolist()}") from None
            missing = np.isnan(column)
            if missing.all():
                continue
            if np.isinf(column).any():
                raise InvalidInputError(f"column {name!r} has infinite values; use NaN for a missing value")
            if site.discrete:
                present = column[~missing]
                if (present != np.round(present)).any() or (present < 0).any():
                    raise InvalidInputError(f"column {name!r} is a discrete site: its values must be the state "
                                            f"numbers 0, 1, ...; got {sorted(set(present.tolist()))[:6]}")
                dtype = torch.long if site.distribution == "Categorical" else torch.get_default_dtype()
            else:
                dtype = torch.get_default_dtype()
            filled = torch.as_tensor(np.where(missing, 0.0, column)).to(dtype)
            mask = torch.as_tensor(missing) if missing.any() else None
            self.values[name] = (filled, mask)
        self.latent_units = [n for n in units if n not in self.values]
        self.partial = [n for n, (_, mask) in self.values.items() if mask is not None]


def _rows_messenger(columns: _Columns, discrete: set):
    """A Messenger that observes each unit site at its column and makes missing cells latent."""
    import pyro
    import torch
    from pyro.poutine.messenger import Messenger

    class _Rows(Messenger):
        def _pyro_sample(self, msg):
            name = msg["name"]
            entry = columns.values.get(name)
            if entry is None:
                if name in discrete and name in columns.latent_units and not msg["is_observed"]:
                    msg["infer"] = {**msg["infer"], "enumerate": "parallel"}
                return
            values, missing = entry
            fn = msg["fn"]
            if missing is None:
                msg["value"] = values
                msg["is_observed"] = True
                return
            infer = {"enumerate": "parallel"} if name in discrete else {}
            # One latent per row with its full density: the entries of observed rows are then auxiliary
            # draws that integrate to one for every parameter value, so they leave the posterior of the
            # parameters unchanged (a masked density would leave them improper in the guide).
            unobserved = pyro.sample(f"{name}.missing", fn, infer=infer)
            msg["value"] = torch.where(missing, unobserved, values)
            msg["fn"] = fn.mask(~missing)
            msg["is_observed"] = True

    return _Rows()


class _Record:
    """Collects the values of named sites as they are sampled."""

    def __init__(self, names):
        from pyro.poutine.messenger import Messenger

        record = self
        record.values = {}

        class _Recorder(Messenger):
            def _pyro_post_sample(self, msg):
                if msg["name"] in names:
                    record.values[msg["name"]] = msg["value"]

        self.messenger = _Recorder()


def _plated(model, parameters, units, columns: _Columns, nesting: int, discrete: set):
    """The fitting model: parameters once, the unit sites in a plate over the rows."""
    import pyro
    from pyro import poutine

    from bayes_defense.models.graph import GraphSCM

    def run():
        if isinstance(model, GraphSCM):
            # Its parameters are sampled first and alone; no second pass is needed.
            values = {name: pyro.sample(name, prior) for name, prior in model.priors().items()}
            with pyro.plate(_ROWS_PLATE, columns.num_rows, dim=-(nesting + 1)), \
                    _rows_messenger(columns, discrete):
                model.run_nodes(values)
            return
        record = _Record(set(parameters))
        # Pass 1: the parameters (the unit sites are run but hidden from the fit).
        with record.messenger, poutine.block(hide=list(units)):
            model()
        # Pass 2: the rows, with the parameters fixed at pass 1's values and hidden.
        with pyro.plate(_ROWS_PLATE, columns.num_rows, dim=-(nesting + 1)), \
                poutine.block(hide=list(parameters)), poutine.condition(data=record.values), \
                _rows_messenger(columns, discrete):
            model()

    return run


# ---------------------------------------------------------------- fit
def fit_scm(model, data, *, method: str = "svi", num_steps: int | None = None, num_samples: int | None = None,
            num_warmup: int | None = None, num_chains: int | None = None, seed: int = 0,
            progress: bool | None = None, latent=None, learning_rate: float = 0.02, level: float = 0.9,
            check: bool = True) -> SCMPosterior:
    """Fit the parameter sites of a Pyro SCM to a table with one column per observed site.

    Parameters
    ----------
    model : callable
        A Pyro model for one unit: parameter sites with priors (or
        ``pyro.param``) and scalar per-row sites; for example a
        :func:`~bayes_defense.models.from_graph` model.
    data : DataFrame, dict, or path
        One row per unit, one column per observed site (CSV or Parquet
        paths are read); NaN marks a missing value, which is latent.
    method : {"svi", "nuts"}
        ``"svi"``: the Laplace approximation, a multivariate normal guide at
        the posterior mode found by L-BFGS on the exact loss; with missing
        cells, stochastic SVI with a multivariate normal over the parameters
        and a mean-field normal over the cells (a joint mode over cells and
        scales would shrink the scales); ``"nuts"``: NUTS. A
        :func:`~bayes_defense.models.from_graph` model with every cell
        observed has a posterior that factorises over its nodes: ``"svi"``
        then computes each node's Laplace approximation in closed form (the
        same Gaussian, without L-BFGS) and draws each table row from its
        exact Dirichlet posterior.
    num_steps : int, optional
        Most L-BFGS iterations, or SVI steps with missing cells (default 2000).
    num_samples, num_warmup, num_chains : int, optional
        Posterior draws (default 1000 for SVI, 500 per chain for NUTS),
        NUTS warm-up (default 500) and chains (default 2, run one after another).
    seed : int
        Seed of the fit; the global torch generator is restored afterwards.
    progress : bool, optional
        Show a progress bar (default: when standard error is a terminal).
    latent : str or list of str, optional
        Root sites without a column to treat as per-row latent variables,
        not parameters (see the module docstring).
    learning_rate : float
        SVI step size.
    level : float
        Credible level of the posterior's intervals.
    check : bool
        Warn with :class:`~bayes_defense.fitting.diagnostics.FitDiagnosticsWarning`
        when a convergence check fails.

    Returns
    -------
    SCMPosterior

    Raises
    ------
    InvalidInputError
        A column that names no site, a site with no data and no prior, a
        per-row site that is not scalar, ``pyro.param`` with NUTS, bad sizes.

    Examples
    --------
    A regression whose least-squares slope lies 1.7 standard errors from the
    true 2.0 (so a 90% interval would miss it; a 99% one holds it):

    >>> import networkx as nx, numpy as np, pandas as pd
    >>> import bayes_defense as bd
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=400)
    >>> table = pd.DataFrame({"x": x, "y": 1.0 + 2.0 * x + 0.5 * rng.normal(size=400)})
    >>> scm = bd.models.from_graph(nx.DiGraph([("x", "y")]))
    >>> post = bd.fit(scm, table, num_samples=1000, level=0.99, progress=False)
    >>> slope = post.estimate("y.coefficients", 1)
    >>> bool(slope.lower < 2.0 < slope.upper), round(slope.mean, 1)
    (True, 2.0)
    """
    import pyro
    import torch

    from bayes_defense.causal.structure import float64, model_info
    from bayes_defense.fitting.options import check_method, check_sizes
    from bayes_defense.inference.base import single_threaded

    check_method(method)
    if not callable(model):
        raise InvalidInputError(f"model must be a callable Pyro model; got {type(model).__name__}")
    num_steps = 2000 if num_steps is None else num_steps
    num_samples = (1000 if method == "svi" else 500) if num_samples is None else num_samples
    num_warmup = 500 if num_warmup is None else num_warmup
    num_chains = 2 if num_chains is None else num_chains
    check_sizes(num_steps=num_steps, num_samples=num_samples, num_warmup=num_warmup, num_chains=num_chains)
    if not 0.0 < float(level) < 1.0:
        raise InvalidInputError(f"level must lie strictly between 0 and 1, for example 0.9; got {level!r}")
    table = read_table(data)
    if len(table) == 0:
        raise InvalidInputError("the data table has no rows; fit needs at least one")
    _check_priors(model, table)
    info = model_info(model)
    columns = [str(c) for c in table.columns]
    parameters, units = _classify(model, info, columns, latent)
    param_store_names = _param_names(model)
    if param_store_names and method == "nuts":
        raise InvalidInputError(f"NUTS samples sample sites only; {', '.join(param_store_names)} are pyro.param: "
                                "give them priors (pyro.sample) or use method='svi'")
    if not parameters and not param_store_names:
        raise InvalidInputError("the model has no parameter sites (sample sites with priors, or pyro.param) "
                                f"to fit; its sites {', '.join(info.names)} are all per-row variables")
    show = _show(progress)
    discrete = {n for n in units if info.sites[n].discrete}
    started = time.perf_counter()
    state = torch.get_rng_state()
    try:
        pyro.set_rng_seed(int(seed))
        # Single-threaded as the queries are: on a loaded two-core machine intra-op threads cost more
        # than they save on these small tensors. float64: L-BFGS and the Hessian need the precision.
        with pyro.validation_enabled(False), single_threaded(), float64():
            tensors = _Columns(table, info, units)
            fitting_model = _plated(model, parameters, units, tensors, info.max_plate_nesting, discrete)
            enumerated = bool({*tensors.partial, *tensors.latent_units} & discrete)
            local = bool(tensors.partial or tensors.latent_units)
            if method == "svi" and _factorised(model, tensors):
                draws, optimizer_stats = _graph_posterior(model, tensors, num_samples=num_samples, seed=int(seed))
                losses, fixed = None, {}
            elif method == "svi":
                draws, optimizer_stats, losses, fixed = _svi(fitting_model, parameters, param_store_names,
                                                             num_steps=num_steps,
                                                   num_samples=num_samples, learning_rate=learning_rate, show=show,
                                                   local=local, enumerated=enumerated,
                                                   nesting=info.max_plate_nesting + 1)
            else:
                draws, stats = _nuts(fitting_model, parameters, num_samples=num_samples, num_warmup=num_warmup,
                                     num_chains=num_chains, seed=int(seed), show=show,
                                     nesting=info.max_plate_nesting + 1)
                losses, fixed, optimizer_stats = None, {}, {}
    finally:
        torch.set_rng_state(state)
    seconds = time.perf_counter() - started
    posterior = SCMPosterior(draws, method=method, sample_stats=stats if method == "nuts" else {},
                             losses=losses, fixed=fixed,
                             info={"seconds": seconds, "num_rows": len(table), "columns": columns,
                                   "parameters": parameters, "units": units,
                                   "missing": {n: int(tensors.values[n][1].sum()) for n in tensors.partial},
                                   "latent": tensors.latent_units, "num_steps": num_steps if method == "svi" else None,
                                   "num_warmup": num_warmup if method == "nuts" else None,
                                   **optimizer_stats},
                             level=float(level), model=model)
    if check and not posterior.diagnostics_ok:
        from bayes_defense.fitting.diagnostics import FitDiagnosticsWarning

        warnings.warn(f"the fit's convergence checks failed: {'; '.join(posterior.problems)}",
                      FitDiagnosticsWarning, stacklevel=2)
    return posterior


def _show(progress):
    if progress is not None:
        return bool(progress)
    import sys

    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _svi(fitting_model, parameters, param_store_names, *, num_steps, num_samples, learning_rate, show, local,
         enumerated, nesting):
    import pyro
    import torch
    from pyro import poutine
    from pyro.infer.autoguide import init_to_median

    pyro.clear_param_store()
    if not local and parameters:
        guide, losses = _laplace(fitting_model, num_steps=num_steps)
    elif not local:
        # Only pyro.param: nothing to integrate, SVI with an empty guide is maximum likelihood.
        from pyro.infer import SVI, Trace_ELBO

        def guide():
            return {}

        svi = SVI(fitting_model, guide, pyro.optim.ClippedAdam({"lr": learning_rate,
                                                                 "lrd": 0.1 ** (1 / max(num_steps, 1))}),
                  Trace_ELBO())
        losses = np.array([svi.step() for _ in range(num_steps)])
    else:
        # Missing cells are one latent per row: a full covariance over them would not fit in memory, so
        # the parameters get the multivariate normal and the cells a mean-field normal; discrete cells
        # are summed out by enumeration.
        from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO
        from pyro.infer.autoguide import AutoGuideList, AutoMultivariateNormal, AutoNormal

        def enumerated_site(msg):
            return msg["infer"].get("enumerate") == "parallel"

        start = init_to_median
        if not enumerated:
            # Stochastic SVI from the prior median lands in poor optima when a parent's cells are
            # missing; start it from the joint mode of parameters and cells (found by L-BFGS).
            from pyro.infer.autoguide import init_to_value

            mode = _mode(fitting_model, num_steps=num_steps)
            pyro.clear_param_store()
            start = init_to_value(values=mode)
        guide = AutoGuideList(fitting_model)
        if parameters:
            guide.append(AutoMultivariateNormal(poutine.block(fitting_model, expose=list(parameters)),
                                                init_loc_fn=start, init_scale=0.05))
        guide.append(AutoNormal(poutine.block(fitting_model, hide_fn=lambda m: m["name"] in parameters
                                              or enumerated_site(m)), init_loc_fn=start, init_scale=0.05))
        elbo = TraceEnum_ELBO(max_plate_nesting=nesting) if enumerated else Trace_ELBO()
        svi = SVI(fitting_model, guide, pyro.optim.ClippedAdam({"lr": learning_rate,
                                                                 "lrd": 0.1 ** (1 / max(num_steps, 1))}), elbo)
        losses = np.empty(num_steps)
        for step in range(num_steps):
            losses[step] = svi.step()
    draws: dict[str, list] = {name: [] for name in parameters}
    with torch.no_grad():
        for _ in range(num_samples):
            sample = guide()
            for name in parameters:
                draws[name].append(sample[name].detach().cpu().numpy())
    fixed = {name: pyro.param(name).detach().cpu().numpy() for name in param_store_names}
    stats = {}
    if hasattr(guide, "converged"):
        # L-BFGS's losses include line-search trials, so their trend says nothing; its own stopping
        # rule does (it stops early once the loss and gradient stop changing).
        stats = {"lbfgs_iterations": guide.iterations, "lbfgs_converged": guide.converged}
        losses = None
    return {name: np.stack(values)[None] for name, values in draws.items()}, stats, losses, fixed


def _factorised(model, columns: _Columns) -> bool:
    """Whether the posterior of a from_graph model factorises over its nodes: every cell observed.

    The priors are independent per node and each node's likelihood involves only its own
    parameters once its parents are observed, so each node is a separate regression (or table).
    """
    from bayes_defense.models.graph import GraphSCM

    return (isinstance(model, GraphSCM) and not columns.partial and not columns.latent_units
            and set(columns.values) == set(model.nodes))


def _node_laplace(design: np.ndarray, target: np.ndarray, prior_mean: np.ndarray, prior_sd: np.ndarray,
                  scale_sd: float, *, tolerance: float = 1e-12, max_iterations: int = 500):
    """Mode and covariance of the Laplace approximation of one node's regression posterior.

    The parameters are ``theta = (coefficients, log scale)``, the space in which
    ``AutoLaplaceApproximation`` works (the scale's HalfNormal prior carries the Jacobian ``+ log s``).
    With ``t = s^2``, ``S`` the residual sum of squares and ``P`` the prior precision, the negative
    log posterior is ``n log s + S / (2 t) + sum (beta - m)^2 P / 2 + t / (2 scale_sd^2) - log s``.
    Its two conditional modes are closed forms: ``beta = (X'X / t + P)^-1 (X'y / t + P m)``, and
    ``t`` the positive root of ``t^2 / scale_sd^2 + (n - 1) t - S = 0``; alternating them reaches the
    joint mode (the cross curvature ``2 X'r / t`` vanishes at the conditional mode up to the prior).
    The Hessian there is exact: ``[[X'X / t + P, 2 X'r / t], [2 r'X / t, 2 S / t + 2 t / scale_sd^2]]``.

    Returns ``(mode, covariance, iterations)``; ``mode[-1]`` is ``log s``.
    """
    rows = design.shape[0]
    gram, moment, total = design.T @ design, design.T @ target, float(target @ target)
    precision = 1.0 / np.square(prior_sd)
    beta = np.linalg.lstsq(design, target, rcond=None)[0]
    t = max(float(np.mean(np.square(target - design @ beta))), 1e-300)
    iterations, converged = 0, False
    while not converged:
        if iterations == max_iterations:
            raise InvalidInputError(f"a node's regression did not reach its mode in {max_iterations} "
                                    "alternations (a column constant or collinear with its parents'?): use "
                                    "method='nuts'")
        iterations += 1
        beta = np.linalg.solve(gram / t + np.diag(precision), moment / t + precision * prior_mean)
        squares = max(total - 2.0 * beta @ moment + beta @ gram @ beta, 0.0)
        a = 1.0 / scale_sd ** 2
        # The positive root, written so that it does not cancel when (n - 1)^2 dominates.
        t_new = 2.0 * squares / ((rows - 1) + math.sqrt((rows - 1) ** 2 + 4.0 * a * squares)) \
            if squares > 0 else 1e-300
        converged = abs(t_new - t) <= tolerance * t
        t = t_new
    beta = np.linalg.solve(gram / t + np.diag(precision), moment / t + precision * prior_mean)
    residual_moment = moment - gram @ beta
    squares = max(total - 2.0 * beta @ moment + beta @ gram @ beta, 0.0)
    size = design.shape[1]
    hessian = np.empty((size + 1, size + 1))
    hessian[:size, :size] = gram / t + np.diag(precision)
    hessian[:size, size] = hessian[size, :size] = 2.0 * residual_moment / t
    hessian[size, size] = 2.0 * squares / t + 2.0 * t / scale_sd ** 2
    try:
        covariance = np.linalg.inv(hessian)
        np.linalg.cholesky(covariance)
    except np.linalg.LinAlgError:
        raise InvalidInputError("a node's regression has no positive-definite curvature at its mode (a "
                                "column constant or collinear with its parents'?): drop the edge or the "
                                "column, or use method='nuts'") from None
    return np.append(beta, 0.5 * math.log(t)), covariance, iterations


def _graph_posterior(model, columns: _Columns, *, num_samples: int, seed: int):
    """Posterior draws of a fully observed from_graph model, node by node (see :func:`_factorised`).

    Continuous nodes: the Laplace approximation of each regression, in closed form
    (:func:`_node_laplace`), the same Gaussian ``method="svi"`` finds by L-BFGS on the joint model.
    Discrete nodes: each table row's exact posterior, Dirichlet(concentration + counts).
    Returns ``(draws, info)``.
    """
    import torch

    rng = np.random.default_rng([int(seed), 0x5C3F])
    priors = model.priors()
    values = {name: columns.values[name][0] for name in model.nodes}
    draws, iterations = {}, 0
    for node in model.nodes:
        if model.kind(node) == "discrete":
            parents = model.parents(node)
            index = np.zeros(columns.num_rows, dtype=np.int64)
            for parent in parents:
                index = index * model.states(parent) + values[parent].numpy().astype(np.int64)
            alpha = priors[f"{node}.cpt"].base_dist.concentration.numpy().astype(float).copy()
            np.add.at(alpha, (index, values[node].numpy().astype(np.int64)), 1.0)
            gamma = rng.standard_gamma(alpha, size=(num_samples, *alpha.shape))
            draws[f"{node}.cpt"] = (gamma / gamma.sum(-1, keepdims=True))[None]
            continue
        with torch.no_grad():
            design = model.features(node, values).expand(columns.num_rows, -1).numpy().astype(float)
        coefficients = priors[f"{node}.coefficients"].base_dist
        mode, covariance, used = _node_laplace(design, values[node].numpy().astype(float),
                                               coefficients.loc.numpy().astype(float),
                                               coefficients.scale.numpy().astype(float),
                                               float(priors[f"{node}.scale"].scale))
        iterations = max(iterations, used)
        theta = mode + rng.standard_normal((num_samples, mode.size)) @ np.linalg.cholesky(covariance).T
        draws[f"{node}.coefficients"] = theta[None, :, :-1]
        draws[f"{node}.scale"] = np.exp(theta[None, :, -1])
    return draws, {"laplace": "closed form per node", "laplace_iterations": iterations}


def _mode(fitting_model, *, num_steps) -> dict:
    """The joint posterior mode of every latent site, by L-BFGS (a starting point, not an answer)."""
    import torch

    guide, _ = _lbfgs(fitting_model, num_steps=num_steps)
    with torch.no_grad():
        # The guide is a point mass at the mode: a draw is the mode.
        return {name: value.detach() for name, value in guide().items()}


def _lbfgs(fitting_model, *, num_steps):
    import pyro
    import torch
    from pyro.infer import Trace_ELBO
    from pyro.infer.autoguide import AutoLaplaceApproximation, init_to_median

    guide = AutoLaplaceApproximation(fitting_model, init_loc_fn=init_to_median)
    elbo = Trace_ELBO()
    guide()  # creates the guide's parameters
    variables = [p.unconstrained() for p in pyro.get_param_store().values()]
    optimizer = torch.optim.LBFGS(variables, lr=1.0, max_iter=num_steps, history_size=50,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)
    losses: list[float] = []

    def closure():
        optimizer.zero_grad()
        loss = elbo.differentiable_loss(fitting_model, guide)
        loss.backward()
        losses.append(float(loss.detach()))
        return loss

    optimizer.step(closure)
    state = optimizer.state[optimizer._params[0]]
    guide.iterations = int(state.get("n_iter", 0))
    guide.converged = guide.iterations < num_steps
    if not np.isfinite(losses[-1]):
        raise InvalidInputError("the fit's loss is not finite at the mode: the data have probability zero "
                                "under the model's priors (a value outside a site's support?)")
    return guide, losses


def _laplace(fitting_model, *, num_steps):
    """The mode by L-BFGS on the exact (deterministic) loss, then the Gaussian with the Hessian there.

    Stochastic-gradient SVI with a multivariate normal guide converges slowly on the regressions of a
    graph whose parents are correlated (a posterior correlation of 0.97 between two coefficients left
    the means 0.7 standard errors off and the spreads half too narrow after 2000 steps); the mode of
    this smooth, well-identified density is found in tens of L-BFGS iterations and the Laplace
    approximation at it matches the exact regression posterior (tests/fit/test_scm_fit.py).
    """
    guide, losses = _lbfgs(fitting_model, num_steps=num_steps)
    try:
        laplace = guide.laplace_approximation()
        laplace.iterations, laplace.converged = guide.iterations, guide.converged
        return laplace, np.asarray(losses)
    except (RuntimeError, ValueError):
        raise InvalidInputError(f"the posterior's curvature at the point reached after {len(losses)} loss "
                                "evaluations is not positive definite, so the mode was not reached or the "
                                "parameters are not identified by the data: raise num_steps, or use "
                                "method='nuts'") from None


def _nuts(fitting_model, parameters, *, num_samples, num_warmup, num_chains, seed, show, nesting):
    import pyro
    from pyro.infer import MCMC, NUTS

    chains: dict[str, list] = {name: [] for name in parameters}
    diverging = np.zeros((num_chains, num_samples), bool)
    for chain in range(num_chains):
        pyro.set_rng_seed(seed + 1000 * chain)
        kernel = NUTS(fitting_model, max_plate_nesting=nesting, jit_compile=False)
        mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=num_warmup, num_chains=1, disable_progbar=not show)
        mcmc.run()
        samples = mcmc.get_samples()
        for name in parameters:
            chains[name].append(samples[name].detach().cpu().numpy())
        divergences = mcmc.diagnostics().get("divergences", {})
        for index in (divergences.get("chain 0", []) if isinstance(divergences, dict) else []):
            if 0 <= index - num_warmup < num_samples:
                diverging[chain, index - num_warmup] = True
    return {name: np.stack(values) for name, values in chains.items()}, {"diverging": diverging}


# ---------------------------------------------------------------- posterior
class SCMPosterior:
    """Posterior draws of a Pyro SCM's parameter sites, with diagnostics, storage and a fitted model.

    Attributes
    ----------
    draws : dict
        ``{site: array (chain, draw, *shape)}``.
    method : str
        ``"svi"`` or ``"nuts"``.
    diagnostics : pandas.DataFrame
        ``az.summary`` of every parameter entry (r_hat, bulk and tail ESS).
    problems : list of str
        Failed convergence checks (empty when they pass).
    info : dict
        Fit time, rows, columns, parameters, per-row sites, missing cells.
    """

    def __init__(self, draws, *, method, sample_stats=None, losses=None, fixed=None, info=None, level=0.9,
                 model=None, problems=None):
        self.draws = {name: np.asarray(values, dtype=float) for name, values in draws.items()}
        self.method = method
        self.sample_stats = dict(sample_stats or {})
        self.losses = None if losses is None else np.asarray(losses, dtype=float)
        self.fixed = {name: np.asarray(v, dtype=float) for name, v in dict(fixed or {}).items()}
        self.info = dict(info or {})
        self.level = float(level)
        self._model = model
        self._diagnostics = None
        self._problems = problems

    # ------------------------------------------------------------ numbers
    @property
    def parameters(self) -> list[str]:
        return list(self.draws)

    @property
    def num_draws(self) -> int:
        first = next(iter(self.draws.values()), np.zeros((1, 0)))
        return int(first.shape[0] * first.shape[1])

    def flat(self, name: str) -> np.ndarray:
        """Draws of one parameter site, ``(draws, *shape)``."""
        if name not in self.draws:
            raise InvalidInputError(f"unknown parameter {name!r}; the fitted parameters are: "
                                    f"{', '.join(self.draws) or '(none)'}")
        values = self.draws[name]
        return values.reshape((-1,) + values.shape[2:])

    def estimate(self, name: str, index=None):
        """Posterior mean of one parameter entry with its equal-tailed credible interval at ``level``.

        ``index`` picks an entry of a vector or table site (an int or a tuple).
        """
        from bayes_defense.estimate import Estimate

        values = self.flat(name)
        if index is not None:
            index = index if isinstance(index, tuple) else (index,)
            try:
                values = values[(slice(None), *index)]
            except IndexError:
                raise InvalidInputError(f"index {index} is out of range for {name!r} of shape "
                                        f"{values.shape[1:]}") from None
        if values.ndim != 1:
            raise InvalidInputError(f"{name!r} has shape {values.shape[1:]}; pass index= to pick one entry")
        tail = (1 - self.level) / 2
        low, high = np.quantile(values, [tail, 1 - tail])
        mean = float(values.mean())
        return Estimate(mean, min(float(low), mean), max(float(high), mean), level=self.level,
                        ess=float(len(values)), backend=f"fit-{self.method}")

    def mean(self) -> dict:
        """Posterior mean of every parameter site (and the fitted ``pyro.param`` values)."""
        return {**{name: self.flat(name).mean(0) for name in self.draws}, **self.fixed}

    # ------------------------------------------------------------ diagnostics
    def _inference_groups(self):
        groups = {"posterior": {}}
        dims: dict = {}
        for name, values in self.draws.items():
            groups["posterior"][name] = values
            dims[name] = [f"{name}_dim_{i}" for i in range(values.ndim - 2)]
        stats = {k: np.asarray(v) for k, v in self.sample_stats.items()}
        if stats:
            groups["sample_stats"] = stats
        return groups, dims

    def to_inference_data(self):
        """ArviZ data: the parameter draws, NUTS sample statistics, and metadata on every group."""
        from bayes_defense.fitting import inference_data

        groups, dims = self._inference_groups()
        attrs = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "method": self.method,
                 "level": self.level, "info": json.dumps(self.info), "problems": json.dumps(self.problems),
                 "fixed": json.dumps({k: v.tolist() for k, v in self.fixed.items()}),
                 # The SVI losses themselves are not stored: their trend is what the checks read.
                 "losses_tail": json.dumps([] if self.losses is None else self.losses[-200:].tolist())}
        from bayes_defense.models.graph import GraphSCM

        if isinstance(self._model, GraphSCM):
            attrs["graph_model"] = json.dumps(self._model.spec())
        return inference_data.from_groups(groups, dims=dims, coords={}, attrs=attrs)

    @property
    def diagnostics(self):
        """``az.summary`` of the parameters (one row per entry)."""
        if self._diagnostics is None:
            from bayes_defense.fitting import inference_data

            groups, dims = self._inference_groups()
            data = inference_data.from_groups({"posterior": groups["posterior"]}, dims=dims, coords={}, attrs={})
            self._diagnostics = inference_data.summary(data, level=self.level)
        return self._diagnostics

    @property
    def problems(self) -> list[str]:
        if self._problems is None:
            from bayes_defense.fitting.diagnostics import convergence_problems, loss_trend

            trend = loss_trend(self.losses) if self.losses is not None else None
            per_chain = next(iter(self.draws.values())).shape[1] if self.draws else 0
            # Guide draws are independent, so only NUTS's checks read r_hat and ESS; az.summary over
            # every entry of a large graph takes far longer than its fit, so SVI does not compute it.
            if self.method == "nuts":
                table = self.diagnostics
            else:
                import pandas as pd

                table = pd.DataFrame(columns=["r_hat", "ess_bulk", "ess_tail"], dtype=float)
            self._problems = convergence_problems(self.method, table, per_chain, self.sample_stats, trend)
            if self.info.get("lbfgs_converged") is False:
                self._problems.append(f"L-BFGS stopped at its limit of {self.info['lbfgs_iterations']} iterations "
                                      "before the mode converged; raise num_steps")
        return list(self._problems)

    @property
    def diagnostics_ok(self) -> bool:
        return not self.problems

    def summary(self) -> dict:
        """JSON-ready summary: method, draws, diagnostics, and each parameter's mean and interval."""
        from bayes_defense.fitting.diagnostics import diagnostics_summary

        return {"method": self.method, "num_draws": self.num_draws, **diagnostics_summary(self),
                "parameters": {name: self.flat(name).mean(0).tolist() for name in self.draws}}

    # ------------------------------------------------------------ storage
    def save(self, path) -> Path:
        """Write the posterior to a NetCDF-4 file (read it with ``bd.load_posterior``)."""
        from bayes_defense.fitting.storage import save_posterior

        return save_posterior(self, path)

    # ------------------------------------------------------------ the fitted model
    def attach(self, model) -> SCMPosterior:
        """Give a posterior read from a file the model it was fitted to (needed by :meth:`model`)."""
        if not callable(model):
            raise InvalidInputError(f"model must be the Pyro model the posterior was fitted to; got {model!r}")
        self._model = model
        return self

    def model(self, draws: int = 20, seed: int = 0) -> FittedSCM:
        """The fitted SCM: parameters fixed at ``draws`` posterior draws; queries pool over them.

        Calling it runs the model at the posterior mean of the parameters.
        """
        if self._model is None:
            raise InvalidInputError("this posterior was read from a file without its model; call "
                                    "posterior.attach(model) with the model it was fitted to, or "
                                    "load_scm_posterior(path, model=model)")
        if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
            raise InvalidInputError(f"draws must be a positive integer; got {draws!r}")
        rng = np.random.default_rng([int(seed), 0x5C3])
        total = self.num_draws
        index = rng.choice(total, size=draws, replace=draws > total) if total else np.zeros(0, int)
        chosen = [{name: self.flat(name)[i] for name in self.draws} | self.fixed for i in index]
        return FittedSCM(self._model, self.mean(), chosen)


class FittedSCM:
    """A fitted SCM: runs at the posterior mean; ``parameter_models`` are the models at each draw.

    The queries of :mod:`bayes_defense.causal` answer each draw's model and
    pool the answers (:func:`~bayes_defense.estimate.combine_draws`).
    """

    def __init__(self, model, mean: Mapping, draws: list):
        self.source = model
        self.point = _fix(model, mean)
        self.parameter_models = [_fix(model, values) for values in draws]

    def __call__(self):
        return self.point()

    def __repr__(self) -> str:
        return f"<fitted SCM, {len(self.parameter_models)} parameter draws>"


def _fix(model, values: Mapping):
    """``model`` with its parameter sites (and pyro.params) fixed at ``values`` and hidden from queries."""
    import torch

    from bayes_defense.models.graph import GraphSCM

    tensors = {name: torch.as_tensor(np.asarray(value), dtype=torch.get_default_dtype())
               for name, value in values.items()}
    if isinstance(model, GraphSCM):
        return model.with_parameters(tensors)

    from pyro import poutine

    names = list(tensors)

    def fixed():
        with poutine.block(hide=names), poutine.condition(data=tensors), poutine.substitute(data=tensors):
            return model()

    return fixed


def load_scm_posterior(path, model=None) -> SCMPosterior:
    """Read an SCM posterior written by :meth:`SCMPosterior.save` (``bd.load_posterior`` dispatches here).

    A model built by :func:`~bayes_defense.models.from_graph` is stored with
    the posterior and rebuilt; any other model must be passed as ``model``
    (or attached later) before :meth:`SCMPosterior.model` is called.
    """
    from bayes_defense.fitting.storage import posterior_format, read_posterior_groups
    from bayes_defense.models.graph import GraphSCM

    path = Path(path)
    groups = read_posterior_groups(path)
    if posterior_format(groups) != FORMAT_NAME:
        raise InvalidInputError(f"{path.name} is not an SCM posterior (format {posterior_format(groups)!r}, "
                                f"expected {FORMAT_NAME!r}); read it with bd.load_posterior")
    posterior = groups["posterior"]
    version = str(posterior.attrs.get("format_version", ""))
    if version.split(".")[0] != FORMAT_VERSION.split(".")[0]:
        raise InvalidInputError(f"{path.name} has SCM posterior format {version!r}; this release reads "
                                f"{FORMAT_VERSION.split('.')[0]}.x")
    try:
        info = json.loads(str(posterior.attrs.get("info", "{}")))
        problems = json.loads(str(posterior.attrs.get("problems", "[]")))
        fixed = json.loads(str(posterior.attrs.get("fixed", "{}")))
        spec = posterior.attrs.get("graph_model")
        stored = None if spec is None else GraphSCM.from_spec(json.loads(str(spec)))
    except json.JSONDecodeError:
        raise InvalidInputError(f"{path.name}: the posterior's metadata is not valid JSON; the file is damaged") \
            from None
    draws = {}
    for name in info.get("parameters", []):
        if name not in posterior:
            raise InvalidInputError(f"{path.name} lacks the parameter {name!r}; the file is damaged")
        values = np.asarray(posterior[name].values, dtype=float)
        if values.ndim < 2 or not np.isfinite(values).all():
            raise InvalidInputError(f"{path.name}: parameter {name!r} has shape {values.shape} or non-finite "
                                    "values; expected (chain, draw, ...) finite numbers")
        draws[name] = values
    stats = {name: np.asarray(values.values) for name, values in groups.get("sample_stats", {}).items()}
    try:
        tail = json.loads(str(posterior.attrs.get("losses_tail", "[]")))
    except json.JSONDecodeError:
        tail = []
    losses = np.asarray(tail, dtype=float) if tail else None
    return SCMPosterior(draws, method=str(posterior.attrs.get("method", "")), sample_stats=stats, losses=losses,
                        fixed=fixed, info=info, level=float(posterior.attrs.get("level", 0.9)),
                        model=model if model is not None else stored, problems=problems)


def parameter_models(model) -> list | None:
    """The per-draw models of a fitted SCM, or None for a plain model (queries pool over them)."""
    found = getattr(model, "parameter_models", None)
    return list(found) if found else None


def pooled(model, answer):
    """``answer(m)`` for each draw's model of a fitted SCM, pooled into one estimate; ``answer(model)`` otherwise."""
    from bayes_defense.estimate import combine_draws

    models = parameter_models(model)
    if models is None:
        return answer(model)
    return combine_draws([answer(m) for m in models])


"""Fitting the package's models to data: ``bd.fit`` and ``bd.load_posterior`` dispatch here.

One module per fitted model, and one per shared piece:

- :mod:`~bayes_defense.fitting.defender`: the streaming defender's
  observation and transition model, fitted to event logs;
- :mod:`~bayes_defense.fitting.cluster`: the cluster SCM's named
  parameters, fitted to incident tables;
- :mod:`~bayes_defense.fitting.scm`: any Pyro SCM with parameter sites,
  fitted to a table with one column per observed site;
- :mod:`~bayes_defense.fitting.signal_model`: the model filter's signal and
  transition parameters (:class:`~bayes_defense.stream.model_filter.ModelDefender`),
  fitted to event logs (labelled, or phases latent) through the filter's own likelihood;
- :mod:`~bayes_defense.fitting.learning`: the learning loop, labels that
  arrive after the fact folded into the signal model's posterior exactly;
- :mod:`~bayes_defense.fitting.merge`: posteriors fitted apart, merged;
- :mod:`~bayes_defense.fitting.diagnostics` (thresholds, checks, the
  warning), :mod:`~bayes_defense.fitting.svi` (the SVI runner),
  :mod:`~bayes_defense.fitting.storage` (NetCDF files),
  :mod:`~bayes_defense.fitting.inference_data` (the ArviZ adapter) and
  :mod:`~bayes_defense.fitting.options` (option checks).

Names are loaded on first use, so importing this package costs no torch.
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import Any

from bayes_defense.errors import InvalidInputError

__all__ = ["fit", "load_posterior", "Posterior", "ClusterPosterior", "FitPrior", "FitDiagnosticsWarning",
           "WindowFeatures", "extract_features", "simulate_windows", "plot_ppc", "SignalPosterior",
           "SignalStatistics", "fit_signal_model", "SignalLedger"]

# public name -> module holding it
_LAZY = {
    "Posterior": "bayes_defense.fitting.defender",
    "FitPrior": "bayes_defense.fitting.defender",
    "WindowFeatures": "bayes_defense.fitting.defender",
    "extract_features": "bayes_defense.fitting.defender",
    "simulate_windows": "bayes_defense.fitting.defender",
    "plot_ppc": "bayes_defense.fitting.defender",
    "ClusterPosterior": "bayes_defense.fitting.cluster",
    "FitDiagnosticsWarning": "bayes_defense.fitting.diagnostics",
    "SignalPosterior": "bayes_defense.fitting.signal_model",
    "SignalStatistics": "bayes_defense.fitting.signal_model",
    "fit_signal_model": "bayes_defense.fitting.signal_model",
    "SignalLedger": "bayes_defense.fitting.learning",
}


def __getattr__(name: str) -> Any:
    try:
        module_name = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'bayes_defense.fitting' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def _fitter(model: Any):
    """The function that fits ``model``: (callable, what it is called for error messages)."""
    from bayes_defense.models.cluster import ClusterModel

    if isinstance(model, ClusterModel):
        from bayes_defense.fitting.cluster import fit_cluster

        return fit_cluster, "the cluster model"
    from bayes_defense.stream.defender import DEFAULT_DEFENDER
    from bayes_defense.stream.model_filter import ModelDefender
    from bayes_defense.stream.scored import ScoredDefender

    # "defender" is the package's default defender; "scored" and "model" name one.
    name = None
    if model is None or isinstance(model, str):
        name = DEFAULT_DEFENDER if model in (None, "defender") else model
    if name == "model" or isinstance(model, ModelDefender):
        from bayes_defense.fitting.signal_model import fit_signal_model

        return fit_signal_model, "the model filter's signal model"
    if name == "scored" or isinstance(model, ScoredDefender):
        from bayes_defense.fitting.defender import fit_defender

        return fit_defender, "the scored defender's model"
    if callable(model) and not isinstance(model, str):
        from bayes_defense.fitting.scm import fit_scm

        return fit_scm, "a Pyro SCM"
    raise InvalidInputError(f"model must be 'defender' (the default defender), 'model' (the model filter), 'scored' "
                            f"(the scored defender), a streaming defender, a cluster model bd.models.cluster(n) or a "
                            f"Pyro SCM (a callable); got {model!r}")


def fit(model: Any = "defender", data: Any = None, **options: Any):
    """Fit a model's parameters to data; return its posterior.

    Parameters
    ----------
    model : "defender", "scored", "model", a streaming defender, ClusterModel or a Pyro callable
        What to fit, and so which fit runs:

        - ``"defender"``: the package's default defender
          (:data:`bayes_defense.stream.defender.DEFAULT_DEFENDER`), as one of
          the next two;
        - ``"scored"`` or a :class:`~bayes_defense.stream.scored.ScoredDefender` (which
          lends its window length): the scored defender's observation and
          transition model, fitted to event logs by
          :func:`bayes_defense.fitting.defender.fit_defender`;
        - ``"model"`` or a :class:`~bayes_defense.stream.model_filter.ModelDefender`
          (which lends its window length and observation map): the model
          filter's signal, transition and fault parameters, fitted to event
          logs by :func:`bayes_defense.fitting.signal_model.fit_signal_model`;
        - ``bd.models.cluster(n)``: the cluster SCM's named parameters,
          fitted to incident tables by
          :func:`bayes_defense.fitting.cluster.fit_cluster`;
        - any other Pyro SCM whose parameters are sample sites with priors:
          fitted to a table with one column per observed site by
          :func:`bayes_defense.fitting.scm.fit_scm`.
    data : object
        The data that fit takes (event logs, incident tables, a table of
        rows); passed on as its first argument.
    **options
        The keyword options of that fit (``method="svi"`` or ``"nuts"``,
        ``num_samples``, ``prior``, ``seed``, ...). Options left out take
        that fit's own defaults; an option it does not take is refused.

    Returns
    -------
    Posterior, ClusterPosterior or SCMPosterior

    Examples
    --------
    >>> import bayes_defense as bd
    >>> from bayes_defense.fitting.defender import simulate_windows
    >>> post = bd.fit("scored", simulate_windows(n_windows=200, seed=0), num_steps=50, num_samples=40,
    ...               progress=False, check=False, ppc_draws=5)
    >>> post.method, post.num_draws
    ('svi', 40)
    >>> bd.fit("scored", simulate_windows(n_windows=10, seed=0), steps=10)
    Traceback (most recent call last):
    ...
    bayes_defense.errors.InvalidInputError: the scored defender's model is not fitted with option(s) steps; ...
    """
    function, what = _fitter(model)
    accepted = [name for name, parameter in inspect.signature(function).parameters.items()
                if parameter.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InvalidInputError(f"{what} is not fitted with option(s) {', '.join(unknown)}; its options are "
                                f"{', '.join(accepted)}")
    from bayes_defense.stream.model_filter import ModelDefender
    from bayes_defense.stream.scored import ScoredDefender

    if isinstance(model, (ScoredDefender, ModelDefender)):
        options.setdefault("window", model.window)
    if isinstance(model, ModelDefender):
        options.setdefault("observation_map", model.observation_map)
    if function.__name__ in ("fit_defender", "fit_signal_model"):
        return function(data, **options)
    return function(model, data, **options)


def load_posterior(path: str | os.PathLike[str]):
    """Read any posterior written by this package (``posterior.save`` or ``bayes-defense fit``).

    The file's kind is read from the ``format`` attribute of its
    ``posterior`` group; only NetCDF-4 data is read (numbers and strings,
    never pickled objects or code), and a file this package did not write is
    refused.

    Raises
    ------
    FileNotFoundError
        No such file.
    InvalidInputError
        The file is not NetCDF-4, or not a bayes_defense posterior, or of an
        unsupported format version, or its arrays are damaged.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> bad = pathlib.Path(tempfile.mkdtemp()) / "x.nc"
    >>> _ = bad.write_bytes(b"not a netcdf file")
    >>> load_posterior(bad)
    Traceback (most recent call last):
    ...
    bayes_defense.errors.InvalidInputError: x.nc is not a NetCDF-4 file (...); expected a posterior written by bayes-defense fit
    """
    from pathlib import Path

    from bayes_defense.fitting import storage

    path = Path(path)
    groups = storage.read_posterior_groups(path)
    found = storage.posterior_format(groups)
    readers = _readers()
    if found not in readers:
        where = "has no 'posterior' group" if "posterior" not in groups else f"has format attribute {found!r}"
        raise InvalidInputError(f"{path.name} is not a bayes_defense posterior: it {where}, expected one of "
                                f"{', '.join(map(repr, readers))}; make one with `bayes-defense fit`")
    module_name, function_name = readers[found]
    reader = getattr(importlib.import_module(module_name), function_name)
    # The SCM reader opens the file itself; the others take the groups already read.
    try:
        return reader(path) if function_name == "load_scm_posterior" else reader(path, groups)
    except InvalidInputError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError) as error:
        # A file the readers' own checks did not foresee: refuse it in one line, never a traceback.
        raise InvalidInputError(f"{path.name} is damaged or not a posterior of this release ({type(error).__name__}: "
                                f"{' '.join(str(error).split())[:160]}); refit with `bayes-defense fit`") from None


def _readers() -> dict[str, tuple[str, str]]:
    """Format name -> (module, reader taking ``(path, groups)``), each name read from its own module."""
    from bayes_defense.fitting import cluster, defender, scm, signal_model

    return {defender.FORMAT_NAME: ("bayes_defense.fitting.defender", "posterior_from_groups"),
            cluster.CLUSTER_FORMAT_NAME: ("bayes_defense.fitting.cluster", "posterior_from_groups"),
            signal_model.FORMAT_NAME: ("bayes_defense.fitting.signal_model", "posterior_from_groups"),
            scm.FORMAT_NAME: ("bayes_defense.fitting.scm", "load_scm_posterior")}

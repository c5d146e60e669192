"""Conversion between discrete Pyro SCMs and pgmpy Bayesian networks (BIF files included).

:func:`to_pgmpy` tabulates a discrete Pyro model (with
:func:`bayes_defense.inference.exact.compile_discrete`) into a pgmpy
``DiscreteBayesianNetwork``; :func:`write_bif` saves it in the Bayesian
Interchange Format. :func:`from_bif` and :func:`from_pgmpy` go the other way:
they return a :class:`TabularModel`, an ordinary Pyro model with one scalar
``Categorical`` site per variable, so that networks from the BIF repositories
can be queried with :func:`bayes_defense.intervene` and
:func:`bayes_defense.counterfactual`.

Rows of a conditional probability table must sum to one. A row within
:data:`ROW_SUM_TOLERANCE` (1e-6) of one is divided by its sum, so that the
model samples and the exact backend answers from the same normalised table:
BIF files store rounded decimals (the bnlearn networks shipped with pgmpy
have rows off by up to 3e-7), and a Categorical would renormalise them
silently anyway. How far each variable's rows were off is kept in
``TabularModel.row_sum_errors``. A row further from one is refused with an
error naming the variable and its parents' states; pass a larger
``tolerance`` to accept it.

Values of a :class:`TabularModel`'s sites are state *positions* ``0 .. K-1``
in the order the network lists the states; ``TabularModel.encode`` maps state
names to positions. That order matters for counterfactuals: the canonical
discrete noise couples the factual and counterfactual worlds monotonically
along it (see :mod:`bayes_defense.causal.noise`), so list ordinal states in
their natural order.

pgmpy is imported lazily: it is slow to import and warns while doing so.
"""

from __future__ import annotations

import gzip
import os
import warnings
from collections.abc import Callable, Mapping

import pyro
import pyro.distributions as dist
import torch

from bayes_defense.errors import InvalidInputError

__all__ = ["to_pgmpy", "write_bif", "from_bif", "from_pgmpy", "TabularModel", "ROW_SUM_TOLERANCE"]

#: Largest distance from one at which a table row's sum is renormalised rather than refused.
ROW_SUM_TOLERANCE = 1e-6


def _pgmpy():
    """Import the parts of pgmpy used here, silencing its import-time deprecation notices."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*StructureScore.*")
        from pgmpy.factors.discrete import TabularCPD
        from pgmpy.models import DiscreteBayesianNetwork
        from pgmpy.readwrite import BIFReader, BIFWriter
    return DiscreteBayesianNetwork, TabularCPD, BIFReader, BIFWriter


def _state_name(value: float):
    """A support value as a state name: an int where it is integral, else the float."""
    value = float(value)
    return int(value) if value.is_integer() else value


def to_pgmpy(model: Callable):
    """Tabulate a discrete Pyro model as a pgmpy ``DiscreteBayesianNetwork``.

    Parameters
    ----------
    model : callable
        A Pyro model without arguments whose sites are all scalar and discrete
        with finite support (the models that ``backend="exact"`` answers).

    Returns
    -------
    pgmpy.models.DiscreteBayesianNetwork
        One node per site, with the model's causal edges, and a ``TabularCPD``
        per node whose state names are the site's support values (ints where
        integral).

    Raises
    ------
    UnsupportedModelError
        If the model is not discrete with finite supports.

    Examples
    --------
    >>> import pyro, pyro.distributions as dist
    >>> from bayes_defense.causal.pgmpy_interop import to_pgmpy
    >>> def sprinkler():
    ...     rain = pyro.sample("rain", dist.Bernoulli(0.3))
    ...     sprinkler = pyro.sample("sprinkler", dist.Bernoulli(0.5 - 0.4 * rain))
    ...     pyro.sample("wet", dist.Bernoulli(0.05 + 0.6 * rain + 0.3 * sprinkler))
    >>> network = to_pgmpy(sprinkler)
    >>> sorted(network.edges())
    [('rain', 'sprinkler'), ('rain', 'wet'), ('sprinkler', 'wet')]
    >>> cpd = network.get_cpds("wet")
    >>> cpd.variables, cpd.state_names["wet"]
    (['wet', 'rain', 'sprinkler'], [0, 1])
    >>> [round(p, 2) for p in cpd.values[1].ravel().tolist()]  # P(wet=1 | rain, sprinkler)
    [0.05, 0.35, 0.65, 0.95]
    """
    from bayes_defense.causal.structure import model_info
    from bayes_defense.inference.exact import compile_discrete

    if _is_pgmpy_network(model):
        return model
    network = compile_discrete(model_info(model), model)
    DiscreteBayesianNetwork, TabularCPD, _, _ = _pgmpy()
    states = {name: [_state_name(v) for v in network.support[name].tolist()] for name in network.names}
    bayes_net = DiscreteBayesianNetwork()
    bayes_net.add_nodes_from(network.names)
    bayes_net.add_edges_from((parent, name) for name in network.names for parent in network.parents[name])
    for name in network.names:
        parents = list(network.parents[name])
        table = network.cpt[name]
        cardinality = table.shape[-1]
        # pgmpy wants (|site|, prod |parents|) with the last parent varying fastest,
        # which is the row-major flattening of our (*parent sizes, |site|) table.
        values = table.reshape(-1, cardinality).T.numpy()
        bayes_net.add_cpds(TabularCPD(
            variable=name,
            variable_card=cardinality,
            values=values,
            evidence=parents or None,
            evidence_card=[len(states[p]) for p in parents] or None,
            state_names={v: states[v] for v in [name, *parents]},
        ))
    bayes_net.check_model()
    return bayes_net


def write_bif(model, path: str | os.PathLike) -> str:
    """Write a discrete Pyro model (or a pgmpy network) to a BIF file.

    Parameters
    ----------
    model : callable or pgmpy.models.DiscreteBayesianNetwork
        A discrete Pyro model as for :func:`to_pgmpy`, or a pgmpy network.
    path : str or path-like
        Where to write; an existing file is overwritten.

    Returns
    -------
    str
        The path written.

    Examples
    --------
    >>> import os, pathlib, tempfile
    >>> import pyro, pyro.distributions as dist
    >>> from bayes_defense.causal.pgmpy_interop import write_bif
    >>> def coin():
    ...     pyro.sample("heads", dist.Bernoulli(0.25))
    >>> path = write_bif(coin, os.path.join(tempfile.mkdtemp(), "coin.bif"))
    >>> print(pathlib.Path(path).read_text().split("probability")[1].strip())
    ( heads ) {
        table 0.75, 0.25 ;
    }
    """
    _, _, _, BIFWriter = _pgmpy()
    network = to_pgmpy(model)
    path = os.fspath(path)
    # Full float precision: rounding would make the file disagree with the model.
    BIFWriter(network, round_values=None).write(path)
    return path


class TabularModel:
    """A Pyro model of a discrete Bayesian network given by conditional probability tables.

    Calling it samples one scalar ``Categorical`` site per variable in
    topological order; a site's probabilities are its table indexed by the
    state positions its parents took. Build it with :func:`from_bif` or
    :func:`from_pgmpy`.

    Attributes
    ----------
    variables : list of str
        Variable names in the order they are sampled (topological).
    parents : dict
        ``{variable: tuple of parent names}`` in the table's axis order.
    state_names : dict
        ``{variable: list of state names}``; a site's value ``k`` means
        ``state_names[variable][k]``.
    tables : dict
        ``{variable: float64 tensor of shape (|pa_1|, ..., |pa_m|, |variable|)}``,
        every row summing to one.
    row_sum_errors : dict
        ``{variable: largest |row sum - 1|}`` of the tables as given, for the
        variables whose rows were renormalised (see the module docstring).
    """

    def __init__(self, variables, parents, state_names, tables, row_sum_errors=None):
        self.variables = list(variables)
        self.parents = {name: tuple(parents[name]) for name in self.variables}
        self.state_names = {name: list(state_names[name]) for name in self.variables}
        self.tables = dict(tables)
        self.row_sum_errors = dict(row_sum_errors or {})

    @property
    def site_distributions(self) -> dict:
        """``{variable: "Categorical"}``: the sites, declared so that queries need not trace the model."""
        return {name: "Categorical" for name in self.variables}

    def discrete_tables(self) -> tuple[dict, dict]:
        """``(parents, tables)`` in sampling order: the network itself, for the exact backend.

        The exact backend compiles these tables instead of running the model,
        which samples from the same tables.

        Examples
        --------
        >>> import torch
        >>> from bayes_defense.causal.pgmpy_interop import TabularModel
        >>> m = TabularModel(["rain"], {"rain": ()}, {"rain": ["no", "yes"]},
        ...                  {"rain": torch.tensor([0.8, 0.2], dtype=torch.float64)})
        >>> m.discrete_tables()[1]["rain"].tolist()
        [0.8, 0.2]
        """
        return self.parents, {name: self.tables[name] for name in self.variables}

    def __call__(self) -> dict:
        values: dict = {}
        for name in self.variables:
            table = self.tables[name]
            parents = self.parents[name]
            probs = table[tuple(values[p].long() for p in parents)] if parents else table
            values[name] = pyro.sample(name, dist.Categorical(probs=probs))
        return values

    def __repr__(self) -> str:
        return f"TabularModel({len(self.variables)} variables: {', '.join(self.variables)})"

    def encode(self, assignment: Mapping) -> dict:
        """Map ``{variable: state name}`` to ``{variable: state position}`` for queries.

        Names are matched as given or by their string form (BIF states are strings).

        Examples
        --------
        >>> from bayes_defense.causal.pgmpy_interop import TabularModel
        >>> import torch
        >>> m = TabularModel(["rain"], {"rain": ()}, {"rain": ["no", "yes"]},
        ...                  {"rain": torch.tensor([0.8, 0.2], dtype=torch.float64)})
        >>> m.encode({"rain": "yes"})
        {'rain': 1}
        """
        out = {}
        for name, state in assignment.items():
            if name not in self.state_names:
                raise InvalidInputError(
                    f"unknown variable {name!r}; the network's variables are: {', '.join(self.variables)}"
                )
            names = self.state_names[name]
            if state in names:
                out[name] = names.index(state)
            elif str(state) in map(str, names):
                out[name] = list(map(str, names)).index(str(state))
            else:
                raise InvalidInputError(f"variable {name!r} has no state {state!r}; its states are {names}")
        return out


def _is_pgmpy_network(obj) -> bool:
    return type(obj).__module__.startswith("pgmpy.") and hasattr(obj, "get_cpds")


def _normalised(name: str, table: torch.Tensor, parents: list, state_names: dict, tolerance: float):
    """``(table with rows summing to one, largest |row sum - 1|)``; refuse rows further than ``tolerance``."""
    sums = table.sum(-1, keepdim=True)
    error = (sums - 1).abs()
    worst = float(error.max()) if error.numel() else 0.0
    if not worst <= tolerance:
        flat = int(error.reshape(-1).argmax())
        position = torch.unravel_index(torch.tensor(flat), sums.shape[:-1]) if parents else ()
        where = ", ".join(f"{p}={state_names[p][int(i)]}" for p, i in zip(parents, position, strict=True))
        raise InvalidInputError(
            f"the table of {name!r} has a row{' at ' + where if where else ''} summing to "
            f"{float(sums.reshape(-1)[flat]):.10g}, not 1 (tolerance {tolerance:g}); fix the table, or pass "
            "a larger tolerance to renormalise such rows"
        )
    if bool((table < 0).any()):
        raise InvalidInputError(f"the table of {name!r} has negative entries; probabilities must be >= 0")
    return (table / sums if worst > 0 else table), worst


def from_pgmpy(network, *, tolerance: float = ROW_SUM_TOLERANCE) -> TabularModel:
    """Turn a pgmpy ``DiscreteBayesianNetwork`` (with CPDs) into a Pyro model.

    Parameters
    ----------
    network : pgmpy.models.DiscreteBayesianNetwork
        A network whose every node has a ``TabularCPD``.
    tolerance : float
        Rows whose sums lie within ``tolerance`` of one are divided by their
        sum (how far they were is kept in ``row_sum_errors``); rows further
        off raise :class:`~bayes_defense.errors.InvalidInputError`.

    Returns
    -------
    TabularModel
        A Pyro model without arguments; each variable is a scalar
        ``Categorical`` site whose value is the position of its state.

    Examples
    --------
    >>> import pyro, pyro.distributions as dist
    >>> import bayes_defense as bd
    >>> from bayes_defense.causal.pgmpy_interop import from_pgmpy, to_pgmpy
    >>> def cause():
    ...     c = pyro.sample("c", dist.Bernoulli(0.4))
    ...     pyro.sample("e", dist.Bernoulli(0.1 + 0.7 * c))
    >>> model = from_pgmpy(to_pgmpy(cause))
    >>> round(float(bd.intervene(model, {"c": 1}, {"e": 1}, backend="exact")), 6)
    0.8
    """
    import networkx as nx

    if not _is_pgmpy_network(network):
        raise InvalidInputError(
            f"from_pgmpy needs a pgmpy DiscreteBayesianNetwork; got {type(network).__name__}"
        )
    listed = list(network.nodes())
    position = {name: i for i, name in enumerate(listed)}
    graph = nx.DiGraph()
    graph.add_nodes_from(listed)
    graph.add_edges_from(network.edges())
    order = list(nx.lexicographical_topological_sort(graph, key=position.__getitem__))
    if not 0.0 <= float(tolerance) < 1.0:
        raise InvalidInputError(f"tolerance must lie in [0, 1), for example 1e-6; got {tolerance!r}")
    parents, state_names, tables, errors = {}, {}, {}, {}
    for name in order:
        cpd = network.get_cpds(name)
        if cpd is None:
            raise InvalidInputError(f"variable {name!r} has no CPD; add one with network.add_cpds(...)")
        evidence = list(cpd.variables[1:])
        cards = [int(c) for c in cpd.cardinality]
        values = torch.as_tensor(cpd.get_values(), dtype=torch.float64)  # (|name|, prod |evidence|)
        table = values.T.reshape(*cards[1:], cards[0]).contiguous()
        tables[name], error = _normalised(name, table, evidence, cpd.state_names, float(tolerance))
        if error > 0:
            errors[name] = error
        parents[name] = tuple(evidence)
        state_names[name] = list(cpd.state_names[name])
    for name in order:
        for parent in parents[name]:
            if network.get_cpds(parent).state_names[parent] != network.get_cpds(name).state_names[parent]:
                raise InvalidInputError(
                    f"the CPD of {name!r} orders the states of its parent {parent!r} differently from "
                    f"{parent!r}'s own CPD; reorder them to agree"
                )
    return TabularModel(order, parents, state_names, tables, errors)


def from_bif(path: str | os.PathLike, *, tolerance: float = ROW_SUM_TOLERANCE) -> TabularModel:
    """Read a BIF file (plain or gzipped) into a Pyro model that the package's queries accept.

    Parameters
    ----------
    path : str or path-like
        A Bayesian Interchange Format file (as written by :func:`write_bif`
        or found in the bnlearn repository); a name ending in ``.gz`` is
        read through gzip.
    tolerance : float
        Rows whose sums lie within ``tolerance`` of one are renormalised
        (recorded in ``row_sum_errors``); rows further off are refused. See
        :func:`from_pgmpy`.

    Returns
    -------
    TabularModel
        A callable Pyro model without arguments, one scalar ``Categorical``
        site per variable in topological order; values are state positions
        (``model.encode({"var": "state"})`` converts names).

    Examples
    --------
    >>> import os, pathlib, tempfile
    >>> import bayes_defense as bd
    >>> from bayes_defense.causal.pgmpy_interop import from_bif
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.bif")
    >>> _ = pathlib.Path(path).write_text('''network tiny {
    ... }
    ... variable rain {
    ...     type discrete [ 2 ] { no, yes };
    ... }
    ... variable wet {
    ...     type discrete [ 2 ] { no, yes };
    ... }
    ... probability ( rain ) {
    ...     table 0.8, 0.2 ;
    ... }
    ... probability ( wet | rain ) {
    ...     ( no ) 0.9, 0.1;
    ...     ( yes ) 0.2, 0.8;
    ... }
    ... ''')
    >>> model = from_bif(path)
    >>> model
    TabularModel(2 variables: rain, wet)
    >>> query = model.encode({"rain": "yes"})
    >>> round(float(bd.intervene(model, {}, query, evidence=model.encode({"wet": "yes"}))), 6)
    0.666667
    """
    _, _, BIFReader, _ = _pgmpy()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InvalidInputError(f"no BIF file at {path!r}")
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as file:
                text = file.read()
        else:
            with open(path, encoding="utf-8") as file:
                text = file.read()
    except (OSError, UnicodeDecodeError, EOFError) as error:
        hint = ("; a gzipped file must end in .gz" if isinstance(error, UnicodeDecodeError) else "")
        raise InvalidInputError(f"cannot read the BIF file {path!r} as UTF-8 text: {error}{hint}") from error
    if not text.strip():
        raise InvalidInputError(f"the BIF file {path!r} is empty")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        network = BIFReader(string=text).get_model()
    return from_pgmpy(network, tolerance=tolerance)

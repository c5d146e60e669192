"""Pyro SCMs built from a user's causal graph, with learnable mechanisms and priors.

:func:`from_graph` turns a networkx DAG (or an adjacency CSV) into a
:class:`GraphSCM`: one ``pyro.sample`` site per node, in topological order,
and a few parameter sites per node, each with a prior, so that
:func:`bayes_defense.fit` learns the mechanisms from a table of observations
and every query of the causal core answers the fitted model.

Mechanisms, per node:

- ``"linear"`` (continuous): ``x = c0 + sum_p w_p (x_p - location_p) + e``,
  ``e ~ Normal(0, s)``;
- ``"additive"`` (continuous): a linear spline in each parent, added up:
  ``x = c0 + sum_p (w_p (x_p - location_p) + sum_k a_pk relu(z_p - t_k)) + e``,
  where ``z_p = (x_p - location_p) / spread_p`` puts the knots ``t_k`` where
  the parent's values lie, so the parent effect can bend without the noise
  stopping being additive. Locations and spreads come from ``scales=`` (a
  training table, or 0 and 1 by default); with them the intercept ``c0`` is
  the node's level when its parents are at their locations;
- ``"discrete"``: a node with ``states`` (an integer of at least 2) takes
  values ``0 .. states - 1`` from a conditional probability table, one
  Dirichlet-distributed row per configuration of its (discrete) parents.

A discrete parent of a continuous node enters through indicators of its
states beyond the first. Parameter sites are named ``"<node>.coefficients"``
(intercept first, then :meth:`GraphSCM.coefficient_names`), ``"<node>.scale"``
and ``"<node>.cpt"``. Noise is Normal, so abduction is exact and the
counterfactual machinery of :mod:`bayes_defense.causal` applies unchanged.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import networkx as nx
import pyro
import torch
from pyro import distributions as dist

from bayes_defense.errors import InvalidInputError

__all__ = ["from_graph", "GraphSCM", "MECHANISMS"]

#: Names accepted by ``mechanisms=``; ``"discrete"`` is implied by ``states``.
MECHANISMS = ("linear", "additive", "discrete")
#: Knots of the additive spline basis, in units of the parent's spread around its location.
DEFAULT_KNOTS = (-1.0, 0.0, 1.0)
_PARAMETER_SUFFIXES = (".coefficients", ".scale", ".cpt")


@dataclass(frozen=True)
class _Node:
    name: str
    kind: str
    parents: tuple
    states: int = 0


@dataclass(eq=False)
class GraphSCM:
    """A Pyro SCM over a DAG: calling it runs one unit (parameters from their priors, then every node).

    Build it with :func:`from_graph`. Attributes are read-only by
    convention: queries cache what they compile per model object.

    Attributes
    ----------
    nodes : tuple of str
        Node sites in topological order.
    parameter_sites : tuple of str
        Parameter sites, in the order the model samples them.
    """

    _nodes: tuple
    locations: dict
    spreads: dict
    prior_scale: float = 10.0
    concentration: float = 1.0
    knots: tuple = DEFAULT_KNOTS
    _by_name: dict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name = {node.name: node for node in self._nodes}

    # ------------------------------------------------------------ structure
    @property
    def nodes(self) -> tuple:
        return tuple(node.name for node in self._nodes)

    @property
    def parameter_sites(self) -> tuple:
        out = []
        for node in self._nodes:
            out += [f"{node.name}.cpt"] if node.kind == "discrete" else [f"{node.name}.coefficients",
                                                                         f"{node.name}.scale"]
        return tuple(out)

    def parents(self, node: str) -> tuple:
        """The node's parents, in topological order."""
        return self._node(node).parents

    def kind(self, node: str) -> str:
        """``"linear"``, ``"additive"`` or ``"discrete"``."""
        return self._node(node).kind

    def states(self, node: str) -> int:
        """Number of states of a discrete node (0 for a continuous one)."""
        return self._node(node).states

    def graph(self) -> nx.DiGraph:
        """The DAG as a networkx graph."""
        graph = nx.DiGraph()
        graph.add_nodes_from(self.nodes)
        graph.add_edges_from((p, node.name) for node in self._nodes for p in node.parents)
        return graph

    def coefficient_names(self, node: str) -> list[str]:
        """Names of the entries of ``"<node>.coefficients"``, intercept first.

        Examples
        --------
        >>> import networkx as nx
        >>> scm = from_graph(nx.DiGraph([("a", "b")]), mechanisms="additive")
        >>> scm.coefficient_names("b")
        ['intercept', 'a', 'a:hinge(-1)', 'a:hinge(0)', 'a:hinge(1)']
        """
        spec = self._node(node)
        if spec.kind == "discrete":
            raise InvalidInputError(f"node {node!r} is discrete: its parameter is the table {node}.cpt, "
                                    "not coefficients")
        names = ["intercept"]
        for parent in spec.parents:
            parent_spec = self._by_name[parent]
            if parent_spec.kind == "discrete":
                names += [f"{parent}={state}" for state in range(1, parent_spec.states)]
                continue
            names.append(parent)
            if spec.kind == "additive":
                names += [f"{parent}:hinge({knot:g})" for knot in self.knots]
        return names

    def _node(self, name: str) -> _Node:
        try:
            return self._by_name[name]
        except KeyError:
            raise InvalidInputError(f"no node {name!r}; the nodes are: {', '.join(self.nodes)}") from None

    # ------------------------------------------------------------ priors
    def priors(self) -> dict:
        """``{parameter site: prior distribution}``.

        Coefficients are Normal around zero (the intercept around the node's
        location) with standard deviation ``prior_scale`` times the ratio of
        the node's spread to the parent's, so the prior is equally vague in
        every unit; scales are HalfNormal(``prior_scale * spread``); each row
        of a table is Dirichlet(``concentration``).
        """
        out = {}
        for node in self._nodes:
            name = node.name
            if node.kind == "discrete":
                configurations = math.prod(self._by_name[p].states for p in node.parents)
                out[f"{name}.cpt"] = dist.Dirichlet(torch.full((configurations, node.states),
                                                               float(self.concentration))).to_event(1)
                continue
            spread = float(self.spreads[name])
            loc = [float(self.locations[name])]
            sd = [self.prior_scale * spread]
            for coefficient in self.coefficient_names(name)[1:]:
                parent = coefficient.split(":")[0].split("=")[0]
                per_unit = 1.0 if ("=" in coefficient or ":" in coefficient) else 1.0 / float(self.spreads[parent])
                loc.append(0.0)
                sd.append(self.prior_scale * spread * per_unit)
            out[f"{name}.coefficients"] = dist.Normal(torch.tensor(loc), torch.tensor(sd)).to_event(1)
            out[f"{name}.scale"] = dist.HalfNormal(torch.tensor(self.prior_scale * spread))
        return out

    # ------------------------------------------------------------ running
    def __call__(self) -> dict:
        """Run one unit: draw every parameter from its prior, then every node given its parents."""
        parameters = {name: pyro.sample(name, prior) for name, prior in self.priors().items()}
        return self.run_nodes(parameters)

    def run_nodes(self, parameters: Mapping) -> dict:
        """Sample the node sites given parameter values (tensors, or arrays with a leading draw axis).

        Returns ``{node: value}``. This is the one place the mechanisms are
        written; the prior model, the fitted model and :meth:`simulate` all
        call it.
        """
        values: dict = {}
        for node in self._nodes:
            values[node.name] = pyro.sample(node.name, self.distribution(node.name, parameters, values))
        return values

    def distribution(self, node: str, parameters: Mapping, values: Mapping):
        """The node's distribution given the parameters and its parents' values."""
        spec = self._node(node)
        if spec.kind == "discrete":
            table = torch.as_tensor(parameters[f"{node}.cpt"])
            index = 0
            for parent in spec.parents:
                index = index * self._by_name[parent].states + torch.as_tensor(values[parent]).long()
            if not spec.parents:
                return dist.Categorical(probs=table[..., 0, :])
            # The configuration index may carry particle or enumeration dimensions; the table a draw one.
            probs = table[index] if table.dim() == 2 else _gather_rows(table, index)
            return dist.Categorical(probs=probs)
        coefficients = torch.as_tensor(parameters[f"{node}.coefficients"])
        features = self.features(node, values)
        loc = (features * coefficients).sum(-1) if features.shape[-1] > 1 else coefficients[..., 0]
        scale = torch.as_tensor(parameters[f"{node}.scale"])
        if loc.dim() < scale.dim():
            loc = loc.expand(scale.shape)
        return dist.Normal(loc, scale)

    def features(self, node: str, values: Mapping) -> torch.Tensor:
        """Regressors of a continuous node, ``(..., len(coefficient_names(node)))``, intercept column first."""
        spec = self._node(node)
        columns = []
        for parent in spec.parents:
            value = torch.as_tensor(values[parent])
            parent_spec = self._by_name[parent]
            if parent_spec.kind == "discrete":
                index = value.long()
                columns += [(index == state).to(torch.get_default_dtype()) for state in range(1, parent_spec.states)]
                continue
            # Centred at the parent's location: the intercept is then the node's level at typical
            # parents, nearly uncorrelated with the slopes, which keeps the fit well conditioned.
            columns.append(value - float(self.locations[parent]))
            if spec.kind == "additive":
                z = (value - float(self.locations[parent])) / float(self.spreads[parent])
                columns += [torch.relu(z - knot) for knot in self.knots]
        if not columns:
            return torch.ones((1,))
        columns = torch.broadcast_tensors(*columns)
        return torch.stack([torch.ones_like(columns[0]), *columns], -1)

    def with_parameters(self, parameters: Mapping):
        """A Pyro SCM over the node sites only, with the mechanisms fixed at ``parameters``.

        Examples
        --------
        >>> import networkx as nx, torch
        >>> import bayes_defense as bd
        >>> scm = from_graph(nx.DiGraph([("x", "y")]))
        >>> point = scm.with_parameters({"x.coefficients": torch.tensor([0.0]), "x.scale": torch.tensor(1.0),
        ...                              "y.coefficients": torch.tensor([1.0, 2.0]), "y.scale": torch.tensor(1.0)})
        >>> round(float(bd.intervene(point, {"x": 1.0}, "y")), 6)
        3.0
        """
        missing = [name for name in self.parameter_sites if name not in parameters]
        if missing:
            raise InvalidInputError(f"with_parameters needs a value for every parameter site; missing: "
                                    f"{', '.join(missing)}")
        fixed = {name: torch.as_tensor(parameters[name], dtype=torch.get_default_dtype())
                 for name in self.parameter_sites}
        return _PointSCM(self, fixed)

    def simulate(self, num_rows: int, parameters: Mapping, *, shift: Mapping | None = None,
                 seed: int | None = None):
        """Draw ``num_rows`` i.i.d. units from the model at ``parameters`` as a pandas DataFrame.

        ``shift`` adds ``{node: amount}`` to those nodes' noise: an injected
        fault whose effect propagates to the descendants through the
        mechanisms (a root cause).

        Examples
        --------
        >>> import networkx as nx, torch
        >>> scm = from_graph(nx.DiGraph([("x", "y")]))
        >>> values = {"x.coefficients": torch.tensor([0.0]), "x.scale": torch.tensor(1.0),
        ...           "y.coefficients": torch.tensor([0.0, 2.0]), "y.scale": torch.tensor(0.1)}
        >>> table = scm.simulate(5, values, shift={"x": 10.0}, seed=0)
        >>> bool((table["y"] > 15).all())
        True
        """
        import pandas as pd

        if isinstance(num_rows, bool) or not isinstance(num_rows, int) or num_rows < 1:
            raise InvalidInputError(f"num_rows must be a positive integer; got {num_rows!r}")
        shift = dict(shift or {})
        for name in shift:
            self._node(name)
        point = self.with_parameters(parameters)
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
        values: dict = {}
        with torch.no_grad():
            for node in self._nodes:
                d = self.distribution(node.name, point.parameters, values)
                if node.kind == "discrete":
                    u = torch.rand(num_rows, generator=generator)
                    # Inverse CDF, the package's canonical discrete noise (u + shift, clipped).
                    u = (u + float(shift.get(node.name, 0.0))).clamp(0.0, 1.0 - 1e-12)
                    cdf = d.probs.expand(num_rows, node.states).cumsum(-1)
                    values[node.name] = (u[:, None] > cdf[:, :-1]).sum(-1)
                else:
                    eps = torch.randn(num_rows, generator=generator) + float(shift.get(node.name, 0.0))
                    values[node.name] = d.loc.expand(num_rows) + d.scale * eps
        return pd.DataFrame({name: value.numpy() for name, value in values.items()})

    # ------------------------------------------------------------ storage
    def spec(self) -> dict:
        """A JSON-ready description from which :meth:`from_spec` rebuilds the model."""
        return {"nodes": [{"name": n.name, "kind": n.kind, "parents": list(n.parents), "states": n.states}
                          for n in self._nodes],
                "locations": {k: float(v) for k, v in self.locations.items()},
                "spreads": {k: float(v) for k, v in self.spreads.items()},
                "prior_scale": float(self.prior_scale), "concentration": float(self.concentration),
                "knots": [float(k) for k in self.knots]}

    @classmethod
    def from_spec(cls, spec: Mapping) -> GraphSCM:
        """Rebuild a model written by :meth:`spec`."""
        try:
            nodes = tuple(_Node(n["name"], n["kind"], tuple(n["parents"]), int(n["states"])) for n in spec["nodes"])
            return cls(nodes, dict(spec["locations"]), dict(spec["spreads"]), float(spec["prior_scale"]),
                       float(spec["concentration"]), tuple(spec["knots"]))
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidInputError(f"not a from_graph model description ({error}); write one with "
                                    "GraphSCM.spec()") from None


class _PointSCM:
    """A :class:`GraphSCM` with fixed parameters: the node sites alone."""

    def __init__(self, scm: GraphSCM, parameters: dict):
        self.scm = scm
        self.parameters = parameters

    def __call__(self) -> dict:
        return self.scm.run_nodes(self.parameters)

    def __repr__(self) -> str:
        return f"<fixed-parameter SCM over {len(self.scm.nodes)} nodes>"


def _gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[d, index[..., d], :]`` for a table with a leading draw axis aligned with index's last one."""
    draws = table.shape[0]
    index = torch.broadcast_to(index, torch.broadcast_shapes(index.shape, (draws,)))
    return table[torch.arange(draws), index]


# ---------------------------------------------------------------- building
def _read_graph(graph) -> nx.DiGraph:
    if isinstance(graph, nx.DiGraph):
        return graph
    if isinstance(graph, nx.Graph):
        raise InvalidInputError("graph must be directed (a networkx DiGraph); got an undirected graph. "
                                "Orient its edges from cause to effect")
    if isinstance(graph, (str, os.PathLike)):
        return _read_csv(graph)
    raise InvalidInputError(f"graph must be a networkx DiGraph or the path of an adjacency CSV; got "
                            f"{type(graph).__name__}")


def _read_csv(path) -> nx.DiGraph:
    """An adjacency matrix (first row and column name the nodes; row = cause, column = effect, nonzero = edge)
    or an edge list with columns ``source,target`` (or ``parent,child``)."""
    import pandas as pd

    if not os.path.exists(path):
        raise FileNotFoundError(f"no such graph file: {str(path)!r}")
    table = pd.read_csv(path)
    lowered = [str(c).strip().lower() for c in table.columns]
    for a, b in (("source", "target"), ("parent", "child"), ("cause", "effect")):
        if a in lowered and b in lowered:
            graph = nx.DiGraph()
            graph.add_edges_from(zip(table.iloc[:, lowered.index(a)].astype(str),
                                     table.iloc[:, lowered.index(b)].astype(str), strict=True))
            return graph
    table = table.set_index(table.columns[0])
    rows = [str(r) for r in table.index]
    columns = [str(c) for c in table.columns]
    if rows != columns:
        raise InvalidInputError(f"{os.path.basename(str(path))}: an adjacency CSV needs the same node names, "
                                f"in the same order, in its first row and first column; got rows {rows[:5]} "
                                f"and columns {columns[:5]}. Or write an edge list with columns source,target")
    try:
        matrix = table.to_numpy(dtype=float)
    except ValueError:
        raise InvalidInputError(f"{os.path.basename(str(path))}: adjacency entries must be numbers "
                                "(nonzero = edge from row to column)") from None
    graph = nx.DiGraph()
    graph.add_nodes_from(rows)
    graph.add_edges_from((rows[i], columns[j]) for i in range(len(rows)) for j in range(len(columns))
                         if matrix[i, j] != 0)
    return graph


def _scales(nodes, scales) -> tuple[dict, dict]:
    locations = {n: 0.0 for n in nodes}
    spreads = {n: 1.0 for n in nodes}
    if scales is None:
        return locations, spreads
    if hasattr(scales, "columns"):  # a training table: its means and standard deviations
        for name in nodes:
            if name in scales.columns:
                column = scales[name].astype(float)
                locations[name] = float(column.mean())
                spread = float(column.std())
                spreads[name] = spread if math.isfinite(spread) and spread > 0 else 1.0
        return locations, spreads
    if not isinstance(scales, Mapping):
        raise InvalidInputError(f"scales must be a DataFrame or {{node: (location, spread)}}; got "
                                f"{type(scales).__name__}")
    for name, pair in scales.items():
        if name not in locations:
            raise InvalidInputError(f"scales names {name!r}, which is not a node; nodes: {', '.join(nodes)}")
        try:
            location, spread = (float(x) for x in pair)
        except (TypeError, ValueError):
            raise InvalidInputError(f"scales[{name!r}] must be a (location, spread) pair; got {pair!r}") from None
        if not (math.isfinite(location) and math.isfinite(spread) and spread > 0):
            raise InvalidInputError(f"scales[{name!r}] = {pair!r}: location must be finite and spread positive")
        locations[name], spreads[name] = location, spread
    return locations, spreads


def from_graph(graph, mechanisms="linear", *, states: Mapping | None = None, scales=None,
               prior_scale: float = 10.0, concentration: float = 1.0, knots=DEFAULT_KNOTS) -> GraphSCM:
    """Build a Pyro SCM from a causal DAG: one site per node, learnable mechanisms with priors.

    Parameters
    ----------
    graph : networkx.DiGraph or path
        The DAG (edges from cause to effect), or a CSV file: an adjacency
        matrix whose first row and column name the nodes (row = cause,
        column = effect, nonzero = edge), or an edge list with columns
        ``source,target``. Node names are the site names.
    mechanisms : str or dict
        ``"linear"`` or ``"additive"`` for every continuous node, or
        ``{node: mechanism}`` (unnamed nodes are linear). See the module docstring.
    states : dict, optional
        ``{node: number of states}`` for discrete nodes (a node attribute
        ``states`` on the graph does the same). Discrete nodes may only have
        discrete parents.
    scales : DataFrame or dict, optional
        Where each node's values lie: a training table (its means and
        standard deviations) or ``{node: (location, spread)}``; default 0 and
        1. It places the additive knots and sizes the priors; it is not fitted.
    prior_scale : float
        Prior standard deviation of a coefficient, in units of the node's
        spread per unit of the parent's.
    concentration : float
        Dirichlet concentration of each row of a discrete node's table.
    knots : sequence of float
        Knots of the additive basis, in spreads from the parent's location.

    Returns
    -------
    GraphSCM

    Raises
    ------
    InvalidInputError
        A cycle (named), an undirected graph, an unknown mechanism, a discrete
        node with a continuous parent, names that collide with parameter sites.

    Examples
    --------
    >>> import networkx as nx
    >>> import bayes_defense as bd
    >>> scm = bd.models.from_graph(nx.DiGraph([("load", "latency"), ("latency", "errors")]))
    >>> scm.nodes
    ('load', 'latency', 'errors')
    >>> scm.parameter_sites[:3]
    ('load.coefficients', 'load.scale', 'latency.coefficients')
    >>> bd.models.from_graph(nx.DiGraph([("a", "b"), ("b", "a")]))
    Traceback (most recent call last):
    ...
    bayes_defense.errors.InvalidInputError: the graph has a cycle (a -> b -> a); an SCM needs a DAG: remove an edge of the cycle
    """
    graph = _read_graph(graph)
    for node in graph.nodes:
        if not isinstance(node, str) or not node:
            raise InvalidInputError(f"node names must be non-empty strings (they become site names); got {node!r}")
    if graph.number_of_nodes() == 0:
        raise InvalidInputError("the graph has no nodes; add at least one")
    if not nx.is_directed_acyclic_graph(graph):
        cycle = nx.find_cycle(graph)
        path = " -> ".join([cycle[0][0], *(edge[1] for edge in cycle)])
        raise InvalidInputError(f"the graph has a cycle ({path}); an SCM needs a DAG: remove an edge of the cycle")
    names = set(graph.nodes)
    for node in graph.nodes:
        for suffix in _PARAMETER_SUFFIXES:
            if node.endswith(suffix) and node[: -len(suffix)] in names:
                raise InvalidInputError(f"node name {node!r} collides with the parameter site of node "
                                        f"{node[: -len(suffix)]!r}; rename it")
    position = {node: i for i, node in enumerate(graph.nodes)}
    order = list(nx.lexicographical_topological_sort(graph, key=position.__getitem__))
    counts = {node: graph.nodes[node].get("states") for node in order}
    for name, count in dict(states or {}).items():
        if name not in names:
            raise InvalidInputError(f"states names {name!r}, which is not a node; nodes: {', '.join(order)}")
        counts[name] = count
    if isinstance(mechanisms, str):
        mechanisms = {node: mechanisms for node in order}
    elif isinstance(mechanisms, Mapping):
        unknown = [name for name in mechanisms if name not in names]
        if unknown:
            raise InvalidInputError(f"mechanisms names {', '.join(map(repr, unknown))}, which are not nodes; "
                                    f"nodes: {', '.join(order)}")
        mechanisms = {node: mechanisms.get(node, "linear") for node in order}
    else:
        raise InvalidInputError(f"mechanisms must be one of {MECHANISMS} or {{node: mechanism}}; got {mechanisms!r}")
    specs = []
    for node in order:
        count = counts[node]
        kind = mechanisms[node]
        if kind not in MECHANISMS:
            raise InvalidInputError(f"node {node!r}: unknown mechanism {kind!r}; choose one of {', '.join(MECHANISMS)}")
        if count is not None:
            if isinstance(count, bool) or not isinstance(count, int) or count < 2:
                raise InvalidInputError(f"node {node!r}: states must be an integer of at least 2; got {count!r}")
            kind = "discrete"
        elif kind == "discrete":
            raise InvalidInputError(f"node {node!r} is discrete but has no number of states; pass states={{{node!r}: k}}")
        parents = tuple(sorted(graph.predecessors(node), key=order.index))
        specs.append(_Node(node, kind, parents, int(count or 0)))
    by_name = {s.name: s for s in specs}
    for spec in specs:
        if spec.kind == "discrete":
            continuous = [p for p in spec.parents if by_name[p].kind != "discrete"]
            if continuous:
                raise InvalidInputError(f"discrete node {spec.name!r} has continuous parent(s) "
                                        f"{', '.join(continuous)}; a table needs discrete parents: give them "
                                        "states or make the node continuous")
    if not (isinstance(prior_scale, (int, float)) and prior_scale > 0 and math.isfinite(prior_scale)):
        raise InvalidInputError(f"prior_scale must be a positive number; got {prior_scale!r}")
    if not (isinstance(concentration, (int, float)) and concentration > 0):
        raise InvalidInputError(f"concentration must be a positive number; got {concentration!r}")
    locations, spreads = _scales(order, scales)
    return GraphSCM(tuple(specs), locations, spreads, float(prior_scale), float(concentration),
                    tuple(float(k) for k in knots))

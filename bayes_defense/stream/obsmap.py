"""Observation maps: how a log's own vocabulary becomes the schema-1.0 kinds and the model's signals.

A map is a TOML file (DESIGN.md section 8)::

    [kinds.pre_prepare_latency_ms]      # a kind of the user's log
    as = "preprepare_interval"          # a schema-1.0 kind, or a model signal (bayes_defense.stream.signals.SIGNALS)
    scale = 0.001                       # value * scale
    attrs = { primaryName = "primary" } # the log's attr name = the schema's
    aggregate = "mean"                  # optional: rate, count, mean, last or interval, per node per window
    node = "suspect"                    # optional: the attr naming the node the event is about
    also = [{ as = "preprepare" }]      # optional: the same event feeds more targets

    [nodes]
    replica = '^Node\\d+$'              # which node names are replicas

    [options]
    schema_kinds = true                 # schema-1.0 kinds not listed pass through unchanged

``aggregate``: the events of one node in a window become one value at the
window's end: ``rate`` (events per second), ``count``, ``mean`` or ``last``
of their (scaled) values, ``interval`` (mean seconds between them; with one
or none, seconds since the node's previous one). An event mapped to a model
signal turns that signal on at the node it names (``node``; without it, the
event's own node), for example plenum's ``PPR_DIGEST_WRONG`` with its
``suspect`` attr turns ``conflicting`` on at the suspected primary.

:meth:`ObservationMap.default` is the schema-1.0 identity; the package ships
``plenum.toml`` (:meth:`ObservationMap.builtin`) for Hyperledger indy-plenum
event logs (docs/observation-maps.md).

Examples
--------
>>> m = ObservationMap.from_toml('''
... [kinds.pre_prepare_latency_ms]
... as = "preprepare_interval"
... scale = 0.001
... attrs = { leader = "primary" }
... ''')
>>> m.translate("pre_prepare_latency_ms", "n1", 120.0, {"leader": "n0"})
[('preprepare_interval', 'n1', 0.12, {'primary': 'n0'}, None)]
>>> m.translate("no_such_kind", "n1", 1.0, {}) is None
True
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bayes_defense.errors import InvalidInputError
from bayes_defense.stream.schema import KNOWN_KINDS
from bayes_defense.stream.signals import SIGNALS

__all__ = ["AGGREGATES", "KindRule", "ObservationMap", "UnmatchedCounter"]

#: How a kind may be aggregated per node per window.
AGGREGATES = ("rate", "count", "mean", "last", "interval")
_KIND_KEYS = {"as", "scale", "attrs", "aggregate", "node", "also"}
_MAX_UNMATCHED_KINDS = 64


@dataclass(frozen=True)
class KindRule:
    """One target of a mapped kind: the schema kind or ``signal:<name>`` it becomes, and how."""

    target: str
    scale: float = 1.0
    attrs: tuple = ()
    aggregate: str | None = None
    node: str | None = None


class UnmatchedCounter:
    """Counts of events whose kind the map does not know, with bounded memory (64 kinds, then "other").

    Examples
    --------
    >>> c = UnmatchedCounter()
    >>> for kind in ("a", "b", "a"):
    ...     c.add(kind)
    >>> c.total, c.most_common()
    (3, [('a', 2), ('b', 1)])
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.total = 0

    def add(self, kind: str) -> None:
        """Count one unmatched event of ``kind``."""
        self.total += 1
        key = kind if (kind in self.counts or len(self.counts) < _MAX_UNMATCHED_KINDS) else "(other kinds)"
        self.counts[key] = self.counts.get(key, 0) + 1

    def most_common(self, n: int = 10) -> list[tuple[str, int]]:
        """The ``n`` most frequent unmatched kinds with their counts."""
        return sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))[:n]


def _problem(source: str, where: str, expected: str, got: Any) -> InvalidInputError:
    return InvalidInputError(f"observation map {source}: {where} must be {expected}; got {got!r}")


def _rule(source: str, kind: str, table: Any, allow_also: bool = True) -> list[KindRule]:
    where = f"[kinds.{kind}]"
    if not isinstance(table, Mapping):
        raise _problem(source, where, "a table with at least 'as'", table)
    unknown = sorted(set(table) - _KIND_KEYS)
    if unknown:
        raise _problem(source, f"{where} key {unknown[0]!r}", f"one of {', '.join(sorted(_KIND_KEYS))}", unknown[0])
    target = table.get("as")
    if not isinstance(target, str):
        raise _problem(source, f"{where} 'as'", "a schema kind or a model signal name (a string)", target)
    if target in KNOWN_KINDS:
        resolved = target
    elif target in SIGNALS:
        resolved = f"signal:{target}"
    else:
        raise _problem(source, f"{where} 'as'", f"a schema-1.0 kind ({', '.join(KNOWN_KINDS)}) or a model signal "
                                                f"({', '.join(SIGNALS)})", target)
    scale = table.get("scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale == scale or abs(scale) == float("inf"):
        raise _problem(source, f"{where} 'scale'", "a finite number", scale)
    attrs = table.get("attrs", {})
    if not isinstance(attrs, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in attrs.items()):
        raise _problem(source, f"{where} 'attrs'", "a table {their_name = \"schema_name\"}", attrs)
    aggregate = table.get("aggregate")
    if aggregate is not None and aggregate not in AGGREGATES:
        raise _problem(source, f"{where} 'aggregate'", f"one of {', '.join(AGGREGATES)}", aggregate)
    if aggregate is not None and resolved.startswith("signal:"):
        raise _problem(source, f"{where} 'aggregate'", "used with a schema kind only (a signal is on or off)", aggregate)
    node = table.get("node")
    if node is not None and not isinstance(node, str):
        raise _problem(source, f"{where} 'node'", "the name of an attr (a string)", node)
    rules = [KindRule(resolved, float(scale), tuple(attrs.items()), aggregate, node)]
    also = table.get("also", [])
    if also and not allow_also:
        raise _problem(source, f"{where} 'also'", "absent inside 'also'", also)
    if not isinstance(also, list):
        raise _problem(source, f"{where} 'also'", "a list of tables", also)
    for extra in also:
        rules += _rule(source, kind, extra, allow_also=False)
    return rules


class ObservationMap:
    """A log vocabulary -> schema-1.0 kinds and model signals (module docstring).

    Parameters
    ----------
    kinds : dict
        ``{their kind: [KindRule, ...]}``.
    replica : str, optional
        Regular expression that replica names match (default: every node sending replica telemetry).
    schema_kinds : bool
        Whether schema-1.0 kinds not in ``kinds`` pass through unchanged.
    source : str
        Where the map came from (for messages).
    """

    def __init__(self, kinds: Mapping[str, list[KindRule]] | None = None, *, replica: str | None = None,
                 schema_kinds: bool = True, source: str = "<map>") -> None:
        self.kinds = {k: list(v) for k, v in (kinds or {}).items()}
        self.replica = replica
        try:
            self.replica_pattern = None if replica is None else re.compile(replica)
        except re.error as error:
            raise _problem(source, "[nodes] replica", "a regular expression", f"{replica} ({error})") from None
        self.schema_kinds = bool(schema_kinds)
        self.source = source
        self.aggregated = any(rule.aggregate for rules in self.kinds.values() for rule in rules)

    @property
    def identity(self) -> bool:
        """Whether the map leaves schema-1.0 events unchanged (the default map)."""
        return not self.kinds and self.schema_kinds and self.replica is None

    @classmethod
    def default(cls) -> ObservationMap:
        """The schema-1.0 identity map.

        Examples
        --------
        >>> ObservationMap.default().identity
        True
        """
        return cls(source="default (schema 1.0)")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> ObservationMap:
        """Build a map from parsed TOML data; a bad entry raises naming its key and what was expected."""
        if not isinstance(data, Mapping):
            raise _problem(source, "the map", "a table", data)
        unknown = sorted(set(data) - {"kinds", "nodes", "options"})
        if unknown:
            raise _problem(source, f"top-level table {unknown[0]!r}", "one of kinds, nodes, options", unknown[0])
        kinds = data.get("kinds", {})
        if not isinstance(kinds, Mapping):
            raise _problem(source, "[kinds]", "a table of kinds", kinds)
        nodes = data.get("nodes", {})
        if not isinstance(nodes, Mapping) or set(nodes) - {"replica"}:
            raise _problem(source, "[nodes]", "a table with only 'replica'", dict(nodes) if isinstance(nodes, Mapping)
                           else nodes)
        replica = nodes.get("replica")
        if replica is not None and not isinstance(replica, str):
            raise _problem(source, "[nodes] replica", "a regular expression (a string)", replica)
        options = data.get("options", {})
        if not isinstance(options, Mapping) or set(options) - {"schema_kinds"}:
            raise _problem(source, "[options]", "a table with only 'schema_kinds'", options)
        schema_kinds = options.get("schema_kinds", True)
        if not isinstance(schema_kinds, bool):
            raise _problem(source, "[options] schema_kinds", "true or false", schema_kinds)
        rules = {str(kind): _rule(source, str(kind), table) for kind, table in kinds.items()}
        return cls(rules, replica=replica, schema_kinds=schema_kinds, source=source)

    @classmethod
    def from_toml(cls, text: str, source: str = "<toml>") -> ObservationMap:
        """Parse a map from TOML text."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise InvalidInputError(f"observation map {source} is not valid TOML: {error}") from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: Any) -> ObservationMap:
        """Read a map from a TOML file (or a shipped map's name, such as ``"plenum"``).

        Examples
        --------
        >>> ObservationMap.load("plenum").replica
        '^Node\\\\d+$'
        """
        if isinstance(path, str) and "/" not in path and not path.endswith(".toml"):
            return cls.builtin(path)
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as error:
            raise InvalidInputError(f"cannot read observation map {file}: {error.strerror or error}") from None
        return cls.from_toml(text, str(file))

    @classmethod
    def builtin(cls, name: str) -> ObservationMap:
        """A map shipped in ``bayes_defense/data/maps`` (``"plenum"``)."""
        from importlib import resources

        maps = resources.files("bayes_defense") / "data" / "maps"
        resource = maps / f"{name}.toml"
        if not resource.is_file():
            shipped = sorted(p.name[:-5] for p in maps.iterdir() if p.name.endswith(".toml"))
            raise InvalidInputError(f"no shipped observation map {name!r}; shipped: {', '.join(shipped)}; "
                                    "or give a path to a .toml file")
        return cls.from_toml(resource.read_text(encoding="utf-8"), f"{name}.toml (shipped)")

    def translate(self, kind: str, node: str, value: float | None, attrs: Mapping) -> list[tuple] | None:
        """The event in the model's vocabulary: ``[(kind, node, value, attrs, aggregate), ...]``, None if unmatched.

        ``aggregate`` is None for an event taken as it is, or how its window aggregates it.
        """
        rules = self.kinds.get(kind)
        if rules is None:
            if self.schema_kinds and kind in KNOWN_KINDS:
                return [(kind, node, value, attrs, None)]
            return None
        out = []
        for rule in rules:
            new_attrs = dict(attrs)
            for theirs, ours in rule.attrs:
                if theirs in new_attrs:
                    new_attrs[ours] = new_attrs.pop(theirs)
            target = node
            if rule.node is not None:
                named = attrs.get(rule.node)
                # An event naming no node is evidence about an unknown one (the unattributed row).
                target = named if isinstance(named, str) and named else ""
            scaled = None if value is None else value * rule.scale
            out.append((rule.target, target, scaled, new_attrs, rule.aggregate))
        return out

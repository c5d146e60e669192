"""The package's module graph has no import cycles, top-level or inside functions."""

import ast
import importlib.util
from pathlib import Path

import networkx as nx

import bayes_defense

ROOT = Path(bayes_defense.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def import_graph() -> nx.DiGraph:
    """Edges from each package module to every package module it imports, wherever the import stands."""
    graph = nx.DiGraph()
    for path in ROOT.rglob("*.py"):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph.add_node(name)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.append(full if _is_module(full) else base)
            for target in targets:
                if target.startswith("bayes_defense") and target != name:
                    graph.add_edge(name, target)
    return graph


def test_the_import_graph_walker_sees_a_cycle():
    graph = nx.DiGraph([("a", "b"), ("b", "a")])
    assert list(nx.simple_cycles(graph))


def test_no_import_cycles_in_the_package():
    graph = import_graph()
    assert graph.number_of_edges() > 50   # the walker found the package's imports
    cycles = sorted(sorted(cycle) for cycle in nx.simple_cycles(graph))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles[:10])

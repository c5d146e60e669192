"""asv suite for the backend comparison in papers/backends.md: every engine in one run.

Each of the package's backends, ChiRho and pgmpy answer the same query on the
generated SCMs of :mod:`benchmarks.common` (two families, 5, 20 and 50
nodes): ``time_query`` for its time and ``track_abs_error`` for its distance
from the exact or closed-form answer. pgmpy answers interventional queries on
the binary family only, by graph surgery (the intervened node's parents cut,
its table a point mass) and variable elimination, as the style guide asks
(pgmpy's ``CausalInference.query`` is wrong when evidence lies outside the
adjustment set). Combinations an engine cannot answer raise
``NotImplementedError`` in ``setup``, which asv reports as skipped.
"""

from __future__ import annotations

import functools

from benchmarks import common

ENGINES = tuple(common.BACKENDS) + ("chirho", "pgmpy")
KINDS = ("interventional", "counterfactual")


@functools.cache
def _surgery_network(family: str, nodes: int):
    """The binary SCM as a pgmpy network with the interventional case's do applied by surgery."""
    from pgmpy.factors.discrete import TabularCPD

    from bayes_defense.causal.pgmpy_interop import to_pgmpy

    scm = common.get_scm(family, nodes)
    network = to_pgmpy(scm.model).copy()
    for name, value in scm.interventional["do"].items():
        for parent in list(network.get_parents(name)):
            network.remove_edge(parent, name)
        states = network.get_cpds(name).state_names[name]
        network.remove_cpds(network.get_cpds(name))
        network.add_cpds(TabularCPD(name, len(states), [[1.0 if s == int(value) else 0.0] for s in states],
                                    state_names={name: states}))
    network.check_model()
    return network


def pgmpy_answer(scm, kind: str) -> float:
    """P(query = 1 | do, evidence) by surgery and pgmpy's variable elimination."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pgmpy.inference warns about StructureScore at import
        from pgmpy.inference import VariableElimination

    spec = getattr(scm, kind)
    network = _surgery_network(scm.family, scm.nodes)
    evidence = {name: int(value) for name, value in spec["evidence"].items()}
    factor = VariableElimination(network).query([spec["query"]], evidence=evidence, show_progress=False)
    return float(factor.get_value(**{spec["query"]: 1}))


def answer(scm, kind: str, engine: str, seed: int = 0) -> float:
    """The engine's point answer to the case's query."""
    if engine == "chirho":
        return float(common.chirho_answer(scm, kind, seed=seed).mean)
    if engine == "pgmpy":
        return pgmpy_answer(scm, kind)
    return float(common.ask(scm, kind, engine, seed=seed).mean)


class Backends:
    """Time and absolute error of one query per engine, family, size and kind."""

    params = [list(ENGINES), list(common.FAMILIES), list(common.SIZES), list(KINDS)]
    param_names = ["engine", "family", "nodes", "kind"]
    timeout = 300
    repeat = (1, 5, 20.0)
    number = 1

    def setup(self, engine, family, nodes, kind):
        self.scm = common.get_scm(family, nodes)
        if engine == "chirho" and not common.chirho_available():
            raise NotImplementedError("chirho is not installed")
        if engine == "pgmpy" and (family != "binary" or kind != "interventional"):
            raise NotImplementedError("pgmpy answers interventional queries on discrete models only")
        if engine not in ("chirho", "pgmpy") and not common.supported(self.scm, kind, engine):
            raise NotImplementedError(f"{engine} cannot answer the {family} {kind} query")
        if engine not in ("svi", "nuts"):
            answer(self.scm, kind, engine)  # compile and cache outside the timed region

    def time_query(self, engine, family, nodes, kind):
        answer(self.scm, kind, engine)

    def track_abs_error(self, engine, family, nodes, kind):
        return abs(answer(self.scm, kind, engine, seed=1) - common.oracle(family, nodes, kind))

    track_abs_error.unit = "absolute error"

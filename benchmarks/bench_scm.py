"""asv benchmarks of users' own SCMs: from_graph + bd.fit, and bd.explain on a continuous outcome.

Graphs of 10, 50 and 200 nodes (each node 1 to 3 parents among earlier ones,
fixed seed) with linear-Gaussian truth. ``FitSCM`` times building the model
with ``from_graph`` and fitting it to 10,000 rows (``bd.fit``, the Laplace
fit, which for a fully observed table is computed node by node in closed
form, 200 posterior draws); ``ExplainSCM`` times one explanation of the node
with the most ancestors after a fault injected at one of them, on the model
with the true mechanisms (``point``) and on a fitted model with 10 parameter
draws (``fitted``, parameters drawn around the truth so that setup does not
fit). ``track_top1`` records whether the injected node came first.

Run ``python -m benchmarks.bench_scm`` for the median timings without asv.
"""

from __future__ import annotations

import functools
import time
import warnings

import networkx as nx
import numpy as np
import torch

SIZES = (10, 50, 200)
ROWS = 10_000


@functools.cache
def case(nodes: int):
    """(GraphSCM, true parameters, outcome, injected cause) for a graph of ``nodes`` nodes."""
    import bayes_defense as bd

    rng = np.random.default_rng(nodes)
    graph = nx.DiGraph()
    names = [f"v{i:03d}" for i in range(nodes)]
    graph.add_nodes_from(names)
    for j in range(1, nodes):
        for i in rng.choice(j, size=int(min(j, rng.integers(1, 4))), replace=False):
            graph.add_edge(names[i], names[j])
    scm = bd.models.from_graph(graph)
    parameters = {}
    for name in scm.nodes:
        size = len(scm.coefficient_names(name))
        weights = rng.uniform(0.5, 1.2, size=size) * rng.choice([-1.0, 1.0], size=size) / np.sqrt(max(size - 1, 1))
        weights[0] = rng.normal()
        parameters[f"{name}.coefficients"] = torch.tensor(weights, dtype=torch.float32)
        parameters[f"{name}.scale"] = torch.tensor(float(rng.uniform(0.5, 1.5)))
    outcome = max(scm.nodes, key=lambda v: (len(nx.ancestors(graph, v)), v))
    cause = sorted(nx.ancestors(graph, outcome))[len(nx.ancestors(graph, outcome)) // 2]
    return scm, parameters, outcome, cause


def fitted_model(nodes: int, draws: int = 10):
    """A fitted-model stand-in: the truth plus posterior-sized perturbations, as ``posterior.model()`` builds."""
    from bayes_defense.fitting.scm import FittedSCM

    scm, parameters, _, _ = case(nodes)
    rng = np.random.default_rng(7)
    samples = [{k: v.numpy() + (0.01 * rng.normal(size=v.shape) if k.endswith("coefficients") else 0.0)
                for k, v in parameters.items()} for _ in range(draws)]
    mean = {k: v.numpy() for k, v in parameters.items()}
    return FittedSCM(scm, mean, samples)


class FitSCM:
    """from_graph + bd.fit on 10,000 rows."""

    params = [list(SIZES)]
    param_names = ["nodes"]
    # CPU time: on a shared machine wall time measures the other load too.
    timer = time.process_time
    timeout = 1800
    repeat = (1, 1, 1.0)
    number = 1

    def setup(self, nodes):
        scm, parameters, _, _ = case(nodes)
        self.table = scm.simulate(ROWS, parameters, seed=0)
        self.graph = scm.graph()

    def time_from_graph_and_fit(self, nodes):
        import bayes_defense as bd

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scm = bd.models.from_graph(self.graph)
            bd.fit(scm, self.table, num_samples=200, progress=False)


class ExplainSCM:
    """bd.explain on the node with the most ancestors after an injected fault."""

    params = [list(SIZES), ["point", "fitted"]]
    param_names = ["nodes", "model"]
    timer = time.process_time
    timeout = 600

    def setup(self, nodes, model):
        scm, parameters, outcome, cause = case(nodes)
        self.model = scm.with_parameters(parameters) if model == "point" else fitted_model(nodes)
        self.incident = scm.simulate(1, parameters, shift={cause: 8.0}, seed=1).iloc[0].to_dict()
        self.outcome, self.cause = outcome, cause
        self.explain()  # warm: model tracing is cached per model object

    def explain(self):
        import bayes_defense as bd

        return bd.explain(self.model, self.incident, self.outcome)

    def time_explain(self, nodes, model):
        self.explain()

    def track_top1(self, nodes, model):
        return float(self.explain().top == self.cause)


def main():
    for nodes in SIZES:
        for model in ("point", "fitted"):
            bench = ExplainSCM()
            bench.setup(nodes, model)
            times, cpu = [], []
            for _ in range(5):
                started, started_cpu = time.perf_counter(), time.process_time()
                bench.time_explain(nodes, model)
                times.append(time.perf_counter() - started)
                cpu.append(time.process_time() - started_cpu)
            # CPU time beside wall time: on a shared machine the wall time measures the other load too.
            print(f"explain {nodes:4d} nodes {model:7s}: {1000 * np.median(times):8.1f} ms wall, "
                  f"{1000 * np.median(cpu):8.1f} ms CPU, top-1 {bench.track_top1(nodes, model):.0f}")


if __name__ == "__main__":
    main()

"""asv: exact queries on bnlearn networks shipped inside pgmpy (alarm, hepar2, andes), cold and warm.

One seeded interventional query with evidence per network,
``P(Q = q | do(X = x), E = e)``, its values taken from one forward sample
of the network (positive probability), and one counterfactual (X set to
another value than its factual one, Q downstream of X):

- ``time_cold_*``: the first query on a model object that no query has seen
  (it traces the model, compiles the tables, prunes and plans);
- ``time_warm_*``: the same query again on a compiled model;
- ``time_pgmpy_surgery_ve``: pgmpy's graph surgery plus variable
  elimination on the same query (its whole modify-and-eliminate);
- ``track_abs_error``: our answer against pgmpy's, on the same normalised
  tables.

Times are CPU time of this process (``time.process_time``), as in
``bench_models``: the machine is shared. Networks are parsed by pgmpy's BIF
reader in ``setup`` (not timed). Run ``python -m benchmarks.bench_exact_networks``
for the medians without asv.
"""

from __future__ import annotations

import gzip
import os
import statistics
import time
import warnings

import numpy

NETWORKS = ["alarm", "hepar2", "andes"]
_PARSED: dict = {}


def _pgmpy():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgmpy
        from pgmpy.factors.discrete import TabularCPD
        from pgmpy.inference import VariableElimination
        from pgmpy.readwrite import BIFReader
    return pgmpy, TabularCPD, VariableElimination, BIFReader


def network(name: str):
    """``(pgmpy network with normalised CPDs, TabularModel)`` of a shipped network, parsed once per process."""
    if name not in _PARSED:
        from bayes_defense.causal.pgmpy_interop import from_pgmpy

        pgmpy, _, _, BIFReader = _pgmpy()
        path = os.path.join(os.path.dirname(pgmpy.__file__), "utils", "example_models", f"{name}.bif.gz")
        if not os.path.exists(path):
            raise NotImplementedError(f"pgmpy does not ship {name}.bif.gz")
        with gzip.open(path, "rt") as file, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = BIFReader(string=file.read()).get_model()
        model = from_pgmpy(parsed)
        for cpd in parsed.get_cpds():
            cpd.normalize(inplace=True)
        _PARSED[name] = (parsed, model)
    return _PARSED[name]


def fresh(model):
    from bayes_defense.causal.pgmpy_interop import TabularModel

    return TabularModel(model.variables, model.parents, model.state_names, model.tables)


def queries(model, seed: int = 0):
    """The interventional and counterfactual query asked of ``model``: ``(do, evidence, query)`` each."""
    from bayes_defense.causal.structure import model_info
    from bayes_defense.inference.exact import compile_discrete

    rng = numpy.random.default_rng(seed)
    values = {}
    for name in model.variables:
        row = model.tables[name][tuple(values[p] for p in model.parents[name])].numpy()
        values[name] = int(rng.choice(len(row), p=row / row.sum()))
    names = model.variables
    chosen = rng.choice(len(names), size=5, replace=False)
    interventional = ({names[chosen[0]]: values[names[chosen[0]]]},
                      {names[i]: values[names[i]] for i in chosen[2:]}, {names[chosen[1]]: 0})
    tables = compile_discrete(model_info(fresh(model)), fresh(model))
    cause = next(v for v in names if len(tables.descendants({v})) > 3)
    effect = sorted(tables.descendants({cause}) - {cause}, key=names.index)[-1]
    k = len(model.state_names[cause])
    counterfactual = ({cause: (values[cause] + 1) % k}, {cause: values[cause], names[chosen[2]]: values[names[chosen[2]]]},
                      {effect: values[effect]})
    return interventional, counterfactual


def surgery(parsed, model, do, evidence, query_site):
    _, TabularCPD, VariableElimination, _ = _pgmpy()
    states = model.state_names
    mutilated = parsed.copy()
    for variable, k in do.items():
        old = mutilated.get_cpds(variable)
        mutilated.remove_cpds(old)
        mutilated.remove_edges_from([(parent, variable) for parent in list(mutilated.predecessors(variable))])
        mutilated.add_cpds(TabularCPD(variable, len(states[variable]),
                                      [[1.0 if j == k else 0.0] for j in range(len(states[variable]))],
                                      state_names={variable: states[variable]}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        factor = VariableElimination(mutilated).query([query_site], evidence={v: states[v][k] for v, k in evidence.items()},
                                                      show_progress=False)
    return factor.get_value(**{query_site: states[query_site][0]})


class ExactNetworks:
    params = [NETWORKS]
    param_names = ["network"]
    timeout = 600
    timer = time.process_time

    def setup(self, name):
        import torch

        import bayes_defense as bd

        torch.set_num_threads(1)
        self.bd = bd
        self.parsed, self.model = network(name)
        self.interventional, self.counterfactual = queries(self.model)
        self.compiled = fresh(self.model)
        self.ask_interventional(self.compiled)
        self.ask_counterfactual(self.compiled)

    def ask_interventional(self, model):
        do, evidence, query = self.interventional
        return self.bd.intervene(model, do, query, evidence=evidence, backend="exact")

    def ask_counterfactual(self, model):
        do, evidence, query = self.counterfactual
        return self.bd.counterfactual(model, evidence, do, query, backend="exact")

    def time_cold_interventional(self, name):
        self.ask_interventional(fresh(self.model))

    def time_warm_interventional(self, name):
        self.ask_interventional(self.compiled)

    def time_cold_counterfactual(self, name):
        self.ask_counterfactual(fresh(self.model))

    def time_warm_counterfactual(self, name):
        self.ask_counterfactual(self.compiled)

    def time_pgmpy_surgery_ve(self, name):
        do, evidence, query = self.interventional
        surgery(self.parsed, self.model, do, evidence, next(iter(query)))

    def track_abs_error(self, name):
        do, evidence, query = self.interventional
        return abs(self.ask_interventional(self.compiled).mean
                   - surgery(self.parsed, self.model, do, evidence, next(iter(query))))

    track_abs_error.unit = "absolute error"


def main() -> None:
    """Print median CPU milliseconds of each timing (15 runs, cold ones on fresh model objects)."""
    for name in NETWORKS:
        case = ExactNetworks()
        case.setup(name)
        line = [name]
        for method in ("time_cold_interventional", "time_warm_interventional", "time_pgmpy_surgery_ve",
                       "time_cold_counterfactual", "time_warm_counterfactual"):
            runs = []
            for _ in range(15):
                start = time.process_time()
                getattr(case, method)(name)
                runs.append(time.process_time() - start)
            line.append(f"{method[5:]} {statistics.median(runs) * 1e3:.2f} ms")
        line.append(f"|error| {case.track_abs_error(name):.1e}")
        print(", ".join(line), flush=True)


if __name__ == "__main__":
    main()

"""asv: the public queries with ``backend="auto"`` on ``bd.models.cluster(n)`` (the cluster engine backend).

``auto`` must pick the ``cluster_engine`` backend; ``setup`` checks it. The
``cold`` benchmarks build a new model object inside the timed call (no
engine, no traced structure, no cached query shapes: the first query a
process asks of a model); the ``warm`` ones repeat a query already asked.
Times are CPU time of this process (``time.process_time``), as in
:mod:`bench_models`: the machine is shared. Targets at n = 50: cold at most
50 ms, warm at most 5 ms.
"""

import time

import bayes_defense as bd


def _evidence(n):
    return {"r0.msg_rate": 1, "r0.mac_fail": 1, **{f"r{k}.msg_rate": 0 for k in range(1, n)}}


def _fresh(n):
    # A new object each time: bd.models.cluster caches one model per configuration.
    return bd.models.ClusterModel(n, (n - 1) // 3, "indicators")


def _intervene(model, evidence):
    return bd.intervene(model, {"rate_limited": 1.0}, "flooding.success", evidence=evidence)


def _counterfactual(model, evidence):
    return bd.counterfactual(model, {**evidence, "throughput_low": 1}, {"flooding.precursor": 0.0},
                             {"throughput_low": 1.0})


def _necessity(model, evidence):
    return bd.probability_of_necessity(model, {"flooding.executing": 1.0}, {"flooding.executing": 0.0},
                                       {"throughput_low": 1.0}, evidence=evidence)


class ClusterAuto:
    params = [7, 20, 50]
    param_names = ["n_nodes"]
    timeout = 600
    timer = time.process_time

    def setup(self, n):
        self.model = bd.models.cluster(n)
        self.evidence = _evidence(n)
        for query in (_intervene, _counterfactual, _necessity):
            if query(self.model, self.evidence).backend != "cluster_engine":
                raise NotImplementedError("auto did not pick the cluster engine")

    def time_cold_intervene(self, n):
        _intervene(_fresh(n), self.evidence)

    def time_cold_counterfactual(self, n):
        _counterfactual(_fresh(n), self.evidence)

    def time_cold_necessity(self, n):
        _necessity(_fresh(n), self.evidence)

    def time_warm_intervene(self, n):
        _intervene(self.model, self.evidence)

    def time_warm_counterfactual(self, n):
        _counterfactual(self.model, self.evidence)

    def time_warm_necessity(self, n):
        _necessity(self.model, self.evidence)

"""asv: the cluster-model queries across cluster sizes (exact cluster engine)."""

import bayes_defense as bd


def _evidence(n):
    return {"r0.msg_rate": 1, "r0.mac_fail": 1, **{f"r{k}.msg_rate": 0 for k in range(1, n)}}


class ClusterQueries:
    params = [5, 10, 20, 50]
    param_names = ["n_nodes"]
    timeout = 600

    def setup(self, n):
        self.model = bd.models.cluster(n)
        self.evidence = _evidence(n)
        self.incident = {**self.evidence, "throughput_low": 1}
        self.time_precondition_check(n)
        self.time_success_probability(n)
        self.time_attack_simulation(n)
        self.time_countermeasure_selection(n)
        self.time_multistep_planning(n)
        self.time_explanation(n)

    def time_precondition_check(self, n):
        bd.models.precondition_check(self.model, self.evidence)

    def time_success_probability(self, n):
        bd.models.success_probability(self.model, self.evidence, countermeasures=["rate_limit"])

    def time_attack_simulation(self, n):
        bd.models.simulate_attack(self.model, self.incident, attack="flooding")

    def time_countermeasure_selection(self, n):
        bd.plan(self.model, self.evidence, max_steps=1)

    def time_multistep_planning(self, n):
        bd.plan(self.model, self.evidence, max_steps=3)

    def time_explanation(self, n):
        bd.explain(self.model, self.evidence, {"throughput_low": 1})

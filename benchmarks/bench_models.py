"""asv: the cluster-model queries across cluster sizes (exact cluster engine).

Times are CPU time of this process (``time.process_time``): the machine is
shared, and wall time there measures the other processes as much as ours.
``setup`` runs every query once, so the timings are of the warm path (the
engine and the per-query-shape pieces cached, as in a running defender); the
``cold`` benchmark times building the engine and answering once.
"""

import time

import numpy as np

import bayes_defense as bd
from bayes_defense.explain import explain
from bayes_defense.models.engine import Engine, engine
from bayes_defense.models.queries import countermeasure_do


def _evidence(n):
    return {"r0.msg_rate": 1, "r0.mac_fail": 1, **{f"r{k}.msg_rate": 0 for k in range(1, n)}}


class ClusterQueries:
    params = [5, 10, 20, 50]
    param_names = ["n_nodes"]
    timeout = 600
    timer = time.process_time

    def setup(self, n):
        self.model = bd.models.cluster(n)
        self.evidence = _evidence(n)
        self.incident = {**self.evidence, "throughput_low": 1}
        self.alert = {"flooding.precursor": 1.0, "flooding.executing": 1.0, "r1.faulty": 1.0}
        self.precondition_sites = [f"{a}.precondition" for a in self.model.structure.attack_names]
        self.success_sites = [f"{a}.success" for a in self.model.structure.attack_names]
        self.rate_limit = countermeasure_do(self.model, ["rate_limit"])
        for name in dir(self):
            if name.startswith("time_") and name != "time_cold_precondition_check":
                getattr(self, name)(n)

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
        explain(self.model, self.evidence, {"throughput_low": 1})

    def time_defender_recommendation(self, n):
        # The streaming defender's call: hard evidence for one hypothesis, one step.
        bd.plan(self.model, self.alert, max_steps=1, horizon=1)

    def time_cold_precondition_check(self, n):
        Engine(self.model).estimates([f"{a}.precondition" for a in bd.models.ATTACKS], evidence=self.evidence)

    # The engine alone, without the public queries (the private path the cluster questions once took):
    # the public calls above must not cost much more than these.
    def time_engine_precondition_check(self, n):
        engine(self.model).estimates(self.precondition_sites, evidence=self.evidence)

    def time_engine_success_probability(self, n):
        engine(self.model).estimates(self.success_sites, do=self.rate_limit, evidence=self.evidence)


class PosteriorDraws:
    """Queries on a model whose parameters are S posterior draws (a fitted model)."""

    params = [10, 100]
    param_names = ["draws"]
    timeout = 600
    timer = time.process_time

    def setup(self, draws):
        rng = np.random.default_rng(0)
        parameters = {"flooding.p_attempt": rng.beta(3, 7, draws), "telemetry.msg_rate.flooding": rng.beta(9, 1, draws),
                      "flooding.efficacy.rate_limit": rng.beta(9, 1, draws)}
        self.model = bd.models.cluster(20, parameters=parameters)
        self.evidence = _evidence(20)
        self.time_precondition_check(draws)
        self.time_countermeasure_selection(draws)

    def time_precondition_check(self, draws):
        bd.models.precondition_check(self.model, self.evidence)

    def time_countermeasure_selection(self, draws):
        bd.plan(self.model, self.evidence, max_steps=1)


class UserAttack:
    """The cluster queries with a ninth attack added by ``registry.add_attack`` (512 precursor configurations)."""

    params = [5, 20, 50]
    param_names = ["n_nodes"]
    timeout = 600
    timer = time.process_time

    def setup(self, n):
        from bayes_defense.models import registry

        registry.add_attack("ghost_votes", footing="backup_faulty", attacker_side={"ic_request": 0.95, "mac_fail": 0.9},
                            impacts={"liveness_lost": 0.8}, p_success=0.7, matched="leader_rotation")
        self.model = bd.models.cluster(n)
        self.evidence = {"r1.ic_request": 1, "r1.mac_fail": 1, **{f"r{k}.msg_rate": 0 for k in range(n)}}
        for name in dir(self):
            if name.startswith("time_"):
                getattr(self, name)(n)

    def teardown(self, n):
        from bayes_defense.models import registry

        registry.reset()

    def time_precondition_check(self, n):
        bd.models.precondition_check(self.model, self.evidence)

    def time_countermeasure_selection(self, n):
        bd.plan(self.model, self.evidence, max_steps=1)

    def time_explanation(self, n):
        explain(self.model, self.evidence, {"liveness_lost": 1})

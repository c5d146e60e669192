"""Batched public queries (a list of queries in one call): the same answers as separate calls."""

import pyro
import pyro.distributions as dist
import pytest

import bayes_defense as bd
from bayes_defense.errors import InvalidInputError

EVIDENCE = {"r0.msg_rate": 1.0, "r0.mac_fail": 1.0, "r1.duplicates": 0.0, "join_rate": 0.0}
PARAMETERS = {"flooding.p_attempt": [0.2, 0.5, 0.8], "telemetry.msg_rate.flooding": [0.9, 0.6, 0.3]}


def sprinkler():
    rain = pyro.sample("rain", dist.Bernoulli(0.3))
    sprinkler = pyro.sample("sprinkler", dist.Bernoulli(0.5 - 0.4 * rain))
    pyro.sample("wet", dist.Bernoulli(0.05 + 0.6 * rain + 0.3 * sprinkler))


def _same(batch, singles):
    assert len(batch) == len(singles)
    for got, want in zip(batch, singles, strict=True):
        assert got.backend == want.backend
        assert got.mean == pytest.approx(want.mean, abs=1e-12)
        assert got.lower == pytest.approx(want.lower, abs=1e-12)
        assert got.upper == pytest.approx(want.upper, abs=1e-12)


# Site marginals, events, a negated event's complement, a mean, a callable, and a query the cluster
# engine refuses (do on telemetry is refused per query, so one query of the batch goes elsewhere).
CLUSTER_QUERIES = ["flooding.success", "replay.precondition", {"throughput_low": 1.0},
                   {"flooding.executing": 1.0, "r0.faulty": 1.0}, "attacker", "attacker_inside",
                   lambda w: (w["attacker"] == 1) | (w["flooding.executing"] == 1)]


@pytest.mark.parametrize("parameters", [None, PARAMETERS], ids=["point", "draws"])
@pytest.mark.parametrize("do", [{}, {"rate_limited": 1.0}, {"attacker": 1.0}])
def test_cluster_batch_equals_single_queries(parameters, do):
    model = bd.models.cluster(4, parameters=parameters)
    batch = bd.intervene(model, do, CLUSTER_QUERIES, evidence=EVIDENCE)
    singles = [bd.intervene(model, do, q, evidence=EVIDENCE) for q in CLUSTER_QUERIES]
    _same(batch, singles)
    assert {e.backend for e in batch} == {"cluster_engine"}
    for estimate in batch[:4]:
        assert 0.0 <= estimate.lower <= estimate.mean <= estimate.upper <= 1.0


def test_cluster_batch_agrees_with_the_exact_backend():
    model = bd.models.cluster(4, parameters=PARAMETERS)
    queries = CLUSTER_QUERIES[:6]
    fast = bd.intervene(model, {"rate_limited": 1.0}, queries, evidence=EVIDENCE)
    exact = bd.intervene(model, {"rate_limited": 1.0}, queries, evidence=EVIDENCE, backend="exact")
    for got, want in zip(fast, exact, strict=True):
        assert want.backend == "exact"
        assert got.mean == pytest.approx(want.mean, abs=1e-9)


def test_counterfactual_batch_equals_single_queries():
    model = bd.models.cluster(4, parameters=PARAMETERS)
    evidence = {**EVIDENCE, "throughput_low": 1.0}
    queries = [{"throughput_low": 1.0}, {"latency_high": 1.0}, {"liveness_lost": 0.0}]
    batch = bd.counterfactual(model, evidence, {"flooding.precursor": 0.0}, queries)
    _same(batch, [bd.counterfactual(model, evidence, {"flooding.precursor": 0.0}, q) for q in queries])


def test_auto_sends_each_query_where_it_would_go_alone():
    model = bd.models.cluster(4)
    # The engine does not answer counterfactual queries on precursors; exact does.
    queries = [{"throughput_low": 1.0}, {"flooding.precursor": 1.0}]
    evidence = {**EVIDENCE, "throughput_low": 1.0}
    batch = bd.counterfactual(model, evidence, {"rate_limited": 1.0}, queries)
    assert [e.backend for e in batch] == ["cluster_engine", "exact"]
    _same(batch, [bd.counterfactual(model, evidence, {"rate_limited": 1.0}, q) for q in queries])


def test_generic_backends_answer_a_batch_one_by_one():
    batch = bd.intervene(sprinkler, {"sprinkler": 1.0}, ["rain", {"wet": 1.0}, "wet"], evidence={"wet": 1.0})
    singles = [bd.intervene(sprinkler, {"sprinkler": 1.0}, q, evidence={"wet": 1.0}) for q in ("rain", {"wet": 1.0},
                                                                                                "wet")]
    _same(batch, singles)
    sampled = bd.intervene(sprinkler, {}, ["rain", "wet"], backend="importance", seed=3, num_samples=4000)
    again = bd.intervene(sprinkler, {}, ["rain", "wet"], backend="importance", seed=3, num_samples=4000)
    assert [e.mean for e in sampled] == [e.mean for e in again]
    # P(wet) = 0.05 + 0.6 * 0.3 + 0.3 * (0.3 * 0.1 + 0.7 * 0.5) = 0.344; 5 standard errors of 4000 draws.
    assert sampled[1].mean == pytest.approx(0.344, abs=5 * (0.344 * 0.656 / 4000) ** 0.5)


def test_a_one_query_list_gives_a_list_and_an_empty_one_is_refused():
    model = bd.models.cluster(4)
    (one,) = bd.intervene(model, {}, ["flooding.success"])
    assert one.mean == pytest.approx(bd.intervene(model, {}, "flooding.success").mean, abs=1e-15)
    with pytest.raises(InvalidInputError, match="empty list"):
        bd.intervene(model, {}, [])
    with pytest.raises(bd.UnknownSiteError):
        bd.intervene(model, {}, ["flooding.success", "no_such_site"])


def test_the_cluster_queries_answer_as_single_queries_would():
    model = bd.models.cluster(5)
    checks = bd.models.precondition_check(model, EVIDENCE)
    for attack, estimate in checks.items():
        assert estimate.mean == pytest.approx(bd.intervene(model, {}, f"{attack}.precondition",
                                                           evidence=EVIDENCE).mean, abs=1e-12)
    success = bd.models.success_probability(model, EVIDENCE, countermeasures=["rate_limit"])
    for attack, estimate in success.items():
        assert estimate.mean == pytest.approx(bd.intervene(model, {"rate_limited": 1.0}, f"{attack}.success",
                                                           evidence=EVIDENCE).mean, abs=1e-12)


class _TwoDraws:
    """A fitted SCM as the queries see one (``posterior.model()``): a model per parameter draw."""

    def __init__(self):
        def draw(p):
            def model():
                rain = pyro.sample("rain", dist.Bernoulli(p))
                pyro.sample("wet", dist.Bernoulli(0.05 + 0.6 * rain))
            return model

        self.parameter_models = [draw(0.2), draw(0.4)]

    def __call__(self):
        return self.parameter_models[0]()


def test_a_fitted_model_answers_a_batch_draw_by_draw():
    model = _TwoDraws()
    batch = bd.intervene(model, {}, ["rain", {"wet": 1.0}], evidence=None)
    _same(batch, [bd.intervene(model, {}, q) for q in ("rain", {"wet": 1.0})])
    assert batch[0].mean == pytest.approx(0.3, abs=1e-12)
    assert batch[0].lower < batch[0].mean < batch[0].upper

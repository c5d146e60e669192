"""Tests of the streaming defender: detection, bounds, bad input, checkpoints."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bayes_defense.sim import AttackSpec, FaultSpec, Scenario, run_to_events
from bayes_defense.stream import Event
from bayes_defense.stream.scored import ATTACK_HYPOTHESES, ScoredDefender

DURATION = 300.0


def _attack_stream(attack: str, seed: int) -> tuple[list[Event], AttackSpec]:
    spec = AttackSpec(attack, start=200.0, precursor=90.0, duration=60.0, intensity=1.0)
    scenario = Scenario(nodes=4, duration=DURATION, seed=seed, attacks=[spec])
    return list(run_to_events(scenario)), spec


@pytest.fixture(scope="module")
def benign_stream() -> list[Event]:
    # Every benign fault the simulator has. The slow replica is a backup: a
    # slow primary looks exactly like a slow-leader precursor while it lasts
    # (see docs/log-schema.md), and the defender does raise slow_leader then.
    faults = [FaultSpec("crash", start=60.0, duration=20.0, node="r2"),
              FaultSpec("partition", start=100.0, duration=15.0),
              FaultSpec("load_spike", start=120.0, duration=30.0, node="client1"),
              FaultSpec("jitter", start=180.0, duration=30.0),
              FaultSpec("restart", start=230.0, duration=3.0, node="r3"),
              FaultSpec("slow", start=255.0, duration=30.0, node="r2")]
    return list(run_to_events(Scenario(nodes=4, duration=DURATION, seed=7, faults=faults)))


@pytest.mark.parametrize("attack", ATTACK_HYPOTHESES)
def test_blatant_attack_is_detected_and_named(attack):
    events, spec = _attack_stream(attack, seed=ATTACK_HYPOTHESES.index(attack) + 1)
    defender = ScoredDefender()
    defender.observe_batch(events)
    defender.flush()
    inside = [a for a in defender.alerts if spec.precursor_start <= a.ts <= spec.end]
    assert inside, f"no alert for {attack}"
    assert inside[0].attack == attack
    assert all(spec.precursor_start <= a.ts <= spec.end for a in defender.alerts)


def test_benign_look_alikes_raise_no_alert(benign_stream):
    primaries = {e.attrs.get("primary") for e in benign_stream if e.kind == "preprepare_interval" and e.ts >= 255}
    assert "r2" not in primaries  # the slow replica stays a backup in this run
    defender = ScoredDefender()
    defender.observe_batch(benign_stream)
    defender.flush()
    assert list(defender.alerts) == []


def _check_belief(belief) -> None:
    for name in ("precursor", "execution", "within_horizon", "active"):
        table = getattr(belief, name)
        assert np.all(np.isfinite(table))
        assert np.all((table >= 0.0) & (table <= 1.0))
        assert np.all(table[:, 1] <= table[:, 0] + 1e-12)
        assert np.all(table[:, 0] <= table[:, 2] + 1e-12)


def test_probabilities_bounded_at_every_step():
    events, _ = _attack_stream("flooding", seed=3)
    defender = ScoredDefender(ensemble=8)
    last = None
    for event in events:
        belief = defender.observe(event)
        if belief is not last:
            _check_belief(belief)
            last = belief
    estimate = belief.probability("flooding", "within_horizon")
    assert estimate.lower <= estimate.mean <= estimate.upper


@pytest.mark.parametrize("stream_name", ["benign", "flooding"])
def test_checkpoint_resume_is_identical(benign_stream, stream_name):
    import pickle

    stream = benign_stream if stream_name == "benign" else _attack_stream("flooding", seed=3)[0]
    whole = ScoredDefender(planner=None)
    first = ScoredDefender(planner=None)
    # Cut inside the attack's precursor for the flooding run (it starts at 110 s).
    cut = len(stream) // 2 if stream_name == "benign" else next(i for i, e in enumerate(stream) if e.ts > 150)
    first.observe_batch(stream[:cut])
    resumed = ScoredDefender(planner=None)
    # Through bytes, as a checkpoint file would be.
    resumed.load_state_dict(pickle.loads(pickle.dumps(first.state_dict())))
    for event in stream[:cut]:
        whole.observe(event)
    for event in stream[cut:]:
        a, b = whole.observe(event), resumed.observe(event)
        assert a.ts == b.ts
        for name in ("precursor", "execution", "within_horizon", "active"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert a.suspects == b.suspects and a.alerts == b.alerts
    assert whole.flush().alerts == resumed.flush().alerts
    assert list(whole.alerts) == list(resumed.alerts)
    if stream_name == "flooding":
        assert any(alert.attack == "flooding" for alert in whole.alerts)
    assert whole.accepted == resumed.accepted and whole.rejected == resumed.rejected


_BAD = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=5),
    st.dictionaries(st.text(max_size=4), st.one_of(st.none(), st.floats(), st.text(max_size=3)), max_size=4),
    st.builds(Event, st.sampled_from([math.nan, math.inf, -math.inf]), st.just("r0"), st.just("peer_churn"),
              st.just(0.0), st.just({})),
    st.builds(Event, st.just(5.0), st.just("r0"), st.just("peer_churn"),
              st.sampled_from([math.nan, math.inf]), st.just({})),
    st.builds(Event, st.just(5.0), st.just("r0"), st.text(min_size=1, max_size=8).filter(lambda k: k not in {"commit"}),
              st.just(1.0), st.just({})),
    st.builds(Event, st.floats(-100, 0.5), st.just("r1"), st.just("peer_churn"), st.just(0.0), st.just({})),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=st.lists(_BAD, min_size=1, max_size=6), where=st.integers(0, 300))
def test_bad_input_never_crashes_or_changes_belief(benign_stream, bad, where):
    defender = ScoredDefender(ensemble=4)
    good = benign_stream[:300 + where]
    defender.observe_batch(good[:-1])
    before = defender.observe(good[-1])
    accepted = defender.accepted
    state = defender.state_dict()
    for item in bad + [good[-1]]:  # the repeat is an exact duplicate
        belief = defender.observe(item)
        assert belief is before
    rejected = sum(defender.rejected.values())
    new_kinds = defender.accepted - accepted
    assert rejected + new_kinds == len(bad) + 1
    if new_kinds == 0:
        np.testing.assert_array_equal(defender.state_dict()["_log_alpha"], state["_log_alpha"])
    assert defender.accepted + rejected == len(good) + len(bad) + 1


def test_rejections_are_counted_by_reason():
    defender = ScoredDefender()
    defender.observe(Event(10.0, "r0", "peer_churn", 0.0, {}))
    defender.observe(Event(10.0, "r0", "peer_churn", 0.0, {}))
    defender.observe(Event(2.0, "r0", "peer_churn", 0.0, {}))
    defender.observe(Event(11.0, "r0", "no_such_kind", 0.0, {}))
    defender.observe(Event(11.0, "r0", "peer_churn", math.nan, {}))
    defender.observe("not an event")
    assert defender.rejected == {"duplicate": 1, "out_of_order": 1, "unknown_kind": 1, "non_finite": 1, "malformed": 1}
    assert defender.accepted == 1


def test_work_per_event_is_bounded(benign_stream):
    defender = ScoredDefender()
    defender.observe_batch(benign_stream)
    state = defender.state_dict()
    assert len(state["_seen"]) <= defender.duplicate_memory
    assert len(state["_digests"]) <= 512
    assert state["_log_alpha"].shape == (len(ATTACK_HYPOTHESES), 24, 3)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=st.lists(st.tuples(st.integers(0, 400), _BAD), min_size=1, max_size=8))
def test_batch_and_single_event_paths_agree(benign_stream, bad):
    # observe_batch inlines observe for speed; both must accept, reject and believe alike.
    stream = list(benign_stream[:400])
    stream.insert(200, stream[199])  # an exact duplicate
    for position, item in sorted(bad, key=lambda pair: -pair[0]):
        stream.insert(position, item)
    one, many = ScoredDefender(ensemble=4), ScoredDefender(ensemble=4)
    for item in stream:
        one.observe(item)
    many.observe_batch(stream)
    assert one.accepted == many.accepted and one.rejected == many.rejected
    assert one.accepted + sum(one.rejected.values()) == len(stream)
    assert one.rejected["duplicate"] >= 1
    np.testing.assert_array_equal(one.state_dict()["_log_alpha"], many.state_dict()["_log_alpha"])


class _Posterior:
    """The interface issue 6's fitted posterior offers."""

    def defender_parameters(self, draws, seed):
        from bayes_defense.stream.scored import default_parameters

        return default_parameters(draws, seed + 100)


def test_posterior_object_plugs_into_the_constructor(benign_stream):
    from bayes_defense.stream.scored import default_parameters

    by_object = ScoredDefender(_Posterior(), ensemble=6, seed=1)
    by_dict = ScoredDefender(default_parameters(6, 101))
    for name, value in by_dict.parameters.items():
        np.testing.assert_array_equal(by_object.parameters[name], value)
    a = by_object.observe_batch(benign_stream[:2000])
    b = by_dict.observe_batch(benign_stream[:2000])
    np.testing.assert_array_equal(a.active, b.active)


@pytest.mark.parametrize(("change", "message"), [
    (lambda p: p.pop("spread"), "lack spread"),
    (lambda p: p.update(extra=p["spread"]), "unknown keys extra"),
    (lambda p: p.update(spread=p["spread"][:, :2]), "share one shape"),
    (lambda p: p.update(spread=p["spread"][:3]), "must have shape (8, draws)"),
    (lambda p: p["spread"].__setitem__((0, 0), math.nan), "non-finite"),
    (lambda p: p["benign_to_precursor"].__setitem__((0, 0), 1.5), "must lie in (0, 1)"),
    (lambda p: p["score_precursor"].__setitem__((0, 0), -1.0), "must be positive"),
    (lambda p: p["quiet_execution"].__setitem__((0, 0), 1.0), "must lie in [0, 1)"),
])
def test_bad_parameters_are_refused_with_a_reason(change, message):
    from bayes_defense.errors import InvalidInputError
    from bayes_defense.stream.scored import default_parameters

    parameters = default_parameters(4)
    change(parameters)
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        ScoredDefender(parameters)
    with pytest.raises(InvalidInputError, match="defender_parameters"):
        ScoredDefender(object())


def test_quiet_windows_cost_at_most_their_log_probability(benign_stream):
    from bayes_defense.stream.scored import default_parameters

    # Seven-key dictionaries (written before quiet windows existed) mean quiet = 0: the same filter.
    parameters = default_parameters(4, 3)
    old = {k: v for k, v in parameters.items() if not k.startswith("quiet_")}
    a = ScoredDefender(parameters).observe_batch(benign_stream[:3000])
    b = ScoredDefender(old).observe_batch(benign_stream[:3000])
    np.testing.assert_array_equal(a.active, b.active)

    class Fixed(ScoredDefender):
        def _evidence(self):
            return np.zeros(8), {}

    # A window with score 0 against phase k: the plain ratio is -mu^2 / (2 spread^2); with quiet
    # windows it is log(q + (1 - q) e^ratio), never below log(q).
    quiet = dict(parameters, quiet_precursor=np.full((8, 4), 0.3), quiet_execution=np.full((8, 4), 0.3))
    for params, floor in ((parameters, None), (quiet, math.log(0.3))):
        defender = Fixed(params)
        before = defender._log_alpha.copy()
        defender._current = 0
        defender._close_window()
        predicted = np.logaddexp.reduce(before[..., :, None] + defender._log_transition, axis=-2)
        step = (defender._log_alpha - predicted)
        ratio = (step[..., 1:] - step[..., :1])  # evidence for phases 1, 2 against benign
        mu = np.stack([params["score_precursor"], params["score_execution"]], -1)
        plain = np.maximum(-mu * mu / (2 * params["spread"][..., None] ** 2), -4.0)
        if floor is None:
            np.testing.assert_allclose(ratio, plain, atol=1e-9)
        else:
            expected = np.log(0.3 + 0.7 * np.exp(-mu * mu / (2 * params["spread"][..., None] ** 2)))
            np.testing.assert_allclose(ratio, np.maximum(expected, -4.0), atol=1e-9)
            assert (ratio >= floor - 1e-12).all()


def test_alert_countermeasure_is_the_planners_choice():
    import bayes_defense as bd
    from bayes_defense.stream.recommend import evidence_for, recommend, role_of

    events, spec = _attack_stream("flooding", seed=3)
    defender = ScoredDefender()
    defender.observe_batch(events)
    defender.flush()
    alert = defender.alerts[0]
    assert alert.attack == "flooding"
    role = role_of(alert.nodes, defender._primary, defender._replicas)
    assert role == "backup"  # the flooder is a backup replica in this scenario
    best = bd.plan(bd.models.cluster(4), evidence_for("flooding", role, alert.phase), max_steps=1, horizon=1).best
    assert alert.countermeasure == "+".join(best.countermeasures)
    # Every hypothesis of a belief gets a recommendation; repeated reads are served from the cache.
    belief = defender.belief
    before = recommend.cache_info().hits
    assert set(belief.countermeasures) == set(ATTACK_HYPOTHESES)
    first = dict(belief.countermeasures)
    assert dict(belief.countermeasures) == first
    assert recommend.cache_info().hits >= before + len(ATTACK_HYPOTHESES)
    assert first["sybil"] == "admission_control"


def test_per_event_path_never_imports_torch():
    code = (
        "import sys\n"
        "from bayes_defense.sim import Scenario, run_to_events\n"
        "from bayes_defense.stream.defender import StreamingDefender\n"
        "d = StreamingDefender()\n"
        "belief = d.observe_batch(run_to_events(Scenario(nodes=4, duration=60.0, seed=2)))\n"
        "assert d.accepted > 1000 and not d.alerts, (d.accepted, d.alerts)\n"
        "assert 'torch' not in sys.modules and 'pyro' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_state_stays_bounded_when_node_names_never_repeat():
    defender = ScoredDefender(ensemble=4)
    events = (Event(float(1 + k // 500), f"n{k}", kind, 1.0, {"source": f"s{k}", "peers": 3})
              for k in range(30_000) for kind in ("msg_rate_in", "peer_diversity", "source_rate_max"))
    defender.observe_batch(events)
    state = defender.state_dict()
    assert defender.accepted == 90_000
    assert len(state["_baselines"]) <= 8192
    assert len(state["_replicas"]) <= 100 and len(state["_peer_norm"]) <= 100 and len(state["_source"]) <= 100

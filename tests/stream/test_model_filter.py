"""The model filter: bounds at every step, checkpoints, explanations, look-alikes, user attacks, maps."""

from __future__ import annotations

import numpy as np
import pytest

from bayes_defense.errors import InvalidInputError
from bayes_defense.models import registry
from bayes_defense.sim import random_scenario
from bayes_defense.sim.engine import Simulation
from bayes_defense.stream import Event, evidence
from bayes_defense.stream.model_filter import ModelDefender
from bayes_defense.stream.obsmap import ObservationMap


@pytest.fixture(scope="module")
def replay_run():
    simulation = Simulation(random_scenario(7, nodes=4, duration=240.0, attacks=["replay"], faults=["jitter"],
                                            intensity=0.9))
    return list(simulation.events()), simulation.labels


@pytest.fixture(scope="module")
def fitted():
    """A signal model fitted on two other runs (seeds 5 and 6), as a user would run the defender."""
    from bayes_defense.fitting.signal_model import fit_signal_model

    runs = []
    for seed, attack in ((5, "replay"), (6, "flooding")):
        simulation = Simulation(random_scenario(seed, nodes=4, duration=240.0, attacks=[attack],
                                                faults=["jitter", "restart"], intensity=0.7))
        runs.append((list(simulation.events()), simulation.labels))
    return fit_signal_model(runs, num_samples=24, seed=0)


def _check_bands(belief) -> None:
    for what in ("precursor", "execution", "within_horizon", "active"):
        table = getattr(belief, what)
        mean, lower, upper = table[:, 0], table[:, 1], table[:, 2]
        assert np.all(np.isfinite(table)), what
        assert np.all((0.0 <= lower) & (lower <= mean) & (mean <= upper) & (upper <= 1.0)), what


def test_every_probability_is_bounded_at_every_step(replay_run):
    events, _ = replay_run
    defender = ModelDefender(ensemble=8, planner=None)
    last = None
    for event in events:
        belief = defender.observe(event)
        if belief is not last:
            _check_bands(belief)
            for alert in belief.alerts:
                assert 0.0 <= alert.lower <= alert.probability <= alert.upper <= 1.0
                for cause in alert.explanation:
                    assert 0.0 <= cause["lower"] <= cause["probability"] <= cause["upper"] <= 1.0
            last = belief
    _check_bands(defender.flush())
    assert defender.windows > 200


def test_replay_is_detected_and_explained(replay_run, fitted):
    events, labels = replay_run
    defender = ModelDefender(fitted, ensemble=8, planner=None)
    defender.observe_batch(events)
    defender.flush()
    label = labels[0]
    inside = [a for a in defender.alerts if label["precursor_start"] <= a.ts <= label["end"]]
    assert inside and inside[0].attack == "replay"
    record = inside[0].to_dict()
    assert record["explanation"][0]["cause"] == "replay"
    assert record["countermeasure"] == "trusted_component"


def test_checkpoint_and_resume_identical(replay_run, tmp_path):
    events, _ = replay_run
    whole = ModelDefender(ensemble=4, planner=None)
    whole.observe_batch(events)
    whole.flush()
    first = ModelDefender(ensemble=4, planner=None)
    half = len(events) // 2
    first.observe_batch(events[:half])
    first.save(tmp_path / "checkpoint.json")
    resumed = ModelDefender.load(tmp_path / "checkpoint.json", planner=None)
    resumed.observe_batch(events[half:])
    resumed.flush()
    assert [a.to_dict() for a in resumed.alerts] == [a.to_dict() for a in whole.alerts]
    np.testing.assert_array_equal(resumed.belief.active, whole.belief.active)
    np.testing.assert_array_equal(resumed._log_alpha, whole._log_alpha)


def test_bad_checkpoint_state_is_refused_and_leaves_the_defender_as_it_was(replay_run):
    events, _ = replay_run
    defender = ModelDefender(ensemble=2, planner=None)
    defender.observe_batch(events[:500])
    state = defender.state_dict()
    before = defender.state_dict()
    bad = dict(state, _log_alpha=np.zeros_like(state["_log_alpha"]))
    with pytest.raises(InvalidInputError, match="_log_alpha"):
        defender.load_state_dict(bad)
    with pytest.raises(InvalidInputError, match="missing keys"):
        defender.load_state_dict({k: v for k, v in state.items() if k != "log_faults"})
    after = defender.state_dict()
    np.testing.assert_array_equal(after["_log_alpha"], before["_log_alpha"])
    assert after["accepted"] == before["accepted"]


@pytest.mark.parametrize("seed", [41, 42])
def test_look_alike_faults_alone_raise_no_alert(seed, fitted):
    simulation = Simulation(random_scenario(seed, nodes=7, duration=600.0, attacks=[],
                                            faults=["crash", "partition", "slow", "load_spike", "jitter", "restart"]))
    defender = ModelDefender(fitted, ensemble=8, planner=None)
    defender.observe_batch(simulation.events())
    defender.flush()
    assert list(defender.alerts) == []


def _renamed(events):
    """The same run in another vocabulary: kinds, attr names and node names rewritten."""
    kinds = {"duplicate_messages": "dup_msgs", "stale_messages": "old_msgs", "preprepare_interval": "pp_gap_ms",
             "source_rate_max": "top_sender_rate", "view_change": "VC"}

    def node(name):
        return f"replica-{name[1:]}" if name[:1] == "r" and name[1:].isdigit() else name

    out = []
    for e in events:
        attrs = {key: node(value) if isinstance(value, str) else value for key, value in e.attrs.items()}
        value = e.value
        if e.kind == "preprepare_interval":
            attrs["leader"] = attrs.pop("primary")
            value = value * 1000.0
        out.append(Event(e.ts, node(e.node), kinds.get(e.kind, e.kind), value, attrs))
    return out


RENAMED_MAP = """
[kinds.dup_msgs]
as = "duplicate_messages"
[kinds.old_msgs]
as = "stale_messages"
[kinds.pp_gap_ms]
as = "preprepare_interval"
scale = 0.001
attrs = { leader = "primary" }
[kinds.top_sender_rate]
as = "source_rate_max"
[kinds.VC]
as = "view_change"
[nodes]
replica = '^replica-\\d+$'
"""


def test_renamed_vocabulary_gives_the_same_alerts(replay_run, fitted):
    events, _ = replay_run
    original = ModelDefender(fitted, ensemble=4, planner=None)
    original.observe_batch(events)
    original.flush()
    renamed = ModelDefender(fitted, ensemble=4, planner=None, observation_map=ObservationMap.from_toml(RENAMED_MAP))
    renamed.observe_batch(_renamed(events))
    renamed.flush()
    assert renamed.rejected == original.rejected
    expected = [(a.ts, a.attack, tuple(n.replace("r", "replica-", 1) for n in a.nodes), a.phase)
                for a in original.alerts]
    assert [(a.ts, a.attack, a.nodes, a.phase) for a in renamed.alerts] == expected
    assert expected
    np.testing.assert_allclose(renamed.belief.active, original.belief.active, rtol=0, atol=1e-9)


def test_unmatched_kinds_are_counted_with_bounded_memory():
    defender = ModelDefender(ensemble=2, planner=None, clock_confirm=1,
                             observation_map=ObservationMap.from_toml(RENAMED_MAP))
    for i in range(300):
        defender.observe(Event(float(i), "replica-1", f"kind{i % 100}", 1.0, {}))
    assert defender.rejected == {"unknown_kind": 300}
    assert defender.unmatched.total == 300 and len(defender.unmatched.counts) <= 65
    assert defender.unmatched.most_common(1)[0][1] >= 3


def test_user_attack_is_tracked_and_detected():
    registry.add_attack("vote_and_poison", footing="attacker_inside",
                        attacker_side={"vc_request": 0.999, "peer_in_degree": 0.999},
                        impacts={"liveness_lost": 0.5}, matched="expose_and_evict")
    try:
        simulation = Simulation(random_scenario(3, nodes=7, duration=400.0, attacks=[], faults=[]))
        events = list(simulation.events())
        # Its signals show from 250 s to 320 s: r2 asks for view changes and its peer table fills.
        extra = [Event(t + 0.5, "r2", "view_change", 1.0, {"view": 0}) for t in range(250, 320)]
        extra += [Event(t + 0.7, f"x{t}", "join", 1.0, {"prefix": "10.9", "role": "peer", "peer_of": "r2"})
                  for t in range(250, 320)]
        events = sorted(events + extra, key=lambda e: e.ts)
        # The catalogue's values as one parameter draw: the attack's own numbers, no fit.
        defender = ModelDefender(evidence.default_values(), planner=None)
        assert "vote_and_poison" in defender.attacks
        defender.observe_batch(events)
        defender.flush()
        alerts = [a for a in defender.alerts if 250 <= a.ts <= 330]
        assert alerts and alerts[0].attack == "vote_and_poison"
        assert alerts[0].nodes == ("r2",) and alerts[0].countermeasure == "expose_and_evict"
        assert 0.0 <= float(defender.belief.probability("vote_and_poison").mean) <= 1.0
    finally:
        registry.remove_attack("vote_and_poison")


def test_old_scored_posterior_is_refused_with_a_reason():
    class ScoredPosterior:
        def defender_parameters(self, draws, seed):
            return {}

    with pytest.raises(InvalidInputError, match="scored defender"):
        ModelDefender(ScoredPosterior())


def test_bad_maps_name_the_key_and_what_was_expected():
    with pytest.raises(InvalidInputError, match=r"\[kinds.x\] 'as' must be a schema-1.0 kind"):
        ObservationMap.from_toml('[kinds.x]\nas = "nothing"\n')
    with pytest.raises(InvalidInputError, match="'aggregate' must be one of rate"):
        ObservationMap.from_toml('[kinds.x]\nas = "msg_rate_in"\naggregate = "median"\n')
    with pytest.raises(InvalidInputError, match="key 'scal'"):
        ObservationMap.from_toml('[kinds.x]\nas = "msg_rate_in"\nscal = 2\n')
    with pytest.raises(InvalidInputError, match="not valid TOML"):
        ObservationMap.from_toml("[kinds.x\n")
    with pytest.raises(InvalidInputError, match="no shipped observation map 'nope'"):
        ObservationMap.load("nope")


def test_aggregate_rate_feeds_a_per_window_value():
    text = '[kinds.MSG]\nas = "msg_rate_in"\naggregate = "rate"\n'
    defender = ModelDefender(ensemble=2, planner=None, clock_confirm=1, window=2.0,
                             observation_map=ObservationMap.from_toml(text))
    seen = []
    original = defender._extractor.ingest

    def spy(ts, node, kind, value, attrs):
        seen.append((ts, node, kind, value))
        original(ts, node, kind, value, attrs)

    defender._extractor.ingest = spy
    for i in range(10):
        defender.observe(Event(0.1 + 0.1 * i, "n1", "MSG", 1.0, {}))
    defender.observe(Event(2.5, "n1", "MSG", 1.0, {}))
    assert seen == [(2.0, "n1", "msg_rate_in", 5.0)]


def test_checkpoint_with_a_bad_extractor_state_is_refused(replay_run):
    events, _ = replay_run
    defender = ModelDefender(ensemble=2, planner=None)
    defender.observe_batch(events[:2000])
    state = defender.state_dict()
    state["extractor"]["baselines"]["r0|x"] = ["not", "a", "number"]
    with pytest.raises(InvalidInputError, match="extractor baselines"):
        defender.load_state_dict(state)
    state = defender.state_dict()
    state["_fault_posterior"] = state["_fault_posterior"][:1]
    with pytest.raises(InvalidInputError, match="_fault_posterior"):
        defender.load_state_dict(state)


def test_checkpoint_of_another_signal_vocabulary_is_refused_with_a_reason(replay_run):
    events, _ = replay_run
    defender = ModelDefender(ensemble=2, planner=None)
    defender.observe_batch(events[:300])
    state = defender.state_dict()
    old = dict(state, signals=tuple(s for s in state["signals"] if s != "client_starved"))
    with pytest.raises(InvalidInputError, match="other signals.*adds client_starved.*without --resume"):
        defender.load_state_dict(old)
    with pytest.raises(InvalidInputError, match="other signals"):
        defender.load_state_dict({k: v for k, v in state.items() if k != "signals"})


def _warm(extractor, windows, extra=None):
    """Close ``windows`` quiet windows of four replicas and four clients; ``extra(w)`` adds events to window w."""
    out = []
    for w in range(windows):
        for r in ("r0", "r1", "r2", "r3"):
            extractor.ingest(w + 0.5, r, "preprepare_interval", 0.1, {"primary": "r0"})
            extractor.ingest(w + 0.5, r, "duplicate_messages", 0.0, {})
        for c in range(4):
            extractor.ingest(w + 0.6, f"client{c}", "request_latency", 0.075 + 0.001 * ((w + c) % 3), {})
        if extra is not None:
            extra(extractor, w)
        out.append(extractor.close())
    return out


def test_one_starved_client_shows_at_the_primary_and_a_common_slowdown_does_not():
    from bayes_defense.stream.signals import WARMUP_WINDOWS, SignalExtractor, signal_index

    column = signal_index("client_starved")
    extractor = SignalExtractor()
    quiet = _warm(extractor, WARMUP_WINDOWS + 10)
    assert all(w.values[0, column] == 0.0 for w in quiet[WARMUP_WINDOWS + 1:])
    extractor.ingest(40.5, "r0", "preprepare_interval", 0.1, {"primary": "r0"})
    for c in range(4):   # every client slower alike (jitter, a slow cluster): no one is starved
        extractor.ingest(40.6, f"client{c}", "request_latency", 0.3, {})
    assert extractor.close().values[0, column] == 0.0
    for c in range(4):   # one client's requests held by the primary
        extractor.ingest(41.6, f"client{c}", "request_latency", 0.3 if c == 3 else 0.075, {})
    window = extractor.close()
    assert window.values[window.primary, column] == 1.0 and window.primary == 0
    for c in range(4):
        extractor.ingest(42.6, f"client{c}", "throughput", 10.0, {})
    extractor.ingest(42.7, "r1", "request_stalled", 1.2, {"client": "client2"})   # one client stalls alone
    assert extractor.close().values[0, column] == 1.0
    for c in range(4):
        extractor.ingest(43.7, "r1", "request_stalled", 1.2, {"client": f"client{c}"})   # every client: no censor
    assert extractor.close().values[0, column] != 1.0


def test_join_rate_counts_joins_from_a_prefix_that_joined_shortly_before():
    from bayes_defense.stream.signals import (
        JOIN_MEMORY,
        WARMUP_WINDOWS,
        SignalExtractor,
        signal_index,
    )

    column = signal_index("join_rate")
    extractor = SignalExtractor()

    def diverse(ex, w):   # ordinary joins, every one from its own network
        ex.ingest(w + 0.7, f"client-x{w}", "join", 1.0, {"prefix": f"10.{w}.0.0/16", "role": "client"})

    windows = _warm(extractor, WARMUP_WINDOWS + 10, diverse)
    assert all(w.values[-1, column] == 0.0 for w in windows[WARMUP_WINDOWS:])
    extractor.ingest(40.7, "sybil-0", "join", 1.0, {"prefix": "203.0.0.0/24", "role": "client"})
    assert extractor.close().values[-1, column] == 0.0      # a first join from a prefix is ordinary
    extractor.ingest(41.7, "sybil-1", "join", 1.0, {"prefix": "203.0.0.0/24", "role": "client"})
    assert extractor.close().values[-1, column] == 1.0      # a second one shortly after is not
    extractor.ingest(42.0 + JOIN_MEMORY + 1.0, "late", "join", 1.0, {"prefix": "203.0.0.0/24", "role": "client"})
    assert extractor.close().values[-1, column] == 0.0      # remembered for JOIN_MEMORY seconds only


def test_a_view_change_the_cluster_joins_is_not_every_replicas_evidence():
    from bayes_defense.stream.signals import WARMUP_WINDOWS, SignalExtractor, signal_index

    column = signal_index("vc_request")
    extractor = SignalExtractor()
    _warm(extractor, WARMUP_WINDOWS + 5)
    for r in ("r0", "r1", "r2", "r3"):
        extractor.ingest(30.5, r, "preprepare_interval", 0.1, {"primary": "r0"})
        extractor.ingest(30.6, r, "view_change", 1.0, {"view": 0})
    assert np.all(extractor.close().values[:4, column] == 0.0)
    for r in ("r0", "r1", "r2", "r3"):
        extractor.ingest(31.4, r, "preprepare_interval", 0.1, {"primary": "r0"})
    for k in range(4):   # one replica asks again and again, alone
        extractor.ingest(31.5 + 0.1 * k, "r2", "view_change", 2.0, {"view": 1})
    window = extractor.close()
    assert window.values[2, column] == 1.0 and window.values[1, column] == 0.0


def test_alert_countermeasures_are_planned_with_the_defenders_own_parameters(monkeypatch):
    import bayes_defense as bd
    from bayes_defense.stream import recommend as planning

    defender = ModelDefender(ensemble=4)
    parameters = evidence.incident_parameters(defender.parameters, defender.attacks)
    assert defender._plan_parameters == planning.register_parameters(parameters)
    asked = []
    real_cluster = bd.models.cluster

    def cluster(n, parameters=None, **kwargs):
        asked.append(parameters)
        return real_cluster(n, parameters=parameters, **kwargs)

    planning.recommend.cache_clear()
    monkeypatch.setattr(bd.models, "cluster", cluster)
    choice = defender._plan("replay", "backup", "precursor", 7)
    assert choice and asked and set(asked[0]) == set(parameters)
    assert all(np.array_equal(asked[0][name], parameters[name]) for name in parameters)
    planning.recommend.cache_clear()

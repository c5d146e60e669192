"""Defender checkpoints: data (JSON), validated on load, no replayed alerts."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest

from bayes_defense.errors import InvalidInputError
from bayes_defense.sim import AttackSpec, Scenario, run_to_events
from bayes_defense.stream.checkpoint import MAX_ARRAY_ELEMENTS, decode, encode
from bayes_defense.stream.scored import ScoredDefender


@pytest.fixture(scope="module")
def stream():
    scenario = Scenario(nodes=4, duration=300.0, seed=7,
                        attacks=[AttackSpec("sybil", start=180.0, precursor=80.0, duration=60.0)])
    return list(run_to_events(scenario))


def _same(a, b):
    return a.ts == b.ts and all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("active", "execution"))


def test_save_load_resumes_identically_and_holds_no_pickle(tmp_path, stream):
    cut = len(stream) // 2
    whole, first = ScoredDefender(planner=None), ScoredDefender(planner=None)
    for event in stream[:cut]:
        first.observe(event)
        whole.observe(event)
    path = tmp_path / "defender.json"
    first.save(path)
    document = json.loads(path.read_text())  # strict JSON: parses, no NaN literals
    assert document["format"] == "bayes-defense-checkpoint" and "NaN" not in path.read_text()
    resumed = ScoredDefender.load(path, planner=None)
    assert _same(resumed.belief, whole.belief)
    for event in stream[cut:]:
        assert _same(whole.observe(event), resumed.observe(event))
    whole.flush()
    resumed.flush()
    assert [a.to_dict() for a in whole.pop_alerts()] == [a.to_dict() for a in resumed.pop_alerts()]
    assert whole.rejected == resumed.rejected and whole.accepted == resumed.accepted


def test_popped_alerts_are_not_replayed_and_pending_ones_are_kept(tmp_path, stream):
    defender = ScoredDefender(planner=None)
    defender.observe_batch(stream)
    defender.flush()
    raised = defender.pop_alerts()
    assert raised, "the sybil attack should raise an alert"
    defender.save(tmp_path / "popped.json")
    again = ScoredDefender.load(tmp_path / "popped.json", planner=None)
    assert again.pop_alerts() == [] and again.belief.alerts == ()
    pending = ScoredDefender(planner=None)
    pending.observe_batch(stream)
    pending.flush()
    pending.save(tmp_path / "pending.json")
    assert [a.to_dict() for a in ScoredDefender.load(tmp_path / "pending.json", planner=None).pop_alerts()] == \
        [a.to_dict() for a in raised]


def _state(**changes):
    defender = ScoredDefender(planner=None, clock_confirm=1)
    defender.observe_batch(run_to_events(Scenario(nodes=4, duration=60.0, seed=1)))
    state = defender.state_dict()
    state.update(changes)
    return state


@pytest.mark.parametrize(("change", "message"), [
    ({"threshold": 2.0}, "threshold must be a probability"),
    ({"windows": -1_000_000_000}, "windows must be a whole number"),
    ({"accepted": -1}, "accepted must be"),
    ({"window": -1.0}, "window must be"),
    ({"made_up": 1}, "unknown keys made_up"),
    ({"threshold": "0.8"}, "threshold must be of type float"),
    ({"_armed": [True] * 3}, "_armed, _confirm and _quiet"),
    ({"_confirm": [-1] * 8}, "_armed, _confirm and _quiet"),
    ({"confirm_windows": 0}, "confirm_windows must be a number of windows"),
    ({"rejected": {"malformed": -4}}, "rejected must count"),
    ({"rejected": {"invented_reason": 1}}, "rejected must count"),
])
def test_crafted_states_are_refused(change, message):
    defender = ScoredDefender(planner=None)
    before = defender.state_dict()
    with pytest.raises(InvalidInputError, match=message):
        defender.load_state_dict(_state(**change))
    after = defender.state_dict()
    assert after.keys() == before.keys() and after["accepted"] == before["accepted"]


def test_nan_in_the_filter_or_baselines_is_refused():
    state = _state()
    state["_log_alpha"][0, 0, 0] = math.nan
    with pytest.raises(InvalidInputError, match="_log_alpha"):
        ScoredDefender(planner=None).load_state_dict(state)
    state = _state()
    state["_log_alpha"] = state["_log_alpha"] + 1.0  # no longer a distribution
    with pytest.raises(InvalidInputError, match="sum to one"):
        ScoredDefender(planner=None).load_state_dict(state)
    state = _state()
    state["_peer_norm"] = {"r0": math.nan}
    with pytest.raises(InvalidInputError, match="non-finite"):
        ScoredDefender(planner=None).load_state_dict(state)
    state = _state()
    del state["_seen"]
    with pytest.raises(InvalidInputError, match="missing keys _seen"):
        ScoredDefender(planner=None).load_state_dict(state)


def _write(path, document):
    path.write_text(json.dumps(document))
    return path


def test_crafted_checkpoint_files_are_refused(tmp_path):
    good = tmp_path / "good.json"
    ScoredDefender(planner=None).save(good)
    document = json.loads(good.read_text())
    pickled = tmp_path / "state.pkl"
    pickled.write_bytes(pickle.dumps(ScoredDefender(planner=None).state_dict()))
    cases = {
        "not JSON": pickled,
        "not a bayes-defense checkpoint": _write(tmp_path / "a.json", {"state": {}}),
        "version": _write(tmp_path / "b.json", {**document, "version": 99}),
        "only classes of bayes_defense.stream": _write(tmp_path / "c.json", {**document, "state": {
            **document["state"], "accepted": {"__t": "object", "class": "os:system", "fields": {}}}}),
        "declares shape": _write(tmp_path / "d.json", {**document, "state": {**document["state"], "_log_alpha": {
            "__t": "ndarray", "dtype": "float64", "shape": [2, MAX_ARRAY_ELEMENTS], "data": []}}}),
        "dtype": _write(tmp_path / "e.json", {**document, "state": {**document["state"], "_log_alpha": {
            "__t": "ndarray", "dtype": "object", "shape": [1], "data": [1]}}}),
        "unknown tag": _write(tmp_path / "f.json", {**document, "state": {"x": {"__t": "pickle"}}}),
        "deeper than": _write(tmp_path / "g.json", {**document, "state": json.loads("[" * 200 + "]" * 200)}),
    }
    (tmp_path / "h.json").write_text('{"format": "bayes-defense-checkpoint"' + ", \"x\": [" * 5000 + "]" * 5000 + "}")
    cases["not JSON "] = tmp_path / "h.json"
    for message, path in cases.items():
        with pytest.raises(InvalidInputError, match=message.strip()):
            ScoredDefender.load(path, planner=None)


def test_encode_round_trips_the_containers_a_state_uses():
    from collections import OrderedDict, deque

    value = {("r0", "x"): {1, 2}, "t": (1.5, -math.inf), "o": OrderedDict([((0, 1), "d")]),
             "q": deque([1, 2], maxlen=5), "a": np.arange(6.0).reshape(2, 3), "f": frozenset({("a", 1)})}
    back = decode(json.loads(json.dumps(encode(value), allow_nan=False)))
    assert back.keys() == value.keys() and back[("r0", "x")] == {1, 2} and back["q"].maxlen == 5
    assert np.array_equal(back["a"], value["a"]) and back["t"] == (1.5, -math.inf) and back["o"] == value["o"]


def _before_confirm_windows(state):
    """A state as defenders wrote it before confirm_windows: confirmations counted in _quiet while armed."""
    old = dict(state)
    confirm, quiet = old.pop("_confirm"), old["_quiet"]
    del old["confirm_windows"]
    old["_quiet"] = [c if armed else q for armed, c, q in zip(old["_armed"], confirm, quiet, strict=True)]
    return old


def test_a_state_of_before_confirm_windows_resumes_as_the_uninterrupted_run(stream):
    # Cut where a hypothesis has crossed the threshold once and waits for its confirmation, so that
    # the count carried in the old state's _quiet is what the alert depends on.
    from bayes_defense.stream.model_filter import ModelDefender

    whole = ModelDefender(planner=None, ensemble=4, clock_confirm=1)
    whole.observe_batch(stream)
    whole.flush()
    expected = [a.to_dict() for a in whole.alerts]
    assert expected
    first = ModelDefender(planner=None, ensemble=4, clock_confirm=1)
    cut = 0
    while cut < len(stream) - 1 and not any(first._confirm):
        first.observe(stream[cut])
        cut += 1
    cut -= 1   # the last event observed
    assert any(first._confirm) and cut < len(stream) - 1
    old = _before_confirm_windows(first.state_dict())
    resumed = ModelDefender(planner=None, ensemble=4, clock_confirm=1)
    resumed.load_state_dict(old)
    assert resumed._confirm == first._confirm and resumed._quiet == first._quiet
    resumed.observe_batch(stream[cut + 1:])
    resumed.flush()
    assert [a.to_dict() for a in resumed.alerts] == expected
    scored = ScoredDefender(planner=None)
    scored.observe_batch(stream[:cut])
    again = ScoredDefender(planner=None)
    again.load_state_dict(_before_confirm_windows(scored.state_dict()))
    assert again.confirm_windows == 1 and again.state_dict().keys() == scored.state_dict().keys()


def test_confirm_windows_delays_each_first_alert_by_the_windows_it_adds(stream):
    # A crossing that lasts: with 3 windows to confirm, the alert comes 2 windows after the one of 1.
    first = {}
    for confirm in (1, 3):
        defender = ScoredDefender(planner=None, confirm_windows=confirm)
        defender.observe_batch(stream)
        defender.flush()
        first[confirm] = {a.attack: a.ts for a in reversed(defender.alerts)}
    assert first[1] and set(first[3]) <= set(first[1])
    assert all(first[3][attack] - first[1][attack] >= 2.0 for attack in first[3])
    assert any(first[3][attack] - first[1][attack] == 2.0 for attack in first[3])
    with pytest.raises(InvalidInputError, match="confirm_windows"):
        ScoredDefender(confirm_windows=0)

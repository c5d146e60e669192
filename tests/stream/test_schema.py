"""The event schema: validation with reasons."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bayes_defense.errors import MalformedEventError
from bayes_defense.stream.schema import KNOWN_KINDS, SCHEMA_VERSION, Event


def test_known_kinds_are_unique_and_version_is_set():
    assert len(KNOWN_KINDS) == len(set(KNOWN_KINDS))
    assert {"commit", "preprepare", "join", "peer_diversity", "safety_violation"} <= set(KNOWN_KINDS)
    assert SCHEMA_VERSION.split(".")[0] == "1"


def test_from_dict_accepts_a_full_record_and_defaults():
    event = Event.from_dict({"ts": 2, "node": "r3", "kind": "commit", "value": 5, "attrs": {"view": 1}})
    assert event == Event(2.0, "r3", "commit", 5.0, {"view": 1})
    assert isinstance(event.ts, float) and isinstance(event.value, float)
    bare = Event.from_dict({"ts": 0.0, "node": "r0", "kind": "restart"})
    assert bare.value is None and bare.attrs == {}


@pytest.mark.parametrize(
    "record, reason",
    [
        ([1, 2], "must be a JSON object"),
        ({"node": "r0", "kind": "commit"}, "missing required field 'ts'"),
        ({"ts": 1.0, "kind": "commit"}, "missing required field 'node'"),
        ({"ts": "1", "node": "r0", "kind": "commit"}, "field 'ts' must be a finite number"),
        ({"ts": math.nan, "node": "r0", "kind": "commit"}, "field 'ts' must be a finite number"),
        ({"ts": True, "node": "r0", "kind": "commit"}, "field 'ts' must be a finite number"),
        ({"ts": 1.0, "node": "", "kind": "commit"}, "field 'node' must be a non-empty string"),
        ({"ts": 1.0, "node": "r0", "kind": 3}, "field 'kind' must be a string"),
        ({"ts": 1.0, "node": "r0", "kind": "teleport"}, "unknown kind 'teleport'"),
        ({"ts": 1.0, "node": "r0", "kind": "commit", "value": math.inf}, "field 'value' must be a finite number"),
        ({"ts": 1.0, "node": "r0", "kind": "commit", "value": "7"}, "field 'value' must be a finite number"),
        ({"ts": 1.0, "node": "r0", "kind": "commit", "attrs": [1]}, "field 'attrs' must be an object"),
    ],
)
def test_from_dict_rejects_with_a_reason(record, reason):
    with pytest.raises(MalformedEventError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        Event.from_dict(record)


def test_unknown_kind_allowed_on_request():
    assert Event.from_dict({"ts": 1.0, "node": "r0", "kind": "future_kind"}, allow_unknown_kind=True).kind == "future_kind"


@given(
    ts=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    node=st.text(min_size=1, max_size=8),
    kind=st.sampled_from(KNOWN_KINDS),
    value=st.none() | st.floats(allow_nan=False, allow_infinity=False),
)
def test_to_dict_from_dict_round_trip(ts, node, kind, value):
    event = Event(ts, node, kind, value, {"k": 1})
    assert Event.from_dict(event.to_dict()) == event

"""Event logs: the schema, streaming readers and writers.

Kept light on purpose: importing :mod:`bayes_defense.stream` loads neither
pandas nor pyarrow until a function needs them.
"""

from bayes_defense.stream.io import (
    EventReader,
    EventWriter,
    events_to_dataframe,
    read_events,
    write_events,
)
from bayes_defense.stream.schema import KNOWN_KINDS, SCHEMA_VERSION, Event

__all__ = [
    "SCHEMA_VERSION",
    "KNOWN_KINDS",
    "Event",
    "EventReader",
    "EventWriter",
    "read_events",
    "write_events",
    "events_to_dataframe",
]
_LAZY = {"StreamingDefender": "defender", "Belief": "defender", "Alert": "defender", "evaluate_alerts": "metrics"}
__all__ += list(_LAZY)


def __getattr__(name: str):
    # The defender loads lazily so that the simulator, which reads the schema, never imports it.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"bayes_defense.stream.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'bayes_defense.stream' has no attribute {name!r}")

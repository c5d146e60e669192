"""Former home of ``defend``, ``evaluate``, ``detect`` and ``demo``, now :mod:`bayes_defense.commands` (names kept)."""

from __future__ import annotations

from typing import Any

from bayes_defense.commands._common import progress_bar
from bayes_defense.commands.defend import defend_stream, run_defend
from bayes_defense.stream.detect import run_detect
from bayes_defense.commands.evaluate import run_evaluate

__all__ = ["register", "run_defend", "run_evaluate", "run_detect", "defend_stream", "progress_bar"]


def register(subparsers: Any) -> None:
    """Add ``defend``, ``evaluate``, ``detect`` and ``demo`` to a ``bayes-defense`` parser."""
    from bayes_defense.commands import defend, demo, evaluate
    from bayes_defense.stream import detect

    for module in (defend, evaluate, detect, demo):
        module.register(subparsers)

"""Doctests that call an optional comparison peer skip where the peer is not installed.

The peers (chirho, dowhy, river) are never required (DESIGN.md 1); a module
whose examples run one is listed here with the import name it needs.
"""

import importlib.util

import pytest

#: Module -> the optional peer its doctests import.
DOCTEST_PEERS = {"bayes_defense.causal.chirho_interop": "chirho"}


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not isinstance(item, pytest.DoctestItem):
            continue
        module = item.dtest.globs.get("__name__", "")
        peer = DOCTEST_PEERS.get(module)
        if peer is not None and not _installed(peer):
            item.add_marker(pytest.mark.skip(reason=f"{module}'s examples need the optional peer {peer!r} "
                                                    f"(pip install {peer})"))

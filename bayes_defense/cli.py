"""The ``bayes-defense`` entry point; the command lives in :mod:`bayes_defense.commands` (names kept here)."""

from __future__ import annotations

import sys

from bayes_defense.commands import COMMAND_MODULES, build_parser, main

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

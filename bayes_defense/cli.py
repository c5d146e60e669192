"""The ``bayes-defense`` command line (also ``python -m bayes_defense``).

Each subcommand lives beside the code it drives, in a module that exposes
``register(subparsers)``; this module only collects them, parses, and turns
the package's errors into a one-line reason and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from bayes_defense.errors import BayesDefenseError

# Modules providing ``register(subparsers)``; each adds one or more subcommands
# whose parser sets ``func`` (called with the parsed namespace, returns an exit code).
COMMAND_MODULES: tuple[str, ...] = ("bayes_defense.sim.command", "bayes_defense.stream.command",
                                     "bayes_defense.fit_command")


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="bayes-defense",
        description="Bayesian, causal defence of BFT clusters against Byzantine attacks.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status.

    Bad input exits with status 2 and one line on standard error saying what
    was wrong, never a traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except (BayesDefenseError, FileNotFoundError, IsADirectoryError, PermissionError) as error:
        message = " ".join(str(error).split())
        print(f"bayes-defense {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

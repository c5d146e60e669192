"""The ``bayes-defense`` command (also ``python -m bayes_defense``).

One module per subcommand, each exposing ``register(subparsers)``; they are
listed once, in :data:`COMMAND_MODULES`. This package only collects them,
parses, and turns the package's errors into a one-line reason and an exit
status (docs/cli.md): 0 done, 1 done but the result should not be trusted,
2 bad input or usage.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from bayes_defense.commands._common import EXIT_BAD_INPUT, OneLineParser
from bayes_defense.errors import BayesDefenseError

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

# Modules providing ``register(subparsers)``; each adds one subcommand whose
# parser sets ``func`` (called with the parsed namespace, returns an exit code).
# A subcommand moves by changing its line here.
COMMAND_MODULES: tuple[str, ...] = (
    "bayes_defense.commands.demo",
    "bayes_defense.commands.simulate",
    "bayes_defense.commands.fit",
    "bayes_defense.commands.defend",
    "bayes_defense.commands.evaluate",
    "bayes_defense.stream.detect",
    "bayes_defense.commands.sweep",
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bayes_defense")
    except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> OneLineParser:
    """Return the top-level argument parser with every subcommand registered.

    Examples
    --------
    >>> parser = build_parser()
    >>> parser.parse_args(["evaluate", "--labels", "l.json", "--alerts", "a.jsonl"]).command
    'evaluate'
    """
    parser = OneLineParser(
        prog="bayes-defense",
        description="Bayesian, causal defence of BFT clusters against Byzantine attacks. "
                    "Exit status: 0 done, 1 done but not to be trusted, 2 bad input (docs/cli.md).",
    )
    parser.add_argument("--version", action="version", version=f"bayes-defense {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status.

    Bad input exits with status 2 and one line on standard error saying what
    was wrong, never a traceback.

    Examples
    --------
    >>> main(["evaluate", "--labels", "missing.json", "--alerts", "missing.jsonl"])
    2
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version and usage errors
        return int(stop.code or 0) if isinstance(stop.code, int) else EXIT_BAD_INPUT
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return int(args.func(args) or 0)
    except (BayesDefenseError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as error:
        message = " ".join(str(error).split())
        print(f"bayes-defense {args.command}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT

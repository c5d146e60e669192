"""What every subcommand shares: exit codes, one-line usage errors, strict JSON, progress bars."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, NoReturn

from bayes_defense.errors import InvalidInputError

__all__ = ["EXIT_OK", "EXIT_UNTRUSTED", "EXIT_BAD_INPUT", "OneLineParser", "add_defender_arguments",
           "observation_map_argument", "progress_bar", "strict_json",
           "probability_argument", "positive_argument", "read_json"]

#: Exit status: done.
EXIT_OK = 0
#: Exit status: done, but the result should not be trusted (diagnostics failed, most input unusable).
EXIT_UNTRUSTED = 1
#: Exit status: bad input or usage; nothing was done.
EXIT_BAD_INPUT = 2


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on standard error, status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message`` and a pointer to ``--help``; exit with status 2."""
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def probability_argument(text: str) -> float:
    """Parse a command-line probability in (0, 1].

    Examples
    --------
    >>> probability_argument("0.8")
    0.8
    """
    value = _number(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in (0, 1], got {text}")
    return value


def windows_argument(text: str) -> int:
    """Parse a command-line number of windows: a whole number, at least 1.

    Examples
    --------
    >>> windows_argument("2")
    2
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of windows, got {text!r}") from None
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"expected a number of windows in [1, 10000], got {text}")
    return value


def positive_argument(text: str) -> float:
    """Parse a finite positive number of seconds.

    Examples
    --------
    >>> positive_argument("600")
    600.0
    """
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def strict_json(data: Any) -> str:
    """Return ``data`` as strict JSON: NaN and infinities become ``null``.

    Examples
    --------
    >>> strict_json({"rate": float("nan"), "n": [1.0, float("inf")]})
    '{"rate": null, "n": [1.0, null]}'
    """
    return json.dumps(_finite(data), allow_nan=False, default=str)


def read_json(path: Path, what: str) -> Any:
    """Read a JSON file, with one-line errors naming ``what`` it should be."""
    if not path.exists():
        raise FileNotFoundError(f"no such {what} file: {str(path)!r}")
    if path.is_dir():
        raise IsADirectoryError(f"{what} file {str(path)!r} is a directory")
    try:
        return json.loads(path.read_bytes())
    except (ValueError, RecursionError) as error:  # ValueError covers bad UTF-8 and bad JSON
        raise InvalidInputError(f"{what} file {path.name!r} is not valid JSON: {str(error)[:120]}") from None


def progress_bar(total: float | None, description: str) -> Any:
    """Return a tqdm bar when stdout is a terminal, else a do-nothing stand-in.

    Examples
    --------
    >>> bar = progress_bar(10, "work")  # doctest runs without a terminal
    >>> bar.update(3); bar.close()
    """
    if sys.stdout.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=description, unit="s" if total else "ev", leave=False)

    class _Silent:
        def update(self, amount: float = 1) -> None:
            pass

        def close(self) -> None:
            pass

    return _Silent()


def add_defender_arguments(parser: Any, choice_help: str, map_help: str) -> None:
    """Add ``--defender`` and ``--map`` (the same flags on ``defend`` and ``fit``).

    Examples
    --------
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> add_defender_arguments(parser, "which defender", "the log's vocabulary")
    >>> parser.parse_args(["--map", "plenum"]).observation_map
    'plenum'
    """
    from bayes_defense.stream.defender import DEFAULT_DEFENDER, DEFENDERS

    parser.add_argument("--defender", choices=DEFENDERS, default=None,
                        help=f"{choice_help} (default: model with --map, else {DEFAULT_DEFENDER})")
    parser.add_argument("--map", metavar="MAP", dest="observation_map",
                        help=f"observation map for {map_help}: a TOML file or a shipped map's name such as plenum "
                             f"(docs/observation-maps.md); runs the model filter")


def observation_map_argument(value: str | None) -> Any:
    """The map ``--map`` names: a shipped map's name (``plenum``) or a TOML file; None without ``--map``.

    Examples
    --------
    >>> observation_map_argument("plenum").source
    'plenum.toml (shipped)'
    >>> observation_map_argument(None) is None
    True
    """
    if value is None:
        return None
    from bayes_defense.stream.obsmap import ObservationMap

    # One rule for names and paths, the loader's: a bare name is a shipped map, anything else a file.
    return ObservationMap.load(value)

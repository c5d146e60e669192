"""The ``detect`` subcommand: per-row anomaly probability of metric columns in a CSV file.

``bayes-defense detect metric.csv --time-column timestamp --value-column value``
scores each row with :class:`~bayes_defense.stream.series.SeriesModel` and
writes, in input order, the time column, the value columns (original names),
``probability``, ``lower`` and ``upper``, and with several value columns
``cause`` (DESIGN.md section 7). Warm-up rows have empty probability and
bounds. ``--train FILE`` first learns the model's parameters from a
normal-operation file by SVI (:func:`~bayes_defense.stream.series.trained_model`).

Bad input: an empty or header-only file, an unknown column, or a time
column that is not sorted (the first offending row is named) exits 2 and
leaves no output file; non-numeric, missing or non-finite value cells are
skipped and counted per column. The output is written atomically.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bayes_defense.errors import InvalidInputError

__all__ = ["register", "run_detect", "read_table", "Table"]

# Rows read, scored and written at a time: memory stays flat on any file length.
_CHUNK_ROWS = 65_536
# Rows below one half that close an episode (as series.episodes and the defender's re-arming).
_REARM_ROWS = 10


def register(subparsers: Any) -> None:
    """Add ``detect`` to a ``bayes-defense`` parser."""
    detect = subparsers.add_parser(
        "detect", help="per-row anomaly probability of metric columns in a CSV file (joint over columns)",
        description="Score every row of a CSV file with an online Bayesian series model (level, trend, "
                    "seasonality, heavy tails, a hidden typical/anomalous regime). Warm-up rows have empty "
                    "probability. Exit 2 on bad input, 1 when most cells were unusable or --train "
                    "diagnostics failed.")
    detect.add_argument("csv", help="input CSV with a header row")
    detect.add_argument("--time-column", default="timestamp", help="name of the time column (default timestamp)")
    detect.add_argument("--value-column", action="append", metavar="NAME",
                        help="a column to score (repeat for several, scored jointly with a cause column; "
                             "'all' = every numeric column but the time column; default value)")
    detect.add_argument("--exclude-column", action="append", default=[], metavar="NAME",
                        help="with --value-column all: a column to leave out (repeatable), for example a label")
    detect.add_argument("--period", action="append", metavar="ROWS",
                        help="seasonal period in rows (repeatable); 'auto' (default) finds periods from the "
                             "first --search-rows rows or from --train, 'none' for no seasonality")
    detect.add_argument("--search-rows", type=int, default=4096,
                        help="rows kept for the period search without --train (at most half the file); they "
                             "are warm-up (default 4096)")
    detect.add_argument("--train", metavar="FILE",
                        help="normal-operation CSV with the same columns: learn the parameters by SVI first")
    detect.add_argument("--train-steps", type=int, default=600, help="SVI steps with --train (default 600)")
    detect.add_argument("--ensemble", type=int, default=16, help="parameter draws behind each band (default 16)")
    detect.add_argument("--level", type=float, default=0.9, help="credible level of the bands (default 0.9)")
    detect.add_argument("--seed", type=int, default=0, help="seed of the parameter draws (default 0)")
    detect.add_argument("--out", metavar="FILE", default="scores.csv", help="output CSV (default scores.csv)")
    detect.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    detect.set_defaults(func=run_detect)


class Table:
    """A CSV file read in chunks: its header, chosen value columns and a sorted time column.

    Iterating yields ``(time_texts, value_texts, values)`` per chunk, with
    ``values`` a float array ``(rows, columns)`` (``nan`` for skipped cells).
    The time column is checked to be non-decreasing across the whole file;
    the first row that is not raises :class:`InvalidInputError`.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.csv"
    >>> _ = path.write_text("t,a,b,label\\n1,0.5,x,0\\n2,0.7,3,1\\n")
    >>> table = read_table(path, "t", ["all"], exclude=["label"])
    >>> table.columns
    ['a', 'b']
    >>> [chunk[2].tolist() for chunk in table]
    [[[0.5, nan], [0.7, 3.0]]]
    """

    def __init__(self, path: Path, time_column: str, columns: list[str], header: list[str]) -> None:
        self.path, self.time_column, self.columns, self.header = path, time_column, columns, header
        self.rows = 0

    def count_rows(self) -> int:
        """Number of data rows (non-empty lines after the header), read without parsing values."""
        with self.path.open(newline="") as handle:
            reader = csv.reader(handle)
            next(reader)
            return sum(1 for row in reader if row)

    def __iter__(self) -> Iterator[tuple[list[str], list[list[str]], np.ndarray]]:
        time_index = self.header.index(self.time_column)
        indices = [self.header.index(name) for name in self.columns]
        previous: float | None = None
        with self.path.open(newline="") as handle:
            reader = csv.reader(handle)
            next(reader)
            line = 1
            while True:
                times: list[str] = []
                texts: list[list[str]] = []
                for row in reader:
                    line += 1
                    if not row:
                        continue
                    times.append(row[time_index] if time_index < len(row) else "")
                    texts.append([row[i] if i < len(row) else "" for i in indices])
                    if len(times) >= _CHUNK_ROWS:
                        break
                if not times:
                    return
                first_line = line - len(times) + 1
                keys = _time_keys(times, self.time_column, first_line)
                order = np.concatenate([[previous] if previous is not None else [], keys])
                decreasing = np.flatnonzero(np.diff(order) < 0)
                if decreasing.size:
                    bad = int(decreasing[0]) + (0 if previous is not None else 1)
                    raise InvalidInputError(
                        f"time column {self.time_column!r} is not sorted: line {first_line + bad} "
                        f"({times[bad]!r}) is earlier than the line above it; sort the file by time first")
                previous = float(keys[-1])
                values = _numbers(texts)
                self.rows += len(times)
                yield times, texts, values


def _time_keys(times: list[str], column: str, first_line: int) -> np.ndarray:
    """Sortable numbers for the time cells: numbers as they are, dates as nanoseconds."""
    import pandas as pd

    series = pd.Series(times, dtype=object)
    numbers = pd.to_numeric(series, errors="coerce")
    if numbers.notna().all():
        return numbers.to_numpy(dtype=np.float64)
    dates = pd.to_datetime(series, errors="coerce", format="mixed", utc=True)
    if dates.notna().all():
        return dates.astype("int64").to_numpy(dtype=np.float64)
    bad = int(np.flatnonzero(dates.isna().to_numpy() & numbers.isna().to_numpy())[0])
    raise InvalidInputError(f"line {first_line + bad}: time {times[bad]!r} in column {column!r} is neither a "
                            "number nor a date; every row needs a time")


def _numbers(texts: list[list[str]]) -> np.ndarray:
    import pandas as pd

    frame = pd.DataFrame(texts, dtype=object)
    values = frame.apply(lambda column: pd.to_numeric(column, errors="coerce")).to_numpy(dtype=np.float64, copy=True)
    values[~np.isfinite(values)] = np.nan
    return values


def read_table(path: str | Path, time_column: str, value_columns: list[str] | None,
               exclude: list[str] | None = None) -> Table:
    """Open a CSV file for :func:`run_detect` and check its header and columns.

    ``value_columns`` of ``["all"]`` picks every column but the time column
    (and ``exclude``) whose cells in the first rows are mostly numbers.

    Raises
    ------
    InvalidInputError
        Empty or header-only file, unknown or repeated column names.
    FileNotFoundError
        No such file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such CSV file: {str(path)!r}")
    if path.is_dir():
        raise IsADirectoryError(f"CSV file {str(path)!r} is a directory")
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        sample = [row for _, row in zip(range(1000), reader, strict=False) if row]
    if not header:
        raise InvalidInputError(f"{path.name} is empty: expected a header row and data rows")
    if not sample:
        raise InvalidInputError(f"{path.name} has a header but no data rows: nothing to score")
    if len(set(header)) != len(header):
        raise InvalidInputError(f"{path.name} repeats a column name in its header: {', '.join(header)}")
    if time_column not in header:
        raise InvalidInputError(f"time column {time_column!r} not in {path.name} (columns: {', '.join(header)}); "
                                "name it with --time-column")
    requested = value_columns or ["value"]
    excluded = set(exclude or [])
    if requested == ["all"]:
        columns = []
        for index, name in enumerate(header):
            if name == time_column or name in excluded:
                continue
            cells = [row[index] for row in sample if index < len(row) and row[index].strip()]
            parsed = np.isfinite(_numbers([[cell] for cell in cells])).mean() if cells else 0.0
            if parsed >= 0.5:
                columns.append(name)
        if not columns:
            raise InvalidInputError(f"{path.name} has no numeric column besides {time_column!r}")
    else:
        if "all" in requested:
            raise InvalidInputError("--value-column all stands alone; give either 'all' or column names")
        missing = [name for name in requested if name not in header]
        if missing:
            raise InvalidInputError(f"column {missing[0]!r} not in {path.name} (columns: {', '.join(header)})")
        if len(set(requested)) != len(requested):
            raise InvalidInputError("a --value-column is given twice")
        if time_column in requested:
            raise InvalidInputError(f"{time_column!r} is the time column; it cannot also be a value column")
        columns = list(requested)
    return Table(path, time_column, columns, header)


def _periods(arguments: list[str] | None) -> Any:
    if not arguments or arguments == ["auto"]:
        return "auto"
    if arguments == ["none"]:
        return ()
    periods = []
    for text in arguments:
        for part in text.split(","):
            try:
                value = int(part)
            except ValueError:
                raise InvalidInputError(f"--period expects a row count, 'auto' or 'none'; got {part!r}") from None
            if value < 2:
                raise InvalidInputError(f"--period must be at least 2 rows; got {value}")
            periods.append(value)
    return periods


def _format(value: float) -> str:
    return "" if not math.isfinite(value) else f"{value:.6g}"


def run_detect(args: argparse.Namespace) -> int:
    """Run ``bayes-defense detect``; return the exit status (0, 1 untrusted, bad input raises)."""
    from bayes_defense.ioutil import atomic_write
    from bayes_defense.stream.series import SeriesModel, trained_model

    for name, value, low in (("--search-rows", args.search_rows, 0), ("--train-steps", args.train_steps, 1),
                             ("--ensemble", args.ensemble, 1)):
        if value < low:
            raise InvalidInputError(f"{name} must be at least {low}; got {value}")
    if not 0.0 < args.level < 1.0:
        raise InvalidInputError(f"--level must lie strictly between 0 and 1; got {args.level}")
    table = read_table(args.csv, args.time_column, args.value_column, args.exclude_column)
    periods = _periods(args.period)
    columns = table.columns
    diagnostics = None
    if args.train:
        train = read_table(args.train, args.time_column, columns)
        blocks = [values for _, _, values in train]
        model, _, diagnostics = trained_model(np.concatenate(blocks), periods=periods, steps=args.train_steps,
                                              draws=args.ensemble, seed=args.seed, level=args.level)
    else:
        search_rows = args.search_rows
        if periods == "auto":
            # A file shorter than the search would be all warm-up: search its first half instead.
            # Only the number of rows is read ahead, never a value.
            search_rows = min(search_rows, max(table.count_rows() // 2, 2))
        model = SeriesModel(len(columns), periods=periods, ensemble=args.ensemble, seed=args.seed,
                            level=args.level, search_rows=search_rows)
    skipped = np.zeros(len(columns), np.int64)
    rows = scored = anomalies = 0
    episode_count = 0
    last_flagged = -_REARM_ROWS - 1
    out = Path(args.out)
    with atomic_write(out, newline="") as target:
        writer = csv.writer(target)
        writer.writerow([args.time_column, *columns, "probability", "lower", "upper"]
                        + (["cause"] if len(columns) > 1 else []))
        for times, texts, values in table:
            skipped += np.isnan(values).sum(axis=0)
            scores = model.score(values)
            causes = scores.causes(columns) if len(columns) > 1 else None
            flags = scores.probability >= 0.5
            # Episodes as series.episodes counts them (rearm 10 rows), carried across chunks.
            flagged = rows + np.flatnonzero(flags)
            if flagged.size:
                gaps = np.diff(np.concatenate([[last_flagged], flagged])) - 1
                episode_count += int((gaps >= _REARM_ROWS).sum())
                last_flagged = int(flagged[-1])
            anomalies += int(flags.sum())
            scored += int(np.isfinite(scores.probability).sum())
            for i, time in enumerate(times):
                line = [time, *texts[i], _format(scores.probability[i]), _format(scores.lower[i]),
                        _format(scores.upper[i])]
                if causes is not None:
                    line.append(causes[i])
                writer.writerow(line)
            rows += len(times)
    cells = rows * len(columns)
    summary: dict[str, Any] = {
        "rows": rows, "scored": scored, "anomalies": anomalies, "episodes": episode_count, "columns": columns,
        "skipped": dict(zip(columns, skipped.tolist(), strict=True)), "periods": model.periods, "out": str(out)}
    status = 0
    if skipped.sum() > 0.5 * cells:
        status = 1
    if diagnostics is not None:
        summary["train"] = {key: diagnostics[key] for key in ("elbo", "elbo_change", "pareto_k", "rows", "ok")}
        if not diagnostics["ok"]:
            status = 1
    if args.json:
        from bayes_defense.commands._common import strict_json

        print(strict_json(summary))
    else:
        print(f"{rows} rows scored ({scored} past warm-up), {anomalies} with probability >= 0.5 in "
              f"{episode_count} episodes -> {out}")
        if skipped.any():
            print("skipped cells: " + ", ".join(f"{name} {count}" for name, count in zip(columns, skipped, strict=True) if count))
        if diagnostics is not None and not diagnostics["ok"]:
            print(f"warning: the --train fit did not pass its diagnostics (Pareto k {diagnostics['pareto_k']:.2f}, "
                  f"ELBO change {diagnostics['elbo_change']:.3g}); treat the scores with care")
    return status

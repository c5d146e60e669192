"""asv benchmarks of the series model behind ``detect``: rows per second and flat memory.

Throughput is CPU time of this process (``time.process_time``): the targets
are per core, and on a shared machine wall time also counts other processes.
The streams are seasonal with noise (period 288, a day of 5-minute rows),
scored in blocks of 65,536 rows as ``detect`` reads them; the kernel is
compiled (or loaded from numba's cache) in ``setup``, outside the timing.

Targets (issue 15): at least 200k rows per second per core with one column,
at least 20k rows per second with 38 columns, and memory flat over 10
million rows (``peakmem`` of 1M and 10M rows about equal).
"""

from __future__ import annotations

import time

import numpy as np

from bayes_defense.stream.series import SeriesModel

BLOCK = 65_536


def seasonal_block(columns: int, rows: int = BLOCK, seed: int = 0) -> np.ndarray:
    """A block of seasonal rows with noise, one column per metric."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)[:, None]
    return 10.0 + 3.0 * np.sin(2 * np.pi * t / 288 + np.arange(columns)) + rng.normal(size=(rows, columns))


def _warm(columns: int) -> SeriesModel:
    model = SeriesModel(columns, periods=[288])
    model.score(seasonal_block(columns, 1000))  # compiles or loads the kernel
    return model


class TrackRowsPerSecond:
    """Rows per CPU second, one and 38 columns, over 4 blocks (262,144 rows)."""

    params = [1, 38]
    param_names = ["columns"]
    unit = "rows/s"
    timeout = 600

    def setup(self, columns: int) -> None:
        self.block = seasonal_block(columns)
        self.model = _warm(columns)

    def track_rows_per_second(self, columns: int) -> float:
        started = time.process_time()
        for _ in range(4):
            self.model.score(self.block)
        return 4 * BLOCK / (time.process_time() - started)


class TimeScoreBlock:
    """Wall time of one block of 65,536 rows."""

    params = [1, 38]
    param_names = ["columns"]
    timeout = 600

    def setup(self, columns: int) -> None:
        self.block = seasonal_block(columns)
        self.model = _warm(columns)

    def time_score_block(self, columns: int) -> None:
        self.model.score(self.block)


class PeakmemRows:
    """Peak memory of scoring 1M and 10M univariate rows block by block (flat: both about equal)."""

    params = [1_000_000, 10_000_000]
    param_names = ["rows"]
    timeout = 900

    def setup(self, rows: int) -> None:
        self.block = seasonal_block(1)
        _warm(1)

    def peakmem_score_rows(self, rows: int) -> None:
        model = SeriesModel(1, periods="auto")
        for _ in range(rows // BLOCK):
            model.score(self.block)

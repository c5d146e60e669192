"""asv benchmarks of fitting the cluster SCM to incident tables: time and peak memory against the number of rows.

Incident tables are simulated once (``setup_cache``) from ``bd.models.cluster(4)``
under one ``pyro.plate``: every site recorded (``labelled``), or the same
rows without ``attacker`` and the attack-state labels (``unlabelled``: the
attacker's replica and every precursor are summed out exactly). Sizes are 1k,
10k and 100k incident windows.

Settings are fixed so that sizes compare: SVI 300 steps of 1024-row
minibatches and 200 draws, 10 posterior predictive draws. A fit's time is
reading and validating the table, one full pass for the zero-probability rows
and one full gradient pass for the parameters the likelihood depends on
(both linear in the rows), and the SVI steps (independent of the rows).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

SIZES = {"1k": 1_000, "10k": 10_000, "100k": 100_000}
SETTINGS = {"method": "svi", "num_steps": 300, "batch_size": 1024, "num_samples": 200, "ppc_draws": 10,
            "progress": False, "check": False}


def _make_tables() -> dict[str, str]:
    import pyro
    import torch

    import bayes_defense as bd
    from bayes_defense.fitting.cluster import _Structure

    model = bd.models.cluster(4)
    columns = list(_Structure(model).site_names())
    unlabelled = [c for c in columns if not c.endswith((".precursor", ".executing", ".success")) and c != "attacker"]
    root = Path(tempfile.mkdtemp(prefix="bench_fit_cluster_"))
    pyro.set_rng_seed(0)
    with torch.no_grad(), pyro.plate("incidents", max(SIZES.values()), dim=-1):
        trace = pyro.poutine.trace(model).get_trace()
    import pandas as pd

    table = pd.DataFrame({c: trace.nodes[c]["value"].numpy().astype("int8") for c in columns})
    out = {}
    for name, rows in SIZES.items():
        for kind, names in (("labelled", columns), ("unlabelled", unlabelled)):
            path = root / f"{kind}_{name}.parquet"
            table.iloc[:rows][names].to_parquet(path)
            out[f"{kind}/{name}"] = str(path)
    return out


class ClusterFitSuite:
    """Fit time and peak memory by labelling and number of incident rows."""

    params = (["labelled", "unlabelled"], list(SIZES))
    param_names = ["labels", "rows"]
    timeout = 1800
    number = 1
    repeat = 1
    warmup_time = 0

    def setup_cache(self):
        return _make_tables()

    @staticmethod
    def _fit(tables, labels, rows):
        import torch

        import bayes_defense as bd

        torch.set_num_threads(1)
        return bd.fit(bd.models.cluster(4), tables[f"{labels}/{rows}"], **SETTINGS)

    def time_fit(self, tables, labels, rows):
        self._fit(tables, labels, rows)

    def peakmem_fit(self, tables, labels, rows):
        self._fit(tables, labels, rows)


if __name__ == "__main__":   # pragma: no cover - manual timing: python benchmarks/bench_fit_cluster.py
    import time

    suite = ClusterFitSuite()
    tables = suite.setup_cache()
    for labels in suite.params[0]:
        for rows in suite.params[1]:
            started = time.perf_counter()
            posterior = suite._fit(tables, labels, rows)
            print(f"{labels:10s} {rows:>5s} {time.perf_counter() - started:7.1f} s  "
                  f"(fit's own record: {posterior.info['seconds']} s)", flush=True)

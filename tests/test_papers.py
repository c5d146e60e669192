"""Every write-up script in papers/ runs with its smallest settings (the ones that simulate or fit for a minute or more are ``slow``)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ASD = ROOT.parent / "shared" / "data" / "asd"


@pytest.fixture(autouse=True)
def _papers_on_path(monkeypatch):
    # A script in papers/ runs with papers/ first on sys.path (its shared helpers live there).
    monkeypatch.syspath_prepend(str(ROOT / "papers"))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"papers_{name}", ROOT / "papers" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    # Registered, so that a script's process pool can pickle its functions by module name.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # a Dask worker process, two simulated scenarios and every timed query: about a minute
def test_claims_script_writes_every_claim(tmp_path):
    pytest.importorskip("distributed")
    claims = _load("claims")
    out = tmp_path / "claims.md"
    claims.main(["--nodes", "4", "--repeats", "2", "--scenarios", "2", "--duration", "240", "--workers", "1",
                 "--sweep-dir", str(tmp_path / "sweep"), "--out", str(out)])
    text = out.read_text()
    for _, wording, _ in claims.TIME_CLAIMS:
        assert wording in text
    for wording in ("false-positive rate under 1%", "detection over 99%", "warnings 30-300 s ahead",
                    "under 10% overhead", "ill-posed"):
        assert wording in text
    assert "nan" not in text.lower().replace("nanny", "")
    assert (tmp_path / "sweep" / "results.parquet").exists()


def test_wilson_interval_is_inside_zero_one_and_covers_the_rate():
    wilson = _load("_stats").wilson
    for successes, trials in ((0, 4), (4, 4), (3, 10), (500, 1000)):
        p, low, high = wilson(successes, trials)
        assert 0.0 <= low <= p <= high <= 1.0
    # The 90% Wilson interval for 0 of 4: upper bound z^2 / (n + z^2) with z = 1.645.
    assert wilson(0, 4)[2] == pytest.approx(1.6449 ** 2 / (4 + 1.6449 ** 2), rel=1e-3)


@pytest.mark.slow  # a Dask worker process and simulated scenarios: about a minute
def test_baselines_script_writes_a_table_per_cluster_size(tmp_path):
    pytest.importorskip("distributed")
    baselines = _load("baselines")
    out = tmp_path / "baselines.md"
    baselines.main(["--nodes", "4", "--seeds", "1", "--intensities", "1", "--duration", "240", "--workers", "1",
                    "--sweep-dir", str(tmp_path / "sweep"), "--out", str(out)])
    text = out.read_text()
    assert "## 4 replicas" in text and "defender: detection / FPR" in text
    assert (tmp_path / "baselines.png").stat().st_size > 0


def test_backends_script_measures_directly_and_reads_asv_results(tmp_path):
    pytest.importorskip("pgmpy")
    backends = _load("backends")
    rows = backends.measure_direct(["exact", "importance", "pgmpy"], [5], repeats=1)
    binary = {(r["engine"], r["kind"]) for r in rows if r["family"] == "binary"}
    assert {("exact", "interventional"), ("importance", "counterfactual"), ("pgmpy", "interventional")} <= binary
    # pgmpy answers interventional binary queries only; by surgery and elimination it is exact.
    assert all(r["kind"] == "interventional" and r["family"] == "binary" and r["error"] < 1e-9
               for r in rows if r["engine"] == "pgmpy")
    # The same measurements stored in asv's results format (version 2) come back unchanged.
    engines = sorted({r["engine"] for r in rows})
    params = [engines, ["binary", "linear_gaussian"], [5], ["interventional", "counterfactual"]]
    import itertools

    lookup = {(r["engine"], r["family"], r["nodes"], r["kind"]): r for r in rows}
    combos = list(itertools.product(*params))
    quoted = [[repr(v) if isinstance(v, str) else str(v) for v in values] for values in params]
    results = {"version": 2, "date": 1, "result_columns": ["result", "params", "version", "started_at", "duration"],
               "results": {f"bench_backends.Backends.{method}": [
                   [lookup[c][key] if c in lookup else None for c in combos], quoted, "v", 0, 0.0]
                   for method, key in (("time_query", "seconds"), ("track_abs_error", "error"))}}
    source = tmp_path / "results.json"
    source.write_text(json.dumps(results))
    read = sorted(backends.read_results(source), key=lambda r: (r["engine"], r["family"], r["kind"]))
    assert read == sorted(rows, key=lambda r: (r["engine"], r["family"], r["kind"]))
    out = tmp_path / "backends.md"
    backends.main(["--results", str(source), "--out", str(out)])
    assert (tmp_path / "backends.png").stat().st_size > 0
    text = out.read_text()
    assert "## binary, interventional" in text and "| pgmpy |" in text


@pytest.mark.slow
def test_evaluate_defender_smallest_run(tmp_path):
    out = tmp_path / "evaluate.md"
    assert _load("evaluate_defender").main(["--train", "1", "--scenarios", "1", "--jobs", "1", "--out", str(out)]) in (
        0, None)
    text = out.read_text()
    for method in ("| model |", "| default |", "| scored |", "| cusum |"):
        assert method in text


@pytest.mark.slow
def test_scm_explain_quick_run(tmp_path):
    out = tmp_path / "scm.md"
    _load("scm_explain").main(["--quick", "--work", str(tmp_path / "work"), "--out", str(out)])
    assert "bd.explain" in out.read_text()


@pytest.mark.slow
def test_explanation_ranking_smallest_run():
    rows = _load("explanation_ranking").main(["--nodes", "4", "--runs", "0:3"])
    assert len(rows) == 8 and all(0 <= row["explanation_hits"] <= row["count"] == 3 for row in rows)


@pytest.mark.slow
def test_fit_defender_smallest_run(tmp_path, monkeypatch):
    out = tmp_path / "report"
    monkeypatch.setattr(sys, "argv", ["fit_defender.py", "--train", "1", "--test", "1", "--nodes", "4",
                                      "--duration", "120", "--out", str(out)])
    _load("fit_defender").main()
    assert any(out.iterdir())


@pytest.mark.slow
def test_microservice_example_quick():
    _load("microservice_example").main(quick=True)


@pytest.mark.slow
def test_exact_networks_smallest_run(tmp_path):
    pytest.importorskip("pgmpy")
    out = tmp_path / "exact.md"
    _load("exact_networks").main(["--networks", "asia", "--queries", "1", "--counterfactuals", "1", "--repeat", "1",
                                  "--out", str(out)])
    assert "asia" in out.read_text()


@pytest.mark.slow
def test_asd_detection_smallest_run(tmp_path, monkeypatch):
    if not any(ASD.glob("omi-*_test.csv.gz")):
        pytest.skip(f"the ASD data is read from {ASD} (../shared/data/asd), which this checkout does not have")
    out = tmp_path / "asd.md"
    monkeypatch.setattr(sys, "argv", ["asd_detection.py", "--data", str(ASD), "--entities", "1",
                                      "--synthetic-seeds", "1", "--out", str(out)])
    _load("asd_detection").main()
    assert out.read_text().strip()

"""Every papers/ script not covered in tests/test_papers.py runs with its smallest flags and writes its output.

Each simulates, fits or times something for a minute or more, so all are ``slow``
(``python -m pytest -m slow tests/test_papers_smoke.py``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ASD = ROOT.parent / "shared" / "data" / "asd"


@pytest.fixture(autouse=True)
def _papers_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "papers"))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"papers_{name}", ROOT / "papers" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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

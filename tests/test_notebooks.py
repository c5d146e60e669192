"""Every notebook in notebooks/ executes through a real Jupyter kernel, and its .py and .ipynb agree.

The notebooks are jupytext percent scripts (the reviewed source) paired with
.ipynb files (what a user opens). Each reads ``BAYES_DEFENSE_NOTEBOOK_QUICK=1``
to run with small settings.
"""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
jupytext = pytest.importorskip("jupytext")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SCRIPTS = sorted(NOTEBOOKS.glob("*.py"))
KERNEL = "python3"


def _kernel_available() -> bool:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        # ipykernel in this environment provides the native "python3" kernel, running this interpreter.
        KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        return False
    return True


def test_there_are_at_least_five_notebooks():
    assert len(SCRIPTS) >= 5, [path.name for path in SCRIPTS]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.stem)
def test_script_and_notebook_are_paired_and_in_sync(script):
    notebook_path = script.with_suffix(".ipynb")
    assert notebook_path.exists(), f"{notebook_path.name} is missing: run jupytext --sync {script.name}"
    from_script = jupytext.read(script)
    stored = nbformat.read(notebook_path, as_version=4)
    assert [(c.cell_type, c.source) for c in stored.cells] == [(c.cell_type, c.source) for c in from_script.cells], (
        f"{notebook_path.name} differs from {script.name}: run jupytext --sync {script.name}")
    assert stored.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    # Stored without outputs, so that a diff shows only the source.
    assert all(not cell.get("outputs") for cell in stored.cells if cell.cell_type == "code")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.stem)
def test_notebook_executes(script, tmp_path, monkeypatch):
    if not _kernel_available():
        pytest.skip("no python3 Jupyter kernel: install ipykernel (it is in the dev extra)")
    monkeypatch.setenv("BAYES_DEFENSE_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(script.with_suffix(".ipynb"), as_version=4)
    client = nbclient.NotebookClient(notebook, kernel_name=KERNEL, timeout=300,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
              if output.get("output_type") == "error"]
    assert not errors
    # Each notebook shows something: at least one code cell printed or drew.
    assert any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")

"""Posterior files: ``fit --out`` is atomic, and crafted files are refused before they can do harm."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from bayes_defense.cli import main
from bayes_defense.errors import InvalidInputError
from bayes_defense.fitting import load_posterior
from bayes_defense.fitting.storage import MAX_POSTERIOR_BYTES
from bayes_defense.sim import AttackSpec, Scenario, simulate


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    directory = tmp_path_factory.mktemp("posterior")
    run = simulate(Scenario(nodes=4, duration=150.0, seed=11, attacks=[AttackSpec(
        "replay", start=80.0, precursor=40.0, duration=30.0)]), directory / "run")
    path = directory / "posterior.nc"
    # The scored defender's posterior: its spreads and scores are what the crafted files below break.
    assert main(["fit", str(run.out_dir), "--defender", "scored", "--steps", "60", "--samples", "40", "--out", str(path),
                 "--json"]) in (0, 1)
    return run, path


def _copy(fitted, tmp_path, name="p.nc"):
    target = tmp_path / name
    shutil.copy(fitted[1], target)
    return target


def test_kill_9_during_fit_keeps_the_previous_posterior(fitted, tmp_path):
    run, good = fitted
    out = _copy(fitted, tmp_path, "posterior.nc")
    before = out.read_bytes()
    process = subprocess.Popen([sys.executable, "-m", "bayes_defense", "fit", str(run.out_dir), "--defender", "scored",
                                "--steps", "100000", "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(8.0)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert out.read_bytes() == before and load_posterior(out).info["windows"] > 0
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["posterior.nc"]


def test_a_half_written_posterior_is_refused(fitted, tmp_path):
    data = fitted[1].read_bytes()
    for fraction in (0.5, 0.9):
        half = tmp_path / f"half{fraction}.nc"
        half.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(InvalidInputError):
            load_posterior(half)


def _set(path, name, change):
    with h5py.File(path, "r+") as handle:
        dataset = handle[f"posterior/{name}"]
        values = dataset[...]
        dataset[...] = change(values)


@pytest.mark.parametrize(("name", "change", "message"), [
    ("spread", lambda v: -np.abs(v), "'spread' must be positive"),
    ("score_precursor", lambda v: -np.abs(v), "'score_precursor' must be positive"),
    ("benign_to_precursor", lambda v: np.full_like(v, 7.0), "must lie in \\(0, 1\\)"),
    ("quiet_precursor", lambda v: np.full_like(v, -0.5), "must lie in \\[0, 1\\)"),
])
def test_out_of_range_values_are_refused_not_clipped(fitted, tmp_path, name, change, message):
    path = _copy(fitted, tmp_path)
    _set(path, name, change)
    with pytest.raises(InvalidInputError, match=message):
        load_posterior(path)


@pytest.mark.parametrize(("attribute", "value", "message"), [
    ("info", "[1, 2]", "metadata must be an object"),
    ("info", "{not json", "not valid JSON"),
    ("info", json.dumps({"attacks": "replay"}), "attack list"),
    ("level", 5.0, "credible level"),
    ("problems", json.dumps({"a": 1}), "metadata must be"),
])
def test_bad_metadata_is_refused_in_one_line(fitted, tmp_path, attribute, value, message):
    path = _copy(fitted, tmp_path)
    with h5py.File(path, "r+") as handle:
        handle["posterior"].attrs[attribute] = value
    with pytest.raises(InvalidInputError, match=message):
        load_posterior(path)


def _format_attrs(fitted):
    with h5py.File(fitted[1], "r") as handle:
        return dict(handle["posterior"].attrs)


def test_a_small_file_declaring_huge_arrays_is_refused_before_allocation(fitted, tmp_path):
    path = tmp_path / "bomb.nc"
    with h5py.File(path, "w") as handle:
        group = handle.create_group("posterior")
        for key, value in _format_attrs(fitted).items():
            if isinstance(value, (str, bytes, float, int, np.number)):
                group.attrs[key] = value
        group.create_dataset("spread", shape=(2, 200_000_000, 8), dtype="f8", chunks=(1, 4096, 8))
    assert path.stat().st_size < 64 * 1024
    with pytest.raises(InvalidInputError, match=f"more than the {MAX_POSTERIOR_BYTES}"):
        load_posterior(path)


def test_external_storage_and_links_are_refused(fitted, tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(16, dtype="f8").tobytes())
    stored = _copy(fitted, tmp_path, "external.nc")
    with h5py.File(stored, "r+") as handle:
        handle["posterior"].create_dataset("leak", shape=(16,), dtype="f8", external=[(str(secret), 0, 128)])
    with pytest.raises(InvalidInputError, match="external storage"):
        load_posterior(stored)
    linked = _copy(fitted, tmp_path, "linked.nc")
    with h5py.File(linked, "r+") as handle:
        handle["posterior/leak"] = h5py.ExternalLink(str(fitted[1]), "/posterior/spread")
    with pytest.raises(InvalidInputError, match="links to another file"):
        load_posterior(linked)
    virtual = _copy(fitted, tmp_path, "virtual.nc")
    layout = h5py.VirtualLayout(shape=(4,), dtype="f8")
    layout[:] = h5py.VirtualSource(str(secret), "x", shape=(4,))
    with h5py.File(virtual, "r+") as handle:
        handle["posterior"].create_virtual_dataset("leak", layout)
    with pytest.raises(InvalidInputError, match="virtual dataset"):
        load_posterior(virtual)

"""Tests of atomic file output."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bayes_defense.ioutil import atomic_path, atomic_write


def test_exception_keeps_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    with pytest.raises(KeyError), atomic_write(target) as handle:
        handle.write("partial")
        raise KeyError("boom")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_binary_and_exclusive_modes(tmp_path):
    target = tmp_path / "x.bin"
    with atomic_write(target, "xb") as handle:
        handle.write(b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    with pytest.raises(FileExistsError), atomic_write(target, "xb"):
        pass
    with pytest.raises(ValueError, match="whole file"), atomic_write(target, "a"):
        pass


def test_new_file_gets_umask_mode_and_old_mode_is_kept(tmp_path):
    target = tmp_path / "mode.txt"
    with atomic_write(target) as handle:
        handle.write("a")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    target.chmod(0o640)
    with atomic_write(target) as handle:
        handle.write("b")
    assert target.stat().st_mode & 0o777 == 0o640


def test_atomic_path_keeps_suffix_and_refuses_directory(tmp_path):
    with atomic_path(tmp_path / "p.nc") as temporary:
        assert temporary.suffix == ".nc" and temporary.parent == tmp_path
        temporary.write_bytes(b"data")
    assert (tmp_path / "p.nc").read_bytes() == b"data"
    with pytest.raises(IsADirectoryError), atomic_path(tmp_path):
        pass


def test_kill_during_write_keeps_old_file(tmp_path):
    target = tmp_path / "big.txt"
    target.write_text("old")
    script = (
        "import os, signal, sys\n"
        "from bayes_defense.ioutil import atomic_write\n"
        f"with atomic_write({str(target)!r}) as h:\n"
        "    h.write('x' * 100000); h.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert result.returncode == -9
    assert target.read_text() == "old"

"""Atomic file output: a file is either the old one, the complete new one, or absent.

Every file the package writes for a user (alerts, posteriors, checkpoints,
scores, figures) goes through :func:`atomic_write`: the content is written to
a temporary file in the target's directory, flushed to disk, and renamed over
the target only when the writer finished without an exception. An interrupted
command (an exception, ``kill -9``, a power cut) therefore never leaves a
half-written file where a complete one is expected.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_path", "fsync_directory", "match_mode"]


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Flush a directory entry to disk so that a rename inside it survives a crash.

    Examples
    --------
    >>> import tempfile
    >>> fsync_directory(tempfile.mkdtemp())
    """
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory descriptors
        return
    try:
        os.fsync(descriptor)
    except OSError:  # pragma: no cover - file systems that refuse fsync on directories
        pass
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    For writers that want a file name rather than a handle (NetCDF, Parquet,
    matplotlib). The temporary file keeps the target's suffix (or ``suffix``)
    because some writers choose their format from it. On an exception the
    temporary file is removed and ``path`` is left as it was.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "table.txt"
    >>> with atomic_path(target) as temporary:
    ...     _ = temporary.write_text("done")
    >>> target.read_text()
    'done'
    """
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"cannot write {str(target)!r}: it is a directory; give a file name")
    directory = target.parent if str(target.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix if suffix is None else suffix,
                                        dir=directory)
    os.close(descriptor)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        match_mode(target, temporary)
        os.replace(temporary, target)
        fsync_directory(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise


def match_mode(target: Path, temporary: Path) -> None:
    """Give ``temporary`` the mode of ``target``, or the mode a plain ``open`` would give a new file.

    ``tempfile.mkstemp`` creates files with mode 0600, which a rename would
    otherwise carry over to the user's file.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> directory = pathlib.Path(tempfile.mkdtemp())
    >>> (directory / "old").touch(mode=0o640); (directory / "new").touch(mode=0o600)
    >>> match_mode(directory / "old", directory / "new"); oct((directory / "new").stat().st_mode & 0o777)
    '0o640'
    """
    try:
        mode = target.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.chmod(temporary, mode)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Open a file for writing that appears at ``path`` only once complete.

    Parameters
    ----------
    path : path-like
        The file to (re)write. Its directory is created if missing.
    mode : {"w", "wb", "x", "xb"}
        Text or binary; ``"x"`` refuses to replace an existing file.
    **open_kwargs
        Passed to :func:`open` (``encoding``, ``newline``, ``buffering``).
        Text mode defaults to UTF-8.

    Yields
    ------
    file object
        Write to it as to ``open(path, mode)``. When the ``with`` block ends
        normally the data are flushed, synced and renamed over ``path``; when
        it raises, ``path`` keeps its old content (or stays absent).

    Raises
    ------
    FileExistsError
        With ``mode="x"`` when ``path`` exists.
    ValueError
        For a mode that does not write a whole file (``"a"``, ``"r+"``).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "alerts.jsonl"
    >>> _ = target.write_text("old\\n")
    >>> try:
    ...     with atomic_write(target) as handle:
    ...         _ = handle.write("half")
    ...         raise RuntimeError("interrupted")
    ... except RuntimeError:
    ...     pass
    >>> target.read_text()
    'old\\n'
    >>> with atomic_write(target) as handle:
    ...     _ = handle.write("new\\n")
    >>> target.read_text()
    'new\\n'
    """
    if mode not in ("w", "wb", "x", "xb", "wt", "xt"):
        raise ValueError(f"atomic_write writes a whole file: mode must be 'w', 'wb', 'x' or 'xb', got {mode!r}; "
                         "to append, read the old file and write the whole new one")
    target = Path(path)
    if "x" in mode and target.exists():
        raise FileExistsError(f"{str(target)!r} exists; remove it or write with mode 'w'")
    binary = "b" in mode
    if not binary:
        open_kwargs.setdefault("encoding", "utf-8")
    with atomic_path(target, suffix=".tmp") as temporary:
        with open(temporary, "wb" if binary else "w", **open_kwargs) as handle:
            yield handle
            handle.flush()

"""Posterior files: NetCDF-4 written through ArviZ, read back as plain groups, never pickle.

Every fitted posterior of the package (the defender's, the cluster
model's, a user SCM's) is written by :func:`save_posterior` and identified
on reading by the ``format`` attribute on its ``posterior`` group (the
``FORMAT_NAME`` of its module: ``"bayes_defense.posterior"`` for the
defender, ``"bayes_defense.cluster_posterior"`` for the cluster model,
``"bayes_defense.scm_posterior"`` for a user SCM, ``fitting.scm.FORMAT_NAME``);
:func:`bayes_defense.fitting.load_posterior` reads the groups with
:func:`read_posterior_groups` and hands them to the reader of that format.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bayes_defense.errors import InvalidInputError
from bayes_defense.fitting import inference_data

__all__ = ["HDF5_SIGNATURE", "MAX_POSTERIOR_BYTES", "save_posterior", "read_posterior_groups", "posterior_format",
           "check_hdf5_layout"]

#: The first eight bytes of every HDF5 (NetCDF-4) file.
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

#: The most memory a posterior file may ask for: the sum of the declared sizes
#: of all its arrays and attributes (uncompressed), checked before any is read.
#: A defender posterior of 8 attacks x 9 parameters x 2 chains x 1000 draws
#: needs about 1.2 MB; the cluster model's a few MB.
MAX_POSTERIOR_BYTES = 512 * 1024 * 1024


def check_hdf5_layout(path: str | os.PathLike[str], *, max_bytes: int = MAX_POSTERIOR_BYTES) -> int:
    """Refuse an HDF5 file that would read other files or exhaust memory; return its declared bytes.

    Walks every group, dataset and attribute without reading data: links to
    other files (external links), datasets stored in other files (external
    storage) or mapped from them (virtual datasets), soft links, and types
    other than numbers, booleans and strings are refused, and so is a file
    whose arrays and attributes together declare more than ``max_bytes``.

    Raises
    ------
    InvalidInputError
        With what was found and where.

    Examples
    --------
    >>> import tempfile, pathlib, h5py
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "big.nc"
    >>> with h5py.File(path, "w") as handle:
    ...     _ = handle.create_dataset("x", shape=(2, 200_000_000, 8), dtype="f8", chunks=(1, 1000, 8))
    >>> check_hdf5_layout(path)
    Traceback (most recent call last):
    ...
    bayes_defense.errors.InvalidInputError: big.nc declares 25600000000 bytes of arrays ...
    """
    import h5py
    import numpy as np

    path = Path(path)
    total = 0

    def size(shape: Any, dtype: Any) -> int:
        return int(np.prod(shape or (), dtype=object)) * max(int(dtype.itemsize), 1)

    def attributes(obj: Any, where: str) -> None:
        nonlocal total
        for name in obj.attrs:
            attribute = obj.attrs.get_id(name)
            total += size(attribute.shape, attribute.dtype)

    def refuse(what: str, where: str) -> None:
        raise InvalidInputError(f"{path.name} {what} at {where!r}; a posterior file holds its own numbers and "
                                f"strings only; refusing it")

    def walk(group: Any, prefix: str) -> None:
        nonlocal total
        attributes(group, prefix or "/")
        for name in group:
            where = f"{prefix}/{name}"
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                refuse(f"links to another file ({link.filename!r})", where)
            if isinstance(link, h5py.SoftLink):
                refuse("holds a soft link", where)
            item = group.get(name)
            if isinstance(item, h5py.Group):
                walk(item, where)
                continue
            if not isinstance(item, h5py.Dataset):
                refuse("holds an object that is neither group nor array", where)
            if item.external:
                refuse("stores an array in another file (HDF5 external storage)", where)
            if item.is_virtual:
                refuse("maps an array from other files (HDF5 virtual dataset)", where)
            dtype = item.dtype
            if dtype.kind not in "biuf" and h5py.check_string_dtype(dtype) is None:
                refuse(f"holds an array of type {dtype}", where)
            total += size(item.shape, dtype)
            attributes(item, where)
            if total > max_bytes:
                break

    try:
        with h5py.File(path, "r") as handle:
            walk(handle, "")
    except InvalidInputError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
        raise InvalidInputError(f"{path.name} cannot be read as HDF5 ({' '.join(str(error).split())[:160]}); "
                                f"expected a posterior written by bayes-defense fit") from None
    if total > max_bytes:
        raise InvalidInputError(f"{path.name} declares {total} bytes of arrays (or more), more than the {max_bytes} a "
                                f"posterior may use (bayes_defense.fitting.storage.MAX_POSTERIOR_BYTES); refusing it")
    return total


def save_posterior(posterior, path: str | os.PathLike[str]) -> Path:
    """Write ``posterior.to_inference_data()`` to NetCDF-4 at ``path`` (refusing a directory); return the path.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> save_posterior(object(), tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    bayes_defense.errors.InvalidInputError: cannot write the posterior to ...: it is a directory
    """
    path = Path(path)
    if path.exists() and path.is_dir():
        raise InvalidInputError(f"cannot write the posterior to {str(path)!r}: it is a directory")
    inference_data.to_netcdf(posterior.to_inference_data(), path)
    return path


def read_posterior_groups(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Every group of a posterior file as ``{name: xarray.Dataset}``, after checking it is NetCDF-4.

    Raises
    ------
    FileNotFoundError
        No such file.
    InvalidInputError
        A directory, or a file that is not NetCDF-4.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> bad = pathlib.Path(tempfile.mkdtemp()) / "x.nc"
    >>> _ = bad.write_bytes(b"not a netcdf file")
    >>> read_posterior_groups(bad)
    Traceback (most recent call last):
    ...
    bayes_defense.errors.InvalidInputError: x.nc is not a NetCDF-4 file (...); expected a posterior written by bayes-defense fit
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such posterior file: {str(path)!r}")
    if path.is_dir():
        raise InvalidInputError(f"{str(path)!r} is a directory; expected a posterior .nc file written by bayes-defense fit")
    with open(path, "rb") as handle:
        magic = handle.read(8)
    if magic != HDF5_SIGNATURE:
        kind = "a NetCDF-3 file" if magic[:3] == b"CDF" else f"starts with {magic[:4]!r}"
        raise InvalidInputError(f"{path.name} is not a NetCDF-4 file ({kind}); expected a posterior written by "
                                f"bayes-defense fit")
    check_hdf5_layout(path)
    try:
        return inference_data.read_netcdf_groups(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise InvalidInputError(f"{path.name} cannot be read as NetCDF-4 ({' '.join(str(error).split())[:200]}); "
                                f"expected a posterior written by bayes-defense fit") from None


def posterior_format(groups: dict[str, Any]) -> str | None:
    """The ``format`` attribute of the file's ``posterior`` group (None when it has none).

    Examples
    --------
    >>> posterior_format({}) is None
    True
    """
    posterior = groups.get("posterior")
    if posterior is None:
        return None
    found = posterior.attrs.get("format")
    return None if found is None else str(found)

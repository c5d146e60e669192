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

__all__ = ["HDF5_SIGNATURE", "save_posterior", "read_posterior_groups", "posterior_format"]

#: The first eight bytes of every HDF5 (NetCDF-4) file.
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


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
    try:
        return inference_data.read_netcdf_groups(path)
    except (OSError, ValueError) as error:
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

"""The one place that talks to ArviZ: conversion, diagnostics and NetCDF storage.

ArviZ 0.23 (the release pip resolves on Python 3.11) builds an
``InferenceData`` from keyword groups; ArviZ 1.x (Python 3.12 and later)
builds an xarray ``DataTree`` from one dict of groups. Every other module goes
through the functions here, so a change of ArviZ release touches this file
only. Only ``from_dict`` builds objects, as DESIGN.md asks.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["arviz_major", "from_groups", "summary", "to_netcdf", "read_netcdf_groups"]


def _arviz():
    with warnings.catch_warnings():
        # 0.23 announces its refactor with a FutureWarning at import.
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


def arviz_major() -> int:
    """The installed ArviZ major version (0 for 0.23, 1 for 1.x).

    Examples
    --------
    >>> arviz_major() in (0, 1)
    True
    """
    return int(str(_arviz().__version__).split(".")[0])


def from_groups(groups: Mapping[str, Mapping[str, np.ndarray]], *, dims: Mapping[str, list[str]],
                coords: Mapping[str, Any], attrs: Mapping[str, Any]) -> Any:
    """Build ArviZ data from ``{group: {variable: array}}`` through ``from_dict``.

    Posterior-like groups hold arrays of shape ``(chain, draw, *dims)``;
    ``observed_data`` holds arrays without sample dimensions. ``attrs`` are
    written on every group, so that any group identifies the file.

    Examples
    --------
    >>> data = from_groups({"posterior": {"mu": np.zeros((1, 5))}}, dims={}, coords={}, attrs={"a": "b"})
    >>> "posterior" in data.groups() if hasattr(data, "groups") else True
    True
    """
    az = _arviz()
    groups = {name: dict(values) for name, values in groups.items() if values}
    if arviz_major() == 0:
        data = az.from_dict(**groups, dims=dict(dims), coords=dict(coords), attrs=dict(attrs))
        for name in data.groups():
            data[name].attrs.update(dict(attrs))
        return data
    data = az.from_dict(groups, dims=dict(dims), coords=dict(coords))  # pragma: no cover - ArviZ 1.x
    for name in data.children:  # pragma: no cover - ArviZ 1.x
        data[name].attrs.update(dict(attrs))
    return data  # pragma: no cover - ArviZ 1.x


def summary(data: Any, var_names: list[str] | None = None, level: float = 0.9):
    """``az.summary`` with r_hat and bulk/tail ESS, as a pandas DataFrame.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> data = from_groups({"posterior": {"mu": rng.normal(size=(2, 200))}}, dims={}, coords={}, attrs={})
    >>> table = summary(data)
    >>> sorted(c for c in table.columns if c in ("r_hat", "ess_bulk", "ess_tail"))
    ['ess_bulk', 'ess_tail', 'r_hat']
    """
    az = _arviz()
    with warnings.catch_warnings():
        # Draws from a variational guide are independent; ArviZ may still warn on short chains.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        if arviz_major() == 0:
            return az.summary(data, var_names=var_names, hdi_prob=level, kind="all", round_to="none")
        return az.summary(data, var_names=var_names, ci_prob=level)  # pragma: no cover - ArviZ 1.x


def to_netcdf(data: Any, path: str | os.PathLike[str]) -> None:
    """Write ArviZ data to a NetCDF-4 (HDF5) file with the h5netcdf engine.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> data = from_groups({"posterior": {"mu": np.zeros((1, 3))}}, dims={}, coords={}, attrs={"k": "v"})
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "p.nc"
    >>> to_netcdf(data, path)
    >>> read_netcdf_groups(path)["posterior"].attrs["k"]
    'v'
    """
    if arviz_major() == 0:
        data.to_netcdf(str(path), engine="h5netcdf")
    else:  # pragma: no cover - ArviZ 1.x
        data.to_netcdf(str(path), engine="h5netcdf")


def read_netcdf_groups(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read every group of a NetCDF-4 file as ``{name: xarray.Dataset}``, fully loaded.

    Reading goes through h5netcdf (HDF5 data, never pickle), so a file can
    hold numbers and strings but no code. Raises ``OSError`` or
    ``ValueError`` on a file that is not NetCDF-4.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "p.nc"
    >>> to_netcdf(from_groups({"posterior": {"mu": np.ones((1, 2))}}, dims={}, coords={}, attrs={}), path)
    >>> float(read_netcdf_groups(path)["posterior"]["mu"].sum())
    2.0
    """
    import h5netcdf
    import xarray as xr

    with h5netcdf.File(str(path), "r") as handle:
        names = list(handle.groups)
    out = {}
    for name in names:
        with xr.open_dataset(str(path), group=name, engine="h5netcdf") as dataset:
            out[name] = dataset.load()
    return out

r"""Input conversion shared by the modules of :mod:`gpgeom.models.rvgp`: arrays and tensors as float64 numpy,
point indices checked against the cloud."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from gpgeom.geometry.point_cloud import as_points


def _numpy(x: object) -> np.ndarray:
    return np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=np.float64)


def _as_cloud(points: object, k_neighbors: int) -> np.ndarray:
    r"""The cloud as a float64 ``(n, D)`` array, one point per row, with more points than ``k_neighbors`` (the kNN
    graph needs ``n > k``). A cloud with too few rows is refused here, naming ``points``, its shape and, when its
    transpose would be a cloud the graph accepts (``D > n`` and ``D > k_neighbors``), the likely mistake: a
    ``D x n`` array such as ``points.T``. Clouds with ``n > k_neighbors`` rows pass whatever ``D``: a small cloud in
    many dimensions is legitimate."""
    X = as_points("points", points)
    n, D = X.shape
    if n <= k_neighbors:
        hint = (
            f" It looks transposed: {n} rows of {D} coordinates; pass the points as rows, e.g. `points.T`."
            if D > n and D > k_neighbors
            else " Pass more points or a smaller `k_neighbors`."
        )
        raise ValueError(
            f"`points` must be an (n, D) array with one point per row and more points than `k_neighbors`="
            f"{k_neighbors} (the kNN graph), got shape {X.shape}.{hint}"
        )
    return X


def _as_index(name: str, index: object, n: int) -> np.ndarray:
    arr = np.asarray(index.detach().cpu() if isinstance(index, Tensor) else index)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise ValueError(f"Boolean `{name}` must have shape ({n},), got {arr.shape}.")
        return np.flatnonzero(arr)
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be a 1-D array of point indices, got shape {arr.shape}.")
    if arr.size and not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"`{name}` must hold integer point indices, got dtype {arr.dtype}.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        # an absolute tolerance, as SpectralKernel's: a relative one accepted 299.002 as point 299
        if not np.all(np.isfinite(arr)) or not np.allclose(arr, np.round(arr), rtol=0.0, atol=1e-4):
            raise ValueError(f"`{name}` must hold integer point indices.")
    arr = np.round(arr).astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ValueError(
            f"`{name}` must lie in [0, {n - 1}] (the cloud has n={n} points), got [{arr.min()}, {arr.max()}]."
        )
    return arr

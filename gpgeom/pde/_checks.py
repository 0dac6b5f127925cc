r"""Input checks of the reference solvers of :mod:`gpgeom.pde` (numpy parameters and point sets)."""

from __future__ import annotations

import numpy as np

__all__ = ["as_params", "check_interval"]


def as_params(name: str, value: object, size: int) -> np.ndarray:
    r"""``value`` as a float64 vector of exactly ``size`` finite numbers (raises ``ValueError`` naming ``name``)."""
    arr = np.asarray(value, dtype=float).reshape(-1)
    if arr.size != size:
        raise ValueError(f"`{name}` must hold {size} number(s), got {arr.size} (shape {np.shape(value)}).")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` contains NaN or infinite values: {arr.tolist()}.")
    return arr


def check_interval(name: str, x: np.ndarray, lo: float, hi: float) -> None:
    r"""Raise ``ValueError`` unless every entry of ``x`` is finite and in ``[lo, hi]`` (up to 1e-12)."""
    if x.size and (not np.all(np.isfinite(x)) or x.min() < lo - 1e-12 or x.max() > hi + 1e-12):
        raise ValueError(
            f"`{name}` must lie in [{lo:g}, {hi:g}] (the domain), got values in "
            f"[{np.nanmin(x):.6g}, {np.nanmax(x):.6g}]{' and NaN/inf' if not np.all(np.isfinite(x)) else ''}."
        )

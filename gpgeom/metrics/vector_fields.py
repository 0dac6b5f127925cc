r"""Accuracy of predicted vector fields: the relative L2 error of the whole field and the angle between predicted
and true vectors, point by point.

Both take ``(m, D)`` numpy arrays or torch tensors (rows are points, columns the ambient components) of the same
shape, and compute in float64 on the CPU; NaN or infinite entries, other shapes and non-numeric input raise errors
that name the argument (:mod:`gpgeom.metrics._inputs`)."""

from __future__ import annotations

import numpy as np
import torch

from gpgeom.metrics._inputs import as_float64

__all__ = ["angular_errors", "relative_l2"]


def _fields(pred: object, true: object) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``pred`` and ``true`` as float64 CPU tensors, both ``(m, D)`` with the same shape."""
    p, t = as_float64(pred, "pred"), as_float64(true, "true")
    for name, x in (("pred", p), ("true", t)):
        if x.dim() != 2:
            raise ValueError(
                f"{name} must be an (m, D) array of vectors (one row per point), got shape {tuple(x.shape)}."
            )
    if p.shape != t.shape:
        raise ValueError(f"pred and true must have the same shape (m, D), got {tuple(p.shape)} and {tuple(t.shape)}.")
    return p, t


def relative_l2(pred: object, true: object) -> float:
    r""":math:`\|\hat V - V\|_F / \|V\|_F` of ``(m, D)`` arrays or tensors (``pred``: :math:`\hat V`, ``true``:
    :math:`V`, not zero everywhere)."""
    p, t = _fields(pred, true)
    scale = torch.linalg.norm(t)
    if scale == 0:
        raise ValueError("true is zero everywhere: the relative L2 error is undefined (report the absolute error).")
    return float(torch.linalg.norm(p - t) / scale)


def angular_errors(pred: object, true: object) -> np.ndarray:
    r"""Angles (degrees) between predicted and true vectors, ``(m,)`` numpy, of the rows of ``(m, D)`` arrays or
    tensors (a zero vector makes an angle of 90 degrees with any other)."""
    p, t = _fields(pred, true)
    num = (p * t).sum(-1)
    den = (torch.linalg.norm(p, dim=-1) * torch.linalg.norm(t, dim=-1)).clamp_min(np.finfo(float).tiny)
    return np.degrees(np.arccos(np.clip((num / den).numpy(), -1.0, 1.0)))

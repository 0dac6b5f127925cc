r"""Accuracy of predicted vector fields: the relative L2 error of the whole field and the angle between predicted
and true vectors, point by point.

Both take ``(m, D)`` numpy arrays or torch tensors (rows are points, columns the ambient components) of the same
shape, and compute in float64 on the CPU; NaN or infinite entries, other shapes and non-numeric input raise errors
that name the argument (:mod:`gpgeom.metrics._inputs`). Both are scale-invariant at every magnitude a float64 holds:
norms are taken of arrays divided by their largest absolute entry, so neither squares overflowing (entries above
about 1e154) nor squares underflowing (below about 1e-154) change the answer."""

from __future__ import annotations

import math

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


def _scaled_norms(x: torch.Tensor, dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""``(s, r, x / s)`` with :math:`\|x\|_2 = s\,r` over ``dim`` (all entries when ``None``): :math:`s = \max |x|`
    and :math:`r = \|x / s\|_2 \in [1, \sqrt{n}]`, so that no square over- or underflows (zero rows: ``s = r = 0``
    and ``x / s = 0``)."""
    a = x.abs()
    s = a.amax() if dim is None else a.amax(dim=dim, keepdim=True)
    u = x / torch.where(s > 0, s, torch.ones_like(s))
    r = torch.linalg.norm(u) if dim is None else torch.linalg.norm(u, dim=dim, keepdim=True)
    return s, r, u


def relative_l2(pred: object, true: object) -> float:
    r""":math:`\|\hat V - V\|_F / \|V\|_F` of ``(m, D)`` arrays or tensors (``pred``: :math:`\hat V`, ``true``:
    :math:`V`, not zero everywhere), each norm taken as :math:`\max|x|\cdot\|x / \max|x|\|_F`."""
    p, t = _fields(pred, true)
    s_t, r_t, _ = _scaled_norms(t)
    if s_t == 0:
        raise ValueError("true is zero everywhere: the relative L2 error is undefined (report the absolute error).")
    s_e, r_e, _ = _scaled_norms(p - t)
    return float((s_e / s_t) * (r_e / r_t))


def angular_errors(pred: object, true: object) -> np.ndarray:
    r"""Angles (degrees) between predicted and true vectors, ``(m,)`` numpy, of the rows of ``(m, D)`` arrays or
    tensors (a zero vector makes an angle of 90 degrees with any other, and with another zero vector).

    With the unit vectors :math:`a = \hat v / \|\hat v\|` and :math:`b = v / \|v\|` the angle is
    :math:`\theta = 2 \operatorname{atan2}(\|a - b\|, \|a + b\|)` (Kahan, "How futile are mindless assessments of
    roundoff in floating-point computation?", 2006, Sec. 12), exact to rounding at every angle; the textbook
    :math:`\arccos(a \cdot b)` loses half the digits near 0 and 180 degrees (an angle of 1e-9 rad came out 0).
    """
    p, t = _fields(pred, true)
    units = []
    for x in (p, t):
        _, r, u = _scaled_norms(x, dim=-1)
        units.append(u / torch.where(r > 0, r, torch.ones_like(r)))  # a zero row stays zero
    a, b = units
    theta = 2 * torch.atan2(torch.linalg.norm(a - b, dim=-1), torch.linalg.norm(a + b, dim=-1))
    zero = (p.abs().amax(dim=-1) == 0) | (t.abs().amax(dim=-1) == 0)
    return np.degrees(torch.where(zero, torch.full_like(theta, 0.5 * math.pi), theta).numpy())

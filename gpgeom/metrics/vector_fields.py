r"""Accuracy of predicted vector fields: the relative L2 error of the whole field and the angle between predicted
and true vectors, point by point.

Both take ``(m, D)`` numpy arrays or torch tensors (rows are points, columns the ambient components) and compute
in float64 numpy; unlike the calibration metrics of this package they do not check their inputs."""

from __future__ import annotations

import numpy as np
from torch import Tensor

__all__ = ["angular_errors", "relative_l2"]


def _numpy(x: object) -> np.ndarray:
    return np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=np.float64)


def relative_l2(pred: object, true: object) -> float:
    r""":math:`\|\hat V - V\|_F / \|V\|_F` for ``(m, D)`` arrays or tensors."""
    p, t = _numpy(pred), _numpy(true)
    return float(np.linalg.norm(p - t) / max(np.linalg.norm(t), np.finfo(float).tiny))


def angular_errors(pred: object, true: object) -> np.ndarray:
    r"""Angles (degrees) between predicted and true vectors, ``(m,)`` numpy (rows of ``(m, D)`` arrays or
    tensors)."""
    p, t = _numpy(pred), _numpy(true)
    num = np.einsum("ij,ij->i", p, t)
    den = np.maximum(np.linalg.norm(p, axis=1) * np.linalg.norm(t, axis=1), np.finfo(float).tiny)
    return np.degrees(np.arccos(np.clip(num / den, -1.0, 1.0)))

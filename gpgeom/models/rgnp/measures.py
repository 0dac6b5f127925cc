r"""The error measures of RGNP's predictions (:mod:`gpgeom.models.rgnp`): :func:`nse`, the normalised squared
error per field, and :func:`coverage`, the fraction of entries inside a band of ``k`` standard deviations.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["nse", "coverage"]


def _same_shape(what: str, *tensors: Tensor) -> None:
    shapes = [tuple(t.shape) for t in tensors]
    if len(set(shapes)) > 1:
        raise ValueError(
            f"`{what}` needs tensors of one shape (no broadcasting), got {', '.join(map(str, shapes))}; compare "
            "RGNP.predict's (B, n, 1) output with truth[..., None], or its [..., 0] with a (B, n) truth."
        )


def nse(mean: Tensor, truth: Tensor) -> Tensor:
    r"""Normalised squared error per field, :math:`(\|m - t\|_2 / \|t\|_2)^2`; its square root is the relative
    :math:`L_2` error.

    Args:
        mean, truth: Tensors of one shape: ``(B, n)`` or ``(B, n, m)`` (``B`` fields; the norm runs over all other
            dimensions, e.g. the ``(B, n, 1)`` output of :meth:`RGNP.predict`, or ``(B, dz)`` parameters), or
            ``(n,)`` for one field.

    Returns:
        ``(B,)`` (a scalar tensor for 1-D inputs).
    """
    _same_shape("nse(mean, truth)", mean, truth)
    dims = tuple(range(1, mean.dim())) if mean.dim() > 1 else (0,)
    return (torch.linalg.vector_norm(mean - truth, dim=dims) / torch.linalg.vector_norm(truth, dim=dims)) ** 2


def coverage(mean: Tensor, std: Tensor, truth: Tensor, k: float = 2.0) -> Tensor:
    r"""Fraction of entries with :math:`|t - m| \le k \sigma` over all entries of three tensors of one shape
    (points with :math:`\sigma = 0` count as covered only if the mean is exact)."""
    _same_shape("coverage(mean, std, truth)", mean, std, truth)
    return ((truth - mean).abs() <= k * std).to(mean.dtype).mean()

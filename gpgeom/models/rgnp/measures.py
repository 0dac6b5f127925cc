r"""The error measures of RGNP's predictions (:mod:`gpgeom.models.rgnp`): :func:`nse`, the normalised squared
error per field, and :func:`coverage`, the fraction of entries inside a band of ``k`` standard deviations.
"""

from __future__ import annotations

import math

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


def _scaled_norm(t: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    r"""``(s, r)`` with :math:`\|t\|_2 = s\,r` over ``dims``: :math:`s = \max|t|` and :math:`r = \|t / s\|_2 \in
    [1, \sqrt n]`, so that no square over- or underflows (a zero field: ``s = r = 0``)."""
    s = t.abs().amax(dim=dims, keepdim=True)
    r = torch.linalg.vector_norm(t / torch.where(s > 0, s, torch.ones_like(s)), dim=dims)
    s = s.reshape(r.shape)
    return s, torch.where(torch.isinf(s), torch.ones_like(r), r)  # an infinite entry: s = inf, r = 1 (inf / inf: NaN)


def _power_of_two_scale(mean: Tensor, truth: Tensor, dims: tuple[int, ...]) -> Tensor:
    r"""A power of two :math:`2^k \le \max(|m|, |t|)` per field (kept dims; 1 for a field zero, infinite or NaN):
    dividing by it is exact (short of subnormals) and leaves every entry of :math:`m` and :math:`t` below 2 in size,
    so that :math:`m - t` cannot overflow."""
    big = torch.maximum(mean.abs().amax(dim=dims, keepdim=True), truth.abs().amax(dim=dims, keepdim=True))
    ok = torch.isfinite(big) & (big > 0)
    _, k = torch.frexp(torch.where(ok, big, torch.ones_like(big)))  # big = f 2^k, f in [0.5, 1)
    return torch.where(ok, torch.exp2((k - 1).to(big.dtype)), torch.ones_like(big))


def nse(mean: Tensor, truth: Tensor) -> Tensor:
    r"""Normalised squared error per field, :math:`(\|m - t\|_2 / \|t\|_2)^2`; its square root is the relative
    :math:`L_2` error (:func:`gpgeom.metrics.vector_fields.relative_l2` of one field). 0 for an exact prediction;
    not the Nash-Sutcliffe efficiency :math:`1 - \|m - t\|^2 / \|t - \bar t\|^2`, which shares the abbreviation.

    Each norm is taken as :math:`\max|x| \cdot \|x / \max|x|\|_2`, after dividing both fields by a power of two
    near their largest entry, so fields of any magnitude the dtype holds give their value (the squares of a float32
    field of 1e-30 or 1e30 underflowed or overflowed to NaN, as did an error :math:`m - t` beyond the dtype's
    range). A prediction with an infinite entry gives :math:`\infty`, one with a NaN gives NaN. A field whose
    truth is zero everywhere gives 0 when the prediction is exact too (no error, whatever it is measured against),
    and a ``ValueError`` otherwise: the relative error of a zero field is undefined, as for
    :func:`~gpgeom.metrics.vector_fields.relative_l2` (report the absolute error, e.g.
    ``torch.linalg.vector_norm(mean - truth, dim=-1)``). Before, both were NaN and infinite, silently.

    Args:
        mean, truth: Tensors of one shape: ``(B, n)`` or ``(B, n, m)`` (``B`` fields; the norm runs over all other
            dimensions, e.g. the ``(B, n, 1)`` output of :meth:`RGNP.predict`, or ``(B, dz)`` parameters), or
            ``(n,)`` for one field.

    Returns:
        ``(B,)`` (a scalar tensor for 1-D inputs).

    Raises:
        ValueError: For tensors of different shapes or fields without entries (``(B, 0)``; no fields, ``(0, n)``,
            give an empty result); for a field whose ``truth`` is zero everywhere and whose ``mean`` is not (the
            message gives the fields).
    """
    _same_shape("nse(mean, truth)", mean, truth)
    dims = tuple(range(1, mean.dim())) if mean.dim() > 1 else (0,)
    if mean.dim() > 1 and mean.shape[0] == 0:
        return mean.new_zeros(0)  # no fields
    if mean.dim() > 0 and math.prod(mean.shape[k] for k in dims) == 0:
        raise ValueError(
            f"`mean` and `truth` need at least one entry per field, got shape {tuple(mean.shape)}: (B, n) or "
            "(B, n, m) with n, m > 0, or (n,) for one field."
        )
    zero = truth.abs().amax(dim=dims) == 0
    scale = _power_of_two_scale(mean, truth, dims)
    truth, mean = truth / scale, mean / scale  # exact: m - t cannot overflow (float32 (1e38, 3e38) - (-3e38, 1))
    s_t, r_t = _scaled_norm(truth, dims)
    s_e, r_e = _scaled_norm(mean - truth, dims)
    wrong = zero & (s_e > 0)
    if bool(wrong.any()):
        fields = wrong.reshape(-1).nonzero()[:, 0].tolist()
        shown = ", ".join(map(str, fields[:5])) + (f" and {len(fields) - 5} more" if len(fields) > 5 else "")
        raise ValueError(
            f"`truth` is zero everywhere in {len(fields)} field(s) (index {shown}) where `mean` is not: the "
            "normalised squared error of a zero field is undefined; report the absolute error there, e.g. "
            "torch.linalg.vector_norm(mean - truth, dim=-1)."
        )
    ratio = (s_e / torch.where(zero, torch.ones_like(s_t), s_t)) * (r_e / torch.where(zero, torch.ones_like(r_t), r_t))
    return ratio**2


def coverage(mean: Tensor, std: Tensor, truth: Tensor, k: float = 2.0) -> Tensor:
    r"""Fraction of entries with :math:`|t - m| \le k \sigma` over all entries of three tensors of one shape
    (points with :math:`\sigma = 0` count as covered only if the mean is exact)."""
    _same_shape("coverage(mean, std, truth)", mean, std, truth)
    return ((truth - mean).abs() <= k * std).to(mean.dtype).mean()

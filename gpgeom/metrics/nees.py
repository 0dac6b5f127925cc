r"""Normalized estimation error squared (NEES) and its chi-square consistency band.

For an estimator that reports a covariance :math:`P` with its estimate, the NEES of an error
:math:`e = x - \hat x \in \mathbb R^d` is :math:`\epsilon = e^\top P^{-1} e`; a consistent estimator (errors
zero-mean with covariance :math:`P`) gives :math:`\epsilon \sim \chi^2_d`, so :math:`\mathbb E\,\epsilon = d`. The
mean NEES of :math:`N` independent runs, :math:`\bar\epsilon`, satisfies :math:`N\bar\epsilon \sim \chi^2_{Nd}`, which
gives a two-sided acceptance band (Bar-Shalom, Li & Kirubarajan, 2001, "Estimation with Applications to Tracking and
Navigation", Wiley, Sec. 5.4.2).
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from gpgeom.metrics._inputs import as_float64, check_level

__all__ = ["nees", "nees_band"]


def nees(error, cov) -> torch.Tensor:
    r"""NEES :math:`\epsilon = e^\top P^{-1} e` of each error vector.

    Args:
        error: Estimation errors :math:`e`, shape ``(..., d)`` (numpy or torch).
        cov: Reported covariances :math:`P`, shape ``(..., d, d)``, symmetric positive definite: symmetric to 1e-8
            of its largest entry, or to 64 float32 rounding units (7.6e-6) for a ``cov`` in float32 or lower
            precision, whose rounding asymmetry is then averaged out (:math:`P` is taken as
            :math:`(P + P^\top)/2`). Batch dimensions broadcast with those of ``error`` when the result has the
            batch shape of one of them (errors of ``N`` runs against ``T`` covariances: ``(N, T, d)`` and
            ``(T, d, d)``), not when it is larger than both (``(n, d)`` against ``(n, 1, d, d)`` would score every
            error against every covariance).

    Returns:
        A float64 CPU tensor of the broadcast batch shape ``(...)``; its mean is ``d`` for a consistent estimator.

    Raises:
        ValueError: shapes that do not match or broadcast to a batch larger than both, NaN or infinite entries, or
            a ``cov`` that is not symmetric positive definite; the message names the argument.
    """
    cov_eps = _resolution(cov)
    e, p = as_float64(error, "error"), as_float64(cov, "cov")
    if e.ndim < 1:
        raise ValueError(f"error must have shape (..., d), got a scalar of shape {tuple(e.shape)}.")
    d = e.shape[-1]
    if p.ndim < 2 or p.shape[-1] != p.shape[-2]:
        raise ValueError(f"cov must have shape (..., d, d), got {tuple(p.shape)}.")
    if p.shape[-1] != d:
        raise ValueError(f"cov has shape {tuple(p.shape)} but error has d = {d} (shape {tuple(e.shape)}).")
    try:
        batch = torch.broadcast_shapes(e.shape[:-1], p.shape[:-2])
    except RuntimeError as exc:
        raise ValueError(
            f"the batch shapes of error {tuple(e.shape)} and cov {tuple(p.shape)} do not broadcast."
        ) from exc
    if tuple(batch) not in (tuple(e.shape[:-1]), tuple(p.shape[:-2])):
        raise ValueError(
            f"the batch shapes {tuple(e.shape[:-1])} of error {tuple(e.shape)} and {tuple(p.shape[:-2])} of cov "
            f"{tuple(p.shape)} broadcast to {tuple(batch)}, larger than both: that pairs every error with every "
            "covariance; give both the same batch shape (or one covariance of shape (d, d) for all errors)."
        )
    scale = p.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
    tol = max(1e-8, 64 * cov_eps)
    asym = float(((p - p.mT).abs() / scale).max())
    if asym > tol:
        raise ValueError(
            f"cov must be symmetric: |cov - cov^T| reaches {asym:.3g} times its largest entry, above {tol:.3g} "
            "(1e-8, or 64 rounding units of a float32 cov); symmetrise it as (cov + cov^T) / 2 if that is rounding."
        )
    p = 0.5 * (p + p.mT)  # what rounding left asymmetric counts from both triangles, not from the lower one only
    chol, info = torch.linalg.cholesky_ex(p)
    if bool((info != 0).any()):
        raise ValueError(f"cov is not positive definite ({int((info != 0).sum())} of its matrices fail Cholesky).")
    e = e.expand(*batch, d).unsqueeze(-1)
    chol = chol.expand(*batch, d, d)
    w = torch.linalg.solve_triangular(chol, e, upper=False)  # L^{-1} e, so that |w|^2 = e^T P^{-1} e
    return w.square().sum(dim=(-2, -1))


def _resolution(x) -> float:
    r"""Machine epsilon of the floating dtype ``x`` comes in, at most float32's (float64's for integers, and for
    anything :func:`as_float64` will refuse)."""
    try:
        dtype = x.dtype if isinstance(x, torch.Tensor) else np.asarray(x).dtype
    except Exception:  # ragged lists and the like: as_float64 names the problem
        return float(np.finfo(np.float64).eps)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        eps = float(torch.finfo(dtype).eps)
    elif isinstance(dtype, np.dtype) and dtype.kind == "f":
        eps = float(np.finfo(dtype).eps)
    else:
        eps = float(np.finfo(np.float64).eps)
    return min(eps, float(np.finfo(np.float32).eps))


def nees_band(dof: int, n_runs: int, level: float = 0.95) -> tuple[float, float]:
    r"""Two-sided ``level`` acceptance band of the mean NEES of ``n_runs`` independent runs.

    With :math:`N` = ``n_runs``, :math:`d` = ``dof`` and :math:`\chi^2_k(p)` the ``p`` quantile of the chi-square
    law with ``k`` degrees of freedom, :math:`N\bar\epsilon \sim \chi^2_{Nd}` under consistency, so the band

    .. math:: \big[\chi^2_{Nd}(\tfrac{1-\ell}{2}) / N,\ \chi^2_{Nd}(\tfrac{1+\ell}{2}) / N\big]

    contains :math:`\bar\epsilon` with probability ``level`` (Bar-Shalom, Li & Kirubarajan, 2001, Sec. 5.4.2).

    Args:
        dof: State dimension :math:`d`, a positive integer.
        n_runs: Number :math:`N` of independent runs averaged, a positive integer.
        level: Probability of the band, in (0, 1).

    Returns:
        ``(lo, hi)`` as Python floats, around ``dof``.
    """
    for name, v in (("dof", dof), ("n_runs", n_runs)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be a positive integer, got {type(v).__name__}.")
        if v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v}.")
    from scipy import stats  # imported on use: scipy.stats takes a second to import

    lv = check_level(level)
    k = int(dof) * int(n_runs)
    lo, hi = stats.chi2.ppf([0.5 * (1 - lv), 0.5 * (1 + lv)], k)
    return float(lo) / n_runs, float(hi) / n_runs

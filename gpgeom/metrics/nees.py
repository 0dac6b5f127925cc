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

import torch

from gpgeom.metrics._inputs import as_float64, check_level

__all__ = ["nees", "nees_band"]


def nees(error, cov) -> torch.Tensor:
    r"""NEES :math:`\epsilon = e^\top P^{-1} e` of each error vector.

    Args:
        error: Estimation errors :math:`e`, shape ``(..., d)`` (numpy or torch).
        cov: Reported covariances :math:`P`, shape ``(..., d, d)``, symmetric positive definite; batch dimensions
            broadcast with those of ``error``.

    Returns:
        A float64 CPU tensor of the broadcast batch shape ``(...)``; its mean is ``d`` for a consistent estimator.

    Raises:
        ValueError: shapes that do not match, NaN or infinite entries, or a ``cov`` that is not symmetric positive
            definite; the message names the argument.
    """
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
    scale = p.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
    if not bool(((p - p.mT).abs() <= 1e-8 * scale).all()):
        raise ValueError("cov must be symmetric: cov - cov^T exceeds 1e-8 times its largest entry.")
    chol, info = torch.linalg.cholesky_ex(p)
    if bool((info != 0).any()):
        raise ValueError(f"cov is not positive definite ({int((info != 0).sum())} of its matrices fail Cholesky).")
    e = e.expand(*batch, d).unsqueeze(-1)
    chol = chol.expand(*batch, d, d)
    w = torch.linalg.solve_triangular(chol, e, upper=False)  # L^{-1} e, so that |w|^2 = e^T P^{-1} e
    return w.square().sum(dim=(-2, -1))


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

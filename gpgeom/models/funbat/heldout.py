r"""FunBaT's Student-t noise fitted on held-out entries (``FunBaT(noise="student_t", scale_fit="heldout")``).

The in-sample fits of the noise (joint, cut, refit; :mod:`~gpgeom.models.funbat.scales`) see residuals of entries
that shaped the factors, which are smaller and less heavy-tailed than a new entry's error (on BeijingAir-PM2.5 the
training RMSE is 0.19 against a test RMSE of 0.24 after 30 sweeps on fold 4,
``benchmarks/results/funbat_stopping_trace.md``). ``"heldout"`` estimates the noise where it is used, on entries the
factors have not seen: a seeded fraction :data:`HELDOUT_FRACTION` of the observed entries is held out, the Gaussian
model is fitted to the rest, and the noise :math:`s^2 = \mathbb E[\tau^{-1}]` and degrees of freedom :math:`\nu` of
the predictive of a new entry,

.. math::
    p(y_i) = \int_0^\infty N\big(y_i;\ m_i,\ v_i + s^2/\lambda\big)\, \mathrm{Gamma}(\lambda; \nu/2, \nu/2)\,
    d\lambda,

(:math:`m_i, v_i` the latent mean and variance of held-out entry :math:`i`; the integral by the quadrature of
:mod:`~gpgeom.models.funbat.predictive`) maximise the mean held-out log density (:func:`heldout_noise_fit`): a
profile over :math:`\nu` on a log grid of :data:`~gpgeom.models.funbat.noise.DOF_BOUNDS` (or the fixed ``dof``),
each with :math:`\log s` by bounded Brent search, then the best :math:`\nu` refined between its grid neighbours. This
is cross-validated estimation of two hyperparameters of the predictive (the validation-set version of the
leave-one-out predictive criterion of Sundararajan & Keerthi, "Predictive approaches for choosing hyperparameters in
Gaussian processes", Neural Computation 13, 2001). The model is then the Gaussian fit on every observed entry (the
defaults' mean and latent variance) with that Student-t noise: a new entry's predictive is the scale mixture above.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import Tensor

from gpgeom.models.funbat.noise import DOF_BOUNDS
from gpgeom.models.funbat.predictive import scale_mixture_nodes

__all__ = ["HELDOUT_FRACTION", "heldout_noise_fit", "heldout_split"]

#: The fraction of the observed entries held out to fit the noise (``scale_fit="heldout"``).
HELDOUT_FRACTION = 0.1
#: The fewest held-out entries the fit accepts.
MIN_HELDOUT = 20


def heldout_split(n: int, seed: int, fraction: float = HELDOUT_FRACTION) -> tuple[Tensor, Tensor]:
    r"""Indices ``(fit, held)`` of a seeded random split of ``n`` entries, ``round(fraction n)`` held out.

    Raises:
        ValueError: Fewer than :data:`MIN_HELDOUT` held-out entries.
    """
    n_held = int(round(fraction * n))
    if n_held < MIN_HELDOUT:
        raise ValueError(
            f"scale_fit='heldout' holds out {fraction:g} of the observed entries and needs at least {MIN_HELDOUT} of "
            f"them, got {n} observed entries ({n_held} held out)."
        )
    perm = torch.from_numpy(np.random.default_rng([seed, 7]).permutation(n))
    return perm[n_held:], perm[:n_held]


def _mean_log_density(resid_sq: Tensor, latent_var: Tensor, s2: float, dof: float) -> float:
    r"""Mean over the entries of :math:`\log \sum_j w_j N(r_i; 0, v_i + s^2/\lambda_j)` (float64)."""
    lam, w = scale_mixture_nodes(dof, dtype=torch.float64, device=resid_sq.device)
    var = latent_var[:, None] + s2 / lam
    logn = -0.5 * (resid_sq[:, None] / var + var.log() + math.log(2.0 * math.pi))
    return float(torch.logsumexp(logn + w.log(), -1).mean())


def heldout_noise_fit(
    resid: Tensor, latent_var: Tensor, dof: float | None = None, *, n_grid: int = 24
) -> tuple[float, float, float]:
    r"""The noise variance :math:`s^2` and degrees of freedom :math:`\nu` of Student-t noise that maximise the mean
    log predictive density of held-out entries (module docstring).

    Args:
        resid: ``n`` held-out residuals :math:`y_i - m_i`.
        latent_var: ``n`` latent variances :math:`v_i \ge 0` at those entries.
        dof: Fixed degrees of freedom, or ``None`` to fit them within
            :data:`~gpgeom.models.funbat.noise.DOF_BOUNDS`.
        n_grid: Points of the log grid of :math:`\nu`.

    Returns:
        ``(s2, dof, nlpd)``: the noise variance, the degrees of freedom and the mean negative log density at them.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> r = 0.5 * torch.distributions.StudentT(4.0).sample((2000,))  # scale 0.5, 4 degrees of freedom
        >>> s2, nu, _ = heldout_noise_fit(r, torch.zeros(2000))
        >>> round(s2**0.5, 1), 3.0 < nu < 6.0
        (0.5, True)
    """
    r2 = resid.detach().to(torch.float64).square()
    v = latent_var.detach().to(torch.float64).clamp_min(0.0)
    if r2.numel() < 1 or r2.shape != v.shape:
        raise ValueError(f"`resid` and `latent_var` must be two tensors of one shape (n,), got {tuple(resid.shape)} "
                         f"and {tuple(latent_var.shape)}.")  # fmt: skip
    scale = max(float(r2.mean().sqrt()), 1e-12)
    lo, hi = math.log(scale) - 12.0, math.log(scale) + 2.0

    def best_scale(nu: float) -> tuple[float, float]:
        res = minimize_scalar(
            lambda ls: -_mean_log_density(r2, v, math.exp(2.0 * ls), nu),
            bounds=(lo, hi),
            method="bounded",
            options={"xatol": 1e-7},
        )
        return math.exp(2.0 * float(res.x)), float(res.fun)

    if dof is not None:
        s2, nlpd = best_scale(float(dof))
        return s2, float(dof), nlpd
    grid = np.exp(np.linspace(math.log(DOF_BOUNDS[0]), math.log(DOF_BOUNDS[1]), n_grid))
    fits = [best_scale(float(nu)) for nu in grid]
    k = int(np.argmin([f[1] for f in fits]))
    a, b = math.log(grid[max(k - 1, 0)]), math.log(grid[min(k + 1, n_grid - 1)])
    res = minimize_scalar(lambda ln: best_scale(math.exp(ln))[1], bounds=(a, b), method="bounded",
                          options={"xatol": 1e-4})  # fmt: skip
    nu = math.exp(float(res.x))
    s2, nlpd = best_scale(nu)
    if fits[k][1] < nlpd:  # the grid point itself (the refinement never loses to it)
        (s2, nlpd), nu = fits[k], float(grid[k])
    return s2, nu, nlpd

r"""The inverse posterior :math:`q_\beta` of :class:`~gpgeom.models.rgnp.model.RGNP` against the prior box of
:math:`z`: :math:`q_\beta` is a Gaussian, so its mean can leave the box that the uniform prior :math:`p(z)` is
supported on, where no posterior mean can lie. :func:`truncated_moments` gives the mean and standard deviation of
each marginal restricted to the box (the posterior :math:`\propto q_\beta(z)\,\mathbb 1_{\text{box}}(z)`, what
:meth:`~gpgeom.models.rgnp.model.RGNP.predict_inverse` returns with ``truncate=True``), and :func:`warn_outside_box`
the warning of a mean far outside it.

The moments of :math:`\mathcal N(\mu, \sigma^2)` truncated to :math:`[l, h]` in the standard variable
:math:`t = (z - \mu)/\sigma \in [a, b]` (reflected, :math:`t \to -t`, so that :math:`a + b \le 0`: the box lies
mostly in the lower tail, where :math:`\log\Phi` is accurate): by Gauss-Legendre quadrature (64 nodes) where
:math:`-t^2/2` varies by at most 50 over :math:`[a, b]` (e.g. a box narrow against :math:`\sigma`, where the closed
form cancels); by the asymptotic series of the inverse Mills ratio, :math:`E[t] = b - (1 - 2/x^2 + 10/x^4 -
\dots)/x`, :math:`\operatorname{Var} t = (1 - 6/x^2 + 50/x^4 - \dots)/x^2`, for :math:`x = -b > 30` (far in the
tail, e.g. a mean 1e6 from the box, where the closed form cancels); otherwise by the closed form (Johnson, Kotz &
Balakrishnan, "Continuous Univariate Distributions" 1, 2nd ed., Wiley 1994, Sec. 10.1): with :math:`Z = \Phi(b) -
\Phi(a)`, :math:`r_a = \phi(a)/Z`, :math:`r_b = \phi(b)/Z`, :math:`E[t] = r_a - r_b` and :math:`\operatorname{Var}
t = 1 + a r_a - b r_b - (r_a - r_b)^2`. Means are returned as offsets from the nearer bound, so they lie in the box.
Against the closed form in 400-digit arithmetic (``tests/test_rgnp_inverse_box.py``): means to 1e-10 of the box's
width, standard deviations to 1e-7 relative, for means from -1e6 to 1e6 and standard deviations from 1e-6 to 1e6.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gpgeom._warnings import user_stacklevel

__all__ = ["truncated_moments", "warn_outside_box", "OUTSIDE_SDS"]

#: How many of its own standard deviations :math:`q_\beta`'s mean may lie outside the prior box before
#: :meth:`~gpgeom.models.rgnp.model.RGNP.predict_inverse` warns: beyond 3, :math:`q_\beta` puts less than 0.14 % of
#: its mass in the box. On the toy :math:`u - z = 0` fields drawn from the prior never went beyond 2.7.
OUTSIDE_SDS = 3.0

_NODES, _WEIGHTS = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(64))


# x (r - x) and x^2 Var t in powers of y = 1/x^2, r = phi(-x) / Phi(-x) the inverse Mills ratio (from the series
# x R(x) = 1 - y + 3 y^2 - 15 y^3 + ... of the Mills ratio R, Abramowitz & Stegun 26.2.12)
_OFF_SERIES = (1.0, -2.0, 10.0, -74.0, 706.0, -8162.0, 110410.0)
_VAR_SERIES = (1.0, -6.0, 50.0, -518.0, 6354.0, -89782.0)


def _poly(coefficients: tuple[float, ...], y: Tensor) -> Tensor:
    r""":math:`\sum_k c_k y^k` by Horner's rule."""
    out = torch.full_like(y, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        out = out * y + c
    return out


def _standard_moments(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    r"""``(E[t] - b, Var t)`` of the standard normal truncated to ``[a, b]`` (float64, ``a < b``, ``a + b <= 0``)."""
    spread = torch.where(b <= 0, (a * a - b * b) / 2, a * a / 2)  # the range of -t^2/2 over [a, b]
    # quadrature on [a, b]: t = b - (b - a)(1 - u)/2, u the Legendre nodes
    u, wq = _NODES.to(a), _WEIGHTS.to(a)
    s = -(b - a)[..., None] * (1 - u) / 2  # t - b <= 0, (..., 64)
    t = b[..., None] + s
    logf = -t * t / 2
    f = wq * torch.exp(logf - logf.amax(-1, keepdim=True))
    mass = f.sum(-1)
    q_off = (f * s).sum(-1) / mass
    q_var = (f * (s - q_off[..., None]) ** 2).sum(-1) / mass
    # the asymptotic series far in the lower tail (x = -b > 30), in y = 1/x^2 (next terms: 1.7e6 y^7)
    x = (-b).clamp_min(30.0)
    y = 1 / (x * x)
    s_off = -_poly(_OFF_SERIES, y) / x
    s_var = y * _poly(_VAR_SERIES, y)
    # the closed form, Z in log space
    log_a, log_b = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    d = (log_a - log_b).clamp_max(-1e-300)
    log_z = log_b + torch.where(d > -math.log(2), torch.log(-torch.expm1(d)), torch.log1p(-torch.exp(d)))
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    ra = torch.exp(-a * a / 2 - half_log_2pi - log_z)
    rb = torch.exp(-b * b / 2 - half_log_2pi - log_z)
    c_off = (ra - rb) - b
    c_var = 1 + a * ra - b * rb - (ra - rb) ** 2
    quad = spread <= 50
    series = ~quad & (b < -30)
    off = torch.where(quad, q_off, torch.where(series, s_off, c_off))
    var = torch.where(quad, q_var, torch.where(series, s_var, c_var))
    return off, var.clamp_min(0)


def truncated_moments(mean: Tensor, std: Tensor, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    r"""Mean and standard deviation of :math:`\mathcal N(\mu, \sigma^2)` truncated to :math:`[l, h]`, elementwise.

    Args:
        mean, std: :math:`\mu` and :math:`\sigma > 0`, ``(B, d)``.
        lower, upper: The box, ``(d,)``, finite, ``lower < upper``.

    Returns:
        ``(mean, std)``, each ``(B, d)`` in the dtype of ``mean``; the means inside ``[lower, upper]``, the standard
        deviations at most half the box's width. Computed in float64 (module docstring).
    """
    mu, sd, lo, hi = (t.double() for t in torch.broadcast_tensors(mean, std, lower, upper))
    a, b = (lo - mu) / sd, (hi - mu) / sd
    flip = a + b > 0  # reflect t -> -t: [a, b] -> [-b, -a]
    a2, b2 = torch.where(flip, -b, a), torch.where(flip, -a, b)
    off, var = _standard_moments(a2, b2)
    # E[z] = hi + sd * off unreflected (b is hi's), lo - sd * off reflected (the reflected b is lo's)
    m = torch.where(flip, lo - sd * off, hi + sd * off)
    m = torch.minimum(torch.maximum(m, lo), hi)
    s = torch.minimum(sd * var.sqrt(), (hi - lo) / 2)
    return m.to(mean.dtype), s.to(mean.dtype)


def warn_outside_box(mean: Tensor, std: Tensor, lower: Tensor, upper: Tensor, names: Any = "z") -> None:
    r"""Warn when a mean ``(B, d)`` lies outside its box ``[lower, upper]`` (``(d,)``) by more than
    :data:`OUTSIDE_SDS` standard deviations ``std`` ``(B, d)``: naming the parameters, the box, the fields and the
    largest excursion, and what to do."""
    below, above = (lower - mean) / std, (mean - upper) / std
    excess = torch.maximum(below, above)  # > 0 outside the box, in sds
    far = excess > OUTSIDE_SDS
    if not bool(far.any()):
        return
    params = far.any(0).nonzero()[:, 0].tolist()
    rows = far.any(1).nonzero()[:, 0].tolist()
    shown = ", ".join(map(str, rows[:8])) + (", ..." if len(rows) > 8 else "")
    fields = f"{len(rows)} of {mean.shape[0]} field(s) (index {shown})"
    where = "; ".join(
        f"z[{j}] in [{float(lower[j]):.4g}, {float(upper[j]):.4g}]: mean {float(mean[far[:, j], j][0]):.4g}"
        for j in params[:4]
    )
    worst = float(excess[far].max())
    warnings.warn(
        f"RGNP.predict_inverse: the posterior mean of z lies outside the prior box by more than {OUTSIDE_SDS:g} of "
        f"its standard deviations (up to {worst:.3g}) in {fields}: {where}. q_beta is "
        "a Gaussian and its mean is not bounded by the prior, whose posterior mean always lies in the box; a mean "
        "far outside means a field unlike those the model was trained on. predict_inverse(..., truncate=True) gives "
        "the moments of q_beta restricted to the box.",
        UserWarning,
        stacklevel=user_stacklevel(),
    )

r"""Proper scores of Gaussian predictions: standardized errors, negative log predictive density, CRPS, interval width.

A prediction of entry :math:`i` is :math:`\mathcal N(\mu_i, \sigma_i^2)` and its target :math:`y_i`; every score is
averaged over all entries. NLPD (the logarithmic score) and CRPS are strictly proper scoring rules (Gneiting &
Raftery, 2007, "Strictly proper scoring rules, prediction, and estimation", JASA 102(477), Secs. 4.1-4.2): they are
minimised in expectation only by the true predictive distribution, so they reward calibration and sharpness at once.
"""

from __future__ import annotations

import math
import numbers

import torch

from gpgeom.metrics._inputs import as_float64, broadcast_gaussian, check_level, normal_quantile

__all__ = ["crps_gaussian", "interval_width", "nlpd", "pit_standardized_errors", "standardized_errors", "z_rms"]


def standardized_errors(y, mean, std) -> torch.Tensor:
    r"""Standardized errors :math:`z_i = (y_i - \mu_i) / \sigma_i`.

    For a calibrated Gaussian prediction the :math:`z_i` are standard normal.

    Args:
        y: Targets, any shape broadcasting with ``mean`` and ``std`` (numpy or torch).
        mean: Predictive means.
        std: Predictive standard deviations, ``> 0``.

    Returns:
        A float64 CPU tensor of the broadcast shape.
    """
    ty, tm, ts = broadcast_gaussian(y, mean, std, positive=True)
    return (ty - tm) / ts


def pit_standardized_errors(pit, eps: float = 1e-12) -> torch.Tensor:
    r"""Standardized errors of any continuous predictive distribution from its probability integral transform:
    :math:`z_i = \Phi^{-1}(F_i(y_i))`, with the PIT :math:`u_i = F_i(y_i)` clipped to :math:`[\epsilon, 1 - \epsilon]`
    (an observation in the far tail would give an infinite :math:`z`); so :math:`|z_i| \le -\Phi^{-1}(\epsilon)` in
    both tails, the upper one computed as :math:`-\Phi^{-1}(1 - u_i)`.

    For a Gaussian prediction this is :func:`standardized_errors`; for any calibrated prediction the :math:`z_i` are
    standard normal (the PIT is uniform; Gneiting, Balabdaoui & Raftery, 2007, JRSS B 69(2), Sec. 2), so their
    coverage of :math:`|z| \le z_{(1+\ell)/2}` is that of the model's own central intervals and their RMS is the z RMS
    of a non-Gaussian prediction (a scale mixture, a log-normal).

    Args:
        pit: Values of the predictive CDFs at the targets, in :math:`[0, 1]`, any shape (numpy or torch).
        eps: Clipping of the PIT, in :math:`(0, 0.5)` (``1e-12``: :math:`|z| \le 7.03`).

    Returns:
        A float64 CPU tensor of the shape of ``pit``.

    Raises:
        ValueError: ``pit`` outside :math:`[0, 1]`, or an ``eps`` outside :math:`(0, 0.5)`.
        TypeError: an ``eps`` that is not a number.
    """
    u = as_float64(pit, "pit")
    if bool(((u < 0) | (u > 1)).any()):
        raise ValueError(
            f"pit must lie in [0, 1] (CDF values), got values in [{float(u.min()):g}, {float(u.max()):g}]."
        )
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a number in (0, 0.5), got {type(eps).__name__} {eps!r}.")
    eps = float(eps)
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must be a number in (0, 0.5), got {eps!r}.")
    # Upper half through the symmetry Phi^{-1}(u) = -Phi^{-1}(1 - u): 1 - u is exact there (Sterbenz), while 1 - eps
    # rounds away eps's digits (a tail area 0.08 % off at eps = 1e-15, 11 % at 1e-16) and is 1 below 1.1e-16 (an
    # infinite z); so both tails are clipped at the same |z| = -Phi^{-1}(eps).
    upper = u > 0.5
    tail = torch.where(upper, 1.0 - u, u).clamp_min(float(eps))
    return torch.where(upper, -torch.special.ndtri(tail), torch.special.ndtri(tail))


def z_rms(y, mean, std) -> float:
    r"""Root mean square of the standardized errors, :math:`\sqrt{\tfrac1n \sum_i z_i^2}`.

    1 for calibrated predictions; above 1 the standard deviations are too small (over-confident), below 1 too large.
    Shapes as in :func:`standardized_errors`.
    """
    z = standardized_errors(y, mean, std)
    return float(z.square().mean().sqrt())


def nlpd(y, mean, std) -> float:
    r"""Mean negative log predictive density of Gaussian predictions:

    .. math:: \mathrm{NLPD} = \frac1n \sum_i \Big[\tfrac12 \log(2\pi\sigma_i^2) + \frac{(y_i-\mu_i)^2}{2\sigma_i^2}\Big]

    (the negated logarithmic score of Gneiting & Raftery, 2007, Sec. 4.1; lower is better, 1.4189 for standard
    normal targets scored by the standard normal). Shapes as in :func:`standardized_errors`; ``std > 0``.
    """
    ty, tm, ts = broadcast_gaussian(y, mean, std, positive=True)
    z = (ty - tm) / ts
    return float((0.5 * math.log(2 * math.pi) + ts.log() + 0.5 * z.square()).mean())


def crps_gaussian(y, mean, std) -> float:
    r"""Mean continuous ranked probability score of Gaussian predictions, in closed form:

    .. math:: \mathrm{CRPS}(\mathcal N(\mu,\sigma^2), y) = \int (F(x) - \mathbb 1\{x \ge y\})^2 \,dx
        = \sigma\Big[z\,(2\Phi(z) - 1) + 2\varphi(z) - \tfrac{1}{\sqrt\pi}\Big],\quad z = \frac{y-\mu}{\sigma}

    (Gneiting & Raftery, 2007, Sec. 4.2, with its sign reversed to a loss; the Gaussian form is from Gneiting,
    Raftery, Westveld & Goldman, 2005, Monthly Weather Review 133(5)). In the units of ``y``; lower is better.
    A zero standard deviation scores its limit, the absolute error :math:`|y - \mu|`.

    Args:
        y: Targets, any shape broadcasting with ``mean`` and ``std``.
        mean: Predictive means.
        std: Predictive standard deviations, ``>= 0``.
    """
    ty, tm, ts = broadcast_gaussian(y, mean, std, positive=False)
    err = ty - tm
    point = ts == 0
    s = torch.where(point, torch.ones_like(ts), ts)
    z = err / s
    normal = torch.distributions.Normal(torch.zeros((), dtype=z.dtype), torch.ones((), dtype=z.dtype))
    # sigma * z written as the error: z overflows to inf below sigma ~ |y - mu| * 1e-308, sigma * z would be inf
    crps = err * (2 * normal.cdf(z) - 1) + s * (2 * normal.log_prob(z).exp() - 1 / math.sqrt(math.pi))
    return float(torch.where(point, err.abs(), crps).mean())


def interval_width(std, level: float = 0.95) -> float:
    r"""Mean width :math:`\frac1n \sum_i 2 z_{(1+\ell)/2}\, \sigma_i` of the central ``level`` intervals
    (the sharpness of the predictions, in the units of the targets; 3.92 sigma at ``level = 0.95``).

    Args:
        std: Predictive standard deviations, any shape, ``>= 0``.
        level: Nominal probability of the interval, in (0, 1).
    """
    lv = check_level(level)
    ts = as_float64(std, "std")
    if bool((ts < 0).any()):
        raise ValueError(f"std must be >= 0 everywhere, got min {float(ts.min()):.3g}.")
    return float(2 * normal_quantile(lv) * ts.mean())

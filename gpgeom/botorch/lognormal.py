r"""Moments of a log-normal output, :math:`e^T` with :math:`T \sim \mathcal N(m, v)`, that stay finite wherever the
mean is: for models fitted to :math:`\log y` (FunBaT's ``target_transform="log"``, MMGP's log output scalars).

The standard deviation is :math:`e^{m + v/2} \sqrt{e^{v} - 1}` (``expm1`` for small :math:`v`), not the square root of
the textbook variance :math:`(e^{v} - 1) e^{2m + v}`, whose factor :math:`e^{2m + v}` overflows float32 above
:math:`e^T \approx 1.8 \cdot 10^{19}` (the standard deviation came out inf where the mean is finite). BoTorch's
``Log`` outcome transform and torch's ``LogNormal`` use the square; :class:`Log` is the transform with this form.
"""

from __future__ import annotations

from typing import Any

import torch
from botorch.models.transforms.outcome import Log as _BoTorchLog
from botorch.models.transforms.utils import norm_to_lognorm_mean
from botorch.posteriors.transformed import TransformedPosterior
from torch import Tensor

__all__ = ["Log", "lognormal_mean_std", "lognormal_variance"]


def lognormal_mean_std(mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
    r"""Mean :math:`e^{m + v/2}` and standard deviation :math:`e^{m + v/2} \sqrt{e^{v} - 1}` of :math:`e^{T}` for
    :math:`T \sim \mathcal N(m, v)` (module docstring).

    Args:
        mean: ``...`` means :math:`m`.
        var: ``...`` variances :math:`v` (negative rounding is taken as 0).

    Returns:
        ``(mean, std)``, shape ``...`` each.

    Example:
        >>> m, s = lognormal_mean_std(torch.tensor([0.0]), torch.tensor([1.0]))
        >>> round(float(m), 6), round(float(s), 6)  # e^{1/2}, sqrt((e - 1) e)
        (1.648721, 2.161197)
    """
    var = var.clamp_min(0.0)
    mean_y = torch.exp(mean + 0.5 * var)
    return mean_y, mean_y * torch.expm1(var).sqrt()


def lognormal_variance(mean: Tensor, var: Tensor) -> Tensor:
    r"""The variance of :math:`e^{T}`, :math:`T \sim \mathcal N(m, v)`: the square of :func:`lognormal_mean_std`'s
    standard deviation (``mean``, ``var`` of one shape ``...``; returns ``...``)."""
    return lognormal_mean_std(mean, var)[1].square()


class Log(_BoTorchLog):
    r"""BoTorch's ``Log`` outcome transform (a subclass, of that name: errors name it) whose untransformed posterior
    has the variance of :func:`lognormal_variance` (its mean and samples as BoTorch's): finite up to the dtype's
    largest value, where BoTorch's is inf above :math:`y \approx 1.8 \cdot 10^{19}` in float32."""

    def untransform_posterior(self, posterior: Any, X: Tensor | None = None) -> TransformedPosterior:
        return TransformedPosterior(
            posterior=posterior,
            sample_transform=torch.exp,
            mean_transform=norm_to_lognorm_mean,
            variance_transform=lognormal_variance,
        )

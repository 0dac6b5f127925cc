r"""FunBaT on :math:`\log y`: a log-normal likelihood for positive targets whose errors grow with their level.

With ``target_transform="log"`` the model is fitted to :math:`t = \log y` (Box & Cox 1964, the :math:`\lambda = 0`
member): concentrations, intensities and counts have multiplicative errors, which one noise level on :math:`y` fits
too loosely where :math:`y` is small and too tightly where it is large. Everything the model computes (the sweeps,
the ELBO, the noise, the factors) lives in :math:`t`; only the predictive is mapped back. A new entry's :math:`T_*`
has the predictive of :mod:`~gpgeom.models.funbat.predictive` (Gaussian, or a scale mixture of Gaussians for
Student-t noise), and :math:`Y_* = e^{T_*}` is monotone in :math:`T_*`, so

.. math::
    P(Y_* \le y) = P(T_* \le \log y), \qquad
    \log p_{Y}(y) = \log p_{T}(\log y) - \log y, \qquad
    Q_{Y}(q) = e^{Q_T(q)}

(the change of variables; :math:`P(Y_* \le y) = 0` for :math:`y \le 0`): quantiles, central intervals and the
probability integral transform are exact. The mean and standard deviation that ``predict`` reports are those of the
log-normal with the moment-matched Gaussian :math:`T_* \sim N(m, v)` (the Gaussian that ``predict`` and the BoTorch
adapter report in :math:`t`; Johnson, Kotz & Balakrishnan 1994, Ch. 14, Eq. (14.8a-b)):

.. math:: \mathbb E[Y_*] = e^{m + v/2}, \qquad \operatorname{Var}[Y_*] = \bigl(e^{v} - 1\bigr)\, e^{2m + v}.

(computed by :func:`gpgeom.botorch.lognormal.lognormal_mean_std`, finite wherever the mean is).

For Gaussian noise these are exact; for Student-t noise :math:`\mathbb E[e^{T_*}]` is infinite (a t distribution
has no moment generating function), so the moment-matched values are the only finite summary, and they grow without
bound as :math:`\nu \to 2` (the t variance :math:`s^2 \nu / (\nu - 2)`): there the median :math:`e^{m}`
(``predict_quantile(X, 0.5)``) is the point prediction to use.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from gpgeom._validation import squarable_range, within_rounding
from gpgeom._warnings import user_stacklevel

__all__ = [
    "TARGET_TRANSFORMS",
    "check_target_scale",
    "target_standardization",
    "to_model_target",
]

#: The target transforms of :class:`~gpgeom.models.funbat.model.FunBaT`: ``"none"`` and ``"log"`` (positive targets).
TARGET_TRANSFORMS = ("none", "log")


def to_model_target(y: Tensor, transform: str, name: str = "y") -> Tensor:
    r"""The values the model is fitted to: ``y`` itself, or :math:`\log y` for ``"log"`` (NaN, a missing entry, stays
    NaN).

    Args:
        y: ``N`` values, original units.
        transform: One of :data:`TARGET_TRANSFORMS`.
        name: The argument's name, for the error.

    Returns:
        ``N`` values in the model's units.

    Raises:
        ValueError: ``"log"`` with an observed value ``<= 0``.
    """
    if transform == "none":
        return y
    bad = y <= 0  # NaN compares False: missing entries pass
    if bool(bad.any()):
        raise ValueError(
            f"`{name}` must be > 0 with target_transform='log' (the model is fitted to log {name}), got "
            f"{int(bad.sum())} value(s) <= 0 (smallest {float(y[bad].min()):g})."
        )
    return y.log()


def target_standardization(y: Tensor, eps: float | None = None) -> tuple[Tensor, Tensor]:
    r"""The mean and scale (0-d tensors of ``y``'s dtype) that ``standardize=True`` maps the observed targets ``y``
    (``N``, finite, in the units the model is fitted to; float64 for a model of any dtype,
    :mod:`~gpgeom.models.funbat.inputs`) with: :math:`(y - \bar y) / s`.

    :math:`s` is the sample standard deviation, floored at the targets' rounding scale
    :math:`\varepsilon \max_i |y_i|` (``eps``: that of the finer of the dtype ``y`` was given in and the model's;
    ``None``: that of ``y``'s dtype): targets constant to rounding (an exactly constant
    ``y`` has :math:`s = 0`) are scaled by that rounding scale, so the model stays scale-equivariant (``c y``
    predicts ``c`` times the mean and the standard deviation) and predicts the constant with a standard deviation
    below its rounding; a ``UserWarning`` says so. Without a scale to take (every target exactly zero, or a single
    observed entry) :math:`s = 1`: the predictive standard deviation is then set by the priors in the units of
    ``y``, which a ``UserWarning`` says, with the remedy.
    """
    one = torch.ones((), dtype=y.dtype, device=y.device)
    mean = y.mean()
    if y.shape[0] < 2:
        warnings.warn(
            "FunBaT is fitted to a single observed entry: `y` is centred but cannot be scaled, so the predictive "
            "standard deviation is set by the priors in the units of `y` (pass more entries, or rescale `y` to "
            "about unit size).",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
        return mean, one
    floor = (torch.finfo(y.dtype).eps if eps is None else eps) * y.abs().max()
    if not bool(floor > 0):
        warnings.warn(
            "Every observed entry of `y` is zero: there is no scale to standardise by, so the model predicts zero "
            "with a standard deviation set by the priors in the units of `y`.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
        return mean, one
    std = y.std()
    if bool(std < floor):
        warnings.warn(
            f"The observed entries of `y` are constant to rounding (standard deviation {float(std):.3g} below "
            f"eps * max|y| = {float(floor):.3g}): they are standardised by that rounding scale, so the model "
            "predicts the constant with a standard deviation at that scale.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
        return mean, floor
    return mean, std


def check_target_scale(y: Tensor, scale: Tensor, dtype: torch.dtype, transform: str = "none") -> None:
    r"""Refuse targets whose standardisation scale :math:`s` has a square outside the normal range of the model's
    ``dtype``: the sweeps run on standardised values, but every predictive variance (``predict``, the intervals, the
    CDF and density, the BoTorch adapter) is :math:`s^2` times a standardised one in ``dtype``. Supported:
    :math:`\sqrt{\text{tiny}} \cdot 16 \le s \le \sqrt{\text{max}} / 16` (float32: 1.7e-18 to 1.2e18; float64: 2.4e-153
    to 8.4e152). Beyond, a float32 model of targets of about 1e20 (:math:`s \approx 3.5 \cdot 10^{19}`) predicted a
    standard deviation of inf, intervals of -inf, a CDF of 0.5 and NaN log densities, silently.

    Args:
        y: ``N`` observed targets in the units the model is fitted to (:math:`\log y` for ``"log"``), float64.
        scale: :math:`s` (0-d), from :func:`target_standardization`. Targets constant to rounding (:math:`s` the
            rounding floor, above their own standard deviation), or to the rounding of ``dtype`` (a standard deviation
            within 64 ulps of :math:`\max |y|` in ``dtype``, :func:`gpgeom._validation.within_rounding`), are left
            to that function's warning at the small end.
        dtype: The model's dtype.
        transform: The target transform, for the message.

    Raises:
        ValueError: Naming ``y``, its scale and the supported range.
    """
    lo, hi = squarable_range(dtype)
    s = float(scale)
    # one entry, constant to rounding (s the floor), or a spread within the rounding of the model's dtype (float32
    # targets of 1e-12 a few ulps apart): no spread of its own
    floored = y.shape[0] < 2 or bool(y.std() < scale) or within_rounding(float(y.std()), float(y.abs().max()), dtype)
    if s > hi or (s < lo and not floored):
        units = " of log y" if transform == "log" else ""
        hint = "" if dtype == torch.float64 else ", or use dtype=torch.float64"
        raise ValueError(
            f"`y`: the observed targets{units} have a standard deviation of {s:.3g}; the model's variances are "
            f"squares of that, outside the range of {dtype}, which supports scales in [{lo:.2g}, {hi:.2g}]. Rescale "
            f"y (divide by its typical size and multiply the predictions back){hint}."
        )

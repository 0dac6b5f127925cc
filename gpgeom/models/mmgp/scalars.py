r"""Output-scalar transforms of MMGP's GP stage: a GP on :math:`\log w` for positive output scalars.

Peak quantities of a linear problem (a maximum stress, a compliance) are positive, scale with the load and have
errors that grow with their size; a GP with a constant noise level on :math:`w` fits their small values too loosely
and their large ones too tightly. With ``"log"`` the GP regresses :math:`t = \log w` (Box & Cox 1964, the
:math:`\lambda = 0` member), and its Gaussian predictive :math:`t \sim \mathcal N(m, v)` (latent variance plus the
learned noise) is a log-normal one for :math:`w` (Johnson, Kotz & Balakrishnan 1994, Ch. 14, Eq. (14.8a-b)):

.. math:: \mathbb E[w] = e^{m + v/2}, \qquad \operatorname{Var}[w] = \bigl(e^{v} - 1\bigr)\, e^{2m + v},

and a Monte Carlo draw is :math:`e^{m + \sqrt v\,\varepsilon}`. ``"none"`` keeps the scalar as is.

The log-normal is skewed (to the right), so :math:`\mathbb E[w] \pm 1.96 \sqrt{\operatorname{Var}[w]}` is not its
95 % interval (its lower end can even be negative). Its quantiles are those of :math:`t` mapped by :math:`\exp`
(a monotone map; Johnson, Kotz & Balakrishnan 1994, Ch. 14, Sec. 2): the equal-tailed ``level`` interval is

.. math:: \bigl[e^{m - z\sqrt v},\; e^{m + z\sqrt v}\bigr], \qquad z = \Phi^{-1}\bigl(\tfrac{1 + \ell}{2}\bigr),

which holds :math:`w` exactly when the Gaussian interval :math:`m \pm z \sqrt v` holds :math:`\log w`
(:func:`predictive_interval`, :func:`predictive_distributions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, Normal
from torch.distributions import LogNormal as _TorchLogNormal

from gpgeom._validation import squarable_range, within_rounding
from gpgeom.botorch.lognormal import lognormal_mean_std
from gpgeom.metrics._inputs import check_level, normal_quantile
from gpgeom.models.mmgp.unexplained import ROUNDING

__all__ = [
    "SCALAR_TRANSFORMS",
    "check_scalar_spread",
    "check_scalar_transform",
    "lognormal_moments",
    "predictive_distributions",
    "predictive_interval",
    "resolve_transforms",
    "scalar_prediction",
    "to_gp_units",
]

#: The output-scalar transforms: ``"none"`` and ``"log"`` (for scalars whose training values are all > 0).
SCALAR_TRANSFORMS = ("none", "log")


def check_scalar_transform(value: object) -> str | list[str]:
    r"""Validate ``MMGP(scalar_transform=...)``: ``"log"``, ``"none"`` or a sequence of them (one per scalar)."""
    if isinstance(value, str):
        if value not in SCALAR_TRANSFORMS:
            raise ValueError(
                f"`scalar_transform` must be one of {SCALAR_TRANSFORMS} or a sequence of them, got {value!r}."
            )
        return value
    if not isinstance(value, Sequence) or not all(isinstance(v, str) and v in SCALAR_TRANSFORMS for v in value):
        raise TypeError(f"`scalar_transform` must be one of {SCALAR_TRANSFORMS} or a sequence of them, got {value!r}.")
    return list(value)


def resolve_transforms(option: str | list[str], w: Tensor, names: Sequence[str]) -> list[str]:
    r"""The transform of every output scalar, ``q`` strings, from the training scalars ``w`` ``n x q``.

    ``"log"`` as one string applies to the scalars whose training values are all positive (the others keep
    ``"none"``); a sequence names one transform per scalar, and ``"log"`` on a scalar with a value ``<= 0`` is an
    error naming it.
    """
    q = w.shape[1]
    if isinstance(option, str):
        return ["log" if option == "log" and bool((w[:, j] > 0).all()) else "none" for j in range(q)]
    if len(option) != q:
        raise ValueError(f"`scalar_transform` needs one entry per output scalar ({q}), got {len(option)}.")
    for j, t in enumerate(option):
        if t == "log" and not bool((w[:, j] > 0).all()):
            raise ValueError(f"`scalar_transform`='log' needs positive values of output scalar {names[j]!r}.")
    return list(option)


def check_scalar_spread(w: Tensor, transforms: Sequence[str], names: Sequence[str], dtype: torch.dtype) -> None:
    r"""Raise a ``ValueError`` naming the output scalar when the spread :math:`d = \max_i |t_i - \bar t|` of its GP
    targets :math:`t` (:func:`to_gp_units` of the training scalars ``w`` ``n x q``: :math:`\log w` for ``"log"``) has
    a square outside the normal range of the model's ``dtype``, as
    :func:`~gpgeom.models.mmgp.reduction.check_field_spread` for the fields: the GP standardises its targets in
    float64, but its predictive variances are squares in the scalar's units, in ``dtype``. Supported:
    :math:`\sqrt{\text{tiny}} \cdot 16 \le d \le \sqrt{\text{max}} / 16` (float32: 1.7e-18 to 1.2e18). Beyond, a
    float32 model of a scalar varying by 1e20 predicted ``scalars_std`` inf and intervals of -inf, silently. A scalar
    equal on every mesh (to float64 rounding) is not checked, nor, at the small end, one equal to the rounding of the
    model's ``dtype`` (``d`` within 64 ulps of its largest value: float32 scalars of 1e-12 an ulp apart)."""
    lo, hi = squarable_range(dtype)
    t = to_gp_units(w, transforms, names)
    for j, name in enumerate(names):
        col = t[:, j]
        d, size = float((col - col.mean()).abs().max()), float(col.abs().max())
        if d <= ROUNDING * size:  # equal on every mesh: no variance to square
            continue
        # equal on every mesh to the model's rounding (e.g. float32 values 1e-12 apart by an ulp): as constant
        in_rounding = within_rounding(d, size, dtype)
        if d > hi or (d < lo and not in_rounding):
            units = "log of output scalar" if transforms[j] == "log" else "output scalar"
            hint = "" if dtype == torch.float64 else ", or use dtype=torch.float64"
            raise ValueError(
                f"`output_scalars`: the {units} {name!r} varies by up to {d:.3g} over the training meshes (max |w - "
                f"mean|); the model's variances are squares of that, outside the range of {dtype}, which supports "
                f"spreads in [{lo:.2g}, {hi:.2g}]. Rescale the scalar (divide by its typical size and multiply the "
                f"predictions back){hint}."
            )


def to_gp_units(w: Tensor, transforms: Sequence[str], names: Sequence[str] | None = None) -> Tensor:
    r"""The GP targets of the output scalars ``w`` ``n x q``: :math:`\log w_j` for the ``"log"`` columns (which must
    be positive: a ValueError names the scalar, from ``names``, otherwise)."""
    if "log" not in transforms:
        return w
    for j, t in enumerate(transforms):
        if t == "log" and not bool((w[:, j] > 0).all()):
            label = repr(names[j]) if names is not None else str(j)
            raise ValueError(
                f"Output scalar {label} is modelled on the log scale (scalar_transform 'log', chosen at fit), so its "
                f"values must be > 0, got min {float(w[:, j].min()):.3g}."
            )
    cols = [w[:, j].log() if t == "log" else w[:, j] for j, t in enumerate(transforms)]
    return torch.stack(cols, 1) if cols else w


def _moments(
    mean: Tensor, var: Tensor, transforms: Sequence[str], eps: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    r""":func:`lognormal_moments` with the standard deviation ``n x q`` in place of the variance."""
    std = var.clamp_min(0.0).sqrt()
    draws = None if eps is None else mean + std * eps
    if "log" not in transforms:
        return mean, std, draws
    log = torch.tensor([t == "log" for t in transforms], device=mean.device)
    ln_mean, ln_std = lognormal_mean_std(mean, var)
    if draws is not None:
        draws = torch.where(log, draws.exp(), draws)
    return torch.where(log, ln_mean, mean), torch.where(log, ln_std, std), draws


def lognormal_moments(
    mean: Tensor, var: Tensor, transforms: Sequence[str], eps: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    r"""Back to the scalars' units: predictive mean, variance and draws of ``q`` scalars from the GP's Gaussian
    moments ``mean``, ``var`` ``n x q`` (GP units) and standard normal draws ``eps`` ``S x n x q`` (or ``None``).

    Returns ``(mean n x q, var n x q, draws S x n x q or None)``: log-normal moments (module docstring) for the
    ``"log"`` columns, unchanged otherwise; draws :math:`m + \sqrt v\,\varepsilon` (then :math:`\exp` for ``"log"``).
    The log-normal variance is the square of the std :math:`e^{m + v/2} \sqrt{e^v - 1}` (finite up to the dtype's
    largest value; :func:`scalar_prediction` keeps the std itself).
    """
    out_mean, std, draws = _moments(mean, var, transforms, eps)
    if "log" not in transforms:
        return out_mean, var, draws
    log = torch.tensor([t == "log" for t in transforms], device=mean.device)
    return out_mean, torch.where(log, std.square(), var), draws


def scalar_prediction(
    mean: Tensor, var: Tensor, transforms: Sequence[str], eps: Tensor, *, return_std: bool
) -> dict[str, Any]:
    r"""The scalar entries of an :class:`~gpgeom.models.mmgp.MMGPPrediction` from the GP's Gaussian moments
    ``mean``, ``var`` ``n x q`` (GP units; ``var`` zeros when the GP gave none) and standard normal draws ``eps``
    ``S x n x q`` (``S = 0``: no draws).

    Returns the keyword arguments ``scalars``, ``scalars_std`` (``return_std``), ``scalar_samples`` (``S > 0``),
    ``scalars_gp_mean``, ``scalars_gp_var`` (``return_std``) and ``scalar_transforms``: the moments of
    :func:`lognormal_moments` and the Gaussian ones they come from, which keep the predictive distribution.
    """
    s_mean, s_std, s_draws = _moments(mean, var, transforms, eps)
    return {
        "scalars": s_mean,
        "scalars_std": s_std if return_std else None,
        "scalar_samples": s_draws if eps.shape[0] else None,
        "scalars_gp_mean": mean,
        "scalars_gp_var": var if return_std else None,
        "scalar_transforms": list(transforms),
    }


def predictive_interval(
    mean: Tensor, var: Tensor, transforms: Sequence[str], level: float = 0.95
) -> tuple[Tensor, Tensor]:
    r"""Equal-tailed ``level`` predictive intervals of ``q`` scalars from the GP's Gaussian moments ``mean``, ``var``
    ``n x q`` (GP units).

    Returns ``(lower, upper)``, each ``n x q``: :math:`m \pm z \sqrt v` for the ``"none"`` columns and the exact
    log-normal quantiles :math:`e^{m \pm z \sqrt v}` for the ``"log"`` ones (module docstring), with
    :math:`z = \Phi^{-1}((1 + \ell)/2)`. Each bound is a quantile, of probability :math:`(1 \mp \ell)/2`.
    Raises a ValueError (TypeError) for a ``level`` outside ``(0, 1)`` (not a number).
    """
    z = normal_quantile(check_level(level))
    half = z * var.clamp_min(0.0).sqrt()
    lower, upper = mean - half, mean + half
    if "log" not in transforms:
        return lower, upper
    log = torch.tensor([t == "log" for t in transforms], device=mean.device)
    return torch.where(log, lower.exp(), lower), torch.where(log, upper.exp(), upper)


def predictive_distributions(mean: Tensor, var: Tensor, transforms: Sequence[str]) -> list[Distribution]:
    r"""The predictive distribution of each of ``q`` scalars from the GP's Gaussian moments ``mean``, ``var``
    ``n x q`` (GP units): a :class:`torch.distributions.Normal` (``"none"``) or
    :class:`~torch.distributions.LogNormal` (``"log"``: :math:`\log w \sim \mathcal N(m, v)`) of batch shape
    ``(n,)`` per scalar, ``q`` in all. Their ``mean`` and ``stddev`` are the moments of :func:`lognormal_moments`,
    their ``icdf`` the bounds of :func:`predictive_interval`, their ``log_prob`` the predictive density of
    :math:`w` (for a log-normal, the Gaussian density of :math:`\log w` over :math:`w`).
    """
    scale = var.clamp_min(0.0).sqrt()
    kinds = {"log": LogNormal, "none": Normal}
    return [kinds[t](mean[:, j], scale[:, j]) for j, t in enumerate(transforms)]


class LogNormal(_TorchLogNormal):
    r"""torch's :class:`~torch.distributions.LogNormal` (a subclass, of that name) with the standard deviation and
    variance of :func:`~gpgeom.botorch.lognormal.lognormal_mean_std` (torch's square :math:`e^{2m + v}` overflows
    float32 above :math:`w \approx 1.8 \cdot 10^{19}`: ``stddev`` was inf where ``mean`` and ``scalars_std`` are
    finite)."""

    @property
    def stddev(self) -> Tensor:
        return lognormal_mean_std(self.loc, self.scale.square())[1]

    @property
    def variance(self) -> Tensor:
        return self.stddev.square()

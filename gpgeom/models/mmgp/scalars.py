r"""Output-scalar transforms of MMGP's GP stage: a GP on :math:`\log w` for positive output scalars.

Peak quantities of a linear problem (a maximum stress, a compliance) are positive, scale with the load and have
errors that grow with their size; a GP with a constant noise level on :math:`w` fits their small values too loosely
and their large ones too tightly. With ``"log"`` the GP regresses :math:`t = \log w` (Box & Cox 1964, the
:math:`\lambda = 0` member), and its Gaussian predictive :math:`t \sim \mathcal N(m, v)` (latent variance plus the
learned noise) is a log-normal one for :math:`w` (Johnson, Kotz & Balakrishnan 1994, Ch. 14, Eq. (14.8a-b)):

.. math:: \mathbb E[w] = e^{m + v/2}, \qquad \operatorname{Var}[w] = \bigl(e^{v} - 1\bigr)\, e^{2m + v},

and a Monte Carlo draw is :math:`e^{m + \sqrt v\,\varepsilon}`. ``"none"`` keeps the scalar as is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["SCALAR_TRANSFORMS", "check_scalar_transform", "lognormal_moments", "resolve_transforms", "to_gp_units"]

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


def lognormal_moments(
    mean: Tensor, var: Tensor, transforms: Sequence[str], eps: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    r"""Back to the scalars' units: predictive mean, variance and draws of ``q`` scalars from the GP's Gaussian
    moments ``mean``, ``var`` ``n x q`` (GP units) and standard normal draws ``eps`` ``S x n x q`` (or ``None``).

    Returns ``(mean n x q, var n x q, draws S x n x q or None)``: log-normal moments (module docstring) for the
    ``"log"`` columns, unchanged otherwise; draws :math:`m + \sqrt v\,\varepsilon` (then :math:`\exp` for ``"log"``).
    """
    draws = None if eps is None else mean + var.clamp_min(0.0).sqrt() * eps
    if "log" not in transforms:
        return mean, var, draws
    log = torch.tensor([t == "log" for t in transforms], device=mean.device)
    ln_mean = torch.exp(mean + 0.5 * var)
    ln_var = torch.expm1(var) * torch.exp(2.0 * mean + var)
    if draws is not None:
        draws = torch.where(log, draws.exp(), draws)
    return torch.where(log, ln_mean, mean), torch.where(log, ln_var, var), draws

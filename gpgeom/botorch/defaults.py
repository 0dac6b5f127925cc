r"""The default components of :class:`~gpgeom.botorch.exact_gp.ExactGPModel`: kernel, likelihood, input and
outcome transforms.

The default priors assume standardised outputs and inputs scaled to the unit cube, which is what the two default
transforms produce: :func:`default_input_transform` maps the training inputs' bounding box (each batch member's own)
onto ``[0, 1]^d`` and :func:`default_outcome_transform` standardises every output.
:func:`default_covar_module` (a Matern 5/2 ARD kernel with the dimension-scaled lengthscale prior) and
:func:`default_likelihood` (Gaussian noise) set their priors and constraints for that scale.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any

import torch
from botorch.models.transforms.input import Normalize
from botorch.models.transforms.outcome import Standardize
from gpytorch.constraints import GreaterThan
from gpytorch.kernels import ScaleKernel
from gpytorch.likelihoods import GaussianLikelihood
from gpytorch.priors import LogNormalPrior
from torch import Tensor

from gpgeom._warnings import user_stacklevel
from gpgeom.botorch._local import bound, current
from gpgeom.kernels.stationary import DifferenceMaternKernel

__all__ = [
    "MemberNormalize",
    "RoundingFloorStandardize",
    "default_covar_module",
    "default_input_transform",
    "default_likelihood",
    "default_outcome_transform",
]

#: Smallest inferred noise variance of the default likelihood (standardised outputs).
MIN_NOISE = 1e-4


def default_covar_module(d: int, batch_shape: torch.Size | None = None) -> ScaleKernel:
    r"""The default kernel: ``ScaleKernel(MaternKernel(nu=2.5, ARD))`` for inputs in the unit cube (GPyTorch's
    Matern kernel as :class:`~gpgeom.kernels.stationary.DifferenceMaternKernel`: its distances without the float32
    cancellation of GPyTorch's expansion).

    Priors (for standardised outputs and inputs scaled to ``[0, 1]^d``): lengthscales
    ``LogNormal(sqrt(2) + log(d) / 2, sqrt(3))`` (the dimension-scaled prior of Hvarfner et al., 2024), constrained
    to ``>= 0.025`` and started at the prior mode; outputscale ``LogNormal(0, 1)`` (median 1, the variance of
    standardised data), constrained to ``>= 1e-4`` and started at 1. Constraints have no transform, so L-BFGS-B
    sees them as bounds.

    Args:
        d: The input dimension (number of lengthscales).
        batch_shape: The kernel's batch shape (``batch_shape x m`` for separate hyperparameters per output).

    Returns:
        A ``ScaleKernel`` with ``base_kernel.lengthscale`` of shape ``batch_shape x 1 x d``.
    """
    batch_shape = torch.Size() if batch_shape is None else torch.Size(batch_shape)
    ls_prior = LogNormalPrior(loc=math.sqrt(2.0) + 0.5 * math.log(d), scale=math.sqrt(3.0))
    base = DifferenceMaternKernel(  # GPyTorch's Matern kernel, its distances without cancellation in float32
        nu=2.5,
        ard_num_dims=d,
        batch_shape=batch_shape,
        lengthscale_prior=ls_prior,
        lengthscale_constraint=GreaterThan(2.5e-2, transform=None, initial_value=ls_prior.mode),
    )
    return ScaleKernel(
        base,
        batch_shape=batch_shape,
        outputscale_prior=LogNormalPrior(loc=0.0, scale=1.0),
        outputscale_constraint=GreaterThan(1e-4, transform=None, initial_value=1.0),
    )


def default_likelihood(batch_shape: torch.Size | None = None) -> GaussianLikelihood:
    r"""The default likelihood: Gaussian noise with a ``LogNormal(-4, 1)`` prior, ``>= 1e-4``, started at its mode.

    Args:
        batch_shape: The likelihood's batch shape.

    Returns:
        A ``GaussianLikelihood`` whose ``noise`` has shape ``batch_shape x 1``.
    """
    batch_shape = torch.Size() if batch_shape is None else torch.Size(batch_shape)
    prior = LogNormalPrior(loc=-4.0, scale=1.0)
    return GaussianLikelihood(
        noise_prior=prior,
        batch_shape=batch_shape,
        noise_constraint=GreaterThan(MIN_NOISE, transform=None, initial_value=prior.mode),
    )


class MemberNormalize(Normalize):
    r"""``Normalize`` with bounds per batch member (``batch_shape x 2 x d``) for a batched model of ``m > 1``
    outputs, whose training inputs BoTorch holds as ``batch_shape x m x n x d``.

    Bounds of shape ``batch_shape x 2 x d`` broadcast with test inputs (``... x batch_shape x q x d``), but with
    the training inputs' output dimension they would be paired with the outputs (``batch_shape`` against
    ``batch_shape[1:] x m``). Inputs in that layout (``... x batch_shape x m x n x d``) are therefore transformed
    with their output dimension moved in front of the batch dimensions: those of ``preprocess_transform`` (the
    training inputs, BoTorch's ``eval()``), of the transform in train mode (the model's ``forward`` and the MLL in
    fit) and within :meth:`training_layout` (BoTorch's ``condition_on_observations``, which transforms the new
    points after adding their output dimension); other inputs (test points, ``... x batch_shape x q x d``) as
    ``Normalize`` does. ``num_outputs`` is the model's ``m`` (``subset_output`` updates it). Made for
    :class:`~gpgeom.botorch.exact_gp.ExactGPModel`, whose ``condition_on_observations`` enters
    :meth:`training_layout`; another BoTorch model's would transform its new points as test points.
    """

    def __init__(self, d: int, bounds: Tensor, num_outputs: int) -> None:
        super().__init__(d=d, bounds=bounds)
        #: The model's number of outputs ``m``: the size of the training inputs' output dimension.
        self.num_outputs = num_outputs

    def _members_first(self, fn: Any, X: Tensor, fewer_batch_dims: bool = False) -> Tensor:
        r"""``fn(X)`` for training inputs ``... x batch_shape x m x n x d``: with ``m`` moved to the front.

        ``fewer_batch_dims`` (within :meth:`training_layout`, whose inputs are always in that layout): also inputs
        ``batch' x m x n x d`` with fewer batch dimensions than the bounds (``batch'`` broadcast with
        ``batch_shape``, e.g. new points ``n' x d`` given without the model's batch, which BoTorch makes
        ``m x n' x d``): size-1 dimensions stand for the missing ones, and the result is ``batch_shape x m x n x d``
        (each member's points by its own bounds; ``m`` would otherwise be paired with ``batch_shape``)."""
        k, m = len(self.batch_shape), self.num_outputs
        if m > 1 and X.dim() >= (3 if fewer_batch_dims else k + 3) and X.shape[-3] == m:
            X = X.movedim(-3, 0)  # m x batch' x n x d
            X = X.reshape(X.shape[:1] + (1,) * (k + 3 - X.dim()) + X.shape[1:])  # batch' at least k dimensions
            return fn(X).movedim(0, -3)
        return fn(X)

    def preprocess_transform(self, X: Tensor) -> Tensor:
        r"""The training inputs ``X`` (``batch_shape x m x n x d``) transformed, each member by its own bounds."""
        return self._members_first(super().preprocess_transform, X)

    def training_layout(self) -> contextlib.AbstractContextManager[None]:
        r"""Within it, in this thread, ``forward`` takes its inputs in the training layout
        (``... x batch_shape x m x n x d``) also in eval mode."""
        return bound(self, "training_layout", True)

    def forward(self, X: Tensor) -> Tensor:
        r"""In train mode or within :meth:`training_layout` (inputs ``... x batch_shape x m x n x d``) each member by
        its own bounds; otherwise test inputs ``... x batch_shape x q x d`` as ``Normalize``."""
        if self.training or current(self, "training_layout", False):
            return self._members_first(super().forward, X, fewer_batch_dims=not self.training)
        return super().forward(X)


def default_input_transform(train_X: Tensor, num_outputs: int = 1) -> Normalize:
    r"""The default input transform: ``Normalize`` with the fixed bounds of ``train_X`` (columns min/max) onto the
    unit cube, as BoTorch recommends; a constant column gets width 1.

    A batched model scales each batch member by its own points, so that it equals the batch of separate models (a
    batch of leave-one-out folds, as ``botorch.cross_validation.batch_cross_validation`` builds, must not see the
    held-out point through the bounds). With several outputs, whose training inputs BoTorch holds as
    ``batch_shape x m x n x d``, the transform is a :class:`MemberNormalize`, which pairs the bounds with the batch
    members there too.

    Args:
        train_X: ``batch_shape x n x d`` training inputs.
        num_outputs: The model's number of outputs ``m``.

    Returns:
        A ``Normalize(d, bounds)`` (a :class:`MemberNormalize` for ``m > 1`` and a batch) whose ``bounds``
        (``batch_shape x 2 x d``) do not move when the model is conditioned.
    """
    X = train_X.detach()
    lo, hi = X.amin(-2), X.amax(-2)  # batch_shape x d
    hi = torch.where(hi > lo, hi, lo + 1.0)
    bounds = torch.stack([lo, hi], dim=-2)
    if num_outputs > 1 and X.dim() > 2:
        return MemberNormalize(d=train_X.shape[-1], bounds=bounds, num_outputs=num_outputs)
    return Normalize(d=train_X.shape[-1], bounds=bounds)


class RoundingFloorStandardize(Standardize):
    r"""``Standardize`` whose floor on an output's standard deviation is the output's rounding scale.

    An output whose ``n >= 2`` training values vary by less than their rounding, standard deviation below
    :math:`\varepsilon \max_i |y_i|` (``eps`` of the dtype; an exactly constant output has 0), is scaled by that
    rounding scale instead of BoTorch's fallback 1 (``min_stdv``). The fallback made the predicted std absolute,
    set by the priors and the noise floor in the output's own units whatever its size (the same for a constant
    of 3.7 and of 3.7 * 2^20; BoTorch's ``SingleTaskGP`` with ``Standardize`` behaves alike, as the BoTorch page's
    executed cell shows), while values varying by 1e-15 relative got a std of about 1e-15. With the floor the
    model is scale-equivariant (``s y`` predicts ``s`` times the mean and std) and continuous in the variation:
    the mean is the constant and the std, at the learned noise floor, about :math:`10^{-2} \varepsilon |c|`,
    below the constant's own rounding, finite. A ``UserWarning`` names the outputs. Exactly zero outputs (no
    scale) and ``n = 1`` keep the scale 1, as BoTorch: their std is set by the priors in the output's units (all
    zero: a warning of its own). ``constant_outputs`` records whether either case occurred, for
    :class:`~gpgeom.botorch.ExactGPModel` to leave out BoTorch's then misleading "not standardized" warning.
    In eval mode it applies the stored means and scales, as ``Standardize``. (``posterior(X).variance`` is clamped
    below at GPyTorch's ``min_variance``, 1e-10 in float64, as for any output in tiny units; ``predict`` is not.)
    """

    def forward(self, Y: Tensor, Yvar: Tensor | None = None, X: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        r"""``(Y - mean) / scale`` and ``Yvar / scale^2`` for ``Y``, ``Yvar`` ``batch_shape x n x m`` (``X``: not
        used); in train mode the means and scales are fitted to ``Y`` first (the floor above)."""
        if not self.training or Y.shape[-2] < 2:
            return super().forward(Y, Yvar, X)
        super().forward(Y, Yvar, X)  # fits the means, and scale 1 where the std is below min_stdv
        floor = torch.finfo(Y.dtype).eps * Y.detach().abs().amax(dim=-2, keepdim=True)  # batch x 1 x m
        low = (Y.detach().std(dim=-2, keepdim=True) < floor) & (floor > 0)
        zero = floor == 0
        if self._outputs is not None:
            others = [i for i in range(self._m) if i not in self._outputs]
            low[..., others] = False
            zero[..., others] = False
        #: whether some output is constant (floored, or exactly zero): the standardised data are then not of unit
        #: variance, which this transform has explained (ExactGPModel skips BoTorch's standardisation warning)
        self.constant_outputs = bool(low.any()) or bool(zero.any())
        if bool(zero.any()):
            where = zero.nonzero().tolist()
            outputs = sorted({r[-1] for r in where})
            members = f" (batch members {sorted({tuple(r[:-2]) for r in where})})" if zero.dim() > 2 else ""
            warnings.warn(
                f"Output(s) {outputs}{members} of the training data are all zero: they are kept in their units "
                "(no scale to take), so the predicted standard deviation is set by the priors in those units.",
                UserWarning,
                stacklevel=user_stacklevel(),
            )
        if bool(low.any()):
            self.stdvs = torch.where(low, floor, self.stdvs)
            self._stdvs_sq = self.stdvs.pow(2)
            where = low.nonzero().tolist()  # (batch..., 0, output) rows
            outputs = sorted({r[-1] for r in where})
            members = f" (batch members {sorted({tuple(r[:-2]) for r in where})})" if low.dim() > 2 else ""
            warnings.warn(
                f"Output(s) {outputs}{members} of the training data are constant to rounding (standard deviation below "
                f"eps * max|y|, e.g. {float(floor[low].max()):.3g}): they are standardised by that rounding scale, "
                "not by their spread, so the model predicts the constant with a standard deviation at that scale.",
                UserWarning,
                stacklevel=user_stacklevel(),
            )
        means, stdvs, stdvs_sq = self._get_per_input_means_stdvs(X=X, include_stdvs_sq=Yvar is not None)
        return (Y - means) / stdvs, (Yvar / stdvs_sq if Yvar is not None else None)


def default_outcome_transform(m: int, batch_shape: torch.Size) -> Standardize:
    r"""The default outcome transform: every output standardised to mean 0 and variance 1
    (:class:`RoundingFloorStandardize`).

    BoTorch's ``Standardize`` leaves an output unscaled when its standard deviation is below ``min_stdv`` (1e-8
    by default), so outputs measured in tiny units (a displacement in km, a probability of 1e-10) kept their raw
    scale and met the likelihood's noise floor of 1e-4: a GP on ``Y * 1e-9`` predicted a constant. Here an output
    is scaled by its spread, floored at its rounding scale :math:`\varepsilon \max |y|`; only an exactly zero output
    (or a single training point) is left unscaled.
    """
    return RoundingFloorStandardize(m=m, batch_shape=batch_shape, min_stdv=torch.finfo(torch.float64).tiny)

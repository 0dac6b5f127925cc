r"""GPyTorch's Matern and RBF kernels with distances computed from the differences of the inputs.

GPyTorch computes the distances of its stationary kernels by the expansion
:math:`\lVert a - b\rVert^2 = \lVert a\rVert^2 + \lVert b\rVert^2 - 2 a^\top b` (``gpytorch.kernels.kernel.sq_dist``;
``torch.cdist``'s default mode, which ``dist`` uses, switches to the same expansion above 25 points). For two points
:math:`r` lengthscales from the inputs' mean the expansion has an absolute error of about :math:`\epsilon r^2`: in
float32, on inputs in the unit cube with the default kernel's smallest lengthscale 0.025 (:math:`r` up to 20 per
dimension), the squared distances of neighbouring points are off by ~5e-5 per dimension, kernel entries by as much,
which is the default likelihood's noise floor (1e-4). A float32 exact GP conditioned on new data
(``condition_on_observations``, ``fantasize``, which run on GPyTorch's kernel evaluations) then met a covariance that
was not positive definite, was factorised with jitter up to 1e-4 and returned variances 100% off (negative ones
clamped to 1e-6).

:class:`DifferenceMaternKernel` and :class:`DifferenceRBFKernel` are those kernels with
:meth:`~gpytorch.kernels.Kernel.covar_dist` computed by ``torch.cdist``'s direct mode (from the differences; one
``n x m`` result, no ``n x m x d`` tensor, differentiable), whose error is relative to the distance itself. Their
values, parameters, priors and state dicts are GPyTorch's; :func:`gpgeom.botorch.defaults.default_covar_module`
builds its kernel with them.
"""

from __future__ import annotations

import torch
from gpytorch.kernels import MaternKernel, RBFKernel
from torch import Tensor

__all__ = ["DifferenceMaternKernel", "DifferenceRBFKernel", "difference_distances"]


def difference_distances(x1: Tensor, x2: Tensor) -> Tensor:
    r"""Euclidean distances ``b x n x m`` between the rows of ``x1`` (``b x n x d``) and ``x2`` (``b x m x d``),
    computed from the differences (``torch.cdist``'s direct mode: one ``n x m`` result, no ``n x m x d`` tensor,
    differentiable), not by the expansion whose error the module docstring gives."""
    return torch.cdist(x1, x2, compute_mode="donot_use_mm_for_euclid_dist")


class _DifferenceDistance:
    r"""Mixin: :meth:`covar_dist` from the differences of the inputs (module docstring)."""

    def covar_dist(
        self,
        x1: Tensor,
        x2: Tensor,
        diag: bool = False,
        last_dim_is_batch: bool = False,
        square_dist: bool = False,
        **params,
    ) -> Tensor:
        r"""Distances (``square_dist``: squared) ``... x n x m`` between the rows of ``x1`` and ``x2`` (``... x n
        x d``, ``... x m x d``), ``... x d x n x m`` with ``last_dim_is_batch``, or ``... x n`` with ``diag``;
        GPyTorch's semantics, computed without the quadratic expansion."""
        if diag:  # GPyTorch's diagonal is computed from the differences already
            return super().covar_dist(x1, x2, diag=diag, last_dim_is_batch=last_dim_is_batch,  # type: ignore[misc]
                                      square_dist=square_dist, **params)  # fmt: skip
        if (
            last_dim_is_batch
        ):  # each input dimension its own batch (... x d x n x 1), as GPyTorch; it used the expansion
            x1, x2 = x1.transpose(-1, -2).unsqueeze(-1), x2.transpose(-1, -2).unsqueeze(-1)
        batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2])
        x1 = x1.expand(batch + x1.shape[-2:])
        x2 = x2.expand(batch + x2.shape[-2:])
        res = difference_distances(x1, x2)
        # GPyTorch's floor on the distance (its gradient at zero distance); the squared distance is floored at 0
        return res.square() if square_dist else res.clamp_min(1e-15)


class DifferenceMaternKernel(_DifferenceDistance, MaternKernel):
    r""":class:`gpytorch.kernels.MaternKernel` with distances from the differences of the inputs (module docstring);
    the same arguments."""


class DifferenceRBFKernel(_DifferenceDistance, RBFKernel):
    r""":class:`gpytorch.kernels.RBFKernel` with distances from the differences of the inputs (module docstring);
    the same arguments."""

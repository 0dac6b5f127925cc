r"""Gaussian posteriors from point-major joint moments, and the selection of outputs from them.

BoTorch's ``output_indices`` asks a posterior for some outputs, in the order given. The adapters that cannot get
them from the model directly in that order (an ``ExactGPModel`` with an outcome transform: BoTorch's batched
posterior untransforms the selected outputs with the transform's first statistics, not those of the outputs
selected; a :class:`~gpgeom.botorch.model_list.SurrogateList`, whose members hold the outputs in groups) compute the
joint of all outputs and take the rows of the selected ones here.

Shapes: means ``batch x q x m``, joint covariances ``batch x (q m) x (q m)`` with row ``i m + a`` for output ``a``
at point ``i`` (point-major, the layout of :func:`gpgeom.botorch.check.joint_moments`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from botorch.posteriors import GPyTorchPosterior
from gpytorch.distributions import MultitaskMultivariateNormal, MultivariateNormal
from linear_operator import to_linear_operator
from torch import Tensor

__all__ = ["gaussian_posterior", "output_rows", "refuse_empty_batch", "select_outputs"]


def refuse_empty_batch(X: Tensor, m: int) -> None:
    r"""ValueError naming ``X`` when a posterior of ``m > 1`` outputs is asked at a ``batch x q x d`` input whose
    batch shape holds a 0: GPyTorch's ``MultitaskMultivariateNormal`` cannot be built with an empty batch (its
    ``reshape(..., -1)`` of 0 elements is ambiguous: BoTorch's ``SingleTaskGP`` fails there with a RuntimeError too).
    An empty ``q`` (``batch x 0 x d``) and one output are fine."""
    if m > 1 and X.dim() > 2 and 0 in X.shape[:-2]:
        raise ValueError(
            f"`X` has an empty batch dimension (shape {tuple(X.shape)}): a posterior of {m} outputs cannot hold a "
            "batch of size 0 (GPyTorch's multi-task Gaussian cannot be built with one); skip the call, or pass an "
            "empty q instead (`batch x 0 x d`)."
        )


def output_rows(q: int, m: int, outputs: Sequence[int], device: torch.device | None = None) -> Tensor:
    r"""Rows ``i m + a`` of the joint covariance for the outputs ``a`` in ``outputs`` (in that order) at every point
    ``i < q``: a long tensor of ``q * len(outputs)`` rows, point-major."""
    points = torch.arange(q, device=device)[:, None] * m
    return (points + torch.tensor(list(outputs), dtype=torch.long, device=device)).reshape(-1)


def gaussian_posterior(mean: Tensor, cov: Tensor) -> GPyTorchPosterior:
    r"""The ``GPyTorchPosterior`` of mean ``batch x q x k`` and point-major covariance ``batch x (q k) x (q k)``:
    a ``MultivariateNormal`` for ``k = 1``, else an interleaved ``MultitaskMultivariateNormal``."""
    cov = to_linear_operator(cov)
    if mean.shape[-1] == 1:
        return GPyTorchPosterior(MultivariateNormal(mean[..., 0], cov))
    return GPyTorchPosterior(MultitaskMultivariateNormal(mean, cov, interleaved=True))


def select_outputs(mean: Tensor, cov: Tensor, outputs: Sequence[int]) -> tuple[Tensor, Tensor]:
    r"""The joint moments of the outputs ``outputs`` (indices into the ``m`` of ``mean``, in that order, repeats
    allowed) from those of all outputs: mean ``batch x q x k`` and covariance ``batch x (q k) x (q k)``,
    ``k = len(outputs)``.

    Args:
        mean: ``batch x q x m`` means.
        cov: ``batch x (q m) x (q m)`` point-major covariance.
        outputs: The outputs to keep.
    """
    q, m = mean.shape[-2], mean.shape[-1]
    rows = output_rows(q, m, outputs, device=mean.device)
    return mean[..., list(outputs)], cov[..., rows[:, None], rows]

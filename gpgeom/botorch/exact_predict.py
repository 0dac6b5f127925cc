r"""The prediction algebra of :class:`~gpgeom.botorch.exact_gp.ExactGPModel`: exact GP posterior moments from the
Cholesky factor of the training covariance, in chunks of test points.

The training data enter through ``(L, alpha)`` (:func:`training_factor`): the lower Cholesky factor ``L`` of the
noisy training covariance ``K + noise`` and ``alpha = (K + noise)^{-1} (y - mu)``, which the model keeps between
calls. At test inputs, :func:`posterior_moments` forms the mean ``K* alpha`` and the variances or the covariance
``K** - V^T V`` with ``V = L^{-1} K*^T``, a chunk of test points at a time (never GPyTorch's ``(n + q) x (n + q)``
joint kernel). Dense kernel matrices are built in row blocks (:func:`kernel_matrix`), in place for the kernels of
:func:`~gpgeom.engine.exact_mll.stationary_kernel_matrix` (:func:`dense_kernel`), and chunks are sized from the
working bytes of one test point (:func:`bytes_per_test_point`) and the memory budget of
:mod:`gpgeom.engine.chunking`.

All tensors are in the model's transformed units (inputs after the input transform, outputs after the outcome
transform), with the outputs as a batch dimension: ``batch`` below is ``batch_shape x m`` when ``m > 1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from gpytorch.kernels import Kernel
from gpytorch.likelihoods import Likelihood
from gpytorch.means import Mean
from linear_operator import to_dense
from linear_operator.utils.cholesky import psd_safe_cholesky
from torch import Tensor

from gpgeom.engine.chunking import chunk_size_for, chunk_slices, element_size, solve_lower_folded, sub_gram
from gpgeom.engine.exact_mll import stationary_kernel_matrix, stationary_kind

__all__ = [
    "bytes_per_test_point",
    "dense_kernel",
    "kernel_matrix",
    "posterior_moments",
    "training_factor",
]

#: Blocks alive at once per dense kernel block while a chunk is evaluated: GPyTorch's Matern 5/2 evaluation holds
#: five; the in-place evaluation of :func:`~gpgeom.engine.exact_mll.stationary_kernel_matrix` two, and the
#: cross-covariance, its solve and their square then three (the working memory of one test point against ``n``
#: points is ``blocks x n`` elements per batch member and output).
_KERNEL_BLOCKS, _STATIONARY_BLOCKS = 5, 3


def bytes_per_test_point(covar_module: Kernel, train_X: Tensor, test_batch: tuple[int, ...] = ()) -> int:
    r"""Working bytes per test point of a chunk: kernel temporaries of one row against the ``n`` training points for
    every member of the batch of :func:`posterior_moments`, ``broadcast(test_batch, batch)``.

    Args:
        covar_module: The kernel (three blocks per row for the kernels of
            :func:`~gpgeom.engine.exact_mll.stationary_kernel_matrix`, five for others).
        train_X: The ``batch x n x d`` training inputs (batch shape, ``n`` and dtype).
        test_batch: The batch shape of the test inputs as :func:`posterior_moments` gets them, in GPyTorch's
            layout: with the output dimension (``test_batch_shape x 1`` or ``test_batch_shape x m``) when ``m > 1``.

    Returns:
        The number of bytes.
    """
    batch = torch.broadcast_shapes(tuple(test_batch), train_X.shape[:-2])
    blocks = _STATIONARY_BLOCKS if stationary_kind(covar_module) else _KERNEL_BLOCKS
    return blocks * math.prod(batch) * train_X.shape[-2] * element_size(train_X.dtype)


def dense_kernel(covar_module: Kernel, X1: Tensor, X2: Tensor | None = None) -> Tensor:
    r"""``covar_module(X1, X2)`` (``X2=None``: ``covar_module(X1)``) as a dense tensor; without gradients, for
    the kernels of :func:`~gpgeom.engine.exact_mll.stationary_kernel_matrix`, in place (three blocks alive)."""
    K = None if torch.is_grad_enabled() else stationary_kernel_matrix(covar_module, X1, X2)
    return to_dense(covar_module(X1) if X2 is None else covar_module(X1, X2)) if K is None else K


def kernel_matrix(
    covar_module: Kernel,
    X1: Tensor,
    X2: Tensor,
    rows: int,
    update: Callable[[Tensor, slice], Tensor] | None = None,
) -> Tensor:
    r"""The dense kernel matrix ``batch x q1 x q2`` between ``X1`` and ``X2`` (``X2 is X1``: a symmetric one),
    built ``rows`` rows at a time, each block passed through ``update(block, rows_slice)`` if given. A
    symmetric one keeps GPyTorch's exact zero distances on its diagonal: in one block through the kernel's own
    ``x1 == x2`` path, across blocks from its ``diag=True`` values."""
    q, same = X1.shape[-2], X2 is X1
    if rows >= q:
        block = dense_kernel(covar_module, X1, None if same else X2)
        return block if update is None else update(block, slice(0, q))
    out, blocks = None, []  # without gradients, blocks go into one preallocated result (no copy by ``cat``)
    for sl in chunk_slices(q, rows):
        block = dense_kernel(covar_module, X1[..., sl, :], X2)
        if same:
            diag = to_dense(covar_module(X1[..., sl, :], diag=True))
            block.diagonal(offset=sl.start, dim1=-2, dim2=-1).copy_(diag.expand(block.shape[:-2] + (-1,)))
        block = block if update is None else update(block, sl)
        if torch.is_grad_enabled():
            blocks.append(block)
            continue
        out = block.new_empty(block.shape[:-2] + (q, block.shape[-1])) if out is None else out
        out[..., sl, :] = block
    return torch.cat(blocks, dim=-2) if blocks else out


def training_factor(
    covar_module: Kernel,
    mean_module: Mean,
    likelihood: Likelihood,
    train_X: Tensor,
    train_Y: Tensor,
    rows: int,
) -> tuple[Tensor, Tensor]:
    r"""``(L, alpha)``: the lower Cholesky factor of the noisy training covariance (``batch x n x n``) and
    ``alpha = (K + noise)^{-1} (y - mu)`` (``batch x n``).

    Args:
        covar_module: The kernel.
        mean_module: The prior mean.
        likelihood: A (fixed-noise) Gaussian likelihood: its noise is added to the diagonal.
        train_X: The ``batch x n x d`` training inputs.
        train_Y: The ``batch x n`` training targets.
        rows: Rows of the kernel matrix built at a time (:func:`kernel_matrix`).

    Returns:
        ``L`` (``batch x n x n``) and ``alpha`` (``batch x n``).
    """
    K = kernel_matrix(covar_module, train_X, train_X, rows)
    prior_mean = mean_module(train_X)
    noise = likelihood._shaped_noise_covar(prior_mean.shape, train_X).diagonal(dim1=-2, dim2=-1)
    K.diagonal(dim1=-2, dim2=-1).add_(noise)
    L = psd_safe_cholesky(K)
    del K
    z = torch.linalg.solve_triangular(L, (train_Y - prior_mean).unsqueeze(-1), upper=False)
    return L, torch.linalg.solve_triangular(L.mT, z, upper=True).squeeze(-1)


def posterior_moments(
    covar_module: Kernel,
    mean_module: Mean,
    train_X: Tensor,
    L: Tensor,
    alpha: Tensor,
    Xq: Tensor,
    rows: int,
    second: str,
) -> tuple[Tensor, Tensor | None]:
    r"""Posterior mean ``batch x q`` of the latent GP at transformed inputs ``Xq`` (``test_batch x q x d``,
    broadcast with the training batch ``batch_shape x (m)``) and, by ``second``, nothing (``"none"``), the
    variances ``batch x q`` (``"diag"``) or the covariance ``batch x q x q`` (``"full"``): ``K* alpha`` and
    ``K** - V^T V`` with ``V = L^{-1} K*^T``, from the training factor ``(L, alpha)`` of :func:`training_factor`,
    ``rows`` test points at a time (the covariance in row blocks sized by the current memory budget).

    Args:
        covar_module: The kernel.
        mean_module: The prior mean.
        train_X: The ``batch x n x d`` training inputs.
        L: The lower Cholesky factor of the noisy training covariance, ``batch x n x n``.
        alpha: ``(K + noise)^{-1} (y - mu)``, ``batch x n``.
        Xq: The ``test_batch x q x d`` test inputs.
        rows: Test points per chunk.
        second: ``"none"``, ``"diag"`` or ``"full"``.

    Returns:
        The mean and the variances, the covariance or ``None``.
    """
    batch = torch.broadcast_shapes(Xq.shape[:-2], train_X.shape[:-2])
    Xq, train_X = Xq.expand(batch + Xq.shape[-2:]), train_X.expand(batch + train_X.shape[-2:])
    q = Xq.shape[-2]
    if q == 0:  # no test point: empty moments (the kernel code cannot reshape zero points)
        empty = Xq.new_zeros(batch + (0,))
        return empty, (None if second == "none" else Xq.new_zeros(batch + (0, 0)) if second == "full" else empty)
    means, parts = [], []
    for sl in chunk_slices(q, rows):
        Xc = Xq[..., sl, :]
        cross = dense_kernel(covar_module, Xc, train_X)  # ``batch x c x n``
        means.append(mean_module(Xc) + (cross @ alpha.unsqueeze(-1)).squeeze(-1))
        if second == "none":
            continue
        V = solve_lower_folded(L, cross.mT)  # ``batch x n x c``
        del cross
        parts.append(V if second == "full" else to_dense(covar_module(Xc, diag=True)) - V.square().sum(-2))
    mean = torch.cat(means, dim=-1)
    if second != "full":
        return mean, (torch.cat(parts, dim=-1) if parts else None)
    V = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0].contiguous()  # ``batch x n x q``
    del parts
    in_place = stationary_kind(covar_module) and not torch.is_grad_enabled()  # 2 blocks, K - V^T V in place
    blocks = 2 if in_place else _KERNEL_BLOCKS + 2
    rows = chunk_size_for(blocks * math.prod(batch) * q * element_size(V.dtype), total=q)
    return mean, kernel_matrix(covar_module, Xq, Xq, rows, lambda K, sl: sub_gram(K, V[..., sl], V))

r"""Tests of gpgeom.kernels.stationary: GPyTorch's Matérn and RBF kernels with distances from the differences.

Independent truths: the Matérn and RBF formulas written out in float64 on the same inputs, and the float64
kernels on the same (float32) inputs and hyperparameters.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from gpgeom.kernels import DifferenceMaternKernel, DifferenceRBFKernel

D = torch.float64


def _formula(kind: str, x1: torch.Tensor, x2: torch.Tensor, ls: torch.Tensor) -> torch.Tensor:
    r"""Kernel ``... x n x m`` from the scaled differences (``ls``: ``... x 1 x d``)."""
    r2 = ((x1[..., :, None, :] - x2[..., None, :, :]) / ls[..., None, :, :]).square().sum(-1)
    if kind == "rbf":
        return torch.exp(-0.5 * r2)
    nu = float(kind)
    z = math.sqrt(2 * nu) * r2.sqrt()
    poly = {0.5: 1.0, 1.5: 1.0 + z, 2.5: 1.0 + z + z.square() / 3.0}[nu]
    return poly * torch.exp(-z)


def _kernel(kind: str, **kw):
    return DifferenceRBFKernel(**kw) if kind == "rbf" else DifferenceMaternKernel(nu=float(kind), **kw)


@pytest.mark.parametrize("kind", ["0.5", "1.5", "2.5", "rbf"])
def test_ard_batch_and_diag_equal_the_formula(kind):
    bs = torch.Size([2])
    k = _kernel(kind, ard_num_dims=3, batch_shape=bs).to(D)
    k.lengthscale = torch.tensor([[[0.3, 0.5, 2.0]], [[0.1, 1.0, 0.7]]], dtype=D)
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.rand(2, 7, 3, dtype=D, generator=g), torch.rand(2, 5, 3, dtype=D, generator=g)
    ls = k.lengthscale.detach()
    torch.testing.assert_close(k(x1, x2).to_dense(), _formula(kind, x1, x2, ls), rtol=1e-12, atol=1e-14)
    full = _formula(kind, x1, x1, ls)
    torch.testing.assert_close(k(x1).to_dense(), full, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(k(x1, x1.clone()).to_dense(), full, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(k(x1, diag=True), full.diagonal(dim1=-2, dim2=-1), rtol=1e-12, atol=1e-14)


@pytest.mark.filterwarnings("ignore:The last_dim_is_batch argument is deprecated:DeprecationWarning")
@pytest.mark.parametrize("kind", ["2.5", "rbf"])
def test_float32_last_dim_is_batch_is_accurate(kind):
    r"""With ``last_dim_is_batch=True`` the distances still came from GPyTorch's expansion (the path was handed to
    GPyTorch unchanged): in float32, 500 points in [0, 1]^2 with lengthscale 0.01 had entries up to 3.2e-4 (Matérn
    5/2) and 2.0e-4 (RBF) off the float64 kernel and Gram matrices with eigenvalues down to -4e-4 (float64: >= -5e-13).
    They now come from the differences, as the full covariance's."""
    k = _kernel(kind)
    k.lengthscale = 0.01
    x = torch.rand(500, 2, generator=torch.Generator().manual_seed(0))
    K32 = k(x, last_dim_is_batch=True).to_dense().detach().double()
    K64 = copy.deepcopy(k).double()(x.double(), last_dim_is_batch=True).to_dense().detach()
    assert K32.shape == (2, 500, 500)
    torch.testing.assert_close(K32, K64, rtol=0, atol=2e-5)
    assert float(torch.linalg.eigvalsh(K32).min()) > -1e-5

#!/usr/bin/env python3
r"""Tests of gpgeom.kernels.spectral: spectral kernels equal dense matrix functions of the Laplacian."""

from __future__ import annotations

import unittest

import gpytorch
import pytest
import torch
from gpytorch.test.base_kernel_test_case import BaseKernelTestCase
from linear_operator.operators import LowRankRootAddedDiagLinearOperator, LowRankRootLinearOperator

from gpgeom.kernels.spectral import SpectralKernel

DT = torch.float64


def _graph_laplacian(n: int, weighted: bool, dtype=DT) -> torch.Tensor:
    r"""L = D - A of a random dense (Erdos-Renyi, p = 0.5) graph, unweighted or with random weights."""
    A = (torch.rand(n, n, dtype=dtype) < 0.5).to(dtype)
    if weighted:
        A = A * (0.1 + 2 * torch.rand(n, n, dtype=dtype))
    A = torch.triu(A, 1)
    A = A + A.T
    return torch.diag(A.sum(-1)) - A


def _matern_dense(L: torch.Tensor, kappa: float, nu: float, d: float) -> torch.Tensor:
    r"""(2 nu / kappa^2 I + L)^(-p), p = nu + d/2 an integer, by p repeated linear solves."""
    p = nu + d / 2
    assert float(p).is_integer()
    n = L.shape[0]
    M = 2 * nu / kappa**2 * torch.eye(n, dtype=L.dtype) + L
    X = torch.eye(n, dtype=L.dtype)
    for _ in range(int(p)):
        X = torch.linalg.solve(M, X)
    return 0.5 * (X + X.T)


def _heat_dense(L: torch.Tensor, kappa: float) -> torch.Tensor:
    return torch.linalg.matrix_exp(-0.5 * kappa**2 * L)


def _normalised(M: torch.Tensor) -> torch.Tensor:
    return M / M.diagonal().mean()


def _idx(i) -> torch.Tensor:
    return torch.as_tensor(i, dtype=DT).reshape(-1, 1)


# ------------------------------------------------------------------------------------------------------------------
# Scalar bases: all eigenpairs reproduce the dense matrix function
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
def test_heat_kernel_equals_matrix_exponential(weighted, normalize):
    n, kappa = 30, 0.7
    L = _graph_laplacian(n, weighted)
    lam, phi = torch.linalg.eigh(L)
    kern = SpectralKernel(lam, phi, spectral_filter="heat", normalize=normalize)
    kern.lengthscale = torch.tensor(kappa, dtype=DT)
    x = _idx(torch.arange(n))
    K = kern(x).to_dense()
    truth = _heat_dense(L, kappa)
    truth = _normalised(truth) if normalize else truth
    torch.testing.assert_close(K, truth, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(kern(x, diag=True), truth.diagonal(), rtol=1e-10, atol=1e-12)
    if normalize:
        assert float(kern(x, diag=True).detach().mean()) == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize(("nu", "d"), [(1.0, 0.0), (1.5, 1.0), (2.0, 2.0), (0.5, 3.0)])
def test_matern_kernel_equals_resolvent_power(weighted, nu, d):
    n, kappa = 25, 1.3
    L = _graph_laplacian(n, weighted)
    lam, phi = torch.linalg.eigh(L)
    truth = _matern_dense(L, kappa, nu, d)
    x = _idx(torch.randperm(n))  # any order of the points
    perm = x[:, 0].long()
    for normalize in (False, True):
        kern = SpectralKernel(lam, phi, nu=nu, dimension=d, normalize=normalize)
        kern.lengthscale = torch.tensor(kappa, dtype=DT)
        want = (_normalised(truth) if normalize else truth)[perm][:, perm]
        torch.testing.assert_close(kern(x).to_dense(), want, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(kern(x, diag=True), want.diagonal(), rtol=1e-10, atol=1e-13)
    # the normalisation does not depend on the eigenvector scaling (sqrt(n)-scaled as in GeometricKernels / RVGP)
    scaled = SpectralKernel(lam, phi * n**0.5, nu=nu, dimension=d)
    scaled.lengthscale = torch.tensor(kappa, dtype=DT)
    torch.testing.assert_close(scaled(x).to_dense(), _normalised(truth)[perm][:, perm], rtol=1e-10, atol=1e-13)


def test_cross_covariance_diag_and_structure():
    n, k = 40, 12
    L = _graph_laplacian(n, True)
    lam, phi = torch.linalg.eigh(L)
    kern = SpectralKernel(lam[:k], phi[:, :k], nu=2.5)
    kern.lengthscale = torch.tensor(0.9, dtype=DT)
    # truncated truth: Phi_k f(Lambda_k) Phi_k^T / mean diag
    f = (2 * 2.5 / 0.9**2 + lam[:k]) ** (-2.5)
    full = phi[:, :k] @ torch.diag(f) @ phi[:, :k].T
    full = full / full.diagonal().mean()
    i1, i2 = torch.randint(n, (17,)), torch.randint(n, (9,))
    x1, x2 = _idx(i1), _idx(i2)
    torch.testing.assert_close(kern(x1, x2).to_dense(), full[i1][:, i2], rtol=1e-10, atol=1e-13)
    i3 = torch.randint(n, (17,))
    torch.testing.assert_close(kern(x1, _idx(i3), diag=True), full[i1, i3], rtol=1e-10, atol=1e-13)
    # rank-k structure: low-rank root for the training covariance, Woodbury-ready after adding noise
    xs = _idx(torch.arange(n))
    op = kern.forward(xs, xs)
    assert isinstance(op, LowRankRootLinearOperator) and op.root.shape == (n, k)
    noisy = op.add_diagonal(torch.tensor(0.1, dtype=DT))
    assert isinstance(noisy, LowRankRootAddedDiagLinearOperator)
    rhs = torch.randn(n, 2, dtype=DT)
    torch.testing.assert_close(noisy.solve(rhs), torch.linalg.solve(noisy.to_dense(), rhs), rtol=1e-8, atol=1e-10)
    # ScaleKernel keeps the structure and scales the average variance
    scaled = gpytorch.kernels.ScaleKernel(kern).to(DT)
    scaled.outputscale = 3.0
    assert float(scaled(xs, diag=True).detach().mean()) == pytest.approx(3.0, rel=1e-10)


# ------------------------------------------------------------------------------------------------------------------
# Vector-valued (lifted connection-Laplacian) bases
# ------------------------------------------------------------------------------------------------------------------
def _random_orthogonal(d: int) -> torch.Tensor:
    Q, R = torch.linalg.qr(torch.randn(d, d, dtype=DT))
    return Q * torch.sign(torch.diagonal(R))


def _connection_laplacian(n: int, d: int) -> torch.Tensor:
    r"""Block (i,i) = deg_i I_d, block (i,j) = -w_ij O_ij with O_ji = O_ij^T: x^T L x = sum w |x_i - O_ij x_j|^2."""
    Lc = torch.zeros(n * d, n * d, dtype=DT)
    for i in range(n):
        for j in range(i + 1, n):
            if torch.rand(()) < 0.4:
                w = 0.2 + torch.rand((), dtype=DT)
                O = _random_orthogonal(d)
                Lc[i * d : (i + 1) * d, j * d : (j + 1) * d] = -w * O
                Lc[j * d : (j + 1) * d, i * d : (i + 1) * d] = -w * O.T
                Lc[i * d : (i + 1) * d, i * d : (i + 1) * d] += w * torch.eye(d, dtype=DT)
                Lc[j * d : (j + 1) * d, j * d : (j + 1) * d] += w * torch.eye(d, dtype=DT)
    return Lc


@pytest.mark.parametrize("spectral_filter", ["heat", "matern"])
def test_vector_valued_kernel_equals_lifted_matrix_function(spectral_filter):
    n, d, D, kappa, nu = 14, 2, 3, 1.1, 1.5
    Lc = _connection_laplacian(n, d)
    lam, U = torch.linalg.eigh(Lc)
    # tangent frames T_i (D x d, orthonormal columns) and the lifted eigenvectors phi_l(i) = T_i u_l(i)
    T = torch.linalg.qr(torch.randn(n, D, d, dtype=DT)).Q
    Phi = T @ U.reshape(n, d, n * d)  # n x D x (n d)
    P = torch.block_diag(*T)  # (n D) x (n d)
    fL = _heat_dense(Lc, kappa) if spectral_filter == "heat" else _matern_dense(Lc, kappa, nu, 1.0)
    truth = P @ fL @ P.T  # interleaved: row i * D + a
    kern = SpectralKernel(lam, Phi, spectral_filter=spectral_filter, nu=nu, dimension=1.0, normalize=False)
    kern.lengthscale = torch.tensor(kappa, dtype=DT)
    x = _idx(torch.arange(n))
    assert kern.num_outputs_per_input(x, x) == D and kern.output_dim == D
    torch.testing.assert_close(kern(x).to_dense(), truth, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(kern(x, diag=True), truth.diagonal(), rtol=1e-10, atol=1e-12)
    # subsets / cross-covariances keep the point-major interleaving
    i1, i2 = torch.tensor([3, 0, 7]), torch.tensor([5, 3])
    rows = (i1[:, None] * D + torch.arange(D)).reshape(-1)
    cols = (i2[:, None] * D + torch.arange(D)).reshape(-1)
    torch.testing.assert_close(kern(_idx(i1), _idx(i2)).to_dense(), truth[rows][:, cols], rtol=1e-10, atol=1e-12)
    # normalised: average prior variance over the n * D outputs is one
    kn = SpectralKernel(lam, Phi, spectral_filter=spectral_filter, nu=nu, dimension=1.0)
    kn.lengthscale = torch.tensor(kappa, dtype=DT)
    torch.testing.assert_close(kn(x).to_dense(), truth / truth.diagonal().mean(), rtol=1e-10, atol=1e-12)
    # posterior means lie in the tangent spaces: every block K(i, j) maps into span(T_i)
    blk = kern(x).to_dense().reshape(n, D, n, D)
    proj = T @ T.mT
    torch.testing.assert_close(torch.einsum("iab,ibjc->iajc", proj, blk), blk, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------------------------
# Gradients, batches, dtypes, GP integration
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spectral_filter", ["heat", "matern"])
def test_gradients_match_finite_differences(spectral_filter):
    n, k = 20, 10
    L = _graph_laplacian(n, True)
    lam, phi = torch.linalg.eigh(L)
    kern = SpectralKernel(lam[:k], phi[:, :k], spectral_filter=spectral_filter, nu=1.7, dimension=2.0)
    kern.lengthscale = torch.tensor(0.8, dtype=DT)
    x1, x2 = _idx(torch.randint(n, (8,))), _idx(torch.randint(n, (6,)))
    W = torch.randn(8, 6, dtype=DT)

    def objective():
        return (kern(x1, x2).to_dense() * W).sum() + kern(x1, diag=True).square().sum()

    params = dict(kern.named_parameters())
    assert set(params) == ({"raw_lengthscale", "raw_nu"} if spectral_filter == "matern" else {"raw_lengthscale"})
    kern.zero_grad()
    objective().backward()
    h = 1e-6
    for name, p in params.items():
        with torch.no_grad():
            p += h
            fp = float(objective())
            p -= 2 * h
            fm = float(objective())
            p += h
        fd = (fp - fm) / (2 * h)
        assert float(p.grad) == pytest.approx(fd, rel=1e-6, abs=1e-9), name


def test_batch_shape_matches_separate_kernels():
    n = 15
    L = _graph_laplacian(n, True)
    lam, phi = torch.linalg.eigh(L)
    kb = SpectralKernel(lam, phi, nu=1.5, batch_shape=torch.Size([3]))
    ls = torch.tensor([0.5, 1.0, 2.0], dtype=DT).reshape(3, 1, 1)
    nus = torch.tensor([0.7, 1.5, 3.0], dtype=DT).reshape(3, 1, 1)
    kb.lengthscale = ls
    kb.nu = nus
    assert kb.lengthscale.shape == (3, 1, 1) and kb.nu.shape == (3, 1, 1)
    x = _idx(torch.randint(n, (10,)))
    Kb = kb(x).to_dense()
    db = kb(x, diag=True)
    assert Kb.shape == (3, 10, 10) and db.shape == (3, 10)
    for b in range(3):
        k1 = SpectralKernel(lam, phi, nu=float(nus[b]))
        k1.lengthscale = float(ls[b])
        torch.testing.assert_close(Kb[b], k1(x).to_dense(), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(db[b], k1(x, diag=True), rtol=1e-12, atol=1e-14)
    # batched inputs broadcast against the kernel batch
    xb = _idx(torch.randint(n, (3, 10))).reshape(3, 10, 1)
    Kxb = kb(xb).to_dense()
    assert Kxb.shape == (3, 10, 10)
    k1 = SpectralKernel(lam, phi, nu=float(nus[1]))
    k1.lengthscale = float(ls[1])
    torch.testing.assert_close(Kxb[1], k1(xb[1]).to_dense(), rtol=1e-12, atol=1e-14)
    # getitem keeps the shared basis
    sub = kb[2]
    assert sub.batch_shape == torch.Size([]) and sub.basis.eigenvectors.shape == (n, 1, n)
    torch.testing.assert_close(sub(x).to_dense(), Kb[2], rtol=1e-12, atol=1e-14)


def test_float32_and_to_dtype():
    n, kappa = 20, 0.6
    L = _graph_laplacian(n, True)
    lam, phi = torch.linalg.eigh(L)
    truth = _normalised(_heat_dense(L, kappa))
    k32 = SpectralKernel(lam.float(), phi.float(), spectral_filter="heat")
    k32.lengthscale = kappa
    assert k32.dtype == torch.float32 and k32.basis.eigenvectors.dtype == torch.float32
    K = k32(_idx(torch.arange(n)).float()).to_dense()
    assert K.dtype == torch.float32
    torch.testing.assert_close(K.double(), truth, rtol=1e-4, atol=1e-5)
    k64 = k32.to(DT)
    assert k64.basis.eigenvalues.dtype == DT and k64.basis.mass.dtype == DT
    km = SpectralKernel(lam.float(), phi.float(), nu=1.5).double()
    assert km.nu.dtype == DT


def test_fixed_nu_and_gp_training_step():
    n = 30
    L = _graph_laplacian(n, False)
    lam, phi = torch.linalg.eigh(L)
    kfix = SpectralKernel(lam[:10], phi[:, :10], nu=2.5, learn_nu=False)
    assert "raw_nu" not in dict(kfix.named_parameters()) and float(kfix.nu) == 2.5
    kfix.nu = 0.5
    assert float(kfix.nu) == 0.5

    train_x = _idx(torch.arange(0, n, 2))
    train_y = torch.randn(train_x.shape[0], dtype=DT)

    class GP(gpytorch.models.ExactGP):
        def __init__(self):
            lik = gpytorch.likelihoods.GaussianLikelihood().to(DT)
            super().__init__(train_x, train_y, lik)
            self.mean_module = gpytorch.means.ZeroMean()
            self.covar_module = gpytorch.kernels.ScaleKernel(
                SpectralKernel(lam[:10], phi[:, :10], nu=1.5, nu_prior=gpytorch.priors.GammaPrior(2.0, 1.0))
            ).to(DT)

        def forward(self, x):
            return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))

    model = GP()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
    model.train()
    loss = -mll(model(train_x), train_y)
    loss.backward()
    base = model.covar_module.base_kernel
    assert torch.isfinite(base.raw_nu.grad).all() and torch.isfinite(base.raw_lengthscale.grad).all()
    model.eval()
    with torch.no_grad():
        pred = model(_idx(torch.arange(n)))
    assert pred.mean.shape == (n,) and bool((pred.variance > 0).all())
    # pickle / state_dict round trip keeps the eigenbasis
    sd = model.covar_module.state_dict()
    assert "base_kernel.basis.eigenvectors" in sd


def test_errors():
    n = 6
    L = _graph_laplacian(n, False)
    lam, phi = torch.linalg.eigh(L)
    with pytest.raises(ValueError, match=r"n x k or n x D x k with k = 6"):
        SpectralKernel(lam, phi[:, :4])
    with pytest.raises(ValueError, match=r"must be >= 0"):
        SpectralKernel(lam - 1.0, phi)
    SpectralKernel(lam - 1e-13, phi)  # round-off is tolerated (clamped)
    with pytest.raises(ValueError, match=r"Unknown `spectral_filter`='rbf'"):
        SpectralKernel(lam, phi, spectral_filter="rbf")
    with pytest.raises(ValueError, match="NaN"):
        SpectralKernel(lam * float("nan"), phi)
    with pytest.raises(ValueError, match="`nu` must be > 0"):
        SpectralKernel(lam, phi, nu=-1.0)
    with pytest.raises(ValueError, match="ard_num_dims"):
        SpectralKernel(lam, phi, ard_num_dims=3)
    kern = SpectralKernel(lam, phi)
    with pytest.raises(ValueError, match=r"must lie in \[0, 5\].*n = 6"):
        kern(_idx([0, 6])).to_dense()
    with pytest.raises(ValueError, match=r"must lie in \[0, 5\]"):
        kern(_idx([-1, 2]), diag=True)
    with pytest.raises(ValueError, match="integer indices"):
        kern(_idx([0.5, 2.0])).to_dense()
    with pytest.raises(ValueError, match="one column of point indices"):
        kern(torch.zeros(3, 2, dtype=DT)).to_dense()
    with pytest.raises(ValueError, match="Matern filter only"):
        SpectralKernel(lam, phi, spectral_filter="heat", nu_prior=gpytorch.priors.GammaPrior(2.0, 1.0))
    # was "float is not a Module subclass" (GPyTorch's register_constraint)
    with pytest.raises(TypeError, match=r"`nu_constraint` must be a gpytorch Interval constraint.*got float"):
        SpectralKernel(lam, phi, nu_constraint=1.0)


def test_nu_on_or_outside_its_constraint_is_refused():
    r"""``SpectralKernel(nu=0.5, nu_constraint=Interval(0.5, 3))`` stored raw_nu = -inf: nu stayed 0.5 with a zero
    gradient, so training never moved it; ``k.nu = 0`` did the same under ``Positive()``. Both are now a
    ``ValueError`` naming `nu`, the bounds and the value; values inside are kept exactly."""
    lam, phi = torch.linalg.eigh(_graph_laplacian(6, False))
    with pytest.raises(ValueError, match=r"`nu` of SpectralKernel must lie strictly inside \(0.5, 3\).*got 0.5"):
        SpectralKernel(lam, phi, nu=0.5, nu_constraint=gpytorch.constraints.Interval(0.5, 3.0))
    kern = SpectralKernel(lam, phi, nu=0.7, nu_constraint=gpytorch.constraints.Interval(0.5, 3.0))
    assert float(kern.nu.detach()) == pytest.approx(0.7, rel=1e-12)
    with pytest.raises(ValueError, match=r"`nu` of SpectralKernel must lie strictly inside \(0, inf\).*got 0"):
        SpectralKernel(lam, phi).nu = 0.0
    fixed = SpectralKernel(lam, phi, learn_nu=False)  # a fixed nu has no constraint
    fixed.nu = 2.0
    assert float(fixed.nu) == 2.0
    # the lengthscale: a Python float was rounded through float32 by GPyTorch's setter (0.7 -> 0.699999988)
    kern.lengthscale = 0.7
    assert float(kern.lengthscale.detach()) == pytest.approx(0.7, rel=1e-15)


# ------------------------------------------------------------------------------------------------------------------
# GPyTorch's generic kernel test-suite, on index inputs
# ------------------------------------------------------------------------------------------------------------------
class TestSpectralKernelGeneric(BaseKernelTestCase, unittest.TestCase):
    seed = 0
    n = 60

    def _basis(self):
        g = torch.Generator().manual_seed(7)
        A = (torch.rand(self.n, self.n, generator=g) < 0.3).float().triu(1)
        A = A + A.T
        L = torch.diag(A.sum(-1)) - A
        lam, phi = torch.linalg.eigh(L.double())
        return lam[:20].float(), phi[:, :20].float()

    def create_kernel_no_ard(self, **kwargs):
        lam, phi = self._basis()
        return SpectralKernel(lam, phi, nu=1.5, **kwargs)

    def _ints(self, *shape):
        return torch.randint(self.n, shape).float()

    def create_data_no_batch(self):
        return self._ints(50, 1)

    def create_data_single_batch(self):
        return self._ints(2, 3, 1)

    def create_data_double_batch(self):
        return self._ints(3, 2, 50, 1)

    # the generic active_dims tests select 4-6 of 10 real-valued columns; ours takes exactly one index column
    def test_active_dims_list(self):
        kernel = self.create_kernel_no_ard(active_dims=[2])
        x = self._ints(50, 5)
        self.assertAllClose(kernel(x).to_dense(), self.create_kernel_no_ard()(x[:, [2]]).to_dense())

    def test_active_dims_range(self):
        self.test_active_dims_list()

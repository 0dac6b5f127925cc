r"""Tests of gpgeom.engine.statespace: Van Loan discretisation, Kalman filter, RTS smoother, temporal GP front.

The truth in each test comes from a different mechanism: dense GPyTorch kernels and Cholesky-based GP regression
(or a GPyTorch ``ExactGP``), Gauss-Legendre quadrature of the discretisation integral, finite subsets of the data.
"""

from __future__ import annotations

import copy
import math

import gpytorch
import numpy as np
import pytest
import torch

from gpgeom.engine.statespace import (
    discretize,
    kalman_filter,
    log_marginal_likelihood,
    posterior,
    rts_smoother,
)
from gpgeom.kernels.markov import MaternMarkovKernel, WNOAKernel, WNOJKernel

D = torch.float64
NUS = (0.5, 1.5, 2.5)
EMPTY = torch.Size([])
BATCHES = (EMPTY, torch.Size([2]))
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _matern(nu, batch_shape=EMPTY, device="cpu"):
    k = MaternMarkovKernel(nu=nu, batch_shape=batch_shape).to(device=device, dtype=D)
    k.lengthscale = 0.3 + 0.7 * torch.rand(*batch_shape, 1, 1, dtype=D, device=device)
    k.variance = 0.5 + torch.rand(batch_shape, dtype=D, device=device)
    return k


def _dense_matern(k, x1, x2):
    r"""``variance * gpytorch.MaternKernel`` -- the dense reference, independent of our forward."""
    ref = gpytorch.kernels.MaternKernel(nu=k.nu, batch_shape=k.batch_shape).to(x1)
    ref.lengthscale = k.lengthscale.detach()
    return ref(x1[..., None], x2[..., None]).to_dense() * k.variance[..., None, None]


def _times(*shape, lo=0.0, hi=4.0, device="cpu"):
    t = lo + (hi - lo) * torch.rand(*shape, dtype=D, device=device)
    return torch.sort(t, dim=-1).values


def _dense_gp(Ktt, Kst, kss_diag, y, noise):
    r"""Dense GP regression by Cholesky: log N(y | 0, K + R), posterior mean/variance at the test inputs."""
    n = y.shape[-1]
    Kn = Ktt + torch.diag_embed(noise.expand(*Ktt.shape[:-2], n))
    Lc = torch.linalg.cholesky(Kn)
    alpha = torch.cholesky_solve(y.unsqueeze(-1), Lc)
    ll = (
        -0.5 * (y.unsqueeze(-2) @ alpha)[..., 0, 0]
        - Lc.diagonal(dim1=-1, dim2=-2).log().sum(-1)
        - 0.5 * n * math.log(2 * math.pi)
    )
    mean = (Kst @ alpha)[..., 0]
    V = torch.linalg.solve_triangular(Lc, Kst.transpose(-1, -2), upper=False)
    var = kss_diag - V.square().sum(-2)
    return ll, mean, var


def _close(a, b, rtol=1e-8, atol=1e-10):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------------------------------------------
# Discretisation
# --------------------------------------------------------------------------------------------------------------
def test_discretize_equals_quadrature_of_the_integral():
    s, w = 3, 2
    F = torch.randn(2, s, s, dtype=D) - 1.5 * torch.eye(s, dtype=D)
    L = torch.randn(2, s, w, dtype=D)
    A = torch.randn(2, w, w, dtype=D)
    Qc = A @ A.transpose(-1, -2)
    dt = torch.tensor([[0.0, 0.3, 1.7, 6.0], [0.05, 0.9, 2.5, 12.0]], dtype=D)
    Phi, Q = discretize(F, L, Qc, dt)
    assert Phi.shape == Q.shape == (2, 4, s, s)
    _close(Phi, torch.linalg.matrix_exp(F[:, None] * dt[..., None, None]), rtol=1e-11, atol=1e-13)
    nodes, weights = (torch.tensor(a, dtype=D) for a in np.polynomial.legendre.leggauss(80))
    W = L @ Qc @ L.transpose(-1, -2)
    for b in range(2):
        for j in range(4):
            h = float(dt[b, j])
            u = 0.5 * h * (nodes + 1)  # nodes on [0, h]
            E = torch.linalg.matrix_exp(F[b] * u[:, None, None])
            integrand = E @ W[b] @ E.transpose(-1, -2)
            Qq = 0.5 * h * (weights[:, None, None] * integrand).sum(0)
            _close(Q[b, j], Qq, rtol=1e-9, atol=1e-12)
    # Broadcasting an unbatched SDE over batched steps.
    Phi1, Q1 = discretize(F[0], L[0], Qc[0], dt)
    _close(Q1[0], Q[0], rtol=1e-9, atol=1e-12)  # (the number of doublings may differ)


def test_discretize_is_invariant_to_the_scale_of_the_state():
    r"""A stable SDE written in a badly scaled state :math:`x = D x_0` (:math:`D` from 1e-4 to 1e4) with a large
    :math:`Q_c` discretises to :math:`D \Phi_0 D^{-1}` and :math:`D Q_0 D`: the truths from the well-scaled :math:`F_0`
    (``matrix_exp``) and Gauss-Legendre quadrature of the integral. Before the state was balanced and
    :math:`L Q_c L^\top` scaled to :math:`F`'s size :math:`\Phi` was off by 2.2e-5 here (3.2e-2 relative, the worst
    over 50 such systems); now 1.6e-14."""
    g = torch.Generator().manual_seed(5)
    nodes, weights = (torch.tensor(a, dtype=D) for a in np.polynomial.legendre.leggauss(80))
    dt = torch.tensor([0.01, 0.3, 1.0, 4.0], dtype=D)
    for s in (2, 3, 4, 4, 3):
        F0 = torch.randn(s, s, dtype=D, generator=g) - 2.0 * torch.eye(s, dtype=D)
        L0 = torch.randn(s, 1, dtype=D, generator=g)
        d = 10.0 ** (8.0 * torch.rand(s, dtype=D, generator=g) - 4.0)
        qc = 1e6
        Phi, Q = discretize(d[:, None] * F0 / d, d[:, None] * L0, torch.full((1, 1), qc, dtype=D), dt)
        Phi0, Q0 = Phi * d / d[:, None], Q / (d[:, None] * d) / qc  # back in the well-scaled state, Q_c = 1
        _close(Phi0, torch.linalg.matrix_exp(F0 * dt[:, None, None]), rtol=0, atol=1e-12)
        for j, h in enumerate(dt.tolist()):
            E = torch.linalg.matrix_exp(F0 * (0.5 * h * (nodes + 1))[:, None, None])
            Qq = 0.5 * h * (weights[:, None, None] * (E @ L0 @ L0.T @ E.mT)).sum(0)
            _close(Q0[j], Qq, rtol=0, atol=1e-12 * float(Qq.abs().max()))


@pytest.mark.parametrize(
    ("dtype", "a", "qc", "dt"),
    ((torch.float32, 1.0, 3e38, 1e-30), (torch.float64, 1.0, 1.7e308, 1e-300), (torch.float32, 1e16, 1e-30, 1e-16)),
)
def test_discretize_stays_finite_when_lqcl_and_f_differ_by_the_range_of_the_dtype(dtype, a, qc, dt):
    r"""Ornstein-Uhlenbeck :math:`\mathrm dx = -a x\,\mathrm dt + \mathrm d\beta` against its closed form
    :math:`\Phi = e^{-a\Delta}`, :math:`Q = q_c (1 - e^{-2a\Delta}) / (2a)`, where :math:`q_c / a` is near the
    largest or below the smallest number of the dtype. The power of two that scales :math:`L Q_c L^\top` to
    :math:`F`'s size was then inf (``2**128`` in float32) or 0 (the ratio underflowed), and ``Phi`` or ``Q`` NaN (as
    before that scaling they were not: 3e8 here in float32); now it stays in the dtype's normal range."""
    F, L = torch.tensor([[-a]], dtype=dtype), torch.ones(1, 1, dtype=dtype)
    Phi, Q = discretize(F, L, torch.tensor([[qc]], dtype=dtype), torch.tensor([dt], dtype=dtype))
    x = a * dt
    q = qc * -math.expm1(-2.0 * x) / (2.0 * a)
    rtol = 1e-4 if dtype == torch.float32 else 1e-12  # (float32: the doublings' rounding, with Q_c = 0 too)
    _close(Phi.reshape(()).double(), torch.tensor(math.exp(-x), dtype=D), rtol=rtol, atol=0)
    _close(Q.reshape(()).double(), torch.tensor(q, dtype=D), rtol=rtol, atol=torch.finfo(dtype).tiny)


def test_discretize_takes_a_complex_sde():
    r"""A complex ``F``, ``L``, ``Q_c`` (``matrix_exp`` takes them) with real entries gives the real SDE's ``Phi``
    and ``Q``, and a complex rotation :math:`F = (i\omega - a)` the closed form :math:`\Phi = e^{F\Delta}`,
    :math:`Q = q_c (1 - e^{-2a\Delta}) / (2a)` (``L`` real: :math:`Q = \int e^{F u} e^{F u} \mathrm du` with the
    plain transpose, :math:`e^{2Fu}`). The state's balancing compared complex numbers with 0 and raised
    ``NotImplementedError`` ("gt_cpu" not implemented for 'ComplexDouble')."""
    k = MaternMarkovKernel(nu=2.5).to(D)
    k.lengthscale = 0.3
    F, L, Qc, _, _ = (m.detach() for m in k.sde())
    dt = torch.tensor([0.01, 0.4, 3.0], dtype=D)
    Phi, Q = discretize(F, L, Qc, dt)
    C = torch.complex128
    Phi_c, Q_c = discretize(F.to(C), L.to(C), Qc.to(C), dt.to(C))
    _close(Phi_c, Phi.to(C), rtol=1e-12, atol=1e-12)
    _close(Q_c, Q.to(C), rtol=1e-12, atol=1e-12 * float(Q.abs().max()))
    a, w, qc = 0.7, 3.0, 2.0
    f = complex(-a, w)
    Phi_r, Q_r = discretize(
        torch.tensor([[f]], dtype=C), torch.ones(1, 1, dtype=C), torch.tensor([[qc]], dtype=C), dt.to(C)
    )
    z = torch.tensor(f, dtype=C) * dt.to(C)
    _close(Phi_r.reshape(-1), torch.exp(z), rtol=1e-12, atol=1e-14)
    _close(Q_r.reshape(-1), qc * torch.expm1(2 * z) / (2 * f), rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------------------------------------------
# Matern: Kalman = dense GP
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("parallel", (False, True))
@pytest.mark.parametrize("nu", NUS)
@pytest.mark.parametrize("batch_shape", BATCHES)
def test_matern_kalman_equals_dense_gp(nu, batch_shape, parallel):
    n = int(torch.randint(30, 61, ()))
    k = _matern(nu, batch_shape)
    t = _times(*batch_shape, n)
    y = torch.randn(*batch_shape, n, dtype=D)
    noise = 0.02 + 0.2 * torch.rand(*batch_shape, n, dtype=D)
    # Test times: before, between and after the data, plus one equal to a training time.
    t_test = torch.cat(
        [-1.0 + 6.5 * torch.rand(*batch_shape, 12, dtype=D), t[..., 3:4], t[..., :1] - 2.0, t[..., -1:] + 3.0], -1
    )
    post = posterior(k, t, y, noise, t_test=t_test, parallel=parallel)
    with torch.no_grad():
        Ktt = _dense_matern(k, t, t)
        ll, mean, var = _dense_gp(Ktt, Ktt, Ktt.diagonal(dim1=-1, dim2=-2), y, noise)
        kss = k.variance[..., None].expand_as(t_test)
        _, mean_s, var_s = _dense_gp(Ktt, _dense_matern(k, t_test, t), kss, y, noise)
    lml = log_marginal_likelihood(k, t, y, noise, parallel=parallel)
    assert lml.shape == batch_shape == post.log_likelihood.shape
    _close(lml, ll, rtol=1e-10, atol=1e-10)
    _close(post.log_likelihood, ll, rtol=1e-10, atol=1e-10)
    _close(post.mean, mean)
    _close(post.variance, var)
    _close(post.test_mean, mean_s)
    _close(post.test_variance, var_s)
    # The posterior at the test time equal to t[3] is the posterior at t[3].
    _close(post.test_mean[..., 12], post.mean[..., 3], rtol=1e-12, atol=1e-13)
    s = k.state_dim
    assert post.state_mean.shape == (*batch_shape, n, s) and post.state_cov.shape == (*batch_shape, n, s, s)
    assert post.test_state_cov.shape == (*batch_shape, 15, s, s)


@pytest.mark.parametrize("parallel", (False, True))
@pytest.mark.parametrize("nu", NUS)
def test_noise_free_data_predicted_at_the_training_times_equals_dense_gp(nu, parallel):
    r"""Noise 0 (interpolation) with test times equal to training times: the filtered covariance at an observed time
    is singular, and the merged test time after it is a step of zero length, whose predicted covariance is that same
    matrix. The smoother solved with it and raised ``LinAlgError`` (always for Matérn-1/2; for 3/2 and 5/2 as
    rounding fell). Its gain there is the identity; the moments equal the dense GP's, and the mean interpolates."""
    n = 25
    k = _matern(nu)
    k.lengthscale = 1.0  # well-conditioned dense K without noise
    t = torch.linspace(0.0, 4.0, n, dtype=D)
    y = torch.sin(2.0 * t)
    noise = torch.zeros(n, dtype=D)
    t_test = torch.cat([t[[3, 7, 7]], torch.tensor([1.234, t[-1].item() + 0.5], dtype=D)])
    post = posterior(k, t, y, noise, t_test=t_test, parallel=parallel)
    with torch.no_grad():
        Ktt = _dense_matern(k, t, t)
        _, mean_s, var_s = _dense_gp(Ktt, _dense_matern(k, t_test, t), k.variance.expand(5), y, noise)
    _close(post.test_mean, mean_s, rtol=1e-7, atol=1e-8)
    _close(post.test_variance, var_s, rtol=1e-7, atol=1e-8)
    _close(post.test_mean[:3], y[[3, 7, 7]], rtol=1e-8, atol=1e-9)
    post.test_mean.sum().backward()  # the gradient through the identity gains is finite
    assert all(torch.isfinite(p.grad).all() for p in k.parameters() if p.grad is not None)


def test_matches_gpytorch_exact_gp():
    n = 40
    t = _times(n)
    y = torch.sin(3 * t) + 0.1 * torch.randn(n, dtype=D)
    noise = 0.05 + 0.1 * torch.rand(n, dtype=D)
    t_test = -0.5 + 5 * torch.rand(20, dtype=D)
    k = _matern(1.5)

    class GP(gpytorch.models.ExactGP):
        def __init__(self, x, yy, lik):
            super().__init__(x, yy, lik)
            self.mean_module = gpytorch.means.ZeroMean()
            self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.MaternKernel(nu=1.5))

        def forward(self, x):
            return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))

    lik = gpytorch.likelihoods.FixedNoiseGaussianLikelihood(noise=noise)
    gp = GP(t[:, None], y, lik).to(D)
    gp.covar_module.outputscale = k.variance.detach()
    gp.covar_module.base_kernel.lengthscale = k.lengthscale.detach()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(lik, gp)
    gp.train()
    with torch.no_grad():
        ref_ll = mll(gp(t[:, None]), y) * n
    gp.eval()
    with torch.no_grad(), gpytorch.settings.fast_pred_var(False):
        pred = gp(t_test[:, None])
    post = posterior(k, t, y, noise, t_test=t_test)
    _close(post.log_likelihood, ref_ll, rtol=1e-9, atol=1e-9)
    _close(post.test_mean, pred.mean, rtol=1e-8, atol=1e-9)
    _close(post.test_variance, pred.variance, rtol=1e-8, atol=1e-9)


def test_shared_and_per_batch_times_and_kernel_batch():
    n = 25
    k = _matern(2.5, torch.Size([2]))
    t = _times(n)
    y = torch.randn(2, n, dtype=D)
    lml = log_marginal_likelihood(k, t, y, 0.1)
    lml_b = log_marginal_likelihood(k, t.expand(2, n), y, 0.1)
    _close(lml, lml_b, rtol=1e-13, atol=0)
    for b in range(2):
        _close(lml[b], log_marginal_likelihood(k[b], t, y[b], 0.1), rtol=1e-13, atol=0)
    # Unbatched data broadcast against the kernel batch.
    lml_u = log_marginal_likelihood(k, t, y[0], 0.1)
    assert lml_u.shape == (2,)
    _close(lml_u[0], lml[0], rtol=1e-13, atol=0)
    # Extra data batch (3 x 2) with per-batch times and shared test times.
    t3 = _times(3, 2, n)
    y3 = torch.randn(3, 2, n, dtype=D)
    t_test = torch.rand(5, dtype=D)
    post = posterior(k, t3, y3, 0.1, t_test=t_test)
    assert post.test_mean.shape == (3, 2, 5) and post.log_likelihood.shape == (3, 2)
    one = posterior(k[1], t3[2, 1], y3[2, 1], 0.1, t_test=t_test)
    _close(post.test_mean[2, 1], one.test_mean, rtol=1e-12, atol=1e-14)
    _close(post.state_cov[2, 1], one.state_cov, rtol=1e-12, atol=1e-14)


def test_missing_observations_equal_dropping_them():
    n = 40
    k = _matern(1.5)
    t = _times(n)
    y = torch.randn(n, dtype=D)
    noise = 0.05 + 0.1 * torch.rand(n, dtype=D)
    keep = torch.rand(n) < 0.6
    keep[0] = keep[-1] = False  # missing at the ends too
    y_nan = torch.where(keep, y, torch.full_like(y, float("nan")))
    ref = posterior(k, t[keep], y[keep], noise[keep], t_test=t[~keep])
    by_mask = posterior(k, t, y_nan, noise, mask=keep)
    by_inf = posterior(k, t, y_nan, torch.where(keep, noise, torch.full_like(noise, math.inf)))
    for got in (by_mask, by_inf):
        _close(got.log_likelihood, ref.log_likelihood, rtol=1e-12, atol=1e-12)
        _close(got.mean[keep], ref.mean, rtol=1e-10, atol=1e-12)
        _close(got.mean[~keep], ref.test_mean, rtol=1e-10, atol=1e-12)
        _close(got.variance[~keep], ref.test_variance, rtol=1e-10, atol=1e-12)
    # Nothing observed: the prior.
    prior = posterior(k, t, y, noise, mask=torch.zeros(n, dtype=torch.bool))
    _close(prior.mean, torch.zeros_like(y), rtol=0, atol=0)
    _close(prior.variance, k.variance.expand(n), rtol=1e-12, atol=1e-14)
    assert float(prior.log_likelihood.detach()) == 0.0


def test_single_time_and_joseph_form():
    k = _matern(0.5)
    t = torch.tensor([0.3], dtype=D)
    y = torch.tensor([0.7], dtype=D)
    post = posterior(k, t, y, 0.2, t_test=torch.tensor([0.3, 1.0], dtype=D))
    v = k.variance.detach()
    _close(post.mean, v / (v + 0.2) * y)
    _close(post.log_likelihood, torch.distributions.Normal(0.0, (v + 0.2).sqrt()).log_prob(y[0]))
    # Joseph-form update gives the same filter.
    t = _times(2, 30)
    y = torch.randn(2, 30, dtype=D)
    k = _matern(2.5)
    Phi, Q = k.transition(t[..., 1:] - t[..., :-1])
    m0, P0 = k.initial_state(t[..., 0])
    H = k.sde().H
    a = kalman_filter(Phi, Q, H, y, 0.1, m0, P0)
    b = kalman_filter(Phi, Q, H, y, 0.1, m0, P0, joseph=True)
    for x, z in zip(a, b, strict=True):
        _close(x, z, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("n", (1, 2, 3, 8, 65, 130))
def test_parallel_scan_equals_sequential(n):
    k = _matern(2.5, torch.Size([2]))
    t = _times(3, 1, n)
    y = torch.randn(3, 2, n, dtype=D)
    noise = 0.05 + 0.1 * torch.rand(3, 2, n, dtype=D)
    noise[..., ::4] = math.inf
    t_test = 4.5 * torch.rand(3, 1, 6, dtype=D) - 0.2
    seq = posterior(k, t, y, noise, t_test=t_test, parallel=False)
    par = posterior(k, t, y, noise, t_test=t_test, parallel=True)
    for a, b in zip(seq, par, strict=True):
        _close(b, a, rtol=1e-9, atol=1e-10)
    # The automatic choice follows the length.
    auto = posterior(k, t, y, noise, t_test=t_test)
    _close(auto.test_mean, seq.test_mean, rtol=1e-9, atol=1e-10)
    with pytest.raises(TypeError, match="parallel"):
        log_marginal_likelihood(k, t, y, noise, parallel="yes")


# --------------------------------------------------------------------------------------------------------------
# WNOA / WNOJ: Kalman = dense GP, including velocity and acceleration
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("parallel", (False, True))
@pytest.mark.parametrize("kernel_cls", (WNOAKernel, WNOJKernel))
def test_integrated_wiener_kalman_equals_dense_gp(kernel_cls, parallel):
    n, nt = 35, 10
    s = 3 if kernel_cls is WNOJKernel else 2
    A = torch.randn(s, s, dtype=D)
    k = kernel_cls(t0=-0.5, P0=A @ A.T + 0.1 * torch.eye(s, dtype=D)).to(D)
    k.qc = 0.5 + torch.rand((), dtype=D)
    t = _times(n, lo=-0.5, hi=3.0)
    y = torch.randn(n, dtype=D)
    noise = 0.01 + 0.05 * torch.rand(n, dtype=D)
    t_test = torch.cat([torch.tensor([-0.5], dtype=D), -0.5 + 4.5 * torch.rand(nt - 1, dtype=D)])
    post = posterior(k, t, y, noise, t_test=t_test, parallel=parallel)
    with torch.no_grad():
        x_all = torch.cat([t, t_test])[:, None]
        C = k.state_covariance(x_all, t[:, None])[..., 0]  # (n + nt) x n x s: Cov(x(t_i), p(t_j))
        Cxx = k.state_covariance(x_all, diag=True)
        Kn = C[:n, :, 0] + torch.diag(noise)
        Lc = torch.linalg.cholesky(Kn)
        alpha = torch.cholesky_solve(y[:, None], Lc)[:, 0]
        m_ref = torch.einsum("ijs,j->is", C, alpha)
        V = torch.linalg.solve_triangular(Lc, C.permute(0, 2, 1).reshape(-1, n).T, upper=False)  # n x (N s)
        V = V.T.reshape(n + nt, s, n)
        P_ref = Cxx - V @ V.transpose(-1, -2)
        ll_ref = torch.distributions.MultivariateNormal(torch.zeros(n, dtype=D), Kn).log_prob(y)
    _close(post.log_likelihood, ll_ref, rtol=1e-10, atol=1e-10)
    _close(log_marginal_likelihood(k, t, y, noise, parallel=parallel), ll_ref, rtol=1e-10, atol=1e-10)
    _close(post.state_mean, m_ref[:n], rtol=1e-8, atol=1e-9)
    _close(post.test_state_mean, m_ref[n:], rtol=1e-8, atol=1e-9)
    _close(post.state_cov, P_ref[:n], rtol=1e-8, atol=1e-9)
    _close(post.test_state_cov, P_ref[n:], rtol=1e-8, atol=1e-9)
    _close(post.test_mean, m_ref[n:, 0], rtol=1e-8, atol=1e-9)
    _close(post.variance, P_ref[:n, 0, 0], rtol=1e-8, atol=1e-9)


def test_smoother_gain_gives_lag_one_cross_covariance():
    n = 20
    k = WNOJKernel(t0=0.0, P0=0.3).to(D)
    k.qc = 2.0
    t = _times(n, lo=0.1, hi=2.0)
    y = torch.randn(n, dtype=D)
    Phi, Q = k.transition(t[1:] - t[:-1])
    m0, P0 = k.initial_state(t[0])
    kf = kalman_filter(Phi, Q, k.sde().H, y, 0.05, m0, P0)
    sm = rts_smoother(Phi, kf)
    cross = sm.gain @ sm.cov[1:]  # Cov(x_k, x_{k+1} | y)
    sm_par = rts_smoother(Phi, kalman_filter(Phi, Q, k.sde().H, y, 0.05, m0, P0, parallel=True), parallel=True)
    _close(sm_par.gain @ sm_par.cov[1:], cross, rtol=1e-9, atol=1e-11)
    with torch.no_grad():
        C = k.state_covariance(t[:, None])  # n x n x s x s
        Kn = C[..., 0, 0] + 0.05 * torch.eye(n, dtype=D)
        Cp = C[..., 0]  # Cov(x_i, p_j): n x n x s
        ref = torch.stack([C[i, i + 1] - Cp[i].T @ torch.linalg.solve(Kn, Cp[i + 1]) for i in range(n - 1)])
    _close(cross, ref, rtol=1e-8, atol=1e-9)


# --------------------------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("parallel", (False, True))
@pytest.mark.parametrize("nu", NUS)
def test_gradients_equal_dense(nu, parallel):
    n = 30
    k = _matern(nu, torch.Size([2]))
    t = _times(2, n)
    y = torch.randn(2, n, dtype=D)
    noise = (0.05 + 0.1 * torch.rand(2, n, dtype=D)).requires_grad_(True)
    lml = log_marginal_likelihood(k, t, y, noise, parallel=parallel).sum()
    g = torch.autograd.grad(lml, [k.raw_lengthscale, k.raw_variance, noise])
    # Dense: gpytorch kernel sharing our raw parameters.
    ref = gpytorch.kernels.MaternKernel(nu=nu, batch_shape=torch.Size([2])).to(D)
    ref.raw_lengthscale = k.raw_lengthscale
    K = ref(t[..., None]).to_dense() * k.variance[..., None, None] + torch.diag_embed(noise)
    ll = torch.distributions.MultivariateNormal(torch.zeros(2, n, dtype=D), K).log_prob(y).sum()
    g_ref = torch.autograd.grad(ll, [k.raw_lengthscale, k.raw_variance, noise])
    for a, b in zip(g, g_ref, strict=True):
        _close(a, b, rtol=1e-6, atol=1e-8)


def test_wnoj_gradient_equals_finite_difference():
    k = WNOJKernel(t0=0.0, P0=0.5).to(D)
    t = _times(30, lo=0.0, hi=2.0)
    y = torch.randn(30, dtype=D)
    lml = log_marginal_likelihood(k, t, y, 0.05)
    (g,) = torch.autograd.grad(lml, k.raw_qc)
    h = 1e-5
    with torch.no_grad():
        vals = []
        for sign in (1, -1):
            k.raw_qc.add_(sign * h)
            vals.append(log_marginal_likelihood(k, t, y, 0.05))
            k.raw_qc.sub_(sign * h)
    _close(g, (vals[0] - vals[1]) / (2 * h), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------------------------
# Input checks, dtypes, devices
# --------------------------------------------------------------------------------------------------------------
def test_bad_input_raises_clear_errors():
    k = _matern(1.5)
    t = _times(10)
    y = torch.randn(10, dtype=D)
    with pytest.raises(ValueError, match="`t` must be strictly increasing"):
        log_marginal_likelihood(k, t.flip(-1), y, 0.1)
    t_dup = t.clone()
    t_dup[4] = t_dup[3]
    with pytest.raises(ValueError, match="`t`"):
        posterior(k, t_dup, y, 0.1)
    y_nan = y.clone()
    y_nan[2] = float("nan")
    with pytest.raises(ValueError, match="`y` contains 1 NaN"):
        log_marginal_likelihood(k, t, y_nan, 0.1)
    with pytest.raises(ValueError, match="`y` contains"):  # NaN where the mask says observed
        log_marginal_likelihood(k, t, y_nan, 0.1, mask=torch.arange(10) != 5)
    with pytest.raises(ValueError, match="`y` must have shape"):
        log_marginal_likelihood(k, t, y[:9], 0.1)
    with pytest.raises(ValueError, match="`noise`"):
        log_marginal_likelihood(k, t, y, torch.full((9,), 0.1, dtype=D))
    with pytest.raises(ValueError, match="`noise` must be >= 0"):
        log_marginal_likelihood(k, t, y, -0.1)
    with pytest.raises(ValueError, match="`noise` contains NaN"):
        log_marginal_likelihood(k, t, y, torch.full((10,), float("nan"), dtype=D))
    with pytest.raises(TypeError, match="`noise`"):
        log_marginal_likelihood(k, t, y, "0.1")
    with pytest.raises(TypeError, match="`mask`"):
        log_marginal_likelihood(k, t, y, 0.1, mask=torch.ones(10))
    with pytest.raises(ValueError, match="`mask`"):
        log_marginal_likelihood(k, t, y, 0.1, mask=torch.ones(9, dtype=torch.bool))
    with pytest.raises(ValueError, match="Batch shapes"):
        log_marginal_likelihood(k, _times(3, 10), torch.randn(2, 10, dtype=D), 0.1)
    with pytest.raises(TypeError, match="`kernel`"):
        log_marginal_likelihood(gpytorch.kernels.MaternKernel(nu=1.5).to(D), t, y, 0.1)
    with pytest.raises(TypeError, match="dtype"):
        log_marginal_likelihood(MaternMarkovKernel(nu=1.5), t, y, 0.1)
    with pytest.raises(TypeError, match="`y`"):
        log_marginal_likelihood(k, t, y.float(), 0.1)
    with pytest.raises(TypeError, match="`t`"):
        log_marginal_likelihood(k, [0.0, 1.0], y, 0.1)
    with pytest.raises(ValueError, match="`t_test`"):
        posterior(k, t, y, 0.1, t_test=torch.tensor([0.5, float("nan")], dtype=D))
    with pytest.raises(ValueError, match="t0"):
        posterior(WNOJKernel(t0=0.0).to(D), t, y, 0.1, t_test=torch.tensor([-1.0], dtype=D))


def test_float32_smoke():
    n = 200
    k = MaternMarkovKernel(nu=1.5)
    k.lengthscale = 0.5
    t = _times(n, hi=20.0)
    y = torch.sin(t) + 0.1 * torch.randn(n, dtype=D)
    ll64 = log_marginal_likelihood(copy.deepcopy(k).to(D), t, y, 0.05)
    k32 = k
    t32, y32 = t.float(), y.float()
    ll32 = log_marginal_likelihood(k32, t32, y32, 0.05)
    assert ll32.dtype == torch.float32
    _close(ll32.double(), ll64, rtol=1e-4, atol=1e-3)
    post = posterior(k32, t32, y32, 0.05, t_test=torch.linspace(-1, 21, 50))
    assert torch.isfinite(post.test_mean).all() and (post.test_variance > 0).all()
    j = WNOJKernel()
    post = posterior(j, t32, y32, 0.05, t_test=torch.linspace(0, 21, 50))
    assert torch.isfinite(post.test_mean).all()


@pytest.mark.parametrize("device", DEVICES)
def test_device_agnostic(device):
    k = _matern(2.5, torch.Size([2]), device=device)
    t = _times(2, 30, device=device)
    y = torch.randn(2, 30, dtype=D, device=device)
    t_test = torch.rand(7, dtype=D, device=device)
    post = posterior(k, t, y, 0.1, t_test=t_test)
    assert post.test_mean.device.type == device
    lml = log_marginal_likelihood(k, t, y, 0.1)
    k_cpu = copy.deepcopy(k).cpu()
    ref = posterior(k_cpu, t.cpu(), y.cpu(), 0.1, t_test=t_test.cpu())
    _close(lml.cpu(), ref.log_likelihood, rtol=1e-9, atol=1e-9)
    _close(post.test_variance.cpu(), ref.test_variance, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------------------------------------------
# A measurement row per step: values and derivatives of a Matern 5/2 GP
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("parallel", (False, True))
def test_per_step_measurement_rows_equal_dense_gp_with_derivatives(parallel):
    # y_k = a_k f(t_k) + b_k f'(t_k) + noise; the dense truth from k, k' and k'' in closed form
    n = 40
    k = _matern(2.5)
    sigma2, ell = float(k.variance.detach()), float(k.lengthscale.detach())
    a = math.sqrt(5.0) / ell
    t = _times(n)
    alpha = torch.rand(n, dtype=D)
    beta = torch.where(torch.rand(n) < 0.5, torch.zeros(n, dtype=D), torch.randn(n, dtype=D))
    y = torch.randn(n, dtype=D)
    noise = 0.01 + 0.1 * torch.rand(n, dtype=D)

    def kern(tau, order):
        r = tau.abs()
        e = torch.exp(-a * r)
        if order == 0:
            return sigma2 * (1 + a * r + a * a * r * r / 3) * e
        if order == 1:
            return -sigma2 * a * a / 3 * tau * (1 + a * r) * e
        return -sigma2 * a * a / 3 * (1 + a * r - a * a * r * r) * e

    tau = t[:, None] - t[None, :]
    C = (
        alpha[:, None] * alpha[None, :] * kern(tau, 0)
        + beta[:, None] * alpha[None, :] * kern(tau, 1)
        - alpha[:, None] * beta[None, :] * kern(tau, 1)
        - beta[:, None] * beta[None, :] * kern(tau, 2)
    )
    tau_n = t[-1] - t  # Cov(f(t_n), y_j)
    cross = (alpha * kern(tau_n, 0) - beta * kern(tau_n, 1))[None, :]
    ll, mean, var = _dense_gp(C, cross, torch.tensor([sigma2], dtype=D), y, noise)
    with torch.no_grad():
        Phi, Q = k.transition(torch.diff(t))
        P0 = k.sde().Pinf
    H = torch.stack([alpha, beta, torch.zeros(n, dtype=D)], -1)[:, None, :]  # n x 1 x 3
    kf = kalman_filter(Phi, Q, H, y, noise, torch.zeros(3, dtype=D), P0, parallel=parallel, H_per_step=True)
    _close(kf.log_likelihood, ll, rtol=1e-10, atol=1e-10)
    _close(kf.mean[-1, 0], mean[0])  # the filtered f at the last step is the full posterior there
    _close(kf.cov[-1, 0, 0], var[0])
    # one row for all steps still equals the shared-H call
    shared = kalman_filter(Phi, Q, H[0], y, noise, torch.zeros(3, dtype=D), P0)
    same = kalman_filter(Phi, Q, H[:1].expand(n, 1, 3), y, noise, torch.zeros(3, dtype=D), P0, H_per_step=True)
    _close(same.log_likelihood, shared.log_likelihood, rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="H_per_step"):
        kalman_filter(Phi, Q, H[:-1], y, noise, torch.zeros(3, dtype=D), P0, H_per_step=True)


def test_kalman_filter_refuses_nan_or_negative_noise_and_nan_observations():
    r"""NaN noise used to count as a missing step (``isfinite`` is false for NaN), a negative one gave a NaN
    likelihood, and a NaN ``y`` at an observed step NaN means; ``posterior`` refused all three already."""
    k = MaternMarkovKernel(nu=1.5).to(D)
    t = torch.linspace(0.0, 1.0, 6, dtype=D)
    y = torch.sin(6 * t)
    Phi, Q = k.transition(t[1:] - t[:-1])
    m0, P0 = k.initial_state(t[0])
    H = k.sde().H
    noise = torch.full((6,), 0.01, dtype=D)
    noise[2] = float("nan")
    with pytest.raises(ValueError, match="`noise` contains NaN; use inf"):
        kalman_filter(Phi, Q, H, y, noise, m0, P0)
    with pytest.raises(ValueError, match=r"`noise` must be >= 0 \(variances\), got minimum -0.5"):
        kalman_filter(Phi, Q, H, y, torch.full((6,), -0.5, dtype=D), m0, P0)
    y_bad = y.clone()
    y_bad[3] = float("nan")
    with pytest.raises(ValueError, match=r"`y` contains 1 NaN or infinite value\(s\) at observed times"):
        kalman_filter(Phi, Q, H, y_bad, 0.01, m0, P0)
    missing = torch.full((6,), 0.01, dtype=D)
    missing[3] = math.inf  # a NaN y where the step is marked missing is fine, and equals dropping the step
    a = kalman_filter(Phi, Q, H, y_bad, missing, m0, P0).log_likelihood
    b = kalman_filter(Phi, Q, H, y, missing, m0, P0).log_likelihood
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_kalman_filter_refuses_integer_observations_and_mixed_dtypes():
    r"""Integer observations cast the noise variances to integers (0.1 -> 0): the filter ran without noise and its
    log likelihood was off by 0.84 on counts 0..3 (no error); a float32 ``H`` with float64 transitions raised torch's
    "expected scalar type Double but found Float" from a matrix product. Both are refused by name. A float32 ``y``
    is converted to the model's float64 (its noise variances were rounded to float32: 7e-9 off here)."""
    k = MaternMarkovKernel(nu=1.5).to(D)
    t = torch.arange(8, dtype=D)
    counts = torch.tensor([0, 1, 2, 1, 0, 1, 2, 3])
    Phi, Q = k.transition(t[1:] - t[:-1])
    m0, P0 = k.initial_state(t[0])
    H = k.sde().H
    with pytest.raises(TypeError, match=r"`y` must be a floating-point tensor, got dtype torch.int64"):
        kalman_filter(Phi, Q, H, counts, 0.1, m0, P0)
    with pytest.raises(TypeError, match=r"`y` must be a torch.Tensor, got ndarray"):
        kalman_filter(Phi, Q, H, counts.numpy(), 0.1, m0, P0)
    with pytest.raises(TypeError, match=r"must share one floating dtype, got Phi float64, Q float64, H float32"):
        kalman_filter(Phi, Q, H.float(), counts.to(D), 0.1, m0, P0)
    ll = kalman_filter(Phi, Q, H, counts.to(D), 0.1, m0, P0).log_likelihood
    K = k(t[:, None]).to_dense() + 0.1 * torch.eye(8, dtype=D)  # the dense GP
    dense = torch.distributions.MultivariateNormal(torch.zeros(8, dtype=D), K).log_prob(counts.to(D))
    torch.testing.assert_close(ll, dense, rtol=1e-10, atol=1e-10)
    ll32 = kalman_filter(Phi, Q, H, counts.float(), 0.1, m0, P0).log_likelihood
    torch.testing.assert_close(ll32, ll, rtol=0, atol=0)


def test_times_as_a_column_are_refused():
    r"""``(n, 1)`` is the kernels' input convention; read as times it would be n series of one time each."""
    k = MaternMarkovKernel(nu=1.5).to(D)
    t = torch.linspace(0.0, 1.0, 6, dtype=D)
    y = torch.sin(6 * t)
    with pytest.raises(ValueError, match=r"`t` must have shape \(\.\.\., n\) .* got \(6, 1\): .* pass t\[\.\.\., 0\]"):
        posterior(k, t[:, None], y[:, None], 0.01)
    with pytest.raises(ValueError, match=r"got \(6, 1\)"):
        log_marginal_likelihood(k, t[:, None], y[:, None], 0.01)
    single = posterior(k, t[:1, None], y[:1, None], 0.01)  # one series of one time: a batch of length-1 series is fine
    assert single.mean.shape[:2] == (1, 1)


def test_float32_matern12_likelihood_of_a_dense_series_equals_float64():
    r"""A long lengthscale over a dense series (lam dt = 5e-6): Matérn-1/2's Q cancelled in float32 (relative error
    eps / (2 lam dt), 1.2% here), so the float32 log likelihood was 4.6 below float64's (now within 1e-3)."""
    n = 2000
    t = torch.arange(n, dtype=D)
    y = torch.sin(2 * math.pi * 3 * t / n) + 0.1 * torch.randn(n, dtype=D)
    y = y.float().double()
    out = {}
    for dtype in (torch.float32, D):
        k = MaternMarkovKernel(nu=0.5).to(dtype)
        k.lengthscale, k.variance = 2e5, 1.0
        ll = log_marginal_likelihood(k, t.to(dtype), y.to(dtype), 0.01)
        (g,) = torch.autograd.grad(ll, k.raw_variance)
        out[dtype] = (float(ll.detach()), float(g))
    (ll32, g32), (ll64, g64) = out[torch.float32], out[D]
    assert abs(ll32 - ll64) < 0.05, (ll32, ll64)
    assert abs(g32 - g64) < 1e-3 * abs(g64), (g32, g64)


def test_kalman_filter_and_smoother_refuse_mismatched_shapes_naming_the_argument():
    r"""Shapes that disagreed with ``y`` or ``H`` failed inside ``expand`` ("The expanded size of the tensor (11)
    must match the existing size (9)"), a float ``mask`` with "bitwise_and_cpu not implemented for 'Double'", an
    integer one in ``torch.where``; each is now named with the expected shape. The valid call equals the dense GP."""
    k = _matern(1.5)
    t, y = _times(10), torch.randn(10, dtype=D)
    Phi, Q = k.transition(t[1:] - t[:-1])
    m0, P0 = k.initial_state(t[0])
    H = k.sde().H
    with torch.no_grad():
        ll = kalman_filter(Phi, Q, H, y, 0.1, m0, P0).log_likelihood
        Kd = _dense_matern(k, t, t)
    want = torch.distributions.MultivariateNormal(torch.zeros(10, dtype=D), Kd + 0.1 * torch.eye(10, dtype=D))
    _close(ll, want.log_prob(y))
    cases = [
        (
            (Phi, Q, H, torch.randn(12, dtype=D), 0.1, m0, P0),
            r"`Phi` must have shape \(batch\.\.\., 11, 2, 2\): n - 1 = 11 transitions for the 12 steps of `y`",
        ),
        ((Phi, Q[:5], H, y, 0.1, m0, P0), r"`Q` must have shape \(batch\.\.\., 9, 2, 2\).* got \(5, 2, 2\)"),
        ((Phi, Q, H[0], y, 0.1, m0, P0), r"`H` must be `batch x 1 x s` \(one measurement row\), got shape \(2,\)"),
        ((Phi, Q, H, y, 0.1, torch.zeros(3, dtype=D), P0), r"`m0` must have shape \(batch\.\.\., 2\).* got \(3,\)"),
        ((Phi, Q, H, y, 0.1, m0, torch.eye(3, dtype=D)), r"`P0` must have shape \(batch\.\.\., 2, 2\).* got \(3, 3\)"),
        (
            (Phi, Q, H, y, torch.full((7,), 0.1, dtype=D), m0, P0),
            r"`noise` must be a scalar or have shape \(batch\.\.\., 10\)",
        ),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            kalman_filter(*args)
    with pytest.raises(ValueError, match=r"`mask` must have shape \(batch\.\.\., 10\) like `y`, got \(7,\)"):
        kalman_filter(Phi, Q, H, y, 0.1, m0, P0, mask=torch.ones(7, dtype=torch.bool))
    for bad in (torch.ones(10, dtype=D), torch.ones(10, dtype=torch.long)):
        with pytest.raises(TypeError, match="`mask` must be a boolean tensor, got torch"):
            kalman_filter(Phi, Q, H, y, 0.1, m0, P0, mask=bad)
    kf = kalman_filter(Phi, Q, H, y, 0.1, m0, P0)
    with pytest.raises(ValueError, match=r"`Phi` must have shape \(batch\.\.\., 9, 2, 2\) \(the transitions"):
        rts_smoother(Phi[:5], kf)


def test_numpy_scalar_noise_is_read_like_a_float():
    r"""``noise=np.float32(0.1)`` (or ``np.int64``) was refused with "`noise` must be a float or a tensor"; it is now
    read as the float it holds. Truth: the dense GP with that noise."""
    k = _matern(2.5)
    t, y = _times(12), torch.randn(12, dtype=D)
    for noise in (np.float32(0.1), np.int64(1)):
        with torch.no_grad():
            got = log_marginal_likelihood(k, t, y, noise)
            want, _, _ = _dense_gp(_dense_matern(k, t, t), _dense_matern(k, t, t), k.variance.expand(12), y,
                                   torch.full((12,), float(noise), dtype=D))  # fmt: skip
        _close(got, want)
    with pytest.raises(TypeError, match="`noise` must be a float or a tensor, got bool"):
        log_marginal_likelihood(k, t, y, np.bool_(True))


@pytest.mark.parametrize("parallel", [True, False])
def test_times_in_seconds_with_lengthscales_of_days_equal_dense_gp_in_float32_and_float64(parallel):
    r"""Matérn-5/2 on times in seconds with lengthscales of 3 and 30 days (:math:`\lambda \approx 9 \cdot 10^{-6}`
    and :math:`9 \cdot 10^{-7}`): the state :math:`(f, f', f'')` has variances :math:`(1, \lambda^2/3, \lambda^4)`,
    which the associative scan's solves of :math:`I + C J` did not survive in float32 (log likelihood -89.8 instead
    of 70.8, the posterior mean 0.04 off; at 30 days -13176 instead of 142.6), and even in float64 they cost digits
    (1e-9 relative on the likelihood). The filter and smoother now run on the balanced state (module docstring).
    Truth: the dense float64 GP; float64 to 1e-10, float32 to 1e-4 (likelihood, relative), 1e-4 (mean) and 1e-3
    (variance, relative); the float32 gradient wrt the lengthscale to 1e-3 of the dense float64 one."""
    n, day = 200, 86400.0
    t = torch.sort(torch.rand(n, dtype=D) * 100 * day).values
    y = (torch.sin(t / day / 5) + 0.1 * torch.randn(n, dtype=D)).float().double()
    t_test = torch.linspace(0.0, 100 * day, 40, dtype=D).float().double()
    t = t.float().double()  # the float32 run sees the same data
    noise = 0.01
    ls = torch.tensor([3 * day, 30 * day], dtype=D)[:, None, None]
    k = MaternMarkovKernel(nu=2.5, batch_shape=torch.Size([2])).double()
    k.lengthscale = ls
    Ktt = _dense_matern(k, t, t)
    Kst = _dense_matern(k, t_test, t)
    ll_d, mean_d, var_d = _dense_gp(Ktt, Kst, k.variance[:, None].expand(2, 40), y, torch.tensor(noise, dtype=D))
    # the dense gradient wrt the raw lengthscale by autograd through GPyTorch's Matern kernel
    raw = k.raw_lengthscale.detach().clone().requires_grad_(True)
    ref = gpytorch.kernels.MaternKernel(nu=2.5, batch_shape=torch.Size([2])).double()
    ref.raw_lengthscale = torch.nn.Parameter(raw)
    Kn = ref(t[:, None]).to_dense() * k.variance.detach()[:, None, None] + noise * torch.eye(n, dtype=D)
    dense_ll = torch.distributions.MultivariateNormal(torch.zeros(n, dtype=D), Kn).log_prob(y)
    (g_d,) = torch.autograd.grad(dense_ll.sum(), ref.raw_lengthscale)
    _close(dense_ll.detach(), ll_d, rtol=1e-12, atol=0)
    for dtype, tol in ((D, 1e-10), (torch.float32, 1e-4)):
        km = copy.deepcopy(k).to(dtype)
        ll = log_marginal_likelihood(km, t.to(dtype), y.to(dtype), noise, parallel=parallel)
        (g,) = torch.autograd.grad(ll.sum(), km.raw_lengthscale)
        post = posterior(km, t.to(dtype), y.to(dtype), noise, t_test=t_test.to(dtype), parallel=parallel)
        ll, g = ll.detach().double(), g.double().flatten()
        assert ((ll - ll_d).abs() / ll_d.abs()).max() < tol, (dtype, ll, ll_d)
        assert ((g - g_d.flatten()).abs() / g_d.flatten().abs()).max() < 1e3 * tol, (dtype, g, g_d)
        assert (post.test_mean.detach().double() - mean_d).abs().max() < tol, dtype
        assert ((post.test_variance.detach().double() - var_d).abs() / var_d).max() < 10 * tol, dtype

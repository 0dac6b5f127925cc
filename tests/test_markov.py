r"""Tests of gpgeom.kernels.markov: Markov kernels in covariance form and in SDE form.

Each identity compares two different mechanisms: GPyTorch's dense ``MaternKernel`` vs our covariance; our
closed-form transitions vs Van Loan's matrix exponential; the closed-form integrated-Wiener cross-covariance vs
the covariance propagated step by step through (Phi, Q).
"""

from __future__ import annotations

import copy
import math
import pickle
import unittest

import gpytorch
import pytest
import torch
from gpytorch.test.base_kernel_test_case import BaseKernelTestCase

from gpgeom.engine.statespace import discretize
from gpgeom.errors import NotPSDError
from gpgeom.kernels.markov import (
    SDE,
    IntegratedWienerKernel,
    MarkovKernel,
    MaternMarkovKernel,
    WNOAKernel,
    WNOJKernel,
)

D = torch.float64
NUS = (0.5, 1.5, 2.5)
EMPTY = torch.Size([])
BATCHES = (EMPTY, torch.Size([2]))


def _matern(nu, batch_shape=EMPTY):
    k = MaternMarkovKernel(nu=nu, batch_shape=batch_shape).to(D)
    k.lengthscale = 0.2 + torch.rand(*batch_shape, 1, 1, dtype=D)
    k.variance = 0.5 + torch.rand(batch_shape, dtype=D)
    return k


def _psd(s, *batch):
    A = torch.randn(*batch, s, s, dtype=D)
    return A @ A.transpose(-1, -2) / s + 0.1 * torch.eye(s, dtype=D)


def _iw(order, batch_shape=EMPTY, t0=-0.3, P0=True):
    k = IntegratedWienerKernel(order, t0=t0, P0=_psd(order, *batch_shape) if P0 else None, batch_shape=batch_shape).to(
        D
    )
    k.qc = 0.5 + torch.rand(batch_shape, dtype=D)
    return k


def _close(a, b, rtol=1e-10, atol=0.0):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------------------------------------------
# GPyTorch's kernel test base (active dims, batches, getitem, pickling, dtype)
# --------------------------------------------------------------------------------------------------------------
class TestMaternMarkovKernelBase(unittest.TestCase, BaseKernelTestCase):
    nu = 2.5

    def create_kernel_no_ard(self, **kwargs):
        return MaternMarkovKernel(nu=self.nu, **kwargs)


class TestMaternMarkovKernelBaseHalf(TestMaternMarkovKernelBase):
    nu = 0.5


# --------------------------------------------------------------------------------------------------------------
# Matern covariance and SDE
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("nu", NUS)
@pytest.mark.parametrize("batch_shape", BATCHES)
def test_matern_forward_equals_scaled_gpytorch_matern(nu, batch_shape):
    k = _matern(nu, batch_shape)
    ref = gpytorch.kernels.MaternKernel(nu=nu, batch_shape=batch_shape).to(D)
    ref.lengthscale = k.lengthscale.detach()
    x1 = 3 * torch.rand(*batch_shape, 17, 1, dtype=D)
    x2 = 3 * torch.rand(*batch_shape, 11, 1, dtype=D)
    var = k.variance.detach()[..., None, None]
    _close(k(x1, x2).to_dense(), var * ref(x1, x2).to_dense(), rtol=1e-12, atol=1e-14)
    _close(k(x1).to_dense(), var * ref(x1).to_dense(), rtol=1e-12, atol=1e-14)
    _close(k(x1, diag=True), var[..., 0] * ref(x1, diag=True), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("nu", NUS)
@pytest.mark.parametrize("batch_shape", BATCHES)
def test_matern_sde_is_consistent(nu, batch_shape):
    k = _matern(nu, batch_shape)
    F, L, Qc, H, Pinf = k.sde()
    s = k.state_dim
    assert s == int(nu + 0.5)
    assert F.shape == (*batch_shape, s, s) and L.shape == (*batch_shape, s, 1)
    assert Qc.shape == (*batch_shape, 1, 1) and H.shape == (*batch_shape, 1, s) and Pinf.shape == F.shape
    # Pinf solves the Lyapunov equation and has the kernel's variance in its (0, 0) entry.
    lyap = F @ Pinf + Pinf @ F.transpose(-1, -2) + L @ Qc @ L.transpose(-1, -2)
    assert lyap.abs().max() <= 1e-10 * Pinf.abs().max()
    _close(Pinf[..., 0, 0], k.variance, rtol=1e-13)
    # The SDE reproduces the covariance: k(tau) = H Phi(tau) Pinf H^T (Phi from Van Loan, not the closed form).
    tau = 2 * torch.rand(*batch_shape, 9, dtype=D)
    Phi, _ = discretize(F, L, Qc, tau)
    k_sde = (H.unsqueeze(-3) @ Phi @ Pinf.unsqueeze(-3) @ H.transpose(-1, -2).unsqueeze(-3))[..., 0, 0]
    zero = torch.zeros(*batch_shape, 1, 1, dtype=D)
    _close(k_sde, k(zero, tau[..., None]).to_dense()[..., 0, :], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("nu", NUS)
@pytest.mark.parametrize("batch_shape", BATCHES)
def test_matern_closed_form_transition_equals_van_loan(nu, batch_shape):
    k = _matern(nu, batch_shape)
    dt = torch.cat([torch.zeros(*batch_shape, 1, dtype=D), 2 * torch.rand(*batch_shape, 12, dtype=D)], -1)
    Phi, Q = k.transition(dt)
    F, L, Qc, _, Pinf = k.sde()
    Phi_vl, Q_vl = discretize(F, L, Qc, dt)
    scale = Pinf.abs().amax((-1, -2), keepdim=True).unsqueeze(-3)
    assert Phi.shape == Q.shape == (*batch_shape, 13, k.state_dim, k.state_dim)
    # Compare in units where every state component is O(1): x_i -> x_i / lam^i (f^(i) scales like lam^i).
    lam = math.sqrt(2 * nu) / k.lengthscale.detach()[..., 0, 0]
    u = lam[..., None] ** torch.arange(k.state_dim, dtype=D)  # bs x s
    T, Ti = (u[..., None, :] / u[..., :, None]).unsqueeze(-3), (1.0 / (u[..., :, None] * u[..., None, :])).unsqueeze(-3)
    assert ((Phi - Phi_vl) * T).abs().max() < 1e-9
    assert ((Q - Q_vl) * Ti).abs().max() < 1e-9 * float(k.variance.detach().max())
    # The generic fallback of the base class is the Van Loan route.
    Phi_b, Q_b = MarkovKernel.transition(k, dt)
    _close(Phi_b, Phi_vl, rtol=0, atol=0)
    # Q(0) = 0 and Phi(0) = I.
    _close(Phi[..., 0, :, :], torch.eye(k.state_dim, dtype=D).expand_as(Phi[..., 0, :, :]), rtol=0, atol=1e-15)
    assert (Q[..., 0, :, :].abs() / scale[..., 0, :, :]).max() < 1e-14


def test_matern_transition_broadcasts_data_batch_with_kernel_batch():
    k = _matern(1.5, torch.Size([2]))
    dt = torch.rand(3, 1, 5, dtype=D)
    Phi, Q = k.transition(dt)
    assert Phi.shape == Q.shape == (3, 2, 5, 2, 2)
    Phi1, Q1 = k[1].transition(dt[2, 0])
    _close(Phi[2, 1], Phi1, rtol=1e-14)
    _close(Q[2, 1], Q1, rtol=1e-14)


@pytest.mark.parametrize("nu", NUS)
def test_matern_initial_state_is_stationary(nu):
    k = _matern(nu, torch.Size([2]))
    m0, P0 = k.initial_state(torch.rand(2, dtype=D))
    assert m0.shape == (2, k.state_dim) and not m0.any()
    _close(P0, k.sde().Pinf, rtol=0, atol=0)


def test_matern_parameters_priors_and_gradients():
    k = MaternMarkovKernel(
        nu=1.5,
        variance_prior=gpytorch.priors.GammaPrior(2.0, 1.0),
        lengthscale_prior=gpytorch.priors.GammaPrior(3.0, 2.0),
    ).to(D)
    k.variance = 2.5
    _close(k.variance, torch.tensor(2.5, dtype=D))
    names = {name for name, *_ in k.named_priors()}
    assert names == {"variance_prior", "lengthscale_prior"}
    loss = k.sde().Qc.sum() + k.transition(torch.rand(4, dtype=D))[1].sum()
    loss.backward()
    assert k.raw_variance.grad is not None and k.raw_lengthscale.grad is not None
    k2 = pickle.loads(pickle.dumps(k))
    _close(k2.variance, k.variance)
    assert k.is_stationary


def test_matern_rejects_bad_options():
    with pytest.raises(ValueError, match="nu"):
        MaternMarkovKernel(nu=3.5)
    with pytest.raises(ValueError, match="nu"):
        MaternMarkovKernel(nu=1)
    with pytest.raises(ValueError, match="ard_num_dims"):
        MaternMarkovKernel(nu=1.5, ard_num_dims=2)
    with pytest.raises(TypeError, match="variance_prior"):
        MaternMarkovKernel(nu=1.5, variance_prior=1.0)


def test_matern_float32_smoke():
    k = MaternMarkovKernel(nu=2.5)
    k.lengthscale = 0.5
    k64 = copy.deepcopy(k).to(D)
    t = torch.rand(20, 1)
    K = k(t).to_dense()
    assert K.dtype == torch.float32
    _close(K.double(), k64(t.double()).to_dense(), rtol=1e-5, atol=1e-5)
    dt = torch.rand(7)
    Phi, Q = k.transition(dt)
    assert Phi.dtype == Q.dtype == torch.float32 and torch.isfinite(Q).all()
    Phi64, Q64 = k64.transition(dt.double())
    _close(Phi.double(), Phi64, rtol=1e-4, atol=1e-5)
    _close(Q.double(), Q64, rtol=1e-3, atol=1e-3 * float(k64.sde().Pinf.detach().abs().max()))


# --------------------------------------------------------------------------------------------------------------
# Integrated Wiener processes (WNOA, WNOJ)
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", (1, 2, 3, 4))
@pytest.mark.parametrize("batch_shape", BATCHES)
def test_integrated_wiener_transition_equals_van_loan(order, batch_shape):
    k = _iw(order, batch_shape)
    dt = 3 * torch.rand(*batch_shape, 10, dtype=D)
    Phi, Q = k.transition(dt)
    F, L, Qc, H, Pinf = k.sde()
    assert Pinf is None and F.shape == (*batch_shape, order, order)
    Phi_vl, Q_vl = discretize(F, L, Qc, dt)
    _close(Phi, Phi_vl, rtol=1e-12, atol=1e-13)
    _close(Q, Q_vl, rtol=1e-10, atol=1e-12)


def test_wnoa_wnoj_match_textbook_matrices():
    d = 0.7
    qc = 1.9
    a = WNOAKernel().to(D)
    a.qc = qc
    Phi, Q = a.transition(torch.tensor([d], dtype=D))
    _close(Phi[0], torch.tensor([[1, d], [0, 1]], dtype=D))
    _close(Q[0], qc * torch.tensor([[d**3 / 3, d**2 / 2], [d**2 / 2, d]], dtype=D))
    j = WNOJKernel().to(D)
    j.qc = qc
    Phi, Q = j.transition(torch.tensor([d], dtype=D))
    _close(Phi[0], torch.tensor([[1, d, d * d / 2], [0, 1, d], [0, 0, 1]], dtype=D))
    ref = torch.tensor(
        [[d**5 / 20, d**4 / 8, d**3 / 6], [d**4 / 8, d**3 / 3, d**2 / 2], [d**3 / 6, d**2 / 2, d]], dtype=D
    )
    _close(Q[0], qc * ref)
    assert isinstance(j.sde(), SDE) and j.state_dim == 3 and not j.is_stationary


def test_wnoa_kernel_closed_form():
    k = WNOAKernel(t0=0.0).to(D)
    k.qc = 1.3
    x = 2 * torch.rand(15, 1, dtype=D)
    a, b = x, x.transpose(-1, -2)
    mu = torch.minimum(a, b)
    ref = 1.3 * (mu**3 / 3 + (a - b).abs() * mu**2 / 2)
    _close(k(x).to_dense(), ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("make", (lambda: MaternMarkovKernel(nu=1.5), WNOAKernel, WNOJKernel))
def test_integer_times_give_the_covariances_of_the_same_float_times(make):
    r"""Integer times (days, frame numbers) give the covariances and transitions of the same times as floats: the
    integrated-Wiener kernels cast their coefficient tables to the times' dtype, which truncated 1/2, 1/3, ... to 0
    (WNOA's k(t, t') off by up to 41.7 at t = 0..5, the transition's Delta^2/2 dropped), and the Matern kernel raised
    torch's "mean(): could not infer output dtype"."""
    k = make().to(D)
    t = torch.arange(6)[:, None]
    _close(k(t).to_dense(), k(t.to(D)).to_dense(), rtol=0, atol=0)
    _close(k(t, t[:3] + 1, diag=False).to_dense(), k(t.to(D), t[:3].to(D) + 1).to_dense(), rtol=0, atol=0)
    for got, want in zip(k.transition(torch.tensor([1, 2, 3])), k.transition(torch.tensor([1.0, 2.0, 3.0], dtype=D))):
        assert got.dtype == D
        _close(got, want, rtol=0, atol=0)
    if not isinstance(k, MaternMarkovKernel):  # the dense truth: k(t, t') = qc (mu^3/3 + |a - b| mu^2/2) for WNOA
        for got, want in zip(k.initial_state(torch.tensor([2])), k.initial_state(torch.tensor([2.0], dtype=D))):
            _close(got, want, rtol=0, atol=0)
    if isinstance(k, WNOAKernel):
        a, b = t.to(D), t.to(D).T
        mu = torch.minimum(a, b)
        _close(k(t).to_dense(), k.qc * (mu**3 / 3 + (a - b).abs() * mu**2 / 2), rtol=1e-12, atol=1e-12)


def _propagated_joint(k, t):
    r"""Joint state covariance ``n x n x s x s`` over sorted ``t`` (``n``) by the (Phi, Q) recursion from t0, with
    Phi and Q from Van Loan (not from the kernel)."""
    F, L, Qc, _, _ = k.sde()
    steps = torch.cat([t[:1] - k.t0, t[1:] - t[:-1]])
    Phi, Q = discretize(F, L, Qc, steps)
    n, s = t.shape[0], k.state_dim
    J = [[None] * n for _ in range(n)]
    P = k.P0
    for i in range(n):
        P = Phi[i] @ P @ Phi[i].T + Q[i]
        J[i][i] = P
        for j in range(i - 1, -1, -1):  # Cov(x_j, x_i) = Cov(x_j, x_{i-1}) Phi_i^T
            J[j][i] = J[j][i - 1] @ Phi[i].T
            J[i][j] = J[j][i].T
    return torch.stack([torch.stack(row) for row in J]).reshape(n, n, s, s)


@pytest.mark.parametrize("order", (2, 3))
@pytest.mark.parametrize("with_P0", (False, True))
def test_integrated_wiener_dense_covariance_equals_propagated(order, with_P0):
    k = _iw(order, P0=with_P0, t0=-0.4)
    t = torch.sort(-0.4 + 3 * torch.rand(25, dtype=D)).values
    J = _propagated_joint(k, t)
    C = k.state_covariance(t[:, None])
    assert C.shape == (25, 25, order, order)
    _close(C, J, rtol=1e-9, atol=1e-12)
    _close(k(t[:, None]).to_dense(), J[..., 0, 0], rtol=1e-9, atol=1e-12)
    _close(k(t[:, None], diag=True), J.diagonal(0, 0, 1)[0, 0], rtol=1e-9, atol=1e-12)
    _close(k.state_covariance(t[:, None], diag=True), J.diagonal(0, 0, 1).permute(2, 0, 1), rtol=1e-9, atol=1e-12)
    # Unsorted, rectangular: entries permute accordingly.
    perm = torch.randperm(25)
    _close(k.state_covariance(t[perm, None], t[:7, None]), J[perm][:, :7], rtol=1e-9, atol=1e-12)
    # initial_state = the marginal at the first time.
    m0, P1 = k.initial_state(t[0])
    _close(P1, J[0, 0], rtol=1e-10, atol=1e-13)
    assert not m0.any()


def test_integrated_wiener_batched_equals_unbatched():
    bs = torch.Size([2])
    k = _iw(3, bs, t0=0.0)
    k.t0 = torch.tensor([0.0, -0.5], dtype=D)
    x = torch.rand(2, 8, 1, dtype=D)
    K = k(x).to_dense()
    C = k.state_covariance(x, x[:, :3])
    for b in range(2):
        kb = k[b]
        assert kb.batch_shape == torch.Size([]) and kb.t0.shape == torch.Size([])
        _close(K[b], kb(x[b]).to_dense(), rtol=1e-13)
        _close(C[b], kb.state_covariance(x[b], x[b, :3]), rtol=1e-13)
    # A shared input against the batched kernel.
    _close(k(x[0]).to_dense()[1], k[1](x[0]).to_dense(), rtol=1e-13)
    # Diagonal, double batch of data broadcast with the kernel batch.
    xx = torch.rand(3, 2, 6, 1, dtype=D)
    _close(k(xx, diag=True), k(xx).to_dense().diagonal(dim1=-1, dim2=-2), rtol=1e-13)


def test_integrated_wiener_is_a_gpytorch_kernel():
    k = WNOJKernel(qc_prior=gpytorch.priors.GammaPrior(2.0, 1.0)).to(D)
    k.qc = 3.0
    x = torch.rand(10, 1, dtype=D)
    loss = k(x).to_dense().sum()
    loss.backward()
    assert k.raw_qc.grad is not None and k.raw_qc.grad.abs() > 0
    assert {name for name, *_ in k.named_priors()} == {"qc_prior"}
    k2 = pickle.loads(pickle.dumps(k))
    _close(k2(x).to_dense(), k(x).to_dense())
    assert (k + MaternMarkovKernel(nu=0.5).to(D))(x).to_dense().shape == (10, 10)


def test_integrated_wiener_rejects_bad_input():
    k = WNOJKernel(t0=1.0).to(D)
    with pytest.raises(ValueError, match="t0"):
        k(torch.tensor([[0.5], [2.0]], dtype=D)).to_dense()
    with pytest.raises(ValueError, match="x1"):
        k.state_covariance(torch.rand(4, 2, dtype=D))
    with pytest.raises(ValueError, match="t0"):
        k.initial_state(torch.tensor(0.0, dtype=D))
    with pytest.raises(ValueError, match="P0"):
        WNOJKernel(P0=torch.eye(2))
    with pytest.raises(NotPSDError, match="P0"):
        WNOAKernel(P0=torch.tensor([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match=r"`P0` must be symmetric, got max \|P0 - P0\^T\| = 0.5"):
        WNOAKernel(P0=torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(TypeError, match="P0"):
        WNOAKernel(P0="big")
    with pytest.raises(ValueError, match="order"):
        IntegratedWienerKernel(0)
    with pytest.raises(ValueError, match="t0"):
        WNOAKernel(t0=torch.zeros(3), batch_shape=torch.Size([2]))
    with pytest.raises(TypeError, match="t0"):
        WNOAKernel(t0=float("nan"))
    with pytest.raises(TypeError, match="qc_prior"):
        WNOAKernel(qc_prior=2.0)


def _t0_rounding_up_in_float32():
    r"""A random start time whose float32 rounding lies above it (the float32 copy would reject t = t0)."""
    while True:
        t0 = float(torch.rand((), dtype=D)) - 0.5
        if float(torch.tensor(t0, dtype=torch.float32)) > t0:
            return t0


@pytest.mark.parametrize("cls, order", ((WNOAKernel, 2), (WNOJKernel, 3)))
@pytest.mark.parametrize("with_P0", (False, True))
def test_integrated_wiener_keeps_t0_precision_through_casts(cls, order, with_P0):
    # Regression: t0/P0 were stored in the default dtype (float32), so cls(t0=0.1784).double() rejected t = 0.1784.
    t0 = _t0_rounding_up_in_float32()
    P0 = _psd(order) if with_P0 else None
    k = cls(t0=t0, P0=P0).double()
    k.qc = 0.5 + float(torch.rand(()))
    assert float(k.t0) == t0 and k.t0.dtype == D and k.P0.dtype == D
    # A round trip through float32 does not lose t0 or P0 either.
    k32 = copy.deepcopy(k).float()
    assert float(k32.t0) == t0 and (P0 is None or torch.equal(k32.P0, P0))
    assert float(copy.deepcopy(k32).double().t0) == t0
    # Times starting exactly at t0: dense covariance equals the Van Loan propagation from t0 (independent truth).
    t = torch.cat([torch.tensor([t0], dtype=D), t0 + torch.sort(2 * torch.rand(9, dtype=D)).values])
    J = _propagated_joint(k, t)
    _close(k(t[:, None]).to_dense(), J[..., 0, 0], rtol=1e-12, atol=1e-15)
    _close(k.state_covariance(t[:, None]), J, rtol=1e-12, atol=1e-15)
    m0, P1 = k.initial_state(t[0])
    _close(P1, k.P0 if with_P0 else torch.zeros(order, order, dtype=D), rtol=0.0, atol=1e-15)
    assert not m0.any()
    # A float32 kernel on float32 data accepts the float32 rounding of t0 and returns float32.
    t32 = t.float()[:, None]
    K32 = k32(t32).to_dense()
    assert K32.dtype == torch.float32
    _close(K32.double(), J[..., 0, 0], rtol=1e-4, atol=1e-5)
    # Still rejected: a time just before t0.
    with pytest.raises(ValueError, match="t0"):
        k(torch.tensor([[math.nextafter(t0, -math.inf)]], dtype=D)).to_dense()
    # A float64 tensor t0 keeps its dtype through .float() too.
    kt = cls(t0=torch.tensor(t0, dtype=D)).float()
    assert kt.t0.dtype == D and float(kt.t0) == t0


def test_integrated_wiener_float32_smoke():
    k = WNOJKernel(P0=0.5)
    t = torch.rand(12, 1)
    K = k(t).to_dense()
    assert K.dtype == torch.float32
    _close(K.double(), k.to(D)(t.double()).to_dense(), rtol=1e-4, atol=1e-5)


def test_markov_base_requires_sde():
    class Bare(MarkovKernel):
        state_dim = 1

    with pytest.raises(NotImplementedError):
        Bare().sde()
    k = WNOAKernel()
    with pytest.raises(NotImplementedError):
        MarkovKernel.initial_state(k, torch.tensor(0.0))
    # math sanity of the Matern Qc constants used in the docs
    lam = torch.tensor(2.0, dtype=D)
    q = [2 * math.sqrt(math.pi) * math.gamma(nu + 0.5) / math.gamma(nu) * lam ** (2 * nu) for nu in NUS]
    _close(torch.stack(q), torch.stack([2 * lam, 4 * lam**3, 16 / 3 * lam**5]))


@pytest.mark.parametrize("nu", [1.5, 2.5])
def test_matern_transition_q_is_accurate_for_small_steps(nu):
    # P_inf - Phi P_inf Phi^T alone loses all relative accuracy in Q's smallest entries as lam * dt -> 0
    # (about eps / (lam dt)^(2s-1)); the transition switches to the integral's power series there
    mpmath = pytest.importorskip("mpmath")
    k = MaternMarkovKernel(nu=nu).double()
    with torch.no_grad():
        k.lengthscale = torch.tensor(0.7, dtype=torch.float64)
    F, L, Qc, _, _ = k.sde()
    Fm = mpmath.matrix(F.reshape(F.shape[-2:]).tolist())
    Gm = mpmath.matrix((L @ Qc @ L.mT).reshape(F.shape[-2:]).tolist())
    lam = float(k._lam().detach())
    # reference: Van Loan's block exponential in 50 digits (Q ~ dt^(2s-1) comes out of terms ~ 1)
    with mpmath.workdps(50):
        s = Fm.rows
        for x in [1e-6, 1e-3, 0.1, 0.249, 0.251, 1.0]:
            dt = x / lam
            C = mpmath.zeros(2 * s, 2 * s)
            for i in range(s):
                for j in range(s):
                    C[i, j] = -Fm[i, j] * dt
                    C[i, s + j] = Gm[i, j] * dt
                    C[s + i, s + j] = Fm[j, i] * dt
            E = mpmath.expm(C)
            Phi = E[s:, s:].T
            Qm = Phi * E[:s, s:]
            ref = torch.tensor([[float(Qm[i, j]) for j in range(s)] for i in range(s)], dtype=torch.float64)
            _, Q = k.transition(torch.tensor([dt], dtype=torch.float64))
            rel = ((Q.detach().reshape(s, s) - ref).abs() / ref.abs()).max()
            assert rel < 1e-11, (x, float(rel))


@pytest.mark.parametrize("nu", [1.5, 2.5])
def test_float32_transition_of_a_short_lengthscale_is_finite_and_equals_float64(nu):
    r"""The small-step series of Q overflowed float32 for short lengthscales (coefficients like lam^(s p) / p!), so
    Q(0) was NaN: FunBaT's day mode on Beijing (lengthscale 8e-4 of the range) predicted NaN in float32."""
    k64 = MaternMarkovKernel(nu=nu).double()
    k64.lengthscale, k64.variance = 8e-4, 4.1
    k32 = MaternMarkovKernel(nu=nu).float()
    k32.lengthscale, k32.variance = 8e-4, 4.1
    dt = torch.tensor([0.0, 1e-6, 1e-4, 6.8e-4, 0.1], dtype=torch.float64)
    Phi64, Q64 = k64.transition(dt)
    Phi32, Q32 = k32.transition(dt.float())
    assert bool(torch.isfinite(Q32).all()) and bool(torch.isfinite(Phi32).all())
    scale = k64.stationary_covariance().diagonal().sqrt()  # compare in units of the stationary standard deviations
    unit = scale[:, None] * scale[None, :]
    torch.testing.assert_close((Q32.double() / unit), (Q64 / unit), rtol=0, atol=2e-4)
    assert float(Q32[0].detach().abs().max()) == 0.0  # no noise over a zero step


def test_matern12_q_is_accurate_for_small_steps_in_float32():
    r"""Matérn-1/2's Q = sigma^2 (1 - e^{-2 lam dt}) came from P_inf - Phi P_inf Phi^T, which cancels (relative error
    eps / (2 lam dt)): in float32 Q was 0 below lam dt ~ 3e-8 and 2% off at 3e-6, so dense series (a lengthscale of
    10x the range, n = 1e5) had a log likelihood 50 off and the variance gradient 86% off."""
    k64 = MaternMarkovKernel(nu=0.5).double()
    k32 = MaternMarkovKernel(nu=0.5).float()
    for k in (k64, k32):
        k.lengthscale, k.variance = 2.0, 1.7
    lam_dt = torch.logspace(-9, 1, 41, dtype=torch.float64)
    dt = (2.0 * lam_dt).float()  # lam = 1 / 2
    _, Q64 = k64.transition(dt.double())
    _, Q32 = k32.transition(dt)
    ref = -1.7 * torch.expm1(-dt.double())
    torch.testing.assert_close(Q64[:, 0, 0], ref, rtol=1e-14, atol=0)
    torch.testing.assert_close(Q32[:, 0, 0].double(), ref, rtol=1e-6, atol=0)
    Q32[0, 0, 0].backward()  # differentiable in the lengthscale and the variance
    assert all(bool(torch.isfinite(p.grad).all()) for p in k32.parameters())


def test_unknown_keyword_arguments_are_refused_not_dropped():
    r"""GPyTorch's ``Kernel`` swallows unknown keywords, so ``MaternMarkovKernel(lengthscale=0.7, variance=1.3)`` built
    a kernel at the default lengthscale and variance (0.693 both) without a word."""
    from gpgeom.kernels import CategoricalMarkovKernel, SpectralKernel, WNOJKernel

    with pytest.raises(TypeError, match=r"MaternMarkovKernel got unexpected keyword argument\(s\) `lengthscale`"):
        MaternMarkovKernel(lengthscale=0.7, variance=1.3)
    with pytest.raises(TypeError, match=r"WNOJKernel got unexpected keyword argument\(s\) `qc`"):
        WNOJKernel(qc=2.0)
    with pytest.raises(TypeError, match=r"CategoricalMarkovKernel got unexpected keyword argument\(s\) `n_labels`"):
        CategoricalMarkovKernel(n_labels=3)
    vals, vecs = torch.linspace(0.0, 2.0, 4, dtype=torch.float64), torch.eye(4, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"SpectralKernel got unexpected keyword argument\(s\) `lengthscale`"):
        SpectralKernel(vals, vecs, lengthscale=0.5)
    # GPyTorch's own keywords still pass
    k = MaternMarkovKernel(nu=2.5, batch_shape=torch.Size([2]), lengthscale_prior=None)
    assert k.batch_shape == torch.Size([2])


class _GenericOU(MarkovKernel):
    r"""Ornstein-Uhlenbeck through the base class's generic transition (Van Loan)."""

    state_dim = 1

    def sde(self) -> SDE:
        one = torch.ones(1, 1, dtype=D)
        return SDE(-one, one, 2.0 * one, one, one)


@pytest.mark.parametrize(
    "kernel", [_matern(0.5), _matern(1.5), _matern(2.5), _iw(2), _iw(3), _GenericOU()], ids=lambda k: type(k).__name__
)
def test_a_negative_step_is_refused_by_transition(kernel):
    r"""A backward step is no transition: Matern 3/2 at dt = -0.1 gave Q with a negative diagonal (-7.26) and no
    error, and the filters of any caller went on with negative variances. Every transition now refuses it, naming
    `dt`, the value and where (a zero step stays valid: Phi = I, Q = 0, the limit of small positive steps)."""
    dt = torch.tensor([[0.2, 0.0, -0.1]], dtype=D)
    with pytest.raises(ValueError, match=r"`dt` of .*\.transition must be >= 0 .*got -0\.1 at flat index 2 of shape"):
        kernel.transition(dt)
    Phi, Q = kernel.transition(dt[:, :2])
    s = kernel.state_dim
    _close(Phi[..., 1, :, :], torch.eye(s, dtype=D).expand_as(Phi[..., 1, :, :]), rtol=0, atol=1e-12)
    _close(Q[..., 1, :, :], torch.zeros_like(Q[..., 1, :, :]), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "kernel", [_matern(0.5), _matern(1.5), _matern(2.5), _iw(2), _iw(3), _GenericOU()], ids=lambda k: type(k).__name__
)
def test_a_nan_step_is_refused_and_an_infinite_one_is_the_stationary_limit(kernel):
    r"""A NaN step gave NaN transitions without a word, and an infinite one NaN too (e^{-lam inf} inf^k = 0 x inf)
    for Matérn 3/2 and 5/2 and the integrated Wiener kernels, and an ``OverflowError`` ("cannot convert float
    infinity to integer") through Van Loan's exponential. NaN is refused everywhere; for the stationary Matérn
    kernels an infinite step is the limit of long ones, Phi = 0 and Q = P_inf (what Matérn 1/2 gave already), with
    finite gradients; the non-stationary and generic kernels refuse it."""
    dt = torch.tensor([0.2, float("nan")], dtype=D)
    with pytest.raises(ValueError, match=r"`dt` of .*\.transition must be (non-NaN|finite), got nan at flat index 1"):
        kernel.transition(dt)
    dt = torch.tensor([0.2, float("inf")], dtype=D)
    if not isinstance(kernel, MaternMarkovKernel):
        with pytest.raises(ValueError, match=r"`dt` of .*\.transition must be finite, got inf at flat index 1"):
            kernel.transition(dt)
        return
    k = copy.deepcopy(kernel)
    Phi, Q = k.transition(dt)
    _, Q_long = k.transition(torch.tensor([1e3], dtype=D) / k._lam().detach())  # lam dt = 1000: e^-1000 = 0
    Pinf = k.stationary_covariance().detach()
    _close(Phi[1].detach(), torch.zeros_like(Phi[1]), rtol=0, atol=0)
    _close(Q[1].detach(), Pinf, rtol=1e-14, atol=0)
    _close(Q_long[0].detach(), Pinf, rtol=1e-14, atol=0)
    (Phi.sum() + Q.sum()).backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in k.parameters())


@pytest.mark.parametrize("nu", NUS)
def test_float32_dense_covariance_of_a_dense_series_is_accurate_and_psd(nu):
    r"""The dense form took its distances from GPyTorch's expansion :math:`a^2 + b^2 - 2ab` (absolute error
    :math:`\epsilon (t - \bar t)^2`): in float32, 500 times on [0, 1] with lengthscale 0.01 had entries up to 4.6e-4
    off the Matérn formula (0.1% of the variance), and the Matérn-5/2 Gram matrix was indefinite (smallest eigenvalue
    -2.3e-6 instead of +1.9e-4), so a float32 ExactGP on it needed jitter. Distances from the differences are exact
    for close times."""
    k = MaternMarkovKernel(nu=nu).float()
    k.lengthscale, k.variance = 0.01, 1.0
    t = torch.linspace(0.0, 1.0, 500)[:, None]
    K = k(t).to_dense().detach().double()
    K_cross = k(t, t.clone()).to_dense().detach().double()  # x1 is not x2: GPyTorch's cross path
    z = (
        (t.double() - t.double().T).abs() * math.sqrt(2 * nu) / float(k.lengthscale.detach())
    )  # float64 formula, same times
    poly = {0.5: 1.0, 1.5: 1.0 + z, 2.5: 1.0 + z + z.square() / 3.0}[nu]
    ref = float(k.variance.detach()) * poly * torch.exp(-z)
    for got in (K, K_cross):
        _close(got, ref, rtol=0, atol=2e-5)
    ev, ev_ref = torch.linalg.eigvalsh(K)[0], torch.linalg.eigvalsh(ref)[0]
    assert float(ev) > 0.5 * float(ev_ref), (float(ev), float(ev_ref))


@pytest.mark.parametrize("lengthscale", [0.7, 100.0])
def test_float32_transition_just_above_the_series_range_equals_van_loan(lengthscale):
    r"""Above lam dt = 1/4, Q = P_inf - Phi P_inf Phi^T was evaluated in the kernel's dtype, and cancels (relative error
    about eps / (lam dt)^(2s-1)): in float32 (nu = 5/2), relative to Q's own diagonal, Q was 1.5e-4 off at
    lam dt = 0.26 and 4e-5 at 0.4, where the float64 closed form and Van Loan's exponential agree to 1e-12. The
    transition is now evaluated in float64 and rounded once (1.6e-6)."""
    k32 = MaternMarkovKernel(nu=2.5).float()
    k32.lengthscale, k32.variance = lengthscale, 1.3
    k64 = copy.deepcopy(k32).double()  # the same (float32) raw hyperparameters
    lam = float(k64._lam().detach())
    dt = (torch.tensor([0.26, 0.3, 0.4, 0.5, 0.7, 1.0, 2.0], dtype=D) / lam).float()
    Phi32, Q32 = k32.transition(dt)
    assert Phi32.dtype == Q32.dtype == torch.float32
    F, L, Qc, _, _ = k64.sde()
    Phi_ref, Q_ref = (m.detach() for m in discretize(F, L, Qc, dt.double()))  # Van Loan's exponential, float64
    d = Q_ref.diagonal(dim1=-2, dim2=-1)
    unit = (d[..., :, None] * d[..., None, :]).sqrt()  # Q in units of its own standard deviations
    _close(Q32.detach().double() / unit, Q_ref / unit, rtol=0, atol=1e-5)
    _close(Phi32.detach().double(), Phi_ref, rtol=1e-5, atol=1e-6 * float(Phi_ref.abs().max()))


@pytest.mark.parametrize("nu", [1.5, 2.5])
def test_transition_gradient_with_short_and_huge_steps_is_finite(nu):
    r"""When some step was below the series' range the series was evaluated at every step, and dt^21 overflowed for
    dt > 1e14 (times in nanoseconds: a lengthscale of a day, 1e14, and a gap of 12 days): the unused branch's
    gradient 0 x inf made the lengthscale and variance gradients NaN. They now equal the sum of the gradients of the
    steps taken one by one (each with its own branch)."""

    def grads(steps):
        k = MaternMarkovKernel(nu=nu).double()
        k.lengthscale, k.variance = 1e14, 1.3
        Phi, Q = k.transition(torch.tensor(steps, dtype=D))
        (Phi.sum() + Q.sum()).backward()
        return torch.stack([k.raw_lengthscale.grad.reshape(()), k.raw_variance.grad.reshape(())])

    steps = [0.0, 1e13, 1e15]
    together = grads(steps)
    assert bool(torch.isfinite(together).all()), together
    _close(together, sum(grads([s]) for s in steps), rtol=1e-10)


@pytest.mark.filterwarnings("ignore:The last_dim_is_batch argument is deprecated:DeprecationWarning")
@pytest.mark.parametrize("batch_shape", [EMPTY, torch.Size([2]), torch.Size([2, 3])])
def test_matern_last_dim_is_batch_equals_scaled_gpytorch_matern(batch_shape):
    r"""With ``last_dim_is_batch=True`` the input dimensions become a batch dimension after ``batch_shape``, but the
    lengthscale and variance (``batch_shape x 1 x 1``) were broadcast against it from the right: with
    ``batch_shape=(2,)`` and 2 input columns, batch member j's hyperparameters were applied to column j (0.85 off
    GPyTorch's ``ScaleKernel(MaternKernel)``), and other shapes raised a broadcasting error."""
    k = _matern(1.5, batch_shape)
    ref = gpytorch.kernels.MaternKernel(nu=1.5, batch_shape=batch_shape)
    ref = gpytorch.kernels.ScaleKernel(ref, batch_shape=batch_shape)
    ref = ref.to(D)
    ref.base_kernel.lengthscale, ref.outputscale = k.lengthscale.detach(), k.variance.detach()
    g = torch.Generator().manual_seed(3)
    x1 = torch.rand(*batch_shape, 5, 2, dtype=D, generator=g)
    x2 = torch.rand(*batch_shape, 4, 2, dtype=D, generator=g)
    got = k(x1, x2, last_dim_is_batch=True).to_dense()
    assert got.shape == (*batch_shape, 2, 5, 4)
    _close(got, ref(x1, x2, last_dim_is_batch=True).to_dense())
    _close(k(x1, x1, diag=True, last_dim_is_batch=True), ref(x1, x1, diag=True, last_dim_is_batch=True))


@pytest.mark.filterwarnings("ignore:The last_dim_is_batch argument is deprecated:DeprecationWarning")
def test_integrated_wiener_refuses_arguments_it_would_ignore():
    r"""The integrated Wiener kernels have no lengthscale: ``lengthscale_prior``/``lengthscale_constraint`` and
    ``ard_num_dims=2`` were accepted and dropped; ``P0=inf`` built a kernel with infinite covariances;
    ``qc_constraint="x"`` failed with "str is not a Module subclass", and ``last_dim_is_batch=True`` with "This is
    likely a bug in GPyTorch"."""
    with pytest.raises(TypeError, match=r"WNOAKernel has no lengthscale, so `lengthscale_prior` would be ignored"):
        WNOAKernel(lengthscale_prior=gpytorch.priors.GammaPrior(2.0, 1.0))
    with pytest.raises(TypeError, match=r"`lengthscale_constraint` would be ignored"):
        WNOJKernel(lengthscale_constraint=gpytorch.constraints.Positive())
    with pytest.raises(ValueError, match=r"`ard_num_dims` must be None or 1 for IntegratedWienerKernel"):
        IntegratedWienerKernel(1, ard_num_dims=2)
    with pytest.raises(TypeError, match=r"`P0` must be None, a finite non-negative float"):
        WNOAKernel(P0=float("inf"))
    with pytest.raises(TypeError, match=r"`qc_constraint` must be a gpytorch Interval constraint.*got str"):
        WNOAKernel(qc_constraint="x")
    with pytest.raises(TypeError, match=r"`variance_constraint` must be a gpytorch Interval constraint.*got float"):
        MaternMarkovKernel(variance_constraint=1.0)
    with pytest.raises(ValueError, match=r"WNOAKernel takes one input column .* `last_dim_is_batch=True`"):
        WNOAKernel()(torch.rand(4, 1, dtype=D), last_dim_is_batch=True).to_dense()
    # what they do take still works: a finite P0, a constraint, ard_num_dims=1
    k = WNOAKernel(P0=2.0, qc_constraint=gpytorch.constraints.Interval(0.1, 5.0), ard_num_dims=1).to(D)
    t = torch.tensor([[0.5]], dtype=D)
    value = float(k(t).to_dense()[0, 0].detach())
    assert value == pytest.approx(2.0 * (1.0 + 0.5**2) + float(k.qc.detach()) * 0.5**3 / 3)


def test_steps_and_first_times_whose_batch_does_not_broadcast_are_refused_by_name():
    r"""``transition(dt)`` and ``initial_state(t0)`` of a kernel with ``batch_shape=(3,)`` given a batch of 2 failed
    with torch's "The size of tensor a (3) must match the size of tensor b (2)", naming neither argument."""
    from gpgeom.kernels.categorical import CategoricalMarkovKernel

    bs = torch.Size([3])
    for k in (MaternMarkovKernel(batch_shape=bs), WNOAKernel(batch_shape=bs), CategoricalMarkovKernel(batch_shape=bs)):
        name = type(k).__name__
        with pytest.raises(ValueError, match=rf"\(2,\) of `dt` \(shape batch x m\) of {name} .* batch_shape \(3,\)"):
            k.transition(torch.rand(2, 5))
        with pytest.raises(ValueError, match=rf"\(2,\) of `t0` \(shape batch\) of {name} .* batch_shape \(3,\)"):
            k.initial_state(torch.rand(2))
        # what broadcasts still works: shared steps, and a data batch in front of the kernel's
        assert k.transition(torch.rand(5))[1].shape == (3, 5, k.state_dim, k.state_dim)
        assert k.transition(torch.rand(4, 3, 5))[1].shape == (4, 3, 5, k.state_dim, k.state_dim)
        assert k.initial_state(torch.rand(4, 1))[1].shape == (4, 3, k.state_dim, k.state_dim)


def test_variance_and_qc_outside_or_on_their_bounds_are_refused_by_name():
    r"""``k.variance = 0.0`` under ``Positive()`` was accepted with raw value -inf, where training can never move it
    (the softplus' gradient is 0 there); negative and NaN values raised GPyTorch's ``RuntimeError`` suggesting a
    ``GaussianLikelihood(noise_constraint=...)``. Values must now lie strictly inside the constraint's bounds, else
    a ``ValueError`` names the parameter, the bounds and the value."""
    from gpgeom.kernels.categorical import CategoricalMarkovKernel

    for make in (MaternMarkovKernel, CategoricalMarkovKernel):
        k = make(batch_shape=torch.Size([2])).to(D)
        name = make.__name__
        for bad, shown in ((0.0, "0"), (-1.0, "-1"), (float("nan"), "nan"), (torch.tensor([1.0, 0.0], dtype=D), "0")):
            with pytest.raises(
                ValueError, match=rf"`variance` of {name} must lie strictly inside \(0, inf\).*got {shown}"
            ):
                k.variance = bad
        k.variance = torch.tensor([0.3, 7.0], dtype=D)
        _close(k.variance.detach(), torch.tensor([0.3, 7.0], dtype=D))
        assert bool(torch.isfinite(k.raw_variance).all())  # finite raw values: training can move them
    k = MaternMarkovKernel(variance_constraint=gpytorch.constraints.Interval(0.1, 2.0)).to(D)
    for bad in (0.1, 2.0, 3.0):
        with pytest.raises(ValueError, match=r"strictly inside \(0.1, 2\), the bounds of its constraint Interval"):
            k.variance = bad
    k.variance = 1.9
    assert float(k.variance.detach()) == pytest.approx(1.9, rel=1e-12)
    w = WNOAKernel().to(D)
    with pytest.raises(ValueError, match=r"`qc` of WNOAKernel must lie strictly inside \(0, inf\).*got 0"):
        w.qc = 0.0
    w.qc = 2.5
    assert float(w.qc.detach()) == pytest.approx(2.5, rel=1e-12)


def test_integrated_wiener_takes_numpy_scalars():
    r"""``IntegratedWienerKernel(np.int64(2))`` was refused with "`order` must be an int >= 1, got np.int64(2)", and
    ``t0``/``P0`` given as numpy scalars (``np.float32(0.1)``, ``np.int64(1)``) with "must be a finite float or a
    tensor" (numpy scalars from a configuration file or an array). They are numbers: the kernels equal those built
    from the Python numbers."""
    np = pytest.importorskip("numpy")
    t = torch.tensor([[0.3], [0.9], [1.4]], dtype=D)
    for order, t0, P0 in (
        (np.int64(2), np.float32(0.125), np.int64(1)),
        (np.int32(3), np.float64(-0.5), np.float32(0.25)),
    ):
        k = IntegratedWienerKernel(order, t0=t0, P0=P0).to(D)
        ref = IntegratedWienerKernel(int(order), t0=float(t0), P0=float(P0)).to(D)
        assert k.state_dim == int(order) and isinstance(k.state_dim, int)
        _close(k(t).to_dense(), ref(t).to_dense(), rtol=0)


def test_lengthscale_set_from_a_python_float_keeps_the_kernels_precision():
    r"""GPyTorch's setter made ``torch.as_tensor(0.7)`` (float32, the default dtype) before casting, so
    ``k.lengthscale = 0.7`` on a float64 ``MaternMarkovKernel`` stored 0.699999988 (1.7e-8 off) and every float64
    covariance and transition moved with it; on its bound (0) it stored raw -inf, never trained."""
    k = MaternMarkovKernel(nu=1.5, batch_shape=torch.Size([2])).to(D)
    k.lengthscale = 0.7
    _close(k.lengthscale.detach(), torch.full((2, 1, 1), 0.7, dtype=D), rtol=1e-15)
    lam = float(k._lam()[0].detach())
    assert lam == pytest.approx(math.sqrt(3.0) / 0.7, rel=1e-15)
    with pytest.raises(ValueError, match=r"`lengthscale` of MaternMarkovKernel must lie strictly inside \(0, inf\)"):
        k.lengthscale = 0.0


@pytest.mark.parametrize(
    ("nu", "lengthscale", "variance"),
    ((2.5, 1e-3, 1.0), (2.5, 1e-2, 1.0), (1.5, 1e-3, 1.0), (2.5, 1.0, 1e12), (0.5, 1.0, 1e12)),
)
def test_van_loan_is_exact_for_badly_scaled_sdes(nu, lengthscale, variance):
    r"""``discretize`` (the generic transition of every Markov kernel without a closed form) against the transition
    computed where the state is O(1): with :math:`x_i \to x_i / \lambda^i` Matérn's :math:`F` is :math:`\lambda C`
    (:math:`C` the companion matrix of :math:`(x + 1)^s`) and :math:`P_\infty` a matrix of O(1) entries, so
    :math:`\Phi = e^{\lambda \Delta C}`, :math:`Q = P_\infty - \Phi P_\infty \Phi^\top`. Before the state was balanced
    and :math:`L Q_c L^\top` scaled to :math:`F`'s size, :math:`Q` was off by 5.6e-3 (relative to the variance) at
    a lengthscale of 1e-3 (:math:`\nu = 5/2`) and :math:`\Phi` by 3.6e-5 at a variance of 1e12 (:math:`\nu = 1/2`)."""
    k = MaternMarkovKernel(nu=nu).to(D)
    k.lengthscale, k.variance = lengthscale, variance
    F, L, Qc, _, _ = (m.detach() for m in k.sde())
    s, lam = k.state_dim, math.sqrt(2 * nu) / lengthscale
    C = torch.diag(torch.ones(s - 1, dtype=D), 1)
    C[-1] = torch.tensor([-math.comb(s, j) for j in range(s)], dtype=D)
    P = {1: [[1.0]], 2: [[1.0, 0.0], [0.0, 1.0]], 3: [[1.0, 0.0, -1 / 3], [0.0, 1 / 3, 0.0], [-1 / 3, 0.0, 1.0]]}[s]
    P = variance * torch.tensor(P, dtype=D)
    x = torch.tensor([0.01, 0.3, 1.0, 2.0], dtype=D)  # lambda * dt
    Phi_ref = torch.linalg.matrix_exp(C * x[:, None, None])
    Q_ref = P - Phi_ref @ P @ Phi_ref.mT
    Phi, Q = discretize(F, L, Qc, x / lam)
    u = lam ** torch.arange(s, dtype=D)  # the scale of f^(i)
    assert ((Phi * u / u[:, None] - Phi_ref).abs().max()) < 1e-12
    assert ((Q / (u[:, None] * u) - Q_ref).abs().max()) < 1e-12 * variance

r"""Tests of gpgeom.models.funbat (FunBaT, its CP case, the BoTorch adapter) and of the engine's site chains.

Independent truths: dense GP algebra with GPyTorch's MaternKernel (posterior of R independent components given
R-dimensional Gaussian pseudo-observations, written in covariance form, marginal and joint), the former Householder
rotation of the sites (written out here), brute-force sums over the core for the moments of entries, finite
differences, the exact generator of the synthetic tensors (latent functions and core known), fits on subsets of the
data, and FunBaT refitted on the union of the data with fixed hyperparameters (for the adapter's conditioning).
"""

from __future__ import annotations

import itertools
import math
import warnings

import gpytorch
import pytest
import torch

from gpgeom.botorch.check import check_botorch_model
from gpgeom.datasets.tensors import make_synthetic_tensor
from gpgeom.engine.sites import gain_products
from gpgeom.engine.statespace import kalman_filter, rts_smoother
from gpgeom.errors import ConvergenceWarning
from gpgeom.kernels.markov import MaternMarkovKernel
from gpgeom.metrics import coverage, coverage_table, z_rms
from gpgeom.models.funbat import (
    FunBaT,
    FunBaTCP,
    expected_log_prior,
    joint_log_likelihood,
    latent_conditional,
    latent_cross_covariance,
    latent_posterior,
    mode_sites,
)
from gpgeom.models.funbat.entries import entry_joint
from gpgeom.models.funbat.latent import block_diagonal

D = torch.float64
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _dense_posterior(nu, ls, var, t, lam, eta, t_new):
    r"""Posterior of R iid GP components at ``[t, t_new]`` given sites ``(lam, eta)`` at ``t``, densely:
    :math:`\Sigma = K - K (I + \Lambda K)^{-1} \Lambda K`, :math:`\mu = \Sigma \eta` (component-major ordering);
    also :math:`\log Z = -\tfrac12 \log|I + K\Lambda| + \tfrac12 \eta^\top \Sigma \eta` (up to a constant)."""
    I, R = eta.shape
    t_all = torch.cat([t, t_new])
    n = t_all.numel()
    base = gpytorch.kernels.MaternKernel(nu=nu).to(D)
    base.lengthscale = torch.tensor(ls, dtype=D)  # a Python float would be rounded to float32 by GPyTorch's setter
    K1 = var * base(t_all[:, None]).to_dense()
    Kb = torch.block_diag(*[K1] * R)
    L = torch.zeros(R * n, R * n, dtype=D)
    e = torch.zeros(R * n, dtype=D)
    for i in range(I):
        ids = torch.arange(R) * n + i
        L[ids[:, None], ids[None, :]] = lam[i]
        e[ids] = eta[i]
    eye = torch.eye(R * n, dtype=D)
    Sig = Kb - Kb @ torch.linalg.solve(eye + L @ Kb, L @ Kb)
    mu = Sig @ e
    logZ = -0.5 * torch.linalg.slogdet(eye + Kb @ L)[1] + 0.5 * e @ mu
    means = torch.stack([mu[torch.arange(R) * n + j] for j in range(n)])
    covs = torch.stack([Sig[(torch.arange(R) * n + j)[:, None], (torch.arange(R) * n + j)[None, :]] for j in range(n)])
    return means[:I], covs[:I], means[I:], covs[I:], logZ


def _dense_joint(nu, ls, var, t, lam, eta, t_new):
    r"""Joint posterior of the R components at ``t_new`` given the sites at ``t``, densely (as above): means
    ``n x R`` and covariances ``n x n x R x R`` (point-major)."""
    I, R = eta.shape
    n = t_new.numel()
    t_all = torch.cat([t, t_new])
    N = t_all.numel()
    base = gpytorch.kernels.MaternKernel(nu=nu).to(D)
    base.lengthscale = torch.tensor(ls, dtype=D)  # a Python float would be rounded to float32 by GPyTorch's setter
    Kb = torch.block_diag(*[var * base(t_all[:, None]).to_dense()] * R)
    L = torch.zeros(R * N, R * N, dtype=D)
    e = torch.zeros(R * N, dtype=D)
    for i in range(I):
        ids = torch.arange(R) * N + i
        L[ids[:, None], ids[None, :]] = lam[i]
        e[ids] = eta[i]
    Sig = Kb - Kb @ torch.linalg.solve(torch.eye(R * N, dtype=D) + L @ Kb, L @ Kb)
    mu = Sig @ e
    sel = (torch.arange(R)[None, :] * N + I + torch.arange(n)[:, None]).reshape(-1)  # point-major
    return mu[sel].reshape(n, R), Sig[sel[:, None], sel[None, :]].reshape(n, R, n, R).permute(0, 2, 1, 3)


def _householder_posterior(kernel, t, lam, eta, parallel):
    r"""The former site path, written independently: each scalar observation :math:`v_j^\top u` of a site is taken
    in a rotated state basis :math:`z = T x` (:math:`T` the Householder reflection whose first row is :math:`\pm
    v_j` embedded in the state) with the fixed measurement row :math:`e_1`, the rotations entering the transitions
    (zero-length steps with :math:`Q = 0` between the observations of one coordinate)."""
    I, R = eta.shape
    s = kernel.state_dim
    Dm = R * s
    d, V = torch.linalg.eigh(0.5 * (lam + lam.mT))
    obs = d > 1e-12 * d.max()
    ds = torch.where(obs, d, torch.ones_like(d))
    val = torch.where(obs, (V.mT @ eta[..., None])[..., 0] / ds, torch.zeros_like(d))
    noise = torch.where(obs, 1.0 / ds, torch.full_like(d, math.inf))
    h = torch.zeros(I, R, Dm, dtype=D)
    h[:, :, torch.arange(R) * s] = V.mT  # h[i, j] = v_j placed on the value entries
    sign = torch.where(h[..., 0] >= 0, -1.0, 1.0).to(D)
    v = -sign[..., None] * h
    v[..., 0] += 1.0
    T = torch.eye(Dm, dtype=D) - 2.0 * v[..., :, None] * v[..., None, :] / (v * v).sum(-1)[..., None, None]
    n = I * R
    T = T.reshape(n, Dm, Dm)
    Phi_k, Q_k = kernel.transition(t[1:] - t[:-1])
    mid = torch.eye(Dm, dtype=D).expand(n - 1, Dm, Dm).clone()
    Qmid = torch.zeros(n - 1, Dm, Dm, dtype=D)
    enter = torch.arange(1, I) * R - 1
    mid[enter], Qmid[enter] = block_diagonal(Phi_k, R), block_diagonal(Q_k, R)
    Phi = T[1:] @ mid @ T[:-1]
    Q = T[1:] @ Qmid @ T[1:]
    P0 = T[0] @ block_diagonal(kernel.sde().Pinf, R) @ T[0]
    H = torch.zeros(1, Dm, dtype=D)
    H[0, 0] = 1.0
    kf = kalman_filter(Phi, 0.5 * (Q + Q.mT), H, (sign * val).reshape(n), noise.reshape(n), torch.zeros(Dm, dtype=D),
                       P0, mask=obs.reshape(n), parallel=parallel)  # fmt: skip
    sm = rts_smoother(Phi, kf, parallel=parallel)
    last = torch.arange(I) * R + R - 1
    mean = (T[last] @ sm.mean[last][..., None])[..., 0]
    cov = T[last] @ sm.cov[last] @ T[last]
    k = last[:-1]
    cross = T[k] @ sm.gain[k] @ sm.cov[k + 1] @ T[k + 1]
    return mean, cov, cross, kf.log_likelihood


def _random_sites(I, R, gen_scale=5.0):
    A = torch.randn(I, R, R, dtype=D)
    lam = A @ A.transpose(-1, -2) * torch.rand(I, 1, 1, dtype=D) * gen_scale
    lam[1] = 0.0  # a coordinate without information
    lam[2] = torch.outer(A[2, 0], A[2, 0])  # rank-one information
    eta = (lam @ torch.randn(I, R, 1, dtype=D))[..., 0]
    return lam, eta


# ---------------------------------------------------------------------------------------------------------------
# the engine identity in this setting
@pytest.mark.parametrize("nu", [0.5, 1.5, 2.5])
@pytest.mark.parametrize("R", [1, 3])
def test_latent_posterior_equals_dense_gp(nu, R):
    I = 25
    k = MaternMarkovKernel(nu=nu).to(D)
    k.lengthscale, k.variance = 0.3, 1.7
    t = torch.sort(torch.rand(I, dtype=D)).values
    lam, eta = _random_sites(I, R)
    t_new = torch.cat([torch.rand(15, dtype=D) * 1.6 - 0.3, t[:2], t[-1:]])  # interior, both sides, seen
    post = latent_posterior(k, t, lam, eta)
    s = k.state_dim
    m_new, C_new = latent_conditional(k, t, post, t_new)
    m, C, mt, Ct, logZ = _dense_posterior(nu, 0.3, 1.7, t, lam, eta, t_new)
    torch.testing.assert_close(post.mean[:, ::s], m, rtol=0, atol=1e-8)
    torch.testing.assert_close(post.cov[:, ::s, ::s], C, rtol=0, atol=1e-8)
    torch.testing.assert_close(m_new, mt, rtol=0, atol=1e-8)
    torch.testing.assert_close(C_new, Ct, rtol=0, atol=1e-8)
    # the log likelihood differs from log Z by a constant independent of the hyperparameters
    k2 = MaternMarkovKernel(nu=nu).to(D)
    k2.lengthscale, k2.variance = 0.7, 0.6
    logZ2 = _dense_posterior(nu, 0.7, 0.6, t, lam, eta, t_new[:0])[-1]
    ll2 = latent_posterior(k2, t, lam, eta, smooth=False).log_likelihood
    torch.testing.assert_close(post.log_likelihood - ll2, logZ - logZ2, rtol=0, atol=1e-8)
    # the batched (padded) joint likelihood of two modes equals the single ones
    ch = mode_sites(lam, eta, s)
    ch2 = mode_sites(lam[:10], eta[:10], s)
    joint = joint_log_likelihood([k, k2], [t, t[:10]], [ch, ch2])
    single = torch.stack(
        [post.log_likelihood, latent_posterior(k2, t[:10], lam[:10], eta[:10], smooth=False).log_likelihood]
    )
    torch.testing.assert_close(joint, single, rtol=0, atol=1e-8)


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("nu", [0.5, 1.5, 2.5])
@pytest.mark.parametrize("R", [1, 3])
def test_sites_with_one_row_per_step_equal_the_householder_rotation(nu, R, parallel):
    r"""The engine's site chain (``kalman_filter(..., H_per_step=True)``, no rotation) and the former rotated path
    give the same posterior and likelihood (measured: at most 2e-13 relative in float64)."""
    I = 70
    k = MaternMarkovKernel(nu=nu).to(D)
    k.lengthscale, k.variance = 0.2, 1.3
    t = torch.sort(torch.rand(I, dtype=D)).values
    lam, eta = _random_sites(I, R)
    with torch.no_grad():
        post = latent_posterior(k, t, lam, eta, parallel=parallel)
        old = _householder_posterior(k, t, lam, eta, parallel)
    for got, want in zip((post.mean, post.cov, post.cross, post.log_likelihood), old):
        assert float((got - want).abs().max() / want.abs().max()) <= 1e-10


@pytest.mark.parametrize("nu", [0.5, 1.5, 2.5])
def test_joint_latent_covariance_equals_dense_gp(nu):
    r"""Cross-coordinate covariances of the latent functions (smoother gains along the chain, bridge residuals in
    a shared interval or extrapolation side) equal the dense GP posterior's, at seen, interior and outside points."""
    I, R = 20, 2
    k = MaternMarkovKernel(nu=nu).to(D)
    k.lengthscale, k.variance = 0.3, 1.7
    t = torch.sort(torch.rand(I, dtype=D)).values
    lam, eta = _random_sites(I, R)
    inside = 0.5 * (t[4] + t[5])
    t_new = torch.cat([
        torch.rand(8, dtype=D) * 1.6 - 0.3, t[:2], t[-1:], torch.stack([inside, inside + 0.1 * (t[5] - t[4])]),
        torch.tensor([-0.5, -0.4, 1.4, 1.7], dtype=D),
    ])  # fmt: skip
    post = latent_posterior(k, t, lam, eta)
    table = gain_products(post.gain)
    m1, m2, C = latent_cross_covariance(k, t, post, table, t_new[None], t_new[None])
    mean, cov = _dense_joint(nu, 0.3, 1.7, t, lam, eta, t_new)
    torch.testing.assert_close(m1[0], mean, rtol=0, atol=1e-8)
    torch.testing.assert_close(m2[0], mean, rtol=0, atol=1e-8)
    torch.testing.assert_close(C[0], cov, rtol=0, atol=1e-8)
    _, marg = latent_conditional(k, t, post, t_new)
    torch.testing.assert_close(C[0].diagonal(dim1=0, dim2=1).permute(2, 0, 1), marg, rtol=0, atol=1e-12)


def test_chain_covariance_refuses_node_indices_outside_the_chain():
    r"""A negative node index used to wrap around (a covariance of neither the asked pair nor any other)."""
    from gpgeom.engine.sites import chain_covariance

    I = 6
    k = MaternMarkovKernel(nu=1.5).to(D)
    post = latent_posterior(k, torch.linspace(0, 1, I, dtype=D), *_random_sites(I, 2))
    table = gain_products(post.gain)
    good = chain_covariance(post.cov, table, torch.tensor([1, 4]), torch.tensor([4, 1]))
    torch.testing.assert_close(good[0], good[1].transpose(-1, -2), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"`rows` must lie in \[0, 5\] \(I = 6 nodes\), got \[-1, -1\]"):
        chain_covariance(post.cov, table, torch.tensor([-1]), torch.tensor([4]))
    with pytest.raises(ValueError, match=r"`cols` must lie in \[0, 5\]"):
        chain_covariance(post.cov, table, torch.tensor([0]), torch.tensor([6]))
    with pytest.raises(TypeError, match="`rows` must be a long tensor"):
        chain_covariance(post.cov, table, torch.tensor([0.0]), torch.tensor([1]))


@pytest.mark.parametrize("nu", [0.5, 1.5])
def test_em_objective_gradient_is_the_marginal_likelihood_gradient(nu):
    r"""Fisher's identity: at the current hyperparameters the EM objective (expected complete-data log prior under
    the smoothed posterior) has the gradient of the pseudo-observations' log marginal likelihood (Kalman filter)."""
    I, R = 30, 2
    k = MaternMarkovKernel(nu=nu).to(D)
    k.lengthscale, k.variance = 0.25, 1.3
    t = torch.linspace(0, 1, I, dtype=D) + 0.01 * torch.rand(I, dtype=D)
    lam, eta = _random_sites(I, R)
    ll = latent_posterior(k, t, lam, eta, smooth=False).log_likelihood
    g_ll = torch.autograd.grad(ll, [k.raw_lengthscale, k.raw_variance])
    with torch.no_grad():
        post = latent_posterior(k, t, lam, eta)
    g_em = torch.autograd.grad(expected_log_prior(k, t, post), [k.raw_lengthscale, k.raw_variance])
    for a, b in zip(g_ll, g_em):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("decomposition", ["tucker", "cp"])
def test_one_sweep_mode_posterior_equals_dense_gp(decomposition):
    r"""After one sweep, mode k's stored posterior is the dense GP posterior given its pseudo-observations."""
    d = make_synthetic_tensor(150, 10, rank=2, decomposition=decomposition, n_coords=12, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = FunBaT(2, decomposition=decomposition, max_sweeps=1, learn_hyperparameters=False, lengthscale=0.2)
        m.fit(d.X_train, d.y_train)
    for k in range(3):
        md = m._modes[k]
        kern = m.kernels[k]
        t_new = torch.tensor([-0.1, 0.33, 0.5, 1.2], dtype=D)
        mean, cov, mt, Ct, _ = _dense_posterior(1.5, 0.2, 1.0, md.t, md.lam, md.eta, t_new)
        torch.testing.assert_close(md.u_mean, mean, rtol=0, atol=1e-8)
        torch.testing.assert_close(md.u_cov, cov, rtol=0, atol=1e-8)
        lo, span = float(m.coord_lo[k]), float(m.coord_span[k])
        got_m, got_C = m.latent(k, lo + span * t_new)
        torch.testing.assert_close(got_m, mt, rtol=0, atol=1e-8)
        torch.testing.assert_close(got_C, Ct, rtol=0, atol=1e-8)
        assert kern.nu == 1.5


# ---------------------------------------------------------------------------------------------------------------
# recovery of exact low-rank tensors
def _rmse(a, b):
    return float((a.reshape(-1) - b.reshape(-1)).square().mean().sqrt())


def test_tucker_rank2_recovers_a_tucker_tensor():
    d = make_synthetic_tensor(1000, 400, rank=2, decomposition="tucker", n_coords=40, noise_sd=0.05, seed=1)
    m = FunBaT(2, nu=1.5, max_sweeps=40, seed=0).fit(d.X_train, d.y_train)
    mean = m.predict(d.X_test)
    u = d.test_unseen
    assert u.sum() >= 150
    assert _rmse(mean, d.y_test) <= 0.07
    assert _rmse(mean[u], d.y_test[u]) <= 0.07
    assert _rmse(mean[~u], d.y_test[~u]) <= 0.07
    # the latent functions are recovered up to the linear map the core absorbs
    for k in range(3):
        g = torch.linspace(float(d.X_train[:, k].min()), float(d.X_train[:, k].max()), 200, dtype=D)
        um, _ = m.latent(k, g)
        truth = d.latent(k, g)
        A = torch.linalg.lstsq(um, truth).solution
        assert _rmse(um @ A, truth) < 0.05 * float(truth.abs().max())


def test_cp_recovers_a_cp_tensor():
    d = make_synthetic_tensor(1000, 400, rank=2, decomposition="cp", n_coords=40, noise_sd=0.05, seed=1)
    m = FunBaTCP(2, nu=1.5, max_sweeps=40, seed=0).fit(d.X_train, d.y_train)
    mean, std = (v[:, 0] for v in m.predict(d.X_test, return_std=True, observation_noise=True))
    u = d.test_unseen
    assert _rmse(mean, d.y_test) <= 0.07
    assert _rmse(mean[u], d.y_test[u]) <= 0.07
    assert abs(coverage(d.y_test, mean, std, 0.95) - 0.95) <= 0.04  # 400 entries: binomial sd 0.011
    assert m.core_mean.shape == (2, 2, 2) and float(m.core_cov.abs().max()) == 0.0


def test_standardisation_avoids_the_zero_fixed_point():
    d = make_synthetic_tensor(300, 100, rank=2, n_coords=20, noise_sd=0.05, seed=4)
    scale = 1e-3
    m = FunBaT(2, max_sweeps=25, learn_hyperparameters=False, lengthscale=0.3).fit(d.X_train, scale * d.y_train)
    ref = FunBaT(2, max_sweeps=25, learn_hyperparameters=False, lengthscale=0.3).fit(d.X_train, d.y_train)
    torch.testing.assert_close(m.predict(d.X_test) / scale, ref.predict(d.X_test), rtol=1e-6, atol=1e-6)
    assert _rmse(ref.predict(d.X_test), d.y_test) < 0.1


@pytest.mark.parametrize("decomposition", ["tucker", "cp"])
def test_elbo_never_decreases_without_damping(decomposition):
    r"""Every update is a mean-field coordinate-ascent step, so the ELBO (computed independently of the updates,
    with the GP KL from the Kalman filter's evidence) cannot decrease from one sweep to the next."""
    d = make_synthetic_tensor(300, 10, rank=2, decomposition=decomposition, n_coords=20, seed=11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = FunBaT(2, decomposition=decomposition, max_sweeps=25, tol=0.0, learn_hyperparameters=False).fit(
            d.X_train, d.y_train
        )
    elbo = torch.tensor([h["elbo"] for h in m.history], dtype=D)
    assert len(elbo) == 25
    assert bool((elbo[1:] - elbo[:-1] >= -1e-8 * elbo.abs().max()).all())


def test_restarts_pick_the_largest_elbo():
    d = make_synthetic_tensor(300, 100, rank=2, n_coords=20, seed=7)
    m = FunBaT(2, max_sweeps=60, n_restarts=3, restart_sweeps=10, seed=0).fit(d.X_train, d.y_train)
    assert len(m.restart_elbos) == 4
    best = max(m.restart_elbos)
    assert m.history[9]["elbo"] == pytest.approx(best)
    assert m.history[-1]["elbo"] >= best - 1e-6 * abs(best)
    assert _rmse(m.predict(d.X_test), d.y_test) <= 0.07


def test_convergence_waits_for_a_hyperparameter_step():
    d = make_synthetic_tensor(200, 10, rank=2, n_coords=15, seed=12)
    m = FunBaT(2, max_sweeps=40, hyper_warmup=12, tol=1e-2).fit(d.X_train, d.y_train)
    assert m.converged and len(m.history) >= 13 and m.history[12]["hyper_step"]


# ---------------------------------------------------------------------------------------------------------------
# missing entries, dtypes, devices, persistence
def test_missing_entries_are_ignored():
    d = make_synthetic_tensor(200, 50, rank=2, n_coords=15, seed=5)
    y = d.y_train.clone()
    y[::7] = float("nan")
    mask = torch.ones(200, dtype=torch.bool)
    mask[1::9] = False
    kw = dict(max_sweeps=6, min_sweeps=6, hyper_warmup=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = FunBaT(2, **kw).fit(d.X_train, y, mask=mask)
        keep = ~torch.isnan(y) & mask
        b = FunBaT(2, **kw).fit(d.X_train[keep], d.y_train[keep])
    torch.testing.assert_close(a.predict(d.X_test), b.predict(d.X_test), rtol=1e-10, atol=1e-10)


def test_float32_matches_float64():
    d = make_synthetic_tensor(300, 100, rank=2, n_coords=20, seed=6)
    kw = dict(max_sweeps=15, learn_hyperparameters=True, hyper_every=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m64 = FunBaT(2, **kw).fit(d.X_train, d.y_train)
        m32 = FunBaT(2, dtype=torch.float32, **kw).fit(d.X_train.float(), d.y_train.float())
    p32, s32 = m32.predict(d.X_test.float(), return_std=True)
    assert p32.dtype == torch.float32 and s32.dtype == torch.float32
    p64 = m64.predict(d.X_test)
    assert _rmse(p32.double(), p64) < 5e-3
    assert abs(_rmse(p32.double(), d.y_test) - _rmse(p64, d.y_test)) < 5e-3


@pytest.mark.parametrize("device", DEVICES)
def test_device_and_save_load(tmp_path, device):
    d = make_synthetic_tensor(200, 50, rank=(2, 3, 2), n_coords=15, seed=7)
    X, y = d.X_train.to(device), d.y_train.to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = FunBaT((2, 3, 2), nu=(0.5, 1.5, 2.5), max_sweeps=5).fit(X, y)
    mean, std = m.predict(d.X_test.to(device), return_std=True)
    assert mean.device.type == device and m.core_mean.shape == (2, 3, 2)
    path = tmp_path / "funbat.pt"
    m.save(path)
    m2 = FunBaT.load(path, map_location=device)
    mean2, std2 = m2.predict(d.X_test.to(device), return_std=True)
    torch.testing.assert_close(mean2, mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(std2, std, rtol=0, atol=1e-12)
    assert m2.history == m.history and m2.ranks == (2, 3, 2)
    assert m2.elbo() == pytest.approx(m.elbo(), rel=1e-10)
    cp = FunBaTCP(2, max_sweeps=3, min_sweeps=3, learn_hyperparameters=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        cp.fit(X, y)
    cp.save(path)
    cp2 = FunBaT.load(path)
    assert isinstance(cp2, FunBaTCP)
    torch.testing.assert_close(cp2.predict(d.X_test), cp.predict(d.X_test.to(device)).cpu(), rtol=0, atol=1e-12)
    m.to(device="cpu", dtype=torch.float32)
    assert m.predict(d.X_test.float()).dtype == torch.float32


def contract_query(model, as_numpy):
    g = torch.linspace(0.05, 0.95, 6, dtype=D)
    Xt = torch.stack([g, g.flip(0), torch.full_like(g, 0.4)], -1)
    return model.predict(Xt.numpy() if as_numpy else Xt, return_std=True)


def test_funbat_keeps_the_model_contract(tmp_path):
    from contract import check_model_contract

    d = make_synthetic_tensor(150, 10, rank=2, n_coords=12, noise_sd=0.05, seed=13)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = check_model_contract(
            lambda: FunBaT(2, max_sweeps=8, n_restarts=0),
            lambda m: m.fit(d.X_train.numpy(), d.y_train.numpy()),
            contract_query,
            tmp_path,
        )
    mean, std = contract_query(model, False)
    assert mean.shape == (6, 1) and std.shape == (6, 1)
    res = model.fit_result_
    assert res.sweeps == len(model.history) and res.elbo == model.history[-1]["elbo"] and res.seconds > 0
    text = repr(model)
    for field in ("ranks=[2, 2, 2]", "modes=3", "n=150", "lengthscales=", "variances=", "noise=", "sweeps=8"):
        assert field in text, text
    assert repr(FunBaTCP(3)).startswith("FunBaTCP(fitted=False, decomposition='cp', rank=3")
    assert model.lengthscales_.shape == (3,) and model.variances_.shape == (3,)


# ---------------------------------------------------------------------------------------------------------------
# BoTorch: the moment-matched joint Gaussian over entries, conditioning, fantasies
#: Largest difference between the adapter conditioned on two new entries and FunBaT refitted on the union with the
#: same hyperparameters (``rebuild_with``: 40 sweeps from the base), relative to the largest predictive variance
#: (standard deviation for means). Measured on the 400-entry tensor below: 0.019-0.073 over four random pairs drawn
#: from the predictive (0.052 for the pair check_botorch_model draws), while conditioning moved the posterior by
#: 0.09-0.55 on the same scale; 0.064 for a pair observed 0.1 (about 3.5 predictive sd) above the mean
#: (unconditioned: 0.37).
REFIT_TOL = 0.15


@pytest.fixture(scope="module")
def bo_case():
    r"""A rank-2 Tucker tensor with two modes (400 entries, noise sd 0.05), the fitted model, and the same model
    swept to (near) its fixed point with the hyperparameters held fixed: mean-field coordinate ascent drifts slowly
    along the Tucker scale/rotation ridge (relative change ~1e-5 per sweep), so conditioning is compared with a
    refit from a base that has stopped moving."""
    d = make_synthetic_tensor(400, 200, n_modes=2, rank=2, n_coords=30, noise_sd=0.05, seed=8)
    m = FunBaT(2, max_sweeps=20, hyper_every=2).fit(d.X_train, d.y_train)
    empty = (torch.zeros(0, 2, dtype=D), torch.zeros(0, dtype=D))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        base = m.rebuild_with(*empty, tol=0.0, max_sweeps=150)
    return d, m, base


def _refit(base, Xn, Yn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return base.rebuild_with(Xn, Yn, tol=0.0, max_sweeps=40)


def test_botorch_contract_and_maximisation(bo_case):
    from botorch.acquisition import PosteriorMean
    from botorch.optim import optimize_acqf

    d, m, _ = bo_case
    bo = m.as_botorch()
    bounds = torch.stack([d.X_train.min(0).values, d.X_train.max(0).values])
    out = check_botorch_model(
        bo,
        bounds=bounds,
        predict_fn=lambda X: m.predict(X, return_std=True),
        rtol=1e-8,
        atol=1e-10,
        train_X=d.X_train,
        train_Y=d.y_train[:, None],
        test_X=d.X_test,
        test_Y=d.y_test[:, None],
    )
    assert "qLogNoisyExpectedImprovement optimisation" in out["checks"]
    assert "fantasize = conditioning on samples" in out["checks"] and not out["skipped"]
    # the largest predicted value: gradient-based acquisition optimisation vs a dense grid search
    cand, val = optimize_acqf(PosteriorMean(bo), bounds=bounds, q=1, num_restarts=4, raw_samples=64)
    g0 = torch.linspace(float(bounds[0, 0]), float(bounds[1, 0]), 120, dtype=D)
    g1 = torch.linspace(float(bounds[0, 1]), float(bounds[1, 1]), 120, dtype=D)
    grid = torch.cartesian_prod(g0, g1)
    best = float(m.predict(grid).max())
    assert float(val) >= best - 1e-3
    torch.testing.assert_close(m.predict(cand)[0, 0], val.reshape(()), rtol=0, atol=1e-10)


def test_botorch_conditioning_against_a_refit_with_fixed_hyperparameters(bo_case):
    r"""check_botorch_model with conditioning, fantasies and a refit on the union (documented tolerance)."""
    d, _, base = bo_case
    bo = base.as_botorch()
    bounds = torch.stack([d.X_train.min(0).values, d.X_train.max(0).values])
    out = check_botorch_model(
        bo,
        bounds=bounds,
        batch_shapes=((),),
        qs=(2,),
        predict_fn=lambda X: base.predict(X, return_std=True),
        rtol=1e-8,
        atol=1e-10,
        train_X=d.X_train,
        train_Y=d.y_train[:, None],
        test_X=d.X_test,
        test_Y=d.y_test[:, None],
        refit=lambda Xn, Yn: _refit(base, Xn, Yn).as_botorch(),
        refit_tol=REFIT_TOL,
        optimize=False,
    )
    assert "conditioning = refit on the union" in out["checks"]
    assert out["measured"]["refit_error"] <= REFIT_TOL
    assert out["measured"]["condition_error"] <= 1e-8 and out["measured"]["fantasy_error"] <= 1e-8
    # conditioning does most of what the refit does: it is much closer to the refit than the base model is
    g = torch.Generator().manual_seed(1)
    Xn = bounds[0] + (bounds[1] - bounds[0]) * torch.rand(2, 2, dtype=D, generator=g)
    Yn = bo.posterior(Xn).mean.detach() + 0.1  # about 3.5 predictive standard deviations above the mean
    X = torch.cat([Xn, d.X_test[:30]])
    cond = bo.condition_on_observations(Xn, Yn).posterior(X)
    ref = _refit(base, Xn, Yn).as_botorch().posterior(X)
    prior = bo.posterior(X)
    scale = prior.variance.detach().max()

    def err(p):
        return max(
            float((p.mean - ref.mean).detach().abs().max() / scale.sqrt()),
            float((p.variance - ref.variance).detach().abs().max() / scale),
        )

    assert err(cond) <= REFIT_TOL
    assert err(cond) < 0.5 * err(prior)  # measured 0.064 vs 0.37


def test_joint_moments_equal_a_brute_force_sum_over_the_core():
    r"""The adapter's covariance of entries is the exact second moment of the multilinear entries under the
    factorised posterior: dense GP posteriors of every mode at the coordinates (from the stored sites) and an
    explicit sum over core index pairs; its diagonal is ``predict``'s variance."""
    d = make_synthetic_tensor(120, 10, n_modes=3, rank=2, n_coords=8, noise_sd=0.1, seed=3)
    for decomposition, ranks in (("tucker", (2, 1, 2)), ("cp", 2)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            m = FunBaT(ranks, decomposition=decomposition, max_sweeps=3, learn_hyperparameters=False,
                       lengthscale=0.4, n_restarts=0).fit(d.X_train, d.y_train)  # fmt: skip
        g = torch.Generator().manual_seed(2)
        X1 = torch.rand(3, 3, dtype=D, generator=g) * 1.4 - 0.2  # normalised coordinates, also beyond [0, 1]
        X2 = torch.cat([X1[:1], torch.rand(3, 3, dtype=D, generator=g)])
        X2[1, 0] = X1[1, 0] + 0.01  # the same interval as a point of X1
        moments = []
        for k in range(3):
            md = m._modes[k]
            coords = torch.cat([X1[:, k], X2[:, k]])
            mean, cov = _dense_joint(1.5, 0.4, 1.0, md.t, md.lam, md.eta, coords)
            moments.append((mean, cov))
        ranks_t = m.ranks
        mu = m._core_mean
        EwwT = (m._core_cov + mu[:, None] * mu[None, :]).reshape(*ranks_t, *ranks_t)
        idx = list(itertools.product(*[range(r) for r in ranks_t]))
        want = torch.zeros(3, 4, dtype=D)
        f1 = torch.zeros(3, dtype=D)
        f2 = torch.zeros(4, dtype=D)
        for p in idx:
            W = float(mu.reshape(ranks_t)[p])
            f1 += W * math.prod(moments[k][0][:3, p[k]] for k in range(3))
            f2 += W * math.prod(moments[k][0][3:, p[k]] for k in range(3))
            for q in idx:
                terms = []
                for k in range(3):
                    mean, cov = moments[k]
                    c = cov[:3, 3:, p[k], q[k]] + mean[:3, None, p[k]] * mean[None, 3:, q[k]]
                    terms.append(c)
                want += EwwT[(*p, *q)] * math.prod(terms)
        want = want - f1[:, None] * f2[None, :] + m._bias_var
        tables = [gain_products(md.post.gain) for md in m._modes]
        mean1, got = entry_joint(m, tables, X1[None], X2[None])
        torch.testing.assert_close(got[0], want, rtol=0, atol=1e-10)
        torch.testing.assert_close(mean1[0], f1 + m._bias_mean, rtol=0, atol=1e-12)
        # original units through the adapter, and its diagonal is predict's variance
        bo = m.as_botorch()
        Xo = m.coord_lo + m.coord_span * X1
        cov_bo = bo._base_covariance(Xo[None], Xo[None])[0]
        _, std = m.predict(Xo, return_std=True)
        torch.testing.assert_close(cov_bo.diagonal(), std[:, 0].square(), rtol=1e-10, atol=1e-14)


def test_adapter_gradients_match_finite_differences(bo_case):
    d, m, _ = bo_case
    bo = m.as_botorch()
    X = d.X_test[:3].clone().requires_grad_(True)
    w = torch.tensor([0.3, -1.0, 0.7], dtype=D)

    def value(Z):
        post = bo.posterior(Z)
        cov = post.distribution.covariance_matrix
        return (post.mean[:, 0] * w).sum() + (cov * torch.outer(w, w)).sum() * 10.0

    grad = torch.autograd.grad(value(X), X)[0]
    eps = 1e-6
    fd = torch.zeros_like(grad)
    for i in range(3):
        for j in range(2):
            Xp, Xm = X.detach().clone(), X.detach().clone()
            Xp[i, j] += eps
            Xm[i, j] -= eps
            fd[i, j] = (value(Xp) - value(Xm)) / (2 * eps)
    torch.testing.assert_close(grad, fd, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------------
# bad input and documented behaviour
def test_bad_input_errors():
    d = make_synthetic_tensor(100, 20, rank=2, n_coords=10, seed=9)
    X, y = d.X_train, d.y_train
    with pytest.raises(ValueError, match=r"rank.*>= 1"):
        FunBaT(0)
    with pytest.raises(ValueError, match=r"rank.*>= 1"):
        FunBaT((2, 0, 2))
    with pytest.raises(TypeError, match="rank"):
        FunBaT(2.5)
    with pytest.raises(ValueError, match="same rank"):
        FunBaT((2, 3), decomposition="cp")
    with pytest.raises(ValueError, match="nu"):
        FunBaT(2, nu=1.0)
    with pytest.raises(ValueError, match="damping"):
        FunBaT(2, damping=1.0)
    Xnan = X.clone()
    Xnan[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite coordinate"):
        FunBaT(2).fit(Xnan, y)
    with pytest.raises(ValueError, match="N x K"):
        FunBaT(2).fit(X[:, 0], y)
    with pytest.raises(TypeError, match="numbers"):
        FunBaT(2).fit([["a", "b", "c"]] * len(y), y)
    with pytest.raises(ValueError, match=r"shape \(N,\)"):
        FunBaT(2).fit(X, y[:-1])
    with pytest.raises(ValueError, match="2 entries but the data have K=3"):
        FunBaT((2, 2)).fit(X, y)
    with pytest.raises(ValueError, match="No observed entry"):
        FunBaT(2).fit(X, torch.full_like(y, float("nan")))
    with pytest.raises(RuntimeError, match="not fitted"):
        FunBaT(2).predict(X)
    with pytest.raises(ValueError, match=r"noise_prior.*a0 \+ N/2 must exceed 1"):
        FunBaT(2, noise_prior=(0.2, 1e-3)).fit(X[:1], y[:1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = FunBaT(2, max_sweeps=3, learn_hyperparameters=False).fit(X, y)
    with pytest.raises(ValueError, match="K=3 coordinates"):
        m.predict(X[:, :2])
    with pytest.raises(ValueError, match="NaN or infinite coordinate"):
        m.predict(Xnan)
    with pytest.raises(ValueError, match="Mode"):
        m.latent(3, X[:, 0])
    # the warning names the budget and does not push toward more sweeps without a held-out check
    with pytest.warns(ConvergenceWarning, match="max_sweeps=2, .* compare held-out error"):
        FunBaT(2, max_sweeps=2, learn_hyperparameters=False).fit(X, y)


def test_training_data_that_require_grad_fit_like_plain_tensors():
    r"""``fit`` and ``rebuild_with`` on tensors that require grad (e.g. outputs of a differentiable pipeline) give
    the fit of the same values detached, bitwise, and keep no graph: a grad-requiring ``X`` raised torch's
    "the derivative for '_unique2' is not implemented" from inside the sweeps."""
    d = make_synthetic_tensor(60, 8, rank=2, n_coords=8, noise_sd=0.05, seed=4)
    X, y, Xt = d.X_train, d.y_train, d.X_test

    def fit(X, y):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return FunBaT(2, max_sweeps=3, n_restarts=0).fit(X, y)

    clean = fit(X, y)
    for Xg, yg in ((X.clone().requires_grad_(), y), (X, y.clone().requires_grad_())):
        m = fit(Xg, yg)
        mean, std = m.predict(Xt, return_std=True)
        ref_mean, ref_std = clean.predict(Xt, return_std=True)
        assert torch.equal(mean, ref_mean) and torch.equal(std, ref_std)
        assert not (m._X.requires_grad or m._ys.requires_grad)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        grown = clean.rebuild_with(Xt[:2].clone().requires_grad_(), Xt[:2, 0].clone().requires_grad_(), max_sweeps=2)
        plain = clean.rebuild_with(Xt[:2], Xt[:2, 0], max_sweeps=2)
    assert torch.equal(grown.predict(Xt), plain.predict(Xt)) and not grown._ys.requires_grad


def test_extrapolation_returns_to_the_prior():
    r"""Documented behaviour: outside a mode's training range the latent function is extrapolated by the exact GP
    conditional; far away it returns to its prior, so the entry's mean goes to the bias + training mean and its
    variance grows."""
    d = make_synthetic_tensor(300, 20, rank=2, n_coords=20, noise_sd=0.05, seed=10)
    m = FunBaT(2, max_sweeps=20, hyper_every=2).fit(d.X_train, d.y_train)
    x0 = d.X_train[:1].clone()
    dists = [0.0, 0.02, 1.0, 100.0]
    Xs = x0.repeat(len(dists), 1)
    Xs[:, 0] = float(d.X_train[:, 0].max()) + torch.tensor(dists, dtype=D)
    mean, std = m.predict(Xs, return_std=True)
    assert bool(torch.isfinite(mean).all() and torch.isfinite(std).all())
    assert float(std[-1]) > float(std[0])
    far = float(m.y_mean + m._bias_mean * m.y_std)
    assert abs(float(mean[-1]) - far) < 1e-6
    # just beyond the range the prediction continues smoothly
    assert abs(float(mean[1] - mean[0])) < 0.2
    u_mean, u_cov = m.latent(0, torch.tensor([1e4], dtype=D))
    torch.testing.assert_close(u_mean, torch.zeros(1, 2, dtype=D), rtol=0, atol=1e-10)
    torch.testing.assert_close(u_cov[0], m.kernels[0].variance.detach() * torch.eye(2, dtype=D), rtol=1e-8, atol=0)
    assert math.isfinite(m.noise_variance)


# ---------------------------------------------------------------------------------------------------------------
# calibration of the predictive intervals on held-out entries
#: Bands of the pooled coverage of three tensors (1200 held-out entries): about four binomial standard deviations
#: (sqrt(l (1 - l) / 1200) = 0.014, 0.009, 0.006 at l = 0.5, 0.9, 0.95) plus room for the fit, which varies with the
#: seed. Measured (eight seeds, 1000 entries): 0.52 / 0.91 / 0.96, z RMS 0.96; with the former noise prior b0 = 1:
#: 0.66 / 0.99 / 1.00, z RMS 0.69.
CALIBRATION_BANDS = {0.5: 0.06, 0.9: 0.04, 0.95: 0.03}


def _calibration_case(seed, **kw):
    d = make_synthetic_tensor(600, 400, rank=2, n_coords=30, noise_sd=0.05, seed=seed)
    m = FunBaT(2, nu=1.5, max_sweeps=40, seed=0, **kw).fit(d.X_train, d.y_train)
    mean, std = m.predict(d.X_test, return_std=True, observation_noise=True)
    return d, m, mean[:, 0], std[:, 0]


@pytest.fixture(scope="module")
def calibration_fits():
    r"""Three tensors and their fits with the default noise prior. (Seed 2 of this generator is left out: there the
    three default initialisations all end in a local optimum with a component of mode 1 nearly switched off (ELBO 282;
    the fourth of ``n_restarts=6`` finds 713), test RMSE 0.12 against the noise floor 0.05 whatever the noise prior;
    the noise absorbs the misfit, sd 0.12, and the 95% coverage stays 0.94.)"""
    return [_calibration_case(seed) for seed in (0, 1, 3)]


def test_predictive_intervals_cover_held_out_entries_at_their_nominal_level(calibration_fits):
    r"""Held-out entries of exact rank-2 Tucker tensors (noise sd 0.05, half of them at unseen coordinates) fall in
    the central 50/90/95% predictive intervals (observation noise included) at the nominal rates, pooled over three
    tensors, and the standardised errors have RMS close to 1. The noise variance :math:`\mathbb E[\tau^{-1}]` is
    the truth's within the sampling error of 600 residuals (about 6% in variance) plus the fit."""
    for _, m, _, _ in calibration_fits:
        assert abs(m.noise_variance**0.5 / 0.05 - 1.0) < 0.1, m.noise_variance**0.5
    y = torch.cat([d.y_test for d, _, _, _ in calibration_fits])
    mean = torch.cat([mean for _, _, mean, _ in calibration_fits])
    std = torch.cat([std for _, _, _, std in calibration_fits])
    table = coverage_table(y, mean, std, tuple(CALIBRATION_BANDS))
    for level, band in CALIBRATION_BANDS.items():
        assert abs(table[level] - level) <= band, table
    assert 0.85 <= z_rms(y, mean, std) <= 1.15


def test_the_former_noise_prior_made_the_intervals_too_wide(calibration_fits):
    r"""The diagnosis behind the default ``noise_prior``: with the rate :math:`b_0 = 1` (a prior sum of squares of
    two data variances) the noise variance of 600 entries is inflated (:math:`\mathbb E[\tau^{-1}] = (b_0 +
    \tfrac12 \sum_n \mathbb E(y_n - f_n)^2) / (a_0 + N/2 - 1)`: :math:`b_0 = 1` alone adds :math:`2/N = 0.0033` to
    the noise variance 0.0025) and the 95% intervals cover nearly everything; with :math:`b_0 = 10^{-3}` the same
    data are covered at the nominal rate."""
    d, new, mean_new, std_new = calibration_fits[0]
    _, old, mean, std = _calibration_case(0, noise_prior=(1.0, 1.0))
    assert old.noise_variance**0.5 > 1.3 * 0.05 and abs(new.noise_variance**0.5 / 0.05 - 1.0) < 0.1
    assert coverage(d.y_test, mean, std, 0.95) > 0.985
    assert abs(coverage(d.y_test, mean_new, std_new, 0.95) - 0.95) <= 0.04


def test_noise_free_intervals_are_conservative_on_the_smooth_sinusoids(calibration_fits):
    r"""The limitation documented in :mod:`gpgeom.models.funbat.model`: on the synthetic sinusoids, smoother than
    the Matérn-3/2 prior, the variance of a noise-free entry (``observation_noise=False``) exceeds its squared error
    against the generator's noise-free values ``f_test``: pooled over the three tensors, the z RMS is below 1 at seen
    coordinates and below 0.9 at unseen ones (measured 0.92 and 0.76; per tensor 0.76-1.07 and 0.68-0.89)."""
    z = {True: [], False: []}
    for d, m, _, _ in calibration_fits:
        mean, std = m.predict(d.X_test, return_std=True, observation_noise=False)
        for unseen in (True, False):
            keep = d.test_unseen == unseen
            z[unseen].append((d.f_test[keep] - mean[keep, 0]) / std[keep, 0])
    seen, unseen = (float(torch.cat(z[k]).square().mean().sqrt()) for k in (False, True))
    assert seen < 1.0 and unseen < 0.9, (seen, unseen)
    assert seen > 0.6 and unseen > 0.5, (seen, unseen)  # conservative, not a variance that has lost its scale


# ---------------------------------------------------------------------------------------------------------------
# hyperparameter steps: one documented numerical failure is caught and reported, everything else propagates
def test_a_hyperparameter_step_that_cannot_factorise_is_reported_and_kept(monkeypatch):
    import gpgeom.models.funbat.hyper as hyper

    def singular(*args, **kwargs):
        raise torch.linalg.LinAlgError("cholesky: the input is not positive-definite")

    monkeypatch.setattr(hyper, "expected_log_prior", singular)
    monkeypatch.setattr(hyper, "joint_log_likelihood", singular)
    d = make_synthetic_tensor(150, 10, rank=2, n_coords=12, seed=14)
    kw = dict(max_sweeps=4, min_sweeps=4, hyper_warmup=1, hyper_every=1, n_restarts=0, lengthscale=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with pytest.warns(RuntimeWarning, match="hyperparameter step failed to factorise"):
            m = FunBaT(2, **kw).fit(d.X_train, d.y_train)
    steps = [h for h in m.history if h["hyper_step"]]
    # steps at sweeps 1 and 3: the hyperparameters did not move, so the interval doubled
    assert len(steps) == 2 and all("marginal-likelihood step" in h["hyper_failure"] for h in steps)
    assert all(h["hyper_failure"] is None for h in m.history if not h["hyper_step"])
    span = d.X_train.amax(0) - d.X_train.amin(0)
    torch.testing.assert_close(m.lengthscales_ / span, torch.full((3,), 0.3, dtype=D))  # the initial values kept


def test_other_errors_of_a_hyperparameter_step_propagate(monkeypatch):
    import gpgeom.models.funbat.hyper as hyper

    def bug(*args, **kwargs):
        raise RuntimeError("a bug in the objective")

    monkeypatch.setattr(hyper, "joint_log_likelihood", bug)
    d = make_synthetic_tensor(150, 10, rank=2, n_coords=12, seed=14)
    with pytest.raises(RuntimeError, match="a bug in the objective"):
        FunBaT(2, max_sweeps=4, hyper_warmup=1, n_restarts=0).fit(d.X_train, d.y_train)


def test_intervals_on_the_beijing_tensor_have_the_right_variance_and_heavy_tails():
    r"""BeijingAir-PM2.5 (shipped tensor, fold 0, 3000 training entries, 3393 held-out): the predictive variance of
    a new observation matches the squared errors on average (z RMS 1.05 measured) and the 90/95% intervals cover at
    about their nominal rates (0.91 / 0.94); the residuals are heavy-tailed (pollution episodes), so the Gaussian 50%
    interval covers more than half (0.64 measured; binomial sd 0.009) and the standardised errors have a kurtosis far
    above the Gaussian 3 (17 measured), the behaviour documented in :mod:`gpgeom.models.funbat.model`."""
    from gpgeom.datasets.tensors import load_beijing_air

    split = load_beijing_air().split(0, n_train=3000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = FunBaT(2, nu=1.5, max_sweeps=20, n_restarts=0, seed=0).fit(split.X_train, split.y_train)
    mean, std = (v[:, 0] for v in m.predict(split.X_test, return_std=True, observation_noise=True))
    table = coverage_table(split.y_test, mean, std)
    assert abs(table[0.95] - 0.95) <= 0.03 and abs(table[0.9] - 0.9) <= 0.04, table
    assert 0.9 <= z_rms(split.y_test, mean, std) <= 1.2
    assert table[0.5] > 0.55, table
    z = (split.y_test - mean) / std
    assert float(z.pow(4).mean() / z.square().mean().square()) > 6.0


@pytest.mark.parametrize("decomposition", ["tucker", "cp"])
@pytest.mark.parametrize("noise", ["gaussian", "student_t"])
def test_no_entry_gives_empty_predictions(decomposition, noise):
    r"""Zero entries to predict (an empty selection) give empty results of the shapes of a non-empty call; the Tucker
    moments and the Student-t mixture CDF used to ``torch.cat`` an empty list (a raw ValueError)."""
    d = make_synthetic_tensor(100, 20, rank=2, n_coords=6, seed=9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = FunBaT(2, decomposition=decomposition, noise=noise, max_sweeps=3).fit(d.X_train, d.y_train)
    E, y0 = d.X_test[:0], d.y_test[:0]
    full = m.predict(d.X_test[:2], return_std=True)
    for out in (m.predict(E, return_std=True), m.predict(E, return_std=True, observation_noise=True)):
        assert [t.shape for t in out] == [t[:0].shape for t in full]
    assert m.predict(E).shape == full[0][:0].shape
    assert [t.shape for t in m.predict_interval(E)] == [(0, 1), (0, 1)]
    assert m.predict_quantile(E, 0.9).shape == (0, 1)
    assert m.log_predictive_density(E, y0).shape == (0, 1)


def test_latent_functions_refuse_unsorted_coordinates():
    r"""The public functions of :mod:`gpgeom.models.funbat.latent` take sorted coordinates; unsorted ones
    (0, 0.3, 0.2, 0.9) gave a posterior from a backward step's negative process noise and no error. They now
    name `t`; the model itself sorts its coordinates (torch.unique) and is unaffected."""
    from gpgeom.kernels.markov import MaternMarkovKernel
    from gpgeom.models.funbat.latent import latent_posterior, latent_score, mode_prior

    k = MaternMarkovKernel(nu=1.5).double()
    t = torch.tensor([0.0, 0.3, 0.2, 0.9], dtype=torch.float64)
    lam = torch.eye(1, dtype=torch.float64).expand(4, 1, 1).clone()
    eta = torch.ones(4, 1, dtype=torch.float64)
    for call in (lambda: latent_posterior(k, t, lam, eta), lambda: latent_score(k, t, lam, eta)):
        with pytest.raises(ValueError, match=r"`t` must be strictly increasing .* entry 2 \(0\.2\)"):
            call()
    with pytest.raises(ValueError, match=r"`t` must be increasing .* entry 2 \(0\.2\)"):
        mode_prior(k, t, 1)

r"""Tests of gpgeom.models.funbat (FunBaT, its CP case and the BoTorch wrapper).

Independent truths: dense GP algebra with GPyTorch's MaternKernel (posterior of R independent components given
R-dimensional Gaussian pseudo-observations, written in covariance form), the exact generator of the synthetic
tensors (latent functions and core known), and fits on subsets of the data.
"""

from __future__ import annotations

import math
import warnings

import gpytorch
import pytest
import torch

from gpgeom.botorch.check import check_botorch_model
from gpgeom.datasets.tensors import make_synthetic_tensor
from gpgeom.errors import ConvergenceWarning
from gpgeom.kernels.markov import MaternMarkovKernel
from gpgeom.models.funbat import (
    FunBaT,
    FunBaTCP,
    _chain,
    _joint_log_likelihood,
    expected_log_prior,
    latent_conditional,
    latent_posterior,
)

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
    base.lengthscale = ls
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
    ch = _chain(t, lam, eta, s)
    ch2 = _chain(t[:10], lam[:10], eta[:10], s)
    joint = _joint_log_likelihood([k, k2], [t, t[:10]], [ch, ch2])
    single = torch.stack(
        [post.log_likelihood, latent_posterior(k2, t[:10], lam[:10], eta[:10], smooth=False).log_likelihood]
    )
    torch.testing.assert_close(joint, single, rtol=0, atol=1e-8)


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
        mean, cov, mt, Ct, _ = _dense_posterior(1.5, 0.2, 1.0, md["t"], md["lam"], md["eta"], t_new)
        torch.testing.assert_close(md["u_mean"], mean, rtol=0, atol=1e-8)
        torch.testing.assert_close(md["u_cov"], cov, rtol=0, atol=1e-8)
        lo, span = float(m.coord_lo[k]), float(m.coord_span[k])
        got_m, got_C = m.latent(k, lo + span * t_new)
        torch.testing.assert_close(got_m, mt, rtol=0, atol=1e-8)
        torch.testing.assert_close(got_C, Ct, rtol=0, atol=1e-8)
        assert kern.nu == 1.5


# ---------------------------------------------------------------------------------------------------------------
# recovery of exact low-rank tensors
def _rmse(a, b):
    return float((a - b).square().mean().sqrt())


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
    mean, std = m.predict(d.X_test, return_std=True, observation_noise=True)
    u = d.test_unseen
    assert _rmse(mean, d.y_test) <= 0.07
    assert _rmse(mean[u], d.y_test[u]) <= 0.07
    assert 0.9 <= float(((mean - d.y_test).abs() < 1.96 * std).double().mean()) <= 1.0
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
        m32 = FunBaT(2, **kw).fit(d.X_train.float(), d.y_train.float())
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
    m2 = FunBaT.load(path, device=device)
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
    m.to("cpu", torch.float32)
    assert m.predict(d.X_test.float()).dtype == torch.float32


# ---------------------------------------------------------------------------------------------------------------
# BoTorch
def test_botorch_contract_and_maximisation():
    from botorch.acquisition import PosteriorMean
    from botorch.optim import optimize_acqf

    d = make_synthetic_tensor(400, 50, n_modes=2, rank=2, n_coords=30, noise_sd=0.05, seed=8)
    m = FunBaT(2, max_sweeps=20, hyper_every=2).fit(d.X_train, d.y_train)
    bo = m.as_botorch()
    bounds = torch.stack([d.X_train.min(0).values, d.X_train.max(0).values])
    out = check_botorch_model(
        bo,
        bounds=bounds,
        check_fantasize=False,
        check_condition=False,
        predict_fn=lambda X: tuple(v.unsqueeze(-1) for v in m.predict(X, return_std=True)),
        rtol=1e-8,
        atol=1e-10,
    )
    assert "qLogNoisyExpectedImprovement optimisation" in out["checks"]
    # the largest predicted value: gradient-based acquisition optimisation vs a dense grid search
    cand, val = optimize_acqf(PosteriorMean(bo), bounds=bounds, q=1, num_restarts=4, raw_samples=64)
    g0 = torch.linspace(float(bounds[0, 0]), float(bounds[1, 0]), 120, dtype=D)
    g1 = torch.linspace(float(bounds[0, 1]), float(bounds[1, 1]), 120, dtype=D)
    grid = torch.cartesian_prod(g0, g1)
    best = float(m.predict(grid).max())
    assert float(val) >= best - 1e-3
    torch.testing.assert_close(m.predict(cand)[0], val.reshape(()), rtol=0, atol=1e-10)
    with pytest.raises(NotImplementedError, match="refit"):
        bo.condition_on_observations(cand, val.reshape(1, 1))


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
    with pytest.raises(TypeError, match="floating-point"):
        FunBaT(2).fit(X.long(), y)
    with pytest.raises(ValueError, match=r"shape \(N,\)"):
        FunBaT(2).fit(X, y[:-1])
    with pytest.raises(ValueError, match="2 entries but the data have K=3"):
        FunBaT((2, 2)).fit(X, y)
    with pytest.raises(ValueError, match="No observed entry"):
        FunBaT(2).fit(X, torch.full_like(y, float("nan")))
    with pytest.raises(RuntimeError, match="not fitted"):
        FunBaT(2).predict(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = FunBaT(2, max_sweeps=3, learn_hyperparameters=False).fit(X, y)
    with pytest.raises(ValueError, match="K=3 coordinates"):
        m.predict(X[:, :2])
    with pytest.raises(ValueError, match="NaN or infinite coordinate"):
        m.predict(Xnan)
    with pytest.raises(ValueError, match="Mode"):
        m.latent(3, X[:, 0])
    with pytest.warns(ConvergenceWarning, match="max_sweeps"):
        FunBaT(2, max_sweeps=2, learn_hyperparameters=False).fit(X, y)


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

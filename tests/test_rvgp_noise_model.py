"""RVGP's noise model across the tangent frames: an observation's noise is sigma_obs^2 P_x + nu (I - P_x),
nu = sigma_perp^2 - beta, in conditioning, in the noisy predictive and in fantasies (checked against a dense GP built
by hand), and the predictive of held-out noisy observations is calibrated (it was too wide across the frames)."""

import math

import numpy as np
import pytest
import torch
from botorch.sampling import IIDNormalSampler
from rvgp_factories import block_diagonal, index_column

from gpgeom.datasets.vector_fields import ellipsoid_vector_field, sample_sphere, sphere_vector_field
from gpgeom.geometry.connection import connection_laplacian
from gpgeom.models.rvgp import RVGP

DT = torch.float64


_col, _blocks = index_column, block_diagonal


def _dense_posterior(K, rows, y, noise, qrows):
    """Mean and covariance at ``qrows`` of the GP with prior ``K`` given ``y`` at ``rows`` with noise matrix
    ``noise`` (dense Cholesky algebra)."""
    L = np.linalg.cholesky(K[np.ix_(rows, rows)] + noise)
    Kq = K[np.ix_(qrows, rows)]
    V = np.linalg.solve(L, Kq.T)
    return Kq @ np.linalg.solve(L.T, np.linalg.solve(L, y)), K[np.ix_(qrows, qrows)] - V.T @ V


@pytest.mark.parametrize(("ambient", "estimate"), [(None, 0.01), ("rbf", 0.01), (None, None)])
def test_normal_noise_is_the_dense_gp_with_per_point_noise_blocks(ambient, estimate):
    # tangent noise: sigma_perp^2 = 0.002 < sigma_obs^2, so beta = 0 and nu = sigma_perp^2 = 0.002 (with
    # noise_estimate: sigma_obs^2 = 0.01, tau^2 = 0.04; without: sigma_obs^2 = 0.05); the old isotropic noise put
    # sigma_obs^2 across the frames, 5x (25x) the likelihood's sigma_perp^2
    rng = np.random.default_rng(7)
    n, D = 40, 3
    X = sample_sphere(n, seed=7)
    lap = connection_laplacian(X, 8, dim=2)
    gp = RVGP(X, n_eigenpairs=30, laplacian=lap, nu=2.0, learn_nu=False, ambient=ambient)
    tr = rng.choice(n, 20, replace=False)
    gp.fit(tr, rng.standard_normal((20, D)), max_iter=1)
    ys = gp.y_scale
    amb = {} if ambient is None else {"ambient_lengthscale": 0.8, "ambient_outputscale": 0.4}
    gp.set_hyperparameters(lengthscale=1.3, outputscale=0.7, noise=0.05, normal_noise=0.002, **amb)
    gp.noise_estimate = estimate
    tau2, s2, nu = (0.04, 0.01, 0.002) if estimate else (0.0, 0.05, 0.002)
    assert float(gp.normal_model_error_variance) == 0.0
    assert math.isclose(float(gp.normal_observation_noise_variance), nu)
    obs = np.concatenate([tr, tr[:3]])  # points observed once and twice
    Y = rng.standard_normal((len(obs), D))
    model = gp.rebuild_with(_col(obs[20:]), torch.as_tensor(Y[20:]))
    model.data_y = torch.as_tensor(Y / ys)
    # the dense prior (scaled units): spectral part, projected ambient part, tau^2 P_i; the noise N_i per observation
    with torch.no_grad():
        K = gp.covar_module(torch.arange(n, dtype=DT)[:, None]).to_dense().numpy()
    P = np.einsum("nDd,nEd->nDE", lap.frames, lap.frames)
    Pb = _blocks(P)
    K = K + tau2 * Pb
    if ambient is not None:  # P_i k(x_i, x_j) P_j, sigma_a^2 = 0.4, lengthscale 0.8
        K += Pb @ np.kron(0.4 * np.exp(-0.5 * ((X[:, None] - X[None]) ** 2).sum(-1) / 0.8**2), np.eye(D)) @ Pb
    N = s2 * P + nu * (np.eye(D) - P)  # (n, D, D)
    rows = (obs[:, None] * D + np.arange(D)).ravel()
    y = Y.ravel() / ys
    q = np.concatenate([tr[:4], np.setdiff1d(np.arange(n), tr)[:4]])  # observed and unobserved points
    qrows = (q[:, None] * D + np.arange(D)).ravel()
    mean, cov = _dense_posterior(K, rows, y, _blocks(N[obs]), qrows)
    post = model.posterior(_col(q))
    np.testing.assert_allclose(post.mean.detach().numpy().ravel(), mean * ys, rtol=0, atol=1e-9)
    np.testing.assert_allclose(post.distribution.covariance_matrix.detach().numpy(), cov * ys**2, rtol=0, atol=1e-9)
    # the predictive of a new observation: per-point noise blocks N_x (the old code added s2 I: off by (s2 - nu) Q)
    noisy = cov + _blocks(N[q])
    Cn = model.posterior(_col(q), observation_noise=True).distribution.covariance_matrix.detach().numpy()
    np.testing.assert_allclose(Cn, noisy * ys**2, rtol=0, atol=1e-9)
    _, sdn = model.predict(q, return_std=True, observation_noise=True)
    np.testing.assert_allclose(sdn.numpy().ravel() ** 2, np.diag(noisy) * ys**2, rtol=0, atol=1e-9)
    _, cn = model.predict(q, observation_noise=True, return_cov=True)
    per_point = np.stack([noisy[i * D : (i + 1) * D, i * D : (i + 1) * D] for i in range(len(q))])
    np.testing.assert_allclose(cn.numpy(), per_point * ys**2, rtol=0, atol=1e-9)
    # conditioning with the default noise = the dense refit on the union = rebuild_with
    extra = np.concatenate([np.setdiff1d(np.arange(n), tr)[4:7], tr[:1]])  # new points and a repeat
    Ye = rng.standard_normal((len(extra), D))
    rows2 = np.concatenate([rows, (extra[:, None] * D + np.arange(D)).ravel()])
    y2 = np.concatenate([y, Ye.ravel() / ys])
    mean2, cov2 = _dense_posterior(K, rows2, y2, _blocks(N[np.concatenate([obs, extra])]), qrows)
    cond = model.condition_on_observations(_col(extra), torch.as_tensor(Ye))
    refit = gp.rebuild_with(_col(np.concatenate([obs[20:], extra])), torch.as_tensor(np.concatenate([Y[20:], Ye])))
    refit.data_y = torch.as_tensor(np.concatenate([Y, Ye]) / ys)
    for m in (cond, refit):
        p2 = m.posterior(_col(q))
        np.testing.assert_allclose(p2.mean.detach().numpy().ravel(), mean2 * ys, rtol=0, atol=1e-9)
        np.testing.assert_allclose(p2.distribution.covariance_matrix.detach().numpy(), cov2 * ys**2, atol=1e-9)
    # one output observed (subset_output): its noise is the (0, 0) entry of N_x, s2 P_00 + nu Q_00 (was s2)
    rows3 = np.concatenate([rows, extra * D])
    y3 = np.concatenate([y, Ye[:, 0] / ys])
    noise3 = np.zeros((len(rows3), len(rows3)))
    noise3[: len(rows), : len(rows)] = _blocks(N[obs])
    noise3[len(rows) :, len(rows) :] = np.diag(N[extra, 0, 0])
    mean3, _ = _dense_posterior(K, rows3, y3, noise3, q * D)
    one = model.subset_output([0]).condition_on_observations(_col(extra), torch.as_tensor(Ye[:, :1]))
    np.testing.assert_allclose(one.posterior(_col(q)).mean.detach().numpy().ravel(), mean3 * ys, rtol=0, atol=1e-9)
    # fantasies are conditioned with the noise they are drawn with: the dense posterior given the drawn values
    fant = model.fantasize(_col(extra), IIDNormalSampler(torch.Size([2]), seed=0))
    Yf = fant._conditioning[-1].Y.detach().numpy()  # (2, len(extra), D)
    mf = fant.posterior(_col(q)).mean.detach().numpy()
    for j in range(2):
        mj, _ = _dense_posterior(
            K, rows2, np.concatenate([y, Yf[j].ravel() / ys]), _blocks(N[np.r_[obs, extra]]), qrows
        )
        np.testing.assert_allclose(mf[j].ravel(), mj * ys, rtol=0, atol=1e-9)


def test_held_out_noisy_observations_are_calibrated_across_the_frames():
    # a unit sphere with tangent noise (sd 0.05 per direction of the plane), half of 400 points observed, 3 seeds: the
    # per-component z of the held-out noisy observations under predict(observation_noise=True) pooled. Measured RMS
    # 0.911 / 0.986 / 1.040 per seed, 0.980 pooled, 95 % coverage 0.954; with isotropic noise sigma_obs^2 across the
    # frames (normal variance 0.0041 in scaled units against the likelihood's 2.5e-8 at seed 0) 0.748 / 0.817 / 0.867,
    # 0.812 pooled, coverage 0.979: the normal components had z ~ 0
    z = []
    for seed in range(3):
        s = sphere_vector_field(400, "mixed", vector_noise=0.05, seed=seed)
        perm = np.random.default_rng(seed).permutation(400)
        tr, te = np.sort(perm[:200]), np.sort(perm[200:])
        gp = RVGP(s.points, n_eigenpairs=30, dim=2).fit(tr, s.vectors[tr], seed=0)
        assert gp.noise_estimate is not None and gp.normal_noise < float(gp.observation_noise_variance)
        mean, sd = (t.numpy() for t in gp.predict(te, return_std=True, observation_noise=True))
        z.append((s.vectors[te] - mean) / sd)
    z = np.concatenate(z)
    assert 0.92 < math.sqrt((z**2).mean()) < 1.08


def test_noisy_predictive_on_an_ellipsoid_follows_the_training_noise_draw():
    # the case reported over-confident (ellipsoid of half-axes 1, 0.75, 0.5, 400 points, half observed, seed 0:
    # z RMS 1.16, chi^2 per dof of the part in the true tangent plane 1.37) is the noise draw, not the model: the
    # generator's noise at the 200 training points has sample variance 0.00206 per direction (0.82 of its 0.0025),
    # the learnt sigma_obs^2 follows it (0.00193, 0.94 of it), and the held-out draw is 0.00269. Measured chi^2 of the
    # tangent part 1.372 with the learnt noise, 1.085 with the true variance and 1.013 with the held-out draw's in its
    # place: the rest of the predictive (latent, frames, noise across them) is calibrated. Over 30 noise redraws on
    # this cloud the chi^2 averages 0.96 (benchmarks/results/rvgp_noisy_calibration.md).
    n, var = 400, 0.05**2
    s = ellipsoid_vector_field(n, "smooth", vector_noise=0.05, seed=0)
    perm = np.random.default_rng(0).permutation(n)
    tr, te = np.sort(perm[:200]), np.sort(perm[200:])
    gp = RVGP(s.points, n_eigenpairs=30, dim=2).fit(tr, s.vectors[tr], seed=0)
    eps = s.vectors - s.clean_vectors
    var_tr, var_te = ((eps[tr] ** 2).sum(1).mean() / 2, (eps[te] ** 2).sum(1).mean() / 2)
    assert var_tr < 0.85 * var < var_te  # the draw: low at the training points, not at the held-out ones
    s2 = float(gp.observation_noise_variance) * gp.y_scale**2
    assert 0.9 < s2 / var_tr < 1.1 and s2 < 0.85 * var  # the fit follows the training draw
    mean, cov = (t.numpy() for t in gp.predict(te, return_cov=True, observation_noise=True))
    N = s.normals[te]  # a basis of the TRUE tangent planes, where the generator put the noise
    u = np.cross(N, np.where(np.abs(N[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    B = np.stack([u, np.cross(N, u)], 2)
    rt = np.einsum("iad,ia->id", B, s.vectors[te] - mean)
    T = gp.laplacian.frames[te]

    def chi2(noise):  # per dof, the learnt sigma_obs^2 in the frames replaced by `noise`
        C = cov + (noise - s2) * (T @ T.transpose(0, 2, 1))
        Ct = np.einsum("iad,iab,ibe->ide", B, C, B)
        return float(np.einsum("id,ide,ie->i", rt, np.linalg.inv(Ct), rt).mean() / 2)

    assert chi2(s2) > 1.25
    assert 0.9 < chi2(var) < 1.15
    assert abs(chi2(var_te) - 1.0) < 0.06

#!/usr/bin/env python3
r"""Tests of gpgeom.engine.least_squares (with its factors and normal equations) against independent dense and
scipy solutions."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

import gpgeom.engine.normal_equations as ne_module
from gpgeom.engine.banded import (
    block_banded_cholesky,
    block_banded_matvec,
    block_banded_selected_inverse,
    block_banded_solve,
)
from gpgeom.engine.factors import Factor, _additive_retract, _Problem
from gpgeom.engine.least_squares import gauss_newton
from gpgeom.engine.normal_equations import _assemble
from gpgeom.errors import ConvergenceWarning, NotPSDError

DT = torch.float64


def _rand_sqrt_info(*batch: int, n: int) -> torch.Tensor:
    r"""Random well-conditioned upper-triangular whitening matrices."""
    W = torch.randn(*batch, n, n, dtype=DT).triu()
    idx = torch.arange(n)
    W[..., idx, idx] = 1.0 + torch.rand(*batch, n, dtype=DT)
    return W


def _blocks_of(mat: torch.Tensor, s: int, K: int, i: int, j: int) -> torch.Tensor:
    return mat[i * s : (i + 1) * s, j * s : (j + 1) * s]


# ------------------------------------------------------------------------------------------------------------------
# Linear-Gaussian chains with an independent dense truth
# ------------------------------------------------------------------------------------------------------------------
def _linear_chain(K: int, s: int, g: int, bandwidth: int, analytic: bool = False):
    r"""Factors of a random linear-Gaussian chain and the dense whitened system (J, z) of the same cost.

    Unknowns theta = [x_0, ..., x_{K-1}, gamma]; cost = 1/2 |J theta - z|^2 built directly from the matrices.
    """
    m = 2  # measurement size
    n = K * s + g
    rows, rhs, factors = [], [], []

    def put(Jrow: torch.Tensor, k: int, block: torch.Tensor) -> None:
        Jrow[:, k * s : (k + 1) * s] += block

    # priors on the first `bandwidth` states
    for k0 in range(bandwidth):
        mu = torch.randn(s, dtype=DT)
        W0 = _rand_sqrt_info(n=s)
        J = torch.zeros(s, n, dtype=DT)
        put(J, k0, W0)
        rows.append(J)
        rhs.append(W0 @ mu)
        jac = (lambda x, gg: (torch.eye(s, dtype=DT)[None, :, None, :].clone(), None)) if analytic else None
        factors.append(
            Factor(torch.tensor([[k0]]), lambda x, gg, mu=mu: x[:, 0] - mu, jacobian=jac, sqrt_information=W0)
        )

    # transitions x_{k+w} = sum_{d} A_{k,d} x_{k+w-1-d} (+ noise); indices stored in a scrambled order
    M = K - bandwidth
    A = 0.6 * torch.randn(M, bandwidth, s, s, dtype=DT) / bandwidth
    Wq = _rand_sqrt_info(n=s)
    base = torch.arange(M)
    order = torch.randperm(bandwidth + 1)  # column u of `indices` holds state base + order[u]
    idx = base[:, None] + order[None, :]
    pos = torch.argsort(order)  # pos[o] = column holding state base + o
    for k in range(M):
        J = torch.zeros(s, n, dtype=DT)
        put(J, k + bandwidth, Wq)
        for d in range(bandwidth):
            put(J, k + bandwidth - 1 - d, -Wq @ A[k, d])
        rows.append(J)
        rhs.append(torch.zeros(s, dtype=DT))

    def trans_res(x: torch.Tensor, gg: torch.Tensor) -> torch.Tensor:
        r = x[:, pos[bandwidth]]
        for d in range(bandwidth):
            r = r - torch.einsum("mij,mj->mi", A[:, d], x[:, pos[bandwidth - 1 - d]])
        return r

    def trans_jac(x: torch.Tensor, gg: torch.Tensor):
        Jx = torch.zeros(M, s, bandwidth + 1, s, dtype=DT)
        Jx[:, :, pos[bandwidth]] = torch.eye(s, dtype=DT)
        for d in range(bandwidth):
            Jx[:, :, pos[bandwidth - 1 - d]] = -A[:, d]
        return Jx, None

    factors.append(
        Factor(idx, trans_res, jacobian=trans_jac if analytic else None, sqrt_information=Wq, name="transition")
    )

    # measurements y_k = C_k x_k + B_k gamma + noise, per-block whitening
    C = torch.randn(K, m, s, dtype=DT)
    B = torch.randn(K, m, g, dtype=DT)
    y = torch.randn(K, m, dtype=DT)
    Wr = _rand_sqrt_info(K, n=m)
    for k in range(K):
        J = torch.zeros(m, n, dtype=DT)
        J[:, k * s : (k + 1) * s] = Wr[k] @ C[k]
        J[:, K * s :] = Wr[k] @ B[k]
        rows.append(J)
        rhs.append(Wr[k] @ y[k])

    def meas_res(x: torch.Tensor, gg: torch.Tensor) -> torch.Tensor:
        return torch.einsum("mij,mj->mi", C, x[:, 0]) + B @ gg - y

    def meas_jac(x: torch.Tensor, gg: torch.Tensor):
        return C[:, :, None, :].clone(), B.clone()

    factors.append(
        Factor(
            torch.arange(K)[:, None],
            meas_res,
            jacobian=meas_jac if analytic else None,
            sqrt_information=Wr,
            name="measurement",
        )
    )

    if g > 0:  # a weak prior on the globals only (names state 0, Jacobian there is zero)
        g0 = torch.randn(g, dtype=DT)
        J = torch.zeros(g, n, dtype=DT)
        J[:, K * s :] = 0.1 * torch.eye(g, dtype=DT)
        rows.append(J)
        rhs.append(0.1 * g0)
        gjac = (lambda x, gg: (torch.zeros(1, g, 1, s, dtype=DT), torch.eye(g, dtype=DT)[None])) if analytic else None
        factors.append(
            Factor(
                torch.zeros(1, 1, dtype=torch.long),
                lambda x, gg, g0=g0: (gg - g0)[None],
                jacobian=gjac,
                sqrt_information=0.1 * torch.eye(g, dtype=DT),
                name="global prior",
            )
        )
    return factors, torch.cat(rows), torch.cat(rhs)


def _dense_truth(J: torch.Tensor, z: torch.Tensor):
    H = J.T @ J
    return torch.linalg.solve(H, J.T @ z), torch.linalg.inv(H)


@pytest.mark.parametrize("g", [0, 2])
def test_linear_chain_one_gn_step_equals_dense(g):
    K, s = 25, 3
    factors, J, z = _linear_chain(K, s, g, bandwidth=1)
    theta, Sigma = _dense_truth(J, z)
    res = gauss_newton(
        torch.randn(K, s, dtype=DT),
        factors,
        global_params=torch.randn(g, dtype=DT) if g else None,
        method="gn",
        compute_covariances=True,
    )
    assert res.iterations == 1 and res.converged, res.message
    torch.testing.assert_close(res.states.reshape(-1), theta[: K * s], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(res.globals, theta[K * s :], rtol=1e-10, atol=1e-10)
    # the cost is half the dense residual norm at the optimum
    assert res.cost == pytest.approx(0.5 * float((J @ theta - z).square().sum()), rel=1e-10)
    # marginal and lag-1 covariances = blocks of the dense inverse
    for k in range(K):
        torch.testing.assert_close(res.covariances[k], _blocks_of(Sigma, s, K, k, k), rtol=1e-10, atol=1e-12)
        if k + 1 < K:
            torch.testing.assert_close(
                res.cross_covariances[k, 0], _blocks_of(Sigma, s, K, k, k + 1), rtol=1e-10, atol=1e-12
            )
    assert torch.all(res.cross_covariances[K - 1] == 0)
    if g:
        torch.testing.assert_close(res.global_covariance, Sigma[K * s :, K * s :], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(
            res.state_global_covariance.reshape(K * s, g), Sigma[: K * s, K * s :], rtol=1e-10, atol=1e-12
        )
    else:
        assert res.global_covariance is None and res.globals.shape == (0,)


def test_linear_chain_lm_converges_to_dense():
    K, s, g = 30, 2, 1
    factors, J, z = _linear_chain(K, s, g, bandwidth=1)
    theta, _ = _dense_truth(J, z)
    res = gauss_newton(torch.randn(K, s, dtype=DT), factors, global_params=torch.zeros(g, dtype=DT), method="lm")
    assert res.converged
    torch.testing.assert_close(res.states.reshape(-1), theta[: K * s], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(res.globals, theta[K * s :], rtol=1e-9, atol=1e-9)
    assert all(b <= a for a, b in zip(res.cost_history, res.cost_history[1:]))


def test_bandwidth_two_equals_dense():
    K, s, g = 20, 2, 2
    factors, J, z = _linear_chain(K, s, g, bandwidth=2)
    theta, Sigma = _dense_truth(J, z)
    res = gauss_newton(
        torch.zeros(K, s, dtype=DT),
        factors,
        global_params=torch.zeros(g, dtype=DT),
        bandwidth=2,
        method="gn",
        compute_covariances=True,
    )
    assert res.iterations == 1
    torch.testing.assert_close(res.states.reshape(-1), theta[: K * s], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(res.globals, theta[K * s :], rtol=1e-10, atol=1e-10)
    for k in range(K):
        torch.testing.assert_close(res.covariances[k], _blocks_of(Sigma, s, K, k, k), rtol=1e-10, atol=1e-12)
        for d in (1, 2):
            if k + d < K:
                torch.testing.assert_close(
                    res.cross_covariances[k, d - 1], _blocks_of(Sigma, s, K, k, k + d), rtol=1e-10, atol=1e-12
                )
    torch.testing.assert_close(res.global_covariance, Sigma[K * s :, K * s :], rtol=1e-10, atol=1e-12)
    # a larger bandwidth than needed gives the same answer
    res3 = gauss_newton(
        torch.zeros(K, s, dtype=DT), factors, global_params=torch.zeros(g, dtype=DT), bandwidth=3, method="gn"
    )
    torch.testing.assert_close(res3.states, res.states, rtol=1e-10, atol=1e-10)


def test_analytic_and_autodiff_jacobians_agree():
    K, s, g = 15, 3, 2
    torch.manual_seed(1234)
    f_auto, J, z = _linear_chain(K, s, g, bandwidth=2)
    torch.manual_seed(1234)
    f_ana, J2, z2 = _linear_chain(K, s, g, bandwidth=2, analytic=True)
    assert torch.equal(J, J2) and torch.equal(z, z2)
    x0 = torch.randn(K, s, dtype=DT)
    kw = dict(global_params=torch.zeros(g, dtype=DT), bandwidth=2, method="gn", compute_covariances=True)
    r_auto = gauss_newton(x0, f_auto, **kw)
    r_ana = gauss_newton(x0, f_ana, **kw)
    torch.testing.assert_close(r_auto.states, r_ana.states, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r_auto.globals, r_ana.globals, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r_auto.covariances, r_ana.covariances, rtol=1e-12, atol=1e-13)


def test_chunked_assembly_equals_unchunked_and_dense(monkeypatch):
    # Regression: _assemble formed the per-block Hessians of a whole factor at once (M x a x a x s x s; 1.66 GB
    # for 160k blocks). Now it works in chunks of blocks: same normal equations, bounded working memory.
    K, s, g, w = 120, 2, 2, 2
    factors, J, z = _linear_chain(K, s, g, bandwidth=w)
    # plus a robust (Huber) factor with per-block whitening, so IRLS weights vary across chunks
    yy = 2.0 * torch.randn(K, s, dtype=DT)
    factors.append(
        Factor(
            torch.arange(K)[:, None],
            lambda x, gg: x[:, 0] - yy,
            sqrt_information=_rand_sqrt_info(K, n=s),
            robust="huber",
            robust_threshold=0.7,
            name="huber",
        )
    )
    X, G = torch.randn(K, s, dtype=DT), torch.randn(g, dtype=DT)
    largest = {"products": 0}
    gram = ne_module._gram

    def spy(Ju, Jv):
        out = gram(Ju, Jv)
        largest["products"] = max(largest["products"], out.numel())
        return out

    def assemble(facs, chunk):
        prob = _Problem(factors=facs, retract=_additive_retract, K=K, p=s, s=s, g=g, w=w, chunk_size=chunk)
        return _assemble(prob, X, G)

    monkeypatch.setattr(ne_module, "_gram", spy)
    chunk = 7  # several chunks per factor, not dividing M
    small = assemble(factors, chunk)
    assert 0 < largest["products"] <= chunk * s * s
    monkeypatch.setattr(ne_module, "_gram", gram)
    big = assemble(factors, 10**6)
    for name in ("Hb", "bx", "Hxg", "Hgg", "bg", "cost", "diag_x", "diag_g"):
        torch.testing.assert_close(getattr(small, name), getattr(big, name), rtol=1e-12, atol=1e-12, msg=name)
    # dense truth for the linear-Gaussian part: H = J^T J, b = J^T (J theta - z), cost = |J theta - z|^2 / 2
    lin = assemble(factors[:-1], chunk)
    theta = torch.cat([X.reshape(-1), G])
    e = J @ theta - z
    H, b = J.T @ J, J.T @ e
    for k in range(K):
        for d in range(w + 1):
            if k - d >= 0:
                torch.testing.assert_close(lin.Hb[k, d], _blocks_of(H, s, K, k, k - d), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lin.bx.reshape(-1), b[: K * s], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lin.Hxg.reshape(K * s, g), H[: K * s, K * s :], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lin.Hgg, H[K * s :, K * s :], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lin.bg, b[K * s :], rtol=1e-12, atol=1e-12)
    assert float(lin.cost) == pytest.approx(0.5 * float(e.square().sum()), rel=1e-12)
    # and the solver gives the same MAP estimate and covariances for any chunk size
    kw = dict(global_params=G, bandwidth=w, method="lm", compute_covariances=True)
    r_small = gauss_newton(X, factors, chunk_size=chunk, **kw)
    r_big = gauss_newton(X, factors, **kw)
    torch.testing.assert_close(r_small.states, r_big.states, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r_small.globals, r_big.globals, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r_small.covariances, r_big.covariances, rtol=1e-12, atol=1e-12)
    assert r_small.iterations == r_big.iterations
    with pytest.raises(ValueError, match="chunk_size"):
        gauss_newton(X, factors, chunk_size=0, **kw)


def test_grouped_assembly_equals_per_block_and_dense(monkeypatch):
    r"""Blocks on the same states (several measurements per knot interval) are summed as one Gram matrix per group
    (padded rows); the normal equations equal one product per block and the dense J^T J, in any block order, with
    per-block whitening, Huber weights and chunks of groups."""
    K, s, w = 30, 3, 1
    counts = 4 + torch.arange(K - 1) % 3
    counts[3], counts[10] = 8, 0  # one large group (padding below twice the blocks) and an interval without blocks
    pairs = torch.repeat_interleave(torch.arange(K - 1), counts)
    perm = torch.randperm(pairs.shape[0])
    k = pairs[perm]
    flip = k % 4 == 1  # the blocks of some intervals list their states as (k + 1, k)
    idx = torch.stack([torch.where(flip, k + 1, k), torch.where(flip, k, k + 1)], 1)
    M, r = idx.shape[0], 2
    C = torch.randn(M, r, 2, s, dtype=DT)
    y = torch.randn(M, r, dtype=DT)
    Wm = _rand_sqrt_info(M, n=r)

    def res(x, gg):
        return torch.einsum("mrus,mus->mr", C, x) - y

    fac = Factor(idx, res, sqrt_information=Wm, robust="huber", robust_threshold=1.5, name="grouped")
    prior = Factor(torch.arange(K)[:, None], lambda x, gg: x[:, 0], name="prior")
    X = torch.randn(K, s, dtype=DT)
    plan = ne_module._plan(idx)
    assert plan.uniq is not None and plan.cmax == 8 and sorted(plan.pairs) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    out = {}
    for label, chunk in (("grouped", 10**6), ("grouped, chunks of 4 groups", 4)):
        prob = _Problem(factors=[fac, prior], retract=_additive_retract, K=K, p=s, s=s, g=0, w=w, chunk_size=chunk)
        out[label] = _assemble(prob, X, X.new_zeros(0))
    grouped = ne_module._plan
    monkeypatch.setattr(ne_module, "_plan", lambda ind: ne_module._Plan(grouped(ind).pairs))
    prob = _Problem(factors=[fac, prior], retract=_additive_retract, K=K, p=s, s=s, g=0, w=w, chunk_size=5)
    out["per block"] = _assemble(prob, X, X.new_zeros(0))
    # dense truth: whitened, Huber-weighted rows of J and e
    e = torch.einsum("mij,mj->mi", Wm, res(X[idx], None))
    u = e.norm(dim=-1)
    sw = torch.where(u <= 1.5, torch.ones_like(u), 1.5 / u).sqrt()
    Jd = torch.zeros(M * r + K * s, K * s, dtype=DT)
    for m in range(M):
        for c in range(2):
            kk = int(idx[m, c])
            Jd[m * r : (m + 1) * r, kk * s : (kk + 1) * s] += sw[m] * Wm[m] @ C[m, :, c]
    Jd[M * r :] = torch.eye(K * s, dtype=DT)
    ed = torch.cat([(e * sw[:, None]).reshape(-1), X.reshape(-1)])
    H, b = Jd.T @ Jd, Jd.T @ ed
    for label, N in out.items():
        for kk in range(K):
            for d in range(min(kk, w) + 1):
                torch.testing.assert_close(
                    N.Hb[kk, d], _blocks_of(H, s, K, kk, kk - d), rtol=1e-12, atol=1e-12, msg=label
                )
        torch.testing.assert_close(N.bx.reshape(-1), b, rtol=1e-12, atol=1e-12, msg=label)


def _random_band(K: int, w: int, s: int, ridge: float = 0.1):
    r"""A random SPD block-banded matrix (dense and in band storage) from random rows on w + 1 consecutive blocks."""
    n = K * s
    Jd = torch.zeros(2 * n, n, dtype=DT)
    for i in range(2 * n):  # random rows touching at most w + 1 consecutive blocks
        kb = min(i // (2 * s), K - 1)
        lo = max(0, kb - w)
        Jd[i, lo * s : (kb + 1) * s] = torch.randn((kb + 1 - lo) * s, dtype=DT)
    A = Jd.T @ Jd + ridge * torch.eye(n, dtype=DT)
    Ab = torch.zeros(K, w + 1, s, s, dtype=DT)
    for k in range(K):
        for d in range(min(k, w) + 1):
            Ab[k, d] = _blocks_of(A, s, K, k, k - d)
    return A, Ab


@pytest.mark.parametrize("method", ["loop", "lapack", "scan"])
def test_block_banded_linear_algebra_matches_dense(method):
    for K, w, s in [(9, 1, 2), (11, 2, 3), (10, 3, 2), (3, 3, 2), (1, 2, 2), (8, 0, 3), (2, 1, 3), (13, 4, 1)]:
        n = K * s
        A, Ab = _random_band(K, w, s)
        Lb, failed = block_banded_cholesky(Ab, method=method)
        assert failed is None
        Ld = torch.linalg.cholesky(A)
        for k in range(K):
            for d in range(min(k, w) + 1):
                torch.testing.assert_close(Lb[k, d], _blocks_of(Ld, s, K, k, k - d), rtol=1e-10, atol=1e-12)
        rhs = torch.randn(K, s, 3, dtype=DT)
        X = block_banded_solve(Lb, rhs, method=method)
        torch.testing.assert_close(X.reshape(n, 3), torch.linalg.solve(A, rhs.reshape(n, 3)), rtol=1e-10, atol=1e-10)
        Sb = block_banded_selected_inverse(Lb, method="loop" if method == "lapack" else method)
        Ainv = torch.linalg.inv(A)
        for k in range(K):
            for d in range(w + 1):
                want = _blocks_of(Ainv, s, K, k, k + d) if k + d < K else torch.zeros(s, s, dtype=DT)
                torch.testing.assert_close(Sb[k, d], want, rtol=1e-10, atol=1e-12)


def test_block_banded_matvec_matches_dense_and_rejects_bad_shapes():
    for K, w, s in [(9, 1, 2), (11, 2, 3), (3, 3, 2), (1, 2, 2), (8, 0, 3), (13, 4, 1)]:
        A, Ab = _random_band(K, w, s)
        x = torch.randn(K, s, 2, dtype=DT)
        want = (A @ x.reshape(K * s, 2)).reshape(K, s, 2)
        torch.testing.assert_close(block_banded_matvec(Ab, x), want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="`x` must be a 9 x 2 x c"):
        block_banded_matvec(_random_band(9, 1, 2)[1], torch.zeros(9, 3, 1, dtype=DT))
    with pytest.raises(ValueError, match="`Ab` must be a K x"):
        block_banded_matvec(torch.zeros(9, 2, 2, dtype=DT), torch.zeros(9, 2, 1, dtype=DT))


def _dense_of_band(Ab: torch.Tensor) -> torch.Tensor:
    r"""The symmetric matrix of a band (differentiable): blocks ``Ab[k, d]`` below the diagonal and their transposes."""
    K, w1, s, _ = Ab.shape
    rows = []
    for k in range(K):
        row = []
        for j in range(K):
            if 0 <= k - j < w1:
                row.append(Ab[k, k - j])
            elif 0 < j - k < w1:
                row.append(Ab[j, j - k].mT)
            else:
                row.append(Ab.new_zeros(s, s))
        rows.append(torch.cat(row, 1))
    return torch.cat(rows, 0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_default_banded_factor_and_solve_carry_gradients_equal_to_dense(dtype):
    r"""On the CPU ``method="auto"`` ran LAPACK on detached arrays: the factor of an ``Ab`` that requires grad had no
    ``grad_fn``, so every gradient through it was lost (``torch.autograd.grad`` raised, a sum with other terms
    silently dropped it). ``"auto"`` now takes the differentiable scan: directional derivatives of
    ``log det A + c^T A^{-1} b`` along random symmetric band directions equal dense autograd; ``"lapack"`` refuses
    inputs that require grad."""
    K, w, s = 7, 2, 2
    _, Ab0 = _random_band(K, w, s)
    dirs = [_random_band(K, w, s)[1] for _ in range(3)]
    Ab0, dirs = Ab0.to(dtype), [d.to(dtype) for d in dirs]
    t = torch.zeros(3, dtype=dtype, requires_grad=True)
    rhs = torch.randn(K, s, 2, dtype=dtype, requires_grad=True)
    c = torch.randn(K, s, 2, dtype=dtype)
    Ab = Ab0 + sum(t[i] * dirs[i] for i in range(3))
    Lb, failed = block_banded_cholesky(Ab)
    assert failed is None and Lb.requires_grad
    got = 2 * Lb[:, 0].diagonal(dim1=-2, dim2=-1).log().sum() + (c * block_banded_solve(Lb, rhs)).sum()
    g_t, g_rhs = torch.autograd.grad(got, (t, rhs))
    A = _dense_of_band(Ab0.double() + sum(t[i].double() * dirs[i].double() for i in range(3)))
    want = torch.logdet(A) + (c.double().reshape(-1, 2) * torch.linalg.solve(A, rhs.double().reshape(-1, 2))).sum()
    w_t, w_rhs = torch.autograd.grad(want, (t, rhs))
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(g_t, w_t.to(dtype), **tol)
    torch.testing.assert_close(g_rhs, w_rhs.to(dtype), **tol)
    with pytest.raises(ValueError, match="method='lapack' does not propagate gradients"):
        block_banded_cholesky(Ab, method="lapack")
    with pytest.raises(ValueError, match="method='lapack' does not propagate gradients"):
        block_banded_solve(Lb.detach(), rhs, method="lapack")
    with torch.no_grad():  # nothing to differentiate: LAPACK, the same factor
        torch.testing.assert_close(block_banded_cholesky(Ab, method="lapack")[0], Lb.detach(), **tol)


def test_banded_routines_refuse_batches_vectors_and_mixed_dtypes_clearly():
    r"""A batch dimension failed with "too many values to unpack", an empty chain with a RecursionError (scan), a
    ``K x s`` vector right-hand side was solved by LAPACK but broke the scan and loop with broadcast errors, a
    float32 right-hand side with a float64 factor was rounded to float32 by LAPACK only, and a NaN ``singular_tol``
    reported a well-conditioned band singular at block 0."""
    _, Ab = _random_band(5, 1, 2)
    Lb, _ = block_banded_cholesky(Ab)
    for method in ("lapack", "scan", "loop"):
        with pytest.raises(
            ValueError,
            match=r"`Ab` must be a K x \(w \+ 1\) x s x s tensor of one chain .* got shape \(3, 5, 2, 2, 2\)",
        ):
            block_banded_cholesky(Ab.expand(3, *Ab.shape), method=method)
        with pytest.raises(ValueError, match=r"`Ab` must be .* got shape \(0, 2, 2, 2\)"):
            block_banded_cholesky(Ab[:0], method=method)
        with pytest.raises(ValueError, match=r"`rhs` must be a 5 x 2 x c tensor .* got shape \(5, 2\)"):
            block_banded_solve(Lb, torch.ones(5, 2, dtype=DT), method=method)
        with pytest.raises(
            TypeError, match=r"`rhs` must have the dtype and device of `Lb` \(torch.float64 on cpu\), got torch.float32"
        ):
            block_banded_solve(Lb, torch.ones(5, 2, 1), method=method)
    for tol in (float("nan"), -1e-3, float("inf")):  # NaN declared the well-conditioned band singular at block 0
        with pytest.raises(ValueError, match=r"`singular_tol` must be a finite number >= 0 \(or None\), got"):
            block_banded_cholesky(Ab, singular_tol=tol)
    assert block_banded_cholesky(Ab, singular_tol=0.0)[1] is None
    with pytest.raises(TypeError, match="`Ab` must be a floating tensor, got torch.int64"):
        block_banded_cholesky(torch.ones(5, 2, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="`Lb` must be a K x"):
        block_banded_selected_inverse(Lb[None])


@pytest.mark.parametrize("w", [1, 2, 3])
def test_banded_lapack_and_scan_equal_the_loop_on_long_chains(w):
    r"""Long chains (K not a power of two, so the odd-even reduction meets odd lengths at every level): LAPACK's
    banded factor and solve and the parallel-prefix solve and selected inverse equal the sequential recursions."""
    K, s = 203, 3
    _, Ab = _random_band(K, w, s, ridge=1e-3)
    L_loop, f_loop = block_banded_cholesky(Ab, method="loop")
    L_lap, f_lap = block_banded_cholesky(Ab, method="lapack")
    L_scan, f_scan = block_banded_cholesky(Ab, method="scan")
    assert f_loop is None and f_lap is None and f_scan is None
    torch.testing.assert_close(L_lap, L_loop, rtol=1e-10, atol=1e-10 * float(L_loop.abs().max()))
    torch.testing.assert_close(L_scan, L_loop, rtol=1e-10, atol=1e-10 * float(L_loop.abs().max()))
    rhs = torch.randn(K, s, 2, dtype=DT)
    x_loop = block_banded_solve(L_loop, rhs, method="loop")
    scale = float(x_loop.abs().max())
    for m in ("lapack", "scan"):
        torch.testing.assert_close(block_banded_solve(L_loop, rhs, method=m), x_loop, rtol=1e-10, atol=1e-10 * scale)
    S_loop = block_banded_selected_inverse(L_loop, method="loop")
    S_scan = block_banded_selected_inverse(L_loop, method="scan")
    torch.testing.assert_close(S_scan, S_loop, rtol=1e-10, atol=1e-10 * float(S_loop.abs().max()))


def test_banded_singular_pivot_is_reported_at_the_same_block_by_every_method():
    K, w, s = 12, 2, 3
    A, Ab = _random_band(K, w, s)
    for bad in (0, 5, K - 1):
        Ab2 = Ab.clone()
        Ab2[bad, 0, 1, :] = 0.0  # variable (bad, 1) has no information: the matrix is singular there
        Ab2[bad, 0, :, 1] = 0.0
        Ab2[bad, 1:, 1, :] = 0.0
        for d in range(1, w + 1):  # and no coupling to later states
            if bad + d < K:
                Ab2[bad + d, d, :, 1] = 0.0
        for method in ("loop", "lapack", "scan"):
            _, failed = block_banded_cholesky(Ab2, method=method)
            assert failed == bad, (method, bad, failed)
    with pytest.raises(ValueError, match="method"):
        block_banded_cholesky(Ab, method="cyclic")
    with pytest.raises(ValueError, match="method"):
        block_banded_selected_inverse(block_banded_cholesky(Ab)[0], method="lapack")
    with pytest.raises(ValueError, match="method"):
        block_banded_solve(block_banded_cholesky(Ab)[0], torch.zeros(K, s, 1, dtype=DT), method="cyclic")


@pytest.mark.parametrize("w", [1, 2])
def test_scan_factorisation_takes_logarithmically_many_batched_steps(monkeypatch, w):
    r"""The parallel factorisation's promise: its number of batched factorisations grows like ``log2 K``, not ``K``
    (the loop makes one per block row), so a GPU runs it in a few dozen kernel launches at any length."""
    calls = []
    chol = torch.linalg.cholesky_ex

    def counting(*args, **kwargs):
        calls.append(1)
        return chol(*args, **kwargs)

    monkeypatch.setattr(torch.linalg, "cholesky_ex", counting)
    for K in (64, 1024):
        _, Ab = _random_band(K, w, 2)
        calls.clear()
        _, failed = block_banded_cholesky(Ab, method="scan")
        assert failed is None
        assert len(calls) <= 2 * math.ceil(math.log2(K)) + 2, (K, len(calls))
    calls.clear()
    block_banded_cholesky(_random_band(64, w, 2)[1], method="loop")
    assert len(calls) >= 64


def _random_walk_band(K: int, s: int, q: float) -> torch.Tensor:
    r"""The precision of a random walk with process variance ``q``, observed (variance 1) at every hundredth state,
    in band storage (``K x 2 x s x s``): condition number about ``K^2 / (100 q)``."""
    eye = torch.eye(s, dtype=DT)
    Ab = torch.zeros(K, 2, s, s, dtype=DT)
    Ab[:, 0] = 2 * eye / q
    Ab[0, 0] = Ab[-1, 0] = eye / q
    Ab[::100, 0] += eye
    Ab[1:, 1] = -eye / q
    return Ab


def _band_residual(Ab: torch.Tensor, x: torch.Tensor, rhs: torch.Tensor) -> float:
    return float((block_banded_matvec(Ab, x) - rhs).abs().max())


def test_scan_factorisation_of_a_stiff_random_walk_matches_lapack():
    r"""A stiff chain prior (``q = 1e-6``, condition number about 1e8): the odd-even elimination gives LAPACK's factor
    and solution to the accuracy the conditioning allows in float64. In float32 (``q = 1e-2``) its residual stays
    within a few times LAPACK's (backward stable), but its forward error grows with the chain, which is why "auto"
    factorises float32 in float64 off the CPU (module docstring)."""
    import gpgeom.engine.banded as banded_module

    K, s = 4000, 3
    Ab = _random_walk_band(K, s, 1e-6)
    rhs = torch.randn(K, s, 1, dtype=DT, generator=torch.Generator().manual_seed(0))
    L_lap, _ = block_banded_cholesky(Ab, method="lapack")
    L_scan, failed = block_banded_cholesky(Ab, method="scan")
    assert failed is None
    torch.testing.assert_close(L_scan, L_lap, rtol=0, atol=1e-10 * float(L_lap.abs().max()))
    x_lap = block_banded_solve(L_lap, rhs, method="lapack")
    x_scan = block_banded_solve(L_scan, rhs, method="scan")
    torch.testing.assert_close(x_scan, x_lap, rtol=0, atol=1e-6 * float(x_lap.abs().max()))
    assert _band_residual(Ab, x_scan, rhs) < 5 * _band_residual(Ab, x_lap, rhs)
    Ab = _random_walk_band(K, s, 1e-2)
    res = {}
    for m in ("lapack", "scan"):
        L32, failed32 = block_banded_cholesky(Ab.float(), method=m)
        assert failed32 is None
        res[m] = _band_residual(Ab, block_banded_solve(L32, rhs.float(), method=m).double(), rhs)
    assert res["scan"] < 5 * res["lapack"], res
    # what "auto" does off the CPU for float32: the float64 scan rounded to float32, as accurate as LAPACK's float32
    L64, _ = block_banded_cholesky(Ab.float().double(), method="scan")
    x_lap32 = block_banded_solve(block_banded_cholesky(Ab.float(), method="lapack")[0], rhs.float(), method="lapack")
    x_ref = block_banded_solve(block_banded_cholesky(Ab, method="lapack")[0], rhs, method="lapack")
    x_auto32 = block_banded_solve(L64.float(), rhs.float(), method="scan")
    err = {k: float((x.double() - x_ref).abs().max()) for k, x in (("auto", x_auto32), ("lapack", x_lap32))}
    assert err["auto"] <= 2 * err["lapack"], err
    meta = Ab.to("meta")
    assert banded_module._method("auto", meta, "cholesky") == "scan"
    assert banded_module._method("auto", meta.float(), "cholesky") == "scan64"
    assert banded_module._method("auto", meta.half(), "cholesky") == "loop"
    assert banded_module._method("auto", meta.float(), "solve") == "scan"


def test_float32_linear_chain():
    K, s = 20, 2
    factors, J, z = _linear_chain(K, s, 0, bandwidth=1)
    theta, _ = _dense_truth(J, z)
    f32 = [Factor(f.indices, f.residual, sqrt_information=f.sqrt_information.float(), name=f.name) for f in factors]

    def cast(fn):
        return lambda x, g: fn(x.double(), g.double()).float()

    for f in f32:
        f.residual = cast(f.residual)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # the float32 default tolerances are reachable
        for method in ("gn", "lm"):
            res = gauss_newton(torch.zeros(K, s), f32, method=method)
            assert res.states.dtype == torch.float32 and res.converged
            torch.testing.assert_close(res.states.reshape(-1).double(), theta, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------------------------
# Nonlinear problems with non-additive retractions
# ------------------------------------------------------------------------------------------------------------------
def _circle_retract(x: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(dx[:, 0]), torch.sin(dx[:, 0])
    return torch.stack([c * x[:, 0] - s * x[:, 1], s * x[:, 0] + c * x[:, 1]], -1)


def _wrap_t(a: torch.Tensor) -> torch.Tensor:
    return torch.atan2(torch.sin(a), torch.cos(a))


def _circle_problem(K: int, analytic: bool):
    theta_true = torch.cumsum(0.3 + 0.2 * torch.randn(K, dtype=DT), 0)
    rel_sd, abs_sd = 0.05, 0.3
    z = theta_true[1:] - theta_true[:-1] + rel_sd * torch.randn(K - 1, dtype=DT)
    anchors = torch.arange(0, K, 4)
    y = theta_true[anchors] + abs_sd * torch.randn(len(anchors), dtype=DT)

    def rel_res(x, g):  # angle of x_{k+1} relative to x_k, minus the measurement
        a, b = x[:, 0], x[:, 1]
        phi = torch.atan2(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0], a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1])
        return _wrap_t(phi - z)[:, None]

    def abs_res(x, g):
        return _wrap_t(torch.atan2(x[:, 0, 1], x[:, 0, 0]) - y)[:, None]

    def rel_jac(x, g):  # right perturbation by dtheta: d phi / d(d_k, d_{k+1}) = (-1, 1)
        Jx = torch.zeros(K - 1, 1, 2, 1, dtype=DT)
        Jx[:, 0, 0, 0], Jx[:, 0, 1, 0] = -1.0, 1.0
        return Jx, None

    def abs_jac(x, g):
        return torch.ones(len(anchors), 1, 1, 1, dtype=DT), None

    ar = torch.arange(K)
    factors = [
        Factor(
            torch.stack([ar[:-1], ar[1:]], 1),
            rel_res,
            jacobian=rel_jac if analytic else None,
            sqrt_information=torch.tensor([[1 / rel_sd]], dtype=DT),
        ),
        Factor(
            anchors[:, None],
            abs_res,
            jacobian=abs_jac if analytic else None,
            sqrt_information=torch.tensor([[1 / abs_sd]], dtype=DT),
        ),
    ]

    def wrap_np(a):
        return np.arctan2(np.sin(a), np.cos(a))

    def scipy_res(th):
        return np.concatenate(
            [
                wrap_np(th[1:] - th[:-1] - z.numpy()) / rel_sd,
                wrap_np(th[anchors.numpy()] - y.numpy()) / abs_sd,
            ]
        )

    # with the wrap inactive at the optimum (all residuals << pi) the problem is linear in the unwrapped angles:
    # an exact dense least-squares truth
    Jd = torch.zeros(K - 1 + len(anchors), K, dtype=DT)
    Jd[torch.arange(K - 1), torch.arange(1, K)] = 1 / rel_sd
    Jd[torch.arange(K - 1), torch.arange(K - 1)] = -1 / rel_sd
    Jd[K - 1 + torch.arange(len(anchors)), anchors] = 1 / abs_sd
    zd = torch.cat([z / rel_sd, y / abs_sd])
    theta_dense = torch.linalg.lstsq(Jd, zd[:, None]).solution[:, 0]
    return factors, theta_true, scipy_res, theta_dense


def test_circle_chain_matches_scipy_and_jacobians_agree():
    K = 40
    factors_auto, theta_true, scipy_res, theta_dense = _circle_problem(K, analytic=False)
    theta0 = theta_true + 0.5 * torch.randn(K, dtype=DT)
    x0 = torch.stack([torch.cos(theta0), torch.sin(theta0)], -1)
    kw = dict(retract=_circle_retract, tangent_dim=1)
    r_lm = gauss_newton(x0, factors_auto, method="lm", **kw)
    r_gn = gauss_newton(x0, factors_auto, method="gn", **kw)
    ref = least_squares(scipy_res, theta0.numpy(), method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15)
    theta_ref = torch.from_numpy(ref.x)
    for r in (r_lm, r_gn):
        assert r.converged, r.message
        torch.testing.assert_close(r.states.norm(dim=-1), torch.ones(K, dtype=DT), rtol=0, atol=1e-12)
        est = torch.atan2(r.states[:, 1], r.states[:, 0])
        # round-off bound: cond(H) ~ 1e6 here (10 weak anchors, 39 strong increments), angles up to ~12 rad
        assert float(_wrap_t(est - theta_dense).abs().max()) < 1e-8
        assert float(_wrap_t(est - theta_ref).abs().max()) < 1e-7  # scipy stops at ~1e-9
        assert r.cost == pytest.approx(ref.cost, rel=1e-10)
    # LM decreases the cost monotonically
    hist = r_lm.cost_history
    assert all(b <= a for a, b in zip(hist, hist[1:]))
    # analytic Jacobians give the same iterates
    factors_ana = [
        Factor(f.indices, f.residual, jacobian=fa.jacobian, sqrt_information=f.sqrt_information)
        for f, fa in zip(factors_auto, _circle_problem(K, analytic=True)[0])
    ]
    r_ana = gauss_newton(x0, factors_ana, method="lm", **kw)
    assert r_ana.iterations == r_lm.iterations
    torch.testing.assert_close(r_ana.states, r_lm.states, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.tensor(r_ana.cost_history), torch.tensor(hist), rtol=1e-12, atol=1e-12)


def _hat(v: torch.Tensor) -> torch.Tensor:
    z = torch.zeros_like(v[..., 0])
    return torch.stack(
        [
            torch.stack([z, -v[..., 2], v[..., 1]], -1),
            torch.stack([v[..., 2], z, -v[..., 0]], -1),
            torch.stack([-v[..., 1], v[..., 0], z], -1),
        ],
        -2,
    )


def _so3_retract(x: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    R = x.reshape(-1, 3, 3)
    return (R @ torch.linalg.matrix_exp(_hat(dx))).reshape(-1, 9)


def test_so3_chain_matches_scipy_least_squares():
    K = 12
    rv_true = torch.cumsum(0.3 * torch.randn(K, 3, dtype=DT), 0)
    R_true = torch.linalg.matrix_exp(_hat(rv_true))
    sd_rel, sd_abs = 0.02, 0.2
    Z = R_true[:-1].mT @ R_true[1:] @ torch.linalg.matrix_exp(_hat(sd_rel * torch.randn(K - 1, 3, dtype=DT)))
    anchors = torch.tensor([0, 5, 11])
    Yabs = R_true[anchors] @ torch.linalg.matrix_exp(_hat(sd_abs * torch.randn(len(anchors), 3, dtype=DT)))

    # chordal residuals vec(E - I), E the rotation error: 9 components, Jacobian of full rank 3 at every E
    # (a sin(angle)-axis residual would have spurious stationary points at angle pi)
    eye = torch.eye(3, dtype=DT)

    def rel_res(x, g):
        Ra, Rb = x[:, 0].reshape(-1, 3, 3), x[:, 1].reshape(-1, 3, 3)
        return (Z.mT @ Ra.mT @ Rb - eye).reshape(-1, 9)

    def abs_res(x, g):
        return (Yabs.mT @ x[:, 0].reshape(-1, 3, 3) - eye).reshape(-1, 9)

    ar = torch.arange(K)
    factors = [
        Factor(torch.stack([ar[:-1], ar[1:]], 1), rel_res, sqrt_information=torch.eye(9, dtype=DT) / sd_rel),
        Factor(anchors[:, None], abs_res, sqrt_information=torch.eye(9, dtype=DT) / sd_abs),
    ]
    rv0 = rv_true + 0.2 * torch.randn(K, 3, dtype=DT)
    x0 = torch.linalg.matrix_exp(_hat(rv0)).reshape(K, 9)
    res = gauss_newton(x0, factors, retract=_so3_retract, tangent_dim=3, method="lm", compute_covariances=True)
    assert res.converged, res.message
    hist = res.cost_history
    assert all(b <= a for a, b in zip(hist, hist[1:]))
    R_est = res.states.reshape(K, 3, 3)
    torch.testing.assert_close(R_est.mT @ R_est, torch.eye(3, dtype=DT).expand(K, 3, 3), rtol=0, atol=1e-12)

    # independent optimum: scipy on rotation vectors (global chart), same residual definitions in numpy
    Zn, Yn = Z.numpy(), Yabs.numpy()

    def fun(v):
        R = Rotation.from_rotvec(v.reshape(K, 3)).as_matrix()
        r1 = (np.swapaxes(Zn, -1, -2) @ np.swapaxes(R[:-1], -1, -2) @ R[1:] - np.eye(3)) / sd_rel
        r2 = (np.swapaxes(Yn, -1, -2) @ R[anchors.numpy()] - np.eye(3)) / sd_abs
        return np.concatenate([r1.ravel(), r2.ravel()])

    ref = least_squares(fun, rv0.numpy().ravel(), method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15)
    R_ref = torch.from_numpy(Rotation.from_rotvec(ref.x.reshape(K, 3)).as_matrix())
    torch.testing.assert_close(R_est, R_ref, rtol=0, atol=1e-7)  # scipy's own stopping limits this to ~1e-9
    assert res.cost <= ref.cost * (1 + 1e-12) and res.cost == pytest.approx(ref.cost, rel=1e-10)
    # GN reaches the same optimum
    res_gn = gauss_newton(x0, factors, retract=_so3_retract, tangent_dim=3, method="gn")
    torch.testing.assert_close(res_gn.states, res.states, rtol=0, atol=1e-8)
    # covariances are symmetric positive definite
    assert bool((torch.linalg.eigvalsh(res.covariances) > 0).all())


# ------------------------------------------------------------------------------------------------------------------
# Robust loss, singular problems, bad input
# ------------------------------------------------------------------------------------------------------------------
def test_huber_downweights_outlier():
    K = 60
    x_true = torch.cumsum(0.1 * torch.randn(K, dtype=DT), 0)
    y = x_true + 0.1 * torch.randn(K, dtype=DT)
    k_out = 30
    y[k_out] += 5.0  # a 50-sigma outlier
    ar = torch.arange(K)

    def factors(robust):
        return [
            Factor(
                ar[:, None],
                lambda x, g: x[:, 0] - y[:, None],
                sqrt_information=torch.tensor([[10.0]], dtype=DT),
                robust=robust,
                robust_threshold=1.5,
            ),
            Factor(
                torch.stack([ar[:-1], ar[1:]], 1),
                lambda x, g: x[:, 1] - x[:, 0],
                sqrt_information=torch.tensor([[10.0]], dtype=DT),
            ),
        ]

    x0 = torch.zeros(K, 1, dtype=DT)
    ls = gauss_newton(x0, factors(None))
    hub = gauss_newton(x0, factors("huber"))
    assert hub.converged
    err_ls = abs(float(ls.states[k_out, 0] - x_true[k_out]))
    err_hub = abs(float(hub.states[k_out, 0] - x_true[k_out]))
    assert err_hub < 0.3 * err_ls, (err_hub, err_ls)
    # Huber cost is linear beyond the threshold: the outlier contributes about delta * (|e| - delta / 2)
    assert hub.cost < ls.cost
    assert all(b <= a for a, b in zip(hub.cost_history, hub.cost_history[1:]))


def _gauge_free_problem(K: int = 15):
    r"""2-D positions with only relative (odometry and skip) measurements: translation is unobservable."""
    ar = torch.arange(K)
    p = torch.cumsum(torch.randn(K, 2, dtype=DT), 0)
    z1 = p[1:] - p[:-1] + 0.1 * torch.randn(K - 1, 2, dtype=DT)
    z2 = p[2:] - p[:-2] + 0.1 * torch.randn(K - 2, 2, dtype=DT)
    factors = [
        Factor(torch.stack([ar[:-1], ar[1:]], 1), lambda x, g: x[:, 1] - x[:, 0] - z1, name="odometry"),
        Factor(torch.stack([ar[:-2], ar[2:]], 1), lambda x, g: x[:, 1] - x[:, 0] - z2, name="skip"),
    ]
    # dense least-squares minimum (pseudo-inverse) for the cost
    n = 2 * K
    rows, rhs = [], []
    for d, z in ((1, z1), (2, z2)):
        for k in range(K - d):
            J = torch.zeros(2, n, dtype=DT)
            J[:, 2 * (k + d) : 2 * (k + d) + 2] = torch.eye(2)
            J[:, 2 * k : 2 * k + 2] = -torch.eye(2)
            rows.append(J)
            rhs.append(z[k])
    J, zz = torch.cat(rows), torch.cat(rhs)
    # rank-deficient (the gauge): the SVD-based driver (the default "gelsy" misses the minimum for some draws)
    sol = torch.linalg.lstsq(J, zz, driver="gelsd").solution
    min_cost = 0.5 * float((J @ sol - zz).square().sum())
    return factors, min_cost, p


def test_gauge_freedom_gn_raises_and_lm_solves():
    K = 15
    factors, min_cost, p = _gauge_free_problem(K)
    x0 = torch.randn(K, 2, dtype=DT)
    with pytest.raises(NotPSDError, match=r"prior factor.*method='lm'"):
        gauss_newton(x0, factors, bandwidth=2, method="gn")
    res = gauss_newton(x0, factors, bandwidth=2, method="lm")
    assert res.converged, res.message
    assert res.cost == pytest.approx(min_cost, rel=1e-8)
    # the Laplace covariance of a gauge-free problem does not exist
    with pytest.raises(NotPSDError, match="marginal covariances .* do not exist"):
        gauss_newton(x0, factors, bandwidth=2, method="lm", compute_covariances=True)
    # anchoring the first state removes the gauge freedom
    anchor = Factor(torch.zeros(1, 1, dtype=torch.long), lambda x, g: x[:, 0] - p[0])
    res2 = gauss_newton(x0, [*factors, anchor], bandwidth=2, method="gn", compute_covariances=True)
    assert res2.converged and res2.cost == pytest.approx(min_cost, rel=1e-8)


def _never_zero_chain() -> tuple[list, torch.Tensor]:
    r"""Residuals :math:`x_k^2 + 1` (never zero) and a chain :math:`x_{k+1} - x_k` on 3 states, started at 0.5."""
    K = 3
    ar = torch.arange(K)
    factors = [
        Factor(ar[:, None], lambda x, g: x[:, 0].square() + 1.0, name="x^2 + 1"),
        Factor(torch.stack([ar[:-1], ar[1:]], 1), lambda x, g: x[:, 1] - x[:, 0], name="chain"),
    ]
    return factors, torch.full((K, 1), 0.5, dtype=DT)


def test_gauss_newton_warn_false_raises_no_warning():
    r"""``gauss_newton(..., warn=False)`` (the trajectories' ``fit(warn=False)`` and their range initialisation, which
    silenced its ConvergenceWarnings in ``warnings.catch_warnings()`` blocks before): neither the note of a refused
    Gauss-Newton step nor the exhausted ``max_iter`` is raised, also under an "error" filter, and the result is
    bitwise the one that warns (which says the same in ``converged`` and ``message``)."""
    factors, x0 = _never_zero_chain()
    for kwargs, match in (({"method": "gn"}, "Gauss-Newton step"), ({"max_iter": 1}, "max_iter")):
        with pytest.warns(ConvergenceWarning, match=match):
            loud = gauss_newton(x0, factors, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            quiet = gauss_newton(x0, factors, warn=False, **kwargs)
        assert torch.equal(quiet.states, loud.states) and quiet.message == loud.message
        assert quiet.converged == loud.converged


def test_gauss_newton_where_the_normal_matrix_turns_singular_does_not_oscillate():
    r"""Residuals :math:`x_k^2 + 1` (never zero) and a chain :math:`x_{k+1} - x_k`: the minimum is at :math:`x = 0`,
    where :math:`J = 2x` vanishes and the normal matrix is singular along the common mode. Undamped steps there are
    Newton's iteration for :math:`x^2 + 1 = 0`, which never converges (the cost jumps between 1.6 and 117)."""
    factors, x0 = _never_zero_chain()
    with pytest.warns(ConvergenceWarning, match=r"method='gn': the Gauss-Newton step of iteration 1 would raise"):
        res = gauss_newton(x0, factors, method="gn", max_iter=100)
    assert res.converged and "continued as Levenberg-Marquardt from iteration 1" in res.message
    hist = res.cost_history
    assert all(b <= a for a, b in zip(hist, hist[1:])), hist
    assert res.cost == pytest.approx(0.5 * x0.shape[0], rel=1e-10) and float(res.states.abs().max()) < 1e-3
    # exactly singular (a gauge freedom): refused, with the reason and the remedy
    with pytest.raises(NotPSDError, match=r"not positive definite.*method='lm'") as err:
        gauss_newton(torch.tensor([[0.0], [1.0], [3.0]], dtype=DT), factors[1:], method="gn")
    assert "float32" not in str(err.value)
    # in float32 the message also names ill-conditioning, which float32 cannot tell from singularity
    with pytest.raises(NotPSDError, match=r"method='lm'.*In torch.float32 it may instead be too ill-conditioned"):
        gauss_newton(torch.tensor([[0.0], [1.0], [3.0]]), factors[1:], method="gn")


def test_bad_input_errors():
    K = 6
    ar = torch.arange(K)
    x0 = torch.zeros(K, 2, dtype=DT)
    good = Factor(ar[:, None], lambda x, g: x[:, 0] - 1.0)
    wide = Factor(torch.stack([ar[:-2], ar[2:]], 1), lambda x, g: x[:, 1] - x[:, 0], name="skip")
    with pytest.raises(ValueError, match=r"Factor 'skip'.*spans states 0\.\.2.*bandwidth"):
        gauss_newton(x0, [good, wide], bandwidth=1)
    flat = Factor(ar[:, None], lambda x, g: (x[:, 0] - 1.0).sum(-1))
    with pytest.raises(ValueError, match=r"must return an M x r tensor with M = 6"):
        gauss_newton(x0, flat)
    with pytest.raises(ValueError, match="NaN"):
        gauss_newton(torch.full((K, 2), float("nan"), dtype=DT), good)
    with pytest.raises(ValueError, match="Unknown `method`"):
        gauss_newton(x0, good, method="newton")
    with pytest.raises(ValueError, match="`stol` must be >= 0"):
        gauss_newton(x0, good, stol=-0.1)
    with pytest.raises(ValueError, match="Unknown `Factor.robust`"):
        Factor(ar[:, None], lambda x, g: x[:, 0], robust="cauchy")
    with pytest.raises(TypeError, match="integer tensor"):
        Factor(ar[:, None].double(), lambda x, g: x[:, 0])
    with pytest.raises(ValueError, match=r"must lie in \[0, 5\]"):
        gauss_newton(x0, Factor(torch.tensor([[7]]), lambda x, g: x[:, 0]))
    with pytest.raises(ValueError, match="`bandwidth` must be >= 0"):
        gauss_newton(x0, good, bandwidth=-1)
    with pytest.raises(ValueError, match="tangent_dim"):
        gauss_newton(x0, good, tangent_dim=1)
    with pytest.raises(ValueError, match="tangent_dim"):
        gauss_newton(x0, good, retract=lambda x, d: x + d)
    with pytest.raises(ValueError, match=r"sqrt_information"):
        Factor(ar[:, None], lambda x, g: x[:, 0], sqrt_information=torch.eye(2, 3, dtype=DT))
    mism = Factor(ar[:, None], lambda x, g: x[:, 0], sqrt_information=torch.eye(3, dtype=DT))
    with pytest.raises(ValueError, match="sqrt_information"):
        gauss_newton(x0, mism)
    badjac = Factor(ar[:, None], lambda x, g: x[:, 0], jacobian=lambda x, g: (torch.zeros(K, 2, 2), None))
    with pytest.raises(ValueError, match="J_x"):
        gauss_newton(x0, badjac)
    nanres = Factor(ar[:, None], lambda x, g: x[:, 0].log() - 1.0)
    with pytest.raises(ValueError, match="NaN or infinite"):
        gauss_newton(-torch.ones(K, 2, dtype=DT), nanres)
    with pytest.raises(TypeError, match="Factor"):
        gauss_newton(x0, [good, "not a factor"])
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        gauss_newton(torch.zeros(K, 1, dtype=DT), Factor(ar[:, None], lambda x, g: x.exp()[:, 0] - 2.0), max_iter=1)


def test_an_iteration_does_linear_work_and_solves_the_linear_chain_exactly(monkeypatch):
    r"""One Gauss-Newton iteration on a chain of K states of size s factorises one s x s block per state and never
    a dense (K s) x (K s) matrix: the numbers of Cholesky factorisations and triangular solves are affine in K
    (equal increments from K = 50 to 100 to 150, every factorised matrix at most s x s), and the step solves this
    linear least-squares problem exactly (it equals the dense normal equations). Times per iteration, which grow
    linearly too, are measured by ``benchmarks/engine.py`` (results in benchmarks/results/engine_*.md)."""
    s = 6
    calls = {"cholesky_ex": [], "solve_triangular": []}

    def counted(name, fn):
        def wrapper(A, *args, **kwargs):
            calls[name].append(tuple(A.shape[-2:]))
            return fn(A, *args, **kwargs)

        return wrapper

    for name in calls:
        monkeypatch.setattr(torch.linalg, name, counted(name, getattr(torch.linalg, name)))
    counts = {}
    for K in (50, 100, 150):
        ar = torch.arange(K)
        A = torch.eye(s, dtype=DT) + 0.1 * torch.randn(K - 1, s, s, dtype=DT)
        y = torch.randn(K, s, dtype=DT)
        fs = [
            Factor(
                torch.stack([ar[:-1], ar[1:]], 1), lambda x, g, A=A: x[:, 1] - torch.einsum("mij,mj->mi", A, x[:, 0])
            ),
            Factor(ar[:, None], lambda x, g, y=y: x[:, 0] - y),
        ]
        for v in calls.values():
            v.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            res = gauss_newton(torch.zeros(K, s, dtype=DT), fs, method="gn", max_iter=1, banded="loop")
        counts[K] = {name: len(v) for name, v in calls.items()}
        assert all(max(shape) <= s for v in calls.values() for shape in v), "a matrix larger than one block"
        assert counts[K]["cholesky_ex"] >= K
        if K == 50:  # the dense normal equations of the same problem
            J = torch.zeros((2 * K - 1) * s, K * s, dtype=DT)
            r = torch.zeros((2 * K - 1) * s, dtype=DT)
            for k in range(K - 1):
                J[k * s : (k + 1) * s, k * s : (k + 1) * s] = -A[k]
                J[k * s : (k + 1) * s, (k + 1) * s : (k + 2) * s] = torch.eye(s, dtype=DT)
            for k in range(K):
                row = (K - 1 + k) * s
                J[row : row + s, k * s : (k + 1) * s] = torch.eye(s, dtype=DT)
                r[row : row + s] = y[k]
            dense = torch.linalg.solve(J.T @ J, J.T @ r).reshape(K, s)
            torch.testing.assert_close(res.states, dense, rtol=1e-10, atol=1e-10)
    for name in calls:
        assert counts[150][name] - counts[100][name] == counts[100][name] - counts[50][name] > 0, counts


def test_lapack_iterations_equal_the_loop_and_factorise_only_the_band(monkeypatch):
    r"""``banded="auto"`` (LAPACK on the CPU) gives the loop's estimate, covariances and global border to 1e-10, and
    every factorisation is one ``?pbtrf`` call on the ``(w + 1) s x K s`` scalar band (never a dense matrix)."""
    import gpgeom.engine.banded as banded_module

    K, s, g, w = 60, 3, 2, 2
    factors, J, z = _linear_chain(K, s, g, bandwidth=w)
    seen = []
    lapack = banded_module._lapack

    def spy(name, dtype):
        fn = lapack(name, dtype)

        def wrapped(ab, *args, **kwargs):
            seen.append((name, tuple(ab.shape)))
            return fn(ab, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(banded_module, "_lapack", spy)
    kw = dict(global_params=torch.zeros(g, dtype=DT), bandwidth=w, compute_covariances=True)
    x0 = torch.randn(K, s, dtype=DT)
    fast = gauss_newton(x0, factors, **kw)
    assert seen and {shape for _, shape in seen} == {((w + 1) * s, K * s)}
    assert sum(name == "pbtrf" for name, _ in seen) == fast.iterations + 1  # each step and the covariances
    ref = gauss_newton(x0, factors, banded="loop", **kw)
    theta, Sigma = _dense_truth(J, z)
    torch.testing.assert_close(fast.states.reshape(-1), theta[: K * s], rtol=1e-8, atol=1e-8)  # LM stops at ftol
    for name in ("states", "globals", "covariances", "cross_covariances", "global_covariance"):
        torch.testing.assert_close(getattr(fast, name), getattr(ref, name), rtol=1e-10, atol=1e-12, msg=name)
    assert fast.iterations == ref.iterations
    scan = gauss_newton(x0, factors, banded="scan", **kw)  # the odd-even reductions that "auto" uses off the CPU
    for name in ("states", "globals", "covariances", "cross_covariances", "global_covariance"):
        torch.testing.assert_close(getattr(scan, name), getattr(ref, name), rtol=1e-10, atol=1e-12, msg=name)
    assert scan.iterations == ref.iterations
    with pytest.raises(ValueError, match="banded"):
        gauss_newton(x0, factors, banded="cyclic", **kw)

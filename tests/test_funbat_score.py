r"""Tests of the node-level site filter and the closed-form score of the pseudo-observations' log marginal
likelihood (gpgeom.engine.sites: node_site_posterior, site_score, score_surrogate; gpgeom.models.funbat.latent:
latent_score, score_surrogate, joint_log_likelihood with (lam, eta) sites, expected_log_prior with its score).

Independent truths: the scalar-observation Kalman filter and RTS smoother of the engine (``site_posterior``), dense
GP algebra (GPyTorch's MaternKernel; log Z in covariance form), autograd through the Kalman filter, central finite
differences of log Z, and the former (cancelling) EM formula on well-spaced coordinates.
"""

from __future__ import annotations

import warnings

import gpytorch
import pytest
import torch

from gpgeom.engine.sites import node_site_posterior, score_surrogate, site_chain, site_posterior, site_score
from gpgeom.errors import ConvergenceWarning
from gpgeom.kernels.markov import MaternMarkovKernel
from gpgeom.models.funbat.latent import (
    expected_log_prior,
    joint_log_likelihood,
    latent_posterior,
    latent_score,
    mode_prior,
    mode_sites,
    value_map,
)
from gpgeom.models.funbat.latent import score_surrogate as mode_score_surrogate

D = torch.float64


def _sites(I, R, seed, scale=5.0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(I, R, R, dtype=D, generator=g)
    lam = A @ A.mT * torch.rand(I, 1, 1, dtype=D, generator=g) * scale
    lam[1] = 0.0  # a coordinate without information
    lam[2] = torch.outer(A[2, 0], A[2, 0])  # rank-one information
    eta = (lam @ torch.randn(I, R, 1, dtype=D, generator=g))[..., 0]
    return lam, eta


def _kernel(nu, ls=0.3, var=1.7):
    k = MaternMarkovKernel(nu=nu).to(D)
    k.lengthscale, k.variance = ls, var
    return k


def _coords(I, seed, close=True):
    g = torch.Generator().manual_seed(seed)
    t = torch.sort(torch.rand(I, dtype=D, generator=g)).values
    if close:  # two coordinates 1e-9 apart: Q is numerically singular in precision form
        t[7] = t[6] + 1e-9
    return t


def _dense_log_z(nu, ls, var, t, lam, eta):
    r""":math:`\log Z = -\tfrac12 \log|I + K\Lambda| + \tfrac12 \eta^\top K (I + \Lambda K)^{-1} \eta` of R iid
    components (component-major ordering)."""
    I, R = eta.shape
    base = gpytorch.kernels.MaternKernel(nu=nu).to(D)
    base.lengthscale = torch.tensor(ls, dtype=D)  # a Python float would be rounded to float32 by GPyTorch's setter
    K = torch.block_diag(*[var * base(t[:, None]).to_dense()] * R)
    L = torch.zeros(R * I, R * I, dtype=D)
    e = torch.zeros(R * I, dtype=D)
    for i in range(I):
        ids = torch.arange(R) * I + i
        L[ids[:, None], ids[None, :]] = lam[i]
        e[ids] = eta[i]
    eye = torch.eye(R * I, dtype=D)
    return -0.5 * torch.linalg.slogdet(eye + K @ L)[1] + 0.5 * e @ K @ torch.linalg.solve(eye + L @ K, e)


# ---------------------------------------------------------------------------------------------------------------
# node-level filter
@pytest.mark.parametrize("nu", [0.5, 1.5, 2.5])
@pytest.mark.parametrize("R", [1, 2, 3])
def test_node_filter_equals_the_scalar_observation_chain(nu, R):
    r"""One associative-scan step per coordinate gives the posterior, cross-covariances, gains and likelihoods of
    the engine's R-scalar-observations chain (measured: at most 1e-11 relative in float64)."""
    I = 90
    k = _kernel(nu)
    t = _coords(I, 1, close=False)
    lam, eta = _sites(I, R, 2)
    with torch.no_grad():
        new = latent_posterior(k, t, lam, eta, method="node")
        old = latent_posterior(k, t, lam, eta, method="scalar", parallel=False)
    for got, want in zip(new, old):
        assert float((got - want).abs().max() / want.abs().max()) <= 1e-9


@pytest.mark.parametrize("nu", [0.5, 1.5, 2.5])
def test_node_filter_log_normalizer_equals_dense_gp(nu):
    I, R = 25, 2
    t = _coords(I, 3, close=False)
    lam, eta = _sites(I, R, 4)
    k = _kernel(nu)
    post = latent_posterior(k, t, lam, eta)
    want = _dense_log_z(nu, 0.3, 1.7, t, lam, eta)
    # log_likelihood leaves out the Gaussian normalisers of the sites' scalar directions (site_chain.log_scale)
    log_scale = mode_sites(lam, eta, k.state_dim).log_scale
    torch.testing.assert_close(post.log_normalizer, want, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(post.log_likelihood, want - log_scale, rtol=1e-10, atol=1e-9)


def test_node_filter_is_batched_and_rejects_a_single_site():
    I, R, nu = 40, 2, 1.5
    k = _kernel(nu)
    t = _coords(I, 5, close=False)
    s = k.state_dim
    H = value_map(R, s, D, torch.device("cpu"))
    Phi, Q, m0, P0 = mode_prior(k, t, R)
    sites = [_sites(I, R, 6), _sites(I, R, 7)]
    lam = torch.stack([a for a, _ in sites])
    eta = torch.stack([b for _, b in sites])
    with torch.no_grad():
        batched = node_site_posterior(lam, eta, H, Phi, Q, m0, P0)
        for b in range(2):
            single = node_site_posterior(lam[b], eta[b], H, Phi, Q, m0, P0)
            for got, want in zip(batched, single):
                torch.testing.assert_close(got[b], want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="eta"):
        node_site_posterior(lam[0, :1], eta[0, :1], H, Phi[:0], Q[:0], m0, P0)
    with pytest.raises(ValueError, match="method"):
        latent_posterior(k, t, lam[0], eta[0], method="banded")


# ---------------------------------------------------------------------------------------------------------------
# score
def _random_prior(I, Dm, seed):
    g = torch.Generator().manual_seed(seed)
    Phi = torch.eye(Dm, dtype=D) + 0.3 * torch.randn(I - 1, Dm, Dm, dtype=D, generator=g)
    B = torch.randn(I - 1, Dm, Dm, dtype=D, generator=g)
    Q = 0.1 * B @ B.mT + 0.05 * torch.eye(Dm, dtype=D)
    C = torch.randn(Dm, Dm, dtype=D, generator=g)
    P0 = C @ C.mT + torch.eye(Dm, dtype=D)
    m0 = torch.randn(Dm, dtype=D, generator=g)
    return Phi, Q, m0, P0


@pytest.mark.parametrize("node", [False, True])
def test_engine_score_is_the_gradient_of_log_z(node):
    r"""The closed-form score (no autograd through the recursions) equals autograd through the Kalman filter, for a
    general prior (transitions, process noises, initial mean and covariance), from the scalar chain and from the
    node-level filter."""
    I, R, Dm = 30, 2, 4
    Phi, Q, m0, P0 = (x.requires_grad_() for x in _random_prior(I, Dm, 8))
    lam, eta = _sites(I, R, 9)
    g = torch.Generator().manual_seed(10)
    H = torch.randn(R, Dm, dtype=D, generator=g)
    chain = site_chain(lam, eta, H)
    log_z = site_posterior(chain, Phi, Q, m0, P0, smooth=False, parallel=False).log_normalizer
    want = torch.autograd.grad(log_z, [Phi, Q, m0, P0])
    if node:
        post, score = node_site_posterior(lam, eta, H, Phi, Q, m0, P0, score=True)
    else:
        post, score = site_score(chain, Phi, Q, m0, P0, parallel=False)
    torch.testing.assert_close(post.log_normalizer, log_z.detach(), rtol=1e-12, atol=1e-9)
    got = torch.autograd.grad(score_surrogate(score, Phi, Q, m0, P0), [Phi, Q, m0, P0])
    for name, a, b in zip(("Phi", "Q", "m0", "P0"), got, want):
        if name in ("Q", "P0"):  # symmetric matrices: only the symmetric part of a gradient is defined
            a, b = 0.5 * (a + a.mT), 0.5 * (b + b.mT)
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9, msg=name)


def _fd_log_z(k, t, lam, eta, h=1e-5):
    out = []
    for p in (k.raw_lengthscale, k.raw_variance):
        with torch.no_grad():
            p += h
            up = latent_posterior(k, t, lam, eta, smooth=False, method="scalar").log_normalizer
            p -= 2 * h
            down = latent_posterior(k, t, lam, eta, smooth=False, method="scalar").log_normalizer
            p += h
        out.append((up - down) / (2 * h))
    return torch.stack([o.reshape(()) for o in out])


@pytest.mark.parametrize("nu", [0.5, 1.5, 2.5])
@pytest.mark.parametrize("close", [False, True])
def test_mode_score_and_stable_em_gradients_are_the_marginal_likelihood_gradient(nu, close):
    r"""The gradient of :func:`score_surrogate` and of the stable EM objective at the current hyperparameters equal
    central finite differences of log Z, also with two coordinates 1e-9 apart (where the cancelling EM formula
    has no correct digit)."""
    I, R = 40, 2
    k = _kernel(nu)
    t = _coords(I, 11, close=close)
    lam, eta = _sites(I, R, 12)
    fd = _fd_log_z(k, t, lam, eta)
    post, score = latent_score(k, t, lam, eta)
    params = [k.raw_lengthscale, k.raw_variance]
    g_score = torch.stack([g.reshape(()) for g in torch.autograd.grad(mode_score_surrogate(k, t, score), params)])
    torch.testing.assert_close(g_score, fd, rtol=1e-5, atol=1e-5)
    if nu < 2.5:  # nu = 5/2: Q(1e-9) is not numerically positive definite (the EM objective needs its Cholesky)
        g_em = torch.stack([g.reshape(()) for g in torch.autograd.grad(expected_log_prior(k, t, post, score), params)])
        torch.testing.assert_close(g_em, fd, rtol=1e-5, atol=1e-5)
    # the joint likelihood with (lam, eta) sites: the value of the chain's, the gradient of the score
    ll = joint_log_likelihood([k], [t], [(lam, eta)])
    ll_chain = joint_log_likelihood([k], [t], [mode_sites(lam, eta, k.state_dim)])
    torch.testing.assert_close(ll, ll_chain.detach(), rtol=1e-12, atol=1e-8)
    g_joint = torch.stack([g.reshape(()) for g in torch.autograd.grad(ll.sum(), params)])
    torch.testing.assert_close(g_joint, fd, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("nu", [0.5, 1.5])
def test_stable_em_objective_equals_the_direct_formula_away_from_the_reference(nu):
    r"""On well-spaced coordinates (no cancellation) the stable EM objective equals the direct formula at other
    hyperparameters than those of its posterior (it is the same function of the hyperparameters)."""
    I, R = 30, 2
    k = _kernel(nu, ls=0.25, var=1.3)
    t = torch.linspace(0, 1, I, dtype=D)
    lam, eta = _sites(I, R, 13)
    post, score = latent_score(k, t, lam, eta)
    for ls, var in [(0.25, 1.3), (0.4, 0.8), (0.1, 2.5)]:
        k.lengthscale, k.variance = ls, var
        direct = expected_log_prior(k, t, post)
        stable = expected_log_prior(k, t, post, score)
        torch.testing.assert_close(stable, direct, rtol=1e-9, atol=1e-8)


def test_marginal_and_em_steps_increase_the_likelihood_on_unique_dense_coordinates():
    r"""On 600 entries whose coordinates are all unique (I_k = N, gaps down to about 1e-6 of the range), a
    marginal-likelihood step (closed-form score, no autograd through the filter) and then an EM step (stable
    form) each increase the summed log likelihood of the modes' pseudo-observations, and move the hyperparameters."""
    from gpgeom.models.funbat import FunBaT

    g = torch.Generator().manual_seed(15)
    X = torch.rand(600, 3, dtype=D, generator=g)
    y = torch.sin(6 * X[:, 0]) * torch.cos(4 * X[:, 1]) + X[:, 2] ** 2 + 0.1 * torch.randn(600, dtype=D, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = FunBaT(2, max_sweeps=2, min_sweeps=2, n_restarts=0, learn_hyperparameters=False).fit(X, y)
    assert all(md.t.shape[0] == 600 for md in m._modes)
    m.learn_hyperparameters = True  # the steps below act on every mode

    def total() -> float:
        with torch.no_grad():
            return sum(
                float(latent_posterior(k, md.t, md.lam, md.eta, smooth=False).log_likelihood)
                for k, md in zip(m.kernels, m._modes)
            )

    for step in (m._marginal_step, lambda: [m._em_step(md, k) for md, k in zip(m._modes, m.kernels)][0]):
        before, hypers = total(), m._log_hypers()
        assert step() is None
        assert total() > before + 1e-3
        assert float((m._log_hypers() - hypers).abs().max()) > 1e-3


def test_site_chain_refuses_negative_site_precisions():
    r"""A negative precision was masked like a zero one (dropped without a word, while the node-level filter used
    it); round-off below zero is still masked."""
    I, R = 6, 2
    lam, eta = _sites(I, R, 3)
    H = torch.eye(R, dtype=D)
    bad = lam.clone()
    bad[2] = -bad[2]
    with pytest.raises(ValueError, match=r"`lam` must be positive semi-definite .* site 2 has an eigenvalue -"):
        site_chain(bad, eta, H)
    rank_one = torch.zeros(I, R, R, dtype=D)
    rank_one[:, 0, 0] = 1.0
    rank_one[:, 1, 1] = -1e-15  # round-off of a rank-deficient precision
    chain = site_chain(rank_one, torch.zeros(I, R, dtype=D), H)
    assert int(chain.mask.sum()) == I  # one observed direction per site, the round-off one masked


def test_site_chain_refuses_a_linear_term_outside_the_range_of_the_precision():
    r"""``eta`` with a component along a zero-precision direction was masked with it: the scalar chain's log Z was
    0.40 off the dense truth and its means 2.9 off the node-level filter's, which handles such a site. The chain
    now refuses it; round-off of ``eta = lam m`` on rank-deficient sites is still accepted."""
    I, R, nu = 12, 2, 1.5
    lam, eta = _sites(I, R, 3)  # site 1 without information, site 2 rank one, eta = lam m
    t = _coords(I, 0, close=False)
    k = _kernel(nu)
    s = k.state_dim
    site_chain(lam, eta, torch.eye(R, dtype=D))  # in range: accepted
    tilted = eta.clone()
    tilted[1] = torch.tensor([0.7, -0.3], dtype=D)  # a linear term on the site with lam = 0
    with pytest.raises(ValueError, match=r"`eta` must lie in the range of `lam` .* site 1 has a linear term"):
        site_chain(lam, tilted, torch.eye(R, dtype=D))
    with pytest.raises(ValueError, match="`eta` must lie in the range of `lam`"):
        mode_sites(lam, tilted, s)
    # the node-level filter takes it, and equals the dense GP (the truth the chain missed)
    post = latent_posterior(k, t, lam, tilted, method="node")
    torch.testing.assert_close(post.log_normalizer, _dense_log_z(nu, 0.3, 1.7, t, lam, tilted), rtol=1e-10, atol=1e-9)


def test_site_log_likelihoods_refuse_batched_empty_or_unpaired_chains_clearly():
    r"""A batched chain failed in a padding ``expand`` ("the number of sizes provided (3) must be greater or equal
    to the number of dimensions in the tensor (4)"), no chains in ``max()`` and unpaired priors in ``zip``; each is
    now a ValueError naming the argument. The valid call equals the chain's own filter (the truth)."""
    from gpgeom.engine.sites import site_log_likelihoods

    I, R = 8, 2
    lam, eta = _sites(I, R, 3)
    k = _kernel(1.5)
    t = _coords(I, 0, close=False)
    ch, prior = mode_sites(lam, eta, k.state_dim), mode_prior(k, t, R)
    want = site_posterior(ch, *prior, smooth=False).log_likelihood
    torch.testing.assert_close(site_log_likelihoods([ch, ch], [prior, prior]), want.expand(2), rtol=1e-12, atol=1e-12)
    batched = mode_sites(lam.expand(2, I, R, R), eta.expand(2, I, R), k.state_dim)
    with pytest.raises(
        ValueError, match=r"`chains\[1\]` must be unbatched \(y of shape \(n,\)\), got y of shape \(2, 16\)"
    ):
        site_log_likelihoods([ch, batched], [prior, prior])
    with pytest.raises(ValueError, match=r"one entry per chain, at least one, got 0 chain\(s\) and 0 prior\(s\)"):
        site_log_likelihoods([], [])
    with pytest.raises(ValueError, match=r"got 1 chain\(s\) and 2 prior\(s\)"):
        site_log_likelihoods([ch], [prior, prior])


def test_gain_products_and_chain_covariance_of_a_batch_of_chains_equal_the_gain_products_by_definition():
    r"""``gain_products`` multiplied along the first dimension: for a batch of two chains (gains ``2 x 8 x D x D``)
    level 1 was ``1 x 8 x D x D``, products of the two chains' gains with each other, and ``chain_covariance``
    then failed on the shapes. Both now work along the node dimension: every batch member's cross-covariances equal
    :math:`G_a \cdots G_{c-1} P^s_c` multiplied out by a loop (the definition)."""
    from gpgeom.engine.sites import chain_covariance, gain_products

    I, R = 9, 2
    k = _kernel(1.5)
    t = _coords(I, 0, close=False)
    (l1, e1), (l2, e2) = _sites(I, R, 3), _sites(I, R, 5)
    chain = mode_sites(torch.stack([l1, l2]), torch.stack([e1, e2]), k.state_dim)
    post = site_posterior(chain, *mode_prior(k, t, R))
    table = gain_products(post.gain)
    assert [tuple(T.shape[:2]) for T in table] == [(2, 8), (2, 7), (2, 5), (2, 1)]
    rows, cols = torch.tensor([0, 2, 7, 4]), torch.tensor([5, 2, 1, 8])
    got = chain_covariance(post.cov, table, rows, cols)
    for b in range(2):
        for m, (a, c) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
            lo, hi = min(a, c), max(a, c)
            P = torch.eye(post.cov.shape[-1], dtype=D)
            for j in range(lo, hi):
                P = P @ post.gain[b, j]
            want = P @ post.cov[b, hi]
            torch.testing.assert_close(got[b, m], want if a <= c else want.mT, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match=r"`gain` must be a batch x \(I-1\) x D x D tensor, got \(8, 4\)"):
        gain_products(post.gain[0, :, 0])

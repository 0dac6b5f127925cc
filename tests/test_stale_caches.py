r"""Caches of trained models kept across a change of the state they were computed for: each prediction is compared
with a model built afresh in the new state (an independent truth that never saw the old one)."""

from __future__ import annotations

import warnings

import pytest
import torch
from gpytorch.kernels import ScaleKernel

from gpgeom.botorch.exact_gp import ExactGPModel
from gpgeom.botorch.low_rank import LowRankSpectralGP
from gpgeom.engine import chunking
from gpgeom.kernels import SpectralKernel

DT = torch.float64


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def exact_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(25, 2, dtype=DT, generator=g)
    Y = torch.stack([torch.sin(5 * X[:, 0]), X.sum(-1)], -1) + 0.1 * torch.randn(25, 2, dtype=DT, generator=g)
    return X, Y, torch.rand(6, 2, dtype=DT, generator=g), torch.rand(3, 2, dtype=DT, generator=g)


def exact_model(X, Y, noise=0.05):
    model = ExactGPModel(X, Y)
    model.covar_module.base_kernel.lengthscale = torch.tensor([[[0.4, 0.6]], [[0.5, 0.3]]], dtype=DT)
    model.likelihood.noise = torch.full((2, 1), noise, dtype=DT)
    return model.eval()


def twin(model, X, Y):
    r"""A fresh model on ``(X, Y)`` with ``model``'s parameters, buffers and Matern smoothness."""
    fresh = ExactGPModel(X, Y)
    fresh.load_state_dict(model.state_dict())
    fresh.covar_module.base_kernel.nu = model.covar_module.base_kernel.nu
    return fresh.eval()


def test_exact_gp_prediction_follows_a_new_matern_smoothness():
    # ``nu`` is no parameter: the kept training factor was of the old smoothness (predictions off by 7.9)
    X, Y, Xq, _ = exact_data()
    model = exact_model(X, Y)
    model.predict(Xq)  # fills the cache with nu = 2.5
    model.covar_module.base_kernel.nu = 0.5
    mean, std = model.predict(Xq, return_std=True)
    ref_mean, ref_std = twin(model, X, Y).predict(Xq, return_std=True)
    assert torch.allclose(mean, ref_mean, atol=1e-10) and torch.allclose(std, ref_std, atol=1e-10)
    post, ref = model.posterior(Xq), twin(model, X, Y).posterior(Xq)
    assert torch.allclose(post.mean, ref.mean, atol=1e-10)
    assert torch.allclose(post.variance, ref.variance, atol=1e-10)


def test_conditioned_exact_gp_follows_hand_set_hyperparameters():
    # a conditioned model predicts through GPyTorch's prediction strategy, which GPyTorch clears only in train mode
    X, Y, Xq, Xn = exact_data(1)
    Yn = torch.randn(3, 2, dtype=DT, generator=torch.Generator().manual_seed(5))
    model = exact_model(X, Y)
    cond = model.condition_on_observations(Xn, Yn)
    cond.posterior(Xq)  # the strategy of the old lengthscales
    ls = torch.tensor([[[0.2, 0.9]], [[0.7, 0.25]]], dtype=DT)
    cond.covar_module.base_kernel.lengthscale = ls
    model.covar_module.base_kernel.lengthscale = ls
    ref = model.rebuild_with(Xn, Yn).posterior(Xq)
    post = cond.posterior(Xq)
    assert torch.allclose(post.mean, ref.mean, atol=1e-8)
    assert torch.allclose(post.variance, ref.variance, atol=1e-8)


def test_conditioning_after_hand_set_hyperparameters_uses_them():
    # the parent's strategy (built by the first conditioning) was reused by the second with its old noise and
    # lengthscales: NotPSDError
    X, Y, Xq, Xn = exact_data(2)
    Yn = torch.randn(3, 2, dtype=DT, generator=torch.Generator().manual_seed(6))
    model = exact_model(X, Y, noise=0.2)
    model.condition_on_observations(Xn, Yn)
    model.likelihood.noise = torch.full((2, 1), 0.01, dtype=DT)
    model.covar_module.base_kernel.lengthscale = torch.tensor([[[0.3, 0.8]], [[0.6, 0.2]]], dtype=DT)
    post = model.condition_on_observations(Xn, Yn).posterior(Xq)
    ref = model.rebuild_with(Xn, Yn).posterior(Xq)
    assert torch.allclose(post.mean, ref.mean, atol=1e-8)
    assert torch.allclose(post.variance, ref.variance, atol=1e-8)


def test_exact_gp_keeps_its_factor_while_the_state_is_unchanged():
    X, Y, Xq, _ = exact_data()
    model = exact_model(X, Y)
    calls = []
    compute = model._compute_factor
    model._compute_factor = lambda: calls.append(1) or compute()
    for _ in range(3):
        model.predict(Xq)
        model.posterior(Xq)
    assert len(calls) == 1


def path_basis(n=40, k=10):
    A = torch.diag(torch.ones(n - 1, dtype=DT), 1)
    lam, vec = torch.linalg.eigh(torch.diag((A + A.T).sum(-1)) - A - A.T)
    return lam[:k], torch.stack([vec[:, :k], vec.flip(0)[:, :k]], dim=1)  # n x D x k


def spectral_gp(nu):
    lam, phi = path_basis()
    idx = torch.arange(0, 40, 4, dtype=DT)
    Y = torch.stack([torch.sin(idx / 6), torch.cos(idx / 6)], dim=-1)
    kernel = SpectralKernel(lam, phi, nu=nu, learn_nu=False)
    return LowRankSpectralGP(ScaleKernel(kernel)).rebuild_with(idx[:, None], Y).eval()


def test_low_rank_gp_follows_a_fixed_nu_set_by_hand():
    # with learn_nu=False, nu is a buffer: the weight posterior was keyed on the parameters only (off by 8.7e-4)
    Xq = torch.arange(40, dtype=DT)[:, None]
    gp = spectral_gp(1.5)
    gp.posterior(Xq)
    gp.set_hyperparameters(nu=0.5)
    post, ref = gp.posterior(Xq), spectral_gp(0.5).posterior(Xq)
    assert torch.allclose(post.mean, ref.mean, atol=1e-12)
    assert torch.allclose(post.variance, ref.variance, atol=1e-12)


def test_low_rank_gp_keeps_its_weight_posterior_while_the_state_is_unchanged():
    gp, calls = spectral_gp(1.5), []
    compute = gp.weight_posterior
    gp.weight_posterior = lambda: calls.append(1) or compute()
    for _ in range(3):
        gp.posterior(torch.arange(5, dtype=DT)[:, None])
    assert len(calls) == 1


def test_fingerprint_of_a_tensor_above_2_24_entries_samples_inside_it():
    # the sampled positions came from a float32 linspace (the default dtype), which rounds 2**24 + 3 up to 2**24 + 4:
    # IndexError for any held tensor of more than 2**24 entries (a spectral basis of 50,000 nodes x 2 x 200)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        n = 2**24 + 4
        t = torch.arange(n, dtype=torch.float32)
        fp = chunking._fingerprint(t)
    finally:
        torch.set_default_dtype(old)
    idx = [i * (n - 1) // 63 for i in range(64)]  # 64 evenly spaced positions, both ends included
    assert torch.equal(fp[2:], t[idx].double()) and idx[-1] == n - 1
    assert float(fp[0]) == float(t.double().sum())


def random_basis_gp(lam, phi):
    n = phi.shape[0]
    idx = torch.arange(0, n, 7, dtype=DT)
    Y = torch.stack([torch.sin(idx / 60), torch.cos(idx / 60)], dim=-1)
    kernel = SpectralKernel(lam, phi, nu=1.5, learn_nu=False)
    return LowRankSpectralGP(ScaleKernel(kernel)).rebuild_with(idx[:, None], Y).eval()


def test_low_rank_gp_reads_no_large_buffer_per_prediction_and_follows_its_in_place_changes(monkeypatch):
    # the key of the cached weight posterior took a float64 sum and norm of the whole basis (n x D x k) on every
    # call, twice per posterior: 8 times slower at n = 20,000, k = 200 (1.8 ms -> 14.5 ms), whose prediction does
    # not depend on n. The basis is now keyed by identity and in-place version; an in-place change still counts.
    g = torch.Generator().manual_seed(0)
    n, k = 2000, 20  # 80,000 basis entries, above FactorCache.COPY_LIMIT
    lam = torch.linspace(0.01, 2.0, k, dtype=DT)
    phi = torch.linalg.qr(torch.randn(2 * n, k, dtype=DT, generator=g))[0].reshape(n, 2, k)
    gp = random_basis_gp(lam, phi)
    Xq = torch.arange(0, n, 97, dtype=DT)[:, None]
    gp.posterior(Xq)
    seen = []
    fingerprint = chunking._fingerprint
    monkeypatch.setattr(chunking, "_fingerprint", lambda t: seen.append(t.numel()) or fingerprint(t))
    gp.posterior(Xq)
    assert seen and max(seen) < n * 2 * k, seen  # the data are fingerprinted, the basis is not
    basis = next(b for name, b in gp.named_buffers() if name.endswith("eigenvectors"))
    with torch.no_grad():
        basis.copy_(basis.flip(0))  # the nodes reversed in place (a new version; the eigenpairs' masses unchanged)
    post, ref = gp.posterior(Xq), random_basis_gp(lam, basis.clone()).posterior(Xq)
    assert (post.mean - random_basis_gp(lam, phi).posterior(Xq).mean).abs().max() > 1e-3  # the change matters
    assert torch.allclose(post.mean, ref.mean, atol=1e-12)
    assert torch.allclose(post.variance, ref.variance, atol=1e-12)

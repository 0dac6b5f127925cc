r"""FunBaT after a state change: a refit (also one that raises half-way), kernels set by hand, a dtype move; the model
and its BoTorch adapter must give what a model built for the new state gives (a fresh fit, a dense GP posterior)."""

from __future__ import annotations

import math
import warnings

import gpytorch
import pytest
import torch

from gpgeom.datasets.tensors import make_synthetic_tensor
from gpgeom.errors import ConvergenceWarning
from gpgeom.models.funbat import FunBaT

D = torch.float64


@pytest.fixture(scope="module")
def tensors():
    a = make_synthetic_tensor(200, 40, n_modes=2, rank=2, n_coords=15, noise_sd=0.05, seed=1)
    b = make_synthetic_tensor(200, 40, n_modes=2, rank=2, n_coords=18, noise_sd=0.05, seed=2)
    return a, b


def _fit(data, model=None, callback=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = FunBaT(2, max_sweeps=8, n_restarts=0) if model is None else model
        return model.fit(data.X_train, data.y_train, callback=callback)


def _dense_latent(ls, var, t, lam, eta):
    r"""Posterior means ``I x R`` and covariances ``I x R x R`` of R iid Matérn-3/2 GP components at ``t`` given the
    Gaussian sites (precisions ``lam``: ``I x R x R``, shifts ``eta``: ``I x R``), densely:
    :math:`\Sigma = (K^{-1} + \Lambda)^{-1}`, :math:`\mu = \Sigma \eta` (component-major ordering)."""
    I, R = eta.shape
    base = gpytorch.kernels.MaternKernel(nu=1.5).to(D)
    base.lengthscale = torch.tensor(ls, dtype=D)
    Kb = torch.block_diag(*[var * base(t[:, None]).to_dense()] * R)
    L = torch.zeros(R * I, R * I, dtype=D)
    for i in range(I):
        ids = torch.arange(R) * I + i
        L[ids[:, None], ids[None, :]] = lam[i]
    e = eta.T.reshape(-1)
    Sig = Kb - Kb @ torch.linalg.solve(torch.eye(R * I, dtype=D) + L @ Kb, L @ Kb)
    mu = Sig @ e
    idx = torch.arange(R)[None, :] * I + torch.arange(I)[:, None]  # I x R
    return mu[idx], Sig[idx[:, :, None], idx[:, None, :]]


def test_a_kernel_set_by_hand_reaches_the_posterior_and_the_adapter(tensors):
    r"""``model.kernels[k]`` changed after the fit: the latent posterior at the training coordinates is the dense GP
    posterior under the new kernel given the mode's messages (it was the old one: off by 0.06 in the predictive mean
    at the training entries, which did not move at all), and the adapter's variance is ``predict``'s."""
    m = _fit(tensors[0])
    k, ls, var = 0, 3.0 * float(m.kernels[0].lengthscale.detach()), 4.0
    m.kernels[k].lengthscale = ls
    m.kernels[k].variance = var
    md = m._modes[k]
    t = m.coord_lo[k] + m.coord_span[k] * md.t  # the training coordinates in original units
    mean, cov = m.latent(k, t)
    want_mean, want_cov = _dense_latent(ls, var, md.t, md.lam, md.eta)
    torch.testing.assert_close(mean, want_mean, rtol=0, atol=1e-8)
    torch.testing.assert_close(cov, want_cov, rtol=0, atol=1e-8)
    X = tensors[0].X_train[:5]
    _, sd = m.predict(X, return_std=True)
    post = m.as_botorch().posterior(X.unsqueeze(0))
    torch.testing.assert_close(post.variance.reshape(-1), sd.reshape(-1).square(), rtol=1e-10, atol=1e-12)


def test_the_adapter_follows_a_refit_and_a_dtype_move(tensors):
    r"""An adapter built before a refit of its (shared) model gives the joint covariance of the refitted model (its
    gain tables were those of the first fit: off by 1.9e-4) and works after ``model.to(float32)`` (it raised)."""
    a, b = tensors
    m = _fit(a)
    bo = m.as_botorch()
    X = b.X_test[:6].unsqueeze(0)
    bo.posterior(X)  # the tables are built
    _fit(b, model=m)
    want = _fit(b).as_botorch().posterior(X)
    got = bo.posterior(X)
    torch.testing.assert_close(got.mean, want.mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(got.mvn.covariance_matrix, want.mvn.covariance_matrix, rtol=0, atol=1e-12)
    m.to(dtype=torch.float32)
    got = bo.posterior(X.float()).mvn.covariance_matrix
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want.mvn.covariance_matrix, rtol=0, atol=1e-4)


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_a_fit_that_raises_leaves_the_model_as_it_was(tensors, error):
    r"""A refit whose callback raises at sweep 3 keeps the previous fit (the model had the new data and a partly swept
    state: its predictions moved by 2.3, with the old ``fit_result_``); a first fit that raises leaves the model
    unfitted (it claimed to be fitted)."""
    a, b = tensors

    def stop(model, entry):
        if entry["sweep"] == 3:
            raise error("stop")

    m = _fit(a)
    X = b.X_test[:10]
    mean, sd = m.predict(X, return_std=True)
    result = m.fit_result_
    with pytest.raises(error):
        _fit(b, model=m, callback=stop)
    got_mean, got_sd = m.predict(X, return_std=True)
    torch.testing.assert_close(got_mean, mean, rtol=0, atol=0)
    torch.testing.assert_close(got_sd, sd, rtol=0, atol=0)
    assert m.fit_result_ is result and len(m.history) == result.sweeps
    fresh = FunBaT(2, max_sweeps=8, n_restarts=0)
    with pytest.raises(error):
        _fit(a, model=fresh, callback=stop)
    assert not fresh.is_fitted
    torch.testing.assert_close(_fit(a, model=fresh).predict(X), mean, rtol=0, atol=0)  # and it fits as new


def test_rebuild_with_leaves_out_missing_entries_as_fit_does():
    r"""A NaN value marks a missing entry in ``fit``; ``rebuild_with`` put it into the sweeps, whose NaN messages made
    every factor NaN and raised a ``LinAlgError`` from a Cholesky. Now it is left out: the result is, bitwise, the
    model rebuilt without that entry (the truth: the union without the missing entry)."""
    d = make_synthetic_tensor(60, 8, rank=2, n_coords=8, noise_sd=0.05, seed=4)
    X, y, Xt = d.X_train, d.y_train, d.X_test
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        base = FunBaT(2, max_sweeps=3, n_restarts=0).fit(X, y)
        y_new = Xt[:3, 0].clone()
        y_new[1] = math.nan
        got = base.rebuild_with(Xt[:3], y_new, max_sweeps=2)
        want = base.rebuild_with(Xt[[0, 2]], y_new[[0, 2]], max_sweeps=2)
    assert got._N == want._N == X.shape[0] + 2
    mean, std = got.predict(Xt, return_std=True)
    ref_mean, ref_std = want.predict(Xt, return_std=True)
    assert torch.isfinite(mean).all() and torch.equal(mean, ref_mean) and torch.equal(std, ref_std)

r"""Tests of gpgeom.botorch.exact_gp.ExactGPModel against a hand-written dense GP posterior."""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Callable

import pytest
import torch
from botorch.models.transforms.input import Normalize
from botorch.sampling.normal import SobolQMCNormalSampler

import gpgeom.botorch.exact_predict as predict_module
from gpgeom.botorch.check import check_botorch_model
from gpgeom.botorch.exact_gp import ExactGPModel
from gpgeom.engine.chunking import memory_budget

DT = torch.float64


def matern52(x1: torch.Tensor, x2: torch.Tensor, lengthscale: torch.Tensor, outputscale: float) -> torch.Tensor:
    r"""Matern 5/2 ARD kernel written out by hand: ``x1`` is ``n x d``, ``x2`` is ``p x d``, result ``n x p``."""
    diff = (x1[:, None, :] - x2[None, :, :]) / lengthscale
    r = math.sqrt(5.0) * diff.pow(2).sum(-1).clamp_min(0).sqrt()
    return outputscale * (1.0 + r + r**2 / 3.0) * torch.exp(-r)


def dense_posterior(X, y, Xt, ls, os, noise, const, y_mean=0.0, y_std=1.0):
    r"""Exact GP posterior mean and latent variance at ``Xt`` (original units) by Cholesky of ``K + noise I``.

    ``y`` (``n``) is in original units; the GP is on ``(y - y_mean) / y_std`` with constant mean ``const``.
    """
    yt = (y - y_mean) / y_std
    K = matern52(X, X, ls, os) + noise * torch.eye(X.shape[0], dtype=X.dtype)
    L = torch.linalg.cholesky(K)
    Ks = matern52(Xt, X, ls, os)
    alpha = torch.cholesky_solve((yt - const).unsqueeze(-1), L).squeeze(-1)
    mean = const + Ks @ alpha
    V = torch.linalg.solve_triangular(L, Ks.T, upper=False)
    var = os - V.pow(2).sum(0)
    return y_mean + y_std * mean, y_std**2 * var


def unit_box(X_train):
    r"""The default input transform written out: the training inputs' bounding box onto the unit cube (pass one
    batch member's inputs: each member is scaled by its own)."""
    flat = X_train.reshape(-1, X_train.shape[-1])
    lo, hi = flat.min(0).values, flat.max(0).values
    return lambda Z: (Z - lo) / (hi - lo)


def hypers(model, out=None, batch=None):
    r"""Fitted hyperparameters (lengthscale d, outputscale, noise, constant) of one output / batch member."""
    ls = model.covar_module.base_kernel.lengthscale.detach()
    os = model.covar_module.outputscale.detach()
    noise = model.likelihood.noise.detach()
    const = model.mean_module.constant.detach()

    def pick(t, per_output=True):
        if batch is not None:
            t = t[batch]
        if out is not None and per_output:
            t = t[out] if t.shape[0] > 1 else t[0]
        return t

    return pick(ls).reshape(-1), float(pick(os).reshape(-1)[0]), float(pick(noise).reshape(-1)[0]), float(pick(const))


def standardise(Y):
    return Y.mean(-2), Y.std(-2)


@pytest.fixture
def data():
    X = torch.rand(25, 2, dtype=DT)
    f1 = torch.sin(5 * X[:, 0]) + X[:, 1] ** 2
    f2 = torch.cos(2 * X.sum(-1))
    Y = torch.stack([f1, f2], -1) * torch.tensor([3.0, 0.5], dtype=DT) + torch.tensor([10.0, -2.0], dtype=DT)
    Y = Y + 0.05 * torch.randn_like(Y)
    return X, Y


def test_predict_equals_dense_gp_single_output(data):
    X, Y = data
    Y = Y[:, :1]
    model = ExactGPModel(X, Y).fit(progress=False, max_iter=100)
    Xt = torch.rand(30, 2, dtype=DT)
    ls, os, noise, const = hypers(model)
    ym, ys = standardise(Y)
    u = unit_box(X)
    mean, var = dense_posterior(u(X), Y[:, 0], u(Xt), ls, os, noise, const, ym[0], ys[0])

    mu, sd = model.predict(Xt, return_std=True, chunk_size=7)
    assert mu.shape == sd.shape == (30, 1)
    torch.testing.assert_close(mu[:, 0], mean, rtol=0, atol=1e-8)
    torch.testing.assert_close(sd[:, 0] ** 2, var, rtol=0, atol=1e-8)
    # chunked = unchunked = posterior, with and without observation noise
    mu_full, sd_full = model.predict(Xt, return_std=True, chunk_size=10_000)
    torch.testing.assert_close(mu, mu_full, rtol=0, atol=1e-10)
    torch.testing.assert_close(sd, sd_full, rtol=0, atol=1e-10)
    post = model.posterior(Xt)
    torch.testing.assert_close(mu, post.mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(sd**2, post.variance, rtol=0, atol=1e-10)
    mu_n, sd_n = model.predict(Xt, return_std=True, observation_noise=True, chunk_size=4)
    post_n = model.posterior(Xt, observation_noise=True)
    torch.testing.assert_close(mu_n, post_n.mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(sd_n**2, post_n.variance, rtol=0, atol=1e-10)
    torch.testing.assert_close(sd_n[:, 0] ** 2, var + ys[0] ** 2 * noise, rtol=0, atol=1e-8)
    # mean only
    torch.testing.assert_close(model.predict(Xt, chunk_size=3), mu, rtol=0, atol=1e-10)


@pytest.mark.parametrize("shared", [False, True])
def test_multi_output_separate_and_shared_equal_dense_truth(data, shared):
    X, Y = data
    model = ExactGPModel(X, Y, shared_hyperparameters=shared).fit(progress=False, max_iter=100)
    ls_all = model.covar_module.base_kernel.lengthscale
    assert ls_all.shape == ((1, 1, 2) if shared else (2, 1, 2))
    assert model.likelihood.noise.shape == ((1, 1) if shared else (2, 1))
    assert model.mean_module.constant.shape == (2,)
    if not shared:  # two different functions get two different lengthscale sets
        assert not torch.allclose(ls_all[0], ls_all[1], rtol=1e-3)
    Xt = torch.rand(17, 2, dtype=DT)
    mu, sd = model.predict(Xt, return_std=True, chunk_size=5)
    assert mu.shape == sd.shape == (17, 2)
    ym, ys = standardise(Y)
    for j in range(2):
        ls, os, noise, const = hypers(model, out=j)
        u = unit_box(X)
        mean, var = dense_posterior(u(X), Y[:, j], u(Xt), ls, os, noise, const, ym[j], ys[j])
        torch.testing.assert_close(mu[:, j], mean, rtol=0, atol=1e-8)
        torch.testing.assert_close(sd[:, j] ** 2, var, rtol=0, atol=1e-8)
    post = model.posterior(Xt)
    torch.testing.assert_close(mu, post.mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(sd**2, post.variance, rtol=0, atol=1e-10)
    # subset_output keeps the selected output exactly
    sub = model.subset_output([1])
    assert sub.num_outputs == 1
    torch.testing.assert_close(sub.predict(Xt), mu[:, 1:], rtol=0, atol=1e-10)


def test_batched_model_equals_dense_truth_per_member():
    X = torch.rand(3, 15, 2, dtype=DT)
    Y = torch.sin(4 * X[..., :1]) * torch.arange(1, 4, dtype=DT).view(3, 1, 1)
    model = ExactGPModel(X, Y).fit(progress=False, max_iter=100)
    assert model.batch_shape == (3,)
    Xt = torch.rand(8, 2, dtype=DT)
    mu, sd = model.predict(Xt, return_std=True)  # broadcast: 3 x 8 x 1
    assert mu.shape == (3, 8, 1)
    for b in range(3):
        ls, os, noise, const = hypers(model, batch=b)
        ym, ys = standardise(Y[b])
        u = unit_box(X[b])
        mean, var = dense_posterior(u(X[b]), Y[b, :, 0], u(Xt), ls, os, noise, const, ym[0], ys[0])
        torch.testing.assert_close(mu[b, :, 0], mean, rtol=0, atol=1e-8)
        torch.testing.assert_close(sd[b, :, 0] ** 2, var, rtol=0, atol=1e-8)


def test_condition_on_observations_equals_dense_gp_on_augmented_data(data):
    X, Y = data
    Y = Y[:, :1]
    model = ExactGPModel(X, Y).fit(progress=False, max_iter=60)
    Xt = torch.rand(9, 2, dtype=DT)
    model.posterior(Xt)  # builds the caches that fantasy updates need
    Xn = torch.rand(3, 2, dtype=DT)
    Yn = 10 + torch.randn(3, 1, dtype=DT)
    cond = model.condition_on_observations(Xn, Yn)
    ls, os, noise, const = hypers(model)
    ym, ys = standardise(Y)  # the outcome transform stays the one learnt from the original data
    u = unit_box(X)  # the input transform too stays the one of the original data
    XX, YY = torch.cat([X, Xn]), torch.cat([Y, Yn])
    mean, var = dense_posterior(u(XX), YY[:, 0], u(Xt), ls, os, noise, const, ym[0], ys[0])
    post = cond.posterior(Xt)
    torch.testing.assert_close(post.mean[:, 0], mean, rtol=0, atol=1e-8)
    torch.testing.assert_close(post.variance[:, 0], var, rtol=0, atol=1e-8)


def test_outcome_transform_round_trip_and_no_transform():
    X = torch.rand(20, 1, dtype=DT)
    Y = 50.0 + 100.0 * torch.sin(6 * X)
    model = ExactGPModel(X, Y, train_Yvar=torch.full_like(Y, 1e-2))
    # the stored targets are standardised; untransforming gives the data back
    Y_back, _ = model.outcome_transform.untransform(model.train_targets.unsqueeze(-1))
    torch.testing.assert_close(Y_back, Y, rtol=0, atol=1e-10)
    model.fit(progress=False, max_iter=100)
    # near-noiseless data (range 200, noise sd 0.1): the predictions interpolate the data in the original units
    torch.testing.assert_close(model.predict(X), Y, rtol=0, atol=0.2)
    # without a transform the GP works on the raw outputs, still equal to its dense truth
    raw = ExactGPModel(X, Y / 100.0, outcome_transform=None).fit(progress=False, max_iter=100)
    assert not hasattr(raw, "outcome_transform")
    Xt = torch.rand(6, 1, dtype=DT)
    ls, os, noise, const = hypers(raw)
    u = unit_box(X)
    mean, var = dense_posterior(u(X), Y[:, 0] / 100.0, u(Xt), ls, os, noise, const)
    mu, sd = raw.predict(Xt, return_std=True)
    torch.testing.assert_close(mu[:, 0], mean, rtol=0, atol=1e-8)
    torch.testing.assert_close(sd[:, 0] ** 2, var, rtol=0, atol=1e-8)


def test_predict_falls_back_to_the_posterior_for_a_nonlinear_outcome_transform():
    from botorch.models.transforms.outcome import ChainedOutcomeTransform, Log, Standardize

    X = torch.rand(15, 2, dtype=DT)
    Y = torch.exp(torch.sin(4 * X[:, :1]))
    octf = ChainedOutcomeTransform(log=Log(), standardize=Standardize(m=1))
    model = ExactGPModel(X, Y, outcome_transform=octf).fit(progress=False, max_iter=40)
    assert not model._fast_predict_ok()
    Xt = torch.rand(2, 9, 2, dtype=DT)
    mu, sd = model.predict(Xt, return_std=True, chunk_size=4)
    post = model.posterior(Xt)  # log-normal moments
    torch.testing.assert_close(mu, post.mean, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(sd**2, post.variance, rtol=1e-10, atol=1e-10)
    assert (mu > 0).all()


def test_input_transform_and_float32():
    X = 100.0 * torch.rand(20, 2, dtype=DT)
    Y = torch.sin(X[:, :1] / 20.0)
    bounds = torch.tensor([[0.0, 0.0], [100.0, 100.0]], dtype=DT)
    model = ExactGPModel(X, Y, input_transform=Normalize(2, bounds=bounds)).fit(progress=False, max_iter=60)
    Xt = 100.0 * torch.rand(5, 2, dtype=DT)
    torch.testing.assert_close(model.predict(Xt), model.posterior(Xt).mean, rtol=0, atol=1e-10)
    # float32: with the float64 model's hyperparameters, predictions agree to float32 accuracy
    model64 = ExactGPModel(X / 100.0, Y).fit(progress=False, max_iter=60)
    model32 = ExactGPModel(X.float() / 100.0, Y.float())
    model32.load_state_dict(model64.state_dict())
    mu32, sd32 = model32.predict(Xt.float() / 100.0, return_std=True)
    mu64, sd64 = model64.predict(Xt / 100.0, return_std=True)
    assert mu32.dtype == torch.float32
    torch.testing.assert_close(mu32.double(), mu64, rtol=0, atol=1e-3)
    torch.testing.assert_close(sd32.double(), sd64, rtol=0, atol=1e-3)
    # ...and a float32 fit runs and fits the data
    model32.fit(progress=False, max_iter=60)
    assert float((model32.predict(X.float() / 100.0) - Y.float()).pow(2).mean().sqrt()) < 0.05


@pytest.mark.parametrize("idcs", ([2, 0], [1]))
def test_subset_output_with_input_transform_conditions_and_fantasizes(idcs):
    # Regression: subset_output kept BoTorch's stored untransformed training inputs of all m outputs, so
    # condition_on_observations / fantasize of the subset model crashed (shape mismatch) and train() restored
    # the wrong inputs.
    n, d = 18, 2
    X = 5.0 + 40.0 * torch.rand(n, d, dtype=DT)
    Y = torch.stack([torch.sin(X[:, 0] / 10.0), torch.cos(X[:, 1] / 15.0), X.sum(-1) / 50.0], -1)
    Y = Y + 0.05 * torch.randn(n, 3, dtype=DT)
    model = ExactGPModel(X, Y, input_transform=Normalize(d))
    with torch.no_grad():  # distinct random hyperparameters per output, so a wrong selection shows
        model.covar_module.base_kernel.lengthscale = 0.2 + 0.5 * torch.rand(3, 1, d, dtype=DT)
        model.covar_module.outputscale = 0.5 + torch.rand(3, dtype=DT)
        model.likelihood.noise = 1e-3 + 0.05 * torch.rand(3, 1, dtype=DT)
        model.mean_module.constant = 0.3 * torch.randn(3, dtype=DT)
    model.eval()
    sub = model.subset_output(idcs)
    lo, hi = X.min(0).values, X.max(0).values

    def unit(Z):
        return (Z - lo) / (hi - lo)

    y_mean, y_std = standardise(Y)

    def truth(out, X_train, y_train, Xt):
        ls, os, noise, const = hypers(model, out)
        return dense_posterior(unit(X_train), y_train, unit(Xt), ls, os, noise, const, y_mean[out], y_std[out])

    def close(a, b):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)

    Xt = 5.0 + 40.0 * torch.rand(6, d, dtype=DT)
    # 1) The subset posterior is the full model's for those outputs.
    full, post = model.posterior(Xt), sub.posterior(Xt)
    close(post.mean, full.mean[..., idcs])
    close(post.variance, full.variance[..., idcs])
    # 2) condition_on_observations: dense GP on the augmented data, and the full model conditioned the same way.
    Xn = 5.0 + 40.0 * torch.rand(4, d, dtype=DT)
    Yn = torch.randn(4, 3, dtype=DT)
    cond = sub.condition_on_observations(Xn, Yn[:, idcs]).posterior(Xt)
    cond_full = model.condition_on_observations(Xn, Yn).posterior(Xt)
    close(cond.mean, cond_full.mean[..., idcs])
    close(cond.variance, cond_full.variance[..., idcs])
    X_aug = torch.cat([X, Xn])
    for j, out in enumerate(idcs):
        mu, var = truth(out, X_aug, torch.cat([Y[:, out], Yn[:, out]]), Xt)
        close(cond.mean[:, j], mu)
        close(cond.variance[:, j], var)
    # 3) fantasize: each fantasy model is the dense GP conditioned on its fantasised values.
    nf = 3
    fant = sub.fantasize(Xn, SobolQMCNormalSampler(torch.Size([nf]), seed=int(torch.randint(1000, ()))))
    fpost = fant.posterior(Xt)
    assert fpost.mean.shape == (nf, 6, len(idcs))
    targets = fant.train_targets[..., n:]  # standardised fantasies, nf x (m') x 4
    targets = targets.reshape(nf, len(idcs), 4)
    for f in range(nf):
        for j, out in enumerate(idcs):
            yf = y_mean[out] + y_std[out] * targets[f, j]
            mu, var = truth(out, X_aug, torch.cat([Y[:, out], yf]), Xt)
            close(fpost.mean[f, :, j], mu)
            close(fpost.variance[f, :, j], var)
    # 4) train mode restores this subset's own untransformed inputs; eval gives the same posterior again.
    sub.train()
    close(sub.train_inputs[0], X.expand(len(idcs), n, d) if len(idcs) > 1 else X)
    sub.eval()
    close(sub.posterior(Xt).mean, full.mean[..., idcs])
    # 5) the whole BoTorch contract.
    report = check_botorch_model(
        sub, bounds=torch.stack([lo, hi]), predict_fn=lambda Z: sub.predict(Z, return_std=True)
    )
    assert report["num_outputs"] == len(idcs)


def test_bad_input_errors():
    X = torch.rand(10, 2, dtype=DT)
    Y = torch.rand(10, 1, dtype=DT)
    with pytest.raises(ValueError, match=r"train_Y.*unsqueeze\(-1\)"):
        ExactGPModel(X, Y[:, 0])
    with pytest.raises(ValueError, match="share the batch shape and the number of points"):
        ExactGPModel(X, Y[:7])
    with pytest.raises(ValueError, match="train_X` must be"):
        ExactGPModel(X[0], Y[0])
    Y_nan = Y.clone()
    Y_nan[3, 0] = float("nan")
    with pytest.raises(ValueError, match="`train_Y` contains 1 NaN"):
        ExactGPModel(X, Y_nan)
    with pytest.raises(TypeError, match="train_X` must be a numpy array or a torch tensor of numbers"):
        ExactGPModel([["a", "b"]] * 10, Y)
    # numpy input is accepted, and train_Y takes train_X's dtype (the dtype rule of gpgeom.base)
    a, b = ExactGPModel(X.numpy(), Y), ExactGPModel(X, Y.float())
    assert a.dtype == b.dtype == DT
    torch.testing.assert_close(a.train_inputs[0], ExactGPModel(X, Y).train_inputs[0])
    assert ExactGPModel(X.float(), Y).dtype == torch.float32
    with pytest.raises(ValueError, match=r"train_Yvar` must be >= 0 \(noise variances\), got min -2"):
        ExactGPModel(X, Y, train_Yvar=-2 * torch.ones_like(Y))
    with pytest.raises(ValueError, match="train_Yvar` must have the shape"):
        ExactGPModel(X, Y, train_Yvar=torch.ones(10, dtype=DT))
    with pytest.raises(ValueError, match="Unknown `outcome_transform`='log'"):
        ExactGPModel(X, Y, outcome_transform="log")
    model = ExactGPModel(X, Y)
    Xt = torch.rand(4, 2, dtype=DT)
    torch.testing.assert_close(model.predict(Xt.numpy()), model.predict(Xt))  # numpy test inputs too
    torch.testing.assert_close(model.predict(Xt.float()), model.predict(Xt.float().double()))
    with pytest.raises(ValueError, match=r"`X` must be `batch_shape x N x 2`"):
        model.predict(torch.rand(4, 3, dtype=DT))
    with pytest.raises(ValueError, match="chunk_size"):
        model.predict(torch.rand(4, 2, dtype=DT), chunk_size=0)
    with pytest.raises(ValueError, match="Unknown `optimizer`='sgd'"):
        model.fit(optimizer="sgd")


# ---------------------------------------------------------------------------------------------------------------
# the model contract (tests/contract.py), with the default modules and with a custom kernel


def contract_query(model, as_numpy):
    Xt = torch.linspace(0, 1, 12, dtype=DT).reshape(6, 2)
    Xt = Xt.numpy() if as_numpy else Xt
    return model.predict(Xt, return_std=True)


def test_exact_gp_keeps_the_model_contract(tmp_path, data):
    from contract import check_model_contract

    X, Y = data
    check_model_contract(
        lambda: ExactGPModel(X, Y), lambda m: m.fit(max_iter=50), contract_query, tmp_path,
        unfitted_save_raises=False,
    )  # fmt: skip


def test_exact_gp_file_with_a_custom_kernel_asks_for_it(tmp_path, data):
    from gpytorch.kernels import RBFKernel, ScaleKernel

    from gpgeom.errors import ModelFileError

    X, Y = data
    model = ExactGPModel(X, Y[:, :1], covar_module=ScaleKernel(RBFKernel())).fit(max_iter=30)
    model.save(tmp_path / "m.pt")
    with pytest.raises(ModelFileError, match=r"custom covar_module.*pass covar_module=\.\.\."):
        ExactGPModel.load(tmp_path / "m.pt")
    back = ExactGPModel.load(tmp_path / "m.pt", covar_module=ScaleKernel(RBFKernel()))
    Xt = torch.rand(5, 2, dtype=DT)
    torch.testing.assert_close(back.predict(Xt), model.predict(Xt), rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", [1.0, 1e-9, 1e-12])
def test_tiny_outputs_reach_the_relative_error_of_unit_outputs(scale):
    # BoTorch's Standardize leaves outputs with std < 1e-8 unscaled; then the noise floor 1e-4 swamped them
    g = torch.Generator().manual_seed(3)
    X = torch.rand(60, 3, dtype=DT, generator=g)
    Xt = torch.rand(400, 3, dtype=DT, generator=g)

    def f(Z):
        return torch.sin(5 * Z[:, :1]) + Z[:, 1:2] ** 2

    unit = ExactGPModel(X, f(X)).fit(max_iter=100, seed=0)
    model = ExactGPModel(X, f(X) * scale).fit(max_iter=100, seed=0)
    err_unit = float((unit.predict(Xt) - f(Xt)).norm() / f(Xt).norm())
    err = float((model.predict(Xt) - scale * f(Xt)).norm() / (scale * f(Xt)).norm())
    assert err_unit < 0.05
    assert err <= 1.1 * err_unit + 1e-12  # within 10% (measured: equal to 4 digits)


def test_mean_only_prediction_reuses_the_factor_and_skips_the_variance(data, monkeypatch):
    X, Y = data
    model = ExactGPModel(X, Y).fit(max_iter=30)
    Xt = torch.rand(50, 2, dtype=DT)
    first = model.predict(Xt)  # factorises the training covariance once and keeps the factor
    solves, factors = [], []
    real_solve, real_chol = torch.linalg.solve_triangular, predict_module.psd_safe_cholesky
    monkeypatch.setattr(torch.linalg, "solve_triangular", lambda *a, **k: solves.append(1) or real_solve(*a, **k))
    monkeypatch.setattr(predict_module, "psd_safe_cholesky", lambda *a, **k: factors.append(1) or real_chol(*a, **k))
    mean = model.predict(Xt, chunk_size=7)
    assert solves == [] and factors == []  # K* alpha only, against the kept factor
    torch.testing.assert_close(mean, first, rtol=0, atol=1e-12)
    torch.testing.assert_close(mean, model.predict(Xt, return_std=True)[0], rtol=0, atol=1e-12)
    assert solves and factors == []  # the variance needs the solves, not a new factor


def test_kept_factor_follows_parameters_data_and_copies(data, monkeypatch):
    X, Y = data
    model = ExactGPModel(X, Y).fit(max_iter=30)
    Xt = torch.rand(20, 2, dtype=DT)
    factors = []
    real = predict_module.psd_safe_cholesky
    monkeypatch.setattr(predict_module, "psd_safe_cholesky", lambda *a, **k: factors.append(1) or real(*a, **k))

    def fresh(m):  # the truth: a new model with the same state, nothing kept
        other = ExactGPModel(*m.train_data)
        other.load_state_dict(m.state_dict())
        return other.eval().predict(Xt, return_std=True)

    before = model.predict(Xt, return_std=True)
    model.posterior(Xt)
    assert len(factors) == 1  # predict and posterior share one factor
    # a hyperparameter set through GPyTorch's setter (an in-place copy into .data: no version bump)
    model.covar_module.base_kernel.lengthscale = 2.0 * model.covar_module.base_kernel.lengthscale
    after = model.predict(Xt, return_std=True)
    assert len(factors) == 2 and not torch.allclose(after[1], before[1])
    n_before = len(factors)
    for got, want in zip(after, fresh(model)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert len(factors) == n_before + 1  # (the fresh model's own)
    # the training targets edited in place (eval mode: the transformed targets BoTorch keeps)
    model.train_targets.add_(0.5)
    shifted = model.predict(Xt)
    assert len(factors) == n_before + 2 and not torch.allclose(shifted, after[0])
    # a deep copy starts without the factor, and conditioning gives a model with its own
    copied = copy.deepcopy(model)
    assert copied.__dict__["_factor_cache"].value is None
    torch.testing.assert_close(copied.predict(Xt), shifted, rtol=0, atol=1e-12)
    # refitting changes the hyperparameters: the factor follows
    model = ExactGPModel(X, Y)
    model.predict(Xt)
    model.fit(max_iter=30)
    for got, want in zip(model.predict(Xt, return_std=True), fresh(model)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def _gpytorch_posterior(model, X, **kwargs):
    r"""The posterior through GPyTorch's prediction strategy (the (n + q) x (n + q) joint kernel)."""
    with model._gpytorch_path():
        return model.posterior(X, **kwargs)


@pytest.mark.parametrize(
    "config",
    [dict(m=1), dict(m=2), dict(m=3, shared=True), dict(m=2, batch=(2,)), dict(m=2, yvar=True)],
    ids=["one-output", "two-outputs", "shared", "batched", "fixed-noise"],
)
@pytest.mark.parametrize("budget", ["default", "tiny"])
def test_joint_posterior_equals_gpytorch_without_the_train_test_kernel(config, budget, monkeypatch):
    g = torch.Generator().manual_seed(3)
    m, batch, n = config["m"], config.get("batch", ()), 30
    X = torch.rand(*batch, n, 3, dtype=DT, generator=g)
    Y = torch.randn(*batch, n, m, dtype=DT, generator=g)
    Yvar = 0.01 + 0.01 * torch.rand(Y.shape, dtype=DT, generator=g) if config.get("yvar") else None
    model = ExactGPModel(X, Y, Yvar, shared_hyperparameters=config.get("shared", False)).eval()
    with torch.no_grad():
        model.covar_module.base_kernel.lengthscale = 0.2 + torch.rand(model.covar_module.base_kernel.lengthscale.shape)
    rows, factors = [], []
    real, real_chol = predict_module.stationary_kernel_matrix, predict_module.psd_safe_cholesky
    monkeypatch.setattr(
        predict_module, "stationary_kernel_matrix", lambda k, x1, x2=None: rows.append(x1.shape[-2]) or real(k, x1, x2)
    )
    monkeypatch.setattr(predict_module, "psd_safe_cholesky", lambda *a, **k: factors.append(1) or real_chol(*a, **k))
    context = (lambda: memory_budget(1)) if budget == "tiny" else contextlib.nullcontext  # tiny: a point per block
    for Xq in (torch.rand(7, 3, dtype=DT, generator=g), torch.rand(4, *batch, 5, 3, dtype=DT, generator=g)):
        for kwargs in (dict(), dict(observation_noise=True), dict(output_indices=[m - 1])):
            with context():
                got = model.posterior(Xq, **kwargs)
            want = _gpytorch_posterior(model, Xq, **kwargs)
            assert type(got.distribution) is type(want.distribution) and got.mean.shape == want.mean.shape
            cov, ref = got.distribution.covariance_matrix, want.distribution.covariance_matrix.detach()
            mean = want.mean.detach()
            torch.testing.assert_close(got.mean, mean, rtol=1e-10, atol=1e-10 * float(mean.abs().max()))
            torch.testing.assert_close(cov, ref, rtol=0, atol=1e-10 * float(ref.abs().max()))
        # differentiable in the inputs (acquisition optimisation), with GPyTorch's gradient
        Xa, Xb = Xq.clone().requires_grad_(), Xq.clone().requires_grad_()
        with context():
            a = model.posterior(Xa)
        b = _gpytorch_posterior(model, Xb)
        ga = torch.autograd.grad(a.mean.sum() + a.distribution.covariance_matrix.sum(), Xa)[0]
        gb = torch.autograd.grad(b.mean.sum() + b.distribution.covariance_matrix.sum(), Xb)[0]
        torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-9 * float(gb.abs().max()))
    # one training factor for all calls; no kernel block with the n + q rows of GPyTorch's joint kernel
    assert len(factors) == 1
    assert rows and max(rows) == (1 if budget == "tiny" else n)


def test_predict_chunks_follow_the_memory_budget(data, monkeypatch):
    X, Y = data
    model = ExactGPModel(X, Y).fit(max_iter=30)
    Xt = torch.rand(3, 40, 2, dtype=DT)
    whole = model.predict(Xt, return_std=True, chunk_size=10**6)
    sizes = []
    real = predict_module.stationary_kernel_matrix
    monkeypatch.setattr(
        predict_module, "stationary_kernel_matrix", lambda k, x1, x2=None: sizes.append(x1.shape[-2]) or real(k, x1, x2)
    )
    # three rows of n = 25 per test batch member (3) and output (2), float64; five for a kernel GPyTorch evaluates
    per_point = model._bytes_per_test_point(Xt.shape[:-2] + (1,))  # with the output dimension, as `_joint` gets it
    assert per_point == 3 * 3 * 2 * 25 * 8
    for budget, chunk in ((per_point * 7, 7), (f"{per_point * 11}B", 11), (1, 1)):
        sizes.clear()
        for got, want in zip(model.predict(Xt, return_std=True, max_memory=budget), whole):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        assert max(sizes) == chunk and sum(sizes) == 40
    sizes.clear()
    with memory_budget(per_point * 13):  # the default budget inside the context
        torch.testing.assert_close(model.predict(Xt), whole[0], rtol=0, atol=1e-12)
    assert max(sizes) == 13
    with pytest.raises(ValueError, match="memory size"):
        model.predict(Xt, max_memory="a lot")


def test_conditioned_models_keep_gpytorch_caches_and_equal_the_rebuilt_model(data):
    X, Y = data
    model = ExactGPModel(X, Y).fit(max_iter=30)
    Xn, Yn = torch.rand(4, 2, dtype=DT), torch.randn(4, 2, dtype=DT) + Y.mean(0)
    cond = model.condition_on_observations(Xn, Yn)
    Xq = torch.rand(6, 2, dtype=DT)
    assert not cond._joint_ok((Xq,), {}) and model._joint_ok((Xq,), {})  # fantasies keep the fast updates
    got, want = cond.posterior(Xq), model.rebuild_with(Xn, Yn).posterior(Xq)  # GPyTorch's update / this factor
    torch.testing.assert_close(got.mean, want.mean, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(
        got.distribution.covariance_matrix, want.distribution.covariance_matrix, rtol=1e-8, atol=1e-8
    )


def test_a_saved_conditioned_model_loads_as_the_model_rebuilt_on_the_union(tmp_path):
    r"""A conditioned model (``n + n'`` points, which its ``train_X`` in the file has too) saved in eval or train mode
    loads as the model rebuilt on the union with the same hyperparameters (``rebuild_with``, itself checked against
    the dense GP above), also after ``train()``/``eval()``, conditioned again, and refits. Before, a file written in
    eval mode held ``n + n'`` targets but ``n`` untransformed inputs: ``train()`` then any prediction or refit raised
    a size mismatch (33 vs 30); one written in train mode loaded the unconditioned model (means off by 2.5)."""
    g = torch.Generator().manual_seed(3)
    X = 5 * torch.rand(30, 2, dtype=DT, generator=g) + 3
    Y = torch.stack([torch.sin(X[:, 0]) + X[:, 1], torch.cos(X[:, 1])], -1)
    Xn, Yn = 5 * torch.rand(3, 2, dtype=DT, generator=g) + 3, torch.rand(3, 2, dtype=DT, generator=g)
    X2, Y2 = 5 * torch.rand(2, 2, dtype=DT, generator=g) + 3, torch.rand(2, 2, dtype=DT, generator=g)
    Xt = 5 * torch.rand(7, 2, dtype=DT, generator=g) + 3
    for fixed in (False, True):
        Yvar = torch.full_like(Y, 1e-3) if fixed else None
        model = ExactGPModel(X, Y, Yvar).fit(max_iter=20, seed=0, progress=False)
        extra = {"noise": torch.full((3, 2), 1e-3, dtype=DT)} if fixed else {}
        cond = model.condition_on_observations(Xn, Yn, **extra)
        # the union in original units (a fixed noise: BoTorch's `noise` is in the standardised units)
        want = model.rebuild_with(Xn, Yn, 1e-3 * model.outcome_transform.stdvs.square().expand(3, 2) if fixed else None)
        for mode in ("eval", "train"):
            cond.train(mode == "train")
            cond.save(tmp_path / "c.pt")
            back = ExactGPModel.load(tmp_path / "c.pt")
            for step in ("loaded", "train/eval"):
                if step == "train/eval":
                    back.train()
                    assert back.train_inputs[0].shape[-2] == back.train_targets.shape[-1] == 33
                    back.eval()
                got, ref = back.posterior(Xt), want.posterior(Xt)
                torch.testing.assert_close(got.mean.detach(), ref.mean.detach(), rtol=0, atol=1e-8)
                torch.testing.assert_close(got.variance.detach(), ref.variance.detach(), rtol=0, atol=1e-8)
            extra2 = {"noise": torch.full((2, 2), 1e-3, dtype=DT)} if fixed else {}
            again = back.condition_on_observations(X2, Y2, **extra2).posterior(Xt).mean.detach()
            ref2 = want.condition_on_observations(X2, Y2, **extra2).posterior(Xt).mean.detach()
            torch.testing.assert_close(again, ref2, rtol=0, atol=1e-8)
            back.fit(max_iter=5, seed=0, progress=False)
            assert bool(torch.isfinite(back.posterior(Xt).mean).all())


@pytest.mark.parametrize("m", [1, 2])
def test_a_batched_model_saved_with_common_default_bounds_loads_as_saved(tmp_path, m):
    r"""A batched ExactGPModel saved before the default input transform took each batch member's own bounds (one
    output, and since then also several) holds common bounds (``1 x d`` offsets) in its file: it loads with them and
    predicts as it was saved, also conditioned, after ``train()``/``eval()`` and saved again. Before, loading raised a
    size mismatch (``[1, 2]`` in the file, ``[3, 1, 2]`` in the rebuilt model)."""
    g = torch.Generator().manual_seed(4)
    X = torch.rand(3, 8, 2, dtype=DT, generator=g) * torch.tensor([[[1.0, 3.0]], [[2.0, 1.0]], [[0.5, 0.5]]], dtype=DT)
    Y = (torch.sin(4 * X[..., :1]) + X[..., 1:]) * torch.arange(1, m + 1, dtype=DT)
    Xt = torch.rand(3, 4, 2, dtype=DT, generator=g)
    model = ExactGPModel(X, Y)
    flat = X.reshape(-1, 2)
    model.input_transform = Normalize(d=2, bounds=torch.stack([flat.amin(0), flat.amax(0)]))  # the former default
    model.fit(max_iter=20, seed=0, progress=False)
    cond = model.condition_on_observations(Xt[:, :2], torch.rand(3, 2, m, dtype=DT, generator=g))
    for saved in (model, cond):
        with torch.no_grad():
            want = saved.posterior(Xt)
        saved.save(tmp_path / "m.pt")
        back = ExactGPModel.load(tmp_path / "m.pt")
        back.train()
        back.eval()
        back.save(tmp_path / "again.pt")
        for got in (back, ExactGPModel.load(tmp_path / "again.pt")):
            assert got.input_transform.offset.shape == (1, 2)
            with torch.no_grad():
                post = got.posterior(Xt)
            torch.testing.assert_close(post.mean, want.mean, rtol=0, atol=1e-10)
            torch.testing.assert_close(post.variance, want.variance, rtol=0, atol=1e-10)


def test_gpytorch_path_of_condition_on_observations_is_per_thread(monkeypatch):
    r"""While ``condition_on_observations`` builds GPyTorch's caches (thread A, held there by an event), a prediction
    of the same model in thread B keeps the cached training factor: GPyTorch's ``ExactGP.__call__`` runs in A only,
    and B's posterior is bitwise the one of the cached factor, equal to the dense GP. Before, the path was a flag on
    the model, and B went through GPyTorch's joint kernel."""
    import threading

    from gpytorch.models import ExactGP

    g = torch.Generator().manual_seed(5)
    X, Xt = torch.rand(20, 2, dtype=DT, generator=g), torch.rand(6, 2, dtype=DT, generator=g)
    y = torch.sin(5 * X[:, 0]) + X[:, 1]
    model = ExactGPModel(X, y[:, None], input_transform=None, outcome_transform=None).eval()
    ref = model.posterior(Xt)  # the cached factor's path (this thread)
    ls, os, noise, const = hypers(model)
    mean, var = dense_posterior(X, y, Xt, ls, os, noise, const)
    torch.testing.assert_close(ref.mean[:, 0].detach(), mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(ref.variance[:, 0].detach(), var, rtol=0, atol=1e-10)
    assert model.prediction_strategy is None  # so that conditioning goes through GPyTorch's path

    inside, release = threading.Event(), threading.Event()
    calls, out, errors = [], {}, []
    real = ExactGP.__call__

    def spy(self, *args, **kwargs):  # GPyTorch's prediction path of the model, by thread
        if self is model and not self.training:
            calls.append(threading.current_thread().name)
            if threading.current_thread().name == "A":
                inside.set()
                release.wait(20)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ExactGP, "__call__", spy)

    def thread_a():
        try:
            out["A"] = model.condition_on_observations(Xt[:2], Xt[:2, :1])
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)
        finally:
            inside.set()

    def thread_b():
        try:
            assert inside.wait(20)
            post = model.posterior(Xt)
            out["B"] = post.mean.detach(), post.variance.detach()
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)
        finally:
            release.set()

    threads = [threading.Thread(target=thread_a, name="A"), threading.Thread(target=thread_b, name="B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert calls == ["A"]
    assert torch.equal(out["B"][0], ref.mean.detach()) and torch.equal(out["B"][1], ref.variance.detach())
    want = model.rebuild_with(Xt[:2], Xt[:2, :1]).posterior(Xt)
    torch.testing.assert_close(out["A"].posterior(Xt).mean, want.mean, rtol=0, atol=1e-9)


def test_nan_in_conditioning_data_or_posterior_inputs_is_refused_not_propagated():
    r"""A failed experiment's NaN outcome used to give a NaN posterior mean everywhere after conditioning (BoTorch's
    path has no check), and a NaN input a NaN posterior; ``predict`` and the other adapters already refused them."""
    gen = torch.Generator().manual_seed(0)
    X = torch.rand(8, 2, generator=gen, dtype=DT)
    model = ExactGPModel(X, X.sum(-1, keepdim=True)).eval()
    Xn, Yn = torch.rand(2, 2, generator=gen, dtype=DT), torch.tensor([[float("nan")], [1.0]], dtype=DT)
    with pytest.raises(ValueError, match=r"`Y` contains 1 NaN or infinite value\(s\)"):
        model.condition_on_observations(Xn, Yn)
    with pytest.raises(ValueError, match=r"`X` contains 4 NaN or infinite value\(s\)"):
        model.condition_on_observations(torch.full((2, 2), float("inf"), dtype=DT), Yn.nan_to_num(0.0))
    with pytest.raises(ValueError, match=r"`noise` must be >= 0"):
        model.condition_on_observations(Xn, Yn.nan_to_num(0.0), noise=torch.full((2, 1), -1.0, dtype=DT))
    with pytest.raises(ValueError, match=r"`X` contains 1 NaN"):
        model.posterior(torch.tensor([[0.5, float("nan")]], dtype=DT))
    conditioned = model.condition_on_observations(Xn, Yn.nan_to_num(0.0))  # finite data still condition
    assert bool(torch.isfinite(conditioned.posterior(X[:3]).mean).all())


def test_float32_conditioning_equals_the_float64_refit_at_the_default_lengthscale_floor():
    # the default kernel at its smallest lengthscale (0.025 on the unit cube) and the noise floor (1e-4): GPyTorch's
    # float32 distances (the expansion |a|^2 + |b|^2 - 2 a.b) put kernel errors of the noise's size into the
    # conditioned model's covariance, which was factorised with jitter and gave variances ~100% off (some clamped)
    g = torch.Generator().manual_seed(0)
    X = torch.rand(400, 1, dtype=torch.float64, generator=g)
    f = lambda X: torch.sin(X / 0.05) + X  # noqa: E731
    Y = f(X) + 1e-2 * torch.randn(400, 1, dtype=torch.float64, generator=g)
    Xn = torch.rand(10, 1, dtype=torch.float64, generator=g)
    Yn = f(Xn) + 1e-2 * torch.randn(10, 1, dtype=torch.float64, generator=g)
    Xt = torch.cat([torch.rand(100, 1, dtype=torch.float64, generator=g), X[:10], Xn])
    m64 = ExactGPModel(X, Y)
    with torch.no_grad():
        m64.covar_module.base_kernel.lengthscale = 0.025
        m64.covar_module.outputscale = 1.0
        m64.likelihood.noise = 1e-4
    m32 = copy.deepcopy(m64.eval()).to(torch.float32)
    ref = m64.rebuild_with(Xn, Yn).posterior(Xt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # float32 advice, and GPyTorch's jitter and clamping (which the values show)
        got = m32.condition_on_observations(Xn.float(), Yn.float()).posterior(Xt.float())
    scale = m64.outcome_transform.stdvs.square().squeeze()  # the prior variance in the original units
    assert float((got.mean.detach().double() - ref.mean).abs().max()) < 3e-3 * float(scale.sqrt())
    assert float((got.variance.detach().double() - ref.variance).abs().max()) < 3e-5 * float(scale)
    assert float((got.variance.detach().double() / ref.variance - 1).abs().max()) < 0.5


@pytest.mark.parametrize("shared", [False, True])
def test_no_test_point_gives_empty_predictions(data, shared):
    r"""Zero test points (an empty selection) give empty moments of the right shape, as ``predict`` on the full set
    sliced to nothing; ``posterior_moments`` used to ``torch.cat`` an empty list (a raw ValueError)."""
    X, Y = data
    model = ExactGPModel(X, Y, shared_hyperparameters=shared).fit(progress=False, max_iter=20)
    batched = ExactGPModel(torch.stack([X, X]), torch.stack([Y, 2 * Y])).fit(progress=False, max_iter=20)
    for m, Xt in ((model, X[:0]), (model, X[None, :0]), (batched, X[:0])):
        full_mean = m.predict(torch.cat([Xt, X[:3].expand(*Xt.shape[:-2], 3, -1)], -2))
        mean, sd = m.predict(Xt, return_std=True, observation_noise=True)
        assert mean.shape == sd.shape == full_mean[..., :0, :].shape
        assert m.predict(Xt).shape == full_mean[..., :0, :].shape
        post = m.posterior(Xt)
        assert post.mean.shape == post.variance.shape == full_mean[..., :0, :].shape


@pytest.mark.filterwarnings("ignore:Output\\(s\\) .* constant to rounding")
def test_a_constant_output_predicts_the_constant_with_a_scale_equivariant_std(tmp_path):
    r"""All training outputs equal to ``c``: BoTorch's fallback scale 1 made the predicted std absolute, set by the
    priors and the noise floor in the output's units (the same for c = 3.7 and 3.7 * 2^20, as BoTorch's
    SingleTaskGP). The scale is now floored at the rounding scale eps * |c|: the mean is
    ``c`` (to rounding), the std finite, positive, below the rounding of ``c``, and ``s`` times larger for
    ``s c`` (the truth: the fit on ``c``, scaled by a power of two ``s``); it survives save/load. An exactly zero
    output keeps the unit scale (no scale to take)."""
    g = torch.Generator().manual_seed(5)
    X, Xt = torch.rand(20, 2, dtype=DT, generator=g), torch.rand(6, 2, dtype=DT, generator=g)
    c, s = 3.7, 2.0**20
    preds = []
    for value in (c, s * c):
        with pytest.warns(UserWarning, match=r"Output\(s\) \[0\] of the training data are constant to rounding"):
            model = ExactGPModel(X, torch.full((20, 1), value, dtype=DT))
        preds.append(model.fit(seed=0, progress=False).predict(Xt, return_std=True))
        mean, std = preds[-1]
        eps = torch.finfo(DT).eps
        assert float((mean - value).abs().max()) <= 4 * eps * value
        assert bool(torch.isfinite(std).all()) and float(std.min()) > 0 and float(std.max()) < eps * value
    torch.testing.assert_close(preds[1][0], s * preds[0][0], rtol=1e-12, atol=0)
    torch.testing.assert_close(preds[1][1], s * preds[0][1], rtol=1e-9, atol=0)
    model.save(tmp_path / "m.pt")
    back = ExactGPModel.load(tmp_path / "m.pt")
    torch.testing.assert_close(back.predict(Xt, return_std=True), preds[1], rtol=1e-12, atol=0)
    with pytest.warns(UserWarning, match=r"Output\(s\) \[0\] of the training data are all zero"):
        zero = ExactGPModel(X, torch.zeros(20, 1, dtype=DT)).fit(seed=0, progress=False)
    mean, std = zero.predict(Xt, return_std=True)
    assert float(zero.outcome_transform.stdvs) == 1.0 and not mean.any()
    assert bool(torch.isfinite(std).all()) and float(std.min()) > 0


def test_a_constant_output_next_to_a_varying_one_keeps_the_varying_fit():
    r"""The floor applies per output: a constant output beside a varying one is floored, the varying output is
    standardised by its spread as before and predicted as when fitted alone."""
    g = torch.Generator().manual_seed(6)
    X, Xt = torch.rand(25, 2, dtype=DT, generator=g), torch.rand(6, 2, dtype=DT, generator=g)
    y = torch.sin(5 * X[:, :1])
    with pytest.warns(UserWarning, match=r"Output\(s\) \[1\]"):
        both = ExactGPModel(X, torch.cat([y, torch.full_like(y, -2.5)], 1)).fit(seed=0, progress=False)
    alone = ExactGPModel(X, y).fit(seed=0, progress=False)
    torch.testing.assert_close(both.outcome_transform.stdvs[..., 0], alone.outcome_transform.stdvs[..., 0])
    (m2, s2), (m1, s1) = both.predict(Xt, return_std=True), alone.predict(Xt, return_std=True)
    torch.testing.assert_close(m2[:, :1], m1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s2[:, :1], s1, rtol=1e-4, atol=1e-6)
    assert float((m2[:, 1] + 2.5).abs().max()) <= 4 * torch.finfo(DT).eps * 2.5


def test_a_constant_batch_member_is_floored_alone():
    r"""In a batch of series, the floor and its warning concern the constant member only (named by its index); the
    other member keeps the scale of its spread (the truth: its standard deviation)."""
    g = torch.Generator().manual_seed(7)
    X = torch.rand(2, 20, 2, dtype=DT, generator=g)
    y = torch.sin(5 * X[0, :, :1])
    with pytest.warns(UserWarning, match=r"Output\(s\) \[0\] \(batch members \[\(1,\)\]\)"):
        model = ExactGPModel(X, torch.stack([y, torch.full_like(y, 2.0)]))
    stdvs = model.outcome_transform.stdvs.reshape(2)
    torch.testing.assert_close(stdvs[0], y.std(), rtol=1e-12, atol=0)
    assert float(stdvs[1]) == pytest.approx(torch.finfo(DT).eps * 2.0, rel=1e-12)


def test_botorch_standardisation_warning_only_where_the_transform_did_not_explain_it():
    r"""A constant (or all-zero) output under the default outcome transform drew two warnings: the transform's, and
    BoTorch's "Data (outcome observations) is not standardized (std = 0)", misleading since the transform chose
    that scale. Now only the transform's; BoTorch's stays where it is the news (no outcome transform)."""
    X = torch.rand(10, 2, dtype=DT, generator=torch.Generator().manual_seed(8))
    for Y in (torch.full((10, 1), 3.7, dtype=DT), torch.zeros(10, 1, dtype=DT)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ExactGPModel(X, Y)
        kinds = [type(w.message).__name__ for w in caught if "jit" not in str(w.message)]
        assert kinds == ["UserWarning"], [str(w.message) for w in caught]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ExactGPModel(X, 100 + X[:, :1], outcome_transform=None)
    assert any("is not standardized" in str(w.message) for w in caught)


def test_botorch_input_warnings_name_botorch_as_for_its_own_models():
    r"""BoTorch's input-scaling warnings of an ``ExactGPModel`` name BoTorch's file and line, as those of BoTorch's
    ``SingleTaskGP`` on the same data (the truth), so a user's filter by module (``module="botorch"``) silences them
    as it does BoTorch's. Before, the model called BoTorch's checks itself: both warnings named
    ``gpgeom/botorch/exact_gp.py`` and stayed shown under that filter (2 warnings, 0 for ``SingleTaskGP``)."""
    from botorch.exceptions.warnings import InputDataWarning
    from botorch.models import SingleTaskGP

    X = 10 * torch.rand(20, 2, dtype=DT, generator=torch.Generator().manual_seed(2))
    Y = 5 + torch.sin(X[:, :1])

    def record(build: Callable[[], object], **flt: str) -> list[tuple[str, str, int]]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if flt:
                warnings.filterwarnings("ignore", **flt)
            build()
        return sorted((str(w.message), w.filename, w.lineno) for w in caught if w.category is InputDataWarning)

    ours = lambda: ExactGPModel(X, Y, input_transform=None, outcome_transform=None)  # noqa: E731
    theirs = lambda: SingleTaskGP(X, Y, input_transform=None, outcome_transform=None)  # noqa: E731
    assert len(record(theirs)) == 2  # inputs outside the unit cube, outputs not standardised
    assert record(ours) == record(theirs)
    assert record(ours, module="botorch") == record(theirs, module="botorch") == []


def test_training_tensors_that_require_grad_are_taken_as_data():
    r"""A multi-output model built from a ``train_X`` that requires grad (a graph back to the caller's tensor) used
    to keep non-leaf training inputs, and ``condition_on_observations`` raised "Only Tensors created explicitly by
    the user (graph leaves) support the deepcopy protocol"; now the data are detached: the model conditions, and
    its posteriors equal those of the model built from detached tensors, bit for bit; the caller's tensor is left
    as it was."""
    g = torch.Generator().manual_seed(3)
    X = torch.rand(15, 2, generator=g, dtype=torch.float64)
    Y = torch.cat([X.sum(-1, keepdim=True).sin(), X[:, :1].cos()], -1)
    Xg = X.clone().requires_grad_(True)
    Xn, Yn = torch.rand(2, 2, generator=g, dtype=torch.float64), torch.rand(2, 2, generator=g, dtype=torch.float64)
    Xq = torch.rand(4, 2, generator=g, dtype=torch.float64)
    moments = []
    for train_X in (Xg, X):
        model = ExactGPModel(train_X, Y).fit(progress=False, seed=0)
        assert not model.train_inputs[0].requires_grad
        post = model.condition_on_observations(Xn, Yn).posterior(Xq)
        moments.append((post.mean.detach(), post.variance.detach()))
    for a, b in zip(*moments, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert Xg.requires_grad and Xg.is_leaf and Xg.grad is None

r"""The closed-form-gradient exact MLL (gpgeom.engine.exact_mll) against independent truths: finite differences,
a dense autograd computation written from the definitions, and GPyTorch's ExactMarginalLogLikelihood."""

from __future__ import annotations

import math

import gpytorch
import pytest
import torch
from botorch.optim.closures import get_loss_closure
from gpytorch.kernels import MaternKernel, PeriodicKernel, RBFKernel, ScaleKernel

import gpgeom.botorch.exact_gp as exact_module
import gpgeom.engine.exact_mll as exact_mll
from gpgeom.botorch.exact_gp import ExactGPModel
from gpgeom.engine.exact_mll import exact_mll_loss, stationary_nll

KINDS = ["matern12", "matern32", "matern52", "rbf"]
NU = {"matern12": 0.5, "matern32": 1.5, "matern52": 2.5}


def _dense_nll(kind, ls, os_, noise, c, x, y):
    r"""-log N(y_g; c_g, K) from the definitions: explicit pairwise differences, torch's MultivariateNormal."""
    diff = (x.unsqueeze(-2) - x.unsqueeze(-3)) / ls.unsqueeze(-2)  # kb x n x n x d
    r2 = diff.pow(2).sum(-1)
    eye = torch.eye(x.shape[-2], dtype=torch.bool)
    r = torch.where(eye, torch.zeros_like(r2), r2.clamp_min(1e-300).sqrt())
    if kind == "rbf":
        k0 = torch.exp(-0.5 * r2)
    else:
        s = math.sqrt(2 * NU[kind]) * r
        poly = {"matern12": 1.0, "matern32": 1.0 + s, "matern52": 1.0 + s + s * s / 3.0}[kind]
        k0 = poly * torch.exp(-s)
    K = os_[..., None, None] * k0 + torch.diag_embed(noise)
    mean = c.unsqueeze(-1).expand(y.mT.shape)  # kb x G x n
    mvn = torch.distributions.MultivariateNormal(mean, covariance_matrix=K.unsqueeze(-3))
    return -mvn.log_prob(y.mT)


def _random_case(kind, kb=(3,), n=12, d=2, G=2, ard=True, dtype=torch.float64):
    ls = (0.3 + torch.rand(*kb, 1, d if ard else 1, dtype=dtype)).requires_grad_()
    os_ = (0.5 + torch.rand(*kb, dtype=dtype)).requires_grad_()
    noise = (0.05 + 0.1 * torch.rand(*kb, n, dtype=dtype)).requires_grad_()
    c = torch.randn(*kb, G, dtype=dtype).requires_grad_()
    x = torch.rand(*kb, n, d, dtype=dtype)
    y = torch.randn(*kb, n, G, dtype=dtype)
    return ls, os_, noise, c, x, y


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("ard", [True, False])
def test_value_and_gradient_equal_dense_autograd(kind, ard):
    ls, os_, noise, c, x, y = _random_case(kind, ard=ard)
    params = [ls, os_, noise, c]
    fast = stationary_nll(kind, ls, os_, noise, c, x, y)
    ref = _dense_nll(kind, ls, os_, noise, c, x, y)
    torch.testing.assert_close(fast, ref, rtol=1e-11, atol=1e-11)
    w = torch.rand_like(fast)  # a random cotangent: every member and column weighted differently
    g_fast = torch.autograd.grad((w * fast).sum(), params)
    g_ref = torch.autograd.grad((w * ref).sum(), params)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_equals_finite_differences(kind):
    ls, os_, noise, c, x, y = _random_case(kind, kb=(2,), n=7, d=2, G=3)
    assert torch.autograd.gradcheck(
        lambda a, b, e, f: stationary_nll(kind, a, b, e, f, x, y), (ls, os_, noise, c), eps=1e-6, atol=1e-6
    )


def _model(kind, m=4, shared=False, batch=(), n=25, d=3, yvar=False):
    X = torch.rand(*batch, n, d, dtype=torch.float64)
    Y = torch.randn(*batch, n, m, dtype=torch.float64)
    Yvar = 0.01 + 0.1 * torch.rand_like(Y) if yvar else None
    model = ExactGPModel(X, Y, train_Yvar=Yvar, shared_hyperparameters=shared)
    base = model.covar_module.base_kernel
    if kind == "rbf":
        model.covar_module.base_kernel = RBFKernel(
            ard_num_dims=d, batch_shape=base.batch_shape, lengthscale_prior=base.lengthscale_prior
        ).to(X)
    else:
        base.nu = NU[kind]
    with torch.no_grad():  # away from the initial values, different for every member
        lsk = model.covar_module.base_kernel
        lsk.lengthscale = 0.2 + torch.rand_like(lsk.lengthscale)
        model.covar_module.outputscale = 0.5 + torch.rand_like(model.covar_module.outputscale)
        if not yvar:
            model.likelihood.noise = 0.01 + 0.1 * torch.rand_like(model.likelihood.noise)
        model.mean_module.constant.copy_(torch.randn_like(model.mean_module.constant))
    model.train()
    return model


def _compare_with_gpytorch(model, rtol):
    fast = exact_mll_loss(model)
    assert fast is not None
    params = [p for p in model.parameters() if p.requires_grad]
    ref = get_loss_closure(gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model))()
    val = fast()
    assert val.shape == ref.shape
    torch.testing.assert_close(val, ref, rtol=rtol, atol=rtol)
    for a, b in zip(torch.autograd.grad(val.sum(), params), torch.autograd.grad(ref.sum(), params)):
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("kind", ["matern32", "matern52", "rbf"])
@pytest.mark.parametrize(
    "config",
    [dict(), dict(shared=True), dict(m=1), dict(batch=(2,), m=2), dict(batch=(2,), m=3, shared=True), dict(yvar=True)],
    ids=["per-output", "shared", "one-output", "batched", "batched-shared", "fixed-noise"],
)
def test_equals_gpytorch_mll_with_priors(kind, config):
    _compare_with_gpytorch(_model(kind, **config), rtol=1e-9)


def test_matern12_equals_gpytorch_up_to_its_diagonal_rounding():
    # GPyTorch's distance keeps a rounding-sized diagonal when the inputs require grad (sqrt(1e-16) = 1e-8 for the
    # Matern 1/2 kernel), so the agreement is 1e-8-ish there; the dense test above is the exact check.
    _compare_with_gpytorch(_model("matern12"), rtol=1e-6)


def test_shared_hyperparameters_factorise_once(monkeypatch):
    sizes = []
    real = exact_mll.psd_safe_cholesky

    def counting(K, *args, **kwargs):
        sizes.append(K.shape[0])
        return real(K, *args, **kwargs)

    monkeypatch.setattr(exact_mll, "psd_safe_cholesky", counting)
    exact_mll_loss(_model("matern52", m=6, shared=True))()
    assert sizes == [1]  # one covariance for the six outputs
    sizes.clear()
    exact_mll_loss(_model("matern52", m=6))()
    assert sum(sizes) == 6


def test_subset_of_members():
    model = _model("matern52", m=5)
    loss = exact_mll_loss(model)
    assert loss.accepts_batch_indices
    params = [p for p in model.parameters() if p.requires_grad]
    full = loss()
    g_full = torch.autograd.grad(full[[1, 4]].sum(), params)
    sub = loss(batch_indices=[1, 4])
    torch.testing.assert_close(sub, full[[1, 4]], rtol=1e-13, atol=1e-13)
    for a, b in zip(torch.autograd.grad(sub.sum(), params), g_full):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert not exact_mll_loss(_model("matern52", m=5, shared=True)).accepts_batch_indices


def test_unsupported_models_fall_back():
    X = torch.rand(10, 2, dtype=torch.float64)
    Y = torch.randn(10, 1, dtype=torch.float64)
    assert exact_mll_loss(ExactGPModel(X, Y, covar_module=ScaleKernel(PeriodicKernel()).double())) is None
    assert exact_mll_loss(ExactGPModel(X, Y, covar_module=MaternKernel(nu=2.5).double())) is None  # no ScaleKernel
    assert exact_mll_loss(ExactGPModel(X, Y, max_cholesky_size=5)) is None  # GPyTorch would use CG there


def test_unknown_kind_and_bad_shapes():
    ls, os_, noise, c, x, y = _random_case("rbf")
    with pytest.raises(ValueError, match="kind"):
        stationary_nll("matern72", ls, os_, noise, c, x, y)
    with pytest.raises(ValueError, match="same n"):
        stationary_nll("rbf", ls, os_, noise, c, x, y[..., :-1, :])


def test_fit_uses_the_closed_form_loss_and_matches_gpytorch_fit(monkeypatch):
    torch.manual_seed(0)
    X = torch.rand(40, 2, dtype=torch.float64)
    Y = torch.stack([torch.sin(5 * X[:, 0]), X.sum(-1) ** 2], -1) + 0.01 * torch.randn(40, 2, dtype=torch.float64)
    calls = []
    real = exact_module.exact_mll_loss
    monkeypatch.setattr(exact_module, "exact_mll_loss", lambda m: calls.append(1) or real(m))
    fast = ExactGPModel(X, Y).fit(seed=0, progress=False)
    assert calls
    slow = ExactGPModel(X, Y)
    slow.fast_mll = False
    slow.fit(seed=0, progress=False)
    assert len(calls) == 1
    # the same objective: both optima have (nearly) the same loss, and predictions agree
    assert fast.fit_result_.loss <= slow.fit_result_.loss + 1e-4
    Xt = torch.rand(30, 2, dtype=torch.float64)
    torch.testing.assert_close(fast.predict(Xt), slow.predict(Xt), rtol=0, atol=2e-3)


def test_restarts_keep_the_best_attempt_of_every_output():
    torch.manual_seed(1)
    X = torch.rand(60, 3, dtype=torch.float64)
    Y = torch.sin(4 * X @ torch.randn(3, 5, dtype=torch.float64)) + 0.05 * torch.randn(60, 5, dtype=torch.float64)
    model = ExactGPModel(X, Y).fit(restarts=3, seed=0, progress=False)
    res = model.fit_result_
    assert res.member_attempts is not None and len(res.member_attempts) == 5
    assert res.loss <= min(res.final_losses) + 1e-12
    model.train()
    recomputed = exact_mll_loss(model)().detach()
    # the returned parameters are the members' own best ones: their losses add up to the reported loss
    assert abs(float(recomputed.sum()) - res.loss) < 1e-10
    # and each member is at least as good as in any single attempt's winner
    assert float(recomputed.sum()) <= min(res.final_losses) + 1e-12


@pytest.mark.parametrize("elements", [1, 10**9])  # one matrix per chunk / all at once (the GPU's way)
def test_chunking_does_not_change_the_result(monkeypatch, elements):
    ls, os_, noise, c, x, y = _random_case("matern52", kb=(5,))
    params = [ls, os_, noise, c]
    ref = stationary_nll("matern52", ls, os_, noise, c, x, y)
    g_ref = torch.autograd.grad(ref.sum(), params)
    monkeypatch.setattr(exact_mll, "_CHUNK_ELEMENTS", elements)
    out = stationary_nll("matern52", ls, os_, noise, c, x, y)
    torch.testing.assert_close(out, ref, rtol=1e-13, atol=1e-13)
    for a, b in zip(torch.autograd.grad(out.sum(), params), g_ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

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


@pytest.mark.parametrize("kind", KINDS)
def test_no_covariance_sized_tensor_is_kept_for_the_backward_pass(kind):
    # the gradient parts are computed in the forward pass: what the backward pass keeps is O(n G) per member, so a
    # batch of members costs the working memory of one chunk (the kernel matrices and the factor were kept before)
    ls, os_, noise, c, x, y = _random_case(kind, kb=(4,), n=30, G=2)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        out = stationary_nll(kind, ls, os_, noise, c, x, y)
    assert saved and all(s[-2:] != (30, 30) for s in saved), saved
    ref = _dense_nll(kind, ls, os_, noise, c, x, y)  # and the gradient is still the dense one
    w = torch.rand_like(out)
    for a, b in zip(torch.autograd.grad((w * out).sum(), [ls, os_, noise, c]),
                    torch.autograd.grad((w * ref).sum(), [ls, os_, noise, c])):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_no_gradient_work_without_gradients(monkeypatch):
    calls = []
    real = torch.cholesky_inverse
    monkeypatch.setattr(torch, "cholesky_inverse", lambda *a, **k: calls.append(1) or real(*a, **k))
    ls, os_, noise, c, x, y = _random_case("matern52")
    with torch.no_grad():
        value = stationary_nll("matern52", ls, os_, noise, c, x, y)
    assert calls == []  # the inverse is for the gradient only
    torch.testing.assert_close(value, stationary_nll("matern52", ls, os_, noise, c, x, y).detach(), rtol=0, atol=0)
    assert len(calls) == 1  # one chunk of three small members


@pytest.mark.parametrize("budget", [1, 3 * 12 * 12 * 8 * 4, None])  # one member per chunk, a few, all
def test_memory_budget_does_not_change_the_result(budget):
    ls, os_, noise, c, x, y = _random_case("matern32", kb=(5,))
    params = [ls, os_, noise, c]
    ref = stationary_nll("matern32", ls, os_, noise, c, x, y)
    g_ref = torch.autograd.grad(ref.sum(), params)
    with monkeypatch_cpu_chunk(10**9):  # the GPU's way: chunks from the budget alone
        out = stationary_nll("matern32", ls, os_, noise, c, x, y, max_memory=budget)
    torch.testing.assert_close(out, ref, rtol=1e-13, atol=1e-13)
    for a, b in zip(torch.autograd.grad(out.sum(), params), g_ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


class monkeypatch_cpu_chunk:  # noqa: N801 - a context manager used like a function
    def __init__(self, elements):
        self.elements = elements

    def __enter__(self):
        self.old, exact_mll._CHUNK_ELEMENTS = exact_mll._CHUNK_ELEMENTS, self.elements

    def __exit__(self, *exc):
        exact_mll._CHUNK_ELEMENTS = self.old


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("same", [True, False])
def test_stationary_kernel_matrix_equals_gpytorch(kind, same):
    model = _model(kind, m=2, batch=(3,)).eval()
    X1 = torch.rand(3, 1, 9, 3, dtype=torch.float64)
    X2 = None if same else torch.rand(3, 1, 7, 3, dtype=torch.float64)
    with torch.no_grad():
        fast = exact_mll.stationary_kernel_matrix(model.covar_module, X1, X2)
        ref = model.covar_module(X1, X1 if same else X2).to_dense()
    assert fast.shape == ref.shape == (3, 2, 9, 9 if same else 7)
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    if same:  # exact zero distance on the diagonal: the prior variance
        torch.testing.assert_close(fast.diagonal(dim1=-2, dim2=-1), ref.diagonal(dim1=-2, dim2=-1), rtol=1e-15, atol=0)


def test_stationary_kernel_matrix_declines_other_kernels():
    X = torch.rand(5, 2, dtype=torch.float64)
    assert exact_mll.stationary_kernel_matrix(ScaleKernel(PeriodicKernel()).double(), X) is None
    assert exact_mll.stationary_kernel_matrix(MaternKernel(nu=2.5).double(), X) is None


# ---------------------------------------------------------------------------------------------------------------
# the memory-budget helper shared by the chunked computations (gpgeom.engine.chunking)


def test_memory_sizes_and_budgets():
    from gpgeom.engine.chunking import DEFAULT_MAX_MEMORY, memory_budget, parse_memory, resolve_max_memory

    assert parse_memory("512MiB") == 512 * 2**20 and parse_memory("2 GB") == 2 * 10**9 and parse_memory("1.5k") == 1500
    assert parse_memory(5e8) == 500_000_000 and parse_memory("100") == 100 and parse_memory("3e3 b") == 3000
    for bad in ("lots", "-1MB", "1 XB", 0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="memory size"):
            parse_memory(bad)
    with pytest.raises(TypeError):
        parse_memory(True)
    assert resolve_max_memory() == DEFAULT_MAX_MEMORY
    with memory_budget("1MB"):
        assert resolve_max_memory() == 10**6
        with pytest.raises(RuntimeError), memory_budget(10):
            assert resolve_max_memory() == 10
            raise RuntimeError  # the budget is restored on the way out
        assert resolve_max_memory() == 10**6 and resolve_max_memory("2MB") == 2 * 10**6
    assert resolve_max_memory() == DEFAULT_MAX_MEMORY


def test_chunk_sizes_and_slices():
    from gpgeom.engine.chunking import chunk_size_for, chunk_slices

    assert chunk_size_for(100, 1000) == 10 and chunk_size_for(100, 1000, fixed=350) == 6
    assert chunk_size_for(100, 1000, total=4) == 4 and chunk_size_for(10**6, 1000) == 1  # at least one item
    assert chunk_size_for(0, 1000, total=7) == 7
    with pytest.raises(ValueError):
        chunk_size_for(0, 1000)
    with pytest.raises(ValueError):
        chunk_size_for(-1, 1000)
    slices = list(chunk_slices(10, 4))
    assert [(s.start, s.stop) for s in slices] == [(0, 4), (4, 8), (8, 10)] and list(chunk_slices(0, 3)) == []


@pytest.mark.parametrize(
    "factor_batch, rhs_shape", [((), (5, 3)), ((2,), (2, 5, 3)), ((2,), (4, 2, 5, 3)), ((2,), (4, 3, 1, 5, 3))]
)
def test_solve_lower_folded_equals_the_broadcast_solve(factor_batch, rhs_shape):
    from gpgeom.engine.chunking import solve_lower_folded

    A = torch.randn(*factor_batch, 5, 5, dtype=torch.float64)
    L = torch.linalg.cholesky(A @ A.mT + 5 * torch.eye(5, dtype=torch.float64))
    rhs = torch.randn(rhs_shape, dtype=torch.float64)
    batch = torch.broadcast_shapes(L.shape[:-2], rhs.shape[:-2])
    want = torch.linalg.solve_triangular(L.expand(batch + (5, 5)), rhs.expand(batch + (5, 3)), upper=False)
    torch.testing.assert_close(solve_lower_folded(L, rhs), want, rtol=1e-13, atol=1e-13)


def test_sub_gram_in_place_without_gradients():
    from gpgeom.engine.chunking import sub_gram

    K, A, B = (torch.randn(2, *s, dtype=torch.float64) for s in ((3, 4), (5, 3), (5, 4)))
    want = K - A.mT @ B
    with torch.no_grad():
        out = sub_gram(K.clone(), A, B)
    torch.testing.assert_close(out, want, rtol=1e-14, atol=1e-14)
    Kc = K.clone()
    with torch.no_grad():
        assert sub_gram(Kc, A, B).data_ptr() == Kc.data_ptr()  # no q x q temporary
    Ag = A.clone().requires_grad_()
    out = sub_gram(K, Ag, B)  # with gradients: out of place, differentiable
    torch.testing.assert_close(torch.autograd.grad(out.sum(), Ag)[0], -B.sum(-1, keepdim=True).expand(2, 5, 3).clone())
    torch.testing.assert_close(K, want + A.mT @ B)  # K untouched


def test_factor_cache_follows_the_module_state_and_is_not_copied():
    import copy
    import pickle

    from gpgeom.engine.chunking import FactorCache

    module = torch.nn.Linear(3, 2).double()
    module.register_buffer("big", torch.zeros(FactorCache.COPY_LIMIT + 1, dtype=torch.float64))
    data = torch.randn(4, 3, dtype=torch.float64)
    cache, calls = FactorCache(), []

    def compute():
        calls.append(1)
        return module(data).sum()

    def get():
        return cache.get(FactorCache.key_of(module, (data,), ("jitter", 1e-8)), compute)

    first = get()
    assert get() is first and len(calls) == 1
    module.weight.data.mul_(2.0)  # through .data: no version bump, seen by value
    assert get() is not first and len(calls) == 2
    data.add_(1.0)  # data edited in place: a new version
    get()
    module.big.add_(1.0)  # a large buffer: held, seen by its version
    get()
    assert len(calls) == 4
    assert cache.get(FactorCache.key_of(module, (data,), ("jitter", 1e-6)), compute) is not None and len(calls) == 5
    assert copy.deepcopy(cache).value is None and pickle.loads(pickle.dumps(cache)).value is None


def test_gaussian_quad_logdet_value_and_gradients_match_dense_autograd():
    from gpgeom.engine.exact_mll import gaussian_quad_logdet

    g = torch.Generator().manual_seed(3)
    B = torch.randn(2, 6, 6, generator=g, dtype=torch.float64)
    S = (B @ B.mT + 6 * torch.eye(6, dtype=torch.float64)).requires_grad_(True)
    y = torch.randn(2, 6, generator=g, dtype=torch.float64, requires_grad=True)
    out = gaussian_quad_logdet(S, y)
    S2, y2 = S.detach().clone().requires_grad_(True), y.detach().clone().requires_grad_(True)
    ref = (y2.unsqueeze(-2) @ torch.linalg.solve(S2, y2.unsqueeze(-1))).squeeze((-1, -2)) + torch.logdet(S2)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    w = torch.tensor([0.7, -1.3], dtype=torch.float64)
    gS, gy = torch.autograd.grad((out * w).sum(), (S, y))
    rS, ry = torch.autograd.grad((ref * w).sum(), (S2, y2))
    torch.testing.assert_close(gy, ry, rtol=1e-10, atol=1e-12)
    # the closed form is the symmetric gradient; autograd's gradient of solve/logdet may carry an antisymmetric part
    torch.testing.assert_close(gS, 0.5 * (rS + rS.mT), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# float32: the squared distances and the lengthscale gradient's pair sums do not cancel catastrophically


def _float32_case(n=400, ls=0.005, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, n, 1, dtype=torch.float64, generator=g)  # unit-interval inputs (after Normalize)
    y = torch.sin(x / (3 * ls)) + 0.1 * torch.randn(1, n, 1, dtype=torch.float64, generator=g)
    return x, y


@pytest.mark.parametrize("kind", KINDS)
def test_float32_kernel_matrix_has_float32_accuracy_for_short_lengthscales(kind):
    # inputs up to 100 lengthscales from their mean: by the expansion |a|^2 + |b|^2 - 2 a.b, the float32 squared
    # distances of neighbouring points were off by ~1e-3 (kernel entries by ~5e-4); from the differences, ~1e-6
    x, _ = _float32_case()
    model = _model(kind, m=1, d=1).eval()
    model.covar_module.base_kernel.lengthscale = 0.005
    model.covar_module.outputscale = 1.0
    with torch.no_grad():
        K64 = exact_mll.stationary_kernel_matrix(model.covar_module, x)
        K32 = exact_mll.stationary_kernel_matrix(model.covar_module.float(), x.float())
    assert float((K32.double() - K64).abs().max()) < 2e-5


@pytest.mark.parametrize("kind", ["matern32", "matern52"])
def test_float32_loss_and_gradients_follow_float64_for_short_lengthscales(kind):
    # lengthscale 0.005 on unit-interval inputs, noise 1e-2: well conditioned (float32 should agree with float64 to
    # about 1e-5), but the expansion's kernel errors moved the loss and the float32 pair sums of the lengthscale
    # gradient cancelled by (range / lengthscale)^2 ~ 1e4 (the gradient was 10-25% off)
    x, y = _float32_case()
    out = {}
    for dtype in (torch.float64, torch.float32):
        ls = torch.full((1, 1, 1), 0.005, dtype=dtype, requires_grad=True)
        os_ = torch.ones(1, dtype=dtype, requires_grad=True)
        noise = torch.full((1, x.shape[-2]), 1e-2, dtype=dtype, requires_grad=True)
        c = torch.zeros(1, 1, dtype=dtype, requires_grad=True)
        nll = stationary_nll(kind, ls, os_, noise, c, x.to(dtype), y.to(dtype))
        out[dtype] = [nll.detach(), *torch.autograd.grad(nll.sum(), [ls, os_, noise, c])]
    for a, b in zip(out[torch.float32], out[torch.float64]):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))

r"""Code the user supplies (factor residuals and retractions, custom trajectory measurements, fit objectives, MMGP
kernel factories, ExactGPModel modules) that returns NaN, the wrong type or the wrong dtype: a ``ValueError`` or
``TypeError`` that names the function and where, raised where the bad value appears (not a Cholesky failure, an
``index_add_`` dtype error or a silently ignored measurement)."""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from gpytorch.kernels import Kernel, RBFKernel, ScaleKernel
from gpytorch.likelihoods import GaussianLikelihood
from gpytorch.means import Mean
from gpytorch.priors import NormalPrior

from gpgeom.botorch import ExactGPModel
from gpgeom.engine.factors import Factor
from gpgeom.engine.fitting import fit
from gpgeom.engine.least_squares import gauss_newton
from gpgeom.errors import NotPSDError
from gpgeom.models.trajectory import CustomMeasurement, KnotPrior, PositionMeasurement, SO3xR3Trajectory

D = torch.float64
K = 10


def _chain(residual, **kw):
    y = torch.linspace(-1.0, 1.0, K, dtype=D)[:, None]
    meas = Factor(torch.arange(K)[:, None], lambda x, g: residual(x, g, y), name="meas")
    smooth = Factor(torch.stack([torch.arange(K - 1), torch.arange(1, K)], 1), lambda x, g: 10.0 * (x[:, 1] - x[:, 0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gauss_newton(torch.zeros(K, 1, dtype=D), [meas, smooth], **kw)


def test_a_residual_not_differentiable_at_the_estimate_is_named():
    r"""``sqrt(x)`` at ``x = 0`` is finite, its derivative is not: the normal matrix was NaN and the fit raised
    NotPSDError ("not positive definite ... a gauge freedom"); now the factor, the block and the cause are named."""
    with pytest.raises(ValueError, match=r"'meas'.*Jacobian of `residual`.*residual block 0 \(states \[0\]") as err:
        _chain(lambda x, g, y: torch.sqrt(x[:, 0]) - y)
    assert not isinstance(err.value, NotPSDError)
    # the same residual away from 0 fits: x = (y + 2)^2 solves sqrt(x) = y + 2 exactly when the smoothing is off
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = torch.linspace(-1.0, 1.0, K, dtype=D)[:, None]
        f = Factor(torch.arange(K)[:, None], lambda x, g: torch.sqrt(x[:, 0]) - (y + 2.0))
        res = gauss_newton(torch.ones(K, 1, dtype=D), [f])
    torch.testing.assert_close(res.states, (y + 2.0).square(), rtol=1e-9, atol=1e-9)


def test_a_jacobian_not_finite_at_the_final_estimate_is_named_by_the_covariances():
    r"""One Gauss-Newton step from ``x = 1`` lands on ``x = 0`` exactly (``3 x`` and ``4 sqrt(x^2)``: ``H = 25``,
    ``b = 25``), where ``sqrt(x^2)`` has a 0/0 derivative: with ``max_iter=1`` only the covariances' assembly sees it
    (the finiteness of the Jacobians is read off the assembled gradient, not checked factor by factor in every
    assembly); it names the factor, where c85febe raised NotPSDError ("a gauge freedom")."""
    f1 = Factor(torch.zeros(1, 1, dtype=torch.long), lambda x, g: 3.0 * x[:, 0], name="at zero")
    f2 = Factor(torch.zeros(1, 1, dtype=torch.long), lambda x, g: 4.0 * torch.sqrt(x[:, 0].square()), name="norm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"'norm'.*Jacobian of `residual`.*residual block 0 \(states \[0\]"):
            gauss_newton(torch.ones(1, 1, dtype=D), [f1, f2], method="gn", max_iter=1, compute_covariances=True)
        res = gauss_newton(torch.ones(1, 1, dtype=D), [f1, f2], method="gn", max_iter=1)
    assert float(res.states.abs().max()) == 0.0  # the step lands on the non-differentiable point exactly


def test_a_nan_residual_names_its_block_and_states():
    def residual(x, g, y):
        r = x[:, 0] - y
        return torch.where(torch.arange(K)[:, None] == 3, torch.nan, r)

    with pytest.raises(
        ValueError,
        match=r"'meas'.*1 of 10 entries of residual \(block, component\) \(first at index \(3, 0\): nan\) "
        r"\(residual block 3, on ",
    ):
        _chain(residual)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64])
def test_a_residual_of_another_dtype_is_refused(dtype):
    r"""A float32 or integer residual in a float64 problem failed in the assembly with torch's "index_add_(): self
    (Double) and source (Float) must have the same scalar type"."""
    with pytest.raises(TypeError, match=rf"'meas': `residual` must return .* dtype torch.float64, got dtype {dtype}"):
        _chain(lambda x, g, y: (x[:, 0] - y).to(dtype))


def test_a_retraction_of_another_dtype_is_refused():
    with pytest.raises(TypeError, match=r"`retract\(x, dx\)` must return .* torch.float64, got dtype torch.float32"):
        _chain(lambda x, g, y: x[:, 0] - y, retract=lambda x, d: (x + d).float(), tangent_dim=1)


def test_an_integer_custom_measurement_is_refused_not_ignored():
    r"""An integer ``residual_fn`` (``.long()``) has a zero derivative: the fit ran and ignored the measurement (the
    positions stayed at the prior's); now a TypeError names it, and the trajectory keeps its previous estimate."""
    kt = torch.arange(0.0, 2.0 + 1e-9, 0.5, dtype=D)
    t = torch.linspace(0.0, 2.0, 9, dtype=D)
    y = torch.stack([t, 2.0 * t, 0.5 * t], 1)
    zero = torch.zeros(3, dtype=D)
    prior = KnotPrior(0, R=torch.eye(3, dtype=D), omega=zero, alpha=zero, sigma=1.0)
    traj = SO3xR3Trajectory(kt, qc_pos=10.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traj.fit([PositionMeasurement(t, y, sigma=0.01), prior])
    before = traj.p.clone()
    bad = CustomMeasurement(t, lambda st, pr: (100.0 * (st["p"] - y)).long(), residual_dim=3, sigma=0.01)
    with pytest.raises(TypeError, match=r"`residual_fn` must return a floating-point tensor, got dtype torch.int64"):
        traj.fit([bad, prior])
    torch.testing.assert_close(traj.p, before, rtol=0, atol=0)


@pytest.mark.parametrize("wrap", [lambda t: float(t.detach()), lambda t: t.detach().numpy()], ids=["float", "numpy"])
@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_an_objective_that_returns_no_tensor_is_named(wrap, optimizer):
    r"""A loss returned as a Python float or a numpy array failed inside the optimiser with "AttributeError: 'float'
    object has no attribute 'sum'" (or "'numpy.ndarray' object has no attribute 'dim'")."""
    module = torch.nn.Linear(2, 1).double()
    X, y = torch.randn(20, 2, dtype=D), torch.randn(20, dtype=D)

    def my_loss():
        return wrap((module(X)[:, 0] - y).square().mean())

    before = [p.detach().clone() for p in module.parameters()]
    with pytest.raises(TypeError, match=r"`objective` callable \S*my_loss .* must return the loss as a torch.Tensor"):
        fit(my_loss, module=module, optimizer=optimizer, epochs=3, progress=False, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters()))


def _mmgp_data():
    sys.path.insert(0, str(Path(__file__).parent))
    from test_mmgp import _synthetic

    return _synthetic(6, seed=0)


def _rbf(d, batch_shape):
    from gpytorch.kernels import RBFKernel, ScaleKernel

    return ScaleKernel(RBFKernel(ard_num_dims=d, batch_shape=batch_shape), batch_shape=batch_shape)


@pytest.mark.parametrize(
    ("kernel", "err", "match"),
    [
        (lambda d, b: None, TypeError, r"`kernel` callable must return a gpytorch Kernel .* got NoneType"),
        (lambda d, b: torch.nn.Linear(d, d), TypeError, r"`kernel` callable must return a gpytorch Kernel .* Linear"),
        (lambda d, b: _rbf(d, torch.Size([7])), ValueError, r"batch_shape \(7,\) for kernel\(d=\d+, batch_shape=\("),
    ],
    ids=["none", "module", "batch-shape"],
)
def test_an_mmgp_kernel_factory_returning_no_kernel_is_named(kernel, err, match):
    r"""Before: "'NoneType' object has no attribute 'to'", "mat1 and mat2 shapes cannot be multiplied" and "x1 and x2
    were not broadcastable with kernel of batch_shape" from inside the first GP evaluation."""
    from gpgeom.models.mmgp import MMGP

    M, mu, U, w = _mmgp_data()
    model = MMGP(n_modes_geometry=2, n_modes_fields=2, restarts=0, max_iter=5, kernel=kernel)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(err, match=match):
            model.fit(M, mu, U, w, progress=False)


@pytest.mark.parametrize(
    ("arg", "value", "what"),
    [
        ("covar_module", torch.nn.Linear(2, 2), "a gpytorch Kernel"),
        ("mean_module", lambda x: x.sum(-1), r"a gpytorch Mean \(or a module"),
        ("likelihood", "gaussian", "a Gaussian gpytorch likelihood"),
    ],
)
def test_exact_gp_modules_of_the_wrong_kind_are_refused(arg, value, what):
    r"""Before: a Cholesky error on a 20 x 2 "matrix" at the first fit, a broadcast error at the first prediction, or
    GPyTorch's RuntimeError "ExactGP can only handle Gaussian likelihoods" at construction."""
    X = torch.rand(20, 2, dtype=D)
    with pytest.raises(TypeError, match=rf"`{arg}` must be None or {what}"):
        ExactGPModel(X, X.sum(-1, keepdim=True), **{arg: value})


def test_exact_gp_takes_a_plain_module_as_its_mean():
    r"""A mean written as a plain ``nn.Module`` (``forward(x) = x @ w``) fits and predicts as the same mean written as
    a gpytorch ``Mean``: the kind check of ``mean_module`` refuses non-modules only."""
    from gpytorch.means import Mean

    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2, dtype=D))

        def forward(self, x):
            return x @ self.w

    class AsMean(Plain, Mean):
        pass

    X = torch.rand(20, 2, dtype=D, generator=torch.Generator().manual_seed(0))
    Y = X.sum(-1, keepdim=True)
    Xt = torch.rand(3, 2, dtype=D, generator=torch.Generator().manual_seed(1))
    means = []
    for mean in (Plain(), AsMean()):
        model = ExactGPModel(X, Y, mean_module=mean)
        model.fit(progress=False, seed=0)
        means.append(model.posterior(Xt).mean)
    torch.testing.assert_close(means[0], means[1], rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# ExactGPModel: NaN or inf from the user's kernel, mean or likelihood, named where it appears


class _LogKernel(Kernel):
    r"""``exp(-d) + log(d + shift)``: NaN where the distance ``d < -shift`` (the diagonal for ``shift < 0``)."""

    def __init__(self, shift):
        super().__init__()
        self.shift = shift

    def forward(self, x1, x2, diag=False, **kw):
        d = self.covar_dist(x1, x2, diag=diag)
        return torch.exp(-d) + torch.log(d + self.shift)


class _GatedKernel(Kernel):
    r"""``exp(-d^2)``, with ``value`` (NaN or inf) in the rows of the inputs ``x1`` whose first coordinate exceeds
    ``x_max``."""

    def __init__(self, value, x_max):
        super().__init__()
        self.value, self.x_max = value, x_max

    def forward(self, x1, x2, diag=False, **kw):
        K = torch.exp(-self.covar_dist(x1, x2, diag=diag, square_dist=True))
        gate = x1[..., 0] > self.x_max
        return torch.where(gate if diag else gate[..., None], self.value, K)


class _GatedMean(Mean):
    r"""A constant ``c`` (a parameter), NaN at inputs whose first coordinate exceeds ``x_max`` and everywhere once
    ``c > c_max``."""

    def __init__(self, x_max=math.inf, c_max=math.inf):
        super().__init__()
        self.c = torch.nn.Parameter(torch.zeros((), dtype=D))
        self.x_max, self.c_max = x_max, c_max

    def forward(self, x):
        m = self.c.expand(x.shape[:-1])
        return torch.where((x[..., 0] > self.x_max) | (self.c > self.c_max), torch.nan, m)


def _data(n=12, seed=0, high=0.8):
    g = torch.Generator().manual_seed(seed)
    X = high * torch.rand(n, 2, dtype=D, generator=g)
    return X, torch.sin(4.0 * X).sum(-1, keepdim=True)


def _nan_lengthscale():
    k = ScaleKernel(RBFKernel()).double()
    with torch.no_grad():
        k.base_kernel.raw_lengthscale.fill_(torch.nan)
    return k


def _first_bad_index(t):
    pos = tuple(int(i) for i in (~torch.isfinite(t)).nonzero()[0])
    return pos[0] if len(pos) == 1 else pos


def _bad_noise():
    lik = GaussianLikelihood().double()
    with torch.no_grad():
        lik.noise_covar.raw_noise.fill_(torch.nan)
    return lik


_CASES = {
    "log-kernel": (lambda: {"covar_module": ScaleKernel(_LogKernel(-0.3))}, "covar_module",
                   r"ScaleKernel\(_LogKernel\)", "NaN"),
    "inf-kernel": (lambda: {"covar_module": _GatedKernel(math.inf, 0.5)}, "covar_module", r"_GatedKernel", "inf"),
    "nan-lengthscale": (lambda: {"covar_module": _nan_lengthscale()}, "covar_module",
                        r"ScaleKernel\(RBFKernel\)", "NaN"),
    "mean": (lambda: {"mean_module": _GatedMean(x_max=0.5)}, "mean_module", "_GatedMean", "NaN"),
    "noise": (lambda: {"likelihood": _bad_noise()}, "likelihood", "GaussianLikelihood", "NaN"),
}  # fmt: skip


def _expected_first(model, arg):
    r"""The first non-finite entry of what module ``arg`` returns at the training inputs, computed here."""
    X = model.transform_inputs(model.train_inputs[0]) if model.training else model.train_inputs[0]
    with torch.no_grad():
        if arg == "mean_module":
            return _first_bad_index(model.mean_module(X))
        if arg == "covar_module":
            return _first_bad_index(model.covar_module(X).to_dense())
        return _first_bad_index(model.likelihood.noise.expand(X.shape[:-1]))


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
@pytest.mark.parametrize("case", list(_CASES))
def test_exact_gp_fit_names_the_module_that_returns_nan(case, optimizer):
    r"""Before: NotPSDError "the covariance matrix could not be factorised even with Cholesky jitter up to 1e-04"
    (for a NaN or inf kernel, a NaN mean or a NaN noise alike), naming no module. Now a ValueError names the
    argument, its class, NaN or inf, the step of the fit and the first bad entry (found here independently)."""
    kwargs, arg, cls, kind = _CASES[case]
    X, Y = _data()
    model = ExactGPModel(X, Y, **kwargs())
    pos = _expected_first(model.train(), arg)
    step = r"the starting point" if optimizer == "lbfgs" else r"Adam epoch 0"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=rf"`{arg}` \({cls}\) returned {kind} in fit \(attempt 0, {step}") as err:
            model.fit(optimizer=optimizer, epochs=3, progress=False, seed=0)
    assert f"(first at index {pos}: " in str(err.value)
    if case == "nan-lengthscale":
        assert "non-finite parameter(s): `base_kernel.raw_lengthscale`" in str(err.value)


class _CountingMean(_GatedMean):
    r"""A constant mean that turns NaN from its ``k``-th call on (in training mode: one call per loss)."""

    def __init__(self, k):
        super().__init__()
        self.k, self.calls = k, 0

    def forward(self, x):
        self.calls += 1
        m = super().forward(x)
        return m if self.calls < self.k else torch.full_like(m, torch.nan)


def test_exact_gp_fit_names_the_adam_epoch_where_the_mean_turns_nan():
    r"""A mean that is finite for its first three calls and NaN from the fourth on: Adam evaluates the full-batch
    loss once per epoch, so the NaN appears at epoch 3, and the error says so. Before: NotPSDError ("... the
    negative ExactMarginalLogLikelihood of ExactGPModel returned NaN at Adam epoch 3"), naming no module."""
    X, Y = _data()
    model = ExactGPModel(X, Y, mean_module=_CountingMean(4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(
            ValueError, match=r"`mean_module` \(_CountingMean\) returned NaN in fit \(attempt 0, Adam epoch 3\)"
        ):
            model.fit(optimizer="adam", epochs=10, progress=False, seed=0)


def _fantasize(model, X):
    from botorch.sampling import SobolQMCNormalSampler

    return model.fantasize(X, SobolQMCNormalSampler(torch.Size([2]), seed=0)).posterior(X).mean


_PATHS = {
    "predict": lambda m, X: m.predict(X, return_std=True),
    "posterior": lambda m, X: m.posterior(X).variance,
    "condition": lambda m, X: m.condition_on_observations(X, X.sum(-1, keepdim=True)).posterior(X).mean,
    "fantasize": _fantasize,
}


@pytest.mark.parametrize("path", list(_PATHS))
def test_exact_gp_predictions_name_a_nan_kernel(path):
    r"""Before: linear_operator's NanError "cholesky_cpu: 144 of 144 elements of the torch.Size([12, 12]) tensor are
    NaN" from every path, naming no module."""
    X, Y = _data()
    model = ExactGPModel(X, Y, covar_module=_nan_lengthscale()).eval()
    where = "condition_on_observations" if path == "condition" else "a prediction"
    with pytest.raises(ValueError, match=rf"`covar_module` \(ScaleKernel\(RBFKernel\)\) returned NaN in {where}"):
        _PATHS[path](model, X[:3] + 0.01)


@pytest.mark.parametrize("path", list(_PATHS))
def test_exact_gp_predictions_name_a_mean_nan_at_new_inputs(path):
    r"""A mean that is NaN at inputs beyond 0.9 (the training inputs stop at 0.8). Before: NaN predictions from
    predict, posterior and the conditioned model without an error, and fantasize's ValueError "`Y` contains 2 NaN
    or infinite value(s)" about fantasies the user never passed. Now the mean and the first bad input row (found
    here) are named."""
    X, Y = _data()
    model = ExactGPModel(X, Y, covar_module=ScaleKernel(RBFKernel()), mean_module=_GatedMean(x_max=0.9)).eval()
    Xt = torch.tensor([[0.2, 0.3], [0.5, 0.5], [0.95, 0.1], [0.97, 0.9]], dtype=D)
    first = int((Xt[:, 0] > 0.9).nonzero()[0])
    if path == "condition":  # the conditioned model's training rows: the 12 old ones, then the new ones
        match = r"returned NaN in condition_on_observations \(training rows 12 on are the new observations\)"
        at = f"at the training inputs .* \\(first at index {X.shape[0] + first}: nan\\)"
    else:
        match, at = r"returned NaN in a prediction", rf"at the test inputs .* \(first at index {first}: nan\)"
    with pytest.raises(ValueError, match=rf"`mean_module` \(_GatedMean\) {match}: .*{at}"):
        _PATHS[path](model, Xt)


class _TestPairsKernel(Kernel):
    r"""``exp(-d^2)``, NaN between two inputs whose first coordinates both exceed ``x_max`` (and so at such an input
    with ``diag=True``): finite between training inputs and between training and test inputs, NaN only in the
    test-test covariance of test inputs beyond ``x_max``."""

    def __init__(self, x_max):
        super().__init__()
        self.x_max = x_max

    def forward(self, x1, x2, diag=False, **kw):
        K = torch.exp(-self.covar_dist(x1, x2, diag=diag, square_dist=True))
        far1, far2 = x1[..., 0] > self.x_max, x2[..., 0] > self.x_max
        return torch.where(far1 & far2 if diag else far1[..., :, None] & far2[..., None, :], torch.nan, K)


@pytest.mark.parametrize("eager", [True, False], ids=["dense-covariance", "lazy-covariance"])
@pytest.mark.parametrize("path", ["condition", "fantasize"])
def test_a_nan_only_in_the_test_covariance_of_gpytorchs_path_is_named(path, eager):
    r"""Conditioned and fantasy models predict through GPyTorch's prediction strategy, where only the mean was
    checked: a kernel that is NaN only between test inputs (beyond 0.9; training and new inputs stop at 0.8) gave a
    finite mean and NaN variances silently. The covariance GPyTorch made dense (joint sizes up to
    ``max_eager_kernel_size``), or else the diagonal of the lazy one, is now checked, and the kernel named. Away from
    the bad inputs the model predicts as the model rebuilt on the union of the data (dense algebra)."""
    import gpytorch
    from botorch.sampling import SobolQMCNormalSampler

    X, Y = _data()
    model = ExactGPModel(X, Y, covar_module=_TestPairsKernel(0.9)).eval()
    Xn = torch.tensor([[0.1, 0.7], [0.6, 0.2]], dtype=D)
    if path == "condition":
        new = model.condition_on_observations(Xn, Xn.sum(-1, keepdim=True))
        ref = model.rebuild_with(Xn, Xn.sum(-1, keepdim=True)).posterior(X[:4] + 0.01)
        post = new.posterior(X[:4] + 0.01)
        torch.testing.assert_close(post.mean, ref.mean, rtol=0, atol=1e-9)
        torch.testing.assert_close(post.variance, ref.variance, rtol=0, atol=1e-9)
    else:
        new = model.fantasize(Xn, SobolQMCNormalSampler(torch.Size([2]), seed=0))
        assert bool(torch.isfinite(new.posterior(X[:4] + 0.01).variance).all())
    Xt = torch.tensor([[0.3, 0.3], [0.95, 0.1], [0.97, 0.9]], dtype=D)
    match = r"`covar_module` \(_TestPairsKernel\) returned NaN in a prediction: \d+ of \d+ entries of its prior var"
    with gpytorch.settings.max_eager_kernel_size(512 if eager else 0), pytest.raises(ValueError, match=match):
        new.posterior(Xt)


class _UnclampedAskeyKernel(Kernel):
    r"""The compactly supported kernel ``(1 - d / c)_+^{5/2}`` (positive definite in 2-D) written without its clamp
    at 0: NaN for pairs farther apart than ``c`` only, never on the diagonal (``d = 0``)."""

    def __init__(self, c=0.8):
        super().__init__()
        self.c = c

    def forward(self, x1, x2, diag=False, **kw):
        return (1.0 - self.covar_dist(x1, x2, diag=diag) / self.c).pow(2.5)


def _lanczos_sample(post):
    import linear_operator

    fast = linear_operator.settings.fast_computations(covar_root_decomposition=True)
    with fast, linear_operator.settings.max_cholesky_size(1):  # a root by Lanczos (products), not a Cholesky factor
        return post.rsample(torch.Size([4]))


_SAMPLED = {
    "rsample": lambda post: post.rsample(torch.Size([4])),
    "rsample (Lanczos root)": _lanczos_sample,
    "joint covariance": lambda post: post.distribution.covariance_matrix,
    "qLogEI": None,  # below: BoTorch's sampler on the model
}


@pytest.mark.parametrize("use", list(_SAMPLED))
@pytest.mark.parametrize("path", ["model", "condition-dense", "condition-lazy", "fantasize"])
def test_a_nan_only_off_the_diagonal_of_the_test_covariance_is_named(path, use):
    r"""A kernel NaN only between two test inputs farther apart than its support (0.8; the training inputs lie in
    ``[0.35, 0.65]^2``, within 0.8 of each other and of both test inputs, which are 1.0 apart): the posterior's
    variances are finite, its covariance NaN only off the diagonal. Before: samples, the joint covariance and qLogEI
    were NaN without an error (linear_operator replaces the failed Cholesky factorisation by an eigendecomposition
    of the NaN matrix), on every path: the model's own (the ``q x q`` covariance was checked, but no module explained
    it, as the test-test covariance was not among those evaluated), GPyTorch's dense one and its lazy one (only the
    diagonal checked). Now the kernel is named, with the NaN entries of its test covariance as evaluated here; the
    variances of the lazy posterior stay those of the model rebuilt on the union of the data (dense algebra)."""
    import gpytorch
    from botorch.acquisition.logei import qLogExpectedImprovement
    from botorch.sampling import SobolQMCNormalSampler

    g = torch.Generator().manual_seed(0)
    X = 0.35 + 0.3 * torch.rand(12, 2, dtype=D, generator=g)
    Y = torch.sin(4.0 * X).sum(-1, keepdim=True)
    model = ExactGPModel(X, Y, covar_module=_UnclampedAskeyKernel()).eval()
    Xt = torch.tensor([[0.0, 0.5], [1.0, 0.5]], dtype=D)
    K = _UnclampedAskeyKernel()(Xt).to_dense()  # the truth: NaN at (0, 1) and (1, 0) only
    assert K.isnan().tolist() == [[False, True], [True, False]]
    Xn = torch.tensor([[0.5, 0.5]], dtype=D)
    if path == "model":
        new = model
    elif path == "fantasize":
        new = model.fantasize(Xn, SobolQMCNormalSampler(torch.Size([2]), seed=0))
    else:
        new = model.condition_on_observations(Xn, Xn.sum(-1, keepdim=True))
    eager = 0 if path in ("condition-lazy", "fantasize") else 512
    with gpytorch.settings.max_eager_kernel_size(eager):
        if path == "condition-lazy":
            ref = model.rebuild_with(Xn, Xn.sum(-1, keepdim=True)).posterior(Xt[:1]).variance
            torch.testing.assert_close(new.posterior(Xt[:1]).variance, ref, rtol=0, atol=1e-12)  # no pair: finite
            assert bool(torch.isfinite(new.posterior(Xt).variance).all())
        copies = 2 if path == "fantasize" else 1  # the fantasies' batch: the same test covariance in each
        bad, total = copies * int(K.isnan().sum()), copies * K.numel()
        entries = rf"{bad} of {total} entries of its covariance between the test inputs .* are NaN or infinite"
        match = (
            rf"`covar_module` \(_UnclampedAskeyKernel\) returned NaN .*: {entries} \(first at index \(.*0, 1\): nan\)"
        )
        with pytest.raises(ValueError, match=match):
            if use == "qLogEI":
                best = torch.tensor(0.0, dtype=D)
                qLogExpectedImprovement(new, best_f=best, sampler=SobolQMCNormalSampler(torch.Size([8]), seed=0))(Xt)
            else:
                _SAMPLED[use](new.posterior(Xt))


def test_a_non_finite_mean_no_module_explains_does_not_evaluate_the_test_covariance():
    r"""A posterior mean that overflows (a mean module of 1.5e308 at every input, finite, and a small noise: the
    mean cache ``(K + s^2 I)^{-1} (y - m)`` overflows) is left as it was, no module explaining it. The diagnosis
    evaluated, last, the ``q x q`` prior covariance between the test inputs, which no mean or variance depends on:
    ``predict`` of 4000 points took 3.3 s and 616 MB more (0.01 s and 5 MB before that diagnosis step; its memory
    grows as ``q^2``). Now the kernel is never called on a pair of test-point sets there; the prediction is the same
    (a non-finite mean, finite standard deviations)."""
    from gpytorch.means import Mean

    class HugeMean(Mean):
        def forward(self, x):
            return torch.full(x.shape[:-1], 1.5e308, dtype=x.dtype)

    calls = []

    class Recording(RBFKernel):
        def forward(self, x1, x2, diag=False, **kw):
            calls.append((x1.shape[-2], x2.shape[-2], diag))
            return super().forward(x1, x2, diag=diag, **kw)

    g = torch.Generator().manual_seed(0)
    X = torch.rand(10, 2, dtype=D, generator=g)
    model = ExactGPModel(X, torch.sin(4.0 * X).sum(-1, keepdim=True), mean_module=HugeMean(),
                         covar_module=ScaleKernel(Recording()), outcome_transform=None).eval()  # fmt: skip
    model.likelihood.noise = 1e-6
    q = 50
    Xt = torch.rand(q, 2, dtype=D, generator=g)
    with torch.no_grad():
        mean, std = model.predict(Xt, return_std=True)
    assert not bool(torch.isfinite(mean).all()) and bool(torch.isfinite(std).all())
    assert (q, q, False) not in calls, calls


def test_the_checked_lazy_covariance_keeps_its_cholesky_factor():
    r"""The lazy test covariance of a conditioned model, wrapped in ``CheckedCovariance``, factorised its matrix anew
    at every ``cholesky()`` (0.13 to 0.19 s each for ``q = 1500`` on a shared CPU), where linear_operator memoises
    the factor (0.000 s from the second call unwrapped). Now the factor is kept: the second call returns it, and it
    is the Cholesky factor of the dense covariance."""
    import gpytorch

    from gpgeom.botorch._checked_covariance import CheckedCovariance

    g = torch.Generator().manual_seed(0)
    X = torch.rand(12, 2, dtype=D, generator=g)
    model = ExactGPModel(X, torch.sin(4.0 * X).sum(-1, keepdim=True)).eval()
    Xn = torch.rand(2, 2, dtype=D, generator=g)
    new = model.condition_on_observations(Xn, torch.sin(4.0 * Xn).sum(-1, keepdim=True))
    Xt = torch.rand(6, 2, dtype=D, generator=g)
    with gpytorch.settings.max_eager_kernel_size(0), torch.no_grad():
        cov = new(new.transform_inputs(Xt)).lazy_covariance_matrix
    assert isinstance(cov, CheckedCovariance)
    L = cov.cholesky()
    assert cov.cholesky() is L
    dense = cov.base.to_dense()
    torch.testing.assert_close(L.to_dense(), torch.linalg.cholesky(dense), rtol=0, atol=1e-12)


class _SqrtKernel(Kernel):
    r"""An RBF kernel times ``sqrt(a - 1)``: NaN for ``a < 1`` (``a = 0.5`` at the start), finite where the prior
    ``N(1.75, 0.05)`` draws the restarts' ``a``."""

    def __init__(self):
        super().__init__()
        self.register_parameter("raw_a", torch.nn.Parameter(torch.tensor(0.5, dtype=D)))
        self.register_prior(
            "a_prior", NormalPrior(1.75, 0.05), lambda m: m.raw_a, lambda m, v: m.raw_a.data.fill_(float(v))
        )
        self.rbf = RBFKernel()

    def forward(self, x1, x2, diag=False, **params):
        return self.rbf(x1, x2, diag=diag, **params).to_dense() * torch.sqrt(self.raw_a - 1.0)


class _NaNKernel(Kernel):
    def forward(self, x1, x2, diag=False, **params):
        shape = x1.shape[:-1] if diag else x1.shape[:-1] + x2.shape[-2:-1]
        return torch.full(shape, float("nan"), dtype=x1.dtype)


def _neg_mll(model):
    r"""The fitted model's loss, evaluated here: minus GPyTorch's MLL (with the priors) at its training data."""
    from gpytorch.mlls import ExactMarginalLogLikelihood

    model.train()
    try:
        with torch.no_grad():
            X = model.transform_inputs(model.train_inputs[0])
            return float(-ExactMarginalLogLikelihood(model.likelihood, model)(model(X), model.train_targets).sum())
    finally:
        model.eval()


@pytest.mark.parametrize("executor", [None, "threads", "processes"])
@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_a_nan_attempt_among_restarts_is_a_failure_not_the_end_of_the_fit(optimizer, executor):
    r"""Attempt 0 starts where the kernel is NaN (``sqrt(0.5 - 1)``); the restarts start from prior draws where it
    is finite. Before: the ValueError naming ``covar_module`` ended the fit at attempt 0 (the restarts never ran).
    Now attempt 0 is a failure whose message names the module, and the best restart is kept: its loss is the MLL
    evaluated here at the fitted parameters, and the fit is the same serially and with an executor."""
    X = torch.rand(20, 1, dtype=D, generator=torch.Generator().manual_seed(0))
    Y = torch.sin(6 * X)
    kw = dict(progress=False, restarts=2, seed=0, optimizer=optimizer, epochs=20, max_iter=30)
    pool = {"threads": ThreadPoolExecutor(2), "processes": ProcessPoolExecutor(2)}.get(executor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        serial = ExactGPModel(X, Y, covar_module=_SqrtKernel()).fit(**kw)
        if pool is not None:
            with pool:
                model = ExactGPModel(X, Y, covar_module=_SqrtKernel()).fit(executor=pool, **kw)
        else:
            model = serial
    res = model.fit_result_
    assert res.attempts == 3 and res.best_attempt != 0 and not math.isfinite(res.final_losses[0])
    assert res.failures[0].startswith("attempt 0: `covar_module` (_SqrtKernel) returned NaN in fit (attempt 0, ")
    assert len(res.failures) == 1  # the restarts succeeded
    assert res.loss == pytest.approx(_neg_mll(model), rel=1e-9, abs=1e-12)
    assert res.loss == serial.fit_result_.loss and res.final_losses == serial.fit_result_.final_losses


@pytest.mark.parametrize("executor", [None, "threads", "processes"])
def test_nan_in_every_attempt_raises_the_first_named_error(executor):
    r"""Every attempt NaN (a NaN kernel): when all have failed, the ValueError of the first, naming ``covar_module``
    at attempt 0, chained to the optimiser's error (also from worker processes, where pickle drops ``__cause__``),
    and not the generic NotPSDError "failed in all 3 attempt(s)"; the model is left as it was."""
    X = torch.rand(15, 1, dtype=D, generator=torch.Generator().manual_seed(1))
    model = ExactGPModel(X, torch.sin(5 * X), covar_module=_NaNKernel())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pool = {"threads": ThreadPoolExecutor(2), "processes": ProcessPoolExecutor(2)}.get(executor)
    with warnings.catch_warnings(), contextlib.ExitStack() as stack:
        warnings.simplefilter("ignore")
        if pool is not None:
            stack.enter_context(pool)
        with pytest.raises(ValueError, match=r"`covar_module` \(_NaNKernel\) returned NaN in fit \(attempt 0, ") as err:
            model.fit(progress=False, restarts=2, seed=0, executor=pool)
    assert err.value.__cause__ is not None and "NaN" in str(err.value.__cause__)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_nan_test_input_is_named_not_the_kernel(bad):
    r"""``model(X)`` with a non-finite row of ``X``: before, the ValueError blamed ``covar_module`` ("returned NaN in
    a prediction: 60 of 60 entries of its covariance between test and training inputs"), though the kernel is
    finite at finite inputs. Now it names ``X`` and its first bad entry (found here)."""
    X = torch.rand(20, 1, dtype=D, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ExactGPModel(X, torch.sin(6 * X)).fit(progress=False, max_iter=10)
    Xt = torch.tensor([[0.2], [0.4], [0.5]], dtype=D)
    Xt[1, 0] = bad
    assert bool(torch.isfinite(model(Xt[[0, 2]]).mean).all())  # the kernel and mean are finite at the other rows
    pos = tuple(int(i) for i in (~torch.isfinite(Xt)).nonzero()[0])
    with pytest.raises(ValueError, match=r"^`X` contains 1 NaN or infinite value\(s\) in a prediction") as err:
        model(Xt)
    assert f"(first at index {pos}: {bad})" in str(err.value) and "covar_module" not in str(err.value)


def test_a_nan_made_by_the_input_transform_is_named_not_x():
    r"""An input transform taking the square root of the coordinates, a finite test input with a negative coordinate:
    before, ``posterior`` and ``predict`` said "`X` contains 1 NaN ... the test inputs must be finite", though ``X``
    is finite. Now the ValueError names ``input_transform`` (its class) and the first bad transformed entry (found
    here with ``torch.sqrt``); a non-finite ``X`` is still named as ``X``."""
    from botorch.models.transforms.input import InputTransform

    class SqrtTransform(InputTransform, torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.transform_on_train = self.transform_on_eval = self.transform_on_fantasize = True

        def transform(self, X):
            return torch.sqrt(X)

    X = torch.rand(20, 1, dtype=D, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ExactGPModel(X, torch.sin(6 * X), input_transform=SqrtTransform()).fit(progress=False, max_iter=10)
    Xt = torch.tensor([[0.2], [-0.4], [0.5]], dtype=D)
    assert bool(torch.isfinite(Xt).all())
    pos = tuple(int(i) for i in torch.sqrt(Xt).isnan().nonzero()[0])
    for predict in (lambda Z: model.posterior(Z).mean, model.predict):
        with pytest.raises(ValueError, match=r"^`input_transform` \(SqrtTransform\) returned NaN or inf in a pred"):
            predict(Xt)
    with pytest.raises(ValueError) as err:
        model.predict(Xt)
    assert f"(first at index {pos}: nan)" in str(err.value) and "though `X` is finite" in str(err.value)
    assert bool(torch.isfinite(model.predict(Xt[[0, 2]])).all())  # the other rows predict
    Xt[1, 0] = math.nan
    for predict in (lambda Z: model.posterior(Z).mean, model.predict):
        with pytest.raises(ValueError, match=r"^`X`") as err:
            predict(Xt)
        assert "input_transform" not in str(err.value)


def test_inputs_known_to_one_thread_never_reach_another_nor_stay_on_the_model():
    r"""The test inputs a prediction keeps for its messages (``raw_inputs``) belong to its thread: two threads whose
    predictions overlap and end out of order (A starts, B starts, A ends, B ends; ordered with events) leave nothing
    on the model, each sees its own inputs, and a later ``model(X)`` with NaN in ``X`` names ``X`` (before, the
    other thread's finite inputs stayed on the model, and the NaN was blamed on the ``input_transform``)."""
    import threading

    from botorch.models.transforms.input import Normalize

    from gpgeom.botorch import _finite, _local

    X = torch.rand(20, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model = ExactGPModel(X, torch.sin(6 * X), input_transform=Normalize(d=1)).fit(progress=False, max_iter=10)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def thread_a():
        with _finite.raw_inputs(model, torch.zeros(1, 1, dtype=torch.float64)):
            a_in.set()
            b_in.wait(10)
            seen["a"] = _local.current(model, "raw")
        a_out.set()

    def thread_b():
        a_in.wait(10)
        with _finite.raw_inputs(model, torch.ones(1, 1, dtype=torch.float64)):
            b_in.set()
            a_out.wait(10)
            seen["b"] = _local.current(model, "raw")

    threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert float(seen["a"]) == 0.0 and float(seen["b"]) == 1.0
    assert not any("finite" in k for k in model.__dict__)
    model.eval()
    with pytest.raises(ValueError, match=r"^`X` contains 1 NaN"):
        model(torch.tensor([[0.3], [math.nan]], dtype=torch.float64))

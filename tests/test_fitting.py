r"""Tests of gpgeom.engine.fitting.fit: L-BFGS-B, restarts, jitter escalation, Adam, early stopping, progress."""

from __future__ import annotations

import math
import warnings

import gpytorch
import pytest
import torch
from gpytorch.constraints import Interval
from gpytorch.kernels import Kernel, RBFKernel, ScaleKernel
from gpytorch.likelihoods import GaussianLikelihood
from gpytorch.mlls import ExactMarginalLogLikelihood, VariationalELBO
from gpytorch.priors import NormalPrior
from linear_operator import to_dense
from linear_operator.utils.errors import NotPSDError as LinearOperatorNotPSDError
from torch.utils.data import DataLoader, TensorDataset

from gpgeom.botorch.exact_gp import ExactGPModel
from gpgeom.engine.fitting import FitResult, fit, jitter_levels, random_reinitialize
from gpgeom.errors import ConvergenceWarning, LossNotFiniteError, NotPSDError

DT = torch.float64


def neg_mll(mll) -> float:
    r"""The loss fit() minimises, evaluated independently: -mll summed over batch members, in train mode."""
    model = mll.model
    model.train()
    with torch.no_grad():
        out = model(*model.train_inputs)
        value = -mll(out, model.train_targets, *model.train_inputs).sum()
    model.eval()
    return float(value)


# ----------------------------------------------------------------------------------------------------------
# exact path


def test_lbfgs_raises_the_mll_from_a_bad_start():
    X = torch.rand(30, 2, dtype=DT)
    Y = torch.sin(6 * X[:, :1]) + 0.05 * torch.randn(30, 1, dtype=DT)
    model = ExactGPModel(X, Y)
    model.covar_module.base_kernel.lengthscale = 20.0
    model.likelihood.noise = 0.8
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    before = neg_mll(mll)
    result = fit(mll, progress=False)
    after = neg_mll(mll)
    assert isinstance(result, FitResult)
    assert result.optimizer == "lbfgs" and result.attempts == 1 and result.best_attempt == 0
    assert after < before - 0.5, (before, after)
    assert result.loss == pytest.approx(after, abs=1e-8)  # the reported loss is the state that was loaded
    assert result.history[0][-1] == pytest.approx(after, abs=1e-6)
    assert result.converged and result.wall_time > 0
    assert not model.training  # left in eval mode
    assert result.jitter == gpytorch.settings.cholesky_jitter.value(DT)


def test_restarts_keep_the_best_attempt_gp():
    # Attempt 0 starts in the "everything is noise" basin (long lengthscale, large noise, no priors) and stays
    # there; random re-initialisations around the data scale find the far better periodic fit.
    X = torch.rand(40, 1, dtype=DT)
    Y = torch.sin(20 * X) + 0.05 * torch.randn(40, 1, dtype=DT)
    model = ExactGPModel(X, Y, covar_module=ScaleKernel(RBFKernel()), likelihood=GaussianLikelihood())
    model.covar_module.base_kernel.lengthscale = 20.0
    model.covar_module.outputscale = 0.1
    model.likelihood.noise = 1.0
    model.fit(restarts=6, seed=3, progress=False)
    r = model.fit_result_
    assert r.attempts == 7 and len(r.history) == len(r.final_losses) == 7
    assert r.best_attempt > 0
    assert r.final_losses[0] > r.loss + 0.5, r.final_losses
    assert r.loss == min(r.final_losses)
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    assert neg_mll(mll) == pytest.approx(r.loss, abs=1e-8)  # the best state is the one loaded
    assert float(model.covar_module.base_kernel.lengthscale.detach()) < 0.5


class DoubleWell(gpytorch.Module):
    r"""One parameter with a N(0, 1) prior and loss (x^2 - 1)^2 + 0.3 x: a local minimum near x = 0.96 and the
    global one near x = -1.04."""

    def __init__(self, x0: float = 1.5) -> None:
        super().__init__()
        self.register_parameter("x", torch.nn.Parameter(torch.tensor([x0], dtype=DT)))
        self.register_prior("x_prior", NormalPrior(0.0, 1.0), lambda m: m.x, lambda m, v: m.x.data.copy_(v))

    def loss(self) -> torch.Tensor:
        return ((self.x**2 - 1) ** 2 + 0.3 * self.x).sum()


def test_restarts_from_priors_are_seeded_and_keep_the_best():
    module = DoubleWell()
    result = fit(module.loss, module=module, optimizer="lbfgs", restarts=6, seed=0, progress=False)
    assert result.final_losses[0] == pytest.approx(-1 + 0.3 * 0.96 + 1, abs=0.05)  # the local well
    assert result.best_attempt > 0
    assert float(module.x.detach()) == pytest.approx(-1.04, abs=0.01)
    assert result.loss == pytest.approx(float(module.loss().detach()), abs=1e-10) == min(result.final_losses)
    # the same seed gives the same attempts, and the caller's random stream is untouched
    state = torch.random.get_rng_state()
    other = DoubleWell()
    again = fit(other.loss, module=other, optimizer="lbfgs", restarts=6, seed=0, progress=False)
    assert again.final_losses == pytest.approx(result.final_losses, abs=1e-12)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_random_reinitialize_lengthscales_around_the_data_scale():
    X = torch.cat([torch.rand(50, 1, dtype=DT), 100 * torch.rand(50, 1, dtype=DT)], -1)
    model = ExactGPModel(X, torch.rand(50, 1, dtype=DT), covar_module=ScaleKernel(RBFKernel(ard_num_dims=2)))
    scale = X.std(0)
    for _ in range(20):
        random_reinitialize(model)
        ls = model.covar_module.base_kernel.lengthscale.detach().reshape(-1)
        assert torch.all(ls >= 0.1 * scale * (1 - 1e-9)) and torch.all(ls <= 10 * scale * (1 + 1e-9))
    with pytest.raises(ValueError, match="priors or constrained parameters"):
        random_reinitialize(torch.nn.Linear(2, 1))


# ----------------------------------------------------------------------------------------------------------
# jitter escalation


class DeficitKernel(Kernel):
    r"""A base kernel minus ``deficit`` on the diagonal of square self-covariances.

    With duplicated inputs the Gram matrix is exactly singular, and round-off makes its smallest eigenvalue a
    tiny number of either sign; the explicit deficit makes that eigenvalue ``-deficit`` for every BLAS, so the
    jitter needed (the first level above ``deficit``) is known.
    """

    def __init__(self, base: Kernel, deficit: float) -> None:
        super().__init__()
        self.base = base
        self.deficit = deficit

    def forward(self, x1, x2, diag=False, **params):
        K = self.base.forward(x1, x2, diag=diag, **params)
        if x1.shape == x2.shape and torch.equal(x1, x2):
            if diag:
                return K - self.deficit
            K = to_dense(K)
            return K - self.deficit * torch.eye(K.shape[-1], dtype=K.dtype)
        return K


def singular_model(deficit: float) -> ExactGPModel:
    X = torch.rand(12, 2, dtype=DT).repeat(3, 1)  # every input three times
    Y = torch.sin(3 * X.sum(-1, keepdim=True))
    kernel = DeficitKernel(ScaleKernel(RBFKernel(ard_num_dims=2)), deficit)
    return ExactGPModel(X, Y, train_Yvar=torch.full_like(Y, 1e-12), covar_module=kernel)


@pytest.mark.filterwarnings("ignore:Very small noise values")
def test_jitter_escalates_on_a_singular_kernel_matrix():
    assert jitter_levels(DT, 1e-4) == [1e-8, 1e-7, 1e-6, 1e-5, 1e-4]
    assert jitter_levels(torch.float32, 1e-4) == [1e-6, 1e-5, 1e-4]
    # GPyTorch floors fixed noise at 1e-6, so the smallest eigenvalue is 1e-6 - 3e-6 = -2e-6:
    # jitter 1e-8, 1e-7 and 1e-6 fail, 1e-5 works
    model = singular_model(3e-6)
    model.fit(progress=False, max_iter=30)
    assert model.fit_result_.jitter == pytest.approx(1e-5)
    mu, sd = model.predict(torch.rand(5, 2, dtype=DT), return_std=True)  # later factorisations reuse it
    assert torch.isfinite(mu).all() and torch.isfinite(sd).all()
    # with a smaller allowance the same problem is reported, with the remedies
    with pytest.raises(NotPSDError, match=r"jitter up to 1\.0e-06"):
        singular_model(3e-6).fit(progress=False, max_iter=30, max_jitter=1e-6)


class NegativeKernel(Kernel):
    r"""Minus an RBF kernel: negative definite, no jitter can fix it."""

    def __init__(self) -> None:
        super().__init__()
        self.base = RBFKernel()

    def forward(self, x1, x2, diag=False, **params):
        return -to_dense(self.base.forward(x1, x2, diag=diag, **params))


class NaNKernel(Kernel):
    def forward(self, x1, x2, diag=False, **params):
        shape = x1.shape[:-1] if diag else x1.shape[:-1] + x2.shape[-2:-1]
        return torch.full(shape, float("nan"), dtype=x1.dtype)


def test_impossible_kernel_raises_gpgeom_not_psd_with_remedies():
    X = torch.rand(15, 1, dtype=DT)
    Y = torch.sin(5 * X)
    model = ExactGPModel(X, Y, covar_module=NegativeKernel())
    with pytest.raises(NotPSDError) as info:
        model.fit(progress=False, restarts=1, seed=0)
    msg = str(info.value)
    assert isinstance(info.value, LinearOperatorNotPSDError)  # GPyTorch users' except clauses still catch it
    for needle in ("ExactGPModel", "jitter up to 1.0e-04", "float64", "normalise", "noise", "duplicate"):
        assert needle in msg, (needle, msg)
    # a NaN kernel is the user's module, named (was this NotPSDError "the covariance contains NaN")
    with pytest.raises(ValueError, match=r"`covar_module` \(NaNKernel\) returned NaN in fit \(attempt 0, the start"):
        ExactGPModel(X, Y, covar_module=NaNKernel()).fit(progress=False)


# ----------------------------------------------------------------------------------------------------------
# Adam path


class SVGP(gpytorch.models.ApproximateGP):
    def __init__(self, inducing: torch.Tensor) -> None:
        dist = gpytorch.variational.CholeskyVariationalDistribution(inducing.shape[0])
        strategy = gpytorch.variational.VariationalStrategy(self, inducing, dist, learn_inducing_locations=True)
        super().__init__(strategy)
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = ScaleKernel(RBFKernel())

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def elbo_value(model, likelihood, X, y) -> float:
    model.train()
    likelihood.train()
    with torch.no_grad():
        return float(VariationalELBO(likelihood, model, num_data=y.numel())(model(X), y))


@pytest.mark.parametrize("minibatch", [True, False])
def test_adam_raises_the_elbo_of_a_variational_gp(minibatch):
    X = torch.rand(200, 1, dtype=DT)
    y = torch.sin(8 * X[:, 0]) + 0.1 * torch.randn(200, dtype=DT)
    model = SVGP(torch.linspace(0, 1, 8, dtype=DT).unsqueeze(-1)).double()
    likelihood = GaussianLikelihood().double()
    mll = VariationalELBO(likelihood, model, num_data=200)
    before = elbo_value(model, likelihood, X, y)
    loader = DataLoader(TensorDataset(X, y), batch_size=50, shuffle=True) if minibatch else None
    if not minibatch:
        model.train_inputs, model.train_targets = (X,), y  # full batch: fit() reads the model's data
    lr = 0.02 if minibatch else 0.05
    result = fit(mll, data_loader=loader, epochs=40 if minibatch else 150, lr=lr, seed=0, progress=False)
    assert not model.training and not likelihood.training
    after = elbo_value(model, likelihood, X, y)
    assert result.optimizer == "adam"
    assert after > before + 0.3, (before, after)
    assert len(result.history[0]) <= (40 if minibatch else 150)
    if not minibatch:  # full batch: the reported loss is that of the returned (best) parameters
        assert after == pytest.approx(-result.loss, abs=1e-8)


def test_early_stopping_on_a_flat_loss():
    p = torch.nn.Parameter(torch.zeros(3))
    module = torch.nn.Module()
    module.p = p
    result = fit(lambda: 0.0 * p.sum() + 1.0, module=module, epochs=500, patience=5, progress=False)
    assert result.optimizer == "adam" and result.converged
    assert len(result.history[0]) == 6  # the first epoch sets the reference, then 5 without improvement
    # a loss that keeps improving runs to the epoch limit
    q = torch.nn.Parameter(torch.tensor([5.0]))
    module.q = q
    result = fit(lambda: (q**2).sum(), module=module, epochs=30, lr=0.01, patience=5, progress=False)
    assert len(result.history[0]) == 30 and not result.converged


def test_progress_bar_on_and_off(capsys):
    module = DoubleWell()
    fit(module.loss, module=module, optimizer="lbfgs", restarts=1, seed=0, progress=False)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    fit(module.loss, module=module, optimizer="lbfgs", restarts=1, seed=0, progress=True)
    err = capsys.readouterr().err
    assert "attempt 2/2" in err and "loss=" in err


def test_bad_options():
    module = DoubleWell()
    with pytest.raises(ValueError, match="Unknown `optimizer`='sgd'; expected one of 'auto', 'lbfgs', 'adam'"):
        fit(module.loss, module=module, optimizer="sgd")
    with pytest.raises(ValueError, match="`restarts` must be >= 0"):
        fit(module.loss, module=module, restarts=-1)
    with pytest.raises(TypeError, match="`max_iter` must be an int"):
        fit(module.loss, module=module, max_iter=10.5)
    with pytest.raises(ValueError, match="needs `module=`"):
        fit(module.loss)
    with pytest.raises(ValueError, match="full-batch only"):
        fit(module.loss, module=module, optimizer="lbfgs", data_loader=[(torch.zeros(1),)])
    with pytest.raises(TypeError, match="MarginalLogLikelihood or a callable"):
        fit(3.0, module=module)
    with pytest.raises(ValueError, match="nothing to fit"):
        fit(module.loss, module=module.requires_grad_(False))


def test_bounded_parameters_stay_inside_their_bounds_with_adam():
    class Bounded(gpytorch.Module):
        def __init__(self):
            super().__init__()
            self.register_parameter("raw_a", torch.nn.Parameter(torch.tensor([0.5], dtype=DT)))
            self.register_constraint("raw_a", Interval(0.1, 2.0, transform=None))

    module = Bounded()
    result = fit(lambda: (module.raw_a - 10.0).pow(2).sum(), module=module, epochs=200, lr=0.5, progress=False)
    assert float(module.raw_a.detach()) == pytest.approx(2.0)
    assert math.isfinite(result.loss)


def test_linalg_error_inside_a_callable_loss_is_not_retried_with_jitter():
    # a callable loss that factorises with torch.linalg directly ignores gpytorch's jitter setting: escalating
    # would repeat the same failure, so each attempt fails once and the error names the cause
    w = torch.nn.Parameter(torch.ones(2, dtype=DT))
    module = torch.nn.Module()
    module.w = w
    calls = []

    def loss():
        calls.append(1)
        A = torch.diag(torch.stack([w[0], -w[1]]))  # indefinite whatever w is
        return torch.linalg.cholesky(A).diagonal().sum()

    with pytest.raises(NotPSDError, match="does not factorise through"):
        fit(loss, module=module, optimizer="lbfgs", progress=False)
    assert len(calls) == 1  # the probe failed once; no jitter reruns


def test_adam_data_loader_must_yield_minibatches_every_epoch():
    # a generator is exhausted after the first epoch: the later epochs used to count as loss 0.0, so fit reported
    # loss 0.0 (the true loss was 6.5) and kept the parameters of an untrained epoch
    x = torch.linspace(0, 1, 20, dtype=torch.float64)[:, None]
    y = 3 * x[:, 0] + 1
    module = torch.nn.Linear(1, 1).double()

    def loss(xb, yb):
        return ((module(xb).squeeze(-1) - yb) ** 2).mean()

    batches = [(x[i : i + 5], y[i : i + 5]) for i in range(0, 20, 5)]
    with pytest.raises(TypeError, match="`data_loader` must be re-iterable.*generator"):
        fit(loss, module=module, data_loader=(b for b in batches), epochs=5, progress=False)
    with pytest.raises(ValueError, match="`data_loader` yielded no minibatch in epoch 0"):
        fit(loss, module=module, data_loader=[], epochs=5, progress=False)
    result = fit(loss, module=module, data_loader=batches, epochs=5, lr=0.1, progress=False)  # re-iterable: fine
    assert result.loss > 0 and len(result.history[0]) == 5


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_a_loss_that_depends_on_no_parameter_is_named(optimizer):
    # torch only said "element 0 of tensors does not require grad" from deep inside the optimiser loop
    module = torch.nn.Linear(1, 1).double()
    with pytest.raises(ValueError, match="does not depend on any trainable parameter"):
        fit(lambda: torch.tensor(3.0, dtype=torch.float64), module=module, optimizer=optimizer, progress=False)


# ----------------------------------------------------------------------------------------------------------
# a callable loss that returns NaN / inf or raises: named where it happens


def _broken_loss(after: int, value: float = math.nan, *, gradient: bool = False, raises: bool = False):
    r"""A module with ``w`` (2,) and a Rosenbrock loss on it that, from call ``after + 1`` on, returns ``value``
    (``gradient``: a finite loss with a NaN gradient; ``raises``: raises); ``calls`` counts the calls."""
    module = torch.nn.Module()
    module.w = torch.nn.Parameter(torch.tensor([-1.2, 1.0], dtype=DT))
    calls = []

    def my_loss(*batch):
        calls.append(1)
        w = module.w
        f = (1 - w[0]) ** 2 + 100 * (w[1] - w[0] ** 2) ** 2
        if len(calls) > after:
            if raises:
                raise ArithmeticError("my_loss failed")
            if gradient:  # sqrt at 0: value 0, gradient inf * 0 = NaN
                return f + torch.sqrt((w - w.detach()) ** 2).sum()
            return f * value
        return f

    return module, my_loss, calls


@pytest.mark.parametrize("value", [math.nan, math.inf])
@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_a_callable_loss_that_is_not_finite_at_the_start_is_named(optimizer, value):
    r"""NaN or inf from the first call raised NotPSDError "the covariance matrix could not be factorised even with
    Cholesky jitter", which a plain callable has no part in; the error names the callable, its file, what it
    returned and where, and the parameters are left at their starting values."""
    module, my_loss, _ = _broken_loss(0, value)
    start = module.w.detach().clone()
    with pytest.raises(LossNotFiniteError) as info:
        fit(my_loss, module=module, optimizer=optimizer, epochs=20, progress=False)
    where = "the starting point (L-BFGS-B evaluation 1)" if optimizer == "lbfgs" else "Adam epoch 0"
    msg = str(info.value)
    assert "my_loss (" in msg and "test_fitting.py:" in msg, msg
    assert f"returned {'NaN' if math.isnan(value) else 'inf'} at {where}" in msg, msg
    assert isinstance(info.value, ValueError) and isinstance(info.value, NotPSDError)  # and the old type
    torch.testing.assert_close(module.w.detach(), start, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("kind", ["named", "not_psd", "not_finite"])
def test_a_fit_that_fails_in_every_attempt_leaves_the_train_eval_modes(kind):
    r"""Every attempt fails, so :func:`fit` raises: the named ValueError (a NaN kernel), NotPSDError (a negative
    definite kernel), LossNotFiniteError (a callable returning NaN). The modes of every submodule are those before the
    call (here mixed: the model in train mode, its likelihood in eval mode). Before: the module was put in eval mode
    before raising, against fit's docstring."""
    X = torch.rand(15, 1, dtype=DT, generator=torch.Generator().manual_seed(1))
    if kind == "not_finite":
        module, objective, _ = _broken_loss(0)
        module.inner = torch.nn.Linear(1, 1)
        module.inner.eval()
        error, kw = LossNotFiniteError, {"module": module}
    else:
        kernel = NaNKernel() if kind == "named" else NegativeKernel()
        model = ExactGPModel(X, torch.sin(5 * X), covar_module=kernel)
        model.train()
        model.likelihood.eval()
        module = objective = ExactMarginalLogLikelihood(model.likelihood, model)
        error, kw = (ValueError if kind == "named" else NotPSDError), {}
    before = {name: m.training for name, m in module.named_modules()}
    assert len(set(before.values())) == 2  # both modes present
    with pytest.raises(error):
        fit(objective, progress=False, restarts=0 if kind == "not_finite" else 1, seed=0, max_iter=5, **kw)
    assert {name: m.training for name, m in module.named_modules()} == before


def test_adam_names_the_epoch_and_minibatch_where_the_loss_became_nan():
    r"""NaN at epoch 3 (full batch) or at the third minibatch of epoch 1 was reported as "the covariance matrix could
    not be factorised"; with minibatches the step had already made every parameter NaN. The loss is now checked
    where the callable returns it, before the step; a finite loss with a NaN gradient is named too."""
    module, my_loss, _ = _broken_loss(3)
    with pytest.raises(LossNotFiniteError, match=r"my_loss \(.*\) returned NaN at Adam epoch 3\."):
        fit(my_loss, module=module, optimizer="adam", epochs=20, progress=False)
    batches = [(torch.zeros(1),)] * 4
    module, my_loss, _ = _broken_loss(6)
    with pytest.raises(LossNotFiniteError, match=r"returned NaN at Adam epoch 1, minibatch 2\."):
        fit(my_loss, module=module, optimizer="adam", data_loader=batches, epochs=20, progress=False)
    assert torch.isfinite(module.w).all()
    module, my_loss, _ = _broken_loss(2, gradient=True)
    with pytest.raises(LossNotFiniteError, match=r"finite loss with a non-finite gradient for `w` at Adam epoch 2"):
        fit(my_loss, module=module, optimizer="adam", epochs=20, progress=False)


def test_lbfgs_that_stops_on_a_nan_trial_point_warns_and_is_not_converged():
    r"""L-BFGS-B counts a non-finite trial point as an infinite loss and backtracks; a callable that stayed NaN from
    evaluation 9 on ended the run there, and fit reported converged=True at loss 4.09 (the minimum is 0) without a
    word. It now warns, naming the callable and the evaluation, and reports converged=False; the parameters are the
    best finite evaluation's (the loss recomputed there is the reported one)."""
    module, my_loss, calls = _broken_loss(8)
    with pytest.warns(ConvergenceWarning, match=r"my_loss \(.*\) returned NaN at L-BFGS-B evaluation 8 "):
        result = fit(my_loss, module=module, optimizer="lbfgs", progress=False)
    assert not result.converged
    w = module.w.detach()
    assert float((1 - w[0]) ** 2 + 100 * (w[1] - w[0] ** 2) ** 2) == pytest.approx(result.loss, rel=1e-12)


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_an_error_inside_a_callable_loss_says_where_fit_called_it(optimizer):
    r"""An exception raised by the callable propagates as it is (its traceback ends in the callable), with notes
    naming the optimiser step and the callable (none before)."""
    module, my_loss, calls = _broken_loss(4, raises=True)
    with pytest.raises(ArithmeticError, match="my_loss failed") as info:
        fit(my_loss, module=module, optimizer=optimizer, epochs=20, progress=False)
    notes = " ".join(getattr(info.value, "__notes__", []))
    step = "L-BFGS-B evaluation 4" if optimizer == "lbfgs" else "Adam epoch 4"  # lbfgs: call 1 is the probe
    assert f"at {step}." in notes and "my_loss (" in notes and "attempt 0" in notes, notes


# ----------------------------------------------------------------------------------------------------------
# minibatch order: a function of (seed, attempt) only


class _Slope(gpytorch.Module):
    r"""``y ~ a x`` with ``a > 0`` under a Gamma prior (restarts draw ``a`` from it, whatever its current value)."""

    def __init__(self, a0: float) -> None:
        super().__init__()
        self.register_parameter("raw_a", torch.nn.Parameter(torch.tensor(a0, dtype=DT)))
        self.register_constraint("raw_a", gpytorch.constraints.Positive())
        self.register_prior("a_prior", gpytorch.priors.GammaPrior(4.0, 2.0), lambda m: m.a, lambda m, v: m._set_a(v))
        self.raw_a.data = self.raw_a_constraint.inverse_transform(torch.tensor(a0, dtype=DT))

    @property
    def a(self) -> torch.Tensor:
        return self.raw_a_constraint.transform(self.raw_a)

    def _set_a(self, value) -> None:
        self.raw_a.data = self.raw_a_constraint.inverse_transform(torch.as_tensor(value, dtype=DT))


_XS = torch.linspace(0.1, 2.0, 40, dtype=DT)
_YS = 1.7 * _XS + 0.3 * torch.sin(17 * _XS)


def _slope_fit(a0: float, loader, executor=None, seen=None) -> tuple[FitResult, _Slope]:
    module = _Slope(a0)

    def loss(index, y):
        if seen is not None:
            seen.append(index.clone())
        return (module.a * _XS[index] - y).square().mean()

    kw = {"lr": 0.05, "epochs": 60, "patience": 3, "rel_tol": 1e-3, "restarts": 2, "seed": 3, "progress": False}
    return fit(loss, module=module, data_loader=loader, executor=executor, **kw), module


def _loaders():
    from gpgeom.botorch.low_rank import Minibatches

    idx = torch.arange(40)
    yield Minibatches(idx, _YS, 8, torch.Generator().manual_seed(11))
    yield DataLoader(TensorDataset(idx, _YS), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(11))


@pytest.mark.parametrize("kind", [0, 1], ids=["Minibatches", "DataLoader-with-generator"])
def test_minibatch_fit_with_restarts_is_bitwise_the_same_with_an_executor(kind):
    # the old Minibatches (and a DataLoader with its own generator) kept one generator for all attempts: serially,
    # attempt k shuffled on from where attempt k - 1 stopped, while each executor task started from a pickled copy in
    # the initial state, so attempts 1 and 2 differed (final losses ~1e-4 apart)
    from concurrent.futures import ThreadPoolExecutor

    serial, m_serial = _slope_fit(0.5, list(_loaders())[kind])
    with ThreadPoolExecutor(2) as threads:
        par, m_par = _slope_fit(0.5, list(_loaders())[kind], executor=threads)
    assert len(set(serial.final_losses)) == 3 and len({len(h) for h in serial.history}) > 1  # not vacuous
    assert par.final_losses == serial.final_losses and par.history == serial.history
    assert par.best_attempt == serial.best_attempt and torch.equal(m_par.raw_a, m_serial.raw_a)


@pytest.mark.parametrize("kind", [0, 1], ids=["Minibatches", "DataLoader-with-generator"])
def test_an_attempts_minibatch_order_does_not_depend_on_the_other_attempts(kind):
    from gpgeom.engine.parallel import derive_seed

    # attempt 0 starts from a0 (and stops after a number of epochs that depends on it); attempts 1 and 2 start from
    # prior draws, so they must not depend on a0 at all
    seen = []
    near, _ = _slope_fit(1.7, list(_loaders())[kind], seen=seen)
    far, _ = _slope_fit(20.0, list(_loaders())[kind])
    assert len(near.history[0]) != len(far.history[0])  # attempt 0 ran a different number of epochs
    assert near.history[1:] == far.history[1:] and near.final_losses[1:] == far.final_losses[1:]
    if kind == 1:  # a DataLoader draws its iterator's base seed from the generator first: no plain randperm
        return
    # the order itself: attempt k's first epoch is the permutation of derive_seed(3, k, 1)
    first = 0
    for k, hist in enumerate(near.history):
        order = torch.cat(seen[first : first + 5])
        truth = torch.randperm(40, generator=torch.Generator().manual_seed(derive_seed(3, k, 1)))
        assert torch.equal(order, truth)
        first += 5 * len(hist)
    assert first == len(seen)


# ----------------------------------------------------------------------------------------------------------
# plain GPyTorch models (no BoTorch input transforms)


class _PlainExactGP(gpytorch.models.ExactGP):
    def __init__(self, x, y, likelihood):
        super().__init__(x, y, likelihood)
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = ScaleKernel(RBFKernel())

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def test_a_plain_gpytorch_exact_gp_is_fitted_to_a_stationary_point():
    r"""``fit`` accepts any GPyTorch MLL: a plain ``gpytorch.models.ExactGP`` (no ``transform_inputs``; before,
    BoTorch's loss closure raised AttributeError) is fitted to a point where the gradient of the independently
    evaluated loss vanishes, and the reported loss is that loss."""
    x = torch.linspace(0, 1, 20, dtype=DT)[:, None]
    y = torch.sin(6 * x[:, 0]) + 0.1 * torch.cos(23 * x[:, 0])
    likelihood = GaussianLikelihood().double()
    model = _PlainExactGP(x, y, likelihood).double()
    mll = ExactMarginalLogLikelihood(likelihood, model)
    start = neg_mll(mll)
    result = fit(mll, progress=False, seed=0)
    assert result.converged and result.loss < start - 1.0
    assert result.loss == pytest.approx(neg_mll(mll), rel=1e-12, abs=1e-12)
    model.train()
    loss = -mll(model(x), y, x)
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    assert max(float(g.abs().max()) for g in grads) < 1e-3


def test_a_convergence_warning_raised_as_an_error_puts_the_module_back():
    r"""Under ``-W error`` the ConvergenceWarning of a fit stopped on a non-finite loss is an exception: ``fit``
    raises it with the module as it was (parameters and train/eval modes), as for any fit that raises; before, the
    best parameters stayed loaded and every submodule was left in eval mode."""
    module, my_loss, _ = _broken_loss(8)
    module.sub = torch.nn.Linear(1, 1)
    module.train()
    module.sub.eval()
    before = module.w.detach().clone()
    modes = {n: m.training for n, m in module.named_modules()}
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        with pytest.raises(ConvergenceWarning):
            fit(my_loss, module=module, optimizer="lbfgs", progress=False)
    assert torch.equal(module.w.detach(), before)
    assert {n: m.training for n, m in module.named_modules()} == modes

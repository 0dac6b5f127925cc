r"""One rule for every model: a ``fit`` that raises half-way (an exception of the loss, ``KeyboardInterrupt``, an
exception of a callback) leaves the model as it was before the call: unfitted (still ``NotFittedError``), or its
previous fit with bit-equal parameters, buffers, fitted attributes and predictions. And ``StopIteration`` from a
callback ends the fit early and keeps it: the fit of exactly the steps (sweeps) run, as a fit told to run that many.

The interruption is injected where every optimiser passes: ``gpgeom.engine.optimizers._backward`` (called once per
L-BFGS-B evaluation and per Adam step), raising at its ``k``-th call."""

from __future__ import annotations

import math
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from trajectory_factories import uwb_ranges

import gpgeom.engine.optimizers as optimizers
from gpgeom.botorch import ExactGPModel
from gpgeom.datasets.tensors import make_synthetic_tensor
from gpgeom.datasets.trajectories import FastTrajectory
from gpgeom.datasets.vector_fields import sphere_vector_field
from gpgeom.engine.attempts import merge_members
from gpgeom.engine.fitting import fit as engine_fit
from gpgeom.engine.optimizers import Attempt
from gpgeom.errors import NotFittedError
from gpgeom.models.funbat import FunBaT
from gpgeom.models.rgnp import RGNP
from gpgeom.models.rvgp import RVGP
from gpgeom.models.trajectory import CustomMeasurement, SO3xR3Trajectory
from gpgeom.pde import NonlinearPoisson1D

D = torch.float64
ERRORS = [RuntimeError("boom"), KeyboardInterrupt()]
SMALL_GIC = dict(lift_channels=4, lift_hidden=(8,), cnn_channels=(4, 4), mlp_hidden=(8,), grid_size=8)


def _raise_at(monkeypatch, k: int, error: BaseException) -> list[int]:
    r"""Make the ``k``-th backward pass of the engine's optimisers raise ``error``; returns the call counter."""
    calls: list[int] = []
    real = optimizers._backward

    def backward(loss):
        calls.append(1)
        if len(calls) == k:
            raise error
        real(loss)

    monkeypatch.setattr(optimizers, "_backward", backward)
    return calls


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def _assert_same(a, b) -> None:
    r"""Bit-equal predictions (a tensor or a tuple of tensors)."""
    a, b = (a, b) if isinstance(a, tuple) else ((a,), (b,))
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# models, their predictions and their fitted attributes


def _exact():
    x = torch.linspace(0, 1, 25, dtype=D)[:, None]
    y = torch.sin(6 * x) + 0.05 * torch.cos(40 * x)
    # 3 iterations: not converged, so that a refit moves on (a refit from an optimum stops at its first evaluation)
    return ExactGPModel(x, y), lambda m: m.fit(progress=False, max_iter=3)


def _exact_predict(m):
    return m.predict(torch.linspace(-0.1, 1.1, 13, dtype=D)[:, None], return_std=True)


def _rvgp():
    rng = np.random.default_rng(0)
    s = sphere_vector_field(120, "mixed", seed=rng)
    tr = rng.choice(120, 50, replace=False)
    y = s.vectors[tr] + 0.1 * rng.standard_normal((50, 3))
    return RVGP(s.points, n_eigenpairs=12, dim=2), lambda m: m.fit(tr, y, max_iter=20, restarts=0, progress=False)


def _rvgp_predict(m):
    return m.predict(np.arange(0, 120, 7), return_std=True)


def _rgnp(seed=0):
    m = RGNP.from_family(NonlinearPoisson1D(), hidden=(8,), n_freqs=2, gicnet=SMALL_GIC, batch_size=2, seed=seed)
    return m.double(), lambda m: m.fit(4, n_points=8, seed=1, progress=False)


def _rgnp_predict(m):
    z = m.z_low + (m.z_high - m.z_low) * torch.tensor([[0.3], [0.7]], dtype=D)
    x = torch.linspace(-0.9, 0.9, 9, dtype=D)[:, None]
    w = None if m.dim_w == 0 else (m.w_low + m.w_high) / 2
    return m.predict(z, w, x, return_std=True)


MODULE_MODELS = {
    "ExactGPModel": (_exact, _exact_predict, ("fit_result_", "_fit_jitter", "prediction_strategy")),
    "RVGP": (_rvgp, _rvgp_predict, ("fit_result_", "y_scale", "mode", "data_y", "noise_estimate", "train_index_")),
    "RGNP": (_rgnp, _rgnp_predict, ("fit_result_", "fit_history", "trained_sizes_", "calibration_")),
}


def _attributes(m, names):
    return {n: getattr(m, n, None) for n in names}


def _assert_same_attributes(a, b):
    for n in a:
        x, y = a[n], b[n]
        if isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor) and torch.equal(x, y), n
        elif isinstance(x, list):
            assert x == y, n
        else:
            assert x is y or x == y, n


@pytest.mark.parametrize("error", ERRORS, ids=["exception", "KeyboardInterrupt"])
@pytest.mark.parametrize("name", list(MODULE_MODELS))
def test_an_unfitted_model_stays_unfitted(name, error, monkeypatch):
    r"""A first fit that raises at its third evaluation: before, the networks / hyperparameters stayed at the
    failed iterate, and RGNP said it was fitted (``_fitted`` is set inside its objective). Afterwards the model is
    still unfitted, with its constructor's parameters (and predictions, where it predicts unfitted)."""
    make, predict, _ = MODULE_MODELS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m, do_fit = make()
    try:  # ExactGPModel, a BoTorch model, predicts from its prior hyperparameters before any fit
        pred = predict(m)
    except NotFittedError:
        pred = None
    before = _tensors(m)
    training = [mod.training for mod in m.modules()]
    _raise_at(monkeypatch, 3, error)
    with pytest.raises(type(error)), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        do_fit(m)
    _assert_same_tensors(_tensors(m), before)
    assert [mod.training for mod in m.modules()] == training
    assert not m.is_fitted
    monkeypatch.undo()
    if pred is None:
        with pytest.raises(NotFittedError):
            predict(m)
    else:
        _assert_same(predict(m), pred)


@pytest.mark.parametrize("error", ERRORS, ids=["exception", "KeyboardInterrupt"])
@pytest.mark.parametrize("name", list(MODULE_MODELS))
def test_a_fitted_model_keeps_its_fit(name, error, monkeypatch):
    r"""A refit that raises at its third evaluation: the parameters and buffers, the fitted attributes and the
    predictions are bit-equal to those before the call (before: the parameters of the failed iterate with the
    previous ``fit_result_``; RGNP had dropped nothing but moved its networks, RVGP had new data and scales)."""
    make, predict, names = MODULE_MODELS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m, do_fit = make()
        do_fit(m)
        pred = predict(m)
    tensors, attrs = _tensors(m), _attributes(m, names)
    attrs["fit_history"] = list(getattr(m, "fit_history", []))
    calls = _raise_at(monkeypatch, 3, error)
    with pytest.raises(type(error)), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        do_fit(m)
    assert len(calls) == 3
    _assert_same_tensors(_tensors(m), tensors)
    _assert_same_attributes(_attributes(m, names), attrs)
    assert list(getattr(m, "fit_history", [])) == attrs["fit_history"]
    assert m.is_fitted
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _assert_same(predict(m), pred)


def test_the_engine_puts_the_module_back():
    r"""``gpgeom.engine.fitting.fit`` on a callable loss that raises at its third Adam step: the module's parameters
    are those before the call (before: those after two steps)."""
    module = torch.nn.Linear(3, 1).double()
    start = _tensors(module)
    x = torch.randn(20, 3, dtype=D, generator=torch.Generator().manual_seed(0))
    calls = []

    def loss():
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return module(x).square().mean()

    with pytest.raises(KeyboardInterrupt):
        engine_fit(loss, module=module, optimizer="adam", epochs=10, lr=0.1, progress=False)
    _assert_same_tensors(_tensors(module), start)
    assert module.training


# ---------------------------------------------------------------------------------------------------------------
# StopIteration: stop early and keep the fit


def test_rgnp_stop_iteration_keeps_a_fit_of_k_steps():
    r"""``callback`` raising ``StopIteration`` at step 3 of 10: the fit is kept and equals ``fit(3)`` from the same
    start and seed, bit for bit (networks, history); ``fit_result_.stopped``, ``trained_sizes_`` recorded. Before,
    the ``StopIteration`` propagated (as a ``RuntimeError`` of the engine's generator) and the fit was lost."""
    seen = []

    def stop_at_3(step, loss):
        seen.append(step)
        if step == 3:
            raise StopIteration

    a, _ = _rgnp()
    before = _rgnp_predict(a) if a.is_fitted else None
    assert before is None
    a.fit(10, n_points=8, seed=1, progress=False, callback=stop_at_3)
    b, _ = _rgnp()
    b.fit(3, n_points=8, seed=1, progress=False)
    assert seen == [1, 2, 3]
    assert a.fit_result_.stopped and not b.fit_result_.stopped and not a.fit_result_.converged
    assert len(a.fit_history) == 3 and a.fit_history == b.fit_history
    _assert_same_tensors(_tensors(a), _tensors(b))
    assert a.trained_sizes_ == b.trained_sizes_ == (8, 8)
    _assert_same(_rgnp_predict(a), _rgnp_predict(b))


def test_funbat_stop_iteration_keeps_a_fit_of_k_sweeps():
    r"""FunBaT's ``callback`` raising ``StopIteration`` after sweep 3 (of up to 20): the fit is kept, bit-equal to a
    fit with ``max_sweeps=3`` (predictions, ELBO history), ``fit_result_.stopped`` and its message say so."""
    data = make_synthetic_tensor(120, 30, n_modes=2, rank=2, n_coords=12, noise_sd=0.05, seed=1)

    def stop_after_3(model, entry):
        if entry["sweep"] == 2:
            raise StopIteration

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = FunBaT(2, max_sweeps=20, tol=0.0, n_restarts=0).fit(data.X_train, data.y_train, callback=stop_after_3)
        b = FunBaT(2, max_sweeps=3, tol=0.0, n_restarts=0).fit(data.X_train, data.y_train)
    assert a.fit_result_.stopped and "StopIteration" in a.fit_result_.message and not a.fit_result_.converged
    assert a.fit_result_.sweeps == 3 and a.fit_result_.elbo_history == b.fit_result_.elbo_history
    _assert_same(a.predict(data.X_test, return_std=True), b.predict(data.X_test, return_std=True))


@pytest.mark.parametrize("error", ERRORS, ids=["exception", "KeyboardInterrupt"])
def test_funbat_unfitted_stays_unfitted(error):
    r"""A first FunBaT fit whose callback raises after sweep 2: unfitted afterwards (``NotFittedError``)."""
    data = make_synthetic_tensor(120, 30, n_modes=2, rank=2, n_coords=12, noise_sd=0.05, seed=1)

    def fail(model, entry):
        if entry["sweep"] == 1:
            raise error

    m = FunBaT(2, max_sweeps=5, n_restarts=0)
    with pytest.raises(type(error)):
        m.fit(data.X_train, data.y_train, callback=fail)
    assert not m.is_fitted and m.fit_result_ is None if hasattr(m, "fit_result_") else not m.is_fitted
    with pytest.raises(NotFittedError):
        m.predict(data.X_test)


@pytest.mark.parametrize("error", ERRORS, ids=["exception", "KeyboardInterrupt"])
def test_trajectory_unfitted_stays_unfitted(error):
    r"""A first trajectory fit whose measurement raises on its third evaluation: unfitted, knots as constructed."""
    truth = FastTrajectory(kind="split", speed=10.0)
    traj = SO3xR3Trajectory.uniform(0.0, 2.0, 0.2)
    knots = traj.knots
    calls = []

    def residual(st, params=None):
        calls.append(1)
        if len(calls) == 3:
            raise error
        return st["p"][..., :1] * 0.0

    stop = CustomMeasurement(torch.tensor([0.5, 1.0], dtype=D), residual, residual_dim=1, sigma=1.0)
    with pytest.raises(type(error)), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traj.fit([uwb_ranges(truth, 2.0, rate=20.0, seed=1), stop])
    assert not traj.is_fitted and getattr(traj, "fit_result_", None) is None
    torch.testing.assert_close(traj.knots, knots, rtol=0, atol=0)
    with pytest.raises(NotFittedError):
        traj.predict(torch.tensor([0.5], dtype=D))


def test_large_buffers_are_not_copied_and_a_change_in_place_is_noted(monkeypatch):
    r"""Buffers above ``gpgeom.base._LARGE_BUFFER`` elements are not copied (an RVGP's eigenvectors can take
    gigabytes): the parameters still come back bit-equal; a large buffer changed in place before the error is named
    in a note on the error, and one left alone gives no note."""
    import gpgeom.base as base

    monkeypatch.setattr(base, "_LARGE_BUFFER", 0)  # every buffer is "large"
    make, predict, _ = MODULE_MODELS["RVGP"]
    model, fit = make()
    fit(model)
    before, pred = _tensors(model), predict(model)
    _raise_at(monkeypatch, 2, RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom") as info:
        fit(model)
    assert not any("was changed in place" in n for n in getattr(info.value, "__notes__", [])), [
        n[-300:] for n in info.value.__notes__
    ]
    _assert_same_tensors(_tensors(model), before)
    _assert_same(predict(model), pred)

    name, buf = next(iter(model.named_buffers()))
    real = optimizers._backward
    calls: list[int] = []

    def backward(loss):  # changes a buffer in place, then fails
        calls.append(1)
        if len(calls) == 2:
            buf.add_(1.0)
            raise RuntimeError("boom")
        real(loss)

    monkeypatch.setattr(optimizers, "_backward", backward)
    with pytest.raises(RuntimeError, match="boom") as info:
        fit(model)
    notes = [n for n in getattr(info.value, "__notes__", []) if "was changed in place" in n]
    assert len(notes) == 1 and repr(name) in notes[0]


def _stopping_loss(module, x, k):
    r"""``module(x)``'s mean square, raising ``StopIteration`` at its ``k``-th call (``k=0``: at every call)."""
    calls = []

    def loss():
        calls.append(1)
        if len(calls) == k or k == 0:
            raise StopIteration
        return module(x).square().mean()

    return loss, calls


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_stop_iteration_at_the_first_evaluations_keeps_the_fit(optimizer, k):
    r"""``StopIteration`` at evaluation ``k`` = 1, 2, 3 of a fit with restarts. Before: Adam at 1 and L-BFGS-B at 2
    raised NotPSDError ("failed in all 3 attempt(s) ... never finite"), L-BFGS-B at 1 let the raw StopIteration
    escape. Now the fit ends there, stopped, after one attempt: with nothing finite evaluated yet (Adam 1, L-BFGS-B
    1 and 2) at the start exactly, with the loss there (computed here); later, as a fit of the evaluations run
    (Adam: ``epochs=k-1``; L-BFGS-B at 3: its second evaluation is at the start)."""
    x = torch.randn(20, 3, dtype=D, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    module = torch.nn.Linear(3, 1).double()
    start = _tensors(module)
    with torch.no_grad():
        start_loss = float(module(x).square().mean())
    loss, calls = _stopping_loss(module, x, k)
    res = engine_fit(loss, module=module, optimizer=optimizer, epochs=10, lr=0.1, progress=False, restarts=2, seed=0)
    assert res.stopped and res.attempts == 1 and res.best_attempt == 0 and not res.converged and not res.failures
    if optimizer == "adam" and k == 3:  # two epochs ran: the fit of epochs=2 from the same start
        ref = torch.nn.Linear(3, 1).double()
        ref.load_state_dict(start)
        want = engine_fit(lambda: ref(x).square().mean(), module=ref, optimizer="adam", epochs=2, lr=0.1,
                          progress=False)  # fmt: skip
        assert res.loss == want.loss and res.history == want.history
        _assert_same_tensors(_tensors(module), _tensors(ref))
        return
    torch.testing.assert_close(_tensors(module), start, rtol=0, atol=1e-15)
    assert res.loss == pytest.approx(start_loss, rel=1e-12)


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_stop_iteration_at_every_evaluation_keeps_the_start(optimizer):
    r"""A loss that raises ``StopIteration`` at every call: nothing can be evaluated; the fit ends stopped at the
    start exactly with an infinite loss (before: NotPSDError for Adam, the raw StopIteration for L-BFGS-B)."""
    x = torch.randn(20, 3, dtype=D, generator=torch.Generator().manual_seed(0))
    module = torch.nn.Linear(3, 1).double()
    start = _tensors(module)
    loss, calls = _stopping_loss(module, x, 0)
    res = engine_fit(loss, module=module, optimizer=optimizer, epochs=10, progress=False, restarts=2, seed=0)
    assert res.stopped and res.attempts == 1 and res.loss == math.inf and len(calls) == 2  # the stop, one retry
    _assert_same_tensors(_tensors(module), start)
    assert not module.training


def test_merge_members_keeps_stopped():
    r"""An attempt split into groups of members: one group stopped (``StopIteration``), so the merged attempt is
    stopped (before: ``stopped`` was never copied, and the fit went on to the next attempt)."""
    parts = []
    for g, members in enumerate([np.array([0, 2]), np.array([1, 3])]):
        a = Attempt()
        a.members, a.member_losses, a.loss = members, np.array([1.0, 2.0]), 3.0
        a.trace, a.rows, a.stopped = [np.array([1.0, 2.0])], {"w": torch.zeros(2, 1)}, g == 0
        parts.append((0, a, 0, "", None))
    assert merge_members(parts, 4)[1].stopped
    for _, a, *_ in parts:
        a.stopped = False
    assert not merge_members(parts, 4)[1].stopped


def test_stop_iteration_in_a_group_of_members_ends_the_fit(monkeypatch):
    r"""End to end: a GP with 2 outputs (separate hyperparameters), 2 attempts split into groups of members on a
    thread pool (``split_members=True``); the 3rd backward pass (of attempt 0's first group) raises
    ``StopIteration``. The fit stops after attempt 0, as the serial fit does (before: attempt 1 ran too and
    ``stopped`` was False)."""
    g = torch.Generator().manual_seed(0)
    X = torch.rand(30, 2, generator=g, dtype=D)
    Y = torch.cat([torch.sin(6 * X[:, :1]), torch.cos(3 * X[:, 1:2])], 1)
    kw = dict(restarts=1, seed=5, max_iter=30, progress=False)
    models = [ExactGPModel(X, Y), ExactGPModel(X, Y)]
    for m in models:
        m.fast_mll = True  # the closed-form loss, which evaluates a subset of the members (split_members needs it)
    _raise_at(monkeypatch, 3, StopIteration())
    serial = models[0].fit(**kw).fit_result_
    _raise_at(monkeypatch, 3, StopIteration())
    with ThreadPoolExecutor(2) as threads:
        split = models[1].fit(executor=threads, split_members=True, **kw).fit_result_
    assert serial.stopped and serial.attempts == 1
    assert split.stopped and split.attempts == 1


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_stop_iteration_at_the_first_evaluations_of_split_members(monkeypatch, k):
    r"""``StopIteration`` at the ``k``-th evaluation of the loss (any evaluation, with or without gradients) of a fit
    whose attempts are split into groups of members on a thread pool. Before: ``k=1`` (the probe for the members)
    was swallowed and every attempt ran (``stopped`` False); ``k=2`` raised TypeError in ``merge_members`` (a group
    stopped at its probe had no members, trace or member losses); ``k=3`` an IndexError (a group's empty trace).
    Now the fit ends stopped after one attempt, and its loss is the loss of the parameters it returns (every
    member evaluated at least once), recomputed here with GPyTorch's ``ExactMarginalLogLikelihood``."""
    from gpytorch.mlls import ExactMarginalLogLikelihood

    import gpgeom.engine.attempts as attempts

    g = torch.Generator().manual_seed(0)
    X = torch.rand(30, 2, generator=g, dtype=D)
    Y = torch.cat([torch.sin(6 * X[:, :1]), torch.cos(3 * X[:, 1:2])], 1)
    calls: list[int] = []
    real = attempts.FitJob.losses

    def losses(self):
        full, batch, batches = real(self)

        def counted(*args, **kwargs):
            calls.append(1)
            if len(calls) == k:
                raise StopIteration
            return full(*args, **kwargs)

        counted.accepts_batch_indices = full.accepts_batch_indices
        return counted, batch, batches

    monkeypatch.setattr(attempts.FitJob, "losses", losses)
    model = ExactGPModel(X, Y)
    model.fast_mll = True  # the closed-form loss, which evaluates a subset of the members (split_members needs it)
    with ThreadPoolExecutor(2) as threads:
        res = model.fit(executor=threads, split_members=True, restarts=1, seed=5, max_iter=30, progress=False)
    res = res.fit_result_
    assert res.stopped and res.attempts == 1 and res.best_attempt == 0 and not res.failures
    assert math.isfinite(res.loss) and len(res.history) == 1
    if k == 1:
        assert len(calls) == 2  # the probe that stopped, and the loss at the start
    model.train()
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    with torch.no_grad():
        want = float(-mll(model(*model.train_inputs), model.train_targets).sum())
    assert res.loss == pytest.approx(want, rel=1e-8)


def test_stop_iteration_at_the_first_minibatch_does_not_evaluate_the_full_loss():
    r"""Adam on the minibatches of a data loader, stopped at its first minibatch (before any step): the start is
    kept exactly, with ``loss = inf``, and the objective is never called on the full data (before: once, without
    arguments, to give the start its loss: the full data that the minibatches may be there to avoid)."""
    x = torch.randn(20, 3, dtype=D, generator=torch.Generator().manual_seed(0))
    module = torch.nn.Linear(3, 1).double()
    start = _tensors(module)
    calls: list[int] = []  # the number of arguments of every call (0: the full data)

    def loss(*batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise StopIteration
        data = batch[0] if batch else x
        return module(data).square().mean()

    loader = [(x[:10],), (x[10:],)]
    res = engine_fit(loss, module=module, optimizer="adam", data_loader=loader, epochs=5, progress=False, restarts=1,
                     seed=0)  # fmt: skip
    assert res.stopped and res.attempts == 1 and res.loss == math.inf and not res.failures
    assert calls == [1]  # the stopped minibatch only
    _assert_same_tensors(_tensors(module), start)

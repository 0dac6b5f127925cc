r"""Global side effects of the public API: a call with an explicit seed leaves the process as it found it.

Every step below (build, fit, predict, sample, save, load, calibrate, the data generators and the geometry helpers)
runs inside :func:`audit`, which snapshots before and compares after:

1. torch's CPU, numpy's legacy and Python's global random streams;
2. torch's default dtype, grad / inference mode, thread count, anomaly mode, deterministic algorithms, float32
   matmul precision, ``torch.distributions`` argument validation;
3. ``warnings.filters`` and ``warnings.showwarning``, the level and handlers of the root logger and of the loggers
   of gpgeom and the libraries below it, ``logging.disable``, ``numpy.geterr``, ``os.environ``;
4. every global GPyTorch, linear_operator and BoTorch setting, Pyro's validation flag, settings, effect-handler
   stack and parameter store (a parameter of the user's own stays there, with its value, and nothing is added);
5. the user's inputs (numpy arrays, tensors, their ``requires_grad`` and ``.grad``; meshes' points and cells).

Predictions must not alias the model's state (mutating a returned tensor in place leaves the next prediction as it
was), and ``predict`` leaves the ``training`` flag of an ``nn.Module`` model as it found it. ``seed=None`` draws
from torch's global stream by design (:mod:`gpgeom._seeds`); so do BoTorch's ``posterior(...).rsample()`` without a
sampler. Neither is called here.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import random
import warnings
from collections.abc import Callable
from typing import Any

import gpytorch
import numpy as np
import pyro
import pytest
import torch
import torch._dynamo  # noqa: F401 (see below)

# torch.func imports torch._dynamo on first use, which adds a warnings filter of sympy's and sets
# TORCHINDUCTOR_CACHE_DIR: torch's one-time import, not a call's side effect, so it happens above, first.
DT = torch.float64
_LOGGERS = ("", "gpgeom", "gpytorch", "linear_operator", "botorch", "pyro", "py.warnings")


# ----------------------------------------------------------------------------------------------------------------
# snapshots


def _settings() -> dict[str, Any]:
    import botorch.settings
    import linear_operator.settings

    out = {}
    for mod in (gpytorch.settings, linear_operator.settings, botorch.settings):
        for name, cls in vars(mod).items():
            if isinstance(cls, type) and cls.__module__ == mod.__name__:
                # the effective values (a context's exit may store the inherited default on the class itself)
                attrs = {a for klass in cls.__mro__[:-1] for a in vars(klass)}
                for attr in sorted(attrs):
                    raw = next(vars(k)[attr] for k in cls.__mro__ if attr in vars(k))
                    if attr.startswith("_") and not attr.startswith("__") and not callable(raw):
                        if not isinstance(raw, classmethod | staticmethod | property):
                            out[f"{mod.__name__}.{name}.{attr}"] = copy.copy(getattr(cls, attr))
    return out


def global_state() -> dict[str, Any]:
    r"""Everything a library call must leave as it found it (module docstring)."""
    store = pyro.get_param_store()
    return {
        "torch random stream": torch.get_rng_state(),
        "numpy random stream": np.random.get_state(),  # noqa: NPY002 (the legacy global stream)
        "python random stream": random.getstate(),
        "torch default dtype": torch.get_default_dtype(),
        "grad mode": torch.is_grad_enabled(),
        "inference mode": torch.is_inference_mode_enabled(),
        "torch threads": torch.get_num_threads(),
        "anomaly mode": (torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()),
        "deterministic algorithms": (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
        ),
        "float32 matmul precision": torch.get_float32_matmul_precision(),
        "distribution validation": torch.distributions.Distribution._validate_args,
        "warnings.filters": list(warnings.filters),
        "warnings.showwarning": warnings.showwarning,
        "loggers": {
            n: (lg.level, list(lg.handlers), lg.propagate, lg.disabled)
            for n, lg in ((n, logging.getLogger(n)) for n in _LOGGERS)
        },
        "logging.disable": logging.root.manager.disable,
        "numpy error handling": np.geterr(),
        "environment": dict(os.environ),
        "gpytorch/linear_operator/botorch settings": _settings(),
        "pyro validation": pyro.infer.util.is_validation_enabled(),
        "pyro settings": pyro.settings.get(),
        "pyro handler stack": list(pyro.poutine.runtime._PYRO_STACK),
        "pyro param store": {k: (id(v), v.detach().clone()) for k, v in store.items()},
    }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def assert_same_state(before: dict[str, Any], after: dict[str, Any], what: str) -> None:
    changed = [k for k in before if not _same(before[k], after[k])]
    for k in list(changed):
        if isinstance(before[k], dict) and isinstance(after[k], dict):
            keys = before[k].keys() | after[k].keys()
            changed += [f"{j}: {before[k].get(j, '<none>')} -> {after[k].get(j, '<none>')}" for j in sorted(keys)
                        if not _same(before[k].get(j, "<none>"), after[k].get(j, "<none>"))]  # fmt: skip
    assert not changed, f"{what} changed the process's global state: {changed}"


def _arrays(obj: Any, path: str, out: list, seen: set) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor | np.ndarray):
        out.append((path, obj))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _arrays(v, f"{path}[{k!r}]", out, seen)
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            _arrays(v, f"{path}[{i}]", out, seen)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _arrays(getattr(obj, f.name), f"{path}.{f.name}", out, seen)
    elif hasattr(obj, "points") and hasattr(obj, "cells"):  # a Mesh
        _arrays(obj.points, f"{path}.points", out, seen)
        _arrays(obj.cells, f"{path}.cells", out, seen)


def freeze(inputs: Any) -> list[tuple[str, Any, Any, Any]]:
    r"""``(path, object, copy, (requires_grad, grad copy))`` of every array and tensor in ``inputs``."""
    found: list = []
    _arrays(inputs, "input", found, set())
    out = []
    for path, x in found:
        if isinstance(x, torch.Tensor):
            grad = None if x.grad is None else x.grad.clone()
            out.append((path, x, x.detach().clone(), (x.requires_grad, grad, x.dtype)))
        else:
            out.append((path, x, x.copy(), (x.flags.writeable, x.dtype)))
    return out


def assert_unchanged(frozen: list, what: str) -> None:
    for path, x, saved, flags in frozen:
        if isinstance(x, torch.Tensor):
            grad = None if x.grad is None else x.grad.clone()
            now = (x.requires_grad, grad, x.dtype)
            same = x.shape == saved.shape and bool(((x.detach() == saved) | (x.isnan() & saved.isnan())).all())
            assert same, f"{what} modified {path} in place"
        else:
            now = (x.flags.writeable, x.dtype)
            assert np.array_equal(x, saved, equal_nan=True), f"{what} modified {path} in place"
        assert _same(now, flags), f"{what} changed the flags of {path}: {flags} -> {now}"


def audit(what: str, fn: Callable[[], Any], *inputs: Any) -> Any:
    r"""``fn()``, checked to leave the global state and ``inputs`` as they were."""
    before, frozen = global_state(), freeze(inputs)
    out = fn()
    assert_same_state(before, global_state(), what)
    assert_unchanged(frozen, what)
    return out


def _tensors(out: Any) -> list[torch.Tensor]:
    found: list = []
    _arrays(out, "out", found, set())
    return [t for _, t in found if isinstance(t, torch.Tensor) and t.is_floating_point()]


def check_predict(what: str, model: Any, predict: Callable[[], Any], *inputs: Any) -> Any:
    r"""``predict()`` under :func:`audit`; the training flag of an ``nn.Module`` model is kept; and mutating every
    returned tensor in place leaves the next prediction bitwise as the first."""
    mode = [m.training for m in model.modules()] if isinstance(model, torch.nn.Module) else None
    out = audit(what, predict, *inputs)
    if mode is not None:
        assert [m.training for m in model.modules()] == mode, f"{what} changed the model's training/eval mode"
    first = [t.detach().clone() for t in _tensors(out)]
    assert first, f"{what} returned no tensor"
    with torch.no_grad():
        for t in _tensors(out):
            t.add_(1.0)  # a user's in-place change of the result
    again = _tensors(predict())
    for i, (a, b) in enumerate(zip(first, again)):
        assert torch.equal(a, b.detach()), f"{what}: output {i} aliases the model's state (changed by add_)"
    if mode is not None and "posterior" not in what:  # BoTorch's ``posterior`` puts a model in eval mode, as BoTorch
        model.train()  # a user's: predict in eval mode, and leave the model in train mode
        in_train = _tensors(predict())
        assert all(m.training for m in model.modules()), f"{what} left a model in train mode in eval mode"
        model.train(mode[0])
        for m, flag in zip(model.modules(), mode):
            m.training = flag
        for i, (a, b) in enumerate(zip(first, in_train)):
            torch.testing.assert_close(b.detach(), a, rtol=1e-10, atol=1e-12, msg=f"{what} from train mode: output {i}")
    return out


@pytest.fixture(autouse=True)
def _user_state():
    r"""A user's state that the library must keep: a filter of theirs, a Pyro parameter, a logger level."""
    pyro.clear_param_store()
    pyro.param("user_param", torch.tensor([1.0, 2.0]))
    logging.getLogger().setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="a filter of the user's")
        yield
    logging.getLogger().setLevel(logging.WARNING)
    pyro.clear_param_store()


# ----------------------------------------------------------------------------------------------------------------
# models


def test_exact_gp_model(tmp_path):
    from gpgeom import ExactGPModel

    g = torch.Generator().manual_seed(0)
    X = torch.rand(20, 2, dtype=DT, generator=g)
    Y = torch.stack([torch.sin(5 * X[:, 0]), X.sum(-1)], -1) + 0.05 * torch.randn(20, 2, dtype=DT, generator=g)
    model = audit("ExactGPModel()", lambda: ExactGPModel(X, Y), X, Y)
    audit("ExactGPModel.fit", lambda: model.fit(max_iter=30, restarts=1, seed=0, progress=False), X, Y)
    Xt = torch.rand(5, 2, dtype=DT, generator=g)
    check_predict("ExactGPModel.predict", model, lambda: model.predict(Xt, return_std=True), Xt)
    check_predict("ExactGPModel.predict (numpy)", model, lambda: model.predict(Xt.numpy()), Xt)
    check_predict("ExactGPModel.posterior", model, lambda: model.posterior(Xt).mean, Xt)
    Xn, Yn = Xt[:2].clone(), torch.zeros(2, 2, dtype=DT)
    cond = audit("ExactGPModel.condition_on_observations", lambda: model.condition_on_observations(Xn, Yn), Xn, Yn)
    check_predict("conditioned ExactGPModel.predict", cond, lambda: cond.predict(Xt), Xt)
    audit("ExactGPModel.save", lambda: model.save(tmp_path / "e.pt"))
    back = audit("ExactGPModel.load", lambda: ExactGPModel.load(tmp_path / "e.pt"))
    check_predict("loaded ExactGPModel.predict", back, lambda: back.predict(Xt), Xt)


def test_surrogate_list_and_check_botorch_model():
    from gpgeom import ExactGPModel, SurrogateList, check_botorch_model

    g = torch.Generator().manual_seed(1)
    X = torch.rand(15, 2, dtype=DT, generator=g)
    Y = torch.stack([torch.sin(4 * X[:, 0]), torch.cos(3 * X[:, 1])], -1)
    a = ExactGPModel(X, Y[:, :1]).fit(max_iter=20, progress=False)
    b = ExactGPModel(X, Y[:, 1:]).fit(max_iter=20, progress=False)
    model = audit("SurrogateList()", lambda: SurrogateList(a, b))
    Xt = torch.rand(4, 2, dtype=DT, generator=g)
    check_predict("SurrogateList.predict", model, lambda: model.predict(Xt, return_std=True), Xt)
    check_predict("SurrogateList.posterior", model, lambda: model.posterior(Xt).variance, Xt)
    bounds = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=DT)
    audit(
        "check_botorch_model",
        lambda: check_botorch_model(a, bounds=bounds, optimize=False, batch_shapes=((),), qs=(2,), seed=3),
        bounds,
    )


def test_mmgp(tmp_path):
    from test_mmgp import _synthetic

    from gpgeom import MMGP

    M, mu, U, w = _synthetic(8, seed=0)
    Mt, mut, _, _ = _synthetic(2, seed=11)
    model = audit("MMGP()", lambda: MMGP(n_modes_geometry=2, n_modes_fields=2, restarts=0, max_iter=20))
    audit("MMGP.fit", lambda: model.fit(M, mu, U, w, progress=False), M, mu, U, w)
    mt = torch.as_tensor(mut)
    pred = lambda: model.predict(Mt, mt, return_std=True, n_samples=2)  # noqa: E731
    check_predict("MMGP.predict (samples)", model, pred, Mt, mt)
    check_predict("MMGP.predict (numpy)", model, lambda: model.predict(Mt, mut), Mt, mut)
    audit("MMGP.save", lambda: model.save(tmp_path / "m.pt"))
    back = audit("MMGP.load", lambda: MMGP.load(tmp_path / "m.pt"))
    check_predict("loaded MMGP.predict", back, lambda: back.predict(Mt, mut), Mt, mut)


def test_rvgp(tmp_path):
    from gpgeom import RVGP
    from gpgeom.datasets.vector_fields import sample_sphere, sphere_vector_field

    s = audit("sphere_vector_field", lambda: sphere_vector_field(120, "mixed", seed=1))
    tr = torch.as_tensor(np.random.default_rng(1).permutation(120)[:60])
    vec = torch.as_tensor(s.vectors[tr.numpy()])
    model = audit("RVGP()", lambda: RVGP(s.points, n_eigenpairs=10, dim=2), s.points)
    audit("RVGP.fit", lambda: model.fit(tr, vec, max_iter=20, restarts=1, seed=0, progress=False), tr, vec)
    idx = torch.arange(0, 120, 9)
    P = sample_sphere(6, seed=5) * 1.002
    check_predict("RVGP.predict", model, lambda: model.predict(idx, return_std=True), idx)
    check_predict("RVGP.predict_at", model, lambda: model.predict_at(P, return_std=True), P)
    check_predict("RVGP.posterior", model, lambda: model.posterior(idx[:, None].double()).mean, idx)
    audit("RVGP.save", lambda: model.save(tmp_path / "r.pt"))
    back = audit("RVGP.load", lambda: RVGP.load(tmp_path / "r.pt"))
    check_predict("loaded RVGP.predict", back, lambda: back.predict(idx), idx)


@pytest.mark.parametrize("cp", [False, True])
def test_funbat(tmp_path, cp):
    from gpgeom import FunBaT, FunBaTCP
    from gpgeom.datasets.tensors import make_synthetic_tensor

    d = audit("make_synthetic_tensor", lambda: make_synthetic_tensor(60, 6, rank=2, n_coords=6, seed=13))
    X, y = d.X_train.numpy().copy(), d.y_train.clone()
    y[0] = float("nan")  # a missing entry: masked inside, not written over
    model = audit("FunBaT()", lambda: FunBaTCP(2, max_sweeps=3) if cp else FunBaT(2, max_sweeps=3, n_restarts=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        audit("FunBaT.fit", lambda: model.fit(X, y, progress=False), X, y)
    Xt = d.X_test[:5].clone()
    check_predict("FunBaT.predict", model, lambda: model.predict(Xt, return_std=True), Xt)
    check_predict("FunBaT.predict_interval", model, lambda: model.predict_interval(Xt), Xt)
    surrogate = audit("FunBaT.as_botorch", model.as_botorch)
    check_predict("FunBaTBoTorchModel.posterior", surrogate, lambda: surrogate.posterior(Xt).mean, Xt)
    audit("FunBaT.save", lambda: model.save(tmp_path / "f.pt"))
    back = audit("FunBaT.load", lambda: FunBaT.load(tmp_path / "f.pt"))
    check_predict("loaded FunBaT.predict", back, lambda: back.predict(Xt), Xt)


def test_rgnp(tmp_path):
    from test_rgnp import SMALL_GIC

    from gpgeom import RGNP
    from gpgeom.pde import NonlinearPoisson1D

    fam = NonlinearPoisson1D()
    build = lambda: RGNP.from_family(  # noqa: E731
        fam, hidden=(8, 8), n_freqs=4, gicnet=SMALL_GIC, batch_size=4, n_points=8, seed=0, dtype=DT
    )
    model = audit("RGNP()", build)
    audit("RGNP.fit", lambda: model.fit(3, lr=1e-3, progress=False, seed=0))
    z = torch.tensor([[0.1, -0.2, 0.3, 0.0, 0.5]], dtype=DT)
    w = torch.tensor([[1.2]], dtype=DT)
    x = torch.linspace(-0.9, 0.9, 5, dtype=DT)[:, None]
    u = 0.3 * torch.cos(0.5 * torch.pi * x[:, 0])[None]
    check_predict("RGNP.predict", model, lambda: model.predict(z, w, x, return_std=True), z, w, x)
    check_predict("RGNP.predict_inverse", model, lambda: model.predict_inverse(x, u, w, return_std=True), x, u, w)
    gen = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    audit("RGNP.sample_grid", lambda: model.sample_grid(2, 6, generator=gen()))
    audit("RGNP.sample_params", lambda: model.sample_params(2, generator=gen()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        audit("RGNP.calibrate", lambda: model.calibrate(n_fields=4, n_points=8, seed=0, progress=False))
    audit("RGNP.save", lambda: model.save(tmp_path / "g.pt"))
    back = audit("RGNP.load", lambda: RGNP.load(tmp_path / "g.pt"))
    check_predict("loaded RGNP.predict", back, lambda: back.predict(z, w, x), z, w, x)


@pytest.mark.parametrize("name", ["SO3xR3Trajectory", "SE3Trajectory"])
def test_trajectory(tmp_path, name):
    import gpgeom
    from gpgeom.datasets.trajectories import FastTrajectory, perturbed_knots, simulate_pose
    from gpgeom.models.trajectory import PoseMeasurement

    cls = getattr(gpgeom, name)
    kt = torch.arange(0.0, 1.0 + 1e-9, 0.2, dtype=DT)
    truth = FastTrajectory(kind="split", speed=40.0)
    pose = audit("simulate_pose", lambda: simulate_pose(truth, torch.linspace(0, 1, 11, dtype=DT), seed=2))
    meas = PoseMeasurement(pose.t, R=pose.R, p=pose.p, sigma_rot=0.01, sigma_pos=0.02)
    model = audit(f"{name}()", lambda: cls(kt, prior="wnoa", qc_rot=[1.0, 2.0, 3.0], qc_pos=4.0), kt)
    knots = audit(
        "perturbed_knots", lambda: perturbed_knots(truth, kt, prior="wnoa", sigma_rot=0.1, sigma_pos=0.1, seed=3)
    )
    audit(f"{name}.set_knots", lambda: model.set_knots(**knots), knots)
    audit(f"{name}.fit", lambda: model.fit([meas], compute_covariances=True, progress=False), meas)
    tq = torch.linspace(0.0, 1.0, 7, dtype=DT)
    check_predict(f"{name}.predict", model, lambda: model.predict(tq, return_std=True), tq)
    check_predict(f"{name}.interpolate", model, lambda: model.interpolate(tq, covariance=True), tq)
    tn = tq.numpy().copy()
    for q in (tq, tn):  # the state's times are a copy: writing to them leaves the caller's times (they were them)
        saved = q.clone() if isinstance(q, torch.Tensor) else q.copy()  # np.array(tensor, copy=True) warned
        st = model.predict(q)
        st.t.add_(1.0)
        assert np.array_equal(np.asarray(q), np.asarray(saved)), f"{name}.predict returned the caller's t"
    audit(f"{name}.save", lambda: model.save(tmp_path / "t.pt"))
    back = audit(f"{name}.load", lambda: cls.load(tmp_path / "t.pt"))
    check_predict(f"loaded {name}.predict", back, lambda: back.predict(tq), tq)


def test_engine_fit_with_restarts_and_a_loader():
    from gpgeom.engine.fitting import fit

    g = torch.Generator().manual_seed(2)
    X = torch.rand(16, 1, dtype=DT, generator=g)
    y = torch.sin(6 * X[:, 0]) + 0.05 * torch.randn(16, dtype=DT, generator=g)

    from gpgeom import ExactGPModel

    model = ExactGPModel(X, y[:, None])
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
    audit("fit (L-BFGS-B, restarts)", lambda: fit(mll, restarts=2, max_iter=20, seed=0, progress=False), X, y)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(X, y), batch_size=8, shuffle=True, generator=torch.Generator()
    )
    net = torch.nn.Linear(1, 1).double()
    loss = lambda xb, yb: ((net(xb)[:, 0] - yb) ** 2).mean()  # noqa: E731
    audit(
        "fit (Adam, a loader, restarts)",
        lambda: fit(loss, module=net, data_loader=loader, epochs=3, seed=0, progress=False),
        X,
        y,
    )


# ----------------------------------------------------------------------------------------------------------------
# data generators and geometry helpers


def _dataset_calls() -> list[tuple[str, Callable[[], Any]]]:
    from gpgeom.datasets import trajectories as tr
    from gpgeom.datasets import vector_fields as vf
    from gpgeom.datasets.pde import make_test_set
    from gpgeom.pde import NonlinearPoisson1D

    truth = tr.FastTrajectory(kind="split", speed=40.0)
    return [
        ("random_rotation", lambda: vf.random_rotation(seed=0)),
        ("sample_sphere", lambda: vf.sample_sphere(20, seed=0)),
        ("sample_torus", lambda: vf.sample_torus(20, seed=0)),
        ("torus_vector_field", lambda: vf.torus_vector_field(30, seed=0)),
        ("ellipsoid_vector_field", lambda: vf.ellipsoid_vector_field(30, seed=0)),
        ("swiss_roll_vector_field", lambda: vf.swiss_roll_vector_field(30, seed=0)),
        ("simulate_uwb", lambda: tr.simulate_uwb(truth, 0.0, 1.0, seed=0)),
        ("simulate_tdoa", lambda: tr.simulate_tdoa(truth, torch.linspace(0, 1, 6, dtype=DT), seed=0)),
        ("simulate_imu", lambda: tr.simulate_imu(truth, torch.linspace(0, 1, 6, dtype=DT), seed=0)),
        ("PriorTrajectory", lambda: tr.PriorTrajectory(1.0, seed=0).state(torch.linspace(0, 1, 5, dtype=DT))),
        ("make_test_set", lambda: make_test_set(NonlinearPoisson1D(), 2, 8, seed=0)),
        ("NonlinearPoisson1D.sample_params", lambda: NonlinearPoisson1D().sample_params(3, np.random.default_rng(0))),
    ]


@pytest.mark.parametrize("name", [n for n, _ in _dataset_calls()])
def test_data_generators(name):
    fn = dict(_dataset_calls())[name]
    audit(name, fn)


def test_geometry_helpers():
    from test_mmgp import _plate

    from gpgeom import (
        Mesh,
        RBFMorphing,
        SnapshotPOD,
        connection_laplacian,
        floater_disk,
        graph_laplacian,
        mass_matrix,
        p1_transfer,
    )
    from gpgeom.datasets.vector_fields import sample_sphere
    from gpgeom.geometry import lie
    from gpgeom.geometry.tangent import tangent_frames

    mesh = _plate(6, 5, 0.3, -0.2)
    points, cells = mesh.points.copy(), mesh.cells.copy()
    audit("Mesh()", lambda: Mesh(points, cells), points, cells)
    audit("floater_disk", lambda: floater_disk(mesh), mesh)
    audit("mass_matrix", lambda: mass_matrix(mesh, 2), mesh)
    q = np.array([[0.2, 0.3], [0.7, 0.5]])
    audit("p1_transfer", lambda: p1_transfer(mesh, q), mesh, q)
    P = sample_sphere(60, seed=0)
    audit("connection_laplacian", lambda: connection_laplacian(P, k=8, dim=2), P)
    audit("graph_laplacian", lambda: graph_laplacian(P, k=8), P)
    audit("tangent_frames", lambda: tangent_frames(P, k_pca=10), P)
    snaps = np.random.default_rng(0).standard_normal((5, 12))
    audit("SnapshotPOD", lambda: SnapshotPOD(n_modes=2).fit(snaps), snaps)
    audit("RBFMorphing", lambda: RBFMorphing(q, q + 0.01).displacement(mesh.points), q, mesh)
    theta = torch.tensor([[0.1, -0.2, 0.3], [1.0, 0.5, -2.0]], dtype=DT, requires_grad=True)
    R = audit("so3_exp", lambda: lie.so3_exp(theta), theta)
    Rd = R.detach()
    audit("so3_log", lambda: lie.so3_log(Rd), Rd)
    audit("rotmat_to_quat", lambda: lie.rotmat_to_quat(Rd), Rd)
    xi = torch.cat([theta.detach(), theta.detach()], -1)
    audit("se3_exp / se3_log", lambda: lie.se3_log(lie.se3_exp(xi)), xi)
    assert theta.grad is None

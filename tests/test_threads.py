r"""Predictions of fitted models from several threads at once (``docs/contract.md``, *Threads*).

Every public model is fitted small, saved, and loaded afresh for each round, so that its lazy caches (training
factors, GPyTorch's prediction strategy, basis evaluations) are empty and the threads race to build them. Six threads
start together (a ``threading.Barrier``) and run every query set, each thread in its own order; each result must be
bitwise the serial reference of a freshly loaded model (``torch.equal``: one torch thread, ``OMP_NUM_THREADS=1``,
so there is no intra-op reduction order to vary). Afterwards the model's ``state_dict`` is unchanged, a serial
prediction is still bitwise the reference, and the process's global state (torch's default dtype and grad mode,
every GPyTorch / linear_operator / BoTorch setting, ``warnings.filters``, ...) is as before.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import torch
from test_global_state import assert_same_state, global_state

DT = torch.float64
N_THREADS = 6
ROUNDS = 3


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out.detach().clone()]
    if isinstance(out, tuple | list):
        return [t for o in out for t in _tensors(o)]
    if hasattr(out, "__dataclass_fields__") or hasattr(out, "__dict__"):
        return [t for k in sorted(vars(out)) for t in _tensors(vars(out)[k])]
    return []


def _state(model: Any) -> list[tuple[str, torch.Tensor]]:
    mods = [model] if isinstance(model, torch.nn.Module) else []
    mods += [v for v in vars(model).values() if isinstance(v, torch.nn.Module)] if not mods else []
    return [(k, v.detach().clone()) for m in mods for k, v in m.state_dict().items() if isinstance(v, torch.Tensor)]


def _same_outputs(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))


def race(fresh: Callable[[], Any], queries: dict[str, Callable[[Any], Any]], rounds: int = ROUNDS) -> None:
    r"""``queries[name](model)`` from :data:`N_THREADS` threads at once on a fresh model (``fresh()``), each
    result bitwise the serial one of another fresh model; the model's state and the process's global state kept."""
    ref_model = fresh()
    ref = {name: _tensors(q(ref_model)) for name, q in queries.items()}
    names = list(queries)
    before = global_state()
    for r in range(rounds):
        model = fresh()
        state = _state(model)
        barrier = threading.Barrier(N_THREADS)

        def work(i: int, model: Any = model, barrier: threading.Barrier = barrier, r: int = r) -> list[tuple[str, Any]]:
            order = names[i % len(names) :] + names[: i % len(names)]
            if (i + r) % 2:
                order = order[::-1]
            barrier.wait(timeout=60)
            return [(name, _tensors(queries[name](model))) for name in order]

        with ThreadPoolExecutor(N_THREADS) as pool:
            results = [f.result() for f in [pool.submit(work, i) for i in range(N_THREADS)]]
        for i, res in enumerate(results):
            for name, out in res:
                assert _same_outputs(out, ref[name]), f"round {r}, thread {i}: {name} differs from the serial one"
        after = _state(model)
        assert [k for k, _ in after] == [k for k, _ in state]
        for (k, a), (_, b) in zip(state, after):
            assert torch.equal(a, b), f"round {r}: {k} changed by the concurrent predictions"
        for name, q in queries.items():
            assert _same_outputs(_tensors(q(model)), ref[name]), f"round {r}: {name} after the threads differs"
    assert_same_state(before, global_state(), "concurrent predictions")


def _saved(tmp_path, model, load: Callable[[Any], Any], name: str) -> Callable[[], Any]:
    path = tmp_path / name
    model.save(path)
    return lambda: load(path)


# ----------------------------------------------------------------------------------------------------------------
# models


def _exact(tmp_path):
    from gpgeom import ExactGPModel

    g = torch.Generator().manual_seed(0)
    X = torch.rand(20, 2, dtype=DT, generator=g)
    Y = torch.stack([torch.sin(5 * X[:, 0]), X.sum(-1)], -1) + 0.05 * torch.randn(20, 2, dtype=DT, generator=g)
    model = ExactGPModel(X, Y).fit(max_iter=30, restarts=1, seed=0, progress=False)
    Xq = [torch.rand(n, 2, dtype=DT, generator=g) for n in (1, 5, 17)]
    return _saved(tmp_path, model, ExactGPModel.load, "e.pt"), Xq


def test_exact_gp_model(tmp_path):
    fresh, Xq = _exact(tmp_path)
    queries = {}
    for j, X in enumerate(Xq):
        queries[f"predict {j}"] = lambda m, X=X: m.predict(X, return_std=True)
        queries[f"posterior {j}"] = lambda m, X=X: (m.posterior(X).mean, m.posterior(X).variance)
        queries[f"posterior noisy {j}"] = lambda m, X=X: m.posterior(X, observation_noise=True).variance
        queries[f"joint {j}"] = lambda m, X=X: m.posterior(X[None]).mvn.covariance_matrix
    race(fresh, queries)


def test_exact_gp_model_conditioned(tmp_path):
    fresh, Xq = _exact(tmp_path)
    g = torch.Generator().manual_seed(3)
    Xn, Yn = torch.rand(3, 2, dtype=DT, generator=g), torch.randn(3, 2, dtype=DT, generator=g)

    def conditioned():
        m = fresh()
        m.posterior(Xq[0])  # condition_on_observations needs the prediction caches
        return m.condition_on_observations(Xn, Yn)

    queries = {}
    for j, X in enumerate(Xq):
        queries[f"predict {j}"] = lambda m, X=X: m.predict(X, return_std=True)
        queries[f"posterior {j}"] = lambda m, X=X: (m.posterior(X).mean, m.posterior(X).variance)
    race(conditioned, queries)


def test_surrogate_list(tmp_path):
    from gpgeom import ExactGPModel, SurrogateList

    g = torch.Generator().manual_seed(1)
    X = torch.rand(15, 2, dtype=DT, generator=g)
    Y = torch.stack([torch.sin(4 * X[:, 0]), torch.cos(3 * X[:, 1])], -1)
    a = ExactGPModel(X, Y[:, :1]).fit(max_iter=20, progress=False)
    b = ExactGPModel(X, Y[:, 1:]).fit(max_iter=20, progress=False)
    fa = _saved(tmp_path, a, ExactGPModel.load, "a.pt")
    fb = _saved(tmp_path, b, ExactGPModel.load, "b.pt")
    Xq = [torch.rand(n, 2, dtype=DT, generator=g) for n in (1, 4, 9)]
    queries = {}
    for j, Xt in enumerate(Xq):
        queries[f"predict {j}"] = lambda m, X=Xt: m.predict(X, return_std=True)
        queries[f"posterior {j}"] = lambda m, X=Xt: (m.posterior(X).mean, m.posterior(X).variance)
    race(lambda: SurrogateList(fa(), fb()), queries)


def test_mmgp(tmp_path):
    from test_mmgp import _synthetic

    from gpgeom import MMGP

    M, mu, U, w = _synthetic(8, seed=0)
    model = MMGP(n_modes_geometry=2, n_modes_fields=2, restarts=0, max_iter=20).fit(M, mu, U, w, progress=False)
    fresh = _saved(tmp_path, model, MMGP.load, "m.pt")
    queries = {}
    for j, seed in enumerate((11, 12)):
        Mt, mut, _, _ = _synthetic(1 + j, seed=seed)
        queries[f"predict {j}"] = lambda m, Mt=Mt, mut=mut: m.predict(Mt, mut, return_std=True)
    race(fresh, queries)


def test_rvgp(tmp_path):
    from gpgeom import RVGP
    from gpgeom.datasets.vector_fields import sample_sphere, sphere_vector_field

    s = sphere_vector_field(120, "mixed", seed=1)
    tr = torch.as_tensor(np.random.default_rng(1).permutation(120)[:60])
    model = RVGP(s.points, n_eigenpairs=10, dim=2)
    model.fit(tr, torch.as_tensor(s.vectors[tr.numpy()]), max_iter=20, restarts=1, seed=0, progress=False)
    fresh = _saved(tmp_path, model, RVGP.load, "r.pt")
    idx = [torch.arange(0, 120, 9), torch.arange(3)]
    P = [sample_sphere(6, seed=5) * 1.002, sample_sphere(2, seed=6)]
    queries = {}
    for j in range(2):
        queries[f"predict {j}"] = lambda m, i=idx[j]: m.predict(i, return_std=True)
        queries[f"predict_at {j}"] = lambda m, p=P[j]: m.predict_at(p, return_std=True)
        queries[f"posterior {j}"] = lambda m, i=idx[j]: (m.posterior(i[:, None].double()).mean,)
    race(fresh, queries)


def test_funbat(tmp_path):
    from gpgeom import FunBaT
    from gpgeom.datasets.tensors import make_synthetic_tensor

    d = make_synthetic_tensor(60, 6, rank=2, n_coords=6, seed=13)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = FunBaT(2, max_sweeps=3, n_restarts=1).fit(d.X_train.numpy(), d.y_train.clone(), progress=False)
    fresh = _saved(tmp_path, model, FunBaT.load, "f.pt")
    Xq = [d.X_test[:5].clone(), d.X_test[5:6].clone(), d.X_test[2:9].clone()]
    queries = {}
    for j, X in enumerate(Xq):
        queries[f"predict {j}"] = lambda m, X=X: m.predict(X, return_std=True)
        queries[f"interval {j}"] = lambda m, X=X: m.predict_interval(X)
    race(fresh, queries)
    # the BoTorch surrogate of a fresh model
    bq = {f"posterior {j}": (lambda m, X=X: (m.posterior(X).mean, m.posterior(X).variance)) for j, X in enumerate(Xq)}
    race(lambda: fresh().as_botorch(), bq)


def test_rgnp(tmp_path):
    from test_rgnp import SMALL_GIC

    from gpgeom import RGNP
    from gpgeom.pde import NonlinearPoisson1D

    model = RGNP.from_family(
        NonlinearPoisson1D(), hidden=(8, 8), n_freqs=4, gicnet=SMALL_GIC, batch_size=4, n_points=8, seed=0, dtype=DT
    )
    model.fit(3, lr=1e-3, progress=False, seed=0)
    fresh = _saved(tmp_path, model, RGNP.load, "g.pt")
    z = torch.tensor([[0.1, -0.2, 0.3, 0.0, 0.5], [0.0, 0.1, 0.2, -0.3, 0.1]], dtype=DT)
    w = torch.tensor([[1.2], [1.7]], dtype=DT)
    xs = [torch.linspace(-0.9, 0.9, n, dtype=DT)[:, None] for n in (5, 11)]
    queries = {}
    for j, x in enumerate(xs):
        u = 0.3 * torch.cos(0.5 * torch.pi * x[:, 0])[None]
        queries[f"predict {j}"] = lambda m, x=x: m.predict(z, w, x, return_std=True)
        queries[f"inverse {j}"] = lambda m, x=x, u=u: m.predict_inverse(x, u, w[:1], return_std=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # uncalibrated (once per model)
        race(fresh, queries)


@pytest.mark.parametrize("name", ["SO3xR3Trajectory", "SE3Trajectory"])
def test_trajectory(tmp_path, name):
    import gpgeom
    from gpgeom.datasets.trajectories import FastTrajectory, perturbed_knots, simulate_pose
    from gpgeom.models.trajectory import PoseMeasurement

    cls = getattr(gpgeom, name)
    kt = torch.arange(0.0, 1.0 + 1e-9, 0.2, dtype=DT)
    truth = FastTrajectory(kind="split", speed=40.0)
    pose = simulate_pose(truth, torch.linspace(0, 1, 11, dtype=DT), seed=2)
    meas = PoseMeasurement(pose.t, R=pose.R, p=pose.p, sigma_rot=0.01, sigma_pos=0.02)
    model = cls(kt, prior="wnoa", qc_rot=[1.0, 2.0, 3.0], qc_pos=4.0)
    model.set_knots(**perturbed_knots(truth, kt, prior="wnoa", sigma_rot=0.1, sigma_pos=0.1, seed=3))
    model.fit([meas], compute_covariances=True, progress=False)
    fresh = _saved(tmp_path, model, cls.load, "t.pt")
    queries = {}
    for j, tq in enumerate([torch.linspace(0.0, 1.0, 7, dtype=DT), torch.tensor([0.33, 0.9], dtype=DT)]):
        queries[f"predict {j}"] = lambda m, t=tq: m.predict(t, return_std=True)
        queries[f"interpolate {j}"] = lambda m, t=tq: m.interpolate(t, covariance=True)
    race(fresh, queries)


# ----------------------------------------------------------------------------------------------------------------
# GPyTorch / BoTorch settings are process-wide: a forced interleaving of two predictions


def _interleaved(model: Any, X: torch.Tensor) -> torch.Tensor:
    r"""``model.posterior(X)`` in threads A and B, forced to interleave where they could: A stops inside its
    prediction (in ``_joint_ok``, within every settings block) until B is inside its own (at most 1 s: with the
    settings lock B cannot get there), and B stays inside until A's prediction has returned. Returns B's variance."""
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    joint_ok, paused = model._joint_ok, set()

    def hook(*args: Any, **kwargs: Any) -> Any:
        who = threading.current_thread().name
        if who not in paused:
            paused.add(who)
            if who == "A":
                a_in.set()
                b_in.wait(timeout=1.0)
            else:
                b_in.set()
                assert a_out.wait(timeout=30.0)
        return joint_ok(*args, **kwargs)

    out = {}

    def run(who: str) -> None:
        if who == "B":
            assert a_in.wait(timeout=30.0)
        out[who] = model.posterior(X).variance
        if who == "A":
            a_out.set()

    model._joint_ok = hook
    try:
        threads = [threading.Thread(target=run, args=(w,), name=w) for w in "AB"]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        del model._joint_ok
    assert set(out) == {"A", "B"}
    return out["B"]


def test_interleaved_predictions_keep_each_others_settings(tmp_path):
    r"""Two predictions of a conditioned ExactGPModel, A's settings blocks entered first and left first. Before the
    settings lock, B entered BoTorch's posterior settings while A's were in force (``fast_pred_var`` already on:
    not entered again), A's exit turned them off under B, and B's exit put A's ``detach_test_caches`` back for
    good: B's variance differed from the serial one (by 9.6e-13 relative) and the model's
    ``max_cholesky_size`` (here 1000) stayed GPyTorch's after both."""
    import gpytorch

    from gpgeom import ExactGPModel

    g = torch.Generator().manual_seed(0)
    X = torch.rand(20, 2, dtype=DT, generator=g)
    Y = torch.stack([torch.sin(5 * X[:, 0]), X.sum(-1)], -1) + 0.05 * torch.randn(20, 2, dtype=DT, generator=g)
    model = ExactGPModel(X, Y, max_cholesky_size=1000).fit(max_iter=30, seed=0, progress=False)
    Xn, Yn = torch.rand(3, 2, dtype=DT, generator=g), torch.randn(3, 2, dtype=DT, generator=g)
    model.posterior(Xn)
    cond = model.condition_on_observations(Xn, Yn)
    Xt = torch.rand(17, 2, dtype=DT, generator=g)
    cholesky = gpytorch.settings.max_cholesky_size.value()
    before = global_state()
    ref = copy.deepcopy(cond).posterior(Xt).variance  # serial, on a copy with the same (empty) caches
    var_b = _interleaved(cond, Xt)
    assert torch.equal(var_b, ref)  # 9.6e-13 relative off before the lock
    assert gpytorch.settings.max_cholesky_size.value() == cholesky  # 1000 before the lock
    assert_same_state(before, global_state(), "interleaved predictions")


def test_interleaved_read_only_arrays_leave_the_warning_filters(monkeypatch):
    r"""``as_float_array`` of a read-only array (``Mesh.points``: MMGP's predictions convert them) in threads A
    and B, forced to interleave inside the conversion. It silenced torch's read-only warning inside
    ``warnings.catch_warnings()``, which is not thread-safe before Python 3.14: B's block saved A's filters, A's
    exit restored the old ones and B's exit put A's back, so an "ignore UserWarning" filter stayed for the whole
    process. Now a writeable copy is converted: the filters are untouched, no warning, the same values."""
    import gpgeom.geometry.mesh as mesh_module
    from gpgeom.geometry.mesh import as_float_array

    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    from_numpy = torch.from_numpy

    def hooked(arr: np.ndarray) -> torch.Tensor:
        who = threading.current_thread().name
        if who == "A":
            a_in.set()
            b_in.wait(timeout=1.0)
        elif who == "B":
            b_in.set()
            assert a_out.wait(timeout=30.0)
        return from_numpy(arr)

    monkeypatch.setattr(mesh_module.torch, "from_numpy", hooked)
    arrays = {w: np.arange(6.0).reshape(3, 2) + i for i, w in enumerate("AB")}
    for a in arrays.values():
        a.flags.writeable = False
    out = {}

    def run(who: str) -> None:
        if who == "B":
            assert a_in.wait(timeout=30.0)
        out[who] = as_float_array("points", arrays[who], ndim=2)
        if who == "A":
            a_out.set()

    filters = list(warnings.filters)
    threads = [threading.Thread(target=run, args=(w,), name=w) for w in "AB"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    monkeypatch.undo()
    assert warnings.filters == filters  # an "ignore UserWarning" filter more before
    for w in "AB":
        assert np.array_equal(np.asarray(out[w]), arrays[w])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(np.asarray(as_float_array("points", arrays["A"], ndim=2)), arrays["A"])


def test_refit_leaves_other_threads_predictions_free():
    r"""A refit of a fitted ExactGPModel (it starts in eval mode) in thread "refit", held inside its loss, while
    this thread predicts with another model. The refit held the prediction lock for its whole fit (its
    ``numerics`` block in eval mode): the prediction here waited for the refit's end (0.48 s behind a 200-point
    refit), and a thread-pool refit deadlocked against a thread-pool fit whose objective predicts (the refit
    waited for its attempts, which waited for the other fit's attempt holding the engine's state lock, which
    waited for the prediction lock). Now the prediction runs while the refit is held, and gives the serial value."""
    import gpytorch

    from gpgeom import ExactGPModel

    class GatedRBF(gpytorch.kernels.RBFKernel):
        gate: tuple[threading.Event, threading.Event, list[bool]] | None = None

        def forward(self, x1, x2, **kwargs):
            gate = GatedRBF.gate
            if gate is not None and threading.current_thread().name == "refit" and not gate[0].is_set():
                gate[0].set()  # in the refit's loss: wait (bounded) for the other thread's prediction
                gate[2].append(gate[1].wait(timeout=3.0))
            return super().forward(x1, x2, **kwargs)

    g = torch.Generator().manual_seed(0)
    X = torch.rand(20, 2, dtype=DT, generator=g)
    Y = torch.sin(5 * X[:, :1]) + 0.05 * torch.randn(20, 1, dtype=DT, generator=g)
    model = ExactGPModel(X, Y, covar_module=gpytorch.kernels.ScaleKernel(GatedRBF()))
    model.fast_mll = False  # GPyTorch's MLL: the loss calls the kernel's forward
    model.fit(max_iter=5, seed=0, progress=False)
    other = ExactGPModel(X, Y).fit(max_iter=5, seed=0, progress=False)
    Xt = torch.rand(7, 2, dtype=DT, generator=g)
    ref = other.predict(Xt, return_std=True)
    entered, done, waited = threading.Event(), threading.Event(), []
    GatedRBF.gate = (entered, done, waited)
    try:
        refit = threading.Thread(target=lambda: model.fit(max_iter=5, seed=1, progress=False), name="refit")
        refit.start()
        assert entered.wait(timeout=30.0)
        out = other.predict(Xt, return_std=True)  # waited for the refit's end before
        done.set()
        refit.join(timeout=60)
    finally:
        GatedRBF.gate = None
    assert not refit.is_alive()
    assert waited == [True]  # [False] before: the prediction came only after the refit gave up waiting for it
    assert all(torch.equal(a, b) for a, b in zip(out, ref))
    assert model.fit_result_ is not None and not model.training


@pytest.mark.parametrize("which", ["uncalibrated", "observed counts"])
def test_rgnp_once_per_model_warning_from_two_threads_at_once(which):
    r"""Two threads predict with one fresh RGNP at once, both where its "once per model" warning applies: the spread
    of an uncalibrated :meth:`predict`, or :meth:`predict_inverse` from 3 points of a model trained on grids of 8.
    The model's mark is slowed (its ``__setattr__`` waits, at most 0.5 s, for the other thread to reach it too),
    which forces the interleaving a thread switch allows: both threads checked the unmarked model before either
    marked it, and both warned (2 warnings, not 1). Now the check and the mark are one step under a lock: one
    warning, the model marked, the predictions the serial ones."""
    from test_rgnp import SMALL_GIC

    from gpgeom import RGNP
    from gpgeom.errors import UncalibratedWarning
    from gpgeom.pde import NonlinearPoisson1D

    mark = "_uncalibrated_warned" if which == "uncalibrated" else "_counts_warned"
    meeting = threading.Barrier(2)

    class SlowMark(RGNP):
        def __setattr__(self, name: str, value: Any) -> None:
            if name == mark and value:
                with contextlib.suppress(threading.BrokenBarrierError):
                    meeting.wait(timeout=0.5)
            super().__setattr__(name, value)

    model = SlowMark.from_family(
        NonlinearPoisson1D(), hidden=(8, 8), n_freqs=4, gicnet=SMALL_GIC, batch_size=4, n_points=8, seed=0, dtype=DT
    )
    model.fit(2, lr=1e-3, progress=False, seed=0)
    z = torch.tensor([[0.1, -0.2, 0.3, 0.0, 0.5]], dtype=DT)
    w = torch.tensor([[1.2]], dtype=DT)
    x = torch.linspace(-0.9, 0.9, 3, dtype=DT)[:, None]
    u = 0.3 * torch.cos(0.5 * torch.pi * x[:, 0])[None]
    if which == "uncalibrated":
        query = lambda: model.predict(z, w, x, return_std=True)  # noqa: E731
    else:
        query = lambda: model.predict_inverse(x, u, w, return_std=True)  # noqa: E731
    start = threading.Barrier(2)

    def work() -> Any:
        start.wait(timeout=30)
        return query()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ThreadPoolExecutor(2) as pool:
            outs = [f.result() for f in [pool.submit(work) for _ in range(2)]]
        ref = query()  # serial, the model marked: no further warning
    ours = [c for c in caught if issubclass(c.category, UncalibratedWarning)]
    assert len(ours) == 1, [str(c.message)[:60] for c in ours]  # 2 before the lock
    assert getattr(model, mark) is True
    assert all(_same_outputs(_tensors(out), _tensors(ref)) for out in outs)

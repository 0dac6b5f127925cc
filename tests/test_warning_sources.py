r"""Every warning gpgeom issues names the user's line: the ``filename`` and ``lineno`` of the recorded warning are
those of the public call in this file (marked ``# warns``), not a line inside gpgeom, torch or the standard library,
and its category is the documented one.

Before the audit, ``RGNP.predict`` before ``calibrate()`` and ``predict_inverse`` beyond the trained grid sizes named
``torch/utils/_contextlib.py`` (the ``@torch.no_grad()`` wrapper added a frame to a hand-counted ``stacklevel``),
and a dozen other warnings named a gpgeom module (the cases marked in ``BEFORE``). The warning sites now take their
``stacklevel`` from :func:`gpgeom._warnings.user_stacklevel`, which walks the stack to the first frame outside
gpgeom and the libraries it calls user code through.
"""

from __future__ import annotations

import importlib
import inspect
import re
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import torch

from gpgeom.errors import ConvergenceWarning, UncalibratedWarning

DT = torch.float64
SMALL_GIC = dict(lift_channels=4, lift_hidden=(8,), cnn_channels=(4,), mlp_hidden=(8,), grid_size=8)


def _marked_lines(fn) -> set[int]:
    r"""The line numbers of ``fn``'s lines marked ``# warns`` (the public calls expected to be named)."""
    lines, start = inspect.getsourcelines(fn)
    return {start + i for i, line in enumerate(lines) if line.rstrip().endswith("# warns")}


def _poisson(**kw):
    from gpgeom.models.rgnp import RGNP
    from gpgeom.pde import NonlinearPoisson1D

    torch.manual_seed(0)
    opts = dict(hidden=(8,), n_freqs=2, gicnet=SMALL_GIC, batch_size=2)
    opts.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return RGNP.from_family(NonlinearPoisson1D(), **opts).fit(1, progress=False, seed=0)


# ----- the triggers: each makes one public call, on a line marked "# warns" -----


def _rgnp_predict_uncalibrated():
    from gpgeom.pde import NonlinearPoisson1D

    m = _poisson()
    z, w = (torch.as_tensor(a) for a in NonlinearPoisson1D().sample_params(2, np.random.default_rng(0)))
    m.predict(z, w, torch.linspace(-1, 1, 5, dtype=z.dtype)[:, None], return_std=True)  # warns


def _rgnp_predict_inverse_counts():
    m = _poisson(n_points=20)
    w = torch.tensor([1.5], dtype=DT)
    x, u = torch.rand(2, 41, 1, dtype=DT) * 2 - 1, torch.rand(2, 41, dtype=DT)
    m.predict_inverse(x, u, w)  # warns


def _rgnp_predict_inverse_outside_box():
    m = _poisson(n_points=20)
    w = torch.tensor([1.5], dtype=DT)
    x, u = torch.linspace(-0.9, 0.9, 20, dtype=DT)[:, None], torch.full((20,), 1e6, dtype=DT)
    m.predict_inverse(x, u, w)  # warns


def _rgnp_fit_size_range():
    _poisson().fit(1, n_points=(4, 9), progress=False)  # warns


def _rgnp_fit_drops_calibration():
    m = _poisson().calibrate(n_fields=3, n_points=6, seed=0)
    m.fit(1, progress=False, seed=1)  # warns


def _funbat_grid():
    g = torch.cartesian_prod(torch.arange(6, dtype=DT), torch.arange(5, dtype=DT))
    return g[torch.randperm(30, generator=torch.Generator().manual_seed(0))[:20]]


def _funbat_not_converged():
    from gpgeom.models.funbat import FunBaT

    X = _funbat_grid()
    FunBaT(2, max_sweeps=1, seed=0).fit(X, torch.sin(X.sum(1)), progress=False)  # warns


def _funbat_zero_targets():
    from gpgeom.models.funbat import FunBaT

    FunBaT(2, max_sweeps=3, seed=0).fit(_funbat_grid(), torch.zeros(20, dtype=DT), progress=False)  # warns


def _funbat_single_target():
    from gpgeom.models.funbat import FunBaT

    FunBaT(2, max_sweeps=3, seed=0).fit(_funbat_grid()[:1], torch.tensor([0.25], dtype=DT), progress=False)  # warns


def _funbat_constant_targets():
    from gpgeom.models.funbat import FunBaT

    FunBaT(2, max_sweeps=3, seed=0).fit(_funbat_grid(), torch.full((20,), 3.7, dtype=DT), progress=False)  # warns


def _exact_constant_output():
    from gpgeom.botorch import ExactGPModel

    ExactGPModel(torch.rand(20, 2, dtype=DT), torch.full((20, 1), 3.7, dtype=DT))  # warns


def _exact_zero_output():
    from gpgeom.botorch import ExactGPModel

    ExactGPModel(torch.rand(20, 2, dtype=DT), torch.zeros(20, 1, dtype=DT))  # warns


def _engine_fit_nan_trial_point():
    from gpgeom.engine.fitting import fit

    module = torch.nn.Module()
    module.w = torch.nn.Parameter(torch.tensor([-1.2, 1.0], dtype=DT))
    calls = []

    def loss():
        calls.append(1)
        f = (1 - module.w[0]) ** 2 + 100 * (module.w[1] - module.w[0] ** 2) ** 2
        return f * float("nan") if len(calls) > 8 else f

    fit(loss, module=module, optimizer="lbfgs", progress=False)  # warns


def _sphere():
    from gpgeom.datasets.vector_fields import sphere_vector_field

    return sphere_vector_field(200, "mixed")


def _rvgp_zero_vectors():
    from gpgeom.models.rvgp import RVGP

    s = _sphere()
    tr = np.arange(0, 200, 4)
    RVGP(s.points, n_eigenpairs=16, dim=2).fit(tr, np.zeros((len(tr), 3)), restarts=0, max_iter=5)  # warns


def _rvgp_fitted():
    from gpgeom.models.rvgp import RVGP

    s = _sphere()
    tr = np.arange(0, 200, 4)
    return s, RVGP(s.points, n_eigenpairs=16, dim=2).fit(tr, s.vectors[tr], restarts=0, max_iter=5)


def _rvgp_predict_out_of_reach():
    s, gp = _rvgp_fitted()
    gp.predict_at(s.points[:3] * 60.0)  # warns


def _rvgp_extend_out_of_reach():
    s, gp = _rvgp_fitted()
    gp.extend(s.points[:3] * 60.0)  # warns


def _rvgp_disconnected():
    from gpgeom.models.rvgp import RVGP

    X = _sphere().points
    RVGP(np.concatenate([X, X + 10.0]), n_eigenpairs=10, dim=2)  # warns


def _proximity_graph_disconnected():
    from gpgeom.geometry.point_cloud import proximity_graph

    X = _sphere().points
    proximity_graph(np.concatenate([X, X + 10.0]), k=5)  # warns


def _tangent_frames_deficient():
    from gpgeom.geometry.tangent import tangent_frames

    t = np.linspace(0.0, 1.0, 30)
    line = np.stack([t, 2 * t, np.zeros_like(t)], 1)  # a straight line asked for a 2-d tangent space
    tangent_frames(line, dim=2, k_pca=5, fit="pca")  # warns


def _pod_rank():
    from gpgeom.geometry.pod import SnapshotPOD

    snapshots = np.outer(np.arange(1.0, 7.0), np.linspace(0.0, 1.0, 10))  # rank 1 after centring
    SnapshotPOD(n_modes=3).fit_transform(snapshots)  # warns


def _trajectory_set_knots_wrap():
    from gpgeom.geometry.lie import so3_exp
    from gpgeom.models.trajectory import SO3xR3Trajectory

    kt = torch.arange(0.0, 1.0 + 1e-9, 0.2, dtype=DT)
    ez = torch.tensor([0.0, 0.0, 1.0], dtype=DT)
    z = torch.zeros(6, 3, dtype=DT)
    spin = {"R": so3_exp(20.0 * kt[:, None] * ez), "omega": 20.0 * ez.expand(6, 3), "alpha": z, "p": z, "v": z, "a": z}
    SO3xR3Trajectory(kt).set_knots(**spin)  # warns


def _trajectory_fit_not_converged():
    from gpgeom.models.trajectory import KnotPrior, SO3xR3Trajectory

    traj = SO3xR3Trajectory.uniform(0.0, 1.0, 0.25)
    prior = KnotPrior(torch.arange(5), p=torch.rand(5, 3, dtype=DT), sigma=0.01)
    traj.fit([prior], max_iter=1, init="none")  # warns


def _gauss_newton_not_converged():
    from gpgeom.engine.factors import Factor
    from gpgeom.engine.least_squares import gauss_newton

    far = Factor(torch.tensor([[0]]), lambda x, g: torch.exp(x[:, 0]) - 10.0)  # exp(x) = 10: not in one step
    gauss_newton(torch.zeros(1, 1, dtype=DT), [far], max_iter=1)  # warns


def _item_warns(shared, item):
    warnings.warn(f"item {item} warns", UserWarning, stacklevel=1)
    return item


def _map_items_reissued():
    from gpgeom.engine.parallel import map_items

    with ProcessPoolExecutor(max_workers=1) as pool:
        map_items(pool, _item_warns, range(2))  # warns


def _mmgp_zero_scalar():
    from test_mmgp import _synthetic

    from gpgeom.models.mmgp import MMGP

    M, mu, U, w = _synthetic(6, seed=0)
    kw = {"n_modes_geometry": 2, "n_modes_fields": 2, "restarts": 0, "max_iter": 5, "floater_start": (0.0, 0.0)}
    w0 = np.concatenate([w, np.zeros((6, 1))], 1)
    MMGP(scalar_transform="none", **kw).fit(M, mu, U, w0, scalar_names=["a", "b", "dead"], progress=False)  # warns


def _mmgp_fitted(**kw):
    from test_mmgp import _synthetic

    from gpgeom.models.mmgp import MMGP

    M, mu, U, w = _synthetic(6, seed=0)
    opts = {"n_modes_geometry": 2, "n_modes_fields": 2, "restarts": 0, "max_iter": 5, "floater_start": (0.0, 0.0)}
    return M, mu, MMGP(**opts, **kw).fit(M, mu, U, w, progress=False)


def _mmgp_predict_repaired_mesh():
    from test_mesh_validity import _degenerate_plates

    M, mu, model = _mmgp_fitted(repair_meshes=True)
    mesh = _degenerate_plates(M[3])["duplicate"][0]
    model.predict([mesh], mu[3:4])  # warns


def _mmgp_old_file(tmp_path):
    M, mu, model = _mmgp_fitted()
    for f in model._fields:
        f.trunc_factor = None  # as a file written before the truncation residuals were kept
    model.save(tmp_path / "old.pt")
    return type(model), tmp_path / "old.pt"


def _mmgp_load_old_file(tmp_path):
    cls, path = _mmgp_old_file(tmp_path)
    cls.load(path)  # warns


def _gpgeom_load_old_mmgp_file(tmp_path):
    import gpgeom

    _, path = _mmgp_old_file(tmp_path)
    gpgeom.load(path)  # warns


def _graph_laplacian_disconnected():
    from gpgeom.geometry.connection import graph_laplacian

    X = _sphere().points
    graph_laplacian(np.concatenate([X, X + 10.0]), k=5)  # warns


def _trajectory_fit_wrap():
    from gpgeom.geometry.lie import so3_exp
    from gpgeom.models.trajectory import KnotPrior, SO3xR3Trajectory

    kt = torch.arange(0.0, 1.0 + 1e-9, 0.2, dtype=DT)
    ez = torch.tensor([0.0, 0.0, 1.0], dtype=DT)
    prior = KnotPrior(torch.arange(6), R=so3_exp(20.0 * kt[:, None] * ez), omega=20.0 * ez.expand(6, 3), sigma=0.01)
    SO3xR3Trajectory(kt, qc_rot=1e4).fit([prior], max_iter=20, warn=False)  # warns


def _trajectory_fit_init_auto():
    from gpgeom.datasets.trajectories import FastTrajectory, simulate_uwb
    from gpgeom.models.trajectory import RangeMeasurement, SO3xR3Trajectory

    flat = torch.tensor([[10.0, 10.0, 0.0], [-10.0, 10.0, 0.0], [-10.0, -10.0, 0.0], [10.0, -10.0, 0.0]], dtype=DT)
    fast = FastTrajectory(kind="heading", speed=30.0, pos_speed=9.0)
    uwb = simulate_uwb(fast, 0.0, 2.0, rate=10.0, anchors=flat, seed=1)  # coplanar anchors: no multilateration
    coplanar = RangeMeasurement(uwb.t, uwb.anchors, uwb.ranges, tag_offset=uwb.tag_offsets)
    SO3xR3Trajectory.uniform(0.0, 2.0, 0.1).fit([coplanar], max_iter=1, warn=False)  # warns


# name -> (category, a pattern of the message, the trigger)
CASES = {
    "RGNP.predict before calibrate": (UncalibratedWarning, r"before calibrate\(\)", _rgnp_predict_uncalibrated),
    "RGNP.predict_inverse beyond the trained sizes": (
        UncalibratedWarning,
        r"predict_inverse got sets of 41",
        _rgnp_predict_inverse_counts,
    ),
    "RGNP.predict_inverse outside the prior box": (
        UserWarning,
        r"posterior mean of z lies outside the prior box",
        _rgnp_predict_inverse_outside_box,
    ),
    "RGNP.fit n_points range": (UserWarning, r"is not told a set's size", _rgnp_fit_size_range),
    "RGNP.fit after calibrate": (UserWarning, r"the calibration is dropped", _rgnp_fit_drops_calibration),
    "FunBaT.fit max_sweeps": (ConvergenceWarning, r"FunBaT stopped at max_sweeps", _funbat_not_converged),
    "FunBaT.fit zero targets": (UserWarning, r"Every observed entry of `y` is zero", _funbat_zero_targets),
    "FunBaT.fit single target": (UserWarning, r"single observed entry", _funbat_single_target),
    "FunBaT.fit constant targets": (UserWarning, r"constant to rounding", _funbat_constant_targets),
    "ExactGPModel constant output": (UserWarning, r"constant to rounding", _exact_constant_output),
    "ExactGPModel zero output": (UserWarning, r"are all zero", _exact_zero_output),
    "engine fit NaN trial point": (ConvergenceWarning, r"not a converged optimum", _engine_fit_nan_trial_point),
    "RVGP.fit zero vectors": (UserWarning, r"Every observed vector is zero", _rvgp_zero_vectors),
    "RVGP.predict_at out of reach": (None, r"beyond the graph's reach", _rvgp_predict_out_of_reach),
    "RVGP.extend out of reach": (None, r"beyond the graph's reach", _rvgp_extend_out_of_reach),
    "RVGP disconnected graph": (UserWarning, r"connected components", _rvgp_disconnected),
    "proximity_graph disconnected": (UserWarning, r"connected components", _proximity_graph_disconnected),
    "tangent_frames deficient": (UserWarning, r"PCA neighbourhoods span fewer", _tangent_frames_deficient),
    "SnapshotPOD.fit_transform rank": (UserWarning, r"non-negligible energy", _pod_rank),
    "Trajectory.set_knots wrap": (UserWarning, r"set_knots: .*turns the short way", _trajectory_set_knots_wrap),
    "Trajectory.fit max_iter": (ConvergenceWarning, r"gauss_newton stopped after", _trajectory_fit_not_converged),
    "gauss_newton max_iter": (ConvergenceWarning, r"gauss_newton stopped after", _gauss_newton_not_converged),
    "map_items re-issues worker warnings": (UserWarning, r"item \d warns", _map_items_reissued),
    "MMGP.fit zero output scalar": (UserWarning, r"are zero on every training mesh", _mmgp_zero_scalar),
    "MMGP.predict repaired mesh": (None, r"is degenerate and was repaired", _mmgp_predict_repaired_mesh),
    "MMGP.load pre-truncation file": (UserWarning, r"written before the truncation", _mmgp_load_old_file),
    "gpgeom.load pre-truncation file": (UserWarning, r"written before the truncation", _gpgeom_load_old_mmgp_file),
    "graph_laplacian disconnected": (UserWarning, r"connected components", _graph_laplacian_disconnected),
    "Trajectory.fit wrapped knots": (UserWarning, r"fit: in the estimated knots", _trajectory_fit_wrap),
    "Trajectory.fit init auto": (UserWarning, r"init='auto': the ranges do not determine", _trajectory_fit_init_auto),
}
_CATEGORIES = {  # categories imported lazily: their modules import the models
    "MMGP.predict repaired mesh": ("gpgeom.errors", "MeshRepairWarning"),
    "RVGP.predict_at out of reach": ("gpgeom.models.rvgp", "OutOfReachWarning"),
    "RVGP.extend out of reach": ("gpgeom.models.rvgp", "OutOfReachWarning"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_public_call_gets_its_warning_at_its_own_line(name, tmp_path):
    category, pattern, trigger = CASES[name]
    if category is None:
        module, attr = _CATEGORIES[name]
        category = getattr(importlib.import_module(module), attr)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trigger(*([tmp_path] if inspect.signature(trigger).parameters else []))
    hits = [w for w in caught if re.search(pattern, str(w.message))]
    assert hits, (name, [str(w.message)[:80] for w in caught])
    expected = _marked_lines(trigger)
    for w in hits:
        assert w.category is category, (name, w.category)
        assert (w.filename, w.lineno) in {(__file__, line) for line in expected}, (name, w.filename, w.lineno)


# ----- the helper itself -----


def _nested_in_gpgeom():
    r"""A warning issued three calls deep inside gpgeom, through a ``torch.no_grad`` decorator (a frame of
    ``torch/utils/_contextlib.py``) and a ``contextlib.contextmanager`` used as a decorator (a frame of
    ``contextlib.py``): the functions are compiled here, then given the file name of a gpgeom module."""
    import contextlib

    from gpgeom import _warnings

    @contextlib.contextmanager
    def scope():
        yield

    def warn_here():
        warnings.warn("deep", UserWarning, stacklevel=_warnings.user_stacklevel())

    @torch.no_grad()
    def middle():
        warn_here()

    @scope()
    def outer():
        middle()

    for f in (warn_here, middle.__wrapped__, outer.__wrapped__):
        f.__code__ = f.__code__.replace(co_filename=_warnings.__file__)
    return outer


def test_user_stacklevel_skips_gpgeom_and_wrapper_frames():
    outer = _nested_in_gpgeom()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outer()  # warns
    (line,) = _marked_lines(test_user_stacklevel_skips_gpgeom_and_wrapper_frames)
    assert [(w.filename, w.lineno) for w in caught] == [(__file__, line)]

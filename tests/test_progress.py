r"""gpgeom's one progress rule (:mod:`gpgeom._progress`) at every long entry point, at small sizes.

``progress=False`` writes nothing to stdout/stderr; ``True`` writes a tqdm bar (its ``n/total`` counter); ``None``
under pytest (standard error is not a terminal) writes nothing; a non-bool is a ``TypeError`` naming ``progress``
before any work. Nested operations (restarts inside a fit, a fit inside a calibrate, the GPs of an MMGP, the
morphing of its meshes) leave at most one bar on screen with ``True`` (inner bars use ``leave=False``), and none with
``False``. A fit keeps its outer bar when done; a prediction (MMGP's predict and ood_score, often one of many calls)
clears its bar.
"""

from __future__ import annotations

import re
import sys
import warnings

import numpy as np
import pytest
import torch

from gpgeom._progress import progress_bar, resolve_progress

DT = torch.float64
BAR = re.compile(r"\d+/\d+ \[")  # tqdm's "n/total [elapsed<remaining, rate]"


@pytest.fixture(autouse=True)
def _no_override(monkeypatch):
    monkeypatch.delenv("GPGEOM_PROGRESS", raising=False)


# ---------------------------------------------------------------------------------------------------------------------
# the entry points, each at a size that runs in about a second
# ---------------------------------------------------------------------------------------------------------------------
def _exact_gp(progress):
    from gpgeom.botorch.exact_gp import ExactGPModel

    g = torch.Generator().manual_seed(0)
    X = torch.rand(12, 1, generator=g, dtype=DT)
    Y = torch.sin(6 * X) + 0.1 * torch.randn(12, 1, generator=g, dtype=DT)
    ExactGPModel(X, Y).fit(restarts=2, max_iter=5, seed=0, progress=progress)


def _rvgp(progress):
    from gpgeom.datasets.vector_fields import sphere_vector_field
    from gpgeom.models.rvgp import RVGP

    s = sphere_vector_field(80, "mixed")
    tr = np.arange(0, 80, 3)
    RVGP(s.points, n_eigenpairs=8, dim=2).fit(tr, s.vectors[tr], max_iter=3, restarts=1, progress=progress)


def _rgnp():
    from gpgeom.models.rgnp import RGNP
    from gpgeom.pde import NonlinearPoisson1D

    gic = dict(lift_channels=4, lift_hidden=(8,), cnn_channels=(4, 4), mlp_hidden=(8,), grid_size=8)
    m = RGNP.from_family(NonlinearPoisson1D(), hidden=(8,), n_freqs=2, gicnet=gic, batch_size=4, n_points=8)
    return m.double()


def _rgnp_fit(progress):
    _rgnp().fit(3, lr=1e-3, progress=progress, seed=0)


_RGNP_FITTED = {}


def _rgnp_calibrate(progress):
    if "m" not in _RGNP_FITTED:
        _RGNP_FITTED["m"] = _rgnp().fit(1, progress=False, seed=0)
    m = _RGNP_FITTED["m"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.calibrate(n_fields=4, n_points=8, inverse_steps=3, inverse_batch=2, seed=0, progress=progress)


def _funbat(progress):
    from gpgeom.datasets.tensors import make_synthetic_tensor
    from gpgeom.models.funbat import FunBaT

    d = make_synthetic_tensor(60, 10, rank=2, decomposition="cp", n_coords=6, seed=2)
    m = FunBaT(2, decomposition="cp", max_sweeps=3, n_restarts=2, restart_sweeps=1, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.fit(d.X_train, d.y_train, progress=progress)


def _plate(nx, ny, s, t):
    from gpgeom.geometry.mesh import Mesh

    xs, ys = np.meshgrid(np.linspace(0, 1, nx), np.linspace(0, 1, ny), indexing="ij")
    P = np.c_[xs.ravel(), ys.ravel()]
    P = P + 0.1 * np.c_[s * P[:, 1] * (1 - P[:, 1]), t * P[:, 0] * (1 - P[:, 0])]
    idx = np.arange(nx * ny).reshape(nx, ny)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    return Mesh(P, np.r_[np.c_[a, b, c], np.c_[a, c, d]])


def _mmgp_data(n, seed):
    rng = np.random.default_rng(seed)
    meshes, mu, fields, w = [], [], [], []
    for _ in range(n):
        s, t, p = rng.uniform(-1, 1, 3)
        mesh = _plate(int(rng.integers(6, 8)), int(rng.integers(6, 8)), s, t)
        X = mesh.points
        fields.append(np.stack([np.sin(2.0 * X[:, 0]) * (1.0 + 0.5 * p) + t * X[:, 1]], 1))
        meshes.append(mesh)
        mu.append([p])
        w.append([s + 0.5 * p])
    return meshes, np.array(mu), fields, np.array(w)


def _mmgp(**kw):
    from gpgeom.models.mmgp import MMGP

    return MMGP(n_modes_geometry=2, n_modes_fields=2, restarts=1, max_iter=5, floater_start=(0.0, 0.0), **kw)


def _mmgp_fit(progress):
    M, mu, U, w = _mmgp_data(5, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _mmgp(hyperparameters="per_field").fit(M, mu, U, w, progress=progress)


_MMGP_FITTED = {}


def _mmgp_predict(progress):
    if "m" not in _MMGP_FITTED:
        M, mu, U, w = _mmgp_data(5, 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _MMGP_FITTED["m"] = _mmgp().fit(M, mu, U, w, progress=False)
    Mt, mut, _, _ = _mmgp_data(3, 7)
    _MMGP_FITTED["m"].predict(Mt, mut, return_std=True, progress=progress)


def _mmgp_ood(progress):
    _mmgp_predict(False)
    Mt, _, _, _ = _mmgp_data(3, 7)
    _MMGP_FITTED["m"].ood_score(Mt, progress=progress)


def _mmgp_encode(progress):
    _mmgp_predict(False)
    Mt, mut, _, _ = _mmgp_data(3, 7)
    _MMGP_FITTED["m"].encode(Mt, mut, progress=progress)


def _mmgp_encode_targets(progress):
    _mmgp_predict(False)
    Mt, _, Ut, wt = _mmgp_data(3, 7)
    _MMGP_FITTED["m"].encode_targets(Mt, Ut, wt, progress=progress)


def _trajectory(progress):
    from gpgeom.datasets.trajectories import PriorTrajectory, simulate_pose
    from gpgeom.models.trajectory import PoseMeasurement, SO3xR3Trajectory

    truth = PriorTrajectory(1.0, qc_rot=0.1, qc_pos=0.01, seed=0)
    tm = torch.arange(0.0, 1.0, 0.05, dtype=DT) + 0.005
    pose = simulate_pose(truth, tm, sigma_rot=0.01, sigma_pos=0.01, seed=1)
    traj = SO3xR3Trajectory.uniform(0.0, 1.0, 0.1, qc_rot=0.1, qc_pos=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traj.fit(
            [PoseMeasurement(pose.t, R=pose.R, p=pose.p, sigma_rot=0.01, sigma_pos=0.01)],
            max_iter=3,
            progress=progress,
        )


def _notched_plates(progress):
    from gpgeom.datasets.notched_plate import generate_notched_plates

    generate_notched_plates(2, mesh_size=0.1, use_cache=False, progress=progress)


def _bars_on_screen(err: str) -> int:
    r"""Bars left visible: on every line of the screen, what the last carriage return leaves (a cleared bar leaves
    blanks). tqdm draws a bar nested in an open one (``position`` 1) on the line below and moves back up (``ESC[A``):
    the line under the cursor is the one written."""
    screen, row = {}, 0
    for token in re.split(r"(\n|\x1b\[A)", err):
        if token == "\n":
            row += 1
        elif token == "\x1b[A":
            row = max(row - 1, 0)
        elif token:
            screen[row] = token.split("\r")[-1] if "\r" in token else screen.get(row, "") + token
    return sum(1 for line in screen.values() if BAR.search(line))


ENTRY_POINTS = {
    "generate_notched_plates": _notched_plates,
    "ExactGPModel.fit": _exact_gp,
    "RVGP.fit": _rvgp,
    "RGNP.fit": _rgnp_fit,
    "RGNP.calibrate": _rgnp_calibrate,
    "FunBaT.fit": _funbat,
    "MMGP.fit": _mmgp_fit,
    "MMGP.predict": _mmgp_predict,
    "MMGP.ood_score": _mmgp_ood,
    "MMGP.encode": _mmgp_encode,
    "MMGP.encode_targets": _mmgp_encode_targets,
    "Trajectory.fit": _trajectory,
}


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_false_and_none_are_silent_true_shows_one_bar(name, capfd):
    run = ENTRY_POINTS[name]
    run(False)
    out, err = capfd.readouterr()
    assert out == "" and err == "", f"{name}(progress=False) wrote {out + err!r}"
    run(None)  # pytest: standard error is not a terminal
    out, err = capfd.readouterr()
    assert out == "" and err == "", f"{name}(progress=None) wrote {out + err!r} under pytest"
    run(True)
    out, err = capfd.readouterr()
    assert out == "" and BAR.search(err), f"{name}(progress=True) wrote no bar: {err!r}"
    # inner bars (restarts, attempts, GPs, inverse steps) are cleared: at most one stays on screen
    assert _bars_on_screen(err) <= 1, f"{name}(progress=True) left {_bars_on_screen(err)} bars: {err!r}"


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
@pytest.mark.parametrize("bad", ["yes", 1, 0.0])
def test_a_progress_that_is_not_a_bool_is_a_type_error(name, bad, capfd):
    with pytest.raises(TypeError, match="`progress`"):
        ENTRY_POINTS[name](bad)
    assert capfd.readouterr().err == ""  # refused before any bar


def test_resolve_progress_rule(monkeypatch):
    assert resolve_progress(True) is True and resolve_progress(False) is False
    assert resolve_progress(None) is False  # pytest: not a terminal, not a notebook
    monkeypatch.setenv("GPGEOM_PROGRESS", "1")
    assert resolve_progress(None) is True and resolve_progress(False) is False
    monkeypatch.setenv("GPGEOM_PROGRESS", "0")
    assert resolve_progress(None) is False and resolve_progress(True) is True
    for bad in ("yes", 1, np.True_):
        with pytest.raises(TypeError, match="`progress` must be True, False or None"):
            resolve_progress(bad)


def test_a_closed_standard_error_is_not_a_terminal(monkeypatch, tmp_path):
    r"""With standard error closed (a daemon, a harness that closed it) ``progress=None`` shows nothing, as for any
    stream that is not a terminal: the terminal check raised ``ValueError: I/O operation on closed file``, so the
    RVGP constructor (and so ``RVGP.load``) and :func:`connection_laplacian` / :func:`graph_laplacian`, which did not
    look at standard error before their stage bars, failed, as did every ``fit`` left at the default. They give what
    ``progress=False`` gives (the Laplacian and the predictions bitwise)."""
    import io

    from gpgeom.datasets.vector_fields import sphere_vector_field
    from gpgeom.geometry.connection import connection_laplacian, graph_laplacian
    from gpgeom.models.rvgp import RVGP

    s = sphere_vector_field(60, "mixed", seed=0)
    tr, idx = np.arange(0, 60, 3), np.arange(1, 60, 3)
    fit = {"max_iter": 3, "restarts": 0, "seed": 0}
    ref = RVGP(s.points, n_eigenpairs=6, dim=2, progress=False).fit(tr, s.vectors[tr], progress=False, **fit)
    ref.save(tmp_path / "rvgp.pt")
    closed = io.StringIO()
    closed.close()
    with monkeypatch.context() as mp:
        mp.setattr(sys, "stderr", closed)
        assert resolve_progress(None) is False
        lap = connection_laplacian(s.points, 10, dim=2)
        scalar = graph_laplacian(s.points, 10)
        gp = RVGP(s.points, n_eigenpairs=6, dim=2).fit(tr, s.vectors[tr], **fit)
        loaded = RVGP.load(tmp_path / "rvgp.pt")
    assert (lap.L != ref.laplacian.L).nnz == 0 and (scalar.L != graph_laplacian(s.points, 10).L).nnz == 0
    for model in (gp, loaded):
        for a, b in zip(model.predict(idx, return_std=True), ref.predict(idx, return_std=True), strict=True):
            assert torch.equal(a, b)


def test_progress_bar_writes_only_when_shown(capfd):
    for _ in progress_bar(range(3), progress=False, desc="quiet"):
        pass
    assert capfd.readouterr().err == ""
    for _ in progress_bar(range(3), progress=True, desc="loud"):
        pass
    err = capfd.readouterr().err
    assert "loud" in err and "3/3" in err and _bars_on_screen(err) == 1
    for leave in (True, False):  # the count the nested checks rely on: kept bars count, cleared ones do not
        for _ in range(2):
            for _ in progress_bar(range(3), progress=True, leave=leave):
                pass
        assert _bars_on_screen(capfd.readouterr().err) == (2 if leave else 0)
    with progress_bar(total=2, progress=True, desc="outer") as outer:  # inner bars drawn below an open one
        for _ in range(2):
            for _ in progress_bar(range(3), progress=True, leave=False, desc="inner"):
                pass
            outer.update(1)
    assert _bars_on_screen(capfd.readouterr().err) == 1


def test_rgnp_calibrate_shows_its_reference_solves_and_gives_the_same_calibration(capfd):
    r"""``RGNP.calibrate`` without inverse steps spends its time in the family's reference solver (one solve per
    field): with ``progress=True`` it showed no bar at all (its only bar was the inverse steps'). Now a bar counts the
    solves (kept when it is the call's only one, cleared under the inverse steps' bar); the calibration and the
    predictions are bitwise those of ``progress=False``."""
    import copy

    fitted = _rgnp().fit(1, progress=False, seed=0)
    z = torch.tensor([[0.1, -0.2, 0.3, 0.0, 0.5]], dtype=DT)
    w, x = torch.tensor([[1.2]], dtype=DT), torch.linspace(-0.9, 0.9, 7, dtype=DT)[:, None]
    results = {}
    for progress in (False, True):
        m = copy.deepcopy(fitted)
        capfd.readouterr()
        m.calibrate(n_fields=5, n_points=8, inverse_steps=0, seed=0, progress=progress)
        err = capfd.readouterr().err
        assert (err == "") if not progress else ("RGNP reference solves" in err and "5/5" in err), err
        assert _bars_on_screen(err) == int(progress)
        results[progress] = (m.calibration_, m.predict(z, w, x, return_std=True))
    assert results[True][0] == results[False][0]
    assert all(torch.equal(a, b) for a, b in zip(results[True][1], results[False][1]))
    m = copy.deepcopy(fitted)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.calibrate(n_fields=3, n_points=8, inverse_steps=2, inverse_batch=2, seed=0, progress=True)
    err = capfd.readouterr().err
    assert "RGNP reference solves" in err and _bars_on_screen(err) <= 1  # the solves' bar cleared


def _entry_functions():
    from gpgeom.datasets.bracket3d import generate_brackets
    from gpgeom.datasets.notched_plate import generate_notched_plates
    from gpgeom.demo import SECTIONS, _resolve, run_demo
    from gpgeom.engine.fitting import fit
    from gpgeom.geometry.connection import connection_laplacian, graph_laplacian
    from gpgeom.models.funbat import FunBaT
    from gpgeom.models.mmgp import MMGP
    from gpgeom.models.rgnp import RGNP
    from gpgeom.models.rvgp import RVGP
    from gpgeom.models.trajectory import SE3Trajectory, SO3xR3Trajectory

    funcs = {
        "fit": fit,
        "RVGP": RVGP,
        "RVGP.fit": RVGP.fit,
        "connection_laplacian": connection_laplacian,
        "graph_laplacian": graph_laplacian,
        "RGNP.fit": RGNP.fit,
        "RGNP.calibrate": RGNP.calibrate,
        "FunBaT.fit": FunBaT.fit,
        "MMGP.fit": MMGP.fit,
        "MMGP.predict": MMGP.predict,
        "MMGP.ood_score": MMGP.ood_score,
        "MMGP.encode": MMGP.encode,
        "MMGP.encode_targets": MMGP.encode_targets,
        "SO3xR3Trajectory.fit": SO3xR3Trajectory.fit,
        "SE3Trajectory.fit": SE3Trajectory.fit,
        "generate_notched_plates": generate_notched_plates,
        "generate_brackets": generate_brackets,
        "run_demo": run_demo,
    }
    funcs.update({f"demo section {name}": _resolve(name) for name in SECTIONS})
    return funcs


def test_every_long_entry_point_takes_the_same_progress_argument():
    r"""``progress: bool | None = None``, keyword-only, documented, at every long entry point (the demo sections
    were annotated ``bool`` though they pass ``None`` on; MMGP's predict and ood_score, which morph every mesh, had
    no ``progress``)."""
    import inspect

    wrong = {}
    for name, f in _entry_functions().items():
        p = inspect.signature(f).parameters.get("progress")
        if p is None:
            wrong[name] = "no progress argument"
            continue
        form = (p.kind, p.default, str(p.annotation))
        if form != (inspect.Parameter.KEYWORD_ONLY, None if not name.startswith("demo") else p.default, "bool | None"):
            wrong[name] = form
        if not name.startswith("demo") and "progress" not in (f.__doc__ or ""):
            wrong[name] = "progress not documented"
    assert not wrong, wrong


def test_mmgp_fit_shows_the_morphing_of_the_meshes(capfd):
    r"""The morphing and transfers of the training meshes (the long stage of a large MMGP fit) had no bar: with
    ``progress=True`` only the GP fits' bars showed."""
    _mmgp_fit(True)
    err = capfd.readouterr().err
    assert "MMGP morph+transfer" in err and "5/5" in err
    _mmgp_fit(False)
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("name", ["MMGP.predict", "MMGP.ood_score", "MMGP.encode", "MMGP.encode_targets"])
def test_mmgp_predictions_clear_their_bar(name, capfd):
    r"""A prediction is often one of many (a loop of one-mesh predictions in a notebook): its bar over the meshes is
    shown while it runs and cleared when done. Before, every call left its bar (80 one-mesh predictions with
    ``progress=True``: 80 bars on screen; here 3 calls, 3 bars)."""
    ENTRY_POINTS[name](False)  # fitted once, silently
    capfd.readouterr()
    for _ in range(3):
        ENTRY_POINTS[name](True)
    err = capfd.readouterr().err
    assert "MMGP morph+transfer" in err and BAR.search(err)  # shown while it runs (3 meshes per call)
    assert _bars_on_screen(err) == 0, err


def test_calibrate_refuses_a_bad_progress_without_inverse_steps():
    r"""``calibrate(progress="yes")`` with ``inverse_steps=0`` (the default) was accepted silently: only the inverse
    steps' fit looked at it."""
    m = _rgnp().fit(1, progress=False, seed=0)
    with pytest.raises(TypeError, match="`progress`"):
        m.calibrate(n_fields=2, n_points=4, seed=0, progress="yes")
    assert not hasattr(m, "calibration_") or m.calibration_ is None


@pytest.mark.parametrize("section", ["rvgp", "calibration"])
def test_the_demo_passes_its_progress_to_the_rvgp_it_builds(section, tmp_path, monkeypatch, capfd):
    r"""``run_demo(progress=False)`` (``gpgeom demo --no-progress``) in a terminal showed the RVGP constructor's
    stage bar (``RVGP geometry``, 421 characters on standard error for the quick RVGP section): the sections built
    their RVGP at the default. Here the terminal's default is forced on (``GPGEOM_PROGRESS=1``) and the section stops
    at the fit: ``False`` writes nothing, ``True`` shows the constructor's stages."""
    import gpgeom.demo.calibration as calibration
    import gpgeom.demo.rvgp as demo

    class Built(Exception):
        pass

    class Stopped(demo.RVGP):
        def fit(self, *args, **kwargs):
            raise Built

    monkeypatch.setattr(demo, "RVGP", Stopped)
    monkeypatch.setattr("gpgeom.models.rvgp.RVGP", Stopped)  # the calibration section imports it when it runs
    monkeypatch.setenv("GPGEOM_PROGRESS", "1")
    run = {
        "rvgp": lambda p: demo.rvgp_section(tmp_path, quick=True, seed=0, progress=p),
        "calibration": lambda p: calibration._rvgp(True, 0, p),
    }[section]
    for progress in (False, True):
        with pytest.raises(Built):
            run(progress)
        err = capfd.readouterr().err
        assert ("RVGP geometry" in err and BAR.search(err)) if progress else err == "", (progress, err)


def test_run_demo_refuses_a_bad_progress_before_anything(tmp_path):
    r"""``run_demo(progress="yes")`` ran every section, each failing on the value, and raised ``DemoFailed`` after
    writing a report of failures; it is a ``TypeError`` before the output folder is created."""
    from gpgeom.demo import run_demo

    out = tmp_path / "demo"
    with pytest.raises(TypeError, match="`progress`"):
        run_demo(out, quick=True, only=["exact_gp"], progress="yes")
    assert not out.exists()


@pytest.mark.parametrize("name", ["ExactGPModel.fit", "MMGP.fit", "MMGP.predict"])
def test_workers_of_an_executor_print_no_bar_of_their_own(name, capfd):
    r"""Through an executor (threads: a worker's bar would reach this process's stderr), ``False`` is silent and
    ``True`` shows the caller's bar only: the attempts/GPs/meshes run in workers with ``progress=False``."""
    from concurrent.futures import ThreadPoolExecutor

    from gpgeom.botorch.exact_gp import ExactGPModel
    from gpgeom.models.mmgp import MMGP

    def run(progress):
        with ThreadPoolExecutor(2) as ex:
            real = {"fit": ExactGPModel.fit, "predict": MMGP.predict, "mmgp_fit": MMGP.fit}

            def with_executor(f):
                return lambda self, *a, **k: f(self, *a, **{**k, "executor": ex})

            mp = pytest.MonkeyPatch()
            try:
                if name == "ExactGPModel.fit":
                    mp.setattr(ExactGPModel, "fit", with_executor(real["fit"]))
                elif name == "MMGP.fit":
                    mp.setattr(MMGP, "fit", with_executor(real["mmgp_fit"]))
                else:
                    mp.setattr(MMGP, "predict", with_executor(real["predict"]))
                ENTRY_POINTS[name](progress)
            finally:
                mp.undo()

    run(False)
    assert capfd.readouterr().err == ""
    run(True)
    err = capfd.readouterr().err
    assert BAR.search(err) and _bars_on_screen(err) <= 1, err


def _forced_progress(source: str) -> list[int]:
    r"""The lines of ``source`` that pass ``progress`` (a keyword argument, or a ``"progress"`` key of a dict
    literal) as anything but ``False``, ``None`` or a conditional expression of these (``False if quick else None``):
    a variable is refused too, since it can carry ``True`` (``show = True; fit(progress=show)``)."""
    import ast

    def allowed(node):
        if isinstance(node, ast.Constant):
            return node.value is False or node.value is None
        if isinstance(node, ast.IfExp):
            return allowed(node.body) and allowed(node.orelse)
        return False

    lines = []
    for node in ast.walk(ast.parse(source)):
        pairs = []
        if isinstance(node, ast.Call):
            pairs = [(k.arg, k.value) for k in node.keywords]
        elif isinstance(node, ast.Dict):
            pairs = [(k.value if isinstance(k, ast.Constant) else None, v) for k, v in zip(node.keys, node.values)]
        lines += [v.lineno for k, v in pairs if k == "progress" and not allowed(v)]
    return sorted(lines)


def test_the_benchmark_progress_check_refuses_true_however_it_is_passed():
    r"""The checker of :func:`test_benchmark_scripts_leave_progress_to_the_rule` on small sources: it accepted any
    variable, so ``show = True; fit(progress=show)`` passed."""
    ok = (
        "fit(progress=False)\nfit(progress=None)\nfit(progress=False if quick else None)\n"
        "gen = {'progress': None if quick else False}\n"
    )
    assert _forced_progress(ok) == []
    forced = [
        "fit(progress=True)",
        "show = True\nfit(progress=show)",
        "fit(progress=not quick)",
        "fit(progress=opts.progress)",
        "fit(progress=flags['progress'])",
        "fit(progress=False if quick else True)",
        "gen = {'progress': show}",
    ]
    for src in forced:
        assert _forced_progress(src) == [src.count("\n") + 1], src


def test_benchmark_scripts_leave_progress_to_the_rule():
    r"""Benchmark scripts pass ``progress`` as ``False``, ``None`` or a conditional of the two
    (:func:`_forced_progress`), never ``True``, directly or through a variable: ``benchmarks/mmgp.py`` passed
    ``progress=not quick`` to the data generation, so a full run with its output redirected to a log (CI,
    ``> run.log``) filled it with bars."""
    from pathlib import Path

    bad = []
    for path in sorted((Path(__file__).parent.parent / "benchmarks").glob("*.py")):
        bad += [f"{path.name}:{line}" for line in _forced_progress(path.read_text())]
    assert not bad, bad


RVGP_STAGES = [
    "neighbour graph",
    "frames",
    "connection Laplacian",
    "eigenpairs",
    "hyperparameter fit",
    "noise estimate",
]


def _stage_order(err: str, names: list[str]) -> list[int]:
    r"""Where each stage of ``names`` is first named as the running one (the bar's postfix) in ``err`` (-1: never)."""
    return [err.find(f", {name}]") for name in names]


def _rvgp_run(progress, scalar=False):
    from gpgeom.datasets.vector_fields import sphere_vector_field
    from gpgeom.models.rvgp import RVGP

    s = sphere_vector_field(120, "mixed", seed=0)
    tr = np.arange(0, 120, 3)
    y = s.vectors[tr, :1] if scalar else s.vectors[tr]
    gp = RVGP(s.points, n_eigenpairs=8, dim=None if scalar else 2, scalar=scalar, progress=progress)
    gp.fit(tr, y, max_iter=5, restarts=1, seed=0, progress=progress)
    return gp, s.points


@pytest.mark.parametrize("scalar", [False, True])
def test_rvgp_shows_its_stages_in_order_and_computes_the_same(scalar, capfd):
    r"""Building an RVGP (neighbour graph, frames, connection Laplacian, eigenpairs: 6 s of 7.5 for 8000 points on a
    sphere, before a 1.5 s fit) showed nothing; ``fit`` showed only the engine's attempts. With ``progress=True`` the
    stages are named on stderr in the order they run (scalar fields: the graph Laplacian, no frames); ``False`` and
    ``None`` (pytest) write nothing; the geometry, the fit and the predictions are bitwise those without a bar, and the
    geometry that of :func:`connection_laplacian` / :func:`graph_laplacian` and their eigenpairs called directly."""
    from gpgeom.geometry.connection import connection_laplacian, graph_laplacian

    names = [n for n in RVGP_STAGES if not scalar or n != "frames"]
    names = [("graph Laplacian" if scalar and n == "connection Laplacian" else n) for n in names]
    shown, points = _rvgp_run(True, scalar)
    err = capfd.readouterr().err
    where = _stage_order(err, names)
    assert -1 not in where and where == sorted(where), (where, err)
    n_geometry = len(names) - 2  # before the fit's two stages
    assert "RVGP geometry" in err and "RVGP fit" in err and f"{n_geometry}/{n_geometry}" in err and "2/2" in err
    results = []
    for progress in (False, None):
        gp, _ = _rvgp_run(progress, scalar)
        assert capfd.readouterr().err == ""
        results.append(gp)
    lap = graph_laplacian(points, 10) if scalar else connection_laplacian(points, 10, dim=2)
    vals, vecs = lap.eigenpairs(8)
    idx = torch.arange(1, 120, 3)
    for gp in results:
        np.testing.assert_array_equal(gp.laplacian.frames, shown.laplacian.frames)
        assert (gp.laplacian.L != shown.laplacian.L).nnz == 0
        np.testing.assert_array_equal(gp.eigenvectors, shown.eigenvectors)
        for a, b in zip(gp.predict(idx, return_std=True), shown.predict(idx, return_std=True), strict=True):
            assert torch.equal(a, b)
        assert gp.noise_estimate == shown.noise_estimate
    assert (lap.L != shown.laplacian.L).nnz == 0
    np.testing.assert_array_equal(vals, shown.eigenvalues)
    np.testing.assert_array_equal(vecs, shown.eigenvectors)


def test_the_laplacians_show_their_own_stages(capfd):
    r"""Called alone, :func:`connection_laplacian` and :func:`graph_laplacian` take ``progress`` and show their stages
    in order; a non-bool is a ``TypeError`` naming ``progress`` before any work, here and in the RVGP constructor."""
    from gpgeom.datasets.vector_fields import sphere_vector_field
    from gpgeom.geometry.connection import CONNECTION_STAGES, GRAPH_STAGES, connection_laplacian, graph_laplacian
    from gpgeom.models.rvgp import RVGP

    points = sphere_vector_field(80, "mixed", seed=0).points
    for build, stages in ((connection_laplacian, CONNECTION_STAGES), (graph_laplacian, GRAPH_STAGES)):
        build(points, 10, progress=True)
        err = capfd.readouterr().err
        where = _stage_order(err, list(stages))
        assert -1 not in where and where == sorted(where) and f"{len(stages)}/{len(stages)}" in err, err
        build(points, 10, progress=False)
        assert capfd.readouterr().err == ""
        with pytest.raises(TypeError, match="`progress`"):
            build(points, 10, progress="yes")
    with pytest.raises(TypeError, match="`progress`"):
        RVGP(points, n_eigenpairs=8, progress=1)
    assert capfd.readouterr().err == ""


def test_stage_bar_names_stages_it_has():
    from gpgeom._progress import StageBar

    with StageBar(("a", "b"), desc="x", progress=False) as bar:
        bar.start("a")
        with pytest.raises(ValueError, match=r"`name` must be one of the stages \['a', 'b'\], got 'c'"):
            bar.start("c")


def test_rvgp_draws_no_bar_without_stages_or_before_them(capfd):
    r"""An RVGP given its Laplacian and eigenpairs (as ``load`` builds it) has no stage to show, and a fit refused on
    its input stops before the first stage: with ``progress=True`` neither draws a bar (not an empty ``0/n``)."""
    from gpgeom.datasets.vector_fields import sphere_vector_field
    from gpgeom.geometry.connection import connection_laplacian
    from gpgeom.models.rvgp import RVGP

    points = sphere_vector_field(80, "mixed", seed=0).points
    lap = connection_laplacian(points, 10, dim=2)
    gp = RVGP(points, n_eigenpairs=8, laplacian=lap, eigenpairs=lap.eigenpairs(8), progress=True)
    with pytest.raises(ValueError, match="`index` is empty"):
        gp.fit(np.arange(0), np.zeros((0, 3)), progress=True)
    assert capfd.readouterr().err == ""

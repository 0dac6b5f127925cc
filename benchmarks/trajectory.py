#!/usr/bin/env python3
r"""Benchmark of the GP trajectory models (the simulation protocol of T.-M. Nguyen et al., *GPTR: Gaussian Process
Trajectory Representation for Continuous-Time Motion Estimation*, arXiv:2410.22931, 2024).

Sections (each prints a Markdown table; all go to one report, see "Output" below):

1. Interpolation with exact knots: rotation RMSE of closed-form, Taylor and second-order (WNOA) kinematics versus
   knot spacing on two analytic fast trajectories (|omega| about 4 rad/s).
2. UWB estimation accuracy per estimator and knot spacing: 10 s fast trajectory, 8 anchors, 3 tags, 20 Hz,
   sigma = 0.05 m, initial knots = truth (+) N(0.2 rad, 0.5 m) with zero rates, Qc = 10 I, LM <= 50 iterations;
   position/rotation/omega RMSE on a 100 Hz grid without the first and last knot interval; median over seeds.
3. Time per iteration versus the number of knots (100 .. 10,000; UWB with the reference's 4 anchors
   and 2 tags at 20 Hz, 16 ranges per knot) and the log-log slope; the iteration split into the assembly of the
   normal equations, the banded factorisation and solve (LAPACK, and the sequential loop it replaced) and the cost of
   the trial step, each in CPU and wall time.
4. External baseline (only when ``gtsam`` imports): the same pose-measurement problem through GTSAM's
   second-order (WNOA) Pose3 prior and through ours.
5. Start and stop: a body yawing 10 rad fitted from the default knots (the start built from the measurements,
   ``init="auto"``, against ``init="none"``), and the GPTR two-tag UWB problem whose roll about the tag axis is not
   observable (LM with the default ``stol``, with ``stol=0``, and ``method="gn"``).
6. SE(3) against SO(3)xR3 on the same problem (hand-written Jacobians for both): fit time, iterations and time per
   iteration.
7. Memory: peak resident memory of ``interpolate(t, covariance=True)`` for 1e5 times, in chunks within the default
   budget and in one piece (each in a fresh subprocess; the call's own peak, the kernel's high-water mark of the
   resident set reset just before it).
8. Calibration: mean NEES of position and rotation over 20 runs (UWB and pose problems) with its 95% chi-square
   band, for the analytic fast trajectory with the demo's prior and for truths drawn from the model's own prior.

Usage: ``python benchmarks/trajectory.py [--quick] [--device cuda] [--seeds 3] [--out FILE]``.

Output: a full CPU run writes the committed table ``benchmarks/results/trajectory.md``; any other run writes
``trajectory_quick.md``, ``trajectory_cuda.md``, ``trajectory_cuda_quick.md``, ... (``benchmarks/_common.report_name``;
``GPGEOM_BENCH_RESULTS`` moves the folder), so a quick or GPU run never overwrites the full table. ``--out`` names the
file instead.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report_name, results_path  # noqa: E402

from gpgeom.datasets.trajectories import (  # noqa: E402
    GPTR_ANCHORS,
    GPTR_TAG_OFFSETS,
    FastTrajectory,
    perturbed_knots,
    simulate_pose,
    simulate_uwb,
)
from gpgeom.errors import ConvergenceWarning  # noqa: E402
from gpgeom.geometry.lie import so3_exp, so3_log  # noqa: E402
from gpgeom.models.trajectory import (  # noqa: E402
    PoseMeasurement,
    RangeMeasurement,
    SE3Trajectory,
    SO3xR3Trajectory,
)

DT = torch.float64
ESTIMATORS = {
    "SO3xR3 WNOJ closed-form": (SO3xR3Trajectory, "wnoj", "closed_form"),
    "SO3xR3 WNOJ Taylor": (SO3xR3Trajectory, "wnoj", "taylor"),
    "SO3xR3 WNOA (2nd order)": (SO3xR3Trajectory, "wnoa", "closed_form"),
    "SE3 WNOJ closed-form": (SE3Trajectory, "wnoj", "closed_form"),
    "SE3 WNOJ Taylor": (SE3Trajectory, "wnoj", "taylor"),
}


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _rot_err(Ra: torch.Tensor, Rb: torch.Tensor) -> torch.Tensor:
    return so3_log(Ra.mT @ Rb, validate=False).norm(dim=-1)


def _errors(traj, truth: FastTrajectory, T: float, dt: float) -> tuple[float, float, float]:
    tq = torch.arange(dt, T - dt, 0.01, dtype=DT)
    gt = truth.state(tq)
    st = traj.predict(tq)
    p, R, w = st.p.cpu().double(), st.R.cpu().double(), st.omega.cpu().double()
    return (
        float((p - gt.p).norm(dim=-1).square().mean().sqrt()),
        math.degrees(float(_rot_err(gt.R, R).square().mean().sqrt())),
        float((w - gt.omega).norm(dim=-1).square().mean().sqrt()),
    )


# ------------------------------------------------------------------------------------------------------------------
def interpolation_study(quick: bool) -> str:
    spacings = [0.1, 0.2] if quick else [0.05, 0.1, 0.2, 0.3]
    trajs = {
        "split (speed 40)": FastTrajectory(kind="split", speed=40.0),
        "heading (speed 30, pos 9)": FastTrajectory(kind="heading", speed=30.0, pos_speed=9.0),
    }
    rows = []
    for name, truth in trajs.items():
        tq = torch.linspace(1.0, 9.0, 2001, dtype=DT)
        gt = truth.state(tq)
        w = float(gt.omega.norm(dim=-1).mean())
        for dt in spacings:
            kt = torch.arange(0.0, 10.0 + 1e-9, dt, dtype=DT)
            errs = []
            for prior, kin in (("wnoj", "closed_form"), ("wnoj", "taylor"), ("wnoa", "closed_form")):
                traj = SO3xR3Trajectory(kt, prior=prior, kinematics=kin)
                traj.set_knots(**truth.state(kt).knots(prior))
                errs.append(float(_rot_err(gt.R, traj.predict(tq).R).square().mean().sqrt()))
            rows.append([name, f"{w:.2f}", f"{dt:g}"] + [f"{e:.2e}" for e in errs] + [f"{errs[1] / errs[0]:.0f}x"])
    return "### 1. Interpolation with exact knots (rotation RMSE, rad)\n\n" + _table(
        [
            "trajectory",
            "mean abs(omega) rad/s",
            "knot spacing s",
            "WNOJ closed-form",
            "WNOJ Taylor",
            "WNOA (2nd order)",
            "Taylor / closed-form",
        ],
        rows,
    )


# ------------------------------------------------------------------------------------------------------------------
def accuracy_study(quick: bool, seeds: int, device: str) -> str:
    T = 10.0
    speeds = [40.0] if quick else [20.0, 40.0]
    spacings = [0.1, 0.2] if quick else [0.05, 0.1, 0.2, 0.3]
    names = ["SO3xR3 WNOJ closed-form", "SO3xR3 WNOJ Taylor", "SO3xR3 WNOA (2nd order)"]
    rows = []
    for speed in speeds:
        truth = FastTrajectory(kind="split", speed=speed)
        for dt in spacings:
            est = names + (["SE3 WNOJ closed-form", "SE3 WNOJ Taylor"] if (not quick and dt in (0.1, 0.2)) else [])
            for name in est:
                cls, prior, kin = ESTIMATORS[name]
                stats = []
                for seed in range(seeds):
                    uwb = simulate_uwb(truth, 0.0, T, sigma=0.05, seed=100 + seed)
                    meas = RangeMeasurement(uwb.t, uwb.anchors, uwb.ranges, tag_offset=uwb.tag_offsets, sigma=0.05)
                    traj = cls.uniform(0.0, T, dt, prior=prior, kinematics=kin, qc_rot=10.0, qc_pos=10.0, device=device)
                    init = perturbed_knots(truth, traj.knot_times.cpu().double(), prior=prior, seed=200 + seed)
                    traj.set_knots(**{k: v.to(device) for k, v in init.items()})
                    t0 = time.perf_counter()
                    traj.fit([meas], max_iter=50, warn=False, progress=False)
                    el = time.perf_counter() - t0
                    stats.append(
                        (*_errors(traj, truth, T, dt), traj.fit_result_.iterations, el, traj.fit_result_.converged)
                    )
                med = [statistics.median(s[i] for s in stats) for i in range(5)]
                conv = sum(s[5] for s in stats)
                rows.append(
                    [
                        f"{speed:g}",
                        f"{dt:g}",
                        name,
                        f"{med[0]:.4f}",
                        f"{med[1]:.2f}",
                        f"{med[2]:.3f}",
                        f"{med[3]:.0f}",
                        f"{conv}/{seeds}",
                        f"{med[4]:.2f}",
                    ]
                )
                print("  ", rows[-1], flush=True)
    return (
        f"### 2. UWB estimation (10 s, 8 anchors x 3 tags, 20 Hz, sigma 0.05 m; median over {seeds} seed(s))\n\n"
    ) + _table(
        [
            "speed n",
            "knot spacing s",
            "estimator",
            "pos RMSE m",
            "rot RMSE deg",
            "omega RMSE rad/s",
            "LM iterations",
            "converged",
            "fit time s",
        ],
        rows,
    )


# ------------------------------------------------------------------------------------------------------------------
def _clock(fn, device: str, repeats: int = 1):
    r"""``(result, wall s, CPU s)`` of ``fn()`` (CPU time: ``time.process_time``, all threads of this process); with
    ``repeats > 1`` the smallest of each over that many calls (the least disturbed by other load)."""
    best = [math.inf, math.inf]
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = [min(best[0], time.perf_counter() - w), min(best[1], time.process_time() - c)]
    return out, best[0], best[1]


def _iteration_parts(traj, meas, device: str) -> dict[str, tuple[float, float]]:
    r"""One iteration's parts at the current knots, ``(wall, CPU)`` seconds each: the assembly of the normal
    equations (linearisation of every factor and the banded sums), the damped factorisation and solve with LAPACK
    (``banded="auto"`` on the CPU) and with the sequential loop, and the cost of the trial step."""
    from gpgeom.engine.factors import _cost, _Problem
    from gpgeom.engine.normal_equations import _assemble, _factor_bordered, _solve_bordered

    factors, g0, _ = traj.build_factors([meas])
    prob = _Problem(
        factors=factors, retract=traj.retract, K=traj.num_knots, p=traj.state_dim, s=traj.tangent_dim, g=0, w=1
    )
    X, G = traj.knots, g0
    _assemble(prob, X, G)  # the grouping of each factor's blocks is built once per fit
    N, *t_asm = _clock(lambda: _assemble(prob, X, G), device, 3)
    out = {"assembly": tuple(t_asm)}
    for banded in ("auto", "loop"):

        def solve(banded=banded):
            Lb, Y, LS = _factor_bordered(N, 1e-4, None, banded)
            return _solve_bordered(N, Lb, Y, LS, banded)

        (dx, _), *t = _clock(solve, device, 3)
        out[f"solve {banded}"] = tuple(t)
    Xn = traj.retract(X, dx)
    _, *t = _clock(lambda: _cost(prob, Xn, G), device, 3)
    out["cost"] = tuple(t)
    return out


def scaling_study(quick: bool, device: str) -> tuple[str, float]:
    Ks = [100, 300, 1000] if quick else [100, 300, 1000, 3000, 10000]
    truth = FastTrajectory(kind="split", speed=40.0)
    rows, times, split = [], [], []
    for K in Ks:
        T = (K - 1) * 0.1
        uwb = simulate_uwb(truth, 0.0, T, sigma=0.05, seed=1, anchors=GPTR_ANCHORS, tag_offsets=GPTR_TAG_OFFSETS)
        meas = RangeMeasurement(uwb.t, uwb.anchors, uwb.ranges, tag_offset=uwb.tag_offsets, sigma=0.05)
        init = perturbed_knots(truth, torch.arange(K, dtype=DT) * 0.1, sigma_rot=0.05, sigma_pos=0.1, seed=3)
        tt = {}
        for n_it in (1, 3):
            traj = SO3xR3Trajectory.uniform(0.0, T, 0.1, qc_rot=10.0, qc_pos=10.0, device=device)
            traj.set_knots(**{k: v.to(device) for k, v in init.items()})
            # LM, whose first steps from this start are all accepted: each iteration assembles, solves and evaluates
            # (undamped Gauss-Newton steps raise the cost on this problem, whose roll is not observable, and are
            # rejected, which would skip the next assembly)
            kw = dict(max_iter=n_it, ftol=0.0, xtol=0.0, gtol=0.0, stol=0.0, warn=False, progress=False)
            _, w, c = _clock(lambda traj=traj, kw=kw, meas=meas: traj.fit([meas], **kw), device)
            tt[n_it] = (w, c)
        per_it = [(tt[3][i] - tt[1][i]) / 2.0 for i in range(2)]
        times.append(per_it[0])
        rows.append(
            [str(K), str(meas.num_blocks), f"{per_it[0]:.3f}", f"{per_it[1]:.3f}", f"{1e3 * per_it[0] / K:.2f}"]
        )
        print("  ", rows[-1], flush=True)
        parts = _iteration_parts(traj, meas, device)
        split.append([str(K)] + [f"{parts[k][0]:.3f} / {parts[k][1]:.3f}" for k in parts])
        print("  ", split[-1], flush=True)
    lk = [math.log(k) for k in Ks]
    lt = [math.log(t) for t in times]
    mk, mt = statistics.mean(lk), statistics.mean(lt)
    slope = sum((a - mk) * (b - mt) for a, b in zip(lk, lt)) / sum((a - mk) ** 2 for a in lk)
    return (
        "### 3. Time per iteration (assembly + banded solve + cost; LM, every step accepted) vs knots\n\n"
        + _table(["knots K", "ranges", "s / iteration (wall)", "s / iteration (CPU)", "ms / iteration / knot"], rows)
        + f"\n\nlog-log slope (least squares, K = {Ks[0]}..{Ks[-1]}): **{slope:.2f}**\n\n"
        + "The parts of one iteration at the final knots, wall / CPU seconds (CPU time counts only this process, "
        "so it is the figure to compare on a shared machine; the solve includes the Levenberg-Marquardt damping):\n\n"
        + _table(
            [
                "knots K",
                "assembly (linearise + banded sums)",
                "factorise + solve, LAPACK",
                "factorise + solve, sequential loop",
                "cost of the trial step",
            ],
            split,
        )
    ), slope


# ------------------------------------------------------------------------------------------------------------------
def gtsam_study(quick: bool) -> str:
    try:
        import gtsam
        import numpy as np
    except ImportError:
        return "### 4. GTSAM baseline\n\n`gtsam` is not installed: skipped (pip install gtsam)."
    T, dt = (5.0 if quick else 10.0), 0.1
    truth = FastTrajectory(kind="split", speed=40.0)
    kt = torch.arange(0.0, T + 1e-9, dt, dtype=DT)
    tm = torch.arange(0.0, T, 0.02, dtype=DT) + 0.005  # 50 Hz, never at a knot time (GTSAM's interpolation NaNs)
    pose = simulate_pose(truth, tm, sigma_rot=0.01, sigma_pos=0.01, seed=0)
    init = perturbed_knots(truth, kt, sigma_rot=0.05, sigma_pos=0.1, seed=1)
    gtk = truth.state(kt)
    rows = []

    X, V, P, W = (
        gtsam.symbol_shorthand.X,
        gtsam.symbol_shorthand.V,
        gtsam.symbol_shorthand.P,
        gtsam.symbol_shorthand.W,
    )
    est = [gtsam.StateData(X(k), V(k), float(t)) for k, t in enumerate(kt.tolist())]
    interp = set()
    graph = gtsam.NonlinearFactorGraph()
    noise = gtsam.noiseModel.Diagonal.Sigmas(np.array([0.01] * 6))
    for i, t in enumerate(tm.tolist()):
        interp.add(gtsam.StateData(P(i), W(i), t))
        graph.add(gtsam.PriorFactorPose3(P(i), gtsam.Pose3(gtsam.Rot3(pose.R[i].numpy()), pose.p[i].numpy()), noise))
    qc = np.full((6, 1), 10.0)
    t0 = time.perf_counter()
    g2 = gtsam.interpolateWnoaFactorGraphPose3(graph, set(est), interp, qc)
    for k in range(len(est) - 1):
        g2.add(gtsam.WnoaMotionFactorPose3(est[k], est[k + 1], qc))
    vals = gtsam.Values()
    for k in range(len(est)):
        vals.insert(X(k), gtsam.Pose3(gtsam.Rot3(init["R"][k].numpy()), init["p"][k].numpy()))
        vals.insert(V(k), np.zeros(6))
    params = gtsam.LevenbergMarquardtParams()
    params.setMaxIterations(50)
    opt = gtsam.LevenbergMarquardtOptimizer(g2, vals, params)
    res = opt.optimize()
    el = time.perf_counter() - t0
    Rk = torch.tensor(np.stack([res.atPose3(X(k)).rotation().matrix() for k in range(len(est))]))
    pk = torch.tensor(np.stack([res.atPose3(X(k)).translation() for k in range(len(est))]))
    pos = float((pk - gtk.p).norm(dim=-1).square().mean().sqrt())
    rot = math.degrees(float(_rot_err(gtk.R, Rk).square().mean().sqrt()))
    rows.append(
        [
            "GTSAM 4.3 WnoaMotionFactorPose3 (SE3, 2nd order)",
            f"{pos:.4f}",
            f"{rot:.3f}",
            str(opt.iterations()),
            f"{el:.2f}",
        ]
    )
    for name in ("SO3xR3 WNOA (2nd order)", "SO3xR3 WNOJ closed-form", "SO3xR3 WNOJ Taylor", "SE3 WNOJ closed-form"):
        cls, prior, kin = ESTIMATORS[name]
        traj = cls(kt, prior=prior, kinematics=kin, qc_rot=10.0, qc_pos=10.0)
        traj.set_knots(**{k: v for k, v in init.items() if k in traj.state_components})
        t0 = time.perf_counter()
        pose_meas = PoseMeasurement(pose.t, R=pose.R, p=pose.p, sigma_rot=0.01, sigma_pos=0.01)
        traj.fit([pose_meas], max_iter=50, warn=False, progress=False)
        el = time.perf_counter() - t0
        rows.append(
            [
                f"gpgeom {name}",
                f"{float((traj.p - gtk.p).norm(dim=-1).square().mean().sqrt()):.4f}",
                f"{math.degrees(float(_rot_err(gtk.R, traj.R).square().mean().sqrt())):.3f}",
                str(traj.fit_result_.iterations),
                f"{el:.2f}",
            ]
        )
    return (
        f"### 4. External baseline: {T:g} s, 50 Hz pose measurements (sigma 0.01 rad, 0.01 m), knots every "
        f"{dt:g} s, Qc = 10 I (errors at the knots)\n\n"
        + _table(["estimator", "knot pos RMSE m", "knot rot RMSE deg", "iterations", "time s"], rows)
    )


# ------------------------------------------------------------------------------------------------------------------
def start_stop_study(quick: bool, device: str) -> str:
    rows = []
    # a body yawing 10 rad in 10 s, 200 noisy poses (0.01 rad, 0.01 m), knots every 0.2 s, default Qc
    gen = torch.Generator().manual_seed(0)
    t = torch.linspace(0.0, 10.0, 200, dtype=DT)
    R = so3_exp(torch.stack([0.1 * torch.sin(t), 0.05 * torch.cos(0.7 * t), t], -1))
    p = torch.stack([torch.cos(0.3 * t), torch.sin(0.3 * t), 0.1 * t], -1)
    pose = PoseMeasurement(
        t,
        R=R @ so3_exp(0.01 * torch.randn(200, 3, dtype=DT, generator=gen)),
        p=p + 0.01 * torch.randn(200, 3, dtype=DT, generator=gen),
        sigma_rot=0.01,
        sigma_pos=0.01,
    )
    exact = SO3xR3Trajectory.uniform(0.0, 10.0, 0.2).initialise([PoseMeasurement(t, R=R, p=p)])
    good = {c: getattr(exact, c).to(device) for c in exact.state_components}
    for label, kw in (
        ("yaw 10 rad, default knots, init='auto'", {}),
        ("same, init='none'", {"init": "none"}),
        ("same, from the noise-free poses (a good start)", {"start": good}),
    ):
        traj = SO3xR3Trajectory.uniform(0.0, 10.0, 0.2, device=device)
        if "start" in kw:
            traj.set_knots(**kw.pop("start"))
        traj.fit([pose], warn=False, progress=False, **kw)
        err = torch.rad2deg(_rot_err(R, traj.predict(t).R.cpu().double()))
        res = traj.fit_result_
        rows.append(
            [label, str(res.iterations), f"{res.converged}", f"{res.cost:.6g}", f"{float(err.mean()):.2f}",
             f"{float(err.max()):.1f}", "-"]
        )  # fmt: skip
        print("  ", rows[-1], flush=True)
    # GPTR: 4 anchors, 2 tags on the body x-axis, 20 Hz; initial knots = truth (+) N(0.05 rad, 0.1 m)
    T = 7.0 if quick else 9.9
    truth = FastTrajectory(kind="split", speed=40.0)
    uwb = simulate_uwb(truth, 0.0, T, sigma=0.05, seed=1, anchors=GPTR_ANCHORS, tag_offsets=GPTR_TAG_OFFSETS)
    meas = RangeMeasurement(uwb.t, uwb.anchors, uwb.ranges, tag_offset=uwb.tag_offsets, sigma=0.05)
    fits = {}
    for label, kw in (
        ("two-tag UWB, LM (stol=0.2, default)", {}),
        ("same, LM with stol=0 (ftol/xtol only)", {"stol": 0.0, "max_iter": 400}),
        ("same, method='gn'", {"method": "gn", "max_iter": 200}),
    ):
        traj = SO3xR3Trajectory.uniform(0.0, T, 0.1, qc_rot=10.0, qc_pos=10.0, device=device)
        init = perturbed_knots(truth, traj.knot_times.cpu().double(), sigma_rot=0.05, sigma_pos=0.1, seed=3)
        traj.set_knots(**{k: v.to(device) for k, v in init.items()})
        traj.fit([meas], warn=False, progress=False, **kw)
        fits[label] = traj
    ref = fits["same, LM with stol=0 (ftol/xtol only)"]
    for label, traj in fits.items():
        res = traj.fit_result_
        dp = float((traj.p - ref.p).norm(dim=-1).max())
        pos = _errors(traj, truth, T, 0.1)[0]
        rows.append(
            [label, str(res.iterations), f"{res.converged}", f"{res.cost:.6g}", "-", "-",
             f"{pos:.4f} (max {1e3 * dp:.2f} mm from stol=0)"]
        )  # fmt: skip
        print("  ", rows[-1], flush=True)
    return (
        "### 5. Start and stop (default knots; an unobservable roll)\n\n"
        + _table(
            ["problem", "iterations", "converged", "final cost", "rot err mean deg", "rot err max deg", "pos RMSE m"],
            rows,
        )
        + f"\n\nTwo-tag UWB: {T:g} s, GPTR anchors and tags, 20 Hz, sigma 0.05 m, knots every 0.1 s, Qc = 10 I."
    )


# ------------------------------------------------------------------------------------------------------------------
def se3_study(quick: bool, seeds: int, device: str) -> str:
    T, dt = 10.0, 0.1
    truth = FastTrajectory(kind="split", speed=40.0)
    rows, per_class = [], {}
    for cls in (SO3xR3Trajectory, SE3Trajectory):
        stats = []
        for seed in range(seeds):
            uwb = simulate_uwb(truth, 0.0, T, sigma=0.05, seed=100 + seed)
            meas = RangeMeasurement(uwb.t, uwb.anchors, uwb.ranges, tag_offset=uwb.tag_offsets, sigma=0.05)
            traj = cls.uniform(0.0, T, dt, qc_rot=10.0, qc_pos=10.0, device=device)
            init = perturbed_knots(truth, traj.knot_times.cpu().double(), seed=200 + seed)
            traj.set_knots(**{k: v.to(device) for k, v in init.items()})
            _, w, c = _clock(
                lambda traj=traj, meas=meas: traj.fit([meas], max_iter=50, warn=False, progress=False), device
            )
            it = traj.fit_result_.iterations
            parts = _iteration_parts(traj, meas, device)
            stats.append((w, c, it, c / it, parts["assembly"][1], parts["cost"][1], _errors(traj, truth, T, dt)[0]))
        med = [statistics.median(x[i] for x in stats) for i in range(7)]
        per_class[cls.__name__] = med
        rows.append(
            [cls.__name__, f"{med[0]:.2f}", f"{med[1]:.2f}", f"{med[2]:.0f}", f"{med[3]:.3f}", f"{med[4]:.3f}",
             f"{med[5]:.3f}", f"{med[6]:.4f}"]
        )  # fmt: skip
        print("  ", rows[-1], flush=True)
    a, b = per_class["SO3xR3Trajectory"], per_class["SE3Trajectory"]
    return (
        f"### 6. SE(3) vs SO(3)xR3, hand-written Jacobians for both (UWB, 10 s, 8 anchors x 3 tags, 20 Hz, knots every "
        f"{dt:g} s, Qc = 10 I, speed 40; median over {seeds} seed(s))\n\n"
        + _table(
            [
                "model",
                "fit wall s",
                "fit CPU s",
                "LM iterations",
                "CPU s / iteration",
                "assembly CPU s",
                "cost CPU s",
                "pos RMSE m",
            ],
            rows,
        )  # fmt: skip
        + f"\n\nSE(3) / SO(3)xR3: fit CPU time **{b[1] / a[1]:.2f}x**, CPU time per iteration **{b[3] / a[3]:.2f}x**, "
        f"assembly **{b[4] / a[4]:.2f}x** (before the hand-written SE(3) Jacobians, with forward-mode autodiff, the "
        "committed table's section 2 gave 16.6 s against 0.98 s per fit at this setting, 17x)."
    )


#: The child's memory measurement (also run alone by the tests): the resident set at the call and the high-water mark
#: of the call itself, reset just before it (``/proc/self/clear_refs``), in MiB. The previous baseline, the process's
#: peak so far (imports and the fit), hid any part of the call's own peak below it: the chunked evaluation read
#: 95 MiB above "before" for a 247 MiB output.
_PEAK_HELPERS = f"""
import gc
import sys

sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from _common import reset_peak_rss, status_mib


def measure_call(fn):
    gc.collect()
    if not reset_peak_rss():
        return fn(), float("nan"), float("nan")
    base = status_mib("VmRSS")
    out = fn()
    return out, base, status_mib("VmHWM")
"""

_RSS_CHILD = (
    _PEAK_HELPERS
    + """
import json, os, sys, time
import torch
torch.set_num_threads(1)
from gpgeom.datasets.trajectories import FastTrajectory, simulate_uwb
from gpgeom.models.trajectory import RangeMeasurement, SO3xR3Trajectory
truth = FastTrajectory(kind="split", speed=20.0)
uwb = simulate_uwb(truth, 0.0, 10.0, sigma=0.05, seed=1)
meas = RangeMeasurement(uwb.t, uwb.anchors, uwb.ranges, tag_offset=uwb.tag_offsets, sigma=0.05)
traj = SO3xR3Trajectory.uniform(0.0, 10.0, 0.1, qc_rot=10.0, qc_pos=10.0)
traj.fit([meas], compute_covariances=True, warn=False, progress=False)
t = torch.linspace(0.0, 10.0, int(sys.argv[1]), dtype=torch.float64)
kw = {} if sys.argv[2] == "default" else {"max_memory": float(sys.argv[2])}
w, c = time.perf_counter(), time.process_time()
st, base, peak = measure_call(lambda: traj.interpolate(t, covariance=True, **kw))
w, c = time.perf_counter() - w, time.process_time() - c
print(json.dumps({"base": base, "peak": peak, "wall": w, "cpu": c, "out": st.covariance.numel() * 8 / 2**20,
                  "trace": float(st.covariance.diagonal(dim1=-2, dim2=-1).sum())}))
"""
)


def memory_study(quick: bool) -> str:
    import json
    import subprocess

    from gpgeom.engine.chunking import DEFAULT_MAX_MEMORY

    n = 20000 if quick else 100000
    rows, traces = [], []
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for label, budget in (
        (f"chunks, default budget {DEFAULT_MAX_MEMORY / 2**20:g} MiB", "default"),
        ("one piece", "1e15"),
    ):
        out = subprocess.run(
            [sys.executable, "-c", _RSS_CHILD, str(n), budget], capture_output=True, text=True, check=True, env=env
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        traces.append(r["trace"])
        rows.append(
            [label, f"{r['base']:.0f}", f"{r['peak']:.0f}", f"{r['peak'] - r['base']:.0f}", f"{r['out']:.0f}",
             f"{r['wall']:.2f}", f"{r['cpu']:.2f}"]
        )  # fmt: skip
        print("  ", rows[-1], flush=True)
    same = abs(traces[0] - traces[1]) <= 1e-12 * abs(traces[1])
    return (
        f"### 7. Memory: `interpolate(t, covariance=True)` of {n:,} times (SO(3)xR3 WNOJ, 101 knots; a fresh process "
        "each; the kernel's high-water mark of the resident set reset just before the call)\n\n"
        + _table(
            [
                "evaluation",
                "RSS at the call MiB",
                "peak RSS of the call MiB",
                "increase MiB",
                "output MiB",
                "wall s",
                "CPU s",
            ],
            rows,
        )
        + f"\n\nSame covariances in both (sums of the diagonals equal to 1e-12: {same}). The RSS at the call "
        "is the process after importing torch and fitting; the peak is the call's own (high-water mark reset before "
        "it), so the increase is the call's working memory, its output included."
    )


def calibration_study(quick: bool) -> str:
    from gpgeom.datasets.trajectories import PriorTrajectory
    from gpgeom.metrics import nees, nees_band

    runs, T = (5, 10.0) if quick else (20, 10.0)
    tq = torch.arange(0.55, T - 0.4, 0.5, dtype=DT)  # mid-interval times 0.5 s apart
    setups = [
        ("analytic fast trajectory (speed 40), Qc = 10 I (the demo's prior)", [FastTrajectory("split", 40.0)] * runs,
         10.0, 10.0),
        ("draws from the model's prior, Qc = (0.1, 0.01) I", PriorTrajectory.draw(runs, T, qc_rot=0.1, qc_pos=0.01,
                                                                                 seed=7), 0.1, 0.01),
    ]  # fmt: skip
    rows = []
    for label, truths, qr, qp in setups:
        for problem in ("UWB", "pose"):
            pos, rot = [], []
            for i, truth in enumerate(truths):
                traj = SO3xR3Trajectory.uniform(0.0, T, 0.1, qc_rot=qr, qc_pos=qp)
                traj.set_knots(**truth.state(traj.knot_times).knots())
                if problem == "UWB":
                    uwb = simulate_uwb(truth, 0.0, T, sigma=0.05, seed=100 + i)
                    m = RangeMeasurement(uwb.t, uwb.anchors, uwb.ranges, tag_offset=uwb.tag_offsets, sigma=0.05)
                else:
                    tm = torch.arange(0.0, T, 0.02, dtype=DT) + 0.005
                    ps = simulate_pose(truth, tm, sigma_rot=0.01, sigma_pos=0.01, seed=100 + i)
                    m = PoseMeasurement(ps.t, R=ps.R, p=ps.p, sigma_rot=0.01, sigma_pos=0.01)
                traj.fit([m], compute_covariances=True, warn=False, progress=False)
                gt = truth.state(tq)
                st, cov = traj.predict(tq, return_cov=True)
                k = 3 * traj.order
                pos.append(nees(gt.p - st.p, cov[:, k : k + 3, k : k + 3]))
                rot.append(nees(so3_log(st.R.mT @ gt.R, validate=False), cov[:, :3, :3]))
            pos, rot = torch.stack(pos), torch.stack(rot)
            lo, hi = nees_band(3, runs)
            lo_all, hi_all = nees_band(3, pos.numel())
            mp, mr = float(pos.mean()), float(rot.mean())

            def verdict(lo_, hi_, mp=mp, mr=mr):
                return "/".join("yes" if lo_ <= x <= hi_ else ("high" if x > hi_ else "low") for x in (mp, mr))

            rows.append([label, problem, f"{mp:.2f}", f"{mr:.2f}", f"[{lo:.2f}, {hi:.2f}]", verdict(lo, hi),
                         f"[{lo_all:.2f}, {hi_all:.2f}]", verdict(lo_all, hi_all)])  # fmt: skip
            print("  ", rows[-1], flush=True)
    return (
        f"### 8. Calibration: mean NEES of position and rotation (3 dof each), {runs} runs x {tq.numel()} mid-interval "
        f"times 0.5 s apart, {T:g} s, knots every 0.1 s, fits started at the true knots; UWB: 8 anchors x 3 tags, "
        "20 Hz, sigma 0.05 m; pose: 50 Hz, sigma 0.01 rad / 0.01 m\n\n"
        + _table(
            [
                "truth and prior",
                "problem",
                "NEES position",
                "NEES rotation",
                "95% band (per-run means)",
                "in it (pos/rot)",
                "95% band (all samples independent)",
                "in it (pos/rot)",
            ],
            rows,
        )  # fmt: skip
        + "\n\nThe per-run band (chi-square of the mean of one value per run) is valid however the errors of one run "
        "are correlated; the all-samples band treats the times 0.5 s apart as independent (tighter). The truths drawn "
        "from the model's prior test the covariance itself: the Laplace covariance, its linearisation (UWB ranges "
        "with lever arms) and the interpolation covariance between knots. The analytic trajectory is a few "
        "sinusoids, much smoother at the knot scale than the prior's white-noise jerk, so a NEES below 3 there "
        "(a conservative posterior) is a mismatch of the prior with this motion, not a defect of the covariance, "
        "which the prior draws check."
    )


# ------------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--seeds", type=int, default=None, help="seeds of the accuracy study (default 3, quick 1)")
    ap.add_argument("--out", type=Path, default=None, help="report file (default: see Output in the module docstring)")
    args = ap.parse_args(argv)
    reduced = args.quick or (args.seeds is not None and args.seeds < 3)
    if args.out is None:
        args.out = results_path(report_name("trajectory", device=args.device, quick=reduced))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("--device cuda requested but CUDA is not available", file=sys.stderr)
        return 2
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    seeds = args.seeds or (1 if args.quick else 3)
    warnings.simplefilter("ignore", ConvergenceWarning)
    head = [
        "## GP trajectories (gpgeom.models.trajectory)",
        "",
        f"- machine: {platform.machine()} {platform.processor() or platform.platform()}, {os.cpu_count()} cores; "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); device {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""),
        f"- mode: {'quick' if args.quick else 'full'}; float64",
        "",
    ]
    t0 = time.perf_counter()
    parts = [interpolation_study(args.quick)]
    print(parts[-1], flush=True)
    parts.append(accuracy_study(args.quick, seeds, args.device))
    print(parts[-1], flush=True)
    text, slope = scaling_study(args.quick, args.device)
    parts.append(text)
    print(parts[-1], flush=True)
    parts.append(gtsam_study(args.quick))
    print(parts[-1], flush=True)
    parts.append(start_stop_study(args.quick, args.device))
    print(parts[-1], flush=True)
    parts.append(se3_study(args.quick, seeds, args.device))
    print(parts[-1], flush=True)
    if args.device == "cpu":
        parts.append(memory_study(args.quick))
        print(parts[-1], flush=True)
    parts.append(calibration_study(args.quick))
    print(parts[-1], flush=True)
    report = "\n".join(head) + "\n\n".join(parts) + f"\n\n(total {time.perf_counter() - t0:.0f} s)\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

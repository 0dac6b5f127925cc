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
   and 2 tags at 20 Hz, 16 ranges per knot) and the log-log slope.
4. External baseline (only when ``gtsam`` imports): the same pose-measurement problem through GTSAM's
   second-order (WNOA) Pose3 prior and through ours.
5. Start and stop: a body yawing 10 rad fitted from the default knots (the start built from the measurements,
   ``init="auto"``, against ``init="none"``), and the GPTR two-tag UWB problem whose roll about the tag axis is not
   observable (LM with the default ``stol``, with ``stol=0``, and ``method="gn"``).

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
from _common import RESULTS, report_name  # noqa: E402

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
def scaling_study(quick: bool, device: str) -> tuple[str, float]:
    Ks = [100, 300, 1000] if quick else [100, 300, 1000, 3000, 10000]
    truth = FastTrajectory(kind="split", speed=40.0)
    rows, times = [], []
    for K in Ks:
        T = (K - 1) * 0.1
        uwb = simulate_uwb(truth, 0.0, T, sigma=0.05, seed=1, anchors=GPTR_ANCHORS, tag_offsets=GPTR_TAG_OFFSETS)
        meas = RangeMeasurement(uwb.t, uwb.anchors, uwb.ranges, tag_offset=uwb.tag_offsets, sigma=0.05)
        init = perturbed_knots(truth, torch.arange(K, dtype=DT) * 0.1, sigma_rot=0.05, sigma_pos=0.1, seed=3)
        tt = {}
        for n_it in (1, 3):
            traj = SO3xR3Trajectory.uniform(0.0, T, 0.1, qc_rot=10.0, qc_pos=10.0, device=device)
            traj.set_knots(**{k: v.to(device) for k, v in init.items()})
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            # LM, whose first steps from this start are all accepted: each iteration assembles, solves and evaluates
            # (undamped Gauss-Newton steps raise the cost on this problem, whose roll is not observable, and are
            # rejected, which would skip the next assembly)
            traj.fit([meas], max_iter=n_it, ftol=0.0, xtol=0.0, gtol=0.0, stol=0.0, warn=False, progress=False)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            tt[n_it] = time.perf_counter() - t0
        per_it = (tt[3] - tt[1]) / 2.0
        times.append(per_it)
        rows.append([str(K), str(meas.num_blocks), f"{per_it:.3f}", f"{1e3 * per_it / K:.2f}"])
        print("  ", rows[-1], flush=True)
    lk = [math.log(k) for k in Ks]
    lt = [math.log(t) for t in times]
    mk, mt = statistics.mean(lk), statistics.mean(lt)
    slope = sum((a - mk) * (b - mt) for a, b in zip(lk, lt)) / sum((a - mk) ** 2 for a in lk)
    return (
        "### 3. Time per iteration (assembly + banded solve + cost; LM, every step accepted) vs knots\n\n"
        + _table(["knots K", "ranges", "s / iteration", "ms / iteration / knot"], rows)
        + f"\n\nlog-log slope (least squares, K = {Ks[0]}..{Ks[-1]}): **{slope:.2f}**"
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
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--seeds", type=int, default=None, help="seeds of the accuracy study (default 3, quick 1)")
    ap.add_argument("--out", type=Path, default=None, help="report file (default: see Output in the module docstring)")
    args = ap.parse_args(argv)
    reduced = args.quick or (args.seeds is not None and args.seeds < 3)
    if args.out is None:
        args.out = RESULTS / f"{report_name('trajectory', device=args.device, quick=reduced)}.md"
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
    report = "\n".join(head) + "\n\n".join(parts) + f"\n\n(total {time.perf_counter() - t0:.0f} s)\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

r"""``gpgeom demo`` section: UWB localisation of a fast-rotating body with a third-order GP trajectory."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from gpgeom.demo import Section, save_figure


def trajectory_section(out_dir: Path, *, quick: bool, seed: int, progress: bool | None) -> Section:
    r"""Fit an :class:`~gpgeom.models.trajectory.SO3xR3Trajectory` (WNOJ prior, closed-form kinematics) to simulated
    UWB ranges of the analytic fast trajectory; plot the path, the position error and its 3-sigma band.

    Args:
        out_dir: Folder of the figure.
        quick: 5 s of data at 10 Hz instead of 10 s at 20 Hz.
        seed: Seed of the measurement noise.
        progress: Progress bar over the Levenberg-Marquardt iterations (``True``/``False``/``None``).
    """
    import matplotlib.pyplot as plt

    from gpgeom.datasets.trajectories import FastTrajectory, simulate_uwb
    from gpgeom.geometry.lie import so3_log
    from gpgeom.metrics import nees
    from gpgeom.models.trajectory import RangeMeasurement, SO3xR3Trajectory

    dt64 = torch.float64
    T, rate, dt = (5.0, 10.0, 0.1) if quick else (10.0, 20.0, 0.1)
    truth = FastTrajectory(kind="split", speed=40.0)
    uwb = simulate_uwb(truth, 0.0, T, rate=rate, sigma=0.05, seed=seed)
    meas = RangeMeasurement(uwb.t, uwb.anchors, uwb.ranges, tag_offset=uwb.tag_offsets, sigma=0.05)
    traj = SO3xR3Trajectory.uniform(0.0, T, dt, qc_rot=10.0, qc_pos=10.0)  # the fit starts from the ranges
    t0 = time.perf_counter()
    traj.fit([meas], max_iter=50, compute_covariances=True, progress=progress)
    fit_s = time.perf_counter() - t0

    tq = torch.arange(dt, T - dt, 0.01, dtype=dt64)
    gt = truth.state(tq)
    st, cov = traj.predict(tq, return_cov=True)
    perr = (st.p - gt.p).norm(dim=-1)
    rerr = so3_log(gt.R.mT @ st.R, validate=False).norm(dim=-1)
    k = 3 * traj.order  # rows of p in the state covariance
    pcov = cov[:, k : k + 3, k : k + 3]
    psd = pcov.diagonal(dim1=-2, dim2=-1).sum(-1).sqrt()  # sqrt(trace) of the position covariance
    # the error against the covariance (NEES, 3 for a calibrated posterior; gpgeom.metrics, benchmarks/trajectory.py)
    nees_p = float(nees(gt.p - st.p, pcov).mean())
    nees_r = float(nees(so3_log(st.R.mT @ gt.R, validate=False), cov[:, :3, :3]).mean())
    pos_rmse = float(perr.square().mean().sqrt())
    rot_rmse = math.degrees(float(rerr.square().mean().sqrt()))
    w_mean = float(gt.omega.norm(dim=-1).mean())
    inside = float((perr <= 3 * psd).double().mean())

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].plot(gt.p[:, 0], gt.p[:, 1], "k-", lw=2, label="truth")
    ax[0].plot(st.p[:, 0], st.p[:, 1], "C1--", lw=1, label="estimate")
    kp = traj.p
    ax[0].plot(kp[:, 0], kp[:, 1], "C1.", ms=3, label="knots")
    anc = uwb.anchors.unique(dim=0)
    ax[0].plot(anc[:, 0], anc[:, 1], "C3^", label="anchors")
    ax[0].set_xlabel("x (m)")
    ax[0].set_ylabel("y (m)")
    ax[0].set_aspect("equal")
    ax[0].legend(fontsize=8)
    ax[0].set_title(f"UWB localisation, |omega| ~ {w_mean:.1f} rad/s")
    ax[1].plot(tq, perr * 100, "C0", lw=1, label="position error")
    ax[1].fill_between(tq, 0 * psd, 3 * psd * 100, color="C0", alpha=0.2, label="3 sigma (posterior)")
    ax[1].set_xlabel("t (s)")
    ax[1].set_ylabel("cm")
    ax[1].legend(fontsize=8)
    ax[1].set_title("error and uncertainty")
    path = save_figure(fig, out_dir, "trajectory_uwb.png")

    res = traj.fit_result_
    return Section(
        title="GP trajectory (SO(3)xR3, WNOJ, closed-form kinematics): UWB localisation",
        text=(
            f"{T:g} s of a fast 6-DoF trajectory (mean |omega| {w_mean:.1f} rad/s) from {meas.num_blocks} UWB ranges "
            f"(8 anchors, 3 tags, sigma 0.05 m), knots every {dt:g} s, started from the ranges alone (multilateration, "
            "a position-only solve, rotations from the tags' lever arms); Levenberg-Marquardt on the "
            "block-tridiagonal normal matrix."
        ),
        table=[
            ("knots", str(traj.num_knots)),
            ("ranges", str(meas.num_blocks)),
            ("LM iterations", f"{res.iterations} ({'converged' if res.converged else 'not converged'})"),
            ("fit time", f"{fit_s:.1f} s"),
            ("position RMSE (100 Hz)", f"{100 * pos_rmse:.2f} cm"),
            ("rotation RMSE (100 Hz)", f"{rot_rmse:.2f} deg"),
            ("errors inside the 3-sigma band", f"{100 * inside:.0f} %"),
            ("mean NEES position / rotation (3 = calibrated)", f"{nees_p:.2f} / {nees_r:.2f}"),
        ],
        figures=[path],
    )

#!/usr/bin/env python3
r"""GP trajectories in float32 against float64 on the UWB problem of ``benchmarks/trajectory.py``.

The problem is that of section 2 of ``benchmarks/trajectory.py``: 10 s of the "split" trajectory at speed 40 (about 4
rad/s), 8 anchors x 3 tags at 20 Hz, range noise 0.05 m, knots perturbed from the truth (seed 200), Levenberg-Marquardt
with at most 50 iterations. Each estimator and knot spacing is fitted twice from the same measurements and initial
knots, once in float64 and once in float32 (the measurements and knots cast), and the float32 fit is compared with
the float64 one: iterations, convergence, the relative difference of the final cost, the largest rotation difference
(rad) and position difference (m) on a 0.01 s grid, and both against the truth (rotation RMSE). Then the float32 fit is
asked for its Laplace covariances (``compute_covariances=True``): where it gives them, the largest relative difference
of its predicted rotation and position standard deviations from float64's (the covariance step of a float32 fit
sums the normal matrix and factorises it in float64; before, a WNOJ grid of 0.1 s or finer was refused with a
``NotPSDError``); where it is refused, the table says so.

Usage: ``python benchmarks/trajectory_float32.py [--quick]``. Writes ``benchmarks/results/trajectory_float32.md``;
``--quick`` (knots 0.1 and 0.2 s, SO(3) x R^3 only) writes ``benchmarks/results/local/trajectory_float32_quick.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import report_name, write_benchmark_report  # noqa: E402
from trajectory import ESTIMATORS, _rot_err, _table  # noqa: E402

from gpgeom.datasets.trajectories import FastTrajectory, perturbed_knots, simulate_uwb  # noqa: E402
from gpgeom.errors import ConvergenceWarning, NotPSDError  # noqa: E402
from gpgeom.models.trajectory import RangeMeasurement  # noqa: E402

T = 10.0
SPACINGS, QUICK_SPACINGS = (0.05, 0.1, 0.2, 0.3), (0.1, 0.2)
NAMES = ("SO3xR3 WNOJ closed-form", "SO3xR3 WNOA (2nd order)", "SE3 WNOJ closed-form")
QUICK_NAMES = NAMES[:1]


def fit(name: str, dt: float, meas: RangeMeasurement, truth: FastTrajectory, dtype: torch.dtype):
    r"""The trajectory ``name`` with knots every ``dt`` s, fitted in ``dtype`` from the perturbed knots, and its fit
    time (s)."""
    cls, prior, kin = ESTIMATORS[name]
    traj = cls.uniform(0.0, T, dt, prior=prior, kinematics=kin, qc_rot=10.0, qc_pos=10.0, dtype=dtype)
    init = perturbed_knots(truth, traj.knot_times.double(), prior=prior, seed=200)
    traj.set_knots(**{k: v.to(dtype) for k, v in init.items()})
    t0 = time.perf_counter()
    traj.fit([meas.to(dtype=dtype)], max_iter=50, warn=False, progress=False)
    return traj, time.perf_counter() - t0


def compare(name: str, dt: float, meas: RangeMeasurement, truth: FastTrajectory) -> list[str]:
    r"""One row of the table: float32 against float64 for one estimator and knot spacing."""
    t64, s64 = fit(name, dt, meas, truth, torch.float64)
    t32, s32 = fit(name, dt, meas, truth, torch.float32)
    r64, r32 = t64.fit_result_, t32.fit_result_
    tq = torch.arange(dt, T - dt, 0.01, dtype=torch.float64)
    a64, a32 = t64.predict(tq), t32.predict(tq.float())
    gt = truth.state(tq)
    rot_diff = float(_rot_err(a32.R.double(), a64.R).max())
    pos_diff = float((a32.p.double() - a64.p).abs().max())
    rmse = [float(_rot_err(gt.R, a.R.double()).square().mean().sqrt()) for a in (a64, a32)]
    cost_rel = abs(r32.cost - r64.cost) / r64.cost
    nonfinite = int((~torch.isfinite(a32.R)).sum() + (~torch.isfinite(a32.p)).sum())
    t64.fit([meas], max_iter=50, warn=False, progress=False, compute_covariances=True)  # from its estimate
    _, sd64 = t64.predict(tq, return_std=True)
    try:
        t32.fit([meas.to(dtype=torch.float32)], max_iter=50, warn=False, progress=False, compute_covariances=True)
        _, sd32 = t32.predict(tq.float(), return_std=True)
        rel = [((getattr(sd32, c).double() - getattr(sd64, c)) / getattr(sd64, c)).abs().max() for c in "Rp"]
        cov = f"{float(max(rel)):.1e}"
    except NotPSDError:
        cov = "refused (NotPSDError)"
    return [
        name,
        f"{dt:g}",
        f"{r64.iterations} / {r32.iterations}",
        f"{'yes' if r64.converged else 'no'} / {'yes' if r32.converged else 'no'}",
        f"{cost_rel:.1e}",
        f"{rot_diff:.1e}",
        f"{pos_diff:.1e}",
        f"{rmse[0]:.2e} / {rmse[1]:.2e}",
        str(nonfinite),
        cov,
        f"{s64:.1f} / {s32:.1f}",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="knots 0.1 and 0.2 s, SO(3) x R^3 only (about a minute)")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    warnings.simplefilter("ignore", ConvergenceWarning)
    truth = FastTrajectory(kind="split", speed=40.0)
    uwb = simulate_uwb(truth, 0.0, T, sigma=0.05, seed=100)
    meas = RangeMeasurement(uwb.t, uwb.anchors, uwb.ranges, tag_offset=uwb.tag_offsets, sigma=0.05)
    t0 = time.perf_counter()
    rows = []
    for dt in QUICK_SPACINGS if args.quick else SPACINGS:
        for name in QUICK_NAMES if args.quick else NAMES:
            rows.append(compare(name, dt, meas, truth))
            print("  ", rows[-1], flush=True)
    header = [
        "estimator",
        "knots s",
        "iterations f64 / f32",
        "converged f64 / f32",
        "cost rel. diff",
        "max rot diff rad",
        "max pos diff m",
        "rot RMSE to truth rad f64 / f32",
        "non-finite f32",
        "f32 covariances: max rel. diff of std (R, p)",
        "fit s f64 / f32",
    ]
    write_benchmark_report(
        report_name("trajectory_float32", quick=args.quick),
        "GP trajectories in float32 against float64 (UWB, 10 s, 8 anchors x 3 tags, 20 Hz, speed 40)",
        [
            f"mode: {'quick' if args.quick else 'full'}; {time.perf_counter() - t0:.0f} s in all; "
            "`benchmarks/trajectory_float32.py` (its docstring says what each column is)"
        ],
        [_table(header, rows)],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

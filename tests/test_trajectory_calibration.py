#!/usr/bin/env python3
r"""Calibration of the GP trajectories' posterior covariance: the normalised estimation error squared (NEES) of
position and rotation over 20 simulated runs (:mod:`gpgeom.metrics`, Bar-Shalom, Li & Kirubarajan 2001, sec. 5.4.2).

* Truths drawn from the model's own white-noise-on-jerk prior (:class:`gpgeom.datasets.trajectories.
  PriorTrajectory`), a UWB problem (nonlinear ranges with lever arms) and a pose problem: the mean NEES lies in its
  95% chi-square band, so the Laplace covariance, its linearisation and the interpolation covariance between knots
  are consistent. A covariance off by a factor 1.5 either way leaves the band.
* The analytic fast trajectory (much smoother at the knot scale than any prior draw that explains its jerk): the
  posterior is conservative there, never over-confident (mean NEES below the band's upper end).

The band is that of the per-run mean NEES (one value per run, ``nees_band(3, runs)``): valid however the errors at
the query times of one run are correlated. ``benchmarks/trajectory.py`` reports the full-size table.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from trajectory_factories import uwb_ranges

from gpgeom.datasets.trajectories import FastTrajectory, PriorTrajectory, simulate_pose
from gpgeom.errors import ConvergenceWarning
from gpgeom.geometry.lie import so3_log
from gpgeom.metrics import nees, nees_band
from gpgeom.models.trajectory import PoseMeasurement, SO3xR3Trajectory

DT = torch.float64
RUNS, T = 20, 4.0
QC_ROT, QC_POS = 0.1, 0.01


def _measure(problem: str, truth, seed: int):
    if problem == "uwb":
        return [uwb_ranges(truth, T, seed=seed)]
    tm = torch.arange(0.0, T, 0.02, dtype=DT) + 0.005
    pose = simulate_pose(truth, tm, sigma_rot=0.01, sigma_pos=0.01, seed=seed)
    return [PoseMeasurement(pose.t, R=pose.R, p=pose.p, sigma_rot=0.01, sigma_pos=0.01)]


def run_nees(problem: str, truths, qc_rot: float, qc_pos: float, scale: float = 1.0):
    r"""Per-run mean NEES of position and rotation (``runs`` each) at query times 0.5 s apart (mid-interval), the
    fit started at the true knots; ``scale`` multiplies the reported covariance (to show that the check can fail)."""
    tq = torch.arange(0.55, T - 0.4, 0.5, dtype=DT)
    pos, rot = [], []
    for i, truth in enumerate(truths):
        traj = SO3xR3Trajectory.uniform(0.0, T, 0.1, qc_rot=qc_rot, qc_pos=qc_pos)
        traj.set_knots(**truth.state(traj.knot_times).knots())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            traj.fit(_measure(problem, truth, 100 + i), compute_covariances=True, progress=False)
        gt = truth.state(tq)
        st, cov = traj.predict(tq, return_cov=True)
        cov = scale * cov
        ps = 3 * traj.order
        pos.append(nees(gt.p - st.p, cov[:, ps : ps + 3, ps : ps + 3]).mean())
        rot.append(nees(so3_log(st.R.mT @ gt.R, validate=False), cov[:, :3, :3]).mean())
    return torch.stack(pos), torch.stack(rot)


@pytest.fixture(scope="module")
def prior_draws():
    return PriorTrajectory.draw(RUNS, T, qc_rot=QC_ROT, qc_pos=QC_POS, seed=7)


@pytest.mark.parametrize("problem", ["uwb", "pose"])
def test_nees_of_truths_drawn_from_the_prior_lies_in_its_band(problem, prior_draws):
    lo, hi = nees_band(3, RUNS)
    pos, rot = run_nees(problem, prior_draws, QC_ROT, QC_POS)
    assert lo <= float(pos.mean()) <= hi, (float(pos.mean()), lo, hi)
    assert lo <= float(rot.mean()) <= hi, (float(rot.mean()), lo, hi)
    if problem == "pose":  # the same check fails for a covariance 1.5 times too large or too small
        for scale in (1.5, 1 / 1.5):
            pos_s, rot_s = pos / scale, rot / scale  # NEES scales with the inverse covariance
            assert not (lo <= float(pos_s.mean()) <= hi and lo <= float(rot_s.mean()) <= hi), scale


def test_nees_of_the_analytic_fast_trajectory_is_never_over_confident():
    truth = FastTrajectory(kind="split", speed=40.0)
    _, hi = nees_band(3, 6)
    pos, rot = run_nees("pose", [truth] * 6, 10.0, 10.0)
    assert float(pos.mean()) < hi and float(rot.mean()) < hi
    assert float(pos.mean()) < 3.0 and float(rot.mean()) < 3.0  # conservative: a smoother motion than the prior's


def test_prior_trajectory_follows_the_wnoj_chain():
    r"""The position increments of prior draws on their grid have the WNOJ transition's covariance
    :math:`q\,Q(\delta)` (chi-square of the whitened increments, 3 x 3 x 200 x 10 numbers), the draws are seeded,
    and the state at grid times is the drawn knot."""
    from gpgeom.models.trajectory.interpolation import MarkovChainAlgebra

    draws = PriorTrajectory.draw(10, 2.0, qc_rot=0.1, qc_pos=0.3, seed=1)
    grid = torch.arange(0, 201, dtype=DT) * 0.01
    Phi, W = MarkovChainAlgebra(3).prior_mats(torch.tensor([0.01], dtype=DT))
    z = []
    for d in draws:
        st = d.state(grid)
        g = torch.stack([st.p, st.v, st.a], 1)  # K x 3 x 3 (rows p, v, a)
        z.append(W[0] @ (g[1:] - Phi[0] @ g[:-1]) / 0.3**0.5)
    z = torch.cat(z)
    assert abs(float(z.square().mean()) - 1.0) < 4 * (2.0 / z.numel()) ** 0.5
    again = PriorTrajectory(2.0, qc_rot=0.1, qc_pos=0.3, seed=1)
    assert torch.equal(again.state(grid).R, PriorTrajectory(2.0, qc_rot=0.1, qc_pos=0.3, seed=1).state(grid).R)
    with pytest.raises(ValueError, match="qc_rot"):
        PriorTrajectory(1.0, qc_rot=-1.0)

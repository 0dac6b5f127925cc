#!/usr/bin/env python3
r"""The GP trajectories' posterior where the data stop: knots beyond the last measurement.

No measurement constrains the knots past the last one, so their posterior is the motion prior propagated from the
last measured state: its covariance has to grow there, and the errors of the extrapolated mean (large: a spin's
rate and angular acceleration, estimated from noisy poses, are carried forward over several knot intervals) have
to stay inside it.

* Positions of :class:`~gpgeom.models.trajectory.SO3xR3Trajectory` (a linear GP): the posterior mean and variance
  beyond the data are those of dense GP regression with the WNOJ kernel.
* Spins about random axes at random rates (zero jerk: smoother than the prior's draws), noisy poses, knots 1 to 3
  intervals past the last pose, both groups: the 95% ellipsoids of the rotation (right perturbation, in the Lie
  algebra) and of the position hold the truth at the nominal rate inside and beyond the data, one query time per
  run and region (independent Bernoulli trials: binomial tolerance), and the standard deviation beyond the data is
  many times that inside.
* Truths drawn from the prior itself (:class:`~gpgeom.datasets.trajectories.PriorTrajectory`): the mean NEES beyond
  the data lies in its chi-square band (a covariance 1.5 times too small or too large leaves it).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from gpgeom.datasets.trajectories import PriorTrajectory, simulate_pose
from gpgeom.geometry.lie import so3_exp, so3_log
from gpgeom.kernels.markov import WNOJKernel
from gpgeom.metrics import nees, nees_band
from gpgeom.models.trajectory import (
    KnotPrior,
    PoseMeasurement,
    PositionMeasurement,
    SE3Trajectory,
    SO3xR3Trajectory,
)

DT = torch.float64
CHI2_3_95 = 7.814727903251178  # the 95% quantile of the chi-square law with 3 degrees of freedom


def test_position_posterior_beyond_the_data_is_the_dense_gp():
    r"""Positions measured at the knots over [0, 2.5] s (``sigma = 0.05``), knots every 0.25 s up to 4 s: six knots
    past the data. The fit (mean and interpolated covariance, at and between the knots) equals dense GP regression
    with the WNOJ kernel to 1e-8 everywhere, and its standard deviation grows past the data (from at most 0.046
    inside to 1.8 at the end)."""
    gen = torch.Generator().manual_seed(5)
    kt = torch.arange(0.0, 4.0 + 1e-9, 0.25, dtype=DT)
    qc, c0, sig = 2.5, 0.7, 0.05
    obs = kt[kt <= 2.5]
    y = torch.randn(obs.shape[0], 3, dtype=DT, generator=gen)
    traj = SO3xR3Trajectory(kt, qc_rot=1.0, qc_pos=qc)
    zero = torch.zeros(3, dtype=DT)
    anchor = KnotPrior(0, R=torch.eye(3, dtype=DT), omega=zero, alpha=zero, p=zero, v=zero, a=zero, sigma=math.sqrt(c0))
    traj.fit([anchor, PositionMeasurement(obs, y, sigma=sig)], method="gn", compute_covariances=True)
    assert traj.fit_result_.converged
    tq = torch.linspace(0.05, 4.0, 80, dtype=DT)
    with torch.no_grad():  # dense GP algebra only (the kernel's parameters require grad)
        kern = WNOJKernel(t0=0.0, P0=c0).double()
        kern.qc = qc
        Kyy = kern(obs[:, None]).to_dense() + sig**2 * torch.eye(obs.shape[0], dtype=DT)
        Kqy = kern(tq[:, None], obs[:, None]).to_dense()
        mean = Kqy @ torch.linalg.solve(Kyy, y)
        var = kern(tq[:, None], diag=True) - (Kqy * torch.linalg.solve(Kyy, Kqy.mT).mT).sum(-1)
    st = traj.interpolate(tq, covariance=True)
    pvar = st.covariance[:, 9:12, 9:12].diagonal(dim1=-2, dim2=-1)
    assert float((st.p - mean).abs().max()) < 1e-8
    assert float(((pvar - var[:, None]) / var[:, None]).abs().max()) < 1e-8
    beyond = tq > 2.5
    assert float(pvar[beyond, 0].diff().min()) > 0  # growing past the data
    assert float(pvar[-1, 0]) > 100 * float(pvar[~beyond].max())  # 1.8 against at most 0.046 (std)


def _spins(cls, runs: int, seed: int = 0):
    r"""Per run (a random spin about a random axis at 0.3-2 rad/s, a random constant world velocity, poses at 10 Hz
    over [0, 2] s with 0.05 rad / 0.05 m of noise, knots 0.5 s apart up to 1-3 intervals past the last pose): the
    rotation and position NEES and the rotation's total standard deviation :math:`\sqrt{\mathrm{tr}\,\Sigma_R}` at
    one random time inside the data and one past them; each ``runs x 2`` (columns: inside, beyond)."""
    gen = torch.Generator().manual_seed(seed)
    sig, t_data, dk = 0.05, 2.0, 0.5
    rot, pos, sd = [], [], []
    for _ in range(runs):
        axis = torch.randn(3, dtype=DT, generator=gen)
        axis = axis / axis.norm()
        rate = 0.3 + 1.7 * float(torch.rand((), dtype=DT, generator=gen))
        R0, v = so3_exp(torch.randn(3, dtype=DT, generator=gen)), torch.randn(3, dtype=DT, generator=gen)
        extra = int(torch.randint(1, 4, (), generator=gen))
        t = torch.arange(0.0, t_data + 1e-9, 0.1, dtype=DT)

        def truth(tt, R0=R0, rate=rate, axis=axis, v=v):
            return R0 @ so3_exp(rate * tt[:, None] * axis), tt[:, None] * v

        R, p = truth(t)
        Rm = R @ so3_exp(sig * torch.randn(t.shape[0], 3, dtype=DT, generator=gen))
        pm = p + sig * torch.randn(t.shape[0], 3, dtype=DT, generator=gen)
        traj = cls.uniform(0.0, t_data + extra * dk, dk)
        traj.fit([PoseMeasurement(t, R=Rm, p=pm, sigma_rot=sig, sigma_pos=sig)], compute_covariances=True)
        u = torch.rand(2, dtype=DT, generator=gen)
        tq = torch.stack([0.1 + (t_data - 0.2) * u[0], t_data + 0.05 + (extra * dk - 0.05) * u[1]])
        st, cov = traj.predict(tq, return_cov=True)
        Rt, pt = truth(tq)
        ps = 3 * traj.order
        rot.append(nees(so3_log(st.R.mT @ Rt, validate=False), cov[:, :3, :3]))
        pos.append(nees(pt - st.p, cov[:, ps : ps + 3, ps : ps + 3]))
        sd.append(cov[:, :3, :3].diagonal(dim1=-2, dim2=-1).sum(-1).sqrt())
    return torch.stack(rot), torch.stack(pos), torch.stack(sd)


@pytest.mark.slow
@pytest.mark.parametrize("cls", [SO3xR3Trajectory, SE3Trajectory])
def test_spins_are_covered_inside_and_beyond_the_data(cls):
    r"""24 random spins (:func:`_spins`): the 95% ellipsoids of rotation and position hold the truth in at least
    95% minus three binomial standard deviations of the runs (0.82), inside the data and beyond them, and the mean
    NEES does not exceed the upper end of its chi-square band (4.06; a spin has no jerk: the prior is conservative
    there, never over-confident). The rotation's standard deviation beyond the data is at least 4 times that inside
    (median). Measured (SO(3)xR3 / SE(3)): coverage of the rotation 0.92 / 0.92 inside and 1.0 / 1.0 beyond, of the
    position 1.0 / 1.0 inside and 1.0 / 0.96 beyond; mean rotation NEES 3.3 / 3.4 inside and 1.1 / 1.2 beyond; the
    median standard deviation 0.034 rad inside and 0.27 rad beyond. The same check fails with the covariances divided
    by 4."""
    runs = 24
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rot, pos, sd = _spins(cls, runs)
    floor = 0.95 - 3 * math.sqrt(0.95 * 0.05 / runs)
    _, hi = nees_band(3, runs)

    def ok(scale: float) -> bool:
        cover = [float((x / scale < CHI2_3_95).double().mean()) for x in (rot[:, 0], rot[:, 1], pos[:, 0], pos[:, 1])]
        mean = [float(x.mean() / scale) for x in (rot[:, 0], rot[:, 1], pos[:, 0], pos[:, 1])]
        return min(cover) >= floor and max(mean) <= hi

    assert ok(1.0), (rot, pos)
    assert not ok(0.25)  # the check can fail: covariances four times too small
    assert float(sd[:, 1].median()) > 4 * float(sd[:, 0].median()), sd


@pytest.mark.slow
def test_prior_draws_are_calibrated_beyond_the_data():
    r"""Truths drawn from the WNOJ prior (:class:`~gpgeom.datasets.trajectories.PriorTrajectory`, ``qc_rot = 0.1``,
    ``qc_pos = 0.01``), poses at 10 Hz over [0, 2] s with 0.05 rad / 0.05 m of noise, knots 0.5 s apart to 3.5 s:
    the per-run mean NEES of rotation and position at 5 times past the data lies in the 95% chi-square band of 30
    runs ([2.19, 3.94]; measured 2.95 for the rotation and 3.45 for the position), and leaves it with the
    covariance 1.5 times too small or too large."""
    runs, sig = 30, 0.05
    truths = PriorTrajectory.draw(runs, 3.51, qc_rot=0.1, qc_pos=0.01, seed=3)
    tm = torch.arange(0.0, 2.0 + 1e-9, 0.1, dtype=DT)
    tq = torch.linspace(2.1, 3.5, 5, dtype=DT)
    rot, pos = [], []
    for i, truth in enumerate(truths):
        pose = simulate_pose(truth, tm, sigma_rot=sig, sigma_pos=sig, seed=100 + i)
        traj = SO3xR3Trajectory.uniform(0.0, 3.5, 0.5, qc_rot=0.1, qc_pos=0.01)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traj.fit(
                [PoseMeasurement(pose.t, R=pose.R, p=pose.p, sigma_rot=sig, sigma_pos=sig)], compute_covariances=True
            )
        st, cov = traj.predict(tq, return_cov=True)
        gt = truth.state(tq)
        rot.append(nees(so3_log(st.R.mT @ gt.R, validate=False), cov[:, :3, :3]).mean())
        pos.append(nees(gt.p - st.p, cov[:, 9:12, 9:12]).mean())
    rot, pos = torch.stack(rot), torch.stack(pos)
    lo, hi = nees_band(3, runs)
    assert lo <= float(rot.mean()) <= hi and lo <= float(pos.mean()) <= hi, (float(rot.mean()), float(pos.mean()))
    for scale in (1.5, 1 / 1.5):
        assert not (lo <= float(rot.mean() / scale) <= hi and lo <= float(pos.mean() / scale) <= hi), scale

r"""GP trajectories after a state change: the knot times and knots handed out are copies, and a fit interrupted half-way
leaves the previous estimate (knots and covariances) as it was."""

from __future__ import annotations

import warnings

import pytest
import torch
from trajectory_factories import uwb_ranges

from gpgeom.datasets.trajectories import FastTrajectory
from gpgeom.models.trajectory import CustomMeasurement, SE3Trajectory, SO3xR3Trajectory

D = torch.float64
T = 4.0


@pytest.mark.parametrize("cls", [SO3xR3Trajectory, SE3Trajectory])
def test_knot_times_handed_out_are_a_copy(cls):
    r"""An in-place change of ``traj.knot_times`` changed the trajectory's own times (a later ``knot_times`` was off
    by 0.05 from the constructor's, while the interpolation kept the given ones)."""
    given = torch.arange(0.0, T + 1e-9, 0.2, dtype=D)
    traj = cls(given)
    traj.knot_times.add_(0.05)
    torch.testing.assert_close(traj.knot_times, given, rtol=0, atol=0)


def _fitted(cls):
    r"""A trajectory fitted with covariances to UWB ranges of a fast trajectory, with its predictions at 17 times:
    ``(truth, traj, t, state, std)``."""
    truth = FastTrajectory(kind="split", speed=10.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traj = cls.uniform(0.0, T, 0.2).fit([uwb_ranges(truth, T, rate=20.0, seed=1)], compute_covariances=True)
    t = torch.linspace(0.1, T - 0.1, 17, dtype=D)
    state, std = traj.predict(t, return_std=True)
    return truth, traj, t, state, std


@pytest.mark.parametrize("cls", [SO3xR3Trajectory, SE3Trajectory])
def test_knots_handed_out_are_a_copy(cls):
    r"""``traj.knots`` was the model's own tensor: an in-place change moved the predicted positions while the knot
    covariances stayed those of the fitted knots. Now a copy: the predictions (mean and standard deviation) are
    unchanged, and ``set_knots`` is the way to set them."""
    _, traj, t, state, std = _fitted(cls)
    knots = traj.knots
    knots[:, 9:] += 1.0  # rates, positions and velocities off by one, in place
    got, got_std = traj.predict(t, return_std=True)
    torch.testing.assert_close((got.p, got_std.p), (state.p, std.p), rtol=0, atol=0)
    assert not torch.equal(traj.knots, knots)


@pytest.mark.parametrize("cls", [SO3xR3Trajectory, SE3Trajectory])
def test_an_interrupted_fit_keeps_the_previous_estimate(cls):
    r"""A measurement whose residual raises ``KeyboardInterrupt`` on its third evaluation: the trajectory predicts
    what it predicted before the call (mean and standard deviations)."""
    truth, traj, t, state, std = _fitted(cls)
    calls = []

    def residual(st, params=None):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return st["p"][..., :1] * 0.0

    stop = CustomMeasurement(torch.tensor([1.0, 2.0], dtype=D), residual, residual_dim=1, sigma=1.0)
    with pytest.raises(KeyboardInterrupt):
        traj.fit([uwb_ranges(truth, T, rate=20.0, seed=2), stop], compute_covariances=True)
    got, got_std = traj.predict(t, return_std=True)
    for a, b in ((got.R, state.R), (got.p, state.p), (got_std.p, std.p), (got_std.R, std.R)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

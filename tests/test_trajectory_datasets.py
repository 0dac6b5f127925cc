#!/usr/bin/env python3
r"""Tests of gpgeom.datasets.trajectories: exact derivatives (vs finite differences), simulated measurements (vs
the truth, noise-free and noise statistics), seeding and bad input."""

from __future__ import annotations

import pytest
import torch

from gpgeom.datasets.trajectories import (
    DEFAULT_ANCHORS,
    DEFAULT_TAG_OFFSETS,
    FastTrajectory,
    perturbed_knots,
    simulate_imu,
    simulate_pose,
    simulate_tdoa,
    simulate_uwb,
)
from gpgeom.geometry.lie import check_rotation, so3_log

DT = torch.float64


@pytest.mark.parametrize("kind", ["split", "heading"])
def test_derivatives_match_finite_differences(kind):
    traj = FastTrajectory(kind=kind, speed=40.0, pos_speed=3.0)
    t = torch.linspace(0.3, 9.7, 25, dtype=DT)
    h = 1e-4
    st, sp, sm = traj.state(t), traj.state(t + h), traj.state(t - h)
    check_rotation(st.R, tol=1e-12)
    # omega from the group: Log(R(t-h)^T R(t+h)) / 2h = omega + O(h^2)
    w_fd = so3_log(sm.R.mT @ sp.R) / (2 * h)
    assert float((w_fd - st.omega).abs().max()) < 1e-6
    assert float(((sp.omega - sm.omega) / (2 * h) - st.alpha).abs().max()) < 1e-6
    assert float(((sp.p - sm.p) / (2 * h) - st.v).abs().max()) < 1e-6
    assert float(((sp.v - sm.v) / (2 * h) - st.a).abs().max()) < 1e-6


def test_split_trajectory_is_fast():
    w = FastTrajectory(speed=40.0).state(torch.linspace(0, 10, 501, dtype=DT)).omega.norm(dim=-1)
    assert 3.5 < float(w.mean()) < 4.5
    heading = FastTrajectory(kind="heading", speed=30.0, pos_speed=9.0).state(torch.linspace(0, 10, 501, dtype=DT))
    v_dir = heading.v / heading.v.norm(dim=-1, keepdim=True)
    assert torch.allclose(heading.R[..., 0], v_dir, atol=1e-12)  # body x-axis along the velocity


@pytest.mark.parametrize(("speed", "mean", "peak"), [(15.0, 1.49, 1.84), (30.0, 2.98, 3.67), (45.0, 4.48, 5.51)])
def test_documented_body_rates(speed, mean, peak):
    # the module docstring gave 1.7, 3.7, 4.9 rad/s "on average" (3.7 at speed 30 is the peak, the mean is 2.98);
    # |omega| here from the rotations alone: |Log(R(t-h)^T R(t+h))| / 2h
    traj, h = FastTrajectory(kind="split", speed=speed), 1e-4
    t = torch.linspace(0.0, 60.0, 6001, dtype=DT)
    w = so3_log(traj.state(t - h).R.mT @ traj.state(t + h).R).norm(dim=-1) / (2 * h)
    assert abs(float(w.mean()) - mean) < 0.01
    assert abs(float(w.max()) - peak) < 0.01


def test_uwb_simulation():
    traj = FastTrajectory()
    d = simulate_uwb(traj, 1.0, 3.0, rate=20.0, sigma=0.0, seed=0)
    P = DEFAULT_ANCHORS.shape[0] * DEFAULT_TAG_OFFSETS.shape[0]
    assert d.t.shape == (41 * P - (P - 1),)  # the last epoch keeps only its first (unstaggered) range
    assert bool((d.t >= 1.0).all()) and bool((d.t <= 3.0).all()) and bool((d.t.diff() > 0).all())
    st = traj.state(d.t)
    x = (st.R @ d.tag_offsets.unsqueeze(-1)).squeeze(-1) + st.p - d.anchors
    assert torch.allclose(x.norm(dim=-1), d.ranges, atol=1e-12)
    assert torch.equal(d.anchors, DEFAULT_ANCHORS[d.anchor_index])
    noisy = simulate_uwb(traj, 1.0, 3.0, rate=20.0, sigma=0.05, seed=0)
    assert 0.04 < float((noisy.ranges - d.ranges).std()) < 0.06
    again = simulate_uwb(traj, 1.0, 3.0, rate=20.0, sigma=0.05, seed=0)
    other = simulate_uwb(traj, 1.0, 3.0, rate=20.0, sigma=0.05, seed=1)
    assert torch.equal(noisy.ranges, again.ranges) and not torch.equal(noisy.ranges, other.ranges)
    flat = simulate_uwb(
        traj, 0.0, 1.0, rate=10.0, stagger=False, anchors=DEFAULT_ANCHORS[:2], tag_offsets=DEFAULT_TAG_OFFSETS[:1]
    )
    assert flat.t.shape == (22,) and torch.equal(flat.t[0::2], flat.t[1::2])


def test_pose_tdoa_imu_simulation():
    traj = FastTrajectory(kind="heading", speed=20.0)
    t = torch.linspace(0.0, 5.0, 2001, dtype=DT)
    st = traj.state(t)
    pose = simulate_pose(traj, t, sigma_rot=0.02, sigma_pos=0.03, seed=2)
    check_rotation(pose.R, tol=1e-12)
    assert 0.018 < float(so3_log(st.R.mT @ pose.R).std()) < 0.022
    assert 0.027 < float((pose.p - st.p).std()) < 0.033
    td = simulate_tdoa(traj, t[:100], sigma=0.0, tag_offset=torch.tensor([0.1, 0.0, 0.0], dtype=DT))
    x = (st.R[:100] @ td.tag_offsets.unsqueeze(-1)).squeeze(-1) + st.p[:100]
    assert torch.allclose((x - td.anchor_j).norm(dim=-1) - (x - td.anchor_i).norm(dim=-1), td.tdoa, atol=1e-12)
    imu = simulate_imu(traj, t[:100], sigma_gyro=0.0, sigma_accel=0.0, seed=3)
    assert torch.allclose(imu.gyro, st.omega[:100] + imu.bias_gyro, atol=1e-12)
    f = (st.R[:100].mT @ (st.a[:100] - imu.gravity).unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(imu.accel, f + imu.bias_accel, atol=1e-12)
    still = FastTrajectory(speed=1e-9, pos_speed=1e-9)  # (almost) at rest: the accelerometer reads +g upwards
    rest = simulate_imu(still, t[:3], sigma_gyro=0.0, sigma_accel=0.0, bias_accel=(0.0, 0.0, 0.0))
    up = (still.state(t[:3]).R @ rest.accel.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(up, torch.tensor([0.0, 0.0, 9.81], dtype=DT).expand(3, 3), atol=1e-6)


def test_perturbed_knots():
    traj = FastTrajectory()
    kt = torch.arange(0.0, 2.0, 0.1, dtype=DT)
    k = perturbed_knots(traj, kt, sigma_rot=0.2, sigma_pos=0.5, seed=4)
    assert set(k) == {"R", "omega", "alpha", "p", "v", "a"} and float(k["omega"].abs().max()) == 0.0
    assert set(perturbed_knots(traj, kt, prior="wnoa")) == {"R", "omega", "p", "v"}
    err = so3_log(traj.state(kt).R.mT @ k["R"]).norm(dim=-1)
    assert 0.1 < float(err.mean()) < 0.6


def test_dataset_bad_input():
    with pytest.raises(ValueError, match="Unknown `kind`='spiral'"):
        FastTrajectory(kind="spiral")
    with pytest.raises(ValueError, match="`speed` must be > 0"):
        FastTrajectory(speed=-1.0)
    with pytest.raises(ValueError, match="`t_end` \\(1.0\\) must exceed `t_start` \\(2.0\\)"):
        simulate_uwb(FastTrajectory(), 2.0, 1.0)
    with pytest.raises(ValueError, match="`anchors` must have trailing shape \\(\\*, 3\\)"):
        simulate_uwb(FastTrajectory(), 0.0, 1.0, anchors=torch.zeros(4, 2))
    with pytest.raises(ValueError, match="`t` must be a 1-D tensor of times"):
        simulate_pose(FastTrajectory(), torch.zeros(2, 2, dtype=DT))
    with pytest.raises(ValueError, match="at least 2 anchors for TDOA"):
        simulate_tdoa(FastTrajectory(), torch.zeros(3, dtype=DT), anchors=torch.zeros(1, 3))
    with pytest.raises(ValueError, match="`rate` must be > 0"):
        simulate_uwb(FastTrajectory(), 0.0, 1.0, rate=0.0)


def test_prior_trajectory_covers_its_whole_span():
    r"""``PriorTrajectory(t_end, dt=...)`` is defined on ``[0, t_end]``, but its fine grid ``dt * k`` ended below
    ``t_end`` where rounding cut the last step (``t_end = 0.9``, ``dt = 0.03``: the grid ended at
    0.8999999999999999), and ``state(t_end)`` was refused as outside the knot span. The grid now ends on ``t_end``;
    the state there continues the grid's own interpolation (finite differences of the position against the velocity)."""
    from gpgeom.datasets.trajectories import PriorTrajectory

    for t_end, dt in ((0.9, 0.03), (0.9, 0.3), (1.8, 0.06)):
        pt = PriorTrajectory(t_end, dt=dt, seed=2)
        st = pt.state(torch.tensor([t_end - 1e-3, t_end], dtype=DT))
        assert bool(torch.isfinite(st.p).all()) and bool(torch.isfinite(st.R).all())
        fd = (st.p[1] - st.p[0]) / 1e-3
        assert float((fd - st.v[1]).abs().max()) < 1e-3 * (1.0 + float(st.a[1].abs().max()))


def test_state_refuses_times_of_more_than_one_dimension():
    r"""``FastTrajectory.state`` and ``PriorTrajectory.state`` return ``n`` states for ``n`` times, but a ``2 x 3``
    array of times was flattened silently into 6 states (``p`` of shape ``6 x 3``); it is now a ValueError naming
    ``t`` and the shape. A scalar and a 1-D array are read as before."""
    from gpgeom.datasets.trajectories import PriorTrajectory

    for truth in (FastTrajectory(), PriorTrajectory(1.0, dt=0.05, seed=0)):
        with pytest.raises(ValueError, match=r"`t` must be a time or a 1-D tensor of times, got shape \(2, 3\)"):
            truth.state(torch.full((2, 3), 0.5, dtype=DT))
        one, many = truth.state(0.5), truth.state(torch.tensor([0.25, 0.5], dtype=DT))
        assert one.p.shape == (1, 3) and many.p.shape == (2, 3) and torch.equal(one.p[0], many.p[1])

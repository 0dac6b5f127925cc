#!/usr/bin/env python3
r"""User-defined factors (:class:`~gpgeom.models.trajectory.CustomMeasurement`) on float32 trajectories.

A float32 fit with any ``CustomMeasurement`` that reads the rotation failed with "expected scalar type Float but found
Double" (float64 or float32 times alike): the forward-mode linearisation perturbed ``R`` by ``so3_exp`` of a single
3-vector, and torch's forward AD gives the tangent of a 0-dim tensor times a Python float in float64
(pytorch/pytorch#90065), which then met the float32 state in a matmul. The truths here: the same problem in float64,
and the same factor written as the built-in measurement.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpgeom.datasets.trajectories import FastTrajectory
from gpgeom.models.trajectory import (
    CustomMeasurement,
    PoseMeasurement,
    PositionMeasurement,
    SE3Trajectory,
    SO3xR3Trajectory,
)

DT = torch.float64
TRUTH = FastTrajectory(kind="split", speed=20.0)


def _problem(M: int = 40, seed: int = 3):
    r"""Times, noisy positions, barometer-like heights :math:`p_z + h_0` (``h0 = 0.7``) and sparse poses."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.linspace(0.0, 2.0, M, dtype=DT)
    gt = TRUTH.state(t)
    y = gt.p + 0.02 * torch.randn(M, 3, dtype=DT, generator=gen)
    z = gt.p[:, 2] + 0.7 + 0.02 * torch.randn(M, dtype=DT, generator=gen)
    pose = PoseMeasurement(t[::4], R=gt.R[::4], p=gt.p[::4], sigma_rot=0.05, sigma_pos=0.05)
    return t, y, z, pose


def _height(st, prm, d):
    return (st["p"][:, 2] + prm["h0"][0] - d["z"]).unsqueeze(-1)


def _position(st, prm, d):
    return st["p"] - d["y"]


def _fit(cls, dtype, meas, **kw):
    r"""Fit to tight tolerances in both dtypes: float32's defaults (``1e-5``) may stop the SE(3) fit 3e-4 away
    (relative) from the optimum, which would be a comparison of stopping rules, not of the linearisation."""
    traj = cls.uniform(0.0, 2.0, 0.25, qc_rot=10.0, qc_pos=10.0, dtype=dtype)
    return traj.fit(meas, ftol=1e-12, xtol=1e-12, gtol=1e-12, **kw)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("cls", [SO3xR3Trajectory, SE3Trajectory])
@pytest.mark.parametrize("time_dtype", [torch.float64, torch.float32])
def test_float32_custom_factor_fits_like_float64(cls, time_dtype):
    t, y, z, pose = _problem()
    tt = t.to(time_dtype)
    fits = {}
    for dtype in (torch.float32, torch.float64):
        baro = CustomMeasurement(
            tt, _height, residual_dim=1, sigma=0.02, params={"h0": np.zeros(1)}, data={"z": z.numpy()}
        )
        fits[dtype] = _fit(cls, dtype, [pose, baro], compute_covariances=True)
    f32, f64 = fits[torch.float32], fits[torch.float64]
    assert f32.knots.dtype == torch.float32 and f64.knots.dtype == torch.float64
    assert _rel(f32.knots, f64.knots) < 1e-4
    # the covariance step linearises the custom factor again: marginal stds as float64's (measured 1e-6)
    s32, s64 = (f.covariances_.diagonal(dim1=-2, dim2=-1).sqrt().detach().double() for f in (f32, f64))
    assert float(((s32 - s64) / s64).abs().max()) < 1e-3
    h32, h64 = f32.fit_result_.globals["h0"], f64.fit_result_.globals["h0"]
    assert abs(float(h32.detach()) - float(h64.detach())) < 1e-4
    assert abs(float(h64.detach()) - 0.7) < 0.03  # the offset is recovered, not just equal in both


@pytest.mark.parametrize("cls", [SO3xR3Trajectory, SE3Trajectory])
def test_float32_custom_position_equals_builtin(cls):
    t, y, _, pose = _problem()
    builtin = PositionMeasurement(t, y, sigma=0.02)
    custom = CustomMeasurement(t, _position, residual_dim=3, sigma=0.02, data={"y": y})
    b32 = _fit(cls, torch.float32, [pose, builtin])
    c32 = _fit(cls, torch.float32, [pose, custom])
    b64 = _fit(cls, torch.float64, [pose, builtin])
    assert _rel(c32.knots, b32.knots) < 1e-4
    assert _rel(c32.knots, b64.knots) < 1e-4
    assert abs(c32.fit_result_.cost - b64.fit_result_.cost) < 1e-3 * b64.fit_result_.cost


def test_float32_custom_factor_of_rates_matches_float64():
    # level 1 (R, omega, p, v): the rotation and rate perturbations all in the working dtype
    t, _, _, pose = _problem()
    gt = TRUTH.state(t)

    def rates(st, prm, d):
        return torch.cat([st["v"] - d["v"], (st["R"] @ st["omega"].unsqueeze(-1)).squeeze(-1) - d["w"]], -1)

    out = {}
    for dtype in (torch.float32, torch.float64):
        m = CustomMeasurement(
            t, rates, residual_dim=6, level=1, sigma=0.1, data={"v": gt.v, "w": (gt.R @ gt.omega[..., None])[..., 0]}
        )
        out[dtype] = _fit(SO3xR3Trajectory, dtype, [pose, m])
    assert _rel(out[torch.float32].knots, out[torch.float64].knots) < 1e-4


def test_custom_factor_of_another_dtype_is_a_type_error():
    t, y, _, pose = _problem()
    y64 = y.clone()
    # a float64 tensor captured by the function meets a float32 state: float64 residuals
    wrong64 = CustomMeasurement(t, lambda st, prm: st["p"] - y64, residual_dim=3, sigma=0.02)
    with pytest.raises(
        TypeError, match=r"`residual_fn` must return the trajectory's dtype torch.float32 \(or a narrower"
    ):
        _fit(SO3xR3Trajectory, torch.float32, [pose, wrong64])
    # a float64 constant in a matmul with the float32 state: the error says how to build it
    A = torch.eye(3, dtype=DT)
    mixed = CustomMeasurement(
        t, lambda st, prm, d: (A @ st["p"].unsqueeze(-1)).squeeze(-1) - d["y"], residual_dim=3, data={"y": y}
    )
    with pytest.raises(RuntimeError, match=r"The state is torch.float32: build constants from it"):
        _fit(SO3xR3Trajectory, torch.float32, [pose, mixed])


@pytest.mark.parametrize("cls", [SO3xR3Trajectory, SE3Trajectory])
def test_float32_residual_in_a_float64_fit_is_promoted(cls):
    # a float32 model of the sensor (here a float32 network) in a float64 fit worked before the dtype check (the
    # product with the float64 weights promoted its residuals) and then raised a TypeError; float32 values are exact
    # in float64, so they are promoted. The truth: the same factor computed in float64.
    t, y, _, pose = _problem()
    net = torch.nn.Linear(3, 3)  # float32 weights
    with torch.no_grad():
        net.weight.copy_(torch.eye(3))
        net.bias.zero_()

    def position32(st, prm, d):
        return net(st["p"].float()) - d["y"].float()

    m32 = CustomMeasurement(t, position32, residual_dim=3, sigma=0.02, data={"y": y})
    m64 = CustomMeasurement(t, _position, residual_dim=3, sigma=0.02, data={"y": y})
    gt = TRUTH.state(t)
    e32, J32, _ = m32.linearize({"R": gt.R, "p": gt.p}, {})
    e64, J64, _ = m64.linearize({"R": gt.R, "p": gt.p}, {})
    assert e32.dtype == J32.dtype == torch.float64
    # float32 rounds p, y and their difference once each (relative 2^-24); the residuals are divided by sigma
    bound = 2.0**-24 * (gt.p.abs() + y.abs() + (gt.p - y).abs()) / 0.02
    assert bool(((e32 - e64).detach().abs() <= 2 * bound).all())
    assert _rel(J32, J64) < 1e-6
    # default tolerances: float32 residuals are a staircase in the state, so 1e-12 would iterate on its steps
    a, b = (cls.uniform(0.0, 2.0, 0.25, qc_rot=10.0, qc_pos=10.0, dtype=DT).fit([pose, m]) for m in (m32, m64))
    assert a.knots.dtype == torch.float64
    # the cost as float64's (measured 2.5e-7 relative); the knots move along the cost's flat directions with the
    # float32 rounding of the residuals (measured 1.1e-3 relative, mostly rates)
    assert abs(a.fit_result_.cost - b.fit_result_.cost) < 1e-5 * b.fit_result_.cost
    assert _rel(a.knots, b.knots) < 1e-2

#!/usr/bin/env python3
r"""Tests of the speed and memory work on the GP trajectories, against independent truths (float64).

* SE(3): the two-channel implementation with hand-written Jacobians equals an independent body-twist reference
  (:math:`\dot\xi = J_r^{-1}\varpi`, the derivative terms by forward-mode ``jvp``, Barfoot 2017 ch. 7), and its
  Jacobians (like SO(3)xR3's) equal central finite differences of the residuals;
* every trajectory factor's one-call ``linearize`` equals its ``residual`` and ``jacobian``;
* the per-interval products of the interpolation equal the gathered ones;
* interpolation and prediction in memory-bounded chunks equal the one-piece results.
"""

from __future__ import annotations

import math

import pytest
import torch

from gpgeom.datasets.trajectories import FastTrajectory, simulate_pose, simulate_uwb
from gpgeom.geometry.lie import se3_ad, se3_jr, se3_jr_inv, so3_exp, so3_jl, so3_jl_inv, so3_log
from gpgeom.models.trajectory import (
    PoseMeasurement,
    RangeMeasurement,
    SE3Trajectory,
    SO3xR3Trajectory,
)

DT = torch.float64
FAST = FastTrajectory(kind="heading", speed=30.0, pos_speed=9.0)


def _mv(A, x):
    return (A @ x.unsqueeze(-1)).squeeze(-1)


def _knots(prior: str, gen: torch.Generator, K: int = 7, rate: float = 3.0):
    R = [so3_exp(torch.randn(3, dtype=DT, generator=gen))]
    for ang in (1e-9, 0.4, 2.0, math.pi - 1e-3, 1e-4, 1.2)[: K - 1]:
        ax = torch.randn(3, dtype=DT, generator=gen)
        R.append(R[-1] @ so3_exp(ang * ax / ax.norm()))
    out = {"R": torch.stack(R)}
    for c in ("omega", "p", "v") + (("alpha", "a") if prior == "wnoj" else ()):
        out[c] = rate * torch.randn(K, 3, dtype=DT, generator=gen)
    return out


def _traj(cls, prior, kin, seed=0):
    gen = torch.Generator().manual_seed(seed)
    kt = torch.cumsum(0.05 + 0.3 * torch.rand(7, dtype=DT, generator=gen), 0)
    traj = cls(kt, prior=prior, kinematics=kin, qc_rot=[1.0, 2.0, 3.0], qc_pos=[2.0, 0.5, 1.0])
    return traj.set_knots(**_knots(prior, gen))


# ------------------------------------------------------------------------------------------------------------------
# SE(3) against the body-twist reference
# ------------------------------------------------------------------------------------------------------------------
def _twists(S, N):
    nu = _mv(S["R"].mT, S["v"])
    tw = [torch.cat([S["omega"], nu], -1)]
    if N == 3:
        beta = _mv(S["R"].mT, S["a"]) - torch.linalg.cross(S["omega"], nu, dim=-1)
        tw.append(torch.cat([S["alpha"], beta], -1))
    return tw


def _reference_gammas(A, B, N, closed_form):
    r""":math:`\gamma_a = (0, \varpi_a, \dot\varpi_a)`, :math:`\gamma_b = (\xi, J_r^{-1}\varpi_b, J_r^{-1}\dot\varpi_b +
    \partial_\xi(J_r^{-1}\varpi_b)\dot\xi)` with :math:`\xi = (\mathrm{Log}(R_a^\top R_b), J_l^{-1}R_a^\top(p_b - p_a))`
    (or :math:`-\tfrac12\mathrm{ad}_{\varpi_b}\dot\xi` for the Taylor variant)."""
    phi = so3_log(A["R"].mT @ B["R"], validate=False)
    xi = torch.cat([phi, _mv(so3_jl_inv(phi), _mv(A["R"].mT, B["p"] - A["p"]))], -1)
    tw = _twists(B, N)
    xid = _mv(se3_jr_inv(xi), tw[0])
    gb = [xi, xid]
    if N == 3:
        if closed_form:
            d = torch.func.jvp(lambda x: _mv(se3_jr_inv(x), tw[0]), (xi,), (xid,))[1]
        else:
            d = -0.5 * _mv(se3_ad(tw[0]), xid)
        gb.append(_mv(se3_jr_inv(xi), tw[1]) + d)
    return torch.stack([torch.zeros_like(xi)] + _twists(A, N), 1), torch.stack(gb, 1)


def _reference_outputs(A, g, N, closed_form):
    xi, xid = g[:, 0], g[:, 1]
    phi, rho = xi[:, :3], xi[:, 3:]
    R = A["R"] @ so3_exp(phi)
    out = {"R": R, "p": A["p"] + _mv(A["R"], _mv(so3_jl(phi), rho))}
    Jr = se3_jr(xi)
    tw = _mv(Jr, xid)
    out["omega"], out["v"] = tw[:, :3], _mv(R, tw[:, 3:])
    if N == 3:
        xidd = g[:, 2]
        if closed_form:
            twd = _mv(Jr, xidd) + torch.func.jvp(lambda x: _mv(se3_jr(x), xid), (xi,), (xid,))[1]
        else:
            twd = _mv(Jr, xidd + 0.5 * _mv(se3_ad(tw), xid))
        out["alpha"] = twd[:, :3]
        out["a"] = _mv(R, twd[:, 3:] + torch.linalg.cross(tw[:, :3], tw[:, 3:], dim=-1))
    return out


@pytest.mark.parametrize("prior", ["wnoj", "wnoa"])
@pytest.mark.parametrize("kin", ["closed_form", "taylor"])
def test_se3_equals_the_body_twist_reference(prior, kin):
    traj = _traj(SE3Trajectory, prior, kin)
    N, cf = traj.order, kin == "closed_form"
    kt, X = traj.knot_times, traj.knots
    t = (kt[:-1, None] + torch.tensor([0.0, 0.25, 0.6, 1.0], dtype=DT) * kt.diff()[:, None]).reshape(-1)
    st = traj.interpolate(t)
    mix = traj._locate(t, "t")
    A, B = traj._unpack(X[mix.index]), traj._unpack(X[mix.index + 1])
    ga, gb = _reference_gammas(A, B, N, cf)
    ref = _reference_outputs(A, mix.Lam @ ga + mix.Psi @ gb, N, cf)
    for c in traj.state_components:
        scale = max(1.0, float(ref[c].abs().max()))
        assert float((getattr(st, c) - ref[c]).abs().max()) < 1e-11 * scale, c
    # the motion prior: W (gamma_b - Phi gamma_a), whitened per channel
    Phi, W = traj._prior_mats(kt.diff())
    ga, gb = _reference_gammas(traj._unpack(X[:-1]), traj._unpack(X[1:]), N, cf)
    w = torch.cat([traj.qc_rot, traj.qc_pos]).rsqrt()
    e_ref = ((W @ (gb - Phi @ ga)) * w).reshape(kt.shape[0] - 1, 6 * N)
    e = traj.prior_residuals()
    assert float((e - e_ref).abs().max()) < 1e-10 * max(1.0, float(e_ref.abs().max()))


def _central_differences(f, x0: torch.Tensor, h: float) -> torch.Tensor:
    cols = []
    for j in range(x0.shape[0]):
        d = torch.zeros_like(x0)
        d[j] = h
        cols.append((f(x0 + d) - f(x0 - d)) / (2 * h))
    return torch.stack(cols, -1)


@pytest.mark.parametrize("cls", [SO3xR3Trajectory, SE3Trajectory])
@pytest.mark.parametrize("kin", ["closed_form", "taylor"])
def test_hand_written_jacobians_equal_central_differences(cls, kin):
    r"""Interpolation and prior Jacobians (the engine's linearisation) against central differences of the same maps
    along the retraction, step 1e-6: agreement to the differences' truncation and rounding (1e-6 relative)."""
    traj = _traj(cls, "wnoj", kin, seed=5)
    traj.set_knots(omega=0.3 * traj.omega, alpha=0.3 * traj.alpha)
    kt, X, s = traj.knot_times, traj.knots, traj.tangent_dim
    t = (kt[:-1, None] + torch.tensor([0.1, 0.5, 0.9], dtype=DT) * kt.diff()[:, None]).reshape(-1)
    mix = traj._locate(t, "t")
    Xa, Xb = X[mix.index], X[mix.index + 1]
    st, Ja, Jb, _ = traj._interp(Xa, Xb, mix, 2, jac=True)
    comps = traj.state_components

    def interp(d):
        out = traj._interp(traj.retract(Xa, d[:s]), traj.retract(Xb, d[s:]), mix, 2, jac=False)[0]
        return torch.cat([so3_log(st["R"].mT @ out["R"], validate=False) if c == "R" else out[c] for c in comps], -1)

    fd = _central_differences(interp, torch.zeros(2 * s, dtype=DT), 1e-6)
    J = torch.cat([Ja, Jb], -1)
    assert float((fd - J).abs().max()) < 1e-6 * max(1.0, float(J.abs().max()))
    dt = kt.diff()
    _, Jp = traj._prior(X[:-1], X[1:], dt, jac=True)

    def prior(d):
        return traj._prior(traj.retract(X[:-1], d[:s]), traj.retract(X[1:], d[s:]), dt, jac=False)[0]

    fd = _central_differences(prior, torch.zeros(2 * s, dtype=DT), 1e-6)
    Jp = Jp.reshape(fd.shape)
    assert float((fd - Jp).abs().max()) < 1e-6 * max(1.0, float(Jp.abs().max()))


# ------------------------------------------------------------------------------------------------------------------
# The engine's view: linearize == residual + jacobian; per-interval products
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [SO3xR3Trajectory, SE3Trajectory])
def test_linearize_equals_residual_and_jacobian(cls):
    traj = _traj(cls, "wnoj", "closed_form", seed=2)
    kt = traj.knot_times
    t = torch.linspace(float(kt[0]), float(kt[-1]), 40, dtype=DT)
    truth = FastTrajectory(kind="split", speed=20.0)
    uwb = simulate_uwb(truth, float(kt[0]), float(kt[-1]), rate=10.0, seed=0)
    pose = simulate_pose(truth, t, seed=1)
    meas = [
        RangeMeasurement(uwb.t, uwb.anchors, uwb.ranges, tag_offset=uwb.tag_offsets, sigma=0.05),
        PoseMeasurement(pose.t, R=pose.R, p=pose.p, sigma_rot=0.01, sigma_pos=0.02),
    ]
    factors, g0, _ = traj.build_factors(meas)
    assert all(f.linearize is not None for f in factors)
    for f in factors:
        Xb = traj.knots[f.indices]
        r, Jx, Jg = f.linearize(Xb, g0)
        Jx2, Jg2 = f.jacobian(Xb, g0)
        r0 = f.residual(Xb, g0)  # the same numbers up to rounding (J_l from Exp J_r with the Jacobians)
        assert float((r - r0).abs().max()) <= 1e-14 * max(1.0, float(r0.abs().max()))
        assert torch.equal(Jx, Jx2) and (Jg is None) == (Jg2 is None)
    # and through the knots' Jacobians of interpolate (contracted from the left == multiplied after)
    f = factors[1]
    Xb = traj.knots[f.indices]
    mix = traj._locate(meas[0].t, "t")
    st, Ja, Jb, _ = traj._interp(Xb[:, 0], Xb[:, 1], mix, 0, jac=True)
    e, Js, _ = meas[0].to(dtype=DT).linearize(st, {})
    Jx = f.linearize(Xb, g0)[1]
    torch.testing.assert_close(Jx, torch.stack([Js @ Ja, Js @ Jb], 2), rtol=1e-12, atol=1e-12)


def test_per_interval_products_equal_the_gathered_ones():
    traj = SO3xR3Trajectory(torch.arange(6, dtype=DT))
    gen = torch.Generator().manual_seed(0)
    for t in (
        torch.rand(50, dtype=DT, generator=gen) * 5.0,  # scattered, several per interval: padded layout
        torch.cat([torch.full((40,), 0.5, dtype=DT), torch.tensor([1.5, 2.5, 3.5, 4.5], dtype=DT)]),  # fallback
    ):
        mix = traj._locate(t, "t")
        U = mix.first.shape[0]
        B = torch.randn(t.shape[0], 2, 5, dtype=DT, generator=gen)
        J = torch.randn(U, 5, 4, dtype=DT, generator=gen)
        torch.testing.assert_close(mix.per_interval_matmul(B, J), B @ J[mix.inverse], rtol=1e-13, atol=1e-13)


# ------------------------------------------------------------------------------------------------------------------
# Memory-bounded interpolation
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [SO3xR3Trajectory, SE3Trajectory])
def test_chunked_interpolation_equals_one_piece(cls):
    T = 2.0
    truth = FastTrajectory(kind="split", speed=20.0)
    pose = simulate_pose(truth, torch.arange(0.0, T, 0.05, dtype=DT) + 0.01, seed=3)
    traj = cls.uniform(0.0, T, 0.1, qc_rot=5.0, qc_pos=5.0)
    traj.fit([PoseMeasurement(pose.t, R=pose.R, p=pose.p, sigma_rot=0.02, sigma_pos=0.02)], compute_covariances=True)
    t = torch.rand(3, 97, dtype=DT, generator=torch.Generator().manual_seed(1)) * T
    one = traj.interpolate(t, jacobians=True, covariance=True, max_memory=1e15)
    d, s = 18, traj.tangent_dim
    tiny = 23 * 6 * 8 * d * 2 * s  # bytes: 22-23 times per chunk: 13-14 chunks of the 291, the last short
    parts = traj.interpolate(t, jacobians=True, covariance=True, max_memory=tiny)
    for name in ("R", "omega", "alpha", "p", "v", "a", "index", "jacobian_a", "jacobian_b", "covariance"):
        a, b = getattr(one, name), getattr(parts, name)
        assert a.shape == b.shape == (3, 97, *a.shape[2:]), name
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14, msg=name)
    mean, std = traj.predict(t, return_std=True, max_memory=tiny)
    var = one.covariance.diagonal(dim1=-2, dim2=-1).clamp_min(0.0)
    for i, c in enumerate(traj.state_components):
        torch.testing.assert_close(getattr(std, c), var[..., 3 * i : 3 * i + 3].sqrt(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(mean.p, one.p, rtol=0, atol=0)
    _, cov = traj.predict(t, return_cov=True, max_memory=tiny)
    torch.testing.assert_close(cov, one.covariance, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="max_memory"):
        traj.interpolate(t, covariance=True, max_memory=0.0)
    with pytest.raises(ValueError, match="max_memory"):
        traj.predict(t, return_std=True, max_memory="lots")

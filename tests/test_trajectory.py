#!/usr/bin/env python3
r"""Tests of gpgeom.models.trajectory against independent truths (float64).

* interpolation with exact knots of an analytic fast trajectory (derivatives by autodiff of the closed form);
* the local variable's theta-double-dot against finite differences of Log(R_a^T R(t));
* hand-written interpolation and prior Jacobians against torch.func.jacfwd, incl. angles near 0 and pi;
* the engine identity: the position posterior equals dense GP regression with the WNOJ kernel;
* UWB estimation of a fast 10 s trajectory; measurements at knot times; bad input; save/load; float32;
* the start from the measurements (a body yawing 10 rad from the default knots; UWB ranges with three tags), the
  stop test of a fit with an unobservable roll (two UWB tags), Gauss-Newton there;
* the model contract (tests/contract.py), predict with standard deviations / covariances, numpy inputs, the
  progress bar, repr and to().
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from trajectory_factories import fast_uwb_problem, uwb_ranges

import gpgeom
from gpgeom.datasets.trajectories import (
    GPTR_ANCHORS,
    GPTR_TAG_OFFSETS,
    FastTrajectory,
    perturbed_knots,
    simulate_uwb,
)
from gpgeom.engine.statespace import posterior as ss_posterior
from gpgeom.errors import ConvergenceWarning, ModelFileError, NotFittedError, NotPSDError
from gpgeom.geometry.lie import quat_to_rotmat, so3_exp, so3_log
from gpgeom.kernels.markov import WNOAKernel, WNOJKernel
from gpgeom.models.trajectory import (
    KnotPrior,
    PoseMeasurement,
    PositionMeasurement,
    RangeMeasurement,
    SE3Trajectory,
    SO3xR3Trajectory,
    Trajectory,
    TrajectoryFitResult,
    TrajectoryState,
    TrajectoryStd,
    local_kinematics,
)

DT = torch.float64
FAST = FastTrajectory(kind="heading", speed=30.0, pos_speed=9.0)  # |omega| about 4 rad/s, fast roll and yaw


def _rot_err(Ra: torch.Tensor, Rb: torch.Tensor) -> torch.Tensor:
    return so3_log(Ra.mT @ Rb, validate=False).norm(dim=-1)


# ------------------------------------------------------------------------------------------------------------------
# Interpolation accuracy and kinematics
# ------------------------------------------------------------------------------------------------------------------
def test_interpolation_with_exact_knots_closed_form_beats_taylor_beats_second_order():
    kt = torch.arange(0.0, 10.0 + 1e-9, 0.2, dtype=DT)
    tq = torch.linspace(0.5, 9.5, 1801, dtype=DT)
    truth = FAST.state(tq)
    assert 3.5 < float(truth.omega.norm(dim=-1).mean()) < 4.5
    err = {}
    for prior, kin in (("wnoj", "closed_form"), ("wnoj", "taylor"), ("wnoa", "closed_form")):
        traj = SO3xR3Trajectory(kt, prior=prior, kinematics=kin)
        traj.set_knots(**FAST.state(kt).knots(prior))
        st = traj.interpolate(tq)
        err[(prior, kin)] = float(_rot_err(truth.R, st.R).square().mean().sqrt())
        if prior == "wnoj":  # position is a plain quintic Hermite interpolation: tiny error
            assert float((st.p - truth.p).norm(dim=-1).max()) < 5e-3
    cf, ap, so = err[("wnoj", "closed_form")], err[("wnoj", "taylor")], err[("wnoa", "closed_form")]
    assert 10 * cf < ap < so, err
    assert cf < 1e-6


def test_theta_ddot_matches_finite_differences():
    ta = torch.tensor(2.0, dtype=DT)
    Ra = FAST.state(ta).R
    t = torch.tensor([2.05, 2.1, 2.2, 2.3], dtype=DT)  # |theta| up to about 1.2 rad
    st = FAST.state(t)
    th, thd, thdd = local_kinematics(Ra, st.R, st.omega, st.alpha)
    _, _, thdd_ap = local_kinematics(Ra, st.R, st.omega, st.alpha, kinematics="taylor")
    h = 1e-3

    def theta(tt):
        return so3_log(Ra.mT @ FAST.state(tt).R, validate=False)

    # fourth-order central differences (truncation ~ h^4, rounding ~ 1e-16 / h^2)
    f = {k: theta(t + k * h) for k in (-2, -1, 0, 1, 2)}
    fd1 = (f[-2] - 8 * f[-1] + 8 * f[1] - f[2]) / (12 * h)
    fd2 = (-f[-2] + 16 * f[-1] - 30 * f[0] + 16 * f[1] - f[2]) / (12 * h**2)
    assert torch.allclose(th, theta(t), atol=1e-14)
    assert float((thd - fd1).abs().max()) < 1e-6
    assert float((thdd - fd2).abs().max()) < 1e-6
    assert float((thdd_ap - fd2).abs().max()) > 1e-2  # the Taylor approximation is visibly off at 4 rad/s


def test_interpolation_at_knot_times_reproduces_knots():
    kt = torch.tensor([0.0, 0.13, 0.3, 0.55], dtype=DT)
    for cls in (SO3xR3Trajectory, SE3Trajectory):
        traj = cls(kt)
        traj.set_knots(**FAST.state(kt).knots())
        st = traj.interpolate(kt, jacobians=True)
        for c in ("p", "v", "a", "omega", "alpha"):
            assert torch.allclose(getattr(st, c), getattr(traj, c), atol=1e-10), c
        assert float(_rot_err(st.R, traj.R).max()) < 1e-10
        assert bool(torch.isfinite(st.jacobian_a).all()) and bool(torch.isfinite(st.jacobian_b).all())


# ------------------------------------------------------------------------------------------------------------------
# Jacobians vs jacfwd
# ------------------------------------------------------------------------------------------------------------------
def _random_knots(prior: str, rel_angles: list[float], gen: torch.Generator) -> dict[str, torch.Tensor]:
    r"""Knots whose consecutive relative rotations have the given angles (random axes)."""
    K = len(rel_angles) + 1
    R = [so3_exp(torch.randn(3, dtype=DT, generator=gen))]
    for ang in rel_angles:
        ax = torch.randn(3, dtype=DT, generator=gen)
        R.append(R[-1] @ so3_exp(ang * ax / ax.norm()))
    out = {
        "R": torch.stack(R),
        "omega": 3 * torch.randn(K, 3, dtype=DT, generator=gen),
        "p": torch.randn(K, 3, dtype=DT, generator=gen),
        "v": torch.randn(K, 3, dtype=DT, generator=gen),
    }
    if prior == "wnoj":
        out.update(alpha=5 * torch.randn(K, 3, dtype=DT, generator=gen), a=torch.randn(K, 3, dtype=DT, generator=gen))
    return out


_ANGLES = [1e-9, 1e-4, 0.3, 2.0, math.pi - 1e-3]


def _traj(cls, prior, kin, gen):
    kt = torch.cumsum(torch.rand(len(_ANGLES) + 1, dtype=DT, generator=gen) * 0.3 + 0.05, 0)
    traj = cls(kt, prior=prior, kinematics=kin, qc_rot=[1.0, 2.0, 3.0], qc_pos=[2.0, 0.5, 1.0])
    traj.set_knots(**_random_knots(prior, _ANGLES, gen))
    # small rates so that the interpolated angles stay near the knots' ones (near 0 and near pi)
    traj.set_knots(omega=traj.omega * 1e-3, **({"alpha": traj.alpha * 1e-3} if prior == "wnoj" else {}))
    return traj


@pytest.mark.parametrize("cls", [SO3xR3Trajectory, SE3Trajectory])
@pytest.mark.parametrize("prior", ["wnoj", "wnoa"])
@pytest.mark.parametrize("kin", ["closed_form", "taylor"])
def test_interpolation_jacobians_match_jacfwd(cls, prior, kin):
    gen = torch.Generator().manual_seed(3)
    traj = _traj(cls, prior, kin, gen)
    kt = traj.knot_times
    frac = torch.tensor([0.0, 0.3, 0.77, 1.0], dtype=DT)
    t = (kt[:-1, None] + frac * (kt[1:] - kt[:-1])[:, None]).reshape(-1)
    st = traj.interpolate(t, jacobians=True)
    mix = traj._locate(t, "t")
    X, s = traj.knots, traj.tangent_dim
    Xa, Xb = X[mix.index], X[mix.index + 1]
    comps = traj.state_components

    def f(d):
        out = traj._interp(traj.retract(Xa, d[:s]), traj.retract(Xb, d[s:]), mix, traj.order - 1, jac=False)[0]
        return torch.cat([so3_log(st.R.mT @ out["R"], validate=False) if c == "R" else out[c] for c in comps], -1)

    J = torch.func.jacfwd(f)(torch.zeros(2 * s, dtype=DT))
    scale = max(1.0, float(J.abs().max()))
    assert float((J[:, :, :s] - st.jacobian_a).abs().max()) < 1e-9 * scale
    assert float((J[:, :, s:] - st.jacobian_b).abs().max()) < 1e-9 * scale
    # the angles of R_a^T R_b and R_a^T R(t) reach both ends of [0, pi]
    ang_b = so3_log(traj.R[:-1].mT @ traj.R[1:], validate=False).norm(dim=-1)
    ang_t = so3_log(traj.R[mix.index].mT @ st.R, validate=False).norm(dim=-1)
    assert float(ang_b.min()) < 1e-8 and float(ang_b.max()) > math.pi - 2e-3
    assert float(ang_t[ang_t > 0].min()) < 1e-3 and float(ang_t.max()) > math.pi - 0.01


@pytest.mark.parametrize("cls", [SO3xR3Trajectory, SE3Trajectory])
@pytest.mark.parametrize("prior", ["wnoj", "wnoa"])
@pytest.mark.parametrize("kin", ["closed_form", "taylor"])
def test_prior_jacobians_match_jacfwd(cls, prior, kin):
    gen = torch.Generator().manual_seed(4)
    traj = _traj(cls, prior, kin, gen)
    traj.set_knots(omega=traj.omega * 1e3)  # full-size rates for the prior
    X, s = traj.knots, traj.tangent_dim
    dt = traj.knot_times.diff()
    e, Jx = traj._prior(X[:-1], X[1:], dt, jac=True)
    J = torch.func.jacfwd(
        lambda d: traj._prior(traj.retract(X[:-1], d[:s]), traj.retract(X[1:], d[s:]), dt, jac=False)[0]
    )(torch.zeros(2 * s, dtype=DT))
    scale = max(1.0, float(J.abs().max()))
    assert float((J - Jx.reshape(J.shape)).abs().max()) < 1e-9 * scale
    assert e.shape == (len(_ANGLES), 6 * traj.order)


def test_prior_residual_zero_on_a_constant_jerk_free_motion():
    # constant body rates and constant world acceleration satisfy the WNOJ mean dynamics exactly
    kt = torch.tensor([0.0, 0.4, 1.0], dtype=DT)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=DT)
    traj = SO3xR3Trajectory(kt)
    a = torch.tensor([0.3, 0.1, -0.2], dtype=DT)
    v0 = torch.tensor([1.0, 0.0, 0.0], dtype=DT)
    traj.set_knots(
        R=so3_exp(kt[:, None] * w),
        omega=w.expand(3, 3),
        alpha=torch.zeros(3, 3, dtype=DT),
        p=v0 * kt[:, None] + 0.5 * a * kt[:, None] ** 2,
        v=v0 + a * kt[:, None],
        a=a.expand(3, 3),
    )
    assert float(traj.prior_residuals().abs().max()) < 1e-12


# ------------------------------------------------------------------------------------------------------------------
# Engine identity: position posterior == dense GP regression with the WNOJ kernel
# ------------------------------------------------------------------------------------------------------------------
def test_position_posterior_equals_dense_wnoj_gp_regression():
    gen = torch.Generator().manual_seed(5)
    kt = torch.cumsum(0.05 + 0.2 * torch.rand(25, dtype=DT, generator=gen), 0)
    kt = kt - kt[0]  # t0 = 0, the start of the dense kernel below
    qc, c0, sig = 2.5, 0.7, 0.05
    obs = torch.arange(0, 25, 2)
    y = torch.randn(len(obs), 3, dtype=DT, generator=gen)
    traj = SO3xR3Trajectory(kt, qc_rot=1.0, qc_pos=qc)
    traj.set_knots(p=torch.randn(25, 3, dtype=DT, generator=gen))  # start away from the answer
    zero = torch.zeros(3, dtype=DT)
    anchor = KnotPrior(0, R=torch.eye(3, dtype=DT), omega=zero, alpha=zero, p=zero, v=zero, a=zero, sigma=math.sqrt(c0))
    traj.fit([anchor, PositionMeasurement(kt[obs], y, sigma=sig)], method="gn", compute_covariances=True)
    assert traj.fit_result_.converged and traj.fit_result_.iterations <= 3

    with torch.no_grad():  # dense GP algebra only (the kernel's parameters require grad)
        kern = WNOJKernel(t0=0.0, P0=c0).double()
        kern.qc = qc
        pk = traj.prior_kernel("pos")  # the trajectory's own view of its prior: same covariance
        assert torch.allclose(pk(kt[:, None]).to_dense()[0], WNOJKernel(t0=0.0).double()(kt[:, None]).to_dense() * qc)
        tq = torch.cat([kt, (kt[:-1] + kt[1:]) / 2 + 0.013])
        Kyy = kern(kt[obs, None]).to_dense() + sig**2 * torch.eye(len(obs), dtype=DT)
        Kqy = kern(tq[:, None], kt[obs, None]).to_dense()
        mean = Kqy @ torch.linalg.solve(Kyy, y)  # one GP per axis, same kernel
        var = kern(tq[:, None], diag=True) - (Kqy * torch.linalg.solve(Kyy, Kqy.mT).mT).sum(-1)
        st = traj.interpolate(tq, covariance=True)
        assert float((st.p - mean).abs().max()) < 1e-8
        pvar = st.covariance[:, 9:12, 9:12].diagonal(dim1=-2, dim2=-1)
        assert float((pvar - var[:, None]).abs().max() / var.max()) < 1e-8
        # knots' marginals from the engine's selected inversion
        assert torch.allclose(traj.covariances_[:, 9:12, 9:12].diagonal(dim1=-2, dim2=-1), var[:25, None], rtol=1e-8)
        # and the Kalman/RTS smoother on the state-space form agrees on the velocity too
        ss = ss_posterior(kern, kt[obs], y[:, 0], sig**2, t_test=tq)
        assert float((ss.test_mean - mean[:, 0]).abs().max()) < 1e-8
        assert float((ss.test_state_mean[:, 1] - st.v[:, 0]).abs().max()) < 1e-7


@pytest.mark.parametrize("default", [torch.float32, torch.float64])
@pytest.mark.parametrize("prior", ["wnoj", "wnoa"])
def test_prior_kernel_keeps_the_start_time_exact(default, prior):
    # 0.1784 and 1e6 + 0.1 are not float32 numbers: a start time rounded through float32 would move
    # (1e6 + 0.1 by about 0.03), so the kernel would see the first knot before or after its real t0.
    for start in (0.1784, 1e6 + 0.1):
        kt = start + torch.tensor([0.0, 0.2, 0.45, 0.7], dtype=DT)
        old = torch.get_default_dtype()
        torch.set_default_dtype(default)
        try:
            traj = SO3xR3Trajectory(kt, prior=prior, qc_rot=0.5, qc_pos=3.0)
            for part, qc in (("pos", 3.0), ("rot", 0.5)):
                k = traj.prior_kernel(part)
                assert k.t0.dtype == torch.float64 and k.t0.shape == (3,)
                assert k.t0.tolist() == [start] * 3  # bit-exact, not rounded
                assert k.qc.dtype == torch.float64 and torch.allclose(k.qc, torch.full((3,), qc, dtype=DT))
                with torch.no_grad():
                    K = k(kt[:, None]).to_dense()
                    # pinned at t0 (P0 = 0): zero prior variance at the first knot, then Q_c * tau^(2N-1) / (...)
                    assert float(K[:, 0, 0].abs().max()) == 0.0
                    ref = (WNOJKernel if prior == "wnoj" else WNOAKernel)(t0=0.0).double()(kt[:, None] - start)
                    torch.testing.assert_close(K, (ref.to_dense() * qc).expand(3, 4, 4), rtol=1e-6, atol=0.0)
        finally:
            torch.set_default_dtype(old)


# ------------------------------------------------------------------------------------------------------------------
# Estimation
# ------------------------------------------------------------------------------------------------------------------
def _pos_rmse(traj, truth, T, dt):
    tq = torch.arange(dt, T - dt, 0.01, dtype=DT)
    gt, st = truth.state(tq), traj.interpolate(tq)
    return float((st.p - gt.p).norm(dim=-1).square().mean().sqrt()), float(_rot_err(gt.R, st.R).square().mean().sqrt())


def test_uwb_estimation_fast_trajectory_converges_to_centimetres():
    T = 10.0
    truth, meas = fast_uwb_problem(T)
    traj = SO3xR3Trajectory.uniform(0.0, T, 0.1, qc_rot=10.0, qc_pos=10.0)
    traj.set_knots(**perturbed_knots(truth, traj.knot_times, sigma_rot=0.2, sigma_pos=0.5, seed=2))
    traj.fit([meas], max_iter=50)
    res = traj.fit_result_
    assert res.converged and res.iterations < 50
    pos, rot = _pos_rmse(traj, truth, T, 0.1)
    assert pos < 0.03, pos
    assert rot < math.radians(5.0), rot


@pytest.mark.parametrize("cls", [SO3xR3Trajectory, SE3Trajectory])
def test_fit_with_the_parallel_factorisation_equals_lapack(monkeypatch, cls):
    r"""What a GPU runs (``banded="auto"`` off the CPU: the odd-even factorisation, solves and selected inverse, on
    state size 18), forced on the CPU: the same iterations, knots and covariances as LAPACK's fit."""
    import gpgeom.engine.banded as banded_module

    T = 3.0
    truth, meas = fast_uwb_problem(T, rate=10.0)

    def fit():
        traj = cls.uniform(0.0, T, 0.1, qc_rot=10.0, qc_pos=10.0)
        traj.set_knots(**perturbed_knots(truth, traj.knot_times, sigma_rot=0.1, sigma_pos=0.2, seed=2))
        return traj.fit([meas], max_iter=50, compute_covariances=True)

    ref = fit()
    chosen = banded_module._method
    used = set()

    def off_the_cpu(method, t, op):
        how = chosen(method, t, op)
        how = "scan" if how == "lapack" else how
        used.add((op, how))
        return how

    monkeypatch.setattr(banded_module, "_method", off_the_cpu)
    scan = fit()
    assert used == {("cholesky", "scan"), ("solve", "scan"), ("selected_inverse", "scan")}
    assert scan.fit_result_.iterations == ref.fit_result_.iterations
    torch.testing.assert_close(scan.knots, ref.knots, rtol=0, atol=1e-9)
    scale = float(ref.covariances_.abs().max())
    torch.testing.assert_close(scan.covariances_, ref.covariances_, rtol=0, atol=1e-9 * scale)


def test_measurements_exactly_at_knot_times_are_fine():
    truth = FAST
    kt = torch.arange(0.0, 1.0 + 1e-9, 0.1, dtype=DT)
    pose_t = torch.cat([kt, kt[:-1] + 0.05])  # every knot time (first and last included) and midpoints
    gt = truth.state(pose_t)
    for cls in (SO3xR3Trajectory, SE3Trajectory):
        traj = cls(kt, qc_rot=100.0, qc_pos=100.0)
        traj.set_knots(**perturbed_knots(truth, kt, sigma_rot=0.1, sigma_pos=0.1, seed=3))
        traj.fit(
            [PoseMeasurement(pose_t, R=gt.R, p=gt.p, sigma_rot=1e-3, sigma_pos=1e-3)],
            max_iter=30,
            compute_covariances=True,
        )
        assert traj.fit_result_.converged
        assert bool(torch.isfinite(traj.knots).all()) and bool(torch.isfinite(traj.covariances_).all())
        st = traj.interpolate(kt, covariance=True)
        assert bool(torch.isfinite(st.covariance).all())
        assert float((st.p - truth.state(kt).p).abs().max()) < 1e-2


def test_float32_fit_with_fine_knots_converges_like_float64():
    r"""Knots every 0.05 s (WNOJ, UWB at 20 Hz): the undamped normal matrix has relative pivots near 2.5e-6, below the
    covariances' ``1e3 eps`` = 1.2e-4 of float32. The iterations refused such factorisations, so LM held its damping
    near 1e-4 and crawled: 50 iterations without convergence, the cost 12% above float64's, positions 0.11 m off.
    The steps now only need pivots above rounding (``10 eps``), and the covariances are computed in float64."""
    T = 3.0
    truth, meas = fast_uwb_problem(T, rate=20.0)
    fits = {}
    for dtype in (torch.float32, DT):
        traj = SO3xR3Trajectory.uniform(0.0, T, 0.05, qc_rot=10.0, qc_pos=10.0, dtype=dtype)
        init = perturbed_knots(truth, traj.knot_times.double(), seed=2)
        traj.set_knots(**{k: v.to(dtype) for k, v in init.items()})
        fits[dtype] = traj.fit([meas], max_iter=50, warn=False, progress=False)
    f32, f64 = fits[torch.float32], fits[DT]
    assert f64.fit_result_.converged and f32.fit_result_.converged, f32.fit_result_.message
    assert f32.fit_result_.cost == pytest.approx(f64.fit_result_.cost, rel=1e-4)
    assert float((f32.p.double() - f64.p).abs().max()) < 5e-3  # m (the ranges' sigma is 0.05 m)
    # its Laplace covariance was refused in float32 (the normal matrix summed in float32: smallest pivot 2.5e-6 of
    # its diagonal, below 1e3 eps); it is now summed and factorised in float64: the marginal standard deviations
    # are float64's to 1.1e-4 (tests/test_trajectory_float32_covariances.py holds them to a dense truth)
    f64.fit([meas], max_iter=50, warn=False, progress=False, compute_covariances=True)
    f32.fit([meas], max_iter=50, warn=False, progress=False, compute_covariances=True)
    std32 = f32.covariances_.double().diagonal(dim1=-2, dim2=-1).sqrt()
    std64 = f64.covariances_.diagonal(dim1=-2, dim2=-1).sqrt()
    assert f32.covariances_.dtype == torch.float32
    assert float((std32 / std64 - 1.0).abs().max()) < 1e-3


def test_float32_fit_and_interpolation():
    T = 4.0
    truth, meas = fast_uwb_problem(T, rate=10.0)
    traj = SO3xR3Trajectory.uniform(0.0, T, 0.1, qc_rot=10.0, qc_pos=10.0, dtype=torch.float32)
    init = {k: v.float() for k, v in perturbed_knots(truth, traj.knot_times.double(), seed=2).items()}
    traj.set_knots(**init)
    traj.fit([meas], max_iter=50)
    assert traj.fit_result_.converged and traj.knots.dtype == torch.float32
    st = traj.interpolate(torch.linspace(0.1, T - 0.1, 50))
    assert st.p.dtype == torch.float32
    pos, _ = _pos_rmse(traj.to(dtype=DT), truth, T, 0.1)
    assert pos < 0.05, pos


@pytest.mark.parametrize("cls,prior,T", [(SE3Trajectory, "wnoj", 1.5), (SO3xR3Trajectory, "wnoa", 4.0)])
def test_se3_and_wnoa_trajectories_fit_uwb(cls, prior, T):
    truth, meas = fast_uwb_problem(T, rate=10.0)
    traj = cls.uniform(0.0, T, 0.1, prior=prior, qc_rot=10.0, qc_pos=10.0)
    traj.set_knots(**perturbed_knots(truth, traj.knot_times, prior=prior, sigma_rot=0.1, sigma_pos=0.2, seed=2))
    traj.fit([meas], max_iter=50, ftol=1e-7)
    assert traj.fit_result_.converged
    assert _pos_rmse(traj, truth, T, 0.1)[0] < 0.05


# ------------------------------------------------------------------------------------------------------------------
# The start from the measurements and the stop test
# ------------------------------------------------------------------------------------------------------------------
def _yawing_body(M=200, sigma=0.01, seed=0):
    r"""``M`` noisy poses of a body yawing 10 rad in 10 s (1 rad/s) while it climbs a slow helix."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.linspace(0.0, 10.0, M, dtype=DT)
    R = so3_exp(torch.stack([0.1 * torch.sin(t), 0.05 * torch.cos(0.7 * t), t], -1))
    p = torch.stack([torch.cos(0.3 * t), torch.sin(0.3 * t), 0.1 * t], -1)
    Rm = R @ so3_exp(sigma * torch.randn(M, 3, dtype=DT, generator=gen))
    pm = p + sigma * torch.randn(M, 3, dtype=DT, generator=gen)
    return t, R, p, PoseMeasurement(t, R=Rm, p=pm, sigma_rot=sigma, sigma_pos=sigma)


def test_default_knots_reach_the_answer_of_a_good_start():
    t, R, p, meas = _yawing_body()
    # public API, no initialisation by the user: the knots start from the measurements
    auto = SO3xR3Trajectory.uniform(0.0, 10.0, 0.2).fit([meas])
    # a good start: the true states at the knots
    good = SO3xR3Trajectory.uniform(0.0, 10.0, 0.2)
    good.set_knots(**_truth_knots(good.knot_times, t, R, p))
    good.fit([meas])
    assert good.fit_result_.init == "current knots"
    assert "rotations from 200 pose measurements" in auto.fit_result_.init
    for traj in (auto, good):
        res = traj.fit_result_
        assert res.converged and res.iterations <= 10, res
        err = torch.rad2deg(_rot_err(R, traj.predict(t).R))
        assert float(err.mean()) < 1.0 and float(err.max()) < 1.0, (float(err.mean()), float(err.max()))
    assert auto.fit_result_.cost == pytest.approx(good.fit_result_.cost, rel=1e-8)
    assert float((auto.knots - good.knots).abs().max()) < 1e-5
    # what the start guards against: the default knots themselves end far from the answer
    with pytest.warns(ConvergenceWarning, match="better initial estimate"):
        stuck = SO3xR3Trajectory.uniform(0.0, 10.0, 0.2).fit([meas], init="none", max_iter=10)
    assert stuck.fit_result_.cost > 100 * good.fit_result_.cost


def _truth_knots(kt, t, R, p):
    from gpgeom.models.trajectory.initialisation import _interp_rotations, _interp_vectors

    Rk, pk = _interp_rotations(t, R, kt, "truth"), _interp_vectors(t, p, kt)
    z = torch.zeros(kt.shape[0], 3, dtype=DT)
    return {"R": Rk, "p": pk, "omega": z, "alpha": z, "v": z, "a": z}


def test_init_options_and_the_unwrapped_start(tmp_path):
    t, R, p, meas = _yawing_body(M=60)
    traj = SO3xR3Trajectory.uniform(0.0, 10.0, 0.25)
    assert traj.initialise(meas) is traj and traj.is_fitted and traj.covariances_ is None
    # the rotation is continuous over the 10 rad: every knot interval turns by about 0.25 rad, and the rates
    # follow the yaw rate of 1 rad/s
    turn = _rot_err(traj.R[:-1], traj.R[1:])
    assert float(turn.max()) < 0.35 and float(turn.min()) > 0.15
    assert float((traj.omega[2:-2, 2] - 1.0).abs().max()) < 0.15
    assert float((traj.p - p[0]).norm(dim=-1).max()) > 1.0 and float((traj.v[1:-1] - 0.3).norm(-1).max()) < 0.3
    start = traj.knots.clone()
    traj.fit([meas], max_iter=1, warn=False)
    assert traj.fit_result_.init == "current knots"  # auto: not the default state any more, a warm start
    traj.set_knots(**_truth_knots(traj.knot_times, t, R, p))
    traj.fit([meas], init="measurements", max_iter=1, warn=False)  # rebuilt from the measurements
    assert "pose measurements" in traj.fit_result_.init
    again = SO3xR3Trajectory.uniform(0.0, 10.0, 0.25).initialise([meas])
    assert torch.equal(again.knots, start)
    plain = SO3xR3Trajectory.uniform(0.0, 10.0, 0.25)
    plain.fit([meas], init="none", max_iter=1, warn=False)
    assert plain.fit_result_.init == "current knots"
    with pytest.raises(ValueError, match="Unknown `init`='truth'"):
        plain.fit([meas], init="truth")
    with pytest.raises(ValueError, match="init='measurements' needs a PoseMeasurement"):
        plain.fit([KnotPrior(0, p=torch.zeros(3, dtype=DT))], init="measurements")
    # knots too far apart for the rotation: 4 s at 1 rad/s is more than pi in one interval
    too_wide = r"turn the body by 4\.\d+ rad between knots 0 and 1 \(t = 0 \.\. 4\).*cannot hold more than pi"
    with pytest.raises(ValueError, match=too_wide):
        SO3xR3Trajectory.uniform(0.0, 12.0, 4.0).fit([meas])
    # ranges that cannot place the body (four anchors in one plane): a warning, not a silent start at the origin
    flat = torch.tensor([[10.0, 10.0, 0.0], [-10.0, 10.0, 0.0], [-10.0, -10.0, 0.0], [10.0, -10.0, 0.0]], dtype=DT)
    uwb = simulate_uwb(FAST, 0.0, 2.0, rate=10.0, anchors=flat, seed=1)
    coplanar = RangeMeasurement(uwb.t, uwb.anchors, uwb.ranges, tag_offset=uwb.tag_offsets)
    with pytest.warns(UserWarning, match="init='auto': the ranges do not determine positions by multilateration"):
        SO3xR3Trajectory.uniform(0.0, 2.0, 0.1).fit([coplanar], max_iter=1, warn=False)
    # a fit that fails after the start was built leaves the trajectory as it was: positions alone leave the global
    # rotation free, so its covariance does not exist
    fresh = SO3xR3Trajectory.uniform(0.0, 10.0, 0.25)
    with pytest.raises(NotPSDError, match="marginal covariances"):
        fresh.fit([PositionMeasurement(t, p, sigma=0.01)], compute_covariances=True, max_iter=3, warn=False)
    assert not fresh.is_fitted and bool((fresh.p == 0).all()) and fresh.fit_result_ is None
    # the record of the start survives save/load
    traj.save(tmp_path / "t.pt")
    assert gpgeom.load(tmp_path / "t.pt").fit_result_.init == traj.fit_result_.init


def test_uwb_fit_from_the_default_knots_matches_a_good_start():
    T = 5.0
    truth, meas = fast_uwb_problem(T)
    auto = SO3xR3Trajectory.uniform(0.0, T, 0.1, qc_rot=10.0, qc_pos=10.0).fit([meas], max_iter=50)
    good = SO3xR3Trajectory.uniform(0.0, T, 0.1, qc_rot=10.0, qc_pos=10.0)
    good.set_knots(**perturbed_knots(truth, good.knot_times, sigma_rot=0.2, sigma_pos=0.5, seed=2))
    good.fit([meas], max_iter=50)
    assert "positions from" in auto.fit_result_.init and "lever arms" in auto.fit_result_.init
    assert auto.fit_result_.converged and auto.fit_result_.iterations <= 20
    assert auto.fit_result_.cost == pytest.approx(good.fit_result_.cost, rel=1e-6)
    # the same estimate to a small fraction of its uncertainty (centimetres, degrees)
    assert float((auto.p - good.p).norm(dim=-1).max()) < 1e-3 and float(_rot_err(auto.R, good.R).max()) < 1e-2
    pos, rot = _pos_rmse(auto, truth, T, 0.1)
    assert pos < 0.03 and rot < math.radians(8.0), (pos, rot)


def _two_tag_problem(T=7.0):
    r"""The GPTR simulation: 4 anchors, two tags on the body x-axis (the roll about it is not observable)."""
    truth = FastTrajectory(kind="split", speed=40.0)
    meas = uwb_ranges(truth, T, anchors=GPTR_ANCHORS, tag_offsets=GPTR_TAG_OFFSETS)

    def start():
        traj = SO3xR3Trajectory.uniform(0.0, T, 0.1, qc_rot=10.0, qc_pos=10.0)
        return traj.set_knots(**perturbed_knots(truth, traj.knot_times, sigma_rot=0.05, sigma_pos=0.1, seed=3))

    return truth, meas, start


def test_two_tag_uwb_fit_stops_by_its_own_test_once_the_position_has_converged():
    T = 7.0
    truth, meas, start = _two_tag_problem(T)
    traj = start().fit([meas])  # defaults: LM, max_iter=50
    res = traj.fit_result_
    assert res.converged and res.iterations < 60, res.message
    assert "posterior standard deviations <= stol" in res.message
    # the old tests alone (stol=0) creep along the unobservable roll for more than 100 iterations ...
    ref = start().fit([meas], stol=0, max_iter=400)
    assert ref.fit_result_.converged and ref.fit_result_.iterations > 100
    # ... without moving the position: the stop above had it to a millimetre (its posterior std is centimetres)
    assert float((traj.p - ref.p).norm(dim=-1).max()) < 2e-3
    assert 0.0 <= res.cost - ref.fit_result_.cost < 1.0  # less than one nat of posterior density, all in the roll
    assert _pos_rmse(traj, truth, T, 0.1)[0] < 0.05


def test_gauss_newton_on_the_unobservable_roll_falls_back_to_damped_steps():
    T = 7.0
    _, meas, start = _two_tag_problem(T)
    with pytest.warns(ConvergenceWarning, match=r"method='gn': .*would raise the cost.*Levenberg-Marquardt"):
        gn = start().fit([meas], method="gn", max_iter=100)
    res = gn.fit_result_
    assert res.converged and "Gauss-Newton continued as Levenberg-Marquardt" in res.message
    hist = res.cost_history
    assert all(b <= a * (1 + 1e-12) for a, b in zip(hist, hist[1:])), "the cost oscillates"
    lm = start().fit([meas])
    assert res.cost == pytest.approx(lm.fit_result_.cost, rel=1e-3)
    assert float((gn.p - lm.p).norm(dim=-1).max()) < 3e-3


# ------------------------------------------------------------------------------------------------------------------
# Persistence
# ------------------------------------------------------------------------------------------------------------------
def test_save_load_roundtrip(tmp_path):
    kt = torch.arange(0.0, 1.0 + 1e-9, 0.1, dtype=DT)
    gt = FAST.state(kt)
    traj = SO3xR3Trajectory(kt, kinematics="taylor", qc_rot=[1.0, 2.0, 3.0], qc_pos=4.0)
    traj.set_knots(**perturbed_knots(FAST, kt, sigma_rot=0.1, sigma_pos=0.1, seed=3))
    traj.fit([PoseMeasurement(kt, R=gt.R, p=gt.p, sigma_rot=0.01, sigma_pos=0.01)], compute_covariances=True)
    path = tmp_path / "traj.pt"
    traj.save(path)
    back = Trajectory.load(path)
    assert isinstance(back, SO3xR3Trajectory) and back.kinematics == "taylor" and back.prior == "wnoj"
    tq = torch.linspace(0.0, 1.0, 23, dtype=DT)
    a, b = traj.interpolate(tq, covariance=True), back.interpolate(tq, covariance=True)
    assert torch.equal(a.R, b.R) and torch.equal(a.a, b.a) and torch.equal(a.covariance, b.covariance)
    assert torch.equal(back.qc_rot, traj.qc_rot)
    se3 = SE3Trajectory(kt, prior="wnoa", qc_pos=2.0, dtype=torch.float32)
    se3.set_knots(**{k: v.float() for k, v in gt.knots("wnoa").items()})
    se3.save(tmp_path / "se3.pt")
    back = SE3Trajectory.load(tmp_path / "se3.pt")
    assert back.prior == "wnoa" and back.dtype == torch.float32 and torch.equal(back.knots, se3.knots)
    with pytest.raises(ModelFileError, match="holds a SE3Trajectory model, not a SO3xR3Trajectory"):
        SO3xR3Trajectory.load(tmp_path / "se3.pt")
    torch.save({"format": "something else"}, tmp_path / "bad.pt")
    with pytest.raises(ModelFileError, match="is not a gpgeom model file"):
        Trajectory.load(tmp_path / "bad.pt")


def test_fit_record_is_kept_through_save_load(tmp_path):
    traj = _fitted_pose_problem(SO3xR3Trajectory)
    traj.save(tmp_path / "t.pt")
    back = gpgeom.load(tmp_path / "t.pt")
    a, b = traj.fit_result_, back.fit_result_
    assert type(back) is SO3xR3Trajectory and back.is_fitted
    assert (a.iterations, a.converged, a.message, a.cost, a.cost_history) == (
        b.iterations, b.converged, b.message, b.cost, b.cost_history,
    )  # fmt: skip
    assert torch.equal(back.covariances_, traj.covariances_) and repr(back) == repr(traj)
    with pytest.raises(TypeError, match="takes no extra keyword arguments"):
        SO3xR3Trajectory.load(tmp_path / "t.pt", covar_module=None)


# ------------------------------------------------------------------------------------------------------------------
# The model contract (tests/contract.py), prediction with uncertainty, numpy inputs, progress, repr, to()
# ------------------------------------------------------------------------------------------------------------------
_KT = torch.arange(0.0, 1.0 + 1e-9, 0.1, dtype=DT)
_TM = torch.linspace(0.0, 1.0, 21, dtype=DT)


def _pose_measurement(as_numpy: bool = False) -> PoseMeasurement:
    gt = FAST.state(_TM)
    conv = (lambda x: x.numpy()) if as_numpy else (lambda x: x)
    return PoseMeasurement(
        conv(_TM), R=conv(gt.R), p=conv(gt.p), sigma_rot=0.01, sigma_pos=conv(torch.full((3,), 0.02))
    )


def _contract_fit(model):
    model.set_knots(**perturbed_knots(FAST, model.knot_times, prior=model.prior, sigma_rot=0.1, sigma_pos=0.1, seed=3))
    return model.fit([_pose_measurement()], compute_covariances=True, progress=False)


def _fitted_pose_problem(cls, prior="wnoj"):
    return _contract_fit(cls(_KT, prior=prior, qc_rot=[1.0, 2.0, 3.0], qc_pos=4.0))


def contract_query(model, as_numpy):
    tq = torch.linspace(0.0, 1.0, 17, dtype=DT)
    return model.predict(tq.numpy() if as_numpy else tq, return_std=True)


@pytest.mark.parametrize("cls,prior", [(SO3xR3Trajectory, "wnoj"), (SE3Trajectory, "wnoa")])  # SE3 WNOJ: ~1 s/step
def test_trajectory_keeps_the_model_contract(cls, prior, tmp_path):
    from contract import check_model_contract

    def build():
        return cls(_KT, prior=prior, qc_rot=[1.0, 2.0, 3.0], qc_pos=4.0)

    model = check_model_contract(build, _contract_fit, contract_query, tmp_path)
    assert model.fit_result_.converged and isinstance(model.fit_result_, TrajectoryFitResult)


@pytest.mark.parametrize("prior", ["wnoj", "wnoa"])
def test_predict_returns_the_state_and_its_uncertainty(prior):
    traj = _fitted_pose_problem(SO3xR3Trajectory, prior)
    tq = torch.linspace(0.0, 1.0, 33, dtype=DT)
    st = traj.predict(tq.numpy())
    assert isinstance(st, TrajectoryState) and st.covariance is None and st.jacobian_a is None
    full = traj.interpolate(tq, covariance=True)
    assert torch.equal(st.p, full.p) and torch.equal(st.R, full.R)
    mean, std = traj.predict(tq, return_std=True)
    assert isinstance(std, TrajectoryStd) and torch.equal(mean.v, full.v)
    var = full.covariance.diagonal(dim1=-2, dim2=-1)
    for i, c in enumerate(traj.state_components):
        torch.testing.assert_close(getattr(std, c), var[:, 3 * i : 3 * i + 3].sqrt(), rtol=0, atol=0)
    assert (std.alpha is None and std.a is None) == (prior == "wnoa")
    assert set(std.as_dict()) == set(traj.state_components)
    mean, cov = traj.predict(tq, return_cov=True)
    d = 18 if prior == "wnoj" else 12
    assert torch.equal(cov, full.covariance) and cov.shape == (33, d, d) and torch.equal(mean.v, full.v)
    # the uncertainty is smallest where the poses were measured and stays finite at the knots
    assert bool(torch.isfinite(std.p).all()) and float(std.p.max()) < 0.1
    with pytest.raises(ValueError, match="one of `return_std` and `return_cov`"):
        traj.predict(tq, return_std=True, return_cov=True)
    plain = SO3xR3Trajectory(_KT, prior=prior)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        plain.predict(tq)
    plain.set_knots(**FAST.state(_KT).knots(prior))
    assert torch.equal(plain.predict(tq).R, plain.interpolate(tq).R)
    with pytest.raises(ValueError, match=r"`return_std=True` needs .*compute_covariances=True"):
        plain.predict(tq, return_std=True)


def test_numpy_inputs_give_the_same_fit():
    init = perturbed_knots(FAST, _KT, sigma_rot=0.1, sigma_pos=0.1, seed=3)
    fits = []
    for as_numpy in (False, True):
        conv = (lambda x: x.numpy()) if as_numpy else (lambda x: x)
        traj = SO3xR3Trajectory(conv(_KT), qc_rot=conv(torch.tensor([1.0, 2.0, 3.0], dtype=DT)), qc_pos=4.0)
        traj.set_knots(**{k: conv(v) for k, v in init.items()})
        anchor = KnotPrior(0, p=conv(torch.zeros(3, dtype=DT)), sigma=1.0)
        fits.append(traj.fit([_pose_measurement(as_numpy), anchor], compute_covariances=True))
    assert torch.equal(fits[0].knots, fits[1].knots) and torch.equal(fits[0].covariances_, fits[1].covariances_)
    assert fits[0].fit_result_.cost == fits[1].fit_result_.cost


def test_fit_shows_a_progress_bar_over_the_linear_solves(capsys):
    out = {}
    for progress in (False, True):
        traj = SO3xR3Trajectory(_KT, qc_rot=[1.0, 2.0, 3.0], qc_pos=4.0)
        traj.set_knots(**perturbed_knots(FAST, _KT, sigma_rot=0.1, sigma_pos=0.1, seed=3))
        out[progress] = traj.fit([_pose_measurement()], progress=progress)
        err = capsys.readouterr().err
        assert ("SO3xR3Trajectory (LM)" in err) == progress
    it = out[True].fit_result_.iterations
    assert f"{it}/50" in err and torch.equal(out[True].knots, out[False].knots)
    with pytest.raises(TypeError, match="`progress` must be True, False or None"):
        out[True].fit([_pose_measurement()], progress="yes")


def test_repr_names_knots_span_spacing_qc_and_the_fit():
    traj = SO3xR3Trajectory.uniform(0.0, 1.0, 0.1, qc_rot=2.0, qc_pos=[1.0, 2.0, 3.0])
    text = repr(traj)
    assert text.startswith("SO3xR3Trajectory(fitted=False, knots=11, span=[0, 1], dt=0.1, prior='wnoj', ")
    assert "qc_rot=[2, 2, 2]" in text and "qc_pos=[1, 2, 3]" in text and "iterations" not in text
    fitted = repr(_fitted_pose_problem(SE3Trajectory, "wnoa"))
    assert fitted.startswith("SE3Trajectory(knots=11, span=[0, 1], dt=0.1, prior='wnoa'")
    assert "iterations=" in fitted and "converged=True" in fitted and "covariances=True" in fitted
    uneven = repr(SO3xR3Trajectory(torch.tensor([0.0, 0.1, 0.3], dtype=DT)))
    assert "dt=[0.1, 0.2]" in uneven


def test_to_is_keyword_only_and_moves_everything():
    traj = _fitted_pose_problem(SO3xR3Trajectory)
    with pytest.raises(TypeError, match="keyword arguments only"):
        traj.to(torch.float32)
    with pytest.raises(TypeError, match="`dtype` must be torch.float32 or torch.float64"):
        traj.to(dtype=torch.float16)
    assert traj.to(dtype=torch.float32) is traj and traj.dtype == torch.float32
    for x in (traj.knots, traj.knot_times, traj.qc_rot, traj.covariances_, traj.cross_covariances_):
        assert x.dtype == torch.float32
    assert traj.predict(np.linspace(0.0, 1.0, 5)).p.dtype == torch.float32
    assert traj.to(device="cpu", dtype=DT).knots.dtype == DT


def test_factors_module_alias():
    import gpgeom.models.trajectory_factors as alias
    from gpgeom.models.trajectory import factors

    for name in factors.__all__:
        assert getattr(alias, name) is getattr(factors, name)


# ------------------------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------------------------
def test_bad_knot_times():
    with pytest.raises(ValueError, match="`knot_times` must be strictly increasing"):
        SO3xR3Trajectory(torch.tensor([0.0, 0.2, 0.2, 0.5], dtype=DT))
    with pytest.raises(ValueError, match="`knot_times` must be strictly increasing"):
        SO3xR3Trajectory(torch.tensor([0.0, 0.3, 0.1], dtype=DT))
    with pytest.raises(ValueError, match="at least 2 knots"):
        SO3xR3Trajectory(torch.tensor([0.0], dtype=DT))
    with pytest.raises(ValueError, match="`knot_times` contains 1 NaN"):
        SO3xR3Trajectory(torch.tensor([0.0, float("nan")], dtype=DT))
    with pytest.raises(ValueError, match="`t_end`"):
        SO3xR3Trajectory.uniform(1.0, 0.5, 0.1)
    with pytest.raises(ValueError, match="`dt` must be > 0"):
        SO3xR3Trajectory.uniform(0.0, 1.0, -0.1)
    with pytest.raises(TypeError, match="abstract"):
        Trajectory(torch.tensor([0.0, 1.0]))


def test_bad_options():
    kt = torch.tensor([0.0, 1.0], dtype=DT)
    with pytest.raises(ValueError, match="Unknown `prior`='wnox'"):
        SO3xR3Trajectory(kt, prior="wnox")
    with pytest.raises(ValueError, match="Unknown `kinematics`='exact'"):
        SO3xR3Trajectory(kt, kinematics="exact")
    with pytest.raises(ValueError, match="`qc_rot` must be finite and > 0"):
        SO3xR3Trajectory(kt, qc_rot=-1.0)
    with pytest.raises(ValueError, match="`qc_pos` must be a positive float or a 3-vector"):
        SO3xR3Trajectory(kt, qc_pos=[1.0, 2.0])
    with pytest.raises(TypeError, match="`dtype` must be torch.float32 or torch.float64"):
        SO3xR3Trajectory(kt, dtype=torch.float16)


def test_measurements_outside_the_knot_span():
    traj = SO3xR3Trajectory(torch.tensor([0.0, 0.5, 1.0], dtype=DT))
    meas = PositionMeasurement(torch.tensor([0.2, 1.2], dtype=DT), torch.zeros(2, 3, dtype=DT), name="gps")
    with pytest.raises(ValueError, match=r"`gps.t` has 1 time\(s\) outside the knot span \[0, 1\]"):
        traj.fit([meas])
    with pytest.raises(ValueError, match=r"`t` has 1 time\(s\) outside the knot span"):
        traj.interpolate(torch.tensor([-0.1, 0.5], dtype=DT))
    # far from t = 0 the span and the time keep their digits (6 digits printed [1e+06, 1e+06] and t = 1e+06)
    far = SO3xR3Trajectory(1e6 + torch.tensor([0.0, 0.5, 1.0], dtype=DT))
    span = r"outside the knot span \[1000000, 1000001\] \(first: index 0, t = 1000001\.2\)"
    with pytest.raises(ValueError, match=span):
        far.interpolate(torch.tensor([1e6 + 1.2], dtype=DT))


def test_non_orthonormal_rotations_and_non_unit_quaternions():
    kt = torch.tensor([0.0, 0.5, 1.0], dtype=DT)
    traj = SO3xR3Trajectory(kt)
    R = torch.eye(3, dtype=DT).repeat(3, 1, 1)
    R[1, 0, 0] = 1.1
    with pytest.raises(ValueError, match=r"`R` is not a rotation matrix: max \|R\^T R - I\|"):
        traj.set_knots(R=R)
    with pytest.raises(ValueError, match=r"det\(R\) = -1"):
        traj.set_knots(R=-torch.eye(3, dtype=DT).repeat(3, 1, 1))
    q = torch.tensor([[0.0, 0.0, 0.0, 1.0]] * 3, dtype=DT)
    q[2, 3] = 1.5
    with pytest.raises(ValueError, match="`q` must hold unit quaternions"):
        traj.set_knots(q=q)
    with pytest.raises(ValueError, match="`R` must have shape \\(3, 3, 3\\)"):
        traj.set_knots(R=torch.eye(3, dtype=DT))
    with pytest.raises(ValueError, match="`R` is not a rotation matrix"):
        PoseMeasurement(kt, R=R, p=torch.zeros(3, 3, dtype=DT))
    with pytest.raises(ValueError, match="`q` must hold unit quaternions"):
        PoseMeasurement(kt, q=q, p=torch.zeros(3, 3, dtype=DT))
    with pytest.raises(ValueError, match="`q` must hold unit quaternions"):
        KnotPrior(0, q=q[2])
    good = torch.tensor([[0.0, 0.0, math.sin(0.3), math.cos(0.3)]] * 3, dtype=DT)
    traj.set_knots(q=good)
    assert torch.allclose(traj.R, quat_to_rotmat(good)) and torch.allclose(traj.quaternion, good)


def test_other_bad_input():
    kt = torch.tensor([0.0, 0.5, 1.0], dtype=DT)
    traj = SO3xR3Trajectory(kt, prior="wnoa")
    with pytest.raises(ValueError, match="`alpha` is not a knot state of a prior='wnoa' trajectory"):
        traj.set_knots(alpha=torch.zeros(3, 3, dtype=DT))
    with pytest.raises(AttributeError, match="has no `a` knots"):
        _ = traj.a
    with pytest.raises(ValueError, match="needs the state components \\['a'\\].*use prior='wnoj'"):
        traj.fit([KnotPrior(0, a=torch.zeros(3, dtype=DT))])
    with pytest.raises(ValueError, match="call fit\\(..., compute_covariances=True\\) first"):
        traj.interpolate(kt, covariance=True)
    with pytest.raises(TypeError, match="must hold gpgeom trajectory measurements"):
        traj.fit([object()])
    with pytest.raises(ValueError, match="non-empty sequence"):
        traj.fit([])
    with pytest.raises(ValueError, match="`v` must have shape \\(3, 3\\)"):
        traj.set_knots(v=torch.zeros(2, 3, dtype=DT))
    with pytest.raises(ValueError, match="knot `index` must lie in"):
        traj.fit([KnotPrior(5, p=torch.zeros(3, dtype=DT))])


def test_demo_section(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from gpgeom.demo.trajectory import trajectory_section

    sec = trajectory_section(tmp_path, quick=True, seed=0, progress=False)
    assert sec.figures and sec.figures[0].exists()
    table = dict(sec.table)
    assert "converged" in table["LM iterations"] and float(table["position RMSE (100 Hz)"].split()[0]) < 5.0


@pytest.mark.parametrize("cls", [SO3xR3Trajectory, SE3Trajectory])
def test_no_query_time_gives_empty_predictions(cls):
    r"""Zero query times (``0``, ``b x 0``; numpy or torch) give empty states, standard deviations and covariances of
    the shapes of a non-empty call; the per-interval product sized its padded blocks from the busiest interval (none)
    and the standard deviations were reshaped with ``-1`` over zero elements (raw RuntimeErrors)."""
    t = torch.linspace(0.0, 1.0, 6, dtype=DT)
    R = so3_exp(torch.stack([0.1 * torch.sin(t), 0.05 * torch.cos(0.7 * t), t], -1))
    p = torch.stack([t, t * t, 0 * t], -1)
    traj = cls(t).fit([PoseMeasurement(t, R=R, p=p, sigma_rot=0.01, sigma_pos=0.01)], compute_covariances=True)
    for q, ref in ((t[:0], t[:2]), (np.zeros(0), t[:2]), (torch.zeros(2, 0, dtype=DT), t[:2, None])):
        st, sd = traj.predict(q, return_std=True)
        st_ref, sd_ref = traj.predict(ref, return_std=True)
        lead = tuple(torch.as_tensor(q).shape)
        assert st.R.shape == lead + st_ref.R.shape[-2:] and st.p.shape == lead + (3,)
        assert sd.p.shape == lead + (3,) and sd.R.shape == lead + (3,) and sd.R.dtype == sd_ref.R.dtype
        _, cov = traj.predict(q, return_cov=True)
        _, cov_ref = traj.predict(ref, return_cov=True)
        assert cov.shape == lead + cov_ref.shape[-2:]
        assert traj.interpolate(q, covariance=True).p.shape == lead + (3,)


@pytest.mark.parametrize("cls", [SO3xR3Trajectory, SE3Trajectory])
def test_a_spin_faster_than_pi_per_knot_interval_is_named_not_silently_wrapped(cls):
    r"""A body spinning at 20 rad/s about z with exact knots every 0.2 s turns 4 rad per interval, more than the pi its
    local variable :math:`\mathrm{Log}(R_a^\top R_b)` holds: the interpolation turns the short way (3.14 rad off the
    truth :math:`\mathrm{Exp}(\omega t)` between the knots). set_knots said nothing, and a fit of poses at 50 Hz warm
    started from the exact knots reported convergence 3.05 rad off every measurement between the knots. Now
    set_knots and fit warn, naming the interval, and the fit refuses such poses as the start from them does."""
    w = 20.0
    ez = torch.tensor([0.0, 0.0, 1.0], dtype=DT)

    def spin(t):
        n = t.shape[0]
        z = torch.zeros(n, 3, dtype=DT)
        return {"R": so3_exp(w * t[:, None] * ez), "omega": (w * ez).expand(n, 3), "alpha": z, "p": z, "v": z, "a": z}

    tq = torch.linspace(0.0, 1.0, 101, dtype=DT)
    for dt, wraps in ((0.1, False), (0.2, True)):  # 2 rad and 4 rad per interval
        kt = torch.arange(0.0, 1.0 + 1e-9, dt, dtype=DT)
        traj = cls(kt)
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            traj.set_knots(**spin(kt))
        named = [str(r.message) for r in rec if "turns the short way" in str(r.message)]
        err = float(_rot_err(spin(tq)["R"], traj.interpolate(tq).R).max())
        if wraps:
            assert err > 3.0 and len(named) == 1, (err, named)
            assert "between knots 0 and 1 (t = 0 .. 0.2)" in named[0] and "about -4 rad" in named[0]
        else:
            assert err < 1e-10 and not named, (err, named)
    # priors on the knots that outweigh the motion prior keep the wrapped knots: the fit names them too
    kt = torch.arange(0.0, 1.0 + 1e-9, 0.2, dtype=DT)
    K = kt.shape[0]
    truth = spin(kt)
    prior = KnotPrior(torch.arange(K), R=truth["R"], omega=truth["omega"], p=truth["p"], sigma=0.01)
    with pytest.warns(UserWarning, match=r"fit: in the estimated knots, between knots 0 and 1 .* turns the short way"):
        cls(kt, qc_rot=1e4).fit([prior], max_iter=20, warn=False)
    # poses between the knots: refused from a warm start, as from the start the measurements give
    tm = torch.linspace(0.0, 1.0, 51, dtype=DT)
    poses = PoseMeasurement(tm, R=spin(tm)["R"], p=spin(tm)["p"], sigma_rot=0.01)
    traj = cls(kt)
    with pytest.warns(UserWarning, match="turns the short way"):
        traj.set_knots(**spin(kt))
    for init in ("none", "auto", "measurements"):
        with pytest.raises(ValueError, match=r"pose measurements turn the body by 4 rad between knots .* pi"):
            traj.fit([poses], init=init, max_iter=5, warn=False)


@pytest.mark.parametrize("cls", [SO3xR3Trajectory, SE3Trajectory])
def test_the_start_from_poses_takes_every_turn_a_knot_interval_holds(cls):
    r"""A constant spin of 3.0 rad per knot interval (less than pi: representable, and taken by ``fit`` from knots
    set by hand) was refused by the start from the pose measurements, whose limit was 0.9 pi (2.83 rad), with a
    message saying that an interval "cannot hold more than pi". The start now takes up to pi, like ``fit``: the fit
    gives the spin :math:`R(t) = \mathrm{Exp}(\omega t)` to 1e-12 rad; 3.3 rad is still refused."""
    axis = torch.tensor([0.3, -0.4, 1.0], dtype=DT)
    axis = axis / axis.norm()
    tm = torch.arange(0.0, 3.0 + 1e-9, 0.25, dtype=DT)
    tq = torch.linspace(0.0, 3.0, 31, dtype=DT)
    for rate in (3.0, 3.1):
        poses = PoseMeasurement(tm, R=so3_exp(tm[:, None] * axis * rate), p=torch.zeros(len(tm), 3, dtype=DT))
        traj = cls(torch.arange(0.0, 3.0 + 1e-9, 1.0, dtype=DT)).fit([poses], progress=False)
        assert "pose measurements" in traj.fit_result_.init
        assert float(_rot_err(so3_exp(tq[:, None] * axis * rate), traj.predict(tq).R).max()) < 1e-12
    poses = PoseMeasurement(tm, R=so3_exp(tm[:, None] * axis * 3.3), p=torch.zeros(len(tm), 3, dtype=DT))
    with pytest.raises(ValueError, match=r"turn the body by 3\.3 rad between knots \d and \d.*more than pi"):
        cls(torch.arange(0.0, 3.0 + 1e-9, 1.0, dtype=DT)).fit([poses], progress=False)


@pytest.mark.parametrize("cls", [SO3xR3Trajectory, SE3Trajectory])
def test_a_single_scalar_time_gives_the_state_of_that_time(cls):
    r"""``interpolate``/``predict`` take times of any shape ``...``, but a scalar time (a float, ``np.float64`` or a
    0-d tensor) failed with a raw ``TypeError: reshape() missing 1 required positional arguments`` (the index was
    reshaped with an empty argument list). It now gives the state of shape ``()``, equal to that of the same time in
    a 1-vector."""
    traj = _fitted_pose_problem(cls, "wnoa")
    one = torch.tensor([0.37], dtype=DT)
    ref = traj.interpolate(one, jacobians=True, covariance=True)
    _, sd_ref = traj.predict(one, return_std=True)
    for t in (0.37, np.float64(0.37), torch.tensor(0.37, dtype=DT)):
        st = traj.interpolate(t, jacobians=True, covariance=True)
        assert st.t.shape == () and st.index.shape == () and int(st.index) == int(ref.index[0])
        assert st.R.shape == (3, 3) and st.p.shape == (3,) and st.covariance.shape == (12, 12)
        for name in ("R", "omega", "p", "v", "jacobian_a", "jacobian_b", "covariance"):
            torch.testing.assert_close(getattr(st, name), getattr(ref, name)[0], rtol=0, atol=0)
        mean, sd = traj.predict(t, return_std=True)
        assert mean.p.shape == (3,) and torch.equal(sd.R, sd_ref.R[0]) and torch.equal(sd.v, sd_ref.v[0])
        _, cov = traj.predict(t, return_cov=True)
        assert torch.equal(cov, ref.covariance[0])


def test_knot_times_that_collapse_in_float32_are_refused():
    r"""Knot times 1e6, 1e6 + 0.01, 1e6 + 0.02, 1e6 + 0.1 increase in float64 but the first three round to the same
    float32 number: ``SO3xR3Trajectory(..., dtype=torch.float32)`` or ``.to(dtype=torch.float32)`` kept intervals of
    length 0, whose motion-prior residuals were non-finite (interpolation between them silently returned the left
    knot). Both now raise a ValueError naming the knots; ``to`` leaves the model as it was."""
    kt = torch.tensor([1e6, 1e6 + 0.01, 1e6 + 0.02, 1e6 + 0.1], dtype=DT)
    assert torch.unique(kt.float()).numel() == 2  # the premise: three knots round to one float32 number
    msg = r"`knot_times` are not strictly increasing in float32: knots 0 and 1 .*both round to 1000000 \(2 interval"
    for cls in (SO3xR3Trajectory, SE3Trajectory):
        with pytest.raises(ValueError, match=msg):
            cls(kt, dtype=torch.float32)
        traj = cls(kt).set_knots(p=torch.randn(4, 3, dtype=DT, generator=torch.Generator().manual_seed(0)))
        before = traj.knots.clone()
        with pytest.raises(ValueError, match=msg):
            traj.to(dtype=torch.float32)
        assert traj.dtype == DT and traj.knot_times.dtype == DT and torch.equal(traj.knots, before)
        assert torch.equal(traj.knot_times, kt)
        # the same knots shifted to start at 0 are fine in float32, with finite prior residuals
        shifted = cls(kt - kt[0], dtype=torch.float32).set_knots(p=before[:, 9 + 3 * 2 : 9 + 3 * 3].float())
        assert bool(torch.isfinite(shifted.prior_residuals()).all())


def test_uniform_knots_reach_t_end_and_take_numpy_scalars():
    r"""``uniform`` promises a last knot at or after ``t_end``, but rounding left it below for 121 of the 10,000
    spans ``0 .. i/10`` with spacings ``j/100`` that divide them (``uniform(0.0, 0.9, 0.3)``: 0.9 / 0.3 =
    3.0000000000000004, four knots, the last at 0.8999999999999999), and a measurement at ``t_end`` was refused as
    "outside the knot span [0, 0.9]". The last knot is now on ``t_end`` there. numpy scalars (``np.int64(0)``,
    ``np.float32``) were a TypeError."""
    traj = SO3xR3Trajectory.uniform(0.0, 0.9, 0.3)
    assert traj.knot_times.tolist() == [0.0, 0.3, 0.6, 0.9]
    traj.fit([PositionMeasurement(torch.tensor([0.45, 0.9], dtype=DT), torch.ones(2, 3, dtype=DT))], max_iter=3)
    for i in range(1, 61):
        for j in range(1, 41):
            t_end, dt = i / 10, j / 100
            n = round(t_end / dt)
            if abs(t_end / dt - n) > 1e-6:
                continue
            kt = SO3xR3Trajectory.uniform(0.0, t_end, dt).knot_times
            # exactly n intervals, the last knot on or after t_end and the spacing dt (to rounding)
            assert kt.shape[0] == n + 1 and float(kt[-1]) >= t_end and float(kt[-2]) < t_end, (t_end, dt)
            assert float((kt.diff() - dt).abs().max()) < 1e-12
    kt = SO3xR3Trajectory.uniform(np.int64(0), np.float64(1.0), np.float32(0.25)).knot_times
    assert kt.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    with pytest.raises(TypeError, match="`t_end` must be a finite real number"):
        SO3xR3Trajectory.uniform(0.0, float("inf"), 0.1)
    with pytest.raises(TypeError, match="`t_start` must be a finite real number, got True"):
        SO3xR3Trajectory.uniform(True, 1.0, 0.1)


@pytest.mark.parametrize("cls", [SO3xR3Trajectory, SE3Trajectory])
def test_float32_times_far_from_zero_keep_their_spacing(cls, tmp_path):
    r"""float32 holds a time of 3e4 s only to 2e-3 s: the knots 0.2 s apart were 0.199 and 0.201 s apart and every
    measurement and query time moved by up to 1e-3 s, so the same poses fitted in float32 at t ~ 3e4 s ended 0.68
    posterior standard deviations (positions) and 5.3e-3 rad (SE(3): 5.1e-3 rad) from the float64 fit, against
    4e-5 std and 3.4e-5 rad at t ~ 0, without a warning. The bracketing, :math:`t - t_k` and the spacings now use the
    times as given (float64): the float64 fit at the same times is the reference, and the float32 fit is within
    3e-5 std and 3.4e-5 rad of it at both offsets."""
    gen = torch.Generator().manual_seed(2)
    kt = torch.linspace(0.0, 1.2, 7, dtype=DT)
    tm = torch.sort(torch.rand(15, dtype=DT, generator=gen) * 1.2).values
    gt = FAST.state(tm)
    R = gt.R @ so3_exp(0.03 * torch.randn(15, 3, dtype=DT, generator=gen))
    p = gt.p + 0.03 * torch.randn(15, 3, dtype=DT, generator=gen)
    tq = torch.linspace(0.0, 1.2, 25, dtype=DT)
    for shift in (0.0, 3e4):
        fits = {}
        for dtype in (DT, torch.float32):
            traj = cls(kt + shift, prior="wnoa", qc_rot=5.0, qc_pos=3.0, dtype=dtype)
            traj.set_knots(**{k: v.to(dtype) for k, v in FAST.state(kt).knots("wnoa").items()})
            meas = PoseMeasurement(tm + shift, R=R, p=p, sigma_rot=0.05, sigma_pos=0.05)
            fits[dtype] = traj.fit([meas], init="none", compute_covariances=True, progress=False)
        ref, sd = fits[DT].predict(tq + shift, return_std=True)
        f32 = fits[torch.float32]
        st = f32.predict(tq + shift)
        assert float(((st.p.double() - ref.p) / sd.p).abs().max()) < 0.02, shift
        assert float(_rot_err(ref.R, st.R.double()).max()) < 5e-4, shift
        assert torch.equal(st.t, (tq + shift).float())  # the state's times are in the trajectory's dtype
        assert "dt=0.2," in repr(f32), repr(f32)  # the spacing as given (was dt=[0.1992, 0.2012] at 3e4 s)
    # the file keeps the times as given: the loaded float32 trajectory predicts the same numbers
    f32.save(tmp_path / "f32.pt")
    back = cls.load(tmp_path / "f32.pt")
    assert torch.equal(back.predict(tq + shift).p, st.p) and torch.equal(back.knot_times, f32.knot_times)
    # and in float64 its knot times are the given ones, not their float32 roundings
    assert torch.equal(f32.to(dtype=DT).knot_times, kt + shift)


def test_float32_start_far_from_zero_matches_float64():
    r"""The start from the measurements (``initialise`` / ``fit(init="auto")``) took the measurement times in the
    trajectory's dtype: in float32 far from :math:`t = 0` the grouping and the fractions between measurement times,
    the knot spacings of the finite differences, the range windows and their mean times moved with the rounded
    times (float32 holds 3e4 s to 2e-3 s, 1e6 s to 0.0625 s). The float32 start of a body yawing 1 rad/s on uneven
    knots was 1.3e-3 rad (rotations) and 0.65 % (velocities, relative to the largest) from the float64 start at the
    same times at 3e4 s, 0.052 rad and 40 % at 1e6 s; from UWB ranges at 1e6 s 1.8 rad. The time arithmetic is now
    float64 whatever the dtype: the float64 start at the same times is the reference, and the float32 start is
    within 4.4e-8 rad and 2.2e-6 (poses, at both offsets as at t ~ 0) and 1.8e-4 rad and 2.8e-4 (ranges) of it."""
    gen = torch.Generator().manual_seed(5)
    steps = 0.15 + 0.2 * torch.rand(60, dtype=DT, generator=gen)  # uneven spacing: the three-point formula
    kt = torch.cat([torch.zeros(1, dtype=DT), torch.cumsum(steps, 0)])
    kt = torch.cat([kt[kt < 9.9], torch.tensor([10.0], dtype=DT)])
    t, _, _, meas = _yawing_body(M=200)

    def rel(ref, x):
        return float((x.double() - ref).norm(dim=-1).max() / ref.norm(dim=-1).max())

    def starts(cls, m, knot_times, **kw):
        return [cls(knot_times, dtype=dtype, **kw).initialise([m]) for dtype in (DT, torch.float32)]

    for shift in (3e4, 1e6):
        moved = PoseMeasurement(t + shift, R=meas.Rm, p=meas.pm, sigma_rot=0.01, sigma_pos=0.01)
        for cls, prior in ((SO3xR3Trajectory, "wnoj"), (SE3Trajectory, "wnoa")):
            ref, f32 = starts(cls, moved, kt + shift, prior=prior)
            assert float(_rot_err(ref.R, f32.R.double()).max()) < 1e-6, shift
            for name in ("omega", "p", "v") + (("alpha", "a") if ref.order == 3 else ()):
                assert rel(getattr(ref, name), getattr(f32, name)) < 2e-5, (shift, name)
    # ranges (three tags): the windows of the multilateration and of the lever-arm rotations, their mean times and
    # the position-only solve's bracketing; what is left is float32's own rounding in those solves
    T, shift = 3.0, 1e6
    _, ranges = fast_uwb_problem(T)
    ranges.t = ranges.t + shift
    ref, f32 = starts(SO3xR3Trajectory, ranges, shift + 0.1 * torch.arange(31, dtype=DT))
    assert float(_rot_err(ref.R, torch.eye(3, dtype=DT)).max()) > 1.0  # rotations from the lever arms, not identity
    assert float(_rot_err(ref.R, f32.R.double()).max()) < 3e-3
    assert rel(ref.omega, f32.omega) < 3e-3 and rel(ref.p, f32.p) < 1e-3 and rel(ref.v, f32.v) < 2e-3


def test_float32_uwb_fit_far_from_zero_from_its_own_start_reaches_the_float64_minimum():
    r"""The consequence of the rounded start: ranges over 5 s at :math:`t \approx 10^6` s fitted from the default
    knots (``init="auto"``) converged in float64 in 9 iterations (cost 647.66) and in float32 from its own start,
    1.8 rad away, to a wrong local minimum after 39 iterations (cost 1364.8, positions 7.4 posterior standard
    deviations and rotations 3.0 rad from float64's), reported as converged. Now both take 9 iterations to the same
    minimum: the float32 knots are within 1.1e-4 std and 1.8e-5 rad of float64's (asserted: costs within 1e-6,
    positions within 1 mm, rotations within 1e-3 rad)."""
    _, ranges = fast_uwb_problem(5.0)
    ranges.t = ranges.t + 1e6
    kt = 1e6 + 0.1 * torch.arange(51, dtype=DT)
    ref, f32 = (SO3xR3Trajectory(kt, qc_rot=10.0, qc_pos=10.0, dtype=d).fit([ranges]) for d in (DT, torch.float32))
    assert "lever arms" in ref.fit_result_.init and "lever arms" in f32.fit_result_.init
    assert f32.fit_result_.cost == pytest.approx(ref.fit_result_.cost, rel=1e-6)
    assert float((f32.p.double() - ref.p).norm(dim=-1).max()) < 1e-3
    assert float(_rot_err(ref.R, f32.R.double()).max()) < 1e-3


@pytest.mark.parametrize("cls", [SO3xR3Trajectory, SE3Trajectory])
def test_float32_knots_far_from_zero_name_a_spin_faster_than_pi_per_interval(cls):
    r"""Knots at :math:`10^6 + 0.1` and :math:`10^6 + 0.2` s (0.1 s apart; 0.0625 s apart in float32) of a body
    spinning at :math:`18\pi` rad/s about z: :math:`1.8\pi` per interval, which the local variable holds as
    :math:`-0.2\pi`, so the interpolation turns the short way, :math:`\pi` rad off :math:`\mathrm{Exp}(\omega t)` at
    the midpoint in both precisions. float64 named the interval; float32 said nothing, since the warning took the
    rates' turn from the float32 spacing (:math:`1.125\pi` instead of :math:`1.8\pi`, inside the :math:`3\pi/2`
    margin). The spacing is now the float64 one, and float32 warns as float64 does."""
    w = 1.8 * math.pi / 0.1
    ez = torch.tensor([0.0, 0.0, 1.0], dtype=DT)
    kt = torch.tensor([1e6 + 0.1, 1e6 + 0.2], dtype=DT)
    knots = {"R": so3_exp(w * (kt - 1e6)[:, None] * ez), "omega": (w * ez).expand(2, 3)}
    assert float(kt.float().diff()) == 0.0625  # the float32 spacing the warning used
    for dtype in (DT, torch.float32):
        traj = cls(kt, dtype=dtype)
        # the knot times as given (they printed as "t = 1e+06 .. 1e+06" at 6 digits, in float32 too)
        match = r"between knots 0 and 1 \(t = 1000000\.1 \.\. 1000000\.2\) .* about -5\.65 rad .* turns the short way"
        with pytest.warns(UserWarning, match=match):
            traj.set_knots(**knots)
        mid = traj.interpolate(torch.tensor([1e6 + 0.15], dtype=DT)).R.double()
        assert float(_rot_err(so3_exp(w * 0.15 * ez)[None], mid)[0]) > 3.0, dtype  # the warning is warranted

r"""Property-based tests of gpgeom.geometry.lie (hypothesis): rotations near 0, near the switch of the series, near
and at pi, and anywhere between; random axes and translations; pairs of nearly equal rotations, as at nearly
equal times of a trajectory.

Identities checked (float64 unless stated): Exp/Log round trips on SO(3) and SE(3); the Jacobians and their
inverses are inverse of each other, :math:`J_l(\theta) = J_r(-\theta) = \mathrm{Exp}(\theta) J_r(\theta)`;
quaternion <-> matrix round trips (the ``w >= 0`` representative, up to sign at pi); the relative rotation of two
nearly equal rotations is :math:`J_r(\theta)\delta` to second order; no NaN in values or gradients, in float32
too. Derandomised and fast (a few seconds).
"""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gpgeom.geometry.lie import (
    quat_to_rotmat,
    rotmat_to_quat,
    se3_adjoint,
    se3_exp,
    se3_inverse,
    se3_jr,
    se3_jr_inv,
    se3_log,
    so3_exp,
    so3_jl,
    so3_jl_inv,
    so3_jr,
    so3_jr_inv,
    so3_log,
)

DT = torch.float64
PI = math.pi
SETTINGS = settings(
    max_examples=50, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None
)

angles = st.one_of(
    st.just(0.0),
    st.floats(0.0, 1e-8),
    st.floats(1e-8, 1e-2),
    st.floats(1.5 - 1e-6, 1.5 + 1e-6),  # the switch between the series and the closed forms
    st.floats(1e-2, PI - 1e-2),
    st.floats(PI - 1e-2, PI),
    st.just(PI),
)


@st.composite
def unit_vectors(draw) -> torch.Tensor:
    v = torch.tensor([draw(st.floats(-1.0, 1.0)) for _ in range(3)], dtype=DT)
    assume(float(v.norm()) > 1e-3)
    return v / v.norm()


@st.composite
def rotation_vectors(draw) -> tuple[torch.Tensor, float]:
    angle = draw(angles)
    return angle * draw(unit_vectors()), angle


def _eye(n: int = 3) -> torch.Tensor:
    return torch.eye(n, dtype=DT)


def _close(a: torch.Tensor, b: torch.Tensor, atol: float) -> None:
    assert bool(torch.isfinite(a).all()), a
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


@SETTINGS
@given(rotation_vectors())
def test_so3_exp_log_round_trip(rv):
    theta, angle = rv
    R = so3_exp(theta)
    _close(R.T @ R, _eye(), 1e-14)
    assert abs(float(torch.linalg.det(R)) - 1.0) < 1e-14
    back = so3_log(R)
    _close(so3_exp(back), R, 2e-15)
    assert abs(float(back.norm()) - angle) <= 1e-14
    if angle == 0.0:
        assert float(back.abs().max()) == 0.0
    elif angle < PI - 1e-6:  # at pi the axis sign is arbitrary, and just below it the axis is ill-conditioned
        assert float((back - theta).norm()) <= 1e-12 * angle + 1e-15 / (PI - angle)
    else:
        assert min(float((back - theta).norm()), float((back + theta).norm())) <= 1e-8


@SETTINGS
@given(rotation_vectors())
def test_so3_jacobians_and_their_inverses(rv):
    theta, _ = rv
    Jr, Jr_inv, Jl, Jl_inv = so3_jr(theta), so3_jr_inv(theta), so3_jl(theta), so3_jl_inv(theta)
    _close(Jr @ Jr_inv, _eye(), 1e-13)
    _close(Jr_inv @ Jr, _eye(), 1e-13)
    _close(Jl @ Jl_inv, _eye(), 1e-13)
    _close(Jl, so3_jr(-theta), 1e-15)
    _close(Jl, so3_exp(theta) @ Jr, 1e-14)
    _close(Jr @ theta, theta, 1e-14)  # the rotation axis is fixed by both Jacobians


@SETTINGS
@given(rotation_vectors(), st.floats(-1.0, 1.0), st.floats(-1.0, 1.0), st.floats(-1.0, 1.0), st.booleans())
def test_quaternion_round_trips(rv, x, y, z, flip):
    theta, angle = rv
    R = so3_exp(theta)
    q = rotmat_to_quat(R)
    assert abs(float(q.norm()) - 1.0) < 1e-15 and float(q[3]) >= 0.0
    _close(quat_to_rotmat(q), R, 2e-15)
    # from a quaternion: back to the w >= 0 representative (either sign at w = 0, a rotation by pi)
    w = math.cos(angle / 2) * (-1.0 if flip else 1.0)
    axis = theta / angle if angle > 0 else torch.tensor([x, y, z], dtype=DT)
    assume(float(axis.norm()) > 1e-3)
    qv = math.sin(angle / 2) * axis / axis.norm()
    q0 = torch.cat([qv, torch.tensor([w], dtype=DT)])
    back = rotmat_to_quat(quat_to_rotmat(q0))
    expected = -q0 if w < 0 else q0
    if abs(w) > 1e-7:
        _close(back, expected, 1e-14)
    else:
        assert min(float((back - q0).norm()), float((back + q0).norm())) <= 1e-7


@SETTINGS
@given(rotation_vectors(), unit_vectors(), st.floats(-12.0, -6.0))
def test_nearly_equal_rotations(rv, direction, log_step):
    r"""Two rotations a tiny step apart (two nearly equal times): their relative rotation is J_r(theta) delta to
    second order in the step, with no cancellation that would turn a 1e-12 step into round-off."""
    theta, _ = rv
    delta = 10.0**log_step * direction
    rel = so3_log(so3_exp(theta).T @ so3_exp(theta + delta))
    step = float(delta.norm())
    assert float((rel - so3_jr(theta) @ delta).norm()) <= 2.0 * step**2 + 2e-15
    # the same step through the inverse Jacobian
    _close(so3_jr_inv(theta) @ rel, delta, 2.0 * step**2 + 2e-15)


@SETTINGS
@given(rotation_vectors(), st.lists(st.floats(-5.0, 5.0), min_size=3, max_size=3), rotation_vectors())
def test_se3_round_trips_jacobians_and_adjoint(rv, rho, rv2):
    theta, angle = rv
    xi = torch.cat([theta, torch.tensor(rho, dtype=DT)])
    T = se3_exp(xi)
    _close(se3_exp(se3_log(T)), T, 1e-13)
    _close(se3_inverse(T) @ T, _eye(4), 1e-13)
    if angle < PI - 1e-6:
        _close(se3_log(T), xi, 1e-9 * (1.0 + float(xi.norm())))
    _close(se3_jr(xi) @ se3_jr_inv(xi), _eye(6), 1e-11)
    # adjoint: T Exp(eta) T^-1 = Exp(Ad_T eta)
    eta = torch.cat([rv2[0], torch.tensor(rho[::-1], dtype=DT)])
    _close(T @ se3_exp(eta) @ se3_inverse(T), se3_exp(se3_adjoint(T) @ eta), 1e-11)


@SETTINGS
@given(rotation_vectors())
def test_no_nan_in_gradients_or_float32(rv):
    theta, _ = rv
    t = theta.clone().requires_grad_(True)
    out = so3_log(so3_exp(t)).sum() + so3_jr(t).sum() + so3_jr_inv(t).sum()
    (g,) = torch.autograd.grad(out, t)
    assert bool(torch.isfinite(g).all()), g
    t32 = theta.to(torch.float32)
    R32 = so3_exp(t32)
    for value in (R32, so3_log(R32), so3_jr(t32), so3_jr_inv(t32), rotmat_to_quat(R32)):
        assert value.dtype == torch.float32 and bool(torch.isfinite(value).all())
    _close(so3_exp(so3_log(R32)).double(), R32.double(), 1e-6)

r"""Tests of gpgeom.geometry.lie: maps, Jacobians and derivative terms against mpmath and torch.func.jacfwd."""

import functools
import math

import pytest
import torch
from torch.func import jacfwd

from gpgeom.geometry import lie
from gpgeom.geometry.lie import (
    check_rotation,
    quat_to_rotmat,
    rotmat_to_quat,
    se3_ad,
    se3_adjoint,
    se3_compose,
    se3_exp,
    se3_hat,
    se3_inverse,
    se3_jl,
    se3_jl_inv,
    se3_jr,
    se3_jr_dxi,
    se3_jr_inv,
    se3_log,
    se3_vee,
    so3_exp,
    so3_hat,
    so3_jl,
    so3_jl_inv,
    so3_jr,
    so3_jr_dtheta,
    so3_jr_dtheta2,
    so3_jr_dtheta2_dv,
    so3_jr_dtheta3,
    so3_jr_dtheta_dv,
    so3_jr_inv,
    so3_jr_inv_dtheta,
    so3_jr_inv_dtheta2,
    so3_jr_inv_dtheta_dv,
    so3_log,
    so3_vee,
)

mp = pytest.importorskip("mpmath")

DT = torch.float64
PI = math.pi
SW = lie._SWITCH
SWEEP = [0.0, 1e-8, 1e-4, 0.1, 1.0, 3.0, PI - 1e-3]
MP_SWEEP = [0.0, 1e-8, 1e-4, 1e-2, 0.1, 1.0, SW * (1 - 1e-9), SW * (1 + 1e-9), 2.0, 3.0, PI - 1e-3]
JAC_ANGLES = [0.0, 1e-9, 1e-6, 1e-3, 0.5, SW * (1 - 1e-9), SW * (1 + 1e-9), 2.5, PI - 1e-2, PI - 1e-3]


def _axis(n=None):
    a = torch.randn(3 if n is None else (n, 3), dtype=DT)
    return a / a.norm(dim=-1, keepdim=True)


def _rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _eye(n=3):
    return torch.eye(n, dtype=DT)


def _rand_rot(n):
    q = torch.randn(n, 4, dtype=DT)
    return quat_to_rotmat(q / q.norm(dim=-1, keepdim=True))


# ------------------------------------------------------------------------------------------------------------
# Exp / Log
# ------------------------------------------------------------------------------------------------------------


def test_hat_vee():
    u, v = torch.randn(2, 5, 3, dtype=DT)
    assert torch.allclose(so3_hat(u) @ v.unsqueeze(-1), torch.linalg.cross(u, v).unsqueeze(-1))
    assert torch.equal(so3_vee(so3_hat(u)), u)
    xi = torch.randn(4, 2, 6, dtype=DT)
    assert torch.equal(se3_vee(se3_hat(xi)), xi)


@pytest.mark.parametrize("angle", SWEEP)
def test_so3_log_exp_round_trip(angle):
    theta = angle * _axis(64)
    R = so3_exp(theta)
    assert torch.allclose(R.transpose(-1, -2) @ R, _eye().expand(64, 3, 3), atol=1e-14, rtol=0)
    back = so3_log(R)
    err = (back - theta).norm(dim=-1)
    if angle == 0.0:
        assert float(err.max()) == 0.0
    else:
        assert float((err / angle).max()) < 1e-10
    assert torch.allclose(so3_exp(back), R, atol=1e-14, rtol=0)


def test_so3_exp_log_of_random_and_near_pi_rotations():
    R = _rand_rot(200)
    assert torch.allclose(so3_exp(so3_log(R)), R, atol=1e-13, rtol=0)
    # exactly pi (axis sign arbitrary) and just below pi: Exp(Log R) == R
    for angle in (PI, PI - 1e-7):
        R = so3_exp(angle * _axis(50))
        phi = so3_log(R)
        assert torch.allclose(phi.norm(dim=-1), torch.full((50,), angle, dtype=DT), atol=1e-14, rtol=0)
        assert torch.allclose(so3_exp(phi), R, atol=1e-14, rtol=0)


def test_quaternion_round_trip_all_shepperd_branches():
    q = torch.randn(400, 4, dtype=DT)
    q[:100, 0] *= 50  # x largest
    q[100:200, 1] *= 50  # y largest
    q[200:300, 2] *= 50  # z largest
    q = q / q.norm(dim=-1, keepdim=True)
    R = quat_to_rotmat(q)
    check_rotation(R, tol=1e-13)
    q2 = rotmat_to_quat(R)
    assert bool((q2[:, 3] >= 0).all())
    assert torch.allclose(q2, q * torch.sign(q[:, 3:]), atol=1e-14, rtol=0)
    # quaternion and rotation vector describe the same rotation
    assert torch.allclose(so3_exp(so3_log(R)), R, atol=1e-13, rtol=0)
    w = q2[:, 3].clamp(max=1.0)
    angle = 2 * torch.atan2(q2[:, :3].norm(dim=-1), w)
    assert torch.allclose(so3_log(R).norm(dim=-1), angle, atol=1e-13, rtol=0)


# ------------------------------------------------------------------------------------------------------------
# mpmath reference: series of the matrix functions (independent of the closed forms) and finite differences at
# 45 digits, so the reference is exact to far below float64 rounding.
# ------------------------------------------------------------------------------------------------------------


@functools.cache
def _inv_fact(k, dps):
    with mp.workdps(dps):
        return mp.mpf(1) / mp.factorial(k)


def _mpv(x):
    return [mp.mpf(float(a)) for a in x]


def _cross(a, b):
    return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]


def _series(theta, v, coef):
    """sum_k coef(k) (theta^)^k v, truncated where |theta|^k / k! is below the working precision."""
    t = mp.sqrt(sum(a * a for a in theta))
    bound, n, tiny = mp.mpf(1), 0, mp.mpf(10) ** (-mp.mp.dps - 5)
    while n < 4 or bound > tiny:
        n += 1
        bound = bound * t / n
    out, x = list(v), list(v)
    out = [coef(0) * a for a in v]
    for k in range(1, n + 1):
        x = _cross(theta, x)
        c = coef(k)
        out = [o + c * a for o, a in zip(out, x)]
    return out


def _mat(cols):
    return mp.matrix([[cols[j][i] for j in range(3)] for i in range(3)])


def _e(i):
    return [mp.mpf(int(i == j)) for j in range(3)]


def _mp_exp(th):
    return _mat([_series(th, _e(i), lambda k: _inv_fact(k, mp.mp.dps)) for i in range(3)])


def _mp_jr_v(th, v):
    return _series(th, v, lambda k: (-1) ** k * _inv_fact(k + 1, mp.mp.dps))


def _mp_jrinv_v(th, v):
    J = _mat([_mp_jr_v(th, _e(i)) for i in range(3)])
    x = mp.lu_solve(J, mp.matrix(v))
    return [x[i] for i in range(3)]


def _shift(th, d, h):
    return [a + h * b for a, b in zip(th, d)]


def _dir(f, th, v, w, h):
    """(f(th + h w) v - f(th - h w) v) / 2h = d(f(th) v)/dth . w"""
    a, b = f(_shift(th, w, h), v), f(_shift(th, w, -h), v)
    return [(x - y) / (2 * h) for x, y in zip(a, b)]


def _to_t(M):
    if isinstance(M, list) and not isinstance(M[0], list):
        return torch.tensor([float(x) for x in M], dtype=DT)
    if isinstance(M, list):
        return torch.tensor([[float(M[j][i]) for j in range(3)] for i in range(3)], dtype=DT)
    return torch.tensor([[float(M[i, j]) for j in range(3)] for i in range(3)], dtype=DT)


def _references(theta, v, w):
    h1, h2 = mp.mpf("1e-15"), mp.mpf("1e-10")  # FD errors ~1e-30 (inner) and ~1e-20 (nested) at 45 digits
    th, vv, ww = _mpv(theta), _mpv(v), _mpv(w)
    ref = {}
    ref["exp"] = _to_t(_mp_exp(th))
    ref["jr"] = _to_t([_mp_jr_v(th, _e(i)) for i in range(3)])
    ref["jr_inv"] = _to_t([_mp_jrinv_v(th, _e(i)) for i in range(3)])
    ref["jl"] = _to_t([_mp_jr_v([-a for a in th], _e(i)) for i in range(3)])
    for name, f in (("", _mp_jr_v), ("inv_", _mp_jrinv_v)):

        def h_dir(t_, v_, f=f):
            return _dir(f, t_, v_, ww, h1)  # H(t_, v_) w

        ref[f"{name}H"] = _to_t([_dir(f, th, vv, _e(i), h1) for i in range(3)])
        ref[f"{name}L11"] = _to_t([_dir(h_dir, th, vv, _e(i), h2) for i in range(3)])
        ref[f"{name}L12"] = _to_t([h_dir(th, _e(i)) for i in range(3)])
    return ref


def _ours(theta, v, w):
    zero = torch.zeros(3, dtype=DT)
    return {
        "exp": so3_exp(theta),
        "jr": so3_jr(theta),
        "jr_inv": so3_jr_inv(theta),
        "jl": so3_jl(theta),
        "H": so3_jr_dtheta(theta, v),
        "inv_H": so3_jr_inv_dtheta(theta, v),
        "L11": so3_jr_dtheta2(theta, v, w),
        "L12": so3_jr_dtheta_dv(theta, v, w),
        "inv_L11": so3_jr_inv_dtheta2(theta, v, w),
        "inv_L12": so3_jr_inv_dtheta_dv(theta, v, w),
        # autograd (forward mode) through the closed forms / series branches
        "ad:jr.v": jacfwd(lambda t: so3_jr(t) @ v)(theta),
        "ad:jr_inv.v": jacfwd(lambda t: so3_jr_inv(t) @ v)(theta),
        "ad:log": jacfwd(lambda d: so3_log(so3_exp(theta) @ so3_exp(d)))(zero),
    }


def test_accuracy_against_mpmath_over_angle_sweep():
    """Values and autograd derivatives of every SO(3) function, relative (Frobenius) error < 1e-10."""
    worst = {}
    with mp.workdps(45):
        for angle in MP_SWEEP:
            theta = angle * _axis()
            v, w = torch.randn(2, 3, dtype=DT)
            ref = _references(theta, v, w)
            got = _ours(theta, v, w)
            ref["ad:jr.v"], ref["ad:jr_inv.v"], ref["ad:log"] = ref["H"], ref["inv_H"], ref["jr_inv"]
            for k, g in got.items():
                worst[k] = max(worst.get(k, 0.0), _rel(g, ref[k]))
    print("worst relative error over the angle sweep:", {k: f"{e:.1e}" for k, e in worst.items()})
    assert max(worst.values()) < 1e-10, worst


# ------------------------------------------------------------------------------------------------------------
# Jacobians: identities and hand-written derivatives == jacfwd
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("angle", JAC_ANGLES)
def test_jr_identities_and_jr_is_derivative_of_exp(angle):
    theta = angle * _axis()
    Jr, Jri = so3_jr(theta), so3_jr_inv(theta)
    assert torch.allclose(Jr @ Jri, _eye(), atol=1e-13, rtol=0)
    assert torch.allclose(so3_jl(theta), so3_jr(-theta), atol=0, rtol=0)
    assert torch.allclose(so3_jl(theta), so3_exp(theta) @ Jr, atol=1e-14, rtol=0)
    assert torch.allclose(so3_jl_inv(theta) @ so3_jl(theta), _eye(), atol=1e-13, rtol=0)
    R = so3_exp(theta)
    num = jacfwd(lambda d: so3_log(R.T @ so3_exp(theta + d)))(torch.zeros(3, dtype=DT))
    assert _rel(num, Jr) < 1e-12


@pytest.mark.parametrize("angle", JAC_ANGLES)
def test_hand_written_derivatives_equal_jacfwd(angle):
    theta = angle * _axis()
    v, w = torch.randn(2, 3, dtype=DT)
    pairs = {
        "H": (so3_jr_dtheta(theta, v), jacfwd(lambda t: so3_jr(t) @ v)(theta)),
        "H'": (so3_jr_inv_dtheta(theta, v), jacfwd(lambda t: so3_jr_inv(t) @ v)(theta)),
        "L11": (so3_jr_dtheta2(theta, v, w), jacfwd(lambda t: so3_jr_dtheta(t, v) @ w)(theta)),
        "L12": (so3_jr_dtheta_dv(theta, v, w), jacfwd(lambda x: so3_jr_dtheta(theta, x) @ w)(v)),
        "L'11": (so3_jr_inv_dtheta2(theta, v, w), jacfwd(lambda t: so3_jr_inv_dtheta(t, v) @ w)(theta)),
        "L'12": (so3_jr_inv_dtheta_dv(theta, v, w), jacfwd(lambda x: so3_jr_inv_dtheta(theta, x) @ w)(v)),
    }
    for name, (hand, auto) in pairs.items():
        assert _rel(hand, auto) < 1e-9, (name, _rel(hand, auto))


def test_derivative_terms_batched_and_broadcast():
    theta = torch.randn(5, 1, 3, dtype=DT)
    v, w = torch.randn(2, 4, 3, dtype=DT)
    for f in (so3_jr_dtheta2, so3_jr_dtheta_dv, so3_jr_inv_dtheta2, so3_jr_inv_dtheta_dv):
        out = f(theta, v, w)
        assert out.shape == (5, 4, 3, 3)
        assert torch.allclose(out[2, 3], f(theta[2, 0], v[3], w[3]), atol=1e-15, rtol=0)
    for f in (so3_jr_dtheta, so3_jr_inv_dtheta):
        assert f(theta, v).shape == (5, 4, 3, 3)
    assert so3_exp(torch.randn(2, 3, 4, 3, dtype=DT)).shape == (2, 3, 4, 3, 3)


def test_kinematics_identities():
    """theta-dot = Jr^-1 omega and omega = Jr theta-dot are consistent to second order along a curve."""
    theta0, omega0 = torch.randn(2, 3, dtype=DT)
    alpha = torch.randn(3, dtype=DT)

    def theta_dot(th, om):
        return so3_jr_inv(th) @ om

    td = theta_dot(theta0, omega0)
    # d/dt theta-dot along (theta-dot, alpha) == Jr^-1 alpha + H'(theta, omega) theta-dot
    tdd = so3_jr_inv(theta0) @ alpha + so3_jr_inv_dtheta(theta0, omega0) @ td
    num = jacfwd(lambda s: theta_dot(theta0 + s * td, omega0 + s * alpha))(torch.zeros((), dtype=DT))
    assert _rel(tdd, num) < 1e-12
    # and alpha = Jr theta-ddot + H(theta, theta-dot) theta-dot recovers alpha
    back = so3_jr(theta0) @ tdd + so3_jr_dtheta(theta0, td) @ td
    assert _rel(back, alpha) < 1e-12


# ------------------------------------------------------------------------------------------------------------
# Series / closed-form switch and gradients at zero
# ------------------------------------------------------------------------------------------------------------


_LEVELS = [(n, lv) for n in "BCD" for lv in range(3)] + [("B", 3), ("C", 3), ("A", 0), ("c3", 0), ("c4", 0)]


@pytest.mark.parametrize("name,level", _LEVELS)
def test_series_and_closed_form_agree_at_switch(name, level):
    t = torch.tensor([SW, SW * (1 - 1e-12), SW * (1 + 1e-12)], dtype=DT, requires_grad=True)
    series = lie._horner(t * t, lie._SERIES[name][level])
    closed = lie._closed(name, level, t)
    # the third level cancels like eps / t^8 in closed form: 1e-11 there (1e-12 below)
    tol = 1e-11 if level == 3 else 1e-12
    assert _rel(series, closed) < tol
    gs, gc = torch.autograd.grad(series.sum(), t)[0], torch.autograd.grad(closed.sum(), t)[0]
    assert _rel(gs, gc) < 100 * tol
    # the branch-switching function is continuous across the switch (both sides)
    below, above = (lie._coef(name, (x * x).detach(), level) for x in (t[1], t[2]))
    assert abs(float(below - above)) <= 1e-10 * abs(float(above))


def test_matrix_functions_continuous_across_switch():
    ax = _axis()
    v, w = torch.randn(2, 3, dtype=DT)
    lo, hi = SW * (1 - 1e-13) * ax, SW * (1 + 1e-13) * ax
    for f in (so3_exp, so3_jr, so3_jr_inv):
        assert _rel(f(lo), f(hi)) < 1e-10
    for f in (so3_jr_dtheta2, so3_jr_inv_dtheta2):
        assert _rel(f(lo, v, w), f(hi, v, w)) < 1e-10


def test_gradients_finite_at_zero_equal_analytic_limit():
    zero = torch.zeros(3, dtype=DT)
    E = so3_hat(torch.eye(3, dtype=DT))  # E[i] = hat(e_i)
    dexp = jacfwd(so3_exp)(zero)  # 3 x 3 x 3, last index = theta_i
    assert torch.allclose(dexp.permute(2, 0, 1), E, atol=1e-15, rtol=0)
    assert torch.allclose(jacfwd(so3_jr)(zero).permute(2, 0, 1), -0.5 * E, atol=1e-15, rtol=0)
    assert torch.allclose(jacfwd(so3_jr_inv)(zero).permute(2, 0, 1), 0.5 * E, atol=1e-15, rtol=0)
    # d Log(R) / dR at R = I: vee of the skew part, Log(I + dR) = vee((dR - dR^T) / 2)
    R = _eye().clone().requires_grad_(True)
    dlog = torch.stack([torch.autograd.grad(so3_log(R)[i], R)[0] for i in range(3)])
    assert torch.allclose(dlog, 0.5 * E, atol=1e-15, rtol=0)  # d phi_i / dR_jk = (E_i)_jk / 2
    assert torch.allclose(jacfwd(lambda t: so3_log(so3_exp(t)))(zero), _eye(), atol=1e-15, rtol=0)
    # reverse-mode gradients through every function are finite at exactly zero
    theta = zero.clone().requires_grad_(True)
    v, w = torch.randn(2, 3, dtype=DT)
    outs = [so3_exp(theta), so3_log(so3_exp(theta)), so3_jr(theta), so3_jr_inv(theta), so3_jl_inv(theta)]
    outs += [so3_jr_dtheta(theta, v), so3_jr_inv_dtheta(theta, v), so3_jr_dtheta2(theta, v, w)]
    outs += [so3_jr_inv_dtheta2(theta, v, w), se3_exp(torch.cat([theta, v])), se3_jr(torch.cat([theta, v]))]
    for o in outs:
        (g,) = torch.autograd.grad((o * torch.randn_like(o)).sum(), theta)
        assert bool(torch.isfinite(g).all())
    # and the first-order limits the reference used: H(0, v) = v^/2, H'(0, v) = -v^/2, L12(0) = -w^/2
    assert torch.allclose(so3_jr_dtheta(zero, v), 0.5 * so3_hat(v), atol=0, rtol=1e-15)
    assert torch.allclose(so3_jr_inv_dtheta(zero, v), -0.5 * so3_hat(v), atol=0, rtol=1e-15)
    assert torch.allclose(so3_jr_dtheta_dv(zero, v, w), -0.5 * so3_hat(w), atol=0, rtol=1e-15)


# ------------------------------------------------------------------------------------------------------------
# SE(3)
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("angle", SWEEP)
def test_se3_exp_log_round_trip(angle):
    xi = torch.cat([angle * _axis(32), 3 * torch.randn(32, 3, dtype=DT)], dim=-1)
    T = se3_exp(xi)
    back = se3_log(T)
    assert _rel(back, xi) < 1e-10
    assert torch.allclose(se3_exp(back), T, atol=1e-13, rtol=0)
    assert torch.allclose(se3_compose(se3_inverse(T), T), _eye(4).expand(32, 4, 4), atol=1e-13, rtol=0)


@pytest.mark.parametrize("angle", [0.0, 1e-7, 0.3, SW * (1 + 1e-9), 2.5, PI - 1e-3])
def test_se3_jacobians(angle):
    xi = torch.cat([angle * _axis(), torch.randn(3, dtype=DT)])
    T = se3_exp(xi)
    num = jacfwd(lambda d: se3_log(se3_inverse(T) @ se3_exp(xi + d)))(torch.zeros(6, dtype=DT))
    assert _rel(num, se3_jr(xi)) < 1e-10
    numl = jacfwd(lambda d: se3_log(se3_exp(xi + d) @ se3_inverse(T)))(torch.zeros(6, dtype=DT))
    assert _rel(numl, se3_jl(xi)) < 1e-10
    assert torch.allclose(se3_jr(xi) @ se3_jr_inv(xi), _eye(6), atol=1e-12, rtol=0)
    assert torch.allclose(se3_jl(xi) @ se3_jl_inv(xi), _eye(6), atol=1e-12, rtol=0)
    assert _rel(se3_jl(xi), se3_adjoint(T) @ se3_jr(xi)) < 1e-12


@pytest.mark.parametrize("angle", JAC_ANGLES)
def test_third_derivatives_of_jr_equal_jacfwd_and_finite_differences(angle):
    r"""The SE(3) trajectory's extra derivatives: :math:`L_3 = \partial[L_{11} z]/\partial\theta` and
    :math:`D^2 J_r[w, z]` against forward-mode autodiff of the (independently tested) :math:`L_{11}`, and against
    central differences of :math:`J_r v` itself (three nested difference quotients are too noisy; one quotient of
    the hand-written :math:`L_{11}`, whose own correctness is tested above, is used)."""
    theta = angle * _axis()
    v, w, z = torch.randn(3, 3, dtype=DT)
    L3 = so3_jr_dtheta3(theta, v, w, z)
    assert _rel(L3, jacfwd(lambda t: so3_jr_dtheta2(t, v, w) @ z)(theta)) < 1e-9
    assert _rel(L3, so3_jr_dtheta3(theta, v, z, w)) < 1e-12  # symmetric in (w, z)
    D2 = so3_jr_dtheta2_dv(theta, v, w, z)
    assert _rel(D2, jacfwd(lambda x: so3_jr_dtheta2(theta, x, w) @ z)(v)) < 1e-9
    assert _rel(D2 @ v, so3_jr_dtheta2(theta, v, w) @ z) < 1e-12  # linear in v
    h = 1e-5
    fd = torch.stack(
        [(so3_jr_dtheta2(theta + h * e, v, w) @ z - so3_jr_dtheta2(theta - h * e, v, w) @ z) / (2 * h) for e in _eye()],
        -1,
    )
    assert _rel(L3, fd) < 1e-6


@pytest.mark.parametrize("angle", [0.0, 1e-7, 0.3, SW * (1 - 1e-9), SW * (1 + 1e-9), 2.5, PI - 1e-3])
def test_se3_jr_derivative_and_the_q_identity(angle):
    r""":math:`S(\xi, y) = \partial(J_r(\xi) y)/\partial\xi` against jacfwd and central differences, and the identity
    it rests on, :math:`Q_r(\phi,\rho) = H(\phi,\rho) - (J_r(\phi)\rho)^\wedge J_r(\phi)`, against the lower-left
    block of Barfoot's :math:`J_r(\xi)` (eq. 7.86, through :func:`se3_jr`)."""
    phi, rho = angle * _axis(), torch.randn(3, dtype=DT)
    xi, y = torch.cat([phi, rho]), torch.randn(6, dtype=DT)
    Q = so3_jr_dtheta(phi, rho) - so3_hat(so3_jr(phi) @ rho) @ so3_jr(phi)
    assert _rel(Q, se3_jr(xi)[3:, :3]) < 1e-12
    S = se3_jr_dxi(xi, y)
    assert _rel(S, jacfwd(lambda x: se3_jr(x) @ y)(xi)) < 1e-10
    h = 1e-6
    fd = torch.stack([(se3_jr(xi + h * e) @ y - se3_jr(xi - h * e) @ y) / (2 * h) for e in _eye(6)], -1)
    assert _rel(S, fd) < 1e-7
    assert se3_jr_dxi(torch.randn(4, 1, 6, dtype=DT), torch.randn(5, 6, dtype=DT)).shape == (4, 5, 6, 6)


def test_se3_adjoint_identities():
    T = se3_exp(torch.randn(10, 6, dtype=DT))
    xi, eta = torch.randn(2, 10, 6, dtype=DT)
    lhs = se3_exp((se3_adjoint(T) @ xi.unsqueeze(-1)).squeeze(-1))
    assert torch.allclose(lhs, T @ se3_exp(xi) @ se3_inverse(T), atol=1e-12, rtol=0)
    bracket = se3_hat(xi) @ se3_hat(eta) - se3_hat(eta) @ se3_hat(xi)
    assert torch.allclose((se3_ad(xi) @ eta.unsqueeze(-1)).squeeze(-1), se3_vee(bracket), atol=1e-13, rtol=0)
    assert torch.allclose(se3_adjoint(se3_inverse(T)), torch.linalg.inv(se3_adjoint(T)), atol=1e-12, rtol=0)


# ------------------------------------------------------------------------------------------------------------
# Bad input, dtypes
# ------------------------------------------------------------------------------------------------------------


def test_bad_input_errors():
    R = _rand_rot(4)
    bad = R.clone()
    bad[2, 0, 0] += 0.05
    with pytest.raises(ValueError, match=r"`R` is not a rotation matrix: max \|R\^T R - I\| = .*batch index \(2,\)"):
        so3_log(bad)
    with pytest.raises(ValueError, match=r"not a rotation matrix"):
        check_rotation(bad)
    check_rotation(bad, tol=0.2)  # a looser tolerance accepts it
    refl = R.clone()
    refl[1] = -refl[1]
    with pytest.raises(ValueError, match=r"det\(R\) = -1 != 1 .*reflection"):
        rotmat_to_quat(refl)
    with pytest.raises(ValueError, match=r"contains 1 NaN"):
        so3_log(torch.where(torch.arange(9).reshape(3, 3) == 4, float("nan"), R[0]))
    with pytest.raises(ValueError, match=r"`q` must hold unit quaternions .*norm 2"):
        quat_to_rotmat(torch.tensor([0.0, 0.0, 0.0, 2.0], dtype=DT))
    T = se3_exp(torch.randn(6, dtype=DT))
    T[3, 0] = 1.0
    with pytest.raises(ValueError, match=r"bottom row must be \(0, 0, 0, 1\)"):
        se3_log(T)
    with pytest.raises(ValueError, match=r"`theta` must have trailing shape \(3\), got shape \(2, 4\)"):
        so3_exp(torch.zeros(2, 4, dtype=DT))
    with pytest.raises(ValueError, match=r"`R` must have trailing shape \(3, 3\)"):
        so3_log(torch.zeros(3, 4, dtype=DT))
    with pytest.raises(ValueError, match=r"`q` must have trailing shape \(4\)"):
        quat_to_rotmat(torch.zeros(3, dtype=DT))
    with pytest.raises(ValueError, match=r"`xi` must have trailing shape \(6\)"):
        se3_jr(torch.zeros(3, dtype=DT))
    with pytest.raises(ValueError, match=r"`w` must have trailing shape \(3\)"):
        so3_jr_dtheta2(torch.zeros(3, dtype=DT), torch.zeros(3, dtype=DT), torch.zeros(2, dtype=DT))
    with pytest.raises(TypeError, match=r"`theta` must be a torch.Tensor"):
        so3_exp([0.0, 0.0, 0.0])
    with pytest.raises(TypeError, match=r"floating-point"):
        so3_jr(torch.zeros(3, dtype=torch.int64))
    so3_log(bad, validate=False)  # opting out of the check runs


def test_float32_smoke():
    theta64 = torch.cat([torch.zeros(1, 3, dtype=DT), torch.tensor([1e-6, 0.3, 1.7, 3.0])[:, None] * _axis(4)])
    theta = theta64.float()
    v, w = torch.randn(2, 3)
    for f in (so3_exp, so3_jr, so3_jr_inv, so3_jl, so3_jl_inv):
        out = f(theta)
        assert out.dtype == torch.float32
        assert torch.allclose(out.double(), f(theta64), atol=2e-6, rtol=0)
    assert torch.allclose(so3_log(so3_exp(theta)).double(), theta64, atol=2e-6, rtol=0)
    for f in (so3_jr_dtheta2, so3_jr_dtheta_dv, so3_jr_inv_dtheta2, so3_jr_inv_dtheta_dv):
        out = f(theta, v, w)
        assert out.dtype == torch.float32
        assert torch.allclose(out.double(), f(theta64, v.double(), w.double()), atol=1e-5, rtol=1e-5)
    xi = torch.cat([torch.rand(50, 1) * 3.0 * _axis(50).float(), torch.randn(50, 3)], dim=-1)  # angles < 3
    assert torch.allclose(se3_log(se3_exp(xi)), xi, atol=2e-5, rtol=0)
    t0 = torch.zeros(3, requires_grad=True)
    (g,) = torch.autograd.grad(so3_jr_inv_dtheta2(t0, v, w).sum() + so3_log(so3_exp(t0)).sum(), t0)
    assert bool(torch.isfinite(g).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    theta = torch.randn(100, 3, dtype=DT)
    v, w = torch.randn(2, 100, 3, dtype=DT)
    dev = "cuda"
    for f in (so3_exp, so3_jr_inv):
        assert torch.allclose(f(theta.to(dev)).cpu(), f(theta), atol=1e-13, rtol=0)
    assert torch.allclose(so3_log(so3_exp(theta.to(dev))).cpu(), so3_log(so3_exp(theta)), atol=1e-12, rtol=0)
    out = so3_jr_inv_dtheta2(theta.to(dev), v.to(dev), w.to(dev)).cpu()
    assert torch.allclose(out, so3_jr_inv_dtheta2(theta, v, w), atol=1e-12, rtol=0)
    xi = torch.randn(100, 6, dtype=DT)
    assert torch.allclose(se3_jr(xi.to(dev)).cpu(), se3_jr(xi), atol=1e-12, rtol=0)


def test_batched_coefficients_equal_the_single_ones_and_derivatives_accept_them():
    r"""``_coefs`` (one Horner recursion for several series, shared sines) gives each coefficient as ``_coef`` does,
    on both sides of the switch, and the derivative terms evaluated with the shared ``so3_jr_coefficients`` equal
    those that evaluate their own (float64 and float32)."""
    t = torch.tensor([0.0, 1e-6, 0.7, SW * (1 - 1e-9), SW * (1 + 1e-9), 2.2, PI - 1e-3], dtype=DT)
    keys = [(n, lv) for n in ("A", "B", "C", "D") for lv in range(3)] + [("B", 3), ("C", 3), ("c3", 0), ("c4", 0)]
    got = lie._coefs(t * t, *keys)
    for (name, level), c in zip(keys, got):
        torch.testing.assert_close(c, lie._coef(name, t * t, level), rtol=1e-15, atol=0.0, msg=f"{name}{level}")
    for dtype, tol in ((DT, 1e-15), (torch.float32, 1e-6)):
        theta = (t[:, None] * _axis(t.shape[0])).to(dtype)
        v, w, z = torch.randn(3, t.shape[0], 3, dtype=DT).to(dtype)
        k = lie.so3_jr_coefficients(theta)
        assert set(k) == {(n, lv) for n in "BC" for lv in range(4)} and k[("B", 0)].shape == t.shape
        pairs = [
            (so3_jr_dtheta(theta, v, coefs=k), so3_jr_dtheta(theta, v)),
            (so3_jr_dtheta2(theta, v, w, coefs=k), so3_jr_dtheta2(theta, v, w)),
            (so3_jr_dtheta_dv(theta, v, w, coefs=k), so3_jr_dtheta_dv(theta, v, w)),
            (so3_jr_dtheta3(theta, v, w, z, coefs=k), so3_jr_dtheta3(theta, v, w, z)),
            (so3_jr_dtheta2_dv(theta, v, w, z, coefs=k), so3_jr_dtheta2_dv(theta, v, w, z)),
        ]
        for a, b in pairs:
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    with pytest.raises(ValueError, match="theta"):
        lie.so3_jr_coefficients(torch.zeros(4, dtype=DT))

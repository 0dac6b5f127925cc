r"""Batched SO(3) and SE(3) maps in torch, with the Jacobians and derivative terms of GP trajectory kinematics.

Every function accepts any leading batch shape (``...``), float32 or float64, on any device, and is written with
torch operations only, so that it composes with ``torch.autograd``, ``torch.func.jacfwd``/``jacrev`` and ``vmap``.

Conventions
-----------
* ``hat``/``vee``: :math:`u^\wedge v = u \times v`; ``so3_hat`` maps ``... x 3`` to ``... x 3 x 3``.
* Perturbations are on the **right**: :math:`\mathrm{Exp}(\theta + \delta) \approx \mathrm{Exp}(\theta)
  \,\mathrm{Exp}(J_r(\theta)\,\delta)` and :math:`J_l(\theta) = J_r(-\theta) = \mathrm{Exp}(\theta) J_r(\theta)`
  (Sola et al. 2018, eqs. 143-146; Barfoot 2nd ed. sec. 7.1.5).
* SE(3) tangent vectors are ordered **rotation first**, :math:`\xi = (\phi, \rho)` (``... x 6``), as in the GPTR
  trajectory model. Barfoot orders :math:`(\rho, \phi)`; his block matrices are re-ordered accordingly here:
  :math:`\mathrm{Ad}_T = [[R, 0], [p^\wedge R, R]]`, :math:`J = [[J(\phi), 0], [Q(\phi,\rho), J(\phi)]]`.
* Quaternions are **scalar-last** ``(x, y, z, w)`` (as in scipy and Eigen's coefficient order), and
  :func:`rotmat_to_quat` returns the representative with ``w >= 0``.

Closed forms (with :math:`t = |\theta|`, :math:`\Phi = \theta^\wedge`, :math:`\Phi^2 = \theta\theta^T - t^2 I`)
---------------------------------------------------------------------------------------------------------------
* :math:`\mathrm{Exp}(\theta) = I + A\Phi + B\Phi^2` (Rodrigues; Barfoot eq. 7.20, Sola eq. 77).
* :math:`J_r = I - B\Phi + C\Phi^2`, :math:`J_l = I + B\Phi + C\Phi^2` (Barfoot eq. 7.77, Sola eqs. 143, 144).
* :math:`J_r^{-1} = I + \tfrac12\Phi + D\Phi^2`, :math:`J_l^{-1} = I - \tfrac12\Phi + D\Phi^2`
  (Barfoot eq. 7.78, Sola eqs. 145, 146), with :math:`D` written through :math:`\cot(t/2)` so that it stays
  accurate up to :math:`t = \pi` (where :math:`D = 1/\pi^2`; the form with :math:`\sin t` in a denominator is
  0/0 there).

with the even coefficient functions

=====  =============================================  ==============================================
name   closed form                                    Taylor series in :math:`s = t^2`
=====  =============================================  ==============================================
A      :math:`\sin t / t`                             :math:`\sum_k (-1)^k s^k / (2k+1)!`
B      :math:`(1-\cos t)/t^2 = 2\sin^2(t/2)/t^2`      :math:`\sum_k (-1)^k s^k / (2k+2)!`
C      :math:`(t-\sin t)/t^3`                         :math:`\sum_k (-1)^k s^k / (2k+3)!`
D      :math:`1/t^2 - \cot(t/2)/(2t)`                 :math:`\sum_k (-1)^k B_{2k+2} s^k / (2k+2)!`
c3     :math:`(t^2 + 2\cos t - 2)/(2t^4)`             :math:`\sum_k (-1)^k s^k / (2k+4)!`
c4     :math:`(2t - 3\sin t + t\cos t)/(2t^5)`        :math:`\sum_k (-1)^k (k+1) s^k / (2k+5)!`
=====  =============================================  ==============================================

(:math:`B_n` are Bernoulli numbers; the D series converges for :math:`t < 2\pi`.) The derivative terms use
:math:`f_1 = f'(t)/t = 2\,df/ds` and :math:`f_2 = f_1'(t)/t`, so that :math:`\nabla_\theta f = f_1\theta` and
:math:`\nabla_\theta f_1 = f_2\theta`; their series are the term-wise derivatives in :math:`s`
(coefficients :math:`2(k+1)a_{k+1}` and :math:`4(k+1)(k+2)a_{k+2}`); the third derivatives of :math:`J_r` of the
SE(3) trajectory Jacobians also use :math:`B_3 = B_2'(t)/t = (-t^3\sin t - 9t^2\cos t + 33t\sin t - 48(1-\cos t))
/t^8` and :math:`C_3 = C_2'(t)/t = (t^3\cos t - 12t^2\sin t - 57t\cos t - 48t + 105\sin t)/t^9` (their closed
forms cancel like :math:`\varepsilon/t^8`: 1e-11 relative at the switch, 1e-12 beyond 2 rad).

Numerics
--------
Each coefficient is evaluated by its Taylor series (Horner in :math:`s`, ``_N_TERMS`` terms, no square root)
when :math:`t` is below a switch angle, and by the closed form above it. The closed forms of the second-level
coefficients (:math:`B_2, C_2, D_2`) cancel like :math:`\varepsilon/t^6`, which is why the switch is at
``_SWITCH = 1.5`` rad rather than near zero: there the series is exact to rounding and the closed form is
accurate to about 1e-13 relative (float64), so values *and* autograd derivatives are accurate to better
than 1e-12 relative at every angle in :math:`[0, \pi]` (measured against mpmath in ``tests/test_lie.py``).
Gradients are kept finite through the unused branch with the double-``torch.where`` trick: each branch gets
an input that is valid for it (the closed form never sees :math:`t < ` switch, the series never sees large
:math:`s`), so neither produces an inf or NaN whose zero-weighted gradient would poison the result.

:func:`so3_log` goes through the quaternion (Shepperd's method: the largest of
:math:`4w^2, 4x^2, 4y^2, 4z^2` picks the row of :math:`4 q q^T` to use) and
:math:`\theta = 2\,\mathrm{atan2}(|q_v|, w)\, q_v / |q_v|`, so it uses the symmetric part of :math:`R` near
:math:`\pi` and the antisymmetric part near 0 and never takes an arccos of the trace.

References
----------
* T. D. Barfoot, *State Estimation for Robotics*, 2nd ed., Cambridge University Press, 2024, ch. 7.
* J. Sola, J. Deray, D. Atchuthan, *A micro Lie theory for state estimation in robotics*, arXiv:1812.01537, 2018.
* T.-M. Nguyen et al., *GPTR: Gaussian Process Trajectory Representation...*, arXiv:2410.22931, 2024
  (the derivative terms :math:`H, H', L_{11}, L_{12}, L'_{11}, L'_{12}`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

from gpgeom._validation import check_tensor
from gpgeom.geometry.lie_series import (  # the coefficient functions; the private names are the tests' too
    _LOG_SERIES,
    _LOG_SWITCH,
    _SERIES,  # noqa: F401
    _SWITCH,  # noqa: F401
    _closed,  # noqa: F401
    _coef,
    _coefs,
    _horner,
)

__all__ = [
    "check_rotation",
    "check_se3",
    "check_unit_quaternion",
    "quat_to_rotmat",
    "rotmat_to_quat",
    "se3_ad",
    "se3_adjoint",
    "se3_compose",
    "se3_exp",
    "se3_from_rt",
    "se3_hat",
    "se3_inverse",
    "se3_jl",
    "se3_jl_inv",
    "se3_jr",
    "se3_jr_dxi",
    "se3_jr_inv",
    "se3_log",
    "se3_vee",
    "so3_exp",
    "so3_hat",
    "so3_jl",
    "so3_jl_inv",
    "so3_jr",
    "so3_jr_coefficients",
    "so3_jr_dtheta",
    "so3_jr_dtheta2",
    "so3_jr_dtheta2_dv",
    "so3_jr_dtheta3",
    "so3_jr_dtheta_dv",
    "so3_jr_inv",
    "so3_jr_inv_dtheta",
    "so3_jr_inv_dtheta2",
    "so3_jr_inv_dtheta_dv",
    "so3_log",
    "so3_vee",
]


def _sq(theta: Tensor) -> Tensor:
    return (theta * theta).sum(-1)


def _eye(x: Tensor, n: int = 3) -> Tensor:
    return torch.eye(n, dtype=x.dtype, device=x.device).expand(*x.shape[:-1], n, n)


def _outer(a: Tensor, b: Tensor) -> Tensor:
    return a.unsqueeze(-1) * b.unsqueeze(-2)


def _sc(c: Tensor) -> Tensor:
    """Scalar batch ``...`` -> ``... x 1 x 1`` for scaling matrices."""
    return c[..., None, None]


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1)


_F = TypeVar("_F", bound=Callable)


def _lift_unbatched(*event_dims: int) -> Callable[[_F], _F]:
    r"""Evaluate unbatched arguments of a dtype other than float64 with a batch dimension of 1 (removed again).

    torch's forward-mode AD gives the tangent of a 0-dim tensor times a Python float in float64
    (pytorch/pytorch#90065); the scalars of an unbatched argument (``|theta|^2``, the quaternion's ``w``) are 0-dim,
    so under ``torch.func.jvp``/``jacfwd`` a float32 ``theta`` of shape ``3`` got float64 tangents (and the SE(3)
    maps failed in a matmul). ``event_dims``: the number of event dimensions of each leading tensor argument
    (``1`` for a vector, ``2`` for a matrix); the output loses the added dimension when every one was unbatched.
    float64 arguments are passed through unchanged."""

    def wrap(fn: _F) -> _F:
        @functools.wraps(fn)
        def lifted(*args, **kwargs):
            xs = args[: len(event_dims)]
            if not all(isinstance(x, Tensor) for x in xs) or all(x.dtype == torch.float64 for x in xs):
                return fn(*args, **kwargs)
            unbatched = [x.dim() == d for x, d in zip(xs, event_dims)]
            if not any(unbatched):
                return fn(*args, **kwargs)
            xs = [x.unsqueeze(0) if u else x for x, u in zip(xs, unbatched)]
            out = fn(*xs, *args[len(event_dims) :], **kwargs)
            if not all(unbatched):
                return out
            return {k: v[0] for k, v in out.items()} if isinstance(out, dict) else out[0]

        return lifted  # type: ignore[return-value]

    return wrap


# ---------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------


def _default_tol(dtype: torch.dtype) -> float:
    return {torch.float64: 1e-5, torch.float32: 1e-4}.get(dtype, 1e-2)


def _can_inspect(x: Tensor) -> bool:
    """False under ``torch.func`` transforms (``vmap``/``jacfwd``/``grad``), where values cannot be read."""
    return not torch._C._functorch.is_functorch_wrapped_tensor(x)


def _first_bad(bad: Tensor) -> str:
    if bad.dim() == 0:
        return ""
    idx = tuple(int(i) for i in bad.nonzero()[0])
    return f" (first at batch index {idx})"


def check_rotation(R: Tensor, tol: float | None = None, name: str = "R") -> Tensor:
    r"""Check that ``R`` (``... x 3 x 3``) holds rotation matrices and return it unchanged.

    Raises :class:`ValueError` when an entry is not finite, when :math:`\max|R^T R - I| >` ``tol``
    (not orthonormal) or when :math:`|\det R - 1| >` ``tol`` (a reflection has determinant -1).

    Args:
        R: Tensor of shape ``... x 3 x 3``.
        tol: Tolerance; default 1e-5 for float64, 1e-4 for float32, 1e-2 otherwise.
        name: Argument name used in the message.
    """
    check_tensor(name, R, shape=(3, 3), floating=True)
    tol = _default_tol(R.dtype) if tol is None else float(tol)
    Rd = R.detach()
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    err = (Rd.transpose(-1, -2) @ Rd - eye).abs().amax(dim=(-1, -2))
    if bool((err > tol).any()):
        worst = float(err.max())
        raise ValueError(
            f"`{name}` is not a rotation matrix: max |R^T R - I| = {worst:.3g} exceeds tol={tol:g}"
            f"{_first_bad(err > tol)}. Re-orthonormalize it (e.g. quat_to_rotmat(rotmat_to_quat(R, "
            f"validate=False)) or an SVD projection) or pass a larger tol."
        )
    det = torch.linalg.det(Rd)
    if bool(((det - 1.0).abs() > tol).any()):
        bad = (det - 1.0).abs() > tol
        raise ValueError(
            f"`{name}` is not a rotation matrix: det(R) = {float(det[bad].reshape(-1)[0]):.6g} != 1"
            f"{_first_bad(bad)}; a determinant of -1 is a reflection (flip the sign of one column)."
        )
    return R


def check_se3(T: Tensor, tol: float | None = None, name: str = "T") -> Tensor:
    r"""Check that ``T`` (``... x 4 x 4``) holds rigid transforms ``[[R, p], [0, 1]]`` and return it.

    Raises :class:`ValueError` when the rotation block fails :func:`check_rotation` or the bottom row differs
    from ``(0, 0, 0, 1)`` by more than ``tol``.
    """
    check_tensor(name, T, shape=(4, 4), floating=True)
    tol = _default_tol(T.dtype) if tol is None else float(tol)
    check_rotation(T[..., :3, :3], tol, name=f"{name}[..., :3, :3]")
    row = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=T.dtype, device=T.device)
    err = (T.detach()[..., 3, :] - row).abs().amax(-1)
    if bool((err > tol).any()):
        raise ValueError(
            f"`{name}` is not a rigid transform: its bottom row must be (0, 0, 0, 1), max deviation "
            f"{float(err.max()):.3g} exceeds tol={tol:g}{_first_bad(err > tol)}."
        )
    return T


def check_unit_quaternion(q: Tensor, tol: float | None = None, name: str = "q") -> Tensor:
    r"""Check that ``q`` (``... x 4``, scalar-last) holds finite unit quaternions and return it.

    Raises :class:`ValueError` when :math:`||q| - 1| >` ``tol`` (default as in :func:`check_rotation`).
    """
    check_tensor(name, q, shape=(4,), floating=True)
    tol = _default_tol(q.dtype) if tol is None else float(tol)
    err = (torch.linalg.vector_norm(q.detach(), dim=-1) - 1.0).abs()
    if bool((err > tol).any()):
        bad = err > tol
        n = float(torch.linalg.vector_norm(q.detach(), dim=-1)[bad].reshape(-1)[0])
        raise ValueError(
            f"`{name}` must hold unit quaternions (x, y, z, w): norm {n:.6g} differs from 1 by more than "
            f"tol={tol:g}{_first_bad(bad)}. Normalize it first (q / q.norm(dim=-1, keepdim=True))."
        )
    return q


def _validate(kind: str, x: Tensor, validate: bool, tol: float | None, name: str) -> None:
    if validate and _can_inspect(x):
        {"R": check_rotation, "T": check_se3, "q": check_unit_quaternion}[kind](x, tol, name)


# ---------------------------------------------------------------------------------------------------------------
# SO(3)
# ---------------------------------------------------------------------------------------------------------------


def so3_hat(v: Tensor) -> Tensor:
    r"""Skew matrix :math:`v^\wedge` (``... x 3 -> ... x 3 x 3``) with :math:`v^\wedge u = v \times u`."""
    check_tensor("v", v, shape=(3,), finite=False)
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).reshape(*v.shape[:-1], 3, 3)


def so3_vee(M: Tensor) -> Tensor:
    r"""Inverse of :func:`so3_hat` (``... x 3 x 3 -> ... x 3``): ``(M[2,1], M[0,2], M[1,0])``.

    ``M`` is assumed skew; only those three entries are read.
    """
    check_tensor("M", M, shape=(3, 3), finite=False)
    return torch.stack([M[..., 2, 1], M[..., 0, 2], M[..., 1, 0]], dim=-1)


@_lift_unbatched(1)
def so3_exp(theta: Tensor) -> Tensor:
    r"""Exponential map :math:`\mathrm{Exp}(\theta) = I + A\Phi + B\Phi^2` (``... x 3 -> ... x 3 x 3``).

    :math:`A = \sin t/t`, :math:`B = (1-\cos t)/t^2` (Barfoot eq. 7.20; Sola eq. 77), series below the switch.
    """
    check_tensor("theta", theta, shape=(3,), finite=False, floating=True)
    s = _sq(theta)
    P = so3_hat(theta)
    a, b = _coefs(s, ("A", 0), ("B", 0))
    return _eye(theta) + _sc(a) * P + _sc(b) * (P @ P)


def quat_to_rotmat(q: Tensor, *, validate: bool = True, tol: float | None = None) -> Tensor:
    r"""Rotation matrix of a unit quaternion ``q = (x, y, z, w)`` (scalar-last; ``... x 4 -> ... x 3 x 3``).

    :math:`R = (w^2 - |q_v|^2) I + 2 q_v q_v^T + 2 w\, q_v^\wedge` (Sola eq. 115). With ``validate`` (default),
    non-unit quaternions raise :class:`ValueError` (see :func:`check_unit_quaternion`); the check is skipped
    inside ``torch.func`` transforms, where values cannot be inspected.
    """
    check_tensor("q", q, shape=(4,), finite=False, floating=True)
    _validate("q", q, validate, tol, "q")
    qv, w = q[..., :3], q[..., 3]
    return _sc(w * w - _sq(qv)) * _eye(qv) + 2.0 * _outer(qv, qv) + 2.0 * _sc(w) * so3_hat(qv)


@_lift_unbatched(2)
def rotmat_to_quat(R: Tensor, *, validate: bool = True, tol: float | None = None) -> Tensor:
    r"""Unit quaternion ``(x, y, z, w)`` with ``w >= 0`` of a rotation matrix (``... x 3 x 3 -> ... x 4``).

    Shepperd's method: :math:`K = 4 q q^T` (order ``w, x, y, z``) has diagonal
    :math:`(1 + \mathrm{tr}R,\ 1 + 2R_{00} - \mathrm{tr}R,\ \dots)` and off-diagonals from the symmetric and
    antisymmetric parts of ``R``; the row of the largest diagonal entry (always >= 1) divided by
    :math:`2\sqrt{K_{kk}}` is :math:`\pm q`, accurate at every angle. With ``validate`` (default), non-rotations
    raise :class:`ValueError` (:func:`check_rotation`); skipped inside ``torch.func`` transforms.
    """
    check_tensor("R", R, shape=(3, 3), finite=False, floating=True)
    _validate("R", R, validate, tol, "R")
    r00, r01, r02 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    r10, r11, r12 = R[..., 1, 0], R[..., 1, 1], R[..., 1, 2]
    r20, r21, r22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    tr = r00 + r11 + r22
    ax, ay, az = r21 - r12, r02 - r20, r10 - r01  # 4 w q_v
    sxy, sxz, syz = r01 + r10, r02 + r20, r12 + r21  # 4 q_i q_j
    rows = torch.stack(
        [
            torch.stack([1.0 + tr, ax, ay, az], -1),
            torch.stack([ax, 1.0 + 2.0 * r00 - tr, sxy, sxz], -1),
            torch.stack([ay, sxy, 1.0 + 2.0 * r11 - tr, syz], -1),
            torch.stack([az, sxz, syz, 1.0 + 2.0 * r22 - tr], -1),
        ],
        dim=-2,
    )  # ... x 4 x 4, symmetric, = 4 q q^T for (w, x, y, z)
    diag = torch.diagonal(rows, dim1=-2, dim2=-1)
    k = diag.detach().argmax(-1, keepdim=True)  # ... x 1
    row = torch.gather(rows, -2, k.unsqueeze(-1).expand(*k.shape[:-1], 1, 4)).squeeze(-2)
    kk = torch.gather(diag, -1, k)  # >= 1 for any rotation
    q_wxyz = row / (2.0 * torch.sqrt(kk))
    q_wxyz = torch.where(q_wxyz[..., :1] < 0, -q_wxyz, q_wxyz)
    return torch.cat([q_wxyz[..., 1:], q_wxyz[..., :1]], dim=-1)


def _quat_log(q: Tensor) -> Tensor:
    """Rotation vector of a unit quaternion (x, y, z, w) with w >= 0: 2 atan2(|q_v|, w) q_v / |q_v|."""
    qv, w = q[..., :3], q[..., 3]
    n2 = _sq(qv)
    small = n2 < (_LOG_SWITCH * w) ** 2  # r = |q_v| / w < _LOG_SWITCH, so w > 0 here
    w_ser = torch.where(small, w, torch.ones_like(w))
    r2 = torch.where(small, n2 / (w_ser * w_ser), torch.zeros_like(n2))
    series = 2.0 / w_ser * _horner(r2, _LOG_SERIES)  # 2 atan(r) / (r w)
    n2_cf = torch.where(small, torch.ones_like(n2), n2)
    n_cf = torch.sqrt(n2_cf)
    closed = 2.0 * torch.atan2(n_cf, torch.where(small, torch.zeros_like(w), w)) / n_cf
    return torch.where(small, series, closed).unsqueeze(-1) * qv


@_lift_unbatched(2)
def so3_log(R: Tensor, *, validate: bool = True, tol: float | None = None) -> Tensor:
    r"""Logarithm map :math:`\mathrm{Log}(R)` (``... x 3 x 3 -> ... x 3``), rotation vector with angle in
    :math:`[0, \pi]`.

    Via the quaternion (:func:`rotmat_to_quat`, ``w >= 0``): :math:`\theta = 2\,\mathrm{atan2}(|q_v|, w)\,
    q_v/|q_v|` (Sola eq. 106), with the series :math:`2/w \sum_k (-1)^k r^{2k}/(2k+1)`, :math:`r = |q_v|/w`,
    for :math:`r < 0.1`. No arccos of the trace, so it is accurate up to and at :math:`\pi` (where the sign of
    the axis is arbitrary). With ``validate`` (default), non-rotations raise :class:`ValueError`.
    """
    return _quat_log(rotmat_to_quat(R, validate=validate, tol=tol))


@_lift_unbatched(1)
def so3_jr(theta: Tensor) -> Tensor:
    r"""Right Jacobian :math:`J_r(\theta) = I - B\Phi + C\Phi^2` (``... x 3 -> ... x 3 x 3``).

    :math:`B = (1-\cos t)/t^2`, :math:`C = (t - \sin t)/t^3` (Barfoot eq. 7.77 with :math:`\theta \to -\theta`;
    Sola eq. 143). :math:`\mathrm{Exp}(\theta+\delta) \approx \mathrm{Exp}(\theta)\mathrm{Exp}(J_r\delta)`.
    """
    check_tensor("theta", theta, shape=(3,), finite=False, floating=True)
    s = _sq(theta)
    P = so3_hat(theta)
    b, c = _coefs(s, ("B", 0), ("C", 0))
    return _eye(theta) - _sc(b) * P + _sc(c) * (P @ P)


@_lift_unbatched(1)
def so3_jl(theta: Tensor) -> Tensor:
    r"""Left Jacobian :math:`J_l(\theta) = J_r(-\theta) = I + B\Phi + C\Phi^2` (``... x 3 -> ... x 3 x 3``)."""
    return so3_jr(-theta)


@_lift_unbatched(1)
def so3_jr_inv(theta: Tensor) -> Tensor:
    r"""Inverse right Jacobian :math:`J_r^{-1}(\theta) = I + \tfrac12\Phi + D\Phi^2` (``... x 3 -> ... x 3 x 3``).

    :math:`D = 1/t^2 - \cot(t/2)/(2t) = 1/t^2 - (1+\cos t)/(2t\sin t)` (Barfoot eq. 7.78; Sola eq. 144);
    finite up to :math:`t < 2\pi`, with :math:`D(\pi) = 1/\pi^2`.
    """
    check_tensor("theta", theta, shape=(3,), finite=False, floating=True)
    s = _sq(theta)
    P = so3_hat(theta)
    return _eye(theta) + 0.5 * P + _sc(_coef("D", s)) * (P @ P)


@_lift_unbatched(1)
def so3_jl_inv(theta: Tensor) -> Tensor:
    r"""Inverse left Jacobian :math:`J_l^{-1}(\theta) = J_r^{-1}(-\theta) = I - \tfrac12\Phi + D\Phi^2`."""
    return so3_jr_inv(-theta)


def _broadcast(*xs: Tensor) -> list[Tensor]:
    shape = torch.broadcast_shapes(*(x.shape[:-1] for x in xs))
    return [x.expand(*shape, x.shape[-1]) for x in xs]


def _check_vecs(**kw: Tensor) -> list[Tensor]:
    for k, x in kw.items():
        check_tensor(k, x, shape=(3,), finite=False, floating=True)
    return _broadcast(*kw.values())


def _fu(u: Tensor, v: Tensor) -> Tensor:
    r""":math:`\partial (u \times (u \times v)) / \partial u = (u\cdot v) I + u v^T - 2 v u^T`."""
    return _sc(_dot(u, v)) * _eye(u) + _outer(u, v) - 2.0 * _outer(v, u)


_Coefs = dict  # (name, level) -> ``...`` tensor, from so3_jr_coefficients
_JR_KEYS = tuple((name, level) for name in "BC" for level in range(4))


@_lift_unbatched(1)
def so3_jr_coefficients(theta: Tensor) -> dict[tuple[str, int], Tensor]:
    r"""The coefficients :math:`B, B_1, B_2, B_3, C, C_1, C_2, C_3` of :math:`|\theta|` (``...`` each, keyed
    ``("B", level)``, ``("C", level)``) that :func:`so3_jr_dtheta`, :func:`so3_jr_dtheta2`,
    :func:`so3_jr_dtheta_dv`, :func:`so3_jr_dtheta3` and :func:`so3_jr_dtheta2_dv` use, in one evaluation: pass
    them as ``coefs=`` to evaluate several derivative terms at the same ``theta`` (``... x 3``) without recomputing
    them (the results are the same numbers)."""
    check_tensor("theta", theta, shape=(3,), finite=False, floating=True)
    return dict(zip(_JR_KEYS, _coefs(_sq(theta), *_JR_KEYS)))


def _jr_coefs(u: Tensor, coefs: _Coefs | None, *keys: tuple[str, int]) -> list[Tensor]:
    if coefs is None:
        return _coefs(_sq(u), *keys)
    return [coefs[k].expand(u.shape[:-1]) for k in keys]


@_lift_unbatched(1, 1)
def so3_jr_dtheta(theta: Tensor, v: Tensor, *, coefs: _Coefs | None = None) -> Tensor:
    r""":math:`H(\theta, v) = \partial (J_r(\theta) v) / \partial\theta` (GPTR ``DJrUV_DU``), ``... x 3 x 3``.

    With :math:`u = \theta`, :math:`J_r v = v - B\, u\times v + C\, m`, :math:`m = u \times (u \times v)`:

    .. math:: H = B\, v^\wedge - B_1 (u\times v) u^T + C\,F_u + C_1\, m\, u^T,\qquad
              F_u = (u\cdot v) I + u v^T - 2 v u^T,

    with :math:`B_1 = B'(t)/t = (t\sin t - 2(1-\cos t))/t^4` and
    :math:`C_1 = C'(t)/t = (3\sin t - 2t - t\cos t)/t^5`. At :math:`\theta = 0`, :math:`H = \tfrac12 v^\wedge`.
    Gives :math:`\dot\omega`-terms such as :math:`\alpha = J_r\ddot\theta + H(\theta, \dot\theta)\dot\theta`.

    Args:
        theta: ``... x 3``. v: ``... x 3`` (broadcast against ``theta``).
    """
    u, v = _check_vecs(theta=theta, v=v)
    uxv = torch.linalg.cross(u, v, dim=-1)
    m = torch.linalg.cross(u, uxv, dim=-1)
    b0, b1, c0, c1 = _jr_coefs(u, coefs, ("B", 0), ("B", 1), ("C", 0), ("C", 1))
    return _sc(b0) * so3_hat(v) - _sc(b1) * _outer(uxv, u) + _sc(c0) * _fu(u, v) + _sc(c1) * _outer(m, u)


@_lift_unbatched(1, 1)
def so3_jr_inv_dtheta(theta: Tensor, v: Tensor) -> Tensor:
    r""":math:`H'(\theta, v) = \partial (J_r^{-1}(\theta) v) / \partial\theta` (GPTR ``DJrInvUV_DU``).

    .. math:: H' = -\tfrac12 v^\wedge + D\,F_u + D_1\, m\, u^T,

    with :math:`D_1 = D'(t)/t = -2/t^4 + 1/(4t^2\sin^2(t/2)) + \cot(t/2)/(2t^3)` and :math:`F_u, m` as in
    :func:`so3_jr_dtheta`. Gives :math:`\ddot\theta = J_r^{-1}\alpha + H'(\theta, \omega)\dot\theta`.
    Shapes: ``theta, v: ... x 3 -> ... x 3 x 3``.
    """
    u, v = _check_vecs(theta=theta, v=v)
    s = _sq(u)
    m = torch.linalg.cross(u, torch.linalg.cross(u, v, dim=-1), dim=-1)
    d0, d1 = _coefs(s, ("D", 0), ("D", 1))
    return -0.5 * so3_hat(v) + _sc(d0) * _fu(u, v) + _sc(d1) * _outer(m, u)


def _g(u: Tensor, v: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """F_u(u, v) w, d(F_u(u, v) w)/du and the scalar u.w."""
    uv, uw, vw = _dot(u, v), _dot(u, w), _dot(v, w)
    g = uv.unsqueeze(-1) * w + vw.unsqueeze(-1) * u - 2.0 * uw.unsqueeze(-1) * v
    dg = _outer(w, v) + _sc(vw) * _eye(u) - 2.0 * _outer(v, w)
    return g, dg, uw


@_lift_unbatched(1, 1, 1)
def so3_jr_dtheta2(theta: Tensor, v: Tensor, w: Tensor, *, coefs: _Coefs | None = None) -> Tensor:
    r""":math:`L_{11} = \partial [H(\theta, v)\, w] / \partial\theta` (GPTR ``DDJrUVW_DUDU``), ``... x 3 x 3``.

    With :math:`g = F_u w = (u\cdot v) w + (v\cdot w) u - 2 (u\cdot w) v` and :math:`B_2 = B_1'(t)/t =
    (t^2\cos t - 5t\sin t + 8(1-\cos t))/t^6`, :math:`C_2 = C_1'(t)/t = (8t + t^2\sin t + 7t\cos t -
    15\sin t)/t^7`:

    .. math::
        L_{11} = B_1 (v\times w) u^T + B_1 (u\cdot w) v^\wedge - B_2 (u\cdot w)(u\times v) u^T
        - B_1 (u\times v) w^T + C_1 g u^T + C\,(w v^T + (v\cdot w) I - 2 v w^T)
        + C_2 (u\cdot w)\, m u^T + C_1\, m w^T + C_1 (u\cdot w) F_u.

    Enters :math:`\partial\alpha/\partial\theta = H(\theta, \ddot\theta) + L_{11}(\theta, \dot\theta,
    \dot\theta)`. Shapes: ``theta, v, w: ... x 3 -> ... x 3 x 3``.
    """
    u, v, w = _check_vecs(theta=theta, v=v, w=w)
    b1, b2, c0, c1, c2 = _jr_coefs(u, coefs, ("B", 1), ("B", 2), ("C", 0), ("C", 1), ("C", 2))
    uxv = torch.linalg.cross(u, v, dim=-1)
    m = torch.linalg.cross(u, uxv, dim=-1)
    g, dg, uw = _g(u, v, w)
    return (
        _sc(b1) * _outer(torch.linalg.cross(v, w, dim=-1), u)
        + _sc(b1 * uw) * so3_hat(v)
        - _sc(b2 * uw) * _outer(uxv, u)
        - _sc(b1) * _outer(uxv, w)
        + _sc(c1) * _outer(g, u)
        + _sc(c0) * dg
        + _sc(c2 * uw) * _outer(m, u)
        + _sc(c1) * _outer(m, w)
        + _sc(c1 * uw) * _fu(u, v)
    )


@_lift_unbatched(1, 1, 1)
def so3_jr_dtheta_dv(theta: Tensor, v: Tensor, w: Tensor, *, coefs: _Coefs | None = None) -> Tensor:
    r""":math:`L_{12} = \partial [H(\theta, v)\, w] / \partial v` (GPTR ``DDJrUVW_DUDV``), ``... x 3 x 3``.

    .. math:: L_{12} = -B\, w^\wedge - B_1 (u\cdot w)\, u^\wedge + C\,(w u^T + u w^T - 2(u\cdot w) I)
              + C_1 (u\cdot w)\, \Phi^2,

    i.e. the directional derivative of the matrix :math:`J_r` along ``w`` (at 0: :math:`-\tfrac12 w^\wedge`).
    Enters :math:`\partial\alpha/\partial\dot\theta = H(\theta,\dot\theta) + L_{12}(\theta, \dot\theta,
    \dot\theta)`. Shapes: ``theta, v, w: ... x 3 -> ... x 3 x 3`` (the result does not depend on ``v``).
    """
    u, v, w = _check_vecs(theta=theta, v=v, w=w)
    uw = _dot(u, w)
    P = so3_hat(u)
    b0, b1, c0, c1 = _jr_coefs(u, coefs, ("B", 0), ("B", 1), ("C", 0), ("C", 1))
    return (
        -_sc(b0) * so3_hat(w)
        - _sc(b1 * uw) * P
        + _sc(c0) * (_outer(w, u) + _outer(u, w) - 2.0 * _sc(uw) * _eye(u))
        + _sc(c1 * uw) * (P @ P)
    )


@_lift_unbatched(1, 1, 1)
def so3_jr_inv_dtheta2(theta: Tensor, v: Tensor, w: Tensor) -> Tensor:
    r""":math:`L'_{11} = \partial [H'(\theta, v)\, w] / \partial\theta` (GPTR ``DDJrInvUVW_DUDU``), ``... x 3 x 3``.

    .. math:: L'_{11} = D_1 g u^T + D\,(w v^T + (v\cdot w) I - 2 v w^T) + D_2 (u\cdot w)\, m u^T
              + D_1\, m w^T + D_1 (u\cdot w) F_u,

    with :math:`D_2 = D_1'(t)/t = 8/t^6 - 3/(4t^4\sin^2 h) - \cos h/(4t^3\sin^3 h) - 3\cot h/(2t^5)`,
    :math:`h = t/2`. Enters :math:`\partial\ddot\theta/\partial\theta = H'(\theta,\alpha) + L'_{11}(\theta,
    \omega, \dot\theta) + H'(\theta,\omega) H'(\theta,\omega)` (with :math:`\dot\theta = J_r^{-1}\omega`).
    """
    u, v, w = _check_vecs(theta=theta, v=v, w=w)
    s = _sq(u)
    d0, d1, d2 = _coefs(s, ("D", 0), ("D", 1), ("D", 2))
    m = torch.linalg.cross(u, torch.linalg.cross(u, v, dim=-1), dim=-1)
    g, dg, uw = _g(u, v, w)
    return (
        _sc(d1) * _outer(g, u)
        + _sc(d0) * dg
        + _sc(d2 * uw) * _outer(m, u)
        + _sc(d1) * _outer(m, w)
        + _sc(d1 * uw) * _fu(u, v)
    )


@_lift_unbatched(1, 1, 1)
def so3_jr_inv_dtheta_dv(theta: Tensor, v: Tensor, w: Tensor) -> Tensor:
    r""":math:`L'_{12} = \partial [H'(\theta, v)\, w] / \partial v` (GPTR ``DDJrInvUVW_DUDV``), ``... x 3 x 3``.

    .. math:: L'_{12} = \tfrac12 w^\wedge + D\,(w u^T + u w^T - 2(u\cdot w) I) + D_1 (u\cdot w)\,\Phi^2.

    Enters :math:`\partial\ddot\theta/\partial\omega = L'_{12}(\theta, \omega, \dot\theta) +
    H'(\theta,\omega) J_r^{-1}(\theta)`. The result does not depend on ``v``.
    """
    u, v, w = _check_vecs(theta=theta, v=v, w=w)
    s = _sq(u)
    uw = _dot(u, w)
    P = so3_hat(u)
    d0, d1 = _coefs(s, ("D", 0), ("D", 1))
    return 0.5 * so3_hat(w) + _sc(d0) * (_outer(w, u) + _outer(u, w) - 2.0 * _sc(uw) * _eye(u)) + _sc(d1 * uw) * (P @ P)


def _d3_term(b: list[Tensor], u: Tensor, w: Tensor, z: Tensor, g, Dg, Dgw, Dgz, D2wz, D2w, D2z) -> Tensor:
    r"""Matrix of :math:`h \mapsto D^3(\beta(s) g(u))[w, z, h]` for a coefficient :math:`\beta` (levels ``b``) and a
    polynomial map :math:`g` of degree <= 2 (value, Jacobian, :math:`Dg[w], Dg[z]`, :math:`D^2g[w,z]` and the
    matrices :math:`D^2g[w,\cdot], D^2g[z,\cdot]`), by the product rule with :math:`D\beta_k[h] = \beta_{k+1}
    (u\cdot h)`."""
    uw, uz, wz = _dot(u, w), _dot(u, z), _dot(w, z)
    vec_u = (b[3] * uw * uz + b[2] * wz).unsqueeze(-1) * g + (b[2] * uw).unsqueeze(-1) * Dgz
    vec_u = vec_u + (b[2] * uz).unsqueeze(-1) * Dgw + b[1].unsqueeze(-1) * D2wz
    out = _outer(vec_u, u) + _outer((b[2] * uw).unsqueeze(-1) * g + b[1].unsqueeze(-1) * Dgw, z)
    out = out + _outer((b[2] * uz).unsqueeze(-1) * g + b[1].unsqueeze(-1) * Dgz, w)
    return out + _sc(b[2] * uw * uz + b[1] * wz) * Dg + _sc(b[1] * uw) * D2z + _sc(b[1] * uz) * D2w


@_lift_unbatched(1, 1, 1, 1)
def so3_jr_dtheta3(theta: Tensor, v: Tensor, w: Tensor, z: Tensor, *, coefs: _Coefs | None = None) -> Tensor:
    r""":math:`L_3 = \partial [L_{11}(\theta, v, w)\, z] / \partial\theta`, the matrix of :math:`h \mapsto
    D^3_\theta(J_r(\theta) v)[w, z, h]` (``... x 3 x 3``; symmetric in ``w, z``).

    With :math:`J_r v = v - B\,c + C\,m`, :math:`c = u\times v`, :math:`m = u\times(u\times v)`, each term
    :math:`\beta g` differentiates three times by the product rule (:func:`_d3_term`; :math:`Dc = -v^\wedge`,
    :math:`D^2c = 0`, :math:`Dm = F_u`, :math:`D^2m[a, h] = a (v\cdot h) + h (a\cdot v) - 2 (a\cdot h) v`), with the
    level-3 coefficients :math:`B_3, C_3`. Enters :math:`\partial a/\partial\phi` of the SE(3) trajectory.
    """
    u, v, w, z = _check_vecs(theta=theta, v=v, w=w, z=z)
    coefs = _jr_coefs(u, coefs, *[("B", k) for k in range(4)], *[("C", k) for k in range(4)])
    bB, bC = coefs[:4], coefs[4:]
    cross = torch.linalg.cross
    zero = torch.zeros_like(u)
    zero_m = torch.zeros_like(_eye(u))
    tc = _d3_term(bB, u, w, z, cross(u, v, dim=-1), -so3_hat(v), cross(w, v, dim=-1), cross(z, v, dim=-1), zero,
                  zero_m, zero_m)  # fmt: skip
    uv = _dot(u, v)

    def dm(a: Tensor) -> Tensor:
        return uv.unsqueeze(-1) * a + _dot(v, a).unsqueeze(-1) * u - 2.0 * _dot(u, a).unsqueeze(-1) * v

    def d2m(a: Tensor) -> Tensor:
        return _outer(a, v) + _sc(_dot(a, v)) * _eye(u) - 2.0 * _outer(v, a)

    d2wz = _dot(v, z).unsqueeze(-1) * w + _dot(w, v).unsqueeze(-1) * z - 2.0 * _dot(w, z).unsqueeze(-1) * v
    m = cross(u, cross(u, v, dim=-1), dim=-1)
    tm = _d3_term(bC, u, w, z, m, _fu(u, v), dm(w), dm(z), d2wz, d2m(w), d2m(z))
    return tm - tc


@_lift_unbatched(1, 1, 1, 1)
def so3_jr_dtheta2_dv(theta: Tensor, v: Tensor, w: Tensor, z: Tensor, *, coefs: _Coefs | None = None) -> Tensor:
    r""":math:`\partial [L_{11}(\theta, v, w)\, z] / \partial v = D^2_\theta J_r(\theta)[w, z]`, the second
    directional derivative of the matrix :math:`J_r` (``... x 3 x 3``; does not depend on ``v``):

    .. math:: -\big(B_2 (u\cdot w)(u\cdot z) + B_1 (w\cdot z)\big)\Phi - B_1 \big((u\cdot z) w^\wedge + (u\cdot w)
              z^\wedge\big) + \big(C_2 (u\cdot w)(u\cdot z) + C_1 (w\cdot z)\big)\Phi^2 + C_1 (u\cdot z) S_{wu}
              + C_1 (u\cdot w) S_{zu} + C\, S_{wz},

    :math:`S_{ab} = a b^\top + b a^\top - 2 (a\cdot b) I`.
    """
    u, v, w, z = _check_vecs(theta=theta, v=v, w=w, z=z)
    uw, uz, wz = _dot(u, w), _dot(u, z), _dot(w, z)
    P = so3_hat(u)

    def sym(a: Tensor, b: Tensor) -> Tensor:
        return _outer(a, b) + _outer(b, a) - 2.0 * _sc(_dot(a, b)) * _eye(u)

    b1, b2, c0, c1, c2 = _jr_coefs(u, coefs, ("B", 1), ("B", 2), ("C", 0), ("C", 1), ("C", 2))
    return (
        -_sc(b2 * uw * uz + b1 * wz) * P
        - _sc(b1 * uz) * so3_hat(w)
        - _sc(b1 * uw) * so3_hat(z)
        + _sc(c2 * uw * uz + c1 * wz) * (P @ P)
        + _sc(c1 * uz) * sym(w, u)
        + _sc(c1 * uw) * sym(z, u)
        + _sc(c0) * sym(w, z)
    )


# ---------------------------------------------------------------------------------------------------------------
# SE(3), tangent order (phi, rho): rotation first
# ---------------------------------------------------------------------------------------------------------------


def se3_hat(xi: Tensor) -> Tensor:
    r""":math:`\xi^\wedge = [[\phi^\wedge, \rho], [0, 0]]` for :math:`\xi = (\phi, \rho)`.

    Shapes: ``... x 6 -> ... x 4 x 4``.
    """
    check_tensor("xi", xi, shape=(6,), finite=False)
    top = torch.cat([so3_hat(xi[..., :3]), xi[..., 3:].unsqueeze(-1)], dim=-1)
    return torch.cat([top, torch.zeros_like(top[..., :1, :])], dim=-2)


def se3_vee(M: Tensor) -> Tensor:
    r"""Inverse of :func:`se3_hat` (``... x 4 x 4 -> ... x 6``, order :math:`(\phi, \rho)`)."""
    check_tensor("M", M, shape=(4, 4), finite=False)
    return torch.cat([so3_vee(M[..., :3, :3]), M[..., :3, 3]], dim=-1)


def se3_from_rt(R: Tensor, p: Tensor) -> Tensor:
    r"""Rigid transform ``[[R, p], [0, 1]]`` (``R: ... x 3 x 3``, ``p: ... x 3`` -> ``... x 4 x 4``)."""
    check_tensor("R", R, shape=(3, 3), finite=False)
    check_tensor("p", p, shape=(3,), finite=False)
    shape = torch.broadcast_shapes(R.shape[:-2], p.shape[:-1])
    top = torch.cat([R.expand(*shape, 3, 3), p.expand(*shape, 3).unsqueeze(-1)], dim=-1)
    zero = torch.zeros_like(top[..., :1, :3])
    return torch.cat([top, torch.cat([zero, torch.ones_like(zero[..., :1])], dim=-1)], dim=-2)


def se3_inverse(T: Tensor) -> Tensor:
    r""":math:`T^{-1} = [[R^T, -R^T p], [0, 1]]` (``... x 4 x 4``)."""
    check_tensor("T", T, shape=(4, 4), finite=False)
    Rt = T[..., :3, :3].transpose(-1, -2)
    return se3_from_rt(Rt, -(Rt @ T[..., :3, 3:]).squeeze(-1))


def se3_compose(T1: Tensor, T2: Tensor) -> Tensor:
    r""":math:`T_1 T_2` (``... x 4 x 4``, broadcast)."""
    check_tensor("T1", T1, shape=(4, 4), finite=False)
    check_tensor("T2", T2, shape=(4, 4), finite=False)
    return T1 @ T2


def se3_adjoint(T: Tensor) -> Tensor:
    r"""Adjoint :math:`\mathrm{Ad}_T = [[R, 0], [p^\wedge R, R]]` (``... x 4 x 4 -> ... x 6 x 6``).

    :math:`T\,\mathrm{Exp}(\xi)\,T^{-1} = \mathrm{Exp}(\mathrm{Ad}_T\xi)` (Barfoot eq. 7.41 re-ordered to
    :math:`(\phi, \rho)`; Sola eq. 174).
    """
    check_tensor("T", T, shape=(4, 4), finite=False)
    R, p = T[..., :3, :3], T[..., :3, 3]
    top = torch.cat([R, torch.zeros_like(R)], dim=-1)
    bottom = torch.cat([so3_hat(p) @ R, R], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def se3_ad(xi: Tensor) -> Tensor:
    r"""Small adjoint :math:`\xi^\curlywedge = [[\phi^\wedge, 0], [\rho^\wedge, \phi^\wedge]]`,
    ``... x 6 -> ... x 6 x 6``.

    :math:`\mathrm{ad}_\xi\,\eta = \mathrm{vee}([\xi^\wedge, \eta^\wedge])` (Barfoot eq. 7.42, re-ordered).
    """
    check_tensor("xi", xi, shape=(6,), finite=False)
    P, Rh = so3_hat(xi[..., :3]), so3_hat(xi[..., 3:])
    return torch.cat([torch.cat([P, torch.zeros_like(P)], dim=-1), torch.cat([Rh, P], dim=-1)], dim=-2)


@_lift_unbatched(1)
def se3_exp(xi: Tensor) -> Tensor:
    r""":math:`\mathrm{Exp}(\xi) = [[\mathrm{Exp}(\phi), J_l(\phi)\rho], [0, 1]]` (``... x 6 -> ... x 4 x 4``).

    Barfoot eq. 7.83 (with :math:`J = J_l`); Sola eq. 172.
    """
    check_tensor("xi", xi, shape=(6,), finite=False, floating=True)
    phi, rho = xi[..., :3], xi[..., 3:]
    return se3_from_rt(so3_exp(phi), (so3_jl(phi) @ rho.unsqueeze(-1)).squeeze(-1))


@_lift_unbatched(2)
def se3_log(T: Tensor, *, validate: bool = True, tol: float | None = None) -> Tensor:
    r""":math:`\mathrm{Log}(T) = (\phi, \rho)`, :math:`\phi = \mathrm{Log}(R)`, :math:`\rho = J_l^{-1}(\phi) p`
    (``... x 4 x 4 -> ... x 6``). With ``validate`` (default), non-rigid ``T`` raise :class:`ValueError`.
    """
    check_tensor("T", T, shape=(4, 4), finite=False, floating=True)
    _validate("T", T, validate, tol, "T")
    phi = so3_log(T[..., :3, :3], validate=False)
    rho = (so3_jl_inv(phi) @ T[..., :3, 3:]).squeeze(-1)
    return torch.cat([phi, rho], dim=-1)


def _q_left(phi: Tensor, rho: Tensor) -> Tensor:
    r"""Barfoot's :math:`Q_\ell(\rho, \phi)` (eq. 7.86b), ``... x 3 x 3``."""
    s = _sq(phi)
    P, Rh = so3_hat(phi), so3_hat(rho)
    PR, RP = P @ Rh, Rh @ P
    PRP = PR @ P
    PP = P @ P
    c, c3, c4 = _coefs(s, ("C", 0), ("c3", 0), ("c4", 0))
    return (
        0.5 * Rh + _sc(c) * (PR + RP + PRP) + _sc(c3) * (PP @ Rh + RP @ P - 3.0 * PRP) + _sc(c4) * (PRP @ P + PP @ RP)
    )


def _se3_block(J: Tensor, Q: Tensor) -> Tensor:
    return torch.cat([torch.cat([J, torch.zeros_like(J)], dim=-1), torch.cat([Q, J], dim=-1)], dim=-2)


@_lift_unbatched(1)
def se3_jl(xi: Tensor) -> Tensor:
    r"""Left Jacobian of SE(3), :math:`[[J_l(\phi), 0], [Q_\ell(\phi, \rho), J_l(\phi)]]` (``... x 6 -> ... x 6 x 6``).

    :math:`Q_\ell = \tfrac12\rho^\wedge + C(\Phi R + R\Phi + \Phi R\Phi) + c_3(\Phi^2 R + R\Phi^2 - 3\Phi R\Phi)
    + c_4(\Phi R\Phi^2 + \Phi^2 R\Phi)` with :math:`R = \rho^\wedge`, :math:`c_3 = (t^2 + 2\cos t - 2)/(2t^4)`,
    :math:`c_4 = (2t - 3\sin t + t\cos t)/(2t^5)` (Barfoot eq. 7.86).
    """
    check_tensor("xi", xi, shape=(6,), finite=False, floating=True)
    phi, rho = xi[..., :3], xi[..., 3:]
    return _se3_block(so3_jl(phi), _q_left(phi, rho))


@_lift_unbatched(1)
def se3_jr(xi: Tensor) -> Tensor:
    r"""Right Jacobian of SE(3), :math:`J_r(\xi) = J_l(-\xi) = [[J_r(\phi), 0], [Q_r, J_r(\phi)]]`,
    :math:`Q_r(\phi,\rho) = Q_\ell(-\phi, -\rho)` (``... x 6 -> ... x 6 x 6``).

    :math:`\mathrm{Exp}(\xi + \delta) \approx \mathrm{Exp}(\xi)\,\mathrm{Exp}(J_r(\xi)\delta)`.
    """
    return se3_jl(-xi)


@_lift_unbatched(1)
def se3_jl_inv(xi: Tensor) -> Tensor:
    r""":math:`J_l^{-1}(\xi) = [[J_l^{-1}, 0], [-J_l^{-1} Q_\ell J_l^{-1}, J_l^{-1}]]` (Barfoot eq. 7.95)."""
    check_tensor("xi", xi, shape=(6,), finite=False, floating=True)
    phi, rho = xi[..., :3], xi[..., 3:]
    Ji = so3_jl_inv(phi)
    return _se3_block(Ji, -Ji @ _q_left(phi, rho) @ Ji)


@_lift_unbatched(1)
def se3_jr_inv(xi: Tensor) -> Tensor:
    r""":math:`J_r^{-1}(\xi) = J_l^{-1}(-\xi) = [[J_r^{-1}, 0], [-J_r^{-1} Q_r J_r^{-1}, J_r^{-1}]]`
    (``... x 6 -> ... x 6 x 6``)."""
    return se3_jl_inv(-xi)


@_lift_unbatched(1, 1)
def se3_jr_dxi(xi: Tensor, y: Tensor) -> Tensor:
    r""":math:`S(\xi, y) = \partial (J_r(\xi)\, y) / \partial\xi` of the SE(3) right Jacobian (``xi, y: ... x 6``
    -> ``... x 6 x 6``, order :math:`(\phi, \rho)`).

    With :math:`J_r(\xi) = [[J_r(\phi), 0], [Q_r(\phi,\rho), J_r(\phi)]]` and the identity :math:`Q_r(\phi, \rho)
    = H(\phi, \rho) - (J_r(\phi)\rho)^\wedge J_r(\phi)` (from differentiating the translation :math:`J_l(\phi)\rho` of
    :math:`\mathrm{Exp}(\xi)`; checked against Barfoot eq. 7.86 in the tests), for :math:`y = (a, b)`:

    .. math:: S = \begin{bmatrix} H(\phi, a) & 0 \\ L_{11}(\phi, \rho, a) + (J_r a)^\wedge H(\phi, \rho)
              - (J_r\rho)^\wedge H(\phi, a) + H(\phi, b) & L_{12}(\phi, \cdot, a) + (J_r a)^\wedge J_r
              \end{bmatrix}.
    """
    check_tensor("xi", xi, shape=(6,), finite=False, floating=True)
    check_tensor("y", y, shape=(6,), finite=False, floating=True)
    phi, rho, a, b = xi[..., :3], xi[..., 3:], y[..., :3], y[..., 3:]
    Jr = so3_jr(phi)
    Ha = so3_jr_dtheta(phi, a)
    Ja, Jp = so3_hat((Jr @ a.unsqueeze(-1)).squeeze(-1)), so3_hat((Jr @ rho.unsqueeze(-1)).squeeze(-1))
    low = so3_jr_dtheta2(phi, rho, a) + Ja @ so3_jr_dtheta(phi, rho) - Jp @ Ha + so3_jr_dtheta(phi, b)
    right = so3_jr_dtheta_dv(phi, rho, a) + Ja @ Jr
    return torch.cat([torch.cat([Ha, torch.zeros_like(Ha)], -1), torch.cat([low, right], -1)], -2)

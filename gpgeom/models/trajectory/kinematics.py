r"""Kinematics of the SO(3) local variable of a GP trajectory: from body rates to the derivatives of
:math:`\theta = \mathrm{Log}(R_a^\top R)` and back.

Between two knots the rotation is written :math:`R(t) = R_a\,\mathrm{Exp}(\theta(t))`, and the GP prior acts on the
local variable :math:`\theta(t) \in \mathbb R^3` (Anderson & Barfoot, *Full STEAM ahead: exactly sparse Gaussian
process regression for batch continuous-time trajectory estimation on SE(3)*, IROS 2015; Barfoot, *State
Estimation for Robotics*, 2017, sec. 11.3). With :math:`\omega = J_r(\theta)\dot\theta` (the right Jacobian of
SO(3), Barfoot 2017, ch. 7) the exact ("closed-form") relations are

.. math::
    \dot\theta = J_r^{-1}(\theta)\,\omega, \qquad
    \ddot\theta = J_r^{-1}(\theta)\,\alpha + H'(\theta, \omega)\,\dot\theta, \qquad
    \alpha = J_r(\theta)\ddot\theta + H(\theta, \dot\theta)\,\dot\theta,

with :math:`H(\theta, v) = \partial (J_r(\theta) v)/\partial\theta` and :math:`H'(\theta, v) =
\partial (J_r^{-1}(\theta) v)/\partial\theta` (:func:`gpgeom.geometry.lie.so3_jr_dtheta`, ``so3_jr_inv_dtheta``;
T.-M. Nguyen et al., *GPTR: Gaussian Process Trajectory Representation for Continuous-Time Motion Estimation*,
arXiv:2410.22931, 2024). The third-order prior of Tang, Yoon & Barfoot (*A white-noise-on-jerk motion
prior for continuous-time trajectory estimation on SE(3)*, IEEE RA-L 4(2), 2019) uses the first-order
approximation :math:`H'(\theta, \omega) \approx -\tfrac12\omega^\wedge`, i.e. :math:`\ddot\theta \approx
J_r^{-1}\alpha - \tfrac12\omega^\wedge\dot\theta` (``kinematics="taylor"``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gpgeom._validation import check_option
from gpgeom.geometry.lie import (
    so3_exp,
    so3_hat,
    so3_jr,
    so3_jr_coefficients,
    so3_jr_dtheta,
    so3_jr_dtheta2,
    so3_jr_dtheta_dv,
    so3_jr_inv,
    so3_jr_inv_dtheta,
    so3_jr_inv_dtheta2,
    so3_jr_inv_dtheta_dv,
    so3_log,
)
from gpgeom.models.trajectory.algebra import mv

__all__ = ["KINEMATICS", "local_kinematics", "so3_gamma_b", "so3_local", "so3_outputs"]

KINEMATICS = ("closed_form", "taylor")


def so3_local(Ra: Tensor, R: Tensor, omega: Tensor, alpha: Tensor | None, closed_form: bool, need_hw: bool = False):
    r"""The local variable at ``R`` relative to ``Ra`` and its derivatives.

    Returns:
        ``(R_a^T R, theta, J_r^{-1}(theta), theta_dot, H'(theta, omega) or None, theta_ddot or None)``;
        :math:`H'` is computed when needed for :math:`\ddot\theta` (closed form) or when ``need_hw``.
    """
    Rab = Ra.mT @ R
    th = so3_log(Rab, validate=False)
    Ji = so3_jr_inv(th)
    thd = mv(Ji, omega)
    Hw = so3_jr_inv_dtheta(th, omega) if need_hw or (alpha is not None and closed_form) else None
    thdd = None
    if alpha is not None:
        # -1/2 omega^ theta_dot = 1/2 theta_dot x omega
        thdd = mv(Ji, alpha) + (mv(Hw, thd) if closed_form else 0.5 * torch.linalg.cross(thd, omega, dim=-1))
    return Rab, th, Ji, thd, Hw, thdd


def local_kinematics(
    R_a: Tensor, R: Tensor, omega: Tensor, alpha: Tensor | None = None, *, kinematics: str = "closed_form"
) -> tuple[Tensor, Tensor, Tensor | None]:
    r"""The local variable :math:`\theta = \mathrm{Log}(R_a^\top R)` and its time derivatives from body rates.

    .. math:: \dot\theta = J_r^{-1}(\theta)\,\omega, \qquad \ddot\theta = J_r^{-1}(\theta)\,\alpha +
       H'(\theta, \omega)\,\dot\theta \quad (\text{closed form}),

    or :math:`\ddot\theta \approx J_r^{-1}\alpha - \tfrac12\omega^\wedge\dot\theta` (``"taylor"``). These are
    the values the trajectory uses at the right knot of every interval.

    Args:
        R_a: ``... x 3 x 3`` reference rotation. R: ``... x 3 x 3`` rotation. omega, alpha: ``... x 3`` body rates.
        kinematics: ``"closed_form"`` or ``"taylor"``.

    Returns:
        ``(theta, theta_dot, theta_ddot)``, each ``... x 3`` (``theta_ddot`` is ``None`` without ``alpha``).
    """
    check_option("kinematics", kinematics, KINEMATICS)
    _, th, _, thd, _, thdd = so3_local(R_a, R, omega, alpha, kinematics == "closed_form")
    return th, thd, thdd


def so3_gamma_b(Ra: Tensor, Rb: Tensor, wb: Tensor, ab: Tensor | None, order: int, closed_form: bool, jac: bool):
    r"""The rotational local state at the right knot, :math:`\gamma_b = (\theta_b, \dot\theta_b, \ddot\theta_b)`
    (``M x N x 3``), and its Jacobians ``M x N x 3 x N x 3`` with respect to the rotational tangent
    :math:`(\delta_R, \delta_\omega, \delta_\alpha)` of knot ``a`` and of knot ``b`` (``None`` without ``jac``).

    :math:`\partial\theta_b/\partial\delta_{R_a} = -J_r^{-1}(\theta_b) R_{ab}^\top`,
    :math:`\partial\theta_b/\partial\delta_{R_b} = J_r^{-1}(\theta_b)`,
    :math:`\partial\dot\theta_b/\partial\theta_b = H'(\theta_b,\omega_b)`,
    :math:`\partial\ddot\theta_b/\partial\theta_b = H'(\theta_b,\alpha_b) + L'_{11}(\theta_b,\omega_b,
    \dot\theta_b) + H'(\theta_b,\omega_b)^2`, :math:`\partial\ddot\theta_b/\partial\omega_b =
    L'_{12}(\theta_b,\omega_b,\dot\theta_b) + H'(\theta_b,\omega_b)J_r^{-1}(\theta_b)` (``"taylor"``:
    :math:`H'(\theta_b, \alpha_b) - \tfrac12\omega_b^\wedge H'(\theta_b, \omega_b)` and
    :math:`\tfrac12\dot\theta_b^\wedge - \tfrac12\omega_b^\wedge J_r^{-1}`). Knot ``a`` enters through
    :math:`R_a` only (column block 0).
    """
    N = order
    Rab, th, Ji, thd, Hw, thdd = so3_local(Ra, Rb, wb, ab if N == 3 else None, closed_form, need_hw=jac)
    g = torch.stack([th, thd] + ([thdd] if N == 3 else []), dim=1)
    if not jac:
        return g, None, None
    M = th.shape[0]
    Ja = th.new_zeros(M, N, 3, N, 3)
    Jb = th.new_zeros(M, N, 3, N, 3)
    A0 = -Ji @ Rab.mT
    Ja[:, 0, :, 0] = A0
    Jb[:, 0, :, 0] = Ji
    Ja[:, 1, :, 0] = Hw @ A0
    Jb[:, 1, :, 0] = Hw @ Ji
    Jb[:, 1, :, 1] = Ji
    if N == 3:
        if closed_form:
            T = so3_jr_inv_dtheta(th, ab) + so3_jr_inv_dtheta2(th, wb, thd) + Hw @ Hw
            Dw = so3_jr_inv_dtheta_dv(th, wb, thd) + Hw @ Ji
        else:
            hw = so3_hat(wb)
            T = so3_jr_inv_dtheta(th, ab) - 0.5 * hw @ Hw
            Dw = 0.5 * so3_hat(thd) - 0.5 * hw @ Ji
        Ja[:, 2, :, 0] = T @ A0
        Jb[:, 2, :, 0] = T @ Ji
        Jb[:, 2, :, 1] = Dw
        Jb[:, 2, :, 2] = Ji
    return g, Ja, Jb


def so3_outputs(
    gt: Tensor, level: int, closed_form: bool, jac: bool
) -> tuple[Tensor, dict[str, Tensor], Tensor | None]:
    r"""The rotation and body rates from the rotational local state :math:`\gamma(t) = (\theta, \dot\theta,
    \ddot\theta)` (``M x N x 3``): :math:`E = \mathrm{Exp}(\theta)` (so that :math:`R = R_a E`),
    :math:`\omega = J_r\dot\theta`, :math:`\alpha = J_r\ddot\theta + H(\theta, \dot\theta)\dot\theta` (``"taylor"``:
    :math:`J_r(\ddot\theta + \tfrac12\omega\times\dot\theta)`) up to derivative ``level``, and with ``jac`` the
    block lower-triangular :math:`G = \partial(\delta_R, \omega, \alpha)/\partial\gamma(t)` (``M x 3L x 3L``,
    ``L = level + 1``; :math:`\delta_R` is the right perturbation of :math:`R`).

    Returns:
        ``(E, rates, G)``: ``rates`` holds ``"omega"`` and ``"alpha"`` as far as ``level`` asks.
    """
    th = gt[:, 0]
    E = so3_exp(th)
    out: dict[str, Tensor] = {}
    Jr = so3_jr(th) if (level >= 1 or jac) else None
    if level >= 1:
        thd = gt[:, 1]
        out["omega"] = mv(Jr, thd)
        need = jac or (level >= 2 and closed_form)
        k = so3_jr_coefficients(th) if need else None  # shared by the derivative terms at theta
        Hd = so3_jr_dtheta(th, thd, coefs=k) if need else None
    if level >= 2:
        thdd = gt[:, 2]
        if closed_form:
            out["alpha"] = mv(Jr, thdd) + mv(Hd, thd)
        else:
            u = thdd + 0.5 * torch.linalg.cross(out["omega"], thd, dim=-1)
            out["alpha"] = mv(Jr, u)
    if not jac:
        return E, out, None
    M, L = th.shape[0], level + 1
    G = th.new_zeros(M, L, 3, L, 3)
    G[:, 0, :, 0] = Jr
    if level >= 1:
        G[:, 1, :, 0] = Hd
        G[:, 1, :, 1] = Jr
    if level >= 2:
        if closed_form:
            G[:, 2, :, 0] = so3_jr_dtheta(th, thdd, coefs=k) + so3_jr_dtheta2(th, thd, thd, coefs=k)
            G[:, 2, :, 1] = Hd + so3_jr_dtheta_dv(th, thd, thd, coefs=k)
        else:
            htd = so3_hat(thd)
            G[:, 2, :, 0] = so3_jr_dtheta(th, u, coefs=k) - 0.5 * Jr @ htd @ Hd
            G[:, 2, :, 1] = 0.5 * Jr @ (so3_hat(out["omega"]) - htd @ Jr)
        G[:, 2, :, 2] = Jr
    return E, out, G.reshape(M, 3 * L, 3 * L)

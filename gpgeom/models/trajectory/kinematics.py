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
from gpgeom.geometry.lie import so3_jr_inv, so3_jr_inv_dtheta, so3_log
from gpgeom.models.trajectory.algebra import mv

__all__ = ["KINEMATICS", "local_kinematics", "so3_local"]

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

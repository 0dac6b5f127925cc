r"""Pose and position measurements of a GP trajectory.

* :class:`PoseMeasurement` -- rotation and position, :math:`e = [\mathrm{Log}(R_m^\top R)/\sigma_R;
  (p - p_m)/\sigma_p]` (the pose factor of T.-M. Nguyen et al., *GPTR*, arXiv:2410.22931, 2024; the rotation
  error and its Jacobian :math:`J_r^{-1}` as in Barfoot, *State Estimation for Robotics*, 2017, ch. 7).
* :class:`PositionMeasurement` -- position only (e.g. GNSS or motion capture without orientation).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gpgeom.geometry.lie import check_rotation, check_unit_quaternion, quat_to_rotmat, so3_jr_inv, so3_log
from gpgeom.models.trajectory.factors.base import Measurement, inverse_sigma, measurement_tensor

__all__ = ["PoseMeasurement", "PositionMeasurement"]


class PoseMeasurement(Measurement):
    r"""Measured rotation and position at times ``t``.

    .. math:: e = \big[\mathrm{Log}(R_m^\top R(t)) / \sigma_R;\ (p(t) - p_m) / \sigma_p\big] \in \mathbb R^6,
       \qquad \partial e_R / \partial \delta_R = J_r^{-1}(\mathrm{Log}(R_m^\top R)) / \sigma_R.

    Args:
        t: ``M`` times; between two knots the residual is evaluated on the interpolated mean only (exact at knot
            times; :class:`~gpgeom.models.trajectory.factors.base.Measurement`).
        R: ``M x 3 x 3`` measured rotations (body to world); or give ``q``.
        q: ``M x 4`` unit quaternions ``(x, y, z, w)`` (scalar-last) instead of ``R``.
        p: ``M x 3`` measured positions.
        sigma_rot: Rotation noise std (rad): float, 3-vector, ``M`` or ``M x 3``.
        sigma_pos: Position noise std (m): same forms.
        robust, robust_threshold, name: See :class:`~gpgeom.models.trajectory.factors.base.Measurement`.
    """

    level = 0
    residual_dim = 6

    def __init__(
        self,
        t,
        *,
        R=None,
        q=None,
        p,
        sigma_rot: float | Tensor = 0.01,
        sigma_pos: float | Tensor = 0.01,
        robust=None,
        robust_threshold=1.0,
        name="",
    ):
        super().__init__(t, robust=robust, robust_threshold=robust_threshold, name=name)
        M = self.num_blocks
        if (R is None) == (q is None):
            raise ValueError("PoseMeasurement needs exactly one of `R` (M x 3 x 3) or `q` (M x 4, scalar-last).")
        if q is not None:
            q = measurement_tensor("q", q, shape=(4,), M=M)
            check_unit_quaternion(q, name="q")
            R = quat_to_rotmat(q, validate=False)
        else:
            R = measurement_tensor("R", R, shape=(3, 3), M=M)
            check_rotation(R, name="R")
        self.Rm = R
        self.pm = measurement_tensor("p", p, shape=(3,), M=M)
        self.w = torch.cat(
            [inverse_sigma("sigma_rot", sigma_rot, M, 3), inverse_sigma("sigma_pos", sigma_pos, M, 3)], dim=1
        )

    def residual(self, state, params):
        eR = so3_log(self.Rm.mT @ state["R"], validate=False)
        return torch.cat([eR, state["p"] - self.pm], dim=1) * self.w

    def linearize(self, state, params):
        eR = so3_log(self.Rm.mT @ state["R"], validate=False)
        e = torch.cat([eR, state["p"] - self.pm], dim=1) * self.w
        M = e.shape[0]
        J = e.new_zeros(M, 6, 6)
        J[:, :3, :3] = so3_jr_inv(eR)
        J[:, 3:, 3:] = torch.eye(3, dtype=e.dtype, device=e.device)
        return e, J * self.w[:, :, None], {}


class PositionMeasurement(Measurement):
    r"""Measured positions: :math:`e = (p(t) - p_m)/\sigma`.

    Args:
        t: ``M`` times; between two knots the residual is evaluated on the interpolated mean only (exact at knot
            times; :class:`~gpgeom.models.trajectory.factors.base.Measurement`).
        p: ``M x 3`` measured positions (world frame).
        sigma: Noise std: float, 3-vector, ``M`` or ``M x 3``.
        robust, robust_threshold, name: See :class:`~gpgeom.models.trajectory.factors.base.Measurement`.
    """

    level = 0
    residual_dim = 3

    def __init__(self, t, p, *, sigma: float | Tensor = 0.01, robust=None, robust_threshold=1.0, name=""):
        super().__init__(t, robust=robust, robust_threshold=robust_threshold, name=name)
        self.pm = measurement_tensor("p", p, shape=(3,), M=self.num_blocks)
        self.w = inverse_sigma("sigma", sigma, self.num_blocks, 3)

    def residual(self, state, params):
        return (state["p"] - self.pm) * self.w

    def linearize(self, state, params):
        e = self.residual(state, params)
        J = e.new_zeros(e.shape[0], 3, 6)
        J[:, :, 3:] = torch.diag_embed(self.w)
        return e, J, {}

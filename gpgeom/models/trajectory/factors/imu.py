r"""Inertial (IMU) measurements of a GP trajectory: gyroscope and accelerometer readings with constant biases.

A third-order (white-noise-on-jerk) trajectory carries the body angular velocity and the world acceleration in its
state, so IMU readings are direct measurements of the interpolated state, without preintegration (the IMU factor
of T.-M. Nguyen et al., *GPTR: Gaussian Process Trajectory Representation for Continuous-Time Motion Estimation*,
arXiv:2410.22931, 2024; here the biases are global parameters estimated with the trajectory).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gpgeom.geometry.lie import so3_hat
from gpgeom.models.trajectory.factors.base import Measurement, inverse_sigma, measurement_tensor

__all__ = ["IMUMeasurement"]


class IMUMeasurement(Measurement):
    r"""Gyroscope and accelerometer readings with constant biases.

    .. math::
        e = \big[(\omega(t) + b_g - \tilde\omega)/\sigma_g;\ (R(t)^\top (a(t) - g) + b_a - \tilde f)/\sigma_a\big],

    with :math:`g` the gravity *acceleration* in the world frame (default ``(0, 0, -9.81)``, so a body at rest
    reads :math:`\tilde f = R^\top(0, 0, 9.81)`) and the bias vector :math:`b = (b_g, b_a)` a global parameter
    block named ``bias_name`` (shared by all measurements with that name). Jacobians:
    :math:`\partial e_a/\partial\delta_R = (R^\top(a - g))^\wedge/\sigma_a`, :math:`\partial e_a/\partial a =
    R^\top/\sigma_a`, :math:`\partial e/\partial b = I/\sigma`. Needs the acceleration states (prior ``"wnoj"``).

    Args:
        t: ``M`` times; between two knots the residual is evaluated on the interpolated mean only (exact at knot
            times; :class:`~gpgeom.models.trajectory.factors.base.Measurement`).
        gyro: ``M x 3`` angular rates (rad/s, body frame).
        accel: ``M x 3`` specific forces (m/s^2, body frame).
        sigma_gyro, sigma_accel: Noise stds (float, 3-vector, ``M`` or ``M x 3``).
        gravity: World gravity acceleration (3-vector), default ``(0, 0, -9.81)``.
        bias_name: Name of the global bias block (``None`` for no bias: a bias-free IMU).
        bias_init: Initial ``(b_g, b_a)`` (6-vector), default zeros.
        robust, robust_threshold, name: See :class:`~gpgeom.models.trajectory.factors.base.Measurement`.
    """

    level = 2
    residual_dim = 6
    shared = ("g", "bias_init")  # a 3- and a 6-vector: never split, even for M = 3 or 6 blocks

    def __init__(
        self,
        t,
        gyro,
        accel,
        *,
        sigma_gyro: float | Tensor = 0.01,
        sigma_accel: float | Tensor = 0.05,
        gravity=(0.0, 0.0, -9.81),
        bias_name: str | None = "imu_bias",
        bias_init=None,
        robust=None,
        robust_threshold=1.0,
        name="",
    ):
        super().__init__(t, robust=robust, robust_threshold=robust_threshold, name=name)
        M = self.num_blocks
        self.gyro = measurement_tensor("gyro", gyro, shape=(3,), M=M)
        self.accel = measurement_tensor("accel", accel, shape=(3,), M=M)
        self.g = measurement_tensor("gravity", gravity, shape=(3,))
        if self.g.dim() != 1:
            raise ValueError(f"`gravity` must be a 3-vector, got shape {tuple(self.g.shape)}.")
        self.w = torch.cat(
            [inverse_sigma("sigma_gyro", sigma_gyro, M, 3), inverse_sigma("sigma_accel", sigma_accel, M, 3)], 1
        )
        self.bias_name = bias_name
        b0 = torch.zeros(6) if bias_init is None else measurement_tensor("bias_init", bias_init, shape=(6,))
        if b0.dim() != 1:
            raise ValueError(f"`bias_init` must be a 6-vector (b_g, b_a), got shape {tuple(b0.shape)}.")
        self.bias_init = b0

    def global_params(self):
        return {} if self.bias_name is None else {self.bias_name: self.bias_init}

    def _bias(self, params, like: Tensor) -> Tensor:
        if self.bias_name is None:
            return like.new_zeros(6)
        return params[self.bias_name]

    def residual(self, state, params):
        b = self._bias(params, state["p"])
        f = (state["R"].mT @ (state["a"] - self.g).unsqueeze(-1)).squeeze(-1)
        e = torch.cat([state["omega"] + b[:3] - self.gyro, f + b[3:] - self.accel], dim=1)
        return e * self.w

    def linearize(self, state, params):
        e = self.residual(state, params)
        M = e.shape[0]
        R = state["R"]
        f = (R.mT @ (state["a"] - self.g).unsqueeze(-1)).squeeze(-1)
        eye = torch.eye(3, dtype=e.dtype, device=e.device)
        # columns: R, omega, alpha, p, v, a
        J = e.new_zeros(M, 6, 18)
        J[:, :3, 3:6] = eye
        J[:, 3:, 0:3] = so3_hat(f)
        J[:, 3:, 15:18] = R.mT
        J = J * self.w[:, :, None]
        Jp = {}
        if self.bias_name is not None:
            Jp[self.bias_name] = torch.diag_embed(self.w)
        return e, J, Jp

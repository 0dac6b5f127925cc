r"""Measurement factors for continuous-time GP trajectories (:mod:`gpgeom.models.trajectory`).

A measurement is a batch of ``M`` residual blocks, each evaluated on the trajectory's state at one time
:math:`t_m` (interpolated between the two bracketing knots) or, for :class:`KnotPrior`, on one knot. Each class
knows its whitened residual :math:`e_m = W (h(X(t_m), \gamma) - z_m)` and its Jacobian with respect to a
perturbation of the state at :math:`t_m` (and of the global parameters :math:`\gamma`, e.g. IMU biases); the
trajectory chains that Jacobian with the interpolation Jacobians
:math:`\partial X(t)/\partial X_a, \partial X(t)/\partial X_b` (GPTR, Nguyen et al. 2024, arXiv:2410.22931: every
factor touches the two bracketing knots only).

State at a time (all shapes for ``M`` blocks)
----------------------------------------------
``R`` (``M x 3 x 3``, body to world), ``omega`` (``M x 3``, body angular velocity), ``alpha`` (``M x 3``, body
angular acceleration), ``p``, ``v``, ``a`` (``M x 3``, world position, velocity and acceleration). A measurement of
*level* ``L`` reads the components ``components(L)`` = ``("R", "omega", "alpha")[:L+1] + ("p", "v", "a")[:L+1]``.

Perturbation (the tangent used by every Jacobian): :math:`R \leftarrow R\,\mathrm{Exp}(\delta_R)` (right
perturbation, as in the reference and in :mod:`gpgeom.geometry.lie`), the other components additively; the
Jacobian ``J_state`` of a level-``L`` measurement is ``M x r x 3 n_c`` with its columns in the order of
``components(L)`` (``n_c`` components).

Classes
-------
* :class:`PoseMeasurement` -- rotation and position (:math:`e = [\mathrm{Log}(R_m^\top R)/\sigma_R;
  (p - p_m)/\sigma_p]`).
* :class:`PositionMeasurement` -- position only.
* :class:`RangeMeasurement` -- UWB two-way ranging with a tag offset (lever arm) in the body frame:
  :math:`e = (\lVert R o + p - x_{\text{anc}}\rVert - d)/\sigma`.
* :class:`TDOAMeasurement` -- time difference of arrival, :math:`e = (\lVert x - x_j\rVert - \lVert x - x_i\rVert
  - m)/\sigma`, :math:`x = R o + p`.
* :class:`IMUMeasurement` -- gyroscope :math:`\omega + b_g` and accelerometer (specific force)
  :math:`R^\top(a - g) + b_a` with constant biases estimated as global parameters.
* :class:`GlobalPrior` -- a Gaussian prior on a global parameter block (e.g. the IMU biases).
* :class:`KnotPrior` -- a Gaussian prior on (parts of) knot states, e.g. to anchor the first knot.
* :class:`CustomMeasurement` -- any residual function of the state (and globals); its Jacobians come from
  ``torch.func.jacfwd``.

All classes take ``robust=None | "huber"`` and ``robust_threshold`` (in whitened units, applied to the norm of
each residual block) and a ``name`` used in messages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from gpgeom._validation import check_option, check_positive, check_tensor
from gpgeom.geometry.lie import (
    check_rotation,
    check_unit_quaternion,
    quat_to_rotmat,
    so3_exp,
    so3_hat,
    so3_jr_inv,
    so3_log,
)

__all__ = [
    "COMPONENTS",
    "CustomMeasurement",
    "GlobalPrior",
    "IMUMeasurement",
    "KnotPrior",
    "Measurement",
    "PoseMeasurement",
    "PositionMeasurement",
    "RangeMeasurement",
    "TDOAMeasurement",
    "components",
]

COMPONENTS = ("R", "omega", "alpha", "p", "v", "a")
_ROT = ("R", "omega", "alpha")
_POS = ("p", "v", "a")


def components(level: int) -> tuple[str, ...]:
    r"""State components read by a measurement of ``level`` 0 (pose), 1 (+ velocities) or 2 (+ accelerations)."""
    return _ROT[: level + 1] + _POS[: level + 1]


def _as_tensor(name: str, x: object, *, shape: tuple, M: int | None = None) -> Tensor:
    """A float tensor of trailing ``shape``; a single one is broadcast to ``M`` rows when M is given."""
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(x, dtype=torch.get_default_dtype())
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"`{name}` must be a tensor (or array-like) of shape (M, {shape}), got {x!r}.") from None
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    check_tensor(name, x, shape=shape)
    if M is not None:
        if x.dim() == len(shape):
            x = x.expand(M, *shape)
        elif x.dim() != len(shape) + 1 or x.shape[0] != M:
            raise ValueError(
                f"`{name}` must have shape {(M, *shape)} (one per measurement time) or {tuple(shape)} (shared), "
                f"got {tuple(x.shape)}."
            )
    return x


def _sigma(name: str, sigma: object, M: int, r: int) -> Tensor:
    r"""Inverse standard deviations, ``M x r``, from a float, an ``r`` vector or an ``M x r`` / ``M`` tensor."""
    s = torch.as_tensor(sigma, dtype=torch.float64) if not isinstance(sigma, Tensor) else sigma.to(torch.float64)
    if s.dim() == 1 and s.shape[0] == M and r != M:
        s = s[:, None]
    try:
        s = s.expand(M, r)
    except RuntimeError:
        raise ValueError(
            f"`{name}` must be a positive float, a vector of {r} (one per residual component), {M} values (one per "
            f"measurement) or an ({M}, {r}) tensor, got shape {tuple(s.shape)}."
        ) from None
    if not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
        raise ValueError(f"`{name}` must be finite and > 0, got minimum {float(s.min()):.3g}.")
    return 1.0 / s


class Measurement:
    r"""Base class: a batch of ``M`` residual blocks of size ``r`` at times ``t`` (``M``).

    Subclasses set :attr:`level`, :attr:`residual_dim` and implement :meth:`residual` and :meth:`linearize`
    (residual and Jacobians together). Tensors are stored in float64 on the CPU and converted to the
    trajectory's dtype and device when the factors are built (:meth:`to`).
    """

    level: int = 0
    residual_dim: int = 0
    attach: str = "time"  # "time": interpolated state at t; "knot": a knot's state; "global": globals only

    def __init__(self, t: Tensor | None, *, robust: str | None = None, robust_threshold: float = 1.0, name: str = ""):
        if t is not None:
            t = _as_tensor("t", t, shape=())
            if t.dim() == 0:
                t = t.reshape(1)
            if t.dim() != 1 or t.shape[0] == 0:
                raise ValueError(
                    f"`t` must be a non-empty 1-D tensor of measurement times, got shape {tuple(t.shape)}."
                )
        self.t = t
        check_option("robust", robust, (None, "huber"))
        check_positive("robust_threshold", robust_threshold)
        self.robust = robust
        self.robust_threshold = float(robust_threshold)
        self.name = name or type(self).__name__

    @property
    def num_blocks(self) -> int:
        r"""``M``."""
        return int(self.t.shape[0])

    @property
    def components(self) -> tuple[str, ...]:
        r"""State components read, in the column order of the state Jacobian."""
        return components(self.level)

    def global_params(self) -> dict[str, Tensor]:
        r"""Global parameter blocks this measurement estimates: name -> initial value (``g_i``)."""
        return {}

    def to(self, dtype: torch.dtype, device: torch.device | str | None) -> Measurement:
        r"""A shallow copy with every tensor attribute converted."""
        out = object.__new__(type(self))
        for k, v in self.__dict__.items():
            out.__dict__[k] = (
                v.to(dtype=dtype, device=device)
                if isinstance(v, Tensor) and v.is_floating_point()
                else (v.to(device=device) if isinstance(v, Tensor) else v)
            )
        return out

    def residual(self, state: dict[str, Tensor], params: dict[str, Tensor]) -> Tensor:
        r"""Whitened residuals ``M x r``."""
        raise NotImplementedError

    def linearize(self, state: dict[str, Tensor], params: dict[str, Tensor]) -> tuple[Tensor, Tensor, dict]:
        r"""``(e, J_state, J_params)``: ``M x r``, ``M x r x 3 n_c`` and name -> ``M x r x g_i``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, M={self.num_blocks})"


# ------------------------------------------------------------------------------------------------------------------
# Pose, position
# ------------------------------------------------------------------------------------------------------------------
class PoseMeasurement(Measurement):
    r"""Measured rotation and position at times ``t``.

    .. math:: e = \big[\mathrm{Log}(R_m^\top R(t)) / \sigma_R;\ (p(t) - p_m) / \sigma_p\big] \in \mathbb R^6,
       \qquad \partial e_R / \partial \delta_R = J_r^{-1}(\mathrm{Log}(R_m^\top R)) / \sigma_R.

    (GPTR ``GPPoseFactor``; its position Jacobian is exact here, with no missing cross-terms.)

    Args:
        t: ``M`` times.
        R: ``M x 3 x 3`` measured rotations (body to world); or give ``q``.
        q: ``M x 4`` unit quaternions ``(x, y, z, w)`` (scalar-last) instead of ``R``.
        p: ``M x 3`` measured positions.
        sigma_rot: Rotation noise std (rad): float, 3-vector, ``M`` or ``M x 3``.
        sigma_pos: Position noise std (m): same forms.
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
            q = _as_tensor("q", q, shape=(4,), M=M)
            check_unit_quaternion(q, name="q")
            R = quat_to_rotmat(q, validate=False)
        else:
            R = _as_tensor("R", R, shape=(3, 3), M=M)
            check_rotation(R, name="R")
        self.Rm = R
        self.pm = _as_tensor("p", p, shape=(3,), M=M)
        self.w = torch.cat([_sigma("sigma_rot", sigma_rot, M, 3), _sigma("sigma_pos", sigma_pos, M, 3)], dim=1)

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
    r"""Measured positions: :math:`e = (p(t) - p_m)/\sigma`, ``t``: ``M``, ``p``: ``M x 3``."""

    level = 0
    residual_dim = 3

    def __init__(self, t, p, *, sigma: float | Tensor = 0.01, robust=None, robust_threshold=1.0, name=""):
        super().__init__(t, robust=robust, robust_threshold=robust_threshold, name=name)
        self.pm = _as_tensor("p", p, shape=(3,), M=self.num_blocks)
        self.w = _sigma("sigma", sigma, self.num_blocks, 3)

    def residual(self, state, params):
        return (state["p"] - self.pm) * self.w

    def linearize(self, state, params):
        e = self.residual(state, params)
        J = e.new_zeros(e.shape[0], 3, 6)
        J[:, :, 3:] = torch.diag_embed(self.w)
        return e, J, {}


# ------------------------------------------------------------------------------------------------------------------
# UWB: two-way ranging and TDOA
# ------------------------------------------------------------------------------------------------------------------
def _uwb_inputs(M: int, name: str, values: object, tag_offset: object, sigma: object) -> tuple[Tensor, Tensor, Tensor]:
    r"""Validate the inputs shared by the scalar UWB factors.

    Returns ``(values, offset, w)``: the ``M`` measured scalars (named ``name`` in the errors), the ``M x 3`` tag
    offsets (0 when ``tag_offset`` is None) and the ``M x 1`` inverse standard deviations.
    """
    v = _as_tensor(name, values, shape=())
    if v.shape != (M,):
        raise ValueError(f"`{name}` must have shape ({M},) like `t`, got {tuple(v.shape)}.")
    offset = _as_tensor("tag_offset", torch.zeros(3) if tag_offset is None else tag_offset, shape=(3,), M=M)
    return v, offset, _sigma("sigma", sigma, M, 1)


class _TagMeasurement(Measurement):
    r"""A scalar UWB measurement of the tag at :math:`x_{\text{tag}} = R(t)\, o + p(t)` (lever arm :math:`o`): the
    tag position and the Jacobian of a residual through it, shared by ranging and TDOA."""

    level = 0
    residual_dim = 1

    def _tag(self, state):
        return (state["R"] @ self.offset.unsqueeze(-1)).squeeze(-1) + state["p"]

    def _jacobian(self, g, state):
        r"""``[de/d delta_R, de/dp]`` (``M x 1 x 6``, weighted) from ``g = de/dx_tag`` (``M x 1 x 3``, unweighted),
        with :math:`\partial x_{\text{tag}}/\partial\delta_R = -R\, o^\wedge` and
        :math:`\partial x_{\text{tag}}/\partial p = I`."""
        dR = -(g @ state["R"] @ so3_hat(self.offset))
        return torch.cat([dR, g], dim=-1) * self.w[:, :, None]


class RangeMeasurement(_TagMeasurement):
    r"""UWB two-way ranging between a tag on the body and a fixed anchor (GPTR ``GPTWRFactor``).

    .. math:: x = R(t)\, o + p(t) - x_{\text{anc}}, \qquad e = (\lVert x\rVert - d) / \sigma,

    .. math:: \partial e/\partial p = n^\top/\sigma, \quad \partial e/\partial\delta_R = -n^\top R\, o^\wedge/\sigma,
       \quad n = x / \lVert x\rVert.

    Args:
        t: ``M`` times.
        anchors: ``M x 3`` (or ``3``) anchor positions in the world frame.
        ranges: ``M`` measured distances.
        tag_offset: ``M x 3`` (or ``3``) tag position in the body frame (lever arm), default 0.
        sigma: Range noise std: float or ``M``.
    """

    def __init__(
        self,
        t,
        anchors,
        ranges,
        *,
        tag_offset=None,
        sigma: float | Tensor = 0.05,
        robust=None,
        robust_threshold=1.0,
        name="",
    ):
        super().__init__(t, robust=robust, robust_threshold=robust_threshold, name=name)
        self.anchors = _as_tensor("anchors", anchors, shape=(3,), M=self.num_blocks)
        self.d, self.offset, self.w = _uwb_inputs(self.num_blocks, "ranges", ranges, tag_offset, sigma)

    def _x(self, state):
        return self._tag(state) - self.anchors

    def residual(self, state, params):
        return (torch.linalg.vector_norm(self._x(state), dim=-1, keepdim=True) - self.d[:, None]) * self.w

    def linearize(self, state, params):
        x = self._x(state)
        rho = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        e = (rho - self.d[:, None]) * self.w
        return e, self._jacobian((x / rho).unsqueeze(-2), state), {}


class TDOAMeasurement(_TagMeasurement):
    r"""UWB time difference of arrival (in metres) between anchors ``i`` and ``j`` (GPTR ``GPTDOAFactor``).

    .. math:: x = R(t)\, o + p(t), \qquad e = (\lVert x - x_j\rVert - \lVert x - x_i\rVert - m) / \sigma,
       \qquad \partial e/\partial x = (n_j - n_i)^\top/\sigma.

    Args:
        t: ``M`` times.
        anchor_i, anchor_j: ``M x 3`` (or ``3``) anchor positions.
        tdoa: ``M`` measured range differences :math:`\lVert x - x_j\rVert - \lVert x - x_i\rVert`.
        tag_offset: ``M x 3`` (or ``3``) tag position in the body frame, default 0.
        sigma: Noise std: float or ``M``.
    """

    def __init__(
        self,
        t,
        anchor_i,
        anchor_j,
        tdoa,
        *,
        tag_offset=None,
        sigma: float | Tensor = 0.05,
        robust=None,
        robust_threshold=1.0,
        name="",
    ):
        super().__init__(t, robust=robust, robust_threshold=robust_threshold, name=name)
        self.ai = _as_tensor("anchor_i", anchor_i, shape=(3,), M=self.num_blocks)
        self.aj = _as_tensor("anchor_j", anchor_j, shape=(3,), M=self.num_blocks)
        self.m, self.offset, self.w = _uwb_inputs(self.num_blocks, "tdoa", tdoa, tag_offset, sigma)

    def residual(self, state, params):
        x = self._tag(state)
        dj = torch.linalg.vector_norm(x - self.aj, dim=-1)
        di = torch.linalg.vector_norm(x - self.ai, dim=-1)
        return ((dj - di - self.m) * self.w[:, 0]).unsqueeze(-1)

    def linearize(self, state, params):
        x = self._tag(state)
        xj, xi = x - self.aj, x - self.ai
        dj = torch.linalg.vector_norm(xj, dim=-1, keepdim=True)
        di = torch.linalg.vector_norm(xi, dim=-1, keepdim=True)
        e = (dj - di - self.m[:, None]) * self.w
        return e, self._jacobian((xj / dj - xi / di).unsqueeze(-2), state), {}


# ------------------------------------------------------------------------------------------------------------------
# IMU
# ------------------------------------------------------------------------------------------------------------------
class IMUMeasurement(Measurement):
    r"""Gyroscope and accelerometer readings with constant biases (GPTR ``GPIMUFactor``, biases global here).

    .. math::
        e = \big[(\omega(t) + b_g - \tilde\omega)/\sigma_g;\ (R(t)^\top (a(t) - g) + b_a - \tilde f)/\sigma_a\big],

    with :math:`g` the gravity *acceleration* in the world frame (default ``(0, 0, -9.81)``, so a body at rest
    reads :math:`\tilde f = R^\top(0, 0, 9.81)`) and the bias vector :math:`b = (b_g, b_a)` a global parameter
    block named ``bias_name`` (shared by all measurements with that name). Jacobians:
    :math:`\partial e_a/\partial\delta_R = (R^\top(a - g))^\wedge/\sigma_a`, :math:`\partial e_a/\partial a =
    R^\top/\sigma_a`, :math:`\partial e/\partial b = I/\sigma`. Needs the acceleration states (prior ``"wnoj"``).

    Args:
        t: ``M`` times.
        gyro: ``M x 3`` angular rates (rad/s, body frame).
        accel: ``M x 3`` specific forces (m/s^2, body frame).
        sigma_gyro, sigma_accel: Noise stds (float, 3-vector, ``M`` or ``M x 3``).
        gravity: World gravity acceleration (3-vector), default ``(0, 0, -9.81)``.
        bias_name: Name of the global bias block (``None`` for no bias: a bias-free IMU).
        bias_init: Initial ``(b_g, b_a)`` (6-vector), default zeros.
    """

    level = 2
    residual_dim = 6

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
        self.gyro = _as_tensor("gyro", gyro, shape=(3,), M=M)
        self.accel = _as_tensor("accel", accel, shape=(3,), M=M)
        self.g = _as_tensor("gravity", gravity, shape=(3,))
        if self.g.dim() != 1:
            raise ValueError(f"`gravity` must be a 3-vector, got shape {tuple(self.g.shape)}.")
        self.w = torch.cat([_sigma("sigma_gyro", sigma_gyro, M, 3), _sigma("sigma_accel", sigma_accel, M, 3)], 1)
        self.bias_name = bias_name
        b0 = torch.zeros(6) if bias_init is None else _as_tensor("bias_init", bias_init, shape=(6,))
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


# ------------------------------------------------------------------------------------------------------------------
# Priors on globals and on knots
# ------------------------------------------------------------------------------------------------------------------
class GlobalPrior(Measurement):
    r"""Gaussian prior :math:`e = (\gamma_{\text{name}} - \mu)/\sigma` on a global parameter block.

    Args:
        name_of_param: The block's name (e.g. ``"imu_bias"``).
        mean: ``g_i`` prior mean (also the initial value when no other measurement gives one).
        sigma: Prior std: float or ``g_i`` vector.
    """

    attach = "global"

    def __init__(
        self, name_of_param: str, mean, *, sigma: float | Tensor = 1.0, robust=None, robust_threshold=1.0, name=""
    ):
        super().__init__(None, robust=robust, robust_threshold=robust_threshold, name=name or f"prior[{name_of_param}]")
        if not isinstance(name_of_param, str) or not name_of_param:
            raise TypeError(f"`name_of_param` must be a non-empty str, got {name_of_param!r}.")
        self.param = name_of_param
        mu = _as_tensor("mean", mean, shape=(None,))
        if mu.dim() != 1:
            raise ValueError(f"`mean` must be a vector, got shape {tuple(mu.shape)}.")
        self.mean = mu
        self.residual_dim = int(mu.shape[0])
        self.w = _sigma("sigma", sigma, 1, self.residual_dim)[0]

    @property
    def num_blocks(self) -> int:
        return 1

    @property
    def components(self) -> tuple[str, ...]:
        return ()

    def global_params(self):
        return {self.param: self.mean}

    def residual(self, state, params):
        return ((params[self.param] - self.mean) * self.w).unsqueeze(0)

    def linearize(self, state, params):
        e = self.residual(state, params)
        return e, e.new_zeros(1, self.residual_dim, 0), {self.param: torch.diag(self.w).unsqueeze(0)}


class KnotPrior(Measurement):
    r"""Gaussian prior on the states of knots ``index`` (``M`` of them), e.g. to anchor the first knot.

    .. math:: e = \big[\mathrm{Log}(\bar R^\top R_k)/\sigma_R;\ (\omega_k - \bar\omega)/\sigma_\omega;\ \dots\big]

    over the components given (``None`` leaves a component free). With all of them given it is the prior
    :math:`x_{0} \sim N(\bar x, P_0)` of a GP started at the first knot (diagonal :math:`P_0`).

    Args:
        index: Knot index or ``M`` indices (negative counts from the end).
        R / q: ``M x 3 x 3`` rotations or ``M x 4`` unit quaternions (scalar-last), or a single one.
        omega, alpha, p, v, a: ``M x 3`` (or ``3``) means.
        sigma: Std: a float for all, or a dict component -> float / 3-vector.
    """

    attach = "knot"

    def __init__(
        self,
        index: int | Sequence[int] | Tensor,
        *,
        R=None,
        q=None,
        omega=None,
        alpha=None,
        p=None,
        v=None,
        a=None,
        sigma: float | dict = 1.0,
        robust=None,
        robust_threshold=1.0,
        name="",
    ):
        super().__init__(None, robust=robust, robust_threshold=robust_threshold, name=name)
        idx = torch.as_tensor(index)
        if idx.is_floating_point() or idx.dtype == torch.bool:
            raise TypeError(f"`index` must be an int or integer indices, got {index!r}.")
        self.index = idx.reshape(-1).long()
        M = int(self.index.shape[0])
        if q is not None and R is not None:
            raise ValueError("KnotPrior takes `R` or `q`, not both.")
        if q is not None:
            q = _as_tensor("q", q, shape=(4,), M=M)
            check_unit_quaternion(q, name="q")
            R = quat_to_rotmat(q, validate=False)
        elif R is not None:
            R = _as_tensor("R", R, shape=(3, 3), M=M)
            check_rotation(R, name="R")
        given = {"R": R, "omega": omega, "alpha": alpha, "p": p, "v": v, "a": a}
        self.means = {}
        for k, val in given.items():
            if val is None:
                continue
            self.means[k] = val if k == "R" else _as_tensor(k, val, shape=(3,), M=M)
        if not self.means:
            raise ValueError("KnotPrior needs at least one of R, q, omega, alpha, p, v, a.")
        if isinstance(sigma, dict):
            unknown = set(sigma) - set(COMPONENTS)
            if unknown:
                raise ValueError(f"`sigma` has unknown keys {sorted(unknown)}; expected some of {COMPONENTS}.")
            missing = set(self.means) - set(sigma)
            if missing:
                raise ValueError(f"`sigma` must give a std for every prior component; missing {sorted(missing)}.")
        self._comps = tuple(c for c in COMPONENTS if c in self.means)
        self.w = torch.cat(
            [_sigma(f"sigma[{c}]", sigma[c] if isinstance(sigma, dict) else sigma, M, 3) for c in self._comps], 1
        )
        self.residual_dim = 3 * len(self._comps)

    @property
    def num_blocks(self) -> int:
        return int(self.index.shape[0])

    @property
    def components(self) -> tuple[str, ...]:
        return self._comps

    def to(self, dtype, device):
        out = super().to(dtype, device)
        out.means = {k: v.to(dtype=dtype, device=device) for k, v in self.means.items()}
        return out

    def _errors(self, state):
        parts = []
        for c in self._comps:
            if c == "R":
                parts.append(so3_log(self.means["R"].mT @ state["R"], validate=False))
            else:
                parts.append(state[c] - self.means[c])
        return parts

    def residual(self, state, params):
        return torch.cat(self._errors(state), dim=1) * self.w

    def linearize(self, state, params):
        parts = self._errors(state)
        e = torch.cat(parts, dim=1) * self.w
        M, n = e.shape
        J = torch.diag_embed(e.new_ones(M, n))
        if "R" in self._comps:
            J[:, :3, :3] = so3_jr_inv(parts[0])
        return e, J * self.w[:, :, None], {}


# ------------------------------------------------------------------------------------------------------------------
# User-defined
# ------------------------------------------------------------------------------------------------------------------
class CustomMeasurement(Measurement):
    r"""A measurement given by its residual function only; Jacobians by ``torch.func.jacfwd``.

    ``residual_fn(state, params) -> M x r`` receives the state at the ``M`` times as a dict (components of
    ``components(level)``: ``"R"`` ``M x 3 x 3``, the others ``M x 3``) and a dict of global parameter blocks
    (``params[name]``: ``g_i``), and returns the *unwhitened* residuals; they are divided by ``sigma``. It must be
    written with batched torch operations, row ``m`` depending only on the state of row ``m`` (the Jacobian is
    obtained by perturbing every row along the same tangent direction), and without ``.item()`` or
    data-dependent Python control flow.

    Args:
        t: ``M`` times.
        residual_fn: The residual function.
        residual_dim: ``r``.
        level: 0 (pose), 1 (+ velocities), 2 (+ accelerations; needs ``prior="wnoj"``).
        sigma: Noise std: float, ``r``-vector, ``M`` or ``M x r``.
        params: Global parameter blocks: name -> initial value (``g_i``) estimated with the trajectory.
    """

    def __init__(
        self,
        t,
        residual_fn: Callable[[dict, dict], Tensor],
        *,
        residual_dim: int,
        level: int = 0,
        sigma: float | Tensor = 1.0,
        params: dict[str, Tensor] | None = None,
        robust=None,
        robust_threshold=1.0,
        name="",
    ):
        super().__init__(t, robust=robust, robust_threshold=robust_threshold, name=name)
        if not callable(residual_fn):
            raise TypeError(f"`residual_fn` must be callable, got {type(residual_fn).__name__}.")
        check_positive("residual_dim", residual_dim, integer=True)
        check_option("level", level, (0, 1, 2))
        self.fn = residual_fn
        self.level = level
        self.residual_dim = residual_dim
        self.w = _sigma("sigma", sigma, self.num_blocks, residual_dim)
        self.params0 = {}
        for k, v in (params or {}).items():
            v = _as_tensor(f"params[{k!r}]", v, shape=(None,))
            if v.dim() != 1:
                raise ValueError(f"`params[{k!r}]` must be a vector, got shape {tuple(v.shape)}.")
            self.params0[k] = v

    def to(self, dtype, device):
        out = super().to(dtype, device)
        out.params0 = {k: v.to(dtype=dtype, device=device) for k, v in self.params0.items()}
        return out

    def global_params(self):
        return dict(self.params0)

    def _call(self, state, params) -> Tensor:
        r = self.fn(state, params)
        M = self.num_blocks
        if not isinstance(r, Tensor) or r.dim() != 2 or r.shape != (M, self.residual_dim):
            got = tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__
            raise ValueError(
                f"{self.name}: `residual_fn` must return an (M, r) = ({M}, {self.residual_dim}) tensor, got {got}."
            )
        return r * self.w

    def residual(self, state, params):
        return self._call(state, params)

    def linearize(self, state, params):
        comps = self.components
        names = list(self.params0)
        sizes = [int(params[n].shape[0]) for n in names]
        nd = 3 * len(comps) + sum(sizes)
        ref = state["p"]

        def f(d: Tensor) -> tuple[Tensor, Tensor]:
            st, off = {}, 0
            for c in comps:
                dc = d[off : off + 3]
                st[c] = state[c] @ so3_exp(dc) if c == "R" else state[c] + dc
                off += 3
            pr = {}
            for n, sz in zip(names, sizes):
                pr[n] = params[n] + d[off : off + sz]
                off += sz
            r = self._call(st, pr)
            return r, r

        try:
            J, e = torch.func.jacfwd(f, has_aux=True)(ref.new_zeros(nd))
        except RuntimeError as err:
            raise RuntimeError(
                f"{self.name}: forward-mode differentiation of `residual_fn` failed ({err}); write it with batched "
                "torch operations only (no .item(), no in-place writes into the inputs)."
            ) from err
        k = 3 * len(comps)
        Jp, off = {}, k
        for n, sz in zip(names, sizes):
            Jp[n] = J[:, :, off : off + sz]
            off += sz
        return e, J[:, :, :k], Jp

r"""Analytic fast 6-DoF trajectories with exact derivatives, and simulated pose, UWB, TDOA and IMU measurements.

Trajectories (:class:`FastTrajectory`), evaluated at any time by :meth:`FastTrajectory.state`:

* ``kind="split"`` (the GPTR UWB simulation, "split" ground truth): rotation and translation independent,

  .. math::
      R(t) = \mathrm{Exp}\big(r \odot [\cos(f t + 57), \sin(f t + 57), \sin(f t / 3 + 43)]\big), \quad
      r = (\pi/2, \pi/2, \pi\sqrt3/2), \quad f = 0.075\,n,

  .. math::
      p(t) = c\,[\sin(g t + 43), \cos(g t + 43), \cos(g t / 3 + 57)], \quad g = 0.45\,m_{\text{pos}},

  with ``speed`` :math:`n` (the body rate grows with it: over :math:`t \in [0, 60]` s the mean of :math:`|\omega|`
  is 1.49, 2.98, 4.48 rad/s, about :math:`0.1 n`, and its maximum 1.84, 3.67, 5.51 rad/s for
  :math:`n = 15, 30, 45`; ``tests/test_trajectory_datasets.py``) and ``radius`` :math:`c`.
* ``kind="heading"`` ("non-split"): the same position, the body x-axis along the velocity, the z-axis as close to
  the world z as possible, and a roll oscillation :math:`0.6 \sin(f t)` about the body x-axis.

The derivatives are *exact*: :math:`\omega^\wedge = R^\top\dot R` and :math:`\alpha^\wedge = \frac{d}{dt}(R^\top
\dot R) = \dot R^\top\dot R + R^\top\ddot R` with :math:`\dot R, \ddot R` from nested forward-mode automatic
differentiation of :math:`R(t)` (no finite differences, no Jacobian formula), and :math:`v, a` likewise.

Measurements (returned as dataclasses of float64 tensors; feed them to the classes of
:mod:`gpgeom.models.trajectory.factors`): :func:`simulate_pose`, :func:`simulate_uwb` (two-way ranging from
tags with body-frame offsets to fixed anchors), :func:`simulate_tdoa`, :func:`simulate_imu` (gyroscope and
accelerometer with constant biases and gravity) and :func:`perturbed_knots` (the initial guess of the GPTR
protocol: truth perturbed by Gaussian noise on rotation and position, rates zeroed).

Every draw here is seeded (:mod:`gpgeom._seeds`): ``seed`` is an int ``>= 0`` (the same draw whatever the global
random states, which it leaves untouched), a CPU ``torch.Generator`` drawn from in place, or ``None``: a generator
seeded with one draw of torch's global random stream (``torch.manual_seed`` before the call repeats it), as for
the fits of :mod:`gpgeom.engine`. The default is ``seed=0``. A bool, float, string or negative int raises an error
naming ``seed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from gpgeom._seeds import torch_generator
from gpgeom._validation import check_option, check_positive, check_tensor
from gpgeom.geometry.lie import rotmat_to_quat, so3_exp, so3_jr, so3_jr_dtheta, so3_vee

__all__ = [
    "DEFAULT_ANCHORS",
    "DEFAULT_TAG_OFFSETS",
    "FastTrajectory",
    "GPTR_ANCHORS",
    "GPTR_TAG_OFFSETS",
    "GroundTruth",
    "IMUData",
    "PoseData",
    "PriorTrajectory",
    "TDOAData",
    "UWBData",
    "perturbed_knots",
    "simulate_imu",
    "simulate_pose",
    "simulate_tdoa",
    "simulate_uwb",
]

_DT = torch.float64

#: Eight UWB anchors on the corners of a 20 m x 20 m x 6 m box around the default trajectory (m).
DEFAULT_ANCHORS = torch.tensor(
    [[sx * 10.0, sy * 10.0, sz] for sz in (-3.0, 3.0) for sx, sy in ((1, 1), (-1, 1), (-1, -1), (1, -1))], dtype=_DT
)
#: Three UWB tags on the body (body frame, m), not collinear so that every rotation axis is observable.
DEFAULT_TAG_OFFSETS = torch.tensor([[0.2, 0.0, 0.0], [-0.2, 0.0, 0.0], [0.0, 0.25, 0.05]], dtype=_DT)
#: The GPTR simulation's two tags (+-0.2, 0, 0) m: the roll about the body x-axis is not observable from them.
GPTR_TAG_OFFSETS = torch.tensor([[0.2, 0.0, 0.0], [-0.2, 0.0, 0.0]], dtype=_DT)
#: The GPTR simulation's four anchors (+-10, +-10, {0.5, 2.5}) m.
GPTR_ANCHORS = torch.tensor([[10.0, 10.0, 0.5], [-10.0, 10.0, 2.5], [-10.0, -10.0, 0.5], [10.0, -10.0, 2.5]], dtype=_DT)


def _generator(seed: int | torch.Generator | None) -> torch.Generator:
    return torch_generator("seed", seed)


def _times(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        t = torch.as_tensor(t, dtype=_DT)
    check_tensor(name, t, floating=True)
    if t.dim() != 1:
        raise ValueError(f"`{name}` must be a 1-D tensor of times, got shape {tuple(t.shape)}.")
    return t.to(_DT)


def _query_times(t: object) -> Tensor:
    r"""A time or ``n`` times (float64, 1-D); more dimensions are refused, not flattened."""
    x = torch.as_tensor(t, dtype=_DT)
    if x.dim() > 1:
        raise ValueError(f"`t` must be a time or a 1-D tensor of times, got shape {tuple(x.shape)}.")
    return _times("t", x.reshape(-1))


@dataclass
class GroundTruth:
    r"""Exact states at ``n`` times (float64).

    Attributes:
        t: ``n``. R: ``n x 3 x 3`` (body to world). omega, alpha: ``n x 3`` body angular velocity/acceleration.
        p, v, a: ``n x 3`` world position, velocity, acceleration.
    """

    t: Tensor
    R: Tensor
    omega: Tensor
    alpha: Tensor
    p: Tensor
    v: Tensor
    a: Tensor

    @property
    def quaternion(self) -> Tensor:
        r"""``n x 4`` unit quaternions ``(x, y, z, w)``."""
        return rotmat_to_quat(self.R, validate=False)

    def knots(self, prior: str = "wnoj") -> dict[str, Tensor]:
        r"""The states as keyword arguments of :meth:`gpgeom.models.trajectory.Trajectory.set_knots`."""
        d = {"R": self.R, "omega": self.omega, "p": self.p, "v": self.v}
        if prior == "wnoj":
            d.update(alpha=self.alpha, a=self.a)
        return d


@dataclass
class FastTrajectory:
    r"""An analytic fast 6-DoF trajectory (see the module docstring).

    Args:
        kind: ``"split"`` or ``"heading"``.
        speed: :math:`n`, the rotation frequency factor (:math:`f = 0.075 n` rad/s); default 30
            (``"split"``: :math:`|\omega|` 2.98 rad/s on average, at most 3.67 rad/s).
        pos_speed: Factor of the position frequencies (default 1: :math:`|v| \approx 2.3` m/s).
        radius: Position amplitude :math:`c` (m), default 5.
    """

    kind: str = "split"
    speed: float = 30.0
    pos_speed: float = 1.0
    radius: float = 5.0
    _r: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_option("kind", self.kind, ("split", "heading"))
        check_positive("speed", self.speed)
        check_positive("pos_speed", self.pos_speed)
        check_positive("radius", self.radius)
        self._r = torch.tensor([math.pi / 2, math.pi / 2, math.pi * math.sqrt(3.0) / 2], dtype=_DT)

    # ----- analytic maps (elementwise in t) -----
    def _position(self, t: Tensor) -> Tensor:
        g = 0.45 * self.pos_speed
        c = self.radius
        return c * torch.stack([torch.sin(g * t + 43), torch.cos(g * t + 43), torch.cos(g * t / 3 + 57)], -1)

    def _velocity(self, t: Tensor) -> Tensor:
        return torch.func.jvp(self._position, (t,), (torch.ones_like(t),))[1]

    def _rotation(self, t: Tensor) -> Tensor:
        f = 0.075 * self.speed
        if self.kind == "split":
            phi = self._r * torch.stack([torch.cos(f * t + 57), torch.sin(f * t + 57), torch.sin(f * t / 3 + 43)], -1)
            return so3_exp(phi)
        v = self._velocity(t)
        x = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)
        ez = torch.zeros_like(x)
        ez[..., 2] = 1.0
        y = torch.linalg.cross(ez, x, dim=-1)
        y = y / torch.linalg.vector_norm(y, dim=-1, keepdim=True)
        z = torch.linalg.cross(x, y, dim=-1)
        R0 = torch.stack([x, y, z], dim=-1)
        roll = 0.6 * torch.sin(f * t)
        ex = torch.zeros_like(x)
        ex[..., 0] = 1.0
        return R0 @ so3_exp(roll[..., None] * ex)

    def state(self, t: Tensor | float) -> GroundTruth:
        r"""Exact :math:`(R, \omega, \alpha, p, v, a)` at times ``t`` (``n``, float64)."""
        t = _query_times(t)
        one = torch.ones_like(t)

        def dR(tt):
            return torch.func.jvp(self._rotation, (tt,), (torch.ones_like(tt),))

        R, Rd = dR(t)
        Rdd = torch.func.jvp(dR, (t,), (one,))[1][1]
        W = R.mT @ Rd
        A = Rd.mT @ Rd + R.mT @ Rdd
        omega = so3_vee(0.5 * (W - W.mT))
        alpha = so3_vee(0.5 * (A - A.mT))

        def dp(tt):
            return torch.func.jvp(self._position, (tt,), (torch.ones_like(tt),))

        p, v = dp(t)
        a = torch.func.jvp(dp, (t,), (one,))[1][1]
        return GroundTruth(t=t, R=R, omega=omega, alpha=alpha, p=p, v=v, a=a)


def _sample_prior(n, t_end, qc_rot, qc_pos, omega0, v0, dt, g) -> tuple[Tensor, dict[str, Tensor]]:
    r"""``n`` draws of the WNOJ chain on the grid ``0, dt, ...`` (see :class:`PriorTrajectory`): times and the knot
    states ``n x K x ...``."""
    from gpgeom.models.trajectory.interpolation import MarkovChainAlgebra

    for name, val in (("t_end", t_end), ("qc_rot", qc_rot), ("qc_pos", qc_pos), ("dt", dt)):
        check_positive(name, val)
    K = int(math.ceil(t_end / dt - 1e-9)) + 1
    times = dt * torch.arange(K, dtype=_DT)
    if times[-1] < t_end:  # rounding (0.9 / 0.03 = 30.000000000000004: 31 steps end at 0.8999999999999999)
        times[-1] = t_end
    Phi, W = MarkovChainAlgebra(3).prior_mats(torch.tensor([dt], dtype=_DT))
    Phi, L = Phi[0], torch.linalg.inv(W[0])  # L L^T = Q(dt) per unit psd
    rot = L @ torch.randn(K, n, 3, 3, generator=g, dtype=_DT) * math.sqrt(qc_rot)  # K x n x (theta, dot, ddot) x 3
    pos = L @ torch.randn(K, n, 3, 3, generator=g, dtype=_DT) * math.sqrt(qc_pos)
    R = torch.eye(3, dtype=_DT).expand(n, 3, 3)
    w = torch.zeros(n, 3, dtype=_DT) + (0.0 if omega0 is None else torch.as_tensor(omega0, dtype=_DT))
    al = torch.zeros(n, 3, dtype=_DT)
    chain = torch.zeros(n, 3, 3, dtype=_DT)  # rows p, v, a
    if v0 is not None:
        chain[:, 1] = torch.as_tensor(v0, dtype=_DT)
    out: dict[str, list[Tensor]] = {c: [] for c in ("R", "omega", "alpha", "p", "v", "a")}
    for k in range(K):
        if k > 0:
            gam = Phi @ torch.stack([torch.zeros_like(w), w, al], 1) + rot[k]
            th, thd, thdd = gam.unbind(1)
            Jr = so3_jr(th)
            R = R @ so3_exp(th)
            w = (Jr @ thd.unsqueeze(-1)).squeeze(-1)
            al = ((Jr @ thdd.unsqueeze(-1)) + so3_jr_dtheta(th, thd) @ thd.unsqueeze(-1)).squeeze(-1)
            chain = Phi @ chain + pos[k]
        for c, x in zip(out, (R, w, al, chain[:, 0], chain[:, 1], chain[:, 2])):
            out[c].append(x)
    return times, {c: torch.stack(x, 1) for c, x in out.items()}


class PriorTrajectory:
    r"""A trajectory drawn from the white-noise-on-jerk (WNOJ) prior of
    :class:`~gpgeom.models.trajectory.SO3xR3Trajectory`: the motion the model assumes, for consistency checks (a
    NEES of its posterior has mean :math:`d` only when the truth follows the prior; :func:`simulate_uwb` and
    :func:`simulate_pose` accept it in place of a :class:`FastTrajectory`).

    The state is drawn step by step on a fine grid of spacing ``dt`` (Barfoot, *State Estimation for Robotics*,
    2017, sec. 3.4; Tang, Yoon & Barfoot, IEEE RA-L 4(2), 2019): the position chain :math:`(p, v, a)` per world axis,
    :math:`\gamma_{k+1} = \Phi(\delta)\gamma_k + w`, :math:`w \sim N(0, q_{pos} Q(\delta))`, and the rotation through
    its local variable, :math:`\gamma^{rot}_{k+1} = \Phi(\delta)(0, \omega_k, \alpha_k) + w` with :math:`R_{k+1} = R_k
    \mathrm{Exp}(\theta)`, :math:`\omega_{k+1} = J_r(\theta)\dot\theta`, :math:`\alpha_{k+1} = J_r\ddot\theta +
    H(\theta, \dot\theta)\dot\theta` (the closed-form kinematics). The position chain is exactly the model's prior
    at any knot spacing (a Gauss-Markov chain); the rotation chain equals it to second order in the angle travelled
    per step. :meth:`state` interpolates the fine grid with the model's own GP interpolation (its error is the
    bridge variance at spacing ``dt``, :math:`\sim q\,dt^5`, negligible).

    Args:
        t_end: Duration (s), from 0.
        qc_rot, qc_pos: Power spectral densities of the rotational and translational jerk (the model's ``qc_rot``,
            ``qc_pos``).
        omega0, v0: Initial body angular velocity (rad/s) and world velocity (m/s), ``3``; zero by default.
        dt: Spacing of the fine grid (s).
        seed: Seed, or a ``torch.Generator`` to draw from (``None``: one draw of torch's global random stream).
    """

    def __init__(self, t_end: float, *, qc_rot: float = 0.1, qc_pos: float = 1.0, omega0=None, v0=None,
                 dt: float = 0.01, seed: int | torch.Generator | None = 0) -> None:  # fmt: skip
        times, knots = _sample_prior(1, t_end, qc_rot, qc_pos, omega0, v0, dt, _generator(seed))
        self._set(times, {c: x[0] for c, x in knots.items()}, t_end, dt, qc_rot, qc_pos)

    @classmethod
    def draw(cls, n: int, t_end: float, *, qc_rot: float = 0.1, qc_pos: float = 1.0, omega0=None, v0=None,
             dt: float = 0.01, seed: int | torch.Generator | None = 0) -> list[PriorTrajectory]:  # fmt: skip
        r"""``n`` independent draws (arguments as for the constructor), sampled together (one batched recursion)."""
        check_positive("n", n, integer=True)
        times, knots = _sample_prior(n, t_end, qc_rot, qc_pos, omega0, v0, dt, _generator(seed))
        out = []
        for i in range(n):
            obj = cls.__new__(cls)
            obj._set(times, {c: x[i] for c, x in knots.items()}, t_end, dt, qc_rot, qc_pos)
            out.append(obj)
        return out

    def _set(self, times: Tensor, knots: dict[str, Tensor], t_end: float, dt: float, qc_rot: float, qc_pos: float):
        from gpgeom.models.trajectory import SO3xR3Trajectory

        self.t_end, self.dt = float(t_end), float(dt)
        self._fine = SO3xR3Trajectory(times, qc_rot=qc_rot, qc_pos=qc_pos)
        self._fine.set_knots(**knots)

    def state(self, t: Tensor | float) -> GroundTruth:
        r""":math:`(R, \omega, \alpha, p, v, a)` at times ``t`` (``n``, float64, within ``[0, t_end]``)."""
        t = _query_times(t)
        st = self._fine.interpolate(t)
        return GroundTruth(t=t, R=st.R, omega=st.omega, alpha=st.alpha, p=st.p, v=st.v, a=st.a)


# ------------------------------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------------------------------
@dataclass
class PoseData:
    r"""Noisy poses: ``t`` (``M``), ``R`` (``M x 3 x 3``), ``p`` (``M x 3``), noise stds ``sigma_rot`` (rad),
    ``sigma_pos`` (m). ``R = R_true Exp(n_R)``, ``p = p_true + n_p``."""

    t: Tensor
    R: Tensor
    p: Tensor
    sigma_rot: float
    sigma_pos: float

    @property
    def quaternion(self) -> Tensor:
        return rotmat_to_quat(self.R, validate=False)


@dataclass
class UWBData:
    r"""Two-way ranges: ``t`` (``M``), ``anchors`` (``M x 3``, world), ``tag_offsets`` (``M x 3``, body),
    ``ranges`` (``M``), ``sigma`` (m), ``anchor_index`` and ``tag_index`` (``M``, int)."""

    t: Tensor
    anchors: Tensor
    tag_offsets: Tensor
    ranges: Tensor
    sigma: float
    anchor_index: Tensor
    tag_index: Tensor


@dataclass
class TDOAData:
    r"""Range differences :math:`\lVert x - x_j\rVert - \lVert x - x_i\rVert`: ``t`` (``M``), ``anchor_i``,
    ``anchor_j`` (``M x 3``), ``tag_offsets`` (``M x 3``), ``tdoa`` (``M``), ``sigma`` (m)."""

    t: Tensor
    anchor_i: Tensor
    anchor_j: Tensor
    tag_offsets: Tensor
    tdoa: Tensor
    sigma: float


@dataclass
class IMUData:
    r"""IMU readings: ``t`` (``M``), ``gyro``, ``accel`` (``M x 3``, body frame), the true constant biases
    ``bias_gyro``, ``bias_accel`` (3), ``gravity`` (3, world gravity acceleration) and the noise stds."""

    t: Tensor
    gyro: Tensor
    accel: Tensor
    bias_gyro: Tensor
    bias_accel: Tensor
    gravity: Tensor
    sigma_gyro: float
    sigma_accel: float


def simulate_pose(
    truth: FastTrajectory,
    t: Tensor,
    *,
    sigma_rot: float = 0.01,
    sigma_pos: float = 0.01,
    seed: int | torch.Generator | None = 0,
) -> PoseData:
    r"""Poses at times ``t`` (``M``) with right-multiplied rotation noise :math:`\mathrm{Exp}(n_R)`,
    :math:`n_R \sim N(0, \sigma_{rot}^2 I)`, and position noise :math:`N(0, \sigma_{pos}^2 I)`, drawn from ``seed``
    (an int >= 0, a ``torch.Generator`` or ``None``: module doc)."""
    t = _times("t", t)
    check_positive("sigma_rot", sigma_rot, allow_zero=True)
    check_positive("sigma_pos", sigma_pos, allow_zero=True)
    g = _generator(seed)
    gt = truth.state(t)
    M = t.shape[0]
    nR = sigma_rot * torch.randn(M, 3, generator=g, dtype=_DT)
    nP = sigma_pos * torch.randn(M, 3, generator=g, dtype=_DT)
    return PoseData(t=t, R=gt.R @ so3_exp(nR), p=gt.p + nP, sigma_rot=float(sigma_rot), sigma_pos=float(sigma_pos))


def simulate_uwb(
    truth: FastTrajectory,
    t_start: float,
    t_end: float,
    *,
    rate: float = 20.0,
    anchors: Tensor | None = None,
    tag_offsets: Tensor | None = None,
    sigma: float = 0.05,
    stagger: bool = True,
    seed: int | torch.Generator | None = 0,
) -> UWBData:
    r"""UWB two-way ranges from every tag to every anchor at ``rate`` epochs per second in ``[t_start, t_end]``.

    :math:`d = \lVert R(t)\, o + p(t) - x_{\text{anc}}\rVert + n`, :math:`n \sim N(0, \sigma^2)`. With ``stagger``,
    the ``P`` (anchor, tag) pairs of an epoch are ranged one after the other, at ``epoch + j / (P rate)``
    (sequential ranging), otherwise all at the epoch time.

    Args:
        truth: The trajectory.
        t_start, t_end: Time span.
        rate: Epochs per second (default 20 Hz).
        anchors: ``A x 3`` anchor positions (default :data:`DEFAULT_ANCHORS`).
        tag_offsets: ``T x 3`` tag positions in the body frame (default :data:`DEFAULT_TAG_OFFSETS`).
        sigma: Range noise std (m).
        stagger: Sequential ranging times (see above).
        seed: Seed, or a ``torch.Generator`` to draw from (``None``: one draw of torch's global random stream).
    """
    check_positive("rate", rate)
    check_positive("sigma", sigma, allow_zero=True)
    if not t_end > t_start:
        raise ValueError(f"`t_end` ({t_end}) must exceed `t_start` ({t_start}).")
    anchors = DEFAULT_ANCHORS if anchors is None else torch.as_tensor(anchors, dtype=_DT)
    tags = DEFAULT_TAG_OFFSETS if tag_offsets is None else torch.as_tensor(tag_offsets, dtype=_DT)
    check_tensor("anchors", anchors, ndim=2, shape=(None, 3))
    check_tensor("tag_offsets", tags, ndim=2, shape=(None, 3))
    g = _generator(seed)
    n_ep = int(math.floor((t_end - t_start) * rate + 1e-9)) + 1
    epochs = t_start + torch.arange(n_ep, dtype=_DT) / rate
    A, T = anchors.shape[0], tags.shape[0]
    P = A * T
    ai = torch.arange(A).repeat(T)
    ti = torch.arange(T).repeat_interleave(A)
    off = torch.arange(P, dtype=_DT) / (P * rate) if stagger else torch.zeros(P, dtype=_DT)
    t = (epochs[:, None] + off[None, :]).reshape(-1)
    ai = ai.repeat(n_ep)
    ti = ti.repeat(n_ep)
    keep = t <= t_end
    t, ai, ti = t[keep], ai[keep], ti[keep]
    st = truth.state(t)
    x = (st.R @ tags[ti].unsqueeze(-1)).squeeze(-1) + st.p - anchors[ai]
    d = torch.linalg.vector_norm(x, dim=-1) + sigma * torch.randn(t.shape[0], generator=g, dtype=_DT)
    return UWBData(
        t=t, anchors=anchors[ai], tag_offsets=tags[ti], ranges=d, sigma=float(sigma), anchor_index=ai, tag_index=ti
    )


def simulate_tdoa(
    truth: FastTrajectory,
    t: Tensor,
    *,
    anchors: Tensor | None = None,
    tag_offset: Tensor | None = None,
    sigma: float = 0.05,
    seed: int | torch.Generator | None = 0,
) -> TDOAData:
    r"""TDOA (in metres) at times ``t`` (``M``), cycling through the anchor pairs ``(0, j)``, ``j = 1..A-1``:
    :math:`m = \lVert x - x_j\rVert - \lVert x - x_0\rVert + n`, :math:`x = R(t)\,o + p(t)`; the noise is drawn from
    ``seed`` (an int >= 0, a ``torch.Generator`` or ``None``: module doc)."""
    t = _times("t", t)
    check_positive("sigma", sigma, allow_zero=True)
    anchors = DEFAULT_ANCHORS if anchors is None else torch.as_tensor(anchors, dtype=_DT)
    check_tensor("anchors", anchors, ndim=2, shape=(None, 3))
    if anchors.shape[0] < 2:
        raise ValueError(f"`anchors` must hold at least 2 anchors for TDOA, got {anchors.shape[0]}.")
    o = torch.zeros(3, dtype=_DT) if tag_offset is None else torch.as_tensor(tag_offset, dtype=_DT)
    g = _generator(seed)
    M = t.shape[0]
    j = 1 + torch.arange(M) % (anchors.shape[0] - 1)
    ai, aj = anchors[0].expand(M, 3), anchors[j]
    st = truth.state(t)
    x = (st.R @ o.expand(M, 3).unsqueeze(-1)).squeeze(-1) + st.p
    m = torch.linalg.vector_norm(x - aj, dim=-1) - torch.linalg.vector_norm(x - ai, dim=-1)
    m = m + sigma * torch.randn(M, generator=g, dtype=_DT)
    return TDOAData(
        t=t, anchor_i=ai.clone(), anchor_j=aj, tag_offsets=o.expand(M, 3).clone(), tdoa=m, sigma=float(sigma)
    )


def simulate_imu(
    truth: FastTrajectory,
    t: Tensor,
    *,
    sigma_gyro: float = 0.01,
    sigma_accel: float = 0.05,
    bias_gyro=(0.01, -0.02, 0.015),
    bias_accel=(0.05, -0.03, 0.04),
    gravity=(0.0, 0.0, -9.81),
    seed: int | torch.Generator | None = 0,
) -> IMUData:
    r"""Gyroscope :math:`\tilde\omega = \omega + b_g + n_g` and accelerometer (specific force)
    :math:`\tilde f = R^\top(a - g) + b_a + n_a` at times ``t`` (``M``); the noise is drawn from ``seed`` (an int >= 0,
    a ``torch.Generator`` or ``None``: module doc)."""
    t = _times("t", t)
    check_positive("sigma_gyro", sigma_gyro, allow_zero=True)
    check_positive("sigma_accel", sigma_accel, allow_zero=True)
    g = _generator(seed)
    bg, ba, gv = (torch.as_tensor(x, dtype=_DT) for x in (bias_gyro, bias_accel, gravity))
    st = truth.state(t)
    M = t.shape[0]
    gyro = st.omega + bg + sigma_gyro * torch.randn(M, 3, generator=g, dtype=_DT)
    f = (st.R.mT @ (st.a - gv).unsqueeze(-1)).squeeze(-1)
    accel = f + ba + sigma_accel * torch.randn(M, 3, generator=g, dtype=_DT)
    return IMUData(
        t=t,
        gyro=gyro,
        accel=accel,
        bias_gyro=bg,
        bias_accel=ba,
        gravity=gv,
        sigma_gyro=float(sigma_gyro),
        sigma_accel=float(sigma_accel),
    )


def perturbed_knots(
    truth: FastTrajectory,
    knot_times: Tensor,
    *,
    sigma_rot: float = 0.2,
    sigma_pos: float = 0.5,
    prior: str = "wnoj",
    seed: int | torch.Generator | None = 0,
) -> dict[str, Tensor]:
    r"""Initial knots of the GPTR protocol: :math:`R = R_{true}\mathrm{Exp}(n_R)`, :math:`p = p_{true} + n_p`
    (:math:`n_R \sim N(0, \sigma_{rot}^2 I)`, :math:`n_p \sim N(0, \sigma_{pos}^2 I)`), every rate zero; returned as
    keyword arguments of :meth:`~gpgeom.models.trajectory.Trajectory.set_knots`. The noise is drawn from ``seed`` (an
    int >= 0, a ``torch.Generator`` or ``None``: module doc)."""
    check_option("prior", prior, ("wnoj", "wnoa"))
    knot_times = _times("knot_times", knot_times)
    g = _generator(seed)
    st = truth.state(knot_times)
    K = knot_times.shape[0]
    z = torch.zeros(K, 3, dtype=_DT)
    out = {
        "R": st.R @ so3_exp(sigma_rot * torch.randn(K, 3, generator=g, dtype=_DT)),
        "p": st.p + sigma_pos * torch.randn(K, 3, generator=g, dtype=_DT),
        "omega": z.clone(),
        "v": z.clone(),
    }
    if prior == "wnoj":
        out.update(alpha=z.clone(), a=z.clone())
    return out

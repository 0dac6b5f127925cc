r"""Third-order (and second-order) Gaussian-process trajectories on SO(3)xR3 and SE(3) with closed-form kinematics.

A continuous-time trajectory :math:`X(t) = (R, \omega, \alpha, p, v, a)(t)` -- rotation (body to world), body
angular velocity and acceleration, world position, velocity and acceleration -- is represented by its values at
``K`` knots :math:`t_0 < \dots < t_{K-1}` and a Gauss-Markov motion prior between them (GPTR: T.-M. Nguyen et al.,
*GPTR: Gaussian Process Trajectory Representation for Continuous-Time Motion Estimation*, arXiv:2410.22931, 2024;
Barfoot, *State Estimation for Robotics*, 2017, sec. 3.4 (GP priors and interpolation on a Markov chain) and
sec. 11.3 (continuous-time estimation on SE(3) with a local variable)).

Local variable and kinematics (SO(3) part)
-------------------------------------------
Between knots :math:`a = k` and :math:`b = k + 1` the rotation is written :math:`R(t) = R_a \mathrm{Exp}(\theta(t))`
and the local variable :math:`\theta(t) \in \mathbb R^3` follows a linear GP, white noise on jerk (WNOJ, state
:math:`\gamma = (\theta, \dot\theta, \ddot\theta)`) or on acceleration (WNOA, :math:`\gamma = (\theta,
\dot\theta)`). Its derivatives are tied to the body rates by the exact ("closed-form") kinematics

.. math::
    \dot\theta = J_r^{-1}(\theta)\,\omega, \qquad
    \ddot\theta = J_r^{-1}(\theta)\,\alpha + H'(\theta, \omega)\,\dot\theta, \qquad
    \omega = J_r(\theta)\dot\theta, \qquad \alpha = J_r(\theta)\ddot\theta + H(\theta, \dot\theta)\,\dot\theta,

with :math:`H(\theta, v) = \partial (J_r(\theta) v)/\partial\theta` and :math:`H'(\theta, v) = \partial
(J_r^{-1}(\theta) v)/\partial\theta` (:func:`gpgeom.geometry.lie.so3_jr_dtheta`, ``so3_jr_inv_dtheta``). The
``kinematics="taylor"`` option uses the first-order approximation of earlier work (STEAM's constant-acceleration
prior, GPTR's "AP" baseline): :math:`H'(\theta, \omega) \approx -\tfrac12 \omega^\wedge`, i.e.
:math:`\ddot\theta \approx J_r^{-1}\alpha - \tfrac12\omega^\wedge\dot\theta` and
:math:`\alpha \approx J_r(\ddot\theta + \tfrac12 \omega^\wedge\dot\theta)`.

At the knots, :math:`\gamma_a = (0, \omega_a, \alpha_a)` and :math:`\gamma_b = (\theta_b, J_r^{-1}(\theta_b)
\omega_b, J_r^{-1}(\theta_b)\alpha_b + H'(\theta_b, \omega_b)\dot\theta_b)` with :math:`\theta_b =
\mathrm{Log}(R_a^\top R_b)`. The position part :math:`(p, v, a)` is an ordinary WNOJ/WNOA chain in the world frame
(SO(3)xR3), or the local variable is :math:`\xi = \mathrm{Log}(T_a^{-1} T(t)) \in \mathbb R^6` with body twist
:math:`\varpi = (\omega, R^\top v)` and its derivative :math:`\dot\varpi = (\alpha, R^\top a - \omega^\wedge R^\top
v)` (SE(3), the same formulas with the 6x6 :math:`J_r` of SE(3)).

Prior and interpolation (per 3-D channel, Kronecker with the channel's :math:`Q_c`)
------------------------------------------------------------------------------------
With :math:`\Phi(\Delta)_{ij} = \Delta^{j-i}/(j-i)!` and :math:`Q(\Delta)_{ij} = Q_c \Delta^{2N-1-i-j} /
((2N-1-i-j)(N-1-i)!(N-1-j)!)` (the transition of :class:`gpgeom.kernels.markov.WNOJKernel` /
:class:`~gpgeom.kernels.markov.WNOAKernel`, ``N = 3`` / ``2``):

* motion prior factor on each interval: :math:`e = Q(\Delta)^{-1/2}(\gamma_b - \Phi(\Delta)\gamma_a)` (and the same
  for :math:`(p, v, a)`), :math:`\Delta = t_b - t_a`;
* interpolation (the GP posterior mean given the two knots; Barfoot 2017, sec. 3.4.3):
  :math:`\gamma(t) = \Lambda(\tau)\gamma_a + \Psi(\tau)\gamma_b`, :math:`\Psi(\tau) = Q(\tau)\Phi(\Delta -
  \tau)^\top Q(\Delta)^{-1}`, :math:`\Lambda(\tau) = \Phi(\tau) - \Psi(\tau)\Phi(\Delta)`, :math:`\tau = t - t_a`,
  then :math:`R(t) = R_a\mathrm{Exp}(\theta(t))`, :math:`\omega(t) = J_r\dot\theta`, :math:`\alpha(t) = J_r\ddot\theta
  + H(\theta, \dot\theta)\dot\theta`.

Numerics: :math:`\Lambda, \Psi` are computed in the dimensionless time :math:`s = \tau/\Delta` (:math:`Q(s\Delta) =
\Delta D Q(s) D`, :math:`D = \operatorname{diag}(\Delta^{N-1-i})`, so :math:`\Psi = D\hat\Psi(s)D^{-1}`), which keeps
the inverse of :math:`Q` well conditioned for any knot spacing and makes :math:`\Psi(0) = 0` exactly: a measurement
exactly at a knot time is fine (no NaN; the reference implementation and GTSAM special-case it).

Estimation
----------
:meth:`Trajectory.fit` builds one :class:`gpgeom.engine.gauss_newton.Factor` per measurement set (each residual
block touching the two bracketing knots) plus the motion-prior factor, and runs the engine's Gauss-Newton /
Levenberg-Marquardt with the block-tridiagonal (bandwidth 1) solve: :math:`O(K)` per iteration. Knots are perturbed
as :math:`R \leftarrow R\,\mathrm{Exp}(\delta_R)`, the rest additively (tangent order :math:`(\delta_R,
\delta_\omega, \delta_\alpha, \delta_p, \delta_v, \delta_a)`, 18-D for WNOJ, 12-D for WNOA). For SO(3)xR3 every
Jacobian is hand-written (interpolation, prior and built-in measurements; checked against ``torch.func.jacfwd``
in the tests); for SE(3) the Jacobians come from forward-mode autodiff (``torch.func.jvp``; exact, but about ten
times slower per iteration than SO(3)xR3 on CPU), and the closed-form kinematic term
:math:`\partial(J_r^{-1}(\xi)\varpi)/\partial\xi\,\dot\xi` is a forward-mode directional derivative (exact).

Public API: :class:`SO3xR3Trajectory`, :class:`SE3Trajectory` (both :class:`Trajectory`), :class:`TrajectoryState`,
:class:`TrajectoryFitResult`; measurements in :mod:`gpgeom.models.trajectory_factors`.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from gpgeom._validation import check_increasing, check_option, check_positive, check_tensor
from gpgeom.engine.gauss_newton import Factor, gauss_newton
from gpgeom.errors import ConvergenceWarning
from gpgeom.geometry.lie import (
    check_rotation,
    check_unit_quaternion,
    quat_to_rotmat,
    rotmat_to_quat,
    se3_ad,
    se3_jr,
    se3_jr_inv,
    so3_exp,
    so3_hat,
    so3_jl,
    so3_jl_inv,
    so3_jr,
    so3_jr_dtheta,
    so3_jr_dtheta2,
    so3_jr_dtheta_dv,
    so3_jr_inv,
    so3_jr_inv_dtheta,
    so3_jr_inv_dtheta2,
    so3_jr_inv_dtheta_dv,
    so3_log,
    so3_vee,
)
from gpgeom.kernels.markov import WNOAKernel, WNOJKernel
from gpgeom.models.trajectory_factors import (
    COMPONENTS,
    CustomMeasurement,
    GlobalPrior,
    IMUMeasurement,
    KnotPrior,
    Measurement,
    PoseMeasurement,
    PositionMeasurement,
    RangeMeasurement,
    TDOAMeasurement,
    components,
)

__all__ = [
    "CustomMeasurement",
    "GlobalPrior",
    "IMUMeasurement",
    "KnotPrior",
    "Measurement",
    "PoseMeasurement",
    "PositionMeasurement",
    "RangeMeasurement",
    "SE3Trajectory",
    "SO3xR3Trajectory",
    "TDOAMeasurement",
    "Trajectory",
    "TrajectoryFitResult",
    "TrajectoryState",
    "local_kinematics",
]

_PRIORS = ("wnoj", "wnoa")
_KINEMATICS = ("closed_form", "taylor")
_FORMAT = "gpgeom.trajectory/1"


# ------------------------------------------------------------------------------------------------------------------
# Result containers
# ------------------------------------------------------------------------------------------------------------------
@dataclass
class TrajectoryState:
    r"""The state of a trajectory at ``n`` query times (shapes for a query ``t`` of shape ``n``; a query of shape
    ``...`` gives ``...`` in place of ``n``).

    Attributes:
        t: ``n`` times.
        R: ``n x 3 x 3`` rotations (body to world).
        omega, alpha: ``n x 3`` body angular velocity and acceleration (``alpha`` is ``None`` for WNOA).
        p, v, a: ``n x 3`` world position, velocity and acceleration (``a`` is ``None`` for WNOA).
        index: ``n`` index of the left bracketing knot ``a`` (the right one is ``index + 1``).
        jacobian_a, jacobian_b: ``n x d x s`` Jacobians of the state perturbation at ``t`` (rows, in the order
            ``(R, omega, alpha, p, v, a)``, ``d = 18`` for WNOJ, 12 for WNOA) with respect to the tangent
            perturbations of knots ``a`` and ``b`` (columns, ``s = d``), or ``None``.
        covariance: ``n x d x d`` posterior covariance of the state perturbation at ``t`` (Laplace approximation,
            including the GP's interpolation uncertainty), or ``None``.
    """

    t: Tensor
    R: Tensor
    omega: Tensor
    alpha: Tensor | None
    p: Tensor
    v: Tensor
    a: Tensor | None
    index: Tensor
    jacobian_a: Tensor | None = None
    jacobian_b: Tensor | None = None
    covariance: Tensor | None = None

    @property
    def quaternion(self) -> Tensor:
        r"""``n x 4`` unit quaternions ``(x, y, z, w)`` of :attr:`R` (scalar-last, ``w >= 0``)."""
        return rotmat_to_quat(self.R, validate=False)

    def as_dict(self) -> dict[str, Tensor]:
        r"""The components that are not ``None``, keyed ``"R", "omega", "alpha", "p", "v", "a"``."""
        return {c: getattr(self, c) for c in COMPONENTS if getattr(self, c) is not None}


@dataclass
class TrajectoryFitResult:
    r"""Summary of :meth:`Trajectory.fit`.

    Attributes:
        iterations: Number of linear solves of the Gauss-Newton/LM engine.
        converged: Whether a convergence test was met.
        message: Which test stopped the iteration.
        cost: Final cost (half the sum of squared whitened residuals, Huber-weighted where asked).
        cost_history: Cost at the start and after each accepted step.
        globals: Estimated global parameters (name -> tensor), e.g. IMU biases.
        global_covariance: ``g x g`` covariance of the stacked globals (with covariances), else ``None``.
        seconds: Wall time of the optimisation.
    """

    iterations: int
    converged: bool
    message: str
    cost: float
    cost_history: list[float]
    globals: dict[str, Tensor] = field(default_factory=dict)
    global_covariance: Tensor | None = None
    seconds: float = 0.0


@dataclass
class _Mix:
    index: Tensor  # M, left knot
    dt: Tensor  # M, knot spacing
    s: Tensor  # M, normalised time in [0, 1]
    Lam: Tensor  # M x N x N
    Psi: Tensor  # M x N x N
    first: Tensor  # U, position of the first time of each distinct interval
    inverse: Tensor  # M, distinct interval of each time (0..U-1)


def _mv(A: Tensor, x: Tensor) -> Tensor:
    return (A @ x.unsqueeze(-1)).squeeze(-1)


def _kron_eye(A: Tensor, c: int = 3) -> Tensor:
    r"""``M x n x m`` -> ``M x n x c x m x c``: the blocks of :math:`A \otimes I_c`."""
    eye = torch.eye(c, dtype=A.dtype, device=A.device)
    return A[:, :, None, :, None] * eye[None, None, :, None, :]


def _rowwise_jacobian(fn, args: tuple[Tensor, ...], nd: int) -> tuple[Tensor, Tensor]:
    r"""Value ``M x r`` and Jacobian ``M x r x nd`` of a row-wise function ``fn(d, *args) -> M x r`` at ``d = 0``.

    ``fn`` maps a per-row perturbation ``d`` (``M x nd``) and per-row arguments (first dimension ``M``) to per-row
    outputs, row ``m`` depending on row ``m`` only. Instead of ``jacfwd`` (a ``vmap`` over ``nd`` directions, whose
    per-operation overhead dominates for these small batched maps) the rows are replicated ``nd`` times, copy
    ``j`` of a row is perturbed along :math:`e_j`, and one forward-mode ``jvp`` gives every column.
    """
    M = args[0].shape[0]
    rep = [a.repeat_interleave(nd, dim=0) for a in args]
    ref = args[0]
    eye = torch.eye(nd, dtype=ref.dtype, device=ref.device).repeat(M, 1)
    out, tan = torch.func.jvp(lambda d: fn(d, *rep), (torch.zeros_like(eye),), (eye,))
    r = out.shape[-1]
    return out.reshape(M, nd, r)[:, 0], tan.reshape(M, nd, r).transpose(1, 2)


def _as_vec3(name: str, x: float | Sequence[float] | Tensor) -> Tensor:
    t = torch.as_tensor(x, dtype=torch.float64)
    if t.dim() == 0:
        t = t.expand(3)
    if t.shape != (3,):
        raise ValueError(f"`{name}` must be a positive float or a 3-vector (one per axis), got shape {tuple(t.shape)}.")
    if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
        raise ValueError(f"`{name}` must be finite and > 0, got {t.tolist()}.")
    return t.clone()


def _so3_local(Ra: Tensor, R: Tensor, omega: Tensor, alpha: Tensor | None, closed_form: bool, need_hw: bool = False):
    r"""``(R_a^T R, theta, J_r^{-1}(theta), theta_dot, H'(theta, omega) or None, theta_ddot or None)``."""
    Rab = Ra.mT @ R
    th = so3_log(Rab, validate=False)
    Ji = so3_jr_inv(th)
    thd = _mv(Ji, omega)
    Hw = so3_jr_inv_dtheta(th, omega) if need_hw or (alpha is not None and closed_form) else None
    thdd = None
    if alpha is not None:
        thdd = _mv(Ji, alpha) + (_mv(Hw, thd) if closed_form else 0.5 * torch.linalg.cross(thd, omega, dim=-1))
    return Rab, th, Ji, thd, Hw, thdd


def local_kinematics(
    R_a: Tensor, R: Tensor, omega: Tensor, alpha: Tensor | None = None, *, kinematics: str = "closed_form"
) -> tuple[Tensor, Tensor, Tensor | None]:
    r"""The local variable :math:`\theta = \mathrm{Log}(R_a^\top R)` and its time derivatives from body rates.

    .. math:: \dot\theta = J_r^{-1}(\theta)\,\omega, \qquad \ddot\theta = J_r^{-1}(\theta)\,\alpha +
       H'(\theta, \omega)\,\dot\theta \quad (\text{closed form; GPTR}),

    or :math:`\ddot\theta \approx J_r^{-1}\alpha - \tfrac12\omega^\wedge\dot\theta` (``"taylor"``). These are
    the values the trajectory uses at the right knot of every interval.

    Args:
        R_a: ``... x 3 x 3`` reference rotation. R: ``... x 3 x 3`` rotation. omega, alpha: ``... x 3`` body rates.
        kinematics: ``"closed_form"`` or ``"taylor"``.

    Returns:
        ``(theta, theta_dot, theta_ddot)``, each ``... x 3`` (``theta_ddot`` is ``None`` without ``alpha``).
    """
    check_option("kinematics", kinematics, _KINEMATICS)
    _, th, _, thd, _, thdd = _so3_local(R_a, R, omega, alpha, kinematics == "closed_form")
    return th, thd, thdd


# ------------------------------------------------------------------------------------------------------------------
# Base class
# ------------------------------------------------------------------------------------------------------------------
class Trajectory:
    r"""Continuous-time GP trajectory with knots carrying :math:`(R, \omega, \alpha, p, v, a)` (WNOJ) or
    :math:`(R, \omega, p, v)` (WNOA). Use :class:`SO3xR3Trajectory` or :class:`SE3Trajectory`.

    Args:
        knot_times: ``K`` strictly increasing knot times (``K >= 2``); see also :meth:`uniform`.
        prior: ``"wnoj"`` (white noise on jerk, third order, default) or ``"wnoa"`` (white noise on acceleration,
            second order: no acceleration states).
        kinematics: ``"closed_form"`` (exact :math:`\dot\theta, \ddot\theta`, default) or ``"taylor"`` (the
            first-order approximation :math:`H' \approx -\tfrac12\omega^\wedge`).
        qc_rot: Power spectral density of the rotational white noise (float or 3-vector, per axis).
        qc_pos: Same for the translational part.
        dtype: ``torch.float64`` (default) or ``torch.float32``.
        device: Where the knots live.

    Knots start at the identity rotation and zero rates; set them with :meth:`set_knots`.
    """

    pose_group = ""

    def __init__(
        self,
        knot_times: Tensor | Sequence[float],
        *,
        prior: str = "wnoj",
        kinematics: str = "closed_form",
        qc_rot: float | Sequence[float] | Tensor = 1.0,
        qc_pos: float | Sequence[float] | Tensor = 1.0,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ):
        if type(self) is Trajectory:
            raise TypeError("Trajectory is abstract; use SO3xR3Trajectory or SE3Trajectory.")
        check_option("prior", prior, _PRIORS)
        check_option("kinematics", kinematics, _KINEMATICS)
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"`dtype` must be torch.float32 or torch.float64, got {dtype}.")
        if not isinstance(knot_times, Tensor):
            knot_times = torch.as_tensor(knot_times, dtype=torch.float64)
        check_tensor("knot_times", knot_times, ndim=1, floating=True)
        if knot_times.shape[0] < 2:
            raise ValueError(f"`knot_times` must hold at least 2 knots, got {knot_times.shape[0]}.")
        check_increasing("knot_times", knot_times)
        self.prior = prior
        self.kinematics = kinematics
        self.order = 3 if prior == "wnoj" else 2
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else knot_times.device
        self._times = knot_times.detach().to(dtype=dtype, device=self.device).clone()
        self.qc_rot = _as_vec3("qc_rot", qc_rot).to(dtype=dtype, device=self.device)
        self.qc_pos = _as_vec3("qc_pos", qc_pos).to(dtype=dtype, device=self.device)
        K = self.num_knots
        X = torch.zeros(K, self.state_dim, dtype=dtype, device=self.device)
        X[:, :9] = torch.eye(3, dtype=dtype, device=self.device).reshape(9)
        self._knots = X
        self._init_constants()
        self.covariances_: Tensor | None = None
        self.cross_covariances_: Tensor | None = None
        self.result_: TrajectoryFitResult | None = None

    # ----- construction helpers -----
    @classmethod
    def uniform(cls, t_start: float, t_end: float, dt: float, **kwargs) -> Trajectory:
        r"""Knots ``t_start + k dt``, ``k = 0..K-1``, with the last knot at or after ``t_end``."""
        for nm, val in (("t_start", t_start), ("t_end", t_end)):
            if not isinstance(val, int | float) or isinstance(val, bool) or not math.isfinite(val):
                raise TypeError(f"`{nm}` must be a finite float, got {val!r}.")
        check_positive("dt", dt)
        if not t_end > t_start:
            raise ValueError(f"`t_end` ({t_end}) must exceed `t_start` ({t_start}).")
        K = int(math.ceil((t_end - t_start) / dt - 1e-9)) + 1
        times = t_start + dt * torch.arange(K, dtype=torch.float64)
        return cls(times, **kwargs)

    def _init_constants(self) -> None:
        r"""Normalised transition matrices (unit spacing, unit :math:`Q_c`) from the engine's kernel."""
        N = self.order
        kern = (WNOJKernel() if N == 3 else WNOAKernel()).double()
        self._unit_kernel = kern
        qc = float(kern.qc.detach())
        one = torch.ones(1, dtype=torch.float64)
        Phi1, Q1 = kern.transition(one)
        Phi1, Q1 = Phi1[0].detach(), Q1[0].detach() / qc
        idx = torch.arange(N, dtype=torch.float64)
        self._c = {
            "Phi1": Phi1,
            "Q1inv": torch.linalg.inv(Q1),
            "Linv": torch.linalg.inv(torch.linalg.cholesky(Q1)),
            "E": idx[None, :] - idx[:, None],  # j - i
            "col": N - 1 - idx,  # N - 1 - j
            "fact": torch.tensor(
                [[1.0 / math.factorial(max(j - i, 0)) for j in range(N)] for i in range(N)], dtype=torch.float64
            ),
        }
        self._cache: dict = {}

    def _const(self, name: str, dtype=None, device=None) -> Tensor:
        dtype = dtype or self.dtype
        device = device or self.device
        key = (name, dtype, str(device))
        if key not in self._cache:
            self._cache[key] = self._c[name].to(dtype=dtype, device=device)
        return self._cache[key]

    # ----- sizes and views -----
    @property
    def num_knots(self) -> int:
        r"""``K``."""
        return int(self._times.shape[0])

    @property
    def state_dim(self) -> int:
        r"""Numbers stored per knot: 9 (R) + 3 (N - 1) + 3 N (24 for WNOJ, 18 for WNOA)."""
        return 9 + 3 * (self.order - 1) + 3 * self.order

    @property
    def tangent_dim(self) -> int:
        r"""``s``: 18 for WNOJ, 12 for WNOA."""
        return 6 * self.order

    @property
    def state_components(self) -> tuple[str, ...]:
        r"""``("R", "omega", "alpha", "p", "v", "a")`` (WNOJ) or ``("R", "omega", "p", "v")`` (WNOA)."""
        return components(self.order - 1)

    @property
    def knot_times(self) -> Tensor:
        r"""``K`` knot times."""
        return self._times

    @property
    def knots(self) -> Tensor:
        r"""``K x state_dim`` stored knot states ``[vec(R) (row-major), omega, (alpha), p, v, (a)]``."""
        return self._knots

    def _slices(self) -> dict[str, slice]:
        """Tangent slices of each component (the storage after the 9 entries of R has the same layout, shifted)."""
        names = self.state_components
        return {c: slice(3 * i, 3 * i + 3) for i, c in enumerate(names)}

    def _unpack(self, X: Tensor) -> dict[str, Tensor]:
        r"""``... x state_dim`` -> dict of components (``R``: ``... x 3 x 3``, others ``... x 3``)."""
        out = {"R": X[..., :9].reshape(*X.shape[:-1], 3, 3)}
        rest = X[..., 9:]
        for i, c in enumerate(self.state_components[1:]):
            out[c] = rest[..., 3 * i : 3 * i + 3]
        return out

    def _pack(self, st: dict[str, Tensor]) -> Tensor:
        R = st["R"]
        parts = [R.reshape(*R.shape[:-2], 9)] + [st[c] for c in self.state_components[1:]]
        return torch.cat(parts, dim=-1)

    def __getattr__(self, name: str):
        if name in ("R", "omega", "alpha", "p", "v", "a"):
            comps = self.__dict__.get("_knots")
            if comps is None:
                raise AttributeError(name)
            st = self._unpack(self._knots)
            if name not in st:
                raise AttributeError(f"A trajectory with prior={self.prior!r} has no `{name}` knots.")
            return st[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def quaternion(self) -> Tensor:
        r"""``K x 4`` knot rotations as unit quaternions ``(x, y, z, w)``."""
        return rotmat_to_quat(self._unpack(self._knots)["R"], validate=False)

    def retract(self, X: Tensor, dX: Tensor) -> Tensor:
        r""":math:`R \leftarrow R\,\mathrm{Exp}(\delta_R)`, the rest additive (``X``: ``... x state_dim``,
        ``dX``: ``... x tangent_dim``)."""
        R = X[..., :9].reshape(*X.shape[:-1], 3, 3) @ so3_exp(dX[..., :3])
        return torch.cat([R.reshape(*X.shape[:-1], 9), X[..., 9:] + dX[..., 3:]], dim=-1)

    def set_knots(self, *, R=None, q=None, omega=None, alpha=None, p=None, v=None, a=None) -> Trajectory:
        r"""Set (some of) the knot states; the others are kept.

        Args:
            R: ``K x 3 x 3`` rotations (checked orthonormal), or ``q``: ``K x 4`` unit quaternions
                ``(x, y, z, w)``.
            omega, alpha, p, v, a: ``K x 3`` (``alpha`` and ``a`` only for ``prior="wnoj"``).

        Returns:
            ``self``.
        """
        K = self.num_knots
        if R is not None and q is not None:
            raise ValueError("Give `R` or `q`, not both.")
        st = self._unpack(self._knots.clone())
        if q is not None:
            check_tensor("q", q, shape=(4,), floating=True)
            if q.shape != (K, 4):
                raise ValueError(f"`q` must have shape ({K}, 4) (one unit quaternion per knot), got {tuple(q.shape)}.")
            check_unit_quaternion(q, name="q")
            R = quat_to_rotmat(q.to(self.dtype), validate=False)
        if R is not None:
            check_tensor("R", R, shape=(3, 3), floating=True)
            if R.shape != (K, 3, 3):
                raise ValueError(f"`R` must have shape ({K}, 3, 3) (one rotation per knot), got {tuple(R.shape)}.")
            check_rotation(R, name="R")
            st["R"] = R.to(dtype=self.dtype, device=self.device)
        for name, val in (("omega", omega), ("alpha", alpha), ("p", p), ("v", v), ("a", a)):
            if val is None:
                continue
            if name not in st:
                raise ValueError(f"`{name}` is not a knot state of a prior={self.prior!r} trajectory.")
            check_tensor(name, val, floating=True)
            if val.shape != (K, 3):
                raise ValueError(f"`{name}` must have shape ({K}, 3), got {tuple(val.shape)}.")
            st[name] = val.to(dtype=self.dtype, device=self.device)
        self._knots = self._pack(st)
        self.covariances_ = self.cross_covariances_ = None
        return self

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Trajectory:
        r"""Move the trajectory (knots, fitted covariances) to another dtype and/or device, in place."""
        if dtype is not None and dtype not in (torch.float32, torch.float64):
            raise TypeError(f"`dtype` must be torch.float32 or torch.float64, got {dtype}.")
        self.dtype = dtype or self.dtype
        self.device = torch.device(device) if device is not None else self.device
        kw = {"dtype": self.dtype, "device": self.device}
        self._times = self._times.to(**kw)
        self._knots = self._knots.to(**kw)
        self.qc_rot, self.qc_pos = self.qc_rot.to(**kw), self.qc_pos.to(**kw)
        if self.covariances_ is not None:
            self.covariances_ = self.covariances_.to(**kw)
            self.cross_covariances_ = self.cross_covariances_.to(**kw)
        return self

    def prior_kernel(self, part: str = "pos") -> WNOJKernel | WNOAKernel:
        r"""The engine kernel of one part of the prior, ``batch_shape = (3,)`` (one per axis), with this
        trajectory's :math:`Q_c` and start time: ``part="pos"`` is the prior of :math:`p(t)` per world axis
        (SO(3)xR3), ``"rot"`` that of the local variable :math:`\theta`. Its ``P0`` is zero (set it to model the
        first knot's prior)."""
        check_option("part", part, ("pos", "rot"))
        cls = WNOJKernel if self.order == 3 else WNOAKernel
        k = cls(t0=float(self._times[0]), batch_shape=torch.Size([3])).to(torch.float64)
        k.qc = (self.qc_pos if part == "pos" else self.qc_rot).detach().to(torch.float64).cpu()
        return k

    # ----- interpolation coefficients -----
    def _locate(self, t: Tensor, name: str) -> _Mix:
        r"""Bracketing knots and :math:`\Lambda(\tau), \Psi(\tau)` (``M x N x N``) for times ``t`` (``M``)."""
        tk = self._times
        t = t.to(dtype=self.dtype, device=self.device)
        lo, hi = tk[0], tk[-1]
        bad = (t < lo) | (t > hi)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"`{name}` has {int(bad.sum())} time(s) outside the knot span [{float(lo):.6g}, {float(hi):.6g}] "
                f"(first: index {i}, t = {float(t[i]):.9g}); extend the knots or drop those measurements."
            )
        K = self.num_knots
        k = (torch.searchsorted(tk, t, right=True) - 1).clamp(0, K - 2)
        dt = tk[k + 1] - tk[k]
        s = ((t - tk[k]) / dt).clamp(0.0, 1.0)
        Lh, Ph = self._mix_hat(s)
        scale = dt[:, None, None] ** self._const("E")
        uniq, inv = torch.unique(k, return_inverse=True)
        M = k.shape[0]
        first = torch.full((uniq.shape[0],), M, dtype=torch.long, device=k.device)
        first = first.scatter_reduce(0, inv, torch.arange(M, device=k.device), reduce="amin")
        return _Mix(k, dt, s, Lh * scale, Ph * scale, first, inv)

    def _unit_interp(self, s: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""For unit spacing at fractions ``s`` (``M``), in float64 on the unit kernel's device:
        :math:`\hat\Phi(s), \hat\Phi(1-s), \hat Q(s)` (per unit :math:`Q_c`) and
        :math:`\hat\Psi(s) = \hat Q(s)\hat\Phi(1-s)^\top\hat Q(1)^{-1}`, each ``M x N x N``."""
        kern = self._unit_kernel
        qc = kern.qc.detach()
        # the unit-spacing kernel lives on the CPU in float64 (its coefficients are tiny): evaluate there
        s64 = s.detach().to(dtype=torch.float64, device=qc.device)
        Phi_s, Q_s = kern.transition(s64)
        Phi_r, _ = kern.transition(1.0 - s64)
        Phi_s, Phi_r, Q_s = Phi_s.detach(), Phi_r.detach(), Q_s.detach() / qc
        Psi = Q_s @ Phi_r.mT @ self._const("Q1inv", torch.float64, s64.device)
        return Phi_s, Phi_r, Q_s, Psi

    def _mix_hat(self, s: Tensor) -> tuple[Tensor, Tensor]:
        r""":math:`\hat\Lambda(s), \hat\Psi(s)` (``M x N x N``) for unit spacing, from the kernel's transition."""
        Phi_s, _, _, Psi = self._unit_interp(s)
        Lam = Phi_s - Psi @ self._const("Phi1", torch.float64, Psi.device)
        return Lam.to(dtype=self.dtype, device=s.device), Psi.to(dtype=self.dtype, device=s.device)

    def _cond_cov_hat(self, s: Tensor, dt: Tensor) -> Tensor:
        r"""Interpolation covariance given both knots (per unit :math:`Q_c`), ``M x N x N``:
        :math:`Q(\tau) - \Psi(\tau)\Phi(\Delta-\tau)Q(\tau) = \Delta D[\hat Q(s) - \hat\Psi\hat\Phi(1-s)\hat Q(s)]D`."""
        _, Phi_r, Q_s, Psi = self._unit_interp(s)
        C = Q_s - Psi @ Phi_r @ Q_s
        C = 0.5 * (C + C.mT)
        N = self.order
        col = self._const("col", torch.float64, C.device)
        d64 = dt.detach().to(dtype=torch.float64, device=C.device)
        Dpow = d64[:, None] ** col  # M x N: Delta^(N-1-i)
        out = d64[:, None, None] * Dpow[:, :, None] * C * Dpow[:, None, :]
        return out.to(dtype=self.dtype, device=s.device)[:, :N, :N]

    def _prior_mats(self, dt: Tensor) -> tuple[Tensor, Tensor]:
        r""":math:`\Phi(\Delta)` and the whitening :math:`W = \Delta^{-1/2}\hat L^{-1}D^{-1}` (``M x N x N``)."""
        E = self._const("E")
        Phi = torch.where(E >= 0, dt[:, None, None] ** E * self._const("fact"), torch.zeros_like(E))
        W = self._const("Linv") * dt[:, None, None] ** (-self._const("col"))[None, None, :] / dt.sqrt()[:, None, None]
        return Phi, W

    # ----- to be provided by the pose group -----
    def _interp(self, Xa: Tensor, Xb: Tensor, mix: _Mix, level: int, jac: bool, want_G: bool = False):
        raise NotImplementedError

    def _prior(self, Xa: Tensor, Xb: Tensor, dt: Tensor, jac: bool):
        raise NotImplementedError

    def _gamma_noise(self, C: Tensor) -> Tensor:
        raise NotImplementedError

    # ----- public evaluation -----
    def interpolate(
        self, t: Tensor | float | Sequence[float], *, jacobians: bool = False, covariance: bool = False
    ) -> TrajectoryState:
        r"""State, velocities and accelerations at times ``t`` (any shape ``...``), with optional Jacobians
        with respect to the two bracketing knots and the posterior covariance.

        Args:
            t: Times inside the knot span (a time equal to a knot time is exact: :math:`\Psi = 0`).
            jacobians: Also return ``jacobian_a``/``jacobian_b`` (``... x d x s``, see :class:`TrajectoryState`).
            covariance: Also return the posterior covariance ``... x d x d`` of the state perturbation at ``t``
                (needs a previous ``fit(..., compute_covariances=True)``):
                :math:`[J_a\ J_b]\,\Sigma_{ab}\,[J_a\ J_b]^\top + G\,(Q_{\tau|ab} \otimes Q_c)\,G^\top`, where
                :math:`Q_{\tau|ab} = Q(\tau) - \Psi(\tau)\Phi(\Delta-\tau)Q(\tau)` is the GP's uncertainty between
                known knots and :math:`G = \partial X(t)/\partial\gamma(t)`.
        """
        if not isinstance(t, Tensor):
            t = torch.as_tensor(t, dtype=self.dtype)
        check_tensor("t", t, floating=True)
        shape = t.shape
        tf = t.reshape(-1)
        if covariance and self.covariances_ is None:
            raise ValueError(
                "`covariance=True` needs the knots' posterior covariances: call fit(..., compute_covariances=True) "
                "first."
            )
        mix = self._locate(tf, "t")
        Xa, Xb = self._knots[mix.index], self._knots[mix.index + 1]
        level = self.order - 1
        st, Ja, Jb, G = self._interp(Xa, Xb, mix, level, jacobians or covariance, want_G=covariance)
        cov = None
        if covariance:
            k = mix.index
            S_aa, S_bb = self.covariances_[k], self.covariances_[k + 1]
            S_ab = self.cross_covariances_[k, 0]
            cov = Ja @ S_aa @ Ja.mT + Jb @ S_bb @ Jb.mT
            cross = Ja @ S_ab @ Jb.mT
            cov = cov + cross + cross.mT
            C = self._cond_cov_hat(mix.s, mix.dt)
            cov = cov + G @ self._gamma_noise(C) @ G.mT
            cov = 0.5 * (cov + cov.mT)
        d = 3 * len(self.state_components)

        def rs(x, tail):
            return None if x is None else x.reshape(*shape, *tail)

        return TrajectoryState(
            t=t.to(dtype=self.dtype, device=self.device),
            R=rs(st["R"], (3, 3)),
            omega=rs(st["omega"], (3,)),
            alpha=rs(st.get("alpha"), (3,)),
            p=rs(st["p"], (3,)),
            v=rs(st["v"], (3,)),
            a=rs(st.get("a"), (3,)),
            index=mix.index.reshape(shape),
            jacobian_a=rs(Ja, (d, self.tangent_dim)) if jacobians else None,
            jacobian_b=rs(Jb, (d, self.tangent_dim)) if jacobians else None,
            covariance=rs(cov, (d, d)),
        )

    def predict(self, t: Tensor | float | Sequence[float], *, covariance: bool = False) -> TrajectoryState:
        r"""Alias of :meth:`interpolate` without Jacobians (scikit-learn style)."""
        return self.interpolate(t, covariance=covariance)

    def prior_residuals(self) -> Tensor:
        r"""``(K - 1) x 6N`` whitened motion-prior residuals of the current knots (useful for diagnostics)."""
        X = self._knots
        return self._prior(X[:-1], X[1:], self._times[1:] - self._times[:-1], jac=False)[0]

    # ----- estimation -----
    def _globals_layout(self, ms: list[Measurement]) -> tuple[dict[str, slice], Tensor]:
        init: dict[str, Tensor] = {}
        for m in ms:
            for name, val in m.global_params().items():
                val = val.to(dtype=self.dtype, device=self.device).reshape(-1)
                if name in init and init[name].shape != val.shape:
                    raise ValueError(
                        f"Global parameter {name!r} has size {init[name].shape[0]} in one measurement and "
                        f"{val.shape[0]} in {m.name!r}."
                    )
                init.setdefault(name, val)
        layout, off = {}, 0
        for name, val in init.items():
            layout[name] = slice(off, off + val.shape[0])
            off += val.shape[0]
        g0 = torch.cat(list(init.values())) if init else torch.zeros(0, dtype=self.dtype, device=self.device)
        return layout, g0

    def _check_measurement(self, m: Measurement) -> None:
        if not isinstance(m, Measurement):
            raise TypeError(
                f"`measurements` must hold gpgeom trajectory measurements (PoseMeasurement, RangeMeasurement, ...), "
                f"got {type(m).__name__}."
            )
        avail = set(self.state_components)
        need = set(m.components)
        if not need <= avail:
            raise ValueError(
                f"Measurement {m.name!r} needs the state components {sorted(need - avail)}, which a "
                f"prior={self.prior!r} trajectory does not have; use prior='wnoj'."
            )

    def build_factors(
        self, measurements: Sequence[Measurement], *, chunk_size: int = 16384
    ) -> tuple[list[Factor], Tensor, dict[str, slice]]:
        r"""The engine factors of the motion prior and of the measurements (a measurement with more than
        ``chunk_size`` blocks is split into several factors, which bounds the engine's memory).

        Returns:
            ``(factors, g0, layout)``: a list of :class:`~gpgeom.engine.gauss_newton.Factor` (the prior first),
            the initial global parameters ``g`` and their layout (name -> slice of ``g``). Feed them to
            :func:`~gpgeom.engine.gauss_newton.gauss_newton` with ``retract=self.retract``,
            ``tangent_dim=self.tangent_dim`` and ``bandwidth=1``.
        """
        if isinstance(measurements, Measurement):
            measurements = [measurements]
        ms = list(measurements)
        for m in ms:
            self._check_measurement(m)
        ms = [m.to(self.dtype, self.device) for m in ms]
        layout, g0 = self._globals_layout(ms)
        factors = [self._prior_factor()]
        for m in ms:
            for part in self._chunks(m, chunk_size):
                factors.append(self._factor(part, layout, g0.shape[0]))
        return factors, g0, layout

    @staticmethod
    def _chunks(m: Measurement, size: int) -> list[Measurement]:
        r"""Split a time-attached measurement into pieces of at most ``size`` blocks (bounds the engine's memory,
        which holds ``M x 2 x 2 x s x s`` Hessian blocks per factor)."""
        if m.attach != "time" or m.num_blocks <= size:
            return [m]
        M = m.num_blocks
        parts = []
        for lo in range(0, M, size):
            sl = slice(lo, min(lo + size, M))
            part = object.__new__(type(m))
            for k, v in m.__dict__.items():
                part.__dict__[k] = v[sl] if isinstance(v, Tensor) and v.dim() >= 1 and v.shape[0] == M else v
            part.name = f"{m.name}[{lo}:{sl.stop}]"
            parts.append(part)
        return parts

    def _prior_factor(self) -> Factor:
        K = self.num_knots
        idx = torch.stack([torch.arange(K - 1), torch.arange(1, K)], 1).to(self.device)
        dt = self._times[1:] - self._times[:-1]

        def residual(X, G):
            return self._prior(X[:, 0], X[:, 1], dt, jac=False)[0]

        def jacobian(X, G):
            return self._prior(X[:, 0], X[:, 1], dt, jac=True)[1], None

        return Factor(idx, residual, jacobian, name="motion prior")

    def _factor(self, m: Measurement, layout: dict[str, slice], g: int) -> Factor:
        s = self.tangent_dim

        def params(G):
            return {name: G[sl] for name, sl in layout.items()}

        def scatter_globals(Jp: dict, M: int, r: int, ref: Tensor) -> Tensor:
            Jg = ref.new_zeros(M, r, g)
            for name, J in Jp.items():
                Jg[:, :, layout[name]] = J
            return Jg

        if m.attach == "global":
            idx = torch.zeros(1, 1, dtype=torch.long, device=self.device)

            def residual(X, G):
                return m.residual({}, params(G))

            def jacobian(X, G):
                e, _, Jp = m.linearize({}, params(G))
                return X.new_zeros(1, e.shape[1], 1, s), scatter_globals(Jp, 1, e.shape[1], X)

            return Factor(idx, residual, jacobian, robust=m.robust, robust_threshold=m.robust_threshold, name=m.name)

        if m.attach == "knot":
            K = self.num_knots
            ind = m.index.to(self.device)
            if bool(((ind < -K) | (ind >= K)).any()):
                raise ValueError(f"{m.name}: knot `index` must lie in [-{K}, {K - 1}], got {m.index.tolist()}.")
            ind = ind % K
            sl = self._slices()
            cols = torch.cat([torch.arange(sl[c].start, sl[c].stop) for c in m.components]).to(self.device)

            def residual(X, G):
                return m.residual(self._unpack(X[:, 0]), params(G))

            def jacobian(X, G):
                e, Js, Jp = m.linearize(self._unpack(X[:, 0]), params(G))
                M, r = e.shape
                Jx = X.new_zeros(M, r, 1, s)
                Jx[:, :, 0, cols] = Js
                return Jx, scatter_globals(Jp, M, r, X)

            return Factor(
                ind[:, None], residual, jacobian, robust=m.robust, robust_threshold=m.robust_threshold, name=m.name
            )

        mix = self._locate(m.t, f"{m.name}.t")
        idx = torch.stack([mix.index, mix.index + 1], 1)
        level = m.level

        def residual(X, G):
            st = self._interp(X[:, 0], X[:, 1], mix, level, jac=False)[0]
            return m.residual(st, params(G))

        def jacobian(X, G):
            st, Ja, Jb, _ = self._interp(X[:, 0], X[:, 1], mix, level, jac=True)
            e, Js, Jp = m.linearize(st, params(G))
            Jx = torch.stack([Js @ Ja, Js @ Jb], dim=2)
            return Jx, scatter_globals(Jp, e.shape[0], e.shape[1], X)

        return Factor(idx, residual, jacobian, robust=m.robust, robust_threshold=m.robust_threshold, name=m.name)

    def fit(
        self,
        measurements: Sequence[Measurement] | Measurement,
        *,
        max_iter: int = 50,
        method: str = "lm",
        compute_covariances: bool = False,
        ftol: float | None = None,
        xtol: float | None = None,
        gtol: float | None = None,
        warn: bool = True,
        chunk_size: int = 16384,
    ) -> Trajectory:
        r"""MAP estimate of the knots (and global parameters) from measurements, starting at the current knots.

        Minimises :math:`\sum_k \lVert e^{\text{prior}}_k\rVert^2/2 + \sum_m \rho(\lVert e_m\rVert)` with the
        engine's Gauss-Newton (``method="gn"``) or Levenberg-Marquardt (``"lm"``, default) on the block-tridiagonal
        normal matrix, :math:`O(K)` per iteration (:func:`gpgeom.engine.gauss_newton.gauss_newton`).

        Args:
            measurements: A measurement or a sequence of them (:mod:`gpgeom.models.trajectory_factors`).
            max_iter: Maximum number of linear solves.
            method: ``"lm"`` or ``"gn"``.
            compute_covariances: Also compute the knots' marginal covariances (:attr:`covariances_`,
                ``K x s x s``; :attr:`cross_covariances_`, ``K x 1 x s x s`` between knots ``k`` and ``k + 1``),
                which needs an anchored problem (e.g. absolute measurements or a :class:`KnotPrior`).
            ftol, xtol, gtol: Convergence tolerances of the engine (defaults ``1e-10``, ``1e-9``, engine default
                in float64; ``1e-5``, ``1e-5``, engine default in float32, where the banded normal equations of a
                fine knot grid are too ill-conditioned for a tighter test).
            warn: Issue a :class:`~gpgeom.errors.ConvergenceWarning` when ``max_iter`` is reached.
            chunk_size: Measurements with more blocks are split into several engine factors (memory bound).

        Returns:
            ``self``, with :attr:`result_` (:class:`TrajectoryFitResult`).
        """
        check_positive("max_iter", max_iter, integer=True)
        check_option("method", method, ("lm", "gn"))
        if isinstance(measurements, Measurement):
            measurements = [measurements]
        if not isinstance(measurements, Sequence) or len(measurements) == 0:
            raise ValueError("`measurements` must be a non-empty sequence of trajectory measurements.")
        check_positive("chunk_size", chunk_size, integer=True)
        factors, g0, layout = self.build_factors(measurements, chunk_size=chunk_size)
        if ftol is None:
            ftol = 1e-10 if self.dtype == torch.float64 else 1e-5
        if xtol is None:
            xtol = 1e-9 if self.dtype == torch.float64 else 1e-5
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            if not warn:
                warnings.simplefilter("ignore", ConvergenceWarning)
            res = gauss_newton(
                self._knots,
                factors,
                global_params=g0 if g0.numel() else None,
                retract=self.retract,
                tangent_dim=self.tangent_dim,
                bandwidth=1,
                method=method,
                max_iter=max_iter,
                ftol=ftol,
                xtol=xtol,
                gtol=gtol,
                compute_covariances=compute_covariances,
            )
        seconds = time.perf_counter() - t0
        X = res.states
        R = X[:, :9].reshape(-1, 3, 3)
        q = rotmat_to_quat(R, validate=False)
        R = quat_to_rotmat(q / q.norm(dim=-1, keepdim=True), validate=False)  # remove round-off drift
        self._knots = torch.cat([R.reshape(-1, 9), X[:, 9:]], dim=1)
        self.covariances_ = res.covariances
        self.cross_covariances_ = res.cross_covariances
        gl = {name: res.globals[sl].clone() for name, sl in layout.items()}
        self.result_ = TrajectoryFitResult(
            iterations=res.iterations,
            converged=res.converged,
            message=res.message,
            cost=res.cost,
            cost_history=list(res.cost_history),
            globals=gl,
            global_covariance=res.global_covariance,
            seconds=seconds,
        )
        return self

    # ----- persistence -----
    def state_dict(self) -> dict:
        r"""Configuration and tensors (CPU) of this trajectory; :meth:`from_state_dict` inverts it."""

        def cpu(x):
            return None if x is None else x.detach().cpu()

        return {
            "format": _FORMAT,
            "class": type(self).__name__,
            "config": {"prior": self.prior, "kinematics": self.kinematics, "dtype": str(self.dtype).split(".")[-1]},
            "knot_times": cpu(self._times),
            "knots": cpu(self._knots),
            "qc_rot": cpu(self.qc_rot),
            "qc_pos": cpu(self.qc_pos),
            "covariances": cpu(self.covariances_),
            "cross_covariances": cpu(self.cross_covariances_),
            "globals": {} if self.result_ is None else {k: cpu(v) for k, v in self.result_.globals.items()},
        }

    @classmethod
    def from_state_dict(cls, sd: dict, device: torch.device | str | None = None) -> Trajectory:
        r"""Rebuild a trajectory from :meth:`state_dict`."""
        if not isinstance(sd, dict) or sd.get("format") != _FORMAT:
            raise ValueError(f"Not a gpgeom trajectory state dict (expected format {_FORMAT!r}).")
        classes = {"SO3xR3Trajectory": SO3xR3Trajectory, "SE3Trajectory": SE3Trajectory}
        target = classes.get(sd["class"])
        if target is None:
            raise ValueError(f"Unknown trajectory class {sd['class']!r}; expected one of {list(classes)}.")
        if cls is not Trajectory and not issubclass(target, cls):
            raise TypeError(f"The file holds a {sd['class']}, not a {cls.__name__}; load it with Trajectory.load.")
        cfg = sd["config"]
        dtype = getattr(torch, cfg["dtype"])
        traj = target(
            sd["knot_times"],
            prior=cfg["prior"],
            kinematics=cfg["kinematics"],
            qc_rot=sd["qc_rot"],
            qc_pos=sd["qc_pos"],
            dtype=dtype,
            device=device,
        )
        traj._knots = sd["knots"].to(dtype=dtype, device=traj.device)
        if sd.get("covariances") is not None:
            traj.covariances_ = sd["covariances"].to(dtype=dtype, device=traj.device)
            traj.cross_covariances_ = sd["cross_covariances"].to(dtype=dtype, device=traj.device)
        if sd.get("globals"):
            traj.result_ = TrajectoryFitResult(0, True, "loaded", float("nan"), [], globals=dict(sd["globals"]))
        return traj

    def save(self, path: str | os.PathLike) -> None:
        r"""``torch.save`` of :meth:`state_dict` (configuration, knot times, knots, :math:`Q_c`, covariances)."""
        torch.save(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str | None = None) -> Trajectory:
        r"""Load a trajectory written by :meth:`save` (``torch.load(weights_only=True)``)."""
        sd = torch.load(path, map_location="cpu", weights_only=True)
        return cls.from_state_dict(sd, device=device)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(K={self.num_knots}, span=[{float(self._times[0]):.4g}, "
            f"{float(self._times[-1]):.4g}], prior={self.prior!r}, kinematics={self.kinematics!r}, "
            f"dtype={self.dtype})"
        )


# ------------------------------------------------------------------------------------------------------------------
# SO(3) x R3: hand-written Jacobians
# ------------------------------------------------------------------------------------------------------------------
class SO3xR3Trajectory(Trajectory):
    r"""GP trajectory on SO(3)xR3: a rotational chain in the local variable :math:`\theta` and an independent
    world-frame position chain (GPTR's ``SO3xR3`` pose group). See :class:`Trajectory` for the arguments and the
    module docstring for the equations. All Jacobians are hand-written (closed form).

    Example:
        >>> traj = SO3xR3Trajectory.uniform(0.0, 10.0, 0.1, qc_rot=10.0, qc_pos=10.0)
        >>> traj.fit([RangeMeasurement(t, anchors, ranges, tag_offset=offsets, sigma=0.05)])  # doctest: +SKIP
        >>> state = traj.interpolate(torch.linspace(0, 10, 1001, dtype=torch.float64))  # doctest: +SKIP
    """

    pose_group = "so3xr3"

    def _gamma_b(self, Ra: Tensor, Rb: Tensor, wb: Tensor, ab: Tensor | None, jac: bool):
        r""":math:`\gamma_b` (``M x N x 3``) and its Jacobians ``M x N x 3 x N x 3`` with respect to the rotational
        tangent :math:`(\delta_R, \delta_\omega, \delta_\alpha)` of knot ``a`` and of knot ``b``.

        :math:`\partial\theta_b/\partial\delta_{R_a} = -J_r^{-1}(\theta_b) R_{ab}^\top`,
        :math:`\partial\theta_b/\partial\delta_{R_b} = J_r^{-1}(\theta_b)`,
        :math:`\partial\dot\theta_b/\partial\theta_b = H'(\theta_b,\omega_b)`,
        :math:`\partial\ddot\theta_b/\partial\theta_b = H'(\theta_b,\alpha_b) + L'_{11}(\theta_b,\omega_b,
        \dot\theta_b) + H'(\theta_b,\omega_b)^2`, :math:`\partial\ddot\theta_b/\partial\omega_b =
        L'_{12}(\theta_b,\omega_b,\dot\theta_b) + H'(\theta_b,\omega_b)J_r^{-1}(\theta_b)`.
        """
        N = self.order
        cf = self.kinematics == "closed_form"
        Rab, th, Ji, thd, Hw, thdd = _so3_local(Ra, Rb, wb, ab if N == 3 else None, cf, need_hw=jac)
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
            if cf:
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

    def _gamma_a(self, A: dict[str, Tensor]) -> Tensor:
        rates = [A["omega"]] + ([A["alpha"]] if self.order == 3 else [])
        return torch.stack([torch.zeros_like(A["omega"])] + rates, dim=1)

    def _interp(self, Xa, Xb, mix, level, jac, want_G=False):
        r"""Interpolated state (dict) and, with ``jac``, ``J_a, J_b`` (``M x 6(level+1) x s``) and ``G``."""
        N = self.order
        if level > N - 1:
            raise ValueError(f"Accelerations need prior='wnoj' (this trajectory has prior={self.prior!r}).")
        cf = self.kinematics == "closed_form"
        A, B = self._unpack(Xa), self._unpack(Xb)
        Lam, Psi = mix.Lam, mix.Psi
        # gamma_b and its Jacobians depend on the interval only: evaluate them once per distinct interval
        Bu = self._unpack(Xb[mix.first])
        gb, Jgb_a, Jgb_b = self._gamma_b(A["R"][mix.first], Bu["R"], Bu["omega"], Bu.get("alpha"), jac)
        gb = gb[mix.inverse]
        if jac:
            Jgb_a, Jgb_b = Jgb_a[mix.inverse], Jgb_b[mix.inverse]
        ga = self._gamma_a(A)
        gt = Lam @ ga + Psi @ gb
        th = gt[:, 0]
        E = so3_exp(th)
        out = {"R": A["R"] @ E}
        pos_a = torch.stack([A[c] for c in ("p", "v", "a")[:N]], dim=1)
        pos_b = torch.stack([B[c] for c in ("p", "v", "a")[:N]], dim=1)
        pt = Lam[:, : level + 1] @ pos_a + Psi[:, : level + 1] @ pos_b
        Jr = so3_jr(th) if (level >= 1 or jac) else None
        if level >= 1:
            thd = gt[:, 1]
            out["omega"] = _mv(Jr, thd)
        if level >= 2:
            thdd = gt[:, 2]
            if cf:
                Hd = so3_jr_dtheta(th, thd)
                out["alpha"] = _mv(Jr, thdd) + _mv(Hd, thd)
            else:
                u = thdd + 0.5 * torch.linalg.cross(out["omega"], thd, dim=-1)
                out["alpha"] = _mv(Jr, u)
        for i, c in enumerate(("p", "v", "a")[: level + 1]):
            out[c] = pt[:, i]
        if not jac:
            return out, None, None, None
        M = th.shape[0]
        L = level + 1
        n3, l3 = 3 * N, 3 * L
        # d gamma_t / d (rotational tangent of a, of b), only the L row blocks the outputs need: M x L x 3 x N x 3.
        # gamma_b depends on knot a through R_a only (column block 0); gamma_a = (0, omega_a, alpha_a).
        Pl = Psi[:, :L]
        Jt_a = th.new_zeros(M, L, 3, N, 3)
        Jt_a[:, :, :, 0, :] = (Pl @ Jgb_a[:, :, :, 0, :].reshape(M, N, 9)).reshape(M, L, 3, 3)
        Jt_a[:, :, :, 1:, :].diagonal(dim1=2, dim2=4).add_(Lam[:, :L, 1:, None])
        Jt_b = (Pl @ Jgb_b.reshape(M, N, 3 * n3)).reshape(M, L, 3, N, 3)
        # d outputs / d gamma_t (block lower triangular):  M x L x 3 x L x 3
        G = th.new_zeros(M, L, 3, L, 3)
        G[:, 0, :, 0] = Jr
        if level >= 1:
            Hd = so3_jr_dtheta(th, thd)
            G[:, 1, :, 0] = Hd
            G[:, 1, :, 1] = Jr
        if level >= 2:
            if cf:
                G[:, 2, :, 0] = so3_jr_dtheta(th, thdd) + so3_jr_dtheta2(th, thd, thd)
                G[:, 2, :, 1] = Hd + so3_jr_dtheta_dv(th, thd, thd)
            else:
                htd = so3_hat(thd)
                G[:, 2, :, 0] = so3_jr_dtheta(th, u) - 0.5 * Jr @ htd @ Hd
                G[:, 2, :, 1] = 0.5 * Jr @ (so3_hat(out["omega"]) - htd @ Jr)
            G[:, 2, :, 2] = Jr
        Gm = G.reshape(M, l3, l3)
        Ja = th.new_zeros(M, 2 * l3, 2 * n3)
        Jb = th.new_zeros(M, 2 * l3, 2 * n3)
        Ja[:, :l3, :n3] = Gm @ Jt_a.reshape(M, l3, n3)
        Ja[:, :3, :3] += E.mT
        Jb[:, :l3, :n3] = Gm @ Jt_b.reshape(M, l3, n3)
        Ja[:, l3:, n3:] = _kron_eye(Lam[:, :L]).reshape(M, l3, n3)
        Jb[:, l3:, n3:] = _kron_eye(Psi[:, :L]).reshape(M, l3, n3)
        Gfull = None
        if want_G:
            Gfull = th.new_zeros(M, 2 * l3, 2 * n3)
            Gfull[:, :l3, :l3] = Gm
            Gfull[:, l3:, n3 : n3 + l3] = torch.eye(l3, dtype=th.dtype, device=th.device)
        return out, Ja, Jb, Gfull

    def _gamma_noise(self, C: Tensor) -> Tensor:
        r"""``M x 6N x 6N``: :math:`Q_{\tau|ab}` for the stacked :math:`(\gamma^{rot}, \gamma^{pos})`."""
        M, N = C.shape[0], self.order
        n3 = 3 * N
        out = C.new_zeros(M, 2 * n3, 2 * n3)
        out[:, :n3, :n3] = (_kron_eye(C) * self.qc_rot[None, None, :, None, None]).reshape(M, n3, n3)
        out[:, n3:, n3:] = (_kron_eye(C) * self.qc_pos[None, None, :, None, None]).reshape(M, n3, n3)
        return out

    def _prior(self, Xa, Xb, dt, jac):
        r"""Whitened prior residuals ``M x 6N`` and Jacobians ``M x 6N x 2 x s``."""
        N = self.order
        A, B = self._unpack(Xa), self._unpack(Xb)
        Phi, W = self._prior_mats(dt)
        gb, Jgb_a, Jgb_b = self._gamma_b(A["R"], B["R"], B["omega"], B.get("alpha"), jac)
        ga = self._gamma_a(A)
        pos_a = torch.stack([A[c] for c in ("p", "v", "a")[:N]], dim=1)
        pos_b = torch.stack([B[c] for c in ("p", "v", "a")[:N]], dim=1)
        wr, wp = self.qc_rot.rsqrt(), self.qc_pos.rsqrt()
        e_rot = (W @ (gb - Phi @ ga)) * wr
        e_pos = (W @ (pos_b - Phi @ pos_a)) * wp
        M = dt.shape[0]
        e = torch.cat([e_rot.reshape(M, 3 * N), e_pos.reshape(M, 3 * N)], dim=1)
        if not jac:
            return e, None
        Jra = Jgb_a.clone()
        Jra[:, :, :, 1:, :] -= _kron_eye(Phi[:, :, 1:])
        n3 = 3 * N

        def whiten(Jblk, w):
            return ((W @ Jblk.reshape(M, N, 3 * n3)).reshape(M, N, 3, n3) * w[None, None, :, None]).reshape(M, n3, n3)

        Jx = e.new_zeros(M, 2 * n3, 2, 2 * n3)
        Jx[:, :n3, 0, :n3] = whiten(Jra, wr)
        Jx[:, :n3, 1, :n3] = whiten(Jgb_b, wr)
        Jx[:, n3:, 0, n3:] = whiten(-_kron_eye(Phi), wp)
        eye = torch.eye(N, dtype=e.dtype, device=e.device).expand(M, N, N)
        Jx[:, n3:, 1, n3:] = whiten(_kron_eye(eye), wp)
        return e, Jx


# ------------------------------------------------------------------------------------------------------------------
# SE(3): Jacobians by forward-mode autodiff
# ------------------------------------------------------------------------------------------------------------------
class SE3Trajectory(Trajectory):
    r"""GP trajectory on SE(3): one 6-D local variable :math:`\xi = \mathrm{Log}(T_a^{-1}T(t))` (tangent order
    :math:`(\phi, \rho)`, rotation first) carrying the body twist :math:`\varpi = (\omega, R^\top v)` and its
    derivative :math:`\dot\varpi = (\alpha, R^\top a - \omega^\wedge R^\top v)`; :math:`Q_c = \operatorname{diag}(
    q_{rot}, q_{pos})`. Knots store the same :math:`(R, \omega, \alpha, p, v, a)` as :class:`SO3xR3Trajectory` (the
    conversion is exact), so every measurement applies to both.

    .. math::
        \dot\xi = J_r^{-1}(\xi)\varpi, \quad \ddot\xi = J_r^{-1}(\xi)\dot\varpi +
        \frac{\partial (J_r^{-1}(\xi)\varpi)}{\partial\xi}\dot\xi, \quad
        \varpi = J_r(\xi)\dot\xi, \quad \dot\varpi = J_r(\xi)\ddot\xi + \frac{\partial (J_r(\xi)\dot\xi)}
        {\partial\xi}\dot\xi,

    with the 6x6 right Jacobian of SE(3) (:func:`gpgeom.geometry.lie.se3_jr`); ``kinematics="taylor"`` replaces
    the derivative terms by :math:`-\tfrac12\operatorname{ad}_\varpi\dot\xi` and :math:`\tfrac12 J_r
    \operatorname{ad}_\varpi\dot\xi`. Jacobians: forward-mode autodiff, once per knot interval for
    :math:`\gamma_{a,b}` and once per time for the output map (exact; the SE(3) second-derivative terms of
    :math:`J_r` are not hand-written, so an iteration costs about ten times that of :class:`SO3xR3Trajectory`).
    """

    pose_group = "se3"

    def _twists(self, S: dict[str, Tensor]) -> list[Tensor]:
        R, w = S["R"], S["omega"]
        nu = _mv(R.mT, S["v"])
        out = [torch.cat([w, nu], -1)]
        if self.order == 3:
            beta = _mv(R.mT, S["a"]) - torch.linalg.cross(w, nu, dim=-1)
            out.append(torch.cat([S["alpha"], beta], -1))
        return out

    def _gammas(self, A: dict[str, Tensor], B: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        cf = self.kinematics == "closed_form"
        Ra, Rb = A["R"], B["R"]
        phi = so3_log(Ra.mT @ Rb, validate=False)
        rho = _mv(so3_jl_inv(phi), _mv(Ra.mT, B["p"] - A["p"]))
        xi = torch.cat([phi, rho], -1)
        tw_b = self._twists(B)
        Jinv = se3_jr_inv(xi)
        xid = _mv(Jinv, tw_b[0])
        gb = [xi, xid]
        if self.order == 3:
            if cf:
                w0 = tw_b[0]
                d = torch.func.jvp(lambda x: _mv(se3_jr_inv(x), w0), (xi,), (xid,))[1]
            else:
                d = -0.5 * _mv(se3_ad(tw_b[0]), xid)
            gb.append(_mv(Jinv, tw_b[1]) + d)
        ga = [torch.zeros_like(xi)] + self._twists(A)
        return torch.stack(ga, 1), torch.stack(gb, 1)

    def _outputs(self, A: dict[str, Tensor], gt: Tensor, level: int) -> dict[str, Tensor]:
        cf = self.kinematics == "closed_form"
        xi = gt[:, 0]
        phi, rho = xi[:, :3], xi[:, 3:]
        R = A["R"] @ so3_exp(phi)
        out = {"R": R, "p": A["p"] + _mv(A["R"], _mv(so3_jl(phi), rho))}
        if level >= 1:
            Jr = se3_jr(xi)
            xid = gt[:, 1]
            tw = _mv(Jr, xid)
            out["omega"] = tw[:, :3]
            out["v"] = _mv(R, tw[:, 3:])
        if level >= 2:
            xidd = gt[:, 2]
            if cf:
                d = torch.func.jvp(lambda x: _mv(se3_jr(x), xid), (xi,), (xid,))[1]
                wr = _mv(Jr, xidd) + d
            else:
                wr = _mv(Jr, xidd + 0.5 * _mv(se3_ad(tw), xid))
            out["alpha"] = wr[:, :3]
            out["a"] = _mv(R, wr[:, 3:] + torch.linalg.cross(tw[:, :3], tw[:, 3:], dim=-1))
        return out

    def _interval_gammas(self, Xa: Tensor, Xb: Tensor, jac: bool):
        r""":math:`\gamma_a, \gamma_b` (``U x N x 6``) of ``U`` intervals and, with ``jac``, their Jacobians
        ``U x N x 6 x 2s`` with respect to the tangents of both knots (forward-mode autodiff)."""
        if not jac:
            ga, gb = self._gammas(self._unpack(Xa), self._unpack(Xb))
            return ga, gb, None, None
        s, N, U = self.tangent_dim, self.order, Xa.shape[0]

        def f(d, xa, xb):
            a, b = self._gammas(self._unpack(self.retract(xa, d[:, :s])), self._unpack(self.retract(xb, d[:, s:])))
            return torch.cat([a.reshape(-1, 6 * N), b.reshape(-1, 6 * N)], 1)

        val, J = _rowwise_jacobian(f, (Xa, Xb), 2 * s)  # U x 12N, U x 12N x 2s
        val, J = val.reshape(U, 2, N, 6), J.reshape(U, 2, N, 6, 2 * s)
        return val[:, 0], val[:, 1], J[:, 0], J[:, 1]

    def _flatten_tangent(self, out: dict[str, Tensor], base_R: Tensor, comps: tuple[str, ...]) -> Tensor:
        parts = []
        for c in comps:
            parts.append(so3_vee(base_R.mT @ out["R"]) if c == "R" else out[c])
        return torch.cat(parts, -1)

    def _interp(self, Xa, Xb, mix, level, jac, want_G=False):
        r"""Interpolated state; Jacobians by the chain rule through :math:`\gamma(t) = \Lambda\gamma_a +
        \Psi\gamma_b`: forward-mode derivatives of :math:`\gamma_{a,b}` per interval (``2s`` directions) and of the
        output map :math:`(T_a, \gamma(t)) \mapsto X(t)` per time (``6 + 6N`` directions)."""
        if level > self.order - 1:
            raise ValueError(f"Accelerations need prior='wnoj' (this trajectory has prior={self.prior!r}).")
        N, s = self.order, self.tangent_dim
        f, inv = mix.first, mix.inverse
        ga, gb, Jga, Jgb = self._interval_gammas(Xa[f], Xb[f], jac)
        gt = mix.Lam @ ga[inv] + mix.Psi @ gb[inv]
        A = self._unpack(Xa)
        out = self._outputs(A, gt, level)
        if not jac:
            return out, None, None, None
        M = gt.shape[0]
        comps = components(level)
        Rt = out["R"]
        Ra, pa = A["R"], A["p"]

        def h(d, ra, pa_, g, rt):
            base = {"R": ra @ so3_exp(d[:, :3]), "p": pa_ + d[:, 3:6]}
            return self._flatten_tangent(self._outputs(base, g + d[:, 6:].reshape(-1, N, 6), level), rt, comps)

        _, Jo = _rowwise_jacobian(h, (Ra, pa, gt, Rt), 6 + 6 * N)  # M x d x (6 + 6N)
        Jgt = mix.Lam @ Jga[inv].reshape(M, N, 12 * s) + mix.Psi @ Jgb[inv].reshape(M, N, 12 * s)
        G = Jo[:, :, 6:]
        J = G @ Jgt.reshape(M, 6 * N, 2 * s)
        ps = self._slices()["p"]
        J[:, :, 0:3] += Jo[:, :, 0:3]
        J[:, :, ps] += Jo[:, :, 3:6]
        return out, J[:, :, :s], J[:, :, s:], (G if want_G else None)

    def _gamma_noise(self, C: Tensor) -> Tensor:
        M, N = C.shape[0], self.order
        qc = torch.cat([self.qc_rot, self.qc_pos])
        return (_kron_eye(C, 6) * qc[None, None, :, None, None]).reshape(M, 6 * N, 6 * N)

    def _prior(self, Xa, Xb, dt, jac):
        N = self.order
        A, B = self._unpack(Xa), self._unpack(Xb)
        Phi, W = self._prior_mats(dt)
        ga, gb = self._gammas(A, B)
        w = torch.cat([self.qc_rot, self.qc_pos]).rsqrt()
        e = ((W @ (gb - Phi @ ga)) * w).reshape(dt.shape[0], 6 * N)
        if not jac:
            return e, None
        s = self.tangent_dim

        def f(d, xa, xb, h):
            return self._prior(self.retract(xa, d[:, :s]), self.retract(xb, d[:, s:]), h, jac=False)[0]

        _, J = _rowwise_jacobian(f, (Xa, Xb, dt), 2 * s)  # M x 6N x 2s
        return e, J.reshape(J.shape[0], J.shape[1], 2, s)

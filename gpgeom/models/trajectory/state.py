r"""Result containers of the GP trajectories: the state at query times, its marginal standard deviations and the
record of a fit.

The state of a trajectory at a time is :math:`X(t) = (R, \omega, \alpha, p, v, a)(t)`: rotation (body to world),
body angular velocity and acceleration, world position, velocity and acceleration. A second-order (WNOA) trajectory
has no accelerations. The perturbation used by every Jacobian and covariance is :math:`R \leftarrow
R\,\mathrm{Exp}(\delta_R)` (right perturbation) and additive for the other components, stacked in the order of
:data:`COMPONENTS` (Barfoot, *State Estimation for Robotics*, 2017, ch. 7).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from gpgeom.geometry.lie import rotmat_to_quat

__all__ = ["COMPONENTS", "TrajectoryFitResult", "TrajectoryState", "TrajectoryStd", "components"]

COMPONENTS = ("R", "omega", "alpha", "p", "v", "a")
_ROT = ("R", "omega", "alpha")
_POS = ("p", "v", "a")


def components(level: int) -> tuple[str, ...]:
    r"""State components of derivative ``level`` 0 (pose), 1 (+ velocities) or 2 (+ accelerations), in the
    column order of every state Jacobian: ``("R", "omega", "alpha")[:level + 1] + ("p", "v", "a")[:level + 1]``."""
    return _ROT[: level + 1] + _POS[: level + 1]


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
class TrajectoryStd:
    r"""Marginal posterior standard deviations of the state at ``n`` query times, per component and axis: the
    square roots of the diagonal of :attr:`TrajectoryState.covariance`.

    Attributes:
        R: ``n x 3`` standard deviation (rad) of the rotation perturbation :math:`\delta_R` in
            :math:`R\,\mathrm{Exp}(\delta_R)` (body-frame axes).
        omega, alpha: ``n x 3`` of the body angular velocity and acceleration (``alpha`` ``None`` for WNOA).
        p, v, a: ``n x 3`` of the world position, velocity and acceleration (``a`` ``None`` for WNOA).
    """

    R: Tensor
    omega: Tensor
    alpha: Tensor | None
    p: Tensor
    v: Tensor
    a: Tensor | None

    def as_dict(self) -> dict[str, Tensor]:
        r"""The components that are not ``None``, keyed ``"R", "omega", "alpha", "p", "v", "a"``."""
        return {c: getattr(self, c) for c in COMPONENTS if getattr(self, c) is not None}


@dataclass
class TrajectoryFitResult:
    r"""The record of :meth:`Trajectory.fit <gpgeom.models.trajectory.Trajectory.fit>` (``fit_result_``).

    Attributes:
        iterations: Number of linear solves of the Gauss-Newton/LM engine.
        converged: Whether a convergence test was met.
        message: Which test stopped the iteration.
        cost: Final cost (half the sum of squared whitened residuals, Huber-weighted where asked).
        cost_history: Cost at the start and after each accepted step.
        globals: Estimated global parameters (name -> tensor), e.g. IMU biases.
        global_covariance: ``g x g`` covariance of the stacked globals (with covariances), else ``None``.
        seconds: Wall time of the optimisation.
        init: Where the iteration started: ``"current knots"`` or which measurements the knots were built from
            (``fit(..., init=...)``).
    """

    iterations: int
    converged: bool
    message: str
    cost: float
    cost_history: list[float]
    globals: dict[str, Tensor] = field(default_factory=dict)
    global_covariance: Tensor | None = None
    seconds: float = 0.0
    init: str = ""

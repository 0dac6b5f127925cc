r"""Third-order (and second-order) Gaussian-process trajectories on SO(3)xR3 and SE(3) with closed-form kinematics.

A continuous-time trajectory :math:`X(t) = (R, \omega, \alpha, p, v, a)(t)` -- rotation (body to world), body
angular velocity and acceleration, world position, velocity and acceleration -- is represented by its values at
``K`` knots :math:`t_0 < \dots < t_{K-1}` and a Gauss-Markov motion prior between them: white noise on jerk
(WNOJ; Tang, Yoon & Barfoot, *A white-noise-on-jerk motion prior for continuous-time trajectory estimation on
SE(3)*, IEEE RA-L 4(2), 2019) or on acceleration (WNOA; Anderson & Barfoot, *Full STEAM ahead: exactly sparse
Gaussian process regression for batch continuous-time trajectory estimation on SE(3)*, IROS 2015), in a local
variable per knot interval, with the exact ("closed-form") kinematics of T.-M. Nguyen et al., *GPTR: Gaussian
Process Trajectory Representation for Continuous-Time Motion Estimation*, arXiv:2410.22931, 2024. Estimation is
sparse GP regression on the knots (Barfoot, Tong & Sarkka, RSS 2014; Barfoot, *State Estimation for Robotics*,
2017, sec. 3.4 and 11.3): Gauss-Newton / Levenberg-Marquardt on a block-tridiagonal normal matrix, :math:`O(K)`
per iteration.

Modules
-------
* :mod:`~gpgeom.models.trajectory.state` -- :class:`TrajectoryState` (the state at query times),
  :class:`TrajectoryStd` (its marginal standard deviations), :class:`TrajectoryFitResult` (``fit_result_``).
* :mod:`~gpgeom.models.trajectory.interpolation` -- the linear Gauss-Markov algebra: transition, noise,
  motion-prior whitening, interpolation :math:`\gamma(t) = \Lambda\gamma_a + \Psi\gamma_b` and its covariance.
* :mod:`~gpgeom.models.trajectory.kinematics` -- the SO(3) local variable and its derivatives from body rates
  (:func:`local_kinematics`).
* :mod:`~gpgeom.models.trajectory.algebra` -- small batched helpers.
* :mod:`~gpgeom.models.trajectory.base` -- :class:`Trajectory`: knots, interpolation, ``fit``/``predict`` and the
  model contract (:class:`gpgeom.base.ModelContract`).
* :mod:`~gpgeom.models.trajectory.so3xr3` -- :class:`SO3xR3Trajectory` (hand-written Jacobians).
* :mod:`~gpgeom.models.trajectory.se3` -- :class:`SE3Trajectory` (hand-written Jacobians through a rotational and a
  translational channel).
* :mod:`~gpgeom.models.trajectory.estimation` -- the engine factors of the prior and of the measurements.
* :mod:`~gpgeom.models.trajectory.initialisation` -- the start of a fit built from the measurements (poses,
  positions, UWB ranges), used by ``fit(..., init="auto")`` when the knots are still at their default state.
* :mod:`~gpgeom.models.trajectory.factors` -- the measurements: pose, position, UWB range and TDOA, IMU, priors on
  knots and on global parameters, user-defined residuals.

Example:
    >>> from gpgeom.models.trajectory import RangeMeasurement, SO3xR3Trajectory
    >>> traj = SO3xR3Trajectory.uniform(0.0, 10.0, 0.1, qc_rot=10.0, qc_pos=10.0)  # doctest: +SKIP
    >>> # starts from the ranges themselves (fit_result_.init says how); set_knots(...) gives a start instead
    >>> traj.fit([RangeMeasurement(t, anchors, ranges, sigma=0.05)], compute_covariances=True)  # doctest: +SKIP
    >>> state, std = traj.predict(np.linspace(0.0, 10.0, 1001), return_std=True)  # doctest: +SKIP
"""

from __future__ import annotations

from gpgeom.models.trajectory.base import Trajectory
from gpgeom.models.trajectory.factors import (
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
from gpgeom.models.trajectory.kinematics import local_kinematics
from gpgeom.models.trajectory.se3 import SE3Trajectory
from gpgeom.models.trajectory.so3xr3 import SO3xR3Trajectory
from gpgeom.models.trajectory.state import TrajectoryFitResult, TrajectoryState, TrajectoryStd

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
    "SE3Trajectory",
    "SO3xR3Trajectory",
    "TDOAMeasurement",
    "Trajectory",
    "TrajectoryFitResult",
    "TrajectoryState",
    "TrajectoryStd",
    "components",
    "local_kinematics",
]

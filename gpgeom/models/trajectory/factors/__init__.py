r"""Measurement factors of the continuous-time GP trajectories (:mod:`gpgeom.models.trajectory`).

Each class is a batch of ``M`` residual blocks with hand-written (or, for :class:`CustomMeasurement`, automatic)
Jacobians with respect to the state at a time; the trajectory chains them through its interpolation Jacobians,
so that every block touches the two bracketing knots only (:mod:`~gpgeom.models.trajectory.factors.base`).

* :class:`PoseMeasurement`, :class:`PositionMeasurement` (:mod:`~gpgeom.models.trajectory.factors.pose`);
* :class:`RangeMeasurement` (UWB two-way ranging), :class:`TDOAMeasurement` (UWB time difference of arrival),
  both with a tag offset (:mod:`~gpgeom.models.trajectory.factors.uwb`);
* :class:`IMUMeasurement`: gyroscope and accelerometer with constant biases as global parameters
  (:mod:`~gpgeom.models.trajectory.factors.imu`);
* :class:`GlobalPrior`, :class:`KnotPrior` (:mod:`~gpgeom.models.trajectory.factors.priors`);
* :class:`CustomMeasurement`: any residual function, Jacobians by ``torch.func.jacfwd``
  (:mod:`~gpgeom.models.trajectory.factors.custom`).

All take ``robust=None | "huber"`` and ``robust_threshold`` (in whitened units, on the norm of each residual block)
and a ``name`` used in messages; times and values may be numpy arrays or torch tensors.
"""

from __future__ import annotations

from gpgeom.models.trajectory.factors.base import Measurement
from gpgeom.models.trajectory.factors.custom import CustomMeasurement
from gpgeom.models.trajectory.factors.imu import IMUMeasurement
from gpgeom.models.trajectory.factors.pose import PoseMeasurement, PositionMeasurement
from gpgeom.models.trajectory.factors.priors import GlobalPrior, KnotPrior
from gpgeom.models.trajectory.factors.uwb import RangeMeasurement, TDOAMeasurement
from gpgeom.models.trajectory.state import COMPONENTS, components

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

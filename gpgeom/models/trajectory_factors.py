r"""Alias of :mod:`gpgeom.models.trajectory.factors` (the measurement factors of the GP trajectories), kept so that
``from gpgeom.models.trajectory_factors import RangeMeasurement`` still works; new code imports from
:mod:`gpgeom.models.trajectory`."""

from __future__ import annotations

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

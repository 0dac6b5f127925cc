"""Shared helper of the trajectory tests: the simulated UWB range problem several test modules fit."""

from gpgeom.datasets.trajectories import FastTrajectory, simulate_uwb
from gpgeom.models.trajectory import RangeMeasurement


def uwb_ranges(truth, T: float, *, sigma: float = 0.05, seed: int = 1, **simulate) -> RangeMeasurement:
    """Ranges from ``simulate_uwb(truth, 0, T, sigma=sigma, seed=seed, **simulate)`` (anchors, tag lever arms) as a
    :class:`RangeMeasurement` whose noise model is the simulation's ``sigma``."""
    uwb = simulate_uwb(truth, 0.0, T, sigma=sigma, seed=seed, **simulate)
    return RangeMeasurement(uwb.t, uwb.anchors, uwb.ranges, tag_offset=uwb.tag_offsets, sigma=sigma)


def fast_uwb_problem(T: float = 10.0, rate: float = 10.0, seed: int = 1) -> tuple[FastTrajectory, RangeMeasurement]:
    """The fast trajectory (``kind="split"``, |omega| about 4 rad/s) and its ranges at ``rate`` Hz over ``[0, T]``."""
    truth = FastTrajectory(kind="split", speed=40.0)
    return truth, uwb_ranges(truth, T, rate=rate, seed=seed)

r"""Coverage of central predictive intervals, reliability curves and the one-call calibration summary.

A Gaussian prediction :math:`\mathcal N(\mu_i, \sigma_i^2)` has the central ``level`` interval
:math:`\mu_i \pm z_{(1+\ell)/2}\,\sigma_i`; calibrated predictions cover their targets with frequency ``level`` at
every level (probabilistic calibration; Gneiting, Balabdaoui & Raftery, 2007, JRSS B 69(2), Sec. 2), so the observed
frequencies plotted against the nominal ones lie on the diagonal. A prediction that is not Gaussian (a log-normal
one, say) has other intervals; :func:`interval_coverage` scores any intervals given by their bounds.
"""

from __future__ import annotations

import numpy as np

from gpgeom.metrics._inputs import broadcast_bounds, broadcast_gaussian, check_level, check_levels, normal_quantile
from gpgeom.metrics.scores import crps_gaussian, interval_width, nlpd, z_rms

__all__ = ["calibration_summary", "coverage", "coverage_table", "interval_coverage", "reliability_curve"]

#: Levels of :func:`reliability_curve` when none are given: 0.05, 0.10, ..., 0.95.
DEFAULT_LEVELS = tuple(round(0.05 * k, 2) for k in range(1, 20))


def coverage(y, mean, std, level: float = 0.95) -> float:
    r"""Fraction of entries with :math:`|y_i - \mu_i| \le z_{(1+\ell)/2}\, \sigma_i`.

    Args:
        y: Targets, any shape broadcasting with ``mean`` and ``std`` (numpy or torch).
        mean: Predictive means.
        std: Predictive standard deviations, ``>= 0``.
        level: Nominal probability of the central interval, in (0, 1).

    Returns:
        The observed coverage in [0, 1]; ``level`` for calibrated predictions, up to binomial error
        :math:`\sqrt{\ell(1-\ell)/n}`.
    """
    lv = check_level(level)
    ty, tm, ts = broadcast_gaussian(y, mean, std, positive=False)
    return float(((ty - tm).abs() <= normal_quantile(lv) * ts).double().mean())


def interval_coverage(y, lower, upper) -> float:
    r"""Fraction of entries inside their closed interval, :math:`\ell_i \le y_i \le u_i`.

    The coverage of intervals of any predictive distribution, given by their bounds (e.g. the equal-tailed
    log-normal intervals of :meth:`MMGPPrediction.scalar_interval
    <gpgeom.models.mmgp.MMGPPrediction.scalar_interval>`); for the central Gaussian intervals
    :math:`\mu_i \pm z\,\sigma_i` it equals :func:`coverage`.

    Args:
        y: Targets, any shape (numpy or torch).
        lower: Lower bounds, ``y``'s shape or broadcasting to it as the means of :func:`coverage` do.
        upper: Upper bounds, likewise; ``lower <= upper`` everywhere.

    Returns:
        The observed coverage in [0, 1]; the intervals' nominal level for calibrated predictions, up to binomial
        error :math:`\sqrt{\ell(1-\ell)/n}`.

    Raises:
        ValueError: shapes as in :func:`coverage`, NaN or infinite entries, masked numpy arrays with masked entries,
            or a lower bound above its upper bound (the message names the argument).
    """
    ty, tl, tu = broadcast_bounds(y, lower, upper)
    return float(((ty >= tl) & (ty <= tu)).double().mean())


def coverage_table(y, mean, std, levels=(0.5, 0.9, 0.95)) -> dict[float, float]:
    r"""Observed coverage at each nominal level: ``{level: coverage(y, mean, std, level)}``.

    Shapes as in :func:`coverage`; ``levels`` is a non-empty sequence of numbers in (0, 1).
    """
    nominal, observed = reliability_curve(y, mean, std, levels)
    return {float(a): float(b) for a, b in zip(nominal, observed)}


def reliability_curve(y, mean, std, levels=None) -> tuple[np.ndarray, np.ndarray]:
    r"""Observed against nominal coverage of central intervals (the data of a reliability diagram).

    Args:
        y, mean, std: As in :func:`coverage`.
        levels: Nominal levels in (0, 1), a sequence of ``L`` numbers; default 0.05, 0.10, ..., 0.95.

    Returns:
        ``(nominal, observed)``: two float64 numpy arrays of shape ``(L,)``.
    """
    lv = check_levels(DEFAULT_LEVELS if levels is None else levels)
    ty, tm, ts = broadcast_gaussian(y, mean, std, positive=False)
    err = (ty - tm).abs()
    observed = [float((err <= normal_quantile(v) * ts).double().mean()) for v in lv]
    return np.asarray(lv, dtype=np.float64), np.asarray(observed, dtype=np.float64)


def calibration_summary(y, mean, std) -> dict[str, float]:
    r"""Every calibration number of a set of Gaussian predictions, in one dict.

    Keys: ``coverage_50``, ``coverage_90``, ``coverage_95`` (:func:`coverage`), ``z_rms`` (:func:`z_rms`),
    ``nlpd`` (:func:`nlpd`), ``crps`` (:func:`crps_gaussian`) and ``width_95`` (:func:`interval_width`). Shapes as in
    :func:`coverage`; ``std > 0``. Format several with :func:`gpgeom.metrics.format_calibration_table`.
    """
    ty, tm, ts = broadcast_gaussian(y, mean, std, positive=True)
    table = coverage_table(ty, tm, ts, (0.5, 0.9, 0.95))
    return {
        "coverage_50": table[0.5],
        "coverage_90": table[0.9],
        "coverage_95": table[0.95],
        "z_rms": z_rms(ty, tm, ts),
        "nlpd": nlpd(ty, tm, ts),
        "crps": crps_gaussian(ty, tm, ts),
        "width_95": interval_width(ts, 0.95),
    }

r"""Calibration metrics of probabilistic predictions: proper scores, interval coverage (of Gaussian intervals, or of
any intervals given by their bounds) and reliability, coverage conditional on a covariate, NEES consistency,
out-of-distribution uncertainty ratio, Markdown tables and reliability diagrams; and the accuracy of predicted vector
fields (relative L2 error, angular errors: :mod:`~gpgeom.metrics.vector_fields`).

Every calibration function takes numpy arrays or torch tensors; ``y``, ``mean`` and ``std`` broadcast to ``y``'s shape
and are reduced over all entries (a ``mean`` or ``std`` with fewer dimensions aligns with ``y``'s trailing axes and is
refused where it would also fit its leading ones: a ``(n,)`` std against ``(n, n)`` targets); results are Python
floats unless said otherwise. Bad input (shapes, NaN, a negative
or, where it is divided by, zero standard deviation) raises ``ValueError`` naming the argument.

References: Gneiting & Raftery (2007), "Strictly proper scoring rules, prediction, and estimation", JASA 102(477);
Bar-Shalom, Li & Kirubarajan (2001), "Estimation with Applications to Tracking and Navigation", Wiley, Sec. 5.4.
"""

from __future__ import annotations

from gpgeom.metrics.conditional import conditional_coverage
from gpgeom.metrics.coverage import (
    calibration_summary,
    coverage,
    coverage_table,
    interval_coverage,
    reliability_curve,
)
from gpgeom.metrics.nees import nees, nees_band
from gpgeom.metrics.ood import ood_std_ratio
from gpgeom.metrics.report import format_calibration_table, plot_reliability
from gpgeom.metrics.scores import (
    crps_gaussian,
    interval_width,
    nlpd,
    pit_standardized_errors,
    standardized_errors,
    z_rms,
)
from gpgeom.metrics.vector_fields import angular_errors, relative_l2

__all__ = [
    "angular_errors",
    "calibration_summary",
    "conditional_coverage",
    "coverage",
    "coverage_table",
    "crps_gaussian",
    "format_calibration_table",
    "interval_coverage",
    "interval_width",
    "nees",
    "nees_band",
    "nlpd",
    "ood_std_ratio",
    "pit_standardized_errors",
    "plot_reliability",
    "relative_l2",
    "reliability_curve",
    "standardized_errors",
    "z_rms",
]

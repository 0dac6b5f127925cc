r"""Coverage conditional on a covariate: calibration within equal-count bins of a quantity known at prediction time.

Marginal coverage averages over the whole test set, so a model with one noise level for heteroscedastic data can
cover 95 % overall while it covers 99.7 % where the data are quiet and 75 % where they are noisy; its 50 % intervals
then cover far more than half (the many quiet entries) and the 95 % ones about right (the mixture's tails). Splitting
the test set by a covariate that is known when predicting (the predicted mean, a coordinate, a group's spread in the
training data) and scoring each part shows where the predictive variance is off: the feature-stratified coverage of
Angelopoulos & Bates, "A gentle introduction to conformal prediction and distribution-free uncertainty
quantification" (2021), Sec. 3, here for Gaussian predictions. Conditioning on the target itself would select on the
error and is not what this measures.
"""

from __future__ import annotations

import numbers

import torch

from gpgeom.metrics._inputs import as_float64, broadcast_gaussian, check_levels, normal_quantile

__all__ = ["conditional_coverage"]


def conditional_coverage(y, mean, std, by, n_bins: int = 5, levels=(0.5, 0.9, 0.95)) -> list[dict[str, float]]:
    r"""Calibration of Gaussian predictions within ``n_bins`` equal-count bins of the covariate ``by``.

    The entries are sorted by ``by`` (ties keep their order, so every bin holds ``N // n_bins`` or one more entries
    and each entry is in exactly one bin); in every bin the coverage of the central intervals
    :math:`\mu_i \pm z_{(1+\ell)/2}\sigma_i` at each level, the RMS of :math:`z_i = (y_i - \mu_i)/\sigma_i`, the RMSE
    of the mean and the mean predictive standard deviation. For calibrated predictions every bin covers ``level`` up
    to the binomial error :math:`\sqrt{\ell(1-\ell)/n_b}`.

    Args:
        y: Targets, any shape (numpy or torch); ``mean`` and ``std`` broadcast to it (:func:`coverage`'s rules).
        mean: Predictive means.
        std: Predictive standard deviations, ``> 0``.
        by: The covariate, one value per entry: the broadcast shape of ``y``, ``mean`` and ``std``.
        n_bins: Number of bins, an integer (Python or numpy) in ``[1, N]``.
        levels: Nominal levels, a non-empty sequence (list, numpy array, tensor) of numbers in (0, 1).

    Returns:
        One dict per bin, in increasing ``by``: ``low`` and ``high`` (the smallest and largest ``by`` in the bin),
        ``n``, ``rmse``, ``mean_std``, ``z_rms`` and ``coverage_<100 level>`` for every level, the percentage to
        12 significant digits (``coverage_95``; 0.975 gives ``coverage_97.5``, 0.9999999 ``coverage_99.99999``).

    Raises:
        ValueError: a ``by`` of another shape, NaN or infinite values, ``n_bins`` outside ``[1, N]``, bad levels
            or two levels with one column name.
        TypeError: ``n_bins`` not an integer (Python or numpy), ``levels`` a single number.

    Example:
        >>> import torch
        >>> y = torch.tensor([0.0, 0.1, 3.0, -3.0])
        >>> rows = conditional_coverage(y, 0.0, 1.0, by=torch.tensor([1.0, 2.0, 3.0, 4.0]), n_bins=2, levels=(0.95,))
        >>> [(r["n"], r["coverage_95"]) for r in rows]
        [(2, 1.0), (2, 0.0)]
    """
    ty, tm, ts = broadcast_gaussian(y, mean, std, positive=True)
    shape = torch.broadcast_shapes(ty.shape, tm.shape, ts.shape)
    tb = as_float64(by, "by")
    if tuple(tb.shape) != tuple(shape):
        raise ValueError(
            f"by must have the shape {tuple(shape)} of the predictions (one value per entry), got {tuple(tb.shape)}."
        )
    lv = check_levels(levels)
    keys = [f"coverage_{100 * v:.12g}" for v in lv]
    for i, k in enumerate(keys):
        if k in keys[:i]:
            raise ValueError(
                f"levels {lv[keys.index(k)]!r} and {lv[i]!r} would share the column {k!r}: give each level once."
            )
    n = tb.numel()
    if isinstance(n_bins, bool) or not isinstance(n_bins, numbers.Integral):
        raise TypeError(f"n_bins must be an int, got {type(n_bins).__name__} {n_bins!r}.")
    n_bins = int(n_bins)
    if not 1 <= n_bins <= n:
        raise ValueError(f"n_bins must be in [1, {n}] (the number of entries), got {n_bins}.")
    err = (ty - tm).expand(shape).reshape(-1)
    sd = ts.expand(shape).reshape(-1)
    flat_by = tb.reshape(-1)
    order = torch.sort(flat_by, stable=True).indices
    rows = []
    for part in torch.tensor_split(order, n_bins):
        e, s, b = err[part], sd[part], flat_by[part]
        row = {"low": float(b.min()), "high": float(b.max()), "n": int(part.numel())}
        row["rmse"] = float(e.square().mean().sqrt())
        row["mean_std"] = float(s.mean())
        row["z_rms"] = float((e / s).square().mean().sqrt())
        for v, key in zip(lv, keys):
            row[key] = float((e.abs() <= normal_quantile(v) * s).double().mean())
        rows.append(row)
    return rows

r"""Coordinates that move with another mode: offsets from the mean of a group of entries.

A low-rank Tucker model :math:`\sum \mathcal W_{r_1 \dots r_K} u^1_{r_1}(x_1) \cdots u^K_{r_K}(x_K)` resolves what
varies *along* each mode on the scale of that mode's range. When a continuous coordinate drifts with another mode
(the temperature of a weather station follows the season, so the day decides most of it), the differences that
matter between the entries of one group (the stations of one day: a few degrees apart) are small against the
mode's range (the seasons: tens of degrees), and every low-rank function of the absolute coordinate sees them
only as the same few points of a curve shifted from group to group. Replacing the coordinate by its offset from
the group's mean,

.. math::
    \tilde x_{nc} = x_{nc} - \frac{1}{|G(n)|} \sum_{m \in G(n)} x_{mc}, \qquad
    G(n) = \{m : x_{m b} = x_{n b}\},

keeps the information (the group's mean is a function of the grouping coordinate :math:`x_b`, a mode of the
tensor already) and spreads the within-group differences over the whole mode. This is the within-group
transformation of panel data. On BeijingAir-PM2.5 (temperature and pressure as offsets from the day's mean) it
moves FunBaT from 8 % behind an exact GP to ahead of it (``benchmarks/results/funbat_day_offsets.md``).

Only inputs enter the means, so they may be taken over every entry whose coordinates are known, the entries to
predict included: transform the training and test coordinates together, then split (a group seen only at
prediction time then has a mean too).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gpgeom._validation import check_tensor

__all__ = ["group_offsets"]


def _column(name: str, value: object, d: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be a column index (int), got {type(value).__name__} {value!r}.")
    if not -d <= value < d:
        raise ValueError(f"`{name}` must be a column of `X` (0 <= {name} < {d}), got {value}.")
    return value % d


def group_offsets(X: Tensor, columns: int | Sequence[int], by: int, *, decimals: int | None = None) -> Tensor:
    r"""``X`` with the given columns replaced by their offsets from the mean over the rows of the same group.

    Rows belong to the same group when their column ``by`` holds the same value (exactly: a coordinate mode's
    values, such as days). Each column ``c`` of ``columns`` becomes :math:`x_{nc} - \bar x_{G(n) c}`, the module's
    equation; the other columns, ``by`` among them, are unchanged. Transform the coordinates of every entry you know
    (training and prediction) in one call: only inputs enter the means.

    Args:
        X: ``N x D`` floating-point coordinates, finite.
        columns: The column (or columns, distinct) to replace by offsets; not ``by``.
        by: The column whose value defines the groups.
        decimals: Round the offsets to this many decimals (readings recorded to 0.1 stay on a grid of 0.1, so that
            a mode keeps few unique coordinates); ``None`` (default) leaves them unrounded.

    Returns:
        ``N x D`` tensor of ``X``'s dtype and device (a new tensor; ``X`` is not modified).

    Raises:
        TypeError: When ``X`` is not a floating-point tensor, or ``columns``, ``by`` or ``decimals`` is not an int.
        ValueError: When ``X`` is not ``N x D`` with ``N >= 1`` or holds NaN or infinite values, when a column is
            out of range, repeated or equal to ``by``, or when ``decimals`` is negative.

    Example:
        >>> X = torch.tensor([[20.0, 1.0], [24.0, 1.0], [5.0, 2.0]])  # (temperature, day)
        >>> group_offsets(X, 0, by=1)
        tensor([[-2.,  1.],
                [ 2.,  1.],
                [ 0.,  2.]])
    """
    check_tensor("X", X, ndim=2, floating=True)
    N, D = X.shape
    if N == 0:
        raise ValueError(f"`X` must have at least one row, got shape {tuple(X.shape)}.")
    by = _column("by", by, D)
    cols = [columns] if isinstance(columns, int) and not isinstance(columns, bool) else columns
    if isinstance(cols, str) or not isinstance(cols, Sequence) or not cols:
        raise TypeError(f"`columns` must be a column index or a non-empty sequence of them, got {columns!r}.")
    cols = [_column("columns", c, D) for c in cols]
    if len(set(cols)) != len(cols):
        raise ValueError(f"`columns` must be distinct columns of `X`, got {list(columns)!r}.")
    if by in cols:
        raise ValueError(f"`columns` must not hold the grouping column `by`={by}, got columns {list(cols)!r}.")
    if decimals is not None:
        if isinstance(decimals, bool) or not isinstance(decimals, int):
            raise TypeError(f"`decimals` must be an int or None, got {type(decimals).__name__} {decimals!r}.")
        if decimals < 0:
            raise ValueError(f"`decimals` must be >= 0, got {decimals}.")

    _, group = torch.unique(X[:, by], return_inverse=True)  # N group codes
    n_groups = int(group.max()) + 1
    count = torch.bincount(group, minlength=n_groups).to(X.dtype)  # G
    values = X[:, cols]  # N x C
    sums = values.new_zeros(n_groups, len(cols)).index_add_(0, group, values)  # G x C, summed in row order
    offsets = values - (sums / count[:, None])[group]
    if decimals is not None:
        offsets = torch.round(offsets, decimals=decimals)
    out = X.clone()
    out[:, cols] = offsets
    return out

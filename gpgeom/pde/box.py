r"""Boxes :math:`\prod_d [a_d, b_d]`: the domains of PDE families and the supports of their uniform priors on
:math:`z` and :math:`w`.

:func:`as_bounds` reads a ``(lower, upper)`` pair as given by a user (numbers, sequences, arrays) and checks it;
:func:`check_in_box` checks that the rows of a tensor lie in a box and names the first offending entry.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

__all__ = ["as_bounds", "check_in_box"]


def _bound_values(name: str, which: str, value: Any) -> list[float]:
    r"""One bound (a number, a sequence, a numpy array or a tensor of numbers) as a list of floats."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.ndim > 1:
        raise ValueError(
            f"`{name}`: the {which} bound must be a number or a flat sequence of numbers (one per dimension), got "
            f"{value!r}."
        )
    return arr.reshape(-1).tolist()


def as_bounds(
    name: str, bounds: Any, size: int | None = None, *, allow_empty: bool = False
) -> tuple[list[float], list[float]]:
    r"""``bounds = (lower, upper)`` (numbers, sequences, numpy arrays or tensors) as two lists of floats.

    Args:
        name: The argument's name, for the error messages.
        bounds: The pair: a sequence of two bounds, or an array or tensor of shape ``(2,)`` or ``(2, d)``.
        size: The number of dimensions expected (a number bound is repeated to it); ``None``: any.
        allow_empty: Accept bounds of no dimension (``([], [])``).

    Raises:
        ValueError: For anything but a pair of equally long bounds with finite ``lower < upper`` everywhere, or
            (without ``allow_empty``) bounds of no dimension.
    """
    if not (isinstance(bounds, Sequence | np.ndarray | Tensor) and not isinstance(bounds, str) and len(bounds) == 2):
        raise ValueError(f"`{name}` must be a pair (lower, upper), got {bounds!r}.")
    lo, hi = (_bound_values(name, which, v) for which, v in zip(("lower", "upper"), bounds))
    if size is not None and len(lo) == 1 and size > 1:
        lo = lo * size
    if size is not None and len(hi) == 1 and size > 1:
        hi = hi * size
    if len(lo) != len(hi) or (size is not None and len(lo) != size):
        raise ValueError(f"`{name}`: lower and upper bounds must have the same length, got {lo} and {hi}.")
    if not lo and not allow_empty:
        raise ValueError(f"`{name}` must bound at least one dimension, got empty bounds {lo} and {hi}.")
    for i, (a, b) in enumerate(zip(lo, hi)):
        if not (math.isfinite(a) and math.isfinite(b) and a < b):
            raise ValueError(f"`{name}`: entry {i} needs finite lower < upper, got [{a}, {b}].")
    return lo, hi


def check_in_box(name: str, t: Tensor, lo: Tensor, hi: Tensor, what: str, tol: float = 1e-9) -> None:
    r"""Raise ``ValueError`` unless every row of ``t`` (``(..., d)``) lies in ``[lo, hi]`` up to ``tol`` times the
    box's width; the message counts the offending rows and shows the first entry outside (``what`` names the box,
    e.g. ``"the domain"``)."""
    slack = tol * (hi - lo)
    bad = (t < lo - slack) | (t > hi + slack)
    if bool(bad.any()):
        idx = tuple(int(v) for v in bad.nonzero()[0])
        d = idx[-1]
        raise ValueError(
            f"{int(bad.reshape(-1, t.shape[-1]).any(-1).sum())} row(s) of `{name}` lie outside {what}; e.g. "
            f"{name}[{', '.join(map(str, idx))}] = {float(t[idx]):.6g} is not in [{float(lo[d]):.6g}, "
            f"{float(hi[d]):.6g}] (bounds: lower={lo.tolist()}, upper={hi.tolist()})."
        )

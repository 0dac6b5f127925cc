r"""Boxes :math:`\prod_d [a_d, b_d]`: the domains of PDE families and the supports of their uniform priors on
:math:`z` and :math:`w`.

:func:`as_bounds` reads a ``(lower, upper)`` pair as given by a user (numbers or sequences) and checks it;
:func:`check_in_box` checks that the rows of a tensor lie in a box and names the first offending entry.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor

__all__ = ["as_bounds", "check_in_box"]


def as_bounds(name: str, bounds: Any, size: int | None = None) -> tuple[list[float], list[float]]:
    r"""``bounds = (lower, upper)`` (numbers or sequences of numbers) as two lists of floats.

    Args:
        name: The argument's name, for the error messages.
        bounds: The pair.
        size: The number of dimensions expected (a number bound is repeated to it); ``None``: any.

    Raises:
        ValueError: For anything but a pair of equally long bounds with finite ``lower < upper`` everywhere.
    """
    if not (isinstance(bounds, Sequence) and len(bounds) == 2):
        raise ValueError(f"`{name}` must be a pair (lower, upper), got {bounds!r}.")
    lo, hi = bounds
    lo = [float(v) for v in (lo if isinstance(lo, Sequence) else [lo])]
    hi = [float(v) for v in (hi if isinstance(hi, Sequence) else [hi])]
    if size is not None and len(lo) == 1 and size > 1:
        lo = lo * size
    if size is not None and len(hi) == 1 and size > 1:
        hi = hi * size
    if len(lo) != len(hi) or (size is not None and len(lo) != size):
        raise ValueError(f"`{name}`: lower and upper bounds must have the same length, got {lo} and {hi}.")
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

r"""Input checking shared by the calibration metrics: numpy or torch in, float64 CPU tensors out, never NaN silently."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["as_float64", "broadcast_bounds", "broadcast_gaussian", "check_level", "check_levels", "normal_quantile"]


def as_float64(x, name: str) -> torch.Tensor:
    r"""``x`` (numpy array, torch tensor, number or nested list) as a detached float64 CPU tensor of the same shape.

    Raises:
        TypeError: ``x`` is not numeric (names ``name``).
        ValueError: ``x`` is empty, holds NaN or infinite entries, or is a numpy masked array with masked entries
            (``np.asarray`` would pass on their hidden values; names ``name``).
    """
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise TypeError(f"{name} must be real, got a complex tensor.")
        t = x.detach().to(device="cpu", dtype=torch.float64)
    else:
        if isinstance(x, np.ma.MaskedArray) and np.ma.is_masked(x):
            raise ValueError(
                f"{name} is a numpy masked array with {int(np.ma.count_masked(x))} masked entries of {x.size}: "
                "numpy would score their hidden values; pass the entries to score (x.compressed(), or index every "
                "argument with ~x.mask)."
            )
        try:
            arr = np.asarray(x)
        except Exception as exc:  # ragged lists and the like
            raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}.") from exc
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}.")
        t = torch.as_tensor(arr.astype(np.float64, copy=False))
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}).")
    if not bool(torch.isfinite(t).all()):
        bad = "NaN" if bool(torch.isnan(t).any()) else "infinite"
        raise ValueError(f"{name} holds {bad} entries ({int((~torch.isfinite(t)).sum())} of {t.numel()}).")
    return t


def broadcast_gaussian(y, mean, std, *, positive: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""``y``, ``mean``, ``std`` as float64 tensors broadcast to one shape.

    Every target is scored once: ``mean`` and ``std`` must have ``y``'s shape or broadcast to it (a scalar ``std``
    does). ``y`` of shape ``(n,)`` against ``mean`` of shape ``(n, 1)`` would compare every target with every mean,
    and a ``std`` of shape ``(n, n)`` (a covariance matrix) every target with every standard deviation: both refused.
    A ``mean`` or ``std`` with fewer dimensions than ``y`` is aligned with ``y``'s trailing axes (numpy's rule: a
    ``(D,)`` std against ``(n, D)`` targets is one per column); where it would also fit ``y``'s leading axes, as a
    ``(n,)`` std against ``(n, n)`` targets (one per row, or one per column?), it is refused as ambiguous: give it
    ``y``'s number of dimensions, ``(n, 1)`` or ``(1, n)``.

    Args:
        positive: Require ``std > 0`` (scores that divide by it) rather than ``std >= 0``.

    Raises:
        ValueError: shapes that do not broadcast to ``y``'s shape or fit it two ways, NaN or infinite entries, a
            negative (or, with ``positive``, zero) standard deviation; the message names the argument.
    """
    ty, tm, ts = as_float64(y, "y"), as_float64(mean, "mean"), as_float64(std, "std")
    shape = _target_shape(
        ty,
        {"mean": tm, "std": ts},
        "every target is scored once, so mean and std must have y's shape or broadcast to it (y of shape (n,) "
        "against mean of shape (n, 1) would pair every target with every mean; a std of shape (n, n) is a "
        "covariance matrix: pass the square root of its diagonal).",
    )
    if positive and bool((ts <= 0).any()):
        raise ValueError(f"std must be > 0 everywhere, got min {float(ts.min()):.3g}.")
    if bool((ts < 0).any()):
        raise ValueError(f"std must be >= 0 everywhere, got min {float(ts.min()):.3g}.")
    return ty.expand(shape), tm.expand(shape), ts.expand(shape)


def broadcast_bounds(y, lower, upper) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""``y``, ``lower``, ``upper`` as float64 tensors broadcast to ``y``'s shape (the rules of
    :func:`broadcast_gaussian`: every target is scored once, an ambiguous alignment is refused).

    Raises:
        ValueError: shapes that do not broadcast to ``y``'s shape or fit it two ways, NaN or infinite entries, a
            lower bound above its upper bound; the message names the argument.
    """
    ty, tl, tu = as_float64(y, "y"), as_float64(lower, "lower"), as_float64(upper, "upper")
    shape = _target_shape(
        ty,
        {"lower": tl, "upper": tu},
        "every target is scored once, so lower and upper must have y's shape or broadcast to it (y of shape (n,) "
        "against bounds of shape (n, 1) would pair every target with every interval).",
    )
    tl, tu = tl.expand(shape), tu.expand(shape)
    if bool((tl > tu).any()):
        k = int((tl > tu).sum())
        raise ValueError(
            f"lower must be <= upper everywhere, got lower > upper at {k} of {tl.numel()} entries "
            f"(largest excess {float((tl - tu).max()):.3g})."
        )
    return ty, tl, tu


def _target_shape(ty: torch.Tensor, named: dict[str, torch.Tensor], hint: str) -> torch.Size:
    r"""The shape of ``ty`` when every tensor of ``named`` broadcasts to it unambiguously; ValueError naming the
    arguments and their shapes, ending with ``hint``, when one does not (:func:`broadcast_gaussian`)."""
    parts = [f"y {tuple(ty.shape)}"] + [f"{k} {tuple(t.shape)}" for k, t in named.items()]
    listed = ", ".join(parts[:-1]) + " and " + parts[-1]
    try:
        shape = torch.broadcast_shapes(ty.shape, *(t.shape for t in named.values()))
    except RuntimeError as exc:
        raise ValueError(f"{listed} do not broadcast to one shape.") from exc
    if tuple(shape) != tuple(ty.shape):
        raise ValueError(f"{listed} broadcast to {tuple(shape)}, not to the shape of y: {hint}")
    for name, t in named.items():
        _refuse_ambiguous_alignment(name, tuple(t.shape), tuple(ty.shape))
    return shape


def _refuse_ambiguous_alignment(name: str, shape: tuple[int, ...], y_shape: tuple[int, ...]) -> None:
    r"""ValueError when ``shape`` (fewer dimensions than ``y_shape``) broadcasts to ``y_shape`` aligned with its
    trailing axes (numpy's rule) and also aligned with its leading ones, pairing other entries."""
    k = len(y_shape) - len(shape)
    if not shape or k <= 0:
        return
    left, right = shape + (1,) * k, (1,) * k + shape
    if left == right:
        return
    try:
        fits_left = tuple(torch.broadcast_shapes(left, y_shape)) == y_shape
    except RuntimeError:
        fits_left = False
    if fits_left:
        raise ValueError(
            f"{name} of shape {shape} against y of shape {y_shape} is ambiguous: broadcasting pairs it with the "
            f"trailing axes of y (as {right}), but it also fits the leading ones (as {left}), e.g. one std per row "
            f"rather than per column; pass {name} with y's {len(y_shape)} dimensions, of shape {right} or {left}."
        )


def check_level(level, name: str = "level") -> float:
    r"""``level`` as a float in the open interval ``(0, 1)``; ValueError naming ``name`` otherwise.

    A numpy float32 or float16 level is read as the shortest decimal that rounds to it in its own precision
    (``np.float32(0.95)`` is 0.95, not 0.949999988079071), so that it names the same level, table key and column as
    the Python float it was written as.
    """
    if isinstance(level, bool) or not isinstance(level, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number in (0, 1), got {type(level).__name__}.")
    if isinstance(level, np.floating) and np.finfo(level.dtype).bits < 64 and np.isfinite(level):
        level = float(np.format_float_positional(level, unique=True))
    lv = float(level)
    if not 0.0 < lv < 1.0:
        raise ValueError(f"{name} must lie in the open interval (0, 1), got {level!r}.")
    return lv


def check_levels(levels, name: str = "levels") -> list[float]:
    r"""``levels`` (a sequence, numpy array or tensor of numbers in ``(0, 1)``) as a non-empty list of floats, each
    read as :func:`check_level` reads it (a float32 tensor's 0.95 is 0.95).

    Raises:
        TypeError: a single number, or entries that are not numbers (names ``name``).
        ValueError: an empty sequence or a level outside ``(0, 1)`` (names ``name``).
    """
    if isinstance(levels, torch.Tensor):
        t = levels.detach().cpu()
        levels = (t.float() if t.dtype in (torch.float16, torch.bfloat16) else t).numpy()
    if isinstance(levels, (int, float, np.number)):
        raise TypeError(f"{name} must be a sequence of numbers in (0, 1), got the number {levels!r}.")
    # entries of a numpy array (or a tensor) stay numpy scalars, so that check_level sees a float32's precision
    items = list(levels.ravel()) if isinstance(levels, np.ndarray) else np.asarray(levels, dtype=object).ravel()
    lv = [check_level(v, name) for v in items]
    if not lv:
        raise ValueError(f"{name} is empty.")
    return lv


def normal_quantile(level: float) -> float:
    r"""Half-width ``z_{(1+level)/2}`` of the central ``level`` interval of a standard normal, in standard
    deviations (1.959964 for ``level = 0.95``)."""
    return float(torch.special.ndtri(torch.tensor(0.5 * (1.0 + level), dtype=torch.float64)))

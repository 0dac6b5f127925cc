r"""Checks of :mod:`gpgeom.pde`: inputs of the reference solvers (numpy parameters and point sets), and the outputs of
residuals and lifts (NaN or infinite values, reported where they arise)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["NonFiniteOutputError", "as_params", "check_finite_output", "check_interval"]


class NonFiniteOutputError(ValueError):
    r"""A user function (a residual, a lift, a field) returned NaN or infinite values for finite inputs; raised by
    :func:`check_finite_output`, whose message names the function, the first bad entry and its inputs."""

    def original(self) -> NonFiniteOutputError:
        r"""The error as first raised: Pyro re-raises errors of a model as new ones of the same type with its trace
        shapes appended, ``from`` the original."""
        err = self
        while isinstance(err.__cause__, NonFiniteOutputError):
            err = err.__cause__
        return err


def as_params(name: str, value: object, size: int) -> np.ndarray:
    r"""``value`` as a float64 vector of exactly ``size`` finite numbers (raises ``ValueError`` naming ``name``)."""
    arr = np.asarray(value, dtype=float).reshape(-1)
    if arr.size != size:
        raise ValueError(f"`{name}` must hold {size} number(s), got {arr.size} (shape {np.shape(value)}).")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` contains NaN or infinite values: {arr.tolist()}.")
    return arr


def check_interval(name: str, x: np.ndarray, lo: float, hi: float) -> None:
    r"""Raise ``ValueError`` unless every entry of ``x`` is finite and in ``[lo, hi]`` (up to 1e-12)."""
    if x.size and (not np.all(np.isfinite(x)) or x.min() < lo - 1e-12 or x.max() > hi + 1e-12):
        raise ValueError(
            f"`{name}` must lie in [{lo:g}, {hi:g}] (the domain), got values in "
            f"[{np.nanmin(x):.6g}, {np.nanmax(x):.6g}]{' and NaN/inf' if not np.all(np.isfinite(x)) else ''}."
        )


def _fmt(t: Tensor) -> str:
    t = t.detach().reshape(-1).cpu()
    vals = ", ".join(f"{float(v):.6g}" for v in t[:6]) + (", ..." if t.numel() > 6 else "")
    return f"[{vals}]" if t.numel() != 1 else vals


def check_finite_output(
    fn: str,
    out: Tensor,
    point_inputs: dict[str, Tensor | None],
    field_inputs: dict[str, Tensor | None],
    hint: str = "",
) -> None:
    r"""Raise ``ValueError`` when the output ``out`` ``(B, n)`` of the function ``fn`` holds NaN or infinite values,
    naming ``fn``, how many entries are bad, the first one and the inputs that produced it.

    Args:
        fn: How the function is named in the message (e.g. ``"residual(u, x, z, w)"``).
        out: Its output ``(B, n)``.
        point_inputs: Inputs with one row per point, ``(B, n, ...)`` (shown at the bad point).
        field_inputs: Inputs with one row per field, ``(B, ...)`` (shown for the bad field).
        hint: A last sentence: what to do.
    """
    finite = torch.isfinite(out)
    if bool(finite.all()):
        return
    first = (~finite).nonzero()[0].tolist()
    b, i = first[0], (first[1] if len(first) > 1 else None)
    shown = []
    for name, t in point_inputs.items():
        if t is not None and i is not None:
            shown.append(f"{name}[{b}, {i}] = {_fmt(t[b, i])}")
    for name, t in field_inputs.items():
        if t is not None and t.shape[-1] > 0:
            shown.append(f"{name}[{b}] = {_fmt(t[b])}")
    where = f"[{b}, {i}]" if i is not None else f"[{b}]"
    msg = (
        f"`{fn}` returned {int((~finite).sum())} NaN or infinite value(s) of {out.numel()}; the first, "
        f"{fn.split('(')[0]}{where} = {float(out.detach()[tuple(first)])}, comes from finite inputs "
        f"{', '.join(shown)}.{' ' + hint if hint else ''}"
    )
    raise NonFiniteOutputError(msg)

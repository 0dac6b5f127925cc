r"""Checks of the user's residual and lift before an RGNP trains (:meth:`gpgeom.models.rgnp.RGNP.fit`).

Errors in user code otherwise surface late and far from their cause: a wrong signature, a residual that indexes a
``w`` the model does not have (``w_bounds=None``) or a lift that returns one tensor instead of the pair ``(b, d)``
raise 20 frames deep inside Pyro's tracing, and a residual detached from the network's field trains silently (its
gradient is zero). :func:`check_user_functions` calls both functions once on a small deterministic batch (no random
numbers are drawn) and turns each case into a one-line error naming the function.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

__all__ = ["check_user_functions"]


def _callable_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def check_user_functions(model: Any) -> None:
    r"""Call the residual (and the lift) once on a small deterministic batch before training, so that a wrong
    signature, a residual that uses ``w`` when the model has none, a lift that does not return a pair, NaN
    values or a residual without a gradient path to the network's field fail here with one line, not deep
    inside Pyro."""
    for what, fn, args in (("residual", model.residual_fn, "u, x, z, w"), ("lift", model.lift_fn, "x, w")):
        if fn is None:
            continue
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):  # builtins and some C callables have no signature
            continue
        n_args = len(args.split(", "))
        try:
            sig.bind(*range(n_args))
        except TypeError:
            raise TypeError(
                f"`{what}` must take {n_args} positional arguments ({args}); "
                f"{_callable_name(fn)}{sig} cannot be called that way."
            ) from None
    opts = {"dtype": model.dtype, "device": model.device}
    B, n = 2, 3
    frac = torch.tensor([0.3, 0.5, 0.7], **opts)[:, None]
    x = (model.lower + (model.upper - model.lower) * frac)[None].expand(B, n, model.dim).clone().requires_grad_(True)
    fz = torch.tensor([[0.4], [0.6]], **opts)
    z = model.z_low + (model.z_high - model.z_low) * fz
    w = model.w_low + (model.w_high - model.w_low) * fz
    hint_w = (
        " The model has no known parameters (w_bounds=None), so w has 0 columns: pass w_bounds=(lower, upper) "
        "if the residual uses w."
        if model.dim_w == 0
        else ""
    )
    shapes = f"x {tuple(x.shape)}, z {tuple(z.shape)}, w {tuple(w.shape)}"
    with torch.enable_grad():
        try:
            b, d = model.lift(x, w)
        except Exception as exc:  # noqa: BLE001 - any failure of user code is reported in one line
            if isinstance(exc, ValueError) and str(exc).startswith("`lift"):
                raise
            raise ValueError(
                f"`lift(x, w)` failed on a trial batch ({shapes}): {type(exc).__name__}: {exc}.{hint_w}"
            ) from exc
        u = b + d * model.forward_dist(z, w, x).loc
        try:
            r = model._call_residual(u, x, z, w)
        except Exception as exc:  # noqa: BLE001
            if isinstance(exc, ValueError) and str(exc).startswith(("`residual", "The residual function")):
                raise
            raise ValueError(
                f"`residual(u, x, z, w)` failed on a trial batch (u {tuple(u.shape)}, {shapes}): "
                f"{type(exc).__name__}: {exc}.{hint_w}"
            ) from exc
        params = [p for p in model.forward_net.parameters() if p.requires_grad]
        grads = torch.autograd.grad(r.sum(), params, allow_unused=True) if r.requires_grad else [None]
    if all(g is None for g in grads):
        raise ValueError(
            "`residual(u, x, z, w)` returned values with no gradient path to the field `u` (detached: e.g. "
            "u.detach(), .item(), .numpy() or torch.no_grad() inside the residual), so training could not change "
            "the network; compute the residual from `u` (and its derivatives by pointwise_grad) with torch "
            "operations."
        )

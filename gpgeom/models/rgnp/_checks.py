r"""Checks and small helpers of :class:`gpgeom.models.rgnp.model.RGNP`: the user's residual and lift, checked
before it trains (:meth:`~gpgeom.models.rgnp.model.RGNP.fit`) and at every call; fields with known parameters
(the data of ``fit``, the reference fields of :meth:`~gpgeom.models.rgnp.model.RGNP.calibrate`, drawn from the
family's solver by :func:`reference_fields`); the fields' points and parameters given to the predictions
(:func:`check_xzw`, :func:`check_w`); the dtype of the model's construction (:func:`default_dtype`) and
the warning of an uncalibrated spread (:func:`warn_uncalibrated`). The error measures are in
:mod:`gpgeom.models.rgnp.measures`, what a model file stores about its family and callables in
:mod:`gpgeom.models.rgnp._persistence`.

Errors in user code otherwise surface late and far from their cause: a wrong signature, a residual that indexes a
``w`` the model does not have (``w_bounds=None``) or a lift that returns one tensor instead of the pair ``(b, d)``
raise 20 frames deep inside Pyro's tracing, and a residual detached from the network's field trains silently (its
gradient is zero), and a lift computed across the points (e.g. normalised by a maximum over them) makes the autograd
derivatives of the field wrong without any error. :func:`check_user_functions` calls both functions once on a small
deterministic batch (no random numbers are drawn) and turns each case into a one-line error naming the function.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gpgeom._progress import progress_bar
from gpgeom._seeds import numpy_rng
from gpgeom._validation import check_positive, first_bad
from gpgeom._warnings import user_stacklevel
from gpgeom.errors import UncalibratedWarning
from gpgeom.models.rgnp._persistence import callable_name
from gpgeom.pde._checks import check_finite_output
from gpgeom.pde.box import check_in_box
from gpgeom.pde.family import PDEFamily

__all__ = [
    "call_back",
    "check_field_data",
    "check_lift_output",
    "check_residual_output",
    "check_network_options",
    "check_user_functions",
    "check_w_given",
    "default_dtype",
    "fixed_grid_side",
    "prepare_data",
    "reference_fields",
    "warn_uncalibrated",
    "check_inverse_points",
    "check_rows",
    "check_w",
    "check_xzw",
    "draw_grid_size",
    "grid_size_option",
    "trained_sizes",
    "uniform_draws",
    "warn_observed_counts",
]


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
                f"{callable_name(fn)}{sig} cannot be called that way."
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
        _check_lift_pointwise(model, w)
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


def _pair(name: str, value: Any, what: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a pair of numbers ({what}), got {value!r}.") from None
    return a, b


def check_network_options(
    hidden: Any, freq_range: Any, variance_bounds: Any, boundary_margin: Any
) -> tuple[tuple[int, ...], tuple[float, float], tuple[float, float]]:
    r"""The forward network's options of :class:`~gpgeom.models.rgnp.model.RGNP`, checked: ``hidden`` (a sequence
    of positive ints: a width 0 cut the network, whose output was then its last bias whatever the input),
    ``freq_range`` ``(lo, hi)`` (positive), ``variance_bounds`` ``(a, b)`` (:math:`0 < a < b`) and
    ``boundary_margin`` (in :math:`[0, 1/2)`: the random points are drawn in the box shrunk by it on both sides, which
    a margin of 1/2 or more turns inside out). Returns ``(hidden, freq_range, variance_bounds)``."""
    if isinstance(hidden, str) or not hasattr(hidden, "__iter__"):
        raise ValueError(f"`hidden` must be a sequence of layer widths (positive ints), got {hidden!r}.")
    hidden = tuple(hidden)
    for i, h in enumerate(hidden):
        check_positive(f"hidden[{i}]", h, integer=True)
    lo, hi = _pair("freq_range", freq_range, "the lowest and highest Fourier frequency")
    check_positive("freq_range[0]", lo)
    check_positive("freq_range[1]", hi)
    a, b = _pair("variance_bounds", variance_bounds, "the bounds a < b of the variances")
    if not 0 < a < b:
        raise ValueError(f"`variance_bounds` must satisfy 0 < a < b, got {variance_bounds!r}.")
    check_positive("boundary_margin", boundary_margin, allow_zero=True)
    if not float(boundary_margin) < 0.5:
        raise ValueError(
            f"`boundary_margin` must be < 0.5 (a fraction of the box's width cut off on each side), got "
            f"{boundary_margin!r}."
        )
    return tuple(int(h) for h in hidden), (lo, hi), (a, b)


def fixed_grid_side(dim: int, n: int, name: str) -> int:
    r"""Points per axis :math:`k` of the fixed regular grid (``grid="fixed"``) of ``n`` points in ``dim``
    dimensions: ``n`` in 1-D; in 2-D and 3-D ``n`` must be :math:`k^D` with :math:`k \ge 2` (a regular grid of
    another size does not exist), else a ``ValueError`` naming ``name`` and the nearest valid sizes."""
    check_positive(name, n, integer=True)
    if dim == 1:
        return int(n)
    k = max(2, round(n ** (1 / dim)))
    if k**dim == n:
        return k
    sizes = [j**dim for j in range(max(2, k - 1), k + 2)]
    below = [v for v in sizes if v < n]
    near = " or ".join(str(v) for v in ([below[-1]] if below else []) + [min(v for v in sizes if v > n)])
    raise ValueError(
        f"`{name}` must be k**{dim} with k >= 2 for the fixed regular grid in {dim}-D (k points per axis), got {n}; "
        f"use e.g. {near}."
    )


def grid_size_option(name: str, n: Any, grid: str, dim: int) -> int | tuple[int, int]:
    r"""Validate a grid size: an int (every step draws grids of ``n`` points) or, with ``grid="random"``, a pair
    ``(lo, hi)`` with :math:`1 \le lo \le hi` (every step draws its size from :func:`draw_grid_size`). Returns the
    int or the pair as a tuple of ints; a ``ValueError``/``TypeError`` naming ``name`` otherwise."""
    if isinstance(n, tuple | list):
        if len(n) != 2:
            raise ValueError(f"`{name}` must be an int or a pair (lo, hi) of ints, got {n!r}.")
        lo, hi = n
        check_positive(f"{name}[0]", lo, integer=True)
        check_positive(f"{name}[1]", hi, integer=True)
        if lo > hi:
            raise ValueError(f"`{name}` = (lo, hi) needs lo <= hi, got {tuple(n)!r}.")
        if grid == "fixed":
            raise ValueError(
                f"`{name}` may be a range {tuple(n)!r} only with grid='random' (a fixed grid has one size)."
            )
        return int(lo), int(hi)
    if grid == "fixed":
        fixed_grid_side(dim, n, name)
    check_positive(name, n, integer=True)
    return int(n)


def uniform_draws(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    r"""U(0, 1) draws of ``shape`` in the dtype and on the device of ``like``, from ``generator`` (drawn on its own
    device, so a CPU generator serves a CUDA model) or from torch's global random state."""
    if generator is None:
        return torch.rand(shape, dtype=like.dtype, device=like.device)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"`generator` must be a torch.Generator or None, got {type(generator).__name__}.")
    return torch.rand(shape, dtype=like.dtype, device=generator.device, generator=generator).to(like.device)


def draw_grid_size(n: int | tuple[int, int], generator: torch.Generator | None = None) -> int:
    r"""The number of points of one step's grids: ``n`` itself, or for a range ``(lo, hi)`` the integer part of
    :math:`\exp U(\log lo, \log (hi + 1))` (log-uniform: about as many steps between 10 and 100 points as between
    100 and 1000; :math:`k` has probability :math:`\log(1 + 1/k) / \log((hi + 1)/lo)`), drawn from ``generator`` or
    from torch's global random state (seeded by :meth:`RGNP.fit`)."""
    if isinstance(n, int):
        return n
    lo, hi = n
    u = float(uniform_draws((), torch.zeros((), dtype=torch.float64), generator))  # float64, on the host
    return min(hi, max(lo, math.floor(math.exp(math.log(lo) + u * (math.log(hi + 1) - math.log(lo))))))


def check_w_given(name: str, w: Any, dim_w: int) -> None:
    r"""Refuse known parameters ``w`` that the model does not have, or ``None`` where it has some, saying so (instead
    of a shape error about a trailing size 0)."""
    if w is None:
        if dim_w:
            raise ValueError(
                f"`{name}` is required (got None): the model has {dim_w} known parameter(s) (its `w_bounds`)."
            )
        return
    shape = tuple(w.shape) if isinstance(w, Tensor) else np.shape(w)
    if not dim_w and math.prod(shape) > 0:
        raise ValueError(
            f"`{name}` must be None: the model has no known parameters (built with w_bounds=None), got values of "
            f"shape {shape}."
        )


def _check_lift_pointwise(model: Any, w: Tensor) -> None:
    r"""Refuse a lift whose ``b[:, i]`` or ``d[:, i]`` depends on the other points ``x[:, j]``, ``j != i`` (e.g. ``d``
    normalised by its maximum over the points): the derivatives of the field by
    :func:`~gpgeom.pde.autodiff.pointwise_grad` (the gradient of the sum over the points) would then add the other
    points' sensitivities to each point's derivative, and the residual would be wrong without an error. Checked by
    autograd on three trial points per field, placed asymmetrically in every coordinate (so that a coupling through a
    maximum or a mean is not hidden by a symmetric placement); ``w`` ``(B, dw)`` the trial parameters."""
    frac = torch.tensor([[0.21, 0.62, 0.35], [0.47, 0.18, 0.71], [0.68, 0.44, 0.12]], dtype=model.dtype)
    frac = frac[:, : model.dim].to(model.device)
    x = (model.lower + (model.upper - model.lower) * frac)[None].expand(w.shape[0], -1, -1).clone().requires_grad_()
    b, d = model.lift(x, w)
    n = x.shape[1]
    for name, t in (("b", b), ("d", d)):
        if not t.requires_grad:
            continue
        for i in range(n):
            (g,) = torch.autograd.grad(t[:, i].sum(), x, retain_graph=True, allow_unused=True)
            if g is None:
                continue
            others = torch.cat([g[:, :i], g[:, i + 1 :]], dim=1)
            if bool((others != 0).any()):
                j = int((others != 0).any(-1).any(0).nonzero()[0])
                j = j + (j >= i)
                raise ValueError(
                    f"`lift(x, w)` must be pointwise: {name}[:, {i}] depends on x[:, {j}], another point (e.g. a "
                    "normalisation over the points, such as a max or mean along dim 1), so the autograd derivatives "
                    "of the field, which RGNP takes of the sum over the points, would be wrong. Compute b and d at "
                    "each point from that point's coordinates (and w) only."
                )


def check_field_data(model: Any, data: Any, name: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Fields with known parameters, a dict with ``x`` ``(S, m, D)``, ``y`` ``(S, m)``, ``z`` ``(S, dz)``, ``w``
    ``(S, dw)`` (numpy or torch; ``w`` may be ``None`` when the model has none), as the model's tensors
    ``(x, y, z, w)``, inside the domain and the supports of the parameters."""
    if not isinstance(data, dict) or not {"x", "y", "z", "w"} <= set(data):
        raise ValueError(f"`{name}` must be a dict with keys 'x' (S, m, D), 'y' (S, m), 'z' (S, dz), 'w' (S, dw).")
    x = model._as_tensor(f"{name}['x']", data["x"], ndim=3, shape=(None, None, model.dim))
    S, m = x.shape[:2]
    if S == 0 or m == 0:
        raise ValueError(
            f"`{name}` must hold at least one field with at least one point; {name}['x'] has shape "
            f"{tuple(x.shape)} (S={S} fields of m={m} points)."
        )
    y = model._as_tensor(f"{name}['y']", data["y"], ndim=2, shape=(S, m))
    z = model._as_tensor(f"{name}['z']", data["z"], ndim=2, shape=(S, model.dim_z))
    check_w_given(f"{name}['w']", data["w"], model.dim_w)
    w = data["w"] if data["w"] is not None else torch.zeros(S, 0)
    w = model._as_tensor(f"{name}['w']", w, ndim=2, shape=(S, model.dim_w))
    check_in_box(f"{name}['x']", x, model.lower, model.upper, "the domain")
    check_in_box(f"{name}['z']", z, model.z_low, model.z_high, "the declared prior support of z")
    if model.dim_w:
        check_in_box(f"{name}['w']", w, model.w_low, model.w_high, "the declared support of w")
    return x, y, z, w


def prepare_data(model: Any, data: Any, noise_std: float, batch: int) -> dict[str, Any]:
    r"""The checked observations of :meth:`~gpgeom.models.rgnp.model.RGNP.fit` (``data``: ``x`` ``(S, m, D)``, ``y``
    ``(S, m)``, ``z`` ``(S, dz)``, ``w`` ``(S, dw)``) with the noise level and the data fields per step."""
    x, y, z, w = check_field_data(model, data, "data")
    check_positive("noise_std", noise_std)
    check_positive("data_batch", batch, integer=True)
    noise = torch.tensor(float(noise_std), dtype=model.dtype, device=model.device)
    return {"x": x, "y": y, "z": z, "w": w, "noise": noise, "batch": batch}


def reference_fields(
    model: Any, data: Any, n_fields: int, n_points: int, seed: int | None, progress: bool | None = False,
    leave: bool = True,
) -> tuple[Tensor, ...]:  # fmt: skip
    r"""Reference fields ``(x, y, z, w)`` for :meth:`~gpgeom.models.rgnp.model.RGNP.calibrate`: ``data`` checked, or
    ``n_fields`` draws from the priors solved by the family's reference solver at ``n_points`` random points, one
    solve per field under a progress bar (``progress``, :mod:`gpgeom._progress`; ``leave``: kept when done)."""
    if data is not None:
        return check_field_data(model, data, "data")
    if model.family is None or type(model.family).solve is PDEFamily.solve:
        raise ValueError(
            "`data` is required: this model has no PDE family with a reference solver (`family.solve`) to draw "
            "reference fields from; pass data={'x': (S, m, D), 'y': (S, m), 'z': (S, dz), 'w': (S, dw)} of "
            "accurate solutions (fields the networks were not trained on)."
        )
    rng = numpy_rng("seed", seed, generator=False)  # None: one draw of torch's global stream (repeatable)
    z, w = model.family.sample_params(n_fields, rng)
    lo, hi = (t.detach().cpu().double().numpy() for t in (model.lower, model.upper))
    m = model.boundary_margin * (hi - lo)
    x = lo + m + (hi - lo - 2 * m) * rng.random((n_fields, n_points, model.dim))
    bar = progress_bar(
        range(n_fields), desc="RGNP reference solves", unit="field", leave=leave, progress=progress
    )  # fmt: skip
    with bar:
        y = np.stack([np.asarray(model.family.solve(z[i], w[i], x[i]), dtype=float) for i in bar])
    return check_field_data(model, {"x": x, "y": y, "z": z, "w": w}, "data")


def check_lift_output(out: Any, x: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    r"""The pair ``(b, d)`` a user lift returned for ``x`` ``(B, n, D)``, each ``(B, n)`` and finite."""
    if not (isinstance(out, tuple | list) and len(out) == 2):
        got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
        if isinstance(out, tuple | list):
            got = f"a {type(out).__name__} of {len(out)} items"
        raise ValueError(
            f"`lift(x, w)` must return a pair (b, d) of tensors of shape {tuple(x.shape[:2])} (u = b + d * "
            f"u_hat), got {got}."
        )
    b, d = out
    for name, t in (("b", b), ("d", d)):
        if not isinstance(t, Tensor) or t.shape != x.shape[:2]:
            raise ValueError(
                f"`lift(x, w)` must return two tensors (b, d) of shape {tuple(x.shape[:2])}; "
                f"{name} has shape {tuple(getattr(t, 'shape', ()))}."
            )
        check_finite_output(
            f"lift(x, w) -> {name}", t, {"x": x}, {"w": w},
            "Make the lift finite on the whole domain (e.g. no log or division by a distance that vanishes).",
        )  # fmt: skip
    return b, d


def check_residual_output(r: Any, u: Tensor, x: Tensor, z: Tensor, w: Tensor) -> Tensor:
    r"""The residual a user function returned for field values ``u`` ``(B, n)``: one finite value per point."""
    if not isinstance(r, Tensor) or r.shape != u.shape:
        got = tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__
        raise ValueError(
            f"The residual function must return a tensor of shape (B, n) = {tuple(u.shape)} (one residual per "
            f"collocation point), got {got}. For a system, stack the component residuals along the points "
            f"axis or sum their squares into one residual per point."
        )
    if not bool(torch.isfinite(r).all()) and bool(torch.isfinite(u).all()):
        check_finite_output(
            "residual(u, x, z, w)", r, {"x": x, "u": u}, {"z": z, "w": w},
            "Make the residual finite on the whole domain and prior box (e.g. no log, sqrt or division that is "
            "undefined there).",
        )  # fmt: skip
    return r


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    r"""Within the block, tensors and parameters are created in ``dtype`` (``torch.set_default_dtype``)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


# the "once per model" marks of the two warnings below: checked and set under this lock, so that of several threads
# predicting with one model at once exactly one warns (a check and a later mark let each thread see the model unmarked)
_WARNED_LOCK = threading.Lock()


def _first_warning(model: Any, mark: str) -> bool:
    r"""Whether this call is the first to give ``model`` the warning marked by the attribute ``mark`` (then set):
    the check and the mark are one step, so that of several threads predicting at once exactly one warns."""
    with _WARNED_LOCK:
        if getattr(model, mark, False):
            return False
        setattr(model, mark, True)
        return True


def warn_uncalibrated(model: Any) -> None:
    r"""Warn (once per model) that :meth:`~gpgeom.models.rgnp.model.RGNP.predict`'s spread before
    :meth:`~gpgeom.models.rgnp.model.RGNP.calibrate` leaves out the networks' approximation error."""
    if not _first_warning(model, "_uncalibrated_warned"):  # once per model: the advice does not change
        return
    warnings.warn(
        "RGNP.predict's standard deviation before calibrate() is q_alpha's own spread, which does not include "
        "the networks' approximation error (95% coverage 0.10-0.17 on the built-in families); call "
        "model.calibrate() (reference fields from the family's solver, or data=) first.",
        UncalibratedWarning,
        stacklevel=user_stacklevel(),
    )


def check_rows(model: Any, name: str, t: Any, size: int) -> Tensor:
    r"""``t`` ``(B, size)`` or ``(size,)`` as a ``(B, size)`` tensor of the model's dtype (``B = 1`` for 1-D)."""
    t = model._as_tensor(name, t, ndim=(1, 2), shape=(size,))
    return t if t.dim() == 2 else t[None]


def check_w(model: Any, w: Any, B: int) -> Tensor:
    r"""The known parameters ``w`` of ``B`` fields as ``(B, dw)``: ``(B, dw)``, or ``(dw,)`` / ``(1, dw)`` shared by
    all; ``(B, 0)`` for a model without known parameters (``w`` checked by :func:`check_w_given`)."""
    check_w_given("w", w, model.dim_w)
    if w is None or not model.dim_w:
        return torch.zeros(B, 0, dtype=model.dtype, device=model.device)
    w = check_rows(model, "w", w, model.dim_w)
    if w.shape[0] == 1 and B > 1:
        w = w.expand(B, -1)
    if w.shape[0] != B:
        raise ValueError(f"`w` must hold 1 or {B} rows (one per field), got {w.shape[0]}.")
    return w


def check_xzw(model: Any, x: Any, z: Any, w: Any, check_support: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    r"""Points ``x`` ``(B, n, D)`` (or ``(n, D)`` shared), ``z`` ``(B, dz)`` (or ``(dz,)``) and ``w`` (:func:`check_w`)
    as tensors, ``x`` inside the domain and, with ``check_support``, ``z`` and ``w`` inside their supports."""
    z = check_rows(model, "z", z, model.dim_z)
    B = z.shape[0]
    w = check_w(model, w, B)
    x = model._as_tensor("x", x, ndim=(2, 3), shape=(model.dim,))
    if x.dim() == 2:
        x = x[None].expand(B, -1, -1)
    if x.shape[0] != B:
        raise ValueError(f"`x` has {x.shape[0]} point sets but `z` has {B} rows.")
    check_in_box("x", x, model.lower, model.upper, "the domain")
    if check_support:
        check_in_box("z", z, model.z_low, model.z_high, "the declared prior support of z")
        if model.dim_w:
            check_in_box("w", w, model.w_low, model.w_high, "the declared support of w")
    return x, z, w


def check_inverse_points(model: Any, x: Any, u: Any, mask: Any) -> tuple[Tensor, Tensor, Tensor | None]:
    r"""The inputs of :meth:`~gpgeom.models.rgnp.model.RGNP.predict_inverse` checked and shaped: ``x`` ``(B, n, D)``
    (from ``(n, D)`` shared by the fields), ``u`` ``(B, n)`` (from ``(n,)`` or ``(B, n, 1)``) and ``mask`` ``(B, n)``
    (``None``: every point is real); the real points finite and inside the domain (padding, ``mask`` False, may
    hold anything)."""
    padded = mask is not None
    u = model._as_tensor("u", u, ndim=(1, 2, 3), finite=not padded)
    if u.dim() == 3:
        if u.shape[-1] != 1:
            raise ValueError(f"`u` of 3 dimensions must be (B, n, 1), got shape {tuple(u.shape)}.")
        u = u[..., 0]
    u = u[None] if u.dim() == 1 else u
    if u.shape[-1] == 0:
        raise ValueError(
            f"`u` holds no point (shape {tuple(u.shape)}): the inverse problem needs at least one observed value "
            "per field."
        )
    x = model._as_tensor("x", x, ndim=(2, 3), shape=(model.dim,), finite=not padded)
    if x.dim() == 2:
        x = x[None].expand(u.shape[0], -1, -1)
    if x.shape[:2] != u.shape:
        raise ValueError(f"`x` {tuple(x.shape)} and `u` {tuple(u.shape)} must describe the same points.")
    if padded:
        mask = torch.as_tensor(mask, device=x.device)
        if mask.dtype != torch.bool or mask.reshape(-1, mask.shape[-1]).shape != u.shape:
            raise ValueError(
                f"`mask` must be a bool array of shape {tuple(u.shape)}, got {mask.dtype} {tuple(mask.shape)}."
            )
        mask = mask.reshape(u.shape)
        for name, t in (("u", u), ("x", x)):
            real = mask if t.dim() == mask.dim() else mask[..., None]
            bad = ~torch.isfinite(t) & real
            if bool(bad.any()):
                points = int((bad if t.dim() == mask.dim() else bad.any(-1)).sum())
                raise ValueError(
                    f"`{name}` holds NaN or infinite values at {points} real point(s) (`mask` True)"
                    f"{first_bad(t, bad)}; padding (`mask` False) may hold anything, real points must be finite."
                )
    lower, upper = model.lower, model.upper
    check_in_box("x", x if mask is None else torch.where(mask[..., None], x, lower), lower, upper, "the domain")
    return x, u, mask


def trained_sizes(sizes: tuple[int, int] | None, n_points: int | tuple[int, int]) -> tuple[int, int]:
    r"""The smallest and largest grid sizes trained on so far: ``sizes`` (``None`` before any training) widened by
    a run on grids of ``n_points`` (an int or a range)."""
    lo, hi = (n_points, n_points) if isinstance(n_points, int) else n_points
    return (lo, hi) if sizes is None else (min(sizes[0], lo), max(sizes[1], hi))


def warn_observed_counts(model: Any, counts: Any) -> None:
    r"""Warn (once per model) when :meth:`~gpgeom.models.rgnp.model.RGNP.predict_inverse` is given sets of
    observed points more than twice as many, or fewer than half as many, as the grids :math:`q_\beta` was trained
    on (``model.trained_sizes_``): its spread does not hold there. ``counts``: an int or a tensor ``(B,)``."""
    sizes = getattr(model, "trained_sizes_", None)
    if sizes is None or getattr(model, "_counts_warned", False):
        return
    counts = torch.as_tensor(counts)
    low, high = int(counts.min()), int(counts.max())
    if 2 * low >= sizes[0] and high <= 2 * sizes[1]:
        return
    if not _first_warning(model, "_counts_warned"):  # once per model until its next fit: the advice does not change
        return
    given = f"{low}" if low == high else f"{low} to {high}"
    trained = f"{sizes[0]}" if sizes[0] == sizes[1] else f"{sizes[0]} to {sizes[1]}"
    if model.inverse_net.count_feature:
        why = "its spread for that many points is extrapolated"
    else:
        why = (
            f"its encoder is not told a set's size, so its spread is the one learnt for {trained} points (too narrow "
            "from fewer points, too wide from more; e.g. 0.54 and 4.2 times the exact sd from 5 and 300 points on a "
            "toy trained on 30)"
        )
    warnings.warn(
        f"RGNP.predict_inverse got sets of {given} observed points, but q_beta was trained on grids of {trained} "
        f"points: {why}. Train on the sizes you observe: RGNP(..., n_points=(lo, hi)).",
        UncalibratedWarning,
        stacklevel=user_stacklevel(),
    )


def call_back(
    callback: Callable[[int, float], None] | None,
    step: int,
    loss: Tensor,
    dp: Any = None,
) -> None:
    r"""``callback(step, loss)`` of :meth:`~gpgeom.models.rgnp.model.RGNP.fit` (``loss``: the step's loss, a scalar
    tensor). A ``StopIteration`` from it is raised again carrying ``loss``, which tells the engine's Adam loop to end
    the fit with this step's loss as its last one (:mod:`gpgeom.engine.optimizers`).

    Under ``torchrun``, ``dp`` (the :class:`gpgeom.engine.distributed.DataParallel` of the fit) makes the outcome the
    ranks' (:meth:`~gpgeom.engine.distributed.DataParallel.agree`): when the callback asks one rank to stop, every
    rank stops at this step; when it raises on one rank, that rank raises its exception and the others a
    ``RuntimeError`` naming that rank and its error. Before, the other ranks went on alone into their next
    all-reduce (a hang until the collectives' timeout, or mismatched collectives)."""
    if callback is None:
        return
    outcome, error = 0, None
    try:
        callback(step, float(loss.detach()))
    except StopIteration:
        outcome = 1
    except BaseException as err:  # noqa: BLE001 - re-raised below, after the other ranks have been told
        if dp is None:
            raise
        outcome, error = 2, err
    if dp is not None:
        outcome = dp.agree(outcome)
        if outcome == 2:
            dp.raise_failure(error, f"RGNP.fit, in the callback at step {step}")
    if outcome == 1:
        raise StopIteration(loss) from None

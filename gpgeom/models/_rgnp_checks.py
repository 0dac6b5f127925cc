r"""Checks and small helpers of :class:`gpgeom.models.rgnp.RGNP`: the user's residual and lift, checked before it
trains (:meth:`~gpgeom.models.rgnp.RGNP.fit`) and at every call; fields with known parameters (the data of ``fit``,
the reference fields of :meth:`~gpgeom.models.rgnp.RGNP.calibrate`, drawn from the family's solver by
:func:`reference_fields`); the error measures :func:`nse` and :func:`coverage`; what a model file stores about its
family and callables and how they come back (:func:`family_info`, :func:`resolve_callables`, :func:`rebuild_family`).

Errors in user code otherwise surface late and far from their cause: a wrong signature, a residual that indexes a
``w`` the model does not have (``w_bounds=None``) or a lift that returns one tensor instead of the pair ``(b, d)``
raise 20 frames deep inside Pyro's tracing, and a residual detached from the network's field trains silently (its
gradient is zero). :func:`check_user_functions` calls both functions once on a small deterministic batch (no random
numbers are drawn) and turns each case into a one-line error naming the function.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gpgeom._validation import check_positive
from gpgeom.errors import ModelFileError, UncalibratedWarning
from gpgeom.pde._checks import check_finite_output
from gpgeom.pde.box import check_in_box
from gpgeom.pde.family import PDEFamily
from gpgeom.pde.registry import get_family, is_registered

__all__ = [
    "callable_name",
    "check_field_data",
    "check_lift_output",
    "check_residual_output",
    "check_user_functions",
    "coverage",
    "default_dtype",
    "family_info",
    "nse",
    "rebuild_family",
    "reference_fields",
    "resolve_callables",
]


def callable_name(fn: Any) -> str | None:
    r"""The name of a callable as a model file stores it (``None`` for ``None``)."""
    if fn is None:
        return None
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


def check_field_data(model: Any, data: Any, name: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Fields with known parameters, a dict with ``x`` ``(S, m, D)``, ``y`` ``(S, m)``, ``z`` ``(S, dz)``, ``w``
    ``(S, dw)`` (numpy or torch; ``w`` may be ``None`` when the model has none), as the model's tensors
    ``(x, y, z, w)``, inside the domain and the supports of the parameters."""
    if not isinstance(data, dict) or not {"x", "y", "z", "w"} <= set(data):
        raise ValueError(f"`{name}` must be a dict with keys 'x' (S, m, D), 'y' (S, m), 'z' (S, dz), 'w' (S, dw).")
    x = model._as_tensor(f"{name}['x']", data["x"], ndim=3, shape=(None, None, model.dim))
    S, m = x.shape[:2]
    y = model._as_tensor(f"{name}['y']", data["y"], ndim=2, shape=(S, m))
    z = model._as_tensor(f"{name}['z']", data["z"], ndim=2, shape=(S, model.dim_z))
    w = data["w"] if data["w"] is not None else torch.zeros(S, 0)
    w = model._as_tensor(f"{name}['w']", w, ndim=2, shape=(S, model.dim_w))
    check_in_box(f"{name}['x']", x, model.lower, model.upper, "the domain")
    check_in_box(f"{name}['z']", z, model.z_low, model.z_high, "the declared prior support of z")
    if model.dim_w:
        check_in_box(f"{name}['w']", w, model.w_low, model.w_high, "the declared support of w")
    return x, y, z, w


def _same_shape(what: str, *tensors: Tensor) -> None:
    shapes = [tuple(t.shape) for t in tensors]
    if len(set(shapes)) > 1:
        raise ValueError(
            f"`{what}` needs tensors of one shape (no broadcasting), got {', '.join(map(str, shapes))}; compare "
            "RGNP.predict's (B, n, 1) output with truth[..., None], or its [..., 0] with a (B, n) truth."
        )


def nse(mean: Tensor, truth: Tensor) -> Tensor:
    r"""Normalised squared error per field, :math:`(\|m - t\|_2 / \|t\|_2)^2`; its square root is the relative
    :math:`L_2` error.

    Args:
        mean, truth: Tensors of one shape: ``(B, n)`` or ``(B, n, m)`` (``B`` fields; the norm runs over all other
            dimensions, e.g. the ``(B, n, 1)`` output of :meth:`RGNP.predict`, or ``(B, dz)`` parameters), or
            ``(n,)`` for one field.

    Returns:
        ``(B,)`` (a scalar tensor for 1-D inputs).
    """
    _same_shape("nse(mean, truth)", mean, truth)
    dims = tuple(range(1, mean.dim())) if mean.dim() > 1 else (0,)
    return (torch.linalg.vector_norm(mean - truth, dim=dims) / torch.linalg.vector_norm(truth, dim=dims)) ** 2


def coverage(mean: Tensor, std: Tensor, truth: Tensor, k: float = 2.0) -> Tensor:
    r"""Fraction of entries with :math:`|t - m| \le k \sigma` over all entries of three tensors of one shape
    (points with :math:`\sigma = 0` count as covered only if the mean is exact)."""
    _same_shape("coverage(mean, std, truth)", mean, std, truth)
    return ((truth - mean).abs() <= k * std).to(mean.dtype).mean()


def rebuild_family(info: dict[str, Any], required: bool) -> PDEFamily | None:
    r"""The family a model file names, from the registry; ``None`` when it is not available and not ``required``."""
    if not info["registered"]:
        if required:
            raise ModelFileError(
                f"This RGNP file holds a model of the PDE family {info['name']!r} ({info['class']}), which was not "
                "registered when it was saved; pass residual=... and lift=... to RGNP.load, or register the family "
                "(gpgeom.pde.register_family) and save the model again."
            )
        return None
    try:
        family_cls = get_family(info["name"])
    except ValueError as exc:
        if not required:
            return None
        raise ModelFileError(
            f"This RGNP file holds a model of the PDE family {info['name']!r} ({info['class']}), which is not "
            "registered in this process: import the module that defines and registers it before RGNP.load, or pass "
            "residual=... and lift=...."
        ) from exc
    return family_cls(**info["config"])


def family_info(fam: PDEFamily | None) -> dict[str, Any] | None:
    r"""What a model file stores about its PDE family (name, configuration, whether registered, class)."""
    if fam is None:
        return None
    return {
        "name": fam.name, "config": dict(fam.config()), "registered": is_registered(fam),
        "class": f"{type(fam).__module__}.{type(fam).__qualname__}",
    }  # fmt: skip


def resolve_callables(state: dict[str, Any], residual: Any, lift: Any) -> tuple[Any, Any, PDEFamily | None, dict]:
    r"""The residual, lift, family and sources of an RGNP file's state (``RGNP._from_state``): the family from the
    registry, user callables from the arguments; refuses what the file cannot be loaded with."""
    sources, fam_info, names = dict(state["sources"]), state["family"], state["callable_names"]
    if sources["lift"] == "none" and lift is not None:
        raise TypeError(
            "This RGNP file holds a model built without a lift (no hard boundary conditions); passing `lift=` "
            "would change its predictions. Load it without `lift=`."
        )
    family = None
    if fam_info is not None:
        need = (sources["residual"] == "family" and residual is None) or (sources["lift"] == "family" and lift is None)
        family = rebuild_family(fam_info, required=need)
    missing = []
    # callables given here replace the family's (and must be given again after a later save)
    if residual is not None:
        sources["residual"] = "user"
    if lift is not None:
        sources["lift"] = "user"
    if residual is None:
        residual = family.residual_fn() if family is not None and sources["residual"] == "family" else None
        if residual is None:
            missing.append(("residual", names["residual"]))
    if lift is None and sources["lift"] != "none":
        lift = family.boundary_ansatz if family is not None and sources["lift"] == "family" else None
        if lift is None:
            missing.append(("lift", names["lift"]))
    if missing:
        what = " and ".join(f"a user-defined {k} function (saved as {n!r})" for k, n in missing)
        args = ", ".join(f"{k}=..." for k, _ in missing)
        raise ModelFileError(
            f"This RGNP file holds a model built with {what}, which a file cannot hold; pass {args} (the same "
            "function as when the model was saved) to RGNP.load."
        )
    return residual, lift, family, sources


def file_config(state: dict[str, Any]) -> dict[str, Any]:
    r"""The constructor arguments stored in an RGNP file's state. Files written before GICNet's ``aggregation``
    option hold no such key: their inverse network was trained with the Nadaraya-Watson average over the points,
    so they load with ``aggregation="points"`` and predict as when they were saved."""
    config = dict(state["config"])
    config["gicnet"] = {"aggregation": "points", **dict(config.get("gicnet") or {})}
    return config


def prepare_data(model: Any, data: Any, noise_std: float, batch: int) -> dict[str, Any]:
    r"""The checked observations of :meth:`~gpgeom.models.rgnp.RGNP.fit` (``data``: ``x`` ``(S, m, D)``, ``y``
    ``(S, m)``, ``z`` ``(S, dz)``, ``w`` ``(S, dw)``) with the noise level and the data fields per step."""
    x, y, z, w = check_field_data(model, data, "data")
    check_positive("noise_std", noise_std)
    check_positive("data_batch", batch, integer=True)
    noise = torch.tensor(float(noise_std), dtype=model.dtype, device=model.device)
    return {"x": x, "y": y, "z": z, "w": w, "noise": noise, "batch": batch}


def reference_fields(model: Any, data: Any, n_fields: int, n_points: int, seed: int | None) -> tuple[Tensor, ...]:
    r"""Reference fields ``(x, y, z, w)`` for :meth:`~gpgeom.models.rgnp.RGNP.calibrate`: ``data`` checked, or
    ``n_fields`` draws from the priors solved by the family's reference solver at ``n_points`` random points."""
    if data is not None:
        return check_field_data(model, data, "data")
    if model.family is None or type(model.family).solve is PDEFamily.solve:
        raise ValueError(
            "`data` is required: this model has no PDE family with a reference solver (`family.solve`) to draw "
            "reference fields from; pass data={'x': (S, m, D), 'y': (S, m), 'z': (S, dz), 'w': (S, dw)} of "
            "accurate solutions (fields the networks were not trained on)."
        )
    rng = np.random.default_rng(seed)
    z, w = model.family.sample_params(n_fields, rng)
    lo, hi = (t.detach().cpu().double().numpy() for t in (model.lower, model.upper))
    m = model.boundary_margin * (hi - lo)
    x = lo + m + (hi - lo - 2 * m) * rng.random((n_fields, n_points, model.dim))
    y = np.stack([np.asarray(model.family.solve(z[i], w[i], x[i]), dtype=float) for i in range(n_fields)])
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


def warn_uncalibrated(model: Any) -> None:
    r"""Warn (once per model) that :meth:`~gpgeom.models.rgnp.RGNP.predict`'s spread before
    :meth:`~gpgeom.models.rgnp.RGNP.calibrate` leaves out the networks' approximation error."""
    if not getattr(model, "_uncalibrated_warned", False):  # once per model: the advice does not change
        model._uncalibrated_warned = True
        warnings.warn(
            "RGNP.predict's standard deviation before calibrate() is q_alpha's own spread, which does not include "
            "the networks' approximation error (95% coverage 0.10-0.17 on the built-in families); call "
            "model.calibrate() (reference fields from the family's solver, or data=) first.",
            UncalibratedWarning,
            stacklevel=3,
        )

r"""What an RGNP model file (:meth:`~gpgeom.models.rgnp.model.RGNP.save`, :mod:`gpgeom._io`) stores
(:func:`get_state`), in particular about the model's PDE family and user callables, and how the model comes back at
:meth:`~gpgeom.models.rgnp.model.RGNP.load` (:func:`from_state`, :func:`family_info`, :func:`resolve_callables`,
:func:`rebuild_family`, :func:`file_config`, :func:`callable_name`), and how they travel through ``pickle`` and
``copy.deepcopy`` (:func:`pickled_state`, :func:`unpickled_state`).
"""

from __future__ import annotations

import copy
import pickle
from typing import Any

import numpy as np
import torch

from gpgeom.errors import ModelFileError
from gpgeom.pde.family import PDEFamily
from gpgeom.pde.registry import get_family, is_registered

__all__ = [
    "callable_name",
    "family_info",
    "file_config",
    "from_state",
    "get_state",
    "pickled_state",
    "rebuild_family",
    "resolve_callables",
    "unpickled_state",
]


def callable_name(fn: Any) -> str | None:
    r"""The name of a callable as a model file stores it (``None`` for ``None``)."""
    if fn is None:
        return None
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


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


def _plain(value: Any, where: str) -> Any:
    r"""``value`` as what a model file can hold and load with ``weights_only=True``: ``None``, bools, numbers, strings,
    tensors, and lists, tuples and string-keyed dicts of them; numpy scalars become Python numbers (their ``.item()``).
    Anything else (a numpy array, an object) is a ``TypeError`` naming ``where``: torch would write it and then refuse
    to read the file ("is not a gpgeom model file")."""
    if isinstance(value, np.generic) and np.ndim(value) == 0 and isinstance(value.item(), bool | int | float):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str | torch.Tensor):
        return value
    if isinstance(value, list | tuple):
        return type(value)(_plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which a model file cannot hold: "
        "PDEFamily.config() must return plain values (numbers, strings, lists, tuples, dicts, tensors), e.g. "
        "array.tolist() for a numpy array."
    )


def family_info(fam: PDEFamily | None) -> dict[str, Any] | None:
    r"""What a model file stores about its PDE family (name, configuration as plain values, whether registered,
    class)."""
    if fam is None:
        return None
    config = {k: _plain(v, f"{type(fam).__qualname__}.config()[{k!r}]") for k, v in dict(fam.config()).items()}
    return {
        "name": fam.name, "config": config, "registered": is_registered(fam),
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
    so they load with ``aggregation="points"`` and predict as when they were saved. Files of a fixed grid in 2-D or
    3-D written when ``n_points`` was not required to be :math:`k^D` were trained on the grid of
    :math:`\max(2, \mathrm{round}(n^{1/D}))^D` points: they load with that ``n_points``."""
    config = dict(state["config"])
    config["gicnet"] = {"aggregation": "points", **dict(config.get("gicnet") or {})}
    dim = len(config["domain"][0])
    if config.get("grid") == "fixed" and dim > 1:
        config["n_points"] = max(2, round(config["n_points"] ** (1 / dim))) ** dim
    return config


def get_state(model: Any) -> dict[str, Any]:
    r"""What a file of the RGNP ``model`` holds (``RGNP._get_state``): its configuration, dtype, weights, training
    history, trained grid sizes, calibration, family (:func:`family_info`), the sources and names of its callables."""
    return {
        "config": dict(model.config),
        "dtype": str(model.dtype).replace("torch.", ""),
        "module_state": model.state_dict(),
        "fit_history": [float(v) for v in model.fit_history],
        "trained_sizes": model.trained_sizes_,
        "calibration": model.calibration_,
        "family": family_info(model.family),
        "sources": dict(model._sources),
        "callable_names": {"residual": callable_name(model.residual_fn), "lift": callable_name(model.lift_fn)},
    }


def from_state(cls: type, state: dict[str, Any], residual: Any, lift: Any, unknown: dict[str, Any]) -> Any:
    r"""The RGNP (of class ``cls``) of a file's :func:`get_state` (``RGNP._from_state``): the family from the
    registry, user callables from the arguments (:func:`resolve_callables`); ``unknown``: the other keyword arguments
    given to ``RGNP.load`` (a ``TypeError`` when there are any)."""
    if unknown:
        raise TypeError(f"RGNP.load got unexpected arguments {sorted(unknown)}; it takes `residual` and `lift`.")
    residual, lift, family, sources = resolve_callables(state, residual, lift)
    dtype = getattr(torch, state["dtype"])
    model = cls(residual, lift=lift, dtype=dtype, **file_config(state))
    module_state = dict(state["module_state"])
    for key, value in model.discrepancy.state_dict().items():  # files from before the discrepancy existed
        module_state.setdefault(f"discrepancy.{key}", value)
    model.load_state_dict(module_state)
    model.calibration_ = state.get("calibration")
    model.family = family
    model._sources = sources
    model.fit_history = list(state["fit_history"])
    n = model.n_points  # files before trained_sizes: the constructor's n_points (an int or a range), if trained
    sizes = state.get("trained_sizes", ((n, n) if isinstance(n, int) else n) if model.fit_history else None)
    model.trained_sizes_ = None if sizes is None else tuple(sizes)
    return model


class _UserCallable:
    r"""A user's ``residual`` or ``lift`` inside a pickled RGNP: pickles as the callable itself when Python can
    pickle it (a function defined at module level), else raises a ``TypeError`` naming it and the remedy (instead of
    pickle's ``attribute lookup <lambda> on __main__ failed`` deep inside ``pickle.dumps``, ``torch.save(model)`` or a
    Dask/multiprocessing transfer). ``copy.deepcopy`` copies it as Python copies the callable."""

    __slots__ = ("fn", "name")

    def __init__(self, name: str, fn: Any) -> None:
        self.name, self.fn = name, fn

    def __deepcopy__(self, memo: dict[int, Any]) -> _UserCallable:
        return _UserCallable(self.name, copy.deepcopy(self.fn, memo))

    def __reduce__(self) -> tuple[Any, ...]:
        try:
            pickle.dumps(self.fn)
        except Exception as exc:  # noqa: BLE001 - any pickling failure of the user's callable
            raise TypeError(
                f"This RGNP cannot be pickled: its `{self.name}` callable {callable_name(self.fn)!r} cannot be pickled "
                f"({type(exc).__name__}: {str(exc)[:200]}); lambdas and functions defined inside other functions "
                f"never can. Define the {self.name} at module level, or save the model with model.save(path) and "
                f"reload it with RGNP.load(path, {self.name}=...) where it is needed (copy.deepcopy(model) works)."
            ) from exc
        return (_UserCallable, (self.name, self.fn))


_CALLABLES = (("residual", "residual_fn"), ("lift", "lift_fn"))


def pickled_state(state: dict[str, Any]) -> dict[str, Any]:
    r"""An RGNP's ``__getstate__`` (``state``: ``nn.Module``'s) for ``pickle`` / ``copy.deepcopy``: the residual and
    lift of a PDE family are left out, to be rebuilt from the (pickled or copied) family by :func:`unpickled_state`,
    since :meth:`PDEFamily.residual_fn <gpgeom.pde.family.PDEFamily.residual_fn>` is a closure that pickle cannot
    hold; a user's callables travel as themselves (:class:`_UserCallable`: a clear ``TypeError`` when they cannot be
    pickled)."""
    state = dict(state)
    sources = state.get("_sources", {})
    for name, attr in _CALLABLES:
        fn = state.get(attr)
        if fn is None:
            continue
        if sources.get(name) == "family" and state.get("family") is not None:
            state[attr] = None  # rebuilt from the family by unpickled_state
        else:
            state[attr] = _UserCallable(name, fn)
    return state


def unpickled_state(state: dict[str, Any]) -> dict[str, Any]:
    r"""The state for ``nn.Module.__setstate__`` from :func:`pickled_state`'s: the user's callables unwrapped, a
    family's residual and lift rebuilt from the family."""
    state = {k: v.fn if isinstance(v, _UserCallable) else v for k, v in state.items()}
    family, sources = state.get("family"), state.get("_sources", {})
    if family is not None and sources.get("residual") == "family" and state.get("residual_fn") is None:
        state["residual_fn"] = family.residual_fn()
    if family is not None and sources.get("lift") == "family" and state.get("lift_fn") is None:
        state["lift_fn"] = family.boundary_ansatz
    return state

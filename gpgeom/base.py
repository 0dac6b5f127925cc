r"""The model contract that every gpgeom model keeps.

MMGP, RVGP, FunBaT/FunBaTCP, RGNP, the SO(3)xR3 and SE(3) trajectories and :class:`~gpgeom.botorch.ExactGPModel`
all derive from :class:`ModelContract`, so a user meets one API:

**Fitting.** ``fit(...)`` returns the model itself; the optimisation record is ``fit_result_`` and every other piece
of fitted state ends in an underscore, as in scikit-learn. Using a model before ``fit``/``load`` raises
:class:`~gpgeom.errors.NotFittedError`. A ``fit`` that raises (bad input, a loss or residual that fails, an exception
or ``KeyboardInterrupt`` from a callback) leaves the model as it was before the call: unfitted (still
:class:`~gpgeom.errors.NotFittedError`), or its previous fit with the same parameters, fitted attributes and
predictions (:meth:`ModelContract._kept_on_error`; ``nn.Module`` models also get their parameters and buffers back,
which the optimisers change in place). To stop a long fit early and keep it, raise ``StopIteration`` from the
``callback`` (RGNP, FunBaT): the fit ends there as a completed one, ``fit_result_.stopped`` is True.

**Progress.** Every ``fit``, and every other operation that can run for long (``MMGP.predict``, ``ood_score``,
``encode`` and ``encode_targets`` over many meshes, ``RGNP.calibrate``, the mesh generators,
``gpgeom.demo.run_demo``), takes a keyword-only ``progress: bool | None = None``; ``None`` shows a bar when a person
is watching (a terminal or a notebook) and stays silent in logs, CI and tests (:mod:`gpgeom._progress`); a value that
is not a bool or None is a ``TypeError``. Inner steps (restarts, executor workers, the fits inside a calibration)
never add bars of their own (``tests/test_progress.py``).

**Prediction.** ``predict(...)`` returns torch tensors: the mean, and ``(mean, std)`` with ``return_std=True``;
tensor outputs carry an explicit output dimension (``n x m``, also for ``m = 1``). Results per mesh or per time are
lists or small dataclasses of tensors. ``observation_noise=True`` adds the likelihood's noise where there is one.

**Inputs and dtypes.** Every method accepts numpy arrays and torch tensors alike. A model computes in one floating
dtype, :attr:`ModelContract.dtype`: float64 unless the model is built with another (a ``dtype=`` argument where
the constructor has one; :class:`~gpgeom.botorch.ExactGPModel` takes the dtype of ``train_X``, as BoTorch does) or
moved with ``to(dtype=...)``. Inputs of any dtype are converted to ``model.dtype`` on ``model.device``
(:func:`gpgeom._validation.as_tensor`): float32 input to a float64 model is promoted, float64 input to a float32
model is rounded. Outputs are tensors of ``model.dtype`` on ``model.device``.

**Devices.** ``to(*, device=None, dtype=None)`` (keyword arguments) moves a model in place and returns it. Models
that are ``torch.nn.Module`` s also accept ``torch``'s positional forms (``model.to(tensor)``), which BoTorch uses.

**Files.** ``save(path)`` and ``Model.load(path, map_location=None)`` go through one format
(:mod:`gpgeom._io`): a ``torch.save`` archive of tensors and plain values that names the model class and its format
version, read with ``weights_only=True``. Loading a file into another class raises
:class:`~gpgeom.errors.ModelFileError`; everything ``predict`` needs is in the file, or ``load`` asks for it by
name (user callables, which no file can hold safely). :func:`gpgeom.load` reads any model file.

**repr.** ``repr(model)`` gives the class, the sizes, the kernel and the fitted hyperparameters in one line.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor

from gpgeom._fingerprint import COPY_LIMIT, fingerprint
from gpgeom._io import read_model_file, register_model_class, write_model_file
from gpgeom._validation import as_tensor, check_device
from gpgeom.errors import NotFittedError

__all__ = ["ModelContract", "format_value", "load"]


def format_value(value: Any) -> str:
    r"""A short text for a value in a model's ``repr``: 4 significant digits, small tensors as lists, large ones
    by their shape."""
    if isinstance(value, Tensor):
        if value.numel() == 1:
            return format_value(float(value.detach().reshape(())))
        if value.numel() <= 6:
            return "[" + ", ".join(format_value(float(v)) for v in value.detach().reshape(-1).cpu()) + "]"
        return f"<{'x'.join(map(str, value.shape))} {str(value.dtype).replace('torch.', '')}>"
    if isinstance(value, float):
        if value == 0 or math.isfinite(value) and 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3e}"
    if isinstance(value, list | tuple) and len(value) > 6:
        return f"[{', '.join(format_value(v) for v in value[:3])}, ... ({len(value)} entries)]"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    if isinstance(value, str):
        return repr(value)
    return str(value)


class ModelContract:
    r"""Base of every gpgeom model: persistence, device/dtype moves, input conversion, fitted-state checks, repr.

    Subclasses implement:

    * :meth:`_get_state` and :meth:`_from_state` (what :meth:`save` writes and :meth:`load` rebuilds from);
    * :meth:`_to` when they hold tensors outside ``torch.nn.Module`` parameters and buffers (``to`` calls it);
    * :meth:`_repr_fields` (the ``repr``);
    * set ``self._fitted = True`` at the end of ``fit`` and in :meth:`_from_state`.

    Class attributes:
        _format_version: The version of the subclass's ``state`` layout; raise it when the layout changes.
        _oldest_format_version: The oldest layout ``_from_state`` reads (``None``: ``_format_version`` only).
        _model_name: Optional stable name stored in files (default: the class name).
    """

    _format_version: ClassVar[int] = 1
    _oldest_format_version: ClassVar[int | None] = None
    _model_name: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register_model_class(cls)

    # ------------------------------------------------------------------------------------------------------------
    # fitted state
    @property
    def is_fitted(self) -> bool:
        r"""Whether the model has been fitted (or loaded) and can predict."""
        return bool(getattr(self, "_fitted", False))

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            name = type(self).__name__
            raise NotFittedError(f"This {name} is not fitted yet; call fit(...) or {name}.load(path) first.")

    @contextlib.contextmanager
    def _kept_on_error(self) -> Iterator[None]:
        r"""Put the model back as it was when the block raises (any exception, ``KeyboardInterrupt`` included), then
        re-raise: a ``fit`` that fails half-way leaves the model as it was before the call (unfitted, or its previous
        fit). Restored: every attribute (rebound or not), the contents of the lists, dicts and sets among them and,
        for a ``torch.nn.Module``, every submodule's attributes, its parameter, buffer and submodule registries, and
        the values of its parameters and buffers (a copy taken on entry, written back in place; also their
        ``requires_grad`` and ``.grad``), which an optimiser changes in place. Not restored: tensors that are plain
        attributes changed in place (a ``fit`` rebinds those), and buffers of more than ``_LARGE_BUFFER`` (65,536)
        elements changed in place (not copied, to spare a large model's memory; such a change is noted on the error)."""
        saved = _snapshot(self)
        try:
            yield
        except BaseException as error:
            _restore(saved, error)
            raise

    # ------------------------------------------------------------------------------------------------------------
    # dtype, device, inputs
    @property
    def dtype(self) -> torch.dtype:
        r"""The floating dtype the model computes in (see the module docstring for the rule)."""
        if isinstance(self, torch.nn.Module):
            for t in list(self.parameters()) + list(self.buffers()):
                if t.is_floating_point():
                    return t.dtype
        return getattr(self, "_dtype", torch.float64)

    @property
    def device(self) -> torch.device:
        r"""The device the model computes on."""
        if isinstance(self, torch.nn.Module):
            for t in list(self.parameters()) + list(self.buffers()):
                return t.device
        return torch.device(getattr(self, "_device", "cpu"))

    def _as_tensor(self, name: str, x: object, **kwargs: Any) -> Tensor:
        r"""``x`` (numpy or torch) as a tensor of the model's dtype on its device (:func:`gpgeom._validation.as_tensor`
        keywords: ``ndim``, ``shape``, ``finite``)."""
        return as_tensor(name, x, dtype=self.dtype, device=self.device, **kwargs)

    def to(self, *args: Any, device: torch.device | str | None = None, dtype: torch.dtype | None = None, **kwargs: Any):
        r"""Move the model to ``device`` and/or cast it to the floating ``dtype``, in place; returns the model.

        Args:
            device: The target device (``"cpu"``, ``"cuda"``, ``torch.device``); ``None`` keeps the current one.
            dtype: The target floating dtype; ``None`` keeps the current one.

        Raises:
            TypeError: For a ``dtype`` other than float32 and float64 (the model is left as it was), or positional
                arguments on a model that is not an ``nn.Module``.
            ValueError: For a CUDA device when CUDA is not available.
        """
        if dtype is not None and dtype not in (torch.float32, torch.float64):  # half precision: no LAPACK
            raise TypeError(f"`dtype` must be torch.float32 or torch.float64, got {dtype!r}.")
        if device is not None:
            device = check_device("device", device)
        if isinstance(self, torch.nn.Module):
            given = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
            torch.nn.Module.to(self, *args, **given, **kwargs)
            self._to(device=self.device, dtype=self.dtype)
            return self
        if args or kwargs:
            raise TypeError(f"{type(self).__name__}.to takes keyword arguments only: to(device=..., dtype=...).")
        self._to(device=device or self.device, dtype=dtype or self.dtype)
        return self

    def _to(self, *, device: torch.device, dtype: torch.dtype) -> None:
        r"""Move state that is not an ``nn.Module`` parameter or buffer (subclasses extend it)."""
        if not isinstance(self, torch.nn.Module):
            self._dtype, self._device = dtype, torch.device(device)

    # ------------------------------------------------------------------------------------------------------------
    # persistence
    def _get_state(self) -> dict[str, Any]:
        r"""Everything :meth:`_from_state` needs, as tensors and plain Python values."""
        raise NotImplementedError(f"{type(self).__name__} does not implement save().")

    @classmethod
    def _from_state(cls, state: dict[str, Any], **kwargs: Any) -> ModelContract:
        r"""Rebuild a model from :meth:`_get_state`'s dict (``kwargs``: what the file cannot hold, e.g. callables)."""
        raise NotImplementedError(f"{cls.__name__} does not implement load().")

    def save(self, path: str | os.PathLike) -> None:
        r"""Write the model to ``path`` (:mod:`gpgeom._io`: loadable with ``weights_only=True``)."""
        self._check_fitted()
        write_model_file(path, self, self._get_state())

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: torch.device | str | None = None, **kwargs: Any):
        r"""Load a model written by :meth:`save`; predictions equal the saved model's.

        Args:
            path: The file.
            map_location: Device to put the model on (default: the CPU).
            **kwargs: What the file cannot hold (the model's ``_from_state`` names it in its error when missing).

        Raises:
            gpgeom.errors.ModelFileError: For a file of another class, a newer format or not a gpgeom file.
            ValueError: For a ``map_location`` this machine does not have (e.g. CUDA without CUDA).
        """
        if map_location is not None:
            map_location = check_device("map_location", map_location)
        file_cls, state = read_model_file(path, cls)
        return _rebuild(file_cls, state, map_location, kwargs)

    # ------------------------------------------------------------------------------------------------------------
    # repr
    def _repr_fields(self) -> dict[str, Any]:
        r"""Ordered ``name -> value`` pairs shown by ``repr`` (sizes, kernel, fitted hyperparameters)."""
        return {}

    def __repr__(self) -> str:
        try:
            fields = self._repr_fields()
        except Exception as exc:  # noqa: BLE001 - a repr must never raise
            fields = {"repr_error": f"{type(exc).__name__}: {exc}"}
        if not self.is_fitted:
            fields = {"fitted": False, **fields}
        body = ", ".join(f"{k}={format_value(v)}" for k, v in fields.items())
        return f"{type(self).__name__}({body})"

    # ------------------------------------------------------------------------------------------------------------
    # copies
    def __copy__(self) -> ModelContract:
        r"""Refused: a shallow copy shares the fitted tensors, sub-models and ``torch`` parameters with the original,
        so that ``to(dtype=...)``, ``fit`` or ``load_state_dict`` on one changes (or breaks) the other. Use
        ``copy.deepcopy(model)`` (an independent model, bitwise the same predictions), ``pickle`` (the same, across
        processes) or ``save``/``load`` (a file).

        Raises:
            TypeError: Always, naming the remedies.
        """
        name = type(self).__name__
        raise TypeError(
            f"copy.copy({name}) is not supported: a shallow copy would share the fitted state (tensors, sub-models, "
            f"torch parameters) with the original, so that to(...) or fit(...) on one would change the other. Use "
            f"copy.deepcopy(model) for an independent copy, or model.save(path) and {name}.load(path) for a file."
        )


#: Buffers of more elements than this are not copied by :meth:`ModelContract._kept_on_error` (an RVGP's eigenvectors,
#: ``n x D x k``, can take gigabytes; no ``fit`` changes them in place): their version counter and fingerprint are
#: kept instead, so that a change in place that cannot be undone is said on the exception (the limit of the caches).
_LARGE_BUFFER = COPY_LIMIT


def _snapshot(model: ModelContract) -> list[tuple[Any, ...]]:
    r"""What :func:`_restore` needs to put ``model`` back: per object (the model and, for a module, its submodules)
    its ``__dict__`` and the contents of the containers in it; per parameter and small buffer a copy of its values,
    per large buffer (more than ``_LARGE_BUFFER`` elements) its version counter and
    :func:`~gpgeom._fingerprint.fingerprint`."""
    objects = list(model.modules()) if isinstance(model, torch.nn.Module) else [model]
    saved: list[tuple[Any, ...]] = []
    for obj in objects:
        attrs = dict(obj.__dict__)
        contents = [
            (v, dict(v) if isinstance(v, dict) else list(v)) for v in attrs.values() if isinstance(v, list | dict | set)
        ]
        saved.append(("object", obj, attrs, contents))
    if isinstance(model, torch.nn.Module):
        seen: set[int] = set()
        tensors = [(None, p) for p in model.parameters()] + list(model.named_buffers())
        for name, t in tensors:
            if id(t) in seen:
                continue
            seen.add(id(t))
            if name is not None and t.numel() > _LARGE_BUFFER:
                saved.append(("large", t, name, t._version, fingerprint(t)))
            else:
                saved.append(("tensor", t, t.detach().clone(), t.requires_grad, t.grad))
    return saved


def _restore(saved: list[tuple[Any, ...]], error: BaseException) -> None:
    r"""Put back what :func:`_snapshot` saved; a large buffer changed in place (not copied) is named in a note on
    ``error``."""
    with torch.no_grad():
        for entry in saved:
            if entry[0] == "object":
                _, obj, attrs, contents = entry
                obj.__dict__.clear()
                obj.__dict__.update(attrs)
                for container, items in contents:
                    container.clear()
                    if isinstance(container, list):
                        container.extend(items)
                    else:
                        container.update(items)
            elif entry[0] == "large":
                _, t, name, version, values = entry
                if t._version != version and not torch.equal(fingerprint(t), values):
                    error.add_note(
                        f"gpgeom: the buffer {name!r} ({t.numel()} elements) was changed in place before the error "
                        "and is not restored (large buffers are not copied); rebuild the model."
                    )
            else:
                _, t, values, requires_grad, grad = entry
                if t.shape == values.shape and t.dtype == values.dtype and t.device == values.device:
                    t.copy_(values)
                else:  # its ``.data`` was rebound
                    t.data = values
                if t.is_leaf:
                    t.requires_grad_(requires_grad)
                    t.grad = grad


def load(path: str | os.PathLike, map_location: torch.device | str | None = None, **kwargs: Any) -> ModelContract:
    r"""Load any gpgeom model file (the class is read from the file).

    Args:
        path: A file written by a model's ``save``.
        map_location: Device to put the model on (default: the CPU).
        **kwargs: Passed to the model's ``load`` (what the file cannot hold).
    """
    if map_location is not None:
        map_location = check_device("map_location", map_location)
    file_cls, state = read_model_file(path, ModelContract)
    return _rebuild(file_cls, state, map_location, kwargs)


def _rebuild(file_cls: type, state: dict[str, Any], map_location: Any, kwargs: dict[str, Any]) -> ModelContract:
    model = file_cls._from_state(state, **kwargs)
    model._fitted = True
    if map_location is not None:
        model.to(device=map_location)
    return model

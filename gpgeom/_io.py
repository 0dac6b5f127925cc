r"""One file format for every gpgeom model.

A model file is a ``torch.save`` archive of one dict::

    {"gpgeom_model": {"class": "FunBaT", "format_version": 2, "gpgeom_version": "0.1.0"},
     "state": {...}}   # tensors and plain Python values only

so that :func:`read_model_file` loads it with ``torch.load(..., weights_only=True)`` (no code runs on load).
``class`` is the model's registered name (:class:`gpgeom.base.ModelContract` registers every subclass);
``format_version`` is that class's own version of the ``state`` layout. Loading a file into another class, a file
of a newer format, of a format older than the class reads (``_oldest_format_version``, default the current one), or
a file that is not a gpgeom model file raises :class:`gpgeom.errors.ModelFileError` naming
the file, what it holds and what was asked for.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import torch

from gpgeom.errors import ModelFileError

__all__ = ["model_class", "model_name", "read_model_file", "register_model_class", "write_model_file"]

_HEADER = "gpgeom_model"
_REGISTRY: dict[str, type] = {}


def model_name(cls: type) -> str:
    r"""The name a model file stores for ``cls``: its own ``_model_name`` if it sets one, else its class name."""
    return cls.__dict__.get("_model_name") or cls.__name__


def register_model_class(cls: type) -> None:
    r"""Register ``cls`` under :func:`model_name` for :func:`read_model_file`."""
    _REGISTRY[model_name(cls)] = cls


def model_class(name: str) -> type:
    r"""The registered model class called ``name``, importing it through ``gpgeom``'s public names if needed."""
    if name not in _REGISTRY:
        gpgeom = importlib.import_module("gpgeom")
        try:
            getattr(gpgeom, name)
        except AttributeError:
            pass
    if name not in _REGISTRY:
        raise ModelFileError(f"No gpgeom model class is called {name!r}; known: {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[name]


def _version() -> str:
    return importlib.import_module("gpgeom").__version__


def write_model_file(path: str | os.PathLike, model: Any, state: dict[str, Any]) -> None:
    r"""Write ``state`` (tensors and plain Python values; tensors are moved to the CPU) for ``model`` to ``path``.

    In a ``torch.distributed`` process group of several ranks (training under ``torchrun``, see
    :mod:`gpgeom.engine.distributed`) this is a collective: every rank calls it, rank 0 alone writes the file
    (the ranks hold the same model) and all of them wait at a barrier until it is written, so that any rank may read
    it afterwards; when rank 0 fails to write, every rank raises. Calling it on rank 0 only would leave rank 0
    waiting for the others.
    """
    name = model_name(type(model))
    header = {"class": name, "format_version": int(type(model)._format_version), "gpgeom_version": _version()}
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        torch.save({_HEADER: header, "state": _to_cpu(state)}, os.fspath(path))
        return
    failure = [None]
    if dist.get_rank() == 0:
        try:
            torch.save({_HEADER: header, "state": _to_cpu(state)}, os.fspath(path))
        except Exception as exc:  # noqa: BLE001 - re-raised below, after telling the other ranks
            failure[0] = f"{type(exc).__name__}: {exc}"
            error = exc
    dist.broadcast_object_list(failure, src=0)  # the barrier: the file is complete (or failed) on return
    if failure[0] is not None:
        if dist.get_rank() == 0:
            raise error
        raise OSError(f"Rank 0 could not write the model file {os.fspath(path)!r} ({failure[0]}).")


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        out = [_to_cpu(v) for v in obj]
        return out if isinstance(obj, list) else tuple(out)
    return obj


def read_model_file(path: str | os.PathLike, cls: type, map_location: Any = None) -> tuple[type, dict[str, Any]]:
    r"""Read a model file written by :func:`write_model_file` for ``cls`` (or a subclass of it).

    Args:
        path: The file.
        cls: The class asked for (``FunBaT.load`` asks for ``FunBaT``; a ``FunBaTCP`` file is accepted, being a
            subclass).
        map_location: Passed to ``torch.load`` (default: the CPU).

    Returns:
        ``(file_class, state)``: the registered class named in the file and the stored state.

    Raises:
        ModelFileError: When the file is not a gpgeom model file, holds another class, or has a newer format (or
            one older than the class's ``_oldest_format_version``).
    """
    where = os.fspath(path)
    if not os.path.exists(where):
        raise FileNotFoundError(f"No model file at {where!r}.")
    try:
        blob = torch.load(where, map_location=map_location or "cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means: not our file
        raise ModelFileError(
            f"{where!r} is not a gpgeom model file ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})."
        ) from exc
    if not isinstance(blob, dict) or _HEADER not in blob:
        hint = ""
        if isinstance(blob, dict) and ("format" in blob or "format_version" in blob):
            hint = (
                " It looks like a file of gpgeom 0.1's per-model formats, which are not read any more; refit and save."
            )
        raise ModelFileError(f"{where!r} is not a gpgeom model file (no {_HEADER!r} header).{hint}")
    header = blob[_HEADER]
    if not isinstance(header, dict) or not isinstance(header.get("class"), str) or "state" not in blob:
        raise ModelFileError(
            f"{where!r} is not a gpgeom model file: its {_HEADER!r} header must be a dict naming the model class, "
            f"next to a 'state' entry; got a header {header!r:.200} and the entries {sorted(map(str, blob))}."
        )
    name = header["class"]
    want = model_name(cls)
    file_cls = model_class(name)
    if not issubclass(file_cls, cls):
        raise ModelFileError(
            f"{where!r} holds a {name} model, not a {want}: load it with gpgeom.{name}.load(path) "
            "(or gpgeom.load(path), which reads any model file)."
        )
    version, supported = int(header.get("format_version", -1)), int(file_cls._format_version)
    if version > supported:
        raise ModelFileError(
            f"{where!r} holds a {name} file of format version {version}, written by gpgeom "
            f"{header.get('gpgeom_version', '?')}; this gpgeom ({_version()}) reads up to version {supported}. "
            "Upgrade gpgeom."
        )
    oldest = getattr(file_cls, "_oldest_format_version", None)
    if version < (supported if oldest is None else int(oldest)):
        raise ModelFileError(
            f"{where!r} holds a {name} file of format version {version}; this gpgeom reads version {supported} "
            "(the layout changed). Refit the model and save it again."
        )
    return file_cls, blob["state"]

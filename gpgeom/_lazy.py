r"""Lazy package faces: a package lists its public names and the modules that define them, and a name's module is
imported on first access. ``import gpgeom.kernels`` then loads neither the engine nor BoTorch, and importing one
model does not import the others."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    r"""``(__getattr__, __dir__)`` for ``package`` whose public ``name`` lives in module ``exports[name]``.

    Example (in a package's ``__init__.py``)::

        _EXPORTS = {"fit": "gpgeom.engine.fitting"}
        __all__ = list(_EXPORTS)
        __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
    """
    names = sorted(exports)

    def __getattr__(name: str) -> Any:
        if name in exports:
            module = importlib.import_module(package)
            value = getattr(importlib.import_module(exports[name]), name)
            setattr(module, name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return names

    return __getattr__, __dir__

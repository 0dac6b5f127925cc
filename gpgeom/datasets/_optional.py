r"""The optional dependencies of the FE dataset generators (``triangle``, ``scikit-fem``), imported when a
generator first needs them, with an error that says which generator needs what and how to install it."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["import_optional"]


def import_optional(module: str, role: str, needed_by: str, extra: str = "fem") -> ModuleType:
    r"""``importlib.import_module(module)``, or an ``ImportError`` naming ``module`` (``role``: what it does, e.g.
    "the FE solver"), the generator that needs it (``needed_by``) and ``pip install gpgeom[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"Could not import `{module}` ({role}). The {needed_by} generator needs it: run `pip install "
            f"gpgeom[{extra}]`."
        ) from err

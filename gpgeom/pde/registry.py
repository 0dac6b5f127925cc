r"""The registry of PDE families: a family's name -> its class.

A model built from a family (:meth:`gpgeom.models.rgnp.model.RGNP.from_family`) stores only the family's name and its
:meth:`~gpgeom.pde.family.PDEFamily.config`; loading the model looks the name up here and rebuilds the family,
hence its residual and boundary lift, with no code stored in the file. The built-in families
(:class:`~gpgeom.pde.poisson.NonlinearPoisson1D`, :class:`~gpgeom.pde.burgers.ViscousBurgers`) register themselves
when :mod:`gpgeom.pde` is imported, which :func:`get_family` does on a miss. A family of your own is registered with
:func:`register_family` (as a decorator of its class); the module that registers it must be imported before a model
file that uses it is loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from gpgeom.pde.family import PDEFamily

__all__ = ["family_names", "get_family", "is_registered", "register_family"]

_FAMILIES: dict[str, type] = {}
F = TypeVar("F", bound=type)


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_family(cls: F | None = None, *, replace: bool = False):
    r"""Register a :class:`~gpgeom.pde.family.PDEFamily` subclass under its ``name`` (usable as a decorator).

    Args:
        cls: The family class. Its ``name`` class attribute (a non-empty string) is the key; ``cls(**config)``
            must rebuild an instance from its :meth:`~gpgeom.pde.family.PDEFamily.config`.
        replace: Replace another class already registered under the same name. A class of the same module and
            qualified name (the same class defined again, e.g. a notebook cell run twice) always replaces it.

    Returns:
        ``cls`` (or, called as ``register_family(replace=True)``, a decorator).

    Raises:
        TypeError: When ``cls`` is not a ``PDEFamily`` subclass.
        ValueError: For an empty name, or a name taken by another class without ``replace=True``.
    """
    if cls is None:
        return lambda c: register_family(c, replace=replace)
    from gpgeom.pde.family import PDEFamily

    if not (isinstance(cls, type) and issubclass(cls, PDEFamily)):
        raise TypeError(f"register_family expects a subclass of gpgeom.pde.PDEFamily, got {cls!r}.")
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__qualname__} needs a non-empty string class attribute `name` to be registered.")
    old = _FAMILIES.get(name)
    if old is not None and old is not cls and _qualified(old) != _qualified(cls) and not replace:
        raise ValueError(
            f"The PDE family name {name!r} is already registered for {_qualified(old)}; give {cls.__qualname__} "
            "another `name`, or pass replace=True."
        )
    _FAMILIES[name] = cls
    return cls


def _load_builtins() -> None:
    importlib.import_module("gpgeom.pde")


def family_names() -> list[str]:
    r"""The names of the registered families, sorted."""
    _load_builtins()
    return sorted(_FAMILIES)


def get_family(name: str) -> type[PDEFamily]:
    r"""The family class registered as ``name``.

    Raises:
        ValueError: When no family of that name is registered (the message lists the registered ones).
    """
    if name not in _FAMILIES:
        _load_builtins()
    if name not in _FAMILIES:
        raise ValueError(
            f"No PDE family is registered as {name!r}; registered: {', '.join(sorted(_FAMILIES)) or 'none'}. "
            "Import the module that defines it (families register themselves with gpgeom.pde.register_family)."
        )
    return _FAMILIES[name]


def is_registered(family: PDEFamily) -> bool:
    r"""Whether ``family``'s own class is the one registered under its name (so that a model built from it can be
    reloaded from the name alone)."""
    name = getattr(family, "name", None)
    if not isinstance(name, str) or not name:
        return False
    if name not in _FAMILIES:
        _load_builtins()
    return _FAMILIES.get(name) is type(family)

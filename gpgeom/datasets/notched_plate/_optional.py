r"""The optional finite-element dependencies of NotchedPlate2d, ``triangle`` (the mesher) and ``scikit-fem`` (the
FE solver), imported lazily with an install hint (``pip install gpgeom[fem]``)."""

from __future__ import annotations

_FEM_HINT = "The NotchedPlate2d generator needs the optional FE dependencies: run `pip install gpgeom[fem]`."


def _import_triangle():
    try:
        import triangle
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"Could not import `triangle` (the mesher). {_FEM_HINT}") from err
    return triangle


def _import_skfem():
    try:
        import skfem
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"Could not import `skfem` (scikit-fem, the FE solver). {_FEM_HINT}") from err
    return skfem

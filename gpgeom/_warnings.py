r"""The ``stacklevel`` that attributes a gpgeom warning to the user's line.

A warning reports the file and line of the frame ``stacklevel`` calls up from :func:`warnings.warn`. A fixed
count breaks where a warning is reached through several depths (the same check called from ``fit`` and from
``load``) or through a decorator: ``@torch.no_grad()`` adds a frame of ``torch/utils/_contextlib.py``, which the
warning then named instead of the user's script. :func:`user_stacklevel` walks the stack instead, past every frame
of gpgeom and of the wrappers and libraries gpgeom calls user-facing code through (torch, GPyTorch, BoTorch,
linear_operator, Pyro, ``contextlib``, ``functools``), to the first frame outside them: the line that called
gpgeom. (Python 3.12's ``skip_file_prefixes`` does this for ``warnings.warn``; Python 3.11 lacks it.)
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys

__all__ = ["user_stacklevel"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
# libraries whose frames sit between a gpgeom call and the check that warns (decorators, nn.Module.__call__,
# BoTorch's model constructors calling an outcome transform): skipped when they are imported
_LIBRARIES = ("torch", "gpytorch", "botorch", "linear_operator", "pyro")
_FILES = tuple(os.path.abspath(m.__file__) for m in (contextlib, functools))


def _skipped_prefixes() -> tuple[str, ...]:
    prefixes = [_PACKAGE]
    for name in _LIBRARIES:
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if path:
            prefixes.append(os.path.dirname(os.path.abspath(path)) + os.sep)
    return tuple(prefixes)


def _internal(filename: str) -> bool:
    r"""A frame that :func:`warnings.warn` itself skips when counting ``stacklevel`` (the import machinery)."""
    return "importlib" in filename and "_bootstrap" in filename


def user_stacklevel() -> int:
    r"""The ``stacklevel`` that makes the caller's ``warnings.warn(..., stacklevel=user_stacklevel())`` report the
    first frame outside gpgeom and the wrappers above (module docstring).

    Returns:
        An int >= 2, for the caller's own ``warnings.warn`` call; 2 (the caller's caller) when every frame of the
        stack is gpgeom's (``python -m gpgeom.cli``).
    """
    prefixes = _skipped_prefixes()
    frame = sys._getframe(1)  # the function that calls warnings.warn: stacklevel 1
    level = 1
    while frame is not None:
        frame = frame.f_back
        if frame is None:
            return 2
        filename = os.path.abspath(frame.f_code.co_filename)
        if _internal(filename):
            continue  # not counted by warnings.warn either
        level += 1
        if not filename.startswith(prefixes) and filename not in _FILES:
            return level
    return 2

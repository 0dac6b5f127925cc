r"""The ``stacklevel`` that attributes a gpgeom warning to the user's line.

A warning reports the file and line of the frame ``stacklevel`` calls up from :func:`warnings.warn`. A fixed
count breaks where a warning is reached through several depths (the same check called from ``fit`` and from
``load``) or through a decorator: ``@torch.no_grad()`` adds a frame of ``torch/utils/_contextlib.py``, which the
warning then named instead of the user's script. :func:`user_stacklevel` walks the stack instead, past every frame
of gpgeom and of the wrappers and libraries gpgeom calls user-facing code through (torch, GPyTorch, BoTorch,
linear_operator, Pyro, ``contextlib``, ``functools``), to the first frame outside them: the line that called
gpgeom. (Python 3.12's ``skip_file_prefixes`` does this for ``warnings.warn``; Python 3.11 lacks it.)

:func:`quiet` silences one known warning of a library that gpgeom calls, in the calling thread only.
``warnings.catch_warnings()`` is not thread-safe before Python 3.14: it swaps the process's ``warnings.filters``
list on entry and puts the saved one back on exit, so two threads' blocks that overlap leave one thread's filters
(an "ignore" filter) for the whole process after both end, drop a filter added meanwhile, and silence the other
threads' warnings while they run. :func:`quiet` instead keeps one filter entry per warning category at the front
of ``warnings.filters`` while any thread is inside a block for that category (a count, under one lock); the entry
drops a warning only when its message matches one of the patterns that the thread raising it has entered. The
entry is removed when the last block ends: the list is as before, a filter added meanwhile stays, and other
threads' warnings (also with the same message) are shown as their own filters say.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any

__all__ = ["quiet", "user_stacklevel"]

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


# --------------------------------------------------------------------------------------------------------------
# quiet: a known library warning silenced in this thread only

_QUIET_LOCK = threading.Lock()
_QUIET_LOCAL = threading.local()
#: category -> [its filter entry, the number of blocks inside it, the filter lists it was put into]
_QUIET_ENTRIES: dict[type[Warning], list[Any]] = {}


class _ThisThread:
    r"""The message part of :func:`quiet`'s filter entry for ``category``: ``warnings`` calls ``match(text)`` (as
    on a compiled pattern), which holds only in a thread inside a :func:`quiet` block of that category whose
    pattern matches the message."""

    def __init__(self, category: type[Warning]) -> None:
        self.category = category

    def match(self, text: str) -> bool:
        return any(c is self.category and p.match(text) for p, c in getattr(_QUIET_LOCAL, "active", ()))


def _remove(filters: list[Any], entry: tuple[Any, ...]) -> None:
    for i in reversed(range(len(filters))):
        if filters[i] is entry:
            del filters[i]


@contextlib.contextmanager
def quiet(message: str, category: type[Warning] = Warning) -> Iterator[None]:
    r"""Within the block, warnings of ``category`` (and its subclasses) whose message starts with a match of the
    regular expression ``message`` (case-insensitive, as ``warnings.filterwarnings``; ``""`` matches every message)
    are dropped when raised in this thread; ``warnings.filters`` is as before when every block has ended (module
    docstring). Blocks nest and may overlap in any number of threads."""
    item = (re.compile(message, re.I), category)
    active = _QUIET_LOCAL.__dict__.setdefault("active", [])
    active.append(item)
    with _QUIET_LOCK:
        state = _QUIET_ENTRIES.get(category)
        if state is None:
            state = _QUIET_ENTRIES[category] = [("ignore", _ThisThread(category), category, None, 0), 0, []]
        state[1] += 1
        filters = warnings.filters
        if not any(f is state[0] for f in filters):  # (again, where a catch_warnings block swapped the list)
            filters.insert(0, state[0])
            state[2].append(filters)
    try:
        yield
    finally:
        del active[len(active) - 1 - active[::-1].index(item)]
        with _QUIET_LOCK:
            state[1] -= 1
            if state[1] == 0:
                for filters in [*state[2], warnings.filters]:
                    _remove(filters, state[0])
                del _QUIET_ENTRIES[category]

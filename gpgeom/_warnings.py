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
threads' warnings (also with the same message) are shown as their own filters say. A block puts the entry first
(as the "ignore" filter of a ``catch_warnings`` block went), and the entry's test of the thread runs no Python code
(:class:`_ThreadPatterns`), so that no block ending in another thread cuts into a scan of the filters.
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

#: Whether ``warnings.catch_warnings`` keeps its filters per context (Python 3.14's ``-X context_aware_warnings``,
#: the default of free-threaded builds): it is then thread-safe, and :func:`quiet` is a plain block of it (the
#: shared filter entry below relies on the GIL: a scan of the filters runs no Python code, so no block ends midway).
_CONTEXT_AWARE = bool(getattr(sys.flags, "context_aware_warnings", False))
_QUIET_LOCK = threading.Lock()
#: category -> its filter entry (made once; in ``warnings.filters`` only while a block of the category is open)
_QUIET_ENTRIES: dict[type[Warning], tuple[Any, ...]] = {}
#: category -> [the number of blocks open in all threads, the filter lists its entry was put into]
_QUIET_OPEN: dict[type[Warning], list[Any]] = {}


def _patterns_of(category: type[Warning]) -> _ThreadPatterns:
    r"""The message part of ``category``'s entry (for pickling and copies: the same object)."""
    return _QUIET_ENTRIES[category][1]


class _ThreadPatterns(threading.local):
    r"""The message part of :func:`quiet`'s filter entry for one category. ``warnings`` calls ``match(text)`` on it
    (as on a compiled pattern): in a thread inside blocks of the category, the ``match`` of one regular expression
    that joins their patterns (set on this thread's instance); in any other thread the class's, which matches no
    message. Both are C functions: no Python frame runs while a thread scans the filters, so no other thread can
    take the interpreter meanwhile and remove the entry in place, which made the scan skip the filter after it (a
    ``match`` written in Python let another thread's block end there: a user's "error" filter of another thread
    was skipped about 16 times in 530,000 warnings)."""

    #: no block of the category in this thread: no message matches (``text in frozenset()`` is False); a thread in
    #: blocks also holds their ``patterns``, innermost last (:func:`_hold`)
    match = frozenset().__contains__

    # (no __init__: a threading.local runs it in every thread that first reads the object, a Python frame)

    def __reduce__(self) -> tuple[Any, ...]:
        return _patterns_of, (next(c for c, e in _QUIET_ENTRIES.items() if e[1] is self),)

    def __deepcopy__(self, memo: dict[int, Any]) -> _ThreadPatterns:
        return self


def _hold(mine: dict[str, Any], patterns: tuple[str, ...]) -> None:
    r"""Set one thread's open blocks' ``patterns`` (``()``: none) in ``mine``, that thread's ``__dict__`` of a
    :class:`_ThreadPatterns` (taken when a block starts, so that a block that ends in another thread, a generator
    closed there, still updates the thread that opened it). The patterns are joined as alternatives (no numbered
    back-references); one that does not compile changes nothing."""
    match = re.compile("|".join(f"(?:{p})" for p in patterns), re.I).match if patterns else None
    mine["patterns"] = patterns
    if match is None:
        mine.pop("match", None)
    else:
        mine["match"] = match


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
    if _CONTEXT_AWARE:  # Python 3.14+ with context-aware warnings: catch_warnings is per thread and task already
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message, category)
            yield
        return
    with _QUIET_LOCK:
        entry = _QUIET_ENTRIES.get(category)
        if entry is None:
            entry = _QUIET_ENTRIES[category] = ("ignore", _ThreadPatterns(), category, None, 0)
    mine: dict[str, Any] = entry[1].__dict__  # this thread's
    _hold(mine, (*mine.get("patterns", ()), message))
    with _QUIET_LOCK:
        state = _QUIET_OPEN.setdefault(category, [0, []])
        state[0] += 1
        filters = warnings.filters
        if not filters or filters[0] is not entry:
            # first, as the "ignore" filter of a catch_warnings block was: also ahead of the filters added since the
            # entry went in (an "always" of pytest.warns copied with it into a catch_warnings block's list)
            _remove(filters, entry)
            filters.insert(0, entry)
            if not any(f is filters for f in state[1]):
                state[1].append(filters)
    try:
        yield
    finally:
        held = list(mine["patterns"])
        del held[len(held) - 1 - held[::-1].index(message)]
        _hold(mine, tuple(held))
        with _QUIET_LOCK:
            state[0] -= 1
            if state[0] == 0:
                for filters in [*state[1], warnings.filters]:
                    _remove(filters, entry)
                del _QUIET_OPEN[category]

r"""Per-thread values of a call in progress on a model of :mod:`gpgeom.botorch` (what a prediction keeps for its
NaN messages, whether ``model(X)`` takes GPyTorch's prediction path while ``condition_on_observations`` builds its
caches), kept off the model.

A value set by :func:`bound` in one thread is seen by :func:`current` in that thread only, so that calls on one
model in several threads never see (or leave behind) each other's values, and a copy or pickle of the model
carries none. Values are stacks keyed by ``(id(model), what)``: nested blocks see the innermost value until it
ends.

GPyTorch's, linear_operator's and BoTorch's settings are not per thread: they are class attributes of the process,
which a ``with`` block sets on entry and resets on exit to the value it saw when it was made. Predictions that enter
them (:meth:`~gpgeom.botorch.exact_gp.ExactGPModel.numerics`, BoTorch's posterior settings inside it) hold
:data:`settings_lock`, so that predictions in several threads neither see each other's settings nor leave one of
them set when both blocks end.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["bound", "current", "settings_lock"]

_LOCAL = threading.local()
#: Held by a prediction while it is inside GPyTorch / BoTorch settings blocks (module docstring); re-entrant, since
#: a prediction's blocks nest (``posterior`` -> ``__call__``) and a model may predict inside another's.
settings_lock = threading.RLock()


def _stacks() -> dict[tuple[int, str], list[Any]]:
    stacks = getattr(_LOCAL, "stacks", None)
    if stacks is None:
        stacks = _LOCAL.stacks = {}
    return stacks


@contextlib.contextmanager
def bound(model: Any, what: str, value: Any) -> Iterator[None]:
    r"""``value`` is :func:`current` ``(model, what)`` within the block, in this thread (nested blocks stack)."""
    key = (id(model), what)
    stack = _stacks().setdefault(key, [])
    stack.append(value)
    try:
        yield
    finally:
        stack.pop()
        if not stack:
            _stacks().pop(key, None)


def current(model: Any, what: str, default: Any = None) -> Any:
    r"""The innermost value of :func:`bound` ``(model, what, ...)`` in this thread, else ``default``."""
    stack = _stacks().get((id(model), what))
    return stack[-1] if stack else default

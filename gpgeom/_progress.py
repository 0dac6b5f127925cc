r"""The one progress-bar rule of gpgeom.

Every long computation (``fit`` of every model, dataset generation, benchmarks) takes ``progress: bool | None``:

* ``True``: always show a tqdm bar; ``False``: never;
* ``None`` (the default everywhere): show one when a person is watching, i.e. when standard error is a terminal
  or the code runs in a Jupyter kernel, and not in logs, CI or pytest, nor when standard error is closed. The
  environment variable ``GPGEOM_PROGRESS=0`` / ``1`` overrides the default for a whole session.

A computation of a few long steps of different kinds (RVGP's geometry: neighbour graph, frames, Laplacian,
eigenpairs) shows them as the stages of one bar (:class:`StageBar`): the counter moves as each ends and the bar
names the one running.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from tqdm.auto import tqdm

__all__ = ["StageBar", "progress_bar", "resolve_progress", "stage_bar"]


def _interactive() -> bool:
    if "ipykernel" in sys.modules:
        try:
            from IPython import get_ipython

            shell = get_ipython()
        except Exception:  # noqa: BLE001 - IPython missing or broken: not interactive
            shell = None
        if shell is not None and type(shell).__name__ == "ZMQInteractiveShell":
            return True
    stream = sys.stderr
    try:
        return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())
    except (ValueError, OSError):  # a closed (or detached) standard error: nobody is watching it
        return False


def resolve_progress(progress: bool | None) -> bool:
    r"""Whether to show a progress bar for ``progress`` (``True``/``False``/``None``, see the module docstring)."""
    if progress is not None:
        if not isinstance(progress, bool):
            raise TypeError(f"`progress` must be True, False or None, got {type(progress).__name__} ({progress!r}).")
        return progress
    env = os.environ.get("GPGEOM_PROGRESS", "").strip()
    if env in ("0", "1"):
        return env == "1"
    return _interactive()


def progress_bar(iterable: Any = None, *, progress: bool | None = None, **kwargs: Any) -> tqdm:
    r"""A ``tqdm`` bar (``tqdm.auto``: a widget in notebooks) shown according to :func:`resolve_progress`.

    Args:
        iterable: Optional iterable to wrap.
        progress: ``True``, ``False`` or ``None`` (the default rule).
        **kwargs: Passed to ``tqdm`` (``total``, ``desc``, ``leave``, ...).
    """
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not resolve_progress(progress), **kwargs)


class StageBar:
    r"""A bar over the named ``stages`` of one computation, shown by :func:`resolve_progress`'s rule: :meth:`start`
    ends the stage running (the counter moves) and names the next one (the first draws the bar); leaving the ``with``
    block ends the last.

    Args:
        stages: The stages' names, in the order they run.
        desc: The bar's title.
        progress: ``True``, ``False`` or ``None`` (the default rule).
        leave: Keep the bar on screen when done (``False`` for the stages of an inner computation).
    """

    def __init__(self, stages: Sequence[str], *, desc: str, progress: bool | None = None, leave: bool = True):
        self.stages = tuple(stages)
        self._show = resolve_progress(progress)  # a bad value is refused here, before any work
        self._options = {"desc": desc, "leave": leave}
        self._bar: Any = None  # drawn at the first stage (a call refused before it shows no bar)
        self._running: str | None = None

    def start(self, name: str) -> None:
        r"""End the stage running, if any, and show ``name`` (one of :attr:`stages`)."""
        if name not in self.stages:
            raise ValueError(f"`name` must be one of the stages {list(self.stages)}, got {name!r}.")
        if self._bar is None:
            fmt = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"  # no rate: stages differ in length
            self._bar = progress_bar(total=len(self.stages), progress=self._show, bar_format=fmt, **self._options)
        self._bar.set_postfix_str(name, refresh=False)
        if self._running is not None:
            self._bar.update(1)
        self._running = name
        self._bar.refresh()

    def close(self) -> None:
        r"""End the stage running and close the bar."""
        if self._running is not None:
            self._bar.update(1)
            self._running = None
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> StageBar:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if exc_type is not None:  # the stage running did not end
            self._running = None
        self.close()


def stage_bar(
    stages: Sequence[str], *, desc: str, progress: bool | None = None, within: StageBar | None = None
) -> AbstractContextManager[StageBar]:
    r"""A :class:`StageBar` of ``stages`` for a ``with`` block, or the bar ``within`` of a caller whose stages include
    these (then left open, and ``progress`` not read)."""
    return nullcontext(within) if within is not None else StageBar(stages, desc=desc, progress=progress)

r"""The one progress-bar rule of gpgeom.

Every long computation (``fit`` of every model, dataset generation, benchmarks) takes ``progress: bool | None``:

* ``True``: always show a tqdm bar; ``False``: never;
* ``None`` (the default everywhere): show one when a person is watching, i.e. when standard error is a terminal
  or the code runs in a Jupyter kernel, and not in logs, CI or pytest. The environment variable
  ``GPGEOM_PROGRESS=0`` / ``1`` overrides the default for a whole session.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.auto import tqdm

__all__ = ["progress_bar", "resolve_progress"]


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
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


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

r"""Where gpgeom caches generated data: one rule for every dataset and cached computation.

The root is ``$GPGEOM_CACHE`` when set, else ``~/.cache/gpgeom``; each kind of data has a subfolder
(``cache_dir("pde")`` is ``<root>/pde``). Nothing is created until a file is written there.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir(*parts: str, root: str | os.PathLike | None = None) -> Path:
    r"""The cache folder ``<root>/<parts...>``.

    Args:
        *parts: Subfolders (e.g. ``"pde"``); none gives the root.
        root: An explicit root (a dataset's ``cache_dir=`` argument); default ``$GPGEOM_CACHE`` or
            ``~/.cache/gpgeom``.

    Returns:
        The path (not created).
    """
    if root is None:
        env = os.environ.get("GPGEOM_CACHE")
        base = Path(env).expanduser() if env else Path.home() / ".cache" / "gpgeom"
    else:
        base = Path(root).expanduser()
    return base.joinpath(*parts)

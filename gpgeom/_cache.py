r"""Where and how gpgeom caches generated data: one rule for every dataset and cached computation.

The root is ``$GPGEOM_CACHE`` when set, else ``~/.cache/gpgeom``; each kind of data has a subfolder
(``cache_dir("pde")`` is ``<root>/pde``). Nothing is created until a file is written there. Datasets store their
arrays in one ``.npz`` file written atomically (:func:`write_npz`: a reader never sees half a file, and two processes
generating the same data race harmlessly) with a format version checked on reading (:func:`read_npz`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["cache_dir", "read_npz", "write_npz"]


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


def write_npz(path: str | os.PathLike, arrays: dict[str, Any]) -> Path:
    r"""Write ``arrays`` to the ``.npz`` file ``path`` atomically (a temporary file in the same folder, then
    ``os.replace``), creating the folder. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def read_npz(path: str | os.PathLike, version: str, config: str | None = None) -> dict[str, np.ndarray]:
    r"""The arrays of an ``.npz`` file written by :func:`write_npz` whose ``version`` entry is ``version`` (and whose
    ``config`` entry is ``config``, when given); no pickled objects.

    Raises:
        ValueError: For another format version or configuration (a stale cache entry: regenerate it).
    """
    with np.load(Path(path), allow_pickle=False) as z:
        if str(z["version"]) != version:
            raise ValueError(f"dataset version {str(z['version'])!r} is not {version!r}")
        if config is not None and str(z["config"]) != config:
            raise ValueError("the cached configuration does not match")
        return {k: z[k] for k in z.files}

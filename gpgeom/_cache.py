r"""Where and how gpgeom caches generated data: one rule for every dataset and cached computation.

The root is ``$GPGEOM_CACHE`` when set, else ``~/.cache/gpgeom``; each kind of data has a subfolder
(``cache_dir("pde")`` is ``<root>/pde``). Nothing is created until a file is written there. Datasets store their
arrays in one ``.npz`` file written atomically (:func:`write_npz`: a reader never sees half a file, and two processes
generating the same data race harmlessly) with a format version checked on reading (:func:`read_npz`).
"""

from __future__ import annotations

import os
import threading
import uuid
import zipfile
import zlib
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
    r"""Write ``arrays`` to the ``.npz`` file ``path`` atomically (a temporary file with a unique name in the same
    folder, then ``os.replace``), creating the folder. Returns the path.

    Several writers of the same ``path`` (processes or threads) never share a temporary file: the last
    ``os.replace`` wins and a reader sees one complete file. A failed write removes its temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # unique per process, thread and call; "x": never opens another writer's file
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{uuid.uuid4().hex[:8]}.tmp.npz")
    try:
        with open(tmp, "xb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_npz(path: str | os.PathLike, version: str, config: str | None = None) -> dict[str, np.ndarray]:
    r"""The arrays of an ``.npz`` file written by :func:`write_npz` whose ``version`` entry is ``version`` (and whose
    ``config`` entry is ``config``, when given); no pickled objects.

    Raises:
        ValueError: For another format version or configuration (a stale cache entry: regenerate it), or a file
            that is not a complete ``.npz`` file (empty, truncated, corrupt: the message names the path).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if "version" not in z.files:
                raise ValueError(f"{path} has no `version` entry: not a gpgeom dataset file")
            if str(z["version"]) != version:
                raise ValueError(f"dataset version {str(z['version'])!r} is not {version!r}")
            if config is not None and ("config" not in z.files or str(z["config"]) != config):
                raise ValueError("the cached configuration does not match")
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:  # a partial or damaged file (numpy's own errors)
        raise ValueError(f"{path} is not a complete .npz file ({type(err).__name__}: {err})") from err
    except ValueError as err:
        if "pickled" in str(err):  # not an .npz file at all: numpy took it for a pickle
            raise ValueError(f"{path} is not an .npz file") from err
        raise

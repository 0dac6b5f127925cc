r"""What MMGP accepts: meshes in several forms, NotchedPlate2d samples, scalar tables, field lists, mode counts.

Every helper converts at the boundary: meshes become :class:`~gpgeom.geometry.mesh.Mesh` objects (numpy, CPU:
the geometry preprocessing), field arrays become float64 numpy arrays (they are transported to the common mesh
by scipy), and scalar tables become tensors of the model's dtype on its device (they enter the GP directly).
Numpy arrays and torch tensors are accepted alike.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gpgeom._validation import as_tensor, check_positive
from gpgeom._warnings import user_stacklevel
from gpgeom.geometry.mesh import Mesh, as_mesh

__all__ = [
    "as_mesh",
    "as_meshes",
    "check_family",
    "check_output_fields",
    "clock",
    "mapping_field_names",
    "mode_option",
    "output_names",
    "samples_to_arrays",
    "scalar_table",
    "split_clock",
    "warn_zero_scalars",
]


def as_meshes(meshes: Sequence[object]) -> list[Mesh]:
    r"""Every entry of ``meshes`` through :func:`gpgeom.geometry.mesh.as_mesh` (a Mesh, a ``meshio.Mesh``, a
    ``(points, triangles)`` pair or an object with ``points`` and ``triangles``); a single mesh is refused: pass a
    list."""
    if isinstance(meshes, Mesh) or not isinstance(meshes, Sequence):
        raise TypeError(f"`meshes` must be a list of meshes (a single mesh too: [mesh]), got {type(meshes).__name__}.")
    return [as_mesh(m, f"meshes[{i}]") for i, m in enumerate(meshes)]


_KIND_NAMES = {(2, 2): "a triangle mesh in 2D", (3, 2): "a triangle surface in 3D", (3, 3): "a tetrahedral mesh in 3D"}


def _kind_name(mesh: Mesh) -> str:
    return _KIND_NAMES.get((mesh.dim, mesh.cell_dim), f"a mesh of {mesh.cell_type} cells in {mesh.dim}D")


def check_family(meshes: Sequence[Mesh], reference: Mesh | None = None, name: str = "meshes") -> None:
    r"""Every mesh of ``meshes`` has the space dimension and cell dimension of ``reference`` (default: the first
    mesh): one family is made of 2D triangle meshes, 3D triangle surfaces or tetrahedral meshes, never a mix.

    Raises:
        ValueError: Naming the first mesh of another kind, its kind and the expected one.
    """
    if not len(meshes):
        return
    ref = meshes[0] if reference is None else reference
    what = f"`{name}[0]`" if reference is None else "the common mesh"
    for i, m in enumerate(meshes):
        if (m.dim, m.cell_dim) != (ref.dim, ref.cell_dim):
            raise ValueError(
                f"`{name}[{i}]` is {_kind_name(m)} ({m.dim}D points, {m.cell_type} cells), but {what} is "
                f"{_kind_name(ref)} ({ref.dim}D points, {ref.cell_type} cells): all meshes of a family must be of "
                "one kind (2D triangle meshes, 3D triangle surfaces or tetrahedral meshes)."
            )


def samples_to_arrays(samples: Sequence[Any]) -> tuple[list[Mesh], np.ndarray, list[np.ndarray], np.ndarray]:
    r"""Split NotchedPlate2d (or Bracket3d) samples into MMGP's inputs.

    Returns:
        ``(meshes, input_scalars, output_fields, output_scalars)``: ``n`` meshes, ``(n, p)`` input scalars, ``n``
        arrays ``(N_i, q)`` of fields and ``(n, r)`` output scalars, numpy (plates: ``(P, nu)``; ``(U1, U2,
        von_mises, sigma22)``; ``(max_vm, mean_U2_top, compliance)``; brackets: the names of
        :mod:`gpgeom.datasets.bracket3d`).
    """
    meshes = [s.mesh() if callable(getattr(s, "mesh", None)) else Mesh(s.points, s.triangles) for s in samples]
    mu = np.stack([s.in_scalar_array() for s in samples])
    fields = [s.field_array() for s in samples]
    w = np.stack([s.out_scalar_array() for s in samples])
    return meshes, mu, fields, w


def scalar_table(name: str, x: object, n: int, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    r"""``x`` as an ``(n, k)`` tensor, detached: ``None`` gives ``(n, 0)``; a vector is one column (or one row when
    ``n = 1``)."""
    if x is None:
        return torch.zeros(n, 0, dtype=dtype, device=device)
    t = as_tensor(name, x, dtype=dtype, device=device, ndim=(1, 2)).detach()  # data: no caller's graph is kept
    if t.dim() == 1:
        t = t[:, None] if n > 1 or t.shape[0] == 1 else t[None, :]
    if t.shape[0] != n:
        raise ValueError(f"`{name}` must have one row per mesh ({n}), got shape {tuple(t.shape)}.")
    return t


def warn_zero_scalars(w: Tensor, names: Sequence[str]) -> None:
    r"""A ``UserWarning`` naming the output scalars (columns of ``w``, ``n x q``, names ``names``) that are exactly
    zero on every training mesh: their GP has no scale to standardise by, so it predicts zero with a standard
    deviation set by the priors in the scalar's own units, whatever those units are."""
    zero = [name for name, col in zip(names, w.T, strict=True) if not bool(col.ne(0).any())]
    if zero:
        warnings.warn(
            f"Output scalar(s) {zero} are zero on every training mesh: there is no scale to standardise them by, "
            "so their GP predicts zero with a standard deviation set by the priors in their own units; drop them "
            "from `output_scalars` (they carry no information).",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


def mapping_field_names(output_fields: object) -> list[str] | None:
    r"""The keys of the first entry of ``output_fields`` when it is a dict name -> ``(N_i,)`` (the field names, in
    that order), else ``None``."""
    if isinstance(output_fields, Sequence) and len(output_fields) and isinstance(output_fields[0], Mapping):
        return [str(k) for k in output_fields[0]]
    return None


def output_names(arg: str, names: Sequence[str] | None, count: int, prefix: str) -> list[str]:
    r"""The names of ``count`` fields or output scalars: ``names`` (``count`` distinct strings; ``ValueError``
    naming ``arg``, the count expected and the names given otherwise), or ``prefix0``, ``prefix1``, ... ."""
    if names is None:
        return [f"{prefix}{k}" for k in range(count)]
    if isinstance(names, str) or not isinstance(names, Sequence) or not all(isinstance(v, str) for v in names):
        raise TypeError(f"`{arg}` must be a sequence of {count} strings, got {names!r}.")
    out = list(names)
    if len(out) != count or len(set(out)) != count:
        what = "distinct " if len(out) == count else ""
        raise ValueError(f"`{arg}` must have one {what}name per {prefix} ({count}), got {out}.")
    return out


def check_output_fields(
    output_fields: object, meshes: list[Mesh], name: str = "output_fields", names: Sequence[str] | None = None
) -> list[np.ndarray]:
    r"""One float64 array ``(N_i, m)`` per mesh from arrays, tensors, ``(N_i,)`` vectors or dicts name -> ``(N_i,)``.

    A dict's columns follow ``names`` (the model's field names), or the first dict's key order when ``names`` is
    ``None``, whatever each dict's own key order; every dict must hold exactly those names (``ValueError`` naming
    the entry, the names expected and those given).
    """
    if isinstance(output_fields, np.ndarray | Tensor) and len(meshes) and output_fields.ndim >= 2:
        output_fields = list(output_fields)
    if not isinstance(output_fields, Sequence) or len(output_fields) != len(meshes):
        raise ValueError(f"`{name}` must be a sequence with one array (N_i, m) per mesh ({len(meshes)} meshes).")
    order = list(names) if names is not None else mapping_field_names(output_fields)
    out = []
    for i, (u, mesh) in enumerate(zip(output_fields, meshes)):
        if isinstance(u, Mapping):
            keys = [str(k) for k in u]
            if order is None or sorted(keys) != sorted(order) or len(set(keys)) != len(keys):
                raise ValueError(
                    f"`{name}[{i}]` is a dict of fields {keys}, but the fields are {order}: every dict must hold "
                    "exactly one array (N_i,) per field name (in any order)."
                )
            by_name = {str(k): v for k, v in u.items()}
            u = np.column_stack([np.asarray(_numpy(by_name[k]), dtype=np.float64) for k in order])
        arr = np.asarray(_numpy(u), dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2 or arr.shape[0] != mesh.n_points:
            raise ValueError(
                f"`{name}[{i}]` has shape {arr.shape}, but mesh {i} has {mesh.n_points} nodes: each field "
                "array must be (N_i, m) with one row per node of its mesh."
            )
        if out and arr.shape[1] != out[0].shape[1]:
            raise ValueError(
                f"`{name}[{i}]` has {arr.shape[1]} field(s), `{name}[0]` {out[0].shape[1]}; every sample needs "
                "the same fields."
            )
        if not np.isfinite(arr).all():
            bad = np.argwhere(~np.isfinite(arr))[0]
            raise ValueError(
                f"`{name}[{i}]` contains {int((~np.isfinite(arr)).sum())} NaN or infinite value(s) "
                f"(first at node {int(bad[0])}, field {int(bad[1])}); remove or impute them first."
            )
        out.append(arr)
    return out


def _numpy(x: object) -> object:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else x


def mode_option(name: str, value: int | float) -> tuple[int | None, float | None]:
    r"""A number of POD modes: an ``int`` is a fixed count, a ``float`` in (0, 1] an energy fraction to keep.

    Returns:
        ``(n_modes, None)`` or ``(None, energy)``.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"`{name}` must be an int (number of modes) or a float in (0, 1] (energy), got {value!r}.")
    if isinstance(value, int):
        check_positive(name, value, integer=True)
        return value, None
    if not 0.0 < value <= 1.0:
        raise ValueError(f"`{name}` as a float is an energy fraction in (0, 1], got {value!r}.")
    return None, float(value)


def clock() -> np.ndarray:
    r"""``(wall, cpu)`` clock readings: ``time.perf_counter()`` and ``time.process_time()``."""
    return np.array([time.perf_counter(), time.process_time()])


def split_clock(t: dict[str, np.ndarray]) -> tuple[dict[str, float], dict[str, float]]:
    r"""``{stage: (wall, cpu)}`` -> ``({stage: wall}, {stage: cpu})``."""
    return {k: float(v[0]) for k, v in t.items()}, {k: float(v[1]) for k, v in t.items()}

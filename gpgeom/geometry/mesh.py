r"""Simplicial meshes: the :class:`Mesh` container, meshio I/O, boundary loops, P1 transfer and the P1 mass matrix.

Geometry is preprocessing, so this module works in numpy / scipy.sparse. Every public function accepts numpy arrays
or torch tensors and returns numpy ``float64`` arrays (indices as ``int64``) or ``scipy.sparse`` CSR matrices; the
GP code converts to torch where it needs to.

Conventions:

* A mesh holds ``points`` of shape ``(n_points, dim)`` and ``cells`` of shape ``(n_cells, k + 1)``: simplices of
  topological dimension ``k`` (1 = lines, 2 = triangles, 3 = tetrahedra), ``k <= dim``. Triangles are the main
  case (MMGP, Casenave et al., NeurIPS 2023, arXiv:2305.12871); the rest is dimension-agnostic where that costs
  little (mass matrix, boundary facets, point location).
* Every function that takes a mesh accepts whatever :func:`as_mesh` converts: a :class:`Mesh`, a ``meshio.Mesh``, a
  ``(points, cells)`` pair or an object with ``points`` and ``triangles``.
* Degenerate meshes (coincident nodes, zero-area cells, folds) are found by :meth:`Mesh.defects`, refused with a
  message naming the nodes or cell by :meth:`Mesh.check` (which MMGP runs on every mesh it is given) and fixed, where
  that is possible, by :meth:`Mesh.repair` (:mod:`gpgeom.geometry.validity`).
* The P1 (piecewise-linear, nodal) space: a nodal field ``u`` of shape ``(n_points,)`` represents
  :math:`u_h(x) = \sum_i u_i \varphi_i(x)` with hat functions :math:`\varphi_i`.
"""

from __future__ import annotations

import math
import operator
import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy.spatial import cKDTree

from gpgeom._validation import check_option, check_positive, check_tensor
from gpgeom.geometry.closest import closest_on_surface
from gpgeom.geometry.locate import CellLocator

__all__ = [
    "Mesh",
    "as_mesh",
    "boundary_loops",
    "renumber_for_parametrization",
    "mass_matrix",
    "p1_transfer",
    "interpolate",
]

_CELL_TYPES = {1: "line", 2: "triangle", 3: "tetra"}
_CELL_DIMS = {v: k for k, v in _CELL_TYPES.items()}


# ----------------------------------------------------------------------------------------------------------------
# array helpers shared by the geometry modules
# ----------------------------------------------------------------------------------------------------------------
def _to_tensor(name: str, x: object) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise TypeError(f"`{name}` must be a numpy array or torch tensor, got {type(x).__name__}.") from exc
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"`{name}` must be a numeric numpy array or torch tensor, got dtype {arr.dtype}.")
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:  # read-only arrays (e.g. Mesh.points): the tensor is only read
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(arr)
    return torch.from_numpy(arr)


def as_float_array(
    name: str, x: object, *, ndim: int | tuple[int, ...] | None = None, shape: tuple | None = None
) -> np.ndarray:
    r"""Validate ``x`` (numpy array, torch tensor or nested list) and return it as a float64 numpy array.

    Rejects NaN / infinite entries and wrong shapes with the messages of :func:`gpgeom._validation.check_tensor`.
    """
    t = check_tensor(name, _to_tensor(name, x), ndim=ndim, shape=shape)
    return np.asarray(t.numpy(), dtype=np.float64)


def as_index_array(name: str, x: object, *, ndim: int | None = None, upper: int | None = None) -> np.ndarray:
    r"""Validate an integer index array (values in ``[0, upper)``) and return it as int64 numpy array."""
    t = check_tensor(name, _to_tensor(name, x), ndim=ndim)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        if t.is_floating_point() and t.numel() and bool((t == t.round()).all()):
            t = t.long()
        else:
            raise TypeError(f"`{name}` must hold integer indices, got dtype {t.dtype}.")
    arr = np.asarray(t.numpy(), dtype=np.int64)
    if arr.size and upper is not None and (arr.min() < 0 or arr.max() >= upper):
        raise ValueError(
            f"`{name}` holds indices in [{arr.min()}, {arr.max()}], outside [0, {upper}) (the number of points)."
        )
    return arr


# ----------------------------------------------------------------------------------------------------------------
# Mesh
# ----------------------------------------------------------------------------------------------------------------
class Mesh:
    r"""An immutable simplicial mesh with optional nodal and cell data.

    Args:
        points: Node coordinates, ``(n_points, dim)``.
        cells: Vertex indices of the simplices, ``(n_cells, k + 1)`` with ``1 <= k <= min(dim, 3)``.
        point_data: Optional nodal fields, each of shape ``(n_points, ...)``.
        cell_data: Optional cell fields, each of shape ``(n_cells, ...)``.

    ``points`` and ``cells`` are copied to read-only float64 / int64 arrays, so derived quantities (edges, boundary,
    point locator) are computed once and cached. Data arrays are stored as given (converted to numpy) and may hold
    NaN; the numerical routines that consume fields check them.
    """

    def __init__(
        self,
        points: object,
        cells: object,
        point_data: Mapping[str, object] | None = None,
        cell_data: Mapping[str, object] | None = None,
    ) -> None:
        pts = as_float_array("points", points, ndim=2)
        if pts.shape[1] < 1:
            raise ValueError(f"`points` must have at least one coordinate column, got shape {pts.shape}.")
        cel = as_index_array("cells", cells, ndim=2, upper=pts.shape[0])
        k = cel.shape[1] - 1
        if k not in _CELL_TYPES or k > pts.shape[1]:
            raise ValueError(
                f"`cells` must have k + 1 columns with 1 <= k <= min(dim, 3) (lines, triangles, tetrahedra); "
                f"got {cel.shape[1]} columns for points of dimension {pts.shape[1]}."
            )
        if cel.shape[0] == 0:
            raise ValueError("`cells` is empty; a mesh needs at least one cell.")
        if k >= 1:
            srt = np.sort(cel, axis=1)
            if bool((srt[:, 1:] == srt[:, :-1]).any()):
                bad = int(np.nonzero((srt[:, 1:] == srt[:, :-1]).any(1))[0][0])
                raise ValueError(f"`cells` row {bad} repeats a vertex ({cel[bad].tolist()}).")
        self._points = np.array(pts, dtype=np.float64, order="C")
        self._cells = np.array(cel, dtype=np.int64, order="C")
        self._points.setflags(write=False)
        self._cells.setflags(write=False)
        self.point_data: dict[str, np.ndarray] = {}
        self.cell_data: dict[str, np.ndarray] = {}
        for name, val in (point_data or {}).items():
            self.point_data[str(name)] = self._data_array(f"point_data[{name!r}]", val, self.n_points)
        for name, val in (cell_data or {}).items():
            self.cell_data[str(name)] = self._data_array(f"cell_data[{name!r}]", val, self.n_cells)
        self._cache: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:  # pickled (to workers) with int32 cells: half their bytes, same values
        state = self.__dict__.copy()
        state["_cells"] = self._cells.astype(np.int32 if self._points.shape[0] < 2**31 else np.int64)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cells = np.ascontiguousarray(self._cells, dtype=np.int64)
        self._points.setflags(write=False)
        self._cells.setflags(write=False)

    @staticmethod
    def _data_array(name: str, val: object, n: int) -> np.ndarray:
        arr = val.detach().cpu().numpy() if isinstance(val, torch.Tensor) else np.asarray(val)
        if arr.ndim == 0 or arr.shape[0] != n:
            raise ValueError(f"`{name}` must have {n} rows (one per item), got shape {arr.shape}.")
        return arr

    # -- basic properties ----------------------------------------------------------------------------------------
    @property
    def points(self) -> np.ndarray:
        r"""Node coordinates, ``(n_points, dim)`` float64 (read-only)."""
        return self._points

    @property
    def cells(self) -> np.ndarray:
        r"""Simplices, ``(n_cells, k + 1)`` int64 (read-only)."""
        return self._cells

    @property
    def n_points(self) -> int:
        r"""Number of nodes (rows of :attr:`points`)."""
        return int(self._points.shape[0])

    @property
    def n_cells(self) -> int:
        r"""Number of cells (rows of :attr:`cells`)."""
        return int(self._cells.shape[0])

    @property
    def dim(self) -> int:
        r"""Ambient dimension (number of coordinates)."""
        return int(self._points.shape[1])

    @property
    def cell_dim(self) -> int:
        r"""Topological dimension ``k`` of the cells (2 for triangles)."""
        return int(self._cells.shape[1] - 1)

    @property
    def cell_type(self) -> str:
        r"""meshio cell type name: ``"line"``, ``"triangle"`` or ``"tetra"``."""
        return _CELL_TYPES[self.cell_dim]

    def __repr__(self) -> str:
        return (
            f"Mesh(n_points={self.n_points}, n_cells={self.n_cells}, cell_type={self.cell_type!r}, dim={self.dim}, "
            f"point_data={list(self.point_data)}, cell_data={list(self.cell_data)})"
        )

    def with_points(self, points: object, *, keep_data: bool = True) -> Mesh:
        r"""Same connectivity with new coordinates ``(n_points, dim')`` (e.g. a morphed mesh)."""
        pts = as_float_array("points", points, ndim=2)
        if pts.shape[0] != self.n_points:
            raise ValueError(f"`points` must have {self.n_points} rows (one per node), got shape {pts.shape}.")
        return Mesh(
            pts,
            self._cells,
            self.point_data if keep_data else None,
            self.cell_data if keep_data else None,
        )

    # -- validity (gpgeom.geometry.validity) ---------------------------------------------------------------------
    def defects(self, *, tol: float = 1e-10) -> dict[str, np.ndarray]:
        r"""Coincident nodes, zero-measure cells and folded cells, as index arrays
        (:func:`gpgeom.geometry.validity.mesh_defects`)."""
        from gpgeom.geometry.validity import mesh_defects

        return mesh_defects(self, tol=tol)

    def is_valid(self, *, tol: float = 1e-10) -> bool:
        r"""Whether :meth:`check` passes (no coincident nodes, zero-measure cells or folds)."""
        return not any(len(v) for v in self.defects(tol=tol).values())

    def check(self, *, tol: float = 1e-10) -> Mesh:
        r"""The mesh itself, or ``ValueError`` naming the first coincident nodes, zero-area cell or inverted cell
        (:func:`gpgeom.geometry.validity.check_mesh`)."""
        from gpgeom.geometry.validity import check_mesh

        return check_mesh(self, tol=tol)

    def repair(self, *, tol: float = 1e-10) -> tuple[Mesh, np.ndarray]:
        r"""``(repaired, node_map)``: coincident nodes merged, zero-area triangles removed
        (:func:`gpgeom.geometry.validity.repair_mesh`)."""
        from gpgeom.geometry.validity import repair_mesh

        return repair_mesh(self, tol=tol)

    # -- meshio I/O ----------------------------------------------------------------------------------------------
    @classmethod
    def from_meshio(cls, m: Any, cell_type: str | None = None, *, drop_zero_z: bool = True) -> Mesh:
        r"""Build from a ``meshio.Mesh``.

        Args:
            m: The meshio mesh.
            cell_type: ``"line"``, ``"triangle"`` or ``"tetra"``; ``None`` takes the highest-dimensional simplex
                type present, and splits quadrilaterals into two triangles each if there are quads but no
                triangles or tetrahedra (cell data is then repeated for both halves).
            drop_zero_z: Drop trailing coordinate columns that are identically zero while they exceed the cells'
                dimension (meshio pads 2D meshes with ``z = 0`` in most formats).
        """
        blocks: dict[str, list[np.ndarray]] = {}
        for i, block in enumerate(m.cells):
            blocks.setdefault(block.type, []).append(i)
        present = [t for t in ("tetra", "triangle", "line") if t in blocks]
        split_quads = False
        if cell_type is None:
            if present and not (present[0] == "line" and "quad" in blocks):
                cell_type = present[0]
            elif "quad" in blocks:
                cell_type, split_quads = "triangle", True
            else:
                raise ValueError(
                    f"The meshio mesh holds no line, triangle, tetra or quad cells (types: {sorted(blocks)})."
                )
        check_option("cell_type", cell_type, tuple(_CELL_DIMS))
        src_type = "quad" if split_quads else cell_type
        if src_type not in blocks:
            raise ValueError(f"The meshio mesh holds no {cell_type!r} cells (types: {sorted(blocks)}).")
        idx = blocks[src_type]
        cells = np.concatenate([np.asarray(m.cells[i].data, dtype=np.int64) for i in idx])
        cdata = {}
        for name, per_block in (m.cell_data or {}).items():
            cdata[name] = np.concatenate([np.asarray(per_block[i]) for i in idx])
        if split_quads:
            cells = np.concatenate([cells[:, [0, 1, 2]], cells[:, [0, 2, 3]]])
            cdata = {k: np.concatenate([v, v]) for k, v in cdata.items()}
        pts = np.asarray(m.points, dtype=np.float64)
        k = _CELL_DIMS[cell_type]
        if drop_zero_z:
            while pts.shape[1] > max(k, 1) and not pts[:, -1].any():
                pts = pts[:, :-1]
        return cls(pts, cells, dict(m.point_data or {}), cdata)

    def to_meshio(self) -> Any:
        r"""Convert to a ``meshio.Mesh`` (2D points padded with ``z = 0``, which most formats require)."""
        import meshio

        pts = self._points
        if pts.shape[1] < 3:
            pts = np.concatenate([pts, np.zeros((pts.shape[0], 3 - pts.shape[1]))], axis=1)
        return meshio.Mesh(
            pts,
            [(self.cell_type, np.asarray(self._cells))],
            point_data=dict(self.point_data),
            cell_data={k: [v] for k, v in self.cell_data.items()},
        )

    @classmethod
    def read(cls, path: str | os.PathLike, cell_type: str | None = None, **kwargs: Any) -> Mesh:
        r"""Read any format meshio reads (``.vtu``, ``.xdmf``, ``.msh``, ...); see :meth:`from_meshio`."""
        import meshio

        return cls.from_meshio(meshio.read(os.fspath(path)), cell_type=cell_type, **kwargs)

    def write(self, path: str | os.PathLike, **kwargs: Any) -> None:
        r"""Write with meshio; the format follows the file extension. ``kwargs`` go to ``meshio.write``
        (XDMF needs h5py, which meshio imports unconditionally for it)."""
        import meshio

        meshio.write(os.fspath(path), self.to_meshio(), **kwargs)

    # -- derived quantities (cached) -----------------------------------------------------------------------------
    def cell_volumes(self, signed: bool = False) -> np.ndarray:
        r"""Lengths / areas / volumes of the cells, ``(n_cells,)``.

        ``signed=True`` (only when ``k == dim``) gives :math:`\det[v_1 - v_0, \dots, v_k - v_0] / k!`, positive for
        counter-clockwise triangles.
        """
        key = "vol_signed" if signed else "vol"
        if key in self._cache:
            return self._cache[key]
        k, d = self.cell_dim, self.dim
        if signed and k != d:
            raise ValueError(f"Signed volumes need cells of full dimension; cells are {k}D in {d}D space.")
        vol = _cell_measures(self._points, self._cells, signed)
        vol.setflags(write=False)
        self._cache[key] = vol
        return vol

    def _facets(self) -> dict[str, np.ndarray]:
        r"""Facet table: facets of every cell, unique facets and how many cells use each.

        For triangles the facets of cell ``(a, b, c)`` are the oriented edges ``(b, c), (c, a), (a, b)``: facet
        ``i`` is opposite local vertex ``i``, and the edges run counter-clockwise for a counter-clockwise triangle.
        """
        if "facets" in self._cache:
            return self._cache["facets"]
        k, n = self.cell_dim, self.n_points
        if k == 2:
            local = np.array([[1, 2], [2, 0], [0, 1]])
        else:
            local = np.array([[j for j in range(k + 1) if j != i] for i in range(k + 1)])
        F = self._cells[:, local].reshape(-1, k)  # (n_cells * (k+1), k), oriented for triangles
        Fs = np.sort(F, axis=1)
        if n ** max(k, 1) < 2**62:
            key = Fs[:, 0].copy()
            for j in range(1, k):
                key = key * n + Fs[:, j]
            uniq, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
            ufac = np.empty((uniq.size, k), dtype=np.int64)
            rem = uniq.copy()
            for j in range(k - 1, -1, -1):
                ufac[:, j] = rem % n
                rem //= n
        else:  # pragma: no cover - huge meshes
            ufac, inv, counts = np.unique(Fs, axis=0, return_inverse=True, return_counts=True)
        out = {"oriented": F, "unique": ufac, "inverse": inv.reshape(-1), "counts": counts}
        self._cache["facets"] = out
        return out

    def edges(self) -> np.ndarray:
        r"""Unique edges ``(n_edges, 2)`` with ``edges[:, 0] < edges[:, 1]``, sorted lexicographically."""
        if "edges" in self._cache:
            return self._cache["edges"]
        k = self.cell_dim
        if k == 2:
            e = self._facets()["unique"]
        elif k == 1:
            e = np.unique(np.sort(self._cells, axis=1), axis=0)
        else:
            pairs = np.array([(i, j) for i in range(k + 1) for j in range(i + 1, k + 1)])
            e = np.unique(np.sort(self._cells[:, pairs].reshape(-1, 2), axis=1), axis=0)
        self._cache["edges"] = e
        return e

    def boundary_facets(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r"""Facets used by exactly one cell.

        Returns:
            ``(facets, cell, opposite)``: the boundary facets ``(n_bf, k)`` (for triangles the edges are oriented as
            in their cell, i.e. with the cell on their left when the cell is counter-clockwise), the index of the
            cell owning each one ``(n_bf,)`` and the local index of the cell's vertex opposite it ``(n_bf,)``.
        """
        if "bfacets" in self._cache:
            return self._cache["bfacets"]
        f = self._facets()
        pos = np.nonzero(f["counts"][f["inverse"]] == 1)[0]
        kp1 = self.cell_dim + 1
        out = (f["oriented"][pos], pos // kp1, pos % kp1)
        self._cache["bfacets"] = out
        return out

    def non_manifold_facets(self) -> np.ndarray:
        r"""Facets shared by more than two cells, ``(n, k)`` (empty for a manifold mesh)."""
        f = self._facets()
        return f["unique"][f["counts"] > 2]

    def used_points(self) -> np.ndarray:
        r"""Boolean mask ``(n_points,)`` of the nodes referenced by at least one cell."""
        used = np.zeros(self.n_points, dtype=bool)
        used[self._cells.ravel()] = True
        return used

    def boundary_loops(self, *, start: int | None = None) -> list[np.ndarray]:
        r"""Closed boundary loops of a triangle mesh; see :func:`boundary_loops`."""
        if "loops" not in self._cache:
            self._cache["loops"] = _boundary_loops(self)
        loops = [lp.copy() for lp in self._cache["loops"]]
        if start is None:
            return loops
        s = _node_index("start", start, self.n_points)
        for i, lp in enumerate(loops):
            hit = np.flatnonzero(lp == s)
            if len(hit):
                loops[i] = np.roll(lp, -int(hit[0]))  # same cyclic order and orientation, first node `start`
                return loops
        raise ValueError(f"`start` = node {s} is not on the boundary of the mesh.")

    def _locator(self) -> CellLocator:
        if "locator" not in self._cache:
            if self.cell_dim != self.dim:
                raise ValueError(
                    f"Point location needs cells of full dimension (triangles in 2D, tetrahedra in 3D); this mesh "
                    f"has {self.cell_type} cells in {self.dim}D. Morph or project it to {self.cell_dim}D first."
                )
            self._cache["locator"] = CellLocator(self._points, self._cells)
        return self._cache["locator"]

    def locate(self, points: object, *, tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
        r"""Find the cell containing each point.

        Args:
            points: Query points ``(n, dim)``.
            tol: A point is inside a cell when all its barycentric coordinates are ``>= -tol``.

        Returns:
            ``(cell, bary)``: the containing cell per point ``(n,)`` (``-1`` when outside the mesh) and the
            barycentric coordinates ``(n, k + 1)`` in that cell (NaN rows for points outside). When several cells
            contain a point (on a shared facet), the one whose smallest coordinate is largest is chosen.
        """
        pts = as_float_array("points", points, ndim=2, shape=(None, self.dim))
        return self._locator().locate(pts, tol)


# ----------------------------------------------------------------------------------------------------------------
# the one conversion of mesh-like inputs
# ----------------------------------------------------------------------------------------------------------------
def _is_meshio(obj: object) -> bool:
    r"""Whether ``obj`` is a ``meshio.Mesh`` (checked without importing meshio)."""
    return any(c.__name__ == "Mesh" and c.__module__.split(".")[0] == "meshio" for c in type(obj).__mro__)


def as_mesh(mesh: object, name: str = "mesh") -> Mesh:
    r"""A :class:`Mesh` from any of the mesh forms gpgeom accepts.

    * a :class:`Mesh` (returned as is);
    * a ``meshio.Mesh`` (:meth:`Mesh.from_meshio`: its highest-dimensional simplices, quadrilaterals split into
      triangles, zero ``z`` columns of 2D meshes dropped);
    * a ``(points, cells)`` pair of arrays (numpy or torch);
    * any object with ``points`` and ``triangles`` (or an array ``cells``) attributes, e.g. a NotchedPlate2d
      sample of :mod:`gpgeom.datasets.notched_plate`.

    Args:
        mesh: The mesh.
        name: The argument's name, used in the error message.

    Raises:
        TypeError: For anything else.
    """
    if isinstance(mesh, Mesh):
        return mesh
    if _is_meshio(mesh):
        return Mesh.from_meshio(mesh)
    if isinstance(mesh, tuple | list) and len(mesh) == 2:
        return Mesh(mesh[0], mesh[1])
    cells = getattr(mesh, "triangles", None)
    if cells is None:
        cells = getattr(mesh, "cells", None)
    if hasattr(mesh, "points") and cells is not None and not isinstance(cells, list | tuple):
        return Mesh(mesh.points, cells)
    raise TypeError(
        f"`{name}` must be a gpgeom Mesh, a meshio.Mesh, a (points, cells) pair or an object with `points` and "
        f"`triangles` arrays; got {type(mesh).__name__}."
    )


def _cell_measures(P: np.ndarray, C: np.ndarray, signed: bool = False) -> np.ndarray:
    r"""Measures of the cells ``C`` over the points ``P`` (:meth:`Mesh.cell_volumes`): determinants for cells of full
    dimension, the cross product for triangles in 3D, the Gram determinant otherwise (whose cancellation would hide
    a near-degenerate cell: its round-off is about sqrt(eps) of the measure)."""
    k, d = C.shape[1] - 1, P.shape[1]
    V = P[C]
    E = V[:, 1:, :] - V[:, :1, :]  # (n_cells, k, d)
    if k == d == 2:
        vol = 0.5 * (E[:, 0, 0] * E[:, 1, 1] - E[:, 0, 1] * E[:, 1, 0])
    elif k == d:
        vol = np.linalg.det(E) / math.factorial(k)
    elif k == 1:
        vol = np.sqrt(np.einsum("nij,nij->n", E, E))
    elif k == 2 and d == 3:
        vol = 0.5 * np.linalg.norm(np.cross(E[:, 0], E[:, 1]), axis=1)
    else:
        vol = np.sqrt(np.abs(np.linalg.det(E @ E.transpose(0, 2, 1)))) / math.factorial(k)
    return vol if signed else np.abs(vol)


# ----------------------------------------------------------------------------------------------------------------
# boundary loops and the renumbering rule
# ----------------------------------------------------------------------------------------------------------------
def _node_index(name: str, value: object, n: int) -> int:
    r"""A single node index in ``[0, n)`` (Python / numpy / 0-d torch integer)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be a node index (an integer), got {value!r}.")
    try:
        idx = operator.index(value)
    except TypeError:
        raise TypeError(f"`{name}` must be a node index (an integer), got {type(value).__name__}.") from None
    if not 0 <= idx < n:
        raise ValueError(f"`{name}` = {idx} is not a node index in [0, {n}).")
    return int(idx)


def _check_triangles(mesh: Mesh, what: str) -> None:
    if mesh.cell_dim != 2:
        raise ValueError(f"{what} needs a triangle mesh, got {mesh.cell_type} cells.")
    nm = mesh.non_manifold_facets()
    if len(nm):
        raise ValueError(
            f"The mesh has {len(nm)} non-manifold edge(s) shared by more than two triangles "
            f"(first: nodes {nm[0].tolist()}); {what} needs a manifold mesh."
        )


def _boundary_loops(mesh: Mesh) -> list[np.ndarray]:
    _check_triangles(mesh, "Boundary-loop extraction")
    be, bcell, opp = mesh.boundary_facets()
    if len(be) == 0:
        return []
    n = mesh.n_points
    deg = np.bincount(be.ravel(), minlength=n)
    bnodes = np.nonzero(deg)[0]
    if bool((deg[bnodes] != 2).any()):
        bad = bnodes[deg[bnodes] != 2]
        raise ValueError(
            f"{len(bad)} boundary node(s) touch more than two boundary edges (first: node {int(bad[0])}, "
            f"{int(deg[bad[0]])} edges): the boundary is not a union of simple loops (pinched / bow-tie vertex)."
        )
    # walk the loops. Consistently oriented cells: follow the successor of each boundary edge; otherwise walk the
    # undirected boundary graph (two neighbours per node) and orient afterwards.
    out_deg = np.bincount(be[:, 0], minlength=n)
    loops = []
    visited = np.zeros(n, dtype=bool)
    if bool((out_deg[bnodes] == 1).all()):
        succ = np.full(n, -1, dtype=np.int64)
        succ[be[:, 0]] = be[:, 1]
        succ_l = succ.tolist()
        for s in bnodes.tolist():
            if visited[s]:
                continue
            loop = [s]
            cur = succ_l[s]
            while cur != s:
                loop.append(cur)
                cur = succ_l[cur]
            arr = np.asarray(loop, dtype=np.int64)
            visited[arr] = True
            loops.append(arr)
    else:
        src = np.concatenate([be[:, 0], be[:, 1]])
        dst = np.concatenate([be[:, 1], be[:, 0]])
        order = np.argsort(src, kind="stable")
        s_sorted, d_sorted = src[order], dst[order]
        nbr0 = dict(zip(s_sorted[0::2].tolist(), d_sorted[0::2].tolist()))
        nbr1 = dict(zip(s_sorted[1::2].tolist(), d_sorted[1::2].tolist()))
        for s in bnodes.tolist():
            if visited[s]:
                continue
            loop = [s]
            prev, cur = s, nbr0[s]
            while cur != s:
                loop.append(cur)
                a = nbr0[cur]
                nxt = a if a != prev else nbr1[cur]
                prev, cur = cur, nxt
            arr = np.asarray(loop, dtype=np.int64)
            visited[arr] = True
            loops.append(arr)
    # orient every loop so that the adjacent cells lie on its left
    kb = np.minimum(be[:, 0], be[:, 1]) * n + np.maximum(be[:, 0], be[:, 1])
    korder = np.argsort(kb)
    ksorted = kb[korder]
    P = mesh.points
    out = []
    for lp in loops:
        nxt = np.roll(lp, -1)
        ids = korder[np.searchsorted(ksorted, np.minimum(lp, nxt) * n + np.maximum(lp, nxt))]
        if mesh.dim == 2:
            # geometric test, independent of the cells' vertex order: sum of orient2d(a, b, c) over the loop's
            # edges (a, b), c the vertex opposite the edge in its triangle
            c = mesh.cells[bcell[ids], opp[ids]]
            pa, pb, pc = P[lp], P[nxt], P[c]
            o = (pb[:, 0] - pa[:, 0]) * (pc[:, 1] - pa[:, 1]) - (pb[:, 1] - pa[:, 1]) * (pc[:, 0] - pa[:, 0])
            left = o.sum() > 0
        else:  # follow the cells' vertex order (majority vote if it is inconsistent)
            left = 2 * int((be[ids, 0] == lp).sum()) >= len(lp)
        if not left:
            lp = np.concatenate([lp[:1], lp[1:][::-1]])
        out.append(lp)
    return out


def boundary_loops(mesh: Mesh, *, start: int | None = None) -> list[np.ndarray]:
    r"""Closed boundary loops of a triangle mesh.

    The boundary edges are the edges used by exactly one triangle; they are chained into loops. Each loop is an
    int64 array of node indices (first node not repeated at the end), oriented with the mesh on its left: in 2D
    geometrically (the outer boundary counter-clockwise, holes clockwise, whatever the triangles' vertex order), for
    surfaces in 3D by the triangles' vertex order. Loops are listed by their smallest node index.

    Args:
        mesh: A triangle mesh.
        start: Optional boundary node. The loop through it is rotated to begin at it (same cyclic order and
            orientation); the other loops and the order of the list are unchanged. By default every loop begins
            at its smallest node index.

    Raises:
        ValueError: non-triangle mesh, non-manifold edges, a boundary node touching more than two boundary edges,
            or a ``start`` that is not a boundary node.
        TypeError: ``start`` is not an integer.
    """
    return as_mesh(mesh).boundary_loops(start=start)


def _lexicographic_min(X: np.ndarray, rtol: float, scale: float) -> int:
    cand = np.arange(X.shape[0])
    for j in range(X.shape[1]):
        col = X[cand, j]
        cand = cand[col <= col.min() + rtol * scale]
        if len(cand) == 1:
            break
    return int(cand[0])


def renumber_for_parametrization(
    mesh: Mesh,
    *,
    start: str | object = "min_x",
    orientation: str = "ccw",
    rtol: float = 1e-9,
) -> tuple[np.ndarray, int]:
    r"""Order the nodes of a disk-like triangle mesh for the Floater parametrisation: interior first, boundary last.

    The boundary loop must be unique; it is walked from a start node in a chosen direction, and those choices fix
    where and how the boundary lands on the circle, hence the consistency of the morphings across a mesh family.

    Reference rule (Muscat ``RenumberMeshForParametrization``, MMGP code): start at the boundary node of minimal
    ``x`` (ties by ``y``, then ``z``), take the first step towards the neighbour of smaller ``y``. Two defects are
    fixed here:

    * *Ties*: exact float equality of ``x`` decides the start node; coordinates that differ by round-off (e.g.
      ``0`` vs ``1e-17`` along a straight left side) move the start to an arbitrary node of that side. We treat
      values within ``rtol`` times the bounding-box diagonal as ties.
    * *Orientation*: "towards smaller ``y``" is clockwise whenever the leftmost node's two neighbours lie at
      different angles that do not order like their ``y`` (e.g. neighbours at offsets ``(1, 0.5)`` and
      ``(0.1, 0.2)``), so some meshes of a family come out mirrored (every triangle flipped) while others do not.
      ``orientation="ccw"`` (default) walks with the mesh on the left, i.e. counter-clockwise in 2D, which makes the
      Floater map orientation-preserving for every mesh. ``"reference"`` reproduces the reference rule.

    Args:
        mesh: A triangle mesh with exactly one boundary loop.
        start: ``"min_x"`` (lexicographic minimum with tolerant ties), or a point ``(dim,)``: the boundary node
            nearest to it (a geometric anchor, e.g. a corner, is the most robust choice across a family).
        orientation: ``"ccw"`` (mesh on the left), ``"cw"`` or ``"reference"``.
        rtol: Relative tolerance of the ties of ``"min_x"``.

    Returns:
        ``(perm, n_boundary)``: ``perm`` ``(n_points,)`` maps new to old indices (interior nodes in increasing
        order, then the boundary loop in walk order from the start node); the boundary loop is
        ``perm[-n_boundary:]``.

    Raises:
        ValueError: zero or several boundary loops (the message gives the number found), non-manifold edges.
    """
    mesh = as_mesh(mesh)
    check_option("orientation", orientation, ("ccw", "cw", "reference"))
    check_positive("rtol", rtol, allow_zero=True)
    loops = boundary_loops(mesh)
    if len(loops) != 1:
        raise ValueError(
            f"Floater (disk) parametrisation needs a mesh whose boundary is exactly one loop; found "
            f"{len(loops)} boundary loops"
            + (" (a closed surface)" if not loops else " (holes or disjoint parts)")
            + ". Use RBF morphing or another morphing for such meshes."
        )
    loop = loops[0]
    P = mesh.points
    B = P[loop]
    if isinstance(start, str):
        check_option("start", start, ("min_x",))
        scale = float(np.linalg.norm(np.ptp(P, axis=0))) or 1.0
        i0 = _lexicographic_min(B, rtol, scale)
    else:
        anchor = as_float_array("start", start, ndim=1, shape=(mesh.dim,))
        i0 = int(np.argmin(((B - anchor) ** 2).sum(1)))
    loop = np.roll(loop, -i0)  # the loop keeps its orientation (mesh on the left)
    if orientation == "cw":
        loop = np.concatenate([loop[:1], loop[1:][::-1]])
    elif orientation == "reference" and len(loop) > 2:
        a, b = P[loop[1]], P[loop[-1]]
        ka = tuple(a[1:2]) + tuple(a[:1]) + (loop[1],)
        kb = tuple(b[1:2]) + tuple(b[:1]) + (loop[-1],)
        if kb < ka:
            loop = np.concatenate([loop[:1], loop[1:][::-1]])
    interior = np.ones(mesh.n_points, dtype=bool)
    interior[loop] = False
    perm = np.concatenate([np.nonzero(interior)[0], loop])
    return perm, int(len(loop))


# ----------------------------------------------------------------------------------------------------------------
# P1 mass matrix
# ----------------------------------------------------------------------------------------------------------------
def mass_matrix(mesh: Mesh, n_components: int = 1, layout: str = "interleaved") -> sp.csr_matrix:
    r"""The exact P1 (L2) mass matrix :math:`M_{ij} = \int_\Omega \varphi_i \varphi_j`.

    On a simplex :math:`T` of dimension ``k`` and measure :math:`|T|`,
    :math:`\int_T \lambda_a \lambda_b = |T| (1 + \delta_{ab}) / ((k+1)(k+2))`, i.e. ``area / 12 * [[2,1,1],
    [1,2,1],[1,1,2]]`` for triangles. So :math:`u^\top M v = \int_\Omega u_h v_h` exactly for nodal fields
    ``u, v`` and ``sum(M) = |Omega|``.

    Args:
        mesh: Any simplicial mesh (also surfaces / curves embedded in higher dimension).
        n_components: For vector fields of ``n_components`` components: the block matrix acting on the flattened
            field.
        layout: How a vector field ``(n_points, c)`` is flattened. ``"interleaved"`` (row-major,
            ``u0x, u0y, u1x, ...``): ``kron(M, I_c)``. ``"blocked"`` (``u0x, u1x, ..., u0y, ...``): ``kron(I_c, M)``,
            the layout of Muscat's ``ComputeL2ScalarProductMatrix`` (the reference MMGP pairs it with interleaved
            data; see ``ref_compat`` in the model).

    Returns:
        CSR matrix ``(n_points * n_components, n_points * n_components)``, symmetric positive semi-definite
        (definite on the nodes used by cells).
    """
    mesh = as_mesh(mesh)
    check_positive("n_components", n_components, integer=True)
    check_option("layout", layout, ("interleaved", "blocked"))
    k = mesh.cell_dim
    kp1 = k + 1
    vol = mesh.cell_volumes()
    local = (np.ones((kp1, kp1)) + np.eye(kp1)) / (kp1 * (k + 2))
    C = mesh.cells
    rows = np.repeat(C, kp1, axis=1).ravel()
    cols = np.tile(C, (1, kp1)).ravel()
    data = (vol[:, None] * local.ravel()[None, :]).ravel()
    n = mesh.n_points
    M = sp.csr_matrix((data, (rows, cols)), shape=(n, n))
    M.sum_duplicates()
    if n_components == 1:
        return M
    eye = sp.identity(n_components, format="csr")
    return sp.kron(M, eye, format="csr") if layout == "interleaved" else sp.kron(eye, M, format="csr")


# ----------------------------------------------------------------------------------------------------------------
# P1 transfer (point location: gpgeom.geometry.locate)
# ----------------------------------------------------------------------------------------------------------------
def _clamp_to_boundary(mesh: Mesh, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Closest point of the mesh boundary for points outside a 1D, 2D or tetrahedral mesh.

    Returns ``(nodes, weights)`` of shape ``(m, k + 1)``: the P1 weights of the closest boundary point on its
    boundary facet (the cell's opposite vertex gets weight 0).
    """
    k = mesh.cell_dim
    bf, bcell, opp = mesh.boundary_facets()
    P = mesh.points
    if len(bf) == 0:  # pragma: no cover - closed meshes have no outside in full dimension
        raise ValueError("The source mesh has no boundary facet to clamp outside points to.")
    if k == 1:
        bn = bf[:, 0]
        dist, j = cKDTree(P[bn]).query(q)
        nodes = np.stack([bn[j], mesh.cells[bcell[j], opp[j]]], axis=1)
        w = np.zeros((len(q), 2))
        w[:, 0] = 1.0
        return nodes, w
    if k == 3:  # closest point on the boundary triangles (gpgeom.geometry.closest)
        tri, w = closest_on_surface(P, bf, q)
        nodes = np.concatenate([bf[tri], mesh.cells[bcell[tri], opp[tri]][:, None]], axis=1)
        return nodes, np.pad(w, ((0, 0), (0, 1)))
    a, b = P[bf[:, 0]], P[bf[:, 1]]
    mid = 0.5 * (a + b)
    half = 0.5 * np.sqrt(((b - a) ** 2).sum(1)).max()
    # any boundary edge within distance r0 (the nearest boundary node) of q has its midpoint within r0 + half
    bnodes = np.unique(bf)
    r0, _ = cKDTree(P[bnodes]).query(q)
    lists = cKDTree(mid).query_ball_point(q, r0 * (1 + 1e-9) + half * (1 + 1e-9) + 1e-300, return_sorted=True)
    lens = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(q))
    cand = np.fromiter((i for x in lists for i in x), dtype=np.int64, count=int(lens.sum()))
    pt = np.repeat(np.arange(len(q)), lens)
    ab = b[cand] - a[cand]
    ap = q[pt] - a[cand]
    L2 = (ab**2).sum(1)
    t = np.clip((ap * ab).sum(1) / np.where(L2 > 0, L2, 1.0), 0.0, 1.0)
    d2 = ((ap - t[:, None] * ab) ** 2).sum(1)
    first = np.cumsum(lens) - lens
    dmin = np.minimum.reduceat(d2, first)
    ok = d2 <= dmin[pt]
    sel = np.empty(len(q), dtype=np.int64)
    sel[pt[ok][::-1]] = np.nonzero(ok)[0][::-1]  # first minimiser per point
    e, ts = cand[sel], t[sel]
    nodes = np.stack([bf[e, 0], bf[e, 1], mesh.cells[bcell[e], opp[e]]], axis=1)
    w = np.stack([1.0 - ts, ts, np.zeros_like(ts)], axis=1)
    return nodes, w


def p1_transfer(source: Mesh, target_points: object, *, outside: str = "clamp", tol: float = 1e-10) -> sp.csr_matrix:
    r"""P1 interpolation operator from the nodes of ``source`` to arbitrary points.

    Row ``i`` holds the barycentric coordinates :math:`\lambda_a(x_i)` of target point :math:`x_i` in the source
    cell containing it, so ``(T @ u)[i] = u_h(x_i)`` for a nodal field ``u`` of ``source``: linear fields are
    reproduced exactly and rows sum to 1. In MMGP (Casenave et al. 2023, Sec. 3) this is the operator that carries
    fields between a morphed mesh and the common mesh (``proj_i`` and ``invProj_i``).

    Points outside the source mesh (e.g. the nodes of another disk mesh lying on the circle between two chords of
    the source polygon) follow ``outside``:

    * ``"clamp"`` (default, the reference's "Interp/Clamp"): use the value at the *closest point of the source
      mesh*, which lies on a boundary facet; the row holds the two P1 weights ``(1 - t, t)`` of that point on its
      boundary edge (2D), the three P1 weights on its boundary triangle (tetrahedra) or weight 1 on the closest
      boundary node (1D). Exact ties between boundary edges (usually
      two edges sharing the closest node, which give the same row) go to the lowest boundary-edge index.
    * ``"zero"``: an empty row (the result is 0 there).
    * ``"raise"``: a ValueError naming how many points are outside.

    A point counts as inside a cell when its barycentric coordinates are all ``>= -tol``, so points on the boundary
    up to round-off are interpolated, not clamped.

    Args:
        source: Mesh with cells of full dimension (triangles in 2D, tetrahedra in 3D, lines in 1D).
        target_points: ``(n_target, dim)``.

    Returns:
        CSR matrix ``(n_target, source.n_points)``.
    """
    source = as_mesh(source, "source")
    check_option("outside", outside, ("clamp", "zero", "raise"))
    check_positive("tol", tol, allow_zero=True)
    q = as_float_array("target_points", target_points, ndim=2, shape=(None, source.dim))
    loc = source._locator()
    cell, bary = loc.locate(q, tol)
    nt, kp1 = q.shape[0], source.cell_dim + 1
    nodes = np.zeros((nt, kp1), dtype=np.int64)
    w = np.zeros((nt, kp1))
    inside = cell >= 0
    nodes[inside] = source.cells[cell[inside]]
    w[inside] = bary[inside]
    out = np.nonzero(~inside)[0]
    if len(out):
        if outside == "raise":
            raise ValueError(
                f"{len(out)} of {nt} target point(s) lie outside the source mesh (first: index {int(out[0])}, "
                f"{q[out[0]].tolist()}); pass outside='clamp' or 'zero'."
            )
        if outside == "clamp":
            nodes[out], w[out] = _clamp_to_boundary(source, q[out])
    indptr = np.arange(0, nt * kp1 + 1, kp1, dtype=np.int64)
    T = sp.csr_matrix((w.ravel(), nodes.ravel(), indptr), shape=(nt, source.n_points))
    T.eliminate_zeros()
    return T


def interpolate(
    source: Mesh, field: object, target_points: object, *, outside: str = "clamp", tol: float = 1e-10
) -> np.ndarray:
    r"""Evaluate a nodal P1 field ``(n_points[, ...])`` of ``source`` at ``target_points`` ``(n, dim)``.

    Returns ``(n[, ...])``; see :func:`p1_transfer` for the treatment of outside points. The field is checked for
    its length and for NaN / infinite values.
    """
    source = as_mesh(source, "source")
    u = as_float_array("field", field, ndim=(1, 2, 3))
    if u.shape[0] != source.n_points:
        raise ValueError(f"`field` must have one row per source node ({source.n_points}), got shape {u.shape}.")
    T = p1_transfer(source, target_points, outside=outside, tol=tol)
    return (T @ u.reshape(u.shape[0], -1)).reshape((T.shape[0],) + u.shape[1:])

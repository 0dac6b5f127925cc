r"""Simplicial meshes: the :class:`Mesh` container, its meshio I/O, the conversion :func:`as_mesh` of mesh-like
inputs and the array coercion helpers shared by the geometry modules.

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

What is computed on a mesh lives beside it, one concept per module: boundary loops and the renumbering for the
Floater parametrisation (:mod:`gpgeom.geometry.boundary`), cell measures and the P1 mass matrix
(:mod:`gpgeom.geometry.fem`), point location (:mod:`gpgeom.geometry.locate`) and P1 transfer between meshes
(:mod:`gpgeom.geometry.transfer`).
"""

from __future__ import annotations

import operator
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from gpgeom._validation import check_option, check_positive, check_tensor
from gpgeom.geometry.locate import CellLocator

__all__ = ["Mesh", "as_mesh", "as_float_array", "as_index_array"]

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
    if not arr.flags.writeable:
        # read-only arrays (e.g. Mesh.points): torch.from_numpy warns on them, and silencing that with
        # warnings.catch_warnings() is not thread-safe (two threads' blocks interleaved left an "ignore
        # UserWarning" filter for the whole process, tests/test_threads.py): a writeable copy instead
        arr = arr.copy()
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


def _meshio_cell_dim(cell_type: str) -> int:
    r"""Topological dimension of a meshio cell type (0 for vertices and unknown types)."""
    for prefix, k in (
        ("line", 1),
        ("triangle", 2),
        ("quad", 2),
        ("polygon", 2),
        ("tetra", 3),
        ("hexahedron", 3),
        ("wedge", 3),
        ("pyramid", 3),
        ("polyhedron", 3),
    ):
        if cell_type.startswith(prefix):
            return k
    return 0


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
            cell_type: ``"line"``, ``"triangle"`` or ``"tetra"``: the cells of that type (for ``"triangle"`` also
                the quadrilaterals, each split into two triangles, its cell data repeated for both halves; the
                cells keep the order of meshio's blocks). ``None`` takes the cells of the highest topological
                dimension present (lower ones, e.g. gmsh's boundary lines of a triangle mesh, are left out).
            drop_zero_z: Drop trailing coordinate columns that are identically zero while they exceed the cells'
                dimension (meshio pads 2D meshes with ``z = 0`` in most formats).

        Raises:
            ValueError: With ``cell_type=None``, when cells of the highest dimension present are of a type that is
                not read (hexahedra, wedges, polygons, second-order cells, ...): leaving them out would return a
                mesh with holes, or the boundary surface of a hexahedral mesh. Pass ``cell_type`` to read one type
                only, or convert the mesh to simplices first.
        """
        blocks: dict[str, list[int]] = {}
        for i, block in enumerate(m.cells):
            blocks.setdefault(block.type, []).append(i)
        if cell_type is None:
            dims = {t: _meshio_cell_dim(t) for t in blocks}
            if not dims or max(dims.values()) < 1:
                raise ValueError(
                    f"The meshio mesh holds no line, triangle, tetra or quad cells (types: {sorted(blocks)})."
                )
            k = max(dims.values())
            cell_type = _CELL_TYPES[k]
            unread = sorted(t for t, kt in dims.items() if kt == k and t not in (cell_type, "quad"))
            if unread:
                raise ValueError(
                    f"The meshio mesh's cells of the highest dimension ({k}) include {', '.join(map(repr, unread))} "
                    f"cells (types: {sorted(blocks)}); they are not simplices and would be left out, leaving holes. "
                    f"Pass cell_type={cell_type!r} to read only the {cell_type!r} cells"
                    + (" and quads" if k == 2 else "")
                    + ", or convert the mesh to simplices first."
                )
        check_option("cell_type", cell_type, tuple(_CELL_DIMS))
        src_types = (cell_type, "quad") if cell_type == "triangle" else (cell_type,)
        idx = sorted(i for t in src_types for i in blocks.get(t, []))
        if not idx:
            raise ValueError(
                f"The meshio mesh holds no {' or '.join(map(repr, src_types))} cells (types: {sorted(blocks)})."
            )
        parts, cparts = [], {name: [] for name in (m.cell_data or {})}
        for i in idx:
            c = np.asarray(m.cells[i].data, dtype=np.int64)
            split = m.cells[i].type == "quad"
            parts.append(np.concatenate([c[:, [0, 1, 2]], c[:, [0, 2, 3]]]) if split else c)
            for name, per_block in (m.cell_data or {}).items():
                v = np.asarray(per_block[i])
                cparts[name].append(np.concatenate([v, v]) if split else v)
        cells = np.concatenate(parts)
        cdata = {name: np.concatenate(v) for name, v in cparts.items()}
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
        (XDMF needs h5py, which meshio imports unconditionally for it).

        A ``.msh`` file is written as Gmsh 4.1 (``file_format="gmsh"``) unless ``file_format`` says otherwise:
        meshio's first format for that extension is ANSYS, which stores no point or cell data and drops them
        without a warning. Gmsh stores fields of 1, 3 or 9 components (a 2-component field raises meshio's
        ``WriteError``)."""
        import meshio

        path = os.fspath(path)
        if "file_format" not in kwargs and str(path).lower().endswith(".msh"):
            kwargs["file_format"] = "gmsh"
        meshio.write(path, self.to_meshio(), **kwargs)

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
        from gpgeom.geometry.fem import _cell_measures

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
        for arr in out.values():
            arr.setflags(write=False)  # cached and handed out (edges, boundary facets): never changed in place
        self._cache["facets"] = out
        return out

    def edges(self) -> np.ndarray:
        r"""Unique edges ``(n_edges, 2)`` with ``edges[:, 0] < edges[:, 1]``, sorted lexicographically (read-only:
        the mesh's cached array)."""
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
        e.setflags(write=False)  # the cached array itself: an in-place change would reach every later call
        self._cache["edges"] = e
        return e

    def boundary_facets(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r"""Facets used by exactly one cell.

        Returns:
            ``(facets, cell, opposite)``: the boundary facets ``(n_bf, k)`` (for triangles the edges are oriented as
            in their cell, i.e. with the cell on their left when the cell is counter-clockwise), the index of the
            cell owning each one ``(n_bf,)`` and the local index of the cell's vertex opposite it ``(n_bf,)``
            (read-only: the mesh's cached arrays).
        """
        if "bfacets" in self._cache:
            return self._cache["bfacets"]
        f = self._facets()
        pos = np.nonzero(f["counts"][f["inverse"]] == 1)[0]
        kp1 = self.cell_dim + 1
        out = (f["oriented"][pos], pos // kp1, pos % kp1)
        for arr in out:
            arr.setflags(write=False)
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
        r"""Closed boundary loops of a triangle mesh; see :func:`~gpgeom.geometry.boundary.boundary_loops`."""
        if "loops" not in self._cache:
            from gpgeom.geometry.boundary import _boundary_loops

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
                zero = not self._points[:, self.cell_dim :].any()
                raise ValueError(
                    f"Point location needs cells of full dimension (triangles in 2D, tetrahedra in 3D); this mesh "
                    f"has {self.cell_type} cells in {self.dim}D. "
                    + (
                        f"Its coordinates beyond the first {self.cell_dim} are all zero: build it from "
                        f"points[:, :{self.cell_dim}] (Mesh.from_meshio drops such columns)."
                        if zero
                        else f"Morph or project it to {self.cell_dim}D first."
                    )
                )
            self._cache["locator"] = CellLocator(self._points, self._cells)
        return self._cache["locator"]

    def locate(self, points: object, *, tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
        r"""Find the cell containing each point.

        Args:
            points: Query points ``(n, dim)``.
            tol: A point is inside a cell when all its barycentric coordinates are ``>= -tol`` (widened by what
                rounding the point's coordinates moves them, so that results do not change when mesh and points
                are translated far from the origin; :meth:`~gpgeom.geometry.locate.CellLocator.locate`).

        Returns:
            ``(cell, bary)``: the containing cell per point ``(n,)`` (``-1`` when outside the mesh) and the
            barycentric coordinates ``(n, k + 1)`` in that cell (NaN rows for points outside). When several cells
            contain a point (on a shared facet), the one whose smallest coordinate is largest is chosen. Coordinates
            that are 0 up to rounding are exactly 0 (a point on a vertex gets exactly ``1`` there and ``0``
            elsewhere), so that P1 transfers of nodes and facet points carry no roundoff weights.
        """
        check_positive("tol", tol, allow_zero=True)  # a NaN or negative tol put every point outside
        pts = as_float_array("points", points, ndim=2, shape=(None, self.dim))
        return self._locator().locate(pts, float(tol))


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
      triangles, zero ``z`` columns of 2D meshes dropped; a ValueError when that dimension also holds cells of another
      kind, e.g. hexahedra or polygons);
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

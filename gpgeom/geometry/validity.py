r"""Degenerate meshes: coincident nodes, zero-measure cells and folds; found, refused with a message naming the nodes
or the cell, or repaired.

A mesh whose nodes coincide (a duplicate point, a node collapsed onto another) or whose cells have zero area leaves
the P1 interpolation at the nodes involved undetermined: point location picks one of the overlapping cells, which
moved MMGP's predictions at such a node by several percent of the field range. A folded mesh (an inverted cell
overlapping its neighbour) has no one-to-one morphing. :func:`mesh_defects` finds the three, :func:`check_mesh`
raises on the first, :func:`repair_mesh` merges coincident nodes and removes zero-area triangles (splitting the
neighbour across the sliver's long edge, so that no hole opens). They are also the methods
:meth:`~gpgeom.geometry.mesh.Mesh.defects`, :meth:`~gpgeom.geometry.mesh.Mesh.check`,
:meth:`~gpgeom.geometry.mesh.Mesh.is_valid` and :meth:`~gpgeom.geometry.mesh.Mesh.repair`.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from gpgeom._validation import check_positive
from gpgeom.geometry.fem import _cell_measures
from gpgeom.geometry.mesh import Mesh

__all__ = ["check_mesh", "mesh_defects", "repair_mesh"]


def mesh_defects(mesh: Mesh, *, tol: float = 1e-10) -> dict[str, np.ndarray]:
    r"""What makes ``mesh`` degenerate, as index arrays (all empty for a valid mesh).

    * ``"coincident_nodes"`` ``(m, 2)``: pairs of nodes ``(i, j)``, ``i < j``, at most ``tol`` times the
      bounding-box diagonal apart: duplicate points, or a node collapsed onto another.
    * ``"degenerate_cells"`` ``(m,)``: cells of zero measure, :math:`|T| \le \mathrm{tol}\,\ell^k` with
      :math:`\ell` the cell's longest edge (collinear triangles, flat tetrahedra).
    * ``"folded_cells"`` ``(m, 2)``: for cells of full dimension (``k == dim``), pairs of cells that lie on the
      same side of their shared facet, so that they overlap: the mesh is folded there (an inverted cell). The
      first cell of a pair is the one whose orientation differs from that of most cells (the inverted one,
      when the cells are listed with one orientation).

    The test for folds is geometric, so the vertex order of the cells does not matter: meshes listed clockwise,
    or in mixed order, are valid. Results are cached per ``tol`` (a new dict of read-only arrays each call).
    """
    check_positive("tol", tol, allow_zero=True)
    key = ("defects", float(tol))
    if key in mesh._cache:
        return dict(mesh._cache[key])  # a new dict of the read-only cached arrays
    P, C = mesh.points, mesh.cells
    diag = float(np.linalg.norm(np.ptp(P, axis=0)))
    pairs = cKDTree(P).query_pairs(tol * diag, output_type="ndarray").astype(np.int64)
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))] if len(pairs) else np.zeros((0, 2), dtype=np.int64)
    k = mesh.cell_dim
    vol = mesh.cell_volumes()
    longest = _longest_edges(P, C)
    degenerate = np.nonzero(vol <= tol * longest**k)[0]
    folded = np.zeros((0, 2), dtype=np.int64)
    if k == mesh.dim and not len(degenerate):
        folded = _folded_pairs(mesh)
    out = {"coincident_nodes": pairs, "degenerate_cells": degenerate, "folded_cells": folded}
    for arr in out.values():
        arr.setflags(write=False)
    mesh._cache[key] = out
    return dict(out)


def check_mesh(mesh: Mesh, *, tol: float = 1e-10) -> Mesh:
    r"""Raise ``ValueError`` for a degenerate mesh (see :func:`mesh_defects`), naming the first offending nodes or
    cell and how many there are; return the mesh itself when it is valid.

    Coincident nodes and zero-area cells leave the P1 interpolation at the nodes involved undetermined (it picks
    one of the overlapping cells), which moved MMGP's predictions there by several percent of the field range;
    a folded mesh has no one-to-one morphing. :func:`repair_mesh` merges coincident nodes and removes zero-area
    triangles; folds must be fixed where the mesh was made.

    Args:
        mesh: A :class:`~gpgeom.geometry.mesh.Mesh`.
        tol: Relative tolerance: nodes closer than ``tol`` times the bounding-box diagonal coincide; a cell is
            degenerate when its measure is at most ``tol`` times its longest edge to the power ``k``.
    """
    d = mesh_defects(mesh, tol=tol)
    pairs, bad, folded = d["coincident_nodes"], d["degenerate_cells"], d["folded_cells"]
    P, C = mesh.points, mesh.cells
    if len(pairs):
        i, j = (int(v) for v in pairs[0])
        more = f" ({len(pairs)} pairs in all)" if len(pairs) > 1 else ""
        raise ValueError(
            f"Nodes {i} and {j} coincide (distance {float(np.linalg.norm(P[i] - P[j])):.3g} at "
            f"{_fmt_point(P[i])}){more}: a duplicate point or a collapsed node. Merge them with Mesh.repair() "
            "or fix the mesh."
        )
    if len(bad):
        c = int(bad[0])
        what = _MEASURES[mesh.cell_dim]
        more = f" ({len(bad)} such cells in all)" if len(bad) > 1 else ""
        raise ValueError(
            f"Cell {c} (nodes {C[c].tolist()}) has zero {what} ({float(mesh.cell_volumes()[c]):.3g}: its "
            f"vertices are {'collinear' if mesh.cell_dim == 2 else 'degenerate'}){more}. "
            + (
                "Remove it with Mesh.repair() or fix the mesh."
                if mesh.cell_type == "triangle"
                else f"Fix the mesh (Mesh.repair() removes zero-area triangles only, not {mesh.cell_type} cells)."
            )
        )
    if len(folded):
        a, b = (int(v) for v in folded[0])
        shared = sorted(set(C[a].tolist()) & set(C[b].tolist()))
        more = f" ({len(folded)} overlapping pairs in all)" if len(folded) > 1 else ""
        raise ValueError(
            f"Cell {a} (nodes {C[a].tolist()}) is inverted: it overlaps cell {b} (nodes {C[b].tolist()}) across "
            f"their shared {_FACETS[mesh.cell_dim]} (nodes {shared}), so the mesh is folded there{more}. Move the "
            "nodes back where the mesh was made; Mesh.repair() cannot unfold a mesh."
        )
    return mesh


def repair_mesh(mesh: Mesh, *, tol: float = 1e-10) -> tuple[Mesh, np.ndarray]:
    r"""A valid copy of ``mesh``: coincident nodes merged, zero-area triangles removed.

    1. Nodes that coincide (:func:`mesh_defects`) are merged into the one of smallest index; cells that then repeat
       a vertex (collapsed cells) and repeated cells are removed.
    2. A zero-area triangle (a sliver whose vertex ``c`` lies on its longest edge ``(a, b)``) is removed, and the
       triangle on the other side of ``(a, b)`` is split at ``c`` into two, so that no hole opens.
    3. Nodes no cell uses any more are dropped.

    Args:
        mesh: A :class:`~gpgeom.geometry.mesh.Mesh`.
        tol: As in :func:`check_mesh`.

    Returns:
        ``(repaired, node_map)``: the repaired mesh and, for every node of ``mesh``, its index in the repaired one
        (``-1`` for a node that no cell uses any more). Nodal data follow ``node_map`` (a merged node keeps the
        data of the node of smallest index); cell data follow their cells (both halves of a split cell keep
        its data). A valid mesh comes back unchanged with the identity map.

    Raises:
        ValueError: When the repaired mesh is still invalid: folded cells (which no merge or removal fixes) or
            flat tetrahedra (not repaired).
    """
    if mesh.is_valid(tol=tol):
        return mesh, np.arange(mesh.n_points, dtype=np.int64)
    key = ("repair", float(tol))
    if key not in mesh._cache:
        mesh._cache[key] = _repair(mesh, tol)
    repaired, node_map = mesh._cache[key]
    return repaired, node_map.copy()


def _repair(mesh: Mesh, tol: float) -> tuple[Mesh, np.ndarray]:
    P = mesh.points
    k = mesh.cell_dim
    n = mesh.n_points
    # 1. merge coincident nodes (connected components of the "coincide" relation; smallest index represents)
    pairs = mesh_defects(mesh, tol=tol)["coincident_nodes"]
    rep = np.arange(n, dtype=np.int64)
    if len(pairs):
        G = sp.csr_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
        _, lab = connected_components(G, directed=False)
        first = np.full(n, n, dtype=np.int64)
        np.minimum.at(first, lab, np.arange(n))
        rep = first[lab]
    cells = rep[mesh.cells]
    origin = np.arange(mesh.n_cells, dtype=np.int64)
    srt = np.sort(cells, axis=1)
    keep = (srt[:, 1:] != srt[:, :-1]).all(1)
    _, first_of = np.unique(srt[keep], axis=0, return_index=True)
    sel = np.nonzero(keep)[0][np.sort(first_of)]
    cells, origin = cells[sel], origin[sel]
    # 2. zero-measure cells
    limit = 10 * len(cells) + 10
    for _ in range(limit):
        bad = np.nonzero(_cell_measures(P, cells) <= tol * _longest_edges(P, cells) ** k)[0]
        if not len(bad):
            break
        if k != 2:
            c = int(bad[0])
            raise ValueError(
                f"Cell {int(origin[c])} (nodes {mesh.cells[origin[c]].tolist()}) has zero {_MEASURES[k]}; "
                f"Mesh.repair() removes zero-area triangles only, not degenerate {mesh.cell_type} cells."
            )
        cells, origin = _split_sliver(P, cells, origin, int(bad[0]))
    else:  # pragma: no cover - slivers keep appearing (nodes closer than tol but not merged)
        raise ValueError("Mesh.repair() did not converge: splitting zero-area triangles keeps creating new ones.")
    # 3. drop unused nodes
    used = np.zeros(n, dtype=bool)
    used[cells.ravel()] = True
    kept = np.nonzero(used)[0]
    new_index = np.full(n, -1, dtype=np.int64)
    new_index[kept] = np.arange(len(kept))
    node_map = new_index[rep]
    repaired = Mesh(
        P[kept],
        new_index[cells],
        {name: v[kept] for name, v in mesh.point_data.items()},
        {name: v[origin] for name, v in mesh.cell_data.items()},
    )
    repaired.check(tol=tol)
    return repaired, node_map


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------
_MEASURES = {1: "length", 2: "area", 3: "volume"}
_FACETS = {1: "node", 2: "edge", 3: "face"}


def _fmt_point(p: np.ndarray) -> str:
    return "(" + ", ".join(f"{float(v):.6g}" for v in p) + ")"


def _longest_edges(P: np.ndarray, C: np.ndarray) -> np.ndarray:
    r"""Length of the longest edge of every cell, ``(n_cells,)``."""
    kp1 = C.shape[1]
    out = np.zeros(len(C))
    for a in range(kp1):
        for b in range(a + 1, kp1):
            out = np.maximum(out, np.sqrt(((P[C[:, a]] - P[C[:, b]]) ** 2).sum(1)))
    return out


def _folded_pairs(mesh: Mesh) -> np.ndarray:
    r"""Pairs of full-dimensional cells on the same side of their shared facet, ``(m, 2)`` (the minority-oriented
    cell first)."""
    f = mesh._facets()
    kp1 = mesh.cell_dim + 1
    inv = f["inverse"]
    pos = np.nonzero(f["counts"][inv] == 2)[0]
    if not len(pos):
        return np.zeros((0, 2), dtype=np.int64)
    pos = pos[np.argsort(inv[pos], kind="stable")].reshape(-1, 2)  # the two (cell, local facet) slots of a facet
    cell = pos // kp1
    opp = mesh.cells[cell, pos % kp1]  # (m, 2) the vertex of each cell opposite the shared facet
    F = f["unique"][inv[pos[:, 0]]]  # (m, k) the facet's nodes, sorted
    P = mesh.points
    base = P[F[:, 0]]
    edges = P[F[:, 1:]] - base[:, None, :]  # (m, k - 1, d)
    side = [np.linalg.det(np.concatenate([edges, (P[opp[:, s]] - base)[:, None, :]], axis=1)) for s in (0, 1)]
    # compare the signs, not the product: that underflows to 0 (no fold) for cells of size 1e-100 (2D) or 1e-60 (3D)
    hit = np.nonzero(np.sign(side[0]) * np.sign(side[1]) > 0)[0]
    if not len(hit):
        return np.zeros((0, 2), dtype=np.int64)
    out = cell[hit]
    signed = mesh.cell_volumes(signed=True)
    majority = 1.0 if (signed > 0).sum() >= (signed < 0).sum() else -1.0
    swap = (np.sign(signed[out[:, 0]]) == majority) & (np.sign(signed[out[:, 1]]) != majority)
    out[swap] = out[swap][:, ::-1]
    return out[np.lexsort((out[:, 1], out[:, 0]))]


def _split_sliver(P: np.ndarray, cells: np.ndarray, origin: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray]:
    r"""Remove the zero-area triangle ``s``, splitting the triangle(s) across its longest edge at its third vertex.

    With ``c`` on the longest edge ``(a, b)``, a neighbour ``(.., a, .., b, ..)`` becomes two triangles, one with
    ``b`` replaced by ``c`` and one with ``a`` replaced by ``c``: both keep the neighbour's orientation and together
    cover it, so the mesh stays conforming."""
    tri = cells[s]
    lens = [np.linalg.norm(P[tri[(i + 1) % 3]] - P[tri[(i + 2) % 3]]) for i in range(3)]
    i = int(np.argmax(lens))
    c, a, b = int(tri[i]), int(tri[(i + 1) % 3]), int(tri[(i + 2) % 3])
    nbr = np.nonzero((cells == a).any(1) & (cells == b).any(1))[0]
    nbr = nbr[nbr != s]
    halves, half_origin = [], []
    for t in nbr:
        h1, h2 = cells[t].copy(), cells[t].copy()
        h1[h1 == b] = c
        h2[h2 == a] = c
        halves += [h1, h2]
        half_origin += [origin[t], origin[t]]
    drop = np.zeros(len(cells), dtype=bool)
    drop[s] = True
    drop[nbr] = True
    if halves:
        cells = np.concatenate([cells[~drop], np.asarray(halves, dtype=np.int64)])
        origin = np.concatenate([origin[~drop], np.asarray(half_origin, dtype=np.int64)])
    else:
        cells, origin = cells[~drop], origin[~drop]
    return cells, origin

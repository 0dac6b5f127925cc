r"""P1 transfer between meshes: the interpolation operator from the nodes of a mesh to arbitrary points.

The P1 (piecewise-linear, nodal) space: a nodal field ``u`` of shape ``(n_points,)`` represents
:math:`u_h(x) = \sum_i u_i \varphi_i(x)` with hat functions :math:`\varphi_i`. :func:`p1_transfer` evaluates
:math:`u_h` at points through their barycentric coordinates in the cell containing them (point location:
:mod:`gpgeom.geometry.locate`); points outside the mesh are by default clamped to its closest boundary point (for
tetrahedral meshes through :func:`gpgeom.geometry.closest.closest_on_surface`). In MMGP (Casenave et al., NeurIPS 2023,
arXiv:2305.12871, Sec. 3) it carries fields between a morphed mesh and the common mesh. :func:`interpolate`
applies it to a field.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from gpgeom._validation import check_option, check_positive
from gpgeom.geometry.closest import closest_on_surface
from gpgeom.geometry.mesh import Mesh, as_float_array, as_mesh

__all__ = ["p1_transfer", "interpolate"]


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

    A point counts as inside a cell when its barycentric coordinates are all ``>= -tol`` (plus the rounding of its
    own coordinates, which matters far from the origin), so points on the boundary up to round-off are interpolated,
    not clamped.

    Args:
        source: Mesh with cells of full dimension (triangles in 2D, tetrahedra in 3D, lines in 1D).
        target_points: ``(n_target, dim)``.
        outside: ``"clamp"``, ``"zero"`` or ``"raise"``: what a point outside the source mesh gets (above).
        tol: The barycentric tolerance of "inside" (above).

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

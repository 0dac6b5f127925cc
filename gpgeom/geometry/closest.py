r"""Closest points on triangles in 3D: clamping to the boundary of a tetrahedral mesh, P1 transfer onto surfaces.

For a point :math:`q` and a triangle :math:`(a, b, c)` the closest point :math:`a + s (b - a) + t (c - a)` minimises
the convex quadratic :math:`\lVert a + s e_0 + t e_1 - q \rVert^2` over :math:`s, t \ge 0,\ s + t \le 1`. Its
unconstrained minimiser solves the 2x2 normal equations :math:`G (s, t)^\top = (e_0 \cdot (q - a), e_1 \cdot
(q - a))^\top` with the Gram matrix :math:`G`; when that lies outside the triangle, the constrained minimiser of a
convex function lies on the triangle's boundary, i.e. it is the closest of the three clamped edge projections.

Used by :func:`gpgeom.geometry.transfer.p1_transfer` (clamping points outside a tetrahedral mesh to its boundary
surface) and by :func:`surface_transfer` (P1 transfer onto a triangle surface in 3D: MMGP on surfaces, Casenave et
al., NeurIPS 2023, arXiv:2305.12871, Sec. 3.1, with the morphed nodes projected onto the common surface).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

__all__ = ["closest_on_triangles", "closest_on_surface", "surface_transfer"]


def closest_on_triangles(q: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Closest point of triangle ``(a[i], b[i], c[i])`` to ``q[i]``, row by row.

    Args:
        q, a, b, c: ``(m, d)`` arrays (``d >= 2``).

    Returns:
        ``(weights, dist2)``: barycentric weights ``(m, 3)`` of the closest point (on ``a``, ``b``, ``c``; non-negative,
        rows summing to 1) and its squared distance ``(m,)``. Degenerate triangles (collinear vertices) are handled
        through their edges.
    """
    e0, e1, r = b - a, c - a, q - a
    # the normal equations in units of the triangle's size: the Gram determinant is a 4th power of the lengths,
    # which underflowed (coordinates of 1e-100: every point sent to an edge) or overflowed (1e100: NaN weights)
    size = np.maximum(np.abs(e0).max(1), np.abs(e1).max(1))
    inv = (1.0 / np.where(size > 0, size, 1.0))[:, None]
    e0, e1, r = e0 * inv, e1 * inv, r * inv
    g00, g01, g11 = (e0 * e0).sum(1), (e0 * e1).sum(1), (e1 * e1).sum(1)
    r0, r1 = (r * e0).sum(1), (r * e1).sum(1)
    det = g00 * g11 - g01 * g01
    ok = det > 1e-14 * np.maximum(g00 * g11, 1e-300)
    sdet = np.where(ok, det, 1.0)
    s = (g11 * r0 - g01 * r1) / sdet
    t = (g00 * r1 - g01 * r0) / sdet
    inside = ok & (s >= 0) & (t >= 0) & (s + t <= 1)
    w = np.stack([1.0 - s - t, s, t], axis=1)
    best = np.full(len(q), np.inf)
    wout = np.zeros_like(w)
    verts = (a, b, c)
    for i, j in ((0, 1), (1, 2), (2, 0)):  # the three edges, clamped projection
        p, e = verts[i], verts[j] - verts[i]
        L2 = (e * e).sum(1)
        u = np.clip(((q - p) * e).sum(1) / np.where(L2 > 0, L2, 1.0), 0.0, 1.0)
        d2 = ((q - p - u[:, None] * e) ** 2).sum(1)
        better = d2 < best
        best = np.where(better, d2, best)
        we = np.zeros_like(w)
        we[:, i], we[:, j] = 1.0 - u, u
        wout[better] = we[better]
    w = np.where(inside[:, None], w, wout)
    pt = w[:, :1] * a + w[:, 1:2] * b + w[:, 2:] * c
    return w, ((pt - q) ** 2).sum(1)


def closest_on_surface(points: np.ndarray, triangles: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Closest point of a triangle set to each query point (exact, with a complete candidate search).

    Any triangle within distance :math:`r_0` of :math:`q` (:math:`r_0` = distance to the nearest vertex, an upper
    bound of the distance to the surface) has its centroid within :math:`r_0 + \rho` of :math:`q`, with :math:`\rho`
    the largest centroid-to-vertex distance; those triangles are the candidates.

    Args:
        points: Vertices ``(n, d)``.
        triangles: ``(m, 3)`` vertex indices.
        q: Query points ``(n_q, d)``.

    Returns:
        ``(tri, weights)``: the index of the closest triangle ``(n_q,)`` (the lowest index among exact ties) and the
        barycentric weights ``(n_q, 3)`` of the closest point in it.
    """
    nq = len(q)
    if nq == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 3))
    V = points[triangles]  # (m, 3, d)
    cen = V.mean(axis=1)
    rho = float(np.sqrt(((V - cen[:, None, :]) ** 2).sum(2)).max())
    used = np.unique(triangles)
    r0, _ = cKDTree(points[used]).query(q)
    lists = cKDTree(cen).query_ball_point(q, r0 * (1 + 1e-9) + rho * (1 + 1e-9) + 1e-300, return_sorted=True)
    lens = np.fromiter((len(x) for x in lists), dtype=np.int64, count=nq)
    cand = np.fromiter((i for x in lists for i in x), dtype=np.int64, count=int(lens.sum()))
    pt = np.repeat(np.arange(nq), lens)
    w, d2 = closest_on_triangles(q[pt], V[cand, 0], V[cand, 1], V[cand, 2])
    first = np.cumsum(lens) - lens
    dmin = np.minimum.reduceat(d2, first)
    ok = np.nonzero(d2 <= dmin[pt])[0]
    sel = np.empty(nq, dtype=np.int64)
    sel[pt[ok][::-1]] = ok[::-1]  # first minimiser per point
    return cand[sel], w[sel]


def surface_transfer(source: object, target_points: object) -> sp.csr_matrix:
    r"""P1 transfer from the nodes of a triangle surface (in 2D or 3D) to arbitrary points, by closest point.

    Row ``i`` holds the P1 weights of the point of the source surface closest to :math:`x_i`, so for points on the
    surface ``(T @ u)[i] = u_h(x_i)``: linear fields are reproduced exactly and rows sum to 1. Points off the
    surface (morphed nodes of another surface, which lie near but not on the common surface) take the value at
    their closest point, the surface analogue of :func:`~gpgeom.geometry.transfer.p1_transfer`'s ``"clamp"``.

    Args:
        source: A triangle mesh (anything :func:`~gpgeom.geometry.mesh.as_mesh` accepts), e.g. a surface in 3D.
        target_points: ``(n_target, dim)``.

    Returns:
        CSR matrix ``(n_target, source.n_points)``.
    """
    from gpgeom.geometry.mesh import as_float_array, as_mesh

    source = as_mesh(source, "source")
    if source.cell_dim != 2:
        raise ValueError(f"surface_transfer needs a triangle mesh as `source`, got {source.cell_type} cells.")
    q = as_float_array("target_points", target_points, ndim=2, shape=(None, source.dim))
    tri, w = closest_on_surface(source.points, source.cells, q)
    nodes = source.cells[tri]
    indptr = np.arange(0, 3 * len(q) + 1, 3, dtype=np.int64)
    T = sp.csr_matrix((w.ravel(), nodes.ravel(), indptr), shape=(len(q), source.n_points))
    T.sum_duplicates()
    T.eliminate_zeros()
    return T

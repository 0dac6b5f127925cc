r"""Exact point location in a simplicial mesh of full dimension (triangles in 2D, tetrahedra in 3D).

:class:`CellLocator` answers "which cell contains this point, and with which barycentric coordinates" for many
points at once; :meth:`gpgeom.geometry.mesh.Mesh.locate` and the P1 transfer operators build on it. Degenerate
cells (zero area or volume) never contain a point.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CellLocator"]


class CellLocator:
    r"""Exact point-in-simplex location with a uniform bucket grid.

    Every cell is registered in each grid bucket its bounding box overlaps, so the cells of a point's bucket are a
    *complete* candidate set (a KD-tree over centroids with a fixed number of neighbours can miss the containing
    cell when cells are elongated). The barycentric test of all candidates is vectorised: each cell stores the
    affine map :math:`x \mapsto (\lambda_1, \dots, \lambda_d)(x)`, and :math:`\lambda_0 = 1 - \sum_{a \ge 1}
    \lambda_a`.
    """

    #: bucket side relative to (bounding-box volume / n_cells)^(1/d): trades registration pairs for candidates
    BUCKET_FACTOR = 1.5

    def __init__(self, points: np.ndarray, cells: np.ndarray) -> None:
        nc, kp1 = cells.shape
        d = points.shape[1]
        self.d = d
        # per-coordinate vertex arrays (n_cells, d + 1): cheaper reductions than over a (nc, d+1, d) array
        X = [points[:, j][cells] for j in range(d)]
        lo = np.stack([x.min(axis=1) for x in X], axis=1)
        hi = np.stack([x.max(axis=1) for x in X], axis=1)
        self.origin = lo.min(axis=0)
        extent = hi.max(axis=0) - self.origin
        span = np.where(extent > 0, extent, 1.0)
        h = self.BUCKET_FACTOR * (np.prod(span) / nc) ** (1.0 / d)
        shape = np.clip(np.ceil(span / h).astype(np.int64), 1, None)
        while np.prod(shape.astype(float)) > 4 * nc + 64:
            shape = np.maximum(shape // 2, 1)
        self.shape = shape
        n_buckets = int(np.prod(shape))
        self.inv_h = shape / span
        ilo = np.minimum(((lo - self.origin) * self.inv_h).astype(np.int64), shape - 1)
        ihi = np.minimum(((hi - self.origin) * self.inv_h).astype(np.int64), shape - 1)
        w = ihi - ilo + 1
        cnt = np.prod(w, axis=1)
        tot = int(cnt.sum())
        cell_of_pair = np.repeat(np.arange(nc), cnt)
        off = np.arange(tot) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        gid = np.zeros(tot, dtype=np.int64)
        for j in range(d):
            wj = w[cell_of_pair, j]
            gid = gid * shape[j] + ilo[cell_of_pair, j] + off % wj
            off //= wj
        # stable grouping by bucket; 16-bit keys get numpy's O(n) radix sort
        key = gid.astype(np.uint16) if n_buckets <= 1 << 16 else gid
        order = np.argsort(key, kind="stable")
        self.bucket_cells = cell_of_pair[order]
        self.indptr = np.zeros(n_buckets + 1, dtype=np.int64)
        np.cumsum(np.bincount(gid, minlength=n_buckets), out=self.indptr[1:])
        # barycentric maps lam[1:] = A (x - v0), A = inv([v1 - v0, ..., vd - v0]), evaluated from the cell's own
        # vertex v0: the difference x - v0 is exact near the cell, so the coordinates are as accurate far from the
        # origin as near it (the expanded form c + A x cancels like |x| / h and lost every point on a shared edge
        # of a mesh translated by 1e6)
        self.v0 = np.stack([x[:, 0] for x in X], axis=1)  # (nc, d)
        if d == 2:
            x0, y0 = X[0][:, 0], X[1][:, 0]
            a, b = X[0][:, 1] - x0, X[0][:, 2] - x0
            c, e = X[1][:, 1] - y0, X[1][:, 2] - y0
            det = a * e - b * c
            scale = np.maximum(np.maximum(np.abs(a), np.abs(b)), np.maximum(np.abs(c), np.abs(e))) ** 2
            bad = np.abs(det) <= 1e-14 * scale
            r = 1.0 / np.where(bad, 1.0, det)
            r[bad] = np.nan
            A = np.stack([e * r, -b * r, -c * r, a * r], axis=1).reshape(nc, 2, 2)
        else:
            V = np.stack(X, axis=2)  # (nc, d+1, d)
            E = (V[:, 1:, :] - V[:, :1, :]).transpose(0, 2, 1)  # columns are edge vectors, (nc, d, d)
            det = np.linalg.det(E)
            scale = np.maximum(np.abs(E).max(axis=(1, 2)) ** d, 1e-300)
            bad = np.abs(det) <= 1e-14 * scale
            E[bad] = np.eye(d)
            A = np.linalg.inv(E)
            A[bad] = np.nan
        self.coef = A.reshape(nc, d * d)  # row i of A: the gradient of lam[i + 1]
        # the largest barycentric gradient (1-norm) per cell: a coordinate rounded by one ulp moves some lam by at
        # most ulp * grad_norm
        grad = np.concatenate([A, -A.sum(axis=1, keepdims=True)], axis=1)  # (nc, d + 1, d)
        self.grad_norm = np.abs(grad).sum(axis=2).max(axis=1)

    def locate(self, pts: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
        r"""The containing cell ``(n,)`` (``-1`` outside) and barycentric coordinates ``(n, d + 1)`` (NaN rows
        outside) of points ``pts`` ``(n, d)``; a point is inside when every coordinate is ``>= -tol`` (widened by
        what rounding its coordinates to float64 moves them, ``4 eps |x|_inf`` times the cell's largest barycentric
        gradient, so that points on a shared facet of a mesh far from the origin are found), and on a
        shared facet the cell whose smallest coordinate is largest wins. Coordinates that are 0 up to rounding are
        returned as exactly 0 (:func:`_snap_rounding`)."""
        n, d = pts.shape[0], self.d
        g = ((pts - self.origin) * self.inv_h).astype(np.int64)
        np.clip(g, 0, self.shape - 1, out=g)
        gid = g[:, 0]
        for j in range(1, d):
            gid = gid * self.shape[j] + g[:, j]
        start = self.indptr[gid]
        cnt = self.indptr[gid + 1] - start
        csum = np.cumsum(cnt)
        tot = int(csum[-1]) if n else 0
        first = csum - cnt
        pt = np.repeat(np.arange(n), cnt)
        cand = self.bucket_cells[np.repeat(start - first, cnt) + np.arange(tot)]
        C = self.coef[cand]
        R = pts[pt] - self.v0[cand]  # (tot, d): exact for a point near its candidate cell
        if d == 2:
            l1 = C[:, 0] * R[:, 0] + C[:, 1] * R[:, 1]
            l2 = C[:, 2] * R[:, 0] + C[:, 3] * R[:, 1]
            l0 = 1.0 - l1 - l2
            mn = np.minimum(np.minimum(l0, l1), l2)
        else:
            lr = np.einsum("pij,pj->pi", C.reshape(-1, d, d), R)
            lam_all = np.concatenate([1.0 - lr.sum(1, keepdims=True), lr], axis=1)
            mn = lam_all.min(axis=1)
        # the query's own rounding: coordinates of size |x| are known to ulp(|x|) ~ eps |x|, which moves the
        # barycentric coordinates by up to eps |x| grad_norm (e.g. an edge midpoint computed at an offset of 1e6)
        rounding = 4.0 * np.finfo(np.float64).eps * np.abs(pts).max(axis=1)[pt] * self.grad_norm[cand]
        slack = tol + rounding
        mn[np.isnan(mn)] = -np.inf
        best = np.full(n, -np.inf)
        has = cnt > 0
        if tot:
            best[has] = np.maximum.reduceat(mn, first[has])
        ok = np.nonzero((mn >= -slack) & (mn == best[pt]))[0]
        cell = np.full(n, -1, dtype=np.int64)
        bary = np.full((n, d + 1), np.nan)
        cell[pt[ok]] = cand[ok]
        lam = np.stack([l0[ok], l1[ok], l2[ok]], axis=1) if d == 2 else lam_all[ok]
        bary[pt[ok]] = _snap_rounding(lam, R[ok], self.grad_norm[cand[ok]], rounding[ok])
        return cell, bary


def _snap_rounding(
    lam: np.ndarray, offset: np.ndarray, grad_norm: np.ndarray, query_rounding: np.ndarray
) -> np.ndarray:
    r"""Barycentric coordinates ``lam`` ``(m, d + 1)`` with the entries that are zero up to rounding set to 0.

    A point on a vertex or a facet (a node shared by two meshes, a clamped node morphed onto the common mesh's
    boundary) has exact coordinates 1 or 0 there, but ``A (x - v_0)`` gives them to a few ulps (``1e-16`` on a
    vertex of a unit mesh): a field that is exactly 0 at the vertex would interpolate to ``1e-19``, and a variance
    to roundoff instead of 0. An entry is rounding when ``|lam_a| <= 8 eps (1 + |x - v_0|_inf g) + s``, with ``g`` the
    cell's largest barycentric gradient ``(m,)``, ``offset = x - v_0`` ``(m, d)`` and ``s`` ``(m,)`` what rounding
    the query's own coordinates moves them by; rows with such an entry are renormalised to sum to 1 (a point on a
    vertex gets exactly 1 there), the others are returned unchanged."""
    eps = np.finfo(np.float64).eps
    bound = 8.0 * eps * (1.0 + np.abs(offset).max(axis=1) * grad_norm) + query_rounding
    tiny = (np.abs(lam) <= bound[:, None]) & (lam != 0)
    rows = np.nonzero(tiny.any(axis=1))[0]
    if len(rows):
        fixed = np.where(tiny[rows], 0.0, lam[rows])
        lam[rows] = fixed / fixed.sum(axis=1, keepdims=True)
    return lam

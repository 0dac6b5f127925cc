r"""Morphing of 3D meshes onto a common template: tetrahedral volumes and triangle surfaces.

MMGP (Casenave, Staber, Roynard, NeurIPS 2023, arXiv:2305.12871, Sec. 3.1) morphs every mesh of a family onto one
reference shape so that P1 interpolation carries fields between meshes of different connectivity. In 2D a Floater
map onto the unit disk does this for disk-like meshes (:func:`~gpgeom.geometry.morphing.floater_disk`, which also
maps a disk-topology *surface* in 3D onto the disk). For volumes and for surfaces without a single boundary loop,
this module maps each mesh onto a *template* mesh of the family (e.g. the common mesh):

1. **Affine alignment** (affine iterative closest point, Besl & McKay 1992 with an affine instead of a rigid
   update): starting from the bounding-box map, repeat "closest points on the template boundary" / "least-squares
   affine map onto them".
2. **Boundary correspondence**: each aligned boundary node goes to its closest point on the template's boundary
   surface (:func:`~gpgeom.geometry.closest.closest_on_surface`), feature-preserving when both boundaries split
   into the same smooth patches at sharp edges (patch to patch, edge curve to edge curve, corner to corner,
   :func:`surface_patches`); for surfaces with boundary loops, loop nodes go
   to the template loop at the same arc-length fraction.
3. **Interior**: the Wendland-C2 RBF map (:class:`~gpgeom.geometry.morphing.RBFMorphing`, affine part included)
   interpolating the boundary displacements moves the interior nodes (de Boer, van der Schoot, Bijl 2007,
   "Mesh deformation based on radial basis function interpolation", Comput. Struct. 85); the boundary nodes are
   then set to their targets exactly.
4. **Validity**: a tetrahedron whose signed volume changes sign (or collapses) is inverted; the RBF support radius
   is then widened (a smoother, more global map), and if every radius inverts a cell, a ValueError names it.

Inputs are :class:`~gpgeom.geometry.mesh.Mesh` objects (or anything :func:`~gpgeom.geometry.mesh.as_mesh`
takes); outputs are numpy float64 arrays.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

from gpgeom._validation import check_positive
from gpgeom.geometry.closest import closest_on_surface
from gpgeom.geometry.fem import _cell_measures
from gpgeom.geometry.mesh import Mesh, as_mesh
from gpgeom.geometry.morphing import RBFMorphing

__all__ = [
    "affine_align",
    "boundary_surface",
    "inverted_cells",
    "morph_surface",
    "morph_volume",
    "surface_patches",
]

#: Largest number of control points of the dense RBF solve (every k-th one above it).
MAX_CONTROL = 2000
#: Support radii tried, as multiples of the default (half the bounding-box diagonal), until no cell inverts.
RADIUS_FACTORS = (1.0, 2.0, 4.0, 8.0)


def _check_tetra(mesh: Mesh, name: str) -> Mesh:
    mesh = as_mesh(mesh, name)
    if mesh.dim != 3 or mesh.cell_dim != 3:
        raise ValueError(
            f"`{name}` must be a tetrahedral mesh in 3D (points (n, 3), cells (m, 4)); got {mesh.cell_type} cells "
            f"in {mesh.dim}D."
        )
    mesh.check()
    return mesh


def _check_surface(mesh: Mesh, name: str) -> Mesh:
    mesh = as_mesh(mesh, name)
    if mesh.dim != 3 or mesh.cell_dim != 2:
        raise ValueError(
            f"`{name}` must be a triangle surface in 3D (points (n, 3), cells (m, 3)); got {mesh.cell_type} cells "
            f"in {mesh.dim}D."
        )
    nm = mesh.non_manifold_facets()
    if len(nm):
        raise ValueError(
            f"`{name}` has {len(nm)} non-manifold edge(s) shared by more than two triangles (first: nodes "
            f"{nm[0].tolist()}); morphing needs a manifold surface."
        )
    if not mesh.used_points().all():
        raise ValueError(f"`{name}` has nodes in no triangle; remove unused points first.")
    return mesh


def _unit(mesh: Mesh) -> tuple[Mesh, np.ndarray, float]:
    r"""``(unit, centre, size)``: the mesh moved and scaled so that its bounding box is centred at 0 with a half
    diagonal of 1, ``mesh.points = unit.points * size + centre``. The morphings work in these coordinates, so that
    they commute with translations and scalings: their Gram determinants and normal lengths (4th and 2nd powers of
    the coordinates) neither under- nor overflow, and the affine fits are well conditioned far from the origin."""
    P = mesh.points
    lo, hi = P.min(axis=0), P.max(axis=0)
    centre = 0.5 * (lo + hi)
    big = float((hi - lo).max())  # the half diagonal, computed without squaring the coordinates
    size = 0.5 * big * float(np.linalg.norm((hi - lo) / big)) if big > 0 else 1.0
    return Mesh((P - centre) / size, mesh.cells), centre, size


def boundary_surface(mesh: Mesh) -> tuple[np.ndarray, np.ndarray]:
    r"""The boundary of a tetrahedral mesh as a triangle surface.

    Returns:
        ``(nodes, triangles)``: the boundary nodes ``(n_b,)`` (sorted mesh indices) and the boundary triangles
        ``(m_b, 3)`` in mesh node indices, oriented with the normal :math:`(b - a) \times (c - a)` pointing out of
        the mesh.
    """
    mesh = as_mesh(mesh)
    bf, cell, opp = mesh.boundary_facets()
    P = mesh.points
    a, b, c = (P[bf[:, j]] for j in range(3))
    inward = (np.cross(b - a, c - a) * (P[mesh.cells[cell, opp]] - a)).sum(1) > 0
    bf = bf.copy()
    bf[inward] = bf[inward][:, [0, 2, 1]]
    return np.unique(bf), bf


def inverted_cells(mesh: Mesh, morphed: object, *, tol: float = 1e-12) -> np.ndarray:
    r"""Cells of full dimension that the map ``mesh.points -> morphed`` inverts or collapses, ``(m,)``.

    A cell is inverted when its signed volume after the map does not have the sign it had before, or when its
    measure falls to at most ``tol`` times its original measure.
    """
    mesh = as_mesh(mesh)
    if mesh.cell_dim != mesh.dim:
        raise ValueError(f"inverted_cells needs cells of full dimension; got {mesh.cell_type} cells in {mesh.dim}D.")
    X = np.asarray(morphed, dtype=np.float64)
    if X.shape != mesh.points.shape:
        raise ValueError(f"`morphed` must have the shape of the mesh's points {mesh.points.shape}, got {X.shape}.")
    v0 = mesh.cell_volumes(signed=True)
    v1 = _cell_measures(X, mesh.cells, signed=True)
    return np.nonzero(np.sign(v0) * v1 <= tol * np.abs(v0))[0]


def affine_align(
    points: np.ndarray, tpoints: np.ndarray, ttriangles: np.ndarray, *, iterations: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    r"""Affine iterative-closest-point alignment of ``points`` ``(n, d)`` onto a triangle surface.

    Starts from the map of bounding boxes (per-axis scale and shift), then alternates closest points on the surface
    ``(tpoints, ttriangles)`` and the least-squares affine fit :math:`\min_{A, b} \sum_i \lVert A x_i + b - y_i
    \rVert^2`, stopping when the RMS distance stops decreasing by more than 1e-9 relative.

    Returns:
        ``(A, b)``: ``(d, d)`` and ``(d,)``, aligned points ``points @ A.T + b``.
    """
    lo, hi = points.min(0), points.max(0)
    tlo, thi = tpoints.min(0), tpoints.max(0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    A = np.diag((thi - tlo) / span)
    b = tlo - A @ lo
    mu = points.mean(axis=0)
    sc = max(float(np.abs(points - mu).max()), 1e-300)
    X1 = np.concatenate([(points - mu) / sc, np.ones((len(points), 1))], axis=1)  # well-conditioned at any scale
    prev = np.inf
    for _ in range(iterations):
        Y = points @ A.T + b
        tri, w = closest_on_surface(tpoints, ttriangles, Y)
        Z = np.einsum("na,nad->nd", w, tpoints[ttriangles[tri]])
        rms = float(np.sqrt(((Z - Y) ** 2).sum(1).mean()))
        if rms >= prev * (1 - 1e-9):
            break
        prev = rms
        sol, *_ = np.linalg.lstsq(X1, Z, rcond=None)
        A = sol[:-1].T / sc
        b = sol[-1] - A @ mu
    return A, b


def _project(tpoints: np.ndarray, ttriangles: np.ndarray, Y: np.ndarray) -> np.ndarray:
    tri, w = closest_on_surface(tpoints, ttriangles, Y)
    return np.einsum("na,nad->nd", w, tpoints[ttriangles[tri]])


def surface_patches(points: np.ndarray, triangles: np.ndarray, *, angle: float = 40.0) -> np.ndarray:
    r"""Smooth patches of a closed or open triangle surface: connected components of the triangles across edges
    whose dihedral angle (between unit normals) is below ``angle`` degrees. Returns the patch label per triangle
    ``(m,)``; a solid with sharp edges (a block) gets one patch per face."""
    a, b, c = (points[triangles[:, j]] for j in range(3))
    nrm = np.cross(b - a, c - a)
    nrm /= np.maximum(np.abs(nrm).max(axis=1, keepdims=True), 1e-300)  # then the norm cannot over- or underflow
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-300)
    m = len(triangles)
    E = np.sort(triangles[:, [[1, 2], [2, 0], [0, 1]]].reshape(-1, 2), axis=1)
    owner = np.repeat(np.arange(m), 3)
    order = np.lexsort((E[:, 1], E[:, 0]))
    E, owner = E[order], owner[order]
    same = np.nonzero((E[1:] == E[:-1]).all(1))[0]
    t0, t1 = owner[same], owner[same + 1]
    smooth = (nrm[t0] * nrm[t1]).sum(1) > np.cos(np.deg2rad(angle))
    G = sp.csr_matrix((np.ones(int(smooth.sum())), (t0[smooth], t1[smooth])), shape=(m, m))
    return connected_components(G, directed=False)[1]


def _node_patch_sets(n: int, triangles: np.ndarray, labels: np.ndarray) -> dict[tuple[int, ...], np.ndarray]:
    r"""Nodes grouped by the set of patches their triangles belong to: ``{sorted patch labels: node indices}``."""
    inc = sp.csr_matrix(
        (np.ones(triangles.size), (triangles.ravel(), np.repeat(labels, 3))), shape=(n, int(labels.max()) + 1)
    )
    inc.sum_duplicates()
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in np.nonzero(np.diff(inc.indptr))[0]:
        key = tuple(int(v) for v in inc.indices[inc.indptr[i] : inc.indptr[i + 1]])
        groups.setdefault(key, []).append(int(i))
    return {k: np.asarray(v, dtype=np.int64) for k, v in groups.items()}


def _feature_project(
    P: np.ndarray, bf: np.ndarray, TP: np.ndarray, tbf: np.ndarray, angle: float
) -> tuple[np.ndarray, np.ndarray] | None:
    r"""Feature-preserving boundary targets: nodes inside a smooth patch go to the closest point of the matched
    template patch, nodes on a sharp edge between two patches to the matched template edge curve, corner nodes to
    the matched template corner. ``None`` when the patch structures differ (different counts or an unmatched
    edge or corner); the caller then projects onto the whole boundary."""
    lab, tlab = surface_patches(P, bf, angle=angle), surface_patches(TP, tbf, angle=angle)
    k = int(lab.max()) + 1
    if k != int(tlab.max()) + 1:
        return None
    if k == 1:
        return None

    def summary(X: np.ndarray, F: np.ndarray, lb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, b, c = (X[F[:, j]] for j in range(3))
        cr = np.cross(b - a, c - a)
        area = 0.5 * np.linalg.norm(cr, axis=1)
        cen = (a + b + c) / 3
        nr = np.stack([np.bincount(lb, weights=cr[:, j], minlength=k) for j in range(3)], axis=1)
        ce = np.stack([np.bincount(lb, weights=area * cen[:, j], minlength=k) for j in range(3)], axis=1)
        ce /= np.bincount(lb, weights=area, minlength=k)[:, None]
        return nr / np.maximum(np.linalg.norm(nr, axis=1, keepdims=True), 1e-300), ce

    n1, c1 = summary(P, bf, lab)
    n2, c2 = summary(TP, tbf, tlab)
    diag = float(np.linalg.norm(np.ptp(TP, axis=0)))
    cost = (1.0 - n1 @ n2.T) + np.sqrt(((c1[:, None] - c2[None]) ** 2).sum(2)) / diag
    rows, cols = linear_sum_assignment(cost)
    match = np.empty(k, dtype=np.int64)
    match[rows] = cols
    groups = _node_patch_sets(len(P), bf, lab)
    tgroups = _node_patch_sets(len(TP), tbf, tlab)
    nodes, targets = [], []
    for key, idx in groups.items():
        tkey = tuple(sorted(int(match[v]) for v in key))
        if len(key) == 1:
            F = tbf[tlab == tkey[0]]
        elif len(key) == 2:  # template edges between the two patches, as degenerate triangles (a, b, b)
            tn = tgroups.get(tkey)
            if tn is None:
                return None
            on = np.zeros(len(TP), dtype=bool)
            on[tn] = True
            for other, tidx in tgroups.items():
                if len(other) > 2 and set(tkey) <= set(other):
                    on[tidx] = True
            E = np.sort(tbf[:, [[1, 2], [2, 0], [0, 1]]].reshape(-1, 2), axis=1)
            E = np.unique(E[on[E].all(1)], axis=0)
            if not len(E):
                return None
            F = np.column_stack([E, E[:, 1]])
        else:
            cand = [tidx for other, tidx in tgroups.items() if set(tkey) <= set(other)]
            if not cand:
                return None
            F = np.repeat(np.concatenate(cand)[:, None], 3, axis=1)
        nodes.append(idx)
        targets.append(_project(TP, F, P[idx]))
    return np.concatenate(nodes), np.concatenate(targets)


def _rbf_extend(points: np.ndarray, src: np.ndarray, tgt: np.ndarray, radius: float | None) -> np.ndarray:
    if len(src) > MAX_CONTROL:
        step = math.ceil(len(src) / MAX_CONTROL)
        src, tgt = src[::step], tgt[::step]
    return RBFMorphing(src, tgt, radius=radius)(points)


def morph_volume(
    mesh: Mesh,
    template: Mesh,
    *,
    radius_factors: tuple[float, ...] = RADIUS_FACTORS,
    feature_angle: float | None = 40.0,
) -> np.ndarray:
    r"""Morph a tetrahedral mesh onto the shape of a tetrahedral ``template`` (steps 1-4 of the module doc).

    Args:
        mesh: Tetrahedral mesh in 3D, valid (no coincident nodes, flat or inverted tetrahedra).
        template: Tetrahedral mesh in 3D whose boundary surface is the target shape.
        radius_factors: RBF support radii to try, as multiples of half the diagonal of the control points'
            bounding box, in order; the first that inverts no tetrahedron is kept.
        feature_angle: Sharp-edge threshold in degrees (:func:`surface_patches`): when the mesh and the template
            have the same smooth patches (the faces of a block), boundary nodes are projected patch to patch, sharp
            edge to sharp edge and corner to corner, so that no node slides across an edge (which flattens the
            tetrahedra there). ``None``, or patch structures that differ: closest point on the whole boundary.

    Returns:
        Morphed node positions ``(n_points, 3)``: boundary nodes lie on the template's boundary surface (to
        round-off), and no tetrahedron is inverted.

    Raises:
        ValueError: not tetrahedral meshes in 3D, an invalid mesh (inverted or flat tetrahedra, coincident nodes:
            :meth:`~gpgeom.geometry.mesh.Mesh.check`), or every radius inverts a tetrahedron (the message names the
            first one).
    """
    mesh = _check_tetra(mesh, "mesh")
    template = _check_tetra(template, "template")
    if not radius_factors:
        raise ValueError("`radius_factors` must hold at least one factor, got an empty sequence.")
    for f in radius_factors:
        check_positive("radius_factors", f)
    original = mesh
    mesh, _, _ = _unit(mesh)
    template, centre, size = _unit(template)
    bn, bf = boundary_surface(mesh)
    _, tbf = boundary_surface(template)
    P, TP = mesh.points, template.points
    A, b = affine_align(P[bn], TP, tbf)
    aligned = P @ A.T + b
    feat = _feature_project(aligned, bf, TP, tbf, feature_angle) if feature_angle is not None else None
    if feat is None:
        target = _project(TP, tbf, aligned[bn])
    else:
        order = np.argsort(feat[0])
        target = feat[1][order]  # feat[0][order] == bn (both the sorted boundary nodes)
    base = 0.5 * float(np.linalg.norm(np.ptp(aligned[bn], axis=0)))
    bad = np.zeros(0, dtype=np.int64)
    for f in radius_factors:
        X = _rbf_extend(aligned, aligned[bn], target, f * base)
        X[bn] = target
        bad = inverted_cells(mesh, X)
        if not len(bad):
            return X * size + centre
    c = int(bad[0])
    raise ValueError(
        f"RBF volume morphing inverts {len(bad)} tetrahedron(s) for every support radius tried "
        f"({', '.join(f'{f:g}' for f in radius_factors)} x {base * size:.3g}); first: cell {c} (nodes "
        f"{original.cells[c].tolist()}). The shape is too far from the template for a boundary-driven RBF map: use a "
        "template closer to it, or a finer template boundary."
    )


def _loops_by_arclength(mesh: Mesh, template: Mesh, aligned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Boundary-loop correspondences: each loop of ``mesh`` (aligned positions) is matched to the template loop of
    nearest centroid and its nodes go to the template loop at the same arc-length fraction, both loops starting at
    the node nearest the template loop's first node and running in the direction that fits best."""
    loops, tloops = mesh.boundary_loops(), template.boundary_loops()
    if len(loops) != len(tloops):
        raise ValueError(
            f"The surface has {len(loops)} boundary loop(s), the template {len(tloops)}; morphing onto a template "
            "needs the same number."
        )
    src, tgt = [], []
    free = list(range(len(tloops)))
    for lp in sorted(loops, key=len, reverse=True):
        c = aligned[lp].mean(0)
        j = min(free, key=lambda k: float(((template.points[tloops[k]].mean(0) - c) ** 2).sum()))
        free.remove(j)
        R = template.points[tloops[j]]
        Rc = np.vstack([R, R[:1]])
        Rs = np.concatenate([[0.0], np.cumsum(np.sqrt((np.diff(Rc, axis=0) ** 2).sum(1)))])
        Rs /= Rs[-1]
        best = None
        for direction in (1, -1):
            ordered = lp[::direction]
            i0 = int(np.argmin(((aligned[ordered] - R[0]) ** 2).sum(1)))
            ordered = np.roll(ordered, -i0)
            B = aligned[ordered]
            Bc = np.vstack([B, B[:1]])
            s = np.concatenate([[0.0], np.cumsum(np.sqrt((np.diff(Bc, axis=0) ** 2).sum(1)))])[:-1] / max(
                float(np.sqrt((np.diff(Bc, axis=0) ** 2).sum(1)).sum()), 1e-300
            )
            T = np.column_stack([np.interp(s, Rs, Rc[:, k]) for k in range(3)])
            err = float(((T - B) ** 2).sum())
            if best is None or err < best[0]:
                best = (err, ordered, T)
        src.append(best[1])
        tgt.append(best[2])
    return np.concatenate(src), np.concatenate(tgt)


def morph_surface(mesh: Mesh, template: Mesh) -> np.ndarray:
    r"""Morph a triangle surface in 3D onto a template surface (closed or with any number of boundary loops).

    Affine alignment of all nodes onto the template (step 1), boundary loops matched by arc length, an RBF map
    interpolating the loop correspondences (affine part only for a closed surface), and finally every node projected
    onto its closest point of the template surface. The result lies on the template, so
    :func:`~gpgeom.geometry.closest.surface_transfer` carries fields both ways.

    Returns:
        Morphed node positions ``(n_points, 3)``, on the template surface.

    Raises:
        ValueError: not triangle surfaces in 3D, non-manifold edges, unused nodes, different numbers of boundary
            loops.
    """
    mesh = _check_surface(mesh, "mesh")
    template = _check_surface(template, "template")
    mesh.check()
    mesh, _, _ = _unit(mesh)
    template, centre, size = _unit(template)
    A, b = affine_align(mesh.points, template.points, template.cells)
    aligned = mesh.points @ A.T + b
    if len(mesh.boundary_facets()[0]) or len(template.boundary_facets()[0]):
        src, tgt = _loops_by_arclength(mesh, template, aligned)
        X = _rbf_extend(aligned, aligned[src], tgt, None)
    else:
        src, tgt, X = np.zeros(0, dtype=np.int64), None, aligned
    X = _project(template.points, template.cells, X)
    if tgt is not None:
        X[src] = tgt
    return X * size + centre

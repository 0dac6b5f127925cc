r"""Mesh morphing: Floater (Tutte) parametrisation onto the unit disk, and Wendland-C2 RBF morphing.

In MMGP (Casenave, Staber, Roynard, NeurIPS 2023, arXiv:2305.12871, Sec. 3.1) every mesh of a family is morphed
onto one reference shape, so that fields of meshes with different node counts and connectivity can be carried to a
common mesh by P1 interpolation (:func:`gpgeom.geometry.transfer.p1_transfer`).

Inputs are numpy arrays or torch tensors; outputs are numpy float64 arrays.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import splu
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

from gpgeom._validation import check_option, check_positive
from gpgeom.geometry.boundary import renumber_for_parametrization
from gpgeom.geometry.mesh import Mesh, as_float_array, as_mesh

__all__ = ["floater_disk", "wendland_c2", "RBFMorphing", "rbf_morph"]


# ----------------------------------------------------------------------------------------------------------------
# Floater / Tutte
# ----------------------------------------------------------------------------------------------------------------
def _boundary_angles(B: np.ndarray, angles: str) -> np.ndarray:
    nb = B.shape[0]
    seg = np.sqrt(((np.roll(B, -1, axis=0) - B) ** 2).sum(axis=1))  # seg[k] = |B[k+1] - B[k]|, last closes
    if bool((seg <= 0).any()):
        k = int(np.nonzero(seg <= 0)[0][0])
        raise ValueError(f"Boundary nodes {k} and {(k + 1) % nb} of the loop coincide; merge duplicate points first.")
    s = np.concatenate([[0.0], np.cumsum(seg[:-1])])
    if angles == "arclength":
        return 2.0 * np.pi * s / seg.sum()
    if angles == "reference":
        return 2.0 * np.pi * (1.0 - 1.0 / nb) * s / s[-1]
    return 2.0 * np.pi * np.arange(nb) / nb  # "uniform"


def floater_disk(
    mesh: Mesh,
    *,
    start: str | object = "min_x",
    orientation: str = "ccw",
    angles: str = "arclength",
    rtol: float = 1e-9,
) -> np.ndarray:
    r"""Floater (Tutte, uniform weights) parametrisation of a disk-like triangle mesh onto the unit disk.

    Boundary nodes go onto the unit circle in loop order (loop start and direction from
    :func:`~gpgeom.geometry.boundary.renumber_for_parametrization`), at angles :math:`\theta_k` from the chord-length
    parametrisation. Interior nodes solve the discrete harmonic problem with uniform (Tutte) weights
    :math:`w_{ij} = 1/\deg(i)` (Floater 1997, "Parametrization and smooth approximation of surface
    triangulations", CAGD 14, with uniform instead of shape-preserving weights):

    .. math:: u_i = \frac{1}{\deg(i)} \sum_{j \sim i} u_j \quad (i \text{ interior}),
              \qquad\text{i.e.}\qquad (D - A)_{II}\, u_I = A_{IB}\, u_B,

    one sparse LU solve of the symmetric positive-definite interior Laplacian for both coordinates. Because the
    circle is strictly convex, Tutte's / Floater's theorem makes the map a bijection of the mesh onto a
    triangulation of the inscribed polygon: no triangle flips (with ``orientation="ccw"`` every triangle keeps its
    orientation sign).

    Args:
        mesh: Triangle mesh (2D, or a surface in 3D) with exactly one boundary loop, manifold, connected, every
            node in some triangle.
        start, orientation, rtol: Where the boundary walk starts and its direction; see
            :func:`~gpgeom.geometry.boundary.renumber_for_parametrization`.
        angles: Boundary parametrisation. ``"arclength"`` (default): :math:`\theta_k = 2\pi s_k / L` with
            :math:`s_k` the chord length from the start node and :math:`L` the perimeter (closing edge included).
            ``"reference"``: Muscat / MMGP-code formula :math:`\theta_k = 2\pi (1 - 1/n_B) s_k / s_{n_B - 1}`,
            which ignores the length of the closing edge (it always gets the angle :math:`2\pi/n_B`) and so depends
            on the node count; use it to reproduce the reference. ``"uniform"``: :math:`2\pi k / n_B`.
            The reference MMGP morphing is ``orientation="reference", angles="reference", rtol=0``.

    Returns:
        Disk coordinates ``(n_points, 2)``, in the mesh's node order.

    Raises:
        ValueError: not exactly one boundary loop (the message says how many were found), non-manifold edges,
            nodes in no triangle, several connected components, a non-disk surface (Euler characteristic != 1),
            coincident boundary nodes, unknown option values.
    """
    mesh = as_mesh(mesh)
    check_option("angles", angles, ("arclength", "reference", "uniform"))
    perm, nb = renumber_for_parametrization(mesh, start=start, orientation=orientation, rtol=rtol)
    n = mesh.n_points
    loop = perm[n - nb :]
    used = mesh.used_points()
    if not used.all():
        raise ValueError(
            f"{int((~used).sum())} node(s) belong to no triangle (first: {int(np.nonzero(~used)[0][0])}); "
            "remove unused points before Floater morphing."
        )
    E = mesh.edges()
    chi = n - len(E) + mesh.n_cells
    if chi != 1:
        raise ValueError(
            f"The mesh has one boundary loop but Euler characteristic {chi} (a disk has 1): it is not a topological "
            "disk (handles or several components), so it cannot be mapped one-to-one onto the unit disk."
        )
    theta = _boundary_angles(mesh.points[loop], angles)
    uv = np.empty((n, 2))
    uv[loop, 0] = np.cos(theta)
    uv[loop, 1] = np.sin(theta)
    ni = n - nb
    if ni == 0:
        return uv
    interior = perm[:ni]
    idx = np.full(n, -1, dtype=np.int64)
    idx[interior] = np.arange(ni)
    ia, ib = idx[E[:, 0]], idx[E[:, 1]]
    deg = np.bincount(E.ravel(), minlength=n).astype(np.float64)
    both = (ia >= 0) & (ib >= 0)
    r_ii, c_ii = ia[both], ib[both]
    rows = np.concatenate([r_ii, c_ii, np.arange(ni)])
    cols = np.concatenate([c_ii, r_ii, np.arange(ni)])
    data = np.concatenate([-np.ones(2 * len(r_ii)), deg[interior]])
    L = sp.csc_matrix((data, (rows, cols)), shape=(ni, ni))
    G = sp.csr_matrix((np.ones(len(E)), (E[:, 0], E[:, 1])), shape=(n, n))
    ncomp = connected_components(G, directed=False, return_labels=False)
    if ncomp != 1:
        raise ValueError(
            f"The mesh has {ncomp} connected components; Floater morphing needs one connected disk "
            "(remove disjoint parts)."
        )
    # right-hand side: sum of the boundary neighbours' positions
    m1 = (ia >= 0) & (ib < 0)
    m2 = (ia < 0) & (ib >= 0)
    tgt = np.concatenate([ia[m1], ib[m2]])
    srcb = np.concatenate([E[m1, 1], E[m2, 0]])
    rhs = np.empty((ni, 2))
    rhs[:, 0] = np.bincount(tgt, weights=uv[srcb, 0], minlength=ni)
    rhs[:, 1] = np.bincount(tgt, weights=uv[srcb, 1], minlength=ni)
    lu = splu(L, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
    uv[interior] = lu.solve(rhs)
    return uv


# ----------------------------------------------------------------------------------------------------------------
# Wendland C2 RBF morphing
# ----------------------------------------------------------------------------------------------------------------
def wendland_c2(r: np.ndarray, radius: float) -> np.ndarray:
    r"""Wendland's compactly supported C2 function :math:`\phi(r) = (1 - r/R)_+^4 (4 r/R + 1)`.

    Positive definite in :math:`\mathbb{R}^d` for :math:`d \le 3` (Wendland 1995), so the interpolation matrix of
    distinct points is symmetric positive definite.
    """
    x = np.minimum(np.asarray(r, dtype=np.float64) / radius, 1.0)
    return (1.0 - x) ** 4 * (4.0 * x + 1.0)


class RBFMorphing:
    r"""Smooth map of space interpolating prescribed displacements of control points (Wendland C2 RBF).

    .. math:: f(x) = x + \sum_{j=1}^m \alpha_j\, \phi(\lVert x - c_j \rVert) + \beta_0 + B^\top x,
              \qquad f(c_j) = t_j,

    with :math:`\phi` = :func:`wendland_c2` of support radius :math:`R`. With ``affine=True`` (default) the affine
    part is added with the orthogonality conditions :math:`\sum_j \alpha_j = 0`, :math:`\sum_j \alpha_j c_j = 0`
    (de Boer, van der Schoot, Bijl 2007), so an affine motion of the control points (translation, rotation,
    stretch) is reproduced exactly everywhere and points beyond the support follow the affine trend instead of
    staying put. ``affine=False`` gives the plain interpolant of Muscat's ``Morphing``.

    Solved densely (Cholesky of the ``m x m`` kernel matrix plus a Schur complement for the affine part): fine up to a
    few thousand control points.

    Args:
        source: Control points ``(m, d)``, distinct (``d <= 3`` for guaranteed positive definiteness).
        target: Their images ``(m, d)``.
        radius: Support radius :math:`R`; default half the diagonal of the control points' bounding box (as in
            Muscat). A larger radius gives smoother, more global maps and a worse-conditioned system.
        affine: Add the affine part. When the control points span less than ``d`` dimensions (one point, points on
            a line, a plane in 3D) it is fitted on their affine hull and constant along its normal directions (one
            control point: a translation of the whole space).
    """

    def __init__(self, source: object, target: object, *, radius: float | None = None, affine: bool = True) -> None:
        c = as_float_array("source", source, ndim=2)
        t = as_float_array("target", target, ndim=2)
        if t.shape != c.shape:
            raise ValueError(f"`target` must have the shape of `source` {c.shape}, got {t.shape}.")
        m, d = c.shape
        if m == 0:
            raise ValueError("`source` holds no control point.")
        n_close = len(cKDTree(c).query_pairs(0.0))
        if n_close:
            raise ValueError(f"`source` holds {n_close} pair(s) of coincident control points; remove duplicates.")
        if radius is None:
            radius = 0.5 * float(np.linalg.norm(np.ptp(c, axis=0)))
            if radius <= 0:
                radius = 1.0
        check_positive("radius", radius)
        self.radius = float(radius)
        self.affine = bool(affine)
        self.source = c
        D = t - c
        K = wendland_c2(cdist(c, c), self.radius)
        try:
            cf = sla.cho_factor(K, lower=True, check_finite=False)
        except np.linalg.LinAlgError as exc:
            raise ValueError(
                "The RBF interpolation matrix is not positive definite (control points too close for the "
                "radius, or d > 3); merge close control points or change `radius`."
            ) from exc
        if self.affine:
            # the affine part lives on the affine hull of the control points: with r = its dimension (< d for one
            # control point, or for points on a line or a plane, exactly or to rounding) the coordinates along
            # its r principal directions enter the polynomial part, so the normal directions get no linear term
            # (a flat set moves the space like its own hyperplane: one control point translates everything)
            mean = c.mean(axis=0)
            _, sv, Vt = np.linalg.svd(c - mean, full_matrices=False)
            V = Vt[: int(np.sum(sv > 1e-10 * sv[0])) if m > 1 and sv[0] > 0 else 0].T  # (d, r)
            P = np.concatenate([np.ones((m, 1)), (c - mean) @ V], axis=1)
            KiP = sla.cho_solve(cf, P, check_finite=False)
            KiD = sla.cho_solve(cf, D, check_finite=False)
            S = P.T @ KiP
            beta_r = np.linalg.solve(S, P.T @ KiD)  # (1 + r, d); S is positive definite
            B = V @ beta_r[1:]  # (d, d): x -> ((x - mean) V) beta_r[1:]
            beta = np.concatenate([beta_r[:1] - mean @ B, B], axis=0)
            self.alpha = KiD - KiP @ beta_r
            self.beta = beta  # (d + 1, d)
        else:
            self.alpha = sla.cho_solve(cf, D, check_finite=False)
            self.beta = None
        self._check_interpolation(K, D)

    #: Largest relative error allowed in reproducing the control displacements (a sound solve gives 1e-10 or less)
    INTERP_RTOL = 1e-3

    def _check_interpolation(self, K: np.ndarray, D: np.ndarray) -> None:
        r"""Raise when the solve does not reproduce the control displacements: nearly coincident control points
        with different displacements make the kernel matrix so ill-conditioned (Cholesky still succeeds) that the
        interpolant misses them and moves other points by thousands of times the displacements."""
        fit = K @ self.alpha
        if self.beta is not None:
            fit += self.beta[0] + self.source @ self.beta[1:]
        err = float(np.abs(fit - D).max())
        ref = float(np.abs(D).max())
        if err > self.INTERP_RTOL * ref:
            dist, nn = cKDTree(self.source).query(self.source, k=2)
            i = int(np.argmin(dist[:, 1]))
            j = int(nn[i, 1])

            def fmt(v: np.ndarray) -> str:
                return "(" + ", ".join(f"{float(x):.3g}" for x in v) + ")"

            raise ValueError(
                f"The RBF interpolation is ill-conditioned: it misses the control displacements by {err:.3g} (the "
                f"largest is {ref:.3g}). Control points {min(i, j)} and {max(i, j)} are {dist[i, 1]:.3g} apart "
                f"(radius {self.radius:.3g}) with displacements {fmt(D[min(i, j)])} and {fmt(D[max(i, j)])}; merge "
                "nearly coincident control points or give them the same displacement."
            )

    def displacement(self, points: object, *, chunk_size: int = 1 << 22) -> np.ndarray:
        r"""Displacement :math:`f(x) - x` at ``points`` ``(n, d)`` -> ``(n, d)`` (evaluated in row chunks)."""
        x = as_float_array("points", points, ndim=2, shape=(None, self.source.shape[1]))
        out = np.empty_like(x)
        step = max(1, chunk_size // max(1, self.source.shape[0]))
        for i in range(0, x.shape[0], step):
            xi = x[i : i + step]
            out[i : i + step] = wendland_c2(cdist(xi, self.source), self.radius) @ self.alpha
            if self.beta is not None:
                out[i : i + step] += self.beta[0] + xi @ self.beta[1:]
        return out

    def __call__(self, points: object) -> np.ndarray:
        r"""Morphed positions :math:`f(x)` of ``points`` ``(n, d)`` -> ``(n, d)``."""
        x = as_float_array("points", points, ndim=2, shape=(None, self.source.shape[1]))
        return x + self.displacement(x)


def rbf_morph(
    points: object, source: object, target: object, *, radius: float | None = None, affine: bool = True
) -> np.ndarray:
    r"""Move ``points`` ``(n, d)`` by the Wendland-C2 RBF map sending ``source`` to ``target`` (see
    :class:`RBFMorphing`). Returns ``(n, d)``. For a mesh, pass ``mesh.points`` and build ``mesh.with_points(...)``.
    """
    return RBFMorphing(source, target, radius=radius, affine=affine)(points)

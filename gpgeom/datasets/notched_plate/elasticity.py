r"""Plane-strain linear elasticity of a notched plate on P1 triangles (scikit-fem): the solve with the boundary
conditions of :mod:`gpgeom.datasets.notched_plate` (traction on the top edge, roller on the bottom edge, one pinned
corner), the element stresses, and their recovery to the nodes by L2 projection (consistent mass matrix) or by
area-weighted averaging. ``scikit-fem`` is an optional dependency (``pip install gpgeom[fem]``), imported lazily."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gpgeom.datasets._optional import import_optional

__all__ = ["PlaneStrainSolution", "solve_plane_strain"]


@dataclass
class PlaneStrainSolution:
    r"""The result of :func:`solve_plane_strain`.

    Attributes:
        fields: Nodal fields ``U1``, ``U2``, ``von_mises``, ``sigma22``, each ``(n,)``.
        out_scalars: ``max_vm``, ``mean_U2_top``, ``compliance``.
        element_stress: Element stresses ``(m, 4)``: columns sigma11, sigma22, sigma12, sigma33.
        stiffness: The assembled stiffness matrix ``(2n, 2n)`` before boundary conditions (``return_system``).
        load_vector: The assembled load vector ``(2n,)`` (``return_system``).
        displacement: The solution as a DOF vector ``(2n,)`` in the numbering of ``stiffness`` (``return_system``).
        dirichlet_dofs: The constrained DOFs (``return_system``).
    """

    fields: dict[str, np.ndarray]
    out_scalars: dict[str, float]
    element_stress: np.ndarray
    stiffness: Any = None
    load_vector: np.ndarray | None = None
    displacement: np.ndarray | None = None
    dirichlet_dofs: np.ndarray | None = None


def solve_plane_strain(
    points: np.ndarray,
    triangles: np.ndarray,
    *,
    load: float,
    nu: float,
    young: float = 1.0,
    recovery: str = "l2",
    return_system: bool = False,
) -> PlaneStrainSolution:
    r"""Solve plane-strain linear elasticity on a P1 triangle mesh with scikit-fem.

    Boundary conditions: traction ``(0, load)`` on the top edge (nodes at the largest ``y``), ``u2 = 0`` on the
    bottom edge (nodes at the smallest ``y``), ``u1 = 0`` at the bottom node with the smallest ``x``. The other edges
    are traction free.

    Args:
        points: Node coordinates, shape ``(n, 2)``.
        triangles: Node indices, shape ``(m, 3)``.
        load: The traction magnitude :math:`P`.
        nu: Poisson's ratio, in ``(-1, 0.5)``.
        young: Young's modulus (> 0).
        recovery: Nodal stress recovery, ``"l2"`` (L2 projection onto P1, consistent mass) or ``"average"``
            (area-weighted average of the adjacent elements).
        return_system: Also return the stiffness matrix, load vector and DOF vector.

    Returns:
        A :class:`PlaneStrainSolution`.
    """
    if recovery not in ("l2", "average"):
        raise ValueError(f"Unknown `recovery`={recovery!r}; expected 'l2' or 'average'.")
    if not -1.0 < nu < 0.5:
        raise ValueError(f"`nu` must lie in (-1, 0.5), got {nu!r}.")
    if not young > 0:
        raise ValueError(f"`young` must be > 0, got {young!r}.")
    skfem = import_optional("skfem", "scikit-fem, the FE solver", "NotchedPlate2d")
    from skfem.helpers import ddot, sym_grad, trace

    pts = np.asarray(points, dtype=np.float64)
    tri = np.asarray(triangles, dtype=np.int64)
    lam = young * nu / ((1.0 + nu) * (1.0 - 2.0 * nu))
    mu = young / (2.0 * (1.0 + nu))

    mesh = skfem.MeshTri(np.ascontiguousarray(pts.T), np.ascontiguousarray(tri.T))
    basis = skfem.Basis(mesh, skfem.ElementVector(skfem.ElementTriP1()))

    @skfem.BilinearForm
    def elasticity(u, v, _):
        eu, ev = sym_grad(u), sym_grad(v)
        return 2.0 * mu * ddot(eu, ev) + lam * trace(eu) * trace(ev)

    @skfem.LinearForm
    def traction(v, _):
        return load * v[1]

    span = pts[:, 1].max() - pts[:, 1].min()
    tol = 1e-9 * max(span, 1.0)
    ymin, ymax = pts[:, 1].min(), pts[:, 1].max()
    top_facets = mesh.facets_satisfying(lambda x: x[1] > ymax - tol, boundaries_only=True)
    stiffness = elasticity.assemble(basis)
    f = traction.assemble(skfem.FacetBasis(mesh, basis.elem, facets=top_facets))

    bottom = np.flatnonzero(pts[:, 1] < ymin + tol)
    pin = bottom[np.argmin(pts[bottom, 0])]
    dofs = basis.nodal_dofs  # (2, n): row 0 the u1 DOFs, row 1 the u2 DOFs
    dirichlet = np.unique(np.concatenate([dofs[1, bottom], dofs[0, [pin]]]))
    u = skfem.solve(*skfem.condense(stiffness, f, D=dirichlet))

    # Element strains and stresses (P1: constant per element).
    gu = sym_grad(basis.interpolate(u))  # (2, 2, m, nqp)
    e11, e22, e12 = gu[0, 0][:, 0], gu[1, 1][:, 0], gu[0, 1][:, 0]
    tr = e11 + e22
    s11 = 2.0 * mu * e11 + lam * tr
    s22 = 2.0 * mu * e22 + lam * tr
    s12 = 2.0 * mu * e12
    s33 = lam * tr  # = nu (s11 + s22)
    vm = np.sqrt(0.5 * ((s11 - s22) ** 2 + (s22 - s33) ** 2 + (s33 - s11) ** 2) + 3.0 * s12**2)
    # skfem keeps the node numbering but may permute the vertices inside each element: use its t.
    nodal = _recover(pts, mesh.t.T, np.column_stack([vm, s22]), recovery)

    u1, u2 = u[dofs[0]], u[dofs[1]]
    compliance = float(f @ u)
    # Mean of u2 over the top edge (trapezoidal rule, exact for P1 on straight edges).
    fac = mesh.facets[:, top_facets]
    lengths = np.hypot(*(pts[fac[1]] - pts[fac[0]]).T)
    mean_top = float(np.sum(lengths * 0.5 * (u2[fac[0]] + u2[fac[1]])) / np.sum(lengths))

    fields = {"U1": u1, "U2": u2, "von_mises": nodal[:, 0], "sigma22": nodal[:, 1]}
    scalars = {"max_vm": float(nodal[:, 0].max()), "mean_U2_top": mean_top, "compliance": compliance}
    sol = PlaneStrainSolution(fields, scalars, np.column_stack([s11, s22, s12, s33]))
    if return_system:
        sol.stiffness, sol.load_vector, sol.displacement, sol.dirichlet_dofs = stiffness, f, u, dirichlet
    return sol


def _recover(points: np.ndarray, tri: np.ndarray, values: np.ndarray, recovery: str) -> np.ndarray:
    r"""Element-constant ``values`` ``(m, c)`` to nodal values ``(n, c)`` by L2 projection or area averaging."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import splu

    n = len(points)
    p0, p1, p2 = points[tri[:, 0]], points[tri[:, 1]], points[tri[:, 2]]
    area = 0.5 * np.abs((p1[:, 0] - p0[:, 0]) * (p2[:, 1] - p0[:, 1]) - (p1[:, 1] - p0[:, 1]) * (p2[:, 0] - p0[:, 0]))
    # Right-hand side int(g phi_i) = sum over elements of g_e area_e / 3 (same sums serve the averaging).
    rhs = np.zeros((n, values.shape[1]))
    for j in range(3):
        np.add.at(rhs, tri[:, j], values * (area / 3.0)[:, None])
    if recovery == "average":
        weight = np.bincount(tri.ravel(), weights=np.repeat(area / 3.0, 3), minlength=n)
        return rhs / weight[:, None]
    # P1 consistent mass matrix: area/12 * [[2,1,1],[1,2,1],[1,1,2]].
    rows = np.repeat(tri, 3, axis=1).ravel()
    cols = np.tile(tri, (1, 3)).ravel()
    local = np.where(np.eye(3, dtype=bool).ravel(), 2.0, 1.0)
    data = (area[:, None] / 12.0 * local[None, :]).ravel()
    mass = sp.csc_matrix((data, (rows, cols)), shape=(n, n))
    return splu(mass).solve(rhs)

r"""Integration on simplicial meshes: the measures of the cells and the exact P1 (L2) mass matrix.

The P1 (piecewise-linear, nodal) space: a nodal field ``u`` of shape ``(n_points,)`` represents
:math:`u_h(x) = \sum_i u_i \varphi_i(x)` with hat functions :math:`\varphi_i`. :func:`mass_matrix` is the Gram
matrix of the hat functions, :math:`M_{ij} = \int_\Omega \varphi_i \varphi_j`, so
:math:`u^\top M v = \int_\Omega u_h v_h` exactly; it is the inner product of the POD
(:class:`gpgeom.geometry.pod.SnapshotPOD`). The cell measures (lengths, areas, volumes;
:meth:`Mesh.cell_volumes <gpgeom.geometry.mesh.Mesh.cell_volumes>`) are computed from the arrays of points and cells,
so that code holding no :class:`~gpgeom.geometry.mesh.Mesh` (moved nodes, candidate cells) can use them too.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from gpgeom._validation import check_option, check_positive
from gpgeom.geometry.mesh import Mesh, as_mesh

__all__ = ["mass_matrix"]


def _row_norms(V: np.ndarray) -> np.ndarray:
    r"""Euclidean norms of the rows of ``V`` ``(n, d)``, scaled by their largest entry first so that the squares
    neither underflow nor overflow (the area of a triangle of size 1e-100 in 3D came out 0)."""
    big = np.abs(V).max(axis=1)
    safe = np.where(big > 0, big, 1.0)
    return big * np.sqrt(((V / safe[:, None]) ** 2).sum(axis=1))


def _cell_measures(P: np.ndarray, C: np.ndarray, signed: bool = False) -> np.ndarray:
    r"""Measures of the cells ``C`` over the points ``P`` (:meth:`~gpgeom.geometry.mesh.Mesh.cell_volumes`):
    determinants for cells of full dimension, the cross product for triangles in 3D, the Gram determinant otherwise
    (whose cancellation would hide a near-degenerate cell: its round-off is about sqrt(eps) of the measure)."""
    k, d = C.shape[1] - 1, P.shape[1]
    V = P[C]
    E = V[:, 1:, :] - V[:, :1, :]  # (n_cells, k, d)
    if k == d == 2:
        vol = 0.5 * (E[:, 0, 0] * E[:, 1, 1] - E[:, 0, 1] * E[:, 1, 0])
    elif k == d:
        vol = np.linalg.det(E) / math.factorial(k)
    elif k == 1:
        vol = _row_norms(E[:, 0])
    elif k == 2 and d == 3:
        vol = 0.5 * _row_norms(np.cross(E[:, 0], E[:, 1]))
    else:
        vol = np.sqrt(np.abs(np.linalg.det(E @ E.transpose(0, 2, 1)))) / math.factorial(k)
    return vol if signed else np.abs(vol)


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

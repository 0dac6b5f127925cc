r"""Boundary loops of triangle meshes and the node renumbering of the Floater (disk) parametrisation.

The boundary edges of a triangle mesh (those used by exactly one triangle,
:meth:`~gpgeom.geometry.mesh.Mesh.boundary_facets`) chain into closed loops, oriented with the mesh on their left:
:func:`boundary_loops`, also the method :meth:`~gpgeom.geometry.mesh.Mesh.boundary_loops`, which caches them.
:func:`renumber_for_parametrization` orders the nodes of a disk-like mesh interior first and its one boundary loop
last, walked from a start node and in a direction chosen so that the morphings of a mesh family agree (the rule of
the MMGP reference code, Casenave et al., NeurIPS 2023, arXiv:2305.12871, with two defects fixed);
:func:`gpgeom.geometry.morphing.floater_disk` maps that loop onto the circle.
"""

from __future__ import annotations

import numpy as np

from gpgeom._validation import check_option, check_positive
from gpgeom.geometry.mesh import Mesh, as_float_array, as_mesh

__all__ = ["boundary_loops", "renumber_for_parametrization"]


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
    # a 2D mesh, also when given with identically zero z (as meshio pads it): seen from +z, like in 2D
    planar = mesh.dim == 2 or not mesh.points[:, 2:].any()
    P = mesh.points[:, :2] if planar else mesh.points
    out = []
    for lp in loops:
        nxt = np.roll(lp, -1)
        ids = korder[np.searchsorted(ksorted, np.minimum(lp, nxt) * n + np.maximum(lp, nxt))]
        if planar:
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
    geometrically (the outer boundary counter-clockwise, holes clockwise, whatever the triangles' vertex order; also
    for a 2D mesh given with an identically zero ``z`` column), for other surfaces in 3D by the triangles' vertex
    order. Loops are listed by their smallest node index.

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

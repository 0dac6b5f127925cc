import numpy as np
import pytest
import scipy.sparse as sp
import torch
import triangle
from mesh_factories import random_disk_mesh, seeded_rng

from gpgeom.geometry.boundary import boundary_loops, renumber_for_parametrization
from gpgeom.geometry.fem import mass_matrix
from gpgeom.geometry.mesh import Mesh
from gpgeom.geometry.transfer import interpolate, p1_transfer


# ----------------------------------------------------------------------------------------------------------------
# random meshes
# ----------------------------------------------------------------------------------------------------------------
def annulus_mesh(n_outer=40, n_inner=16, area=0.01):
    a = 2 * np.pi * np.arange(n_outer) / n_outer
    b = 2 * np.pi * np.arange(n_inner) / n_inner
    V = np.r_[np.c_[np.cos(a), np.sin(a)], 0.4 * np.c_[np.cos(b), np.sin(b)]]
    so = np.c_[np.arange(n_outer), (np.arange(n_outer) + 1) % n_outer]
    si = n_outer + np.c_[np.arange(n_inner), (np.arange(n_inner) + 1) % n_inner]
    T = triangle.triangulate({"vertices": V, "segments": np.r_[so, si], "holes": [[0.0, 0.0]]}, f"pqa{area}")
    return Mesh(T["vertices"], T["triangles"])


def random_points_in_cells(rng, mesh, n):
    c = rng.integers(0, mesh.n_cells, n)
    lam = rng.dirichlet(np.ones(mesh.cell_dim + 1), n)
    return np.einsum("nk,nkd->nd", lam, mesh.points[mesh.cells[c]])


def shoelace(P):
    x, y = P[:, 0], P[:, 1]
    return 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)


# ----------------------------------------------------------------------------------------------------------------
# container, I/O
# ----------------------------------------------------------------------------------------------------------------
def test_mesh_basic_properties_and_torch_input():
    rng = seeded_rng()
    m = random_disk_mesh(rng)
    m2 = Mesh(torch.tensor(np.array(m.points)), torch.tensor(np.array(m.cells)))
    assert m2.points.dtype == np.float64 and m2.cells.dtype == np.int64
    assert m.cell_type == "triangle" and m.dim == 2 and m.cell_dim == 2
    assert not m.points.flags.writeable
    E = m.edges()
    assert np.all(E[:, 0] < E[:, 1])
    # Euler: V - E + F = 1 for a disk
    assert m.n_points - len(E) + m.n_cells == 1


@pytest.mark.parametrize("ext", [".vtu", ".vtk"])
def test_meshio_round_trip(tmp_path, ext):
    rng = seeded_rng()
    m = random_disk_mesh(rng, 30, 60)
    u = rng.normal(size=m.n_points)
    vec = rng.normal(size=(m.n_points, 2))
    cd = rng.normal(size=m.n_cells)
    m = Mesh(m.points, m.cells, point_data={"u": u, "vec": vec}, cell_data={"c": cd})
    path = tmp_path / f"mesh{ext}"
    m.write(path)
    r = Mesh.read(path)
    assert r.dim == 2
    np.testing.assert_array_equal(r.points, m.points)
    np.testing.assert_array_equal(r.cells, m.cells)
    np.testing.assert_array_equal(r.point_data["u"], u)
    # legacy VTK pads 2-vectors to 3 components
    np.testing.assert_array_equal(r.point_data["vec"][:, :2], vec)
    np.testing.assert_array_equal(r.cell_data["c"], cd)


def test_msh_round_trip_keeps_the_data(tmp_path):
    # meshio writes ".msh" as ANSYS (its first format for the extension), which stores no point or cell data: the
    # fields were dropped without a warning; Mesh.write now writes Gmsh 4.1 there
    rng = seeded_rng()
    m = random_disk_mesh(rng, 30, 60)
    u, vec, cd = rng.normal(size=m.n_points), rng.normal(size=(m.n_points, 3)), rng.normal(size=m.n_cells)
    m = Mesh(m.points, m.cells, point_data={"u": u, "vec": vec}, cell_data={"c": cd})
    path = tmp_path / "mesh.msh"
    m.write(path)
    r = Mesh.read(path)
    np.testing.assert_array_equal(r.points, m.points)
    np.testing.assert_array_equal(r.cells, m.cells)
    np.testing.assert_array_equal(r.point_data["u"], u)
    np.testing.assert_array_equal(r.point_data["vec"], vec)
    np.testing.assert_array_equal(r.cell_data["c"], cd)
    assert path.read_bytes().startswith(b"$MeshFormat\n4.1")  # Gmsh 4.1
    m.write(tmp_path / "ansys.msh", file_format="ansys")  # an explicit format is still honoured
    assert not (tmp_path / "ansys.msh").read_bytes().startswith(b"$MeshFormat")


def test_meshio_quads_are_split_into_triangles():
    import meshio

    pts = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0.0]])
    m = Mesh.from_meshio(meshio.Mesh(pts, [("quad", np.array([[0, 1, 2, 3]]))]))
    assert m.cell_type == "triangle" and m.n_cells == 2 and m.dim == 2
    assert m.cell_volumes().sum() == pytest.approx(1.0)


def test_meshio_mixed_triangles_and_quads_keep_every_cell():
    # gmsh's recombined meshes mix triangle and quad blocks: the quads used to be dropped (area 1 of 2) silently
    import meshio

    pts = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [2, 0, 0], [2, 1, 0.0]])
    blocks = [("triangle", np.array([[1, 4, 5], [1, 5, 2]])), ("quad", np.array([[0, 1, 2, 3]])), ("line", [[0, 1]])]
    mm = meshio.Mesh(pts, blocks, cell_data={"c": [np.array([1.0, 2.0]), np.array([3.0]), np.array([9.0])]})
    for ct in (None, "triangle"):
        m = Mesh.from_meshio(mm, cell_type=ct)
        assert m.dim == 2 and m.n_cells == 4
        assert m.cell_volumes().sum() == pytest.approx(2.0)  # the 2 x 1 rectangle
        np.testing.assert_array_equal(m.cell_data["c"], [1.0, 2.0, 3.0, 3.0])  # block order, quad data repeated
        assert len(m.boundary_loops()) == 1 and m.is_valid()


def test_meshio_non_simplex_cells_of_the_top_dimension_are_refused():
    # polygons beside triangles, hexahedra (with their quad faces) used to be dropped silently: a mesh with a hole,
    # or the boundary surface of a hexahedral mesh read as a triangle mesh
    import meshio

    pts = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [2, 0, 0], [2, 1, 0.0]])
    mm = meshio.Mesh(pts, [("triangle", np.array([[1, 4, 5], [1, 5, 2]])), ("polygon", np.array([[0, 1, 2, 3]]))])
    with pytest.raises(ValueError, match=r"'polygon'.*cell_type='triangle'"):
        Mesh.from_meshio(mm)
    assert Mesh.from_meshio(mm, cell_type="triangle").n_cells == 2  # asked for: the triangles only
    cube = np.array([[i & 1, (i >> 1) & 1, (i >> 2) & 1] for i in range(8)], dtype=float)
    hexa = meshio.Mesh(cube, [("hexahedron", [[0, 1, 3, 2, 4, 5, 7, 6]]), ("quad", [[0, 1, 3, 2]])])
    with pytest.raises(ValueError, match=r"'hexahedron'.*convert the mesh to simplices"):
        Mesh.from_meshio(hexa)


# ----------------------------------------------------------------------------------------------------------------
# boundary loops and renumbering
# ----------------------------------------------------------------------------------------------------------------
def test_boundary_loops_disk_and_annulus_orientation():
    rng = seeded_rng()
    m = random_disk_mesh(rng)
    (loop,) = boundary_loops(m)
    assert len(loop) == 40 and shoelace(m.points[loop]) > 0  # counter-clockwise
    # whatever the triangles' vertex order
    (loop_r,) = boundary_loops(Mesh(m.points, m.cells[:, ::-1]))
    assert shoelace(m.points[loop_r]) > 0
    a = annulus_mesh()
    loops = boundary_loops(a)
    assert len(loops) == 2
    areas = sorted(shoelace(a.points[lp]) for lp in loops)
    assert areas[0] < 0 < areas[1]  # hole clockwise, outer counter-clockwise (mesh on the left)
    bf, _, _ = a.boundary_facets()
    assert sum(len(lp) for lp in loops) == len(bf)


def test_boundary_loops_start_node_rotates_its_loop_only():
    a = annulus_mesh()
    loops = boundary_loops(a)
    outer, inner = (loops[0], loops[1]) if len(loops[0]) == 40 else (loops[1], loops[0])
    assert outer[0] == outer.min() and inner[0] == inner.min()  # default: each loop begins at its smallest node
    s = int(inner[5])
    rolled = boundary_loops(a, start=s)
    assert len(rolled) == 2
    k = [i for i, lp in enumerate(loops) if s in lp][0]
    # independent truth: the same cyclic sequence read from position 5
    np.testing.assert_array_equal(rolled[k], np.concatenate([inner[5:], inner[:5]]))
    np.testing.assert_array_equal(rolled[1 - k], loops[1 - k])
    assert rolled[k].dtype == np.int64
    assert shoelace(a.points[rolled[k]]) < 0  # orientation kept (hole clockwise)
    # numpy / torch integer scalars are accepted
    np.testing.assert_array_equal(boundary_loops(a, start=np.int32(s))[k], rolled[k])
    np.testing.assert_array_equal(boundary_loops(a, start=torch.tensor(s))[k], rolled[k])
    # the cached loops are not modified by a rotated request
    np.testing.assert_array_equal(boundary_loops(a)[k], loops[k])
    interior = int(np.setdiff1d(np.arange(a.n_points), np.concatenate(loops))[0])
    with pytest.raises(ValueError, match="not on the boundary"):
        boundary_loops(a, start=interior)
    with pytest.raises(ValueError, match="not a node index"):
        boundary_loops(a, start=a.n_points)
    with pytest.raises(TypeError, match="node index"):
        boundary_loops(a, start=1.0)
    with pytest.raises(TypeError, match="node index"):
        boundary_loops(a, start=True)


def test_renumbering_rule_tolerant_ties_and_orientation():
    # unit square grid: the left side x = 0 has many nodes; perturb one of them by -1e-17
    n = 6
    x, y = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n))
    P = np.c_[x.ravel(), y.ravel()]
    T = triangle.triangulate({"vertices": P}, "")["triangles"]
    P[3 * n, 0] = -1e-17  # node (0, 0.6)
    m = Mesh(P, T)
    perm, nb = renumber_for_parametrization(m)
    assert sorted(perm.tolist()) == list(range(m.n_points)) and nb == 4 * (n - 1)
    loop = perm[-nb:]
    assert loop[0] == 0  # bottom-left corner, not the perturbed node
    assert shoelace(P[loop]) > 0
    # exact-tie rule (the reference's) would start at the perturbed node
    perm0, _ = renumber_for_parametrization(m, rtol=0.0)
    assert perm0[-nb] == 3 * n
    # anchor start
    perm1, _ = renumber_for_parametrization(m, start=np.array([1.0, 1.0]))
    assert perm1[-nb] == n * n - 1


def test_reference_orientation_can_be_clockwise():
    # leftmost node (0, 0) with neighbours at (1, 0.5) and (0.1, 0.2): "towards smaller y" walks clockwise
    V = np.array([[0, 0], [1, 0.5], [1, 3], [0.1, 0.2]], dtype=float)
    S = np.c_[np.arange(4), (np.arange(4) + 1) % 4]
    T = triangle.triangulate({"vertices": V, "segments": S}, "pYqa0.05")
    m = Mesh(T["vertices"], T["triangles"])
    perm_ref, nb = renumber_for_parametrization(m, orientation="reference")
    perm_ccw, _ = renumber_for_parametrization(m)
    assert perm_ref[-nb] == perm_ccw[-nb] == 0
    assert shoelace(m.points[perm_ccw[-nb:]]) > 0
    assert shoelace(m.points[perm_ref[-nb:]]) < 0


def test_renumbering_rejects_several_loops():
    with pytest.raises(ValueError, match="found 2 boundary loops"):
        renumber_for_parametrization(annulus_mesh())


# ----------------------------------------------------------------------------------------------------------------
# mass matrix
# ----------------------------------------------------------------------------------------------------------------
def _exact_product_integral(mesh, f, g):
    """Edge-midpoint rule, exact for quadratics on triangles: |T|/3 * sum over the 3 edge midpoints."""
    V = mesh.points[mesh.cells]
    mids = 0.5 * (V + np.roll(V, -1, axis=1))
    area = mesh.cell_volumes()
    return float(np.sum(area / 3 * (f(mids) * g(mids)).sum(1)))


def test_mass_matrix_integrates_products_of_linear_fields_exactly():
    rng = seeded_rng()
    m = random_disk_mesh(rng, 30, 100)
    a, b = rng.normal(size=3), rng.normal(size=3)

    def f(X):
        return a[0] + a[1] * X[..., 0] + a[2] * X[..., 1]

    def g(X):
        return b[0] + b[1] * X[..., 0] + b[2] * X[..., 1]

    M = mass_matrix(m)
    assert sp.issparse(M) and M.shape == (m.n_points, m.n_points)
    assert abs(M - M.T).max() == 0
    u, v = f(m.points), g(m.points)
    assert u @ (M @ v) == pytest.approx(_exact_product_integral(m, f, g), rel=1e-12, abs=1e-12)
    assert M.sum() == pytest.approx(m.cell_volumes().sum(), rel=1e-13)
    assert M.sum() == pytest.approx(shoelace(m.points[boundary_loops(m)[0]]), rel=1e-12)
    # vector layouts
    Mi = mass_matrix(m, 2, "interleaved")
    Mb = mass_matrix(m, 2, layout="blocked")
    W = np.c_[u, v]
    assert W.ravel() @ (Mi @ W.ravel()) == pytest.approx(u @ M @ u + v @ M @ v, rel=1e-12)
    assert W.T.ravel() @ (Mb @ W.T.ravel()) == pytest.approx(u @ M @ u + v @ M @ v, rel=1e-12)


def test_mass_matrix_other_dimensions():
    # segment [0, 2]: int x^2 = 8/3
    P = np.linspace(0, 2, 7)[:, None]
    m = Mesh(P, np.c_[np.arange(6), np.arange(1, 7)])
    x = P[:, 0]
    assert x @ mass_matrix(m) @ x == pytest.approx(8 / 3, rel=1e-13)
    # unit tetrahedron: int x = 1/24, volume 1/6
    t = Mesh(np.r_[np.zeros((1, 3)), np.eye(3)], np.array([[0, 1, 2, 3]]))
    M = mass_matrix(t)
    assert M.sum() == pytest.approx(1 / 6)
    assert np.ones(4) @ M @ t.points[:, 0] == pytest.approx(1 / 24)


# ----------------------------------------------------------------------------------------------------------------
# P1 transfer
# ----------------------------------------------------------------------------------------------------------------
def test_p1_transfer_reproduces_linear_fields_inside():
    rng = seeded_rng()
    m = random_disk_mesh(rng, 50, 300)
    q = np.r_[random_points_in_cells(rng, m, 2000), m.points]  # interior points and the nodes themselves
    T = p1_transfer(m, q)
    assert T.shape == (len(q), m.n_points) and T.format == "csr"
    np.testing.assert_allclose(np.asarray(T.sum(1)).ravel(), 1.0, atol=1e-13)
    for _ in range(3):
        c = rng.normal(size=3)
        u = c[0] + m.points @ c[1:]
        np.testing.assert_allclose(T @ u, c[0] + q @ c[1:], atol=1e-12, rtol=0)
    # nodes map to themselves
    Tn = p1_transfer(m, m.points)
    np.testing.assert_allclose(Tn.toarray(), np.eye(m.n_points), atol=1e-12)
    cell, bary = m.locate(q[:10])
    assert (cell >= 0).all() and np.allclose(bary.sum(1), 1)


def test_p1_transfer_on_a_second_mesh_of_the_same_domain():
    # targets are the nodes of another mesh of the annulus (holes included, boundary nodes on the polygons)
    src, tgt = annulus_mesh(60, 30, 0.004), annulus_mesh(60, 30, 0.01)
    T = p1_transfer(src, tgt.points)
    c = np.array([0.3, -1.2, 2.0])
    np.testing.assert_allclose(T @ (c[0] + src.points @ c[1:]), c[0] + tgt.points @ c[1:], atol=1e-12)


def _closest_boundary_point(mesh, q):
    bf, _, _ = mesh.boundary_facets()
    a, b = mesh.points[bf[:, 0]], mesh.points[bf[:, 1]]
    out = []
    for p in q:
        t = np.clip(((p - a) * (b - a)).sum(1) / ((b - a) ** 2).sum(1), 0, 1)
        c = a + t[:, None] * (b - a)
        out.append(c[np.argmin(((c - p) ** 2).sum(1))])
    return np.array(out)


def test_p1_transfer_clamps_outside_points_to_closest_boundary_point():
    rng = seeded_rng()
    m = random_disk_mesh(rng, 40, 100)
    ang = rng.uniform(0, 2 * np.pi, 300)
    q = rng.uniform(1.25, 3.0, (300, 1)) * np.c_[np.cos(ang), np.sin(ang)]  # all outside (radius <= 1.2)
    cell, _ = m.locate(q)
    assert (cell < 0).all()
    T = p1_transfer(m, q)
    np.testing.assert_allclose(np.asarray(T.sum(1)).ravel(), 1.0, atol=1e-13)
    c = rng.normal(size=3)
    proj = _closest_boundary_point(m, q)
    np.testing.assert_allclose(T @ (c[0] + m.points @ c[1:]), c[0] + proj @ c[1:], atol=1e-12)
    # the other policies
    assert p1_transfer(m, q, outside="zero").nnz == 0
    with pytest.raises(ValueError, match="300 of 300 target point"):
        p1_transfer(m, q, outside="raise")


def test_p1_transfer_1d_and_3d():
    P = np.sort(np.r_[0.0, 1.0, np.random.default_rng(1).uniform(0, 1, 8)])[:, None]
    m = Mesh(P, np.c_[np.arange(9), np.arange(1, 10)])
    q = np.array([[-0.5], [0.3], [0.77], [1.5]])
    np.testing.assert_allclose(p1_transfer(m, q) @ (2 + 3 * P[:, 0]), [2, 2.9, 4.31, 5], atol=1e-12)
    # cube split into 6 tetrahedra (Kuhn triangulation)
    V = np.array([[i & 1, (i >> 1) & 1, (i >> 2) & 1] for i in range(8)], dtype=float)
    tets = np.array([[0, 1, 3, 7], [0, 1, 5, 7], [0, 2, 3, 7], [0, 2, 6, 7], [0, 4, 5, 7], [0, 4, 6, 7]])
    cube = Mesh(V, tets)
    q = np.random.default_rng(2).uniform(0, 1, (200, 3))
    c = np.array([1.0, 2.0, -3.0, 0.5])
    np.testing.assert_allclose(p1_transfer(cube, q) @ (c[0] + V @ c[1:]), c[0] + q @ c[1:], atol=1e-12)


@pytest.mark.parametrize("offset", [1e6, 1e8])
def test_p1_transfer_is_translation_invariant_far_from_the_origin(offset):
    # meshes in map coordinates (UTM, ~1e6 m): the barycentric coordinates used to be evaluated as c + A x, which
    # cancels like |x| / h; at an offset of 1e6 the nodes and edge midpoints of the mesh fell outside every cell
    # (smallest coordinate ~ -1e-9 < -tol) and were clamped to the far boundary, off by 1.4 for a linear field
    rng = seeded_rng()
    m = random_disk_mesh(rng, 30, 80)
    E = m.edges()
    shift = np.array([offset, -0.5 * offset])
    ms = Mesh(m.points + shift, m.cells)
    # nodes and edge midpoints (interior edges included) computed in the shifted coordinates, and interior points
    q = np.r_[ms.points, 0.5 * (ms.points[E[:, 0]] + ms.points[E[:, 1]]), random_points_in_cells(rng, ms, 200)]
    cell, _ = ms.locate(q)
    assert (cell >= 0).all()
    c = np.array([0.7, 3.0, -5.0])
    u = interpolate(ms, c[0] + m.points @ c[1:], q)
    # independent truth: the linear field at the query points (to the rounding of the shifted coordinates)
    np.testing.assert_allclose(u, c[0] + (q - shift) @ c[1:], atol=1e3 * np.finfo(float).eps * offset, rtol=0)
    # and the rows are partitions of unity
    np.testing.assert_allclose(np.asarray(p1_transfer(ms, q).sum(1)).ravel(), 1.0, atol=1e-12)


def test_p1_transfer_tetrahedra_far_from_the_origin():
    V = np.array([[i & 1, (i >> 1) & 1, (i >> 2) & 1] for i in range(8)], dtype=float)
    tets = np.array([[0, 1, 3, 7], [0, 1, 5, 7], [0, 2, 3, 7], [0, 2, 6, 7], [0, 4, 5, 7], [0, 4, 6, 7]])
    shift = np.array([3e6, 1e6, -2e6])
    cube = Mesh(V + shift, tets)
    # the midpoints of all the tetrahedra's edges and faces (the inner diagonal faces included), shifted
    pairs = cube.points[tets][:, [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]].mean(axis=2).reshape(-1, 3)
    faces = cube.points[tets][:, [[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]]].mean(axis=2).reshape(-1, 3)
    q = np.r_[cube.points, pairs, faces]
    assert (cube.locate(q)[0] >= 0).all()
    c = np.array([1.0, 2.0, -3.0, 0.5])
    np.testing.assert_allclose(
        interpolate(cube, c[0] + V @ c[1:], q), c[0] + (q - shift) @ c[1:], atol=1e3 * np.finfo(float).eps * 3e6
    )


@pytest.mark.parametrize("offset", [0.0, 1e3, 1e6])
def test_p1_transfer_of_nodes_and_facets_has_no_rounding_weights(offset):
    # a node of the source mesh is its own cell vertex: its row is exactly e_i (it held 1e-16 weights on the other
    # vertices of the cell it was located in, so a field that is exactly 0 at a clamped node became 1e-19 and its
    # variance roundoff); an edge midpoint has exactly 0 weight on the opposite vertex
    rng = seeded_rng()
    m = random_disk_mesh(rng, 30, 80)
    ms = Mesh(m.points + np.array([offset, -0.5 * offset]), m.cells)
    T = p1_transfer(ms, ms.points)
    assert (T != sp.identity(ms.n_points, format="csr")).nnz == 0
    E = m.edges()
    mid = 0.5 * (ms.points[E[:, 0]] + ms.points[E[:, 1]])
    Tm = p1_transfer(ms, mid).tocoo()
    assert set(zip(Tm.row.tolist(), Tm.col.tolist())) <= {(r, int(a)) for r, e in enumerate(E) for a in e}
    # a field that vanishes at both ends of every edge it is asked on vanishes exactly in between
    u = rng.normal(size=ms.n_points)
    zero = np.zeros(ms.n_points, dtype=bool)
    zero[E[::7].ravel()] = True
    u[zero] = 0.0
    assert (interpolate(ms, u, mid[::7]) == 0.0).all()
    # still a partition of unity reproducing linear fields (to the rounding of the shifted midpoints)
    c = np.array([0.7, 3.0, -5.0])
    np.testing.assert_allclose(
        interpolate(ms, c[0] + m.points @ c[1:], mid), c[0] + (mid - ms.points[:1] + m.points[:1]) @ c[1:],
        atol=1e3 * np.finfo(float).eps * max(offset, 1.0), rtol=0,
    )  # fmt: skip


def test_p1_transfer_of_tetrahedra_vertices_is_the_identity():
    V = np.array([[i & 1, (i >> 1) & 1, (i >> 2) & 1] for i in range(8)], dtype=float)
    tets = np.array([[0, 1, 3, 7], [0, 1, 5, 7], [0, 2, 3, 7], [0, 2, 6, 7], [0, 4, 5, 7], [0, 4, 6, 7]])
    rng = seeded_rng()
    A = np.eye(3) + 0.3 * rng.normal(size=(3, 3))  # a sheared, rotated cube: vertex coordinates far from round
    cube = Mesh(V @ A.T + rng.normal(size=3), tets)
    assert (p1_transfer(cube, cube.points) != sp.identity(8, format="csr")).nnz == 0


# ----------------------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------------------
def test_bad_input_gives_clear_errors():
    rng = seeded_rng()
    m = random_disk_mesh(rng, 20, 30)
    q = random_points_in_cells(rng, m, 5)
    with pytest.raises(ValueError, match=rf"one row per source node \({m.n_points}\)"):
        interpolate(m, np.zeros(m.n_points + 1), q)
    bad = np.zeros(m.n_points)
    bad[3] = np.nan
    with pytest.raises(ValueError, match="`field` contains 1 NaN"):
        interpolate(m, bad, q)
    with pytest.raises(ValueError, match="`target_points` contains 1 NaN"):
        p1_transfer(m, np.r_[q, [[np.nan, 0.0]]])
    with pytest.raises(ValueError, match="Unknown `outside`='nearest'"):
        p1_transfer(m, q, outside="nearest")
    with pytest.raises(ValueError, match="Unknown `layout`='rowmajor'"):
        mass_matrix(m, 2, layout="rowmajor")
    with pytest.raises(ValueError, match="Unknown `orientation`='clockwise'"):
        renumber_for_parametrization(m, orientation="clockwise")
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        Mesh(np.zeros((3, 2)), [[0, 1, 3]])
    with pytest.raises(ValueError, match="repeats a vertex"):
        Mesh(np.eye(3)[:, :2], [[0, 1, 1]])
    with pytest.raises(ValueError, match=rf"point_data\['u'\]` must have {m.n_points} rows"):
        Mesh(m.points, m.cells, point_data={"u": np.zeros(2)})
    with pytest.raises(TypeError, match="integer indices"):
        Mesh(m.points, m.cells + 0.5)
    with pytest.raises(ValueError, match="shape"):
        p1_transfer(m, np.zeros((4, 3)))
    # Mesh.locate took any tol: NaN or negative put every point outside (cell -1) without a word
    for tol in (float("nan"), -1e-3):
        with pytest.raises(ValueError, match=r"`tol` must be >= 0, got"):
            m.locate(q, tol=tol)
    with pytest.raises(TypeError, match="`tol` must be a number"):
        m.locate(q, tol=None)
    np.testing.assert_allclose(interpolate(m, m.points[:, 0], q), q[:, 0], atol=1e-12)


def test_non_manifold_edge_is_rejected():
    P = np.array([[0, 0], [1, 0], [0.5, 1], [0.5, -1], [0.7, 0.4]], dtype=float)
    m = Mesh(P, [[0, 1, 2], [0, 3, 1], [0, 1, 4]])
    with pytest.raises(ValueError, match="non-manifold edge"):
        boundary_loops(m)


def test_pickle_round_trip_ships_32_bit_cells_and_restores_the_mesh():
    import pickle

    mesh = annulus_mesh()
    mesh.point_data["u"] = np.arange(mesh.n_points, dtype=float)
    mesh.boundary_loops()  # a filled cache travels and stays valid
    blob = pickle.dumps(mesh, protocol=5)
    back = pickle.loads(blob)
    assert back.cells.dtype == np.int64 and np.array_equal(back.cells, mesh.cells)
    assert np.array_equal(back.points, mesh.points) and np.array_equal(back.point_data["u"], mesh.point_data["u"])
    assert not back.points.flags.writeable and not back.cells.flags.writeable
    assert all(np.array_equal(a, b) for a, b in zip(back.boundary_loops(), mesh.boundary_loops()))
    # the cells travel as int32: the pickle is smaller than that of the same arrays with int64 cells by about
    # half the cells' bytes
    plain = pickle.dumps((mesh.points, mesh.cells, mesh.point_data, mesh._cache), protocol=5)
    assert len(plain) - len(blob) > 0.9 * mesh.cells.nbytes / 2


def test_cached_topology_cannot_be_changed_through_what_it_returns():
    # edges, boundary facets and defects were the mesh's cached arrays, writable: ``e[:] = 0`` on a returned array
    # changed what every later call (the morphing's graph, the boundary loops) got
    mesh = annulus_mesh()
    fresh = Mesh(mesh.points, mesh.cells)
    edges, (bf, cell, opp), defects = mesh.edges(), mesh.boundary_facets(), mesh.defects()
    for arr in (edges, bf, cell, opp, *defects.values()):
        with pytest.raises(ValueError, match="read-only"):
            arr[...] = 0
    defects["coincident_nodes"] = np.array([[0, 1]])  # the caller's dict, not the cache's
    assert np.array_equal(mesh.edges(), fresh.edges())
    assert all(np.array_equal(a, b) for a, b in zip(mesh.boundary_facets(), fresh.boundary_facets(), strict=True))
    assert mesh.is_valid() and not len(mesh.defects()["coincident_nodes"])
    assert [lp.tolist() for lp in mesh.boundary_loops()] == [lp.tolist() for lp in fresh.boundary_loops()]

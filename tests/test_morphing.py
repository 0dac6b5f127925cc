import numpy as np
import pytest
import scipy.sparse as sp
import torch
import triangle
from mesh_factories import random_disk_mesh, seeded_rng

from gpgeom.geometry.boundary import boundary_loops, renumber_for_parametrization
from gpgeom.geometry.mesh import Mesh
from gpgeom.geometry.morphing import RBFMorphing, floater_disk, rbf_morph, wendland_c2
from gpgeom.geometry.transfer import p1_transfer


def perturbed_grid_mesh(rng, nx, ny, amp=0.3):
    """Structured grid of [0, 2] x [0, 1], interior nodes moved randomly, cells split along random diagonals."""
    x, y = np.meshgrid(np.linspace(0, 2, nx), np.linspace(0, 1, ny))
    P = np.c_[x.ravel(), y.ravel()]
    hx, hy = 2 / (nx - 1), 1 / (ny - 1)
    inner = (P[:, 0] > 0) & (P[:, 0] < 2) & (P[:, 1] > 0) & (P[:, 1] < 1)
    P[inner] += amp * rng.uniform(-0.5, 0.5, (inner.sum(), 2)) * [hx, hy]
    i, j = np.meshgrid(np.arange(nx - 1), np.arange(ny - 1))
    a = (j * nx + i).ravel()
    b, c, d = a + 1, a + nx + 1, a + nx
    flip = rng.uniform(size=a.size) < 0.5
    t1 = np.where(flip[:, None], np.c_[a, b, c], np.c_[a, b, d])
    t2 = np.where(flip[:, None], np.c_[a, c, d], np.c_[b, c, d])
    return Mesh(P, np.r_[t1, t2])


def notched_plate_mesh(rng, h):
    """The NotchedPlate2d geometry of the spec: [0, 1] x [0, 2] with two random notches, `triangle` pq30."""
    ys = np.linspace(0.4, 1.6, 41)[1:-1]
    t = (ys - 0.4) / 1.2
    dl = rng.uniform(0.05, 0.3) * np.sin(np.pi * t)
    dr = rng.uniform(0.05, 0.3) * np.sin(np.pi * t)
    poly = np.r_[
        [[0, 0], [1, 0], [1, 0.4]],
        np.c_[1 - dr, ys],
        [[1, 1.6], [1, 2], [0, 2], [0, 1.6]],
        np.c_[dl, ys][::-1],
        [[0, 0.4]],
    ]
    pts = []
    for p, q in zip(poly, np.roll(poly, -1, axis=0)):
        m = max(1, int(np.ceil(np.linalg.norm(q - p) / h)))
        pts.append(p + np.outer(np.arange(m) / m, q - p))
    V = np.concatenate(pts)
    S = np.c_[np.arange(len(V)), (np.arange(len(V)) + 1) % len(V)]
    T = triangle.triangulate({"vertices": V, "segments": S}, f"pq30a{h * h / 2:.12f}")
    return Mesh(T["vertices"], T["triangles"])


def signed_areas(P, cells):
    a, b, c = P[cells[:, 0]], P[cells[:, 1]], P[cells[:, 2]]
    return 0.5 * ((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))


def check_floater(mesh, uv):
    perm, nb = renumber_for_parametrization(mesh)
    loop, interior = perm[-nb:], perm[:-nb]
    # boundary on the unit circle, in loop order, starting at angle 0
    np.testing.assert_allclose(np.hypot(uv[loop, 0], uv[loop, 1]), 1.0, atol=1e-14)
    np.testing.assert_allclose(uv[loop[0]], [1.0, 0.0], atol=1e-15)
    theta = np.unwrap(np.arctan2(uv[loop, 1], uv[loop, 0]))
    assert np.all(np.diff(theta) > 0) and theta[-1] < 2 * np.pi
    # interior: mean of the neighbours
    E = mesh.edges()
    A = sp.coo_matrix((np.ones(2 * len(E)), (np.r_[E[:, 0], E[:, 1]], np.r_[E[:, 1], E[:, 0]]))).tocsr()
    deg = np.asarray(A.sum(1)).ravel()
    mean_nb = (A @ uv) / deg[:, None]
    assert np.abs(uv[interior] - mean_nb[interior]).max() < 1e-12
    # bijection: no triangle flips and the images tile the inscribed polygon exactly once
    s0, s1 = signed_areas(mesh.points, mesh.cells), signed_areas(uv, mesh.cells)
    assert np.all(np.sign(s1) == np.sign(s0)) and np.all(np.abs(s1) > 0)
    B = uv[loop]
    poly_area = 0.5 * np.sum(B[:, 0] * np.roll(B[:, 1], -1) - np.roll(B[:, 0], -1) * B[:, 1])
    assert np.abs(s1).sum() == pytest.approx(poly_area, rel=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# Floater
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("nb, ni", [(12, 5), (40, 150), (90, 800)])
def test_floater_random_delaunay_meshes(nb, ni):
    rng = seeded_rng()
    mesh = random_disk_mesh(rng, nb, ni)
    uv = floater_disk(mesh)
    assert uv.shape == (mesh.n_points, 2) and uv.dtype == np.float64
    check_floater(mesh, uv)


@pytest.mark.parametrize("nx, ny", [(5, 4), (23, 11), (60, 31)])
def test_floater_perturbed_grids(nx, ny):
    rng = seeded_rng()
    mesh = perturbed_grid_mesh(rng, nx, ny)
    check_floater(mesh, floater_disk(mesh))
    # clockwise triangles: the map keeps their (negative) orientation
    rev = Mesh(mesh.points, mesh.cells[:, ::-1])
    check_floater(rev, floater_disk(rev))


def test_floater_boundary_parametrisations():
    rng = seeded_rng()
    mesh = random_disk_mesh(rng, 30, 80)
    perm, nb = renumber_for_parametrization(mesh)
    loop = perm[-nb:]
    B = mesh.points[loop]
    seg = np.linalg.norm(np.roll(B, -1, 0) - B, axis=1)
    for angles, expect in [
        ("arclength", 2 * np.pi * np.r_[0, np.cumsum(seg[:-1])] / seg.sum()),
        ("reference", 2 * np.pi * (1 - 1 / nb) * np.r_[0, np.cumsum(seg[:-1])] / seg[:-1].sum()),
        ("uniform", 2 * np.pi * np.arange(nb) / nb),
    ]:
        uv = floater_disk(mesh, angles=angles)
        theta = np.mod(np.arctan2(uv[loop, 1], uv[loop, 0]), 2 * np.pi)
        theta[0] = 0.0
        np.testing.assert_allclose(theta, expect, atol=1e-13)
        check_floater(mesh, uv)


def test_floater_reference_orientation_mirrors_some_meshes():
    V = np.array([[0, 0], [1, 0.5], [1, 3], [0.1, 0.2]], dtype=float)
    S = np.c_[np.arange(4), (np.arange(4) + 1) % 4]
    T = triangle.triangulate({"vertices": V, "segments": S}, "pYqa0.02")
    mesh = Mesh(T["vertices"], T["triangles"])
    s_ref = signed_areas(floater_disk(mesh, orientation="reference"), mesh.cells)
    s_ccw = signed_areas(floater_disk(mesh), mesh.cells)
    assert np.all(s_ccw > 0) and np.all(s_ref < 0)  # the reference rule flips every triangle here


def test_floater_surface_in_3d():
    rng = seeded_rng()
    flat = random_disk_mesh(rng, 30, 100)
    P = flat.points
    surf = Mesh(np.c_[P, P[:, 0] ** 2 - 0.5 * P[:, 1] ** 2], flat.cells)  # saddle surface
    uv = floater_disk(surf)
    # same combinatorics and boundary order as the flat mesh; chord lengths differ, so only topology checks
    assert np.all(signed_areas(uv, surf.cells) > 0)
    np.testing.assert_allclose(np.hypot(*uv[boundary_loops(surf)[0]].T), 1.0, atol=1e-14)


def test_floater_on_a_2d_mesh_given_with_a_zero_z_column_matches_2d():
    # a clockwise-listed 2D mesh padded with z = 0 (as meshio writes it) was oriented by its vertex order, like a
    # surface: its boundary loop ran clockwise and its Floater map was the mirror image of the same mesh's in 2D
    m = random_disk_mesh(seeded_rng(), 30, 80)
    for cells in (m.cells, m.cells[:, ::-1]):
        flat = Mesh(m.points, cells)
        padded = Mesh(np.c_[m.points, np.zeros(m.n_points)], cells)
        np.testing.assert_array_equal(boundary_loops(padded)[0], boundary_loops(flat)[0])
        np.testing.assert_allclose(floater_disk(padded), floater_disk(flat), atol=1e-14)
    with pytest.raises(ValueError, match=r"beyond the first 2 are all zero: build it from points\[:, :2\]"):
        p1_transfer(Mesh(np.c_[m.points, np.zeros(m.n_points)], m.cells), np.zeros((1, 3)))


def test_floater_rejects_meshes_that_are_not_disks():
    rng = seeded_rng()
    # annulus: two boundary loops
    a = 2 * np.pi * np.arange(40) / 40
    V = np.r_[np.c_[np.cos(a), np.sin(a)], 0.4 * np.c_[np.cos(a[::2]), np.sin(a[::2])]]
    S = np.r_[np.c_[np.arange(40), (np.arange(40) + 1) % 40], 40 + np.c_[np.arange(20), (np.arange(20) + 1) % 20]]
    T = triangle.triangulate({"vertices": V, "segments": S, "holes": [[0.0, 0.0]]}, "pqa0.01")
    with pytest.raises(ValueError, match="exactly one loop; found 2 boundary loops"):
        floater_disk(Mesh(T["vertices"], T["triangles"]))
    # non-manifold edge
    P = np.array([[0, 0], [1, 0], [0.5, 1], [0.5, -1], [0.7, 0.4]], dtype=float)
    with pytest.raises(ValueError, match="non-manifold edge"):
        floater_disk(Mesh(P, [[0, 1, 2], [0, 3, 1], [0, 1, 4]]))
    # a node in no triangle
    m = random_disk_mesh(rng, 12, 5)
    with pytest.raises(ValueError, match="belong to no triangle"):
        floater_disk(Mesh(np.r_[m.points, [[5.0, 5.0]]], m.cells))
    # two disjoint disks: two loops
    m2 = Mesh(np.r_[m.points, m.points + 3], np.r_[m.cells, m.cells + m.n_points])
    with pytest.raises(ValueError, match="found 2 boundary loops"):
        floater_disk(m2)
    # closed surface (tetrahedron boundary): no loop
    tet = Mesh(np.r_[np.zeros((1, 3)), np.eye(3)], [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    with pytest.raises(ValueError, match="found 0 boundary loops"):
        floater_disk(tet)
    # unknown options
    with pytest.raises(ValueError, match="Unknown `angles`='chord'"):
        floater_disk(m, angles="chord")
    with pytest.raises(ValueError, match="Unknown `start`='max_x'"):
        floater_disk(m, start="max_x")
    with pytest.raises(TypeError, match="unexpected keyword"):
        floater_disk(m, boundary="circle")


def test_floater_plus_transfers_consistency_between_two_plates():
    rng = seeded_rng()
    a, b = notched_plate_mesh(rng, 0.06), notched_plate_mesh(rng, 0.05)
    ma, mb = a.with_points(floater_disk(a)), b.with_points(floater_disk(b))
    Tab = p1_transfer(ma, mb.points)  # a -> nodes of b
    # disk coordinates are carried exactly by the transfer (a linear field on the disk) up to clamping on the circle
    err = np.abs(Tab @ ma.points - mb.points).max()
    assert err < 0.05
    inner = np.hypot(*mb.points.T) < 0.9
    np.testing.assert_allclose((Tab @ ma.points)[inner], mb.points[inner], atol=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# the MMGP-sized case: Floater and both transfers on ~2,600-node plates (times: benchmarks/mmgp.py, "morph + 2
# transfers", in benchmarks/results/mmgp.md)
# ----------------------------------------------------------------------------------------------------------------
def test_floater_and_transfers_on_2600_node_plates():
    rng = np.random.default_rng(0)
    sample = notched_plate_mesh(rng, 0.0335)
    common = notched_plate_mesh(rng, 0.0335)
    assert sample.n_points > 2000 and common.n_points > 2000
    uv, common_uv = floater_disk(sample), floater_disk(common)
    for mesh, disk in ((sample, uv), (common, common_uv)):
        loop = boundary_loops(mesh)[0]
        np.testing.assert_allclose(np.hypot(*disk[loop].T), 1.0, rtol=0, atol=1e-12)
        inner = np.setdiff1d(np.arange(mesh.n_points), loop)
        assert np.hypot(*disk[inner].T).max() < 1.0
        s0, s1 = mesh.cell_volumes(signed=True), Mesh(disk, mesh.cells).cell_volumes(signed=True)
        assert (np.sign(s0) == np.sign(s1)).all()  # no flipped triangle
        B = disk[loop]
        polygon = 0.5 * abs(np.sum(B[:, 0] * np.roll(B[:, 1], -1) - np.roll(B[:, 0], -1) * B[:, 1]))
        np.testing.assert_allclose(np.abs(s1).sum(), polygon, rtol=1e-10)  # the image tiles the polygon
    common_disk = Mesh(common_uv, common.cells)
    to_sample = p1_transfer(common_disk, uv)  # common mesh -> sample nodes
    to_common = p1_transfer(Mesh(uv, sample.cells), common_uv)  # sample -> common nodes
    assert to_sample.shape == (sample.n_points, common.n_points)
    assert to_common.shape == (common.n_points, sample.n_points)
    # a cached locator (the common mesh reused) gives the same operator as a fresh one
    assert (p1_transfer(Mesh(common_uv, common.cells), uv) != to_sample).nnz == 0
    assert (p1_transfer(common_disk, uv) != to_sample).nnz == 0
    for T, src, dst in ((to_sample, common_uv, uv), (to_common, uv, common_uv)):
        np.testing.assert_allclose(np.asarray(T.sum(1)).ravel(), 1.0, rtol=0, atol=1e-12)
        assert T.data.min() >= -1e-10
        # linear fields on the disk are carried exactly inside the source polygon (clamped beyond: sagitta)
        f_src, f_dst = 0.3 + src @ [1.0, -2.0], 0.3 + dst @ [1.0, -2.0]
        inside = np.hypot(*dst.T) < 0.99
        np.testing.assert_allclose((T @ f_src)[inside], f_dst[inside], rtol=0, atol=1e-11)
        assert np.abs(T @ f_src - f_dst).max() < 3.0 * (1.0 - np.cos(np.pi / 20))


# ----------------------------------------------------------------------------------------------------------------
# RBF
# ----------------------------------------------------------------------------------------------------------------
def test_wendland_c2_profile():
    r = np.array([0.0, 0.5, 1.0, 2.0])
    np.testing.assert_allclose(wendland_c2(r, 1.0), [1.0, 0.5**4 * 3, 0.0, 0.0])


@pytest.mark.parametrize("affine", [True, False])
def test_rbf_interpolates_control_points(affine):
    rng = seeded_rng()
    src = rng.uniform(-1, 1, (60, 2))
    tgt = src + 0.1 * rng.normal(size=src.shape)
    morph = RBFMorphing(src, tgt, affine=affine)
    np.testing.assert_allclose(morph(src), tgt, atol=1e-10)
    assert morph.radius == pytest.approx(0.5 * np.linalg.norm(np.ptp(src, axis=0)))
    x = rng.uniform(-1, 1, (500, 2))
    np.testing.assert_allclose(rbf_morph(x, src, tgt, affine=affine), morph(x))
    np.testing.assert_allclose(morph(torch.as_tensor(x)), morph(x))


def test_rbf_affine_part_reproduces_affine_motions_everywhere():
    rng = seeded_rng()
    src = rng.uniform(-1, 1, (40, 3))
    A = np.eye(3) + 0.3 * rng.normal(size=(3, 3))
    t = rng.normal(size=3)
    morph = RBFMorphing(src, src @ A.T + t, radius=0.7)
    x = rng.uniform(-3, 3, (300, 3))
    np.testing.assert_allclose(morph(x), x @ A.T + t, atol=1e-10)


def test_rbf_morphs_a_mesh_without_flips():
    rng = seeded_rng()
    mesh = perturbed_grid_mesh(rng, 21, 11)
    (loop,) = boundary_loops(mesh)
    B = mesh.points[loop]
    tgt = B + 0.05 * np.c_[np.sin(3 * B[:, 1]), np.cos(2 * B[:, 0])]
    new = mesh.with_points(rbf_morph(mesh.points, B, tgt))
    np.testing.assert_allclose(new.points[loop], tgt, atol=1e-10)
    assert np.all(signed_areas(new.points, new.cells) > 0)


def test_rbf_bad_input():
    src = np.random.default_rng(0).uniform(size=(10, 2))
    with pytest.raises(ValueError, match="shape of `source`"):
        RBFMorphing(src, src[:-1])
    with pytest.raises(ValueError, match="coincident control points"):
        RBFMorphing(np.r_[src, src[:1]], np.r_[src, src[:1]])
    with pytest.raises(ValueError, match="`target` contains 1 NaN"):
        tgt = src.copy()
        tgt[2, 1] = np.nan
        RBFMorphing(src, tgt)
    with pytest.raises(ValueError, match="`radius` must be > 0"):
        RBFMorphing(src, src, radius=-1.0)
    with pytest.raises(ValueError, match="trailing shape"):
        RBFMorphing(src, src)(np.zeros((3, 3)))


@pytest.mark.parametrize("affine", [True, False])
def test_rbf_refuses_nearly_coincident_control_points_with_different_displacements(affine):
    # two control points 1e-9 apart with displacements differing by 0.01: Cholesky succeeds, but the solve missed
    # the control displacements by 0.006 (60 % of them) and moved other points by 2e3; now a ValueError names them
    rng = np.random.default_rng(0)
    src = rng.random((20, 2))
    src2 = np.r_[src, src[:1] + 1e-9]
    tgt = src2 + 0.01
    tgt[-1] += 0.01
    with pytest.raises(
        ValueError,
        match=r"ill-conditioned.*Control points 0 and 20 are 1.41e-09 apart.*\(0.01, 0.01\) and \(0.02, 0.02\)",
    ):
        RBFMorphing(src2, tgt, affine=affine)
    # the same points moved consistently (a translation) stay accepted and are reproduced
    f = RBFMorphing(src2, src2 + 0.01, affine=affine)
    np.testing.assert_allclose(f(src2), src2 + 0.01, atol=1e-8)


@pytest.mark.parametrize("tilted", [False, True])
def test_rbf_affine_part_on_flat_control_points(tilted):
    # 8 control points on a plane in R^3 (axis-aligned or tilted): the affine part lives on the plane. It used to
    # raise "lie in a hyperplane" for the axis-aligned plane and, for the tilted one, return a rounding-dependent
    # map: a translation by 0.1 moved points off the plane by 0.09 to 0.25
    rng = np.random.default_rng(0)
    rot = np.linalg.qr(rng.standard_normal((3, 3)))[0] if tilted else np.eye(3)
    src = np.c_[rng.random((8, 2)), np.full(8, 0.3)] @ rot.T
    x = rng.uniform(-1, 1, (20, 3))
    shift = np.array([0.0, 0.0, 0.1])
    np.testing.assert_allclose(RBFMorphing(src, src + shift)(x), x + shift, atol=1e-12)
    # an affine motion of the plane is reproduced on the plane, and constant along its normal
    A = np.eye(3) + 0.2 * rng.normal(size=(3, 3))
    morph = RBFMorphing(src, src @ A.T + shift)
    on_plane = np.c_[rng.uniform(-1, 2, (20, 2)), np.full(20, 0.3)] @ rot.T
    np.testing.assert_allclose(morph(on_plane), on_plane @ A.T + shift, atol=1e-10)
    normal = rot[:, 2]
    np.testing.assert_allclose(morph.displacement(on_plane + 0.7 * normal), morph.displacement(on_plane), atol=1e-10)


def test_rbf_affine_with_one_control_point_or_a_line_of_them():
    # one control point: a translation of the whole plane (it used to raise "needs at least d + 1 = 3 control
    # points"); collinear points: the affine motion along the line
    x = np.random.default_rng(1).uniform(-2, 2, (10, 2))
    np.testing.assert_allclose(rbf_morph(x, [[0.5, 0.5]], [[0.6, 0.3]]), x + [0.1, -0.2], atol=1e-14)
    line = np.c_[np.linspace(0, 1, 5), np.zeros(5)]
    stretched = rbf_morph(x, line, 2 * line)  # x -> (2 x_1, x_2)
    np.testing.assert_allclose(stretched, x * [2.0, 1.0], atol=1e-10)

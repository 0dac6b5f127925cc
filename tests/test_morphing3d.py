r"""3D geometry for MMGP: closest points on triangles, P1 transfer with clamping on tetrahedra, the tetrahedral mass
matrix, Floater on a 3D surface patch, RBF volume and surface morphing onto a template, and their errors."""

from __future__ import annotations

import numpy as np
import pytest

from gpgeom.datasets.bracket3d import EXTENT, BracketMap, bracket_geometry, random_map, structured_tetra
from gpgeom.geometry.closest import closest_on_surface, closest_on_triangles, surface_transfer
from gpgeom.geometry.fem import mass_matrix
from gpgeom.geometry.mesh import Mesh
from gpgeom.geometry.morphing import floater_disk
from gpgeom.geometry.morphing3d import (
    affine_align,
    boundary_surface,
    inverted_cells,
    morph_surface,
    morph_volume,
    surface_patches,
)
from gpgeom.geometry.transfer import p1_transfer


def _grid_surface(n: int, height) -> Mesh:
    r"""A triangulated graph surface z = height(x, y) over [0, 1]^2 (disk topology), ``(n+1)^2`` nodes."""
    t = np.linspace(0.0, 1.0, n + 1)
    x, y = (a.ravel() for a in np.meshgrid(t, t, indexing="ij"))
    idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    tri = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    return Mesh(np.column_stack([x, y, height(x, y)]), tri)


def _mapped_block(seed: int, shape=(10, 4, 3)) -> tuple[Mesh, np.ndarray]:
    X, C = structured_tetra(shape)
    phi = random_map(np.random.default_rng(seed))
    return Mesh(phi(X), C), X


# ----------------------------------------------------------------------------------------------------------------
# closest points
# ----------------------------------------------------------------------------------------------------------------
def test_closest_on_triangles_matches_dense_search():
    rng = np.random.default_rng(0)
    m = 200
    a, b, c = (rng.normal(size=(m, 3)) for _ in range(3))
    q = 2.0 * rng.normal(size=(m, 3))
    w, d2 = closest_on_triangles(q, a, b, c)
    assert np.all(w >= -1e-12) and np.allclose(w.sum(1), 1.0)
    # dense barycentric grid: no grid point is closer than the returned one
    s = np.linspace(0, 1, 81)
    S, T = (g.ravel() for g in np.meshgrid(s, s, indexing="ij"))
    keep = S + T <= 1
    S, T = S[keep], T[keep]
    grid = a[:, None] + S[None, :, None] * (b - a)[:, None] + T[None, :, None] * (c - a)[:, None]
    dense = ((grid - q[:, None]) ** 2).sum(2).min(1)
    assert np.all(d2 <= dense + 1e-12)
    assert np.all(dense - d2 <= 0.05 * (dense + 1e-3))  # the grid's resolution bounds the gap
    # the returned point has the returned distance
    p = w[:, :1] * a + w[:, 1:2] * b + w[:, 2:] * c
    assert np.allclose(((p - q) ** 2).sum(1), d2)


def test_closest_on_surface_equals_brute_force():
    mesh = _grid_surface(12, lambda x, y: 0.3 * np.sin(3 * x) * np.cos(2 * y))
    q = np.random.default_rng(1).uniform(-0.3, 1.3, size=(300, 3))
    tri, w = closest_on_surface(mesh.points, mesh.cells, q)
    got = ((np.einsum("na,nad->nd", w, mesh.points[mesh.cells[tri]]) - q) ** 2).sum(1)
    V = mesh.points[mesh.cells]
    m = len(mesh.cells)
    _, d2 = closest_on_triangles(np.repeat(q, m, 0), *(np.tile(V[:, j], (len(q), 1)) for j in range(3)))
    np.testing.assert_allclose(got, d2.reshape(len(q), m).min(1), rtol=0, atol=1e-12)


def test_surface_transfer_reproduces_linear_fields_on_the_surface():
    mesh = _grid_surface(9, lambda x, y: 0.5 * x * x - 0.2 * y)
    rng = np.random.default_rng(2)
    cell = rng.integers(0, mesh.n_cells, 400)
    lam = rng.dirichlet(np.ones(3), 400)
    q = np.einsum("na,nad->nd", lam, mesh.points[mesh.cells[cell]])
    f = lambda p: 1.0 + 2.0 * p[:, 0] - 3.0 * p[:, 1] + 0.5 * p[:, 2]  # noqa: E731
    T = surface_transfer(mesh, q)
    np.testing.assert_allclose(T @ f(mesh.points), f(q), atol=1e-12)
    np.testing.assert_allclose(np.asarray(T.sum(1)).ravel(), 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="triangle mesh"):
        surface_transfer(Mesh(*structured_tetra((2, 2, 2))), q)


# ----------------------------------------------------------------------------------------------------------------
# P1 transfer and mass matrix on tetrahedra
# ----------------------------------------------------------------------------------------------------------------
def test_p1_transfer_on_tetrahedra_is_exact_for_linear_fields_with_clamping():
    ext = (2.0, 1.0, 0.5)
    mesh = Mesh(*structured_tetra((6, 4, 3), ext))
    rng = np.random.default_rng(3)
    q = rng.uniform(-0.5, 2.5, size=(2000, 3)) * np.array([1.0, 0.5, 0.25])
    f = lambda p: 0.3 - 1.0 * p[:, 0] + 2.0 * p[:, 1] + 4.0 * p[:, 2]  # noqa: E731
    T = p1_transfer(mesh, q)
    # the closest point of a box is the clipped point: inside it is the point itself
    closest = np.clip(q, 0.0, np.array(ext))
    outside = (closest != q).any(1)
    assert 200 < outside.sum() < len(q) - 200
    np.testing.assert_allclose(T @ f(mesh.points), f(closest), atol=1e-12)
    np.testing.assert_allclose(np.asarray(T.sum(1)).ravel(), 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="outside the source mesh"):
        p1_transfer(mesh, q, outside="raise")


def test_tetrahedral_mass_matrix_integrates_degree_two_exactly():
    a, b, c = 2.0, 1.5, 0.5
    X, C = structured_tetra((5, 4, 3), (a, b, c))
    # a random affine map: integrals over the image are det(A) times those over the box, in pulled-back form
    rng = np.random.default_rng(4)
    A = np.eye(3) + 0.3 * rng.normal(size=(3, 3))
    t = rng.normal(size=3)
    mesh = Mesh(X @ A.T + t, C)
    M = mass_matrix(mesh)
    det = abs(np.linalg.det(A))
    x, y, z = X.T  # the fields as functions of the box coordinates (pull-back)
    one = np.ones(len(X))
    exact = {
        (0, 0): a * b * c,
        (1, 0): a * a / 2 * b * c,
        (1, 2): a * a / 2 * b * b / 2 * c,
        (1, 1): a**3 / 3 * b * c,
        (3, 3): a * b * c**3 / 3,
        (2, 3): a * b * b / 2 * c * c / 2,
    }
    F = [one, x, y, z]
    for (i, j), val in exact.items():
        assert F[i] @ M @ F[j] == pytest.approx(det * val, rel=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# Floater on a 3D surface patch
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("height", [lambda x, y: 0.8 * (x * x + y * y), lambda x, y: 0.3 * np.sin(4 * x + 3 * y)])
def test_floater_on_a_3d_patch_is_a_bijection_onto_the_disk(height):
    mesh = _grid_surface(14, height)
    uv = floater_disk(mesh)
    flat = Mesh(uv, mesh.cells)
    area = flat.cell_volumes(signed=True)
    assert (area > 0).all() or (area < 0).all()  # no flipped triangle
    loop = mesh.boundary_loops()[0]
    np.testing.assert_allclose(np.hypot(*uv[loop].T), 1.0, atol=1e-12)
    # the triangles tile the inscribed polygon exactly once
    B = uv[loop]
    poly = 0.5 * abs(np.sum(B[:, 0] * np.roll(B[:, 1], -1) - np.roll(B[:, 0], -1) * B[:, 1]))
    assert np.abs(area).sum() == pytest.approx(poly, rel=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# volume morphing
# ----------------------------------------------------------------------------------------------------------------
def test_volume_morphing_maps_boundary_to_boundary_without_inversion():
    template = Mesh(*structured_tetra((8, 3, 2)))
    _, tbf = boundary_surface(template)
    for seed, shape in ((0, (10, 4, 3)), (1, (12, 5, 3)), (2, (9, 3, 4))):
        mesh, ref = _mapped_block(seed, shape)
        X = morph_volume(mesh, template)
        bn, _ = boundary_surface(mesh)
        tri, w = closest_on_surface(template.points, tbf, X[bn])
        on = np.einsum("na,nad->nd", w, template.points[tbf[tri]])
        assert np.abs(on - X[bn]).max() < 1e-10
        assert len(inverted_cells(mesh, X)) == 0
        # the morphing approximately undoes the random map: much closer to the reference positions than the mesh
        err = np.sqrt(((X - ref) ** 2).sum(1).mean())
        err0 = np.sqrt(((mesh.points - ref) ** 2).sum(1).mean())
        assert err < 0.5 * err0


def test_volume_morphing_on_the_bracket_family_onto_the_reference_block():
    template = Mesh(*structured_tetra((17, 6, 4)))
    _, tbf = boundary_surface(template)
    for index in range(4):
        P, C, ref = bracket_geometry(0, index)
        mesh = Mesh(P, C)
        X = morph_volume(mesh, template)
        bn, _ = boundary_surface(mesh)
        tri, w = closest_on_surface(template.points, tbf, X[bn])
        assert np.abs(np.einsum("na,nad->nd", w, template.points[tbf[tri]]) - X[bn]).max() < 1e-10
        assert len(inverted_cells(mesh, X)) == 0


def test_surface_patches_of_a_block_are_its_six_faces():
    mesh, _ = _mapped_block(5)
    _, bf = boundary_surface(mesh)
    assert surface_patches(mesh.points, bf).max() + 1 == 6


def test_inverted_cells_finds_the_flipped_tetrahedron():
    mesh = Mesh(*structured_tetra((3, 3, 3), (1, 1, 1)))
    X = mesh.points.copy()
    inner = np.nonzero(np.all((X > 0.2) & (X < 0.8), axis=1))[0][0]
    X[inner] += np.array([0.6, 0.0, 0.0])  # pushes an interior node through its neighbours
    bad = inverted_cells(mesh, X)
    assert len(bad) and all(inner in mesh.cells[c] for c in bad)
    assert len(inverted_cells(mesh, mesh.points)) == 0


def test_volume_morphing_refuses_bad_input():
    template = Mesh(*structured_tetra((4, 2, 2)))
    mesh = Mesh(*structured_tetra((5, 2, 2)))
    X = mesh.points.copy()
    inner = np.nonzero(np.all((X > 0.05) & (X < np.array(EXTENT) - 0.05), axis=1))[0][0]
    X[inner] += np.array([0.9, 0.0, 0.0])
    with pytest.raises(ValueError, match="inverted"):
        morph_volume(mesh.with_points(X), template)
    surf = _grid_surface(3, lambda x, y: x * 0)
    with pytest.raises(ValueError, match="tetrahedral mesh in 3D"):
        morph_volume(surf, template)
    with pytest.raises(ValueError, match="tetrahedral mesh in 3D"):
        morph_volume(mesh, Mesh(np.eye(3)[:, :2], [[0, 1, 2]]))
    with pytest.raises(ValueError, match="radius_factors"):
        morph_volume(mesh, template, radius_factors=())
    # a block bent far beyond the family: every radius inverts tetrahedra, and the error names one
    Xb, Cb = structured_tetra((16, 8, 6))
    bent = Mesh(BracketMap(0.0, 1.5, np.zeros((3, 3, 2, 3)), 0.0)(Xb), Cb)
    with pytest.raises(ValueError, match=r"inverts \d+ tetrahedron\(s\) for every support radius .*first: cell \d+"):
        morph_volume(bent, template)


# ----------------------------------------------------------------------------------------------------------------
# surface morphing
# ----------------------------------------------------------------------------------------------------------------
def _tube(n_theta: int, n_z: int, wobble: float, seed: int) -> Mesh:
    r"""An open tube (two boundary loops), radius perturbed smoothly."""
    rng = np.random.default_rng(seed)
    th = np.linspace(0, 2 * np.pi, n_theta, endpoint=False)
    z = np.linspace(0, 2, n_z + 1)
    T, Z = np.meshgrid(th, z, indexing="ij")
    r = 1 + wobble * (rng.normal() * np.cos(T) * np.sin(Z) + rng.normal() * np.sin(2 * T) * Z / 2)
    P = np.column_stack([(r * np.cos(T)).ravel(), (r * np.sin(T)).ravel(), Z.ravel()])
    idx = np.arange(n_theta * (n_z + 1)).reshape(n_theta, n_z + 1)
    nxt = np.roll(idx, -1, axis=0)
    a, b, c, d = idx[:, :-1].ravel(), nxt[:, :-1].ravel(), nxt[:, 1:].ravel(), idx[:, 1:].ravel()
    return Mesh(P, np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)]))


def test_surface_morphing_lands_on_the_template_and_matches_loops():
    template = _tube(24, 8, 0.0, 0)
    mesh = _tube(31, 11, 0.1, 1)
    X = morph_surface(mesh, template)
    tri, w = closest_on_surface(template.points, template.cells, X)
    on = np.einsum("na,nad->nd", w, template.points[template.cells[tri]])
    assert np.abs(on - X).max() < 1e-10
    for lp in mesh.boundary_loops():  # loop nodes land on a template loop (z = 0 or z = 2)
        z = X[lp, 2]
        assert np.allclose(z, z[0], atol=1e-12) and min(abs(z[0]), abs(z[0] - 2)) < 1e-12
    # closed surface: the boundary of a mapped block onto the boundary of the reference block
    vol, _ = _mapped_block(3)
    bn, bf = boundary_surface(vol)
    new = np.full(vol.n_points, -1)
    new[bn] = np.arange(len(bn))
    closed = Mesh(vol.points[bn], new[bf])
    tmpl_vol = Mesh(*structured_tetra((7, 3, 2)))
    tn, tbf = boundary_surface(tmpl_vol)
    tnew = np.full(tmpl_vol.n_points, -1)
    tnew[tn] = np.arange(len(tn))
    Y = morph_surface(closed, Mesh(tmpl_vol.points[tn], tnew[tbf]))
    lo, hi = Y.min(0), Y.max(0)
    np.testing.assert_allclose(lo, 0.0, atol=1e-10)
    np.testing.assert_allclose(hi, EXTENT, atol=1e-10)


def test_surface_morphing_refuses_bad_input():
    template = _tube(12, 4, 0.0, 0)
    P = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, -1, 0.5]], dtype=float)
    nonmanifold = Mesh(P, [[0, 1, 2], [0, 1, 3], [0, 1, 4]])
    with pytest.raises(ValueError, match="non-manifold"):
        morph_surface(nonmanifold, template)
    with pytest.raises(ValueError, match="triangle surface in 3D"):
        morph_surface(Mesh(*structured_tetra((2, 2, 2))), template)
    disk = _grid_surface(4, lambda x, y: x * y)
    with pytest.raises(ValueError, match="boundary loop"):
        morph_surface(disk, template)


# ----------------------------------------------------------------------------------------------------------------
# scale and translation
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1e-100, 1e100])
def test_closest_points_and_patches_are_scale_equivariant(scale):
    # the Gram determinant of closest_on_triangles (4th power of the lengths) underflowed at 1e-100 (every point
    # sent to an edge) and overflowed at 1e100 (NaN weights); the normals of surface_patches overflowed at 1e100
    # (every triangle its own patch); affine_align's least squares dropped the linear part at 1e-100
    rng = np.random.default_rng(0)
    a, b, c = (rng.normal(size=(100, 3)) for _ in range(3))
    q = rng.normal(size=(100, 3))
    w, d2 = closest_on_triangles(q, a, b, c)
    ws, d2s = closest_on_triangles(q * scale, a * scale, b * scale, c * scale)
    np.testing.assert_allclose(ws, w, atol=1e-12)
    np.testing.assert_allclose(d2s / scale**2, d2, rtol=1e-10)
    block = Mesh(*structured_tetra((4, 3, 2)))
    _, bf = boundary_surface(block)
    np.testing.assert_array_equal(surface_patches(block.points * scale, bf), surface_patches(block.points, bf))
    mesh, _ = _mapped_block(3)
    bn, _ = boundary_surface(mesh)
    A, t = affine_align(mesh.points[bn], block.points, bf)
    As, ts = affine_align(mesh.points[bn] * scale, block.points * scale, bf)
    np.testing.assert_allclose(As, A, atol=1e-10)
    np.testing.assert_allclose(ts / scale, t, atol=1e-10)


@pytest.mark.parametrize(("scale", "offset"), [(1e-100, 0.0), (1e100, 0.0), (1.0, 1e6)])
def test_morphing_commutes_with_scaling_and_translation(scale, offset):
    # a mesh family in other units (or far from the origin) morphs like the unscaled one: morph_volume raised
    # "coincident control points" at 1e-100 and moved nodes by 15 % of the size at 1e100
    shift = offset * np.array([1.0, -2.0, 0.5])

    def move(m: Mesh) -> Mesh:
        return Mesh(m.points * scale + shift, m.cells)

    mesh, _ = _mapped_block(3)
    template = Mesh(*structured_tetra((8, 4, 3)))
    X = morph_volume(mesh, template)
    Xs = morph_volume(move(mesh), move(template))
    np.testing.assert_allclose((Xs - shift) / scale, X, atol=1e-9 + 1e3 * np.finfo(float).eps * offset)
    tube, tmpl = _tube(31, 11, 0.1, 1), _tube(24, 8, 0.0, 0)
    Y = morph_surface(tube, tmpl)
    Ys = morph_surface(move(tube), move(tmpl))
    np.testing.assert_allclose((Ys - shift) / scale, Y, atol=1e-9 + 1e3 * np.finfo(float).eps * offset)

r"""Property-based tests of gpgeom.geometry (hypothesis): random meshes and point clouds, including degenerate ones.

Meshes: random points in the unit square (uniform, or a jittered grid whose jitter may be zero, which gives
collinear and cocircular points, plus optional near-duplicates) triangulated by scipy's Delaunay. Every mesh either
passes :meth:`Mesh.check` or is refused by it and repaired; on the valid meshes, the identities of the P1 space and
of the Floater map must hold:

* the mass matrix is symmetric, positive semi-definite, and sums to the area (here the area of the convex hull);
* P1 transfer reproduces linear fields exactly, its rows are partitions of unity, and the transfer of a mesh onto its
  own nodes is the identity;
* the Floater map puts the boundary on the unit circle and the interior strictly inside, flips no triangle, and its
  image triangles tile the inscribed polygon (their areas sum to the polygon's): a bijection onto it.

Point clouds: random samples of a sphere with near-duplicate points; duplicates are found, dropped or refused, and
the connection Laplacian is symmetric, positive semi-definite, finite, with orthogonal transports.

Examples are derandomised (fixed seeds, the same in CI every run) and few, so the file runs in seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from scipy.spatial import ConvexHull, Delaunay

from gpgeom.geometry.connection import connection_laplacian, graph_laplacian
from gpgeom.geometry.fem import mass_matrix
from gpgeom.geometry.mesh import Mesh
from gpgeom.geometry.morphing import floater_disk
from gpgeom.geometry.point_cloud import find_duplicates
from gpgeom.geometry.transfer import p1_transfer

SETTINGS = settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None
)


@st.composite
def point_sets(draw) -> np.ndarray:
    r"""Points in the unit square: uniform, or a grid with a (possibly zero) jitter, with near-duplicates added."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if draw(st.booleans()):
        n = draw(st.integers(4, 80))
        P = rng.uniform(0.0, 1.0, (n, 2))
    else:
        nx, ny = draw(st.integers(2, 8)), draw(st.integers(2, 8))
        x, y = np.meshgrid(np.linspace(0.0, 1.0, nx), np.linspace(0.0, 1.0, ny))
        jitter = draw(st.sampled_from([0.0, 1e-13, 1e-6, 0.02, 0.2])) / max(nx, ny)
        P = np.c_[x.ravel(), y.ravel()] + jitter * rng.uniform(-1.0, 1.0, (nx * ny, 2))
    n_dup = draw(st.integers(0, 2))
    if n_dup:
        pick = rng.integers(0, len(P), n_dup)
        scale = draw(st.sampled_from([0.0, 1e-14, 1e-12]))
        P = np.r_[P, P[pick] + scale * rng.standard_normal((n_dup, 2))]
    return P


def delaunay_mesh(P: np.ndarray) -> Mesh | None:
    try:
        tri = Delaunay(P)
    except Exception:  # noqa: BLE001 - qhull refuses flat inputs (all points collinear)
        return None
    if len(tri.simplices) == 0:
        return None
    return Mesh(P, tri.simplices)


def valid_mesh(P: np.ndarray) -> Mesh:
    r"""The Delaunay mesh of ``P``: checked, and repaired when the check refuses it."""
    mesh = delaunay_mesh(P)
    assume(mesh is not None)
    if mesh.is_valid():
        assert mesh.check() is mesh
        event("valid Delaunay mesh")
        return mesh
    event("degenerate Delaunay mesh, repaired")
    with pytest.raises(ValueError, match=r"coincide|has zero area|is inverted"):
        mesh.check()
    repaired, node_map = mesh.repair()
    assert repaired.is_valid()
    used = node_map >= 0
    # every node keeps its position, up to the merge tolerance
    assert np.abs(repaired.points[node_map[used]] - mesh.points[used]).max() <= 1e-9
    return repaired


def _longest(mesh: Mesh) -> np.ndarray:
    V = mesh.points[mesh.cells]
    return np.sqrt(((V - np.roll(V, 1, axis=1)) ** 2).sum(-1)).max(1)


def hull_area(points: np.ndarray) -> float:
    return float(ConvexHull(points).volume)


@SETTINGS
@given(point_sets())
def test_random_meshes_are_refused_or_repaired_and_the_mass_matrix_sums_to_the_area(P):
    mesh = valid_mesh(P)
    vol = mesh.cell_volumes()
    assert np.isfinite(vol).all() and (vol > 0).all()
    M = mass_matrix(mesh)
    assert np.isfinite(M.data).all()
    assert abs(M - M.T).max() <= 1e-15
    area = hull_area(mesh.points)
    np.testing.assert_allclose(M.sum(), area, rtol=1e-10)
    np.testing.assert_allclose(vol.sum(), area, rtol=1e-10)
    ev = np.linalg.eigvalsh(M.toarray())
    assert ev.min() >= -1e-14 * ev.max()
    # u^T M v is the exact L2 product: for u = 1 and v = x it is the first moment of the domain
    x = mesh.points[:, 0]
    first_moment = (vol * mesh.points[mesh.cells][:, :, 0].mean(1)).sum()
    np.testing.assert_allclose(np.ones(mesh.n_points) @ (M @ x), first_moment, rtol=1e-10, atol=1e-14)


@SETTINGS
@given(point_sets(), st.integers(0, 2**32 - 1), st.floats(-3.0, 3.0), st.floats(-3.0, 3.0), st.floats(-3.0, 3.0))
def test_p1_transfer_reproduces_linear_fields(P, seed, a, b, c):
    mesh = valid_mesh(P)
    rng = np.random.default_rng(seed)
    u = a + b * mesh.points[:, 0] + c * mesh.points[:, 1]
    # points inside (convex combinations of cell vertices), on the nodes themselves, and outside (clamped)
    cell = rng.integers(0, mesh.n_cells, 40)
    lam = rng.dirichlet(np.ones(3), 40)
    inside = np.einsum("nk,nkd->nd", lam, mesh.points[mesh.cells[cell]])
    # barycentric coordinates are as accurate as the cells are well shaped: a thin cell (a jittered straight
    # boundary) of aspect ratio q = longest edge^2 / (2 area) amplifies round-off by about q
    q = float((_longest(mesh) ** 2 / (2.0 * mesh.cell_volumes())).max())
    tol = 1e-12 + 1e-15 * q
    T = p1_transfer(mesh, inside)
    np.testing.assert_allclose(T @ u, a + b * inside[:, 0] + c * inside[:, 1], rtol=0, atol=10 * tol)
    np.testing.assert_allclose(np.asarray(T.sum(1)).ravel(), 1.0, rtol=0, atol=1e-12)
    assert T.data.min() >= -tol and T.data.max() <= 1 + tol
    Id = p1_transfer(mesh, mesh.points)
    assert abs(Id - sp.identity(mesh.n_points)).max() <= tol
    outside = rng.uniform(-1.0, 2.0, (20, 2))
    Tc = p1_transfer(mesh, outside)
    np.testing.assert_allclose(np.asarray(Tc.sum(1)).ravel(), 1.0, rtol=0, atol=1e-12)
    assert np.isfinite(Tc.data).all() and Tc.data.min() >= -1e-12


@SETTINGS
@given(point_sets())
def test_floater_map_is_a_bijection_onto_the_inscribed_polygon(P):
    mesh = valid_mesh(P)
    loops = mesh.boundary_loops()
    assume(len(loops) == 1 and mesh.used_points().all())
    uv = floater_disk(mesh)
    assert np.isfinite(uv).all()
    loop = loops[0]
    r = np.linalg.norm(uv, axis=1)
    np.testing.assert_allclose(r[loop], 1.0, rtol=0, atol=1e-12)
    interior = np.setdiff1d(np.arange(mesh.n_points), loop)
    assert (r[interior] < 1.0 - 1e-12).all()
    image = mesh.with_points(uv, keep_data=False)
    s0, s1 = mesh.cell_volumes(signed=True), image.cell_volumes(signed=True)
    assert (np.sign(s0) == np.sign(s1)).all() and (np.abs(s1) > 0).all()  # no triangle flips or collapses
    B = uv[loop]
    polygon = 0.5 * abs(np.sum(B[:, 0] * np.roll(B[:, 1], -1) - np.roll(B[:, 0], -1) * B[:, 1]))
    np.testing.assert_allclose(np.abs(s1).sum(), polygon, rtol=1e-10)  # the images tile it without overlap


# ----------------------------------------------------------------------------------------------------------------
# point clouds
# ----------------------------------------------------------------------------------------------------------------
@st.composite
def sphere_clouds(draw) -> tuple[np.ndarray, np.ndarray]:
    r"""``(X, dup)``: points on the unit sphere with near-duplicate copies of the rows ``dup`` appended."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(40, 90))
    X = rng.standard_normal((n, 3))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    dup = rng.choice(n, draw(st.integers(0, 3)), replace=False)
    eps = draw(st.sampled_from([0.0, 1e-15, 1e-12]))
    return np.r_[X, X[dup] + eps * rng.standard_normal((len(dup), 3))], dup


@SETTINGS
@given(sphere_clouds())
def test_point_cloud_duplicates_and_the_connection_laplacian(cloud):
    X, dup = cloud
    n = len(X) - len(dup)
    pairs = find_duplicates(X)
    assert sorted(map(tuple, pairs.tolist())) == sorted((int(i), n + k) for k, i in enumerate(dup))
    if len(dup):
        with pytest.raises(ValueError, match="duplicate points"):
            connection_laplacian(X, 8, dim=2, on_disconnected="ignore")
    lap = connection_laplacian(X, 8, dim=2, duplicates="drop", on_disconnected="ignore")
    np.testing.assert_array_equal(lap.index, np.arange(n))  # the first copy of every point is kept
    L = lap.symmetric_operator()
    assert np.isfinite(L.data).all() and abs(L - L.T).max() <= 1e-12
    ev = np.linalg.eigvalsh(L.toarray())
    assert ev.min() >= -1e-9 * max(ev.max(), 1.0)
    O = lap.transports
    np.testing.assert_allclose(O @ O.transpose(0, 2, 1), np.broadcast_to(np.eye(2), O.shape), atol=1e-10)
    F = lap.frames
    np.testing.assert_allclose(F.transpose(0, 2, 1) @ F, np.broadcast_to(np.eye(2), (n, 2, 2)), atol=1e-10)
    G = graph_laplacian(X, 8, duplicates="drop", on_disconnected="ignore").L
    np.testing.assert_allclose(np.asarray(G.sum(1)).ravel(), 0.0, atol=1e-12)

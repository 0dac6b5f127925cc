import meshio
import numpy as np
import pytest
import torch

from gpgeom.datasets.vector_fields import (
    SPHERE_FIELDS,
    TORUS_FIELDS,
    random_rotation,
    read_mesh_cloud,
    rough_field,
    sample_sphere,
    sample_torus,
    sphere_field,
    sphere_normals,
    sphere_vector_field,
    torus_angles,
    torus_field,
    torus_normals,
    torus_vector_field,
)
from gpgeom.geometry.connection import connection_laplacian


@pytest.fixture
def seed():
    return int(torch.randint(0, 2**31 - 1, ()).item())


def dot(a, b):
    return np.einsum("ij,ij->i", a, b)


# ---------------------------------------------------------------------------------------------------------------
# samplers
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fibonacci", "uniform", "latlon"])
@pytest.mark.parametrize("n", [50, 500, 5000])
def test_sphere_samples_lie_on_sphere(method, n, seed):
    X = sample_sphere(n, method=method, radius=2.0, seed=seed)
    assert X.shape == (n, 3)
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 2.0, atol=1e-12)


def test_fibonacci_is_deterministic_and_rotated_with_seed(seed):
    a, b = sample_sphere(100), sample_sphere(100)
    np.testing.assert_array_equal(a, b)
    c = sample_sphere(100, seed=seed)
    Q = random_rotation(seed)
    np.testing.assert_allclose(Q @ Q.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(Q) == pytest.approx(1.0)
    np.testing.assert_allclose(c, a @ Q.T, atol=1e-12)
    # quasi-uniform: the nearest-neighbour distances vary little
    from scipy.spatial import cKDTree

    d = cKDTree(a).query(a, k=2)[0][:, 1]
    assert d.max() / d.min() < 2.0


def test_torus_sampling_is_area_uniform(seed):
    R, r = 1.0, 0.4
    X, ang = sample_torus(20000, R=R, r=r, seed=seed)
    assert X.shape == (20000, 3) and ang.shape == (20000, 2)
    # on the surface
    np.testing.assert_allclose((np.hypot(X[:, 0], X[:, 1]) - R) ** 2 + X[:, 2] ** 2, r**2, atol=1e-12)
    np.testing.assert_allclose(torus_angles(X, R), np.angle(np.exp(1j * ang)), atol=1e-12)
    # area-uniform: E[cos v] = int cos v (R + r cos v) dv / int (R + r cos v) dv = r / (2R) = 0.2
    assert abs(np.cos(ang[:, 1]).mean() - r / (2 * R)) < 0.02
    _, ang2 = sample_torus(20000, R=R, r=r, method="angles", seed=seed)
    assert abs(np.cos(ang2[:, 1]).mean()) < 0.02


# ---------------------------------------------------------------------------------------------------------------
# analytic fields
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SPHERE_FIELDS)
def test_sphere_fields_tangent_and_vanish_at_singularities(kind, seed):
    rng = np.random.default_rng(seed)
    axis = rng.standard_normal(3)
    s = sphere_vector_field(2000, kind, method="uniform", axis=axis, seed=seed)
    assert s.points.shape == s.vectors.shape == s.normals.shape == (2000, 3)
    assert np.abs(dot(s.normals, s.vectors)).max() < 1e-12
    assert np.linalg.norm(s.vectors, axis=1).max() > 0.5
    V, sing = sphere_field(s.singularities, kind, axis=axis)
    np.testing.assert_allclose(np.linalg.norm(s.singularities, axis=1), 1.0, atol=1e-12)
    if kind == "mixed":
        assert sing.shape == (0, 3)
    else:
        assert len(sing) in (2, 6)
        assert np.linalg.norm(V, axis=1).max() < 1e-12
        # and the field is not zero elsewhere: away from the singularities |v| is bounded below
        far = np.min(np.linalg.norm(s.points[:, None] - sing[None], axis=-1), axis=1) > 0.3
        assert np.linalg.norm(s.vectors[far], axis=1).min() > 0.05


def test_sphere_field_values():
    x = np.array([[1.0, 0, 0], [0, 0, 1.0]])
    np.testing.assert_allclose(sphere_field(x, "rotation")[0], [[0, 1, 0], [0, 0, 0]], atol=1e-15)
    np.testing.assert_allclose(sphere_field(x, "source_sink")[0], [[0, 0, 1], [0, 0, 0]], atol=1e-15)
    # evaluated at the radial projection
    np.testing.assert_allclose(sphere_field(3 * x, "rotation")[0], sphere_field(x, "rotation")[0])


@pytest.mark.parametrize("kind", TORUS_FIELDS)
def test_torus_fields_tangent_and_vanish_at_singularities(kind, seed):
    R, r = 1.5, 0.5
    s = torus_vector_field(2000, kind, R=R, r=r, seed=seed)
    assert np.abs(dot(s.normals, s.vectors)).max() < 1e-12
    np.testing.assert_allclose(s.normals, torus_normals(torus_angles(s.points, R)), atol=1e-12)
    V, sing = torus_field(s.singularities, kind, R=R, r=r)
    if kind == "height_gradient":
        assert sing.shape == (4, 3)
        np.testing.assert_allclose((np.hypot(sing[:, 0], sing[:, 1]) - R) ** 2 + sing[:, 2] ** 2, r**2)
        assert np.linalg.norm(V, axis=1).max() < 1e-12
    else:
        assert sing.shape == (0, 3)
    if kind in ("toroidal", "poloidal"):
        np.testing.assert_allclose(np.linalg.norm(s.vectors, axis=1), 1.0, atol=1e-12)
    if kind == "rotation":
        np.testing.assert_allclose(s.vectors, np.cross([0, 0, 1.0], s.points), atol=1e-12)


def test_noise_options(seed):
    s = sphere_vector_field(3000, "saddles", noise=0.01, vector_noise=0.1, seed=seed)
    assert np.std(s.points - s.clean_points) == pytest.approx(0.01, rel=0.1)
    assert np.abs(dot(s.normals, s.vectors)).max() < 1e-12  # noisy vectors stay tangent
    assert np.abs(dot(s.normals, s.clean_vectors)).max() < 1e-12
    assert np.linalg.norm(s.vectors - s.clean_vectors, axis=1).mean() == pytest.approx(
        0.1 * np.sqrt(np.pi / 2), rel=0.1
    )
    t = torus_vector_field(500, "mixed", noise=0.02, seed=seed)
    assert np.abs(dot(t.normals, t.clean_vectors)).max() < 1e-12
    assert not np.allclose(t.points, t.clean_points)


# ---------------------------------------------------------------------------------------------------------------
# rough field
# ---------------------------------------------------------------------------------------------------------------


def test_rough_field_is_tangent_unit_and_reproducible(seed):
    X = sample_sphere(800, method="uniform", seed=seed)
    cl = connection_laplacian(X, 10, dim=2)
    V = rough_field(laplacian=cl, t=100.0, seed=seed)
    assert V.shape == (800, 3)
    # in the span of the estimated frames (exactly) and nearly tangent to the true sphere
    inplane = np.einsum("nDd,nEd,nE->nD", cl.frames, cl.frames, V)
    np.testing.assert_allclose(inplane, V, atol=1e-13)
    assert np.abs(dot(X, V)).max() < 1e-2
    np.testing.assert_allclose(np.linalg.norm(V, axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(V, rough_field(laplacian=cl, t=100.0, seed=seed))
    assert not np.allclose(V, rough_field(laplacian=cl, t=100.0, seed=seed + 1))
    # diffusion smooths: neighbouring vectors align far better than the raw noise (t = 0)
    g = cl.graph
    smooth = np.median(dot(V[g.rows], V[g.cols]))
    raw = np.median(dot(*(lambda W: (W[g.rows], W[g.cols]))(rough_field(laplacian=cl, t=0.0, seed=seed))))
    assert smooth > 0.95 and raw < 0.5


def test_rough_field_with_exact_frames_is_exactly_tangent(seed):
    X = sample_sphere(600, seed=seed)
    nrm = sphere_normals(X)
    e1 = np.cross(nrm, np.where(np.abs(nrm[:, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]]))
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    frames = np.stack([e1, np.cross(nrm, e1)], axis=2)
    V = rough_field(X, t=50.0, seed=seed, k=10, frames=frames)
    assert np.abs(dot(nrm, V)).max() < 1e-12


# ---------------------------------------------------------------------------------------------------------------
# meshes
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".obj", ".vtk", ".ply"])
def test_read_mesh_cloud(tmp_path, suffix):
    # octahedron plus one unreferenced vertex
    pts = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1], [5, 5, 5]], dtype=float)
    tri = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    path = tmp_path / f"octa{suffix}"
    meshio.write(str(path), meshio.Mesh(pts, [("triangle", tri)]))
    mc = read_mesh_cloud(str(path))
    np.testing.assert_allclose(mc.points, pts[:6])
    np.testing.assert_array_equal(mc.index, np.arange(6))
    assert mc.triangles.shape == (8, 3)
    # outward faces => the area-weighted vertex normals of a regular octahedron are the vertex directions
    np.testing.assert_allclose(mc.normals, pts[:6], atol=1e-12)
    keep = read_mesh_cloud(str(path), drop_unreferenced=False)
    assert keep.points.shape == (7, 3)
    # the vertices work as a point cloud
    assert connection_laplacian(mc.points, 4, dim=2, on_disconnected="raise").L.shape == (12, 12)


# ---------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"Unknown `kind`='vortex'"):
        sphere_field(np.ones((3, 3)), "vortex")
    with pytest.raises(ValueError, match=r"`points` must have shape \(n, 3\), got \(4, 2\)"):
        sphere_field(np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"`axis` must be a non-zero finite 3-vector"):
        sphere_field(np.ones((3, 3)), axis=(0, 0, 0))
    with pytest.raises(ValueError, match=r"needs r < R"):
        sample_torus(10, R=1.0, r=1.0)
    with pytest.raises(ValueError, match=r"Unknown `method`='grid'"):
        sample_sphere(10, method="grid")
    with pytest.raises(TypeError, match=r"`n` must be an int"):
        sample_sphere(10.0)
    with pytest.raises(ValueError, match=r"`noise` must be >= 0"):
        sphere_vector_field(10, noise=-1.0)
    with pytest.raises(ValueError, match=r"Give `points` or a `laplacian`"):
        rough_field()


def test_a_point_at_the_origin_is_refused_not_nan():
    # the radial projection of (0, 0, 0) is undefined: sphere_field and sphere_normals returned NaN rows silently
    X = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    for call in (lambda: sphere_normals(X), lambda: sphere_field(X, "saddles")):
        with pytest.raises(ValueError, match=r"`points` must not contain the origin .* rows \[1\] are \(0, 0, 0\)"):
            call()
    # a point off the unit sphere is projected: the normal is x/|x| exactly, and the rotation field e_z x x/|x|
    np.testing.assert_allclose(sphere_normals(X[[0, 2]]), [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], rtol=0, atol=0)
    np.testing.assert_allclose(sphere_field(X[[2]], "rotation")[0], [[-1.0, 0.0, 0.0]], rtol=0, atol=1e-15)

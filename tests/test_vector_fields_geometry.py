"""The ellipsoid and Swiss-roll families of gpgeom.datasets.vector_fields, against closed forms and quadrature."""

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from gpgeom.datasets.vector_fields import ellipsoid_vector_field, sample_ellipsoid, swiss_roll_vector_field


@pytest.fixture
def seed():
    return int(torch.randint(0, 2**31 - 1, ()).item())


def dot(a, b):
    return np.einsum("ij,ij->i", a, b)


def test_ellipsoid_samples_are_on_the_surface_and_area_uniform(seed):
    c = np.array([1.0, 0.75, 0.5])
    X, N = sample_ellipsoid(40000, c, seed=seed)
    np.testing.assert_allclose((X**2 / c**2).sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(N, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.cross(N, X / c**2), 0.0, atol=1e-12)  # the gradient of the implicit function
    # area fraction of the band |z| < c_3 / 2, by quadrature of the parametrisation's area element
    th, ph = np.meshgrid(np.linspace(0, np.pi, 801), np.linspace(0, 2 * np.pi, 801), indexing="ij")
    st, ct, sp, cp = np.sin(th), np.cos(th), np.sin(ph), np.cos(ph)
    x_t = np.stack([c[0] * ct * cp, c[1] * ct * sp, -c[2] * st], -1)
    x_p = np.stack([-c[0] * st * sp, c[1] * st * cp, np.zeros_like(st)], -1)
    dA = np.linalg.norm(np.cross(x_t, x_p), axis=-1)
    band = np.abs(ct) < 0.5
    frac = np.trapezoid(np.trapezoid(dA * band, axis=1), axis=0) / np.trapezoid(np.trapezoid(dA, axis=1), axis=0)
    p = np.mean(np.abs(X[:, 2]) < c[2] / 2)
    assert abs(p - frac) < 4 * np.sqrt(frac * (1 - frac) / len(X)) + 2e-3  # 4 sigma, plus the quadrature's error
    # a sphere sampled by direction (no rejection) would put 0.5 of the points in the band: the test can tell
    assert abs(frac - 0.5) > 0.05


@pytest.mark.parametrize("kind", ["smooth", "rough"])
def test_ellipsoid_fields_are_tangent_and_reproducible(kind, seed):
    s = ellipsoid_vector_field(500, kind, seed=seed)
    assert s.points.shape == s.vectors.shape == (500, 3) and s.name == f"ellipsoid/{kind}"
    assert np.abs(dot(s.clean_vectors, s.normals)).max() < 1e-12 * np.abs(s.clean_vectors).max()
    assert np.linalg.norm(s.clean_vectors, axis=1).mean() > 0.1
    again = ellipsoid_vector_field(500, kind, seed=seed)
    np.testing.assert_array_equal(s.vectors, again.vectors)
    if kind == "smooth":  # the projection of the stated quadratic ambient field
        x, y, z = s.clean_points.T
        G = np.stack([y + 0.5 * z, x * z - 0.3, 1.0 - x * y], 1) + np.cross([0.3, 0.2, 1.0], s.clean_points)
        np.testing.assert_allclose(s.clean_vectors, G - dot(G, s.normals)[:, None] * s.normals, atol=1e-12)


def test_swiss_roll_coordinates_field_and_geometry(seed):
    gap, r0, turns, height, waves = 0.4, 0.5, 2.5, 1.0, 3.0
    s = swiss_roll_vector_field(4000, gap=gap, r0=r0, turns=turns, height=height, waves=waves, seed=seed)
    X, V, N, (sc, h) = s.clean_points, s.clean_vectors, s.normals, s.coords.T
    b = gap / (2 * np.pi)
    r = np.hypot(X[:, 0], X[:, 2])
    theta = (r - r0) / b
    np.testing.assert_allclose(X[:, 0], r * np.cos(theta), atol=1e-10)
    np.testing.assert_allclose(X[:, 1], h, atol=0)
    # arclength by quadrature of |dx/dtheta| = sqrt(r^2 + b^2)
    for i in range(5):
        exact = quad(lambda t: np.sqrt((r0 + b * t) ** 2 + b**2), 0.0, theta[i])[0]
        assert abs(sc[i] - exact) < 1e-8 * max(1.0, exact)
    S = quad(lambda t: np.sqrt((r0 + b * t) ** 2 + b**2), 0.0, 2 * np.pi * turns)[0]
    # area-uniform: uniform in (s, h), the surface being flat in them
    assert abs(sc.mean() / S - 0.5) < 4 * np.sqrt(1 / 12 / len(sc)) and abs(h.mean() - 0.5) < 0.02
    # unit normals, tangent field, the stated formula in the parallel frame (e_s, e_h)
    np.testing.assert_allclose(np.linalg.norm(N, axis=1), 1.0, atol=1e-12)
    assert np.abs(dot(V, N)).max() < 1e-12
    e_h = np.array([0.0, 1.0, 0.0])
    e_s = np.cross(e_h, N)
    u, t = sc / S, h / height
    np.testing.assert_allclose(dot(V, e_s), np.cos(2 * np.pi * waves * u) + 0.5 * np.cos(np.pi * t), atol=1e-9)
    np.testing.assert_allclose(V[:, 1], 0.8 * np.cos(np.pi * waves * u) * np.cos(np.pi * t), atol=1e-12)
    # e_s is the direction of increasing s: finite difference of the curve
    i = np.argmax(theta > 1.0)
    step = 1e-6
    x1 = np.array(
        [(r0 + b * (theta[i] + step)) * np.cos(theta[i] + step), (r0 + b * (theta[i] + step)) * np.sin(theta[i] + step)]
    )
    x0 = np.array([r[i] * np.cos(theta[i]), r[i] * np.sin(theta[i])])
    d = (x1 - x0) / np.linalg.norm(x1 - x0)
    np.testing.assert_allclose(e_s[i, [0, 2]], d, atol=1e-5)


def test_swiss_roll_turns_are_close_in_space_and_far_along_the_surface(seed):
    s = swiss_roll_vector_field(3000, seed=seed)
    from scipy.spatial import cKDTree

    d, j = cKDTree(s.clean_points).query(s.clean_points, k=60)
    far = np.abs(s.coords[j, 0] - s.coords[:, None, 0]) > 2.0  # neighbours in space more than 2 apart along it
    assert far.any()  # other turns within the 60 nearest points
    assert d[far].min() < 0.5  # the gap, 0.4


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"`axes` must be three positive semi-axes"):
        sample_ellipsoid(10, (1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match=r"Unknown `kind`='wavy'"):
        ellipsoid_vector_field(10, "wavy")
    with pytest.raises(ValueError, match=r"`gap` must be > 0"):
        swiss_roll_vector_field(10, gap=0.0)

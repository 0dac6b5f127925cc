"""Tangent frames from local polynomial fits of degree 4-6 (gpgeom.geometry.tangent): their own neighbourhoods,
the leave-one-out (PRESS) choice of degree, and the normal leakage against the exact normals of a sphere and an
ellipsoid; the least-squares algebra against a brute-force refit."""

import itertools

import numpy as np
import pytest
import torch

from gpgeom.datasets.vector_fields import sample_ellipsoid
from gpgeom.geometry.tangent import _polynomial_correction, fit_size, frames_at, local_pca, tangent_frames


@pytest.fixture
def rng():
    # seeded per test by conftest's torch seed: fresh inputs for every GPGEOM_TEST_SEED
    return np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))


def _leak(T, N):
    """|T^T n| per point: the part of the exact unit normal n inside the estimated frame."""
    return np.linalg.norm(np.einsum("nDd,nD->nd", T, N), axis=1)


@pytest.mark.parametrize(
    ("axes", "bound"),
    # measured medians (seeds 0-2), automatic choice (sextic) / the former cubic fit on 15 points:
    # sphere 5.4e-7-6.0e-7 / 3.5e-4-3.8e-4; ellipsoid (1, 0.75, 0.5) 2.2e-5-2.7e-5 / 6.9e-4-8.0e-4
    [((1.0, 1.0, 1.0), 2e-5), ((1.0, 0.75, 0.5), 1.5e-4)],
)
def test_high_degree_frames_leak_far_less_than_the_cubic_fit(rng, axes, bound):
    X, N = sample_ellipsoid(1200, axes, seed=rng)
    T, _, used = tangent_frames(X, 2, k_pca=15, return_fit=True)
    Tc, _ = tangent_frames(X, 2, k_pca=15, fit="cubic")
    lauto, lcubic = np.median(_leak(T, N)), np.median(_leak(Tc, N))
    assert used in ("quartic", "quintic", "sextic")
    assert lauto < bound < lcubic  # the former default misses the bound
    # no frame far off: the outliers of the high-degree fit are refitted (measured 90 % quantile <= 1.4e-4)
    assert np.quantile(_leak(T, N), 0.9) < 10 * bound


def test_explicit_high_degrees_use_their_own_neighbourhoods(rng):
    X, N = sample_ellipsoid(1200, (1.0, 0.75, 0.5), seed=rng)
    assert [fit_size(f, 15, 2) for f in ("quadratic", "cubic", "quartic", "quintic", "sextic")] == [15, 15, 18, 24, 31]
    assert fit_size("quartic", 40, 2) == 40 and fit_size("pca", 15, 2) == 0
    leaks = {}
    for f in ("cubic", "quartic", "quintic", "sextic"):
        _, T, used = local_pca(X, 15, n_components=2, fit=f, return_fit=True)
        assert used == f
        leaks[f] = float(np.median(_leak(T, N)))
    # measured medians: cubic 7e-4, quartic 1.5e-4, quintic 6e-5, sextic 2.5e-5: each degree removes the next term
    assert leaks["sextic"] < leaks["quintic"] < leaks["quartic"] < leaks["cubic"] / 2


def test_positional_noise_chooses_a_low_degree(rng):
    X, N = sample_ellipsoid(1200, (1.0, 1.0, 1.0), seed=rng)
    Xn = X + 0.001 * rng.standard_normal(X.shape)  # 1.5 % of the spacing
    _, T, used = local_pca(Xn, 15, n_components=2, return_fit=True)
    assert used in ("quadratic", "cubic")
    _, Ts = local_pca(Xn, 15, n_components=2, fit="sextic")
    # the high degrees follow the noise: measured medians quadratic 4e-3, sextic 3.6e-2
    assert np.median(_leak(T, N)) < np.median(_leak(Ts, N)) / 2


def test_too_small_clouds_and_neighbourhoods(rng):
    X, _ = sample_ellipsoid(25, seed=rng)
    with pytest.raises(ValueError, match="`fit`='sextic' needs neighbourhoods of 31 points"):
        local_pca(X, 15, n_components=2, fit="sextic")
    with pytest.raises(ValueError, match="`k_pca`=30 exceeds"):
        local_pca(X, 30, n_components=2)
    with pytest.raises(ValueError, match="Unknown `fit`=.octic."):
        local_pca(X, 15, n_components=2, fit="octic")
    # the automatic choice skips the degrees the cloud is too small for (quintic needs 24 points, sextic 31)
    assert local_pca(X, 15, n_components=2, return_fit=True)[2] in ("quadratic", "cubic", "quartic", "quintic")
    assert local_pca(X[:20], 15, n_components=2, return_fit=True)[2] in ("quadratic", "cubic", "quartic")
    # explicit quadratic / cubic fits keep falling back when k_pca is too small for them
    assert local_pca(X, 10, n_components=2, fit="cubic", return_fit=True)[2] == "quadratic"
    assert local_pca(X, 6, n_components=2, fit="quadratic", return_fit=True)[2] == "pca"


def test_frames_at_cloud_points_match_the_high_degree_fit(rng):
    X, N = sample_ellipsoid(1200, seed=rng)
    _, T = local_pca(X, 15, n_components=2, fit="sextic")
    Tn = frames_at(X, X[:100], 15, 2, "sextic")
    diff = np.abs(np.einsum("nDd,nEd->nDE", T[:100], T[:100]) - np.einsum("nDd,nEd->nDE", Tn, Tn)).max((1, 2))
    # the same neighbourhoods and fit; only the points local_pca refit as outliers (score above 100 times the median)
    # may differ: measured 0-10 % of them
    assert np.mean(diff < 1e-9) > 0.75
    assert np.median(_leak(Tn, N[:100])) < 1e-4  # measured 2e-5-3e-5


def _brute_force(Y, T, degree, scored):
    """The fit of _polynomial_correction by plain least squares on unscaled monomials, and its leave-one-out error
    by refitting without each of the first ``scored`` points."""
    d = T.shape[1]
    t = Y @ T
    R = Y - t @ T.T

    def design(tt):
        cols = [np.ones(len(tt))]
        for deg in range(1, degree + 1):
            cols += [np.prod(tt[:, list(c)], axis=1) for c in itertools.combinations_with_replacement(range(d), deg)]
        return np.stack(cols, axis=1)

    F = design(t)
    coef = np.linalg.lstsq(F, R, rcond=None)[0]
    q, _ = np.linalg.qr(T + coef[1 : 1 + d].T)
    loo = []
    for j in range(scored):
        keep = np.arange(len(Y)) != j
        c = np.linalg.lstsq(F[keep], R[keep], rcond=None)[0]
        loo.append(np.sum(np.square(R[j] - F[j] @ c)))
    return q, float(np.mean(loo))


@pytest.mark.parametrize("degree", [2, 4, 6])
def test_polynomial_correction_against_brute_force_refits(rng, degree):
    X, _ = sample_ellipsoid(400, seed=rng)
    k = fit_size(("quadratic", "cubic", "quartic", "quintic", "sextic")[degree - 2], 15, 2) + 8  # leverages < 1
    nb = np.argsort(np.linalg.norm(X - X[0], axis=1))[:k]
    Y = X[nb] - X[0]
    T = np.linalg.svd(Y[:15] - Y[:15].mean(0), full_matrices=False)[2][:2].T
    q, loo = _polynomial_correction(Y[None], T[None], degree, 15)
    q_ref, loo_ref = _brute_force(Y, T, degree, 15)
    np.testing.assert_allclose(q[0] @ q[0].T, q_ref @ q_ref.T, atol=1e-9)  # the same plane
    np.testing.assert_allclose(loo[0], loo_ref, rtol=1e-5)


def test_rank_deficient_neighbourhoods_give_finite_orthonormal_frames():
    # a grid of 3 rows: the monomials of degree >= 3 in the row coordinate are dependent (least squares by pinv)
    g = np.stack(np.meshgrid(np.linspace(-1, 1, 11), np.array([-0.1, 0.0, 0.1])), -1).reshape(-1, 2)
    Y = np.column_stack([g, 0.1 * g[:, 0] ** 2])
    Y = Y - Y[16]
    T = np.eye(3)[:, :2]
    q, loo = _polynomial_correction(Y[None], T[None], 4)
    assert np.all(np.isfinite(q)) and np.isfinite(loo[0])
    np.testing.assert_allclose(q[0].T @ q[0], np.eye(2), atol=1e-12)
    # the exact tangent at the centre (x = 0): the plane z = 0
    np.testing.assert_allclose(np.abs(q[0][2]), 0.0, atol=1e-8)

"""RVGP's reading of its inputs against independent truths: a transposed cloud is named as such (and small clouds
still build, as the geometry alone builds them), and the rows of `vectors` are read as documented (one per index;
the cloud's rows when the index holds fewer points; a permuted full index refused), each reading checked against the
fit on the sorted index."""

import warnings

import numpy as np
import pytest
import torch

from gpgeom.datasets.vector_fields import sample_sphere, sphere_vector_field
from gpgeom.geometry.connection import connection_laplacian
from gpgeom.models.rvgp import RVGP


@pytest.fixture
def rng():
    # seeded per test by conftest's torch seed: fresh data for every GPGEOM_TEST_SEED
    return np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))


@pytest.mark.parametrize("scalar", [False, True])
def test_a_transposed_cloud_is_named(rng, scalar):
    r"""``RVGP(points.T)`` with a ``3 x n`` array failed with the graph's "`k` must be smaller than the number of
    points n=3", which named neither ``points`` nor the likely mistake."""
    X = sample_sphere(200, seed=rng)
    for given in (X.T, torch.as_tensor(X.T)):
        with pytest.raises(ValueError, match=r"`points` must be an \(n, D\) array .* got shape \(3, 200\)\. .*transp"):
            RVGP(given, n_eigenpairs=10, scalar=scalar)
    # too few rows, not transposed-looking (the transpose would not build either): named, no transpose hint
    with pytest.raises(ValueError, match=r"`points` .*`k_neighbors`=10 .*got shape \(10, 3\)\. Pass more") as err:
        RVGP(X[:10], n_eigenpairs=5, dim=2, scalar=scalar)
    assert "transposed" not in str(err.value)
    with pytest.raises(ValueError, match=r"`points` must have 2 dimensions"):  # named `X` before
        RVGP(X[:, :, None], n_eigenpairs=5, scalar=scalar)


def test_small_clouds_still_build_as_the_geometry_builds_them(rng):
    r"""The rule refuses only clouds the kNN graph cannot take (``n <= k_neighbors``): the smallest cloud it takes,
    and a cloud with more coordinates than points, build the same Laplacian as the geometry alone."""
    X = sample_sphere(11, seed=rng)
    W = rng.standard_normal((14, 40))  # 14 points in 40 dimensions: legitimate, D > n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for pts, kw in ((X, {"dim": 2}), (W, {"dim": 2}), (W.T[:12].T, {})):
            gp = RVGP(pts, n_eigenpairs=4, k_neighbors=10, ambient=None, **kw)
            ref = connection_laplacian(pts, 10, **kw)
            assert gp.laplacian.L.shape == ref.L.shape
            assert abs(gp.laplacian.L - ref.L).max() == 0.0


def _fit(points, index, vectors):
    gp = RVGP(points, n_eigenpairs=16, dim=2, ambient=None)
    return gp.fit(index, vectors, max_iter=30, restarts=0, progress=False)


def _assert_same_fit(a, b):
    for x, y in zip(a.predict(return_std=True), b.predict(return_std=True)):
        assert float((x - y).abs().max()) < 1e-8 * float(y.abs().max())


def test_rows_of_vectors_follow_the_documented_reading(rng):
    r"""``fit(index, vectors)`` with ``len(index) == n``: ``(n, D)`` vectors were read one row per index whatever
    the index, though the docstring said an ``(n, D)`` array is the cloud's rows; with a permuted full index the two
    readings differ, and the cloud-order one (what a shuffled index of all points with the whole field means) was
    silently misread. Now refused by name; each reading that is kept equals the fit on the sorted index."""
    s = sphere_vector_field(150, "mixed", seed=rng)
    Y = s.vectors + 0.05 * rng.standard_normal(s.vectors.shape)
    n = len(Y)
    truth_full = _fit(s.points, np.arange(n), Y)
    # a permuted full index: ambiguous, refused with the remedies
    perm = rng.permutation(n)
    with pytest.raises(ValueError, match=r"`index` is a permutation of all n=150 points.*shape \(150, 3\).*np.sort"):
        _fit(s.points, perm, Y)
    # the remedies give the truth: the sorted index with rows in cloud order, and rows per index sorted with it
    _assert_same_fit(_fit(s.points, np.sort(perm), Y), truth_full)
    order = np.argsort(perm)
    _assert_same_fit(_fit(s.points, perm[order], Y[perm][order]), truth_full)
    # fewer points than n, shuffled: rows per index, and the cloud's rows, both equal the fit on the sorted index
    sub = rng.choice(n, 60, replace=False)
    truth = _fit(s.points, np.sort(sub), Y[np.sort(sub)])
    _assert_same_fit(_fit(s.points, sub, Y[sub]), truth)
    _assert_same_fit(_fit(s.points, sub, Y), truth)
    # a full-length index with repeats is read one row per index (the documented rule for len(index) == n)
    rep = rng.integers(0, n, n)
    Yrep = s.vectors[rep] + 0.05 * rng.standard_normal((n, 3))
    gp = _fit(s.points, rep, Yrep)
    np.testing.assert_array_equal(gp.train_index_.numpy(), rep)
    np.testing.assert_allclose((gp.data_y * gp.y_scale).numpy(), Yrep, rtol=1e-14, atol=1e-15)

"""RVGP against the plain Euclidean GP at test sizes (the claims of benchmarks/rvgp.py), and predict_at in chunks
under a memory budget."""

import math

import numpy as np
import pytest
import torch
from gpytorch.kernels import RBFKernel, ScaleKernel

from gpgeom.botorch.exact_gp import ExactGPModel
from gpgeom.datasets.vector_fields import ellipsoid_vector_field, sphere_vector_field, swiss_roll_vector_field
from gpgeom.engine.chunking import chunk_size_for
from gpgeom.metrics import relative_l2
from gpgeom.models.rvgp import RVGP, OutOfReachWarning


@pytest.fixture
def seed():
    # seeded per test by conftest's torch seed: fresh data for every GPGEOM_TEST_SEED
    return int(torch.randint(0, 2**31 - 1, ()).item())


def _euclidean(X, V, tr, te):
    """One RBF kernel on xyz shared by the three components, hyperparameters learnt with restarts."""
    Xt, Yt = torch.as_tensor(X), torch.as_tensor(V)
    gp = ExactGPModel(Xt[tr], Yt[tr], covar_module=ScaleKernel(RBFKernel()), shared_hyperparameters=True)
    return gp.fit(restarts=2, seed=0, progress=False).predict(Xt[te]).numpy()


# measured ratios RVGP / Euclidean GP (seeds 0-2): ellipsoid rough 0.985-0.997, smooth 0.32-0.40 (600 points), Swiss
# roll of 1.5 turns 0.23-0.33 (700 points); the benchmark's targets at 1200 points: 1.2, 2 and 0.7
@pytest.mark.parametrize(
    "case, n, target",
    [("ellipsoid rough", 600, 1.2), ("ellipsoid smooth", 600, 2.0), ("Swiss roll", 700, 0.7)],
)
def test_rvgp_matches_or_beats_the_euclidean_gp(seed, case, n, target):
    if case == "Swiss roll":
        s = swiss_roll_vector_field(n, turns=1.5, seed=seed)
    else:
        s = ellipsoid_vector_field(n, case.split()[1], seed=seed)
    perm = np.random.default_rng(seed).permutation(n)
    tr, te = perm[: int(0.3 * n)], perm[int(0.3 * n) :]
    truth = s.clean_vectors[te]
    gp = RVGP(s.points, n_eigenpairs=50).fit(tr, s.vectors[tr])
    assert gp.uses_ambient
    err = relative_l2(gp.predict(te), truth)
    err_euclid = relative_l2(_euclidean(s.points, s.vectors, tr, te), truth)
    assert err < target * err_euclid, (err, err_euclid)
    if case != "ellipsoid rough":  # and the spectral kernel alone does not (ratios 4-50 measured at 1200 points)
        alone = RVGP(s.points, n_eigenpairs=50, ambient=None, laplacian=gp.laplacian).fit(tr, s.vectors[tr])
        assert relative_l2(alone.predict(te), truth) > 2 * err_euclid


@pytest.fixture(scope="module")
def small_fit():
    s = sphere_vector_field(400, "mixed", seed=0)
    tr = np.arange(0, 400, 2)
    return s, RVGP(s.points, n_eigenpairs=30, dim=2).fit(tr, s.vectors[tr], max_iter=30)


def test_predict_at_in_chunks_equals_one_chunk(small_fit, monkeypatch):
    s, gp = small_fit
    rng = np.random.default_rng(1)
    P = s.points[rng.integers(0, 400, 250)] + 0.02 * rng.standard_normal((250, 3))
    P[:5] *= 3.0  # far points too
    with pytest.warns(OutOfReachWarning, match="5 of 250 new points"):  # once, for all the chunks
        one = gp.predict_at(P, return_std=True, chunk_size=10**6, max_memory="64GB")
    calls = []
    extend = gp._extend
    monkeypatch.setattr(gp, "_extend", lambda *a, **k: calls.append(len(a[0])) or extend(*a, **k))
    per = gp._bytes_per_point(new=True)
    assert chunk_size_for(per, 40 * per, total=250) == 40
    with pytest.warns(OutOfReachWarning) as record:
        chunked = gp.predict_at(P, return_std=True, max_memory=40 * per)
    assert len(record) == 1
    assert calls == [40] * 6 + [10]  # seven chunks of the budget's size
    scale = float(one[0].abs().max())
    for a, b in zip(chunked, one):
        # the dense algebra's rounding depends on the shapes (1e-10 of the field measured), not the chunks' content
        torch.testing.assert_close(a, b, rtol=0, atol=1e-8 * scale)
    calls.clear()
    cov = gp.predict_at(P[5:35], return_cov=True, chunk_size=7)[1]
    assert calls == [7] * 4 + [2]  # chunk_size caps the budget
    cov_one = gp.predict_at(P[5:35], return_cov=True)[1]
    torch.testing.assert_close(cov, cov_one, rtol=0, atol=1e-8 * scale**2)
    torch.testing.assert_close(torch.diagonal(cov, dim1=-2, dim2=-1).sqrt(), one[1][5:35], rtol=1e-6, atol=0)


def test_budgeted_predict_equals_predict_and_bad_inputs(small_fit):
    s, gp = small_fit
    a = gp.predict(None, return_std=True)
    b = gp.predict(None, return_std=True, max_memory=gp._bytes_per_point(new=False) * 16)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-8 * float(a[0].abs().max()))
    empty = gp.predict_at(np.zeros((0, 3)), return_std=True)  # as predict([]): empty results, not an error
    assert [tuple(t.shape) for t in empty] == [(0, 3), (0, 3)] and empty[0].dtype == a[0].dtype
    with pytest.raises(ValueError, match=r"`points` must have shape \(m, 3\), got \(4, 2\)"):
        gp.predict_at(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="chunk_size"):
        gp.predict_at(s.points[:3], chunk_size=0)
    alone = RVGP(s.points, n_eigenpairs=30, dim=2, ambient=None, laplacian=gp.laplacian)
    with pytest.raises(ValueError, match="need a model with an ambient part"):
        alone.set_hyperparameters(ambient_lengthscale=0.5)


def test_bytes_per_point_grow_with_the_dense_training_set(small_fit):
    s, gp = small_fit
    # the ambient part's cross-covariance and solve: 4 float64 (D x N d) rows per point, N = 200, d = 2, D = 3
    dense = 8 * 4 * 3 * 2 * 200
    alone = RVGP(s.points, n_eigenpairs=30, dim=2, ambient=None, laplacian=gp.laplacian)
    alone.fit(np.arange(0, 400, 2), s.vectors[::2], max_iter=1)
    assert not alone.uses_ambient and gp.uses_ambient
    assert gp._bytes_per_point(new=False) - alone._bytes_per_point(new=False) == dense
    assert math.isclose(
        gp._bytes_per_point(new=True) - gp._bytes_per_point(new=False),
        alone._bytes_per_point(new=True) - alone._bytes_per_point(new=False),
    )


def test_a_float32_model_predicts_at_new_points_of_a_cloud_far_from_the_origin():
    r"""A georeferenced cloud (a sphere of radius 50 placed at ``(5e5, 5e6, 100)``) must give the predictions of the
    same cloud at the origin: the kernels are stationary. ``predict_at`` of a float32 model rounded the new points'
    absolute coordinates to float32 (0.5 at 5e6) before the ambient kernel took their differences, and its standard
    deviations were off by 3.6x their largest, its means by 1.4e-3; now both agree to 1e-5 (the ambient inputs are
    taken relative to the cloud's centroid in float64)."""

    s = sphere_vector_field(150, "mixed", seed=0)
    P, V = 50.0 * np.asarray(s.points, dtype=np.float64), torch.as_tensor(np.asarray(s.vectors), dtype=torch.float32)
    new = 50.0 * np.asarray(sphere_vector_field(5, "mixed", seed=1).points, dtype=np.float64)
    tr = torch.arange(0, 150, 3)
    out = []
    for off in (np.zeros(3), np.array([5e5, 5e6, 100.0])):
        gp = RVGP(P + off, n_eigenpairs=16, dtype=torch.float32).fit(tr, V[tr], seed=0, max_iter=30)
        out.append(gp.predict_at(new + off, return_std=True))
    (m0, s0), (m1, s1) = out
    assert float((m1 - m0).abs().max()) < 1e-5 * float(m0.abs().max())
    assert float((s1 - s0).abs().max()) < 1e-5 * float(s0.max())

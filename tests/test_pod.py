import numpy as np
import pytest
import torch
import triangle

from gpgeom.geometry.fem import mass_matrix
from gpgeom.geometry.mesh import Mesh
from gpgeom.geometry.pod import SnapshotPOD


def _rng():
    return np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))


def disk_mesh(n_boundary=48, area=0.004):
    a = 2 * np.pi * np.arange(n_boundary) / n_boundary
    V = np.c_[np.cos(a), np.sin(a)]
    S = np.c_[np.arange(n_boundary), (np.arange(n_boundary) + 1) % n_boundary]
    T = triangle.triangulate({"vertices": V, "segments": S}, f"pqa{area}")
    return Mesh(T["vertices"], T["triangles"])


def smooth_snapshots(rng, mesh, n, n_comp=None):
    """Random smooth fields: random combinations of a few low-order polynomials and trigonometric functions."""
    x, y = mesh.points.T
    basis = np.stack([np.ones_like(x), x, y, x * y, x**2 - y**2, np.sin(3 * x), np.cos(2 * y), np.exp(x * y)])
    shape = (n, len(basis)) if n_comp is None else (n, n_comp, len(basis))
    coef = rng.normal(size=shape)
    U = coef @ basis
    return U if n_comp is None else U.transpose(0, 2, 1)


def test_all_modes_reconstruct_training_snapshots_and_are_M_orthonormal():
    rng = _rng()
    mesh = disk_mesh()
    M = mass_matrix(mesh)
    U = rng.normal(size=(25, mesh.n_points)) + smooth_snapshots(rng, mesh, 25)
    pod = SnapshotPOD().fit(U, M)
    assert pod.n_modes_ == 24  # centred: rank n - 1
    assert pod.modes_.shape == (24, mesh.n_points) and pod.mean_.shape == (mesh.n_points,)
    G = pod.modes_ @ (M @ pod.modes_.T)
    np.testing.assert_allclose(G, np.eye(24), atol=1e-10)
    A = pod.transform(U)
    R = pod.inverse_transform(A)
    assert np.abs(R - U).max() < 1e-10 * np.abs(U).max()
    assert np.all(np.diff(pod.eigenvalues_) <= 0)
    # eigenvalues = variance of the coefficients; coefficients of the training set are V Lambda^(1/2)
    np.testing.assert_allclose((A**2).sum(0), pod.eigenvalues_, rtol=1e-10)
    # a fresh snapshot: transform is the M-orthogonal projection onto mean + span(modes)
    u = smooth_snapshots(rng, mesh, 1)
    r = pod.inverse_transform(pod.transform(u))[0] - pod.mean_
    resid = (u[0] - pod.mean_) - r
    np.testing.assert_allclose(pod.modes_ @ (M @ resid), 0.0, atol=1e-9 * np.abs(u).max())


def test_uncentred_pod_like_the_reference():
    rng = _rng()
    mesh = disk_mesh(24, 0.02)
    M = mass_matrix(mesh)
    U = smooth_snapshots(rng, mesh, 6)
    pod = SnapshotPOD(center=False).fit(U, M)
    assert pod.n_modes_ == 6 and not pod.mean_.any()
    np.testing.assert_allclose(pod.inverse_transform(pod.transform(U)), U, atol=1e-10 * np.abs(U).max())
    # reference: C = S M S^T, eigenvalues of C
    lam = np.sort(np.linalg.eigvalsh(U @ (M @ U.T)))[::-1]
    np.testing.assert_allclose(pod.eigenvalues_, lam, rtol=1e-8)


def test_vector_snapshots_with_per_node_and_flattened_mass():
    rng = _rng()
    mesh = disk_mesh(32, 0.01)
    U = smooth_snapshots(rng, mesh, 10, n_comp=2)  # (10, n, 2)
    M = mass_matrix(mesh)
    p1 = SnapshotPOD().fit(U, M)
    p2 = SnapshotPOD().fit(U, mass_matrix(mesh, 2, "interleaved"))
    np.testing.assert_allclose(p1.eigenvalues_, p2.eigenvalues_, rtol=1e-10)
    assert p1.modes_.shape == (p1.n_modes_, mesh.n_points, 2)
    np.testing.assert_allclose(p1.inverse_transform(p1.transform(U)), U, atol=1e-10 * np.abs(U).max())
    # blocked layout on interleaved data (the reference quirk): still an SPD inner product, still exact
    p3 = SnapshotPOD().fit(U, mass_matrix(mesh, 2, "blocked"))
    np.testing.assert_allclose(p3.inverse_transform(p3.transform(U)), U, atol=1e-10 * np.abs(U).max())
    Phi = p3.modes_.reshape(p3.n_modes_, -1)
    np.testing.assert_allclose(Phi @ (mass_matrix(mesh, 2, "blocked") @ Phi.T), np.eye(p3.n_modes_), atol=1e-10)


def test_energy_truncation_on_a_low_rank_case():
    rng = _rng()
    mesh = disk_mesh(32, 0.01)
    M = mass_matrix(mesh)
    # three M-orthonormal directions with standard deviations 10, 3, 1, plus tiny noise
    Q = smooth_snapshots(rng, mesh, 3)
    R = np.linalg.cholesky(Q @ (M @ Q.T))
    Psi = np.linalg.solve(R, Q)
    coef = rng.normal(size=(400, 3))
    coef = np.linalg.qr(coef - coef.mean(0))[0] * np.sqrt(400) * [10.0, 3.0, 1.0]  # uncorrelated, centred
    U = 5.0 + coef @ Psi + 1e-7 * rng.normal(size=(400, mesh.n_points))
    lam_share = np.array([100.0, 9.0, 1.0]) / 110.0
    assert SnapshotPOD(energy=0.90).fit(U, M).n_modes_ == 1
    assert SnapshotPOD(energy=0.95).fit(U, M).n_modes_ == 2
    pod = SnapshotPOD(energy=0.999).fit(U, M)
    assert pod.n_modes_ == 3
    np.testing.assert_allclose(pod.explained_energy_ratio_, lam_share, rtol=1e-3)
    assert SnapshotPOD(n_modes=2).fit(U, M).n_modes_ == 2


def test_identity_inner_product_and_torch_input():
    rng = _rng()
    U = torch.as_tensor(rng.normal(size=(8, 30)))
    pod = SnapshotPOD().fit(U)
    np.testing.assert_allclose(pod.modes_ @ pod.modes_.T, np.eye(7), atol=1e-10)
    A = pod.fit_transform(U)
    assert isinstance(A, np.ndarray) and A.dtype == np.float64 and A.shape == (8, 7)
    np.testing.assert_allclose(pod.inverse_transform(torch.as_tensor(A)), U.numpy(), atol=1e-10)


def test_rank_deficient_request_warns_and_truncates():
    rng = _rng()
    U = np.outer(rng.normal(size=6), rng.normal(size=20))  # rank 1 after centring
    with pytest.warns(UserWarning, match="Only 1 POD mode"):
        pod = SnapshotPOD(n_modes=3).fit(U)
    assert pod.n_modes_ == 1


def test_pod_bad_input():
    rng = _rng()
    mesh = disk_mesh(16, 0.05)
    M = mass_matrix(mesh)
    U = rng.normal(size=(5, mesh.n_points))
    bad = U.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="`snapshots` contains 1 NaN"):
        SnapshotPOD().fit(bad, M)
    with pytest.raises(ValueError, match="`mass` must be"):
        SnapshotPOD().fit(U[:, :-1], M)
    M_bad = M.copy().tocsr()
    M_bad.data[:2] = [np.nan, np.inf]
    with pytest.raises(ValueError, match="`mass` must be finite, got 2 NaN or inf value"):
        SnapshotPOD().fit(U, M_bad)
    pod = SnapshotPOD().fit(U, M)
    with pytest.raises(ValueError, match=rf"must have shape \(n_samples, {mesh.n_points}\)"):
        pod.transform(U[:, :-1])
    with pytest.raises(ValueError, match="trailing shape"):
        pod.inverse_transform(np.zeros((2, pod.n_modes_ + 1)))
    with pytest.raises(ValueError, match="either `n_modes` or `energy`"):
        SnapshotPOD(3, energy=0.9)
    with pytest.raises(ValueError, match="fraction in"):
        SnapshotPOD(energy=1.5)
    with pytest.raises(TypeError, match="`n_modes` must be an int"):
        SnapshotPOD(2.5)
    with pytest.raises(ValueError, match="exceeds the number of snapshots"):
        SnapshotPOD(6).fit(U, M)
    with pytest.raises(RuntimeError, match="not fitted"):
        SnapshotPOD().transform(U)
    with pytest.raises(ValueError, match="no energy"):
        SnapshotPOD().fit(np.ones((4, 10)))
    with pytest.raises(TypeError, match="unexpected keyword"):
        SnapshotPOD(modes=3)


def test_zero_snapshots_transform_to_zero_rows():
    r"""``transform`` of no snapshot is ``(0, n_modes_)``, like ``inverse_transform`` of no coefficient (it raised
    numpy's "cannot reshape array of size 0"); scalar and vector fields."""
    rng = np.random.default_rng(0)
    for shape in ((5, 7), (5, 7, 2)):
        X = rng.normal(size=shape)
        pod = SnapshotPOD().fit(X)
        A = pod.transform(X[:0])
        assert A.shape == (0, pod.n_modes_)
        assert pod.inverse_transform(A).shape == (0,) + shape[1:]
        np.testing.assert_allclose(pod.transform(X[:1]), pod.transform(X)[:1], rtol=0, atol=1e-12)


def _aligned(modes, ref):
    r"""``modes`` ``(k, F)`` with each row's sign matched to ``ref``'s (a mode is defined up to its sign)."""
    return modes * np.sign(np.einsum("ij,ij->i", modes, ref))[:, None]


@pytest.mark.parametrize(
    "scale, dtype", [(1e200, np.float64), (1e-200, np.float64), (1e30, np.float32), (1e-30, np.float32)]
)
def test_pod_is_scale_equivariant_at_extreme_magnitudes(scale, dtype):
    r"""POD of ``s X`` has the modes of ``X`` and ``s`` times its mean and coefficients. The Gram matrix of
    snapshots of 1e200 overflowed ("Eigenvalues did not converge"); of 1e-200 it underflowed to zero ("The
    snapshots carry no energy"). The truth is the POD of the same snapshots at unit scale."""
    mesh = disk_mesh(16, 0.05)
    M = mass_matrix(mesh)
    X = smooth_snapshots(np.random.default_rng(0), mesh, 7)
    Xs = (X * scale).astype(dtype)  # float32 snapshots as given (torch float32 below), 1e30 and 1e-30 are normal
    X1 = Xs.astype(np.float64) / scale  # the same snapshots at unit scale (to a rounding of the division)
    ref = SnapshotPOD(4).fit(X1, M)
    pod = SnapshotPOD(4).fit(torch.as_tensor(Xs), M)
    assert pod.n_modes_ == 4
    np.testing.assert_allclose(_aligned(pod.modes_, ref.modes_), ref.modes_, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(pod.mean_ / scale, ref.mean_, rtol=1e-12, atol=1e-12 * np.abs(X1).max())
    np.testing.assert_allclose(pod.explained_energy_ratio_, ref.explained_energy_ratio_, rtol=1e-10)
    a, a1 = pod.transform(Xs), ref.transform(X1)
    sign = np.sign(np.einsum("ij,ij->i", pod.modes_, ref.modes_))
    np.testing.assert_allclose(a * sign / scale, a1, rtol=1e-9, atol=1e-9 * np.abs(a1).max())
    R1 = ref.inverse_transform(a1)  # 4 of 6 modes: the truncated reconstruction
    np.testing.assert_allclose(pod.inverse_transform(a) / scale, R1, rtol=0, atol=1e-9 * np.abs(R1).max())
    # the eigenvalues are squares in the snapshots' units: 1e400 and 1e-400 are outside float64 (documented)
    if scale == 1e200:
        assert np.isinf(pod.eigenvalues_).all()
    elif scale == 1e-200:
        assert not pod.eigenvalues_.any()
    else:
        np.testing.assert_allclose(pod.eigenvalues_ / scale**2, ref.eigenvalues_, rtol=1e-9)


@pytest.mark.parametrize("power", [-700, -3, 600])
def test_pod_of_power_of_two_scaled_snapshots_is_the_scaled_pod_exactly(power):
    r"""Scaling by a power of two is exact in binary floating point, and so is the POD's: the modes are those of the
    unscaled snapshots bit for bit, the mean and coefficients ``2^power`` times theirs."""
    mesh = disk_mesh(16, 0.05)
    M = mass_matrix(mesh)
    X = smooth_snapshots(np.random.default_rng(1), mesh, 6, n_comp=2)
    ref, pod = SnapshotPOD(3).fit(X, M), SnapshotPOD(3).fit(np.ldexp(X, power), M)
    np.testing.assert_array_equal(pod.modes_, ref.modes_)
    np.testing.assert_array_equal(pod.mean_, np.ldexp(ref.mean_, power))
    np.testing.assert_array_equal(pod.transform(np.ldexp(X, power)), np.ldexp(ref.transform(X), power))

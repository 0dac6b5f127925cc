r"""RVGP's scalar targets far from zero (:mod:`gpgeom.models.rvgp`, *Targets*): centred on their training mean and
scaled by their standard deviation in float64, whatever the model's dtype, so that y = 1e6 + 0.1 f (a temperature in
kelvin, a pressure in Pa) is fitted as 0.1 f is.

Independent truth: the float64 model fitted on the values without the offset (plus the offset), and the shift itself:
the model of y + c must predict the mean of the model of y plus c and the same standard deviation, at cloud points,
new points, through BoTorch's posterior and after conditioning (whose own reference is the refit on the union).
Before the fix the values were only scaled by their root mean square: at 1e6 the noise variance sat at its floor
(1e-6 of the scale squared, a noise std of 1000) and the float64 model predicted a std of 152 (0.0007 without the
offset) and a mean off by 0.029 rms (0.00046).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rvgp_factories import index_column

from gpgeom.datasets.vector_fields import sample_sphere
from gpgeom.errors import ModelFileError
from gpgeom.models.rvgp import RVGP

OFFSET, NOISE = 1e6, 0.002


@pytest.fixture(scope="module")
def sphere():
    r"""A 300-point sphere, its graph Laplacian, a smooth field ``0.1 f`` plus noise and a train/test split."""
    X = sample_sphere(300, seed=0)
    rng = np.random.default_rng(0)
    f = X[:, 0] * X[:, 1] + 0.5 * X[:, 2]
    y = 0.1 * f + NOISE * rng.standard_normal(300)
    perm = rng.permutation(300)
    lap = RVGP(X, n_eigenpairs=25, scalar=True).laplacian
    return X, y, perm[:150], perm[150:], lap


def _fit(sphere, shift, dtype=torch.float64, **kw):
    X, y, tr, _, lap = sphere
    model = RVGP(X, n_eigenpairs=25, scalar=True, laplacian=lap, dtype=dtype, **kw)
    return model.fit(tr, torch.as_tensor(y[tr] + shift), max_iter=80)


def _moments(model, index):
    m, s = model.predict(index, return_std=True)
    return m.detach().double().numpy()[:, 0], s.detach().double().numpy()[:, 0]


@pytest.fixture(scope="module")
def reference(sphere):
    return _fit(sphere, 0.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_large_offset_predicts_as_the_values_without_it(sphere, reference, dtype):
    # was: std 152 against 0.0007 (float64 and float32), mean off by 0.029 rms (float64) and 0.050 (float32); now the
    # std agrees to 1e-4 and the float64 mean to 1e-9 (float32: 0.018 rms, its rounding at 1e6)
    te = sphere[3]
    m0, s0 = _moments(reference, te)
    model = _fit(sphere, OFFSET, dtype)
    m, s = _moments(model, te)
    np.testing.assert_allclose(s / s0, 1.0, atol=0.01)
    # float32 returns the mean to its spacing at 1e6 (0.0625): at most half of it off, plus the model's own error
    atol = 1e-7 if dtype == torch.float64 else 0.035
    np.testing.assert_allclose(m - OFFSET, m0, rtol=0.0, atol=atol)
    noise = float(model.observation_noise_variance) * model.y_scale**2
    assert noise == pytest.approx(float(reference.observation_noise_variance) * reference.y_scale**2, rel=1e-3)
    assert model.y_offset == pytest.approx(OFFSET + float(np.mean(sphere[1][sphere[2]])), abs=1e-9)


@pytest.mark.parametrize("ambient", ["rbf", None])
@pytest.mark.parametrize("shift", [3.7, -2e5])
def test_a_shift_of_the_values_shifts_the_mean_and_keeps_the_std(sphere, reference, ambient, shift):
    # was (rbf): std 1.78 (3.7) and 5e4 (-2e5) times that of y, the noise std at its floor, 1e-3 of the values'
    # rms (0.0037, 200; 0.002 for y), means off by 1.5e-4 and 0.05; now 2e-5 and 6e-9
    X, _, _, te, _ = sphere
    base = reference if ambient == "rbf" else _fit(sphere, 0.0, ambient=None)
    model = _fit(sphere, shift, ambient=ambient)
    m0, s0 = _moments(base, te)
    m, s = _moments(model, te)
    np.testing.assert_allclose(m - shift, m0, rtol=0.0, atol=1e-6 * (1 + abs(shift)) * 1e-3)
    np.testing.assert_allclose(s, s0, rtol=1e-4)  # the optimiser stops within 2e-5
    # new points near the cloud and far from it, where the prediction returns to the prior: its mean is the offset
    P = np.concatenate([X[te[:3]] * 1.01, [[0.0, 0.0, 9.0]]])
    with pytest.warns(UserWarning, match="beyond the graph's reach"):
        mp0, sp0 = base.predict_at(P, return_std=True)
    with pytest.warns(UserWarning, match="beyond the graph's reach"):
        mp, sp = model.predict_at(P, return_std=True)
    np.testing.assert_allclose(mp.numpy() - shift, mp0.numpy(), rtol=0.0, atol=1e-6 * (1 + abs(shift)) * 1e-3)
    np.testing.assert_allclose(sp.numpy(), sp0.numpy(), rtol=1e-4)
    assert abs(float(mp[-1, 0]) - model.y_offset) < 3 * float(sp[-1, 0])  # the prior mean far away


def test_botorch_posterior_and_conditioning_carry_the_offset(sphere, reference):
    # the posterior equals predict; conditioning the offset model on y + 1e6 equals the refit on the union and the
    # model without the offset conditioned on y, shifted
    X, y, _, te, _ = sphere
    model = _fit(sphere, OFFSET)
    Xq = index_column(te[:5])
    post = model.posterior(Xq)
    m, s = model.predict(te[:5], return_std=True)
    torch.testing.assert_close(post.mean, m, rtol=0.0, atol=1e-9)
    torch.testing.assert_close(post.variance.sqrt(), s, rtol=1e-8, atol=0.0)
    Xn = index_column(te[5:9])
    Yn = torch.as_tensor(y[te[5:9]] + 0.01)[:, None]
    cond = model.condition_on_observations(Xn, Yn + OFFSET)
    cond0 = reference.condition_on_observations(Xn, Yn)
    refit = model.rebuild_with(Xn, Yn + OFFSET)
    got = cond.posterior(Xq)
    for other, shift in ((refit.posterior(Xq), 0.0), (cond0.posterior(Xq), OFFSET)):
        torch.testing.assert_close(got.mean, other.mean + shift, rtol=0.0, atol=1e-7)
        torch.testing.assert_close(got.variance, other.variance, rtol=1e-4, atol=0.0)


def test_the_offset_survives_save_and_load_and_old_files_read_zero(sphere, tmp_path):
    model = _fit(sphere, OFFSET)
    te = sphere[3]
    path = tmp_path / "scalar.pt"
    model.save(path)
    back = RVGP.load(path)
    assert back.y_offset == model.y_offset and back.y_scale == model.y_scale
    for a, b in zip(model.predict(te, return_std=True), back.predict(te, return_std=True), strict=True):
        assert torch.equal(a, b)
    # a file written before the offset (no "y_offset" in its state) holds values scaled only: read with offset 0,
    # it predicts mean * scale as it did, here the model's own centred prediction
    blob = torch.load(path, weights_only=True)
    del blob["state"]["y_offset"]
    blob["gpgeom_model"]["format_version"] = 3  # the layout before the offset
    torch.save(blob, old := tmp_path / "old.pt")
    loaded = RVGP.load(old)
    assert loaded.y_offset == 0.0
    torch.testing.assert_close(loaded.predict(te), model.predict(te) - model.y_offset, rtol=0.0, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_vector_fields_keep_their_scale_bit_for_bit(dtype):
    # vector fields are not centred and must fit and predict as before the offset: scaled by the root mean square of
    # the vectors in the model's dtype. The correctly rounded float64 sum moved the scale by 1 ulp (float64; 4e-8
    # relative in float32) and every prediction with it (2.6e-12 in the means, 5.6e-12 in the stds, float64)
    X = sample_sphere(300, seed=0)
    rng = np.random.default_rng(0)
    V = np.cross(X, np.array([0.3, 0.1, 1.0])) + 0.01 * rng.standard_normal(X.shape)
    tr = np.arange(0, 300, 2)
    model = RVGP(X, n_eigenpairs=25, dim=2, dtype=dtype).fit(tr, torch.as_tensor(V[tr]), max_iter=1)
    Vt = torch.as_tensor(V[tr]).to(dtype)
    assert model.y_offset == 0.0
    assert model.y_scale == float(Vt.square().mean().sqrt())
    assert torch.equal(model.data_y, Vt / model.y_scale)


def test_a_reader_without_the_offset_refuses_a_centred_file(sphere, tmp_path, monkeypatch):
    # a scalar file holds data_y less the offset: a gpgeom that reads the layout before it (format 3) must refuse it
    # rather than drop the offset. It loaded it and predicted means off by the training mean (-0.048 for 19.95 on
    # values 20 + 0.1 f; 1e6 here), since the format version had not moved.
    model = _fit(sphere, OFFSET)
    path = tmp_path / "scalar.pt"
    model.save(path)
    monkeypatch.setattr(RVGP, "_format_version", 3)  # the reader before the offset
    monkeypatch.setattr(RVGP, "_oldest_format_version", None, raising=False)
    with pytest.raises(ModelFileError, match="format version"):
        RVGP.load(path)

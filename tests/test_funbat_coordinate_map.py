r"""FunBaT's coordinate map (:mod:`gpgeom.models.funbat.inputs`): applied in float64 whatever the model's dtype.

Independent truths: the fit of the same model on the coordinates without their offset (FunBaT normalises each mode
by its training range, so an affine change of a mode's units must leave the predictions as they are), and the
float64 model itself for the same model moved to float32 (``to`` only rounds).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from gpgeom.datasets.tensors import make_synthetic_tensor
from gpgeom.errors import ConvergenceWarning
from gpgeom.models.funbat import FunBaT
from gpgeom.models.funbat.priors import initial_positions

D = torch.float64


def _fit(X, y, **kw):
    kw = {"max_sweeps": 6, "min_sweeps": 6, "tol": 0.0, "n_restarts": 0, **kw}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return FunBaT(2, **kw).fit(X, y)


def test_a_float32_model_keeps_coordinates_with_a_large_offset():
    r"""Coordinates of about 1.7e9 (Unix seconds) spanning 1000: float32 spaces 1.7e9 by 128, so converting them to
    the model's float32 before subtracting the training minimum left at most 8 distinct values per mode, and the
    predictions were off by 0.94 (the signal's standard deviation is 1) from the fit on the same coordinates without
    the offset; now they agree exactly (the same normalised coordinates, mapped in float64)."""
    d = make_synthetic_tensor(200, 50, rank=2, n_coords=12, noise_sd=0.05, seed=3)
    X, Xt = 1e3 * d.X_train, 1e3 * d.X_test
    ref = _fit(X, d.y_train, dtype=torch.float32).predict(Xt)
    off = _fit(X + 1.7e9, d.y_train, dtype=torch.float32)
    assert float((off.predict(Xt + 1.7e9) - ref).abs().max()) < 1e-5
    # the map is float64 in the float32 model; its lengthscales are in the original units, in the model's dtype
    assert off.coord_lo.dtype == D and off.lengthscales_.dtype == torch.float32


def _station_day(seed: int = 0):
    r"""A day x station table with station codes :math:`10 s / 11` (as ``load_beijing_air(station=True)`` codes
    them: not exact in binary), a rank-2 structure and noise sd 0.05; 70 % of the cells for training."""
    g = torch.Generator().manual_seed(seed)
    days, stations = torch.arange(30, dtype=D), 10.0 * torch.arange(12, dtype=D) / 11.0
    X = torch.cartesian_prod(days, stations)
    a, b = torch.sin(X[:, 0] / 4), torch.randn(12, 2, generator=g, dtype=D)
    s = torch.searchsorted(stations, X[:, 1].contiguous())
    y = a * b[s, 0] + torch.cos(X[:, 0] / 7) * b[s, 1] + 0.05 * torch.randn(len(X), generator=g, dtype=D)
    keep = torch.rand(len(X), generator=g) < 0.7
    return X[keep], y[keep], X[~keep]


def test_without_normalisation_a_float32_model_keeps_coordinates_with_a_large_offset():
    r"""``normalize_coordinates=False`` with Unix times in hours (about 4.7e5, float32 spacing 0.03 h) over ten days
    and a lengthscale of a day: the coordinates were rounded to float32 as they were, and the ELBO was -143 where the
    same data at the origin give -416, the predictions off by 4x their size. The shift by the training minimum is now
    taken in float64, so the fit equals the origin's (the same coordinates, to float64 rounding of the offset)."""
    d = make_synthetic_tensor(200, 50, rank=2, n_coords=12, noise_sd=0.05, seed=3)
    X, Xt = 240.0 * d.X_train, 240.0 * d.X_test
    shift = torch.tensor([1.7e9 / 3600, 0.0, 0.0], dtype=D)
    kw = {"dtype": torch.float32, "normalize_coordinates": False, "lengthscale": [24.0, 72.0, 72.0]}
    ref, off = _fit(X, d.y_train, **kw), _fit(X + shift, d.y_train, **kw)
    assert abs(off.elbo() - ref.elbo()) < 1e-4 * abs(ref.elbo())
    mean, sd = ref.predict(Xt, return_std=True)
    mean_off, sd_off = off.predict(Xt + shift, return_std=True)
    assert float((mean_off - mean).abs().max()) < 1e-4 * float(mean.abs().max())
    assert float((sd_off - sd).abs().max()) < 1e-4 * float(sd.max())


def test_without_normalisation_a_shifted_mode_gives_the_same_fit():
    r"""A stationary prior does not see where a mode sits: shifting the coordinates of a mode that spans 240 units
    (``normalize_coordinates=False``) by 5 or -0.3 must leave the float64 fit as it is. The initial factors were a
    cosine of the raw coordinates (period 2 units), so the shift moved the initial state and the ELBO it converged to
    (198.37 against 197.76 for a shift by 5 on a test case of the same form)."""
    d = make_synthetic_tensor(200, 50, rank=2, n_coords=12, noise_sd=0.05, seed=3)
    X, Xt = 240.0 * d.X_train, 240.0 * d.X_test
    kw = {"normalize_coordinates": False, "lengthscale": [24.0, 72.0, 72.0]}
    ref = _fit(X, d.y_train, **kw)
    for dx in (5.0, -0.3):
        shift = torch.tensor([0.0, dx, 0.0], dtype=D)
        off = _fit(X + shift, d.y_train, **kw)
        assert abs(off.elbo() - ref.elbo()) < 1e-8 * abs(ref.elbo())
        assert float((off.predict(Xt + shift) - ref.predict(Xt)).abs().max()) < 1e-8


def test_initial_positions_of_a_continuous_mode_span_its_range():
    r"""The initial factors :math:`\cos(\pi r s)` take a continuous mode's coordinates mapped onto ``[0, 1]`` by
    their range, whatever their units: the raw coordinates (``normalize_coordinates=False``) gave a cosine of period
    2 units, 120 periods over a mode spanning 240 hours."""
    t = torch.tensor([472222.0, 472230.5, 472300.0, 472462.0], dtype=D)
    s, perm = initial_positions(t, torch.arange(4), torch.zeros(4, dtype=D), categorical=False)
    assert torch.allclose(s, torch.tensor([0.0, 8.5 / 240, 78.0 / 240, 1.0], dtype=D), rtol=0, atol=1e-15)
    assert perm.tolist() == [0, 1, 2, 3]
    s1, _ = initial_positions(t[:1], torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=D), categorical=False)
    assert s1.tolist() == [0.0]


@pytest.mark.parametrize("kw", [{"categorical": 1}, {"noise": "student_t", "scale_mode": 1}])
def test_moving_a_model_keeps_its_training_labels_and_groups(kw, tmp_path):
    r"""After ``to(dtype=torch.float32)`` a station code :math:`10 s / 11` was normalised in float32 while the
    training ones had been rounded from float64; the two differ in the last bit for some codes, which a categorical
    mode (equal labels only) then treated as unseen labels (the prior) and ``scale_mode`` as unseen groups. The move
    changed the means by 0.67 and the standard deviations of new observations by a factor of up to 21 (categorical), or
    those by 4 % (shared scales); a float32 fit moved to float64: 2.1 and 21 times, or 19 %. Now the moves only round
    (means to 3e-7, standard deviations to 1.3e-4 relative, float32's cancellation in the variance)."""
    X, y, Xt = _station_day()
    m = _fit(X, y, **kw)
    mean, std = m.predict(Xt, return_std=True, observation_noise=True)
    m.to(dtype=torch.float32)
    mean32, std32 = (v.double() for v in m.predict(Xt, return_std=True, observation_noise=True))
    assert float((mean32 - mean).abs().max()) < 1e-5
    assert float(((std32 - std) / std).abs().max()) < 1e-3
    m32 = _fit(X, y, dtype=torch.float32, **kw)
    mean, std = m32.predict(Xt, return_std=True, observation_noise=True)
    path = tmp_path / "m.pt"
    m32.save(path)
    for moved in (m32.to(dtype=D), FunBaT.load(path).to(dtype=D)):
        mean64, std64 = moved.predict(Xt, return_std=True, observation_noise=True)
        assert float((mean64 - mean.double()).abs().max()) < 1e-5
        assert float(((std64 - std.double()) / std.double()).abs().max()) < 1e-3


def _query_truth(Xq, label_cols):
    r"""The float64 query that a float32 query ``Xq`` of the training labels means: its coordinates rounded to float32
    (exact in float64), the label columns replaced by the float64 labels they round from."""
    truth = Xq.float().double()
    for c in label_cols:
        truth[:, c] = Xq[:, c]
    return truth


@pytest.mark.parametrize(
    "kw", [{"categorical": 1}, {"noise": "student_t", "scale_mode": 1}, {"noise": "student_t", "scale_mode": 0}]
)
def test_a_float32_query_of_the_training_labels_is_the_float64_query(kw, tmp_path):
    r"""A float64 model queried with float32 coordinates: the station codes :math:`10 s / 11` round to other values
    than the float64 training labels, which a categorical mode treated as unseen labels (the prior: means off by 2.1,
    standard deviations up to 61 times too large, no warning) and ``scale_mode`` as unseen groups (the standard
    deviations of new observations off by 19 %). Days as Unix seconds (not exact in float32) for ``scale_mode=0``.
    Now a query label equal to a training label at float32 is that label: the predictions (``predict``, the BoTorch
    posterior, ``latent``, a saved and loaded model) are those of the float64 query of the same labels, the other
    coordinates rounded to float32 as given."""
    X, y, Xt = _station_day()
    X[:, 0], Xt[:, 0] = 1.7e9 + 1000.0 + 86400.0 * X[:, 0], 1.7e9 + 1000.0 + 86400.0 * Xt[:, 0]
    m = _fit(X, y, **kw)
    label_col = kw.get("categorical", kw.get("scale_mode"))
    truth = _query_truth(Xt, [label_col])
    assert bool((truth != Xt.float().double()).any())  # the float32 query differs from the labels it means
    path = tmp_path / "m.pt"
    m.save(path)
    for model in (m, FunBaT.load(path)):
        for noise in (False, True):
            mean, std = model.predict(truth, return_std=True, observation_noise=noise)
            mean32, std32 = model.predict(Xt.float(), return_std=True, observation_noise=noise)
            torch.testing.assert_close(mean32, mean, rtol=0, atol=1e-12)
            torch.testing.assert_close(std32, std, rtol=0, atol=1e-12)
    post, post32 = (m.as_botorch().posterior(q[:6].unsqueeze(0)) for q in (truth, Xt.float()))
    torch.testing.assert_close(post32.mean.detach(), post.mean.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(post32.variance.detach(), post.variance.detach(), rtol=0, atol=1e-12)
    q32, q64 = Xt[:6].float().requires_grad_(), truth[:6].clone().requires_grad_()
    for q in (q32, q64):  # candidates' gradients (acquisition optimisation) pass the matched labels unchanged
        m.as_botorch().posterior(q.unsqueeze(0)).mean.sum().backward()
    torch.testing.assert_close(q32.grad.double(), q64.grad, rtol=1e-6, atol=1e-9)
    for a, b in zip(m.latent(label_col, X[:5, label_col].float()), m.latent(label_col, X[:5, label_col])):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_float32_training_labels_queried_in_float64_are_matched_at_float32():
    r"""The other way round: a model fitted to float32 coordinates (the station codes rounded to float32) and queried
    with the codes computed in float64 matched no training label (means off by 2.1); the labels are matched at the
    lower precision of the two dtypes, so the float64 query is the float32 one. ``rebuild_with`` entries given in
    float32 join the existing labels (no new label) and give the refit on the float64 ones."""
    X, y, Xt = _station_day()
    m = _fit(X.float(), y, categorical=1)
    mean32 = m.predict(Xt.float())
    torch.testing.assert_close(m.predict(Xt), mean32, rtol=0, atol=1e-12)
    new = m.rebuild_with(Xt[:20].float(), torch.zeros(20), max_sweeps=2)
    assert new._coords[1][0].shape[0] == m._coords[1][0].shape[0] == 12
    m64 = _fit(X, y, categorical=1)
    a, b = (m64.rebuild_with(q, torch.zeros(20), max_sweeps=2).predict(Xt) for q in (Xt[:20].float(), Xt[:20]))
    assert m64.rebuild_with(Xt[:20].float(), torch.zeros(20), max_sweeps=2)._coords[1][0].shape[0] == 12
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_a_query_equal_to_two_training_labels_at_its_precision_is_refused():
    r"""Training labels :math:`1 + 10^{-9} s` are distinct in float64 and all equal to 1 in float32: a float32 query
    of one of them cannot say which, and is refused naming the mode, the dtypes and the labels; float64 queries of
    the same labels, and float32 queries of a label that matches none, are answered."""
    X, y, Xt = _station_day()
    X[:, 1], Xt[:, 1] = 1.0 + 1e-9 * X[:, 1], 1.0 + 1e-9 * Xt[:, 1]
    m = _fit(X, y, categorical=1)
    with pytest.raises(ValueError, match=r"`X`: a coordinate of mode 1 given in float32 equals the training labels \["):
        m.predict(Xt.float())
    with pytest.raises(ValueError, match="float32 precision"):
        m.as_botorch().posterior(Xt[:3].float().unsqueeze(0))
    with pytest.raises(ValueError, match="`t`: a coordinate of mode 1"):
        m.latent(1, Xt[:3, 1].float())
    assert bool(torch.isfinite(m.predict(Xt)).all())
    away = Xt.clone()
    away[:, 1] = 2.0
    torch.testing.assert_close(m.predict(away.float()), m.predict(away), rtol=0, atol=1e-12)


def test_an_unseen_label_queried_in_float32_still_gets_the_prior():
    r"""A label that equals no training label at the query's precision is unseen, as documented: the latent of a
    categorical mode there is the prior :math:`N(0, \sigma_k^2 I)`, for float32 queries as for float64 ones."""
    X, y, _ = _station_day()
    m = _fit(X, y, categorical=1)
    var = float(m.variances_[1])
    t = torch.tensor([10.5 / 11.0, 13.0], dtype=torch.float32)
    for q in (t, t.double()):
        mean, cov = m.latent(1, q)
        torch.testing.assert_close(mean, torch.zeros(2, 2, dtype=D), rtol=0, atol=1e-12)
        torch.testing.assert_close(cov, var * torch.eye(2, dtype=D).expand(2, 2, 2), rtol=1e-10, atol=1e-12)

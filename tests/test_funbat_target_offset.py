r"""FunBaT's targets (:mod:`gpgeom.models.funbat.inputs`, "Targets"): standardised in float64 whatever the model's
dtype, so a float32 model given float64 values with a large offset learns the noise of the values, not of their
float32 rounding.

Independent truth: the float64 model on the same data (the offset only shifts the mean; the noise, the predictive
standard deviation and the mean's variation must not depend on the dtype beyond float32's relative precision), and
the data's own noise level.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from gpgeom.errors import ConvergenceWarning
from gpgeom.models.funbat import FunBaT

D = torch.float64
OFFSET, NOISE = 1e6, 0.002


def _data(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, 2, generator=g, dtype=D)
    f = torch.sin(6 * X[:, 0]) * torch.cos(4 * X[:, 1])
    return X, OFFSET + 0.1 * f + NOISE * torch.randn(n, generator=g, dtype=D)


def _fit(X, y, dtype, sweeps=40, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return FunBaT(rank=3, dtype=dtype, seed=0, max_sweeps=sweeps, **kw).fit(X, y)


def test_a_float32_model_learns_the_noise_of_float64_targets_with_a_large_offset():
    # float32 rounds 1e6 to steps of 0.0625: standardised from those, the noise sd was 0.0186 (true 0.002, float64
    # model 0.00194) and the predictive std several times too large; now the noise agrees with the float64 model's
    # to 3e-5 relative and the predictive std to 4e-3
    X, y = _data()
    Xq = torch.rand(30, 2, generator=torch.Generator().manual_seed(1), dtype=D)
    m64, m32 = _fit(X, y, D), _fit(X, y, torch.float32)
    s64, s32 = m64.noise_variance**0.5, m32.noise_variance**0.5
    assert s64 == pytest.approx(NOISE, rel=0.2)  # the data's own noise
    assert s32 == pytest.approx(s64, rel=2e-3)
    mu64, sd64 = m64.predict(Xq, return_std=True)
    mu32, sd32 = m32.predict(Xq, return_std=True)
    assert mu32.dtype == sd32.dtype == torch.float32
    assert torch.allclose(sd32.double(), sd64, rtol=2e-2, atol=0)
    # the mean is rounded to float32's spacing at 1e6 (0.0625): within one step of the float64 model's
    assert float((mu32.double() - mu64).abs().max()) <= 0.0625
    assert m32.y_mean.dtype == m32.y_std.dtype == D  # the standardisation is kept in float64


@pytest.mark.filterwarnings("ignore::gpgeom.errors.ConvergenceWarning")  # one-sweep rebuilds
def test_a_float32_model_keeps_the_float64_standardisation_through_moves_files_and_rebuilds(tmp_path):
    X, y = _data(80)
    m = _fit(X, y, D, sweeps=5)
    # new entries at the offset are standardised with the float64 mean: a float32 mean (rounded by up to 0.03,
    # 0.5 sd of y) shifted them against the old ones
    Xn = torch.rand(10, 2, generator=torch.Generator().manual_seed(2), dtype=D)
    yn = OFFSET + 0.1 * torch.sin(6 * Xn[:, 0]) * torch.cos(4 * Xn[:, 1])
    r64, mean, std = m.rebuild_with(Xn, yn, max_sweeps=1), m.y_mean.clone(), m.y_std.clone()
    m.to(dtype=torch.float32)  # only rounds: the mean and scale stay float64
    assert m.y_mean.dtype == D and torch.equal(m.y_mean, mean) and torch.equal(m.y_std, std)
    m.save(tmp_path / "m.pt")
    back = FunBaT.load(tmp_path / "m.pt")
    assert back.dtype == torch.float32 and torch.equal(back.y_mean, mean)
    r32 = back.rebuild_with(Xn, yn, max_sweeps=1)
    assert torch.allclose(r32._ys.double(), r64._ys, rtol=0, atol=1e-6)


def test_a_float64_model_standardises_exactly_as_the_float64_arithmetic():
    # the float64 path is the one it always was: mean, sample std and (y - mean) / std in float64, bit for bit
    X, y = _data(60)
    m = _fit(X, y, D, sweeps=2)
    assert torch.equal(m.y_mean, y.mean()) and torch.equal(m.y_std, y.std())
    assert torch.equal(m._ys, (y - y.mean()) / y.std())
    # targets given in float32 to a float64 model: converted first, as before
    m = _fit(X, y.float(), D, sweeps=2)
    assert torch.equal(m._ys, (y.float().double() - y.float().double().mean()) / y.float().double().std())


def test_to_float32_keeps_the_coordinate_map_in_float64():
    # `to(dtype=float32)` rounded the coordinate map's lo to float32 on the way (moved by 4.8 s at 1.7e9, the
    # predictions by 1e-5 instead of float32 rounding): it now stays float64, the predictions move by rounding only
    g = torch.Generator().manual_seed(0)
    X = torch.rand(60, 2, generator=g, dtype=D)
    X[:, 0] = 1.7e9 + 1000 * X[:, 0] + 0.3
    y = torch.sin(6 * X[:, 1]) + 0.01 * torch.randn(60, generator=g, dtype=D)
    m = _fit(X, y, D, sweeps=5)
    mu, lo = m.predict(X[:5]), m.coord_lo.clone()
    m.to(dtype=torch.float32)
    assert torch.equal(m.coord_lo, lo)
    assert float((m.predict(X[:5]).double() - mu).abs().max()) < 1e-6


def test_targets_whose_variance_leaves_the_dtype_are_refused_at_fit():
    r"""The predictive variances are the standardised ones times :math:`s^2` in the model's dtype: a float32 model
    of targets 1e20 times :math:`f` (:math:`s \approx 3.5 \cdot 10^{19}`, :math:`s^2` beyond float32) predicted a
    standard deviation of inf, intervals of -inf and a CDF of 0.5 (the float64 model: finite, CDF 0.24), silently;
    it is refused at fit, as 1e-20 times :math:`f` (variances below float32's normal range). At 1e17 the float32
    model agrees with the float64 one (its stds to 2e-2, as at the origin above), and constant targets (scaled by
    their rounding) are still accepted."""
    X, y = _data(60)
    f = (y - OFFSET) / 0.1
    for scale in (1e20, 1e-20):
        with pytest.raises(ValueError, match=r"`y`: the observed targets have a standard deviation of .*float32"):
            _fit(X, scale * f, torch.float32, sweeps=3)
        _fit(X, scale * f, D, sweeps=3)  # float64 has the range
    Xq = torch.rand(10, 2, generator=torch.Generator().manual_seed(1), dtype=D)
    _, sd64 = _fit(X, 1e17 * f, D, sweeps=20).predict(Xq, return_std=True)
    _, sd32 = _fit(X, 1e17 * f, torch.float32, sweeps=20).predict(Xq, return_std=True)
    assert torch.allclose(sd32.double(), sd64, rtol=2e-2, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # constant to rounding
        _fit(X, torch.full_like(f, 1e-12), torch.float32, sweeps=3)


def test_float32_targets_constant_to_their_rounding_are_accepted_at_any_size():
    r"""Float32 targets of 1e-12 that differ by 0-3 ulps (standard deviation 1.3e-19, below the supported 1.7e-18 but
    1 ulp of their size, so no spread the float32 model can resolve) were refused since the scale check ("standard
    deviation of 1.28e-19"), while exactly constant ones are accepted and both fitted before it. They fit again and
    predict their mean (the float64 mean of the targets, to float32's rounding of it) with a finite standard
    deviation below the rounding; a real spread of that size is still refused (the test above)."""
    X, _ = _data(60)
    ulps = torch.randint(0, 4, (60,), generator=torch.Generator().manual_seed(2)).to(torch.float32)
    y = torch.tensor(1e-12, dtype=torch.float32) * (1 + torch.finfo(torch.float32).eps * ulps)
    assert 0 < float(y.double().std()) < 1.7e-18
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mean, sd = _fit(X, y, torch.float32, sweeps=3).predict(X[:5], return_std=True)
    truth = float(y.double().mean())
    assert float((mean.double() - truth).abs().max()) <= 4 * torch.finfo(torch.float32).eps * truth
    assert bool(torch.isfinite(sd).all()) and float(sd.max()) <= 4 * torch.finfo(torch.float32).eps * truth

r"""Predictive intervals and distributions of MMGP's output scalars (``MMGPPrediction.scalar_interval``,
``scalar_distributions``; :mod:`gpgeom.models.mmgp.scalars`): exact log-normal quantiles against scipy, their
coverage on log-normal draws against the mean +- z std intervals, and a small fitted MMGP with one ``"log"`` and one
``"none"`` scalar."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from test_mmgp_scalars import _family

from gpgeom import metrics
from gpgeom.models.mmgp import MMGP, MMGPPrediction
from gpgeom.models.mmgp.scalars import lognormal_moments, predictive_distributions, predictive_interval

LEVELS = (0.5, 0.9, 0.95, 0.99)


def _moments(dtype=torch.float64):
    r"""GP-unit moments of 3 scalars (``"log"``, ``"none"``, ``"log"``) at 4 points, variances from 1e-4 to 2."""
    mean = torch.tensor([[0.3, -1.2, 2.0], [1.5, 0.4, -0.7], [-2.0, 3.0, 0.0], [0.0, 0.0, 5.0]], dtype=dtype)
    var = torch.tensor([[0.04, 0.5, 1e-4], [0.2, 1e-3, 2.0], [1.0, 0.3, 0.7], [0.5, 2.0, 0.01]], dtype=dtype)
    return mean, var, ["log", "none", "log"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("level", LEVELS)
def test_interval_is_the_scipy_quantiles(dtype, level):
    r"""``(lower, upper)`` are scipy's ``lognorm(s=sqrt(v), scale=e^m).ppf((1 -+ level)/2)`` for the ``"log"``
    columns and ``norm(m, sqrt(v)).ppf`` for the ``"none"`` one, to 1e-12 (float64) / 1e-5 (float32)."""
    mean, var, tr = _moments(dtype)
    lower, upper = predictive_interval(mean, var, tr, level)
    assert lower.shape == upper.shape == (4, 3) and lower.dtype == dtype
    m, s = mean.double().numpy(), var.double().sqrt().numpy()
    p = np.array([(1 - level) / 2, (1 + level) / 2])
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    for i in range(4):
        for j, t in enumerate(tr):
            dist = stats.lognorm(s=s[i, j], scale=math.exp(m[i, j])) if t == "log" else stats.norm(m[i, j], s[i, j])
            want = dist.ppf(p)
            got = np.array([float(lower[i, j]), float(upper[i, j])])
            np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * 1e-3)
    with pytest.raises(ValueError, match=r"level must lie in the open interval \(0, 1\), got 1"):
        predictive_interval(mean, var, tr, 1.0)


def test_distributions_have_the_moments_quantiles_and_density():
    r"""One distribution per scalar, batch shape ``(n,)``: LogNormal for ``"log"``, Normal for ``"none"``; their
    mean and std are :func:`lognormal_moments` (checked against quadrature in test_mmgp_scalars), their ``icdf`` the
    interval bounds, their ``log_prob`` scipy's ``logpdf``."""
    mean, var, tr = _moments()
    dists = predictive_distributions(mean, var, tr)
    ln_mean, ln_var, _ = lognormal_moments(mean, var, tr)
    assert [type(d).__name__ for d in dists] == ["LogNormal", "Normal", "LogNormal"]
    lower, upper = predictive_interval(mean, var, tr, 0.9)
    for j, d in enumerate(dists):
        assert d.batch_shape == (4,)
        torch.testing.assert_close(d.mean, ln_mean[:, j], rtol=1e-13, atol=0)
        torch.testing.assert_close(d.stddev, ln_var[:, j].sqrt(), rtol=1e-13, atol=0)
        p = torch.full((4,), 0.05, dtype=torch.float64)
        torch.testing.assert_close(d.icdf(p), lower[:, j], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(d.icdf(1 - p), upper[:, j], rtol=1e-12, atol=1e-14)
        x = upper[:, j].abs() + 0.1  # positive points
        s, m = var[:, j].sqrt().numpy(), mean[:, j].numpy()
        want = stats.lognorm.logpdf(x, s=s, scale=np.exp(m)) if tr[j] == "log" else stats.norm.logpdf(x, m, s)
        np.testing.assert_allclose(d.log_prob(x).numpy(), want, rtol=1e-12)


def test_exact_interval_covers_lognormal_draws_and_mean_pm_z_std_does_not():
    r"""200,000 log-normal scalars :math:`w = e^{m + \sigma \varepsilon}`, :math:`\sigma = 1` (a peak value with a
    factor-e scatter). The exact intervals cover the draws at their level within 4 binomial standard deviations
    (measured 0.9499 at 95 %, 0.5008 at 50 %), with equal tails (0.0250 and 0.2500 below). ``mean +- z std`` covers
    0.9619 at 95 % (its lower end is below 0, so all its misses are above: 0.038 against 0.025) and 0.8225 at 50 %
    (closed form :math:`\Phi(\log u - m) - \Phi(\log l - m)`: 0.9618 and 0.8226): asserted against those closed
    forms, off the level by over 20 binomial standard deviations."""
    n = 200_000
    gen = torch.Generator().manual_seed(0)
    mean = torch.linspace(-1.0, 2.0, n, dtype=torch.float64)[:, None]
    var = torch.ones_like(mean)
    w = (mean + torch.randn(n, 1, generator=gen, dtype=torch.float64)).exp()
    ln_mean, ln_var, _ = lognormal_moments(mean, var, ["log"])
    for level in (0.5, 0.95):
        tol = 4 * math.sqrt(level * (1 - level) / n)
        lower, upper = predictive_interval(mean, var, ["log"], level)
        assert abs(metrics.interval_coverage(w, lower, upper) - level) <= tol
        below = float((w < lower).double().mean())
        assert abs(below - (1 - level) / 2) <= 4 * math.sqrt(0.25 / n)  # equal tails
        z = stats.norm.ppf((1 + level) / 2)
        lo_g, hi_g = ln_mean - z * ln_var.sqrt(), ln_mean + z * ln_var.sqrt()
        # closed form of P(lo_g <= w <= hi_g) for log w ~ N(m, 1): Phi(log hi - m) - Phi(log lo - m), lo <= 0 -> 0
        lo_pos = lo_g.clamp_min(1e-300)
        closed = stats.norm.cdf((hi_g.log() - mean).numpy()) - stats.norm.cdf((lo_pos.log() - mean).numpy())
        closed = float(np.where(lo_g.numpy() > 0, closed, stats.norm.cdf((hi_g.log() - mean).numpy())).mean())
        cov_g = metrics.coverage(w, ln_mean, ln_var.sqrt(), level)
        assert abs(cov_g - closed) <= tol
        assert abs(cov_g - level) >= 20 * math.sqrt(level * (1 - level) / n)
    assert bool((lo_g < 0).all())  # the Gaussian 95 % interval of a sigma = 1 log-normal reaches below zero


# ---------------------------------------------------------------------------------------------------------------
# a fitted MMGP: one "log" scalar (positive, multiplicative) and one "none" scalar (takes negative values)
# ---------------------------------------------------------------------------------------------------------------
def _data(n: int, seed: int):
    M, mu, U, w = _family(n, seed)
    rng = np.random.default_rng(seed + 100)
    other = mu[:, :1] - 0.5 + 0.05 * rng.standard_normal((n, 1))
    return M, mu, U, np.hstack([w, other])


@pytest.fixture(scope="module")
def fitted():
    M, mu, U, w = _data(40, 0)
    model = MMGP(morphing="none", n_modes_geometry=1, n_modes_fields=1, restarts=0, seed=0)
    return model.fit(M, mu, U, w, scalar_names=["peak", "offset"], progress=False)


def test_fitted_prediction_keeps_the_predictive_distribution(fitted):
    r"""The prediction's GP-unit moments are the GP's own (``model.gp.predict`` on the latent inputs, without the
    noise); its distributions' mean and std are ``scalars`` / ``scalars_std``; its interval is their quantiles;
    ``n_samples`` draws fall inside the 95 % interval at 95 % (4 binomial standard deviations)."""
    model = fitted
    assert model.scalar_transforms_ == ["log", "none"]
    Mt, mut, _, _ = _data(8, 1)
    pred = model.predict(Mt, mut, return_std=True, observation_noise=False, n_samples=4000)
    m_gp, s_gp = model.gp.predict(pred.latent, return_std=True)
    torch.testing.assert_close(pred.scalars_gp_mean, m_gp[:, -2:], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pred.scalars_gp_var, s_gp[:, -2:].square(), rtol=1e-10, atol=1e-15)
    assert pred.scalar_transforms == ["log", "none"]
    dists = pred.scalar_distributions()
    for j, d in enumerate(dists):
        torch.testing.assert_close(d.mean, pred.scalars[:, j], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(d.stddev, pred.scalars_std[:, j], rtol=1e-10, atol=1e-14)
    lower, upper = pred.scalar_interval(0.95)
    assert lower.shape == upper.shape == (8, 2) and bool((lower[:, 0] > 0).all())
    p = torch.full((8,), 0.025, dtype=torch.float64)
    torch.testing.assert_close(dists[0].icdf(p), lower[:, 0], rtol=1e-12, atol=0)
    S = pred.scalar_samples.shape[0]
    inside = ((pred.scalar_samples >= lower) & (pred.scalar_samples <= upper)).double().mean()
    assert abs(float(inside) - 0.95) <= 4 * math.sqrt(0.95 * 0.05 / (S * 8))


def test_fitted_interval_coverage_is_the_log_scale_gaussian_coverage(fitted, tmp_path):
    r"""On 100 held-out plates the log-normal interval of ``peak`` covers ``w`` exactly when the Gaussian interval
    of the GP covers :math:`\log w` (``metrics.coverage`` on the log scale); for ``offset`` (``"none"``) the
    interval is ``scalars +- z scalars_std``. A saved and loaded model gives the same intervals; a float32 copy
    intervals of float32 close to them."""
    model = fitted
    Mt, mut, _, wt = _data(100, 1)
    pred = model.predict(Mt, mut, return_std=True)
    lower, upper = pred.scalar_interval(0.9)
    cov = metrics.interval_coverage(wt[:, 0], lower[:, 0], upper[:, 0])
    log_cov = metrics.coverage(np.log(wt[:, 0]), pred.scalars_gp_mean[:, 0], pred.scalars_gp_var[:, 0].sqrt(), 0.9)
    assert cov == log_cov and 0.75 <= cov <= 1.0
    z = stats.norm.ppf(0.95)
    torch.testing.assert_close(lower[:, 1], pred.scalars[:, 1] - z * pred.scalars_std[:, 1], rtol=1e-12, atol=1e-14)
    path = tmp_path / "m.pt"
    model.save(path)
    loaded = MMGP.load(path)
    lo2, up2 = loaded.predict(Mt[:5], mut[:5], return_std=True).scalar_interval(0.9)
    torch.testing.assert_close(lo2, lower[:5], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(up2, upper[:5], rtol=1e-10, atol=1e-12)
    lo32, _ = loaded.to(dtype=torch.float32).predict(Mt[:5], mut[:5], return_std=True).scalar_interval(0.9)
    assert lo32.dtype == torch.float32
    torch.testing.assert_close(lo32.double(), lower[:5], rtol=1e-3, atol=1e-3)


def test_errors(fitted):
    r"""Without ``return_std`` (or from a prediction built without the GP moments) a ValueError says to call
    ``predict(..., return_std=True)``; a level outside (0, 1) is a ValueError, a non-number a TypeError."""
    Mt, mut, _, _ = _data(3, 1)
    pred = fitted.predict(Mt, mut)
    with pytest.raises(ValueError, match=r"scalar_interval\(\) needs .* without return_std: .*return_std=True"):
        pred.scalar_interval()
    with pytest.raises(ValueError, match=r"scalar_distributions\(\) needs"):
        pred.scalar_distributions()
    bare = MMGPPrediction(fields=[], scalars=torch.zeros(3, 2), scalars_std=torch.ones(3, 2))
    with pytest.raises(ValueError, match="built without the scalars' GP moments"):
        bare.scalar_interval()
    pred = fitted.predict(Mt, mut, return_std=True)
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="level"):
            pred.scalar_interval(bad)
    with pytest.raises(TypeError, match="level"):
        pred.scalar_interval("0.95")

r"""Tests of FunBaT on :math:`\log y` (``FunBaT(target_transform="log")``, :mod:`gpgeom.models.funbat.target`;
issue #12: positive targets whose errors grow with their level).

Independent truths: the same model fitted by hand to :math:`\log y` (every quantity of :math:`y` follows from it by
the change of variables), the log-normal moments by Monte Carlo, the density integrated numerically and
differentiated from the CDF by finite differences, BoTorch's conditioning of the hand-made model on :math:`\log Y`,
and held-out entries of a tensor with multiplicative noise (coverage).
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch
from funbat_factories import fit_quietly

from gpgeom.botorch.lognormal import lognormal_mean_std
from gpgeom.datasets.tensors import make_synthetic_tensor
from gpgeom.models.funbat import FunBaT

D = torch.float64


def _multiplicative_tensor(n_train: int, n_test: int, seed: int, noise: float = 0.25):
    r"""A rank-2 Tucker tensor :math:`f` (unit sd) observed as :math:`y = e^{0.8 f + \text{noise}\,\varepsilon}`:
    positive, with errors proportional to the level (a log-normal likelihood)."""
    d = make_synthetic_tensor(n_train, n_test, n_modes=3, rank=2, n_coords=20, noise_sd=0.0, seed=seed)
    g = torch.Generator().manual_seed(seed + 7)
    eps = noise * torch.randn(n_train + n_test, generator=g, dtype=D)
    return dataclasses.replace(
        d,
        y_train=torch.exp(0.8 * d.y_train + eps[:n_train]),
        y_test=torch.exp(0.8 * d.y_test + eps[n_train:]),
    )


KW = dict(max_sweeps=12, n_restarts=0, seed=0)


@pytest.fixture(scope="module")
def pair():
    r"""The log model and the same model fitted by hand to :math:`\log y`, Gaussian and Student-t noise."""
    d = _multiplicative_tensor(500, 40, seed=3)
    log_y = dataclasses.replace(d, y_train=d.y_train.log())
    out = {}
    for noise in ("gaussian", "student_t"):
        out[noise] = (fit_quietly(d, noise=noise, target_transform="log", **KW), fit_quietly(log_y, noise=noise, **KW))
    return d, out


@pytest.mark.parametrize("noise", ["gaussian", "student_t"])
def test_the_log_model_is_the_model_of_log_y(pair, noise):
    r"""The fit is the hand-made model of :math:`\log y` to the last digit (the same sweeps on the same numbers);
    ``predict`` gives the log-normal moments of its Gaussian, with and without the noise."""
    d, fits = pair
    m, ref = fits[noise]
    assert m.elbo() == ref.elbo() and m.noise_variance == ref.noise_variance
    for obs in (False, True):
        mean_t, var_t, w = m.predictive_mixture(d.X_test, obs)
        mean_r, var_r, w_r = ref.predictive_mixture(d.X_test, obs)
        assert torch.equal(mean_t, mean_r) and torch.equal(var_t, var_r) and torch.equal(w, w_r)
        mu, sd = ref.predict(d.X_test, return_std=True, observation_noise=obs)
        want_mean, want_sd = lognormal_mean_std(mu, sd.square())
        got_mean, got_sd = m.predict(d.X_test, return_std=True, observation_noise=obs)
        torch.testing.assert_close(got_mean, want_mean, rtol=1e-13, atol=0)
        torch.testing.assert_close(got_sd, want_sd, rtol=1e-13, atol=0)
        torch.testing.assert_close(m.predict(d.X_test, observation_noise=obs), want_mean, rtol=1e-13, atol=0)


@pytest.mark.parametrize("noise", ["gaussian", "student_t"])
def test_cdf_density_and_quantiles_by_the_change_of_variables(pair, noise):
    r""":math:`P(Y \le y) = P(T \le \log y)`, :math:`\log p_Y(y) = \log p_T(\log y) - \log y`, :math:`Q_Y = e^{Q_T}`
    against the hand-made model; no mass at :math:`y \le 0`; the density integrates to one (trapezoid on a fine
    grid in :math:`\log y`) and is the derivative of the CDF (central differences)."""
    d, fits = pair
    m, ref = fits[noise]
    X, y = d.X_test, d.y_test
    torch.testing.assert_close(m.predictive_cdf(X, y), ref.predictive_cdf(X, y.log()), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(
        m.log_predictive_density(X, y), ref.log_predictive_density(X, y.log()) - y.log()[:, None], rtol=1e-13, atol=0
    )
    for q in (0.05, 0.5, 0.9):
        torch.testing.assert_close(m.predict_quantile(X, q), ref.predict_quantile(X, q).exp(), rtol=1e-13, atol=0)
    lo, hi = m.predict_interval(X, 0.9)
    torch.testing.assert_close(m.predictive_cdf(X, lo[:, 0]), torch.full_like(lo, 0.05), rtol=0, atol=1e-9)
    torch.testing.assert_close(m.predictive_cdf(X, hi[:, 0]), torch.full_like(hi, 0.95), rtol=0, atol=1e-9)
    nonpos = torch.tensor([0.0, -1.0], dtype=D)
    assert torch.equal(m.predictive_cdf(X[:2], nonpos), torch.zeros(2, 1, dtype=D))
    assert bool((m.log_predictive_density(X[:2], nonpos) == -math.inf).all())
    # the density of y: integrates to one, and is dF/dy
    Xs = X[:3]
    u = torch.linspace(-12.0, 8.0, 40001, dtype=D)  # log y; the entries' medians lie within [e^-3, e^3]
    ys = u.exp()
    dens = m.log_predictive_density(Xs[:, None, :].expand(3, u.numel(), 3), ys.expand(3, -1)).exp()[..., 0]
    total = torch.trapezoid(dens * ys, u, dim=-1)  # dy = y du
    torch.testing.assert_close(total, torch.ones(3, dtype=D), rtol=0, atol=1e-7)
    y0, h = m.predict_quantile(Xs, 0.3)[:, 0], 1e-5
    fd = (m.predictive_cdf(Xs, y0 * (1 + h)) - m.predictive_cdf(Xs, y0 * (1 - h)))[:, 0] / (2 * h * y0)
    torch.testing.assert_close(m.log_predictive_density(Xs, y0)[:, 0].exp(), fd, rtol=1e-6, atol=0)


def test_predict_moments_match_monte_carlo(pair):
    r"""The mean and sd of :math:`e^{T}`, :math:`T` the Gaussian of a new observation, against 400,000 draws per
    entry (Monte Carlo sd of the mean below 0.3 % here)."""
    d, fits = pair
    m, _ = fits["gaussian"]
    X = d.X_test[:4]
    mu, var, _ = m.predictive_mixture(X, True)
    g = torch.Generator().manual_seed(0)
    draws = torch.exp(mu + var.sqrt() * torch.randn(4, 400_000, generator=g, dtype=D))
    mean, sd = m.predict(X, return_std=True, observation_noise=True)
    torch.testing.assert_close(mean[:, 0], draws.mean(-1), rtol=0.01, atol=0)
    torch.testing.assert_close(sd[:, 0], draws.std(-1), rtol=0.03, atol=0)


def test_the_log_model_is_calibrated_on_multiplicative_noise():
    r"""Held-out coverage of the predictive intervals within 0.03 of nominal at 50/90/95 % for the log model (2,000
    entries: binomial sd <= 0.011), while the model of :math:`y` misses by more than 0.03 at some level (its one noise
    level is too wide for small values, too narrow for large ones); the log model's NLPD is lower by more than 0.1.
    Measured: log 0.502 / 0.906 / 0.958, NLPD 0.24 (converged in 9 sweeps); plain 0.693 / 0.911 / 0.936, NLPD
    1.12."""
    d = _multiplicative_tensor(1500, 2000, seed=5, noise=0.3)
    fits = {
        "log": fit_quietly(d, target_transform="log", max_sweeps=30, seed=0),
        "plain": fit_quietly(d, max_sweeps=30, seed=0),
    }
    cov, nlpd = {}, {}
    for k, m in fits.items():
        cov[k] = []
        for level in (0.5, 0.9, 0.95):
            lo, hi = m.predict_interval(d.X_test, level)
            cov[k].append(float(((d.y_test >= lo[:, 0]) & (d.y_test <= hi[:, 0])).double().mean()))
        nlpd[k] = -float(m.log_predictive_density(d.X_test, d.y_test).mean())
    nominal = (0.5, 0.9, 0.95)
    assert all(abs(c - lv) <= 0.03 for c, lv in zip(cov["log"], nominal)), cov
    assert any(abs(c - lv) > 0.03 for c, lv in zip(cov["plain"], nominal)), cov
    assert nlpd["log"] < nlpd["plain"] - 0.1, nlpd


def test_botorch_adapter_is_the_log_normal_image_of_the_model_of_log_y(pair):
    r"""The adapter's posterior is BoTorch's ``Log`` untransform of the hand-made model's Gaussian (marginals: the
    log-normal moments; samples positive); ``predict`` equals its marginals; conditioning on :math:`Y > 0` is the
    hand-made adapter conditioned on :math:`\log Y`; fantasies work; :math:`Y \le 0` is refused."""
    from botorch.posteriors import TransformedPosterior
    from botorch.sampling import SobolQMCNormalSampler

    d, fits = pair
    m, ref = fits["gaussian"]
    bm, br = m.as_botorch(), ref.as_botorch()
    X = d.X_test[:5].unsqueeze(0)
    for obs in (False, True):
        post, post_r = bm.posterior(X, observation_noise=obs), br.posterior(X, observation_noise=obs)
        assert isinstance(post, TransformedPosterior)
        want_mean, want_sd = lognormal_mean_std(post_r.mean, post_r.variance)
        torch.testing.assert_close(post.mean, want_mean, rtol=1e-12, atol=0)
        torch.testing.assert_close(post.variance, want_sd.square(), rtol=1e-12, atol=0)
        mean, sd = m.predict(X[0], return_std=True, observation_noise=obs)
        torch.testing.assert_close(post.mean[0], mean, rtol=1e-10, atol=0)
        torch.testing.assert_close(post.variance[0].sqrt(), sd, rtol=1e-10, atol=0)
        p_mean, p_sd = bm.predict(X, return_std=True, observation_noise=obs)
        torch.testing.assert_close(p_mean, post.mean, rtol=1e-12, atol=0)
        torch.testing.assert_close(p_sd, post.variance.sqrt(), rtol=1e-12, atol=0)
    assert bool((post.rsample(torch.Size([64])) > 0).all())
    Xc, Yc = d.X_test[5:8].unsqueeze(0), d.y_test[5:8].reshape(1, 3, 1)
    cond, cond_r = bm.condition_on_observations(Xc, Yc), br.condition_on_observations(Xc, Yc.log())
    p, p_r = cond.posterior(X), cond_r.posterior(X)
    torch.testing.assert_close(p.mean, lognormal_mean_std(p_r.mean, p_r.variance)[0], rtol=1e-12, atol=0)
    assert float((p.mean - bm.posterior(X).mean).abs().max().detach()) > 1e-6  # conditioning moved it
    with pytest.raises(ValueError, match="outcome transform Log"):
        bm.condition_on_observations(Xc, -Yc)
    fant = bm.fantasize(Xc, SobolQMCNormalSampler(torch.Size([4]), seed=0))
    assert fant.posterior(X).mean.shape == (4, 1, 5, 1)
    assert bool(torch.isfinite(fant.posterior(X).mean).all())


def test_files_rebuild_and_bad_input(tmp_path, pair):
    r"""A saved log model loads with the transform and the same predictions; ``rebuild_with`` takes new values in
    the original units (equal to the hand-made model's rebuild on :math:`\log y`); a file without the key (older
    versions) loads as ``"none"``; bad options, values :math:`\le 0` and float32."""
    d, fits = pair
    m, ref = fits["gaussian"]
    path = tmp_path / "log.pt"
    m.save(path)
    back = FunBaT.load(path)
    assert back.target_transform == "log"
    torch.testing.assert_close(back.predict(d.X_test), m.predict(d.X_test), rtol=1e-13, atol=0)
    cfg = m._config()
    del cfg["target_transform"]
    assert FunBaT._from_config(cfg).target_transform == "none"
    Xn, yn = d.X_test[:6], d.y_test[:6]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        new = m.rebuild_with(Xn, yn, max_sweeps=3)
        new_r = ref.rebuild_with(Xn, yn.log(), max_sweeps=3)
    torch.testing.assert_close(new.predictive_mixture(d.X_test)[0], new_r.predictive_mixture(d.X_test)[0])
    with pytest.raises(ValueError, match="target_transform"):
        FunBaT(2, target_transform="sqrt")
    y_bad = d.y_train.clone()
    y_bad[3] = 0.0
    with pytest.raises(ValueError, match=r"`y` must be > 0 with target_transform='log'.*1 value\(s\) <= 0"):
        FunBaT(2, target_transform="log", **KW).fit(d.X_train, y_bad)
    with pytest.raises(ValueError, match="`y` must be > 0"):
        m.rebuild_with(Xn, -yn)
    y_missing = d.y_train.clone()
    y_missing[3] = math.nan  # a missing entry, not a bad value
    y_missing[4] = -1.0
    mask = torch.ones(len(y_missing), dtype=torch.bool)
    mask[4] = False  # a masked entry's value is never read
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f32 = FunBaT(2, target_transform="log", dtype=torch.float32, max_sweeps=3, n_restarts=0).fit(
            d.X_train.float(), y_missing.float(), mask=mask
        )
    mean, sd = f32.predict(d.X_test, return_std=True, observation_noise=True)
    assert mean.dtype == torch.float32 and bool((mean > 0).all()) and bool(torch.isfinite(sd).all())


def test_botorch_noise_tensors_are_variances_of_log_y(pair):
    r"""A noise tensor is a variance of :math:`\log Y` everywhere in the log adapter (BoTorch's convention for a model
    with an outcome transform): ``condition_on_observations(X, Y, noise=v)`` is the hand-made adapter conditioned on
    :math:`\log Y` with noise ``v``, and ``fantasize(X, sampler, observation_noise=v)`` is conditioning on the values
    that ``posterior(X, observation_noise=v)`` drew, with ``v``. (``noise`` went through ``Log``'s delta method,
    :math:`v / Y^2`, so a fantasy was conditioned with a noise other than the one it was drawn with.)"""
    from botorch.sampling import SobolQMCNormalSampler

    d, fits = pair
    m, ref = fits["gaussian"]
    bm, br = m.as_botorch(), ref.as_botorch()
    X, Xn = d.X_test[:5].unsqueeze(0), d.X_test[5:8].unsqueeze(0)
    v = torch.full((1, 3, 1), 0.3, dtype=D)
    Yn = 10.0 * d.y_test[5:8].reshape(1, 3, 1)  # far from 1: v and v / Y^2 differ
    p, p_r = (
        bm.condition_on_observations(Xn, Yn, noise=v).posterior(X),
        br.condition_on_observations(Xn, Yn.log(), noise=v).posterior(X),
    )
    torch.testing.assert_close(p.mean, lognormal_mean_std(p_r.mean, p_r.variance)[0], rtol=1e-12, atol=0)
    sampler = SobolQMCNormalSampler(torch.Size([4]), seed=0)
    fant = bm.fantasize(Xn, sampler, observation_noise=v[:, :1])
    Yf = sampler(bm.posterior(Xn, observation_noise=v[:, :1])).detach()  # the values the fantasies drew
    p_f = fant.posterior(X)
    p_r = br.condition_on_observations(Xn.expand(4, 1, 3, -1), Yf.log(), noise=v.expand(4, 1, 3, 1)).posterior(X)
    want = lognormal_mean_std(p_r.mean, p_r.variance)
    torch.testing.assert_close(p_f.mean, want[0], rtol=1e-10, atol=0)
    torch.testing.assert_close(p_f.variance, want[1].square(), rtol=1e-10, atol=0)


def test_log_normal_std_is_finite_where_the_mean_is_in_float32():
    r"""The std of :math:`e^T` at a level of about 1e20 in float32: :math:`e^{m + v/2} \sqrt{e^v - 1}`, not the
    square root of :math:`(e^v - 1) e^{2m + v}`, whose :math:`e^{2m + v}` (about 1e40) overflows float32. Truth: the
    closed form in float64. A float32 model on targets 1e20 times those of the float64 one: the stds agree (the fit on
    log y differs only by the shift log 1e20). Before, the float32 std was inf (the float64 model's 6.6e18)."""
    m, v = torch.tensor([46.0, 0.0, -3.0], dtype=D), torch.tensor([0.01, 0.25, 1.5], dtype=D)
    truth = torch.exp(m + 0.5 * v) * torch.sqrt(torch.expm1(v))
    _, std32 = lognormal_mean_std(m.float(), v.float())
    torch.testing.assert_close(std32.double(), truth, rtol=1e-5, atol=0)  # float32 rounds m + v/2 = 46 to 4e-6
    d = _multiplicative_tensor(120, 10, seed=5)
    big = dataclasses.replace(d, y_train=1e20 * d.y_train)
    ref = fit_quietly(big, target_transform="log", **KW)
    f32 = fit_quietly(big, target_transform="log", dtype=torch.float32, **KW)
    _, sd64 = ref.predict(d.X_test, return_std=True, observation_noise=True)
    _, sd32 = f32.predict(d.X_test, return_std=True, observation_noise=True)
    assert bool(torch.isfinite(sd32).all())
    torch.testing.assert_close(sd32.double(), sd64, rtol=1e-2, atol=0)


def test_botorch_log_normal_variance_is_finite_in_float32():
    r"""The adapter's posterior variance of :math:`y = e^T` at levels of 2e19 to 1e20 in float32: the square of
    :math:`e^{m + v/2} \sqrt{e^v - 1}` (inside float32), not BoTorch's :math:`(e^v - 1) e^{2m + v}`, whose
    :math:`e^{2m + v}` overflows: the variance was inf. Truth: the float64 adapter (to 2e-2, the float32 fit's
    difference) and the square of ``predict``'s std."""
    d = _multiplicative_tensor(120, 10, seed=5, noise=0.05)
    big = dataclasses.replace(d, y_train=5e19 * d.y_train**0.25)  # 2e19 to 1e20: the variances stay in float32
    Xq = d.X_test[:, None, :]
    v64 = fit_quietly(big, target_transform="log", **KW).as_botorch().posterior(Xq).variance
    f32 = fit_quietly(big, target_transform="log", dtype=torch.float32, **KW)
    v32 = f32.as_botorch().posterior(Xq.float()).variance
    assert bool(torch.isfinite(v32).all())
    torch.testing.assert_close(v32.double(), v64, rtol=2e-2, atol=0)
    _, sd32 = f32.predict(d.X_test, return_std=True)
    torch.testing.assert_close(v32.reshape(-1), sd32.reshape(-1).square(), rtol=1e-4, atol=0)  # float32 e^44: 4e-6

r"""RGNP's inverse posterior against the prior box of :math:`z`: :math:`q_\beta` is a Gaussian whose mean can leave
the box the uniform prior lives on (on the toy :math:`u - z = 0`, :math:`z \in [0, 1]`, a field of 10 gave a mean of
13.6 and one of 1e6 a mean of 1.4e6, silently). ``predict_inverse`` now warns when a mean lies more than 3 standard
deviations outside the box, and ``truncate=True`` returns the moments of :math:`q_\beta` restricted to the box, the
posterior under the uniform prior, closer to the exact posterior than the Gaussian's on fields near or beyond the
bounds; the default's values are as before, bitwise. The truncated moments are checked against the closed form in
400-digit arithmetic (:mod:`mpmath`)."""

from __future__ import annotations

import math
import warnings

import mpmath as mp
import pytest
import torch

from gpgeom.models.rgnp import RGNP
from gpgeom.models.rgnp._prior_box import truncated_moments


def _mp_truncated(mu, sd, lo, hi):
    r"""Mean and sd of :math:`\mathcal N(\mu, \sigma^2)` on :math:`[l, h]` by the closed form in 400 digits."""
    with mp.workdps(400):
        mu, sd, lo, hi = map(mp.mpf, (mu, sd, lo, hi))
        a, b = (lo - mu) / sd, (hi - mu) / sd
        sign = -1 if a + b > 0 else 1  # Phi(b) - Phi(a) = Phi(-a) - Phi(-b): both CDFs small, no cancellation
        a, b = (-b, -a) if sign < 0 else (a, b)
        Z = mp.ncdf(b) - mp.ncdf(a)
        if Z == 0:  # beyond mpmath's normal CDF
            return None, None
        ra, rb = mp.npdf(a) / Z, mp.npdf(b) / Z
        var = sd**2 * (1 + a * ra - b * rb - (ra - rb) ** 2)
        return float(mu + sign * sd * (ra - rb)), float(mp.sqrt(var)) if var > 0 else None


def test_truncated_moments_match_the_closed_form_in_high_precision():
    r"""Means from -1e6 to 1e6 and sds from 1e-6 to 1e6 against boxes [0, 1] and [0.5, 1.4]: every branch (the
    quadrature of a box narrow against the sd, the tail series, the closed form). Measured: means to 8e-11 of the
    width, sds to 2e-8 relative (the double-precision closed form: NaN or off by orders of magnitude far out)."""
    cases = [
        (mu, sd, lo, hi)
        for lo, hi in ((0.0, 1.0), (0.5, 1.4))
        for mu in (-1e6, -300.0, -2.0, 0.0, 0.2, 0.95, 1.0, 1.017, 1.12, 3.0, 13.6, 1e3, 1e6)
        for sd in (1e-6, 1e-3, 0.0265, 0.5, 10.0, 1e6)
    ]
    mu, sd, lo, hi = (torch.tensor([c[k] for c in cases], dtype=torch.float64)[:, None] for k in range(4))
    m, s = truncated_moments(mu, sd, lo, hi)
    checked = 0
    for i, case in enumerate(cases):
        want_m, want_s = _mp_truncated(*case)
        width = case[3] - case[2]
        if want_s is None:  # beyond mpmath's CDF: far in a tail, the exponential limit (scale sd^2 / distance)
            near = case[3] if case[0] > case[3] else case[2]
            scale = case[1] ** 2 / abs(case[0] - near)
            assert scale < 1e-2 * case[1], case  # x = distance / sd > 100: the limit holds to 1/x^2
            want = near - scale if near == case[3] else near + scale
            tol = scale * (7 * (scale / case[1]) ** 2 + 1e-15)  # next terms -2/x^2, -3/x^2 relative; rounding
            assert abs(float(m[i, 0]) - want) <= tol + 1e-15 * width, (case, float(m[i, 0]), want)
            assert abs(float(s[i, 0]) - scale) <= tol, (case, float(s[i, 0]), scale)
            continue
        assert abs(float(m[i, 0]) - want_m) <= 1e-9 * width, (case, float(m[i, 0]), want_m)
        assert abs(float(s[i, 0]) - want_s) <= 1e-6 * want_s, (case, float(s[i, 0]), want_s)
        assert case[2] <= float(m[i, 0]) <= case[3]
        checked += 1
    assert checked > 120, checked


def _shift(u, x, z, w):
    return u - z[:, :1]


@pytest.fixture(scope="module")
def toy():
    r"""The toy :math:`u - z = 0` on [0, 1], :math:`z \sim U(0, 1)`, :math:`\varepsilon_r = 0.1`, 30 points, 400
    steps (as in ``tests/test_rgnp_semantics.py``): the field is :math:`z` plus noise 0.1 at every point."""
    torch.manual_seed(0)
    gic = dict(lift_channels=4, lift_hidden=(8,), cnn_channels=(8,), mlp_hidden=(32,), grid_size=8)
    return RGNP(
        _shift, domain=(0.0, 1.0), z_bounds=([0.0], [1.0]), hidden=(16,), n_freqs=2, gicnet=gic, batch_size=16,
        n_points=30, residual_scale=0.1,
    ).fit(400, lr=1e-2, progress=False, seed=0, lr_schedule="cosine", lr_final_fraction=0.05)  # fmt: skip


def _exact(u):
    r"""Mean of :math:`p(z \mid u) \propto \mathbb 1_{[0, 1]}(z) \prod_i \mathcal N(u_i; z, 0.1^2)`:
    :math:`\mathcal N(\bar u, 0.1^2/n)` truncated to [0, 1], ``u`` ``(B, n)`` -> list of ``B`` floats."""
    s = 0.1 / math.sqrt(u.shape[-1])
    return [_mp_truncated(float(v), s, 0.0, 1.0)[0] for v in u.mean(-1)]


def test_a_mean_far_outside_the_box_warns_and_truncate_gives_the_posterior_in_the_box(toy):
    r"""Fields of 1.1, 10 and 1e6 everywhere: the Gaussian's means 1.12, 13.6 and 1.4e6 lie 4.4, 25 and 2.8e6 sds
    outside [0, 1] and warn; truncated, 0.994, 0.980 and 1.000 (exact 0.997, 1.000, 1.000). A field of 1.0: mean 1.017,
    0.6 sds outside (no warning), truncated 0.984 (exact 0.985)."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 30, 1, generator=g, dtype=torch.float64)
    for level, warns in ((1.0, False), (1.1, True), (10.0, True), (1e6, True)):
        u = torch.full((1, 30), level, dtype=torch.float64)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mean, sd = toy.predict_inverse(x, u, return_std=True)
        outside = [w for w in caught if "outside the prior box" in str(w.message)]
        assert bool(outside) == warns, (level, float(mean), float(sd))
        if warns:
            message = str(outside[0].message)
            assert "z[0] in [0, 1]" in message and "truncate=True" in message and "1 of 1 field(s) (index 0)" in message
        assert float(mean) > 1.0  # the Gaussian's mean, as before: outside
        tm, ts = toy.predict_inverse(x, u, return_std=True, truncate=True)
        exact = _exact(u)[0]
        assert 0.0 <= float(tm) <= 1.0 and 0 < float(ts) <= float(sd)
        assert abs(float(tm) - exact) < 0.03 and abs(float(tm) - exact) < abs(float(mean) - exact), (level, float(tm))


def test_truncation_is_closer_to_the_exact_posterior_and_the_default_is_unchanged(toy):
    r"""400 noisy fields, :math:`z \sim U(0, 1)`, 30 points. The default returns :math:`q_\beta`'s Gaussian moments
    bitwise, without a warning (the largest excursion outside the box: 1.9 sds). On the fields whose mean is outside
    (1.8 %), the RMS error of the mean against the exact posterior mean: 0.048 Gaussian, 0.011 truncated (0.021 clamped
    to the box); on all: 0.0173 and 0.0159."""
    g = torch.Generator().manual_seed(3)
    torch.rand(1, 30, 1, generator=g, dtype=torch.float64)  # as in the test above: the same stream afterwards
    z = torch.rand(400, 1, generator=g, dtype=torch.float64)
    x = torch.rand(400, 30, 1, generator=g, dtype=torch.float64)
    u = z + 0.1 * torch.randn(400, 30, generator=g, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning in distribution
        mean, sd = toy.predict_inverse(x, u, return_std=True)
    dist = toy.inverse_dist(x, u, torch.zeros(400, 0, dtype=torch.float64))
    assert torch.equal(mean, dist.mean) and torch.equal(sd, dist.stddev)  # bitwise the Gaussian's moments
    tm, ts = toy.predict_inverse(x, u, return_std=True, truncate=True)
    assert bool(((tm >= 0) & (tm <= 1)).all())
    exact = torch.tensor(_exact(u), dtype=torch.float64)
    out = (mean[:, 0] < 0) | (mean[:, 0] > 1)
    assert 3 <= int(out.sum()) <= 20, int(out.sum())

    def rms(m, rows):
        return float((m[rows, 0] - exact[rows]).square().mean().sqrt())

    assert rms(tm, out) < 0.5 * rms(mean, out), (rms(tm, out), rms(mean, out))
    every = torch.ones(400, dtype=torch.bool)
    assert rms(tm, every) < rms(mean, every)


def test_truncate_is_refused_with_return_dist_and_must_be_a_bool(toy):
    x, u = torch.rand(2, 30, 1, dtype=torch.float64), torch.full((2, 30), 0.5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"`truncate=True` gives the moments of q_beta restricted to the prior box"):
        toy.predict_inverse(x, u, truncate=True, return_dist=True)
    with pytest.raises(TypeError, match=r"`truncate` must be True or False, got 1"):
        toy.predict_inverse(x, u, truncate=1)

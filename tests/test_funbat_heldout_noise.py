r"""Tests of FunBaT's Student-t noise fitted on held-out entries (``FunBaT(noise="student_t", scale_fit="heldout")``,
:mod:`gpgeom.models.funbat.heldout`; issue #12: the in-sample noise fits are too narrow or too wide at some level).

Independent truths: SciPy's Student-t log density and its maximum-likelihood fit (the held-out criterion without
latent variance), a Student-t generator, a one-dimensional quadrature of the Gaussian-t convolution, the model rebuilt
by hand from :func:`heldout_split`, a Gaussian FunBaT on the same entries and :func:`heldout_noise_fit`, and held-out
coverage on heavy-tailed data.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import torch
from test_funbat_scale_groups import _coverage

from gpgeom.datasets.tensors import make_synthetic_tensor
from gpgeom.errors import ConvergenceWarning
from gpgeom.models.funbat import FunBaT
from gpgeom.models.funbat.heldout import _mean_log_density, heldout_noise_fit, heldout_split

D = torch.float64


def test_without_latent_variance_the_fit_is_the_student_t_maximum_likelihood():
    r"""With :math:`v_i = 0` the criterion is the Student-t log likelihood: the quadrature's mean log density equals
    SciPy's ``t.logpdf`` (1e-9), and the fitted :math:`(s, \nu)` are SciPy's maximum-likelihood ``t.fit`` with the
    location fixed at 0 (rel 2e-3), near the generator (:math:`\nu = 4`, :math:`s = 0.5`)."""
    rng = np.random.default_rng(1)
    r = 0.5 * rng.standard_t(4.0, 4000)
    r2, v = torch.tensor(r**2, dtype=D), torch.zeros(4000, dtype=D)
    for s, nu in ((0.4, 3.0), (0.6, 12.0)):
        want = scipy.stats.t.logpdf(r, nu, scale=s).mean()
        assert _mean_log_density(r2, v, s * s, nu) == pytest.approx(want, abs=1e-9)
    s2, nu, nlpd = heldout_noise_fit(torch.tensor(r, dtype=D), v)
    df, _, scale = scipy.stats.t.fit(r, floc=0.0)
    assert nu == pytest.approx(df, rel=2e-3) and math.sqrt(s2) == pytest.approx(scale, rel=2e-3)
    assert nlpd == pytest.approx(-scipy.stats.t.logpdf(r, df, scale=scale).mean(), abs=1e-6)
    assert 3.0 < nu < 5.5 and 0.45 < math.sqrt(s2) < 0.55


def test_with_latent_variance_the_density_is_the_convolution_and_the_fit_is_its_maximum():
    r"""With :math:`v_i > 0` the density is the Gaussian-t convolution (against SciPy's adaptive quadrature of
    :math:`\int N(r - e; 0, v)\, t_\nu(e; s)\, de`, 1e-8), and the fitted pair is a maximum: moving :math:`s` or
    :math:`\nu` by 5 % either way lowers the mean log density; a fixed ``dof`` is kept."""
    rng = np.random.default_rng(2)
    v = rng.uniform(0.01, 0.09, 1500)
    r = rng.normal(0.0, np.sqrt(v)) + 0.3 * rng.standard_t(5.0, 1500)
    rt, vt = torch.tensor(r, dtype=D), torch.tensor(v, dtype=D)
    s, nu = 0.3, 5.0
    for i in range(3):
        dens, _ = scipy.integrate.quad(
            lambda e, i=i: scipy.stats.norm.pdf(r[i] - e, scale=math.sqrt(v[i])) * scipy.stats.t.pdf(e, nu, scale=s),
            -np.inf, np.inf, epsabs=1e-13, epsrel=1e-11,
        )  # fmt: skip
        got = _mean_log_density(rt[i : i + 1].square(), vt[i : i + 1], s * s, nu)
        assert got == pytest.approx(math.log(dens), abs=1e-8)
    s2, nu_hat, nlpd = heldout_noise_fit(rt, vt)
    assert nlpd == pytest.approx(-_mean_log_density(rt.square(), vt, s2, nu_hat), abs=1e-12)
    for f_s, f_nu in ((1.05, 1), (0.95, 1), (1, 1.05), (1, 0.95)):
        assert -_mean_log_density(rt.square(), vt, s2 * f_s**2, nu_hat * f_nu) > nlpd
    s2_fixed, nu_fixed, _ = heldout_noise_fit(rt, vt, dof=8.0)
    assert nu_fixed == 8.0 and s2_fixed != s2
    with pytest.raises(ValueError, match="one shape"):
        heldout_noise_fit(rt, vt[:-1])


def _heavy_tailed(seed: int, n_train: int = 1500, n_test: int = 2000, nu: float = 3.0, scale: float = 0.15):
    # test entries at training coordinates, like the held-out tenth (a random split of the same cells)
    d = make_synthetic_tensor(
        n_train, n_test, n_modes=3, rank=2, n_coords=20, noise_sd=0.0, seed=seed, unseen_fraction=0.0
    )
    g = torch.Generator().manual_seed(seed + 11)
    lam = torch._standard_gamma(torch.full((n_train + n_test,), nu / 2, dtype=D), generator=g) / (nu / 2)
    eps = scale * torch.randn(n_train + n_test, generator=g, dtype=D) / lam.sqrt()
    return dataclasses.replace(d, y_train=d.y_train + eps[:n_train], y_test=d.y_test + eps[n_train:])


def _fit(d, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return FunBaT(2, seed=0, max_sweeps=30, **kw).fit(d.X_train, d.y_train)


@pytest.fixture(scope="module")
def heavy():
    d = _heavy_tailed(6)
    return d, {"gaussian": _fit(d), "heldout": _fit(d, noise="student_t", scale_fit="heldout")}


def test_the_model_is_the_gaussian_fit_with_the_noise_of_its_held_out_tenth(heavy):
    r"""The mean and latent variance are the Gaussian model's bit for bit; the noise is what a Gaussian FunBaT fitted
    by hand on the entries that :func:`heldout_split` keeps gives on the held-out ones (rel 1e-12); the predictive of
    a new entry is the scale mixture with that noise."""
    d, fits = heavy
    m, g = fits["heldout"], fits["gaussian"]
    torch.testing.assert_close(
        m.predict(d.X_test, return_std=True), g.predict(d.X_test, return_std=True), rtol=0, atol=0
    )
    fit_idx, held = heldout_split(len(d.y_train), 0)
    ys = (d.y_train - m.y_mean) / m.y_std
    Xn = (d.X_train - m.coord_lo) / m.coord_span
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sub = FunBaT(2, seed=0, max_sweeps=30, standardize=False, normalize_coordinates=False).fit(
            Xn[fit_idx], ys[fit_idx]
        )
    mean, sd = sub.predict(Xn[held], return_std=True)
    s2, dof, _ = heldout_noise_fit(ys[held] - mean[:, 0], sd[:, 0].square())
    assert m.dof_ == pytest.approx(dof, rel=1e-12)
    assert m.noise_variance == pytest.approx(s2 * float(m.y_std) ** 2 * dof / (dof - 2.0), rel=1e-12)
    _, var, w = m.predictive_mixture(d.X_test[:3])
    assert var.shape[-1] > 1 and float(w.sum()) == pytest.approx(1.0)


def test_held_out_noise_is_calibrated_on_heavy_tailed_data(heavy):
    r"""Student-t noise (:math:`\nu = 3`), test entries at training coordinates like the held-out tenth: coverage
    within 0.045 of nominal at 50/90/95 % (2,000 entries: binomial sd <= 0.011; the 150 held-out entries leave the
    fitted tails uncertain: seeds 4-6 at 1,500 and 3,000 training entries measured 0.485-0.539 / 0.872-0.900 /
    0.919-0.949), while the Gaussian model covers too much at 50 % (0.625-0.679 there); lower NLPD. This seed:
    held-out 0.491 / 0.900 / 0.949, NLPD -0.084; Gaussian 0.645 / 0.924 / 0.950, NLPD 0.098."""
    d, fits = heavy
    cov = {k: [_coverage(m, d, lv) for lv in (0.5, 0.9, 0.95)] for k, m in fits.items()}
    nominal = (0.5, 0.9, 0.95)
    assert all(abs(c - lv) <= 0.045 for c, lv in zip(cov["heldout"], nominal)), cov
    assert cov["gaussian"][0] - 0.5 > 0.08 and abs(cov["heldout"][0] - 0.5) < cov["gaussian"][0] - 0.5 - 0.08, cov
    nlpd = {k: -float(m.log_predictive_density(d.X_test, d.y_test).mean()) for k, m in fits.items()}
    assert nlpd["heldout"] < nlpd["gaussian"] - 0.05, nlpd


def test_files_rebuild_and_bad_input(tmp_path, heavy):
    r"""Files keep the noise; ``rebuild_with`` holds it (like the kernels) instead of refitting it; ``scale_mode``
    and too few entries are refused; log targets combine (noise in log units)."""
    d, fits = heavy
    m = fits["heldout"]
    m.save(tmp_path / "h.pt")
    back = FunBaT.load(tmp_path / "h.pt")
    assert back.scale_fit == "heldout" and back.dof_ == m.dof_
    torch.testing.assert_close(back.predict_interval(d.X_test[:5], 0.9), m.predict_interval(d.X_test[:5], 0.9))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        new = m.rebuild_with(d.X_test[:4], d.y_test[:4], max_sweeps=3)
    assert new.dof_ == m.dof_
    assert new.noise_variance / float(new.y_std) ** 2 == pytest.approx(m.noise_variance / float(m.y_std) ** 2)
    with pytest.raises(ValueError, match="scale_mode=None"):
        FunBaT(2, noise="student_t", scale_fit="heldout", scale_mode=1)
    with pytest.raises(ValueError, match="at least 20"):
        FunBaT(2, noise="student_t", scale_fit="heldout").fit(d.X_train[:150], d.y_train[:150])
    pos = dataclasses.replace(d, y_train=d.y_train.exp(), y_test=d.y_test.exp())
    lg = _fit(pos, noise="student_t", scale_fit="heldout", target_transform="log")
    assert 2.0 < lg.dof_ < 100.0 and bool((lg.predict_quantile(pos.X_test[:5], 0.5) > 0).all())

r"""Tests of FunBaT's Student-t noise (``FunBaT(noise="student_t")``, :mod:`gpgeom.models.funbat.noise`) and of its
predictive distribution (:mod:`gpgeom.models.funbat.predictive`).

Independent truths: moments of the Gamma distribution in closed form (the quadrature nodes), adaptive quadrature by
SciPy of the scale-mixture density and CDF (the predictive), Monte Carlo draws of the scale mixture (the quantiles),
finite differences of the ELBO (the degrees-of-freedom derivative), perturbations of the factors (coordinate
maxima), the Gaussian closed forms (the Gaussian option), and the generator of the data (the degrees of freedom and
the nominal coverage of held-out entries).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from funbat_factories import fit_quietly

from gpgeom.datasets.tensors import make_synthetic_tensor
from gpgeom.errors import ConvergenceWarning
from gpgeom.models.funbat import FunBaT, FunBaTCP
from gpgeom.models.funbat.noise import DOF_BOUNDS, dof_update, scale_elbo_terms, scale_update
from gpgeom.models.funbat.predictive import scale_mixture_nodes

D = torch.float64


def _t_tensor(n_train, n_test, dof, scale, seed, n_coords=30, n_modes=3, decomposition="tucker"):
    r"""A synthetic rank-2 tensor plus Student-t noise drawn as a Gaussian scale mixture."""
    import dataclasses

    d = make_synthetic_tensor(
        n_train, n_test, n_modes=n_modes, rank=2, decomposition=decomposition, n_coords=n_coords, noise_sd=0.0,
        seed=seed,
    )  # fmt: skip
    g = torch.Generator().manual_seed(seed + 100)

    def draw(n):
        lam = torch._standard_gamma(torch.full((n,), dof / 2, dtype=D), generator=g) / (dof / 2)
        return torch.randn(n, generator=g, dtype=D) * scale / lam.sqrt()

    return dataclasses.replace(d, y_train=d.y_train + draw(len(d.y_train)), y_test=d.y_test + draw(len(d.y_test)))


@pytest.fixture(scope="module")
def t_fit():
    r"""A small Student-t fit (600 entries, 4 degrees of freedom, scale 0.1)."""
    d = _t_tensor(600, 50, 4.0, 0.1, seed=2, n_coords=20)
    return d, fit_quietly(d, noise="student_t", max_sweeps=25, n_restarts=0)


# ---------------------------------------------------------------------------------------------------------------
# the quadrature and the predictive distribution
@pytest.mark.parametrize("dof", [2.1, 3.0, 7.5, 100.0])
def test_quadrature_nodes_reproduce_the_gamma_moments(dof):
    r""":math:`\lambda \sim \mathrm{Gamma}(\nu/2, \nu/2)`: :math:`\mathbb E\lambda = 1`, :math:`\mathbb E\lambda^2 =
    1 + 2/\nu`, :math:`\mathbb E\log\lambda = \psi(\nu/2) - \log(\nu/2)`, :math:`\mathbb E\lambda^{-1} = \nu/(\nu -
    2)` for :math:`\nu \ge 3` (its integrand decays like :math:`e^{(\nu/2 - 1) u}`, too slowly near 2 for the
    truncated range, which is why the predictive variance uses the closed form)."""
    lam, w = scale_mixture_nodes(dof)
    a = dof / 2
    assert abs(float(w.sum()) - 1.0) < 1e-14
    assert abs(float((w * lam).sum()) - 1.0) < 1e-10
    assert abs(float((w * lam.square()).sum()) - (1.0 + 2.0 / dof)) < 1e-10
    e_log = float(torch.digamma(torch.tensor(a, dtype=D))) - math.log(a)
    assert abs(float((w * lam.log()).sum()) - e_log) < 1e-10
    if dof >= 3.0:  # the integrand of E[1/lambda] decays like e^{(nu/2 - 1) u}: truncated for nu near 2
        assert abs(float((w / lam).sum()) / (dof / (dof - 2.0)) - 1.0) < 1e-8


def _scipy_mixture(m, v, s2, dof):
    r"""Density and CDF of :math:`\int N(m, v + s^2/\lambda)\,\mathrm{Gamma}(\lambda; \nu/2, \nu/2)\, d\lambda`
    by SciPy's adaptive quadrature over :math:`\lambda` (the independent truth)."""
    from scipy import integrate, stats

    prior = stats.gamma(a=dof / 2, scale=2.0 / dof)

    def pdf(y):
        f = lambda lam: stats.norm.pdf(y, m, math.sqrt(v + s2 / lam)) * prior.pdf(lam)  # noqa: E731
        return (
            integrate.quad(f, 0, 1, epsabs=1e-14, epsrel=1e-12)[0]
            + integrate.quad(f, 1, math.inf, epsabs=1e-14, epsrel=1e-12)[0]
        )

    def cdf(y):
        f = lambda lam: stats.norm.cdf(y, m, math.sqrt(v + s2 / lam)) * prior.pdf(lam)  # noqa: E731
        return (
            integrate.quad(f, 0, 1, epsabs=1e-14, epsrel=1e-12)[0]
            + integrate.quad(f, 1, math.inf, epsabs=1e-14, epsrel=1e-12)[0]
        )

    return pdf, cdf


def test_predictive_density_cdf_and_quantiles_against_adaptive_quadrature_and_monte_carlo(t_fit):
    r"""At held-out coordinates the predictive of a new observation is the scale mixture with the model's mean,
    latent variance :math:`v_*`, :math:`s^2 = \mathbb E[\tau^{-1}]` and :math:`\nu`: its log density and CDF match
    SciPy's adaptive quadrature (1e-8), its quantiles invert that CDF (1e-8), and 4 million Monte Carlo draws of the
    mixture fall below the quantiles at the nominal rates (to 1e-3; binomial sd < 2.5e-4). ``predict``'s std is the
    mixture's: :math:`v_* + s^2 \nu/(\nu - 2)`."""
    d, m = t_fit
    X = d.X_test[:3]
    mean, std = (v[:, 0] for v in m.predict(X, return_std=True, observation_noise=True))
    _, latent_std = m.predict(X, return_std=True, observation_noise=False)
    s2 = float(m._tau_b / (m._tau_a - 1.0) * m.y_std.square())
    dof = m.dof_
    assert DOF_BOUNDS[0] <= dof <= DOF_BOUNDS[1]
    torch.testing.assert_close(std.square(), latent_std[:, 0].square() + s2 * dof / (dof - 2.0), rtol=1e-12, atol=0)
    g = torch.Generator().manual_seed(0)
    for i in range(X.shape[0]):
        mi, vi = float(mean[i]), float(latent_std[i, 0]) ** 2
        pdf, cdf = _scipy_mixture(mi, vi, s2, dof)
        for y in (mi - 3 * float(std[i]), mi + 0.3 * float(std[i]), mi + 8 * float(std[i])):
            yy = torch.tensor([y], dtype=D)
            lp = float(m.log_predictive_density(X[i : i + 1], yy))
            assert abs(lp - math.log(pdf(y))) < 1e-8
            assert abs(float(m.predictive_cdf(X[i : i + 1], yy)) - cdf(y)) < 1e-8
        lam = torch._standard_gamma(torch.full((4_000_000,), dof / 2, dtype=D), generator=g) / (dof / 2)
        draws = mi + torch.randn(lam.shape, generator=g, dtype=D) * (vi + s2 / lam).sqrt()
        for q in (0.025, 0.05, 0.25, 0.5, 0.75, 0.95, 0.975):
            quant = float(m.predict_quantile(X[i : i + 1], q))
            assert abs(cdf(quant) - q) < 1e-8
            assert abs(float((draws <= quant).double().mean()) - q) < 1e-3
        lo, hi = m.predict_interval(X[i : i + 1], 0.9)
        assert abs(cdf(float(hi)) - cdf(float(lo)) - 0.9) < 1e-8


def test_the_gaussian_option_gives_the_gaussian_closed_forms():
    r"""``noise="gaussian"`` (and the latent entry without noise for either model): quantiles ``mean + z std``,
    log density and CDF of :math:`N(\text{mean}, \text{std}^2)`, one mixture component."""
    d = make_synthetic_tensor(200, 20, rank=2, n_coords=12, noise_sd=0.05, seed=3)
    m = fit_quietly(d, max_sweeps=6, n_restarts=0)
    assert m.noise == "gaussian" and m.dof_ == math.inf and m.dof is None
    for noise in (True, False):
        mean, std = (v[:, 0] for v in m.predict(d.X_test, return_std=True, observation_noise=noise))
        normal = torch.distributions.Normal(mean, std)
        y = d.y_test
        torch.testing.assert_close(m.log_predictive_density(d.X_test, y, noise)[:, 0], normal.log_prob(y))
        torch.testing.assert_close(m.predictive_cdf(d.X_test, y[:, None], noise)[:, 0], normal.cdf(y))
        lo, hi = m.predict_interval(d.X_test, 0.9, noise)
        torch.testing.assert_close(hi[:, 0], normal.icdf(torch.tensor(0.95, dtype=D)))
        torch.testing.assert_close(lo[:, 0], normal.icdf(torch.tensor(0.05, dtype=D)))
        _, var, w = m.predictive_mixture(d.X_test, noise)
        assert var.shape == (len(y), 1) and w.shape == (1,)


# ---------------------------------------------------------------------------------------------------------------
# the variational updates and the ELBO
def test_dof_update_maximises_the_elbo_and_its_derivative_is_the_closed_form():
    r"""The closed-form derivative :math:`\tfrac N2(\log\tfrac\nu2 + 1 - \psi(\tfrac\nu2) + c)` equals the finite
    difference of the scales' ELBO terms in :math:`\nu`; the update is the maximiser over a fine grid, clipped to
    ``DOF_BOUNDS``; on Gaussian-like scales it runs to the upper bound."""
    g = torch.Generator().manual_seed(1)
    resid = torch.distributions.StudentT(5.0).sample((500,)).double().square()
    alpha, beta = scale_update(resid, torch.tensor(1.0, dtype=D), 5.0)

    def objective(nu):
        half, kl = scale_elbo_terms(alpha, beta, nu)
        return float(half - kl)

    e_log = torch.digamma(alpha) - beta.log()
    c = float((e_log - alpha / beta).mean())
    for nu in (2.5, 4.0, 9.0, 40.0):
        fd = (objective(nu + 1e-5) - objective(nu - 1e-5)) / 2e-5
        closed = 0.5 * len(resid) * (math.log(nu / 2) + 1 - float(torch.digamma(torch.tensor(nu / 2, dtype=D))) + c)
        assert abs(fd - closed) < 1e-5 * max(1.0, abs(closed))
    nu_hat = dof_update(alpha, beta)
    grid = torch.linspace(DOF_BOUNDS[0], DOF_BOUNDS[1], 20001, dtype=D)
    best = float(grid[int(torch.tensor([objective(float(v)) for v in grid]).argmax())])
    assert abs(nu_hat - best) < 0.01
    assert objective(nu_hat) >= objective(best) - 1e-9
    # scales with no spread (lambda = 1 exactly): c = psi(a) - log(a) - 1 -> the root runs off; clipped
    flat_beta = torch.full((100,), 1e6, dtype=D)
    assert dof_update(torch.tensor(1e6, dtype=D), flat_beta) == DOF_BOUNDS[1]
    del g


@pytest.mark.parametrize("decomposition", ["tucker", "cp"])
def test_elbo_never_decreases_without_damping(decomposition):
    r"""Every update of the Student-t model (messages, core, bias, noise, scales, degrees of freedom) is a mean-field
    coordinate maximum, so the ELBO cannot decrease between sweeps."""
    d = _t_tensor(300, 10, 4.0, 0.1, seed=11, n_coords=20, decomposition=decomposition)
    m = fit_quietly(
        d, decomposition=decomposition, noise="student_t", max_sweeps=25, tol=0.0, learn_hyperparameters=False
    )
    elbo = torch.tensor([h["elbo"] for h in m.history], dtype=D)
    assert len(elbo) == 25
    assert bool((elbo[1:] - elbo[:-1] >= -1e-8 * elbo.abs().max()).all()), elbo
    assert all(h["dof"] is not None for h in m.history)


def test_scale_factors_are_the_coordinate_maximum_of_the_elbo(t_fit):
    r"""After a fresh update of :math:`q(\lambda_n)` (given the other factors) perturbing its shape or its rates
    lowers ``elbo()``: the closed-form update and the ELBO's terms agree (an independent check of the derivation)."""
    _, m = t_fit
    m._scale_alpha, m._scale_beta = scale_update(m._resid_sq, m._tau_a / m._tau_b, m._dof)
    base = m.elbo()
    alpha, beta = m._scale_alpha.clone(), m._scale_beta.clone()
    for da, db in ((0.05, 1.0), (-0.05, 1.0), (0.0, 1.03), (0.0, 0.97)):
        m._scale_alpha, m._scale_beta = alpha + da, beta * db
        assert m.elbo() < base
    m._scale_alpha, m._scale_beta = alpha, beta


# ---------------------------------------------------------------------------------------------------------------
# recovery and calibration on data with known noise
@pytest.fixture(scope="module")
def heavy_fits():
    r"""4 degrees of freedom, scale 0.1, 2000 training entries, 2000 held out: the Gaussian and the Student-t fit."""
    d = _t_tensor(2000, 2000, 4.0, 0.1, seed=5, n_coords=30)
    kw = dict(max_sweeps=40, n_restarts=0, hyper_every=2)
    return d, fit_quietly(d, **kw), fit_quietly(d, noise="student_t", **kw)


#: The learned degrees of freedom on 2000 entries with true 4: 5.0 after 40 sweeps, 4.8 converged (mean-field
#: estimates of nu run high here: the fitted entries absorb part of the largest residuals, so the training residuals
#: have lighter tails than the noise). The Gaussian-noise fits of these tests learn 13-14, outside the range.
DOF_RANGE = (3.0, 8.0)


def test_recovers_the_degrees_of_freedom_and_covers_at_the_nominal_levels(heavy_fits):
    r"""On Student-t data (4 dof) the learned :math:`\nu` falls in ``DOF_RANGE`` and the true predictive intervals
    cover held-out observations at 50/90/95% within 3.5 binomial sd (2000 entries: sd 0.011 / 0.0067 / 0.0049),
    where the Gaussian model's 50% interval covers too much; the Student-t model's NLPD is lower. Measured: coverage
    0.519 / 0.903 / 0.946 (Gaussian 0.590 / 0.916 / 0.948), NLPD -0.572 (Gaussian -0.466)."""
    d, gauss, stud = heavy_fits
    assert DOF_RANGE[0] <= stud.dof_ <= DOF_RANGE[1], stud.dof_
    y = d.y_test
    n = len(y)
    for level in (0.5, 0.9, 0.95):
        lo, hi = stud.predict_interval(d.X_test, level)
        cover = float(((y >= lo[:, 0]) & (y <= hi[:, 0])).double().mean())
        assert abs(cover - level) <= 3.5 * math.sqrt(level * (1 - level) / n), (level, cover)
    lo, hi = gauss.predict_interval(d.X_test, 0.5)
    assert float(((y >= lo[:, 0]) & (y <= hi[:, 0])).double().mean()) > 0.5 + 4 * math.sqrt(0.25 / n)
    nlpd_t = -float(stud.log_predictive_density(d.X_test, y).mean())
    nlpd_g = -float(gauss.log_predictive_density(d.X_test, y).mean())
    assert nlpd_t < nlpd_g - 0.02, (nlpd_t, nlpd_g)


def test_the_convergence_test_waits_for_the_degrees_of_freedom(heavy_fits):
    r"""The fitted values settle before the Student-t :math:`\nu`: a test that watched them alone stopped at
    ``min_sweeps`` with :math:`\nu` at 9.9 on ``heavy_fits``' data; with :math:`1/\nu` watched too (it shifts the
    predictive quantiles, Cornish-Fisher) the fit converges after 47 sweeps at 4.8 (true 4). A converged fit's last
    sweep moved :math:`1/\nu` by less than ``tol``, the recorded change is at least that move in every sweep, and
    :math:`1/\nu` did move by more than ``tol`` in the first ``min_sweeps`` sweeps (so the check is not vacuous)."""
    d, _, _ = heavy_fits
    stud = fit_quietly(d, noise="student_t", max_sweeps=150, n_restarts=0, hyper_every=2)
    h = stud.history
    assert stud.converged, len(h)
    moves = [abs(1.0 / b["dof"] - 1.0 / a["dof"]) for a, b in zip(h[:-1], h[1:])]
    assert moves[-1] < stud.tol, moves[-1]
    assert all(b["delta"] >= m for b, m in zip(h[1:], moves)), "delta must include the move of 1/dof"
    assert max(moves[: stud.min_sweeps]) > stud.tol
    assert DOF_RANGE[0] <= stud.dof_ <= DOF_RANGE[1], stud.dof_


def test_on_gaussian_noise_the_degrees_of_freedom_go_large_and_accuracy_is_kept():
    r"""Gaussian noise (sd 0.05): the learned :math:`\nu` is large (above 10; 13.9 measured on these 800 entries: the
    expected squared residuals :math:`e_n` include the entries' unequal posterior variances and misfit, which the
    scales absorb as a little excess kurtosis) and the test RMSE of the Student-t model is within 5% of the Gaussian
    model's."""
    d = make_synthetic_tensor(800, 400, rank=2, n_coords=25, noise_sd=0.05, seed=4)
    kw = dict(max_sweeps=30, n_restarts=0, hyper_every=2)
    gauss, stud = fit_quietly(d, **kw), fit_quietly(d, noise="student_t", **kw)
    assert stud.dof_ > 10.0, stud.dof_

    def rmse(m):
        return float((m.predict(d.X_test)[:, 0] - d.y_test).square().mean().sqrt())

    assert rmse(stud) <= 1.05 * rmse(gauss), (rmse(stud), rmse(gauss))


# ---------------------------------------------------------------------------------------------------------------
# the model contract, options, bad input
def contract_query_t(model, as_numpy):
    g = torch.linspace(0.05, 0.95, 6, dtype=D)
    Xt = torch.stack([g, g.flip(0), torch.full_like(g, 0.4)], -1)
    return model.predict(Xt.numpy() if as_numpy else Xt, return_std=True, observation_noise=True)


def test_student_t_keeps_the_model_contract_and_its_files(tmp_path, t_fit):
    from contract import check_model_contract

    d = make_synthetic_tensor(150, 10, rank=2, n_coords=12, noise_sd=0.05, seed=13)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check_model_contract(
            lambda: FunBaT(2, noise="student_t", max_sweeps=8, n_restarts=0),
            lambda m: m.fit(d.X_train.numpy(), d.y_train.numpy()),
            contract_query_t,
            tmp_path,
        )
    data, m = t_fit
    path = tmp_path / "t.pt"
    m.save(path)
    back = FunBaT.load(path)
    assert back.noise == "student_t" and back.dof_ == m.dof_ and back.elbo() == m.elbo()
    X = data.X_test[:5]
    torch.testing.assert_close(back.predict_interval(X, 0.8), m.predict_interval(X, 0.8), rtol=0, atol=0)
    torch.testing.assert_close(
        back.log_predictive_density(X, data.y_test[:5]), m.log_predictive_density(X, data.y_test[:5])
    )
    assert "dof=" in repr(m) and "noise_model='student_t'" in repr(m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        grown = m.rebuild_with(data.X_test[:5], data.y_test[:5], max_sweeps=3)
    assert grown.noise == "student_t" and grown.dof_ == m.dof_  # held fixed like the kernels
    fixed = fit_quietly(data, noise="student_t", dof=7.0, max_sweeps=4, n_restarts=0)
    assert fixed.dof_ == 7.0
    cp = FunBaTCP(2, noise="student_t", max_sweeps=4, n_restarts=0)
    assert cp.noise == "student_t"


def test_bad_noise_options_raise():
    with pytest.raises(ValueError, match="noise"):
        FunBaT(2, noise="cauchy")
    with pytest.raises(ValueError, match="noise"):
        FunBaT(2, noise=None)
    with pytest.raises(ValueError, match="dof"):
        FunBaT(2, noise="student_t", dof=2.0)
    with pytest.raises(ValueError, match="dof"):
        FunBaT(2, noise="student_t", dof=math.inf)
    with pytest.raises(ValueError, match="dof"):
        FunBaT(2, noise="student_t", dof=True)
    with pytest.raises(ValueError, match="dof.*student_t"):
        FunBaT(2, dof=5.0)
    with pytest.raises(ValueError, match="dof"):
        scale_mixture_nodes(1.5)
    with pytest.raises(ValueError, match="n_nodes"):
        scale_mixture_nodes(5.0, n_nodes=1)
    d = make_synthetic_tensor(100, 10, rank=2, n_coords=10, seed=9)
    m = fit_quietly(d, noise="student_t", max_sweeps=3, learn_hyperparameters=False, n_restarts=0)
    for q in (0.0, 1.0, 1.5, True):
        with pytest.raises(ValueError, match="`q`"):
            m.predict_quantile(d.X_test, q)
    with pytest.raises(ValueError, match="`level`"):
        m.predict_interval(d.X_test, 1.0)
    with pytest.raises(ValueError, match="`y` must have shape"):
        m.log_predictive_density(d.X_test, d.y_test[:-1])
    with pytest.raises(ValueError, match="K=3 coordinates"):
        m.predictive_cdf(d.X_test[:, :2], d.y_test)
    with pytest.raises(RuntimeError, match="not fitted"):
        FunBaT(2, noise="student_t").predict_interval(d.X_test)

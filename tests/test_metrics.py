"""gpgeom.metrics against independent truths: closed forms, numerical integration, Monte Carlo draws from the
predictive itself, chi-square quantiles in closed form, and the refusals of degenerate input."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

import gpgeom.metrics as gm

LOG_2PI_HALF = 0.5 * math.log(2 * math.pi)


def _heteroscedastic(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Targets drawn from the predictive N(mean, std^2) itself, with means and stds varying over entries."""
    mean = 3 * torch.randn(n, dtype=torch.float64)
    std = 0.1 + 2 * torch.rand(n, dtype=torch.float64)
    y = mean + std * torch.randn(n, dtype=torch.float64)
    return y, mean, std


# ---------------------------------------------------------------------------------------------------- closed forms


def test_nlpd_of_standard_normal_at_known_points():
    assert gm.nlpd(0.0, 0.0, 1.0) == pytest.approx(LOG_2PI_HALF, rel=1e-14)
    assert gm.nlpd(1.0, 0.0, 1.0) == pytest.approx(LOG_2PI_HALF + 0.5, rel=1e-14)
    # z = 1 with std 2: the density is halved, so the score rises by log 2
    assert gm.nlpd(3.0, 1.0, 2.0) == pytest.approx(LOG_2PI_HALF + 0.5 + math.log(2), rel=1e-14)
    # agrees with scipy's log density entry by entry, then averaged
    y, mean, std = np.array([-1.3, 0.2, 4.0]), np.array([0.0, 0.5, 1.0]), np.array([0.5, 1.0, 3.0])
    assert gm.nlpd(y, mean, std) == pytest.approx(-stats.norm.logpdf(y, mean, std).mean(), rel=1e-13)


def test_crps_of_standard_normal_at_zero_is_sqrt2_minus_1_over_sqrtpi():
    assert gm.crps_gaussian(0.0, 0.0, 1.0) == pytest.approx((math.sqrt(2) - 1) / math.sqrt(math.pi), rel=1e-13)


@pytest.mark.parametrize(("y", "mu", "sigma"), [(0.0, 0.0, 1.0), (1.7, 0.2, 0.5), (-3.0, 1.0, 2.5), (10.0, 0.0, 1.0)])
def test_crps_equals_the_integral_of_the_squared_cdf_difference(y, mu, sigma):
    """CRPS(F, y) = int (F(x) - 1{x >= y})^2 dx, integrated numerically on both sides of y."""
    left, _ = integrate.quad(lambda x: stats.norm.cdf(x, mu, sigma) ** 2, -np.inf, y)
    right, _ = integrate.quad(lambda x: stats.norm.sf(x, mu, sigma) ** 2, y, np.inf)
    assert gm.crps_gaussian(y, mu, sigma) == pytest.approx(left + right, rel=1e-7, abs=1e-10)


def test_crps_of_a_point_prediction_is_the_absolute_error_and_is_continuous_there():
    y, mean = np.array([1.0, -2.0, 0.5]), np.array([0.0, 1.0, 0.5])
    assert gm.crps_gaussian(y, mean, 0.0) == pytest.approx(np.abs(y - mean).mean(), rel=1e-14)
    assert gm.crps_gaussian(y, mean, 1e-9) == pytest.approx(np.abs(y - mean).mean(), rel=1e-8)
    for tiny in (1e-300, 1e-310, 5e-324):  # |y - mu| / sigma overflows to inf below about 1e-308
        assert gm.crps_gaussian(y, mean, tiny) == pytest.approx(np.abs(y - mean).mean(), rel=1e-14)


def test_expected_scores_over_targets_match_their_closed_forms():
    """For y ~ N(0, 1) scored by N(0, c^2): E NLPD = log(c sqrt(2 pi)) + 1/(2c^2) and, from the kernel form
    CRPS = E|X - y| - E|X - X'|/2, E CRPS = sqrt(2/pi) sqrt(1 + c^2) - c / sqrt(pi); both are least at c = 1."""
    n = 40_000
    y = torch.randn(n, dtype=torch.float64)
    expected = {}
    for c in (0.6, 1.0, 1.6):
        e_nlpd = math.log(c) + LOG_2PI_HALF + 0.5 / c**2
        e_crps = math.sqrt(2 / math.pi) * math.sqrt(1 + c**2) - c / math.sqrt(math.pi)
        nl = -torch.distributions.Normal(0.0, c).log_prob(y)
        z = y / c
        cr = c * (z * (2 * torch.special.ndtr(z) - 1) + 2 * torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi))
        cr = cr - c / math.sqrt(math.pi)
        assert gm.nlpd(y, 0.0, c) == pytest.approx(e_nlpd, abs=5 * float(nl.std()) / math.sqrt(n))
        assert gm.crps_gaussian(y, 0.0, c) == pytest.approx(e_crps, abs=5 * float(cr.std()) / math.sqrt(n))
        expected[c] = (e_nlpd, e_crps)
    assert min(expected, key=lambda c: expected[c][0]) == 1.0 == min(expected, key=lambda c: expected[c][1])


def test_interval_width_is_twice_the_normal_quantile_times_the_mean_std():
    assert gm.interval_width(1.0) == pytest.approx(2 * 1.959963984540054, rel=1e-12)
    assert gm.interval_width(torch.tensor([1.0, 3.0]), level=0.5) == pytest.approx(
        2 * 0.6744897501960817 * 2, rel=1e-12
    )


def test_coverage_counts_entries_inside_the_interval():
    # errors of 0, 0.5, 1, 1.5, 2.5, 4 standard deviations (none near the 95% edge 1.96 or the 50% edge 0.674)
    z = np.array([0.0, -0.5, 1.0, -1.5, 2.5, 4.0])
    std = np.array([1.0, 2.0, 0.5, 1.0, 3.0, 0.1])
    mean = np.linspace(-1, 1, 6)
    y = mean + z * std
    assert gm.coverage(y, mean, std, 0.95) == pytest.approx(4 / 6)
    assert gm.coverage(y, mean, std, 0.5) == pytest.approx(2 / 6)
    assert gm.coverage_table(y, mean, std, levels=(0.5, 0.95)) == {
        0.5: pytest.approx(2 / 6),
        0.95: pytest.approx(4 / 6),
    }
    nominal, observed = gm.reliability_curve(y, mean, std, levels=[0.5, 0.95])
    np.testing.assert_allclose(nominal, [0.5, 0.95])
    np.testing.assert_allclose(observed, [2 / 6, 4 / 6])
    np.testing.assert_allclose(gm.reliability_curve(y, mean, std, levels=torch.tensor([0.5, 0.95]))[1], observed)


def test_standardized_errors_broadcast_and_agree_for_numpy_and_torch():
    y = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    mean = torch.randn(5, 3, dtype=torch.float64)
    std = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)  # one std per output, broadcast over rows
    z = gm.standardized_errors(y, mean, std)
    assert z.shape == (5, 3) and z.dtype == torch.float64 and not z.requires_grad
    torch.testing.assert_close(z, (y.detach() - mean) / std)
    assert gm.z_rms(y.detach().numpy(), mean.numpy(), std.numpy()) == pytest.approx(float(z.square().mean().sqrt()))
    # float32 input is scored in float64
    assert gm.nlpd(y.detach().float(), mean.float(), std.float()) == pytest.approx(gm.nlpd(y, mean, std), rel=1e-6)


def test_pit_standardized_errors_invert_the_cdf_and_are_standard_normal_for_calibrated_draws():
    r"""For a Gaussian predictive the PIT z is the standardized error (to 1e-9 up to |z| = 5, where the CDF's own
    rounding near 1 is below that: 1e-16 / phi(5) = 7e-11); for a
    Student-t predictive it is :math:`\Phi^{-1}(F_t(y))` (SciPy's ``norm.ppf``); draws from a non-Gaussian predictive
    (log-normal) give standard normal z (Kolmogorov-Smirnov p > 0.01 on 20,000 draws) whose coverage matches the
    level; the clip keeps an extreme PIT finite; values outside [0, 1] are refused."""
    rng = np.random.default_rng(3)
    mu, sd = rng.normal(size=500), rng.uniform(0.2, 2.0, 500)
    y = mu + sd * np.clip(rng.normal(size=500) * 2.5, -5, 5)
    z = gm.pit_standardized_errors(stats.norm.cdf(y, mu, sd))
    np.testing.assert_allclose(z.numpy(), (y - mu) / sd, rtol=0, atol=1e-9)
    t = rng.standard_t(4.0, 300)
    np.testing.assert_allclose(
        gm.pit_standardized_errors(torch.tensor(stats.t.cdf(t, 4.0))).numpy(), stats.norm.ppf(stats.t.cdf(t, 4.0)),
        rtol=1e-12, atol=1e-12,
    )  # fmt: skip
    m, s = rng.normal(size=20_000), rng.uniform(0.1, 1.0, 20_000)
    draws = np.exp(m + s * rng.normal(size=20_000))
    zd = gm.pit_standardized_errors(stats.lognorm.cdf(draws, s, scale=np.exp(m))).numpy()
    assert stats.kstest(zd, "norm").pvalue > 0.01
    assert abs(float((np.abs(zd) <= stats.norm.ppf(0.95)).mean()) - 0.9) < 0.01
    extreme = gm.pit_standardized_errors([0.0, 1.0])
    assert torch.isfinite(extreme).all() and float(extreme[1]) == pytest.approx(-float(extreme[0]))
    assert float(extreme[1]) == pytest.approx(stats.norm.isf(1e-12), rel=1e-12)
    with pytest.raises(ValueError, match=r"pit must lie in \[0, 1\]"):
        gm.pit_standardized_errors([0.2, 1.5])
    with pytest.raises(ValueError, match="eps must be"):
        gm.pit_standardized_errors([0.2], eps=0.7)
    with pytest.raises(TypeError, match="eps must be a number in .* got str"):
        gm.pit_standardized_errors([0.2], eps="1e-12")


@pytest.mark.parametrize("eps", [1e-20, 1e-16, 1e-15])
def test_pit_clipping_is_symmetric_for_an_eps_below_float64_resolution_near_1(eps):
    """Both tails clip at |z| = norm.isf(eps): for eps = 1e-20 the upper one was +inf (1 - eps rounds to 1) against
    -9.262 for the lower, for 1e-16 8.2095 against 8.2221; a PIT just inside the clip is Phi^{-1} of it (scipy)."""
    z = gm.pit_standardized_errors([0.0, 1.0, 1e-300, 0.5], eps=eps).numpy()
    np.testing.assert_allclose(z, [-stats.norm.isf(eps), stats.norm.isf(eps), -stats.norm.isf(eps), 0.0], rtol=1e-12)
    z32 = gm.pit_standardized_errors([1.0], eps=np.float32(eps)).numpy()  # a numpy eps was refused as not a number
    np.testing.assert_allclose(z32, [stats.norm.isf(float(np.float32(eps)))], rtol=1e-12)
    inside = np.array([10 * eps, 1 - 2**-40])
    np.testing.assert_allclose(gm.pit_standardized_errors(inside, eps=eps).numpy(), stats.norm.ppf(inside), rtol=1e-12)


def test_calibration_summary_collects_the_individual_metrics():
    y, mean, std = _heteroscedastic(200)
    s = gm.calibration_summary(y, mean, std)
    assert list(s) == ["coverage_50", "coverage_90", "coverage_95", "z_rms", "nlpd", "crps", "width_95"]
    assert all(isinstance(v, float) for v in s.values())
    assert s["coverage_90"] == gm.coverage(y, mean, std, 0.9)
    assert s["z_rms"] == gm.z_rms(y, mean, std) and s["nlpd"] == gm.nlpd(y, mean, std)
    assert s["crps"] == gm.crps_gaussian(y, mean, std) and s["width_95"] == gm.interval_width(std, 0.95)


# ----------------------------------------------------------------------------------------------------- Monte Carlo


def test_draws_from_the_predictive_are_calibrated_at_every_level():
    n = 20_000
    y, mean, std = _heteroscedastic(n)
    nominal, observed = gm.reliability_curve(y, mean, std)
    assert nominal.shape == observed.shape == (19,)
    np.testing.assert_allclose(nominal, np.arange(1, 20) * 0.05)
    tol = 4 * np.sqrt(nominal * (1 - nominal) / n)  # binomial standard error, 4 sigma
    assert np.all(np.abs(observed - nominal) <= tol), (observed - nominal) / tol
    # z RMS -> 1: z^2 has variance 2, so its mean has standard error sqrt(2/n)
    assert gm.z_rms(y, mean, std) == pytest.approx(1.0, abs=2 * math.sqrt(2 / n))


def test_overconfident_predictions_undercover_by_the_amount_theory_predicts():
    n = 20_000
    y, mean, std = _heteroscedastic(n)
    # reported std half the truth: the 95% interval is +-0.98 true sigmas, covering P(|Z| <= 0.98)
    true_cov = 2 * stats.norm.cdf(0.5 * stats.norm.ppf(0.975)) - 1
    assert gm.coverage(y, mean, 0.5 * std) == pytest.approx(true_cov, abs=4 * math.sqrt(true_cov * (1 - true_cov) / n))
    assert gm.z_rms(y, mean, 0.5 * std) == pytest.approx(2.0, abs=4 * math.sqrt(2 / n))
    assert gm.z_rms(y, mean, 2 * std) == pytest.approx(0.5, abs=math.sqrt(2 / n))


# ------------------------------------------------------------------------------------------------------------ NEES


def _random_spd(batch: int, d: int) -> torch.Tensor:
    a = torch.randn(batch, d, d, dtype=torch.float64)
    return a @ a.mT + 0.5 * torch.eye(d, dtype=torch.float64)


def test_nees_equals_the_dense_quadratic_form():
    e = torch.randn(7, 3, dtype=torch.float64)
    cov = _random_spd(7, 3)
    dense = np.einsum("bi,bij,bj->b", e.numpy(), np.linalg.inv(cov.numpy()), e.numpy())
    np.testing.assert_allclose(gm.nees(e, cov).numpy(), dense, rtol=1e-10)
    # one covariance shared by a batch, numpy in, and d = 1 reducing to z^2
    out = gm.nees(e.numpy(), cov[0].numpy())
    assert out.shape == (7,)
    np.testing.assert_allclose(out.numpy(), np.einsum("bi,ij,bj->b", e.numpy(), np.linalg.inv(cov[0]), e.numpy()))
    torch.testing.assert_close(gm.nees(e[:, :1], torch.full((1, 1), 4.0)), e[:, 0] ** 2 / 4)


def test_mean_nees_of_consistent_errors_is_the_dimension():
    n, d = 20_000, 3
    cov = _random_spd(n, d)
    e = (torch.linalg.cholesky(cov) @ torch.randn(n, d, 1, dtype=torch.float64)).squeeze(-1)
    assert float(gm.nees(e, cov).mean()) == pytest.approx(d, abs=4 * math.sqrt(2 * d / n))


def test_nees_refuses_a_batch_broadcast_larger_than_both_and_pairs_runs_with_times():
    """Errors (n, d) against covariances (n, 1, d, d) used to return an (n, n) tensor scoring every error against
    every covariance (whose mean is not the mean NEES); now refused. Errors of N runs at T times against T
    covariances, (N, T, d) with (T, d, d), score each run at time t against covariance t (a hand loop)."""
    e = torch.randn(5, 2, dtype=torch.float64)
    cov = _random_spd(5, 2)
    with pytest.raises(ValueError, match=r"broadcast to \(5, 5\), larger than both: that pairs every error"):
        gm.nees(e, cov.unsqueeze(1))
    with pytest.raises(ValueError, match=r"broadcast to \(5, 5\)"):
        gm.nees(e.unsqueeze(1), cov)
    runs = torch.randn(3, 5, 2, dtype=torch.float64)
    loop = [[float(runs[i, t] @ torch.linalg.inv(cov[t]) @ runs[i, t]) for t in range(5)] for i in range(3)]
    np.testing.assert_allclose(gm.nees(runs, cov).numpy(), loop, rtol=1e-10)


def test_nees_accepts_the_rounding_asymmetry_of_a_float32_covariance_and_scores_its_symmetric_part():
    """A float32 covariance whose two triangles differ by rounding (1e-6 of its largest entry, as a float32 product
    leaves them) was refused ('cov must be symmetric'); it is scored as (P + P^T) / 2, against numpy's solve in
    float64. The same asymmetry in a float64 covariance is still refused, now with its size."""
    p64 = _random_spd(4, 3)
    p32 = p64.float()
    p32[:, 0, 1] *= 1 + 1e-6
    e = torch.randn(4, 3, dtype=torch.float64)
    sym = 0.5 * (p32.double() + p32.double().mT).numpy()
    dense = np.einsum("bi,bi->b", e.numpy(), np.linalg.solve(sym, e.numpy()[..., None])[..., 0])
    np.testing.assert_allclose(gm.nees(e, p32).numpy(), dense, rtol=1e-10)
    np.testing.assert_allclose(gm.nees(e.numpy(), p32.numpy()).numpy(), dense, rtol=1e-10)
    with pytest.raises(ValueError, match=r"cov must be symmetric: \|cov - cov\^T\| reaches [0-9.e-]+ times"):
        gm.nees(e, p32.double())


def test_nees_band_matches_chi_square_quantiles_in_closed_form():
    # chi^2_1 quantile p is z_{(1+p)/2}^2; chi^2_2 is exponential with mean 2, quantile p is -2 log(1 - p)
    lo, hi = gm.nees_band(1, 1, 0.95)
    assert lo == pytest.approx(stats.norm.ppf(0.5125) ** 2, rel=1e-9)
    assert hi == pytest.approx(stats.norm.ppf(0.9875) ** 2, rel=1e-9)
    lo, hi = gm.nees_band(2, 1, 0.9)
    assert (lo, hi) == (pytest.approx(-2 * math.log(0.95), rel=1e-9), pytest.approx(-2 * math.log(0.05), rel=1e-9))
    # many runs: N d = 200 dof, against the Wilson-Hilferty cube-root normal approximation of chi-square quantiles
    k = 4 * 50
    wh = [k * (1 - 2 / (9 * k) + stats.norm.ppf(p) * math.sqrt(2 / (9 * k))) ** 3 / 50 for p in (0.025, 0.975)]
    assert gm.nees_band(4, 50) == (pytest.approx(wh[0], rel=2e-3), pytest.approx(wh[1], rel=2e-3))


def test_nees_band_holds_consistent_runs_95_percent_of_the_time_and_rejects_a_doubled_covariance():
    reps, n_runs, d = 400, 30, 2
    cov = _random_spd(1, d)[0]
    e = (torch.linalg.cholesky(cov) @ torch.randn(reps, n_runs, d, 1, dtype=torch.float64)).squeeze(-1)
    lo, hi = gm.nees_band(d, n_runs, 0.95)
    mean_nees = gm.nees(e, cov).mean(dim=1)  # (reps,)
    inside = float(((mean_nees >= lo) & (mean_nees <= hi)).double().mean())
    assert inside == pytest.approx(0.95, abs=4 * math.sqrt(0.95 * 0.05 / reps))
    # a filter reporting twice the true covariance: mean NEES near d/2, below the band in (nearly) every repetition
    lo, hi = gm.nees_band(d, 100, 0.95)
    e = (torch.linalg.cholesky(cov) @ torch.randn(200, 100, d, 1, dtype=torch.float64)).squeeze(-1)
    doubled = gm.nees(e, 2 * cov).mean(dim=1)
    assert float((doubled < lo).double().mean()) >= 0.99


# ------------------------------------------------------------------------------------------- OOD ratio and report


def test_ood_std_ratio_is_the_ratio_of_mean_stds():
    assert gm.ood_std_ratio(np.array([2.0, 4.0]), torch.tensor([[1.0], [0.5]])) == pytest.approx(3.0 / 0.75)
    with pytest.raises(ValueError, match="std_in"):
        gm.ood_std_ratio([1.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="std_ood"):
        gm.ood_std_ratio([-1.0], [1.0])


def test_format_calibration_table_writes_one_row_per_model_and_keeps_extra_keys():
    a = gm.calibration_summary(np.zeros(4), 0.0, 1.0)
    rows = {"exact GP": {"rmse": 0.125, **a}, "RVGP": a}
    lines = gm.format_calibration_table(rows).splitlines()
    assert len(lines) == 4
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["model", "rmse", "cov 50%", "cov 90%", "cov 95%", "z RMS", "NLPD", "CRPS", "width 95%"]
    first = [c.strip() for c in lines[2].strip("|").split("|")]
    second = [c.strip() for c in lines[3].strip("|").split("|")]
    assert first[:3] == ["exact GP", "0.125", "1.000"] and float(first[6]) == pytest.approx(LOG_2PI_HALF, abs=1e-3)
    assert second[:2] == ["RVGP", "-"]
    with pytest.raises(ValueError, match="rows"):
        gm.format_calibration_table({})


def test_format_calibration_table_writes_tensors_arrays_and_integers_as_numbers_and_escapes_pipes():
    """A 0-d tensor was written 'tensor(0.9500)', a 0-d numpy array with all its digits ('0.123456'), a count as
    '200.000', and a '|' in a model name split its row into one cell too many; each cell is now compared with the
    number formatted by hand and every row has the header's number of cells."""
    rows = {
        "GP | ARD": {"n": 200, "cov 95": torch.tensor(0.9512), "nlpd": np.array(0.123456), "k": np.int64(7)},
        "RVGP": {"n": 50, "cov 95": np.float32(0.25), "nlpd": -0.0004, "k": 3},
    }
    lines = gm.format_calibration_table(rows).splitlines()
    cells = [[c.strip() for c in line.strip("|").replace("\\|", "\0").split("|")] for line in lines]
    assert {len(c) for c in cells} == {5}
    assert cells[2] == ["GP \0 ARD", "200", f"{0.9512:.3f}", f"{0.123456:.3f}", "7"]
    assert cells[3] == ["RVGP", "50", f"{0.25:.3f}", f"{-0.0004:.3e}", "3"]


def test_plot_reliability_draws_the_diagonal_and_one_line_per_model():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y, mean, std = _heteroscedastic(300)
    curves = {"calibrated": gm.reliability_curve(y, mean, std), "overconfident": gm.reliability_curve(y, mean, std / 3)}
    ax = gm.plot_reliability(curves)
    lines = ax.get_lines()
    assert len(lines) == 3 and [t.get_text() for t in ax.get_legend().get_texts()][1:] == list(curves)
    np.testing.assert_array_equal(lines[2].get_ydata(), curves["overconfident"][1])
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="overconfident"):
        gm.plot_reliability({"overconfident": (np.arange(3), np.arange(4))})


# ------------------------------------------------------------------------------------------------ degenerate input


@pytest.mark.parametrize("bad", ["y", "mean", "std"])
@pytest.mark.parametrize("func", [gm.coverage, gm.nlpd, gm.crps_gaussian, gm.z_rms, gm.calibration_summary])
def test_nan_anywhere_is_refused_naming_the_argument(func, bad):
    args = {"y": np.zeros(3), "mean": np.zeros(3), "std": np.ones(3)}
    args[bad] = np.array([0.0, np.nan, 1.0])
    with pytest.raises(ValueError, match=rf"^{bad} holds NaN"):
        func(**args)


def test_std_must_be_positive_where_it_divides_and_nonnegative_everywhere():
    for func in (gm.nlpd, gm.z_rms, gm.standardized_errors, gm.calibration_summary):
        with pytest.raises(ValueError, match="std must be > 0"):
            func(np.zeros(2), 0.0, np.array([1.0, 0.0]))
    for func in (gm.coverage, gm.crps_gaussian):
        with pytest.raises(ValueError, match="std must be >= 0"):
            func(np.zeros(2), 0.0, np.array([1.0, -0.1]))
    with pytest.raises(ValueError, match="std must be >= 0"):
        gm.interval_width([-1.0])
    # a zero std covers its target only when the mean hits it exactly
    assert gm.coverage(np.array([1.0, 2.0]), np.array([1.0, 0.0]), 0.0) == 0.5


def test_shapes_that_broadcast_into_a_larger_array_or_not_at_all_are_refused():
    with pytest.raises(ValueError, match=r"y \(5,\), mean \(5, 1\)"):
        gm.nlpd(np.zeros(5), np.zeros((5, 1)), 1.0)
    y, cov = torch.randn(4, dtype=torch.float64), 0.25 * torch.eye(4, dtype=torch.float64) + 0.01
    for score in (gm.coverage, gm.nlpd, gm.z_rms):  # a covariance matrix passed as std used to score n^2 pairs
        with pytest.raises(ValueError, match=r"a std of shape \(n, n\) is a covariance matrix"):
            score(y, torch.zeros(4, dtype=torch.float64), cov)
    with pytest.raises(ValueError, match="not to the shape of y"):
        gm.nlpd(np.zeros(1), np.zeros(5), 1.0)
    with pytest.raises(ValueError, match="do not broadcast"):
        gm.coverage(np.zeros(5), np.zeros(4), 1.0)
    with pytest.raises(ValueError, match="y is empty"):
        gm.z_rms(np.zeros(0), 0.0, 1.0)
    with pytest.raises(TypeError, match="mean"):
        gm.nlpd(np.zeros(2), np.array(["a", "b"]), 1.0)


def test_a_one_dimensional_std_or_mean_that_fits_square_targets_two_ways_is_refused():
    """Three points with three components each and one std per point, passed as shape (3,): numpy's rule paired the
    stds with the components and z RMS came out 0.3819 instead of the per-point 0.5774 (a hand loop below); now the
    ambiguous shape is refused with both explicit forms, which score as the loop says."""
    y = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    per_point = np.array([1.0, 2.0, 4.0])
    loop = math.sqrt(sum((y[i, j] / per_point[i]) ** 2 for i in range(3) for j in range(3)) / 9)
    assert gm.z_rms(y, 0.0, per_point[:, None]) == pytest.approx(loop, rel=1e-14)
    assert gm.z_rms(y, 0.0, per_point[None, :]) == pytest.approx(math.sqrt((1 + 0.25 + 1 / 16) / 9), rel=1e-14)
    for score in (gm.coverage, gm.nlpd, gm.z_rms, gm.crps_gaussian, gm.standardized_errors, gm.calibration_summary):
        with pytest.raises(ValueError, match=r"std of shape \(3,\) against y of shape \(3, 3\) is ambiguous"):
            score(y, 0.0, per_point)
        with pytest.raises(ValueError, match=r"mean of shape \(3,\) .* shape \(1, 3\) or \(3, 1\)"):
            score(y, torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="ambiguous"):
        gm.conditional_coverage(y, 0.0, per_point, by=y, n_bins=1)
    with pytest.raises(ValueError, match=r"std of shape \(3, 3\) against y of shape \(3, 3, 3\) is ambiguous"):
        gm.nlpd(np.zeros((3, 3, 3)), 0.0, np.ones((3, 3)))
    # one std per output against (n, D) targets with n != D, and size-1 shapes, fit one way only: still accepted
    assert gm.z_rms(np.zeros((5, 3)), 0.0, np.ones(3)) == 0.0 == gm.z_rms(y * 0, 0.0, np.ones(1))


def test_float32_levels_name_and_score_the_level_they_were_written_as():
    """A float32 tensor or numpy array of levels (torch.tensor([0.5, 0.95]) is float32) gave coverage_table the key
    0.949999988079071, conditional_coverage the column 'coverage_94.9999988079', and scored the interval of that level:
    an error between z(0.949999988) and z(0.95) (scipy's quantiles, 1e-7 apart) was outside. Now the key is 0.95 and
    the count is that of the Python float 0.95."""
    z_lo, z_hi = stats.norm.ppf(0.5 + 0.5 * float(np.float32(0.95))), stats.norm.ppf(0.975)
    y = np.array([0.5 * (z_lo + z_hi), 0.1, 3.0])
    ref = gm.coverage_table(y, 0.0, 1.0, levels=[0.5, 0.95])
    assert ref == {0.5: 1 / 3, 0.95: 2 / 3}
    for levels in (torch.tensor([0.5, 0.95]), np.array([0.5, 0.95], dtype=np.float32), [0.5, np.float32(0.95)]):
        assert gm.coverage_table(y, 0.0, 1.0, levels=levels) == ref
    assert gm.coverage(y, 0.0, 1.0, level=np.float32(0.95)) == 2 / 3
    row = gm.conditional_coverage(y, 0.0, 1.0, by=y, n_bins=1, levels=torch.tensor([0.95]))[0]
    assert row["coverage_95"] == 2 / 3


def test_masked_arrays_with_masked_entries_are_refused_and_unmasked_ones_scored():
    """A masked target scored its hidden value: z RMS 28.87 with the 50.0 behind the mask, where numpy's masked mean
    gives 0.158. Masked entries are now refused naming the argument; a masked array with nothing masked is scored as
    its data."""
    y = np.ma.masked_array([0.1, -0.2, 50.0], mask=[False, False, True])
    for call in (lambda: gm.z_rms(y, 0.0, 1.0), lambda: gm.coverage(y, 0.0, 1.0), lambda: gm.interval_width(y)):
        with pytest.raises(ValueError, match=r"^(y|std) is a numpy masked array with 1 masked entries of 3"):
            call()
    with pytest.raises(ValueError, match="^error is a numpy masked array"):
        gm.nees(np.ma.masked_array([[1.0, 0.0]], mask=[[False, True]]), np.eye(2))
    assert gm.z_rms(y.compressed(), 0.0, 1.0) == pytest.approx(float(np.ma.sqrt((y**2).mean())), rel=1e-14)
    assert gm.z_rms(np.ma.masked_array([0.3, 0.4]), 0.0, 1.0) == pytest.approx(math.sqrt(0.125), rel=1e-14)


def test_levels_outside_the_open_unit_interval_are_refused():
    for level in (0.0, 1.0, 95, -0.5):
        with pytest.raises(ValueError, match="level"):
            gm.coverage(0.0, 0.0, 1.0, level)
    with pytest.raises(TypeError, match="level"):
        gm.interval_width(1.0, level="0.95")
    with pytest.raises(ValueError, match="levels"):
        gm.reliability_curve(0.0, 0.0, 1.0, levels=[0.5, 1.5])
    with pytest.raises(ValueError, match="levels is empty"):
        gm.coverage_table(0.0, 0.0, 1.0, levels=[])


def test_nees_refuses_bad_shapes_nan_and_non_positive_definite_covariances():
    e = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="cov has shape"):
        gm.nees(e, torch.eye(3))
    with pytest.raises(ValueError, match=r"cov must have shape \(\.\.\., d, d\)"):
        gm.nees(e, torch.ones(4, 2, 3))
    with pytest.raises(ValueError, match="do not broadcast"):
        gm.nees(e, torch.eye(2).expand(3, 2, 2))
    with pytest.raises(ValueError, match="cov is not positive definite"):
        gm.nees(e, torch.tensor([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="cov must be symmetric"):
        gm.nees(e, torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="error holds NaN"):
        gm.nees(torch.tensor([[float("nan"), 0.0]]), torch.eye(2))
    with pytest.raises(ValueError, match="n_runs"):
        gm.nees_band(2, 0)
    with pytest.raises(TypeError, match="dof"):
        gm.nees_band(2.5, 3)


# ------------------------------------------------------------------------------------------------------------ demo


@pytest.mark.slow
def test_calibration_demo_section_scores_three_models_and_the_exact_gp_is_calibrated(tmp_path):
    """The quick demo section end to end: one figure, one table row per model; the exact GP, fitted to data drawn
    from a smooth function plus the Gaussian noise it models, covers 95% of 500 held-out targets within 4 binomial
    standard errors, and its latent std grows far from the data."""
    import matplotlib

    matplotlib.use("Agg")
    from gpgeom.demo.calibration import calibration_section

    sec = calibration_section(tmp_path, quick=True, seed=0, progress=False)
    assert [p.name for p in sec.figures] == ["calibration_reliability.png"]
    assert sec.figures[0].stat().st_size > 10_000
    rows = [line for line in sec.text.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    cells = {r.strip("|").split("|")[0].strip(): [c.strip() for c in r.strip("|").split("|")[1:]] for r in rows}
    assert list(cells) == ["ExactGP (2-D function)", "RVGP (sphere field)", "FunBaT (Tucker tensor)"]
    cov95 = float(cells["ExactGP (2-D function)"][3])
    assert cov95 == pytest.approx(0.95, abs=4 * math.sqrt(0.95 * 0.05 / 500))
    ratio = dict(sec.table)["ExactGP (2-D function): OOD / in-distribution latent std"]
    assert float(ratio) > 2


@pytest.mark.slow
def test_rvgp_demo_scores_the_noisy_predictive_against_the_noisy_observations(tmp_path, monkeypatch):
    """The RVGP demo's coverage of the predictive of a new observation (noise included) is counted against the
    held-out noisy observations, with the 97.5 % normal quantile from scipy: it was counted against the noise-free
    field, whose deviations from the mean lack the noise the intervals include (1.000 at quick / seed 0, against
    0.983 for the observations)."""
    import matplotlib

    matplotlib.use("Agg")
    import gpgeom.demo.rvgp as demo
    from gpgeom.datasets.vector_fields import sphere_vector_field

    fitted = []

    class Recorded(demo.RVGP):
        def fit(self, *args, **kwargs):
            fitted.append(self)
            return super().fit(*args, **kwargs)

    monkeypatch.setattr(demo, "RVGP", Recorded)
    sec = demo.rvgp_section(tmp_path, quick=True, seed=0, progress=False)
    shown = float(dict(sec.table)["95 % coverage of the held-out noisy observations (per component)"])
    # the demo's data and split, rebuilt: quick is 1,000 points, seed 0
    s = sphere_vector_field(1000, "mixed", vector_noise=0.02, seed=0)
    rng = np.random.default_rng(0)
    patch = s.points[:, 2] > np.cos(0.4)
    observed = np.flatnonzero(~patch & (rng.random(1000) < 0.3))
    hidden = np.setdiff1d(np.arange(1000), observed)
    (gp,) = fitted
    mean = gp.predict(hidden).detach().numpy()
    sd = gp.predict(hidden, return_std=True, observation_noise=True)[1].detach().numpy()
    inside = np.abs(s.vectors[hidden] - mean) <= stats.norm.ppf(0.975) * sd
    assert shown == pytest.approx(float(inside.mean()), abs=5e-4)
    assert not np.allclose(s.vectors[hidden], s.clean_vectors[hidden])  # the observations are noisy


def test_the_package_imports_only_numpy_scipy_and_torch():
    import subprocess
    import sys

    heavy = ["matplotlib", "gpytorch", "botorch", "pyro", "linear_operator", "gpgeom.engine", "gpgeom.models"]
    code = f"import sys, gpgeom.metrics; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_vector_field_metrics_against_a_direct_computation_and_known_angles():
    rng = np.random.default_rng(3)
    true = rng.normal(size=(7, 3))
    pred = true + 0.1 * rng.normal(size=(7, 3))
    expected = math.sqrt(((pred - true) ** 2).sum() / (true**2).sum())
    assert gm.relative_l2(pred, true) == pytest.approx(expected, rel=1e-12)
    assert gm.relative_l2(torch.as_tensor(pred, dtype=torch.float32), true) == pytest.approx(expected, rel=1e-6)
    e = np.eye(3)
    vectors = np.array([e[0], 2.5 * e[0], -e[0], e[0] + e[1], np.zeros(3)])
    reference = np.array([e[0], e[0], e[0], e[0], e[2]])
    angles = gm.angular_errors(vectors, reference)
    np.testing.assert_allclose(angles, [0.0, 0.0, 180.0, 45.0, 90.0], atol=1e-6)
    cosines = np.einsum("ij,ij->i", pred, true) / np.linalg.norm(pred, axis=1) / np.linalg.norm(true, axis=1)
    np.testing.assert_allclose(gm.angular_errors(torch.as_tensor(pred), true), np.degrees(np.arccos(cosines)))


@pytest.mark.parametrize("metric", ["relative_l2", "angular_errors"])
def test_vector_field_metrics_name_bad_input(metric):
    fn = getattr(gm, metric)
    good = np.ones((4, 3))
    with pytest.raises(ValueError, match=r"pred and true must have the same shape \(m, D\), got \(4, 3\) and \(4, 2\)"):
        fn(good, np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"pred must be an \(m, D\) array of vectors .* got shape \(4,\)"):
        fn(np.ones(4), good)
    bad = good.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="true holds NaN entries"):
        fn(good, bad)
    with pytest.raises(TypeError, match="pred must hold real numbers"):
        fn(np.array([["a", "b", "c"]] * 4), good)
    if metric == "relative_l2":
        with pytest.raises(ValueError, match="true is zero everywhere: the relative L2 error is undefined"):
            fn(good, np.zeros((4, 3)))


def test_vector_field_metrics_are_scale_invariant_and_exact_at_small_angles():
    """Rows at known angles theta (from 1e-9 rad to 180 degrees less 1e-9 rad) built as (cos, sin, 0) against e_0:
    the angles come back to 1e-12 relative at every scale a float64 holds (arccos gave 0 for 1e-9 rad, NaN above 1e154
    and 90 degrees below 1e-154), and the relative L2 error is the one at scale 1 (it was NaN at 1e160, off in the
    4th digit at 1e-160 and 'true is zero everywhere' at 1e-170)."""
    theta = np.array([1e-9, 1e-7, 1e-3, math.pi / 6, math.pi / 2, math.pi - 1e-9])
    pred = np.stack([np.cos(theta), np.sin(theta), np.zeros_like(theta)], axis=1) * np.array([[1.0], [2.0], [3.0],
                    [0.5], [1.5], [4.0]])  # fmt: skip
    true = np.tile([1.0, 0.0, 0.0], (len(theta), 1))
    diff = pred - true
    rel = math.sqrt((diff**2).sum() / (true**2).sum())
    for scale in (1e-170, 1e-160, 1.0, 1e160, 1e300):
        np.testing.assert_allclose(gm.angular_errors(scale * pred, scale * true), np.degrees(theta), rtol=1e-12)
        assert gm.relative_l2(scale * pred, scale * true) == pytest.approx(rel, rel=1e-14)
    # the zero-vector convention holds at any scale of the other vector
    np.testing.assert_allclose(gm.angular_errors(np.zeros((2, 3)), [[1e-200, 0, 0], [0, 0, 0]]), [90.0, 90.0])


# ------------------------------------------------------------------------------------------------ interval coverage


def test_interval_coverage_counts_closed_intervals_and_equals_coverage_on_gaussian_intervals():
    """Bounds count as inside (a hand count of 6 targets: 4 inside, three of them on a bound); on 20,000 draws from
    heteroscedastic Gaussians, the intervals mean +- z std give exactly coverage() at 50/90/95 %, each within 4
    binomial standard deviations of the level; an asymmetric interval (an equal-tailed quantile pair of a skewed
    gamma predictive, scipy's ppf) covers its draws at its level."""
    y = torch.tensor([0.0, 1.0, 2.0, -1.0, 5.0, 3.0], dtype=torch.float64)
    lower = torch.tensor([0.0, -1.0, 2.5, -2.0, 0.0, 0.0], dtype=torch.float64)
    upper = torch.tensor([1.0, 1.0, 3.0, 0.0, 4.0, 3.0], dtype=torch.float64)
    assert gm.interval_coverage(y, lower, upper) == 4 / 6
    assert gm.interval_coverage(y.numpy(), lower.numpy(), upper.numpy()) == 4 / 6
    assert gm.interval_coverage(y[:, None], -1.0, np.array([1.0])) == 3 / 6  # scalar / (1,) bounds broadcast
    yy, mean, std = _heteroscedastic(20_000)
    for level in (0.5, 0.9, 0.95):
        z = stats.norm.ppf(0.5 + 0.5 * level)
        got = gm.interval_coverage(yy, mean - z * std, mean + z * std)
        assert got == gm.coverage(yy, mean, std, level)
        assert abs(got - level) <= 4 * math.sqrt(level * (1 - level) / 20_000)
    rng = np.random.default_rng(0)
    shape = rng.uniform(0.5, 3.0, 20_000)
    draws = rng.gamma(shape)
    cov = gm.interval_coverage(draws, stats.gamma.ppf(0.05, shape), stats.gamma.ppf(0.95, shape))
    assert abs(cov - 0.9) <= 4 * math.sqrt(0.09 / 20_000)


def test_interval_coverage_refuses_bad_bounds_naming_the_argument():
    """The checks of coverage(): NaN, shapes that pair every target with every interval or fit two ways, masked
    entries; and a lower bound above its upper bound."""
    y, lo, hi = np.zeros(3), -np.ones(3), np.ones(3)
    with pytest.raises(ValueError, match="^lower holds NaN"):
        gm.interval_coverage(y, np.array([0.0, np.nan, 0.0]), hi)
    with pytest.raises(ValueError, match="^upper holds infinite"):
        gm.interval_coverage(y, lo, np.array([1.0, np.inf, 1.0]))
    with pytest.raises(ValueError, match=r"y \(3,\), lower \(3, 1\) and upper \(3,\) broadcast to \(3, 3\)"):
        gm.interval_coverage(y, lo[:, None], hi)
    with pytest.raises(ValueError, match="do not broadcast"):
        gm.interval_coverage(y, np.zeros(4), hi)
    with pytest.raises(ValueError, match=r"upper of shape \(3,\) against y of shape \(3, 3\) is ambiguous"):
        gm.interval_coverage(np.zeros((3, 3)), -1.0, hi)
    with pytest.raises(ValueError, match="^y is a numpy masked array with 1 masked entries of 3"):
        gm.interval_coverage(np.ma.masked_array(y, mask=[False, True, False]), lo, hi)
    with pytest.raises(ValueError, match=r"lower must be <= upper everywhere, got lower > upper at 1 of 3 entries"):
        gm.interval_coverage(y, np.array([-1.0, 2.0, -1.0]), hi)
    with pytest.raises(TypeError, match="upper"):
        gm.interval_coverage(y, lo, np.array(["a", "b", "c"]))

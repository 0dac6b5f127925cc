"""gpgeom.metrics.conditional_coverage against closed forms: a homoscedastic prediction of heteroscedastic targets
covers each noise level's bin by the normal probability theory gives, calibrated predictions cover every bin
nominally, the bins partition the entries, and bad input is refused naming the argument."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import gpgeom.metrics as gm


def test_one_noise_level_for_heteroscedastic_targets_covers_each_bin_as_the_normal_cdf_says():
    torch.manual_seed(0)
    per_group, sds = 20_000, (0.5, 1.0, 2.0)
    s = torch.tensor(sds, dtype=torch.float64).repeat_interleave(per_group)
    perm = torch.randperm(s.numel())
    s = s[perm]  # bins must find the groups by the covariate, not by position
    y = s * torch.randn(s.numel(), dtype=torch.float64)
    rows = gm.conditional_coverage(y, 0.0, 1.0, by=s, n_bins=3, levels=(0.5, 0.95))
    assert [r["n"] for r in rows] == [per_group] * 3
    assert [(r["low"], r["high"]) for r in rows] == [(v, v) for v in sds]
    for r, sd in zip(rows, sds):
        for level in (0.5, 0.95):
            # |y| <= q sigma_pred with y ~ N(0, sd^2): P(|Z| <= q / sd)
            p = 2 * stats.norm.cdf(stats.norm.ppf(0.5 + level / 2) / sd) - 1
            tol = 5 * math.sqrt(max(p * (1 - p), 1e-6) / per_group)
            assert r[f"coverage_{100 * level:g}"] == pytest.approx(p, abs=tol)
        assert r["z_rms"] == pytest.approx(sd, rel=5 * math.sqrt(2 / per_group))
        assert r["mean_std"] == 1.0
    # the marginal coverage is the bins' average (equal counts): the bins split it, they do not re-estimate it
    for level in (0.5, 0.95):
        marginal = np.mean([r[f"coverage_{100 * level:g}"] for r in rows])
        assert gm.coverage(y, 0.0, 1.0, level) == pytest.approx(marginal, rel=1e-12)


def test_calibrated_predictions_cover_every_bin_nominally_and_rmse_is_the_direct_one():
    g = torch.Generator().manual_seed(1)
    n = 40_000
    mean = 3 * torch.randn(n, generator=g, dtype=torch.float64)
    std = 0.1 + 2 * torch.rand(n, generator=g, dtype=torch.float64)
    y = mean + std * torch.randn(n, generator=g, dtype=torch.float64)
    rows = gm.conditional_coverage(y.numpy(), mean.numpy(), std.numpy(), by=std.numpy(), n_bins=4)
    assert sum(r["n"] for r in rows) == n
    for r in rows:
        for level in (0.5, 0.9, 0.95):
            tol = 4 * math.sqrt(level * (1 - level) / r["n"])
            assert abs(r[f"coverage_{100 * level:g}"] - level) <= tol
        assert r["low"] <= r["high"]
    order = torch.argsort(std)
    last = order[3 * n // 4 :]
    assert rows[-1]["rmse"] == pytest.approx(float((y - mean)[last].square().mean().sqrt()), rel=1e-12)
    assert rows[-1]["mean_std"] == pytest.approx(float(std[last].mean()), rel=1e-12)
    assert rows[0]["high"] <= rows[1]["low"]


def test_ties_and_uneven_counts_still_partition_the_entries():
    y = np.array([0.0, 5.0, 0.0, 5.0, 0.0, 5.0, 0.0])
    by = np.array([1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0])
    rows = gm.conditional_coverage(y, 0.0, 1.0, by=by, n_bins=3, levels=(0.95,))
    assert [r["n"] for r in rows] == [3, 2, 2]
    # stable order: the first bin takes the first three entries with by = 1 (two zeros and a five)
    assert rows[0]["coverage_95"] == pytest.approx(2 / 3)
    assert rows[1]["coverage_95"] == pytest.approx(0.5)
    assert gm.conditional_coverage(y, 0.0, 1.0, by=by, n_bins=1)[0]["n"] == 7


def test_bad_covariates_bins_and_levels_are_refused_naming_the_argument():
    y = np.zeros(4)
    with pytest.raises(ValueError, match=r"by must have the shape \(4,\)"):
        gm.conditional_coverage(y, 0.0, 1.0, by=np.zeros(3))
    with pytest.raises(ValueError, match="by holds NaN"):
        gm.conditional_coverage(y, 0.0, 1.0, by=np.array([0.0, np.nan, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"n_bins must be in \[1, 4\]"):
        gm.conditional_coverage(y, 0.0, 1.0, by=np.arange(4.0), n_bins=5)
    with pytest.raises(TypeError, match="n_bins must be an int"):
        gm.conditional_coverage(y, 0.0, 1.0, by=np.arange(4.0), n_bins=2.0)
    with pytest.raises(TypeError, match="levels must be a sequence"):
        gm.conditional_coverage(y, 0.0, 1.0, by=np.arange(4.0), levels=0.95)
    with pytest.raises(ValueError, match="levels"):
        gm.conditional_coverage(y, 0.0, 1.0, by=np.arange(4.0), levels=(0.5, 1.5))
    with pytest.raises(ValueError, match="std must be > 0"):
        gm.conditional_coverage(y, 0.0, 0.0, by=np.arange(4.0))


def test_levels_as_a_numpy_array_or_a_tensor_give_the_same_rows_as_a_list():
    g = torch.Generator().manual_seed(2)
    y, by = torch.randn(50, generator=g, dtype=torch.float64), torch.rand(50, generator=g, dtype=torch.float64)
    ref = gm.conditional_coverage(y, 0.0, 1.0, by=by, n_bins=2, levels=[0.5, 0.9])
    assert gm.conditional_coverage(y, 0.0, 1.0, by=by, n_bins=2, levels=np.array([0.5, 0.9])) == ref
    assert (
        gm.conditional_coverage(y, 0.0, 1.0, by=by, n_bins=2, levels=torch.tensor([0.5, 0.9], dtype=torch.float64))
        == ref
    )


def test_column_names_keep_every_level_apart_and_a_numpy_int_counts_bins():
    """Level 0.9999999 was written 'coverage_100' (six significant digits), 0.95 and 0.95 + 1e-14 shared the column
    'coverage_95' (the second overwrote the first), and n_bins = np.int64(2) was a TypeError. The column is now the
    percentage to 12 digits with the hand-counted coverage, two levels with one name are refused, numpy ints count."""
    y = torch.tensor([0.0, 1.0, 5.0, -6.0], dtype=torch.float64)
    rows = gm.conditional_coverage(y, 0.0, 1.0, by=torch.arange(4.0), n_bins=np.int64(2), levels=(0.9999999, 0.57))
    q = stats.norm.ppf(0.5 + 0.5 * 0.9999999)  # 5.33: covers 0, 1 and 5, not -6
    assert [r["coverage_99.99999"] for r in rows] == [1.0, float(5.0 <= q) / 2]
    q57 = stats.norm.ppf(0.5 + 0.5 * 0.57)  # 0.79: covers 0 only
    assert [r["coverage_57"] for r in rows] == [(1 + float(1.0 <= q57)) / 2, 0.0]
    with pytest.raises(ValueError, match=r"levels 0.95 and 0.95000000000001 would share the column 'coverage_95'"):
        gm.conditional_coverage(y, 0.0, 1.0, by=y, n_bins=2, levels=(0.95, 0.95 + 1e-14))

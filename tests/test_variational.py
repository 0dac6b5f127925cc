import math

import pyro
import pyro.distributions as pdist
import pytest
import torch
from gpytorch.distributions import MultivariateNormal

from gpgeom.engine.variational import (
    LowRankGaussian,
    ModelDiscrepancy,
    bounded_variance,
    elbo_loss,
    elbo_terms,
    gaussian_log_density,
)


def _random_gaussian(batch, n, k, dtype=torch.float64):
    loc = torch.randn(*batch, n, dtype=dtype)
    diag = torch.rand(*batch, n, dtype=dtype) + 0.05
    factor = torch.randn(*batch, n, k, dtype=dtype) if k else None
    return LowRankGaussian(loc, diag, factor)


@pytest.mark.parametrize("k", [0, 1, 3])
def test_low_rank_log_density_equals_dense_mvn(k):
    g = _random_gaussian((4,), 9, k)
    v = torch.randn(4, 9, dtype=torch.float64)
    dense = MultivariateNormal(g.loc, g.covariance_matrix)
    torch.testing.assert_close(g.log_prob(v), dense.log_prob(v), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g.to_gpytorch().log_prob(v), dense.log_prob(v), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g.to_gpytorch().covariance_matrix, dense.covariance_matrix)
    torch.testing.assert_close(g.variance, torch.diagonal(dense.covariance_matrix, dim1=-2, dim2=-1))
    back = LowRankGaussian.from_gpytorch(g.to_gpytorch())
    torch.testing.assert_close(back.covariance_matrix, g.covariance_matrix)


def test_affine_and_noise_match_dense_algebra():
    g = _random_gaussian((2,), 6, 2)
    b, d = torch.randn(2, 6, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    h = g.affine(b, d).add_noise(0.3)
    D = torch.diag_embed(d)
    torch.testing.assert_close(h.mean, b + d * g.loc)
    torch.testing.assert_close(h.covariance_matrix, D @ g.covariance_matrix @ D + 0.3 * torch.eye(6, dtype=g.loc.dtype))
    s = g.rsample((5000,))
    assert s.shape == (5000, 2, 6)
    emp = torch.einsum("sbi,sbj->bij", s - g.loc, s - g.loc) / 5000
    assert (emp - g.covariance_matrix).abs().max() < 0.35
    # appended columns: covariance L L^T + F F^T + diag, also for a rank above n and a zero variance
    f = torch.randn(2, 6, 8, dtype=torch.float64)
    h = g.add_factor(f)
    torch.testing.assert_close(h.covariance_matrix, g.covariance_matrix + f @ f.transpose(-1, -2))
    zero = LowRankGaussian(torch.zeros(2, 6, dtype=torch.float64), torch.zeros(2, 6, dtype=torch.float64)).add_factor(f)
    s = zero.rsample((20000,))
    emp = torch.einsum("sbi,sbj->bij", s, s) / 20000
    scale = float(zero.covariance_matrix.abs().max())
    assert (emp - zero.covariance_matrix).abs().max() < 0.06 * scale
    with pytest.raises(ValueError, match="factor"):
        g.add_factor(torch.ones(2, 5, 1))


def test_low_rank_gaussian_bad_shapes():
    with pytest.raises(ValueError, match="cov_diag"):
        LowRankGaussian(torch.zeros(3), torch.ones(4))
    with pytest.raises(ValueError, match="cov_factor"):
        LowRankGaussian(torch.zeros(3), torch.ones(3), torch.ones(4, 2))
    with pytest.raises(ValueError, match="lower < upper"):
        bounded_variance(torch.zeros(2), 1.0, 0.5)
    v = bounded_variance(torch.tensor([-1e3, 0.0, 1e3], dtype=torch.float64), 1e-5, 1.0)
    assert float(v.min()) >= 1e-5 and float(v.max()) <= 1.0


def test_negative_variances_are_refused_and_zero_ones_kept():
    r"""A negative ``cov_diag`` (or ``add_noise`` of a negative variance) was kept: ``variance`` reported -0.5 while
    ``rsample`` drew with variance 0 there (it clamps), so samples and moments disagreed silently. Both are now a
    ValueError; zero variances (a hard boundary) still sample exactly at the mean, and a positive noise adds to the
    dense covariance's diagonal (the truth)."""
    loc = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"`cov_diag` must be >= 0 \(variances\), got minimum -0.5 at 1 point"):
        LowRankGaussian(loc, torch.tensor([0.1, -0.5, 0.2], dtype=torch.float64))
    g = LowRankGaussian(loc, torch.tensor([0.0, 0.1, 0.2], dtype=torch.float64), torch.ones(3, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"`noise_variance` must be >= 0, got minimum -1"):
        g.add_noise(-1.0)
    with pytest.raises(ValueError, match="`noise_variance` must be >= 0"):
        g.add_noise(torch.tensor([0.1, -0.2, 0.0], dtype=torch.float64))
    noisy = g.add_noise(torch.tensor([0.1, 0.0, 0.3], dtype=torch.float64))
    want = g.covariance_matrix + torch.diag(torch.tensor([0.1, 0.0, 0.3], dtype=torch.float64))
    torch.testing.assert_close(noisy.covariance_matrix, want, rtol=0, atol=0)
    boundary = LowRankGaussian(loc, torch.tensor([0.0, 0.1, 0.2], dtype=torch.float64))
    draws = boundary.rsample((50,))
    assert bool((draws[:, 0] == loc[0]).all())


def test_indexing_selects_batch_members_never_points():
    r"""``g[:, 0]`` of a ``(3, 5)`` distribution sliced point 0 out of ``loc`` and out of the factor's rows alike and
    returned a Gaussian over the 3 batch members with cross-covariances ``l_b(x_0)^T l_c(x_0)`` (independent members
    made correlated). Indexing now always addresses the batch dimensions (``...`` included), so a point index is an
    IndexError; batch indices equal the dense covariance's batch members (the truth)."""
    g = _random_gaussian((3, 4), 5, 2)
    dense = g.covariance_matrix
    for index, want in (
        ((1,), dense[1]),
        ((slice(None), 2), dense[:, 2]),
        ((Ellipsis, 2), dense[:, 2]),
        ((2, 3), dense[2, 3]),
    ):
        sub = g[index if len(index) > 1 else index[0]]
        torch.testing.assert_close(sub.covariance_matrix, want, rtol=0, atol=0)
    flat = _random_gaussian((3,), 5, 2)
    with pytest.raises(
        IndexError, match=r"LowRankGaussian indexes its batch dimensions \(3,\) only \(not the points\)"
    ):
        flat[:, 0]


def test_elbo_equals_hand_computed_expression():
    # z ~ N(0, 1); y_i | z ~ N(a z, s^2) observed; factor -c z^2; guide q(z) = N(m, v) with batch of 3 problems
    a, s, c = 1.7, 0.4, 0.25
    y = torch.tensor([[0.3, -0.1], [1.2, 0.8], [-0.5, -0.9]], dtype=torch.float64)
    m = torch.tensor([0.1, 0.6, -0.4], dtype=torch.float64, requires_grad=True)
    v = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)

    def model(y):
        with pyro.plate("p", 3):
            z = pyro.sample("z", pdist.Normal(torch.zeros(3, dtype=y.dtype), 1.0))
            pyro.factor("f", -c * z**2)
            pyro.sample("y", pdist.Normal(a * z[:, None], s).to_event(1), obs=y)

    def guide(y):
        with pyro.plate("p", 3):
            pyro.sample("z", pdist.Normal(m, v.sqrt()))

    pyro.set_rng_seed(3)
    loss = elbo_loss(model, guide, y)
    pyro.set_rng_seed(3)
    terms = elbo_terms(model, guide, y)
    pyro.set_rng_seed(3)
    z = pdist.Normal(m, v.sqrt()).rsample()  # the same draw the guide made
    hand = (
        gaussian_log_density(z, torch.zeros_like(z), torch.ones_like(z))
        - c * z**2
        + (-0.5 * (y - a * z[:, None]) ** 2 / s**2 - 0.5 * math.log(2 * math.pi * s**2)).sum(-1)
        - (-0.5 * (z - m) ** 2 / v - 0.5 * torch.log(2 * math.pi * v))
    ).sum()
    torch.testing.assert_close(-loss, hand)
    torch.testing.assert_close(terms["elbo"], hand)
    assert set(terms) == {"z", "f", "y", "q:z", "elbo"}
    loss.backward()
    assert m.grad is not None and torch.isfinite(m.grad).all()


def _synthetic_discrepancy(seed, truth, F=40, n=25):
    # errors drawn from the discrepancy model itself: x in [-1, 1], the Poisson lift d = cos(pi x / 2)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(F, n, 1, generator=g, dtype=torch.float64) * 2 - 1
    d = torch.cos(0.5 * math.pi * x[..., 0])
    rho = 0.5 + 1.5 * torch.rand(F, generator=g, dtype=torch.float64)
    base = torch.diag_embed(torch.full((F, n), 1e-6, dtype=torch.float64))
    cov = base + ModelDiscrepancy(torch.float64).covariance(x, d, rho, truth)
    e = (torch.linalg.cholesky(cov) @ torch.randn(F, n, 1, generator=g, dtype=torch.float64))[..., 0]
    return e, base, x, d, rho


def test_discrepancy_covariance_factor_and_marginal_likelihood_match_dense_algebra():
    md = ModelDiscrepancy(torch.float64)
    x = torch.rand(3, 7, 2, dtype=torch.float64) * 2 - 1
    d = torch.rand(3, 7, dtype=torch.float64)
    rho = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    assert bool((md.variance(d, rho) == 0).all())  # zero until calibrated
    theta = torch.tensor([math.log(0.3), math.log(0.4), math.log(0.1), 0.5], dtype=torch.float64)
    tau, ell, kappa, p = 0.3, 0.4, 0.1, 1 / (1 + math.exp(-0.5))
    # dense, entry by entry: rho^2 |d_i|^p |d_j|^p (tau^2 exp(-|xi - xj|^2 / 2 ell^2) + (kappa tau)^2 [i = j])
    dense = torch.empty(3, 7, 7, dtype=torch.float64)
    for b in range(3):
        for i in range(7):
            for j in range(7):
                k = tau**2 * math.exp(-float(((x[b, i] - x[b, j]) ** 2).sum()) / (2 * ell**2))
                k += (kappa * tau) ** 2 * (i == j)
                dense[b, i, j] = rho[b] ** 2 * d[b, i] ** p * d[b, j] ** p * k
    torch.testing.assert_close(md.covariance(x, d, rho, theta), dense)
    with torch.no_grad():
        md.theta.copy_(theta)
        md.calibrated.fill_(True)
    f = md.factor(x, d, rho)
    torch.testing.assert_close(f @ f.transpose(-1, -2), dense)
    torch.testing.assert_close(md.variance(d, rho), torch.diagonal(dense, dim1=-2, dim2=-1))
    base = torch.diag_embed(torch.rand(3, 7, dtype=torch.float64) * 1e-3)
    e = torch.randn(3, 7, dtype=torch.float64)
    want = torch.distributions.MultivariateNormal(torch.zeros(7, dtype=torch.float64), base + dense).log_prob(e).sum()
    torch.testing.assert_close(md.log_marginal(theta, e, base, x, d, rho), want, rtol=1e-8, atol=1e-8)
    # a point on the constrained boundary (d = 0: both covariances vanish there) is left out: the value on the other
    # six points
    d0 = d.clone()
    d0[:, 2] = 0.0
    base0 = base.clone()
    base0[:, 2, 2] = 0.0
    keep = [0, 1, 3, 4, 5, 6]
    sub = md.covariance(x[:, keep], d[:, keep], rho, theta) + base[:, keep][:, :, keep]
    want0 = torch.distributions.MultivariateNormal(torch.zeros(6, dtype=torch.float64), sub).log_prob(e[:, keep]).sum()
    torch.testing.assert_close(md.log_marginal(theta, e, base0, x, d0, rho), want0, rtol=1e-8, atol=1e-8)


def test_discrepancy_map_recovers_the_hyperparameters_it_was_drawn_from():
    # refit truth: 40 fields of 25 points drawn from the model; over seeds 0-4 the estimates were within 7 % (scale),
    # 2 % (lengthscale, nugget) and 0.02 (power) of the truth
    truth = torch.tensor([math.log(0.3), math.log(0.4), math.log(0.05), math.log(0.6 / 0.4)], dtype=torch.float64)
    md = ModelDiscrepancy(torch.float64)
    out = md.calibrate(*_synthetic_discrepancy(0, truth))
    assert bool(md.calibrated)
    assert abs(out["scale"] / 0.3 - 1) < 0.15 and abs(out["lengthscale"] / 0.4 - 1) < 0.1, out
    assert abs(out["nugget"] / 0.015 - 1) < 0.15 and abs(out["power"] - 0.6) < 0.06, out
    # calibrated on those fields, the marginal bands cover fresh draws of the same model at their nominal rate
    e, base, x, d, rho = _synthetic_discrepancy(1, truth, F=200)
    std = (md.variance(d, rho) + torch.diagonal(base, dim1=-2, dim2=-1)).sqrt()
    for level, z in ((0.5, 0.6745), (0.95, 1.96)):
        cov = float(((e / std).abs() <= z).double().mean())
        assert abs(cov - level) < 0.05, (level, cov)
    md.reset()
    assert not bool(md.calibrated) and bool((md.variance(d, rho) == 0).all())


def test_float32_log_density_follows_float64_with_a_small_diagonal():
    # the Woodbury log-density subtracts two terms ||L||^2 / min(D) times larger than the result (with an equally
    # ill-conditioned capacitance): in float32, rank 10 and a diagonal of 1e-4 it was ~1e-3 off float64's
    g = torch.Generator().manual_seed(0)
    n, k = 3000, 10
    loc = torch.randn(n, dtype=torch.float64, generator=g)
    factor = torch.randn(n, k, dtype=torch.float64, generator=g) / k**0.5
    diag = 1e-4 * (0.5 + torch.rand(n, dtype=torch.float64, generator=g))
    value = (
        loc
        + factor @ torch.randn(k, dtype=torch.float64, generator=g)
        + diag.sqrt() * torch.randn(n, dtype=torch.float64, generator=g)
    )
    ref = LowRankGaussian(loc, diag, factor).log_prob(value)
    args = [t.float().requires_grad_() for t in (loc, diag, factor)]
    got = LowRankGaussian(*args).log_prob(value.float())
    assert got.dtype == torch.float32
    # float32 rounding of the inputs alone moves it by ~1e-7 relative
    assert abs(float(got.detach()) / float(ref.detach()) - 1) < 1e-5
    grads = torch.autograd.grad(got, args)  # differentiable, in float32
    assert all(gr.dtype == torch.float32 and bool(torch.isfinite(gr).all()) for gr in grads)


@pytest.mark.parametrize("F, n", [(0, 5), (1, 0)])
def test_discrepancy_calibration_needs_a_field_and_a_point(F, n):
    # no field raised NotPSDError "the covariance matrix could not be factorised" (the empty loss was never
    # finite), fields of no point a raw IndexError from amax(); the discrepancy stays uncalibrated
    t = lambda *s: torch.zeros(*s, dtype=torch.float64)  # noqa: E731
    md = ModelDiscrepancy(torch.float64)
    with pytest.raises(ValueError, match=rf"`errors` must hold at least one field.*got shape \({F}, {n}\)"):
        md.calibrate(t(F, n), t(F, n, n), t(F, n, 1), t(F, n), t(F))
    assert not bool(md.calibrated)

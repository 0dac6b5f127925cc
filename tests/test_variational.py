import math

import pyro
import pyro.distributions as pdist
import pytest
import torch
from gpytorch.distributions import MultivariateNormal

from gpgeom.engine.variational import (
    LowRankGaussian,
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


def test_low_rank_gaussian_bad_shapes():
    with pytest.raises(ValueError, match="cov_diag"):
        LowRankGaussian(torch.zeros(3), torch.ones(4))
    with pytest.raises(ValueError, match="cov_factor"):
        LowRankGaussian(torch.zeros(3), torch.ones(3), torch.ones(4, 2))
    with pytest.raises(ValueError, match="lower < upper"):
        bounded_variance(torch.zeros(2), 1.0, 0.5)
    v = bounded_variance(torch.tensor([-1e3, 0.0, 1e3], dtype=torch.float64), 1e-5, 1.0)
    assert float(v.min()) >= 1e-5 and float(v.max()) <= 1.0


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

r"""The posterior covariance of a float32 ``ExactGPModel`` after ``condition_on_observations`` and ``fantasize``
(``gpgeom.botorch._fantasy``): the updated Cholesky root by triangular solves and the covariance ``K** - V^T V``
with ``V = Z^{-1} K*^T``, against the float64 model conditioned on the same points.

Before, GPyTorch's update multiplied by the explicit inverse of the training root: with the default noise floor
(1e-4 standardised) and the hyperparameters a fit gives for outputs with noise sd 1e-3 of their scale, the
conditioned covariance had negative diagonal entries (-6.6e-5 where the float64 model gives 1.9e-5), ``rsample``
returned NaN at ``q = 1`` without an error, and samples at ``q = 2`` had 88 to 1000 times the float64 variance."""

from __future__ import annotations

import copy

import pytest
import torch
from botorch.sampling.normal import SobolQMCNormalSampler

from gpgeom.botorch.exact_gp import ExactGPModel


@pytest.fixture(scope="module")
def models():
    r"""A float64 model with two outputs (n = 60, noise sd 1e-3 of each output's spread) at the hyperparameters a
    float32 fit gives there (outputscales 11 and 24 on standardised outputs, noise at the floor 1e-4), its float32
    copy, and three new points with the float64 posterior mean as observations."""
    g = torch.Generator().manual_seed(0)
    X = torch.rand(60, 2, dtype=torch.float64, generator=g)
    F = torch.stack([torch.sin(6 * X[:, 0]) + X[:, 1], 3 * X[:, 0] * X[:, 1]], -1)
    Y = F + 1e-3 * F.std(0) * torch.randn(F.shape, dtype=torch.float64, generator=g)
    model = ExactGPModel(X, Y)
    with torch.no_grad():
        model.covar_module.outputscale = torch.tensor([11.0, 24.0], dtype=torch.float64)
        model.covar_module.base_kernel.lengthscale = torch.tensor([[[1.0, 10.0]], [[3.0, 3.0]]], dtype=torch.float64)
        model.likelihood.noise = torch.full((2, 1), 1e-4, dtype=torch.float64)
    model.eval()
    model32 = copy.deepcopy(model).to(dtype=torch.float32)
    Xn = torch.rand(3, 2, dtype=torch.float64, generator=g)
    Yn = model.posterior(Xn).mean.detach()
    Xq = torch.rand(16, 1, 2, dtype=torch.float64, generator=g)
    return model, model32, Xn, Yn, Xq


def _ulps(model) -> torch.Tensor:
    r"""One float32 ulp (``eps``) of each output's prior variance in original units (``m``): the resolution of a
    posterior variance ``K** - V^T V`` computed in float32."""
    scale = model.outcome_transform.stdvs.detach().squeeze() ** 2
    return torch.finfo(torch.float32).eps * model.covar_module.outputscale.detach() * scale


def _diag(post) -> torch.Tensor:
    r"""The diagonal of the posterior's joint covariance (not clamped, as ``variance`` is), ``batch x (q m)``."""
    return post.distribution.covariance_matrix.detach().double().diagonal(dim1=-2, dim2=-1)


def test_a_float32_conditioned_posterior_has_the_float64_variances_and_finite_samples(models):
    r"""At 16 single points, the float32 conditioned model's variances (the covariance's diagonal, 8.5e-6 to 2.8e-4)
    are the float64 model's to 16 float32 ulps of the prior variance (7.4 and 7.8; measured 5.5 ulps, 39% of the
    smallest variance; before 2,400 ulps: entries of -6.6e-5 for 1.9e-5 and 1e-3 of jitter), and ``rsample`` is
    finite (before: NaN)."""
    model, model32, Xn, Yn, Xq = models
    cond64 = model.condition_on_observations(Xn, Yn)
    cond32 = model32.condition_on_observations(Xn.float(), Yn.float())
    want = _diag(cond64.posterior(Xq))
    post = cond32.posterior(Xq.float())
    got = _diag(post)
    assert float(((got - want).abs() / _ulps(model)).max()) < 16
    assert bool(torch.isfinite(post.rsample(torch.Size([4]))).all())


def test_float32_conditioned_samples_have_the_float64_moments(models):
    r"""40,000 joint samples at ``q = 2`` of the float32 conditioned model: their variances are those of the float64
    model to 30% (measured 0.87 to 1.08 of them, the float32 variances' own rounding; Monte Carlo 0.7%; before: 88 to
    1000 times), their means within
    0.1 of its posterior standard deviation (measured 0.055)."""
    model, model32, Xn, Yn, Xq = models
    cond64 = model.condition_on_observations(Xn, Yn)
    cond32 = model32.condition_on_observations(Xn.float(), Yn.float())
    Xt = Xq[:2, 0]
    want = cond64.posterior(Xt)
    torch.manual_seed(0)
    samples = cond32.posterior(Xt.float()).rsample(torch.Size([40000])).double()
    assert bool(torch.isfinite(samples).all())
    ratio = samples.var(0) / want.variance.detach()
    assert float((ratio - 1).abs().max()) < 0.3, ratio
    z = (samples.mean(0) - want.mean.detach()) / want.variance.detach().sqrt()
    assert float(z.abs().max()) < 0.1


def test_float32_fantasy_models_have_the_float64_variances(models):
    r"""``fantasize`` (4 fantasies at the same 3 points, the update's root broadcast over them): each fantasy
    model's variances at the 16 points are the float64 conditioned model's to 16 ulps of the prior variance (they
    do not depend on the fantasised values; measured 5.5, before 2,400), and its samples are finite."""
    model, model32, Xn, Yn, Xq = models
    cond64 = model.condition_on_observations(Xn, Yn)
    fant = model32.fantasize(Xn.float(), SobolQMCNormalSampler(torch.Size([4]), seed=0))
    want = _diag(cond64.posterior(Xq))
    post = fant.posterior(Xq.float().unsqueeze(1))  # 16 x 4 (fantasies) x 1 x 2
    got = _diag(post)
    assert got.shape[:2] == (16, 4)
    assert float(((got - want.unsqueeze(1)).abs() / _ulps(model)).max()) < 16
    assert bool(torch.isfinite(post.rsample(torch.Size([2]))).all())


def test_a_conditioned_model_of_a_jittered_fit_keeps_its_updated_caches(models):
    r"""A model whose fit needed Cholesky jitter (``_fit_jitter``, here 1e-4 set by hand) conditioned: its first
    posterior uses the caches the conditioning made (before, the state key recorded after conditioning read the
    global jitter, not the fit's, so the caches were dropped and GPyTorch's strategy rebuilt from scratch, with the
    explicit inverse root: in the sweep of fitted float32 models, the last NaN samples, at duplicated test points of
    outputs of size 1e6), and its variances are still the float64 model's to 16 ulps."""
    model, model32, Xn, Yn, Xq = models
    jittered = copy.deepcopy(model32)
    jittered._fit_jitter = 1e-4
    cond = jittered.condition_on_observations(Xn.float(), Yn.float())
    strategy = cond.prediction_strategy
    post = cond.posterior(Xq.float())
    assert cond.prediction_strategy is strategy
    cond64 = model.condition_on_observations(Xn, Yn)
    want = _diag(cond64.posterior(Xq))
    assert float(((_diag(post) - want).abs() / _ulps(model)).max()) < 16


def test_float32_fantasies_at_the_same_points_share_one_updated_root(models):
    r"""``fantasize`` with 16 fantasies at 2 batches of the same 3 points: the updated root is stored once per batch
    (GPyTorch's update repeats one root over the fantasies; before, the solved update made a dense copy per fantasy:
    16 times the storage, at ``n = 400``, 64 fantasies and 8 batches 331 MB for 5.2 MB, 787 ms for 347 ms against
    GPyTorch's 263 ms), and each fantasy model's variances are still the float64 conditioned model's to 16 ulps of
    the prior variance, and its means those of the float64 model conditioned on its fantasised outputs."""
    model, model32, Xn, Yn, Xq = models
    Xb = torch.stack([Xn, Xn.flip(-1)]).float()  # 2 x 3 x 2
    fant = model32.fantasize(Xb, SobolQMCNormalSampler(torch.Size([16]), seed=0))
    root = fant.prediction_strategy.lik_train_train_covar.root_decomposition().root
    stored = getattr(root, "base_linear_op", root).to_dense()
    assert stored.numel() <= 2 * 2 * 63 * 63  # batches x outputs x (n + n')^2: no copy per fantasy
    Xt = Xq[:3].float().unsqueeze(1).unsqueeze(1)  # 3 x 1 (fantasies) x 1 (batches) x 1 x 2
    post = fant.posterior(Xt)  # 3 x 16 x 2 x 1 x 2
    for b in range(2):
        cond64 = model.condition_on_observations(Xb[b].double(), Yn)
        want = _diag(cond64.posterior(Xq[:3]))  # 3 x 2
        assert float(((_diag(post)[:, :, b] - want.unsqueeze(1)).abs() / _ulps(model)).max()) < 16
    # the fantasised outputs (original units) of fantasy 5, batch 1, conditioned on by the float64 model
    Yf = fant.train_data[1][5, 1, -3:].double()
    cond64 = model.condition_on_observations(Xb[1].double(), Yf)
    want = cond64.posterior(Xq[:3]).mean.detach()
    got = post.mean.detach().double()[:, 5, 1]
    assert float((got - want).abs().max()) < 1e-3 * float(want.abs().max())

r"""Tests of the categorical mode prior (gpgeom.kernels.categorical.CategoricalMarkovKernel; FunBaT(categorical=...)).

Independent truths: the dense kernel :math:`\sigma^2 [x = x']`, per-label Gaussian algebra (each label's posterior
is its sites times the prior, :math:`\log Z` a sum over labels), autograd through that dense :math:`\log Z`, the
closed-form EM update :math:`\sigma^2 = \operatorname{mean} \mathbb E[u^2]`, a grid search of the dense marginal
likelihood, and the model's invariance to relabelling the categories.
"""

from __future__ import annotations

import math
import pickle
import warnings

import pytest
import torch

from gpgeom.engine.sites import gain_products
from gpgeom.errors import ConvergenceWarning
from gpgeom.kernels.categorical import CategoricalMarkovKernel
from gpgeom.models.funbat import FunBaT, FunBaTCP
from gpgeom.models.funbat.conditional import latent_conditional, latent_cross_covariance
from gpgeom.models.funbat.latent import latent_posterior, latent_score, score_surrogate
from gpgeom.models.funbat.priors import initial_positions

D = torch.float64


def _kernel(var=1.7, dtype=D):
    k = CategoricalMarkovKernel().to(dtype)
    k.variance = var
    return k


def _sites(I, R, seed):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(I, R, R, dtype=D, generator=g)
    lam = A @ A.mT * 3.0
    lam[1] = 0.0  # a label without information
    eta = (lam @ torch.randn(I, R, 1, dtype=D, generator=g))[..., 0]
    return lam, eta


def _dense_label_posterior(var, lam, eta):
    r"""Per label: :math:`\Sigma_i = (\Lambda_i + I/\sigma^2)^{-1}`, :math:`m_i = \Sigma_i \eta_i`, and
    :math:`\log Z = \sum_i -\tfrac12 \log|I + \sigma^2 \Lambda_i| + \tfrac12 \eta_i^\top \Sigma_i \eta_i`."""
    R = eta.shape[-1]
    eye = torch.eye(R, dtype=eta.dtype)
    cov = torch.linalg.inv(lam + eye / var)
    mean = (cov @ eta[..., None])[..., 0]
    log_z = -0.5 * torch.logdet(eye + var * lam).sum() + 0.5 * (eta * mean).sum()
    return mean, cov, log_z


def _tensor(seed=0, C=7, T=50, frac=0.7, noise=0.05):
    r"""A (label, time) tensor of rank 2 with labels 0..C-1, a fraction observed."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, T, dtype=D)
    a, b = torch.randn(C, dtype=D, generator=g), torch.randn(C, dtype=D, generator=g)
    F = a[:, None] * torch.sin(6 * t)[None] + b[:, None] * torch.cos(3 * t)[None]
    X = torch.stack(torch.meshgrid(torch.arange(C, dtype=D), t, indexing="ij"), -1).reshape(-1, 2)
    y = F.reshape(-1) + noise * torch.randn(C * T, dtype=D, generator=g)
    keep = torch.rand(C * T, generator=g) < frac
    return X, y, F.reshape(-1), keep


# ---------------------------------------------------------------------------------------------------------------
# the kernel
def test_dense_kernel_is_variance_times_equality():
    k = _kernel(2.5)
    x1 = torch.tensor([[0.0], [3.0], [3.0], [-1.5]], dtype=D)
    x2 = torch.tensor([[3.0], [0.0], [7.0]], dtype=D)
    expected = 2.5 * (x1 == x2.T).to(D)
    torch.testing.assert_close(k(x1, x2).to_dense(), expected)
    torch.testing.assert_close(k(x1, diag=True), torch.full((4,), 2.5, dtype=D))
    kb = CategoricalMarkovKernel(batch_shape=torch.Size([2])).to(D)
    kb.variance = torch.tensor([1.0, 3.0], dtype=D)
    torch.testing.assert_close(kb(x1, x2).to_dense(), torch.stack([expected / 2.5, 3.0 * expected / 2.5]))


def test_transition_is_the_dense_chain():
    k = _kernel(1.7)
    Phi, Q = k.transition(torch.tensor([0.0, 0.25, 3.0], dtype=D))
    assert Phi.shape == Q.shape == (3, 1, 1)
    torch.testing.assert_close(Phi[:, 0, 0], torch.tensor([1.0, 0.0, 0.0], dtype=D))
    torch.testing.assert_close(Q[:, 0, 0], torch.tensor([0.0, 1.7, 1.7], dtype=D))
    torch.testing.assert_close(k.stationary_covariance(), torch.tensor([[1.7]], dtype=D))
    m0, P0 = k.initial_state(torch.tensor(0.0, dtype=D))
    assert m0.shape == (1,) and float(P0.detach()) == pytest.approx(1.7)


def test_kernel_in_a_gpytorch_exact_gp_gives_per_label_means():
    import gpytorch

    class GP(gpytorch.models.ExactGP):
        def __init__(self, x, y, lik):
            super().__init__(x, y, lik)
            self.covar = _kernel(2.0)

        def forward(self, x):
            return gpytorch.distributions.MultivariateNormal(torch.zeros(x.shape[0], dtype=D), self.covar(x))

    x = torch.tensor([[0.0], [0.0], [0.0], [5.0], [2.0], [2.0]], dtype=D)
    y = torch.tensor([1.0, 1.2, 0.8, -2.0, 0.5, 0.7], dtype=D)
    lik = gpytorch.likelihoods.GaussianLikelihood().to(D)
    lik.noise = 0.1
    gp = GP(x, y, lik).eval()
    with torch.no_grad():
        mean = gp(torch.tensor([[0.0], [2.0], [5.0], [9.0]], dtype=D)).mean
    # label l with n observations: posterior mean = s2 * sum(y) / (n s2 + noise)
    want = torch.tensor([2.0 * 3.0 / (3 * 2.0 + 0.1), 2.0 * 1.2 / (2 * 2.0 + 0.1), 2.0 * -2.0 / (2.0 + 0.1), 0.0])
    torch.testing.assert_close(mean, want.to(D), rtol=1e-4, atol=1e-6)


def test_kernel_refuses_what_it_is_not():
    with pytest.raises(NotImplementedError, match="no continuous-time SDE"):
        _kernel().sde()
    with pytest.raises(ValueError, match="ard_num_dims"):
        CategoricalMarkovKernel(ard_num_dims=2)
    with pytest.raises(ValueError, match="one label per input"):
        _kernel()(torch.zeros(3, 2, dtype=D)).to_dense()
    assert not CategoricalMarkovKernel.has_lengthscale
    with pytest.raises(TypeError, match="variance_prior"):
        CategoricalMarkovKernel(variance_prior=1.0)


@pytest.mark.filterwarnings("ignore:The last_dim_is_batch argument is deprecated:DeprecationWarning")
def test_nan_labels_and_arguments_that_would_be_ignored_are_refused():
    r"""A NaN label equals no label (NaN != NaN), so it got prior variance 0 (k(nan, nan) = 0 instead of
    sigma^2) and no correlation with anything, silently; ``lengthscale_prior`` was dropped (the kernel has no
    lengthscale), ``variance_constraint=1.0`` failed with "float is not a Module subclass", and
    ``last_dim_is_batch=True`` with "This is likely a bug in GPyTorch"."""
    import gpytorch

    x = torch.tensor([[0.0], [float("nan")]], dtype=D)
    with pytest.raises(ValueError, match=r"`x1` of CategoricalMarkovKernel has 1 NaN label"):
        _kernel()(x).to_dense()
    with pytest.raises(ValueError, match=r"`x2` of CategoricalMarkovKernel has 1 NaN label"):
        _kernel()(torch.zeros(2, 1, dtype=D), x).to_dense()
    with pytest.raises(TypeError, match=r"no lengthscale, so `lengthscale_prior` would be ignored"):
        CategoricalMarkovKernel(lengthscale_prior=gpytorch.priors.GammaPrior(2.0, 1.0))
    with pytest.raises(TypeError, match=r"`variance_constraint` must be a gpytorch Interval constraint.*got float"):
        CategoricalMarkovKernel(variance_constraint=1.0)
    with pytest.raises(ValueError, match=r"does not support `last_dim_is_batch=True`"):
        _kernel()(torch.zeros(3, 1, dtype=D), last_dim_is_batch=True).to_dense()
    # integer labels are labels (no NaN check on them), and infinite ones are categories like any other value
    k = _kernel(1.5)
    x = torch.tensor([[0.0], [float("inf")], [float("inf")]], dtype=D)
    torch.testing.assert_close(k(x).to_dense(), 1.5 * (x == x.T).to(D))
    torch.testing.assert_close(
        k(torch.tensor([[0], [2], [2]])).to_dense(), k(torch.tensor([[0.0], [2.0], [2.0]])).to_dense()
    )


def test_variance_prior_is_registered():
    import gpytorch

    k = CategoricalMarkovKernel(variance_prior=gpytorch.priors.GammaPrior(2.0, 1.0)).to(D)
    k.variance = 0.7
    (name, _, prior, param, _), *rest = list(k.named_priors())
    assert name == "variance_prior" and not rest
    want = torch.distributions.Gamma(torch.tensor(2.0, dtype=D), torch.tensor(1.0, dtype=D)).log_prob(k.variance)
    torch.testing.assert_close(prior.log_prob(param(k)).to(D), want)
    back = pickle.loads(pickle.dumps(k))  # the prior's closures are methods, not lambdas
    torch.testing.assert_close(back.variance, k.variance)


# ---------------------------------------------------------------------------------------------------------------
# the mode's posterior, score and conditionals
@pytest.mark.parametrize("R", [1, 3])
def test_latent_posterior_is_per_label_algebra(R):
    lam, eta = _sites(9, R, seed=R)
    t = torch.sort(torch.randn(9, dtype=D, generator=torch.Generator().manual_seed(4))).values
    mean, cov, log_z = _dense_label_posterior(1.7, lam, eta)
    for post in (latent_posterior(_kernel(1.7), t, lam, eta), latent_score(_kernel(1.7), t, lam, eta)[0]):
        torch.testing.assert_close(post.mean, mean)
        torch.testing.assert_close(post.cov, cov)
        torch.testing.assert_close(post.log_normalizer, log_z)
        if post.gain is not None:
            assert float(post.gain.detach().abs().max()) == 0.0  # no label informs another


def test_score_is_the_gradient_of_the_dense_log_z():
    lam, eta = _sites(8, 2, seed=1)
    t = torch.arange(8, dtype=D)
    k = _kernel(0.8)
    _, score = latent_score(k, t, lam, eta)
    (g_score,) = torch.autograd.grad(score_surrogate(k, t, score), [k.raw_variance])
    raw = k.raw_variance.detach().clone().requires_grad_(True)
    var = k.raw_variance_constraint.transform(raw)
    (g_dense,) = torch.autograd.grad(_dense_label_posterior(var, lam, eta)[2], [raw])
    torch.testing.assert_close(g_score, g_dense)


def test_conditionals_seen_labels_posterior_unseen_labels_prior():
    lam, eta = _sites(6, 2, seed=2)
    t = torch.tensor([0.0, 1.0, 2.0, 4.0, 5.0, 9.0], dtype=D)
    k = _kernel(1.3)
    post = latent_posterior(k, t, lam, eta)
    mean, cov, _ = _dense_label_posterior(1.3, lam, eta)
    m, C = latent_conditional(k, t, post, torch.tensor([4.0, 0.0, 9.0], dtype=D))
    torch.testing.assert_close(m, mean[[3, 0, 5]])
    torch.testing.assert_close(C, cov[[3, 0, 5]])
    m, C = latent_conditional(k, t, post, torch.tensor([-3.0, 3.0, 4.5, 20.0], dtype=D))  # left, inner, right
    torch.testing.assert_close(m, torch.zeros(4, 2, dtype=D))
    torch.testing.assert_close(C, 1.3 * torch.eye(2, dtype=D).expand(4, 2, 2))
    # joint: an unseen label with itself is the prior variance, two different unseen labels are independent, a seen
    # label with itself is its posterior covariance
    t1 = torch.tensor([[3.0, 3.0, 4.0]], dtype=D)
    t2 = torch.tensor([[3.0, 3.5, 4.0]], dtype=D)
    _, _, J = latent_cross_covariance(k, t, post, gain_products(post.gain), t1, t2)
    torch.testing.assert_close(J[0, 0, 0], 1.3 * torch.eye(2, dtype=D))
    torch.testing.assert_close(J[0, 1, 1], torch.zeros(2, 2, dtype=D))
    torch.testing.assert_close(J[0, 2, 2], cov[3])
    torch.testing.assert_close(J[0, 0, 2], torch.zeros(2, 2, dtype=D))


# ---------------------------------------------------------------------------------------------------------------
# FunBaT with a categorical mode
def _fit(X, y, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return FunBaT(2, seed=0, **kw).fit(X, y)


def test_fit_is_invariant_to_relabelling():
    X, y, F, keep = _tensor(seed=1)  # a tensor whose restarts find the good fit (seed 0: a local optimum, 0.17)
    model = _fit(X[keep], y[keep], categorical=0)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(3))
    labels = perm.to(D) * 3.7 - 5.0  # a bijection that reorders and rescales the labels
    X2 = X.clone()
    X2[:, 0] = labels[X[:, 0].long()]
    model2 = _fit(X2[keep], y[keep], categorical=0)
    m1, s1 = model.predict(X[~keep], return_std=True)
    m2, s2 = model2.predict(X2[~keep], return_std=True)
    # the initial factors follow the labels' mean values, not their coding: the same fit sweep by sweep
    torch.testing.assert_close(m1, m2, atol=1e-10, rtol=0)
    torch.testing.assert_close(s1, s2, atol=1e-10, rtol=0)
    assert len(model.history) == len(model2.history)
    elbos = [torch.tensor([h["elbo"] for h in m.history], dtype=D) for m in (model, model2)]
    torch.testing.assert_close(elbos[0], elbos[1], rtol=1e-10, atol=1e-8)
    restarts = [torch.tensor(m.restart_elbos, dtype=D) for m in (model, model2)]
    torch.testing.assert_close(restarts[0], restarts[1], rtol=1e-10, atol=1e-8)
    rmse = float((m1[:, 0] - F[~keep]).square().mean().sqrt())
    assert rmse < 0.04  # noise sd 0.05, signal sd about 1 (0.021 measured; the ordered Matérn prior: 0.021)
    assert math.isnan(float(model.lengthscales_[0])) and float(model.lengthscales_[1]) > 0
    assert math.isnan(model.history[-1]["lengthscale"][0])
    assert "categorical" in repr(model)


def test_initial_positions_rank_labels_by_their_mean():
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=D)
    idx = torch.tensor([0, 0, 1, 2, 2, 3, 1])
    ys = torch.tensor([1.0, 3.0, -1.0, 5.0, 4.0, 0.0, 0.5], dtype=D)  # label means 2, -0.25, 4.5, 0
    s, perm = initial_positions(t, idx, ys, categorical=True)
    means = [sum(float(v) for v, i in zip(ys, idx) if i == j) / int((idx == j).sum()) for j in range(4)]
    ranks = [sorted(means).index(m) for m in means]  # by hand: [2, 0, 3, 1]
    assert perm.tolist() == ranks == [2, 0, 3, 1]
    torch.testing.assert_close(s, torch.tensor(ranks, dtype=D) / 3)
    s, perm = initial_positions(t, idx, ys, categorical=False)  # a continuous mode keeps its coordinates
    assert torch.equal(s, t) and perm.tolist() == [0, 1, 2, 3]
    s, perm = initial_positions(t[:1], torch.zeros(2, dtype=torch.long), ys[:2], categorical=True)
    assert s.tolist() == [0.0] and perm.tolist() == [0]  # one label


def test_unseen_label_gets_the_prior():
    X, y, _, _ = _tensor()
    seen = X[:, 0] != 3.0
    model = _fit(X[seen], y[seen], categorical=0)
    var = float(model.variances_[0])
    m, C = model.latent(0, torch.tensor([3.0, 100.0], dtype=D))
    torch.testing.assert_close(m, torch.zeros(2, 2, dtype=D))
    torch.testing.assert_close(C, var * torch.eye(2, dtype=D).expand(2, 2, 2))
    # its entries are predicted by the bias alone, with the prior's spread in the latent variance
    mean, sd = model.predict(X[~seen], return_std=True)
    assert float(mean.std()) < 1e-8 * float(sd.mean())


@pytest.mark.parametrize("method", ["em", "marginal", "sweep"])
def test_variance_step_maximises_the_labels_marginal_likelihood(method):
    X, y, _, keep = _tensor(seed=1)
    model = _fit(X[keep], y[keep], categorical=0, hyper_method=method, max_sweeps=12)
    assert model.variances_[0] != 1.0  # learned from its initial value
    md, kern = model._modes[0], model.kernels[0]
    v0 = float(kern.variance.detach())
    if method == "em":  # the exact M-step for iid values: the mean second moment under the current posterior
        with torch.no_grad():
            post = latent_posterior(kern, md.t, md.lam, md.eta)
        target = float((post.cov.diagonal(dim1=-2, dim2=-1) + post.mean.square()).mean())
        model._em_step(md, kern)
        assert float(kern.variance.detach()) == pytest.approx(target, rel=1e-5)
    else:  # the marginal likelihood's maximiser over the variance, by a dense grid around it
        for _ in range(4):
            model._marginal_step()
        grid = v0 * torch.logspace(-1.5, 1.5, 3001, dtype=D)
        log_z = torch.stack([_dense_label_posterior(v, md.lam, md.eta)[2] for v in grid])
        best = float(grid[log_z.argmax()])
        assert float(kern.variance.detach()) == pytest.approx(best, rel=5e-3)


def test_save_load_cp_and_float32(tmp_path):
    X, y, _, keep = _tensor(seed=2)
    model = _fit(X[keep], y[keep], categorical=[0])
    path = tmp_path / "cat.pt"
    model.save(path)
    back = FunBaT.load(path)
    assert back.categorical == (0,)
    torch.testing.assert_close(back.predict(X[~keep]), model.predict(X[~keep]), atol=0, rtol=0)
    cp = FunBaTCP(2, categorical=0, seed=0).fit(X[keep], y[keep])
    assert isinstance(cp.kernels[0], CategoricalMarkovKernel)
    m32 = FunBaT(2, categorical=0, seed=0, dtype=torch.float32).fit(X[keep].float(), y[keep].float())
    diff = (m32.predict(X[~keep].float()).double() - model.predict(X[~keep])).abs().max()
    assert float(diff) < 1e-2


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ("1", TypeError, "mode index or a sequence"),
        ([0, True], TypeError, "must hold mode indices"),
        ([1, 1], ValueError, "distinct mode indices"),
        (-1, ValueError, "distinct mode indices >= 0"),
    ],
)
def test_bad_categorical_is_refused(value, error, match):
    with pytest.raises(error, match=match):
        FunBaT(2, categorical=value)


def test_categorical_mode_beyond_the_data_is_refused():
    X, y, _, keep = _tensor()
    with pytest.raises(ValueError, match=r"`categorical` must hold mode indices in \[0, 1\], got \[2\]"):
        FunBaT(2, categorical=2).fit(X[keep], y[keep])


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_categorical_mode_on_device_matches_cpu(device):
    X, y, _, keep = _tensor(seed=1)
    cpu = _fit(X[keep], y[keep], categorical=0, max_sweeps=15)
    dev = _fit(X[keep].to(device), y[keep].to(device), categorical=0, max_sweeps=15)
    mean, sd = dev.predict(X[~keep].to(device), return_std=True)
    assert mean.device.type == device and dev.kernels[0].raw_variance.device.type == device
    want_mean, want_sd = cpu.predict(X[~keep], return_std=True)
    torch.testing.assert_close(mean.cpu(), want_mean, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(sd.cpu(), want_sd, rtol=1e-6, atol=1e-8)


def test_float32_labels_that_round_together_are_refused_not_merged():
    r"""Labels of a categorical mode are mapped to ``[0, 1]`` and rounded to the model's dtype. In float32 over a span
    of 1e8 the labels 199999998 and 199999999 fall on one value: ``fit`` merged them into one category, and an unseen
    label that falls on a training label's image got that label's posterior instead of the prior (0.55 for a label
    effect of 0.5, where the float64 model gives the prior, 0 here); both are refused now. The truth: the float64
    model, which keeps every label and gives the unseen one the prior (mean ~0, the prior's standard deviation)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([100000000.0, 150000000.0, 199999990.0, 199999995.0, 199999999.0], dtype=D)
    t = torch.sort(torch.rand(10, dtype=D, generator=g)).values
    X = torch.stack(torch.meshgrid(ids, t, indexing="ij"), -1).reshape(-1, 2)
    effect = torch.tensor([1.0, -1.0, 2.0, -2.0, 0.5], dtype=D)
    y = effect.repeat_interleave(10) * torch.cos(3 * X[:, 1]) + 0.02 * torch.randn(len(X), dtype=D, generator=g)
    unseen = torch.tensor([[199999997.0, 0.0]], dtype=D)
    fits = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for dtype in (torch.float64, torch.float32):
            fits[dtype] = FunBaT(2, categorical=0, dtype=dtype, max_sweeps=30, n_restarts=0).fit(X, y)
        # the labels are distinct in float32 too: the training labels are predicted as in float64
        seen = torch.stack([ids, torch.zeros(5, dtype=D)], -1)
        torch.testing.assert_close(fits[torch.float32].predict(seen).double(), fits[torch.float64].predict(seen),
                                   rtol=0, atol=5e-3)  # fmt: skip
        mean, sd = fits[torch.float64].predict(unseen, return_std=True)
        assert abs(float(mean)) < 0.05 and float(sd) > 0.5  # the prior
        with pytest.raises(ValueError, match="categorical mode 0 equals, in normalised units at float32"):
            fits[torch.float32].predict(unseen)
        with pytest.raises(ValueError, match="categorical mode 0 equals"):
            fits[torch.float32].latent(0, unseen[:, 0])
        with pytest.raises(ValueError, match="categorical mode 0 equals"):
            fits[torch.float32].as_botorch().posterior(unseen[None])
        with pytest.raises(ValueError, match="categorical mode 0 equals"):
            fits[torch.float32].rebuild_with(unseen, torch.zeros(1, dtype=D))
        # two training labels on one float32 value: refused, not one category
        X2 = torch.cat([X, torch.tensor([[199999998.0, 0.5]], dtype=D)])
        y2 = torch.cat([y, torch.zeros(1, dtype=D)])
        with pytest.raises(
            ValueError, match="199999998.0 and 199999999.0 of categorical mode 0 are distinct but equal"
        ):
            FunBaT(2, categorical=0, dtype=torch.float32, max_sweeps=2, n_restarts=0).fit(X2, y2)
        FunBaT(2, categorical=0, max_sweeps=2, n_restarts=0).fit(X2, y2)  # float64 keeps them apart

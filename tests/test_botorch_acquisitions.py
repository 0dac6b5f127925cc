r"""BoTorch acquisition functions and utilities beyond qLogNEI on every gpgeom surrogate (ExactGPModel with one and
two outputs, LowRankSpectralGP as RVGP exposes it, FunBaT's adapter, SurrogateList), checked by value:

* analytic ones (LogEI, UCB, PosteriorMean, PosteriorStandardDeviation, scalarised for several outputs) against
  their closed forms on the model's own joint moments (LogEI's in 50-digit arithmetic);
* MC ones (qEI, qLogEI, qSimpleRegret, qUCB) against the same reduction done here on samples drawn with the same
  Sobol base samples; qKnowledgeGradient and qNegIntegratedPosteriorVariance against Bayes' rule on the joint
  moments (no fantasy model); qLogEHVI against the hypervolume improvement computed here;
* qLogNEI (``prune_baseline=True``) and qLogNEHVI with BoTorch's default ``cache_root`` equal to ``cache_root=False``;
* ``subset_output``, BoTorch's ``ModelListGP`` holding a gpgeom model and a ``SingleTaskGP``, and
  ``batch_cross_validation`` / ``gen_loo_cv_folds`` (a batched ExactGPModel equals the separate models).
"""

from __future__ import annotations

import math
import warnings

import mpmath
import pytest
import torch
from botorch.acquisition import (
    LogExpectedImprovement,
    PosteriorMean,
    UpperConfidenceBound,
    qKnowledgeGradient,
    qNegIntegratedPosteriorVariance,
    qSimpleRegret,
    qUpperConfidenceBound,
)
from botorch.acquisition.analytic import PosteriorStandardDeviation
from botorch.acquisition.logei import qLogExpectedImprovement, qLogNoisyExpectedImprovement
from botorch.acquisition.monte_carlo import qExpectedImprovement
from botorch.acquisition.multi_objective.logei import (
    qLogExpectedHypervolumeImprovement,
    qLogNoisyExpectedHypervolumeImprovement,
)
from botorch.acquisition.multi_objective.objective import IdentityMCMultiOutputObjective
from botorch.acquisition.objective import LinearMCObjective, ScalarizedPosteriorTransform
from botorch.cross_validation import batch_cross_validation, gen_loo_cv_folds
from botorch.models import ModelListGP, SingleTaskGP
from botorch.sampling import SobolQMCNormalSampler
from botorch.utils.multi_objective.box_decompositions.non_dominated import FastNondominatedPartitioning
from gpytorch.kernels import ScaleKernel
from gpytorch.mlls import ExactMarginalLogLikelihood

from gpgeom.botorch import ExactGPModel, SurrogateList
from gpgeom.botorch.check import joint_moments
from gpgeom.botorch.low_rank import LowRankSpectralGP
from gpgeom.kernels.spectral import SpectralKernel

DT = torch.float64
NAMES = ["exact1", "exact2", "low_rank", "funbat", "list"]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")


def _path_low_rank(n=40, k=10):
    r"""LowRankSpectralGP (as RVGP builds it) on the path graph's Laplacian basis, two correlated outputs."""
    A = torch.diag(torch.ones(n - 1, dtype=DT), 1)
    lam, vec = torch.linalg.eigh(torch.diag((A + A.T).sum(-1)) - A - A.T)
    phi = torch.stack([vec[:, :k], vec.flip(0)[:, :k]], dim=1)  # n x D x k
    idx = torch.arange(0, n, 4, dtype=DT)
    Y = torch.stack([torch.sin(idx / 6), torch.cos(idx / 6)], dim=-1)
    kernel = ScaleKernel(SpectralKernel(lam[:k], phi, nu=1.5, learn_nu=False))
    return LowRankSpectralGP(kernel).rebuild_with(idx[:, None], Y).eval(), idx[:, None]


@pytest.fixture(scope="module")
def surrogates():
    r"""``name -> (model, training inputs, draw(b, q) -> b x q x d candidate inputs)``."""
    from gpgeom.errors import ConvergenceWarning
    from gpgeom.models.funbat import FunBaT

    g = torch.Generator().manual_seed(0)
    X = torch.rand(12, 2, dtype=DT, generator=g)
    Y = torch.stack([torch.sin(4 * X[:, 0]), torch.sin(4 * X[:, 0]) + X[:, 1]], -1)

    def unit(b, q):
        return torch.rand(b, q, 2, dtype=DT, generator=g)

    def index(b, q):
        return torch.randint(0, 40, (b, q, 1), generator=g).to(DT)

    Xf = torch.rand(40, 2, dtype=DT, generator=g)
    yf = torch.sin(3 * Xf[:, 0]) * Xf[:, 1] + 0.05 * torch.randn(40, dtype=DT, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        funbat = FunBaT(2, max_sweeps=3).fit(Xf, yf).as_botorch()
    low_rank, idx = _path_low_rank()
    fit = dict(restarts=0, seed=0, progress=False, max_iter=30)
    return {
        "exact1": (ExactGPModel(X, Y[:, :1]).fit(**fit), X, unit),
        "exact2": (ExactGPModel(X, Y).fit(**fit), X, unit),
        "low_rank": (low_rank, idx, index),
        "funbat": (funbat, Xf, unit),
        "list": (SurrogateList(ExactGPModel(X, Y).fit(**fit), ExactGPModel(X, Y[:, :1]).fit(**fit)), X, unit),
    }


def _weights(model):
    m = model.num_outputs
    w = torch.linspace(1.0, 0.5, m, dtype=DT) / m
    return w, (ScalarizedPosteriorTransform(w) if m > 1 else None), (LinearMCObjective(w) if m > 1 else None)


def _scalarised(model, X, w):
    r"""Mean and variance of ``w . f(x)`` at each ``b x 1 x d`` point, from the joint moments (outputs correlated)."""
    mean, cov = joint_moments(model.posterior(X))  # b x 1 x m, b x m x m
    return mean[:, 0] @ w, torch.einsum("a,bac,c->b", w, cov, w)


def _log_ei(mu, sd, best):
    r"""log E[max(f - best, 0)], f ~ N(mu, sd^2), in 50-digit arithmetic."""
    with mpmath.workdps(50):
        out = []
        for m, s in zip(mu.tolist(), sd.tolist()):
            z = (mpmath.mpf(m) - float(best)) / s
            out.append(float(mpmath.log(s * (z * mpmath.ncdf(z) + mpmath.npdf(z)))))
    return torch.tensor(out, dtype=DT)


@pytest.mark.parametrize("name", NAMES)
def test_analytic_acquisitions_equal_their_closed_forms(surrogates, name):
    model, _, draw = surrogates[name]
    w, pt, _ = _weights(model)
    X = draw(6, 1)
    with torch.no_grad():
        mu, var = _scalarised(model, X, w)
        sd = var.sqrt()
        # points well above and far below it (z from about -20 to 50); a float64 tensor (BoTorch keeps a Python
        # float as a float32 buffer, 1e-8 off)
        best = mu.median()
        values = {
            "LogEI": (LogExpectedImprovement(model, best_f=best, posterior_transform=pt)(X), _log_ei(mu, sd, best)),
            "UCB": (UpperConfidenceBound(model, beta=2.0, posterior_transform=pt)(X), mu + math.sqrt(2.0) * sd),
            "PosteriorMean": (PosteriorMean(model, posterior_transform=pt)(X), mu),
            "PosteriorStandardDeviation": (PosteriorStandardDeviation(model, posterior_transform=pt)(X), sd),
        }
    for acq, (got, truth) in values.items():
        assert got.shape == (6,), acq
        torch.testing.assert_close(got, truth, rtol=1e-9, atol=1e-10, msg=f"{acq} on {name}")


def _mc_objective_samples(model, X, w, seed, n=256):
    r"""``n x b x q`` samples of ``w . f(X)`` drawn with the Sobol base samples of ``seed``."""
    samples = SobolQMCNormalSampler(torch.Size([n]), seed=seed)(model.posterior(X))  # n x b x q x m
    return samples @ w


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("q", [1, 3])
def test_mc_acquisitions_equal_the_reduction_of_their_samples(surrogates, name, q):
    model, _, draw = surrogates[name]
    w, _, obj = _weights(model)
    X = draw(4, q)
    with torch.no_grad():
        o = _mc_objective_samples(model, X, w, seed=1)
        best = o.mean((0, 2)).median()
        ei = (o - best).clamp_min(0).max(-1).values.mean(0)
        mean = o.mean(0)
        beta_prime = math.sqrt(2.0 * math.pi / 2)
        truth = {
            "qEI": ei,
            "qSimpleRegret": o.max(-1).values.mean(0),
            "qUCB": (mean + beta_prime * (o - mean).abs()).max(-1).values.mean(0),
        }

        def sampler():
            return SobolQMCNormalSampler(torch.Size([256]), seed=1)

        got = {
            "qEI": qExpectedImprovement(model, best_f=best, sampler=sampler(), objective=obj)(X),
            "qSimpleRegret": qSimpleRegret(model, sampler=sampler(), objective=obj)(X),
            "qUCB": qUpperConfidenceBound(model, beta=2.0, sampler=sampler(), objective=obj)(X),
        }
        log_ei = qLogExpectedImprovement(model, best_f=best, sampler=sampler(), objective=obj)(X)
    for acq in truth:
        assert got[acq].shape == (4,), acq
        torch.testing.assert_close(got[acq], truth[acq], rtol=1e-9, atol=1e-12, msg=f"{acq} on {name}")
    # qLogEI smooths the ReLU (tau 1e-6) and, for q > 1, the max over the batch (tau 1e-2, up to tau log q above)
    assert log_ei.shape == (4,) and torch.isfinite(log_ei).all()
    gap = log_ei.exp() - ei
    assert gap.abs().max() < (1e-5 if q == 1 else 1e-2 * math.log(q) + 1e-5), (name, gap)


def _conditional(model, X_obs, Z):
    r"""Mean ``Z x m`` and covariance of f(Z) given noisy values at ``X_obs`` (a function of those values), by Bayes'
    rule on the model's joint moments over ``[X_obs; Z]`` and its observation-noise covariance at ``X_obs``."""
    n = X_obs.shape[-2]
    mean, cov = joint_moments(model.posterior(torch.cat([X_obs, Z], -2)))
    m = mean.shape[-1]
    noisy = joint_moments(model.posterior(X_obs, observation_noise=True))[1]
    A, B = slice(0, n * m), slice(n * m, None)
    gain = torch.linalg.solve(noisy, cov[B, A].T).T  # (Z m) x (n m)
    post_cov = cov[B, B] - gain @ cov[A, B]

    def post_mean(y):  # y: n x m observed values
        return mean[n:] + (gain @ (y - mean[:n]).reshape(-1)).reshape(-1, m)

    return post_mean, post_cov


@pytest.mark.parametrize("name", NAMES)
def test_knowledge_gradient_and_integrated_variance_equal_bayes_rule(surrogates, name):
    r"""qKG's value (mean over fantasies of the posterior mean at each fantasy's own point) and qNIPV's (minus the
    mean posterior variance over the grid once X is observed), computed here without any fantasy model."""
    model, _, draw = surrogates[name]
    w, pt, _ = _weights(model)
    b, q, nf = 2, 2, 3
    X_actual, X_fant = draw(b, q), draw(b, nf)
    grid = draw(1, 5)[0]
    with torch.no_grad():
        kg = qKnowledgeGradient(
            model, num_fantasies=nf, sampler=SobolQMCNormalSampler(torch.Size([nf]), seed=3), posterior_transform=pt
        )(torch.cat([X_actual, X_fant], -2))
        y = SobolQMCNormalSampler(torch.Size([nf]), seed=3)(model.posterior(X_actual, observation_noise=True))
        nipv = qNegIntegratedPosteriorVariance(model, mc_points=grid, posterior_transform=pt)(X_actual)
        kg_truth, nipv_truth = torch.zeros(b, dtype=DT), torch.zeros(b, dtype=DT)
        for j in range(b):
            for i in range(nf):
                post_mean, _ = _conditional(model, X_actual[j], X_fant[j, i : i + 1])
                kg_truth[j] += post_mean(y[i, j])[0] @ w / nf
            _, post_cov = _conditional(model, X_actual[j], grid)
            m = model.num_outputs
            per_point = post_cov.reshape(5, m, 5, m).diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # 5 x m x m
            nipv_truth[j] = -torch.einsum("a,pac,c->p", w, per_point, w).mean()
    assert kg.shape == (b,) and nipv.shape == (b,)
    torch.testing.assert_close(kg, kg_truth, rtol=1e-7, atol=1e-9, msg=f"qKG on {name}")
    torch.testing.assert_close(nipv, nipv_truth, rtol=1e-7, atol=1e-11, msg=f"qNIPV on {name}")


@pytest.mark.parametrize("name", NAMES)
def test_noisy_expected_improvement_with_default_cache_root_and_pruned_baseline(surrogates, name):
    r"""qLogNEI with ``prune_baseline=True`` and BoTorch's default ``cache_root`` (True where BoTorch believes the
    model supports it: ExactGPModel, a SurrogateList of them) equals ``cache_root=False`` (the joint of baseline and
    candidates sampled directly) given the same base samples, to 1e-12 (measured: 5e-14 and below; the test had
    compared values near ``log(0)``, about -40, of other base samples to 5%, which differ by 0.6% here). Where the
    root is cached, the samples at the candidates also equal ``mu + L z`` from the joint moments here, ``L`` the
    Cholesky factor of each output's covariance over baseline and candidates (the outputs are independent), ``z``
    the acquisition's base samples (measured: 4e-14).
    SurrogateList raised ``BotorchError: Expected BlockDiagLinearOperator`` with the default."""
    model, X_train, draw = surrogates[name]
    _, _, obj = _weights(model)
    X = draw(3, 2)
    if name != "low_rank":  # first candidates near the optimum: log values of -3 to -5, not of -40
        g = torch.Generator().manual_seed(7)
        X[:, 0] = torch.tensor([0.39, 0.97], dtype=DT) + 0.03 * torch.rand(3, 2, dtype=DT, generator=g)
    acqs, values = [], []
    for cache_root in ({}, {"cache_root": False}):
        torch.manual_seed(0)  # prune_inferior_points draws its own samples
        acq = qLogNoisyExpectedImprovement(
            model, X_baseline=X_train[:8], prune_baseline=True, objective=obj,
            sampler=SobolQMCNormalSampler(torch.Size([512]), seed=2), **cache_root,
        )  # fmt: skip
        if acqs:  # the joint base samples of the cached path (baseline's, then the candidates')
            acq.sampler.base_samples = acqs[0].sampler.base_samples.clone()
        with torch.no_grad():
            values.append(acq(X))
        acqs.append(acq)
    cached = name in ("exact1", "exact2", "list")
    assert acqs[0]._cache_root == cached and not acqs[1]._cache_root
    assert torch.equal(acqs[0].X_baseline, acqs[1].X_baseline)
    assert torch.equal(acqs[1].sampler.base_samples, acqs[0].sampler.base_samples)  # kept, not drawn again
    assert values[0].shape == (3,) and (name == "low_rank" or bool((values[0] > -6).all()))
    torch.testing.assert_close(values[0], values[1], rtol=0, atol=1e-12)
    if cached:
        n, q, m = acqs[0].X_baseline.shape[-2], X.shape[-2], model.num_outputs
        with torch.no_grad():
            samples, _ = acqs[0]._get_samples_and_objectives(X)  # 512 x 3 x q x m
            X_full = torch.cat([acqs[0].X_baseline.expand(3, n, -1), X], dim=-2)
            mean, cov = joint_moments(model.posterior(X_full))  # 3 x (n + q) x m, 3 x (n + q) m x (n + q) m
        z = acqs[0].sampler.base_samples.reshape(512, 1, n + q, m)
        for j in range(m):
            rows = torch.arange(n + q) * m + j
            L = torch.linalg.cholesky(cov[:, rows[:, None], rows])
            hand = mean[..., j] + (L @ z[..., j].unsqueeze(-1)).squeeze(-1)  # 512 x 3 x (n + q)
            torch.testing.assert_close(samples[..., j], hand[..., n:], rtol=0, atol=1e-12)


def _hypervolume_2d(P, ref):
    r"""Area dominated by the points ``k x 2`` (maximisation) above ``ref``."""
    P = P[(P > ref).all(-1)]
    area, top = 0.0, float(ref[1])
    for x, y in sorted(P.tolist(), key=lambda p: -p[0]):
        if y > top:
            area += (x - float(ref[0])) * (y - top)
            top = y
    return area


@pytest.mark.parametrize("name", ["exact2", "low_rank", "list"])
def test_hypervolume_acquisitions(surrogates, name):
    r"""qLogEHVI (q = 1) against the mean hypervolume improvement of the same samples computed here (its smoothing
    of max/min with tau 1e-3 bounds the gap); qLogNEHVI (pruned baseline) with the default ``cache_root`` equals
    ``cache_root=False`` (SurrogateList raised with the default). The list's third output is left out by the
    objective."""
    model, X_train, draw = surrogates[name]
    obj = IdentityMCMultiOutputObjective(outcomes=[0, 1])
    X = draw(3, 1)
    with torch.no_grad():
        front = model.posterior(X_train).mean[..., :2]
        ref = front.min(0).values - 0.1
        part = FastNondominatedPartitioning(ref_point=ref, Y=front)
        ehvi = qLogExpectedHypervolumeImprovement(
            model,
            ref_point=ref,
            partitioning=part,
            objective=obj,
            sampler=SobolQMCNormalSampler(torch.Size([64]), seed=4),
        )(X)
        samples = SobolQMCNormalSampler(torch.Size([64]), seed=4)(model.posterior(X))[..., :2]  # 64 x 3 x 1 x 2
        base = _hypervolume_2d(front, ref)
        hvi = torch.tensor(
            [[_hypervolume_2d(torch.cat([front, s[j]]), ref) - base for j in range(3)] for s in samples], dtype=DT
        ).mean(0)
        Xn, values = draw(3, 2), []
        for cache_root in ({}, {"cache_root": False}):
            torch.manual_seed(0)
            acq = qLogNoisyExpectedHypervolumeImprovement(
                model, ref_point=ref, X_baseline=X_train[:6], prune_baseline=True, objective=obj,
                sampler=SobolQMCNormalSampler(torch.Size([32]), seed=5), **cache_root,
            )  # fmt: skip
            values.append(acq(Xn))
    assert ehvi.shape == (3,)
    assert (ehvi.exp() - hvi).abs().max() < 2e-3 * (1 + hvi.abs().max()), (ehvi.exp(), hvi)
    assert torch.isfinite(values[0]).all() and values[0].shape == (3,)
    torch.testing.assert_close(values[0].exp(), values[1].exp(), rtol=0.05, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_subset_output_equals_the_selected_marginals(surrogates, name):
    model, _, draw = surrogates[name]
    X = draw(2, 3)
    last = model.num_outputs - 1
    with torch.no_grad():
        sub = model.subset_output([last]).posterior(X)
        mean, cov = joint_moments(model.posterior(X))
    m = model.num_outputs
    rows = torch.arange(3) * m + last
    assert sub.mean.shape == (2, 3, 1)
    torch.testing.assert_close(sub.mean[..., 0], mean[..., last], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(joint_moments(sub)[1], cov[:, rows[:, None], rows], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["exact1", "low_rank", "funbat"])
def test_botorch_model_list_with_a_single_task_gp(surrogates, name):
    r"""BoTorch's own ``ModelListGP`` of a one-output gpgeom model and a ``SingleTaskGP``: each output's posterior is
    its member's, the outputs independent, and qLogNEI (pruned baseline) runs on it."""
    model, X_train, draw = surrogates[name]
    gp = model if model.num_outputs == 1 else model.subset_output([0])
    with torch.no_grad():
        y = gp.posterior(X_train).mean
    stgp = SingleTaskGP(X_train, torch.cos(3 * y))
    pair = ModelListGP(gp, stgp)
    X = draw(2, 3)
    with torch.no_grad():
        mean, cov = joint_moments(pair.posterior(X))
        for k, member in enumerate((gp, stgp)):
            m_k, c_k = joint_moments(member.posterior(X))
            torch.testing.assert_close(mean[..., k], m_k[..., 0], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(cov[:, k::2, k::2], c_k, rtol=1e-10, atol=1e-12)
        assert float(cov[:, 0::2, 1::2].abs().max()) == 0.0
        acq = qLogNoisyExpectedImprovement(
            pair, X_baseline=X_train[:8], prune_baseline=True, objective=LinearMCObjective(torch.ones(2, dtype=DT))
        )
        assert torch.isfinite(acq(X)).all()


def _loo_problem(m=1):
    g = torch.Generator().manual_seed(1)
    X = torch.rand(10, 2, dtype=DT, generator=g)
    Y = torch.sin(4 * X[:, :1]) + X[:, 1:]
    return gen_loo_cv_folds(X, torch.cat([Y, X[:, :1] ** 2], -1) if m == 2 else Y)


@pytest.mark.parametrize("m", [1, 2])
def test_batched_exact_gp_equals_the_separate_models_of_its_folds(m, tmp_path):
    r"""A batch of leave-one-out folds (``gen_loo_cv_folds``) equals one ExactGPModel per fold, also conditioned on
    a new point per fold, restricted to one output and saved and loaded: the default input transform's bounds were
    taken over all batch members, so each fold saw its held-out point's inputs (one output: posterior mean off by
    up to 0.011 and variance by 0.0096 on these folds; two outputs, where the bounds stayed common because BoTorch
    holds the training inputs as ``b x m x n x d``: 0.0105 and 0.0096); now 2e-16 (one output) and 2e-15 (two)."""
    folds = _loo_problem(m)
    g = torch.Generator().manual_seed(3)
    Xc, Yc = torch.rand(10, 1, 2, dtype=DT, generator=g), torch.randn(10, 1, m, dtype=DT, generator=g)
    batched = ExactGPModel(folds.train_X, folds.train_Y).eval()
    batched.save(tmp_path / "b.pt")
    variants = {
        "model": lambda model, k: model,
        "conditioned": lambda model, k: model.condition_on_observations(
            Xc if k is None else Xc[k], Yc[Ellipsis if k is None else k]
        ),
        "loaded": lambda model, k: ExactGPModel.load(tmp_path / "b.pt") if k is None else model,
        "train/eval": lambda model, k: model.train().eval(),
    }
    if m == 2:
        variants["subset"] = lambda model, k: model.subset_output([1])
    for name, make in variants.items():
        got = make(batched, None)
        with torch.no_grad():
            post = got.posterior(folds.test_X)
            for k in range(10):
                alone = make(ExactGPModel(folds.train_X[k], folds.train_Y[k]).eval(), k).posterior(folds.test_X[k])
                torch.testing.assert_close(post.mean[k], alone.mean, rtol=0, atol=1e-12, msg=name)
                torch.testing.assert_close(post.variance[k], alone.variance, rtol=0, atol=1e-12, msg=name)


@pytest.mark.parametrize("b", [2, 3])
def test_batched_two_output_model_conditioned_on_points_without_its_batch_equals_the_separate_models(b):
    r"""New points ``n' x d`` given without the model's batch (broadcast with it, as ``condition_on_observations``
    documents; also ``fantasize``'s) to a batched two-output ExactGPModel whose members' inputs span different
    boxes: BoTorch makes them ``m x n' x d``, which the per-member bounds paired with the outputs instead of the
    members. With as many members as outputs (``b = 2``) the conditioned posterior mean was off by 1.17 from the
    separate models, with ``b = 3`` conditioning raised a broadcast ``RuntimeError`` (and ``fantasize`` of such points
    raised); now each equals its separate model conditioned on the same points (measured: 0)."""
    g = torch.Generator().manual_seed(0)
    X = torch.rand(b, 8, 2, dtype=DT, generator=g) * torch.tensor([1.0, 3.0], dtype=DT)
    X = X + torch.arange(b, dtype=DT)[:, None, None]  # each member its own box
    Y = torch.cat([torch.sin(3 * X[..., :1]) + X[..., 1:], X[..., :1] ** 2], -1)
    Xn, Yn = torch.rand(3, 2, dtype=DT, generator=g) + 0.5, torch.randn(3, 2, dtype=DT, generator=g)
    Xt = torch.rand(4, 2, dtype=DT, generator=g) + 0.5
    model = ExactGPModel(X, Y).eval()
    alone = [ExactGPModel(X[k], Y[k]).eval() for k in range(b)]
    fantasies = model.fantasize(Xn, SobolQMCNormalSampler(torch.Size([2]), seed=0))
    Yf = fantasies.train_data[1][..., -3:, :]  # 2 x b x 3 x 2: the fantasised outputs at Xn
    with torch.no_grad():
        for Yc in (Yn, Yn.expand(b, 3, 2)):
            post = model.condition_on_observations(Xn, Yc).posterior(Xt)
            for k in range(b):
                want = alone[k].condition_on_observations(Xn, Yn).posterior(Xt)
                torch.testing.assert_close(post.mean[k], want.mean, rtol=0, atol=1e-12)
                torch.testing.assert_close(post.variance[k], want.variance, rtol=0, atol=1e-12)
        post = fantasies.posterior(Xt)
        for k in range(b):
            want = alone[k].condition_on_observations(Xn, Yf[:, k]).posterior(Xt)  # 2 fantasies x 4 x 2
            torch.testing.assert_close(post.mean[:, k], want.mean, rtol=0, atol=1e-12)
            torch.testing.assert_close(post.variance[:, k], want.variance, rtol=0, atol=1e-12)


@pytest.mark.parametrize("m", [1, 2])
def test_batch_cross_validation_equals_one_model_per_fold_with_its_hyperparameters(m):
    folds = _loo_problem(m)
    cv = batch_cross_validation(
        ExactGPModel, ExactMarginalLogLikelihood, folds, fit_args={"optimizer_kwargs": {"options": {"maxiter": 30}}}
    )
    assert cv.posterior.mean.shape == (10, 1, m) and cv.observed_Y.shape == (10, 1, m)
    fitted = cv.model
    for k in (0, 3, 7):
        alone = ExactGPModel(folds.train_X[k], folds.train_Y[k])
        alone.covar_module.base_kernel.lengthscale = fitted.covar_module.base_kernel.lengthscale[k].detach()
        alone.covar_module.outputscale = fitted.covar_module.outputscale[k].detach()
        alone.likelihood.noise = fitted.likelihood.noise[k].detach()
        alone.mean_module.constant = fitted.mean_module.constant[k].detach()
        with torch.no_grad():
            post = alone.eval().posterior(folds.test_X[k])
        torch.testing.assert_close(cv.posterior.mean[k].detach(), post.mean, rtol=0, atol=1e-10)
        torch.testing.assert_close(cv.posterior.variance[k].detach(), post.variance, rtol=0, atol=1e-10)


def test_list_posterior_by_output_keeps_the_joint_of_repeated_and_reordered_outputs(surrogates):
    r"""The list's posterior (block-diagonal by output when its outputs are independent) equals the rows of its full
    joint for ``output_indices`` reordered and repeated (a repeated output is the same variable, correlation 1)."""
    model, _, draw = surrogates["list"]
    X = draw(2, 3)
    with torch.no_grad():
        mean, cov = joint_moments(model.posterior(X))
        for idx in ([2, 0], [1, 1], [2, 0, 2]):
            sub_mean, sub_cov = joint_moments(model.posterior(X, output_indices=idx))
            rows = (torch.arange(3)[:, None] * 3 + torch.tensor(idx)).reshape(-1)
            torch.testing.assert_close(sub_mean, mean[..., idx], rtol=0, atol=0)
            torch.testing.assert_close(sub_cov, cov[:, rows[:, None], rows], rtol=0, atol=1e-15)


@pytest.mark.parametrize("m", [1, 2])
def test_batched_exact_gp_keeps_the_botorch_contract(m):
    r"""With each batch member's own bounds, conditioning and fantasies of a batched ExactGPModel (one output and
    two) still equal Bayes' rule on its joint, and ``subset_output`` its outputs (the contract check)."""
    from gpgeom.botorch import check_botorch_model

    folds = _loo_problem(m)
    model = ExactGPModel(folds.train_X[:3], folds.train_Y[:3]).eval()
    report = check_botorch_model(model, bounds=torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=DT))
    assert report["batch_shape"] == (3,)
    assert "conditioning = Bayes' rule" in report["checks"]


@pytest.mark.parametrize("m", [1, 2])
def test_batched_exact_gp_acquisitions_have_one_value_per_batch_member(m):
    r"""A batched ExactGPModel (2 members) with ``b x 2 x q x d`` inputs: analytic values per member equal their closed
    forms on its joint moments, qSimpleRegret the reduction of its samples, qKG and qNIPV one finite value each."""
    g = torch.Generator().manual_seed(2)
    X = torch.rand(2, 12, 2, dtype=DT, generator=g)
    Y = (torch.sin(4 * X[..., :1]) + X[..., 1:]) * torch.arange(1, m + 1, dtype=DT)
    model = ExactGPModel(X, Y)
    w, pt, obj = _weights(model)
    Xq = torch.rand(3, 2, 1, 2, dtype=DT, generator=g)
    with torch.no_grad():
        mean, cov = joint_moments(model.posterior(Xq))  # 3 x 2 x 1 x m, 3 x 2 x m x m
        mu, sd = mean[..., 0, :] @ w, torch.einsum("a,...ac,c->...", w, cov, w).sqrt()
        torch.testing.assert_close(UpperConfidenceBound(model, beta=2.0, posterior_transform=pt)(Xq), mu + 2**0.5 * sd)
        torch.testing.assert_close(PosteriorStandardDeviation(model, posterior_transform=pt)(Xq), sd)
        Xb = torch.rand(3, 2, 3, 2, dtype=DT, generator=g)
        o = _mc_objective_samples(model, Xb, w, seed=6, n=64)
        sr = qSimpleRegret(model, objective=obj, sampler=SobolQMCNormalSampler(torch.Size([64]), seed=6))(Xb)
        torch.testing.assert_close(sr, o.max(-1).values.mean(0), rtol=1e-12, atol=1e-12)
        kg = qKnowledgeGradient(model, num_fantasies=3, posterior_transform=pt)(torch.rand(3, 2, 4, 2, dtype=DT))
        nipv = qNegIntegratedPosteriorVariance(model, mc_points=torch.rand(5, 2, dtype=DT), posterior_transform=pt)(Xb)
    for v in (kg, nipv):
        assert v.shape == (3, 2) and torch.isfinite(v).all()

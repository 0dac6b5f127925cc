r"""Gradients and batch consistency of every BoTorch surrogate gpgeom provides, against independent truths.

``optimize_acqf`` goes wrong silently when a posterior's gradient with respect to ``X`` is wrong, or when a
``b x q x d`` batch gives other posteriors than its members one at a time. For :class:`~gpgeom.botorch.ExactGPModel`
(one and several outputs, default and MMGP's fixed-box input transform, a log outcome transform), the
:class:`~gpgeom.botorch.SurrogateList` of MMGP's latent GPs (and one with a FunBaT member), FunBaT's
:class:`~gpgeom.models.funbat.surrogate.FunBaTBoTorchModel` (plain and ``target_transform="log"``) and their
conditioned and fantasy models, this file checks

* the autograd gradients of the posterior mean, the variances and the full ``q x q`` joint covariance (random weighted
  sums) against central finite differences (``h = 1e-6``): relative error below ``1e-5`` (measured at most 5e-8);
* the gradients of ``qLogExpectedImprovement`` (fixed Sobol base samples), ``LogExpectedImprovement`` and
  ``PosteriorMean`` likewise (measured at most 2e-8);
* a ``b x q x d`` posterior against each ``X[b]`` alone (mean and joint covariance, measured at most 5e-14 for the
  exact GP and the lists, 0 for FunBaT), and the joint covariance against dense truths: the exact GP's
  textbook posterior (Rasmussen & Williams 2006, eq. 2.24) from its kernel, hand-written here, before and after
  conditioning; a list's joint as its members' blocks; a conditioned Gaussian surrogate as Bayes' rule on its base's
  joint; FunBaT's joint diagonal as ``predict``;
* that ``optimize_acqf`` (gradient-driven L-BFGS-B) ends at least at the best acquisition value of a dense grid.

Inputs that are not continuous: RVGP (:class:`~gpgeom.botorch.low_rank.LowRankSpectralGP`) takes point indices,
so ``X`` gets no gradient at all (``X.grad`` stays ``None``) and a continuous ``optimize_acqf`` is refused by name;
FunBaT's categorical modes give the derivative 0 (the posterior is constant between labels, the prior of an unseen
label, so 0 is the derivative almost everywhere); FunBaT with ``nu=0.5`` has kinks at the training coordinates, where
autograd gives a one-sided derivative (the correct derivative everywhere else).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from botorch.acquisition import LogExpectedImprovement, PosteriorMean, qLogExpectedImprovement
from botorch.acquisition.objective import ScalarizedPosteriorTransform
from botorch.models.transforms.outcome import ChainedOutcomeTransform, Log, Standardize
from botorch.optim import optimize_acqf, optimize_acqf_discrete
from botorch.posteriors import GPyTorchPosterior
from botorch.sampling import SobolQMCNormalSampler
from funbat_factories import fit_quietly
from linear_operator import to_dense

from gpgeom.botorch import ExactGPModel, SurrogateList
from gpgeom.botorch.check import joint_moments
from gpgeom.models.mmgp.latent_gp import make_gp

DT = torch.float64
UNIT2 = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=DT)
H = 1e-6  # finite-difference step
RTOL = 1e-5  # measured: at most 5e-8 (posterior moments), 2e-8 (acquisitions)


class _Data:
    def __init__(self, X_train, y_train):
        self.X_train, self.y_train = X_train, y_train


def _training(n=15, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, 2, dtype=DT, generator=g)
    Y = torch.stack([torch.sin(5 * X[:, 0]), torch.cos(3 * X[:, 1]), X.sum(-1)], -1)
    return X, Y + 0.05 * torch.randn(n, 3, dtype=DT, generator=g)


def _funbat_data(seed=1):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(40, 2, dtype=DT, generator=g)
    return X, torch.sin(3 * X[:, 0]) * X[:, 1] + 0.05 * torch.randn(40, dtype=DT, generator=g)


def _fantasy_sampler():
    return SobolQMCNormalSampler(torch.Size([2]), seed=0)


@pytest.fixture(scope="module")
def surrogates():
    r"""name -> (model, posterior transform to one objective or None)."""
    X, Y = _training()
    exact = ExactGPModel(X, Y[:, :1]).fit(progress=False, max_iter=30)
    multi = ExactGPModel(X, Y[:, :2]).fit(progress=False, max_iter=30)
    logy = ChainedOutcomeTransform(log=Log(), std=Standardize(1))
    exact_log = ExactGPModel(X, Y[:, 2:].exp(), outcome_transform=logy).fit(progress=False, max_iter=30)
    # MMGP's latent GPs ("per_field"): fixed-box Normalize, a shared group of two outputs and a scalar of its own
    a = make_gp(X, Y[:, :2], UNIT2, "matern52", shared=True).fit(progress=False, max_iter=30)
    b = make_gp(X, Y[:, 2:], UNIT2, "rbf").fit(progress=False, max_iter=30)
    mmgp_list = SurrogateList(a, b)
    Xf, yf = _funbat_data()
    funbat = fit_quietly(_Data(Xf, yf), max_sweeps=3).as_botorch()
    funbat_log = fit_quietly(_Data(Xf, yf.exp()), max_sweeps=3, target_transform="log").as_botorch()
    mixed = SurrogateList(exact, funbat)
    Xc = torch.tensor([[0.3, 0.6], [0.75, 0.2]], dtype=DT)
    two = ScalarizedPosteriorTransform(torch.tensor([1.0, -0.5], dtype=DT))
    three = ScalarizedPosteriorTransform(torch.tensor([1.0, 0.3, -0.5], dtype=DT))
    return {
        "exact": (exact, None),
        "exact_two_outputs": (multi, two),
        "exact_log_outcome": (exact_log, None),
        "mmgp_list": (mmgp_list, three),
        "funbat": (funbat, None),
        "funbat_log": (funbat_log, None),
        "list_exact_funbat": (mixed, two),
        "exact_conditioned": (exact.condition_on_observations(Xc, Y[:2, :1]), None),
        "exact_two_outputs_conditioned": (multi.condition_on_observations(Xc, Y[:2, :2]), two),
        "mmgp_list_conditioned": (mmgp_list.condition_on_observations(Xc, Y[:2]), three),
        "funbat_conditioned": (funbat.condition_on_observations(Xc, yf[:2, None]), None),
        "exact_fantasy": (exact.fantasize(Xc, _fantasy_sampler()), None),
        "funbat_fantasy": (funbat.fantasize(Xc, _fantasy_sampler()), None),
        "list_fantasy": (mixed.fantasize(Xc, _fantasy_sampler()), two),
    }


NAMES = [
    "exact", "exact_two_outputs", "exact_log_outcome", "mmgp_list", "funbat", "funbat_log", "list_exact_funbat",
    "exact_conditioned", "exact_two_outputs_conditioned", "mmgp_list_conditioned", "funbat_conditioned",
    "exact_fantasy", "funbat_fantasy", "list_fantasy",
]  # fmt: skip


def _weighted(t, seed):
    r"""A fixed random linear functional of ``t`` (weights drawn from ``seed`` for ``t``'s shape)."""
    return (t * torch.randn(t.shape, dtype=t.dtype, generator=torch.Generator().manual_seed(seed))).sum()


def fd_error(fun, X):
    r"""``max |autograd - central FD| / max |FD|`` for each entry of the vector ``fun(X)`` (``k`` scalars), and
    ``max |FD|``: two ``k``-vectors."""
    Xg = X.clone().requires_grad_(True)
    values = fun(Xg)
    grads = [torch.autograd.grad(v, Xg, retain_graph=True)[0] for v in values]
    fd = torch.zeros(len(values), X.numel(), dtype=DT)
    with torch.no_grad():
        for i in range(X.numel()):
            e = torch.zeros(X.numel(), dtype=DT)
            e[i] = H
            e = e.reshape(X.shape)
            fd[:, i] = (fun(X + e) - fun(X - e)) / (2 * H)
    scale = fd.abs().max(-1).values
    err = torch.stack([(g.reshape(-1) - f).abs().max() for g, f in zip(grads, fd)]) / scale
    return err, scale


@pytest.mark.parametrize("name", NAMES)
def test_posterior_moment_gradients_match_finite_differences(surrogates, name):
    model, _ = surrogates[name]
    X = torch.rand(3, 2, dtype=DT, generator=torch.Generator().manual_seed(7))
    X[2] = X[0]  # two equal points: the joint covariance's r = 0 entries off the diagonal

    joint = isinstance(model.posterior(X), GPyTorchPosterior)  # a log outcome gives a TransformedPosterior: no joint

    def moments(Z):
        post = model.posterior(Z)
        out = [_weighted(post.mean, 1), _weighted(post.variance, 2)]
        if joint:
            out.append(_weighted(post.distribution.covariance_matrix, 3))
        return torch.stack(out)

    err, scale = fd_error(moments, X)  # mean, variances (and joint covariance)
    assert bool((scale > 1e-4).all()), (name, scale)  # gradients to check
    assert float(err.max()) < RTOL, (name, err)


def test_exact_gp_gradients_in_row_chunks_equal_the_unchunked_ones():
    r"""Under a small memory budget the exact GP builds its joint covariance in blocks of rows (one or two points,
    the diagonal from the kernel's ``diag=True`` values): values and gradients as in one block, and still those of
    finite differences."""
    from gpgeom.engine.chunking import memory_budget

    X, Y = _training()
    model = make_gp(X, Y[:, :2], UNIT2, "matern52").fit(progress=False, max_iter=20)
    Xq = torch.rand(6, 2, dtype=DT, generator=torch.Generator().manual_seed(15))
    Xq[4] = Xq[1]

    def moments(Z):
        post = model.posterior(Z)
        return torch.stack([_weighted(post.mean, 1), _weighted(post.distribution.covariance_matrix, 3)])

    Z = Xq.clone().requires_grad_(True)
    whole = moments(Z)
    grads = [torch.autograd.grad(v, Z, retain_graph=True)[0] for v in whole]
    for budget in (2000, 800):  # rows of 2 and of 1 point (7 blocks of 6 float64 entries per row)
        with memory_budget(budget):
            Z = Xq.clone().requires_grad_(True)
            chunked = moments(Z)
            torch.testing.assert_close(chunked, whole, rtol=1e-13, atol=0)
            for v, g in zip(chunked, grads):
                torch.testing.assert_close(torch.autograd.grad(v, Z, retain_graph=True)[0], g, rtol=1e-10, atol=1e-12)
            err, _ = fd_error(moments, Xq)
            assert float(err.max()) < RTOL, (budget, err)


ACQ_NAMES = ["exact", "exact_two_outputs", "exact_log_outcome", "mmgp_list", "funbat", "funbat_log",
             "exact_conditioned", "exact_fantasy", "list_fantasy"]  # fmt: skip


@pytest.mark.parametrize("name", ACQ_NAMES)
def test_acquisition_gradients_match_finite_differences(surrogates, name):
    model, transform = surrogates[name]
    g = torch.Generator().manual_seed(8)
    batched = model.batch_shape != torch.Size([])
    X = torch.rand(2, *((1,) if batched else ()), 2, 2, dtype=DT, generator=g)  # 2 candidate pairs
    sampler = SobolQMCNormalSampler(torch.Size([32]), seed=3)  # fixed base samples: a deterministic acquisition
    acqs = [qLogExpectedImprovement(model, best_f=0.5, sampler=sampler, posterior_transform=transform)]
    if not batched:  # analytic acquisitions take models without a batch: at the pairs' points one at a time
        acqs += [LogExpectedImprovement(model, best_f=0.5, posterior_transform=transform)]
        acqs += [PosteriorMean(model, posterior_transform=transform)]

    def values(Z):
        return torch.stack([acqs[0](Z).sum()] + [acq(Z.reshape(-1, 1, 2)).sum() for acq in acqs[1:]])

    err, scale = fd_error(values, X)  # qLogEI (LogEI, PosteriorMean)
    assert bool((scale > 1e-4).all()), (name, scale)
    assert float(err.max()) < RTOL, (name, err)


def _joint(model, X):
    r"""Mean ``batch x q x m`` and joint covariance in the point-major order (row ``i m + a``: output ``a`` at point
    ``i``), whatever the ordering of the posterior's multitask normal (a list's is by output)."""
    return joint_moments(model.posterior(X))


@pytest.mark.parametrize("name", [n for n in NAMES if "log" not in n])
def test_a_batch_of_inputs_is_its_members_one_at_a_time(surrogates, name):
    model, _ = surrogates[name]
    batched = model.batch_shape != torch.Size([])
    X = torch.rand(4, *((1,) if batched else ()), 3, 2, dtype=DT, generator=torch.Generator().manual_seed(9))
    mean, cov = _joint(model, X)
    assert mean.shape[:-2] == (4, *model.batch_shape)
    for b in range(4):
        mb, cb = _joint(model, X[b])
        torch.testing.assert_close(mean[b], mb, rtol=0, atol=1e-12 * max(1.0, float(mb.abs().max())))
        torch.testing.assert_close(cov[b], cb, rtol=0, atol=1e-12 * max(1.0, float(cb.abs().max())))


def _dense_exact_posterior(model, X_train, y_train, Xq, box=None):
    r"""The single-output exact GP posterior (R&W eqs. 2.23-2.24) written out from the model's kernel, constant mean,
    noise, input box (default: the box of ``X_train``) and Standardize statistics: mean ``q`` and covariance ``q x q``
    in the original units."""
    lo, hi = (X_train.min(0).values, X_train.max(0).values) if box is None else box  # the default input transform
    A, B = (X_train - lo) / (hi - lo), (Xq - lo) / (hi - lo)
    tf = model.outcome_transform
    mu_y, sd_y = tf.means.reshape(()), tf.stdvs.reshape(())
    with torch.no_grad():
        k = model.covar_module
        K = to_dense(k(A, A)) + model.likelihood.noise.reshape(()) * torch.eye(len(A), dtype=DT)
        Ks, Kss = to_dense(k(B, A)), to_dense(k(B, B))
        c = model.mean_module.constant.reshape(())
        mean = c + Ks @ torch.linalg.solve(K, (y_train - mu_y) / sd_y - c)
        cov = Kss - Ks @ torch.linalg.solve(K, Ks.T)
    return mean * sd_y + mu_y, cov * sd_y**2


def test_joint_covariances_equal_dense_truths(surrogates):
    Xq = torch.rand(5, 2, dtype=DT, generator=torch.Generator().manual_seed(10))
    X, Y = _training()
    # the exact GP, before and after conditioning (the union with the same hyperparameters and transforms)
    exact, _ = surrogates["exact"]
    mean, cov = _joint(exact, Xq)
    tm, tc = _dense_exact_posterior(exact, X, Y[:, 0], Xq)
    torch.testing.assert_close(mean[:, 0], tm, rtol=0, atol=1e-9)
    torch.testing.assert_close(cov, tc, rtol=0, atol=1e-9)
    cond, _ = surrogates["exact_conditioned"]
    Xc = torch.tensor([[0.3, 0.6], [0.75, 0.2]], dtype=DT)
    mean, cov = _joint(cond, Xq)
    union = (torch.cat([X, Xc]), torch.cat([Y[:, 0], Y[:2, 0]]))
    tm, tc = _dense_exact_posterior(exact, *union, Xq, box=(X.min(0).values, X.max(0).values))  # the training box
    torch.testing.assert_close(mean[:, 0], tm, rtol=0, atol=1e-9)
    torch.testing.assert_close(cov, tc, rtol=0, atol=1e-9)
    # a list: its members' joints as blocks, outputs interleaved point by point; independent between members
    lst, _ = surrogates["mmgp_list"]
    mean, cov = _joint(lst, Xq)
    (ma, ca), (mb, cb) = (_joint(member, Xq) for member in lst.models)
    q = Xq.shape[0]
    torch.testing.assert_close(mean, torch.cat([ma, mb], -1), rtol=0, atol=1e-12)
    cov4 = cov.reshape(q, 3, q, 3)
    torch.testing.assert_close(cov4[:, :2, :, :2], ca.reshape(q, 2, q, 2), rtol=0, atol=1e-12)
    torch.testing.assert_close(cov4[:, 2, :, 2], cb, rtol=0, atol=1e-12)
    assert float(cov4[:, :2, :, 2].abs().max()) == 0.0
    # FunBaT: the joint's moments are predict's (another code path), and conditioning is Bayes' rule on the joint
    funbat, _ = surrogates["funbat"]
    mean, cov = _joint(funbat, Xq)
    pm, ps = funbat.predict(Xq, return_std=True)
    torch.testing.assert_close(mean, pm, rtol=0, atol=1e-12)
    torch.testing.assert_close(cov.diagonal(), ps[:, 0] ** 2, rtol=1e-10, atol=1e-14)
    _, yf = _funbat_data()
    both = torch.cat([Xq, Xc])
    jm, jc = _joint(funbat, both)
    noise = _joint_noisy(funbat, Xc) - jc[5:, 5:]
    gain = jc[:5, 5:] @ torch.linalg.inv(jc[5:, 5:] + noise)
    mean, cov = _joint(surrogates["funbat_conditioned"][0], Xq)
    torch.testing.assert_close(mean[:, 0], jm[:5, 0] + gain @ (yf[:2] - jm[5:, 0]), rtol=0, atol=1e-10)
    torch.testing.assert_close(cov, jc[:5, :5] - gain @ jc[5:, :5], rtol=0, atol=1e-10)


def _joint_noisy(model, X):
    return model.posterior(X, observation_noise=True).distribution.covariance_matrix.detach()


GRID = torch.stack(torch.meshgrid(*[torch.linspace(0, 1, 51, dtype=DT)] * 2, indexing="ij"), -1).reshape(-1, 1, 2)


@pytest.mark.parametrize(
    "name",
    ["exact", "exact_two_outputs", "mmgp_list", "funbat", "funbat_log", "exact_conditioned", "funbat_conditioned"],
)
def test_optimize_acqf_reaches_the_grid_maximum(surrogates, name):
    r"""L-BFGS-B on the gradients ends at least at the best value of a 51 x 51 grid (measured: above it by 4e-5 to
    0.19, in log-EI units): gradients that drive the optimiser to a real maximum."""
    model, transform = surrogates[name]
    with torch.no_grad():
        best_f = float(model.posterior(GRID[::40]).mean.reshape(len(GRID[::40]), -1)[:, 0].max())
    acq = LogExpectedImprovement(model, best_f=best_f, posterior_transform=transform)
    with torch.no_grad():
        grid_best = float(acq(GRID).max())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BoTorch's optimisation warnings (a restart stopping early)
        _, value = optimize_acqf(acq, UNIT2, q=1, num_restarts=4, raw_samples=64, options={"seed": 0})
    assert float(value) >= grid_best - 1e-6 * max(1.0, abs(grid_best)), (name, float(value), grid_best)


def test_optimize_acqf_q2_reaches_the_grid_maximum_of_a_joint_acquisition():
    r"""``q = 2`` on a 1-d exact GP: the joint qLogEI (fixed base samples) optimised jointly reaches the best pair of a
    101-point grid: the gradient of the joint covariance drives it."""
    g = torch.Generator().manual_seed(11)
    X = torch.rand(8, 1, dtype=DT, generator=g)
    model = ExactGPModel(X, torch.sin(6 * X) + 0.05 * torch.randn(8, 1, dtype=DT, generator=g))
    model.fit(progress=False, max_iter=30)
    sampler = SobolQMCNormalSampler(torch.Size([128]), seed=4)
    acq = qLogExpectedImprovement(model, best_f=float(model.train_targets.max()), sampler=sampler)
    grid = torch.linspace(0, 1, 101, dtype=DT)
    pairs = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2, 1)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the jitter of the singular joint of the grid's equal pairs
        grid_best = float(torch.cat([acq(p) for p in pairs.split(2000)]).max())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, value = optimize_acqf(acq, UNIT2[:, :1], q=2, num_restarts=4, raw_samples=64, options={"seed": 0})
    assert float(value) >= grid_best - 1e-6 * max(1.0, abs(grid_best)), (float(value), grid_best)


@pytest.mark.parametrize("name", ["exact", "exact_two_outputs", "mmgp_list", "funbat"])
def test_gradients_with_respect_to_the_conditioning_inputs_under_propagate_grads(surrogates, name):
    r"""Look-ahead acquisitions (``qNegIntegratedPosteriorVariance``, ``qKnowledgeGradient``) differentiate the
    posterior of ``fantasize(X)`` with respect to ``X`` under BoTorch's ``propagate_grads``. The exact GP's conditioned
    models used GPyTorch's fast predictive variance (``fast_pred_var``, which BoTorch's posterior turns on), whose
    cache update by the new rows gives a wrong gradient with respect to those rows: the variance's was off by a
    relative 13-536 (conditioned), 71-748 (fantasies), qNIPV's by 3.6-7.2 (BoTorch's own SingleTaskGP alike): GPyTorch
    detached the updated cache (its default ``detach_test_caches``; BoTorch turns it off only inside a posterior).
    Now at most 2.1e-7 and 3e-9, with the fast variance from the cache kept attached. (Without ``propagate_grads``
    BoTorch detaches the training caches by convention: gradients with respect to conditioning inputs are then not
    expected.)"""
    from botorch import settings as botorch_settings
    from botorch.acquisition.active_learning import qNegIntegratedPosteriorVariance

    model, transform = surrogates[name]
    g = torch.Generator().manual_seed(16)
    Xq, Xn = torch.rand(3, 2, dtype=DT, generator=g), torch.rand(2, 2, dtype=DT, generator=g)
    Yn = torch.rand(2, model.num_outputs, dtype=DT, generator=g)

    def moments(Z):
        with botorch_settings.propagate_grads(True):
            cond = model.condition_on_observations(Z, Yn).posterior(Xq)
            fant = model.fantasize(Z, SobolQMCNormalSampler(torch.Size([3]), seed=5)).posterior(Xq)
        return torch.stack(
            [_weighted(cond.mean, 1), _weighted(cond.variance, 2), _weighted(fant.mean, 3), _weighted(fant.variance, 4)]
        )

    err, scale = fd_error(moments, Xn)
    assert bool((scale > 1e-6).all()), (name, scale)
    assert float(err.max()) < RTOL, (name, err)
    mc_points = torch.rand(16, 2, dtype=DT, generator=g)
    acq = qNegIntegratedPosteriorVariance(model, mc_points=mc_points, posterior_transform=transform)
    err, scale = fd_error(lambda Z: acq(Z).sum()[None], torch.rand(2, 2, 2, dtype=DT, generator=g))
    assert float(scale.min()) > 1e-6 and float(err.max()) < RTOL, (name, err)


def test_a_mean_only_look_ahead_factors_no_training_plus_fantasy_covariance(surrogates, monkeypatch):
    r"""``qKnowledgeGradient`` uses only its fantasy models' posterior means. Its value and gradient factor no matrix
    larger than the ``n x n`` training covariance (Cholesky factorisations counted): the fantasy models' variances come
    from GPyTorch's fast cache, updated by the fantasy rows with their gradient (test above), and the means from the
    updated mean cache. Before, the ``(n + 1) x (n + 1)`` training-plus-fantasy covariance of every fantasy batch was
    factored twice: for the mean cache (GPyTorch stored the updated one where the mean never read it) and for GPyTorch's
    exact predictive covariance, unused (``ExactGPModel`` had selected it under ``propagate_grads`` for the gradient);
    ``optimize_acqf`` of a qKG on 200 points took 15x the time. The gradient is checked against central finite
    differences."""
    from botorch.acquisition import qKnowledgeGradient

    model, _ = surrogates["exact"]
    n = model.train_inputs[0].shape[-2]
    sizes = []
    factor = torch.linalg.cholesky_ex

    def counted(A, *args, **kwargs):
        sizes.append(A.shape[-1])
        return factor(A, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "cholesky_ex", counted)
    kg = qKnowledgeGradient(model, num_fantasies=4, sampler=SobolQMCNormalSampler(torch.Size([4]), seed=2))
    X = torch.rand(2, 1 + 4, 2, dtype=DT, generator=torch.Generator().manual_seed(9))  # 2 x (q + fantasies) x d
    err, scale = fd_error(lambda Z: kg(Z).sum()[None], X)
    assert float(scale.min()) > 1e-6 and float(err.max()) < RTOL, err
    assert sizes and max(sizes) <= n, (n, sorted(set(sizes)))  # counted: the fantasy rows' Schur complements


# --------------------------------------------------------------------------------------------------------------------
# inputs that are not continuous: no pretended derivative
def test_rvgp_index_inputs_get_no_gradient_and_continuous_optimisation_is_refused():
    from gpgeom.datasets.vector_fields import sphere_vector_field
    from gpgeom.models.rvgp import RVGP

    s = sphere_vector_field(150, "mixed")
    tr = np.arange(0, 150, 3)
    gp = RVGP(s.points, n_eigenpairs=12, dim=2).fit(tr, s.vectors[tr], max_iter=5, restarts=0, progress=False)
    X = torch.tensor([[4.0], [7.0], [100.0]], dtype=DT, requires_grad=True)
    post = gp.posterior(X)
    (post.mean.sum() + post.distribution.covariance_matrix.sum()).backward()  # the graph reaches the parameters only
    assert X.grad is None
    first = ScalarizedPosteriorTransform(torch.tensor([1.0, 0.0, 0.0], dtype=DT))
    acq = LogExpectedImprovement(gp, best_f=0.0, posterior_transform=first)
    with pytest.raises(ValueError, match="`X` must hold integer indices of the basis points"):
        optimize_acqf(acq, torch.tensor([[0.0], [149.0]], dtype=DT), q=1, num_restarts=2, raw_samples=8)
    # the discrete optimiser is the brute-force maximum over the choices
    choices = torch.arange(0, 150, 5, dtype=DT)[:, None]
    cand, value = optimize_acqf_discrete(acq, q=1, choices=choices)
    with torch.no_grad():
        values = acq(choices[:, None])
    assert float(value) == pytest.approx(float(values.max()), rel=1e-12, abs=1e-12)
    # batches: each member one at a time, to rounding of the dense algebra, which subtracts nearly all of a prior
    # variance of 10-100 and solves with a noise of 1e-6 of it (measured: 9e-13 unconditioned, 2.4e-12 conditioned)
    Xb = torch.randint(0, 150, (4, 3, 1), generator=torch.Generator().manual_seed(12)).to(DT)
    Yc = torch.randn(2, 3, dtype=DT, generator=torch.Generator().manual_seed(14))
    for model in (gp, gp.condition_on_observations(torch.tensor([[5.0], [9.0]], dtype=DT), Yc)):
        mean, cov = _joint(model, Xb)
        for b in range(4):
            mb, cb = _joint(model, Xb[b])
            torch.testing.assert_close(mean[b], mb, rtol=0, atol=1e-10)
            torch.testing.assert_close(cov[b], cb, rtol=0, atol=1e-10)


def test_funbat_categorical_mode_has_derivative_zero_and_nu_half_a_one_sided_one_at_training_coordinates():
    g = torch.Generator().manual_seed(13)
    Xf = torch.rand(60, 2, dtype=DT, generator=g)
    Xf[:, 1] = torch.randint(0, 4, (60,), generator=g).to(DT)
    yf = torch.sin(3 * Xf[:, 0]) + 0.3 * Xf[:, 1] + 0.05 * torch.randn(60, dtype=DT, generator=g)
    model = fit_quietly(_Data(Xf, yf), max_sweeps=3, categorical=1).as_botorch()
    X = torch.tensor([[0.2, 0.0], [0.5, 2.0], [0.7, 3.0], [0.4, 1.5]], dtype=DT)  # three labels, one unseen
    Xg = X.clone().requires_grad_(True)
    mean = model.posterior(Xg).mean
    mean.sum().backward()
    assert torch.equal(Xg.grad[:, 1], torch.zeros(4, dtype=DT))
    assert float(mean[:3].detach().std()) > 0.1  # the labels differ: the zero is not that of a constant
    # off a label the posterior is the unseen label's prior, constant in the label coordinate: 0 is the derivative
    with torch.no_grad():
        shifted = model.posterior(X + torch.tensor([0.0, 0.25], dtype=DT)).mean[3]
    torch.testing.assert_close(shifted, mean[3].detach(), rtol=0, atol=1e-14)
    # the continuous coordinate is differentiated correctly
    err, _ = fd_error(lambda Z: _weighted(model.posterior(Z).mean, 1)[None], X[:3])
    assert float(err.max()) < RTOL

    # nu = 0.5: the posterior mean has kinks at training coordinates; autograd gives one of the one-sided derivatives
    Xt, yt = _funbat_data()
    ou = fit_quietly(_Data(Xt, yt), max_sweeps=3, nu=0.5).as_botorch()
    x0 = Xt[:1].clone()
    xg = x0.clone().requires_grad_(True)
    ou.posterior(xg).mean.sum().backward()
    e = torch.tensor([[1e-7, 0.0]], dtype=DT)
    with torch.no_grad():
        f0 = ou.posterior(x0).mean.sum()
        right = float((ou.posterior(x0 + e).mean.sum() - f0) / 1e-7)
        left = float((f0 - ou.posterior(x0 - e).mean.sum()) / 1e-7)
    assert abs(right - left) > 0.1 * max(abs(right), abs(left))  # a kink
    grad = float(xg.grad[0, 0])
    assert min(abs(grad - right), abs(grad - left)) < 1e-4 * max(abs(right), abs(left))

r"""Tests of a batched :class:`~gpgeom.botorch.exact_gp.ExactGPModel` (``batch_shape x n x d`` data) against
BoTorch's ``SingleTaskGP`` built with the same data, modules and transforms: test inputs of every batch shape
that broadcasts with the model's, one output and several."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from botorch.models import SingleTaskGP
from botorch.models.transforms.outcome import Log

import gpgeom.botorch.exact_predict as predict_module
from gpgeom.botorch.exact_gp import ExactGPModel
from gpgeom.engine.chunking import memory_budget

DT = torch.float64


def _model_and_truth(batch, m, n=7, log=False):
    r"""A ``batch x n x 2`` model with ``m`` outputs and random hyperparameters (one set per batch member and
    output) and BoTorch's ``SingleTaskGP`` with copies of its kernel, mean, likelihood and transforms."""
    gen = torch.Generator().manual_seed(0)
    X = torch.rand(*batch, n, 2, dtype=DT, generator=gen)
    Y = torch.randn(*batch, n, m, dtype=DT, generator=gen)
    model = ExactGPModel(X, Y.exp() if log else Y, outcome_transform=Log() if log else "default")
    with torch.no_grad():
        kernel = model.covar_module
        ls, os = kernel.base_kernel.lengthscale, kernel.outputscale
        kernel.base_kernel.lengthscale = 0.2 + torch.rand(ls.shape, dtype=DT, generator=gen)
        kernel.outputscale = 0.5 + torch.rand(os.shape, dtype=DT, generator=gen)
        noise = model.likelihood.noise
        model.likelihood.noise = 0.01 + 0.1 * torch.rand(noise.shape, dtype=DT, generator=gen)
        const = model.mean_module.constant
        const.copy_(torch.randn(const.shape, dtype=DT, generator=gen))
    model.eval()
    modules = {k: copy.deepcopy(getattr(model, k)) for k in ("likelihood", "covar_module", "mean_module")}
    transforms = {k: copy.deepcopy(getattr(model, k)) for k in ("input_transform", "outcome_transform")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BoTorch's scaling warnings about the random data
        truth = SingleTaskGP(X, Y.exp() if log else Y, **modules, **transforms).eval()
    return model, truth


def _output(post, j, q, m):
    r"""Mean ``... x q x 1`` and covariance ``... x q x q`` of output ``j`` of a BoTorch posterior over ``m``
    outputs (``SingleTaskGP`` cannot select one output of a model built with custom modules)."""
    if m == 1:
        return post.mean, post.distribution.covariance_matrix
    dist = post.distribution
    idx = torch.arange(q) * m + j if dist._interleaved else j * q + torch.arange(q)
    return post.mean[..., [j]], dist.covariance_matrix[..., idx, :][..., idx]


@pytest.mark.parametrize("m", [1, 2])
@pytest.mark.parametrize("test_batch", [(), (3,), (2, 3), (1, 3), (4, 1, 1)])
def test_batched_posterior_and_predict_equal_single_task_gp(m, test_batch):
    r"""A ``2 x 3`` batch of models: ``posterior`` (also with ``observation_noise`` and ``output_indices``) and
    ``predict`` at test inputs of batch ``test_batch`` equal ``SingleTaskGP``'s posterior to 1e-10 (about 1e-14
    measured). With ``m = 2`` and a test batch ``(3,)``, ``(2, 3)`` or ``(1, 3)`` they raised "Attempting to
    broadcast a dimension of length 2": the memory estimate of a chunk added a second output dimension to the
    test inputs that BoTorch had already given one."""
    model, truth = _model_and_truth((2, 3), m)
    q = 4
    Xt = torch.rand(*test_batch, q, 2, dtype=DT, generator=torch.Generator().manual_seed(1))
    out_batch = torch.broadcast_shapes(test_batch, (2, 3))
    for noise in (False, True):
        got, want = model.posterior(Xt, observation_noise=noise), truth.posterior(Xt, observation_noise=noise)
        assert got.mean.shape == out_batch + (q, m)
        torch.testing.assert_close(got.mean, want.mean, rtol=0, atol=1e-10)
        got_cov, want_cov = got.distribution.covariance_matrix, want.distribution.covariance_matrix
        torch.testing.assert_close(got_cov, want_cov, rtol=0, atol=1e-10)
    want = truth.posterior(Xt)
    got = model.posterior(Xt, output_indices=[m - 1])
    want_mean, want_cov = _output(want, m - 1, q, m)
    torch.testing.assert_close(got.mean, want_mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(got.distribution.covariance_matrix, want_cov, rtol=0, atol=1e-10)
    mean, std = model.predict(Xt, return_std=True)
    torch.testing.assert_close(mean, want.mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(std.square(), want.variance, rtol=0, atol=1e-10)


def test_batched_predict_through_the_posterior_equals_single_task_gp():
    r"""A non-linear outcome transform (``Log``) sends ``predict`` through ``posterior``: for a ``2 x 3`` batch
    with two outputs and test inputs of the model's batch it raised as ``posterior`` did; now it equals
    ``SingleTaskGP``'s log-normal moments."""
    model, truth = _model_and_truth((2, 3), 2, log=True)
    Xt = torch.rand(2, 3, 4, 2, dtype=DT, generator=torch.Generator().manual_seed(1))
    mean, std = model.predict(Xt, return_std=True)
    want = truth.posterior(Xt)
    torch.testing.assert_close(mean, want.mean, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(std.square(), want.variance, rtol=1e-10, atol=1e-10)


def test_posterior_chunks_of_a_batched_multi_output_model_fill_the_memory_budget(monkeypatch):
    r"""Model batch ``(3,)``, ``m = 2``, ``n = 25`` and test inputs of batch ``(3,)``: a test point of the joint
    posterior costs three kernel rows of ``n`` float64 elements for each of the ``3 x 2`` members, so a budget of
    seven such points gives chunks of seven points (it gave chunks of two: a second output dimension made the
    estimate ``3 x 3 x 2`` members, three times too many)."""
    model, _ = _model_and_truth((3,), 2, n=25)
    Xt = torch.rand(3, 40, 2, dtype=DT, generator=torch.Generator().manual_seed(1))
    whole = model.posterior(Xt)  # also computes (and keeps) the training factor outside the small budget
    per_point = 3 * 3 * 2 * 25 * 8
    rows = []
    real = predict_module.stationary_kernel_matrix

    def record(kernel, x1, x2=None):  # the cross-covariance blocks: test rows against the n = 25 training points
        if x2 is not None and x2.shape[-2] == 25:
            rows.append(x1.shape[-2])
        return real(kernel, x1, x2)

    monkeypatch.setattr(predict_module, "stationary_kernel_matrix", record)
    with memory_budget(per_point * 7):
        post = model.posterior(Xt)
    assert max(rows) == 7 and sum(rows) == 40
    torch.testing.assert_close(post.mean, whole.mean, rtol=0, atol=1e-12)
    cov, whole_cov = post.distribution.covariance_matrix, whole.distribution.covariance_matrix
    torch.testing.assert_close(cov, whole_cov, rtol=0, atol=1e-12)

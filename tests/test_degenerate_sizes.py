r"""Degenerate sizes at the public prediction entry points: an empty query (``0 x d``, ``b x 0 x d``, ``0 x q x d``,
no index, no point) gives correctly shaped empty results of the model's dtype, or a ValueError naming the argument
where GPyTorch cannot hold the result; one query point gives what the same point gives inside a larger query (the
larger query is the truth)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from gpgeom.botorch.exact_gp import ExactGPModel
from gpgeom.botorch.model_list import SurrogateList
from gpgeom.datasets.tensors import make_synthetic_tensor
from gpgeom.datasets.vector_fields import sphere_vector_field
from gpgeom.errors import ConvergenceWarning
from gpgeom.models.funbat import FunBaT, FunBaTCP
from gpgeom.models.funbat.inference import kron_vecs
from gpgeom.models.rvgp.model import RVGP

DT = torch.float64


@pytest.fixture(scope="module")
def funbat_data():
    return make_synthetic_tensor(200, 50, n_modes=2, rank=2, n_coords=20, noise_sd=0.05, seed=8)


@pytest.fixture(scope="module")
def rvgp_fit():
    s = sphere_vector_field(300, "mixed")
    tr = np.arange(0, 300, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return s, RVGP(s.points, n_eigenpairs=16, dim=2).fit(tr, s.vectors[tr], max_iter=5)


def test_kron_vecs_of_an_empty_batch():
    r"""The row-wise Kronecker product reshaped with ``-1``: a ``0 x 3 x R`` batch failed ("cannot reshape tensor of
    0 elements ... ambiguous")."""
    a, b = torch.randn(4, 3, 2, dtype=DT), torch.randn(4, 3, 5, dtype=DT)
    full = kron_vecs([a, b])
    assert full.shape == (4, 3, 10)
    torch.testing.assert_close(full[1, 2], torch.kron(a[1, 2], b[1, 2]), rtol=0, atol=0)
    assert kron_vecs([a[:0], b[:0]]).shape == (0, 3, 10)


@pytest.mark.parametrize("cls", [FunBaT, FunBaTCP])
def test_funbat_botorch_posterior_of_empty_batches(funbat_data, cls):
    r"""``FunBaT.as_botorch().posterior`` at ``0 x q x d`` raised a RuntimeError from ``kron_vecs`` (FunBaTCP did
    not); ``q = 0`` and one point were right."""
    d = funbat_data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = cls(2, max_sweeps=3).fit(d.X_train, d.y_train)
    bm = m.as_botorch()
    X = d.X_test[:3].to(DT)
    for shape in [(0, 3, 2), (2, 0, 2), (0, 2)]:
        p = bm.posterior(torch.zeros(*shape, dtype=DT))
        assert p.mean.shape == (*shape[:-1], 1) and p.variance.shape == p.mean.shape and p.mean.dtype == DT
    big = bm.posterior(X[None])
    one = bm.posterior(X[None, 1:2])
    torch.testing.assert_close(one.mean[0, 0], big.mean[0, 1], rtol=0, atol=1e-12)
    torch.testing.assert_close(one.variance[0, 0], big.variance[0, 1], rtol=0, atol=1e-12)
    mu, sd = m.predict(torch.zeros(0, 3, 2, dtype=DT), return_std=True)
    assert mu.shape == sd.shape == (0, 3, 1)


@pytest.mark.parametrize("cls", [FunBaT, FunBaTCP])
def test_funbat_botorch_conditioned_on_no_observation_is_the_model(funbat_data, cls):
    r"""Conditioning the adapter on ``0 x d`` observations changes nothing (the truth: the unconditioned posterior,
    and ExactGPModel's behaviour): its posterior raised torch's "cannot reshape tensor of 0 elements into shape
    [-1, 0, 2]" from the joint covariance of the (empty) conditioning set."""
    d = funbat_data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        bm = cls(2, max_sweeps=3).fit(d.X_train, d.y_train).as_botorch()
    X = d.X_test[:4].to(DT)
    cond = bm.condition_on_observations(torch.zeros(0, 2, dtype=DT), torch.zeros(0, 1, dtype=DT)).posterior(X)
    ref = bm.posterior(X)
    torch.testing.assert_close(cond.mean, ref.mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(cond.mvn.covariance_matrix, ref.mvn.covariance_matrix, rtol=0, atol=1e-12)


def test_rvgp_posterior_of_an_empty_batch_and_predict_at_no_point(rvgp_fit):
    r"""RVGP's BoTorch posterior at ``0 x q x 1`` raised "cannot reshape tensor of 0 elements" from the ambient
    algebra's reshapes; now a ValueError naming ``X`` (GPyTorch's multi-task Gaussian cannot hold an empty batch).
    ``predict_at`` of ``(0, D)`` points raised a ValueError while ``predict([])`` returned the empty results: now
    the same empty results."""
    s, gp = rvgp_fit
    with pytest.raises(ValueError, match=r"`X` has an empty batch dimension \(shape \(0, 2, 1\)\)"):
        gp.posterior(torch.zeros(0, 2, 1, dtype=DT))
    p = gp.posterior(torch.zeros(2, 0, 1, dtype=DT))  # an empty q is fine
    assert p.mean.shape == (2, 0, 3)
    for points in (np.zeros((0, 3)), torch.zeros(0, 3, dtype=DT)):
        mean = gp.predict_at(points)
        mu, sd = gp.predict_at(points, return_std=True)
        mc, cov = gp.predict_at(points, return_cov=True)
        assert mean.shape == mu.shape == sd.shape == mc.shape == (0, 3) and cov.shape == (0, 3, 3)
        assert mean.dtype == gp.predict([5]).dtype
    # one point against the same point among others: the larger query is the truth
    P = s.points[[3, 5, 7]] + 0.01
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m3, s3 = gp.predict_at(P, return_std=True)
        m1, s1 = gp.predict_at(P[1:2], return_std=True)
    # the extension solves a small system per point, batched or not: its rounding (seen up to 1.8e-12 on O(1) means,
    # varying with the eigensolver's start) differs between the two queries; a wrong row would be off by O(0.1)
    torch.testing.assert_close(m1[0], m3[1], rtol=0, atol=1e-10)
    # the variance is a difference of O(1) terms (prior minus explained): rounding of 1e-16 of them, not of the std
    torch.testing.assert_close(s1[0].square(), s3[1].square(), rtol=0, atol=1e-11)


@pytest.mark.parametrize("kw", [{"max_memory": "bogus"}, {"max_memory": -1}, {"chunk_size": 0}, {"chunk_size": 1.5}])
def test_rvgp_predictions_at_no_point_check_their_arguments_as_at_one(rvgp_fit, kw):
    r"""A bad ``max_memory`` or ``chunk_size`` raised at one point but, at no point, ``predict_at`` returned the
    empty results (``max_memory``: ``predict([])`` too): now the same error, naming the argument, whatever the
    number of points (the one-point error is the truth)."""
    s, gp = rvgp_fit
    name = next(iter(kw))
    with pytest.raises((ValueError, TypeError), match=f"`{name}`") as one, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gp.predict_at(s.points[:1] + 0.01, **kw)
    for call in (lambda: gp.predict_at(np.zeros((0, 3)), **kw), lambda: gp.predict([], **kw)):
        with pytest.raises(type(one.value)) as none:
            call()
        assert str(none.value) == str(one.value)


def test_multi_output_posteriors_of_an_empty_batch_are_named():
    r"""``ExactGPModel`` with two outputs (and a ``SurrogateList``) at ``0 x q x d`` raised GPyTorch's "cannot
    reshape tensor of 0 elements into shape [0, -1]" (as BoTorch's ``SingleTaskGP`` does); now a ValueError naming
    ``X``. One output, ``q = 0`` and ``b x 0 x d`` give the empty posterior."""
    X = torch.rand(12, 2, dtype=DT)
    Y = torch.sin(3 * X.sum(-1, keepdim=True))
    two = ExactGPModel(X, torch.cat([Y, Y.cos()], -1))
    one = ExactGPModel(X, Y)
    lst = SurrogateList(one, ExactGPModel(X, Y.cos()))
    for model in (two, lst):
        for kw in ({}, {"output_indices": [1, 0]}, {"observation_noise": True}):
            with pytest.raises(ValueError, match=r"`X` has an empty batch dimension \(shape \(0, 3, 2\)\)"):
                model.posterior(torch.zeros(0, 3, 2, dtype=DT), **kw)
        p = model.posterior(torch.zeros(3, 0, 2, dtype=DT))
        assert p.mean.shape == (3, 0, 2) and p.variance.shape == (3, 0, 2)
        p0 = model.posterior(torch.zeros(0, 2, dtype=DT))
        assert p0.mean.shape == (0, 2)
    with pytest.raises(ValueError, match=r"`X` has an empty batch dimension"):  # selected from the joint of both
        two.posterior(torch.zeros(0, 3, 2, dtype=DT), output_indices=[1])
    assert lst.posterior(torch.zeros(0, 3, 2, dtype=DT), output_indices=[1]).mean.shape == (0, 3, 1)  # one member
    p = one.posterior(torch.zeros(0, 3, 2, dtype=DT))
    assert p.mean.shape == (0, 3, 1) and p.distribution.covariance_matrix.shape == (0, 3, 3)
    Z = torch.rand(5, 2, dtype=DT)
    big, single = two.posterior(Z), two.posterior(Z[2:3])
    torch.testing.assert_close(single.mean[0], big.mean[2], rtol=0, atol=1e-12)
    torch.testing.assert_close(single.variance[0], big.variance[2], rtol=0, atol=1e-12)

r"""The shared adapters of gpgeom.botorch: GaussianSurrogate (Bayes' rule on a Gaussian predictive) and
SurrogateList (members with several outputs), each against an independent dense computation."""

from __future__ import annotations

import math

import pytest
import torch

from gpgeom.botorch import ExactGPModel, GaussianSurrogate, SurrogateList, check_botorch_model

DT = torch.float64
UNIT2 = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=DT)


def rbf(A, B, ls=0.3):
    return torch.exp(-0.5 * torch.cdist(A, B).square() / ls**2)


class DenseCoregionalGP(GaussianSurrogate):
    r"""An exact two-output GP posterior written densely (intrinsic coregionalisation, k((x,a),(x',b)) =
    B[a, b] rbf(x, x')), exposed only through its base mean and covariance: the shared code must turn it into a
    correct BoTorch model."""

    def __init__(self, X, Y, noise=0.01, B=None):
        super().__init__()
        self.X, self.Y, self.noise = X, Y, noise
        self.B = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=DT) if B is None else B
        self._base_num_outputs = 2
        n = X.shape[0]
        K = torch.kron(rbf(X, X), self.B) + noise * torch.eye(2 * n, dtype=DT)
        self.L = torch.linalg.cholesky(K)
        self.alpha = torch.cholesky_solve(Y.reshape(-1, 1), self.L)

    def _prior(self, A, B):
        return (
            torch.kron(rbf(A, B), self.B)
            if A.dim() == 2
            else torch.stack(
                [
                    torch.kron(rbf(a, b), self.B)
                    for a, b in zip(A.reshape(-1, *A.shape[-2:]), B.reshape(-1, *B.shape[-2:]))
                ]
            ).reshape(*A.shape[:-2], A.shape[-2] * 2, B.shape[-2] * 2)
        )

    def _base_mean(self, X):
        return (self._prior(X, self.X.expand(*X.shape[:-2], *self.X.shape)) @ self.alpha).reshape(*X.shape[:-1], 2)

    def _base_covariance(self, X1, X2):
        batch = torch.broadcast_shapes(X1.shape[:-2], X2.shape[:-2])
        X1, X2 = X1.expand(*batch, *X1.shape[-2:]), X2.expand(*batch, *X2.shape[-2:])
        Xtr = self.X.expand(*batch, *self.X.shape)
        V1 = torch.linalg.solve_triangular(self.L, self._prior(Xtr, X1), upper=False)
        V2 = torch.linalg.solve_triangular(self.L, self._prior(Xtr, X2), upper=False)
        return self._prior(X1, X2) - V1.mT @ V2

    def _noise_variance(self, X):
        return torch.full((*X.shape[:-1], 2), self.noise, dtype=DT)


def coregional_data(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, 2, dtype=DT, generator=g)
    Y = torch.stack([torch.sin(4 * X[:, 0]), torch.sin(4 * X[:, 0]) + X[:, 1]], -1)
    return X, Y + 0.1 * torch.randn(n, 2, dtype=DT, generator=g)


def test_gaussian_surrogate_conditioning_equals_the_dense_gp_on_the_union():
    X, Y = coregional_data()
    model = DenseCoregionalGP(X, Y)
    Xt, Yt = coregional_data(30, seed=1)
    report = check_botorch_model(
        model,
        bounds=UNIT2,
        predict_fn=lambda Z: model.predict(Z, return_std=True),
        refit=lambda Xn, Yn: DenseCoregionalGP(torch.cat([X, Xn]), torch.cat([Y, Yn])),
        train_X=X, train_Y=Y, test_X=Xt, test_Y=Yt,
    )  # fmt: skip
    assert report["skipped"] == {}
    assert report["measured"]["refit_error"] < 1e-9 and report["measured"]["condition_error"] < 1e-9
    # conditioning twice = conditioning once on everything = the dense GP on the union
    Xa, Ya = coregional_data(3, seed=2)
    Xb, Yb = coregional_data(2, seed=3)
    twice = model.condition_on_observations(Xa, Ya).condition_on_observations(Xb, Yb)
    union = DenseCoregionalGP(torch.cat([X, Xa, Xb]), torch.cat([Y, Ya, Yb]))
    p1, p2 = twice.posterior(Xt), union.posterior(Xt)
    torch.testing.assert_close(p1.mean, p2.mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(p1.distribution.covariance_matrix, p2.distribution.covariance_matrix, rtol=0, atol=1e-10)
    # a subset model conditioned on one output only: the other output still learns through the correlation
    sub = model.subset_output([1])
    c = sub.condition_on_observations(Xa, Ya[:, 1:])
    dense = c.posterior(Xt).mean
    # truth: the coregional GP conditioned on (output 1 at Xa) written out here
    K = torch.kron(rbf(X, X), model.B) + 0.01 * torch.eye(24, dtype=DT)
    rows = torch.arange(24)
    extra = torch.kron(rbf(Xa, X), model.B)[1::2]  # output 1 at Xa vs all training entries
    Kaa = torch.kron(rbf(Xa, Xa), model.B)[1::2, 1::2] + 0.01 * torch.eye(3, dtype=DT)
    full = torch.cat([torch.cat([K, extra.T], 1), torch.cat([extra, Kaa], 1)], 0)
    y = torch.cat([Y.reshape(-1), Ya[:, 1]])
    Kt = torch.cat([torch.kron(rbf(Xt, X), model.B)[1::2], torch.kron(rbf(Xt, Xa), model.B)[1::2, 1::2]], 1)
    truth = Kt @ torch.linalg.solve(full, y)
    assert rows.numel() == 24
    torch.testing.assert_close(dense[:, 0], truth, rtol=0, atol=1e-9)


def test_gaussian_surrogate_gradients_flow_to_inputs():
    X, Y = coregional_data()
    model = DenseCoregionalGP(X, Y).condition_on_observations(*coregional_data(2, seed=5))
    Xq = torch.rand(3, 2, dtype=DT, requires_grad=True)
    model.posterior(Xq).mean.sum().backward()
    assert Xq.grad is not None and torch.isfinite(Xq.grad).all() and Xq.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="`Y` must be `batch x 2 x 2`"):
        model.condition_on_observations(torch.rand(2, 2, dtype=DT), torch.rand(2, 3, dtype=DT))
    Y_bad = torch.rand(2, 2, dtype=DT)
    Y_bad[0, 1], Y_bad[1, 0] = float("nan"), float("inf")
    with pytest.raises(ValueError, match="`Y` must be finite, got 2 NaN or infinite value"):
        model.condition_on_observations(torch.rand(2, 2, dtype=DT), Y_bad)


def test_surrogate_list_with_multi_output_members_conditions_and_fantasizes():
    g = torch.Generator().manual_seed(0)
    X = torch.rand(20, 2, dtype=DT, generator=g)
    Y = torch.stack([torch.sin(5 * X[:, 0]), torch.cos(3 * X[:, 1]), X.sum(-1)], -1)
    Y = Y + 0.05 * torch.randn(20, 3, dtype=DT, generator=g)
    a = ExactGPModel(X, Y[:, :2], shared_hyperparameters=True).fit(max_iter=50)
    b = ExactGPModel(X, Y[:, 2:]).fit(max_iter=50)
    model = SurrogateList(a, b)
    assert model.output_groups == [(0, 2), (2, 3)]
    Xt = torch.rand(30, 2, dtype=DT, generator=g)
    Yt = torch.stack([torch.sin(5 * Xt[:, 0]), torch.cos(3 * Xt[:, 1]), Xt.sum(-1)], -1)

    def refit(Xn, Yn):
        return SurrogateList(a.rebuild_with(Xn, Yn[..., :2]), b.rebuild_with(Xn, Yn[..., 2:]))

    report = check_botorch_model(
        model, bounds=UNIT2, refit=refit, predict_fn=lambda Z: model.predict(Z, return_std=True),
        train_X=X, train_Y=Y, test_X=Xt, test_Y=Yt + 0.05 * torch.randn(30, 3, dtype=DT, generator=g),
    )  # fmt: skip
    assert "fantasize = conditioning on samples" in report["checks"]
    assert report["measured"]["refit_error"] < 1e-8
    assert math.isfinite(report["measured"]["z_rms"])


def test_gaussian_surrogate_predict_chunks_from_the_memory_budget(monkeypatch):
    X, Y = coregional_data()
    model = DenseCoregionalGP(X, Y).condition_on_observations(*coregional_data(3, seed=4))
    Xt = torch.rand(2, 25, 2, dtype=DT)
    post = model.posterior(Xt)
    sizes = []
    real = GaussianSurrogate._conditioned
    monkeypatch.setattr(
        GaussianSurrogate, "_conditioned", lambda s, Z, **k: sizes.append(Z.shape[-2]) or real(s, Z, **k)
    )
    # unknown base cost: at most DEFAULT_CHUNK points, fewer if the conditioning rows (4 m^2 n_c per point) need it
    mean, std = model.predict(Xt, return_std=True)
    assert sizes == [25]
    torch.testing.assert_close(mean, post.mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(std, post.variance.sqrt(), rtol=0, atol=1e-12)
    per_point = 4 * 2 * 2 * 3 * 2 * 8  # m = 2 outputs, n_c = 3 conditioning points, batch 2, float64
    sizes.clear()
    chunked = model.predict(Xt, return_std=True, max_memory=6 * per_point)
    assert sizes == [6, 6, 6, 6, 1]
    for a, b in zip(chunked, (mean, std)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # a subclass that states the cost of a point of its base
    monkeypatch.setattr(DenseCoregionalGP, "_base_bytes_per_point", lambda s, Z: 3 * per_point, raising=False)
    sizes.clear()
    torch.testing.assert_close(model.predict(Xt, max_memory=8 * per_point), mean, rtol=0, atol=1e-12)
    assert sizes == [2] * 12 + [1]


def test_surrogate_list_predict_passes_the_budget_and_accepts_plain_botorch_members(monkeypatch):
    from botorch.models import SingleTaskGP

    g = torch.Generator().manual_seed(1)
    X = torch.rand(15, 2, dtype=DT, generator=g)
    Y = torch.stack([torch.sin(5 * X[:, 0]), X.sum(-1)], -1)
    a, b = ExactGPModel(X, Y[:, :1]), SingleTaskGP(X, Y[:, 1:])  # b has no `predict`: its posterior, in chunks
    model = SurrogateList(a, b)
    Xt = torch.rand(9, 2, dtype=DT, generator=g)
    post = model.posterior(Xt)
    budgets = []
    real = ExactGPModel.predict
    monkeypatch.setattr(ExactGPModel, "predict", lambda s, Z, **k: budgets.append(k) or real(s, Z, **k))
    mean, std = model.predict(Xt, return_std=True, max_memory="1MB", chunk_size=4)
    assert budgets == [dict(return_std=True, observation_noise=False, chunk_size=4, max_memory=10**6)]
    torch.testing.assert_close(mean, post.mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(std, post.variance.sqrt(), rtol=0, atol=1e-10)

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
    # the default input check (a subclass that keeps it): a NaN or integer X is refused by name (NaN posteriors)
    X_bad = torch.rand(2, 3, 2, dtype=DT)
    X_bad[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"`X` contains 1 NaN or infinite value"):
        model.posterior(X_bad)
    with pytest.raises(ValueError, match=r"`X` contains 1 NaN or infinite value"):
        model.condition_on_observations(X_bad[1], torch.zeros(3, 2, dtype=DT))
    with pytest.raises(TypeError, match=r"`X` must be a floating-point tensor, got dtype torch.int64"):
        model.posterior(torch.zeros(3, 2, dtype=torch.long))
    noise_bad = torch.full((2, 2), 0.01, dtype=DT)
    noise_bad[1, 1] = float("nan")  # it failed later, in the Cholesky of the next posterior (NanError)
    with pytest.raises(ValueError, match=r"`noise` must be a tensor of finite non-negative .* 1 NaN or infinite"):
        model.condition_on_observations(torch.rand(2, 2, dtype=DT), torch.zeros(2, 2, dtype=DT), noise=noise_bad)


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


def three_output_data(n=15, seed=2):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, 2, dtype=DT, generator=g)
    Y = torch.stack([torch.sin(5 * X[:, 0]), 3 + torch.cos(3 * X[:, 1]), 10 * X.sum(-1)], -1)
    return X, Y + 0.05 * torch.randn(n, 3, dtype=DT, generator=g)


def rows_of(mean, cov, outputs):
    r"""The joint moments of ``outputs`` (in that order) taken by hand from point-major ``mean``, ``cov``."""
    q, m = mean.shape[-2], mean.shape[-1]
    rows = [i * m + a for i in range(q) for a in outputs]
    return mean[..., outputs], cov[..., rows, :][..., rows]


@pytest.mark.parametrize("kind", ["exact", "list"])
def test_output_indices_keep_the_requested_order_and_the_noise_columns(kind):
    r"""``output_indices`` in any order equals the rows of the full joint (and ``subset_output``): the outputs have
    different Standardize statistics (means 0, 3, 10), which BoTorch's batched posterior applied in the order 0, 1,
    2 (means off by 10.4 for ``[0, 2, 1]``; ``[2, 0]`` raised), and the list returned its members' outputs in member
    order (off by 10.9), in ``posterior`` and in ``subset_output``."""
    from gpgeom.botorch import joint_moments

    X, Y = three_output_data()
    if kind == "exact":
        model = ExactGPModel(X, Y).fit(progress=False, max_iter=30)
    else:
        a = ExactGPModel(X, Y[:, :2], shared_hyperparameters=True).fit(progress=False, max_iter=30)
        model = SurrogateList(a, ExactGPModel(X, Y[:, 2:]).fit(progress=False, max_iter=30))
    Xt = torch.rand(2, 4, 2, dtype=DT, generator=torch.Generator().manual_seed(3))
    noise = torch.rand(2, 4, 3, dtype=DT, generator=torch.Generator().manual_seed(4))  # a column per output
    mean, cov = joint_moments(model.posterior(Xt))
    nmean, ncov = joint_moments(model.posterior(Xt, observation_noise=noise))
    for outputs in ([0, 2, 1], [1, 0], [2, 0], [2]):
        got = joint_moments(model.posterior(Xt, output_indices=outputs))
        for g, w in zip(got, rows_of(mean, cov, outputs)):
            torch.testing.assert_close(g, w, rtol=0, atol=1e-12)
        if kind == "list" and outputs == [0, 2, 1]:  # member 0's outputs in two runs: not a list of members
            with pytest.raises(
                ValueError, match=r"one run of consecutive entries .* got \[0, 2, 1\]: outputs \[0, 1\]"
            ):
                model.subset_output(outputs)
        else:  # a separate model of those outputs (BoTorch's list kept member order: [1, 0] gave outputs 0, 1)
            sub = joint_moments(model.subset_output(outputs).posterior(Xt))
            for g, w in zip(got, sub):
                torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10)
        noisy = joint_moments(model.posterior(Xt, output_indices=outputs, observation_noise=noise))
        for g, w in zip(noisy, rows_of(nmean, ncov, outputs)):
            torch.testing.assert_close(g, w, rtol=0, atol=1e-12)


def test_gaussian_surrogate_noise_tensor_has_a_column_per_output():
    r"""A ``batch x q x m`` noise tensor adds column ``a`` to output ``a`` whatever ``output_indices`` (BoTorch's
    convention); it used to add the columns in the order of ``output_indices`` (output 1 got output 0's noise)."""
    X, Y = coregional_data()
    model = DenseCoregionalGP(X, Y)
    Xt = torch.rand(2, 3, 2, dtype=DT, generator=torch.Generator().manual_seed(1))
    noise = torch.tensor([0.5, 0.01], dtype=DT).expand(2, 3, 2)
    for outputs in ([1, 0], [1], [0, 1]):
        base = model.posterior(Xt, output_indices=outputs).variance
        added = model.posterior(Xt, output_indices=outputs, observation_noise=noise).variance - base
        torch.testing.assert_close(added, noise[..., outputs], rtol=0, atol=1e-12)
    with pytest.raises(
        ValueError, match=r"`observation_noise` must be a `batch x q x 2` tensor .* got shape \(2, 3, 3\)"
    ):
        model.posterior(Xt, observation_noise=torch.ones(2, 3, 3, dtype=DT))


def test_empty_q_gives_the_empty_posterior():
    r"""``q = 0`` (``batch x 0 x d``): an empty posterior of shape ``broadcast(batch, batch_shape) x 0 x m`` for
    every adapter (FunBaT's base and the list's assembly used to fail on it), with noise, samples and
    ``output_indices``; ``predict`` of no point likewise (``GaussianSurrogate.predict`` failed in ``torch.cat``)."""
    import warnings

    from gpgeom.models.funbat import FunBaT

    X, Y = coregional_data()
    g = torch.Generator().manual_seed(0)
    Xf = torch.rand(40, 2, dtype=DT, generator=g)
    yf = torch.sin(3 * Xf[:, 0]) * Xf[:, 1] + 0.05 * torch.randn(40, dtype=DT, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        funbat = FunBaT(2, max_sweeps=3).fit(Xf, yf).as_botorch()
    dense = DenseCoregionalGP(X, Y)
    models = {
        "dense": dense,
        "conditioned": dense.condition_on_observations(X[:2].expand(3, 2, 2), Y[:2].expand(3, 2, 2)),
        "funbat": funbat,
        "list": SurrogateList(ExactGPModel(X, Y), ExactGPModel(X, Y[:, :1])),
    }
    for name, model in models.items():
        m = model.num_outputs
        for batch in ((), (3,), (2, 3)):
            Xe = torch.zeros(*batch, 0, 2, dtype=DT)
            out = torch.broadcast_shapes(torch.Size(batch), model.batch_shape)
            post = model.posterior(Xe, observation_noise=True)
            assert post.mean.shape == (*out, 0, m) and post.variance.shape == (*out, 0, m), name
            assert post.rsample(torch.Size([2])).shape == (2, *out, 0, m), name
            assert model.posterior(Xe, output_indices=[0]).mean.shape == (*out, 0, 1), name
            mean, std = model.predict(Xe, return_std=True)  # no chunk to compute: used to fail in torch.cat
            assert mean.shape == std.shape == (*out, 0, m) and mean.dtype == DT, name


def test_exact_gp_rejects_integer_inputs():
    r"""An integer ``X`` is refused by name (it gave a NaN posterior mean); ``X`` of another floating dtype works."""
    X, Y = coregional_data()
    model = ExactGPModel(X, Y)
    Xt = torch.zeros(2, 3, 2, dtype=DT)
    with pytest.raises(TypeError, match=r"`X` must be a floating-point tensor, got dtype torch.int64"):
        model.posterior(Xt.long())
    with pytest.raises(TypeError, match=r"`X` must be a floating-point tensor, got dtype torch.int64"):
        model.condition_on_observations(Xt[0].long(), Y[:3])
    torch.testing.assert_close(model.posterior(Xt.float()).mean, model.posterior(Xt).mean, rtol=0, atol=1e-6)


def test_exact_gp_conditioning_with_given_noise():
    r"""``condition_on_observations(X, Y, noise=...)``: on a fixed-noise model, Bayes' rule on the model's own joint
    with that noise (in the outcome-transformed units, BoTorch's convention); on a model with an inferred noise level
    a ``ValueError`` (GPyTorch's update used the likelihood's noise for the mean and the given one for the covariance:
    a mean off by 0.03-0.2 from the conditioning with the given noise in the audit's probes)."""
    from gpgeom.botorch import joint_moments

    X, Y = coregional_data()
    g = torch.Generator().manual_seed(0)
    Xn, Yn, Xt = torch.rand(3, 2, dtype=DT, generator=g), torch.randn(3, 2, dtype=DT, generator=g), X[:4] + 0.01
    noise = torch.rand(3, 2, dtype=DT, generator=g) * 0.1
    fixed = ExactGPModel(X, Y, torch.full_like(Y, 0.003))
    got = joint_moments(fixed.condition_on_observations(Xn, Yn, noise=noise).posterior(Xt))
    mu, C = joint_moments(fixed.posterior(torch.cat([Xn, Xt])))
    scale = fixed.outcome_transform.stdvs.square().reshape(-1)
    for a in range(2):  # the outputs are independent: the Schur complement of each output's joint
        r = torch.arange(7) * 2 + a
        Ca = C[r][:, r]
        K = Ca[:3, :3] + torch.diag(noise[:, a] * scale[a])
        mean = mu[3:, a] + Ca[3:, :3] @ torch.linalg.solve(K, Yn[:, a] - mu[:3, a])
        cov = Ca[3:, 3:] - Ca[3:, :3] @ torch.linalg.solve(K, Ca[:3, 3:])
        torch.testing.assert_close(got[0][:, a], mean, rtol=0, atol=1e-10)
        torch.testing.assert_close(got[1][r[:4]][:, r[:4]], cov, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"`noise` can be given only for a fixed-noise model .* GaussianLikelihood"):
        ExactGPModel(X, Y).condition_on_observations(Xn, Yn, noise=noise)

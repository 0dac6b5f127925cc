r"""Tests of gpgeom.botorch.check_botorch_model: it passes on conforming models and catches broken ones by meaning."""

from __future__ import annotations

import pytest
import torch
from gpytorch.constraints import Positive
from gpytorch.kernels import Kernel, ScaleKernel

from gpgeom.botorch import ExactGPModel, check_botorch_model

DT = torch.float64
UNIT3 = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=DT)


def make_data(n=15, m=1, batch=(), seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(*batch, n, 3, dtype=DT, generator=g)
    cols = [torch.sin(4 * X[..., 0]) + X[..., 1], torch.cos(3 * X.sum(-1))][:m]
    return X, torch.stack(cols, -1) + 0.02 * torch.randn(*batch, n, m, dtype=DT, generator=g)


def fitted(X, Y, **kwargs):
    return ExactGPModel(X, Y, **kwargs).fit(progress=False, max_iter=60)


def data_kwargs(n=15, m=1, batch=()):
    X, Y = make_data(n, m, batch)
    Xt, Yt = make_data(40, m, batch, seed=1)
    return X, Y, {"train_X": X, "train_Y": Y, "test_X": Xt, "test_Y": Yt}


def refit_fn(model, X, Y):
    r"""The model rebuilt on the union of its data and (Xn, Yn) with the same hyperparameters (no optimisation)."""
    return lambda Xn, Yn: model.rebuild_with(Xn, Yn)


@pytest.mark.parametrize("m", [1, 2])
def test_exact_gp_passes_every_check(m):
    X, Y, data = data_kwargs(m=m)
    model = fitted(X, Y)
    report = check_botorch_model(
        model, bounds=UNIT3, predict_fn=lambda X: model.predict(X, return_std=True), refit=refit_fn(model, X, Y),
        **data,
    )  # fmt: skip
    assert report["num_outputs"] == m and report["batch_shape"] == torch.Size()
    for name in (
        "posterior shapes",
        "fantasize",
        "fantasize = conditioning on samples",
        "condition_on_observations",
        "conditioning = Bayes' rule",
        "conditioning = refit on the union",
        "posterior depends on the training data",
        "held-out calibration",
        "predict_fn agreement",
        "qLogNoisyExpectedImprovement optimisation",
    ):
        assert name in report["checks"]
    if m == 2:
        assert "subset_output" in report["checks"] and "output_indices" in report["checks"]
    assert report["candidate"].shape == (1, 3)
    assert report["skipped"] == {}
    meas = report["measured"]
    assert meas["condition_error"] < 1e-8 and meas["refit_error"] < 1e-8 and meas["fantasy_error"] < 1e-8
    assert meas["train_r2"] > 0.9 and 0.5 < meas["z_rms"] < 2.0


@pytest.mark.parametrize("shared", [False, True])
def test_batched_exact_gp_passes(shared):
    X, Y, data = data_kwargs(m=2, batch=(2,))
    model = fitted(X, Y, shared_hyperparameters=shared)
    report = check_botorch_model(
        model, bounds=UNIT3, predict_fn=lambda X: model.predict(X, return_std=True), refit=refit_fn(model, X, Y),
        **data,
    )  # fmt: skip
    assert report["batch_shape"] == (2,)
    assert "optimize" in report["skipped"]  # batched acquisition values cannot be optimised jointly
    assert "conditioning = refit on the union" in report["checks"]


class LaplaceKernel(Kernel):
    r"""exp(-||x - y||_1 / ell), written here without any gpgeom code."""

    has_lengthscale = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.register_parameter("raw_ell", torch.nn.Parameter(torch.zeros(*self.batch_shape, 1)))
        self.register_constraint("raw_ell", Positive())

    @property
    def ell(self):
        return self.raw_ell_constraint.transform(self.raw_ell)

    def forward(self, x1, x2, diag=False, **params):
        if diag:
            return torch.ones(x1.shape[:-1], dtype=x1.dtype)
        dist = (x1.unsqueeze(-2) - x2.unsqueeze(-3)).abs().sum(-1)
        return torch.exp(-dist / self.ell.unsqueeze(-1))


def test_custom_kernel_passes_continuous_and_discrete():
    X, Y, data = data_kwargs()
    model = fitted(X, Y, covar_module=ScaleKernel(LaplaceKernel()))
    check_botorch_model(model, bounds=UNIT3, predict_fn=lambda X: model.predict(X, return_std=True), **data)
    # discrete domain (e.g. mesh vertices): the optimisation picks one of the choices
    choices = torch.rand(30, 3, dtype=DT)
    report = check_botorch_model(model, choices=choices, batch_shapes=((),), qs=(2,))
    assert (report["candidate"] == choices).all(-1).any()


# ---------------------------------------------------------------------------------------------------------------
# broken models: each breaks one promise; the helper must raise
class WrongShapeModel(ExactGPModel):
    r"""The posterior forgets the last of the q points."""

    def posterior(self, X, *args, **kwargs):
        return super().posterior(X[..., :-1, :] if X.shape[-2] > 1 else X, *args, **kwargs)


class WrongNumOutputsModel(ExactGPModel):
    r"""``num_outputs`` claims two outputs while the posterior has one."""

    @property
    def num_outputs(self):
        return 2


class ConditionIgnoresY(ExactGPModel):
    r"""``condition_on_observations`` conditions on the posterior mean, whatever ``Y`` says."""

    def condition_on_observations(self, X, Y, **kwargs):
        mean = self.posterior(X).mean.detach().expand(Y.shape)
        return super().condition_on_observations(X, mean, **kwargs)


class FantasizeIgnoresY(ExactGPModel):
    r"""``fantasize`` conditions every fantasy on the posterior mean instead of the sampled values."""

    def fantasize(self, X, sampler, observation_noise=None, **kwargs):
        Y = sampler(self.posterior(X, observation_noise=True)).detach()
        mean = self.posterior(X).mean.detach().expand(Y.shape)
        return self.condition_on_observations(X.expand(*Y.shape[:-2], *X.shape[-2:]), mean)


class IgnoresObservationNoise(ExactGPModel):
    r"""``posterior(X, observation_noise=True)`` returns the noiseless posterior."""

    def posterior(self, X, output_indices=None, observation_noise=False, **kwargs):
        return super().posterior(X, output_indices=output_indices, observation_noise=False, **kwargs)


class VarianceTooLarge(ExactGPModel):
    r"""The posterior covariance is 100 times too large (means right)."""

    def posterior(self, X, *args, **kwargs):
        from botorch.posteriors import GPyTorchPosterior
        from gpytorch.distributions import MultivariateNormal

        post = super().posterior(X, *args, **kwargs)
        mvn = post.distribution
        return GPyTorchPosterior(MultivariateNormal(mvn.mean, 100.0 * mvn.lazy_covariance_matrix))


class IgnoresTrainingData(ExactGPModel):
    r"""The posterior is the GP prior (with the fitted hyperparameters): the training data are ignored."""

    def posterior(self, X, output_indices=None, observation_noise=False, posterior_transform=None, **kwargs):
        from botorch.posteriors import GPyTorchPosterior
        from gpytorch.distributions import MultivariateNormal

        self.eval()
        Xt = self.transform_inputs(X)
        prior = self.forward(Xt)
        cov = prior.lazy_covariance_matrix
        if observation_noise is True:
            cov = cov.add_diagonal(self.likelihood.noise.reshape(-1)[0].expand(Xt.shape[-2]))
        post = GPyTorchPosterior(MultivariateNormal(prior.mean, cov))
        post = self.outcome_transform.untransform_posterior(post)
        return post if posterior_transform is None else posterior_transform(post)


def _broken(cls, X, Y, template):
    model = cls(X, Y)
    model.load_state_dict(template.state_dict())
    model.eval()
    return model


def test_helper_catches_five_broken_models_by_meaning():
    X, Y, data = data_kwargs(n=20)
    good = fitted(X, Y)
    report = check_botorch_model(good, bounds=UNIT3, optimize=False, refit=refit_fn(good, X, Y), **data)
    assert "held-out calibration" in report["checks"]
    cases = [
        (ConditionIgnoresY, "conditioned posterior mean vs Bayes' rule"),
        (FantasizeIgnoresY, "fantasy model mean vs conditioning on the fantasy samples"),
        (IgnoresObservationNoise, "the likelihood's noise is ignored"),
        (VarianceTooLarge, r"held-out standardised errors.*too wide|Bayes' rule"),
        (IgnoresTrainingData, r"posterior mean at the training inputs: expected R\^2"),
    ]
    for cls, message in cases:
        broken = _broken(cls, X, Y, good)
        with pytest.raises(AssertionError, match=message):
            check_botorch_model(broken, bounds=UNIT3, optimize=False, **data)


def test_variance_too_large_is_caught_by_calibration_alone():
    X, Y, data = data_kwargs(n=20)
    broken = _broken(VarianceTooLarge, X, Y, fitted(X, Y))
    with pytest.raises(AssertionError, match="too wide"):
        check_botorch_model(broken, bounds=UNIT3, optimize=False, check_condition=False, check_fantasize=False, **data)


def test_helper_fails_on_broken_shapes():
    X, Y = make_data()
    broken = WrongShapeModel(X, Y)
    with pytest.raises(AssertionError, match=r"posterior\(X of shape \(3, 3\)\)\.mean shape: expected \(3, 1\)"):
        check_botorch_model(broken, bounds=UNIT3, qs=(3,), batch_shapes=((),))
    with pytest.raises(AssertionError, match=r"mean shape: expected \(1, 2\), got \(1, 1\)"):
        check_botorch_model(WrongNumOutputsModel(X, Y), bounds=UNIT3, optimize=False)
    # a predict() that disagrees with the posterior is caught
    model = ExactGPModel(X, Y)
    with pytest.raises(AssertionError, match="predict_fn mean"):
        check_botorch_model(
            model, bounds=UNIT3, optimize=False, predict_fn=lambda X: (model.predict(X) + 1e-3, torch.ones(1))
        )
    with pytest.raises(ValueError, match="bounds"):
        check_botorch_model(model, bounds=torch.zeros(3, 3, dtype=DT))


def _float32_low_noise(sd, scale, cls=ExactGPModel):
    r"""A float32 ``ExactGPModel`` fitted on ``30 x 2`` data of noise sd ``sd`` in output units of size ``scale``, with
    a noise constraint low enough to learn that noise (the default floor is 1e-4 of the outputs' variance)."""
    from gpytorch.constraints import GreaterThan
    from gpytorch.likelihoods import GaussianLikelihood

    g = torch.Generator().manual_seed(0)
    X = torch.rand(30, 2, generator=g)
    Y = scale * (torch.sin(6 * X[:, :1]) + X[:, 1:] ** 2 + sd * torch.randn(30, 1, generator=g))
    lik = GaussianLikelihood(noise_constraint=GreaterThan(1e-10))
    return cls(X, Y, likelihood=lik).fit(progress=False, max_iter=60), X, Y


@pytest.mark.parametrize("sd", [1e-3, 1e-4])
@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_float32_model_with_small_noise_passes_observation_noise_check(sd, scale):
    # was: "an increase of 1.24e-07 (the likelihood's noise is ignored)" against an absolute floor of 1e-5
    model, X, Y = _float32_low_noise(sd, scale)
    noise = float(model.likelihood.noise.detach()) * float(model.outcome_transform.stdvs.detach().square())
    assert noise < 1e-5 * scale**2  # the regime the absolute floor rejected
    Xt = torch.rand(5, 2, generator=torch.Generator().manual_seed(1))
    var, noisy = model.posterior(Xt).variance.detach(), model.posterior(Xt, observation_noise=True).variance.detach()
    # independent truth: the increase is the likelihood's noise in output units, up to a few ulps of the variances
    ulps = torch.finfo(torch.float32).eps * (var + noisy)
    assert bool(((noisy - var - noise).abs() <= 1e-3 * noise + 4 * ulps).all())
    report = check_botorch_model(model, check_condition=False, check_fantasize=False, optimize=False)
    assert "observation_noise" in report["checks"]


@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_float32_model_ignoring_small_noise_still_fails(scale):
    broken = _float32_low_noise(1e-3, scale, IgnoresObservationNoise)[0]
    with pytest.raises(AssertionError, match="the likelihood's noise is ignored"):
        check_botorch_model(broken, check_condition=False, check_fantasize=False, optimize=False)


@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_float32_small_noise_model_passes_every_check_and_broken_ones_fail(scale):
    # The float32 rounding of this model's conditioning is 0.03-0.08 of the posterior sd (its float32 posterior is as
    # far from the float64 model with the same hyperparameters); the default float32 `condition_tol` (1e-3) is below
    # that, so the tolerance is given. Conditioning on the posterior mean is off by 0.9, fantasies on it by 1.8.
    kw = {"optimize": False, "condition_tol": 0.2}
    report = check_botorch_model(_float32_low_noise(1e-3, scale)[0], **kw)
    assert {"observation_noise", "conditioning = Bayes' rule", "fantasize = conditioning on samples"} <= set(
        report["checks"]
    )
    for cls, match in [
        (ConditionIgnoresY, "conditioned posterior mean vs Bayes' rule"),
        (FantasizeIgnoresY, "fantasy model mean vs conditioning on the fantasy samples"),
    ]:
        with pytest.raises(AssertionError, match=match):
            check_botorch_model(_float32_low_noise(1e-3, scale, cls)[0], **kw)

r"""Tests of gpgeom.botorch.check.check_botorch_model: it passes on conforming models and fails on broken ones."""

from __future__ import annotations

import pytest
import torch
from gpytorch.constraints import Positive
from gpytorch.kernels import Kernel, ScaleKernel

from gpgeom.botorch.check import check_botorch_model
from gpgeom.botorch.exact_gp import ExactGPModel

DT = torch.float64
UNIT3 = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=DT)


def make_data(n=15, m=1, batch=()):
    X = torch.rand(*batch, n, 3, dtype=DT)
    cols = [torch.sin(4 * X[..., 0]) + X[..., 1], torch.cos(3 * X.sum(-1))][:m]
    return X, torch.stack(cols, -1) + 0.02 * torch.randn(*batch, n, m, dtype=DT)


def fitted(X, Y, **kwargs):
    return ExactGPModel(X, Y, **kwargs).fit(progress=False, max_iter=40)


@pytest.mark.parametrize("m", [1, 2])
def test_exact_gp_passes(m):
    model = fitted(*make_data(m=m))
    report = check_botorch_model(model, bounds=UNIT3, predict_fn=lambda X: model.predict(X, return_std=True))
    assert report["num_outputs"] == m and report["batch_shape"] == torch.Size()
    for name in (
        "posterior shapes",
        "fantasize",
        "condition_on_observations",
        "predict_fn agreement",
        "qLogNoisyExpectedImprovement optimisation",
    ):
        assert name in report["checks"]
    if m == 2:
        assert "subset_output" in report["checks"] and "output_indices" in report["checks"]
    assert report["candidate"].shape == (1, 3)
    assert report["skipped"] == {}


@pytest.mark.parametrize("shared", [False, True])
def test_batched_exact_gp_passes(shared):
    model = fitted(*make_data(m=2, batch=(2,)), shared_hyperparameters=shared)
    report = check_botorch_model(model, bounds=UNIT3, predict_fn=lambda X: model.predict(X, return_std=True))
    assert report["batch_shape"] == (2,)
    assert "optimize" in report["skipped"]  # batched acquisition values cannot be optimised jointly


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
    X, Y = make_data()
    model = fitted(X, Y, covar_module=ScaleKernel(LaplaceKernel()))
    check_botorch_model(model, bounds=UNIT3, predict_fn=lambda X: model.predict(X, return_std=True))
    # discrete domain (e.g. mesh vertices): the optimisation picks one of the choices
    choices = torch.rand(30, 3, dtype=DT)
    report = check_botorch_model(model, choices=choices, batch_shapes=((),), qs=(2,))
    assert (report["candidate"] == choices).all(-1).any()


class WrongShapeModel(ExactGPModel):
    r"""Breaks the contract: the posterior forgets the last of the q points."""

    def posterior(self, X, *args, **kwargs):
        return super().posterior(X[..., :-1, :] if X.shape[-2] > 1 else X, *args, **kwargs)


class WrongNumOutputsModel(ExactGPModel):
    r"""Breaks the contract: ``num_outputs`` claims two outputs while the posterior has one."""

    @property
    def num_outputs(self):
        return 2


def test_helper_fails_on_broken_models():
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

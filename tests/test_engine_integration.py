"""The engine's pieces together: the engine's own kernels inside ExactGPModel pass the BoTorch contract."""

import torch
from gpytorch.kernels import ScaleKernel

from gpgeom.botorch.check import check_botorch_model
from gpgeom.botorch.exact_gp import ExactGPModel
from gpgeom.kernels.markov import MaternMarkovKernel
from gpgeom.kernels.spectral import SpectralKernel


def test_exact_gp_with_markov_kernel_passes_botorch_contract_and_optimises_qlognei():
    X = torch.rand(12, 1, dtype=torch.float64)
    Y = torch.sin(6 * X) + 0.05 * torch.randn(12, 1, dtype=torch.float64)
    model = ExactGPModel(X, Y, covar_module=MaternMarkovKernel(nu=2.5)).fit(progress=False, seed=0)
    bounds = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    report = check_botorch_model(model, bounds=bounds, predict_fn=lambda Z: model.predict(Z, return_std=True))
    cand = report["candidate"]
    assert cand.shape == (1, 1) and bool(((cand >= 0) & (cand <= 1)).all())


def test_exact_gp_with_spectral_kernel_on_graph_passes_botorch_contract_with_discrete_choices():
    n = 30
    A = torch.zeros(n, n, dtype=torch.float64)
    i = torch.arange(n)
    A[i, (i + 1) % n] = A[(i + 1) % n, i] = 1.0  # ring graph
    A[i[::5], (i[::5] + 7) % n] = A[(i[::5] + 7) % n, i[::5]] = 1.0  # a few chords
    L = torch.diag(A.sum(1)) - A
    evals, evecs = torch.linalg.eigh(L)
    kernel = ScaleKernel(SpectralKernel(evals.clamp_min(0), evecs, spectral_filter="matern", nu=1.5, dimension=1))
    idx = torch.randperm(n)[:10].double()[:, None]
    Y = torch.cos(2 * torch.pi * idx / n) + 0.01 * torch.randn(10, 1, dtype=torch.float64)
    model = ExactGPModel(idx, Y, covar_module=kernel).fit(progress=False, seed=0)
    choices = torch.arange(n, dtype=torch.float64)[:, None]
    report = check_botorch_model(model, choices=choices, predict_fn=lambda Z: model.predict(Z, return_std=True))
    cand = report["candidate"]
    assert cand.shape == (1, 1) and float(cand) == round(float(cand)) and 0 <= float(cand) < n

r"""ExactGPModel's outputs (:func:`gpgeom.botorch.exact_inputs.standardised_outputs`): float64 outputs of a float32
model are standardised in float64, so the learned noise is that of the outputs, not of their float32 rounding.

Independent truth: the float64 model on the same data (the noise and the predictive standard deviation must agree
to float32's relative precision and the optimiser's tolerance), and the data's own noise level.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from gpgeom.botorch import ExactGPModel

D = torch.float64
OFFSET, NOISE = 1e6, 0.002


def _data(n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, 2, generator=g, dtype=D)
    f = torch.sin(6 * X[:, :1]) * torch.cos(4 * X[:, 1:])
    return X, OFFSET + 0.1 * f + NOISE * torch.randn(n, 1, generator=g, dtype=D)


def _model(X, Y, dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BoTorch's advice to use float64
        return ExactGPModel(X.to(dtype), Y)


def _noise_sd(m):
    return float(m.likelihood.noise.detach()) ** 0.5 * float(m.outcome_transform.stdvs.detach())


def test_a_float32_model_learns_the_noise_of_float64_outputs_with_a_large_offset():
    # standardised in float32 the outputs were rounded to 0.0625 first: noise sd 0.0159 against the float64 model's
    # 0.00218 (true 0.002); now the noise agrees to 3e-4 relative and the predictive std to 9e-4
    X, Y = _data()
    Xq = torch.rand(10, 2, generator=torch.Generator().manual_seed(1), dtype=D)
    m64, m32 = _model(X, Y, D), _model(X, Y, torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m64.fit(), m32.fit()
    assert _noise_sd(m64) == pytest.approx(NOISE, rel=0.2)
    assert _noise_sd(m32) == pytest.approx(_noise_sd(m64), rel=5e-3)
    mu64, sd64 = m64.predict(Xq, return_std=True)
    mu32, sd32 = m32.predict(Xq.float(), return_std=True)
    assert mu32.dtype == sd32.dtype == torch.float32
    assert torch.allclose(sd32.detach().double(), sd64.detach(), rtol=1e-2, atol=0)
    # the mean is rounded to float32 at 1e6 (spacing 0.0625)
    assert float((mu32.detach().double() - mu64.detach()).abs().max()) <= 0.0625


def test_the_float32_model_standardises_in_float64_with_the_parameters_it_keeps(tmp_path):
    X, Y = _data(30)
    m = _model(X, Y, torch.float32)
    tf = m.outcome_transform
    assert tf.means.dtype == tf.stdvs.dtype == torch.float32 and m.train_targets.dtype == torch.float32
    # the targets are (Y - mean) / scale computed in float64 with the kept float32 parameters, then rounded
    want = ((Y - tf.means.double()) / tf.stdvs.double()).squeeze(-1).float()
    assert torch.equal(m.train_targets, want)
    # their spread is the outputs' own (1 to rounding), not the float32 rounding's
    assert float(m.train_targets.std()) == pytest.approx(1.0, rel=1e-5)
    assert m.train_data[1].dtype == D  # the data in original units, as given
    # a file rebuilds the model from those data and its state: it predicts bitwise as saved
    Xq = torch.rand(5, 2, generator=torch.Generator().manual_seed(2))
    m.save(tmp_path / "m.pt")
    back = ExactGPModel.load(tmp_path / "m.pt")
    assert torch.equal(back.train_targets, m.train_targets)
    for a, b in zip(m.predict(Xq, return_std=True), back.predict(Xq, return_std=True), strict=True):
        assert torch.equal(a, b)


def test_conditioning_a_float32_model_equals_its_rebuild_on_the_union():
    X, Y = _data(30)
    m = _model(X, Y, torch.float32).eval()
    Xn = torch.rand(4, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float32)
    Yn = (OFFSET + 0.1 * torch.rand(4, 1, generator=torch.Generator().manual_seed(4), dtype=D)).float()
    Xq = torch.rand(5, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float32)
    m.predict(Xq)
    c, r = m.condition_on_observations(Xn, Yn), m.rebuild_with(Xn, Yn)
    mc, sc = c.predict(Xq, return_std=True)
    mr, sr = r.predict(Xq, return_std=True)
    assert torch.allclose(sc, sr, rtol=1e-3) and float((mc - mr).abs().max()) <= 0.0625


def test_a_float64_model_standardises_as_before():
    X, Y = _data(30)
    m = _model(X, Y, D)
    want = ((Y - Y.mean(0)) / Y.std(0)).squeeze(-1)
    assert torch.equal(m.train_targets, want)

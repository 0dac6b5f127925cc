r"""Tests of the learning-rate schedule of the Adam path of :func:`gpgeom.engine.fitting.fit`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gpgeom.engine.fitting import fit

DT = torch.float64


class _Params(nn.Module):
    def __init__(self, n: int, value: float = 0.0) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.full((n,), value, dtype=DT))


def _applied_rates(epochs: int, lr: float, **kw) -> np.ndarray:
    r"""The step size Adam took at each epoch, read off the iterates.

    For the linear loss :math:`c\,\theta` (constant gradient :math:`c`), Adam's bias-corrected moments are exactly
    :math:`\hat m = c`, :math:`\hat v = c^2`, so each update is :math:`-\mathrm{lr}_e\, c / (|c| + \epsilon)`: with
    :math:`c = 10^4` and :math:`\epsilon = 10^{-8}` the decrease of :math:`\theta` at epoch :math:`e` *is* the
    learning rate applied there (to a relative 1e-12).
    """
    m = _Params(1)
    seen: list[float] = []

    def loss() -> torch.Tensor:
        seen.append(float(m.theta.detach()))
        return 1e4 * m.theta.sum()

    fit(loss, module=m, optimizer="adam", lr=lr, epochs=epochs, patience=epochs + 1, rel_tol=0.0, progress=False, **kw)
    assert len(seen) == epochs
    return -np.diff(np.asarray(seen))  # rates of epochs 0 .. epochs - 2


def test_cosine_rate_applied_at_each_epoch_equals_the_formula():
    E, lr, phi = 25, 0.01, 0.1
    got = _applied_rates(E, lr, lr_schedule="cosine", lr_final_fraction=phi)
    e = np.arange(E - 1)
    want = lr * (phi + (1 - phi) * 0.5 * (1 + np.cos(np.pi * e / E)))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=0)
    assert got[0] == pytest.approx(lr, rel=1e-9) and got[-1] < 0.15 * lr  # really decays


def test_constant_and_callable_schedules():
    E, lr = 12, 0.02
    const = _applied_rates(E, lr)
    np.testing.assert_allclose(const, lr, rtol=1e-9)
    np.testing.assert_allclose(_applied_rates(E, lr, lr_schedule="constant"), const, rtol=0, atol=0)
    step = _applied_rates(E, lr, lr_schedule=lambda e: 0.5 ** (e // 4))
    np.testing.assert_allclose(step, lr * 0.5 ** (np.arange(E - 1) // 4), rtol=1e-9)
    # numpy numbers are accepted as factors
    warm = _applied_rates(E, lr, lr_schedule=lambda e: np.float32(min(1.0, (e + 1) / 4)))
    np.testing.assert_allclose(warm, lr * np.minimum(1.0, (np.arange(E - 1) + 1) / 4), rtol=1e-6)


def test_cosine_ends_closer_than_constant_on_a_noisy_quadratic():
    r"""Adam on a stochastic quadratic (fresh Gaussian noise in the target at every evaluation) at a constant rate
    keeps fluctuating around the minimum with an amplitude that scales with the rate; annealing the rate over the
    same number of epochs shrinks the fluctuation. Same start, same peak rate, same noise sequence; the distance is
    read off the iterates of the last 20 epochs (not off the returned best-loss parameters)."""
    n = 64
    h = torch.logspace(0, 1, n, dtype=DT)
    target = torch.linspace(-1, 1, n, dtype=DT)
    dists = {}
    for name in ("constant", "cosine"):
        m = _Params(n)
        gen = torch.Generator().manual_seed(0)
        iterates: list[torch.Tensor] = []

        def loss(m=m, gen=gen, iterates=iterates) -> torch.Tensor:
            iterates.append(m.theta.detach().clone())
            noisy = target + 0.3 * torch.randn(n, generator=gen, dtype=DT)
            return 0.5 * (h * (m.theta - noisy) ** 2).sum()

        fit(
            loss,
            module=m,
            optimizer="adam",
            lr=0.05,
            epochs=400,
            patience=401,
            rel_tol=0.0,
            progress=False,
            lr_schedule=name,
        )
        last = torch.stack(iterates[-20:])
        dists[name] = float((last - target).norm(dim=-1).mean())
    assert dists["cosine"] < 0.5 * dists["constant"], dists  # measured 0.27-0.38 over seeds 0-5


def test_schedule_errors_name_the_argument():
    m = _Params(2)

    def loss() -> torch.Tensor:
        return (m.theta**2).sum()

    kw = dict(module=m, optimizer="adam", epochs=3, progress=False)
    with pytest.raises(ValueError, match="lr_schedule"):
        fit(loss, lr_schedule="linear", **kw)
    with pytest.raises(TypeError, match="lr_schedule"):
        fit(loss, lr_schedule=0.5, **kw)
    with pytest.raises(ValueError, match="lr_final_fraction"):
        fit(loss, lr_schedule="cosine", lr_final_fraction=1.5, **kw)
    with pytest.raises(TypeError, match="lr_final_fraction"):
        fit(loss, lr_schedule="cosine", lr_final_fraction="0.1", **kw)
    with pytest.raises(ValueError, match=r"`lr_schedule`\(1\) returned nan"):
        fit(loss, lr_schedule=lambda e: 1.0 if e == 0 else math.nan, **kw)
    with pytest.raises(ValueError, match="lr_schedule"):
        fit(loss, lr_schedule=lambda e: -1.0, **kw)
    with pytest.raises(TypeError, match="lr_schedule"):
        fit(loss, lr_schedule=lambda e: "fast", **kw)
    with pytest.raises(ValueError, match="Adam path only"):
        fit(loss, module=m, optimizer="lbfgs", lr_schedule="cosine", progress=False)

r"""FunBaT's coordinate map (:mod:`gpgeom.models.funbat.inputs`): applied in float64 whatever the model's dtype.

Independent truths: the fit of the same model on the coordinates without their offset (FunBaT normalises each mode
by its training range, so an affine change of a mode's units must leave the predictions as they are), and the
float64 model itself for the same model moved to float32 (``to`` only rounds).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from gpgeom.datasets.tensors import make_synthetic_tensor
from gpgeom.errors import ConvergenceWarning
from gpgeom.models.funbat import FunBaT

D = torch.float64


def _fit(X, y, **kw):
    kw = {"max_sweeps": 6, "min_sweeps": 6, "tol": 0.0, "n_restarts": 0, **kw}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return FunBaT(2, **kw).fit(X, y)


def test_a_float32_model_keeps_coordinates_with_a_large_offset():
    r"""Coordinates of about 1.7e9 (Unix seconds) spanning 1000: float32 spaces 1.7e9 by 128, so converting them to
    the model's float32 before subtracting the training minimum left at most 8 distinct values per mode, and the
    predictions were off by 0.94 (the signal's standard deviation is 1) from the fit on the same coordinates without
    the offset; now they agree exactly (the same normalised coordinates, mapped in float64)."""
    d = make_synthetic_tensor(200, 50, rank=2, n_coords=12, noise_sd=0.05, seed=3)
    X, Xt = 1e3 * d.X_train, 1e3 * d.X_test
    ref = _fit(X, d.y_train, dtype=torch.float32).predict(Xt)
    off = _fit(X + 1.7e9, d.y_train, dtype=torch.float32)
    assert float((off.predict(Xt + 1.7e9) - ref).abs().max()) < 1e-5
    # the map is float64 in the float32 model; its lengthscales are in the original units, in the model's dtype
    assert off.coord_lo.dtype == D and off.lengthscales_.dtype == torch.float32


def _station_day(seed: int = 0):
    r"""A day x station table with station codes :math:`10 s / 11` (as ``load_beijing_air(station=True)`` codes
    them: not exact in binary), a rank-2 structure and noise sd 0.05; 70 % of the cells for training."""
    g = torch.Generator().manual_seed(seed)
    days, stations = torch.arange(30, dtype=D), 10.0 * torch.arange(12, dtype=D) / 11.0
    X = torch.cartesian_prod(days, stations)
    a, b = torch.sin(X[:, 0] / 4), torch.randn(12, 2, generator=g, dtype=D)
    s = torch.searchsorted(stations, X[:, 1].contiguous())
    y = a * b[s, 0] + torch.cos(X[:, 0] / 7) * b[s, 1] + 0.05 * torch.randn(len(X), generator=g, dtype=D)
    keep = torch.rand(len(X), generator=g) < 0.7
    return X[keep], y[keep], X[~keep]


@pytest.mark.parametrize("kw", [{"categorical": 1}, {"noise": "student_t", "scale_mode": 1}])
def test_moving_a_model_keeps_its_training_labels_and_groups(kw, tmp_path):
    r"""After ``to(dtype=torch.float32)`` a station code :math:`10 s / 11` was normalised in float32 while the
    training ones had been rounded from float64; the two differ in the last bit for some codes, which a categorical
    mode (equal labels only) then treated as unseen labels (the prior) and ``scale_mode`` as unseen groups. The move
    changed the means by 0.67 and the standard deviations of new observations by a factor of up to 21 (categorical), or
    those by 4 % (shared scales); a float32 fit moved to float64: 2.1 and 21 times, or 19 %. Now the moves only round
    (means to 3e-7, standard deviations to 1.3e-4 relative, float32's cancellation in the variance)."""
    X, y, Xt = _station_day()
    m = _fit(X, y, **kw)
    mean, std = m.predict(Xt, return_std=True, observation_noise=True)
    m.to(dtype=torch.float32)
    mean32, std32 = (v.double() for v in m.predict(Xt, return_std=True, observation_noise=True))
    assert float((mean32 - mean).abs().max()) < 1e-5
    assert float(((std32 - std) / std).abs().max()) < 1e-3
    m32 = _fit(X, y, dtype=torch.float32, **kw)
    mean, std = m32.predict(Xt, return_std=True, observation_noise=True)
    path = tmp_path / "m.pt"
    m32.save(path)
    for moved in (m32.to(dtype=D), FunBaT.load(path).to(dtype=D)):
        mean64, std64 = moved.predict(Xt, return_std=True, observation_noise=True)
        assert float((mean64 - mean.double()).abs().max()) < 1e-5
        assert float(((std64 - std.double()) / std.double()).abs().max()) < 1e-3

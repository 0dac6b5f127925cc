r"""MMGP after a refit that raises half-way: the model must still be the previous fit, predicting what it predicted
(not its new common mesh or POD bases with the previous GPs)."""

from __future__ import annotations

import warnings

import pytest
import torch
from mesh_factories import notched_plate_arrays

from gpgeom.botorch.exact_gp import ExactGPModel
from gpgeom.models.mmgp import MMGP

pytest.importorskip("skfem")
pytest.importorskip("triangle")

KW = {"n_modes_geometry": 4, "n_modes_fields": 4, "restarts": 0, "max_iter": 60, "seed": 0, "floater_start": (0, 0)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return notched_plate_arrays(tmp_path_factory.mktemp("plates"), 12, 3, 0.15)


def _fit(model, M, mu, U, w):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(M, mu, U, w)


def _same(P, Q):
    for a, b in zip(P.fields + P.fields_std, Q.fields + Q.fields_std, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(P.scalars, Q.scalars, rtol=0, atol=0)
    torch.testing.assert_close(P.scalars_std, Q.scalars_std, rtol=0, atol=0)


def test_a_refit_that_raises_leaves_the_previous_fit(data, monkeypatch):
    r"""A refit interrupted in its GP stage (the third GP of seven) kept the new POD bases with the previous GPs: the
    predicted fields moved by 1.0 from the previous fit and by 1.2 from a fit on the new data (which differ by 0.5).
    A refit refused after it replaced the common mesh (too many modes for 3 meshes) left a model whose predict raised.
    Now both leave the previous fit; an interrupted first fit leaves the model unfitted."""
    (M, mu, U, w), (Mt, mut, _, _) = data
    model = _fit(MMGP(**KW), M, mu, U, w)
    before = model.predict(Mt, mut, return_std=True)
    result = model.fit_result_
    fit, calls = ExactGPModel.fit, []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return fit(self, *args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(ExactGPModel, "fit", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _fit(model, M[1:], mu[1:], U[1:], w[1:])
    _same(model.predict(Mt, mut, return_std=True), before)
    assert model.fit_result_ is result
    with pytest.raises(ValueError, match="n_modes_geometry"):
        _fit(model, M[2:5], mu[2:5], U[2:5], w[2:5])
    _same(model.predict(Mt, mut, return_std=True), before)
    fresh = MMGP(**KW)
    calls.clear()
    with monkeypatch.context() as mp:
        mp.setattr(ExactGPModel, "fit", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _fit(fresh, M, mu, U, w)
    assert not fresh.is_fitted
    _same(_fit(fresh, M, mu, U, w).predict(Mt, mut, return_std=True), before)  # and it fits as new

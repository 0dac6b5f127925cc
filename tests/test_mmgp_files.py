r"""MMGP files hold each GP's training tensors as an ExactGPModel file does (one writer and one reader,
:func:`gpgeom.botorch.exact_files.train_tensors` / ``set_train_tensors``): files written before, with the
``(inputs, targets)`` pairs of ``gp_train``, load and predict bitwise as the saved model, and round trips in float64
and float32 are bitwise."""

from __future__ import annotations

import warnings

import pytest
import torch
from test_mmgp import _synthetic

from gpgeom._io import write_model_file
from gpgeom.botorch.exact_files import model_state, train_tensors
from gpgeom.models.mmgp import MMGP

KW = {"n_modes_geometry": 3, "n_modes_fields": 3, "restarts": 0, "max_iter": 30, "floater_start": (0.0, 0.0)}


def _predictions(model, query):
    p = model.predict(*query, return_std=True)
    return [*p.fields, *p.fields_std, p.scalars, p.scalars_std]


def _same_bits(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and torch.equal(x, y)


def _equal_held(a, b):
    for x, y in zip(a, b, strict=True):
        assert (x is None and y is None) or torch.equal(x, y)


@pytest.mark.parametrize("hyperparameters", ["per_field", "per_output"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_files_before_and_after_load_bitwise(tmp_path, hyperparameters, dtype):
    r"""A fitted model (float64, or moved to float32: its GPs hold the rounding of the float64 tensors, which the
    transform redone in float32 does not reproduce) saved, and saved as MMGP wrote its files before the shared
    writer (``gp_train``: ``(inputs, targets)`` per GP), loads back predicting bitwise what the saved model predicts
    (means, standard deviations, fields and scalars). The file's tensors are those an ExactGPModel file holds."""
    M, mu, U, w = _synthetic(8, seed=0)
    query = _synthetic(3, seed=5)[:2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BoTorch's float32 InputDataWarning
        model = MMGP(hyperparameters=hyperparameters, seed=0, **KW).fit(M, mu, U, w, progress=False)
        model.to(dtype=dtype)
        ref = _predictions(model, query)
        state = model._get_state()
        for held, g in zip(state["gp_train_tensors"], model.gps_, strict=True):
            _equal_held(held, model_state(g)["train_tensors"])  # the ExactGPModel file's entry
            assert held[0].dtype == dtype and held[3].shape == g._original_train_inputs.shape
        model.save(tmp_path / "now.pt")
        _same_bits(_predictions(MMGP.load(tmp_path / "now.pt"), query), ref)
        del state["gp_train_tensors"]
        state["gp_train"] = [(g.train_inputs[0], g.train_targets) for g in model.gps_]  # the writer before
        write_model_file(tmp_path / "before.pt", model, state)
        back = MMGP.load(tmp_path / "before.pt")
        _same_bits(_predictions(back, query), ref)
        for g, h in zip(back.gps_, model.gps_, strict=True):  # and it saves the tensors the model held
            _equal_held(train_tensors(g)[:2], train_tensors(h)[:2])
        back.save(tmp_path / "again.pt")
        _same_bits(_predictions(MMGP.load(tmp_path / "again.pt"), query), ref)


def test_files_without_the_tensors_recompute_them(tmp_path):
    r"""A file written before the GPs' tensors were saved (no ``gp_train``) loads with the inputs transformed again
    in the file's dtype: float64 predictions equal the saved model's to 1e-12."""
    M, mu, U, w = _synthetic(8, seed=0)
    query = _synthetic(3, seed=5)[:2]
    model = MMGP(seed=0, **KW).fit(M, mu, U, w, progress=False)
    state = model._get_state()
    del state["gp_train_tensors"]
    write_model_file(tmp_path / "older.pt", model, state)
    back = MMGP.load(tmp_path / "older.pt")
    for a, b in zip(_predictions(back, query), _predictions(model, query), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)

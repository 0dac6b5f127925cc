r"""What MMGP returns against what its docstrings promise (an audit of its semantics), on the synthetic plates of
``test_mmgp`` (structured triangulations of deformed rectangles, no FE solve)."""

from __future__ import annotations

import pytest
import torch
from test_mmgp import _synthetic

from gpgeom.models.mmgp import MMGP

KW = {"n_modes_geometry": 2, "n_modes_fields": 2, "restarts": 0, "max_iter": 20, "floater_start": (0.0, 0.0)}


def test_dicts_of_fields_are_read_by_name():
    r"""``output_fields`` as dicts name -> ``(N_i,)``: the columns were taken in each dict's own key order, so two
    meshes whose dicts list the fields in another order had their fields swapped silently (training targets off by
    0.75 on these plates), and the names were dropped (``field0``, ...). The dicts are read by name, in the first
    dict's order or ``field_names``, and the model equals the one fitted on the arrays."""
    M, mu, U, w = _synthetic(8, seed=0)
    arrays = MMGP(**KW).fit(M, mu, U, w, field_names=["a", "b"], progress=False)
    D = [{"a": u[:, 0], "b": u[:, 1]} if i % 2 else {"b": u[:, 1], "a": u[:, 0]} for i, u in enumerate(U)]
    named = MMGP(**KW).fit(M, mu, [dict(reversed(d.items())) for d in D], w, progress=False)
    assert named.field_names_ == ["a", "b"]  # the first dict's order ({"a", "b"} reversed from mesh 0's)
    torch.testing.assert_close(named.train_targets_, arrays.train_targets_, rtol=0, atol=1e-12)
    ordered = MMGP(**KW).fit(M, mu, D, w, field_names=["a", "b"], progress=False)
    torch.testing.assert_close(ordered.train_targets_, arrays.train_targets_, rtol=0, atol=1e-12)
    swapped = [{"b": u[:, 1], "a": u[:, 0]} for u in U[:3]]
    torch.testing.assert_close(arrays.encode_targets(M[:3], swapped, w[:3]), arrays.train_targets_[:3])
    for got, ref in zip(arrays.project_fields(M[:3], swapped), arrays.project_fields(M[:3], U[:3]), strict=True):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"`output_fields\[1\]` is a dict of fields \['a', 'c'\].*\['a', 'b'\]"):
        arrays.encode_targets(M[:2], [D[0], {"a": U[1][:, 0], "c": U[1][:, 1]}], w[:2])
    with pytest.raises(ValueError, match=r"`output_fields\[0\]` is a dict of fields"):
        MMGP(**KW).fit(M, mu, D, w, field_names=["a", "x"], progress=False)


def test_output_names_are_one_distinct_string_per_output():
    r"""Duplicate names were accepted: with ``scalar_names=["s", "s"]``, ``output_gp("s")`` and ``output_index("s")``
    silently gave the first scalar and the second had no name. Names must be distinct strings, one per output; the
    error names the argument, the count expected and what was given."""
    M, mu, U, w = _synthetic(6, seed=0)
    with pytest.raises(
        ValueError, match=r"`scalar_names` must have one distinct name per scalar \(2\), got \['s', 's'\]"
    ):
        MMGP(**KW).fit(M, mu, U, w, scalar_names=["s", "s"], progress=False)
    with pytest.raises(ValueError, match=r"`field_names` must have one name per field \(2\), got \['a'\]"):
        MMGP(**KW).fit(M, mu, U, w, field_names=["a"], progress=False)
    with pytest.raises(TypeError, match=r"`field_names` must be a sequence of 2 strings, got 'ab'"):
        MMGP(**KW).fit(M, mu, U, w, field_names="ab", progress=False)
    model = MMGP(**KW).fit(M, mu, U, w, field_names=("a", "b"), scalar_names=("s", "t"), progress=False)
    assert model.field_names_ == ["a", "b"] and model.output_index("t") == model.n_outputs - 1


def test_latent_bounds_are_the_training_box():
    r"""``latent_bounds`` is the box of the training latent inputs, columns min / max, with ``[c, c + 1]`` for a
    column constant over the training set (here an input scalar), as its docstring now says (it said min / max)."""
    M, mu, U, w = _synthetic(6, seed=0)
    mu2 = torch.cat([torch.as_tensor(mu), torch.full((6, 1), 2.5, dtype=torch.float64)], 1)
    model = MMGP(**KW).fit(M, mu2, U, w, progress=False)
    Z = model.encode(M, mu2)
    box = model.latent_bounds
    torch.testing.assert_close(box[:, :-1], torch.stack([Z.min(0).values, Z.max(0).values])[:, :-1])
    torch.testing.assert_close(box[:, -1], torch.tensor([2.5, 3.5], dtype=torch.float64))


def test_output_gp_names_its_argument():
    r"""``output_gp`` refused a field name as "Unknown `name`" (an argument it does not have) and took ``True`` or
    ``1.7`` as column 1 (``int(output)``); the errors name ``output``, and a column index picks that output."""
    M, mu, U, w = _synthetic(6, seed=0)
    model = MMGP(**KW).fit(M, mu, U, w, scalar_names=["s", "t"], progress=False)
    with pytest.raises(ValueError, match=r"Unknown `output`='U1'; expected one of 's', 't'"):
        model.output_gp("U1")
    for bad in (True, 1.7):
        with pytest.raises(TypeError, match=r"`output` must be an output scalar name or an int column index"):
            model.output_gp(bad)
    j = model.output_index("t")
    for out in ("t", j):
        gp = model.output_gp(out)
        torch.testing.assert_close(
            gp.predict(model.train_latent_[:3]), model.gp.predict(model.train_latent_[:3])[:, j : j + 1]
        )

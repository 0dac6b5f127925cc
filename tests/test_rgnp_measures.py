r"""RGNP's error measure :func:`gpgeom.models.rgnp.nse` (the normalised squared error, the square of the relative
:math:`L_2` error) where the truth is zero or far from 1 in size: an exact prediction of a field zero everywhere is 0
(was NaN, 0/0), a wrong one of such a field a ``ValueError`` naming ``truth`` (was inf; the relative error of a zero
field is undefined, as :func:`gpgeom.metrics.vector_fields.relative_l2` says), and fields of any size the dtype holds
give their value (float32 fields of 1e-30 and 1e30, float64 ones of 1e-200: NaN before). The truth is
:func:`~gpgeom.metrics.vector_fields.relative_l2` squared, field by field, and the values worked by hand."""

from __future__ import annotations

import pytest
import torch

from gpgeom.metrics.vector_fields import relative_l2
from gpgeom.models.rgnp import nse


def test_nse_is_the_squared_relative_l2_error_and_zero_for_an_exact_zero_field():
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(4, 7, 1, generator=g, dtype=torch.float64)
    mean = truth + 0.1 * torch.randn(4, 7, 1, generator=g, dtype=torch.float64)
    truth[2], mean[2] = 0.0, 0.0  # a field zero everywhere, predicted exactly
    got = nse(mean, truth)
    assert got.shape == (4,)
    for f in (0, 1, 3):
        assert float(got[f]) == pytest.approx(relative_l2(mean[f], truth[f]) ** 2, rel=1e-12)
    assert float(got[2]) == 0.0  # was NaN
    assert float(nse(torch.zeros(5), torch.zeros(5))) == 0.0  # one field, 1-D


def test_a_wrong_prediction_of_a_zero_field_is_a_clear_error():
    truth = torch.tensor([[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]])
    mean = torch.tensor([[1.0, 2.5], [0.1, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match=r"`truth` is zero everywhere in 1 field\(s\) \(index 1\) where `mean` is not"):
        nse(mean, truth)  # was inf for field 1
    with pytest.raises(ValueError, match=r"in 7 field\(s\) \(index 0, 1, 2, 3, 4 and 2 more\)"):
        nse(torch.ones(7, 3), torch.zeros(7, 3))


@pytest.mark.parametrize(
    ("dtype", "size"), [(torch.float32, 1e-30), (torch.float32, 1e30), (torch.float64, 1e-200), (torch.float64, 1e200)]
)
def test_fields_of_any_size_give_their_value(dtype, size):
    r"""``mean = (2, 1) s``, ``truth = (1, 1) s``: :math:`(1 / \sqrt 2)^2 = 0.5` at every size ``s``."""
    truth = torch.tensor([[1.0, 1.0]], dtype=dtype) * size
    mean = torch.tensor([[2.0, 1.0]], dtype=dtype) * size
    got = nse(mean, truth)
    assert got.dtype == dtype
    assert float(got[0]) == pytest.approx(0.5, rel=1e-6)  # was NaN (squares under- or overflowed)


def test_a_diverged_prediction_is_infinitely_wrong_not_nan():
    r"""A prediction with an infinite entry has :math:`\|m - t\| = \infty`, so its NSE is :math:`\infty` (as before
    the scaled norms), not NaN, which ``nanmean`` would drop and every comparison would pass (the scaled norm
    divided ``inf`` by its own maximum, ``inf``: NaN). A NaN entry stays NaN."""
    truth = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]], dtype=torch.float64)
    mean = torch.tensor([[1.0, float("inf")], [float("-inf"), 2.0], [float("nan"), 2.0]], dtype=torch.float64)
    got = nse(mean, truth)
    assert float(got[0]) == float("inf") and float(got[1]) == float("inf")  # was NaN
    assert torch.isnan(got[2])


def test_an_error_larger_than_the_dtype_holds_is_still_measured():
    r"""float32 ``mean = (1e38, 3e38)``, ``truth = (-3e38, 1)``: :math:`m - t = (4, 3) \cdot 10^{38}` overflows
    float32 (max 3.4e38), but the NSE is :math:`(4^2 + 3^2) / 3^2 = 2.778` (float64: the exact value), which the
    dtype holds (was NaN: inf / inf)."""
    mean = torch.tensor([[1e38, 3e38]], dtype=torch.float32)
    truth = torch.tensor([[-3e38, 1.0]], dtype=torch.float32)
    want = float(nse(mean.double(), truth.double())[0])
    assert want == pytest.approx(25 / 9, rel=1e-6)
    got = nse(mean, truth)
    assert got.dtype == torch.float32
    assert float(got[0]) == pytest.approx(want, rel=1e-6)


def test_fields_without_entries_are_a_clear_error():
    r"""``(B, 0)`` fields have no norm to compare: a ``ValueError`` naming the arguments and the shape (was an
    ``IndexError`` from ``amax`` inside the scaled norms; NaN before them)."""
    with pytest.raises(ValueError, match=r"`mean` and `truth` need at least one entry per field, got shape \(2, 0\)"):
        nse(torch.zeros(2, 0), torch.zeros(2, 0))

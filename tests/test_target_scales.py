r"""Target scales and degenerate targets (an audit): constant, all-zero and single targets give a scale-equivariant
answer or a warning that says what the model does and why; NaN/inf targets are refused naming the position."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from gpgeom._validation import check_tensor
from gpgeom.botorch import ExactGPModel
from gpgeom.models.funbat import FunBaT

DT = torch.float64


def _grid() -> tuple[torch.Tensor, torch.Tensor]:
    """A 6 x 5 grid of FunBaT coordinates: 20 training and 10 query entries."""
    g = torch.cartesian_prod(torch.arange(6, dtype=DT), torch.arange(5, dtype=DT))
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(0))
    return g[perm[:20]], g[perm[20:]]


def _funbat(X, y, Xq):
    model = FunBaT(2, max_sweeps=30, seed=0).fit(X, y, progress=False)
    mean, sd = model.predict(Xq, return_std=True)
    return mean[:, 0], sd[:, 0]


def test_funbat_constant_targets_are_scale_equivariant():
    r"""An exactly constant ``y`` has standard deviation 0 and was standardised by 1: the predictive std was absolute,
    about 2e-3 in the units of ``y`` whatever its size (the same for the constant 3.7 and 3.7 * 2^20, relative error
    of the std of the scaled fit 1 - 2^-20 against ``2^20`` times the unit fit), and no warning. The scale is floored
    at the rounding scale eps * max|y|: ``2^20 y`` predicts ``2^20`` times the mean and std (a power of two, so the
    two fits see the same standardised data), the std is below the constant's rounding, and a warning says so."""
    X, Xq = _grid()
    c = 2.0**20
    with pytest.warns(UserWarning, match=r"constant to rounding .* standardised by that rounding scale"):
        m1, s1 = _funbat(X, torch.full((20,), 3.7, dtype=DT), Xq)
    with pytest.warns(UserWarning, match=r"constant to rounding"):
        mc, sc = _funbat(X, torch.full((20,), 3.7 * c, dtype=DT), Xq)
    assert float((m1 - 3.7).abs().max()) <= 1e-14 and float((mc - 3.7 * c).abs().max()) <= 1e-14 * c
    torch.testing.assert_close(sc / c, s1, rtol=1e-10, atol=0)
    assert float(s1.max()) < torch.finfo(DT).eps * 3.7  # below the constant's rounding


def test_funbat_varying_targets_stay_equivariant_and_quiet():
    r"""Targets scaled by 1e-6 ... 1e6 (and shifted by 1e6): the mean and std scale (shift) with them, to 1e-12
    relative (audited, not changed), and no warning."""
    X, Xq = _grid()
    y = torch.sin(X[:, 0]) * torch.cos(0.7 * X[:, 1])
    m0, s0 = _funbat(X, y, Xq)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        for c in (1e-6, 1e6):
            m, s = _funbat(X, c * y, Xq)
            torch.testing.assert_close(m / c, m0, rtol=0, atol=1e-12 * float(m0.abs().max()))
            torch.testing.assert_close(s / c, s0, rtol=1e-12, atol=0)
        m, s = _funbat(X, y + 1e6, Xq)
        torch.testing.assert_close(m - 1e6, m0, rtol=0, atol=1e-8)


def test_funbat_zero_or_single_targets_warn_about_their_units():
    r"""With every entry zero, or a single observed entry, there is no scale: the std is set by the priors in the
    units of ``y`` (silently before). A warning names ``y`` and the cause; the single entry is still predicted as its
    value (the centring)."""
    X, Xq = _grid()
    with pytest.warns(UserWarning, match=r"Every observed entry of `y` is zero"):
        m, s = _funbat(X, torch.zeros(20, dtype=DT), Xq)
    assert float(m.abs().max()) == 0.0 and bool(torch.isfinite(s).all())
    with pytest.warns(UserWarning, match=r"single observed entry: `y` is centred but cannot be scaled"):
        m, _ = _funbat(X[:1], torch.tensor([0.25], dtype=DT), Xq)
    torch.testing.assert_close(m, torch.full_like(m, 0.25), rtol=0, atol=1e-12)


def test_nonfinite_targets_are_refused_naming_the_position():
    r"""NaN/inf targets were refused with a count only; the message now also names the first position and value."""
    y = torch.zeros(5, 2, dtype=DT)
    y[3, 1] = float("inf")
    with pytest.raises(
        ValueError, match=r"`train_Y` contains 1 NaN or infinite value\(s\) \(first at index \(3, 1\): inf\)"
    ):
        ExactGPModel(torch.rand(5, 1, dtype=DT), y)
    with pytest.raises(ValueError, match=r"`x` contains 2 NaN .* \(first at index 1: nan\)"):
        check_tensor("x", torch.tensor([0.0, float("nan"), float("inf")]))
    X, _ = _grid()
    yb = torch.zeros(20, dtype=DT)
    yb[7] = -float("inf")
    with pytest.raises(
        ValueError, match=r"`y` holds 1 infinite value\(s\) \(NaN marks a missing entry\) \(first at index 7: -inf\)"
    ):
        FunBaT(2).fit(X, yb, progress=False)


def test_rvgp_zero_vectors_warn():
    r"""All-zero training vectors have no scale (``y_scale`` 1): RVGP predicts zero with a prior std in the units of
    ``vectors``; it did so silently, now with a warning. Nonzero vectors scaled by 1e-6 and 1e6 predict the scaled
    mean and std (audited: 1e-8 relative)."""
    from gpgeom.datasets.vector_fields import sphere_vector_field
    from gpgeom.models.rvgp import RVGP

    s = sphere_vector_field(200, "mixed")
    tr, te = np.arange(0, 200, 4), np.arange(1, 200, 7)
    gp = RVGP(s.points, n_eigenpairs=16, dim=2)
    with pytest.warns(UserWarning, match=r"Every observed vector is zero"):
        gp.fit(tr, np.zeros((len(tr), 3)), restarts=0, max_iter=20)
    assert float(gp.predict(te).abs().max()) == 0.0
    fits = [
        RVGP(s.points, n_eigenpairs=16, dim=2, laplacian=gp.laplacian).fit(
            tr, c * s.vectors[tr], restarts=0, max_iter=40
        )
        for c in (1.0, 1e-6)
    ]
    (m0, s0), (m1, s1) = (f.predict(te, return_std=True) for f in fits)
    torch.testing.assert_close(m1.detach() / 1e-6, m0.detach(), rtol=0, atol=1e-6 * float(m0.abs().max()))
    torch.testing.assert_close(s1.detach() / 1e-6, s0.detach(), rtol=1e-5, atol=0)


def test_mmgp_zero_output_scalar_warns():
    r"""An output scalar that is zero on every training mesh got a prior std in its own units (0.02 on these plates),
    silently (MMGP silences the GP's all-zero warning, meant for the zero modes of fields); a warning now names the
    scalar; a fit without a zero scalar stays quiet."""
    from test_mmgp import _synthetic

    from gpgeom.models.mmgp import MMGP

    M, mu, U, w = _synthetic(8, seed=0)
    kw = {"n_modes_geometry": 2, "n_modes_fields": 2, "restarts": 0, "max_iter": 20, "floater_start": (0.0, 0.0)}
    w0 = np.concatenate([w, np.zeros((8, 1))], 1)
    with pytest.warns(UserWarning, match=r"Output scalar\(s\) \['dead'\] are zero on every training mesh"):
        MMGP(scalar_transform="none", **kw).fit(M, mu, U, w0, scalar_names=["a", "b", "dead"], progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        MMGP(scalar_transform="none", **kw).fit(M, mu, U, w, progress=False)

r"""``RGNP.calibrate`` on reference points of the hard (Dirichlet) boundary, where the lifted field :math:`u = b + d
\hat u` is exact by construction (:math:`d = 0`): such points say nothing of the model discrepancy. Data holding only
them are refused (a ``ValueError`` naming ``data``; before, the model was marked calibrated with the prior's
hyperparameters, scale 1 and nugget 0.1, or, where :math:`d` is 0 only to rounding, with hyperparameters fitted to
rounding errors), and a field of such points added to informative ones leaves the calibration as it was (before,
it moved the lengthscale by 17 % and the power from 0.84 to 0.98)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from gpgeom.engine.variational import ModelDiscrepancy
from gpgeom.models.rgnp import RGNP
from gpgeom.models.rgnp._checks import reference_fields
from gpgeom.pde import NonlinearPoisson1D

TINY_GIC = dict(lift_channels=4, lift_hidden=(8,), cnn_channels=(8,), mlp_hidden=(16,), grid_size=8)
KEYS = ("scale", "lengthscale", "nugget", "power")


def _shift(u, x, z, w):
    return u - z[:, :1]


def _zero_ends(x, w):  # d = x (1 - x): exactly 0 at x = 0 and x = 1
    return torch.zeros_like(x[..., 0]), x[..., 0] * (1 - x[..., 0])


@pytest.fixture(scope="module")
def poisson():
    m = RGNP.from_family(
        NonlinearPoisson1D(), hidden=(16, 16), n_freqs=4, gicnet=TINY_GIC, batch_size=4, rank=2,
        dtype=torch.float64, seed=0,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return m.fit(5, progress=False, seed=0)


def test_data_only_on_an_exact_zero_boundary_are_refused_and_the_model_is_left_as_it_was():
    m = RGNP(_shift, domain=(0.0, 1.0), z_bounds=([0.0], [1.0]), lift=_zero_ends, hidden=(8,), n_freqs=2,
             gicnet=TINY_GIC, seed=0).fit(2, progress=False, seed=0)  # fmt: skip
    x = torch.tensor([0.0, 1.0], dtype=torch.float64).repeat(3, 3)[..., None]  # (3, 6, 1): both ends
    data = {"x": x, "y": torch.zeros(3, 6, dtype=torch.float64), "z": torch.full((3, 1), 0.5, dtype=torch.float64)}
    data["w"] = None
    with pytest.raises(ValueError, match=r"`data` holds no point where the model can err: all 3 x 6 points lie on"):
        m.calibrate(data, seed=0)
    assert m.calibration_ is None and not bool(m.discrepancy.calibrated)  # was: calibrated, scale 1, nugget 0.1
    # a calibrated model keeps its calibration
    inside = {**data, "x": torch.linspace(0.1, 0.9, 6, dtype=torch.float64).repeat(3, 1)[..., None]}
    inside["y"] = torch.full((3, 6), 0.5, dtype=torch.float64)
    m.calibrate(inside, seed=0)
    before = dict(m.calibration_)
    with pytest.raises(ValueError, match=r"`data` holds no point"):
        m.calibrate(data, seed=0)
    assert m.calibration_ == before and bool(m.discrepancy.calibrated)


def test_data_only_where_the_lift_vanishes_to_rounding_are_refused(poisson):
    m = copy.deepcopy(poisson)
    z, w = m.sample_params(3)
    x = torch.tensor([-1.0, 1.0], dtype=torch.float64).repeat(3, 4)[..., None]
    assert 0 < float(m.lift(x, w)[1].abs().max()) < 1e-15  # cos(pi/2): 6e-17, not 0
    with pytest.raises(ValueError, match=r"`data` holds no point where the model can err"):
        m.calibrate({"x": x, "y": torch.zeros(3, 8, dtype=torch.float64), "z": z, "w": w}, seed=0)
    assert m.calibration_ is None  # was: calibrated to rounding errors (scale 0.013)


def test_a_field_on_the_boundary_adds_nothing_to_the_calibration(poisson):
    r"""The maximum a posteriori hyperparameters from six informative fields equal those from the same six plus a
    seventh whose twelve points all lie on the boundary (:math:`|d| = 6 \cdot 10^{-17}`): its errors are exact zeros
    by construction. Before, judged against its own largest :math:`|d|`, it counted and moved the lengthscale from
    3.57 to 4.17 and the power from 0.84 to 0.98."""
    x, y, z, w = reference_fields(poisson, None, 6, 12, seed=1)
    alone = copy.deepcopy(poisson).calibrate({"x": x, "y": y, "z": z, "w": w}, seed=0).calibration_
    xb = torch.tensor([-1.0, 1.0], dtype=torch.float64).repeat(6)[None, :, None]
    data = {"x": torch.cat([x, xb]), "y": torch.cat([y, torch.zeros(1, 12, dtype=torch.float64)]),
            "z": torch.cat([z, z[:1]]), "w": torch.cat([w, w[:1]])}  # fmt: skip
    both = copy.deepcopy(poisson).calibrate(data, seed=0).calibration_
    for k in KEYS:
        assert both[k] == pytest.approx(alone[k], rel=1e-8), (k, both[k], alone[k])


def test_the_discrepancy_refuses_errors_that_all_lie_on_the_boundary():
    F, n = 2, 4
    args = dict(errors=torch.zeros(F, n, dtype=torch.float64), base_cov=torch.zeros(F, n, n, dtype=torch.float64),
                x=torch.zeros(F, n, 1, dtype=torch.float64), rho=torch.ones(F, dtype=torch.float64))  # fmt: skip
    md = ModelDiscrepancy(torch.float64)
    with pytest.raises(ValueError, match=r"`d` is 0 \(to 1e-6 of its scale\) at all 8 points"):
        md.calibrate(d=torch.zeros(F, n, dtype=torch.float64), **args)
    with pytest.raises(ValueError, match=r"`d` is 0"):  # 1e-17 against a scale of 1 on the domain
        md.calibrate(d=torch.full((F, n), 1e-17, dtype=torch.float64), d_scale=torch.ones(F, dtype=torch.float64),
                     **args)  # fmt: skip
    assert not bool(md.calibrated)

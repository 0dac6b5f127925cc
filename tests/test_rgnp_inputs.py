r"""Input handling of RGNP found by an adversarial audit: padding of the inverse problem's point sets, the bounds of
the domain and the priors given as arrays, the fixed grid's number of points, non-finite fields of
``RGNP.residual``. Each test compares with an independent truth (the unpadded set, the same bounds as lists, a
count of the points) or checks the error's wording."""

from __future__ import annotations

import pytest
import torch

from gpgeom.models.rgnp import RGNP
from gpgeom.pde import NonlinearPoisson1D

SMALL_GIC = dict(lift_channels=4, lift_hidden=(8,), cnn_channels=(4,), mlp_hidden=(8,), grid_size=8)


def _poisson(**kw):
    torch.manual_seed(0)
    opts = dict(hidden=(8,), n_freqs=2, gicnet=SMALL_GIC, batch_size=2)
    opts.update(kw)
    return RGNP.from_family(NonlinearPoisson1D(), **opts).fit(1, progress=False, seed=0)


def test_inverse_padding_may_hold_nan_or_points_outside_the_domain():
    r"""``predict_inverse(..., mask=...)`` refused padded entries (``mask`` False) that were NaN ("`u` contains 1
    NaN ...; remove or impute them first") or outside the domain ("1 row(s) of `x` lie outside the domain"), though
    the mask exists to mark them and GICNet ignores them. Now only real points are checked, and the posterior equals
    that of the set without its padding."""
    m = _poisson()
    x = torch.tensor([[[0.1], [0.5], [0.0]], [[0.2], [-0.3], [0.7]]], dtype=torch.float64)
    u = torch.tensor([[0.3, 0.2, 0.0], [0.1, 0.4, 0.5]], dtype=torch.float64)
    w = torch.tensor([1.5], dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    truth = m.predict_inverse(x[:1, :2], u[:1, :2], w, return_std=True)  # the first set without its padding
    x_pad, u_pad = x.clone(), u.clone()
    x_pad[0, 2, 0], u_pad[0, 2] = 5.0, float("nan")
    mean, std = m.predict_inverse(x_pad, u_pad, w, mask=mask, return_std=True)
    torch.testing.assert_close((mean[:1], std[:1]), truth, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mean[1:], m.predict_inverse(x[1:], u[1:], w), rtol=1e-12, atol=1e-12)
    # real points are still checked, with the mask in the message
    u_bad = u.clone()
    u_bad[1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"`u` holds NaN .* at 1 real point\(s\) \(`mask` True\), e\.g\. u\[1, 1\]"):
        m.predict_inverse(x, u_bad, w, mask=mask)
    x_bad = x.clone()
    x_bad[1, 0, 0] = 5.0
    with pytest.raises(ValueError, match=r"row\(s\) of `x` lie outside the domain; e\.g\. x\[1, 0, 0\] = 5"):
        m.predict_inverse(x_bad, u, w, mask=mask)

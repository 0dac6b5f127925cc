r"""MMGP's GP targets (:meth:`gpgeom.models.mmgp.MMGP.fit`): the output scalars and field POD coefficients reach
the GPs in float64 whatever the model's dtype, and the GPs standardise them in float64
(:func:`gpgeom.botorch.exact_inputs.standardised_outputs`), so a float32 model learns the noise of scalars with a
large offset, not that of their float32 rounding.

Independent truth: the float64 model on the same data (the learned noise and the predictive standard deviations must
agree to float32's relative precision and the optimiser's tolerance), and the data's own noise level.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from test_mmgp import _synthetic

from gpgeom.models.mmgp import MMGP
from gpgeom.models.mmgp.latent_gp import noise_variances

OFFSET, NOISE = 1e6, 0.002


def _fit(dtype, M, mu, U, w, transform):
    model = MMGP(
        n_modes_geometry=2,
        n_modes_fields=2,
        restarts=0,
        max_iter=40,
        floater_start=(0.0, 0.0),
        dtype=dtype,
        scalar_transform=transform,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(M, mu, U, w, progress=False)


@pytest.mark.parametrize("transform", ["none", "log"])
def test_a_float32_model_learns_the_noise_of_output_scalars_with_a_large_offset(transform, tmp_path):
    # float32 rounds 1e6 to steps of 0.0625 (and log(1e6) to steps of 1e-6): the first scalar's noise sd was 0.0083
    # against the float64 model's 0.0031 ("none"; 5.9x its 3.1e-9 for "log"); now the noise agrees to 5e-4 relative
    # and the predictive std to 5e-4
    M, mu, U, w = _synthetic(12, seed=0)
    w = OFFSET + 0.1 * w + NOISE * np.random.default_rng(1).standard_normal(w.shape)
    Mt, mut, _, _ = _synthetic(2, seed=11)
    m64, m32 = (_fit(dt, M, mu, U, w, transform) for dt in (torch.float64, torch.float32))
    q = w.shape[1]
    n64 = torch.cat([noise_variances(g) for g in m64.gps_]).detach()[-q:].sqrt()
    n32 = torch.cat([noise_variances(g) for g in m32.gps_]).detach()[-q:].double().sqrt()
    scale = 1.0 if transform == "none" else 1.0 / OFFSET  # log w: the noise relative to w
    # the data's own noise, with the model error of 12 meshes on 2 geometry modes (0.0031)
    assert 0.5 * NOISE * scale < float(n64[0]) < 2.0 * NOISE * scale
    torch.testing.assert_close(n32, n64, rtol=1e-2, atol=0.0)
    p64, p32 = m64.predict(Mt, mut, return_std=True), m32.predict(Mt, mut, return_std=True)
    assert p32.scalars_std.dtype == torch.float32
    torch.testing.assert_close(p32.scalars_std.double(), p64.scalars_std, rtol=2e-2, atol=0.0)
    # the mean is rounded to float32: its spacing at 1e6 (0.0625), or for log w at log(1e6) = 13.8 (2^-20, about 1
    # in w: the log-normal mean of a float32 GP mean of log w)
    step = 0.0625 if transform == "none" else OFFSET * 2.0**-20
    assert float((p32.scalars.double() - p64.scalars).abs().max()) <= step
    assert m32.train_targets_.dtype == torch.float64  # kept as the GPs were given them
    m32.save(tmp_path / "m.pt")  # its GPs rebuilt from the float64 targets, their state loaded: bitwise
    back = MMGP.load(tmp_path / "m.pt").predict(Mt, mut, return_std=True)
    assert torch.equal(back.scalars, p32.scalars) and torch.equal(back.scalars_std, p32.scalars_std)

#!/usr/bin/env python3
r"""The Laplace covariances of float32 trajectory fits, against a dense float64 computation at the same knots.

``fit(..., compute_covariances=True)`` of a float32 WNOJ trajectory raised ``NotPSDError`` for knots 0.03 s apart
or closer, at the origin too: the normal matrix :math:`\mathsf J^\top\mathsf J` summed in float32 cancels (the motion
prior's blocks grow like :math:`\Delta t^{-5}` and are nearly singular, the measurements add far less), so its
rounding (``eps`` of the largest term) swamped the information the measurements add. The covariance step now sums
the float32 Jacobians' products in float64 and factorises there (:func:`gpgeom.engine.least_squares.gauss_newton`).

The truth: the dense Gauss-Newton matrix of the same factors, linearised in float64 by autograd at the float32 fit's
own knots, inverted densely. (The float32 *estimate* of a fine grid is not float64's: it stops about 1.5 posterior
standard deviations away, a limit of the float32 iterations, so the comparison is made at the same knots.)
"""

from __future__ import annotations

import pytest
import torch

from gpgeom.engine.factors import _whiten
from gpgeom.geometry.lie import so3_exp
from gpgeom.models.trajectory import PoseMeasurement, SE3Trajectory, SO3xR3Trajectory

DT = torch.float64


def _poses(T: float, seed: int, n: int = 41) -> PoseMeasurement:
    """Noisy poses of a gentle motion near the origin (rotations within 0.3 rad, positions within 0.5 m)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0.0, T, n, dtype=DT)
    ph = 6.28 * torch.rand(6, generator=g, dtype=DT)
    u = t / max(T, 1.0)
    w = torch.stack([0.3 * torch.sin(3.0 * u + ph[i]) for i in range(3)], -1)
    p = torch.stack([0.5 * torch.sin(2.0 * u + ph[3 + i]) for i in range(3)], -1)
    R = so3_exp(w + 0.01 * torch.randn(n, 3, generator=g, dtype=DT))
    p = p + 0.01 * torch.randn(n, 3, generator=g, dtype=DT)
    return PoseMeasurement(t, R=R, p=p, sigma_rot=0.01, sigma_pos=0.01)


def _dense_covariance(traj64, meas, X: torch.Tensor) -> torch.Tensor:
    r"""``(K s) x (K s)`` dense :math:`(\mathsf J^\top \mathsf J)^{-1}` at knots ``X`` (float64), ``J`` by autograd of
    the whitened residuals of ``traj64``'s factors in the tangent perturbation."""
    factors, _, _ = traj64.build_factors([meas])
    K, s = X.shape[0], traj64.tangent_dim
    G = X.new_zeros(0)

    def residuals(d: torch.Tensor) -> torch.Tensor:
        Xd = traj64.retract(X, d.reshape(K, s))
        return torch.cat([_whiten(f, f.residual(Xd[f.indices], G)).reshape(-1) for f in factors])

    J = torch.autograd.functional.jacobian(residuals, X.new_zeros(K * s), vectorize=True, strategy="forward-mode")
    return torch.linalg.inv(J.mT @ J)


@pytest.mark.parametrize("cls", [SO3xR3Trajectory, SE3Trajectory])
@pytest.mark.parametrize("dt", [0.01, 0.1, 1.0])
def test_float32_covariances_match_dense_float64(cls, dt):
    for seed in (0, 1):
        meas = _poses(20 * dt, seed)
        f32 = cls.uniform(0.0, 20 * dt, dt, dtype=torch.float32)
        f32.fit([meas], max_iter=20, compute_covariances=True, warn=False, progress=False)  # NotPSDError at 0.01 s
        assert f32.covariances_.dtype == torch.float32 and f32.cross_covariances_.dtype == torch.float32
        traj64 = cls(f32.knot_times.double())
        S = _dense_covariance(traj64, meas, f32.knots.double())
        K, s = f32.num_knots, f32.tangent_dim
        blocks = S.reshape(K, s, K, s).permute(0, 2, 1, 3)  # blocks[i, j] = Sigma_ij
        std = blocks[torch.arange(K), torch.arange(K)].diagonal(dim1=-2, dim2=-1).sqrt()  # K x s
        got = f32.covariances_.double().diagonal(dim1=-2, dim2=-1).sqrt()
        rel = float((got / std - 1.0).abs().max())
        assert rel < 1e-3, (dt, seed, rel)  # measured 5e-5 at 0.01 s, 1e-6 at 0.1 s
        # the neighbours' cross-covariances, as correlations
        cross = blocks[torch.arange(K - 1), torch.arange(1, K)]
        scale = std[:-1, :, None] * std[1:, None, :]
        err = float(((f32.cross_covariances_[:-1, 0].double() - cross) / scale).abs().max())
        assert err < 1e-3, (dt, seed, err)

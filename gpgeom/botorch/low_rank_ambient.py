r"""The dense algebra of the projected ambient part of :class:`~gpgeom.botorch.low_rank.LowRankSpectralGP`.

**Projected ambient part, nugget across the frames** (``ambient_kernel``; RVGP's default, whose why is in
:mod:`gpgeom.models.rvgp.ambient`). The latent field gets :math:`P_x a(x)`, :math:`a \sim \mathcal{GP}(0, \sigma_a^2
k(x, x') I_D)` on the points' coordinates, and, with ``noise_estimate`` and ``normal_noise``, :math:`e^\perp_i \sim
\mathcal N(0, \beta (I - P_i))`, :math:`\beta = \max(0, \sigma_\perp^2 - \sigma^2_{obs})` (the frames' error as latent
variance; the noise :math:`\sigma^2_{obs} P_i + \nu (I - P_i)`, :math:`\nu = \sigma_\perp^2 - \beta`). The kernel is
then full-rank: likelihood and predictions use dense Cholesky algebra (float64, :math:`O((N d)^3)`, the likelihood's
gradient in closed form, Rasmussen & Williams 2006, eq. 5.9) on the ``N d`` tangent components :math:`T_r^\top y_r`, and
per point closed forms across the frames; the means' part in the span is projected by :math:`P_x` once more, so it stays
tangent to the frames to rounding (at observed points the nugget adds the share :math:`\beta / (\beta + \sigma^2_{obs})`
of their observations' component across the frames, none when :math:`\beta = 0`).
"""

from __future__ import annotations

import math

import torch
from linear_operator import to_dense
from linear_operator.utils.cholesky import psd_safe_cholesky
from torch import Tensor

from gpgeom.engine.exact_mll import gaussian_quad_logdet

__all__: list[str] = []


class _AmbientAlgebra:
    r"""The dense algebra on the training observations (module docstring) as methods of
    :class:`~gpgeom.botorch.low_rank.LowRankSpectralGP`, which switches it on
    (:attr:`~gpgeom.botorch.low_rank.LowRankSpectralGP.uses_ambient`) in its likelihood and base moments; they read
    the model's ambient kernel and points, frames, rows and data, and cache the training factor by its ``_cached``."""

    def _ambient_gram(self, x1: Tensor, x2: Tensor | None = None) -> Tensor:
        r""":math:`\sigma_a^2 k(x_1, x_2)` ``(*b, q1, q2)`` between coordinates ``(*b, q, D_in)``; with
        ``x2=None`` the diagonal :math:`\sigma_a^2 k(x_1, x_1)` ``(*b, q1)``."""
        if x2 is None:
            return to_dense(self.ambient_kernel.forward(x1, x1, diag=True))
        batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2])
        x1, x2 = x1.expand(*batch, *x1.shape[-2:]), x2.expand(*batch, *x2.shape[-2:])
        return to_dense(self.ambient_kernel.forward(x1, x2))

    def _dense_factor(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        r"""The training side (scaled units, float64): the Cholesky factor ``(*b, N d, N d)`` of :math:`\Sigma`,
        :math:`\Sigma^{-1}\tilde y` and the rest of :meth:`_dense_covariance`."""
        S, yt, T, C = self._dense_covariance()
        L = psd_safe_cholesky(S)
        return L, torch.cholesky_solve(yt.unsqueeze(-1), L).squeeze(-1), yt, T, C

    def _dense_covariance(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""The covariance :math:`\Sigma` ``(*b, N d, N d)`` of the observations in tangent coordinates
        :math:`\tilde y_r = T_r^\top y_r` ``(*b, N d)``, their frames ``(*b, N, D, d)`` and the spectral rows in
        tangent coordinates :math:`C_r = T_r^\top R_r` ``(*b, N d, k)`` (scaled units), in float64 whatever the
        model's dtype (in float32 the rounding of :math:`\Sigma` exceeds the noise floor)."""
        idx, y = self.data_index, self.data_y.double()
        T = self._frames_at(idx)
        N, D, d, k = idx.shape[-1], self.output_dim, T.shape[-1], self.kernel.num_eigenpairs
        C = (T.mT @ self.rows(idx).double().reshape(*idx.shape, D, k)).reshape(*idx.shape[:-1], N * d, k)
        yt = (T.mT @ y.unsqueeze(-1)).reshape(*y.shape[:-2], N * d)
        tau2, s2 = self._noise_split()
        x = self.ambient_points[idx]
        point = self._ambient_gram(x, x) + tau2 * (idx.unsqueeze(-1) == idx.unsqueeze(-2)).to(x.dtype)
        G = torch.einsum("...iDa,...jDb->...iajb", T, T)
        S = (point[..., :, None, :, None] * G).reshape(*point.shape[:-2], N * d, N * d) + C @ C.mT
        return S + s2 * torch.eye(N * d, dtype=S.dtype, device=S.device), yt, T, C

    def _dense_log_marginal_likelihood(self) -> Tensor:
        r""":math:`\log p(y)` with the ambient part (``(*batch,)``): the tangent components by the dense Cholesky
        factor, the components across the frames as in the weight-space likelihood."""
        S, yt, _, _ = self._dense_covariance()
        N, D = self.data_index.shape[-1], self.output_dim
        q_perp, ld_perp = self._normal_likelihood_terms()
        lml = -0.5 * (gaussian_quad_logdet(S, yt) + q_perp + ld_perp + N * D * math.log(2 * math.pi))
        return lml.to(self.data_y.dtype)

    def _dense_cross(self, X: Tensor, T: Tensor, C: Tensor) -> Tensor:
        r"""The prior covariance ``(*b, q D, N d)`` (float64) of the latent field at ``X`` with the training
        observations in tangent coordinates (spectral, ambient and model-error parts)."""
        key, P, _, x = self._parse(X)
        idx = self.data_index
        same = (key.unsqueeze(-1) == idx.unsqueeze(-2)) & (key >= 0).unsqueeze(-1)
        point = self._ambient_gram(x.double(), self.ambient_points[idx]) + self._noise_split()[0] * same
        K = point[..., :, None, :, None] * torch.einsum("...qDE,...nEd->...qDnd", P.double(), T)
        rows, cols = K.shape[-4] * K.shape[-3], K.shape[-2] * K.shape[-1]  # named: -1 is ambiguous in 0-size batches
        return K.reshape(*K.shape[:-4], rows, cols) + self._rows_at(X).double() @ C.mT

    def _dense_moments(self, X1: Tensor, X2: Tensor | None) -> tuple[Tensor, Tensor]:
        r"""Posterior mean ``(*b, q1, D)`` at ``X1`` and covariance ``(*b, q1 D, q2 D)`` with ``X2`` (``X2=None``:
        variances ``(*b, q1, D)``), in scaled units. The part in the span is projected onto it once more
        (:math:`P_x`), which removes the rounding that :math:`\Sigma^{-1}\tilde y` (large where the noise is small)
        leaves across it, so that means stay tangent to the frames to machine precision."""
        dt = self.data_y.dtype
        L, a, _, T, C = self._cached("dense", self._dense_factor)
        K1 = self._dense_cross(X1, T, C)
        q1, D = X1.shape[-2], self.output_dim
        _, _, _, _, _, n_mean, n_cov = self._entries(X1)  # the nugget across the frames, given the data
        key1, P1, coef1, x1 = self._parse(X1)
        P1d = P1.double()
        mean = (P1d @ (K1 @ a.unsqueeze(-1)).reshape(*K1.shape[:-2], q1, D, 1)).squeeze(-1).to(dt) + n_mean
        V1 = torch.linalg.solve_triangular(L, K1.mT, upper=False)
        R1 = self._rows_at(X1).double()
        if X2 is None:  # per point D x D blocks, projected, then their diagonals
            Vb = V1.reshape(*V1.shape[:-1], q1, D)
            R1b = R1.reshape(*R1.shape[:-2], q1, D, R1.shape[-1])
            amb = (self._ambient_gram(x1.double()) + coef1)[..., None, None] * P1d
            B = R1b @ R1b.mT + amb - torch.einsum("...nia,...nib->...iab", Vb, Vb)
            var = torch.diagonal(P1d @ B @ P1d, dim1=-2, dim2=-1).to(dt)
            return mean, var + torch.diagonal(n_cov, dim1=-2, dim2=-1)
        V2 = V1 if X2 is X1 else torch.linalg.solve_triangular(L, self._dense_cross(X2, T, C).mT, upper=False)
        key2, P2, _, x2 = self._parse(X2)
        P2d = P2.double()
        same = self._same_inputs(X1, X2, key1, key2).to(torch.float64)
        gram = self._ambient_gram(x1.double(), x2.double())
        point = gram[..., :, None, :, None] * torch.einsum("...iab,...jbc->...iajc", P1d, P2d)
        point = point + torch.einsum("...iab,...ij->...iajb", coef1[..., None, None] * P1d, same)
        q2 = X2.shape[-2]
        cov = point.reshape(*point.shape[:-4], q1 * D, q2 * D) + R1 @ self._rows_at(X2).double().mT - V1.mT @ V2
        cov = torch.einsum("...iab,...ibjc,...jdc->...iajd", P1d, cov.reshape(*cov.shape[:-2], q1, D, q2, D), P2d)
        nug = torch.einsum("...iab,...ij->...iajb", n_cov, same.to(dt))
        return mean, (cov.to(dt) + nug).reshape(*cov.shape[:-4], q1 * D, q2 * D)

r"""The inputs of the base functions of :class:`~gpgeom.botorch.low_rank.LowRankSpectralGP` and what its moments
need at them.

An input is a point index (a float holding an integer, ``batch x q x 1``) or a point outside the basis, a row of
:meth:`~gpgeom.botorch.low_rank.LowRankSpectralGP.extended_inputs`: its key (the basis point it coincides with, or
-1), its ``D k`` tapered basis values :math:`\gamma(x)\phi(x)`, the ``D^2`` entries of the projector :math:`P_x`, the
prior fraction :math:`1 - \gamma^2` to restore and, with an ambient part, its ``D_in`` coordinates. At each entry the
base functions need the rows :math:`R` of the rank-``k`` part, the projector onto the span, the prior coefficient of
the latent variance outside the rank-``k`` and ambient parts, the shrinkage of the model-error and normal nugget
terms by the observations of the same point (:mod:`~gpgeom.botorch.low_rank_noise`), and which entries are the same
input.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__: list[str] = []


class _PointInputs:
    r"""The parsing of inputs as methods of :class:`~gpgeom.botorch.low_rank.LowRankSpectralGP`, which defines the
    base functions that use them and the public constructor of extended inputs
    (:meth:`~gpgeom.botorch.low_rank.LowRankSpectralGP.extended_inputs`)."""

    def _frames_at(self, index: Tensor) -> Tensor:
        r"""``(*b, q, D, d)`` float64 frames of the span at long ``index`` (the identity without frames)."""
        if self._frames64 is None:
            eye = torch.eye(self.output_dim, dtype=torch.float64, device=index.device)
            return eye.expand(*index.shape, -1, -1)
        return self._frames64[index]

    def _rows_at(self, X: Tensor) -> Tensor:
        r"""Rows :math:`R` ``(*b, q D, k)`` at ``X``: point indices ``(*b, q, 1)``, or points outside the basis
        (:meth:`extended_inputs`)."""
        if X.shape[-1] == 1:
            return self.rows(self.kernel._indices(X, "X"))
        D, k = self.output_dim, self.kernel.num_eigenpairs
        return self.rows(None, X[..., 1 : 1 + D * k].reshape(*X.shape[:-1], D, k))

    def _parse(self, X: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        r"""The entries of ``X`` (indices or :meth:`extended_inputs`): point keys ``(*b, q)`` (the index, or -1
        for a point outside the basis), projectors ``(*b, q, D, D)``, the prior coefficients :math:`\tau^2 +
        (1 - \gamma^2)\bar p` of the latent variance outside the rank-``k`` and ambient parts ``(*b, q)`` (scaled
        units), and coordinates ``(*b, q, D_in)`` (``None`` without an ambient part)."""
        D, k = self.output_dim, self.kernel.num_eigenpairs
        tau2 = self._noise_split()[0]
        if X.shape[-1] == 1:
            key = self.kernel._indices(X, "X")
            x = None if self.ambient_points is None else self.ambient_points[key]  # float64
            T = self._frames_at(key)
            return key, T @ T.mT, tau2.expand(key.shape), x
        key = torch.round(X[..., 0]).long()
        P = X[..., 1 + D * k : 1 + D * k + D * D].reshape(*X.shape[:-1], D, D).double()
        # an exact projector again (float32 inputs round it): its top-d eigenvectors, or the dense algebra's prior
        # variance, 10^1-10^2, minus nearly all of it, can go negative
        U = torch.linalg.eigh(0.5 * (P + P.mT))[1][..., D - self.tangent_dim :]
        P = U @ U.mT
        coef = tau2 + X[..., 1 + D * k + D * D] * self.mean_prior_variance()
        x = None if self.ambient_points is None else X[..., 2 + D * k + D * D :]
        return key, P, coef, x

    def _entries(self, X: Tensor) -> tuple[Tensor, ...]:
        r"""What the base functions need at the entries of ``X`` (:meth:`_parse`): their point keys, the shrinkage
        :math:`\alpha = m\tau^2/(m\tau^2 + \sigma^2_{obs})` of the model-error term by the ``m`` observations of
        the same point ``(*b, q)`` with their mean ``(*b, q, D)``, the coefficients of the latent variance outside
        the rank-``k`` part with the model error shrunk, :math:`\tau^2(1 - \alpha) + (1 - \gamma^2)\bar p`
        ``(*b, q)``, the projectors ``(*b, q, D, D)``, and the posterior mean ``(*b, q, D)`` and covariance
        ``(*b, q, D, D)`` of the nugget across the frames, all in scaled units."""
        D, n = self.output_dim, self.kernel.num_points
        key, P, coef, _ = self._parse(X)
        P = P.to(self.data_y.dtype)
        tau2, s2 = self._noise_split()
        beta, sp = self._normal_split()
        counts_q = torch.zeros(key.shape, dtype=P.dtype, device=P.device)
        ybar_q = torch.zeros(*key.shape, D, dtype=P.dtype, device=P.device)
        if self.data_index.shape[-1] and bool(tau2 + beta > 0):
            _, _, uniq, means, cnt = self._groups()
            db = self.data_index.shape[:-1]
            batch = torch.broadcast_shapes(key.shape[:-1], db)
            bid = torch.arange(db.numel(), device=key.device).reshape(*db, 1).expand(*batch, key.shape[-1])
            kq = key.expand(*batch, key.shape[-1])
            qkey = bid * n + kq.clamp_min(0)
            slot = torch.searchsorted(uniq, qkey.reshape(-1)).clamp_max(len(uniq) - 1).reshape(qkey.shape)
            found = (uniq[slot] == qkey) & (kq >= 0)
            counts_q = torch.where(found, cnt[slot], torch.zeros_like(cnt[slot]))
            ybar_q = means[slot] * found.unsqueeze(-1)
        alpha = counts_q * tau2 / (counts_q * tau2 + s2.detach())
        # across the frames: the nugget beta (I - P) shrunk by the observations of the point, alpha_perp
        Q = torch.eye(D, dtype=P.dtype, device=P.device) - P
        a_perp = counts_q * beta / (counts_q * beta + sp.detach())
        n_mean = a_perp.unsqueeze(-1) * (Q @ ybar_q.unsqueeze(-1)).squeeze(-1)
        return key, alpha, ybar_q, coef - tau2 * alpha, P, n_mean, (beta * (1 - a_perp))[..., None, None] * Q

    @staticmethod
    def _same_inputs(X1: Tensor, X2: Tensor, key1: Tensor, key2: Tensor) -> Tensor:
        r"""``(*b, q1, q2)``: whether entries of ``X1`` and ``X2`` are the same input (the same basis point, or
        identical rows for points outside the basis)."""
        same = (key1.unsqueeze(-1) == key2.unsqueeze(-2)) & (key1 >= 0).unsqueeze(-1)
        if X1.shape[-1] > 1 and X2.shape[-1] == X1.shape[-1]:
            rows = (X1.unsqueeze(-2) == X2.unsqueeze(-3)).all(-1) & (key1 < 0).unsqueeze(-1)
            same = same | rows
        return same

    def _scaled_rows(self, X: Tensor, alpha: Tensor) -> Tensor:
        r"""Rows :math:`(1 - \alpha) R` ``(*b, q D, k)``: what the posterior of :math:`v` contributes at ``X``."""
        R = self._rows_at(X)
        a = (1.0 - alpha).repeat_interleave(self.output_dim, dim=-1).unsqueeze(-1)
        return R * a

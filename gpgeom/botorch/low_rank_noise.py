r"""The noise model of :class:`~gpgeom.botorch.low_rank.LowRankSpectralGP`: the components of an observation across
tangent frames, the residual variance split into observation noise and model error, and the observations grouped by
point that the split needs.

**Tangent bases** (``tangent_frames``, RVGP). When the basis at point ``i`` spans only the ``d``-dimensional
column space of a frame :math:`T_i \in \mathbb R^{D \times d}` (:math:`P_i = T_i T_i^\top`), the components of an
observation across it carry no information on :math:`v`, and they are far less noisy than those within it (observed
vectors of a tangent field are tangent up to the frames' error). The noise is therefore (without the nugget
below) :math:`\mathcal N(0, \sigma^2 P_i + \sigma_\perp^2 (I - P_i))`: the log marginal likelihood of
:mod:`~gpgeom.botorch.low_rank` gets
:math:`\|P y\|^2/\sigma^2 + \|(I-P)y\|^2/\sigma_\perp^2` in place of :math:`\|y\|^2/\sigma^2` and
:math:`N_{pts}(d \log\sigma^2 + (D-d)\log\sigma_\perp^2)` in place of :math:`N \log\sigma^2`; the posterior of
:math:`v` is unchanged (it sees only :math:`P y`). One isotropic variance (``normal_noise=None``, the default and
the identity with the dense GP) averages the two and underestimates the in-plane variance by about :math:`d/D`.

**Model error** (``noise_estimate``). The rank-``k`` prior has no variance outside the span of its ``k``
features, so the white residual variance :math:`\sigma^2` learnt in the span holds both the observation noise and
what the truncated basis cannot represent at all (the spectrum beyond :math:`\lambda_k`, and the discretisation
error of the basis itself). With an estimate :math:`\hat\sigma^2_{obs}` of the observation noise made without the
basis (``noise_estimate``; RVGP: local polynomial fits), the residual is split into observation noise
:math:`\sigma^2_{obs} = \min(\sigma^2, \hat\sigma^2_{obs})` and a latent model-error variance
:math:`\tau^2 = \sigma^2 - \sigma^2_{obs}` (the nugget of geostatistics: micro-scale variation plus measurement
error, Cressie 1993, "Statistics for Spatial Data", sec. 2.3.1). The latent field is :math:`f = Rv + e`, one
:math:`e_i \sim \mathcal N(0, \tau^2 P_i)` per point (independent between points, shared by every observation and
query of the point), and :math:`y = f + \varepsilon`, :math:`\varepsilon \sim \mathcal N(0, \sigma^2_{obs} I)` in
the span (across it below).
The ``m_j`` observations of point ``j`` enter the posterior of :math:`v` through their mean, of variance
:math:`\tau^2 + \sigma^2_{obs}/m_j` in the span (row weights :math:`\omega = 1/(m_j\tau^2 + \sigma^2_{obs})`;
:math:`1/\sigma^2` for points observed once: the same posterior as without the split), and given :math:`v`,
:math:`e_j` has mean :math:`\alpha_j P_j (\bar y_j - R_j v)` and variance :math:`\tau^2(1-\alpha_j)P_j`,
:math:`\alpha_j = m_j\tau^2/(m_j\tau^2 + \sigma^2_{obs})`. Hence at query points

.. math:: \mu(x) = (1-\alpha_x) R_x \bar v + \alpha_x P_x \bar y_x, \qquad
   C(x, x') = (1-\alpha_x)(1-\alpha_{x'}) R_x F F^\top R_{x'}^\top + [x = x']\, \tau^2 (1 - \alpha_x) P_x,

(:math:`\alpha = 0` at unobserved points), the exact GP with the kernel :math:`RR^\top + \tau^2\,[i=j]\,P_i`, so
conditioning still equals the refit on the union. The same device as FITC's diagonal correction of degenerate
sparse GPs (Quinonero-Candela and Rasmussen, "A unifying view of sparse approximate Gaussian process regression",
JMLR 2005, sec. 6), with the missing variance measured from the residuals rather than from a full-rank kernel.

**One noise model everywhere** (with frames and ``normal_noise``). The likelihood gives an observation's components
across the frames the variance :math:`\sigma_\perp^2`: the latent nugget :math:`\beta = \max(0, \sigma_\perp^2 -
\sigma^2_{obs})` (:mod:`~gpgeom.botorch.low_rank`, with ``noise_estimate``; 0 without) plus the noise :math:`\nu =
\sigma_\perp^2 - \beta` (:attr:`~gpgeom.botorch.low_rank.LowRankSpectralGP.normal_observation_noise_variance`:
:math:`\min(\sigma_\perp^2, \sigma^2_{obs})` with ``noise_estimate``, :math:`\sigma_\perp^2` without). The noise of an
observation at :math:`x` is therefore :math:`\varepsilon_x \sim \mathcal N(0, \sigma^2_{obs} P_x + \nu (I - P_x))`, and
conditioning (default ``noise`` of ``condition_on_observations``, hence ``fantasize``), the refit
:meth:`~gpgeom.botorch.low_rank.LowRankSpectralGP.rebuild_with` and the predictive of a new observation
(``posterior(..., observation_noise=True)``: one ``D x D`` block per point; ``predict``: its diagonal) all use it. The
features and :math:`e_i` lie in the span, so the noise across it only enters the update of the nugget :math:`e^\perp_j`
by the ``m_j`` observations of point ``j``, gain :math:`\beta / (\beta + \nu / m_j)`; where :math:`\beta > 0`,
:math:`\nu = \sigma^2_{obs}`, so the latent posterior is the one isotropic noise gave, and only the predictive of
observations (and conditioning on a subset of a point's components) changed: the isotropic :math:`\sigma^2_{obs}` put
:math:`\max(\sigma_\perp^2, \sigma^2_{obs})` across the frames, far above :math:`\sigma_\perp^2` under tangent noise.
Without ``normal_noise`` or frames :math:`\nu = \sigma^2_{obs}`: the noise is isotropic.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__: list[str] = []


class _NoiseSplit:
    r"""The noise model's terms as methods of :class:`~gpgeom.botorch.low_rank.LowRankSpectralGP`, which defines
    its public face (:attr:`~gpgeom.botorch.low_rank.LowRankSpectralGP.model_error_variance`,
    :attr:`~gpgeom.botorch.low_rank.LowRankSpectralGP.normal_model_error_variance`,
    :attr:`~gpgeom.botorch.low_rank.LowRankSpectralGP.observation_noise_variance`): they read the model's noise,
    ``normal_noise``, ``noise_estimate``, frames and data, and cache the groups in ``_groups_cache``."""

    def _normal_energy(self, index: Tensor, y: Tensor) -> Tensor:
        r""":math:`\|(I - P_i) y_i\|^2` at the points of ``index`` ``(*b, N)`` for ``y`` ``(*b, N, D)``: ``(*b, N)``."""
        if self.tangent_frames is None:
            return y.new_zeros(y.shape[:-1])
        t = (self.tangent_frames[index].mT @ y.unsqueeze(-1)).squeeze(-1)
        return (y.square().sum(-1) - t.square().sum(-1)).clamp_min(0.0)

    def _normal_noise(self) -> Tensor:
        s2 = self.noise
        return s2 if self.normal_noise is None else torch.as_tensor(self.normal_noise, dtype=s2.dtype).to(s2)

    def _normal_split(self) -> tuple[Tensor, Tensor]:
        r""":math:`\beta` and the observation noise across the frames (scaled units): :math:`\sigma^2_{obs}` when
        :math:`\beta > 0`, else :math:`\sigma_\perp^2`: with ``normal_noise`` the :math:`\nu` that conditioning and
        the predictive of observations add
        (:attr:`~gpgeom.botorch.low_rank.LowRankSpectralGP.normal_observation_noise_variance`; differentiable here)."""
        beta = self.normal_model_error_variance
        return beta, (self.observation_noise_variance if bool(beta > 0) else self._normal_noise())

    def _normal_likelihood_terms(self) -> tuple[Tensor, Tensor]:
        r"""The quadratic form and log determinant ``(*batch,)`` of the components of the observations across the
        frames: per point observed ``m`` times, :math:`m|(I-P)\bar y|^2/(m\beta + s) + \sum_j |(I-P)(y_j -
        \bar y)|^2/s` and :math:`(D-d)(\log(m\beta + s) + (m-1)\log s)`, :math:`s` the noise of
        :meth:`_normal_split` (:math:`|(I-P)y|^2/\sigma_\perp^2` summed, and :math:`N(D-d)\log\sigma_\perp^2`,
        when :math:`\beta = 0`)."""
        counts, ybar = self._groups()[:2]
        beta, sp = self._normal_split()
        idx, D, d = self.data_index, self.output_dim, self.tangent_dim
        dev = self._normal_energy(idx, self.data_y - ybar).sum(-1)
        quad = (self._normal_energy(idx, ybar) / (counts * beta + sp)).sum(-1) + dev / sp
        logdet = (D - d) * (torch.log(counts * beta + sp) / counts + (1 - 1 / counts) * torch.log(sp)).sum(-1)
        return quad, logdet

    def _noise_split(self) -> tuple[Tensor, Tensor]:
        r""":math:`\tau^2` (detached) and :math:`\sigma^2_{obs} = \sigma^2 - \tau^2` (differentiable), scaled units."""
        tau2 = self.model_error_variance
        return tau2, self.noise - tau2

    def _row_precisions(self) -> Tensor:
        r"""``(*b, N D)`` weights :math:`\omega_r = 1/(m_r \tau^2 + \sigma^2_{obs})` of the observation rows, with
        :math:`m_r` the number of observations of the point of row ``r``: the group mean of ``m`` observations of
        one point has variance :math:`\tau^2 + \sigma^2_{obs}/m` in the span (``1/\sigma^2`` for distinct points)."""
        tau2, s2 = self._noise_split()
        counts = self._groups()[0]
        return (1.0 / (counts * tau2 + s2)).repeat_interleave(self.output_dim, dim=-1)

    def _groups(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        r"""The observations grouped by (batch member, point index), cached on the data tensors: per observation its
        group's size ``(*b, N)`` and mean ``(*b, N, D)``; the sorted keys ``batch_id * n + index`` ``(U,)``, means
        ``(U, D)`` and sizes ``(U,)`` of the groups."""
        cached = self.__dict__.get("_groups_cache")
        if cached is not None and cached[0] is self.data_index and cached[1] is self.data_y:
            return cached[2]
        idx, y = self.data_index, self.data_y
        batch, N, D, n = idx.shape[:-1], idx.shape[-1], self.output_dim, self.kernel.num_points
        bid = torch.arange(batch.numel(), device=idx.device).reshape(*batch, 1)
        key = (bid * n + idx).reshape(-1)
        uniq, inv, cnt = torch.unique(key, sorted=True, return_inverse=True, return_counts=True)
        yy = y.expand(*batch, N, D).reshape(-1, D).detach()
        means = torch.zeros(len(uniq), D, dtype=y.dtype, device=y.device).index_add_(0, inv, yy) / cnt[:, None]
        c = cnt.to(y.dtype)
        out = (c[inv].reshape(*batch, N), means[inv].reshape(*batch, N, D), uniq, means, c)
        self.__dict__["_groups_cache"] = (idx, y, out)
        return out

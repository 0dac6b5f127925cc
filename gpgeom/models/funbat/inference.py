r"""Conditional-EP sweeps of FunBaT: the messages to the latent functions, the core, bias and noise updates, the
ELBO.

Fang et al., "Functional Bayesian Tucker Decomposition for Continuous-indexed Tensor Data" (ICLR 2024) approximate
the posterior by the factorised :math:`q(\mathcal U^1) \cdots q(\mathcal U^K)\, q(\mathcal W)\, q(\tau)` and update it
by conditional expectation propagation. Each entry sends to :math:`u^k(x_{nk})` a Gaussian message obtained in closed
form as the expectation of its log-likelihood under the other factors, with :math:`a_n = \mathcal W_{(k)}
z_n^{\setminus k}`, :math:`z_n^{\setminus k} = \bigotimes_{j \ne k} u^j(x_{nj})`:

.. math::
    \Lambda_n = \mathbb E[\tau]\, \mathbb E[a_n a_n^\top], \qquad \eta_n = \mathbb E[\tau]\, y_n\, \mathbb E[a_n],
    \qquad
    \mathbb E[a_n a_n^\top] = \bar W_{(k)} M_n \bar W_{(k)}^\top + \big[\textstyle\sum_{pq}
    \operatorname{Cov}(W_{(k)rp}, W_{(k)r'q}) (M_n)_{pq}\big]_{rr'},

:math:`M_n = \bigotimes_{j \ne k} \mathbb E[u^j u^{j\top}]` (this keeps the core's posterior covariance, the second
term, which the authors' code drops). The messages of the entries that share a coordinate are summed, damped
(:math:`\Lambda \leftarrow \rho \Lambda_{\text{old}} + (1-\rho) \Lambda_{\text{new}}`, same for :math:`\eta`), and
become the sites of the state-space GP, whose posterior :mod:`~gpgeom.models.funbat.latent` computes exactly. For this
conditionally conjugate model the messages are the mean-field variational coordinate updates (Winn & Bishop,
"Variational message passing", JMLR 2005), so a sweep with no damping never decreases the evidence lower bound
(``FunBaT.elbo()``).

Core (Tucker): :math:`q(\operatorname{vec}\mathcal W) = N(\mu_W, \Sigma_W)`, :math:`\Sigma_W^{-1} = \sigma_W^{-2} I +
\mathbb E[\tau] \sum_n \mathbb E[z_n z_n^\top]`, :math:`\Sigma_W^{-1}\mu_W = \mathbb E[\tau] \sum_n y_n \mathbb E[z_n]`,
:math:`z_n = \bigotimes_k u^k(x_{nk})` (with :math:`y_n - \mathbb E b`). Noise: :math:`q(\tau) =
\mathrm{Gamma}(a_0 + N/2, b_0 + \tfrac12 \sum_n \mathbb E[(y_n - b - w^\top z_n)^2])`. Bias (an addition to the paper's
model): :math:`q(b) = N(\mu_b, v_b)`, :math:`v_b^{-1} = \sigma_b^{-2} + N \mathbb E\tau`, :math:`\mu_b = v_b
\mathbb E\tau \sum_n (y_n - \mathbb E f_n)`. The data parts of the core and noise updates are damped like the
messages. Student-t noise (``noise="student_t"``, :mod:`~gpgeom.models.funbat.noise`) multiplies every entry's
terms above (its message, its parts of the core and bias precisions and means, its expected squared residual in
:math:`q(\tau)`) by the weight :math:`w_n = \mathbb E[\lambda_n]` of its scale and then updates the scales
:math:`q(\lambda_n)` and the degrees of freedom, each a coordinate maximum of the ELBO; scales shared along a mode
(``scale_mode``) give every entry of a group the group's weight :math:`\mathbb E[\lambda_{g(n)}]`. CP fixes the core
to the superdiagonal of ones (no core update). Vectorisation is row-major
(``W.reshape(-1)``, the last mode fastest), matching ``torch.kron``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from gpgeom.models.funbat.latent import LatentPosterior, ModeScore, latent_posterior, latent_score
from gpgeom.models.funbat.noise import dof_update, gamma_kl, scale_elbo_terms, scale_factors

__all__ = ["kron_vecs", "kron_mats", "cp_products", "chunks"]


@dataclass
class _Mode:
    r"""The state of one mode: sorted unique coordinates ``t`` (``I``, normalised), the coordinate of every entry
    ``idx`` (``N``), the moments of :math:`u^k(t_i)` (``u_mean`` ``I x R``, ``u_cov`` ``I x R x R``), the damped
    messages ``lam`` (``I x R x R``) and ``eta`` (``I x R``), the smoothed posterior ``post``, and the score
    statistics of its marginal likelihood when the sweep computed them (``hyper_method="sweep"``)."""

    t: Tensor
    idx: Tensor | None
    u_mean: Tensor
    u_cov: Tensor
    lam: Tensor
    eta: Tensor
    post: LatentPosterior | None = None
    score: ModeScore | None = None


def kron_vecs(vs: Sequence[Tensor]) -> Tensor:
    r"""Row-wise Kronecker product of ``n x R_j`` tensors -> ``n x prod R_j`` (row-major, like ``torch.kron``)."""
    z = vs[0]
    for v in vs[1:]:  # the width named, not -1: a reshape cannot infer it when a batch dimension is 0
        z = (z[..., :, None] * v[..., None, :]).reshape(*z.shape[:-1], z.shape[-1] * v.shape[-1])
    return z


def kron_mats(Ms: Sequence[Tensor]) -> Tensor:
    r"""Row-wise Kronecker product of ``n x R_j x R_j`` tensors -> ``n x P x P``."""
    M = Ms[0]
    for S in Ms[1:]:
        a, b = M.shape[-1], S.shape[-1]
        M = (M[..., :, None, :, None] * S[..., None, :, None, :]).reshape(*M.shape[:-2], a * b, a * b)
    return M


def cp_products(mom: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    r"""Elementwise products over modes of per-mode moments ``(m_k, S_k)`` (``N x R``, ``N x R x R``;
    :math:`S_k = E[u u^\top]`): :math:`\prod_k m_{k,r}` and :math:`\prod_k S_{k,rr'}`. Summed over ``r`` (and
    ``r'``) they are the CP entry's :math:`E[f]` and :math:`E[f^2]` (modes independent)."""
    z, M = mom[0]
    for mj, Sj in mom[1:]:
        z = z * mj
        M = M * Sj
    return z, M


def chunks(n: int, per_item: int, budget: int = 4_000_000) -> list[slice]:
    r"""Slices of ``range(n)`` holding at most ``budget`` numbers of ``per_item`` each."""
    size = max(1, budget // max(per_item, 1))
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class _ConditionalEP:
    r"""The sweep updates of :class:`~gpgeom.models.funbat.model.FunBaT` (module docstring); state lives on the
    model."""

    _modes: list[_Mode]

    def _entry_moments(self, k: int) -> tuple[Tensor, Tensor]:
        r"""``N x R_k`` means and ``N x R_k x R_k`` second moments of :math:`u^k(x_{nk})` at the training entries."""
        md = self._modes[k]
        m = md.u_mean[md.idx]
        S = md.u_cov[md.idx] + m[:, :, None] * m[:, None, :]
        return m, S

    def _messages(self, k: int) -> tuple[Tensor, Tensor]:
        r"""Summed undamped messages ``(Lambda, eta)`` of mode ``k`` per unique coordinate: ``I x R x R``, ``I x R``."""
        md = self._modes[k]
        I, R = md.u_mean.shape
        idx = md.idx
        tau = self._tau_a / self._tau_b
        others = [j for j in range(len(self.ranks)) if j != k]
        ys = self._ys - self._bias_mean
        dtype, device = ys.dtype, ys.device
        lam = torch.zeros(I, R, R, dtype=dtype, device=device)
        eta = torch.zeros(I, R, dtype=dtype, device=device)
        if not others:  # one mode: y_n = w u(x_n)
            ones = torch.ones(self._N, 1, dtype=dtype, device=device)
            mom = [(ones, ones[:, :, None])]
        else:
            mom = [self._entry_moments(j) for j in others]
        w = self._scale_weights()  # Student-t: E[lambda_n] (noise.py); Gaussian: None (all ones)
        wys = ys if w is None else w * ys
        if self.decomposition == "cp":
            z, M = cp_products(mom)
            if not others:
                z, M = z.expand(-1, R), M.expand(-1, R, R)
            lam.index_add_(0, idx, M if w is None else w[:, None, None] * M)
            eta.index_add_(0, idx, wys[:, None] * z)
            return tau * lam, tau * eta
        # Tucker
        K = len(self.ranks)
        Wt = self._core_mean.reshape(self.ranks)
        Pk = math.prod(self.ranks) // R
        Wk = Wt.movedim(k, 0).reshape(R, Pk)
        Ct = self._core_cov.reshape(*self.ranks, *self.ranks)
        Ck = Ct.movedim((k, K + k), (0, K)).reshape(R, Pk, R, Pk)
        Ssum = torch.zeros(I, Pk, Pk, dtype=dtype, device=device)
        zsum = torch.zeros(I, Pk, dtype=dtype, device=device)
        for sl in chunks(self._N, Pk * Pk):
            z = kron_vecs([mj[sl] for mj, _ in mom])
            M = kron_mats([Sj[sl] for _, Sj in mom])
            Ssum.index_add_(0, idx[sl], M if w is None else w[sl, None, None] * M)
            zsum.index_add_(0, idx[sl], wys[sl, None] * z)
        lam = Wk @ Ssum @ Wk.T + torch.einsum("rpsq,ipq->irs", Ck, Ssum)
        eta = zsum @ Wk.T
        return tau * lam, tau * eta

    def _smooth(self, k: int) -> None:
        r"""The exact posterior of mode ``k`` given its current messages."""
        md = self._modes[k]
        kern = self.kernels[k]
        with torch.no_grad():
            if self._want_score:  # the same filter and smoother, plus the score statistics
                post, md.score = latent_score(kern, md.t, md.lam, md.eta)
            else:
                post = latent_posterior(kern, md.t, md.lam, md.eta)
        md.post = post
        s = kern.state_dim
        md.u_mean = post.mean[:, ::s]
        md.u_cov = post.cov[:, ::s, ::s]

    def _update_mode(self, k: int) -> None:
        md = self._modes[k]
        lam_new, eta_new = self._messages(k)
        rho = self.damping if md.post is not None else 0.0
        md.lam = rho * md.lam + (1.0 - rho) * lam_new
        md.eta = rho * md.eta + (1.0 - rho) * eta_new
        self._smooth(k)

    def _update_core_and_noise(self) -> Tensor:
        r"""Core (Tucker), bias and noise updates; returns the fitted training values (``N``)."""
        if self._scale_alpha is not None:  # Student-t scales (not the sweeps of a cut fit: scales.py)
            return self._update_weighted()
        K = len(self.ranks)
        y0 = self._ys
        ys = y0 - self._bias_mean  # the core sees the data minus the current bias
        dtype, device = ys.dtype, ys.device
        mom = [self._entry_moments(j) for j in range(K)]
        tau = self._tau_a / self._tau_b
        if self.decomposition == "cp":
            z, M = cp_products(mom)
            f_bar = z.sum(-1)
            Ef2 = M.sum((-1, -2)).sum()
        else:
            P = math.prod(self.ranks)
            A = torch.zeros(P, P, dtype=dtype, device=device)
            b = torch.zeros(P, dtype=dtype, device=device)
            zs = []
            for sl in chunks(self._N, P * P):
                z = kron_vecs([m[sl] for m, _ in mom])
                A += kron_mats([S[sl] for _, S in mom]).sum(0)
                b += (ys[sl, None] * z).sum(0)
                zs.append(z)
            Z = torch.cat(zs, 0)
            self._solve_core(tau * A, tau * b)
            mu = self._core_mean
            f_bar = Z @ mu
            EwwT = self._core_cov + mu[:, None] * mu[None, :]
            Ef2 = (EwwT * A).sum()
        # bias: q(b) = N(mu_b, v_b), prior N(0, bias_prior_variance), given E[f_n] (mean field)
        if self.bias:
            prec_b = 1.0 / self.bias_prior_variance + tau * self._N
            self._bias_var = 1.0 / prec_b
            self._bias_mean = tau * (y0 - f_bar).sum() / prec_b
        mb, vb = self._bias_mean, self._bias_var
        # sum_n E[(y_n - b - f_n)^2] = sum y^2 - 2 sum y (E f + E b) + sum E[f^2] + 2 E b sum E f + N E[b^2]
        sq = (
            y0.square().sum()
            - 2.0 * (y0 * (f_bar + mb)).sum()
            + Ef2
            + 2.0 * mb * f_bar.sum()
            + self._N * (mb.square() + vb)
        )
        self._update_noise(sq.clamp_min(0.0))
        return f_bar + self._bias_mean

    def _refresh_residuals(self) -> Tensor:
        r"""The expected squared residuals that :meth:`elbo` reads, recomputed at the current factors with nothing
        updated: :math:`e_n = \mathbb E_q[(y_n - b - f_n)^2] = y_n^2 - 2 y_n (\mathbb E f_n + \mathbb E b) +
        \mathbb E[f_n^2] + 2\, \mathbb E b\, \mathbb E f_n + \mathbb E[b^2]` (``N``), summed into ``_last_sq``
        (weighted by :math:`\mathbb E[\lambda_n]` with Student-t scales, which also keep the ``N`` values in
        ``_resid_sq``). Called after the final re-smoothing of a fit (:mod:`~gpgeom.models.funbat.fitting`), which
        moves :math:`q(\mathcal U^k)` after the sweep computed them. Returns the fitted training values
        :math:`\mathbb E f_n + \mathbb E b` (``N``), as a sweep's core update does."""
        K = len(self.ranks)
        y0 = self._ys
        mom = [self._entry_moments(j) for j in range(K)]
        if self.decomposition == "cp":
            z, M = cp_products(mom)
            f_bar, Ef2 = z.sum(-1), M.sum((-1, -2))
        else:
            mu = self._core_mean
            EwwT = self._core_cov + mu[:, None] * mu[None, :]
            P = mu.shape[0]
            sl_all = chunks(self._N, P * P)
            f_bar = torch.cat([kron_vecs([m[sl] for m, _ in mom]) @ mu for sl in sl_all])
            Ef2 = torch.cat([(kron_mats([S[sl] for _, S in mom]) * EwwT).sum((-1, -2)) for sl in sl_all])
        mb, vb = self._bias_mean, self._bias_var
        e = y0.square() - 2.0 * y0 * (f_bar + mb) + Ef2 + 2.0 * mb * f_bar + mb.square() + vb
        w = self._scale_weights()
        if w is None:  # Gaussian noise (the sum clamped, as in the sweep)
            self._last_sq = e.sum().clamp_min(0.0)
        else:
            self._resid_sq = e.clamp_min(0.0)
            self._last_sq = (w * self._resid_sq).sum()
        return f_bar + mb

    def _solve_core(self, lam: Tensor, eta: Tensor) -> None:
        r"""The core's Gaussian factor from this sweep's data message ``(lam, eta)`` (``P x P``, ``P``; damped)."""
        P = lam.shape[0]
        rho = self.damping_core if self._tau_data is not None else 0.0
        self._core_lam = rho * self._core_lam + (1.0 - rho) * lam
        self._core_eta = rho * self._core_eta + (1.0 - rho) * eta
        prec = self._core_lam + torch.eye(P, dtype=lam.dtype, device=lam.device) / self.core_prior_variance
        L = torch.linalg.cholesky(0.5 * (prec + prec.T))
        self._core_cov = torch.cholesky_inverse(L)
        self._core_mean = torch.cholesky_solve(self._core_eta[:, None], L)[:, 0]

    def _update_noise(self, sq: Tensor) -> None:
        r""":math:`q(\tau)` from the (weighted) sum of expected squared residuals ``sq`` (0-dim; damped; kept after
        the first estimate when ``learn_noise`` is off, while ``sq`` still enters the ELBO)."""
        self._last_sq = sq
        if not self.learn_noise and self._tau_data is not None:
            return
        a0, b0 = self.noise_prior
        data = torch.stack([torch.tensor(0.5 * self._N, dtype=sq.dtype, device=sq.device), 0.5 * sq])
        rho = self.damping_tau if self._tau_data is not None else 0.0
        self._tau_data = data if self._tau_data is None else rho * self._tau_data + (1.0 - rho) * data
        self._tau_a = a0 + self._tau_data[0]
        self._tau_b = b0 + self._tau_data[1]

    def _scale_weights(self) -> Tensor | None:
        r"""``N`` weights :math:`\mathbb E[\lambda_n]` of the Student-t scale mixture (:math:`\mathbb
        E[\lambda_{g(n)}]` with ``scale_mode``; :mod:`~gpgeom.models.funbat.noise`); ``None`` for Gaussian noise
        and in the sweeps of a cut fit (:mod:`~gpgeom.models.funbat.scales`)."""
        if self._scale_alpha is None:
            return None
        w = self._scale_alpha / self._scale_beta
        return w if self._scale_groups is None else w[self._scale_groups]  # shared scales: the group's weight

    def _update_weighted(self) -> Tensor:
        r"""The core, bias and noise updates of the Student-t model, every entry weighted by :math:`w_n =
        \mathbb E[\lambda_n]`, then the scales :math:`q(\lambda_n)` (or the shared :math:`q(\lambda_g)` with
        ``scale_mode``) and (when learned) the degrees of freedom (:mod:`~gpgeom.models.funbat.noise`); returns the
        fitted training values (``N``)."""
        K = len(self.ranks)
        y0 = self._ys
        ys = y0 - self._bias_mean
        dtype, device = ys.dtype, ys.device
        w = self._scale_weights()
        mom = [self._entry_moments(j) for j in range(K)]
        tau = self._tau_a / self._tau_b
        if self.decomposition == "cp":
            z, M = cp_products(mom)
            f_bar, Ef2 = z.sum(-1), M.sum((-1, -2))
        else:
            P = math.prod(self.ranks)
            A = torch.zeros(P, P, dtype=dtype, device=device)
            b = torch.zeros(P, dtype=dtype, device=device)
            zs = []
            for sl in chunks(self._N, P * P):
                z = kron_vecs([m[sl] for m, _ in mom])
                A += (w[sl, None, None] * kron_mats([S[sl] for _, S in mom])).sum(0)
                b += ((w[sl] * ys[sl])[:, None] * z).sum(0)
                zs.append(z)
            self._solve_core(tau * A, tau * b)
            mu = self._core_mean
            f_bar = torch.cat(zs, 0) @ mu
            EwwT = self._core_cov + mu[:, None] * mu[None, :]
            sl_all = chunks(self._N, P * P)
            Ef2 = torch.cat([(kron_mats([S[sl] for _, S in mom]) * EwwT).sum((-1, -2)) for sl in sl_all])
        if self.bias:
            prec_b = 1.0 / self.bias_prior_variance + tau * w.sum()
            self._bias_var = 1.0 / prec_b
            self._bias_mean = tau * (w * (y0 - f_bar)).sum() / prec_b
        mb, vb = self._bias_mean, self._bias_var
        # e_n = E[(y_n - b - f_n)^2] = y^2 - 2 y (E f + E b) + E[f^2] + 2 E b E f + E[b^2]
        e = (y0.square() - 2.0 * y0 * (f_bar + mb) + Ef2 + 2.0 * mb * f_bar + mb.square() + vb).clamp_min(0.0)
        self._update_noise((w * e).sum())
        self._resid_sq = e
        if self._scales_held:  # scale_fit="refit": the scales are known weights (scales.py)
            return f_bar + self._bias_mean
        tau_mean = self._tau_a / self._tau_b  # with scale_mode: one scale per unique coordinate of that mode
        self._scale_alpha, self._scale_beta = scale_factors(
            e, tau_mean, self._dof, self._scale_groups, self._scale_counts
        )
        if self.dof is None:
            self._dof = dof_update(self._scale_alpha, self._scale_beta)
        return f_bar + self._bias_mean

    def elbo(self) -> float:
        r"""The evidence lower bound of the current factors (standardised units), :math:`\mathbb E_q[\log p(y \mid
        \cdot)] - \sum_k \mathrm{KL}(q(\mathcal U^k) \| p(\mathcal U^k)) - \mathrm{KL}_W - \mathrm{KL}_b -
        \mathrm{KL}_\tau`. For the GP factors :math:`q = p \cdot \text{site} / Z`, so :math:`\mathrm{KL} =
        \mathbb E_q[\log \text{site}] - \log Z` with :math:`\log Z` from the Kalman filter of the
        pseudo-observations. Without damping and hyperparameter steps no sweep decreases it (coordinate ascent)."""
        self._check_fitted()
        a, b = self._tau_a, self._tau_b
        a0, b0 = self.noise_prior
        N = self._N
        e_log_tau = torch.digamma(a) - b.log()
        if self._scale_alpha is None:  # Gaussian noise, or the sweeps of a cut fit
            out = 0.5 * N * (e_log_tau - math.log(2 * math.pi)) - 0.5 * (a / b) * self._last_sq
        else:  # the scale mixture (noise.py): weighted squares with the current q(lambda), E log lambda, KL
            w = self._scale_weights()
            counts = None if self._scale_groups is None else self._scale_counts
            half_e_log, kl = scale_elbo_terms(self._scale_alpha, self._scale_beta, self._dof, counts)
            out = 0.5 * N * (e_log_tau - math.log(2 * math.pi)) + half_e_log
            out = out - 0.5 * (a / b) * (w * self._resid_sq).sum() - kl
        out = out - gamma_kl(a, b, a0, b0)
        if self.decomposition == "tucker":
            P = self._core_mean.numel()
            v = self.core_prior_variance
            logdet = torch.linalg.slogdet(self._core_cov)[1]
            out = out - 0.5 * (
                self._core_cov.diagonal().sum() / v + self._core_mean.square().sum() / v - P + P * math.log(v) - logdet
            )
        if self.bias:
            v = self.bias_prior_variance
            mb, vb = self._bias_mean, self._bias_var
            out = out - 0.5 * ((vb + mb.square()) / v - 1.0 + math.log(v) - vb.log())
        for md in self._modes:
            m, C = md.u_mean, md.u_cov
            S = C + m[:, :, None] * m[:, None, :]
            e_log_site = -0.5 * (md.lam * S).sum() + (md.eta * m).sum()
            out = out - (e_log_site - md.post.log_normalizer)
        return float(out)

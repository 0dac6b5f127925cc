r"""The posterior of one mode's latent function given its pseudo-observations, and the objectives of its
hyperparameters.

State-space prior (Fang et al., "Functional Bayesian Tucker Decomposition for Continuous-indexed Tensor Data",
ICLR 2024: each latent function is a Matérn GP written as a linear SDE, Hartikainen & Särkkä 2010).
A Matérn-:math:`\nu` component :math:`u_r = H x^r` has state dimension :math:`s = \nu + 1/2`
(:class:`gpgeom.kernels.markov.MaternMarkovKernel`; a categorical mode's values are a chain of state dimension 1,
:class:`gpgeom.kernels.categorical.CategoricalMarkovKernel`, and all below holds for it unchanged).
Mode :math:`k` stacks its :math:`R_k` independent components,
:math:`x = (x^1, \dots, x^{R_k}) \in \mathbb R^D`, :math:`D = R_k s` (component :math:`r` occupies entries
``r*s : (r+1)*s``, its value :math:`u_r` is entry ``r*s``), with block-diagonal :math:`\Phi(\Delta)`, :math:`Q(\Delta)`
and :math:`P_\infty`, on the sorted unique training coordinates :math:`t_1 < \dots < t_{I_k}` of the mode.

Posterior given the messages (the paper's conditional EP). The entries send :math:`u^k(t_i)` Gaussian messages in
natural parameters :math:`(\Lambda_i, \eta_i)` (:mod:`~gpgeom.models.funbat.inference`); the approximate posterior of
the mode is the tilted Gaussian :math:`q(\mathcal U^k) \propto p(\mathcal U^k) \prod_i \exp(-\tfrac12 u^k(t_i)^\top
\Lambda_i u^k(t_i) + \eta_i^\top u^k(t_i))`, computed exactly by :func:`gpgeom.engine.sites.node_site_posterior`
(associative-scan Kalman filter with one step per coordinate and RTS smoother, :math:`O(I_k D^3)`):
:func:`latent_posterior`. Its output
is a :class:`~gpgeom.engine.sites.SitePosterior` (``LatentPosterior`` here): state means, covariances, lag-one
cross-covariances, node gains, and the log likelihood of the pseudo-observations.

Hyperparameters (not in the paper, whose code fixes them): each mode's lengthscale and variance maximise the
log marginal likelihood of its current pseudo-observations, :math:`\log \int p(\mathcal U^k \mid \theta_k)
\prod_i t_i\, \mathrm d\mathcal U^k`, the part of the EP evidence that depends on them. Three objectives:
:func:`joint_log_likelihood` (the likelihood itself, every mode in one batched Kalman filter, differentiated by
autograd through the filter), :func:`latent_score` with :func:`score_surrogate` (the same likelihood from one filter
and smoother without autograd, and its exact gradient in closed form, :mod:`gpgeom.engine.sites` "Score"), and
:func:`expected_log_prior` (an EM step: by Fisher's identity it has the likelihood's gradient at the current values).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from gpgeom._validation import check_increasing
from gpgeom.engine.sites import (
    SiteChain,
    SitePosterior,
    node_site_posterior,
    site_chain,
    site_log_likelihoods,
    site_posterior,
    site_score,
)
from gpgeom.kernels.sde import MarkovKernel

__all__ = [
    "LatentPosterior",
    "latent_posterior",
    "mode_prior",
    "mode_sites",
    "joint_log_likelihood",
    "expected_log_prior",
    "latent_score",
    "score_surrogate",
    "ModeScore",
    "block_diagonal",
    "value_map",
]

#: The smoothed posterior of one mode (:class:`gpgeom.engine.sites.SitePosterior`): ``mean`` ``I x D``, ``cov``
#: ``I x D x D``, ``cross`` and ``gain`` ``(I-1) x D x D``, ``log_likelihood`` and ``log_normalizer`` (0-dim).
LatentPosterior = SitePosterior


def block_diagonal(M: Tensor, R: int) -> Tensor:
    r"""``... x s x s`` -> ``... x (R s) x (R s)`` block-diagonal with ``R`` copies of ``M``."""
    s = M.shape[-1]
    eye = torch.eye(R, dtype=M.dtype, device=M.device)
    out = eye[:, None, :, None] * M[..., None, :, None, :]  # ... x R x s x R x s
    return out.reshape(*M.shape[:-2], R * s, R * s)


def value_map(R: int, s: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    r"""The ``R x D`` output map :math:`H` with :math:`u_r = x_{r s}` (the value entry of every component)."""
    H = torch.zeros(R, R * s, dtype=dtype, device=device)
    H[torch.arange(R), torch.arange(R) * s] = 1.0
    return H


def mode_sites(lam: Tensor, eta: Tensor, s: int) -> SiteChain:
    r"""The pseudo-observations :math:`(\Lambda_i, \eta_i)` (``I x R x R``, ``I x R``) on the values of ``R``
    components of state dimension ``s``, as an engine :class:`~gpgeom.engine.sites.SiteChain`."""
    R = eta.shape[-1]
    return site_chain(lam, eta, value_map(R, s, eta.dtype, eta.device))


def mode_prior(kernel: MarkovKernel, t: Tensor, R: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""``(Phi, Q, m0, P0)`` of ``R`` independent components with prior ``kernel`` on the sorted coordinates ``t``:
    ``(I-1) x D x D`` twice, ``D`` zeros and the stationary ``D x D`` covariance (block-diagonal)."""
    check_increasing("t", t, strict=False)
    s = kernel.state_dim
    D = R * s
    dtype, device = t.dtype, t.device
    P0 = block_diagonal(kernel.stationary_covariance(), R)
    m0 = torch.zeros(D, dtype=dtype, device=device)
    if t.shape[0] < 2:
        empty = torch.zeros(0, D, D, dtype=dtype, device=device)
        return empty, empty, m0, P0
    Phi, Q = kernel.transition(t[1:] - t[:-1])  # (I-1) x s x s
    return block_diagonal(Phi, R), block_diagonal(Q, R), m0, P0


def latent_posterior(
    kernel: MarkovKernel,
    t: Tensor,
    lam: Tensor,
    eta: Tensor,
    *,
    smooth: bool = True,
    parallel: bool | None = None,
    method: str = "node",
) -> LatentPosterior:
    r"""Exact posterior of :math:`R` independent GP components :math:`u = (u_1, \dots, u_R)` with prior ``kernel``
    given Gaussian pseudo-observations in natural parameters at sorted coordinates.

    The target density is :math:`p(u) \prod_i \exp(-\tfrac12 u(t_i)^\top \Lambda_i u(t_i) + \eta_i^\top u(t_i))`,
    computed in :math:`O(I (R s)^3)` by the node-level associative-scan filter and smoother
    (:func:`gpgeom.engine.sites.node_site_posterior`, ``method="node"``, one step per coordinate), or by
    :func:`gpgeom.engine.sites.site_posterior` (``method="scalar"``: ``R`` scalar observations per coordinate,
    :math:`O(I R (R s)^3)`, sequential below ``PARALLEL_THRESHOLD`` steps). Both are exact; they agree to rounding.

    Args:
        kernel: The (unbatched) Markov kernel shared by the ``R`` components.
        t: ``I`` strictly increasing coordinates.
        lam: ``I x R x R`` symmetric positive semi-definite precisions :math:`\Lambda_i`.
        eta: ``I x R`` precision-weighted means :math:`\eta_i` (in the range of :math:`\Lambda_i`).
        smooth: Also run the smoother (``False``: only the log likelihood, for hyperparameter fitting).
        parallel: ``method="scalar"`` only: associative-scan filter/smoother (``None``: when the chain has
            ``>= PARALLEL_THRESHOLD`` steps).
        method: ``"node"`` (default; a chain of one coordinate always takes ``"scalar"``) or ``"scalar"``.

    Returns:
        A :class:`LatentPosterior` (``mean``, ``cov``, ``cross``, ``gain`` are ``None`` when ``smooth=False``).
    """
    if method not in ("node", "scalar"):
        raise ValueError(f"`method` must be 'node' or 'scalar', got {method!r}.")
    check_increasing("t", t)
    R = eta.shape[-1]
    s = kernel.state_dim
    Phi, Q, m0, P0 = mode_prior(kernel, t, R)
    if method == "node" and t.shape[0] > 1:
        H = value_map(R, s, eta.dtype, eta.device)
        return node_site_posterior(lam.detach(), eta.detach(), H, Phi, Q, m0, P0, smooth=smooth)
    sites = mode_sites(lam.detach(), eta.detach(), s)
    return site_posterior(sites, Phi, Q, m0, P0, smooth=smooth, parallel=parallel)


def joint_log_likelihood(
    kernels: Sequence[MarkovKernel],
    ts: Sequence[Tensor],
    sites: Sequence[SiteChain] | Sequence[tuple[Tensor, Tensor]],
) -> Tensor:
    r"""Log likelihoods (``K``) of every mode's pseudo-observations, differentiable with respect to the kernels.

    Two evaluations, by the type of ``sites``:

    * :func:`mode_sites` chains: ONE batched engine Kalman filter over all modes
      (:func:`gpgeom.engine.sites.site_log_likelihoods`), differentiated by autograd through the filter (memory
      proportional to the chains times the filter's intermediate tensors);
    * ``(lam, eta)`` pairs (``I_k x R_k x R_k``, ``I_k x R_k``): per mode one filter and smoother without autograd
      (:func:`latent_score`) for the value and the closed-form score for the gradient (:func:`score_surrogate`):
      the returned tensor has the value of the log likelihood and its exact gradient at the kernels' current
      hyperparameters (time and memory linear in :math:`I_k`, stable for any spacing of the coordinates).

    The chains of :func:`mode_sites` are built once per hyperparameter step, the priors at every evaluation.
    """
    if sites and not isinstance(sites[0], SiteChain):
        out = []
        for kern, t, (lam, eta) in zip(kernels, ts, sites, strict=True):
            post, score = latent_score(kern, t, lam, eta)
            surrogate = score_surrogate(kern, t, score)
            out.append(post.log_likelihood + (surrogate - surrogate.detach()))
        return torch.stack(out)
    priors = [mode_prior(k, t, ch.R) for k, t, ch in zip(kernels, ts, sites, strict=True)]
    return site_log_likelihoods(list(sites), priors)


def expected_log_prior(
    kernel: MarkovKernel, t: Tensor, post: LatentPosterior, score: ModeScore | None = None
) -> Tensor:
    r"""EM objective of the hyperparameters: :math:`\mathbb E_{q}[\log p(x_{1:I} \mid \theta)]` of the ``R``
    independent components under a smoothed posterior ``post`` (held fixed), summed over components:

    .. math::
        \sum_r \Big( \mathbb E \log N(x^r_1; 0, P_\infty) + \sum_{i=1}^{I-1}
        \mathbb E \log N(x^r_{i+1}; \Phi_i x^r_i, Q_i) \Big), \qquad
        \mathbb E[(x_{i+1} - \Phi x_i)(\cdot)^\top] = P_{i+1} - \Phi C_i - C_i^\top\Phi^\top + \Phi P_i \Phi^\top
        + d_i d_i^\top,

    :math:`d_i = m_{i+1} - \Phi_i m_i`, :math:`C_i = \operatorname{Cov}(x_i, x_{i+1})` (from the smoother's gains).
    When ``post`` is the exact posterior for the current :math:`\theta_0`, the gradient of this function at
    :math:`\theta_0` equals the gradient of the pseudo-observations' log marginal likelihood (Fisher's identity),
    and maximising it increases that likelihood (EM; Dempster, Laird & Rubin 1977). It costs :math:`O(I R s^3)`
    batched, no Kalman recursion.

    The expectation above cancels catastrophically when :math:`Q_i` is small (dense coordinates: the terms are
    :math:`O(1)`, their sum :math:`O(Q_i)`). With ``score`` (:func:`latent_score` at :math:`\theta_0`, the same
    posterior) it is evaluated in the stable form of :mod:`gpgeom.engine.sites` ("Score"): with
    :math:`\Delta_i = \Phi_i(\theta) - \Phi_i(\theta_0)`, :math:`Q^0_i = Q_i(\theta_0)` and the summed
    statistics of :class:`ModeScore`,

    .. math::
        \sum_r \mathbb E[(x^r_{i+1} - \Phi_i x^r_i)(\cdot)^\top] = R Q^0_i - Q^0_i M_{i+1} Q^0_i
        - \Delta_i N_{i+1}^\top Q^0_i - Q^0_i N_{i+1} \Delta_i^\top + \Delta_i S_i \Delta_i^\top,

    in which no :math:`O(1)` terms cancel.

    Args:
        kernel: The kernel (differentiable parameters).
        t: ``I`` sorted coordinates.
        post: :func:`latent_posterior` output (treated as constants).
        score: Optional :func:`latent_score` statistics of ``post`` (the stable form).

    Returns:
        0-dim tensor (without the :math:`-\tfrac12 I R s \log 2\pi` constant).
    """
    check_increasing("t", t, strict=False)
    I, D = post.mean.shape
    s = kernel.state_dim
    R = D // s
    dtype = post.mean.dtype
    m = post.mean.detach().reshape(I, R, s)
    P = post.cov.detach().reshape(I, R, s, R, s).diagonal(dim1=1, dim2=3).permute(0, 3, 1, 2)  # I x R x s x s
    Pinf = kernel.stationary_covariance()
    L0 = torch.linalg.cholesky(Pinf)
    S1 = P[0] + m[0, :, :, None] * m[0, :, None, :]  # R x s x s
    out = -R * L0.diagonal().log().sum() - 0.5 * torch.cholesky_solve(S1, L0).diagonal(dim1=-2, dim2=-1).sum()
    if I > 1:
        Phi, Q = kernel.transition(t[1:] - t[:-1])  # (I-1) x s x s
        L = torch.linalg.cholesky(Q)  # (I-1) x s x s; raises when a tiny step makes Q numerically singular
        out = out - R * L.diagonal(dim1=-2, dim2=-1).log().sum()
        if score is not None:
            Q0, Dl = score.Q, Phi - score.Phi
            QN = Q0 @ score.N
            E = R * Q0 - Q0 @ score.M @ Q0 - Dl @ QN.mT - QN @ Dl.mT + Dl @ score.S[:-1] @ Dl.mT
            sol = torch.cholesky_solve(E, L)
        else:
            C = post.cross.detach().reshape(I - 1, R, s, R, s).diagonal(dim1=1, dim2=3).permute(0, 3, 1, 2)
            Phi_ = Phi[:, None]
            d = m[1:] - (Phi_ @ m[:-1, :, :, None])[..., 0]  # (I-1) x R x s
            PC = Phi_ @ C
            E = P[1:] - PC - PC.transpose(-1, -2) + Phi_ @ P[:-1] @ Phi_.transpose(-1, -2)
            E = E + d[..., :, None] * d[..., None, :]
            sol = torch.cholesky_solve(E, L[:, None].expand(I - 1, R, s, s))  # Q_i^{-1} E_{i,r}
        out = out - 0.5 * sol.diagonal(dim1=-2, dim2=-1).sum()
    return out.to(dtype)


class ModeScore(NamedTuple):
    r"""The score statistics of one mode (:func:`latent_score`), summed over its ``R`` components (``s x s``
    blocks), with the transitions of the hyperparameters they were computed at.

    Attributes:
        M0: ``s x s`` :math:`\sum_r M_1^{rr}` (:class:`gpgeom.engine.sites.SiteScore`).
        M: ``(I-1) x s x s`` :math:`\sum_r M_{i+1}^{rr}`.
        N: ``(I-1) x s x s`` :math:`\sum_r N_{i+1}^{rr}`.
        Phi: ``(I-1) x s x s`` the reference transitions :math:`\Phi_i(\theta_0)`.
        Q: ``(I-1) x s x s`` the reference process noises :math:`Q_i(\theta_0)`.
        S: ``I x s x s`` :math:`\sum_r \mathbb E_q[x^r_i x^{r\top}_i]` (posterior second moments).
    """

    M0: Tensor
    M: Tensor
    N: Tensor
    Phi: Tensor
    Q: Tensor
    S: Tensor


def _component_sum(X: Tensor, R: int, s: int) -> Tensor:
    r"""``... x D x D`` -> ``... x s x s``: the sum of the ``R`` diagonal ``s x s`` blocks."""
    lead = X.shape[:-2]
    return X.reshape(*lead, R, s, R, s).diagonal(dim1=-4, dim2=-2).sum(-1)


def latent_score(kernel: MarkovKernel, t: Tensor, lam: Tensor, eta: Tensor) -> tuple[LatentPosterior, ModeScore]:
    r"""The posterior of :func:`latent_posterior` and the statistics of the gradient of the pseudo-observations' log
    marginal likelihood :math:`\log Z` with respect to the prior (:func:`gpgeom.engine.sites.site_score`), from
    one Kalman filter and smoother without autograd.

    The prior of the ``R`` components is block-diagonal with equal blocks, so only the sums of the ``R`` diagonal
    blocks of the statistics enter the gradient; they are returned (``s x s`` blocks).

    Args:
        kernel: The (unbatched) Markov kernel shared by the ``R`` components (read, not differentiated).
        t: ``I`` strictly increasing coordinates.
        lam: ``I x R x R`` site precisions; eta: ``I x R`` site natural means.

    Returns:
        ``(posterior, score)``, ``score`` a :class:`ModeScore`.
    """
    check_increasing("t", t)
    R = eta.shape[-1]
    s = kernel.state_dim
    with torch.no_grad():
        Phi_s, Q_s = kernel.transition(t[1:] - t[:-1])  # (I-1) x s x s
        Phi, Q = block_diagonal(Phi_s, R), block_diagonal(Q_s, R)
        P0 = block_diagonal(kernel.stationary_covariance(), R)
        m0 = torch.zeros(R * s, dtype=t.dtype, device=t.device)
        if t.shape[0] > 1:
            H = value_map(R, s, eta.dtype, eta.device)
            post, sc = node_site_posterior(lam.detach(), eta.detach(), H, Phi, Q, m0, P0, score=True)
        else:
            post, sc = site_score(mode_sites(lam.detach(), eta.detach(), s), Phi, Q, m0, P0)
        mean = post.mean.reshape(-1, R, s)
        S = _component_sum(post.cov, R, s) + (mean[..., :, None] * mean[..., None, :]).sum(-3)
        summed = ModeScore(
            _component_sum(sc.M0, R, s), _component_sum(sc.M, R, s), _component_sum(sc.N, R, s), Phi_s, Q_s, S
        )
    return post, summed


def score_surrogate(kernel: MarkovKernel, t: Tensor, score: ModeScore) -> Tensor:
    r"""A 0-dim function of the kernel's hyperparameters whose gradient, at the hyperparameters of
    :func:`latent_score`, is the gradient of :math:`\log Z` (:func:`gpgeom.engine.sites.score_surrogate` on the
    ``s x s`` blocks: :math:`-\tfrac12 \operatorname{tr}(M_1 P_\infty) + \sum_i [-\tfrac12
    \operatorname{tr}(M_{i+1} Q_i) + \operatorname{tr}(N_{i+1} \Phi_i^\top)]`). Cost :math:`O(I s^3)`, one
    evaluation of :math:`(\Phi_i, Q_i)`; no :math:`Q_i^{-1}` (stable for any step).

    Args:
        kernel: The kernel (differentiable parameters).
        t: ``I`` sorted coordinates (those of :func:`latent_score`).
        score: The :func:`latent_score` statistics.

    Returns:
        0-dim tensor (its value is not :math:`\log Z`).
    """
    check_increasing("t", t, strict=False)
    Pinf = kernel.stationary_covariance()
    out = -0.5 * (score.M0 * Pinf).sum()
    if t.shape[0] > 1:
        Phi, Q = kernel.transition(t[1:] - t[:-1])
        out = out + (-0.5 * (score.M * Q) + score.N * Phi).sum()
    return out

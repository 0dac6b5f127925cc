r"""Gaussian sites on a linear-Gaussian Markov chain: the exact posterior of a state-space GP given multivariate
Gaussian pseudo-observations in natural parameters.

Setting
-------
States :math:`x_1, \dots, x_I \in \mathbb R^D` at sorted coordinates follow the prior of
:mod:`gpgeom.engine.statespace`, :math:`x_1 \sim N(m_0, P_0)`, :math:`x_{i+1} = \Phi_i x_i + q_i`,
:math:`q_i \sim N(0, Q_i)`. At every node an output :math:`u_i = H x_i \in \mathbb R^R` receives a Gaussian *site*
in natural parameters,

.. math::
    t_i(u) = \exp\big(-\tfrac12 u^\top \Lambda_i u + \eta_i^\top u\big), \qquad \Lambda_i \succeq 0,\quad
    \eta_i \in \operatorname{range}(\Lambda_i),

the form of the messages that expectation propagation and variational message passing send to a latent Gaussian
factor (Minka, "Expectation propagation for approximate Bayesian inference", UAI 2001; Winn & Bishop, "Variational
message passing", JMLR 2005). The target is the tilted Gaussian :math:`q(x) = p(x) \prod_i t_i(H x_i) / Z`.

Sites as scalar observations
----------------------------
With the eigendecomposition :math:`\Lambda_i = V \operatorname{diag}(d) V^\top` (columns :math:`v_j`),

.. math::
    t_i(u) = \prod_j \exp\big(-\tfrac12 d_j (v_j^\top u)^2 + (v_j^\top \eta_i)(v_j^\top u)\big)
    = \prod_j c_{ij}\, N\big(y_{ij};\ v_j^\top u,\ 1/d_j\big), \qquad
    y_{ij} = \frac{v_j^\top \eta_i}{d_j}, \quad \log c_{ij} = \tfrac12 \log\frac{2\pi}{d_j} + \tfrac12 d_j y_{ij}^2,

so site :math:`i` is :math:`R` scalar linear-Gaussian observations of the state, with measurement rows
:math:`h_{ij} = v_j^\top H` and noise variances :math:`1/d_j`; directions with :math:`d_j \le \epsilon \max d`
(:math:`\epsilon = 10^{-12}` in float64, :math:`10^{-6}` in float32; the maximum over the chain) carry no information
and are masked. :func:`site_chain` builds the chain of :math:`I R` steps that
:func:`~gpgeom.engine.statespace.kalman_filter` runs with ``H_per_step=True`` (one measurement row per step): step
:math:`(i, j)` observes :math:`h_{ij} x`; the steps of one node are joined by :math:`\Phi = I`, :math:`Q = 0` (the same
state), and the prior transition :math:`(\Phi_i, Q_i)` enters between the last step of node :math:`i` and the first
of node :math:`i + 1`. The filter's log likelihood :math:`\ell` (prediction-error decomposition) gives the
normaliser :math:`\log Z = \ell + \sum_{ij} \log c_{ij}`, and the RTS smoother's moments at any step of node
:math:`i` are those of :math:`x_i` under :math:`q`; the cost is :math:`O(I R D^3)`.

Joint posterior
---------------
:math:`q` is itself Gauss-Markov. Its backward conditionals are the smoother's (Särkkä, *Bayesian Filtering and
Smoothing*, 2013, proof of Theorem 8.2): :math:`\mathbb E_q[x_i \mid x_{i+1}, \dots, x_I] = G_i x_{i+1} + c_i`, with
the node gain :math:`G_i` (the smoother gain from the last step of node :math:`i` to the first of node :math:`i+1`;
the steps inside a node hold one and the same state). Hence :math:`\operatorname{Cov}_q(x_i, x_{i+1}) = G_i
P^s_{i+1}` and, for :math:`i < j`,

.. math::
    \operatorname{Cov}_q(x_i, x_j) = G_i G_{i+1} \cdots G_{j-1} P^s_j .

:func:`chain_covariance` evaluates it for any pairs of nodes through a binary-lifting table of gain products
(:func:`gain_products`: level :math:`\ell` holds every product of :math:`2^\ell` consecutive gains), in
:math:`O(\log I)` batched matrix products per pair.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from gpgeom.engine.statespace import PARALLEL_THRESHOLD, kalman_filter, rts_smoother

__all__ = [
    "SiteChain",
    "SitePosterior",
    "site_chain",
    "site_posterior",
    "site_log_likelihoods",
    "gain_products",
    "chain_covariance",
    "eigen_threshold",
]


def _sym(X: Tensor) -> Tensor:
    return 0.5 * (X + X.transpose(-1, -2))


def eigen_threshold(dtype: torch.dtype) -> float:
    r"""Relative eigenvalue below which a site direction carries no information (see the module docstring)."""
    return 1e-12 if dtype == torch.float64 else 1e-6


class SiteChain(NamedTuple):
    r"""The scalar-observation chain of :math:`I` sites on :math:`R`-dimensional outputs (:func:`site_chain`).

    Independent of the prior, so it is built once and reused for every prior (e.g. while fitting
    hyperparameters). Step ``i R + j`` observes direction ``j`` of site ``i``.

    Attributes:
        H: ``batch x n x 1 x D`` measurement rows :math:`h_{ij} = v_j^\top H`, ``n = I R``.
        y: ``batch x n`` observations :math:`y_{ij}` (0 where masked).
        noise: ``batch x n`` noise variances :math:`1/d_j` (``inf`` where masked).
        mask: ``batch x n`` boolean, ``False`` for the directions without information.
        log_scale: ``batch`` :math:`\sum_{ij} \log c_{ij}` over the observed directions (:math:`\log Z - \ell`).
        num_sites: :math:`I`.
        R: The output dimension :math:`R` (steps per site).
    """

    H: Tensor
    y: Tensor
    noise: Tensor
    mask: Tensor
    log_scale: Tensor
    num_sites: int
    R: int


class SitePosterior(NamedTuple):
    r"""The smoothed posterior :math:`q(x_{1:I})` of a chain given its sites (:func:`site_posterior`).

    Attributes:
        mean: ``batch x I x D`` state means (``None`` without smoothing).
        cov: ``batch x I x D x D`` state covariances :math:`P^s_i`.
        cross: ``batch x (I-1) x D x D`` lag-one cross-covariances :math:`\operatorname{Cov}_q(x_i, x_{i+1}) =
            G_i P^s_{i+1}`.
        gain: ``batch x (I-1) x D x D`` node gains :math:`G_i` (:func:`gain_products`, :func:`chain_covariance`).
        log_likelihood: ``batch`` log likelihood :math:`\ell` of the scalar observations (the normaliser up to a
            constant that does not depend on the prior).
        log_normalizer: ``batch`` :math:`\log Z = \log \int p(x) \prod_i t_i(H x_i)\, \mathrm dx`.
    """

    mean: Tensor | None
    cov: Tensor | None
    cross: Tensor | None
    gain: Tensor | None
    log_likelihood: Tensor
    log_normalizer: Tensor


def site_chain(lam: Tensor, eta: Tensor, H: Tensor, *, threshold: float | None = None) -> SiteChain:
    r"""Split sites :math:`(\Lambda_i, \eta_i)` on outputs :math:`u_i = H x_i` into scalar observations (module
    docstring).

    Args:
        lam: ``batch x I x R x R`` symmetric positive semi-definite precisions :math:`\Lambda_i`.
        eta: ``batch x I x R`` precision-weighted means :math:`\eta_i` (in the range of :math:`\Lambda_i`).
        H: ``R x D`` output map, or ``batch x I x R x D`` (one per node).
        threshold: Relative eigenvalue below which a direction is masked (default :func:`eigen_threshold`).

    Returns:
        A :class:`SiteChain` of ``I R`` steps.
    """
    I, R = eta.shape[-2:]
    batch = eta.shape[:-2]
    D = H.shape[-1]
    dtype, device = eta.dtype, eta.device
    thr = eigen_threshold(dtype) if threshold is None else float(threshold)
    d, V = torch.linalg.eigh(_sym(lam))  # batch x I x R, batch x I x R x R (columns v_j)
    if d.numel():
        dmax = d.reshape(*batch, -1).amax(-1)[..., None, None]
    else:
        dmax = torch.zeros((*batch, 1, 1), dtype=dtype, device=device)
    observed = d > thr * torch.clamp(dmax, min=1e-300)
    d_safe = torch.where(observed, d, torch.ones_like(d))
    proj = (V.transpose(-1, -2) @ eta[..., None])[..., 0]  # v_j^T eta_i
    y = torch.where(observed, proj / d_safe, torch.zeros_like(d))
    noise = torch.where(observed, 1.0 / d_safe, torch.full_like(d, math.inf))
    log_c = 0.5 * torch.log(2.0 * math.pi / d_safe) + 0.5 * proj.square() / d_safe
    log_scale = torch.where(observed, log_c, torch.zeros_like(d)).sum((-2, -1))
    rows = V.transpose(-1, -2) @ H  # batch x I x R x D: row j is v_j^T H
    n = I * R
    return SiteChain(
        H=rows.reshape(*batch, n, 1, D),
        y=y.reshape(*batch, n),
        noise=noise.reshape(*batch, n),
        mask=observed.reshape(*batch, n),
        log_scale=log_scale,
        num_sites=I,
        R=R,
    )


def _expand_transitions(Phi: Tensor, Q: Tensor, I: int, R: int) -> tuple[Tensor, Tensor]:
    r"""Node transitions ``batch x (I-1) x D x D`` -> chain transitions ``batch x (I R - 1) x D x D``: the
    identity with no process noise between the steps of one node."""
    D = Phi.shape[-1]
    n = I * R
    batch = torch.broadcast_shapes(Phi.shape[:-3], Q.shape[:-3])
    eye = torch.eye(D, dtype=Phi.dtype, device=Phi.device)
    if R == 1:
        return Phi.expand(*batch, n - 1, D, D), Q.expand(*batch, n - 1, D, D)
    Phi_n = eye.expand(*batch, n - 1, D, D).clone()
    Q_n = Q.new_zeros(*batch, n - 1, D, D)
    if I > 1:
        enter = torch.arange(1, I, device=Phi.device) * R - 1  # last step of node i -> first of node i + 1
        Phi_n[..., enter, :, :] = Phi.expand(*batch, I - 1, D, D)
        Q_n[..., enter, :, :] = Q.expand(*batch, I - 1, D, D)
    return Phi_n, Q_n


def site_posterior(
    chain: SiteChain,
    Phi: Tensor,
    Q: Tensor,
    m0: Tensor,
    P0: Tensor,
    *,
    smooth: bool = True,
    parallel: bool | None = None,
) -> SitePosterior:
    r"""Exact posterior of the chain given its sites, by :func:`~gpgeom.engine.statespace.kalman_filter`
    (``H_per_step=True``) and :func:`~gpgeom.engine.statespace.rts_smoother` (module docstring).

    Args:
        chain: The :func:`site_chain` output.
        Phi: ``batch x (I-1) x D x D`` prior transitions between consecutive nodes.
        Q: ``batch x (I-1) x D x D`` prior process noise covariances.
        m0: ``batch x D`` prior mean of :math:`x_1`.
        P0: ``batch x D x D`` prior covariance of :math:`x_1`.
        smooth: Also run the smoother (``False``: only the likelihoods, e.g. for hyperparameters).
        parallel: Associative-scan filter and smoother (``None``: when the chain has ``>= PARALLEL_THRESHOLD``
            steps).

    Returns:
        A :class:`SitePosterior`, differentiable with respect to the prior.
    """
    I, R = chain.num_sites, chain.R
    n = I * R
    Phi_n, Q_n = _expand_transitions(Phi, Q, I, R)
    par = (n >= PARALLEL_THRESHOLD) if parallel is None else bool(parallel)
    kf = kalman_filter(
        Phi_n, Q_n, chain.H, chain.y, chain.noise, m0, P0, mask=chain.mask, parallel=par, H_per_step=True
    )
    ll = kf.log_likelihood
    log_z = ll + chain.log_scale
    if not smooth:
        return SitePosterior(None, None, None, None, ll, log_z)
    sm = rts_smoother(Phi_n, kf, parallel=par)
    last = torch.arange(I, device=chain.y.device) * R + (R - 1)  # the last step of every node
    mean = sm.mean[..., last, :]
    cov = _sym(sm.cov[..., last, :, :])
    k = last[:-1]
    gain = sm.gain[..., k, :, :]
    cross = gain @ sm.cov[..., k + 1, :, :]  # step k + 1 is the first step of the next node
    return SitePosterior(mean, cov, cross, gain, ll, log_z)


def site_log_likelihoods(
    chains: Sequence[SiteChain],
    priors: Sequence[tuple[Tensor, Tensor, Tensor, Tensor]],
    *,
    parallel: bool | None = None,
) -> Tensor:
    r"""Log likelihoods :math:`\ell` of several unbatched chains of different lengths and state dimensions, in ONE
    batched Kalman filter.

    The chains are padded to a common number of steps (unobserved steps with :math:`\Phi = I`, :math:`Q = 0`) and
    state dimension (dummy states with :math:`\Phi = I`, :math:`Q = 0`, :math:`P_0 = I`, never observed), which
    changes no likelihood.

    Args:
        chains: Unbatched :func:`site_chain` outputs.
        priors: One ``(Phi, Q, m0, P0)`` per chain, as for :func:`site_posterior`.
        parallel: As in :func:`site_posterior` (``None``: by the padded length).

    Returns:
        ``len(chains)`` log likelihoods, differentiable with respect to the priors.
    """
    steps = []
    for ch, (Phi, Q, m0, P0) in zip(chains, priors, strict=True):
        Phi_n, Q_n = _expand_transitions(Phi, Q, ch.num_sites, ch.R)
        steps.append((ch, Phi_n, Q_n, m0, P0))
    n = max(ch.y.shape[-1] for ch in chains)
    D = max(ch.H.shape[-1] for ch in chains)
    dtype, device = chains[0].y.dtype, chains[0].y.device
    eye = torch.eye(D, dtype=dtype, device=device)
    Phis, Qs, m0s, P0s, Hs, ys, rs, masks = [], [], [], [], [], [], [], []
    for ch, Phi_n, Q_n, m0, P0 in steps:
        nk, Dk = ch.y.shape[-1], ch.H.shape[-1]
        PhiP = eye.expand(n - 1, D, D).clone()
        QP = torch.zeros(n - 1, D, D, dtype=dtype, device=device)
        PhiP[: nk - 1, :Dk, :Dk] = Phi_n
        QP[: nk - 1, :Dk, :Dk] = Q_n
        P0P = eye.clone()
        P0P[:Dk, :Dk] = P0
        m0P = torch.zeros(D, dtype=dtype, device=device)
        m0P[:Dk] = m0
        HP = torch.zeros(n, 1, D, dtype=dtype, device=device)
        HP[:nk, :, :Dk] = ch.H
        pad = n - nk
        Phis.append(PhiP)
        Qs.append(QP)
        m0s.append(m0P)
        P0s.append(P0P)
        Hs.append(HP)
        ys.append(torch.cat([ch.y, ch.y.new_zeros(pad)]))
        rs.append(torch.cat([ch.noise, ch.noise.new_ones(pad)]))
        masks.append(torch.cat([ch.mask, ch.mask.new_zeros(pad)]))
    par = (n >= PARALLEL_THRESHOLD) if parallel is None else bool(parallel)
    kf = kalman_filter(
        torch.stack(Phis),
        torch.stack(Qs),
        torch.stack(Hs),
        torch.stack(ys),
        torch.stack(rs),
        torch.stack(m0s),
        torch.stack(P0s),
        mask=torch.stack(masks),
        parallel=par,
        H_per_step=True,
    )
    return kf.log_likelihood


def gain_products(gain: Tensor) -> list[Tensor]:
    r"""Binary-lifting table of the node gains ``(I-1) x D x D``: level :math:`\ell` is ``(I - 2^l) x D x D`` with
    entry :math:`j` equal to :math:`G_j G_{j+1} \cdots G_{j + 2^\ell - 1}`."""
    table = [gain]
    while True:
        prev, step = table[-1], 2 ** (len(table) - 1)
        if prev.shape[-3] <= step:
            return table
        table.append(prev[:-step] @ prev[step:])


def chain_covariance(cov: Tensor, table: Sequence[Tensor], rows: Tensor, cols: Tensor) -> Tensor:
    r""":math:`\operatorname{Cov}_q(x_a, x_c)` for pairs of nodes (module docstring): :math:`G_a \cdots G_{c-1}
    P^s_c` for :math:`a \le c`, its transpose otherwise.

    Args:
        cov: ``I x D x D`` smoothed covariances :math:`P^s_i` (:attr:`SitePosterior.cov`, unbatched).
        table: :func:`gain_products` of the node gains.
        rows, cols: Node indices ``a`` and ``c`` (long tensors of one shape ``m``).

    Returns:
        ``m x D x D`` cross-covariances.
    """
    D = cov.shape[-1]
    lo, hi = torch.minimum(rows, cols), torch.maximum(rows, cols)
    length = hi - lo
    prod = torch.eye(D, dtype=cov.dtype, device=cov.device).expand(*rows.shape, D, D)
    pos = lo
    for level, T in enumerate(table):
        bit = ((length >> level) & 1).bool()
        if not bool(bit.any()):
            continue
        step = T[pos.clamp(max=T.shape[0] - 1)]
        prod = torch.where(bit[..., None, None], prod @ step, prod)
        pos = pos + bit.long() * 2**level
    C = prod @ cov[hi]
    return torch.where((rows <= cols)[..., None, None], C, C.transpose(-1, -2))

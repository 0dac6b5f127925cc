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
and are masked (a component of :math:`\eta_i` along them beyond round-off is refused: it has no such form).
:func:`site_chain` builds the chain of :math:`I R` steps that :func:`~gpgeom.engine.statespace.kalman_filter` runs with
``H_per_step=True`` (one measurement row per step): step :math:`(i, j)` observes :math:`h_{ij} x`; the steps of one node
are joined by :math:`\Phi = I`, :math:`Q = 0` (the same state), and the prior transition :math:`(\Phi_i, Q_i)` enters
between the last step of node :math:`i` and the first of node :math:`i + 1`. The filter's log likelihood :math:`\ell`
(prediction-error decomposition) gives the normaliser :math:`\log Z = \ell + \sum_{ij} \log c_{ij}`, and the RTS
smoother's moments at any step of node :math:`i` are those of :math:`x_i` under :math:`q`; the cost is
:math:`O(I R D^3)`.

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

Node-level filter
-----------------
:func:`node_site_posterior` runs one step per node instead of :math:`R`: with :math:`\tilde\Lambda_i = H^\top
\Lambda_i H` and :math:`\tilde\eta_i = H^\top \eta_i`, the element of node :math:`i` of the associative-scan filter
(Särkkä & García-Fernández, "Temporal parallelization of Bayesian smoothers", IEEE TAC 2021, Lemma 8) is the
conditional :math:`p(x_i \mid x_{i-1}, t_i) = N(A_i x_{i-1} + b_i, C_i)` and the information pair
:math:`(\eta_i, J_i)` of :math:`\int p(x_i \mid x_{i-1}) t_i(H x_i)\, \mathrm dx_i` in :math:`x_{i-1}`: with
:math:`T_i = (I + Q_{i-1} \tilde\Lambda_i)^{-1}`,

.. math::
    A_i = T_i \Phi_{i-1}, \quad b_i = T_i Q_{i-1} \tilde\eta_i, \quad C_i = T_i Q_{i-1}, \quad
    J_i = \Phi_{i-1}^\top \tilde\Lambda_i T_i \Phi_{i-1}, \quad \eta_i = \Phi_{i-1}^\top T_i^\top \tilde\eta_i

(the first node with :math:`(m_0, P_0)` in place of :math:`(\Phi x, Q)` and :math:`A_1 = 0`, :math:`J_1 = 0`); no
:math:`Q^{-1}` or :math:`\Lambda^{-1}` is formed, so tiny steps and singular sites are exact. With the predictions
:math:`(m^-_i, P^-_i)`, :math:`\mu_i = H m^-_i`, :math:`S_i = H P^-_i H^\top` and :math:`a_i = \eta_i - \Lambda_i
\mu_i`, the normaliser is

.. math::
    \log Z = \sum_i \Big( -\tfrac12 \log\lvert I + S_i \Lambda_i\rvert + \eta_i^\top \mu_i
    - \tfrac12 \mu_i^\top \Lambda_i \mu_i + \tfrac12 a_i^\top (I + S_i \Lambda_i)^{-1} S_i a_i \Big),

and the RTS smoother runs on the nodes directly (its gains are the node gains).

Score
-----
The gradient of :math:`\log Z` with respect to the prior :math:`\theta = (\Phi_{1:I-1}, Q_{1:I-1}, m_0, P_0)` needs
no differentiation through the recursions. By Fisher's identity, :math:`\nabla_\theta \log Z = \mathbb E_q[
\nabla_\theta \log p(x \mid \theta)]` with :math:`q` the posterior at :math:`\theta`, so with the innovation
:math:`e_k = x_{k+1} - \Phi_k x_k`,

.. math::
    \frac{\partial \log Z}{\partial Q_k} = -\tfrac12 Q_k^{-1} + \tfrac12 Q_k^{-1} \mathbb E_q[e_k e_k^\top]
    Q_k^{-1}, \qquad \frac{\partial \log Z}{\partial \Phi_k} = Q_k^{-1} \mathbb E_q[e_k x_k^\top].

Written with :math:`\mathbb E_q[e_k e_k^\top] = P^s_{k+1} - \Phi_k C_k - C_k^\top \Phi_k^\top + \dots` these
cancel catastrophically when :math:`Q_k` is small (dense coordinates: :math:`Q_k = O(\Delta^{2s-1})`), and
:math:`Q_k^{-1}` itself is then numerically singular. The smoother's backward conditional :math:`x_k = G_k x_{k+1} +
c_k + w_k`, :math:`\operatorname{Cov} w_k = P^f_k - G_k P^-_{k+1} G_k^\top`, with :math:`G_k = P^f_k \Phi_k^\top
(P^-_{k+1})^{-1}`, gives :math:`I - \Phi_k G_k = Q_k (P^-_{k+1})^{-1}` exactly, hence (with :math:`\delta_{k+1} =
m^s_{k+1} - m^-_{k+1}`)

.. math::
    \mathbb E_q[e_k] = Q_k (P^-_{k+1})^{-1} \delta_{k+1}, \qquad
    \mathbb E_q[e_k e_k^\top] = Q_k - Q_k M_{k+1} Q_k, \qquad
    \mathbb E_q[e_k x_k^\top] = Q_k N_{k+1},

with :math:`M, N` of :class:`SiteScore`, in which :math:`Q_k^{-1}` cancels:

.. math::
    \mathrm d \log Z = -\tfrac12 \operatorname{tr}(M_1\, \mathrm dP_0) + \delta_1^\top P_0^{-1} \mathrm dm_0
    + \sum_{k=1}^{I-1} \Big(-\tfrac12 \operatorname{tr}(M_{k+1}\, \mathrm dQ_k)
    + \operatorname{tr}(N_{k+1}\, \mathrm d\Phi_k^\top)\Big)

(the first node's prediction is the prior, the same formula with :math:`(m_0, P_0)`). These are the adjoint
(backward-pass) equations of the Kalman likelihood in closed form; :func:`site_score` evaluates them from one filter
and smoother, :func:`score_surrogate` as a linear function of the prior for autograd.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from gpgeom.engine.statespace import (
    PARALLEL_THRESHOLD,
    KalmanFilterResult,
    _associative_scan,
    _filter_combine,
    kalman_filter,
    rts_smoother,
)

__all__ = [
    "SiteChain",
    "SitePosterior",
    "site_chain",
    "site_posterior",
    "SiteScore",
    "site_score",
    "score_surrogate",
    "node_site_posterior",
    "site_log_scale",
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

    Raises:
        ValueError: For a negative site precision, or an ``eta`` with a component outside the range of ``lam``
            (more than :math:`\sqrt{\text{threshold}}` times the chain's largest :math:`|v^\top \eta|` along a
            masked direction; :func:`node_site_posterior` handles such sites).
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
    if d.numel() and bool((d < -1e3 * thr * torch.clamp(dmax, min=1e-300)).any()):
        # masked like a zero precision, a negative one (EP can make them) would be dropped without a word
        worst = int(d.reshape(-1, R).amin(-1).argmin()) % I
        raise ValueError(
            f"`lam` must be positive semi-definite (site precisions); site {worst} has an eigenvalue "
            f"{float(d.min()):.3g} (largest {float(dmax.max()):.3g}). Negative site precisions are not supported."
        )
    observed = d > thr * torch.clamp(dmax, min=1e-300)
    d_safe = torch.where(observed, d, torch.ones_like(d))
    proj = (V.transpose(-1, -2) @ eta[..., None])[..., 0]  # v_j^T eta_i
    _check_eta_in_range(proj, observed, d, thr)
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


def _check_eta_in_range(proj: Tensor, observed: Tensor, d: Tensor, thr: float) -> None:
    r"""Refuse a linear term :math:`v_j^\top \eta_i` along a masked direction (precision :math:`d_j \le \epsilon
    \max d`) that is not round-off: it has no scalar-observation form (:math:`y = v_j^\top\eta_i / d_j`, noise
    :math:`1/d_j`, both unbounded) and masking dropped it without a word, although it moves the posterior mean by
    about the prior covariance times it (``eta`` of a zero-precision site: log Z off by 0.4, means by 2.9). For a site
    :math:`\eta_i = \Lambda_i m_i` it is :math:`d_j v_j^\top m_i`, below :math:`\epsilon` times the largest
    :math:`|v^\top \eta|` of the chain unless :math:`|m_i|` is :math:`1/\epsilon` times that of the strongest site;
    the test allows :math:`\sqrt\epsilon` (``proj``, ``observed``, ``d``: ``batch x I x R``)."""
    if not proj.numel():
        return
    batch = proj.shape[:-2]
    scale = proj.abs().reshape(*batch, -1).amax(-1)[..., None, None]
    bad = ~observed & (proj.abs() > math.sqrt(thr) * scale)
    if bool(bad.any()):
        idx = bad.nonzero()[0]
        site = int(idx[-2])
        raise ValueError(
            f"`eta` must lie in the range of `lam` (eta_i = lam_i m_i): site {site} has a linear term "
            f"{float(proj[tuple(idx)]):.3g} along a direction of precision {float(d[tuple(idx)]):.3g} (largest "
            f"linear term {float(scale.max()):.3g}), which has no scalar-observation form; node_site_posterior "
            "handles such sites."
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


class SiteScore(NamedTuple):
    r"""Sufficient statistics of the gradient of :math:`\log Z` with respect to the prior (:func:`site_score`).

    With the filter's predictions :math:`(m^-_k, P^-_k)` of node :math:`k` (:math:`(m_0, P_0)` at the first), its
    filtered covariance :math:`P^f_k` and the smoothed moments :math:`(m^s_k, P^s_k)`, :math:`\delta_k = m^s_k -
    m^-_k`:

    .. math::
        M_k = (P^-_k)^{-1}\big[P^-_k - P^s_k - \delta_k \delta_k^\top\big](P^-_k)^{-1}, \qquad
        N_k = (P^-_k)^{-1}\big[(P^s_k - P^-_k)(P^-_k)^{-1} \Phi_{k-1} P^f_{k-1} + \delta_k m^{s\top}_{k-1}\big].

    Attributes:
        M0: ``batch x D x D`` :math:`M_1` (first node, prediction = the prior :math:`(m_0, P_0)`).
        M: ``batch x (I-1) x D x D`` :math:`M_k`, ``k = 2..I``.
        N: ``batch x (I-1) x D x D`` :math:`N_k`, ``k = 2..I``.
        delta0: ``batch x D`` :math:`(P_0)^{-1} \delta_1` (the gradient with respect to :math:`m_0`).
    """

    M0: Tensor
    M: Tensor
    N: Tensor
    delta0: Tensor


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
    kf, sm, _ = _run(chain, Phi, Q, m0, P0, smooth, parallel)
    return _posterior(chain, kf, sm)


def _run(chain: SiteChain, Phi: Tensor, Q: Tensor, m0: Tensor, P0: Tensor, smooth: bool, parallel: bool | None):
    r"""The filter (and smoother) of the scalar-step chain, and its step transitions."""
    I, R = chain.num_sites, chain.R
    n = I * R
    Phi_n, Q_n = _expand_transitions(Phi, Q, I, R)
    par = (n >= PARALLEL_THRESHOLD) if parallel is None else bool(parallel)
    kf = kalman_filter(
        Phi_n, Q_n, chain.H, chain.y, chain.noise, m0, P0, mask=chain.mask, parallel=par, H_per_step=True
    )
    sm = rts_smoother(Phi_n, kf, parallel=par) if smooth else None
    return kf, sm, Phi_n


def _posterior(chain: SiteChain, kf, sm) -> SitePosterior:
    I, R = chain.num_sites, chain.R
    ll = kf.log_likelihood
    log_z = ll + chain.log_scale
    if sm is None:
        return SitePosterior(None, None, None, None, ll, log_z)
    last = torch.arange(I, device=chain.y.device) * R + (R - 1)  # the last step of every node
    mean = sm.mean[..., last, :]
    cov = _sym(sm.cov[..., last, :, :])
    k = last[:-1]
    gain = sm.gain[..., k, :, :]
    cross = gain @ sm.cov[..., k + 1, :, :]  # step k + 1 is the first step of the next node
    return SitePosterior(mean, cov, cross, gain, ll, log_z)


def _score(mp: Tensor, Pp: Tensor, Pf: Tensor, Phi: Tensor, post: SitePosterior) -> SiteScore:
    r""":class:`SiteScore` from node predictions ``mp`` (``batch x I x D``), ``Pp`` (``batch x I x D x D``), the
    filtered covariances ``Pf`` of nodes ``1..I-1`` and the smoothed posterior."""
    D = Pp.shape[-1]
    ms, Ps = post.mean, post.cov
    delta = ms - mp  # batch x I x D
    rhs = torch.cat([_sym(Pp - Ps) - delta[..., :, None] * delta[..., None, :], delta[..., :, None]], -1)
    X = torch.linalg.solve(Pp, rhs)
    M = _sym(torch.linalg.solve(Pp, X[..., :D].mT))  # P^{-1} [P - P^s - d d^T] P^{-1}
    if Pp.shape[-3] > 1:
        Y = torch.linalg.solve(Pp[..., 1:, :, :], Phi @ Pf)  # (P^-)^{-1} Phi P^f
        Z = (Ps[..., 1:, :, :] - Pp[..., 1:, :, :]) @ Y + delta[..., 1:, :, None] * ms[..., :-1, None, :]
        N = torch.linalg.solve(Pp[..., 1:, :, :], Z)
    else:
        N = M[..., 1:, :, :]
    return SiteScore(M[..., 0, :, :], M[..., 1:, :, :], N, X[..., 0, :, D])


def site_score(
    chain: SiteChain,
    Phi: Tensor,
    Q: Tensor,
    m0: Tensor,
    P0: Tensor,
    *,
    parallel: bool | None = None,
) -> tuple[SitePosterior, SiteScore]:
    r"""The posterior of :func:`site_posterior` and the statistics :class:`SiteScore` of the gradient of
    :math:`\log Z` with respect to the prior (module docstring, "Score"), from one filter and smoother.

    Everything is computed without autograd through the recursions; :func:`score_surrogate` turns the statistics
    into a function of the prior whose gradient is that of :math:`\log Z`.

    Args:
        chain, Phi, Q, m0, P0, parallel: As for :func:`site_posterior` (the prior is read, not differentiated).

    Returns:
        ``(posterior, score)``.
    """
    I, R = chain.num_sites, chain.R
    with torch.no_grad():
        kf, sm, _ = _run(chain, Phi.detach(), Q.detach(), m0.detach(), P0.detach(), True, parallel)
        post = _posterior(chain, kf, sm)
        first = torch.arange(I, device=chain.y.device) * R  # the first step of every node
        Pf = kf.cov[..., first[1:] - 1, :, :]  # filtered at the last step of nodes 1..I-1
        score = _score(kf.pred_mean[..., first, :], _sym(kf.pred_cov[..., first, :, :]), Pf, Phi.detach(), post)
    return post, score


# ----------------------------------------------------------------------------------------------------------------
# Node-level filter: one step per site
# ----------------------------------------------------------------------------------------------------------------
def _node_filter(
    lam: Tensor, eta: Tensor, H: Tensor, Phi: Tensor, Q: Tensor, m0: Tensor, P0: Tensor
) -> tuple[KalmanFilterResult, Tensor]:
    r"""The associative-scan filter with one element per node (module docstring, "Node-level filter"); returns
    the filter moments (node-level predictions) and :math:`\log Z` (``batch``)."""
    I, R = eta.shape[-2:]
    D = H.shape[-1]
    batch = torch.broadcast_shapes(eta.shape[:-2], Phi.shape[:-3], Q.shape[:-3], m0.shape[:-1], P0.shape[:-2])
    B = batch.numel()
    dtype, device = eta.dtype, eta.device
    eye = torch.eye(D, dtype=dtype, device=device)
    Ht = H.mT
    lam = _sym(lam).expand(*batch, I, R, R).reshape(B, I, R, R)
    eta = eta.expand(*batch, I, R).reshape(B, I, R)
    Phi = Phi.expand(*batch, I - 1, D, D).reshape(B, I - 1, D, D)
    Q = Q.expand(*batch, I - 1, D, D).reshape(B, I - 1, D, D)
    m0 = m0.expand(*batch, D).reshape(B, D, 1)
    P0 = P0.expand(*batch, D, D).reshape(B, D, D)
    Lt = Ht @ lam @ H  # B x I x D x D, H^T Lambda H
    et = Ht @ eta[..., None]  # B x I x D x 1
    Pprior = torch.cat([P0[:, None], Q], 1)  # covariance of x_k given x_{k-1} (x_1: the prior)
    T = torch.linalg.solve(eye + Pprior @ Lt, eye.expand_as(Lt))  # (I + P Lt)^{-1}
    C = _sym(T @ Pprior)
    A = torch.zeros_like(C)
    A[:, 1:] = T[:, 1:] @ Phi
    b = T @ (Pprior @ et)
    b[:, :1] = b[:, :1] + T[:, :1] @ m0[:, None]
    Phi0 = torch.cat([torch.zeros_like(P0)[:, None], Phi], 1)
    J = _sym(Phi0.mT @ (Lt @ T) @ Phi0)
    e = Phi0.mT @ (T.mT @ et)
    _, fm, fP, _, _ = _associative_scan(_filter_combine, (A, b, C, e, J))
    pm = torch.cat([m0[:, None], Phi @ fm[:, :-1]], 1)
    pP = torch.cat([P0[:, None], _sym(Phi @ fP[:, :-1] @ Phi.mT + Q)], 1)
    # log Z = sum_k log int N(x; m^-_k, P^-_k) t_k(H x) dx, in the R-dim output space
    mu = H @ pm  # B x I x R x 1
    S0 = _sym(H @ pP @ Ht)
    eyeR = torch.eye(R, dtype=dtype, device=device)
    a = eta[..., None] - lam @ mu
    G = torch.linalg.solve(eyeR + S0 @ lam, torch.cat([S0, eyeR.expand_as(S0)], -1))
    quad = (a.mT @ G[..., :R] @ a)[..., 0, 0]
    logdet = -torch.linalg.slogdet(G[..., R:])[1]  # log det(I + S0 Lambda)
    lin = (eta[..., None].mT @ mu)[..., 0, 0] - 0.5 * (mu.mT @ lam @ mu)[..., 0, 0]
    log_z = (lin + 0.5 * quad - 0.5 * logdet).sum(-1)
    kf = KalmanFilterResult(
        mean=fm.reshape(*batch, I, D),
        cov=fP.reshape(*batch, I, D, D),
        pred_mean=pm.reshape(*batch, I, D),
        pred_cov=pP.reshape(*batch, I, D, D),
        log_likelihood=log_z.reshape(batch),
    )
    return kf, log_z.reshape(batch)


def _node_posterior(kf: KalmanFilterResult, Phi: Tensor, log_z: Tensor, log_scale: Tensor) -> SitePosterior:
    sm = rts_smoother(Phi, kf, parallel=True)
    cov = _sym(sm.cov)
    cross = sm.gain @ cov[..., 1:, :, :]
    return SitePosterior(sm.mean, cov, cross, sm.gain, log_z - log_scale, log_z)


def node_site_posterior(
    lam: Tensor,
    eta: Tensor,
    H: Tensor,
    Phi: Tensor,
    Q: Tensor,
    m0: Tensor,
    P0: Tensor,
    *,
    smooth: bool = True,
    score: bool = False,
) -> SitePosterior | tuple[SitePosterior, SiteScore]:
    r"""The posterior of :func:`site_posterior` by the node-level filter (module docstring, "Node-level filter"):
    one associative-scan element per site instead of ``R``.

    Args:
        lam: ``batch x I x R x R`` site precisions :math:`\Lambda_i` (symmetric positive semi-definite).
        eta: ``batch x I x R`` site natural means :math:`\eta_i`.
        H: ``R x D`` output map.
        Phi, Q, m0, P0: The prior, as for :func:`site_posterior` (``I >= 2``).
        smooth: Also run the smoother (``False``: ``mean``, ``cov``, ``cross``, ``gain`` are ``None``).
        score: Also return the :class:`SiteScore` (computed without autograd; implies ``smooth``).

    Returns:
        A :class:`SitePosterior` (``log_likelihood`` is :math:`\log Z` minus :attr:`SiteChain.log_scale` of
        :func:`site_chain`, as for :func:`site_posterior`), with ``score`` the pair ``(posterior, score)``.
    """
    I = eta.shape[-2]
    if I < 2:
        raise ValueError(f"`eta` must hold at least 2 sites for the node-level filter, got {I}.")
    log_scale = site_log_scale(lam, eta)
    if score:
        with torch.no_grad():
            kf, log_z = _node_filter(lam, eta, H, Phi.detach(), Q.detach(), m0.detach(), P0.detach())
            post = _node_posterior(kf, Phi.detach(), log_z, log_scale)
            return post, _score(kf.pred_mean, _sym(kf.pred_cov), kf.cov[..., :-1, :, :], Phi.detach(), post)
    kf, log_z = _node_filter(lam, eta, H, Phi, Q, m0, P0)
    if not smooth:
        return SitePosterior(None, None, None, None, log_z - log_scale, log_z)
    return _node_posterior(kf, Phi, log_z, log_scale)


def site_log_scale(lam: Tensor, eta: Tensor, *, threshold: float | None = None) -> Tensor:
    r""":attr:`SiteChain.log_scale` of :func:`site_chain` (``batch``) without building the chain:
    :math:`\sum_{ij} \tfrac12 \log(2\pi/d_{ij}) + \tfrac12 (v_{ij}^\top \eta_i)^2/d_{ij}` over the observed
    directions."""
    dtype = eta.dtype
    thr = eigen_threshold(dtype) if threshold is None else float(threshold)
    batch = eta.shape[:-2]
    d, V = torch.linalg.eigh(_sym(lam.detach()))
    if d.numel():
        dmax = d.reshape(*batch, -1).amax(-1)[..., None, None]
    else:
        dmax = torch.zeros((*batch, 1, 1), dtype=dtype, device=eta.device)
    observed = d > thr * torch.clamp(dmax, min=1e-300)
    d_safe = torch.where(observed, d, torch.ones_like(d))
    proj = (V.mT @ eta.detach()[..., None])[..., 0]
    log_c = 0.5 * torch.log(2.0 * math.pi / d_safe) + 0.5 * proj.square() / d_safe
    return torch.where(observed, log_c, torch.zeros_like(d)).sum((-2, -1))


def score_surrogate(score: SiteScore, Phi: Tensor, Q: Tensor, m0: Tensor, P0: Tensor) -> Tensor:
    r"""A function of the prior whose gradient at the prior of :func:`site_score` is the gradient of
    :math:`\log Z` (module docstring, "Score"):

    .. math::
        s(\Phi, Q, m_0, P_0) = -\tfrac12 \operatorname{tr}(M_1 P_0) + \delta_0^\top m_0
        + \sum_{k=2}^{I} \Big(-\tfrac12 \operatorname{tr}(M_k Q_{k-1}) + \operatorname{tr}(N_k \Phi_{k-1}^\top)
        \Big).

    Its value is not :math:`\log Z`; only its gradient (at that prior) is.

    Args:
        score: The :func:`site_score` statistics.
        Phi, Q: ``batch x (I-1) x D x D`` (differentiable).
        m0: ``batch x D``; P0: ``batch x D x D``.

    Returns:
        ``batch`` surrogate values.
    """
    out = -0.5 * (score.M0 * P0).sum((-2, -1)) + (score.delta0 * m0).sum(-1)
    if score.M.shape[-3]:
        out = out + (-0.5 * (score.M * Q) + score.N * Phi).sum((-3, -2, -1))
    return out


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

    Raises:
        ValueError: For no chains, ``chains`` and ``priors`` of different lengths, or a batched chain.
    """
    if len(chains) == 0 or len(chains) != len(priors):
        raise ValueError(
            f"`chains` and `priors` must hold one entry per chain, at least one, got {len(chains)} chain(s) and "
            f"{len(priors)} prior(s)."
        )
    for i, ch in enumerate(chains):  # a batched chain failed in a padding `expand` with PyTorch's message
        if ch.y.dim() != 1:
            raise ValueError(
                f"`chains[{i}]` must be unbatched (y of shape (n,)), got y of shape {tuple(ch.y.shape)}; use "
                "site_posterior for a batch of chains of one length."
            )
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
    r"""Binary-lifting table of the node gains ``batch x (I-1) x D x D`` (:attr:`SitePosterior.gain`): level
    :math:`\ell` is ``batch x (I - 2^l) x D x D`` with entry :math:`j` equal to :math:`G_j G_{j+1} \cdots
    G_{j + 2^\ell - 1}`. (The products were formed along the first dimension: for batched gains, across batch
    members.)"""
    if not isinstance(gain, Tensor) or gain.dim() < 3 or gain.shape[-1] != gain.shape[-2]:
        raise ValueError(f"`gain` must be a batch x (I-1) x D x D tensor, got {tuple(getattr(gain, 'shape', ()))}.")
    table = [gain]
    while True:
        prev, step = table[-1], 2 ** (len(table) - 1)
        if prev.shape[-3] <= step:
            return table
        table.append(prev[..., :-step, :, :] @ prev[..., step:, :, :])


def chain_covariance(cov: Tensor, table: Sequence[Tensor], rows: Tensor, cols: Tensor) -> Tensor:
    r""":math:`\operatorname{Cov}_q(x_a, x_c)` for pairs of nodes (module docstring): :math:`G_a \cdots G_{c-1}
    P^s_c` for :math:`a \le c`, its transpose otherwise.

    Args:
        cov: ``batch x I x D x D`` smoothed covariances :math:`P^s_i` (:attr:`SitePosterior.cov`).
        table: :func:`gain_products` of the node gains (the same batch).
        rows, cols: Node indices ``a`` and ``c`` (long tensors of one shape ``m``), shared by the batch.

    Returns:
        ``batch x m x D x D`` cross-covariances.
    """
    I, D = cov.shape[-3], cov.shape[-1]
    for name, idx in (("rows", rows), ("cols", cols)):
        if not isinstance(idx, Tensor) or idx.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"`{name}` must be a long tensor of node indices, got {getattr(idx, 'dtype', type(idx))}.")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= I):  # negative ones wrapped around silently
            raise ValueError(
                f"`{name}` must lie in [0, {I - 1}] (I = {I} nodes), got [{int(idx.min())}, {int(idx.max())}]."
            )
    if rows.shape != cols.shape:
        raise ValueError(f"`rows` and `cols` must have one shape, got {tuple(rows.shape)} and {tuple(cols.shape)}.")
    lo, hi = torch.minimum(rows, cols), torch.maximum(rows, cols)
    length = hi - lo
    prod = torch.eye(D, dtype=cov.dtype, device=cov.device).expand(*rows.shape, D, D)
    pos = lo
    for level, T in enumerate(table):
        bit = ((length >> level) & 1).bool()
        if not bool(bit.any()):
            continue
        step = T[..., pos.clamp(max=T.shape[-3] - 1), :, :]
        prod = torch.where(bit[..., None, None], prod @ step, prod)
        pos = pos + bit.long() * 2**level
    C = prod @ cov[..., hi, :, :]
    return torch.where((rows <= cols)[..., None, None], C, C.transpose(-1, -2))

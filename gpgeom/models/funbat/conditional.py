r"""The latent functions at any coordinates, seen or not: marginals and joint covariances under the posterior.

Fang et al. (ICLR 2024) predict entries at new coordinates from the posterior of the latent functions there. Here
:math:`q(u^k(t_*))` is the exact GP conditional given the pseudo-observations, which by the Markov property depends
only on the neighbouring training states. Let :math:`t_1 < \dots < t_I` be the training coordinates of the mode and
:math:`x_i` their states, with smoothed moments :math:`m_i, P_i` and :math:`q` the smoothed posterior
(:func:`~gpgeom.models.funbat.latent.latent_posterior`). Every coordinate :math:`t_*` has the representation

.. math:: x_* = A_* x_a + B_* x_b + e_*, \qquad e_* \sim N(0, C_*) \text{ independent of every } x_i,

because :math:`q(x_* \mid x_{1:I}) = p(x_* \mid x_{1:I})` (the sites only touch :math:`x_{1:I}`) and, by the Markov
property, :math:`p(x_* \mid x_{1:I}) = p(x_* \mid x_a, x_b)` (Särkkä & Solin, *Applied Stochastic Differential
Equations*, 2019, Sec. 12.4):

* **interior** (:math:`t_a \le t_* < t_b`, consecutive): with :math:`\Phi_1 = \Phi(t_* - t_a)`,
  :math:`\Phi_2 = \Phi(t_b - t_*)`, :math:`Q_1 = Q(t_* - t_a)` and :math:`K = Q_1 \Phi_2^\top Q(t_b - t_a)^{-1}`,
  :math:`A_* = \Phi_1 - K \Phi(t_b - t_a)`, :math:`B_* = K`, :math:`C_* = Q_1 - K \Phi_2 Q_1` (the Gaussian bridge);
* **right extrapolation** (:math:`t_* \ge t_I`): :math:`A_* = \Phi(t_* - t_I)`, :math:`B_* = 0`,
  :math:`C_* = Q(t_* - t_I)`;
* **left extrapolation** (:math:`t_* < t_1`, stationary prior): :math:`A_* = P_\infty \Phi(t_1 - t_*)^\top
  P_\infty^{-1}`, :math:`B_* = 0`, :math:`C_* = P_\infty - A_* \Phi(t_1 - t_*) P_\infty`.

A coordinate equal to :math:`t_a` gets :math:`A_* = I`, :math:`C_* = 0`. Far from the data :math:`u^k` returns to its
prior (mean 0, variance :math:`\sigma_k^2`). **Marginals** (:func:`latent_conditional`):
:math:`\mathbb E x_* = A_* m_a + B_* m_b`, :math:`\operatorname{Cov} x_* = A_* P_a A_*^\top + B_* P_b B_*^\top +
A_* C_{ab} B_*^\top + B_* C_{ab}^\top A_*^\top + C_*` with the smoother's lag-one :math:`C_{ab}`.

**Joint covariances** (:func:`latent_cross_covariance`, used by the BoTorch adapter):

.. math::
    \operatorname{Cov}_q(x_*, x_\star) = \sum_{\alpha \in \{a, b\}} \sum_{\beta \in \{a', b'\}}
    (\cdot)_{*\alpha} \operatorname{Cov}_q(x_\alpha, x_\beta) (\cdot)_{\star\beta}^\top
    + \operatorname{Cov}(e_*, e_\star),

with the node covariances :math:`\operatorname{Cov}_q(x_\alpha, x_\beta) = G_\alpha \cdots G_{\beta-1} P_\beta`
propagated along the chain by the smoother gains (:func:`gpgeom.engine.sites.chain_covariance`). The residuals of
two coordinates are independent unless both lie in the same interval or the same extrapolation side; there, for
:math:`t_* \le t_\star`, the prior conditional covariance is

* interior: :math:`\operatorname{Cov}(e_*, e_\star) = Q(t_* - t_a) \Phi(t_\star - t_*)^\top - K_*
  \Phi(t_b - t_\star) Q(t_\star - t_a)`;
* right: :math:`Q(t_* - t_I) \Phi(t_\star - t_*)^\top`;
* left: :math:`P_\infty \Phi(t_\star - t_*)^\top - A_* \Phi(t_1 - t_\star) P_\infty`,

each equal to :math:`C_*` when :math:`t_\star = t_*`. Everything is differentiable in the coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from gpgeom.engine.sites import chain_covariance
from gpgeom.kernels.sde import MarkovKernel
from gpgeom.models.funbat.latent import LatentPosterior

__all__ = ["latent_conditional", "latent_cross_covariance"]


class _Bridge(NamedTuple):
    r"""Per coordinate: region ``idx`` (-1 left of the data, ``I-1`` right, else the interval), neighbours ``a``,
    ``b`` and the value rows ``A0``, ``B0`` (``m x s``) of :math:`A_*`, :math:`B_*`, and :math:`(C_*)_{00}`."""

    idx: Tensor
    a: Tensor
    b: Tensor
    A0: Tensor
    B0: Tensor
    c: Tensor


def _bridge(kernel: MarkovKernel, t: Tensor, t_new: Tensor) -> _Bridge:
    r"""The representation :math:`x_* = A_* x_a + B_* x_b + e_*` of every coordinate ``t_new`` (module docstring)."""
    I = t.shape[0]
    s = kernel.state_dim
    m = t_new.shape[0]
    dtype, device = t.dtype, t.device
    idx = torch.searchsorted(t.detach().contiguous(), t_new.detach().contiguous(), right=True) - 1
    left = idx < 0
    right = idx >= I - 1
    inner = ~(left | right)
    a = idx.clamp(0, I - 1)
    b = (idx + 1).clamp(0, I - 1)
    one = torch.ones(m, dtype=dtype, device=device)
    d1 = torch.where(inner, t_new - t[a], one)
    d2 = torch.where(inner, t[b] - t_new, one)
    dab = torch.where(inner, t[b] - t[a], 2.0 * one)
    dl = torch.where(left, t[0] - t_new, one)
    dr = torch.where(right, t_new - t[-1], one)
    Phi, Q = kernel.transition(torch.stack([d1, d2, dab, dl, dr]))  # 5 x m x s x s
    P1, P2, Pab, Pl, Pr = Phi.unbind(0)
    Q1, Q2, Qab, Ql, Qr = Q.unbind(0)
    K = torch.linalg.solve(Qab, P2 @ Q1).transpose(-1, -2)  # interior bridge: K = Q1 Phi2^T Qab^{-1}
    A_in = P1 - K @ Pab
    C_in = Q1 - K @ P2 @ Q1
    # left of the data (stationary prior): A = Pinf Phil^T Pinf^{-1}
    Pinf = kernel.stationary_covariance().expand(m, s, s)
    A_l = torch.linalg.solve(Pinf, Pl @ Pinf).transpose(-1, -2)
    C_l = Pinf - A_l @ Pl @ Pinf
    sel_in, sel_l = inner[:, None, None], left[:, None, None]
    A = torch.where(sel_in, A_in, torch.where(sel_l, A_l, Pr))
    B = torch.where(sel_in, K, torch.zeros_like(K))
    C = torch.where(sel_in, C_in, torch.where(sel_l, C_l, Qr))
    C = 0.5 * (C + C.transpose(-1, -2))
    # only the value rows (first state entry) are needed: u_r = (A x_a + B x_b + e)_{r, 0}
    return _Bridge(idx, a, b, A[:, 0, :], B[:, 0, :], C[:, 0, 0])


def latent_conditional(kernel: MarkovKernel, t: Tensor, post: LatentPosterior, t_new: Tensor) -> tuple[Tensor, Tensor]:
    r"""Exact GP conditional :math:`q(u(t_*))` at any coordinates from the smoothed chain (module docstring).

    Interior points use both neighbours (bridge), points at or beyond the ends one neighbour (extrapolation).
    A point equal to a training coordinate gets that coordinate's smoothed marginal. Differentiable in ``t_new``.

    Args:
        kernel: The kernel used for ``post``.
        t: ``I`` sorted training coordinates of ``post``.
        post: The :func:`~gpgeom.models.funbat.latent.latent_posterior` output.
        t_new: ``m`` coordinates, any order.

    Returns:
        ``(mean, cov)``: ``m x R`` and ``m x R x R`` moments of :math:`u(t_*)`.
    """
    I, D = post.mean.shape
    s = kernel.state_dim
    R = D // s
    m = t_new.shape[0]
    br = _bridge(kernel, t, t_new)
    a, b, A0, B0 = br.a, br.b, br.A0, br.B0
    ma = post.mean[a].reshape(m, R, s)
    mb = post.mean[b].reshape(m, R, s)
    mean = (ma * A0[:, None, :]).sum(-1) + (mb * B0[:, None, :]).sum(-1)
    Pa = post.cov[a].reshape(m, R, s, R, s)
    Pb = post.cov[b].reshape(m, R, s, R, s)
    if I > 1:
        Cab = post.cross[a.clamp(max=I - 2)].reshape(m, R, s, R, s)
    else:
        Cab = torch.zeros_like(Pa)
    quad = lambda X, Y, P: torch.einsum("mi,mrisj,mj->mrs", X, P, Y)  # noqa: E731
    AC = quad(A0, B0, Cab)
    cov = quad(A0, A0, Pa) + quad(B0, B0, Pb) + AC + AC.transpose(-1, -2)
    cov = cov + br.c[:, None, None] * torch.eye(R, dtype=t.dtype, device=t.device)
    return mean, 0.5 * (cov + cov.transpose(-1, -2))


def _residual_covariance(kernel: MarkovKernel, t: Tensor, idx: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    r""":math:`\operatorname{Cov}(e_*, e_\star)_{00}` for pairs ``lo <= hi`` in the same region ``idx`` (module
    docstring): ``p`` values for ``p`` pairs."""
    I = t.shape[0]
    s = kernel.state_dim
    p = lo.shape[0]
    dtype, device = t.dtype, t.device
    left = idx < 0
    right = idx >= I - 1
    inner = ~(left | right)
    a = idx.clamp(0, I - 1)
    b = (idx + 1).clamp(0, I - 1)
    one = torch.ones(p, dtype=dtype, device=device)
    # interior: Q(lo - ta) Phi(hi - lo)^T - K Phi(tb - hi) Q(hi - ta), K = Q(lo - ta) Phi(tb - lo)^T Qab^{-1}
    steps = [
        torch.where(inner, lo - t[a], one),  # Q1
        torch.where(inner, t[b] - lo, one),  # Phi2
        torch.where(inner, t[b] - t[a], 2.0 * one),  # Qab
        torch.where(inner, t[b] - hi, one),  # Phi3
        torch.where(inner, hi - t[a], one),  # Q4
        hi - lo,  # Phi(hi - lo) in every region
        torch.where(right, lo - t[-1], one),  # Q(lo - tI)
        torch.where(left, t[0] - lo, one),  # Phi(t1 - lo)
        torch.where(left, t[0] - hi, one),  # Phi(t1 - hi)
    ]
    Phi, Q = kernel.transition(torch.stack(steps))  # 9 x p x s x s
    Q1, Phi2, Qab, Phi3, Q4 = Q[0], Phi[1], Q[2], Phi[3], Q[4]
    Phi_st, Qr, Phil_lo, Phil_hi = Phi[5], Q[6], Phi[7], Phi[8]
    K = torch.linalg.solve(Qab, Phi2 @ Q1).transpose(-1, -2)
    F_in = Q1 @ Phi_st.transpose(-1, -2) - K @ Phi3 @ Q4
    F_r = Qr @ Phi_st.transpose(-1, -2)
    Pinf = kernel.stationary_covariance().expand(p, s, s)
    A_l = torch.linalg.solve(Pinf, Phil_lo @ Pinf).transpose(-1, -2)
    F_l = Pinf @ Phi_st.transpose(-1, -2) - A_l @ Phil_hi @ Pinf
    F = torch.where(inner[:, None, None], F_in, torch.where(left[:, None, None], F_l, F_r))
    return F[:, 0, 0]


def latent_cross_covariance(
    kernel: MarkovKernel,
    t: Tensor,
    post: LatentPosterior,
    table: Sequence[Tensor],
    t1: Tensor,
    t2: Tensor,
    *,
    chunk: int = 65536,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Joint posterior moments of :math:`u` at two sets of coordinates of one batch (module docstring).

    Args:
        kernel: The kernel used for ``post``.
        t: ``I`` sorted training coordinates of ``post``.
        post: The :func:`~gpgeom.models.funbat.latent.latent_posterior` output.
        table: :func:`gpgeom.engine.sites.gain_products` of ``post.gain``.
        t1: ``B x q1`` coordinates.
        t2: ``B x q2`` coordinates (same ``B``).
        chunk: Pairs per block of the node-covariance contraction (memory bound).

    Returns:
        ``(mean1, mean2, cov)``: ``B x q1 x R``, ``B x q2 x R`` and ``B x q1 x q2 x R x R``
        (:math:`\operatorname{Cov}_q(u(t_{1,i}), u(t_{2,j}))`), differentiable in ``t1`` and ``t2``.
    """
    I, D = post.mean.shape
    s = kernel.state_dim
    R = D // s
    B, q1 = t1.shape
    q2 = t2.shape[1]
    br1 = _bridge(kernel, t, t1.reshape(-1))
    br2 = _bridge(kernel, t, t2.reshape(-1))

    def mean_of(br: _Bridge, n: int) -> Tensor:
        ma = post.mean[br.a].reshape(n, R, s)
        mb = post.mean[br.b].reshape(n, R, s)
        return (ma * br.A0[:, None, :]).sum(-1) + (mb * br.B0[:, None, :]).sum(-1)

    mean1 = mean_of(br1, B * q1).reshape(B, q1, R)
    mean2 = mean_of(br2, B * q2).reshape(B, q2, R)
    # the pairs (b, i, j) as flat indices into the two point lists
    bi = torch.arange(B, device=t.device)[:, None, None]
    p1 = (bi * q1 + torch.arange(q1, device=t.device)[None, :, None]).expand(B, q1, q2).reshape(-1)
    p2 = (bi * q2 + torch.arange(q2, device=t.device)[None, None, :]).expand(B, q1, q2).reshape(-1)
    post_cov = post.cov.detach()
    nodes1 = (br1.a, br1.b)
    nodes2 = (br2.a, br2.b)
    w1 = (br1.A0, br1.B0)
    w2 = (br2.A0, br2.B0)
    # node covariances of the distinct node pairs, once
    codes = torch.stack([n1[p1] * I + n2[p2] for n1 in nodes1 for n2 in nodes2])  # 4 x P
    uniq, inv = torch.unique(codes, return_inverse=True)
    with torch.no_grad():
        Cnode = chain_covariance(post_cov, table, uniq // I, uniq % I).reshape(-1, R, s, R, s)
    blocks = []
    npairs = p1.shape[0]
    for start in range(0, npairs, chunk):
        sl = slice(start, min(start + chunk, npairs))
        acc = None
        for c, (u, v) in enumerate((u, v) for u in range(2) for v in range(2)):
            Cn = Cnode[inv[c, sl]]  # n x R x s x R x s
            term = torch.einsum("ni,nrisj,nj->nrs", w1[u][p1[sl]], Cn, w2[v][p2[sl]])
            acc = term if acc is None else acc + term
        blocks.append(acc)
    cov = torch.cat(blocks, 0) if blocks else t1.new_zeros(0, R, R)
    # the residuals of coordinates in the same interval (or on the same side beyond the data) are correlated
    same = br1.idx[p1] == br2.idx[p2]
    if bool(same.any()):
        sel = same.nonzero()[:, 0]
        x1, x2 = t1.reshape(-1)[p1[sel]], t2.reshape(-1)[p2[sel]]
        lo, hi = torch.minimum(x1, x2), torch.maximum(x1, x2)
        c = _residual_covariance(kernel, t, br1.idx[p1[sel]], lo, hi)
        extra = torch.zeros(npairs, dtype=cov.dtype, device=cov.device).index_put((sel,), c)
        cov = cov + extra[:, None, None] * torch.eye(R, dtype=cov.dtype, device=cov.device)
    return mean1, mean2, cov.reshape(B, q1, q2, R, R)

#!/usr/bin/env python3
r"""The Gauss-Newton normal equations of a chain of states: block-banded assembly with a dense border, and solution.

Each iteration of :func:`~gpgeom.engine.least_squares.gauss_newton` assembles and solves the normal equations
:math:`(H + \lambda D)\, \delta = -b` of the whitened, robustly weighted residuals of the factors
(:mod:`gpgeom.engine.factors`), with :math:`b = \mathsf J^\top \Omega e`. Because every factor touches at most
``w + 1`` consecutive states, the state part of :math:`H = \mathsf J^\top \Omega \mathsf J` is block-banded (blocks
``s x s``, block bandwidth ``w``); the global parameters add a dense border::

    H = [[H_xx, H_xg],      H_xx: (K s) x (K s), block-banded
         [H_gx, H_gg]]      H_xg: (K s) x g,     H_gg: g x g

It is solved by a block-banded Cholesky factorisation :math:`H_{xx} = L L^\top` in :math:`O(K s^3 w^2)` and a Schur
complement :math:`S = H_{gg} - H_{gx} H_{xx}^{-1} H_{xg}` for the border. At the optimum, :math:`H^{-1}` is the
Laplace (Gaussian) approximation of the posterior covariance; its diagonal blocks and the blocks within the band
are obtained by the selected-inversion recursion (Takahashi et al. 1973; for a chain it is the
Rauch-Tung-Striebel smoother's covariance recursion, Barfoot ch. 3.2) without forming the inverse. On the CPU the
factorisation and solves are one LAPACK banded call each and the selected inverse an odd-even reduction in
``O(log K)`` batched steps (:mod:`gpgeom.engine.banded`); on other devices the factorisation and the solves are
odd-even reductions too, so an iteration's time is dominated by the linearisation.

Banded storage used throughout: a symmetric block-banded matrix ``A`` with ``K`` block rows, blocks ``s x s`` and
block bandwidth ``w`` is stored as the ``K x (w + 1) x s x s`` tensor ``Ab`` with ``Ab[k, d] = A[k, k - d]`` (block row
``k``, ``d``-th block sub-diagonal); entries with ``k - d < 0`` are ignored (kept at zero).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from gpgeom.engine.banded import (
    _default_singular_tol,
    block_banded_cholesky,
    block_banded_selected_inverse,
    block_banded_solve,
)
from gpgeom.engine.factors import _check_finite_residual, _linearise, _Problem, _robust, _whiten

__all__: list[str] = []


# ----------------------------------------------------------------------------------------------------------------
# Assembly
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class _Normal:
    Hb: Tensor  # K x (w+1) x s x s
    bx: Tensor  # K x s
    Hxg: Tensor  # K x s x g
    Hgg: Tensor  # g x g
    bg: Tensor  # g
    cost: Tensor  # scalar
    diag_x: Tensor = field(default=None)  # K x s
    diag_g: Tensor = field(default=None)  # g


def _gram(Ju: Tensor, Jv: Tensor) -> Tensor:
    r""":math:`J_u^\top J_v` of a batch of blocks (``c x n x s`` each, ``c x s x s``): normal-matrix contributions."""
    return Ju.mT @ Jv


@dataclass
class _Plan:
    r"""How the normal-matrix contributions of one factor are summed (built once per
    :func:`~gpgeom.engine.least_squares.gauss_newton` call).

    Attributes:
        pairs: The pairs ``(u, v)`` of block columns whose products :math:`J_u^\top J_v` land in the lower band
            (``indices[:, u] >= indices[:, v]`` for some block); the others are never formed.
        uniq: ``U x a`` distinct index tuples, or ``None`` (one product per block).
        slot: ``M``: the row of each block in the padded ``U x c_max`` layout of the groups.
        cmax: The largest number of blocks on one tuple.
    """

    pairs: list[tuple[int, int]]
    uniq: Tensor | None = None
    slot: Tensor | None = None
    cmax: int = 1


def _plan(idx: Tensor) -> _Plan:
    r"""Group a factor's blocks by their index tuple when it pays: more than one block per tuple and a padded layout
    at most twice the number of blocks (else one product per block)."""
    M, a = idx.shape
    pairs = [(u, v) for u in range(a) for v in range(a) if bool((idx[:, u] >= idx[:, v]).any())]
    if M < 2:
        return _Plan(pairs)
    uniq, inv, counts = torch.unique(idx, dim=0, return_inverse=True, return_counts=True)
    U, cmax = uniq.shape[0], int(counts.max())
    if cmax < 2 or U * cmax > 2 * M:
        return _Plan(pairs)
    order = torch.argsort(inv, stable=True)
    start = torch.cumsum(counts, 0) - counts  # first sorted position of each group
    rank = torch.empty_like(inv)
    rank[order] = torch.arange(M, device=idx.device) - start[inv[order]]
    return _Plan(pairs, uniq=uniq, slot=inv * cmax + rank, cmax=cmax)


def _add_products(Hflat: Tensor, J: Tensor, idx: Tensor, pairs: list[tuple[int, int]], w: int) -> None:
    r"""Scatter-add :math:`J_u^\top J_v` of blocks ``J`` (``c x n x a x s``) on states ``idx`` (``c x a``) into the
    band (pairs whose rows lie above the diagonal go to the last, discarded slot of ``Hflat``)."""
    nslots = Hflat.shape[0] - 1
    for u, v in pairs:
        rows, cols = idx[:, u], idx[:, v]
        slot = torch.where(rows >= cols, rows * (w + 1) + (rows - cols), torch.full_like(rows, nslots))
        Hflat.index_add_(0, slot, _gram(J[:, :, u], J[:, :, v]))


def _assemble(
    prob: _Problem, X: Tensor, G: Tensor, chunk_size: int | None = None, accumulate: torch.dtype | None = None
) -> _Normal:
    r"""Normal equations :math:`H = \mathsf J^\top \Omega \mathsf J`, :math:`b = \mathsf J^\top \Omega e` and the cost.

    Each factor is linearised once (its residual and Jacobians, ``O(M r a s)``) and whitened and weighted (IRLS).
    The normal-matrix contributions :math:`\sum_m J_m^\top J_m` (``a s x a s``) are summed per group of blocks
    on the same states before they are scattered into the ``K x (w + 1)`` band: the whitened Jacobians of a group
    are stacked (padded with zero rows to the largest group) into one ``c_max r x a s`` matrix whose Gram matrix
    is the group's sum, one batched product per chunk of ``chunk_size`` groups (a measurement factor with ``c``
    blocks per knot interval forms ``M / c`` products instead of ``M``). Factors whose blocks rarely share states
    (the padding would more than double the rows) form one product per block, ``chunk_size`` blocks at a time.
    Either way the working memory is ``O(chunk_size a^2 s^2) + O(K w s^2)`` besides the Jacobians, however many
    blocks a factor has, and the result does not depend on ``chunk_size`` (up to the summation order, i.e.
    rounding).

    ``accumulate`` (e.g. ``torch.float64`` for float32 states): the whitened, weighted residuals and Jacobians, computed
    in the states' dtype, are cast to it before the products and sums, and the normal equations are returned in it.
    The covariances of a float32 fit need it: the Gram sums cancel (the motion prior's blocks are large and nearly
    singular: ``dt^-5`` for WNOJ), so summed in float32 they lose ``eps`` of the largest term, more than the
    measurements contribute on a fine knot grid, whereas rounding the Jacobians themselves costs only ``eps^2`` of it.
    """
    K, s, g, w = prob.K, prob.s, prob.g, prob.w
    chunk = prob.chunk_size if chunk_size is None else chunk_size
    dtype, device = X.dtype if accumulate is None else accumulate, X.device
    nslots = K * (w + 1)
    Hflat = torch.zeros(nslots + 1, s, s, dtype=dtype, device=device)  # last slot collects upper-triangle pairs
    bx = torch.zeros(K, s, dtype=dtype, device=device)
    Hxg = torch.zeros(K, s, g, dtype=dtype, device=device)
    Hgg = torch.zeros(g, g, dtype=dtype, device=device)
    bg = torch.zeros(g, dtype=dtype, device=device)
    cost = X.new_zeros(())
    for f in prob.factors:
        r, Jx, Jg = _linearise(prob, f, X, G)
        _check_finite_residual(f, r)
        e = _whiten(f, r)
        rho, weight = _robust(f, e)
        cost = cost + rho.sum()
        sw = weight.sqrt()
        W = None if f.sqrt_information is None else f.sqrt_information.to(r)
        idx = f.indices
        M, a = idx.shape
        if W is not None:
            Jx = torch.einsum("...ij,...jas->...ias", W, Jx)
            Jg = torch.einsum("...ij,...jg->...ig", W, Jg)
        if f.robust is not None:
            Jx = Jx * sw[:, None, None, None]
            Jg = Jg * sw[:, None, None]
            e = e * sw[:, None]
        if accumulate is not None:
            Jx, Jg, e = Jx.to(dtype), Jg.to(dtype), e.to(dtype)
        nr = Jx.shape[1]
        bx.index_add_(0, idx.reshape(-1), torch.einsum("mrus,mr->mus", Jx, e).reshape(-1, s))
        key = id(f)
        if key not in prob.plans:
            prob.plans[key] = _plan(idx)
        plan = prob.plans[key]
        if plan.uniq is None:
            for lo in range(0, M, chunk):
                hi = min(lo + chunk, M)
                _add_products(Hflat, Jx[lo:hi], idx[lo:hi], plan.pairs, w)
        else:
            U = plan.uniq.shape[0]
            P = Jx.new_zeros(U * plan.cmax, nr, a, s)
            P[plan.slot] = Jx
            P = P.reshape(U, plan.cmax * nr, a, s)
            for lo in range(0, U, chunk):
                hi = min(lo + chunk, U)
                _add_products(Hflat, P[lo:hi], plan.uniq[lo:hi], plan.pairs, w)
            del P
        if g > 0:
            for lo in range(0, M, chunk):
                hi = min(lo + chunk, M)
                Jx_c, Jg_c, e_c, idx_c = Jx[lo:hi], Jg[lo:hi], e[lo:hi], idx[lo:hi]
                Hxg.index_add_(0, idx_c.reshape(-1), torch.einsum("mrus,mrg->musg", Jx_c, Jg_c).reshape(-1, s, g))
                Hgg = Hgg + torch.einsum("mrg,mrh->gh", Jg_c, Jg_c)
                bg = bg + torch.einsum("mrg,mr->g", Jg_c, e_c)
    Hb = Hflat[:nslots].reshape(K, w + 1, s, s)
    out = _Normal(Hb=Hb, bx=bx, Hxg=Hxg, Hgg=Hgg, bg=bg, cost=cost)
    out.diag_x = Hb[:, 0].diagonal(dim1=-2, dim2=-1).clone()
    out.diag_g = Hgg.diagonal().clone()
    return out


# ----------------------------------------------------------------------------------------------------------------
# Linear solve of the bordered system
# ----------------------------------------------------------------------------------------------------------------
class _Singular(Exception):
    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.where = where


def _factor_bordered(
    N: _Normal, damping: float, singular_tol: float | None, banded: str = "auto"
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Factorise the (damped) bordered system. Returns (Lb, Y = H_xx^{-1} H_xg, chol(S))."""
    Hb, Hgg = N.Hb, N.Hgg
    if damping > 0:
        Dx, Dg = _damping_diagonal(N)
        Hb = Hb.clone()
        Hb[:, 0] = Hb[:, 0] + torch.diag_embed(damping * Dx)
        Hgg = Hgg + torch.diag(damping * Dg)
    Lb, failed = block_banded_cholesky(Hb, singular_tol=singular_tol, method=banded)
    if failed is not None:
        raise _Singular(f"state block {failed}")
    g = Hgg.shape[0]
    if g == 0:
        return Lb, N.Hxg, Hgg
    Y = block_banded_solve(Lb, N.Hxg, method=banded)
    S = Hgg - torch.einsum("ksg,ksh->gh", N.Hxg, Y)
    S = 0.5 * (S + S.mT)
    LS, info = torch.linalg.cholesky_ex(S)
    tol = _default_singular_tol(S.dtype) if singular_tol is None else singular_tol
    ok = bool(info == 0) and bool((LS.diagonal().square() >= tol * Hgg.diagonal()).all())
    ok = ok and bool(torch.isfinite(LS).all()) and bool((Hgg.diagonal() > 0).all())
    if not ok:
        raise _Singular("the global-parameter border (Schur complement)")
    return Lb, Y, LS


def _solve_bordered(N: _Normal, Lb: Tensor, Y: Tensor, LS: Tensor, banded: str = "auto") -> tuple[Tensor, Tensor]:
    r"""Solve H [dx; dg] = -[bx; bg] with the factorisation of :func:`_factor_bordered`."""
    z = block_banded_solve(Lb, N.bx.unsqueeze(-1), method=banded).squeeze(-1)  # H_xx^{-1} b_x
    if LS.shape[0] == 0:
        return -z, N.bg.new_zeros(0)
    rhs = -N.bg + torch.einsum("ksg,ks->g", N.Hxg, z)
    dg = torch.cholesky_solve(rhs.unsqueeze(-1), LS).squeeze(-1)
    dx = -z - torch.einsum("ksg,g->ks", Y, dg)
    return dx, dg


def _damping_diagonal(N: _Normal) -> tuple[Tensor, Tensor]:
    r"""Marquardt scaling D = diag(H), floored at 1e-9 of its mean so that uninformed variables are damped too."""
    allv = torch.cat([N.diag_x.reshape(-1), N.diag_g])
    floor = 1e-9 * allv.abs().mean().clamp_min(torch.finfo(allv.dtype).tiny)
    return N.diag_x.clamp_min(floor), N.diag_g.clamp_min(floor)


def _covariances(N: _Normal, Lb: Tensor, Y: Tensor, LS: Tensor, w: int, banded: str = "auto"):
    Sb = block_banded_selected_inverse(Lb, method="loop" if banded == "loop" else "auto")
    cov = Sb[:, 0]
    cross = Sb[:, 1:]
    g = LS.shape[0]
    if g == 0:
        return cov, cross, None, None
    eye = torch.eye(g, dtype=LS.dtype, device=LS.device)
    Sinv = torch.cholesky_solve(eye, LS)
    YS = Y @ Sinv  # K x s x g
    cov = cov + YS @ Y.mT
    cov = 0.5 * (cov + cov.mT)
    K = Y.shape[0]
    cross = cross.clone()
    for d in range(1, w + 1):
        if d < K:
            cross[: K - d, d - 1] = cross[: K - d, d - 1] + YS[: K - d] @ Y[d:].mT
    return cov, cross, Sinv, -YS

r"""Block-banded symmetric positive-definite linear algebra: the O(K) kernel of Gauss-Newton on chains of states.

A symmetric matrix of ``K x K`` blocks of size ``s x s`` whose non-zero blocks lie within ``w`` block diagonals of the
main one (the normal matrix of a Markov chain of states, Barfoot, *State Estimation for Robotics*, 2017, sec. 3.2)
is stored as ``Ab`` (``K x (w + 1) x s x s``: row ``k`` holds blocks ``(k, k), (k, k - 1), ..., (k, k - w)``).

* :func:`block_banded_cholesky`: :math:`A = L L^\top` with ``L`` block-banded of the same bandwidth (no fill-in),
  in :math:`O(K w^2 s^3)`, reporting the first block whose pivot is singular;
* :func:`block_banded_solve`: forward and backward substitution with ``L``;
* :func:`block_banded_selected_inverse`: the blocks of :math:`A^{-1}` inside the band (the marginal and
  neighbouring covariances of the chain) by the Takahashi recursion, without forming :math:`A^{-1}`.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["block_banded_cholesky", "block_banded_selected_inverse", "block_banded_solve"]


def _default_singular_tol(dtype: torch.dtype) -> float:
    return 1e3 * torch.finfo(dtype).eps


def _band_blocks(Bb: Tensor) -> list[list[Tensor]]:
    r"""``out[d][k] = Bb[k, d]`` as lists of ``s x s`` views (``w + 1`` unbind calls), cheap to index in loops."""
    return [list(Bb[:, d].unbind(0)) for d in range(Bb.shape[1])]


def _stack_band(rows: list[list[Tensor]], w: int, like: Tensor) -> Tensor:
    K = len(rows)
    out = like.new_zeros(K, w + 1, *like.shape[-2:])
    for d in range(w + 1):
        if d < K:
            out[d:, d] = torch.stack([rows[k][d] for k in range(d, K)])
    return out


def _diag_inverse(Lb: Tensor) -> Tensor:
    r"""``K x s x s`` inverses of the triangular diagonal blocks ``L_kk`` (one batched call)."""
    eye = torch.eye(Lb.shape[-1], dtype=Lb.dtype, device=Lb.device)
    return torch.linalg.solve_triangular(Lb[:, 0], eye.expand_as(Lb[:, 0]), upper=False)


def block_banded_cholesky(Ab: Tensor, *, singular_tol: float | None = None) -> tuple[Tensor, int | None]:
    r"""Cholesky factor of a symmetric positive-definite block-banded matrix, in banded storage.

    Computes the lower block-banded :math:`L` with :math:`A = L L^\top` row by row:

    .. math::
        L_{kj} = \Big(A_{kj} - \sum_{i=k-w}^{j-1} L_{ki} L_{ji}^\top\Big) L_{jj}^{-\top}, \quad k-w \le j < k;
        \qquad L_{kk} = \operatorname{chol}\Big(A_{kk} - \sum_{i=k-w}^{k-1} L_{ki} L_{ki}^\top\Big).

    Cost :math:`O(K w^2 s^3)`, a Python loop over the ``K`` block rows with no host synchronisation (a failed
    pivot is detected after the loop).

    Args:
        Ab: ``K x (w + 1) x s x s`` banded storage, ``Ab[k, d] = A[k, k - d]`` (see the module docstring).
        singular_tol: A pivot is declared singular when :math:`(L_{kk})_{ii}^2 < \text{tol} \cdot (A_{kk})_{ii}`,
            i.e. when conditioning on the preceding variables leaves less than a fraction ``tol`` of a variable's
            information (a relative condition-number test). Default ``1e3 * eps`` of the dtype.

    Returns:
        ``(Lb, failed)``: the factor in the same storage (``Lb[k, d] = L[k, k - d]``) and ``None``, or the index of
        the first block row whose pivot failed (``Lb`` is then unusable from that row on).
    """
    K, w1, s, _ = Ab.shape
    w = w1 - 1
    tol = _default_singular_tol(Ab.dtype) if singular_tol is None else singular_tol
    A = _band_blocks(Ab)
    L: list[list[Tensor]] = []
    infos = []
    for k in range(K):
        dmax = min(k, w)
        row: list = [None] * (dmax + 1)
        for d in range(dmax, 0, -1):  # L[k, j] for j = k - d, farthest first
            j = k - d
            C = A[d][k]
            for e in range(d + 1, dmax + 1):  # i = k - e < j:  L[k, i] L[j, i]^T, with j - i = e - d
                C = torch.addmm(C, row[e], L[j][e - d].mT, alpha=-1.0)
            row[d] = torch.linalg.solve_triangular(L[j][0].mT, C, upper=True, left=False)  # C L_jj^{-T}
        C = A[0][k]
        for d in range(1, dmax + 1):
            C = torch.addmm(C, row[d], row[d].mT, alpha=-1.0)
        row[0], info = torch.linalg.cholesky_ex(C)
        infos.append(info)
        L.append(row)
    Lb = _stack_band(L, w, Ab)
    info = torch.stack(infos)
    piv = Lb[:, 0].diagonal(dim1=-2, dim2=-1).square()
    ref = Ab[:, 0].diagonal(dim1=-2, dim2=-1)
    bad = (info != 0) | ~(piv >= tol * ref).all(-1) | ~(ref > 0).all(-1) | ~torch.isfinite(piv).all(-1)
    if bool(bad.any()):
        return Lb, int(bad.nonzero()[0, 0])
    return Lb, None


def block_banded_solve(Lb: Tensor, rhs: Tensor) -> Tensor:
    r"""Solve :math:`L L^\top X = B` given the banded Cholesky factor from :func:`block_banded_cholesky`.

    Forward substitution :math:`L Y = B`, :math:`Y_k = L_{kk}^{-1}(B_k - \sum_{d=1}^{w} L_{k,k-d} Y_{k-d})`, then back
    substitution :math:`L^\top X = Y`, :math:`X_k = L_{kk}^{-\top}(Y_k - \sum_{d=1}^{w} L_{k+d,k}^\top X_{k+d})`.
    The inverses :math:`L_{kk}^{-1}` are formed in one batched call, so each row costs only matrix products.

    Args:
        Lb: ``K x (w + 1) x s x s`` banded Cholesky factor.
        rhs: ``K x s x c`` right-hand sides.

    Returns:
        ``K x s x c`` solution.
    """
    K, w1, s, _ = Lb.shape
    w = w1 - 1
    Linv = _diag_inverse(Lb)
    Li = list(Linv.unbind(0))
    LiT = list(Linv.mT.unbind(0))
    Lo = _band_blocks(Lb)
    LoT = _band_blocks(Lb.mT)
    B = list(rhs.unbind(0))
    Y: list[Tensor] = []
    for k in range(K):
        C = B[k]
        for d in range(1, min(k, w) + 1):
            C = torch.addmm(C, Lo[d][k], Y[k - d], alpha=-1.0)
        Y.append(Li[k] @ C)
    X: list = [None] * K
    for k in range(K - 1, -1, -1):
        C = Y[k]
        for d in range(1, min(w, K - 1 - k) + 1):
            C = torch.addmm(C, LoT[d][k + d], X[k + d], alpha=-1.0)
        X[k] = LiT[k] @ C
    return torch.stack(X)


def block_banded_selected_inverse(Lb: Tensor) -> Tensor:
    r"""Blocks of :math:`A^{-1}` within the band, from the banded Cholesky factor of :math:`A = L L^\top`.

    With :math:`\Sigma = A^{-1}`, :math:`L^\top \Sigma = L^{-1}` is lower triangular with diagonal blocks
    :math:`L_{kk}^{-1}`. Reading its blocks :math:`(k, j)`, :math:`j \ge k`, from the last block row upwards gives
    the recursion (Takahashi et al. 1973), with :math:`G^{(d)}_k = L_{kk}^{-\top} L_{k+d,k}^\top`:

    .. math::
        \Sigma_{k,k+e} = -\sum_{d=1}^{w} G^{(d)}_k \Sigma_{k+d,k+e} \quad (e = 1..w), \qquad
        \Sigma_{kk} = (L_{kk} L_{kk}^\top)^{-1} - \sum_{e=1}^{w} \Sigma_{k,k+e} G^{(e)\top}_k,

    which only touches blocks within the band: :math:`O(K w^2 s^3)` without forming :math:`\Sigma`. For ``w = 1``
    it is the Rauch-Tung-Striebel covariance recursion.

    Args:
        Lb: ``K x (w + 1) x s x s`` banded Cholesky factor.

    Returns:
        ``K x (w + 1) x s x s`` tensor ``Sb`` with ``Sb[k, d] = Sigma[k, k + d]`` (*upper* band, zero where
        ``k + d >= K``); ``Sb[:, 0]`` are the marginal covariances.
    """
    K, w1, s, _ = Lb.shape
    w = w1 - 1
    Linv = _diag_inverse(Lb)
    P0 = list((Linv.mT @ Linv).unbind(0))
    # G[d][k] = L_kk^{-T} L_{k+d,k}^T for k < K - d  (batched)
    G: list[list[Tensor]] = [[]]
    for d in range(1, w + 1):
        G.append(list((Linv[: K - d].mT @ Lb[d:, d].mT).unbind(0)) if d < K else [])
    S: list[list[Tensor]] = [[] for _ in range(K)]  # S[k][e] = Sigma[k, k + e]

    def sig(i: int, j: int) -> Tensor:  # Sigma[i, j] for |i - j| <= w, i, j > current row
        return S[i][j - i] if j >= i else S[j][i - j].mT

    for k in range(K - 1, -1, -1):
        dmax = min(w, K - 1 - k)
        row = [P0[k]] + [P0[k]] * dmax
        for e in range(1, dmax + 1):
            C = -(G[1][k] @ sig(k + 1, k + e))
            for d in range(2, dmax + 1):
                C = torch.addmm(C, G[d][k], sig(k + d, k + e), alpha=-1.0)
            row[e] = C
        Skk = P0[k]
        for e in range(1, dmax + 1):
            Skk = torch.addmm(Skk, row[e], G[e][k].mT, alpha=-1.0)
        row[0] = Skk
        S[k] = row
    Sb = torch.zeros_like(Lb)  # upper band: Sb[k, d] = Sigma[k, k + d]
    for d in range(min(w, K - 1) + 1):
        Sb[: K - d, d] = torch.stack([S[k][d] for k in range(K - d)])
    Sb[:, 0] = 0.5 * (Sb[:, 0] + Sb[:, 0].mT)
    return Sb

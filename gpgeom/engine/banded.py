r"""Block-banded symmetric positive-definite linear algebra: the O(K) kernel of Gauss-Newton on chains of states.

A symmetric matrix of ``K x K`` blocks of size ``s x s`` whose non-zero blocks lie within ``w`` block diagonals of the
main one (the normal matrix of a Markov chain of states, Barfoot, *State Estimation for Robotics*, 2017, sec. 3.2)
is stored as ``Ab`` (``K x (w + 1) x s x s``: row ``k`` holds blocks ``(k, k), (k, k - 1), ..., (k, k - w)``).

* :func:`block_banded_cholesky`: :math:`A = L L^\top` with ``L`` block-banded of the same bandwidth (no fill-in),
  in :math:`O(K w^2 s^3)`, reporting the first block whose pivot is singular;
* :func:`block_banded_solve`: forward and backward substitution with ``L``;
* :func:`block_banded_selected_inverse`: the blocks of :math:`A^{-1}` inside the band (the marginal and
  neighbouring covariances of the chain) by the Takahashi recursion, without forming :math:`A^{-1}`;
* :func:`block_banded_matvec`: the product :math:`A X` from the same storage (residuals of a solve, matrix-free use).

Each has three implementations (``method=``), equal to rounding (the tests hold them to ``1e-10`` in float64):

* ``"lapack"`` (factorisation and solve, CPU): the matrix is a scalar band matrix of half-bandwidth
  :math:`u = (w+1)s - 1` (every entry of a block row lies within ``u`` of the diagonal), so LAPACK's banded Cholesky
  ``?pbtrf`` and its solve ``?pbtrs`` (through :mod:`scipy.linalg.lapack`) factorise it in one compiled call of
  :math:`O(K s u^2)` flops. On the CPU this is the fastest by far: the loop's cost is not its flops but about ten
  Python-dispatched torch operations per block row (50 us each, 0.5 s at ``K = 10^4``), against 20-30 ms here
  (``benchmarks/engine.py``). The factor is the same unique Cholesky factor, so it is returned in block storage.
* ``"scan"`` (any device): the substitutions and the covariance recursion are affine
  recurrences along the chain, :math:`x_k = F_k x_{k-1} + c_k` (for the covariances :math:`X_k = F_k X_{k-1}
  F_k^\top + C_k`), evaluated by odd-even reduction (a work-efficient parallel prefix, Blelloch 1990): pairs of
  steps are composed into one, :math:`(F_{2j}F_{2j-1},\ F_{2j}c_{2j-1} + c_{2j})`, the half-length recurrence is
  solved recursively and the odd terms filled in, so ``2 log2 K`` batched steps of ``O(K)`` total work replace
  ``K`` sequential ones. Bandwidth ``w > 1`` is reduced to ``w = 1`` by grouping ``w`` consecutive states into
  super-blocks of size ``w s`` (the factor is then block-bidiagonal). The factorisation's pivots
  :math:`D_k = A_{kk} - A_{k,k-1} D_{k-1}^{-1} A_{k-1,k}` follow a Riccati recurrence, which is not affine, but each
  is the Schur complement of the states before ``k`` onto ``k``, and eliminating the shared state of two neighbouring
  chain segments is an associative operation on the segments' quadratic forms (Gaussian elimination in any order
  gives the same Schur complements, as in the parallel filter of Särkkä & García-Fernández, "Temporal
  parallelization of Bayesian smoothers", IEEE TAC 2021): the pivots are its prefixes, by the same odd-even
  reduction, and every matrix inverted on the way is a Schur complement of a principal submatrix, positive definite
  when ``A`` is. Used for the selected inverse on every device (LAPACK has no banded selected inversion) and for the
  factorisation and the solve off the CPU.
* ``"loop"``: the sequential recursions over block rows, :math:`O(K)` small torch operations (about ten kernel
  launches per block row on a GPU), the reference implementation of the tests.

``method="auto"`` (default) picks ``"lapack"`` on the CPU (when the dtype is float32 or float64 and no input requires
a gradient: LAPACK works on detached arrays, ``"lapack"`` refuses such inputs), else ``"scan"``;
a float32 factorisation off the CPU is then computed in float64 and rounded to float32 (``"loop"`` on devices
without float64, such as Apple's MPS). The reason: eliminating the middle of a long stiff chain from both sides
cancels more digits than the sequential recursion does, so the scan's forward error grows with the chain while its
residual stays within about twice the loop's. On random walks of condition number 1e6-2e8 (``K = 1000, 4000``;
``benchmarks/engine.py``, the accuracy table of ``benchmarks/results/engine_cpu_float64.md``) a float32 scan was
30-80 times less accurate than the float32 loop and LAPACK, the float64 scan rounded to float32 more accurate than
both; in float64 all three agree to 1e-12. The solves and the selected inverse by ``"scan"`` lose nothing of the
kind (the float32 loop's factor solved by the scan: the loop's error). ``method="scan"`` factorises in the input's
dtype.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "BANDED_METHODS",
    "block_banded_cholesky",
    "block_banded_matvec",
    "block_banded_selected_inverse",
    "block_banded_solve",
]

#: The implementations of the block-banded routines (see the module docstring).
BANDED_METHODS = ("auto", "lapack", "scan", "loop")


def _default_singular_tol(dtype: torch.dtype) -> float:
    return 1e3 * torch.finfo(dtype).eps


def _check_band(name: str, Ab: object) -> None:
    r"""``Ab`` is one chain's ``K x (w + 1) x s x s`` floating band (``K, w + 1, s >= 1``): a batch dimension, a
    vector of right-hand sides or an empty chain failed deep inside (``too many values to unpack``, a recursion
    error, or a method-dependent broadcast)."""
    if not isinstance(Ab, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(Ab).__name__}.")
    if Ab.dim() != 4 or Ab.shape[-1] != Ab.shape[-2] or 0 in Ab.shape:
        raise ValueError(
            f"`{name}` must be a K x (w + 1) x s x s tensor of one chain (K, w + 1, s >= 1; no batch dimensions: "
            f"loop over chains, or join them into one chain), got shape {tuple(Ab.shape)}."
        )
    if not Ab.is_floating_point():
        raise TypeError(f"`{name}` must be a floating tensor, got {Ab.dtype}.")


def _check_rhs(Lb: Tensor, rhs: object) -> None:
    K, _, s, _ = Lb.shape
    if not isinstance(rhs, Tensor):
        raise TypeError(f"`rhs` must be a torch.Tensor, got {type(rhs).__name__}.")
    if rhs.dim() != 3 or rhs.shape[:2] != (K, s):
        raise ValueError(
            f"`rhs` must be a {K} x {s} x c tensor (the blocks of `Lb`; a vector as {K} x {s} x 1), got shape "
            f"{tuple(rhs.shape)}."
        )
    if rhs.dtype != Lb.dtype or rhs.device != Lb.device:
        raise TypeError(
            f"`rhs` must have the dtype and device of `Lb` ({Lb.dtype} on {Lb.device}), got {rhs.dtype} on "
            f"{rhs.device}."
        )


def _pick(method: str, op: str, t: Tensor, *others: Tensor) -> str:
    r"""The implementation to run, by :func:`_method`, except when an input requires a gradient and autograd is
    recording: LAPACK's routines work on detached arrays, so ``"auto"`` then takes the differentiable scan (a
    factor with no ``grad_fn`` silently dropped every gradient through it) and ``"lapack"`` is refused."""
    grad = torch.is_grad_enabled() and any(x.requires_grad for x in (t, *others))
    if grad and method == "lapack":
        raise ValueError(
            f"method='lapack' does not propagate gradients (op {op!r}: an input requires grad); use 'auto', 'scan' "
            "or 'loop', or detach the inputs (or run under torch.no_grad())."
        )
    how = _method(method, t, op)
    if grad and how == "lapack":  # chosen by "auto"
        return "scan64" if op == "cholesky" and t.dtype == torch.float32 else "scan"
    return how


def _method(method: str, t: Tensor, op: str) -> str:
    if method not in BANDED_METHODS:
        raise ValueError(f"`method` must be one of {BANDED_METHODS}, got {method!r}.")
    lapack_ok = t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
    if method == "auto":
        if lapack_ok and op != "selected_inverse":
            return "lapack"
        if op != "cholesky" or t.dtype == torch.float64:
            return "scan"
        # the parallel factorisation's forward error on stiff chains grows faster than the loop's (both are
        # backward stable; float32: 30-80x the loop's): float32 factorises in float64 where the device has it
        return "scan64" if t.dtype == torch.float32 and t.device.type != "mps" else "loop"
    if method == "lapack" and (not lapack_ok or op == "selected_inverse"):
        why = "has no selected inverse" if op == "selected_inverse" else "needs a float32/float64 CPU tensor"
        raise ValueError(f"method='lapack' {why} (op {op!r}, got {t.dtype} on {t.device}); use 'scan' or 'loop'.")
    return method


# ----------------------------------------------------------------------------------------------------------------
# LAPACK scalar-band storage
# ----------------------------------------------------------------------------------------------------------------
def _band_view(storage: Tensor, K: int, s: int, u: int, e: int) -> Tensor:
    r"""``(K - e) x s x s`` view ``V`` of LAPACK's lower band storage with ``V[k, b, a] = A[(k + e) s + a, k s + b]``.

    The storage is the C-ordered ``n x (u + 1)`` array ``T[j, d] = A[j + d, j]`` (the transpose of LAPACK's
    column-major ``(u + 1) x n`` array ``AB(1 + i - j, j)``), so entry ``A[i, j]`` lives at ``j u + i``: with
    ``j = k s + b`` and ``i = (k + e) s + a`` that is ``k s (u + 1) + b u + a + e s``. For ``e = 0`` the positions
    with ``a < b`` lie outside the band (they alias other entries) and must only be written with zeros.
    """
    return torch.as_strided(storage, (K - e, s, s), (s * (u + 1), u, 1), storage.storage_offset() + e * s)


def _to_lapack(Ab: Tensor) -> tuple[Tensor, int]:
    r"""Block band ``K x (w + 1) x s x s`` -> the flat LAPACK lower band storage (``n (u + 1)``) and ``u``."""
    K, w1, s, _ = Ab.shape
    u = w1 * s - 1
    st = Ab.new_zeros(K * s * (u + 1))
    for e in range(min(w1, K)):
        blk = Ab[e:, e].mT
        _band_view(st, K, s, u, e).copy_(blk.triu() if e == 0 else blk)  # e = 0 first: its aliased zeros are rewritten
    return st, u


def _from_lapack(st: Tensor, K: int, w1: int, s: int) -> Tensor:
    u = w1 * s - 1
    Lb = st.new_empty(K, w1, s, s)
    for e in range(min(w1, K)):
        Lb[e:, e] = _band_view(st, K, s, u, e).mT
        Lb[:e, e] = 0.0
    Lb[:, 0].tril_()  # the e = 0 view's upper entries alias other band entries
    return Lb


def _lapack(name: str, dtype: torch.dtype):
    from scipy.linalg import lapack  # imported on first use

    return getattr(lapack, ("d" if dtype == torch.float64 else "s") + name)


def _cholesky_lapack(Ab: Tensor) -> tuple[Tensor, int | None]:
    K, w1, s, _ = Ab.shape
    if w1 == 1:  # block diagonal: one batched call (the band view below needs u >= s)
        L, info = torch.linalg.cholesky_ex(Ab[:, 0].detach())
        bad = (info != 0).nonzero()
        return L[:, None], (int(bad[0, 0]) if bad.numel() else None)
    st, u = _to_lapack(Ab.detach())
    ab = st.numpy().reshape(K * s, u + 1).T  # (u + 1) x n, Fortran-ordered: no copy
    c, info = _lapack("pbtrf", Ab.dtype)(ab, lower=1, overwrite_ab=1)
    out = torch.from_numpy(c.T.reshape(-1))
    fail = (info - 1) // s if info > 0 else None
    if info < 0:
        raise RuntimeError(f"LAPACK ?pbtrf rejected argument {-info} (n = {K * s}, u = {u}).")
    return _from_lapack(out, K, w1, s), fail


def _solve_lapack(Lb: Tensor, rhs: Tensor) -> Tensor:
    K, w1, s, _ = Lb.shape
    if w1 == 1:
        return torch.cholesky_solve(rhs, Lb[:, 0])
    st, u = _to_lapack(Lb.detach())
    ab = st.numpy().reshape(K * s, u + 1).T
    b = rhs.detach().reshape(K * s, -1).numpy()
    x, info = _lapack("pbtrs", Lb.dtype)(ab, b, lower=1)
    if info != 0:
        raise RuntimeError(f"LAPACK ?pbtrs rejected argument {-info}.")
    return torch.from_numpy(x).reshape(rhs.shape).to(rhs)


# ----------------------------------------------------------------------------------------------------------------
# Parallel prefix (odd-even reduction) of affine recurrences along the chain
# ----------------------------------------------------------------------------------------------------------------
def _mv(F: Tensor, x: Tensor) -> Tensor:
    return F @ x


def _congruence(F: Tensor, X: Tensor) -> Tensor:
    return F @ X @ F.mT


def _prefix_scan(elements: tuple[Tensor, ...], combine) -> tuple[Tensor, ...]:
    r"""Inclusive prefixes of an associative ``combine`` over ``n`` elements (tuples of ``n x ...`` tensors) by
    odd-even reduction (a work-efficient parallel prefix, Blelloch 1990): neighbouring pairs are combined, the
    half-length problem is solved recursively and the odd prefixes filled in, ``O(log n)`` batched steps and
    ``O(n)`` work."""
    n = elements[0].shape[0]
    if n == 1:
        return elements
    ne, no = (n + 1) // 2, n // 2
    even = tuple(e[0::2] for e in elements)
    odd = tuple(e[1::2] for e in elements)
    pairs = combine(tuple(o[: ne - 1] for o in odd), tuple(e[1:] for e in even))  # elements 2j - 1 and 2j
    pre_even = _prefix_scan(tuple(torch.cat([e[:1], p]) for e, p in zip(even, pairs)), combine)
    pre_odd = combine(tuple(p[:no] for p in pre_even), odd)
    out = tuple(e.new_empty(e.shape) for e in elements)
    for o, pe, po in zip(out, pre_even, pre_odd):
        o[0::2] = pe
        o[1::2] = po
    return out


def _affine_scan(F: Tensor, c: Tensor, apply: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    r"""All terms of :math:`x_0 = c_0`, :math:`x_k = \mathrm{apply}(F_k, x_{k-1}) + c_k` (``F``: ``n x s x s``,
    ``F[0]`` unused; ``c``: ``n x ...``) in ``O(log n)`` batched steps and ``O(n)`` work.

    ``apply`` is linear in its second argument (``F x`` or ``F X F^T``) and composes as
    :math:`\mathrm{apply}(F_2, \mathrm{apply}(F_1, x)) = \mathrm{apply}(F_2 F_1, x)`, so the steps
    :math:`(F_k, c_k)` compose associatively, :math:`(F_1, c_1) \circ (F_2, c_2) = (F_2 F_1,\ \mathrm{apply}(F_2,
    c_1) + c_2)`, and :math:`x_k` is the offset of the prefix up to ``k`` (:func:`_prefix_scan`).
    """

    def compose(first, second):
        return second[0] @ first[0], apply(second[0], first[1]) + second[1]

    return _prefix_scan((F, c), compose)[1]


def _super_blocks(Lb: Tensor) -> tuple[Tensor, int]:
    r"""A bandwidth-``w`` factor as a block-bidiagonal one with super-blocks of ``w`` states (``K' x 2 x ws x ws``,
    ``K' = ceil(K / w)``, padded with identity states), and ``K'``."""
    K, w1, s, _ = Lb.shape
    w = w1 - 1
    Kp = -(-K // w)
    P = Lb.new_zeros(Kp * w, w1, s, s)
    P[:K] = Lb
    P[K:, 0] = torch.eye(s, dtype=Lb.dtype, device=Lb.device)
    P = P.reshape(Kp, w, w1, s, s)
    S = Lb.new_zeros(Kp, 2, w, s, w, s)
    for i in range(w):
        for j in range(w):
            if i >= j:  # L[Iw + i, Iw + j], offset i - j
                S[:, 0, i, :, j] = P[:, i, i - j]
            else:  # L[Iw + i, (I - 1)w + j], offset w + i - j <= w
                S[1:, 1, i, :, j] = P[1:, i, w + i - j]
        S[1:, 1, i, :, i] = P[1:, i, w]
    return S.reshape(Kp, 2, w * s, w * s), Kp


def _diag_inverse(Lb: Tensor) -> Tensor:
    r"""``K x s x s`` inverses of the triangular diagonal blocks ``L_kk`` (one batched call)."""
    eye = torch.eye(Lb.shape[-1], dtype=Lb.dtype, device=Lb.device)
    return torch.linalg.solve_triangular(Lb[:, 0], eye.expand_as(Lb[:, 0]), upper=False)


def _solve_scan(Lb: Tensor, rhs: Tensor) -> Tensor:
    K, w1, s, _ = Lb.shape
    w = w1 - 1
    Li = _diag_inverse(Lb)
    if w == 0 or K == 1:
        return Li.mT @ (Li @ rhs)
    if w > 1:
        S, Kp = _super_blocks(Lb)
        B = rhs.new_zeros(Kp * w, s, rhs.shape[-1])
        B[:K] = rhs
        return _solve_scan(S, B.reshape(Kp, w * s, -1)).reshape(Kp * w, s, -1)[:K]
    # forward L y = b:  y_k = -L_kk^{-1} L_{k,k-1} y_{k-1} + L_kk^{-1} b_k
    F = torch.zeros_like(Lb[:, 0])
    F[1:] = -(Li[1:] @ Lb[1:, 1])
    y = _affine_scan(F, Li @ rhs, _mv)
    # backward L^T x = y, reversed:  x_k = -L_kk^{-T} L_{k+1,k}^T x_{k+1} + L_kk^{-T} y_k
    Fb = torch.zeros_like(F)
    Fb[:-1] = -(Li[:-1].mT @ Lb[1:, 1].mT)
    x = _affine_scan(Fb.flip(0), (Li.mT @ y).flip(0), _mv)
    return x.flip(0)


def _selinv_scan(Lb: Tensor) -> Tensor:
    K, w1, s, _ = Lb.shape
    w = w1 - 1
    Li = _diag_inverse(Lb)
    P0 = Li.mT @ Li
    Sb = torch.zeros_like(Lb)
    if w == 0 or K == 1:
        Sb[:, 0] = P0
    elif w > 1:
        SS = _selinv_scan(_super_blocks(Lb)[0]).reshape(-1, 2, w, s, w, s)
        for i in range(w):
            for d in range(w + 1):
                if i >= K - d:
                    continue
                k = torch.arange(i, K - d, w)  # states k = Iw + i with k + d < K
                I_ = k // w
                Sb[k, d] = SS[I_, 0, i, :, i + d] if i + d < w else SS[I_, 1, i, :, i + d - w]
    else:
        # Sigma_kk = G_k Sigma_{k+1,k+1} G_k^T + P0_k (reversed: a congruence recurrence), G_k = L_kk^{-T} L_{k+1,k}^T
        G = torch.zeros_like(P0)
        G[:-1] = Li[:-1].mT @ Lb[1:, 1].mT
        Sig = _affine_scan(G.flip(0), P0.flip(0), _congruence).flip(0)
        Sb[:, 0] = Sig
        Sb[:-1, 1] = -(G[:-1] @ Sig[1:])
    Sb[:, 0] = 0.5 * (Sb[:, 0] + Sb[:, 0].mT)
    return Sb


def _eliminate_between(left: tuple[Tensor, Tensor, Tensor], right: tuple[Tensor, Tensor, Tensor]):
    r"""Join two chain segments that share a state and eliminate it (batched over the leading dimension).

    A segment from state ``i`` to state ``j`` is the quadratic form :math:`x_i^\top P x_i + 2 x_i^\top Q x_j +
    x_j^\top R x_j` that its interior leaves on its two end states (``P, Q, R``: ``n x s x s``). Two segments
    ``(i, j)`` and ``(j, k)`` make ``(i, k)`` with :math:`M = R_1 + P_2` (the Schur complement onto :math:`x_j` of
    the states strictly between ``i`` and ``k``: positive definite when the matrix is):
    :math:`P = P_1 - Q_1 M^{-1} Q_1^\top`, :math:`Q = -Q_1 M^{-1} Q_2`, :math:`R = R_2 - Q_2^\top M^{-1} Q_2`.
    Eliminating variables in any order gives the same Schur complements, so the operation is associative.
    """
    P1, Q1, R1 = left
    P2, Q2, R2 = right
    s = Q1.shape[-1]
    C, _ = torch.linalg.cholesky_ex(R1 + P2)  # a failed pivot only spoils prefixes past the first failure
    Z = torch.cholesky_solve(torch.cat([Q1.mT, Q2], -1), C)  # M^{-1} [Q1^T, Q2]
    P = P1 - Q1 @ Z[..., :s]
    R = R2 - Q2.mT @ Z[..., s:]
    return 0.5 * (P + P.mT), -(Q1 @ Z[..., s:]), 0.5 * (R + R.mT)


def _symmetric_super_blocks(Ab: Tensor) -> tuple[Tensor, int]:
    r"""A symmetric bandwidth-``w`` matrix as a block-tridiagonal one of super-blocks of ``w`` states:
    ``K' x 2 x ws x ws`` (``[:, 0]`` the full diagonal super-blocks, ``[:, 1]`` the ones below them), padded with
    identity states, and ``K'``."""
    S, Kp = _super_blocks(Ab)  # the lower half of each diagonal super-block, the sub-diagonal ones whole
    K, w1, s, _ = Ab.shape
    w = w1 - 1
    D = S[:, 0].reshape(Kp, w, s, w, s)
    strict = D * (torch.arange(w)[:, None] > torch.arange(w)[None, :]).to(D)[None, :, None, :, None]
    S[:, 0] = D.reshape(Kp, w * s, w * s) + strict.reshape(Kp, w * s, w * s).mT
    return S, Kp


def _cholesky_scan(Ab: Tensor) -> tuple[Tensor, Tensor]:
    r"""The banded Cholesky factor in ``O(log K)`` batched steps: the pivots :math:`D_k = A_{kk} - A_{k,k-1}
    D_{k-1}^{-1} A_{k-1,k}` (the Schur complement of the states before ``k`` onto ``k``, a Riccati recurrence that
    is not affine) are the prefixes of :func:`_eliminate_between` over the one-step segments
    :math:`(0, A_{k-1,k}, A_{kk})`; then :math:`L_{kk} = \operatorname{chol}(D_k)` and :math:`L_{k,k-1} =
    A_{k,k-1} L_{k-1,k-1}^{-\top}` in two batched calls. ``w > 1`` through super-blocks of ``w`` states (the same
    scalar factor, re-blocked). Returns the factor and, per state, a non-zero flag where its pivot failed."""
    K, w1, s, _ = Ab.shape
    w = w1 - 1
    if w == 0:
        L, info = torch.linalg.cholesky_ex(Ab[:, 0])
        return L[:, None], info
    if w > 1:
        S, Kp = _symmetric_super_blocks(Ab)
        Ls, info_s = _cholesky_scan(S)
        Ls = Ls.reshape(Kp, 2, w, s, w, s)
        Lb = Ab.new_zeros(Kp * w, w1, s, s)
        for i in range(w):
            for d in range(w1):  # L[Iw + i, Iw + i - d]: in the diagonal super-block when d <= i, else the one below
                Lb[i::w, d] = Ls[:, 0, i, :, i - d] if d <= i else Ls[:, 1, i, :, w + i - d]
        info = Ab.new_zeros(Kp * w, dtype=torch.int32)
        failed = info_s > 0  # cholesky_ex's info: the order of the first failing leading minor (1-based)
        info[torch.arange(Kp, device=Ab.device)[failed] * w + (info_s[failed] - 1) // s] = 1
        return Lb[:K], info[:K]
    zeros = torch.zeros_like(Ab[:, 0])
    Q = torch.cat([zeros[:1], Ab[1:, 1].mT])  # x_{k-1}^T A_{k-1,k} x_k
    _, _, D = _prefix_scan((zeros, Q, Ab[:, 0]), _eliminate_between)
    Lkk, info = torch.linalg.cholesky_ex(D)
    Lb = torch.zeros_like(Ab)
    Lb[:, 0] = Lkk
    Lb[1:, 1] = torch.linalg.solve_triangular(Lkk[:-1].mT, Ab[1:, 1], upper=True, left=False)
    return Lb, info


# ----------------------------------------------------------------------------------------------------------------
# The sequential recursions (reference)
# ----------------------------------------------------------------------------------------------------------------
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


def _cholesky_loop(Ab: Tensor) -> tuple[Tensor, Tensor]:
    K, w1, s, _ = Ab.shape
    w = w1 - 1
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
    return _stack_band(L, w, Ab), torch.stack(infos)


def _solve_loop(Lb: Tensor, rhs: Tensor) -> Tensor:
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


def _selinv_loop(Lb: Tensor) -> Tensor:
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


# ----------------------------------------------------------------------------------------------------------------
# Public routines
# ----------------------------------------------------------------------------------------------------------------
def block_banded_cholesky(
    Ab: Tensor, *, singular_tol: float | None = None, method: str = "auto"
) -> tuple[Tensor, int | None]:
    r"""Cholesky factor of a symmetric positive-definite block-banded matrix, in banded storage.

    Computes the lower block-banded :math:`L` with :math:`A = L L^\top` (row by row in the ``"loop"`` method):

    .. math::
        L_{kj} = \Big(A_{kj} - \sum_{i=k-w}^{j-1} L_{ki} L_{ji}^\top\Big) L_{jj}^{-\top}, \quad k-w \le j < k;
        \qquad L_{kk} = \operatorname{chol}\Big(A_{kk} - \sum_{i=k-w}^{k-1} L_{ki} L_{ki}^\top\Big).

    Cost :math:`O(K w^2 s^3)`. ``"lapack"`` computes the same factor with one call of LAPACK's ``?pbtrf`` on the
    scalar band (module docstring); ``"scan"`` computes the pivots :math:`A_{kk} - \sum_i L_{ki} L_{ki}^\top` as
    prefixes of an associative elimination in ``O(log K)`` batched steps (module docstring); ``"loop"`` is a Python
    loop over the ``K`` block rows with no host synchronisation (a failed pivot is detected after the loop).

    Args:
        Ab: ``K x (w + 1) x s x s`` banded storage, ``Ab[k, d] = A[k, k - d]`` (see the module docstring).
        singular_tol: A pivot is declared singular when :math:`(L_{kk})_{ii}^2 < \text{tol} \cdot (A_{kk})_{ii}`,
            i.e. when conditioning on the preceding variables leaves less than a fraction ``tol`` of a variable's
            information (a relative condition-number test). Default ``1e3 * eps`` of the dtype.
        method: ``"auto"`` (``"lapack"`` on the CPU, else ``"scan"``, for float32 computed in float64; ``"scan"``
            also on the CPU when ``Ab`` requires grad; module docstring), ``"lapack"``, ``"scan"`` or ``"loop"``.

    Returns:
        ``(Lb, failed)``: the factor in the same storage (``Lb[k, d] = L[k, k - d]``) and ``None``, or the index of
        the first block row whose pivot failed (``Lb`` is then unusable from that row on). Differentiable with
        respect to ``Ab`` except by ``"lapack"``.

    Raises:
        ValueError: For ``Ab`` not of shape ``K x (w + 1) x s x s`` (no batch dimensions), a ``singular_tol`` that
            is not a finite number ``>= 0``, an unknown ``method``, or ``method="lapack"`` with an ``Ab`` that
            requires grad (or off the CPU).
        TypeError: For an ``Ab`` that is not a floating tensor.
    """
    _check_band("Ab", Ab)
    K, w1, s, _ = Ab.shape
    if singular_tol is not None and not (
        isinstance(singular_tol, numbers.Real) and math.isfinite(singular_tol) and singular_tol >= 0
    ):  # NaN declared every pivot singular (a well-conditioned matrix "failed" at block 0)
        raise ValueError(f"`singular_tol` must be a finite number >= 0 (or None), got {singular_tol!r}.")
    tol = _default_singular_tol(Ab.dtype) if singular_tol is None else singular_tol
    how = _pick(method, "cholesky", Ab)
    bad = Ab.new_zeros(K, dtype=torch.bool)
    if how == "lapack":
        Lb, fail = _cholesky_lapack(Ab)
        if fail is not None:  # LAPACK stops there: only the rows before it are factorised
            bad[fail] = True
            Lb[fail:] = float("nan")
    else:
        if how == "scan64":  # chosen by "auto" only: the float64 factor, rounded to the input's dtype
            Lb, info = _cholesky_scan(Ab.double())
            Lb = Lb.to(Ab.dtype)
        elif how == "scan":
            Lb, info = _cholesky_scan(Ab)
        else:
            Lb, info = _cholesky_loop(Ab)
        bad |= info != 0
    piv = Lb[:, 0].diagonal(dim1=-2, dim2=-1).square()
    ref = Ab[:, 0].diagonal(dim1=-2, dim2=-1)
    bad = bad | ~(piv >= tol * ref).all(-1) | ~(ref > 0).all(-1) | ~torch.isfinite(piv).all(-1)
    if bool(bad.any()):
        return Lb, int(bad.nonzero()[0, 0])
    return Lb, None


def block_banded_solve(Lb: Tensor, rhs: Tensor, *, method: str = "auto") -> Tensor:
    r"""Solve :math:`L L^\top X = B` given the banded Cholesky factor from :func:`block_banded_cholesky`.

    Forward substitution :math:`L Y = B`, :math:`Y_k = L_{kk}^{-1}(B_k - \sum_{d=1}^{w} L_{k,k-d} Y_{k-d})`, then back
    substitution :math:`L^\top X = Y`, :math:`X_k = L_{kk}^{-\top}(Y_k - \sum_{d=1}^{w} L_{k+d,k}^\top X_{k+d})`:
    LAPACK's ``?pbtrs`` (``"lapack"``), the two recurrences by odd-even reduction in ``O(log K)`` batched steps
    (``"scan"``, module docstring) or row by row (``"loop"``).

    Args:
        Lb: ``K x (w + 1) x s x s`` banded Cholesky factor.
        rhs: ``K x s x c`` right-hand sides.
        method: ``"auto"`` (``"lapack"`` on the CPU unless an input requires grad, else ``"scan"``), ``"lapack"``,
            ``"scan"`` or ``"loop"``.

    Returns:
        ``K x s x c`` solution, differentiable with respect to ``Lb`` and ``rhs`` except by ``"lapack"``.

    Raises:
        ValueError: For ``Lb`` not ``K x (w + 1) x s x s`` or ``rhs`` not ``K x s x c``, or ``method="lapack"`` with
            an input that requires grad.
        TypeError: For ``rhs`` of another dtype or device than ``Lb``.
    """
    _check_band("Lb", Lb)
    _check_rhs(Lb, rhs)
    how = _pick(method, "solve", Lb, rhs)
    if how == "lapack":
        return _solve_lapack(Lb, rhs)
    if how == "scan":
        return _solve_scan(Lb, rhs)
    return _solve_loop(Lb, rhs)


def block_banded_selected_inverse(Lb: Tensor, *, method: str = "auto") -> Tensor:
    r"""Blocks of :math:`A^{-1}` within the band, from the banded Cholesky factor of :math:`A = L L^\top`.

    With :math:`\Sigma = A^{-1}`, :math:`L^\top \Sigma = L^{-1}` is lower triangular with diagonal blocks
    :math:`L_{kk}^{-1}`. Reading its blocks :math:`(k, j)`, :math:`j \ge k`, from the last block row upwards gives
    the recursion (Takahashi et al. 1973), with :math:`G^{(d)}_k = L_{kk}^{-\top} L_{k+d,k}^\top`:

    .. math::
        \Sigma_{k,k+e} = -\sum_{d=1}^{w} G^{(d)}_k \Sigma_{k+d,k+e} \quad (e = 1..w), \qquad
        \Sigma_{kk} = (L_{kk} L_{kk}^\top)^{-1} - \sum_{e=1}^{w} \Sigma_{k,k+e} G^{(e)\top}_k,

    which only touches blocks within the band: :math:`O(K w^2 s^3)` without forming :math:`\Sigma`. For ``w = 1``
    it is the Rauch-Tung-Striebel covariance recursion :math:`\Sigma_{kk} = G_k\Sigma_{k+1,k+1}G_k^\top +
    (L_{kk}L_{kk}^\top)^{-1}`, an affine recurrence that ``"scan"`` evaluates by odd-even reduction in
    ``O(log K)`` batched steps (``w > 1`` through super-blocks of ``w`` states; module docstring).

    Args:
        Lb: ``K x (w + 1) x s x s`` banded Cholesky factor.
        method: ``"auto"`` (= ``"scan"``), ``"scan"`` or ``"loop"``.

    Returns:
        ``K x (w + 1) x s x s`` tensor ``Sb`` with ``Sb[k, d] = Sigma[k, k + d]`` (*upper* band, zero where
        ``k + d >= K``); ``Sb[:, 0]`` are the marginal covariances.
    """
    _check_band("Lb", Lb)
    how = _method(method, Lb, "selected_inverse")
    return _selinv_scan(Lb) if how == "scan" else _selinv_loop(Lb)


def block_banded_matvec(Ab: Tensor, x: Tensor) -> Tensor:
    r"""The product :math:`A X` of the symmetric block-banded matrix stored in ``Ab`` with ``X``, :math:`O(K w s^2 c)`.

    Block row ``k`` of the product is :math:`A_{kk} X_k + \sum_{d=1}^{w} \big(A_{k,k-d} X_{k-d} + A_{k+d,k}^\top
    X_{k+d}\big)`: the stored lower band and, by symmetry, its transpose (blocks beyond the ends are absent).

    Args:
        Ab: ``K x (w + 1) x s x s`` banded storage, ``Ab[k, d] = A[k, k - d]`` (module docstring); the blocks
            ``Ab[k, d]`` with ``k < d`` lie outside the matrix and are ignored.
        x: ``K x s x c``.

    Returns:
        ``K x s x c``.
    """
    if not isinstance(Ab, Tensor) or Ab.dim() != 4 or Ab.shape[-1] != Ab.shape[-2]:
        raise ValueError(f"`Ab` must be a K x (w + 1) x s x s tensor, got shape {tuple(getattr(Ab, 'shape', ()))}.")
    K, w1, s, _ = Ab.shape
    if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[:2] != (K, s):
        raise ValueError(
            f"`x` must be a {K} x {s} x c tensor (the blocks of `Ab`), got {tuple(getattr(x, 'shape', ()))}."
        )
    y = Ab[:, 0] @ x
    for d in range(1, min(w1, K)):
        off = Ab[d:, d]  # A[k, k - d] for k = d..K-1
        y[d:] += off @ x[:-d]
        y[:-d] += off.mT @ x[d:]
    return y

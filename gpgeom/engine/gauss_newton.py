#!/usr/bin/env python3
r"""Gauss-Newton and Levenberg-Marquardt MAP estimation over a chain of states.

The problem (Barfoot, *State Estimation for Robotics*, 2017, ch. 4.3, "batch discrete-time estimation" and the
Gauss-Newton method) is a nonlinear least-squares problem over ``K`` states :math:`x_0, \dots, x_{K-1}` (each
stored as ``p`` numbers and perturbed in an ``s``-dimensional tangent space) and an optional vector of ``g`` global
parameters :math:`\gamma`:

.. math::
    J(x, \gamma) = \sum_{f} \sum_{m=1}^{M_f} \rho_f\big(\lVert e_{fm} \rVert\big), \qquad
    e_{fm} = W_{fm}\, r_f\big(x_{\mathcal I_{fm}}, \gamma\big),

where each factor ``f`` evaluates ``M_f`` residual blocks :math:`r_{fm} \in \mathbb R^r` on the states
:math:`\mathcal I_{fm}` (at most ``bandwidth + 1`` consecutive ones), :math:`W_{fm}` is a square root of the
information matrix (:math:`W^\top W = R^{-1}`) and :math:`\rho(u) = u^2/2` (least squares) or the Huber loss.
The cost is the negative log posterior up to a constant, so its minimiser is the MAP estimate.

Each iteration linearises the whitened residuals about the current estimate with the perturbation
:math:`x_k \leftarrow \operatorname{retract}(x_k, \delta_k)`, :math:`\gamma \leftarrow \gamma + \delta_\gamma`:
:math:`e(\delta) \approx e + \mathsf J \delta`, and solves the Gauss-Newton normal equations (Barfoot eq. 4.99)

.. math::
    (\mathsf J^\top \Omega \mathsf J + \lambda D)\, \delta^\star = -\mathsf J^\top \Omega e,

with the iteratively reweighted least-squares (IRLS) weights :math:`\Omega` of the robust loss (identity for least
squares), :math:`\lambda = 0` for Gauss-Newton and :math:`\lambda > 0`, :math:`D = \operatorname{diag}(H)` for
Levenberg-Marquardt. Because every factor touches at most ``w + 1`` consecutive states, the state part of
:math:`H = \mathsf J^\top \Omega \mathsf J` is block-banded (blocks ``s x s``, block bandwidth ``w``); the global
parameters add a dense border::

    H = [[H_xx, H_xg],      H_xx: (K s) x (K s), block-banded
         [H_gx, H_gg]]      H_xg: (K s) x g,     H_gg: g x g

It is solved by a block-banded Cholesky factorisation :math:`H_{xx} = L L^\top` in :math:`O(K s^3 w^2)` and a Schur
complement :math:`S = H_{gg} - H_{gx} H_{xx}^{-1} H_{xg}` for the border. At the optimum, :math:`H^{-1}` is the
Laplace (Gaussian) approximation of the posterior covariance; its diagonal blocks and the blocks within the band
are obtained by the selected-inversion recursion (Takahashi et al. 1973; for a chain it is the
Rauch-Tung-Striebel smoother's covariance recursion, Barfoot ch. 3.2) without forming the inverse.

Public API:

* :class:`Factor` -- a batch of residual blocks of one kind.
* :func:`gauss_newton` -- the optimiser, returning a :class:`GaussNewtonResult`.
* :func:`block_banded_cholesky`, :func:`block_banded_solve`, :func:`block_banded_selected_inverse` -- the
  linear algebra, usable on their own (e.g. by a state-space smoother).

Banded storage used throughout: a symmetric block-banded matrix ``A`` with ``K`` block rows, blocks ``s x s`` and
block bandwidth ``w`` is stored as the ``K x (w + 1) x s x s`` tensor ``Ab`` with ``Ab[k, d] = A[k, k - d]`` (block row
``k``, ``d``-th block sub-diagonal); entries with ``k - d < 0`` are ignored (kept at zero).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from gpgeom._validation import check_option, check_positive, check_tensor
from gpgeom.errors import ConvergenceWarning, NotPSDError

__all__ = [
    "Factor",
    "GaussNewtonResult",
    "gauss_newton",
    "block_banded_cholesky",
    "block_banded_solve",
    "block_banded_selected_inverse",
]

ResidualFn = Callable[[Tensor, Tensor], Tensor]
JacobianFn = Callable[[Tensor, Tensor], "tuple[Tensor, Tensor | None]"]
RetractFn = Callable[[Tensor, Tensor], Tensor]

_ROBUST_LOSSES = (None, "huber")
_METHODS = ("lm", "gn")


# ----------------------------------------------------------------------------------------------------------------
# Factors
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Factor:
    r"""A batch of ``M`` residual blocks of the same form, each on ``a`` states (and the globals).

    Attributes:
        indices: ``M x a`` integer tensor: the states each residual block depends on. The indices of one block
            must lie within ``bandwidth + 1`` consecutive states (checked by :func:`gauss_newton`). A factor on the
            global parameters only still names one state per block (its Jacobian there is zero).
        residual: ``residual(states, globals) -> M x r``. ``states`` is ``M x a x p`` (the stored states
            ``x[indices]``), ``globals`` is the ``g`` vector of global parameters (``g = 0`` when there are none).
            Must be written with batched torch operations (it is differentiated with ``torch.func.jacfwd``, which
            vmaps over tangent directions): no ``.item()``, no data-dependent Python control flow.
        jacobian: Optional analytic Jacobian ``jacobian(states, globals) -> (J_x, J_g)`` of the *unwhitened*
            residual with respect to the tangent perturbation at zero,
            :math:`\partial r(\operatorname{retract}(x, \delta), \gamma + \delta_\gamma) / \partial (\delta,
            \delta_\gamma)|_0`: ``J_x`` is ``M x r x a x s`` and ``J_g`` is ``M x r x g`` (or ``None`` when the
            factor does not depend on the globals). When omitted it is computed by forward-mode autodiff.
        sqrt_information: Optional whitening :math:`W` with :math:`W^\top W = R^{-1}` (inverse noise covariance):
            ``r x r`` (shared) or ``M x r x r`` (per block); e.g. the transposed inverse Cholesky factor of the
            noise covariance, or ``diag(1 / sigma)``. ``None`` means the identity.
        robust: ``None`` (least squares, :math:`\rho(u) = u^2/2`) or ``"huber"``: :math:`\rho(u) = u^2/2` for
            :math:`u \le \delta` and :math:`\delta (u - \delta/2)` beyond, applied to the norm :math:`u` of each
            whitened residual *block* (use ``r = 1`` blocks for a component-wise loss). Minimised by IRLS with
            block weights :math:`\min(1, \delta/u)`.
        robust_threshold: Huber's :math:`\delta` in whitened units (standard deviations), default ``1.0``.
        name: Used in error messages.
    """

    indices: Tensor
    residual: ResidualFn
    jacobian: JacobianFn | None = None
    sqrt_information: Tensor | None = None
    robust: str | None = None
    robust_threshold: float = 1.0
    name: str = ""

    def __post_init__(self) -> None:
        label = self._label()
        check_tensor(f"{label}.indices", self.indices, ndim=2, finite=False)
        if self.indices.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise TypeError(f"`{label}.indices` must be an integer tensor, got dtype {self.indices.dtype}.")
        if self.indices.shape[0] == 0 or self.indices.shape[1] == 0:
            raise ValueError(f"`{label}.indices` must be M x a with M, a >= 1, got shape {tuple(self.indices.shape)}.")
        self.indices = self.indices.long()
        if not callable(self.residual):
            raise TypeError(f"`{label}.residual` must be callable, got {type(self.residual).__name__}.")
        if self.jacobian is not None and not callable(self.jacobian):
            raise TypeError(f"`{label}.jacobian` must be callable or None, got {type(self.jacobian).__name__}.")
        if self.sqrt_information is not None:
            W = check_tensor(f"{label}.sqrt_information", self.sqrt_information, ndim=(2, 3), floating=True)
            if W.shape[-1] != W.shape[-2] or (W.dim() == 3 and W.shape[0] != self.indices.shape[0]):
                raise ValueError(
                    f"`{label}.sqrt_information` must be r x r or M x r x r with M = {self.indices.shape[0]}, "
                    f"got shape {tuple(W.shape)}."
                )
        check_option(f"{label}.robust", self.robust, _ROBUST_LOSSES)
        check_positive(f"{label}.robust_threshold", self.robust_threshold)

    def _label(self) -> str:
        return f"Factor {self.name!r}" if self.name else "Factor"

    @property
    def num_blocks(self) -> int:
        r"""``M``, the number of residual blocks."""
        return self.indices.shape[0]

    @property
    def arity(self) -> int:
        r"""``a``, the number of states per residual block."""
        return self.indices.shape[1]


@dataclass
class GaussNewtonResult:
    r"""The outcome of :func:`gauss_newton`.

    Attributes:
        states: ``K x p`` MAP states.
        globals: ``g`` MAP global parameters (empty when there are none).
        cost: Final cost :math:`\sum \rho(\lVert e \rVert)` (half the sum of squared whitened residuals for least
            squares).
        cost_history: Cost at the initial point and after each accepted step.
        iterations: Number of linear solves (accepted or rejected steps).
        converged: Whether a convergence test (``ftol``, ``xtol`` or ``gtol``) was met.
        message: Which test stopped the iteration.
        damping: Final Levenberg-Marquardt damping :math:`\lambda` (``0.0`` for Gauss-Newton).
        covariances: ``K x s x s`` marginal covariances of the states' tangent perturbations (the diagonal blocks
            of :math:`H^{-1}` at the final estimate, border included), or ``None`` unless requested.
        cross_covariances: ``K x w x s x s``: ``cross_covariances[k, d - 1]`` is :math:`\operatorname{Cov}(\delta_k,
            \delta_{k+d})`, ``d = 1..w`` (zero where ``k + d >= K``), or ``None``.
        global_covariance: ``g x g`` marginal covariance of the global parameters, or ``None``.
        state_global_covariance: ``K x s x g`` cross-covariance of each state and the globals, or ``None``.
    """

    states: Tensor
    globals: Tensor
    cost: float
    cost_history: list[float]
    iterations: int
    converged: bool
    message: str
    damping: float
    covariances: Tensor | None = None
    cross_covariances: Tensor | None = None
    global_covariance: Tensor | None = None
    state_global_covariance: Tensor | None = None


# ----------------------------------------------------------------------------------------------------------------
# Block-banded linear algebra
# ----------------------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------------------
# Assembly
# ----------------------------------------------------------------------------------------------------------------
def _additive_retract(x: Tensor, dx: Tensor) -> Tensor:
    return x + dx


@dataclass
class _Problem:
    factors: list[Factor]
    retract: RetractFn
    K: int
    p: int
    s: int
    g: int
    w: int
    chunk_size: int = 16384  # residual blocks per chunk of the assembly (see _assemble)


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


def _check_residual(f: Factor, r: object, M: int) -> Tensor:
    label = f._label()
    if not isinstance(r, Tensor) or r.dim() != 2 or r.shape[0] != M:
        shape = tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__
        raise ValueError(
            f"{label}: `residual` must return an M x r tensor with M = {M} (one row per residual block), got {shape}."
        )
    if f.sqrt_information is not None and f.sqrt_information.shape[-1] != r.shape[1]:
        raise ValueError(
            f"{label}: `residual` returns r = {r.shape[1]} components but `sqrt_information` is "
            f"{tuple(f.sqrt_information.shape)}."
        )
    return r


def _whiten(f: Factor, r: Tensor) -> Tensor:
    if f.sqrt_information is None:
        return r
    W = f.sqrt_information.to(r)
    return torch.einsum("...ij,...j->...i", W, r) if W.dim() == 3 else r @ W.mT


def _robust(f: Factor, e: Tensor) -> tuple[Tensor, Tensor]:
    r"""Return (rho(||e_m||) per block, IRLS weight per block)."""
    sq = e.square().sum(-1)
    if f.robust is None:
        return 0.5 * sq, torch.ones_like(sq)
    delta = f.robust_threshold
    u = sq.sqrt()
    inlier = u <= delta
    rho = torch.where(inlier, 0.5 * sq, delta * (u - 0.5 * delta))
    weight = torch.where(inlier, torch.ones_like(u), delta / u.clamp_min(torch.finfo(u.dtype).tiny))
    return rho, weight


def _cost(prob: _Problem, X: Tensor, G: Tensor) -> Tensor:
    total = X.new_zeros(())
    for f in prob.factors:
        r = _check_residual(f, f.residual(X[f.indices], G), f.num_blocks)
        rho, _ = _robust(f, _whiten(f, r))
        total = total + rho.sum()
    return total


def _linearise(prob: _Problem, f: Factor, X: Tensor, G: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""Residual ``M x r`` and Jacobians ``M x r x a x s``, ``M x r x g`` of one factor at (X, G)."""
    M, a = f.num_blocks, f.arity
    s, g, p = prob.s, prob.g, prob.p
    Xb = X[f.indices]  # M x a x p
    label = f._label()
    if f.jacobian is not None:
        r = _check_residual(f, f.residual(Xb, G), M)
        out = f.jacobian(Xb, G)
        if not (isinstance(out, tuple | list) and len(out) == 2):
            raise ValueError(f"{label}: `jacobian` must return a pair (J_x, J_g), got {type(out).__name__}.")
        Jx, Jg = out
        check_tensor(f"{label} jacobian J_x", Jx, ndim=4, shape=(M, r.shape[1], a, s))
        if Jg is None:
            Jg = r.new_zeros(M, r.shape[1], g)
        else:
            check_tensor(f"{label} jacobian J_g", Jg, ndim=3, shape=(M, r.shape[1], g))
        return r, Jx.to(r), Jg.to(r)

    Xflat = Xb.reshape(M * a, p)

    def h(d: Tensor) -> tuple[Tensor, Tensor]:
        # One shared tangent direction for every block: block m depends on its own perturbation only, so the
        # derivative of block m's residual along e_j is column j of block m's Jacobian.
        dx = d[: a * s].reshape(1, a, s).expand(M, a, s).reshape(M * a, s)
        Xr = prob.retract(Xflat, dx).reshape(M, a, p)
        res = f.residual(Xr, G + d[a * s :])
        return res, res

    d0 = X.new_zeros(a * s + g)
    try:
        J, r = torch.func.jacfwd(h, has_aux=True)(d0)
    except RuntimeError as err:
        raise RuntimeError(
            f"{label}: forward-mode differentiation of the residual failed ({err}). Write the residual with "
            "batched torch operations only (no .item(), in-place writes into inputs or data-dependent control "
            "flow), or supply `jacobian`."
        ) from err
    r = _check_residual(f, r, M)
    J = J.reshape(M, r.shape[1], a * s + g)
    return r, J[..., : a * s].reshape(M, r.shape[1], a, s), J[..., a * s :]


def _assemble(prob: _Problem, X: Tensor, G: Tensor, chunk_size: int | None = None) -> _Normal:
    r"""Normal equations :math:`H = \mathsf J^\top \Omega \mathsf J`, :math:`b = \mathsf J^\top \Omega e` and the cost.

    Each factor is linearised once (its residual and Jacobians, ``O(M r a s)``); the whitening, the IRLS weights
    and the per-block products :math:`J_m^\top J_m` (``a s x a s`` each) are formed for ``chunk_size`` residual
    blocks at a time (default ``prob.chunk_size``) and scatter-added into the ``K x (w + 1)`` band, so the
    working memory is ``O(chunk_size a^2 s^2) + O(K w s^2)`` however many blocks a factor has. The chunks are
    added in block order, so the result does not depend on ``chunk_size`` (up to the summation order of the
    global-parameter sums, i.e. rounding).
    """
    K, s, g, w = prob.K, prob.s, prob.g, prob.w
    chunk = prob.chunk_size if chunk_size is None else chunk_size
    dtype, device = X.dtype, X.device
    nslots = K * (w + 1)
    Hflat = torch.zeros(nslots + 1, s, s, dtype=dtype, device=device)  # last slot collects upper-triangle pairs
    bx = torch.zeros(K, s, dtype=dtype, device=device)
    Hxg = torch.zeros(K, s, g, dtype=dtype, device=device)
    Hgg = torch.zeros(g, g, dtype=dtype, device=device)
    bg = torch.zeros(g, dtype=dtype, device=device)
    cost = X.new_zeros(())
    for f in prob.factors:
        r, Jx, Jg = _linearise(prob, f, X, G)
        if not bool(torch.isfinite(r).all()):
            raise ValueError(
                f"{f._label()}: the residual is NaN or infinite at the current estimate; check the factor's "
                "inputs and the initial states."
            )
        e = _whiten(f, r)
        rho, weight = _robust(f, e)
        cost = cost + rho.sum()
        sw = weight.sqrt()
        W = None if f.sqrt_information is None else f.sqrt_information.to(r)
        idx = f.indices
        M, a = idx.shape
        for lo in range(0, M, chunk):
            hi = min(lo + chunk, M)
            Jx_c, Jg_c = Jx[lo:hi], Jg[lo:hi]
            if W is not None:
                W_c = W[lo:hi] if W.dim() == 3 else W
                Jx_c = torch.einsum("...ij,...jas->...ias", W_c, Jx_c)
                Jg_c = torch.einsum("...ij,...jg->...ig", W_c, Jg_c)
            sw_c = sw[lo:hi]
            e_c = e[lo:hi] * sw_c[:, None]
            Jx_c = Jx_c * sw_c[:, None, None, None]
            Jg_c = Jg_c * sw_c[:, None, None]
            idx_c = idx[lo:hi]
            m = hi - lo
            blocks = torch.einsum("mrus,mrvt->muvst", Jx_c, Jx_c)  # chunk x a x a x s x s
            rows = idx_c[:, :, None].expand(m, a, a)
            cols = idx_c[:, None, :].expand(m, a, a)
            slot = torch.where(rows >= cols, rows * (w + 1) + (rows - cols), torch.full_like(rows, nslots))
            Hflat.index_add_(0, slot.reshape(-1), blocks.reshape(-1, s, s))
            del blocks
            bx.index_add_(0, idx_c.reshape(-1), torch.einsum("mrus,mr->mus", Jx_c, e_c).reshape(-1, s))
            if g > 0:
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


def _factor_bordered(N: _Normal, damping: float, singular_tol: float | None) -> tuple[Tensor, Tensor, Tensor]:
    r"""Factorise the (damped) bordered system. Returns (Lb, Y = H_xx^{-1} H_xg, chol(S))."""
    Hb, Hgg = N.Hb, N.Hgg
    if damping > 0:
        Dx, Dg = _damping_diagonal(N)
        Hb = Hb.clone()
        Hb[:, 0] = Hb[:, 0] + torch.diag_embed(damping * Dx)
        Hgg = Hgg + torch.diag(damping * Dg)
    Lb, failed = block_banded_cholesky(Hb, singular_tol=singular_tol)
    if failed is not None:
        raise _Singular(f"state block {failed}")
    g = Hgg.shape[0]
    if g == 0:
        return Lb, N.Hxg, Hgg
    Y = block_banded_solve(Lb, N.Hxg)
    S = Hgg - torch.einsum("ksg,ksh->gh", N.Hxg, Y)
    S = 0.5 * (S + S.mT)
    LS, info = torch.linalg.cholesky_ex(S)
    tol = _default_singular_tol(S.dtype) if singular_tol is None else singular_tol
    ok = bool(info == 0) and bool((LS.diagonal().square() >= tol * Hgg.diagonal()).all())
    ok = ok and bool(torch.isfinite(LS).all()) and bool((Hgg.diagonal() > 0).all())
    if not ok:
        raise _Singular("the global-parameter border (Schur complement)")
    return Lb, Y, LS


def _solve_bordered(N: _Normal, Lb: Tensor, Y: Tensor, LS: Tensor) -> tuple[Tensor, Tensor]:
    r"""Solve H [dx; dg] = -[bx; bg] with the factorisation of :func:`_factor_bordered`."""
    z = block_banded_solve(Lb, N.bx.unsqueeze(-1)).squeeze(-1)  # H_xx^{-1} b_x
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


def _covariances(N: _Normal, Lb: Tensor, Y: Tensor, LS: Tensor, w: int):
    Sb = block_banded_selected_inverse(Lb)
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


def _singular_error(where: str, method: str, covariance: bool = False) -> NotPSDError:
    anchor = (
        "Add a prior factor that anchors the states (e.g. on the first state) or on the global parameters, and "
        "check that every state and global parameter is reached by some factor"
    )
    if covariance:
        return NotPSDError(
            f"The marginal covariances (Laplace approximation H^-1 at the estimate) do not exist: the undamped "
            f"normal matrix is singular at {where} (a gauge freedom, an unobserved state, or a rank-deficient "
            f"Jacobian at the estimate). {anchor}."
        )
    remedy = (
        "or use method='lm', whose damping regularises singular directions."
        if method == "gn"
        else "(the Levenberg-Marquardt damping grew beyond 1e16 without making it positive definite)."
    )
    return NotPSDError(
        f"The Gauss-Newton normal matrix is not positive definite at {where}: the factors do not determine "
        f"the estimate there (a gauge freedom, an unobserved state, or a rank-deficient Jacobian). {anchor}, "
        f"{remedy}"
    )


# ----------------------------------------------------------------------------------------------------------------
# The optimiser
# ----------------------------------------------------------------------------------------------------------------
def gauss_newton(
    states: Tensor,
    factors: Sequence[Factor] | Factor,
    *,
    global_params: Tensor | None = None,
    retract: RetractFn | None = None,
    tangent_dim: int | None = None,
    bandwidth: int = 1,
    method: str = "lm",
    max_iter: int = 100,
    ftol: float | None = None,
    xtol: float | None = None,
    gtol: float | None = None,
    initial_damping: float = 1e-4,
    compute_covariances: bool = False,
    singular_tol: float | None = None,
    chunk_size: int = 16384,
) -> GaussNewtonResult:
    r"""MAP estimate of a chain of states by Gauss-Newton or Levenberg-Marquardt.

    Minimises :math:`\sum_f \sum_m \rho_f(\lVert W_{fm} r_{fm} \rVert)` (see the module docstring) by iterating
    :math:`(H + \lambda D)\delta = -b`, :math:`x_k \leftarrow \operatorname{retract}(x_k, \delta_k)`,
    :math:`\gamma \leftarrow \gamma + \delta_\gamma`, with the block-banded normal matrix
    :math:`H = \mathsf J^\top \Omega \mathsf J` and gradient :math:`b = \mathsf J^\top \Omega e` (Barfoot 2017,
    eq. 4.99 and sec. 4.3.1).

    * ``method="gn"``: :math:`\lambda = 0`, every step accepted (no line search; the cost may increase on
      strongly nonlinear problems). A singular normal matrix (e.g. no prior: a gauge freedom) raises
      :class:`~gpgeom.errors.NotPSDError`.
    * ``method="lm"``: Marquardt damping :math:`D = \operatorname{diag}(H)` (floored), a step is accepted when it
      decreases the cost, and :math:`\lambda` follows Nielsen's rule (accepted: :math:`\lambda \leftarrow \lambda
      \max(1/3, 1 - (2\varrho - 1)^3)` with the gain ratio :math:`\varrho` = actual / predicted decrease; rejected
      or not positive definite: :math:`\lambda \leftarrow \nu \lambda`, :math:`\nu \leftarrow 2\nu`). The
      accepted costs decrease monotonically and singular problems are regularised by the damping (the
      undetermined directions then stay near their initial values). Requested covariances are still computed
      from the undamped :math:`H` and raise :class:`~gpgeom.errors.NotPSDError` when it is singular.

    Convergence (after an accepted step, or at the start of an iteration for ``gtol``): relative cost decrease
    :math:`(c - c') \le \text{ftol}\, c`, or step norm :math:`\lVert\delta\rVert \le \text{xtol}(\lVert x\rVert +
    \text{xtol})` (all stored numbers and globals), or gradient :math:`\lVert b\rVert_\infty \le \text{gtol}`
    (whitened units). A linear-Gaussian problem with the additive retraction is solved exactly by the first
    Gauss-Newton step; the second iteration detects convergence.

    Args:
        states: ``K x p`` initial states (float). Detached; the solver is not differentiable.
        factors: One :class:`Factor` or a sequence of them.
        global_params: Optional ``g`` initial global parameters (additive), shared by all factors.
        retract: ``retract(x, dx) -> x'`` with ``x`` ``N x p`` and ``dx`` ``N x s``; must be differentiable in
            ``dx`` with forward-mode autodiff (for Jacobians not supplied) and satisfy ``retract(x, 0) = x``.
            Default: addition (then ``s = p``).
        tangent_dim: ``s``; required when ``retract`` is given, defaults to ``p`` otherwise.
        bandwidth: ``w``: every residual block may span at most ``w + 1`` consecutive states.
        method: ``"lm"`` (default) or ``"gn"``.
        max_iter: Maximum number of linear solves. Exhausting it issues a
            :class:`~gpgeom.errors.ConvergenceWarning`.
        ftol, xtol, gtol: Convergence tolerances (see above); set to 0 to disable one. Defaults depend on the
            dtype: ``ftol = max(1e-12, 10 eps)``, ``xtol = max(1e-10, 10 eps)``, ``gtol = max(1e-10, 1e3 eps)``
            (float64: 1e-12, 1e-10, 1e-10; float32: 1.2e-6, 1.2e-6, 1.2e-4).
        initial_damping: Initial :math:`\lambda` for ``"lm"`` (relative to :math:`\operatorname{diag}(H)`).
        compute_covariances: Also return the marginal covariances (Laplace approximation at the estimate,
            :math:`H^{-1}` with the IRLS weights of the final estimate) by selected inversion.
        singular_tol: Relative pivot threshold of :func:`block_banded_cholesky` (default ``1e3 * eps``).
        chunk_size: Number of residual blocks whose normal-matrix contributions (``a s x a s`` each) are formed
            at once: the assembly's working memory is ``O(chunk_size a^2 s^2)`` plus the band, instead of growing
            with the number of blocks of a factor. The result does not depend on it (up to rounding).

    Returns:
        A :class:`GaussNewtonResult`.

    Example:
        >>> K = 50
        >>> y = torch.randn(K, 1, dtype=torch.float64)
        >>> meas = Factor(torch.arange(K)[:, None], lambda x, g: x[:, 0] - y)
        >>> smooth = Factor(torch.stack([torch.arange(K - 1), torch.arange(1, K)], 1),
        ...                 lambda x, g: 10.0 * (x[:, 1] - x[:, 0]))
        >>> res = gauss_newton(torch.zeros(K, 1, dtype=torch.float64), [meas, smooth])
    """
    X = check_tensor("states", states, ndim=2, floating=True).detach()
    K, p = X.shape
    if K == 0 or p == 0:
        raise ValueError(f"`states` must be K x p with K, p >= 1, got shape {tuple(X.shape)}.")
    if global_params is None:
        G = X.new_zeros(0)
    else:
        G = check_tensor("global_params", global_params, ndim=1, floating=True).detach().to(X)
    g = G.shape[0]
    if isinstance(factors, Factor):
        factors = [factors]
    factors = list(factors)
    if not factors:
        raise ValueError("`factors` is empty; give at least one Factor.")
    for i, f in enumerate(factors):
        if not isinstance(f, Factor):
            raise TypeError(f"`factors[{i}]` must be a gpgeom Factor, got {type(f).__name__}.")
    check_positive("bandwidth", bandwidth, integer=True, allow_zero=True)
    check_option("method", method, _METHODS)
    check_positive("max_iter", max_iter, integer=True)
    eps = torch.finfo(X.dtype).eps
    ftol = max(1e-12, 10 * eps) if ftol is None else ftol
    xtol = max(1e-10, 10 * eps) if xtol is None else xtol
    gtol = max(1e-10, 1e3 * eps) if gtol is None else gtol
    for name, val in (("ftol", ftol), ("xtol", xtol), ("gtol", gtol)):
        check_positive(name, val, allow_zero=True)
    check_positive("initial_damping", initial_damping)
    if singular_tol is not None:
        check_positive("singular_tol", singular_tol)
    check_positive("chunk_size", chunk_size, integer=True)
    if retract is None:
        if tangent_dim is not None and tangent_dim != p:
            raise ValueError(
                f"`tangent_dim`={tangent_dim} differs from the state size p={p}, but no `retract` was given; "
                "the default (additive) retraction needs tangent_dim == p."
            )
        retract, s = _additive_retract, p
    else:
        if not callable(retract):
            raise TypeError(f"`retract` must be callable, got {type(retract).__name__}.")
        if tangent_dim is None:
            raise ValueError("`tangent_dim` is required when a custom `retract` is given.")
        check_positive("tangent_dim", tangent_dim, integer=True)
        s = tangent_dim

    w = bandwidth
    for f in factors:
        idx = f.indices.to(X.device)
        f.indices = idx
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= K:
            raise ValueError(f"{f._label()}: `indices` must lie in [0, {K - 1}] (K = {K} states), got [{lo}, {hi}].")
        span = idx.max(1).values - idx.min(1).values
        if bool((span > w).any()):
            m = int((span > w).nonzero()[0, 0])
            raise ValueError(
                f"{f._label()}: residual block {m} spans states {int(idx[m].min())}..{int(idx[m].max())} "
                f"(span {int(span[m])}), more than `bandwidth`={w}. Increase `bandwidth` or split the factor."
            )
    prob = _Problem(factors=factors, retract=retract, K=K, p=p, s=s, g=g, w=w, chunk_size=int(chunk_size))

    # Check the retraction once (shape and identity at zero).
    x_test = retract(X, X.new_zeros(K, s))
    if not isinstance(x_test, Tensor) or x_test.shape != X.shape:
        got = tuple(x_test.shape) if isinstance(x_test, Tensor) else type(x_test).__name__
        raise ValueError(f"`retract(x, dx)` must return a tensor shaped like x ({K} x {p}), got {got}.")

    lam = float(initial_damping) if method == "lm" else 0.0
    nu = 2.0
    N = _assemble(prob, X, G)
    cost = float(N.cost)
    history = [cost]
    iterations = 0
    converged = False
    message = f"reached max_iter={max_iter}"
    need_assembly = False
    while iterations < max_iter:
        if need_assembly:
            N = _assemble(prob, X, G)
            need_assembly = False
        grad_inf = float(torch.cat([N.bx.reshape(-1), N.bg]).abs().max())
        if grad_inf <= gtol:
            converged, message = True, f"gradient norm {grad_inf:.3g} <= gtol"
            break
        iterations += 1
        try:
            Lb, Y, LS = _factor_bordered(N, lam, singular_tol)
        except _Singular as err:
            if method == "gn":
                raise _singular_error(err.where, method) from None
            lam, nu = lam * nu, nu * 2.0
            if lam > 1e16:
                raise _singular_error(err.where, method) from None
            continue
        dx, dg = _solve_bordered(N, Lb, Y, LS)
        step = torch.cat([dx.reshape(-1), dg])
        X_new = retract(X, dx)
        G_new = G + dg
        cost_new = float(_cost(prob, X_new, G_new)) if bool(torch.isfinite(X_new).all()) else math.inf
        if not math.isfinite(cost_new):
            cost_new = math.inf
        grad = torch.cat([N.bx.reshape(-1), N.bg])
        pred = 0.5 * float(-(grad @ step) + lam * (_damped_norm(N, dx, dg)))
        # Accept a decrease, or a step whose predicted and actual changes are both at round-off level (so that the
        # ftol/xtol tests can fire instead of the damping growing without bound).
        roundoff = 64.0 * torch.finfo(X.dtype).eps * max(cost, torch.finfo(X.dtype).tiny)
        accept = method == "gn" or (cost_new < cost and pred > 0) or (cost_new <= cost + roundoff and pred <= roundoff)
        if method == "gn" and not math.isfinite(cost_new):
            raise ValueError(
                "The Gauss-Newton step produced NaN or infinite states or cost; use method='lm' or a better "
                "initial estimate."
            )
        if not accept:
            lam, nu = lam * nu, nu * 2.0
            if lam > 1e16:
                message = (
                    "damping exceeded 1e16 without decreasing the cost: a minimum to working precision, or "
                    "a supplied Jacobian inconsistent with the residual"
                )
                break
            continue
        decrease = cost - cost_new
        xnorm = float(torch.cat([X.reshape(-1), G]).norm())
        X, G = X_new, G_new
        history.append(cost_new)
        cost_old, cost = cost, cost_new
        need_assembly = True
        if method == "lm":
            rho = decrease / pred if pred > 0 else 0.0
            lam = lam * max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
            lam = max(lam, 1e-12)
            nu = 2.0
        snorm = float(step.norm())
        if abs(decrease) <= ftol * cost_old:
            converged, message = True, f"relative cost decrease {abs(decrease) / max(cost_old, 1e-300):.3g} <= ftol"
            break
        if snorm <= xtol * (xnorm + xtol):
            converged, message = True, f"step norm {snorm:.3g} <= xtol * (|x| + xtol)"
            break
    if not converged:
        warnings.warn(
            f"gauss_newton stopped after {iterations} iterations without meeting ftol/xtol/gtol ({message}; "
            f"cost {cost:.6g}); increase max_iter, loosen the tolerances or check the Jacobians.",
            ConvergenceWarning,
            stacklevel=2,
        )

    result = GaussNewtonResult(
        states=X,
        globals=G,
        cost=cost,
        cost_history=history,
        iterations=iterations,
        converged=converged,
        message=message,
        damping=lam,
    )
    if compute_covariances:
        if need_assembly:
            N = _assemble(prob, X, G)
        try:
            Lb, Y, LS = _factor_bordered(N, 0.0, singular_tol)
        except _Singular as err:
            raise _singular_error(err.where, method, covariance=True) from None
        cov, cross, gcov, xgcov = _covariances(N, Lb, Y, LS, w)
        result.covariances = cov
        result.cross_covariances = cross
        result.global_covariance = gcov
        result.state_global_covariance = xgcov
    return result


def _damped_norm(N: _Normal, dx: Tensor, dg: Tensor) -> Tensor:
    Dx, Dg = _damping_diagonal(N)
    return (Dx * dx.square()).sum() + (Dg * dg.square()).sum()

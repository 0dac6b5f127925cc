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
Rauch-Tung-Striebel smoother's covariance recursion, Barfoot ch. 3.2) without forming the inverse. On the CPU the
factorisation and solves are one LAPACK banded call each and the selected inverse an odd-even reduction in
``O(log K)`` batched steps (:mod:`gpgeom.engine.banded`); on other devices the factorisation and the solves are
odd-even reductions too, so an iteration's time is dominated by the linearisation.

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
from gpgeom.engine.banded import (
    _default_singular_tol,
    block_banded_cholesky,
    block_banded_selected_inverse,
    block_banded_solve,
)
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
#: Damping (relative to diag(H)) below which a step counts as undamped in the observable directions (``stol``).
_OBSERVABLE_DAMPING = 1e-6


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
        linearize: Optional ``linearize(states, globals) -> (r, J_x, J_g)``: the residual and its analytic
            Jacobian in one call (shapes as for ``residual`` and ``jacobian``), for factors whose Jacobian
            computes the residual on the way (an interpolated state, say); the assembly then evaluates the
            residual once instead of twice. ``residual`` is still used for the cost of trial steps.
    """

    indices: Tensor
    residual: ResidualFn
    jacobian: JacobianFn | None = None
    sqrt_information: Tensor | None = None
    robust: str | None = None
    robust_threshold: float = 1.0
    name: str = ""
    linearize: Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor | None]] | None = None

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
        if self.linearize is not None and not callable(self.linearize):
            raise TypeError(f"`{label}.linearize` must be callable or None, got {type(self.linearize).__name__}.")
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
        converged: Whether a convergence test (``ftol``, ``xtol``, ``gtol`` or ``stol``) was met.
        message: Which test stopped the iteration.
        damping: Final Levenberg-Marquardt damping :math:`\lambda` (``0.0`` for Gauss-Newton, unless it continued
            as Levenberg-Marquardt after a step that raised the cost).
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
    plans: dict = field(default_factory=dict)  # id(factor) -> _Plan, built on first assembly


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
    if f.linearize is not None or f.jacobian is not None:
        if f.linearize is not None:
            out = f.linearize(Xb, G)
            if not (isinstance(out, tuple | list) and len(out) == 3):
                raise ValueError(f"{label}: `linearize` must return (r, J_x, J_g), got {type(out).__name__}.")
            r = _check_residual(f, out[0], M)
            Jx, Jg = out[1:]
        else:
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


def _gram(Ju: Tensor, Jv: Tensor) -> Tensor:
    r""":math:`J_u^\top J_v` of a batch of blocks (``c x n x s`` each, ``c x s x s``): normal-matrix contributions."""
    return Ju.mT @ Jv


@dataclass
class _Plan:
    r"""How the normal-matrix contributions of one factor are summed (built once per :func:`gauss_newton` call).

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


def _assemble(prob: _Problem, X: Tensor, G: Tensor, chunk_size: int | None = None) -> _Normal:
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
        if W is not None:
            Jx = torch.einsum("...ij,...jas->...ias", W, Jx)
            Jg = torch.einsum("...ij,...jg->...ig", W, Jg)
        if f.robust is not None:
            Jx = Jx * sw[:, None, None, None]
            Jg = Jg * sw[:, None, None]
            e = e * sw[:, None]
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
    stol: float | None = None,
    initial_damping: float = 1e-4,
    compute_covariances: bool = False,
    singular_tol: float | None = None,
    chunk_size: int = 16384,
    banded: str = "auto",
) -> GaussNewtonResult:
    r"""MAP estimate of a chain of states by Gauss-Newton or Levenberg-Marquardt.

    Minimises :math:`\sum_f \sum_m \rho_f(\lVert W_{fm} r_{fm} \rVert)` (see the module docstring) by iterating
    :math:`(H + \lambda D)\delta = -b`, :math:`x_k \leftarrow \operatorname{retract}(x_k, \delta_k)`,
    :math:`\gamma \leftarrow \gamma + \delta_\gamma`, with the block-banded normal matrix
    :math:`H = \mathsf J^\top \Omega \mathsf J` and gradient :math:`b = \mathsf J^\top \Omega e` (Barfoot 2017,
    eq. 4.99 and sec. 4.3.1).

    * ``method="gn"``: :math:`\lambda = 0` and no line search. A singular normal matrix (e.g. no prior: a gauge
      freedom) raises :class:`~gpgeom.errors.NotPSDError`. A step that *increases* the cost (or gives non-finite
      states) is the sign of a normal matrix too close to singular for undamped steps (a direction the factors
      barely determine, where the linear model's step is huge) or of a strongly nonlinear problem: that step is
      rejected and the iteration continues as ``"lm"`` from the same estimate, with a
      :class:`~gpgeom.errors.ConvergenceWarning` that names the cost increase and the smallest pivot ratio of the
      normal matrix (so Gauss-Newton never oscillates; the result's ``message`` records the switch).
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
    (whitened units), or (with ``stol``) a step below ``stol`` posterior standard deviations. A linear-Gaussian
    problem with the additive retraction is solved exactly by the first Gauss-Newton step; the second iteration
    detects convergence.

    The ``stol`` test is the one that recognises a converged estimate when some directions are (nearly)
    unobservable. Along such a direction the cost is almost flat, so the iterates keep drifting by steps that are
    large in the stored numbers (``xtol`` never fires) while the cost falls by a tiny, slowly shrinking amount per
    step (``ftol`` fires only after many iterations). In the metric of the posterior the same steps are tiny: for
    the step :math:`\delta` solved with damping :math:`\lambda`,

    .. math:: \lVert\delta\rVert_{H + \lambda D}^2 = \delta^\top(H + \lambda D)\,\delta = -b^\top\delta,
       \qquad |u^\top\delta| \le \lVert\delta\rVert_H \sqrt{u^\top H^{-1} u} \quad \text{for every } u,

    (Cauchy-Schwarz), so :math:`\sqrt{-b^\top\delta}` bounds the change of every linear function of the estimate in
    units of its (Laplace) posterior standard deviation. The test is applied to steps with
    :math:`\lambda \le 10^{-6}` only: such a step is the undamped Gauss-Newton step in every direction whose
    information exceeds :math:`10^{-6}` of the diagonal's (the observable ones), while the damping holds back the
    directions the factors do not determine (a heavily damped step is short in every metric and proves nothing).
    It assumes whitened residuals (the cost is a negative log-posterior), as in
    :mod:`gpgeom.models.trajectory`.

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
        stol: Step tolerance in posterior standard deviations (see above), e.g. ``0.1``; ``None`` (default) or 0
            disables the test.
        initial_damping: Initial :math:`\lambda` for ``"lm"`` (relative to :math:`\operatorname{diag}(H)`).
        compute_covariances: Also return the marginal covariances (Laplace approximation at the estimate,
            :math:`H^{-1}` with the IRLS weights of the final estimate) by selected inversion.
        singular_tol: Relative pivot threshold of :func:`block_banded_cholesky` (default ``1e3 * eps``).
        chunk_size: Number of residual blocks whose normal-matrix contributions (``a s x a s`` each) are formed
            at once: the assembly's working memory is ``O(chunk_size a^2 s^2)`` plus the band, instead of growing
            with the number of blocks of a factor (blocks on the same states are summed per group first, see
            :func:`_assemble`). The result does not depend on it (up to rounding).
        banded: The implementation of the block-banded factorisation, solve and selected inverse
            (:mod:`gpgeom.engine.banded`): ``"auto"`` (default: LAPACK's banded Cholesky on the CPU, odd-even
            reduction elsewhere, a float32 factorisation computed in float64), ``"lapack"``, ``"scan"``
            (odd-even reduction for the factorisation, the solves and the selected inverse, ``O(log K)`` batched
            steps on any device) or ``"loop"`` (the sequential recursions throughout, the reference). The results
            agree to rounding.

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
    stol = 0.0 if stol is None else stol
    for name, val in (("ftol", ftol), ("xtol", xtol), ("gtol", gtol), ("stol", stol)):
        check_positive(name, val, allow_zero=True)
    check_positive("initial_damping", initial_damping)
    if singular_tol is not None:
        check_positive("singular_tol", singular_tol)
    check_positive("chunk_size", chunk_size, integer=True)
    check_option("banded", banded, ("auto", "lapack", "scan", "loop"))
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
    switched, switched_at = "", 0  # why and when a Gauss-Newton run continued as Levenberg-Marquardt
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
            Lb, Y, LS = _factor_bordered(N, lam, singular_tol, banded)
        except _Singular as err:
            if method == "gn" and not switched:
                raise _singular_error(err.where, method) from None
            lam, nu = lam * nu, nu * 2.0
            if lam > 1e16:
                raise _singular_error(err.where, method) from None
            continue
        dx, dg = _solve_bordered(N, Lb, Y, LS, banded)
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
        if method == "gn" and not switched:
            accept = cost_new <= cost + roundoff
            if not accept:  # undamped steps no longer work here: continue damped (Levenberg-Marquardt)
                switched, switched_at = _gn_fallback_reason(N, Lb, cost, cost_new, iterations), iterations
                warnings.warn(switched, ConvergenceWarning, stacklevel=2)
                lam, nu = float(initial_damping), 2.0
                continue
        else:
            accept = (cost_new < cost and pred > 0) or (cost_new <= cost + roundoff and pred <= roundoff)
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
        lam_step = lam  # the damping this step was solved with (lam is updated below)
        xnorm = float(torch.cat([X.reshape(-1), G]).norm())
        X, G = X_new, G_new
        history.append(cost_new)
        cost_old, cost = cost, cost_new
        need_assembly = True
        if lam > 0.0:
            rho = decrease / pred if pred > 0 else 0.0
            lam = lam * max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
            lam = max(lam, 1e-12)
            nu = 2.0
        snorm = float(step.norm())
        # the step in posterior standard deviations, sqrt(delta^T (H + lam D) delta) = sqrt(-b^T delta), for steps
        # that are undamped in every observable direction (see the docstring)
        sdev = math.sqrt(max(-float(grad @ step), 0.0))
        if stol > 0 and lam_step <= _OBSERVABLE_DAMPING and sdev <= stol:
            converged = True
            message = (
                f"step of {sdev:.3g} posterior standard deviations <= stol (directions with less than "
                f"{_OBSERVABLE_DAMPING:g} of the diagonal's information are left to the damping)"
            )
            break
        if abs(decrease) <= ftol * cost_old:
            converged, message = True, f"relative cost decrease {abs(decrease) / max(cost_old, 1e-300):.3g} <= ftol"
            break
        if snorm <= xtol * (xnorm + xtol):
            converged, message = True, f"step norm {snorm:.3g} <= xtol * (|x| + xtol)"
            break
    if switched:
        message = f"{message} (Gauss-Newton continued as Levenberg-Marquardt from iteration {switched_at})"
    if not converged:
        warnings.warn(
            f"gauss_newton stopped after {iterations} iterations without meeting ftol/xtol/gtol/stol ({message}; "
            f"cost {cost:.6g}); increase max_iter, start from a better initial estimate, loosen the tolerances or "
            "check the Jacobians.",
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
            Lb, Y, LS = _factor_bordered(N, 0.0, singular_tol, banded)
        except _Singular as err:
            raise _singular_error(err.where, method, covariance=True) from None
        cov, cross, gcov, xgcov = _covariances(N, Lb, Y, LS, w, banded)
        result.covariances = cov
        result.cross_covariances = cross
        result.global_covariance = gcov
        result.state_global_covariance = xgcov
    return result


def _pivot_ratio(N: _Normal, Lb: Tensor) -> float:
    r"""Smallest :math:`(L_{kk})_{ii}^2 / (H_{kk})_{ii}` of the state block: the smallest fraction of a variable's
    information left once the preceding variables are known (1 for independent variables, 0 when singular)."""
    piv = Lb[:, 0].diagonal(dim1=-2, dim2=-1).square()
    ref = N.Hb[:, 0].diagonal(dim1=-2, dim2=-1).clamp_min(torch.finfo(piv.dtype).tiny)
    return float((piv / ref).min())


def _gn_fallback_reason(N: _Normal, Lb: Tensor, cost: float, cost_new: float, iteration: int) -> str:
    ratio = _pivot_ratio(N, Lb)
    return (
        f"method='gn': the Gauss-Newton step of iteration {iteration} would raise the cost from {cost:.6g} to "
        f"{cost_new:.6g}: the normal matrix is too close to singular for undamped steps, or the problem too "
        f"nonlinear here (smallest pivot ratio {ratio:.2g}, the fraction of a variable's information left once the "
        "others are known; small values mark directions the factors barely determine, e.g. an unobservable "
        "rotation, along which the undamped step is huge). Rejected the step and continued with "
        "Levenberg-Marquardt damping (method='lm') instead of oscillating."
    )


def _damped_norm(N: _Normal, dx: Tensor, dg: Tensor) -> Tensor:
    Dx, Dg = _damping_diagonal(N)
    return (Dx * dx.square()).sum() + (Dg * dg.square()).sum()

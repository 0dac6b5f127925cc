#!/usr/bin/env python3
r"""The problem that :func:`~gpgeom.engine.least_squares.gauss_newton` solves: factors, their residuals and the cost.

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

A :class:`Factor` is a batch of residual blocks of one kind. This module checks, whitens and robustly weights their
residuals (the cost above and the iteratively reweighted least-squares weights of the robust loss) and linearises
them about the current estimate with respect to the perturbation :math:`x_k \leftarrow \operatorname{retract}(x_k,
\delta_k)`, :math:`\gamma \leftarrow \gamma + \delta_\gamma` (with the factor's analytic Jacobian, or by
forward-mode autodiff); the normal equations built from the linearisation are assembled and solved in
:mod:`gpgeom.engine.normal_equations`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from gpgeom._validation import check_option, check_positive, check_tensor, first_bad

__all__ = ["Factor"]

ResidualFn = Callable[[Tensor, Tensor], Tensor]
JacobianFn = Callable[[Tensor, Tensor], "tuple[Tensor, Tensor | None]"]
RetractFn = Callable[[Tensor, Tensor], Tensor]

_ROBUST_LOSSES = (None, "huber")


# ----------------------------------------------------------------------------------------------------------------
# Factors
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Factor:
    r"""A batch of ``M`` residual blocks of the same form, each on ``a`` states (and the globals).

    Attributes:
        indices: ``M x a`` integer tensor: the states each residual block depends on. The indices of one block
            must lie within ``bandwidth + 1`` consecutive states (checked by
            :func:`~gpgeom.engine.least_squares.gauss_newton`). A factor on the global parameters only still names
            one state per block (its Jacobian there is zero).
        residual: ``residual(states, globals) -> M x r``. ``states`` is ``M x a x p`` (the stored states
            ``x[indices]``), ``globals`` is the ``g`` vector of global parameters (``g = 0`` when there are none).
            Must be written with batched torch operations (it is differentiated with ``torch.func.jacfwd``, which
            vmaps over tangent directions): no ``.item()``, no data-dependent Python control flow. Row ``m`` must
            depend on block ``m``'s states (and the globals) only: the forward-mode Jacobian perturbs every block
            along one shared direction, so a residual that mixes blocks (a mean over the batch, or an ``M``-vector
            minus an ``M x 1`` column broadcast to ``M x M``) gets a wrong Jacobian; only the shape ``M x r`` is
            checked, and against ``sqrt_information``'s ``r`` when it is given.
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


# ----------------------------------------------------------------------------------------------------------------
# Residuals, robust losses and linearisation
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
    chunk_size: int = 16384  # residual blocks per chunk of the assembly (see normal_equations._assemble)
    plans: dict = field(default_factory=dict)  # id(factor) -> _Plan, built on first assembly


def _check_residual(f: Factor, r: object, M: int, dtype: torch.dtype | None = None) -> Tensor:
    label = f._label()
    if not isinstance(r, Tensor) or r.dim() != 2 or r.shape[0] != M:
        shape = tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__
        raise ValueError(
            f"{label}: `residual` must return an M x r tensor with M = {M} (one row per residual block), got {shape}."
        )
    if dtype is not None and r.dtype != dtype:
        # an integer residual has a zero Jacobian and another float dtype fails in the assembly (index_add_)
        raise TypeError(
            f"{label}: `residual` must return a tensor of the states' dtype {dtype}, got dtype {r.dtype}; compute "
            "it from the states with floating-point torch operations."
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
        r = _check_residual(f, f.residual(X[f.indices], G), f.num_blocks, X.dtype)
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
            r = _check_residual(f, out[0], M, X.dtype)
            Jx, Jg = out[1:]
        else:
            r = _check_residual(f, f.residual(Xb, G), M, X.dtype)
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
    r = _check_residual(f, r, M, X.dtype)
    J = J.reshape(M, r.shape[1], a * s + g)
    return r, J[..., : a * s].reshape(M, r.shape[1], a, s), J[..., a * s :]


def _name_nonfinite_jacobian(prob: _Problem, X: Tensor, G: Tensor) -> None:
    r"""Raise ``ValueError`` naming the first factor whose Jacobian at (X, G) holds NaN or infinite values although
    its residual is finite (``sqrt`` or a norm at 0, a ``log`` at 1e-300), its first such residual block and states;
    return when there is none.

    Called only when the assembled gradient :math:`\mathsf J^\top \Omega e` is not finite (a non-finite Jacobian
    entry makes it NaN or infinite whatever the residual, as ``inf * 0`` is NaN), so that the assembly of every
    iteration makes no pass over the Jacobians and no host synchronisation for this check; without it the normal
    matrix would be reported "not positive definite" by the factorisation."""
    for f in prob.factors:
        r, Jx, Jg = _linearise(prob, f, X, G)
        J = torch.cat([Jx.flatten(2), Jg.flatten(2)], -1)  # M x r x (a s + g)
        bad = (~torch.isfinite(J)).flatten(1).any(1)  # M
        if not bool(torch.isfinite(r).all()) or not bool(bad.any()):
            continue
        m = int(bad.nonzero()[0])
        which = (
            "the forward-mode Jacobian of `residual`"
            if f.jacobian is None and f.linearize is None
            else "the Jacobian returned by `linearize`"
            if f.linearize is not None
            else "the Jacobian returned by `jacobian`"
        )
        raise ValueError(
            f"{f._label()}: {which} holds NaN or infinite values at residual block {m} (states "
            f"{f.indices[m].tolist()}, residual {r[m].detach().tolist()}): the residual is not differentiable there "
            "(e.g. sqrt or a norm at 0). Make it smooth at the estimate (sqrt(x + eps), a squared norm) or supply "
            "a finite `jacobian`."
        )


def _check_finite_residual(f: Factor, r: Tensor) -> None:
    r"""Raise ``ValueError`` when the residual ``r`` (``M x r``) of factor ``f`` holds NaN or infinite values, naming
    the first bad block, its states and how many entries are bad."""
    bad = ~torch.isfinite(r)
    if bool(bad.any()):
        m = int(bad.any(-1).nonzero()[0])
        raise ValueError(
            f"{f._label()}: the residual is NaN or infinite at the current estimate: {int(bad.sum())} of "
            f"{r.numel()} entries of residual (block, component){first_bad(r, bad)} (residual block {m}, on states "
            f"{f.indices[m].tolist()}); check the factor's inputs and the initial states."
        )

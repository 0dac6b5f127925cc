r"""The exact marginal log likelihood of a stationary GP with closed-form gradients.

For the kernels gpgeom fits most (``ScaleKernel`` over a Matern 1/2, 3/2, 5/2 or RBF kernel, ARD or not) with a
Gaussian likelihood and a constant (or zero) mean, :func:`exact_mll_loss` returns the same loss as GPyTorch's
``ExactMarginalLogLikelihood`` (negated, per batch member, log priors included, divided by ``n``), but its
gradient is written out instead of being traced through the kernel and the Cholesky factorisation:

.. math::

    \ell = \tfrac12 r^\top K^{-1} r + \tfrac12 \log|K| + \tfrac n2 \log 2\pi, \qquad
    \frac{\partial \ell}{\partial K} = W = \tfrac12 \big(K^{-1} - \alpha\alpha^\top\big), \quad \alpha = K^{-1} r,

(Rasmussen & Williams 2006, eq. 5.9), with :math:`K = \sigma_f^2 k_0(R) + \operatorname{diag}(\sigma_n^2)` and
:math:`R_{ij}^2 = \sum_k (x_{ik} - x_{jk})^2 / \ell_k^2`, so that

.. math::

    \frac{\partial \ell}{\partial \sigma_f^2} = \sum_{ij} W_{ij} k_0(R_{ij}), \quad
    \frac{\partial \ell}{\partial \sigma_{n,i}^2} = W_{ii}, \quad
    \frac{\partial \ell}{\partial \ell_k} = -\frac{2}{\ell_k^3} \sum_{ij} G_{ij} (x_{ik} - x_{jk})^2, \quad
    G = \sigma_f^2\, W \circ \frac{\partial k_0}{\partial R^2},

and :math:`\sum_{ij} G_{ij}(x_{ik} - x_{jk})^2 = 2\sum_i x_{ik}^2 (G\mathbf 1)_i - 2\sum_i x_{ik} (G x)_{ik}`
(``G`` symmetric), so no ``n x n x d`` tensor is formed. One evaluation costs a Cholesky factorisation, its
inverse and a few ``n x n`` elementwise passes; autograd through GPyTorch costs about four times as much (the
backward pass of the kernel's elementwise graph and of the Cholesky factorisation).

Two more savings used by :meth:`gpgeom.botorch.exact_gp.ExactGPModel.fit`:

* with hyperparameters shared by ``m`` outputs (``shared_hyperparameters=True`` and a likelihood noise shared as
  well), the covariance is the same for all outputs: it is built and factorised **once** and the ``m`` outputs
  are ``m`` right-hand sides;
* with separate hyperparameters per output (a 1-D batch of independent problems), the loss can be evaluated for a
  subset of the outputs (``loss(batch_indices=idx)``), so that the batched L-BFGS-B of
  :func:`gpgeom.engine.fitting.fit` stops paying for the outputs that have converged.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from gpytorch.kernels import MaternKernel, RBFKernel, ScaleKernel
from gpytorch.likelihoods import FixedNoiseGaussianLikelihood, GaussianLikelihood
from gpytorch.likelihoods.noise_models import HomoskedasticNoise
from gpytorch.means import ConstantMean, ZeroMean
from linear_operator.utils.cholesky import psd_safe_cholesky
from torch import Tensor

from gpgeom.engine.chunking import chunk_size_for, element_size
from gpgeom.kernels.stationary import DifferenceMaternKernel, DifferenceRBFKernel, difference_distances

_LOCAL = threading.local()


@contextlib.contextmanager
def explicit_jitter(jitter: float) -> Iterator[None]:
    r"""Within the block, in this thread, the factorisations of :func:`exact_mll_loss` try the matrix as it is and
    then once with ``jitter`` added to its diagonal, as ``gpytorch.settings.cholesky_jitter(jitter)`` with
    ``cholesky_max_tries(1)`` would make them, without those process-wide settings: a fit attempt
    (:func:`gpgeom.engine.attempts.jitter_context`) of this loss leaves them to the other threads. Outside, they
    follow GPyTorch's settings."""
    prev = getattr(_LOCAL, "jitter", None)
    _LOCAL.jitter = jitter
    try:
        yield
    finally:
        _LOCAL.jitter = prev


def _cholesky(K: Tensor) -> Tensor:
    r"""The lower Cholesky factor of ``K`` ``... x n x n`` by linear_operator's ``psd_safe_cholesky``, with the
    jitter of :func:`explicit_jitter` where this thread is inside one."""
    jitter = getattr(_LOCAL, "jitter", None)
    return psd_safe_cholesky(K) if jitter is None else psd_safe_cholesky(K, jitter=jitter, max_tries=1)


__all__ = [
    "exact_mll_loss",
    "explicit_jitter",
    "gaussian_quad_logdet",
    "stationary_kernel_matrix",
    "stationary_kind",
    "stationary_nll",
]

_KINDS = ("matern12", "matern32", "matern52", "rbf")
#: Squared scaled distances at or below this are treated as zero (GPyTorch clamps them at 1e-30 too).
_R2_FLOOR = 1e-30
#: Elements of the covariance matrices processed together on a CPU (about 2 MB of float64).
_CHUNK_ELEMENTS = 2**18
#: ``n x n`` matrices alive at once while one batch member is evaluated with its gradient (the kernel, which becomes
#: the covariance; its derivative; the factor, which becomes the inverse), plus the boolean diagonal mask.
_MEMBER_MATRICES = 3.125


def _kernel_parts(kind: str, r2: Tensor, derivative: bool = True, lean: bool = False) -> tuple[Tensor, Tensor | None]:
    r"""``k0(R)`` and ``dk0/d(R^2)`` (elementwise) for squared scaled distances ``r2`` (overwritten: ``k0`` is
    returned in its storage); the derivative is 0 where ``r2`` is at the floor (the diagonal), where it multiplies a
    zero distance anyway, and ``None`` without ``derivative``. In-place arithmetic: these ``n x n`` passes are
    memory-bound, and at most two more ``n x n`` tensors are alive at once besides ``r2``."""
    if kind == "rbf":
        k0 = r2.mul_(-0.5).exp_()
        return k0, (k0.mul(-0.5) if derivative else None)
    zero = (r2 <= _R2_FLOOR) if derivative else None
    if kind == "matern12":
        r = r2.sqrt_()
        e = r.neg().exp_()
        if not derivative:
            return e, None
        return e, torch.div(e, r, out=r).mul_(-0.5).masked_fill_(zero, 0.0)
    if kind == "matern32":
        s = r2.mul_(3.0).sqrt_()
        e = s.neg().exp_()
        k0 = s.add_(1.0).mul_(e)
        return k0, (e.mul_(-1.5).masked_fill_(zero, 0.0) if derivative else None)
    s = r2.mul_(5.0).sqrt_()
    if lean:  # one temporary: (s / 3 + 1) s + 1 by Horner's rule, with s kept in the exponential's storage
        e = s.clone()
        return s.div_(3.0).add_(1.0).mul_(e).add_(1.0).mul_(e.neg_().exp_()), None
    e = s.neg().exp_()
    t = s.add(1.0)
    k0 = s.square_().div_(3.0).add_(t).mul_(e)
    return k0, (t.mul_(e).mul_(-5.0 / 6.0).masked_fill_(zero, 0.0) if derivative else None)


def _scaled_sq_dist(x: Tensor, lengthscale: Tensor) -> Tensor:
    r"""``R^2`` of shape ``kb x n x n`` for centred inputs ``x`` (``kb x n x d``), exact zeros on the diagonal (one
    ``n x n`` allocation). From the differences (:func:`~gpgeom.kernels.stationary.difference_distances`): the
    expansion :math:`\lVert a\rVert^2 + \lVert b\rVert^2 - 2 a^\top b` put float32 kernel entries 3e-2 off at a
    lengthscale of 0.005 on the unit interval."""
    xs = x / lengthscale
    r2 = difference_distances(xs, xs).square_().clamp_min_(_R2_FLOOR)
    r2.diagonal(dim1=-2, dim2=-1).fill_(_R2_FLOOR)
    return r2


def _frobenius(A: Tensor, B: Tensor) -> Tensor:
    r"""``sum_ij A_ij B_ij`` per batch member (``kb x n x n`` each) as one dot product, without a temporary when
    both are contiguous."""
    return torch.bmm(A.reshape(A.shape[0], 1, -1), B.reshape(B.shape[0], -1, 1)).reshape(A.shape[0])


def _matmul_wide(A: Tensor, B: Tensor) -> Tensor:
    r"""``A @ B`` (``kb x n x n`` by ``kb x n x c``) accumulated in float64 (in row blocks of ``A``, an eighth of its
    rows at a time, so the float64 copy stays a quarter of ``A``'s bytes in float32), returned in float64; at
    float64 the plain product.

    The sums of :func:`_pair_sq_sum` cancel: with inputs at a distance :math:`r` from their mean and pairs that
    matter at a distance :math:`\ell`, the two terms are :math:`(r / \ell)^2` times their difference, so a
    float32 accumulation lost the lengthscale gradient (24% off at a lengthscale of 0.01 on unit-interval inputs,
    ``n = 2000``, while the loss and the other gradients agreed with float64 to 1e-5). The identity is exact for
    any symmetric ``A`` (the float32 entries are exact in float64), so only the accumulation, and the products
    :math:`\alpha \circ x` it multiplies, need the wider type."""
    if A.dtype == torch.float64:
        return A @ B
    B = B.double()
    n = A.shape[-2]
    out = B.new_empty(A.shape[:-1] + B.shape[-1:])
    step = max(1, -(-n // 8))
    for i in range(0, n, step):
        out[..., i : i + step, :] = A[..., i : i + step, :].double() @ B
    return out


def _pair_sq_sum(G1: Tensor, Gx: Tensor, x: Tensor) -> Tensor:
    r"""``sum_ij G_ij (x_ik - x_jk)^2 = 2 sum_i x_ik^2 (G 1)_i - 2 sum_i x_ik (G x)_ik`` for a symmetric ``G``
    given ``G 1`` (``kb x n x c``) and ``G x`` (``kb x n x c x d``): ``kb x c x d``."""
    return 2.0 * torch.einsum("bnd,bnc->bcd", x * x, G1) - 2.0 * torch.einsum("bnd,bncd->bcd", x, Gx)


class _StationaryNLL(torch.autograd.Function):
    r"""Negative log density of ``G`` columns of targets under one stationary GP covariance per batch member.

    The gradient is linear in the incoming cotangents ``g`` (``kb x G``): with :math:`W = \tfrac12 (\sum_c g_c)
    K^{-1} - \tfrac12 \sum_c g_c \alpha_c \alpha_c^\top`, every hyperparameter gradient is a sum over the
    ``K^{-1}`` part and over the columns. When a hyperparameter needs a gradient, the forward pass computes those
    parts while the kernel matrices are at hand and keeps only them (``O(n G)`` per member): no ``n x n`` tensor
    outlives a member's evaluation, so the working memory of a batch of members is that of one chunk of members,
    not of the whole batch (the kernel matrices used to be kept for the backward pass of every member)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        lengthscale: Tensor,
        outputscale: Tensor,
        noise: Tensor,
        constant: Tensor,
        x: Tensor,
        y: Tensor,
        kind: str,
        grad_mode: bool,
    ) -> Tensor:
        need = grad_mode and any(ctx.needs_input_grad[:4])  # (``needs_input_grad`` ignores ``torch.no_grad``)
        os_ = outputscale[..., None, None]
        k0, dk0 = _kernel_parts(kind, _scaled_sq_dist(x, lengthscale), derivative=need)
        # K in the storage of k0 (k0 is recovered from it below), unless an outputscale is 0
        in_place = not need or bool((outputscale > 0).all())
        k0_diag = k0.diagonal(dim1=-2, dim2=-1).clone() if (need and in_place) else None
        K = k0.mul_(os_) if in_place else os_ * k0
        K.diagonal(dim1=-2, dim2=-1).add_(noise)
        L = _cholesky(K)
        resid = y - constant.unsqueeze(-2)  # ``kb x n x G``
        # two triangular solves: ``cholesky_solve`` would copy the factor
        alpha = torch.linalg.solve_triangular(L.mT, torch.linalg.solve_triangular(L, resid, upper=False), upper=True)
        n = y.shape[-2]
        logdet = L.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # half the log determinant
        nll = 0.5 * (resid * alpha).sum(-2) + logdet.unsqueeze(-1) + 0.5 * n * math.log(2.0 * math.pi)
        if not need:
            return nll
        if in_place:  # k0 = K / os off the diagonal (to a rounding), its own diagonal on it
            k0 = K.div_(os_)
            k0.diagonal(dim1=-2, dim2=-1).copy_(k0_diag)
        del K
        # the K^-1 part of W (weight sum_c g_c): W0 = K^-1 / 2, in the storage of the factor; the inverse is exactly
        # symmetric, so its transpose (row-major like k0 when the factor is column-major, as LAPACK's) is used
        W0 = torch.cholesky_inverse(L, out=L).mT.mul_(0.5)
        del L
        j0_os = _frobenius(W0, k0)
        j0_noise = W0.diagonal(dim1=-2, dim2=-1).clone()
        G0 = W0.mul_(dk0).mul_(os_)
        # float64 sums (``_matmul_wide``): the two terms of ``_pair_sq_sum`` cancel by (range / lengthscale)^2
        x64 = x.double()
        ones = torch.ones_like(x64[..., :1])
        Gx = _matmul_wide(G0, torch.cat([ones, x64], -1))
        j0_sq = _pair_sq_sum(Gx[..., :1], Gx[..., 1:].unsqueeze(-2), x64)[..., 0, :].to(x.dtype)  # ``kb x d``
        del W0, G0
        # the column parts (weights g_c): W_c = -alpha_c alpha_c^T / 2, so that sum_ij W_c,ij k0_ij =
        # -alpha_c^T k0 alpha_c / 2 and G_c = os W_c o dk0 has G_c 1 = -os alpha_c o (dk0 alpha_c) / 2 and
        # G_c x_k = -os alpha_c o (dk0 (alpha_c o x_k)) / 2
        kb, G, d = alpha.shape[0], alpha.shape[-1], x.shape[-1]
        jc_os = -0.5 * (alpha * (k0 @ alpha)).sum(-2)  # ``kb x G``
        a64 = alpha.double().unsqueeze(-1)  # alpha o x in float64 too: its rounding would break the identity
        rhs = torch.cat([a64, a64 * x64.unsqueeze(-2)], -1)  # ``kb x n x G x (1+d)``
        P = _matmul_wide(dk0, rhs.reshape(kb, n, -1)).reshape(kb, n, G, 1 + d)
        P.mul_(alpha.unsqueeze(-1)).mul_(-0.5 * os_.unsqueeze(-1))
        jc_sq = _pair_sq_sum(P[..., 0], P[..., 1:], x64).to(x.dtype)  # ``kb x G x d``
        ctx.save_for_backward(lengthscale, alpha, j0_os, j0_noise, j0_sq, jc_os, jc_sq)
        return nll

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        lengthscale, alpha, j0_os, j0_noise, j0_sq, jc_os, jc_sq = ctx.saved_tensors
        total = grad.sum(-1)  # ``kb``: the weight of the K^-1 part
        g_outputscale = total * j0_os + (grad * jc_os).sum(-1)
        g_noise = total.unsqueeze(-1) * j0_noise - 0.5 * (alpha.square() * grad.unsqueeze(-2)).sum(-1)
        g_constant = -grad * alpha.sum(-2)
        sq_term = total.unsqueeze(-1) * j0_sq + (grad.unsqueeze(-1) * jc_sq).sum(-2)  # ``kb x d``
        g_ls = -2.0 * sq_term.unsqueeze(-2) / lengthscale.pow(3)  # ``kb x 1 x d``
        if lengthscale.shape[-1] == 1:  # one lengthscale for all dimensions
            g_ls = g_ls.sum(-1, keepdim=True)
        return g_ls, g_outputscale, g_noise, g_constant, None, None, None, None


def stationary_nll(
    kind: str,
    lengthscale: Tensor,
    outputscale: Tensor,
    noise: Tensor,
    constant: Tensor,
    x: Tensor,
    y: Tensor,
    max_memory: int | str | None = None,
) -> Tensor:
    r"""``-log N(y_g; c_g 1, s^2 k0(X / l) + diag(noise))`` for every batch member and column, differentiable in
    the four hyperparameter tensors (closed-form backward pass; Rasmussen & Williams 2006, eqs. 2.30 and 5.9).

    Batch members are evaluated in chunks (a few at a time on a CPU, where the ``n x n`` passes then stay in
    cache; as many as the memory budget allows on a GPU). When a hyperparameter requires a gradient, each chunk
    computes its gradient parts in the forward pass and keeps only ``O(n G)`` numbers for the backward pass, so
    the working memory is about ``4 n^2`` elements per member of one chunk, whatever the number of members.

    Args:
        kind: ``"matern12"``, ``"matern32"``, ``"matern52"`` or ``"rbf"`` (GPyTorch's definitions).
        lengthscale: ``kb x 1 x d`` (ARD) or ``kb x 1 x 1`` lengthscales.
        outputscale: ``kb`` outputscales (kernel variance).
        noise: ``kb x n`` noise variances added to the diagonal.
        constant: ``kb x G`` constant means.
        x: ``kb x n x d`` inputs; they are centred here (as GPyTorch's Matern kernel does), which does not change
            the distances.
        y: ``kb x n x G`` targets: ``G`` columns sharing each covariance.
        max_memory: Working-memory budget of a chunk of members (bytes or a string such as ``"1GB"``; default
            :func:`gpgeom.engine.chunking.resolve_max_memory`, 256 MiB). The result does not depend on it.

    Returns:
        A ``kb x G`` tensor of negative log densities.
    """
    if kind not in _KINDS:
        raise ValueError(f"Unknown `kind`={kind!r}; expected one of {_KINDS}.")
    if x.dim() < 2 or y.dim() != x.dim() or y.shape[-2] != x.shape[-2]:
        raise ValueError(
            f"`x` must be `kb x n x d` and `y` `kb x n x G` with the same n; got {tuple(x.shape)}, {tuple(y.shape)}."
        )
    x = x - x.mean(-2, keepdim=True)
    n = x.shape[-2]
    kb = torch.broadcast_shapes(
        lengthscale.shape[:-2], outputscale.shape, noise.shape[:-1], constant.shape[:-1], x.shape[:-2], y.shape[:-2]
    )
    args = [
        lengthscale.expand(kb + lengthscale.shape[-2:]),
        outputscale.expand(kb),
        noise.expand(kb + noise.shape[-1:]),
        constant.expand(kb + constant.shape[-1:]),
        x.expand(kb + x.shape[-2:]),
        y.expand(kb + y.shape[-2:]),
    ]
    flat = [a.reshape((-1,) + a.shape[len(kb) :]) for a in args]
    # on a CPU, a few covariance matrices at a time: the elementwise n x n passes then stay in cache (2.5x faster
    # at n = 300); a GPU takes as many as the memory budget allows (all of them, unless they are large) in one launch
    B = flat[0].shape[0]
    chunk = max(1, _CHUNK_ELEMENTS // (n * n)) if x.device.type == "cpu" else B
    chunk = min(chunk, chunk_size_for(_MEMBER_MATRICES * n * n * element_size(x.dtype), max_memory, total=B))
    grad_mode = torch.is_grad_enabled()
    out = [_StationaryNLL.apply(*(a[i : i + chunk] for a in flat), kind, grad_mode) for i in range(0, B, chunk)]
    return torch.cat(out, 0).reshape(kb + y.shape[-1:])


def stationary_kernel_matrix(covar: Any, x1: Tensor, x2: Tensor | None = None) -> Tensor | None:
    r"""The dense kernel matrix ``covar(x1, x2)`` of a ``ScaleKernel`` over a Matern (nu 1/2, 3/2, 5/2) or RBF
    kernel without ``active_dims``, computed with in-place arithmetic: at most two ``q1 x q2`` blocks are alive at
    once (the squared distances, which become the result, and the exponential factor), where GPyTorch's evaluation
    holds five or six. ``None`` for other kernels (evaluate those with GPyTorch).

    Not differentiable (in-place arithmetic): call it under ``torch.no_grad()``. The values equal GPyTorch's to
    rounding (the inputs are centred on the mean of ``x1`` as GPyTorch's Matern kernel does).

    Args:
        covar: The kernel.
        x1: ``batch x q1 x d`` inputs.
        x2: ``batch x q2 x d`` inputs (batches broadcast), or ``None`` for ``covar(x1)``, whose diagonal has
            exactly zero distance (GPyTorch's ``x1 == x2`` case).

    Returns:
        A ``broadcast(batch, kernel batch) x q1 x q2`` tensor, or ``None``.
    """
    kind = stationary_kind(covar)
    if kind is None:
        return None
    ls = covar.base_kernel.lengthscale
    centre = x1.reshape(-1, x1.shape[-1]).mean(0)
    xs1 = (x1 - centre) / ls
    xs2 = xs1 if x2 is None else (x2 - centre) / ls
    batch = torch.broadcast_shapes(xs1.shape[:-2], xs2.shape[:-2], covar.outputscale.shape)
    xs1, xs2 = xs1.expand(batch + xs1.shape[-2:]), xs2.expand(batch + xs2.shape[-2:])
    q1, q2, d = xs1.shape[-2], xs2.shape[-2], xs1.shape[-1]
    r2 = difference_distances(xs1.reshape(-1, q1, d), xs2.reshape(-1, q2, d)).square_()
    r2 = r2.reshape(batch + (q1, q2)).clamp_min_(_R2_FLOOR)
    if x2 is None:
        r2.diagonal(dim1=-2, dim2=-1).fill_(_R2_FLOOR)
    k0, _ = _kernel_parts(kind, r2, derivative=False, lean=True)
    return k0.mul_(covar.outputscale[..., None, None])


def stationary_kind(covar: Any) -> str | None:
    r"""``"matern12"``, ``"matern32"``, ``"matern52"`` or ``"rbf"`` for a ``ScaleKernel`` over that kernel without
    ``active_dims`` (the family of :func:`exact_mll_loss` and :func:`stationary_kernel_matrix`), else ``None``."""
    if type(covar) is not ScaleKernel or covar.active_dims is not None:
        return None
    base = covar.base_kernel
    if base.active_dims is not None:
        return None
    if type(base) in (RBFKernel, DifferenceRBFKernel):
        return "rbf"
    if type(base) in (MaternKernel, DifferenceMaternKernel):
        return {0.5: "matern12", 1.5: "matern32", 2.5: "matern52"}.get(float(base.nu))
    return None


def exact_mll_loss(model: Any) -> Callable[..., Tensor] | None:
    r"""The loss ``-ExactMarginalLogLikelihood(model.likelihood, model)(model(X), y)`` with closed-form gradients,
    or ``None`` when ``model`` is outside the supported family (the caller then uses GPyTorch's MLL).

    Supported: a :class:`~gpgeom.botorch.exact_gp.ExactGPModel` (or any BoTorch ``BatchedMultiOutputGPyTorchModel``
    exact GP with the same attributes) with one training input, a ``ScaleKernel`` over ``MaternKernel`` (nu 1/2,
    3/2, 5/2) or ``RBFKernel`` without ``active_dims``, a ``GaussianLikelihood`` with homoskedastic noise or a
    ``FixedNoiseGaussianLikelihood`` without learned extra noise, a ``ConstantMean`` or ``ZeroMean``, an input
    transform without trainable parameters, no added loss terms, and at most ``model.max_cholesky_size`` training
    points (above, GPyTorch would not use Cholesky algebra, so neither does this loss).

    Returns:
        A callable ``loss(batch_indices=None)`` returning the loss of every batch member (shape ``batch_shape``,
        the model's batch shape including the output dimension; a 0-d tensor for one output and no batch), equal
        to GPyTorch's value (per member: minus the log likelihood plus log priors, over ``n``). For a 1-D batch
        of members with separate hyperparameters, ``batch_indices`` (a sequence of member indices) evaluates only
        those members and returns their losses; the attribute ``accepts_batch_indices`` tells whether it does.
    """
    kind = stationary_kind(getattr(model, "covar_module", None))
    lik = getattr(model, "likelihood", None)
    mean = getattr(model, "mean_module", None)
    inputs = getattr(model, "train_inputs", None)
    if kind is None or inputs is None or len(inputs) != 1 or model.train_targets is None:
        return None
    if type(lik) is GaussianLikelihood:
        if type(lik.noise_covar) is not HomoskedasticNoise:
            return None
        fixed = False
    elif type(lik) is FixedNoiseGaussianLikelihood:
        if getattr(lik, "second_noise_covar", None) is not None:
            return None
        fixed = True
    else:
        return None
    if type(mean) not in (ConstantMean, ZeroMean) or list(model.added_loss_terms()):
        return None
    tf = getattr(model, "input_transform", None)
    if tf is not None and any(p.requires_grad for p in tf.parameters()):
        return None
    n = inputs[0].shape[-2]
    if n > getattr(model, "max_cholesky_size", 0):
        return None

    covar = model.covar_module
    m = getattr(model, "_num_outputs", 1)
    aug = torch.Size(model.train_targets.shape[:-1])  # the loss's batch shape
    in_batch = torch.Size(getattr(model, "_input_batch_shape", aug))
    shared = (
        m > 1 and bool(getattr(model, "shared_hyperparameters", False)) and not fixed and len(aug) == len(in_batch) + 1
    )
    kb = in_batch + torch.Size([1]) if shared else aug
    try:  # the hyperparameters must broadcast to the covariance batch shape
        for shape in (covar.base_kernel.lengthscale.shape[:-2], covar.outputscale.shape):
            if torch.broadcast_shapes(shape, kb) != kb:
                return None
        if not fixed and torch.broadcast_shapes(lik.noise.shape[:-1], kb) != kb:
            return None
    except RuntimeError:
        return None
    subset_ok = (not shared) and len(aug) == 1
    priors = list(model.named_priors())

    def loss(batch_indices: Any = None) -> Tensor:
        X = model.transform_inputs(inputs[0]) if tf is not None else inputs[0]
        Y = model.train_targets
        ls = covar.base_kernel.lengthscale
        os_ = covar.outputscale
        if shared:
            X = X[..., :1, :, :]  # all outputs share the inputs
            y = Y.unsqueeze(-3).mT  # ``in_batch x 1 x n x m``
        else:
            X = X.expand(kb + X.shape[-2:])
            y = Y.unsqueeze(-1)
        ls = ls.expand(kb + ls.shape[-2:])
        os_ = os_.expand(kb)
        noise = lik.noise.expand(kb + (n,)) if not fixed else lik.noise.expand(aug + (n,))
        G = y.shape[-1]
        if type(mean) is ConstantMean:
            c = mean.constant.expand(aug)
            c = c.reshape(kb + (G,))
        else:
            c = torch.zeros(kb + (G,), dtype=Y.dtype, device=Y.device)
        idx = None
        if batch_indices is not None and subset_ok:
            idx = torch.as_tensor(batch_indices, dtype=torch.long, device=Y.device)
            ls, os_, noise, c, X, y = ls[idx], os_[idx], noise[idx], c[idx], X[idx], y[idx]
        nll = stationary_nll(kind, ls, os_, noise, c, X, y)
        logp = -nll.reshape(aug) if idx is None else -nll.reshape(-1)
        # log priors, added to every member exactly as gpytorch.mlls.ExactMarginalLogLikelihood does
        for _, module, prior, closure, _ in priors:
            term = prior.log_prob(closure(module))
            term = term.view(*term.shape[: len(aug)], -1).sum(-1)
            if idx is not None:
                term = term.expand(aug)[idx] if term.dim() else term
            logp = logp + term
        out = -logp / n
        if batch_indices is not None and idx is None:
            out = out.reshape(-1)[torch.as_tensor(batch_indices, dtype=torch.long, device=Y.device)]
        return out

    loss.accepts_batch_indices = subset_ok  # type: ignore[attr-defined]
    # no GPyTorch setting read (the jitter: explicit_jitter) and no random draw: fits in threads run it side by side
    loss.thread_isolated = True  # type: ignore[attr-defined]
    return loss


class _GaussianQuadLogdet(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, S: Tensor, y: Tensor) -> Tensor:  # noqa: D102 (gaussian_quad_logdet)
        L = psd_safe_cholesky(S)
        a = torch.cholesky_solve(y.unsqueeze(-1), L).squeeze(-1)
        ctx.save_for_backward(L, a)
        return (y * a).sum(-1) + 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102 (gaussian_quad_logdet)
        L, a = ctx.saved_tensors
        gS = (torch.cholesky_inverse(L) - a.unsqueeze(-1) * a.unsqueeze(-2)) * g[..., None, None]
        return gS, 2 * a * g.unsqueeze(-1)


def gaussian_quad_logdet(S: Tensor, y: Tensor) -> Tensor:
    r""":math:`y^\top \Sigma^{-1} y + \log|\Sigma|`, ``(*b,)``, for a covariance ``S`` ``(*b, N, N)`` and
    ``y`` ``(*b, N)``, differentiable with the closed-form gradients :math:`\Sigma^{-1} - \alpha\alpha^\top`
    (with respect to ``S``) and :math:`2\alpha` (``y``), :math:`\alpha = \Sigma^{-1} y` (Rasmussen & Williams 2006,
    eq. 5.9): one Cholesky factorisation and one inverse from it, about a fifth of the time of differentiating
    through the factorisation. Twice the negative Gaussian log density of ``y`` less :math:`N \log 2\pi`."""
    return _GaussianQuadLogdet.apply(S, y)

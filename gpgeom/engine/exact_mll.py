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

import math
from collections.abc import Callable
from typing import Any

import torch
from gpytorch.kernels import MaternKernel, RBFKernel, ScaleKernel
from gpytorch.likelihoods import FixedNoiseGaussianLikelihood, GaussianLikelihood
from gpytorch.likelihoods.noise_models import HomoskedasticNoise
from gpytorch.means import ConstantMean, ZeroMean
from linear_operator.utils.cholesky import psd_safe_cholesky
from torch import Tensor

__all__ = ["exact_mll_loss", "stationary_nll"]

_KINDS = ("matern12", "matern32", "matern52", "rbf")
#: Squared scaled distances at or below this are treated as zero (GPyTorch clamps them at 1e-30 too).
_R2_FLOOR = 1e-30
#: Elements of the covariance matrices processed together (about 2 MB of float64).
_CHUNK_ELEMENTS = 2**18


def _kernel_parts(kind: str, r2: Tensor) -> tuple[Tensor, Tensor]:
    r"""``k0(R)`` and ``dk0/d(R^2)`` (elementwise) for squared scaled distances ``r2`` (overwritten); the derivative
    is 0 where ``r2`` is at the floor (the diagonal), where it multiplies a zero distance anyway. In-place
    arithmetic: these ``n x n`` passes are memory-bound."""
    if kind == "rbf":
        k0 = r2.mul_(-0.5).exp_()
        return k0, k0.mul(-0.5)
    zero = r2 <= _R2_FLOOR
    if kind == "matern12":
        r = r2.sqrt_()
        e = r.neg().exp_()
        return e, e.div(r).mul_(-0.5).masked_fill_(zero, 0.0)
    if kind == "matern32":
        s = r2.mul_(3.0).sqrt_()
        e = s.neg().exp_()
        return s.add_(1.0).mul_(e), e.mul_(-1.5).masked_fill_(zero, 0.0)
    s = r2.mul_(5.0).sqrt_()
    e = s.neg().exp_()
    t = s.add(1.0)
    dk0 = t.mul(e).mul_(-5.0 / 6.0).masked_fill_(zero, 0.0)
    return s.square_().div_(3.0).add_(t).mul_(e), dk0


def _scaled_sq_dist(x: Tensor, lengthscale: Tensor) -> Tensor:
    r"""``R^2`` of shape ``kb x n x n`` for centred inputs ``x`` (``kb x n x d``), exact zeros on the diagonal."""
    xs = x / lengthscale
    sq = xs.pow(2).sum(-1)
    r2 = torch.baddbmm(sq.unsqueeze(-1) + sq.unsqueeze(-2), xs, xs.mT, alpha=-2.0).clamp_min_(_R2_FLOOR)
    r2.diagonal(dim1=-2, dim2=-1).fill_(_R2_FLOOR)
    return r2


class _StationaryNLL(torch.autograd.Function):
    r"""Negative log density of ``G`` columns of targets under one stationary GP covariance per batch member."""

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
    ) -> Tensor:
        r2 = _scaled_sq_dist(x, lengthscale)
        k0, dk0 = _kernel_parts(kind, r2)
        K = outputscale[..., None, None] * k0
        K.diagonal(dim1=-2, dim2=-1).add_(noise)
        L = psd_safe_cholesky(K)
        resid = y - constant.unsqueeze(-2)  # ``kb x n x G``
        alpha = torch.cholesky_solve(resid, L)
        n = y.shape[-2]
        logdet = L.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # half the log determinant
        nll = 0.5 * (resid * alpha).sum(-2) + logdet.unsqueeze(-1) + 0.5 * n * math.log(2.0 * math.pi)
        ctx.kind = kind
        ctx.save_for_backward(lengthscale, outputscale, x, L, alpha, k0, dk0)
        return nll

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        lengthscale, outputscale, x, L, alpha, k0, dk0 = ctx.saved_tensors
        # W = dl/dK summed over the G columns with their incoming gradients: 0.5 (sum_g g_g) K^-1 - 0.5 A diag(g) A^T
        W = 0.5 * grad.sum(-1)[..., None, None] * torch.cholesky_inverse(L)
        W = W - 0.5 * (alpha * grad.unsqueeze(-2)) @ alpha.mT
        g_outputscale = torch.einsum("...ij,...ij->...", W, k0)
        g_noise = W.diagonal(dim1=-2, dim2=-1).clone()
        g_constant = -grad * alpha.sum(-2)
        G = W.mul_(dk0).mul_(outputscale[..., None, None])
        # sum_ij G_ij (x_ik - x_jk)^2, G symmetric
        sq_term = 2.0 * ((x * x) * G.sum(-1, keepdim=True)).sum(-2) - 2.0 * (x * (G @ x)).sum(-2)  # ``kb x d``
        g_ls = -2.0 * sq_term.unsqueeze(-2) / lengthscale.pow(3)  # ``kb x 1 x d``
        if lengthscale.shape[-1] == 1:  # one lengthscale for all dimensions
            g_ls = g_ls.sum(-1, keepdim=True)
        return g_ls, g_outputscale, g_noise, g_constant, None, None, None


def stationary_nll(
    kind: str,
    lengthscale: Tensor,
    outputscale: Tensor,
    noise: Tensor,
    constant: Tensor,
    x: Tensor,
    y: Tensor,
) -> Tensor:
    r"""``-log N(y_g; c_g 1, s^2 k0(X / l) + diag(noise))`` for every batch member and column, differentiable in
    the four hyperparameter tensors (closed-form backward pass; Rasmussen & Williams 2006, eqs. 2.30 and 5.9).

    Args:
        kind: ``"matern12"``, ``"matern32"``, ``"matern52"`` or ``"rbf"`` (GPyTorch's definitions).
        lengthscale: ``kb x 1 x d`` (ARD) or ``kb x 1 x 1`` lengthscales.
        outputscale: ``kb`` outputscales (kernel variance).
        noise: ``kb x n`` noise variances added to the diagonal.
        constant: ``kb x G`` constant means.
        x: ``kb x n x d`` inputs; they are centred here (as GPyTorch's Matern kernel does), which does not change
            the distances.
        y: ``kb x n x G`` targets: ``G`` columns sharing each covariance.

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
    # at n = 300); a GPU takes them all in one launch
    B = flat[0].shape[0]
    chunk = max(1, _CHUNK_ELEMENTS // (n * n)) if x.device.type == "cpu" else B
    out = [_StationaryNLL.apply(*(a[i : i + chunk] for a in flat), kind) for i in range(0, B, chunk)]
    return torch.cat(out, 0).reshape(kb + y.shape[-1:])


def _kernel_kind(covar: Any) -> str | None:
    if type(covar) is not ScaleKernel or covar.active_dims is not None:
        return None
    base = covar.base_kernel
    if base.active_dims is not None:
        return None
    if type(base) is RBFKernel:
        return "rbf"
    if type(base) is MaternKernel:
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
    kind = _kernel_kind(getattr(model, "covar_module", None))
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
    return loss

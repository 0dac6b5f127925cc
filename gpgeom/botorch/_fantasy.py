r"""The caches of GPyTorch's fantasy (conditioned) exact GP: GPyTorch's update, its losses restored, and its root,
mean cache and covariance made by triangular solves.

``ExactGP.get_fantasy_model`` updates the prediction caches of the training data by the ``n'`` new rows instead of
recomputing them (a bordered system, Pleiss et al. 2018, "Constant-Time Predictive Distributions for Gaussian
Processes", sec. 4 and its fantasy update): the mean cache ``alpha = (K + noise)^{-1} (y - mu)`` and the fast
predictive variance's root ``R`` (``R R^T = (K + noise)^{-1}``), both ``(n + n') x ...``. GPyTorch 1.15 loses two
things on the way, which :func:`fantasy_caches` restores:

* under its default ``detach_test_caches`` (BoTorch turns it off only inside a posterior, after conditioning) the
  updated ``R`` is detached: a variance's gradient with respect to the new rows was wrong (a relative 13-750), while
  the mean's (from an ``alpha`` kept attached) was right;
* the updated ``alpha`` is stored under a cache key that the mean's lookup (keyed by the NaN policy) never reads:
  every fantasy model's first mean recomputed ``alpha`` by factoring the ``(n + n') x (n + n')`` covariance.

GPyTorch's update also forms the new rows of the root and ``alpha`` with the explicit inverse ``R`` of the old rows'
Cholesky root, and the covariance as ``K** - (K* R)(K* R)^T``: not backward stable. In float32 at the default noise
floor (1e-4 standardised) a conditioned model's variances were off by 2,400 ulps of the prior variance (negative:
-1.6e-3 for 8.5e-6, 1e-3 of jitter added to the Schur complement), ``rsample`` returned NaN at ``q = 1`` without an
error, and joint samples had up to 1000 times the variance. Below float64 and within ``max_cholesky_size``
:func:`_solved_update` makes the bordered root ``Z`` and ``alpha`` by triangular solves from the parent's root, and
:class:`SolvedStrategy` the covariance as ``K** - V^T V``, ``V = Z^{-1} K*^T``: 5.5 ulps
(``tests/test_conditioned_float32_covariance.py``); float64 keeps GPyTorch's computation (:func:`_below_float64`).
Both keep the new rows' gradient, as GPyTorch's caches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import gpytorch
import torch
from gpytorch.models.exact_prediction_strategies import DefaultPredictionStrategy
from gpytorch.utils.errors import CachingError
from gpytorch.utils.memoize import add_to_cache, get_from_cache
from linear_operator import to_dense
from linear_operator.operators import (
    BatchRepeatLinearOperator,
    MatmulLinearOperator,
    RootLinearOperator,
    TriangularLinearOperator,
)
from linear_operator.utils.cholesky import psd_safe_cholesky

from gpgeom.engine.chunking import solve_lower_folded

from ._local import settings_lock

__all__ = ["SolvedStrategy", "fantasy_caches", "solve_covariance"]


@contextlib.contextmanager
def fantasy_caches(new_rows: list[torch.Tensor], out: list[Any], parent: Any = None) -> Iterator[None]:
    r"""Around ``ExactGP.get_fantasy_model``: its caches keep the gradient of ``new_rows`` (the new inputs
    ``batch' x n' x d`` and targets ``batch' x (m) x n'``) when one of them carries a gradient, and the model appended
    to ``out`` gets its updated mean cache where the mean reads it (module docstring), when its ``n + n'`` training
    rows are within GPyTorch's ``max_cholesky_size`` (both caches then exact up to rounding)."""
    keep = torch.is_grad_enabled() and any(t.requires_grad for t in new_rows)
    with settings_lock, gpytorch.settings.detach_test_caches(False) if keep else contextlib.nullcontext():
        yield
    strategy = getattr(out[0], "prediction_strategy", None) if out else None
    if strategy is None or strategy.num_train > gpytorch.settings.max_cholesky_size.value():
        return  # above it, the update's root of the old rows' inverse would be Lanczos' low-rank one
    solved = type(strategy) in (DefaultPredictionStrategy, SolvedStrategy) and _below_float64(strategy)
    if solved and _solved_update(parent, strategy):
        strategy.__class__ = SolvedStrategy  # its covariance by a solve against the root just made
    try:  # stored without the NaN policy argument (read so by `_finite.check_conditioned`); the update assumes
        alpha = get_from_cache(strategy, "mean_cache")  # every row observed: the policy "ignore"
    except CachingError:
        return
    add_to_cache(strategy, "mean_cache", alpha, "ignore")


def _below_float64(strategy: Any) -> bool:
    r"""Whether ``strategy`` computes below float64, where :class:`SolvedStrategy` is used. In float64 GPyTorch's
    explicit inverse root is kept: its variances differ from a fresh float64 factorisation's by 5e-15 of the prior
    variance (``tests/test_conditioned_float32_covariance.py``'s conditioning, 3e-9 relative), and the solves cost
    more time than its products (float32: a conditioned posterior's samples in 7.2-8.2 ms against 4.9 ms,
    ``n = 105``, 64 batches of ``q = 4``, minima of 30 on a shared CPU)."""
    return strategy.train_prior_dist.mean.dtype != torch.float64


def solve_covariance(strategy: Any) -> bool:
    r"""Give GPyTorch's exact prediction ``strategy`` (one GPyTorch built afresh: a conditioned model's after its
    state changed, or any prediction outside the model's own factor) the covariance of :class:`SolvedStrategy`.
    Returns whether it was changed (not when it is of another kind, already is one, or computes in float64)."""
    if type(strategy) is not DefaultPredictionStrategy or not _below_float64(strategy):
        return False
    strategy.__class__ = SolvedStrategy
    return True


class SolvedStrategy(DefaultPredictionStrategy):
    r"""GPyTorch's exact prediction strategy of a fantasy (conditioned) model whose fast predictive covariance is
    ``K** - V^T V`` with ``V = Z^{-1} K*^T`` solved against the updated lower Cholesky root ``Z`` of the
    ``(n + n') x (n + n')`` noisy training covariance (``Z Z^T = K + noise``, GPyTorch's bordered update), instead of
    ``K** - (K* R)(K* R)^T`` with its explicit inverse ``R = Z^{-T}``.

    Multiplying by an explicitly inverted triangular factor is not backward stable: in float32 with the default
    noise floor (1e-4 standardised, outputscale 11-14, ``n = 63``) the variance of a conditioned model came out
    -7.6e-4 where the float64 model gives 3.2e-5 (a NaN ``rsample`` at ``q = 1``, wrong joint covariances at larger
    ``q``), while the triangular solve gives 3.4e-5, a few ulps of the prior variance. Falls back to GPyTorch's
    computation when the root is not a lower-triangular operator (above ``max_cholesky_size``: Lanczos) or outside
    its fast predictive variance. ``Z`` keeps the graph it was built with (the new rows' gradient,
    :func:`fantasy_caches`), as GPyTorch's ``R`` did."""

    def exact_predictive_covar(self, test_test_covar: Any, test_train_covar: Any) -> Any:
        st = gpytorch.settings
        if st.fast_pred_var.off() or st.skip_posterior_variances.on():
            return super().exact_predictive_covar(test_test_covar, test_train_covar)
        root = _lower_root(self)
        if root is None:
            return super().exact_predictive_covar(test_test_covar, test_train_covar)
        self._last_test_train_covar = test_train_covar
        # ``batch x N x q``; test batch dimensions beyond the root's folded into the columns (one solve per root)
        V = solve_lower_folded(root, to_dense(test_train_covar).mT)
        return test_test_covar + MatmulLinearOperator(V.mT, V.mul(-1))


def _lower_root(strategy: Any) -> torch.Tensor | None:
    r"""The lower-triangular Cholesky root ``batch x n x n`` of ``strategy``'s noisy training covariance (the one
    its caches were made with), or ``None`` where it has none (a Lanczos root above ``max_cholesky_size``)."""
    root = strategy.lik_train_train_covar.root_decomposition().root
    if isinstance(root, BatchRepeatLinearOperator):  # fantasies at the same points: broadcast the one root
        root = root.base_linear_op
    if not isinstance(root, TriangularLinearOperator) or getattr(root, "upper", False):
        return None
    return to_dense(root)


def _solved_update(parent: Any, strategy: Any) -> bool:
    r"""Make the caches of GPyTorch's fantasy ``strategy`` (``n + n'`` rows) from the Cholesky root ``L`` of its
    ``parent`` (``n`` rows) by triangular solves: the bordered root ``Z = [[L, 0], [F, G]]`` with
    ``F^T = L^{-1} K_{n,n'}``, ``G G^T = K_{n'n'} + noise - F F^T``, and ``alpha = Z^{-T} Z^{-1} (y - mu)``.
    GPyTorch forms ``F`` and ``alpha`` with the explicit inverse ``R = L^{-T}`` (``SolvedStrategy``): in float32
    at the default noise floor its conditioned variances were off by 80 ulps of the prior variance (negative:
    -6.6e-5 for 1.9e-5). Fantasies at the same points (GPyTorch's root one ``batch x N x N`` root repeated over
    them) get one ``Z`` per batch, repeated as GPyTorch's (a copy per fantasy: 64 times the storage in qKG's
    64 fantasies). Returns whether the caches were replaced (not where the parent has no triangular root)."""
    L = None if parent is None else _lower_root(parent)
    if L is None:
        return False
    n = L.shape[-1]
    K = strategy.lik_train_train_covar
    lead = _repeated_dims(K)  # fantasies at the same points: GPyTorch's root is one root repeated over them
    K = K[(0,) * lead] if lead else K  # (its covariance the same in each: it repeats one root)
    cross = to_dense(K[..., :n, n:])  # ``batch x n x n'``
    Kn = to_dense(K[..., n:, n:])
    Ft = torch.linalg.solve_triangular(L, cross, upper=False)
    G = psd_safe_cholesky(Kn - Ft.mT @ Ft)
    batch = torch.broadcast_shapes(L.shape[:-2], Ft.shape[:-2], G.shape[:-2])
    N = n + G.shape[-1]
    Z = L.new_zeros(batch + (N, N))
    Z[..., :n, :n] = L
    Z[..., n:, :n] = Ft.mT
    Z[..., n:, n:] = G
    resid = strategy.train_labels - strategy.train_prior_dist.mean  # ``fantasies x batch x N``
    if resid.shape[lead:-1] != batch:
        return False
    # the fantasies' residuals as columns (``batch x N x T``): one solve per root, not one per fantasy
    cols = resid.reshape(-1, *resid.shape[lead:]).movedim(0, -1)
    w = torch.linalg.solve_triangular(Z, cols, upper=False)
    alpha = torch.linalg.solve_triangular(Z.mT, w, upper=True).movedim(-1, 0).reshape(resid.shape)
    root: Any = TriangularLinearOperator(Z)
    if lead:
        root = BatchRepeatLinearOperator(root, torch.Size(resid.shape[:lead]) + torch.Size([1] * len(batch)))
    add_to_cache(strategy.lik_train_train_covar, "root_decomposition", RootLinearOperator(root))
    add_to_cache(strategy, "mean_cache", alpha)
    return True


def _repeated_dims(K: Any) -> int:
    r"""The number of leading batch dimensions over which GPyTorch's update repeats one root of the training
    covariance ``K`` (``fantasies x batch x N x N``; its cached root a ``BatchRepeatLinearOperator`` of a
    ``batch x N x N`` root: fantasies at the same points), 0 where it does not."""
    try:
        root = get_from_cache(K, "root_decomposition").root
    except CachingError:
        return 0
    if not isinstance(root, BatchRepeatLinearOperator):
        return 0
    repeat, base = root.batch_repeat, root.base_linear_op.shape  # the base padded with leading ones
    lead = len(repeat)
    while lead and repeat[lead - 1] == 1:
        lead -= 1
    return lead if all(b == 1 for b in base[:lead]) else 0

r"""The caches of GPyTorch's fantasy (conditioned) exact GP, kept as GPyTorch computed them.

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
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import gpytorch
import torch
from gpytorch.utils.errors import CachingError
from gpytorch.utils.memoize import add_to_cache, get_from_cache

from ._local import settings_lock

__all__ = ["fantasy_caches"]


@contextlib.contextmanager
def fantasy_caches(new_rows: list[torch.Tensor], out: list[Any]) -> Iterator[None]:
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
    try:  # stored without the NaN policy argument (read so by `_finite.check_conditioned`); the update assumes
        alpha = get_from_cache(strategy, "mean_cache")  # every row observed: the policy "ignore"
    except CachingError:
        return
    add_to_cache(strategy, "mean_cache", alpha, "ignore")

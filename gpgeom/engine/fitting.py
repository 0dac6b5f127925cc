r"""One fitting entry point for every gpgeom model.

:func:`fit` trains the hyperparameters (and variational parameters) behind a GPyTorch marginal log likelihood, or
behind any callable loss, and returns a :class:`FitResult`. It chooses the optimiser from the objective:

* an exact marginal log likelihood (any MLL of an ``ExactGP``, or a ``SumMarginalLogLikelihood`` of exact GPs)
  is minimised full-batch with L-BFGS-B (``scipy.optimize.minimize``) over the flattened raw parameters, with
  bounds taken from the GPyTorch constraints (``botorch.optim.utils.get_parameters_and_bounds``); a batch of
  independent problems (separate hyperparameters per output or per batch member) gets one L-BFGS-B run per member
  (``botorch.optim.batched_lbfgs_b``), and a NaN covariance at a line-search trial point counts as an infinite
  loss. Parameters bounded below only (lengthscales, variances, noise) are optimised as ``log(x - lower)``;
  a callable loss that can evaluate a subset of its members (``accepts_batch_indices``, as
  :func:`gpgeom.engine.exact_mll.exact_mll_loss`) is evaluated only for the members still iterating;
* a variational objective (``gpytorch.mlls._ApproximateMarginalLogLikelihood``, e.g. ``VariationalELBO``) or any
  callable loss is minimised with Adam, optionally on minibatches from a ``data_loader``, with early stopping on an
  exponentially smoothed loss. Both optimisers return the best parameters they evaluated, not the last iterate.

Around the optimiser, :func:`fit` adds what users of raw GPyTorch/BoTorch ask for most often:

* **random restarts**: attempt 0 starts from the current parameters; later attempts start from a draw of the
  hyperparameter priors (``botorch.optim.utils.sample_all_priors``) when the model has priors, otherwise from a
  random re-initialisation (see :func:`random_reinitialize`). The state with the lowest final loss is loaded at
  the end and the model is left in eval mode; for a batch of independent problems, every member keeps its own
  best attempt (``FitResult.member_attempts``).
* **jitter escalation**: when a Cholesky factorisation fails (linear_operator ``NotPSDError`` or
  ``torch.linalg.LinAlgError``), the attempt is rerun from its starting point with
  ``gpytorch.settings.cholesky_jitter`` ten times larger, from the dtype's default (1e-8 for float64, 1e-6 for
  float32) up to ``max_jitter``. Past that, :class:`gpgeom.errors.NotPSDError` is raised with the remedies.
* **progress**: a tqdm bar per attempt showing the loss, by gpgeom's one rule (:mod:`gpgeom._progress`).
* **seeds**: ``seed`` makes restarts (and minibatch shuffling) reproducible without touching the caller's global
  random state.

The loss is the optimiser's objective: for an MLL it is ``-mll(...)`` summed over batch dimensions (GPyTorch
divides the log likelihood by the number of data, and adds the log priors), so lower is better.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gpytorch
import numpy as np
import torch
from botorch.optim.closures import get_loss_closure
from botorch.optim.utils import get_parameters_and_bounds, sample_all_priors
from gpytorch.mlls import MarginalLogLikelihood, SumMarginalLogLikelihood
from gpytorch.models import ExactGP
from linear_operator.utils.errors import NanError
from linear_operator.utils.errors import NotPSDError as _LONotPSDError
from scipy.optimize import Bounds, minimize
from torch import Tensor, nn

from gpgeom._progress import progress_bar
from gpgeom._validation import check_option, check_positive
from gpgeom.errors import NotPSDError

__all__ = ["FitResult", "fit", "random_reinitialize", "jitter_levels"]

_OPTIMIZERS = ("auto", "lbfgs", "adam")
#: Range of u = log(x - lower) for parameters bounded below only (x - lower between 1e-13 and 1e13).
_LOG_MIN, _LOG_MAX = -30.0, 30.0
_REMEDIES = (
    "Remedies: use float64 inputs and parameters (model.double()); normalise the inputs to the unit cube and "
    "standardise the outputs; raise the lower bound of the noise (e.g. GreaterThan(1e-4) on the likelihood noise "
    "or larger train_Yvar); remove or merge duplicate (or near-duplicate) inputs; or allow more jitter with "
    "fit(..., max_jitter=...)."
)


@dataclass
class FitResult:
    r"""What :func:`fit` did.

    Attributes:
        loss: The loss of the winning attempt's returned parameters (lower is better; for an MLL it is the negative
            marginal log likelihood plus log prior, divided by ``n`` by GPyTorch and summed over batch dimensions).
            Both optimisers return the best parameters they evaluated; with minibatches, the parameters at the end
            of the epoch with the lowest mean minibatch loss, and ``loss`` is that mean.
        history: One list per attempt of the loss after each L-BFGS-B iteration (after each evaluation for a
            batch of independent problems, whose members iterate independently) or each Adam epoch (empty for an
            attempt that failed before its first iteration).
        attempts: How many attempts ran (``restarts + 1``).
        best_attempt: The index (0-based) of the attempt whose state was loaded.
        jitter: The Cholesky jitter allowed in the winning attempt (``gpytorch.settings.cholesky_jitter``; the
            dtype's default unless it had to be escalated).
        wall_time: Seconds spent in :func:`fit`.
        converged: Whether the winning attempt met its convergence test (L-BFGS-B reported success, or Adam's early
            stopping triggered) rather than hitting ``max_iter``/``epochs``.
        optimizer: ``"lbfgs"`` or ``"adam"``.
        final_losses: The final loss of every attempt (``inf`` for a failed one).
        failures: One message per failed attempt (``"attempt k: ..."``).
        member_attempts: For a batch of independent problems fitted with L-BFGS-B (separate hyperparameters per
            output or batch member), the attempt whose parameters each member kept (flattened batch order):
            every member keeps its own best attempt, so ``loss`` is the sum of the members' best losses.
            ``None`` otherwise.
    """

    loss: float
    history: list[list[float]]
    attempts: int
    best_attempt: int
    jitter: float
    wall_time: float
    converged: bool
    optimizer: str
    final_losses: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    member_attempts: list[int] | None = None


# --------------------------------------------------------------------------------------------------------------
# helpers


def jitter_levels(dtype: torch.dtype, max_jitter: float) -> list[float]:
    r"""The jitter values tried in turn: the dtype's GPyTorch default, then x10 each, up to ``max_jitter``.

    Args:
        dtype: The dtype of the covariance matrices.
        max_jitter: The largest jitter allowed.

    Returns:
        An increasing list with at least one entry (the default, even if it exceeds ``max_jitter``).

    Example:
        >>> jitter_levels(torch.float64, 1e-4)
        [1e-08, 1e-07, 1e-06, 1e-05, 0.0001]
    """
    j0 = gpytorch.settings.cholesky_jitter.value(dtype)
    levels = [j0]
    while True:
        nxt = float(f"{levels[-1] * 10:.3g}")
        if nxt > max_jitter * (1 + 1e-9):
            break
        levels.append(nxt)
    return levels


@contextlib.contextmanager
def _jitter_context(jitter: float) -> Iterator[None]:
    # One try per factorisation at exactly this jitter: psd_safe_cholesky first tries the matrix as it is and
    # adds ``jitter`` only when that fails, so an unneeded jitter does not change any result.
    with (
        gpytorch.settings.cholesky_jitter(float_value=jitter, double_value=jitter),
        gpytorch.settings.cholesky_max_tries(1),
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings("ignore", message="A not p.d., added jitter")
        yield


def _model_dtype(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    for b in module.buffers():
        if b.is_floating_point():
            return b.dtype
    return torch.get_default_dtype()


def _has_priors(module: nn.Module) -> bool:
    return hasattr(module, "named_priors") and any(True for _ in module.named_priors())


def _train_input_scale(module: nn.Module) -> Tensor | None:
    inputs = getattr(module, "train_inputs", None)
    if not inputs or not isinstance(inputs[0], Tensor) or inputs[0].dim() < 2:
        return None
    X = inputs[0]
    if hasattr(module, "transform_inputs"):
        with torch.no_grad():
            X = module.transform_inputs(X)
    X = X.reshape(-1, X.shape[-1])
    if X.shape[0] < 2:
        return None
    return X.std(dim=0).clamp_min(1e-6)


def random_reinitialize(module: nn.Module, generator: torch.Generator | None = None) -> None:
    r"""Re-initialise the constrained raw parameters of a GPyTorch module at random (in place).

    Used by :func:`fit` for restarts when the model has no priors. The rule:

    * parameters without a constraint (means, variational parameters, weights) are left as they are;
    * ``*raw_lengthscale`` parameters get lengthscales drawn log-uniformly in ``[0.1 s, 10 s]`` where ``s`` is the
      per-dimension standard deviation of the (transformed) training inputs when the module has ``train_inputs``
      whose last dimension matches, else the current lengthscale;
    * every other constrained parameter ``v`` (outputscale, noise, ...) becomes ``v * 10**u`` with ``u`` uniform in
      ``[-1, 1]``.

    Values are clipped into the constraint's interval (strictly inside it) before being written back.

    Args:
        module: A ``gpytorch.Module`` (with ``named_parameters_and_constraints``).
        generator: Optional random generator; the global one otherwise.

    Raises:
        ValueError: When the module has no constrained parameter to re-initialise.
    """
    if not hasattr(module, "named_parameters_and_constraints"):
        raise ValueError(
            "Restarts need a gpytorch.Module with hyperparameter priors or constrained parameters to "
            f"re-initialise; got {type(module).__name__}."
        )
    scale = _train_input_scale(module)
    changed = 0
    with torch.no_grad():
        for name, raw, constraint in module.named_parameters_and_constraints():
            if constraint is None or not raw.requires_grad:
                continue
            value = constraint.transform(raw) if constraint.enforced else raw.clone()
            u = torch.rand(raw.shape, generator=generator, dtype=raw.dtype).to(raw.device) * 2.0 - 1.0
            if name.endswith("raw_lengthscale") and scale is not None and raw.shape[-1] in (1, scale.numel()):
                s = scale.to(raw) if raw.shape[-1] == scale.numel() else scale.mean().to(raw)
                new = s * 10.0**u
            else:
                new = value * 10.0**u
            lo = float(constraint.lower_bound.min()) if hasattr(constraint, "lower_bound") else -math.inf
            hi = float(constraint.upper_bound.max()) if hasattr(constraint, "upper_bound") else math.inf
            if math.isfinite(lo) or math.isfinite(hi):
                span_lo = lo + 1e-6 * max(abs(lo), 1e-6) if math.isfinite(lo) else -math.inf
                span_hi = hi - 1e-6 * max(abs(hi), 1e-6) if math.isfinite(hi) else math.inf
                new = new.clamp(span_lo, span_hi)
            raw.copy_(constraint.inverse_transform(new) if constraint.enforced else new)
            changed += 1
    if changed == 0:
        raise ValueError(
            f"Restarts need hyperparameter priors or constrained parameters; {type(module).__name__} has neither."
        )


def _reinitialize(module: nn.Module, generator: torch.Generator) -> None:
    if _has_priors(module):
        sample_all_priors(module)
    else:
        random_reinitialize(module, generator)


def _is_exact(objective: object) -> bool:
    if isinstance(objective, SumMarginalLogLikelihood):
        return all(isinstance(sub, ExactGP) for sub in getattr(objective.model, "models", ()))
    return isinstance(objective, MarginalLogLikelihood) and isinstance(objective.model, ExactGP)


def _is_cholesky_failure(err: BaseException) -> bool:
    return isinstance(err, _LONotPSDError | torch.linalg.LinAlgError) and not isinstance(err, NotPSDError)


# --------------------------------------------------------------------------------------------------------------
# the two optimisers


class _MemberBests:
    r"""For a batch of independent problems: each member's best loss over the attempts, its parameter rows
    (``nb x ...`` per parameter name), the attempt they came from, and the largest jitter any attempt used."""

    def __init__(self, losses: np.ndarray, params: dict[str, Tensor], attempt: int, jitter: float) -> None:
        nb = losses.size
        self.loss = losses.copy()
        self.rows = {n: p.detach().reshape(nb, -1).clone() for n, p in params.items()}
        self.attempt = [attempt] * nb
        self.jitter = jitter

    def update(self, losses: np.ndarray, params: dict[str, Tensor], attempt: int, jitter: float) -> None:
        better = losses < self.loss
        rows = torch.as_tensor(better)
        for n, p in params.items():
            self.rows[n][rows] = p.detach().reshape(losses.size, -1)[rows]
        for i in np.flatnonzero(better):
            self.attempt[i] = attempt
        self.loss = np.minimum(losses, self.loss)
        self.jitter = max(self.jitter, jitter)


class _Attempt:
    r"""Outcome of one optimiser run."""

    def __init__(self) -> None:
        self.history: list[float] = []
        self.loss = math.inf
        self.converged = False
        #: Best loss of every member of a batch of independent problems (``None`` for one problem).
        self.member_losses: np.ndarray | None = None


def _flat_bounds(
    names: list[str], tensors: list[Tensor], bounds: dict[str, tuple[Any, Any]]
) -> tuple[np.ndarray, np.ndarray]:
    r"""Lower and upper bounds of every entry of ``tensors``, each shaped like its tensor (``-inf``/``inf`` = none)."""
    lower, upper = [], []
    for n, t in zip(names, tensors):
        for b, dest, default in zip(bounds.get(n, (None, None)), (lower, upper), (-np.inf, np.inf)):
            if b is None:
                arr = np.full(tuple(t.shape), default)
            else:
                arr = torch.as_tensor(b, dtype=torch.float64).expand(t.shape).cpu().numpy().copy()
                arr[np.isnan(arr)] = default
            dest.append(arr)
    return lower, upper


def _run_lbfgs(
    module: nn.Module,
    loss_fn: Callable[[], Tensor],
    params: dict[str, Tensor],
    bounds: dict[str, tuple[Any, Any]],
    max_iter: int,
    bar: Any,
) -> _Attempt:
    r"""L-BFGS-B on the flattened parameters.

    When the loss is a batch of independent problems (loss of shape ``B`` with ``B.numel() > 1`` and every
    parameter of shape ``B x ...``, e.g. separate hyperparameters per output), each batch member gets its own
    L-BFGS-B run (``botorch.optim.batched_lbfgs_b.fmin_l_bfgs_b_batched``), evaluated together; otherwise one
    ``scipy.optimize.minimize`` run on the summed loss. Either way the best finite evaluation is kept.
    """
    out = _Attempt()
    names = list(params)
    tensors = [params[n] for n in names]
    module.train()
    with torch.no_grad():
        probe = loss_fn()
    B = probe.shape
    batched = probe.dim() > 0 and B.numel() > 1 and all(t.dim() >= len(B) and t.shape[: len(B)] == B for t in tensors)
    lower, upper = _flat_bounds(names, tensors, bounds)
    nb = B.numel() if batched else 1
    lo_all = np.concatenate([a.reshape(nb, -1) for a in lower], axis=1)
    hi_all = np.concatenate([a.reshape(nb, -1) for a in upper], axis=1)
    if batched and not (np.all(lo_all == lo_all[:1]) and np.all(hi_all == hi_all[:1])):
        batched, nb = False, 1
        lo_all = np.concatenate([a.reshape(1, -1) for a in lower], axis=1)
        hi_all = np.concatenate([a.reshape(1, -1) for a in upper], axis=1)
    x0 = torch.cat([t.detach().double().cpu().reshape(nb, -1) for t in tensors], dim=1).numpy()
    x0 = np.clip(x0, lo_all, hi_all)
    sizes = [t.numel() // nb for t in tensors]

    # Entries bounded below only (lengthscales, variances, noise: GPyTorch constraints without transform) are
    # optimised as u = log(x - lower), as GPy and scikit-learn do: the loss is far better conditioned in u when a
    # parameter spans orders of magnitude (measured on 35 Matern-5/2 ARD GPs, n = 300, d = 10: the first 100
    # iterations close 4x more of the gap to the optimum), and the bound is never active.
    logmask = np.isfinite(lo_all[0]) & ~np.isfinite(hi_all[0])
    lo_log = lo_all[0, logmask]  # the same for every row (a batched run has equal bounds)

    def to_raw(u: np.ndarray) -> np.ndarray:
        x = u.copy()
        x[:, logmask] = lo_log + np.exp(u[:, logmask])
        return x

    def from_raw(x: np.ndarray) -> np.ndarray:
        u = x.copy()
        u[:, logmask] = np.log(np.maximum(x[:, logmask] - lo_log, math.exp(_LOG_MIN)))
        return u

    lo_all = np.where(logmask, _LOG_MIN, lo_all)
    hi_all = np.where(logmask, _LOG_MAX, hi_all)
    x0 = np.clip(from_raw(x0), lo_all, hi_all)
    best_f = np.full(nb, np.inf)
    best_x = x0.copy()
    current = x0.copy()

    def set_x(u: np.ndarray) -> None:
        x = to_raw(u)
        with torch.no_grad():
            offset = 0
            for t, s in zip(tensors, sizes):
                t.copy_(torch.as_tensor(x[:, offset : offset + s]).reshape(t.shape).to(t))
                offset += s

    n_evals = [0]

    # a loss that can evaluate a subset of the batch members (e.g. gpgeom.engine.exact_mll) is asked only for the
    # members whose L-BFGS-B runs are still going
    subset = batched and bool(getattr(loss_fn, "accepts_batch_indices", False))

    def evaluate(x: np.ndarray, idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        r"""Loss and gradient at ``x`` (``nb x p``) of the members ``idx`` (all when ``None``); rows ``idx``."""
        set_x(x)
        rows = np.arange(x.shape[0]) if idx is None else idx
        for t in tensors:
            t.grad = None
        n_evals[0] += 1
        try:
            loss = loss_fn(batch_indices=idx.tolist()) if (subset and idx is not None) else loss_fn()
            loss.sum().backward()
        except NanError:
            # A trial point of the line search gave a NaN covariance (e.g. a lengthscale driven to 0): report an
            # infinite loss so that the line search backtracks. NaN at the starting point fails the attempt.
            if n_evals[0] == 1:
                raise
            return np.full(len(rows), np.inf), np.zeros((len(rows), x.shape[1]))
        if batched:
            f = loss.detach().double().cpu().reshape(-1).numpy()
            if not (subset and idx is not None):
                f = f[rows]
        else:
            f = np.array([float(loss.sum().detach())])
        grads = [
            (t.grad if t.grad is not None else torch.zeros_like(t)).detach().double().cpu().reshape(nb, -1)
            for t in tensors
        ]
        g = torch.cat(grads, dim=1).numpy()[rows]
        g[:, logmask] *= np.exp(x[rows][:, logmask])  # dx/du = x - lower = exp(u)
        bad = ~np.isfinite(f) | ~np.all(np.isfinite(g), axis=1)
        f = np.where(bad, np.inf, f)
        g[bad] = 0.0
        better = f < best_f[rows]
        best_f[rows[better]] = f[better]
        best_x[rows[better]] = x[rows[better]]
        return f, g

    if batched:
        from botorch.optim.batched_lbfgs_b import fmin_l_bfgs_b_batched

        last_f = np.full(nb, np.inf)

        def batched_fun(x: np.ndarray, batch_indices: Any = None) -> tuple[np.ndarray, np.ndarray]:
            idx = np.arange(nb) if batch_indices is None else np.asarray(batch_indices, dtype=int)
            current[idx] = x
            f, g = evaluate(current, idx)
            last_f[idx] = f
            total = float(np.sum(np.where(np.isfinite(best_f), best_f, last_f)))
            out.history.append(total)
            bar.update(1)
            bar.set_postfix(loss=f"{total:.5g}", refresh=False)
            return f, g

        bnds = [(float(a), float(b)) for a, b in zip(lo_all[0], hi_all[0])]
        _, _, infos = fmin_l_bfgs_b_batched(batched_fun, x0, bounds=bnds, maxiter=max_iter, pass_batch_indices=True)
        converged = all(int(info.get("warnflag", 1)) == 0 for info in infos)
    else:

        def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
            f, g = evaluate(x.reshape(1, -1))
            return float(f[0]), g[0]

        def callback(intermediate_result: Any) -> None:
            f = float(intermediate_result.fun)
            out.history.append(f)
            bar.update(1)
            bar.set_postfix(loss=f"{f:.5g}", refresh=False)

        res = minimize(
            fun,
            x0[0],
            jac=True,
            method="L-BFGS-B",
            bounds=Bounds(lo_all[0], hi_all[0]),
            callback=callback,
            options={"maxiter": max_iter},
        )
        converged = bool(res.success)
    set_x(best_x)
    out.loss = float(best_f.sum())
    out.converged = converged
    out.member_losses = best_f.copy() if batched else None
    return out


_LR_SCHEDULES = ("constant", "cosine")


def _lr_factor_fn(
    lr_schedule: str | Callable[[int], float] | None, lr_final_fraction: float, epochs: int
) -> Callable[[int], float] | None:
    r"""The learning-rate factor per Adam epoch, ``epoch -> factor`` (``None``: constant, factor 1).

    ``"cosine"``: :math:`f_e = \phi + (1 - \phi)\,\tfrac12\bigl(1 + \cos(\pi e / E)\bigr)`, :math:`e = 0, \dots,
    E - 1` (``E = epochs``, :math:`\phi` = ``lr_final_fraction``): 1 at the first epoch, falling to :math:`\phi` at
    :math:`e = E` (the closed form of ``torch.optim.lr_scheduler.CosineAnnealingLR`` with ``T_max = E``,
    ``eta_min = phi * lr``). A callable is used as given; its values are checked when they are used.
    """
    if isinstance(lr_final_fraction, bool) or not isinstance(lr_final_fraction, int | float):
        raise TypeError(f"`lr_final_fraction` must be a number in [0, 1], got {type(lr_final_fraction).__name__}.")
    if not 0.0 <= lr_final_fraction <= 1.0:
        raise ValueError(f"`lr_final_fraction` must lie in [0, 1], got {lr_final_fraction}.")
    if lr_schedule is None or (isinstance(lr_schedule, str) and lr_schedule == "constant"):
        return None
    if isinstance(lr_schedule, str):
        if lr_schedule != "cosine":
            raise ValueError(
                f"Unknown `lr_schedule`={lr_schedule!r}; expected None, one of {_LR_SCHEDULES} or a "
                "callable epoch -> factor."
            )
        phi = float(lr_final_fraction)
        return lambda e: phi + (1.0 - phi) * 0.5 * (1.0 + math.cos(math.pi * e / epochs))
    if not callable(lr_schedule):
        raise TypeError(
            f"`lr_schedule` must be None, one of {_LR_SCHEDULES} or a callable epoch -> factor, got "
            f"{type(lr_schedule).__name__}."
        )
    return lr_schedule


def _run_adam(
    module: nn.Module,
    step_loss: Callable[[Any], Tensor],
    batches: Callable[[], Iterable[Any]],
    params: dict[str, Tensor],
    bounds: dict[str, tuple[Any, Any]],
    lr: float,
    epochs: int,
    patience: int,
    rel_tol: float,
    bar: Any,
    lr_factor: Callable[[int], float] | None = None,
) -> _Attempt:
    out = _Attempt()
    tensors = list(params.values())
    clamps = []
    for n, t in params.items():
        lo, hi = bounds.get(n, (None, None))
        lo = None if lo is None or (not torch.is_tensor(lo) and not math.isfinite(lo)) else lo
        hi = None if hi is None or (not torch.is_tensor(hi) and not math.isfinite(hi)) else hi
        if lo is not None or hi is not None:
            clamps.append((t, lo, hi))
    opt = torch.optim.Adam(tensors, lr=lr)
    beta, ema, best_ema, stale = 0.9, 0.0, math.inf, 0
    best_loss, best_params = math.inf, [t.detach().clone() for t in tensors]
    module.train()
    for epoch in range(epochs):
        if lr_factor is not None:  # the learning rate of this epoch: lr * factor(epoch)
            factor = lr_factor(epoch)
            if isinstance(factor, bool) or not isinstance(factor, int | float | np.floating | np.integer):
                raise TypeError(f"`lr_schedule`({epoch}) must return a number, got {type(factor).__name__}.")
            if not (math.isfinite(factor) and factor >= 0):
                raise ValueError(f"`lr_schedule`({epoch}) returned {factor}; factors must be finite and >= 0.")
            for group in opt.param_groups:
                group["lr"] = lr * float(factor)
        total, count = 0.0, 0
        for batch in batches():
            opt.zero_grad(set_to_none=True)
            loss = step_loss(batch)
            loss.backward()
            value = float(loss.detach())
            if batch is None and value < best_loss:  # full batch: this loss belongs to the pre-step parameters
                best_loss, best_params = value, [t.detach().clone() for t in tensors]
            opt.step()
            with torch.no_grad():
                for t, lo, hi in clamps:
                    t.copy_(t.clamp(min=lo, max=hi))
            total += value
            count += 1
        epoch_loss = total / max(count, 1)
        if not math.isfinite(epoch_loss):
            raise FloatingPointError(f"the loss became {epoch_loss} at epoch {epoch}")
        if batch is not None and epoch_loss < best_loss:  # minibatches: keep the end-of-epoch parameters
            best_loss, best_params = epoch_loss, [t.detach().clone() for t in tensors]
        out.history.append(epoch_loss)
        bar.update(1)
        bar.set_postfix(loss=f"{epoch_loss:.5g}", refresh=False)
        # Early stopping on the bias-corrected exponential moving average of the epoch losses.
        ema = beta * ema + (1 - beta) * epoch_loss
        smoothed = ema / (1 - beta ** (epoch + 1))
        improved = not math.isfinite(best_ema) or smoothed < best_ema - rel_tol * max(abs(best_ema), 1e-12)
        if improved:
            best_ema, stale = smoothed, 0
        else:
            stale += 1
            if stale >= patience:
                out.converged = True
                break
    # Adam's last iterate can sit on a spike of the loss: return the best parameters seen.
    with torch.no_grad():
        for t, b in zip(tensors, best_params):
            t.copy_(b)
    out.loss = best_loss
    return out


# --------------------------------------------------------------------------------------------------------------
# the entry point


def fit(
    objective: MarginalLogLikelihood | Callable[..., Tensor],
    *,
    module: nn.Module | None = None,
    optimizer: str = "auto",
    restarts: int = 0,
    max_iter: int = 500,
    lr: float = 0.01,
    lr_schedule: str | Callable[[int], float] | None = None,
    lr_final_fraction: float = 0.0,
    data_loader: Iterable[Any] | None = None,
    epochs: int = 500,
    patience: int = 20,
    rel_tol: float = 1e-4,
    progress: bool | None = None,
    seed: int | None = None,
    max_jitter: float = 1e-4,
) -> FitResult:
    r"""Fit a GPyTorch model (or any module behind a loss) with restarts, jitter escalation and a progress bar.

    Args:
        objective: Either a GPyTorch ``MarginalLogLikelihood`` (exact, or approximate such as ``VariationalELBO``)
            whose negative is minimised, or a callable returning a scalar loss tensor: ``objective()`` without a
            ``data_loader``, ``objective(*batch)`` with one. A callable needs ``module``. For L-BFGS-B a
            callable may return a batch of independent losses (shape ``B``, every parameter ``B x ...``); each
            batch member then gets its own L-BFGS-B run, as the outputs of a batched MLL do.
        module: The ``nn.Module`` whose parameters ``requires_grad`` are trained. Defaults to ``objective`` for an
            MLL (its model and likelihood); required for a callable objective.
        optimizer: ``"auto"`` (L-BFGS-B for an exact MLL without ``data_loader``, Adam otherwise), ``"lbfgs"``
            (full batch only) or ``"adam"``.
        restarts: Number of extra attempts from random starting points (priors or :func:`random_reinitialize`).
        max_iter: Maximum number of L-BFGS-B iterations per attempt.
        lr: Adam learning rate (the peak rate when ``lr_schedule`` is set).
        lr_schedule: Learning-rate schedule of the Adam path, applied per epoch (the rate of epoch ``e`` is
            ``lr * factor(e)``, ``e = 0, ..., epochs - 1``, restarting with every attempt): ``None`` or
            ``"constant"`` (factor 1), ``"cosine"`` (factor :math:`\phi + (1 - \phi)(1 + \cos(\pi e /
            \text{epochs}))/2`, from 1 down towards ``lr_final_fraction`` :math:`\phi` over ``epochs``; early
            stopping may end it sooner), or a callable ``epoch -> factor`` returning a finite number >= 0.
            Not used by L-BFGS-B (an error if the optimiser is L-BFGS-B).
        lr_final_fraction: :math:`\phi \in [0, 1]` of the ``"cosine"`` schedule.
        data_loader: Optional iterable of minibatches ``(X, y)`` (e.g. a ``torch.utils.data.DataLoader``) for the
            Adam path; ``X`` is ``batch_shape x b x d`` and ``y`` is ``batch_shape x b``. An MLL is evaluated as
            ``-mll(mll.model(X), y)``; a callable as ``objective(X, y)``. Without it, each Adam epoch is one
            full-batch step on the model's training data.
        epochs: Maximum number of Adam epochs per attempt.
        patience: Adam stops when the smoothed loss has not improved by a relative ``rel_tol`` for this many
            consecutive epochs.
        rel_tol: Relative improvement that resets the patience counter.
        progress: A tqdm progress bar (attempt and loss): ``True``, ``False``, or ``None`` (the default: shown in a
            terminal or notebook, not in logs or tests; see :mod:`gpgeom._progress`).
        seed: Seed for the restarts' starting points and minibatch order; the caller's global random state is
            left untouched. ``None`` uses the global random state.
        max_jitter: The largest Cholesky jitter to escalate to before giving up.

    Returns:
        A :class:`FitResult`. The module holds the winning parameters and is in eval mode.

    Raises:
        gpgeom.errors.NotPSDError: When every attempt fails to factorise its covariance even with ``max_jitter``
            (or the covariance contains NaN); the message names the model, the jitter tried and the remedies.
        ValueError, TypeError: For invalid options.

    Example:
        >>> mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
        >>> result = fit(mll, restarts=3, seed=0, progress=False)
        >>> result.loss, result.best_attempt, result.jitter
    """
    check_option("optimizer", optimizer, _OPTIMIZERS)
    check_positive("restarts", restarts, integer=True, allow_zero=True)
    check_positive("max_iter", max_iter, integer=True)
    check_positive("lr", lr)
    check_positive("epochs", epochs, integer=True)
    check_positive("patience", patience, integer=True)
    check_positive("rel_tol", rel_tol, allow_zero=True)
    check_positive("max_jitter", max_jitter)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"`seed` must be an int or None, got {type(seed).__name__}.")
    lr_factor = _lr_factor_fn(lr_schedule, lr_final_fraction, epochs)

    is_mll = isinstance(objective, MarginalLogLikelihood)
    if not is_mll and not callable(objective):
        raise TypeError(
            "`objective` must be a gpytorch MarginalLogLikelihood or a callable returning a loss tensor, "
            f"got {type(objective).__name__}."
        )
    if module is None:
        if not is_mll:
            raise ValueError("A callable `objective` needs `module=`, the nn.Module whose parameters it trains.")
        module = objective
    if not isinstance(module, nn.Module):
        raise TypeError(f"`module` must be a torch.nn.Module, got {type(module).__name__}.")
    model = objective.model if is_mll else module

    if optimizer == "auto":
        optimizer = "lbfgs" if (_is_exact(objective) and data_loader is None) else "adam"
    if optimizer == "lbfgs" and data_loader is not None:
        raise ValueError("`optimizer='lbfgs'` is full-batch only; use optimizer='adam' with a `data_loader`.")
    if optimizer == "lbfgs" and lr_factor is not None:
        raise ValueError("`lr_schedule` applies to the Adam path only; pass optimizer='adam' or lr_schedule=None.")
    if is_mll and data_loader is None and not getattr(model, "train_inputs", None):
        raise ValueError(
            f"{type(model).__name__} has no `train_inputs`/`train_targets` for full-batch fitting; pass a "
            "`data_loader` yielding (X, y) minibatches."
        )
    all_params, bounds = get_parameters_and_bounds(module)
    params = {n: p for n, p in all_params.items() if p.requires_grad}
    if not params:
        raise ValueError(f"{type(module).__name__} has no parameter that requires grad; nothing to fit.")

    # the loss, full batch or on one minibatch
    def full_loss(batch_indices: Any = None) -> Tensor:
        # unsummed: an MLL of a batched model gives one loss per batch member (used by batched L-BFGS-B)
        if is_mll:
            return get_loss_closure(objective)()
        return objective() if batch_indices is None else objective(batch_indices=batch_indices)

    # a callable that can evaluate a subset of its batch members (see gpgeom.engine.exact_mll) keeps that ability
    full_loss.accepts_batch_indices = (not is_mll) and bool(getattr(objective, "accepts_batch_indices", False))

    def batch_loss(batch: Any) -> Tensor:
        if batch is None:
            return full_loss().sum()
        if is_mll:
            n_in = len(getattr(model, "train_inputs", None) or (None,))
            return -objective(model(*batch[:n_in]), *batch[n_in:]).sum()
        return objective(*batch)

    def batches() -> Iterable[Any]:
        return (None,) if data_loader is None else data_loader

    start = time.perf_counter()
    dtype = _model_dtype(module)
    levels = jitter_levels(dtype, max_jitter)
    level = 0
    initial_state = copy.deepcopy(module.state_dict())
    histories: list[list[float]] = []
    finals: list[float] = []
    failures: list[str] = []
    best: tuple[float, int, dict[str, Any], bool, float] | None = None
    members: _MemberBests | None = None
    name = type(model).__name__

    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    rng_ctx = torch.random.fork_rng(devices=cuda_devices) if seed is not None else contextlib.nullcontext()
    with rng_ctx:
        if seed is not None:
            torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        for attempt in range(restarts + 1):
            if attempt > 0:
                module.load_state_dict(initial_state)
                _reinitialize(model, generator if generator is not None else torch.default_generator)
            start_state = copy.deepcopy(module.state_dict())
            total = max_iter if optimizer == "lbfgs" else epochs
            result: _Attempt | None = None
            reason = ""
            while True:
                bar = progress_bar(
                    total=total,
                    desc=f"fit {name} attempt {attempt + 1}/{restarts + 1}",
                    progress=progress,
                    leave=False,
                )
                try:
                    with _jitter_context(levels[level]):
                        if optimizer == "lbfgs":
                            result = _run_lbfgs(module, full_loss, params, bounds, max_iter, bar)
                        else:
                            result = _run_adam(
                                module,
                                batch_loss,
                                batches,
                                params,
                                bounds,
                                lr,
                                epochs,
                                patience,
                                rel_tol,
                                bar,
                                lr_factor=lr_factor,
                            )
                    bar.set_postfix(loss=f"{result.loss:.5g}", refresh=True)
                    break
                except NanError as err:
                    reason = f"the covariance contains NaN ({err})"
                    break
                except FloatingPointError as err:
                    reason = str(err)
                    break
                except Exception as err:  # noqa: BLE001 - only Cholesky failures are retried
                    if not _is_cholesky_failure(err):
                        raise
                    if not is_mll and not isinstance(err, _LONotPSDError):
                        # a plain torch.linalg failure inside a callable loss: its factorisations do not read
                        # gpytorch.settings.cholesky_jitter, so more jitter cannot help; the attempt fails
                        reason = (
                            f"the loss raised {type(err).__name__} ({err}); it does not factorise through "
                            "linear_operator's psd_safe_cholesky, so no jitter was tried"
                        )
                        module.load_state_dict(start_state)
                        break
                    reason = f"Cholesky failed with jitter {levels[level]:.1e} ({err})"
                    module.load_state_dict(start_state)
                    if level + 1 >= len(levels):
                        break
                    level += 1
                finally:
                    bar.close()
            if result is None:
                histories.append([])
                finals.append(math.inf)
                failures.append(f"attempt {attempt}: {reason}")
                module.load_state_dict(start_state)
                continue
            histories.append(result.history)
            finals.append(result.loss)
            if not math.isfinite(result.loss):
                failures.append(f"attempt {attempt}: the loss was never finite (NaN or infinite covariance?)")
            if math.isfinite(result.loss) and (best is None or result.loss < best[0]):
                best = (result.loss, attempt, copy.deepcopy(module.state_dict()), result.converged, levels[level])
            if result.member_losses is not None:  # independent members: each keeps its own best attempt
                if members is None:
                    members = _MemberBests(result.member_losses, params, attempt, levels[level])
                else:
                    members.update(result.member_losses, params, attempt, levels[level])

    if best is None:
        module.load_state_dict(initial_state)
        module.eval()
        raise NotPSDError(
            f"Fitting {name} failed in all {restarts + 1} attempt(s): the covariance matrix could not be "
            f"factorised even with Cholesky jitter up to {levels[-1]:.1e} (tried "
            f"{', '.join(f'{j:.0e}' for j in levels[: level + 1])}; dtype {dtype}). Last failure: "
            f"{failures[-1] if failures else 'unknown'}. {_REMEDIES}"
        )
    module.load_state_dict(best[2])
    member_attempts = None
    if members is not None and np.all(np.isfinite(members.loss)) and float(members.loss.sum()) < best[0]:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(members.rows[n].reshape(p.shape))
        best = (float(members.loss.sum()), best[1], best[2], best[3], members.jitter)
        member_attempts = list(members.attempt)
    module.eval()
    return FitResult(
        member_attempts=member_attempts,
        loss=best[0],
        history=histories,
        attempts=restarts + 1,
        best_attempt=best[1],
        jitter=best[4],
        wall_time=time.perf_counter() - start,
        converged=best[3],
        optimizer=optimizer,
        final_losses=finals,
        failures=failures,
    )

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
  random state; attempt ``k`` is seeded from ``(seed, k)``, so it does not depend on the other attempts.
* **executors**: ``executor=`` runs the attempts as tasks of a ``concurrent.futures.Executor``, bitwise the serial
  result (:mod:`gpgeom.engine.attempts`, :mod:`gpgeom.engine.parallel`); ``split_members=True`` also splits the
  members of a batch of independent problems into tasks (the serial result to rounding).

The optimisers live in :mod:`gpgeom.engine.optimizers`, the attempts (jitter escalation, restarts, the executor
path) in :mod:`gpgeom.engine.attempts`; :func:`jitter_levels` and :func:`random_reinitialize` are re-exported here.

The loss is the optimiser's objective: for an MLL it is ``-mll(...)`` summed over batch dimensions (GPyTorch
divides the log likelihood by the number of data, and adds the log priors), so lower is better.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from botorch.optim.utils import get_parameters_and_bounds
from gpytorch.mlls import MarginalLogLikelihood, SumMarginalLogLikelihood
from gpytorch.models import ExactGP
from torch import Tensor, nn

from gpgeom._seeds import global_seed
from gpgeom._validation import check_option, check_positive
from gpgeom._warnings import user_stacklevel
from gpgeom.engine.attempts import (
    SHIPPED_CAUSE,
    FitJob,
    Outcome,
    jitter_levels,
    random_reinitialize,
    restore,
    run_attempt,
    run_attempts,
)
from gpgeom.engine.optimizers import MemberBests, lr_factor_fn
from gpgeom.engine.parallel import check_executor
from gpgeom.errors import ConvergenceWarning, LossNotFiniteError, NotPSDError

__all__ = ["FitResult", "fit", "random_reinitialize", "jitter_levels"]

_OPTIMIZERS = ("auto", "lbfgs", "adam")
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
        attempts: How many attempts ran (``restarts + 1``, fewer when the objective stopped the fit).
        best_attempt: The index (0-based) of the attempt whose state was loaded.
        jitter: The Cholesky jitter allowed in the winning attempt (``gpytorch.settings.cholesky_jitter``; the
            dtype's default unless it had to be escalated); when each output keeps its own best attempt, the
            largest jitter of any attempt (an upper bound on the kept attempts').
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
        stopped: Whether the objective ended the fit by raising ``StopIteration`` (e.g. from a model's ``callback``):
            the attempt it ended is the last one run (``attempts`` counts those that ran), kept as a completed one
            (``converged`` False for it).
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
    stopped: bool = False


# --------------------------------------------------------------------------------------------------------------
# helpers (jitter levels, restarts and the attempts: gpgeom.engine.attempts; the optimisers: gpgeom.engine.optimizers)


def _model_dtype(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    for b in module.buffers():
        if b.is_floating_point():
            return b.dtype
    return torch.get_default_dtype()


def _put_back(module: nn.Module, state: dict[str, Any], modes: list[tuple[nn.Module, bool]]) -> None:
    r"""Before :func:`fit` raises: the module's parameters and buffers as in ``state``, and every submodule's
    train/eval mode as in ``modes``."""
    restore(module, state)
    for m, mode in modes:
        m.training = mode


def _is_exact(objective: object) -> bool:
    if isinstance(objective, SumMarginalLogLikelihood):
        return all(isinstance(sub, ExactGP) for sub in getattr(objective.model, "models", ()))
    return isinstance(objective, MarginalLogLikelihood) and isinstance(objective.model, ExactGP)


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
    executor: Executor | None = None,
    split_members: bool = False,
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
        data_loader: Optional re-iterable of minibatches ``(X, y)`` (a list, a ``torch.utils.data.DataLoader``;
            it is read once per epoch, so not a generator), at least one per epoch, for the
            Adam path; ``X`` is ``batch_shape x b x d`` and ``y`` is ``batch_shape x b``. An MLL is evaluated as
            ``-mll(mll.model(X), y)``; a callable as ``objective(X, y)``. Without it, each Adam epoch is one
            full-batch step on the model's training data. A loader that shuffles from a stream of its own is
            reseeded at the start of every attempt from ``(seed, k)`` (``derive_seed(seed, k, 1)``): one with a
            ``reseed(seed)`` method (:class:`gpgeom.botorch.low_rank.Minibatches`) through it, a ``DataLoader``
            with a ``generator`` by seeding that generator in place; a ``DataLoader`` without one shuffles from
            torch's global generator, which the attempt seeds (:mod:`gpgeom.engine.attempts`, *Seeds*).
        epochs: Maximum number of Adam epochs per attempt.
        patience: Adam stops when the smoothed loss has not improved by a relative ``rel_tol`` for this many
            consecutive epochs.
        rel_tol: Relative improvement that resets the patience counter.
        progress: A tqdm progress bar (attempt and loss): ``True``, ``False``, or ``None`` (the default: shown in a
            terminal or notebook, not in logs or tests; see :mod:`gpgeom._progress`).
        seed: Seed for the restarts' starting points and minibatch order, attempt ``k`` seeded from ``(seed, k)``
            (:func:`gpgeom.engine.parallel.derive_seed`); the caller's global random state is left untouched.
            ``None`` uses the global random state (with an executor: one draw of it seeds the attempts; serially,
            a loader with its own stream gets one draw of it per attempt).
        max_jitter: The largest Cholesky jitter to escalate to before giving up (every attempt starts from the
            dtype's default).
        executor: Run the attempts as tasks of a ``concurrent.futures.Executor`` (Dask's ``Client.get_executor()``,
            a ``ProcessPoolExecutor``, ...; :mod:`gpgeom.engine.attempts`, :mod:`gpgeom.engine.parallel`): the job
            (objective, module, data loader) is pickled once (cloudpickle) and shipped once per worker, every task
            runs on a fresh copy of it, and the result is bitwise the serial run's (the same attempts, best loss,
            parameters and history). An attempt stopped by the objective (``StopIteration``), or one that raises,
            ends the fit as serially: the tasks of the later attempts are cancelled, and those already running in
            threads of this process or in a ``ProcessPoolExecutor`` stop at their next evaluation of the loss
            (on Dask workers they run to their end; :mod:`gpgeom.engine.parallel`, *Cancellation*). ``None``:
            serial.
        split_members: With an ``executor``, for a batch of independent problems whose loss evaluates a subset of
            members (separate hyperparameters per output, L-BFGS-B), also split every attempt into groups of
            members when there are fewer attempts than 3 tasks per worker. The members follow the serial iterates
            but are evaluated in other batches, so the result agrees with the serial one to rounding (carried along
            by L-BFGS-B up to its stopping tolerance: measured attempt losses within 1e-8 relative on 35 outputs),
            not bitwise.

    Returns:
        A :class:`FitResult`. The module holds the winning parameters and is in eval mode.

    Raises:
        gpgeom.errors.NotPSDError: When every attempt fails to factorise its covariance even with ``max_jitter``
            (or the covariance contains NaN); the message names the model, the jitter tried and the remedies.
        gpgeom.errors.LossNotFiniteError: A callable ``objective`` returned NaN or an infinite loss (or a NaN
            gradient) in every attempt: at an Adam step (caught before the step), or at the L-BFGS-B starting point.
            The message names the callable (name, file, line), the value and the epoch / minibatch or evaluation.
            A later L-BFGS-B trial point that is not finite counts as an infinite loss (the line search
            backtracks); a run that stops on one warns (:class:`~gpgeom.errors.ConvergenceWarning`) and reports
            ``converged=False``. An exception raised by the callable propagates with notes naming the step.
        ValueError: When every attempt failed and a model with a ``_diagnose_nonfinite`` hook
            (:class:`~gpgeom.botorch.ExactGPModel`) named the user's module that returned NaN or inf in one of them
            (:meth:`gpgeom.engine.attempts.FitJob.diagnose`): the first such error, chained to the optimiser's
            error. An attempt that fails this way while another succeeds is only recorded, with that message, in
            ``FitResult.failures``.
        ValueError, TypeError: For invalid options.

    A fit that raises (any exception, ``KeyboardInterrupt`` included) leaves ``module``'s parameters, buffers and
    train/eval modes as they were before the call. To stop early and keep the fit, raise ``StopIteration`` from the
    objective (e.g. from a callback it calls), at any evaluation: the attempt ends there as a completed one, with
    the best parameters it evaluated, and no further attempt starts (serially; :mod:`gpgeom.engine.optimizers`
    says which evaluation counts); ``FitResult.stopped`` is True. When it stops before any finite loss was
    evaluated (at its first evaluation; L-BFGS-B's second, the first with gradients), the attempt keeps its
    starting parameters exactly, and its loss is the loss there, evaluated without gradients (L-BFGS-B's first
    evaluation, or one more evaluation; ``inf`` when that raises too). With a ``data_loader`` the full loss is not
    evaluated (the minibatches may be there because the full data does not fit in memory): a stop at the first
    minibatch, before any step, keeps the start with ``loss = inf``. Such a fit never raises ``NotPSDError`` for it.

    Example:
        >>> import torch
        >>> from botorch.models import SingleTaskGP
        >>> from gpytorch.mlls import ExactMarginalLogLikelihood
        >>> from gpgeom.engine.fitting import fit
        >>> x = torch.linspace(0, 1, 30, dtype=torch.float64)[:, None]
        >>> model = SingleTaskGP(x, torch.sin(6 * x))
        >>> mll = ExactMarginalLogLikelihood(model.likelihood, model)
        >>> result = fit(mll, restarts=3, seed=0, progress=False)  # the best of 4 L-BFGS-B runs
        >>> result.converged, result.loss < 0  # the loss: negative log marginal likelihood per observation
        (True, True)
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
    lr_factor = lr_factor_fn(lr_schedule, lr_final_fraction, epochs)

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
    if data_loader is not None and iter(data_loader) is data_loader:
        # a generator or other one-shot iterator is exhausted after the first epoch: every later epoch would
        # see no minibatch at all
        raise TypeError(
            "`data_loader` must be re-iterable (a list of (X, y) minibatches or a torch DataLoader): it is read "
            f"once per epoch, but got a one-shot iterator ({type(data_loader).__name__}) that is exhausted "
            "after the first epoch."
        )
    if is_mll and data_loader is None and not getattr(model, "train_inputs", None):
        raise ValueError(
            f"{type(model).__name__} has no `train_inputs`/`train_targets` for full-batch fitting; pass a "
            "`data_loader` yielding (X, y) minibatches."
        )
    check_executor(executor)
    if not isinstance(split_members, bool):
        raise TypeError(f"`split_members` must be a bool, got {type(split_members).__name__}.")
    params = {n: p for n, p in get_parameters_and_bounds(module)[0].items() if p.requires_grad}
    if not params:
        raise ValueError(f"{type(module).__name__} has no parameter that requires grad; nothing to fit.")

    start = time.perf_counter()
    dtype = _model_dtype(module)
    levels = jitter_levels(dtype, max_jitter)
    name = type(model).__name__
    n_attempts = restarts + 1
    # with an executor and no seed, one draw of the caller's random stream seeds every attempt
    base_seed = global_seed() if seed is None and executor is not None else seed
    opts = {
        "optimizer": optimizer, "max_iter": max_iter, "lr": lr, "lr_factor": lr_factor, "epochs": epochs,
        "patience": patience, "rel_tol": rel_tol, "levels": levels, "seed": base_seed, "restarts": restarts,
        "progress": False if executor is not None else progress,
    }  # fmt: skip
    job = FitJob(objective, module, data_loader, opts)
    histories, finals, failures = [], [], []  # type: ignore[var-annotated]
    named: list[ValueError] = []  # the errors naming a user's module that returned NaN or inf, by attempt
    best: tuple[float, int, dict[str, Any], bool, float] | None = None
    stopped_nonfinite: dict[int, str] = {}  # attempt -> how its L-BFGS-B run stopped on a non-finite trial point
    members: MemberBests | None = None
    top_level = 0

    def reduce(out: Outcome) -> None:
        nonlocal best, members, top_level
        attempt, result, level, reason, error = out
        jit, top_level = levels[level], max(top_level, level)
        histories.append(result.history if result is not None else [])
        finals.append(result.loss if result is not None else math.inf)
        if result is None:
            failures.append(f"attempt {attempt}: {reason}")
            if error is not None:
                named.append(error)
            return
        if not math.isfinite(result.loss) and not result.stopped:
            failures.append(f"attempt {attempt}: {job.source()} was never finite (NaN or infinite covariance?)")
        if result.nonfinite is not None:
            stopped_nonfinite[attempt] = result.nonfinite
        # a stopped attempt is kept even when no finite loss was evaluated (its start, with the loss there)
        usable = math.isfinite(result.loss) or (result.stopped and best is None)
        if usable and (best is None or result.loss < best[0]):
            state = result.state if result.state is not None else copy.deepcopy(module.state_dict())
            best = (result.loss, attempt, state, result.converged, jit)
        if result.member_losses is not None:  # independent members: each keeps its own best attempt
            rows = result.rows if result.rows is not None else params
            if members is None:
                members = MemberBests(result.member_losses, rows, attempt, jit)
            else:
                members.update(result.member_losses, rows, attempt, jit)

    modes = [(m, m.training) for m in module.modules()]
    try:  # any raise (an attempt's, every attempt failed, a warning as an error): the module as it was
        outcomes = run_attempts(job, n_attempts, executor, progress, split_members) if executor is not None else None
        if outcomes is None and executor is not None:  # a single task: in this process
            job.opts["progress"] = progress
        stopped = False
        for attempt in range(n_attempts):
            # serially: in this process, on the module itself, each attempt after the previous one's outcome
            out = outcomes[attempt] if outcomes is not None else run_attempt(job, attempt, on_copy=False)
            reduce(out)
            if out[1] is not None and out[1].stopped:  # StopIteration from the objective: no further attempt
                stopped = True
                break

        if best is None:  # every attempt failed: the fit raises
            if named:  # a user's module returned NaN or inf (the first attempt it made fail), chained to the error
                cause = named[0].__cause__ or named[0].__dict__.pop(SHIPPED_CAUSE, None)
                raise named[0] from cause
            returned = f": {job.source()} returned"
            if not is_mll and failures and all(returned in f for f in failures):
                raise LossNotFiniteError(
                    f"Fitting {name} failed in all {restarts + 1} attempt(s): `objective` must return a finite loss "
                    f"with a finite gradient. Last failure: {failures[-1]}. It was caught where the callable returned "
                    "it, before any optimiser step used it: look in the callable for a log or square root of a "
                    "non-positive number, 0/0, inf - inf or an overflow (torch.autograd.set_detect_anomaly(True) "
                    "names the operation that makes a NaN gradient)."
                )
            raise NotPSDError(
                f"Fitting {name} failed in all {restarts + 1} attempt(s): the covariance matrix could not be "
                f"factorised even with Cholesky jitter up to {levels[-1]:.1e} (tried "
                f"{', '.join(f'{j:.0e}' for j in levels[: top_level + 1])}; dtype {dtype}). Last failure: "
                f"{failures[-1] if failures else 'unknown'}. {_REMEDIES}"
            )
        restore(module, best[2])
        member_attempts = None
        if members is not None and np.all(np.isfinite(members.loss)) and float(members.loss.sum()) < best[0]:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(members.rows[n].reshape(p.shape))
            best = (float(members.loss.sum()), best[1], best[2], best[3], members.jitter)
            member_attempts = list(members.attempt)
        module.eval()
        if best[1] in stopped_nonfinite:
            warnings.warn(  # an error under -W error: put back as any raise
                f"Fitting {name}: {job.source()} {stopped_nonfinite[best[1]]} (attempt {best[1]}); the parameters "
                f"are those of its best finite evaluation (loss {best[0]:.6g}), not a converged optimum "
                "(FitResult.converged is False).",
                ConvergenceWarning,
                stacklevel=user_stacklevel(),
            )
    except BaseException:
        _put_back(module, job.initial, modes)
        raise
    return FitResult(
        member_attempts=member_attempts, loss=best[0], history=histories, attempts=len(histories), best_attempt=best[1],
        jitter=best[4], wall_time=time.perf_counter() - start, converged=best[3], optimizer=optimizer,
        final_losses=finals, failures=failures, stopped=stopped,
    )  # fmt: skip

r"""The attempts of :func:`gpgeom.engine.fitting.fit` (internal to the engine): jitter levels, restarts' random
starting points, one attempt with jitter escalation, and the executor path that runs attempts (and, for a batch of
independent problems, groups of their members) as tasks of a ``concurrent.futures.Executor``.

**Seeds.** Attempt ``k`` of a fit seeded with ``s`` draws its starting point from a generator seeded with
:func:`gpgeom.engine.parallel.derive_seed` ``(s, k)``: it does not depend on the other attempts, so an attempt is
the same in this process and in any worker. The same holds for the minibatch order: at the start of every try of
an attempt (:func:`reseed_loader`), a data loader with a ``reseed(seed)`` method (as
:class:`gpgeom.botorch.low_rank.Minibatches`) gets ``derive_seed(s, k, 1)``, and a ``torch.utils.data.DataLoader``
with its own ``generator`` has that generator seeded with it (one that shuffles from torch's global generator
draws from the attempt's seeded stream). Without this, a loader that keeps its own generator went on from where
the previous attempt left it in a serial run (after a data-dependent number of epochs), while every task of the
executor path starts from a pickled copy in its initial state. With ``seed=None`` (serial), the loader's seed is
one draw of torch's global generator per attempt.

**Tasks** (:func:`plan_tasks`). Each attempt is a task, and the result is bitwise the serial one. On request
(``fit(..., split_members=True)``), when the loss is a batch of independent problems that can evaluate a subset of
its members (``accepts_batch_indices``, e.g. :func:`gpgeom.engine.exact_mll.exact_mll_loss` of a GP with separate
hyperparameters per output) and there are fewer attempts than the executor can keep busy, an attempt is split
into groups of members (member ``i`` in group ``i mod g``), each group a task that runs the
batched L-BFGS-B on its members only (:func:`gpgeom.engine.optimizers.run_lbfgs`). The batched L-BFGS-B advances
its members in lockstep, each with its own L-BFGS-B state, so a member follows the same iterates in a group as in
the whole batch; :func:`merge_members` reassembles the attempt (member losses, parameters, the state, and the
history from the groups' per-evaluation traces, summed in member order as the serial run sums them). This agrees
with the serial run to rounding, not bitwise: a member's loss is evaluated in a batch of other members (those of
its group still iterating rather than all members still iterating), and the batched kernels of
:func:`~gpgeom.engine.exact_mll.stationary_nll` round differently for different batches; L-BFGS-B then carries
these last-digit differences along its iterates, up to its stopping tolerance in flat directions (measured: attempt
losses within 1e-11 relative and raw parameters within 3e-9 on 2 and 6 outputs; losses within 1e-8 on MMGP's 35
outputs at n = 200, ``benchmarks/scaling.py``). And a Cholesky failure
escalates the jitter of the group that failed, where the serial run escalates the whole attempt (the attempt's
``jitter`` is then the largest level used). Hence opt-in.

**Shipping.** The :class:`FitJob` (objective, module, data loader, options) is pickled once (cloudpickle, which
handles a loss closure around its model) and shipped once per worker by :func:`gpgeom.engine.parallel.map_items`;
every task unpickles its own fresh copy (the optimiser changes the module in place) and sends back only its
:class:`~gpgeom.engine.optimizers.Attempt` (final state dict, member rows, history).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import math
import pickle
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from typing import Any

import gpytorch
import numpy as np
import torch
from botorch.optim.closures import get_loss_closure
from botorch.optim.utils import get_parameters_and_bounds, sample_all_priors
from gpytorch.mlls import ExactMarginalLogLikelihood, MarginalLogLikelihood
from linear_operator.utils.errors import NanError
from linear_operator.utils.errors import NotPSDError as _LONotPSDError
from torch import Tensor, nn
from torch.utils.data import DataLoader

from gpgeom._progress import progress_bar
from gpgeom._seeds import global_seed
from gpgeom._warnings import quiet
from gpgeom.engine.distributed import raised_on_every_rank
from gpgeom.engine.exact_mll import explicit_jitter
from gpgeom.engine.optimizers import STEP_NOTE as _STEP_NOTE
from gpgeom.engine.optimizers import Attempt, batch_members, run_adam, run_lbfgs
from gpgeom.engine.parallel import _state_lock, check_needed, derive_seed, dumps, executor_workers, loads, map_items
from gpgeom.errors import NotPSDError

__all__ = [
    "FitJob",
    "Outcome",
    "is_cholesky_failure",
    "jitter_context",
    "jitter_levels",
    "merge_members",
    "plan_tasks",
    "has_own_stream",
    "random_reinitialize",
    "reinitialize",
    "reseed_loader",
    "restore",
    "run_attempt",
    "run_attempts",
]

#: The key under which a worker's named error (Outcome's last entry) carries its cause back (pickle drops
#: ``__cause__``); :func:`gpgeom.engine.fitting.fit` chains it again.
SHIPPED_CAUSE = "_gpgeom_cause"

#: Tasks per worker that the member groups of the executor path aim at (uneven members balance better).
_TASKS_PER_WORKER = 3


# --------------------------------------------------------------------------------------------------------------
# jitter and restarts


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


_NULL = contextlib.nullcontext()


@contextlib.contextmanager
def jitter_context(jitter: float, settings: bool = True) -> Iterator[None]:
    r"""One try per factorisation at exactly this jitter: psd_safe_cholesky first tries the matrix as it is and
    adds ``jitter`` only when that fails, so an unneeded jitter does not change any result. The loss of
    :func:`~gpgeom.engine.exact_mll.exact_mll_loss` takes it from :func:`~gpgeom.engine.exact_mll.explicit_jitter`
    (this thread's); other losses (``settings``) from GPyTorch's process-wide settings, which a fit in another
    thread at the same time sees and may leave set. The warning of the added jitter is silenced in this thread."""
    with (
        explicit_jitter(jitter),
        gpytorch.settings.cholesky_jitter(float_value=jitter, double_value=jitter) if settings else _NULL,
        gpytorch.settings.cholesky_max_tries(1) if settings else _NULL,
        quiet("A not p.d., added jitter"),  # this thread's only (gpgeom._warnings)
    ):
        yield


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
        generator: Optional random generator (on any device: the draws are made on its device, then moved to the
            parameters'); torch's global CPU generator otherwise.

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
            draw_on = generator.device if generator is not None else None  # a CUDA generator draws on CUDA
            u = torch.rand(raw.shape, generator=generator, dtype=raw.dtype, device=draw_on).to(raw.device) * 2.0 - 1.0
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


def reinitialize(module: nn.Module, generator: torch.Generator) -> None:
    if _has_priors(module):
        sample_all_priors(module)
    else:
        random_reinitialize(module, generator)


def is_cholesky_failure(err: BaseException) -> bool:
    return isinstance(err, _LONotPSDError | torch.linalg.LinAlgError) and not isinstance(err, NotPSDError)


# --------------------------------------------------------------------------------------------------------------
# one attempt, in this process or in a worker


def describe_callable(fn: Any) -> str:
    r"""``name (file:line)`` of a function, lambda, ``functools.partial`` or callable object, for messages."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    fn = inspect.unwrap(fn)
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    code = getattr(fn, "__code__", None)
    if code is None and not isinstance(fn, type):  # a callable object: its class's __call__
        code = getattr(vars(type(fn)).get("__call__"), "__code__", None)
    return f"{name} ({code.co_filename}:{code.co_firstlineno})" if code is not None else name


def restore(module: nn.Module, state: dict[str, Any]) -> None:
    r"""Copy a state dict's parameters and buffers back (``torch.nn.Module.load_state_dict``: BoTorch's override
    would also re-standardise the training targets, which moves them by an ulp at every call)."""
    nn.Module.load_state_dict(module, state)


class FitJob:
    r"""What an attempt needs: the objective and module (with its data loader and starting state), the options
    (``optimizer``, ``max_iter``, ``lr``, ``lr_factor``, ``epochs``, ``patience``, ``rel_tol``, ``levels``,
    ``seed``, ``restarts``, ``progress``). The executor path pickles it once and ships it once per worker."""

    def __init__(self, objective: Any, module: nn.Module, data_loader: Any, opts: dict[str, Any]) -> None:
        self.objective, self.module, self.data_loader, self.opts = objective, module, data_loader, opts
        self.initial = copy.deepcopy(module.state_dict())
        self.is_mll = isinstance(objective, MarginalLogLikelihood)
        self.model = objective.model if self.is_mll else module
        #: whether the loss reads no GPyTorch setting and draws no random number (``thread_isolated``, as
        #: :func:`~gpgeom.engine.exact_mll.exact_mll_loss`): its attempts then set no process-wide state while
        #: they optimise (:func:`run_attempt`)
        self.isolated = bool(getattr(objective, "thread_isolated", False))

    def source(self) -> str:
        r"""What computes the loss, for messages: the MLL of the model, or the callable ``objective`` with its
        name, file and line (``functools.partial`` and decorated functions unwrapped)."""
        if self.is_mll:
            return f"the negative {type(self.objective).__name__} of {type(self.model).__name__}"
        return f"the `objective` callable {describe_callable(self.objective)}"

    def losses(self) -> tuple[Callable[..., Tensor], Callable[[Any], Tensor], Callable[[], Iterable[Any]]]:
        r"""``(full_loss, batch_loss, batches)`` of the objective (full batch or one minibatch)."""
        objective, model, is_mll, data_loader = self.objective, self.model, self.is_mll, self.data_loader
        source = self.source()

        def checked(loss: object) -> Tensor:
            # a number or a numpy array carries no gradient; said here, not as an AttributeError of the optimiser
            if not isinstance(loss, Tensor):
                raise TypeError(
                    f"{source} must return the loss as a torch.Tensor (a scalar, or a batch of independent losses "
                    f"for L-BFGS-B) computed from the module's parameters, got {type(loss).__name__}."
                )
            return loss

        def mll_loss() -> Tensor:
            # BoTorch's closure applies a BoTorch model's input transforms; a plain GPyTorch model has none (and no
            # ``transform_inputs``), so its MLL is evaluated directly on its training data
            if hasattr(model, "transform_inputs"):
                return get_loss_closure(objective)()
            inputs, targets = model.train_inputs, model.train_targets  # present: fit() checks that without a loader
            if isinstance(objective, ExactMarginalLogLikelihood):  # the likelihood gets the inputs (e.g. FixedNoise)
                return -objective(model(*inputs), targets, *inputs)
            return -objective(model(*inputs), targets)

        def full_loss(batch_indices: Any = None) -> Tensor:
            # unsummed: an MLL of a batched model gives one loss per batch member (used by batched L-BFGS-B)
            check_needed()  # a task whose result the fit no longer needs stops here (gpgeom.engine.parallel)
            if is_mll:
                return mll_loss()
            return checked(objective() if batch_indices is None else objective(batch_indices=batch_indices))

        # a callable that can evaluate a subset of its batch members (see gpgeom.engine.exact_mll) keeps that ability
        full_loss.accepts_batch_indices = (not is_mll) and bool(getattr(objective, "accepts_batch_indices", False))

        def batch_loss(batch: Any) -> Tensor:
            if batch is None:
                return full_loss().sum()  # full_loss checks
            check_needed()
            if is_mll:
                n_in = len(getattr(model, "train_inputs", None) or (None,))
                return -objective(model(*batch[:n_in]), *batch[n_in:]).sum()
            return checked(objective(*batch))

        def batches() -> Iterable[Any]:
            return (None,) if data_loader is None else data_loader

        return full_loss, batch_loss, batches

    def diagnose(self, err: BaseException, attempt: int) -> ValueError | None:
        r"""What made attempt ``attempt`` fail with ``err`` (a NaN covariance, a non-finite loss, a failed Cholesky
        factorisation), named by the model at the parameters where it failed: a model with a
        ``_diagnose_nonfinite(step)`` method (:class:`~gpgeom.botorch.ExactGPModel`: its user's kernel, mean and
        likelihood) evaluates its parts there once and raises a ``ValueError`` naming the one that returned NaN or
        inf; that error is returned, chained to ``err`` (:func:`run_attempt` records it as the attempt's failure,
        and :func:`~gpgeom.engine.fitting.fit` raises it when every attempt failed). ``None`` when the model has no
        such hook or all its parts are finite there: the attempt fails (or is retried) as before."""
        hook = getattr(self.model, "_diagnose_nonfinite", None)
        if hook is None:
            return None
        notes = [n for n in getattr(err, "__notes__", ()) if n.startswith(_STEP_NOTE)]
        if notes:
            step = notes[-1][len(_STEP_NOTE) :].rstrip(".")
        else:  # the optimisers' FloatingPointError says "... at <step>"
            head, sep, tail = str(err).rpartition(" at ")
            step = tail if sep else "an evaluation of the loss"
        try:
            hook(f"attempt {attempt}, {step}")
        except ValueError as exc:
            exc.__cause__ = err
            return exc
        return None

    def parameters(self) -> tuple[dict[str, Tensor], dict[str, tuple[Any, Any]]]:
        r"""The trainable parameters by name and the bounds of all parameters (GPyTorch constraints)."""
        all_params, bounds = get_parameters_and_bounds(self.module)
        return {n: p for n, p in all_params.items() if p.requires_grad}, bounds

    def members(self) -> int | None:
        r"""The number of independent members an attempt can be split into (L-BFGS-B on a loss that evaluates a
        subset of a batch of independent problems), or ``None``. Evaluates the loss once at the starting point;
        a ``StopIteration`` it raises propagates (the fit is asked to stop there, :func:`run_attempts`)."""
        full_loss = self.losses()[0]
        if self.opts["optimizer"] != "lbfgs" or not full_loss.accepts_batch_indices:
            return None
        params, bounds = self.parameters()
        training = self.module.training
        try:
            self.module.train()
            with torch.no_grad(), jitter_context(self.opts["levels"][0], not self.isolated):
                probe = full_loss()
        except StopIteration:  # the objective asked to end the fit here: the caller (run_attempts) stops
            raise
        except Exception:  # noqa: BLE001 - a failing start is handled (and reported) by the attempts themselves
            return None
        finally:
            self.module.train(training)
        return batch_members(probe, params, bounds)[0]


def has_own_stream(data_loader: Any) -> bool:
    r"""Whether ``data_loader`` shuffles from a random stream of its own that :func:`reseed_loader` sets: it has a
    callable ``reseed``, or it is a ``torch.utils.data.DataLoader`` with a ``generator``."""
    if callable(getattr(data_loader, "reseed", None)):
        return True
    return isinstance(data_loader, DataLoader) and data_loader.generator is not None


def reseed_loader(data_loader: Any, seed: int | None) -> None:
    r"""Start the random stream of ``data_loader`` (its shuffles) from ``seed`` (:func:`has_own_stream`), so that an
    attempt's minibatch order is a function of the fit's seed and the attempt's index only: ``reseed(seed)`` when the
    loader has it, else the ``generator`` of a ``torch.utils.data.DataLoader`` seeded in place (its sampler draws
    from it). Nothing for other loaders (a list, a DataLoader shuffling from torch's global generator, which the
    attempt seeds) or ``seed=None``."""
    if seed is None or not has_own_stream(data_loader):
        return
    if callable(getattr(data_loader, "reseed", None)):
        data_loader.reseed(seed)
    else:
        data_loader.generator.manual_seed(seed)


#: ``(attempt, result or None when it failed, jitter level reached, failure reason, the ValueError naming the
#: user's module that returned NaN or inf when that made it fail (FitJob.diagnose), else None)``.
Outcome = tuple[int, Attempt | None, int, str, ValueError | None]


def _stopped_at_start(
    result: Attempt,
    module: nn.Module,
    start_state: dict[str, Any],
    full_loss: Callable[..., Tensor],
    members: np.ndarray | None,
    evaluate: bool = True,
) -> None:
    r"""An attempt that ``StopIteration`` ended before any finite loss was evaluated (at its first evaluation, or
    its first Adam step's): its parameters are put back to the attempt's start exactly, and its loss is the loss
    there, evaluated once under ``torch.no_grad()`` when it can be (``inf`` when that raises, ``StopIteration``
    included, or is not finite). ``evaluate=False`` (Adam on the minibatches of a data loader, which may have been
    chosen because the full data does not fit in memory): the full loss is not evaluated, and the loss stays what
    the run found (``inf``: stopped at its first minibatch, before any step)."""
    if result.member_losses is not None and bool(np.isfinite(result.member_losses).any()):
        return
    if result.member_losses is None and math.isfinite(result.loss):
        return
    restore(module, start_state)
    if not evaluate:
        return
    try:
        with torch.no_grad():
            value = full_loss()
    except (Exception, StopIteration):  # noqa: BLE001 - the fit was asked to stop; its loss is then unknown
        return
    if not isinstance(value, Tensor):
        return
    values = value.detach().double().cpu().reshape(-1).numpy()
    if result.member_losses is not None and values.size > 1:
        mine = values if members is None else values[np.asarray(members, dtype=np.int64)]
        if mine.size == result.member_losses.size:
            result.member_losses = np.where(np.isfinite(mine), mine, np.inf)
            result.loss = float(result.member_losses.sum())
        return
    total = float(values.sum())
    result.loss = total if math.isfinite(total) else math.inf


def run_attempt(job: FitJob, attempt: int, on_copy: bool, members: np.ndarray | None = None) -> Outcome:
    r"""Attempt ``attempt`` of ``job``: from the starting parameters (attempt 0) or a random draw seeded from the
    base seed and the attempt's index (:func:`gpgeom.engine.parallel.derive_seed`), with the jitter escalated from
    the dtype's default. ``on_copy``: ``job`` is a copy; the final state (and the member rows) go into the result.
    ``members``: optimise only these members of a batch of independent problems (L-BFGS-B)."""
    o = job.opts
    module, model = job.module, job.model
    full_loss, batch_loss, batches = job.losses()
    params, bounds = job.parameters()
    seed = None if o["seed"] is None else derive_seed(o["seed"], attempt)
    loader_seed = None if o["seed"] is None else derive_seed(o["seed"], attempt, 1)
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    level, result, reason, named = 0, None, "", None

    def seeded() -> contextlib.AbstractContextManager[Any]:
        return torch.random.fork_rng(devices=cuda) if seed is not None else contextlib.nullcontext()

    # A loss that draws nothing (job.isolated) needs torch's seeded global stream only for the restart's draw: the
    # stream is the process's, so that draw holds the engine's state lock and the optimisation runs outside it (fits
    # in threads neither draw from nor leave behind each other's seeded streams). Any other loss may draw at every
    # evaluation: its whole attempt runs in the seeded stream. Attempt 0 of such a loss draws nothing at all: it takes
    # neither the lock nor the stream (while a thread-pool attempt of another fit held the lock, a fit without restarts
    # waited for it: 2.8 s beside a 3 s attempt, 0.07 s alone).
    isolated = job.isolated and job.data_loader is None
    draw = isolated and attempt > 0
    with contextlib.nullcontext() if isolated else seeded():
        with _state_lock if draw else contextlib.nullcontext(), seeded() if draw else contextlib.nullcontext():
            if seed is not None and (draw or not isolated):
                torch.manual_seed(seed)
            if attempt > 0:
                restore(module, job.initial)
                generator = torch.Generator().manual_seed(seed) if seed is not None else torch.default_generator
                reinitialize(model, generator)
        start_state = copy.deepcopy(module.state_dict())
        if loader_seed is None and has_own_stream(job.data_loader):
            loader_seed = global_seed()  # seed=None: one draw of torch's global stream
        total = o["max_iter"] if o["optimizer"] == "lbfgs" else o["epochs"]
        desc = f"fit {type(model).__name__} attempt {attempt + 1}/{o['restarts'] + 1}"
        while True:
            bar = progress_bar(total=total, desc=desc, progress=o["progress"], leave=False)
            reseed_loader(job.data_loader, loader_seed)  # every try (jitter escalation too) sees the same order
            try:
                with jitter_context(o["levels"][level], not job.isolated):
                    if o["optimizer"] == "lbfgs":
                        result = run_lbfgs(module, full_loss, params, bounds, o["max_iter"], bar, members=members)
                    else:
                        result = run_adam(
                            module, batch_loss, batches, params, bounds, o["lr"], o["epochs"], o["patience"],
                            o["rel_tol"], bar, lr_factor=o["lr_factor"],
                        )  # fmt: skip
                bar.set_postfix(loss=f"{result.loss:.5g}", refresh=True)
                break
            except NanError as err:
                if raised_on_every_rank(err):  # under torchrun: every rank left the fit (no rank goes on alone)
                    raise
                named = job.diagnose(err, attempt)
                reason = str(named) if named is not None else f"the covariance contains NaN ({err})"
                break
            except FloatingPointError as err:  # the loss (or its gradient) was not finite where the optimiser says
                if raised_on_every_rank(err):  # under torchrun: every rank left the fit (no rank goes on alone)
                    raise
                named = job.diagnose(err, attempt)
                reason = str(named) if named is not None else f"{job.source()} {err}"
                break
            except Exception as err:  # noqa: BLE001 - only Cholesky failures are retried
                if not is_cholesky_failure(err) or raised_on_every_rank(err):  # torchrun: no rank retries alone
                    err.add_note(f"gpgeom fit: attempt {attempt}; the loss is {job.source()}.")
                    raise
                named = job.diagnose(err, attempt)
                restore(module, start_state)
                if named is not None:  # a module returned NaN or inf: more jitter cannot help
                    reason = str(named)
                    break
                if not job.is_mll and not isinstance(err, _LONotPSDError):
                    # a plain torch.linalg failure inside a callable loss: its factorisations do not read
                    # gpytorch.settings.cholesky_jitter, so more jitter cannot help; the attempt fails
                    reason = (
                        f"the loss raised {type(err).__name__} ({err}); it does not factorise through "
                        "linear_operator's psd_safe_cholesky, so no jitter was tried"
                    )
                    break
                reason = f"Cholesky failed with jitter {o['levels'][level]:.1e} ({err})"
                if level + 1 >= len(o["levels"]):
                    break
                level += 1
            finally:
                bar.close()
        if result is not None and result.stopped:
            with jitter_context(o["levels"][level], not job.isolated):
                _stopped_at_start(result, module, start_state, full_loss, members, job.data_loader is None)
    if result is None:
        restore(module, start_state)
    elif on_copy:
        keep = math.isfinite(result.loss) or result.stopped
        result.state = copy.deepcopy(module.state_dict()) if keep else None
        if result.member_losses is not None:
            nb = int(np.prod(result.member_losses.shape)) if members is None else None
            sel = torch.as_tensor(members) if members is not None else None
            result.rows = {
                n: (p.detach().reshape(nb, -1) if sel is None else p.detach().reshape(p.shape[0], -1)[sel]).clone()
                for n, p in params.items()
            }
    return attempt, result, level, reason, named


def _task_in_worker(job_bytes: bytes, task: tuple[int, np.ndarray | None]) -> Outcome:
    r"""One task of the executor path: a fresh copy of the job (the optimiser changes it), one attempt (or the
    members ``task[1]`` of it)."""
    attempt, members = task
    out = run_attempt(loads(job_bytes), attempt, on_copy=True, members=members)
    named = out[4]
    if named is not None and named.__cause__ is not None:  # pickle drops __cause__: sent in the error's state
        try:
            pickle.loads(pickle.dumps(named.__cause__, protocol=pickle.HIGHEST_PROTOCOL))
        except Exception:  # noqa: BLE001 - a cause that cannot travel stays behind; the named error still does
            return out
        named.__dict__[SHIPPED_CAUSE] = named.__cause__
    return out


# --------------------------------------------------------------------------------------------------------------
# the executor path


def plan_tasks(n_attempts: int, n_members: int | None, workers: int) -> list[tuple[int, np.ndarray | None]]:
    r"""The tasks ``(attempt, members or None)``: every attempt whole, or, for ``n_members`` independent members
    and fewer attempts than ``workers * 3`` tasks, every attempt in ``g = min(n_members, ceil(3 workers /
    n_attempts))`` groups of members (member ``i`` in group ``i mod g``)."""
    groups = 1 if n_members is None else min(n_members, math.ceil(_TASKS_PER_WORKER * workers / n_attempts))
    if groups <= 1:
        return [(k, None) for k in range(n_attempts)]
    return [(k, np.arange(g, n_members, groups)) for k in range(n_attempts) for g in range(groups)]


def merge_members(parts: list[Outcome], n_members: int) -> Outcome:
    r"""One attempt's outcome from the outcomes of its groups of members (:func:`plan_tasks`): member losses,
    parameter rows and state scattered back by member index, the history rebuilt from the groups' traces (a group
    that stopped early contributes its last values; one stopped before any traced evaluation, its member losses:
    those of its start, :func:`_stopped_at_start`), ``converged`` if every group converged, ``stopped`` if
    any group was stopped (``StopIteration`` from the loss), the largest jitter level, and failure if any group
    failed (with the first failed group's reason and named error)."""
    attempt = parts[0][0]
    level = max(p[2] for p in parts)
    failed = [p for p in parts if p[1] is None]
    if failed:
        return attempt, None, level, failed[0][3], failed[0][4]
    results = [p[1] for p in parts]
    out = Attempt()
    out.converged = all(r.converged for r in results)
    out.stopped = any(r.stopped for r in results)
    out.member_losses = np.empty(n_members)
    for r in results:
        out.member_losses[r.members] = r.member_losses
    out.loss = float(out.member_losses.sum())
    contrib = np.empty(n_members)
    for step in range(max(len(r.trace) for r in results)):
        for r in results:  # a group stopped before its first evaluation with gradients: its members' losses
            contrib[r.members] = r.trace[min(step, len(r.trace) - 1)] if r.trace else r.member_losses
        out.history.append(float(np.sum(contrib)))
    out.rows = {}
    for name, rows in results[0].rows.items():
        full = rows.new_empty((n_members,) + rows.shape[1:])
        for r in results:
            full[torch.as_tensor(r.members)] = r.rows[name]
        out.rows[name] = full
    if (math.isfinite(out.loss) or out.stopped) and all(r.state is not None for r in results):
        out.state = dict(results[0].state)
        for name, full in out.rows.items():
            out.state[name] = full.reshape(out.state[name].shape).to(out.state[name])
    return attempt, out, level, "", None


def _stopped_before_tasks(job: FitJob) -> Outcome:
    r"""Attempt 0 stopped at its first evaluation (``StopIteration`` at :meth:`FitJob.members`' probe), as the
    serial run stops at L-BFGS-B's probe: the start, with the loss there (:func:`_stopped_at_start`)."""
    result = Attempt()
    result.stopped = True
    training = job.module.training
    try:
        job.module.train()  # the mode the optimisers evaluate the loss in
        with jitter_context(job.opts["levels"][0], not job.isolated):
            _stopped_at_start(result, job.module, job.initial, job.losses()[0], None)
    finally:
        job.module.train(training)
    result.state = copy.deepcopy(job.module.state_dict())
    return 0, result, 0, "", None


def run_attempts(
    job: FitJob, n_attempts: int, executor: Executor, progress: bool | None, split_members: bool = False
) -> list[Outcome] | None:
    r"""The attempts of ``job`` as tasks of ``executor`` (:func:`plan_tasks`; groups of members only with
    ``split_members``), in attempt order, or ``None`` when there is only one task (the caller runs it here). A
    progress bar counts the finished tasks. An attempt stopped by the objective (``StopIteration``) is the last
    outcome returned: the tasks of later attempts are cancelled, or stop at their next evaluation in threads of this
    process (:func:`gpgeom.engine.parallel.map_items`, ``last_needed``), as are the tasks after one that raises.
    When the objective raises ``StopIteration`` at the probe for the members (:meth:`FitJob.members`), no task runs:
    attempt 0 alone, stopped at its start (:func:`_stopped_before_tasks`)."""
    try:
        n_members = job.members() if split_members else None
    except StopIteration:  # at the probe for the members, before any task: the serial run's stop at its probe
        return [_stopped_before_tasks(job)]
    tasks = plan_tasks(n_attempts, n_members, executor_workers(executor))
    if len(tasks) < 2:
        return None
    name = type(job.model).__name__
    bar = progress_bar(total=len(tasks), desc=f"fit {name} ({n_attempts} attempts, {len(tasks)} tasks)",
                       progress=progress)  # fmt: skip
    last_task = {attempt: i for i, (attempt, _) in enumerate(tasks)}

    def last_needed(i: int, out: Outcome) -> int | None:
        # an attempt stopped by its objective (in any of its groups) is the last one, as serially: the tasks of the
        # later attempts are cancelled (gpgeom.engine.parallel, *Cancellation*) and their outcomes never read
        return last_task[out[0]] if out[1] is not None and out[1].stopped else None

    with contextlib.closing(bar):
        outs = map_items(  # an attempt seeds torch's global generator and sets GPyTorch settings: not thread-safe
            executor, _task_in_worker, tasks, dumps(job), chunk_size=1, on_chunk=bar.update, thread_safe=False,
            last_needed=last_needed,
        )  # fmt: skip
    if all(members is None for _, members in tasks):
        return outs
    by_attempt: dict[int, list[Outcome]] = {}
    for out in outs:
        by_attempt.setdefault(out[0], []).append(out)
    return [merge_members(by_attempt[k], n_members) for k in sorted(by_attempt)]

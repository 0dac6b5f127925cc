r"""Data-parallel training under ``torchrun``: one process per CPU socket or GPU, gradients averaged every step.

Started by ``torchrun --nproc_per_node=W script.py`` (``python -m torch.distributed.run``), each of the :math:`W`
processes (*ranks*) holds a full copy of the model and evaluates the loss on its own random draws (RGNP: its own
fields and random grids, the seed offset by the rank). With :math:`L_r(\theta)` the loss of rank :math:`r`, the
step minimises the average

.. math::
    L(\theta) = \frac1W \sum_{r=0}^{W-1} L_r(\theta), \qquad \nabla L = \frac1W \sum_r \nabla L_r,

i.e. one step on :math:`W` times the batch: the gradient estimator of a batch of :math:`W B` fields, whose variance
is :math:`1/W` that of one rank's (the draws of the ranks being independent). Every rank applies the same averaged
gradient with the same optimiser from the same starting parameters (broadcast from rank 0), so the parameters stay
identical on all ranks without ever being sent again. This is the scheme of PyTorch's
:class:`~torch.nn.parallel.DistributedDataParallel` (Li et al., "PyTorch Distributed: Experiences on Accelerating
Data Parallel Training", VLDB 2020): parameters broadcast once, gradients all-reduced (summed, divided by
:math:`W`) during the backward pass.

Why gradient hooks and not the DDP wrapper: DDP wraps a module and synchronises the backward of *its forward's
output*. The objectives here are not a module's forward: RGNP's negative ELBO is computed by Pyro's
``Trace_ELBO`` from a model and a guide (:mod:`gpgeom.engine.variational`), which call the networks several times
(and the residual differentiates the forward network through ``torch.autograd.grad``), and
:func:`gpgeom.engine.fitting.fit` takes any callable. :func:`average_gradients` therefore hooks the parameters
themselves (``Tensor.register_post_accumulate_grad_hook``): the first gradient that reaches a parameter queues one
callback at the end of that backward pass (as DDP's reducer does), which all-reduces every parameter's gradient in
one flat buffer per dtype and device, in the fixed order of the parameter list, so that the collectives of all
ranks match whatever order the autograd engine finished the parameters in. A parameter that received no gradient
on some rank counts as zero there (DDP's ``find_unused_parameters``); one that received none on any rank keeps
``grad = None`` (Adam then skips it, as in a single process). Gradients accumulated over several backward passes
stay correct: each pass adds the average of its own gradients.

The loss itself is averaged by :func:`mean_over_ranks` (value: the mean over the ranks; gradient: the rank's own,
averaged by the hooks), so that every rank records the same loss history, keeps the same "best" parameters and
stops early at the same step.

A step that fails on one rank must fail on all: the others would otherwise wait in the step's next collective until
the timeout. The loss all-reduce is the first collective of every step, and every rank reaches it once its own loss
is computed (or has raised), before its backward pass: :meth:`DataParallel.mean_of` sends the rank's status with its
loss (:math:`(L_r, f_r)`, :math:`f_r = 1` when the loss raised), so a failing rank still takes part in that
all-reduce and every rank learns :math:`\sum_r f_r > 0` from it, then raises (:meth:`DataParallel.raise_failure`:
the failed rank its own error, the others a ``RuntimeError`` naming it) before any gradient is reduced or parameter
changed. A user's callback, called after the loss, is settled the same way by :meth:`DataParallel.agree`. A rank
whose backward pass raises after that (user code in a custom autograd function, ``KeyboardInterrupt``) sends, on its
way out of :func:`data_parallel`, a status of 1 in place of its gradients to the gradient all-reduce the others wait
in: that all-reduce carries one more number, the sum of the ranks' backward statuses, and they raise on it. A rank
that fails after its gradients were reduced (in the optimiser step: ``KeyboardInterrupt``) is not covered: the others
wait in the next step's loss all-reduce until the timeout. The errors raised on every rank this way are marked
(:func:`raised_on_every_rank`), and :func:`gpgeom.engine.fitting.fit` never handles them on one rank alone (no jitter
escalation, restart or L-BFGS-B step back): every rank leaves the fit. A step that ends without a backward pass
(``StopIteration``) is declared by the engine (:func:`no_backward`), so that a later exception in the block is not
sent to a gradient all-reduce no rank is in.

A single process (no ``torchrun``, no process group) is unchanged: every function here is then a no-op and the
training is bitwise the same as without this module. Under a process group of size 1 the hooks run and the result
is again bitwise the same (the all-reduce of one rank is the identity, the division by 1 exact).

Backends: ``gloo`` on the CPU, ``nccl`` for a model on CUDA (:func:`init_from_env` chooses from the model's
device; with ``nccl`` each rank uses the GPU ``LOCAL_RANK``, :func:`local_device`).
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "DataParallel",
    "average_gradients",
    "broadcast_parameters",
    "check_same_settings",
    "data_parallel",
    "init_from_env",
    "is_initialized",
    "is_main_process",
    "launched",
    "local_device",
    "mean_over_ranks",
    "no_backward",
    "raised_on_every_rank",
    "rank",
    "rank_seed",
    "world_size",
]

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _dist() -> Any:
    return torch.distributed


def is_initialized() -> bool:
    r"""Whether a default ``torch.distributed`` process group exists in this process."""
    d = _dist()
    return bool(d.is_available() and d.is_initialized())


def world_size() -> int:
    r"""The number of ranks of the default process group (1 without one)."""
    return int(_dist().get_world_size()) if is_initialized() else 1


def rank() -> int:
    r"""This process's rank in the default process group (0 without one)."""
    return int(_dist().get_rank()) if is_initialized() else 0


def is_main_process() -> bool:
    r"""True on rank 0 and in a single process: the one that writes files and shows progress."""
    return rank() == 0


def launched() -> bool:
    r"""Whether this process was started by ``torchrun`` (its environment variables ``RANK`` and ``WORLD_SIZE`` are
    set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    try:
        out = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(
            f"Environment variable {name} must be a non-negative integer (set by torchrun), got {value!r}."
        ) from None
    if out < 0:
        raise ValueError(f"Environment variable {name} must be a non-negative integer (set by torchrun), got {out}.")
    return out


def local_device(device: torch.device | str | None = None) -> torch.device:
    r"""The device of this rank: ``cuda:LOCAL_RANK`` when ``device`` is a CUDA device (or ``None`` and CUDA is
    available), else ``device`` (default: the CPU)."""
    dev = torch.device(device) if device is not None else None
    if (dev is None and torch.cuda.is_available()) or (dev is not None and dev.type == "cuda"):
        return torch.device("cuda", _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else 0)
    return dev if dev is not None else torch.device("cpu")


def init_from_env(
    backend: str | None = None, *, device: torch.device | str | None = None, timeout_s: float = 1800.0
) -> bool:
    r"""Initialise the default process group from ``torchrun``'s environment, once.

    Reads ``RANK``, ``WORLD_SIZE`` (and ``MASTER_ADDR``/``MASTER_PORT`` through the ``env://`` rendezvous).

    Args:
        backend: ``"gloo"``, ``"nccl"`` or ``None``: ``nccl`` when ``device`` is a CUDA device (or ``device`` is
            ``None`` and CUDA is available), else ``gloo``. With ``nccl`` the current CUDA device is set to
            ``LOCAL_RANK``.
        device: The device of the model that will be trained (chooses the backend).
        timeout_s: Timeout of the collectives, in seconds.

    Returns:
        True when a process group exists afterwards (it did already, or this call made one); False when the process
        was not started by ``torchrun`` (nothing is done: a single process).

    Raises:
        ValueError: For an unknown backend, or malformed ``RANK``/``WORLD_SIZE``.
        RuntimeError: When ``torch.distributed`` or the backend is not available in this build of PyTorch.
    """
    if backend is not None and backend not in ("gloo", "nccl"):
        raise ValueError(f"`backend` must be 'gloo', 'nccl' or None, got {backend!r}.")
    if not (isinstance(timeout_s, int | float) and not isinstance(timeout_s, bool) and timeout_s > 0):
        raise ValueError(f"`timeout_s` must be a positive number of seconds, got {timeout_s!r}.")
    if is_initialized():
        return True
    if not launched():
        return False
    d = _dist()
    if not d.is_available():
        raise RuntimeError("This PyTorch build has no torch.distributed: data-parallel training is unavailable.")
    r, w = _env_int("RANK"), _env_int("WORLD_SIZE")
    if not r < w:
        raise ValueError(f"Environment variable RANK must be below WORLD_SIZE ({w}), got {r}.")
    dev = local_device(device)
    if backend is None:
        backend = "nccl" if dev.type == "cuda" else "gloo"
    available = d.is_nccl_available() if backend == "nccl" else d.is_gloo_available()
    if not available:
        raise RuntimeError(f"The {backend} backend of torch.distributed is not available in this PyTorch build.")
    if backend == "nccl":
        torch.cuda.set_device(dev)
    d.init_process_group(
        backend, init_method="env://", rank=r, world_size=w, timeout=datetime.timedelta(seconds=float(timeout_s))
    )
    return True


def rank_seed(seed: int | None) -> int | None:
    r"""The seed of this rank: ``seed + rank``, so that every rank draws its own data.

    ``seed=None`` with more than one rank: every rank draws one number from its global torch random stream and
    rank 0's is broadcast as the base seed (ranks whose global streams were seeded alike would otherwise draw the
    same data). A single process returns ``seed`` unchanged (and draws nothing).
    """
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"`seed` must be an int or None, got {type(seed).__name__}.")
    if world_size() == 1:
        return seed
    if seed is None:
        base = torch.randint(0, 2**62, (1,), dtype=torch.int64)
        seed = int(_broadcast_object(base)[0])
    return seed + rank()


def _comm_device(tensors: Iterable[Tensor]) -> torch.device | None:
    r"""With ``nccl``, collectives need CUDA tensors: the device they should be staged on (None: use them as
    they are)."""
    if not is_initialized() or _dist().get_backend() != "nccl":
        return None
    return next((t.device for t in tensors if t.device.type == "cuda"), local_device("cuda"))


def _all_reduce(t: Tensor, op: str = "SUM", near: Iterable[Tensor] = ()) -> Tensor:
    r"""All-reduce ``t`` (``op``: a ``ReduceOp`` name), staged on the device collectives need (:func:`_comm_device`
    of ``t`` and ``near``) and returned on ``t``'s device: ``t`` itself, reduced in place, when no staging is needed."""
    d = _dist()
    dev = _comm_device([t, *near])
    staged = t.to(dev) if dev is not None and dev != t.device else t
    d.all_reduce(staged, op=getattr(d.ReduceOp, op))
    return staged.to(t.device) if staged is not t else t


def _broadcast_object(t: Tensor) -> Tensor:
    r"""Broadcast a small CPU tensor from rank 0 (staged on the GPU under ``nccl``)."""
    dev = _comm_device([])
    buf = t.to(dev) if dev is not None else t.clone()
    _dist().broadcast(buf, src=0)
    return buf.cpu()


def broadcast_parameters(module: nn.Module, src: int = 0) -> None:
    r"""Overwrite every parameter and buffer of ``module`` with those of rank ``src`` (in place; no gradient).

    All ranks must call it with modules of the same structure: the number, shapes and dtypes of the tensors are
    compared first, and every rank raises the same ``ValueError`` when they differ anywhere. A no-op without a
    process group.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"`module` must be a torch.nn.Module, got {type(module).__name__}.")
    if not is_initialized():
        return
    d = _dist()
    tensors = list(module.parameters()) + list(module.buffers())
    sig = zlib.crc32(repr([(tuple(t.shape), str(t.dtype)) for t in tensors]).encode())  # same in every process
    mine = torch.tensor([len(tensors), sig], dtype=torch.int64)
    theirs = _broadcast_object(mine)
    differs = torch.tensor([int(not torch.equal(mine, theirs))], dtype=torch.int64)
    if int(_all_reduce(differs, "MAX", near=tensors).item()):
        raise ValueError(
            f"broadcast_parameters: the modules differ between the ranks (this rank {rank()}: {len(tensors)} "
            "parameters and buffers; another rank has other tensors, shapes or dtypes). Build the same model on "
            "every rank."
        )
    with torch.no_grad():
        dev = _comm_device(tensors)
        for t in tensors:
            buf = t.detach()
            direct = buf.is_contiguous() and buf.dtype != torch.bool and (dev is None or buf.device == dev)
            staged = buf if direct else buf.to(device=dev or buf.device, dtype=_wire_dtype(buf.dtype)).contiguous()
            d.broadcast(staged, src=src)
            if not direct:
                buf.copy_(staged.to(device=buf.device, dtype=buf.dtype))


def _fingerprint(value: Any) -> int:
    r"""A CRC-32 of ``value`` that is the same in every process for equal values: tensors and arrays by shape,
    dtype and bytes; dicts, lists and tuples item by item; callables by qualified name; anything else by ``repr``."""
    if isinstance(value, Tensor):
        t = value.detach().cpu().contiguous()
        head = f"tensor{tuple(t.shape)}{t.dtype}".encode()
        return zlib.crc32(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"", zlib.crc32(head))
    if type(value).__module__ == "numpy" and hasattr(value, "tobytes"):
        with contextlib.suppress(TypeError, RuntimeError):  # object arrays: by repr below
            return _fingerprint(torch.as_tensor(value))
    if isinstance(value, dict):
        parts = [f"{k!r}:{_fingerprint(v)}" for k, v in sorted(value.items(), key=lambda kv: repr(kv[0]))]
        return zlib.crc32(("dict{" + ",".join(parts) + "}").encode())
    if isinstance(value, list | tuple):
        return zlib.crc32((type(value).__name__ + "[" + ",".join(str(_fingerprint(v)) for v in value) + "]").encode())
    if callable(value):
        return zlib.crc32(f"callable {getattr(value, '__module__', '')}.{getattr(value, '__qualname__', '')}".encode())
    return zlib.crc32(repr(value).encode())


def _describe(value: Any) -> str:
    if isinstance(value, Tensor) or (type(value).__module__ == "numpy" and hasattr(value, "shape")):
        return f"{type(value).__name__} of shape {tuple(value.shape)}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in value.items()) + "}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_same_settings(settings: dict[str, Any], what: str = "training") -> None:
    r"""Raise the same ``ValueError`` on every rank unless all ranks pass equal ``settings``.

    Data-parallel training applies the averaged gradient on every rank with that rank's own settings: ranks given
    different learning rates or schedules silently end with different parameters, a different number of steps
    leaves a rank waiting in a collective until the timeout, and different data or batch sizes change what the
    average estimates. A collective: every rank must call it. A no-op without a process group.

    Args:
        settings: The values that must agree, by name (numbers, strings, ``None``, tensors and arrays compared by
            shape, dtype and bytes, dicts and sequences of those, callables by qualified name).
        what: What is being run, for the message (e.g. ``"RGNP.fit"``).

    Raises:
        ValueError: On every rank when some setting differs between the ranks; the message names the settings and
            gives this rank's values.
    """
    if not isinstance(settings, dict):
        raise TypeError(f"`settings` must be a dict of name -> value, got {type(settings).__name__}.")
    if not is_initialized():
        return
    names = sorted(settings)
    codes = [zlib.crc32(repr(names).encode())] + [_fingerprint(settings[k]) for k in names]
    n = _all_reduce(torch.tensor([len(codes), -len(codes)], dtype=torch.int64), "MAX")
    if int(n[0]) != -int(n[1]):  # ranks compare different numbers of settings
        differ = ["the names of the settings"]
    else:
        t = _all_reduce(torch.tensor(codes + [-c for c in codes], dtype=torch.int64), "MAX")
        high, low = t[: len(codes)], -t[len(codes) :]
        bad = (high != low).tolist()
        differ = (["the names of the settings"] if bad[0] else []) + [
            f"{k} (this rank: {_describe(settings[k])})" for k, b in zip(names, bad[1:]) if b
        ]
    if differ:
        raise ValueError(
            f"{what} under torchrun: the ranks were given different settings: {'; '.join(differ)} on rank "
            f"{rank()} of {world_size()}. Every rank must pass the same arguments (each rank draws its own random "
            "batches from them)."
        )


def _wire_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.uint8 if dtype == torch.bool else dtype


class _GradAverager:
    r"""The gradient hooks of :func:`average_gradients`: one end-of-backward all-reduce of all the gradients.

    The all-reduce of the first group of parameters (by device and dtype) carries one more number, the status of the
    backward pass: 0 from a rank that reduces its gradients, 1 from a rank whose backward pass raised after its loss
    all-reduce (:meth:`fail`, sent in place of its gradients). Every rank that finds a non-zero status raises."""

    def __init__(self, params: list[Tensor]) -> None:
        self.params = params
        self.queued = False
        self.reductions = 0  # number of backward passes reduced (for tests)
        self.pending = ""  # where, when the ranks' loss all-reduce passed and their gradients have not been reduced
        self.groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
        for p in params:
            self.groups.setdefault((p.device, p.dtype), []).append(p)

    def on_accumulate(self, _param: Tensor) -> None:
        if not self.queued:
            self.queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self.reduce)

    def reduce(self) -> None:
        self.queued = False
        what, self.pending = self.pending, ""
        w = world_size()
        for g, ((device, dtype), ps) in enumerate(self.groups.items()):
            if any(p.grad is not None and p.grad.is_sparse for p in ps):
                raise TypeError("average_gradients: sparse gradients are not supported.")
            zeros = torch.zeros((), dtype=dtype, device=device)
            parts = [p.grad.reshape(-1) if p.grad is not None else zeros.expand(p.numel()) for p in ps]
            used = torch.tensor([float(p.grad is not None) for p in ps], dtype=dtype, device=device)
            flat = _all_reduce(torch.cat([*parts, used] if g else [*parts, used, zeros.reshape(1)]))
            if not g:
                flat, status = flat[:-1], flat[-1]
                if float(status) != 0:  # a rank's backward pass raised: it sent this (fail)
                    _raise_failure(None, f"{what or 'a backward pass'}, in its backward pass")
            sums, counts = flat[: -len(ps)], flat[-len(ps) :]
            offset = 0
            for p, count in zip(ps, counts.tolist()):
                k = p.numel()
                if count > 0:
                    mean = (sums[offset : offset + k] / w).view_as(p)
                    if p.grad is None:
                        p.grad = mean.clone()
                    else:
                        p.grad.copy_(mean)
                offset += k
        self.reductions += 1

    def fail(self, error: BaseException) -> None:
        r"""Raise ``error`` after telling the other ranks, which wait in the gradient all-reduce of this step, that
        this rank's backward pass raised (a status of 1 in place of the gradients); they raise a ``RuntimeError``."""
        what, self.pending, self.queued = self.pending, "", False
        (device, dtype), ps = next(iter(self.groups.items()))
        flat = torch.zeros(sum(p.numel() for p in ps) + len(ps) + 1, dtype=dtype, device=device)
        flat[-1] = 1
        _all_reduce(flat)
        _raise_failure(error, f"{what}, in its backward pass")


@contextlib.contextmanager
def average_gradients(params: nn.Module | Iterable[Tensor]) -> Iterator[_GradAverager | None]:
    r"""Within the block, every backward pass ends with the gradients of ``params`` averaged over the ranks.

    Args:
        params: A module (its parameters that require gradients) or an iterable of leaf tensors.

    Yields:
        The hook object (``.reductions``: backward passes reduced so far), or None without a process group (then
        nothing is registered and training is unchanged).

    Every rank must run the same number of backward passes inside the block (each one is a collective). The hooks
    are removed on exit.
    """
    if isinstance(params, nn.Module):
        tensors = [p for p in params.parameters() if p.requires_grad]
    else:
        tensors = list(params)
        for t in tensors:
            if not (isinstance(t, Tensor) and t.is_leaf and t.requires_grad):
                raise TypeError("`params` must be a module or leaf tensors that require gradients.")
    if not is_initialized() or not tensors:
        yield None
        return
    averager = _GradAverager(tensors)
    handles = [t.register_post_accumulate_grad_hook(averager.on_accumulate) for t in tensors]
    try:
        yield averager
    finally:
        for h in handles:
            h.remove()


def mean_over_ranks(value: Tensor) -> Tensor:
    r"""``value`` (a scalar loss) with the value of its mean over the ranks and the gradient of the rank's own.

    Returned: :math:`\bar L + (L_r - \mathrm{sg}(L_r))` with :math:`\bar L = \frac1W \sum_r L_r` (the all-reduce of
    the detached value) and :math:`\mathrm{sg}` the stop-gradient. The bracket is exactly zero, so every rank gets
    the same number :math:`\bar L`; its gradient is :math:`\nabla L_r`, which :func:`average_gradients` turns into
    :math:`\nabla \bar L`. Without a process group, ``value`` itself.
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"`value` must be a tensor, got {type(value).__name__}.")
    if not is_initialized():
        return value
    mean = _all_reduce(value.detach().clone()) / world_size()
    return mean + (value - value.detach())


_ZERO = torch.zeros(1, dtype=torch.float64)  # the status of a rank whose loss was computed


def _summary(err: BaseException) -> str:
    r"""``Type: message`` of ``err``, its message's first line cut to 300 characters (for the other ranks)."""
    text = str(err).split("\n", 1)[0]
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _raise_failure(error: BaseException | None, what: str) -> None:
    r"""Once every rank knows that some rank failed in this step (a collective: every rank calls it), ``error`` is
    raised again on the ranks that failed and a ``RuntimeError`` naming the first of them and its error on the others
    (``what``: where, for the message, e.g. ``"RGNP.fit, in the loss at step 3"``). One ``all_gather_object`` of the
    errors' summaries, on the failure path only."""
    summaries: list[Any] = [None] * world_size()
    _dist().all_gather_object(summaries, None if error is None else _summary(error))
    if error is not None:
        raise _on_every_rank(error)
    failed = [(k, s) for k, s in enumerate(summaries) if s is not None]
    k, summary = failed[0] if failed else (-1, "an unknown error")
    more = f" (and {len(failed) - 1} more rank(s) raised too)" if len(failed) > 1 else ""
    raise _on_every_rank(
        RuntimeError(
            f"{what}, under torchrun: rank {k} of {world_size()} raised {summary}{more}; rank {rank()} stops with it "
            "(that rank's own error has the details)."
        )
    )


_EVERY_RANK = "_gpgeom_raised_on_every_rank"  # the attribute that marks an error of _raise_failure


def _on_every_rank(error: BaseException) -> BaseException:
    if world_size() > 1:  # one rank: nothing to keep in step, the error stays as in a single process
        with contextlib.suppress(AttributeError, TypeError):  # an exception type without attributes stays unmarked
            setattr(error, _EVERY_RANK, True)
    return error


def raised_on_every_rank(error: BaseException) -> bool:
    r"""Whether ``error`` ends a data-parallel step that failed on some rank, raised on every rank at once
    (:meth:`DataParallel.mean_of`, the gradient all-reduce, :meth:`DataParallel.raise_failure`): the failed rank's
    own error, or the ``RuntimeError`` of another rank (never with one rank: the error is then as in one process).

    Code that catches errors of the loss and goes on (:func:`gpgeom.engine.fitting.fit`: the jitter escalation after
    a failed Cholesky factorisation, the next restart after a ``FloatingPointError``, L-BFGS-B's step back from a NaN
    covariance) must raise such an error again: the other ranks raised a different one and left the fit, so a rank
    that went on alone would meet their next collectives mismatched (a hang until the timeout, or a crash)."""
    return bool(getattr(error, _EVERY_RANK, False))


_OPEN: list[_GradAverager] = []  # the gradient hooks of the data_parallel blocks open in this process


def no_backward() -> None:
    r"""Tell the open :func:`data_parallel` blocks that the loss last returned by :meth:`DataParallel.mean_of` gets
    no backward pass (the fit ended at its evaluation: ``StopIteration``, :mod:`gpgeom.engine.optimizers`), so that
    an exception leaving a block later is not sent to a gradient all-reduce no rank is in. A no-op without a
    process group."""
    for averager in _OPEN:
        averager.pending = ""


class DataParallel:
    r"""What one data-parallel training run needs, from :func:`data_parallel`: ``seed`` (this rank's),
    ``progress(p)`` (``p`` on rank 0, False elsewhere), ``mean(loss)`` (the loss with its value averaged over the
    ranks, :func:`mean_over_ranks`), ``mean_of(compute)`` (the same for a loss that may raise on some ranks),
    ``agree(outcome)`` (the largest outcome of a step over the ranks), ``active`` (a process group exists)."""

    def __init__(self, seed: int | None, active: bool, averager: _GradAverager | None = None) -> None:
        self.seed, self.active, self._averager = seed, active, averager

    def progress(self, progress: bool | None) -> bool | None:
        r"""``progress`` on rank 0 (and in a single process), ``False`` on the other ranks."""
        return progress if is_main_process() else False

    def mean(self, value: Tensor) -> Tensor:
        r"""The loss ``value`` with its value averaged over the ranks (:func:`mean_over_ranks`; itself when no
        process group exists)."""
        return mean_over_ranks(value) if self.active else value

    def mean_of(self, compute: Callable[[], Tensor], what: str = "training") -> Tensor:
        r"""``compute()`` (a scalar loss) with its value averaged over the ranks, or, when it raises on any rank,
        an exception on every rank at once: the rank's own where it raised, elsewhere a ``RuntimeError`` naming the
        rank that raised and its error (``what``: where, for the message, e.g. ``"RGNP.fit, in the loss at step
        3"``).

        The mean's all-reduce carries the step's status: every rank sends the two numbers
        :math:`(L_r, f_r)` in float64, :math:`f_r = 1` when ``compute`` raised there (then :math:`L_r = 0`), else
        0, and receives :math:`(\sum_r L_r, \sum_r f_r)`. With :math:`\sum_r f_r = 0` the value is
        :math:`\bar L = \frac1W \sum_r L_r` (as :func:`mean_over_ranks`: the gradient is the rank's own); else
        every rank raises before the backward pass, so no rank is left in a collective the failed one never
        reaches (the gradient all-reduce: until the timeout), and the step changes no parameter. The flag costs no
        collective of its own: one more number in the all-reduce that every step makes anyway. A float64 sum of
        the float32 losses of two ranks is exact, so the mean is the float32 all-reduce's, bit for bit; with three or
        more ranks it is the float64 sum rounded once, which can differ in the last bit from a float32 all-reduce
        (rounded at every addition).

        Any exception counts, ``KeyboardInterrupt`` included; a ``StopIteration`` too, which the engine's ``fit``
        takes as the end of the fit on the rank that raised it while the others raise a ``RuntimeError`` (to stop
        every rank, agree on it first: :meth:`agree`). Every rank must call it at the same step. The errors
        raised this way are marked (:func:`raised_on_every_rank`): :func:`gpgeom.engine.fitting.fit` raises them
        again instead of retrying or restarting on the failing rank alone. Once it has returned, a rank whose
        backward pass raises tells the others in the gradient all-reduce instead (on its way out of
        :func:`data_parallel`), and they raise a ``RuntimeError`` naming it there; a loss that gets no backward
        pass (the fit stopped at it: ``StopIteration``) must be declared by :func:`no_backward` (the engine's
        optimisers do). Without a process group: ``compute()`` itself (its exceptions as they are).
        """
        if not self.active:
            return compute()
        value, error = None, None
        try:
            value = compute()
            if not isinstance(value, Tensor) or value.numel() != 1:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise TypeError(f"mean_of: `compute` must return a scalar tensor, got {got}.")
        except BaseException as err:  # noqa: BLE001 - raised again below, after the other ranks have been told
            error = err
        if value is not None and error is None:
            buf = torch.cat([value.detach().reshape(1).to(device="cpu", dtype=torch.float64), _ZERO])
        else:
            buf = torch.tensor([0.0, 1.0], dtype=torch.float64)
        buf = _all_reduce(buf)
        if error is not None or float(buf[1]) > 0 or value is None:
            _raise_failure(error, what)
        mean = (buf[0] / world_size()).to(dtype=value.dtype, device=value.device).reshape(value.shape)
        if self._averager is not None and value.requires_grad and math.isfinite(float(buf[0])):
            self._averager.pending = what  # every rank goes on to its backward pass (a NaN mean: all raise)
        return mean + (value - value.detach())

    def raise_failure(self, error: BaseException | None, what: str) -> None:
        r"""Raise on every rank once all know that some rank failed in this step (a collective, e.g. after
        :meth:`agree` returned 2): ``error`` on the ranks that pass one, a ``RuntimeError`` naming the first rank
        that failed and its error on the others (``what``: where it happened, for the message). Without a process
        group or with one rank: ``error`` itself (or a ``RuntimeError`` when it is None)."""
        if self._averager is not None:
            self._averager.pending = ""  # every rank raises here: none is left in the gradient all-reduce
        if not self.active or world_size() < 2:
            raise error if error is not None else RuntimeError(f"{what}: failed.")
        _raise_failure(error, what)

    def agree(self, outcome: int) -> int:
        r"""The largest ``outcome`` over the ranks (a collective: every rank calls it at the same step), e.g. of a
        user's callback: 0 (went on), 1 (asked to stop: ``StopIteration``), 2 (raised). A rank that stops or raises
        alone would leave the others waiting in their next collective until the timeout (and its own next collective
        would meet theirs: mismatched all-reduces). ``outcome`` itself with fewer than two ranks (nothing sent)."""
        if not (isinstance(outcome, int) and not isinstance(outcome, bool) and outcome >= 0):
            raise ValueError(f"`outcome` must be an int >= 0, got {outcome!r}.")
        if not self.active or world_size() < 2:
            return outcome
        return int(_all_reduce(torch.tensor([outcome], dtype=torch.int64), "MAX").item())


@contextlib.contextmanager
def data_parallel(
    module: nn.Module, seed: int | None = None, *, init: bool = True, settings: dict[str, Any] | None = None
) -> Iterator[DataParallel]:
    r"""Train ``module`` data-parallel inside the block when started under ``torchrun`` (unchanged otherwise).

    On entry: the process group is initialised from the environment (``init=True``, :func:`init_from_env`, the
    backend chosen from the module's device), the parameters and buffers are broadcast from rank 0
    (:func:`broadcast_parameters`) and the gradient hooks registered (:func:`average_gradients`); first, the ranks
    must agree on ``seed`` and ``settings`` (:func:`check_same_settings`: a ``ValueError`` on every rank otherwise).
    Use::

        with data_parallel(model, seed) as dp:
            fit(lambda: dp.mean_of(objective), module=model, optimizer="adam", seed=dp.seed, progress=dp.progress(True))

    Args:
        module: The module trained (all ranks: the same structure).
        seed: The run's seed; ``dp.seed`` is this rank's (:func:`rank_seed`).
        init: Initialise the process group from ``torchrun``'s environment when there is none yet.
        settings: The training settings that must be the same on every rank (step count, learning rate, batch
            sizes, data...), by name.

    An exception that leaves the block on one rank between :meth:`DataParallel.mean_of` and that step's gradient
    all-reduce (its backward pass raised) is raised after a status of 1 is sent to that all-reduce in place of the
    gradients, where the other ranks wait: they raise a ``RuntimeError`` naming this rank. A loss of ``mean_of``
    that gets no backward pass (the fit stopped at it) must be declared by :func:`no_backward` (the engine's
    optimisers do, on ``StopIteration``); otherwise an exception raised later in the block would be sent to a
    gradient all-reduce no other rank is in.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"`module` must be a torch.nn.Module, got {type(module).__name__}.")
    if init:
        first = next(iter(module.parameters()), None)
        init_from_env(device=first.device if first is not None else None)
    active = is_initialized()
    check_same_settings({**(settings or {}), "seed": seed}, f"training {type(module).__name__}")
    seed = rank_seed(seed)
    broadcast_parameters(module)
    with average_gradients(module) as averager:
        if averager is not None:
            _OPEN.append(averager)
        try:
            yield DataParallel(seed, active, averager)
        except BaseException as err:
            if averager is not None and averager.pending:  # raised between its loss all-reduce and its gradients'
                averager.fail(err)
            raise
        finally:
            if averager is not None:
                _OPEN.remove(averager)

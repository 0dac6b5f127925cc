r"""Fan-out of independent work through a :class:`concurrent.futures.Executor`.

Every stage of gpgeom whose items do not depend on one another (MMGP's morphing and transfers mesh by mesh, the
restarts of a hyperparameter fit, separate GPs, one finite-element solve per dataset sample) accepts
``executor=``: any object with the ``concurrent.futures.Executor`` interface (``submit`` returning futures), e.g.
``dask.distributed.Client(...).get_executor()``, a ``ProcessPoolExecutor`` or a ``ThreadPoolExecutor``. ``None``
(the default) runs the same item function in this process, in order.

**Results.** The items' results come back in item order whatever the number of workers and the chunking, and
each item is computed by the same function on the same inputs as in the serial run; the randomness of an item is
seeded from the base seed and the item's index (:func:`derive_seed`), never from a stream shared across items.
With one thread per process on both sides the results are bitwise those of the serial run.

**Chunks.** Items are shipped in chunks of consecutive items (:func:`map_items`): by default about
``tasks_per_worker`` tasks per worker (``ceil(n / (workers * tasks_per_worker))`` items per task), so that a task
carries enough work to pay for its scheduling and transfer and the workers still balance uneven items. A Dask
client scatters each chunk straight to a worker (``client.scatter(..., direct=True)``) rather than putting it in
the task graph, and gathers the results straight from the workers, so data travels once each way without passing
through the scheduler; each task is submitted as soon as its chunk has been sent.

**Shared data** (the rule). What every item needs (MMGP's common mesh, its morphed points and mass matrix; the
model and training data of a fit) is passed once as ``shared`` and is never pickled once per item:

* Dask executor (``Client.get_executor()``): ``client.scatter(shared, broadcast=True, direct=True)`` puts one
  copy on every worker before the tasks run; the tasks receive the scattered object (one deserialisation per
  worker), and the copies are released when the call returns.
* ``ProcessPoolExecutor``: the object is pickled once into a temporary file; tasks carry only its path and a
  token, and each worker process loads it once and keeps it in a small per-process cache (the file is removed
  when the call returns).
* ``ThreadPoolExecutor`` (and the serial run): the object itself, no copy.
* Any other executor (possibly remote): the pickled bytes travel with every task, and each worker deserialises
  them once (token cache); larger chunks amortise the transfer.

Shared objects are pickled here with ``cloudpickle`` when it is installed (it comes with ``dask``; it handles
closures such as a loss function built around a model), with :mod:`pickle` otherwise; Dask serialises what it
scatters itself, and each executor pickles the chunks of items its own way (by value) and the item function by
reference (a module-level function).

**Workers.** A task running in another process sets torch to one thread (once per process), applies this
process's GPyTorch / linear_operator settings (:func:`numerics_snapshot`; process-global, so give Dask workers one
thread each: ``threads_per_worker=1``) and records its warnings, which are re-issued here. A thread pool shares
this process's settings; set ``OMP_NUM_THREADS=1`` in the environment of process workers so that numpy's BLAS also
runs one thread (Dask's ``LocalCluster`` does). Items that change process-wide state while they run (a fit seeds
torch's global random generator and sets GPyTorch's jitter settings for its attempt) are marked ``thread_safe=False``
by their callers and run one at a time in threads of this process: two at once would draw from each other's seeded
stream and restore each other's settings in the wrong order (a thread-pool fit left
``gpytorch.settings.cholesky_max_tries`` at 1 for the rest of the session). Use processes to run them in parallel.

**Dask settings.** :data:`DASK_SETTINGS` are the settings for CPU-bound work on Dask worker processes; apply them
while the cluster starts (``with dask.config.set(DASK_SETTINGS): cluster = LocalCluster(...)``; the workers take the
configuration of the process that spawns them). Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_`` (64 KiB) so that
workers hand freed memory back at once; any explicit glibc malloc threshold switches glibc's dynamic mmap threshold
off, so every array above 128 KiB is then mapped, page-faulted and unmapped each time it is allocated. On 400 MMGP
plate transfers that showed as seconds of system CPU in the workers (an earlier measurement, not in a committed
table; docs/scaling.md). The settings restore the values glibc's dynamic rule reaches on 64-bit Linux (mmap
threshold 32 MiB, trim threshold twice that), turn the workers' statistical profiler off (it samples the stack
every 10 ms) and slow the event loops' monitoring ticks (20 ms and 500 ms by default), which cost CPU in idle
clients, schedulers and workers.

**Cancellation.** A call stops the work whose results it no longer needs: when an item raises (the first one in item
order is raised, as in the serial run), and when ``last_needed`` says that the items after some index are not
needed (a fit stopped by its objective: :func:`gpgeom.engine.attempts.run_attempts`), the tasks not yet started are
cancelled (``Future.cancel``; ``client.cancel`` for Dask), and an item still running in a thread of this process
stops at its next :func:`check_needed` (the fit's loss calls it at every evaluation) or, when it has not started,
before it starts; so does an item in a worker of a ``ProcessPoolExecutor``, which reads the call's limit from a
temporary file (removed when the call returns; read at most every 10 ms), and an item on a Dask worker, which reads
it from a ``distributed.Variable`` (set when the call starts, set to -1 when it returns and deleted 10 s later, at
once when no task can still run; read at most every 0.2 s, the first time 0.2 s after the worker's first check, so
that short tasks cost no round trip to the scheduler; ``gpgeom.engine._limits``). Items of a ``thread_safe=False``
call that still run in threads of this process are waited for before the call returns or raises (they restore
process-wide state when they end).

``dask`` is imported by this module only for a Dask executor (``distributed.Variable``, by the caller and by
:func:`check_needed` in the workers): a Dask executor is recognised by its type's module."""

from __future__ import annotations

import bisect
import contextlib
import functools
import inspect
import math
import os
import pickle
import queue
import tempfile
import threading
import traceback
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gpgeom._warnings import user_stacklevel
from gpgeom.engine._limits import (
    _DaskLimit,
    _limit,
    _LimitFile,
    _needed,
    _publish,
    _release,
    _write_limit,
    process_identity,
)

__all__ = [
    "DASK_SETTINGS",
    "check_executor",
    "check_needed",
    "chunk_size_for",
    "derive_seed",
    "dumps",
    "executor_workers",
    "jobs_executor",
    "loads",
    "map_items",
    "numerics",
    "numerics_snapshot",
]

#: Dask configuration for CPU-bound gpgeom work on worker processes (module docstring, "Dask settings"): pass it to
#: ``dask.config.set`` around the creation of the cluster.
DASK_SETTINGS: dict[str, Any] = {
    "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": 32 * 2**20,
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 64 * 2**20,
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
}

#: Shared objects a worker process keeps (the most recent ones).
_CACHE_SIZE = 4
_cache: OrderedDict[str, Any] = OrderedDict()
_cache_lock = threading.Lock()
#: Held by the items of a call with ``thread_safe=False`` that run in threads of this process (module docstring).
_state_lock = threading.RLock()
_worker_ready = False
#: The ``(token, index)`` of the item that this thread runs for :func:`map_items` (``None`` outside).
_current = threading.local()


class _Cancelled(BaseException):
    r"""Raised by :func:`check_needed` in an item whose result is no longer needed; the task drops the item (a
    ``BaseException``, so that the ``except Exception`` of an optimiser or a user's loss does not take it for a
    failure of the item)."""


class _Skipped:
    r"""What a task returns for an item it did not run (its result is not needed): one object, also when it comes
    back from a worker process (pickled by reference)."""

    def __reduce__(self) -> str:
        return "_SKIPPED"


_SKIPPED = _Skipped()


# ----------------------------------------------------------------------------------------------------------------
# executors


def check_executor(executor: object) -> None:
    r"""Raise ``TypeError`` unless ``executor`` is ``None`` or has a callable ``submit``."""
    if executor is not None and not callable(getattr(executor, "submit", None)):
        raise TypeError(
            "`executor` must be a concurrent.futures.Executor (e.g. dask.distributed.Client(...).get_executor() or "
            f"a ProcessPoolExecutor), or None for the serial run; got {type(executor).__name__}."
        )


def _check_open(executor: Executor) -> None:
    r"""``RuntimeError`` naming ``executor`` when it can no longer run tasks: a pool shut down, or a Dask client
    closed (its own errors say "cannot schedule new futures after shutdown", "IOLoop is closed")."""
    if _is_dask(executor):
        status = str(getattr(executor._client, "status", "running"))
        if status in ("closing", "closed", "failed"):
            raise RuntimeError(
                f"`executor` is the executor of a Dask client that is {status}: pass the executor of a running "
                "client (dask.distributed.Client(...).get_executor()), or None for the serial run."
            )
    elif isinstance(executor, ThreadPoolExecutor | ProcessPoolExecutor) and getattr(executor, "_shutdown_thread", 0):
        raise RuntimeError(
            f"`executor` is a {type(executor).__name__} that has been shut down (a `with` block ended, or "
            "shutdown() was called): pass an open executor, or None for the serial run."
        )


def _no_workers(err: TimeoutError) -> Exception:
    r"""Dask's ``TimeoutError('No valid workers found')`` of a scatter to a cluster without running workers, as a
    ``RuntimeError`` naming ``executor``; any other timeout unchanged."""
    if "No valid workers" not in str(err):
        return err
    return RuntimeError(
        "`executor` is the executor of a Dask client whose cluster has no running worker: none joined within Dask's "
        f"timeout (distributed.comm.timeouts.connect; {err}). Start workers (cluster.scale(n)), or check why they "
        "died or paused (the memory limit, a crash in native code: the worker logs say)."
    )


def _is_dask(executor: object) -> bool:
    return type(executor).__module__.split(".")[0] == "distributed" and hasattr(executor, "_client")


def executor_workers(executor: Executor | None) -> int:
    r"""How many items the executor runs at once: the threads of a Dask cluster's workers, a pool's
    ``max_workers``, or the CPU count of this machine for an executor that does not say (1 for ``None``)."""
    if executor is None:
        return 1
    if _is_dask(executor):
        with contextlib.suppress(Exception):
            return max(1, sum(executor._client.nthreads().values()))
    workers = getattr(executor, "_max_workers", None)
    if isinstance(workers, int) and workers > 0:
        return workers
    return os.cpu_count() or 1


@contextlib.contextmanager
def jobs_executor(executor: Executor | None, n_jobs: int | None) -> Iterator[Executor | None]:
    r"""The executor of a call that takes both ``executor=`` and the shorthand ``n_jobs=``: ``executor`` itself,
    or a ``ProcessPoolExecutor`` of ``n_jobs`` processes (one torch thread each) open for the call, or ``None``
    (serial) for ``n_jobs`` ``None`` or 1."""
    check_executor(executor)
    if n_jobs is not None and (isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1):
        raise ValueError(f"`n_jobs` must be an int >= 1, got {n_jobs!r}.")
    if executor is not None:
        if n_jobs not in (None, 1):
            raise ValueError("Pass either `executor` or `n_jobs`, not both.")
        yield executor
    elif n_jobs is not None and n_jobs > 1:
        with ProcessPoolExecutor(max_workers=n_jobs, initializer=_set_one_thread) as pool:
            yield pool
    else:
        yield None


def _set_one_thread() -> None:
    global _worker_ready
    if not _worker_ready:
        torch.set_num_threads(1)
        _worker_ready = True


# ----------------------------------------------------------------------------------------------------------------
# seeds, pickling, numerical settings


def derive_seed(base: int, *keys: int) -> int:
    r"""A seed for item ``keys`` of a computation seeded with ``base``: independent streams for different keys
    (``numpy.random.SeedSequence([base, *keys])``), the same for the same keys whichever worker runs the item.
    Returns an int in ``[0, 2**63)`` (valid for ``torch.manual_seed`` and numpy)."""
    entropy = [int(base) & (2**64 - 1)] + [int(k) & (2**64 - 1) for k in keys]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def dumps(obj: object) -> bytes:
    r"""``obj`` pickled with ``cloudpickle`` when it is installed (closures, lambdas), with :mod:`pickle`
    otherwise."""
    try:
        import cloudpickle
    except ImportError:
        try:
            return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, AttributeError, TypeError) as err:
            raise TypeError(
                f"Cannot ship {type(obj).__name__} to the executor's workers with pickle ({err}); install "
                "cloudpickle (it comes with dask: pip install 'gpgeom[distributed]'), which pickles closures."
            ) from err
    try:
        return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError) as err:
        raise TypeError(
            f"Cannot ship {type(obj).__name__} to the executor's workers: pickling it fails with "
            f"{type(err).__name__}: {err}. Pass objects without open files, locks, threads or live connections."
        ) from err


def loads(data: bytes) -> Any:
    r"""The inverse of :func:`dumps` (plain :func:`pickle.loads` reads both)."""
    return pickle.loads(data)


#: Class attributes that hold the global value of a GPyTorch / linear_operator setting.
_SETTING_ATTRS = ("_global_value", "_state", "_global_float_value", "_global_double_value", "_global_half_value")


def _setting_classes() -> dict[str, type]:
    import gpytorch.settings
    import linear_operator.settings

    out: dict[str, type] = {}
    for mod in (linear_operator.settings, gpytorch.settings):
        for obj in vars(mod).values():
            if inspect.isclass(obj) and obj.__module__ in ("gpytorch.settings", "linear_operator.settings"):
                if any(hasattr(obj, a) for a in _SETTING_ATTRS):
                    out[f"{obj.__module__}:{obj.__qualname__}"] = obj
    return out


def numerics_snapshot() -> dict[str, Any]:
    r"""The global GPyTorch and linear_operator settings in force here (the values that ``with
    gpytorch.settings.max_cholesky_size(...)`` and friends set) and torch's default dtype, to re-apply in a worker
    process (:func:`numerics`)."""
    snap: dict[str, Any] = {"torch_default_dtype": str(torch.get_default_dtype()).replace("torch.", "")}
    for key, cls in _setting_classes().items():
        snap[key] = {a: getattr(cls, a) for a in _SETTING_ATTRS if hasattr(cls, a)}
    return snap


@contextlib.contextmanager
def numerics(snapshot: dict[str, Any] | None) -> Iterator[None]:
    r"""Apply a :func:`numerics_snapshot` for the duration of the block (restored afterwards)."""
    if not snapshot:
        yield
        return
    classes = _setting_classes()
    saved: list[tuple[type, str, bool, Any]] = []
    old_dtype = torch.get_default_dtype()
    try:
        torch.set_default_dtype(getattr(torch, snapshot["torch_default_dtype"]))
        for key, values in snapshot.items():
            cls = classes.get(key)
            if cls is None:
                continue
            for attr, value in values.items():
                saved.append((cls, attr, attr in vars(cls), vars(cls).get(attr)))
                setattr(cls, attr, value)
        yield
    finally:
        for cls, attr, own, value in reversed(saved):
            if own:
                setattr(cls, attr, value)
            else:
                delattr(cls, attr)
        torch.set_default_dtype(old_dtype)


# ----------------------------------------------------------------------------------------------------------------
# shared data


@dataclass(frozen=True)
class _FileRef:
    token: str
    path: str


@dataclass(frozen=True)
class _BytesRef:
    token: str
    data: bytes


def _resolve(ref: object) -> Any:
    r"""The shared object in this worker: loaded once per process for a file or bytes reference."""
    if not isinstance(ref, _FileRef | _BytesRef):
        return ref
    with _cache_lock:
        if ref.token in _cache:
            _cache.move_to_end(ref.token)
            return _cache[ref.token]
    if isinstance(ref, _FileRef):
        with open(ref.path, "rb") as fh:
            obj = loads(fh.read())
    else:
        obj = loads(ref.data)
    with _cache_lock:
        _cache[ref.token] = obj
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return obj


@contextlib.contextmanager
def _share(executor: Executor, obj: object) -> Iterator[object]:
    r"""What the tasks receive for the shared object (the rule in the module docstring)."""
    if obj is None or isinstance(executor, ThreadPoolExecutor):
        yield obj
    elif _is_dask(executor):
        client = executor._client
        try:
            future = client.scatter(obj, broadcast=True, hash=False, direct=True)
        except TimeoutError as err:
            raise _no_workers(err) from err
        try:
            yield future
        finally:
            with contextlib.suppress(Exception):
                future.release()
    elif isinstance(executor, ProcessPoolExecutor):
        fd, path = tempfile.mkstemp(prefix="gpgeom-shared-", suffix=".pkl")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(dumps(obj))
            yield _FileRef(uuid.uuid4().hex, path)
        finally:
            with contextlib.suppress(OSError):
                os.remove(path)
    else:
        yield _BytesRef(uuid.uuid4().hex, dumps(obj))


# ----------------------------------------------------------------------------------------------------------------
# tasks


def _run_chunk(
    fn: Callable[[Any, Any], Any],
    shared: object,
    items: Sequence[Any],
    parent: str,
    settings: dict[str, Any],
    start: int = 0,
    label: str = "item",
    rebuild_check: bool = True,
    thread_safe: bool = True,
    token: str | _LimitFile | _DaskLimit | None = None,
) -> tuple[list[Any], list[Warning]]:
    r"""One task: ``fn(shared, item)`` for every item of a chunk (items ``start``, ``start + 1``, ... of the call).
    In another process: one torch thread, the caller's numerical settings, and the warnings recorded to be
    re-issued by the caller. An item's exception names the item (:func:`_item_error`; ``rebuild_check``: whether
    one pickle cannot rebuild is replaced, off for Dask, which sends such exceptions back itself). In a thread of the
    calling process, items that are not ``thread_safe`` run one at a time. An item whose result the call
    (``token``) no longer needs is not started, or stops at its next :func:`check_needed` (module docstring,
    *Cancellation*). ``parent``: the caller's :func:`~gpgeom.engine._limits.process_identity`."""
    if parent == process_identity():  # a thread of the calling process: its settings and warnings are shared
        with contextlib.nullcontext() if thread_safe else _state_lock:
            return _apply(fn, _resolve(shared), items, start, label, remote=False, token=token), []
    _set_one_thread()
    obj = _resolve(shared)
    with warnings.catch_warnings(record=True) as caught, numerics(settings):
        warnings.simplefilter("always")
        mine = token if isinstance(token, _LimitFile | _DaskLimit) else None  # a call's own str token: no reader here
        out = _apply(fn, obj, items, start, label, remote=rebuild_check, token=mine)
    return out, [w.message for w in caught]


def _apply(
    fn: Callable[[Any, Any], Any],
    obj: object,
    items: Sequence[Any],
    start: int,
    label: str,
    remote: bool,
    token: str | _LimitFile | _DaskLimit | None = None,
) -> list[Any]:
    r"""``fn(obj, item)`` for every item; with the ``token`` of a call of this process, an item that the call no
    longer needs is skipped (:data:`_SKIPPED`), before it starts or at its :func:`check_needed`."""
    out: list[Any] = []
    for k, item in enumerate(items):
        if token is not None and _limit(token) < start + k:
            out.extend([_SKIPPED] * (len(items) - k))
            break
        saved = getattr(_current, "item", None)
        if token is not None:  # else (serially) the item of an enclosing call, if any, still decides
            _current.item = (token, start + k)
        try:
            out.append(fn(obj, item))
        except _Cancelled:
            if token is None:  # an enclosing call's item is cancelled: up to it
                raise
            out.extend([_SKIPPED] * (len(items) - k))
            break
        except Exception as err:
            named = _item_error(err, f"{label} {start + k}", remote)
            if named is err:
                raise
        else:
            continue
        finally:
            _current.item = saved
        # the replacement is raised outside the handler, so that it has no __context__: tblib's pickling support
        # (installed by importing Dask's distributed) pickles the context too, and the original exception that pickle
        # cannot rebuild then broke the process pool after all
        raise named
    return out


def check_needed() -> None:
    r"""Called by an item function at points where it can stop cleanly (the fit's loss: at every evaluation): when
    the :func:`map_items` call that runs the item (in a thread of the calling process, in a worker of its
    ``ProcessPoolExecutor`` or on a Dask worker; module docstring, *Cancellation*) no longer needs its result (an
    earlier item raised, or ``last_needed`` cut the items off), it raises an internal ``BaseException`` that drops
    the item. Nothing otherwise (outside :func:`map_items`, in the serial run)."""
    item = getattr(_current, "item", None)
    if item is not None and _limit(item[0]) < item[1]:
        raise _Cancelled


def _item_error(err: Exception, where: str, remote: bool) -> Exception:
    r"""``err`` with a note naming the item (``"GP 3"``) that raised it. In a worker process, an exception that
    pickle cannot rebuild (e.g. a class whose ``__init__`` takes other arguments than ``args``) would break the
    executor (a ``ProcessPoolExecutor`` reports ``BrokenProcessPool`` and refuses every later task): it is replaced by
    a ``RuntimeError`` giving its type, message and traceback."""
    note = f"(raised by {where})"
    if note not in getattr(err, "__notes__", ()):
        err.add_note(note)
    if not remote:
        return err
    try:
        pickle.loads(pickle.dumps(err, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception as why:
        out = RuntimeError(
            f"{where} raised {type(err).__module__}.{type(err).__qualname__}: {err} (the exception cannot be sent "
            f"back from the worker process: pickle fails to rebuild it with {type(why).__name__}: {why})"
        )
        out.add_note("Traceback in the worker:\n" + "".join(traceback.format_exception(err)).rstrip())
        return out
    return err


def chunk_size_for(n: int, executor: Executor | None, tasks_per_worker: int = 4, min_chunk: int = 1) -> int:
    r"""Items per task: ``ceil(n / (workers * tasks_per_worker))``, at least ``min_chunk``."""
    workers = executor_workers(executor)
    return max(int(min_chunk), math.ceil(n / max(1, workers * int(tasks_per_worker))))


def map_items(
    executor: Executor | None,
    fn: Callable[[Any, Any], Any],
    items: Iterable[Any],
    shared: object = None,
    *,
    chunk_size: int | None = None,
    tasks_per_worker: int = 4,
    min_chunk: int = 1,
    on_chunk: Callable[[int], None] | None = None,
    label: str = "item",
    thread_safe: bool = True,
    last_needed: Callable[[int, Any], int | None] | None = None,
) -> list[Any]:
    r"""``[fn(shared, item) for item in items]``, in item order, through ``executor`` (serial for ``None``).

    Args:
        executor: A ``concurrent.futures.Executor`` or ``None``.
        fn: A module-level function ``(shared, item) -> result`` (pickled by reference).
        items: The independent items (each pickled with its chunk).
        shared: What every item needs, shipped once per worker (module docstring).
        chunk_size: Items per task (default :func:`chunk_size_for`).
        tasks_per_worker: Tasks per worker of the default chunking.
        min_chunk: Smallest default chunk.
        on_chunk: Called here with the number of items of every finished chunk whose results are returned, in
            order (progress bars).
        label: What an item is, for error messages: an item's exception gets the note ``"(raised by {label} k)"``
            (``k``: its index in ``items``), in the serial run too.
        thread_safe: False for items that change process-wide state while they run (torch's global random
            generator, GPyTorch settings, warning filters): in threads of this process (a ``ThreadPoolExecutor``,
            Dask workers with ``processes=False``) they then run one at a time, as in the serial run.
        last_needed: Called here with an item's index and result as each result arrives: the index of the last
            item whose result is still needed (e.g. a fit stopped in this attempt needs no later attempt), or
            ``None``. The results after the smallest such index are not returned (nor their exceptions raised),
            and their tasks are cancelled (module docstring, *Cancellation*); serially, those items do not run.

    Returns:
        The results, one per item, in order (the first ``m + 1`` only, for the smallest index ``m`` returned by
        ``last_needed``). An item's exception (the first in item order) is raised here with its type and message
        (the remaining tasks are cancelled), or as a ``RuntimeError`` giving them when it cannot be pickled back
        from a worker process; warnings raised in worker processes are re-issued here.

    Raises:
        TypeError: For an ``executor`` without ``submit``, or a ``shared`` object that cannot be pickled.
        RuntimeError: For a pool that has been shut down or the executor of a closed Dask client.
    """
    check_executor(executor)
    items = list(items)
    if executor is None:
        out, limit = [], len(items) - 1
        for k, item in enumerate(items):
            if k > limit:
                break
            out.extend(_apply(fn, shared, [item], k, label, remote=False))
            if on_chunk is not None:
                on_chunk(1)
            cut = None if last_needed is None else last_needed(k, out[-1])
            limit = limit if cut is None else min(limit, cut)
        return out[: limit + 1]
    if not items:
        return []
    _check_open(executor)
    size = chunk_size_for(len(items), executor, tasks_per_worker, min_chunk) if chunk_size is None else int(chunk_size)
    if size < 1:
        raise ValueError(f"`chunk_size` must be >= 1, got {chunk_size!r}.")
    starts = range(0, len(items), size)
    chunks = [items[i : i + size] for i in starts]
    settings = numerics_snapshot()
    token = uuid.uuid4().hex
    calls = _Calls(token, len(items), starts, chunks, on_chunk, last_needed)
    _needed[token] = len(items) - 1
    task_token: str | _LimitFile = token
    if isinstance(executor, ProcessPoolExecutor):
        fd, path = tempfile.mkstemp(prefix="gpgeom-needed-")
        os.close(fd)
        calls.file = path
        _write_limit(path, len(items) - 1)
        task_token = _LimitFile(token, path)
    try:
        with _share(executor, shared) as ref:
            if _is_dask(executor):
                try:
                    return _map_dask(executor, fn, calls, ref, settings, label, thread_safe)
                except TimeoutError as err:
                    raise _no_workers(err) from err
            futures = [
                executor.submit(
                    _run_chunk, fn, ref, chunk, process_identity(), settings, i, label, True, thread_safe, task_token
                )
                for i, chunk in zip(starts, chunks)
            ]
            try:
                if all(isinstance(f, Future) for f in futures):
                    ended: queue.Queue[int] = queue.Queue()  # the chunks whose tasks end, in the order they end
                    for i, fut in enumerate(futures):
                        fut.add_done_callback(functools.partial(_put_index, ended, i))
                    while calls.missing:  # one wake-up per task that ends: no scan of every task per arrival
                        i = ended.get()
                        if i < calls.n_needed and i not in calls.outcomes:
                            calls.arrived(i, futures[i].result)
                            calls.cancel(futures, lambda f: f.cancel())
                else:  # futures of another kind: read in order
                    for i in range(len(futures)):
                        if i >= calls.n_needed:
                            break
                        calls.arrived(i, futures[i].result)
                        calls.cancel(futures, lambda f: f.cancel())
                return calls.results()
            finally:
                _needed.pop(token, None)  # what still runs here stops at its next check_needed
                for fut in futures:
                    fut.cancel()
                if not thread_safe and isinstance(executor, ThreadPoolExecutor):
                    wait_futures(futures)  # they restore process-wide state when they end (module docstring)
    finally:
        _needed.pop(token, None)
        if calls.file is not None:
            with contextlib.suppress(OSError):
                os.remove(calls.file)  # what still runs in the workers stops at its next check_needed
        if not thread_safe:  # an item still running in a thread here (Dask, processes=False) holds the lock until it
            with _state_lock:  # has stopped and restored the process-wide state; one not started is skipped
                pass


class _Calls:
    r"""The bookkeeping of one :func:`map_items` call on an executor: the chunks' results or exceptions as they
    arrive (in any order), the last item still needed (``limit``, lowered by an exception or by ``last_needed``;
    mirrored in :data:`_needed` for the items running in threads of this process), the progress reported in chunk
    order, and the results in item order (or the first exception in item order) once every needed chunk is in."""

    def __init__(
        self,
        token: str,
        n: int,
        starts: Sequence[int],
        chunks: list[list[Any]],
        on_chunk: Callable[[int], None] | None,
        last_needed: Callable[[int, Any], int | None] | None,
    ) -> None:
        self.token, self.limit, self.starts, self.chunks = token, n - 1, starts, chunks
        self.on_chunk, self.last_needed = on_chunk, last_needed
        self.outcomes: dict[int, tuple[bool, Any]] = {}  # chunk -> (ok, (results, warnings) or the exception)
        self.reported = 0
        self.n_needed = self.missing = self.uncancelled = len(chunks)  # needed chunks; those not in; not cancelled
        self.file: str | None = None  # where the workers of a ProcessPoolExecutor read ``limit``
        self.publish: Callable[[int], Any] | None = None  # sets the Dask variable where the workers read ``limit``

    def needed(self) -> range:
        r"""The chunks whose results (or exceptions) are needed: those that start at or before ``limit``."""
        return range(self.n_needed)

    def arrived(self, i: int, result: Callable[[], Any]) -> None:
        r"""Chunk ``i`` has ended: ``result()`` returns its task's result or raises its exception."""
        self.missing -= i < self.n_needed and i not in self.outcomes
        try:
            task_result = result()
        except Exception as err:  # the first exception in item order is raised; no later item is needed
            self.outcomes[i] = (False, err)
            self._lower(self.starts[i] + len(self.chunks[i]) - 1)
        else:
            self.outcomes[i] = (True, task_result)
            if self.last_needed is not None:
                for k, value in enumerate(task_result[0]):
                    if value is _SKIPPED or self.starts[i] + k > self.limit:
                        break
                    cut = self.last_needed(self.starts[i] + k, value)
                    if cut is not None:
                        self._lower(cut)
        while self.on_chunk is not None and self.reported in self.outcomes and self.reported < self.n_needed:
            if self.outcomes[self.reported][0]:
                self.on_chunk(len(self.chunks[self.reported]))
            self.reported += 1

    def _lower(self, limit: int) -> None:
        if limit >= self.limit:
            return
        self.limit = limit
        self.n_needed = bisect.bisect_right(self.starts, limit)  # the chunks that start at or before it
        self.missing = sum(1 for i in range(self.n_needed) if i not in self.outcomes)
        _needed[self.token] = self.limit
        if self.file is not None:
            _write_limit(self.file, self.limit)
        if self.publish is not None:
            self.publish(self.limit)

    def cancel(self, futures: Sequence[Any], cancel: Callable[[Any], Any]) -> list[int]:
        r"""Cancel the tasks of the chunks that are not needed and have not ended; returns their indices."""
        stop = min(self.uncancelled, len(futures))  # (Dask: the chunks submitted so far)
        out = [i for i in range(self.n_needed, stop) if futures[i] is not None and i not in self.outcomes]
        self.uncancelled = min(self.uncancelled, self.n_needed)
        for i in out:
            cancel(futures[i])
        return out

    def results(self) -> list[Any]:
        r"""The needed items' results in order (warnings re-issued), or the first exception in item order."""
        out: list[Any] = []
        for i in self.needed():
            ok, value = self.outcomes[i]
            if not ok:
                raise value
            _collect(value, out)
        out = out[: self.limit + 1]
        skipped = next((k for k, v in enumerate(out) if v is _SKIPPED), None)
        if skipped is not None:  # a worker that misread the limit must fail loudly, not hand back a marker
            raise RuntimeError(
                f"map_items: item {skipped} is needed (the call's last needed item is {self.limit}) but its task "
                "skipped it; this is a bug in gpgeom's cancellation bookkeeping, please report it."
            )
        return out


def _put_index(ended: queue.Queue[int], i: int, _: Future) -> None:
    ended.put(i)


def _collect(task_result: tuple[list[Any], list[Warning]], out: list[Any]) -> None:
    r"""Append a task's results to ``out`` and re-issue the warnings it recorded, attributed to the line
    outside gpgeom that led to :func:`map_items` (:func:`~gpgeom._warnings.user_stacklevel`)."""
    results, caught = task_result
    for message in caught:
        warnings.warn(message, stacklevel=user_stacklevel())
    out.extend(results)


def _map_dask(
    executor: Executor,
    fn: Callable[[Any, Any], Any],
    calls: _Calls,
    ref: object,
    settings: dict[str, Any],
    label: str,
    thread_safe: bool,
) -> list[Any]:
    r"""The chunks through a Dask client, client to worker and back without the scheduler in between.

    Each chunk is scattered straight to a worker (``direct=True``: by default a client outside the cluster sends
    data through the scheduler, which costs a second serialisation and a second copy in the scheduler's process,
    the caller's own on a ``LocalCluster``), then its task is submitted at once, so the first tasks run while the
    later chunks travel; the results are gathered from the workers directly, as they end (each future reports its
    end to a queue, ``Future.add_done_callback``), and the tasks no longer needed are cancelled (``client.cancel``)."""
    client = executor._client
    options = {**getattr(executor, "_kwargs", {}), "pure": False}
    futures: list[Any] = []
    token: str | _DaskLimit = calls.token
    variable = None
    try:  # the limit, where the workers' check_needed reads it; set before any task is submitted
        from distributed import Variable

        variable = Variable(f"gpgeom-needed-{calls.token}", client=client)
        variable.set(calls.limit)
        calls.publish = functools.partial(_publish, variable)
        token = _DaskLimit(calls.token, variable.name, process_identity())
    except Exception:  # noqa: BLE001 - a scheduler without variables: the running tasks then run to their end
        variable = None
    ended: queue.Queue[int] = queue.Queue()  # the chunks whose tasks end (or are cancelled), in the order they end
    cancelled = [False]  # whether a task was cancelled (it may still run on its worker)

    def take_ended(i: int) -> None:
        # read chunk i's task, which has ended, if its result is still needed, then cancel the tasks no longer needed;
        # a read or cancelled future is dropped (its result and chunk are released as soon as they are read). One call
        # per task that ends: no scan of every task per arrival (that was quadratic in the number of chunks)
        if futures[i] is not None and i < calls.n_needed and i not in calls.outcomes:
            calls.arrived(i, functools.partial(client.gather, futures[i], direct=True))
            futures[i] = None
        for j in calls.cancel(futures, lambda f: client.cancel([f])):
            futures[j] = None
            cancelled[0] = True

    try:
        for start, chunk in zip(calls.starts, calls.chunks):
            if start > calls.limit:  # an earlier task stopped the call: not even sent
                futures.append(None)
                continue
            [data] = client.scatter([chunk], workers=options.get("workers"), hash=False, direct=True)
            args = (fn, ref, data, process_identity(), settings, start, label, False, thread_safe, token)
            futures.append(client.submit(_run_chunk, *args, **options))
            futures[-1].add_done_callback(functools.partial(_put_index, ended, len(futures) - 1))
            with contextlib.suppress(queue.Empty):
                while True:  # the tasks that ended while this chunk travelled
                    take_ended(ended.get_nowait())
        while calls.missing:  # every needed chunk was submitted (the limit only falls) and reports its end once
            take_ended(ended.get())
        return calls.results()
    finally:
        running = [f for f in futures if f is not None]  # tasks that may still run (their results are not needed)
        client.cancel(running)
        if variable is not None:
            _release(variable, bool(running) or cancelled[0])

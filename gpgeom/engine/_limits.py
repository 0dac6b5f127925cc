r"""The limit of a :func:`gpgeom.engine.parallel.map_items` call (the index of the last item whose result is still
needed) as the call publishes it and as its tasks read it, in any process (the *Cancellation* of
:mod:`gpgeom.engine.parallel`): a dict of this process for its own threads, a file for the workers of a
``ProcessPoolExecutor``, a ``distributed.Variable`` for Dask workers. The limit only falls, so a reader that holds
an older value only stops later; the worker processes read it at most every :data:`_POLL_S` seconds."""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

#: The calls of ``map_items`` in progress in this process: token -> the index of the last item whose result is
#: still needed (lowered by an item's exception or by ``last_needed``; the token is removed when the call ends).
_needed: dict[str, int] = {}
#: This process's pid and :func:`process_identity` (drawn again in a child process: its pid differs).
_identity: list[Any] = [0, ""]


def process_identity() -> str:
    r"""This process as a ``map_items`` call names it to its tasks (the caller): its pid and a random nonce drawn
    once per process. A task compares it with its own to know whether it runs in a thread of the caller (which
    shares the caller's settings and reads :data:`_needed`). The pid alone cannot tell: a Dask worker on another
    machine or in another container's PID namespace can have the caller's pid, and it then took every item for
    cancelled (``_needed`` there knows no call) and returned no result for any."""
    pid = os.getpid()
    if _identity[0] != pid:
        _identity[:] = [pid, f"{pid}-{uuid.uuid4().hex}"]
    return _identity[1]


@dataclass(frozen=True)
class _LimitFile:
    r"""The token of a ``map_items`` call for the tasks of a ``ProcessPoolExecutor``: the file (on this machine)
    where the call keeps the index of the last item still needed, read by ``check_needed`` in the workers."""

    token: str
    path: str


@dataclass(frozen=True)
class _DaskLimit:
    r"""The token of a ``map_items`` call for the tasks of a Dask client: the ``distributed.Variable`` ``name``
    where the call keeps the index of the last item still needed (set when the call starts, -1 when it ends), polled
    by ``check_needed`` in the workers; ``parent``: the caller's :func:`process_identity` (a task running in a
    thread of that process reads :data:`_needed`)."""

    token: str
    name: str
    parent: str


#: Seconds between two reads of a call's limit by a worker process: the limit file of a ``ProcessPoolExecutor`` (a
#: read costs about 10 us, a loss evaluation may call ``check_needed`` thousands of times a second) and the
#: ``distributed.Variable`` of a Dask call (a round trip to the scheduler; the first one from a worker also connects
#: the worker's client). A task stops that much later at worst.
_POLL_S = {_LimitFile: 0.01, _DaskLimit: 0.2}
#: Per worker process: call token -> (the limit last read, when to read it again).
_polled: dict[str, tuple[int, float]] = {}
_UNKNOWN = 2**62  # the limit of a call before its first read: every item needed


def _limit(token: str | _LimitFile | _DaskLimit) -> int:
    r"""The index of the last item still needed by the call ``token`` (-1 once the call has ended); in a worker
    process, read at most every :data:`_POLL_S` seconds (the limit only falls, so a stale value only delays a stop)."""
    if isinstance(token, str):
        return _needed.get(token, -1)
    now = time.monotonic()
    polled = _polled.get(token.token)  # only ever set in worker processes
    if polled is None:
        if isinstance(token, _DaskLimit):
            if token.parent == process_identity():  # a thread of the calling process
                return _needed.get(token.token, -1)
            polled = _polled[token.token] = (_UNKNOWN, now + _POLL_S[_DaskLimit])  # short tasks: no round trip
        else:
            polled = (_UNKNOWN, now)
    value, when = polled
    if value < 0 or now < when:
        return value
    value = _read_file(token) if isinstance(token, _LimitFile) else _read_variable(token, value)
    _polled[token.token] = (value, now + _POLL_S[type(token)])
    while len(_polled) > 64:  # calls long ended (another task thread of this worker may be dropping them too)
        with contextlib.suppress(KeyError, RuntimeError, StopIteration):
            _polled.pop(next(iter(_polled)))
    return value


def _read_file(token: _LimitFile) -> int:
    try:
        with open(token.path, "rb") as fh:
            return int(fh.read())
    except (OSError, ValueError):  # the call ended and removed its file
        return -1


def _read_variable(token: _DaskLimit, last: int) -> int:
    r"""The call's limit from its ``distributed.Variable`` (-1 when the call has deleted it), or ``last`` when the
    worker cannot reach the scheduler (the item then runs on, as it would without a limit)."""
    try:
        from distributed import Variable, get_client

        client = get_client()  # its first connection may time out (TimeoutError): that says nothing of the call
    except Exception:  # noqa: BLE001 - no scheduler reached: the limit is unknown, nothing is stopped
        return last
    try:
        return int(Variable(token.name, client=client).get(timeout=0))
    except TimeoutError:  # the scheduler has no such variable: the call has ended (it set it before any task)
        return -1
    except Exception:  # noqa: BLE001 - no scheduler reached: the limit is unknown, nothing is stopped
        return last


def _write_limit(path: str, limit: int) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(str(limit).encode())
    os.replace(tmp, path)  # atomic: a worker reads the old or the new value


def _publish(variable: Any, limit: int) -> None:
    with contextlib.suppress(Exception):  # a lost scheduler: the running tasks run to their end (results dropped)
        variable.set(limit)


#: Seconds a Dask call's variable outlives a call whose tasks may still run: they read -1 there (the call has ended)
#: and stop. A read of a deleted variable also answers -1, but the scheduler then logs a ``TimeoutError``.
_VARIABLE_GRACE_S = 10.0


def _release(variable: Any, running: bool) -> None:
    r"""Delete a Dask call's variable: at once when none of its tasks can still run, else once they have read -1,
    :data:`_VARIABLE_GRACE_S` later, by the scheduler itself (:func:`_delete_later`), so that the variable goes also
    when the client closes first (a user's client on a scheduler that outlives it: ``with Client(address) as c:``
    around a fit whose attempts stop early). Only a scheduler that cannot run it (gpgeom not importable there, or
    pickled functions refused) leaves the deletion to a timer of this process, which a closed client skips."""
    if not running:
        with contextlib.suppress(Exception):
            variable.delete()
        return
    _publish(variable, -1)
    try:
        variable.client.run_on_scheduler(_delete_later, variable.name, _VARIABLE_GRACE_S)
        return
    except Exception:  # noqa: BLE001, S110 - the timer below instead
        pass
    timer = threading.Timer(_VARIABLE_GRACE_S, _delete_quietly, (variable,))
    timer.daemon = True
    timer.start()


def _delete_later(name: str, delay: float, dask_scheduler: Any = None) -> None:
    r"""On the scheduler (``Client.run_on_scheduler``, in its event loop): delete the variable ``name`` in ``delay``
    seconds, unless the scheduler has stopped running by then."""
    import asyncio

    def delete() -> None:
        if getattr(dask_scheduler.status, "name", None) == "running":
            asyncio.ensure_future(dask_scheduler.extensions["variables"].delete(name=name))

    asyncio.get_running_loop().call_later(delay, delete)


def _delete_quietly(variable: Any) -> None:
    with contextlib.suppress(Exception):  # the client has closed meanwhile: the variable stays on the scheduler
        variable.delete()

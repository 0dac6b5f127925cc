r"""A fit on an executor stops the work it no longer needs: when the objective stops the fit (``StopIteration``) in
an attempt, the tasks of the later attempts are cancelled, or stop at their next evaluation (threads of this
process, workers of a ``ProcessPoolExecutor``); the same after an error that ends the fit. The result is bit-equal
to the one of a fit that runs every task to its end (the behaviour before), which is the reference here.

Every evaluation of the loss appends a line to a file (shared by threads and processes): ``S`` for the evaluation
that stops (or fails) the fit, ``a`` for the other evaluations of attempt 0, and for a task of a later attempt a tag
of its own (``pid-k``: one per task, a copy of the loss). The later attempts' tasks that evaluate after the ``S``
are those that were running, or started before this process read the stopped attempt: at most one per worker.
Before, every task ran to its end (a reviewer's probe: 176 evaluations after a stop at evaluation 2; in the
CHANGELOG's probe, 340 of 342 evaluations ran after a stop at the 2nd)."""

from __future__ import annotations

import builtins
import itertools
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import gpytorch
import pytest
import torch

import gpgeom.engine.attempts as attempts
from gpgeom.botorch import ExactGPModel
from gpgeom.engine import parallel
from gpgeom.engine.exact_mll import exact_mll_loss
from gpgeom.engine.fitting import fit

D = torch.float64
WORKERS = 2
_letters = itertools.count()
_letters_lock = threading.Lock()


class _Loss:
    r"""``exact_mll_loss(model)`` (a batch of independent outputs that evaluates a subset of members), logging every
    evaluation to ``path``. ``later=False``: the copy that runs attempt 0's group of member 0 (the model at its start
    at the copy's first call) raises ``error`` at its ``at``-th evaluation; ``later=True``: the first copy of a later
    attempt to evaluate raises it at its first evaluation (while attempt 0's tasks may still run). A module-level
    class: workers import it by name."""

    accepts_batch_indices = True

    def __init__(self, model, path, at, error, later=False):
        self.inner, self.model, self.path, self.at, self.error = exact_mll_loss(model), model, path, at, error
        self.later = later
        self.start = [p.detach().clone() for p in model.parameters()]
        self.n, self.tag = 0, None

    def __getstate__(self):
        return {**self.__dict__, "n": 0, "tag": None}  # every task's copy counts its own evaluations

    def __call__(self, batch_indices=None):
        if self.tag is None:  # the copy's first evaluation: at its attempt's start
            at_start = all(torch.allclose(p, q, rtol=1e-9, atol=0) for p, q in zip(self.model.parameters(), self.start))
            if at_start:
                self.tag = b"a"
            else:
                with _letters_lock:
                    self.tag = f"{os.getpid()}-{next(_letters)}".encode()
        self.n += 1
        if self.later:
            stop = self.tag != b"a" and self.n == 1 and _claim(f"{self.path}.claimed")
        else:
            stop = self.tag == b"a" and batch_indices is not None and 0 in list(batch_indices) and self.n == self.at
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, (b"S" if stop else self.tag) + b"\n")
        finally:
            os.close(fd)
        if stop:
            raise self.error
        return self.inner() if batch_indices is None else self.inner(batch_indices=batch_indices)


def _claim(path) -> bool:
    r"""True for the first caller only (in any process)."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


def _model() -> ExactGPModel:
    g = torch.Generator().manual_seed(0)
    X = torch.rand(30, 2, generator=g, dtype=D)
    Y = torch.cat([torch.sin((3 + j) * X[:, :1]) + torch.cos((2 + j) * X[:, 1:]) for j in range(4)], 1)
    return ExactGPModel(X, Y)


def _fit(executor, path, error=StopIteration, every_task=False, monkeypatch=None, later=False):
    r"""4 attempts in 2 groups of members each (8 tasks on 2 workers); ``every_task``: every task runs to its end
    (no ``last_needed``: the behaviour before), the reference."""
    model = _model()
    if every_task:

        def map_all(*args, last_needed=None, **kwargs):
            return parallel.map_items(*args, **kwargs)

        monkeypatch.setattr(attempts, "map_items", map_all)
    loss = _Loss(model, path, 2, error(), later)
    try:
        res = fit(loss, module=model, optimizer="lbfgs", executor=executor, split_members=True, restarts=3, seed=1,
                  max_iter=30, progress=False)  # fmt: skip
    finally:
        if every_task:
            monkeypatch.undo()
    return res, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _later_tasks(path) -> tuple[set[bytes], set[bytes], int]:
    r"""The later attempts' tasks that evaluated before and after the stop, and their evaluations after it."""
    with open(path, "rb") as fh:
        log = fh.read().split()
    assert log.count(b"S") == 1
    cut = log.index(b"S")
    before = {t for t in log[:cut] if t != b"a"}
    after = [t for t in log[cut + 1 :] if t != b"a"]
    return before, set(after), len(after)


def _assert_same(a, b) -> None:
    (ra, sa), (rb, sb) = a, b
    assert (ra.stopped, ra.attempts, ra.best_attempt, ra.failures) == (rb.stopped, rb.attempts, rb.best_attempt,
                                                                       rb.failures)  # fmt: skip
    assert ra.loss == rb.loss and ra.final_losses == rb.final_losses and ra.history == rb.history
    assert ra.member_attempts == rb.member_attempts and ra.converged == rb.converged and ra.jitter == rb.jitter
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_a_stop_cancels_the_later_attempts(tmp_path, monkeypatch, kind):
    pool = ThreadPoolExecutor if kind == "threads" else ProcessPoolExecutor
    with pool(WORKERS) as ex:
        ref = _fit(ex, tmp_path / "ref", every_task=True, monkeypatch=monkeypatch)
    with pool(WORKERS) as ex:
        new = _fit(ex, tmp_path / "new")
    assert new[0].stopped and new[0].attempts == 1
    _assert_same(new, ref)
    _, ref_after, ref_evals = _later_tasks(tmp_path / "ref")
    _, after, evals = _later_tasks(tmp_path / "new")
    assert len(ref_after) >= 4  # before: the later attempts' tasks ran on after the stop (6 tasks here)
    assert len(after) <= WORKERS, after  # now: those running (or started) when the stop arrived, at most one a worker
    assert evals < ref_evals


@pytest.mark.parametrize("later", [False, True])
def test_an_error_that_ends_the_fit_cancels_the_later_tasks(tmp_path, monkeypatch, later):
    r"""An exception of the loss (not a Cholesky failure) ends the fit: the same exception as a fit running every
    task, and the tasks after the one that raised stop (at most one a worker evaluates after it). ``later``: the
    exception comes from a later attempt, possibly while attempt 0's tasks still run: those are still awaited (an
    exception of theirs would come first), the tasks after the one that raised are not. Before, the queued tasks
    were cancelled too, but only once the results before the exception had been read in order, and the running
    ones ran to their end; whether that let more tasks run depends on the order in which the workers take them,
    so this test guards the result more than the count."""
    err = lambda: ValueError("boom")  # noqa: E731
    with ThreadPoolExecutor(WORKERS) as ex:
        with pytest.raises(ValueError, match="boom") as ref:
            _fit(ex, tmp_path / "ref", error=err, every_task=True, monkeypatch=monkeypatch, later=later)
    with ThreadPoolExecutor(WORKERS) as ex:
        with pytest.raises(ValueError, match="boom") as new:
            _fit(ex, tmp_path / "new", error=err, later=later)
    assert type(new.value) is type(ref.value) and str(new.value) == str(ref.value)
    if not later:  # the same task raised in both
        assert new.value.__notes__ == ref.value.__notes__
    _, after, _ = _later_tasks(tmp_path / "new")
    assert len(after) <= WORKERS, after


def test_map_items_returns_the_items_still_needed_and_skips_the_rest():
    r"""``last_needed`` at the plumbing level: item 2 says that nothing after it is needed. Serially the items after
    it do not run; on a thread pool of 2 workers (8 tasks) items 0-2 come back exactly, and of the later items only
    those already started when item 2's result was read run (each later item that starts waits until then, so
    that a worker cannot go on to another item: 3 and 4 at most); the others are skipped (before: all 8 ran)."""
    ran: list[int] = []
    read = threading.Event()  # item 2's result has been read (on_chunk is called after it, in order)
    done = [0]

    def on_chunk(n):
        done[0] += n
        if done[0] == 3:
            read.set()

    def item(shared, k):
        if k > 2:
            assert read.wait(10)
        ran.append(k)
        return k * k

    def last_needed(k, r):
        return 2 if k == 2 else None

    assert parallel.map_items(None, item, range(8), last_needed=last_needed) == [0, 1, 4]
    assert ran == [0, 1, 2]
    ran.clear()
    with ThreadPoolExecutor(2) as ex:  # thread-safe items: the call does not wait for those it no longer needs
        out = parallel.map_items(ex, item, range(8), chunk_size=1, on_chunk=on_chunk, last_needed=last_needed)
    assert out == [0, 1, 4]
    # the pool has shut down: every item that ran has ended; after item 2, only those already started (those that
    # a worker took before item 2's result was read: 3 and 4 at most, one a worker), never 5, 6 or 7
    assert sorted(ran)[:3] == [0, 1, 2] and set(ran) <= {0, 1, 2, 3, 4}


_running = [0]  # items of the call running now


def _seeding_item(shared, k):
    r"""A not-thread-safe item, as a fit attempt: seeds torch's global stream and sets a GPyTorch setting while it
    runs. Item 0 ends at once; a later item runs for 0.4 s, calling ``check_needed`` every 10 ms."""
    _running[0] += 1  # the items run one at a time (under parallel._state_lock)
    try:
        with torch.random.fork_rng(), gpytorch.settings.cholesky_max_tries(1):
            torch.manual_seed(1000 + k)
            for _ in range(40 if k else 0):
                time.sleep(0.01)
                parallel.check_needed()
        return k
    finally:
        _running[0] -= 1


def test_a_stop_on_dask_threads_returns_once_the_running_items_have_restored_the_state():
    r"""A Dask cluster of threads in this process (``processes=False``) runs a ``thread_safe=False`` call's items one
    at a time, under :data:`parallel._state_lock`. When ``last_needed`` stops the call at item 0, an item already
    running stops at its next ``check_needed``; the call returns only once it has (as on a thread pool). Before, it
    returned while the item still ran: torch's global stream was still the item's seeded one, ``cholesky_max_tries``
    was 1 and an item still ran (4 of 5 calls in a probe)."""
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, processes=False, threads_per_worker=1, dashboard_address=None, silence_logs=40
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        for _ in range(5):
            torch.manual_seed(0)
            state, tries = torch.random.get_rng_state(), gpytorch.settings.cholesky_max_tries.value()
            out = parallel.map_items(client.get_executor(), _seeding_item, range(4), chunk_size=1, thread_safe=False,
                                     last_needed=lambda k, r: 0 if k == 0 else None)  # fmt: skip
            assert out == [0]
            assert _running[0] == 0 and torch.equal(torch.random.get_rng_state(), state)
            assert gpytorch.settings.cholesky_max_tries.value() == tries


EVALS = 5000  # loss evaluations of the long attempt below, 2 ms each (10 s at least)


def _long_attempt(folder, k):
    r"""Item 0 returns once item 1 runs (or after 20 s); item 1, an attempt of :data:`EVALS` loss evaluations of 2 ms,
    calls ``check_needed`` before each and writes how many it made when it ends, stopped or not. Module level:
    Dask's worker processes import it by name."""
    if k == 0:
        deadline = time.monotonic() + 20
        while not os.path.exists(os.path.join(folder, "started")) and time.monotonic() < deadline:
            time.sleep(0.01)
        return 0
    with open(os.path.join(folder, "started"), "w"):
        pass
    n = 0
    try:
        for _ in range(EVALS):
            parallel.check_needed()
            time.sleep(0.002)
            n += 1
    finally:
        with open(os.path.join(folder, "evaluations.tmp"), "w") as fh:
            fh.write(str(n))
        os.replace(os.path.join(folder, "evaluations.tmp"), os.path.join(folder, "evaluations"))
    return n


def test_an_attempt_running_on_a_dask_worker_stops_at_its_next_check(tmp_path):
    r"""Two worker processes: item 0 ends while item 1 (an attempt of 5,000 evaluations, 10 s at least) runs on the
    other worker, and ``last_needed`` says nothing after item 0 is needed. Item 1 reads the call's limit from a
    ``distributed.Variable`` in ``check_needed`` (at most every 0.2 s) and stops: about a hundred evaluations (88-95
    of 2,000 in the CHANGELOG's runs; fewer than a quarter required, room for a slow first connection of the
    worker's client). Before, Dask workers had no way to read the limit and item 1 made every evaluation, its result
    dropped."""
    distributed = pytest.importorskip("distributed")
    import dask

    with dask.config.set(parallel.DASK_SETTINGS):
        cluster = distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None, silence_logs=40
        )
    with cluster, distributed.Client(cluster) as client:
        out = parallel.map_items(client.get_executor(), _long_attempt, range(2), shared=str(tmp_path), chunk_size=1,
                                 last_needed=lambda k, r: 0)  # fmt: skip
        assert out == [0]
        deadline = time.monotonic() + 60
        while not (tmp_path / "evaluations").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        evaluations = int((tmp_path / "evaluations").read_text())
    assert 1 <= evaluations < EVALS // 4, evaluations


def test_a_process_worker_reads_the_limit_file_at_most_every_poll_and_sees_it_fall(tmp_path, monkeypatch):
    r"""``check_needed`` in a ``ProcessPoolExecutor``'s worker reads the call's limit file at most once per
    10 ms and sees a lowered limit at its first check after that. Before, every check opened and read
    the file (2,000 reads for 2,000 checks here, about 10 us each: a loss evaluation calls it every time)."""
    poll = 0.01
    path = str(tmp_path / "limit")
    parallel._write_limit(path, 5)
    token = parallel._LimitFile(f"test-{os.getpid()}-{time.monotonic_ns()}", path)
    opened = []
    real_open = open

    def counting_open(file, *args, **kwargs):
        if str(file) == path:
            opened.append(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)  # the worker's reads of the file, wherever they are made
    saved = getattr(parallel._current, "item", None)
    parallel._current.item = (token, 3)  # item 3 of the call runs here
    try:
        start = time.monotonic()
        for _ in range(2000):
            parallel.check_needed()
        elapsed = time.monotonic() - start
        assert 1 <= len(opened) <= 2 + elapsed / poll, (len(opened), elapsed)
        parallel._write_limit(path, 2)  # item 3 is no longer needed
        time.sleep(poll + 0.002)
        with pytest.raises(parallel._Cancelled):
            parallel.check_needed()
    finally:
        parallel._current.item = saved

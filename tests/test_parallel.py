r"""Tests of the executor fan-out (gpgeom.engine.parallel): MMGP, the engine's fit and the notched-plate generator
give the serial results through a Dask cluster of two worker processes and through a ProcessPoolExecutor; the
plumbing keeps item order, ships the shared object once per worker process, carries the caller's GPyTorch settings
and re-issues the workers' warnings."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import gpytorch
import numpy as np
import pytest
import torch

from gpgeom.botorch.exact_gp import ExactGPModel
from gpgeom.engine import parallel
from gpgeom.engine.attempts import plan_tasks
from gpgeom.engine.parallel import derive_seed, jobs_executor, map_items
from gpgeom.geometry.mesh import Mesh

DT = torch.float64


# ----------------------------------------------------------------------------------------------------------------
# executors, started and closed by the tests


@pytest.fixture(scope="module")
def dask_executor():
    distributed = pytest.importorskip(
        "distributed", reason="dask[distributed] is not installed (the `distributed` extra)"
    )
    import dask

    with dask.config.set(parallel.DASK_SETTINGS):  # the documented set-up; every Dask test below runs under it
        cluster = distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None, silence_logs=40
        )
    client = distributed.Client(cluster)
    try:
        yield client.get_executor()
    finally:
        client.close()
        cluster.close()


@pytest.fixture(scope="module")
def pool():
    with ProcessPoolExecutor(max_workers=2) as ex:
        yield ex


# ----------------------------------------------------------------------------------------------------------------
# the plumbing (item functions at module level: workers import them by name)


def _pid_and_shared(shared, item):
    return item, os.getpid(), id(shared), float(shared.sum())


def _setting(shared, item):
    return gpytorch.settings.cholesky_max_tries.value(), torch.get_num_threads()


def _warn(shared, item):
    warnings.warn(f"item {item} warns", UserWarning, stacklevel=1)
    return item


def _fail(shared, item):
    if item == 3:
        raise ValueError("item 3 is bad")
    return item


def test_map_items_keeps_order_and_ships_the_shared_object_once_per_process(pool):
    big = np.arange(100_000, dtype=float)
    out = map_items(pool, _pid_and_shared, range(23), big, chunk_size=2)
    assert [o[0] for o in out] == list(range(23))
    assert all(o[3] == big.sum() for o in out)
    per_pid = {}
    for _, pid, ident, _ in out:
        per_pid.setdefault(pid, set()).add(ident)
    assert os.getpid() not in per_pid  # ran in the workers
    assert all(len(ids) == 1 for ids in per_pid.values()), per_pid  # one copy per worker process, reused
    # serial and thread pool: the same results, the object itself
    serial = map_items(None, _pid_and_shared, range(5), big)
    assert [o[2] for o in serial] == [id(big)] * 5
    with ThreadPoolExecutor(2) as threads:
        assert [o[2] for o in map_items(threads, _pid_and_shared, range(5), big)] == [id(big)] * 5


def test_dask_warnings_are_reissued_at_the_caller(dask_executor):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert map_items(dask_executor, _warn, range(4), chunk_size=2) == [0, 1, 2, 3]
    assert sorted(str(w.message) for w in caught) == [f"item {k} warns" for k in range(4)]
    assert {w.filename for w in caught} == {__file__}


def _worker_environment():
    import dask

    return (
        os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        os.environ.get("MALLOC_TRIM_THRESHOLD_"),
        dask.config.get("distributed.worker.profile.enabled"),
        dask.config.get("distributed.admin.tick.interval"),
    )


def test_dask_workers_started_under_the_settings_have_them(dask_executor):
    # the workers' glibc thresholds and Dask configuration are those of DASK_SETTINGS, not Dask's defaults
    # (MALLOC_TRIM_THRESHOLD_=65536 alone, profiler on, 20 ms ticks)
    found = dask_executor._client.run(_worker_environment)
    assert len(found) == 2
    expected = (str(32 * 2**20), str(64 * 2**20), False, "1s")
    assert all(tuple(v) == expected for v in found.values()), found
    assert set(parallel.DASK_SETTINGS) >= {
        "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_",
        "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_",
    }


def test_workers_get_the_callers_settings_one_thread_and_its_warnings(pool):
    with gpytorch.settings.cholesky_max_tries(7):
        out = map_items(pool, _setting, range(4), chunk_size=1)
    assert out == [(7, 1)] * 4
    assert map_items(pool, _setting, range(2), chunk_size=1)[0][0] == gpytorch.settings.cholesky_max_tries.value()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert map_items(pool, _warn, range(4), chunk_size=2) == [0, 1, 2, 3]
    assert sorted(str(w.message) for w in caught) == [f"item {k} warns" for k in range(4)]
    assert {w.filename for w in caught} == {__file__}  # re-issued at the caller of map_items
    with pytest.raises(ValueError, match="item 3 is bad"):
        map_items(pool, _fail, range(6), chunk_size=1)


class _TwoArgError(Exception):
    r"""An exception pickle cannot rebuild (``__init__`` takes two arguments, ``args`` holds one)."""

    def __init__(self, code, where):
        super().__init__(f"code {code} at {where}")


def _fail_two_args(shared, item):
    if item == 2:
        raise _TwoArgError(7, "node 5")
    return item * 10


class _LockedError(_TwoArgError):
    r"""An exception no pickling rebuilds, also where ``tblib``'s pickling support is installed (importing Dask's
    ``distributed`` installs it, and it rebuilds ``_TwoArgError`` by ``__new__``): it holds a lock."""

    def __init__(self, code, where):
        super().__init__(code, where)
        self.lock = threading.Lock()


def _fail_locked(shared, item):
    if item == 2:
        raise _LockedError(7, "node 5")
    return item * 10


def test_a_worker_error_names_the_item_and_one_pickle_cannot_rebuild_leaves_the_pool_usable(pool):
    # the truth: the serial run raises the item's own exception, and the note names the item
    with pytest.raises(_TwoArgError, match="code 7 at node 5") as serial:
        map_items(None, _fail_two_args, range(4), label="GP")
    assert serial.value.__notes__ == ["(raised by GP 2)"]
    with pytest.raises(ValueError, match="item 3 is bad") as err:  # a picklable exception keeps its type
        map_items(pool, _fail, range(6), chunk_size=2, label="GP")
    assert err.value.__notes__ == ["(raised by GP 3)"]
    # the old code let the pool's result thread fail to rebuild it: BrokenProcessPool, and every later call refused
    with pytest.raises(RuntimeError, match=r"GP 2 raised .*_LockedError: code 7 at node 5 \(the exception cannot"):
        map_items(pool, _fail_locked, range(4), chunk_size=1, label="GP")
    assert map_items(pool, _fail_two_args, [0, 1, 3]) == map_items(None, _fail_two_args, [0, 1, 3])
    with pytest.raises(TypeError, match=r"Cannot ship lock .*pickling it fails .*cannot pickle"):
        map_items(pool, _fail, range(2), threading.Lock())


def test_an_exception_no_pickle_rebuilds_leaves_a_pool_usable_under_tblibs_pickling():
    r"""Importing Dask's ``distributed`` installs ``tblib``'s pickling of exceptions, which also pickles an exception's
    ``__context__``. The worker's replacement of an exception pickle cannot rebuild was raised inside the handler, so
    its context was that exception: sending it back failed again and broke the pool ("A process in the process pool
    was terminated abruptly"; every later call refused). Now it is raised with no context."""
    pytest.importorskip("distributed")
    import distributed  # noqa: F401 - installs tblib's pickling support, process-wide (as any Dask user has it)

    with ProcessPoolExecutor(max_workers=2) as ex:
        with pytest.raises(RuntimeError, match=r"GP 2 raised .*_LockedError: code 7 at node 5 \(the exception cannot"):
            map_items(ex, _fail_locked, range(4), chunk_size=1, label="GP")
        assert map_items(ex, _fail_locked, [0, 1, 3]) == [0, 10, 30]


def test_dask_sends_back_the_item_exception_pickle_cannot_rebuild(dask_executor):
    # Dask rebuilds it itself: the serial run's type and message, with the note naming the item
    with pytest.raises(_TwoArgError, match="code 7 at node 5") as err:
        map_items(dask_executor, _fail_two_args, range(4), chunk_size=2, label="GP")
    assert err.value.__notes__ == ["(raised by GP 2)"]


def test_a_shut_down_pool_or_a_closed_dask_client_is_named(dask_executor):
    import distributed

    with ProcessPoolExecutor(1) as closed:
        assert map_items(closed, _fail, [0, 1]) == map_items(None, _fail, [0, 1])
    with pytest.raises(RuntimeError, match="`executor` is a ProcessPoolExecutor that has been shut down"):
        map_items(closed, _fail, [0, 1])
    client = distributed.Client(dask_executor._client.scheduler.address)
    client.close()
    with pytest.raises(RuntimeError, match="`executor` is the executor of a Dask client that is closed"):
        map_items(client.get_executor(), _fail, [0, 1])  # was "IOLoop is closed"
    assert map_items(dask_executor, _fail, [0, 1, 2]) == [0, 1, 2]  # the cluster's other client is untouched


def test_a_dask_cluster_without_workers_is_named():
    distributed = pytest.importorskip("distributed")
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):  # how long a scatter waits for workers
        with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster:
            with distributed.Client(cluster) as client:
                for shared in (None, np.ones(3)):  # the chunks' scatter, the shared object's broadcast
                    with pytest.raises(RuntimeError, match="`executor` .* cluster has no running worker"):
                        map_items(client.get_executor(), _fail, [0, 1], shared)  # was TimeoutError


def test_seeds_chunks_and_executor_options():
    assert derive_seed(0, 1) == derive_seed(0, 1)
    assert len({derive_seed(0, k) for k in range(50)} | {derive_seed(1, k) for k in range(50)}) == 100
    assert 0 <= derive_seed(-3, 2**70) < 2**63
    assert parallel.chunk_size_for(400, ProcessPoolExecutor(2), tasks_per_worker=4) == 50
    with pytest.raises(TypeError, match="concurrent.futures.Executor"):
        map_items(object(), _setting, [1])
    with pytest.raises(ValueError, match="either `executor` or `n_jobs`"):
        with jobs_executor(ThreadPoolExecutor(1), 2):
            pass
    with jobs_executor(None, 1) as ex:
        assert ex is None


def test_importing_gpgeom_does_not_import_dask():
    code = (
        "import sys, gpgeom.engine.parallel, gpgeom.engine.fitting, gpgeom.models.mmgp, gpgeom.datasets.notched_plate; "
        "print(sorted(m for m in ('dask', 'distributed') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------------------------------------------
# the engine's fit: restarts as tasks


def _gp(fast: bool = True) -> ExactGPModel:
    g = torch.Generator().manual_seed(0)
    X = torch.rand(50, 3, generator=g, dtype=DT)
    Y = torch.cat(
        [torch.sin(6 * X[:, :1]) + 0.1 * torch.randn(50, 1, generator=g, dtype=DT), torch.cos(3 * X[:, 1:2])], 1
    )
    model = ExactGPModel(X, Y)
    model.fast_mll = fast  # True: closed-form loss (a closure); False: GPyTorch's ExactMarginalLogLikelihood
    return model


def _same_fit(a: ExactGPModel, b: ExactGPModel, tol: float = 0.0, param_tol: float = 0.0) -> None:
    r"""The same fit: bitwise (``tol=0``), or losses up to ``tol`` and parameters up to ``param_tol`` (relative)."""
    ra, rb = a.fit_result_, b.fit_result_
    assert ra.best_attempt == rb.best_attempt and ra.member_attempts == rb.member_attempts and ra.jitter == rb.jitter
    assert [len(h) for h in ra.history] == [len(h) for h in rb.history]
    if tol == 0.0:
        assert ra.loss == rb.loss and ra.final_losses == rb.final_losses and ra.history == rb.history
    else:
        assert rb.loss == pytest.approx(ra.loss, rel=tol, abs=0)
        assert rb.final_losses == pytest.approx(ra.final_losses, rel=tol, abs=0)
        for ha, hb in zip(ra.history, rb.history):
            assert hb == pytest.approx(ha, rel=tol, abs=0)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=param_tol, atol=0, equal_nan=True, msg=k)
    assert torch.equal(a.train_targets, b.train_targets)


def test_tasks_are_attempts_or_groups_of_members():
    assert [t[0] for t in plan_tasks(6, 2, 2)] == list(range(6)) and all(t[1] is None for t in plan_tasks(6, 2, 2))
    assert all(t[1] is None for t in plan_tasks(3, None, 4))  # no members to split: one task per attempt
    tasks = plan_tasks(2, 5, 2)  # 2 attempts, 5 members, 2 workers: 3 groups per attempt
    assert [t[0] for t in tasks] == [0, 0, 0, 1, 1, 1]
    assert [t[1].tolist() for t in tasks[:3]] == [[0, 3], [1, 4], [2]]


@pytest.mark.parametrize(
    ("how", "fast", "restarts"),
    [("dask", True, 3), ("dask", True, 1), ("pool", False, 3)],
    ids=["restarts-closed-form-loss", "member-groups", "restarts-gpytorch-mll"],
)
def test_engine_fit_with_an_executor_equals_the_serial_fit(request, how, fast, restarts):
    executor = request.getfixturevalue("dask_executor" if how == "dask" else "pool")
    serial = _gp(fast).fit(restarts=restarts, seed=5, max_iter=50, progress=False)
    assert len(set(serial.fit_result_.final_losses)) == restarts + 1  # the attempts differ: not a vacuous check
    groups = fast and restarts == 1  # 2 outputs, 2 attempts, 2 workers: 2 groups of outputs per attempt
    kw = {"split_members": True} if groups else {}
    parallel = _gp(fast).fit(restarts=restarts, seed=5, max_iter=50, progress=False, executor=executor, **kw)
    # whole attempts as tasks: bitwise; groups of members: every member follows the serial iterates, evaluated in
    # batches of other members, whose batched kernels round differently, and L-BFGS-B carries the last digits along
    # (to its stopping tolerance in flat directions: here 1e-11 on the losses, 3e-9 on the raw parameters)
    _same_fit(serial, parallel, tol=1e-9 if groups else 0.0, param_tol=1e-6 if groups else 0.0)
    state = torch.random.get_rng_state()
    _gp(fast).fit(restarts=1, seed=5, max_iter=20, progress=False, executor=executor)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random stream is untouched


def test_a_stop_on_dask_cancels_the_later_attempts_and_keeps_the_result(dask_executor, tmp_path, monkeypatch):
    r"""The stopped fit of ``tests/test_fit_cancel.py`` on the Dask cluster: the results are read as the tasks end
    and the later attempts' tasks are cancelled (``client.cancel``; those already running on a worker run to their
    end); the result is bit-equal to a fit running every task (here on a thread pool: the same tasks, the same
    arithmetic)."""
    from test_fit_cancel import _assert_same, _fit, _later_tasks

    with ThreadPoolExecutor(2) as threads:
        ref = _fit(threads, tmp_path / "ref", every_task=True, monkeypatch=monkeypatch)
    new = _fit(dask_executor, tmp_path / "new")
    assert new[0].stopped and new[0].attempts == 1
    _assert_same(new, ref)
    _later_tasks(tmp_path / "new")  # one stop, logged by a worker


def test_engine_fit_on_a_thread_pool_is_the_serial_fit_and_leaves_the_settings_alone():
    # the attempts seed torch's global generator and set GPyTorch's jitter settings: in two threads at once they drew
    # from each other's streams and restored each other's settings (the old code left cholesky_max_tries at 1, and
    # parameters 3e-4 off the serial ones in some runs); now one at a time, so bitwise the serial fit
    serial = _gp().fit(restarts=3, seed=5, max_iter=50, progress=False)
    settings = (gpytorch.settings.cholesky_max_tries.value(), gpytorch.settings.cholesky_jitter.value(DT))
    state = torch.random.get_rng_state()
    with ThreadPoolExecutor(2) as threads:
        threaded = _gp().fit(restarts=3, seed=5, max_iter=50, progress=False, executor=threads)
    assert (gpytorch.settings.cholesky_max_tries.value(), gpytorch.settings.cholesky_jitter.value(DT)) == settings
    assert torch.equal(torch.random.get_rng_state(), state)
    _same_fit(serial, threaded)


def test_fit_rejects_a_bad_executor_or_split_option():
    with pytest.raises(TypeError, match="`executor` must be a concurrent.futures.Executor"):
        _gp().fit(max_iter=2, progress=False, executor=object())
    with pytest.raises(TypeError, match="`split_members` must be a bool"):
        _gp().fit(max_iter=2, progress=False, split_members="yes")


def test_restart_k_does_not_depend_on_the_other_restarts():
    long = _gp().fit(restarts=3, seed=5, max_iter=50, progress=False).fit_result_
    short = _gp().fit(restarts=1, seed=5, max_iter=50, progress=False).fit_result_
    assert short.final_losses == long.final_losses[:2] and short.history == long.history[:2]


# ----------------------------------------------------------------------------------------------------------------
# MMGP and the notched plates


@pytest.fixture(scope="module")
def plates(tmp_path_factory):
    pytest.importorskip("skfem")
    pytest.importorskip("triangle")
    from gpgeom.datasets.notched_plate import generate_notched_plates
    from gpgeom.models.mmgp import samples_to_arrays

    cache = tmp_path_factory.mktemp("plates")
    train = generate_notched_plates(24, seed=0, mesh_size=0.1, cache_dir=cache, progress=False)
    test = generate_notched_plates(6, seed=1, mesh_size=0.1, cache_dir=cache, progress=False)
    return samples_to_arrays(train), samples_to_arrays(test)


def _mmgp(hyperparameters: str):
    from gpgeom.models.mmgp import MMGP

    return MMGP(hyperparameters=hyperparameters, restarts=1, max_iter=60, seed=0, floater_start=(0.0, 0.0))


@pytest.fixture(scope="module")
def serial_fits(plates):
    r"""The serial MMGP fits (2 attempts of at most 60 iterations), by ``hyperparameters``, made on first use."""
    (M, mu, U, w), _ = plates
    cache = {}

    def get(hyperparameters: str):
        if hyperparameters not in cache:
            cache[hyperparameters] = _mmgp(hyperparameters).fit(M, mu, U, w, progress=False)
        return cache[hyperparameters]

    return get


def _same_prediction(a, b) -> None:
    for fa, fb in zip(a.fields + a.fields_std, b.fields + b.fields_std, strict=True):
        torch.testing.assert_close(fa, fb, rtol=0.0, atol=1e-12)
    for name in ("scalars", "scalars_std", "latent", "ood_score"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0.0, atol=1e-12)


@pytest.mark.parametrize("hyperparameters", ["per_field", "per_output"])
def test_mmgp_fitted_on_a_dask_cluster_predicts_the_serial_fields(plates, serial_fits, dask_executor, hyperparameters):
    (M, mu, U, w), (Mt, mut, _, _) = plates
    serial = serial_fits(hyperparameters)
    dask = _mmgp(hyperparameters).fit(M, mu, U, w, progress=False, executor=dask_executor)
    # per_field: one GP per field and scalar; per_output: one GP for the leading modes and one per field's tail
    assert len(dask.gps_) == len(serial.gps_) == (7 if hyperparameters == "per_field" else len(dask.output_groups_))
    assert [r.final_losses for r in dask.fit_result_.gps] == [r.final_losses for r in serial.fit_result_.gps]
    expected = serial.predict(Mt, mut, return_std=True)
    _same_prediction(expected, dask.predict(Mt, mut, return_std=True))
    _same_prediction(expected, dask.predict(Mt, mut, return_std=True, executor=dask_executor))
    torch.testing.assert_close(serial.encode(Mt, mut), dask.encode(Mt, mut, executor=dask_executor), rtol=0, atol=0)
    torch.testing.assert_close(
        serial.encode_targets(M[:5], U[:5], w[:5]), dask.encode_targets(M[:5], U[:5], w[:5], executor=dask_executor)
    )
    assert set(dask.fit_result_.timings) == {"morph", "transfer", "pod", "gp"}


def test_mmgp_with_a_process_pool_and_worker_errors(plates, serial_fits, pool):
    (M, mu, U, w), (Mt, mut, _, _) = plates
    serial = serial_fits("per_field")
    pooled = _mmgp("per_field").fit(M, mu, U, w, progress=False, executor=pool)
    _same_prediction(serial.predict(Mt, mut, return_std=True), pooled.predict(Mt, mut, return_std=True, executor=pool))
    torch.testing.assert_close(serial.ood_score(Mt), pooled.ood_score(Mt, executor=pool), rtol=0, atol=0)
    m = Mt[4]  # a duplicate node: the worker's error names the mesh, as the serial run's does
    bad = [*Mt[:4], Mesh(np.vstack([m.points, m.points[:1]]), np.vstack([m.cells, [[m.n_points, 1, 2]]])), Mt[5]]
    with pytest.raises(ValueError, match="mesh 4: Nodes 0 and"):
        pooled.predict(bad, mut, executor=pool)


def _sample_arrays(s):
    return [s.points, s.triangles, s.field_array(), s.in_scalar_array(), s.out_scalar_array(), s.boundary_loop]


@pytest.mark.parametrize("how", ["dask", "pool", "n_jobs"])
def test_generated_plates_are_identical_with_an_executor(request, how):
    pytest.importorskip("skfem")
    pytest.importorskip("triangle")
    from gpgeom.datasets.notched_plate import generate_notched_plates

    kw = {"mesh_size": 0.12, "use_cache": False, "progress": False}
    serial = generate_notched_plates(7, seed=3, **kw)
    if how == "n_jobs":
        others = [generate_notched_plates(7, seed=3, n_jobs=2, **kw)]
    else:
        ex = request.getfixturevalue("dask_executor" if how == "dask" else "pool")
        others = [generate_notched_plates(7, seed=3, executor=ex, **kw)]
    for other in others:
        assert len(other) == len(serial)
        for a, b in zip(serial, other):
            for x, y in zip(_sample_arrays(a), _sample_arrays(b), strict=True):
                np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="either `executor` or `n_jobs`"):
        generate_notched_plates(2, n_jobs=2, executor=ThreadPoolExecutor(1), **kw)


def test_the_cluster_yaml_in_the_docs_holds_the_dask_settings():
    # docs/scaling.md gives DASK_SETTINGS as a YAML file for workers started elsewhere (SLURM): the same values
    yaml = pytest.importorskip("yaml")
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "scaling.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    flat: dict[str, object] = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(yaml.safe_load(block), "")
    assert flat == parallel.DASK_SETTINGS


def _short_sleep(shared, k):
    time.sleep(0.0002)
    return k


def test_the_caller_does_not_wait_on_every_remaining_task_for_each_that_ends(monkeypatch):
    r"""``map_items`` reads the tasks' results as they end; its bookkeeping per ended task must not scan every task.
    Counted, not timed: the futures handed to ``concurrent.futures.wait`` over a call of 400 one-item tasks on a thread
    pool of 2. Before, each ended task cost a wait on all the tasks still to come (a sum quadratic in the number of
    tasks; the caller's CPU per item was 154 us for 250 tasks and 1,730 us for 8,000); now the tasks report their end
    to a queue and the call waits once, at its end, on each task (at most 2 per task allowed)."""
    waited = []
    wait = parallel.wait_futures

    def counting_wait(futures, *args, **kwargs):
        futures = list(futures)
        waited.append(len(futures))
        return wait(futures, *args, **kwargs)

    monkeypatch.setattr(parallel, "wait_futures", counting_wait)
    n = 400
    with ThreadPoolExecutor(2) as ex:
        assert map_items(ex, _short_sleep, range(n), chunk_size=1, thread_safe=False) == list(range(n))
        assert map_items(ex, _short_sleep, range(n), chunk_size=1) == list(range(n))
    assert sum(waited) <= 2 * 2 * n, (len(waited), sum(waited))


_ALL_SUBMITTED = threading.Event()


def _held_until_all_submitted(shared, k):
    if k == 0:  # holds the worker's only thread: every task is outstanding when the last one is submitted
        _ALL_SUBMITTED.wait(60)
    return k


def test_dask_bookkeeping_is_linear_in_the_number_of_chunks(monkeypatch):
    r"""``map_items`` on Dask: the caller's work per task that ends must not grow with the number of tasks. Counted,
    not timed, on a one-thread in-process cluster whose first task holds the thread until all 150 one-item tasks are
    submitted: the ``Future.done`` calls and the futures handed to ``distributed.wait``. Before, every submission
    scanned every task submitted so far, and the wait loop handed every missing task to ``distributed.wait`` per
    arrival (12,293 calls and futures here, about n^2/2; 2,005,027 for 2,000 chunks); now each future reports its
    end to a queue (at most 2 per task allowed)."""
    distributed = pytest.importorskip("distributed", reason="dask[distributed] is not installed")
    calls = [0]
    done, wait = distributed.Future.done, distributed.wait

    def counting_done(self):
        calls[0] += 1
        return done(self)

    def counting_wait(futures, *args, **kwargs):
        calls[0] += len(futures)
        return wait(futures, *args, **kwargs)

    monkeypatch.setattr(distributed.Future, "done", counting_done)
    monkeypatch.setattr(distributed, "wait", counting_wait)
    n = 150
    with (
        distributed.LocalCluster(
            n_workers=1, processes=False, threads_per_worker=1, dashboard_address=None, silence_logs=40
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        submit, submitted = client.submit, [0]

        def counting_submit(*args, **kwargs):
            future = submit(*args, **kwargs)
            submitted[0] += 1
            if submitted[0] == n:
                _ALL_SUBMITTED.set()
            return future

        client.submit = counting_submit
        _ALL_SUBMITTED.clear()
        assert map_items(client.get_executor(), _held_until_all_submitted, range(n), chunk_size=1) == list(range(n))
    assert submitted[0] == n and calls[0] <= 2 * n, calls[0]


_SAME_PID_TASK = (
    "import os, pickle, sys\n"
    "pid = int(sys.argv[1])\n"
    "os.getpid = lambda: pid  # a process elsewhere whose pid is the caller's\n"
    "fn, args = pickle.loads(sys.stdin.buffer.read())\n"
    "sys.stdout.buffer.write(pickle.dumps(fn(*args)))\n"
)


class _Ran:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value

    def cancel(self):
        return False


class _SamePidElsewhere:
    r"""A remote executor whose worker process has the caller's pid (another machine, another container's PID
    namespace: small pids recur): each task runs in a fresh Python process whose ``os.getpid()`` is the caller's."""

    def submit(self, fn, *args):
        import cloudpickle

        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(parallel.__file__))))
        env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"}
        out = subprocess.run(
            [sys.executable, "-c", _SAME_PID_TASK, str(os.getpid())],
            input=cloudpickle.dumps((fn, args)),
            capture_output=True,
            env=env,
            check=True,
            timeout=120,
        )
        return _Ran(__import__("pickle").loads(out.stdout))


def test_a_task_in_another_process_with_the_callers_pid_runs_its_items():
    r"""``map_items`` on an executor whose worker process has the caller's pid but is another process: the items
    run there and their results come back (``operator.mul(10, k)``). Before, a task took itself for a thread of the
    caller when the pids were equal, read the call's limit from that process's empty table (-1: "the call has
    ended") and skipped every item: the call returned three internal ``_SKIPPED`` markers as the results."""
    pytest.importorskip("cloudpickle")
    import operator

    assert map_items(_SamePidElsewhere(), operator.mul, range(3), shared=10, chunk_size=3) == [0, 10, 20]


def test_a_dask_worker_whose_client_cannot_connect_yet_does_not_stop_its_item(monkeypatch):
    r"""``check_needed`` on a Dask worker reads the call's limit from a ``distributed.Variable``; a ``TimeoutError``
    there means that the scheduler has no such variable (the call has ended). The worker's own client may also time
    out on its first connection (``get_client``, ``distributed.comm.timeouts.connect``), which says nothing of the
    call: the limit stays what it was (5 here). Before, that was read as "the call has ended" (-1) and an item still
    needed was dropped."""
    distributed = pytest.importorskip("distributed", reason="dask[distributed] is not installed")
    from gpgeom.engine import _limits

    def slow_first_connection(*args, **kwargs):
        raise TimeoutError("Timed out trying to connect")

    monkeypatch.setattr(distributed, "get_client", slow_first_connection)
    token = _limits._DaskLimit("test-token", "gpgeom-needed-test-token", "another process")
    assert _limits._read_variable(token, 5) == 5


def _runs_on_unless_first(shared, k):
    if k:
        for _ in range(500):
            parallel.check_needed()
            time.sleep(0.002)
    return k


def test_a_dask_calls_variable_leaves_the_scheduler_when_the_client_closes_first(monkeypatch):
    r"""A call whose tasks may still run when it returns (``last_needed`` cut item 1 off) keeps its limit's
    ``distributed.Variable`` on the scheduler for a grace period (0.3 s here) so that those tasks read -1. A user's
    client closed within that period (``with Client(cluster) as client:`` around the call) on a scheduler that
    outlives it: the variable still goes. Before, a timer of the client's process deleted it through the client,
    which had closed: every such client left its variables on the scheduler for good (3 of 3 in the review's run)."""
    distributed = pytest.importorskip("distributed", reason="dask[distributed] is not installed")
    from gpgeom.engine import _limits

    monkeypatch.setattr(_limits, "_VARIABLE_GRACE_S", 0.3)
    with distributed.LocalCluster(
        n_workers=2, processes=False, threads_per_worker=1, dashboard_address=None, silence_logs=40
    ) as cluster:
        variables = cluster.scheduler.extensions["variables"].variables

        def ours():
            return [name for name in variables.copy() if name.startswith("gpgeom-needed-")]

        for _ in range(2):
            with distributed.Client(cluster) as client:
                out = map_items(client.get_executor(), _runs_on_unless_first, range(2), chunk_size=1,
                                last_needed=lambda k, r: 0)  # fmt: skip
                assert out == [0]
        deadline = time.monotonic() + 5.0
        while ours() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ours() == []


def test_a_needed_item_that_comes_back_skipped_raises_instead_of_being_returned():
    # The bookkeeping's last line of defence: a task that misread the call's limit (a bug) and skipped an item
    # still needed must not hand gpgeom's internal marker back as that item's result.
    calls = parallel._Calls("t", 3, [0], [[0, 1, 2]], on_chunk=None, last_needed=None)
    calls.arrived(0, lambda: ([10, parallel._SKIPPED, parallel._SKIPPED], []))
    with pytest.raises(RuntimeError, match="item 1 is needed"):
        calls.results()
    done = parallel._Calls("u", 3, [0], [[0, 1, 2]], on_chunk=None, last_needed=None)
    done.arrived(0, lambda: ([10, 11, 12], []))
    assert done.results() == [10, 11, 12]

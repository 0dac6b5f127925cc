"""Scaling of MMGP's independent stages over Dask workers (gpgeom.engine.parallel): 1 and 2 worker processes of a
``dask.distributed.LocalCluster`` (one thread each) against the serial run in this process, and a cost model
extrapolated to 10,000 meshes on 64 workers.

Stages:
- preprocessing: the Floater morphing, both P1 transfers and the transport to the common mesh of every plate
  (``gpgeom.models.mmgp.fanout.transport_training``, what ``MMGP.fit(executor=...)`` runs), in chunks of
  ``ceil(N / (4 W))`` plates, the common mesh scattered once to every worker;
- GP stage: MMGP's GP with ``hyperparameters="per_output"``, 35 independent GPs (8 POD coefficients of each of the
  4 fields and 3 scalars on 8 geometry modes, ``tail_energy=0``: each output with its own hyperparameters) fitted
  as one batch by the engine's ``fit`` (``gpgeom.engine.attempts``) on the latent inputs and targets of the first
  200 plates (n = 200 training points per GP: the stage then takes minutes, not most of an hour, on 2 shared
  cores): the tasks are the attempts (bitwise the serial fit), or the attempts split into groups of outputs
  (``split_members=True``; the serial fit to rounding).
- RGNP data-parallel training (``torchrun``): a hook, :func:`ddp_rows`, fills its table when
  ``benchmarks/_ddp.py`` provides ``rgnp_steps_per_second(ranks, steps)``.

Cost model of the preprocessing (every term measured here on loopback TCP):
    T(N, W) = N (c + s_w) / W + N s_c + f + ceil(N / (W b)) t_task + t_scatter W,
with c the compute seconds per mesh (serial CPU), s_w the workers' extra CPU per mesh (deserialising the meshes,
serialising the results), s_c this process's CPU per mesh (client and scheduler: serialising the meshes, receiving
the results; it does not shrink with W), f this process's fixed CPU per call, b meshes per task, t_task the
scheduling cost of one task (wall per empty task) and t_scatter the cost of sending the common mesh to one worker
(a client sending one copy per worker: linear in W). s_c, s_w and f come from the slope between N and N/2 meshes
on 2 workers (the same number of tasks), s_c and f less this process's idle CPU (the client's and scheduler's
event loops, measured over 5 s of idling, times the wall time, which the machine's load stretches). The
extrapolation takes the CPU-based terms (dedicated cores) and the measured latencies t_task and t_scatter.

The clusters start under ``dask.config.set(gpgeom.engine.parallel.DASK_SETTINGS)``.

Usage: python benchmarks/scaling.py [--quick] [--n 400] [--gp-n 200] [--restarts 1] [--repeats 3] [--skip-gp]
       [--ddp-steps 200]
Writes ``benchmarks/results/scaling.md`` (``scaling_quick.md`` for a quick or reduced run).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, report_name, write_benchmark_report  # noqa: E402

from gpgeom.datasets.notched_plate import FIELD_NAMES, OUT_SCALAR_NAMES, generate_notched_plates  # noqa: E402
from gpgeom.engine.parallel import DASK_SETTINGS, chunk_size_for, map_items  # noqa: E402
from gpgeom.models.mmgp import MMGP, samples_to_arrays  # noqa: E402
from gpgeom.models.mmgp.fanout import transport_training  # noqa: E402
from gpgeom.models.mmgp.transfer import CommonMeshTransfer  # noqa: E402


def load() -> float:
    return os.getloadavg()[0]


def _autogroup() -> bool:
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return False


def _noop(shared, item):
    return None


def _worker_cpu() -> float:
    return time.process_time()


class Cluster:
    """A LocalCluster of ``workers`` processes (one thread each), warmed up (gpgeom imported on every worker)."""

    def __init__(self, workers: int) -> None:
        from distributed import Client, LocalCluster

        t0 = time.perf_counter()
        import dask

        # gpgeom's settings for CPU-bound workers (no profiler, glibc's malloc thresholds, slow ticks)
        with dask.config.set(DASK_SETTINGS):
            self.cluster = LocalCluster(
                n_workers=workers, processes=True, threads_per_worker=1, dashboard_address=None, silence_logs=40
            )
        self.client = Client(self.cluster)
        self.client.run(lambda: __import__("gpgeom.models.mmgp.fanout") and None)
        self.startup = time.perf_counter() - t0
        self.executor = self.client.get_executor()
        self.workers = workers

    def cpus(self) -> np.ndarray:
        """CPU seconds of every worker process so far (in worker order)."""
        out = self.client.run(_worker_cpu)
        return np.array([out[k] for k in sorted(out)], dtype=float)

    def cpu(self) -> float:
        return float(self.cpus().sum())

    def close(self) -> None:
        self.client.close()
        self.cluster.close()


def timed(fn, cluster: Cluster | None = None, repeats: int = 1):
    """Median (by wall time) of ``(wall s, main-process CPU s, workers' CPU s summed, busiest worker's CPU s)`` of
    ``fn`` over ``repeats`` runs, and its last result."""
    rows = []
    out = None
    for _ in range(repeats):
        w0 = cluster.cpus() if cluster else np.zeros(1)
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        t, c = time.perf_counter() - t0, time.process_time() - c0
        dw = (cluster.cpus() - w0) if cluster else np.zeros(1)
        rows.append((t, c, float(dw.sum()), float(dw.max())))
    med = sorted(rows)[len(rows) // 2]
    return med, out


def cpu_bound(serial_cpu: float, main_cpu: float, busiest: float) -> float:
    """The speed-up on dedicated cores if wall time = the CPU time of the busiest process (this one, or the
    busiest worker): serial CPU / max(main CPU, busiest worker CPU). An upper bound (no latency, no waiting)."""
    return serial_cpu / max(main_cpu, busiest, 1e-12)


def overheads(cluster: Cluster, transfer) -> dict[str, float]:
    """Scheduling cost of one task (wall and this process's CPU per empty task) and the cost of scattering the
    common mesh to one worker."""
    ex = cluster.executor
    n_empty = 200
    t0, c0 = time.perf_counter(), time.process_time()
    map_items(ex, _noop, range(n_empty), None, chunk_size=1)
    t_task, t_task_cpu = (time.perf_counter() - t0) / n_empty, (time.process_time() - c0) / n_empty
    t0 = time.perf_counter()
    for _ in range(3):
        fut = cluster.client.scatter(transfer, broadcast=True, hash=False, direct=True)
        fut.result()
        fut.release()
    return {"t_task": t_task, "t_task_cpu": t_task_cpu, "t_scatter": (time.perf_counter() - t0) / 3 / cluster.workers}


def ddp_rows(steps: int) -> tuple[list[str], list[list[object]]] | None:
    """RGNP data-parallel training with 1 and 2 ranks (``torchrun``): the table of ``benchmarks/_ddp.py``'s
    ``rgnp_steps_per_second(ranks, steps) -> dict`` (one row per rank count, the dict's keys as columns, plus the
    speed-up of ``steps_per_second`` when it reports it), or ``None`` while that module does not exist."""
    if not Path(__file__).with_name("_ddp.py").exists():
        return None
    from _ddp import rgnp_steps_per_second

    results = {ranks: dict(rgnp_steps_per_second(ranks=ranks, steps=steps)) for ranks in (1, 2)}
    keys = sorted({k for r in results.values() for k in r} - {"ranks"})
    base = results[1].get("steps_per_second")
    rows = []
    for ranks, r in results.items():
        speed = r.get("steps_per_second")
        rows.append([ranks] + [r.get(k, "-") for k in keys] + [speed / base if speed and base else "-"])
    return ["ranks", *keys, "speed-up"], rows


def predict_time(p: dict[str, float], n: int, w: int, b: int) -> float:
    return (
        n * (p["c"] + p["s_w"]) / w + n * p["s_c"] + p["f"] + math.ceil(n / (w * b)) * p["t_task"] + p["t_scatter"] * w
    )


#: The settings of the full run (the committed ``scaling.md``); any other value makes a reduced run.
FULL = {"n": 400, "gp_n": 200, "restarts": 1, "repeats": 3, "skip_gp": False, "ddp_steps": 200}


def is_reduced(args: argparse.Namespace) -> bool:
    r"""Whether the run differs from the full one (``FULL``) and so writes ``scaling_quick.md``: ``--quick``, or any
    size, restart or repeat count other than the full run's, ``--skip-gp`` or another ``--ddp-steps`` (these
    wrote over the committed table, without its GP or DDP section)."""
    given = {key: getattr(args, key) for key in FULL}
    return bool(args.quick) or any(v is not None and v != FULL[key] for key, v in given.items())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="60 coarse plates, 1 restart")
    ap.add_argument("--n", type=int, default=None, help="number of plates (default 400; quick 60)")
    ap.add_argument("--restarts", type=int, default=None, help="extra restarts of the GP stage (default 1; quick 1)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats of the preprocessing timing (default 3)")
    ap.add_argument("--skip-gp", action="store_true", help="time the preprocessing only")
    ap.add_argument("--gp-n", type=int, default=None, help="plates of the GP stage (default 200; quick 40)")
    ap.add_argument("--ddp-steps", type=int, default=200, help="RGNP steps per rank count of the DDP hook (0: skip)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    quick = is_reduced(args)
    n = args.n or (60 if args.quick else 400)
    gp_n = min(n, args.gp_n or (40 if args.quick else 200))
    mesh_size = 0.08 if args.quick else (0.028, 0.036)
    restarts = args.restarts if args.restarts is not None else 1
    repeats = args.repeats or (1 if args.quick else 3)
    load_start = load()

    # data (generated on 2 Dask workers when not cached: the generator's fan-out)
    t0 = time.perf_counter()
    cluster = Cluster(2)
    try:
        samples = generate_notched_plates(n, seed=0, mesh_size=mesh_size, progress=False, executor=cluster.executor)
    finally:
        cluster.close()
    t_data = time.perf_counter() - t0
    M, mu, U, w = samples_to_arrays(samples)
    nodes = np.mean([m.n_points for m in M])
    print(f"data: {n} plates, {nodes:.0f} nodes on average, {t_data:.1f} s", flush=True)

    transfer = CommonMeshTransfer("floater", (0.0, 0.0), False)
    transfer.set_common(M[n // 2])

    pre_rows, gp_rows, params = [], [], {}
    (t_ser, c_ser, _, _), ref = timed(lambda: transport_training(transfer, M, U, None), repeats=repeats)
    params["c"] = c_ser / n  # CPU seconds per mesh of the serial run (robust to the load)
    half = n // 2
    (_, c_ser_h, _, _), _ = timed(lambda: transport_training(transfer, M[:half], U[:half], None), repeats=repeats)
    pre_rows.append(["serial (this process)", 0, "-", t_ser, 1.0, 1.0, c_ser, 0.0, 0.0, 1.0, round(load(), 2)])
    print(f"preprocessing serial: {t_ser:.2f} s wall, {c_ser:.2f} s CPU", flush=True)

    # the GP stage: MMGP's 35 independent output GPs (per_output), fitted by the engine's fit on the latent inputs
    # and targets of an MMGP fitted on these plates (its own GP fit cut to one iteration: only Z and Y are used)
    units: list[tuple[str, dict]] = []
    if not args.skip_gp:
        # the stage: 8 modes of each field and 8 geometry modes, every output its own GP (no tail groups)
        base = MMGP(
            n_modes_geometry=8,
            n_modes_fields=8,
            tail_energy=0.0,
            hyperparameters="per_output",
            restarts=0,
            max_iter=1,
            seed=0,
            floater_start=(0.0, 0.0),
        )
        k = gp_n
        base.fit(M[:k], mu[:k], U[:k], w[:k], field_names=FIELD_NAMES, scalar_names=OUT_SCALAR_NAMES, progress=False)
        Z, Y = base.train_latent_, base.train_targets_
        units = [("attempts as tasks", {}), ("attempts x groups of outputs", {"split_members": True})]

    def gp_fit(executor, **kw):
        gp = base._build_gps(Z, Y)[0]
        t0, c0 = time.perf_counter(), time.process_time()
        gp.fit(restarts=restarts, max_iter=500, seed=0, progress=False, executor=executor, **kw)
        return time.perf_counter() - t0, time.process_time() - c0, gp.fit_result_

    serial_gp = None
    if units:
        ts, cs, serial_gp = gp_fit(None)
        n_out = int(Y.shape[1])
        gp_rows.append([f"{n_out} outputs x {restarts + 1} attempts", "serial", ts, 1.0, 1.0, cs, 0.0, 0.0, 1.0, 0.0,
                        round(load(), 2)])  # fmt: skip
        print(f"GP serial: {ts:.1f} s ({cs:.1f} s CPU), {n_out} outputs, n = {Z.shape[0]}", flush=True)

    startups = {}
    for workers in (1, 2):
        cluster = Cluster(workers)
        startups[workers] = cluster.startup
        try:
            ex = cluster.executor
            b = chunk_size_for(n, ex)
            (t, c, cw, cmax), out = timed(lambda ex=ex: transport_training(transfer, M, U, ex), cluster, repeats)
            same = all(np.array_equal(a[0], o[0]) and np.array_equal(a[1], o[1]) for a, o in zip(ref, out))
            pre_rows.append([f"Dask, {workers} worker(s)", workers, b, t, t_ser / t, t_ser / t / workers, c, cw, cmax,
                             cpu_bound(c_ser, c, cmax), round(load(), 2)])  # fmt: skip
            print(f"preprocessing {workers} workers: {t:.2f} s wall (same result: {same})", flush=True)
            if not same:
                raise SystemExit("the parallel preprocessing differs from the serial one")
            if workers == 2:  # the cost model's parameters (module docstring), from this run
                params.update(overheads(cluster, transfer))
                tasks = math.ceil(n / b)
                # per-mesh terms from the slope between N and N/2 meshes (the same number of tasks, 4 per worker),
                # so that the fixed costs of a call (scattering the common mesh, the settings snapshot) stay out
                half_run = lambda ex=ex: transport_training(transfer, M[:half], U[:half], ex)  # noqa: E731
                (t_h, c_h, cw_h, _), _ = timed(half_run, cluster, repeats)
                # this process's background CPU while the cluster idles (event loops of the client and the
                # scheduler): it grows with the wall time, which the load stretches, so it is taken out of s_c
                c0 = time.process_time()
                time.sleep(5.0)
                params["idle"] = (time.process_time() - c0) / 5.0
                params["s_c"] = max(0.0, ((c - c_h) - params["idle"] * (t - t_h)) / (n - half))
                params["f"] = max(0.0, c - n * params["s_c"] - params["idle"] * t)
                params["s_w"] = max(0.0, ((cw - cw_h) - (c_ser - c_ser_h)) / (n - half))
                params["tasks"] = tasks
            for unit, kw in units if workers > 1 else units[:1]:  # (one worker: the overhead of attempts as tasks)
                w0 = cluster.cpus()
                tg, cg, res = gp_fit(ex, **kw)
                dw = cluster.cpus() - w0
                same = max(abs(x - y) / max(abs(y), 1e-300) for x, y in zip(res.final_losses, serial_gp.final_losses))
                gp_rows.append([unit, f"Dask, {workers} worker(s)", tg, ts / tg, ts / tg / workers, cg, dw.sum(),
                                dw.max(), cpu_bound(cs, cg, dw.max()), f"{same:.1e}", round(load(), 2)])  # fmt: skip
                print(f"GP {unit}, {workers} workers: {tg:.1f} s (max rel. diff of the attempts' losses {same:.1e})",
                      flush=True)  # fmt: skip
        finally:
            cluster.close()

    ddp = ddp_rows(args.ddp_steps) if args.ddp_steps > 0 else None

    # the cost model, checked against the measured runs, then extrapolated
    check_rows = []
    at_load = dict(params, c=t_ser / n)  # the compute per mesh at this machine's load: the serial wall time
    for row in pre_rows[1:]:
        wk, b = row[1], row[2]
        check_rows.append([f"N = {n}, W = {wk}, b = {b}", row[3], predict_time(at_load, n, wk, b)])
    big_n, big_w = 10_000, 64
    serial_big = big_n * params["c"]
    ext_rows = []
    for b in (1, 10, math.ceil(big_n / (4 * big_w)), math.ceil(big_n / big_w)):
        t = predict_time(params, big_n, big_w, b)
        ext_rows.append([b, math.ceil(big_n / b), t, serial_big / t, serial_big / t / big_w])
    par_rows = [
        ["c: compute per mesh (serial CPU s)", params["c"]],
        ["s_w: the workers' extra CPU per mesh (slope N/2 -> N of workers' CPU - serial CPU)", params.get("s_w")],
        ["s_c: this process's CPU per mesh (client and scheduler; slope N/2 -> N, less idle CPU)", params.get("s_c")],
        ["f: this process's fixed CPU per call (CPU at N - N s_c - idle CPU)", params.get("f")],
        ["t_task: wall per task (200 empty tasks, one per task)", params.get("t_task")],
        ["  of which this process's CPU", params.get("t_task_cpu")],
        ["t_scatter: common mesh to one worker (broadcast to 2, halved)", params.get("t_scatter")],
        ["this process's idle CPU per wall second, taken out of s_c and f", params.get("idle")],
    ]

    write_benchmark_report(
        report_name("scaling", quick=quick),
        "Scaling of MMGP's independent stages over Dask workers" + (" (quick)" if quick else ""),
        [
            f"load average (1 min): {load_start:.2f} at the start, {load():.2f} at the end (2 cores shared with "
            "other jobs: wall-clock speed-ups are bounded by the cores the other jobs leave free; CPU seconds are "
            "the load-independent measure)"
            + (
                "; the kernel's autogroup scheduling is on: this benchmark and its Dask workers share one "
                "scheduling group, whose CPU share does not grow with the number of workers, so on a loaded machine "
                "the wall-clock speed-up stays near 1 whatever the parallel efficiency"
                if _autogroup()
                else ""
            ),
            f"data: {n} NotchedPlate2d plates (seed 0), mesh size {mesh_size}, {nodes:.0f} nodes on average; "
            f"common mesh = plate {n // 2} ({transfer.common_mesh.n_points} nodes); data generation / cache load "
            f"{t_data:.1f} s on 2 Dask workers",
            "executor: `dask.distributed.LocalCluster(n_workers=W, processes=True, threads_per_worker=1)` started "
            "under `dask.config.set(gpgeom.engine.parallel.DASK_SETTINGS)` (no worker profiler, glibc's own malloc "
            "thresholds, slow monitoring ticks), `Client.get_executor()`; cluster start-up and warm-up (gpgeom "
            "imported on every worker) "
            f"{startups.get(1, 0):.1f} s (W = 1), {startups.get(2, 0):.1f} s (W = 2), not included below",
        ],
        [
            f"## Preprocessing: morphing, 2 P1 transfers and transport of {n} plates (median of {repeats})",
            "",
            "Speed-up and efficiency: wall time against the serial run in this process. CPU: this process, the "
            "workers (summed) and the busiest worker. 'CPU-bound speed-up': serial CPU / the CPU of the busiest "
            "process (this one or a worker), the speed-up on dedicated cores if nothing waited (an upper bound).",
            "",
            markdown_table(
                [
                    "run",
                    "W",
                    "meshes per task b",
                    "wall s",
                    "speed-up",
                    "efficiency",
                    "CPU s (main)",
                    "CPU s (workers)",
                    "CPU s (busiest worker)",
                    "CPU-bound speed-up",
                    "load",
                ],
                pre_rows,
            ),  # fmt: skip
            "",
            f"## GP stage: 35 independent GPs on {gp_n} plates, {restarts + 1} L-BFGS-B attempts of at most 500 "
            "iterations each",
            "",
            'MMGP\'s GP over the latent inputs with `hyperparameters="per_output"`: 35 outputs (8 POD coefficients '
            "of each of the 4 fields and the 3 scalars), each with its own hyperparameters, fitted as one batch by "
            "the engine's `fit` (the batched L-BFGS-B runs one L-BFGS-B per output). 'attempts as tasks': one task "
            "per attempt (`executor=`; bitwise the serial fit). 'attempts x groups of outputs': every attempt also "
            "split into groups of outputs (`split_members=True`, 3 tasks per worker), which agrees with the serial "
            "fit to rounding only (column 'rel. diff': the largest relative difference of an attempt's final loss "
            "from the serial run). Wall and CPU seconds of the `fit` call; cluster start-up excluded.",
            "",
            markdown_table(
                [
                    "parallel unit",
                    "run",
                    "wall s",
                    "speed-up",
                    "efficiency",
                    "CPU s (main)",
                    "CPU s (workers)",
                    "CPU s (busiest worker)",
                    "CPU-bound speed-up",
                    "rel. diff",
                    "load",
                ],
                gp_rows,
            )
            if gp_rows
            else "(skipped)",  # fmt: skip
            "",
            "## Cost model of the preprocessing",
            "",
            "T(N, W) = N (c + s_w) / W + N s_c + f + ceil(N / (W b)) t_task + t_scatter W (module docstring). Measured "
            "parameters (seconds, from the W = 2 run; transfers on loopback TCP, so a real network adds bandwidth "
            "time to s_c, s_w and t_scatter; CPU-based terms are what a dedicated core would take, wall-based ones "
            "carry this machine's load):",
            "",
            markdown_table(["parameter", "seconds"], par_rows),
            "",
            "Check against the measured runs (with c = the serial wall time per mesh, i.e. the core share this "
            "process got at the time):",
            "",
            markdown_table(["run", "measured wall s", "model s"], check_rows),
            "",
            f"## Extrapolation: {big_n:,} meshes on {big_w} workers",
            "",
            f"Serial: N c = {serial_big:.0f} s. The client's serial share N s_c does not shrink with W; it bounds the "
            f"speed-up at (c + s_w) / s_c (here {(params['c'] + params['s_w']) / max(params['s_c'], 1e-12):.0f}).",
            "",
            markdown_table(["meshes per task b", "tasks", "T (s)", "speed-up", "efficiency"], ext_rows),
            "",
            "## RGNP data-parallel training (torchrun)",
            "",
            markdown_table(*ddp) if ddp else "(not run: `--ddp-steps 0`, or `benchmarks/_ddp.py` is not there yet)",
        ],
    )


if __name__ == "__main__":
    main()

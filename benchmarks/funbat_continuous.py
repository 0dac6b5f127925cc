#!/usr/bin/env python3
r"""FunBaT on continuous coordinates (issue #18): every coordinate of every entry unique (:math:`I_k = N`), the
regime where each mode's chain is as long as the data and its coordinates are dense (the smallest gaps of
:math:`N` uniform points are about :math:`1/N^2`, where :math:`Q(\Delta)` is numerically singular in precision form).

Data: :math:`N` entries with coordinates uniform on :math:`[0, 1]^3`, :math:`y = \sin(6x_1)\cos(4x_2) + x_3^2 +
0.1\varepsilon`; FunBaT Tucker rank 2, :math:`\nu = 3/2`, ``n_restarts=0``. For each :math:`N` (20,000 and
100,000; ``--quick``: 5,000 and 20,000), each measurement in its own process on one thread:

* ``plain``: 3 sweeps without hyperparameter learning: median seconds per sweep;
* ``hyper``: 4 sweeps with a hyperparameter step after every sweep (``hyper_warmup=0``) by the default ``"auto"``
  method, which above 10,000 unique coordinates takes the ``"sweep"`` steps (the gradient from the sweep's own
  smoother; :mod:`gpgeom.models.funbat.hyper`): seconds of each sweep;
* ``hyper_marginal``: the same with ``hyper_method="marginal"`` (L-BFGS-B on the marginal likelihood, 5-10 filter
  passes per mode and step; what ``"auto"`` took before);
* ``default``: the default fit (``FunBaT(2, n_restarts=0)``): total seconds, sweeps, held-out RMSE on 2,000
  noiseless test entries; ``default_marginal``: the same with ``hyper_method="marginal"``.

The marginal rows run at the smallest :math:`N` only (at 100,000 a marginal step takes minutes).

Memory: the peak resident set size of the process (``ru_maxrss``) and the peak above the resident set size after
the imports and the data (``above``), both in MB of 2**20 bytes (the kernel reports KiB), as in
``benchmarks/memory.py``.

Usage: ``python benchmarks/funbat_continuous.py [--quick] [--sizes N ...] [--jobs J] [--out FILE]`` (also
``python benchmarks/funbat.py --continuous-only [--quick]``). A full run writes
``benchmarks/results/funbat_continuous.md``, other runs ``funbat_continuous_quick.md``
(``benchmarks/_common.report_name``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

MODES = ("plain", "hyper", "hyper_marginal", "default", "default_marginal")


def _rss_mb() -> float:
    r"""The resident set size of this process now in MB (MiB), the unit of :func:`_peak_rss_mb`."""
    from _common import status_mib

    return status_mib("VmRSS")


def _peak_rss_mb() -> float:
    r"""The peak resident set size of this process in MB (MiB; ``ru_maxrss`` is in KiB on Linux)."""
    from _common import peak_rss_mib

    return peak_rss_mib()


def worker(n: int, mode: str) -> dict:
    r"""One measurement in this process (one thread); returns the JSON-able row."""
    import warnings

    import numpy as np
    import torch

    from gpgeom.models.funbat import FunBaT

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    g = np.random.default_rng(0)
    X = g.uniform(0, 1, (n, 3))
    y = np.sin(6 * X[:, 0]) * np.cos(4 * X[:, 1]) + X[:, 2] ** 2 + 0.1 * g.standard_normal(n)
    Xt = g.uniform(0, 1, (2000, 3))
    yt = np.sin(6 * Xt[:, 0]) * np.cos(4 * Xt[:, 1]) + Xt[:, 2] ** 2
    base = _rss_mb()
    method = "marginal" if mode.endswith("_marginal") else "auto"
    if mode == "plain":
        model = FunBaT(2, max_sweeps=3, min_sweeps=3, n_restarts=0, learn_hyperparameters=False)
    elif mode.startswith("hyper"):
        model = FunBaT(2, max_sweeps=4, min_sweeps=4, n_restarts=0, hyper_warmup=0, hyper_method=method)
    else:
        model = FunBaT(2, n_restarts=0, hyper_method=method)
    t0, c0 = time.perf_counter(), time.process_time()
    model.fit(X, y, progress=False)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = _peak_rss_mb()
    row = {"n": n, "mode": mode, "total_s": total, "cpu_s": cpu, "sweeps": len(model.history), "peak_mb": peak}
    row["base_mb"] = base
    row["sweep_s"] = [float(h["seconds"]) for h in model.history]
    row["hyper"] = [bool(h["hyper_step"]) for h in model.history]
    row["method"] = model._next_hyper_method() if model.learn_hyperparameters else "-"
    if mode.startswith("default"):
        mean = model.predict(torch.as_tensor(Xt))
        mean = mean[0] if isinstance(mean, tuple) else mean
        row["rmse"] = float((mean.reshape(-1).double() - torch.as_tensor(yt)).square().mean().sqrt())
    return row


def _run(n: int, mode: str, timeout: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(n), mode]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=True).stdout
    except subprocess.TimeoutExpired:
        return {"n": n, "mode": mode, "error": f"timeout after {timeout:.0f} s"}
    except subprocess.CalledProcessError as err:
        return {"n": n, "mode": mode, "error": err.stderr.strip().splitlines()[-1] if err.stderr else "failed"}
    return json.loads(out.strip().splitlines()[-1])


def _median(xs: list[float]) -> float:
    r"""The median of ``xs`` (the mean of the two middle values for an even count; NaN for none)."""
    return statistics.median(xs) if xs else float("nan")


def report(rows: list[dict], machine: str, quick: bool) -> list[str]:
    lines = [
        "# FunBaT on continuous coordinates (every coordinate unique)",
        "",
        f"- machine: {machine}; one thread per process (`OMP_NUM_THREADS=1`, `torch.set_num_threads(1)`)",
        f"- mode: {'quick' if quick else 'full'}; data and rows: `benchmarks/funbat_continuous.py` docstring",
        "- memory: `peak` = peak RSS of the process; `above` = peak minus the RSS after imports and data (MB)",
        "- times: wall seconds of each sweep (`history`), CPU seconds of the process for the whole fit",
        "",
        "| N | run | hyper method | sweeps | s per sweep (median; with a hyper step) | fit s (CPU s) | peak / above MB "
        "| test RMSE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["n"], MODES.index(r["mode"]))):
        if "sweep_s" not in r:
            lines.append(f"| {r['n']:,} | {r['mode']} | - | - | {r.get('error', '-')} | - | - | - |")
            continue
        with_hyper = [s for s, h in zip(r["sweep_s"], r["hyper"]) if h]
        without = [s for s, h in zip(r["sweep_s"], r["hyper"]) if not h]
        per = f"{_median(without):.2f}" if without else "-"
        per += f"; {_median(with_hyper):.2f} (max {max(with_hyper):.2f})" if with_hyper else ""
        rmse = f"{r['rmse']:.4f}" if "rmse" in r else "-"
        lines.append(
            f"| {r['n']:,} | {r['mode']} | {r.get('method', '-')} | {r['sweeps']} | {per} | {r['total_s']:.1f} "
            f"({r['cpu_s']:.1f}) | {r['peak_mb']:.0f} / {r['peak_mb'] - r['base_mb']:.0f} | {rmse} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N = 5,000 and 20,000")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="the N to run (counts as quick)")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--jobs", type=int, default=1, help="measurements run at once (one thread each)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per measurement")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--worker", nargs=2, metavar=("N", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(int(args.worker[0]), args.worker[1])), flush=True)
        return 0
    from _common import machine_info, report_name, results_path

    sizes = args.sizes or ([5_000, 20_000] if args.quick else [20_000, 100_000])
    quick = args.quick or args.sizes is not None or args.modes != list(MODES)
    jobs = [(n, m) for n in sizes for m in args.modes if not (m.endswith("_marginal") and n > min(sizes))]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows = list(pool.map(lambda job: _run(*job, args.timeout), jobs))
    for r in rows:
        print(json.dumps(r), flush=True)
    lines = report(rows, machine_info("cpu"), quick)
    print("\n".join(lines))
    out = args.out or results_path(report_name("funbat_continuous", device="cpu", quick=quick))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

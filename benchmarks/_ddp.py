"""RGNP data-parallel training speed under ``torchrun`` (helper of ``benchmarks/scaling.py``).

``rgnp_steps_per_second(ranks, steps)`` launches ``python -m torch.distributed.run --nproc_per_node=ranks
--standalone benchmarks/_ddp.py --worker ...`` (gloo on the CPU, one thread per rank): every rank builds the
``--quick`` RGNP of ``benchmarks/rgnp.py`` (nonlinear Poisson 1-D, q_alpha 3x64, 16 Fourier features, GICNet P=8,
8 fields of 30 random points per rank and step, float32), runs 2 warm-up steps, then ``steps`` timed Adam steps of
``RGNP.fit`` (gradients averaged over the ranks every step, :mod:`gpgeom.engine.distributed`). The timed interval
runs from a barrier before the fit to a barrier after it, on rank 0. One step of ``W`` ranks processes ``W`` times
the fields of one rank, so ``fields_per_second`` is the throughput to compare; ``steps_per_second`` falls below the
single-rank value by the cost of the all-reduce and of ranks waiting for the slowest one.

Run alone: ``OMP_NUM_THREADS=1 python benchmarks/_ddp.py --ranks 1 2 --steps 100`` prints one line per rank count
(no file is written; ``benchmarks/scaling.py`` writes the table).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCH, N_POINTS = 8, 30


def rgnp_steps_per_second(ranks: int, steps: int, *, timeout_s: float = 1800.0) -> dict:
    """Time ``steps`` data-parallel RGNP steps on ``ranks`` CPU processes.

    Returns:
        ``{"ranks", "steps", "wall_s" (timed steps, rank 0), "steps_per_second", "fields_per_second" (fields of
        all ranks per second), "fields_per_step", "launch_s" (the whole torchrun run: start-up, imports, warm-up),
        "final_loss" (the last step's loss, the mean over the ranks)}``.

    Raises:
        ValueError: For ``ranks`` or ``steps`` that are not positive integers.
        RuntimeError: When the torchrun run fails (its output's tail is in the message).
    """
    for name, value in (("ranks", ranks), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ddp.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--standalone"]
        cmd += [str(Path(__file__).resolve()), "--worker", "--steps", str(steps), "--out", str(out)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        launch = time.perf_counter() - t0
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"torchrun with {ranks} rank(s) failed ({proc.returncode}): {proc.stderr[-2000:]}")
        result = json.loads(out.read_text())
    result["launch_s"] = launch
    return result


def _worker(steps: int, out: Path) -> None:
    import torch

    from gpgeom.engine import distributed as dd
    from gpgeom.models.rgnp import RGNP
    from gpgeom.pde import NonlinearPoisson1D

    torch.set_num_threads(1)
    dd.init_from_env()
    gic = dict(lift_channels=8, lift_hidden=(16,), cnn_channels=(16, 16), mlp_hidden=(64,), grid_size=16)
    torch.manual_seed(0)
    model = RGNP.from_family(
        NonlinearPoisson1D(), hidden=(64, 64, 64), n_freqs=16, batch_size=BATCH, n_points=N_POINTS, gicnet=gic,
        dtype=torch.float32,
    )  # fmt: skip
    model.fit(2, lr=3e-3, seed=1, progress=False)  # warm-up: first-call costs
    if dd.is_initialized():
        torch.distributed.barrier()
    t0 = time.perf_counter()
    model.fit(steps, lr=3e-3, seed=2, progress=False)
    if dd.is_initialized():
        torch.distributed.barrier()
    wall = time.perf_counter() - t0
    w = dd.world_size()
    if dd.is_main_process():
        out.write_text(
            json.dumps(
                {
                    "ranks": w,
                    "steps": steps,
                    "wall_s": wall,
                    "steps_per_second": steps / wall,
                    "fields_per_second": steps * BATCH * w / wall,
                    "fields_per_step": BATCH * w,
                    "final_loss": float(model.fit_history[-1]),
                }
            )
        )
    if dd.is_initialized():
        torch.distributed.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="rank counts to time")
    ap.add_argument("--steps", type=int, default=100, help="timed steps per run")
    args = ap.parse_args()
    if args.worker:
        _worker(args.steps, args.out)
        return
    for ranks in args.ranks:
        print(rgnp_steps_per_second(ranks, args.steps), flush=True)


if __name__ == "__main__":
    main()

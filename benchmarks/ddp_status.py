"""Cost of the step status of data-parallel RGNP training (``DataParallel.mean_of``), 2 gloo ranks on the CPU.

Every step of ``RGNP.fit`` under ``torchrun`` all-reduces the loss; ``mean_of`` sends the status of the rank's loss
(0 computed, 1 raised) in the same all-reduce, ``(L_r, f_r)`` in float64, so that a loss that raises on one rank
ends the step on every rank. This measures, on the models of ``tests/test_distributed.py`` (``small``: q_alpha 1x8,
float64, 2 fields of 6 points, the callback and failure tests; ``test``: 2x24, float32, 4 fields of 16 points, the
20-step test) and the ``--quick`` model of ``benchmarks/_ddp.py`` (``quick``: 3x64, float32, 8 fields of 30 points):

* ``step ms``: the median time of one Adam step of ``RGNP.fit`` on rank 0 (from one loss evaluation to the next:
  loss, all-reduces, backward, update; fit's set-up excluded), over ``--blocks`` fits of ``--steps`` steps, with
  ``mean_of`` (``status``) and with the loss averaged alone as before (``DataParallel.mean_of`` replaced by
  ``mean(compute())``: one all-reduce of the bare loss; ``bare``), the fits of the two interleaved;
* ``flag all-reduce us``: the median time of one more all-reduce of a 1-element int64 flag (what a status sent in a
  collective of its own would cost every step), and of the float64 pair ``(L, f)`` against the bare loss alone;
* ``grad numbers``: the length of the step's gradient all-reduce, whose last number is the status of the backward
  pass (in both variants).

Run: ``OMP_NUM_THREADS=1 python benchmarks/ddp_status.py`` (writes ``benchmarks/results/ddp_status.md``;
``--quick``: 2 fits of 5 steps per variant and 100 all-reduces, ``results/local/ddp_status_quick.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, report_name, write_benchmark_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL_GIC = dict(lift_channels=4, lift_hidden=(8,), cnn_channels=(6, 6), mlp_hidden=(16,), grid_size=10)
QUICK_GIC = dict(lift_channels=8, lift_hidden=(16,), cnn_channels=(16, 16), mlp_hidden=(64,), grid_size=16)


def _models():
    from gpgeom.models.rgnp import RGNP
    from gpgeom.pde import NonlinearPoisson1D

    f64, f32 = torch.float64, torch.float32
    return {
        "small": lambda: RGNP.from_family(
            NonlinearPoisson1D(), hidden=(8,), n_freqs=4, gicnet=SMALL_GIC, batch_size=2, n_points=6, dtype=f64
        ),
        "test": lambda: RGNP.from_family(
            NonlinearPoisson1D(), hidden=(24, 24), n_freqs=8, gicnet=SMALL_GIC, batch_size=4, n_points=16, dtype=f32
        ),
        "quick": lambda: RGNP.from_family(
            NonlinearPoisson1D(), hidden=(64, 64, 64), n_freqs=16, gicnet=QUICK_GIC, batch_size=8, n_points=30,
            dtype=f32,
        ),
    }  # fmt: skip


def _allreduce_us(tensors: dict, reps: int) -> dict:
    """The median microseconds of one all-reduce of each tensor, the tensors taken in turn rep by rep."""
    d = torch.distributed
    times: dict = {k: [] for k in tensors}
    for _ in range(reps):
        for k, t in tensors.items():
            t0 = time.perf_counter()
            d.all_reduce(t, op=d.ReduceOp.SUM)
            times[k].append(time.perf_counter() - t0)
    return {k: 1e6 * statistics.median(v) for k, v in times.items()}


def _worker(steps: int, blocks: int, reps: int, out: Path) -> None:
    from gpgeom.engine import distributed as dd

    torch.set_num_threads(1)
    assert dd.init_from_env(), "run me through benchmarks/ddp_status.py (torchrun)"
    d = torch.distributed
    status_mean_of = dd.DataParallel.mean_of

    def bare_mean_of(self, compute, what="training"):  # the loss averaged alone (before the status)
        return self.mean(compute())

    rows = []
    for name, build in _models().items():
        torch.manual_seed(0)
        model = build()
        model.fit(3, lr=1e-3, seed=1, progress=False)  # warm-up
        per: dict = {"status": [], "bare": []}
        stamps: list = []
        loss = model.loss

        def stamped_loss(*a, loss=loss, stamps=stamps):
            stamps.append(time.perf_counter())
            return loss(*a)

        model.loss = stamped_loss  # a step: from one loss evaluation to the next (fit's set-up excluded)
        for b in range(blocks):
            for kind in ("status", "bare") if b % 2 == 0 else ("bare", "status"):
                dd.DataParallel.mean_of = status_mean_of if kind == "status" else bare_mean_of
                try:
                    stamps.clear()
                    model.fit(steps, lr=1e-3, seed=2 + b, progress=False)
                    per[kind] += [t1 - t0 for t0, t1 in zip(stamps, stamps[1:])]
                finally:
                    dd.DataParallel.mean_of = status_mean_of
        dtype = next(model.parameters()).dtype
        us = _allreduce_us(
            {
                "flag": torch.zeros(1, dtype=torch.int64),
                "bare": torch.zeros(1, dtype=dtype),
                "pair": torch.zeros(2, dtype=torch.float64),
            },
            reps,
        )
        rows.append(
            {
                "model": name,
                "dtype": str(dtype).replace("torch.", ""),
                "status_step_ms": 1e3 * statistics.median(per["status"]),
                "bare_step_ms": 1e3 * statistics.median(per["bare"]),
                "steps_timed": len(per["status"]),
                "grad_numbers": sum(p.numel() + 1 for p in model.parameters() if p.requires_grad) + 1,
                "flag_us": us["flag"],
                "bare_allreduce_us": us["bare"],
                "pair_allreduce_us": us["pair"],
            }
        )
    if dd.is_main_process():
        out.write_text(json.dumps(rows))
    d.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="2 fits of 5 steps per variant, 100 all-reduces")
    ap.add_argument("--steps", type=int, default=20, help="Adam steps per timed fit")
    ap.add_argument("--blocks", type=int, default=6, help="timed fits per variant")
    ap.add_argument("--reps", type=int, default=500, help="all-reduces per timing")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.blocks, args.reps = 5, 2, 100
    if args.worker:
        _worker(args.steps, args.blocks, args.reps, args.out)
        return
    torch.set_num_threads(1)  # the ranks' setting, for the machine line
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "rows.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
        cmd += [str(Path(__file__).resolve()), "--worker", "--out", str(raw)]
        cmd += ["--steps", str(args.steps), "--blocks", str(args.blocks), "--reps", str(args.reps)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"torchrun failed ({proc.returncode}): {proc.stderr[-3000:]}")
        rows = json.loads(raw.read_text())
    facts = [
        "2 ranks of `torchrun --standalone`, gloo, CPU, one torch thread each",
        f"load average (1 min): {load0:.2f} at the start, {os.getloadavg()[0]:.2f} at the end (cores shared with "
        "other jobs)",
        f"step ms: median over the steps of {args.blocks} fits of {args.steps} steps (`RGNP.fit`, rank 0, from one "
        "loss evaluation to the next), the fits of the two variants interleaved; 'status': `DataParallel.mean_of` "
        "(loss and status in one float64 all-reduce of 2 numbers); 'bare': the loss all-reduced alone, as before",
        f"all-reduce us: median of {args.reps}, the three taken in turn; 'flag': a 1-element int64 all-reduce, what "
        "a status in a collective of its own would add every step; 'bare' / 'pair': the loss alone / the float64 "
        "pair (L, f)",
        "grad numbers: the length of the gradient all-reduce of every step (the gradients, one 'used' count per "
        "parameter tensor, and the status of the backward pass, the same in both variants)",
    ]
    table = markdown_table(
        ["model", "dtype", "step ms (status)", "step ms (bare)", "flag all-reduce us", "flag / step",
         "bare all-reduce us", "pair all-reduce us", "grad numbers"],
        [
            [r["model"], r["dtype"], f"{r['status_step_ms']:.3g}", f"{r['bare_step_ms']:.3g}", f"{r['flag_us']:.3g}",
             f"{100 * r['flag_us'] / (1e3 * r['status_step_ms']):.2g}%", f"{r['bare_allreduce_us']:.3g}",
             f"{r['pair_allreduce_us']:.3g}", r["grad_numbers"]]
            for r in rows
        ],
    )  # fmt: skip
    quick = (args.steps, args.blocks, args.reps) != (20, 6, 500)
    write_benchmark_report(
        report_name("ddp_status", quick=quick),
        "Cost of the step status of data-parallel RGNP training (2 gloo ranks)",
        facts,
        [table],
    )


if __name__ == "__main__":
    main()

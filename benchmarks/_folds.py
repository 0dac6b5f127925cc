r"""The command line and report of the Beijing fold benchmarks (``funbat_stations.py``, ``funbat_day_offsets.py``):
every fold in its own spawned process, the rows of all folds written as :func:`funbat_stopping.write_tables`."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from multiprocessing import get_context

import torch
from _common import machine_info, report_name, results_path
from funbat_stopping import write_tables

from gpgeom.datasets.tensors import ContinuousTensor

ALL_FOLDS = [0, 1, 2, 3, 4]


def with_modes(data: ContinuousTensor, X: torch.Tensor, names: tuple[str, ...]) -> ContinuousTensor:
    r"""The entries of ``data`` (same ``y``, same order, so the same folds) at other coordinates ``X`` (``N x K``)."""
    return ContinuousTensor(X=X, y=data.y, mode_names=names, info=data.info)


def finish_fold(fold: int, rows: dict[str, dict], t0: float, width: int = 40) -> dict[str, dict]:
    r"""Drop the predictions from ``rows`` (label -> :func:`funbat.metrics` results; they stay in the worker), print
    the fold's RMSEs and time, and return ``rows``."""
    for r in rows.values():
        for key in ("mean", "std"):
            r.pop(key, None)
    print(f"fold {fold}: " + ", ".join(f"{k[:width]} {v['rmse']:.4f}" for k, v in rows.items()), flush=True)
    print(f"fold {fold} done in {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def run_fold_benchmark(
    run_fold: Callable[[int], dict[str, dict]],
    *,
    argv: list[str] | None,
    description: str,
    name: str,
    title: str,
    details: str,
    footer: Callable[[dict[str, list[dict]], list[int]], list[str]] | None = None,
    command: str | None = None,
) -> int:
    r"""Parse ``[--quick] [--folds ...] [--jobs N]``, run ``run_fold`` on each fold (``--jobs`` processes), and write
    ``benchmarks/results/<name>.md`` (all five folds) or ``results/local/<name>_quick.md`` (``--quick``: fold 0, or
    other folds). ``details`` follows the folds on the header's second line; ``footer(rows, folds)``, if given,
    returns lines written after the tables. ``command``: how the run was started, when not ``benchmarks/<name>.py``."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fold 0 only")
    ap.add_argument("--folds", type=int, nargs="+", default=None, help="Beijing folds (default 0..4)")
    ap.add_argument("--jobs", type=int, default=2, help="folds run in parallel, one process each")
    args = ap.parse_args(argv)
    folds = args.folds if args.folds is not None else ([0] if args.quick else ALL_FOLDS)
    jobs = max(1, min(args.jobs, len(folds)))  # the processes run: the header says this, not the option
    t0 = time.perf_counter()
    with get_context("spawn").Pool(jobs) as pool:
        per_fold = pool.map(run_fold, folds)
    rows = {label: [pf[label] for pf in per_fold] for label in per_fold[0]}
    out_path = results_path(report_name(name, quick=folds != ALL_FOLDS))
    header = [
        f"# {title}",
        "",
        f"- machine: {machine_info('cpu')}; {jobs} fold{'s' if jobs > 1 else ''} at a time, one process each; "
        f"{time.perf_counter() - t0:.0f} s in all",
        f"- folds: {folds} (seeded random 80/20, `benchmarks/funbat.py`); {details}",
        f"- `{command or f'benchmarks/{name}.py'}` (its docstring says what each row is)",
    ]
    return write_tables(rows, folds, header, out_path, footer(rows, folds) if footer else ())

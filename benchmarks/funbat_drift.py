#!/usr/bin/env python3
r"""FunBaT on BeijingAir-PM2.5: where the drift of long fits comes from (issue #17, "converged no worse than early").

``funbat_day_offsets.md`` and ``funbat_stopping_rules.md`` show that FunBaT's sweeps, followed past the default
convergence test, keep raising the ELBO and lowering the training error while the test error rises. Three things
change from sweep to sweep: the hyperparameters (each mode's lengthscale and variance), the noise precision
:math:`q(\tau)` and the factors themselves (the latent functions and the core). This script holds the first two
after ``HOLD`` sweeps and follows the fit for ``BUDGET`` sweeps, so that what still drifts is the mean-field
fixed point of the factors under fixed hyperparameters and noise. On the 5 seeded 80/20 folds of
``benchmarks/funbat.py`` and both tensorisations of ``benchmarks/funbat_day_offsets.py``, in one run:

* **defaults**: ``FunBaT()`` (the convergence test ``tol=1e-3`` stops it);
* **cut short**: ``FunBaT(max_sweeps=HOLD)``;
* **followed, all learned**: ``FunBaT(max_sweeps=BUDGET, tol=0)``;
* **followed, hyperparameters held**: the same fit, whose callback sets ``learn_hyperparameters = False`` after
  sweep ``HOLD`` (so no later hyperparameter step);
* **followed, hyperparameters and noise held**: also ``learn_noise = False`` after sweep ``HOLD``: :math:`q(\tau)`
  stays as it was (the same fit as the committed table's, which held it by a noise-message damping of 1).

``HOLD`` is larger than ``restart_sweeps`` (10), so the holds act on the fit that the restarts chose, never on a
restart. A footer traces the followed fits (mean over the folds): test RMSE, training RMSE (standardised units) and
ELBO after sweeps ``TRACE`` (the state after that sweep, before the final smoothing; the test RMSE from
``predict``). Calibration of a new observation's predictive distribution (Gaussian with the reported sd).

Usage: ``python benchmarks/funbat_drift.py [--quick] [--folds 0 1 2 3 4] [--jobs 2]``. Writes
``benchmarks/results/funbat_drift.md`` (all five folds); ``--quick`` (fold 0) or other folds write
``benchmarks/results/local/funbat_drift_quick.md``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _folds import finish_fold, run_fold_benchmark  # noqa: E402
from funbat import run_funbat  # noqa: E402
from funbat_stopping_rules import rmse  # noqa: E402

from gpgeom.datasets.tensors import load_beijing_air  # noqa: E402
from gpgeom.models.funbat import FunBaT  # noqa: E402

#: Sweeps with everything learned before the holds (past the 10 restart sweeps; the default test stops at 17-76).
HOLD = 15
#: Sweeps the fits are followed for (followed fits on the paper's coordinates: lowest test RMSE at 65-300 sweeps,
#: ``funbat_stopping_rules.md``; on the offsets at 8-32).
BUDGET = 200
#: Sweeps at which the footer traces the followed fits.
TRACE = (HOLD, 25, 50, 100, BUDGET)
#: What each followed fit holds after sweep ``HOLD``.
HOLDS = {"all learned": (), "hyperparameters held": ("hyper",), "hyperparameters and noise held": ("hyper", "noise")}
TENSORS = {
    "(temperature, pressure, day)": {},
    "(temperature offset, pressure offset, day)": {"day_offsets": True},
}


def followed(split, holds: tuple[str, ...]) -> dict:
    r"""``FunBaT(max_sweeps=BUDGET, tol=0)`` on the training fold with ``holds`` after sweep ``HOLD``: the
    :func:`funbat.run_funbat` results, and ``trace``: sweep -> (test RMSE, train RMSE, ELBO)."""
    trace: dict[int, tuple[float, float, float]] = {}

    def on_sweep(model: FunBaT, entry: dict) -> None:
        n = len(model.history)  # > restart_sweeps: the sweeps of the fit the restarts chose
        if n == HOLD:
            if "hyper" in holds:
                model.learn_hyperparameters = False
            if "noise" in holds:
                model.learn_noise = False
        if n in TRACE:
            trace[n] = (rmse(model.predict(split.X_test)[:, 0], split.y_test), entry["train_rmse"], entry["elbo"])

    if FunBaT().restart_sweeps >= HOLD:
        raise RuntimeError("HOLD must exceed the restart sweeps, so that the holds act on the chosen fit")
    return {**run_funbat(split, "cpu", max_sweeps=BUDGET, tol=0.0, callback=on_sweep), "trace": trace}


def run_fold(fold: int) -> dict[str, dict]:
    r"""Every row of the table for one fold (label -> :func:`funbat.metrics` results, without the predictions)."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rows: dict[str, dict] = {}
    t0 = time.perf_counter()
    for name, kw in TENSORS.items():
        split = load_beijing_air(**kw).split(fold)
        rows[f"FunBaT defaults, {name}"] = run_funbat(split, "cpu")
        rows[f"FunBaT max_sweeps={HOLD}, {name}"] = run_funbat(split, "cpu", max_sweeps=HOLD)
        for hold, what in HOLDS.items():
            rows[f"FunBaT followed {BUDGET} sweeps, {hold}, {name}"] = followed(split, what)
    return finish_fold(fold, rows, t0)


def trace_footer(rows: dict[str, list[dict]], folds: list[int]) -> list[str]:
    r"""The footer: the followed fits' test RMSE, training RMSE and ELBO after each sweep of ``TRACE``, mean over
    ``folds``."""
    lines = [
        f"## The followed fits after each sweep (mean over the folds; the holds act after sweep {HOLD})",
        "",
        "| followed fit | sweep | test RMSE | train RMSE (standardised) | ELBO |",
        "|---|---|---|---|---|",
    ]
    for label, rs in rows.items():
        if "followed" not in label:
            continue
        for n in TRACE:
            test, train, elbo = (float(np.mean([r["trace"][n][i] for r in rs])) for i in range(3))
            lines.append(f"| {label.removeprefix('FunBaT ')} | {n} | {test:.4f} | {train:.4f} | {elbo:.1f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    return run_fold_benchmark(
        run_fold,
        argv=argv,
        description=__doc__,
        name="funbat_drift",
        title="FunBaT on BeijingAir-PM2.5: long fits with the hyperparameters and the noise held",
        details=(
            f"the same 16,965 entries and test entries in every row; both tensorisations of "
            f"`benchmarks/funbat_day_offsets.py`; holds after sweep {HOLD} of the fit the restarts chose; "
            "calibration of a new observation's predictive distribution (Gaussian with the reported sd)"
        ),
        footer=trace_footer,
    )


if __name__ == "__main__":
    raise SystemExit(main())

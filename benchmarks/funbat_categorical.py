#!/usr/bin/env python3
r"""The station of BeijingAir-PM2.5 as an unordered (categorical) mode of FunBaT, against the Matérn prior on its code.

``benchmarks/funbat_stations.py`` gives FunBaT the station as a fourth mode at the coordinate ``10 s / 11`` of its
alphabetical rank ``s``, with the Matérn prior of every mode: alphabetically neighbouring stations are tied a priori,
an order that means nothing. ``FunBaT(categorical=k)`` gives mode ``k`` independent values per label instead
(:class:`gpgeom.kernels.categorical.CategoricalMarkovKernel`, :mod:`gpgeom.models.funbat.priors`): invariant to
relabelling, the prior at an unseen label, only a variance to learn. This script measures both priors on the 5 seeded
80/20 folds of ``benchmarks/funbat.py`` (the same entries and test entries as ``funbat_stations.py``), in one run:

* (temperature, pressure, day, station): FunBaT defaults with the ordered station, with the categorical station, and
  the categorical station with ``n_restarts=6`` (the fits of this tensor have several local optima; the restarts
  are chosen by the ELBO);
* (day, station): defaults, ordered and categorical; the tuned setting of ``funbat_stations.py`` (Matérn-1/2 factors,
  rank 4, 8 restarts), ordered and categorical;
* (day, station) with the stations in a seeded random order instead of the alphabetical one: the ordered prior's
  result depends on that order, the categorical prior's does not (its fit is the same sweep by sweep).

and, in the same run, the strong plain baseline of ``funbat_stations.py``: the exact GP given the station
(Matérn-1/2 ARD on temperature, pressure and day times a free 12 x 12 station covariance, the intrinsic
coregionalisation model, whose ``IndexKernel`` is itself a categorical kernel), most of the run's time.

Usage: ``python benchmarks/funbat_categorical.py [--quick] [--folds 0 1 2 3 4] [--jobs 2]``. Writes
``benchmarks/results/funbat_categorical.md`` (all five folds); ``--quick`` (fold 0) or other folds write
``benchmarks/results/local/funbat_categorical_quick.md``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _folds import finish_fold, run_fold_benchmark, with_modes  # noqa: E402
from funbat import run_funbat  # noqa: E402
from funbat_stations import N_STATIONS, STATION_FUNBAT, station_code, station_gp  # noqa: E402

from gpgeom.datasets.tensors import load_beijing_air  # noqa: E402

#: The seed of the shuffled station order.
SHUFFLE_SEED = 0


def run_fold(fold: int) -> dict[str, dict]:
    r"""Every row of the table for one fold (label -> :func:`funbat.metrics` results, without the predictions)."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    data = load_beijing_air(station=True)  # temperature, pressure, day, station at 10 s / 11
    code = station_code(data.X[:, 3]).long()
    order = torch.randperm(N_STATIONS, generator=torch.Generator().manual_seed(SHUFFLE_SEED))
    shuffled = torch.stack([data.X[:, 2], order[code].to(data.X) * (10.0 / (N_STATIONS - 1))], 1)
    tpds = data.split(fold)
    ds = with_modes(data, data.X[:, 2:], data.mode_names[2:]).split(fold)
    ds_shuffled = with_modes(data, shuffled, data.mode_names[2:]).split(fold)

    rows: dict[str, dict] = {}
    t0 = time.perf_counter()
    tpd = "(temperature, pressure, day, station)"
    rows[f"FunBaT defaults, {tpd}, station ordered"] = run_funbat(tpds, "cpu")
    rows[f"FunBaT defaults, {tpd}, station categorical"] = run_funbat(tpds, "cpu", categorical=3)
    rows[f"FunBaT n_restarts=6, {tpd}, station categorical"] = run_funbat(tpds, "cpu", categorical=3, n_restarts=6)
    rows["FunBaT defaults, (day, station), station ordered"] = run_funbat(ds, "cpu")
    rows["FunBaT defaults, (day, station), station categorical"] = run_funbat(ds, "cpu", categorical=1)
    rows["FunBaT nu=1/2, rank 4, 8 restarts, (day, station), station ordered"] = run_funbat(ds, "cpu", **STATION_FUNBAT)
    rows["FunBaT nu=1/2, rank 4, 8 restarts, (day, station), station categorical"] = run_funbat(
        ds, "cpu", categorical=1, **STATION_FUNBAT
    )
    rows["FunBaT defaults, (day, station), shuffled stations, ordered"] = run_funbat(ds_shuffled, "cpu")
    rows["FunBaT defaults, (day, station), shuffled stations, categorical"] = run_funbat(
        ds_shuffled, "cpu", categorical=1
    )
    rows["exact GP, Matérn-1/2 ARD x free station covariance, (temperature, pressure, day, station)"] = station_gp(
        tpds, fold
    )
    return finish_fold(fold, rows, t0)


def main(argv: list[str] | None = None) -> int:
    return run_fold_benchmark(
        run_fold,
        argv=argv,
        description=__doc__,
        name="funbat_categorical",
        title="BeijingAir-PM2.5: the station as a categorical mode of FunBaT against the Matérn prior on its code",
        details=(
            "the same 16,965 entries and test entries in every row (those of `funbat_stations.py`); ordered: the "
            "station at 10 s / 11 of its alphabetical rank s (shuffled: of a seeded random rank) with FunBaT's Matérn "
            "prior; categorical: `categorical=` that mode; calibration of a new observation's predictive distribution"
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())

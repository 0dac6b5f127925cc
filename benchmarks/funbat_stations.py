#!/usr/bin/env python3
r"""Where FunBaT's gap to the exact GP on BeijingAir-PM2.5 comes from: the station the paper's modes leave out.

The FunBaT paper's Beijing tensor indexes each daily station mean by (temperature, pressure, day). Almost all of its
variance is the day's level (the within-day variance is 6 % of the total), so every model predicts the day well and
the test RMSE is decided by the variation *between the stations of one day*. That variation is mostly a station
effect that grows with the day's level; the paper's modes see the station only through the small within-day offsets
of its temperature and pressure (1-3 hPa, against a range of 55 hPa over the four years). An exact GP with a stationary
product kernel uses such offsets directly (its covariance depends on differences only); a low-rank decomposition of
functions of absolute temperature and pressure cannot, because a shift that follows the season is not low rank.

This script measures that on the 5 seeded 80/20 folds of ``benchmarks/funbat.py`` (``data.split(fold)``), in one run:

* baselines that use no model: each test entry predicted by its day's training mean, and by that mean plus a
  per-station least-squares term ``a_s m_d + b_s`` (the station known); their predictive sd is the RMS of the
  training residuals (calibration columns only for completeness);
* the paper's tensor: FunBaT defaults and the exact GP of ``benchmarks/funbat.py`` (product of Matérn-1/2 kernels,
  hyperparameters on 2,000 training entries, conditioned on the whole fold);
* the same entries with the station as a mode (the 12 stations in alphabetical order at ``10 s / 11``, the paper's
  scaling of a mode to ``[0, 10]``): FunBaT defaults on (temperature, pressure, day, station) and on (day, station),
  FunBaT on (day, station) with Matérn-1/2 factors, rank 4 and 8 restarts, and an exact GP with a Matérn-1/2 ARD
  kernel on (temperature, pressure, day) times a free-form 12 x 12 station covariance (GPyTorch's ``IndexKernel`` of
  rank 12, the intrinsic coregionalisation model), hyperparameters on every training entry of 215 random training
  days (about 2,000 entries, so that the within-day covariance is identifiable), the best of 4 starts (the first
  from ``IndexKernel``'s random initial factor, seeded by the fold), conditioned on the whole fold.

The station is the fourth mode of ``load_beijing_air(station=True)`` (shipped with the package, no CSV needed).

Usage: ``python benchmarks/funbat_stations.py [--quick] [--folds 0 1 2 3 4] [--jobs 2]``. Writes
``benchmarks/results/funbat_stations.md`` (all five folds); ``--quick`` (fold 0, about 10 minutes) or other folds
write ``benchmarks/results/local/funbat_stations_quick.md``.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _folds import finish_fold, run_fold_benchmark, with_modes  # noqa: E402
from funbat import conditioned_gp, metrics, run_dense_gp, run_funbat  # noqa: E402

from gpgeom.datasets.tensors import BEIJING_STATIONS, load_beijing_air  # noqa: E402

N_STATIONS = len(BEIJING_STATIONS)
#: Training days whose entries fit the station GP's hyperparameters (about 2,000 entries).
HYPER_DAYS = 215
#: Extra random starts of the station GP's hyperparameter fit (the best marginal likelihood of 1 + RESTARTS).
RESTARTS = 3
#: FunBaT on (day, station) beyond its defaults.
STATION_FUNBAT = {"nu": (0.5, 0.5), "rank": 4, "n_restarts": 8}


def station_code(x: torch.Tensor) -> torch.Tensor:
    r"""The station's alphabetical rank ``s`` (0-11, as floats) from its mode coordinate ``10 s / 11`` (any shape)."""
    return torch.round(x * ((N_STATIONS - 1) / 10.0))


def baselines(split, station: torch.Tensor, train: torch.Tensor, test: torch.Tensor) -> dict[str, dict]:
    r"""The day's training mean, and that mean plus ``a_s m_d + b_s`` fitted per station by least squares."""
    day_tr, day_te = split.X_train[:, 2].contiguous(), split.X_test[:, 2].contiguous()
    days, inv = torch.unique(day_tr, return_inverse=True)
    sums = torch.zeros(days.numel(), dtype=torch.float64).index_add_(0, inv, split.y_train)
    counts = torch.zeros(days.numel(), dtype=torch.float64).index_add_(0, inv, torch.ones_like(split.y_train))
    day_mean = sums / counts
    pos = torch.searchsorted(days, day_te).clamp(max=days.numel() - 1)
    m_te = torch.where(days[pos] == day_te, day_mean[pos], torch.zeros_like(day_te))  # unseen day: the global mean 0
    m_tr = day_mean[inv]
    s_tr, s_te = station[train], station[test]
    coef = torch.zeros(N_STATIONS, 2, dtype=torch.float64)
    for s in range(N_STATIONS):
        k = s_tr == s
        A = torch.stack([m_tr[k], torch.ones_like(m_tr[k])], 1)
        coef[s] = torch.linalg.lstsq(A, (split.y_train - m_tr)[k, None]).solution[:, 0]
    out = {}
    for label, fit_tr, pred in (
        ("day's training mean", m_tr, m_te),
        (
            "day's training mean + station term a_s m_d + b_s",
            m_tr + coef[s_tr, 0] * m_tr + coef[s_tr, 1],
            m_te + coef[s_te, 0] * m_te + coef[s_te, 1],
        ),
    ):
        sd = (split.y_train - fit_tr).square().mean().sqrt()
        out[f"baseline: {label}"] = metrics(pred, sd.expand_as(pred), split.y_test, split.test_unseen)
    return out


def station_gp(split, fold: int) -> dict:
    r"""Exact GP: Matérn-1/2 ARD on (temperature, pressure, day) / 10 times a rank-12 ``IndexKernel`` on the station
    (last column, an integer), hyperparameters on the entries of ``HYPER_DAYS`` random training days, conditioned
    on the whole fold."""
    from gpytorch.kernels import IndexKernel, MaternKernel

    from gpgeom.botorch.exact_gp import ExactGPModel

    def kernel():
        return MaternKernel(nu=0.5, ard_num_dims=3, active_dims=[0, 1, 2]) * IndexKernel(
            num_tasks=N_STATIONS, rank=N_STATIONS, active_dims=[3]
        )

    def inputs(X):  # coordinates / 10, the station back to its integer code
        return torch.cat([X[:, :3] / 10.0, station_code(X[:, 3:])], 1)

    Xtr, Xte = inputs(split.X_train), inputs(split.X_test)
    t0 = time.perf_counter()
    torch.manual_seed(fold)  # IndexKernel draws its initial covariance factor from the global generator
    gen = torch.Generator().manual_seed(fold)
    days = torch.unique(Xtr[:, 2])
    keep = torch.isin(Xtr[:, 2], days[torch.randperm(days.numel(), generator=gen)[:HYPER_DAYS]])
    gp = ExactGPModel(Xtr[keep], split.y_train[keep, None], covar_module=kernel(), input_transform=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # GPyTorch's sparse-tensor notice of IndexKernel
        gp.fit(progress=False, max_iter=200, restarts=RESTARTS, seed=fold)
        pred = conditioned_gp(gp, Xtr, split.y_train, kernel())
        mean, std = pred.predict(Xte, return_std=True, observation_noise=True)
    r = metrics(mean[:, 0], std[:, 0], split.y_test, split.test_unseen)
    r.update(seconds=time.perf_counter() - t0, n_fit=int(keep.sum()))
    return r


def run_fold(fold: int) -> dict[str, dict]:
    r"""Every row of the table for one fold (label -> :func:`funbat.metrics` results, without the predictions)."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    data = load_beijing_air(station=True)  # temperature, pressure, day, station at 10 s / 11
    station = station_code(data.X[:, 3]).long()
    split = with_modes(data, data.X[:, :3], data.mode_names[:3]).split(fold)
    train, test = split.info["train_index"], split.info["test_index"]

    rows: dict[str, dict] = {}
    t0 = time.perf_counter()
    rows.update(baselines(split, station, train, test))
    rows["FunBaT defaults, (temperature, pressure, day)"] = run_funbat(split, "cpu")
    rows["exact GP, product of Matérn-1/2, (temperature, pressure, day)"] = run_dense_gp(
        split, 2000, None, 0.5, fold, "cpu"
    )
    tpds = data.split(fold)
    ds = with_modes(data, data.X[:, 2:], data.mode_names[2:]).split(fold)
    rows["FunBaT defaults, (temperature, pressure, day, station)"] = run_funbat(tpds, "cpu")
    rows["FunBaT defaults, (day, station)"] = run_funbat(ds, "cpu")
    rows["FunBaT nu=1/2, rank 4, 8 restarts, (day, station)"] = run_funbat(ds, "cpu", **STATION_FUNBAT)
    rows["exact GP, Matérn-1/2 ARD x free station covariance, (temperature, pressure, day, station)"] = station_gp(
        tpds, fold
    )
    return finish_fold(fold, rows, t0)


def main(argv: list[str] | None = None) -> int:
    return run_fold_benchmark(
        run_fold,
        argv=argv,
        description=__doc__,
        name="funbat_stations",
        title="BeijingAir-PM2.5 with and without the station: where FunBaT's gap to the exact GP comes from",
        details=(
            "the same 16,965 entries in every row; the station as a mode at 10 s / 11 (alphabetical order); "
            "calibration of a new observation's predictive distribution (Gaussian with the reported sd)"
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
r"""Facts of the bundled BeijingAir-PM2.5 tensor that the FunBaT page and tutorial quote (no model is fitted).

Data: :func:`gpgeom.datasets.tensors.load_beijing_air` (the shipped ``gpgeom/data/beijing_pm25.npz``: 16,965 daily
station means, PM2.5 z-scored), read through the public loader only: the readings in their units from the modes'
``[0, 10]`` scale and ``info["temp_range_C"]``/``info["pres_range_hPa"]`` (rounded to 0.1 like the readings), the
offsets from ``load_beijing_air(day_offsets=True)``, the station from ``load_beijing_air(station=True)``.

Reported:

* the range of each mode in its units, in the paper's coordinates and as offsets from the day's mean over the
  stations (the offsets' loader's own ``info``);
* the share of the variance of PM2.5 that a mean per group explains, :math:`1 - \sum_n (y_n - \bar y_{g(n)})^2 /
  \sum_n (y_n - \bar y)^2`, for the day and for the station (all entries, no split);
* each station's mean offset from the day's mean (temperature, pressure) and the spread of the entries' offsets.

Usage: ``python benchmarks/beijing_facts.py [--quick]`` (seconds). Writes ``benchmarks/results/beijing_facts.md``;
``--quick`` does the same computation and writes ``benchmarks/results/local/beijing_facts_quick.md`` instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import markdown_table, report_name, write_benchmark_report  # noqa: E402
from gpgeom.datasets.tensors import BEIJING_STATIONS, load_beijing_air  # noqa: E402

TITLE = "BeijingAir-PM2.5: facts of the data"


def readings(X: np.ndarray, info: dict) -> tuple[np.ndarray, np.ndarray]:
    r"""Temperature (°C) and pressure (hPa) of each entry (``N``, ``N``) from ``X`` (``N x 3``, modes in ``[0, 10]``)
    and the ranges in ``info``, rounded to 0.1 like the readings."""
    out = []
    for k, key in ((0, "temp_range_C"), (1, "pres_range_hPa")):
        lo, hi = info[key]
        out.append(np.round(lo + X[:, k] * (hi - lo) / 10.0, 1))
    return out[0], out[1]


def group_means(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    r"""The mean of ``values`` (``N``) over each group of ``groups`` (``N`` ints ``0..G-1``): ``G`` values."""
    return np.bincount(groups, values) / np.bincount(groups)


def explained_share(y: np.ndarray, groups: np.ndarray) -> float:
    r"""The share of the variance of ``y`` (``N``) explained by its group means (``groups``: ``N`` ints)."""
    resid = y - group_means(y, groups)[groups]
    return float(1.0 - np.square(resid).sum() / np.square(y - y.mean()).sum())


def facts() -> tuple[list[str], list[str]]:
    """The report's fact lines and body."""
    data = load_beijing_air(station=True)
    X, y = data.X.numpy(), data.y.numpy()
    day = np.unique(X[:, 2], return_inverse=True)[1]
    station = np.rint(X[:, 3] * (len(BEIJING_STATIONS) - 1) / 10.0).astype(np.int64)
    temp, pres = readings(X, data.info)
    offsets = load_beijing_air(day_offsets=True)
    head = [
        f"data: load_beijing_air() ({Path(data.info['source']).name}), {len(y)} entries, {day.max() + 1} days,"
        f" {len(BEIJING_STATIONS)} stations, {data.info['first_day']} to {data.info['last_day']}; PM2.5 z-scored",
        "offsets: each reading minus the mean over the entries of its day; the ranges are those of"
        " load_beijing_air(day_offsets=True) (rounded to 0.1), the stations' means and the spread unrounded",
    ]
    body = ["## Ranges of the modes", ""]
    rows = []
    for name, unit, info, key in (
        ("temperature", "°C", data.info, "temp_range_C"),
        ("pressure", "hPa", data.info, "pres_range_hPa"),
        ("temperature offset from the day's mean", "°C", offsets.info, "temp_range_C"),
        ("pressure offset from the day's mean", "hPa", offsets.info, "pres_range_hPa"),
    ):
        lo, hi = info[key]
        rows.append([name, unit, f"{lo:.1f}", f"{hi:.1f}", f"{hi - lo:.1f}"])
    body += [markdown_table(["mode", "unit", "min", "max", "range"], rows), ""]

    body += ["## Share of the variance of PM2.5 explained by a mean per group", ""]
    rows = [["day", day.max() + 1, f"{explained_share(y, day):.4f}"]]
    rows.append(["station", len(BEIJING_STATIONS), f"{explained_share(y, station):.4f}"])
    body += [markdown_table(["group", "groups", "share of the variance"], rows), ""]

    body += ["## Offsets from the day's mean over the stations", ""]
    off_t, off_p = temp - group_means(temp, day)[day], pres - group_means(pres, day)[day]
    mean_t, mean_p = group_means(off_t, station), group_means(off_p, station)
    rows = [[s, f"{mean_t[i]:+.2f}", f"{mean_p[i]:+.2f}"] for i, s in enumerate(BEIJING_STATIONS)]
    rows.append(["min over the stations", f"{mean_t.min():+.2f}", f"{mean_p.min():+.2f}"])
    rows.append(["max over the stations", f"{mean_t.max():+.2f}", f"{mean_p.max():+.2f}"])
    body += [markdown_table(["station", "mean temperature offset (°C)", "mean pressure offset (hPa)"], rows), ""]
    rows = []
    for name, off in (("temperature (°C)", off_t), ("pressure (hPa)", off_p)):
        q50, q95 = np.quantile(np.abs(off), (0.5, 0.95))
        rows.append([name, f"{np.sqrt(np.mean(off**2)):.2f}", f"{q50:.2f}", f"{q95:.2f}"])
    body += ["Spread of the entries' offsets:", ""]
    body += [
        markdown_table(["offset", "RMS", "median absolute offset", "95th percentile of the absolute offset"], rows)
    ]
    return head, body


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="write to benchmarks/results/local/ (same computation)")
    args = parser.parse_args(argv)
    head, body = facts()
    write_benchmark_report(report_name("beijing_facts", quick=args.quick), TITLE, head, body)


if __name__ == "__main__":
    main()

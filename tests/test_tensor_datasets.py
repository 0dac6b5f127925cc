r"""Tests of gpgeom.datasets.tensors: the synthetic continuous-indexed Tucker/CP generator and the Beijing loader.

Truths: the generator's values are recomputed here from its own latent functions and core by an independent einsum;
the Beijing preprocessing is recomputed with numpy from a 425-row sample of the CSV committed in tests/data (and the
shipped tensor checked against those rows); the whole table is compared too when the shared data folder is present.
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import torch

from gpgeom.datasets import tensors
from gpgeom.datasets.tensors import (
    BEIJING_STATIONS,
    ContinuousTensor,
    beijing_csv_path,
    load_beijing_air,
    make_synthetic_tensor,
    write_beijing_npz,
)

# every 40th row of the daily CSV, committed with the tests (tests/data/README.md): runs on a clean clone
SAMPLE_CSV = Path(__file__).resolve().parent / "data" / "beijing_air_daily.csv"
SAMPLE_STEP = 40
# the full CSV lives in the project's shared data folder, outside the repository
SHARED_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "beijing_air_daily.csv"
needs_csv = pytest.mark.skipif(
    not SHARED_CSV.is_file(), reason="the full beijing_air_daily.csv (../shared/data) is not present"
)


# ---------------------------------------------------------------------------------------------------------------
# synthetic
@pytest.mark.parametrize("decomposition", ["tucker", "cp"])
@pytest.mark.parametrize("K", [2, 3])
def test_synthetic_values_are_the_tucker_model(decomposition, K):
    d = make_synthetic_tensor(300, 100, n_modes=K, rank=2, decomposition=decomposition, n_coords=25, seed=3)
    assert d.X_train.shape == (300, K) and d.X_test.shape == (100, K)
    letters = "abcd"[:K]
    for X, f in ((d.X_train, d.f_train), (d.X_test, d.f_test)):
        Us = [d.latent(k, X[:, k]) for k in range(K)]
        expr = f"{letters}," + ",".join(f"n{c}" for c in letters) + "->n"
        torch.testing.assert_close(torch.einsum(expr, d.core, *Us), f, rtol=0, atol=1e-12)
    if decomposition == "cp":
        assert int((d.core != 0).sum()) == 2 and float(d.core[(0,) * K]) == 1.0
    # noise of the requested size, unit-scale signal
    assert abs(float((d.y_train - d.f_train).std()) - 0.05) < 0.01
    assert 0.7 < float(d.f_train.std()) < 1.3


def test_synthetic_seen_unseen_split():
    d = make_synthetic_tensor(400, 200, n_coords=20, unseen_fraction=0.5, seed=0)
    assert int(d.test_unseen.sum()) == 100
    seen = ~d.test_unseen
    for k in range(3):
        train_coords = torch.unique(d.X_train[:, k])
        assert bool(torch.isin(d.X_test[seen, k], train_coords).all())
        assert torch.unique(d.X_train[:, k]).numel() <= 20
    # no test entry is a training entry
    same = (d.X_test[:, None, :] == d.X_train[None, :, :]).all(-1).any(-1)
    assert not bool(same.any())
    # unseen coordinates stay inside the training range by default, may leave it with unseen_range="unit"
    assert not bool(d.test_outside.any())
    d2 = make_synthetic_tensor(400, 400, n_coords=20, unseen_range="unit", seed=0)
    assert bool(d2.test_outside.any()) and bool((d2.test_outside <= d2.test_unseen).all())


@pytest.mark.parametrize(
    ("n_train", "n_coords", "seed"), [(100, 50, 0), (50, 20, 3), (40, (30, 5, 60), 1), (4000, 2000, 2)]
)
def test_seen_test_entries_use_training_coordinates_when_the_grid_is_sparsely_used(n_train, n_coords, seed):
    # with few training entries, some grid coordinates are in no training entry: "seen" test cells with such a
    # coordinate were unseen, 70 % of 400 test entries instead of the requested 50 % at (100, 50)
    d = make_synthetic_tensor(n_train, 400, n_coords=n_coords, unseen_fraction=0.5, seed=seed)
    X_train, X_test = d.X_train.numpy(), d.X_test.numpy()
    in_train = np.stack([np.isin(X_test[:, k], X_train[:, k]) for k in range(3)], axis=1).all(1)
    assert int((~in_train).sum()) == 200  # counted from the coordinates, not from the flags
    np.testing.assert_array_equal(d.test_unseen.numpy(), ~in_train)
    seen = X_test[in_train]
    assert len(np.unique(seen, axis=0)) == 200  # distinct cells ...
    assert not (seen[:, None, :] == X_train[None, :, :]).all(-1).any()  # ... none a training entry
    np.testing.assert_allclose(d.f_test.numpy(), _tucker_truth(d, X_test), rtol=0, atol=1e-12)


def test_unseen_test_entries_keep_training_coordinates_when_the_grid_is_sparsely_used():
    # the kept coordinates of an unseen test entry came from the whole grid, whose coordinates unused by the 50
    # training entries lay outside their range on 1.5 % of the test entries (extrapolation under the documented
    # unseen_range="train", interpolation) and made 2.04 coordinates per unseen entry unseen instead of the 1.625 of
    # "each with probability 1/2, at least one" (1/2 of 3, plus 1 on the 1/8 of entries that drew none)
    outside, n_unseen_coords = [], []
    for seed in range(5):
        d = make_synthetic_tensor(50, 400, n_coords=40, unseen_fraction=0.5, seed=seed)
        X_train, X_test = d.X_train.numpy(), d.X_test.numpy()
        lo, hi = X_train.min(0), X_train.max(0)
        outside.append(((X_test < lo) | (X_test > hi)).any(1))
        unseen = np.stack([~np.isin(X_test[:, k], X_train[:, k]) for k in range(3)], axis=1)
        n_unseen_coords.append(unseen[unseen.any(1)].sum(1))
    assert not np.concatenate(outside).any()
    counts = np.concatenate(n_unseen_coords)  # 1000 entries: the mean's standard error is 0.02
    assert len(counts) == 1000 and abs(counts.mean() - 1.625) < 0.08


def _tucker_truth(d, X: np.ndarray) -> np.ndarray:
    r"""``f(x) = sum_r W_r prod_k u^k_{r_k}(x_k)`` from the returned latent functions and core, by einsum."""
    U = [d.latent(k, torch.as_tensor(X[:, k])).numpy() for k in range(3)]
    return np.einsum("abc,na,nb,nc->n", d.core.numpy(), *U)


def test_too_few_cells_of_training_coordinates_for_the_seen_entries():
    # 3 training entries of one mode use 3 coordinates, all taken: no cell is left for 5 seen test entries
    with pytest.raises(ValueError, match=r"The training entries use \(3,\) coordinates per mode: 3 cells, 3 of them"):
        make_synthetic_tensor(3, 10, n_modes=1, rank=1, n_coords=10, seed=0)


def test_synthetic_is_seeded():
    a = make_synthetic_tensor(100, 50, seed=7)
    b = make_synthetic_tensor(100, 50, seed=7)
    c = make_synthetic_tensor(100, 50, seed=8)
    assert torch.equal(a.X_train, b.X_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.X_train, c.X_train)


def test_synthetic_bad_arguments():
    with pytest.raises(ValueError, match="rank"):
        make_synthetic_tensor(10, 5, rank=0)
    with pytest.raises(ValueError, match="rank"):
        make_synthetic_tensor(10, 5, rank=(2, 2))
    with pytest.raises(ValueError, match="same rank"):
        make_synthetic_tensor(10, 5, rank=(2, 3, 2), decomposition="cp")
    with pytest.raises(ValueError, match="cells"):
        make_synthetic_tensor(100, 10, n_modes=2, n_coords=5)
    with pytest.raises(ValueError, match="decomposition"):
        make_synthetic_tensor(10, 5, decomposition="parafac")
    with pytest.raises(ValueError, match="unseen_fraction"):
        make_synthetic_tensor(10, 5, unseen_fraction=1.5)
    with pytest.raises(ValueError, match="Mode"):
        make_synthetic_tensor(10, 5).latent(3, torch.zeros(2, dtype=torch.float64))


def test_synthetic_n_coords_errors_name_n_coords_and_numpy_ints_work():
    # a wrong `n_coords` used to be reported as a wrong `rank`, and `n_coords=True` as a grid of 1 cell
    with pytest.raises(ValueError, match=r"`n_coords` must be an int >= 1 or 3 ints >= 1 .*got \[5, 5\]"):
        make_synthetic_tensor(10, 5, n_coords=[5, 5])
    with pytest.raises(ValueError, match=r"`n_coords` must be .*got True"):
        make_synthetic_tensor(10, 5, n_coords=True)
    with pytest.raises(ValueError, match=r"`n_coords` must be .*got 0"):
        make_synthetic_tensor(10, 5, n_coords=0)
    # numpy integers (e.g. from a parameter grid) are ints: the same tensor as with Python ints
    a = make_synthetic_tensor(30, 10, rank=np.int64(2), n_coords=np.int64(8), seed=3)
    b = make_synthetic_tensor(30, 10, rank=2, n_coords=8, seed=3)
    assert torch.equal(a.X_train, b.X_train) and torch.equal(a.y_test, b.y_test)
    assert a.info["ranks"] == (2, 2, 2) and type(a.info["n_coords"][0]) is int


# ---------------------------------------------------------------------------------------------------------------
# Beijing
def test_shipped_beijing_tensor():
    data = load_beijing_air()
    assert "beijing_pm25.npz" in data.info["source"]
    assert data.X.shape == (16965, 3) and data.y.shape == (16965,)
    assert data.n_unique == (428, 498, 1461)
    assert torch.allclose(data.X.min(0).values, torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(data.X.max(0).values, torch.full((3,), 10.0, dtype=torch.float64))
    assert abs(float(data.y.mean())) < 1e-12 and abs(float(data.y.std()) - 1.0) < 1e-12
    assert data.mode_names == ("temperature", "pressure", "time")
    assert (tensors._SHIPPED.stat().st_size) < 1_000_000
    with_station = load_beijing_air(station=True)
    assert with_station.X.shape == (16965, 4) and torch.equal(with_station.X[:, :3], data.X)
    assert torch.equal(with_station.y, data.y)
    assert with_station.mode_names == ("temperature", "pressure", "time", "station")
    assert with_station.info["stations"] == BEIJING_STATIONS and len(BEIJING_STATIONS) == 12
    codes = with_station.X[:, 3] * 11 / 10
    assert torch.allclose(codes, codes.round(), atol=1e-12)
    assert torch.equal(torch.bincount(codes.round().long()).ne(0), torch.ones(12, dtype=torch.bool))


def _independent_preprocessing(rows: list[dict], target: str) -> tuple[np.ndarray, np.ndarray]:
    temp = np.round(np.array([float(r["TEMP"]) for r in rows]), 1)
    pres = np.round(np.array([float(r["PRES"]) for r in rows]), 1)
    days = np.array(
        [(dt.date(int(r["year"]), int(r["month"]), int(r["day"])) - dt.date(1970, 1, 1)).days for r in rows], float
    )
    secs = days * 86400.0
    z = np.round((secs - secs.mean()) / secs.std(), 3)
    y = np.array([float(r[target]) for r in rows])
    scale = lambda a: 10 * (a - a.min()) / (a.max() - a.min())  # noqa: E731
    return np.stack([scale(temp), scale(pres), scale(z)], 1), (y - y.mean()) / y.std(ddof=1)


def _read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_beijing_csv_matches_an_independent_preprocessing_and_the_shipped_copy(tmp_path, monkeypatch):
    rows = _read_rows(SAMPLE_CSV)
    X, y = _independent_preprocessing(rows, "PM10")
    csv_data = load_beijing_air("PM10", path=SAMPLE_CSV)
    np.testing.assert_allclose(csv_data.X.numpy(), X, rtol=0, atol=1e-12)
    np.testing.assert_allclose(csv_data.y.numpy(), y, rtol=0, atol=1e-12)
    assert csv_data.info["source"].endswith("beijing_air_daily.csv") and len(csv_data) == len(rows) == 425
    # the .npz format of the shipped copy holds what the CSV gives: write one from the sample and load it as shipped
    npz = write_beijing_npz(tmp_path / "pm25.npz", path=SAMPLE_CSV)
    monkeypatch.setattr(tensors, "_SHIPPED", npz)
    shipped, from_csv = load_beijing_air(), load_beijing_air(path=SAMPLE_CSV.parent)
    assert shipped.info["source"] == str(npz)
    assert torch.equal(shipped.X, from_csv.X) and torch.equal(shipped.y, from_csv.y)
    shipped_s, csv_s = load_beijing_air(station=True), load_beijing_air("PM10", path=SAMPLE_CSV, station=True)
    codes = np.array([BEIJING_STATIONS.index(r["station"]) for r in rows])
    np.testing.assert_allclose(csv_s.X.numpy()[:, 3], 10 * codes / 11, rtol=0, atol=1e-12)
    assert torch.equal(shipped_s.X, csv_s.X) and csv_s.mode_names[3] == "station"
    monkeypatch.undo()
    # the shipped copy itself: sample row i is row 40 i of the full table it was made from
    full = load_beijing_air()
    idx = SAMPLE_STEP * np.arange(len(rows))
    np.testing.assert_allclose(load_beijing_air(station=True).X.numpy()[idx, 3], 10 * codes / 11, rtol=0, atol=1e-12)
    raw = full.y.numpy()[idx] * full.info["raw_std"] + full.info["raw_mean"]
    np.testing.assert_allclose(raw, [float(r["PM2.5"]) for r in rows], rtol=1e-12, atol=1e-9)
    for k, col in ((0, "TEMP"), (1, "PRES")):  # an increasing affine map of the rounded values
        v = np.round(np.array([float(r[col]) for r in rows]), 1)
        slope, icpt = np.polyfit(v, full.X.numpy()[idx, k], 1)
        assert slope > 0
        np.testing.assert_allclose(slope * v + icpt, full.X.numpy()[idx, k], rtol=0, atol=1e-9)
    day = [dt.date(int(r["year"]), int(r["month"]), int(r["day"])) for r in rows]
    order = np.argsort(day, kind="stable")
    assert np.all(np.diff(full.X.numpy()[idx, 2][order]) >= 0)  # time increases with the date


def _independent_day_offsets(rows: list[dict]) -> np.ndarray:
    r"""Temperature and pressure minus the mean over the rows of the same date, rounded to 0.1, scaled to [0, 10]."""
    out = []
    for col in ("TEMP", "PRES"):
        v = np.round(np.array([float(r[col]) for r in rows]), 1)
        day = [(r["year"], r["month"], r["day"]) for r in rows]
        mean = {d: np.mean([x for x, e in zip(v, day) if e == d]) for d in set(day)}
        off = np.round(v - np.array([mean[d] for d in day]), 1)
        out.append(10 * (off - off.min()) / (off.max() - off.min()))
    return np.stack(out, 1)


def _write_rows(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_beijing_day_offsets_match_an_independent_computation(tmp_path, monkeypatch):
    # the sample has one row a day: every offset is zero, a constant mode at 0 (never a NaN)
    single = load_beijing_air("PM10", path=SAMPLE_CSV, day_offsets=True)
    assert torch.equal(single.X[:, :2], torch.zeros(len(single), 2, dtype=torch.float64))
    # the sample's rows put on shared days, four a day (their stations and readings unchanged)
    rows = _read_rows(SAMPLE_CSV)
    for i, r in enumerate(rows):
        r.update({key: rows[4 * (i // 4)][key] for key in ("year", "month", "day")})
    csv_path = _write_rows(tmp_path / "beijing_air_daily.csv", rows)
    paper = load_beijing_air("PM10", path=csv_path)
    data = load_beijing_air("PM10", path=csv_path, day_offsets=True)
    np.testing.assert_allclose(data.X.numpy()[:, :2], _independent_day_offsets(rows), rtol=0, atol=1e-9)
    assert torch.equal(data.X[:, 2], paper.X[:, 2]) and torch.equal(data.y, paper.y)
    assert data.mode_names == ("temperature offset", "pressure offset", "time")
    lo, hi = data.info["temp_range_C"]
    assert lo < 0 < hi and paper.info["temp_range_C"] != (lo, hi)
    # the shipped format reproduces it (it stores the ranges that [0, 10] stands for)
    monkeypatch.setattr(tensors, "_SHIPPED", write_beijing_npz(tmp_path / "pm25.npz", path=csv_path))
    shipped = load_beijing_air(day_offsets=True)
    pm25 = load_beijing_air(path=csv_path, day_offsets=True)
    assert torch.equal(shipped.X, pm25.X) and shipped.info["temp_range_C"] == pm25.info["temp_range_C"]
    with_station = load_beijing_air(day_offsets=True, station=True)
    assert with_station.X.shape == (len(rows), 4) and torch.equal(with_station.X[:, :3], shipped.X)
    # the offsets keep their names with the station mode (it used to relabel them "temperature", "pressure")
    assert with_station.mode_names == ("temperature offset", "pressure offset", "time", "station")
    monkeypatch.undo()
    # the full shipped table: offsets average to zero within every day (up to the 0.1 rounding)
    full = load_beijing_air(day_offsets=True)
    assert full.n_unique[2] == 1461 and full.X.shape == (16965, 3)
    _, day = torch.unique(full.X[:, 2], return_inverse=True)
    for k, key in ((0, "temp_range_C"), (1, "pres_range_hPa")):
        lo, hi = full.info[key]
        offset = lo + full.X[:, k] * (hi - lo) / 10
        day_mean = torch.zeros(1461, dtype=torch.float64).index_add_(0, day, offset) / torch.bincount(day)
        assert float(day_mean.abs().max()) <= 0.05 + 1e-9


def test_beijing_env_variable_and_npz_writer(tmp_path, monkeypatch):
    monkeypatch.setenv("GPGEOM_DATA", str(SAMPLE_CSV.parent))
    assert beijing_csv_path() == SAMPLE_CSV
    data = load_beijing_air("SO2")
    rows = _read_rows(SAMPLE_CSV)
    assert data.info["target"] == "SO2" and len(data) == len(rows)
    np.testing.assert_allclose(data.y.numpy(), _independent_preprocessing(rows, "SO2")[1], rtol=0, atol=1e-12)
    out = write_beijing_npz(tmp_path / "pm25.npz")
    n_days = len({(r["year"], r["month"], r["day"]) for r in rows})
    with np.load(out) as z:
        assert z["codes"].shape == (len(rows), 3) and z["coords_2"].shape == (n_days,)
        np.testing.assert_array_equal(z["coords_2"][z["codes"][:, 2]], data.X.numpy()[:, 2])


@needs_csv
def test_shipped_copy_equals_the_full_csv():
    r"""The whole shipped table against the full CSV (in the project's shared data folder, not in the repository;
    the sample-based test above checks the same on 425 rows everywhere)."""
    shipped = load_beijing_air()
    from_csv = load_beijing_air(path=SHARED_CSV.parent)
    assert torch.equal(shipped.X, from_csv.X) and torch.equal(shipped.y, from_csv.y)
    shipped_s = load_beijing_air(station=True)
    assert torch.equal(shipped_s.X, load_beijing_air(path=SHARED_CSV.parent, station=True).X)
    names = [BEIJING_STATIONS[int(round(c))] for c in (shipped_s.X[:, 3] * 11 / 10).tolist()]
    assert names == [r["station"] for r in _read_rows(SHARED_CSV)]
    offsets = load_beijing_air(path=SHARED_CSV.parent, day_offsets=True)
    assert torch.equal(load_beijing_air(day_offsets=True).X, offsets.X)
    assert (from_csv.info["first_day"], from_csv.info["last_day"]) == ("2013-03-01", "2017-02-28")
    assert (shipped.info["first_day"], shipped.info["last_day"]) == ("2013-03-01", "2017-02-28")


def test_beijing_info_gives_the_days_of_the_csv(tmp_path, monkeypatch):
    rows = [r for r in _read_rows(SAMPLE_CSV) if r["year"] == "2014"]
    path = _write_rows(tmp_path / "beijing_air_daily.csv", rows)
    days = sorted(dt.date(int(r["year"]), int(r["month"]), int(r["day"])) for r in rows)
    first, last = days[0].isoformat(), days[-1].isoformat()
    assert first.startswith("2014-") and last.startswith("2014-")
    # were "2013-03-01" and "2017-02-28" whatever the CSV held
    data = load_beijing_air("PM10", path=path)
    assert (data.info["first_day"], data.info["last_day"]) == (first, last)
    monkeypatch.setattr(tensors, "_SHIPPED", write_beijing_npz(tmp_path / "pm25.npz", path=path))
    shipped = load_beijing_air()  # the .npz format keeps them
    assert shipped.info["source"].endswith("pm25.npz") and (shipped.info["first_day"], shipped.info["last_day"]) == (
        first,
        last,
    )


def test_beijing_csv_without_two_complete_rows_is_a_clear_error(tmp_path):
    rows = _read_rows(SAMPLE_CSV)[:3]
    for r in rows[1:]:
        r["PM10"] = ""  # missing values: the row is dropped
    path = _write_rows(tmp_path / "beijing_air_daily.csv", rows)
    # one complete row: y's sample standard deviation was NaN and every target NaN, without a word
    with pytest.raises(ValueError, match=r"has 1 row\(s\) with PM10, TEMP and PRES all present; at least 2"):
        load_beijing_air("PM10", path=path)


def test_beijing_missing_file_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="beijing_air_daily.csv.*GPGEOM_DATA"):
        load_beijing_air(path=tmp_path)
    monkeypatch.setenv("GPGEOM_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="Cannot find"):
        load_beijing_air("PM10")
    with pytest.raises(ValueError, match="target"):
        load_beijing_air("NO2")
    with pytest.raises(TypeError, match="`station` must be a bool, got str"):
        load_beijing_air(station="yes")
    with pytest.raises(TypeError, match="`day_offsets` must be a bool, got int"):
        load_beijing_air(day_offsets=1)
    rows = _read_rows(SAMPLE_CSV)[:3]
    rows[1]["station"] = "Haidian"
    _write_rows(tmp_path / "beijing_air_daily.csv", rows)
    with pytest.raises(ValueError, match="unknown station 'Haidian'; expected one of Aotizhongxin"):
        load_beijing_air(path=tmp_path)


def test_splits_are_seeded_disjoint_and_flag_unseen():
    data = load_beijing_air()
    a, b, c = data.split(0), data.split(0), data.split(1)
    assert torch.equal(a.info["test_index"], b.info["test_index"])
    assert not torch.equal(a.info["test_index"], c.info["test_index"])
    tr, te = a.info["train_index"], a.info["test_index"]
    assert tr.numel() + te.numel() == len(data) and te.numel() == round(0.2 * len(data))
    assert not bool(torch.isin(tr, te).any())
    for k in range(3):
        fresh = ~torch.isin(a.X_test[:, k], torch.unique(a.X_train[:, k]))
        assert bool((fresh <= a.test_unseen).all())
    small = data.split(2, n_train=1000)
    assert small.X_train.shape == (1000, 3) and small.X_test.shape[0] == te.numel()
    with pytest.raises(ValueError, match="fold"):
        data.split(-1)
    with pytest.raises(ValueError, match="n_train"):
        data.split(0, n_train=10**6)
    assert torch.equal(data.split(np.int64(1)).info["test_index"], c.info["test_index"])  # a numpy fold number


def test_split_that_would_leave_no_training_entry_is_refused():
    ct = ContinuousTensor(torch.rand(3, 2, dtype=torch.float64), torch.rand(3, dtype=torch.float64), ("a", "b"))
    # round(0.9 * 3) = 3 test entries of 3: the unseen flags then failed inside torch (min() of an empty tensor)
    with pytest.raises(ValueError, match=r"`test_fraction`=0.9 of 3 entries holds out 3, leaving no training entry"):
        ct.split(test_fraction=0.9)
    sp = ct.split(test_fraction=0.5)  # round(1.5) = 2 test entries, 1 training entry
    assert sp.X_train.shape == (1, 2) and sp.X_test.shape == (2, 2)


def test_continuous_tensor_container():
    X = torch.tensor([[0.0, 1.0], [0.5, 1.0], [0.5, 2.0], [1.0, 2.0], [1.0, 3.0]], dtype=torch.float64)
    ct = ContinuousTensor(X, torch.arange(5.0, dtype=torch.float64), ("a", "b"))
    assert len(ct) == 5 and ct.n_unique == (3, 3)
    sp = ct.split(0, test_fraction=0.4)
    assert sp.X_test.shape == (2, 2) and sp.test_unseen.dtype == torch.bool

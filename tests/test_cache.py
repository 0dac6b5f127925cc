"""The dataset cache's file rule (``gpgeom._cache``): atomic ``.npz`` files with a checked format version."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from gpgeom._cache import cache_dir, read_npz, write_npz


def test_npz_round_trip_is_atomic_and_checks_version_and_config(tmp_path):
    path = tmp_path / "sub" / "data.npz"
    arrays = {"version": np.array("v2"), "config": np.array('{"n": 3}'), "x": np.arange(6.0).reshape(2, 3)}
    assert write_npz(path, arrays) == path
    assert sorted(p.name for p in path.parent.iterdir()) == ["data.npz"]  # no temporary file left behind
    back = read_npz(path, "v2", '{"n": 3}')
    np.testing.assert_array_equal(back["x"], arrays["x"])
    assert set(back) == {"version", "config", "x"}
    with pytest.raises(ValueError, match="dataset version 'v2' is not 'v3'"):
        read_npz(path, "v3")
    with pytest.raises(ValueError, match="configuration does not match"):
        read_npz(path, "v2", '{"n": 4}')


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GPGEOM_CACHE", str(tmp_path))
    assert cache_dir("pde") == tmp_path / "pde"
    assert cache_dir("pde", root=tmp_path / "other") == tmp_path / "other" / "pde"


def _entry(n: int = 20_000) -> dict:
    return {"version": np.array("v1"), "x": np.arange(float(n))}


@pytest.mark.parametrize("damage", ["truncated", "empty", "not_npz"])
def test_a_damaged_cache_file_is_a_value_error_naming_it(tmp_path, damage):
    path = write_npz(tmp_path / "d.npz", _entry())
    raw = path.read_bytes()
    path.write_bytes({"truncated": raw[: len(raw) // 2], "empty": b"", "not_npz": b"plain text"}[damage])
    # numpy raises zipfile.BadZipFile / EOFError / a pickle message here, which the generators' "regenerate on an
    # unreadable cache" rule (OSError, ValueError, KeyError) did not catch
    with pytest.raises(ValueError, match=r"d\.npz is not a(n| complete) \.npz file"):
        read_npz(path, "v1")


def test_a_file_without_version_or_config_is_a_value_error(tmp_path):
    path = write_npz(tmp_path / "x.npz", {"x": np.zeros(2)})
    with pytest.raises(ValueError, match="no `version` entry"):
        read_npz(path, "v1")
    path = write_npz(tmp_path / "y.npz", _entry(3))
    with pytest.raises(ValueError, match="configuration does not match"):
        read_npz(path, "v1", "{}")


def test_concurrent_writers_of_one_entry_in_one_process(tmp_path):
    # threads of one process used to share the temporary file `.<name>.<pid>.tmp.npz`: one writer's os.replace moved
    # another's half-written file into place or found it gone (FileNotFoundError)
    path, errors = tmp_path / "c.npz", []

    def writer():
        try:
            for _ in range(15):
                write_npz(path, _entry())
        except Exception as err:  # noqa: BLE001 - collected for the assertion
            errors.append(repr(err))

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]
    np.testing.assert_array_equal(read_npz(path, "v1")["x"], np.arange(20_000.0))


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    class Unsaveable:
        def __array__(self, *args, **kwargs):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_npz(tmp_path / "f.npz", {"version": np.array("v1"), "bad": Unsaveable()})
    assert list(tmp_path.iterdir()) == []


def test_generators_regenerate_over_a_truncated_cache_file(tmp_path):
    pytest.importorskip("triangle")
    pytest.importorskip("skfem")
    from gpgeom.datasets.notched_plate import generate_notched_plates

    first = generate_notched_plates(1, cache_dir=tmp_path, mesh_size=0.1, progress=False)
    (path,) = tmp_path.glob("notched_plate_*.npz")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3])  # a partial file (written by a killed process before atomic writes)
    again = generate_notched_plates(1, cache_dir=tmp_path, mesh_size=0.1, progress=False)
    np.testing.assert_array_equal(again[0].points, first[0].points)
    np.testing.assert_array_equal(again[0].fields["U2"], first[0].fields["U2"])
    assert read_npz(path, "notched-plate-v1")["n_points"].tolist() == [first[0].n_nodes]  # rewritten whole


def test_saving_no_samples_names_the_argument(tmp_path):
    # was numpy's "need at least one array to concatenate"
    from gpgeom.datasets.bracket3d import save_brackets
    from gpgeom.datasets.notched_plate import save_notched_plates

    for save, kind in ((save_notched_plates, "NotchedPlateSample"), (save_brackets, "BracketSample")):
        with pytest.raises(ValueError, match=rf"`samples` must be a non-empty sequence of {kind}, got \[\]"):
            save([], tmp_path / "x.npz")
    assert list(tmp_path.iterdir()) == []

"""The dataset cache's file rule (``gpgeom._cache``): atomic ``.npz`` files with a checked format version."""

from __future__ import annotations

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

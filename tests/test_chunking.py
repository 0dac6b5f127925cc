r"""Tests of gpgeom.engine.chunking beyond those of the exact-GP memory budget (tests/test_exact_mll.py):
memory sizes given as NumPy scalars."""

from __future__ import annotations

import numpy as np
import pytest

from gpgeom.engine.chunking import chunk_size_for, memory_budget, parse_memory


def test_memory_sizes_accept_numpy_scalars_and_keep_large_integers_exact():
    r"""``np.int64(2**30)`` (a budget read from a config array) was refused with "a memory size must be an int", and
    integers above 2**53 went through ``float`` (``2**60 + 1`` became ``2**60``). The truths: the integers themselves
    and the chunk of an explicit byte count."""
    assert parse_memory(np.int64(2**30)) == 2**30
    assert parse_memory(np.float32(5e8)) == 500_000_000
    assert parse_memory(2**60 + 1) == 2**60 + 1
    with memory_budget(np.int64(1000)) as size:
        assert size == 1000 and chunk_size_for(64, total=10_000) == 1000 // 64
    assert chunk_size_for(64, np.int32(6400), total=10_000) == 100
    for bad in (True, np.bool_(True), None, [1]):
        with pytest.raises(TypeError, match="`max_memory`: a memory size must be an int, a float or a string"):
            parse_memory(bad)
    with pytest.raises(ValueError, match="at least one byte"):
        parse_memory(np.int64(0))

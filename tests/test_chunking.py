r"""Tests of gpgeom.engine.chunking beyond those of the exact-GP memory budget (tests/test_exact_mll.py):
memory sizes given as NumPy scalars, the factor cache of large parameters and data changed through ``.data``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpgeom.engine.chunking import FactorCache, chunk_size_for, memory_budget, parse_memory


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


def test_factor_cache_sees_writes_through_data_to_large_parameters_and_data():
    r"""Parameters above ``COPY_LIMIT`` elements and data tensors were keyed by their version counter alone, which
    writes through ``.data`` do not bump: after ``weight.data.copy_(zeros)`` on a 300 x 300 layer the cache
    returned the old output (the truth, the module applied afresh, differed). Now a fingerprint of the values is
    part of the key; an unchanged state is still not recomputed."""
    torch.manual_seed(0)
    module = torch.nn.Linear(300, 300)  # 90,000 > COPY_LIMIT weights: held, not copied
    assert module.weight.numel() > FactorCache.COPY_LIMIT
    X = torch.randn(2, 300)
    cache, calls = FactorCache(), []

    def compute():
        calls.append(1)
        return module(X).detach()

    def cached():
        return cache.get(FactorCache.key_of(module, (X,)), compute)

    cached()
    cached()
    assert len(calls) == 1
    version = module.weight._version
    module.weight.data.copy_(torch.full((300, 300), 0.01))
    assert module.weight._version == version  # the write is invisible to the version counter
    torch.testing.assert_close(cached(), module(X).detach(), rtol=0, atol=0)
    X.data.mul_(2.0)  # data changed the same way
    torch.testing.assert_close(cached(), module(X).detach(), rtol=0, atol=0)
    assert len(calls) == 3
    cached()
    assert len(calls) == 3

import os
import zlib

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Small GP fits run about ten times slower with two threads on these machines.
torch.set_num_threads(1)

# Every test draws its random inputs afresh from a seed of its own; set GPGEOM_TEST_SEED to draw another set.
_BASE_SEED = int(os.environ.get("GPGEOM_TEST_SEED", "0"))


@pytest.fixture(autouse=True)
def _seed_per_test(request):
    torch.manual_seed(_BASE_SEED + zlib.crc32(request.node.nodeid.encode()))
    yield

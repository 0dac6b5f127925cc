#!/usr/bin/env bash
# Wheels of the packages the GPU machine's image lacks (its python is 3.12; it cannot reach a package index), for
# benchmarks/gpu_check.sh: pyro-ppl and pyro-api (gpgeom's dependencies), meshio, and triangle and scikit-fem (the
# mesh factories of tests/test_mmgp.py). They land in .whl/, which git ignores through .git/info/exclude; carry it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info && echo '/.whl/' >>.git/info/exclude; }
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform any -d .whl \
    "pyro-ppl>=1.9,<2" pyro-api "meshio>=5.3,<6" triangle scikit-fem
ls .whl

#!/usr/bin/env bash
# Run gpgeom's checks: ruff, the test suite, and the tutorials in smoke mode (pytest --nbmake, SMOKE_TEST=1).
set -uo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MPLBACKEND=Agg
status=0
ruff check gpgeom tests benchmarks || status=1
python -m pytest -q tests "$@"; rc=$?
[ $rc -eq 0 ] || status=1
if compgen -G "tutorials/*.ipynb" >/dev/null; then
    SMOKE_TEST=1 python -m pytest -q --nbmake --nbmake-timeout=600 -p no:cacheprovider tutorials; rc=$?
    [ $rc -eq 0 ] || [ $rc -eq 5 ] || status=1
fi
exit $status

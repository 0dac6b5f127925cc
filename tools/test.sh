#!/usr/bin/env bash
# Run gpgeom's checks: ruff (lint and format), the test suite, and the documentation site, whose build executes every tutorial and
# every page with code in smoke mode (SMOKE_TEST=1) with Sphinx warnings as errors (bash tools/docs.sh --check).
# Without the docs extra installed, the tutorials run under pytest --nbmake instead. GPGEOM_TEST_DOCS=0 skips both.
set -uo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MPLBACKEND=Agg
status=0
t0=$(date +%s)
ruff check gpgeom tests benchmarks docs tools || status=1
ruff format --check gpgeom tests benchmarks docs tools || status=1
t1=$(date +%s)
python -m pytest -q --durations=25 tests "$@"; rc=$?
[ $rc -eq 0 ] || status=1
t2=$(date +%s)
if [ "${GPGEOM_TEST_DOCS:-1}" != 0 ]; then
    if python -c "import sphinx, myst_nb, pydata_sphinx_theme" 2>/dev/null; then
        bash tools/docs.sh --check || status=1
    elif compgen -G "tutorials/*.ipynb" >/dev/null; then
        echo "tools/test.sh: the docs extra is not installed; running the tutorials with pytest --nbmake instead"
        SMOKE_TEST=1 python -m pytest -q --nbmake --nbmake-timeout=600 -p no:cacheprovider tutorials; rc=$?
        [ $rc -eq 0 ] || [ $rc -eq 5 ] || status=1
    fi
fi
t3=$(date +%s)
echo "tools/test.sh: ruff $((t1 - t0)) s, pytest $((t2 - t1)) s, docs and tutorials $((t3 - t2)) s; exit $status"
exit $status

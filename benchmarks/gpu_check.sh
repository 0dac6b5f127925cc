#!/usr/bin/env bash
# The GPU check: one short prepared run on a lent GPU machine (see the README's "GPU check" section).
#   - the device tests (CUDA results against CPU results of the same inputs),
#   - the engine benchmark on CUDA (Kalman vs dense likelihood up to n = 1e5, exact-GP fit),
#   - each model benchmark's GPU configuration, when present.
# Usage: bash benchmarks/gpu_check.sh [engine] [rgnp] [rvgp] [funbat] [trajectory]   (default: all)
# Reports land in their own folder, never over the committed tables of benchmarks/results/ (a check runs reduced or
# GPU configurations): $GPGEOM_BENCH_RESULTS, by default $OUT/gpu_check_results when $OUT is set (the device tool
# brings it back) and benchmarks/results/gpu_check/ otherwise. Copy a table into benchmarks/results/ by hand, under the
# name the script gives it (benchmarks/_common.report_name: <name>_cuda[_quick].md), when it should be committed.
# Packages the GPU image lacks travel as wheels in .whl/ (git-ignored through .git/info/exclude): pyro-ppl, pyro-api,
# meshio, and triangle and scikit-fem for tests/test_mmgp.py (it skips as a whole without them): fetch them here with
# `bash tools/gpu_wheels.sh`, then carry .whl. Last measured (H200, benchmarks/results/gpu_check_h200.log):
# `engine rgnp` took 345 s in all (the device tests 40 s of it, the RGNP recipe about 4 minutes), one 10-minute call.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MPLBACKEND=Agg
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PWD:/tmp/site"
else
    export PYTHONPATH="$PWD"
fi
nvidia-smi -L || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
if [ -n "${OUT:-}" ]; then
    export GPGEOM_BENCH_RESULTS="${GPGEOM_BENCH_RESULTS:-$OUT/gpu_check_results}"
else
    export GPGEOM_BENCH_RESULTS="${GPGEOM_BENCH_RESULTS:-$PWD/benchmarks/results/gpu_check}"
fi
mkdir -p "$GPGEOM_BENCH_RESULTS"
echo "reports go to $GPGEOM_BENCH_RESULTS"
status=0
# each step's wall time goes to the log, so that the next lease can plan which steps fit in one call
run() {
    echo "== $*"
    local t0=$SECONDS
    timeout "${STEP_TIMEOUT:-240}" "$@" || { echo "!! failed: $*"; status=1; }
    echo "-- $((SECONDS - t0)) s: $*"
}
want() { [[ " ${SELECTED} " == *" $1 "* ]]; }
SELECTED="${*:-engine rgnp rvgp funbat trajectory}"
run $PY -m pytest -q -p no:cacheprovider tests/test_device.py tests/test_device_requests.py tests/test_statespace.py \
    tests/test_lie.py tests/test_funbat.py tests/test_funbat_categorical.py tests/test_gicnet.py tests/test_mmgp.py \
    -k "cuda or device"
if want engine; then
    run $PY benchmarks/engine.py --device cuda --dtype float64 --fit-sizes 200
    run $PY benchmarks/engine.py --device cuda --dtype float32 --quick --fit-sizes
fi
# the fixed RGNP recipe trains about 5 minutes on an H200 (three 25 s baselines, then 4000 cosine steps)
want rgnp && STEP_TIMEOUT=${RGNP_TIMEOUT:-420} run $PY benchmarks/rgnp.py --device cuda --paper-sizes ${RGNP_ARGS:-}
want rvgp && run $PY benchmarks/rvgp.py --device cuda --quick
# these two scripts choose their own file (--out); keep them off the committed tables too
want funbat && [ -f benchmarks/funbat.py ] && run $PY benchmarks/funbat.py --device cuda --quick \
    --out "$GPGEOM_BENCH_RESULTS/funbat_cuda_quick.md"
want trajectory && [ -f benchmarks/trajectory.py ] && run $PY benchmarks/trajectory.py --device cuda --quick \
    --out "$GPGEOM_BENCH_RESULTS/trajectory_cuda_quick.md"
if [ -n "${OUT:-}" ] && [ "$GPGEOM_BENCH_RESULTS" != "$OUT/gpu_check_results" ]; then
    tar czf "$OUT/gpu_results.tgz" -C "$GPGEOM_BENCH_RESULTS" .
fi
exit $status

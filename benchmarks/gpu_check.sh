#!/usr/bin/env bash
# The GPU check: one short prepared run on a lent GPU machine (see the README's "GPU check" section).
#   - the device tests (CUDA results against CPU results of the same inputs),
#   - the engine benchmark on CUDA (Kalman vs dense likelihood up to n = 1e5, exact-GP fit),
#   - each model benchmark's GPU configuration, when present.
# Usage: bash benchmarks/gpu_check.sh [engine] [rgnp] [rvgp] [funbat] [trajectory]   (default: all)
# Results land in benchmarks/results/ and, when $OUT is set (the device tool), are copied there.
# Packages the GPU image lacks travel as wheels in .whl/ (pyro-ppl, pyro-api, meshio).
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
status=0
run() { echo "== $*"; timeout "${STEP_TIMEOUT:-240}" "$@" || { echo "!! failed: $*"; status=1; }; }
want() { [[ " ${SELECTED} " == *" $1 "* ]]; }
SELECTED="${*:-engine rgnp rvgp funbat trajectory}"
run $PY -m pytest -q -p no:cacheprovider tests/test_device.py tests/test_statespace.py tests/test_lie.py -k "cuda or device"
if want engine; then
    run $PY benchmarks/engine.py --device cuda --dtype float64 --fit-sizes 200
    run $PY benchmarks/engine.py --device cuda --dtype float32 --quick --fit-sizes
fi
# the fixed RGNP recipe trains about 5 minutes on an H200 (three 25 s baselines, then 4000 cosine steps)
want rgnp && STEP_TIMEOUT=${RGNP_TIMEOUT:-420} run $PY benchmarks/rgnp.py --device cuda --paper-sizes ${RGNP_ARGS:-}
want rvgp && run $PY benchmarks/rvgp.py --device cuda --quick
want funbat && [ -f benchmarks/funbat.py ] && run $PY benchmarks/funbat.py --device cuda --quick
want trajectory && [ -f benchmarks/trajectory.py ] && run $PY benchmarks/trajectory.py --device cuda --quick
if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/gpu_results.tgz" benchmarks/results
fi
exit $status

#!/usr/bin/env bash
# Install gpgeom into ./.venv on a fresh machine. Torch goes first: `torch==2.13.0` takes the CPU build that lies on
# these machines, whereas a plain `torch` requirement in an empty environment pulls several GB of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==${GPGEOM_TORCH_VERSION:-2.13.0}"
python -m pip install -q -e ".[test,fem,docs]"
python -c "import gpgeom, torch; print(f'gpgeom {gpgeom.__version__} installed (torch {torch.__version__})')"

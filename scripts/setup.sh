#!/usr/bin/env bash
# Fresh environment for geoops: a virtualenv (.venv, or $GEOOPS_VENV) with torch,
# Triton, the test/benchmark extras, and geoops itself built in place (the
# compiled extension geoops._C: C++ always, CUDA when torch has CUDA and nvcc is found).
#   bash scripts/setup.sh            # then: . .venv/bin/activate
# GEOOPS_TORCH_SPEC picks the torch to install when the venv has none (default torch==2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${GEOOPS_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip setuptools wheel
python -c "import torch" 2>/dev/null || python -m pip install -q "${GEOOPS_TORCH_SPEC:-torch==2.13.0}"
python -m pip install -q -r requirements-dev.txt
python -m pip install -q --no-build-isolation -e . 2>&1 | grep -v -i -E "deprecat|license|^\s*$|!!|\*\*\*" || true
python -c "import geoops; print('geoops ready:', geoops.backend_info())"

#!/usr/bin/env bash
# Everything geoops checks on a GPU machine, in one command (GPU time is scarce):
# build with the CUDA kernels, run the CUDA tests, the Triton tests compiled for
# the GPU, the parity run on CUDA, and the benchmark on CUDA.  Logs and results
# go to $OUT (default ./gpu-out): at most 8 files (5 logs + the bench's json, md
# and png), each step's tail also printed.
#
#   bash scripts/gpu_check.sh            # uses the python3 that has torch
#
# geoopt (the eager peer of the benchmark and of a few tests) is optional: if a
# folder .whl holds wheels (e.g. `pip download --no-deps geoopt -d .whl`), they
# are installed to /tmp/site first; without it those columns and tests are skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
status=0

if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

step() {  # step NAME COMMAND...: run, keep the whole log, print its tail
  local name=$1; shift
  echo "=== $name: $*"
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.log"
  echo "=== $name: exit $rc"
  [ $rc -eq 0 ] || status=1
  return $rc
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
step build env GEOOPS_BUILD_CUDA=1 "$PY" -m pip install --no-build-isolation --no-deps -e . || exit 1
"$PY" -c "import geoops; print(geoops.backend_info())"
step pytest_cuda "$PY" -m pytest -q tests -k cuda
step pytest_triton env TRITON_INTERPRET=0 "$PY" -m pytest -q tests/triton
step parity_cuda "$PY" -m geoops.parity --device cuda
step bench_cuda "$PY" -m bench --device cuda --out "$OUT"
exit $status

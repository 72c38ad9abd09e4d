#!/usr/bin/env bash
# Every check of geoops, in the environment made by scripts/setup.sh:
#  1. nvcc compiles every CUDA source for sm_80 and sm_90 (when nvcc exists); every Triton kernel is
#     compiled for sm_80/sm_90 (.ci/triton_compile_check.sh) and gpu_check.sh is dry-run;
#  2. the Triton kernels under the Triton interpreter (own process: TRITON_INTERPRET=1);
#  3. the parity run against the fp64 reference (python -m geoops.parity);
#  4. the main pytest suite (CUDA cases skip themselves without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GEOOPS_VENV:-.venv}
# shellcheck disable=SC1091
[ -f "$VENV/bin/activate" ] && . "$VENV/bin/activate"
if command -v nvcc >/dev/null 2>&1; then
  bash .ci/nvcc_check.sh
else
  echo "nvcc not found: CUDA compile check skipped"
fi
# --- GPU readiness (issue 12): every Triton kernel variant compiled for sm_80/sm_90 with this env's Triton and
#     Triton 3.6 (the GPU machines'), without a GPU; and scripts/gpu_check.sh's whole control flow (--dry-run)
bash .ci/triton_compile_check.sh
GPU_DRY_OUT="$(mktemp -d)"
OUT="$GPU_DRY_OUT" bash scripts/gpu_check.sh --dry-run > /dev/null || { cat "$GPU_DRY_OUT/summary.md"; exit 1; }
# ---
TRITON_INTERPRET=1 python -m pytest tests/triton -q -p no:cacheprovider
python -m geoops.parity --quick
python -m pytest tests -q -p no:cacheprovider "$@"

#!/usr/bin/env bash
# Every GPU check of geoops in one command, sized for a short device window (GPU time is scarce):
#
#   1. env          GPU, driver, torch / CUDA / Triton / numpy versions, device count
#   2. build        geoops._C with the CUDA kernels (sm_90 only unless TORCH_CUDA_ARCH_LIST is set);
#                   fails the whole check if the built module lacks CUDA
#   3. pytest_cuda  tests/test_stereographic.py -k cuda: both GPU backends (cuda, triton) against the CPU
#                   kernels: parity cases, large N and D (the CUDA 256-thread group, 16-byte vectors),
#                   every gradient mask (dx == dy == nullptr included), stride-0 and strided rows built on
#                   the device, gradcheck through the kernels
#   4. pytest_triton tests/triton compiled (TRITON_INTERPRET=0): layouts made on the device, the
#                   multi-device guard where a second GPU exists
#   5. parity_cuda, parity_triton   python -m geoops.parity for each GPU backend by name (an
#                   unavailable backend fails, it is not skipped)
#   6. bench_triton, bench_cuda     python -m bench --quick with each backend forced, the copy-bandwidth
#                   limit in each, and bench-side-by-side.md comparing them
#   7. bench_pairwise  the pairwise Triton kernels (cdist fwd and fwd+bwd at 2048 x 2048 x 64 against
#                   torch.cdist, issue 6's GPU target >= 0.7x; knn through the Triton rank keys)
#   8. poincare     scripts/gpu_poincare_check.py: the Poincaré layers on CUDA (Triton) against the CPU C++
#                   kernels (fc, tangent fc, ReLU, conv2d, batch norm; fp32/fp64, values and gradients), and
#                   the residual block / fc 4096x512->512 against their Euclidean layers (issue 11's GPU
#                   target: block within 3x); $OUT/poincare.json
#
# Target: <= 8 minutes wall on an H100/H200 with torch 2.11 + CUDA 13, Triton 3.6, no network.  Each
# step runs under `timeout` with the time left of GEOOPS_GPU_BUDGET_S (default 470 s); a step that
# would start with under 20 s left is skipped and marked so.  pytest runs with pytest-xdist (-n 8)
# where it is installed, so Triton's JIT compiles in parallel.  No pip install beyond wheels carried
# in .whl/ (e.g. geoopt for the bench's peer column; without it that column and those tests skip).
#
# Output (at most 8 files, for the device tool's $OUT): $OUT/gpu_check.log (every step's full log),
# $OUT/summary.md (one line per step: status, seconds, command), $OUT/bench-triton.json,
# $OUT/bench-cuda.json, $OUT/bench-side-by-side.md, $OUT/bench-pairwise.json, $OUT/poincare.json.  OUT defaults to ./gpu-out.
#
#   bash scripts/gpu_check.sh              # on the GPU machine
#   bash scripts/gpu_check.sh --dry-run    # here, on a CPU (also GEOOPS_GPU_DRY_RUN=1): the whole control
#                                          # flow; device steps replaced by CPU stand-ins (pytest
#                                          # --collect-only of the same selections, parity and bench on
#                                          # the CPU backends, tiny), the build skipped
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=${GEOOPS_GPU_DRY_RUN:-0}
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    *) echo "gpu_check: unknown argument $arg" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || PY=python
BUDGET=${GEOOPS_GPU_BUDGET_S:-470}
# a dry run on a (shared, 2-core) CPU is slower than the device machine's 16 cores: its own budget
[ "$DRY" = 1 ] && BUDGET=${GEOOPS_GPU_BUDGET_S:-1500} && DRYCAP=300 || DRYCAP=0
export PYTHONUNBUFFERED=1
LOG="$OUT/gpu_check.log"
SUMMARY="$OUT/summary.md"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
: > "$LOG"
T0=$(date +%s)
status=0
{
  echo "# gpu_check $( [ "$DRY" = 1 ] && echo '(dry run: device steps replaced by CPU stand-ins)')"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M:%S UTC'), git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (dirty)'), budget ${BUDGET} s"
  echo
  echo "| step | status | seconds | command |"
  echo "|---|---|---|---|"
} > "$SUMMARY"

left() { echo $(( BUDGET - ($(date +%s) - T0) )); }

# step NAME CAP COMMAND...: run with timeout min(CAP, time left); full log to $LOG, tail to stdout
step() {
  local name=$1 cap=$2; shift 2
  local shown; shown=$(printf '%s ' "$@" | tr '\n' ' ' | tr -s ' ' | cut -c1-160)
  local t; t=$(left)
  [ "$DRYCAP" -gt 0 ] && cap=$DRYCAP
  [ "$t" -lt "$cap" ] && cap=$t
  if [ "$cap" -lt 20 ]; then
    echo "=== $name: skipped (out of time)" | tee -a "$LOG"
    echo "| $name | skipped (out of time) | 0 | \`$shown\` |" >> "$SUMMARY"
    status=1
    return 1
  fi
  echo "=== $name (timeout ${cap}s): $*" | tee -a "$LOG"
  local s0; s0=$(date +%s)
  # (bash -c: the command may be one of the exported shell functions below)
  timeout -k 10 "$cap" bash -c '"$@"' _ "$@" > "$TMP/$name.log" 2>&1
  local rc=$?
  local secs=$(( $(date +%s) - s0 ))
  cat "$TMP/$name.log" >> "$LOG"
  tail -n 15 "$TMP/$name.log"
  local what="ok"
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then what="TIMEOUT"; elif [ $rc -ne 0 ]; then what="FAIL (exit $rc)"; fi
  echo "=== $name: $what, ${secs}s" | tee -a "$LOG"
  echo "| $name | $what | $secs | \`$shown\` |" >> "$SUMMARY"
  [ $rc -eq 0 ] || status=1
  return $rc
}

# pytest on the device; in a dry run the same selection is only collected (and must not be empty)
collect_only() {
  "$@" --collect-only -q > "$TMP/collect.log" 2>&1
  local rc=$?
  cat "$TMP/collect.log"
  [ $rc -eq 0 ] || return $rc
  grep -qE "^[1-9][0-9]*(/[0-9]+)? tests? collected" "$TMP/collect.log" || { echo "no tests collected"; return 1; }
}

export -f collect_only
export TMP OUT PY
XDIST=()
"$PY" -c "import xdist" 2>/dev/null && XDIST=(-n 8)

if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

# ---------------------------------------------------------------- 1. environment
step env 60 "$PY" -c '
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
try:
    import triton; print("triton", triton.__version__)
except Exception as e: print("triton missing:", e)
try:
    import numpy; print("numpy", numpy.__version__)
except Exception as e: print("numpy missing:", e)
n = torch.cuda.device_count() if torch.cuda.is_available() else 0
print("cuda devices", n, [torch.cuda.get_device_name(i) for i in range(n)])
'
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
  | tee -a "$LOG"

# ---------------------------------------------------------------- 2. build with CUDA
if [ "$DRY" = 1 ]; then
  echo "=== build: skipped (dry run): GEOOPS_BUILD_CUDA=1 $PY -m pip install --no-build-isolation --no-deps -e ." \
    | tee -a "$LOG"
  echo "| build | skipped (dry run) | 0 | \`GEOOPS_BUILD_CUDA=1 pip install --no-build-isolation --no-deps -e .\` |" >> "$SUMMARY"
  step import 60 "$PY" -c "import geoops; print(geoops.backend_info())"
else
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
  if ! step build 240 env GEOOPS_BUILD_CUDA=1 "$PY" -m pip install --no-build-isolation --no-deps -e .; then
    echo "gpu_check: the CUDA build failed; nothing else can be checked" | tee -a "$LOG"
    exit 1
  fi
  step import 60 "$PY" -c "
import geoops, geoops._C as C
print(geoops.backend_info())
assert getattr(C, 'with_cuda', False), 'geoops._C was built without the CUDA kernels'
" || exit 1
fi

# ---------------------------------------------------------------- 3./4. tests
if [ "$DRY" = 1 ]; then
  step pytest_cuda 120 collect_only "$PY" -m pytest -p no:cacheprovider tests/test_stereographic.py -k cuda
  step pytest_triton 120 collect_only env TRITON_INTERPRET=0 "$PY" -m pytest -p no:cacheprovider tests/triton
else
  step pytest_cuda 150 "$PY" -m pytest -q -p no:cacheprovider "${XDIST[@]}" tests/test_stereographic.py -k cuda -rs
  step pytest_triton 120 env TRITON_INTERPRET=0 "$PY" -m pytest -q -p no:cacheprovider "${XDIST[@]}" tests/triton -rs
fi

# ---------------------------------------------------------------- 5. parity per GPU backend
if [ "$DRY" = 1 ]; then
  # the same CLI on the CPU backend, float32 quick (an unavailable backend would fail here too)
  step parity_cuda 90 "$PY" -m geoops.parity --device cpu --backends cpp --dtypes float32 --quick
  echo "| parity_triton | skipped (dry run: same command as parity_cuda with --backends triton) | 0 | |" >> "$SUMMARY"
else
  step parity_cuda 60 "$PY" -m geoops.parity --families stereographic --device cuda --backends cuda --quick
  step parity_triton 60 "$PY" -m geoops.parity --device cuda --backends triton --quick
fi

# ---------------------------------------------------------------- 6. bench, both GPU backends
bench() {  # bench NAME BACKEND ARGS...: one run, its json copied to $OUT/bench-NAME.json
  local name=$1 backend=$2; shift 2
  rm -rf "$TMP/bench-$name"
  "$PY" -m bench --backend "$backend" --no-plot --out "$TMP/bench-$name" "$@" || return $?
  cp "$(ls -t "$TMP/bench-$name"/*.json | head -n 1)" "$OUT/bench-$name.json"
}
export -f bench
if [ "$DRY" = 1 ]; then
  tiny=(--families stereographic --device cpu --ops mobius_add --dims 16 --rows 1024 --passes fwd,fwd+bwd --no-compile --no-settle --repeats 1 --warmup 0)
  step bench_triton 120 bench triton cpp "${tiny[@]}"
  step bench_cuda 120 bench cuda reference "${tiny[@]}"
else
  step bench_triton 75 bench triton triton --families stereographic --device cuda --quick --no-compile --no-settle
  step bench_cuda 75 bench cuda cuda --families stereographic --device cuda --quick --no-compile --no-settle
fi
# ---------------------------------------------------------------- 7. pairwise (Triton cdist / knn vs torch.cdist)
if [ "$DRY" = 1 ]; then
  step bench_pairwise 120 bench pairwise cpp --families stereographic --device cpu --ops cdist,knn \
    --pair-shape 64,48,8 --knn-shape 64,48,4,3 --passes fwd,fwd+bwd --no-compile --no-settle --repeats 1 --warmup 0
else
  step bench_pairwise 90 bench pairwise triton --families stereographic --device cuda --ops cdist,knn \
    --passes fwd,fwd+bwd --no-compile --no-settle
fi
# ---------------------------------------------------------------- 8. poincare (Triton layer kernels)
if [ "$DRY" = 1 ]; then
  step poincare 120 "$PY" scripts/gpu_poincare_check.py --dry-run --json "$OUT/poincare.json"
else
  step poincare 90 "$PY" scripts/gpu_poincare_check.py --json "$OUT/poincare.json"
fi
if [ -f "$OUT/bench-triton.json" ] && [ -f "$OUT/bench-cuda.json" ]; then
  "$PY" scripts/gpu_bench_side_by_side.py "$OUT/bench-triton.json" "$OUT/bench-cuda.json" > "$OUT/bench-side-by-side.md" \
    && cat "$OUT/bench-side-by-side.md" || status=1
fi

total=$(( $(date +%s) - T0 ))
{
  echo
  echo "total ${total} s of ${BUDGET} s; $([ $status -eq 0 ] && echo 'all steps ok' || echo 'FAILURES (see gpu_check.log)')"
} >> "$SUMMARY"
echo
cat "$SUMMARY"
exit $status

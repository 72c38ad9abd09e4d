#!/usr/bin/env bash
# Every GPU check of geoops in one command, sized for a short device window (GPU time is scarce):
#
#   1. env          GPU, driver, torch / CUDA / Triton / numpy versions, device count
#   2. install      `GEOOPS_NO_BUILD=1 pip install -e .`: the Python package (geoops.kernels mapped), nothing compiled
#   3. build        geoops._C with the CUDA kernels (sm_90 only unless TORCH_CUDA_ARCH_LIST is set), compiled in
#                   the background (`setup.py build_ext -b`) while step 4 runs; copied into geoops/ once step 4
#                   is done; fails every step that needs it if the built module lacks CUDA
#   4. pytest_triton_families  tests/triton of attention, gaunt, poincare, ssm and the stereographic matvec
#                   epilogue compiled (TRITON_INTERPRET=0),
#                   beside the build (their comparisons with the C++ kernels skip there)
#   5. pytest_cuda  tests/test_stereographic.py -k cuda: both GPU backends (cuda, triton) against the CPU
#                   kernels: parity cases, large N and D (the CUDA 256-thread group, 16-byte vectors),
#                   every gradient mask (dx == dy == nullptr included), stride-0 and strided rows built on
#                   the device, gradcheck through the kernels
#   6. pytest_triton_stereo  tests/triton of the stereographic kernels (and ssm's C++ comparisons) compiled:
#                   layouts made on the device, the multi-device guard where a second GPU exists
#   7. targets      scripts/gpu_targets.py: the issues' GPU targets (copy / float32 GEMM / bf16 GEMM ceilings;
#                   ssm fftconv bf16 vs FlashFFTConv's published H100 times, s4d_kernel vs the float32 GEMM
#                   rate and its float32 accuracy at L = 65536; gaunt at lmax 4 / 8 on 10^4 rows vs the
#                   published A100 figures); $OUT/targets.json
#   8. bench_ssm, bench_gaunt, bench_attention  python -m bench for those families on CUDA (auto backend)
#   9. bench_pairwise  the pairwise Triton kernels (cdist fwd and fwd+bwd at 2048 x 2048 x 64 against
#                   torch.cdist, issue 6's GPU target >= 0.7x; knn through the Triton rank keys; mobius_matvec
#                   and mobius_blockdiag_matvec: torch's GEMM + the Triton epilogue kernels)
#  10. poincare     scripts/gpu_poincare_check.py: the Poincaré layers on CUDA (Triton) against the CPU C++
#                   kernels (fc, tangent fc, ReLU, conv2d, batch norm; fp32/fp64, values and gradients), and
#                   the residual block / fc 4096x512->512 against their Euclidean layers (issue 11's GPU
#                   target: block within 3x); $OUT/poincare.json
#  10b. probe      scripts/gpu_probe.py: attention's time per head at two batch sizes, torch.profiler kernel tables
#                   of the Poincaré block / fc and of s4d_kernel; $OUT/probe.json
#  11. bench_triton, bench_cuda     python -m bench --quick (stereographic) with each backend forced, the
#                   copy-bandwidth limit in each, and bench-side-by-side.md comparing them
#  12. parity_triton, parity_cuda   python -m geoops.parity for each GPU backend by name (an
#                   unavailable backend fails, it is not skipped)
#  13. gaunt_routes `python -m bench.gaunt --device cuda --write-routes`: every Gaunt route at lmax 1..8 (2048 x 16
#                   rows, binary and nu = 3, fwd and fwd+bwd) ranked on this GPU; the rewritten
#                   geoops/_gaunt_routes.py (this GPU's class table for route="auto") and the JSON in bench.tar.gz
#
# Run order: 1, 2, 3 (started), 4, 3 (waited for), 7, 8, 5, 6, 9, 10, 12, 10b, 11, 13 (the issues' targets
# before the longer test runs, parity before the stereographic benches).
#
# Target: <= 9 minutes wall on an H100/H200 with torch 2.11 + CUDA 13, Triton 3.6, no network.  Each
# step runs under `timeout` with the time left of GEOOPS_GPU_BUDGET_S (default 520 s); a step that
# would start with under 20 s left is skipped and marked so.  GEOOPS_GPU_ONLY=step,step,... runs only the
# steps named (a second, shorter window: e.g. the skipped ones; "build" is needed by steps 5, 6, 9-12's
# CUDA C++ parts); the others are marked "not selected".  pytest runs with pytest-xdist where it is
# installed, so Triton's JIT compiles in parallel.  GEOOPS_GPU_BENCH_OPS=op,op limits step 11's stereographic ops,
# GEOOPS_GPU_CUDA_K step 5's pytest -k expression (default "cuda").  No pip install beyond wheels carried in .whl/ (e.g.
# geoopt for the bench's peer column; without it that column and those tests skip).
#
# Output (at most 8 files, for the device tool's $OUT): $OUT/gpu_check.log (every step's full log),
# $OUT/summary.md (one line per step: status, seconds, command), $OUT/targets.json, $OUT/poincare.json, $OUT/probe.json,
# $OUT/bench-side-by-side.md, $OUT/bench.tar.gz (every bench run's JSON and markdown table),
# $OUT/geoops_C.tar.gz (the build, debug info stripped: carried to a later window on the same image,
# GEOOPS_GPU_PREBUILT=<that file> skips the build).
# OUT defaults to ./gpu-out.
#
#   bash scripts/gpu_check.sh              # on the GPU machine
#   bash scripts/gpu_check.sh --dry-run    # here, on a CPU (also GEOOPS_GPU_DRY_RUN=1): the whole control
#                                          # flow; device steps replaced by CPU stand-ins (pytest
#                                          # --collect-only of the same selections, parity and bench on
#                                          # the CPU backends, tiny), the install and build skipped
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
BUDGET=${GEOOPS_GPU_BUDGET_S:-520}
ONLY=${GEOOPS_GPU_ONLY:-}
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
  if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then
    echo "=== $name: not selected (GEOOPS_GPU_ONLY=$ONLY)" >> "$LOG"
    echo "| $name | not selected | 0 | \`$shown\` |" >> "$SUMMARY"
    return 0
  fi
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
XDIST6=()
"$PY" -c "import xdist" 2>/dev/null && XDIST=(-n 8) && XDIST6=(-n 6)

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
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
  --format=csv,noheader | tee -a "$LOG"
nproc | sed 's/^/cpu cores: /' | tee -a "$LOG"

# ---------------------------------------------------------------- 2./3. install, build in the background
BUILD_PID=
if [ "$DRY" = 1 ]; then
  echo "=== install, build: skipped (dry run): GEOOPS_NO_BUILD=1 pip install -e .; GEOOPS_BUILD_CUDA=1 setup.py build_ext" \
    | tee -a "$LOG"
  echo "| install, build | skipped (dry run) | 0 | \`GEOOPS_NO_BUILD=1 pip install -e .; GEOOPS_BUILD_CUDA=1 python setup.py build_ext -b DIR\` |" >> "$SUMMARY"
else
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  if ! step install 90 env GEOOPS_NO_BUILD=1 "$PY" -m pip install --no-build-isolation --no-deps -e .; then
    # fallback: map geoops.kernels / geoops.bench by links in this checkout (what the editable install maps)
    echo "gpu_check: pip install -e failed; linking geoops/kernels and geoops/bench instead" | tee -a "$LOG"
    [ -e geoops/kernels ] || ln -s ../kernels geoops/kernels
    [ -e geoops/bench ] || ln -s ../bench geoops/bench
  fi
  if [ -n "${GEOOPS_GPU_PREBUILT:-}" ]; then
    # a stripped geoops._C of an earlier window on the same image (its $OUT/geoops_C.tar.gz, carried)
    mkdir -p "$TMP/lib/geoops"
    ( tar -xzf "$GEOOPS_GPU_PREBUILT" -C "$TMP/lib/geoops" > "$TMP/build-bg.log" 2>&1; echo $? > "$TMP/build-bg.rc" ) &
    BUILD_PID=$!
    BUILD_T0=$(date +%s)
  elif [ -z "$ONLY" ] || [[ ",$ONLY," == *",build,"* ]]; then
    # nproc - 2 compile jobs: the Triton tests of step 4 compile their kernels beside it
    ( GEOOPS_BUILD_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(( $(nproc) > 4 ? $(nproc) - 2 : 2 ))} \
        "$PY" setup.py build_ext -b "$TMP/lib" > "$TMP/build-bg.log" 2>&1; echo $? > "$TMP/build-bg.rc" ) &
    BUILD_PID=$!
    BUILD_T0=$(date +%s)
  fi
fi

# ---------------------------------------------------------------- 4. Triton tests that need no C++ build
FAMILY_TESTS=(tests/triton/test_attention_triton.py tests/triton/test_gaunt_triton.py
              tests/triton/test_poincare_triton.py tests/triton/test_ssm_triton.py
              tests/triton/test_stereographic_matvec_triton.py)
STEREO_TESTS=(tests/triton/test_stereographic_triton.py tests/triton/test_stereographic_midpoint_triton.py
              tests/triton/test_stereographic_pairwise_triton.py)
if [ "$DRY" = 1 ]; then
  step pytest_triton_families 120 collect_only env TRITON_INTERPRET=0 "$PY" -m pytest -p no:cacheprovider "${FAMILY_TESTS[@]}"
else
  step pytest_triton_families 200 env TRITON_INTERPRET=0 "$PY" -m pytest -q -p no:cacheprovider "${XDIST6[@]}" "${FAMILY_TESTS[@]}" -rs
fi

# ---------------------------------------------------------------- 3. (cont.) wait for the build, put it in place
wait_build() {
  local cap=$1
  while [ ! -f "$TMP/build-bg.rc" ]; do
    if [ $(( $(date +%s) - BUILD_T0 )) -ge "$cap" ]; then
      echo "the build is still running after ${cap}s"; tail -n 20 "$TMP/build-bg.log"; return 124
    fi
    sleep 2
  done
  grep -E "geoops build|error|Error" "$TMP/build-bg.log" | head -n 40
  local rc; rc=$(cat "$TMP/build-bg.rc")
  [ "$rc" = 0 ] || { tail -n 60 "$TMP/build-bg.log"; return "$rc"; }
  cp "$TMP"/lib/geoops/_C*.so geoops/ && ls -la geoops/_C*.so || return 1
  if [ -z "${GEOOPS_GPU_PREBUILT:-}" ]; then  # stripped, for a later window (GEOOPS_GPU_PREBUILT)
    mkdir -p "$TMP/strip" && strip --strip-debug -o "$TMP/strip/$(basename geoops/_C*.so)" geoops/_C*.so \
      && tar -C "$TMP/strip" -czf "$OUT/geoops_C.tar.gz" . && ls -la "$OUT/geoops_C.tar.gz"
  fi
  echo "build took $(( $(date +%s) - BUILD_T0 ))s"
}
export -f wait_build
export BUILD_T0
HAVE_BUILD=0
if [ "$DRY" = 1 ]; then
  step import 60 "$PY" -c "import geoops; print(geoops.backend_info())"
elif [ -n "$BUILD_PID" ]; then
  if step build 300 wait_build 300 \
    && step import 60 "$PY" -c "
import geoops, geoops._C as C
print(geoops.backend_info())
assert getattr(C, 'with_cuda', False), 'geoops._C was built without the CUDA kernels'
"; then
    HAVE_BUILD=1
  else
    echo "gpu_check: no usable geoops._C with CUDA; the steps that need it are skipped" | tee -a "$LOG"
  fi
  cat "$TMP/build-bg.log" >> "$LOG" 2>/dev/null
fi
needs_build() {  # needs_build NAME: 0 when the CUDA build is there (or a dry run), else marks NAME skipped
  if [ "$DRY" = 1 ] || [ "$HAVE_BUILD" = 1 ]; then return 0; fi
  if [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; then
    echo "| $1 | skipped (no CUDA build) | 0 | |" >> "$SUMMARY"
    status=1
  fi
  return 1
}

# ---------------------------------------------------------------- 7. the issues' GPU targets
if [ "$DRY" = 1 ]; then
  step targets 120 "$PY" scripts/gpu_targets.py --dry-run --json "$OUT/targets.json"
else
  step targets 120 "$PY" scripts/gpu_targets.py --json "$OUT/targets.json"
fi

# ---------------------------------------------------------------- 8.-11. benchmarks
mkdir -p "$TMP/bench-all"
bench() {  # bench NAME BACKEND ARGS...: one run, its json and markdown kept for $OUT/bench.tar.gz
  local name=$1 backend=$2 rc=0; shift 2
  rm -rf "$TMP/bench-$name"
  # A partial run (a family failed; the step's timeout sent SIGTERM) still writes what it measured: keep it too.
  # (the TERM trap lets this function go on once the run, which got the signal as well, has written its files)
  trap ':' TERM
  "$PY" -m bench --backend "$backend" --no-plot --out "$TMP/bench-$name" "$@" || rc=$?
  trap - TERM
  local j; j=$(ls -t "$TMP/bench-$name"/*.json 2>/dev/null | head -n 1)
  [ -n "$j" ] && cp "$j" "$TMP/bench-all/bench-$name.json"
  for m in "$TMP/bench-$name"/*.md; do [ -f "$m" ] && cp "$m" "$TMP/bench-all/bench-$name-$(basename "$m")"; done
  return $rc
}
export -f bench
if [ "$DRY" = 1 ]; then
  step bench_families 120 bench families cpp --families ssm,gaunt,attention --device cpu --ssm-H 4 --ssm-L 64 \
    --ssm-B 2 --ssm-no-memory --gaunt-lmax 2 --gaunt-rows 8 --gaunt-channels 1 --attention-n 32 --passes fwd \
    --no-compile --no-settle --repeats 1 --warmup 0
else
  step bench_ssm 90 bench ssm auto --families ssm --device cuda --passes fwd,fwd+bwd --no-compile --no-settle
  step bench_gaunt 75 bench gaunt auto --families gaunt --device cuda --gaunt-lmax 4,8 --gaunt-rows 10000 \
    --gaunt-channels 1 --passes fwd,fwd+bwd --no-compile --no-settle
  step bench_attention 75 bench attention auto --families attention --device cuda --passes fwd,fwd+bwd --no-compile --no-settle
fi
# ---------------------------------------------------------------- 5./6. tests that need the build
if [ "$DRY" = 1 ]; then
  step pytest_cuda 120 collect_only "$PY" -m pytest -p no:cacheprovider tests/test_stereographic.py -k cuda
  step pytest_triton_stereo 120 collect_only env TRITON_INTERPRET=0 "$PY" -m pytest -p no:cacheprovider "${STEREO_TESTS[@]}"
else
  needs_build pytest_cuda \
    && step pytest_cuda 100 "$PY" -m pytest -q -p no:cacheprovider "${XDIST[@]}" tests/test_stereographic.py \
      -k "${GEOOPS_GPU_CUDA_K:-cuda}" -rs
  needs_build pytest_triton_stereo \
    && step pytest_triton_stereo 120 env TRITON_INTERPRET=0 "$PY" -m pytest -q -p no:cacheprovider "${XDIST[@]}" \
      "${STEREO_TESTS[@]}" "tests/triton/test_ssm_triton.py::test_ops_match_cpp" \
      "tests/triton/test_ssm_triton.py::test_fused_ops_match_cpp" -rs
fi

if [ "$DRY" = 1 ]; then
  step bench_pairwise 120 bench pairwise cpp --families stereographic --device cpu \
    --ops cdist,knn,mobius_matvec,mobius_blockdiag_matvec --pair-shape 64,48,8 --knn-shape 64,48,4,3 \
    --matvec-shape 64,16,8 --blockdiag-shapes 64x4x4 --passes fwd,fwd+bwd --no-compile --no-settle --repeats 1 \
    --warmup 0
  step poincare 120 "$PY" scripts/gpu_poincare_check.py --dry-run --json "$OUT/poincare.json"
else
  needs_build bench_pairwise \
    && step bench_pairwise 90 bench pairwise triton --families stereographic --device cuda \
      --ops cdist,knn,mobius_matvec,mobius_blockdiag_matvec --passes fwd,fwd+bwd --no-compile --no-settle
  needs_build poincare && step poincare 90 "$PY" scripts/gpu_poincare_check.py --json "$OUT/poincare.json"
fi
# ---------------------------------------------------------------- 12. parity per GPU backend
if [ "$DRY" = 1 ]; then
  # the same CLI on the CPU backend, float32 quick (an unavailable backend would fail here too)
  step parity_cuda 90 "$PY" -m geoops.parity --device cpu --backends cpp --dtypes float32 --quick
  echo "| parity_triton | skipped (dry run: same command as parity_cuda with --backends triton) | 0 | |" >> "$SUMMARY"
else
  needs_build parity_triton && step parity_triton 60 "$PY" -m geoops.parity --device cuda --backends triton --quick
  needs_build parity_cuda \
    && step parity_cuda 45 "$PY" -m geoops.parity --families stereographic --device cuda --backends cuda --quick
fi

if [ "$DRY" = 1 ]; then
  step probe 120 "$PY" scripts/gpu_probe.py --dry-run --json "$OUT/probe.json"
else
  step probe 60 "$PY" scripts/gpu_probe.py --json "$OUT/probe.json"
fi
if [ "$DRY" = 1 ]; then
  tiny=(--families stereographic --device cpu --ops mobius_add --dims 16 --rows 1024 --passes fwd,fwd+bwd --no-compile --no-settle --repeats 1 --warmup 0)
  step bench_triton 120 bench triton cpp "${tiny[@]}"
  step bench_cuda 120 bench cuda reference "${tiny[@]}"
else
  needs_build bench_triton \
    && step bench_triton 75 bench triton triton --families stereographic --device cuda --quick --no-compile --no-settle \
      ${GEOOPS_GPU_BENCH_OPS:+--ops "$GEOOPS_GPU_BENCH_OPS"}
  needs_build bench_cuda \
    && step bench_cuda 75 bench cuda cuda --families stereographic --device cuda --quick --no-compile --no-settle \
      ${GEOOPS_GPU_BENCH_OPS:+--ops "$GEOOPS_GPU_BENCH_OPS"}
fi
# ---------------------------------------------------------------- 13. gaunt route table of this GPU
if [ "$DRY" = 1 ]; then  # the same ranking on the CPU device, tiny, no table written
  step gaunt_routes 60 "$PY" -m bench.gaunt --device cpu --lmax 1,2 --rows 4 --channels 1 --repeats 1 \
    --json "$TMP/bench-all/gaunt-routes.json"
else
  step gaunt_routes 120 "$PY" -m bench.gaunt --device cuda --write-routes --repeats 9 \
    --json "$TMP/bench-all/gaunt-routes.json" && cp geoops/_gaunt_routes.py "$TMP/bench-all/_gaunt_routes.py"
fi
if [ -f "$TMP/bench-all/bench-triton.json" ] && [ -f "$TMP/bench-all/bench-cuda.json" ]; then
  "$PY" scripts/gpu_bench_side_by_side.py "$TMP/bench-all/bench-triton.json" "$TMP/bench-all/bench-cuda.json" \
    > "$OUT/bench-side-by-side.md" && cat "$OUT/bench-side-by-side.md" || status=1
fi

if compgen -G "$TMP/bench-all/*" > /dev/null; then
  tar -C "$TMP/bench-all" -czf "$OUT/bench.tar.gz" . || status=1
fi
[ -n "$BUILD_PID" ] && kill "$BUILD_PID" 2>/dev/null
total=$(( $(date +%s) - T0 ))
{
  echo
  echo "total ${total} s of ${BUDGET} s; $([ $status -eq 0 ] && echo 'all steps ok' || echo 'FAILURES (see gpu_check.log)')"
} >> "$SUMMARY"
echo
cat "$SUMMARY"
exit $status

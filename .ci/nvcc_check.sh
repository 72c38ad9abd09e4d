#!/usr/bin/env bash
# Compile check of the CUDA backend without a GPU.
#
#   * every csrc/cuda/*.cu is compiled with nvcc (C++20, the standard torch builds
#     extensions with since 2.14) for sm_80 and sm_90
#     (objects go to a temp dir and are thrown away); any error, or any
#     compiler warning, fails the check;
#   * csrc/cuda/*.cpp (the tensor-level wrappers) and csrc/ops.cpp (with
#     GEOOPS_WITH_CUDA) are compiled at -O0 (objects thrown away) with the host compiler against
#     torch's headers and the CUDA runtime headers, when a Python with torch
#     is found (skipped with a note otherwise); warnings fail here too.
#
# Prints a line when each file starts and one with its result and time.
# Run from anywhere:  bash .ci/nvcc_check.sh [--cu-only | --host-only]
# (--cu-only: the .cu files alone, which need no torch: .ci/run starts them before the venv exists;
# --host-only: the host compile checks alone.)
# Env: NVCC (default nvcc), CXX (default g++), PYTHON (default python3, else
# python), CUDA_HOME (else asked from nvcc), TORCH_NO_COMPILER_WRAPPER=1 (no ccache).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

NVCC="${NVCC:-nvcc}"
CXX="${CXX:-g++}"
if ! command -v "$NVCC" >/dev/null 2>&1; then
  echo "nvcc_check: nvcc not found" >&2
  exit 1
fi

PART=all
case "${1:-}" in
  --cu-only) PART=cu ;;
  --host-only) PART=host ;;
  "") ;;
  *) echo "nvcc_check: unknown argument $1 (--cu-only, --host-only)" >&2; exit 2 ;;
esac

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

GENCODE=(-gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90)
NVCC_FLAGS=(-c -std=c++20 -O3 -I csrc -I csrc/include "${GENCODE[@]}" -Xcompiler -Wall,-Wextra,-fvisibility=hidden --threads 0)  # setup.py's visibility

# ccache, when it is installed, in front of nvcc and the host compiler (torch's extension builds put it in front of
# their compilers too): a file compiled before on this machine with the same compiler, flags and preprocessed input
# is a cache hit, and ccache replays the compiler's output with it (warnings included), so the check reads the same.
# The host checks compile at -O0 (-fsyntax-only is not cacheable) with torch's headers from a venv that may sit
# inside the checkout: CCACHE_BASEDIR (as setup.py sets it) makes those paths relative, so a fresh clone hits too.
# TORCH_NO_COMPILER_WRAPPER=1 (torch's switch) compiles afresh.
LAUNCH=()
if [ -z "${TORCH_NO_COMPILER_WRAPPER:-}" ] && command -v ccache >/dev/null 2>&1; then
  LAUNCH=(ccache)
  export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$ROOT}"
fi

status=0

# ------------------------------------------------------------------ .cu files
shopt -s nullglob
cu_files=(csrc/cuda/*.cu)
if [ "${#cu_files[@]}" -eq 0 ]; then
  echo "nvcc_check: no csrc/cuda/*.cu files" >&2
  exit 1
fi
T0=$(date +%s)
if [ "$PART" = host ]; then cu_files=()
else echo "nvcc_check: nvcc $("$NVCC" --version | grep -o "release [0-9.]*" | cut -d" " -f2); ${#cu_files[@]} .cu file(s) for sm_80 + sm_90 (about a minute each on 2 cores)"
fi
n=0
for f in "${cu_files[@]}"; do
  n=$((n + 1))
  obj="$TMP/$(basename "$f" .cu).o"
  log="$TMP/$(basename "$f").log"
  start=$(date +%s)
  echo "..    [$n/${#cu_files[@]}] $f: compiling ..."
  if "${LAUNCH[@]}" "$NVCC" "${NVCC_FLAGS[@]}" "$f" -o "$obj" >"$log" 2>&1; then
    secs=$(( $(date +%s) - start ))
    if grep -qiE "warning" "$log"; then
      echo "FAIL  $f  (warnings, ${secs} s)"
      cat "$log"
      status=1
    else
      echo "ok    $f  (sm_80 + sm_90, $(stat -c %s "$obj") bytes, ${secs} s)"
    fi
  else
    echo "FAIL  $f  ($(( $(date +%s) - start )) s)"
    cat "$log"
    status=1
  fi
done

# ------------------------------------------------------------------ .cpp wrappers
# csrc/cuda/*.cpp, plus csrc/ops.cpp built WITH_CUDA (checks that the wrappers'
# signatures bind).  Torch / CUDA / Python headers are -isystem so that only
# warnings in our own files count.
cpp_files=(csrc/cuda/*.cpp)
if [ "${#cpp_files[@]}" -gt 0 ] && [ -f csrc/ops.cpp ]; then cpp_files+=(csrc/ops.cpp); fi
if [ "$PART" = cu ]; then cpp_files=(); fi
if [ "${#cpp_files[@]}" -gt 0 ]; then
  PY="${PYTHON:-}"
  if [ -z "$PY" ]; then
    if command -v python3 >/dev/null 2>&1; then PY=python3; else PY=python; fi
  fi
  if TORCH_INC="$("$PY" -c 'import torch.utils.cpp_extension as c; print(" ".join("-isystem " + p for p in c.include_paths()))' 2>/dev/null)"; then
    # The CUDA runtime headers: $CUDA_HOME, else where nvcc says its toolkit is
    # (nvcc may be a wrapper script outside the toolkit), else next to nvcc.
    if [ -n "${CUDA_HOME:-}" ]; then
      CUDA_INC="$CUDA_HOME/include"
    else
      CUDA_INC="$("$NVCC" --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n1)/include"
      [ -f "$CUDA_INC/cuda_runtime_api.h" ] || CUDA_INC="$(dirname "$(command -v "$NVCC")")/../include"
    fi
    PY_INC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
    for f in "${cpp_files[@]}"; do
      log="$TMP/$(basename "$f").log"
      start=$(date +%s)
      # shellcheck disable=SC2086
      # (compiled at -O0, the object thrown away: the front end's checks as -fsyntax-only, ~10 % more CPU cold, and
      # a ccache hit warm)
      if "${LAUNCH[@]}" "$CXX" -c -O0 -o "$TMP/$(basename "$f").o" -std=c++20 -Wall -Wextra -DGEOOPS_WITH_CUDA \
          -DTORCH_EXTENSION_NAME=_C -I csrc -I csrc/include $TORCH_INC -isystem "$CUDA_INC" -isystem "$PY_INC" "$f" \
          >"$log" 2>&1; then
        if grep -qiE "warning" "$log"; then
          echo "FAIL  $f  (warnings, $(( $(date +%s) - start )) s)"
          cat "$log"
          status=1
        else
          echo "ok    $f  (-O0, $CXX -DGEOOPS_WITH_CUDA, torch + $CUDA_INC headers, $(( $(date +%s) - start )) s)"
        fi
      else
        echo "FAIL  $f  ($(( $(date +%s) - start )) s)"
        cat "$log"
        status=1
      fi
    done
  else
    for f in "${cpp_files[@]}"; do echo "skip  $f  (no torch in $PY)"; done
  fi
fi

echo "nvcc_check: $([ "$status" -eq 0 ] && echo ok || echo FAILED) in $(( $(date +%s) - T0 )) s"
exit "$status"

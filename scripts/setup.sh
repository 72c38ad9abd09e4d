#!/usr/bin/env bash
# Fresh environment for geoops: a virtualenv (.venv, or $GEOOPS_VENV) with torch,
# Triton, the test/benchmark extras, and geoops itself built in place (the
# compiled extension geoops._C: C++ always, CUDA when torch has CUDA and nvcc is found).
#   bash scripts/setup.sh            # then: . .venv/bin/activate
# GEOOPS_TORCH_SPEC picks the torch to install when the venv has none (default torch==2.13.0).
# Every step prints what it does and how long it took.  The extension is rebuilt
# only when its inputs changed (csrc/, setup.py, pyproject.toml, torch, the
# GEOOPS_*/CUDA build variables): a stamp in build/ records the last build, and
# the build itself is incremental (ninja objects in build/temp-*).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
VENV=${GEOOPS_VENV:-.venv}
T_ALL=$SECONDS
# shellcheck source=scripts/_build_progress.sh
. scripts/_build_progress.sh

say() { echo "[setup] $*"; }
secs() { echo "$((SECONDS - $1)) s"; }

# pip with its progress lines kept (what it collects, downloads, installs) and
# the "already satisfied" chatter dropped; the whole log is kept for errors.
pip_step() {  # pip_step DESCRIPTION PIP-ARGS...
  local desc=$1; shift
  local t=$SECONDS log rc
  log=$(mktemp)
  say "$desc ..."
  set +e
  python -m pip install --progress-bar off "$@" 2>&1 | tee "$log" \
    | grep --line-buffered -E "^(Collecting|Downloading|Processing|Installing collected|Successfully installed|ERROR|error)" \
    | sed -u 's/^/          /'
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" -ne 0 ]; then
    echo "---- pip failed (exit $rc); its last lines:"; tail -n 40 "$log"; rm -f "$log"; exit "$rc"
  fi
  if ! grep -q "^Successfully installed" "$log"; then say "$desc: already installed ($(secs "$t"))"
  else say "$desc: done in $(secs "$t")"; fi
  rm -f "$log"
}

# ---------------------------------------------------------------- venv
if [ -x "$VENV/bin/python" ]; then
  say "virtualenv $VENV exists"
  # shellcheck disable=SC1091
  . "$VENV/bin/activate"
else
  t=$SECONDS
  say "creating virtualenv $VENV with $("$PY" --version 2>&1) ..."
  "$PY" -m venv "$VENV"
  # shellcheck disable=SC1091
  . "$VENV/bin/activate"
  say "virtualenv created in $(secs "$t")"
  pip_step "upgrading pip, setuptools, wheel in the new venv" --upgrade pip setuptools wheel
fi

# ---------------------------------------------------------------- torch
if python -c "import torch" 2>/dev/null; then
  say "torch $(python -c 'import torch; print(torch.__version__)') already installed"
else
  spec=${GEOOPS_TORCH_SPEC:-torch==2.13.0}
  pip_step "installing $spec (a large wheel: ~200 MB for a CPU build, several GB for a CUDA build; can take minutes)" "$spec"
fi

# ---------------------------------------------------------------- extras
pip_step "installing the test/benchmark extras (requirements-dev.txt)" -r requirements-dev.txt

# ---------------------------------------------------------------- geoops._C
# The stamp: hash of everything the compiled extension depends on.
inputs_hash() {
  {
    find csrc setup.py pyproject.toml -type f ! -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    python -c 'import sys, torch; print(sys.version, torch.__version__, torch.version.cuda)'
    env | grep -E '^(GEOOPS_BUILD_CUDA|GEOOPS_PORTABLE|GEOOPS_MARCH|TORCH_CUDA_ARCH_LIST|CUDA_HOME|CUDA_PATH|CXX|CC|CFLAGS|CXXFLAGS)=' | LC_ALL=C sort || true
    command -v nvcc || true
  } | sha256sum | cut -d' ' -f1
}
STAMP=build/.setup-stamp-$(basename "$VENV")
hash=$(inputs_hash)
installed_here() {  # geoops imports from this checkout, with its extension
  (cd / && python -c "import os, sys, geoops, geoops._C; sys.exit(os.path.dirname(geoops.__file__) != sys.argv[1])" \
      "$ROOT/geoops") 2>/dev/null
}
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$hash" ] && installed_here; then
  say "geoops._C is up to date (no change in csrc/, setup.py, pyproject.toml, torch or build variables since the last build): not rebuilt"
else
  t=$SECONDS
  say "building geoops._C and installing geoops in editable mode (pip install --no-build-isolation -e .);"
  say "  a first build compiles every C++ file (~5 min on 2 quiet cores, longer with CUDA), later builds only what changed$(command -v ccache >/dev/null && [ -z "${TORCH_NO_COMPILER_WRAPPER:-}" ] && echo "; ccache is on: files compiled before on this machine are cache hits") ..."
  log=$(mktemp)
  set +e
  # -v streams the build's output; keep our own messages and ninja's [i/n] lines, shortened to the file.
  python -m pip install -v --no-build-isolation --no-deps -e . 2>&1 | tee "$log" | build_progress "$t" "$ROOT"
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" -ne 0 ]; then
    echo "---- the build failed (exit $rc); its last lines (whole log: $log):"
    grep -v -E "^\s*$" "$log" | tail -n 60
    exit "$rc"
  fi
  rm -f "$log"
  mkdir -p build && echo "$hash" > "$STAMP"
  say "geoops._C built and installed in $(secs "$t")"
fi
python -c "import geoops; print('[setup] geoops ready:', geoops.backend_info())"
say "done in $(secs "$T_ALL")"

#!/usr/bin/env bash
# The pytest suite against a portable build's extension (GEOOPS_PORTABLE=1: baseline x86-64, no -march=native), the
# one a wheel that travels carries:
#   1. a copy of the checkout's files (tracked, and untracked ones git does not ignore) in a temporary folder;
#   2. the extension taken out of the wheel that scripts/wheel_check.sh built (dist/geoops-*.whl), put into that
#      copy's geoops/ (the checkout's own native build stays where it is);
#   3. python -m pytest tests in the copy (the arguments go to pytest), asserting first that geoops and its
#      extension come from there and that the extension is the portable one (geoops._C.build_isa() == "DEFAULT").
# Why: the native build is what CI's main pytest stage runs; the portable build compiles every kernel without AVX2 /
# AVX-512 and without hardware fma (ATen's vector fmadd is then two roundings), so its paths and their bits differ
# (tests state which results are bit-exact only on SIMD builds: tests/_stereo_rows.py paths_bitwise()).
# GEOOPS_C_USAGE_SELECT=DIR deselects the tests that a native run with GEOOPS_C_USAGE_RECORD=DIR saw pass without
# reaching geoops._C (tests/conftest.py; scripts/test.sh does this): they run the same Python on both builds; and the
# tests marked build_relative (they check geoops against geoops in one build: compiled vs eager).  Every other test
# runs (those that reached geoops._C, started a process or did not pass, and any the native run did not
# see to its end).  Unset, or nothing recorded there: the whole suite.
#   bash scripts/portable_tests.sh [pytest args]      # after scripts/wheel_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${GEOOPS_VENV:-.venv}
# shellcheck disable=SC1091
[ -f "$VENV/bin/activate" ] && . "$VENV/bin/activate"
whl=$(ls dist/geoops-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$whl" ]; then
  echo "[portable] no dist/geoops-*.whl: run scripts/wheel_check.sh first (it builds the portable wheel)" >&2
  exit 2
fi
if [ -n "${GEOOPS_C_USAGE_SELECT:-}" ] && ls "$GEOOPS_C_USAGE_SELECT"/*.skip >/dev/null 2>&1; then
  GEOOPS_C_USAGE_SELECT=$(cd "$GEOOPS_C_USAGE_SELECT" && pwd)
  export GEOOPS_C_USAGE_SELECT
else
  unset GEOOPS_C_USAGE_SELECT
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
  | tar --null -T - -cf - | tar -xf - -C "$TMP"
python - "$whl" "$TMP" <<'EOF'
import os, sys, zipfile
whl, dest = sys.argv[1:]
z = zipfile.ZipFile(whl)
libs = [n for n in z.namelist() if n.startswith("geoops/_C") and n.endswith((".so", ".pyd"))]
assert len(libs) == 1, f"expected one compiled extension in {whl}, found {libs}"
for f in os.listdir(os.path.join(dest, "geoops")):
    if f.startswith("_C") and f.endswith((".so", ".pyd")):
        os.remove(os.path.join(dest, "geoops", f))
z.extract(libs[0], dest)
print(f"[portable] {os.path.basename(whl)}: {libs[0]} -> {dest}")
EOF
cd "$TMP"
python - <<'EOF'
import os
import geoops
from geoops import _backend
C = _backend.compiled()
here = os.getcwd()
assert geoops.__file__.startswith(here) and C is not None and C.__file__.startswith(here), (geoops.__file__, C)
assert C.build_isa() == "DEFAULT", f"not a portable build: {C.build_isa()}"
print(f"[portable] geoops and {os.path.basename(C.__file__)} from {here}; build_isa() = {C.build_isa()}")
EOF
if [ -n "${GEOOPS_C_USAGE_SELECT:-}" ]; then
  echo "[portable] the $(cat "$GEOOPS_C_USAGE_SELECT"/*.skip | sort -u | wc -l) tests that passed in the native run without reaching geoops._C are deselected; the others run again ($(cat "$GEOOPS_C_USAGE_SELECT"/*.txt | sort -u | wc -l) reached it, started a process or did not pass there; those marked build_relative are deselected too)"
else
  unset GEOOPS_C_USAGE_SELECT
  echo "[portable] no record of the native run's geoops._C use: the whole suite"
fi
python -m pytest tests -q -p no:cacheprovider "$@"

#!/usr/bin/env bash
# Compile check of every Triton kernel without a GPU (like .ci/nvcc_check.sh for the .cu files).
#
#   * every launchable variant of every kernels/<family>.py (its compile_variants() hook) is compiled
#     for sm_80 and sm_90 with the Triton of this environment (CI: 3.9.0) AND with Triton 3.6.0, the
#     version the GPU machines carry (installed once, --no-deps, into $GEOOPS_TRITON36_DIR, default
#     ~/.cache/geoops/triton-3.6.0, and put first on PYTHONPATH for those runs);
#   * a compile error, a spill, a 32-bit program-id multiply or a lost IEEE division (where the family
#     asks for it) fails the check; see .ci/triton_compile_check.py;
#   * the table of registers / spills / shared memory / approximate instructions is written to a temp
#     file and compared with the checked-in kernels/COMPILE_REPORT.md (a stale table is reported, not
#     failed: the numbers move with the Triton versions).  --write updates the checked-in table.
#
#   bash .ci/triton_compile_check.sh [--write] [--families a,b]
# Env: PYTHON (default python), GEOOPS_TRITON36_DIR, GEOOPS_COMPILE_JOBS (parallel compiles, default nproc),
#      GEOOPS_COMPILE_VERSIONS ("env 3.6.0" by default; "env" alone skips Triton 3.6),
#      GEOOPS_COMPILE_CACHE: a folder for Triton's caches, one per (version, arch), default
#      ~/.cache/geoops/triton-compile-check; "off" compiles everything afresh.  A cached kernel is reused
#      only when Triton's own cache key matches (the source of the kernel and of every function it calls,
#      its constexprs and specialisation, the options, the target, the Triton version): like ccache,
#      the result is what a fresh compile would give.  Cold: every variant compiles (minutes); warm:
#      only the changed kernels do.  GEOOPS_COMPILE_CACHE_DAYS: entries unread for that many days are removed
#      after the run (default 3; 0 keeps them all).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY=${PYTHON:-python}
command -v "$PY" >/dev/null 2>&1 || PY=python3
WRITE=0
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --write) WRITE=1 ;;
    --families) EXTRA+=(--families "$2"); shift ;;
    *) echo "triton_compile_check: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [ "$WRITE" = 1 ] && [ "${#EXTRA[@]}" -gt 0 ]; then
  # (the report lists every family: written from a subset it would lose the others' rows)
  echo "triton_compile_check: --write needs the full check; drop --families (or run without --write)" >&2
  exit 2
fi
VERSIONS=${GEOOPS_COMPILE_VERSIONS:-env 3.6.0}
JOBS=${GEOOPS_COMPILE_JOBS:-$(nproc 2>/dev/null || echo 2)}
T36=${GEOOPS_TRITON36_DIR:-$HOME/.cache/geoops/triton-3.6.0}
CACHE=${GEOOPS_COMPILE_CACHE:-$HOME/.cache/geoops/triton-compile-check}
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
start=$(date +%s)

for v in $VERSIONS; do
  if [ "$v" = "3.6.0" ] && ! PYTHONPATH="$T36" "$PY" -c 'import triton, sys; sys.exit(triton.__version__ != "3.6.0")' 2>/dev/null; then
    echo "installing triton==3.6.0 (no deps) into $T36"
    rm -rf "$T36"
    "$PY" -m pip install -q --no-deps --no-compile --target "$T36" triton==3.6.0
  fi
done

# One process per (Triton version, arch): each installs its own stand-in driver.
pids=()
names=()
for v in $VERSIONS; do
  for arch in 80 90; do
    pp=""
    [ "$v" = "3.6.0" ] && pp="$T36"
    name="triton-$v-sm_$arch"
    cache="$TMP/cache-$name"
    [ "$CACHE" = "off" ] || cache="$CACHE/$name"
    mkdir -p "$cache"
    (
      TRITON_CACHE_DIR="$cache" PYTHONPATH="$pp${pp:+${PYTHONPATH:+:}}${PYTHONPATH:-}" TRITON_DEFAULT_FP_FUSION=1 \
        "$PY" .ci/triton_compile_check.py --arch "$arch" --json "$TMP/$name.json" "${EXTRA[@]}" \
        > "$TMP/$name.log" 2>&1
    ) &
    pids+=($!)
    names+=("$name")
    # at most $JOBS at a time
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 1; done
  done
done
status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then status=1; fi
  grep -E "^(FAIL|triton )" "$TMP/${names[$i]}.log" || { echo "FAIL  ${names[$i]}: no summary"; tail -n 30 "$TMP/${names[$i]}.log"; }
  grep -q "^triton " "$TMP/${names[$i]}.log" || status=1
done

shopt -s nullglob
jsons=("$TMP"/*.json)
if [ "${#jsons[@]}" -gt 0 ]; then
  if [ "$WRITE" = 1 ]; then
    "$PY" .ci/triton_compile_check.py --merge "${jsons[@]}" --report kernels/COMPILE_REPORT.md || status=1
  else
    "$PY" .ci/triton_compile_check.py --merge "${jsons[@]}" --report "$TMP/COMPILE_REPORT.md" >/dev/null || status=1
    if ! cmp -s "$TMP/COMPILE_REPORT.md" kernels/COMPILE_REPORT.md; then
      echo "note: kernels/COMPILE_REPORT.md differs from this run (update it: bash .ci/triton_compile_check.sh --write)"
      diff <(grep '^|' kernels/COMPILE_REPORT.md 2>/dev/null || true) <(grep '^|' "$TMP/COMPILE_REPORT.md") | head -n 20 || true
    fi
  fi
fi
# The caches would keep every version of every kernel ever compiled (~6 GB after a day of sessions): an entry none
# of whose files was read for GEOOPS_COMPILE_CACHE_DAYS days (default 3; 0 keeps all) goes.  A hit reads the
# entry's files, and the file system updates a file's access time on a read at least once a day (relatime).
DAYS=${GEOOPS_COMPILE_CACHE_DAYS:-3}
if [ "$CACHE" != off ] && [ "$DAYS" != 0 ]; then
  if ! [[ "$DAYS" =~ ^[0-9]+$ ]]; then
    echo "triton_compile_check: GEOOPS_COMPILE_CACHE_DAYS=$DAYS: expected a whole number of days (0: keep all)" >&2
    status=1
  else
    comm -23 <(find "$CACHE" -mindepth 2 -maxdepth 2 -type d | LC_ALL=C sort) \
             <(find "$CACHE" -mindepth 3 -type f -atime -"$DAYS" -printf '%h\n' | LC_ALL=C sort -u) \
      | xargs -r -d '\n' rm -rf
  fi
fi
echo "triton compile check: $([ $status -eq 0 ] && echo ok || echo FAILED) ($(( $(date +%s) - start )) s)"
exit $status

#!/usr/bin/env bash
# Every check of geoops, in the environment made by scripts/setup.sh, in stages:
#  1. nvcc compiles every CUDA source for sm_80 and sm_90 (skipped without nvcc; .ci/run starts the .cu compile
#     before setup, in the background, and this stage waits for it: GEOOPS_NVCC_EARLY); every Triton kernel
#     variant is compiled for sm_80/sm_90 (.ci/triton_compile_check.sh) and gpu_check.sh is dry-run;
#  2. the Triton kernels under the Triton interpreter (own processes: TRITON_INTERPRET=1, one pytest-xdist worker per core),
#     every tests/triton/test_*.py;
#  3. the parity run against the fp64 reference (python -m geoops.parity --quick);
#  4. the main pytest suite, every tests/test_*.py (CUDA cases skip themselves without a GPU), on pytest-xdist
#     workers as stage 2 (one per core, at most 4, --dist worksteal; `-n 0` among the arguments runs it in one process);
#  5. the API docs build and docstring check (scripts/docs.sh --check);
#  6. with GEOOPS_TEST_WHEEL=1 (CI sets it): the wheel recipe, installed into a
#     clean venv and imported from outside the checkout (scripts/wheel_check.sh); its portable build starts
#     before stage 1, in the background at the lowest CPU priority, and this stage waits for it (below);
#  7. then the pytest suite on that wheel's portable extension (scripts/portable_tests.sh:
#     a copy of the checkout with the wheel's extension in place of the native one): the tests of stage 4 that
#     reached geoops._C there (or started a process, or did not pass; tests/conftest.py records them) and any
#     it did not see to their end, since the others run the same Python on both builds, less those marked
#     build_relative (compiled / exported programs checked against eager geoops in one build); pytest reports the
#     rest as deselected.
# A failed stage does not stop the later ones; the run ends with one table
# (stage, result, passed/failed/skipped, time, CPU, idle cores, skip reasons grouped) and exits
# non-zero if any stage failed.  Arguments go to the pytest stage:
#   bash scripts/test.sh -x -k mobius
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${GEOOPS_VENV:-.venv}
# shellcheck disable=SC1091
[ -f "$VENV/bin/activate" ] && . "$VENV/bin/activate"
export PYTHONUNBUFFERED=1
WORK=$(mktemp -d)
# shellcheck source=scripts/_early.sh
. scripts/_early.sh
trap 'early_kill "$WORK/wheel"; rm -rf "$WORK"' EXIT
T_ALL=$SECONDS
n=0

# The wheel stage's portable build needs only the checkout and this venv, and the stages before it leave part of
# the cores idle (single-process steps of the nvcc and gpu_check stages, the parity and docs runs, the last tests
# of a pytest run): with GEOOPS_TEST_WHEEL=1 scripts/wheel_check.sh starts now in the background (_early.sh: nice
# 19, MAX_JOBS=2), and the wheel stage shows its output, waiting for the rest.  It builds in
# build/temp-*-portable and dist/, which no stage before it reads.  GEOOPS_WHEEL_EARLY=0: in its place instead.
wheel_wait() {  # the wheel stage's command when the build started early
  echo "[wheel] scripts/wheel_check.sh started before stage 1 at nice 19 (GEOOPS_WHEEL_EARLY=0: here instead); its output:"
  early_wait "$WORK/wheel"
  local rc=$?
  cp "$WORK/wheel/cpu" "$WORK/extra-cpu.$STAGE_ID" 2>/dev/null
  echo "[wheel] the background build and check took $(cat "$WORK/wheel/cpu" 2>/dev/null) s of CPU"
  [ -s "$WORK/wheel/rc" ] || echo "wheel: 0 passed, 1 failed"
  return "$rc"
}
WHEEL_EARLY=0
if [ "${GEOOPS_TEST_WHEEL:-0}" = 1 ] && [ "${GEOOPS_WHEEL_EARLY:-1}" = 1 ]; then
  early_start "$WORK/wheel" env MAX_JOBS=2 bash scripts/wheel_check.sh && WHEEL_EARLY=1
fi

# stage NAME KIND COMMAND...: run it (output shown live and kept), record the
# result.  KIND: pytest (counts from its JUnit XML, passed as --junitxml),
# lines (counts from "ok"/"FAIL"/"skip" line prefixes), or summary (counts from
# a closing "N passed, N failed[, N skipped]" line).
# CPU accounting per stage, in clock ticks: this shell's reaped children (every process a stage ran and waited
# for), and the machine's idle + iowait time over all cores.  CPU / wall is how many cores a stage kept busy; the
# idle core-seconds are what running something beside it could use (on a machine of its own: CI).
HZ=$(getconf CLK_TCK 2>/dev/null || echo 100)
child_ticks() { awk '{print $16 + $17}' "/proc/$$/stat" 2>/dev/null || echo 0; }
idle_ticks() { awk '/^cpu /{print $5 + $6}' /proc/stat 2>/dev/null || echo 0; }
stage() {
  local name=$1 kind=$2; shift 2
  n=$((n + 1))
  local id=$n t=$SECONDS rc c0 i0 cpu idle
  STAGE_ID=$id  # a command may add CPU of its own accounting (work it waited for) in $WORK/extra-cpu.$STAGE_ID
  c0=$(child_ticks); i0=$(idle_ticks)
  echo
  echo "======== [$id] $name: $*"
  if [ "$kind" = pytest ]; then
    "$@" --junitxml="$WORK/$id.xml" 2>&1 | tee "$WORK/$id.log"
  else
    "$@" 2>&1 | tee "$WORK/$id.log"
  fi
  rc=${PIPESTATUS[0]}
  cpu=$(( ($(child_ticks) - c0) / HZ + $(cat "$WORK/extra-cpu.$id" 2>/dev/null || echo 0) ))
  idle=$(( ($(idle_ticks) - i0) / HZ ))
  printf '%s\t%s\t%s\t%s\t%s\t\t%s\t%s\n' "$id" "$name" "$kind" "$rc" "$((SECONDS - t))" "$cpu" "$idle" >> "$WORK/stages.tsv"
  echo "======== [$id] $name: exit $rc in $((SECONDS - t)) s (CPU $cpu s; machine idle $idle core-s)"
}
skipped_stage() {  # skipped_stage NAME REASON
  n=$((n + 1))
  echo
  echo "======== [$n] $1: skipped ($2)"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$1" skipped 0 0 "$2" >> "$WORK/stages.tsv"
}

nvcc_wait() {  # the nvcc stage when .ci/run started its .cu compile early: that output, then the host checks
  echo "[nvcc] the .cu compile started before setup at nice 19 (.ci/run); its output:"
  early_wait "$GEOOPS_NVCC_EARLY"
  local rc=$?
  cp "$GEOOPS_NVCC_EARLY/cpu" "$WORK/extra-cpu.$STAGE_ID" 2>/dev/null
  bash .ci/nvcc_check.sh --host-only || rc=1
  return "$rc"
}
if command -v nvcc >/dev/null 2>&1; then
  if [ -s "${GEOOPS_NVCC_EARLY:-/nonexistent}/pid" ]; then stage "nvcc compile check" lines nvcc_wait
  else stage "nvcc compile check" lines bash .ci/nvcc_check.sh; fi
else
  skipped_stage "nvcc compile check" "nvcc not found"
fi
# --- GPU readiness (issue 12): every Triton kernel variant of every family compiled for sm_80/sm_90 with this
#     env's Triton and Triton 3.6 (the GPU machines'), without a GPU; scripts/gpu_check.sh's control flow (--dry-run)
stage "Triton compile check (sm_80/sm_90)" lines bash .ci/triton_compile_check.sh
stage "gpu_check.sh --dry-run" lines env OUT="$WORK/gpu-dry" bash scripts/gpu_check.sh --dry-run
# ---
# one pytest worker per core (at most 4) when pytest-xdist is there: the interpreter is single-threaded Python; the
# main suite runs on them too (its tests that change the thread count, an env switch or the backend restore it)
XDIST=()
# --dist worksteal: a worker whose queue runs dry takes half of another's (the interpreter stage had ended with one
# worker still on a queue of slow attention tests: 325 core-s idle in session 52's rehearsal)
python -c "import xdist" 2>/dev/null && XDIST=(-n "$(python -c 'import os; print(min(4, max(1, len(os.sched_getaffinity(0)))))')" --dist worksteal)
# Each worker's torch (and geoops._C) runs its OpenMP regions on one thread per core (the default, kept: the kernels'
# parallel splits are what the tests run), so two workers put four threads on two cores, and libgomp's idle threads
# spin (~300k rounds) after every parallel region before they sleep, on the core the other worker needs.
# OMP_WAIT_POLICY=PASSIVE: they sleep at once; the same threads, splits and results (session 54, -n 2, CPU s:
# test_stereographic_pairwise.py 75-80 -> 39-41, test_stereographic_short.py 49-51 -> 34-35; the interpreter's
# files, Python-bound, within noise).  A value in the environment wins.
[ "${#XDIST[@]}" -gt 0 ] && export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
# --durations: the slowest tests of the two long stages in the log (where the CI's time goes; session 51)
stage "Triton interpreter tests" pytest env TRITON_INTERPRET=1 python -m pytest tests/triton -q -p no:cacheprovider -rs --durations=25 "${XDIST[@]}"
stage "parity run (--quick)" summary python -m geoops.parity --quick
stage "pytest" pytest env GEOOPS_C_USAGE_RECORD="$WORK/c-usage" python -m pytest tests -q -p no:cacheprovider -rs --durations=25 "${XDIST[@]}" "$@"
stage "API docs" summary bash scripts/docs.sh --check
if [ "${GEOOPS_TEST_WHEEL:-0}" = 1 ]; then
  if [ "$WHEEL_EARLY" = 1 ]; then stage "wheel (GEOOPS_PORTABLE=1)" summary wheel_wait
  else stage "wheel (GEOOPS_PORTABLE=1)" summary bash scripts/wheel_check.sh; fi
  # the pytest suite again on that wheel's (portable) extension, in a copy of the checkout
  stage "pytest (portable build)" pytest env GEOOPS_C_USAGE_SELECT="$WORK/c-usage" bash scripts/portable_tests.sh -rs "${XDIST[@]}"
fi

python - "$WORK" "$((SECONDS - T_ALL))" <<'EOF'
import collections, os, re, sys
import xml.etree.ElementTree as ET

work, total_s = sys.argv[1], int(sys.argv[2])
rows, reasons = [], {}
for line in open(os.path.join(work, "stages.tsv")):
    f = line.rstrip("\n").split("\t")
    sid, name, kind, rc, secs = f[:5]
    cpu, idle = (int(v) if v else None for v in (f[6:8] if len(f) >= 8 else ("", "")))
    rc = int(rc)
    p = fl = sk = None
    if kind == "skipped":
        rows.append((name, "skipped", None, None, None, int(secs), None, None))
        reasons[name] = [f"stage skipped: {f[5]}"]
        continue
    log = open(os.path.join(work, f"{sid}.log"), errors="replace").read()
    xml = os.path.join(work, f"{sid}.xml")
    if kind == "pytest" and os.path.exists(xml):
        p = fl = sk = 0
        why = collections.Counter()
        for case in ET.parse(xml).iter("testcase"):
            tags = {c.tag: c for c in case}
            if "failure" in tags or "error" in tags:
                fl += 1
            elif "skipped" in tags:
                sk += 1
                msg = tags["skipped"].get("message", "") or "no reason given"
                msg = re.sub(r"^(Skipped|XFAIL|xfail):\s*", "", msg).strip()
                if tags["skipped"].get("type") == "pytest.xfail":
                    msg = "expected failure (xfail): " + msg
                why[msg] += 1
            else:
                p += 1
        if why:
            reasons[name] = [f"{c} skipped: {m}" for m, c in why.most_common()]
    elif kind == "lines":
        p = len(re.findall(r"^ok\b", log, re.M))
        fl = len(re.findall(r"^FAIL\b", log, re.M))
        sk = len(re.findall(r"^skip\b", log, re.M))
        why = collections.Counter(m for m in re.findall(r"^skip\s+\S+\s+\((.*)\)", log, re.M))
        if why:
            reasons[name] = [f"{c} skipped: {m}" for m, c in why.most_common()]
    else:
        m = re.findall(r"^\s*(?:\w+:\s*)?(\d+) passed, (\d+) failed(?:, (\d+) skipped)?\s*$", log, re.M)
        if m:
            p, fl, sk = (int(x or 0) for x in m[-1])
    if rc == 0:
        result = "ok"
    elif kind == "pytest" and rc == 5:
        result = "FAILED (no tests ran)"
    else:
        result = f"FAILED (exit {rc})"
    rows.append((name, result, p, fl, sk, int(secs), cpu, idle))

fmt = lambda v: "-" if v is None else str(v)
w = max(len(r[0]) for r in rows)
wr = max(len(r[1]) for r in rows)
print()
print("=" * 28, "geoops test summary", "=" * 28)
# cpu: CPU seconds of the stage's processes; idle: core-seconds the machine's cores sat idle meanwhile (with the
# machine to itself, what a stage run beside it could have had)
print(f"{'stage':<{w}}  {'result':<{wr}}  {'passed':>6}  {'failed':>6}  {'skipped':>7}  {'time':>7}  {'cpu':>7}  {'idle':>7}")
for name, result, p, fl, sk, secs, cpu, idle in rows:
    print(f"{name:<{w}}  {result:<{wr}}  {fmt(p):>6}  {fmt(fl):>6}  {fmt(sk):>7}  {secs:>5} s  {fmt(cpu):>5} s  {fmt(idle):>5} s")
if reasons:
    print("skip reasons:")
    for name, lines in reasons.items():
        for l in lines:
            print(f"  {name}: {l}")
bad = [r[0] for r in rows if r[1].startswith("FAILED")]
tp = sum(r[2] or 0 for r in rows)
tf = sum(r[3] or 0 for r in rows)
ts = sum(r[4] or 0 for r in rows)
m, s = divmod(total_s, 60)
print(f"{len(rows)} stages in {m} min {s:02d} s; " + (f"FAILED: {', '.join(bad)}" if bad else "all passed"))
if any(r[6] is not None for r in rows):
    print(f"CPU {sum(r[6] or 0 for r in rows)} s in all; the machine's cores idle {sum(r[7] or 0 for r in rows)} core-s "
          "during the stages")
# A failed stage with no counted failure (a crash, a build error) still counts as one.
tf += sum(1 for r in rows if r[1].startswith("FAILED") and not r[3])
print(f"total: {tp} passed, {tf} failed, {ts} skipped")
sys.exit(1 if bad else 0)
EOF

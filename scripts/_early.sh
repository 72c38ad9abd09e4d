# shellcheck shell=bash
# Background jobs that take the cycles CI's other steps leave idle (sourced by .ci/run and scripts/test.sh).
# early_start DIR COMMAND...: COMMAND runs at nice 19 (next to nothing taken from the foreground), in its own
#   process group (early_kill ends all of it) but in this session: the kernel's autogroups are per session, and
#   across them nice would not count.  It is orphaned at once, so that its CPU is not counted in whichever step
#   happens to reap it; DIR gets its pid, its output (log), exit status (rc) and `times` (its own accounting).
# early_wait DIR: its output so far and then the rest as it comes; returns its exit status; DIR/cpu: its CPU seconds.
early_start() {
  local dir=$1; shift
  mkdir -p "$dir"
  : > "$dir/log"  # there before early_wait's tail can look for it, however soon that comes
  ( python3 -c 'import os, sys; os.setpgid(0, 0); os.execvp(sys.argv[1], sys.argv[1:])' \
      nice -n 19 bash -c '"${@:2}" > "$1/log" 2>&1; rc=$?; times > "$1/times"; echo "$rc" > "$1/rc"' \
      early "$dir" "$@" </dev/null &
    echo $! > "$dir/pid" )
}
early_wait() {
  local dir=$1 t=$SECONDS
  # (done already: its log as it is, so that tail never follows a reused pid)
  if [ -s "$dir/rc" ]; then cat "$dir/log"; else tail -n +1 -f --pid="$(cat "$dir/pid")" "$dir/log"; fi
  while [ ! -s "$dir/rc" ] && [ $((SECONDS - t)) -lt 10 ]; do sleep 1; done
  if [ ! -s "$dir/rc" ]; then echo "[early] $dir: the background job ended without an exit status"; return 1; fi
  # `times`: the wrapper's own and its children's user / sys times ("1m2.5s 0m3.1s"); the children's line
  sed -n 2p "$dir/times" | awk '{ s = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); s += a[1] * 60 + a[2] }
    printf "%d\n", s }' > "$dir/cpu"
  return "$(cat "$dir/rc")"
}
early_kill() {  # safe under set -e (.ci/run's EXIT trap): a job that has ended already is no failure
  if [ -s "$1/pid" ]; then kill -- "-$(cat "$1/pid")" 2>/dev/null || true; fi
  return 0
}

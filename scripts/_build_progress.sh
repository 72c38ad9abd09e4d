# shellcheck shell=bash
# Sourced by scripts/setup.sh and scripts/wheel_check.sh.
# build_progress T0 ROOT: read `pip -v` output of a geoops build on stdin and print
# only setup.py's own messages and ninja's [i/n] lines, shortened to the file
# being compiled, with the seconds since T0 (so a long compile is never silent).
build_progress() {
  local t0=$1 root=$2 line step src
  while IFS= read -r line; do
    case "$line" in
      *"geoops build"*) echo "          ${line#"${line%%[! ]*}"}" ;;
      *"ninja: no work to do"*) echo "          ninja: no work to do (all objects up to date)" ;;
      *"-shared "*"_C."*".so"*) echo "          linking geoops._C   (+$((SECONDS - t0)) s)" ;;
      *\[[0-9]*/[0-9]*\]*)
        step=$(sed -n 's/.*\(\[[0-9]*\/[0-9]*\]\).*/\1/p' <<<"$line")
        # the compiled file: the first argument after -c that is not an option (torch writes "-c -c FILE")
        src=$(grep -oE ' -c( -c)? [^ -][^ ]*' <<<"$line" | head -n1 | sed -E "s/^ -c( -c)? //; s|^$root/||")
        echo "          $step ${src:-$(cut -c1-80 <<<"${line#"${line%%[! ]*}"}")}   (+$((SECONDS - t0)) s)" ;;
    esac
  done
}

#!/usr/bin/env bash
# Runs a test command several times in a row under a bounded background CPU load (stress-ng),
# and records each run's outcome: the proof that tests do not depend on the machine's speed.
#
#   scripts/test-under-load.sh [-c CPU_WORKERS] [-n RUNS] [-l LOG] -- COMMAND...
#
# The load is started before the first run, bounded by --timeout, and stopped by PID afterwards
# (also when a run fails or the script is interrupted). Exit status: 0 when every run passed.
set -euo pipefail

cpu=2 runs=3 log=target/test-under-load.log
while getopts "c:n:l:" opt; do
  case $opt in
    c) cpu=$OPTARG ;;
    n) runs=$OPTARG ;;
    l) log=$OPTARG ;;
    *) echo "usage: $0 [-c CPU_WORKERS] [-n RUNS] [-l LOG] -- COMMAND..." >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || { echo "no command given" >&2; exit 2; }
command -v stress-ng >/dev/null || { echo "stress-ng is missing (make deps EXTRA_PACKAGES=stress-ng)" >&2; exit 1; }

mkdir -p "$(dirname "$log")"
# Bounded in time even if this script is killed: 4 hours at most.
stress-ng --cpu "$cpu" --timeout 14400s --quiet &
load_pid=$!
stop_load() { kill "$load_pid" 2>/dev/null || true; wait "$load_pid" 2>/dev/null || true; }
trap stop_load EXIT

failed=0
{
  echo "# $(date -u +%FT%TZ) $(nproc) cores; stress-ng --cpu $cpu; $runs runs of: $*"
} | tee -a "$log"
for i in $(seq 1 "$runs"); do
  started=$(date +%s)
  if "$@" > "target/test-under-load.run$i.out" 2>&1; then status=pass; else status=FAIL; failed=$((failed + 1)); fi
  secs=$(( $(date +%s) - started ))
  summary=$(grep -E "^test result:" "target/test-under-load.run$i.out" \
    | awk '{p+=$4; f+=$6} END {printf "%d passed, %d failed", p, f}')
  echo "run $i: $status in ${secs}s ($summary; load average $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$log"
  if [ "$status" = FAIL ]; then grep -E "^test .* FAILED|panicked at" "target/test-under-load.run$i.out" | head -20 | tee -a "$log"; fi
done
exit $(( failed > 0 ))

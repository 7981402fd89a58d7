#!/usr/bin/env bash
# Instructions per packet, counted by valgrind's callgrind (deterministic, unlike timings).
#
#   scripts/callgrind.sh [scenario...]        default: the issue's scenarios
#   VIRTQ_CALLGRIND_ANNOTATE=1 scripts/callgrind.sh split-event-32
#                                              also prints callgrind_annotate of the hot lines
#
# Builds bench/count_cycle (Release + -g) in build-callgrind/, runs each scenario for N and 2N
# cycles and reports (Ir(2N) - Ir(N)) / (N * batch): set-up, teardown and valgrind's own start-up
# cancel out. Results: bench/results/callgrind.json and a table on stdout.
# Scenarios named dpdk-* are the peer, DPDK's virtio-user driver and vhost-user device, and
# virtq-* our receive path through the same cycle in the same program (bench/count_dpdk_virtio,
# built when DPDK is installed).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${VIRTQ_CALLGRIND_BUILD:-$root/build-callgrind}"
cycles="${VIRTQ_CALLGRIND_CYCLES:-20000}"

command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind not installed" >&2; exit 1; }

cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS="-g" \
  -DVIRTQ_BUILD_TESTS=OFF -DVIRTQ_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$build" --target count_cycle -j"${VIRTQ_JOBS:-2}" >/dev/null
prog="$build/bench/count_cycle"
dpdk_prog="$build/bench/count_dpdk_virtio"
cmake --build "$build" --target count_dpdk_virtio -j"${VIRTQ_JOBS:-2}" >/dev/null 2>&1 || true

if [ "$#" -eq 0 ]; then
  set -- $("$prog" --list | grep -E -- '-(event|none|flags|single|popcomplete|guestmem|cursor)-(1|32)$|^rx-|^floor-' || true)
  if [ -x "$dpdk_prog" ]; then set -- "$@" $("$dpdk_prog" --list); fi
fi

# Total Ir of one run (callgrind's "totals:" line).
instructions() {
  local out="$build/cg.$1.$2.out" p="$prog"
  [[ "$1" == dpdk-* || "$1" == virtq-* ]] && p="$dpdk_prog"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$p" "$1" "$2" >/dev/null 2>&1
  awk '/^totals:/ {print $2}' "$out"
}

json="${VIRTQ_CALLGRIND_JSON:-$root/bench/results/callgrind.json}"
mkdir -p "$(dirname "$json")"
echo "[" >"$json"
first=1
# Inclusive cost per packet of each phase_* function of count_cycle.cpp in the 2N run. Inlined
# code is listed once per source file it came from; the entry under count_cycle.cpp (the
# largest) is the whole inclusive cost.
phases() {
  callgrind_annotate --inclusive=yes --threshold=100 "$build/cg.$1.$2.out" 2>/dev/null |
    awk -v n="$2" -v k="$3" '
      /phase_[a-z_]+</ {
        gsub(",", "", $1); match($0, /phase_[a-z_]+/); name = substr($0, RSTART, RLENGTH)
        if ($1 + 0 > cost[name]) cost[name] = $1 + 0
      }
      END { for (p in cost) printf " %s=%.1f", p, cost[p] / (n * k) }'
}

printf '%-28s %12s   %s\n' scenario "instr/packet" "per packet by phase (2N run, incl. set-up)"
for s in "$@"; do
  batch="${s##*-}"
  [[ "$batch" =~ ^[0-9]+$ ]] || batch=1
  a=$(instructions "$s" "$cycles")
  b=$(instructions "$s" $((2 * cycles)))
  per=$(awk -v a="$a" -v b="$b" -v n="$cycles" -v k="$batch" 'BEGIN {printf "%.1f", (b - a) / (n * k)}')
  ph=$(phases "$s" $((2 * cycles)) "$batch")
  printf '%-28s %12s  %s\n' "$s" "$per" "$ph"
  [ $first -eq 1 ] || echo "," >>"$json"
  first=0
  printf '  {"scenario": "%s", "batch": %s, "cycles": %s, "instructions_per_packet": %s, "phases": "%s"}' \
    "$s" "$batch" "$cycles" "$per" "${ph# }" >>"$json"
  if [ "${VIRTQ_CALLGRIND_ANNOTATE:-0}" = 1 ]; then
    # head closes the pipe early: that SIGPIPE must not end the script (pipefail).
    callgrind_annotate --auto=yes --threshold=99 "$build/cg.$s.$((2 * cycles)).out" 2>/dev/null |
      head -n "${VIRTQ_CALLGRIND_LINES:-80}" || true
  fi
done
echo "" >>"$json"
echo "]" >>"$json"
echo "written: $json"

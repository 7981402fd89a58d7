#!/usr/bin/env bash
# The benchmark command: configure a Release build, build every benchmark, run each with
# repetitions, keep every repetition as JSON in bench/results/, and print the tables of medians
# (and fastest repetitions) that docs/performance.md quotes. Then scripts/plot.sh draws
# docs/img/performance.png from the same JSON.
#
#   scripts/bench.sh                      everything (about 5 minutes on 2 cores)
#   VIRTQ_BENCH_QUICK=1 scripts/bench.sh  one short repetition each (a smoke run)
#   scripts/bench.sh --benchmark_filter=split    extra arguments go to every binary
#
# Environment: VIRTQ_BENCH_BUILD (build dir, default build/), VIRTQ_BENCH_OUT (default
# bench/results/), VIRTQ_BENCH_REPS (default 5), VIRTQ_BENCH_MIN_TIME (seconds, default 0.2).
# The two-thread benchmarks pin CPUs 0 and 1: on a shared machine, run this when it is idle.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${VIRTQ_BENCH_BUILD:-$root/build}"
out="${VIRTQ_BENCH_OUT:-$root/bench/results}"
reps="${VIRTQ_BENCH_REPS:-5}"
min_time="${VIRTQ_BENCH_MIN_TIME:-0.2}"
if [ "${VIRTQ_BENCH_QUICK:-0}" = 1 ]; then
  reps=1
  min_time=0.01
fi

cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
# Target names from the generator's help ("... name" for Makefiles, "name: phony" for Ninja).
known="$(cmake --build "$build" --target help | sed -n -e 's/^\.\.\. \([a-z_0-9]*\).*/\1/p' \
  -e 's/^\([a-z_0-9]*\): .*/\1/p')"
targets=()
for src in "$root"/bench/bench_*.cpp; do
  name="$(basename "$src" .cpp)"
  # bench_dpdk_* are targets only when CMake found libdpdk.
  if grep -q -- "$name\$" <<<"$known"; then targets+=("$name"); fi
done
cmake --build "$build" --target "${targets[@]}" -j"${VIRTQ_JOBS:-$(nproc)}"

mkdir -p "$out"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "cpus: $(nproc)"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "compiler: $(${CXX:-c++} --version | head -1)"
} >"$out/machine.txt"

for t in "${targets[@]}"; do
  bin="$build/bench/$t"
  [ -x "$bin" ] || continue
  echo "== $t"
  "$bin" --benchmark_repetitions="$reps" --benchmark_display_aggregates_only=true \
    --benchmark_min_time="$min_time" --benchmark_out="$out/$t.json" \
    --benchmark_out_format=json "$@"
done
# Second pass, two-thread cases only: many short runs. On a shared machine a polling thread is
# often descheduled for part of a run; the fastest of many short runs shows what the queue does
# when both CPUs are really ours (the tables call it "best of short runs").
short_reps="${VIRTQ_BENCH_SHORT_REPS:-30}"
if [ "${VIRTQ_BENCH_QUICK:-0}" != 1 ] && [ "$short_reps" -gt 0 ]; then
  for t in "${targets[@]}"; do
    bin="$build/bench/$t"
    [ -x "$bin" ] || continue
    "$bin" --benchmark_list_tests "$@" 2>/dev/null | grep -qE 'stream|round_trip' || continue
    echo "== $t (two-thread cases, $short_reps short runs)"
    "$bin" --benchmark_filter='stream|round_trip' --benchmark_repetitions="$short_reps" \
      --benchmark_display_aggregates_only=true --benchmark_min_time=0.02 \
      --benchmark_out="$out/$t.2t.json" --benchmark_out_format=json "$@" >/dev/null
  done
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/machine.txt"

python3 "$root/scripts/bench_summary.py" table "$out" | tee "$out/summary.md"
if command -v gnuplot >/dev/null; then
  "$root/scripts/plot.sh" "$out"
fi

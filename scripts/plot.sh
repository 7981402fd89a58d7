#!/usr/bin/env bash
# Draws docs/img/performance.png from the JSON of scripts/bench.sh (bench_dpdk_compare.json)
# and, when present, the instruction counts of scripts/callgrind.sh (callgrind.json); and
# docs/img/virtio-peer.png from count_dpdk_virtio's figures (callgrind*.json, peer-virtio-times.txt).
#   scripts/plot.sh [results dir]      default: bench/results
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
results="${1:-$root/bench/results}"
out="${VIRTQ_PLOT_OUT:-$root/docs/img/performance.png}"
command -v gnuplot >/dev/null || { echo "plot.sh: gnuplot not installed" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
data="$(mktemp)"
insn="$(mktemp)"
trap 'rm -f "$data" "$insn"' EXIT
python3 "$root/scripts/bench_summary.py" plot "$results" >"$data"
if [ -f "$results/callgrind.json" ]; then
  python3 "$root/scripts/bench_summary.py" plot-instructions "$results" >"$insn"
  insn_arg="$insn"
else
  insn_arg=""
fi
subtitle="$(sed -n 's/^date: //p' "$results/machine.txt" 2>/dev/null || true), $(nproc) CPUs"
gnuplot -e "datafile='$data'; insnfile='$insn_arg'; outfile='$out'; subtitle='$subtitle'" \
  "$root/scripts/plot.gp"
echo "plot: $out"
# Our receive cycle next to DPDK's virtio pair, when count_dpdk_virtio's figures are there.
peer="$(mktemp)"
trap 'rm -f "$data" "$insn" "$peer"' EXIT
python3 "$root/scripts/bench_summary.py" plot-peer "$results" >"$peer"
if [ "$(grep -vc '^#' "$peer")" -gt 0 ]; then
  peer_out="$(dirname "$out")/virtio-peer.png"
  gnuplot -e "datafile='$peer'; outfile='$peer_out'" "$root/scripts/plot_peer.gp"
  echo "plot: $peer_out"
fi

#!/usr/bin/env bash
# Builds the examples and runs the demo: build/examples/incident_demo if that example exists,
# otherwise every example executable (with no arguments). Extra arguments go to the demo.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# On a fresh machine this is one of the README's two commands: bring what it needs.
"$root/scripts/install-deps.sh"

jobs="${VIRTQ_JOBS:-$(nproc)}"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
# Build only the example targets (one per examples/*.cpp).
targets=()
for src in examples/*.cpp; do
  [ -e "$src" ] || continue
  targets+=(--target "$(basename "$src" .cpp)")
done
if [ "${#targets[@]}" -eq 0 ]; then
  echo "demo: no examples/*.cpp yet" >&2
  exit 1
fi
cmake --build build -j"$jobs" "${targets[@]}"

if [ -x build/examples/incident_demo ]; then
  exec build/examples/incident_demo "$@"
fi
for src in examples/*.cpp; do
  exe="build/examples/$(basename "$src" .cpp)"
  echo "=== $exe"
  "$exe" "$@"
done

#!/usr/bin/env bash
# The test command: install deps, configure a Release build in build/ with the default
# compiler, build everything (tests, benchmarks, examples) and run every ctest test.
# Extra arguments are passed to ctest (e.g. scripts/test.sh -R spec).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

"$root/scripts/install-deps.sh"

jobs="${VIRTQ_JOBS:-$(nproc)}"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$jobs"
ctest --test-dir build --output-on-failure -j"$jobs" "$@"

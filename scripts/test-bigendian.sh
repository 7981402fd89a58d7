#!/usr/bin/env bash
# Big-endian test run: cross-builds the unit tests for s390x (64-bit, big-endian) with
# Debian's g++-s390x-linux-gnu (cmake/toolchain-s390x.cmake) into build-s390x/ and runs them
# with ctest under qemu-user (qemu-s390x, the toolchain's CMAKE_CROSSCOMPILING_EMULATOR).
#
# Why: VIRTIO rings of VERSION_1 devices are little-endian on the wire, legacy rings (no
# VERSION_1) are in the guest's native order. On x86 both are the same, so code that reads or
# writes a ring field without the endian accessors (virtq::get<E>/put<E>, wire<T>,
# load_acquire<E>, ...) or assumes a little-endian layout (e.g. rx_pool's live_alone(), a
# memcpy of two fields as one word) passes there and only breaks on a big-endian host.
#
# Installs what is missing with apt-get (adds the s390x dpkg architecture for
# librapidcheck-dev:s390x). Benchmarks, examples and DPDK (x86 only) are off; the consumer_*
# tests cross-build the downstream project with the same toolchain file and run it under qemu.
# Extra arguments go to ctest (e.g. scripts/test-bigendian.sh -R rx_pool).
# Exits non-zero when a package, the configure, the build or a test fails; with
# VIRTQ_BIGENDIAN_OPTIONAL=1 (what .ci/run sets) packages that cannot be installed print
# "SKIPPED" and exit 0 instead (a mirror without s390x must not fail the x86 CI), while a
# failing build or test still fails.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
build="${VIRTQ_S390X_BUILD_DIR:-$root/build-s390x}"
jobs="${VIRTQ_JOBS:-$(nproc)}"

# --- packages ------------------------------------------------------------------------------
if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600)

packages=(cmake make catch2 gcc-s390x-linux-gnu g++-s390x-linux-gnu librapidcheck-dev:s390x)
if ! command -v qemu-s390x >/dev/null 2>&1 && ! command -v qemu-s390x-static >/dev/null 2>&1; then
  packages+=(qemu-user)
fi

need_update=0
if ! dpkg --print-foreign-architectures | grep -qx s390x; then
  echo "test-bigendian: dpkg --add-architecture s390x"
  "${sudo[@]}" dpkg --add-architecture s390x
  need_update=1
fi
missing=()
for p in "${packages[@]}"; do
  if ! dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed'; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "test-bigendian: installing ${missing[*]}"
  need_update=1
fi
install_ok=1
if [ "$need_update" -eq 1 ]; then
  "${apt[@]}" update || install_ok=0
fi
if [ "$install_ok" -eq 1 ] && [ "${#missing[@]}" -gt 0 ]; then
  "${apt[@]}" install -y --no-install-recommends "${missing[@]}" || install_ok=0
fi
if [ "$install_ok" -eq 0 ]; then
  if [ "${VIRTQ_BIGENDIAN_OPTIONAL:-0}" = 1 ]; then
    echo "test-bigendian: SKIPPED: could not install ${missing[*]}"
    exit 0
  fi
  echo "test-bigendian: could not install ${missing[*]}" >&2
  exit 1
fi

# --- configure, build ----------------------------------------------------------------------
cmake -S . -B "$build" \
  -DCMAKE_TOOLCHAIN_FILE="$root/cmake/toolchain-s390x.cmake" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DVIRTQ_BUILD_TESTS=ON -DVIRTQ_BUILD_BENCHMARKS=OFF -DVIRTQ_BUILD_EXAMPLES=OFF \
  -DVIRTQ_DPDK=OFF
cmake --build "$build" -j"$jobs"

# --- run (ctest runs every test through qemu-s390x) ----------------------------------------
ctest --test-dir "$build" --output-on-failure -j"$jobs" "$@"

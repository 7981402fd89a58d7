#!/usr/bin/env bash
# Cross test runs: the unit tests built for another kind of host with Debian's cross compilers
# and run under qemu-user (the toolchain file's CMAKE_CROSSCOMPILING_EMULATOR), in
# build-<target>/.
#
#   scripts/test-cross.sh s390x [ctest args...]   64-bit, BIG-endian (cmake/toolchain-s390x.cmake)
#   scripts/test-cross.sh armhf [ctest args...]   32-bit ARM, little-endian (toolchain-armhf.cmake)
#
# Why, s390x: VIRTIO rings of VERSION_1 devices are little-endian on the wire, legacy rings are
# in the guest's native order. On x86 both are the same bytes, so a ring field read or written
# around the endian accessors (get<E>/put<E>, wire<T>, load_acquire<E>...) or a layout trick that
# assumes a little-endian host (rx_pool's live_alone) passes there and only fails here.
# Why, armhf: descriptors carry 64-bit guest addresses and a chain up to 2^32 bytes, while size_t,
# pointers and uintptr_t have 32 bits: a guest address cast to a pointer without a range check
# (identity_memory, guest_memory regions), a uint64 kept in a size_t or an LP64 size assumption
# passes on x86-64 and fails (or, with -Wconversion -Werror, does not compile) here.
#
# Installs what is missing with apt-get (adds the target's dpkg architecture for its
# librapidcheck-dev). Benchmarks, examples and DPDK (x86 only) are off; the consumer_* tests
# cross-build the downstream project with the same toolchain file and run it under qemu.
# Exits non-zero when a package, the configure, the build or a test fails; with
# VIRTQ_CROSS_OPTIONAL=1 (what .ci/run sets) packages that cannot be installed print "SKIPPED"
# and exit 0 instead (a mirror without the architecture must not fail the x86 CI), while a
# failing build or test still fails.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target="${1:-}"
case "$target" in
  s390x) triple=s390x-linux-gnu qemu=qemu-s390x ;;
  armhf) triple=arm-linux-gnueabihf qemu=qemu-arm ;;
  *)
    echo "usage: $0 s390x|armhf [ctest args...]" >&2
    exit 2
    ;;
esac
shift
me="test-cross $target"
build="$root/build-$target"
jobs="${VIRTQ_JOBS:-$(nproc)}"

# --- packages ------------------------------------------------------------------------------
packages=(cmake make catch2 "gcc-$triple" "g++-$triple" "librapidcheck-dev:$target")
if ! command -v "$qemu" >/dev/null 2>&1 && ! command -v "$qemu-static" >/dev/null 2>&1; then
  packages+=(qemu-user)
fi
install_ok=1
if ! dpkg --print-foreign-architectures | grep -qx "$target"; then
  # The target's libraries (librapidcheck-dev:<target>) come from its dpkg architecture;
  # install-deps.sh runs apt-get update since they are missing.
  echo "$me: dpkg --add-architecture $target"
  if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
  "${sudo[@]}" dpkg --add-architecture "$target" || install_ok=0
fi
if [ "$install_ok" -eq 1 ]; then
  "$root/scripts/install-deps.sh" "${packages[@]}" || install_ok=0
fi
if [ "$install_ok" -eq 0 ]; then
  if [ "${VIRTQ_CROSS_OPTIONAL:-0}" = 1 ]; then
    echo "$me: SKIPPED: could not install ${packages[*]}"
    exit 0
  fi
  echo "$me: could not install ${packages[*]}" >&2
  exit 1
fi

# --- configure, build ----------------------------------------------------------------------
cmake -S . -B "$build" \
  -DCMAKE_TOOLCHAIN_FILE="$root/cmake/toolchain-$target.cmake" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DVIRTQ_BUILD_TESTS=ON -DVIRTQ_BUILD_BENCHMARKS=OFF -DVIRTQ_BUILD_EXAMPLES=OFF \
  -DVIRTQ_DPDK=OFF
cmake --build "$build" -j"$jobs"

# --- run (ctest runs every test through qemu) ----------------------------------------------
ctest --test-dir "$build" --output-on-failure -j"$jobs" "$@"

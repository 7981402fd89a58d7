#!/usr/bin/env bash
# Installs (Debian/Ubuntu, apt-get) whatever of virtq's build/test dependencies is missing,
# or, given package names (scripts/test-cross.sh passes its cross compilers), those instead.
# Idempotent: packages already installed (dpkg -s) are skipped; apt-get update runs at most
# once, and only when something has to be installed. Uses sudo only when not root.
set -euo pipefail

packages=(
  build-essential g++ clang cmake pkg-config git
  catch2 librapidcheck-dev libbenchmark-dev libboost-dev linux-libc-dev libclang-rt-14-dev
  valgrind gnuplot-nox
  dpdk dpdk-dev libdpdk-dev
)
if [ "$#" -gt 0 ]; then packages=("$@"); fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed'; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages already installed"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "install-deps: missing ${missing[*]} and not root (no sudo available)" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# apt may be busy (another install running): wait for its lock up to 10 minutes.
apt_opts=(-o DPkg::Lock::Timeout=600)
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" update
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y \
  --no-install-recommends "${missing[@]}"

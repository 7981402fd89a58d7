# Cross build for armhf Linux (32-bit ARM, hard-float, little-endian), run under qemu-user: a
# host with 32-bit size_t and pointers under 64-bit guest addresses. scripts/test-cross.sh armhf
# uses it:
#
#   cmake -S . -B build-armhf -DCMAKE_TOOLCHAIN_FILE=cmake/toolchain-armhf.cmake
#
# Needs g++-arm-linux-gnueabihf, gcc-arm-linux-gnueabihf, qemu-user and (dpkg
# --add-architecture armhf) librapidcheck-dev:armhf for the tests.
set(VIRTQ_CROSS_TRIPLE arm-linux-gnueabihf)
set(VIRTQ_CROSS_PROCESSOR arm)
set(VIRTQ_CROSS_QEMU qemu-arm)
include(${CMAKE_CURRENT_LIST_DIR}/cross-common.cmake)

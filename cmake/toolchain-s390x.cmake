# Cross build for s390x Linux (64-bit, BIG-endian), run under qemu-user: a host where a ring
# field touched around the endian accessors shows. scripts/test-cross.sh s390x uses it:
#
#   cmake -S . -B build-s390x -DCMAKE_TOOLCHAIN_FILE=cmake/toolchain-s390x.cmake
#
# Needs g++-s390x-linux-gnu, gcc-s390x-linux-gnu, qemu-user and (dpkg --add-architecture s390x)
# librapidcheck-dev:s390x for the tests.
set(VIRTQ_CROSS_TRIPLE s390x-linux-gnu)
set(VIRTQ_CROSS_PROCESSOR s390x)
set(VIRTQ_CROSS_QEMU qemu-s390x)
include(${CMAKE_CURRENT_LIST_DIR}/cross-common.cmake)

# CMake toolchain file: cross build for s390x (64-bit, BIG-endian) Linux with Debian's
# g++-s390x-linux-gnu, run under qemu-user (qemu-s390x). Used by scripts/test-bigendian.sh
# to run the unit tests on a big-endian host, where a ring field read or written without
# the endian accessors (virtq::get/put, wire<T>, load_acquire<E>, ...) shows up.
#
#   cmake -S . -B build-s390x -DCMAKE_TOOLCHAIN_FILE=cmake/toolchain-s390x.cmake
#
# Needs: apt-get install g++-s390x-linux-gnu gcc-s390x-linux-gnu qemu-user
#        and (dpkg --add-architecture s390x) librapidcheck-dev:s390x for the tests.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR s390x)

set(VIRTQ_S390X_TRIPLE s390x-linux-gnu)
set(CMAKE_C_COMPILER   ${VIRTQ_S390X_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${VIRTQ_S390X_TRIPLE}-g++)
set(CMAKE_LIBRARY_ARCHITECTURE ${VIRTQ_S390X_TRIPLE})

# ctest (add_test with a target as COMMAND) and try_run() go through the emulator.
# -L: where the s390x loader and shared libraries live (libc6-s390x-cross).
find_program(VIRTQ_QEMU_S390X NAMES qemu-s390x qemu-s390x-static REQUIRED)
set(CMAKE_CROSSCOMPILING_EMULATOR ${VIRTQ_QEMU_S390X} -L /usr/${VIRTQ_S390X_TRIPLE})

# Programs (cmake, pkg-config...) from the host; libraries and headers of the target only:
# /usr/lib/s390x-linux-gnu (multiarch, dpkg --add-architecture s390x) and
# /usr/s390x-linux-gnu (the cross toolchain's sysroot). Host-only packages such as
# libdpdk (x86 only) must not be picked up, so pkg-config only sees s390x .pc files.
set(CMAKE_FIND_ROOT_PATH /usr/${VIRTQ_S390X_TRIPLE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
set(ENV{PKG_CONFIG_LIBDIR}
    "/usr/lib/${VIRTQ_S390X_TRIPLE}/pkgconfig:/usr/${VIRTQ_S390X_TRIPLE}/lib/pkgconfig:/usr/share/pkgconfig")
set(ENV{PKG_CONFIG_PATH} "")

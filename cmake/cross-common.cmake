# The part every cross toolchain file here shares (cmake/toolchain-<target>.cmake sets
# VIRTQ_CROSS_TRIPLE, VIRTQ_CROSS_PROCESSOR and VIRTQ_CROSS_QEMU, then includes this):
# Debian's <triple>-gcc/g++, tests run under qemu-user, and only the target's libraries found.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR ${VIRTQ_CROSS_PROCESSOR})

set(CMAKE_C_COMPILER ${VIRTQ_CROSS_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${VIRTQ_CROSS_TRIPLE}-g++)
set(CMAKE_LIBRARY_ARCHITECTURE ${VIRTQ_CROSS_TRIPLE})

# ctest (add_test with a target as COMMAND) and try_run() go through the emulator.
# -L: where the target's loader and shared libraries live (libc6-<arch>-cross).
find_program(VIRTQ_CROSS_EMULATOR NAMES ${VIRTQ_CROSS_QEMU} ${VIRTQ_CROSS_QEMU}-static REQUIRED)
set(CMAKE_CROSSCOMPILING_EMULATOR ${VIRTQ_CROSS_EMULATOR} -L /usr/${VIRTQ_CROSS_TRIPLE})

# Programs (cmake, pkg-config...) from the host; libraries and headers of the target only:
# /usr/lib/<triple> (multiarch, dpkg --add-architecture) and /usr/<triple> (the cross
# toolchain's sysroot). Host-only packages such as libdpdk (x86 only) must not be picked up,
# so pkg-config only sees the target's .pc files.
set(CMAKE_FIND_ROOT_PATH /usr/${VIRTQ_CROSS_TRIPLE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
set(ENV{PKG_CONFIG_LIBDIR}
    "/usr/lib/${VIRTQ_CROSS_TRIPLE}/pkgconfig:/usr/${VIRTQ_CROSS_TRIPLE}/lib/pkgconfig:/usr/share/pkgconfig")
set(ENV{PKG_CONFIG_PATH} "")

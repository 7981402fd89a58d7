# Finds DPDK through pkg-config (libdpdk) and wraps it as `virtq_dpdk`, an
# INTERFACE target whose include directories are SYSTEM (DPDK's headers warn
# under C++20 with -Wconversion/-Wpedantic, and our programs use -Werror).
#
# Sets VIRTQ_HAVE_DPDK (ON/OFF). Disabled entirely with -DVIRTQ_DPDK=OFF.

include_guard(GLOBAL)

set(VIRTQ_HAVE_DPDK OFF)
if(VIRTQ_DPDK)
  find_package(PkgConfig QUIET)
  if(PKG_CONFIG_FOUND)
    pkg_check_modules(VIRTQ_PC_DPDK QUIET libdpdk)
  endif()
  if(VIRTQ_PC_DPDK_FOUND)
    set(VIRTQ_HAVE_DPDK ON)
    add_library(virtq_dpdk INTERFACE)
    target_include_directories(virtq_dpdk SYSTEM INTERFACE ${VIRTQ_PC_DPDK_INCLUDE_DIRS})

    # CFLAGS_OTHER is e.g. "-include;rte_config.h;-march=corei7". Keep
    # "-include <file>" together (CMake de-duplicates compile options).
    set(_opts "")
    set(_pending "")
    foreach(_f IN LISTS VIRTQ_PC_DPDK_CFLAGS_OTHER)
      if(_pending)
        list(APPEND _opts "SHELL:${_pending} ${_f}")
        set(_pending "")
      elseif(_f STREQUAL "-include" OR _f STREQUAL "-imacros")
        set(_pending "${_f}")
      else()
        list(APPEND _opts "${_f}")
      endif()
    endforeach()
    target_compile_options(virtq_dpdk INTERFACE ${_opts})

    target_link_directories(virtq_dpdk INTERFACE ${VIRTQ_PC_DPDK_LIBRARY_DIRS})
    target_link_libraries(virtq_dpdk INTERFACE
      ${VIRTQ_PC_DPDK_LDFLAGS_OTHER} ${VIRTQ_PC_DPDK_LINK_LIBRARIES})
    message(STATUS "virtq: DPDK ${VIRTQ_PC_DPDK_VERSION} found; dpdk_* tests and "
                   "bench_dpdk_* benchmarks enabled")
  else()
    message(STATUS "virtq: libdpdk not found via pkg-config; DPDK programs skipped")
  endif()
endif()

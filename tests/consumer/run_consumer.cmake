# Driven by ctest (see tests/CMakeLists.txt):
#   cmake -DMODE=package|subdirectory -DVIRTQ_SOURCE_DIR=... -DVIRTQ_BINARY_DIR=...
#         -DCONSUMER_SOURCE_DIR=... -DWORK_DIR=... [-DCXX_COMPILER=...] [-DGENERATOR=...]
#         [-DTOOLCHAIN_FILE=...]
#         -P run_consumer.cmake
#
# package:      cmake --install <virtq build> --prefix <WORK_DIR>/prefix, then configure the
#               consumer with find_package(virtq CONFIG REQUIRED) + CMAKE_PREFIX_PATH.
# subdirectory: configure the consumer with add_subdirectory(<virtq source>).
# Either way, build the consumer and run it.
cmake_minimum_required(VERSION 3.20)

foreach(v MODE VIRTQ_SOURCE_DIR VIRTQ_BINARY_DIR CONSUMER_SOURCE_DIR WORK_DIR)
  if(NOT DEFINED ${v} OR "${${v}}" STREQUAL "")
    message(FATAL_ERROR "run_consumer.cmake: -D${v}=... is required")
  endif()
endforeach()

function(run)
  string(JOIN " " _pretty ${ARGN})
  message(STATUS "+ ${_pretty}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "command failed (${rc}): ${_pretty}")
  endif()
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

set(configure_args -S "${CONSUMER_SOURCE_DIR}" -B "${WORK_DIR}/build"
    -DCMAKE_BUILD_TYPE=Release)
if(DEFINED CXX_COMPILER AND NOT CXX_COMPILER STREQUAL "")
  list(APPEND configure_args "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()
# A cross build (e.g. cmake/toolchain-s390x.cmake) hands its toolchain file on: the consumer
# is then built for the same target, and run through its CMAKE_CROSSCOMPILING_EMULATOR.
if(DEFINED TOOLCHAIN_FILE AND NOT TOOLCHAIN_FILE STREQUAL "")
  list(APPEND configure_args "-DCMAKE_TOOLCHAIN_FILE=${TOOLCHAIN_FILE}")
endif()
if(DEFINED GENERATOR AND NOT GENERATOR STREQUAL "")
  list(APPEND configure_args -G "${GENERATOR}")
endif()

if(MODE STREQUAL "package")
  set(prefix "${WORK_DIR}/prefix")
  run("${CMAKE_COMMAND}" --install "${VIRTQ_BINARY_DIR}" --prefix "${prefix}")
  foreach(f include/virtq/spec.hpp share/cmake/virtq/virtqConfig.cmake
            share/cmake/virtq/virtqConfigVersion.cmake share/cmake/virtq/virtqTargets.cmake)
    if(NOT EXISTS "${prefix}/${f}")
      message(FATAL_ERROR "install is missing ${f}")
    endif()
  endforeach()
  run("${CMAKE_COMMAND}" ${configure_args} -DVIRTQ_CONSUMER_MODE=package
      "-DCMAKE_PREFIX_PATH=${prefix}" -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON)
elseif(MODE STREQUAL "subdirectory")
  run("${CMAKE_COMMAND}" ${configure_args} -DVIRTQ_CONSUMER_MODE=subdirectory
      "-DVIRTQ_SOURCE_DIR=${VIRTQ_SOURCE_DIR}")
else()
  message(FATAL_ERROR "MODE must be package or subdirectory, got '${MODE}'")
endif()

run("${CMAKE_COMMAND}" --build "${WORK_DIR}/build")
# Through ctest, so that a cross build runs it under the toolchain's emulator.
run("${CMAKE_CTEST_COMMAND}" --test-dir "${WORK_DIR}/build" --output-on-failure
    --no-tests=error)
message(STATUS "consumer (${MODE}) OK")

# Helpers for virtq's own programs (tests, benchmarks, examples).
#
# Nothing here is attached to the public `virtq` target: consumers of the
# library never inherit our warning or sanitizer flags.
#
#   virtq_warnings   INTERFACE target: -Wall -Wextra -Wpedantic -Werror -Wshadow
#                    -Wconversion -Wsign-conversion (g++ and clang++)
#   virtq_sanitize   INTERFACE target: compile+link flags selected by VIRTQ_SANITIZE
#   virtq_add_program(<target> <source> [LIBS <libs>...])
#                    add_executable + virtq::virtq + warnings + sanitizers
#   virtq_apply_sanitizers(<target>)
#                    only the sanitizer flags (for object libraries etc.)

include_guard(GLOBAL)

# --- warnings --------------------------------------------------------------
if(NOT TARGET virtq_warnings)
  add_library(virtq_warnings INTERFACE)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(virtq_warnings INTERFACE
      -Wall -Wextra -Wpedantic -Werror
      -Wshadow -Wconversion -Wsign-conversion)
  elseif(MSVC)
    target_compile_options(virtq_warnings INTERFACE /W4 /WX)
  endif()
endif()

# --- sanitizers ------------------------------------------------------------
if(NOT TARGET virtq_sanitize)
  add_library(virtq_sanitize INTERFACE)
  if(VIRTQ_SANITIZE STREQUAL "")
    # nothing
  elseif(VIRTQ_SANITIZE STREQUAL "address")
    set(_virtq_san_flags
      -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
    target_compile_options(virtq_sanitize INTERFACE ${_virtq_san_flags})
    target_link_options(virtq_sanitize INTERFACE ${_virtq_san_flags})
  elseif(VIRTQ_SANITIZE STREQUAL "thread")
    set(_virtq_san_flags -fsanitize=thread -fno-omit-frame-pointer)
    target_compile_options(virtq_sanitize INTERFACE ${_virtq_san_flags})
    target_link_options(virtq_sanitize INTERFACE ${_virtq_san_flags})
    if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU"
       AND CMAKE_CXX_COMPILER_VERSION VERSION_GREATER_EQUAL 12)
      # g++ >= 12 warns (-Wtsan) that TSan does not model std::atomic_thread_fence;
      # with -Werror that would fail the build. Prefer clang++ for TSan runs.
      target_compile_options(virtq_sanitize INTERFACE -Wno-tsan)
    endif()
  else()
    message(FATAL_ERROR
      "VIRTQ_SANITIZE must be empty, 'address' or 'thread' (got '${VIRTQ_SANITIZE}')")
  endif()
  if(NOT VIRTQ_SANITIZE STREQUAL "")
    message(STATUS "virtq: sanitizers for tests/bench/examples: ${VIRTQ_SANITIZE}")
  endif()
endif()

function(virtq_apply_sanitizers target)
  target_link_libraries(${target} PRIVATE virtq_sanitize)
endfunction()

function(virtq_add_program target source)
  cmake_parse_arguments(PARSE_ARGV 2 ARG "" "" "LIBS")
  add_executable(${target} "${source}")
  target_link_libraries(${target} PRIVATE
    virtq::virtq virtq_warnings virtq_sanitize ${ARG_LIBS})
endfunction()

# Globs `<dir>/<pattern>` (re-globbed at build time) and returns a sorted list.
function(virtq_glob out_var dir pattern)
  file(GLOB _files LIST_DIRECTORIES false CONFIGURE_DEPENDS "${dir}/${pattern}")
  list(SORT _files)
  set(${out_var} "${_files}" PARENT_SCOPE)
endfunction()

# TIDELOOP_THREAD_SAFETY: clang's -Wthread-safety over everything built here, as errors
# (the `analysis` preset). The ABSL_GUARDED_BY / ABSL_EXCLUSIVE_LOCKS_REQUIRED annotations
# in runtime/ and bridge/ are checked at every compile.
#
# A clean build proves something only if a broken lock discipline would break it, so
# configure first compiles thread_safety_violations.cpp once per lock type: the correct
# variant (0) must compile without a thread-safety warning, every violation (1..6) must
# compile with one. Fails when the annotations expand to nothing (a compiler without the
# attributes, a lock type that lost them). Seven small compiles, about a second each.
if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  message(FATAL_ERROR "TIDELOOP_THREAD_SAFETY needs clang (-Wthread-safety); "
    "configure with -DCMAKE_CXX_COMPILER=clang++-14 or use the `analysis` preset")
endif()

set(_tl_ts_saved_type "${CMAKE_TRY_COMPILE_TARGET_TYPE}")
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)  # compile only, nothing to link
foreach(_tl_ts_v RANGE 0 6)
  try_compile(_tl_ts_ok ${CMAKE_BINARY_DIR}/thread_safety_check/${_tl_ts_v}
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/thread_safety_violations.cpp
    CMAKE_FLAGS
      "-DINCLUDE_DIRECTORIES=${PROJECT_SOURCE_DIR}/runtime/include;${PROJECT_SOURCE_DIR}/runtime/src"
    COMPILE_DEFINITIONS -DTL_VIOLATION=${_tl_ts_v} -Wthread-safety
    LINK_LIBRARIES absl::base
    CXX_STANDARD 20
    OUTPUT_VARIABLE _tl_ts_out)
  string(REGEX MATCH "warning: [^\n]*\\[-Wthread-safety" _tl_ts_warned "${_tl_ts_out}")
  if(NOT _tl_ts_ok)
    message(FATAL_ERROR "thread_safety_violations.cpp (TL_VIOLATION=${_tl_ts_v}) does not "
      "compile:\n${_tl_ts_out}")
  elseif(_tl_ts_v EQUAL 0 AND _tl_ts_warned)
    message(FATAL_ERROR "-Wthread-safety warns on correct locking (TL_VIOLATION=0):\n"
      "${_tl_ts_out}")
  elseif(_tl_ts_v GREATER 0 AND NOT _tl_ts_warned)
    message(FATAL_ERROR "-Wthread-safety misses violation ${_tl_ts_v} of "
      "tests/analysis/thread_safety_violations.cpp: the annotations are not being checked")
  endif()
endforeach()
set(CMAKE_TRY_COMPILE_TARGET_TYPE "${_tl_ts_saved_type}")
message(STATUS "-Wthread-safety: catches all 6 violations of thread_safety_violations.cpp")

add_compile_options(-Wthread-safety -Werror=thread-safety)

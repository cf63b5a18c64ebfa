# Finds the Debian-packaged dependencies. Nothing is vendored; scripts/setup.sh
# installs the packages named next to each find call.
#   libtbb-dev        -> TBB::tbb, TBB::tbbmalloc      (scalable allocator, task_group peer)
#   libabsl-dev       -> absl::*                        (containers, Status, synchronization)
#   libasio-dev       -> asio.hpp (standalone, header-only)
#   libgtest-dev      -> GTest::gtest_main
#   libbenchmark-dev  -> benchmark::benchmark
#   pybind11-dev      -> pybind11 (CONFIG), for Debian's /usr/bin/python3
find_package(Threads REQUIRED)
find_package(TBB REQUIRED COMPONENTS tbb tbbmalloc)
find_package(absl REQUIRED)
find_path(ASIO_INCLUDE_DIR asio.hpp REQUIRED)
add_library(tideloop_asio INTERFACE)
target_include_directories(tideloop_asio SYSTEM INTERFACE ${ASIO_INCLUDE_DIR})
target_compile_definitions(tideloop_asio INTERFACE ASIO_STANDALONE ASIO_NO_DEPRECATED)
target_link_libraries(tideloop_asio INTERFACE Threads::Threads)

if(TIDELOOP_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
if(TIDELOOP_BUILD_BENCH)
  find_package(benchmark REQUIRED)
endif()
if(TIDELOOP_BUILD_PYTHON)
  # Debian's interpreter, never a pyenv shim that happens to be first on PATH:
  # the Debian Python packages (pybind11, uvloop, pytest) live only there.
  if(NOT DEFINED Python_EXECUTABLE AND NOT DEFINED PYTHON_EXECUTABLE)
    set(Python_EXECUTABLE /usr/bin/python3 CACHE FILEPATH "Python interpreter (Debian's)")
  endif()
  set(PYBIND11_FINDPYTHON ON)
  find_package(Python 3.11 REQUIRED COMPONENTS Interpreter Development.Module)
  find_package(pybind11 CONFIG REQUIRED)
endif()

# Cross build for 64-bit ARM Linux (AArch64) with Debian/Ubuntu's GNU cross toolchain
# (apt-get install g++-aarch64-linux-gnu; run the results with qemu-user: qemu-aarch64).
#
#   cmake -S runtime -B build/runtime-aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake
#
# Another triplet prefix or compiler location: -DBNN_CROSS_PREFIX=/opt/gcc/bin/aarch64-linux-gnu-.
# The binaries link libstdc++ and libgcc statically; add -DBNN_CROSS_STATIC=ON for fully static
# ones (no sysroot needed under qemu: qemu-aarch64 ./bnnrun ...), or point qemu at the target's
# libraries with QEMU_LD_PREFIX=/usr/aarch64-linux-gnu for dynamic ones.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(BNN_CROSS_PREFIX "aarch64-linux-gnu-" CACHE STRING "prefix of the cross toolchain's programs")
set(CMAKE_C_COMPILER "${BNN_CROSS_PREFIX}gcc")
set(CMAKE_CXX_COMPILER "${BNN_CROSS_PREFIX}g++")
find_program(BNN_CROSS_AR "${BNN_CROSS_PREFIX}ar")
if(BNN_CROSS_AR)
  set(CMAKE_AR "${BNN_CROSS_AR}" CACHE FILEPATH "archiver of the cross toolchain")
endif()

# the target's headers and libraries only; the build's own programs from the host
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# Eigen is header-only, so the host's copy (libeigen3-dev) serves the target too; the re-rooted
# package search above would not look outside /usr/aarch64-linux-gnu for it
if(NOT DEFINED Eigen3_DIR AND EXISTS /usr/share/eigen3/cmake/Eigen3Config.cmake)
  set(Eigen3_DIR /usr/share/eigen3/cmake CACHE PATH "Eigen3Config.cmake of the (architecture-independent) Eigen headers")
endif()

# try_compile links a static library instead of running a target program it could not run
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)

# tests and other target programs run under qemu (add_test uses it via CMAKE_CROSSCOMPILING_EMULATOR)
find_program(BNN_QEMU_AARCH64 qemu-aarch64)
if(BNN_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR "${BNN_QEMU_AARCH64}" CACHE FILEPATH "runs AArch64 programs on the host")
endif()

option(BNN_CROSS_STATIC "link AArch64 programs fully statically (qemu then needs no sysroot)" OFF)
set(CMAKE_EXE_LINKER_FLAGS_INIT "-static-libstdc++ -static-libgcc")
if(BNN_CROSS_STATIC)
  set(CMAKE_EXE_LINKER_FLAGS_INIT "-static")
endif()

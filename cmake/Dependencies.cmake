# Finds Tessera's dependencies. Everything comes through ordinary CMake variables
# (CMAKE_PREFIX_PATH, CUDAToolkit_ROOT, NCCL_ROOT, MPI_HOME): no machine paths are written here.

find_package(Threads REQUIRED)

# A CUDA build of libtorch (pip's torch on a GPU machine) sets CUDA up inside find_package(Torch):
# it takes CMAKE_CUDA_STANDARD from the C++ standard when unset (20, which CMake 3.25 cannot give
# nvcc), detects the GPU's architecture with a try_run unless TORCH_CUDA_ARCH_LIST names one, and
# sets CMAKE_CUDA_ARCHITECTURES to OFF. Tessera's CUDA code needs C++17 and chooses its own
# architectures: set the first two ahead, restore the third afterwards.
set(CMAKE_CUDA_STANDARD 17)  # CMake 3.25 knows no CUDA20 flags; the .cu files need only 17
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  # One architecture keeps CI compile time low; GPU machines pass their own (90 for Hopper).
  set(CMAKE_CUDA_ARCHITECTURES 90)
endif()
set(TESSERA_CUDA_ARCHITECTURES "${CMAKE_CUDA_ARCHITECTURES}")
if(NOT DEFINED TORCH_CUDA_ARCH_LIST AND NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
  set(TORCH_CUDA_ARCH_LIST "")
  foreach(arch IN LISTS CMAKE_CUDA_ARCHITECTURES)
    string(REGEX REPLACE "^([0-9]+)([0-9])[a-z-]*$" "\\1.\\2" dotted "${arch}")
    list(APPEND TORCH_CUDA_ARCH_LIST "${dotted}")
  endforeach()
endif()
find_package(Torch REQUIRED)
set(CMAKE_CUDA_ARCHITECTURES "${TESSERA_CUDA_ARCHITECTURES}")
find_package(MPI REQUIRED COMPONENTS CXX)
find_package(Boost 1.74 REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(CLI11 REQUIRED)
find_package(fmt REQUIRED)
find_package(spdlog REQUIRED)

# pip's libtorch brings its own fmt: tessera_fmt_first puts the one we link first (see there).
include(${CMAKE_CURRENT_LIST_DIR}/TesseraFmtFirst.cmake)
add_library(tessera_fmt_first INTERFACE)
tessera_fmt_first_shim(shim "${TORCH_INSTALL_PREFIX}" "${PROJECT_BINARY_DIR}/fmt-first")
if(shim)
  target_include_directories(tessera_fmt_first BEFORE INTERFACE "${shim}")
endif()

# libtorch's exported target carries its compile options; keep a small interface target of our own.
# stdc++ first: pip's libtorch.so and libtorch_cpu.so (torch 2.11) carry a static copy of parts of
# libstdc++ and export it (std::filesystem, the chrono time zones). A program whose libtorch comes
# before libstdc++.so in its list of needed libraries binds std::filesystem::remove_all and the rest
# to that copy, which crashes (a call through a null pointer, seen on the GPU machine and with pip's
# torch here). Listing libstdc++ before libtorch makes the loader find the system's first.
add_library(tessera_torch INTERFACE)
target_link_libraries(tessera_torch INTERFACE stdc++ ${TORCH_LIBRARIES})
target_include_directories(tessera_torch SYSTEM INTERFACE ${TORCH_INCLUDE_DIRS})
set(TESSERA_TORCH_HAS_CUDA OFF)
if(TARGET torch_cuda OR TORCH_CUDA_LIBRARIES)
  set(TESSERA_TORCH_HAS_CUDA ON)
  target_compile_definitions(tessera_torch INTERFACE TESSERA_TORCH_CUDA=1)
endif()

# CUDA and NCCL: compiled whenever nvcc is present so GPU code cannot rot on CPU-only machines.
set(TESSERA_WITH_CUDA OFF)
set(TESSERA_WITH_NCCL OFF)
if(TESSERA_ENABLE_CUDA)
  include(CheckLanguage)
  if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND EXISTS /usr/local/cuda/bin/nvcc)
    # The conventional toolkit location; CUDACXX or CMAKE_CUDA_COMPILER override it.
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    # One CUDA runtime per process: the shared libcudart that libtorch (and CUDA::cudart) loads,
    # not a second, static copy in every target with .cu files (CMake's default), whose own
    # runtime state (last error, registered kernels) would sit beside torch's.
    set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)
    enable_language(CUDA)
    if(NOT TARGET CUDA::cudart)
      # A CUDA libtorch has already run its own copy of FindCUDAToolkit (targets and
      # CUDAToolkit_* variables are set); CMake 3.25's module run again over those targets fails.
      find_package(CUDAToolkit REQUIRED)
    endif()
    set(TESSERA_WITH_CUDA ON)
    # NCCL: NCCL_ROOT, else the one a CUDA libtorch from pip loads (site-packages/nvidia/nccl,
    # which has only libnccl.so.2: two different libnccl.so.2 in one process would clash), else
    # the toolkit's.
    set(nccl_hints ${NCCL_ROOT})
    if(TESSERA_TORCH_HAS_CUDA AND TORCH_INSTALL_PREFIX)
      list(APPEND nccl_hints "${TORCH_INSTALL_PREFIX}/../nvidia/nccl")
    endif()
    find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${nccl_hints} ${CUDAToolkit_INCLUDE_DIRS}
              PATH_SUFFIXES include)
    find_library(NCCL_LIBRARY NAMES nccl libnccl.so.2 NAMES_PER_DIR
                 HINTS ${nccl_hints} ${CUDAToolkit_LIBRARY_DIR} PATH_SUFFIXES lib lib64)
    if(NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
      set(TESSERA_WITH_NCCL ON)
      add_library(tessera_nccl_dep INTERFACE)
      target_include_directories(tessera_nccl_dep SYSTEM INTERFACE ${NCCL_INCLUDE_DIR})
      target_link_libraries(tessera_nccl_dep INTERFACE ${NCCL_LIBRARY} CUDA::cudart)
    endif()
  endif()
endif()

# One precompiled header shared by every target that includes torch: parsing <torch/types.h>
# costs ~6 s per file on 2 cores, the PCH brings it to well under one.
add_library(tessera_torch_pch OBJECT ${PROJECT_SOURCE_DIR}/cmake/pch_anchor.cpp)
target_link_libraries(tessera_torch_pch PUBLIC tessera_torch tessera_common)
target_precompile_headers(tessera_torch_pch PRIVATE <torch/types.h> <vector> <string>)

# Targets that include torch call this to share the PCH.
function(tessera_use_torch_pch target)
  target_precompile_headers(${target} REUSE_FROM tessera_torch_pch)
  # Executables compile with -fPIE and the PCH with -fPIC: GCC would silently ignore the PCH
  # (~5 s lost per file). A trailing -fPIC makes the flags match; PIC objects link into a PIE.
  get_target_property(type ${target} TYPE)
  if(type STREQUAL "EXECUTABLE")
    target_compile_options(${target} PRIVATE -fPIC)
  endif()
endfunction()

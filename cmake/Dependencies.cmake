# Finds Tessera's dependencies. Everything comes through ordinary CMake variables
# (CMAKE_PREFIX_PATH, CUDAToolkit_ROOT, NCCL_ROOT, MPI_HOME): no machine paths are written here.

find_package(Threads REQUIRED)
find_package(Torch REQUIRED)
find_package(MPI REQUIRED COMPONENTS CXX)
find_package(Boost 1.74 REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(CLI11 REQUIRED)
find_package(fmt REQUIRED)
find_package(spdlog REQUIRED)

# libtorch's exported target carries its compile options; keep a small interface target of our own.
add_library(tessera_torch INTERFACE)
target_link_libraries(tessera_torch INTERFACE ${TORCH_LIBRARIES})
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
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      # One architecture keeps CI compile time low; GPU machines pass their own (90 for Hopper).
      set(CMAKE_CUDA_ARCHITECTURES 90)
    endif()
    enable_language(CUDA)
    set(CMAKE_CUDA_STANDARD 17)  # CMake 3.25 knows no CUDA20 flags; the .cu files need only 17
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    find_package(CUDAToolkit REQUIRED)
    set(TESSERA_WITH_CUDA ON)
    find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${NCCL_ROOT} ${CUDAToolkit_INCLUDE_DIRS}
              PATH_SUFFIXES include)
    find_library(NCCL_LIBRARY nccl HINTS ${NCCL_ROOT} ${CUDAToolkit_LIBRARY_DIR}
                 PATH_SUFFIXES lib lib64)
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

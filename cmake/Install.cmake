# `cmake --install`: the tessera binary, libtessera_torch.so, the public headers, the libraries a
# program needs to link against Tessera (and the multi-rank test harness, Tessera::testing) with a
# TesseraConfig.cmake, so that a downstream project writes
#
#   find_package(Tessera 0.1 REQUIRED)
#   target_link_libraries(app PRIVATE Tessera::Tessera)        # the runtime
#   target_link_libraries(app_test PRIVATE Tessera::testing)   # GoogleTest main for mpirun / srun
#
# The libraries are found by walking the link interface of the public targets, so a library that
# another part of the tree adds below them is installed and exported without an edit here; the
# packages that the exported targets name (Torch, MPI, fmt, ...) become find_dependency() calls in
# TesseraConfig.cmake the same way. Included at the end of the top-level CMakeLists.txt.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(TESSERA_INSTALL_INCLUDEDIR "${CMAKE_INSTALL_INCLUDEDIR}/tessera")
set(TESSERA_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/Tessera")
# CMAKE_INSTALL_RPATH_USE_LINK_PATH is set in the top CMakeLists.txt, before the targets exist.

# Imported-target namespaces -> the find_dependency() line that defines them in a consumer.
set(_tessera_dep_Torch "find_dependency(Torch)")
if(TESSERA_TORCH_HAS_CUDA)
  # A CUDA libtorch sets CUDA up inside find_package(Torch) (see cmake/Dependencies.cmake): a
  # consumer gets Tessera's CUDA standard and architectures unless it chose its own.
  set(_tessera_dep_Torch
      "if(NOT DEFINED CMAKE_CUDA_STANDARD)\n  set(CMAKE_CUDA_STANDARD 17)\nendif()\n"
      "if(NOT DEFINED TORCH_CUDA_ARCH_LIST AND NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})\n"
      "  set(TORCH_CUDA_ARCH_LIST \"${TORCH_CUDA_ARCH_LIST}\")\nendif()\n"
      "find_dependency(Torch)")
  string(CONCAT _tessera_dep_Torch ${_tessera_dep_Torch})
endif()
set(_tessera_dep_MPI "find_dependency(MPI COMPONENTS CXX)")
set(_tessera_dep_OpenMP "find_dependency(OpenMP COMPONENTS CXX)")
set(_tessera_dep_Threads "find_dependency(Threads)")
set(_tessera_dep_fmt "find_dependency(fmt)")
set(_tessera_dep_spdlog "find_dependency(spdlog)")
set(_tessera_dep_nlohmann_json "find_dependency(nlohmann_json 3.10)")
set(_tessera_dep_CLI11 "find_dependency(CLI11)")
set(_tessera_dep_Boost "find_dependency(Boost 1.74)")
set(_tessera_dep_GTest "find_dependency(GTest)")
set(_tessera_dep_zstd "find_dependency(zstd)")
set(_tessera_dep_ICU "find_dependency(ICU COMPONENTS uc i18n)")
# PCRE2 comes through pkg-config (runtime/tokenizers); the same call defines it in a consumer.
set(_tessera_dep_PkgConfig
    "find_dependency(PkgConfig)\npkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)")
# A CUDA libtorch defines the CUDA:: targets itself (see cmake/Dependencies.cmake).
set(_tessera_dep_CUDA "if(NOT TARGET CUDA::cudart)\n  find_dependency(CUDAToolkit)\nendif()")
# libtorch's own targets carry no namespace.
set(_tessera_torch_targets torch torch_library torch_cpu torch_cuda c10 c10_cuda caffe2_nvrtc)

# _tessera_link_closure(<out_targets> <out_packages> <targets...>): the project's targets reachable
# through INTERFACE_LINK_LIBRARIES (a static library's private dependencies appear there as
# $<LINK_ONLY:...>), and the packages of the imported targets met on the way.
function(_tessera_link_closure out_targets out_packages)
  set(todo ${ARGN})
  set(seen "")
  set(packages "")
  while(todo)
    list(POP_FRONT todo item)
    string(REGEX REPLACE "^\\$<LINK_ONLY:(.*)>$" "\\1" item "${item}")
    if(item MATCHES "^\\$<")
      continue()  # another generator expression: nothing to install
    endif()
    if(TARGET "${item}")
      get_target_property(aliased "${item}" ALIASED_TARGET)
      if(aliased)
        set(item "${aliased}")
      endif()
      get_target_property(imported "${item}" IMPORTED)
    else()
      # A path or a flag, or an imported target found in another directory (imported targets are
      # directory-scoped: OpenMP::, GTest::).
      set(imported TRUE)
    endif()
    if(imported)
      if(item IN_LIST _tessera_torch_targets)
        list(APPEND packages Torch)
      elseif(item MATCHES "^([A-Za-z0-9_]+)::")
        set(ns "${CMAKE_MATCH_1}")
        if(DEFINED _tessera_dep_${ns})
          list(APPEND packages "${ns}")
        else()
          message(WARNING "Tessera install: no find_dependency() known for ${item}; add one to "
                          "cmake/Install.cmake or TesseraConfig.cmake will not define it")
        endif()
      endif()
      continue()
    endif()
    if(item IN_LIST seen)
      continue()
    endif()
    list(APPEND seen "${item}")
    get_target_property(deps "${item}" INTERFACE_LINK_LIBRARIES)
    if(deps)
      list(APPEND todo ${deps})
    endif()
  endwhile()
  list(REMOVE_DUPLICATES packages)
  set(${out_targets} "${seen}" PARENT_SCOPE)
  set(${out_packages} "${packages}" PARENT_SCOPE)
endfunction()

# Paths into the source or build tree in a target's usage requirements are for this build only:
# the source root becomes the installed include folder, build-tree paths are dropped on install.
function(_tessera_relocate_includes target)
  foreach(prop INTERFACE_INCLUDE_DIRECTORIES INTERFACE_SYSTEM_INCLUDE_DIRECTORIES)
    get_target_property(dirs "${target}" ${prop})
    if(NOT dirs)
      continue()
    endif()
    set(fixed "")
    foreach(d IN LISTS dirs)
      if(d MATCHES "^\\$<")
        list(APPEND fixed "${d}")
      elseif(d STREQUAL PROJECT_SOURCE_DIR)
        list(APPEND fixed "$<BUILD_INTERFACE:${d}>"
             "$<INSTALL_INTERFACE:${TESSERA_INSTALL_INCLUDEDIR}>")
      elseif(d MATCHES "^${PROJECT_SOURCE_DIR}/" OR d MATCHES "^${PROJECT_BINARY_DIR}(/|$)")
        list(APPEND fixed "$<BUILD_INTERFACE:${d}>")
      else()
        list(APPEND fixed "${d}")  # outside the tree (libtorch's, NCCL's headers): kept
      endif()
    endforeach()
    set_target_properties("${target}" PROPERTIES ${prop} "${fixed}")
  endforeach()
endfunction()

# Called once, at the end of the top-level CMakeLists.txt, when every target exists.
function(tessera_install)
  # Public names: Tessera::Tessera (everything the runtime offers), Tessera::testing,
  # Tessera::torch_ops (libtessera_torch.so), Tessera::tessera (the command-line program).
  add_library(tessera_all INTERFACE)
  target_link_libraries(tessera_all INTERFACE tessera_launch tessera_kernels_autograd)
  set_target_properties(tessera_all PROPERTIES EXPORT_NAME Tessera)
  add_library(Tessera::Tessera ALIAS tessera_all)
  set_target_properties(tessera_torch_ops PROPERTIES EXPORT_NAME torch_ops)
  set(roots tessera_all tessera_torch_ops)
  if(TARGET tessera_testing)
    list(APPEND roots tessera_testing)
  endif()
  # A sanitizer build installs instrumented static libraries: a program linking them needs the
  # sanitizer runtimes too (TESSERA_ASAN/TESSERA_TSAN, and -fsanitize=... in CMAKE_CXX_FLAGS).
  set(sanitize_link "")
  if(TESSERA_ASAN)
    list(APPEND sanitize_link -fsanitize=address)
  endif()
  if(TESSERA_TSAN)
    list(APPEND sanitize_link -fsanitize=thread)
  endif()
  string(REGEX MATCHALL "(^| )-fsanitize=[^ ]+" flags_sanitize "${CMAKE_CXX_FLAGS}")
  foreach(f IN LISTS flags_sanitize)
    string(STRIP "${f}" f)
    list(APPEND sanitize_link "${f}")
  endforeach()
  if(sanitize_link)
    foreach(root tessera_all tessera_testing)
      if(TARGET ${root})
        target_link_options(${root} INTERFACE ${sanitize_link})
      endif()
    endforeach()
  endif()
  _tessera_link_closure(targets packages ${roots})
  foreach(t IN LISTS targets)
    _tessera_relocate_includes(${t})
  endforeach()
  # The PCH object library is linked by nothing but listed by targets that reuse it.
  list(REMOVE_ITEM targets tessera_torch_pch)

  install(TARGETS tessera ${targets} EXPORT TesseraTargets
          ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
          LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
          RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
  # Headers keep their place in the tree: code includes "runtime/...", "sharding/...".
  foreach(dir common kernels caches sharding runtime launch testing)
    if(IS_DIRECTORY "${PROJECT_SOURCE_DIR}/${dir}")
      install(DIRECTORY "${PROJECT_SOURCE_DIR}/${dir}" DESTINATION ${TESSERA_INSTALL_INCLUDEDIR}
              FILES_MATCHING PATTERN "*.h" PATTERN "*.cuh")
    endif()
  endforeach()
  install(EXPORT TesseraTargets NAMESPACE Tessera:: DESTINATION ${TESSERA_INSTALL_CMAKEDIR})

  # find_dependency() lines in a fixed order (Threads first, Torch before what it may define).
  set(TESSERA_FIND_DEPENDENCIES "")
  foreach(p Threads Torch CUDA MPI OpenMP fmt spdlog nlohmann_json CLI11 Boost zstd GTest)
    if(p IN_LIST packages)
      string(APPEND TESSERA_FIND_DEPENDENCIES "${_tessera_dep_${p}}\n")
      list(REMOVE_ITEM packages ${p})
    endif()
  endforeach()
  foreach(p IN LISTS packages)
    string(APPEND TESSERA_FIND_DEPENDENCIES "${_tessera_dep_${p}}\n")
  endforeach()
  set(TESSERA_HAS_TESTING OFF)
  if(TARGET tessera_testing)
    set(TESSERA_HAS_TESTING ON)
  endif()
  configure_package_config_file("${PROJECT_SOURCE_DIR}/cmake/TesseraConfig.cmake.in"
                                "${PROJECT_BINARY_DIR}/TesseraConfig.cmake"
                                INSTALL_DESTINATION ${TESSERA_INSTALL_CMAKEDIR})
  # 0.x: a minor version may change the interface.
  write_basic_package_version_file("${PROJECT_BINARY_DIR}/TesseraConfigVersion.cmake"
                                   COMPATIBILITY SameMinorVersion)
  install(FILES "${PROJECT_BINARY_DIR}/TesseraConfig.cmake"
                "${PROJECT_BINARY_DIR}/TesseraConfigVersion.cmake"
                "${PROJECT_SOURCE_DIR}/cmake/TesseraFmtFirst.cmake"
          DESTINATION ${TESSERA_INSTALL_CMAKEDIR})
endfunction()

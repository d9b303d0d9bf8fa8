# pip's libtorch ships its own fmt (v12) in torch/include/fmt. Its include directory is searched
# before the system's, so `#include <fmt/...>` in a file that also sees torch would get fmt 12 while
# spdlog and libfmt are built for the system's fmt (spdlog 1.10 does not even compile against 12).
# A directory holding a link to the fmt we link, put first with -I, makes every file see that one
# (the torch headers Tessera includes do not use fmt).
# Used by cmake/Dependencies.cmake and, in a consumer, by the installed TesseraConfig.cmake.
#
# tessera_fmt_first_shim(<out_var> <torch_install_prefix> <shim_dir>): <out_var> is <shim_dir>
# (created) when libtorch brings an fmt other than fmt::fmt's, else empty.
function(tessera_fmt_first_shim out torch_prefix shim)
  set(${out} "" PARENT_SCOPE)
  if(NOT TARGET fmt::fmt OR NOT EXISTS "${torch_prefix}/include/fmt")
    return()
  endif()
  get_target_property(fmt_dirs fmt::fmt INTERFACE_INCLUDE_DIRECTORIES)
  find_path(TESSERA_FMT_INCLUDE_DIR fmt/core.h HINTS ${fmt_dirs})
  if(NOT TESSERA_FMT_INCLUDE_DIR)
    return()
  endif()
  file(REAL_PATH "${torch_prefix}/include/fmt" torch_fmt)
  file(REAL_PATH "${TESSERA_FMT_INCLUDE_DIR}/fmt" our_fmt)
  if(torch_fmt STREQUAL our_fmt)
    return()
  endif()
  file(MAKE_DIRECTORY "${shim}")
  if(NOT EXISTS "${shim}/fmt")
    file(CREATE_LINK "${our_fmt}" "${shim}/fmt" SYMBOLIC)
  endif()
  message(STATUS "libtorch brings its own fmt: files see ${our_fmt} first")
  set(${out} "${shim}" PARENT_SCOPE)
endfunction()

# Fails listing every source file that clang-format would change.
file(GLOB_RECURSE sources RELATIVE ${ROOT}
     ${ROOT}/common/*.h ${ROOT}/common/*.cpp ${ROOT}/launch/*.h ${ROOT}/launch/*.cpp
     ${ROOT}/runtime/*.h ${ROOT}/runtime/*.cpp ${ROOT}/sharding/*.h ${ROOT}/sharding/*.cpp
     ${ROOT}/caches/*.h ${ROOT}/caches/*.cpp ${ROOT}/kernels/*.h ${ROOT}/kernels/*.cpp
     ${ROOT}/kernels/*.cu ${ROOT}/kernels/*.cuh ${ROOT}/tests/*.h ${ROOT}/tests/*.cpp
     ${ROOT}/bench/*.h ${ROOT}/bench/*.cpp)
set(bad "")
foreach(f IN LISTS sources)
  execute_process(COMMAND ${CLANG_FORMAT} --dry-run --Werror ${f} WORKING_DIRECTORY ${ROOT}
                  RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
  if(NOT rc EQUAL 0)
    list(APPEND bad ${f})
  endif()
endforeach()
list(LENGTH sources n)
if(bad)
  string(REPLACE ";" "\n  " bad_lines "${bad}")
  message(FATAL_ERROR "clang-format would change:\n  ${bad_lines}\nRun: clang-format -i <files>")
endif()
message(STATUS "clang-format: ${n} files clean")

// A skipped test must read as skipped in ctest's summary, never as passed. ctest can only mark a
// whole executable, so a run in which some test was skipped (GTEST_SKIP: no GPU, no second device)
// and none failed exits with the code in TESSERA_SKIP_EXIT_CODE, which the CMake helpers of
// tests/CMakeLists.txt set, with the matching SKIP_RETURN_CODE, on every test labelled gpu. A
// failure keeps its failing exit code, so a skip never hides one.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>

namespace tessera::testing {

// The exit code for a finished RUN_ALL_TESTS() that returned rc, given this process's skips.
inline int exit_code_after_run(int rc, bool any_skipped) {
  const char* code = std::getenv("TESSERA_SKIP_EXIT_CODE");
  if (rc != 0 || !any_skipped || code == nullptr || *code == '\0') return rc;
  return std::atoi(code);
}

inline bool any_test_skipped() {
  return ::testing::UnitTest::GetInstance()->skipped_test_count() > 0;
}

}  // namespace tessera::testing

// A skipped test must read as skipped in ctest's summary, never as passed. ctest can only mark a
// whole executable, so a run in which some test was skipped (GTEST_SKIP: no GPU, no second device,
// no Python reference) and none failed exits with the code in TESSERA_SKIP_EXIT_CODE; the test
// carries the matching SKIP_RETURN_CODE (Tessera's tests/CMakeLists.txt sets both on every test
// labelled gpu or python). A failure keeps its failing exit code, so a skip never hides one.
// Used by Tessera::testing's run_all_tests() (every rank agrees first) and Tessera's single-process
// test main; header-only, needs only GoogleTest.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>

namespace tessera::testing {

// The exit code for a finished RUN_ALL_TESTS() that returned rc, given whether a test skipped.
inline int exit_code_after_run(int rc, bool any_skipped) {
  const char* code = std::getenv("TESSERA_SKIP_EXIT_CODE");
  if (rc != 0 || !any_skipped || code == nullptr || *code == '\0') return rc;
  return std::atoi(code);
}

inline bool any_test_skipped() {
  return ::testing::UnitTest::GetInstance()->skipped_test_count() > 0;
}

}  // namespace tessera::testing

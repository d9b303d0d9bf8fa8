// A probe for skip_conventions_test.py: one test that passes, one that skips when PROBE_SKIP_RANK
// names this rank (or "all"), one that fails when PROBE_FAIL_RANK does. Built twice: with the
// single-process test main (tests/support/gtest_main.cpp) and with Tessera::testing's
// run_all_tests (SKIP_EXIT_PROBE_MPI), so the script can check the exit code each gives.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#ifdef SKIP_EXIT_PROBE_MPI
#include "testing/harness.h"
#endif

namespace {

int this_rank() {
#ifdef SKIP_EXIT_PROBE_MPI
  return tessera::testing::rank();
#else
  return 0;
#endif
}

bool names_this_rank(const char* var) {
  const char* v = std::getenv(var);
  if (v == nullptr || *v == '\0') return false;
  return std::string(v) == "all" || std::atoi(v) == this_rank();
}

TEST(Probe, Passes) { EXPECT_EQ(1 + 1, 2); }

TEST(Probe, SkipsWhereTold) {
  if (names_this_rank("PROBE_SKIP_RANK")) GTEST_SKIP() << "told to skip";
}

TEST(Probe, FailsWhereTold) { EXPECT_FALSE(names_this_rank("PROBE_FAIL_RANK")) << "told to fail"; }

}  // namespace

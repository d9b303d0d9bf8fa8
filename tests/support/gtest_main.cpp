// main() for the single-process GoogleTest executables: GoogleTest's own, plus the skip exit code
// of testing/skip_exit.h.
#include <gtest/gtest.h>

#include "testing/skip_exit.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const int rc = RUN_ALL_TESTS();
  return tessera::testing::exit_code_after_run(rc, tessera::testing::any_test_skipped());
}

#include "common/error.h"

#include <gtest/gtest.h>

namespace tessera {
namespace {

int checked_batch(int batch_size) {
  TESSERA_CHECK(batch_size > 0, "batch_size must be positive, got ", batch_size);
  return batch_size;
}

TEST(Error, CheckNamesArgumentValueAndLocation) {
  EXPECT_EQ(checked_batch(3), 3);
  try {
    checked_batch(0);
    FAIL() << "expected tessera::Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.message(), "batch_size must be positive, got 0");
    const std::string what = e.what();
    EXPECT_NE(what.find("batch_size must be positive, got 0 (tests/common/error_test.cpp:"),
              std::string::npos)
        << what;
    EXPECT_EQ(what.find('\n'), std::string::npos) << "errors are one line";
  }
}

TEST(Error, CollectiveErrorIsAnError) {
  try {
    throw CollectiveError("all ranks failed", __FILE__, __LINE__);
  } catch (const Error& e) {
    EXPECT_EQ(e.message(), "all ranks failed");
  }
}

TEST(Error, FailAlwaysThrows) { EXPECT_THROW(TESSERA_FAIL("x=", 1), Error); }

}  // namespace
}  // namespace tessera

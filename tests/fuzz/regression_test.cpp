// One test per input a fuzzer found crashing (tests/fuzz_corpus/<target>/crash-*): the input is
// now refused with a clear tessera::Error (or ApiError) naming what is wrong.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "common/error.h"

namespace tessera::fuzz {
namespace {

namespace fs = std::filesystem;

[[maybe_unused]] std::string crash_input(const std::string& target, const std::string& name) {
  const fs::path p = fs::path(TESSERA_FUZZ_CORPUS_DIR) / target / name;
  std::ifstream in(p, std::ios::binary);
  EXPECT_TRUE(in.good()) << p;
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace
}  // namespace tessera::fuzz

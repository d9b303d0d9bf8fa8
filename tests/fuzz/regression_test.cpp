// One test per input a fuzzer found crashing (tests/fuzz_corpus/<target>/crash-*): the input is
// now refused with a clear tessera::Error (or ApiError) naming what is wrong.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "common/error.h"
#include "runtime/models/delta/delta.h"
#include "tests/fuzz/delta_fixture.h"
#include "tests/fuzz/fuzz_util.h"

namespace tessera::fuzz {
namespace {

namespace fs = std::filesystem;

std::string crash_path(const std::string& target, const std::string& name) {
  return (fs::path(TESSERA_FUZZ_CORPUS_DIR) / target / name).string();
}

[[maybe_unused]] std::string crash_input(const std::string& target, const std::string& name) {
  const fs::path p = fs::path(TESSERA_FUZZ_CORPUS_DIR) / target / name;
  std::ifstream in(p, std::ios::binary);
  EXPECT_TRUE(in.good()) << p;
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// The delta's description said "stored": 1184467440737095516153 (a JSON float, 1.18e21): nlohmann's
// get<uint64_t>() cast it to an integer, undefined behaviour (UBSan). Now refused, naming the
// field.
TEST(FuzzRegression, DeltaFloatStoredSizeIsRefused) {
  const std::string dir = scratch_dir() + "/regression-delta-float";
  const std::string base = write_delta_base(dir + "/base");
  const std::string out = dir + "/out";
  try {
    models::delta::apply_delta({base, crash_path("delta", "crash-float-stored-ub"), out});
    FAIL() << "applied a delta whose description has a float size";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("malformed description"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'stored'"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(out));
}

}  // namespace
}  // namespace tessera::fuzz

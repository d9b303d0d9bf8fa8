// Every fuzz target over every file of its corpus (tests/fuzz_corpus/<name>/: the seeds, and the
// inputs that once crashed it, named crash-*), in the ordinary build and in the sanitizer builds:
// a target aborts on a broken property, so a passing run means each input is handled as the target
// demands. The seeds of the delta target must also still apply (they were made against the
// fixture's base): otherwise they no longer reach the deep paths and must be written again
// (tessera_fuzz_write_seeds).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

#include "common/error.h"
#include "runtime/models/delta/delta.h"
#include "tests/fuzz/delta_fixture.h"
#include "tests/fuzz/fuzz_target.h"
#include "tests/fuzz/fuzz_util.h"

namespace tessera::fuzz {
namespace {

namespace fs = std::filesystem;

std::vector<uint8_t> read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::vector<fs::path> corpus(const std::string& name) {
  std::vector<fs::path> files;
  const fs::path dir = fs::path(TESSERA_FUZZ_CORPUS_DIR) / name;
  std::vector<fs::path> dirs = {dir};
  // tokenizer_json's own corpus is the malformed files tokenizer_test checks; its valid seeds are
  // the trained tokenizers the tokenizer_encode target uses (scripts/fuzz.sh passes both).
  if (name == "tokenizer_json") dirs.push_back(fs::path(TESSERA_FUZZ_DIR) / "tokenizers");
  for (const auto& d : dirs) {
    if (!fs::is_directory(d)) continue;
    for (const auto& e : fs::recursive_directory_iterator(d)) {
      if (e.is_regular_file()) files.push_back(e.path());
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

TEST(FuzzReplay, EveryTargetHasASeedCorpus) {
  ASSERT_GE(registry().size(), 14u);
  for (const auto& [name, fn] : registry()) {
    EXPECT_GE(corpus(name).size(), 3u) << name << ": tests/fuzz_corpus/" << name << "/";
  }
}

TEST(FuzzReplay, EveryTargetHandlesItsCorpus) {
  for (const auto& [name, fn] : registry()) {
    for (const auto& file : corpus(name)) {
      SCOPED_TRACE(file.string());
      const auto bytes = read_bytes(file);
      EXPECT_EQ(fn(bytes.data(), bytes.size()), 0);
    }
  }
}

TEST(FuzzReplay, DeltaSeedsApplyToTheFixtureBase) {
  const std::string dir = scratch_dir() + "/replay-delta";
  const std::string base = write_delta_base(dir + "/base");
  int seeds = 0;
  for (const auto& file : corpus("delta")) {
    if (file.filename().string().rfind("crash-", 0) == 0) continue;
    SCOPED_TRACE(file.string());
    const std::string out = dir + "/out-" + file.filename().string();
    EXPECT_NO_THROW(models::delta::apply_delta({base, file.string(), out}));
    ++seeds;
  }
  EXPECT_GE(seeds, 4);
}

}  // namespace
}  // namespace tessera::fuzz

// Delta checkpoints (`tessera delta apply`): the input is the delta file, applied to a fixed base
// (delta_fixture.h) whose fingerprint the seeds carry, so mutations reach the description in the
// header's metadata (records, layout, stored headers), the zstd frames and the rebuild. Properties:
// a delta either applies or fails with tessera::Error; after a failure nothing is left at the
// output path and no temporary file remains beside it.
#include <filesystem>
#include <string>

#include "common/error.h"
#include "runtime/models/delta/delta.h"
#include "tests/fuzz/delta_fixture.h"
#include "tests/fuzz/fuzz_target.h"
#include "tests/fuzz/fuzz_util.h"

namespace fs = std::filesystem;
using namespace tessera;

TESSERA_FUZZ_TARGET(delta) {
  static const std::string dir = fuzz::scratch_dir() + "/delta";
  static const std::string base = fuzz::write_delta_base(dir + "/base");
  static const std::string work = [] {
    fs::create_directories(dir + "/work");
    return dir + "/work";
  }();
  const std::string in = work + "/in.delta", out = work + "/out";
  fuzz::write_file(in, data, size);
  try {
    models::delta::apply_delta({base, in, out});
    TESSERA_FUZZ_ASSERT(fs::is_directory(out), "applied, but no output folder");
  } catch (const Error&) {
    TESSERA_FUZZ_ASSERT(!fs::exists(out), "a failed apply left its output behind");
  }
  std::error_code ec;
  fs::remove_all(out, ec);
  for (const auto& e : fs::directory_iterator(work)) {
    TESSERA_FUZZ_ASSERT(e.path() == in, "left behind: " + e.path().string());
  }
  return 0;
}

// model.safetensors.index.json: the shard list of a sharded checkpoint, read by the model folder
// (every model load) and by the delta tools' checkpoint reader. The input is the index file of a
// folder that also holds config.json and two real shards. Properties: every weight file either
// reader accepts is a file inside that folder (an index cannot name /etc/passwd or ../x), each
// named once.
#include <filesystem>
#include <set>
#include <string>

#include "common/error.h"
#include "runtime/models/delta/checkpoint.h"
#include "runtime/models/model_folder.h"
#include "runtime/models/safetensors.h"
#include "tests/fuzz/fuzz_target.h"
#include "tests/fuzz/fuzz_util.h"

namespace fs = std::filesystem;
using namespace tessera;

namespace {
const std::string& folder() {
  static const std::string dir = [] {
    const std::string d = fuzz::scratch_dir() + "/index-model";
    fs::create_directories(d);
    fuzz::write_file(d + "/config.json",
                     R"({"model_type":"llama","vocab_size":8,"hidden_size":4,)"
                     R"("intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":2})");
    models::write_safetensors(d + "/model-00001-of-00002.safetensors",
                              {{"a", DType::kF32, {2}, std::vector<uint8_t>(8, 1)}});
    models::write_safetensors(d + "/model-00002-of-00002.safetensors",
                              {{"b", DType::kF32, {1}, std::vector<uint8_t>(4, 2)}});
    return d;
  }();
  return dir;
}

void check_inside(const std::string& dir, const std::string& file) {
  const fs::path p = fs::weakly_canonical(file);
  TESSERA_FUZZ_ASSERT(p.parent_path() == fs::weakly_canonical(dir),
                      "weight file '" + file + "' is not a file of the folder");
  TESSERA_FUZZ_ASSERT(fs::is_regular_file(p), "weight file '" + file + "' is not a regular file");
}
}  // namespace

TESSERA_FUZZ_TARGET(safetensors_index) {
  const std::string& dir = folder();
  fuzz::write_file(dir + "/model.safetensors.index.json", data, size);
  try {
    const auto f = models::ModelFolder::open(dir);
    std::set<std::string> seen;
    for (const auto& w : f.weight_files()) {
      check_inside(dir, w);
      TESSERA_FUZZ_ASSERT(seen.insert(w).second, "weight file '" + w + "' listed twice");
    }
  } catch (const Error&) {
  }
  try {
    const auto c = models::delta::Checkpoint::open(dir, "--base");
    for (const auto& file : c.files()) check_inside(dir, file.path);
  } catch (const Error&) {
  }
  return 0;
}

#include "runtime/models/model_folder.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "common/error.h"
#include "runtime/models/tiny_model.h"

namespace tessera::models {

namespace fs = std::filesystem;

namespace {

std::optional<std::string> optional_file(const fs::path& dir, const char* name) {
  std::error_code ec;
  const fs::path p = dir / name;
  if (fs::is_regular_file(p, ec)) return p.string();
  return std::nullopt;
}

// The shard files model.safetensors.index.json names in its weight_map, each once.
std::vector<std::string> shards_of_index(const std::string& dir, const fs::path& index) {
  std::ifstream in(index);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    TESSERA_FAIL("'", index.string(), "': not valid JSON: ", e.what());
  }
  TESSERA_CHECK(j.contains("weight_map") && j["weight_map"].is_object(), "'", index.string(),
                "' has no weight_map object");
  std::set<std::string> names;
  for (auto& [k, v] : j["weight_map"].items()) {
    TESSERA_CHECK(v.is_string(), "'", index.string(), "': weight_map['", k,
                  "'] must be a file name, got ", v.dump());
    names.insert(v.get<std::string>());
  }
  std::vector<std::string> files;
  std::error_code ec;
  for (const auto& n : names) {
    const fs::path shard = fs::path(dir) / n;
    TESSERA_CHECK(fs::exists(shard, ec), "model folder '", dir,
                  "': model.safetensors.index.json names the shard '", n, "', which is missing");
    files.push_back(shard.string());
  }
  return files;
}

}  // namespace

ModelFolder ModelFolder::resolve(const std::string& model) {
  if (model == "tiny") return open(ensure_tiny_model(tiny_model_dir()));
  std::error_code ec;
  if (!fs::exists(fs::path(model), ec)) {
    TESSERA_CHECK(model.find('/') != std::string::npos || model.find('.') == 0, "unknown model '",
                  model, "': not a built-in model (tiny) and not a folder");
    TESSERA_FAIL("model path '", model, "' does not exist");
  }
  return open(model);
}

ModelFolder ModelFolder::open(const std::string& dir) {
  std::error_code ec;
  const fs::path p(dir);
  TESSERA_CHECK(fs::exists(p, ec), "model path '", dir, "' does not exist");
  TESSERA_CHECK(fs::is_directory(p, ec), "model path '", dir,
                "' is not a folder (expected config.json and model.safetensors inside)");
  TESSERA_CHECK(::access(dir.c_str(), R_OK | X_OK) == 0, "model folder '", dir,
                "' is not readable: ", std::strerror(errno));
  ModelFolder f;
  f.dir_ = dir;
  TESSERA_CHECK(fs::exists(p / "config.json", ec), "model folder '", dir, "' has no config.json");
  TESSERA_CHECK(fs::is_regular_file(p / "config.json", ec), "model folder '", dir,
                "': config.json is not a file");
  f.config_json_ = (p / "config.json").string();
  // A single file wins over an index, as in Hugging Face transformers.
  if (auto single = optional_file(p, "model.safetensors")) {
    f.weight_files_ = {*single};
  } else if ((f.weight_index_json_ = optional_file(p, "model.safetensors.index.json"))) {
    f.weight_files_ = shards_of_index(dir, *f.weight_index_json_);
  } else {
    TESSERA_FAIL("model folder '", dir,
                 "' has neither model.safetensors nor model.safetensors.index.json");
  }
  f.generation_config_json_ = optional_file(p, "generation_config.json");
  f.tokenizer_json_ = optional_file(p, "tokenizer.json");
  f.tokenizer_config_json_ = optional_file(p, "tokenizer_config.json");
  return f;
}

}  // namespace tessera::models

// Checkpoints made by Hugging Face transformers and its logits / greedy tokens for them
// (hf_checkpoints.py, run once per script version with the test venv's python), for the engine
// tests. Without the venv the tests that need them are skipped.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "runtime/engine/engine_client.h"
#include "runtime/models/safetensors.h"

namespace tessera::engine::testing {

struct HfModel {
  std::string name, dir, dtype;
  int64_t num_kv_heads = 0;
  bool reference = false;
  int prompts = 0;
};

inline std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

// Where this version of the script's output lives (the script's text is hashed into the name).
inline std::string hf_dir(const std::string& tag) {
  const std::string script = env("TESSERA_SOURCE_DIR") + "/tests/runtime/engine/hf_checkpoints.py";
  std::ifstream in(script);
  std::stringstream ss;
  ss << in.rdbuf();
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : ss.str()) h = (h ^ c) * 1099511628211ull;
  std::string root = env("TESSERA_MODEL_CACHE");
  if (root.empty()) root = std::filesystem::temp_directory_path().string();
  std::ostringstream name;
  name << root << "/hf_engine_" << tag << "_" << std::hex << (h & 0xffffffffull);
  return name.str();
}

// Makes the checkpoints (if this version is not there yet) and reads the manifest. Returns {}
// with `skip` set when the venv's python is missing.
inline std::vector<HfModel> hf_models(const std::string& dir, std::string* skip) {
  const std::string py = env("TESSERA_VENV_PYTHON");
  if (py.empty() || ::access(py.c_str(), X_OK) != 0) {
    *skip = "no test venv python (TESSERA_VENV_PYTHON='" + py + "'; scripts/test_venv.sh makes it)";
    return {};
  }
  const std::string manifest = dir + "/manifest.json";
  if (!std::filesystem::exists(manifest)) {
    const std::string cmd = "HF_HUB_OFFLINE=1 '" + py + "' '" + env("TESSERA_SOURCE_DIR") +
                            "/tests/runtime/engine/hf_checkpoints.py' '" + dir + "' > '" + dir +
                            ".log' 2>&1";
    std::filesystem::create_directories(std::filesystem::path(dir).parent_path());
    if (std::system(cmd.c_str()) != 0) {
      *skip = "";
      throw std::runtime_error("hf_checkpoints.py failed, see " + dir + ".log");
    }
  }
  std::ifstream in(manifest);
  const auto j = nlohmann::json::parse(in);
  std::vector<HfModel> out;
  for (const auto& e : j) {
    HfModel m;
    m.name = e["name"];
    m.dir = e["dir"];
    m.dtype = e["dtype"];
    m.num_kv_heads = e["num_key_value_heads"];
    m.reference = e["reference"];
    if (m.reference) m.prompts = e["prompts"];
    out.push_back(m);
  }
  return out;
}

// A tensor of the reference file as torch (a copy).
inline torch::Tensor read_tensor(const models::SafetensorsFile& f, const std::string& name) {
  const auto& e = f.get(name);
  torch::ScalarType t = e.dtype == DType::kI64 ? torch::kLong : torch::kFloat;
  return torch::from_blob(const_cast<uint8_t*>(e.data), e.shape, t).clone();
}

inline std::vector<int32_t> to_ids(const torch::Tensor& t) {
  auto c = t.to(torch::kInt).contiguous();
  return std::vector<int32_t>(c.data_ptr<int32_t>(), c.data_ptr<int32_t>() + c.numel());
}

inline EngineRequest greedy_request(std::string id, std::vector<int32_t> prompt,
                                    int64_t max_tokens) {
  EngineRequest r;
  r.id = std::move(id);
  r.prompt_ids = std::move(prompt);
  r.params.temperature = 0.0f;
  r.params.max_tokens = max_tokens;
  r.params.ignore_eos = true;
  return r;
}

}  // namespace tessera::engine::testing

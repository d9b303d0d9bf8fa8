// Encoder checkpoints made by Hugging Face transformers (BERT) and by the independent ModernBERT
// implementation in encoder_checkpoints.py, with their reference logits and losses. The script
// runs once per version of its text (hashed into the folder name) with the test venv's python;
// without the venv the tests that need it are skipped.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>

namespace tessera::models::testing {

inline std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

inline std::string encoder_reference_dir() {
  const std::string script =
      env("TESSERA_SOURCE_DIR") + "/tests/runtime/models/encoder_checkpoints.py";
  std::ifstream in(script);
  std::stringstream ss;
  ss << in.rdbuf();
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : ss.str()) h = (h ^ c) * 1099511628211ull;
  std::string root = env("TESSERA_MODEL_CACHE");
  if (root.empty()) root = std::filesystem::temp_directory_path().string();
  std::ostringstream name;
  name << root << "/hf_encoders_" << std::hex << (h & 0xffffffffull);
  return name.str();
}

// Why the reference cannot be made ("" when it can).
inline std::string encoder_reference_skip() {
  const std::string py = env("TESSERA_VENV_PYTHON");
  if (py.empty() || ::access(py.c_str(), X_OK) != 0) {
    return "no test venv python (TESSERA_VENV_PYTHON='" + py + "'; scripts/test_venv.sh makes it)";
  }
  return "";
}

// Makes the checkpoints when this version is missing (call on one rank) and returns the manifest
// path.
inline std::string ensure_encoder_reference() {
  const std::string dir = encoder_reference_dir();
  const std::string manifest = dir + "/manifest.json";
  if (!std::filesystem::exists(manifest)) {
    std::filesystem::create_directories(std::filesystem::path(dir).parent_path());
    const std::string tmp = dir + ".tmp" + std::to_string(::getpid());
    const std::string cmd =
        "HF_HUB_OFFLINE=1 '" + env("TESSERA_VENV_PYTHON") + "' '" + env("TESSERA_SOURCE_DIR") +
        "/tests/runtime/models/encoder_checkpoints.py' '" + tmp + "' > '" + dir + ".log' 2>&1";
    if (std::system(cmd.c_str()) != 0) {
      throw std::runtime_error("encoder_checkpoints.py failed, see " + dir + ".log");
    }
    // The manifest names the folders it wrote under tmp: rewrite them for the final name.
    std::ifstream in(tmp + "/manifest.json");
    auto j = nlohmann::json::parse(in);
    for (auto& m : j) {
      m["dir"] = dir + "/" + m["name"].get<std::string>();
    }
    std::ofstream(tmp + "/manifest.json") << j.dump();
    std::error_code ec;
    std::filesystem::rename(tmp, dir, ec);  // another job may have won the race: keep theirs
    if (ec) std::filesystem::remove_all(tmp);
  }
  return manifest;
}

inline nlohmann::json read_manifest(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

}  // namespace tessera::models::testing

// The independent expected value of the decoder tests: the logits that the PyTorch
// implementation in tests/runtime/engine/reference_decoder.py (its own safetensors parser, no KV
// cache, explicit masks) computes for the same model folder and tokens. Needs a python3 whose
// torch matches (TESSERA_TORCH_PYTHON, set by tests/CMakeLists.txt); without one the caller skips,
// which ctest reports as skipped (these tests carry the python label).
#pragma once

#include <torch/types.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tests/support/subprocess.h"

namespace tessera::models::testing {

// Why the reference cannot run here, or "" when it can.
inline std::string reference_unavailable() {
  const char* py = std::getenv("TESSERA_TORCH_PYTHON");
  if (py == nullptr || *py == '\0') return "no python3 with torch (TESSERA_TORCH_PYTHON unset)";
  if (std::getenv("TESSERA_SOURCE_DIR") == nullptr) return "TESSERA_SOURCE_DIR unset";
  return "";
}

// [T, vocab] float32 logits of `ids` (every position) under the model in `model_dir`.
inline torch::Tensor reference_logits(const std::string& model_dir, const std::vector<int64_t>& ids,
                                      int64_t vocab) {
  const std::string script =
      std::string(std::getenv("TESSERA_SOURCE_DIR")) + "/tests/runtime/engine/reference_decoder.py";
  const auto out = std::filesystem::temp_directory_path() /
                   ("tessera_reference_logits_" + std::to_string(getpid()) + ".f32");
  std::string list;
  for (size_t i = 0; i < ids.size(); ++i) list += (i ? "," : "") + std::to_string(ids[i]);
  const auto r = tessera::testing::run_command(std::string(std::getenv("TESSERA_TORCH_PYTHON")) +
                                                   " " + script + " --logits " + model_dir + " " +
                                                   out.string() + " " + list,
                                               300);
  if (r.exit_code != 0) throw std::runtime_error("reference_decoder.py failed: " + r.err);
  auto logits = torch::empty({static_cast<int64_t>(ids.size()), vocab});
  std::ifstream f(out, std::ios::binary);
  f.read(reinterpret_cast<char*>(logits.data_ptr<float>()), logits.numel() * 4);
  const bool complete = f.gcount() == logits.numel() * 4;
  std::filesystem::remove(out);
  if (!complete) throw std::runtime_error("reference_decoder.py wrote a short logits file");
  return logits;
}

}  // namespace tessera::models::testing

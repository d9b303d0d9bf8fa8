// Loads a decoder checkpoint the way the engine does (WeightLoader -> DecoderModel, this rank's
// whole model) and prints its memory as JSON: the resident set once libtorch is up (the peak is
// reset there through /proc/self/clear_refs), the peak (VmHWM) after loading, the model's weight
// bytes and the checkpoint's file bytes. Run by weights_memory_test.cpp as a subprocess.
//   weights_memory_probe MODEL_DIR BUDGET_BYTES
#include <torch/types.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "runtime/models/decoder_model.h"
#include "runtime/models/model_folder.h"

namespace {

int64_t status_kb(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) return std::stoll(line.substr(std::string(key).size()));
  }
  return -1;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace tessera;
  if (argc != 3) {
    std::fprintf(stderr, "usage: weights_memory_probe MODEL_DIR BUDGET_BYTES\n");
    return 2;
  }
  try {
    // libtorch's own start-up (allocator, thread pool, a small GEMM) before the baseline.
    auto warm = torch::mm(torch::ones({64, 64}), torch::ones({64, 64}));
    (void)warm.sum().item<float>();
    const auto folder = models::ModelFolder::open(argv[1]);
    const auto config = models::ModelConfig::from_file(folder.config_json());
    std::ofstream("/proc/self/clear_refs") << "5";
    const int64_t baseline = status_kb("VmRSS:");
    int64_t file_bytes = 0;
    for (const auto& f : folder.weight_files()) {
      std::ifstream in(f, std::ios::binary | std::ios::ate);
      file_bytes += static_cast<int64_t>(in.tellg());
    }
    int64_t weight_bytes = 0;
    {
      models::WeightLoader w(folder, {.memory_budget = std::stoll(argv[2])});
      models::DecoderModel model(config, w, nullptr, 64);
      weight_bytes = model.weight_bytes();
      const int64_t hwm = status_kb("VmHWM:");
      std::printf(
          "{\"baseline_kb\": %lld, \"hwm_kb\": %lld, \"weight_bytes\": %lld, \"file_bytes\": "
          "%lld}\n",
          static_cast<long long>(baseline), static_cast<long long>(hwm),
          static_cast<long long>(weight_bytes), static_cast<long long>(file_bytes));
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "weights_memory_probe: %s\n", e.what());
    return 1;
  }
  return 0;
}

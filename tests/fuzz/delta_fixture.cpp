#include "tests/fuzz/delta_fixture.h"

#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/dtype.h"
#include "runtime/models/safetensors.h"

namespace tessera::fuzz {

namespace fs = std::filesystem;
using models::TensorToWrite;

namespace {

std::vector<uint8_t> f32(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

std::vector<uint8_t> half(const std::vector<float>& v, bool bf16) {
  std::vector<uint8_t> b(v.size() * 2);
  for (size_t i = 0; i < v.size(); ++i) {
    const uint16_t h = bf16 ? float_to_bf16(v[i]) : float_to_half(v[i]);
    std::memcpy(b.data() + 2 * i, &h, 2);
  }
  return b;
}

std::vector<float> ramp(size_t n, float scale, float shift) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = scale * static_cast<float>(i) + shift;
  return v;
}

std::vector<TensorToWrite> tensors(float shift) {
  std::vector<uint8_t> counts(3 * 8);
  for (int i = 0; i < 3; ++i) counts[8 * i] = static_cast<uint8_t>(i + 1 + (shift != 0 ? 1 : 0));
  return {
      {"embed.weight", DType::kF32, {4, 8}, f32(ramp(32, 0.25f, -3.0f + shift))},
      {"layer.0.w", DType::kBF16, {3, 5}, half(ramp(15, 0.5f, 1.0f + shift), true)},
      {"layer.0.b", DType::kF16, {5}, half(ramp(5, 0.125f, shift), false)},
      {"counts", DType::kI64, {3}, counts},
      {"empty", DType::kF32, {0, 4}, {}},
  };
}

}  // namespace

std::string write_delta_base(const std::string& dir) {
  fs::create_directories(dir);
  const std::string path = dir + "/model.safetensors";
  models::write_safetensors(path, tensors(0.0f), {{"format", "pt"}});
  return path;
}

std::vector<DeltaSeed> write_delta_tuned(const std::string& dir) {
  fs::create_directories(dir + "/sharded");
  auto t = tensors(0.01f);
  t.push_back({"new.bias", DType::kF32, {2}, f32({0.5f, -0.5f})});
  models::write_safetensors(dir + "/tuned.safetensors", t, {{"format", "pt"}});
  // Sharded: two files and an index, as transformers writes them.
  std::vector<TensorToWrite> a(t.begin(), t.begin() + 3), b(t.begin() + 3, t.end());
  models::write_safetensors(dir + "/sharded/model-00001-of-00002.safetensors", a);
  models::write_safetensors(dir + "/sharded/model-00002-of-00002.safetensors", b);
  std::ofstream index(dir + "/sharded/model.safetensors.index.json");
  index << R"({"metadata": {"total_size": 180}, "weight_map": {)";
  for (size_t i = 0; i < t.size(); ++i) {
    index << (i ? ", " : "") << '"' << t[i].name << "\": \"model-0000" << (i < 3 ? 1 : 2)
          << "-of-00002.safetensors\"";
  }
  index << "}}\n";
  return {{"xor.delta", dir + "/tuned.safetensors", false, false},
          {"diff.delta", dir + "/tuned.safetensors", false, true},
          {"int8.delta", dir + "/tuned.safetensors", true, false},
          {"sharded.delta", dir + "/sharded", false, false}};
}

}  // namespace tessera::fuzz

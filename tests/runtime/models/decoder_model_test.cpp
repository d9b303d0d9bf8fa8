// The decoder's KV-cached paths (chunked prefill, one-token decode through sliding-window ring
// buffers of the contiguous test oracle) against a full recomputation without reuse, and the
// weight loader's per-rank slices.
#include <gtest/gtest.h>
#include <torch/types.h>

#include <filesystem>

#include "common/error.h"
#include "runtime/models/decoder_model.h"
#include "runtime/models/tiny_model.h"
#include "runtime/models/weights.h"
#include "tests/runtime/models/contiguous_attention.h"

namespace tessera::models {
namespace {

std::string tiny_dir() {
  static const std::string dir = ensure_tiny_model(
      (std::filesystem::temp_directory_path() / "tessera_decoder_test_tiny").string());
  return dir;
}

torch::Tensor run(DecoderModel& model, const std::vector<int64_t>& ids, int64_t chunk) {
  const int64_t n = static_cast<int64_t>(ids.size());
  testing::ContiguousAttention oracle(model, n, chunk);
  auto tokens = torch::tensor(ids, torch::kLong);
  auto pos = torch::arange(n, torch::kLong);
  std::vector<torch::Tensor> logits;
  for (int64_t s = 0; s < n; s += chunk) {
    const int64_t len = std::min(chunk, n - s);
    logits.push_back(oracle.forward(model, tokens.narrow(0, s, len), pos.narrow(0, s, len)));
  }
  return torch::cat(logits, 0);
}

TEST(DecoderModel, CachedDecodeMatchesFullRecompute) {
  torch::NoGradGuard g;
  WeightLoader w(ModelFolder::open(tiny_dir()));
  const auto config = ModelConfig::from_file(tiny_dir() + "/config.json");
  DecoderModel model(config, w, nullptr, 1024);
  std::vector<int64_t> ids;
  for (int i = 0; i < 53; ++i) ids.push_back((i * 37 + 11) % 256);  // 53 > 3 x window (16)
  const auto full = run(model, ids, 53);                            // one pass: no KV reuse at all
  const auto step = run(model, ids, 1);   // ring buffers of exactly the window
  const auto chunk = run(model, ids, 7);  // chunked prefill, ring of window-1+7
  ASSERT_EQ(full.sizes(), (torch::IntArrayRef{53, config.vocab_size}));
  EXPECT_TRUE(torch::allclose(full, step, 1e-4, 1e-4)) << (full - step).abs().max().item<float>();
  EXPECT_TRUE(torch::allclose(full, chunk, 1e-4, 1e-4)) << (full - chunk).abs().max().item<float>();
}

TEST(WeightLoader, SlicesMatchTheWholeTensorAndReadOnlyTheirBytes) {
  WeightLoader w(ModelFolder::open(tiny_dir()));
  const std::string name = "model.layers.0.mlp.down_proj.weight";
  const auto whole = w.load(name, {});
  const int64_t before = w.bytes_loaded();
  const auto part = w.load_slice(name, {}, 1, {64, 64});
  EXPECT_EQ(w.bytes_loaded() - before, whole.size(0) * 64 * 4);
  EXPECT_TRUE(torch::equal(part, whole.narrow(1, 64, 64)));
  EXPECT_TRUE(part.is_contiguous());
  try {
    w.load(name, {1, 2});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("has shape [128, 256] but the config implies [1, 2]"),
              std::string::npos)
        << e.message();
  }
  EXPECT_THROW(w.load_slice(name, {}, 1, {200, 64}), Error);
  EXPECT_THROW(w.load("no.such.tensor", {}), Error);
}

}  // namespace
}  // namespace tessera::models

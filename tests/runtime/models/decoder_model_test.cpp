// The decoder's paths (one pass, chunked prefill, one-token decode through sliding-window ring
// buffers) against the independent PyTorch implementation, and the weight loader's per-rank
// slices.
#include <gtest/gtest.h>
#include <torch/types.h>

#include <filesystem>

#include "common/error.h"
#include "runtime/models/decoder_model.h"
#include "runtime/models/tiny_model.h"
#include "runtime/models/weights.h"
#include "tests/runtime/models/reference_logits.h"

namespace tessera::models {
namespace {

std::string tiny_dir() {
  static const std::string dir = ensure_tiny_model(
      (std::filesystem::temp_directory_path() / "tessera_decoder_test_tiny").string());
  return dir;
}

torch::Tensor run(DecoderModel& model, const std::vector<int64_t>& ids, int64_t chunk) {
  const int64_t n = static_cast<int64_t>(ids.size());
  caches::ContiguousKVCache cache(model.cache_config(1, n, chunk));
  auto tokens = torch::tensor(ids, torch::kLong).view({1, -1});
  auto pos = torch::arange(n, torch::kLong).view({1, -1});
  std::vector<torch::Tensor> logits;
  for (int64_t s = 0; s < n; s += chunk) {
    const int64_t len = std::min(chunk, n - s);
    logits.push_back(model.forward(tokens.narrow(1, s, len), pos.narrow(1, s, len), cache));
  }
  return torch::cat(logits, 1);
}

// The logits of every path (one pass with no KV reuse, one token per step through ring buffers of
// exactly the window, chunked prefill) against the independent PyTorch implementation.
TEST(DecoderModel, LogitsMatchTheIndependentReference) {
  if (const auto why = testing::reference_unavailable(); !why.empty()) GTEST_SKIP() << why;
  torch::NoGradGuard g;
  WeightLoader w(ModelFolder::open(tiny_dir()));
  const auto config = ModelConfig::from_file(tiny_dir() + "/config.json");
  DecoderModel model(config, w, nullptr);
  std::vector<int64_t> ids;
  for (int i = 0; i < 53; ++i) ids.push_back((i * 37 + 11) % 256);  // 53 > 3 x window (16)
  const auto want = testing::reference_logits(tiny_dir(), ids, config.vocab_size).unsqueeze(0);
  for (int64_t chunk : {53, 1, 7}) {
    const auto got = run(model, ids, chunk);
    ASSERT_EQ(got.sizes(), want.sizes());
    EXPECT_TRUE(torch::allclose(got, want, 1e-4, 1e-4))
        << "chunk " << chunk << ": " << (got - want).abs().max().item<float>();
  }
}

TEST(DecoderModel, SlidingLayersHoldOnlyTheirWindow) {
  // With one token per step, a sliding layer's ring holds exactly its window; full layers hold
  // the whole context.
  torch::NoGradGuard g;
  WeightLoader w(ModelFolder::open(tiny_dir()));
  const auto config = ModelConfig::from_file(tiny_dir() + "/config.json");
  DecoderModel model(config, w, nullptr);
  const auto cc = model.cache_config(1, 1000, 1);
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    if (config.layer_windows[l] > 0) {
      EXPECT_EQ(cc.capacity(l), config.layer_windows[l]);
    } else {
      EXPECT_EQ(cc.capacity(l), 1000);
    }
  }
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

TEST(DecoderModel, RejectsBadTokens) {
  torch::NoGradGuard g;
  WeightLoader w(ModelFolder::open(tiny_dir()));
  DecoderModel model(ModelConfig::from_file(tiny_dir() + "/config.json"), w, nullptr);
  caches::ContiguousKVCache cache(model.cache_config(1, 8, 8));
  auto pos = torch::arange(2, torch::kLong).view({1, 2});
  EXPECT_THROW(model.forward(torch::tensor({1, 999}, torch::kLong).view({1, 2}), pos, cache),
               Error);
}

}  // namespace
}  // namespace tessera::models

// Sparse decode in the engine (EngineConfig::sparse) on the built-in tiny model (two full and two
// sliding-window layers): with a budget covering the context it gives dense decode's tokens and
// logits; with a small budget every sparse decode row reads exactly min(budget, context) tokens
// per KV head on each full-attention layer (counted independently from the prompt lengths); the
// threshold keeps short sequences dense; bad options and a model without full-attention layers
// fail with one error naming the option.
#include <gtest/gtest.h>
#include <torch/types.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "common/error.h"
#include "runtime/engine/engine_core.h"
#include "runtime/engine/llm.h"
#include "runtime/models/tiny_model.h"
#include "tests/runtime/engine/hf_reference.h"

namespace tessera::engine {
namespace {

namespace fs = std::filesystem;
using testing::greedy_request;

std::string tiny_dir() {
  static const std::string dir = models::ensure_tiny_model(
      (fs::temp_directory_path() / "tessera_engine_sparse_test_tiny").string());
  return dir;
}

EngineConfig config(const std::string& method = "", int64_t budget = 0, int64_t min_context = 0) {
  EngineConfig c;
  c.model = tiny_dir();
  c.max_num_seqs = 8;
  c.max_num_batched_tokens = 256;  // longer prompts are prefilled in chunks
  c.block_size = 16;
  c.max_model_len = 1024;
  c.kv_cache_memory = 16 << 20;
  c.sparse.method = method;
  c.sparse.budget = budget;
  c.sparse.min_context = min_context;
  return c;
}

// Text-like prompts (the tiny model is a byte-level LM trained on the KJV).
std::vector<int32_t> prompt(std::mt19937& rng, int64_t n) {
  static const std::string words[] = {"and ", "the ",  "LORD ", "said ", "unto ", "Moses ",
                                      "in ",  "that ", "day ",  "of ",   "his ",  "house "};
  std::vector<int32_t> ids{256};  // <bos>
  while (static_cast<int64_t>(ids.size()) < n) {
    for (char ch : words[rng() % 12]) {
      if (static_cast<int64_t>(ids.size()) < n) ids.push_back(static_cast<unsigned char>(ch));
    }
  }
  return ids;
}

struct Outcome {
  std::vector<CompletedRequest> out;
  std::vector<torch::Tensor> logits;  // every step's logits, plan token order
  GenerateSummary summary;
};

Outcome run(const EngineConfig& c, const std::vector<EngineRequest>& reqs) {
  EngineCore core(c, nullptr, nullptr);
  Outcome r;
  core.set_logits_observer(
      [&](const scheduler::StepPlan&, const torch::Tensor& l) { r.logits.push_back(l.clone()); });
  r.out = generate(core, reqs, {}, &r.summary);
  return r;
}

std::vector<EngineRequest> requests(const std::vector<int64_t>& lens, int64_t max_tokens) {
  std::mt19937 rng(11);
  std::vector<EngineRequest> reqs;
  for (size_t i = 0; i < lens.size(); ++i) {
    reqs.push_back(greedy_request(std::to_string(i), prompt(rng, lens[i]), max_tokens));
    reqs.back().params.ignore_eos = true;
  }
  return reqs;
}

TEST(EngineSparse, BudgetCoveringTheContextGivesDenseTokensAndLogits) {
  torch::NoGradGuard g;
  const auto reqs = requests({40, 333, 517}, 24);
  const Outcome dense = run(config(), reqs);
  for (const char* method : {"cluster", "quest"}) {
    SCOPED_TRACE(method);
    const Outcome sparse = run(config(method, 1024, 0), reqs);
    ASSERT_EQ(sparse.out.size(), dense.out.size());
    for (size_t i = 0; i < reqs.size(); ++i) {
      EXPECT_EQ(sparse.out[i].output_ids, dense.out[i].output_ids) << "request " << i;
      EXPECT_EQ(sparse.out[i].output_ids.size(), 24u);
    }
    ASSERT_EQ(sparse.logits.size(), dense.logits.size());
    double worst = 0;
    for (size_t s = 0; s < dense.logits.size(); ++s) {
      ASSERT_TRUE(sparse.logits[s].sizes() == dense.logits[s].sizes());
      worst = std::max(worst, (sparse.logits[s] - dense.logits[s]).abs().max().item<double>());
    }
    EXPECT_LE(worst, 1e-4) << "largest logit difference against dense decode";
    std::printf("%s: largest logit difference against dense decode %.3g\n", method, worst);
    // Every decode row of every request ran sparse on the 2 full-attention layers and read the
    // whole context.
    const auto& sp = sparse.summary.sparse;
    EXPECT_EQ(sp.rows, 3 * 23 * 2);
    EXPECT_EQ(sp.tokens_read, sp.tokens_context);
    EXPECT_GT(sp.kv_bytes_read, 0);
  }
}

TEST(EngineSparse, SmallBudgetReadsOnlyTheBudget) {
  torch::NoGradGuard g;
  const std::vector<int64_t> lens{600, 260, 90};
  const int64_t budget = 128, max_tokens = 12, kv_heads = 4, full_layers = 2, head_dim = 16;
  const auto reqs = requests(lens, max_tokens);
  const Outcome sparse = run(config("cluster", budget, 0), reqs);
  // Independent count: decode step k (k = 1 .. max_tokens - 1) of a prompt of length L attends
  // with L + k tokens stored.
  int64_t rows = 0, read = 0, context = 0;
  for (int64_t L : lens) {
    for (int64_t k = 1; k < max_tokens; ++k) {
      rows += full_layers;
      read += std::min(budget, L + k) * kv_heads * full_layers;
      context += (L + k) * kv_heads * full_layers;
    }
  }
  for (const auto& o : sparse.out) {
    EXPECT_EQ(o.finish_reason, "length");
    EXPECT_EQ(o.output_ids.size(), static_cast<size_t>(max_tokens));
  }
  const auto& sp = sparse.summary.sparse;
  EXPECT_EQ(sp.rows, rows);
  EXPECT_EQ(sp.tokens_read, read);
  EXPECT_EQ(sp.tokens_context, context);
  EXPECT_EQ(sp.kv_bytes_read, read * 2 * head_dim * 4);  // K and V rows, float32
  EXPECT_EQ(sp.kv_bytes_dense, context * 2 * head_dim * 4);
  std::printf("budget %lld: KV read %lld of %lld bytes (%.3f of dense)\n",
              static_cast<long long>(budget), static_cast<long long>(sp.kv_bytes_read),
              static_cast<long long>(sp.kv_bytes_dense),
              static_cast<double>(sp.kv_bytes_read) / sp.kv_bytes_dense);
  // The same with a threshold above every context: no sparse row, dense tokens.
  const Outcome dense = run(config(), reqs);
  const Outcome thresholded = run(config("cluster", budget, 1000), reqs);
  EXPECT_EQ(thresholded.summary.sparse.rows, 0);
  // The small budget changes the computation (the sparse path is not a no-op).
  double diff = 0;
  for (size_t s = 0; s < dense.logits.size() && s < sparse.logits.size(); ++s) {
    if (dense.logits[s].sizes() == sparse.logits[s].sizes()) {
      diff = std::max(diff, (sparse.logits[s] - dense.logits[s]).abs().max().item<double>());
    }
  }
  EXPECT_GT(diff, 1e-3) << "budget 128 gave dense decode's logits";
  for (size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_EQ(thresholded.out[i].output_ids, dense.out[i].output_ids);
  }
}

std::string error_of(const EngineConfig& c) {
  try {
    EngineCore core(c, nullptr, nullptr);
  } catch (const Error& e) {
    return e.message();
  }
  return "(no error)";
}

TEST(EngineSparse, BadOptionsAreOneClearError) {
  auto has = [](const std::string& msg, const std::string& needle) {
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
  };
  for (int64_t b : {0, -5}) {
    const auto m = error_of(config("cluster", b));
    has(m, "--sparse-budget must be a positive token count, got " + std::to_string(b));
  }
  has(error_of(config("cluster", 80)),
      "--sparse-budget 80 is below --sparse-sinks + --sparse-window + --block-size = 4 + 64 + 16 "
      "= 84");
  auto c = config("quest", 100);
  c.sparse.window = 90;
  has(error_of(c), "--sparse-budget 100 is below");
  c = config("cluster", 512);
  c.sparse.sinks = -1;
  has(error_of(c), "--sparse-sinks must be >= 0, got -1");
  has(error_of(config("dense", 512)), "dense");
  has(error_of(config("dense", 512)), "cluster");

  // A model whose every layer is a sliding window has no full-attention layer to decode sparsely.
  const fs::path dir = fs::temp_directory_path() / "tessera_engine_sparse_test_sliding";
  fs::create_directories(dir);
  for (const auto& e : fs::directory_iterator(tiny_dir())) {
    fs::copy_file(e.path(), dir / e.path().filename(), fs::copy_options::overwrite_existing);
  }
  nlohmann::json j = nlohmann::json::parse(std::ifstream(dir / "config.json"));
  j["sliding_window"] = 16;
  j["layer_types"] = std::vector<std::string>(4, "sliding_attention");
  std::ofstream(dir / "config.json") << j.dump();
  c = config("cluster", 512);
  c.model = dir.string();
  has(error_of(c), "--sparse-decode cluster needs full-attention layers on the paged KV cache");
  c.sparse = {};  // the same model decodes densely
  EXPECT_EQ(error_of(c), "(no error)");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace tessera::engine

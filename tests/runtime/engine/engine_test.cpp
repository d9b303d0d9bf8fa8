// The engine on the built-in tiny model (full and sliding-window layers): batching does not
// change a request's tokens, sliding layers hold only their window, a repeated prompt is served
// from the prefix cache, NaN weights are reported and never sampled, bad requests fail alone,
// and the thread-safe EngineClient serves requests from other threads.
#include <gtest/gtest.h>
#include <torch/types.h>

#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include "runtime/engine/async_engine.h"
#include "runtime/engine/engine_core.h"
#include "runtime/engine/llm.h"
#include "runtime/models/safetensors.h"
#include "runtime/models/tiny_model.h"
#include "tests/runtime/engine/hf_reference.h"

namespace tessera::engine {
namespace {

namespace fs = std::filesystem;
using testing::greedy_request;

std::string tiny_dir() {
  static const std::string dir =
      models::ensure_tiny_model((fs::temp_directory_path() / "tessera_engine_test_tiny").string());
  return dir;
}

EngineConfig tiny_config() {
  EngineConfig c;
  c.model = tiny_dir();
  c.max_num_seqs = 32;
  c.max_num_batched_tokens = 64;
  c.block_size = 4;
  c.max_model_len = 512;
  c.kv_cache_memory = 8 << 20;
  return c;
}

std::vector<int32_t> random_prompt(std::mt19937& rng, int64_t n) {
  std::vector<int32_t> ids{256};  // <bos>
  for (int64_t i = 1; i < n; ++i) ids.push_back(static_cast<int32_t>(rng() % 256));
  return ids;
}

TEST(Engine, ThirtyTwoPromptsInOneBatchGiveTheirSoloTokens) {
  torch::NoGradGuard g;
  std::mt19937 rng(7);
  std::vector<EngineRequest> reqs;
  for (int i = 0; i < 32; ++i) {
    reqs.push_back(greedy_request(std::to_string(i), random_prompt(rng, 1 + (i * 37) % 150), 24));
    if (i % 4 == 3) {  // seeded sampling: the same draws whatever the batch
      reqs.back().params.temperature = 0.9f;
      reqs.back().params.top_p = 0.9f;
      reqs.back().params.seed = 100 + i;
    }
    // prompt_logprobs on every third: scored once per prompt token whatever the chunking, the
    // batch or a preemption's recomputation.
    if (i % 3 == 1) reqs.back().params.prompt_logprobs = 3;
  }
  // Solo: each request alone in an engine of its own kind, no prefix cache.
  EngineConfig solo_cfg = tiny_config();
  solo_cfg.enable_prefix_caching = false;
  EngineCore solo(solo_cfg, nullptr, nullptr);
  std::vector<std::vector<int32_t>> expected;
  std::vector<std::vector<PromptLogprob>> expected_scores;
  for (const auto& r : reqs) {
    const auto res = generate(solo, {r});
    ASSERT_EQ(res[0].finish_reason, "length") << res[0].error;
    expected.push_back(res[0].output_ids);
    expected_scores.push_back(res[0].prompt_logprobs);
    ASSERT_EQ(res[0].prompt_logprobs.size(),
              r.params.prompt_logprobs >= 0 ? r.prompt_ids.size() - 1 : 0);
  }
  // Together: chunked prefills of 64 tokens per step mixed with decodes; then again with a pool
  // so small that requests are preempted and recomputed.
  for (int64_t budget : {int64_t{8} << 20, int64_t{100} * 4096}) {
    EngineConfig cfg = tiny_config();
    cfg.kv_cache_memory = budget;
    cfg.max_model_len = 192;
    EngineCore batch(cfg, nullptr, nullptr);
    GenerateSummary sum;
    const auto res = generate(batch, reqs, {}, &sum);
    for (size_t i = 0; i < reqs.size(); ++i) {
      EXPECT_EQ(res[i].output_ids, expected[i]) << "request " << i << " budget " << budget;
      const auto& got = res[i].prompt_logprobs;
      ASSERT_EQ(got.size(), expected_scores[i].size()) << "request " << i << " budget " << budget;
      for (size_t p = 0; p < got.size(); ++p) {
        const auto& want = expected_scores[i][p];
        EXPECT_EQ(got[p].id, want.id);
        EXPECT_NEAR(got[p].logprob, want.logprob, 1e-5) << "request " << i << " token " << p;
        EXPECT_EQ(got[p].rank, want.rank) << "request " << i << " token " << p;
        ASSERT_EQ(got[p].top.size(), 3u);
        for (size_t j = 0; j < 3; ++j) EXPECT_EQ(got[p].top[j].id, want.top[j].id);
      }
    }
    std::printf("[ budget %7lld B ] %lld steps, %lld preemptions, %lld blocks\n",
                static_cast<long long>(budget), static_cast<long long>(sum.steps),
                static_cast<long long>(sum.preemptions),
                static_cast<long long>(batch.kv_plan().storage.num_blocks));
    if (budget < (1 << 20)) EXPECT_GT(sum.preemptions, 0) << "the small pool should preempt";
  }
}

// A 400-token prompt scored in one step (more rows than the scorer's block of 256) equals the
// same prompt scored in 64-token chunks.
TEST(Engine, PromptScoresOfOneLongStepEqualChunkedOnes) {
  torch::NoGradGuard g;
  std::mt19937 rng(21);
  auto req = greedy_request("long", random_prompt(rng, 400), 2);
  req.params.prompt_logprobs = 2;
  EngineConfig whole_cfg = tiny_config();
  whole_cfg.max_num_batched_tokens = 512;
  EngineCore whole(whole_cfg, nullptr, nullptr), chunked(tiny_config(), nullptr, nullptr);
  const auto a = generate(whole, {req});
  const auto b = generate(chunked, {req});
  ASSERT_EQ(a[0].prompt_logprobs.size(), 399u);
  ASSERT_EQ(b[0].prompt_logprobs.size(), 399u);
  for (size_t p = 0; p < 399; ++p) {
    EXPECT_EQ(a[0].prompt_logprobs[p].id, b[0].prompt_logprobs[p].id);
    EXPECT_NEAR(a[0].prompt_logprobs[p].logprob, b[0].prompt_logprobs[p].logprob, 1e-5) << p;
    EXPECT_EQ(a[0].prompt_logprobs[p].rank, b[0].prompt_logprobs[p].rank) << p;
    ASSERT_EQ(a[0].prompt_logprobs[p].top.size(), 2u);
    EXPECT_EQ(a[0].prompt_logprobs[p].top[0].id, b[0].prompt_logprobs[p].top[0].id) << p;
  }
}

// A request scoring its prompt computes the whole prompt even where the prefix cache holds it (its
// scores are the logits of those steps), and the blocks it computes serve the requests after it.
TEST(Engine, ScoringRequestsReadNoPrefixButTheirBlocksServeOthers) {
  torch::NoGradGuard g;
  std::mt19937 rng(5);
  const auto prompt = random_prompt(rng, 150);
  auto scoring = greedy_request("s", prompt, 4);
  scoring.params.prompt_logprobs = 2;
  EngineConfig cfg = tiny_config();
  cfg.block_size = 16;
  EngineConfig solo_cfg = cfg;
  solo_cfg.enable_prefix_caching = false;
  EngineCore solo(solo_cfg, nullptr, nullptr);
  const auto want = generate(solo, {scoring});
  ASSERT_EQ(want[0].prompt_logprobs.size(), 149u) << want[0].error;
  auto expect_scores = [&](const CompletedRequest& got, const std::string& what) {
    ASSERT_EQ(got.prompt_logprobs.size(), 149u) << what;
    EXPECT_EQ(got.output_ids, want[0].output_ids) << what;
    for (size_t p = 0; p < 149; ++p) {
      EXPECT_EQ(got.prompt_logprobs[p].id, want[0].prompt_logprobs[p].id) << what << " " << p;
      EXPECT_NEAR(got.prompt_logprobs[p].logprob, want[0].prompt_logprobs[p].logprob, 1e-5)
          << what << " " << p;
    }
  };
  EngineCore core(cfg, nullptr, nullptr);
  const auto first = generate(core, {scoring});
  EXPECT_EQ(first[0].cached_prompt_tokens, 0);
  expect_scores(first[0], "cold cache");
  // A plain request reads the scoring request's blocks.
  const auto plain = generate(core, {greedy_request("p", prompt, 4)});
  EXPECT_GE(plain[0].cached_prompt_tokens, 150 - 16)
      << "the scoring request's blocks were not shared";
  EXPECT_EQ(plain[0].output_ids, want[0].output_ids);
  // Scoring again in the warm cache computes the whole prompt again.
  const int64_t before = core.runner().stats().tokens;
  auto again = scoring;
  again.id = "s2";
  const auto second = generate(core, {again});
  EXPECT_EQ(second[0].cached_prompt_tokens, 0);
  EXPECT_GE(core.runner().stats().tokens - before, 150);
  expect_scores(second[0], "warm cache");
}

// The tiny model with every layer a sliding-window layer (config only: same weights), so that a
// 4,096-token generation costs O(window) per step.
std::string sliding_model_dir() {
  const fs::path dir = fs::temp_directory_path() / "tessera_engine_test_sliding";
  fs::create_directories(dir);
  fs::copy_file(fs::path(tiny_dir()) / "model.safetensors", dir / "model.safetensors",
                fs::copy_options::overwrite_existing);
  auto config = models::ModelConfig::from_file(tiny_dir() + "/config.json");
  for (auto& w : config.layer_windows) w = 16;
  std::ofstream(dir / "config.json") << config.to_json_text();
  return dir.string();
}

TEST(Engine, SlidingLayersHoldOnlyTheirWindowOver4096Tokens) {
  torch::NoGradGuard g;
  for (int64_t block : {16, 5}) {
    EngineConfig cfg = tiny_config();
    cfg.model = sliding_model_dir();
    cfg.block_size = block;
    cfg.max_model_len = 4096;
    cfg.kv_cache_memory = 16 << 20;
    EngineCore core(cfg, nullptr, nullptr);
    std::mt19937 rng(1);
    const auto res = generate(core, {greedy_request("long", random_prompt(rng, 8), 4088)});
    ASSERT_EQ(res[0].output_ids.size(), 4088u) << res[0].error;
    const auto& groups = core.kv_plan().groups;
    const auto& held = core.runner().stats().max_live_blocks;
    int sliding = 0;
    for (size_t gi = 0; gi < groups.size(); ++gi) {
      if (groups[gi].spec->kind() == caches::SpecKind::kSlidingWindow) {
        const int64_t w = static_cast<const caches::SlidingWindowSpec&>(*groups[gi].spec).window();
        EXPECT_LE(held[gi], (w + block - 1) / block + 1) << "group " << gi << " block " << block;
        ++sliding;
      }
    }
    EXPECT_EQ(sliding, static_cast<int>(groups.size()));
  }
}

TEST(Engine, RepeatedPromptComputesAtMostOneBlockOfPrefill) {
  torch::NoGradGuard g;
  EngineConfig cfg = tiny_config();
  cfg.block_size = 16;
  EngineCore core(cfg, nullptr, nullptr);
  std::mt19937 rng(3);
  const auto prompt = random_prompt(rng, 150);
  const auto first = generate(core, {greedy_request("a", prompt, 1)});
  const int64_t before = core.runner().stats().tokens;
  const auto second = generate(core, {greedy_request("b", prompt, 1)});
  const int64_t computed = core.runner().stats().tokens - before;
  EXPECT_LE(computed, 16) << "the second run recomputed " << computed << " prompt tokens";
  EXPECT_GE(second[0].cached_prompt_tokens, 150 - 16);
  EXPECT_EQ(second[0].output_ids, first[0].output_ids);
}

// The tiny model with one weight set to NaN.
std::string nan_model_dir() {
  const fs::path dir = fs::temp_directory_path() / "tessera_engine_test_nan";
  fs::create_directories(dir);
  fs::copy_file(fs::path(tiny_dir()) / "config.json", dir / "config.json",
                fs::copy_options::overwrite_existing);
  const auto src = models::SafetensorsFile::open(tiny_dir() + "/model.safetensors");
  std::vector<models::TensorToWrite> ts;
  for (const auto& name : src->names()) {
    const auto& e = src->get(name);
    models::TensorToWrite t{name, e.dtype, e.shape, {e.data, e.data + e.nbytes}};
    if (name == "model.layers.1.mlp.down_proj.weight") {
      const float nan = std::numeric_limits<float>::quiet_NaN();
      std::memcpy(t.bytes.data() + 4 * 100, &nan, 4);
    }
    ts.push_back(std::move(t));
  }
  models::write_safetensors((dir / "model.safetensors").string(), ts);
  return dir.string();
}

TEST(Engine, NanWeightsAreReportedNeverSampled) {
  torch::NoGradGuard g;
  EngineConfig cfg = tiny_config();
  cfg.model = nan_model_dir();
  EngineCore core(cfg, nullptr, nullptr);
  std::mt19937 rng(5);
  const auto res = generate(core, {greedy_request("x", random_prompt(rng, 20), 8),
                                   greedy_request("y", random_prompt(rng, 9), 8)});
  for (const auto& r : res) {
    EXPECT_EQ(r.finish_reason, "error");
    EXPECT_TRUE(r.output_ids.empty()) << "a token was sampled from NaN logits";
    EXPECT_NE(r.error.find("NaN in logits of request \"" + r.id + "\" at step"), std::string::npos)
        << r.error;
  }
}

TEST(Engine, BadRequestsFailAloneTheOthersFinish) {
  torch::NoGradGuard g;
  EngineConfig cfg = tiny_config();
  cfg.max_model_len = 64;
  EngineCore core(cfg, nullptr, nullptr);
  std::mt19937 rng(9);
  std::vector<EngineRequest> reqs;
  reqs.push_back(greedy_request("good1", random_prompt(rng, 10), 5));
  reqs.push_back(greedy_request("long", random_prompt(rng, 65), 5));
  reqs.push_back(greedy_request("zero", random_prompt(rng, 5), 0));
  reqs.push_back(greedy_request("vocab", {1, 2, 999}, 5));
  auto hot = greedy_request("hot", random_prompt(rng, 5), 5);
  hot.params.top_p = 1.5f;
  reqs.push_back(hot);
  reqs.push_back(greedy_request("good1", random_prompt(rng, 5), 5));  // duplicate id
  reqs.push_back(greedy_request("good2", random_prompt(rng, 30), 5));
  auto allowed_vocab = greedy_request("allowed_vocab", random_prompt(rng, 5), 5);
  allowed_vocab.params.allowed_token_ids = {3, 999};
  reqs.push_back(allowed_vocab);
  // Only eos allowed, but min_tokens masks eos: no token could be drawn.
  auto allowed_eos = greedy_request("allowed_eos", random_prompt(rng, 5), 5);
  allowed_eos.params.allowed_token_ids = {257};
  allowed_eos.params.min_tokens = 2;
  allowed_eos.params.ignore_eos = false;
  reqs.push_back(allowed_eos);
  auto allowed = greedy_request("allowed", random_prompt(rng, 5), 5);
  allowed.params.allowed_token_ids = {65, 66};
  reqs.push_back(allowed);
  auto bad_vocab = greedy_request("bad_vocab", random_prompt(rng, 5), 5);
  bad_vocab.params.bad_words_ids = {{3, 999}};
  reqs.push_back(bad_vocab);
  const auto res = generate(core, reqs);
  const std::vector<std::pair<int, std::string>> errors = {
      {1, "prompt has 65 tokens, more than max_model_len=64"},
      {2, "max_tokens must be >= 1, got 0"},
      {3, "prompt_ids[2]=999 is outside the model's vocabulary [0, 258)"},
      {4, "top_p must lie in (0, 1], got 1.5"},
      {5, "already in use"},
      {7, "allowed_token_ids[1]=999 is outside the model's vocabulary [0, 258)"},
      {8,
       "every id of allowed_token_ids ends the request (eos or stop_token_ids), but "
       "min_tokens=2"},
      {10, "bad_words_ids[0] holds 999, outside the model's vocabulary [0, 258)"}};
  for (const auto& [i, needle] : errors) {
    EXPECT_EQ(res[i].finish_reason, "error") << i;
    EXPECT_NE(res[i].error.find(needle), std::string::npos) << res[i].error;
    EXPECT_EQ(res[i].error.find('\n'), std::string::npos) << "one line: " << res[i].error;
  }
  for (int i : {0, 6, 9}) {
    EXPECT_EQ(res[i].finish_reason, "length") << res[i].error;
    EXPECT_EQ(res[i].output_ids.size(), 5u);
  }
  for (int32_t t : res[9].output_ids) EXPECT_TRUE(t == 65 || t == 66) << t;
}

TEST(Engine, AsyncEngineServesOtherThreadsAndAborts) {
  torch::NoGradGuard g;
  EngineCore core(tiny_config(), nullptr, nullptr);
  std::mt19937 rng(11);
  std::vector<EngineRequest> reqs;
  for (int i = 0; i < 8; ++i) {
    reqs.push_back(greedy_request("r" + std::to_string(i), random_prompt(rng, 5 + 7 * i), 12));
  }
  reqs.push_back(greedy_request("slow", random_prompt(rng, 5), 400));
  EngineCore ref_core(tiny_config(), nullptr, nullptr);
  const auto expected = generate(ref_core, reqs);

  AsyncEngine engine(core);
  EXPECT_EQ(engine.max_model_len(), 512);
  std::mutex mu;
  std::condition_variable cv;
  std::map<std::string, std::vector<int32_t>> tokens;
  std::map<std::string, std::string> reasons;
  engine.start();
  auto submit = [&](int begin, int end) {
    for (int i = begin; i < end; ++i) {
      engine.add_request(reqs[i], [&, id = reqs[i].id](const RequestOutput& o) {
        std::lock_guard<std::mutex> lock(mu);
        auto& t = tokens[id];
        t.insert(t.end(), o.new_token_ids.begin(), o.new_token_ids.end());
        if (o.finished) {
          reasons[id] = o.finish_reason;
          cv.notify_all();
        }
      });
    }
  };
  std::thread a(submit, 0, 4), b(submit, 4, 9);
  a.join();
  b.join();
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return tokens["slow"].size() >= 3; });
  }
  engine.abort("slow");
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(60), [&] { return reasons.size() == 9; }));
  }
  EXPECT_GE(engine.stats().steps, 1);
  engine.stop();
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(tokens[reqs[i].id], expected[i].output_ids) << reqs[i].id;
    EXPECT_EQ(reasons[reqs[i].id], "length");
  }
  EXPECT_EQ(reasons["slow"], "abort");
  EXPECT_LT(tokens["slow"].size(), 400u);
}

}  // namespace
}  // namespace tessera::engine

// The engine across ranks (mpirun -np 1, 2, 4): greedy tokens of a batch of prompts on the job's
// ranks — tensor parallel, decode context parallel where the ranks outnumber the KV heads (one
// KV head's tokens split over 2 or 4 ranks), and tp x dp replicas — equal the tokens of one
// process alone, for float32, bfloat16 and float16 checkpoints made by transformers (greedy, and
// seeded sampling).
#include <gtest/gtest.h>
#include <torch/types.h>

#include <random>

#include "runtime/engine/generate.h"
#include "sharding/mpi/mpi_communicator.h"
#include "tests/runtime/engine/hf_reference.h"

namespace tessera::engine {
namespace {

std::vector<PromptSpec> prompts(int64_t vocab) {
  std::mt19937 rng(17);
  std::vector<PromptSpec> out;
  for (int64_t len : {3, 9, 21, 34, 47, 60}) {
    PromptSpec s;
    s.has_ids = true;
    for (int64_t i = 0; i < len; ++i) s.ids.push_back(static_cast<int32_t>(rng() % vocab));
    s.params.temperature = 0.0f;
    s.params.max_tokens = 12;
    s.params.ignore_eos = true;
    if (len == 21 || len == 60) {  // seeded sampling: the leader's draws do not depend on tp
      s.params.temperature = 0.8f;
      s.params.top_k = 50;
      s.params.seed = static_cast<uint64_t>(len);
    }
    if (len == 9 || len == 47) s.params.prompt_logprobs = 2;  // scored on the leader

    out.push_back(std::move(s));
  }
  return out;
}

TEST(EngineAcrossRanks, GreedyTokensEqualOneProcess) {
  torch::NoGradGuard no_grad;
  sharding::MpiCommunicator world;
  std::vector<testing::HfModel> models;
  std::string skip, err;
  if (world.rank() == 0) {
    try {
      models = testing::hf_models(testing::hf_dir("mpi"), &skip);
    } catch (const std::exception& e) {
      err = e.what();
    }
  }
  err = world.agree_on_error(err);
  ASSERT_TRUE(err.empty()) << err;
  auto skipped = torch::full({1}, skip.empty() ? 0 : 1, torch::kLong);
  world.broadcast(skipped, 0);
  if (skipped.item<int64_t>() != 0) GTEST_SKIP() << skip;
  if (world.rank() != 0) models = testing::hf_models(testing::hf_dir("mpi"), &skip);

  const int np = world.size();
  int dcp_runs = 0;
  for (const auto& m : models) {
    if (m.name == "llama_llama3" || m.name == "llama_yarn" || m.name == "llama_dynamic") continue;
    SCOPED_TRACE(m.name + " (" + m.dtype + ", " + std::to_string(m.num_kv_heads) +
                 " KV heads) on " + std::to_string(np) + " ranks");
    GenerateJob job;
    job.engine.model = m.dir;
    job.engine.max_num_seqs = 8;
    job.engine.max_num_batched_tokens = 32;  // prompts prefill in chunks beside decodes
    job.engine.block_size = 4;
    job.engine.kv_cache_memory = 2 << 20;
    job.prompts = prompts(384);
    std::vector<std::vector<int32_t>> solo;
    std::vector<std::vector<PromptLogprob>> solo_scores;
    if (world.rank() == 0) {
      const auto one = run_generate(job, nullptr);
      for (const auto& o : one.outputs) {
        ASSERT_EQ(o.result.finish_reason, "length") << o.result.error;
        solo.push_back(o.result.output_ids);
        solo_scores.push_back(o.result.prompt_logprobs);
      }
    }
    // Prompt scores across ranks: the same tokens, logprobs as close as the dtype allows.
    const float tol = m.dtype == "float32" ? 1e-4f : 5e-2f;
    std::vector<std::pair<int, int>> layouts = {{np, 1}};  // (tp, dp)
    if (np == 4) layouts.push_back({2, 2});
    for (const auto& [tp, dp] : layouts) {
      job.tp = tp;
      job.dp = dp;
      const auto rep = run_generate(job, &world);
      if (world.rank() != 0) continue;
      EXPECT_EQ(rep.dcp, tp > m.num_kv_heads ? tp / m.num_kv_heads : 1);
      if (rep.dcp > 1) ++dcp_runs;
      std::printf("[ %-15s ] %s: tp %d x dp %d, dcp %d: %zu prompts compared\n", m.name.c_str(),
                  m.dtype.c_str(), tp, dp, rep.dcp, solo.size());
      ASSERT_EQ(rep.outputs.size(), solo.size());
      for (size_t i = 0; i < solo.size(); ++i) {
        EXPECT_EQ(rep.outputs[i].result.output_ids, solo[i])
            << "prompt " << i << ", tp " << tp << " x dp " << dp << ", dcp " << rep.dcp;
        const auto& got = rep.outputs[i].result.prompt_logprobs;
        ASSERT_EQ(got.size(), solo_scores[i].size()) << "prompt " << i << ", tp " << tp;
        for (size_t p = 0; p < got.size(); ++p) {
          EXPECT_EQ(got[p].id, solo_scores[i][p].id);
          EXPECT_NEAR(got[p].logprob, solo_scores[i][p].logprob, tol)
              << "prompt " << i << " token " << p + 1 << ", tp " << tp << " x dp " << dp;
        }
      }
    }
  }
  if (world.rank() == 0 && np > 1) EXPECT_GT(dcp_runs, 0) << "no run used decode context parallel";
}

}  // namespace
}  // namespace tessera::engine

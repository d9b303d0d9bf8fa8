// The engine against Hugging Face transformers 4.44 on random checkpoints transformers made
// (hf_checkpoints.py): LLaMA with q/k/v/o and MLP biases and tied embeddings, LLaMA with linear,
// llama3, dynamic and yarn rope scaling, Mistral with a window shorter than the prompts, Qwen2
// with sliding layers above max_window_layers only. All prompts of a model run together through
// the product path (scheduler, chunked prefill mixed with decodes in one ragged batch, paged KV
// with small blocks, paged attention); every prompt position's logits must be within 1e-4 of
// transformers' and the greedy tokens equal to transformers' generate().
#include <gtest/gtest.h>
#include <torch/types.h>

#include <map>

#include "runtime/engine/engine_core.h"
#include "runtime/engine/llm.h"
#include "runtime/models/safetensors.h"
#include "tests/runtime/engine/hf_reference.h"

namespace tessera::engine {
namespace {

using testing::HfModel;

class HfReference : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    try {
      models_ = testing::hf_models(testing::hf_dir("single"), &skip_);
    } catch (const std::exception& e) {
      error_ = e.what();
    }
  }
  void SetUp() override {
    ASSERT_TRUE(error_.empty()) << error_;
    if (!skip_.empty()) GTEST_SKIP() << skip_;
  }
  static std::vector<HfModel> models_;
  static std::string skip_, error_;
};
std::vector<HfModel> HfReference::models_;
std::string HfReference::skip_, HfReference::error_;

// Small blocks and steps: chunked prefill mixes prompt chunks with decodes of other prompts in
// one step. Dynamic NTK rope depends on the length a forward sees (transformers rotates a
// prompt's keys with the frequencies of its whole length), so that model prefills each prompt
// whole.
EngineConfig engine_config(const HfModel& m) {
  EngineConfig c;
  c.model = m.dir;
  c.max_num_seqs = 8;
  c.max_num_batched_tokens = m.name == "llama_dynamic" ? 64 : 16;
  c.block_size = 4;
  c.kv_cache_memory = 4 << 20;
  return c;
}

TEST_F(HfReference, LogitsAndGreedyTokensMatchTransformers) {
  torch::NoGradGuard no_grad;
  int checked = 0;
  for (const HfModel& m : models_) {
    if (!m.reference) continue;
    SCOPED_TRACE(m.name);
    const auto ref = models::SafetensorsFile::open(m.dir + "/reference.safetensors");
    EngineCore core(engine_config(m), nullptr, nullptr);
    std::map<int64_t, std::string> id_of;                         // seq -> request id
    std::map<std::string, std::map<int64_t, torch::Tensor>> got;  // id -> position -> logits
    core.set_logits_observer([&](const scheduler::StepPlan& plan, const torch::Tensor& all) {
      for (int64_t i = 0; i < plan.num_rows(); ++i) {
        const auto& row = plan.seqs[i];
        if (row.is_new) id_of[row.seq] = std::string(plan.request_id(i));
        for (int64_t k = 0; k < row.num_tokens; ++k) {
          got[id_of.at(row.seq)][row.start_pos + k] = all[row.token_offset + k].clone();
        }
      }
    });
    std::vector<EngineRequest> reqs;
    std::vector<torch::Tensor> prompts, greedy;
    for (int k = 0; k < m.prompts; ++k) {
      prompts.push_back(testing::read_tensor(*ref, "prompt." + std::to_string(k)));
      greedy.push_back(testing::read_tensor(*ref, "greedy." + std::to_string(k)));
      reqs.push_back(testing::greedy_request(std::to_string(k), testing::to_ids(prompts[k]),
                                             greedy[k].numel()));
    }
    const auto results = generate(core, reqs);
    float worst = 0;
    for (int k = 0; k < m.prompts; ++k) {
      const auto hf = testing::read_tensor(*ref, "logits." + std::to_string(k));
      ASSERT_EQ(results[k].finish_reason, "length") << results[k].error;
      const auto& mine = got[std::to_string(k)];
      for (int64_t p = 0; p < hf.size(0); ++p) {
        ASSERT_TRUE(mine.count(p)) << "prompt " << k << " position " << p << " never computed";
        worst = std::max(worst, (mine.at(p) - hf[p]).abs().max().item<float>());
      }
      EXPECT_EQ(results[k].finish_reason, "length") << results[k].error;
      EXPECT_EQ(results[k].output_ids, testing::to_ids(greedy[k]))
          << "prompt " << k << " (transformers' smallest top-2 margin "
          << testing::read_tensor(*ref, "margin." + std::to_string(k)).item<float>() << ")";
    }
    EXPECT_LE(worst, 1e-4f) << "largest |logit - transformers' logit|";
    std::printf("[ %-15s ] max |logit diff| vs transformers %.3g over %d prompts\n", m.name.c_str(),
                worst, m.prompts);
    ++checked;
  }
  EXPECT_GE(checked, 8);
}

// prompt_logprobs through the product path without an observer (the sampled rows' logits plus the
// scored prompt rows), with chunked prefill (16-token steps, prompts longer) and prefix caching
// on: each prompt runs first without prompt_logprobs, so its blocks are cached, then with them,
// and must still be scored whole. Every prompt token's logprob within 2e-4 of transformers'
// log_softmax, its rank transformers' (up to logprobs within 2e-4 of it), and the top 5 the
// tokens transformers ranks first (up to the same ties).
TEST_F(HfReference, PromptLogprobsMatchTransformers) {
  torch::NoGradGuard no_grad;
  int checked = 0;
  for (const HfModel& m : models_) {
    if (!m.reference) continue;
    SCOPED_TRACE(m.name);
    const auto ref = models::SafetensorsFile::open(m.dir + "/reference.safetensors");
    EngineCore core(engine_config(m), nullptr, nullptr);
    std::vector<EngineRequest> warm, scored;
    std::vector<torch::Tensor> prompts;
    for (int k = 0; k < m.prompts; ++k) {
      prompts.push_back(testing::read_tensor(*ref, "prompt." + std::to_string(k)));
      warm.push_back(
          testing::greedy_request("w" + std::to_string(k), testing::to_ids(prompts[k]), 1));
      scored.push_back(
          testing::greedy_request("s" + std::to_string(k), testing::to_ids(prompts[k]), 2));
      scored.back().params.prompt_logprobs = 5;
    }
    generate(core, warm);
    const auto results = generate(core, scored);
    float worst = 0;
    for (int k = 0; k < m.prompts; ++k) {
      ASSERT_EQ(results[k].finish_reason, "length") << results[k].error;
      const auto ids = testing::to_ids(prompts[k]);
      const auto hf = torch::log_softmax(
          testing::read_tensor(*ref, "logits." + std::to_string(k)).to(torch::kFloat64), -1);
      const auto& got = results[k].prompt_logprobs;
      ASSERT_EQ(got.size() + 1, ids.size()) << "prompt " << k;
      for (size_t p = 0; p + 1 < ids.size(); ++p) {
        const auto row = hf[static_cast<int64_t>(p)];
        const double want = row[ids[p + 1]].item<double>();
        EXPECT_EQ(got[p].id, ids[p + 1]);
        worst = std::max(worst, static_cast<float>(std::abs(got[p].logprob - want)));
        const int64_t above = (row > want + 2e-4).sum().item<int64_t>();
        const int64_t near = (row > want - 2e-4).sum().item<int64_t>();
        EXPECT_TRUE(got[p].rank >= above + 1 && got[p].rank <= near)
            << "prompt " << k << " token " << p + 1 << " rank " << got[p].rank << " vs ["
            << above + 1 << ", " << near << "]";
        ASSERT_EQ(got[p].top.size(), 5u);
        const auto hf_top = std::get<0>(row.topk(5));
        for (int j = 0; j < 5; ++j) {
          EXPECT_NEAR(row[got[p].top[j].id].item<double>(), hf_top[j].item<double>(), 2e-4)
              << "prompt " << k << " token " << p + 1 << " top " << j;
          EXPECT_NEAR(got[p].top[j].logprob, hf_top[j].item<double>(), 2e-4);
        }
      }
    }
    EXPECT_LE(worst, 2e-4f) << "largest |prompt logprob - transformers'|";
    std::printf("[ %-15s ] max |prompt logprob diff| vs transformers %.3g over %d prompts\n",
                m.name.c_str(), worst, m.prompts);
    ++checked;
  }
  EXPECT_GE(checked, 8);
}

}  // namespace
}  // namespace tessera::engine

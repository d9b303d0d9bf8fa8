// Token sampling on the leader rank, over the full-vocabulary logits of the rows that sample
// (one per request, ScheduledSeq::sample). Vectorised over the batch: per-row parameters become
// [rows, 1] tensors; only building the token-history index lists loops in C++ (over tokens,
// never over the vocabulary).
//
// Order of operations (vLLM v1's documented order, vllm/v1/sample/sampler.py):
//   0. logprobs, when asked: log_softmax of the raw logits in float32 (OpenAI returns the
//      model's distribution, so no penalty, temperature or truncation touches them);
//   1. float32, then allowed_token_ids and a guided-decoding constraint (every id a row does not
//      allow gets -inf), bad_words (the last id of each sequence whose other ids end the
//      generated tokens gets -inf), then logit_bias: each (id, bias) of the request added to
//      that id's logit (vLLM applies it among its logits processors, before the penalties);
//   2. min_tokens: while fewer than min_tokens are generated, the stop ids and (unless
//      ignore_eos) the eos ids get -inf;
//   3. penalties: repetition (Hugging Face: every id in prompt ∪ output once, logit < 0 → ×p,
//      else ÷p), then frequency and presence (OpenAI: generated tokens only,
//      logit -= f·count + p·[count > 0]);
//   4. greedy rows (temperature < 1e-5) take the argmax here;
//   5. temperature: logits / T;
//   6. min_p: tokens with p < min_p · max p get -inf;
//   7. top-k, then top-p over what top-k kept (keep the most likely tokens while the mass before
//      them is < top_p; the most likely always stays);
//   8. draw: inverse CDF (float64 cumulative sum in vocabulary order) at one uniform u per row.
//      Unseeded rows take u from the sampler's own stream; a seeded row takes
//      u = seeded_uniform(seed, position) with position = prompt + output length, so it gives the
//      same token whatever else is in the batch, its row, the TP size or a preemption.
// A row whose logits hold NaN or +inf gets token -1 (the engine fails that request, it never
// becomes a plausible token).
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "runtime/scheduler/sampling_params.h"

namespace tessera::engine {

struct SamplerRow {
  const scheduler::SamplingParams* params = nullptr;  // not null
  std::span<const int32_t> prompt_ids;
  std::span<const int32_t> output_ids;  // generated before this step
};

struct TokenLogprob {
  int32_t id = 0;
  float logprob = 0;
};

struct SamplerOutput {
  std::vector<int32_t> token_ids;  // [rows]; -1 where the logits held NaN / +inf
  // When some row asks for logprobs (params.logprobs >= 0), else empty: [rows] raw logprob of
  // the chosen token, and [rows] lists of the params.logprobs most likely tokens (most likely
  // first; empty for rows that asked for none).
  std::vector<float> logprobs;
  std::vector<std::vector<TokenLogprob>> top_logprobs;
};

struct SamplerConfig {
  std::vector<int32_t> eos_token_ids;  // masked before min_tokens (unless ignore_eos)
  uint64_t seed = 0;                   // the stream of unseeded rows
};

class Sampler {
 public:
  explicit Sampler(SamplerConfig config);

  // logits: [rows.size(), vocab], float32 / float16 / bfloat16, any device; not modified.
  SamplerOutput sample(const torch::Tensor& logits, std::span<const SamplerRow> rows);

  // The logits the draw (step 8) uses, float32 [rows, vocab] with -inf for excluded tokens:
  // steps 1-7 (greedy rows: steps 1-3). For tests and for callers that want processed logprobs.
  torch::Tensor processed_logits(const torch::Tensor& logits,
                                 std::span<const SamplerRow> rows) const;

  // The uniform in [0, 1) of a seeded row at `position`: a counter-based hash (SplitMix64), the
  // same on every machine.
  static double seeded_uniform(uint64_t seed, int64_t position);

 private:
  // Steps 1-3 on a float32 copy.
  torch::Tensor penalized(const torch::Tensor& logits, std::span<const SamplerRow> rows) const;
  // Steps 5-7 on the rows' penalized logits (greedy rows pass through with temperature 1).
  torch::Tensor truncated(torch::Tensor x, std::span<const SamplerRow> rows) const;

  SamplerConfig config_;
  std::mt19937_64 rng_;
};

}  // namespace tessera::engine

// Per-request sampling and stopping parameters, as the OpenAI API and vLLM name them. Plain data
// with one validate() that names the offending field and value. The scheduler reads the stopping
// fields (max_tokens, min_tokens, ignore_eos, stop_token_ids); the sampler (runtime/engine/
// sampler.h) reads the sampling fields; the output processor reads `stop` and
// include_stop_str_in_output. Torch-free.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace tessera::scheduler {

// A constraint on a request's next token given the tokens it generated so far (vLLM's guided
// decoding; serving's guided.h makes them). The sampler calls it on the leader's engine thread
// and keeps only the ids it returns (intersected with allowed_token_ids); it must return at
// least one id while the request runs.
class TokenConstraint {
 public:
  virtual ~TokenConstraint() = default;
  virtual std::vector<int32_t> allowed(std::span<const int32_t> output_ids) const = 0;
};

struct SamplingParams {
  // ---- sampling (sampler.h applies them in the order written there) ----
  // OpenAI's logit_bias: (token id, bias) pairs added to those ids' logits first, before the
  // min_tokens mask, the penalties and temperature (-100 / 100 in practice ban / force a token).
  // Ids >= 0 (and inside the vocabulary: the engine checks), biases in [-100, 100].
  std::vector<std::pair<int32_t, float>> logit_bias;
  // vLLM's allowed_token_ids: when not empty, every other id's logit is -inf, first of all (so
  // only these ids can be drawn or be the argmax; logprobs stay the model's raw distribution).
  // Ids >= 0 (and inside the vocabulary: the engine checks); duplicates are harmless.
  std::vector<int32_t> allowed_token_ids;
  // vLLM's bad_words, as token id sequences (serving tokenizes the words): when the generated
  // tokens end with a sequence's all-but-last ids (none for a one-token word), its last id gets
  // -inf. Only generated tokens count, not the prompt (as vLLM). Each sequence non-empty, ids >= 0.
  std::vector<std::vector<int32_t>> bad_words_ids;
  // Guided decoding (null = none): only the ids it allows for this step, before bad_words.
  std::shared_ptr<const TokenConstraint> constraint;
  // Divides the logits. 0 (anything below kGreedyTemperature) = greedy: argmax of the logits
  // after min_tokens masking and penalties; top_k / top_p / min_p / seed are then ignored.
  float temperature = 1.0f;
  int32_t top_k = 0;   // keep the k most likely tokens; 0 or -1 = off
  float top_p = 1.0f;  // keep the smallest set of most likely tokens with mass >= top_p; (0, 1]
  float min_p = 0.0f;  // drop tokens with p < min_p * max p (after temperature); [0, 1]
  // Hugging Face semantics (RepetitionPenaltyLogitsProcessor): every id in prompt ∪ output, once
  // however often it occurs: logit < 0 → logit * penalty, else logit / penalty. 1 = off; > 0.
  float repetition_penalty = 1.0f;
  // OpenAI semantics, over the generated tokens only (not the prompt):
  // logit -= presence_penalty * [count > 0] + frequency_penalty * count. 0 = off; [-2, 2].
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  // Seeded requests draw from their own stream keyed by (seed, position): the same tokens
  // whatever else is in the batch, its position in it, or the tensor-parallel size.
  std::optional<uint64_t> seed;
  // Log-probabilities to return: -1 = none, 0 = the sampled token's only, n = it plus the n most
  // likely tokens. Always of the model's raw distribution (log_softmax of the logits before
  // penalties, temperature and truncation), as OpenAI returns them. [-1, kMaxLogprobs].
  int32_t logprobs = -1;
  // vLLM's prompt_logprobs: -1 = none, n = for each prompt token after the first, its raw
  // log-probability given the tokens before it, its rank, and the n most likely tokens there.
  // Such a request reads nothing from the prefix cache (its prompt must be computed to score it,
  // as vLLM). [-1, kMaxLogprobs].
  int32_t prompt_logprobs = -1;

  // ---- stopping (the scheduler checks the ids, the output processor the strings) ----
  int64_t max_tokens = 16;  // most tokens to generate; >= 1 (also clipped at max_model_len)
  int64_t min_tokens = 0;   // no eos / stop id ends the request before this many; [0, max_tokens]
  bool ignore_eos = false;  // the model's eos ids do not stop the request (stop_token_ids still do)
  std::vector<int32_t> stop_token_ids;  // generated ids that end the request (kept in the output)
  std::vector<std::string> stop;        // stop strings (non-empty), applied to the decoded text
  bool include_stop_str_in_output = false;  // keep the matched stop string in the text
  bool skip_special_tokens = true;          // for the detokenizer

  static constexpr float kGreedyTemperature = 1e-5f;
  static constexpr int32_t kMaxLogprobs = 20;

  bool greedy() const { return temperature < kGreedyTemperature; }
  // Throws tessera::Error naming the first bad field and its value, e.g.
  // "top_p must lie in (0, 1], got 1.5".
  void validate() const;
};

}  // namespace tessera::scheduler

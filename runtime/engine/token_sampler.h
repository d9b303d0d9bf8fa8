// The engine's seam to the sampler: logits of a step's sampling rows in, one token per row out.
// GreedySampler (argmax) stands in until the full sampler (runtime/engine/sampler.h: temperature,
// top-k/p, min-p, penalties, seeds, logprobs) is wired behind this interface; requests it cannot
// honour are refused at admission with one line, never sampled differently.
#pragma once

#include <torch/types.h>

#include <span>
#include <string>
#include <vector>

#include "runtime/scheduler/request.h"

namespace tessera::engine {

class TokenSampler {
 public:
  virtual ~TokenSampler() = default;
  // "" when the sampler can honour `params`, else one line naming the field and value.
  virtual std::string check(const scheduler::SamplingParams& params) const = 0;
  // logits [n, vocab] float32, rows in the plan's sampling order; requests[i] is row i's request.
  virtual std::vector<int32_t> sample(const torch::Tensor& logits,
                                      std::span<const scheduler::Request* const> requests) = 0;
};

class GreedySampler final : public TokenSampler {
 public:
  std::string check(const scheduler::SamplingParams& params) const override;
  std::vector<int32_t> sample(const torch::Tensor& logits,
                              std::span<const scheduler::Request* const> requests) override;
};

}  // namespace tessera::engine

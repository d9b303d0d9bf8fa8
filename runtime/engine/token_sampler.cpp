#include "runtime/engine/token_sampler.h"

#include "common/error.h"

namespace tessera::engine {

std::string GreedySampler::check(const scheduler::SamplingParams& p) const {
  auto refuse = [](const std::string& field, const std::string& value) {
    return field + "=" + value + " needs the sampler, which is not in this build yet (greedy only)";
  };
  if (!p.greedy()) return refuse("temperature", std::to_string(p.temperature));
  if (p.repetition_penalty != 1.0f) {
    return refuse("repetition_penalty", std::to_string(p.repetition_penalty));
  }
  if (p.presence_penalty != 0.0f)
    return refuse("presence_penalty", std::to_string(p.presence_penalty));
  if (p.frequency_penalty != 0.0f) {
    return refuse("frequency_penalty", std::to_string(p.frequency_penalty));
  }
  if (p.logprobs >= 0) return refuse("logprobs", std::to_string(p.logprobs));
  return "";
}

std::vector<int32_t> GreedySampler::sample(const torch::Tensor& logits,
                                           std::span<const scheduler::Request* const> requests) {
  TESSERA_CHECK(logits.dim() == 2 && logits.size(0) == static_cast<int64_t>(requests.size()),
                "logits must be [", requests.size(), ", vocab], got ", logits.sizes());
  auto ids = logits.argmax(1).to(torch::kCPU).to(torch::kInt).contiguous();
  return std::vector<int32_t>(ids.data_ptr<int32_t>(), ids.data_ptr<int32_t>() + ids.numel());
}

}  // namespace tessera::engine

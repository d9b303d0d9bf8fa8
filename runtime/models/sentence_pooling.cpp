#include "runtime/models/sentence_pooling.h"

#include <cmath>

#include "common/error.h"

namespace tessera::models {

torch::Tensor pool_sentences(const torch::Tensor& states, const torch::Tensor& cu_seqlens,
                             const PoolingConfig& config,
                             const std::vector<int64_t>& prompt_lengths) {
  TESSERA_CHECK(states.dim() == 2, "pooling: states must be [T, hidden], got ", states.sizes());
  TESSERA_CHECK(cu_seqlens.device().is_cpu() && cu_seqlens.scalar_type() == torch::kInt,
                "pooling: cu_seqlens must be CPU int32");
  const int64_t b = cu_seqlens.numel() - 1, h = states.size(1);
  TESSERA_CHECK(prompt_lengths.empty() || static_cast<int64_t>(prompt_lengths.size()) == b,
                "pooling: ", prompt_lengths.size(), " prompt lengths for ", b, " inputs");
  TESSERA_CHECK(config.modes() > 0, "pooling: no mode enabled");
  const auto* cu = cu_seqlens.data_ptr<int32_t>();
  // Rows [first, last) of each sequence that pooling reads (the prompt left out when asked).
  std::vector<int64_t> begin(b), end(b);
  for (int64_t s = 0; s < b; ++s) {
    const int64_t skip = config.include_prompt || prompt_lengths.empty()
                             ? 0
                             : std::max<int64_t>(0, prompt_lengths[s]);
    begin[s] = std::min<int64_t>(cu[s] + skip, cu[s + 1]);
    end[s] = cu[s + 1];
  }
  // Which sequence each token belongs to, and its weight in the mean / weighted mean (0 = masked).
  const int64_t t = states.size(0);
  std::vector<int64_t> seg(t, 0);
  std::vector<float> mask(t, 0.f), position_weight(t, 0.f);
  for (int64_t s = 0; s < b; ++s) {
    for (int64_t i = cu[s]; i < cu[s + 1]; ++i) {
      seg[i] = s;
      const bool on = i >= begin[s];
      mask[i] = on ? 1.f : 0.f;
      position_weight[i] = on ? static_cast<float>(i - cu[s] + 1) : 0.f;  // 1-based position
    }
  }
  const auto dev = states.device();
  auto seg_t = torch::tensor(seg, torch::kLong).to(dev);
  auto mask_t = torch::tensor(mask).to(dev).unsqueeze(1);
  std::vector<torch::Tensor> parts;
  if (config.cls) {
    std::vector<int64_t> first(b);
    for (int64_t s = 0; s < b; ++s) first[s] = cu[s];
    parts.push_back(states.index_select(0, torch::tensor(first, torch::kLong).to(dev)));
  }
  if (config.max) {
    auto out = torch::empty({b, h}, states.options());
    for (int64_t s = 0; s < b; ++s) {
      if (end[s] > begin[s]) {
        out[s] = std::get<0>(states.narrow(0, begin[s], end[s] - begin[s]).max(0));
      } else {
        out[s].fill_(-1e9);
      }
    }
    parts.push_back(out);
  }
  if (config.mean || config.mean_sqrt_len) {
    auto sums = torch::zeros({b, h}, states.options()).index_add_(0, seg_t, states * mask_t);
    std::vector<float> counts(b);
    for (int64_t s = 0; s < b; ++s) {
      counts[s] = std::max(static_cast<float>(end[s] - begin[s]), 1e-9f);
    }
    auto n = torch::tensor(counts).to(dev).unsqueeze(1);
    if (config.mean) parts.push_back(sums / n);
    if (config.mean_sqrt_len) parts.push_back(sums / n.sqrt());
  }
  if (config.weighted_mean) {
    auto w = torch::tensor(position_weight).to(dev).unsqueeze(1);
    auto sums = torch::zeros({b, h}, states.options()).index_add_(0, seg_t, states * w);
    std::vector<float> totals(b);
    for (int64_t s = 0; s < b; ++s) {
      float sum = 0.f;
      for (int64_t i = begin[s]; i < end[s]; ++i) sum += static_cast<float>(i - cu[s] + 1);
      totals[s] = std::max(sum, 1e-9f);
    }
    parts.push_back(sums / torch::tensor(totals).to(dev).unsqueeze(1));
  }
  if (config.last_token) {
    auto out = torch::zeros({b, h}, states.options());
    for (int64_t s = 0; s < b; ++s) {
      if (end[s] > begin[s]) out[s] = states[end[s] - 1];
    }
    parts.push_back(out);
  }
  return parts.size() == 1 ? parts[0] : torch::cat(parts, 1);
}

torch::Tensor l2_normalize(const torch::Tensor& x) {
  return x / x.norm(2, 1, /*keepdim=*/true).clamp_min(1e-12);
}

}  // namespace tessera::models

#include "runtime/models/layers/encoder_attention.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <vector>

#include "common/error.h"
#include "kernels/ops/cluster_attention_ops.h"
#include "kernels/ops/varlen_attention_ops.h"

namespace tessera::models {

namespace {

class DenseEncoderAttention final : public EncoderAttention {
 public:
  torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                       const torch::Tensor& cu_seqlens, int64_t window, double scale) override {
    auto [out, lse] =
        kernels::varlen_attention(q, k, v, cu_seqlens, {.scale = scale, .window = window});
    return out.view({q.size(0), q.size(1) * q.size(2)});
  }
};

class ClusterEncoderAttention final : public EncoderAttention {
 public:
  explicit ClusterEncoderAttention(EncoderAttentionChoice choice) : choice_(choice) {}

  torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                       const torch::Tensor& cu_seqlens, int64_t window, double scale) override {
    TESSERA_CHECK(q.size(1) == k.size(1), "cluster attention needs as many key heads as query ",
                  "heads, got ", q.size(1), " and ", k.size(1));
    const auto& [idx, mask] = neighbours(cu_seqlens, window, q.device());
    kernels::ClusterAttentionInputs in;
    // [T, H, D] -> [1, H, T, D] views; the kernel takes any strides.
    in.q = q.permute({1, 0, 2}).unsqueeze(0);
    in.k = k.permute({1, 0, 2}).unsqueeze(0);
    in.v = v.permute({1, 0, 2}).unsqueeze(0);
    in.idx = idx;
    in.mask = mask;
    in.scale = scale;
    auto [out, lse] = kernels::cluster_attention_forward(in);
    // [1, H, T, D] -> [T, H * D]
    return out.squeeze(0).permute({1, 0, 2}).reshape({q.size(0), q.size(1) * q.size(2)});
  }

 private:
  // The lists depend on the batch's lengths and the window only: made once per batch and window.
  const std::pair<torch::Tensor, torch::Tensor>& neighbours(const torch::Tensor& cu_seqlens,
                                                            int64_t window, torch::Device device) {
    std::vector<int32_t> key(cu_seqlens.data_ptr<int32_t>(),
                             cu_seqlens.data_ptr<int32_t>() + cu_seqlens.numel());
    if (key != cached_cu_) {
      cache_.clear();
      cached_cu_ = key;
    }
    auto it = cache_.find(window);
    if (it == cache_.end()) {
      auto lists =
          cluster_neighbours(cu_seqlens, choice_.cluster_size, choice_.nearest_clusters, window);
      lists.first = lists.first.to(device);
      lists.second = lists.second.to(device);
      it = cache_.emplace(window, std::move(lists)).first;
    }
    return it->second;
  }

  EncoderAttentionChoice choice_;
  std::vector<int32_t> cached_cu_;
  std::map<int64_t, std::pair<torch::Tensor, torch::Tensor>> cache_;
};

}  // namespace

std::unique_ptr<EncoderAttention> make_encoder_attention(const EncoderAttentionChoice& choice) {
  if (choice.kind == EncoderAttentionChoice::Kind::kCluster) {
    TESSERA_CHECK(choice.cluster_size >= 1 && choice.nearest_clusters >= 1,
                  "cluster attention needs cluster_size >= 1 and nearest_clusters >= 1, got ",
                  choice.cluster_size, " and ", choice.nearest_clusters);
    return std::make_unique<ClusterEncoderAttention>(choice);
  }
  return std::make_unique<DenseEncoderAttention>();
}

std::pair<torch::Tensor, torch::Tensor> cluster_neighbours(const torch::Tensor& cu_seqlens,
                                                           int64_t cluster_size,
                                                           int64_t nearest_clusters,
                                                           int64_t window) {
  TESSERA_CHECK(cu_seqlens.device().is_cpu() && cu_seqlens.scalar_type() == torch::kInt,
                "cu_seqlens must be CPU int32");
  const auto* cu = cu_seqlens.data_ptr<int32_t>();
  const int64_t num_seqs = cu_seqlens.numel() - 1;
  const int64_t total = num_seqs >= 0 ? cu[num_seqs] : 0;
  std::vector<std::vector<int64_t>> lists(total);
  size_t longest = 1;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const int64_t start = cu[s], len = cu[s + 1] - cu[s];
    const int64_t nc = (len + cluster_size - 1) / cluster_size;
    std::vector<double> centre(nc);
    for (int64_t c = 0; c < nc; ++c) {
      const int64_t first = c * cluster_size, last = std::min(len, first + cluster_size) - 1;
      centre[c] = 0.5 * static_cast<double>(first + last);
    }
    std::vector<int64_t> order(nc);
    for (int64_t c = 0; c < nc; ++c) {
      std::iota(order.begin(), order.end(), 0);
      const int64_t k = std::min(nc, nearest_clusters);
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int64_t a, int64_t b) {
        const double da = std::fabs(centre[a] - centre[c]), db = std::fabs(centre[b] - centre[c]);
        return da != db ? da < db : a < b;
      });
      std::vector<int64_t> chosen(order.begin(), order.begin() + k);
      std::sort(chosen.begin(), chosen.end());
      const int64_t first = c * cluster_size, last = std::min(len, first + cluster_size);
      for (int64_t i = first; i < last; ++i) {
        auto& list = lists[start + i];
        for (int64_t cc : chosen) {
          const int64_t j0 = cc * cluster_size, j1 = std::min(len, j0 + cluster_size);
          for (int64_t j = j0; j < j1; ++j) {
            if (window < 0 || std::llabs(i - j) <= window) list.push_back(start + j);
          }
        }
        longest = std::max(longest, list.size());
      }
    }
  }
  const auto m = static_cast<int64_t>(longest);
  auto idx = torch::zeros({1, total, m}, torch::kLong);
  auto mask = torch::zeros({1, 1, total, m}, torch::kBool);
  auto* ip = idx.data_ptr<int64_t>();
  auto* mp = mask.data_ptr<bool>();
  for (int64_t n = 0; n < total; ++n) {
    for (size_t j = 0; j < lists[n].size(); ++j) {
      ip[n * m + static_cast<int64_t>(j)] = lists[n][j];
      mp[n * m + static_cast<int64_t>(j)] = true;
    }
  }
  return {idx, mask};
}

}  // namespace tessera::models

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/sparse_decode/sparse_attention.h"

namespace tessera::kernels {

void sparse_decode_ref(const SparseDecodeView& a) {
  const PagedKv& c = a.kv;
  const int group = a.num_q_heads / c.num_kv_heads;
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  std::vector<double> scores(a.max_entries);
  std::vector<double> acc(c.head_dim_v);
  for (int s = 0; s < a.num_seqs; ++s) {
    const int32_t* table = a.block_tables + static_cast<int64_t>(s) * a.max_blocks_per_seq;
    for (int h = 0; h < a.num_q_heads; ++h) {
      const int kh = h / group;
      const int64_t list = static_cast<int64_t>(s) * c.num_kv_heads + kh;
      const int32_t* idx = a.idx + list * a.max_entries;
      const int n = a.counts[list];
      const float* q = a.q + s * a.q_stride[0] + h * a.q_stride[1];
      double max_score = kNegInf;
      for (int e = 0; e < n; ++e) {
        const int64_t p = idx[e];
        const int64_t block = table[p / c.block_size];
        const int slot = static_cast<int>(p % c.block_size);
        const void* k = c.k_row(block, slot, kh);
        const float ks = c.k_scale_at(block, slot, kh);
        double dot = 0.0;
        for (int d = 0; d < c.head_dim_k; ++d) {
          dot += static_cast<double>(q[d]) * kv_load(c.dtype, k, d, ks);
        }
        scores[e] = dot * a.scale;
        max_score = std::max(max_score, scores[e]);
      }
      float* o = a.out + (static_cast<int64_t>(s) * a.num_q_heads + h) * c.head_dim_v;
      float* lse = a.lse ? a.lse + static_cast<int64_t>(s) * a.num_q_heads + h : nullptr;
      if (n == 0) {  // empty list: zeros, lse = -inf
        for (int d = 0; d < c.head_dim_v; ++d) o[d] = 0.0f;
        if (lse) *lse = -std::numeric_limits<float>::infinity();
        continue;
      }
      double denom = 0.0;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int e = 0; e < n; ++e) {
        const double w = std::exp(scores[e] - max_score);
        denom += w;
        const int64_t p = idx[e];
        const int64_t block = table[p / c.block_size];
        const int slot = static_cast<int>(p % c.block_size);
        const void* v = c.v_row(block, slot, kh);
        const float vs = c.v_scale_at(block, slot, kh);
        for (int d = 0; d < c.head_dim_v; ++d) acc[d] += w * kv_load(c.dtype, v, d, vs);
      }
      for (int d = 0; d < c.head_dim_v; ++d) o[d] = static_cast<float>(acc[d] / denom);
      if (lse) *lse = static_cast<float>(max_score + std::log(denom));
    }
  }
}

}  // namespace tessera::kernels

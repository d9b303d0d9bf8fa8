#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/paged/paged_attention.h"

namespace tessera::kernels {

void paged_attention_ref(const PagedAttentionView& a) {
  const PagedKv& c = a.kv;
  const int group = a.num_q_heads / c.num_kv_heads;
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  std::vector<double> scores;
  std::vector<double> acc(c.head_dim_v);
  for (int s = 0; s < a.num_seqs; ++s) {
    const int64_t len = a.seq_lens[s];
    const int64_t q_begin = a.q_starts[s];
    const int64_t q_len = a.q_starts[s + 1] - q_begin;
    const int32_t* table = a.block_tables + static_cast<int64_t>(s) * a.max_blocks_per_seq;
    scores.assign(len, kNegInf);
    for (int64_t i = 0; i < q_len; ++i) {
      const int64_t t = len - q_len + i;
      const int64_t row = q_begin + i;
      for (int h = 0; h < a.num_q_heads; ++h) {
        const int kh = h / group;
        const float* q = a.q + row * a.q_stride[0] + h * a.q_stride[1];
        double max_score = kNegInf;
        for (int64_t p = 0; p < len; ++p) {
          const bool visible = p <= t && (a.window <= 0 || t - p < a.window) &&
                               (a.chunk <= 0 || p / a.chunk == t / a.chunk);
          scores[p] = kNegInf;
          if (!visible) continue;
          const int64_t block = table[p / c.block_size];
          const int slot = static_cast<int>(p % c.block_size);
          const void* k = c.k_row(block, slot, kh);
          const float ks = c.k_scale_at(block, slot, kh);
          double dot = 0.0;
          for (int d = 0; d < c.head_dim_k; ++d) {
            dot += static_cast<double>(q[d]) * kv_load(c.dtype, k, d, ks);
          }
          scores[p] = dot * a.scale;
          if (a.softcap > 0) scores[p] = a.softcap * std::tanh(scores[p] / a.softcap);
          max_score = std::max(max_score, scores[p]);
        }
        float* o = a.out + (row * a.num_q_heads + h) * c.head_dim_v;
        float* lse = a.lse ? a.lse + row * a.num_q_heads + h : nullptr;
        if (max_score == kNegInf) {
          for (int d = 0; d < c.head_dim_v; ++d) o[d] = 0.0f;
          if (lse) *lse = -std::numeric_limits<float>::infinity();
          continue;
        }
        double denom = 0.0;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t p = 0; p < len; ++p) {
          if (scores[p] == kNegInf) continue;
          const double w = std::exp(scores[p] - max_score);
          denom += w;
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
}

}  // namespace tessera::kernels

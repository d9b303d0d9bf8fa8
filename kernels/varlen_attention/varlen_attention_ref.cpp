#include <cmath>
#include <limits>
#include <vector>

#include "common/error.h"
#include "kernels/varlen_attention/varlen_attention.h"

namespace tessera::kernels {

void varlen_attention_check(const VarlenAttentionView& v) {
  TESSERA_CHECK(v.num_seqs >= 0, "num_seqs must be >= 0, got ", v.num_seqs);
  TESSERA_CHECK(v.total >= 0, "total tokens must be >= 0, got ", v.total);
  TESSERA_CHECK(v.head_dim > 0, "head_dim must be positive, got ", v.head_dim);
  TESSERA_CHECK(v.num_kv_heads > 0 && v.num_q_heads > 0 && v.num_q_heads % v.num_kv_heads == 0,
                "num_q_heads=", v.num_q_heads,
                " must be a positive multiple of num_kv_heads=", v.num_kv_heads);
  TESSERA_CHECK(v.cu_seqlens != nullptr, "cu_seqlens is required");
  TESSERA_CHECK(v.cu_seqlens[0] == 0, "cu_seqlens[0] must be 0, got ", v.cu_seqlens[0]);
  for (int s = 0; s < v.num_seqs; ++s) {
    TESSERA_CHECK(v.cu_seqlens[s + 1] >= v.cu_seqlens[s], "cu_seqlens must be non-decreasing, got ",
                  "cu_seqlens[", s, "]=", v.cu_seqlens[s], " > cu_seqlens[", s + 1,
                  "]=", v.cu_seqlens[s + 1]);
  }
  TESSERA_CHECK(v.cu_seqlens[v.num_seqs] == v.total, "cu_seqlens[", v.num_seqs,
                "]=", v.cu_seqlens[v.num_seqs], " must equal the token count ", v.total);
}

void varlen_attention_ref(const VarlenAttentionView& v) {
  varlen_attention_check(v);
  const int group = v.num_q_heads / v.num_kv_heads;
  const int d = v.head_dim;
  std::vector<double> scores, acc(d);
  for (int s = 0; s < v.num_seqs; ++s) {
    const int64_t start = v.cu_seqlens[s], len = v.cu_seqlens[s + 1] - start;
    scores.resize(len);
    for (int64_t i = 0; i < len; ++i) {
      int64_t first = 0, last = 0;
      varlen_visible(i, len, v.window, &first, &last);
      for (int h = 0; h < v.num_q_heads; ++h) {
        const int kh = h / group;
        const float* q = v.q + (start + i) * v.q_stride[0] + h * v.q_stride[1];
        double m = -std::numeric_limits<double>::infinity();
        for (int64_t j = first; j <= last; ++j) {
          const float* k = v.k + (start + j) * v.k_stride[0] + kh * v.k_stride[1];
          double dot = 0;
          for (int e = 0; e < d; ++e) dot += static_cast<double>(q[e]) * k[e];
          scores[j] = dot * v.scale;
          m = std::max(m, scores[j]);
        }
        double sum = 0;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t j = first; j <= last; ++j) {
          const double p = std::exp(scores[j] - m);
          sum += p;
          const float* vr = v.v + (start + j) * v.v_stride[0] + kh * v.v_stride[1];
          for (int e = 0; e < d; ++e) acc[e] += p * vr[e];
        }
        float* o = v.out + ((start + i) * v.num_q_heads + h) * d;
        for (int e = 0; e < d; ++e) o[e] = static_cast<float>(acc[e] / sum);
        if (v.lse != nullptr) {
          v.lse[(start + i) * v.num_q_heads + h] = static_cast<float>(m + std::log(sum));
        }
      }
    }
  }
}

}  // namespace tessera::kernels

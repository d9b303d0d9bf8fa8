#include <cmath>
#include <limits>
#include <vector>

#include "kernels/attention/attention.h"

namespace tessera::kernels {

void attention_ref(const AttentionView& a) {
  const int group = a.num_q_heads / a.num_kv_heads;
  const int d = a.head_dim;
  std::vector<double> scores(a.kv_len);
  std::vector<double> acc(d);
  for (int b = 0; b < a.batch; ++b) {
    for (int t = 0; t < a.q_len; ++t) {
      const int64_t qp = a.q_pos[static_cast<int64_t>(b) * a.q_len + t];
      for (int h = 0; h < a.num_q_heads; ++h) {
        const int kh = h / group;
        const float* q = a.q + b * a.q_stride[0] + t * a.q_stride[1] + h * a.q_stride[2];
        double max_score = -std::numeric_limits<double>::infinity();
        for (int s = 0; s < a.kv_len; ++s) {
          const int64_t kp = a.k_pos[static_cast<int64_t>(b) * a.kv_len + s];
          const bool visible = kp >= 0 && kp <= qp && (a.window <= 0 || qp - kp < a.window);
          if (!visible) {
            scores[s] = -std::numeric_limits<double>::infinity();
            continue;
          }
          const float* k = a.k + b * a.k_stride[0] + s * a.k_stride[1] + kh * a.k_stride[2];
          double dot = 0.0;
          for (int i = 0; i < d; ++i) dot += static_cast<double>(q[i]) * k[i];
          scores[s] = dot * a.scale;
          max_score = std::max(max_score, scores[s]);
        }
        float* o = a.out + ((static_cast<int64_t>(b) * a.q_len + t) * a.num_q_heads + h) * d;
        float* lse =
            a.lse ? a.lse + (static_cast<int64_t>(b) * a.num_q_heads + h) * a.q_len + t : nullptr;
        if (max_score == -std::numeric_limits<double>::infinity()) {
          for (int i = 0; i < d; ++i) o[i] = 0.0f;
          if (lse) *lse = -std::numeric_limits<float>::infinity();
          continue;
        }
        double denom = 0.0;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int s = 0; s < a.kv_len; ++s) {
          if (scores[s] == -std::numeric_limits<double>::infinity()) continue;
          const double p = std::exp(scores[s] - max_score);
          denom += p;
          const float* v = a.v + b * a.v_stride[0] + s * a.v_stride[1] + kh * a.v_stride[2];
          for (int i = 0; i < d; ++i) acc[i] += p * v[i];
        }
        for (int i = 0; i < d; ++i) o[i] = static_cast<float>(acc[i] / denom);
        if (lse) *lse = static_cast<float>(max_score + std::log(denom));
      }
    }
  }
}

}  // namespace tessera::kernels

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/merge/lse_merge.h"

namespace tessera::kernels {

void lse_merge_cpu(const LseMergeView& m) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const int64_t d = m.head_dim;
#pragma omp parallel for schedule(static) if (m.rows * m.num_parts * d > 32768)
  for (int64_t r = 0; r < m.rows; ++r) {
    float max_lse = kNegInf;
    for (int64_t p = 0; p < m.num_parts; ++p) max_lse = std::max(max_lse, m.lses[p * m.rows + r]);
    float* o = m.out + r * d;
    if (max_lse == kNegInf) {  // no part saw a key: zeros, never NaN
      std::fill(o, o + d, 0.0f);
      if (m.lse) m.lse[r] = kNegInf;
      continue;
    }
    float denom = 0.0f;
    for (int64_t p = 0; p < m.num_parts; ++p) denom += std::exp(m.lses[p * m.rows + r] - max_lse);
    const float inv = 1.0f / denom;
    std::fill(o, o + d, 0.0f);
    for (int64_t p = 0; p < m.num_parts; ++p) {
      const float l = m.lses[p * m.rows + r];
      if (l == kNegInf) continue;  // also keeps a part's NaN/garbage output out of the sum
      const float w = std::exp(l - max_lse) * inv;
      const float* part = m.outs + (p * m.rows + r) * d;
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) o[i] += w * part[i];
    }
    if (m.lse) m.lse[r] = max_lse + std::log(denom);
  }
}

}  // namespace tessera::kernels

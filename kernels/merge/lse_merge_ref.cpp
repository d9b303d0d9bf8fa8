#include <cmath>
#include <limits>
#include <vector>

#include "kernels/merge/lse_merge.h"

namespace tessera::kernels {

void lse_merge_ref(const LseMergeView& m) {
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  std::vector<double> acc(m.head_dim);
  for (int64_t r = 0; r < m.rows; ++r) {
    double max_lse = kNegInf;
    for (int64_t p = 0; p < m.num_parts; ++p) {
      max_lse = std::max(max_lse, static_cast<double>(m.lses[p * m.rows + r]));
    }
    float* o = m.out + r * m.head_dim;
    if (max_lse == kNegInf) {
      for (int64_t i = 0; i < m.head_dim; ++i) o[i] = 0.0f;
      if (m.lse) m.lse[r] = -std::numeric_limits<float>::infinity();
      continue;
    }
    std::fill(acc.begin(), acc.end(), 0.0);
    double denom = 0.0;
    for (int64_t p = 0; p < m.num_parts; ++p) {
      const double l = m.lses[p * m.rows + r];
      if (l == kNegInf) continue;
      const double w = std::exp(l - max_lse);
      denom += w;
      const float* part = m.outs + (p * m.rows + r) * m.head_dim;
      for (int64_t i = 0; i < m.head_dim; ++i) acc[i] += w * part[i];
    }
    for (int64_t i = 0; i < m.head_dim; ++i) o[i] = static_cast<float>(acc[i] / denom);
    if (m.lse) m.lse[r] = static_cast<float>(max_lse + std::log(denom));
  }
}

}  // namespace tessera::kernels

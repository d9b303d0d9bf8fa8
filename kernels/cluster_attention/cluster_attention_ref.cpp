// Reference cluster attention: fp64 accumulation, plain loops, no shortcuts. The yardstick for the
// fast CPU and CUDA versions.
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cluster_attention/cluster_attention.h"
#include "kernels/cluster_attention/cluster_dropout.h"

namespace tessera::kernels {

namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

struct Row {
  std::vector<double> s;     // [M + 1] logits (slot M: blank), -inf where masked / absent
  std::vector<double> p;     // [M + 1] softmax weights
  std::vector<double> z;     // [M + 1] dropout factor: 0 or 1 / (1 - p)
  std::vector<double> feat;  // [M * 5] position features
  std::vector<int64_t> key;  // [M]
  double lse = kNegInf;
};

template <typename T>
const T* row_ptr(const T* base, const int64_t* stride, int b, int h, int64_t n) {
  return base + b * stride[0] + h * stride[1] + n * stride[2];
}

// Everything the forward and backward need for one query row (b, h, n).
template <typename T>
void compute_row(const ClusterAttentionViewT<T>& a, int b, int h, int n, Row& r) {
  const int M = a.neighbours, D = a.head_dim, N = a.tokens;
  r.s.assign(M + 1, kNegInf);
  r.p.assign(M + 1, 0.0);
  r.z.assign(M + 1, 1.0);
  r.feat.assign(static_cast<size_t>(M) * 5, 0.0);
  r.key.assign(M, 0);
  const T* q = row_ptr(a.q, a.q_stride, b, h, n);
  for (int m = 0; m < M; ++m) {
    const int64_t j = a.idx ? a.idx[(static_cast<int64_t>(b) * N + n) * M + m] : m;
    r.key[m] = j;
    if (a.pos) {
      const T* pn = a.pos + (static_cast<int64_t>(b) * N + n) * 2;
      const T* pj = a.pos + (static_cast<int64_t>(b) * N + j) * 2;
      const double dx = static_cast<double>(pj[0]) - pn[0];
      const double dy = static_cast<double>(pj[1]) - pn[1];
      const double dist = std::sqrt(dx * dx + dy * dy);
      double* f = &r.feat[static_cast<size_t>(m) * 5];
      f[0] = dx;
      f[1] = dy;
      f[2] = dist;
      f[3] = dist > 0 ? dy / dist : 0.0;
      f[4] = dist > 0 ? dx / dist : 0.0;
    }
    if (a.mask) {
      const int mh = a.mask_heads == 1 ? 0 : h;
      if (!a.mask[((static_cast<int64_t>(b) * a.mask_heads + mh) * N + n) * M + m]) continue;
    }
    const T* k = row_ptr(a.k, a.k_stride, b, h, j);
    double dot = 0.0;
    for (int d = 0; d < D; ++d) dot += static_cast<double>(q[d]) * k[d];
    double s = dot * a.scale;
    if (a.bias) s += a.bias[((static_cast<int64_t>(b) * a.heads + h) * N + n) * M + m];
    if (a.pe_w) {
      const double* f = &r.feat[static_cast<size_t>(m) * 5];
      for (int c = 0; c < 5; ++c) s += static_cast<double>(a.pe_w[h * 5 + c]) * f[c];
      if (a.pe_b) s += a.pe_b[h];
    }
    r.s[m] = s;
  }
  if (a.blank_k) {
    double dot = 0.0;
    for (int d = 0; d < D; ++d) dot += static_cast<double>(q[d]) * a.blank_k[h * D + d];
    r.s[M] = dot * a.scale;
  }
  double mx = kNegInf;
  for (double s : r.s) mx = std::max(mx, s);
  if (mx == kNegInf) {
    r.lse = kNegInf;
    return;
  }
  double sum = 0.0;
  for (double s : r.s) sum += s == kNegInf ? 0.0 : std::exp(s - mx);
  r.lse = mx + std::log(sum);
  for (int m = 0; m <= M; ++m) r.p[m] = r.s[m] == kNegInf ? 0.0 : std::exp(r.s[m] - r.lse);
  if (a.dropout_p > 0.0f) {
    const uint64_t base = ((static_cast<uint64_t>(b) * a.heads + h) * N + n) * (M + 1);
    for (int m = 0; m <= M; ++m) {
      r.z[m] = dropout_keep(a.seed, base + m, a.dropout_p) ? 1.0 / (1.0 - a.dropout_p) : 0.0;
    }
  }
}

template <typename T>
void fwd_ref(const ClusterAttentionViewT<T>& a) {
  const int M = a.neighbours, D = a.head_dim, N = a.tokens;
  Row r;
  std::vector<double> acc(D);
  for (int b = 0; b < a.batch; ++b) {
    for (int h = 0; h < a.heads; ++h) {
      for (int n = 0; n < N; ++n) {
        compute_row(a, b, h, n, r);
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int m = 0; m < M; ++m) {
          const double w = r.p[m] * r.z[m];
          if (w == 0.0) continue;
          const T* v = row_ptr(a.v, a.v_stride, b, h, r.key[m]);
          for (int d = 0; d < D; ++d) acc[d] += w * v[d];
        }
        if (a.blank_v) {
          const double w = r.p[M] * r.z[M];
          for (int d = 0; d < D; ++d) acc[d] += w * a.blank_v[h * D + d];
        }
        const int64_t row = (static_cast<int64_t>(b) * a.heads + h) * N + n;
        for (int d = 0; d < D; ++d) a.out[row * D + d] = static_cast<T>(acc[d]);
        if (a.lse) a.lse[row] = static_cast<T>(r.lse);
      }
    }
  }
}

template <typename T>
void bwd_ref(const ClusterAttentionViewT<T>& a, const ClusterAttentionGradsT<T>& g) {
  const int M = a.neighbours, D = a.head_dim, N = a.tokens, H = a.heads;
  const int64_t plane = static_cast<int64_t>(N) * D;
  const int64_t total = static_cast<int64_t>(a.batch) * H * plane;
  // fp64 accumulators for everything that is summed over rows.
  std::vector<double> dk(total, 0.0), dv(total, 0.0);
  std::vector<double> dpe_w(static_cast<size_t>(H) * 5, 0.0), dpe_b(H, 0.0);
  std::vector<double> dbk(static_cast<size_t>(H) * D, 0.0), dbv(static_cast<size_t>(H) * D, 0.0);
  std::vector<double> o(D), ds(M + 1), dq(D);
  Row r;
  for (int b = 0; b < a.batch; ++b) {
    for (int h = 0; h < H; ++h) {
      for (int n = 0; n < N; ++n) {
        compute_row(a, b, h, n, r);
        const int64_t row = (static_cast<int64_t>(b) * H + h) * N + n;
        const T* dout = g.dout + row * D;
        const T* q = row_ptr(a.q, a.q_stride, b, h, n);
        // o recomputed in fp64 so that sum_m P[m] dP[m] = dout . o holds to fp64 precision.
        std::fill(o.begin(), o.end(), 0.0);
        std::vector<double> dp(M + 1, 0.0);
        for (int m = 0; m <= M; ++m) {
          if (r.p[m] == 0.0) continue;
          const T* v = m < M ? row_ptr(a.v, a.v_stride, b, h, r.key[m]) : a.blank_v + h * D;
          double dot = 0.0;
          for (int d = 0; d < D; ++d) {
            dot += static_cast<double>(dout[d]) * v[d];
            o[d] += r.p[m] * r.z[m] * v[d];
          }
          dp[m] = dot * r.z[m];
        }
        double sum_pdp = 0.0;
        for (int m = 0; m <= M; ++m) sum_pdp += r.p[m] * dp[m];
        for (int m = 0; m <= M; ++m) ds[m] = r.p[m] * (dp[m] - sum_pdp);
        std::fill(dq.begin(), dq.end(), 0.0);
        for (int m = 0; m <= M; ++m) {
          if (r.p[m] == 0.0) continue;
          const T* k = m < M ? row_ptr(a.k, a.k_stride, b, h, r.key[m]) : a.blank_k + h * D;
          for (int d = 0; d < D; ++d) dq[d] += a.scale * ds[m] * k[d];
          double* dkr = m < M ? &dk[((static_cast<int64_t>(b) * H + h) * N + r.key[m]) * D]
                              : &dbk[static_cast<size_t>(h) * D];
          double* dvr = m < M ? &dv[((static_cast<int64_t>(b) * H + h) * N + r.key[m]) * D]
                              : &dbv[static_cast<size_t>(h) * D];
          for (int d = 0; d < D; ++d) {
            dkr[d] += a.scale * ds[m] * q[d];
            dvr[d] += r.p[m] * r.z[m] * dout[d];
          }
        }
        for (int d = 0; d < D; ++d) g.dq[row * D + d] = static_cast<T>(dq[d]);
        for (int m = 0; m < M; ++m) {
          if (g.dbias) g.dbias[row * M + m] = static_cast<T>(ds[m]);
          if (a.pe_w) {
            for (int c = 0; c < 5; ++c) dpe_w[h * 5 + c] += ds[m] * r.feat[m * 5 + c];
            dpe_b[h] += ds[m];
          }
        }
      }
    }
  }
  for (int64_t i = 0; i < total; ++i) {
    g.dk[i] = static_cast<T>(dk[i]);
    g.dv[i] = static_cast<T>(dv[i]);
  }
  if (g.dpe_w) {
    for (int i = 0; i < H * 5; ++i) g.dpe_w[i] = static_cast<T>(dpe_w[i]);
  }
  if (g.dpe_b) {
    for (int i = 0; i < H; ++i) g.dpe_b[i] = static_cast<T>(dpe_b[i]);
  }
  for (int i = 0; i < H * D; ++i) {
    if (g.dblank_k) g.dblank_k[i] = static_cast<T>(dbk[i]);
    if (g.dblank_v) g.dblank_v[i] = static_cast<T>(dbv[i]);
  }
}

}  // namespace

void cluster_attention_fwd_ref(const ClusterAttentionView& a) { fwd_ref(a); }
void cluster_attention_fwd_ref(const ClusterAttentionViewT<double>& a) { fwd_ref(a); }
void cluster_attention_bwd_ref(const ClusterAttentionView& a, const ClusterAttentionGrads& g) {
  bwd_ref(a, g);
}
void cluster_attention_bwd_ref(const ClusterAttentionViewT<double>& a,
                               const ClusterAttentionGradsT<double>& g) {
  bwd_ref(a, g);
}

}  // namespace tessera::kernels

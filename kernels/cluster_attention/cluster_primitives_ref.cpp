// Reference QK / AV / WF cluster primitives: fp64 accumulation, plain loops.
#include <cstddef>
#include <vector>

#include "kernels/cluster_attention/cluster_primitives.h"

namespace tessera::kernels {

namespace {

template <typename T>
void qk_fwd_impl(const ClusterDims& d, const T* q, const T* k, const int64_t* idx, T* attn) {
  const int64_t N = d.tokens, M = d.neighbours, D = d.head_dim;
  for (int64_t b = 0; b < d.batch; ++b)
    for (int64_t h = 0; h < d.heads; ++h)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t m = 0; m < M; ++m) {
          const int64_t j = idx[(b * N + n) * M + m];
          double s = 0.0;
          for (int64_t i = 0; i < D; ++i)
            s += static_cast<double>(q[((b * d.heads + h) * N + n) * D + i]) *
                 k[((b * d.heads + h) * N + j) * D + i];
          attn[((b * d.heads + h) * N + n) * M + m] = static_cast<T>(s);
        }
}

template <typename T>
void qk_bwd_impl(const ClusterDims& d, const T* q, const T* k, const int64_t* idx, const T* dattn,
                 T* dq, T* dk) {
  const int64_t N = d.tokens, M = d.neighbours, D = d.head_dim;
  const int64_t total = static_cast<int64_t>(d.batch) * d.heads * N * D;
  std::vector<double> gq(total, 0.0), gk(total, 0.0);
  for (int64_t b = 0; b < d.batch; ++b)
    for (int64_t h = 0; h < d.heads; ++h)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t m = 0; m < M; ++m) {
          const int64_t j = idx[(b * N + n) * M + m];
          const double g = dattn[((b * d.heads + h) * N + n) * M + m];
          const int64_t qn = ((b * d.heads + h) * N + n) * D, kj = ((b * d.heads + h) * N + j) * D;
          for (int64_t i = 0; i < D; ++i) {
            gq[qn + i] += g * k[kj + i];
            gk[kj + i] += g * q[qn + i];
          }
        }
  for (int64_t i = 0; i < total; ++i) {
    dq[i] = static_cast<T>(gq[i]);
    dk[i] = static_cast<T>(gk[i]);
  }
}

template <typename T>
void av_fwd_impl(const ClusterDims& d, const T* attn, const T* v, const int64_t* idx, T* out) {
  const int64_t N = d.tokens, M = d.neighbours, D = d.head_dim;
  std::vector<double> acc(D);
  for (int64_t b = 0; b < d.batch; ++b)
    for (int64_t h = 0; h < d.heads; ++h)
      for (int64_t n = 0; n < N; ++n) {
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t m = 0; m < M; ++m) {
          const int64_t j = idx[(b * N + n) * M + m];
          const double a = attn[((b * d.heads + h) * N + n) * M + m];
          for (int64_t i = 0; i < D; ++i) acc[i] += a * v[((b * d.heads + h) * N + j) * D + i];
        }
        for (int64_t i = 0; i < D; ++i)
          out[((b * d.heads + h) * N + n) * D + i] = static_cast<T>(acc[i]);
      }
}

template <typename T>
void av_bwd_impl(const ClusterDims& d, const T* attn, const T* v, const int64_t* idx, const T* dout,
                 T* dattn, T* dv) {
  const int64_t N = d.tokens, M = d.neighbours, D = d.head_dim;
  const int64_t total = static_cast<int64_t>(d.batch) * d.heads * N * D;
  std::vector<double> gv(total, 0.0);
  for (int64_t b = 0; b < d.batch; ++b)
    for (int64_t h = 0; h < d.heads; ++h)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t m = 0; m < M; ++m) {
          const int64_t j = idx[(b * N + n) * M + m];
          const int64_t on = ((b * d.heads + h) * N + n) * D, vj = ((b * d.heads + h) * N + j) * D;
          const double a = attn[((b * d.heads + h) * N + n) * M + m];
          double s = 0.0;
          for (int64_t i = 0; i < D; ++i) {
            s += static_cast<double>(dout[on + i]) * v[vj + i];
            gv[vj + i] += a * dout[on + i];
          }
          dattn[((b * d.heads + h) * N + n) * M + m] = static_cast<T>(s);
        }
  for (int64_t i = 0; i < total; ++i) dv[i] = static_cast<T>(gv[i]);
}

template <typename T>
void wf_fwd_impl(const ClusterWfDims& d, const T* w, const T* f, const int64_t* idx, T* out) {
  const int64_t Q = d.queries, N = d.tokens, M = d.neighbours, I = d.inner, C = d.channels;
  for (int64_t b = 0; b < d.batch; ++b)
    for (int64_t n = 0; n < Q; ++n)
      for (int64_t i = 0; i < I; ++i)
        for (int64_t c = 0; c < C; ++c) {
          double s = 0.0;
          for (int64_t m = 0; m < M; ++m) {
            const int64_t j = idx[(b * Q + n) * M + m];
            s += static_cast<double>(w[((b * Q + n) * M + m) * I + i]) * f[(b * N + j) * C + c];
          }
          out[((b * Q + n) * I + i) * C + c] = static_cast<T>(s);
        }
}

template <typename T>
void wf_bwd_impl(const ClusterWfDims& d, const T* w, const T* f, const int64_t* idx, const T* dout,
                 T* dw, T* df) {
  const int64_t Q = d.queries, N = d.tokens, M = d.neighbours, I = d.inner, C = d.channels;
  std::vector<double> gf(static_cast<std::size_t>(d.batch) * N * C, 0.0);
  for (int64_t b = 0; b < d.batch; ++b)
    for (int64_t n = 0; n < Q; ++n)
      for (int64_t m = 0; m < M; ++m) {
        const int64_t j = idx[(b * Q + n) * M + m];
        for (int64_t i = 0; i < I; ++i) {
          const double wv = w[((b * Q + n) * M + m) * I + i];
          double s = 0.0;
          for (int64_t c = 0; c < C; ++c) {
            const double g = dout[((b * Q + n) * I + i) * C + c];
            s += g * f[(b * N + j) * C + c];
            gf[(b * N + j) * C + c] += wv * g;
          }
          dw[((b * Q + n) * M + m) * I + i] = static_cast<T>(s);
        }
      }
  for (std::size_t i = 0; i < gf.size(); ++i) df[i] = static_cast<T>(gf[i]);
}

}  // namespace

void cluster_qk_fwd_ref(const ClusterDims& d, const float* q, const float* k, const int64_t* idx,
                        float* attn) {
  qk_fwd_impl(d, q, k, idx, attn);
}
void cluster_qk_fwd_ref(const ClusterDims& d, const double* q, const double* k, const int64_t* idx,
                        double* attn) {
  qk_fwd_impl(d, q, k, idx, attn);
}
void cluster_qk_bwd_ref(const ClusterDims& d, const float* q, const float* k, const int64_t* idx,
                        const float* dattn, float* dq, float* dk) {
  qk_bwd_impl(d, q, k, idx, dattn, dq, dk);
}
void cluster_qk_bwd_ref(const ClusterDims& d, const double* q, const double* k, const int64_t* idx,
                        const double* dattn, double* dq, double* dk) {
  qk_bwd_impl(d, q, k, idx, dattn, dq, dk);
}
void cluster_av_fwd_ref(const ClusterDims& d, const float* attn, const float* v, const int64_t* idx,
                        float* out) {
  av_fwd_impl(d, attn, v, idx, out);
}
void cluster_av_fwd_ref(const ClusterDims& d, const double* attn, const double* v,
                        const int64_t* idx, double* out) {
  av_fwd_impl(d, attn, v, idx, out);
}
void cluster_av_bwd_ref(const ClusterDims& d, const float* attn, const float* v, const int64_t* idx,
                        const float* dout, float* dattn, float* dv) {
  av_bwd_impl(d, attn, v, idx, dout, dattn, dv);
}
void cluster_av_bwd_ref(const ClusterDims& d, const double* attn, const double* v,
                        const int64_t* idx, const double* dout, double* dattn, double* dv) {
  av_bwd_impl(d, attn, v, idx, dout, dattn, dv);
}
void cluster_wf_fwd_ref(const ClusterWfDims& d, const float* w, const float* f, const int64_t* idx,
                        float* out) {
  wf_fwd_impl(d, w, f, idx, out);
}
void cluster_wf_fwd_ref(const ClusterWfDims& d, const double* w, const double* f,
                        const int64_t* idx, double* out) {
  wf_fwd_impl(d, w, f, idx, out);
}
void cluster_wf_bwd_ref(const ClusterWfDims& d, const float* w, const float* f, const int64_t* idx,
                        const float* dout, float* dw, float* df) {
  wf_bwd_impl(d, w, f, idx, dout, dw, df);
}
void cluster_wf_bwd_ref(const ClusterWfDims& d, const double* w, const double* f,
                        const int64_t* idx, const double* dout, double* dw, double* df) {
  wf_bwd_impl(d, w, f, idx, dout, dw, df);
}

}  // namespace tessera::kernels

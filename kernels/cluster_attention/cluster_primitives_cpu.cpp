// Fast CPU QK / AV / WF cluster primitives: OpenMP over rows for gathers and over (batch, head)
// planes for scatters (each plane owned by one thread: no atomics, reproducible), fp32
// accumulation with vectorisable inner loops.
#include <algorithm>
#include <vector>

#include "kernels/cluster_attention/cluster_primitives.h"

namespace tessera::kernels {

namespace {

inline float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

inline void axpy(float w, const float* __restrict x, float* __restrict y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += w * x[i];
}

}  // namespace

void cluster_qk_fwd_cpu(const ClusterDims& d, const float* q, const float* k, const int64_t* idx,
                        float* attn) {
  const int64_t N = d.tokens, M = d.neighbours, D = d.head_dim, H = d.heads;
  const int64_t rows = d.batch * H * N;
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t n = row % N, b = row / (H * N);
    const float* kp = k + (row - n) * D;  // the (b, h) plane
    const int64_t* ip = idx + (b * N + n) * M;
    for (int64_t m = 0; m < M; ++m) attn[row * M + m] = dot(q + row * D, kp + ip[m] * D, D);
  }
}

void cluster_qk_bwd_cpu(const ClusterDims& d, const float* q, const float* k, const int64_t* idx,
                        const float* dattn, float* dq, float* dk) {
  const int64_t N = d.tokens, M = d.neighbours, D = d.head_dim, H = d.heads;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t plane = 0; plane < d.batch * H; ++plane) {
    const int64_t b = plane / H, off = plane * N * D;
    std::fill(dq + off, dq + off + N * D, 0.f);
    std::fill(dk + off, dk + off + N * D, 0.f);
    for (int64_t n = 0; n < N; ++n) {
      const int64_t* ip = idx + (b * N + n) * M;
      const float* g = dattn + (plane * N + n) * M;
      for (int64_t m = 0; m < M; ++m) {
        axpy(g[m], k + off + ip[m] * D, dq + off + n * D, D);
        axpy(g[m], q + off + n * D, dk + off + ip[m] * D, D);
      }
    }
  }
}

void cluster_av_fwd_cpu(const ClusterDims& d, const float* attn, const float* v, const int64_t* idx,
                        float* out) {
  const int64_t N = d.tokens, M = d.neighbours, D = d.head_dim, H = d.heads;
  const int64_t rows = d.batch * H * N;
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t n = row % N, b = row / (H * N);
    const float* vp = v + (row - n) * D;
    const int64_t* ip = idx + (b * N + n) * M;
    float* o = out + row * D;
    std::fill(o, o + D, 0.f);
    for (int64_t m = 0; m < M; ++m) axpy(attn[row * M + m], vp + ip[m] * D, o, D);
  }
}

void cluster_av_bwd_cpu(const ClusterDims& d, const float* attn, const float* v, const int64_t* idx,
                        const float* dout, float* dattn, float* dv) {
  const int64_t N = d.tokens, M = d.neighbours, D = d.head_dim, H = d.heads;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t plane = 0; plane < d.batch * H; ++plane) {
    const int64_t b = plane / H, off = plane * N * D;
    std::fill(dv + off, dv + off + N * D, 0.f);
    for (int64_t n = 0; n < N; ++n) {
      const int64_t* ip = idx + (b * N + n) * M;
      const int64_t row = plane * N + n;
      for (int64_t m = 0; m < M; ++m) {
        dattn[row * M + m] = dot(dout + row * D, v + off + ip[m] * D, D);
        axpy(attn[row * M + m], dout + row * D, dv + off + ip[m] * D, D);
      }
    }
  }
}

void cluster_wf_fwd_cpu(const ClusterWfDims& d, const float* w, const float* f, const int64_t* idx,
                        float* out) {
  const int64_t Q = d.queries, N = d.tokens, M = d.neighbours, I = d.inner, C = d.channels;
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < d.batch * Q; ++row) {
    const int64_t b = row / Q;
    float* o = out + row * I * C;
    std::fill(o, o + I * C, 0.f);
    for (int64_t m = 0; m < M; ++m) {
      const float* fj = f + (b * N + idx[row * M + m]) * C;
      for (int64_t i = 0; i < I; ++i) axpy(w[(row * M + m) * I + i], fj, o + i * C, C);
    }
  }
}

void cluster_wf_bwd_cpu(const ClusterWfDims& d, const float* w, const float* f, const int64_t* idx,
                        const float* dout, float* dw, float* df) {
  const int64_t Q = d.queries, N = d.tokens, M = d.neighbours, I = d.inner, C = d.channels;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t b = 0; b < d.batch; ++b) {
    std::fill(df + b * N * C, df + (b + 1) * N * C, 0.f);
    for (int64_t n = 0; n < Q; ++n) {
      const int64_t row = b * Q + n;
      for (int64_t m = 0; m < M; ++m) {
        const int64_t j = idx[row * M + m];
        for (int64_t i = 0; i < I; ++i) {
          const float* g = dout + (row * I + i) * C;
          dw[(row * M + m) * I + i] = dot(g, f + (b * N + j) * C, C);
          axpy(w[(row * M + m) * I + i], g, df + (b * N + j) * C, C);
        }
      }
    }
  }
}

}  // namespace tessera::kernels

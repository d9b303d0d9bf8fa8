// CUDA QK / AV / WF cluster primitives (see cluster_primitives.h): one thread per output element;
// backward scatters into keys / values / features use atomics.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cluster_attention/cluster_primitives.h"

namespace tessera::kernels {

namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

__device__ __forceinline__ int64_t thread_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

// attn[row, m] = q[row] . k[plane, idx[b, n, m]]
__global__ void qk_fwd(ClusterDims d, const float* q, const float* k, const int64_t* idx,
                       float* attn) {
  const int64_t N = d.tokens, M = d.neighbours, D = d.head_dim;
  const int64_t t = thread_index();
  if (t >= static_cast<int64_t>(d.batch) * d.heads * N * M) return;
  const int64_t row = t / M, m = t % M, n = row % N, b = row / (N * d.heads);
  const int64_t j = idx[(b * N + n) * M + m];
  const float* qr = q + row * D;
  const float* kr = k + (row - n + j) * D;
  float s = 0.f;
  for (int64_t i = 0; i < D; ++i) s += qr[i] * kr[i];
  attn[t] = s;
}

// One thread per (row, dim): dq summed, dk scattered.
__global__ void qk_bwd(ClusterDims d, const float* q, const float* k, const int64_t* idx,
                       const float* dattn, float* dq, float* dk) {
  const int64_t N = d.tokens, M = d.neighbours, D = d.head_dim;
  const int64_t t = thread_index();
  if (t >= static_cast<int64_t>(d.batch) * d.heads * N * D) return;
  const int64_t row = t / D, i = t % D, n = row % N, b = row / (N * d.heads);
  const int64_t plane0 = row - n;
  float acc = 0.f;
  const float qi = q[t];
  for (int64_t m = 0; m < M; ++m) {
    const int64_t j = idx[(b * N + n) * M + m];
    const float g = dattn[row * M + m];
    acc += g * k[(plane0 + j) * D + i];
    atomicAdd(&dk[(plane0 + j) * D + i], g * qi);
  }
  dq[t] = acc;
}

__global__ void av_fwd(ClusterDims d, const float* attn, const float* v, const int64_t* idx,
                       float* out) {
  const int64_t N = d.tokens, M = d.neighbours, D = d.head_dim;
  const int64_t t = thread_index();
  if (t >= static_cast<int64_t>(d.batch) * d.heads * N * D) return;
  const int64_t row = t / D, i = t % D, n = row % N, b = row / (N * d.heads);
  float acc = 0.f;
  for (int64_t m = 0; m < M; ++m) {
    acc += attn[row * M + m] * v[(row - n + idx[(b * N + n) * M + m]) * D + i];
  }
  out[t] = acc;
}

__global__ void av_bwd_attn(ClusterDims d, const float* v, const int64_t* idx, const float* dout,
                            float* dattn) {
  const int64_t N = d.tokens, M = d.neighbours, D = d.head_dim;
  const int64_t t = thread_index();
  if (t >= static_cast<int64_t>(d.batch) * d.heads * N * M) return;
  const int64_t row = t / M, m = t % M, n = row % N, b = row / (N * d.heads);
  const float* vr = v + (row - n + idx[(b * N + n) * M + m]) * D;
  float s = 0.f;
  for (int64_t i = 0; i < D; ++i) s += dout[row * D + i] * vr[i];
  dattn[t] = s;
}

__global__ void av_bwd_v(ClusterDims d, const float* attn, const int64_t* idx, const float* dout,
                         float* dv) {
  const int64_t N = d.tokens, M = d.neighbours, D = d.head_dim;
  const int64_t t = thread_index();
  if (t >= static_cast<int64_t>(d.batch) * d.heads * N * D) return;
  const int64_t row = t / D, i = t % D, n = row % N, b = row / (N * d.heads);
  const float g = dout[t];
  for (int64_t m = 0; m < M; ++m) {
    atomicAdd(&dv[(row - n + idx[(b * N + n) * M + m]) * D + i], attn[row * M + m] * g);
  }
}

__global__ void wf_fwd(ClusterWfDims d, const float* w, const float* f, const int64_t* idx,
                       float* out) {
  const int64_t Q = d.queries, N = d.tokens, M = d.neighbours, I = d.inner, C = d.channels;
  const int64_t t = thread_index();
  if (t >= static_cast<int64_t>(d.batch) * Q * I * C) return;
  const int64_t c = t % C, i = (t / C) % I, row = t / (I * C), b = row / Q;
  float acc = 0.f;
  for (int64_t m = 0; m < M; ++m) {
    acc += w[(row * M + m) * I + i] * f[(b * N + idx[row * M + m]) * C + c];
  }
  out[t] = acc;
}

__global__ void wf_bwd_w(ClusterWfDims d, const float* f, const int64_t* idx, const float* dout,
                         float* dw) {
  const int64_t Q = d.queries, N = d.tokens, M = d.neighbours, I = d.inner, C = d.channels;
  const int64_t t = thread_index();
  if (t >= static_cast<int64_t>(d.batch) * Q * M * I) return;
  const int64_t i = t % I, m = (t / I) % M, row = t / (M * I), b = row / Q;
  const float* fr = f + (b * N + idx[row * M + m]) * C;
  const float* g = dout + (row * I + i) * C;
  float s = 0.f;
  for (int64_t c = 0; c < C; ++c) s += g[c] * fr[c];
  dw[t] = s;
}

__global__ void wf_bwd_f(ClusterWfDims d, const float* w, const int64_t* idx, const float* dout,
                         float* df) {
  const int64_t Q = d.queries, N = d.tokens, M = d.neighbours, I = d.inner, C = d.channels;
  const int64_t t = thread_index();
  if (t >= static_cast<int64_t>(d.batch) * Q * M * C) return;
  const int64_t c = t % C, m = (t / C) % M, row = t / (M * C), b = row / Q;
  float s = 0.f;
  for (int64_t i = 0; i < I; ++i) s += w[(row * M + m) * I + i] * dout[(row * I + i) * C + c];
  atomicAdd(&df[(b * N + idx[row * M + m]) * C + c], s);
}

int last_error() { return static_cast<int>(cudaGetLastError()); }

}  // namespace

int cluster_qk_fwd_cuda(const ClusterDims& d, const float* q, const float* k, const int64_t* idx,
                        float* attn, void* stream) {
  const int64_t n = static_cast<int64_t>(d.batch) * d.heads * d.tokens * d.neighbours;
  if (n == 0) return 0;
  qk_fwd<<<blocks_for(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(d, q, k, idx, attn);
  return last_error();
}

int cluster_qk_bwd_cuda(const ClusterDims& d, const float* q, const float* k, const int64_t* idx,
                        const float* dattn, float* dq, float* dk, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  const int64_t n = static_cast<int64_t>(d.batch) * d.heads * d.tokens * d.head_dim;
  if (n == 0) return 0;
  cudaMemsetAsync(dk, 0, n * sizeof(float), s);
  qk_bwd<<<blocks_for(n), kThreads, 0, s>>>(d, q, k, idx, dattn, dq, dk);
  return last_error();
}

int cluster_av_fwd_cuda(const ClusterDims& d, const float* attn, const float* v, const int64_t* idx,
                        float* out, void* stream) {
  const int64_t n = static_cast<int64_t>(d.batch) * d.heads * d.tokens * d.head_dim;
  if (n == 0) return 0;
  av_fwd<<<blocks_for(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(d, attn, v, idx, out);
  return last_error();
}

int cluster_av_bwd_cuda(const ClusterDims& d, const float* attn, const float* v, const int64_t* idx,
                        const float* dout, float* dattn, float* dv, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  const int64_t nd = static_cast<int64_t>(d.batch) * d.heads * d.tokens * d.head_dim;
  const int64_t nm = static_cast<int64_t>(d.batch) * d.heads * d.tokens * d.neighbours;
  // Each output has its own guard: with head_dim 0 there is no dv, but dattn [B, H, N, M] still
  // has to be written (zeros, as on the CPU); a zero-block launch would fail instead.
  if (nm > 0) av_bwd_attn<<<blocks_for(nm), kThreads, 0, s>>>(d, v, idx, dout, dattn);
  if (nd > 0) {
    cudaMemsetAsync(dv, 0, nd * sizeof(float), s);
    av_bwd_v<<<blocks_for(nd), kThreads, 0, s>>>(d, attn, idx, dout, dv);
  }
  return last_error();
}

int cluster_wf_fwd_cuda(const ClusterWfDims& d, const float* w, const float* f, const int64_t* idx,
                        float* out, void* stream) {
  const int64_t n = static_cast<int64_t>(d.batch) * d.queries * d.inner * d.channels;
  if (n == 0) return 0;
  wf_fwd<<<blocks_for(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(d, w, f, idx, out);
  return last_error();
}

int cluster_wf_bwd_cuda(const ClusterWfDims& d, const float* w, const float* f, const int64_t* idx,
                        const float* dout, float* dw, float* df, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  const int64_t nf = static_cast<int64_t>(d.batch) * d.tokens * d.channels;
  if (nf > 0) cudaMemsetAsync(df, 0, nf * sizeof(float), s);
  const int64_t nw = static_cast<int64_t>(d.batch) * d.queries * d.neighbours * d.inner;
  if (nw > 0) wf_bwd_w<<<blocks_for(nw), kThreads, 0, s>>>(d, f, idx, dout, dw);
  const int64_t nc = static_cast<int64_t>(d.batch) * d.queries * d.neighbours * d.channels;
  if (nc > 0) wf_bwd_f<<<blocks_for(nc), kThreads, 0, s>>>(d, w, idx, dout, df);
  return last_error();
}

}  // namespace tessera::kernels

// CUDA cluster attention (see cluster_attention.h). One warp per query row (b, h, n): lanes score
// 32 neighbours at a time into an online softmax, then lanes own head_dim slices of the output.
// The backward recomputes the weights from lse; dk / dv are scattered with atomics, or (the
// deterministic variant) stored per slot and gathered per key through an inverse index.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/cluster_attention/cluster_attention.h"
#include "kernels/cluster_attention/cluster_dropout.h"

namespace tessera::kernels {

namespace {

constexpr int kWarps = 4;         // rows per block
constexpr int kMaxDimSlices = 8;  // head_dim <= 32 * 8 = 256

__device__ __forceinline__ float warp_sum(float x) {
  for (int off = 16; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

__device__ __forceinline__ float warp_max(float x) {
  for (int off = 16; off > 0; off /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
  return x;
}

__device__ __forceinline__ const float* row_of(const float* base, const int64_t* stride, int64_t b,
                                               int64_t h, int64_t n) {
  return base + b * stride[0] + h * stride[1] + n * stride[2];
}

// Logit of neighbour slot m of row (b, h, n); -inf where masked. Also returns the key index.
__device__ float slot_logit(const ClusterAttentionView& a, int64_t b, int h, int64_t n, int m,
                            const float* q_s, int64_t* key_out, float* feat) {
  const int64_t N = a.tokens, M = a.neighbours;
  const int64_t j = a.idx ? a.idx[(b * N + n) * M + m] : m;
  *key_out = j;
  if (a.pos != nullptr && feat != nullptr) {
    const float* pn = a.pos + (b * N + n) * 2;
    const float* pj = a.pos + (b * N + j) * 2;
    const float dx = pj[0] - pn[0], dy = pj[1] - pn[1];
    const float dist = sqrtf(dx * dx + dy * dy);
    feat[0] = dx;
    feat[1] = dy;
    feat[2] = dist;
    feat[3] = dist > 0.f ? dy / dist : 0.f;
    feat[4] = dist > 0.f ? dx / dist : 0.f;
  }
  if (a.mask) {
    const int64_t mh = a.mask_heads == 1 ? 0 : h;
    if (!a.mask[((b * a.mask_heads + mh) * N + n) * M + m]) return -INFINITY;
  }
  const float* k = row_of(a.k, a.k_stride, b, h, j);
  float dot = 0.f;
  for (int d = 0; d < a.head_dim; ++d) dot += q_s[d] * k[d];
  float s = dot * a.scale;
  if (a.bias) s += a.bias[((b * a.heads + h) * N + n) * M + m];
  if (a.pe_w) {
    const float* w = a.pe_w + h * 5;
    s += w[0] * feat[0] + w[1] * feat[1] + w[2] * feat[2] + w[3] * feat[3] + w[4] * feat[4];
    if (a.pe_b) s += a.pe_b[h];
  }
  return s;
}

__device__ __forceinline__ float keep_factor(const ClusterAttentionView& a, int64_t row, int m) {
  if (a.dropout_p <= 0.f) return 1.f;
  const uint64_t flat = static_cast<uint64_t>(row) * (a.neighbours + 1) + m;
  return dropout_keep(a.seed, flat, a.dropout_p) ? 1.f / (1.f - a.dropout_p) : 0.f;
}

__global__ void fwd_kernel(ClusterAttentionView a, int64_t rows) {
  extern __shared__ float smem[];  // [kWarps, head_dim] query rows
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (row >= rows) return;
  const int D = a.head_dim, M = a.neighbours;
  const int64_t N = a.tokens;
  const int64_t n = row % N, b = row / (N * a.heads);
  const int h = static_cast<int>((row / N) % a.heads);
  float* q_s = smem + warp * D;
  const float* q = row_of(a.q, a.q_stride, b, h, n);
  for (int d = lane; d < D; d += 32) q_s[d] = q[d];
  __syncwarp();

  float acc[kMaxDimSlices];
#pragma unroll
  for (int i = 0; i < kMaxDimSlices; ++i) acc[i] = 0.f;
  float mx = -INFINITY, l = 0.f;
  if (a.blank_k) {
    float part = 0.f;
    for (int d = lane; d < D; d += 32) part += q_s[d] * a.blank_k[h * D + d];
    mx = warp_sum(part) * a.scale;
    l = 1.f;
    const float z = keep_factor(a, row, M);
#pragma unroll
    for (int i = 0; i < kMaxDimSlices; ++i) {
      const int d = lane + 32 * i;
      if (d < D) acc[i] = z * a.blank_v[h * D + d];
    }
  }
  const float* vbase = a.v + b * a.v_stride[0] + h * a.v_stride[1];
  for (int base = 0; base < M; base += 32) {
    const int m = base + lane;
    float s = -INFINITY;
    int64_t key = 0;
    float feat[5];
    if (m < M) s = slot_logit(a, b, h, n, m, q_s, &key, a.pe_w ? feat : nullptr);
    const float cmax = warp_max(s);
    if (cmax == -INFINITY) continue;
    const float new_mx = fmaxf(mx, cmax);
    const float corr = mx == -INFINITY ? 0.f : __expf(mx - new_mx);
    const float e = s == -INFINITY ? 0.f : __expf(s - new_mx);
    l = l * corr + warp_sum(e);
    mx = new_mx;
    const float w = m < M ? e * keep_factor(a, row, m) : 0.f;
#pragma unroll
    for (int i = 0; i < kMaxDimSlices; ++i) acc[i] *= corr;
    const int count = min(32, M - base);
    for (int t = 0; t < count; ++t) {
      const float wt = __shfl_sync(0xffffffffu, w, t);
      const long long kt = __shfl_sync(0xffffffffu, static_cast<long long>(key), t);
      if (wt == 0.f) continue;
      const float* v = vbase + kt * a.v_stride[2];
#pragma unroll
      for (int i = 0; i < kMaxDimSlices; ++i) {
        const int d = lane + 32 * i;
        if (d < D) acc[i] += wt * v[d];
      }
    }
  }
  const bool empty = mx == -INFINITY;
  float* o = a.out + row * D;
#pragma unroll
  for (int i = 0; i < kMaxDimSlices; ++i) {
    const int d = lane + 32 * i;
    if (d < D) o[d] = empty ? 0.f : acc[i] / l;
  }
  if (lane == 0 && a.lse) a.lse[row] = empty ? -INFINITY : mx + logf(l);
}

// Backward per row. store_slots: write ds / w per slot to ws_ds / ws_w ([rows, M + 1]) instead of
// scattering dk / dv / blank / position gradients with atomics.
__global__ void bwd_kernel(ClusterAttentionView a, ClusterAttentionGrads g, int64_t rows,
                           bool store_slots, float* ws_ds, float* ws_w) {
  extern __shared__ float smem[];  // [kWarps, 2, head_dim]: q row, dout row
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (row >= rows) return;
  const int D = a.head_dim, M = a.neighbours;
  const int64_t N = a.tokens;
  const int64_t n = row % N, b = row / (N * a.heads);
  const int h = static_cast<int>((row / N) % a.heads);
  float* q_s = smem + warp * 2 * D;
  float* do_s = q_s + D;
  const float* q = row_of(a.q, a.q_stride, b, h, n);
  float part = 0.f;
  for (int d = lane; d < D; d += 32) {
    q_s[d] = q[d];
    do_s[d] = g.dout[row * D + d];
    part += do_s[d] * a.out[row * D + d];
  }
  const float dsum = warp_sum(part);
  __syncwarp();
  const float lse = a.lse[row];
  float dq[kMaxDimSlices];
#pragma unroll
  for (int i = 0; i < kMaxDimSlices; ++i) dq[i] = 0.f;
  const bool empty = lse == -INFINITY;
  const float* vbase = a.v + b * a.v_stride[0] + h * a.v_stride[1];
  const float* kbase = a.k + b * a.k_stride[0] + h * a.k_stride[1];
  float* dkp = g.dk + (b * a.heads + h) * N * D;
  float* dvp = g.dv + (b * a.heads + h) * N * D;
  for (int base = 0; base < M; base += 32) {
    const int m = base + lane;
    float ds = 0.f, w = 0.f;
    int64_t key = 0;
    float feat[5] = {0.f, 0.f, 0.f, 0.f, 0.f};
    if (m < M) {
      const float s = slot_logit(a, b, h, n, m, q_s, &key, a.pe_w ? feat : nullptr);
      if (!empty && s != -INFINITY) {
        const float p = __expf(s - lse);
        const float z = keep_factor(a, row, m);
        w = p * z;
        const float* v = vbase + key * a.v_stride[2];
        float dot = 0.f;
        for (int d = 0; d < D; ++d) dot += do_s[d] * v[d];
        ds = p * (z * dot - dsum);
      }
      if (g.dbias) g.dbias[row * M + m] = ds;
      if (store_slots) {
        ws_ds[row * (M + 1) + m] = ds;
        ws_w[row * (M + 1) + m] = w;
      }
    }
    if (a.pe_w && !store_slots) {
      for (int c = 0; c < 5; ++c) {
        const float t = warp_sum(ds * feat[c]);
        if (lane == 0 && t != 0.f && g.dpe_w) atomicAdd(&g.dpe_w[h * 5 + c], t);
      }
      const float t = warp_sum(ds);
      if (lane == 0 && t != 0.f && g.dpe_b) atomicAdd(&g.dpe_b[h], t);
    }
    const int count = min(32, M - base);
    for (int t = 0; t < count; ++t) {
      const float dst = __shfl_sync(0xffffffffu, ds, t);
      const float wt = __shfl_sync(0xffffffffu, w, t);
      const long long kt = __shfl_sync(0xffffffffu, static_cast<long long>(key), t);
      if (dst == 0.f && wt == 0.f) continue;
      const float* k = kbase + kt * a.k_stride[2];
#pragma unroll
      for (int i = 0; i < kMaxDimSlices; ++i) {
        const int d = lane + 32 * i;
        if (d < D) {
          dq[i] += a.scale * dst * k[d];
          if (!store_slots) {
            if (dst != 0.f) atomicAdd(&dkp[kt * D + d], a.scale * dst * q_s[d]);
            if (wt != 0.f) atomicAdd(&dvp[kt * D + d], wt * do_s[d]);
          }
        }
      }
    }
  }
  if (a.blank_k) {
    float pk = 0.f, pv = 0.f;
    for (int d = lane; d < D; d += 32) {
      pk += q_s[d] * a.blank_k[h * D + d];
      pv += do_s[d] * a.blank_v[h * D + d];
    }
    const float s = warp_sum(pk) * a.scale, dot = warp_sum(pv);
    float ds = 0.f, w = 0.f;
    if (!empty) {
      const float p = __expf(s - lse), z = keep_factor(a, row, M);
      w = p * z;
      ds = p * (z * dot - dsum);
    }
    if (store_slots && lane == 0) {
      ws_ds[row * (M + 1) + M] = ds;
      ws_w[row * (M + 1) + M] = w;
    }
#pragma unroll
    for (int i = 0; i < kMaxDimSlices; ++i) {
      const int d = lane + 32 * i;
      if (d < D) {
        dq[i] += a.scale * ds * a.blank_k[h * D + d];
        if (!store_slots) {
          if (g.dblank_k) atomicAdd(&g.dblank_k[h * D + d], a.scale * ds * q_s[d]);
          if (g.dblank_v) atomicAdd(&g.dblank_v[h * D + d], w * do_s[d]);
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kMaxDimSlices; ++i) {
    const int d = lane + 32 * i;
    if (d < D) g.dq[row * D + d] = dq[i];
  }
}

// ---- deterministic variant ----

__global__ void count_keys(const int64_t* idx, int64_t total, int64_t N, int64_t M,
                           unsigned long long* counts) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int64_t b = i / (N * M);
  atomicAdd(&counts[b * N + idx[i]], 1ull);
}

// One thread per batch: exclusive scan of the counts into offsets [B, N + 1] and cursors [B, N].
__global__ void scan_keys(const unsigned long long* counts, int64_t B, int64_t N, int64_t* offsets,
                          unsigned long long* cursor) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= B) return;
  int64_t run = 0;
  for (int64_t j = 0; j < N; ++j) {
    offsets[b * (N + 1) + j] = run;
    cursor[b * N + j] = static_cast<unsigned long long>(run);
    run += static_cast<int64_t>(counts[b * N + j]);
  }
  offsets[b * (N + 1) + N] = run;
}

__global__ void fill_keys(const int64_t* idx, int64_t total, int64_t N, int64_t M,
                          unsigned long long* cursor, int64_t* entries) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int64_t b = i / (N * M);
  const unsigned long long at = atomicAdd(&cursor[b * N + idx[i]], 1ull);
  entries[b * N * M + static_cast<int64_t>(at)] = i - b * N * M;
}

// Atomic fills land in any order: sort each key's list (insertion sort: lists are short) so the
// gather order, hence the floating-point sum, is fixed.
__global__ void sort_keys(const int64_t* offsets, int64_t B, int64_t N, int64_t M,
                          int64_t* entries) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= B * N) return;
  const int64_t b = t / N, j = t % N;
  int64_t* e = entries + b * N * M;
  const int64_t lo = offsets[b * (N + 1) + j], hi = offsets[b * (N + 1) + j + 1];
  for (int64_t x = lo + 1; x < hi; ++x) {
    const int64_t v = e[x];
    int64_t y = x - 1;
    while (y >= lo && e[y] > v) {
      e[y + 1] = e[y];
      --y;
    }
    e[y + 1] = v;
  }
}

// One warp per key row (b, h, j): dk / dv gathered from the slots that point at key j.
__global__ void gather_kv(ClusterAttentionView a, ClusterAttentionGrads g, int64_t rows,
                          const float* ws_ds, const float* ws_w, const int64_t* offsets,
                          const int64_t* entries) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t kr = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (kr >= rows) return;
  const int D = a.head_dim, M = a.neighbours;
  const int64_t N = a.tokens;
  const int64_t j = kr % N, b = kr / (N * a.heads);
  const int h = static_cast<int>((kr / N) % a.heads);
  float dk[kMaxDimSlices], dv[kMaxDimSlices];
#pragma unroll
  for (int i = 0; i < kMaxDimSlices; ++i) dk[i] = dv[i] = 0.f;
  const int64_t row0 = (b * a.heads + h) * N;
  const int64_t lo = a.idx ? offsets[b * (N + 1) + j] : 0;
  const int64_t hi = a.idx ? offsets[b * (N + 1) + j + 1] : N;
  for (int64_t e = lo; e < hi; ++e) {
    const int64_t slot = a.idx ? entries[b * N * M + e] : e * M + j;
    const int64_t n = slot / M, m = slot % M;
    const int64_t row = row0 + n;
    const float ds = ws_ds[row * (M + 1) + m] * a.scale, w = ws_w[row * (M + 1) + m];
    const float* q = row_of(a.q, a.q_stride, b, h, n);
    const float* dout = g.dout + row * D;
#pragma unroll
    for (int i = 0; i < kMaxDimSlices; ++i) {
      const int d = lane + 32 * i;
      if (d < D) {
        dk[i] += ds * q[d];
        dv[i] += w * dout[d];
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kMaxDimSlices; ++i) {
    const int d = lane + 32 * i;
    if (d < D) {
      g.dk[kr * D + d] = dk[i];
      g.dv[kr * D + d] = dv[i];
    }
  }
}

// Blank-token gradients in a fixed order: one thread per (h, d), summing over (b, n).
__global__ void blank_grads(ClusterAttentionView a, ClusterAttentionGrads g, const float* ws_ds,
                            const float* ws_w) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  const int D = a.head_dim, M = a.neighbours;
  if (t >= a.heads * D) return;
  const int h = t / D, d = t % D;
  const int64_t N = a.tokens;
  float sk = 0.f, sv = 0.f;
  for (int64_t b = 0; b < a.batch; ++b) {
    for (int64_t n = 0; n < N; ++n) {
      const int64_t row = (b * a.heads + h) * N + n;
      sk += ws_ds[row * (M + 1) + M] * row_of(a.q, a.q_stride, b, h, n)[d];
      sv += ws_w[row * (M + 1) + M] * g.dout[row * D + d];
    }
  }
  if (g.dblank_k) g.dblank_k[t] = a.scale * sk;
  if (g.dblank_v) g.dblank_v[t] = sv;
}

// Position-bias gradients in a fixed order: one block per head, a tree reduction over threads.
__global__ void pe_grads(ClusterAttentionView a, ClusterAttentionGrads g, const float* ws_ds) {
  __shared__ float red[6][256];
  const int h = blockIdx.x;
  const int64_t N = a.tokens, M = a.neighbours;
  float acc[6] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  const int64_t total = static_cast<int64_t>(a.batch) * N * M;
  for (int64_t i = threadIdx.x; i < total; i += blockDim.x) {
    const int64_t b = i / (N * M), n = (i / M) % N, m = i % M;
    const float ds = ws_ds[((b * a.heads + h) * N + n) * (M + 1) + m];
    if (ds == 0.f) continue;
    const int64_t j = a.idx ? a.idx[i] : m;
    const float* pn = a.pos + (b * N + n) * 2;
    const float* pj = a.pos + (b * N + j) * 2;
    const float dx = pj[0] - pn[0], dy = pj[1] - pn[1];
    const float dist = sqrtf(dx * dx + dy * dy);
    acc[0] += ds * dx;
    acc[1] += ds * dy;
    acc[2] += ds * dist;
    acc[3] += dist > 0.f ? ds * dy / dist : 0.f;
    acc[4] += dist > 0.f ? ds * dx / dist : 0.f;
    acc[5] += ds;
  }
  for (int c = 0; c < 6; ++c) red[c][threadIdx.x] = acc[c];
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s /= 2) {
    if (threadIdx.x < s) {
      for (int c = 0; c < 6; ++c) red[c][threadIdx.x] += red[c][threadIdx.x + s];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    for (int c = 0; c < 5; ++c) {
      if (g.dpe_w) g.dpe_w[h * 5 + c] = red[c][0];
    }
    if (g.dpe_b) g.dpe_b[h] = red[5][0];
  }
}

unsigned grid_for(int64_t n, int per_block) {
  return static_cast<unsigned>((n + per_block - 1) / per_block);
}

int64_t align256(int64_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace

int cluster_attention_fwd_cuda(const ClusterAttentionView& a, void* stream) {
  if (a.head_dim > 32 * kMaxDimSlices) return static_cast<int>(cudaErrorInvalidValue);
  const int64_t rows = static_cast<int64_t>(a.batch) * a.heads * a.tokens;
  if (rows == 0) return 0;
  const size_t smem = static_cast<size_t>(kWarps) * a.head_dim * sizeof(float);
  fwd_kernel<<<grid_for(rows, kWarps), kWarps * 32, smem, static_cast<cudaStream_t>(stream)>>>(
      a, rows);
  return static_cast<int>(cudaGetLastError());
}

int64_t cluster_attention_bwd_workspace(const ClusterAttentionView& a, bool deterministic) {
  if (!deterministic) return 0;
  const int64_t rows = static_cast<int64_t>(a.batch) * a.heads * a.tokens;
  const int64_t B = a.batch, N = a.tokens, M = a.neighbours;
  int64_t bytes = 2 * align256(rows * (M + 1) * 4);
  if (a.idx) {
    bytes += align256(B * N * 8) * 2;    // counts, cursors
    bytes += align256(B * (N + 1) * 8);  // offsets
    bytes += align256(B * N * M * 8);    // entries
  }
  return bytes;
}

int cluster_attention_bwd_cuda(const ClusterAttentionView& a, const ClusterAttentionGrads& g,
                               bool deterministic, void* workspace, void* stream_ptr) {
  if (a.head_dim > 32 * kMaxDimSlices) return static_cast<int>(cudaErrorInvalidValue);
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  const int64_t rows = static_cast<int64_t>(a.batch) * a.heads * a.tokens;
  const int64_t B = a.batch, N = a.tokens, M = a.neighbours, D = a.head_dim, H = a.heads;
  // Every memset and launch is checked as it is queued: a failure returns its own error at once
  // instead of letting later steps run on unwritten buffers (or be reported as their error).
#define TESSERA_CUDA_TRY(...)                           \
  do {                                                  \
    const cudaError_t e_ = (__VA_ARGS__);               \
    if (e_ != cudaSuccess) return static_cast<int>(e_); \
  } while (0)
#define TESSERA_LAUNCHED() TESSERA_CUDA_TRY(cudaGetLastError())
  // Parameter gradients are sums that start at zero (also when there are no rows at all).
  if (g.dblank_k) TESSERA_CUDA_TRY(cudaMemsetAsync(g.dblank_k, 0, H * D * sizeof(float), stream));
  if (g.dblank_v) TESSERA_CUDA_TRY(cudaMemsetAsync(g.dblank_v, 0, H * D * sizeof(float), stream));
  if (g.dpe_w) TESSERA_CUDA_TRY(cudaMemsetAsync(g.dpe_w, 0, H * 5 * sizeof(float), stream));
  if (g.dpe_b) TESSERA_CUDA_TRY(cudaMemsetAsync(g.dpe_b, 0, H * sizeof(float), stream));
  if (rows == 0) return static_cast<int>(cudaGetLastError());
  const size_t smem = static_cast<size_t>(kWarps) * 2 * D * sizeof(float);
  if (!deterministic) {
    TESSERA_CUDA_TRY(cudaMemsetAsync(g.dk, 0, rows * D * sizeof(float), stream));
    TESSERA_CUDA_TRY(cudaMemsetAsync(g.dv, 0, rows * D * sizeof(float), stream));
    bwd_kernel<<<grid_for(rows, kWarps), kWarps * 32, smem, stream>>>(a, g, rows, false, nullptr,
                                                                      nullptr);
    TESSERA_LAUNCHED();
    return 0;
  }
  char* ws = static_cast<char*>(workspace);
  float* ws_ds = reinterpret_cast<float*>(ws);
  ws += align256(rows * (M + 1) * 4);
  float* ws_w = reinterpret_cast<float*>(ws);
  ws += align256(rows * (M + 1) * 4);
  bwd_kernel<<<grid_for(rows, kWarps), kWarps * 32, smem, stream>>>(a, g, rows, true, ws_ds, ws_w);
  TESSERA_LAUNCHED();
  int64_t* offsets = nullptr;
  int64_t* entries = nullptr;
  if (a.idx) {
    auto* counts = reinterpret_cast<unsigned long long*>(ws);
    ws += align256(B * N * 8);
    auto* cursor = reinterpret_cast<unsigned long long*>(ws);
    ws += align256(B * N * 8);
    offsets = reinterpret_cast<int64_t*>(ws);
    ws += align256(B * (N + 1) * 8);
    entries = reinterpret_cast<int64_t*>(ws);
    const int64_t total = B * N * M;
    TESSERA_CUDA_TRY(cudaMemsetAsync(counts, 0, B * N * 8, stream));
    count_keys<<<grid_for(total, 256), 256, 0, stream>>>(a.idx, total, N, M, counts);
    TESSERA_LAUNCHED();
    scan_keys<<<grid_for(B, 64), 64, 0, stream>>>(counts, B, N, offsets, cursor);
    TESSERA_LAUNCHED();
    fill_keys<<<grid_for(total, 256), 256, 0, stream>>>(a.idx, total, N, M, cursor, entries);
    TESSERA_LAUNCHED();
    sort_keys<<<grid_for(B * N, 128), 128, 0, stream>>>(offsets, B, N, M, entries);
    TESSERA_LAUNCHED();
  }
  gather_kv<<<grid_for(rows, kWarps), kWarps * 32, 0, stream>>>(a, g, rows, ws_ds, ws_w, offsets,
                                                                entries);
  TESSERA_LAUNCHED();
  if (a.blank_k) {
    blank_grads<<<grid_for(H * D, 128), 128, 0, stream>>>(a, g, ws_ds, ws_w);
    TESSERA_LAUNCHED();
  }
  if (a.pe_w) {
    pe_grads<<<static_cast<unsigned>(H), 256, 0, stream>>>(a, g, ws_ds);
    TESSERA_LAUNCHED();
  }
  return 0;
#undef TESSERA_LAUNCHED
#undef TESSERA_CUDA_TRY
}

}  // namespace tessera::kernels

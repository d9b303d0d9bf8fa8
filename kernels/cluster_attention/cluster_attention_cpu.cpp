// Fast CPU cluster attention: OpenMP over query rows (forward) or (batch, head) planes / keys
// (backward), fp32 accumulation, inner loops over head_dim written for the vectoriser.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cluster_attention/cluster_attention.h"
#include "kernels/cluster_attention/cluster_dropout.h"

namespace tessera::kernels {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline float dot(const float* __restrict a, const float* __restrict b, int n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

inline void axpy(float w, const float* __restrict x, float* __restrict y, int n) {
#pragma omp simd
  for (int i = 0; i < n; ++i) y[i] += w * x[i];
}

// The five relative-position features of key j seen from query n.
inline void pos_features(const float* pos, int64_t b, int64_t N, int64_t n, int64_t j, float* f) {
  const float* pn = pos + (b * N + n) * 2;
  const float* pj = pos + (b * N + j) * 2;
  const float dx = pj[0] - pn[0], dy = pj[1] - pn[1];
  const float dist = std::sqrt(dx * dx + dy * dy);
  f[0] = dx;
  f[1] = dy;
  f[2] = dist;
  f[3] = dist > 0.f ? dy / dist : 0.f;
  f[4] = dist > 0.f ? dx / dist : 0.f;
}

// Logits of row (b, h, n) into s[0..M] (s[M]: blank, -inf when absent); keys into key[0..M).
// Returns the row maximum.
float row_logits(const ClusterAttentionView& a, int64_t b, int h, int64_t n, const float* q,
                 float* s, int64_t* key) {
  const int M = a.neighbours, D = a.head_dim;
  const int64_t N = a.tokens;
  const int64_t* idx = a.idx ? a.idx + (b * N + n) * M : nullptr;
  const int64_t row = (b * a.heads + h) * N + n;
  const uint8_t* mask =
      a.mask ? a.mask + ((b * a.mask_heads + (a.mask_heads == 1 ? 0 : h)) * N + n) * M : nullptr;
  const float* kbase = a.k + b * a.k_stride[0] + h * a.k_stride[1];
  float mx = kNegInf;
  for (int m = 0; m < M; ++m) {
    const int64_t j = idx ? idx[m] : m;
    key[m] = j;
    if (mask && !mask[m]) {
      s[m] = kNegInf;
      continue;
    }
    float v = dot(q, kbase + j * a.k_stride[2], D) * a.scale;
    if (a.bias) v += a.bias[row * M + m];
    if (a.pe_w) {
      float f[5];
      pos_features(a.pos, b, N, n, j, f);
      const float* w = a.pe_w + h * 5;
      v += w[0] * f[0] + w[1] * f[1] + w[2] * f[2] + w[3] * f[3] + w[4] * f[4];
      if (a.pe_b) v += a.pe_b[h];
    }
    s[m] = v;
    mx = std::max(mx, v);
  }
  s[M] = a.blank_k ? dot(q, a.blank_k + h * D, D) * a.scale : kNegInf;
  return std::max(mx, s[M]);
}

// Turns logits into dropped-out weights w[m] = P[m] * z[m]; p[m] keeps P[m] (may alias w when
// there is no dropout).
void row_weights(const ClusterAttentionView& a, int64_t row, float lse, const float* s, float* p,
                 float* w) {
  const int M = a.neighbours;
  for (int m = 0; m <= M; ++m) p[m] = s[m] == kNegInf ? 0.f : std::exp(s[m] - lse);
  if (a.dropout_p > 0.f) {
    const float inv = 1.f / (1.f - a.dropout_p);
    const uint64_t base = static_cast<uint64_t>(row) * (M + 1);
    for (int m = 0; m <= M; ++m) {
      w[m] = dropout_keep(a.seed, base + m, a.dropout_p) ? p[m] * inv : 0.f;
    }
  } else if (w != p) {
    std::memcpy(w, p, sizeof(float) * (M + 1));
  }
}

}  // namespace

void cluster_attention_fwd_cpu(const ClusterAttentionView& a) {
  const int M = a.neighbours, D = a.head_dim, H = a.heads;
  const int64_t N = a.tokens;
  const int64_t rows = static_cast<int64_t>(a.batch) * H * N;
#pragma omp parallel
  {
    std::vector<float> s(M + 1), p(M + 1), w(M + 1);
    std::vector<int64_t> key(M);
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
      const int64_t n = row % N, b = row / (N * H);
      const int h = static_cast<int>((row / N) % H);
      const float* q = a.q + b * a.q_stride[0] + h * a.q_stride[1] + n * a.q_stride[2];
      float* o = a.out + row * D;
      std::fill(o, o + D, 0.f);
      const float mx = row_logits(a, b, h, n, q, s.data(), key.data());
      if (mx == kNegInf) {
        if (a.lse) a.lse[row] = kNegInf;
        continue;
      }
      float sum = 0.f;
      for (int m = 0; m <= M; ++m) sum += s[m] == kNegInf ? 0.f : std::exp(s[m] - mx);
      const float lse = mx + std::log(sum);
      if (a.lse) a.lse[row] = lse;
      row_weights(a, row, lse, s.data(), p.data(), w.data());
      const float* vbase = a.v + b * a.v_stride[0] + h * a.v_stride[1];
      for (int m = 0; m < M; ++m) {
        if (w[m] != 0.f) axpy(w[m], vbase + key[m] * a.v_stride[2], o, D);
      }
      if (a.blank_v && w[M] != 0.f) axpy(w[M], a.blank_v + h * D, o, D);
    }
  }
}

void cluster_inverse_index_cpu(const int64_t* idx, int batch, int tokens, int neighbours,
                               int64_t* offsets, int64_t* entries) {
  const int64_t N = tokens, M = neighbours;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < batch; ++b) {
    int64_t* off = offsets + b * (N + 1);
    std::fill(off, off + N + 1, 0);
    const int64_t* ib = idx + b * N * M;
    for (int64_t i = 0; i < N * M; ++i) ++off[ib[i] + 1];
    for (int64_t j = 0; j < N; ++j) off[j + 1] += off[j];
    std::vector<int64_t> cursor(off, off + N);
    // Slots visited in increasing order, so every key's list comes out sorted.
    for (int64_t i = 0; i < N * M; ++i) entries[b * N * M + cursor[ib[i]]++] = i;
  }
}

namespace {

// Row backward shared by both variants: recomputes the weights, writes dq (and dbias), and returns
// ds[0..M] (logit gradients) and w[0..M] (dropped-out weights) for the caller to scatter.
void row_backward(const ClusterAttentionView& a, const ClusterAttentionGrads& g, int64_t b, int h,
                  int64_t n, float* s, float* p, float* w, float* ds, int64_t* key) {
  const int M = a.neighbours, D = a.head_dim;
  const int64_t N = a.tokens;
  const int64_t row = (b * a.heads + h) * N + n;
  const float* q = a.q + b * a.q_stride[0] + h * a.q_stride[1] + n * a.q_stride[2];
  const float* dout = g.dout + row * D;
  float* dq = g.dq + row * D;
  std::fill(dq, dq + D, 0.f);
  const float lse = a.lse[row];
  row_logits(a, b, h, n, q, s, key);
  if (lse == kNegInf) {
    std::fill(ds, ds + M + 1, 0.f);
    std::fill(w, w + M + 1, 0.f);
    if (g.dbias) std::fill(g.dbias + row * M, g.dbias + (row + 1) * M, 0.f);
    return;
  }
  row_weights(a, row, lse, s, p, w);
  const float dsum = dot(dout, a.out + row * D, D);  // = sum_m P[m] dP[m]
  const float* vbase = a.v + b * a.v_stride[0] + h * a.v_stride[1];
  const float* kbase = a.k + b * a.k_stride[0] + h * a.k_stride[1];
  const float keep = a.dropout_p > 0.f ? 1.f / (1.f - a.dropout_p) : 1.f;
  for (int m = 0; m <= M; ++m) {
    if (p[m] == 0.f) {
      ds[m] = 0.f;
      continue;
    }
    const float* v = m < M ? vbase + key[m] * a.v_stride[2] : a.blank_v + h * D;
    // dP[m] = z[m] * dout . v;  z[m] = w[m] / p[m] in {0, keep}.
    const float z = a.dropout_p > 0.f ? (w[m] != 0.f ? keep : 0.f) : 1.f;
    ds[m] = p[m] * (z * dot(dout, v, D) - dsum);
    const float* k = m < M ? kbase + key[m] * a.k_stride[2] : a.blank_k + h * D;
    axpy(a.scale * ds[m], k, dq, D);
  }
  if (g.dbias) std::copy(ds, ds + M, g.dbias + row * M);
}

}  // namespace

void cluster_attention_bwd_cpu(const ClusterAttentionView& a, const ClusterAttentionGrads& g,
                               bool deterministic) {
  const int M = a.neighbours, D = a.head_dim, H = a.heads;
  const int64_t N = a.tokens, B = a.batch;
  const int64_t planes = B * H;
  const bool blank = a.blank_k != nullptr;
  // Per-plane partial sums of the parameter gradients, reduced over batches in a fixed order.
  std::vector<float> part_bk(blank ? planes * D : 0), part_bv(blank ? planes * D : 0);
  std::vector<double> part_pe(a.pe_w ? planes * 6 : 0);

  if (!deterministic) {
#pragma omp parallel
    {
      std::vector<float> s(M + 1), p(M + 1), w(M + 1), ds(M + 1), f(5);
      std::vector<int64_t> key(M);
#pragma omp for schedule(dynamic, 1)
      for (int64_t plane = 0; plane < planes; ++plane) {
        const int64_t b = plane / H;
        const int h = static_cast<int>(plane % H);
        float* dk = g.dk + plane * N * D;
        float* dv = g.dv + plane * N * D;
        std::fill(dk, dk + N * D, 0.f);
        std::fill(dv, dv + N * D, 0.f);
        float* bk = blank ? &part_bk[plane * D] : nullptr;
        float* bv = blank ? &part_bv[plane * D] : nullptr;
        if (blank) {
          std::fill(bk, bk + D, 0.f);
          std::fill(bv, bv + D, 0.f);
        }
        for (int64_t n = 0; n < N; ++n) {
          row_backward(a, g, b, h, n, s.data(), p.data(), w.data(), ds.data(), key.data());
          const int64_t row = plane * N + n;
          const float* q = a.q + b * a.q_stride[0] + h * a.q_stride[1] + n * a.q_stride[2];
          const float* dout = g.dout + row * D;
          for (int m = 0; m < M; ++m) {
            if (ds[m] != 0.f) axpy(a.scale * ds[m], q, dk + key[m] * D, D);
            if (w[m] != 0.f) axpy(w[m], dout, dv + key[m] * D, D);
          }
          if (blank) {
            axpy(a.scale * ds[M], q, bk, D);
            axpy(w[M], dout, bv, D);
          }
          if (a.pe_w) {
            double* pe = &part_pe[plane * 6];
            for (int m = 0; m < M; ++m) {
              if (ds[m] == 0.f) continue;
              pos_features(a.pos, b, N, n, key[m], f.data());
              for (int c = 0; c < 5; ++c) pe[c] += static_cast<double>(ds[m]) * f[c];
              pe[5] += ds[m];
            }
          }
        }
      }
    }
  } else {
    // Pass 1: per row, logit gradients and weights into scratch; dq and dbias directly.
    const int64_t rows = planes * N;
    std::vector<float> ds_all(rows * (M + 1)), w_all(rows * (M + 1));
#pragma omp parallel
    {
      std::vector<float> s(M + 1), p(M + 1);
      std::vector<int64_t> key(M);
#pragma omp for schedule(static)
      for (int64_t row = 0; row < rows; ++row) {
        const int64_t n = row % N, b = row / (N * H);
        const int h = static_cast<int>((row / N) % H);
        row_backward(a, g, b, h, n, s.data(), p.data(), &w_all[row * (M + 1)],
                     &ds_all[row * (M + 1)], key.data());
      }
    }
    // Pass 2: every key gathers its contributions through the inverse index, in slot order.
    std::vector<int64_t> offsets, entries;
    if (a.idx) {
      offsets.resize(B * (N + 1));
      entries.resize(B * N * M);
      cluster_inverse_index_cpu(a.idx, a.batch, a.tokens, M, offsets.data(), entries.data());
    }
#pragma omp parallel for schedule(static)
    for (int64_t kr = 0; kr < rows; ++kr) {  // key row (b, h, j)
      const int64_t j = kr % N, b = kr / (N * H);
      const int h = static_cast<int>((kr / N) % H);
      float* dk = g.dk + kr * D;
      float* dv = g.dv + kr * D;
      std::fill(dk, dk + D, 0.f);
      std::fill(dv, dv + D, 0.f);
      const int64_t plane_row0 = (b * H + h) * N;
      auto add = [&](int64_t slot) {
        const int64_t n = slot / M, m = slot % M;
        const int64_t row = plane_row0 + n;
        const float dsv = ds_all[row * (M + 1) + m], wv = w_all[row * (M + 1) + m];
        const float* q = a.q + b * a.q_stride[0] + h * a.q_stride[1] + n * a.q_stride[2];
        if (dsv != 0.f) axpy(a.scale * dsv, q, dk, D);
        if (wv != 0.f) axpy(wv, g.dout + row * D, dv, D);
      };
      if (a.idx) {
        const int64_t* off = &offsets[b * (N + 1)];
        for (int64_t e = off[j]; e < off[j + 1]; ++e) add(entries[b * N * M + e]);
      } else {
        for (int64_t n = 0; n < N; ++n) add(n * M + j);
      }
    }
    // Pass 3: parameter gradients per plane.
#pragma omp parallel
    {
      std::vector<float> f(5);
#pragma omp for schedule(static)
      for (int64_t plane = 0; plane < planes; ++plane) {
        const int64_t b = plane / H;
        const int h = static_cast<int>(plane % H);
        if (blank) {
          std::fill(&part_bk[plane * D], &part_bk[plane * D] + D, 0.f);
          std::fill(&part_bv[plane * D], &part_bv[plane * D] + D, 0.f);
        }
        for (int64_t n = 0; n < N; ++n) {
          const int64_t row = plane * N + n;
          const float* ds = &ds_all[row * (M + 1)];
          if (blank) {
            const float* q = a.q + b * a.q_stride[0] + h * a.q_stride[1] + n * a.q_stride[2];
            axpy(a.scale * ds[M], q, &part_bk[plane * D], D);
            axpy(w_all[row * (M + 1) + M], g.dout + row * D, &part_bv[plane * D], D);
          }
          if (a.pe_w) {
            double* pe = &part_pe[plane * 6];
            for (int m = 0; m < M; ++m) {
              if (ds[m] == 0.f) continue;
              const int64_t j = a.idx ? a.idx[(b * N + n) * M + m] : m;
              pos_features(a.pos, b, N, n, j, f.data());
              for (int c = 0; c < 5; ++c) pe[c] += static_cast<double>(ds[m]) * f[c];
              pe[5] += ds[m];
            }
          }
        }
      }
    }
  }

  // Fixed-order reductions over batches.
  if (blank) {
    for (int64_t i = 0; i < static_cast<int64_t>(H) * D; ++i) {
      float sk = 0.f, sv = 0.f;
      for (int64_t b = 0; b < B; ++b) {
        sk += part_bk[b * H * D + i];
        sv += part_bv[b * H * D + i];
      }
      if (g.dblank_k) g.dblank_k[i] = sk;
      if (g.dblank_v) g.dblank_v[i] = sv;
    }
  } else {
    if (g.dblank_k) std::fill(g.dblank_k, g.dblank_k + H * D, 0.f);
    if (g.dblank_v) std::fill(g.dblank_v, g.dblank_v + H * D, 0.f);
  }
  if (a.pe_w) {
    for (int h = 0; h < H; ++h) {
      double acc[6] = {0, 0, 0, 0, 0, 0};
      for (int64_t b = 0; b < B; ++b) {
        for (int c = 0; c < 6; ++c) acc[c] += part_pe[(b * H + h) * 6 + c];
      }
      if (g.dpe_w) {
        for (int c = 0; c < 5; ++c) g.dpe_w[h * 5 + c] = static_cast<float>(acc[c]);
      }
      if (g.dpe_b) g.dpe_b[h] = static_cast<float>(acc[5]);
    }
  }
}

}  // namespace tessera::kernels

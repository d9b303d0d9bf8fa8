// Fast CPU cluster attention: OpenMP over query rows (forward) or (batch, head) planes / keys
// (backward), fp32 accumulation, head_dim loops vectorised and compiled for AVX-512 / AVX2 /
// baseline (TESSERA_CPU_CLONES), softmax exps by a vectorisable polynomial.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/cluster_attention/cluster_attention.h"
#include "kernels/cluster_attention/cluster_cpu_simd.h"
#include "kernels/cluster_attention/cluster_dropout.h"

namespace tessera::kernels {

namespace {

using simd::axpy;
using simd::axpyk;
using simd::dot;
using simd::dotk;
using simd::v8f;
using simd::v8i;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Per-thread scratch for one row: logits, softmax weights, dropped-out weights, grads, keys.
// Rows are padded to a multiple of 8 (padding logits -inf, padding keys 0, a valid key) for the
// 8-wide loops.
struct Scratch {
  std::vector<float> s, p, w, ds;
  std::vector<float> sums;  // forward: the softmax sums of a chunk of rows
  std::vector<int64_t> key;
  explicit Scratch(int M)
      : s(pad8(M + 1), kNegInf),
        p(pad8(M + 1)),
        w(pad8(M + 1)),
        ds(pad8(M + 1)),
        key(pad8(M + 1), 0) {}
  static size_t pad8(int n) { return (static_cast<size_t>(n) + 7) / 8 * 8; }
};

// The five relative-position features of key j seen from query n.
TESSERA_CPU_INLINE void pos_features(const float* pos, int64_t b, int64_t N, int64_t n, int64_t j,
                                     float* f) {
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

TESSERA_CPU_INLINE const float* row_ptr(const float* base, const int64_t* st, int64_t b, int64_t h,
                                        int64_t n) {
  return base + b * st[0] + h * st[1] + n * st[2];
}

// out[m] = x . rows[key[m]] for m in [0, M), rows at base + key * stride. With a compile-time
// head_dim (a multiple of 8) eight neighbours at a time share one tree of horizontal sums.
template <int kD>
TESSERA_CPU_INLINE void row_dots(const float* x, const float* base, int64_t stride,
                                 const int64_t* key, int M, int D, float* out) {
  int m = 0;
  if constexpr (kD > 0 && kD % 8 == 0) {
    v8f xv[kD / 8];
    for (int i = 0; i < kD / 8; ++i) xv[i] = simd::load8(x + 8 * i);
    for (; m + 8 <= M; m += 8)
      simd::store8(out + m, simd::dot8_rows<kD>(xv, base, stride, key + m));
  }
  for (; m < M; ++m) out[m] = dotk<kD>(x, base + key[m] * stride, D);
}

// What row (b, h, n) reads, resolved once; keys of the row in key[0..M), padding keys 0.
struct RowRefs {
  int64_t b, n, row;
  int h;
  const float* q;       // [D]
  const float* kbase;   // this (batch, head)'s keys; rows k_stride[2] apart
  const float* vbase;   // values likewise
  const float* bias;    // [M] or null
  const uint8_t* mask;  // [M] or null
  const int64_t* key;   // [pad8(M)], or the index row itself when M is a multiple of 8
};

TESSERA_CPU_INLINE RowRefs row_refs(const ClusterAttentionView& a, int64_t b, int h, int64_t n,
                                    int64_t* key) {
  const int M = a.neighbours;
  const int64_t N = a.tokens;
  RowRefs r;
  r.b = b;
  r.h = h;
  r.n = n;
  r.row = (b * a.heads + h) * N + n;
  r.q = row_ptr(a.q, a.q_stride, b, h, n);
  r.kbase = a.k + b * a.k_stride[0] + h * a.k_stride[1];
  r.vbase = a.v + b * a.v_stride[0] + h * a.v_stride[1];
  r.bias = a.bias ? a.bias + r.row * M : nullptr;
  r.mask =
      a.mask ? a.mask + ((b * a.mask_heads + (a.mask_heads == 1 ? 0 : h)) * N + n) * M : nullptr;
  if (a.idx && M % 8 == 0) {
    // The 8-wide loops read exactly M keys: the index row itself, no copy.
    r.key = a.idx + (b * N + n) * M;
    return r;
  }
  if (a.idx) {
    std::copy(a.idx + (b * N + n) * M, a.idx + (b * N + n + 1) * M, key);
  } else {
    for (int m = 0; m < M; ++m) key[m] = m;
  }
  r.key = key;
  return r;
}

// Logits of neighbours [m0, m0 + 8) (scale q.k, + bias, + position bias, masked), -inf for the
// lanes past M. qv: q as kD / 8 vectors. Per-lane terms go through small arrays, never through
// element access of a vector (which would keep it in memory).
template <int kD>
TESSERA_CPU_INLINE v8f logits8(const ClusterAttentionView& a, const RowRefs& r, int m0,
                               const v8f* qv) {
  const int M = a.neighbours, lanes = std::min(8, M - m0);
  v8f s = simd::dot8_rows<kD>(qv, r.kbase, a.k_stride[2], r.key + m0) * a.scale;
  if (r.bias) {
    if (lanes == 8) {
      s += simd::load8(r.bias + m0);
    } else {
      float b8[8] = {};
      std::copy(r.bias + m0, r.bias + m0 + lanes, b8);
      s += simd::load8(b8);
    }
  }
  if (a.pe_w) {
    const float* w = a.pe_w + r.h * 5;
    const float pb = a.pe_b ? a.pe_b[r.h] : 0.f;
    float e8[8] = {};
    for (int i = 0; i < lanes; ++i) {
      float f[5];
      pos_features(a.pos, r.b, a.tokens, r.n, r.key[m0 + i], f);
      e8[i] = w[0] * f[0] + w[1] * f[1] + w[2] * f[2] + w[3] * f[3] + w[4] * f[4] + pb;
    }
    s += simd::load8(e8);
  }
  if (r.mask) {
    float m8[8];
    for (int i = 0; i < 8; ++i) m8[i] = i < lanes && r.mask[m0 + i] ? 0.f : kNegInf;
    s += simd::load8(m8);  // -inf where masked
  } else if (lanes < 8) {
    const v8i lane = {0, 1, 2, 3, 4, 5, 6, 7};
    const v8f ninf = v8f{} + kNegInf;
    s = lane < lanes ? s : ninf;
  }
  return s;
}

TESSERA_CPU_INLINE float hmax8(v8f v) {
  float mx = v[0];
  for (int i = 1; i < 8; ++i) mx = std::max(mx, v[i]);
  return mx;
}

// Logits of row (b, h, n) into s[0..M] (s[M]: blank, -inf when absent); keys into key[0..M).
// Returns the row maximum.
template <int kD>
TESSERA_CPU_INLINE float row_logits(const ClusterAttentionView& a, int64_t b, int h, int64_t n,
                                    const float* q, float* s, int64_t* key) {
  const int M = a.neighbours, D = kD ? kD : a.head_dim;
  const int64_t N = a.tokens;
  const int64_t* idx = a.idx ? a.idx + (b * N + n) * M : nullptr;
  const int64_t row = (b * a.heads + h) * N + n;
  const uint8_t* mask =
      a.mask ? a.mask + ((b * a.mask_heads + (a.mask_heads == 1 ? 0 : h)) * N + n) * M : nullptr;
  const float* kbase = a.k + b * a.k_stride[0] + h * a.k_stride[1];
  for (int m = 0; m < M; ++m) key[m] = idx ? idx[m] : m;
  row_dots<kD>(q, kbase, a.k_stride[2], key, M, D, s);
  for (int m = 0; m < M; ++m) s[m] *= a.scale;
  if (a.bias) {
    const float* bias = a.bias + row * M;
    for (int m = 0; m < M; ++m) s[m] += bias[m];
  }
  if (a.pe_w) {
    const float* w = a.pe_w + h * 5;
    const float pb = a.pe_b ? a.pe_b[h] : 0.f;
    for (int m = 0; m < M; ++m) {
      float f[5];
      pos_features(a.pos, b, N, n, key[m], f);
      s[m] += w[0] * f[0] + w[1] * f[1] + w[2] * f[2] + w[3] * f[3] + w[4] * f[4] + pb;
    }
  }
  if (mask) {
    for (int m = 0; m < M; ++m) s[m] = mask[m] ? s[m] : kNegInf;
  }
  s[M] = a.blank_k ? dotk<kD>(q, a.blank_k + h * D, D) * a.scale : kNegInf;
  // Row maximum over the padded row (padding is -inf), 8 lanes at a time.
  v8f mx8 = simd::load8(s);
  for (int m = 8; m <= M; m += 8) {
    const v8f x = simd::load8(s + m);
    mx8 = mx8 > x ? mx8 : x;
  }
  float mx = mx8[0];
  for (int i = 1; i < 8; ++i) mx = std::max(mx, mx8[i]);
  return mx;
}

// p[m] = exp(s[m] - shift) (0 where s is -inf) over the padded rows; returns the sum.
TESSERA_CPU_INLINE float row_exp(const float* s, float shift, float* p, int count) {
  v8f sum = {};
  for (int m = 0; m < count; m += 8) {
    const v8f x = simd::load8(s + m);
    const v8f e = simd::exp8(x - shift);
    const v8f z = {};
    const v8f r = x == kNegInf ? z : e;
    simd::store8(p + m, r);
    sum += r;
  }
  return simd::hsum8(sum);
}

// w[m] = p[m] * z[m] with the dropout factor z in {0, 1 / (1 - p)}.
TESSERA_CPU_INLINE void row_dropout(const ClusterAttentionView& a, int64_t row, const float* p,
                                    float* w) {
  const int M = a.neighbours;
  if (a.dropout_p <= 0.f) {
    std::copy(p, p + M + 1, w);
    return;
  }
  const float inv = 1.f / (1.f - a.dropout_p);
  const uint64_t base = static_cast<uint64_t>(row) * (M + 1);
  for (int m = 0; m <= M; ++m) {
    w[m] = dropout_keep(a.seed, base + m, a.dropout_p) ? p[m] * inv : 0.f;
  }
}

template <int kD>
TESSERA_CPU_CLONES void fwd_rows(const ClusterAttentionView& a, int64_t r0, int64_t r1,
                                 Scratch& t) {
  const int M = a.neighbours, D = kD ? kD : a.head_dim, H = a.heads;
  const int64_t N = a.tokens;
  if (a.lse && t.sums.size() < static_cast<size_t>(r1 - r0)) t.sums.resize(r1 - r0);
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t n = row % N, b = row / (N * H);
    const int h = static_cast<int>((row / N) % H);
    float* o = a.out + row * D;
    std::fill(o, o + D, 0.f);
    const float* q = row_ptr(a.q, a.q_stride, b, h, n);
    const int64_t* key = t.key.data();
    float mx;
    if constexpr (kD > 0 && kD % 8 == 0) {
      // One pass over blocks of eight neighbours: logits, bias terms, mask and running maximum.
      const RowRefs r = row_refs(a, b, h, n, t.key.data());
      key = r.key;
      v8f qv[kD / 8];
      for (int i = 0; i < kD / 8; ++i) qv[i] = simd::load8(q + 8 * i);
      v8f mx8 = v8f{} + kNegInf;
      for (int m0 = 0; m0 < M; m0 += 8) {
        const v8f s8 = logits8<kD>(a, r, m0, qv);
        simd::store8(t.s.data() + m0, s8);
        mx8 = mx8 > s8 ? mx8 : s8;
      }
      t.s[M] = a.blank_k ? dotk<kD>(q, a.blank_k + h * D, D) * a.scale : kNegInf;
      mx = std::max(hmax8(mx8), t.s[M]);
    } else {
      mx = row_logits<kD>(a, b, h, n, q, t.s.data(), t.key.data());
    }
    if (mx == kNegInf) {
      if (a.lse) a.lse[row] = kNegInf;
      if (a.weights) std::fill(a.weights + row * (M + 1), a.weights + (row + 1) * (M + 1), 0.f);
      continue;
    }
    const float sum = row_exp(t.s.data(), mx, t.p.data(), M + 1);
    if (a.lse) {
      // lse = mx + log(sum), the log taken after the loop: a libm call here would spill every
      // vector register of the row.
      a.lse[row] = mx;
      t.sums[row - r0] = sum;
    }
    // The weights stay unnormalised (exp(s - max)); the output row is scaled by 1 / sum at the end.
    const float inv = 1.f / sum;
    if (a.weights) {
      float* pw = a.weights + row * (M + 1);
      int m = 0;
      for (; m + 8 <= M + 1; m += 8) simd::store8(pw + m, simd::load8(t.p.data() + m) * inv);
      for (; m <= M; ++m) pw[m] = t.p[m] * inv;
    }
    const float* w = t.p.data();
    if (a.dropout_p > 0.f) {
      row_dropout(a, row, t.p.data(), t.w.data());
      w = t.w.data();
    }
    const float* vbase = a.v + b * a.v_stride[0] + h * a.v_stride[1];
    if constexpr (kD > 0 && kD % 8 == 0) {
      // A compile-time head_dim keeps the output row in vector registers across neighbours.
      // Independent accumulator sets hide the FMA latency when head_dim is only 1-2 vectors.
      constexpr int kV = kD / 8, kSets = kV >= 4 ? 1 : 4 / kV;
      v8f acc[kSets][kV] = {};
      int m = 0;
      for (; m + kSets <= M; m += kSets) {
        for (int u = 0; u < kSets; ++u) {
          const float* v = vbase + key[m + u] * a.v_stride[2];
          const float wm = w[m + u];
          for (int i = 0; i < kV; ++i) acc[u][i] += wm * simd::load8(v + 8 * i);
        }
      }
      for (; m < M; ++m) {
        const float* v = vbase + key[m] * a.v_stride[2];
        for (int i = 0; i < kV; ++i) acc[0][i] += w[m] * simd::load8(v + 8 * i);
      }
      if (a.blank_v) {
        for (int i = 0; i < kV; ++i) acc[0][i] += w[M] * simd::load8(a.blank_v + h * D + 8 * i);
      }
      for (int u = 1; u < kSets; ++u) {
        for (int i = 0; i < kV; ++i) acc[0][i] += acc[u][i];
      }
      for (int i = 0; i < kV; ++i) simd::store8(o + 8 * i, acc[0][i] * inv);
    } else {
      for (int m = 0; m < M; ++m) {
        if (w[m] != 0.f) axpy(w[m], vbase + key[m] * a.v_stride[2], o, D);
      }
      if (a.blank_v && w[M] != 0.f) axpy(w[M], a.blank_v + h * D, o, D);
      for (int i = 0; i < D; ++i) o[i] *= inv;
    }
  }
  if (a.lse) {
    for (int64_t row = r0; row < r1; ++row) {
      if (a.lse[row] != kNegInf) a.lse[row] += std::log(t.sums[row - r0]);
    }
  }
}

// Logit gradients and dropped-out weights of one row, [M + 1] each (slot M: the blank token).
struct RowGrads {
  const float* ds;
  const float* w;
  const int64_t* key;  // the row's M keys
};

// Row backward shared by both variants: recomputes the weights from the stored lse (no max, no
// normalisation pass), writes dq (and dbias), returns ds (logit gradients) and w (dropped-out
// weights), and calls per_slot(m, key, scale * ds[m], w[m]) for every neighbour m < M inside the
// same pass over the neighbours that accumulates dq, so a caller that owns dk / dv scatters there.
// With a compile-time head_dim (a multiple of 8) the logits, weights, dout . v and ds of eight
// neighbours are made in one pass over blocks, their dots sharing horizontal-sum trees.
template <int kD, typename PerSlot>
TESSERA_CPU_INLINE RowGrads row_backward(const ClusterAttentionView& a,
                                         const ClusterAttentionGrads& g, int64_t b, int h,
                                         int64_t n, Scratch& t, PerSlot&& per_slot) {
  const int M = a.neighbours, D = kD ? kD : a.head_dim;
  const int64_t N = a.tokens;
  const int64_t row = (b * a.heads + h) * N + n;
  const float* q = row_ptr(a.q, a.q_stride, b, h, n);
  const float* dout = g.dout + row * D;
  float* dq = g.dq + row * D;
  const float lse = a.lse[row];
  float* ds = t.ds.data();
  float* w = t.w.data();
  if (lse == kNegInf) {  // a fully masked row: no weight, no gradient
    std::fill(dq, dq + D, 0.f);
    std::fill(ds, ds + M + 1, 0.f);
    std::fill(w, w + M + 1, 0.f);
    if (g.dbias) std::fill(g.dbias + row * M, g.dbias + (row + 1) * M, 0.f);
    return {ds, w, t.key.data()};
  }
  const float dsum = dotk<kD>(dout, a.out + row * D, D);  // = sum_m P[m] dP[m]
  const float keep = a.dropout_p > 0.f ? 1.f / (1.f - a.dropout_p) : 1.f;
  const uint64_t drop_base = static_cast<uint64_t>(row) * (M + 1);
  // z[m] in {0, keep}: the dropout factor of slot m.
  auto z_of = [&](int m) { return dropout_keep(a.seed, drop_base + m, a.dropout_p) ? keep : 0.f; };
  const RowRefs r = row_refs(a, b, h, n, t.key.data());
  const int64_t* key = r.key;
  if constexpr (kD > 0 && kD % 8 == 0) {
    constexpr int kV = kD / 8;
    v8f qv[kV], gv[kV];
    for (int i = 0; i < kV; ++i) {
      qv[i] = simd::load8(q + 8 * i);
      gv[i] = simd::load8(dout + 8 * i);
    }
    const v8f zero = {};
    const float* p = t.p.data();
    // Two passes over blocks of eight, each a chain of independent blocks: weights, then
    // dout . v and the logit gradients.
    if (a.weights && M % 8 == 0) {
      p = a.weights + row * (M + 1);  // the blocks read exactly M weights
    } else if (a.weights) {
      std::copy(a.weights + row * (M + 1), a.weights + row * (M + 1) + M, t.p.data());
      std::fill(t.p.data() + M, t.p.data() + Scratch::pad8(M), 0.f);
    } else {
      for (int m0 = 0; m0 < M; m0 += 8) {
        const v8f s8 = logits8<kD>(a, r, m0, qv);
        simd::store8(t.p.data() + m0, s8 == kNegInf ? zero : simd::exp8(s8 - lse));
      }
    }
    for (int m0 = 0; m0 < M; m0 += 8) {
      const v8f p8 = simd::load8(p + m0);
      const v8f dp8 = simd::dot8_rows<kD>(gv, r.vbase, a.v_stride[2], key + m0);
      v8f w8 = p8, ds8 = p8 * (dp8 - dsum);
      if (a.dropout_p > 0.f) {
        float z[8] = {};
        for (int i = 0; i < std::min(8, M - m0); ++i) z[i] = z_of(m0 + i);
        const v8f z8 = simd::load8(z);
        w8 = p8 * z8;
        ds8 = p8 * (z8 * dp8 - dsum);
      }
      simd::store8(ds + m0, p8 == zero ? zero : ds8);
      simd::store8(w + m0, w8);
    }
  } else {
    float* p = t.p.data();
    if (a.weights) {
      std::copy(a.weights + row * (M + 1), a.weights + (row + 1) * (M + 1), p);
    } else {
      row_logits<kD>(a, b, h, n, q, t.s.data(), t.key.data());
      row_exp(t.s.data(), lse, p, M + 1);
    }
    row_dots<kD>(dout, r.vbase, a.v_stride[2], key, M, D, ds);
    for (int m = 0; m < M; ++m) {
      const float z = a.dropout_p > 0.f ? z_of(m) : 1.f;
      w[m] = p[m] * z;
      ds[m] = p[m] == 0.f ? 0.f : p[m] * (z * ds[m] - dsum);
    }
  }
  // The blank token, slot M.
  {
    float pb = 0.f;
    if (a.weights) {
      pb = a.weights[row * (M + 1) + M];
    } else if (a.blank_k) {
      pb = simd::exp_approx(dotk<kD>(q, a.blank_k + h * D, D) * a.scale - lse);
    }
    const float z = a.dropout_p > 0.f ? z_of(M) : 1.f;
    const float dp = a.blank_v ? dotk<kD>(dout, a.blank_v + h * D, D) : 0.f;
    w[M] = pb * z;
    ds[M] = pb == 0.f ? 0.f : pb * (z * dp - dsum);
  }
  // Locals: the scatter's stores could alias the view as far as the compiler knows.
  const float scale = a.scale;
  const int64_t k_stride = a.k_stride[2];
  if constexpr (kD > 0 && kD % 8 == 0) {
    // dq stays in registers; independent accumulator sets hide the FMA latency when head_dim is
    // only one or two vectors.
    constexpr int kV = kD / 8, kSets = kV >= 4 ? 1 : 4 / kV;
    v8f acc[kSets][kV] = {};
    int m = 0;
    for (; m + kSets <= M; m += kSets) {
      for (int u = 0; u < kSets; ++u) {
        const float c = scale * ds[m + u];
        const float* k = r.kbase + key[m + u] * k_stride;
        for (int i = 0; i < kV; ++i) acc[u][i] += c * simd::load8(k + 8 * i);
        per_slot(m + u, key[m + u], c, w[m + u]);
      }
    }
    for (; m < M; ++m) {
      const float c = scale * ds[m];
      const float* k = r.kbase + key[m] * k_stride;
      for (int i = 0; i < kV; ++i) acc[0][i] += c * simd::load8(k + 8 * i);
      per_slot(m, key[m], c, w[m]);
    }
    if (a.blank_k) {
      const float c = scale * ds[M];
      for (int i = 0; i < kV; ++i) acc[0][i] += c * simd::load8(a.blank_k + h * D + 8 * i);
    }
    for (int u = 1; u < kSets; ++u) {
      for (int i = 0; i < kV; ++i) acc[0][i] += acc[u][i];
    }
    for (int i = 0; i < kV; ++i) simd::store8(dq + 8 * i, acc[0][i]);
  } else {
    std::fill(dq, dq + D, 0.f);
    for (int m = 0; m < M; ++m) {
      const float c = a.scale * ds[m];
      axpy(c, r.kbase + key[m] * a.k_stride[2], dq, D);
      per_slot(m, key[m], c, w[m]);
    }
    if (a.blank_k) axpy(a.scale * ds[M], a.blank_k + h * D, dq, D);
  }
  if (g.dbias) std::copy(ds, ds + M, g.dbias + row * M);
  return {ds, w, key};
}

// Default backward for one (batch, head) plane: dk / dv of the plane are owned by this call and
// updated in the same pass over the neighbours that computes dq.
template <int kD>
TESSERA_CPU_CLONES void bwd_plane(const ClusterAttentionView& a, const ClusterAttentionGrads& g,
                                  int64_t plane, float* part_bk, float* part_bv, double* part_pe) {
  const int M = a.neighbours, D = kD ? kD : a.head_dim, H = a.heads;
  const int64_t N = a.tokens;
  const int64_t b = plane / H;
  const int h = static_cast<int>(plane % H);
  Scratch t(M);
  float* dk = g.dk + plane * N * D;
  float* dv = g.dv + plane * N * D;
  std::fill(dk, dk + N * D, 0.f);
  std::fill(dv, dv + N * D, 0.f);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t row = plane * N + n;
    const float* q = row_ptr(a.q, a.q_stride, b, h, n);
    const float* dout = g.dout + row * D;
    RowGrads rg;
    if constexpr (kD > 0 && kD % 8 == 0) {
      constexpr int kV = kD / 8;
      v8f qv[kV], gv[kV];
      for (int i = 0; i < kV; ++i) {
        qv[i] = simd::load8(q + 8 * i);
        gv[i] = simd::load8(dout + 8 * i);
      }
      rg = row_backward<kD>(a, g, b, h, n, t, [&](int, int64_t j, float c, float wm) {
        float* dkj = dk + j * kD;
        float* dvj = dv + j * kD;
        for (int i = 0; i < kV; ++i) {
          simd::store8(dkj + 8 * i, simd::load8(dkj + 8 * i) + c * qv[i]);
          simd::store8(dvj + 8 * i, simd::load8(dvj + 8 * i) + wm * gv[i]);
        }
      });
    } else {
      rg = row_backward<kD>(a, g, b, h, n, t, [&](int, int64_t j, float c, float wm) {
        if (c != 0.f) axpy(c, q, dk + j * D, D);
        if (wm != 0.f) axpy(wm, dout, dv + j * D, D);
      });
    }
    if (part_bk) {
      axpy(a.scale * rg.ds[M], q, part_bk, D);
      axpy(rg.w[M], dout, part_bv, D);
    }
    if (part_pe) {
      float f[5];
      for (int m = 0; m < M; ++m) {
        if (rg.ds[m] == 0.f) continue;
        pos_features(a.pos, b, N, n, rg.key[m], f);
        for (int c = 0; c < 5; ++c) part_pe[c] += static_cast<double>(rg.ds[m]) * f[c];
        part_pe[5] += rg.ds[m];
      }
    }
  }
}

// Deterministic pass 1 over rows [r0, r1): logit gradients and weights into scratch rows.
template <int kD>
TESSERA_CPU_CLONES void bwd_rows(const ClusterAttentionView& a, const ClusterAttentionGrads& g,
                                 int64_t r0, int64_t r1, float* ds_all, float* w_all) {
  const int M = a.neighbours, H = a.heads;
  const int64_t N = a.tokens;
  Scratch t(M);
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t n = row % N, b = row / (N * H);
    const int h = static_cast<int>((row / N) % H);
    const RowGrads rg = row_backward<kD>(a, g, b, h, n, t, [](int, int64_t, float, float) {});
    std::copy(rg.ds, rg.ds + M + 1, ds_all + row * (M + 1));
    std::copy(rg.w, rg.w + M + 1, w_all + row * (M + 1));
  }
}

// Deterministic pass 2 over key rows [k0, k1): every key gathers its slots in slot order.
template <int kD>
TESSERA_CPU_CLONES void gather_keys(const ClusterAttentionView& a, const ClusterAttentionGrads& g,
                                    int64_t k0, int64_t k1, const float* ds_all, const float* w_all,
                                    const int64_t* offsets, const int64_t* entries) {
  const int M = a.neighbours, D = kD ? kD : a.head_dim, H = a.heads;
  const int64_t N = a.tokens;
  for (int64_t kr = k0; kr < k1; ++kr) {
    const int64_t j = kr % N, b = kr / (N * H);
    const int h = static_cast<int>((kr / N) % H);
    float* dk = g.dk + kr * D;
    float* dv = g.dv + kr * D;
    std::fill(dk, dk + D, 0.f);
    std::fill(dv, dv + D, 0.f);
    const int64_t row0 = (b * H + h) * N;
    const int64_t lo = a.idx ? offsets[b * (N + 1) + j] : 0;
    const int64_t hi = a.idx ? offsets[b * (N + 1) + j + 1] : N;
    for (int64_t e = lo; e < hi; ++e) {
      const int64_t slot = a.idx ? entries[b * N * M + e] : e * M + j;
      const int64_t n = slot / M, m = slot % M;
      const int64_t row = row0 + n;
      const float dsv = ds_all[row * (M + 1) + m], wv = w_all[row * (M + 1) + m];
      if (dsv != 0.f) axpyk<kD>(a.scale * dsv, row_ptr(a.q, a.q_stride, b, h, n), dk, D);
      if (wv != 0.f) axpyk<kD>(wv, g.dout + row * D, dv, D);
    }
  }
}

// Calls f(std::integral_constant<int, D>) for the head dims worth a specialised (fully unrolled)
// body, f(std::integral_constant<int, 0>) otherwise.
template <typename F>
void with_head_dim(int d, F&& f) {
  switch (d) {
    case 8:
      return f(std::integral_constant<int, 8>{});
    case 16:
      return f(std::integral_constant<int, 16>{});
    case 32:
      return f(std::integral_constant<int, 32>{});
    case 64:
      return f(std::integral_constant<int, 64>{});
    default:
      return f(std::integral_constant<int, 0>{});
  }
}

// [begin, end) of thread `tid` among `nth` for `total` items, in contiguous static chunks.
inline std::pair<int64_t, int64_t> thread_range(int64_t total) {
  const int64_t nth = omp_get_num_threads(), tid = omp_get_thread_num();
  const int64_t chunk = (total + nth - 1) / nth;
  return {std::min(total, tid * chunk), std::min(total, (tid + 1) * chunk)};
}

}  // namespace

void cluster_attention_fwd_cpu(const ClusterAttentionView& a) {
  const int64_t rows = static_cast<int64_t>(a.batch) * a.heads * a.tokens;
  if (rows == 0) return;
  // Chunks of rows handed out dynamically: a thread that the OS preempts (on a shared machine)
  // leaves its share to the others instead of holding up the whole call.
  const int64_t threads = omp_get_max_threads();
  const int64_t chunk = std::clamp<int64_t>(rows / (8 * threads), 16, 1024);
  const int64_t chunks = (rows + chunk - 1) / chunk;
#pragma omp parallel if (chunks > 1)
  {
    Scratch t(a.neighbours);
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t r0 = c * chunk, r1 = std::min(rows, r0 + chunk);
      with_head_dim(a.head_dim, [&](auto kd) { fwd_rows<kd()>(a, r0, r1, t); });
    }
  }
}

TESSERA_CPU_CLONES bool cluster_index_in_range_cpu(const int64_t* idx, int64_t n, int64_t range) {
  // Negative values wrap to huge unsigned ones: one unsigned compare checks both ends.
  const uint64_t limit = static_cast<uint64_t>(range);
  uint64_t bad = 0;
#pragma omp simd reduction(| : bad)
  for (int64_t i = 0; i < n; ++i) bad |= static_cast<uint64_t>(idx[i]) >= limit ? 1u : 0u;
  return bad == 0;
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

void cluster_attention_bwd_cpu(const ClusterAttentionView& a, const ClusterAttentionGrads& g,
                               bool deterministic) {
  const int M = a.neighbours, D = a.head_dim, H = a.heads;
  const int64_t N = a.tokens, B = a.batch;
  const int64_t planes = B * H;
  const bool blank = a.blank_k != nullptr;
  // Per-plane partial sums of the parameter gradients, reduced over batches in a fixed order.
  std::vector<float> part_bk(blank ? planes * D : 0), part_bv(blank ? planes * D : 0);
  std::vector<double> part_pe(a.pe_w ? planes * 6 : 0);

  // Per-plane ownership needs planes to spread over the threads; with few (batch, head) planes the
  // per-key (inverse index) reduction parallelises better. Both are bitwise reproducible.
  const bool by_plane = !deterministic && planes >= 2 * static_cast<int64_t>(omp_get_max_threads());
  if (by_plane) {
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t plane = 0; plane < planes; ++plane) {
      with_head_dim(D, [&](auto kd) {
        bwd_plane<kd()>(a, g, plane, blank ? &part_bk[plane * D] : nullptr,
                        blank ? &part_bv[plane * D] : nullptr,
                        a.pe_w ? &part_pe[plane * 6] : nullptr);
      });
    }
  } else {
    const int64_t rows = planes * N;
    std::vector<float> ds_all(rows * (M + 1)), w_all(rows * (M + 1));
    std::vector<int64_t> offsets, entries;
    if (a.idx) {
      offsets.resize(B * (N + 1));
      entries.resize(B * N * M);
      cluster_inverse_index_cpu(a.idx, a.batch, a.tokens, M, offsets.data(), entries.data());
    }
#pragma omp parallel
    {
      const auto [r0, r1] = thread_range(rows);
      with_head_dim(D, [&](auto kd) {
        if (r0 < r1) bwd_rows<kd()>(a, g, r0, r1, ds_all.data(), w_all.data());
      });
#pragma omp barrier
      with_head_dim(D, [&](auto kd) {
        if (r0 < r1) {
          gather_keys<kd()>(a, g, r0, r1, ds_all.data(), w_all.data(), offsets.data(),
                            entries.data());
        }
      });
    }
    // Parameter gradients per plane from the stored slot gradients.
#pragma omp parallel for schedule(static)
    for (int64_t plane = 0; plane < planes; ++plane) {
      const int64_t b = plane / H;
      const int h = static_cast<int>(plane % H);
      for (int64_t n = 0; n < N; ++n) {
        const int64_t row = plane * N + n;
        const float* ds = &ds_all[row * (M + 1)];
        if (blank) {
          axpy(a.scale * ds[M], row_ptr(a.q, a.q_stride, b, h, n), &part_bk[plane * D], D);
          axpy(w_all[row * (M + 1) + M], g.dout + row * D, &part_bv[plane * D], D);
        }
        if (a.pe_w) {
          double* pe = &part_pe[plane * 6];
          float f[5];
          for (int m = 0; m < M; ++m) {
            if (ds[m] == 0.f) continue;
            const int64_t j = a.idx ? a.idx[(b * N + n) * M + m] : m;
            pos_features(a.pos, b, N, n, j, f);
            for (int c = 0; c < 5; ++c) pe[c] += static_cast<double>(ds[m]) * f[c];
            pe[5] += ds[m];
          }
        }
      }
    }
  }

  // Fixed-order reductions over batches.
  for (int64_t i = 0; i < static_cast<int64_t>(H) * D; ++i) {
    float sk = 0.f, sv = 0.f;
    for (int64_t b = 0; blank && b < B; ++b) {
      sk += part_bk[b * H * D + i];
      sv += part_bv[b * H * D + i];
    }
    if (g.dblank_k) g.dblank_k[i] = sk;
    if (g.dblank_v) g.dblank_v[i] = sv;
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

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/common/vec16.h"
#include "kernels/merge/lse_merge.h"
#include "kernels/paged/paged_attention.h"

namespace tessera::kernels {

namespace {

constexpr int kQTile = 16;          // query tokens per work item; decode has one
constexpr int kKeyChunk = 64;       // keys per online-softmax step
constexpr int kMinSplitKeys = 512;  // automatic key splits are at least this long
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Item {
  int seq;
  int kh0;  // kv heads [kh0, kh1): all of them when there are enough sequences, so that a page
  int kh1;  // is read front to back (its rows are [slot][kv_head][dim])
  int q0;   // query range [q0, q1) within the sequence's queries
  int q1;
  int64_t p_begin;  // key positions [p_begin, p_end) of this item (a split of the sequence)
  int64_t p_end;
  float* out;  // [total_q, num_q_heads, head_dim_v]: the view's output or a split's partial one
  float* lse;  // [total_q, num_q_heads], may be null
};

struct E4M3Table {
  float v[256];
  E4M3Table() {
    for (int c = 0; c < 256; ++c) v[c] = e4m3_to_float(static_cast<uint8_t>(c));
  }
};

#define TESSERA_ALWAYS_INLINE __attribute__((always_inline)) inline

using vec::hmax;
using vec::hsum;
using vec::Int16v;
using vec::load16;
using vec::reduce16;
using vec::splat;
using vec::store16;
using vec::Vec16;
using vec::vexp;

// Widens an int8 row to float32, unscaled (the row's scale is folded into scores and weights).
// A plain loop: GCC vectorises it (sign-extend + convert), unlike a 16-lane vector conversion.
TESSERA_ALWAYS_INLINE void widen_int8(const void* row, int n, float* out) {
  const auto* r = static_cast<const int8_t*>(row);
#pragma omp simd
  for (int i = 0; i < n; ++i) out[i] = static_cast<float>(r[i]);
}

// out[r] = q_r . k for R consecutive query rows (row stride dk): k is loaded once for all of them.
template <int R>
TESSERA_ALWAYS_INLINE void dot_rows(const float* q, const float* k, int dk, float* out) {
  Vec16 acc[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) acc[r] = Vec16{};
  const int d16 = dk & ~15;
  for (int d = 0; d < d16; d += 16) {
    const Vec16 kv = load16(k + d);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[r] += load16(q + r * dk + d) * kv;
  }
  for (int r = 0; r < R; ++r) {
    float tail = 0.0f;
    for (int d = d16; d < dk; ++d) tail += q[r * dk + d] * k[d];
    out[r] = hsum(acc[r]) + tail;
  }
}

TESSERA_ALWAYS_INLINE void dot_group(const float* q, const float* k, int dk, int rows, float* out) {
  int r = 0;
  for (; r + 4 <= rows; r += 4) dot_rows<4>(q + r * dk, k, dk, out + r);
  switch (rows - r) {
    case 3:
      dot_rows<3>(q + r * dk, k, dk, out + r);
      break;
    case 2:
      dot_rows<2>(q + r * dk, k, dk, out + r);
      break;
    case 1:
      dot_rows<1>(q + r * dk, k, dk, out + r);
      break;
  }
}

// acc_r += sum_j w_r[j] * v_j for R consecutive rows (acc stride dv, weight stride kKeyChunk) over
// the chunk's n value rows. A 16-wide slice of every accumulator stays in a register across all
// n rows, so each element of V costs one load and R fused multiply-adds.
template <int R>
TESSERA_ALWAYS_INLINE void accumulate_rows(const float* w, const float* const* vrows, int n, int dv,
                                           float* acc) {
  const int d16 = dv & ~15;
  for (int d = 0; d < d16; d += 16) {
    Vec16 a[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) a[r] = load16(acc + r * dv + d);
    for (int j = 0; j < n; ++j) {
      const Vec16 vv = load16(vrows[j] + d);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) a[r] += w[r * kKeyChunk + j] * vv;
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) store16(acc + r * dv + d, a[r]);
  }
  for (int d = d16; d < dv; ++d) {
    for (int r = 0; r < R; ++r) {
      float sum = acc[r * dv + d];
      for (int j = 0; j < n; ++j) sum += w[r * kKeyChunk + j] * vrows[j][d];
      acc[r * dv + d] = sum;
    }
  }
}

TESSERA_ALWAYS_INLINE void accumulate_group(const float* w, const float* const* vrows, int n,
                                            int dv, int rows, float* acc) {
  int r = 0;
  for (; r + 4 <= rows; r += 4) {
    accumulate_rows<4>(w + r * kKeyChunk, vrows, n, dv, acc + r * dv);
  }
  switch (rows - r) {
    case 3:
      accumulate_rows<3>(w + r * kKeyChunk, vrows, n, dv, acc + r * dv);
      break;
    case 2:
      accumulate_rows<2>(w + r * kKeyChunk, vrows, n, dv, acc + r * dv);
      break;
    case 1:
      accumulate_rows<1>(w + r * kKeyChunk, vrows, n, dv, acc + r * dv);
      break;
  }
}

// Scores of R query rows (consecutive, stride dk) against up to 16 keys (krows[0, m)), as one
// vector per row: out[r] lane j = q_r . k_j. Each key row is read once for the R rows; the 16
// dot-product vectors of a row are summed by reduce16.
template <int R>
TESSERA_ALWAYS_INLINE void score_block(const float* q, const float* const* krows, int m, int dk,
                                       Vec16* out) {
  const int d16 = dk & ~15;
  Vec16 tmp[R * 16];
  for (int j = 0; j < 16; ++j) {
    Vec16 acc[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[r] = Vec16{};
    if (j < m) {
      const float* k = krows[j];
      for (int d = 0; d < d16; d += 16) {
        const Vec16 kv = load16(k + d);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) acc[r] += load16(q + r * dk + d) * kv;
      }
      for (int d = d16; d < dk; ++d) {
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) acc[r][0] += q[r * dk + d] * k[d];
      }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) tmp[r * 16 + j] = acc[r];
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) out[r] = reduce16(tmp + r * 16);
}

// Decodes a row of fp16 / bf16 / fp8 pages to float32 (scale applied).
void decode_row(KvDType t, const void* row, int n, float scale, float* out, const float* e4m3) {
  switch (t) {
    case KvDType::kF16: {
      const auto* r = static_cast<const uint16_t*>(row);
      for (int i = 0; i < n; ++i) out[i] = kv_half_to_float(r[i]);
      break;
    }
    case KvDType::kBF16: {
      const auto* r = static_cast<const uint16_t*>(row);
      for (int i = 0; i < n; ++i) out[i] = kv_bf16_to_float(r[i]);
      break;
    }
    case KvDType::kF8E4M3: {
      const auto* r = static_cast<const uint8_t*>(row);
      for (int i = 0; i < n; ++i) out[i] = scale * e4m3[r[i]];
      break;
    }
    default:
      break;
  }
}

// Pages sit in random blocks, which defeats the hardware prefetcher at every block boundary: the
// rows a few tokens ahead are requested early.
constexpr int kPrefetchAhead = 4;  // tokens

TESSERA_ALWAYS_INLINE void prefetch_bytes(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, 0, 3);
}

struct Scratch {
  std::vector<float> q, scores, weights, acc, m, l, kchunk, vchunk, kscale, vscale;
  std::vector<int64_t> t, lo;
  std::vector<const float*> krows, vrows;  // [kv heads of the item][kKeyChunk]
  Scratch(int rows, int kv_heads, int dk, int dv, bool convert)
      : q(static_cast<size_t>(rows) * dk),
        scores(static_cast<size_t>(rows) * kKeyChunk),
        weights(static_cast<size_t>(rows) * kKeyChunk),
        acc(static_cast<size_t>(rows) * dv),
        m(rows),
        l(rows),
        // Rows of non-fp32 pages, converted: [kKeyChunk][kv heads][dim].
        kchunk(convert ? static_cast<size_t>(kKeyChunk) * kv_heads * dk : 0),
        vchunk(convert ? static_cast<size_t>(kKeyChunk) * kv_heads * dv : 0),
        kscale(static_cast<size_t>(kKeyChunk) * kv_heads),
        vscale(static_cast<size_t>(kKeyChunk) * kv_heads),
        t(rows),
        lo(rows),
        krows(static_cast<size_t>(kKeyChunk) * kv_heads),
        vrows(static_cast<size_t>(kKeyChunk) * kv_heads) {}
};

// One work item. kInt8: int8 pages read directly (scales folded into scores and weights);
// otherwise fp32 pages read directly, or other formats decoded to fp32 rows on the way.
template <bool kInt8>
TESSERA_ALWAYS_INLINE void run_item_impl(const PagedAttentionView& a, const Item& item, Scratch& w,
                                         const float* e4m3) {
  const PagedKv& c = a.kv;
  const bool decode = !kInt8 && c.dtype != KvDType::kF32;
  const int group = a.num_q_heads / c.num_kv_heads;
  const int dk = c.head_dim_k, dv = c.head_dim_v;
  const int64_t len = a.seq_lens[item.seq];
  const int64_t q_begin = a.q_starts[item.seq];
  const int64_t q_len = a.q_starts[item.seq + 1] - q_begin;
  const int32_t* table = a.block_tables + static_cast<int64_t>(item.seq) * a.max_blocks_per_seq;
  const int kv_heads = item.kh1 - item.kh0;
  const int heads = kv_heads * group;  // query heads of this item
  const int nq = item.q1 - item.q0;
  const int rows = nq * heads;

  // Row r = qi * heads + (kh - kh0) * group + g: query token q0 + qi, head kh * group + g.
  for (int r = 0; r < rows; ++r) {
    const int64_t qi = item.q0 + r / heads;
    const int h = item.kh0 * group + r % heads;
    const float* src = a.q + (q_begin + qi) * a.q_stride[0] + h * a.q_stride[1];
    std::copy(src, src + dk, w.q.data() + static_cast<size_t>(r) * dk);
    w.t[r] = len - q_len + qi;
    w.lo[r] = paged_first_visible(w.t[r], a.window, a.chunk);
    w.m[r] = kNegInf;
    w.l[r] = 0.0f;
  }
  std::fill(w.acc.begin(), w.acc.begin() + static_cast<size_t>(rows) * dv, 0.0f);

  // The masks are intervals ending at each query, and the first visible key never decreases with
  // the query position, so the tile's keys are [lo(first query), last query].
  const int64_t p_lo = std::max(w.lo[0], item.p_begin);
  const int64_t p_hi = std::min(w.t[rows - 1], item.p_end - 1);
  const int64_t row_bytes_k = static_cast<int64_t>(kv_heads) * dk * kv_elem_bytes(c.dtype);
  const int64_t row_bytes_v = static_cast<int64_t>(kv_heads) * dv * kv_elem_bytes(c.dtype);
  for (int64_t p0 = p_lo; p0 <= p_hi; p0 += kKeyChunk) {
    const int n = static_cast<int>(std::min<int64_t>(kKeyChunk, p_hi - p0 + 1));
    // The chunk's K/V rows for every kv head (pages are read in token order; non-fp32 rows are
    // converted once here), with each key's score scale.
    for (int j = 0; j < n; ++j) {
      const int64_t p = p0 + j;
      const int64_t block = table[p / c.block_size];
      const int slot = static_cast<int>(p % c.block_size);
      if (p + kPrefetchAhead <= p_hi) {
        const int64_t pa = p + kPrefetchAhead;
        const int64_t ba = table[pa / c.block_size];
        const int sa = static_cast<int>(pa % c.block_size);
        prefetch_bytes(c.k_row(ba, sa, item.kh0), row_bytes_k);
        prefetch_bytes(c.v_row(ba, sa, item.kh0), row_bytes_v);
      }
      for (int kh = item.kh0; kh < item.kh1; ++kh) {
        const size_t at = static_cast<size_t>(kh - item.kh0) * kKeyChunk + j;
        const float* k = static_cast<const float*>(c.k_row(block, slot, kh));
        const float* vrow = static_cast<const float*>(c.v_row(block, slot, kh));
        float kscale = a.scale;
        if (kInt8 || decode) {
          const size_t row = static_cast<size_t>(j) * kv_heads + kh - item.kh0;
          float* kdst = w.kchunk.data() + row * dk;
          float* vdst = w.vchunk.data() + row * dv;
          if (kInt8) {
            kscale *= c.k_scale_at(block, slot, kh);
            widen_int8(k, dk, kdst);
            widen_int8(vrow, dv, vdst);
            w.vscale[at] = c.v_scale_at(block, slot, kh);
          } else {
            decode_row(c.dtype, k, dk, c.k_scale_at(block, slot, kh), kdst, e4m3);
            decode_row(c.dtype, vrow, dv, c.v_scale_at(block, slot, kh), vdst, e4m3);
          }
          k = kdst;
          vrow = vdst;
        }
        w.krows[at] = k;
        w.vrows[at] = vrow;
        w.kscale[at] = kscale;
      }
    }
    // Scores, 16 keys at a time as one vector per query row; keys outside a row's mask (or past
    // the chunk) are -inf. The rows of one query token share its mask.
    const Int16v lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    for (int qi = 0; qi < nq; ++qi) {
      const int rq = qi * heads;
      const auto lo = static_cast<int32_t>(w.lo[rq] - p0), hi = static_cast<int32_t>(w.t[rq] - p0);
      for (int kh = item.kh0; kh < item.kh1; ++kh) {
        const int r0 = rq + (kh - item.kh0) * group;
        const size_t at = static_cast<size_t>(kh - item.kh0) * kKeyChunk;
        for (int jb = 0; jb < n; jb += 16) {
          const int mk = std::min(16, n - jb);
          const Int16v pos = lane + jb;
          const auto visible = (lane < mk) & (pos >= lo) & (pos <= hi);
          const Vec16 ks = load16(w.kscale.data() + at + jb);
          for (int g = 0; g < group; g += 4) {
            Vec16 out[4];
            const float* q = w.q.data() + static_cast<size_t>(r0 + g) * dk;
            const float* const* kr = w.krows.data() + at + jb;
            switch (std::min(4, group - g)) {
              case 4:
                score_block<4>(q, kr, mk, dk, out);
                break;
              case 3:
                score_block<3>(q, kr, mk, dk, out);
                break;
              case 2:
                score_block<2>(q, kr, mk, dk, out);
                break;
              default:
                score_block<1>(q, kr, mk, dk, out);
                break;
            }
            for (int r = 0; r < std::min(4, group - g); ++r) {
              const Vec16 sc = visible ? out[r] * ks : splat(kNegInf);
              store16(w.scores.data() + static_cast<size_t>(r0 + g + r) * kKeyChunk + jb, sc);
            }
          }
        }
      }
    }
    // Online softmax: scores become probabilities relative to the running max.
    const int n16 = (n + 15) & ~15;
    for (int r = 0; r < rows; ++r) {
      float* s = w.scores.data() + static_cast<size_t>(r) * kKeyChunk;
      if (a.softcap > 0) {
        const float cap = a.softcap;
        for (int j = 0; j < n; ++j) {
          if (s[j] != kNegInf) s[j] = cap * std::tanh(s[j] / cap);
        }
      }
      Vec16 mv = splat(kNegInf);
      for (int j = 0; j < n16; j += 16) {
        const Vec16 v = load16(s + j);
        mv = v > mv ? v : mv;
      }
      const float new_m = std::max(w.m[r], hmax(mv));
      if (new_m == kNegInf) {  // nothing visible yet
        std::fill(s, s + n16, 0.0f);
        continue;
      }
      const float corr = std::exp(w.m[r] - new_m);  // 0 when m was -inf
      Vec16 sum = Vec16{};
      for (int j = 0; j < n16; j += 16) {
        const Vec16 e = vexp(load16(s + j) - new_m);
        store16(s + j, e);
        sum += e;
      }
      if (corr != 1.0f) {
        float* acc = w.acc.data() + static_cast<size_t>(r) * dv;
        for (int d = 0; d < dv; ++d) acc[d] *= corr;
      }
      w.l[r] = w.l[r] * corr + hsum(sum);
      w.m[r] = new_m;
    }
    // Weighted V: int8 rows carry their scale in the weight.
    const float* weights = w.scores.data();
    if (kInt8) {
      for (int r = 0; r < rows; ++r) {
        const float* vs = w.vscale.data() + static_cast<size_t>((r % heads) / group) * kKeyChunk;
        const float* sr = w.scores.data() + static_cast<size_t>(r) * kKeyChunk;
        float* wr = w.weights.data() + static_cast<size_t>(r) * kKeyChunk;
        for (int j = 0; j < n; ++j) wr[j] = sr[j] * vs[j];
      }
      weights = w.weights.data();
    }
    for (int qi = 0; qi < nq; ++qi) {
      for (int kh = item.kh0; kh < item.kh1; ++kh) {
        const int r0 = qi * heads + (kh - item.kh0) * group;
        accumulate_group(weights + static_cast<size_t>(r0) * kKeyChunk,
                         w.vrows.data() + static_cast<size_t>(kh - item.kh0) * kKeyChunk, n, dv,
                         group, w.acc.data() + static_cast<size_t>(r0) * dv);
      }
    }
  }

  for (int r = 0; r < rows; ++r) {
    const int64_t row = q_begin + item.q0 + r / heads;
    const int h = item.kh0 * group + r % heads;
    float* o = item.out + (row * a.num_q_heads + h) * dv;
    const float* acc = w.acc.data() + static_cast<size_t>(r) * dv;
    const bool empty = w.l[r] == 0.0f;
    const float inv = empty ? 0.0f : 1.0f / w.l[r];
    for (int d = 0; d < dv; ++d) o[d] = acc[d] * inv;
    if (item.lse) {
      item.lse[row * a.num_q_heads + h] = empty ? kNegInf : w.m[r] + std::log(w.l[r]);
    }
  }
}

// Compiled for several x86 levels (AVX2+FMA, AVX-512) and picked at load time, so the inner
// loops use the widest vectors the machine has.
TESSERA_CPU_TARGET_CLONES void run_item(const PagedAttentionView& a, const Item& item, Scratch& w,
                                        const float* e4m3) {
  if (a.kv.dtype == KvDType::kI8) {
    run_item_impl<true>(a, item, w, e4m3);
  } else {
    run_item_impl<false>(a, item, w, e4m3);
  }
}

}  // namespace

void paged_attention_cpu(const PagedAttentionView& a) {
  static const E4M3Table e4m3;
  const PagedKv& c = a.kv;
  int64_t tiles = 0;
  for (int s = 0; s < a.num_seqs; ++s) {
    tiles += (a.q_starts[s + 1] - a.q_starts[s] + kQTile - 1) / kQTile;
  }
  if (tiles == 0) return;
  // Whole pages per item while there are enough items to keep every thread busy; otherwise split
  // the kv heads among items.
  const int threads = omp_get_max_threads();
  int heads_per_item = c.num_kv_heads;
  while (heads_per_item > 1 &&
         tiles * ((c.num_kv_heads + heads_per_item - 1) / heads_per_item) < 4 * threads) {
    heads_per_item = (heads_per_item + 1) / 2;
  }
  const int64_t base_items = tiles * ((c.num_kv_heads + heads_per_item - 1) / heads_per_item);
  // Still too few items (a small batch of long sequences): split the keys too, and merge the
  // partial results by their log-sum-exp.
  int splits = a.kv_splits;
  if (splits <= 0) {
    splits = 1;
    if (base_items < 2 * threads) {
      int64_t max_len = 0;
      for (int s = 0; s < a.num_seqs; ++s) max_len = std::max<int64_t>(max_len, a.seq_lens[s]);
      const int64_t want = (2 * threads + base_items - 1) / base_items;
      splits = static_cast<int>(std::max<int64_t>(1, std::min(want, max_len / kMinSplitKeys)));
    }
  }
  const int64_t out_size = a.total_q * a.num_q_heads * c.head_dim_v;
  const int64_t lse_size = a.total_q * a.num_q_heads;
  std::vector<float> part_out, part_lse;
  if (splits > 1) {
    part_out.resize(static_cast<size_t>(splits * out_size));
    part_lse.resize(static_cast<size_t>(splits * lse_size));
  }
  std::vector<Item> items;
  for (int s = 0; s < a.num_seqs; ++s) {
    const int q_len = a.q_starts[s + 1] - a.q_starts[s];
    const int64_t len = a.seq_lens[s];
    for (int q0 = 0; q0 < q_len; q0 += kQTile) {
      for (int kh = 0; kh < c.num_kv_heads; kh += heads_per_item) {
        for (int sp = 0; sp < splits; ++sp) {
          Item it{s,
                  kh,
                  std::min(c.num_kv_heads, kh + heads_per_item),
                  q0,
                  std::min(q_len, q0 + kQTile),
                  len * sp / splits,
                  len * (sp + 1) / splits,
                  a.out,
                  a.lse};
          if (splits > 1) {
            it.out = part_out.data() + sp * out_size;
            it.lse = part_lse.data() + sp * lse_size;
          }
          items.push_back(it);
        }
      }
    }
  }
  const int rows = kQTile * heads_per_item * (a.num_q_heads / c.num_kv_heads);
  const auto num_items = static_cast<int64_t>(items.size());
#pragma omp parallel if (num_items > 1)
  {
    Scratch scratch(rows, heads_per_item, c.head_dim_k, c.head_dim_v, c.dtype != KvDType::kF32);
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < num_items; ++i) run_item(a, items[i], scratch, e4m3.v);
  }
  if (splits > 1) {
    std::vector<float> lse_tmp(a.lse ? 0 : lse_size);
    lse_merge_cpu({part_out.data(), part_lse.data(), a.out, a.lse ? a.lse : lse_tmp.data(), splits,
                   lse_size, c.head_dim_v});
  }
}

}  // namespace tessera::kernels

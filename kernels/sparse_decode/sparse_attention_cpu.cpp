// Fast CPU sparse decode: work items (sequence, kv head, split of the list) in parallel; an item
// reads each listed token's K and V rows once for all query heads of the group, keeps the group's
// running outputs in registers 16 lanes at a time, and folds chunks of 64 entries into an online
// softmax. Tokens sit in random pages, so the rows a few entries ahead are prefetched.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "kernels/merge/lse_merge.h"
#include "kernels/sparse_decode/sparse_attention.h"
#include "kernels/sparse_decode/sparse_cpu_simd.h"

namespace tessera::kernels {

namespace {

constexpr int kChunk = 64;             // entries per online-softmax step
constexpr int kMinSplitEntries = 256;  // automatic splits are at least this long
constexpr int kPrefetchAhead = 4;      // entries
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

using sparse_simd::load16;
using sparse_simd::store16;
using sparse_simd::Vec16;

TESSERA_SPARSE_INLINE void prefetch_bytes(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, 0, 3);
}

// acc_r += sum_j w_r[j] v_j for R rows over n value rows; a 16-lane slice of each accumulator
// stays in a register across all n rows.
template <int R>
TESSERA_SPARSE_INLINE void accumulate_rows(const float* w, const float* const* vrows, int n, int dv,
                                           float* acc) {
  const int d16 = dv & ~15;
  for (int d = 0; d < d16; d += 16) {
    Vec16 a[R];
    for (int r = 0; r < R; ++r) a[r] = load16(acc + r * dv + d);
    for (int j = 0; j < n; ++j) {
      const Vec16 vv = load16(vrows[j] + d);
      for (int r = 0; r < R; ++r) a[r] += w[r * kChunk + j] * vv;
    }
    for (int r = 0; r < R; ++r) store16(acc + r * dv + d, a[r]);
  }
  for (int d = d16; d < dv; ++d) {
    for (int r = 0; r < R; ++r) {
      float sum = acc[r * dv + d];
      for (int j = 0; j < n; ++j) sum += w[r * kChunk + j] * vrows[j][d];
      acc[r * dv + d] = sum;
    }
  }
}

TESSERA_SPARSE_INLINE void accumulate_group(const float* w, const float* const* vrows, int n,
                                            int dv, int rows, float* acc) {
  int r = 0;
  for (; r + 4 <= rows; r += 4) accumulate_rows<4>(w + r * kChunk, vrows, n, dv, acc + r * dv);
  switch (rows - r) {
    case 3:
      accumulate_rows<3>(w + r * kChunk, vrows, n, dv, acc + r * dv);
      break;
    case 2:
      accumulate_rows<2>(w + r * kChunk, vrows, n, dv, acc + r * dv);
      break;
    case 1:
      accumulate_rows<1>(w + r * kChunk, vrows, n, dv, acc + r * dv);
      break;
  }
}

// A row of any non-fp32 page format decoded to fp32 (scale applied).
void decode_row(const PagedKv& c, const void* row, int n, float scale, float* out) {
  switch (c.dtype) {
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
    default:
      for (int i = 0; i < n; ++i) out[i] = kv_load(c.dtype, row, i, scale);
      break;
  }
}

struct Item {
  int seq;
  int kh;
  int e_begin;  // entries [e_begin, e_end) of the list
  int e_end;
  float* out;  // [num_seqs, num_q_heads, head_dim_v]: the view's output or a split's partial one
  float* lse;  // [num_seqs, num_q_heads]
};

struct Scratch {
  std::vector<float> q, scores, acc, m, l, kbuf, vchunk, dots;
  std::vector<const float*> vrows;
  Scratch(int group, int dk, int dv, bool decode)
      : q(static_cast<size_t>(group) * dk),
        scores(static_cast<size_t>(group) * kChunk),
        acc(static_cast<size_t>(group) * dv),
        m(group),
        l(group),
        kbuf(dk),
        vchunk(decode ? static_cast<size_t>(kChunk) * dv : 0),
        dots(group),
        vrows(kChunk) {}
};

TESSERA_CPU_TARGET_CLONES void run_item(const SparseDecodeView& a, const Item& item, Scratch& w) {
  const PagedKv& c = a.kv;
  const bool decode = c.dtype != KvDType::kF32;
  const int group = a.num_q_heads / c.num_kv_heads;
  const int dk = c.head_dim_k, dv = c.head_dim_v;
  const int kh = item.kh;
  const int32_t* table = a.block_tables + static_cast<int64_t>(item.seq) * a.max_blocks_per_seq;
  const int32_t* idx =
      a.idx + (static_cast<int64_t>(item.seq) * c.num_kv_heads + kh) * a.max_entries;
  for (int g = 0; g < group; ++g) {
    const float* src = a.q + item.seq * a.q_stride[0] + (kh * group + g) * a.q_stride[1];
    std::copy(src, src + dk, w.q.data() + static_cast<size_t>(g) * dk);
    w.m[g] = kNegInf;
    w.l[g] = 0.0f;
  }
  std::fill(w.acc.begin(), w.acc.end(), 0.0f);
  const int64_t row_bytes_k = static_cast<int64_t>(dk) * kv_elem_bytes(c.dtype);
  const int64_t row_bytes_v = static_cast<int64_t>(dv) * kv_elem_bytes(c.dtype);
  auto block_of = [&](int64_t p) { return static_cast<int64_t>(table[p / c.block_size]); };
  for (int e0 = item.e_begin; e0 < item.e_end; e0 += kChunk) {
    const int n = std::min(kChunk, item.e_end - e0);
    for (int j = 0; j < n; ++j) {
      const int64_t p = idx[e0 + j];
      const int64_t block = block_of(p);
      const int slot = static_cast<int>(p % c.block_size);
      if (e0 + j + kPrefetchAhead < item.e_end) {
        const int64_t pa = idx[e0 + j + kPrefetchAhead];
        prefetch_bytes(c.k_row(block_of(pa), static_cast<int>(pa % c.block_size), kh), row_bytes_k);
      }
      prefetch_bytes(c.v_row(block, slot, kh), row_bytes_v);  // read after the chunk's scores
      const float* k = static_cast<const float*>(c.k_row(block, slot, kh));
      const float* v = static_cast<const float*>(c.v_row(block, slot, kh));
      if (decode) {
        decode_row(c, k, dk, c.k_scale_at(block, slot, kh), w.kbuf.data());
        float* vdst = w.vchunk.data() + static_cast<size_t>(j) * dv;
        decode_row(c, v, dv, c.v_scale_at(block, slot, kh), vdst);
        k = w.kbuf.data();
        v = vdst;
      }
      w.vrows[j] = v;
      sparse_simd::dot_many(w.q.data(), dk, group, k, dk, w.dots.data());
      for (int g = 0; g < group; ++g)
        w.scores[static_cast<size_t>(g) * kChunk + j] = w.dots[g] * a.scale;
    }
    // Online softmax: scores become weights relative to the running maximum.
    for (int g = 0; g < group; ++g) {
      float* s = w.scores.data() + static_cast<size_t>(g) * kChunk;
      float mx = kNegInf;
      for (int j = 0; j < n; ++j) mx = std::max(mx, s[j]);
      const float new_m = std::max(w.m[g], mx);
      const float corr = std::exp(w.m[g] - new_m);  // 0 while m is -inf
      float sum = 0.0f;
      for (int j = 0; j < n; ++j) {
        s[j] = std::exp(s[j] - new_m);
        sum += s[j];
      }
      if (corr != 1.0f) {
        float* acc = w.acc.data() + static_cast<size_t>(g) * dv;
        for (int d = 0; d < dv; ++d) acc[d] *= corr;
      }
      w.l[g] = w.l[g] * corr + sum;
      w.m[g] = new_m;
    }
    accumulate_group(w.scores.data(), w.vrows.data(), n, dv, group, w.acc.data());
  }
  for (int g = 0; g < group; ++g) {
    const int64_t row = static_cast<int64_t>(item.seq) * a.num_q_heads + kh * group + g;
    float* o = item.out + row * dv;
    const float* acc = w.acc.data() + static_cast<size_t>(g) * dv;
    const bool empty = w.l[g] == 0.0f;  // an empty range: zeros, lse = -inf
    const float inv = empty ? 0.0f : 1.0f / w.l[g];
    for (int d = 0; d < dv; ++d) o[d] = acc[d] * inv;
    if (item.lse) item.lse[row] = empty ? kNegInf : w.m[g] + std::log(w.l[g]);
  }
}

}  // namespace

void sparse_decode_cpu_list(const SparseDecodeView& a, int seq, int kv_head) {
  const PagedKv& c = a.kv;
  thread_local std::unique_ptr<Scratch> scratch;
  const int group = a.num_q_heads / c.num_kv_heads;
  const bool decode = c.dtype != KvDType::kF32;
  if (!scratch || scratch->q.size() != static_cast<size_t>(group) * c.head_dim_k ||
      scratch->acc.size() != static_cast<size_t>(group) * c.head_dim_v ||
      scratch->vchunk.empty() == decode) {
    scratch = std::make_unique<Scratch>(group, c.head_dim_k, c.head_dim_v, decode);
  }
  const int n = a.counts[static_cast<int64_t>(seq) * c.num_kv_heads + kv_head];
  run_item(a, Item{seq, kv_head, 0, n, a.out, a.lse}, *scratch);
}

void sparse_decode_cpu(const SparseDecodeView& a) {
  const PagedKv& c = a.kv;
  const int64_t lists = static_cast<int64_t>(a.num_seqs) * c.num_kv_heads;
  if (lists == 0) return;
  const int threads = omp_get_max_threads();
  int splits = a.splits;
  if (splits <= 0) {
    splits = 1;
    if (lists < 2 * threads) {
      int max_count = 0;
      for (int64_t i = 0; i < lists; ++i) max_count = std::max(max_count, a.counts[i]);
      const int64_t want = (2 * threads + lists - 1) / lists;
      splits = static_cast<int>(
          std::max<int64_t>(1, std::min<int64_t>(want, max_count / kMinSplitEntries)));
    }
  }
  const int64_t rows = static_cast<int64_t>(a.num_seqs) * a.num_q_heads;
  std::vector<float> part_out, part_lse;
  if (splits > 1) {
    part_out.resize(static_cast<size_t>(splits * rows * c.head_dim_v));
    part_lse.resize(static_cast<size_t>(splits * rows));
  }
  std::vector<Item> items;
  items.reserve(static_cast<size_t>(lists * splits));
  for (int s = 0; s < a.num_seqs; ++s) {
    for (int kh = 0; kh < c.num_kv_heads; ++kh) {
      const int n = a.counts[static_cast<int64_t>(s) * c.num_kv_heads + kh];
      for (int sp = 0; sp < splits; ++sp) {
        Item it{s,
                kh,
                static_cast<int>(static_cast<int64_t>(n) * sp / splits),
                static_cast<int>(static_cast<int64_t>(n) * (sp + 1) / splits),
                a.out,
                a.lse};
        if (splits > 1) {
          it.out = part_out.data() + sp * rows * c.head_dim_v;
          it.lse = part_lse.data() + sp * rows;
        }
        items.push_back(it);
      }
    }
  }
  const auto num_items = static_cast<int64_t>(items.size());
#pragma omp parallel if (num_items > 1)
  {
    Scratch scratch(a.num_q_heads / c.num_kv_heads, c.head_dim_k, c.head_dim_v,
                    c.dtype != KvDType::kF32);
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < num_items; ++i) run_item(a, items[i], scratch);
  }
  if (splits > 1) {
    std::vector<float> lse_tmp(a.lse ? 0 : rows);
    lse_merge_cpu({part_out.data(), part_lse.data(), a.out, a.lse ? a.lse : lse_tmp.data(), splits,
                   rows, c.head_dim_v});
  }
}

}  // namespace tessera::kernels

#include <omp.h>

// The 16-wide vector helpers below are always inlined, so the ABI note about passing them is moot.
#pragma GCC diagnostic ignored "-Wpsabi"

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "kernels/common/cpu_convert.h"
#include "kernels/common/vec16.h"
#include "kernels/lora/lora_sgmv.h"

namespace tessera::kernels {

namespace {

#define TESSERA_ALWAYS_INLINE __attribute__((always_inline)) inline

// Rows are handled per adapter, whatever segments they came in (S-LoRA / Punica sort a batch by
// adapter for the same reason): an adapter's A and B are read once per tile of its rows.
constexpr int kShrinkRows = 8;     // rows of x per shrink task
constexpr int64_t kShrinkK = 512;  // elements of in_features per shrink pass (x and A chunks in L1)
constexpr int kExpandRows = 4;     // rows per expand micro-kernel call
constexpr int64_t kOutBlock = 64;  // output columns per expand task: four 16-wide accumulators
// Adapters with fewer rows than this in the batch expand by dot products along the rank; more
// rows pay for transposing B's block into a panel that every row reuses (measured crossover).
constexpr int64_t kPanelMinRows = 3;

using vec::hsum;
using vec::load16;
using vec::reduce16;
using vec::store16;
using vec::Vec16;

// part[r * ps + c] += lane-wise partial sums of x_r . a_c over n elements (the tail beyond the
// last whole vector lands in lane 0), for R rows of x (pointers) and C consecutive rows of A
// (stride as): each loaded vector of x feeds C multiply-adds and each vector of A feeds R. The
// partials stay vectors across chunks of in_features; they are summed once at the end.
template <int R, int C>
TESSERA_ALWAYS_INLINE void dot_block(const float* const* x, const float* a, int64_t as, int64_t n,
                                     float* part, int64_t ps) {
  Vec16 acc[R][C];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 16
    for (int c = 0; c < C; ++c) acc[r][c] = load16(part + 16 * (r * ps + c));
  }
  const int64_t n16 = n & ~int64_t{15};
  for (int64_t j = 0; j < n16; j += 16) {
    Vec16 av[C];
#pragma GCC unroll 16
    for (int c = 0; c < C; ++c) av[c] = load16(a + c * as + j);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const Vec16 xv = load16(x[r] + j);
#pragma GCC unroll 16
      for (int c = 0; c < C; ++c) acc[r][c] += xv * av[c];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 16
    for (int c = 0; c < C; ++c) {
      if (n16 < n) {
        float tail = 0;
        for (int64_t j = n16; j < n; ++j) tail += x[r][j] * a[c * as + j];
        acc[r][c][0] += tail;
      }
      store16(part + 16 * (r * ps + c), acc[r][c]);
    }
  }
}

// out[i][k] = x_i . A_k for the task's rows (pointers) and the adapter's ranks: blocks of four
// rows x four ranks (16 accumulators; each loaded vector feeds four multiply-adds), which measured
// faster here than eight rows x two ranks.
// The tile's rows are taken kShrinkK elements at a time, so a chunk of x and of A stay in L1
// across the ranks.
// part holds rows * rank vectors of 16 floats.
TESSERA_CPU_TARGET_CLONES void shrink_rows(const float* const* x, int rows, const float* a,
                                           int64_t in, int64_t rank, float* out, int64_t os,
                                           float* part) {
  for (int64_t i = 0; i < 16 * rows * rank; ++i) part[i] = 0.0f;
  for (int64_t j0 = 0; j0 < in; j0 += kShrinkK) {
    const int64_t n = std::min<int64_t>(kShrinkK, in - j0);
    const float* xs[kShrinkRows];
    for (int r = 0; r < rows; ++r) xs[r] = x[r] + j0;
    const float* aj = a + j0;
    int i = 0;

    for (; i + 4 <= rows; i += 4) {
      int64_t c = 0;
      for (; c + 4 <= rank; c += 4) {
        dot_block<4, 4>(xs + i, aj + c * in, in, n, part + 16 * (i * rank + c), rank);
      }
      for (; c < rank; ++c)
        dot_block<4, 1>(xs + i, aj + c * in, in, n, part + 16 * (i * rank + c), rank);
    }
    for (; i < rows; ++i) {
      int64_t c = 0;
      for (; c + 4 <= rank; c += 4) {
        dot_block<1, 4>(xs + i, aj + c * in, in, n, part + 16 * (i * rank + c), rank);
      }
      for (; c < rank; ++c)
        dot_block<1, 1>(xs + i, aj + c * in, in, n, part + 16 * (i * rank + c), rank);
    }
  }
  for (int r = 0; r < rows; ++r) {
    for (int64_t k = 0; k < rank; ++k) out[r * os + k] = hsum(load16(part + 16 * (r * rank + k)));
  }
}

// One stage of a 16 x 16 transpose in registers: rows i and i + h exchange their h x h blocks
// (h = 8, 4, 2, 1 in turn), two lane shuffles per pair.
template <int H>
TESSERA_ALWAYS_INLINE void transpose_stage(Vec16* m) {
  vec::Int16v lo, hi;
  for (int j = 0; j < 16; ++j) {
    lo[j] = (j & H) == 0 ? j : 16 + j - H;
    hi[j] = (j & H) == 0 ? j + H : 16 + j;
  }
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) {
    if ((i & H) != 0) continue;
    const Vec16 a = m[i], b = m[i + H];
    m[i] = __builtin_shuffle(a, b, lo);
    m[i + H] = __builtin_shuffle(a, b, hi);
  }
}

// panel[k][o] = b[o][k] for o < width, k < rank (b has row stride `stride`); columns from width
// to kOutBlock are zero. Whole 16 x 16 tiles go through registers (64 shuffles per 256 floats);
// the ragged edges, element by element.
TESSERA_CPU_TARGET_CLONES void pack_panel(const float* b, int64_t stride, int64_t width,
                                          int64_t rank, float* panel) {
  for (int64_t o0 = 0; o0 < kOutBlock; o0 += 16) {
    for (int64_t k0 = 0; k0 < rank; k0 += 16) {
      if (o0 + 16 <= width && k0 + 16 <= rank) {
        Vec16 m[16];
#pragma GCC unroll 16
        for (int l = 0; l < 16; ++l) m[l] = load16(b + (o0 + l) * stride + k0);
        transpose_stage<8>(m);
        transpose_stage<4>(m);
        transpose_stage<2>(m);
        transpose_stage<1>(m);
#pragma GCC unroll 16
        for (int l = 0; l < 16; ++l) store16(panel + (k0 + l) * kOutBlock + o0, m[l]);
        continue;
      }
      for (int64_t k = k0; k < std::min<int64_t>(k0 + 16, rank); ++k) {
        for (int64_t o = o0; o < o0 + 16; ++o) {
          panel[k * kOutBlock + o] = o < width ? b[o * stride + k] : 0.0f;
        }
      }
    }
  }
}

// out_r[0, kOutBlock) (+)= sum_k t_r[k] * panel[k][0, kOutBlock) for R rows (pointers): 4R
// independent accumulators hide the multiply-add latency, and each panel vector feeds R rows.
// ADD: add into out (float32 y, full blocks); otherwise store (a buffer).
template <int R, bool ADD>
TESSERA_ALWAYS_INLINE void expand_block(const float* const* t, const float* panel, int64_t rank,
                                        float* const* out) {
  Vec16 acc[R][4];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 16
    for (int c = 0; c < 4; ++c) acc[r][c] = Vec16{};
  }
  for (int64_t k = 0; k < rank; ++k) {
    const float* p = panel + k * kOutBlock;
    const Vec16 p0 = load16(p), p1 = load16(p + 16), p2 = load16(p + 32), p3 = load16(p + 48);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const float tk = t[r][k];
      acc[r][0] += tk * p0;
      acc[r][1] += tk * p1;
      acc[r][2] += tk * p2;
      acc[r][3] += tk * p3;
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 16
    for (int c = 0; c < 4; ++c) {
      float* o = out[r] + 16 * c;
      store16(o, ADD ? load16(o) + acc[r][c] : acc[r][c]);
    }
  }
}

template <bool ADD>
TESSERA_ALWAYS_INLINE void expand_impl(const float* const* t, int rows, const float* panel,
                                       int64_t rank, float* const* out) {
  int i = 0;
  for (; i + 4 <= rows; i += 4) expand_block<4, ADD>(t + i, panel, rank, out + i);
  for (; i < rows; ++i) expand_block<1, ADD>(t + i, panel, rank, out + i);
}

TESSERA_CPU_TARGET_CLONES void expand_add(const float* const* t, int rows, const float* panel,
                                          int64_t rank, float* const* y) {
  expand_impl<true>(t, rows, panel, rank, y);
}
TESSERA_CPU_TARGET_CLONES void expand_store(const float* const* t, int rows, const float* panel,
                                            int64_t rank, float* const* acc) {
  expand_impl<false>(t, rows, panel, rank, acc);
}

// rows[o][0, rpad) = b[o][0, rank) then zeros, for o < width; zero rows up to kOutBlock. The
// direct expand then reads whole vectors, never past the adapter's rank.
TESSERA_CPU_TARGET_CLONES void pad_rows(const float* b, int64_t stride, int64_t width, int64_t rank,
                                        int64_t rpad, float* rows) {
  for (int64_t o = 0; o < kOutBlock; ++o) {
    float* r = rows + o * rpad;
    const int64_t n = o < width ? rank : 0;
    const float* src = b + o * stride;
    for (int64_t k = 0; k < n; ++k) r[k] = src[k];
    for (int64_t k = n; k < rpad; ++k) r[k] = 0.0f;
  }
}

// out[o] = t . rows_o for the block's kOutBlock outputs (row o at rows + o * stride; rpad, the
// rank rounded up to 16, elements of each row and of t are read, all zero past the rank): dot
// products along the rank, sixteen outputs at a time folded by reduce16. For adapters with too
// few rows in the batch to pay for transposing B into a panel.
TESSERA_CPU_TARGET_CLONES void expand_direct(const float* t, const float* rows, int64_t stride,
                                             int64_t rpad, float* out) {
  for (int64_t o0 = 0; o0 < kOutBlock; o0 += 16) {
    Vec16 p[16];
#pragma GCC unroll 16
    for (int l = 0; l < 16; ++l) p[l] = Vec16{};
    for (int64_t k = 0; k < rpad; k += 16) {
      const Vec16 tv = load16(t + k);
#pragma GCC unroll 16
      for (int l = 0; l < 16; ++l) p[l] += tv * load16(rows + (o0 + l) * stride + k);
    }
    store16(out + o0, reduce16(p));
  }
}

TESSERA_CPU_TARGET_CLONES void add_f32(float* y, const float* acc, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += acc[i];
}

size_t elem_bytes(DType t) { return t == DType::kF32 ? 4 : 2; }

const char* offset(const void* p, int64_t elems, DType t) {
  return static_cast<const char*>(p) + elems * static_cast<int64_t>(elem_bytes(t));
}

// float64 (the decoder's float64 mode, a validation mode): each row's shrink then expand in
// plain loops, rows in parallel; the scale applied to the rank-r product, as in the float32 path.
void sgmv_f64(const LoraSgmvView& v) {
  std::vector<std::pair<int64_t, int32_t>> rows;  // (row, adapter)
  for (int64_t s = 0; s < v.num_segments; ++s) {
    const int32_t a = v.seg_adapter[s];
    if (a < 0 || v.ranks[a] == 0) continue;
    for (int64_t i = v.seg_indptr[s]; i < v.seg_indptr[s + 1]; ++i) rows.emplace_back(i, a);
  }
  const auto* x = static_cast<const double*>(v.x);
  const auto* a = static_cast<const double*>(v.a);
  const auto* b = static_cast<const double*>(v.b);
  auto* y = static_cast<double*>(v.y);
  const int64_t in = v.in_features, out = v.out_features, rmax = v.r_max;
#pragma omp parallel
  {
    std::vector<double> t(static_cast<size_t>(rmax));
#pragma omp for schedule(static)
    for (size_t n = 0; n < rows.size(); ++n) {
      const auto [i, ad] = rows[n];
      const int64_t r = v.ranks[ad];
      const double scale = v.scales[ad];
      const double* xi = x + i * v.x_row_stride;
      for (int64_t k = 0; k < r; ++k) {
        const double* ak = a + (ad * rmax + k) * in;
        double sum = 0;
        for (int64_t j = 0; j < in; ++j) sum += xi[j] * ak[j];
        t[k] = scale * sum;
      }
      double* yi = y + i * v.y_row_stride;
      for (int64_t o = 0; o < out; ++o) {
        const double* bo = b + (ad * out + o) * rmax;
        double sum = 0;
        for (int64_t k = 0; k < r; ++k) sum += t[k] * bo[k];
        yi[o] += sum;
      }
    }
  }
}

struct ShrinkTask {
  int32_t adapter;
  int32_t first;  // into the adapter's row list
  int32_t count;
};

}  // namespace

void lora_sgmv_cpu(const LoraSgmvView& v) {
  lora_sgmv_check(v);
  if (v.dtype == DType::kF64) {
    sgmv_f64(v);
    return;
  }
  const int64_t in = v.in_features, out = v.out_features, rmax = v.r_max;
  // The rows of each adapter, in batch order, whatever segments they sit in.
  std::vector<std::vector<int64_t>> rows_of(static_cast<size_t>(v.num_adapters));
  for (int64_t s = 0; s < v.num_segments; ++s) {
    const int32_t a = v.seg_adapter[s];
    if (a < 0 || v.ranks[a] == 0) continue;
    for (int64_t i = v.seg_indptr[s]; i < v.seg_indptr[s + 1]; ++i) rows_of[a].push_back(i);
  }
  std::vector<ShrinkTask> tasks;
  std::vector<int32_t> used;
  for (int64_t a = 0; a < v.num_adapters; ++a) {
    const auto n = static_cast<int32_t>(rows_of[a].size());
    if (n == 0) continue;
    used.push_back(static_cast<int32_t>(a));
    for (int32_t f = 0; f < n; f += kShrinkRows) {
      tasks.push_back({static_cast<int32_t>(a), f, std::min(kShrinkRows, n - f)});
    }
  }
  if (tasks.empty()) return;
  const bool f32 = v.dtype == DType::kF32;

  // float32 copies of the used adapters' A rows (half-precision inputs only): widened once, read
  // by every task of the adapter.
  std::vector<float> a32;
  std::vector<int64_t> a32_at(static_cast<size_t>(v.num_adapters), -1);
  if (!f32) {
    int64_t total = 0;
    for (int32_t a : used) {
      a32_at[a] = total;
      total += v.ranks[a] * in;
    }
    a32.resize(static_cast<size_t>(total));
    const auto num_used = static_cast<int64_t>(used.size());
#pragma omp parallel for schedule(static)
    for (int64_t u = 0; u < num_used; ++u) {
      const int32_t a = used[u];
      widen_to_f32(v.dtype, offset(v.a, a * rmax * in, v.dtype), a32.data() + a32_at[a],
                   v.ranks[a] * in);
    }
  }

  // Shrink: t [num_rows, r_max] = scale * x A^T for the rows with an adapter.
  std::vector<float> t(static_cast<size_t>(v.num_rows * rmax));
  const auto num_tasks = static_cast<int64_t>(tasks.size());
#pragma omp parallel
  {
    std::vector<float> xbuf(f32 ? 0 : static_cast<size_t>(kShrinkRows * in));
    const float* xrows[kShrinkRows];
    std::vector<float> tilebuf(static_cast<size_t>(std::max<int64_t>(kShrinkRows * 64, rmax)));
    std::vector<float> part(static_cast<size_t>(16 * std::max<int64_t>(kShrinkRows * 64, rmax)));
#pragma omp for schedule(dynamic)
    for (int64_t ti = 0; ti < num_tasks; ++ti) {
      const ShrinkTask& task = tasks[ti];
      const int64_t* rows = rows_of[task.adapter].data() + task.first;
      for (int r = 0; r < task.count; ++r) {
        if (f32) {
          xrows[r] = static_cast<const float*>(v.x) + rows[r] * v.x_row_stride;
        } else {
          widen_to_f32(v.dtype, offset(v.x, rows[r] * v.x_row_stride, v.dtype),
                       xbuf.data() + r * in, in);
          xrows[r] = xbuf.data() + r * in;
        }
      }
      const float* a = f32 ? static_cast<const float*>(v.a) + task.adapter * rmax * in
                           : a32.data() + a32_at[task.adapter];
      // [rows][rank]: all rows of the task when the rank fits, else one row at a time.
      std::vector<float>& tile = tilebuf;
      const int64_t rank = v.ranks[task.adapter];
      const float scale = v.scales[task.adapter];
      for (int r0 = 0; r0 < task.count; r0 += rank <= 64 ? kShrinkRows : 1) {
        const int n = rank <= 64 ? task.count : 1;
        shrink_rows(xrows + r0, n, a, in, rank, tile.data(), rank, part.data());
        for (int r = 0; r < n; ++r) {
          float* dst = t.data() + rows[r0 + r] * rmax;
          for (int64_t k = 0; k < rank; ++k) dst[k] = scale * tile[r * rank + k];
        }
      }
    }
  }

  // Expand: each task owns kOutBlock output columns of every row, so no two threads write the
  // same element. The task transposes (and widens) its columns of B for each used adapter into a
  // [rank][kOutBlock] panel, then runs the adapter's rows over it.
  const int64_t num_blocks = (out + kOutBlock - 1) / kOutBlock;
#pragma omp parallel
  {
    // A [rank][kOutBlock] panel, or [kOutBlock][rank rounded up to 16] padded rows.
    const int64_t rmax16 = (rmax + 15) & ~int64_t{15};
    std::vector<float> panel(static_cast<size_t>(rmax16 * kOutBlock));
    std::vector<float> tpad_buf(static_cast<size_t>(rmax16));
    float* tpad = tpad_buf.data();
    std::vector<float> bbuf(f32 ? 0 : static_cast<size_t>(kOutBlock * rmax));
    std::vector<float> acc(static_cast<size_t>(kExpandRows * kOutBlock));
    float ybuf[kOutBlock];
    const float* trows[kExpandRows];
    float* orows[kExpandRows];
#pragma omp for schedule(dynamic)
    for (int64_t blk = 0; blk < num_blocks; ++blk) {
      const int64_t o0 = blk * kOutBlock;
      const int64_t width = std::min<int64_t>(kOutBlock, out - o0);
      for (int32_t a : used) {
        const int64_t rank = v.ranks[a];
        const int64_t first = (a * out + o0) * rmax;  // B[a][o0][0]
        const float* b;
        if (f32) {
          b = static_cast<const float*>(v.b) + first;
        } else {
          widen_to_f32(v.dtype, offset(v.b, first, v.dtype), bbuf.data(), width * rmax);
          b = bbuf.data();
        }
        const auto& rows = rows_of[a];
        const auto n = static_cast<int64_t>(rows.size());
        if (n < kPanelMinRows) {
          // B's rows serve as they are when they hold whole vectors; else a zero-padded copy.
          const int64_t rpad = (rank + 15) & ~int64_t{15};
          const bool as_is = rpad == rank && width == kOutBlock;
          if (!as_is) pad_rows(b, rmax, width, rank, rpad, panel.data());
          for (int64_t f = 0; f < n; ++f) {
            const float* trow = t.data() + rows[f] * rmax;
            if (rpad != rank) {
              for (int64_t k = 0; k < rpad; ++k) tpad[k] = k < rank ? trow[k] : 0.0f;
              trow = tpad;
            }
            expand_direct(trow, as_is ? b : panel.data(), as_is ? rmax : rpad, rpad, acc.data());
            const int64_t yi = rows[f] * v.y_row_stride + o0;
            if (f32) {
              add_f32(static_cast<float*>(v.y) + yi, acc.data(), width);
            } else {
              void* yrow = const_cast<char*>(offset(v.y, yi, v.dtype));
              widen_to_f32(v.dtype, yrow, ybuf, width);
              add_f32(ybuf, acc.data(), width);
              narrow_from_f32(v.dtype, ybuf, yrow, width);
            }
          }
          continue;
        }
        pack_panel(b, rmax, width, rank, panel.data());
        for (int64_t f = 0; f < n; f += kExpandRows) {
          const int cnt = static_cast<int>(std::min<int64_t>(kExpandRows, n - f));
          for (int r = 0; r < cnt; ++r) trows[r] = t.data() + rows[f + r] * rmax;
          if (f32 && width == kOutBlock) {  // straight into y
            for (int r = 0; r < cnt; ++r) {
              orows[r] = static_cast<float*>(v.y) + rows[f + r] * v.y_row_stride + o0;
            }
            expand_add(trows, cnt, panel.data(), rank, orows);
            continue;
          }
          for (int r = 0; r < cnt; ++r) orows[r] = acc.data() + r * kOutBlock;
          expand_store(trows, cnt, panel.data(), rank, orows);
          for (int r = 0; r < cnt; ++r) {
            const int64_t yi = rows[f + r] * v.y_row_stride + o0;
            if (f32) {
              add_f32(static_cast<float*>(v.y) + yi, orows[r], width);
            } else {
              void* yrow = const_cast<char*>(offset(v.y, yi, v.dtype));
              widen_to_f32(v.dtype, yrow, ybuf, width);
              add_f32(ybuf, orows[r], width);
              narrow_from_f32(v.dtype, ybuf, yrow, width);
            }
          }
        }
      }
    }
  }
}

}  // namespace tessera::kernels

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cluster_attention/cluster_cpu_simd.h"
#include "kernels/varlen_attention/varlen_attention.h"

namespace tessera::kernels {

namespace {

constexpr int64_t kQTile = 32;  // queries per work item
constexpr int kRows = 4;        // queries per micro-kernel pass (they share every key / value load)
constexpr int kLanes = 16;      // keys per score vector

struct Item {
  int seq;
  int kv_head;
  int64_t i0, i1;  // query rows [i0, i1) of the sequence
};

struct Scratch {
  std::vector<float> kt;      // [head_dim, keys_padded]: the tile's visible keys, transposed
  std::vector<float> scores;  // [kRows, keys_padded]
  std::vector<float> acc;     // [kRows, head_dim]
};

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

TESSERA_CPU_CLONES
void run_item(const VarlenAttentionView& v, const Item& it, Scratch& w) {
  const int64_t start = v.cu_seqlens[it.seq];
  const int64_t len = v.cu_seqlens[it.seq + 1] - start;
  const int d = v.head_dim;
  const int group = v.num_q_heads / v.num_kv_heads;
  // Windows move monotonically with the query, so the tile sees [first of i0, last of i1 - 1].
  int64_t klo = 0, unused = 0, khi = 0;
  varlen_visible(it.i0, len, v.window, &klo, &unused);
  varlen_visible(it.i1 - 1, len, v.window, &unused, &khi);
  const int64_t nk = khi - klo + 1;
  const int64_t nkp = round_up(nk, kLanes);

  w.kt.assign(static_cast<size_t>(d) * nkp, 0.f);
  float* kt = w.kt.data();
  for (int64_t j = 0; j < nk; ++j) {
    const float* k = v.k + (start + klo + j) * v.k_stride[0] + it.kv_head * v.k_stride[1];
    for (int e = 0; e < d; ++e) kt[e * nkp + j] = k[e];
  }
  w.scores.resize(static_cast<size_t>(kRows) * nkp);
  w.acc.resize(static_cast<size_t>(kRows) * d);
  float* scores = w.scores.data();
  float* acc = w.acc.data();

  for (int g = 0; g < group; ++g) {
    const int h = it.kv_head * group + g;
    for (int64_t r0 = it.i0; r0 < it.i1; r0 += kRows) {
      const int nr = static_cast<int>(std::min<int64_t>(kRows, it.i1 - r0));
      const float* qp[kRows];
      for (int r = 0; r < kRows; ++r) {
        // Rows past the tile repeat its last row: the pass stays branch-free, results unused.
        const int64_t row = start + r0 + std::min(r, nr - 1);
        qp[r] = v.q + row * v.q_stride[0] + h * v.q_stride[1];
      }
      // Scores of kRows queries against kLanes keys per block: one key-vector load feeds kRows
      // multiply-adds, with no horizontal sums.
      for (int64_t jb = 0; jb < nkp; jb += kLanes) {
        float a[kRows][kLanes] = {};
        for (int e = 0; e < d; ++e) {
          const float* kv = kt + e * nkp + jb;
#pragma GCC unroll 4
          for (int r = 0; r < kRows; ++r) {
            const float qe = qp[r][e];
#pragma omp simd
            for (int l = 0; l < kLanes; ++l) a[r][l] += qe * kv[l];
          }
        }
        for (int r = 0; r < kRows; ++r) {
#pragma omp simd
          for (int l = 0; l < kLanes; ++l) scores[r * nkp + jb + l] = a[r][l] * v.scale;
        }
      }
      // Exact softmax over each row's visible keys; probabilities of the other keys in the
      // tile's union are zero so the value pass can run over the union for all rows at once.
      int64_t jlo = nk, jhi = -1;
      float inv_sum[kRows], row_max[kRows], row_sum[kRows];
      for (int r = 0; r < nr; ++r) {
        int64_t first = 0, last = 0;
        varlen_visible(r0 + r, len, v.window, &first, &last);
        const int64_t lo = first - klo, hi = last - klo;
        jlo = std::min(jlo, lo);
        jhi = std::max(jhi, hi);
        float* s = scores + r * nkp;
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t j = lo; j <= hi; ++j) m = std::max(m, s[j]);
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = lo; j <= hi; ++j) {
          const float p = simd::exp_approx(s[j] - m);
          s[j] = p;
          sum += p;
        }
        for (int64_t j = 0; j < lo; ++j) s[j] = 0.f;
        for (int64_t j = hi + 1; j < nk; ++j) s[j] = 0.f;
        row_max[r] = m;
        row_sum[r] = sum;
        inv_sum[r] = 1.f / sum;
      }
      std::fill(acc, acc + static_cast<size_t>(kRows) * d, 0.f);
      for (int64_t j = jlo; j <= jhi; ++j) {
        const float* vr = v.v + (start + klo + j) * v.v_stride[0] + it.kv_head * v.v_stride[1];
        for (int r = 0; r < nr; ++r) {
          const float p = scores[r * nkp + j];
          float* ar = acc + r * d;
#pragma omp simd
          for (int e = 0; e < d; ++e) ar[e] += p * vr[e];
        }
      }
      for (int r = 0; r < nr; ++r) {
        const int64_t row = start + r0 + r;
        float* o = v.out + (row * v.num_q_heads + h) * d;
        const float* ar = acc + r * d;
#pragma omp simd
        for (int e = 0; e < d; ++e) o[e] = ar[e] * inv_sum[r];
        if (v.lse != nullptr) v.lse[row * v.num_q_heads + h] = row_max[r] + std::log(row_sum[r]);
      }
    }
  }
}

}  // namespace

void varlen_attention_cpu(const VarlenAttentionView& v) {
  varlen_attention_check(v);
  std::vector<Item> items;
  for (int s = 0; s < v.num_seqs; ++s) {
    const int64_t len = v.cu_seqlens[s + 1] - v.cu_seqlens[s];
    for (int kh = 0; kh < v.num_kv_heads; ++kh) {
      for (int64_t i0 = 0; i0 < len; i0 += kQTile) {
        items.push_back({s, kh, i0, std::min(len, i0 + kQTile)});
      }
    }
  }
  const auto n = static_cast<int64_t>(items.size());
  if (n == 0) return;
  const int threads = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), n));
#pragma omp parallel num_threads(threads)
  {
    Scratch w;
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < n; ++i) run_item(v, items[i], w);
  }
}

}  // namespace tessera::kernels

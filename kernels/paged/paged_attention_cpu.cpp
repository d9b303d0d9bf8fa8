#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/paged/paged_attention.h"

namespace tessera::kernels {

namespace {

constexpr int kQTile = 16;     // query tokens per work item; decode has one
constexpr int kKeyChunk = 64;  // keys per online-softmax step
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Item {
  int seq;
  int kv_head;
  int q0;  // query range [q0, q1) within the sequence's queries
  int q1;
};

struct E4M3Table {
  float v[256];
  E4M3Table() {
    for (int c = 0; c < 256; ++c) v[c] = e4m3_to_float(static_cast<uint8_t>(c));
  }
};

// A row as float32: fp32 pages are read in place, other formats are decoded into buf.
const float* row_f32(KvDType t, const void* row, int n, float scale, float* buf,
                     const float* e4m3) {
  switch (t) {
    case KvDType::kF32:
      return static_cast<const float*>(row);
    case KvDType::kF16: {
      const auto* r = static_cast<const uint16_t*>(row);
      for (int i = 0; i < n; ++i) buf[i] = kv_half_to_float(r[i]);
      break;
    }
    case KvDType::kBF16: {
      const auto* r = static_cast<const uint16_t*>(row);
      for (int i = 0; i < n; ++i) buf[i] = kv_bf16_to_float(r[i]);
      break;
    }
    case KvDType::kI8: {
      const auto* r = static_cast<const int8_t*>(row);
#pragma omp simd
      for (int i = 0; i < n; ++i) buf[i] = scale * static_cast<float>(r[i]);
      break;
    }
    case KvDType::kF8E4M3: {
      const auto* r = static_cast<const uint8_t*>(row);
      for (int i = 0; i < n; ++i) buf[i] = scale * e4m3[r[i]];
      break;
    }
  }
  return buf;
}

struct Scratch {
  std::vector<float> q, scores, acc, m, l, kbuf, vbuf;
  std::vector<int64_t> t, lo;
  std::vector<const float*> krows;
  Scratch(int rows, int dk, int dv)
      : q(static_cast<size_t>(rows) * dk),
        scores(static_cast<size_t>(rows) * kKeyChunk),
        acc(static_cast<size_t>(rows) * dv),
        m(rows),
        l(rows),
        kbuf(static_cast<size_t>(kKeyChunk) * dk),
        vbuf(dv),
        t(rows),
        lo(rows),
        krows(kKeyChunk) {}
};

void run_item(const PagedAttentionView& a, const Item& item, Scratch& w, const float* e4m3) {
  const PagedKv& c = a.kv;
  const int group = a.num_q_heads / c.num_kv_heads;
  const int dk = c.head_dim_k, dv = c.head_dim_v;
  const int64_t len = a.seq_lens[item.seq];
  const int64_t q_begin = a.q_starts[item.seq];
  const int64_t q_len = a.q_starts[item.seq + 1] - q_begin;
  const int32_t* table = a.block_tables + static_cast<int64_t>(item.seq) * a.max_blocks_per_seq;
  const int rows = (item.q1 - item.q0) * group;

  // Row r is query token q0 + r / group with head kv_head * group + r % group.
  for (int r = 0; r < rows; ++r) {
    const int64_t qi = item.q0 + r / group;
    const int h = item.kv_head * group + r % group;
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
  const int64_t p_lo = w.lo[0];
  const int64_t p_hi = w.t[rows - 1];
  for (int64_t p0 = p_lo; p0 <= p_hi; p0 += kKeyChunk) {
    const int n = static_cast<int>(std::min<int64_t>(kKeyChunk, p_hi - p0 + 1));
    for (int j = 0; j < n; ++j) {
      const int64_t p = p0 + j;
      const int64_t block = table[p / c.block_size];
      const int slot = static_cast<int>(p % c.block_size);
      w.krows[j] = row_f32(c.dtype, c.k_row(block, slot, item.kv_head), dk,
                           c.k_scale_at(block, slot, item.kv_head),
                           w.kbuf.data() + static_cast<size_t>(j) * dk, e4m3);
    }
    for (int j = 0; j < n; ++j) {
      const float* k = w.krows[j];
      const int64_t p = p0 + j;
      for (int r = 0; r < rows; ++r) {
        float* s = w.scores.data() + static_cast<size_t>(r) * kKeyChunk;
        if (p < w.lo[r] || p > w.t[r]) {
          s[j] = kNegInf;
          continue;
        }
        const float* q = w.q.data() + static_cast<size_t>(r) * dk;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int d = 0; d < dk; ++d) dot += q[d] * k[d];
        s[j] = dot * a.scale;
      }
    }
    // Online softmax: scores become probabilities relative to the running max.
    for (int r = 0; r < rows; ++r) {
      float* s = w.scores.data() + static_cast<size_t>(r) * kKeyChunk;
      float mx = kNegInf;
      for (int j = 0; j < n; ++j) mx = std::max(mx, s[j]);
      const float new_m = std::max(w.m[r], mx);
      if (new_m == kNegInf) {  // nothing visible yet
        std::fill(s, s + n, 0.0f);
        continue;
      }
      const float corr = std::exp(w.m[r] - new_m);  // 0 when m was -inf
      float sum = 0.0f;
      for (int j = 0; j < n; ++j) {
        s[j] = std::exp(s[j] - new_m);
        sum += s[j];
      }
      if (corr != 1.0f) {
        float* acc = w.acc.data() + static_cast<size_t>(r) * dv;
#pragma omp simd
        for (int d = 0; d < dv; ++d) acc[d] *= corr;
      }
      w.l[r] = w.l[r] * corr + sum;
      w.m[r] = new_m;
    }
    for (int j = 0; j < n; ++j) {
      const int64_t p = p0 + j;
      const int64_t block = table[p / c.block_size];
      const int slot = static_cast<int>(p % c.block_size);
      const float* v = row_f32(c.dtype, c.v_row(block, slot, item.kv_head), dv,
                               c.v_scale_at(block, slot, item.kv_head), w.vbuf.data(), e4m3);
      for (int r = 0; r < rows; ++r) {
        const float pj = w.scores[static_cast<size_t>(r) * kKeyChunk + j];
        if (pj == 0.0f) continue;
        float* acc = w.acc.data() + static_cast<size_t>(r) * dv;
#pragma omp simd
        for (int d = 0; d < dv; ++d) acc[d] += pj * v[d];
      }
    }
  }

  for (int r = 0; r < rows; ++r) {
    const int64_t row = q_begin + item.q0 + r / group;
    const int h = item.kv_head * group + r % group;
    float* o = a.out + (row * a.num_q_heads + h) * dv;
    const float* acc = w.acc.data() + static_cast<size_t>(r) * dv;
    const bool empty = w.l[r] == 0.0f;
    const float inv = empty ? 0.0f : 1.0f / w.l[r];
    for (int d = 0; d < dv; ++d) o[d] = acc[d] * inv;
    if (a.lse) a.lse[row * a.num_q_heads + h] = empty ? kNegInf : w.m[r] + std::log(w.l[r]);
  }
}

}  // namespace

void paged_attention_cpu(const PagedAttentionView& a) {
  static const E4M3Table e4m3;
  const PagedKv& c = a.kv;
  std::vector<Item> items;
  for (int s = 0; s < a.num_seqs; ++s) {
    const int q_len = a.q_starts[s + 1] - a.q_starts[s];
    for (int kh = 0; kh < c.num_kv_heads; ++kh) {
      for (int q0 = 0; q0 < q_len; q0 += kQTile) {
        items.push_back({s, kh, q0, std::min(q_len, q0 + kQTile)});
      }
    }
  }
  if (items.empty()) return;
  const int rows = kQTile * (a.num_q_heads / c.num_kv_heads);
  const auto num_items = static_cast<int64_t>(items.size());
#pragma omp parallel if (num_items > 1)
  {
    Scratch scratch(rows, c.head_dim_k, c.head_dim_v);
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < num_items; ++i) run_item(a, items[i], scratch, e4m3.v);
  }
}

}  // namespace tessera::kernels

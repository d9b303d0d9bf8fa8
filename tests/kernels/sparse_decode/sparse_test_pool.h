// A paged KV pool for the torch-free sparse decode tests: per-sequence fp32 K/V (the source of
// truth) written into randomly placed blocks in any page format, plus helpers to build the views.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/paged/paged_kv.h"
#include "kernels/quant/kv_format.h"

namespace tessera::kernels::testing {

struct PoolSpec {
  std::vector<int> lens;  // tokens per sequence
  int block_size = 16;
  int hkv = 2, dk = 24, dv = 24;
  KvDType dtype = KvDType::kF32;
  uint64_t seed = 1;
};

struct Pool {
  PoolSpec spec;
  int max_blocks = 1;
  int64_t num_blocks = 1;
  std::vector<int32_t> tables;           // [num_seqs, max_blocks]
  std::vector<std::vector<float>> k, v;  // per sequence [len, hkv, d] fp32 (what was written)
  std::vector<uint8_t> kbytes, vbytes;   // [num_blocks, block_size, hkv, d] elements of dtype
  std::vector<float> kscale, vscale;     // [num_blocks, block_size, hkv] (quantised only)

  explicit Pool(const PoolSpec& s) : spec(s) {
    std::mt19937 rng(static_cast<uint32_t>(s.seed));
    std::normal_distribution<float> normal;
    const int n = static_cast<int>(s.lens.size());
    for (int len : s.lens)
      max_blocks = std::max(max_blocks, (len + s.block_size - 1) / s.block_size);
    int64_t used = 0;
    for (int len : s.lens) used += (len + s.block_size - 1) / s.block_size;
    num_blocks = used + 1 + 3;  // block 0 is the null block; a few spare blocks stay zero
    std::vector<int32_t> free(static_cast<size_t>(num_blocks - 1));
    std::iota(free.begin(), free.end(), 1);
    std::shuffle(free.begin(), free.end(), rng);
    tables.assign(static_cast<size_t>(n) * max_blocks, 0);
    size_t next = 0;
    for (int i = 0; i < n; ++i) {
      for (int b = 0; b < (s.lens[i] + s.block_size - 1) / s.block_size; ++b) {
        tables[static_cast<size_t>(i) * max_blocks + b] = free[next++];
      }
    }
    const int64_t eb = kv_elem_bytes(s.dtype);
    kbytes.assign(static_cast<size_t>(num_blocks * s.block_size * s.hkv * s.dk * eb), 0);
    vbytes.assign(static_cast<size_t>(num_blocks * s.block_size * s.hkv * s.dv * eb), 0);
    kscale.assign(static_cast<size_t>(num_blocks * s.block_size * s.hkv), 1.0f);
    vscale = kscale;
    for (int i = 0; i < n; ++i) {
      k.emplace_back(static_cast<size_t>(s.lens[i]) * s.hkv * s.dk);
      v.emplace_back(static_cast<size_t>(s.lens[i]) * s.hkv * s.dv);
      for (auto& x : k.back()) x = normal(rng);
      for (auto& x : v.back()) x = normal(rng);
      for (int p = 0; p < s.lens[i]; ++p) write(i, p);
    }
  }

  // Writes token p of sequence i into its page; the fp32 copy becomes what the page holds.
  void write(int i, int p) {
    const auto& s = spec;
    const int64_t block = tables[static_cast<size_t>(i) * max_blocks + p / s.block_size];
    const int slot = p % s.block_size;
    for (int h = 0; h < s.hkv; ++h) {
      const int64_t row = (block * s.block_size + slot) * s.hkv + h;
      store(k[i].data() + (static_cast<int64_t>(p) * s.hkv + h) * s.dk, s.dk, kbytes.data(), row,
            kscale.data());
      store(v[i].data() + (static_cast<int64_t>(p) * s.hkv + h) * s.dv, s.dv, vbytes.data(), row,
            vscale.data());
    }
  }

  void store(float* x, int d, uint8_t* bytes, int64_t row, float* scales) {
    const KvDType t = spec.dtype;
    const int64_t eb = kv_elem_bytes(t);
    uint8_t* dst = bytes + row * d * eb;
    float scale = 1.0f;
    if (kv_is_quantised(t)) {
      float amax = 0.0f;
      for (int j = 0; j < d; ++j) amax = std::max(amax, std::fabs(x[j]));
      scale = kv_scale_from_amax(t, amax);
      scales[row] = scale;
    }
    for (int j = 0; j < d; ++j) {
      switch (t) {
        case KvDType::kF32:
          std::memcpy(dst + j * 4, &x[j], 4);
          break;
        case KvDType::kF16: {
          const uint16_t h = kv_float_to_half(x[j]);
          std::memcpy(dst + j * 2, &h, 2);
          break;
        }
        case KvDType::kBF16: {
          const uint16_t h = kv_float_to_bf16(x[j]);
          std::memcpy(dst + j * 2, &h, 2);
          break;
        }
        case KvDType::kI8: {
          const int8_t c = quantise_int8(x[j], scale);
          std::memcpy(dst + j, &c, 1);
          break;
        }
        case KvDType::kF8E4M3:
          dst[j] = float_to_e4m3(x[j] / scale);
          break;
      }
      x[j] = kv_load(t, dst, j, scale);  // the value the kernels will read
    }
  }

  PagedKv view() {
    PagedKv kv;
    kv.k = kbytes.data();
    kv.v = vbytes.data();
    const bool quant = kv_is_quantised(spec.dtype);
    kv.k_scale = quant ? kscale.data() : nullptr;
    kv.v_scale = quant ? vscale.data() : nullptr;
    kv.k_block_stride = static_cast<int64_t>(spec.block_size) * spec.hkv * spec.dk;
    kv.v_block_stride = static_cast<int64_t>(spec.block_size) * spec.hkv * spec.dv;
    kv.k_scale_block_stride = static_cast<int64_t>(spec.block_size) * spec.hkv;
    kv.v_scale_block_stride = kv.k_scale_block_stride;
    kv.num_blocks = num_blocks;
    kv.block_size = spec.block_size;
    kv.num_kv_heads = spec.hkv;
    kv.head_dim_k = spec.dk;
    kv.head_dim_v = spec.dv;
    kv.dtype = spec.dtype;
    return kv;
  }

  const int32_t* table(int i) const { return tables.data() + static_cast<size_t>(i) * max_blocks; }
  const float* key(int i, int p, int h) const {
    return k[i].data() + (static_cast<int64_t>(p) * spec.hkv + h) * spec.dk;
  }
  const float* value(int i, int p, int h) const {
    return v[i].data() + (static_cast<int64_t>(p) * spec.hkv + h) * spec.dv;
  }
};

// Attention of one query row over a token list, fp64, straight from the fp32 source of truth:
// an independent formula (no pages, no online softmax). Returns lse; writes out [dv].
inline double attend_fp64(const Pool& pool, int seq, int kv_head, const float* q, float scale,
                          const std::vector<int32_t>& list, std::vector<double>& out) {
  const auto& s = pool.spec;
  out.assign(static_cast<size_t>(s.dv), 0.0);
  if (list.empty()) return -INFINITY;
  std::vector<double> sc(list.size());
  double mx = -INFINITY;
  for (size_t e = 0; e < list.size(); ++e) {
    const float* k = pool.key(seq, list[e], kv_head);
    double dot = 0.0;
    for (int d = 0; d < s.dk; ++d) dot += static_cast<double>(q[d]) * k[d];
    sc[e] = dot * scale;
    mx = std::max(mx, sc[e]);
  }
  double z = 0.0;
  for (size_t e = 0; e < list.size(); ++e) {
    const double w = std::exp(sc[e] - mx);
    z += w;
    const float* v = pool.value(seq, list[e], kv_head);
    for (int d = 0; d < s.dv; ++d) out[d] += w * v[d];
  }
  for (auto& o : out) o /= z;
  return mx + std::log(z);
}

}  // namespace tessera::kernels::testing

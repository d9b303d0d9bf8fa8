// Byte formulas of every cache spec against hand-computed values (acceptance 1): each row's
// expected page size and max memory were worked out by hand from the published formulas
//   page = block_size * kv_heads * (key_head + value_head) * elem + [quant] block_size * kv_heads *
//   8 full:     cdiv(max_len, bs) * page sliding:  (cdiv(min(W - 1 + max_batched, max_len), bs) +
//   1) * page chunked:  cdiv(min(chunk + max_batched, max_len), bs) * page cross:
//   cdiv(max_encoder_len, bs) * page; encoder-only: 0 states:   sum of prod(shape) * dtype bytes,
//   one page per sequence
#include <gtest/gtest.h>

#include "caches/kv_cache_spec.h"
#include "common/error.h"

namespace tessera::caches {
namespace {

struct AttnRow {
  int64_t bs, heads, dk, dv;
  DType dtype;
  KVQuant quant;
  int64_t max_len, max_batched;
  int64_t extra;  // window / chunk / encoder length; unused for full
  int64_t page, max_mem;
};

AttentionShape shape_of(const AttnRow& r) { return {r.bs, r.heads, r.dk, r.dv, r.dtype, r.quant}; }
CacheLimits limits_of(const AttnRow& r, int64_t encoder_len = 0) {
  return {r.max_len, r.max_batched, /*batch_size=*/4, encoder_len};
}

// bs, H, dk, dv, dtype, quant, max_len, max_batched, -, page, max_mem
const AttnRow kFull[] = {
    {16, 8, 128, 128, DType::kF16, KVQuant::kNone, 4096, 2048, 0, 65536, 16777216},
    {1, 1, 64, 64, DType::kF32, KVQuant::kNone, 7, 3, 0, 512, 3584},
    {3, 2, 80, 80, DType::kBF16, KVQuant::kInt8, 100, 16, 0, 1008, 34272},
    {16, 4, 192, 128, DType::kBF16, KVQuant::kNone, 32768, 8192, 0, 40960, 83886080},
    {32, 1, 128, 128, DType::kF16, KVQuant::kFp8E4M3, 1000, 512, 0, 8448, 270336},
    {8, 16, 96, 96, DType::kF32, KVQuant::kInt8, 513, 64, 0, 25600, 1664000},
    {64, 2, 256, 256, DType::kF16, KVQuant::kNone, 131072, 16384, 0, 131072, 268435456},
    {5, 3, 72, 72, DType::kF64, KVQuant::kNone, 50, 50, 0, 17280, 172800},
    {16, 8, 64, 64, DType::kF16, KVQuant::kFp8E4M3, 2049, 256, 0, 17408, 2245632},
    {2, 5, 100, 60, DType::kF32, KVQuant::kInt8, 11, 4, 0, 1680, 10080},
    {128, 4, 128, 128, DType::kBF16, KVQuant::kInt8, 8192, 8192, 0, 135168, 8650752},
};

// ..., window, page, max_mem
const AttnRow kSliding[] = {
    {16, 8, 128, 128, DType::kF16, KVQuant::kNone, 4096, 2048, 4096, 65536, 16842752},
    {1, 1, 64, 64, DType::kF32, KVQuant::kNone, 7, 3, 1, 512, 2048},
    {3, 2, 80, 80, DType::kBF16, KVQuant::kInt8, 100, 16, 17, 1008, 12096},
    {16, 4, 192, 128, DType::kBF16, KVQuant::kNone, 32768, 8192, 1024, 40960, 23633920},
    {32, 1, 128, 128, DType::kF16, KVQuant::kFp8E4M3, 1000, 512, 128, 8448, 177408},
    {8, 16, 96, 96, DType::kF32, KVQuant::kInt8, 513, 64, 100, 25600, 563200},
    {64, 2, 256, 256, DType::kF16, KVQuant::kNone, 131072, 16384, 4096, 131072, 42074112},
    {5, 3, 72, 72, DType::kF64, KVQuant::kNone, 50, 50, 3, 17280, 190080},
    {16, 8, 64, 64, DType::kF16, KVQuant::kFp8E4M3, 2049, 256, 2048, 17408, 2263040},
    {2, 5, 100, 60, DType::kF32, KVQuant::kInt8, 11, 4, 5, 1680, 8400},
    {128, 4, 128, 128, DType::kBF16, KVQuant::kInt8, 8192, 8192, 1000, 135168, 8785920},
};

// ..., chunk, page, max_mem
const AttnRow kChunked[] = {
    {16, 8, 128, 128, DType::kF16, KVQuant::kNone, 4096, 2048, 8192, 65536, 16777216},
    {1, 1, 64, 64, DType::kF32, KVQuant::kNone, 7, 3, 7, 512, 3584},
    {3, 2, 80, 80, DType::kBF16, KVQuant::kInt8, 100, 16, 24, 1008, 14112},
    {16, 4, 192, 128, DType::kBF16, KVQuant::kNone, 32768, 8192, 4096, 40960, 31457280},
    {32, 1, 128, 128, DType::kF16, KVQuant::kFp8E4M3, 1000, 512, 64, 8448, 152064},
    {8, 16, 96, 96, DType::kF32, KVQuant::kInt8, 513, 64, 256, 25600, 1024000},
    {64, 2, 256, 256, DType::kF16, KVQuant::kNone, 131072, 16384, 8192, 131072, 50331648},
    {5, 3, 72, 72, DType::kF64, KVQuant::kNone, 50, 50, 5, 17280, 172800},
    {16, 8, 64, 64, DType::kF16, KVQuant::kFp8E4M3, 2049, 256, 512, 17408, 835584},
    {2, 5, 100, 60, DType::kF32, KVQuant::kInt8, 11, 4, 2, 1680, 5040},
    {128, 4, 128, 128, DType::kBF16, KVQuant::kInt8, 8192, 8192, 384, 135168, 8650752},
};

// Same shapes as kFull with an encoder length in `extra`: cross-attention max memory.
const int64_t kEncoderLen[] = {1500, 1, 10, 4096, 33, 0, 3000, 7, 1, 999, 129};
const int64_t kCrossMaxMem[] = {6160384, 512,   4032,  10485760, 16896, 0,
                                6160384, 34560, 17408, 840000,   270336};

TEST(KVCacheSpecBytes, FullAttention) {
  for (const auto& r : kFull) {
    FullAttentionSpec spec(shape_of(r));
    SCOPED_TRACE(spec.describe());
    EXPECT_EQ(spec.page_size_bytes(), r.page);
    EXPECT_EQ(spec.max_memory_usage_bytes(limits_of(r)), r.max_mem);
    EXPECT_EQ(spec.max_pages(limits_of(r)) * r.page, r.max_mem);
  }
}

TEST(KVCacheSpecBytes, SlidingWindow) {
  for (const auto& r : kSliding) {
    SlidingWindowSpec spec(shape_of(r), r.extra);
    SCOPED_TRACE(spec.describe());
    EXPECT_EQ(spec.page_size_bytes(), r.page);
    EXPECT_EQ(spec.max_memory_usage_bytes(limits_of(r)), r.max_mem);
  }
}

TEST(KVCacheSpecBytes, ChunkedLocal) {
  for (const auto& r : kChunked) {
    ChunkedLocalAttentionSpec spec(shape_of(r), r.extra);
    SCOPED_TRACE(spec.describe());
    EXPECT_EQ(spec.page_size_bytes(), r.page);
    EXPECT_EQ(spec.max_memory_usage_bytes(limits_of(r)), r.max_mem);
  }
}

TEST(KVCacheSpecBytes, CrossAttentionAndEncoderOnly) {
  for (size_t i = 0; i < std::size(kFull); ++i) {
    const auto& r = kFull[i];
    CrossAttentionSpec cross(shape_of(r));
    EncoderOnlySpec enc(shape_of(r));
    SCOPED_TRACE(cross.describe());
    EXPECT_EQ(cross.page_size_bytes(), r.page);
    EXPECT_EQ(cross.max_memory_usage_bytes(limits_of(r, kEncoderLen[i])), kCrossMaxMem[i]);
    EXPECT_EQ(enc.page_size_bytes(), r.page);
    EXPECT_EQ(enc.max_memory_usage_bytes(limits_of(r)), 0);
  }
}

TEST(KVCacheSpecBytes, QuantisedScaleOverhead) {
  // The scale bytes are exactly block_size * kv_heads * 2 * 4 on top of one byte per element.
  for (const auto& r : kFull) {
    for (KVQuant q : {KVQuant::kInt8, KVQuant::kFp8E4M3}) {
      FullAttentionSpec spec({r.bs, r.heads, r.dk, r.dv, r.dtype, q});
      EXPECT_EQ(spec.scale_page_bytes(), r.bs * r.heads * 8);
      EXPECT_EQ(spec.key_page_bytes(), r.bs * r.heads * r.dk);
      EXPECT_EQ(spec.value_page_bytes(), r.bs * r.heads * r.dv);
      EXPECT_EQ(spec.element_bytes(), 1);
    }
  }
}

struct Mamba1Row {
  int64_t inter, state, kernel;
  DType conv, ssm;
  int64_t page;
};
const Mamba1Row kMamba1[] = {
    {1536, 16, 4, DType::kF16, DType::kF32, 107520},
    {5120, 16, 4, DType::kBF16, DType::kF32, 358400},
    {1, 1, 2, DType::kF32, DType::kF32, 8},
    {768, 8, 3, DType::kF32, DType::kF16, 18432},
    {2048, 16, 4, DType::kF16, DType::kF16, 77824},
    {3, 5, 7, DType::kF64, DType::kF32, 204},
    {4096, 32, 4, DType::kBF16, DType::kBF16, 286720},
    {100, 10, 2, DType::kF32, DType::kF64, 8400},
    {8192, 16, 4, DType::kF16, DType::kF32, 573440},
    {17, 3, 5, DType::kBF16, DType::kF32, 340},
};

struct Mamba2Row {
  int64_t inter, groups, heads, head_dim, state, kernel;
  DType conv, ssm;
  int64_t page;
};
const Mamba2Row kMamba2[] = {
    {4096, 1, 64, 64, 128, 4, DType::kBF16, DType::kF32, 2123264},
    {5120, 8, 80, 64, 128, 4, DType::kF16, DType::kF32, 2664448},
    {2, 1, 1, 2, 1, 2, DType::kF32, DType::kF32, 24},
    {3072, 2, 48, 64, 64, 4, DType::kBF16, DType::kBF16, 413184},
    {1536, 1, 24, 64, 128, 4, DType::kF32, DType::kF32, 807936},
    {7, 3, 5, 3, 2, 3, DType::kF64, DType::kF16, 364},
    {8192, 8, 128, 64, 256, 4, DType::kBF16, DType::kF32, 8462336},
    {64, 2, 4, 16, 16, 2, DType::kF16, DType::kF64, 8448},
    {2560, 1, 40, 64, 128, 4, DType::kF16, DType::kF16, 672256},
    {100, 4, 10, 10, 9, 5, DType::kF32, DType::kBF16, 4552},
};

struct GatedDeltaRow {
  int64_t k_heads, v_heads, k_dim, v_dim, kernel;
  DType conv, state;
  int64_t page;
};
const GatedDeltaRow kGatedDelta[] = {
    {16, 32, 128, 128, 4, DType::kBF16, DType::kF32, 2146304},
    {16, 16, 128, 128, 4, DType::kBF16, DType::kBF16, 561152},
    {1, 1, 1, 1, 2, DType::kF32, DType::kF32, 16},
    {2, 4, 64, 64, 4, DType::kF16, DType::kF32, 68608},
    {8, 8, 96, 128, 3, DType::kF32, DType::kF32, 413696},
    {3, 5, 7, 11, 5, DType::kF64, DType::kF16, 3874},
    {32, 64, 128, 128, 4, DType::kBF16, DType::kF32, 4292608},
    {4, 4, 256, 256, 4, DType::kF16, DType::kF16, 542720},
    {6, 12, 80, 96, 2, DType::kBF16, DType::kF64, 741504},
    {12, 24, 64, 128, 4, DType::kF32, DType::kBF16, 448512},
};

const CacheLimits kLimits{4096, 512, 8, 0};

TEST(KVCacheSpecBytes, Mamba1) {
  for (const auto& r : kMamba1) {
    auto spec = MambaSpec::mamba1(r.inter, r.state, r.kernel, r.conv, r.ssm);
    SCOPED_TRACE(spec->describe());
    EXPECT_EQ(spec->version(), 1);
    EXPECT_EQ(spec->page_size_bytes(), r.page);
    EXPECT_EQ(spec->max_memory_usage_bytes(kLimits), r.page);  // one state, any length
    EXPECT_EQ(spec->states()[0].shape, (std::vector<int64_t>{r.inter, r.kernel - 1}));
  }
}

TEST(KVCacheSpecBytes, Mamba2) {
  for (const auto& r : kMamba2) {
    auto spec =
        MambaSpec::mamba2(r.inter, r.groups, r.heads, r.head_dim, r.state, r.kernel, r.conv, r.ssm);
    SCOPED_TRACE(spec->describe());
    EXPECT_EQ(spec->version(), 2);
    EXPECT_EQ(spec->page_size_bytes(), r.page);
    EXPECT_EQ(spec->max_memory_usage_bytes(kLimits), r.page);
    EXPECT_EQ(spec->states()[1].shape, (std::vector<int64_t>{r.heads, r.head_dim, r.state}));
  }
}

TEST(KVCacheSpecBytes, GatedDeltaLinearAttention) {
  for (const auto& r : kGatedDelta) {
    auto spec = LinearAttentionSpec::gated_delta(r.k_heads, r.v_heads, r.k_dim, r.v_dim, r.kernel,
                                                 r.conv, r.state);
    SCOPED_TRACE(spec->describe());
    EXPECT_EQ(spec->page_size_bytes(), r.page);
    EXPECT_EQ(spec->max_memory_usage_bytes(kLimits), r.page);
    EXPECT_EQ(spec->states()[1].shape, (std::vector<int64_t>{r.v_heads, r.k_dim, r.v_dim}));
  }
}

// Validation names the field and its value (seed: "batch_size must be positive").
void expect_error(const std::function<void()>& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "no error, expected one containing: " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(KVCacheSpecValidation, NamesFieldAndValue) {
  expect_error(
      [] {
        CacheLimits{4096, 512, 0, 0}.validate();
      },
      "batch_size must be positive, got 0");
  expect_error(
      [] {
        CacheLimits{0, 512, 1, 0}.validate();
      },
      "max_model_len must be positive, got 0");
  expect_error(
      [] {
        CacheLimits{16, -3, 1, 0}.validate();
      },
      "max_num_batched_tokens must be positive, got -3");
  expect_error(
      [] {
        FullAttentionSpec({0, 8, 64, 64, DType::kF16});
      },
      "block_size must be positive, got 0");
  expect_error(
      [] {
        FullAttentionSpec({16, -1, 64, 64, DType::kF16});
      },
      "num_kv_heads must be positive, got -1");
  expect_error(
      [] {
        FullAttentionSpec({16, 8, 0, 64, DType::kF16});
      },
      "key_head_size must be positive, got 0");
  expect_error(
      [] {
        FullAttentionSpec({16, 8, 64, 64, DType::kI32});
      },
      "dtype must be a floating type, got int32");
  expect_error(
      [] {
        SlidingWindowSpec({16, 8, 64, 64, DType::kF16}, 0);
      },
      "window must be positive, got 0");
  expect_error(
      [] {
        ChunkedLocalAttentionSpec({16, 8, 64, 64, DType::kF16}, -8);
      },
      "chunk_size must be positive, got -8");
  expect_error([] { MambaSpec::mamba1(0, 16, 4, DType::kF16, DType::kF32); },
               "intermediate_size must be positive, got 0");
  expect_error([] { MambaSpec::mamba2(64, 1, 4, 16, 16, 1, DType::kF16, DType::kF32); },
               "conv_kernel must be > 1, got 1");
  expect_error([] { LinearAttentionSpec::gated_delta(2, 0, 64, 64, 4, DType::kF16, DType::kF32); },
               "num_v_heads must be positive, got 0");
  FullAttentionSpec ok({16, 8, 64, 64, DType::kF16});
  expect_error(
      [&] {
        ok.max_memory_usage_bytes({4096, 512, 0, 0});
      },
      "batch_size must be positive, got 0");
}

TEST(KVCacheSpecEquality, GroupsBySpec) {
  const AttentionShape s{16, 8, 64, 64, DType::kF16};
  FullAttentionSpec a(s), b(s);
  SlidingWindowSpec w1(s, 128), w2(s, 128), w3(s, 256);
  EXPECT_TRUE(a.equals(b));
  EXPECT_FALSE(a.equals(w1));
  EXPECT_TRUE(w1.equals(w2));
  EXPECT_FALSE(w1.equals(w3));
  EXPECT_TRUE(w1.same_page_layout(a));
  FullAttentionSpec q({16, 8, 64, 64, DType::kF16, KVQuant::kInt8});
  EXPECT_FALSE(q.equals(a));
  auto m1 = MambaSpec::mamba1(64, 16, 4, DType::kF16, DType::kF32);
  auto m1b = MambaSpec::mamba1(64, 16, 4, DType::kF16, DType::kF32);
  auto m2 = MambaSpec::mamba1(64, 8, 4, DType::kF16, DType::kF32);
  EXPECT_TRUE(m1->equals(*m1b));
  EXPECT_FALSE(m1->equals(*m2));
  EXPECT_FALSE(m1->equals(a));
}

}  // namespace
}  // namespace tessera::caches

// Paged attention, KV append, KV quantisation and LSE merge on CPU: the fast kernels against the
// fp64 reference and against an independent libtorch computation (pages gathered into contiguous
// K/V, then softmax(QK^T)V with an explicit mask), over odd block sizes, prime batch sizes,
// non-power-of-two head dims, ragged lengths and every page format.
#include <gtest/gtest.h>
#include <torch/types.h>

#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "kernels/ops/attention_ops.h"
#include "kernels/ops/kv_quant_ops.h"
#include "kernels/ops/merge_ops.h"
#include "kernels/ops/paged_attention_ops.h"
#include "kernels/ops/paged_kv_append_ops.h"
#include "kernels/quant/kv_format.h"
#include "kernels/quant/kv_quant.h"

namespace tessera::kernels {
namespace {

using torch::indexing::Slice;

enum class QMode { kDecode, kExtend, kPrefill };

struct Case {
  int num_seqs = 3;
  int block_size = 16;
  int hq = 4, hkv = 2, dk = 24, dv = 24;
  QMode mode = QMode::kExtend;
  int window = 0, chunk = 0;
  double softcap = 0;  // Gemma 2's attention logit soft-capping, 0 = none
  torch::ScalarType cache_dtype = torch::kFloat;
  int max_len = 40;
  bool interleaved = false;  // K and V pages in one allocation [num_blocks, 2, ...]
  uint64_t seed = 1;
};

std::string describe(const Case& c) {
  return "seqs=" + std::to_string(c.num_seqs) + " bs=" + std::to_string(c.block_size) +
         " hq=" + std::to_string(c.hq) + " hkv=" + std::to_string(c.hkv) +
         " dk=" + std::to_string(c.dk) + " dv=" + std::to_string(c.dv) +
         " mode=" + std::to_string(static_cast<int>(c.mode)) +
         " window=" + std::to_string(c.window) + " chunk=" + std::to_string(c.chunk) +
         " dtype=" + std::string(c10::toString(c.cache_dtype));
}

bool quantised(torch::ScalarType t) { return t == torch::kChar || t == torch::kByte; }

// A filled paged cache: per-sequence contiguous K/V (float32, the source of truth) written into
// randomly placed pages through paged_kv_append.
struct Scenario {
  Case c;
  std::vector<int> lens, q_lens;
  std::vector<torch::Tensor> k_src, v_src;  // per sequence [len, hkv, d]
  torch::Tensor k_cache, v_cache, k_scale, v_scale;
  torch::Tensor block_tables, seq_lens, q_starts, q;
};

Scenario make_scenario(const Case& c) {
  Scenario s;
  s.c = c;
  std::mt19937 rng(static_cast<uint32_t>(c.seed));
  torch::manual_seed(c.seed);
  std::uniform_int_distribution<int> len_dist(1, c.max_len);
  int total_blocks = 0, max_blocks = 1;
  for (int i = 0; i < c.num_seqs; ++i) {
    const int len = len_dist(rng);
    s.lens.push_back(len);
    int q_len = 1;
    if (c.mode == QMode::kPrefill) q_len = len;
    if (c.mode == QMode::kExtend) q_len = std::uniform_int_distribution<int>(1, len)(rng);
    s.q_lens.push_back(q_len);
    const int blocks = (len + c.block_size - 1) / c.block_size;
    total_blocks += blocks;
    max_blocks = std::max(max_blocks, blocks + 1);  // one spare column of null-block padding
  }
  const int num_blocks = total_blocks + 3;  // + null block 0 and two never-used blocks
  std::vector<int> ids(num_blocks - 1);
  for (int i = 0; i < num_blocks - 1; ++i) ids[i] = i + 1;
  std::shuffle(ids.begin(), ids.end(), rng);
  s.block_tables = torch::zeros({c.num_seqs, max_blocks}, torch::kInt);
  auto bt = s.block_tables.accessor<int32_t, 2>();
  int next = 0;
  for (int i = 0; i < c.num_seqs; ++i) {
    for (int b = 0; b < (s.lens[i] + c.block_size - 1) / c.block_size; ++b) bt[i][b] = ids[next++];
  }
  s.seq_lens = torch::tensor(s.lens, torch::kInt);
  std::vector<int> starts{0};
  for (int ql : s.q_lens) starts.push_back(starts.back() + ql);
  s.q_starts = torch::tensor(starts, torch::kInt);

  const auto opts = torch::dtype(c.cache_dtype);
  if (c.interleaved) {
    TORCH_CHECK(c.dk == c.dv);
    auto both = torch::zeros({num_blocks, 2, c.block_size, c.hkv, c.dk}, opts);
    s.k_cache = both.select(1, 0);
    s.v_cache = both.select(1, 1);
  } else {
    s.k_cache = torch::zeros({num_blocks, c.block_size, c.hkv, c.dk}, opts);
    s.v_cache = torch::zeros({num_blocks, c.block_size, c.hkv, c.dv}, opts);
  }
  if (quantised(c.cache_dtype)) {
    s.k_scale = torch::zeros({num_blocks, c.block_size, c.hkv});
    s.v_scale = torch::zeros({num_blocks, c.block_size, c.hkv});
  }
  for (int i = 0; i < c.num_seqs; ++i) {
    s.k_src.push_back(torch::randn({s.lens[i], c.hkv, c.dk}));
    s.v_src.push_back(torch::randn({s.lens[i], c.hkv, c.dv}));
    auto pos = torch::arange(s.lens[i], torch::kLong);
    auto slots =
        s.block_tables[i].to(torch::kLong).index_select(0, pos.div(c.block_size, "floor")) *
            c.block_size +
        pos.remainder(c.block_size);
    paged_kv_append(s.k_src[i], s.v_src[i], slots, s.k_cache, s.v_cache, s.k_scale, s.v_scale);
  }
  s.q = torch::randn({starts.back(), c.hq, c.dk});
  return s;
}

// e4m3 code -> value, written from the format's definition (independent of kv_format.h).
torch::Tensor e4m3_lut() {
  std::vector<float> v(256);
  for (int c = 0; c < 256; ++c) {
    const int e = (c >> 3) & 15, m = c & 7;
    double x = e == 0 ? std::ldexp(m, -9) : std::ldexp(8 + m, e - 10);
    if (e == 15 && m == 7) x = std::nan("");
    v[c] = static_cast<float>((c & 0x80) ? -x : x);
  }
  return torch::tensor(v);
}

// Pages of sequence i gathered into contiguous [len, hkv, d] float64, dequantised with torch ops.
torch::Tensor gather(const Scenario& s, int i, const torch::Tensor& cache,
                     const torch::Tensor& scale) {
  const int bs = s.c.block_size;
  auto pos = torch::arange(s.lens[i], torch::kLong);
  auto rows = s.block_tables[i].to(torch::kLong).index_select(0, pos.div(bs, "floor")) * bs +
              pos.remainder(bs);
  auto flat = cache.reshape({-1, cache.size(2), cache.size(3)}).index_select(0, rows);
  torch::Tensor x;
  if (flat.scalar_type() == torch::kByte) {
    x = e4m3_lut().index_select(0, flat.flatten().to(torch::kLong)).view(flat.sizes());
  } else {
    x = flat.to(torch::kFloat);
  }
  if (scale.defined()) {
    x = x * scale.reshape({-1, scale.size(2)}).index_select(0, rows).unsqueeze(-1);
  }
  return x.to(torch::kDouble);
}

// Independent attention of sequence i's queries over given contiguous K/V [len, hkv, d].
std::pair<torch::Tensor, torch::Tensor> torch_attention(const Scenario& s, int i,
                                                        const torch::Tensor& k,
                                                        const torch::Tensor& v, double scale,
                                                        double softcap = 0) {
  const auto& c = s.c;
  const int q0 = s.q_starts[i].item<int>(), ql = s.q_lens[i], len = s.lens[i];
  auto q = s.q.index({Slice(q0, q0 + ql)}).to(torch::kDouble);  // [ql, hq, dk]
  const int group = c.hq / c.hkv;
  auto kk = k.repeat_interleave(group, 1);
  auto vv = v.repeat_interleave(group, 1);
  auto scores = torch::einsum("qhd,khd->hqk", {q, kk}) * scale;  // [hq, ql, len]
  if (softcap > 0) scores = torch::tanh(scores / softcap) * softcap;
  auto t = torch::arange(len - ql, len, torch::kLong).unsqueeze(1);
  auto p = torch::arange(len, torch::kLong).unsqueeze(0);
  auto mask = p <= t;
  if (c.window > 0) mask = mask & (t - p < c.window);
  if (c.chunk > 0) mask = mask & (p.div(c.chunk, "floor") == t.div(c.chunk, "floor"));
  scores = scores.masked_fill(mask.logical_not(), -std::numeric_limits<double>::infinity());
  auto lse = torch::logsumexp(scores, -1);  // [hq, ql]
  auto out = torch::einsum("hqk,khd->qhd", {torch::softmax(scores, -1), vv});
  return {out, lse.transpose(0, 1)};
}

void expect_close(const torch::Tensor& got, const torch::Tensor& want, double tol,
                  const std::string& what) {
  auto g = got.to(torch::kDouble), w = want.to(torch::kDouble);
  ASSERT_EQ(g.sizes(), w.sizes()) << what;
  if (g.numel() == 0) return;
  EXPECT_TRUE(torch::allclose(g, w, tol, tol))
      << what << ": max abs error " << (g - w).abs().max().item<double>();
}

// Runs fast CPU and reference on the scenario and checks both against libtorch.
void check_scenario(const Case& c, double tol_vs_torch, int kv_splits = 0) {
  SCOPED_TRACE(describe(c));
  Scenario s = make_scenario(c);
  PagedAttentionOptions o;
  o.scale = 1.0 / std::sqrt(static_cast<double>(c.dk));
  o.window = c.window;
  o.chunk = c.chunk;
  o.kv_splits = kv_splits;
  o.softcap = c.softcap;
  auto [out, lse] = paged_attention(s.q, s.k_cache, s.v_cache, s.block_tables, s.seq_lens,
                                    s.q_starts, o, s.k_scale, s.v_scale);
  o.reference = true;
  auto [out_ref, lse_ref] = paged_attention(s.q, s.k_cache, s.v_cache, s.block_tables, s.seq_lens,
                                            s.q_starts, o, s.k_scale, s.v_scale);
  expect_close(out, out_ref, 1e-4, "fast out vs reference");
  expect_close(lse, lse_ref, 1e-4, "fast lse vs reference");
  for (int i = 0; i < c.num_seqs; ++i) {
    auto k = gather(s, i, s.k_cache, s.k_scale);
    auto v = gather(s, i, s.v_cache, s.v_scale);
    auto [o_t, l_t] = torch_attention(s, i, k, v, o.scale, c.softcap);
    const int q0 = s.q_starts[i].item<int>();
    auto rows = Slice(q0, q0 + s.q_lens[i]);
    expect_close(out_ref.index({rows}), o_t, tol_vs_torch, "reference out vs libtorch");
    expect_close(lse_ref.index({rows}), l_t, tol_vs_torch, "reference lse vs libtorch");
    expect_close(out.index({rows}), o_t, tol_vs_torch, "fast out vs libtorch");
  }
}

TEST(PagedAttention, SweepMatchesReferenceAndLibtorch) {
  struct Heads {
    int hq, hkv, dk, dv;
  };
  const Heads heads[] = {
      {1, 1, 8, 8}, {6, 2, 24, 24}, {8, 1, 40, 40}, {4, 2, 32, 24}, {5, 1, 72, 56}};
  const std::pair<int, int> masks[] = {{0, 0}, {7, 0}, {0, 5}, {11, 8}};
  uint64_t seed = 1;
  for (int bs : {1, 3, 16}) {
    for (int seqs : {1, 3, 7}) {
      for (QMode mode : {QMode::kDecode, QMode::kExtend, QMode::kPrefill}) {
        for (const auto& h : heads) {
          const auto& mk = masks[seed % 4];
          Case c;
          c.num_seqs = seqs;
          c.block_size = bs;
          c.hq = h.hq;
          c.hkv = h.hkv;
          c.dk = h.dk;
          c.dv = h.dv;
          c.mode = mode;
          c.window = mk.first;
          c.chunk = mk.second;
          c.seed = seed++;
          check_scenario(c, 1e-4);
        }
      }
    }
  }
}

// Soft-capped scores (softcap * tanh(score / softcap), Gemma 2) with every mask, key splits and
// an int8 cache: fast CPU, reference and libtorch agree; the cap is small enough to matter.
TEST(PagedAttention, SoftCapMatchesReferenceAndLibtorch) {
  uint64_t seed = 400;
  for (double cap : {0.3, 2.0}) {
    for (auto [window, chunk] : std::vector<std::pair<int, int>>{{0, 0}, {7, 0}, {0, 5}}) {
      for (QMode mode : {QMode::kDecode, QMode::kExtend, QMode::kPrefill}) {
        Case c;
        c.num_seqs = 3;
        c.block_size = 4;
        c.hq = 6;
        c.hkv = 2;
        c.dk = c.dv = 16;
        c.mode = mode;
        c.window = window;
        c.chunk = chunk;
        c.softcap = cap;
        c.seed = seed++;
        check_scenario(c, 1e-4);
        check_scenario(c, 1e-4, 3);
      }
    }
  }
  Case c;
  c.softcap = 0.5;
  c.cache_dtype = torch::kChar;
  c.seed = seed;
  check_scenario(c, 1e-4);
  // The cap changes the result (the check above is not vacuous).
  Scenario s = make_scenario(Case{});
  PagedAttentionOptions o;
  o.scale = 1.0;
  auto [plain, l0] =
      paged_attention(s.q, s.k_cache, s.v_cache, s.block_tables, s.seq_lens, s.q_starts, o);
  o.softcap = 0.3;
  auto [capped, l1] =
      paged_attention(s.q, s.k_cache, s.v_cache, s.block_tables, s.seq_lens, s.q_starts, o);
  EXPECT_GT((plain - capped).abs().max().item<float>(), 1e-2);
  o.softcap = -1;
  EXPECT_THROW(
      paged_attention(s.q, s.k_cache, s.v_cache, s.block_tables, s.seq_lens, s.q_starts, o), Error);
}

TEST(PagedAttention, EveryMaskOnLongSequences) {
  for (auto [window, chunk] :
       std::vector<std::pair<int, int>>{{0, 0}, {1, 0}, {33, 0}, {0, 1}, {0, 64}, {50, 20}}) {
    Case c;
    c.num_seqs = 5;
    c.block_size = 16;
    c.hq = 8;
    c.hkv = 2;
    c.dk = c.dv = 64;
    c.max_len = 300;
    c.window = window;
    c.chunk = chunk;
    c.mode = QMode::kExtend;
    c.seed = 100 + window + chunk;
    check_scenario(c, 1e-4);
  }
}

// Keys split into ranges computed separately and merged by LSE (forced, and automatic for one
// long sequence with a single kv head) give the same result; splits may hold no visible key.
TEST(PagedAttention, KeySplitsMergeToTheSameResult) {
  for (int splits : {2, 3, 7}) {
    for (QMode mode : {QMode::kDecode, QMode::kExtend}) {
      Case c;
      c.num_seqs = 3;
      c.block_size = 16;
      c.hq = 4;
      c.hkv = 2;
      c.dk = c.dv = 32;
      c.max_len = 400;
      c.mode = mode;
      c.window = splits == 3 ? 50 : 0;
      c.chunk = splits == 7 ? 64 : 0;
      c.seed = 200 + splits;
      check_scenario(c, 1e-4, splits);
    }
  }
  Case c;
  c.num_seqs = 1;
  c.hq = 8;
  c.hkv = 1;
  c.dk = c.dv = 64;
  c.max_len = 3000;
  c.mode = QMode::kDecode;
  c.seed = 300;
  check_scenario(c, 1e-4, 0);
}

TEST(PagedAttention, HeadDim128AndInterleavedPages) {
  Case c;
  c.num_seqs = 2;
  c.block_size = 16;
  c.hq = 4;
  c.hkv = 4;
  c.dk = c.dv = 128;
  c.max_len = 100;
  c.interleaved = true;
  check_scenario(c, 1e-4);
}

TEST(PagedAttention, EveryPageFormat) {
  // Fast and reference read the same decoded values, so they agree to fp32 accuracy for every
  // format; libtorch sees the pages decoded with torch ops (and an independent e4m3 table).
  for (auto dt : {torch::kHalf, torch::kBFloat16, torch::kChar, torch::kByte}) {
    for (int bs : {1, 3, 16}) {
      Case c;
      c.num_seqs = 3;
      c.block_size = bs;
      c.hq = 6;
      c.hkv = 3;
      c.dk = c.dv = 40;
      c.cache_dtype = dt;
      c.mode = QMode::kExtend;
      c.window = bs == 3 ? 9 : 0;
      c.seed = 7 + bs;
      check_scenario(c, 1e-4);
    }
  }
}

// Issue 3, acceptance 5: attention over int8 / fp8 pages stays within a stated tolerance of fp32
// attention over the original K/V (unit-normal K, V, q; scale 1/sqrt(d)).
//   int8: max |out - out_fp32| <= 0.03      fp8 e4m3: <= 0.2
// (e4m3 keeps 3 mantissa bits: a lone visible key passes its V through with up to 6.25% error.)
TEST(PagedAttention, QuantisedCacheWithinToleranceOfFp32) {
  for (auto [dt, tol] : std::vector<std::pair<torch::ScalarType, double>>{{torch::kChar, 0.03},
                                                                          {torch::kByte, 0.2}}) {
    Case c;
    c.num_seqs = 5;
    c.block_size = 16;
    c.hq = 8;
    c.hkv = 2;
    c.dk = c.dv = 64;
    c.max_len = 200;
    c.cache_dtype = dt;
    c.mode = QMode::kExtend;
    Scenario s = make_scenario(c);
    PagedAttentionOptions o;
    o.scale = 0.125;
    auto [out, lse] = paged_attention(s.q, s.k_cache, s.v_cache, s.block_tables, s.seq_lens,
                                      s.q_starts, o, s.k_scale, s.v_scale);
    double worst = 0.0;
    for (int i = 0; i < c.num_seqs; ++i) {
      auto [o_t, l_t] = torch_attention(s, i, s.k_src[i].to(torch::kDouble),
                                        s.v_src[i].to(torch::kDouble), o.scale);
      const int q0 = s.q_starts[i].item<int>();
      auto rows = Slice(q0, q0 + s.q_lens[i]);
      worst =
          std::max(worst, (out.index({rows}).to(torch::kDouble) - o_t).abs().max().item<double>());
    }
    EXPECT_LE(worst, tol) << c10::toString(dt);
    EXPECT_GT(worst, 0.0) << "quantisation should not be lossless";
    std::printf("[ quantised attention ] %s max abs error vs fp32: %.4g (tolerance %.2g)\n",
                c10::toString(dt), worst, tol);
  }
}

TEST(PagedAttention, DecodeWrapperAndHalfQueries) {
  Case c;
  c.num_seqs = 7;
  c.block_size = 3;
  c.mode = QMode::kDecode;
  Scenario s = make_scenario(c);
  PagedAttentionOptions o;
  o.scale = 0.3;
  auto [a, la] =
      paged_attention(s.q, s.k_cache, s.v_cache, s.block_tables, s.seq_lens, s.q_starts, o);
  auto [b, lb] = paged_decode(s.q, s.k_cache, s.v_cache, s.block_tables, s.seq_lens, o);
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_TRUE(torch::equal(la, lb));
  // Non-contiguous q (every other head of a wider tensor) and a bf16 q.
  auto wide = torch::zeros({s.q.size(0), 2 * c.hq, c.dk});
  wide.index_put_({Slice(), Slice(0, torch::indexing::None, 2)}, s.q);
  auto [d, ld] = paged_decode(wide.index({Slice(), Slice(0, torch::indexing::None, 2)}), s.k_cache,
                              s.v_cache, s.block_tables, s.seq_lens, o);
  EXPECT_TRUE(torch::allclose(d, a, 1e-6, 1e-6));
  auto [h, lh] =
      paged_decode(s.q.to(torch::kBFloat16), s.k_cache, s.v_cache, s.block_tables, s.seq_lens, o);
  EXPECT_EQ(h.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::allclose(h.to(torch::kFloat), a, 3e-2, 3e-2));
}

TEST(PagedAttention, EmptyBatchAndZeroQueries) {
  auto k = torch::zeros({2, 4, 1, 8});
  PagedAttentionOptions o;
  auto [out, lse] =
      paged_attention(torch::zeros({0, 2, 8}), k, k, torch::zeros({0, 1}, torch::kInt),
                      torch::zeros({0}, torch::kInt), torch::zeros({1}, torch::kInt), o);
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{0, 2, 8}));
  // A sequence with KV but no new queries contributes nothing.
  auto bt = torch::tensor({1}, torch::kInt).view({1, 1});
  auto [o2, l2] =
      paged_attention(torch::zeros({0, 2, 8}), k, k, bt, torch::tensor({3}, torch::kInt),
                      torch::tensor({0, 0}, torch::kInt), o);
  EXPECT_EQ(o2.size(0), 0);
}

TEST(PagedAttention, BadInputsNameTheArgument) {
  Case c;
  c.num_seqs = 2;
  c.block_size = 4;
  Scenario s = make_scenario(c);
  PagedAttentionOptions o;
  auto run = [&](const torch::Tensor& q, const torch::Tensor& bt, const torch::Tensor& lens,
                 const torch::Tensor& qs) {
    return paged_attention(q, s.k_cache, s.v_cache, bt, lens, qs, o);
  };
  auto expect_error = [](auto&& fn, const std::string& needle) {
    try {
      fn();
      ADD_FAILURE() << "no error, expected one mentioning " << needle;
    } catch (const tessera::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  auto bad_bt = s.block_tables.clone();
  bad_bt[0][0] = 1000;
  expect_error([&] { run(s.q, bad_bt, s.seq_lens, s.q_starts); }, "block_tables[0][0]=1000");
  bad_bt[0][0] = -1;
  expect_error([&] { run(s.q, bad_bt, s.seq_lens, s.q_starts); }, "out of range");
  expect_error(
      [&] {
        run(s.q.index({Slice(), Slice(0, 3)}), s.block_tables, s.seq_lens, s.q_starts);
      },
      "num_q_heads=3");
  expect_error(
      [&] {
        run(s.q.index({Slice(), Slice(), Slice(0, 5)}), s.block_tables, s.seq_lens, s.q_starts);
      },
      "head_dim=5");
  expect_error([&] { run(s.q, s.block_tables.to(torch::kLong), s.seq_lens, s.q_starts); },
               "block_tables must be int32");
  auto long_lens = s.seq_lens.clone();
  long_lens[0] = 10000;
  expect_error([&] { run(s.q, s.block_tables, long_lens, s.q_starts); }, "seq_lens[0]=10000");
  auto bad_qs = s.q_starts.clone();
  bad_qs[2] = bad_qs[2].item<int>() + 1;
  expect_error([&] { run(s.q, s.block_tables, s.seq_lens, bad_qs); }, "q_starts[-1] must equal");
  auto short_lens = s.seq_lens.clone();
  short_lens[1] = 0;
  expect_error([&] { run(s.q, s.block_tables, short_lens, s.q_starts); }, "seq_lens[1]=0");
  expect_error([&] { run(s.q.to(torch::kDouble), s.block_tables, s.seq_lens, s.q_starts); },
               "q must be float32");
  auto i8 = s.k_cache.to(torch::kChar);
  expect_error([&] { paged_attention(s.q, i8, i8, s.block_tables, s.seq_lens, s.q_starts, o); },
               "k_scale is required");
  expect_error(
      [&] {
        paged_attention(s.q, s.k_cache, s.v_cache.to(torch::kHalf), s.block_tables, s.seq_lens,
                        s.q_starts, o);
      },
      "differs from v_cache dtype");
  o.window = -1;
  expect_error([&] { run(s.q, s.block_tables, s.seq_lens, s.q_starts); }, "window must be >= 0");
  o.window = 0;
  // Append: a slot beyond the cache, a key of the wrong shape.
  auto key = torch::randn({2, c.hkv, c.dk});
  expect_error(
      [&] {
        paged_kv_append(key, key, torch::tensor({0, 100000}), s.k_cache, s.v_cache);
      },
      "slot_mapping[1]=100000");
  expect_error(
      [&] {
        paged_kv_append(key.index({Slice(), Slice(), Slice(0, 3)}), key, torch::tensor({0, 1}),
                        s.k_cache, s.v_cache);
      },
      "key must be [2, 2, 24]");
  expect_error([&] { quantize_kv(key, "int4"); }, "format must be");
}

// Appending: fast CPU and reference write bit-identical pages for every format; fp16 / bf16
// pages equal torch's own conversions; int8 pages follow the convention computed with torch ops.
TEST(PagedKvAppend, FastEqualsReferenceAndTorchConversions) {
  for (auto dt : {torch::kFloat, torch::kHalf, torch::kBFloat16, torch::kChar, torch::kByte}) {
    SCOPED_TRACE(c10::toString(dt));
    const int nb = 6, bs = 3, h = 2, d = 40, tokens = 11;
    auto k_src = torch::randn({tokens, h, 2 * d}).index({Slice(), Slice(), Slice(0, d)}) * 3;
    auto v_src = torch::randn({tokens, h, d});
    k_src.index_put_({0, 0, 5}, 0.0f);
    v_src.index_put_({1}, 0.0f);  // an all-zero row: scale 1
    std::vector<int64_t> slots = {3, 4, 5, -1, 17, 9, 10, 11, 6, 7, 8};
    auto slot_t = torch::tensor(slots);
    auto make = [&] {
      auto kc = torch::zeros({nb, bs, h, d}, torch::dtype(dt));
      auto vc = torch::zeros({nb, bs, h, d}, torch::dtype(dt));
      torch::Tensor ks, vs;
      if (quantised(dt)) {
        ks = torch::zeros({nb, bs, h});
        vs = torch::zeros({nb, bs, h});
      }
      return std::array<torch::Tensor, 4>{kc, vc, ks, vs};
    };
    auto fast = make(), ref = make();
    paged_kv_append(k_src, v_src, slot_t, fast[0], fast[1], fast[2], fast[3]);
    paged_kv_append(k_src, v_src, slot_t.to(torch::kInt), ref[0], ref[1], ref[2], ref[3], true);
    for (int i = 0; i < 4; ++i) {
      if (fast[i].defined()) EXPECT_TRUE(torch::equal(fast[i], ref[i])) << "tensor " << i;
    }
    // Expected pages from torch.
    auto flat_k = fast[0].view({nb * bs, h, d});
    for (int t = 0; t < tokens; ++t) {
      if (slots[t] < 0) continue;
      auto x = k_src[t];
      auto got = flat_k[slots[t]];
      if (dt == torch::kFloat || dt == torch::kHalf || dt == torch::kBFloat16) {
        EXPECT_TRUE(torch::equal(got, x.to(dt))) << "token " << t;
      } else if (dt == torch::kChar) {
        auto amax = std::get<0>(x.abs().max(-1, true));
        auto scale = torch::where(amax > 0, amax / 127.0f, torch::ones_like(amax));
        auto want = torch::round(x / scale).clamp(-127, 127).to(torch::kChar);
        EXPECT_TRUE(torch::equal(got, want)) << "token " << t;
        EXPECT_TRUE(torch::equal(fast[2].view({nb * bs, h})[slots[t]], scale.squeeze(-1)));
      }
    }
    // The never-written slots (block 0 among them) stay zero.
    EXPECT_EQ(fast[0].view({nb * bs, h, d})[0].abs().sum().item<double>(), 0.0);
  }
}

// Issue 3, acceptance 5: int8 round trip per-element error <= half a quantisation step (scale / 2);
// fp8 round trip within e4m3's relative half step (2^-4 of |x| for normals, 2^-10 * scale below).
TEST(KvQuant, RoundTripErrorBounds) {
  torch::manual_seed(3);
  auto x = torch::randn({37, 5, 72}) * torch::rand({37, 5, 1}) * 10;
  x.index_put_({0, 0}, 0.0f);
  {
    auto [q, scale] = quantize_kv(x, "int8");
    auto back = dequantize_kv(q, scale);
    auto err = (back - x).abs();
    EXPECT_TRUE((err <= scale.unsqueeze(-1) * (0.5 + 1e-6)).all().item<bool>())
        << "max err / scale " << (err / scale.unsqueeze(-1)).max().item<double>();
    EXPECT_EQ(q.abs().max().item<int>(), 127);
    EXPECT_EQ(scale[0][0].item<float>(), 1.0f);
  }
  {
    auto [q, scale] = quantize_kv(x, "fp8_e4m3");
    auto back = dequantize_kv(q, scale);
    auto y = x / scale.unsqueeze(-1);  // the value that was encoded
    auto err = (back / scale.unsqueeze(-1) - y).abs();
    auto bound = torch::maximum(y.abs() * 0.0625, torch::full_like(y, std::ldexp(1.0, -10)));
    EXPECT_TRUE((err <= bound * (1 + 1e-6)).all().item<bool>());
    EXPECT_LE(y.abs().max().item<float>(), 448.0f * (1 + 1e-6));
  }
}

TEST(KvQuant, FastEqualsReferenceAndTorchFormula) {
  torch::manual_seed(4);
  auto x = torch::randn({29, 3, 24}) * 5;
  for (const char* fmt : {"int8", "fp8_e4m3"}) {
    auto [q, s] = quantize_kv(x, fmt);
    auto [qr, sr] = quantize_kv(x, fmt, true);
    EXPECT_TRUE(torch::equal(q, qr)) << fmt;
    EXPECT_TRUE(torch::equal(s, sr)) << fmt;
    EXPECT_TRUE(torch::equal(dequantize_kv(q, s), dequantize_kv(q, s, true))) << fmt;
  }
  // fp8 decode against the independent table.
  auto [q, s] = quantize_kv(x, "fp8_e4m3");
  auto want =
      e4m3_lut().index_select(0, q.flatten().to(torch::kLong)).view(q.sizes()) * s.unsqueeze(-1);
  EXPECT_TRUE(torch::equal(dequantize_kv(q, s), want));
  // bf16 input is accepted and quantised like its float32 value.
  auto xb = x.to(torch::kBFloat16);
  EXPECT_TRUE(torch::equal(std::get<0>(quantize_kv(xb, "int8")),
                           std::get<0>(quantize_kv(xb.to(torch::kFloat), "int8"))));
}

// The bit-twiddling e4m3 / fp16 / bf16 encoders against exhaustive search / torch on every
// rounding boundary and on random bit patterns.
TEST(KvQuant, ScalarEncodersMatchIndependentOnes) {
  std::vector<float> xs = {0.0f,
                           -0.0f,
                           448.0f,
                           449.0f,
                           464.0f,
                           1e9f,
                           -1e9f,
                           std::numeric_limits<float>::infinity(),
                           std::ldexp(1.0f, -10),
                           std::ldexp(3.0f, -11),
                           std::ldexp(1.0f, -12)};
  for (int c = 0; c < 0x7e; ++c) {  // every midpoint between neighbouring codes, and around it
    const float a = e4m3_to_float(static_cast<uint8_t>(c));
    const float b = e4m3_to_float(static_cast<uint8_t>(c + 1));
    const float mid = 0.5f * (a + b);
    for (float y : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f), a, b}) {
      xs.push_back(y);
      xs.push_back(-y);
    }
  }
  std::mt19937 rng(5);
  for (int i = 0; i < 20000; ++i) {
    const uint32_t bits = rng();
    float f;
    std::memcpy(&f, &bits, 4);
    if (std::isfinite(f))
      xs.push_back(std::ldexp(f, -std::ilogb(f == 0 ? 1.0f : f) + (i % 24) - 12));
  }
  for (float f : xs) {
    ASSERT_EQ(float_to_e4m3(f), float_to_e4m3_ref(f)) << f;
  }
  EXPECT_EQ(float_to_e4m3(std::nanf("")), 0x7f);
  auto t = torch::tensor(xs);
  auto half = t.to(torch::kHalf), bf = t.to(torch::kBFloat16);
  for (size_t i = 0; i < xs.size(); ++i) {
    const uint16_t h = kv_float_to_half(xs[i]);
    const uint16_t b = kv_float_to_bf16(xs[i]);
    ASSERT_EQ(h, half[i].item<at::Half>().x) << xs[i];
    ASSERT_EQ(b, bf[i].item<at::BFloat16>().x) << xs[i];
    ASSERT_EQ(kv_half_to_float(h), half[i].item<float>());
  }
}

// LSE merge: the fast CPU kernel against the reference, -inf parts guarded, and merging attention
// over disjoint key subsets equals attention over all keys.
TEST(LseMerge, FastMatchesReferenceAndSplitAttention) {
  torch::manual_seed(6);
  auto outs = torch::randn({3, 5, 7, 24});
  auto lses = torch::randn({3, 5, 7}) * 4;
  lses.index_put_({0, 1}, -std::numeric_limits<float>::infinity());
  lses.index_put_({Slice(), 2, 3}, -std::numeric_limits<float>::infinity());  // all parts empty
  outs.index_put_({0, 1}, std::nanf(""));  // an empty part's output must not leak
  auto [o, l] = merge_attention_states(outs, lses);
  auto [o_ref, l_ref] = merge_attention_states(outs, lses, true);
  EXPECT_TRUE(torch::allclose(o, o_ref, 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(l, l_ref, 1e-5, 1e-5));  // equal infinities count as close
  EXPECT_FALSE(o.isnan().any().item<bool>());
  EXPECT_EQ(o[2][3].abs().sum().item<float>(), 0.0f);
  EXPECT_TRUE(std::isinf(l[2][3].item<float>()));

  // Split attention: keys of a 50-token sequence dealt round-robin to 3 "ranks".
  const int B = 2, T = 50, H = 4, D = 32;
  auto q = torch::randn({B, T, H, D}), k = torch::randn({B, T, 2, D}),
       v = torch::randn({B, T, 2, D});
  auto pos = torch::arange(T, torch::kLong).expand({B, T}).contiguous();
  auto [full, full_lse] = attention(q, k, v, pos, pos, 0.2, 0);
  std::vector<torch::Tensor> po, pl;
  for (int r = 0; r < 3; ++r) {
    auto kp = torch::where(pos.remainder(3) == r, pos, torch::full_like(pos, -1));
    auto [pr, plr] = attention(q, k, v, pos, kp, 0.2, 0);
    po.push_back(pr.permute({0, 2, 1, 3}));  // [B, H, T, D] to line up with lse [B, H, T]
    pl.push_back(plr);
  }
  auto [m, ml] = merge_attention_states(torch::stack(po), torch::stack(pl));
  EXPECT_TRUE(torch::allclose(m.permute({0, 2, 1, 3}), full, 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(ml, full_lse, 1e-5, 1e-5));
}

}  // namespace
}  // namespace tessera::kernels

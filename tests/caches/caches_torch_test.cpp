// Cache storage with torch (one file: each torch translation unit costs compile time):
// paged KV tensors laid out per the kernel convention with sizes equal to the spec formulas,
// attention over a paged cache identical with and without prefix caching (acceptance 4),
// copy-on-write data copies, and the contiguous cache's masks and cross-attention slots.
#include <gtest/gtest.h>
#include <torch/types.h>

#include <random>

#include "caches/contiguous_kv_cache.h"
#include "caches/kv_cache_manager.h"
#include "caches/memory_plan.h"
#include "caches/paged_kv_storage.h"
#include "kernels/ops/attention_ops.h"

namespace tessera::caches {
namespace {

SpecPtr full(int64_t bs, int64_t heads, int64_t dim, DType dt = DType::kF32,
             KVQuant q = KVQuant::kNone) {
  return std::make_shared<FullAttentionSpec>(AttentionShape{bs, heads, dim, dim, dt, q});
}
SpecPtr sliding(int64_t bs, int64_t heads, int64_t dim, int64_t w, DType dt = DType::kF32,
                KVQuant q = KVQuant::kNone) {
  return std::make_shared<SlidingWindowSpec>(AttentionShape{bs, heads, dim, dim, dt, q}, w);
}

TEST(PagedKVStorage, LayoutAndBytesFollowTheSpecs) {
  auto f = full(16, 2, 64, DType::kF16);
  auto w = sliding(16, 2, 64, 128, DType::kF16);
  auto m2 = MambaSpec::mamba2(64, 1, 4, 16, 16, 4, DType::kF16, DType::kF32);
  auto enc = std::make_shared<EncoderOnlySpec>(AttentionShape{16, 2, 64, 64, DType::kF16});
  const CacheLimits limits{1024, 256, 4, 0};
  auto plan = plan_memory({f, w, f, w, m2, enc, f}, limits, 8 << 20);
  PagedKVStorage st(plan, torch::kCPU);
  EXPECT_EQ(st.bytes(), plan.total_bytes());
  // Layers 0 (full) and 1 (sliding) share storage slot 0: their block ids never collide.
  EXPECT_EQ(st.kv(0).k.data_ptr(), st.kv(1).k.data_ptr());
  EXPECT_NE(st.kv(0).k.data_ptr(), st.kv(2).k.data_ptr());
  EXPECT_EQ(plan.num_slots, 2);       // groups split to 2 layers: full {0, 2}, {6}; sliding {1, 3}
  EXPECT_EQ(plan.groups.size(), 4u);  // + the Mamba2 group; encoder-only holds nothing
  const auto& kv = st.kv(6);
  EXPECT_EQ(kv.k.sizes(), (std::vector<int64_t>{plan.num_blocks, 16, 2, 64}));
  EXPECT_EQ(kv.k.scalar_type(), torch::kHalf);
  EXPECT_FALSE(kv.k_scale.defined());
  EXPECT_FALSE(st.has_kv(4));
  EXPECT_FALSE(st.has_kv(5));
  ASSERT_EQ(st.state(4).size(), 2u);
  EXPECT_EQ(st.state(4)[1].sizes(), (std::vector<int64_t>{limits.batch_size + 1, 4, 16, 16}));
  EXPECT_EQ(st.state(4)[0].sizes(), (std::vector<int64_t>{limits.batch_size + 1, 3, 64 + 2 * 16}));

  for (KVQuant q : {KVQuant::kInt8, KVQuant::kFp8E4M3}) {
    auto fq = full(8, 3, 40, DType::kBF16, q);
    auto qplan = plan_memory({fq, fq}, limits, 4 << 20);
    PagedKVStorage qs(qplan, torch::kCPU);
    EXPECT_EQ(qs.bytes(), qplan.total_bytes());  // scale bytes included in page_size_bytes
    const auto& qkv = qs.kv(1);
    EXPECT_EQ(qkv.k.scalar_type(), q == KVQuant::kInt8 ? torch::kChar : torch::kByte);
    EXPECT_EQ(qkv.v.sizes(), (std::vector<int64_t>{qplan.num_blocks, 8, 3, 40}));
    EXPECT_EQ(qkv.k_scale.sizes(), (std::vector<int64_t>{qplan.num_blocks, 8, 3}));
    EXPECT_EQ(qkv.v_scale.scalar_type(), torch::kFloat);
    EXPECT_THROW(qs.write(0, torch::zeros({1, 3, 40}), torch::zeros({1, 3, 40}),
                          torch::zeros({1}, torch::kLong)),
                 Error);  // quantising writes belong to kernels/quant
  }
  // Different page layouts cannot share slots: every layer gets its own.
  auto small = full(16, 1, 32, DType::kF16);
  auto mixed = plan_memory({f, small, w}, limits, 8 << 20);
  EXPECT_EQ(mixed.num_slots, 3);
  PagedKVStorage ms(mixed, torch::kCPU);
  EXPECT_EQ(ms.bytes(), mixed.total_bytes());
}

// A tiny "model" for the KV of a token: depends on the token and its position.
struct KVGen {
  torch::Tensor emb_k, emb_v;  // [vocab, heads, dim]
  std::pair<torch::Tensor, torch::Tensor> operator()(const std::vector<int32_t>& toks,
                                                     int64_t first, int64_t n) const {
    auto ids = torch::tensor(std::vector<int64_t>(toks.begin() + first, toks.begin() + first + n));
    auto pos = torch::arange(first, first + n, torch::kFloat).view({n, 1, 1});
    return {emb_k.index_select(0, ids) * (1 + 0.01 * pos),
            emb_v.index_select(0, ids) + 0.001 * pos};
  }
};

struct PrefixRun {
  torch::Tensor out_full, out_sliding;
  int64_t hit = 0;
  int64_t tokens_written = 0;
};

// Two layers (full attention and a sliding window of `window`) in one pool; sequence A, then B
// sharing A's prefix. Returns attention of B's last query tokens over B's gathered cache.
PrefixRun run_prefix(bool caching, const std::vector<int32_t>& a, const std::vector<int32_t>& b,
                     const KVGen& gen, const torch::Tensor& q, int64_t window) {
  const int64_t bs = 16, heads = 2, dim = 32;
  auto plan = plan_memory({full(bs, heads, dim), sliding(bs, heads, dim, window)},
                          {2048, 128, 4, 0}, 4 << 20);
  KVCacheManager m(plan.manager_config(caching));
  PagedKVStorage st(plan, torch::kCPU);
  PrefixRun r;
  auto compute = [&](SeqId s, const std::vector<int32_t>& toks) {
    while (m.num_computed(s) < static_cast<int64_t>(toks.size())) {
      const int64_t c = m.num_computed(s);
      const int64_t n = std::min<int64_t>(128, toks.size() - c);
      EXPECT_TRUE(m.allocate(s, n));
      auto [k, v] = gen(toks, c, n);
      for (int64_t layer = 0; layer < 2; ++layer) {
        st.write(layer, k, v, PagedKVStorage::slot_mapping(m.block_table(s, layer), bs, c, n));
      }
      m.commit(s, n);
      r.tokens_written += n;
    }
  };
  m.add_sequence(1, a);
  compute(1, a);
  const int64_t before = r.tokens_written;
  r.hit = m.add_sequence(2, b);
  if (r.hit > 0) {  // the hit blocks are A's blocks, shared
    auto ta = m.block_table(1, 0), tb = m.block_table(2, 0);
    EXPECT_TRUE(std::equal(tb.begin(), tb.begin() + r.hit / bs, ta.begin()));
  }
  compute(2, b);
  EXPECT_EQ(r.tokens_written - before, static_cast<int64_t>(b.size()) - r.hit);
  m.check_invariants();
  const int64_t len = static_cast<int64_t>(b.size()), t = q.size(1);
  auto q_pos = torch::arange(len - t, len, torch::kLong).unsqueeze(0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(dim));
  for (int64_t layer = 0; layer < 2; ++layer) {
    auto [k, v, k_pos] = st.gather(layer, m.block_table(2, layer), len);
    auto [out, lse] = kernels::attention(q, k.unsqueeze(0), v.unsqueeze(0), q_pos,
                                         k_pos.unsqueeze(0), scale, layer == 0 ? 0 : window);
    (layer == 0 ? r.out_full : r.out_sliding) = out;
  }
  return r;
}

// Acceptance 4: a request sharing a 1,000-token prefix reuses all 62 full blocks, and attention
// over the cache is identical with and without prefix caching (and to attention over K/V
// computed directly for every position).
TEST(PagedPrefixCache, AttentionIdenticalWithAndWithoutPrefixCaching) {
  torch::manual_seed(0);
  const int64_t vocab = 500, heads = 2, dim = 32, window = 100;
  KVGen gen{torch::randn({vocab, heads, dim}), torch::randn({vocab, heads, dim})};
  std::mt19937 rng(3);
  auto rand_tokens = [&](int64_t n) {
    std::vector<int32_t> t(n);
    for (auto& x : t) x = static_cast<int32_t>(rng() % vocab);
    return t;
  };
  auto prefix = rand_tokens(1000);
  auto a = prefix, b = prefix;
  auto sa = rand_tokens(45), sb = rand_tokens(70);
  a.insert(a.end(), sa.begin(), sa.end());
  b.insert(b.end(), sb.begin(), sb.end());
  auto q = torch::randn({1, 9, 2 * heads, dim});  // GQA: 4 query heads over 2 KV heads

  auto cached = run_prefix(true, a, b, gen, q, window);
  auto uncached = run_prefix(false, a, b, gen, q, window);
  EXPECT_EQ(cached.hit, 62 * 16);  // every full block of the 1,000-token prefix
  EXPECT_EQ(uncached.hit, 0);
  EXPECT_TRUE(torch::equal(cached.out_full, uncached.out_full));
  EXPECT_TRUE(torch::equal(cached.out_sliding, uncached.out_sliding));

  // Reference: the same attention over K/V computed for every position of B.
  const int64_t len = static_cast<int64_t>(b.size());
  auto [k, v] = gen(b, 0, len);
  auto q_pos = torch::arange(len - 9, len, torch::kLong).unsqueeze(0);
  auto k_pos = torch::arange(len, torch::kLong).unsqueeze(0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(dim));
  auto [ref_full, l1] =
      kernels::attention(q, k.unsqueeze(0), v.unsqueeze(0), q_pos, k_pos, scale, 0);
  auto [ref_sw, l2] =
      kernels::attention(q, k.unsqueeze(0), v.unsqueeze(0), q_pos, k_pos, scale, window);
  EXPECT_TRUE(torch::equal(cached.out_full, ref_full));
  EXPECT_TRUE(torch::equal(cached.out_sliding, ref_sw));
  EXPECT_FALSE(torch::allclose(ref_full, ref_sw));  // the window matters in this setup
}

TEST(PagedKVStorage, ForkCopiesSharedBlockBeforeWrite) {
  const int64_t bs = 4;
  auto m2 = MambaSpec::mamba1(8, 4, 4, DType::kF32, DType::kF32);
  auto plan = plan_memory({full(bs, 1, 8), m2}, {64, 16, 4, 0}, 1 << 20);
  KVCacheManager m(plan.manager_config(false));
  PagedKVStorage st(plan, torch::kCPU);
  std::vector<int32_t> toks(6, 1);
  m.add_sequence(1, toks);
  ASSERT_TRUE(m.allocate(1, 6));
  auto k = torch::randn({6, 1, 8}), v = torch::randn({6, 1, 8});
  st.write(0, k, v, PagedKVStorage::slot_mapping(m.block_table(1, 0), bs, 0, 6));
  m.commit(1, 6);
  st.state(1)[1][m.block_table(1, 1)[0]].fill_(3.5);  // the parent's SSM state
  std::vector<BlockCopy> copies;
  ASSERT_TRUE(m.fork(1, 2, &copies));
  ASSERT_TRUE(m.allocate(2, 1, &copies));  // position 6 lies in the shared block 1
  ASSERT_EQ(copies.size(), 2u);            // the state slot, then the KV block
  st.copy_blocks(copies);
  auto k2 = torch::randn({1, 1, 8}), v2 = torch::randn({1, 1, 8});
  st.write(0, k2, v2, PagedKVStorage::slot_mapping(m.block_table(2, 0), bs, 6, 1));
  m.commit(2, 1);
  auto [pk, pv, pp] = st.gather(0, m.block_table(1, 0), 6);
  auto [ck, cv, cp] = st.gather(0, m.block_table(2, 0), 7);
  EXPECT_TRUE(torch::equal(pk, k));
  EXPECT_TRUE(torch::equal(ck.narrow(0, 0, 6), k));  // the copy carried the shared tokens
  EXPECT_TRUE(torch::equal(cv.narrow(0, 6, 1), v2));
  const auto child_state = st.state(1)[1][m.block_table(2, 1)[0]];  // [8, 4]: the copy
  EXPECT_EQ(child_state.sizes(), (std::vector<int64_t>{8, 4}));
  EXPECT_TRUE(child_state.eq(3.5).all().item<bool>());
}

ContiguousKVCacheConfig contiguous_config() {
  ContiguousKVCacheConfig c;
  c.num_layers = 2;
  c.batch_size = 3;
  c.max_len = 40;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.max_chunk_tokens = 5;
  c.windows = {0, 6};
  return c;
}

TEST(ContiguousKVCache, MaskMatchesPositionRule) {
  ContiguousKVCache cache(contiguous_config());
  std::mt19937 rng(1);
  std::vector<int64_t> len(3, 0);
  for (int step = 0; step < 6; ++step) {
    const int64_t t = 1 + rng() % 5;
    auto pos = torch::empty({3, t}, torch::kLong);
    for (int b = 0; b < 3; ++b) {
      for (int64_t i = 0; i < t; ++i) pos[b][i] = len[b] + i;
      len[b] += t;
    }
    for (int64_t l = 0; l < 2; ++l) {
      cache.append(l, torch::randn({3, t, 2, 8}), torch::randn({3, t, 2, 8}), pos);
      auto mask = cache.attention_mask(l, pos);
      auto kpos = cache.layer(l).positions;
      const int64_t w = l == 0 ? 0 : 6;
      ASSERT_EQ(mask.sizes(), (std::vector<int64_t>{3, t, cache.config().capacity(l)}));
      for (int b = 0; b < 3; ++b) {
        for (int64_t i = 0; i < t; ++i) {
          const int64_t qp = pos[b][i].item<int64_t>();
          int64_t visible = 0;
          for (int64_t s = 0; s < kpos.size(1); ++s) {
            const int64_t kp = kpos[b][s].item<int64_t>();
            const bool want = kp >= 0 && kp <= qp && (w == 0 || qp - kp < w);
            ASSERT_EQ(mask[b][i][s].item<bool>(), want) << "layer " << l << " slot " << s;
            visible += want;
          }
          EXPECT_EQ(visible, w == 0 ? qp + 1 : std::min<int64_t>(qp + 1, w));
        }
      }
    }
  }
  EXPECT_EQ(cache.occupied(1)[0], std::min<int64_t>(len[0], cache.config().capacity(1)));
}

TEST(ContiguousKVCache, CrossAttentionSlotsForEncoderDecoder) {
  auto c = contiguous_config();
  c.encoder_len = 12;
  ContiguousKVCache cache(c);
  int64_t tensor_bytes = 0;
  for (int64_t l = 0; l < 2; ++l) {
    for (const auto& view : {cache.layer(l), cache.cross(l)}) {
      for (const auto* t : {&view.k, &view.v, &view.positions}) {
        tensor_bytes += t->numel() * t->element_size();
      }
    }
  }
  EXPECT_EQ(c.bytes(), tensor_bytes);
  auto k = torch::randn({3, 7, 2, 8}), v = torch::randn({3, 7, 2, 8});
  cache.set_cross(1, k, v);
  auto x = cache.cross(1);
  EXPECT_TRUE(torch::equal(x.k.narrow(1, 0, 7), k));
  EXPECT_TRUE(torch::equal(x.positions[2].narrow(0, 0, 7), torch::arange(7, torch::kLong)));
  EXPECT_EQ(x.positions[0][7].item<int64_t>(), -1);
  // Cross attention over the stored encoder states equals attention over k / v directly.
  auto q = torch::randn({3, 2, 4, 8});
  auto qp = torch::full({3, 2}, 1000, torch::kLong);  // sees every encoder slot
  auto [o1, l1] = kernels::attention(q, x.k, x.v, qp, x.positions, 0.3, 0);
  auto [o2, l2] =
      kernels::attention(q, k, v, qp, torch::arange(7).expand({3, 7}).contiguous(), 0.3, 0);
  EXPECT_TRUE(torch::allclose(o1, o2, 1e-6, 1e-6));
  EXPECT_THROW(cache.set_cross(0, torch::randn({3, 13, 2, 8}), torch::randn({3, 13, 2, 8})), Error);
  auto plain = contiguous_config();
  plain.encoder_len = -1;
  EXPECT_THROW(plain.validate(), Error);
}

}  // namespace
}  // namespace tessera::caches

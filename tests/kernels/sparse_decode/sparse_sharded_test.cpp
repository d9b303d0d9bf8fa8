// Sparse decode over a KV cache sharded by sequence (run under mpirun with 1, 2 and 4 ranks): each
// rank indexes and selects over the tokens it holds (models::SequenceShardedKVCache's local
// storage, read in place as one page per batch row), attends over them with the sparse kernel, and
// the partial results merge by LSE after one all-gather. With a budget that covers the context the
// result equals dense paged decode of the whole context on one rank (and the sharded cache's own
// dense attention); with a smaller budget it equals attention over the union of what the ranks
// chose. The engine's sequence-sharded attention layer will own this composition.
#include <gtest/gtest.h>
#include <torch/types.h>

#include <cmath>
#include <set>
#include <vector>

#include "common/error.h"
#include "kernels/ops/merge_ops.h"
#include "kernels/ops/paged_attention_ops.h"
#include "kernels/ops/sparse_decode_ops.h"
#include "kernels/sparse_decode/sparse_select.h"
#include "runtime/models/layers/sequence_sharded_kv.h"
#include "sharding/mpi/mpi_communicator.h"

namespace tessera::kernels {
namespace {

using sharding::MpiCommunicator;
using torch::indexing::Slice;

MpiCommunicator& world() {
  static MpiCommunicator comm(MPI_COMM_WORLD);
  return comm;
}

constexpr int64_t kB = 2, kHkv = 2, kGroup = 3, kHq = kHkv * kGroup, kD = 32, kLen = 700,
                  kBlock = 16;

SparseSelectConfig config(int64_t budget) {
  SparseSelectConfig c;
  c.method = SparseMethod::kCluster;
  c.budget = budget;
  c.sinks = 4;
  c.window = 32;
  c.page_tokens = kBlock;
  c.head_dim = kD;
  c.group = kGroup;
  c.chunk_pages = 4;
  return c;
}

// Attention of q [B, Hq, D] over the given positions of k, v [B, L, Hkv, D], in float64.
torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                     const std::vector<std::vector<std::vector<int64_t>>>& pos, double scale) {
  auto out = torch::zeros({kB, kHq, kD}, torch::kDouble);
  for (int64_t b = 0; b < kB; ++b) {
    for (int64_t h = 0; h < kHq; ++h) {
      const auto& p = pos[b][h / kGroup];
      auto idx = torch::tensor(p, torch::kLong);
      auto keys = k[b].index_select(0, idx).select(1, h / kGroup).to(torch::kDouble);
      auto vals = v[b].index_select(0, idx).select(1, h / kGroup).to(torch::kDouble);
      auto w = torch::softmax(keys.matmul(q[b][h].to(torch::kDouble)) * scale, 0);
      out[b][h] = w.matmul(vals);
    }
  }
  return out;
}

TEST(SparseSharded, EachRankSelectsItsOwnTokensAndLseMergeIsExact) {
  auto& comm = world();
  const int rank = comm.rank(), size = comm.size();
  torch::manual_seed(5);  // the same context and query on every rank
  auto k = torch::randn({kB, kLen, kHkv, kD});
  auto v = torch::randn({kB, kLen, kHkv, kD});
  // Some structure for the clusters to find: a topic direction shared by scattered tokens.
  auto topic = torch::randn({kD}) * 2.0;
  auto hot = torch::rand({kB, kLen}) < 0.05;
  k = k + hot.unsqueeze(-1).unsqueeze(-1).to(torch::kFloat) * topic;
  auto q = torch::randn({kB, kHq, kD}) + topic * 0.5;
  const double scale = 1.0 / std::sqrt(static_cast<double>(kD));

  models::SequenceShardedKVConfig cfg;
  cfg.cache.num_layers = 1;
  cfg.cache.batch_size = kB;
  cfg.cache.max_len = kLen;
  cfg.cache.num_kv_heads = kHkv;
  cfg.cache.head_dim = kD;
  cfg.cache.max_chunk_tokens = kLen;
  cfg.cache.windows = {0};
  cfg.block_tokens = kBlock;
  models::SequenceShardedKVCache cache(cfg, &comm);
  cache.append(0, k, v,
               torch::arange(kLen, torch::kLong).unsqueeze(0).expand({kB, kLen}).contiguous());
  const auto local = cache.local_layer(0);
  const int64_t slots = local.k.size(1);

  // Dense paged decode of the whole context on one rank: every rank builds the same pool.
  const int64_t nb = (kLen + kBlock - 1) / kBlock;
  auto pad = [&](const torch::Tensor& x) {
    return torch::cat({x, torch::zeros({kB, nb * kBlock - kLen, kHkv, kD})}, 1);
  };
  auto k_pool = torch::cat(
      {torch::zeros({1, kBlock, kHkv, kD}), pad(k).reshape({kB * nb, kBlock, kHkv, kD})});
  auto v_pool = torch::cat(
      {torch::zeros({1, kBlock, kHkv, kD}), pad(v).reshape({kB * nb, kBlock, kHkv, kD})});
  auto tables = (torch::arange(kB * nb, torch::kInt) + 1).reshape({kB, nb});
  PagedAttentionOptions po;
  po.scale = scale;
  auto [dense, dense_lse] =
      paged_decode(q, k_pool, v_pool, tables, torch::full({kB}, kLen, torch::kInt), po);

  for (int64_t budget : {int64_t{1024}, int64_t{160}}) {
    SCOPED_TRACE("budget " + std::to_string(budget) + ", rank " + std::to_string(rank) + "/" +
                 std::to_string(size));
    const SparseSelectConfig c = config(budget);
    const SparseShard shard = sparse_shard(c, kLen, kBlock, size, rank);
    // The shard's placement is the sharded cache's: local index i holds the predicted position.
    for (int64_t b = 0; b < kB; ++b) {
      for (int64_t i = 0; i < slots; ++i) {
        const int64_t want =
            i < shard.local_tokens ? ((i / kBlock) * size + rank) * kBlock + i % kBlock : -1;
        ASSERT_EQ(local.positions[b][i].item<int64_t>(), want) << "local index " << i;
      }
    }
    // Each row's local storage [slots, Hkv, D] is one page of `slots` tokens, read in place.
    auto local_tables = torch::arange(kB, torch::kInt).reshape({kB, 1});
    PagedKv kv;
    kv.k = local.k.data_ptr();
    kv.v = local.v.data_ptr();
    kv.k_block_stride = local.k.stride(0);
    kv.v_block_stride = local.v.stride(0);
    kv.num_blocks = kB;
    kv.block_size = static_cast<int>(slots);
    kv.num_kv_heads = kHkv;
    kv.head_dim_k = kD;
    kv.head_dim_v = kD;
    const int64_t max_entries = std::max<int64_t>(1, std::min(budget, shard.local_tokens));
    auto idx = torch::zeros({kB, kHkv, max_entries}, torch::kInt);
    auto counts = torch::zeros({kB, kHkv}, torch::kInt);
    const int64_t max_list = budget + size * kBlock;
    auto chosen = torch::full({kB, kHkv, max_list}, -1, torch::kLong);  // global positions
    for (int64_t b = 0; b < kB; ++b) {
      SparseSequenceIndex index(c, kHkv);
      index.update(kv, local_tables.data_ptr<int32_t>() + b, shard.local_tokens);
      for (int64_t kh = 0; kh < kHkv; ++kh) {
        auto qs = q[b].narrow(0, kh * kGroup, kGroup).contiguous();
        const int64_t n = index.head(static_cast<int>(kh))
                              .select_range(qs.data_ptr<float>(), kD, shard.local_tokens,
                                            shard.sink_end, shard.window_begin, shard.middle_budget,
                                            idx[b][kh].data_ptr<int32_t>());
        ASSERT_LE(n, max_entries);
        counts[b][kh] = static_cast<int32_t>(n);
        for (int64_t e = 0; e < n; ++e) {
          const int64_t i = idx[b][kh][e].item<int32_t>();
          chosen[b][kh][e] = ((i / kBlock) * size + rank) * kBlock + i % kBlock;
        }
      }
    }
    SparseDecodeOptions so;
    so.scale = scale;
    auto [out, lse] =
        sparse_paged_decode(q, local.k, local.v, local_tables,
                            torch::full({kB}, shard.local_tokens, torch::kInt), idx, counts, so);
    // One all-gather of [B, Hq, D + 1], then the exact LSE merge.
    auto parts = comm.all_gather(torch::cat({out, lse.unsqueeze(-1)}, -1));  // [size, B, Hq, D+1]
    auto [merged, merged_lse] =
        merge_attention_states(parts.index({Slice(), Slice(), Slice(), Slice(0, kD)}).contiguous(),
                               parts.index({Slice(), Slice(), Slice(), kD}).contiguous());
    // The union of every rank's choice, in global positions.
    auto all_chosen = comm.all_gather(chosen);
    std::vector<std::vector<std::vector<int64_t>>> pos(kB, std::vector<std::vector<int64_t>>(kHkv));
    for (int64_t b = 0; b < kB; ++b) {
      for (int64_t kh = 0; kh < kHkv; ++kh) {
        std::set<int64_t> seen;
        for (int r = 0; r < size; ++r) {
          for (int64_t e = 0; e < max_list; ++e) {
            const int64_t p = all_chosen[r][b][kh][e].item<int64_t>();
            if (p < 0) continue;
            ASSERT_TRUE(seen.insert(p).second) << "position " << p << " chosen twice";
            ASSERT_LT(p, kLen);
          }
        }
        pos[b][kh].assign(seen.begin(), seen.end());
        const auto total = static_cast<int64_t>(seen.size());
        EXPECT_GE(total, std::min(budget, kLen));
        EXPECT_LE(total, std::min(kLen, budget + size * (kBlock - 1)));
        for (int64_t p = 0; p < 4; ++p) EXPECT_TRUE(seen.count(p)) << "sink " << p;
        for (int64_t p = kLen - 32; p < kLen; ++p) EXPECT_TRUE(seen.count(p)) << "window " << p;
      }
    }
    const auto want = attend(q, k, v, pos, scale);
    EXPECT_LT((merged.to(torch::kDouble) - want).abs().max().item<double>(), 1e-5);
    if (budget >= kLen) {
      // Acceptance 1 on this many ranks: equal to dense paged decode and the sharded dense path.
      EXPECT_LT((merged - dense).abs().max().item<float>(), 1e-5);
      EXPECT_LT((merged_lse - dense_lse).abs().max().item<float>(), 1e-5);
      auto sharded_dense =
          cache.attention(0, q.unsqueeze(1), torch::full({kB, 1}, kLen - 1, torch::kLong), scale);
      EXPECT_LT((merged - sharded_dense.squeeze(1)).abs().max().item<float>(), 1e-5);
    }
  }
}

TEST(SparseSharded, SharesAddUpToTheGlobalBudget) {
  const SparseSelectConfig c = config(300);
  for (int world_size : {1, 2, 3, 4, 7}) {
    for (int64_t len : {int64_t{0}, int64_t{5}, int64_t{299}, int64_t{300}, int64_t{301},
                        int64_t{1000}, int64_t{4099}}) {
      int64_t tokens = 0, sinks = 0, window = 0, middle = 0;
      for (int r = 0; r < world_size; ++r) {
        const SparseShard s = sparse_shard(c, len, kBlock, world_size, r);
        tokens += s.local_tokens;
        sinks += s.sink_end;
        window += s.local_tokens - s.window_begin;
        middle += s.middle_budget;
        EXPECT_LE(s.middle_budget, s.window_begin - s.sink_end);
      }
      EXPECT_EQ(tokens, len);
      EXPECT_EQ(sinks, std::min<int64_t>(4, len));
      if (len > 300) {
        EXPECT_EQ(window, 32);
        EXPECT_EQ(sinks + window + middle, 300) << "world " << world_size << " len " << len;
      } else {
        EXPECT_EQ(sinks + window + middle, len);
      }
    }
  }
  EXPECT_THROW(sparse_shard(c, 100, kBlock, 2, 2), Error);
}

}  // namespace
}  // namespace tessera::kernels

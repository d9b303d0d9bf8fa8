// KV caches sharded by heads and by sequence, against single-rank attention computed with plain
// libtorch ops (softmax over masked scores, fp64) on the unsharded keys: prefill in chunks, then
// decode, for full-attention and sliding-window layers, GQA. Runs as one process and under
// mpirun -np 2 and 4.
#include <gtest/gtest.h>
#include <torch/types.h>

#include "runtime/models/layers/head_sharded_kv.h"
#include "runtime/models/layers/sequence_sharded_kv.h"
#include "sharding/mpi/mpi_communicator.h"

namespace tessera::models {
namespace {

using sharding::ReduceOp;

// One world communicator for the whole executable (MPI is set up by tests/support's main).
sharding::MpiCommunicator& world() {
  static sharding::MpiCommunicator comm;
  return comm;
}

// Attention as one process computes it: q [B, T, Hq, D] over k / v [B, S, Hkv, D] with key
// positions k_pos [B, S], causal by position and within `window` (0 = none).
torch::Tensor reference_attention(const torch::Tensor& q, const torch::Tensor& k,
                                  const torch::Tensor& v, const torch::Tensor& q_pos,
                                  const torch::Tensor& k_pos, double scale, int64_t window) {
  const int64_t group = q.size(2) / k.size(2);
  auto kr = k.to(torch::kDouble).repeat_interleave(group, 2);
  auto vr = v.to(torch::kDouble).repeat_interleave(group, 2);
  auto scores = torch::einsum("bthd,bshd->bhts", {q.to(torch::kDouble), kr}) * scale;
  auto qp = q_pos.view({q_pos.size(0), 1, q_pos.size(1), 1});
  auto kp = k_pos.view({k_pos.size(0), 1, 1, k_pos.size(1)});
  auto visible = kp.ge(0) & kp.le(qp);
  if (window > 0) visible = visible & (qp - kp).lt(window);
  scores = scores.masked_fill(visible.logical_not(), -std::numeric_limits<double>::infinity());
  auto p = torch::softmax(scores, -1).nan_to_num(0.0);  // a query that sees nothing: zeros
  return torch::einsum("bhts,bshd->bthd", {p, vr}).to(torch::kFloat);
}

struct Data {
  torch::Tensor q, k, v;  // [B, L, H, D] per layer
};

// The same tensors on every rank (one seed), so every rank knows the unsharded truth.
std::vector<Data> make_data(int64_t layers, int64_t b, int64_t len, int64_t hq, int64_t hkv,
                            int64_t d) {
  torch::manual_seed(1234);
  std::vector<Data> out;
  for (int64_t l = 0; l < layers; ++l) {
    out.push_back({torch::randn({b, len, hq, d}), torch::randn({b, len, hkv, d}),
                   torch::randn({b, len, hkv, d})});
  }
  return out;
}

torch::Tensor positions(int64_t b, int64_t begin, int64_t end) {
  return torch::arange(begin, end, torch::kLong).unsqueeze(0).expand({b, end - begin}).contiguous();
}

// Prefill chunks then single-token decode steps: [begin, end) of each step.
std::vector<std::pair<int64_t, int64_t>> schedule(int64_t prefill, int64_t chunk, int64_t total) {
  std::vector<std::pair<int64_t, int64_t>> steps;
  for (int64_t p = 0; p < prefill; p += chunk) steps.push_back({p, std::min(prefill, p + chunk)});
  for (int64_t p = prefill; p < total; ++p) steps.push_back({p, p + 1});
  return steps;
}

constexpr int64_t kB = 2, kHq = 4, kD = 6, kLen = 41, kPrefill = 19, kChunk = 8;
const std::vector<int64_t> kWindows = {0, 5, 11};

caches::ContiguousKVCacheConfig cache_config(int64_t hkv) {
  caches::ContiguousKVCacheConfig c;
  c.num_layers = static_cast<int64_t>(kWindows.size());
  c.batch_size = kB;
  c.max_len = 64;
  c.num_kv_heads = hkv;
  c.head_dim = kD;
  c.max_chunk_tokens = kChunk;
  c.windows = kWindows;
  return c;
}

TEST(SequenceShardedKV, PrefillAndDecodeEqualSingleRank) {
  auto& comm = world();
  const int64_t hkv = 2;
  const double scale = 1.0 / std::sqrt(static_cast<double>(kD));
  const auto data = make_data(static_cast<int64_t>(kWindows.size()), kB, kLen, kHq, hkv, kD);
  for (int64_t block_tokens : {1, 3, 16}) {
    SequenceShardedKVCache cache({cache_config(hkv), block_tokens}, &comm);
    std::vector<int64_t> decode_bytes;
    for (auto [begin, end] : schedule(kPrefill, kChunk, kLen)) {
      const auto pos = positions(kB, begin, end);
      for (size_t l = 0; l < kWindows.size(); ++l) {
        const auto& x = data[l];
        cache.append(static_cast<int64_t>(l), x.k.narrow(1, begin, end - begin),
                     x.v.narrow(1, begin, end - begin), pos);
      }
      const int64_t bytes_before = comm.stats().bytes;
      for (size_t l = 0; l < kWindows.size(); ++l) {
        const auto& x = data[l];
        auto q = x.q.narrow(1, begin, end - begin);
        auto got = cache.attention(static_cast<int64_t>(l), q, pos, scale);
        auto want = reference_attention(q, x.k.narrow(1, 0, end), x.v.narrow(1, 0, end), pos,
                                        positions(kB, 0, end), scale, kWindows[l]);
        ASSERT_TRUE(torch::allclose(got, want, 1e-5, 1e-5))
            << "block_tokens=" << block_tokens << " layer " << l << " step [" << begin << ", "
            << end << ") max err " << (got - want).abs().max().item<float>();
      }
      if (end - begin == 1) decode_bytes.push_back(comm.stats().bytes - bytes_before);
    }
    // Decode moves one [B, 1, Hq, D + 1] float32 message per layer, whatever the context length.
    const int64_t per_step =
        comm.size() == 1 ? 0 : static_cast<int64_t>(kWindows.size()) * kB * kHq * (kD + 1) * 4;
    for (int64_t b : decode_bytes) EXPECT_EQ(b, per_step);
    // Every token is held by exactly one rank (full-attention layer 0).
    auto held = torch::full({1}, cache.local_layer(0).positions.ge(0).sum().item<int64_t>());
    comm.all_reduce(held, ReduceOp::kSum);
    EXPECT_EQ(held.item<int64_t>(), kB * kLen);
  }
}

TEST(SequenceShardedKV, PlacementAndMemoryPlan) {
  SequencePlacement p{3, 4};
  // Local indices of one rank's tokens are gap-free and in position order.
  for (int r = 0; r < 4; ++r) {
    int64_t next = 0;
    for (int64_t pos = 0; pos < 200; ++pos) {
      if (p.owner(pos) != r) continue;
      EXPECT_EQ(p.local_index(pos), next++) << "pos " << pos;
    }
  }
  // Sliding-window storage is smaller than the full one and still exact (tested above).
  SequenceShardedKVCache cache({cache_config(2), 3}, &world());
  EXPECT_LT(cache.local_layer(1).positions.size(1), cache.local_layer(0).positions.size(1));
  // The plan takes the smallest rank's block count.
  auto& comm = world();
  EXPECT_EQ(min_blocks_over_ranks(&comm, 100 + 7 * comm.rank()), 100);
  EXPECT_EQ(min_blocks_over_ranks(&comm, 50 - comm.rank()), 50 - (comm.size() - 1));
}

TEST(HeadShardedKV, PrefillAndDecodeEqualSingleRank) {
  auto& comm = world();
  const int64_t hkv = 4, hq = 8;
  const double scale = 0.4;
  const auto data = make_data(static_cast<int64_t>(kWindows.size()), kB, kLen, hq, hkv, kD);
  HeadShardedKVCache cache(cache_config(hkv), comm.rank(), comm.size());
  const auto kvh = cache.kv_heads();
  const auto qh = cache.q_heads(hq);
  for (auto [begin, end] : schedule(kPrefill, kChunk, kLen)) {
    const auto pos = positions(kB, begin, end);
    for (size_t l = 0; l < kWindows.size(); ++l) {
      const auto& x = data[l];
      cache.append(static_cast<int64_t>(l),
                   x.k.narrow(1, begin, end - begin).narrow(2, kvh.begin, kvh.size),
                   x.v.narrow(1, begin, end - begin).narrow(2, kvh.begin, kvh.size), pos);
    }
    for (size_t l = 0; l < kWindows.size(); ++l) {
      const auto& x = data[l];
      auto q = x.q.narrow(1, begin, end - begin);
      auto mine =
          cache.attention(static_cast<int64_t>(l), q.narrow(2, qh.begin, qh.size), pos, scale);
      // Reassemble the heads of every rank: [W, B, T, Hq/W, D] -> [B, T, Hq, D].
      auto all = comm.all_gather(mine).permute({1, 2, 0, 3, 4}).reshape({kB, end - begin, hq, kD});
      auto want = reference_attention(q, x.k.narrow(1, 0, end), x.v.narrow(1, 0, end), pos,
                                      positions(kB, 0, end), scale, kWindows[l]);
      ASSERT_TRUE(torch::allclose(all, want, 1e-5, 1e-5))
          << "layer " << l << " step [" << begin << ", " << end << ")";
    }
  }
  // This rank's storage holds only its heads.
  EXPECT_EQ(cache.local().layer(0).k.size(2), hkv / comm.size());
}

TEST(HeadShardedKV, IndivisibleHeadsAreAClearError) {
  try {
    HeadShardedKVCache cache(cache_config(3), 0, 2);
    FAIL() << "3 kv heads over 2 ranks must throw";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("num_kv_heads=3 is not divisible by 2"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace tessera::models

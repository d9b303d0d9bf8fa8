// Memory planning: blocks from a byte budget, shared storage slots for hybrid groups, state
// slots, the plan table, and the error that names the largest max_model_len that fits.
#include "caches/memory_plan.h"

#include <gtest/gtest.h>

namespace tessera::caches {
namespace {

SpecPtr full(int64_t heads = 8, int64_t dim = 128) {
  return std::make_shared<FullAttentionSpec>(AttentionShape{16, heads, dim, dim, DType::kBF16});
}
SpecPtr sliding(int64_t w) {
  return std::make_shared<SlidingWindowSpec>(AttentionShape{16, 8, 128, 128, DType::kBF16}, w);
}

TEST(MemoryPlan, BlocksFromBudget) {
  const CacheLimits limits{4096, 1024, 16, 0};
  std::vector<SpecPtr> layers(32, full());
  const int64_t page = 16 * 8 * 256 * 2;  // 65536
  const int64_t budget = 10LL << 30;
  auto p = plan_memory(layers, limits, budget);
  EXPECT_EQ(p.bytes_per_block, 32 * page);
  EXPECT_EQ(p.num_blocks, budget / (32 * page));
  EXPECT_EQ(p.pages_per_request, 4096 / 16);
  EXPECT_LE(p.total_bytes(), budget);
  EXPECT_GT(p.total_bytes() + 32 * page, budget);  // nothing left for another block
  EXPECT_NEAR(p.max_concurrency(), (p.num_blocks - 1) / 256.0, 1e-9);
  auto mc = p.manager_config(true);
  EXPECT_EQ(mc.num_blocks, p.num_blocks);
  ASSERT_EQ(mc.groups.size(), 1u);
  EXPECT_EQ(mc.groups[0].layers.size(), 32u);
  KVCacheManager m(mc);  // the plan builds a manager
  EXPECT_EQ(m.pool().num_free(), p.num_blocks - 1);
}

TEST(MemoryPlan, TooSmallBudgetNamesTheLargestLengthThatFits) {
  const CacheLimits limits{32768, 2048, 8, 0};
  std::vector<SpecPtr> layers = {full(), sliding(512), full(), sliding(512)};
  const int64_t budget = 250LL << 20;  // 2000 blocks; one request needs 2048 + 161
  try {
    plan_memory(layers, limits, budget);
    FAIL() << "expected the budget to be too small";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("budget of 262144000 bytes"), std::string::npos) << msg;
    EXPECT_NE(msg.find("blocks of 131072 bytes"), std::string::npos) << msg;  // 2 slots x page
    const auto at = msg.find("largest max_model_len that fits is ");
    ASSERT_NE(at, std::string::npos) << msg;
    const int64_t fits = std::stoll(msg.substr(at + 35));
    ASSERT_GT(fits, 0);
    // Independent check: that length plans, one token more does not.
    CacheLimits ok = limits, over = limits;
    ok.max_model_len = fits;
    ok.max_num_batched_tokens = std::min(limits.max_num_batched_tokens, fits);
    over.max_model_len = fits + 1;
    over.max_num_batched_tokens = std::min(limits.max_num_batched_tokens, fits + 1);
    EXPECT_NO_THROW(plan_memory(layers, ok, budget));
    EXPECT_THROW(plan_memory(layers, over, budget), Error);
  }
}

TEST(MemoryPlan, HybridGroupsShareSlotsAndStatesGetSlots) {
  const CacheLimits limits{8192, 512, 6, 0};
  auto gd = LinearAttentionSpec::gated_delta(4, 8, 64, 64, 4, DType::kBF16, DType::kF32);
  std::vector<SpecPtr> layers = {gd, gd, gd, full(), gd, gd, gd, full(), sliding(256)};
  auto p = plan_memory(layers, limits, 1LL << 30);
  // Full attention (2 layers) is split into two 1-layer groups to match the 1-layer sliding
  // group: one storage slot, and every page of a block is used.
  ASSERT_EQ(p.groups.size(), 4u);
  EXPECT_EQ(p.groups[0].spec->kind(), SpecKind::kLinearAttention);
  EXPECT_EQ(p.groups[0].layers.size(), 6u);
  EXPECT_EQ(p.groups[1].layers, (std::vector<int64_t>{3}));
  EXPECT_EQ(p.groups[2].layers, (std::vector<int64_t>{7}));
  EXPECT_EQ(p.groups[3].layers, (std::vector<int64_t>{8}));
  EXPECT_EQ(p.num_slots, 1);
  EXPECT_EQ(p.bytes_per_block, full()->page_size_bytes());
  EXPECT_EQ(p.layer_slot[3], 0);
  EXPECT_EQ(p.layer_slot[7], 0);
  EXPECT_EQ(p.layer_slot[8], 0);
  EXPECT_EQ(p.layer_slot[0], -1);
  EXPECT_EQ(p.num_state_slots, 7);
  EXPECT_EQ(p.state_bytes, 7 * 6 * gd->page_size_bytes());
  EXPECT_EQ(p.pages_per_request, 2 * (8192 / 16) + cdiv(255 + 512, 16) + 1);
  EXPECT_EQ(p.num_blocks, (p.budget_bytes - p.state_bytes) / p.bytes_per_block);
  const std::string table = p.table();
  for (const auto& g : p.groups) EXPECT_NE(table.find(g.spec->describe()), std::string::npos);
  EXPECT_NE(table.find("state slots 7"), std::string::npos) << table;
  KVCacheManager m(p.manager_config(true));
  EXPECT_EQ(m.num_groups(), 4);
}

TEST(MemoryPlan, GroupSplittingKeepsEveryPageOfABlockUsed) {
  const CacheLimits limits{32768, 2048, 64, 0};
  std::vector<SpecPtr> layers;
  for (int l = 0; l < 24; ++l) layers.push_back(l % 6 == 5 ? full() : sliding(1024));
  auto p = plan_memory(layers, limits, 8LL << 30);
  // 4 full layers, 20 sliding: five sliding groups of 4 layers and one full group of 4.
  ASSERT_EQ(p.groups.size(), 6u);
  for (const auto& g : p.groups) EXPECT_EQ(g.layers.size(), 4u);
  EXPECT_EQ(p.num_slots, 4);
  const int64_t page = full()->page_size_bytes();
  EXPECT_EQ(p.bytes_per_block, 4 * page);
  // Bytes one max-length request may need = the sum over layers of each spec's max memory.
  int64_t per_layer_sum = 0;
  for (const auto& s : layers) per_layer_sum += s->max_memory_usage_bytes(limits);
  EXPECT_EQ(p.pages_per_request * p.bytes_per_block, per_layer_sum);
  // Groups within 25% of each other are not split.
  std::vector<SpecPtr> near(9, full());  // 9 full and 8 sliding layers
  for (int l = 0; l < 8; ++l) near.push_back(sliding(64));
  auto q = plan_memory(near, limits, 8LL << 30);
  EXPECT_EQ(q.groups.size(), 2u);
  EXPECT_EQ(q.num_slots, 9);
}

TEST(MemoryPlan, SlidingWindowNeedsFarLessThanFullAttention) {
  const CacheLimits limits{131072, 2048, 1, 0};
  const int64_t budget = 64LL << 20;  // 1024 blocks of one layer
  EXPECT_THROW(plan_memory({full()}, limits, budget), Error);
  auto p = plan_memory({sliding(4096)}, limits, budget);
  EXPECT_EQ(p.pages_per_request, cdiv(4095 + 2048, 16) + 1);
}

TEST(MemoryPlan, Validation) {
  EXPECT_THROW(plan_memory({full()}, {4096, 512, 0, 0}, 1 << 30), Error);
  EXPECT_THROW(plan_memory({full()}, {4096, 512, 1, 0}, 0), Error);
  EXPECT_THROW(plan_memory({}, {4096, 512, 1, 0}, 1 << 30), Error);
  EXPECT_THROW(device_budget_bytes(0, 1.5), Error);
  EXPECT_THROW(device_budget_bytes(0, 0.0), Error);
}

}  // namespace
}  // namespace tessera::caches

#include "caches/contiguous_kv_cache.h"

#include <gtest/gtest.h>

#include "common/error.h"

namespace tessera::caches {
namespace {

ContiguousKVCacheConfig config(std::vector<int64_t> windows, int64_t chunk = 4) {
  ContiguousKVCacheConfig c;
  c.num_layers = static_cast<int64_t>(windows.size());
  c.batch_size = 2;
  c.max_len = 100;
  c.num_kv_heads = 3;
  c.head_dim = 5;
  c.max_chunk_tokens = chunk;
  c.windows = std::move(windows);
  return c;
}

TEST(ContiguousKVCache, ValidationNamesFieldAndValue) {
  auto c = config({0});
  c.batch_size = 0;
  try {
    ContiguousKVCache cache(c);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.message(), "batch_size must be positive, got 0");
  }
  c = config({0, -2});
  try {
    ContiguousKVCache cache(c);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("windows[1] must be >= 0"), std::string::npos);
  }
  c = config({0});
  c.windows = {0, 0};
  EXPECT_THROW(ContiguousKVCache{c}, Error);
}

TEST(ContiguousKVCache, CapacityAndBytes) {
  auto c = config({0, 8, 200});
  EXPECT_EQ(c.capacity(0), 100);
  EXPECT_EQ(c.capacity(1), 8 - 1 + 4);
  EXPECT_EQ(c.capacity(2), 100);  // a window longer than max_len is bounded by max_len
  // K and V fp32 plus one int64 position per slot, per sequence.
  EXPECT_EQ(c.bytes(), (100 + 11 + 100) * 2 * (2 * 3 * 5 * 4 + 8));
  EXPECT_EQ(c.kv_bytes(), (100 + 11 + 100) * 2 * (2 * 3 * 5 * 4));
}

TEST(ContiguousKVCache, AppendWritesSlotsAndPositions) {
  ContiguousKVCache cache(config({0}));
  auto k = torch::randn({2, 3, 3, 5}), v = torch::randn({2, 3, 3, 5});
  auto pos = torch::tensor({0, 1, 2, 5, 6, 7}, torch::kLong).view({2, 3});
  cache.append(0, k, v, pos);
  auto l = cache.layer(0);
  EXPECT_TRUE(torch::equal(l.k[0].narrow(0, 0, 3), k[0]));
  EXPECT_TRUE(torch::equal(l.v[1].narrow(0, 5, 3), v[1]));
  EXPECT_EQ(l.positions[1][6].item<int64_t>(), 6);
  EXPECT_EQ(l.positions[1][0].item<int64_t>(), -1);
  EXPECT_EQ(cache.occupied(0), (std::vector<int64_t>{3, 3}));
  cache.reset();
  EXPECT_EQ(cache.occupied(0), (std::vector<int64_t>{0, 0}));
}

TEST(ContiguousKVCache, SlidingRingNeverExceedsItsBoundAndKeepsTheWindow) {
  const int64_t window = 6, chunk = 3;
  ContiguousKVCache cache(config({window}, chunk));
  const int64_t cap = cache.config().capacity(0);
  for (int64_t start = 0; start < 60; start += chunk) {
    auto pos = (torch::arange(chunk, torch::kLong) + start).expand({2, chunk}).contiguous();
    auto k = pos.to(torch::kFloat).view({2, chunk, 1, 1}).expand({2, chunk, 3, 5}).contiguous();
    cache.append(0, k, k, pos);
    const auto occ = cache.occupied(0);
    EXPECT_LE(occ[0], cap);
    // Every key a query of this chunk can see (last `window` positions before it) is present,
    // with its own values.
    auto l = cache.layer(0);
    const int64_t first_query = start;
    for (int64_t p = std::max<int64_t>(0, first_query - window + 1); p < start + chunk; ++p) {
      const int64_t slot = p % cap;
      ASSERT_EQ(l.positions[0][slot].item<int64_t>(), p) << "position " << p << " lost";
      ASSERT_EQ(l.k[0][slot][0][0].item<float>(), static_cast<float>(p));
    }
  }
}

TEST(ContiguousKVCache, RejectsBadAppends) {
  ContiguousKVCache cache(config({0}, 2));
  auto k = torch::randn({2, 3, 3, 5});
  auto pos = torch::arange(3, torch::kLong).expand({2, 3}).contiguous();
  EXPECT_THROW(cache.append(0, k, k, pos), Error);  // 3 tokens > max_chunk_tokens 2
  auto k2 = torch::randn({2, 2, 3, 5});
  auto far = torch::full({2, 2}, 100, torch::kLong);
  EXPECT_THROW(cache.append(0, k2, k2, far), Error);  // position == max_len
  EXPECT_THROW(cache.append(1, k2, k2, far), Error);  // no layer 1
  EXPECT_THROW(cache.append(0, torch::randn({2, 2, 4, 5}), torch::randn({2, 2, 4, 5}),
                            torch::zeros({2, 2}, torch::kLong)),
               Error);  // wrong kv heads
}

}  // namespace
}  // namespace tessera::caches

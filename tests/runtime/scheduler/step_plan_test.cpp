// StepPlan: byte round trip of every field, the delta rule that rebuilds block tables, and
// decode() of untrusted bytes — every truncation, random corruption and hostile count gives a
// tessera::Error naming the field, never a crash or a huge allocation.
#include "runtime/scheduler/step_plan.h"

#include <gtest/gtest.h>

#include <random>

#include "common/error.h"

namespace tessera::scheduler {
namespace {

StepPlan sample_plan() {
  StepPlan p;
  p.step = 42;
  p.num_groups = 2;
  ScheduledSeq a;
  a.seq = 7;
  a.slot = 3;
  a.is_new = true;
  a.sample = true;
  a.sample_index = 0;
  a.start_pos = 0;
  a.num_tokens = 3;
  a.token_offset = 0;
  a.new_index = 0;
  ScheduledSeq b;
  b.seq = 9;
  b.slot = 0;
  b.start_pos = 130;
  b.num_tokens = 2;
  b.token_offset = 3;
  p.seqs = {a, b};
  p.new_seqs = {{0, "req-a", "sql"}};
  p.num_sampled = 1;
  p.token_ids = {5, 6, 7, 100, 101};
  p.tables = {{0, 0, 2, 0}, {0, 1, 2, 2}, {9, 0, 0, 4}, {9, 6, 1, 4}};
  p.blocks = {11, 12, 0, 13, 40};
  p.copies = {{1, 4, 5}};
  p.released = {{3, 1, true, "old"}, {4, 2, false, "done"}};
  return p;
}

TEST(StepPlan, RoundTripsEveryField) {
  const StepPlan p = sample_plan();
  const auto bytes = p.encode();
  const StepPlan q = StepPlan::decode(bytes);
  EXPECT_TRUE(q == p);
  EXPECT_EQ(q.seqs[1].token_offset, 3);
  EXPECT_EQ(q.request_id(0), "req-a");
  EXPECT_EQ(q.request_id(1), "");
  EXPECT_EQ(q.table(1, 1).block_offset, 4);
  EXPECT_EQ(std::vector<int32_t>(q.tokens(1).begin(), q.tokens(1).end()),
            (std::vector<int32_t>{100, 101}));
  EXPECT_EQ(StepPlan::decode(StepPlan{}.encode()), StepPlan{});
}

TEST(StepPlan, BoundsTheRunnerChecks) {
  const StepPlan p = sample_plan();
  EXPECT_NO_THROW(p.check_bounds(4, 41));
  auto msg = [&](int64_t slots, int64_t blocks) {
    try {
      p.check_bounds(slots, blocks);
    } catch (const Error& e) {
      return e.message();
    }
    return std::string();
  };
  EXPECT_NE(msg(3, 41).find("seqs[0].slot must lie in [0, 3), got 3"), std::string::npos);
  EXPECT_NE(msg(4, 40).find("blocks[4] must lie in [0, 40), got 40"), std::string::npos);
  EXPECT_NE(msg(4, 5).find("blocks[0] must lie in [0, 5), got 11"), std::string::npos);
}

TEST(StepPlan, DeltasRebuildTables) {
  const StepPlan p = sample_plan();
  std::vector<int32_t> t;
  p.apply_block_table(0, 1, t);  // new row: whole table, first entry null
  EXPECT_EQ(t, (std::vector<int32_t>{0, 13}));
  std::vector<int32_t> u = {1, 2, 3, 4, 5, 6, 7, 8, 9, 99};  // runner holds 10, plan keeps 9
  p.apply_block_table(1, 1, u);
  EXPECT_EQ(u, (std::vector<int32_t>{0, 0, 0, 0, 0, 0, 7, 8, 9, 40}));
  std::vector<int32_t> short_table = {1, 2};
  EXPECT_THROW(p.apply_block_table(1, 0, short_table), Error);
  EXPECT_THROW(p.apply_block_table(2, 0, t), Error);
  EXPECT_THROW(p.apply_block_table(0, 2, t), Error);
}

std::string decode_error(const std::vector<uint8_t>& bytes) {
  try {
    StepPlan::decode(bytes);
  } catch (const Error& e) {
    return e.message();
  }
  return "";
}

TEST(StepPlan, EveryTruncationIsAClearError) {
  const auto bytes = sample_plan().encode();
  for (size_t n = 0; n < bytes.size(); ++n) {
    const std::string err = decode_error(std::vector<uint8_t>(bytes.begin(), bytes.begin() + n));
    ASSERT_FALSE(err.empty()) << "a prefix of " << n << " bytes decoded";
    EXPECT_NE(err.find("StepPlan::decode"), std::string::npos) << err;
  }
  auto longer = bytes;
  longer.push_back(0);
  EXPECT_NE(decode_error(longer).find("1 trailing bytes"), std::string::npos);
}

TEST(StepPlan, NamedFieldErrors) {
  auto bytes = sample_plan().encode();
  auto bad = bytes;
  bad[0] ^= 1;
  EXPECT_NE(decode_error(bad).find("magic"), std::string::npos);
  bad = bytes;
  bad[4] = 9;
  EXPECT_NE(decode_error(bad).find("version must be 1, got 9"), std::string::npos);
  // A hostile row count: refused before anything is allocated for it.
  bad = bytes;
  const size_t rows_at = 4 + 2 + 2 + 8 + 4 + 4;
  bad[rows_at] = bad[rows_at + 1] = bad[rows_at + 2] = bad[rows_at + 3] = 0xff;
  const std::string err = decode_error(bad);
  EXPECT_NE(err.find("rows=4294967295"), std::string::npos) << err;
  EXPECT_NE(err.find("only"), std::string::npos) << err;
  // Inconsistent sampling flags.
  StepPlan p = sample_plan();
  p.num_sampled = 2;
  EXPECT_NE(decode_error(p.encode()).find("num_sampled must be 1"), std::string::npos);
  p = sample_plan();
  p.tables[3].null_prefix = 11;
  EXPECT_NE(decode_error(p.encode()).find("null_prefix must lie in [0, 10], got 11"),
            std::string::npos);
  p = sample_plan();
  p.tables[0].keep = 1;
  EXPECT_NE(decode_error(p.encode()).find("keep must be 0 for a new row"), std::string::npos);
  p = sample_plan();
  p.new_seqs[0].row = 1;
  EXPECT_NE(decode_error(p.encode()).find("new_seqs[0].row must be 0"), std::string::npos);
  p = sample_plan();
  p.new_seqs.clear();
  EXPECT_NE(decode_error(p.encode()).find("new_seqs=0 but 1 rows are new"), std::string::npos);
  p = sample_plan();
  p.token_ids.pop_back();
  EXPECT_NE(decode_error(p.encode()).find("token_ids holds 4 ids but the rows compute 5"),
            std::string::npos);
}

TEST(StepPlan, RandomCorruptionNeverCrashes) {
  const auto bytes = sample_plan().encode();
  std::mt19937 rng(1234);
  int decoded = 0, refused = 0;
  for (int it = 0; it < 50000; ++it) {
    auto b = bytes;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) {
      const size_t at = rng() % b.size();
      switch (rng() % 3) {
        case 0:
          b[at] ^= static_cast<uint8_t>(1u << (rng() % 8));
          break;
        case 1:
          b[at] = static_cast<uint8_t>(rng());
          break;
        default:
          b.resize(at);
          break;
      }
      if (b.empty()) break;
    }
    try {
      StepPlan p = StepPlan::decode(b);
      ++decoded;
      // Whatever decoded is self-consistent: it re-encodes to the same bytes.
      EXPECT_EQ(p.encode(), b);
    } catch (const Error&) {
      ++refused;
    }
  }
  EXPECT_GT(refused, 0);
  EXPECT_GT(decoded, 0);  // flips in ids, positions, strings stay valid plans
}

}  // namespace
}  // namespace tessera::scheduler

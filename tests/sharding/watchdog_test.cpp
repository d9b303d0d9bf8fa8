// The watchdog's record of in-flight waits, without MPI or torch: labels are copied when a wait is
// registered (the report never reads a destroyed communicator's name), and waits that start and
// end on several threads while the record is read are reported whole or not at all. The TSan build
// in scripts/sanitize.sh (thread) runs this file too: a plain (non-atomic) record would be a data
// race.
#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "sharding/watchdog.h"

namespace {

using tessera::sharding::describe;
using tessera::sharding::OpDesc;
using tessera::sharding::Watchdog;

constexpr std::array<const char*, 5> kOps = {"all_reduce", "all_gather", "broadcast", "send",
                                             "reduce_scatter"};
constexpr std::array<const char*, 3> kComms = {"world", "tp", "a-rather-long-process-group-nm"};
constexpr std::array<const char*, 4> kDtypes = {"float32", "bfloat16", "int64", "float16"};

// Every field follows from `v`, so a description mixing two waits cannot equal any op_for(v).
OpDesc op_for(uint64_t v) {
  OpDesc op;
  op.comm = kComms[v % kComms.size()];
  op.op = kOps[v % kOps.size()];
  op.dtype = kDtypes[v % kDtypes.size()];
  op.rank = static_cast<int>(v % 1000);
  op.world_rank = static_cast<int>(v % 997);
  op.seq = v;
  op.count = static_cast<int64_t>(v * 3);
  op.peer = (v % 2 == 0) ? -1 : static_cast<int>(v % 13);
  return op;
}

class WatchdogRecord : public ::testing::Test {
 protected:
  void SetUp() override {
    saved_ = Watchdog::global().timeout();
    Watchdog::global().set_timeout(std::chrono::minutes(10));
  }
  void TearDown() override { Watchdog::global().set_timeout(saved_); }
  std::chrono::milliseconds saved_{0};
};

TEST_F(WatchdogRecord, DescribeNamesEveryField) {
  EXPECT_EQ(describe(op_for(7)), "rank 7 (tp rank 7): broadcast #7 (float16 x 21, peer 7)");
  EXPECT_EQ(describe(op_for(6)), "rank 6 (world rank 6): all_gather #6 (int64 x 18)");
  // Error messages name a long communicator label in full (only the watchdog's record cuts it).
  const std::string long_label(200, 'g');
  OpDesc op = op_for(3);
  op.comm = long_label.c_str();
  EXPECT_EQ(describe(op), "rank 3 (" + long_label + " rank 3): send #3 (float16 x 9, peer 3)");
  OpDesc empty;
  empty.comm = nullptr;
  EXPECT_EQ(describe(empty), "rank 0 ( rank 0):  #0 ( x 0)");
}

TEST_F(WatchdogRecord, LabelsAreCopiedWhenTheWaitIsRegistered) {
  std::string comm(100, 'c');
  std::string long_name(100, 'x');
  OpDesc op = op_for(5);
  op.comm = comm.c_str();
  op.op = long_name.c_str();
  auto scope = Watchdog::global().watch(op);
  // The caller's strings change (a communicator destroyed and its memory reused): the record kept
  // its own copies, the label cut to 63 characters and the operation to 31.
  comm.assign(comm.size(), '?');
  long_name.assign(long_name.size(), '?');
  const auto now = Watchdog::global().in_flight();
  ASSERT_EQ(now.size(), 1u);
  EXPECT_EQ(now[0], "rank 5 (" + std::string(63, 'c') + " rank 5): " + std::string(31, 'x') +
                        " #5 (bfloat16 x 15, peer 5)");
}

TEST_F(WatchdogRecord, FinishedWaitsLeaveTheRecord) {
  {
    auto a = Watchdog::global().watch(op_for(1));
    auto b = Watchdog::global().watch(op_for(2));
    EXPECT_EQ(Watchdog::global().in_flight().size(), 2u);
  }
  EXPECT_TRUE(Watchdog::global().in_flight().empty());
  Watchdog::global().set_timeout(std::chrono::milliseconds(0));  // disabled: nothing registered
  auto c = Watchdog::global().watch(op_for(3));
  EXPECT_TRUE(Watchdog::global().in_flight().empty());
}

TEST_F(WatchdogRecord, ConcurrentWaitsAreReportedWholeOrNotAtAll) {
  // Writers register and finish waits (sharing slots, so a slot is rewritten all the time) until
  // the reader has checked enough records or a few seconds passed.
  constexpr int kWriters = 3;
  constexpr uint64_t kWanted = 100'000;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> registered{0};
  std::vector<std::thread> writers;
  for (int t = 0; t < kWriters; ++t) {
    writers.emplace_back([&, t] {
      for (uint64_t i = 1; !stop.load(std::memory_order_relaxed); ++i) {
        auto scope = Watchdog::global().watch(op_for(t + kWriters * i));
        registered.fetch_add(1, std::memory_order_relaxed);
      }
    });
  }
  uint64_t seen = 0;
  uint64_t torn = 0;
  std::string first_torn;
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (seen < kWanted && std::chrono::steady_clock::now() < give_up) {
    for (const std::string& line : Watchdog::global().in_flight()) {
      ++seen;
      const size_t hash = line.find('#');
      const uint64_t v = hash == std::string::npos ? 0 : std::stoull(line.substr(hash + 1));
      if (v == 0 || describe(op_for(v)) != line) {
        if (torn++ == 0) first_torn = line;
      }
    }
  }
  stop = true;
  for (auto& w : writers) w.join();
  EXPECT_EQ(torn, 0u) << "first torn record: " << first_torn;
  EXPECT_GT(seen, 1000u) << "the reader hardly saw a wait in flight; the test checked little";
  EXPECT_TRUE(Watchdog::global().in_flight().empty());
  std::printf("waits registered: %llu, in-flight records read: %llu, torn: %llu\n",
              static_cast<unsigned long long>(registered.load()),
              static_cast<unsigned long long>(seen), static_cast<unsigned long long>(torn));
}

}  // namespace

// StepPlan::decode: the bytes a tensor-parallel leader broadcasts to its ranks each engine step.
// Properties: a plan it accepts encodes back to exactly the same bytes (nothing it read is lost or
// invented), and every accessor a runner calls on it (tokens, request ids, block-table deltas
// against tables of the length they keep) stays inside its arrays.
#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "common/error.h"
#include "runtime/scheduler/step_plan.h"
#include "tests/fuzz/fuzz_target.h"

using tessera::scheduler::StepPlan;

TESSERA_FUZZ_TARGET(step_plan) {
  StepPlan p;
  try {
    p = StepPlan::decode(std::span<const uint8_t>(data, size));
  } catch (const tessera::Error&) {
    return 0;
  }
  const std::vector<uint8_t> again = p.encode();
  TESSERA_FUZZ_ASSERT(again.size() == size && std::equal(again.begin(), again.end(), data),
                      "encode(decode(x)) != x");
  TESSERA_FUZZ_ASSERT(StepPlan::decode(again) == p, "decode(encode(p)) != p");
  int64_t sum = 0;
  for (int64_t row = 0; row < p.num_rows(); ++row) {
    for (int32_t t : p.tokens(row)) sum += t;
    sum += static_cast<int64_t>(p.request_id(row).size());
    for (int32_t g = 0; g < p.num_groups; ++g) {
      // The runner's table holds what earlier plans gave it (bounded by max_blocks_per_seq): a
      // plan that keeps more than it holds is refused.
      const auto& d = p.table(row, g);
      std::vector<int32_t> table(std::min<size_t>(static_cast<size_t>(d.keep), 4096), 1);
      try {
        p.apply_block_table(row, g, table);
      } catch (const tessera::Error&) {
        TESSERA_FUZZ_ASSERT(d.keep > 4096, "refused a delta the table can take");
        continue;
      }
      TESSERA_FUZZ_ASSERT(table.size() == static_cast<size_t>(d.keep) + d.num_blocks,
                          "table length after the delta");
    }
  }
  try {
    p.check_bounds(64, 1 << 16);
  } catch (const tessera::Error&) {
  }
  static volatile int64_t sink;
  sink = sum;  // keeps the reads from being optimised away
  return 0;
}

// `tessera generate --sparse-decode` as a user runs it: with a budget covering the context the
// tokens equal dense decode's on 1, 2 and 4 tensor-parallel ranks (each rank selects over its own
// KV heads); with a small budget it runs and
// reports the KV bytes it read; bad options are one error line, every rank exiting non-zero.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/support/subprocess.h"

namespace tessera {
namespace {

using testing::run_command;

std::string bin() { return testing::env_or_die("TESSERA_BIN"); }
// One rank runs without mpirun (as a user on one machine does).
std::string mpirun(int np) {
  if (np == 1) return "";
  return testing::env_or_die("MPIEXEC") + " -np " + std::to_string(np) + " --oversubscribe ";
}

// A ~560-byte prompt (the tiny model is a byte-level LM).
std::string long_prompt() {
  std::string p;
  while (p.size() < 560) p += "And the LORD said unto Moses, Stretch out thine hand over the sea. ";
  return p;
}

nlohmann::json generate(int np, const std::string& extra) {
  const auto r =
      run_command(mpirun(np) + bin() + " generate --model tiny --prompt '" + long_prompt() +
                      "' --prompt 'In the beginning' --max-tokens 16 " +
                      "--ignore-eos --json --kv-cache-memory 8M --max-model-len 1024 " + extra,
                  120);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return nlohmann::json::parse(r.out);
}

TEST(GenerateSparse, FullBudgetGivesDenseTokensOn1And2And4Ranks) {
  const auto dense = generate(1, "");
  EXPECT_TRUE(dense["sparse_decode"].is_null());
  for (int np : {1, 2, 4}) {
    const auto sparse =
        generate(np, "--sparse-decode cluster --sparse-budget 1024 --sparse-min-context 0");
    EXPECT_EQ(sparse["tensor_parallel"], np);
    for (int i = 0; i < 2; ++i) {
      EXPECT_EQ(sparse["requests"][i]["output_ids"], dense["requests"][i]["output_ids"])
          << "np=" << np << " request " << i;
    }
    const auto& sp = sparse["sparse_decode"];
    // 2 requests x 15 decode steps x 2 full-attention layers, each reading its whole context.
    EXPECT_EQ(sp["rows"], 2 * 15 * 2) << sp;
    EXPECT_EQ(sp["tokens_read"], sp["tokens_context"]) << sp;
    EXPECT_EQ(sp["kv_read_fraction"], 1.0) << sp;
  }
}

TEST(GenerateSparse, SmallBudgetRunsAndReportsKvBytesRead) {
  const auto sparse = generate(2, "--sparse-decode quest --sparse-budget 128");
  const auto& sp = sparse["sparse_decode"];
  EXPECT_EQ(sp["method"], "quest");
  EXPECT_EQ(sp["min_context"], 128);
  // Only the long prompt's decode rows pass the threshold (the short one stays dense): 15 steps x
  // 2 layers, 128 tokens per kv head (2 on each of the 2 ranks) of a context of 560 + k.
  const int64_t prompt = sparse["requests"][0]["prompt_ids"].size();
  int64_t read = 0, context = 0;
  for (int64_t k = 1; k < 16; ++k) {
    read += 128 * 2 * 2;
    context += (prompt + k) * 2 * 2;
  }
  EXPECT_EQ(sp["rows"], 15 * 2) << sp;
  EXPECT_EQ(sp["tokens_read"], read) << sp;
  EXPECT_EQ(sp["tokens_context"], context) << sp;
  EXPECT_EQ(sp["kv_bytes_read"], read * 2 * 16 * 4) << sp;  // K + V rows of head_dim 16, fp32
  EXPECT_LT(sp["kv_read_fraction"].get<double>(), 0.25) << sp;
  for (const auto& r : sparse["requests"]) EXPECT_EQ(r["output_ids"].size(), 16u);
}

TEST(GenerateSparse, BadOptionsAreOneErrorLine) {
  struct Case {
    int np;
    std::string args, needle;
  };
  const Case cases[] = {
      {2, "--sparse-decode cluster --sparse-budget 0", "--sparse-budget must be a positive"},
      {1, "--sparse-decode cluster", "--sparse-budget must be a positive token count, got 0"},
      {1, "--sparse-decode cluster --sparse-budget 50", "--sparse-budget 50 is below"},
      {1, "--sparse-decode kmeans --sparse-budget 512", "kmeans"},
      {1, "--sparse-budget 512", "--sparse-budget needs --sparse-decode"},
  };
  for (const auto& c : cases) {
    const auto r =
        run_command(mpirun(c.np) + bin() + " generate --model tiny --prompt hi " + c.args, 90);
    SCOPED_TRACE(c.args);
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.exit_code, 124) << "timed out: a rank hung";
    size_t lines = 0, pos = 0;
    while ((pos = r.err.find("tessera: error", pos)) != std::string::npos) {
      ++lines;
      ++pos;
    }
    EXPECT_EQ(lines, 1u) << r.err;
    EXPECT_NE(r.err.find(c.needle), std::string::npos) << r.err;
  }
}

}  // namespace
}  // namespace tessera

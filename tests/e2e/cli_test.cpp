// `tessera generate` and `tessera info` as a user runs them: identical tokens with 1, 2 and 4
// tensor-parallel ranks; one-line errors, non-zero exits and no hung ranks on bad input.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/support/subprocess.h"

namespace tessera {
namespace {

using testing::run_command;

std::string bin() { return testing::env_or_die("TESSERA_BIN"); }
std::string mpirun(int np) {
  return testing::env_or_die("MPIEXEC") + " -np " + std::to_string(np) + " --oversubscribe ";
}
std::string generate_cmd(const std::string& extra) {
  return bin() + " generate --model tiny --prompt 'Tessera runs on every rank' " + extra;
}

// No C++ stack dumps, no "terminate called", no sanitizer or MPI abort reports from our side.
void expect_clean_error(const testing::ProcessResult& r, const std::string& needle) {
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.exit_code, 124) << "timed out: a rank hung";
  size_t lines = 0, pos = 0;
  while ((pos = r.err.find("tessera: error", pos)) != std::string::npos) {
    ++lines;
    ++pos;
  }
  EXPECT_EQ(lines, 1u) << "exactly one error line expected, stderr:\n" << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("terminate called"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("MPI_ABORT"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("Stack trace"), std::string::npos) << r.err;
}

nlohmann::json generate_json(int np) {
  const auto r = run_command(mpirun(np) + generate_cmd("--max-tokens 32 --ignore-eos --json"));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return nlohmann::json::parse(r.out);
}

TEST(Generate, IdenticalTokensWith1And2And4Ranks) {
  const auto one = generate_json(1);
  ASSERT_EQ(one["output_ids"].size(), 32u);
  EXPECT_EQ(one["tensor_parallel"], 1);
  for (int np : {2, 4}) {
    const auto many = generate_json(np);
    EXPECT_EQ(many["tensor_parallel"], np);
    EXPECT_EQ(many["output_ids"], one["output_ids"]) << "np=" << np;
    EXPECT_EQ(many["prompt_ids"], one["prompt_ids"]);
    // Each rank holds 1/np of the KV cache.
    EXPECT_EQ(many["kv_cache_bytes_per_rank"].get<int64_t>() * np,
              one["kv_cache_bytes_per_rank"].get<int64_t>());
  }
}

TEST(Generate, WithoutMpirunAndPlainOutput) {
  const auto r = run_command(generate_cmd("--max-tokens 5 --ignore-eos"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("output ids: "), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("generated 5"), std::string::npos) << r.err;
}

TEST(Generate, ThreeRanksDoNotDivideTheHeads) {
  const auto r = run_command(mpirun(3) + generate_cmd("--max-tokens 4"), 90);
  expect_clean_error(r, "num_attention_heads=8 is not divisible by 3 tensor-parallel ranks");
}

TEST(Generate, BadInputGivesOneLineErrors) {
  struct Case {
    std::string args;
    std::string needle;
  };
  for (const Case& c : {
           Case{"--model gpt-17 --prompt hi", "unknown model 'gpt-17'"},
           Case{"--model /nonexistent/dir --prompt hi", "'/nonexistent/dir' does not exist"},
           Case{"--model tiny --prompt hi --max-tokens -1", "--max-tokens"},
           Case{"--model tiny --prompt hi --max-tokens abc", "--max-tokens"},
           Case{"--model tiny", "--prompt is required"},
           Case{"--model tiny --prompt hi --prefill-chunk 0", "must be an integer > 0, got 0"},
           Case{"--model tiny --prompt hi --max-tokens 5000", "exceeds max_position_embeddings"},
           // prompt + max_tokens used to overflow int64 and pass the check.
           Case{"--model tiny --prompt hi --max-tokens 9223372036854775807",
                "exceeds max_position_embeddings"},
       }) {
    for (int np : {1, 2}) {
      const auto r = run_command(mpirun(np) + bin() + " generate " + c.args, 90);
      SCOPED_TRACE(c.args + " np=" + std::to_string(np));
      expect_clean_error(r, c.needle);
    }
  }
}

TEST(Generate, UnreadableModelFolder) {
  if (geteuid() == 0) {
    // root reads everything: use a folder whose config.json is a directory instead.
    const auto r = run_command("d=$(mktemp -d) && mkdir $d/config.json && " + mpirun(2) + bin() +
                               " generate --model $d --prompt hi; rc=$?; rm -rf $d; exit $rc");
    expect_clean_error(r, "config");
  } else {
    const auto r = run_command("d=$(mktemp -d) && chmod 000 $d && " + mpirun(2) + bin() +
                               " generate --model $d --prompt hi; rc=$?; rm -rf $d; exit $rc");
    expect_clean_error(r, "not readable");
  }
}

TEST(Generate, CorruptWeightsFile) {
  const auto r = run_command(
      "d=$(mktemp -d) && " + bin() + " generate --prompt x --max-tokens 1 --json > $d/o && " +
      "src=$(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))[\"model_dir\"])' $d/o "
      "2>/dev/null || sed -E 's/.*\"model_dir\":\"([^\"]*)\".*/\\1/' $d/o) && "
      "cp $src/config.json $d/ && head -c 1000 $src/model.safetensors > $d/model.safetensors && " +
      mpirun(2) + bin() + " generate --model $d --prompt hi; rc=$?; rm -rf $d; exit $rc");
  expect_clean_error(r, "model.safetensors");
}

TEST(Info, WorksWithoutGpuAndShowsEveryRank) {
  const auto one = run_command(bin() + " info");
  ASSERT_EQ(one.exit_code, 0) << one.err;
  EXPECT_NE(one.out.find("Tessera "), std::string::npos);
  EXPECT_NE(one.out.find("MPI:"), std::string::npos);
  EXPECT_NE(one.out.find("libtorch:"), std::string::npos);
  EXPECT_NE(one.out.find("devices:"), std::string::npos) << one.out;

  const auto r = run_command(mpirun(2) + bin() + " info --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["world"]["size"], 2);
  EXPECT_EQ(j["world"]["launcher"], "mpirun (OpenMPI)");
  ASSERT_EQ(j["ranks"].size(), 2u);
  EXPECT_EQ(j["ranks"][1]["rank"], 1);
  EXPECT_EQ(j["ranks"][1]["local_rank"], 1);
  EXPECT_EQ(j["cuda"]["devices"], 0);
  EXPECT_FALSE(j["cuda"]["status"].get<std::string>().empty());
}

TEST(Launch, LauncherVariablesThatContradictMpiAreRefused) {
  // A process told it is rank 1 of 2 by torchrun-style variables but started alone.
  const auto r = run_command("RANK=1 WORLD_SIZE=2 " + bin() + " info", 60);
  expect_clean_error(r, "torchrun");
  const auto s =
      run_command("SLURM_PROCID=3 SLURM_NTASKS=4 SLURM_STEP_ID=0 " + bin() + " info", 60);
  expect_clean_error(s, "MPI reports rank 0 of 1");
}

}  // namespace
}  // namespace tessera

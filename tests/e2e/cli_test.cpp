// `tessera generate` and `tessera info` as a user runs them: identical tokens with 1, 2 and 4
// tensor-parallel ranks; one-line errors, non-zero exits and no hung ranks on bad input.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
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

nlohmann::json generate_json(int np, const std::string& extra = "") {
  const auto r =
      run_command(mpirun(np) + generate_cmd("--max-tokens 32 --ignore-eos --json "
                                            "--kv-cache-memory 8M --max-model-len 1024 " +
                                            extra));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return nlohmann::json::parse(r.out);
}

TEST(Generate, IdenticalTokensWith1And2And4Ranks) {
  const auto one = generate_json(1);
  const auto& first = one["requests"][0];
  ASSERT_EQ(first["output_ids"].size(), 32u);
  EXPECT_EQ(first["finish_reason"], "length");
  EXPECT_EQ(one["tensor_parallel"], 1);
  for (int np : {2, 4}) {
    const auto many = generate_json(np);
    EXPECT_EQ(many["tensor_parallel"], np);
    EXPECT_EQ(many["requests"][0]["output_ids"], first["output_ids"]) << "np=" << np;
    EXPECT_EQ(many["requests"][0]["prompt_ids"], first["prompt_ids"]);
    // Each rank holds 1/np of the KV heads, so the same bytes per rank hold np times the blocks.
    EXPECT_EQ(many["kv_cache_blocks"].get<int64_t>(), one["kv_cache_blocks"].get<int64_t>() * np);
  }
  // 8 ranks over the tiny model's 4 KV heads: each KV head's tokens split over 2 ranks.
  const auto dcp = generate_json(8);
  EXPECT_EQ(dcp["decode_context_parallel"], 2);
  EXPECT_EQ(dcp["requests"][0]["output_ids"], first["output_ids"]);
  // Two replicas of two ranks, fed round-robin.
  const auto dp = generate_json(4, "--dp 2 --prompt 'a second prompt' --prompt-ids 256,65,66");
  ASSERT_EQ(dp["requests"].size(), 3u);
  EXPECT_EQ(dp["data_parallel"], 2);
  EXPECT_EQ(dp["requests"][0]["output_ids"], first["output_ids"]);
  EXPECT_EQ(dp["requests"][2]["prompt_ids"], (std::vector<int>{256, 65, 66}));
}

TEST(Generate, WithoutMpirunAndPlainOutput) {
  const auto r = run_command(generate_cmd("--max-tokens 5 --ignore-eos"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("output ids: "), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("generated 5"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("KV cache plan"), std::string::npos) << "start-up table:\n" << r.err;
}

TEST(Generate, PromptsFileBadLinesFailAlone) {
  const auto r = run_command(
      "d=$(mktemp -d) && printf '%s\\n' '{\"prompt\": \"one\", \"max_tokens\": 3}' "
      "'{\"prompt\": [256, 70], \"max_tokens\": 0}' '{\"prompt_ids\": [256, 71, 72], "
      "\"max_tokens\": 4, \"ignore_eos\": true}' > $d/p.jsonl && " +
      mpirun(2) + bin() +
      " generate --model tiny --prompts $d/p.jsonl --json; rc=$?; "
      "rm -rf $d; exit $rc");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["requests"].size(), 3u);
  EXPECT_EQ(j["requests"][1]["finish_reason"], "error");
  EXPECT_EQ(j["requests"][1]["error"], "line 2: max_tokens must be >= 1, got 0");
  EXPECT_EQ(j["requests"][2]["output_ids"].size(), 4u);
  EXPECT_NE(j["requests"][0]["finish_reason"], "error");
  EXPECT_NE(r.err.find("tessera: error: line 2: max_tokens must be >= 1, got 0"), std::string::npos)
      << r.err;
}

TEST(Generate, ThreeRanksDoNotDivideTheHeads) {
  const auto r = run_command(mpirun(3) + generate_cmd("--max-tokens 4"), 90);
  expect_clean_error(r, "num_attention_heads=8 is not divisible by 3 tensor-parallel ranks");
}

TEST(Generate, BadInputGivesOneLineErrors) {
  struct Case {
    std::string args;
    std::string needle;
    bool one_rank_too = false;  // also without a second rank (the other code path)
  };
  for (const Case& c : {
           Case{"--model gpt-17 --prompt hi", "unknown model 'gpt-17'", true},
           Case{"--model /nonexistent/dir --prompt hi", "'/nonexistent/dir' does not exist"},
           Case{"--model tiny --prompt hi --max-tokens -1", "max_tokens must be >= 1, got -1"},
           Case{"--model tiny --prompt hi --max-tokens 0", "max_tokens must be >= 1, got 0", true},
           Case{"--model tiny --prompt hi --max-tokens abc", "--max-tokens"},
           Case{"--model tiny", "no prompts"},
           Case{"--model tiny --prompt hi --max-num-batched-tokens 0",
                "max_num_batched_tokens must be positive, got 0"},
           Case{"--model tiny --prompt 'longer than eight' --max-model-len 8",
                "prompt has 18 tokens, more than max_model_len=8", true},
           Case{"--model tiny --prompt hi --max-model-len 5000",
                "max_model_len=5000 exceeds the model's 4096"},
           Case{"--model tiny --prompt hi --kv-cache-memory 10K", "the largest max_model_len"},
           Case{"--model tiny --prompt hi --kv-cache-memory lots", "--kv-cache-memory"},
           Case{"--model tiny --prompt hi --kv-cache-fraction 2",
                "(--kv-cache-fraction) must be in (0, 1], got 2", true},
           Case{"--model tiny --prompt hi --temperature -1", "temperature"},
           Case{"--model tiny --prompt hi --tp 3", "--tp 3 x --dp 1 needs 3 ranks"},
       }) {
    for (int np : {1, 2}) {
      if (np == 1 && !c.one_rank_too) continue;
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

// A copy of the tiny model (found through --json's model_dir) edited by `edit` (shell, $d is the
// copy), then `tessera generate` on it under mpirun -np 2.
testing::ProcessResult run_on_edited_tiny(const std::string& edit, const std::string& args) {
  return run_command(
      "d=$(mktemp -d) && " + bin() + " generate --prompt x --max-tokens 1 --json > $d/o && " +
      "src=$(sed -E 's/.*\"model_dir\":\"([^\"]*)\".*/\\1/' $d/o) && cp $src/* $d/ && " + edit +
      " && " + mpirun(2) + bin() + " generate --model $d " + args + "; rc=$?; rm -rf $d; exit $rc");
}

TEST(Generate, UnknownArchitecture) {
  const auto r = run_on_edited_tiny("sed -i 's/\"qwen2\"/\"gpt2\"/' $d/config.json", "--prompt hi");
  expect_clean_error(r, "model_type='gpt2' is not supported");
}

TEST(Generate, NanWeightsAreReportedNotTurnedIntoTokens) {
  // The first float of model.norm.weight becomes NaN.
  const auto r = run_on_edited_tiny(
      "python3 -c \"import json,struct,sys; f=open(sys.argv[1],'r+b'); n=struct.unpack('<Q', "
      "f.read(8))[0]; h=json.loads(f.read(n)); f.seek(8+n+h['model.norm.weight']['data_offsets']"
      "[0]); f.write(struct.pack('<f', float('nan')))\" $d/model.safetensors",
      "--prompt hi --max-tokens 4");
  expect_clean_error(r, "NaN in logits of request \"0\" at step 1");
  EXPECT_EQ(r.out.find("output ids"), std::string::npos) << r.out;
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

// The CUDA devices this process may use, counted without the CUDA runtime (which is what
// `tessera info` asks): `nvidia-smi -L` prints one "GPU i: ..." line per device (else the
// /dev/nvidiaN nodes are counted); CUDA_VISIBLE_DEVICES narrows the set as the runtime does, up to
// its first entry that names no device.
int gpus_present() {
  auto smi = run_command("nvidia-smi -L 2>/dev/null | grep -c '^GPU '", 60);
  int physical = smi.exit_code == 0 ? std::atoi(smi.out.c_str()) : 0;
  if (smi.exit_code != 0) {
    auto nodes = run_command("ls /dev 2>/dev/null | grep -cE '^nvidia[0-9]+$'", 30);
    physical = std::atoi(nodes.out.c_str());
  }
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  if (visible == nullptr) return physical;
  int count = 0;
  std::string list = visible;
  for (size_t start = 0; start <= list.size();) {
    const size_t end = std::min(list.find(',', start), list.size());
    const std::string entry = list.substr(start, end - start);
    const bool uuid = entry.rfind("GPU-", 0) == 0 || entry.rfind("MIG-", 0) == 0;
    const bool index = !entry.empty() &&
                       entry.find_first_not_of("0123456789") == std::string::npos &&
                       std::atoi(entry.c_str()) < physical;
    if (!uuid && !index) break;
    ++count;
    start = end + 1;
  }
  return std::min(count, physical);
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
  // The devices listed are the devices present (none in a build without CUDA), and each rank
  // uses device local_rank % devices (the CPU without one).
  const int present = j["build"]["cuda_compiled"].get<bool>() ? gpus_present() : 0;
  EXPECT_EQ(j["cuda"]["devices"], present) << r.out;
  EXPECT_EQ(j["cuda"]["names"].size(), static_cast<size_t>(present));
  if (present > 0) EXPECT_EQ(j["cuda"]["status"], "ok");
  EXPECT_FALSE(j["cuda"]["status"].get<std::string>().empty());
  for (const auto& rank : j["ranks"]) {
    const int local = rank["local_rank"].get<int>();
    EXPECT_EQ(rank["device"], present > 0 ? "cuda:" + std::to_string(local % present) : "cpu")
        << rank.dump();
  }
}

// libtorch threads per rank: the cores of the node shared among its ranks (at least one), unless
// TESSERA_NUM_THREADS says otherwise; a value that is not a positive integer is refused.
TEST(Info, ThreadsPerRankFollowTheRuleAndTheVariable) {
  const int cores = std::max(1, static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN)));
  for (int np : {1, 2, 3}) {
    const auto r = run_command("env -u TESSERA_NUM_THREADS " + mpirun(np) + bin() + " info --json");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto j = nlohmann::json::parse(r.out);
    ASSERT_EQ(j["ranks"].size(), static_cast<size_t>(np));
    for (const auto& rank : j["ranks"]) {
      EXPECT_EQ(rank["torch_threads"], std::max(1, cores / np))
          << "np=" << np << " cores=" << cores;
    }
  }
  const auto r = run_command("TESSERA_NUM_THREADS=3 " + mpirun(2) + bin() + " info --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  for (const auto& rank : j["ranks"]) EXPECT_EQ(rank["torch_threads"], 3);
  EXPECT_EQ(j["torch"]["threads_per_rank"], 3);
  for (const char* bad : {"0", "-2", "abc", "3x"}) {
    expect_clean_error(
        run_command(std::string("TESSERA_NUM_THREADS='") + bad + "' " + bin() + " info", 60),
        "TESSERA_NUM_THREADS");
  }
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

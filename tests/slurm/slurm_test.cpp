// Tessera in a real SLURM cluster (scripts/slurm_cluster.sh, started by the slurm_cluster_up test,
// which also checks that sinfo shows the node idle, as slurm_cluster_down does after the jobs):
// examples/slurm/generate.sbatch completes with mpirun's tokens; examples/slurm/serve.sbatch
// serves, and scancel --signal=TERM lets the stream in flight finish and the job end with 0;
// srun --mpi=pmix starts the ranks with the same tokens as mpirun and Tessera reads them as srun's;
// --mpi=pmi2 either gives the same tokens or, where the MPI library has no PMI-2 client (Debian's
// Open MPI), ends with one clear line; SLURM variables that disagree with MPI are one agreed line;
// and (Preemption.*, its own ctest) sbatch --signal=USR1@55 reaches a program through
// launch/signals, which checkpoints, and the requeued job resumes to the uninterrupted result.
#include <gtest/gtest.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>

#include "tests/support/subprocess.h"

namespace {

namespace fs = std::filesystem;
using tessera::testing::env_or_die;
using tessera::testing::ProcessResult;
using tessera::testing::run_command;

const char kPrompt[] = "Tessera runs on every rank";

// Skips the test when the cluster is not up (SLURM or munge not installed).
#define REQUIRE_CLUSTER()                                                                   \
  do {                                                                                      \
    if (!fs::exists(env_or_die("SLURM_CONF")))                                              \
      GTEST_SKIP() << "no local SLURM cluster (" << env_or_die("SLURM_CONF")                \
                   << " missing: scripts/slurm_cluster.sh up was skipped, see its output)"; \
  } while (0)

std::string bin() { return env_or_die("TESSERA_BIN"); }

std::string generate_args(int max_tokens) {
  return " generate --model tiny --prompt '" + std::string(kPrompt) + "' --max-tokens " +
         std::to_string(max_tokens) + " --ignore-eos --json";
}

// A folder for one test's job files, inside the cluster's folder.
fs::path job_dir(const std::string& name) {
  const auto d = fs::path(env_or_die("SLURM_CONF")).parent_path() / "jobs" / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The tokens of `mpirun -np N tessera generate`, the reference for every SLURM launch.
nlohmann::json mpirun_generate(int np, int max_tokens) {
  const auto r = run_command(env_or_die("MPIEXEC") + " -np " + std::to_string(np) +
                                 " --oversubscribe " + bin() + generate_args(max_tokens),
                             120);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return nlohmann::json::parse(r.out);
}

// The first request's field of a `generate --json` object (the engine prints one per request).
const nlohmann::json& first_request(const nlohmann::json& j, const char* field) {
  static const nlohmann::json missing;
  if (!j.contains("requests") || !j["requests"].is_array() || j["requests"].empty()) {
    ADD_FAILURE() << "no requests[] in " << j.dump();
    return missing;
  }
  const auto& r = j["requests"][0];
  EXPECT_TRUE(r.contains(field) && !r[field].empty()) << field << " missing in " << j.dump();
  return r.contains(field) ? r[field] : missing;
}

// Waits (polling, faster than sbatch --wait) until the job has ended; returns "STATE EXIT".
// Waits for one of SLURM's final job states; every other state (PENDING, RUNNING, COMPLETING,
// REQUEUE*, SIGNALING while a --signal warning is delivered, RESIZING, STAGE_OUT, ...) is
// passing.
std::string wait_for_job(const std::string& id, int timeout_s) {
  const auto r = run_command(
      "while :; do s=$(scontrol show job -o " + id +
          " | grep -o 'JobState=[A-Z_]* ' ); case \"$s\" in "
          "*=COMPLETED\\ *|*=CANCELLED\\ *|*=FAILED\\ *|*=TIMEOUT\\ *|*=NODE_FAIL\\ *|"
          "*=PREEMPTED\\ *|*=BOOT_FAIL\\ *|*=DEADLINE\\ *|*=OUT_OF_MEMORY\\ *|"
          "*=SPECIAL_EXIT\\ *|*=REVOKED\\ *) break;; "
          "*) sleep 0.2;; esac; done; scontrol show job -o " +
          id + " | grep -o 'JobState=[A-Z_]* .*ExitCode=[0-9:]*' | sed 's/ .*ExitCode=/ /'",
      timeout_s);
  EXPECT_EQ(r.exit_code, 0) << "job " << id << " did not end within " << timeout_s << " s";
  std::string s = r.out;
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

std::string submit(const std::string& env_and_args) {
  const auto r = run_command(env_and_args, 30);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::string id = r.out;
  while (!id.empty() && (id.back() == '\n' || id.back() == ' ')) id.pop_back();
  return id;
}

size_t count_of(const std::string& s, const std::string& needle) {
  size_t n = 0;
  for (size_t p = s.find(needle); p != std::string::npos; p = s.find(needle, p + 1)) ++n;
  return n;
}

TEST(Sbatch, GenerateExampleCompletesWithMpirunsTokens) {
  REQUIRE_CLUSTER();
  const auto dir = job_dir("generate");
  const auto reference = mpirun_generate(2, 16);
  const std::string id =
      submit("cd " + dir.string() + " && TESSERA=" + bin() +
             " MAX_TOKENS=16 sbatch --parsable --output=gen-%j.out --error=gen-%j.err " +
             env_or_die("TESSERA_SOURCE_DIR") + "/examples/slurm/generate.sbatch");
  ASSERT_FALSE(id.empty());
  EXPECT_EQ(wait_for_job(id, 120), "JobState=COMPLETED 0:0");
  const std::string out = slurp(dir / ("gen-" + id + ".out"));
  const std::string err = slurp(dir / ("gen-" + id + ".err"));
  ASSERT_EQ(count_of(out, "\n"), 1u) << "one JSON line from rank 0 expected:\n" << out << err;
  const auto j = nlohmann::json::parse(out);
  EXPECT_EQ(j["world_size"], 2);
  EXPECT_EQ(j["tensor_parallel"], 2);
  EXPECT_EQ(first_request(j, "output_ids"), first_request(reference, "output_ids")) << out;
  EXPECT_EQ(first_request(j, "prompt_ids"), first_request(reference, "prompt_ids"));
  EXPECT_NE(err.find("job " + id + ": 2 tasks on tessera, srun --mpi=pmix"), std::string::npos)
      << err;
}

TEST(Sbatch, ServeExampleFinishesTheStreamInFlightOnSigterm) {
  REQUIRE_CLUSTER();
  const auto dir = job_dir("serve");
  const std::string id = submit("cd " + dir.string() + " && TESSERA=" + bin() +
                                " PORT=0 sbatch --parsable --output=serve.out --error=serve.err " +
                                env_or_die("TESSERA_SOURCE_DIR") + "/examples/slurm/serve.sbatch");
  ASSERT_FALSE(id.empty());
  // Wait for rank 0's line; after a first request (which warms the server up), time a 200-token
  // completion three times and size the stream at about two seconds of this machine's decoding
  // at the fastest of the three (800 to 4,000 tokens: a fast machine streams 400 tokens of the
  // tiny model in 15 ms; one probe slowed by other tests once sized 800 tokens that then streamed
  // in 0.2 s, before the signal reached the job); start the stream and TERM the job the moment
  // its first chunk arrives. The rest must come within the cluster's KillWait (5 s) before SLURM's
  // SIGKILL. The server's own shutdown line says whether the stream was still in flight when the
  // signal came.
  const std::string d = dir.string();
  const auto r = run_command(
      "cd " + d +
          " && for i in $(seq 600); do grep -q listening serve.out 2>/dev/null && break; sleep "
          "0.1; done; port=$(grep -o '127.0.0.1:[0-9]*' serve.out | cut -d: -f2); "
          "url=http://127.0.0.1:$port/v1/completions; "
          "curl -s -o /dev/null $url -H 'Content-Type: application/json' "
          "-d '{\"model\":\"tiny\",\"prompt\":\"abc\",\"max_tokens\":8}'; "
          "t=9; for k in 1 2 3; do "
          "p=$(curl -s -o probe.json -w '%{time_total}' $url -H 'Content-Type: application/json' "
          "-d '{\"model\":\"tiny\",\"prompt\":\"abc\",\"max_tokens\":200,"
          "\"ignore_eos\":true}'); t=$(awk -v a=$t -v b=$p 'BEGIN{print (b<a)?b:a}'); done; "
          "n=$(awk -v t=$t 'BEGIN{n=int(400/t); if(n<800)n=800; if(n>4000)n=4000; print n}'); "
          "echo $n > max_tokens.txt; "
          "curl -sN $url -H 'Content-Type: application/json' -d "
          "'{\"model\":\"tiny\",\"prompt\":\"abc\",\"max_tokens\":'$n',\"ignore_eos\":true,"
          "\"stream\":true,\"stream_options\":{\"include_usage\":true}}' | { IFS= read -r first; "
          "scancel --signal=TERM " +
          id + "; printf '%s\\n' \"$first\"; cat; } > stream.txt",
      120);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(wait_for_job(id, 120), "JobState=COMPLETED 0:0") << slurp(dir / "serve.err");
  const std::string stream = slurp(dir / "stream.txt");
  const std::string out = slurp(dir / "serve.out");
  const int max_tokens = std::stoi(slurp(dir / "max_tokens.txt"));
  EXPECT_NE(slurp(dir / "probe.json").find("\"completion_tokens\":200"), std::string::npos)
      << slurp(dir / "probe.json");
  // The stream was in flight when the signal came: the server counted it (at least 1).
  const std::string line = "tessera serve: SIGTERM: finishing ";
  const size_t at = out.find(line);
  ASSERT_NE(at, std::string::npos) << "no shutdown line:\n" << out;
  EXPECT_GE(std::atoi(out.c_str() + at + line.size()), 1)
      << "the stream had ended before the signal came:\n"
      << out;
  // Every token came (a chunk holds back the bytes of an unfinished UTF-8 character, so chunks
  // with text may be fewer than tokens): the usage chunk before [DONE] counts them.
  EXPECT_NE(stream.find("\"completion_tokens\":" + std::to_string(max_tokens) + ","),
            std::string::npos)
      << stream.substr(stream.size() > 800 ? stream.size() - 800 : 0);
  EXPECT_EQ(count_of(stream, "\"finish_reason\":\"length\""), 1u);
  EXPECT_NE(stream.find("data: [DONE]"), std::string::npos);
  EXPECT_NE(out.find("tp 2, dp 1"), std::string::npos);
  std::printf("[serve] a %d-token stream, TERM after its first chunk, all %d came\n", max_tokens,
              max_tokens);
}

TEST(Srun, PmixGivesMpirunsTokens) {
  REQUIRE_CLUSTER();
  const auto reference = mpirun_generate(2, 16);
  const auto r = run_command("srun --mpi=pmix -n 2 " + bin() + generate_args(16), 120);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["world_size"], 2);
  EXPECT_EQ(first_request(j, "output_ids"), first_request(reference, "output_ids"));
}

TEST(Srun, RanksAreReadFromSlurmsVariables) {
  REQUIRE_CLUSTER();
  // More tasks than the node's CPUs: srun wants --overcommit for that.
  const auto r = run_command("srun --mpi=pmix --overcommit -n 3 " + bin() + " info --json", 120);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["world"]["launcher"], "srun (SLURM)");
  EXPECT_EQ(j["world"]["size"], 3);
  ASSERT_EQ(j["ranks"].size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(j["ranks"][i]["rank"], i);
    EXPECT_EQ(j["ranks"][i]["local_rank"], i);  // one node: SLURM_LOCALID = SLURM_PROCID
  }
}

TEST(Srun, SlurmVariablesDisagreeingWithMpiAreOneClearLine) {
  REQUIRE_CLUSTER();
  // Each task is told it is the other one.
  const auto r = run_command(
      "srun --mpi=pmix -n 2 bash -c 'SLURM_PROCID=$((1 - SLURM_PROCID)) exec " + bin() + " info'",
      120);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(count_of(r.err, "tessera: error"), 1u) << r.err;
  EXPECT_NE(r.err.find("launcher variables disagree with MPI: srun (SLURM) says rank 1 of 2 "
                       "(SLURM_PROCID=1, SLURM_NTASKS=2, SLURM_LOCALID=0) but MPI reports rank "
                       "0 of 2"),
            std::string::npos)
      << r.err;
}

// PMI clients of the MPI library, asked of the library's own ompi_info (empty when not Open MPI).
std::string ompi_pmix_components() {
  const auto r = run_command(
      "ompi_info --parsable | sed -n 's/^mca:pmix:\\([a-z0-9]*\\):version:.*/\\1/p' | sort -u | "
      "tr '\\n' ' '",
      30);
  return r.out;
}

bool mpi_has_pmi2_client() {
  const std::string c = ompi_pmix_components();
  return c.empty() || c.find("s2 ") != std::string::npos;
}

// srun --mpi=pmi2 needs an MPI library with a PMI-2 client. Debian's Open MPI has none (PMIx only),
// so the test runs the tessera binary built against Debian's MPICH (scripts/build_mpich.sh; its
// path in TESSERA_MPICH_BIN) and compares with mpirun of the Open MPI build: the same tokens from
// the same checkpoint whatever the MPI library and the launcher.
TEST(Srun, Pmi2GivesMpirunsTokens) {
  REQUIRE_CLUSTER();
  std::string pmi2_bin;
  if (mpi_has_pmi2_client()) {
    pmi2_bin = bin();
  } else if (const char* m = std::getenv("TESSERA_MPICH_BIN"); m && *m && fs::exists(m)) {
    pmi2_bin = m;
  } else {
    GTEST_SKIP()
        << "this Open MPI has no PMI-2 client (its pmix components: " << ompi_pmix_components()
        << "; s2 would be PMI-2) and no MPICH build of tessera was found (TESSERA_MPICH_BIN="
        << (std::getenv("TESSERA_MPICH_BIN") ? std::getenv("TESSERA_MPICH_BIN") : "")
        << "; scripts/build_mpich.sh makes one)";
  }
  const auto reference = mpirun_generate(2, 16);
  const auto r = run_command("srun --mpi=pmi2 -n 2 " + pmi2_bin + generate_args(16), 120);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto got = nlohmann::json::parse(r.out);
  EXPECT_EQ(first_request(got, "output_ids"), first_request(reference, "output_ids"));
  EXPECT_EQ(got["world_size"], 2) << r.out;
  // Rank discovery agreed with SLURM's variables (a disagreement is an error at start-up), and the
  // binary really is the MPICH one when it is not the Open MPI build.
  if (pmi2_bin != bin()) {
    const auto info = run_command(pmi2_bin + " info --json", 60);
    ASSERT_EQ(info.exit_code, 0) << info.err;
    EXPECT_NE(info.out.find("MPICH"), std::string::npos) << info.out;
  }
}

TEST(Srun, Pmi2WithoutAClientIsOneClearLine) {
  REQUIRE_CLUSTER();
  if (mpi_has_pmi2_client())
    GTEST_SKIP() << "this MPI has a PMI-2 client: see Pmi2GivesMpirunsTokens";
  for (const char* plugin : {"pmi2", "none"}) {
    const auto r =
        run_command(std::string("srun --mpi=") + plugin + " -n 2 " + bin() + generate_args(4), 120);
    EXPECT_NE(r.exit_code, 0);
    EXPECT_EQ(count_of(r.err, "tessera: error"), 1u) << plugin << ":\n" << r.err;
    EXPECT_NE(r.err.find("MPI cannot start in this srun step"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("run srun --mpi=pmix"), std::string::npos) << r.err;
    // Open MPI's own abort (a page per task) never comes: MPI was not started.
    EXPECT_EQ(r.err.find("MPI_Init"), std::string::npos) << r.err;
  }
}

uint64_t lcg(uint64_t x) { return x * 6364136223846793005ull + 1442695040888963407ull; }

TEST(Preemption, UsrOneWarningCheckpointsAndTheRequeuedJobResumes) {
  REQUIRE_CLUSTER();
  const auto dir = job_dir("preempt");
  // 68 steps of 0.5 s: longer than the 30 s within which the warning comes, so the first run is
  // always warned; later runs resume where the checkpoint left off.
  const int steps = 68;
  const auto t0 = std::chrono::steady_clock::now();
  const std::string id =
      submit("cd " + dir.string() + " && SIGNAL_DRIVER=" + env_or_die("SIGNAL_DRIVER") +
             " STATE=" + (dir / "state").string() + " STEPS=" + std::to_string(steps) +
             " STEP_MS=500 sbatch --parsable --output=out.txt " + env_or_die("TESSERA_SOURCE_DIR") +
             "/tests/slurm/preempt_job.sbatch");
  ASSERT_FALSE(id.empty());
  EXPECT_EQ(wait_for_job(id, 240), "JobState=COMPLETED 0:0");
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const std::string out = slurp(dir / "out.txt");

  // Each warning came from SLURM (slurmstepd's pid, not this test's), was checkpointed, and the
  // job requeued itself; each later run resumed from the step the previous one saved.
  const std::regex checkpoint("checkpoint at step ([0-9]+) on SIGUSR1 from pid ([0-9]+)");
  int warnings = 0;
  for (auto it = std::sregex_iterator(out.begin(), out.end(), checkpoint);
       it != std::sregex_iterator(); ++it, ++warnings) {
    const std::string step = (*it)[1], pid = (*it)[2];
    EXPECT_NE(pid, "0") << out;
    EXPECT_NE(pid, std::to_string(getpid())) << out;
    EXPECT_NE(out.find("resumed at step " + step + "\n"), std::string::npos) << out;
    EXPECT_NE(out.find("start step " + step + " restart " + std::to_string(warnings + 1)),
              std::string::npos)
        << out;
  }
  EXPECT_GE(warnings, 1) << "the job was never warned:\n" << out;
  EXPECT_EQ(count_of(out, "requeue after run"), static_cast<size_t>(warnings)) << out;
  const auto show = run_command("scontrol show job -o " + id, 30).out;
  EXPECT_NE(show.find("Restarts=" + std::to_string(warnings) + " "), std::string::npos) << show;

  // The end result is the uninterrupted computation's.
  uint64_t value = 1;
  for (int i = 0; i < steps; ++i) value = lcg(value);
  EXPECT_NE(out.find("done steps " + std::to_string(steps) + " value " + std::to_string(value)),
            std::string::npos)
      << out;
  std::printf("[preemption] %d warning(s), %d requeue(s), %.1f s from sbatch to completion\n",
              warnings, warnings, seconds);
}

}  // namespace

// Failure handling end to end: real mpirun jobs of failure_driver that stall, lose a rank to
// SIGKILL, or call mismatched collectives. Each must end every rank non-zero with a report naming
// the operation and its sequence number, within the watchdog timeout (+5 s for a stall), and
// leave no process behind.
#include <gtest/gtest.h>
#include <unistd.h>

#include <sys/wait.h>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "common/error.h"
#include "sharding/watchdog.h"

namespace {

struct Outcome {
  int exit_code = -1;
  std::string output;
  long long end_ms = 0;    // unix ms when mpirun returned
  long long enter_ms = 0;  // unix ms when rank 0 entered the collective that cannot complete
};

long long now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// A tag unique to one job, passed on the driver's command line, to find its processes later.
std::string unique_tag() {
  static int counter = 0;
  return "tessera-failure-" + std::to_string(getpid()) + "-" + std::to_string(++counter);
}

Outcome run_job(int np, const std::string& mode, const std::string& tag, double timeout_s,
                bool debug) {
  // `timeout` bounds the whole job should everything else fail, so the test itself never hangs.
  const std::string cmd = std::string("TESSERA_COMM_TIMEOUT=") + std::to_string(timeout_s) +
                          (debug ? " TESSERA_COMM_DEBUG=1" : "") + " TESSERA_NUM_THREADS=1" +
                          " timeout -k 5 60 " + TESSERA_MPIEXEC + " -np " + std::to_string(np) +
                          " --oversubscribe " + TESSERA_FAILURE_DRIVER + " --mode=" + mode +
                          " --tag=" + tag + " 2>&1";
  Outcome o;
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return o;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, pipe)) o.output.append(buf, n);
  const int status = pclose(pipe);
  o.end_ms = now_ms();
  o.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  if (auto p = o.output.find("enter-ms "); p != std::string::npos) {
    o.enter_ms = std::stoll(o.output.substr(p + 9));
  }
  return o;
}

// Processes whose command line carries `tag` (the job's leftovers), waiting up to 3 s for
// processes that are already exiting.
int leftover_processes(const std::string& tag) {
  int found = 0;
  for (int attempt = 0; attempt < 30; ++attempt) {
    found = 0;
    for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
      const std::string name = entry.path().filename();
      if (name.find_first_not_of("0123456789") != std::string::npos) continue;
      std::ifstream f(entry.path() / "cmdline");
      std::string cmdline((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
      if (cmdline.find(tag) != std::string::npos && std::stoi(name) != getpid()) ++found;
    }
    if (found == 0) return 0;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return found;
}

int count(const std::string& haystack, const std::string& needle) {
  int n = 0;
  for (size_t p = haystack.find(needle); p != std::string::npos; p = haystack.find(needle, p + 1)) {
    ++n;
  }
  return n;
}

class FailureTest : public ::testing::TestWithParam<int> {};

TEST_P(FailureTest, HealthyJobSucceeds) {
  const auto tag = unique_tag();
  const auto o = run_job(GetParam(), "ok", tag, 5.0, true);
  EXPECT_EQ(o.exit_code, 0) << o.output;
  EXPECT_EQ(leftover_processes(tag), 0);
}

TEST_P(FailureTest, StallIsReportedAndEveryRankExits) {
  const int np = GetParam();
  const double timeout_s = 2.0;
  const auto tag = unique_tag();
  const auto o = run_job(np, "stall", tag, timeout_s, false);
  EXPECT_NE(o.exit_code, 0) << o.output;
  ASSERT_GT(o.enter_ms, 0) << o.output;
  const long long took = o.end_ms - o.enter_ms;
  EXPECT_GE(took, static_cast<long long>(timeout_s * 1000) - 100) << "ended before the timeout";
  EXPECT_LE(took, static_cast<long long>((timeout_s + 5) * 1000)) << o.output;
  // Every rank that entered the collective reports rank, operation and sequence number.
  for (int r = 0; r < np; ++r) {
    if (r == 1) continue;  // the stalled rank
    const std::string line = "tessera: watchdog: rank " + std::to_string(r) + " (world rank " +
                             std::to_string(r) + "): all_reduce #3 (float32 x 1024)";
    EXPECT_NE(o.output.find(line), std::string::npos) << "missing: " << line << "\n" << o.output;
  }
  EXPECT_EQ(leftover_processes(tag), 0) << "processes left behind";
}

TEST_P(FailureTest, KilledRankEndsTheOthersWithinTheTimeout) {
  const int np = GetParam();
  const double timeout_s = 6.0;
  const auto tag = unique_tag();
  const auto o = run_job(np, "kill", tag, timeout_s, false);
  EXPECT_NE(o.exit_code, 0) << o.output;
  ASSERT_GT(o.enter_ms, 0) << o.output;
  EXPECT_LE(o.end_ms - o.enter_ms, static_cast<long long>(timeout_s * 1000)) << o.output;
  // The launcher names the dead rank; each survivor says what it was blocked in.
  EXPECT_NE(o.output.find("signal 9"), std::string::npos) << o.output;
  for (int r = 0; r < np; ++r) {
    if (r == 1) continue;  // the killed rank
    const std::string line = "while blocked in rank " + std::to_string(r) + " (world rank " +
                             std::to_string(r) + "): all_reduce #3";
    EXPECT_NE(o.output.find(line), std::string::npos) << "missing: " << line << "\n" << o.output;
  }
  EXPECT_EQ(leftover_processes(tag), 0) << "processes left behind";
}

TEST_P(FailureTest, MismatchIsReportedWithTheSequenceNumber) {
  const int np = GetParam();
  const auto tag = unique_tag();
  const auto o = run_job(np, "mismatch", tag, 10.0, true);
  EXPECT_NE(o.exit_code, 0) << o.output;
  const std::string msg =
      "collective mismatch on communicator 'world' at sequence #3: rank 0 called "
      "all_reduce(float32 x 1024, root -1) but rank 1 called all_gather(float32 x 1024, root -1)";
  // Reported by every rank, before anything could hang.
  EXPECT_EQ(count(o.output, msg), np) << o.output;
  EXPECT_LE(o.end_ms - o.enter_ms, 5000) << o.output;
  EXPECT_EQ(leftover_processes(tag), 0) << "processes left behind";
}

// The watchdog alone, in a forked child (no MPI): a wait past the timeout ends the process with
// kWatchdogExitCode and a report; a wait that finishes in time leaves the process alone.
struct ChildResult {
  int exit_code = -1;
  std::string stderr_text;
  double seconds = 0;
};

template <typename Body>
ChildResult run_child(Body&& body) {
  int fds[2];
  EXPECT_EQ(pipe(fds), 0);
  const auto t0 = std::chrono::steady_clock::now();
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], STDERR_FILENO);
    close(fds[0]);
    body();
    _exit(0);
  }
  close(fds[1]);
  ChildResult r;
  char buf[1024];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof buf)) > 0) r.stderr_text.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

tessera::sharding::OpDesc stalled_op() {
  tessera::sharding::OpDesc op;
  op.comm = "tp";
  op.op = "all_gather";
  op.dtype = "bfloat16";
  op.rank = 1;
  op.world_rank = 3;
  op.seq = 42;
  op.count = 4096;
  return op;
}

TEST(Watchdog, StalledWaitEndsTheProcessWithAReport) {
  using tessera::sharding::Watchdog;
  const auto r = run_child([] {
    Watchdog::global().set_timeout(std::chrono::milliseconds(300));
    auto scope = Watchdog::global().watch(stalled_op());
    std::this_thread::sleep_for(std::chrono::seconds(20));
  });
  EXPECT_EQ(r.exit_code, tessera::sharding::kWatchdogExitCode) << r.stderr_text;
  EXPECT_NE(r.stderr_text.find("tessera: watchdog: rank 3 (tp rank 1): all_gather #42 (bfloat16 "
                               "x 4096) did not complete within 0.3 s"),
            std::string::npos)
      << r.stderr_text;
  EXPECT_LT(r.seconds, 5.0);
}

TEST(Watchdog, FinishedWaitsAndDisabledWatchdogDoNotFire) {
  using tessera::sharding::Watchdog;
  const auto finished = run_child([] {
    Watchdog::global().set_timeout(std::chrono::milliseconds(200));
    { auto scope = Watchdog::global().watch(stalled_op()); }
    std::this_thread::sleep_for(std::chrono::milliseconds(600));
  });
  EXPECT_EQ(finished.exit_code, 0) << finished.stderr_text;
  const auto disabled = run_child([] {
    Watchdog::global().set_timeout(std::chrono::milliseconds(0));
    auto scope = Watchdog::global().watch(stalled_op());
    std::this_thread::sleep_for(std::chrono::milliseconds(600));
  });
  EXPECT_EQ(disabled.exit_code, 0) << disabled.stderr_text;
  EXPECT_THROW(Watchdog::global().set_timeout(std::chrono::milliseconds(-1)), tessera::Error);
}

// A timeout meant as "practically never" must not wrap the deadline (now + timeout in ns) into
// the past, which fired the watchdog on the first wait.
TEST(Watchdog, HugeTimeoutDoesNotFire) {
  using tessera::sharding::Watchdog;
  const auto huge = run_child([] {
    Watchdog::global().set_timeout(std::chrono::hours(24 * 365 * 1000));
    auto scope = Watchdog::global().watch(stalled_op());
    std::this_thread::sleep_for(std::chrono::milliseconds(600));
  });
  EXPECT_EQ(huge.exit_code, 0) << huge.stderr_text;
  EXPECT_EQ(huge.stderr_text.find("watchdog"), std::string::npos) << huge.stderr_text;
}

INSTANTIATE_TEST_SUITE_P(Ranks, FailureTest, ::testing::Values(2, 4),
                         [](const auto& info) { return "np" + std::to_string(info.param); });

}  // namespace

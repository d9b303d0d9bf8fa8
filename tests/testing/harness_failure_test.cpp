// Tessera::testing's promises, checked on real mpirun jobs of harness_test's demos: a failure on
// rank 1 alone fails the test on every rank (each rank's own JSON report says so), the other tests
// of the job still pass, and a test that hangs on one rank ends the job within its deadline with
// the test's name and the collective rank 1 is stuck in, instead of running into ctest's timeout.
#include <gtest/gtest.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <string>

#include "tests/support/subprocess.h"

namespace {

using tessera::testing::env_or_die;
using tessera::testing::run_command;

std::string job(int np, const std::string& env_and_args) {
  return env_or_die("MPIEXEC") + " -np " + std::to_string(np) + " --oversubscribe " +
         env_or_die("HARNESS_TEST_BIN") + " --gtest_color=no --gtest_also_run_disabled_tests " +
         env_and_args;
}

// The test's entry in a GoogleTest JSON report: {"name", "failures": [...], ...}.
nlohmann::json find_test(const nlohmann::json& report, const std::string& suite,
                         const std::string& name) {
  for (const auto& s : report["testsuites"]) {
    if (s["name"] != suite) continue;
    for (const auto& t : s["testsuite"]) {
      if (t["name"] == name) return t;
    }
  }
  return nullptr;
}

class HarnessFailure : public ::testing::TestWithParam<int> {};

TEST_P(HarnessFailure, FailureOnRankOneFailsTheTestOnEveryRank) {
  const int np = GetParam();
  const auto dir = std::filesystem::temp_directory_path() /
                   ("tessera-harness-" + std::to_string(getpid()) + "-" + std::to_string(np));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const auto r = run_command(
      job(np,
          "--gtest_filter='HarnessDemo.DISABLED_FailsOnRankOne:HarnessDemo.DISABLED_Passes*' "
          "--gtest_output=json:" +
              (dir / "report.json").string()),
      120);
  EXPECT_NE(r.exit_code, 0) << r.out << r.err;
  // Rank 1's own message, tagged; rank 0's report names the failing rank.
  EXPECT_NE(r.err.find("[rank 1] HarnessDemo.DISABLED_FailsOnRankOne:"), std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("deliberate failure on rank 1 only"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("[  FAILED  ] HarnessDemo.DISABLED_FailsOnRankOne"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("failed on rank(s) 1 "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[       OK ] HarnessDemo.DISABLED_PassesEverywhere"), std::string::npos)
      << r.out;
  // Every rank wrote its own report, and in each the test failed and the other passed.
  for (int rank = 0; rank < np; ++rank) {
    const auto path = dir / ("report.rank" + std::to_string(rank) + ".json");
    std::ifstream in(path);
    ASSERT_TRUE(in.good()) << "no report " << path << "\n" << r.out << r.err;
    const auto report = nlohmann::json::parse(in);
    const auto failing = find_test(report, "HarnessDemo", "DISABLED_FailsOnRankOne");
    ASSERT_FALSE(failing.is_null()) << report.dump(1);
    ASSERT_TRUE(failing.contains("failures")) << "rank " << rank << ": " << failing.dump(1);
    EXPECT_FALSE(failing["failures"].empty()) << "rank " << rank;
    const auto passing = find_test(report, "HarnessDemo", "DISABLED_PassesEverywhere");
    ASSERT_FALSE(passing.is_null());
    EXPECT_FALSE(passing.contains("failures")) << "rank " << rank << ": " << passing.dump(1);
  }
  std::filesystem::remove_all(dir);
}

TEST_P(HarnessFailure, HangOnOneRankEndsTheJobWithinTheDeadlineNamingTheTest) {
  const int np = GetParam();
  const double deadline_s = 3.0;
  // No TESSERA_COMM_TIMEOUT: the harness keeps the collective watchdog behind the deadline, so
  // what ends the job is the deadline. ctest's timeout (and `timeout 120` here) would be the
  // alternative.
  const auto r = run_command(
      "HARNESS_DEMO_DEADLINE_MS=" + std::to_string(static_cast<int>(deadline_s * 1000)) + " " +
          job(np, "--gtest_filter=HarnessDemo.DISABLED_HangsOnRankOne"),
      120);
  const std::string all = r.out + r.err;
  EXPECT_NE(r.exit_code, 0) << all;
  EXPECT_NE(r.exit_code, 124) << "the job ran into the outer timeout: " << all;
  // Start-up of np processes plus the deadline: well under the 70 s a hung collective would take.
  EXPECT_LT(r.seconds, deadline_s + 20) << all;
  EXPECT_NE(all.find("HarnessDemo.DISABLED_HangsOnRankOne passed its deadline of 3.0 s"),
            std::string::npos)
      << all;
  // Rank 1 says where it is stuck: the all-reduce no one else joined.
  EXPECT_NE(all.find("[rank 1] tessera::testing: HarnessDemo.DISABLED_HangsOnRankOne passed its "
                     "deadline of 3.0 s in the test body; blocked in: rank 1 (world rank 1): "
                     "all_reduce"),
            std::string::npos)
      << all;
}

INSTANTIATE_TEST_SUITE_P(Np, HarnessFailure, ::testing::Values(2, 4),
                         [](const auto& info) { return "np" + std::to_string(info.param); });

}  // namespace

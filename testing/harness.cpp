#include "testing/harness.h"

#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/device.h"
#include "common/error.h"
#include "sharding/communicator.h"
#include "sharding/mpi/mpi_env.h"
#include "sharding/watchdog.h"
#ifdef TESSERA_WITH_NCCL
#include "sharding/nccl/nccl_communicator.h"
#endif

namespace tessera::testing {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds kDefaultDeadline{60'000};
// A collective's own watchdog fires this much after the test deadline, so that a hung collective
// is reported by the deadline (which names the test) rather than by the watchdog (which cannot).
constexpr milliseconds kWatchdogMargin{10'000};

// Never destroyed: the deadline thread may run during static destruction.
struct State {
  launch::World world;
  bool ready = false;
  MPI_Comm agree = MPI_COMM_NULL;  // the harness's own messages never meet the tests'
  milliseconds default_deadline = kDefaultDeadline;
  bool watchdog_from_env = false;

  std::mutex mu;  // guards the fields below (the deadline thread reads them)
  std::string test;
  Clock::time_point start;
  milliseconds deadline{0};
  bool armed = false;
  bool agreeing = false;  // the test body ended here; waiting for the other ranks
};

State& state() {
  static State* s = new State;
  return *s;
}

void write_stderr(const std::string& s) {
  const char* p = s.data();
  size_t n = s.size();
  while (n > 0) {
    const ssize_t w = ::write(STDERR_FILENO, p, n);
    if (w <= 0) return;
    p += w;
    n -= static_cast<size_t>(w);
  }
}

std::string tag() {
  const auto& w = state().world;
  return w.size > 1 ? "[rank " + std::to_string(w.rank) + "] " : "";
}

std::string seconds_str(milliseconds ms) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f s", static_cast<double>(ms.count()) / 1000.0);
  return buf;
}

// Seconds from a flag or variable value; throws naming `name` when it is not a number >= 0.
milliseconds parse_seconds(const char* name, const std::string& value) {
  char* end = nullptr;
  const double s = std::strtod(value.c_str(), &end);
  TESSERA_CHECK(!value.empty() && end != nullptr && *end == '\0' && s >= 0 && s < 1e9, name,
                " must be a number of seconds >= 0, got '", value, "'");
  return milliseconds(static_cast<int64_t>(s * 1000.0));
}

void deadline_loop() {
  State& st = state();
  for (;;) {
    std::this_thread::sleep_for(milliseconds(20));
    std::string line;
    {
      std::lock_guard<std::mutex> lock(st.mu);
      if (!st.armed || st.deadline.count() <= 0 || Clock::now() < st.start + st.deadline) continue;
      line = tag() + "tessera::testing: " + st.test + " passed its deadline of " +
             seconds_str(st.deadline);
      if (st.agreeing) {
        line += ": finished on this rank, still waiting for the other ranks to finish it";
      } else {
        line += " in the test body";
        const auto in_flight = sharding::Watchdog::global().in_flight();
        for (size_t i = 0; i < in_flight.size(); ++i) {
          line += (i == 0 ? "; blocked in: " : ", ") + in_flight[i];
        }
      }
      line += "; ending the job (exit " + std::to_string(kDeadlineExitCode) + ")\n";
    }
    write_stderr(line);
    // Not MPI_Abort: MPI may be what hangs. A non-zero exit makes mpirun / srun end the others.
    std::_Exit(kDeadlineExitCode);
  }
}

// Rank 0's report: GoogleTest's own, with failed assertions tagged by rank when there are several.
class TaggedPrinter : public ::testing::TestEventListener {
 public:
  explicit TaggedPrinter(::testing::TestEventListener* inner) : inner_(inner) {}
  ~TaggedPrinter() override { delete inner_; }

  void OnTestProgramStart(const ::testing::UnitTest& u) override { inner_->OnTestProgramStart(u); }
  void OnTestIterationStart(const ::testing::UnitTest& u, int i) override {
    inner_->OnTestIterationStart(u, i);
  }
  void OnEnvironmentsSetUpStart(const ::testing::UnitTest& u) override {
    inner_->OnEnvironmentsSetUpStart(u);
  }
  void OnEnvironmentsSetUpEnd(const ::testing::UnitTest& u) override {
    inner_->OnEnvironmentsSetUpEnd(u);
  }
  void OnTestSuiteStart(const ::testing::TestSuite& s) override { inner_->OnTestSuiteStart(s); }
  void OnTestStart(const ::testing::TestInfo& t) override { inner_->OnTestStart(t); }
  void OnTestDisabled(const ::testing::TestInfo& t) override { inner_->OnTestDisabled(t); }
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed() || state().world.size == 1) return inner_->OnTestPartResult(r);
    std::fprintf(stdout, "%s%s:%d: Failure\n%s\n", tag().c_str(),
                 r.file_name() ? r.file_name() : "unknown file", r.line_number(), r.message());
    std::fflush(stdout);
  }
  void OnTestEnd(const ::testing::TestInfo& t) override { inner_->OnTestEnd(t); }
  void OnTestSuiteEnd(const ::testing::TestSuite& s) override { inner_->OnTestSuiteEnd(s); }
  void OnEnvironmentsTearDownStart(const ::testing::UnitTest& u) override {
    inner_->OnEnvironmentsTearDownStart(u);
  }
  void OnEnvironmentsTearDownEnd(const ::testing::UnitTest& u) override {
    inner_->OnEnvironmentsTearDownEnd(u);
  }
  void OnTestIterationEnd(const ::testing::UnitTest& u, int i) override {
    inner_->OnTestIterationEnd(u, i);
  }
  void OnTestProgramEnd(const ::testing::UnitTest& u) override { inner_->OnTestProgramEnd(u); }

 private:
  ::testing::TestEventListener* inner_;
};

// The other ranks' report: only their own failed assertions, tagged with the rank and the test.
class FailuresOnly : public ::testing::EmptyTestEventListener {
 public:
  // Remembered here: UnitTest::current_test_info() takes the lock that gtest holds while it
  // reports a result.
  void OnTestStart(const ::testing::TestInfo& info) override {
    test_ = std::string(info.test_suite_name()) + "." + info.name();
  }
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed() || quiet_) return;
    std::fprintf(stderr, "%s%s: %s:%d: Failure\n%s\n", tag().c_str(), test_.c_str(),
                 r.file_name() ? r.file_name() : "?", r.line_number(), r.message());
  }
  // The agreed failure that a passing rank records is not news on the other ranks' output.
  void set_quiet(bool quiet) { quiet_ = quiet; }

 private:
  std::string test_;
  bool quiet_ = false;
};

// Arms the deadline when a test starts; when it ends, agrees with the other ranks on the outcome
// and fails the test here too if it failed anywhere. Appended after the printer, it sees
// OnTestEnd first (GoogleTest calls the end events in reverse order), so a failure it records is
// part of the test's result when the printer and the XML / JSON reports read it.
class Agreement : public ::testing::EmptyTestEventListener {
 public:
  explicit Agreement(FailuresOnly* quiet_printer) : quiet_printer_(quiet_printer) {}

  void OnTestStart(const ::testing::TestInfo& info) override {
    State& st = state();
    std::lock_guard<std::mutex> lock(st.mu);
    st.test = std::string(info.test_suite_name()) + "." + info.name();
    st.deadline = st.default_deadline;
    // The previous test may have moved the collective watchdog with set_test_deadline.
    if (!st.watchdog_from_env && st.default_deadline.count() > 0) {
      sharding::Watchdog::global().set_timeout(st.default_deadline + kWatchdogMargin);
    }
    st.start = Clock::now();
    st.agreeing = false;
    st.armed = true;
  }

  void OnTestEnd(const ::testing::TestInfo& info) override {
    State& st = state();
    {
      std::lock_guard<std::mutex> lock(st.mu);
      st.agreeing = true;
    }
    const bool failed_here = info.result() != nullptr && info.result()->Failed();
    std::vector<int> failed(st.world.size, 0);
    int mine = failed_here ? 1 : 0;
    if (st.world.size > 1) {
      const int rc = MPI_Allgather(&mine, 1, MPI_INT, failed.data(), 1, MPI_INT, st.agree);
      if (rc != MPI_SUCCESS) {
        write_stderr(tag() + "tessera::testing: lost the other ranks after " + st.test + "\n");
        std::_Exit(1);
      }
    } else {
      failed[0] = mine;
    }
    {
      std::lock_guard<std::mutex> lock(st.mu);
      st.armed = false;
    }
    std::string ranks;
    for (int r = 0; r < st.world.size; ++r) {
      if (failed[r]) ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
    }
    if (failed_here || ranks.empty()) return;
    // Attributed to the test's own definition, so the report points at the test.
    if (quiet_printer_) quiet_printer_->set_quiet(true);
    GTEST_MESSAGE_AT_(info.file(), info.line(),
                      (std::string(info.test_suite_name()) + "." + info.name() +
                       " failed on rank(s) " + ranks + " (their failures are tagged [rank N])")
                          .c_str(),
                      ::testing::TestPartResult::kNonFatalFailure);
    if (quiet_printer_) quiet_printer_->set_quiet(false);
  }

 private:
  FailuresOnly* quiet_printer_;
};

// NCCL for device tensors when every rank has a GPU of its own (NCCL refuses two ranks on one
// GPU: tests run with more ranks than a machine has GPUs then use MPI and CPU tensors).
void use_nccl_where_every_rank_has_a_gpu(launch::World& w) {
#ifdef TESSERA_WITH_NCCL
  int mine = w.device >= 0 && w.local_size <= query_devices().count ? 1 : 0;
  int all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (all) w.device_comm = std::make_shared<sharding::NcclCommunicator>(MPI_COMM_WORLD, w.device);
#else
  (void)w;
#endif
}

// --tessera_test_deadline=S is ours: read it and take it out of argv.
void take_own_flags(int* argc, char** argv, std::string& deadline) {
  static constexpr char kFlag[] = "--tessera_test_deadline=";
  int out = 1;
  for (int i = 1; i < *argc; ++i) {
    if (std::strncmp(argv[i], kFlag, sizeof kFlag - 1) == 0) {
      deadline = argv[i] + sizeof kFlag - 1;
    } else {
      argv[out++] = argv[i];
    }
  }
  *argc = out;
  argv[out] = nullptr;
}

// One report file per rank: out.xml -> out.rank<r>.xml; a folder (out/) gets <program>.rank<r>.xml.
std::string per_rank_output(const std::string& value, int rank, const std::string& program) {
  const auto colon = value.find(':');
  const std::string format = colon == std::string::npos ? value : value.substr(0, colon);
  std::string path = colon == std::string::npos ? "" : value.substr(colon + 1);
  const std::string suffix = ".rank" + std::to_string(rank);
  if (path.empty() || path.back() == '/') {
    std::string base = program;
    if (auto slash = base.rfind('/'); slash != std::string::npos) base = base.substr(slash + 1);
    path += base + suffix + "." + format;
  } else {
    const auto dot = path.rfind('.');
    const auto slash = path.rfind('/');
    if (dot != std::string::npos && (slash == std::string::npos || dot > slash)) {
      path.insert(dot, suffix);
    } else {
      path += suffix;
    }
  }
  return format + ":" + path;
}

// GoogleTest opens its report when it parses its flags: rewrite --gtest_output (or GTEST_OUTPUT)
// before InitGoogleTest, so that the ranks do not all write one file.
void per_rank_outputs(int argc, char** argv, int rank) {
  static constexpr char kFlag[] = "--gtest_output=";
  static std::vector<std::string> storage;  // argv keeps pointing at these
  storage.reserve(static_cast<size_t>(argc));
  const std::string program = argc > 0 ? argv[0] : "test";
  bool in_argv = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], kFlag, sizeof kFlag - 1) != 0) continue;
    storage.push_back(kFlag + per_rank_output(argv[i] + sizeof kFlag - 1, rank, program));
    argv[i] = storage.back().data();
    in_argv = true;
  }
  const char* env = std::getenv("GTEST_OUTPUT");
  if (!in_argv && env != nullptr && *env != '\0') {
    ::setenv("GTEST_OUTPUT", per_rank_output(env, rank, program).c_str(), 1);
  }
}

// A shuffled order must be the same order on every rank: rank 0's seed everywhere.
void agree_on_seed(MPI_Comm comm, int rank) {
  if (!GTEST_FLAG_GET(shuffle)) return;
  int seed = GTEST_FLAG_GET(random_seed);
  if (seed == 0 && rank == 0) {
    const auto now = std::chrono::system_clock::now().time_since_epoch();
    seed = static_cast<int>(std::chrono::duration_cast<milliseconds>(now).count() % 99998) + 1;
  }
  MPI_Bcast(&seed, 1, MPI_INT, 0, comm);
  GTEST_FLAG_SET(random_seed, seed);
}

}  // namespace

int run_all_tests(int* argc, char** argv) {
  State& st = state();
  std::string deadline_flag;
  take_own_flags(argc, argv, deadline_flag);

  try {
    st.world = launch::bootstrap_world(argc, &argv);
    use_nccl_where_every_rank_has_a_gpu(st.world);
  } catch (const CollectiveError& e) {
    // Every rank raised it together: one report.
    if (launch::job_rank() == 0) {
      std::fprintf(stderr, "tessera::testing: error: %s\n", e.message().c_str());
    }
    sharding::mpi::finalize();
    return 1;
  } catch (const Error& e) {
    std::fprintf(stderr, "tessera::testing: error: %s\n", e.message().c_str());
    if (sharding::mpi::initialized() && sharding::mpi::world_size() > 1) {
      sharding::mpi::abort_world(1);
    }
    return 1;
  }
  st.ready = true;
  const int rank = st.world.rank;
  const int size = st.world.size;
  if (size > 1) per_rank_outputs(*argc, argv, rank);
  ::testing::InitGoogleTest(argc, argv);

  std::string err;
  try {
    const char* env = std::getenv("TESSERA_TEST_DEADLINE");
    if (!deadline_flag.empty()) {
      st.default_deadline = parse_seconds("--tessera_test_deadline", deadline_flag);
    } else if (env != nullptr && *env != '\0') {
      st.default_deadline = parse_seconds("TESSERA_TEST_DEADLINE", env);
    }
  } catch (const Error& e) {
    err = e.message();
  }
  // Every rank parsed the same arguments; one line for the job.
  if (!err.empty()) {
    if (rank == 0) std::fprintf(stderr, "tessera::testing: error: %s\n", err.c_str());
    launch::shutdown_world(st.world);
    return 2;
  }
  const char* comm_timeout = std::getenv("TESSERA_COMM_TIMEOUT");
  st.watchdog_from_env = comm_timeout != nullptr && *comm_timeout != '\0';
  if (!st.watchdog_from_env && st.default_deadline.count() > 0) {
    sharding::Watchdog::global().set_timeout(st.default_deadline + kWatchdogMargin);
  }

  MPI_Comm_dup(MPI_COMM_WORLD, &st.agree);
  agree_on_seed(st.agree, rank);

  auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
  FailuresOnly* failures_only = nullptr;
  if (rank == 0) {
    listeners.Append(new TaggedPrinter(listeners.Release(listeners.default_result_printer())));
  } else {
    delete listeners.Release(listeners.default_result_printer());
    failures_only = new FailuresOnly;
    listeners.Append(failures_only);
  }
  listeners.Append(new Agreement(failures_only));
  std::thread(deadline_loop).detach();

  const int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  int any_failed = failed;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, st.agree);
  if (failed && size > 1) std::fprintf(stderr, "%ssome tests FAILED\n", tag().c_str());
  MPI_Comm_free(&st.agree);
  st.ready = false;
  launch::shutdown_world(st.world);
  return any_failed;
}

const launch::World& world() {
  TESSERA_CHECK(state().ready,
                "tessera::testing::world() is available inside tests run by "
                "tessera::testing::run_all_tests (link Tessera::testing's main)");
  return state().world;
}

int rank() { return world().rank; }
int size() { return world().size; }

sharding::Communicator& cpu_comm() { return *world().comm; }

sharding::Communicator& comm() {
  const auto& w = world();
  return w.device_comm ? *w.device_comm : *w.comm;
}

void set_test_deadline(std::chrono::milliseconds deadline) {
  TESSERA_CHECK(deadline.count() >= 0, "test deadline must be >= 0 ms, got ", deadline.count());
  State& st = state();
  {
    std::lock_guard<std::mutex> lock(st.mu);
    st.deadline = deadline;
  }
  // Keep the collective watchdog behind the deadline, so the deadline's report (naming the test)
  // comes first.
  if (!st.watchdog_from_env) {
    auto& wd = sharding::Watchdog::global();
    if (deadline.count() == 0) {
      wd.set_timeout(milliseconds(0));
    } else if (wd.timeout().count() == 0 || wd.timeout() < deadline + kWatchdogMargin) {
      wd.set_timeout(deadline + kWatchdogMargin);
    }
  }
}

std::chrono::milliseconds test_deadline() {
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mu);
  return st.deadline;
}

}  // namespace tessera::testing

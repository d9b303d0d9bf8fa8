#include "sharding/watchdog.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>

#include "common/error.h"

namespace tessera::sharding {

namespace {

using Clock = std::chrono::steady_clock;

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

// Fixed slots so that both the watchdog thread and a signal handler read them without locks or
// allocation. A slot is free while `deadline_ns` is 0; its op is written before the deadline is
// published (release) and read after it is seen (acquire).
constexpr int kSlots = 64;
struct Slot {
  std::atomic<int64_t> deadline_ns{0};
  std::atomic<bool> claimed{false};
  OpDesc op;  // formatted only when reported, so that watching costs no formatting
};

// A century: any longer timeout is "never" in practice, and the deadline in nanoseconds since the
// clock's epoch must stay far from INT64_MAX.
constexpr double kMaxTimeoutSeconds = 100.0 * 365 * 24 * 3600;

struct State {
  std::array<Slot, kSlots> slots;
  std::atomic<int64_t> timeout_ms{300'000};
  std::once_flag thread_started;
};

// Never destroyed: the detached thread and signal handlers may run during static destruction.
State& state() {
  static State* s = [] {
    auto* st = new State;
    if (const char* env = std::getenv("TESSERA_COMM_TIMEOUT"); env && *env) {
      char* end = nullptr;
      const double seconds = std::strtod(env, &end);
      TESSERA_CHECK(end != env && *end == '\0' && seconds >= 0,
                    "TESSERA_COMM_TIMEOUT must be a non-negative number of seconds, got '", env,
                    "'");
      // Capped before the conversion: a double beyond int64 (1e300, inf) does not convert.
      st->timeout_ms = static_cast<int64_t>(std::min(seconds, kMaxTimeoutSeconds) * 1000.0);
    }
    return st;
  }();
  return *s;
}

void write_all(const char* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(STDERR_FILENO, p, n);
    if (w <= 0) return;
    p += w;
    n -= static_cast<size_t>(w);
  }
}

void watchdog_loop() {
  State& st = state();
  for (;;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    const int64_t now = now_ns();
    for (auto& slot : st.slots) {
      const int64_t deadline = slot.deadline_ns.load(std::memory_order_acquire);
      if (deadline == 0 || now < deadline) continue;
      char line[512];
      const std::string what = describe(slot.op);
      const int n = std::snprintf(line, sizeof line,
                                  "tessera: watchdog: %s did not complete within %.1f s "
                                  "(TESSERA_COMM_TIMEOUT); aborting the job\n",
                                  what.c_str(), static_cast<double>(st.timeout_ms.load()) / 1000.0);
      write_all(line, static_cast<size_t>(std::min<int>(n, sizeof line - 1)));
      // Not MPI_Abort: MPI may be the thing that hangs, and this thread may not call MPI. A
      // non-zero exit makes mpirun / srun end the other ranks.
      std::_Exit(kWatchdogExitCode);
    }
  }
}

void on_signal(int sig) {
  State& st = state();
  bool reported = false;
  for (auto& slot : st.slots) {
    if (slot.deadline_ns.load(std::memory_order_acquire) == 0) continue;
    // Formatting is not async-signal-safe in theory; the process exits right after, and a report
    // is worth more than that risk here.
    char line[512];
    const std::string what = describe(slot.op);
    const int n = std::snprintf(line, sizeof line,
                                "tessera: terminated by signal %d while blocked in %s (a peer "
                                "rank probably failed or was killed)\n",
                                sig, what.c_str());
    write_all(line, static_cast<size_t>(std::min<int>(n, sizeof line - 1)));
    reported = true;
  }
  if (!reported) {
    // Not inside a collective: behave as if no handler were installed.
    ::signal(sig, SIG_DFL);
    ::raise(sig);
  }
  std::_Exit(128 + sig);
}

}  // namespace

std::string describe(const OpDesc& op) {
  char buf[320];
  int n = std::snprintf(buf, sizeof buf, "rank %d (%s rank %d): %s #%llu (%s x %lld", op.world_rank,
                        op.comm, op.rank, op.op, static_cast<unsigned long long>(op.seq), op.dtype,
                        static_cast<long long>(op.count));
  n = std::min<int>(n, sizeof buf - 1);
  if (op.peer >= 0) {
    n += std::snprintf(buf + n, sizeof buf - n, ", peer %d", op.peer);
    n = std::min<int>(n, sizeof buf - 1);
  }
  std::string s(buf, static_cast<size_t>(n));
  return s + ")";
}

Watchdog& Watchdog::global() {
  static Watchdog instance;
  return instance;
}

Watchdog::Watchdog() { state(); }

void Watchdog::set_timeout(std::chrono::milliseconds timeout) {
  TESSERA_CHECK(timeout.count() >= 0, "watchdog timeout must be >= 0 ms, got ", timeout.count());
  // Longer than a century means never; capping keeps now + timeout from overflowing (a wrapped,
  // negative deadline would fire at once).
  state().timeout_ms =
      std::min<int64_t>(timeout.count(), static_cast<int64_t>(kMaxTimeoutSeconds * 1000.0));
}

std::chrono::milliseconds Watchdog::timeout() const {
  return std::chrono::milliseconds(state().timeout_ms.load());
}

Watchdog::Scope Watchdog::watch(const OpDesc& op) {
  State& st = state();
  const int64_t timeout_ms = st.timeout_ms.load();
  if (timeout_ms <= 0) return Scope(-1);
  std::call_once(st.thread_started, [] { std::thread(watchdog_loop).detach(); });
  for (int i = 0; i < kSlots; ++i) {
    bool expected = false;
    if (!st.slots[i].claimed.compare_exchange_strong(expected, true)) continue;
    Slot& slot = st.slots[i];
    slot.op = op;
    slot.deadline_ns.store(now_ns() + timeout_ms * 1'000'000, std::memory_order_release);
    return Scope(i);
  }
  // More than kSlots concurrent waits: unwatched rather than failing the operation.
  return Scope(-1);
}

Watchdog::Scope::~Scope() {
  if (slot_ < 0) return;
  Slot& slot = state().slots[slot_];
  slot.deadline_ns.store(0, std::memory_order_release);
  slot.claimed.store(false, std::memory_order_release);
}

void Watchdog::install_signal_report() {
  static std::once_flag once;
  std::call_once(once, [] {
    state();
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
  });
}

}  // namespace tessera::sharding

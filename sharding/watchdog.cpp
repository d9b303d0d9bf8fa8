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
#include <type_traits>

#include "common/error.h"

namespace tessera::sharding {

namespace {

using Clock = std::chrono::steady_clock;

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

// What a slot holds: the OpDesc with its strings copied, so that the report never follows a pointer
// into a communicator that has since been destroyed.
struct Record {
  char comm[64];
  char op[32];
  char dtype[16];
  int32_t rank;
  int32_t world_rank;
  int32_t peer;
  int32_t unused;
  uint64_t seq;
  int64_t count;
};
static_assert(std::is_trivially_copyable_v<Record> && sizeof(Record) % sizeof(uint64_t) == 0);
constexpr int kWords = sizeof(Record) / sizeof(uint64_t);

template <size_t N>
void copy_label(char (&dst)[N], const char* src) {
  size_t i = 0;
  for (; src != nullptr && src[i] != '\0' && i + 1 < N; ++i) dst[i] = src[i];
  std::memset(dst + i, 0, N - i);
}

Record to_record(const OpDesc& op) {
  Record r{};
  copy_label(r.comm, op.comm);
  copy_label(r.op, op.op);
  copy_label(r.dtype, op.dtype);
  r.rank = op.rank;
  r.world_rank = op.world_rank;
  r.peer = op.peer;
  r.seq = op.seq;
  r.count = op.count;
  return r;
}

// "rank 1 (tp rank 0): all_reduce #17 (float32 x 1024, peer 2)" into buf; returns the length
// written (cut to size - 1). No allocation: also called from a signal handler.
int format_op(const char* comm, const char* op, const char* dtype, int rank, int world_rank,
              uint64_t seq, int64_t count, int peer, char* buf, size_t size) {
  auto str = [](const char* p) { return p ? p : ""; };
  const int n =
      peer >= 0 ? std::snprintf(buf, size, "rank %d (%s rank %d): %s #%llu (%s x %lld, peer %d)",
                                world_rank, str(comm), rank, str(op),
                                static_cast<unsigned long long>(seq), str(dtype),
                                static_cast<long long>(count), peer)
                : std::snprintf(buf, size, "rank %d (%s rank %d): %s #%llu (%s x %lld)", world_rank,
                                str(comm), rank, str(op), static_cast<unsigned long long>(seq),
                                str(dtype), static_cast<long long>(count));
  return std::clamp<int>(n, 0, static_cast<int>(size) - 1);
}

int format_record(const Record& r, char* buf, size_t size) {
  return format_op(r.comm, r.op, r.dtype, r.rank, r.world_rank, r.seq, r.count, r.peer, buf, size);
}

// Fixed slots so that both the watchdog thread and a signal handler read them without locks or
// allocation. A slot is free while `deadline_ns` is 0. Its record is a sequence lock: the owning
// thread makes `gen` odd, stores the words, makes `gen` even again and then publishes the
// deadline; a reader keeps a copy only if `gen` was even and unchanged around it and the deadline
// it started from is still the slot's, so a wait that ends (and a new one that takes the slot)
// while the report is being written can never produce a half-old, half-new description.
constexpr int kSlots = 64;
struct Slot {
  std::atomic<int64_t> deadline_ns{0};
  std::atomic<bool> claimed{false};
  std::atomic<uint64_t> gen{0};
  std::array<std::atomic<uint64_t>, kWords> words{};
};

// Called only by the thread that claimed the slot.
void write_slot(Slot& slot, const Record& r, int64_t deadline_ns) {
  uint64_t w[kWords];
  std::memcpy(w, &r, sizeof r);
  const uint64_t g = slot.gen.load(std::memory_order_relaxed);
  slot.gen.store(g + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  for (int i = 0; i < kWords; ++i) slot.words[i].store(w[i], std::memory_order_relaxed);
  slot.gen.store(g + 2, std::memory_order_release);
  slot.deadline_ns.store(deadline_ns, std::memory_order_release);
}

// A consistent copy of the slot's current wait, or false when it is free or changing. Never waits.
bool read_slot(const Slot& slot, Record& out, int64_t& deadline_out) {
  const int64_t deadline = slot.deadline_ns.load(std::memory_order_acquire);
  if (deadline == 0) return false;
  const uint64_t g1 = slot.gen.load(std::memory_order_acquire);
  if (g1 & 1) return false;
  uint64_t w[kWords];
  for (int i = 0; i < kWords; ++i) w[i] = slot.words[i].load(std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_acquire);
  if (slot.gen.load(std::memory_order_relaxed) != g1) return false;
  if (slot.deadline_ns.load(std::memory_order_relaxed) != deadline) return false;
  std::memcpy(&out, w, sizeof out);
  deadline_out = deadline;
  return true;
}

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
    for (const auto& slot : st.slots) {
      Record r;
      int64_t deadline = 0;
      // A slot that is changing right now is looked at again on the next tick.
      if (!read_slot(slot, r, deadline) || now < deadline) continue;
      char what[320];
      format_record(r, what, sizeof what);
      char line[512];
      const int n = std::snprintf(line, sizeof line,
                                  "tessera: watchdog: %s did not complete within %.1f s "
                                  "(TESSERA_COMM_TIMEOUT); aborting the job\n",
                                  what, static_cast<double>(st.timeout_ms.load()) / 1000.0);
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
  for (const auto& slot : st.slots) {
    Record r;
    int64_t deadline = 0;
    // The interrupted thread may be half-way through writing a slot: skipped, never waited for.
    if (!read_slot(slot, r, deadline)) continue;
    // snprintf is not async-signal-safe in theory (no allocation happens here); the process exits
    // right after, and a report is worth more than that risk.
    char what[320];
    format_record(r, what, sizeof what);
    char line[512];
    const int n = std::snprintf(line, sizeof line,
                                "tessera: terminated by signal %d while blocked in %s (a peer "
                                "rank probably failed or was killed)\n",
                                sig, what);
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
  // The same line as the watchdog's, with the labels in full (the watchdog's record cuts them).
  auto len = [](const char* p) { return p ? std::strlen(p) : 0; };
  std::string s(len(op.comm) + len(op.op) + len(op.dtype) + 128, '\0');
  s.resize(static_cast<size_t>(format_op(op.comm, op.op, op.dtype, op.rank, op.world_rank, op.seq,
                                         op.count, op.peer, s.data(), s.size())));
  return s;
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
    write_slot(st.slots[i], to_record(op), now_ns() + timeout_ms * 1'000'000);
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

std::vector<std::string> Watchdog::in_flight() const {
  std::vector<std::string> out;
  for (const auto& slot : state().slots) {
    Record r;
    int64_t deadline = 0;
    if (!read_slot(slot, r, deadline)) continue;
    char buf[320];
    const int n = format_record(r, buf, sizeof buf);
    out.emplace_back(buf, static_cast<size_t>(n));
  }
  return out;
}

void Watchdog::install_signal_report() {
  static std::once_flag once;
  std::call_once(once, [] {
    state();
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    for (int sig : {SIGTERM, SIGINT}) {
      // A handler the program installed first (launch/signals: stop gracefully) stays; it hands a
      // second signal on to the default action.
      struct sigaction current {};
      if (sigaction(sig, nullptr, &current) == 0 && !(current.sa_flags & SA_SIGINFO) &&
          current.sa_handler == SIG_DFL) {
        sigaction(sig, &sa, nullptr);
      }
    }
  });
}

}  // namespace tessera::sharding

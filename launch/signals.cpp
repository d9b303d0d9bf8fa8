#include "launch/signals.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>

#include "common/error.h"

namespace tessera::launch::signals {

namespace {

constexpr int kSignals[] = {SIGUSR1, SIGTERM, SIGINT};
constexpr int kCount = sizeof kSignals / sizeof kSignals[0];

// Plain globals with lock-free atomics: the handler touches nothing else (no allocation, no lock).
std::atomic<uint64_t> g_counts[kCount];
std::atomic<pid_t> g_senders[kCount];
std::atomic<bool> g_installed{false};
int g_pipe[2] = {-1, -1};
struct sigaction g_previous[kCount];
static_assert(std::atomic<uint64_t>::is_always_lock_free && std::atomic<pid_t>::is_always_lock_free,
              "signal handlers need lock-free atomics");

int index_of(int signo) {
  for (int i = 0; i < kCount; ++i) {
    if (kSignals[i] == signo) return i;
  }
  return -1;
}

// A second stop signal: what was there before us (the watchdog's report), else the default.
void chain(int i, int signo, siginfo_t* info, void* context) {
  const struct sigaction& prev = g_previous[i];
  if (prev.sa_flags & SA_SIGINFO) {
    if (prev.sa_sigaction != nullptr) prev.sa_sigaction(signo, info, context);
    return;
  }
  if (prev.sa_handler == SIG_IGN) return;
  if (prev.sa_handler == SIG_DFL) {
    // Blocked while this handler runs: delivered, with the default action, when it returns.
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(signo, &dfl, nullptr);
    raise(signo);
    return;
  }
  prev.sa_handler(signo);
}

void on_signal(int signo, siginfo_t* info, void* context) {
  const int saved_errno = errno;
  const int i = index_of(signo);
  if (i >= 0) {
    const bool stop_pending = signo != SIGUSR1 && (g_counts[index_of(SIGTERM)].load() > 0 ||
                                                   g_counts[index_of(SIGINT)].load() > 0);
    if (stop_pending) {
      chain(i, signo, info, context);
    } else {
      g_senders[i].store(info != nullptr ? info->si_pid : 0);
      g_counts[i].fetch_add(1);
      const char byte = static_cast<char>(signo);
      // Non-blocking: a full pipe already wakes its reader.
      [[maybe_unused]] const ssize_t w = ::write(g_pipe[1], &byte, 1);
    }
  }
  errno = saved_errno;
}

}  // namespace

void install() {
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  if (g_installed.load()) return;
  TESSERA_CHECK(::pipe2(g_pipe, O_NONBLOCK | O_CLOEXEC) == 0,
                "signals: cannot create the wake-up pipe: ", std::strerror(errno));
  for (int i = 0; i < kCount; ++i) {
    struct sigaction sa {};
    sa.sa_sigaction = on_signal;
    // SA_RESTART: a signal does not make MPI's or the server's blocking calls fail with EINTR.
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    for (int s : kSignals) sigaddset(&sa.sa_mask, s);  // one handler at a time
    TESSERA_CHECK(sigaction(kSignals[i], &sa, &g_previous[i]) == 0, "signals: sigaction(",
                  strsignal(kSignals[i]), ") failed: ", std::strerror(errno));
  }
  g_installed.store(true);
}

bool installed() { return g_installed.load(); }

uint64_t count(int signo) {
  const int i = index_of(signo);
  TESSERA_CHECK(i >= 0, "signals: signal ", signo, " is not one of USR1, TERM, INT");
  return g_counts[i].load();
}

pid_t last_sender(int signo) {
  const int i = index_of(signo);
  TESSERA_CHECK(i >= 0, "signals: signal ", signo, " is not one of USR1, TERM, INT");
  return g_senders[i].load();
}

bool warning_received() { return g_counts[index_of(SIGUSR1)].load() > 0; }

bool stop_requested() {
  return g_counts[index_of(SIGTERM)].load() > 0 || g_counts[index_of(SIGINT)].load() > 0;
}

int wake_fd() {
  TESSERA_CHECK(g_installed.load(), "signals: wake_fd() before install()");
  return g_pipe[0];
}

void reset() {
  for (int i = 0; i < kCount; ++i) {
    g_counts[i].store(0);
    g_senders[i].store(0);
  }
  if (g_pipe[0] >= 0) {
    char buf[64];
    while (::read(g_pipe[0], buf, sizeof buf) > 0) {
    }
  }
}

}  // namespace tessera::launch::signals

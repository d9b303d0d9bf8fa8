#include "runtime/serving/signals.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>

#include "common/error.h"

namespace tessera::serving {
namespace {

int g_pipe[2] = {-1, -1};

void on_signal(int sig) {
  const int saved = errno;
  const unsigned char b = static_cast<unsigned char>(sig);
  [[maybe_unused]] ssize_t n = write(g_pipe[1], &b, 1);  // async-signal-safe
  errno = saved;
}

}  // namespace

void install_termination_handler() {
  if (g_pipe[0] < 0) {
    TESSERA_CHECK(pipe2(g_pipe, O_CLOEXEC) == 0, "pipe2 failed: errno ", errno);
  }
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  TESSERA_CHECK(sigaction(SIGTERM, &sa, nullptr) == 0 && sigaction(SIGINT, &sa, nullptr) == 0,
                "sigaction failed: errno ", errno);
  signal(SIGPIPE, SIG_IGN);
  // Threads started from now on inherit a mask without them, so the signal lands on the main
  // thread while it waits in ppoll (threads that existed before, MPI's, may take it too: their
  // handler run writes the same pipe). Sanitizers defer signals that land on a thread parked in
  // a condition variable; this way none does.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  TESSERA_CHECK(pthread_sigmask(SIG_BLOCK, &set, nullptr) == 0, "pthread_sigmask failed");
}

void request_termination(int reason) {
  TESSERA_CHECK(g_pipe[1] >= 0, "install_termination_handler() was not called");
  TESSERA_CHECK(reason >= 0 && reason <= 255, "request_termination: reason ", reason,
                " is not in [0, 255]");
  on_signal(reason);
}

int wait_for_termination_signal() {
  TESSERA_CHECK(g_pipe[0] >= 0, "install_termination_handler() was not called");
  sigset_t during;  // the current mask without SIGTERM / SIGINT
  pthread_sigmask(SIG_SETMASK, nullptr, &during);
  sigdelset(&during, SIGTERM);
  sigdelset(&during, SIGINT);
  for (;;) {
    pollfd p{g_pipe[0], POLLIN, 0};
    const int r = ppoll(&p, 1, nullptr, &during);
    if (r < 0 && errno != EINTR) TESSERA_FAIL("waiting for a signal failed: errno ", errno);
    if (r > 0 && (p.revents & POLLIN)) {
      unsigned char b = 0;
      if (read(g_pipe[0], &b, 1) == 1) return b;
    }
  }
}

}  // namespace tessera::serving

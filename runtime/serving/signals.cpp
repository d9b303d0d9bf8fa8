#include "runtime/serving/signals.h"

#include <fcntl.h>
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
}

int wait_for_termination_signal() {
  TESSERA_CHECK(g_pipe[0] >= 0, "install_termination_handler() was not called");
  unsigned char b = 0;
  for (;;) {
    const ssize_t n = read(g_pipe[0], &b, 1);
    if (n == 1) return b;
    if (n < 0 && errno == EINTR) continue;
    TESSERA_FAIL("reading the signal pipe failed: errno ", errno);
  }
}

}  // namespace tessera::serving

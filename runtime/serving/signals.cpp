#include "runtime/serving/signals.h"

#include <pthread.h>
#include <signal.h>

#include "common/error.h"

namespace tessera::serving {
namespace {
sigset_t termination_set() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  return set;
}
}  // namespace

void block_termination_signals() {
  sigset_t set = termination_set();
  TESSERA_CHECK(pthread_sigmask(SIG_BLOCK, &set, nullptr) == 0, "pthread_sigmask failed");
  // A client that vanishes mid-write must not kill the process.
  signal(SIGPIPE, SIG_IGN);
}

int wait_for_termination_signal() {
  sigset_t set = termination_set();
  int sig = 0;
  TESSERA_CHECK(sigwait(&set, &sig) == 0, "sigwait failed");
  return sig;
}

}  // namespace tessera::serving

// The termination wait of `tessera serve` / `tessera router`: what it returns says why the server
// stops (a signal, an engine failure, a request to stop), which the shutdown line prints.
#include "runtime/serving/signals.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <thread>

#include "common/error.h"

namespace tessera::serving {
namespace {

TEST(Signals, WaitReturnsTheSignalOrTheReasonGiven) {
  install_termination_handler();
  // From another thread, as the engine loop and the replica's stop route call it.
  std::thread([] { request_termination(kEngineFailed); }).join();
  EXPECT_EQ(wait_for_termination_signal(), kEngineFailed);
  std::thread([] { request_termination(); }).join();
  EXPECT_EQ(wait_for_termination_signal(), kShutdownRequested);
  // A real signal to the process (blocked on this thread until the wait unblocks it).
  ASSERT_EQ(kill(getpid(), SIGTERM), 0);
  EXPECT_EQ(wait_for_termination_signal(), SIGTERM);
  ASSERT_EQ(kill(getpid(), SIGINT), 0);
  EXPECT_EQ(wait_for_termination_signal(), SIGINT);
  EXPECT_THROW(request_termination(256), Error);
  EXPECT_THROW(request_termination(-1), Error);
}

}  // namespace
}  // namespace tessera::serving

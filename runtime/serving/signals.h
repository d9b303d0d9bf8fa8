// SIGTERM / SIGINT for server processes: a handler (whichever thread the signal lands on, MPI's
// included) wakes the main thread, which then shuts the server down gracefully. SIGPIPE is
// ignored so a client that vanishes mid-write cannot kill the process.
#pragma once

namespace tessera::serving {

// What wait_for_termination_signal() returns when the program itself asked (request_termination)
// rather than a signal: no signal has these numbers.
inline constexpr int kShutdownRequested = 0;  // e.g. a replica told to stop by its router
inline constexpr int kEngineFailed = 255;     // the engine loop ended with an error

void install_termination_handler();
// Blocks; returns the signal's number (SIGTERM, SIGINT) or the reason given to
// request_termination.
int wait_for_termination_signal();
// Wakes wait_for_termination_signal() as a signal would, returning `reason` (from any thread;
// after install).
void request_termination(int reason = kShutdownRequested);

}  // namespace tessera::serving

// SIGTERM / SIGINT for server processes: a handler (whichever thread the signal lands on, MPI's
// included) wakes the main thread, which then shuts the server down gracefully. SIGPIPE is
// ignored so a client that vanishes mid-write cannot kill the process.
#pragma once

namespace tessera::serving {

void install_termination_handler();
int wait_for_termination_signal();  // blocks; returns the signal's number

}  // namespace tessera::serving

// SIGTERM / SIGINT for server processes: blocked in every thread (call before any thread starts)
// and taken synchronously by the main thread, which then shuts the server down gracefully.
#pragma once

namespace tessera::serving {

void block_termination_signals();
int wait_for_termination_signal();  // returns the signal's number

}  // namespace tessera::serving

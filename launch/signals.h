// Preemption and shutdown signals as flags that a training loop or a server polls. SLURM warns a
// job before its time limit (sbatch --signal=USR1@T, or B:USR1 for the batch shell), then sends
// SIGTERM, then SIGKILL after KillWait; scancel and a preemption send SIGTERM too. The handlers
// only count the signal, note its sender and write one byte to a pipe (all async-signal-safe), so
// the program reacts at a point of its choosing: between training steps (checkpoint, then exit so
// the job is requeued), or in its event loop (stop accepting, drain), woken through wake_fd().
// Torch- and MPI-free.
#pragma once

#include <sys/types.h>

#include <cstdint>

namespace tessera::launch::signals {

// Installs the handlers for SIGUSR1 (the time-limit warning), SIGTERM and SIGINT (stop);
// idempotent. A second SIGTERM or SIGINT while a stop is already pending goes to the handler that
// was installed before (after launch::bootstrap_world: the watchdog's report of the collective
// this rank is blocked in, then exit) or, without one, to the default action, so an impatient
// second Ctrl-C still ends the program. Throws tessera::Error when the handlers cannot be set.
void install();
bool installed();

// How many times each signal arrived since install(). Counts never decrease; coalesced signals
// (the kernel keeps one pending signal of a kind) count once.
uint64_t count(int signo);
// The pid that sent the last `signo` (0 when none arrived or the sender is unknown).
pid_t last_sender(int signo);

// SIGUSR1 arrived: the job's time is nearly up (write a checkpoint; exit so the job is requeued).
bool warning_received();
// SIGTERM or SIGINT arrived: stop (a server stops accepting and drains, a trainer checkpoints).
bool stop_requested();

// Readable (one byte per handled signal) once a signal arrived: poll / epoll / an Asio
// posix::stream_descriptor wake on it. Non-blocking; read it to clear, the flags above stay.
int wake_fd();

// Forgets the counts and empties wake_fd (tests; a program that handled one warning and goes on).
void reset();

}  // namespace tessera::launch::signals

// Collective watchdog: a stalled collective must end the job, not hang it for ten minutes. Every
// blocking wait of a communicator registers here; one process-wide thread checks the deadlines and,
// when one passes, reports (rank, communicator, operation, sequence number) on stderr and exits the
// process non-zero, which makes the launcher (mpirun) end the other ranks. Torch- and MPI-free.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace tessera::sharding {

// Exit status of a process the watchdog ended (distinct from a crash or an ordinary error).
inline constexpr int kWatchdogExitCode = 75;

// What is in flight, for the report. Plain fields so that watching costs no allocation or
// formatting on the hot path. The watchdog copies the strings when the wait is registered (the
// communicator's label cut to 63 characters, the others to 31), so they need only live until
// watch() returns.
struct OpDesc {
  const char* comm = "";   // communicator label: "world", "tp", ...
  const char* op = "";     // "all_reduce", ...
  const char* dtype = "";  // "float32", ...
  int rank = 0;            // rank in that communicator
  int world_rank = 0;
  uint64_t seq = 0;  // per-communicator sequence number of the operation (1-based)
  int64_t count = 0;
  int peer = -1;  // root, destination or source; -1 when none
};

class Watchdog {
 public:
  // The process-wide instance. Its timeout starts from TESSERA_COMM_TIMEOUT (seconds, fractions
  // allowed; 0 disables) or 300 s.
  static Watchdog& global();

  // 0 disables the watchdog. Takes effect for waits that begin afterwards.
  void set_timeout(std::chrono::milliseconds timeout);
  std::chrono::milliseconds timeout() const;

  // A registered wait; finishes (deregisters) when destroyed.
  class Scope {
   public:
    Scope(Scope&& other) noexcept : slot_(other.slot_) { other.slot_ = -1; }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;
    Scope& operator=(Scope&&) = delete;
    ~Scope();

   private:
    friend class Watchdog;
    explicit Scope(int slot) : slot_(slot) {}
    int slot_;
  };
  // Call right before blocking on `op`; keep the Scope alive until the operation completed.
  Scope watch(const OpDesc& op);

  // Descriptions of the waits registered right now (as describe() writes them), read the way the
  // watchdog thread reads them: a wait that starts or ends during the read is left out rather than
  // reported half-written.
  std::vector<std::string> in_flight() const;

  // Installs SIGTERM / SIGINT handlers that print the operation this rank is blocked in (when the
  // launcher kills the job because a peer died) before exiting with 128 + signal. Idempotent; a
  // signal that already has a handler (launch/signals, installed first) keeps it.
  static void install_signal_report();

 private:
  Watchdog();
};

// One line describing `op`: "rank 1/world: all_reduce #17 (float32 x 1024, peer -1)".
std::string describe(const OpDesc& op);

}  // namespace tessera::sharding

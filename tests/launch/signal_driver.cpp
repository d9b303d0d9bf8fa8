// A real process for the signal tests (signals_test, and the SLURM preemption job): it installs
// launch/signals and reports what it sees, one flushed line per event, on stdout.
//   --mode=loop         poll the flags every 5 ms; "warning N from PID" per SIGUSR1; exit 0 on stop
//   --mode=churn        the same while allocating and freeing without pause (a signal lands
//                       inside malloc: the handlers must not allocate or lock)
//   --mode=ignore-stop  report stops but keep running (a second SIGTERM must still end it)
//   --mode=poll         block in poll() on wake_fd(); "woke SIG..." per wake-up; exit 0 on stop
//   --mode=steps --state FILE --steps N --step-ms M
//                       a resumable computation: N steps of an LCG, resumed from FILE; on a
//                       warning it checkpoints to FILE after the current step and exits 3 (the
//                       job script then requeues itself); at the end prints "done ..." and exits 0
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "launch/signals.h"

namespace signals = tessera::launch::signals;

namespace {

std::string arg(int argc, char** argv, const std::string& name, const std::string& fallback) {
  const std::string prefix = "--" + name + "=";
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], prefix.c_str(), prefix.size()) == 0) return argv[i] + prefix.size();
  }
  return fallback;
}

void say(const std::string& line) {
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

uint64_t lcg(uint64_t x) { return x * 6364136223846793005ull + 1442695040888963407ull; }

// Reports new warnings; true once a stop arrived.
bool report(uint64_t& warnings_seen, uint64_t& stops_seen) {
  const uint64_t w = signals::count(SIGUSR1);
  if (w != warnings_seen) {
    warnings_seen = w;
    say("warning " + std::to_string(w) + " from " + std::to_string(signals::last_sender(SIGUSR1)));
  }
  const uint64_t s = signals::count(SIGTERM) + signals::count(SIGINT);
  if (s != stops_seen) {
    stops_seen = s;
    say("stop " + std::to_string(s) + " from " + std::to_string(signals::last_sender(SIGTERM)));
  }
  return s > 0;
}

int steps(int argc, char** argv) {
  const std::string state = arg(argc, argv, "state", "");
  const long total = std::stol(arg(argc, argv, "steps", "10"));
  const long step_ms = std::stol(arg(argc, argv, "step-ms", "100"));
  long step = 0;
  uint64_t value = 1;
  if (std::ifstream in(state); in >> step >> value) {
    say("resumed at step " + std::to_string(step));
  }
  const char* restarts = std::getenv("SLURM_RESTART_COUNT");
  say("start step " + std::to_string(step) + " restart " + (restarts ? restarts : "0"));
  while (step < total) {
    value = lcg(value);
    ++step;
    std::this_thread::sleep_for(std::chrono::milliseconds(step_ms));
    if (signals::warning_received() || signals::stop_requested()) {
      {
        std::ofstream out(state + ".tmp");
        out << step << " " << value << "\n";
      }
      std::rename((state + ".tmp").c_str(), state.c_str());
      say(std::string("checkpoint at step ") + std::to_string(step) + " on " +
          (signals::warning_received() ? "SIGUSR1" : "a stop") + " from pid " +
          std::to_string(signals::last_sender(SIGUSR1)));
      return signals::warning_received() ? 3 : 4;
    }
  }
  say("done steps " + std::to_string(step) + " value " + std::to_string(value));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = arg(argc, argv, "mode", "loop");
  signals::install();
  if (mode == "steps") return steps(argc, argv);
  say("ready " + std::to_string(getpid()));
  uint64_t warnings = 0, stops = 0;
  if (mode == "poll") {
    for (;;) {
      pollfd p{signals::wake_fd(), POLLIN, 0};
      if (::poll(&p, 1, -1) < 0) continue;
      char buf[16];
      const ssize_t n = ::read(signals::wake_fd(), buf, sizeof buf);
      std::string line = "woke";
      for (ssize_t i = 0; i < n; ++i) line += std::string(" ") + sigabbrev_np(buf[i]);
      say(line);
      if (report(warnings, stops)) return 0;
    }
  }
  std::vector<std::string> junk;
  for (;;) {
    if (mode == "churn") {
      // Allocation without pause: most signals arrive inside malloc or free.
      for (int i = 0; i < 1000; ++i) junk.emplace_back(100 + i % 50, 'x');
      junk.clear();
      junk.shrink_to_fit();
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (report(warnings, stops) && mode != "ignore-stop") return 0;
  }
}

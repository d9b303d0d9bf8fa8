// Runs a shell command for end-to-end tests: captures stdout and stderr separately, enforces a
// wall-clock limit (coreutils `timeout`, killing the whole process group), returns the exit code.
#pragma once

#include <string>

namespace tessera::testing {

struct ProcessResult {
  int exit_code = -1;  // 124 when the time limit killed it
  std::string out;
  std::string err;
  double seconds = 0;
};

ProcessResult run_command(const std::string& command, int timeout_s = 120);
// The environment variable or a test failure naming it.
std::string env_or_die(const char* name);

}  // namespace tessera::testing

#include "tests/support/subprocess.h"

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace tessera::testing {

namespace {
std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
}  // namespace

ProcessResult run_command(const std::string& command, int timeout_s) {
  char out_tmpl[] = "/tmp/tessera_out_XXXXXX";
  char err_tmpl[] = "/tmp/tessera_err_XXXXXX";
  const int out_fd = mkstemp(out_tmpl), err_fd = mkstemp(err_tmpl);
  close(out_fd);
  close(err_fd);
  const std::string full = "timeout -k 5 " + std::to_string(timeout_s) + " bash -c '" +
                           [&] {
                             std::string q;
                             for (char c : command)
                               q += c == '\'' ? std::string("'\\''") : std::string(1, c);
                             return q;
                           }() +
                           "' > " + out_tmpl + " 2> " + err_tmpl + " < /dev/null";
  const auto t0 = std::chrono::steady_clock::now();
  const int status = std::system(full.c_str());
  ProcessResult r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = slurp(out_tmpl);
  r.err = slurp(err_tmpl);
  std::remove(out_tmpl);
  std::remove(err_tmpl);
  return r;
}

std::string env_or_die(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') throw std::runtime_error(std::string("test needs $") + name);
  return v;
}

}  // namespace tessera::testing

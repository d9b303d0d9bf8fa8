// What the benchmarks that measure a Python peer in the same run share: a child process spoken to
// by lines on its stdin / stdout (the peer's side: a script in the test venv that answers one JSON
// line per command), and the text they train and run on (the licence texts Debian's base-files
// ships in /usr/share/common-licenses). Header-only and torch-free.
#pragma once

#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

extern char** environ;

namespace tessera::bench {

// A child process with its stdin and stdout piped to us (stderr is ours).
class Child {
 public:
  Child(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env) {
    int in[2], out[2];
    TESSERA_CHECK(pipe(in) == 0 && pipe(out) == 0, "pipe() failed");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_addclose(&fa, in[1]);
    posix_spawn_file_actions_addclose(&fa, out[0]);
    std::vector<std::string> env_store(extra_env);
    for (char** e = environ; *e; ++e) env_store.emplace_back(*e);
    std::vector<char*> envp, args;
    for (auto& e : env_store) envp.push_back(e.data());
    envp.push_back(nullptr);
    std::vector<std::string> argv_store(argv);
    for (auto& a : argv_store) args.push_back(a.data());
    args.push_back(nullptr);
    const int rc = posix_spawnp(&pid_, args[0], &fa, nullptr, args.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    close(in[0]);
    close(out[1]);
    if (rc != 0) {
      close(in[1]);
      close(out[0]);
      TESSERA_FAIL("cannot start '", argv[0], "': ", std::strerror(rc));
    }
    to_ = in[1];
    from_ = fdopen(out[0], "r");
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() {
    if (to_ >= 0) close(to_);  // the child reads end of file and ends
    if (from_) std::fclose(from_);
    if (pid_ > 0) {
      int status;
      waitpid(pid_, &status, 0);
    }
  }
  // One line to the child; throws, naming how the child ended, when it no longer reads.
  void send(const std::string& line) {
    if (!try_send(line)) {
      TESSERA_FAIL("the Python side of the benchmark stopped (", ended(), ") before the command '",
                   line, "' reached it");
    }
  }
  // The same without throwing (for destructors): false when the child no longer reads.
  bool try_send(const std::string& line) noexcept { return write_line(to_, line + "\n"); }
  // One line of output; throws when the child ended.
  std::string receive() {
    std::string line;
    int c;
    while ((c = std::fgetc(from_)) != EOF && c != '\n') line.push_back(static_cast<char>(c));
    if (c == EOF && line.empty()) {
      TESSERA_FAIL("the Python side of the benchmark stopped (", ended(), ")");
    }
    return line;
  }

 private:
  // Writes all of `data` to `fd`. A reader that has gone is an error returned here, not a SIGPIPE
  // that ends this process without a word: SIGPIPE is blocked in this thread for the write, and
  // the one the write raised (a pipe's SIGPIPE goes to the writing thread) is taken back before
  // the mask is restored, unless one was already pending.
  static bool write_line(int fd, std::string_view data) noexcept {
    sigset_t pipe_set, old;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    sigset_t pending;
    sigpending(&pending);
    const bool was_pending = sigismember(&pending, SIGPIPE) == 1;
    bool ok = fd >= 0;
    while (ok && !data.empty()) {
      const ssize_t n = ::write(fd, data.data(), data.size());
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        ok = false;
      } else {
        data.remove_prefix(static_cast<size_t>(n));
      }
    }
    if (!ok && !was_pending) {
      sigpending(&pending);
      if (sigismember(&pending, SIGPIPE) == 1) {
        const timespec zero{0, 0};
        sigtimedwait(&pipe_set, nullptr, &zero);
      }
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    return ok;
  }
  // How the child ended ("exit status 1", "killed by signal 9"), reaped here; "still running" when
  // it has not yet (it closed its stdin or stdout first).
  std::string ended() {
    if (pid_ <= 0) return "not started";
    int status = 0;
    pid_t r = 0;
    for (int i = 0; i < 50; ++i) {  // up to 0.5 s for it to finish ending
      r = waitpid(pid_, &status, WNOHANG);
      if (r != 0) break;
      usleep(10000);
    }
    if (r != pid_) return "still running";
    pid_ = -1;
    if (WIFEXITED(status)) return "exit status " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
    return "ended";
  }

  pid_t pid_ = -1;
  int to_ = -1;
  FILE* from_ = nullptr;
};

// A benchmark's Python side: a fresh folder under /tmp holding `lines` (lines.txt) and `script`
// (bench.py); the test venv's Python (TESSERA_VENV_PYTHON, else python3) running
// `bench.py <folder>/lines.txt <args(folder)...>`; and the JSON of its first line, what it made
// ready. The script ends at an empty line; the folder is removed with the peer.
class PythonPeer {
 public:
  PythonPeer(const char* script, const std::vector<std::string>& lines,
             const std::function<std::vector<std::string>(const std::filesystem::path&)>& args,
             const std::vector<std::string>& env, const std::string& packages) {
    char tmpl[] = "/tmp/tessera_bench_py_XXXXXX";
    TESSERA_CHECK(mkdtemp(tmpl) != nullptr, "mkdtemp failed: ", std::strerror(errno));
    dir_ = tmpl;
    {
      std::ofstream f(dir_ / "lines.txt", std::ios::binary);
      for (size_t i = 0; i < lines.size(); ++i) f << (i ? "\n" : "") << lines[i];
      std::ofstream(dir_ / "bench.py") << script;
    }
    const char* venv = std::getenv("TESSERA_VENV_PYTHON");
    const std::string python = venv && *venv ? venv : "python3";
    std::vector<std::string> argv = {python, (dir_ / "bench.py").string(),
                                     (dir_ / "lines.txt").string()};
    for (auto& a : args(dir_)) argv.push_back(std::move(a));
    try {
      child_ = std::make_unique<Child>(argv, env);
      ready_ = nlohmann::json::parse(child_->receive());
    } catch (const std::exception& e) {
      child_.reset();
      std::filesystem::remove_all(dir_);
      TESSERA_FAIL("the Python side (", python, " with ", packages,
                   "; set TESSERA_VENV_PYTHON) did not start: ", e.what());
    }
  }
  PythonPeer(const PythonPeer&) = delete;
  PythonPeer& operator=(const PythonPeer&) = delete;
  ~PythonPeer() {
    child_->try_send("");  // the script's end; a child that already ended needs none
    child_.reset();
    std::filesystem::remove_all(dir_);
  }
  const std::filesystem::path& dir() const { return dir_; }
  const nlohmann::json& ready() const { return ready_; }
  void send(const std::string& line) { child_->send(line); }
  nlohmann::json receive() { return nlohmann::json::parse(child_->receive()); }

 private:
  std::filesystem::path dir_;
  std::unique_ptr<Child> child_;
  nlohmann::json ready_;
};

inline constexpr const char* kLicenceDir = "/usr/share/common-licenses";

// The non-blank lines of the licence texts (`used` gets the names of the files read). Throws when
// none is there.
inline std::vector<std::string> licence_lines(std::vector<std::string>* used = nullptr,
                                              size_t* bytes = nullptr) {
  static const char* kLicences[] = {"GPL-3",      "GPL-2",    "LGPL-2.1", "LGPL-3",  "GFDL-1.3",
                                    "Apache-2.0", "Artistic", "MPL-2.0",  "MPL-1.1", "CC0-1.0",
                                    "BSD",        "GPL-1",    "LGPL-2"};
  std::string text;
  for (const char* name : kLicences) {
    std::ifstream in(std::filesystem::path(kLicenceDir) / name, std::ios::binary);
    if (!in.good()) continue;
    std::ostringstream ss;
    ss << in.rdbuf();
    text += ss.str();
    if (used) used->push_back(name);
  }
  TESSERA_CHECK(!text.empty(), "no licence texts in ", kLicenceDir,
                " (Debian's base-files package provides them)");
  if (bytes) *bytes = text.size();
  std::vector<std::string> lines;
  std::istringstream in(text);
  std::string l;
  while (std::getline(in, l)) {
    if (l.find_first_not_of(" \t\r") != std::string::npos) lines.push_back(l);
  }
  return lines;
}

}  // namespace tessera::bench

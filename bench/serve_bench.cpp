// `tessera bench serve`: a load generator replays requests with Poisson arrivals at several rates
// against `tessera serve` (started here as a child process on 127.0.0.1, port 0) and reports
// throughput, time to first token and inter-token latency (p50, p99) per rate, as a client sees
// them over real HTTP with streaming. The checkpoint is a random LLaMA that
// scripts/serve_bench_checkpoint.py writes (test venv: numpy, safetensors, gguf) as a Hugging Face
// folder for Tessera and as F32 GGUF for llama.cpp's server (llama-cpp-python[server], its real
// uvicorn HTTP server; not pinned in the venv: PyPI has no wheel of it, only a long C++ build).
// Both get the same requests at the same arrival times (same seed), greedy, exactly max_tokens
// each (Tessera: ignore_eos; llama.cpp: min_tokens), streamed, and the same threads
// (TESSERA_NUM_THREADS / --n_threads and --n_threads_batch). llama-cpp-python's server runs one
// request at a time and by default cuts the stream in progress when a new request comes
// (interrupt_requests): the bench turns that off, so every request is served in arrival order, as
// a user serving concurrent clients would set it. Rates are interleaved: at each rate
// both servers run, the first to go alternating. Without llama-cpp-python its entry says why it
// was skipped; without the venv Tessera serves its built-in tiny model alone.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench.h"
#include "common/error.h"
#include "runtime/serving/http_client.h"
#include "runtime/serving/io_runtime.h"

extern char** environ;

namespace tessera::bench {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

struct Child {
  pid_t pid = -1;
  int port = 0;
};

// The environment of a child: ours with `set` (NAME=VALUE) replacing or adding entries.
std::vector<std::string> child_env(const std::vector<std::string>& set) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string kv = *e;
    const std::string name = kv.substr(0, kv.find('='));
    bool replaced = false;
    for (const auto& s : set) replaced |= s.substr(0, s.find('=')) == name;
    if (!replaced) env.push_back(kv);
  }
  env.insert(env.end(), set.begin(), set.end());
  return env;
}

std::vector<char*> c_strings(const std::vector<std::string>& v) {
  std::vector<char*> out;
  for (const auto& a : v) out.push_back(const_cast<char*>(a.c_str()));
  out.push_back(nullptr);
  return out;
}

// Starts `argv` (environment `env`), its stdout and stderr on a pipe, or into `log` when given
// (a server that keeps logging after start-up); waits for `ready` (group 1: the port).
Child start_server(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                   const std::string& ready, double timeout_s, const std::string& log = "") {
  int fds[2];
  TESSERA_CHECK(pipe(fds) == 0, "pipe failed");
  int log_fd = -1;
  if (!log.empty()) {
    log_fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    TESSERA_CHECK(log_fd >= 0, "cannot write ", log);
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, log_fd >= 0 ? log_fd : fds[1], 1);
  if (log_fd >= 0) posix_spawn_file_actions_adddup2(&fa, log_fd, 2);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  auto args = c_strings(argv);
  auto envp = c_strings(env);
  Child c;
  const int rc = posix_spawn(&c.pid, args[0], &fa, nullptr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  if (log_fd >= 0) close(log_fd);
  TESSERA_CHECK(rc == 0, "could not start ", argv[0], ": error ", rc);
  fcntl(fds[0], F_SETFL, O_NONBLOCK);
  std::string out;
  const std::regex re(ready);
  const auto deadline = Clock::now() + std::chrono::milliseconds(int64_t(timeout_s * 1000));
  std::smatch m;
  while (Clock::now() < deadline) {
    char buf[4096];
    const ssize_t n = read(fds[0], buf, sizeof(buf));
    if (n > 0) out.append(buf, static_cast<size_t>(n));
    if (!log.empty()) {
      std::ifstream in(log);
      out.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    if (std::regex_search(out, m, re)) {
      c.port = std::stoi(m[1]);
      break;
    }
    int status = 0;
    if (waitpid(c.pid, &status, WNOHANG) == c.pid) {
      c.pid = -1;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  close(fds[0]);  // the child's later lines go nowhere (SIGPIPE is ignored by the server)
  if (c.port <= 0 && c.pid > 0) {
    kill(c.pid, SIGTERM);
    waitpid(c.pid, nullptr, 0);
  }
  TESSERA_CHECK(c.port > 0, argv[0], " did not start a server: ",
                out.size() > 2000 ? out.substr(out.size() - 2000) : out);
  return c;
}

// Runs `argv` to its end; returns its exit code and its stdout + stderr.
std::pair<int, std::string> run_capture(const std::vector<std::string>& argv) {
  int fds[2];
  TESSERA_CHECK(pipe(fds) == 0, "pipe failed");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  auto args = c_strings(argv);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    return {127, "could not start " + argv[0]};
  }
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128, out};
}

int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  TESSERA_CHECK(fd >= 0, "socket failed");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
                  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  close(fd);
  TESSERA_CHECK(ok, "could not find a free port on 127.0.0.1");
  return ntohs(a.sin_port);
}

double load_average() {
  std::ifstream in("/proc/loadavg");
  double l = -1;
  in >> l;
  return l;
}

void stop_server(Child& c) {
  if (c.pid <= 0) return;
  kill(c.pid, SIGTERM);
  int status = 0;
  waitpid(c.pid, &status, 0);
  c.pid = -1;
}

struct Sample {
  double ttft = -1;            // seconds from send to the first text
  double first = 0, last = 0;  // seconds since the send: first and last text
  int64_t tokens = 0;          // usage.completion_tokens (Tessera), else text chunks
  int64_t chunks = 0;          // stream chunks with text (one per token)
  double end = 0;              // seconds since the run's start
  bool ok = false;
};

double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * (v.size() - 1) + 0.5));
  return v[i];
}

// A server under test: Tessera (usage in the stream, ignore_eos) or llama-cpp-python's (no usage
// in its stream: one chunk per token; min_tokens = max_tokens, repeat_penalty 1 = plain greedy).
struct Target {
  std::string name;  // "tessera" or "llama_cpp"
  int port = 0;
  std::string model;
  bool tessera = true;
};

json completion_body(const Target& t, const std::string& prompt, int max_tokens, bool stream) {
  json body = {{"model", t.model},
               {"prompt", prompt},
               {"max_tokens", max_tokens},
               {"temperature", 0},
               {"stream", stream}};
  if (t.tessera) {
    body["ignore_eos"] = true;
    if (stream) body["stream_options"] = {{"include_usage", true}};
  } else {
    body["min_tokens"] = max_tokens;
    body["repeat_penalty"] = 1.0;
  }
  return body;
}

// One run at `rps`: `n` streamed completions, exponential gaps (fixed seed: both servers get the
// same arrival times and prompts), every one greedy with exactly `max_tokens` tokens.
json run_rate(serving::IoRuntime& io, const Target& target, double rps, int n, int max_tokens,
              const std::vector<std::string>& prompts) {
  std::mt19937_64 rng(1234);
  std::exponential_distribution<double> gap(rps);
  std::vector<Sample> samples(n);
  std::mutex mu;
  std::condition_variable cv;
  int done = 0;
  const double load_before = load_average();
  const auto t0 = Clock::now();
  double at = 0;
  for (int i = 0; i < n; ++i) {
    std::this_thread::sleep_until(t0 + std::chrono::microseconds(int64_t(at * 1e6)));
    at += gap(rng);
    serving::ClientRequest req;
    req.method = "POST";
    req.target = "/v1/completions";
    req.body = completion_body(target, prompts[i % prompts.size()], max_tokens, true).dump();
    auto sent = std::make_shared<Clock::time_point>(Clock::now());
    auto buf = std::make_shared<std::string>();
    Sample* s = &samples[i];
    serving::ClientCallbacks cb;
    cb.on_data = [s, sent, buf](std::string_view d) {
      buf->append(d);
      size_t p;
      while ((p = buf->find("\n\n")) != std::string::npos) {
        std::string ev = buf->substr(0, p);
        buf->erase(0, p + 2);
        if (!ev.empty() && ev.back() == '\r') ev.pop_back();
        if (ev.rfind("data: {", 0) != 0) continue;
        const json j = json::parse(ev.substr(6), nullptr, false);
        if (j.is_discarded()) continue;
        if (j.contains("usage") && j["usage"].is_object()) {
          s->tokens = j["usage"].value("completion_tokens", int64_t{0});
        }
        if (!j.contains("choices") || j["choices"].empty()) continue;
        const auto& c = j["choices"][0];
        if (!c.contains("text") || !c["text"].is_string() || c["text"].get<std::string>().empty())
          continue;
        const double t = std::chrono::duration<double>(Clock::now() - *sent).count();
        if (s->ttft < 0) s->ttft = s->first = t;
        s->last = t;
        ++s->chunks;
      }
    };
    cb.on_done = [s, t0, &mu, &cv, &done](const std::string& err) {
      std::lock_guard lock(mu);
      s->ok = err.empty() && s->ttft >= 0;
      if (s->tokens == 0) s->tokens = s->chunks;
      s->end = std::chrono::duration<double>(Clock::now() - t0).count();
      ++done;
      cv.notify_all();
    };
    serving::http_request(io, serving::Url{"127.0.0.1", target.port, ""}, std::move(req),
                          std::move(cb));
  }
  std::unique_lock lock(mu);
  cv.wait(lock, [&] { return done == n; });
  std::vector<double> ttft, itl;
  int64_t tokens = 0, failed = 0, short_outputs = 0;
  double end = 0;
  for (const auto& s : samples) {
    if (!s.ok) {
      ++failed;
      continue;
    }
    ttft.push_back(s.ttft * 1e3);
    // Inter-token latency of a request: (last text - first text) / (tokens - 1), as vLLM's
    // benchmark reports it; chunks that one TCP read brings together would make per-gap times 0.
    if (s.tokens > 1) itl.push_back((s.last - s.first) * 1e3 / static_cast<double>(s.tokens - 1));
    tokens += s.tokens;
    short_outputs += s.tokens != max_tokens;
    end = std::max(end, s.end);
  }
  return {{"requests", n},
          {"failed", failed},
          {"outputs_not_max_tokens", short_outputs},
          {"tok_s", end > 0 ? tokens / end : 0},
          {"ttft_p50_ms", pct(ttft, 50)},
          {"ttft_p99_ms", pct(ttft, 99)},
          {"itl_p50_ms", pct(itl, 50)},
          {"itl_p99_ms", pct(itl, 99)},
          {"seconds", end},
          {"load_before", load_before},
          {"load_after", load_average()}};
}

// Polls `target` with GET until 200 (a server may load its model after it starts listening).
void wait_healthy(serving::IoRuntime& io, int port, double timeout_s,
                  const std::string& target = "/health") {
  const auto deadline = Clock::now() + std::chrono::milliseconds(int64_t(timeout_s * 1000));
  while (Clock::now() < deadline) {
    auto status = std::make_shared<std::promise<int>>();
    auto fut = status->get_future();
    auto code = std::make_shared<int>(0);
    serving::ClientRequest req;
    req.target = target;
    serving::ClientCallbacks cb;
    cb.on_head = [code](int st, const serving::Headers&) { *code = st; };
    cb.on_data = [](std::string_view) {};
    cb.on_done = [status, code](const std::string&) { status->set_value(*code); };
    serving::http_request(io, serving::Url{"127.0.0.1", port, ""}, std::move(req), std::move(cb));
    if (fut.get() == 200) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  TESSERA_FAIL("the server on port ", port, " did not become healthy within ", timeout_s, " s");
}

// One non-streamed greedy completion; its text ("" on failure).
std::string complete(serving::IoRuntime& io, const Target& t, const std::string& prompt,
                     int max_tokens) {
  auto done = std::make_shared<std::promise<std::string>>();
  auto fut = done->get_future();
  auto body = std::make_shared<std::string>();
  serving::ClientRequest req;
  req.method = "POST";
  req.target = "/v1/completions";
  req.body = completion_body(t, prompt, max_tokens, false).dump();
  serving::ClientCallbacks cb;
  cb.on_data = [body](std::string_view d) { body->append(d); };
  cb.on_done = [done, body](const std::string& err) {
    const json j = json::parse(*body, nullptr, false);
    if (!err.empty() || j.is_discarded() || !j.contains("choices")) {
      done->set_value("");
      return;
    }
    done->set_value(j["choices"][0].value("text", ""));
  };
  serving::http_request(io, serving::Url{"127.0.0.1", t.port, ""}, std::move(req), std::move(cb));
  return fut.get();
}

std::string self_exe() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  TESSERA_CHECK(n > 0, "cannot find the tessera binary (/proc/self/exe)");
  return std::string(buf, static_cast<size_t>(n));
}

// The test venv's python: $TESSERA_VENV_PYTHON, $TESSERA_VENV/bin/python, or the build's venv.
std::string find_venv_python() {
  std::vector<std::string> candidates;
  if (const char* p = std::getenv("TESSERA_VENV_PYTHON"); p && *p) candidates.push_back(p);
  if (const char* v = std::getenv("TESSERA_VENV"); v && *v) {
    candidates.push_back(std::string(v) + "/bin/python");
  }
  candidates.push_back(std::string(TESSERA_BENCH_DEFAULT_VENV) + "/bin/python");
  for (const auto& p : candidates) {
    if (access(p.c_str(), X_OK) == 0) return p;
  }
  return "";
}

std::string last_line(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  const size_t nl = text.rfind('\n');
  return nl == std::string::npos ? text : text.substr(nl + 1);
}

struct Servers {
  std::vector<Child> children;
  ~Servers() {
    for (auto& c : children) stop_server(c);
  }
};

int run(const BenchOptions& o) {
  TESSERA_CHECK(o.world_size == 1, "tessera bench serve runs as one process, got ", o.world_size,
                " ranks");
  const std::vector<double> rates =
      o.quick ? std::vector<double>{4, 16} : std::vector<double>{2, 4, 8, 16};
  const int n = o.quick ? 12 : 200;
  const int max_tokens = o.quick ? 8 : 32;
  int threads = static_cast<int>(std::thread::hardware_concurrency());
  if (const char* t = std::getenv("TESSERA_BENCH_SERVE_THREADS"); t && *t) {
    threads = std::atoi(t);
    TESSERA_CHECK(threads >= 1, "TESSERA_BENCH_SERVE_THREADS must be >= 1, got '", t, "'");
  }
  threads = std::max(threads, 1);
  // The checkpoint's size: HIDDENxLAYERS (default 256x4, --quick 128x2). llama-cpp-python's server
  // runs one request at a time, so a run lasts about rates x requests x its time per request.
  std::string hidden = o.quick ? "128" : "256", layers = o.quick ? "2" : "4";
  if (const char* m = std::getenv("TESSERA_BENCH_SERVE_MODEL"); m && *m) {
    const std::string v = m;
    const size_t x = v.find('x');
    const bool ok = x != std::string::npos && x > 0 && x + 1 < v.size() &&
                    v.find_first_not_of("0123456789x") == std::string::npos;
    TESSERA_CHECK(ok, "TESSERA_BENCH_SERVE_MODEL must be HIDDENxLAYERS (e.g. 512x8), got '", v,
                  "'");
    hidden = v.substr(0, x);
    layers = v.substr(x + 1);
  }
  std::vector<std::string> prompts;
  const char* words[] = {"the",   "river",  "stone",  "light",  "across", "quiet",
                         "north", "garden", "winter", "market", "slowly", "under"};
  std::mt19937 rng(7);
  for (int i = 0; i < 64; ++i) {
    std::string p;
    const int len = 8 + static_cast<int>(rng() % 24);
    for (int w = 0; w < len; ++w) p += std::string(w ? " " : "") + words[rng() % 12];
    prompts.push_back(p);
  }

  // The checkpoint (Hugging Face folder + F32 GGUF) and whether llama.cpp's server can run.
  char tmpl[] = "/tmp/tessera-bench-serve-XXXXXX";
  TESSERA_CHECK(mkdtemp(tmpl) != nullptr, "cannot make a temporary folder");
  const std::string work = tmpl;
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  } cleanup{work};
  json model_info = {{"name", "tiny"}};
  std::string model_arg = "tiny", model_name = "tiny", gguf, llama_skip;
  const std::string python = find_venv_python();
  const std::string script =
      std::string(TESSERA_BENCH_SOURCE_DIR) + "/scripts/serve_bench_checkpoint.py";
  if (python.empty()) {
    llama_skip =
        "no test venv (scripts/test_venv.sh): the checkpoint needs numpy, safetensors and "
        "gguf; Tessera served its built-in tiny model alone";
  } else if (access(script.c_str(), R_OK) != 0) {
    llama_skip = script + " is missing (an installed tessera without its sources)";
  } else {
    const auto [rc, out] = run_capture({python, script, work, hidden, layers});
    const json j = json::parse(last_line(out), nullptr, false);
    if (rc != 0 || j.is_discarded() || !j.contains("gguf")) {
      llama_skip = "could not write the checkpoint: " + last_line(out);
    } else {
      model_info = j;
      model_info["name"] = "random LLaMA";
      model_name = "bench";
      model_arg = "bench=" + j["model_dir"].get<std::string>();
      gguf = j["gguf"].get<std::string>();
      const auto [prc, pout] = run_capture({python, "-c",
                                            "import llama_cpp, llama_cpp.server.app; "
                                            "print(llama_cpp.__version__)"});
      if (prc != 0) {
        llama_skip = "llama-cpp-python[server] is not in the test venv (" + last_line(pout) +
                     "): PyPI has no wheel of it (a C++ build of many minutes), so CI leaves it "
                     "out; docs/serving.md says how to install it for the full benchmark";
      } else {
        model_info["llama_cpp_python"] = last_line(pout);
      }
    }
  }
  const std::string t_env = std::to_string(threads);
  Servers servers;
  std::vector<Target> targets;
  servers.children.push_back(
      start_server({self_exe(), "serve", "--model", model_arg, "--port", "0"},
                   child_env({"TESSERA_NUM_THREADS=" + t_env, "OMP_NUM_THREADS=" + t_env}),
                   R"(listening on http://127\.0\.0\.1:(\d+))", 120));
  targets.push_back({"tessera", servers.children.back().port, model_name, true});
  if (llama_skip.empty()) {
    const int port = free_port();
    servers.children.push_back(start_server(
        {python, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1", "--port",
         std::to_string(port), "--n_threads", t_env, "--n_threads_batch", t_env, "--n_ctx", "2048",
         "--interrupt_requests", "False"},
        child_env({"OMP_NUM_THREADS=" + t_env}), R"(Uvicorn running on http://127\.0\.0\.1:(\d+))",
        180, work + "/llama_cpp_server.log"));
    targets.push_back({"llama_cpp", servers.children.back().port, model_name, false});
  }
  serving::IoRuntime io(2, 1);
  io.start();
  struct IoStop {
    serving::IoRuntime& io;
    ~IoStop() { io.stop(); }
  } io_stop{io};
  wait_healthy(io, targets[0].port, 120);
  if (targets.size() > 1) wait_healthy(io, targets[1].port, 120, "/v1/models");

  // Same checkpoint: greedy texts of a few prompts agree (the warm-up too).
  // A difference is shown (greedy over a random model can flip where two logits nearly tie).
  int same = 0, compared = 0;
  json mismatches = json::array();
  if (targets.size() > 1) {
    for (int i = 0; i < 4; ++i) {
      const std::string a = complete(io, targets[0], prompts[i], max_tokens);
      const std::string b = complete(io, targets[1], prompts[i], max_tokens);
      ++compared;
      same += !a.empty() && a == b;
      if (a.empty() || a != b) {
        mismatches.push_back({{"prompt", prompts[i]}, {"tessera", a}, {"llama_cpp", b}});
      }
    }
  }
  // Warm-up (not measured): concurrent streams at the top rate, so that neither server meets its
  // first batch, first allocations or first code paths inside a measured run.
  for (const auto& t : targets)
    run_rate(io, t, rates.back(), o.quick ? 4 : 16, max_tokens, prompts);
  json out = {{"model", model_name},          {"checkpoint", model_info},
              {"requests_per_rate", n},       {"max_tokens", max_tokens},
              {"threads", threads},           {"cores", std::thread::hardware_concurrency()},
              {"load_start", load_average()}, {"rates", json::array()}};
  if (compared > 0) {
    out["same_greedy_output"] = std::to_string(same) + "/" + std::to_string(compared);
    out["greedy_mismatches"] = mismatches;
  }
  for (size_t ri = 0; ri < rates.size(); ++ri) {
    const double r = rates[ri];
    json row = {{"rps", r}};
    if (targets.size() == 1) row["llama_cpp"] = {{"skipped", llama_skip}};
    for (size_t k = 0; k < targets.size(); ++k) {
      const Target& t = targets[(k + ri) % targets.size()];  // who goes first alternates
      row[t.name] = run_rate(io, t, r, n, max_tokens, prompts);
      {  // a table line (on stderr with --json: progress of a long run)
        const auto& m = row[t.name];
        std::fprintf(o.json ? stderr : stdout,
                     "%5.1f req/s  %-9s: %8.1f tok/s  TTFT p50 %7.1f p99 %7.1f ms  ITL p50 %6.1f "
                     "p99 %6.1f ms  (%lld failed, load %.1f)\n",
                     r, t.name.c_str(), m["tok_s"].get<double>(), m["ttft_p50_ms"].get<double>(),
                     m["ttft_p99_ms"].get<double>(), m["itl_p50_ms"].get<double>(),
                     m["itl_p99_ms"].get<double>(),
                     static_cast<long long>(m["failed"].get<int64_t>()),
                     m["load_after"].get<double>());
        std::fflush(o.json ? stderr : stdout);
      }
    }
    out["rates"].push_back(row);
  }
  out["load_end"] = load_average();
  if (o.json) std::printf("%s\n", out.dump().c_str());
  int64_t failed = 0;
  for (const auto& row : out["rates"]) {
    for (const auto& t : targets) failed += row[t.name]["failed"].get<int64_t>();
  }
  return failed > 0 ? 1 : 0;
}

}  // namespace

Benchmark serve_benchmark() {
  return {"serve",
          "Poisson load against tessera serve and llama.cpp's server (same checkpoint): tok/s, "
          "TTFT and ITL p50/p99 per rate",
          run};
}

}  // namespace tessera::bench

// `tessera bench serve`: a load generator replays requests with Poisson arrivals at several rates
// against `tessera serve` (started here as a child process on 127.0.0.1, port 0) and reports
// throughput, time to first token and inter-token latency (p50, p99) per rate, as a client sees
// them over real HTTP with streaming. The same requests go to llama.cpp's server when the test
// venv has llama-cpp-python (not pinned: PyPI has no wheel of it, only a long C++ build) and the
// checkpoint can be written as F32 GGUF; otherwise its entry says why it was skipped.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <future>
#include <mutex>
#include <random>
#include <regex>
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

// Starts `argv` with stdout on a pipe; waits for "listening on http://127.0.0.1:PORT".
Child start_server(const std::vector<std::string>& argv, double timeout_s) {
  int fds[2];
  TESSERA_CHECK(pipe(fds) == 0, "pipe failed");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  Child c;
  const int rc = posix_spawn(&c.pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  TESSERA_CHECK(rc == 0, "could not start ", argv[0], ": error ", rc);
  fcntl(fds[0], F_SETFL, O_NONBLOCK);
  std::string out;
  const std::regex re(R"(listening on http://127\.0\.0\.1:(\d+))");
  const auto deadline = Clock::now() + std::chrono::milliseconds(int64_t(timeout_s * 1000));
  std::smatch m;
  while (Clock::now() < deadline) {
    char buf[4096];
    const ssize_t n = read(fds[0], buf, sizeof(buf));
    if (n > 0) out.append(buf, static_cast<size_t>(n));
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
  TESSERA_CHECK(c.port > 0, argv[0], " did not start a server: ", out);
  return c;
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
  int64_t tokens = 0;
  double end = 0;  // seconds since the run's start
  bool ok = false;
};

double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * (v.size() - 1) + 0.5));
  return v[i];
}

// One run at `rps`: `n` streamed completions, exponential gaps (fixed seed), every one greedy with
// `max_tokens` tokens (ignore_eos).
json run_rate(serving::IoRuntime& io, int port, const std::string& model, double rps, int n,
              int max_tokens, const std::vector<std::string>& prompts) {
  std::mt19937_64 rng(1234);
  std::exponential_distribution<double> gap(rps);
  std::vector<Sample> samples(n);
  std::mutex mu;
  std::condition_variable cv;
  int done = 0;
  const auto t0 = Clock::now();
  double at = 0;
  for (int i = 0; i < n; ++i) {
    std::this_thread::sleep_until(t0 + std::chrono::microseconds(int64_t(at * 1e6)));
    at += gap(rng);
    serving::ClientRequest req;
    req.method = "POST";
    req.target = "/v1/completions";
    req.body = json{{"model", model},
                    {"prompt", prompts[i % prompts.size()]},
                    {"max_tokens", max_tokens},
                    {"temperature", 0},
                    {"ignore_eos", true},
                    {"stream", true},
                    {"stream_options", {{"include_usage", true}}}}
                   .dump();
    auto sent = std::make_shared<Clock::time_point>(Clock::now());
    auto buf = std::make_shared<std::string>();
    Sample* s = &samples[i];
    serving::ClientCallbacks cb;
    cb.on_data = [s, sent, buf](std::string_view d) {
      buf->append(d);
      size_t p;
      while ((p = buf->find("\n\n")) != std::string::npos) {
        const std::string ev = buf->substr(0, p);
        buf->erase(0, p + 2);
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
      }
    };
    cb.on_done = [s, t0, &mu, &cv, &done](const std::string& err) {
      std::lock_guard lock(mu);
      s->ok = err.empty() && s->ttft >= 0;
      s->end = std::chrono::duration<double>(Clock::now() - t0).count();
      ++done;
      cv.notify_all();
    };
    serving::http_request(io, serving::Url{"127.0.0.1", port, ""}, std::move(req), std::move(cb));
  }
  std::unique_lock lock(mu);
  cv.wait(lock, [&] { return done == n; });
  std::vector<double> ttft, itl;
  int64_t tokens = 0, failed = 0;
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
    end = std::max(end, s.end);
  }
  return {{"requests", n},
          {"failed", failed},
          {"tok_s", end > 0 ? tokens / end : 0},
          {"ttft_p50_ms", pct(ttft, 50)},
          {"ttft_p99_ms", pct(ttft, 99)},
          {"itl_p50_ms", pct(itl, 50)},
          {"itl_p99_ms", pct(itl, 99)},
          {"seconds", end}};
}

// Polls GET /health until 200 (the server loads its model after it starts listening).
void wait_healthy(serving::IoRuntime& io, int port, double timeout_s) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(int64_t(timeout_s * 1000));
  while (Clock::now() < deadline) {
    auto status = std::make_shared<std::promise<int>>();
    auto fut = status->get_future();
    auto code = std::make_shared<int>(0);
    serving::ClientRequest req;
    req.target = "/health";
    serving::ClientCallbacks cb;
    cb.on_head = [code](int st, const serving::Headers&) { *code = st; };
    cb.on_data = [](std::string_view) {};
    cb.on_done = [status, code](const std::string&) { status->set_value(*code); };
    serving::http_request(io, serving::Url{"127.0.0.1", port, ""}, std::move(req), std::move(cb));
    if (fut.get() == 200) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  TESSERA_FAIL("tessera serve did not become healthy within ", timeout_s, " s");
}

std::string self_exe() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  TESSERA_CHECK(n > 0, "cannot find the tessera binary (/proc/self/exe)");
  return std::string(buf, static_cast<size_t>(n));
}

int run(const BenchOptions& o) {
  TESSERA_CHECK(o.world_size == 1, "tessera bench serve runs as one process, got ", o.world_size,
                " ranks");
  const std::vector<double> rates =
      o.quick ? std::vector<double>{4, 16} : std::vector<double>{2, 4, 8, 16};
  const int n = o.quick ? 12 : 200;
  const int max_tokens = o.quick ? 8 : 32;
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
  Child server = start_server({self_exe(), "serve", "--model", "tiny", "--port", "0"}, 120);
  serving::IoRuntime io(2, 1);
  io.start();
  wait_healthy(io, server.port, 120);
  json out = {{"model", "tiny"},
              {"requests_per_rate", n},
              {"max_tokens", max_tokens},
              {"rates", json::array()}};
  try {
    for (double r : rates) {
      json row = {{"rps", r}};
      row["tessera"] = run_rate(io, server.port, "tiny", r, n, max_tokens, prompts);
      row["llama_cpp"] = {{"skipped",
                           "llama-cpp-python is not in the test venv: PyPI has no wheel of it "
                           "(a C++ build of several minutes), so it is kept out of CI"}};
      out["rates"].push_back(row);
      if (!o.json) {
        const auto& t = row["tessera"];
        std::printf(
            "%5.1f req/s  tessera: %8.1f tok/s  TTFT p50 %7.1f p99 %7.1f ms  ITL p50 %6.1f "
            "p99 %6.1f ms  (%lld failed)\n",
            r, t["tok_s"].get<double>(), t["ttft_p50_ms"].get<double>(),
            t["ttft_p99_ms"].get<double>(), t["itl_p50_ms"].get<double>(),
            t["itl_p99_ms"].get<double>(), static_cast<long long>(t["failed"].get<int64_t>()));
        std::fflush(stdout);
      }
    }
  } catch (...) {
    io.stop();
    stop_server(server);
    throw;
  }
  io.stop();
  stop_server(server);
  if (o.json) std::printf("%s\n", out.dump().c_str());
  int64_t failed = 0;
  for (const auto& r : out["rates"]) failed += r["tessera"]["failed"].get<int64_t>();
  return failed > 0 ? 1 : 0;
}

}  // namespace

Benchmark serve_benchmark() {
  return {"serve",
          "Poisson load against tessera serve (tiny): tok/s, TTFT and ITL p50/p99 per rate", run};
}

}  // namespace tessera::bench

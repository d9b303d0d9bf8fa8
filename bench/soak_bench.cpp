// `tessera bench soak`: starts a real `tessera serve --model tiny` on 127.0.0.1 (port 0) with a KV
// pool small enough that the engine preempts every few steps, and drives mixed traffic at it over
// real HTTP from several concurrent clients: streamed and whole completions, clients that
// disconnect mid-stream or abort before the answer, oversize bodies (413), malformed JSON (400),
// valid JSON with one field of the wrong type (400 naming that field) and prompts past
// --max-model-len (400). Every request carries a unique marker in its prompt and
// asks for `echo`, so each answer is checked to be the answer to that request. The report counts
// what was sent, completed, errored (grouped by reason, each marked expected or not), lost (sent,
// no answer and no error) and duplicated (a response id or an answer seen twice), and reads the
// server's RSS and open file descriptors from /proc after warm-up and at the end, and its /metrics
// at the end (KV pool empty, preemptions > 0). Bounded in time and requests.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <regex>
#include <set>
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

constexpr int64_t kMaxModelLen = 256;
constexpr int64_t kMaxBodyBytes = 64 << 10;
// 768K holds 47 of tiny's KV blocks: one request of --max-model-len (256 tokens, about 33 blocks)
// fits, a dozen concurrent ones do not, so the engine preempts. Prompts of the byte tokenizer
// (a token a byte) of up to ~100 bytes plus up to 120 new tokens stay inside --max-model-len.
constexpr const char* kKvCacheMemory = "768K";

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::string self_exe() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  TESSERA_CHECK(n > 0, "cannot find the tessera binary (/proc/self/exe)");
  return std::string(buf, static_cast<size_t>(n));
}

struct Server {
  pid_t pid = -1;
  int port = 0;
};

// Starts `argv` with stdout on a pipe; waits for "listening on http://127.0.0.1:PORT".
Server start_server(const std::vector<std::string>& argv, double timeout_s) {
  int fds[2];
  TESSERA_CHECK(pipe(fds) == 0, "pipe failed");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  Server s;
  const int rc = posix_spawn(&s.pid, args[0], &fa, nullptr, args.data(), environ);
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
      s.port = std::stoi(m[1]);
      break;
    }
    int status = 0;
    if (waitpid(s.pid, &status, WNOHANG) == s.pid) {
      s.pid = -1;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  close(fds[0]);
  if (s.port <= 0 && s.pid > 0) {
    kill(s.pid, SIGKILL);
    waitpid(s.pid, nullptr, 0);
  }
  TESSERA_CHECK(s.port > 0, argv[0], " did not start a server: ", out);
  return s;
}

// SIGTERM, then SIGKILL after `grace_s`; returns the exit status (-signal when killed).
int stop_server(Server& s, double grace_s) {
  if (s.pid <= 0) return 0;
  kill(s.pid, SIGTERM);
  int status = 0;
  const auto deadline = Clock::now() + std::chrono::milliseconds(int64_t(grace_s * 1000));
  while (waitpid(s.pid, &status, WNOHANG) != s.pid) {
    if (Clock::now() > deadline) {
      kill(s.pid, SIGKILL);
      waitpid(s.pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  s.pid = -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

struct ProcSample {
  int64_t rss_kb = -1;
  int64_t fds = -1;
  std::map<std::string, int64_t> fd_kinds;  // "socket", "anon_inode:[eventfd]", "/dev/null"...
};

ProcSample sample_proc(pid_t pid) {
  ProcSample s;
  std::ifstream st("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(st, line)) {
    if (line.rfind("VmRSS:", 0) == 0) s.rss_kb = std::stoll(line.substr(6));
  }
  std::error_code ec;
  int64_t n = 0;
  for (auto it = std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    ++n;
    std::error_code lec;
    std::string target = std::filesystem::read_symlink(it->path(), lec).string();
    if (const size_t colon = target.find(":["); colon != std::string::npos && target[0] != 'a') {
      target.resize(colon);  // "socket:[123]" -> "socket"
    }
    s.fd_kinds[lec ? "?" : target]++;
  }
  if (!ec) s.fds = n;
  return s;
}

// A sample once the fd count has held still for a second (at most `timeout_s`): a connection the
// client closed a moment ago may take a few milliseconds to be closed by the server too, which is
// not a leak.
ProcSample settled_sample(pid_t pid, double timeout_s) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(int64_t(timeout_s * 1000));
  ProcSample s = sample_proc(pid);
  auto since = Clock::now();
  while (Clock::now() < deadline && seconds_since(since) < 1.0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ProcSample t = sample_proc(pid);
    if (t.fds != s.fds) since = Clock::now();
    s = std::move(t);
  }
  return s;
}

// One GET; returns {status, body} ({0, error} when it failed).
std::pair<int, std::string> http_get(serving::IoRuntime& io, int port, const std::string& target) {
  auto done = std::make_shared<std::promise<std::pair<int, std::string>>>();
  auto fut = done->get_future();
  auto code = std::make_shared<int>(0);
  auto body = std::make_shared<std::string>();
  serving::ClientRequest req;
  req.target = target;
  serving::ClientCallbacks cb;
  cb.on_head = [code](int st, const serving::Headers&) { *code = st; };
  cb.on_data = [body](std::string_view d) { body->append(d); };
  cb.on_done = [done, code, body](const std::string& err) {
    done->set_value(err.empty() ? std::make_pair(*code, *body) : std::make_pair(0, err));
  };
  serving::ClientTimeouts t;
  t.total = std::chrono::milliseconds(10000);
  serving::http_request(io, serving::Url{"127.0.0.1", port, ""}, std::move(req), std::move(cb), t);
  return fut.get();
}

// Sum of the samples of one metric in Prometheus text over the label sets that contain `labels`;
// -1 when absent.
double metric(const std::string& text, const std::string& name, const std::string& labels = "") {
  std::istringstream in(text);
  std::string line;
  double sum = 0;
  bool found = false;
  while (std::getline(in, line)) {
    if (line.rfind(name, 0) != 0) continue;
    if (line.size() > name.size() && line[name.size()] != '{' && line[name.size()] != ' ') continue;
    const size_t sp = line.rfind(' ');
    if (sp == std::string::npos) continue;
    if (!labels.empty() && line.substr(0, sp).find(labels) == std::string::npos) continue;
    sum += std::strtod(line.c_str() + sp + 1, nullptr);
    found = true;
  }
  return found ? sum : -1;
}

enum class Kind {
  kStream,
  kWhole,
  kDisconnect,
  kAbort,
  kOversize,
  kMalformed,
  kWrongType,
  kTooLong
};
const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kStream:
      return "stream";
    case Kind::kWhole:
      return "whole";
    case Kind::kDisconnect:
      return "disconnect_mid_stream";
    case Kind::kAbort:
      return "abort_before_answer";
    case Kind::kOversize:
      return "oversize_body";
    case Kind::kMalformed:
      return "malformed_json";
    case Kind::kWrongType:
      return "wrong_typed_field";
    case Kind::kTooLong:
      return "prompt_past_max_model_len";
  }
  return "?";
}

// One request and what came back. Callbacks of one call run one at a time (its strand).
struct Rec {
  int64_t n = 0;
  Kind kind = Kind::kStream;
  std::string prompt;
  int status = 0;
  std::string body;  // a whole answer, or the SSE bytes not yet split into events
  std::string text;  // streamed text so far
  std::string response_id;
  std::string finish_reason;
  bool done_marker = false;
  bool bad_event = false;
  int chunks = 0;
  int cancel_after_chunks = 0;
  bool cancel_requested = false;
  std::string wrong_field;  // kWrongType: the field sent with a value of the wrong type
  int done_calls = 0;
  std::mutex mu;  // guards `call`
  std::shared_ptr<serving::ClientCall> call;
};

struct Outcome {
  bool completed = false;
  bool lost = false;
  bool expected = true;
  std::string reason;  // for errors: what came back
  std::string response_id;
};

std::string error_message(const std::string& body) {
  const json j = json::parse(body, nullptr, false);
  if (j.is_object() && j.contains("error") && j["error"].is_object()) {
    return j["error"].value("message", std::string());
  }
  return body.substr(0, 120);
}

// Classifies a finished request.
Outcome classify(Rec& r, const std::string& err) {
  Outcome o;
  const bool answered = err.empty();
  const bool cancelled = err == "cancelled";
  if (!answered && !cancelled) {
    // A transport error the client did not cause: the request got neither an answer nor an
    // error from the server.
    o.lost = true;
    o.reason = "transport: " + err;
    return o;
  }
  if (cancelled) {
    if (r.kind == Kind::kDisconnect) {
      o.reason = "client disconnected mid-stream (by design)";
    } else if (r.kind == Kind::kAbort) {
      o.reason = "client aborted before the answer (by design)";
    } else {
      o.expected = false;
      o.reason = "cancelled by the client unasked";
    }
    return o;
  }
  auto expect_status = [&](int want) {
    if (r.status == want) {
      // Grouped by the message's kind: up to its first ':' (the parser's detail), numbers as N.
      std::string msg = error_message(r.body);
      if (const size_t colon = msg.find(':'); colon != std::string::npos) msg.resize(colon);
      o.reason = std::to_string(want) + " " + std::regex_replace(msg, std::regex(R"(\d+)"), "N");
    } else {
      o.expected = false;
      o.reason = "expected " + std::to_string(want) + ", got " + std::to_string(r.status) + ": " +
                 r.body.substr(0, 160);
    }
  };
  switch (r.kind) {
    case Kind::kOversize:
      expect_status(413);
      return o;
    case Kind::kMalformed:
      expect_status(400);
      return o;
    case Kind::kWrongType: {
      expect_status(400);
      // The error must name the field (OpenAI's `param`), not just refuse the body.
      const json j = json::parse(r.body, nullptr, false);
      const bool named = j.is_object() && j.contains("error") && j["error"].is_object() &&
                         j["error"].value("param", json()) == json(r.wrong_field);
      if (o.expected && !named) {
        o.expected = false;
        o.reason = "400 not naming '" + r.wrong_field + "': " + r.body.substr(0, 160);
      }
      return o;
    }
    case Kind::kTooLong:
      expect_status(400);
      return o;
    default:
      break;
  }
  if (r.status != 200) {
    o.expected = r.status == 429;  // the waiting-queue limit under load: an answer, not a loss
    o.reason = std::to_string(r.status) + " " + error_message(r.body);
    return o;
  }
  std::string text, finish;
  if (r.kind == Kind::kWhole || r.kind == Kind::kAbort) {
    const json j = json::parse(r.body, nullptr, false);
    if (j.is_discarded() || !j.contains("choices") || !j["choices"].is_array() ||
        j["choices"].size() != 1 || !j["choices"][0]["text"].is_string()) {
      o.expected = false;
      o.reason = "200 with a malformed completion: " + r.body.substr(0, 160);
      return o;
    }
    text = j["choices"][0]["text"].get<std::string>();
    finish = j["choices"][0].value("finish_reason", std::string());
    o.response_id = j.value("id", std::string());
  } else {
    if (r.bad_event || !r.done_marker) {
      o.expected = false;
      o.reason = r.bad_event ? "stream with a malformed or error event"
                             : "stream ended without data: [DONE]";
      return o;
    }
    text = r.text;
    finish = r.finish_reason;
    o.response_id = r.response_id;
  }
  if (text.rfind(r.prompt, 0) != 0) {
    o.expected = false;
    o.reason = "answer does not echo this request's prompt (another request's answer?)";
    return o;
  }
  if (finish != "length" && finish != "stop") {
    o.expected = false;
    o.reason = "finish_reason '" + finish + "'";
    return o;
  }
  o.completed = true;
  return o;
}

// Splits SSE bytes into events as they arrive.
void on_sse(Rec& r, std::string_view d) {
  r.body.append(d);
  size_t p;
  while ((p = r.body.find("\n\n")) != std::string::npos) {
    const std::string ev = r.body.substr(0, p);
    r.body.erase(0, p + 2);
    if (ev == "data: [DONE]") {
      r.done_marker = true;
      continue;
    }
    if (r.done_marker || ev.rfind("data: ", 0) != 0) {
      r.bad_event = true;
      continue;
    }
    const json j = json::parse(ev.substr(6), nullptr, false);
    if (j.is_discarded() || j.contains("error") || !j.contains("choices")) {
      r.bad_event = true;
      continue;
    }
    const std::string id = j.value("id", std::string());
    if (r.response_id.empty()) r.response_id = id;
    if (id != r.response_id) r.bad_event = true;
    for (const auto& c : j["choices"]) {
      if (c.contains("text") && c["text"].is_string()) r.text += c["text"].get<std::string>();
      if (c.contains("finish_reason") && c["finish_reason"].is_string()) {
        r.finish_reason = c["finish_reason"].get<std::string>();
      }
    }
    ++r.chunks;
  }
}

struct Settings {
  double seconds = 600;         // traffic after warm-up, at least
  int64_t min_requests = 2000;  // and at least this many requests (warm-up included)
  int64_t max_requests = 1000000;
  double max_seconds = 1200;  // hard bound on the traffic
  int64_t warmup_requests = 200;
  int concurrency = 16;
};

class Soak {
 public:
  Soak(serving::IoRuntime& io, int port, uint64_t seed) : io_(io), port_(port), rng_(seed) {
    const char* words[] = {"the",   "river",  "stone",  "light",  "across", "quiet",
                           "north", "garden", "winter", "market", "slowly", "under"};
    for (const char* w : words) words_.push_back(w);
  }

  // Sends requests until `stop()` is true, `concurrency` at a time; returns once none is in flight
  // or `drain_s` passed (what is still in flight then is lost).
  void run(int concurrency, int64_t max_requests, const std::function<bool(int64_t sent)>& stop,
           double drain_s) {
    std::unique_lock lock(mu_);
    while (!stop(sent_) && sent_ < max_requests) {
      cv_.wait_for(lock, std::chrono::milliseconds(50), [&] { return inflight_ < concurrency; });
      if (inflight_ >= concurrency) continue;
      auto rec = next_request();
      ++sent_;
      ++inflight_;
      lock.unlock();
      send(rec);
      lock.lock();
    }
    cv_.wait_for(lock, std::chrono::milliseconds(int64_t(drain_s * 1000)),
                 [&] { return inflight_ == 0; });
  }

  json report() {
    std::lock_guard lock(mu_);
    json errors = json::object();
    for (const auto& [reason, e] : errors_) {
      errors[reason] = {{"count", e.first}, {"expected", e.second}};
    }
    json kinds = json::object();
    for (const auto& [k, n] : by_kind_) kinds[k] = n;
    int64_t errored = 0, unexpected = 0;
    for (const auto& [reason, e] : errors_) {
      errored += e.first;
      if (!e.second) unexpected += e.first;
    }
    return {{"sent", sent_},
            {"completed", completed_},
            {"errored", errored},
            {"errors", errors},
            {"unexpected", unexpected},
            {"lost", lost_ + inflight_},
            {"lost_reasons", lost_reasons_},
            {"duplicated", duplicated_},
            {"sent_by_kind", kinds}};
  }

 private:
  std::string words(int n) {
    std::string s;
    for (int i = 0; i < n; ++i) s += std::string(i ? " " : "") + words_[rng_() % words_.size()];
    return s;
  }

  std::shared_ptr<Rec> next_request() {
    auto r = std::make_shared<Rec>();
    r->n = sent_;
    // Weights: stream 35, whole 25, disconnect 11, abort 7, oversize 5, malformed 6, wrong type
    // 5, too long 6.
    const int w = static_cast<int>(rng_() % 100);
    r->kind = w < 35   ? Kind::kStream
              : w < 60 ? Kind::kWhole
              : w < 71 ? Kind::kDisconnect
              : w < 78 ? Kind::kAbort
              : w < 83 ? Kind::kOversize
              : w < 89 ? Kind::kMalformed
              : w < 94 ? Kind::kWrongType
                       : Kind::kTooLong;
    by_kind_[kind_name(r->kind)]++;
    // The marker makes every prompt unique; `echo` brings it back in the answer.
    r->prompt = "[soak-" + std::to_string(r->n) + "] " + words(3 + static_cast<int>(rng_() % 12));
    if (r->kind == Kind::kTooLong) {
      while (static_cast<int64_t>(r->prompt.size()) <= kMaxModelLen + 8)
        r->prompt += " " + words(8);
    }
    r->cancel_after_chunks = 1 + static_cast<int>(rng_() % 4);
    return r;
  }

  void send(const std::shared_ptr<Rec>& r) {
    serving::ClientRequest req;
    req.method = "POST";
    req.target = "/v1/completions";
    const bool stream = r->kind == Kind::kStream || r->kind == Kind::kDisconnect;
    json body = {{"model", "tiny"},
                 {"prompt", r->prompt},
                 {"max_tokens", 8 + static_cast<int>(rng_() % 120)},
                 {"echo", true},
                 {"ignore_eos", true},
                 {"user", "soak-" + std::to_string(r->n)},
                 {"stream", stream}};
    if (rng_() % 2) {
      body["temperature"] = 0.8;
      body["seed"] = static_cast<int64_t>(rng_() % 100000);
    } else {
      body["temperature"] = 0;
    }
    req.body = body.dump();
    if (r->kind == Kind::kOversize) {
      req.body = json{{"model", "tiny"}, {"prompt", std::string(kMaxBodyBytes + 1024, 'x')}}.dump();
    } else if (r->kind == Kind::kMalformed) {
      // Cut before the closing brace (never valid JSON), sometimes with a trailing comma.
      const int cut = 1 + static_cast<int>(rng_() % (req.body.size() - 1));
      req.body = req.body.substr(0, static_cast<size_t>(cut)) + (rng_() % 2 ? ",}" : "");
    } else if (r->kind == Kind::kWrongType) {
      // A careless client: one field as a string, a number or a list where the API wants another
      // type ("stream": "yes" is not true). Refused with 400 naming the field.
      static const std::vector<std::pair<std::string, json>> wrong = {
          {"max_tokens", "12"},
          {"stream", "yes"},
          {"echo", 1},
          {"temperature", "hot"},
          {"top_p", json::array()},
          {"seed", "42"},
          {"stop", 5},
          {"n", "2"},
          {"ignore_eos", "true"},
          {"prompt", 5},
          {"presence_penalty", json::object()},
          {"logprobs", "3"}};
      const auto& [field, value] = wrong[rng_() % wrong.size()];
      r->wrong_field = field;
      body[field] = value;
      req.body = body.dump();
    }
    serving::ClientCallbacks cb;
    cb.on_head = [r](int st, const serving::Headers&) { r->status = st; };
    cb.on_data = [this, r, stream](std::string_view d) {
      if (!stream || r->status != 200) {
        r->body.append(d);
        return;
      }
      on_sse(*r, d);
      if (r->kind == Kind::kDisconnect && !r->cancel_requested &&
          r->chunks >= r->cancel_after_chunks) {
        r->cancel_requested = true;
        cancel_soon(r, std::chrono::milliseconds(0));
      }
    };
    cb.on_done = [this, r](const std::string& err) { finish(*r, err); };
    serving::ClientTimeouts t;
    t.total = std::chrono::milliseconds(300000);  // a request that never ends becomes lost
    auto call = serving::http_request(io_, serving::Url{"127.0.0.1", port_, ""}, std::move(req),
                                      std::move(cb), t);
    {
      std::lock_guard lock(r->mu);
      r->call = call;
    }
    if (r->kind == Kind::kAbort) {
      cancel_soon(r, std::chrono::milliseconds(5 + static_cast<int>(rng_() % 300)));
    }
  }

  void cancel_soon(const std::shared_ptr<Rec>& r, std::chrono::milliseconds delay) {
    io_.schedule(delay, [this, r] {
      std::shared_ptr<serving::ClientCall> call;
      {
        std::lock_guard lock(r->mu);
        call = r->call;
      }
      if (call) {
        call->cancel();
      } else {
        cancel_soon(r, std::chrono::milliseconds(1));  // http_request has not returned yet
      }
    });
  }

  void finish(Rec& r, const std::string& err) {
    const Outcome o = classify(r, err);
    std::lock_guard lock(mu_);
    if (++r.done_calls > 1) {
      ++duplicated_;  // one request answered twice
      return;
    }
    if (!o.response_id.empty() && !response_ids_.insert(o.response_id).second) ++duplicated_;
    if (o.lost) {
      ++lost_;
      lost_reasons_[o.reason] = lost_reasons_.value(o.reason, 0) + 1;
    } else if (o.completed) {
      ++completed_;
    } else {
      auto& e = errors_[o.reason];
      e.first++;
      e.second = o.expected;
    }
    --inflight_;
    cv_.notify_all();
  }

  serving::IoRuntime& io_;
  int port_;
  std::mt19937_64 rng_;
  std::vector<std::string> words_;
  std::mutex mu_;
  std::condition_variable cv_;
  int64_t sent_ = 0, inflight_ = 0, completed_ = 0, lost_ = 0, duplicated_ = 0;
  std::map<std::string, std::pair<int64_t, bool>> errors_;
  json lost_reasons_ = json::object();
  std::set<std::string> response_ids_;
  std::map<std::string, int64_t> by_kind_;
};

// Polls /metrics until no sequence runs or waits and the pool holds no block (or `timeout_s`).
json settled_metrics(serving::IoRuntime& io, int port, double timeout_s) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(int64_t(timeout_s * 1000));
  json m;
  while (true) {
    const auto [status, text] = http_get(io, port, "/metrics");
    m = {{"status", status},
         {"kv_cache_blocks_used", metric(text, "tessera_kv_cache_blocks_used")},
         {"kv_cache_blocks_total", metric(text, "tessera_kv_cache_blocks_total")},
         {"num_requests_running", metric(text, "tessera_num_requests_running")},
         {"num_requests_waiting", metric(text, "tessera_num_requests_waiting")},
         {"engine_preemptions_total", metric(text, "tessera_engine_preemptions_total")},
         {"engine_steps_total", metric(text, "tessera_engine_steps_total")},
         {"http_connections", metric(text, "tessera_http_connections")},
         // The server's own counts, to hold the client's against.
         {"completions_answered_by_code",
          {{"200", metric(text, "tessera_http_requests_total", "code=\"200\"")},
           {"400", metric(text, "tessera_http_requests_total", "code=\"400\"")},
           {"413", metric(text, "tessera_http_requests_total", "code=\"413\"")}}},
         {"sequences_finished_by_reason",
          {{"length", metric(text, "tessera_request_success_total", "\"length\"")},
           {"stop", metric(text, "tessera_request_success_total", "\"stop\"")},
           {"abort", metric(text, "tessera_request_success_total", "\"abort\"")},
           {"error", metric(text, "tessera_request_success_total", "\"error\"")}}}};
    const bool settled = status == 200 && m["kv_cache_blocks_used"].get<double>() == 0 &&
                         m["num_requests_running"].get<double>() == 0 &&
                         m["num_requests_waiting"].get<double>() == 0 &&
                         m["http_connections"].get<double>() <= 1;
    if (settled || Clock::now() > deadline) return m;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

void wait_healthy(serving::IoRuntime& io, int port, double timeout_s) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(int64_t(timeout_s * 1000));
  while (Clock::now() < deadline) {
    if (http_get(io, port, "/health").first == 200) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  TESSERA_FAIL("tessera serve did not become healthy within ", timeout_s, " s");
}

// A positive number up to `max` (a count or a seed past int64, 1e300 or inf, does not convert).
double env_double(const char* name, double fallback, double max) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const double d = std::strtod(v, &end);
  TESSERA_CHECK(end != v && *end == '\0' && d > 0 && d <= max, name,
                " must be a positive number up to ", max, ", got '", v, "'");
  return d;
}

int run(const BenchOptions& o) {
  TESSERA_CHECK(o.world_size == 1, "tessera bench soak runs as one process, got ", o.world_size,
                " ranks");
  Settings s;
  if (o.quick) {
    s.seconds = 15;
    s.min_requests = 0;
    s.max_requests = 2000;
    s.max_seconds = 20;
    s.warmup_requests = 24;
    s.concurrency = 12;
  }
  // Overrides for a longer or shorter run than the two presets.
  s.seconds = env_double("TESSERA_SOAK_SECONDS", s.seconds, 1e6);
  if (std::getenv("TESSERA_SOAK_MIN_REQUESTS") != nullptr) {
    s.min_requests = static_cast<int64_t>(env_double("TESSERA_SOAK_MIN_REQUESTS", 1, 1e12));
  }
  s.max_seconds = std::max(s.max_seconds, 2 * s.seconds);
  const uint64_t seed = static_cast<uint64_t>(env_double("TESSERA_SOAK_SEED", 1, 1e15));

  const std::vector<std::string> argv = {self_exe(),
                                         "serve",
                                         "--model",
                                         "tiny",
                                         "--host",
                                         "127.0.0.1",
                                         "--port",
                                         "0",
                                         "--kv-cache-memory",
                                         kKvCacheMemory,
                                         "--max-model-len",
                                         std::to_string(kMaxModelLen),
                                         "--max-num-seqs",
                                         "16",
                                         "--max-body-bytes",
                                         std::to_string(kMaxBodyBytes)};
  Server server = start_server(argv, 120);
  serving::IoRuntime io(2, 1);
  io.start();
  json out;
  int rc = 0;
  try {
    wait_healthy(io, server.port, 120);
    Soak soak(io, server.port, seed);
    const auto t0 = Clock::now();
    // Warm-up: the same mix, then a pause for everything to finish before the first sample.
    soak.run(
        s.concurrency, s.warmup_requests, [](int64_t) { return false; }, 120);
    const json m0 = settled_metrics(io, server.port, 30);
    const ProcSample p0 = settled_sample(server.pid, 10);
    const double warmup_s = seconds_since(t0);
    const auto t1 = Clock::now();
    soak.run(
        s.concurrency, s.max_requests,
        [&](int64_t sent) {
          const double el = seconds_since(t1);
          return el >= s.max_seconds || (el >= s.seconds && sent >= s.min_requests);
        },
        300);
    const double traffic_s = seconds_since(t1);
    const json m1 = settled_metrics(io, server.port, 30);
    const ProcSample p1 = settled_sample(server.pid, 10);
    const int server_exit = stop_server(server, 60);
    out = soak.report();
    auto growth = [](int64_t a, int64_t b) {
      return a > 0 ? static_cast<double>(b - a) / static_cast<double>(a) : 0.0;
    };
    const double rss_growth = growth(p0.rss_kb, p1.rss_kb);
    const double fd_growth = growth(p0.fds, p1.fds);
    out["seconds"] = {{"warmup", warmup_s}, {"traffic", traffic_s}};
    out["server"] = {{"model", "tiny"},
                     {"kv_cache_memory", kKvCacheMemory},
                     {"max_model_len", kMaxModelLen},
                     {"max_body_bytes", kMaxBodyBytes},
                     {"concurrency", s.concurrency},
                     {"exit_status_after_sigterm", server_exit}};
    out["rss_kb"] = {{"start", p0.rss_kb}, {"end", p1.rss_kb}, {"growth", rss_growth}};
    out["fds"] = {{"start", p0.fds},
                  {"end", p1.fds},
                  {"growth", fd_growth},
                  {"start_by_kind", p0.fd_kinds},
                  {"end_by_kind", p1.fd_kinds}};
    out["metrics_after_warmup"] = m0;
    out["metrics_end"] = m1;
    out["preemptions"] = m1["engine_preemptions_total"];
    const bool pool_empty = m1["kv_cache_blocks_used"].get<double>() == 0 &&
                            m1["num_requests_running"].get<double>() == 0;
    std::vector<std::string> failures;
    if (out["lost"].get<int64_t>() != 0) failures.push_back("lost requests");
    if (out["duplicated"].get<int64_t>() != 0) failures.push_back("duplicated answers");
    if (out["unexpected"].get<int64_t>() != 0) failures.push_back("unexpected outcomes");
    if (out["completed"].get<int64_t>() == 0) failures.push_back("nothing completed");
    if (!(m1["engine_preemptions_total"].get<double>() > 0)) failures.push_back("no preemption");
    if (!pool_empty) failures.push_back("KV pool not empty at the end");
    if (fd_growth > 0.05) failures.push_back("open fds grew more than 5%");
    // RSS over a few seconds is allocator warm-up more than growth: judged on the full run.
    if (!o.quick && rss_growth > 0.05) failures.push_back("RSS grew more than 5%");
    if (server_exit != 0) failures.push_back("server did not exit 0 on SIGTERM");
    if (!o.quick && out["sent"].get<int64_t>() < 2000)
      failures.push_back("fewer than 2000 requests");
    out["failures"] = failures;
    out["ok"] = failures.empty();
    rc = failures.empty() ? 0 : 1;
  } catch (...) {
    io.stop();
    stop_server(server, 5);
    throw;
  }
  io.stop();
  if (o.json) {
    std::printf("%s\n", out.dump().c_str());
  } else {
    std::printf(
        "soak: %.0f s of traffic after %.0f s warm-up, concurrency %d\n"
        "sent %lld  completed %lld  errored %lld  lost %lld  duplicated %lld  unexpected %lld\n",
        out["seconds"]["traffic"].get<double>(), out["seconds"]["warmup"].get<double>(),
        s.concurrency, static_cast<long long>(out["sent"].get<int64_t>()),
        static_cast<long long>(out["completed"].get<int64_t>()),
        static_cast<long long>(out["errored"].get<int64_t>()),
        static_cast<long long>(out["lost"].get<int64_t>()),
        static_cast<long long>(out["duplicated"].get<int64_t>()),
        static_cast<long long>(out["unexpected"].get<int64_t>()));
    for (const auto& [reason, e] : out["errors"].items()) {
      std::printf("  %6lld  %s%s\n", static_cast<long long>(e["count"].get<int64_t>()),
                  reason.c_str(), e["expected"].get<bool>() ? "" : "  (UNEXPECTED)");
    }
    std::printf("RSS %lld -> %lld kB (%+.1f%%), fds %lld -> %lld (%+.1f%%)\n",
                static_cast<long long>(out["rss_kb"]["start"].get<int64_t>()),
                static_cast<long long>(out["rss_kb"]["end"].get<int64_t>()),
                100 * out["rss_kb"]["growth"].get<double>(),
                static_cast<long long>(out["fds"]["start"].get<int64_t>()),
                static_cast<long long>(out["fds"]["end"].get<int64_t>()),
                100 * out["fds"]["growth"].get<double>());
    std::printf("end: KV blocks used %.0f of %.0f, preemptions %.0f, steps %.0f\n",
                out["metrics_end"]["kv_cache_blocks_used"].get<double>(),
                out["metrics_end"]["kv_cache_blocks_total"].get<double>(),
                out["metrics_end"]["engine_preemptions_total"].get<double>(),
                out["metrics_end"]["engine_steps_total"].get<double>());
    for (const auto& f : out["failures"]) std::printf("FAIL: %s\n", f.get<std::string>().c_str());
  }
  std::fflush(stdout);
  return rc;
}

}  // namespace

Benchmark soak_benchmark() {
  return {"soak",
          "mixed traffic against tessera serve (tiny, small KV pool): lost, duplicated, errors, "
          "RSS and fds (TESSERA_SOAK_SECONDS, TESSERA_SOAK_MIN_REQUESTS override the length)",
          run};
}

}  // namespace tessera::bench

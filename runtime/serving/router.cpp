#include "runtime/serving/router.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "common/error.h"
#include "common/logging.h"
#include "runtime/serving/api_server.h"
#include "runtime/serving/http_client.h"
#include "runtime/serving/protocol.h"

namespace tessera::serving {

using nlohmann::json;

namespace {

// The text the policy matches prefixes on: the prompt, or the chat's messages in order.
std::string routing_text(const std::string& body) {
  json j = json::parse(body, nullptr, false);
  if (!j.is_object()) return "";
  std::string out;
  auto add = [&](const json& v) {
    if (v.is_string()) {
      out += v.get<std::string>();
    } else if (v.is_number_integer()) {
      out += std::to_string(v.get<int64_t>()) + ",";
    } else if (v.is_array()) {
      for (const auto& x : v) {
        if (x.is_string() || x.is_number_integer()) {
          out += x.is_string() ? x.get<std::string>() : std::to_string(x.get<int64_t>()) + ",";
        } else if (x.is_array()) {
          for (const auto& y : x) {
            if (y.is_number_integer()) out += std::to_string(y.get<int64_t>()) + ",";
          }
          break;  // the first prompt of a batch decides
        }
      }
    }
  };
  if (j.contains("messages") && j["messages"].is_array()) {
    for (const auto& m : j["messages"]) {
      if (!m.is_object()) continue;
      // A role that is not a string (the server refuses the request) routes as an empty one.
      if (m.contains("role") && m["role"].is_string()) out += m["role"].get<std::string>();
      out += ":";
      if (m.contains("content")) add(m["content"]);
      out += "\n";
    }
  } else if (j.contains("prompt")) {
    add(j["prompt"]);
  } else if (j.contains("input")) {
    add(j["input"]);
  }
  return out;
}

}  // namespace

struct Router::Impl : std::enable_shared_from_this<Router::Impl> {
  Impl(IoRuntime& io_, RouterOptions o) : io(io_), opt(std::move(o)), policy(opt.policy) {
    TESSERA_CHECK(!opt.backends.empty(), "the router needs at least one --backend");
    TESSERA_CHECK(opt.max_attempts >= 1, "max_attempts must be >= 1, got ", opt.max_attempts);
    TESSERA_CHECK(opt.failures_to_remove >= 1 && opt.successes_to_add >= 1,
                  "failures_to_remove and successes_to_add must be >= 1");
    for (const auto& b : opt.backends) {
      Worker w;
      w.url = parse_url(b);
      w.name = w.url.to_string();
      workers.push_back(w);
    }
    requests = &metrics.counter("tessera_router_requests_total",
                                "Requests sent to each replica (retries included).", {"worker"});
    cache_routed =
        &metrics.counter("tessera_router_cache_routed_total",
                         "Requests routed to a replica for its matching prefix.", {"worker"});
    failures = &metrics.counter("tessera_router_failures_total",
                                "Requests that failed on a replica before any output, by replica.",
                                {"worker"});
    retries =
        &metrics.counter("tessera_router_retries_total", "Requests retried on another replica.");
    broken_streams = &metrics.counter(
        "tessera_router_broken_streams_total",
        "Streams that lost their replica after output had started (ended with an error event).");
    auto& healthy = metrics.gauge("tessera_router_worker_healthy",
                                  "1 while the replica is in rotation.", {"worker"});
    auto& load =
        metrics.gauge("tessera_router_worker_load", "Requests in flight per replica.", {"worker"});
    metrics.on_collect([this, &healthy, &load] {
      std::lock_guard lock(mu);
      for (const auto& w : workers) {
        healthy.set({w.name}, w.healthy ? 1 : 0);
        load.set({w.name}, static_cast<double>(w.load));
      }
    });
  }

  struct Worker {
    Url url;
    std::string name;
    bool healthy = false;  // in rotation only after its first good check
    int fails = 0, oks = 0;
    int64_t load = 0, routed = 0, by_cache = 0, failures = 0;
    bool checking = false;
    // Calls in flight to this replica: cut when it is taken out, so that a replica that stopped
    // answering (SIGSTOP, a hung host) does not hold its requests forever.
    std::map<uint64_t, std::weak_ptr<ClientCall>> calls;
    uint64_t next_call = 0;
  };

  IoRuntime& io;
  RouterOptions opt;
  CacheAwarePolicy policy;
  MetricsRegistry metrics;
  Counter *requests, *cache_routed, *failures, *retries, *broken_streams;
  std::unique_ptr<HttpServer> http;
  mutable std::mutex mu;
  std::vector<Worker> workers;
  // The next health check: re-armed by check_health on an I/O thread, cancelled by shutdown() and
  // ~Router on the caller's thread, so both under timer_mu; once stop_health_checks() has set
  // `stopping` under it, no new one is armed (before, the handle was read and written from the two
  // threads unsynchronised, a data race ThreadSanitizer reported, and a check running as shutdown
  // cancelled the timer could arm the next one after it).
  std::mutex timer_mu;
  std::shared_ptr<TimerHandle> health_timer;
  std::atomic<bool> stopping{false};
  std::atomic<int64_t> in_flight{0};

  void stop_health_checks() {
    std::shared_ptr<TimerHandle> timer;
    {
      std::lock_guard lock(timer_mu);
      stopping = true;
      timer = std::move(health_timer);
    }
    if (timer) timer->cancel();
  }

  // `at_once`: a request's connection failed (the replica is out now, whatever the count of
  // failed checks); otherwise a health check's answer.
  void set_health(int i, bool ok, const std::string& why, bool at_once = false) {
    std::vector<std::shared_ptr<ClientCall>> cut;
    {
      std::lock_guard lock(mu);
      set_health_locked(i, ok, why, at_once, cut);
    }
    // Each cut call ends with an error: one that had produced nothing is retried elsewhere, a
    // stream that had started ends with an error event (Forward::on_done).
    for (auto& c : cut) c->cancel();
  }

  void set_health_locked(int i, bool ok, const std::string& why, bool at_once,
                         std::vector<std::shared_ptr<ClientCall>>& cut) {
    Worker& w = workers[i];
    if (ok) {
      w.fails = 0;
      if (!w.healthy && ++w.oks >= opt.successes_to_add) {
        w.healthy = true;
        log::warn("router: replica {} is back in rotation", w.name);
      }
    } else {
      w.oks = 0;
      w.fails = std::min(w.fails + 1, opt.failures_to_remove);
      if (w.healthy && !at_once && w.fails < opt.failures_to_remove) {
        log::warn("router: replica {} failed a health check ({} of {} in a row): {}", w.name,
                  w.fails, opt.failures_to_remove, why);
      } else if (w.healthy) {
        w.healthy = false;
        log::warn("router: replica {} taken out: {}", w.name, why);
        policy.remove_worker(i);
        for (auto& [id, call] : w.calls) {
          if (auto c = call.lock()) cut.push_back(std::move(c));
        }
        w.calls.clear();
      }
    }
  }

  void check_health() {
    if (stopping) return;
    for (int i = 0; i < static_cast<int>(workers.size()); ++i) {
      Url url;
      {
        std::lock_guard lock(mu);
        if (workers[i].checking) continue;
        workers[i].checking = true;
        url = workers[i].url;
      }
      auto self = shared_from_this();
      auto status = std::make_shared<int>(0);
      ClientTimeouts t;
      t.connect = opt.health_timeout;
      t.total = opt.health_timeout;
      ClientRequest req;
      req.target = "/health";
      http_request(io, url, req,
                   {[status](int s, const Headers&) { *status = s; }, nullptr,
                    [self, i, status](const std::string& err) {
                      {
                        std::lock_guard lock(self->mu);
                        self->workers[i].checking = false;
                      }
                      const bool ok = err.empty() && *status == 200;
                      self->set_health(
                          i, ok, err.empty() ? "/health answered " + std::to_string(*status) : err);
                    }},
                   t);
    }
    std::weak_ptr<Impl> weak = weak_from_this();
    std::lock_guard lock(timer_mu);
    if (stopping) return;
    health_timer = io.schedule(opt.health_interval, [weak] {
      if (auto self = weak.lock()) self->check_health();
    });
  }

  void handle(const std::shared_ptr<Exchange>& ex);
  void reply(Exchange& ex, HttpResponse r) { ex.respond(std::move(r)); }
};

namespace {

// One client request through the router: the replica attempts, and the relay of its response.
class Forward : public std::enable_shared_from_this<Forward> {
 public:
  Forward(std::shared_ptr<Router::Impl> r, std::shared_ptr<Exchange> ex, bool routed)
      : r_(std::move(r)), ex_(std::move(ex)), routed_(routed) {
    r_->in_flight++;
    text_ = routed_ ? routing_text(ex_->request().body) : "";
  }
  ~Forward() { r_->in_flight--; }

  void start() {
    auto self = shared_from_this();
    ex_->on_disconnect([self] {
      self->client_gone_ = true;
      if (self->call_) self->call_->cancel();
    });
    attempt();
  }

 private:
  void attempt() {
    if (client_gone_) return;
    std::vector<WorkerLoad> candidates;
    {
      std::lock_guard lock(r_->mu);
      for (int i = 0; i < static_cast<int>(r_->workers.size()); ++i) {
        const auto& w = r_->workers[i];
        if (w.healthy && !tried_.count(i)) candidates.push_back({i, w.load});
      }
    }
    CacheAwarePolicy::Choice choice;
    if (!candidates.empty()) {
      choice = r_->policy.select(text_, candidates);
    }
    if (choice.worker < 0) {
      ex_->respond(error_response(503, last_error_.empty()
                                           ? "no healthy replica"
                                           : "no replica could serve the request: " + last_error_));
      return;
    }
    worker_ = choice.worker;
    tried_.insert(worker_);
    attempts_++;
    Url url;
    {
      std::lock_guard lock(r_->mu);
      auto& w = r_->workers[worker_];
      w.load++;
      w.routed++;
      if (choice.by_cache) w.by_cache++;
      url = w.url;
      name_ = w.name;
    }
    r_->requests->inc({name_});
    if (choice.by_cache) r_->cache_routed->inc({name_});

    const HttpRequest& in = ex_->request();
    ClientRequest req;
    req.method = in.method;
    req.target = in.target;
    req.body = in.body;
    const std::string ct = in.header("content-type");
    if (!ct.empty()) req.content_type = ct;
    const std::string auth = in.header("authorization");
    if (!auth.empty()) req.headers.emplace_back("Authorization", auth);
    if (in.method != "POST") req.body.clear();
    status_ = 0;
    sse_ = false;
    body_.clear();
    auto self = shared_from_this();
    ClientTimeouts t;
    t.connect = std::chrono::milliseconds(2000);
    call_ = http_request(
        r_->io, url, std::move(req),
        {[self](int status, const Headers& hs) {
           self->ex_->post([self, status, hs] { self->on_head(status, hs); });
         },
         [self](std::string_view data) {
           self->ex_->post([self, d = std::string(data)] { self->on_data(d); });
         },
         [self](const std::string& err) { self->ex_->post([self, err] { self->on_done(err); }); }},
        t);
    {
      std::lock_guard lock(r_->mu);
      auto& w = r_->workers[worker_];
      call_id_ = ++w.next_call;
      w.calls[call_id_] = call_;
    }
  }

  void on_head(int status, const Headers& hs) {
    status_ = status;
    headers_.clear();
    for (const auto& [k, v] : hs) {
      if (k == "content-type") {
        content_type_ = v;
        sse_ = v.rfind("text/event-stream", 0) == 0;
      } else if (k == "retry-after" || k == "allow" || k == "www-authenticate") {
        headers_.emplace_back(k, v);
      }
    }
  }

  // Server-Sent Events pass through event by event as they come (an event cut off by a failing
  // replica never reaches the client, so the error event that ends such a stream is not glued to
  // half an event); anything else is gathered and sent whole.
  void on_data(const std::string& d) {
    if (client_gone_) return;
    if (!sse_) {
      body_ += d;
      return;
    }
    if (!relaying_) {
      relaying_ = true;
      ex_->start_stream(status_, content_type_, {{"Cache-Control", "no-cache"}});
    }
    // body_ holds the start of an event whose blank line has not come yet.
    const size_t searched = body_.size() >= 3 ? body_.size() - 3 : 0;
    body_ += d;
    const size_t end = complete_events(body_, searched);
    if (end == 0) return;
    ex_->send_chunk(body_.substr(0, end));
    body_.erase(0, end);
  }

  // The length of the leading complete events of `s`: up to the last blank line (an event ends
  // with "\n\n", "\r\n\r\n" or "\r\r"), looking for it from `from`; 0 when there is none.
  static size_t complete_events(const std::string& s, size_t from) {
    size_t end = 0;
    for (size_t i = from; i + 1 < s.size(); ++i) {
      if ((s[i] == '\n' && s[i + 1] == '\n') || (s[i] == '\r' && s[i + 1] == '\r')) {
        end = i + 2;
      } else if (i + 3 < s.size() && s.compare(i, 4, "\r\n\r\n") == 0) {
        end = i + 4;
      }
    }
    return end;
  }

  void on_done(const std::string& err) {
    call_.reset();
    {
      std::lock_guard lock(r_->mu);
      r_->workers[worker_].load--;
      r_->workers[worker_].calls.erase(call_id_);
    }
    if (client_gone_) return;
    const bool retryable_status =
        err.empty() && !relaying_ &&
        (status_ == 429 || status_ == 502 || status_ == 503 || status_ == 504);
    if (err.empty() && !retryable_status) {
      if (relaying_) {
        // A replica that ended cleanly without a last blank line: what it sent is passed on.
        if (!body_.empty()) ex_->send_chunk(std::move(body_));
        ex_->end_stream();
      } else {
        HttpResponse resp;
        resp.status = status_;
        resp.content_type = content_type_;
        resp.headers = headers_;
        resp.body = std::move(body_);
        ex_->respond(std::move(resp));
      }
      return;
    }
    if (!relaying_) {
      // Nothing reached the client yet: another replica may serve it.
      last_error_ = err.empty() ? name_ + " answered " + std::to_string(status_) : err;
      {
        std::lock_guard lock(r_->mu);
        r_->workers[worker_].failures++;
      }
      r_->failures->inc({name_});
      if (!err.empty()) r_->set_health(worker_, false, err, true);
      if (attempts_ < r_->opt.max_attempts) {
        r_->retries->inc();
        log::warn("router: retrying a request elsewhere: {}", last_error_);
        attempt();
        return;
      }
      if (retryable_status) {
        HttpResponse resp;
        resp.status = status_;
        resp.content_type = content_type_;
        resp.headers = headers_;
        resp.body = std::move(body_);
        ex_->respond(std::move(resp));
      } else {
        ex_->respond(error_response(502, "no replica could serve the request: " + last_error_));
      }
      return;
    }
    // The stream had started: end it with an error event rather than leave the client hanging.
    // A cut-off event is dropped (its bytes are not valid SSE).
    if (!body_.empty()) {
      log::warn("router: dropped {} bytes of an event cut off by the failing replica",
                body_.size());
      body_.clear();
    }
    r_->broken_streams->inc();
    r_->set_health(worker_, false, err, true);
    ex_->send_chunk("data: " + error_json(502, "the replica serving this stream failed: " + err) +
                    "\n\n");
    ex_->send_chunk("data: [DONE]\n\n");
    ex_->end_stream();
  }

  std::shared_ptr<Router::Impl> r_;
  std::shared_ptr<Exchange> ex_;
  bool routed_;
  std::string text_;
  std::set<int> tried_;
  int attempts_ = 0;
  int worker_ = -1;
  std::string name_;
  std::shared_ptr<ClientCall> call_;
  uint64_t call_id_ = 0;
  int status_ = 0;
  std::string content_type_ = "application/json";
  Headers headers_;
  bool sse_ = false;
  bool relaying_ = false;
  bool client_gone_ = false;
  std::string body_;
  std::string last_error_;
};

}  // namespace

void Router::Impl::handle(const std::shared_ptr<Exchange>& ex) {
  const HttpRequest& req = ex->request();
  const std::string& path = req.path;
  if (path == "/health") {
    HttpResponse r;
    int n = 0;
    {
      std::lock_guard lock(mu);
      for (const auto& w : workers) n += w.healthy ? 1 : 0;
    }
    r.status = n > 0 && !stopping ? 200 : 503;
    r.body = dump_json(
        {{"status", r.status == 200 ? "ok" : "no healthy replica"}, {"healthy_replicas", n}});
    reply(*ex, std::move(r));
    return;
  }
  if (!opt.api_keys.empty()) {
    const std::string auth = req.header("authorization");
    const std::string given = auth.rfind("Bearer ", 0) == 0 ? auth.substr(7) : "";
    bool ok = false;
    for (const auto& key : opt.api_keys) ok |= constant_time_equal(given, key);
    if (!ok) {
      reply(*ex, error_response(401, "invalid or missing API key (Authorization: Bearer)"));
      return;
    }
  }
  if (path == "/metrics" && req.method == "GET") {
    HttpResponse r;
    r.content_type = MetricsRegistry::kContentType;
    r.body = metrics.render();
    reply(*ex, std::move(r));
    return;
  }
  if (path == "/workers" && req.method == "GET") {
    json list = json::array();
    std::lock_guard lock(mu);
    for (const auto& w : workers) {
      list.push_back({{"url", w.name},
                      {"healthy", w.healthy},
                      {"load", w.load},
                      {"routed", w.routed},
                      {"routed_by_cache", w.by_cache},
                      {"failures", w.failures}});
    }
    HttpResponse r;
    r.body = dump_json({{"workers", list}});
    reply(*ex, std::move(r));
    return;
  }
  static const std::set<std::string> routed = {"/v1/completions", "/v1/chat/completions",
                                               "/v1/embeddings",  "/classify",
                                               "/tokenize",       "/detokenize"};
  const bool is_routed = routed.count(path) > 0;
  // /v1/models and /v1/models/{id} go to any healthy replica (they serve the same models).
  if (!is_routed && path != "/v1/models" && path.rfind("/v1/models/", 0) != 0) {
    reply(*ex, error_response(404, "no route " + path));
    return;
  }
  if (stopping) {
    reply(*ex, error_response(503, "the router is shutting down"));
    return;
  }
  auto f = std::make_shared<Forward>(shared_from_this(), ex, is_routed);
  f->start();
}

Router::Router(IoRuntime& io, HttpServerOptions http, RouterOptions options)
    : impl_(std::make_shared<Impl>(io, std::move(options))) {
  std::weak_ptr<Impl> weak = impl_;
  impl_->http =
      std::make_unique<HttpServer>(io, std::move(http), [weak](std::shared_ptr<Exchange> ex) {
        if (auto self = weak.lock()) self->handle(ex);
      });
}

Router::~Router() { impl_->stop_health_checks(); }

void Router::start() {
  impl_->http->start();
  impl_->check_health();
}

int Router::port() const { return impl_->http->port(); }

size_t Router::requests_in_flight() const {
  return static_cast<size_t>(std::max<int64_t>(0, impl_->in_flight.load()));
}

void Router::shutdown(std::chrono::milliseconds timeout) {
  impl_->stop_health_checks();
  impl_->http->stop_accepting();
  impl_->http->drain();
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while ((impl_->http->active_exchanges() > 0 || impl_->in_flight.load() > 0) &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  impl_->http->close_all();
}

std::vector<WorkerStatus> Router::workers() const {
  std::lock_guard lock(impl_->mu);
  std::vector<WorkerStatus> out;
  for (const auto& w : impl_->workers) {
    out.push_back({w.name, w.healthy, w.load, w.routed, w.by_cache, w.failures});
  }
  return out;
}

}  // namespace tessera::serving

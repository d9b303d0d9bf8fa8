// The router in one process (so ThreadSanitizer sees every thread of it): an IoRuntime, replicas
// that are ApiServers over FakeEngine backends on 127.0.0.1 (ephemeral ports), and a Router in
// front of them, driven over real HTTP by the independent test client from several threads at
// once. Answers through the router are compared with the same request sent straight to a replica
// and with FakeEngine's reference tokens; a replica shut down while requests are in flight (fresh
// ones retried elsewhere, a started stream ended by an error event and [DONE]), taken out and back
// in on its port; Router::shutdown draining a stream in flight.
#include "runtime/serving/router.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <cmath>
#include <thread>

#include "runtime/serving/api_server.h"
#include "tests/runtime/serving/fake_backend.h"
#include "tests/runtime/serving/http_test_client.h"
#include "tests/runtime/serving/metrics_text.h"

namespace tessera::serving::testing {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

template <typename F>
bool eventually(F pred, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return pred();
}

json completion(const std::string& prompt, int max_tokens, bool stream) {
  return {{"model", "m"},
          {"prompt", prompt},
          {"max_tokens", max_tokens},
          {"temperature", 0},
          {"stream", stream}};
}

// A non-streamed completion's text ("" plus a test failure when it is not a 200 with one).
std::string completion_text(int port, const json& body, const std::string& what) {
  auto r = http_call(port, "POST", "/v1/completions", body.dump());
  EXPECT_EQ(r.status, 200) << what << ": " << r.body;
  json j = json::parse(r.body, nullptr, false);
  if (r.status != 200 || !j.is_object() || !j.contains("choices")) {
    ADD_FAILURE() << what << ": not a completion: " << r.body;
    return "";
  }
  return j["choices"][0].value("text", "");
}

// A stream read to its end: its payloads in order ("" ends it: the end or a timeout).
struct StreamReader {
  explicit StreamReader(int port) : conn(port) {}
  bool open(const json& body) {
    if (!conn.connected()) return false;
    conn.send_request("POST", "/v1/completions", body.dump());
    head = conn.read_head(10s);
    return head.status == 200 && head.headers["content-type"] == "text/event-stream";
  }
  std::string next() {
    std::string ev = conn.read_event(10s);
    if (!ev.empty()) events.push_back(ev);
    return ev;
  }
  void read_all() {
    while (!next().empty()) {
    }
  }
  // The joined text of every event before [DONE]; false when one is not a completion chunk.
  bool text(std::string& out, size_t upto) const {
    out.clear();
    for (size_t i = 0; i < upto && i < events.size(); ++i) {
      json j = json::parse(events[i], nullptr, false);
      if (!j.is_object() || !j.contains("choices")) return false;
      out += j["choices"][0].value("text", "");
    }
    return true;
  }
  TestConnection conn;
  RawResponse head;
  std::vector<std::string> events;
};

class RouterTest : public ::testing::Test {
 protected:
  struct Replica {
    FakeLoader fake;
    std::unique_ptr<ApiServer> server;
    int port = 0;
    bool shut = false;
  };

  // Starts a replica (port 0: ephemeral) and waits until its own /health answers 200.
  std::unique_ptr<Replica> start_replica(int port = 0, ApiServerOptions api = {}) {
    auto r = std::make_unique<Replica>();
    r->fake.engine.step_time = 2ms;
    HttpServerOptions http;
    http.port = port;
    r->server = std::make_unique<ApiServer>(
        *io_, http, api, std::vector<ModelSpec>{{"m", "fake-m", "", false}}, 1, r->fake.loader());
    r->server->start();
    r->port = r->server->port();
    const int p = r->port;
    EXPECT_TRUE(eventually([p] { return http_call(p, "GET", "/health").status == 200; }, 10s))
        << "replica on port " << p << " never healthy";
    return r;
  }

  void start(int n, std::chrono::milliseconds health_interval = 50ms,
             ApiServerOptions replica_options = {}) {
    io_ = std::make_unique<IoRuntime>(4, 2);
    io_->start();
    RouterOptions opt;
    for (int i = 0; i < n; ++i) {
      replicas_.push_back(start_replica(0, replica_options));
      opt.backends.push_back("http://127.0.0.1:" + std::to_string(replicas_.back()->port));
    }
    opt.health_interval = health_interval;
    opt.health_timeout = 500ms;
    router_ = std::make_unique<Router>(*io_, HttpServerOptions{}, opt);
    router_->start();
    port_ = router_->port();
    ASSERT_TRUE(eventually(
        [this] {
          for (const auto& w : router_->workers()) {
            if (!w.healthy) return false;
          }
          return true;
        },
        5s))
        << "the router never saw every replica healthy";
  }

  void TearDown() override {
    if (router_ && !router_shut_) router_->shutdown(2s);
    for (auto& r : replicas_) {
      if (!r->shut) r->server->shutdown(1s);
    }
    if (io_) io_->stop();
    router_.reset();
    replicas_.clear();
  }

  int64_t sum(int64_t WorkerStatus::*field) const {
    int64_t s = 0;
    for (const auto& w : router_->workers()) s += w.*field;
    return s;
  }

  MetricsText metrics() const {
    auto r = http_call(port_, "GET", "/metrics");
    EXPECT_EQ(r.status, 200);
    MetricsText m = parse_metrics(r.body);
    EXPECT_TRUE(m.errors.empty()) << m.errors.front();
    return m;
  }

  std::unique_ptr<IoRuntime> io_;
  std::vector<std::unique_ptr<Replica>> replicas_;
  std::unique_ptr<Router> router_;
  bool router_shut_ = false;
  int port_ = 0;
};

// 4 threads x 10 requests, streamed and not, at once: each answer through the router equals the
// same request sent straight to a replica and the fake engine's reference; every stream ends with
// [DONE]; the router's counts add up to the 40 requests.
TEST_F(RouterTest, ConcurrentStreamedAndPlainRequestsMatchAReplica) {
  start(3);
  constexpr int kThreads = 4, kPerThread = 10;
  const FakeEngineOptions engine = replicas_[0]->fake.engine;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int j = 0; j < kPerThread; ++j) {
        const std::string prompt =
            "thread " + std::to_string(t) + " asks question " + std::to_string(j) + "?";
        const int max_tokens = 6 + (j * 7 + t) % 13;
        const bool stream = (t + j) % 2 == 0;
        const std::string what = "thread " + std::to_string(t) + " request " + std::to_string(j);
        // The reference: the same request straight to a replica, and the engine's tokens.
        const std::string direct = completion_text(replicas_[(t + j) % replicas_.size()]->port,
                                                   completion(prompt, max_tokens, false), what);
        EXPECT_EQ(direct, text_of(FakeEngine::expected_tokens(engine, byte_ids(prompt),
                                                              std::nullopt, max_tokens)))
            << what;
        if (!stream) {
          EXPECT_EQ(completion_text(port_, completion(prompt, max_tokens, false), what), direct)
              << what;
          continue;
        }
        StreamReader s(port_);
        ASSERT_TRUE(s.open(completion(prompt, max_tokens, true)))
            << what << ": " << s.head.status << " " << s.head.headers["content-type"];
        s.read_all();
        ASSERT_FALSE(s.events.empty()) << what;
        EXPECT_EQ(s.events.back(), "[DONE]") << what;
        std::string text;
        EXPECT_TRUE(s.text(text, s.events.size() - 1)) << what << ": a broken event";
        EXPECT_EQ(text, direct) << what;
      }
    });
  }
  for (auto& th : threads) th.join();

  const int64_t total = kThreads * kPerThread;
  EXPECT_EQ(sum(&WorkerStatus::routed), total);
  EXPECT_EQ(sum(&WorkerStatus::failures), 0);
  EXPECT_TRUE(eventually([this] { return sum(&WorkerStatus::load) == 0; }, 2s));
  int used = 0;
  for (const auto& w : router_->workers()) used += w.routed > 0 ? 1 : 0;
  EXPECT_GE(used, 2) << "40 distinct prompts all went to one replica";
  // /metrics says the same, per replica.
  MetricsText m = metrics();
  double requests = 0;
  for (const auto& w : router_->workers()) {
    const double v = m.value("tessera_router_requests_total", {{"worker", w.url}});
    if (!std::isnan(v)) requests += v;
    EXPECT_EQ(v, static_cast<double>(w.routed)) << w.url;
  }
  EXPECT_EQ(requests, static_cast<double>(total));
  EXPECT_EQ(m.value("tessera_router_retries_total"), 0);
  EXPECT_EQ(m.value("tessera_router_broken_streams_total"), 0);
}

// A replica shut down under load: the plain requests on it (no output yet) complete on the other
// one, the stream that had started ends with a JSON error event and [DONE], the replica is out of
// rotation at once; started again on its port, it is taken back in and gets new texts.
TEST_F(RouterTest, LosingAReplicaRetriesFreshRequestsAndEndsStartedStreams) {
  start(2);
  const FakeEngineOptions engine = replicas_[0]->fake.engine;
  const std::string prompt = "a long shared system prompt for the victim replica, then: ";
  // Long enough (1000 steps of 2 ms) to be surely in flight when the replica goes.
  constexpr int kLong = 1000;
  StreamReader stream(port_);
  ASSERT_TRUE(stream.open(completion(prompt, kLong, true)));
  ASSERT_FALSE(stream.next().empty());
  int victim = -1;
  ASSERT_TRUE(eventually(
      [&] {
        auto ws = router_->workers();
        for (int i = 0; i < static_cast<int>(ws.size()); ++i) {
          if (ws[i].load == 1) victim = i;
        }
        return victim >= 0;
      },
      2s));
  // Loads are balanced (1 and 0), so texts sharing the stream's prefix follow it to its replica.
  constexpr int kPlain = 2;
  std::vector<std::string> plain_text(kPlain);
  std::vector<std::thread> plain;
  for (int i = 0; i < kPlain; ++i) {
    plain.emplace_back([&, i] {
      plain_text[i] = completion_text(
          port_, completion(prompt + "question " + std::to_string(i), kLong, false), "plain");
    });
  }
  const bool all_on_victim =
      eventually([&] { return router_->workers()[victim].load == 1 + kPlain; }, 5s);
  EXPECT_TRUE(all_on_victim) << "load " << router_->workers()[victim].load;

  // Take it away: stop listening and cut every connection now.
  const auto cut_at = Clock::now();
  replicas_[victim]->server->shutdown(0ms);
  replicas_[victim]->shut = true;
  EXPECT_TRUE(eventually([&] { return !router_->workers()[victim].healthy; }, 1s))
      << "the shut replica still in rotation";

  // The stream: whole events, then an error event that parses, then [DONE].
  stream.read_all();
  const double stream_end_s = std::chrono::duration<double>(Clock::now() - cut_at).count();
  EXPECT_LT(stream_end_s, 5.0) << "the broken stream took long to end";
  ASSERT_GE(stream.events.size(), 3u);
  EXPECT_EQ(stream.events.back(), "[DONE]");
  const json err = json::parse(stream.events[stream.events.size() - 2], nullptr, false);
  ASSERT_TRUE(err.is_object() && err.contains("error")) << stream.events[stream.events.size() - 2];
  EXPECT_NE(err["error"].value("message", "").find("the replica serving this stream failed"),
            std::string::npos)
      << err.dump();
  std::string partial;
  EXPECT_TRUE(stream.text(partial, stream.events.size() - 2));
  const std::string full =
      text_of(FakeEngine::expected_tokens(engine, byte_ids(prompt), std::nullopt, kLong));
  EXPECT_LT(partial.size(), full.size());
  EXPECT_EQ(partial, full.substr(0, partial.size())) << "the events before the error";

  // The plain requests: retried on the other replica, complete and right.
  for (auto& th : plain) th.join();
  for (int i = 0; i < kPlain; ++i) {
    const std::string p = prompt + "question " + std::to_string(i);
    EXPECT_EQ(plain_text[i],
              text_of(FakeEngine::expected_tokens(engine, byte_ids(p), std::nullopt, kLong)))
        << "plain request " << i;
  }
  auto ws = router_->workers();
  EXPECT_FALSE(ws[victim].healthy);
  EXPECT_TRUE(ws[1 - victim].healthy);
  EXPECT_EQ(ws[victim].routed, 1 + kPlain);
  EXPECT_EQ(ws[1 - victim].routed, kPlain);
  EXPECT_EQ(ws[victim].failures, kPlain);  // the plain ones (the stream is counted as broken)
  MetricsText m = metrics();
  EXPECT_EQ(m.value("tessera_router_retries_total"), kPlain);
  EXPECT_EQ(m.value("tessera_router_broken_streams_total"), 1);
  EXPECT_EQ(m.value("tessera_router_worker_healthy", {{"worker", ws[victim].url}}), 0);
  // Health checks keep it out (nothing listens on its port).
  std::this_thread::sleep_for(200ms);  // several health intervals; the state must not change
  EXPECT_FALSE(router_->workers()[victim].healthy);

  // Back on the same port: taken in again within a few health intervals, first choice for new
  // texts (its share of the prefix tree was dropped).
  const int old_port = replicas_[victim]->port;
  std::unique_ptr<Replica> back;
  try {
    back = start_replica(old_port);
  } catch (const std::exception& e) {
    GTEST_SKIP() << "could not listen on port " << old_port << " again: " << e.what();
  }
  replicas_.push_back(std::move(back));
  ASSERT_TRUE(eventually([&] { return router_->workers()[victim].healthy; }, 3s))
      << "the replica on its port again never back in rotation";
  const int64_t before = router_->workers()[victim].routed;
  const std::string fresh = "a text no replica has seen";
  EXPECT_EQ(completion_text(port_, completion(fresh, 5, false), "fresh"),
            text_of(FakeEngine::expected_tokens(engine, byte_ids(fresh), std::nullopt, 5)));
  EXPECT_EQ(router_->workers()[victim].routed, before + 1);
}

// Router::shutdown with a stream in flight: the stream runs to its end and [DONE], shutdown returns
// once it has (well before its timeout), and the router takes no new request.
// A chat message whose role is not a string: the router's routing key read it with json::value(),
// whose type_error ended the request in the router; now it routes as an empty role and the replica
// answers 400 naming the field. The router serves on.
TEST_F(RouterTest, MalformedMessagesReachAReplicaAndGetItsAnswer) {
  start(2);
  for (const char* body : {R"({"messages": [{"role": 5, "content": "x"}], "max_tokens": 1})",
                           R"({"messages": [{"role": null, "content": "x"}], "max_tokens": 1})",
                           R"({"messages": [{"role": ["user"]}], "max_tokens": 1})"}) {
    const auto r = http_call(port_, "POST", "/v1/chat/completions", body);
    EXPECT_EQ(r.status, 400) << body << " -> " << r.body;
    EXPECT_NE(r.body.find("messages"), std::string::npos) << r.body;
  }
  const auto ok = http_call(port_, "POST", "/v1/completions", completion("fine", 2, false).dump());
  EXPECT_EQ(ok.status, 200) << ok.body;
}

TEST_F(RouterTest, ShutdownLetsAStreamInFlightFinish) {
  start(2);
  const FakeEngineOptions engine = replicas_[0]->fake.engine;
  const std::string prompt = "drain me";
  constexpr int kTokens = 500;  // about 1 s of steps
  StreamReader stream(port_);
  ASSERT_TRUE(stream.open(completion(prompt, kTokens, true)));
  ASSERT_FALSE(stream.next().empty());

  // The stream is in flight as shutdown begins (its load drops only when its replica is done).
  ASSERT_EQ(sum(&WorkerStatus::load), 1);
  std::atomic<bool> returned{false};
  std::atomic<double> took_s{0};
  std::thread shut([&] {
    const auto t0 = Clock::now();
    router_->shutdown(20s);
    took_s = std::chrono::duration<double>(Clock::now() - t0).count();
    returned = true;
  });
  router_shut_ = true;
  // A new request while draining is refused (503) or finds no listener.
  EXPECT_TRUE(eventually(
      [&] {
        auto r = http_call(port_, "POST", "/v1/completions", completion("late", 2, false).dump());
        return r.status == 0 || r.status == 503;
      },
      5s));
  stream.read_all();
  ASSERT_FALSE(stream.events.empty());
  EXPECT_EQ(stream.events.back(), "[DONE]");
  std::string text;
  EXPECT_TRUE(stream.text(text, stream.events.size() - 1));
  EXPECT_EQ(text,
            text_of(FakeEngine::expected_tokens(engine, byte_ids(prompt), std::nullopt, kTokens)));
  const bool done = eventually([&] { return returned.load(); }, 15s);
  EXPECT_TRUE(done) << "Router::shutdown did not return";
  shut.join();
  EXPECT_LT(took_s.load(), 15.0) << "shutdown waited for its timeout instead of the stream";
  EXPECT_EQ(sum(&WorkerStatus::load), 0);
}

// Router::shutdown and ApiServer::shutdown from the test's thread while the health checks of both
// re-arm their timers on I/O threads every millisecond (under ThreadSanitizer: the handle of the
// next check was written there and read here with nothing ordering the two).
TEST_F(RouterTest, ShutdownWhileHealthChecksRearm) {
  ApiServerOptions api;
  api.health_poll = 1ms;
  start(2, 1ms, api);
  for (int round = 0; round < 3; ++round) {
    // Checks run meanwhile; this thread takes no lock the I/O threads take.
    std::this_thread::sleep_for(30ms);
    if (round == 0) {
      router_->shutdown(1s);
      router_shut_ = true;
    } else {
      replicas_[round - 1]->server->shutdown(1s);
      replicas_[round - 1]->shut = true;
    }
  }
  EXPECT_EQ(http_call(port_, "GET", "/health").status, 0) << "the router still listens";
}

}  // namespace
}  // namespace tessera::serving::testing

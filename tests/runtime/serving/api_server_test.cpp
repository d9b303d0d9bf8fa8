// The OpenAI API server over real HTTP on 127.0.0.1 (ephemeral ports) with FakeEngine backends:
// generation results against the fake engine's independent reference tokens, streaming, usage,
// errors, limits, disconnects, health, shutdown, metrics.
#include "runtime/serving/api_server.h"

#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include <thread>
#include <tuple>

#include "tests/runtime/serving/fake_backend.h"
#include "tests/runtime/serving/http_test_client.h"
#include "tests/runtime/serving/metrics_text.h"

namespace tessera::serving::testing {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

std::string chatml(const std::vector<std::pair<std::string, std::string>>& messages) {
  std::string s;
  for (const auto& [role, content] : messages) {
    s += "<|im_start|>" + role + "\n" + content + "<|im_end|>\n";
  }
  return s + "<|im_start|>assistant\n";
}

template <typename F>
bool eventually(F pred, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return pred();
}

struct Reply {
  int status = 0;
  json body;
  std::map<std::string, std::string> headers;
};

class ServerTest : public ::testing::Test {
 protected:
  void start(HttpServerOptions http = {}, ApiServerOptions api = {},
             std::vector<ModelSpec> models = {{"m", "fake-m", "", false}}, int max_loaded = 2) {
    io_ = std::make_unique<IoRuntime>(2, 2);
    server_ = std::make_unique<ApiServer>(*io_, http, api, models, max_loaded, fake_.loader());
    server_->start();
    io_->start();
    port_ = server_->port();
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (http_call(port_, "GET", "/health").status != 200 &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(5ms);
    }
  }
  // One model, max one loaded; returns at once (start() waits for /health 200).
  void start_without_waiting(const ApiServerOptions& api) {
    io_ = std::make_unique<IoRuntime>(2, 2);
    server_ = std::make_unique<ApiServer>(*io_, HttpServerOptions{}, api,
                                          std::vector<ModelSpec>{{"m", "fake-m", "", false}}, 1,
                                          fake_.loader());
    server_->start();
    io_->start();
    port_ = server_->port();
  }
  void TearDown() override {
    if (server_) server_->shutdown(2s);
    if (io_) io_->stop();
  }
  Reply post(const std::string& path, const json& body, std::vector<std::string> headers = {}) {
    auto r = http_call(port_, "POST", path, body.dump(), headers);
    Reply out{r.status, json(), r.headers};
    if (!r.body.empty()) out.body = json::parse(r.body, nullptr, false);
    return out;
  }
  Reply get(const std::string& path, std::vector<std::string> headers = {}) {
    auto r = http_call(port_, "GET", path, "", headers);
    Reply out{r.status, json(), r.headers};
    out.body = json::parse(r.body, nullptr, false);
    if (out.body.is_discarded()) out.body = r.body;
    return out;
  }
  // Streams a request and returns every SSE payload (JSON parsed; "[DONE]" as a string).
  std::vector<json> stream(const std::string& path, const json& body) {
    TestConnection c(port_);
    c.send_request("POST", path, body.dump());
    auto head = c.read_head();
    EXPECT_EQ(head.status, 200);
    EXPECT_EQ(head.headers["content-type"], "text/event-stream");
    std::vector<json> events;
    for (;;) {
      std::string ev = c.read_event();
      if (ev.empty()) break;
      events.push_back(ev == "[DONE]" ? json("[DONE]") : json::parse(ev));
    }
    return events;
  }
  FakeEngine& engine() { return *fake_.last()->fake(); }

  FakeLoader fake_;
  std::unique_ptr<IoRuntime> io_;
  std::unique_ptr<ApiServer> server_;
  int port_ = 0;
};

TEST_F(ServerTest, CompletionMatchesTheEngineTokensAndCountsUsage) {
  start();
  const std::string prompt = "Hello, world";
  auto r = post("/v1/completions",
                {{"model", "m"}, {"prompt", prompt}, {"max_tokens", 12}, {"temperature", 0}});
  ASSERT_EQ(r.status, 200) << r.body.dump();
  const auto expected =
      FakeEngine::expected_tokens(fake_.engine, byte_ids(prompt, true), std::nullopt, 12);
  EXPECT_EQ(r.body["object"], "text_completion");
  EXPECT_EQ(r.body["model"], "m");
  EXPECT_EQ(r.body["choices"][0]["text"], text_of(expected));
  EXPECT_EQ(r.body["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(r.body["usage"]["prompt_tokens"], prompt.size() + 1);  // + <bos>
  EXPECT_EQ(r.body["usage"]["completion_tokens"], 12);
  EXPECT_EQ(r.body["usage"]["total_tokens"], prompt.size() + 13);
}

TEST_F(ServerTest, StreamedTextEqualsNonStreamedForTheSameSeed) {
  start();
  json body = {
      {"prompt", "The quick brown fox"}, {"max_tokens", 20}, {"seed", 1234}, {"temperature", 0.8}};
  auto whole = post("/v1/completions", body);
  ASSERT_EQ(whole.status, 200);
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  auto events = stream("/v1/completions", body);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  int chunks_with_text = 0;
  for (size_t i = 0; i + 2 < events.size(); ++i) {
    ASSERT_EQ(events[i]["choices"].size(), 1u);
    text += events[i]["choices"][0]["text"].get<std::string>();
    chunks_with_text++;
    EXPECT_TRUE(events[i]["usage"].is_null());
  }
  // One chunk per engine step: 20 tokens, 20 chunks.
  EXPECT_EQ(chunks_with_text, 20);
  EXPECT_EQ(text, whole.body["choices"][0]["text"].get<std::string>());
  const json& usage_chunk = events[events.size() - 2];
  EXPECT_TRUE(usage_chunk["choices"].empty());
  for (const char* k : {"prompt_tokens", "completion_tokens", "total_tokens"}) {
    EXPECT_EQ(usage_chunk["usage"][k], whole.body["usage"][k]) << k;
  }
  EXPECT_EQ(whole.body["usage"]["prompt_tokens"], 20);
  // The same prompt again: its first full block (16 tokens) comes from the prefix cache.
  EXPECT_FALSE(whole.body["usage"].contains("prompt_tokens_details"));
  EXPECT_EQ(usage_chunk["usage"]["prompt_tokens_details"]["cached_tokens"], 16);
  const auto expected =
      FakeEngine::expected_tokens(fake_.engine, byte_ids("The quick brown fox", true), 1234, 20);
  EXPECT_EQ(text, text_of(expected));
}

TEST_F(ServerTest, ChatUsesTheChatTemplateAndStreamsRoleThenContent) {
  start();
  json messages = json::array({{{"role", "system"}, {"content", "Be brief."}},
                               {{"role", "user"}, {"content", "Hi there"}}});
  auto r = post("/v1/chat/completions",
                {{"messages", messages}, {"max_completion_tokens", 9}, {"temperature", 0}});
  ASSERT_EQ(r.status, 200) << r.body.dump();
  const std::string rendered = chatml({{"system", "Be brief."}, {"user", "Hi there"}});
  const auto expected =
      FakeEngine::expected_tokens(fake_.engine, byte_ids(rendered, false), std::nullopt, 9);
  EXPECT_EQ(r.body["object"], "chat.completion");
  EXPECT_EQ(r.body["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(r.body["choices"][0]["message"]["content"], text_of(expected));
  EXPECT_EQ(r.body["usage"]["prompt_tokens"], rendered.size());
  auto events =
      stream("/v1/chat/completions",
             {{"messages", messages}, {"max_tokens", 9}, {"temperature", 0}, {"stream", true}});
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events[0]["object"], "chat.completion.chunk");
  EXPECT_EQ(events[0]["choices"][0]["delta"]["role"], "assistant");
  std::string text;
  for (auto& e : events) {
    if (e.is_object()) text += e["choices"][0]["delta"].value("content", "");
  }
  EXPECT_EQ(text, text_of(expected));
  EXPECT_EQ(events[events.size() - 2]["choices"][0]["finish_reason"], "length");
}

TEST_F(ServerTest, SeveralPromptsAndNGiveIndependentChoices) {
  start();
  auto r = post("/v1/completions",
                {{"prompt", json::array({"ab", "cd"})}, {"n", 2}, {"seed", 7}, {"max_tokens", 6}});
  ASSERT_EQ(r.status, 200) << r.body.dump();
  ASSERT_EQ(r.body["choices"].size(), 4u);
  for (int i = 0; i < 4; ++i) {
    const json& c = r.body["choices"][i];
    const int index = c["index"];
    const std::string prompt = index / 2 == 0 ? "ab" : "cd";
    const auto expected =
        FakeEngine::expected_tokens(fake_.engine, byte_ids(prompt, true), 7 + index % 2, 6);
    EXPECT_EQ(c["text"], text_of(expected)) << index;
  }
  EXPECT_NE(r.body["choices"][0]["text"], r.body["choices"][1]["text"]);
  EXPECT_EQ(r.body["usage"]["prompt_tokens"], 6);  // 2 prompts of 3, each counted once
  EXPECT_EQ(r.body["usage"]["completion_tokens"], 24);
}

TEST_F(ServerTest, TokenIdPromptsAndEcho) {
  start();
  auto r = post(
      "/v1/completions",
      {{"prompt", json::array({104, 105})}, {"max_tokens", 4}, {"temperature", 0}, {"echo", true}});
  ASSERT_EQ(r.status, 200) << r.body.dump();
  const auto expected = FakeEngine::expected_tokens(fake_.engine, {104, 105}, std::nullopt, 4);
  EXPECT_EQ(r.body["choices"][0]["text"], "hi" + text_of(expected));
  EXPECT_EQ(r.body["usage"]["prompt_tokens"], 2);
}

TEST_F(ServerTest, StopStringEndsTheOutputAndAbortsTheEngineRequest) {
  start();
  const std::string prompt = "stop strings";
  const auto expected =
      FakeEngine::expected_tokens(fake_.engine, byte_ids(prompt, true), std::nullopt, 40);
  const std::string full = text_of(expected);
  const std::string stop = full.substr(10, 2);
  const size_t at = full.find(stop);
  for (bool streamed : {false, true}) {
    json body = {{"prompt", prompt}, {"max_tokens", 40}, {"temperature", 0}, {"stop", stop}};
    std::string text;
    json last_choice;
    if (streamed) {
      body["stream"] = true;
      for (auto& e : stream("/v1/completions", body)) {
        if (!e.is_object()) continue;
        text += e["choices"][0]["text"].get<std::string>();
        last_choice = e["choices"][0];
      }
    } else {
      auto r = post("/v1/completions", body);
      ASSERT_EQ(r.status, 200);
      text = r.body["choices"][0]["text"];
      last_choice = r.body["choices"][0];
      EXPECT_EQ(r.body["usage"]["completion_tokens"], at + 2);
    }
    EXPECT_EQ(text, full.substr(0, at)) << streamed;
    EXPECT_EQ(last_choice["finish_reason"], "stop");
    EXPECT_EQ(last_choice["stop_reason"], stop);
  }
  // The engine was told to stop (abort) and gave every block back.
  const auto deadline = std::chrono::steady_clock::now() + 2s;
  while (engine().stats().kv_blocks_used != 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(2ms);
  }
  EXPECT_EQ(engine().aborts(), 2);
  EXPECT_EQ(engine().stats().kv_blocks_used, 0);
}

TEST_F(ServerTest, StopTokenIdsMinTokensAndEos) {
  fake_.engine.eos_every = 5;
  start();
  const std::string prompt = "eos";
  auto r = post("/v1/completions",
                {{"prompt", prompt}, {"max_tokens", 30}, {"temperature", 0}, {"min_tokens", 3}});
  ASSERT_EQ(r.status, 200);
  const auto expected =
      FakeEngine::expected_tokens(fake_.engine, byte_ids(prompt, true), std::nullopt, 30, 3);
  EXPECT_EQ(r.body["choices"][0]["text"], text_of(expected));
  EXPECT_EQ(r.body["usage"]["completion_tokens"], expected.size());
  EXPECT_EQ(r.body["choices"][0]["finish_reason"], expected.back() == 257 ? "stop" : "length");
  // ignore_eos runs to max_tokens.
  r = post("/v1/completions",
           {{"prompt", prompt}, {"max_tokens", 30}, {"temperature", 0}, {"ignore_eos", true}});
  EXPECT_EQ(r.body["usage"]["completion_tokens"], 30);
  // A stop id: the output ends with it.
  const auto plain =
      FakeEngine::expected_tokens(fake_.engine, byte_ids(prompt, true), std::nullopt, 30, 0, true);
  const int32_t stop_id = plain[4];
  r = post("/v1/completions", {{"prompt", prompt},
                               {"max_tokens", 30},
                               {"temperature", 0},
                               {"ignore_eos", true},
                               {"stop_token_ids", {stop_id}}});
  const auto until = FakeEngine::expected_tokens(fake_.engine, byte_ids(prompt, true), std::nullopt,
                                                 30, 0, true, {stop_id});
  EXPECT_EQ(r.body["choices"][0]["text"], text_of(until));
  EXPECT_EQ(r.body["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(r.body["choices"][0]["stop_reason"], stop_id);
}

TEST_F(ServerTest, Logprobs) {
  start();
  auto r = post("/v1/completions",
                {{"prompt", "lp"}, {"max_tokens", 5}, {"temperature", 0}, {"logprobs", 2}});
  ASSERT_EQ(r.status, 200) << r.body.dump();
  const json& lp = r.body["choices"][0]["logprobs"];
  ASSERT_EQ(lp["tokens"].size(), 5u);
  ASSERT_EQ(lp["token_logprobs"].size(), 5u);
  ASSERT_EQ(lp["top_logprobs"].size(), 5u);
  std::string joined;
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(lp["text_offset"][i], joined.size());
    joined += lp["tokens"][i].get<std::string>();
    EXPECT_LT(lp["token_logprobs"][i].get<double>(), 0.0);
    EXPECT_GE(lp["top_logprobs"][i].size(), 1u);
  }
  EXPECT_EQ(joined, r.body["choices"][0]["text"].get<std::string>());
  auto c = post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "x"}}}},
                                         {"max_tokens", 3},
                                         {"logprobs", true},
                                         {"top_logprobs", 2}});
  ASSERT_EQ(c.status, 200) << c.body.dump();
  const json& content = c.body["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 3u);
  EXPECT_EQ(content[0]["top_logprobs"].size(), 2u);
  EXPECT_EQ(content[0]["bytes"].size(), 1u);
}

TEST_F(ServerTest, BadRequestsNameTheFieldAndValue) {
  start();
  auto r = post("/v1/completions", {{"prompt", "x"}, {"temperature", -1}});
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.body["error"]["param"], "temperature");
  EXPECT_NE(r.body["error"]["message"].get<std::string>().find("-1"), std::string::npos);
  EXPECT_EQ(r.body["error"]["type"], "invalid_request_error");
  r = post("/v1/completions", {{"prompt", "x"}, {"max_tokens", "ten"}});
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.body["error"]["param"], "max_tokens");
  EXPECT_NE(r.body["error"]["message"].get<std::string>().find("\"ten\""), std::string::npos);
  r = post("/v1/completions", {{"max_tokens", 3}});
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.body["error"]["param"], "prompt");
  r = post("/v1/completions", {{"prompt", "x"}, {"stop", 3}});
  EXPECT_EQ(r.body["error"]["param"], "stop");
  r = post("/v1/completions", {{"prompt", "x"}, {"stream_options", {{"include_usage", true}}}});
  EXPECT_EQ(r.body["error"]["param"], "stream_options");
  r = post("/v1/completions", {{"prompt", json::array({1, 999})}});
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body["error"]["message"].get<std::string>().find("999"), std::string::npos);
  r = post("/v1/completions", {{"prompt", std::string(5000, 'a')}});
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body["error"]["message"].get<std::string>().find("4096"), std::string::npos);
  auto raw = http_call(port_, "POST", "/v1/completions", "{not json");
  EXPECT_EQ(raw.status, 400);
  EXPECT_NE(raw.body.find("not valid JSON"), std::string::npos);
  // Unknown model, unknown route, wrong method.
  r = post("/v1/completions", {{"model", "gpt-4"}, {"prompt", "x"}});
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.body["error"]["param"], "model");
  EXPECT_EQ(get("/v2/nothing").status, 404);
  auto m = get("/v1/completions");
  EXPECT_EQ(m.status, 405);
  EXPECT_EQ(m.headers["allow"], "POST");
}

TEST_F(ServerTest, ApiKeyIsCheckedOnEveryRouteButHealth) {
  ApiServerOptions api;
  api.api_keys = {"sekret-key"};
  start({}, api);
  EXPECT_EQ(get("/health").status, 200);
  for (const char* path : {"/v1/models", "/metrics"}) {
    auto r = get(path);
    EXPECT_EQ(r.status, 401) << path;
    EXPECT_EQ(r.body["error"]["type"], "authentication_error");
    EXPECT_EQ(get(path, {"Authorization: Bearer sekret-kez"}).status, 401);
    EXPECT_EQ(get(path, {"Authorization: Bearer sekret-key-longer"}).status, 401);
    EXPECT_EQ(get(path, {"Authorization: Bearer sekret-key"}).status, 200);
  }
  EXPECT_EQ(post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 1}}).status, 401);
  EXPECT_EQ(post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 1}},
                 {"Authorization: Bearer sekret-key"})
                .status,
            200);
  EXPECT_TRUE(constant_time_equal("abc", "abc"));
  EXPECT_FALSE(constant_time_equal("abc", "abd"));
  EXPECT_FALSE(constant_time_equal("abc", "ab"));
  EXPECT_FALSE(constant_time_equal("", "a"));
}

TEST_F(ServerTest, OversizeBodyGets413) {
  HttpServerOptions http;
  http.max_body_bytes = 1000;
  start(http);
  json body = {{"prompt", std::string(2000, 'a')}};
  auto r = post("/v1/completions", body);
  EXPECT_EQ(r.status, 413);
  EXPECT_EQ(r.body["error"]["code"], 413);
  // Chunked bodies are held to the same limit.
  TestConnection c(port_);
  c.send_raw("POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
  for (int i = 0; i < 3; ++i) c.send_raw("190\r\n" + std::string(400, 'a') + "\r\n");
  EXPECT_EQ(c.read_response().status, 413);
  // Both counted in the metrics, under route "refused", as is a malformed request (400).
  TestConnection bad(port_);
  bad.send_raw("POST /v1/completions HTTP/1.1\r\nContent-Length: x\r\n\r\n");
  EXPECT_EQ(bad.read_response().status, 400);
  MetricsText m = parse_metrics(http_call(port_, "GET", "/metrics").body);
  EXPECT_EQ(m.value("tessera_http_requests_total", {{"route", "refused"}, {"code", "413"}}), 2);
  EXPECT_EQ(m.value("tessera_http_requests_total", {{"route", "refused"}, {"code", "400"}}), 1);
  EXPECT_TRUE(std::isnan(
      m.value("tessera_http_requests_total", {{"route", "/v1/completions"}, {"code", "413"}})));
}

TEST_F(ServerTest, SlowClientsAreTimedOut) {
  HttpServerOptions http;
  http.header_timeout = 300ms;
  http.body_timeout = 300ms;
  start(http);
  const auto t0 = std::chrono::steady_clock::now();
  TestConnection slow_header(port_);
  slow_header.send_raw("POST /v1/completions HTTP/1.1\r\nHost: x\r\n");  // never ends
  TestConnection slow_body(port_);
  slow_body.send_raw("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{");
  TestConnection idle(port_);  // connects, sends nothing
  EXPECT_TRUE(slow_header.wait_closed(3s));
  EXPECT_TRUE(slow_body.wait_closed(3s));
  EXPECT_TRUE(idle.wait_closed(3s));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
  // The server still answers.
  EXPECT_EQ(get("/health").status, 200);
}

TEST_F(ServerTest, ConnectionLimit) {
  HttpServerOptions http;
  http.max_connections = 2;
  start(http);
  std::this_thread::sleep_for(50ms);  // the health probes' connections are gone
  TestConnection a(port_), b(port_);
  a.send_request("GET", "/health", "");
  EXPECT_EQ(a.read_response().status, 200);
  b.send_request("GET", "/health", "");
  EXPECT_EQ(b.read_response().status, 200);
  TestConnection c(port_);
  auto r = c.read_response(2s);
  EXPECT_EQ(r.status, 503);
  EXPECT_NE(r.body.find("too many connections"), std::string::npos);
  a.close();
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(get("/health").status, 200);
}

TEST_F(ServerTest, KeepAliveServesSeveralRequestsOnOneConnection) {
  start();
  TestConnection c(port_);
  for (int i = 0; i < 3; ++i) {
    c.send_request("POST", "/v1/completions", json{{"prompt", "k"}, {"max_tokens", 2}}.dump());
    auto r = c.read_response();
    EXPECT_EQ(r.status, 200) << i;
  }
  // Two pipelined requests in one write.
  const std::string req = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
  c.send_raw(req + req);
  EXPECT_EQ(c.read_response().status, 200);
  EXPECT_EQ(c.read_response().status, 200);
}

TEST_F(ServerTest, FullQueueGets429WithRetryAfter) {
  fake_.engine.max_running = 1;
  fake_.engine.step_time = 20ms;
  ApiServerOptions api;
  api.max_waiting = 2;
  start({}, api);
  // One long request runs, two wait: the queue is full.
  std::vector<std::unique_ptr<TestConnection>> conns;
  for (int i = 0; i < 3; ++i) {
    conns.push_back(std::make_unique<TestConnection>(port_));
    conns.back()->send_request(
        "POST", "/v1/completions",
        json{{"prompt", "q" + std::to_string(i)}, {"max_tokens", 50}}.dump());
    std::this_thread::sleep_for(60ms);
  }
  auto r = post("/v1/completions", {{"prompt", "late"}, {"max_tokens", 2}});
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(r.headers["retry-after"], "1");
  EXPECT_EQ(r.body["error"]["type"], "rate_limit_error");
  for (auto& c : conns) c->close();
}

TEST_F(ServerTest, DisconnectMidStreamAbortsWithinOneStepAndFreesBlocks) {
  fake_.engine.step_time = 50ms;
  start();
  TestConnection c(port_);
  c.send_request("POST", "/v1/completions",
                 json{{"prompt", "a long story"}, {"max_tokens", 1000}, {"stream", true}}.dump());
  ASSERT_EQ(c.read_head().status, 200);
  ASSERT_FALSE(c.read_event().empty());
  ASSERT_FALSE(c.read_event().empty());
  ASSERT_GT(engine().stats().kv_blocks_used, 0);
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t steps0 = engine().stats().steps;
  c.close();
  int64_t steps1 = steps0;
  while (std::chrono::steady_clock::now() - t0 < 2s) {
    const auto st = engine().stats();
    steps1 = st.steps;
    if (st.kv_blocks_used == 0) break;
    std::this_thread::sleep_for(1ms);
  }
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::printf(
      "[ measured ] blocks freed %.1f ms, %lld engine step(s) after the client closed "
      "(step 50 ms)\n",
      ms, static_cast<long long>(steps1 - steps0));
  EXPECT_EQ(engine().stats().kv_blocks_used, 0);
  EXPECT_EQ(engine().aborts(), 1);
  // The abort is seen at once and applied at the next step boundary: one step. One more is
  // tolerated for a loaded machine whose I/O thread may run late.
  EXPECT_LE(steps1 - steps0, 2) << ms << " ms";
  // Visible in /metrics.
  auto m = parse_metrics(get("/metrics").body.get<std::string>());
  EXPECT_EQ(m.value("tessera_kv_cache_blocks_used", {{"model", "m"}}), 0);
  EXPECT_EQ(m.value("tessera_request_success_total", {{"model", "m"}, {"finish_reason", "abort"}}),
            1);
}

TEST_F(ServerTest, DisconnectWhileWaitingForANonStreamedAnswerAborts) {
  fake_.engine.step_time = 20ms;
  start();
  TestConnection c(port_);
  c.send_request("POST", "/v1/completions", json{{"prompt", "x"}, {"max_tokens", 1000}}.dump());
  std::this_thread::sleep_for(100ms);
  c.close();
  const auto t0 = std::chrono::steady_clock::now();
  while (engine().aborts() == 0 && std::chrono::steady_clock::now() - t0 < 2s) {
    std::this_thread::sleep_for(1ms);
  }
  EXPECT_EQ(engine().aborts(), 1);
  EXPECT_EQ(engine().stats().kv_blocks_used, 0);
}

TEST_F(ServerTest, AnEngineThatRefusesARequestGets500AndNothingLeaks) {
  fake_.engine.refuse_after = 1;
  start();
  auto r = post("/v1/completions", {{"prompt", "x"}, {"n", 3}, {"max_tokens", 50}});
  EXPECT_EQ(r.status, 500);
  EXPECT_NE(r.body["error"]["message"].get<std::string>().find("refuses"), std::string::npos);
  // The one sequence that got in is aborted; the server's waiting count is back to 0.
  EXPECT_TRUE(eventually([&] { return engine().aborts() == 1; }, 2s));
  EXPECT_TRUE(eventually([&] { return server_->live_generations() == 0; }, 2s));
  EXPECT_EQ(engine().stats().kv_blocks_used, 0);
  auto m = parse_metrics(get("/metrics").body.get<std::string>());
  EXPECT_EQ(m.value("tessera_server_waiting_sequences"), 0);
}

TEST_F(ServerTest, HealthIs503WhileLoadingAndWhenTheEngineStalls) {
  fake_.load_time = 400ms;
  ApiServerOptions api;
  api.stall_timeout = 200ms;
  api.health_poll = 20ms;
  start_without_waiting(api);
  auto h = get("/health");
  EXPECT_EQ(h.status, 503);
  EXPECT_EQ(h.body["status"], "loading");
  EXPECT_TRUE(eventually([&] { return get("/health").status == 200; }, 5s));
  // A request runs, then the engine stops stepping.
  TestConnection c(port_);
  c.send_request("POST", "/v1/completions", json{{"prompt", "x"}, {"max_tokens", 4000}}.dump());
  std::this_thread::sleep_for(50ms);
  const auto stalled_at = std::chrono::steady_clock::now();
  engine().set_stalled(true);
  EXPECT_TRUE(eventually([&] { return get("/health").status == 503; }, 5s));
  // Not before the stall timeout (200 ms).
  EXPECT_GE(std::chrono::steady_clock::now() - stalled_at, 200ms);
  h = get("/health");
  EXPECT_EQ(h.body["status"], "stalled");
  engine().set_stalled(false);
  EXPECT_TRUE(eventually([&] { return get("/health").status == 200; }, 5s));
}

// The model loaded at start fails (a broken checkpoint): /health is 503 "error" naming the model
// and the cause, so a router sends nothing here; a request gets the load error; once a retried load
// works, /health is 200 again.
TEST_F(ServerTest, HealthIs503WhenTheModelFailedToLoad) {
  fake_.fail_loads = 2;  // the load at start, then the first request's retry
  ApiServerOptions api;
  api.health_poll = 20ms;
  start_without_waiting(api);
  EXPECT_TRUE(eventually([&] { return get("/health").body.value("status", "") == "error"; }, 5s));
  auto h = get("/health");
  EXPECT_EQ(h.status, 503);
  const std::string detail = h.body.value("detail", "");
  EXPECT_NE(detail.find("model 'm' failed to load"), std::string::npos) << detail;
  EXPECT_NE(detail.find("fake-m/model.safetensors': truncated"), std::string::npos) << detail;
  // Still 503 after several polls: nothing got loaded.
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(get("/health").status, 503);
  auto r = post("/v1/completions", json{{"prompt", "x"}, {"max_tokens", 2}});
  EXPECT_EQ(r.status, 500);
  EXPECT_NE(r.body.dump().find("truncated"), std::string::npos) << r.body.dump();
  EXPECT_EQ(get("/health").status, 503);
  // The next request's load works: served, and /health turns 200.
  r = post("/v1/completions", json{{"prompt", "x"}, {"max_tokens", 2}});
  EXPECT_EQ(r.status, 200) << r.body.dump();
  EXPECT_TRUE(eventually([&] { return get("/health").status == 200; }, 5s));
  EXPECT_EQ(get("/health").body["status"], "ok");
}

TEST_F(ServerTest, GracefulShutdownFinishesInFlightRequests) {
  fake_.engine.step_time = 10ms;
  start();
  TestConnection c(port_);
  c.send_request("POST", "/v1/completions",
                 json{{"prompt", "x"}, {"max_tokens", 30}, {"stream", true}}.dump());
  ASSERT_EQ(c.read_head().status, 200);
  std::thread stopper([&] { server_->shutdown(5s); });
  std::this_thread::sleep_for(30ms);
  // No new connections are accepted...
  TestConnection late(port_);
  EXPECT_TRUE(!late.connected() || late.read_response(1s).status != 200);
  // ...while the running stream ends normally.
  int events = 0;
  std::string last;
  for (;;) {
    std::string ev = c.read_event(3s);
    if (ev.empty()) break;
    last = ev;
    events++;
  }
  stopper.join();
  EXPECT_EQ(last, "[DONE]");
  EXPECT_EQ(events, 31);
  server_.reset();
}

TEST_F(ServerTest, ShutdownTimeoutCutsWhatIsLeft) {
  fake_.engine.step_time = 20ms;
  start();
  TestConnection c(port_);
  c.send_request("POST", "/v1/completions",
                 json{{"prompt", "x"}, {"max_tokens", 4000}, {"stream", true}}.dump());
  ASSERT_EQ(c.read_head().status, 200);
  const auto t0 = std::chrono::steady_clock::now();
  server_->shutdown(200ms);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1500ms);
  EXPECT_TRUE(c.wait_closed(2s));
  // The cut request let go of its backend on the blocking pool: closed once that pool is done.
  io_->stop();
  EXPECT_EQ(fake_.last()->closes.load(), 1);
}

TEST_F(ServerTest, ModelsTokenizeDetokenize) {
  start({}, {}, {{"m", "fake-m", "", false}, {"m-lora", "fake-m", "adapter-a", false}});
  auto models = get("/v1/models");
  ASSERT_EQ(models.status, 200);
  ASSERT_EQ(models.body["data"].size(), 2u);
  EXPECT_EQ(models.body["data"][0]["id"], "m");
  EXPECT_EQ(models.body["data"][1]["id"], "m-lora");
  EXPECT_EQ(models.body["data"][1]["parent"], "m");
  auto t = post("/tokenize", {{"model", "m"}, {"prompt", "hé"}});
  ASSERT_EQ(t.status, 200) << t.body.dump();
  EXPECT_EQ(t.body["tokens"], json(byte_ids("hé", true)));
  EXPECT_EQ(t.body["count"], 4);
  EXPECT_EQ(t.body["max_model_len"], 4096);
  auto chat = post("/tokenize", {{"messages", {{{"role", "user"}, {"content", "yo"}}}}});
  EXPECT_EQ(chat.body["count"], chatml({{"user", "yo"}}).size());
  auto d = post("/detokenize", {{"tokens", byte_ids("hé", true)}});
  ASSERT_EQ(d.status, 200);
  EXPECT_EQ(d.body["prompt"], "hé");
  EXPECT_EQ(post("/detokenize", {{"tokens", {1, 100000}}}).status, 400);
}

TEST_F(ServerTest, LoraAdaptersAreNamesOfTheBaseEngine) {
  ModelSpec m{"m", "fake-m", "", false};
  m.loras = {{"a", "/adapters/a"}, {"b", "/adapters/b"}};
  start({}, {}, {m, {"other", "fake-o", "", false}});
  auto models = get("/v1/models");
  ASSERT_EQ(models.status, 200);
  std::vector<std::string> ids;
  for (const auto& d : models.body["data"]) ids.push_back(d["id"]);
  EXPECT_EQ(ids, (std::vector<std::string>{"m", "m:a", "m:b", "other"}));
  EXPECT_EQ(models.body["data"][1]["parent"], "m");
  EXPECT_EQ(models.body.dump().find("/adapters"), std::string::npos);  // no paths
  for (const char* name : {"m:a", "m", "m:b"}) {
    auto r = post("/v1/completions", {{"model", name}, {"prompt", "x"}, {"max_tokens", 2}});
    ASSERT_EQ(r.status, 200) << name << r.body.dump();
    EXPECT_EQ(r.body["model"], name);
  }
  // One backend (the base's engine) got all three, each with its adapter name.
  ASSERT_EQ(fake_.loaded.size(), 1u);
  EXPECT_EQ(fake_.last()->fake()->loras(), (std::vector<std::string>{"a", "", "b"}));
  for (const char* name : {"m:c", "other:a", "m:/adapters/a", "/adapters/a", "m:a:b", "m:"}) {
    auto r = post("/v1/completions", {{"model", name}, {"prompt", "x"}, {"max_tokens", 1}});
    EXPECT_EQ(r.status, 404) << name;
    EXPECT_EQ(r.body["error"]["message"], std::string("The model '") + name + "' does not exist.");
    EXPECT_EQ(r.body["error"]["param"], "model");
  }
  EXPECT_EQ(fake_.loaded.size(), 1u);  // nothing else was loaded
  EXPECT_EQ(post("/v1/embeddings", {{"model", "m:a"}, {"input", "x"}}).status, 400);
  EXPECT_EQ(post("/tokenize", {{"model", "m:b"}, {"prompt", "x"}}).status, 200);
}

TEST_F(ServerTest, EmbeddingsNeedAnEncoder) {
  fake_.encoders = {"enc"};
  start({}, {}, {{"m", "fake-m", "", false}, {"enc", "fake-enc", "", false}});
  auto r = post("/v1/embeddings", {{"model", "m"}, {"input", "hello"}});
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body["error"]["message"].get<std::string>().find("not an encoder"),
            std::string::npos);
  r = post("/v1/embeddings", {{"model", "enc"}, {"input", json::array({"ab", "c"})}});
  ASSERT_EQ(r.status, 200) << r.body.dump();
  ASSERT_EQ(r.body["data"].size(), 2u);
  EXPECT_EQ(r.body["data"][0]["embedding"][0], 3.0);  // <bos> a b
  EXPECT_EQ(r.body["data"][1]["embedding"][1], 256.0 + 'c');
  EXPECT_EQ(r.body["usage"]["prompt_tokens"], 5);
  // An encoder does not generate.
  EXPECT_EQ(post("/v1/completions", {{"model", "enc"}, {"prompt", "x"}}).status, 400);
  // /classify: the fake head's logits [length, sum, first id] through a softmax, label its argmax.
  r = post("/classify", {{"model", "enc"}, {"input", json::array({"ab"})}});
  ASSERT_EQ(r.status, 200) << r.body.dump();
  const double l[3] = {3, 256.0 + 'a' + 'b', 256};  // <bos> a b
  const double z = std::exp(l[0] - l[1]) + 1 + std::exp(l[2] - l[1]);
  EXPECT_NEAR(r.body["data"][0]["probs"][1].get<double>(), 1 / z, 1e-12);
  EXPECT_NEAR(r.body["data"][0]["probs"][0].get<double>() / (std::exp(l[0] - l[1]) / z), 1, 1e-12);
  EXPECT_EQ(r.body["data"][0]["label"], "b");
  EXPECT_EQ(r.body["data"][0]["num_classes"], 3);
  EXPECT_EQ(r.body["usage"]["prompt_tokens"], 3);
  EXPECT_EQ(r.body["id"].get<std::string>().rfind("classify-", 0), 0u);
  // Ids past the vocabulary, dimensions other than the model's, truncation: 400 naming them.
  for (const auto& [body, field] : std::vector<std::pair<json, std::string>>{
           {{{"model", "enc"}, {"input", json::array({json::array({1, 100000})})}}, "input"},
           {{{"model", "enc"}, {"input", "x"}, {"dimensions", 4}}, "dimensions"},
           {{{"model", "enc"}, {"input", "x"}, {"truncate_prompt_tokens", 2}},
            "truncate_prompt_tokens"}}) {
    r = post("/v1/embeddings", body);
    EXPECT_EQ(r.status, 400) << body.dump() << " -> " << r.body.dump();
    EXPECT_EQ(r.body["error"]["param"], field) << r.body.dump();
  }
  EXPECT_EQ(post("/v1/embeddings", {{"model", "enc"}, {"input", "x"}, {"dimensions", 3}}).status,
            200);
}

// Options of the wrong JSON type are a 400 naming the field (nlohmann's type_error escaped as a
// 500 "internal error" where a handler read them with json::value()).
TEST_F(ServerTest, WrongTypedOptionsAre400NamingTheField) {
  fake_.encoders = {"enc"};
  start({}, {}, {{"m", "fake-m", "", false}, {"enc", "fake-enc", "", false}});
  const json user = {{{"role", "user"}, {"content", "yo"}}};
  const std::vector<std::tuple<std::string, json, std::string>> cases = {
      {"/tokenize", {{"prompt", "x"}, {"add_special_tokens", "yes"}}, "add_special_tokens"},
      {"/tokenize", {{"messages", user}, {"add_special_tokens", 1}}, "add_special_tokens"},
      {"/tokenize", {{"messages", user}, {"add_generation_prompt", "no"}}, "add_generation_prompt"},
      {"/tokenize",
       {{"messages", {{{"role", "user"}, {"content", {{{"type", 5}, {"text", "x"}}}}}}}},
       "messages"},
      {"/v1/embeddings",
       {{"model", "enc"}, {"input", "x"}, {"encoding_format", 5}},
       "encoding_format"},
      {"/v1/chat/completions",
       {{"messages", user}, {"max_tokens", 1}, {"response_format", {{"type", 5}}}},
       "response_format"},
  };
  for (const auto& [path, body, field] : cases) {
    const auto r = post(path, body);
    EXPECT_EQ(r.status, 400) << path << " " << body.dump() << " -> " << r.body.dump();
    EXPECT_NE(r.body.dump().find(field), std::string::npos) << path << " " << r.body.dump();
  }
  // null is the default, as OpenAI's API takes it.
  EXPECT_EQ(post("/v1/embeddings", {{"model", "enc"}, {"input", "x"}, {"encoding_format", nullptr}})
                .status,
            200);
  EXPECT_EQ(post("/tokenize", {{"prompt", "x"}, {"add_special_tokens", nullptr}}).status, 200);
}

TEST_F(ServerTest, RequestsOnlyReachConfiguredModels) {
  start({}, {}, {{"a", "fake-a", "", false}, {"b", "fake-b", "", false}}, 1);
  for (const char* name : {"/etc/passwd", "../fake-a", "fake-a", "fake-b", "./a", "a/../b", "A"}) {
    auto r = post("/v1/completions", {{"model", name}, {"prompt", "x"}, {"max_tokens", 1}});
    EXPECT_EQ(r.status, 404) << name;
  }
  EXPECT_EQ(post("/v1/completions", {{"model", "b"}, {"prompt", "x"}, {"max_tokens", 1}}).status,
            200);
  std::lock_guard lock(fake_.mu);
  for (const auto& spec : fake_.loaded) {
    EXPECT_TRUE(spec.base == "fake-a" || spec.base == "fake-b") << spec.base;
  }
}

TEST_F(ServerTest, BackendCacheSwapsModelsBehindOneEndpoint) {
  start({}, {}, {{"a", "fake-a", "", false}, {"b", "fake-b", "", false}}, 1);
  for (int i = 0; i < 3; ++i) {
    for (const char* name : {"a", "b"}) {
      auto r = post("/v1/completions", {{"model", name}, {"prompt", "x"}, {"max_tokens", 2}});
      ASSERT_EQ(r.status, 200) << name;
      EXPECT_EQ(r.body["model"], name);
    }
  }
  EXPECT_EQ(server_->cache().loads(), 6);
  EXPECT_EQ(server_->cache().evictions(), 5);
  std::lock_guard lock(fake_.mu);
  for (size_t i = 0; i + 1 < fake_.backends.size(); ++i) {
    EXPECT_EQ(fake_.backends[i]->closes.load(), 1) << i;
  }
}

TEST_F(ServerTest, MetricsFollowTheExpositionFormat) {
  start();
  post("/v1/completions", {{"prompt", "metrics"}, {"max_tokens", 5}});
  post("/v1/completions", {{"prompt", "x"}, {"temperature", -3}});
  auto raw = http_call(port_, "GET", "/metrics");
  ASSERT_EQ(raw.status, 200);
  EXPECT_EQ(raw.headers["content-type"], "text/plain; version=0.0.4; charset=utf-8");
  MetricsText m = parse_metrics(raw.body);
  EXPECT_EQ(m.errors, std::vector<std::string>{});
  EXPECT_EQ(m.value("tessera_http_requests_total", {{"route", "/v1/completions"}, {"code", "200"}}),
            1);
  EXPECT_EQ(m.value("tessera_http_requests_total", {{"route", "/v1/completions"}, {"code", "400"}}),
            1);
  EXPECT_EQ(m.value("tessera_generation_tokens_total", {{"model", "m"}}), 5);
  EXPECT_EQ(m.value("tessera_prompt_tokens_total", {{"model", "m"}}), 8);
  EXPECT_EQ(m.value("tessera_time_to_first_token_seconds_count", {{"model", "m"}}), 1);
  EXPECT_EQ(m.value("tessera_inter_token_latency_seconds_count", {{"model", "m"}}), 4);
  EXPECT_EQ(m.value("tessera_e2e_request_latency_seconds_count", {{"model", "m"}}), 1);
  EXPECT_EQ(m.value("tessera_request_queue_time_seconds_count", {{"model", "m"}}), 1);
  EXPECT_EQ(m.value("tessera_request_success_total", {{"model", "m"}, {"finish_reason", "length"}}),
            1);
  EXPECT_EQ(m.value("tessera_num_requests_running", {{"model", "m"}}), 0);
  EXPECT_EQ(m.value("tessera_kv_cache_blocks_total", {{"model", "m"}}), 1024);
  for (const char* name : {"tessera_kv_cache_usage_perc", "tessera_prefix_cache_hit_rate",
                           "tessera_num_requests_waiting"}) {
    EXPECT_EQ(m.types[name], "gauge") << name;
  }
  EXPECT_EQ(m.types["tessera_time_to_first_token_seconds"], "histogram");
}

}  // namespace
}  // namespace tessera::serving::testing

// The OpenAI-compatible server: routes (/v1/completions, /v1/chat/completions, /v1/embeddings,
// /v1/models, /health, /metrics, /tokenize, /detokenize), API keys, the waiting-queue limit,
// models behind a BackendCache, streaming, metrics and graceful shutdown, over HttpServer.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/serving/backend_cache.h"
#include "runtime/serving/http_server.h"
#include "runtime/serving/io_runtime.h"
#include "runtime/serving/metrics.h"
#include "runtime/serving/serving_backend.h"

namespace tessera::serving {

struct ApiServerOptions {
  std::vector<std::string> api_keys;  // empty: no authentication
  // Sequences admitted that have not produced anything yet; beyond this, 429 + Retry-After.
  size_t max_waiting = 512;
  int retry_after_s = 1;
  // /health turns 503 when an engine with requests made no step for this long.
  std::chrono::milliseconds stall_timeout{30000};
  std::chrono::milliseconds health_poll{250};
  int max_n = 64;
  // vLLM's --tool-call-parser with --enable-auto-tool-choice: "hermes" reads <tool_call> JSON
  // out of chat answers to requests with tools (tool_parser.h); "" = answers stay text.
  std::string tool_call_parser;
  bool preload = true;  // load the first model at start (/health is 503 "loading" until then)
  // The replicas of one `tessera serve` job: the job's router asks each to shut down with
  // POST /internal/shutdown and header "X-Tessera-Shutdown: <token>" (compared in constant
  // time), which calls on_shutdown_request. No such route while the token is empty.
  std::string shutdown_token;
  std::function<void()> on_shutdown_request;
};

class ApiServer {
 public:
  ApiServer(IoRuntime& io, HttpServerOptions http, ApiServerOptions options,
            std::vector<ModelSpec> models, int max_loaded_models, ServingBackendLoader loader);
  ~ApiServer();

  void start();  // binds; throws tessera::Error (bad options, port in use)
  int port() const;
  // Stops accepting, lets in-flight requests finish for up to `timeout`, cuts the rest (their
  // engine requests aborted), closes every backend (one that a cut request still held closes as
  // it lets go, at the latest when IoRuntime::stop() has joined the blocking pool). Call from
  // outside the I/O threads.
  void shutdown(std::chrono::milliseconds timeout);

  // What the HTTP server calls for each request read (routes, authentication, the OpenAI API):
  // tests and the fuzzer call it with an Exchange of their own, without a socket.
  void handle(std::shared_ptr<Exchange> exchange);

  MetricsRegistry& metrics();
  BackendCache& cache();
  HttpServer& http();
  size_t live_generations() const;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

// Constant-time comparison (the time does not depend on where the strings differ).
bool constant_time_equal(std::string_view a, std::string_view b);

}  // namespace tessera::serving

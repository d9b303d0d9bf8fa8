// Internal to the API server: its shared state, the generation of one request (generation.cpp)
// and the helpers both files use.
#pragma once

#include <atomic>
#include <map>
#include <mutex>
#include <string>

#include "runtime/serving/api_server.h"
#include "runtime/serving/protocol.h"

namespace tessera::serving {

struct ApiServer::Impl : std::enable_shared_from_this<ApiServer::Impl> {
  Impl(IoRuntime& io, ApiServerOptions o, std::vector<ModelSpec> m, int max_loaded,
       ServingBackendLoader loader);

  IoRuntime& io;
  ApiServerOptions opt;
  std::vector<ModelSpec> models;
  BackendCache cache;
  MetricsRegistry metrics;
  std::unique_ptr<HttpServer> http;
  int64_t created_unix = 0;

  Counter* http_requests = nullptr;
  Counter* request_success = nullptr;
  Counter* prompt_tokens = nullptr;
  Counter* generation_tokens = nullptr;
  Counter* cached_prompt_tokens = nullptr;
  Histogram* ttft = nullptr;
  Histogram* itl = nullptr;
  Histogram* e2e = nullptr;
  Histogram* queue_time = nullptr;
  Histogram* prompt_len = nullptr;
  Histogram* output_len = nullptr;

  std::atomic<int64_t> waiting_seqs{0};  // admitted sequences that produced nothing yet
  std::atomic<int64_t> live_gens{0};
  std::atomic<bool> loading{false};
  std::atomic<bool> draining{false};

  struct StallState {
    int64_t steps = -1;
    std::chrono::steady_clock::time_point changed;
  };
  std::mutex health_mu;
  std::map<std::string, StallState> stall;
  std::string load_error;
  std::string stalled_model;  // "" = none stalled
  // The next health poll: re-armed by poll_health on an I/O thread, cancelled by shutdown() and
  // ~ApiServer on the caller's thread, so both under timer_mu (no new one once `draining` was set
  // under it by stop_health_polls()).
  std::mutex timer_mu;
  std::shared_ptr<TimerHandle> health_timer;
  void stop_health_polls();

  void register_metrics();
  void poll_health();
  void handle(const std::shared_ptr<Exchange>& ex);
  void reply(Exchange& ex, const std::string& route, HttpResponse r);
  void count(const std::string& route, int status);
  // A configured name, or "NAME:ADAPTER" for one of that model's --lora adapters (then *lora is
  // set to it); anything else (a path included) is ApiError 404 naming the model.
  const ModelSpec& resolve_model(const std::string& name, std::string* lora = nullptr) const;
  // Runs fn with a lease of the model's backend on the exchange's strand, loading it (off the I/O
  // threads) on a miss.
  void with_backend(const std::shared_ptr<Exchange>& ex, const std::string& route,
                    const ModelSpec& spec, std::function<void(BackendCache::Lease)> fn);

  void handle_generate(const std::shared_ptr<Exchange>& ex, bool chat);
  void start_generation(const std::shared_ptr<Exchange>& ex, GenerationRequest req,
                        BackendCache::Lease lease);
  void handle_encoder(const std::shared_ptr<Exchange>& ex, bool classify);
  void handle_tokenize(const std::shared_ptr<Exchange>& ex);
  void handle_detokenize(const std::shared_ptr<Exchange>& ex);
  nlohmann::json model_objects() const;  // /v1/models' "data": each model and its adapters
  void handle_models(const std::shared_ptr<Exchange>& ex);
  // GET /v1/models/{id} (the openai client's models.retrieve): one object of model_objects().
  void handle_model(const std::shared_ptr<Exchange>& ex, const std::string& id);
  void handle_health(const std::shared_ptr<Exchange>& ex);
};

std::string random_hex(int n);
int64_t unix_now();

}  // namespace tessera::serving

// tessera_serving_test_server: the real HTTP layer and API server around FakeEngine backends, for
// tests that need server processes (the openai client, curl, the router with SIGKILL). Prints
// "READY <port>" once listening; SIGTERM shuts it down gracefully and exits 0.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <fstream>
#include <mutex>

#include "common/error.h"
#include "runtime/serving/api_server.h"
#include "runtime/serving/signals.h"
#include "tests/runtime/serving/fake_backend.h"

using namespace tessera::serving;

int main(int argc, char** argv) {
  CLI::App app{"serving test server (FakeEngine)"};
  std::string host = "127.0.0.1", open_log, api_key;
  int port = 0, max_loaded = 2, io_threads = 2, step_us = 2000, max_running = 8, block_size = 16;
  int64_t kv_blocks = 1024, max_model_len = 4096, max_body = 1 << 20;
  int max_waiting = 512, header_ms = 5000, body_ms = 10000, shutdown_ms = 10000, load_ms = 0;
  int eos_every = 0, max_connections = 256;
  std::vector<std::string> model_flags;
  app.add_option("--host", host);
  app.add_option("--port", port);
  app.add_option("--model", model_flags);
  app.add_option("--max-loaded-models", max_loaded);
  app.add_option("--io-threads", io_threads);
  app.add_option("--step-us", step_us);
  app.add_option("--max-running", max_running);
  app.add_option("--kv-blocks", kv_blocks);
  app.add_option("--block-size", block_size);
  app.add_option("--max-model-len", max_model_len);
  app.add_option("--max-body-bytes", max_body);
  app.add_option("--max-waiting", max_waiting);
  app.add_option("--header-timeout-ms", header_ms);
  app.add_option("--body-timeout-ms", body_ms);
  app.add_option("--shutdown-timeout-ms", shutdown_ms);
  app.add_option("--load-ms", load_ms);
  app.add_option("--eos-every", eos_every);
  app.add_option("--max-connections", max_connections);
  app.add_option("--api-key", api_key);
  app.add_option("--open-log", open_log, "append every path the loader opens to this file");
  CLI11_PARSE(app, argc, argv);

  try {
    install_termination_handler();
    std::vector<ModelSpec> models;
    for (const auto& f : model_flags) models.push_back(parse_model_flag(f));
    if (models.empty()) models.push_back(parse_model_flag("fake=fake-model"));

    testing::FakeLoader fake;
    fake.engine.step_time = std::chrono::microseconds(step_us);
    fake.engine.max_running = max_running;
    fake.engine.kv_blocks = kv_blocks;
    fake.engine.block_size = block_size;
    fake.engine.max_model_len = max_model_len;
    fake.engine.eos_every = eos_every;
    fake.load_time = std::chrono::milliseconds(load_ms);
    auto inner = fake.loader();
    std::mutex log_mu;
    // Like a real loader, it reads files of the model folder; every path it opens is logged.
    ServingBackendLoader loader = [&](const ModelSpec& spec) {
      for (const auto& dir : {spec.base, spec.adapter}) {
        if (dir.empty()) continue;
        const std::string path = dir + "/config.json";
        std::ifstream f(path);
        if (!open_log.empty()) {
          std::lock_guard lock(log_mu);
          std::ofstream(open_log, std::ios::app) << path << "\n";
        }
      }
      return inner(spec);
    };

    HttpServerOptions http;
    http.host = host;
    http.port = port;
    http.max_body_bytes = static_cast<size_t>(max_body);
    http.header_timeout = std::chrono::milliseconds(header_ms);
    http.body_timeout = std::chrono::milliseconds(body_ms);
    http.max_connections = static_cast<size_t>(max_connections);
    ApiServerOptions api;
    if (!api_key.empty()) api.api_keys.push_back(api_key);
    api.max_waiting = static_cast<size_t>(max_waiting);

    IoRuntime io(io_threads, 2);
    ApiServer server(io, http, api, models, max_loaded, loader);
    server.start();
    io.start();
    std::printf("READY %d\n", server.port());
    std::fflush(stdout);
    wait_for_termination_signal();
    server.shutdown(std::chrono::milliseconds(shutdown_ms));
    io.stop();
    std::printf("STOPPED\n");
    std::fflush(stdout);
    return 0;
  } catch (const tessera::Error& e) {
    std::fprintf(stderr, "test server: error: %s\n", e.what());
    return 1;
  }
}

// `tessera serve` (the OpenAI-compatible server around the engine, serve_engine.h) and `tessera
// router` (the cache-aware router in front of several servers). Parsing and wiring only: the
// server, router, backend cache and limits live in runtime/serving.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/logging.h"
#include "launch/cli/commands.h"
#include "launch/cli/serve_engine.h"
#include "runtime/serving/api_server.h"
#include "runtime/serving/router.h"
#include "runtime/serving/signals.h"
#include "runtime/serving/tool_parser.h"

namespace tessera::cli {

void announce_shutdown(const char* program, int signal, size_t in_flight,
                       std::chrono::milliseconds timeout) {
  const char* why = signal == SIGINT                        ? "SIGINT"
                    : signal == SIGTERM                     ? "SIGTERM"
                    : signal == serving::kEngineFailed      ? "the engine failed (error below)"
                    : signal == serving::kShutdownRequested ? "shutdown requested"
                                                            : "signal";
  std::printf("%s: %s: finishing %zu request%s in flight (at most %.3g s)\n", program, why,
              in_flight, in_flight == 1 ? "" : "s", static_cast<double>(timeout.count()) / 1000.0);
  std::fflush(stdout);
}

namespace {

struct ServeSettings {
  std::vector<std::string> models;  // NAME=PATH[:ADAPTER], or PATH / tiny (named after it)
  std::vector<std::string> loras;   // NAME=PATH: adapters in the first model's engine
  EngineFlags engine;
  double cache_threshold = 0.5;
  int64_t balance_abs_threshold = 32;
  double balance_rel_threshold = 1.1;
  std::string host = "127.0.0.1";
  int port = 8000;
  std::string api_key;
  int max_loaded_models = 1;
  int64_t max_body_bytes = 8 << 20;
  double header_timeout_s = 30;
  double body_timeout_s = 60;
  int max_connections = 1024;
  int max_waiting = 512;
  bool enable_auto_tool_choice = false;
  std::string tool_call_parser;
  double shutdown_timeout_s = 30;
  int io_threads = 2;
};

struct RouterSettings {
  std::vector<std::string> backends;
  std::string host = "127.0.0.1";
  int port = 8000;
  std::string api_key;
  double health_interval_s = 1;
  double health_timeout_s = 1;
  int health_failures = 3;
  int max_attempts = 3;
  double cache_threshold = 0.5;
  int64_t balance_abs_threshold = 32;
  double balance_rel_threshold = 1.1;
  double shutdown_timeout_s = 30;
  int io_threads = 2;
};

// A flag's seconds as milliseconds. At least 1 ms: a shorter one rounded to a 0 ms timer, which
// fires at once (every request's header "timed out"; health checks ran back to back). At most
// 1,000,000 s (11.6 days): 1e300 or inf converted to int64 is undefined, and a deadline past the
// clock's range overflows. NaN fails both comparisons.
std::chrono::milliseconds ms(double seconds, const char* flag) {
  TESSERA_CHECK(seconds >= 0.001 && seconds <= 1e6, flag,
                " must be in [0.001, 1000000] seconds, got ", seconds);
  return std::chrono::milliseconds(std::llround(seconds * 1000));
}

std::vector<std::string> api_keys(const std::string& flag) {
  if (!flag.empty()) return {flag};
  const char* env = std::getenv("TESSERA_API_KEY");
  if (env != nullptr && *env != '\0') return {env};
  return {};
}

// "NAME=PATH[:ADAPTER]", or a bare folder / built-in name served under its last path component.
serving::ModelSpec model_flag(const std::string& flag) {
  if (flag.find('=') != std::string::npos) return serving::parse_model_flag(flag);
  std::string base = flag;
  while (base.size() > 1 && base.back() == '/') base.pop_back();
  const size_t slash = base.rfind('/');
  const std::string name = slash == std::string::npos ? base : base.substr(slash + 1);
  return serving::parse_model_flag(name + "=" + base);
}

// `--lora NAME=PATH`: adapters loaded into the engine of the first --model (and of every other
// name for the same folder, which shares that engine), served as "model": "FIRST:NAME".
void attach_loras(std::vector<serving::ModelSpec>& models, const std::vector<std::string>& flags) {
  if (flags.empty()) return;
  TESSERA_CHECK(models.front().adapter.empty(), "--lora needs a base model first, --model ",
                models.front().name, " is an adapter (", models.front().adapter, ")");
  std::vector<std::pair<std::string, std::string>> loras;
  for (const auto& f : flags) {
    const size_t eq = f.find('=');
    TESSERA_CHECK(eq != std::string::npos && eq > 0 && eq + 1 < f.size(),
                  "--lora must be NAME=PATH, got '", f, "'");
    const std::string name = f.substr(0, eq);
    for (char c : name) {
      TESSERA_CHECK(c > ' ' && c != '"' && c != '\\' && c != ':', "--lora name '", name,
                    "' may not hold spaces, quotes, backslashes or ':'");
    }
    loras.emplace_back(name, f.substr(eq + 1));
  }
  const auto base = serving::cache_key_for(models.front()).base;
  for (auto& m : models) {
    if (m.adapter.empty() && serving::cache_key_for(m).base == base) m.loras = loras;
  }
}

int run_serve(const ServeSettings& s, launch::World& world) {
  TESSERA_CHECK(!s.models.empty(), "tessera serve needs at least one --model");
  std::vector<serving::ModelSpec> models;
  for (const auto& m : s.models) models.push_back(model_flag(m));
  attach_loras(models, s.loras);
  TESSERA_CHECK(s.max_loaded_models >= 1, "--max-loaded-models must be >= 1, got ",
                s.max_loaded_models);
  TESSERA_CHECK(s.port >= 0 && s.port <= 65535, "--port must be in [0, 65535], got ", s.port);
  TESSERA_CHECK(s.io_threads >= 1, "--io-threads must be >= 1, got ", s.io_threads);
  TESSERA_CHECK(s.max_body_bytes >= 1024, "--max-body-bytes must be >= 1024, got ",
                s.max_body_bytes);
  TESSERA_CHECK(s.max_connections >= 1, "--max-connections must be >= 1, got ", s.max_connections);
  TESSERA_CHECK(s.max_waiting >= 1, "--max-waiting must be >= 1, got ", s.max_waiting);
  serving::HttpServerOptions http;
  http.host = s.host;
  http.port = s.port;
  http.max_body_bytes = static_cast<size_t>(s.max_body_bytes);
  http.header_timeout = ms(s.header_timeout_s, "--header-timeout");
  http.body_timeout = ms(s.body_timeout_s, "--body-timeout");
  http.max_connections = static_cast<size_t>(s.max_connections);
  serving::ApiServerOptions api;
  api.api_keys = api_keys(s.api_key);
  api.max_waiting = static_cast<size_t>(s.max_waiting);
  if (!s.tool_call_parser.empty()) {
    TESSERA_CHECK(serving::known_tool_call_parser(s.tool_call_parser), "--tool-call-parser: '",
                  s.tool_call_parser, "' is not a known parser (",
                  serving::tool_call_parser_names(), ")");
  }
  // As vLLM: tool_choice "auto" answers are parsed only with both flags.
  TESSERA_CHECK(!s.enable_auto_tool_choice || !s.tool_call_parser.empty(),
                "--enable-auto-tool-choice needs --tool-call-parser (",
                serving::tool_call_parser_names(), ")");
  if (!s.tool_call_parser.empty() && !s.enable_auto_tool_choice) {
    log::warn("--tool-call-parser {} without --enable-auto-tool-choice: answers stay text",
              s.tool_call_parser);
  }
  if (s.enable_auto_tool_choice) api.tool_call_parser = s.tool_call_parser;
  const auto shutdown_timeout = ms(s.shutdown_timeout_s, "--shutdown-timeout");
  check_engine_flags(s.engine);

  if (world.size > 1) {
    TESSERA_CHECK(s.cache_threshold >= 0 && s.cache_threshold <= 1,
                  "--cache-threshold must be in [0, 1], got ", s.cache_threshold);
    ServeSetup setup;
    setup.models = models;
    setup.http = http;
    setup.api = api;
    setup.router.policy.cache_threshold = s.cache_threshold;
    setup.router.policy.balance_abs_threshold = s.balance_abs_threshold;
    setup.router.policy.balance_rel_threshold = s.balance_rel_threshold;
    setup.shutdown_timeout = shutdown_timeout;
    setup.io_threads = s.io_threads;
    return run_serve_job(setup, s.engine, world);
  }
  TESSERA_CHECK(s.engine.tp <= 1 && s.engine.dp <= 1, "--tp ", s.engine.tp, " / --dp ", s.engine.dp,
                " need that many ranks: run under mpirun -np N");
  check_model_folders(models);
  serving::ServingBackendLoader loader = local_engine_loader(s.engine, world.device);

  serving::install_termination_handler();
  serving::IoRuntime io(s.io_threads, 2);
  serving::ApiServer server(io, http, api, models, s.max_loaded_models, loader);
  server.start();
  io.start();
  std::printf("tessera serve: listening on http://%s:%d (%zu models, pid %d)\n", s.host.c_str(),
              server.port(), models.size(), static_cast<int>(getpid()));
  std::fflush(stdout);
  const int sig = serving::wait_for_termination_signal();
  announce_shutdown("tessera serve", sig, server.http().active_exchanges(), shutdown_timeout);
  server.shutdown(shutdown_timeout);
  io.stop();
  return 0;
}

int run_router(const RouterSettings& s, launch::World& world) {
  TESSERA_CHECK(world.size == 1, "tessera router runs as one process, got ", world.size, " ranks");
  TESSERA_CHECK(!s.backends.empty(), "tessera router needs at least one --backend URL");
  TESSERA_CHECK(s.port >= 0 && s.port <= 65535, "--port must be in [0, 65535], got ", s.port);
  TESSERA_CHECK(s.io_threads >= 1, "--io-threads must be >= 1, got ", s.io_threads);
  TESSERA_CHECK(s.max_attempts >= 1, "--max-attempts must be >= 1, got ", s.max_attempts);
  TESSERA_CHECK(s.health_failures >= 1, "--health-failures must be >= 1, got ", s.health_failures);
  TESSERA_CHECK(s.cache_threshold >= 0 && s.cache_threshold <= 1,
                "--cache-threshold must be in [0, 1], got ", s.cache_threshold);
  TESSERA_CHECK(s.balance_abs_threshold >= 0, "--balance-abs-threshold must be >= 0, got ",
                s.balance_abs_threshold);
  TESSERA_CHECK(s.balance_rel_threshold >= 1, "--balance-rel-threshold must be >= 1, got ",
                s.balance_rel_threshold);
  serving::HttpServerOptions http;
  http.host = s.host;
  http.port = s.port;
  serving::RouterOptions opt;
  opt.backends = s.backends;
  opt.api_keys = api_keys(s.api_key);
  opt.health_interval = ms(s.health_interval_s, "--health-interval");
  opt.health_timeout = ms(s.health_timeout_s, "--health-timeout");
  opt.max_attempts = s.max_attempts;
  opt.failures_to_remove = s.health_failures;
  opt.policy.cache_threshold = s.cache_threshold;
  opt.policy.balance_abs_threshold = s.balance_abs_threshold;
  opt.policy.balance_rel_threshold = s.balance_rel_threshold;
  const auto shutdown_timeout = ms(s.shutdown_timeout_s, "--shutdown-timeout");

  serving::install_termination_handler();
  serving::IoRuntime io(s.io_threads, 1);
  serving::Router router(io, http, opt);
  router.start();
  io.start();
  std::printf("tessera router: listening on http://%s:%d (%zu replicas)\n", s.host.c_str(),
              router.port(), s.backends.size());
  std::fflush(stdout);
  const int sig = serving::wait_for_termination_signal();
  announce_shutdown("tessera router", sig, router.requests_in_flight(), shutdown_timeout);
  router.shutdown(shutdown_timeout);
  io.stop();
  return 0;
}

}  // namespace

Command register_serve(CLI::App& root) {
  auto s = std::make_shared<ServeSettings>();
  auto* app = root.add_subcommand("serve",
                                  "OpenAI-compatible HTTP server (completions, chat, "
                                  "streaming, metrics)");
  app->add_option("--model", s->models,
                  "a model folder or tiny (served under its folder's name), NAME=PATH or "
                  "NAME=PATH:ADAPTER; repeat for several models behind one endpoint (one process)")
      ->required();
  app->add_option("--lora", s->loras,
                  "LoRA adapter NAME=PATH (a PEFT folder; repeatable), loaded into the first "
                  "--model's engine; requests ask for it with \"model\": \"MODEL:NAME\" and are "
                  "batched with base requests");
  auto& e = s->engine;
  app->add_option("--tp", e.tp, "ranks per tensor-parallel group (under mpirun)");
  app->add_option("--dp", e.dp,
                  "data-parallel replicas behind the cache-aware router on rank 0 (under "
                  "mpirun; default ranks / --tp)");
  app->add_option("--max-num-seqs", e.max_num_seqs, "most sequences per engine step")
      ->capture_default_str();
  app->add_option("--max-num-batched-tokens", e.max_num_batched_tokens,
                  "most tokens per engine step")
      ->capture_default_str();
  app->add_option("--max-model-len", e.max_model_len,
                  "longest prompt + output (default: the model's max_position_embeddings)");
  app->add_option("--kv-cache-memory", e.kv_cache_memory,
                  "KV cache bytes per rank (K/M/G suffixes)");
  app->add_option("--kv-cache-fraction", e.kv_cache_fraction,
                  "on a GPU without --kv-cache-memory: this fraction of its free memory");
  app->add_option("--kv-cache-dtype", e.kv_cache_dtype, "float32, bfloat16 or float16")
      ->capture_default_str();
  app->add_option("--block-size", e.block_size, "KV cache tokens per block per rank")
      ->capture_default_str();
  app->add_flag("--no-prefix-caching", e.no_prefix_caching, "recompute shared prefixes");
  app->add_option("--seed", e.seed, "sampling seed of requests without one");
  app->add_option("--generation-config", e.generation_config,
                  "auto: sampling fields a request leaves out (temperature, top_p, top_k, min_p, "
                  "repetition_penalty, max_tokens from max_new_tokens) come from the model "
                  "folder's generation_config.json, as vLLM; none: the API's defaults")
      ->capture_default_str();
  app->add_option("--chat-template", e.chat_template,
                  "chat template for every --model instead of its folder's: a file, or the "
                  "Jinja template itself");
  app->add_option("--cache-threshold", s->cache_threshold,
                  "--dp router: prefix match rate above which the replica holding it is chosen");
  app->add_option("--balance-abs-threshold", s->balance_abs_threshold,
                  "--dp router: load difference above which the least loaded replica is chosen");
  app->add_option("--balance-rel-threshold", s->balance_rel_threshold,
                  "--dp router: load ratio above which the least loaded replica is chosen");
  app->add_option("--host", s->host, "address to bind (default 127.0.0.1: this machine only)");
  app->add_option("--port", s->port, "port (0 = any free one)");
  app->add_option("--api-key", s->api_key,
                  "required as 'Authorization: Bearer KEY' on every route but /health "
                  "(default: $TESSERA_API_KEY)");
  app->add_option("--max-loaded-models", s->max_loaded_models,
                  "models kept warm at once (least recently used evicted)");
  app->add_option("--max-body-bytes", s->max_body_bytes, "request body limit (413 above)");
  app->add_option("--header-timeout", s->header_timeout_s, "seconds for a request's header");
  app->add_option("--body-timeout", s->body_timeout_s, "seconds for a request's body");
  app->add_option("--max-connections", s->max_connections, "open connections at most");
  app->add_option("--max-waiting", s->max_waiting,
                  "sequences waiting for their first token at most (429 above)");
  app->add_flag("--enable-auto-tool-choice", s->enable_auto_tool_choice,
                "parse tool calls out of chat answers to requests with tools (tool_choice auto)");
  app->add_option("--tool-call-parser", s->tool_call_parser,
                  "the format of the model's tool calls: hermes (<tool_call>{json}</tool_call>), "
                  "llama3_json / llama4_json ({json}; {json}), mistral ([TOOL_CALLS][...])");
  app->add_option("--shutdown-timeout", s->shutdown_timeout_s,
                  "seconds SIGTERM waits for requests in flight");
  app->add_option("--io-threads", s->io_threads, "HTTP I/O threads");
  return {app, [s](launch::World& world) { return run_serve(*s, world); }};
}

Command register_router(CLI::App& root) {
  auto s = std::make_shared<RouterSettings>();
  auto* app = root.add_subcommand("router", "Cache-aware router in front of several servers");
  app->add_option("--backend", s->backends, "a server's URL (http://host:port); repeat")
      ->required();
  app->add_option("--host", s->host, "address to bind (default 127.0.0.1)");
  app->add_option("--port", s->port, "port (0 = any free one)");
  app->add_option("--api-key", s->api_key, "required key (default: $TESSERA_API_KEY)");
  app->add_option("--health-interval", s->health_interval_s, "seconds between health checks");
  app->add_option("--health-timeout", s->health_timeout_s, "seconds a health check may take");
  app->add_option("--health-failures", s->health_failures,
                  "failed health checks in a row before a replica is taken out (a request's "
                  "failed connection takes it out at once)")
      ->capture_default_str();
  app->add_option("--max-attempts", s->max_attempts,
                  "replicas tried for a request that has produced no output");
  app->add_option("--cache-threshold", s->cache_threshold,
                  "prefix match rate above which the replica holding it is chosen");
  app->add_option("--balance-abs-threshold", s->balance_abs_threshold,
                  "load difference (requests) above which the least loaded replica is chosen");
  app->add_option("--balance-rel-threshold", s->balance_rel_threshold,
                  "load ratio above which the least loaded replica is chosen");
  app->add_option("--shutdown-timeout", s->shutdown_timeout_s,
                  "seconds SIGTERM waits for requests in flight");
  app->add_option("--io-threads", s->io_threads, "HTTP I/O threads");
  return {app, [s](launch::World& world) { return run_router(*s, world); }};
}

}  // namespace tessera::cli

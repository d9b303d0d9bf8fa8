#include "runtime/serving/api_server.h"

#include <nlohmann/json.hpp>

#include <random>
#include <thread>

#include "common/error.h"
#include "common/logging.h"
#include "runtime/engine/embedding_client.h"
#include "runtime/serving/api_server_impl.h"

namespace tessera::serving {

using nlohmann::json;

namespace {
// A path segment with its %XX escapes decoded (a '%' not followed by two hex digits stays as is).
std::string percent_decode(std::string_view s) {
  auto hex = [](char c) {
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
  };
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && hex(s[i + 1]) >= 0 && hex(s[i + 2]) >= 0) {
      out += static_cast<char>(hex(s[i + 1]) * 16 + hex(s[i + 2]));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}
}  // namespace

bool constant_time_equal(std::string_view a, std::string_view b) {
  // Walks the longer length whatever the contents, so timing reveals at most the lengths.
  const size_t n = std::max(a.size(), b.size());
  unsigned diff = static_cast<unsigned>(a.size() ^ b.size());
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned>(x ^ y);
  }
  return diff == 0;
}

std::string random_hex(int n) {
  thread_local std::mt19937_64 rng(std::random_device{}());
  static const char* digits = "0123456789abcdef";
  std::string s(static_cast<size_t>(n), '0');
  for (auto& c : s) c = digits[rng() & 15];
  return s;
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

ApiServer::Impl::Impl(IoRuntime& io_, ApiServerOptions o, std::vector<ModelSpec> m, int max_loaded,
                      ServingBackendLoader loader)
    : io(io_),
      opt(std::move(o)),
      models(std::move(m)),
      cache(max_loaded, [loader = std::move(loader)](const ModelSpec& spec) {
        return std::static_pointer_cast<Backend>(loader(spec));
      }) {
  TESSERA_CHECK(!models.empty(), "serving needs at least one --model");
  for (size_t i = 0; i < models.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      TESSERA_CHECK(models[i].name != models[j].name, "--model name '", models[i].name,
                    "' is given twice");
    }
    for (size_t a = 0; a < models[i].loras.size(); ++a) {
      const std::string& l = models[i].loras[a].first;
      TESSERA_CHECK(!l.empty() && l.find(':') == std::string::npos, "--lora name '", l,
                    "' must be non-empty and hold no ':'");
      for (size_t b = 0; b < a; ++b) {
        TESSERA_CHECK(models[i].loras[b].first != l, "--lora name '", l, "' is given twice");
      }
      for (const auto& other : models) {
        TESSERA_CHECK(other.name != models[i].name + ":" + l, "--model name '", other.name,
                      "' is also model '", models[i].name, "' with --lora '", l, "'");
      }
    }
  }
  created_unix = unix_now();
  register_metrics();
}

void ApiServer::Impl::register_metrics() {
  const std::vector<double> latency = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                       0.5,   1,      2.5,   5,    10,    20,   40,  80};
  const std::vector<double> tokens = {1, 4, 16, 64, 256, 1024, 4096, 16384, 65536};
  http_requests =
      &metrics.counter("tessera_http_requests_total",
                       "HTTP requests answered, by route and status code.", {"route", "code"});
  request_success = &metrics.counter(
      "tessera_request_success_total",
      "Generated sequences finished, by model and finish reason (stop, length, abort, error).",
      {"model", "finish_reason"});
  prompt_tokens =
      &metrics.counter("tessera_prompt_tokens_total", "Prompt tokens processed.", {"model"});
  generation_tokens =
      &metrics.counter("tessera_generation_tokens_total", "Tokens generated.", {"model"});
  cached_prompt_tokens = &metrics.counter("tessera_prompt_tokens_cached_total",
                                          "Prompt tokens served from the prefix cache.", {"model"});
  ttft = &metrics.histogram("tessera_time_to_first_token_seconds",
                            "From the request's arrival to its first generated token.", {"model"},
                            latency);
  itl =
      &metrics.histogram("tessera_inter_token_latency_seconds",
                         "Between consecutive generated tokens of a sequence.", {"model"}, latency);
  e2e = &metrics.histogram("tessera_e2e_request_latency_seconds",
                           "From the request's arrival to the end of its sequence.", {"model"},
                           latency);
  queue_time = &metrics.histogram(
      "tessera_request_queue_time_seconds",
      "From the request's arrival to the engine's first output for it (model load, waiting "
      "queue and its first step).",
      {"model"}, latency);
  prompt_len = &metrics.histogram("tessera_request_prompt_tokens", "Prompt length of sequences.",
                                  {"model"}, tokens);
  output_len = &metrics.histogram("tessera_request_generation_tokens",
                                  "Generated length of sequences.", {"model"}, tokens);

  auto& running =
      metrics.gauge("tessera_num_requests_running", "Sequences the engine is running.", {"model"});
  auto& waiting = metrics.gauge("tessera_num_requests_waiting",
                                "Sequences waiting in the engine's queue.", {"model"});
  auto& kv_usage = metrics.gauge("tessera_kv_cache_usage_perc",
                                 "Fraction of KV cache blocks in use (0 to 1).", {"model"});
  auto& kv_used =
      metrics.gauge("tessera_kv_cache_blocks_used", "KV cache blocks in use.", {"model"});
  auto& kv_total =
      metrics.gauge("tessera_kv_cache_blocks_total", "KV cache blocks in the pool.", {"model"});
  auto& hit = metrics.gauge("tessera_prefix_cache_hit_rate",
                            "Fraction of prompt tokens found in the prefix cache.", {"model"});
  auto& steps = metrics.counter("tessera_engine_steps_total", "Engine steps run.", {"model"});
  auto& preempt = metrics.counter("tessera_engine_preemptions_total",
                                  "Sequences preempted by the engine.", {"model"});
  auto& queued = metrics.gauge("tessera_server_waiting_sequences",
                               "Sequences admitted by the server that produced nothing yet (the "
                               "waiting-queue limit applies to this).");
  auto& loaded = metrics.gauge("tessera_models_loaded", "Backends warm in the backend cache.");
  auto& loads = metrics.counter("tessera_backend_loads_total", "Backends loaded.");
  auto& evictions = metrics.counter("tessera_backend_evictions_total", "Backends evicted.");
  auto& close_errors = metrics.counter("tessera_backend_close_errors_total",
                                       "Backend close() calls that raised (logged, swallowed).");
  auto& connections = metrics.gauge("tessera_http_connections", "Open HTTP connections.");
  metrics.on_collect([this, &running, &waiting, &kv_usage, &kv_used, &kv_total, &hit, &steps,
                      &preempt, &queued, &loaded, &loads, &evictions, &close_errors, &connections] {
    for (Gauge* g : {&running, &waiting, &kv_usage, &kv_used, &kv_total, &hit}) g->clear();
    int n = 0;
    cache.visit([&](const ModelSpec& spec, Backend& b) {
      ++n;
      auto* engine = static_cast<ServingBackend&>(b).engine();
      if (engine == nullptr) return;
      const auto s = engine->stats();
      const LabelValues l = {spec.name};
      running.set(l, static_cast<double>(s.running));
      waiting.set(l, static_cast<double>(s.waiting));
      kv_used.set(l, static_cast<double>(s.kv_blocks_used));
      kv_total.set(l, static_cast<double>(s.kv_blocks_total));
      kv_usage.set(l, s.kv_blocks_total > 0 ? static_cast<double>(s.kv_blocks_used) /
                                                  static_cast<double>(s.kv_blocks_total)
                                            : 0.0);
      hit.set(l, s.prefix_hit_rate);
      steps.set(l, static_cast<double>(s.steps));
      preempt.set(l, static_cast<double>(s.preemptions));
    });
    queued.set({}, static_cast<double>(waiting_seqs.load()));
    loaded.set({}, n);
    loads.set({}, static_cast<double>(cache.loads()));
    evictions.set({}, static_cast<double>(cache.evictions()));
    close_errors.set({}, static_cast<double>(cache.close_errors()));
    connections.set({}, http ? static_cast<double>(http->open_connections()) : 0.0);
  });
}

void ApiServer::Impl::count(const std::string& route, int status) {
  http_requests->inc({route, std::to_string(status)});
}

void ApiServer::Impl::reply(Exchange& ex, const std::string& route, HttpResponse r) {
  count(route, r.status);
  ex.respond(std::move(r));
}

const ModelSpec& ApiServer::Impl::resolve_model(const std::string& name, std::string* lora) const {
  if (lora != nullptr) lora->clear();
  if (name.empty()) return models.front();
  for (const auto& m : models) {
    if (m.name == name) return m;
  }
  // "BASE:ADAPTER": an adapter loaded into BASE's engine (--lora), matched by name only.
  const size_t colon = name.rfind(':');
  if (colon != std::string::npos) {
    const std::string base = name.substr(0, colon), adapter = name.substr(colon + 1);
    for (const auto& m : models) {
      if (m.name != base) continue;
      for (const auto& l : m.loras) {
        if (l.first != adapter) continue;
        if (lora != nullptr) *lora = adapter;
        return m;
      }
    }
  }
  // Only configured names are ever served: a path or anything else is just an unknown model.
  throw ApiError(404, "The model '" + name + "' does not exist.", "model");
}

void ApiServer::Impl::with_backend(const std::shared_ptr<Exchange>& ex, const std::string& route,
                                   const ModelSpec& spec,
                                   std::function<void(BackendCache::Lease)> fn) {
  if (auto lease = cache.try_get(spec)) {
    fn(std::move(lease));
    return;
  }
  auto self = shared_from_this();
  io.post_blocking([self, ex, route, spec, fn = std::move(fn)]() mutable {
    if (ex->disconnected()) return;
    try {
      auto lease = std::make_shared<BackendCache::Lease>(self->cache.get_or_load(spec));
      ex->post([self, ex, route, lease, fn = std::move(fn)]() mutable {
        try {
          fn(std::move(*lease));
        } catch (const ApiError& e) {
          self->reply(*ex, route, e.response());
        } catch (const std::exception& e) {
          self->reply(*ex, route, error_response(500, std::string("internal error: ") + e.what()));
        }
      });
    } catch (const std::exception& e) {
      log::error("serving: loading model '{}' failed: {}", spec.name, e.what());
      ex->post([self, ex, route, name = spec.name, what = std::string(e.what())] {
        self->reply(*ex, route,
                    error_response(500, "model '" + name + "' failed to load: " + what, "model"));
      });
    }
  });
}

void ApiServer::Impl::handle(const std::shared_ptr<Exchange>& ex) {
  const HttpRequest& req = ex->request();
  struct Route {
    const char* path;
    const char* method;
  };
  static const Route routes[] = {
      {"/v1/completions", "POST"}, {"/v1/chat/completions", "POST"},
      {"/v1/embeddings", "POST"},  {"/v1/models", "GET"},
      {"/health", "GET"},          {"/metrics", "GET"},
      {"/tokenize", "POST"},       {"/detokenize", "POST"},
      {"/classify", "POST"},
  };
  if (!opt.shutdown_token.empty() && req.path == "/internal/shutdown") {
    if (req.method != "POST" ||
        !constant_time_equal(req.header("x-tessera-shutdown"), opt.shutdown_token)) {
      reply(*ex, "other", error_response(404, "no route " + req.path));
      return;
    }
    HttpResponse r;
    r.body = R"({"status":"shutting down"})";
    reply(*ex, "/internal/shutdown", std::move(r));
    if (opt.on_shutdown_request) opt.on_shutdown_request();
    return;
  }
  // GET /v1/models/{id}: one route for every id (one metrics label), the id percent-decoded.
  static const Route model_route = {"/v1/models/{model}", "GET"};
  static constexpr std::string_view kModelPrefix = "/v1/models/";
  const Route* route = nullptr;
  for (const auto& r : routes) {
    if (req.path == r.path) route = &r;
  }
  if (route == nullptr && req.path.size() > kModelPrefix.size() &&
      req.path.compare(0, kModelPrefix.size(), kModelPrefix) == 0) {
    route = &model_route;
  }
  if (route == nullptr) {
    reply(*ex, "other", error_response(404, "no route " + req.path));
    return;
  }
  const std::string name = route->path;
  if (req.method != route->method) {
    HttpResponse r = error_response(405, "method " + req.method + " is not allowed on " + name +
                                             " (use " + route->method + ")");
    r.headers.emplace_back("Allow", route->method);
    reply(*ex, name, std::move(r));
    return;
  }
  if (name != "/health" && !opt.api_keys.empty()) {
    const std::string auth = req.header("authorization");
    const std::string prefix = "Bearer ";
    const std::string given = auth.rfind(prefix, 0) == 0 ? auth.substr(prefix.size()) : "";
    bool ok = false;
    for (const auto& key : opt.api_keys) ok |= constant_time_equal(given, key);
    if (!ok) {
      HttpResponse r = error_response(401, "invalid or missing API key (Authorization: Bearer)");
      r.headers.emplace_back("WWW-Authenticate", "Bearer");
      reply(*ex, name, std::move(r));
      return;
    }
  }
  try {
    if (name == "/v1/completions") {
      handle_generate(ex, false);
    } else if (name == "/v1/chat/completions") {
      handle_generate(ex, true);
    } else if (name == "/v1/embeddings") {
      handle_encoder(ex, false);
    } else if (name == "/classify") {
      handle_encoder(ex, true);
    } else if (name == "/v1/models") {
      handle_models(ex);
    } else if (route == &model_route) {
      handle_model(ex, percent_decode(req.path.substr(kModelPrefix.size())));
    } else if (name == "/health") {
      handle_health(ex);
    } else if (name == "/metrics") {
      HttpResponse r;
      r.content_type = MetricsRegistry::kContentType;
      r.body = metrics.render();
      reply(*ex, name, std::move(r));
    } else if (name == "/tokenize") {
      handle_tokenize(ex);
    } else if (name == "/detokenize") {
      handle_detokenize(ex);
    }
  } catch (const ApiError& e) {
    reply(*ex, name, e.response());
  }
}

json ApiServer::Impl::model_objects() const {
  json data = json::array();
  for (const auto& m : models) {
    json parent;
    if (!m.adapter.empty()) {
      for (const auto& b : models) {
        if (b.adapter.empty() && cache_key_for(b).base == cache_key_for(m).base) parent = b.name;
      }
    }
    data.push_back({{"id", m.name},
                    {"object", "model"},
                    {"created", created_unix},
                    {"owned_by", "tessera"},
                    {"root", m.name},
                    {"parent", parent}});
    for (const auto& l : m.loras) {  // its --lora adapters (no paths in the answer)
      const std::string id = m.name + ":" + l.first;
      data.push_back({{"id", id},
                      {"object", "model"},
                      {"created", created_unix},
                      {"owned_by", "tessera"},
                      {"root", id},
                      {"parent", m.name}});
    }
  }
  return data;
}

void ApiServer::Impl::handle_models(const std::shared_ptr<Exchange>& ex) {
  HttpResponse r;
  r.body = dump_json({{"object", "list"}, {"data", model_objects()}});
  reply(*ex, "/v1/models", std::move(r));
}

void ApiServer::Impl::handle_model(const std::shared_ptr<Exchange>& ex, const std::string& id) {
  for (const auto& m : model_objects()) {
    if (m["id"] == id) {
      HttpResponse r;
      r.body = dump_json(m);
      reply(*ex, "/v1/models/{model}", std::move(r));
      return;
    }
  }
  throw ApiError(404, "The model '" + id + "' does not exist.", "model");
}

void ApiServer::Impl::handle_health(const std::shared_ptr<Exchange>& ex) {
  HttpResponse r;
  std::lock_guard lock(health_mu);
  if (draining) {
    r.status = 503;
    r.body = R"({"status":"shutting down"})";
  } else if (loading) {
    r.status = 503;
    r.body = R"({"status":"loading"})";
  } else if (!load_error.empty()) {
    // The model loaded at start failed: a router or load balancer must not send traffic here.
    // A later request retries the load; once one succeeds, poll_health() clears this.
    r.status = 503;
    r.body = dump_json(
        {{"status", "error"},
         {"detail", "model '" + models.front().name + "' failed to load: " + load_error}});
  } else if (!stalled_model.empty()) {
    r.status = 503;
    r.body = dump_json({{"status", "stalled"},
                        {"detail", "the engine of model '" + stalled_model +
                                       "' made no step while requests were running"}});
  } else {
    r.body = R"({"status":"ok"})";
  }
  reply(*ex, "/health", std::move(r));
}

void ApiServer::Impl::poll_health() {
  std::string stalled;
  std::map<std::string, StallState> next;
  {
    std::lock_guard lock(health_mu);
    cache.visit([&](const ModelSpec& spec, Backend& b) {
      if (spec.name == models.front().name) load_error.clear();  // a later load succeeded
      auto* engine = static_cast<ServingBackend&>(b).engine();
      if (engine == nullptr) return;
      const auto s = engine->stats();
      // After stats(): a step seen there happened before `now`, so a stall is only declared after
      // stall_timeout without a step (a clock read before the lock and stats() let a step that
      // came after it date from before it: "no step for 200 ms" 0.7 ms early, seen under TSan).
      const auto now = std::chrono::steady_clock::now();
      auto st = stall.count(spec.name) ? stall[spec.name] : StallState{};
      if (s.steps != st.steps || s.running + s.waiting == 0) {
        st.steps = s.steps;
        st.changed = now;
      } else if (now - st.changed > opt.stall_timeout && stalled.empty()) {
        stalled = spec.name;
      }
      next[spec.name] = st;
    });
    stall = std::move(next);
    if (stalled != stalled_model && !stalled.empty()) {
      log::error("serving: the engine of model '{}' made no step for {} ms with requests running",
                 stalled, opt.stall_timeout.count());
    }
    stalled_model = stalled;
  }
  std::weak_ptr<Impl> weak = weak_from_this();
  std::lock_guard lock(timer_mu);
  if (draining) return;
  health_timer = io.schedule(opt.health_poll, [weak] {
    if (auto self = weak.lock()) self->poll_health();
  });
}

void ApiServer::Impl::stop_health_polls() {
  std::shared_ptr<TimerHandle> timer;
  {
    std::lock_guard lock(timer_mu);
    draining = true;
    timer = std::move(health_timer);
  }
  if (timer) timer->cancel();
}

void ApiServer::Impl::handle_tokenize(const std::shared_ptr<Exchange>& ex) {
  json body = parse_json_body(ex->request().body);
  const std::string model =
      body.contains("model") && body["model"].is_string() ? body["model"].get<std::string>() : "";
  const ModelSpec& spec = resolve_model(model);
  auto self = shared_from_this();
  with_backend(ex, "/tokenize", spec, [self, ex, body](BackendCache::Lease lease) {
    auto& backend = static_cast<ServingBackend&>(*lease.get());
    const auto& tok = backend.tokenizer();
    std::vector<int32_t> ids;
    if (body.contains("messages")) {
      // The prompt the chat route would build (tools, chat_template_kwargs,
      // continue_final_message included), so that the count is the one a chat request uses.
      const GenerationRequest req = parse_generation_request(body, true, 1);
      ids = tok.encode(chat_prompt_text(tok, req), req.add_special_tokens);
    } else if (body.contains("prompt") && body["prompt"].is_string()) {
      ids = tok.encode(body["prompt"].get<std::string>(),
                       boolean_field(body, "add_special_tokens", true));
    } else {
      throw ApiError(400, "'prompt' (a string) or 'messages' is required", "prompt");
    }
    auto* engine = backend.engine();
    auto* embedder = backend.embedder();
    const int64_t max_len =
        engine ? engine->max_model_len() : (embedder ? embedder->max_input_len() : 0);
    HttpResponse r;
    r.body = dump_json({{"count", ids.size()}, {"max_model_len", max_len}, {"tokens", ids}});
    self->reply(*ex, "/tokenize", std::move(r));
  });
}

void ApiServer::Impl::handle_detokenize(const std::shared_ptr<Exchange>& ex) {
  json body = parse_json_body(ex->request().body);
  const std::string model =
      body.contains("model") && body["model"].is_string() ? body["model"].get<std::string>() : "";
  const ModelSpec& spec = resolve_model(model);
  if (!body.contains("tokens") || !body["tokens"].is_array()) {
    bad_field("tokens", "a list of token ids", body.value("tokens", json()));
  }
  std::vector<int32_t> ids;
  for (const auto& x : body["tokens"]) {
    if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() > INT32_MAX) {
      bad_field("tokens", "a list of non-negative token ids", x);
    }
    ids.push_back(static_cast<int32_t>(x.get<int64_t>()));
  }
  auto self = shared_from_this();
  with_backend(ex, "/detokenize", spec, [self, ex, ids](BackendCache::Lease lease) {
    const auto& tok = static_cast<ServingBackend&>(*lease.get()).tokenizer();
    for (int32_t id : ids) {
      if (id >= tok.vocab_size()) {
        bad_field("tokens", "ids below the vocabulary size " + std::to_string(tok.vocab_size()),
                  id);
      }
    }
    HttpResponse r;
    r.body = dump_json({{"prompt", tok.decode(ids, true)}});
    self->reply(*ex, "/detokenize", std::move(r));
  });
}

namespace {
std::string base64(const void* data, size_t n) {
  static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const auto* p = static_cast<const unsigned char*>(data);
  std::string out;
  for (size_t i = 0; i < n; i += 3) {
    const uint32_t v = (uint32_t{p[i]} << 16) | (i + 1 < n ? uint32_t{p[i + 1]} << 8 : 0) |
                       (i + 2 < n ? uint32_t{p[i + 2]} : 0);
    out.push_back(t[(v >> 18) & 63]);
    out.push_back(t[(v >> 12) & 63]);
    out.push_back(i + 1 < n ? t[(v >> 6) & 63] : '=');
    out.push_back(i + 2 < n ? t[v & 63] : '=');
  }
  return out;
}
}  // namespace

// /v1/embeddings and /classify: an encoder backend's vectors, or its classifier's label and
// probabilities (vLLM's /classify answer), for each input.
void ApiServer::Impl::handle_encoder(const std::shared_ptr<Exchange>& ex, bool classify) {
  const std::string route = classify ? "/classify" : "/v1/embeddings";
  json body = parse_json_body(ex->request().body);
  if (body.contains("model") && !body["model"].is_string()) {
    bad_field("model", "a string", body["model"]);
  }
  std::string lora;
  const ModelSpec& spec = resolve_model(body.value("model", ""), &lora);
  if (!lora.empty()) {
    throw ApiError(400,
                   "model '" + spec.name + ":" + lora + "' is a LoRA adapter: " + route +
                       " serves the base model only",
                   "model");
  }
  if (!body.contains("input")) throw ApiError(400, "'input' is required", "input");
  auto inputs = parse_prompt_field(body["input"], "input");
  std::string format = "float";
  if (!classify && body.contains("encoding_format") && !body["encoding_format"].is_null()) {
    const json& f = body["encoding_format"];
    format = f.is_string() ? f.get<std::string>() : "";
    if (format != "float" && format != "base64") {
      bad_field("encoding_format", "'float' or 'base64'", f);
    }
  }
  // Fields that would change the answer: honoured, or refused rather than ignored.
  const bool add_special = boolean_field(body, "add_special_tokens", true);
  if (body.contains("truncate_prompt_tokens") && !body["truncate_prompt_tokens"].is_null()) {
    throw ApiError(400,
                   "'truncate_prompt_tokens' is not supported for " + route +
                       " (an input longer than the model's maximum is a 400)",
                   "truncate_prompt_tokens");
  }
  std::optional<int64_t> dimensions;
  if (!classify && body.contains("dimensions") && !body["dimensions"].is_null()) {
    const json& d = body["dimensions"];
    if (!d.is_number_integer() || d.get<int64_t>() < 1) {
      bad_field("dimensions", "a positive integer", d);
    }
    dimensions = d.get<int64_t>();
  }
  auto self = shared_from_this();
  with_backend(ex, route, spec, [=](BackendCache::Lease lease) mutable {
    auto& backend = static_cast<ServingBackend&>(*lease.get());
    EmbeddingClient* embedder = backend.embedder();
    if (embedder == nullptr) {
      throw ApiError(
          400, "model '" + spec.name + "' is not an encoder: " + route + " needs an encoder model",
          "model");
    }
    const std::vector<std::string> labels =
        classify ? embedder->labels() : std::vector<std::string>{};
    if (classify && labels.empty()) {
      throw ApiError(400,
                     "model '" + spec.name +
                         "' has no sequence-classification head (a *ForSequenceClassification "
                         "folder): /v1/embeddings serves it",
                     "model");
    }
    // OpenAI's dimensions shortens Matryoshka embeddings; none of ours is one: only the model's
    // own width is accepted.
    if (dimensions && *dimensions != embedder->dimensions()) {
      throw ApiError(400,
                     "'dimensions' must be the model's embedding width " +
                         std::to_string(embedder->dimensions()) + " (no Matryoshka models), got " +
                         std::to_string(*dimensions),
                     "dimensions");
    }
    const int32_t vocab = backend.tokenizer().vocab_size();
    std::vector<std::vector<int32_t>> ids;
    int64_t total = 0;
    for (size_t i = 0; i < inputs.size(); ++i) {
      auto v = inputs[i].is_ids ? inputs[i].ids
                                : backend.tokenizer().encode(inputs[i].text, add_special);
      for (int32_t id : v) {
        if (id >= vocab)
          bad_field("input", "token ids below the vocabulary size " + std::to_string(vocab), id);
      }
      if (static_cast<int64_t>(v.size()) > embedder->max_input_len()) {
        throw ApiError(400,
                       "input " + std::to_string(i) + " has " + std::to_string(v.size()) +
                           " tokens, more than the model's " +
                           std::to_string(embedder->max_input_len()),
                       "input");
      }
      total += static_cast<int64_t>(v.size());
      ids.push_back(std::move(v));
    }
    auto held = std::make_shared<BackendCache::Lease>(std::move(lease));
    const std::string score_function = classify ? embedder->score_function() : "";
    auto done = [self, ex, held, spec, format, total, route, labels, score_function](
                    std::vector<std::vector<float>> rows, std::string error) {
      ex->post([self, ex, held, spec, format, total, route, labels, score_function,
                rows = std::move(rows), error] {
        if (!error.empty()) {
          self->reply(*ex, route, error_response(500, "the encoder failed: " + error));
          return;
        }
        json data = json::array();
        for (size_t i = 0; i < rows.size(); ++i) {
          if (!labels.empty()) {
            const auto probs = engine::classifier_scores(rows[i], score_function);
            const size_t top = std::max_element(probs.begin(), probs.end()) - probs.begin();
            data.push_back({{"index", i},
                            {"label", labels.at(top)},
                            {"probs", probs},
                            {"num_classes", probs.size()}});
          } else {
            json e = format == "base64"
                         ? json(base64(rows[i].data(), rows[i].size() * sizeof(float)))
                         : json(rows[i]);
            data.push_back({{"object", "embedding"}, {"index", i}, {"embedding", e}});
          }
        }
        json answer = {{"object", "list"},
                       {"data", data},
                       {"model", spec.name},
                       {"usage", {{"prompt_tokens", total}, {"total_tokens", total}}}};
        if (!labels.empty()) {
          answer["id"] = "classify-" + random_hex(24);
          answer["created"] = unix_now();
          answer["usage"]["completion_tokens"] = 0;
        }
        HttpResponse r;
        r.body = dump_json(answer);
        self->reply(*ex, route, std::move(r));
      });
    };
    if (classify) {
      embedder->classify(std::move(ids), std::move(done));
    } else {
      embedder->embed(std::move(ids), std::move(done));
    }
  });
}

ApiServer::ApiServer(IoRuntime& io, HttpServerOptions http, ApiServerOptions options,
                     std::vector<ModelSpec> models, int max_loaded_models,
                     ServingBackendLoader loader)
    : impl_(std::make_shared<Impl>(io, std::move(options), std::move(models), max_loaded_models,
                                   std::move(loader))) {
  std::weak_ptr<Impl> weak = impl_;
  // Requests the HTTP layer answers itself (malformed, too large, during shutdown) are counted
  // under route "refused": their path is the client's, not one of ours.
  http.on_refused = [weak](int status) {
    if (auto self = weak.lock()) self->count("refused", status);
  };
  impl_->http =
      std::make_unique<HttpServer>(io, std::move(http), [weak](std::shared_ptr<Exchange> ex) {
        if (auto self = weak.lock()) self->handle(ex);
      });
}

ApiServer::~ApiServer() { impl_->stop_health_polls(); }

void ApiServer::start() {
  impl_->http->start();
  auto impl = impl_;
  if (impl->opt.preload) {
    impl->loading = true;
    impl->io.post_blocking([impl] {
      try {
        impl->cache.get_or_load(impl->models.front());
      } catch (const std::exception& e) {
        log::error("serving: loading model '{}' failed: {}", impl->models.front().name, e.what());
        std::lock_guard lock(impl->health_mu);
        impl->load_error = e.what();
      }
      impl->loading = false;
    });
  }
  impl->poll_health();
}

int ApiServer::port() const { return impl_->http->port(); }

void ApiServer::shutdown(std::chrono::milliseconds timeout) {
  auto& impl = *impl_;
  impl.draining = true;
  impl.http->stop_accepting();
  impl.http->drain();
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto busy = [&] { return impl.http->active_exchanges() > 0 || impl.live_gens.load() > 0; };
  while (busy() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (busy()) {
    log::warn("serving: shutdown timeout: cutting {} requests still running",
              impl.http->active_exchanges());
    impl.http->close_all();  // their disconnect handlers abort the engine requests
    const auto grace = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (impl.live_gens.load() > 0 && std::chrono::steady_clock::now() < grace) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  impl.stop_health_polls();
  impl.cache.evict_all();
}

void ApiServer::handle(std::shared_ptr<Exchange> exchange) { impl_->handle(exchange); }

MetricsRegistry& ApiServer::metrics() { return impl_->metrics; }
BackendCache& ApiServer::cache() { return impl_->cache; }
HttpServer& ApiServer::http() { return *impl_->http; }
size_t ApiServer::live_generations() const { return static_cast<size_t>(impl_->live_gens.load()); }

}  // namespace tessera::serving

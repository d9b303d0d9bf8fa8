// The HTTP request path of `tessera serve` without a socket: raw bytes → the connection's parser
// (parse_http_request: Beast with the server's limits) → ApiServer::handle (route, method, API
// key, body JSON, OpenAI validation, tokenization, generation, streaming, usage) over an in-memory
// Exchange and an engine that answers at once. Properties: every complete request gets exactly one
// answer (a response, or a stream that ends), never a 5xx; a refused request line gets 400, 413
// or 431; every JSON body (errors included) and every SSE event is valid JSON, errors in OpenAI's
// shape with the status as their code; without the API key nothing but /health is served.
#include <nlohmann/json.hpp>

#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "common/error.h"
#include "runtime/serving/api_server.h"
#include "runtime/serving/byte_tokenizer.h"
#include "runtime/serving/http_server.h"
#include "runtime/serving/serving_backend.h"
#include "tests/fuzz/fuzz_target.h"
#include "tests/runtime/serving/fake_embedder.h"

using namespace tessera::serving;
using nlohmann::json;

namespace {

constexpr const char* kKey = "fuzz-key";

// Gives each request up to 4 tokens at once (ids over the whole byte vocabulary, specials and
// invalid UTF-8 included), with logprobs when asked; refuses parameters it would refuse.
class InstantEngine : public tessera::engine::EngineClient {
 public:
  void add_request(tessera::engine::EngineRequest r,
                   std::function<void(const tessera::engine::RequestOutput&)> cb) override {
    r.params.validate();  // an engine refusal: the server answers 500, which the target flags
    tessera::engine::RequestOutput out;
    out.id = r.id;
    uint64_t h = 1469598103934665603ull;
    for (int32_t id : r.prompt_ids) h = (h ^ static_cast<uint64_t>(id)) * 1099511628211ull;
    const int64_t k = std::min<int64_t>(r.params.max_tokens, 4);
    if (r.params.prompt_logprobs >= 0) {  // scores for each prompt token after the first
      for (size_t p = 1; p < r.prompt_ids.size(); ++p) {
        tessera::engine::PromptLogprob e{
            r.prompt_ids[p], -1.0f, static_cast<int32_t>(p % 7 + 1), {}};
        for (int32_t j = 0; j < r.params.prompt_logprobs; ++j)
          e.top.push_back({j % 258, -0.1f * j});
        out.prompt_logprobs.push_back(std::move(e));
      }
    }
    for (int64_t i = 0; i < k; ++i) {
      int32_t next = static_cast<int32_t>((h >> (8 * i)) % ByteTokenizer::kVocabSize);
      if (r.params.constraint) {  // guided decoding: one of the ids the constraint allows
        const auto allowed = r.params.constraint->allowed(out.new_token_ids);
        if (allowed.empty()) std::abort();  // the constraint must always allow something
        next = allowed[(h >> (8 * i)) % allowed.size()];
      }
      out.new_token_ids.push_back(next);
      if (r.params.logprobs >= 0) {
        out.logprobs.push_back(-0.5f * static_cast<float>(i));
        std::vector<tessera::engine::TopLogprob> top;
        for (int32_t j = 0; j < r.params.logprobs; ++j) top.push_back({j % 258, -1.0f * j});
        out.top_logprobs.push_back(std::move(top));
      }
    }
    out.finished = true;
    out.finish_reason = k == r.params.max_tokens ? "length" : "stop";
    out.prompt_tokens = static_cast<int64_t>(r.prompt_ids.size());
    out.completion_tokens = k;
    cb(out);
  }
  void abort(const std::string&) override {}
  tessera::engine::EngineStats stats() const override { return {0, 0, 64, 0, 0.0, 0, 0}; }
  int64_t max_model_len() const override { return 512; }
};

// With an encoder beside the engine (FakeEmbedder), so that /v1/embeddings and /classify reach
// the answer.
class InstantBackend : public ServingBackend {
 public:
  tessera::engine::EngineClient* engine() override { return &engine_; }
  const ServingTokenizer& tokenizer() const override { return tok_; }
  EmbeddingClient* embedder() override { return &embedder_; }
  void close() override {}

 private:
  InstantEngine engine_;
  tessera::serving::testing::FakeEmbedder embedder_;
  ByteTokenizer tok_;
};

// An Exchange in memory: what the server posts runs when the target drains the queue.
class MemoryExchange : public Exchange {
 public:
  explicit MemoryExchange(HttpRequest r) : req_(std::move(r)) {}
  const HttpRequest& request() const override { return req_; }
  void respond(HttpResponse r) override {
    std::lock_guard lock(mu_);
    TESSERA_FUZZ_ASSERT(!started_, "respond() after the answer began");
    started_ = done_ = true;
    status_ = r.status;
    content_type_ = r.content_type;
    body_ = std::move(r.body);
  }
  void start_stream(int status, std::string content_type, Headers) override {
    std::lock_guard lock(mu_);
    TESSERA_FUZZ_ASSERT(!started_, "start_stream() after the answer began");
    started_ = streaming_ = true;
    status_ = status;
    content_type_ = std::move(content_type);
  }
  void send_chunk(std::string data) override {
    std::lock_guard lock(mu_);
    TESSERA_FUZZ_ASSERT(streaming_ && !done_, "send_chunk() outside a stream");
    body_ += data;
  }
  void end_stream() override {
    std::lock_guard lock(mu_);
    TESSERA_FUZZ_ASSERT(streaming_ && !done_, "end_stream() outside a stream");
    done_ = true;
  }
  void on_disconnect(std::function<void()>) override {}
  void post(std::function<void()> fn) override {
    std::lock_guard lock(mu_);
    queue_.push_back(std::move(fn));
  }
  bool disconnected() const override { return false; }

  bool run_one() {
    std::function<void()> fn;
    {
      std::lock_guard lock(mu_);
      if (queue_.empty()) return false;
      fn = std::move(queue_.front());
      queue_.pop_front();
    }
    fn();
    return true;
  }
  bool done() const { return done_; }
  bool streaming() const { return streaming_; }
  int status() const { return status_; }
  const std::string& body() const { return body_; }
  const std::string& content_type() const { return content_type_; }

 private:
  HttpRequest req_;
  std::mutex mu_;
  std::deque<std::function<void()>> queue_;
  bool started_ = false, streaming_ = false, done_ = false;
  int status_ = 0;
  std::string content_type_, body_;
};

ApiServer& server() {
  // Built once and never destroyed (reachable, so not a leak): threads stay up between inputs.
  static ApiServer* s = [] {
    auto* io = new IoRuntime(1, 1);
    ApiServerOptions api;
    api.api_keys = {kKey};
    api.preload = false;
    api.tool_call_parser = "hermes";  // chat answers to requests with tools are parsed
    auto* srv = new ApiServer(*io, HttpServerOptions{}, api, {parse_model_flag("fuzz=fuzz-model")},
                              1, [](const ModelSpec&) -> std::shared_ptr<ServingBackend> {
                                return std::make_shared<InstantBackend>();
                              });
    io->start();
    // Warm: every request finds its backend loaded (no load on the blocking pool).
    srv->cache().get_or_load(parse_model_flag("fuzz=fuzz-model"));
    return srv;
  }();
  return *s;
}

void check_json_body(const std::string& body, int status, const std::string& what) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {
    TESSERA_FUZZ_ASSERT(false, what + " is not JSON: " + e.what() + ": " + body.substr(0, 200));
  }
  if (status >= 400) {
    TESSERA_FUZZ_ASSERT(j.contains("error") && j["error"].is_object() &&
                            j["error"].contains("message") && j["error"]["message"].is_string() &&
                            j["error"]["code"] == status,
                        what + " is not an OpenAI error of code " + std::to_string(status) + ": " +
                            body.substr(0, 200));
  }
}

}  // namespace

TESSERA_FUZZ_TARGET(http_request) {
  static const HttpServerOptions options;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  HttpParseResult parsed = parse_http_request(bytes, options);
  if (parsed.status != 0) {
    TESSERA_FUZZ_ASSERT(
        parsed.status == -1 || parsed.status == 400 || parsed.status == 413 || parsed.status == 431,
        "parser status " + std::to_string(parsed.status));
    TESSERA_FUZZ_ASSERT(parsed.status == -1 || !parsed.error.empty(), "refusal without a message");
    return 0;
  }
  TESSERA_FUZZ_ASSERT(parsed.consumed <= size, "consumed past the input");
  const std::string path = parsed.request.path;
  const bool authorized = parsed.request.header("authorization") == std::string("Bearer ") + kKey;
  auto ex = std::make_shared<MemoryExchange>(std::move(parsed.request));
  try {
    server().handle(ex);
  } catch (const std::exception& e) {
    // HttpServer would answer 500 "internal error": a bug whatever the input.
    TESSERA_FUZZ_ASSERT(false, std::string("the handler raised: ") + e.what());
  }
  for (int i = 0; i < 100000 && ex->run_one(); ++i) {
  }
  TESSERA_FUZZ_ASSERT(ex->done(), "request to " + path + " never answered (lost)");
  const int status = ex->status();
  TESSERA_FUZZ_ASSERT(status >= 200 && status < 500,
                      "status " + std::to_string(status) + ": " + ex->body().substr(0, 300));
  if (path != "/health" && !authorized && status != 404 && status != 405) {
    TESSERA_FUZZ_ASSERT(status == 401, "served " + path + " without the API key");
  }
  if (ex->streaming()) {
    // SSE: "data: <json>\n\n" events, the last one "data: [DONE]".
    const std::string& b = ex->body();
    size_t at = 0;
    bool done = false;
    while (at < b.size()) {
      const size_t end = b.find("\n\n", at);
      TESSERA_FUZZ_ASSERT(end != std::string::npos, "unterminated SSE event");
      const std::string ev = b.substr(at, end - at);
      TESSERA_FUZZ_ASSERT(ev.rfind("data: ", 0) == 0, "SSE event without data: " + ev);
      TESSERA_FUZZ_ASSERT(!done, "event after [DONE]");
      if (ev == "data: [DONE]") {
        done = true;
      } else {
        check_json_body(ev.substr(6), 200, "an SSE event");
      }
      at = end + 2;
    }
    TESSERA_FUZZ_ASSERT(done, "stream without data: [DONE]");
  } else if (ex->content_type() == "application/json") {
    check_json_body(ex->body(), status, "the response to " + path);
  }
  return 0;
}

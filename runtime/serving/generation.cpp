// One completion or chat completion request: its prompts (x n) become engine requests; each
// engine output (one per step) is detokenized, stop strings applied, and either streamed as one
// SSE chunk or gathered for the final response. Everything here runs on the connection's strand.
#include <nlohmann/json.hpp>

#include <algorithm>

#include "common/error.h"
#include "common/logging.h"
#include "runtime/engine/output_processor.h"
#include "runtime/serving/api_server_impl.h"
#include "runtime/serving/byte_tokenizer.h"
#include "runtime/serving/guided.h"
#include "runtime/serving/json_guide.h"
#include "runtime/serving/tool_parser.h"

namespace tessera::serving {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

struct Sequence {
  std::string engine_id;
  int index = 0;  // the choice index
  std::vector<int32_t> prompt_ids;
  std::string prompt_text;  // for echo
  std::unique_ptr<StreamDecoder> decoder;
  std::unique_ptr<engine::OutputProcessor> stopper;  // stop strings
  std::string text;                                  // gathered (non-streaming)
  json logprobs;                                     // gathered (non-streaming)
  json prompt_logprobs;                              // vLLM's list, when asked
  bool prompt_scored = false;                        // the engine's prompt scores arrived
  std::vector<int32_t> guided_ids;                   // generated, for guided_choice
  std::string tool_text;  // streamed chat with tool parsing: the answer so far
  size_t tool_sent = 0;   // of it, the bytes sent as content
  size_t text_offset = 0;
  int64_t completion_tokens = 0;
  int64_t cached_tokens = 0;
  bool first_output = false;
  bool started_text = false;  // first chunk (role / echo) sent
  bool done = false;
  std::string finish_reason;
  json stop_reason;
  std::string error;
  Clock::time_point last_token{};
  bool has_token = false;
};

}  // namespace

class Generation : public std::enable_shared_from_this<Generation> {
 public:
  Generation(std::shared_ptr<ApiServer::Impl> server, std::shared_ptr<Exchange> ex,
             GenerationRequest req, BackendCache::Lease lease)
      : server_(std::move(server)),
        ex_(std::move(ex)),
        req_(std::move(req)),
        lease_(std::move(lease)) {
    server_->live_gens++;
    backend_ = static_cast<ServingBackend*>(lease_.get());
    engine_ = backend_->engine();
    tok_ = &backend_->tokenizer();
    eos_ = tok_->eos_ids();
    model_ = req_.lora.empty() ? lease_.spec().name : lease_.spec().name + ":" + req_.lora;
    route_ = req_.chat ? "/v1/chat/completions" : "/v1/completions";
    if (req_.chat && req_.tools && !req_.tool_choice_none) {
      tools_ = find_tool_call_format(server_->opt.tool_call_parser);
    }
    id_ = (req_.chat ? "chatcmpl-" : "cmpl-") + random_hex(24);
    created_ = unix_now();
    arrival_ = ex_->request().arrival;
  }
  ~Generation() {
    if (lease_) {
      auto lease = std::make_shared<BackendCache::Lease>(std::move(lease_));
      server_->io.post_blocking([lease] {});
    }
    server_->live_gens--;
  }

  // Tokenizes and validates (throws ApiError), then submits every sequence to the engine.
  void start() {
    if (engine_ == nullptr) {
      throw ApiError(400, "model '" + model_ + "' is an encoder: use /v1/embeddings", "model");
    }
    const int64_t max_len = engine_->max_model_len();
    std::vector<PromptInput> prompts;
    if (req_.chat) {
      const std::string text = chat_prompt_text(*tok_, req_);
      prompts.push_back({false, text, tok_->encode(text, req_.add_special_tokens)});
    } else {
      for (auto& p : req_.prompts) {
        if (p.is_ids) {
          for (int32_t id : p.ids) {
            if (id >= tok_->vocab_size()) {
              bad_field("prompt",
                        "token ids below the vocabulary size " + std::to_string(tok_->vocab_size()),
                        id);
            }
          }
          p.text = tok_->decode(p.ids, false);
        } else {
          p.ids = tok_->encode(p.text, req_.add_special_tokens);
        }
        prompts.push_back(std::move(p));
      }
    }
    if (req_.truncate_prompt_tokens) {
      // As vLLM: the last k tokens (left truncation); -1 is the model's maximum length.
      const int64_t k = *req_.truncate_prompt_tokens < 0 ? max_len : *req_.truncate_prompt_tokens;
      if (k > max_len) {
        bad_field("truncate_prompt_tokens",
                  "at most the model's maximum context length " + std::to_string(max_len), k);
      }
      for (auto& p : prompts) {
        if (static_cast<int64_t>(p.ids.size()) <= k) continue;
        p.ids.erase(p.ids.begin(), p.ids.end() - k);
        p.text = tok_->decode(p.ids, false);  // what echo shows: the prompt the model saw
      }
    }
    // Ids the engine would refuse (as a 500 after the request was accepted): a 400 naming them.
    const std::string below =
        "token ids below the vocabulary size " + std::to_string(tok_->vocab_size());
    for (int32_t id : req_.params.stop_token_ids) {
      if (id >= tok_->vocab_size()) bad_field("stop_token_ids", below, id);
    }
    for (const auto& [id, bias] : req_.params.logit_bias) {
      if (id >= tok_->vocab_size()) bad_field("logit_bias", below, id);
    }
    for (int32_t id : req_.params.allowed_token_ids) {
      if (id >= tok_->vocab_size()) bad_field("allowed_token_ids", below, id);
    }
    req_.params.bad_words_ids = bad_words_token_ids(*tok_, req_.bad_words);
    if (!req_.guided_choice.empty()) {
      auto choice = std::make_shared<ChoiceConstraint>(req_.guided_choice, tok_->piece_table(),
                                                       tok_->eos_ids());
      for (const auto& c : req_.guided_choice) {
        // Every choice must be something this tokenizer's tokens can spell.
        if (choice->text_of(tok_->encode(c, false)) != c) {
          bad_field("guided_choice", "choices this model's tokens can spell", c);
        }
      }
      guided_ = choice;
    } else if (req_.json_object) {
      guided_ = std::make_shared<JsonObjectConstraint>(tok_->json_mask_cache());
    }
    if (guided_) req_.params.constraint = guided_;
    for (const auto& ids : req_.params.bad_words_ids) {
      for (int32_t id : ids) {
        if (id < 0 || id >= tok_->vocab_size()) bad_field("bad_words", below, id);
      }
    }
    if (!req_.params.allowed_token_ids.empty() && req_.params.min_tokens > 0) {
      // min_tokens masks the ids that end the request: none of the allowed ids would be left.
      const auto& p = req_.params;
      const std::vector<int32_t> eos = p.ignore_eos ? std::vector<int32_t>{} : tok_->eos_ids();
      auto ends = [&](int32_t id) {
        return std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), id) !=
                   p.stop_token_ids.end() ||
               std::find(eos.begin(), eos.end(), id) != eos.end();
      };
      if (std::all_of(p.allowed_token_ids.begin(), p.allowed_token_ids.end(), ends)) {
        bad_field("allowed_token_ids",
                  "a list holding an id that does not end the request while min_tokens=" +
                      std::to_string(p.min_tokens) + " holds (eos and stop_token_ids are masked)",
                  json(p.allowed_token_ids));
      }
    }
    const char* prompt_field = req_.chat ? "messages" : "prompt";
    for (const auto& p : prompts) {
      const int64_t len = static_cast<int64_t>(p.ids.size());
      if (len == 0) throw ApiError(400, "the prompt is empty", prompt_field);
      if (len >= max_len) {
        throw ApiError(400,
                       "this model's maximum context length is " + std::to_string(max_len) +
                           " tokens, but the prompt has " + std::to_string(len) + " tokens",
                       prompt_field);
      }
      if (req_.max_tokens && len + *req_.max_tokens > max_len) {
        throw ApiError(400,
                       "this model's maximum context length is " + std::to_string(max_len) +
                           " tokens; the prompt (" + std::to_string(len) + ") plus max_tokens (" +
                           std::to_string(*req_.max_tokens) + ") exceeds it",
                       req_.chat ? "max_completion_tokens" : "max_tokens");
      }
    }
    const int64_t n_seqs = static_cast<int64_t>(prompts.size()) * req_.n;
    const int64_t waiting = server_->waiting_seqs.load();
    if (waiting + n_seqs > static_cast<int64_t>(server_->opt.max_waiting)) {
      throw ApiError(429,
                     "the server's waiting queue is full (" + std::to_string(waiting) +
                         " sequences waiting, limit " + std::to_string(server_->opt.max_waiting) +
                         "); retry later",
                     "", {{"Retry-After", std::to_string(server_->opt.retry_after_s)}});
    }

    for (size_t i = 0; i < prompts.size(); ++i) {
      for (int j = 0; j < req_.n; ++j) {
        auto s = std::make_unique<Sequence>();
        s->index = static_cast<int>(i) * req_.n + j;
        s->engine_id = id_ + "-" + std::to_string(s->index);
        s->prompt_ids = prompts[i].ids;
        s->prompt_text = prompts[i].text;
        // A format whose calls start with a special token ([TOOL_CALLS]) reads the text with
        // them, as vLLM does for it.
        s->decoder = tok_->stream_decoder(
            s->prompt_ids, req_.skip_special_tokens && !(tools_ && tools_->keep_special_tokens));
        s->stopper = std::make_unique<engine::OutputProcessor>(req_.params);
        if (req_.logprobs) {
          s->logprobs = req_.chat ? json{{"content", json::array()}}
                                  : json{{"tokens", json::array()},
                                         {"token_logprobs", json::array()},
                                         {"top_logprobs", json::array()},
                                         {"text_offset", json::array()}};
        }
        if (req_.echo && !req_.chat) s->text_offset = s->prompt_text.size();
        seqs_.push_back(std::move(s));
      }
    }
    remaining_ = static_cast<int>(seqs_.size());
    server_->waiting_seqs += n_seqs;

    auto self = shared_from_this();
    ex_->on_disconnect([self] { self->on_disconnect(); });
    size_t submitted = 0;
    try {
      for (auto& s : seqs_) {
        engine::EngineRequest er;
        er.id = s->engine_id;
        er.prompt_ids = s->prompt_ids;
        er.params = req_.params;
        er.params.max_tokens = req_.max_tokens
                                   ? *req_.max_tokens
                                   : max_len - static_cast<int64_t>(s->prompt_ids.size());
        // n > 1: independent sequences; a seeded request gives each its own seed.
        if (er.params.seed && req_.n > 1) {
          *er.params.seed += static_cast<uint64_t>(s->index % req_.n);
        }
        er.priority = req_.priority;
        er.cache_salt = req_.cache_salt;
        er.lora = req_.lora.empty() ? backend_->lora() : req_.lora;
        const int idx = static_cast<int>(&s - &seqs_.front());
        auto ex = ex_;
        engine_->add_request(std::move(er), [self, ex, idx](const engine::RequestOutput& out) {
          ex->post([self, idx, out] { self->on_output(idx, out); });
        });
        ++submitted;
      }
    } catch (const std::exception& e) {
      // The engine refused one: take back the others, answer once.
      failed_ = true;
      for (size_t i = 0; i < seqs_.size(); ++i) {
        if (i < submitted) {
          engine_->abort(seqs_[i]->engine_id);
        } else {
          seqs_[i]->done = true;
          server_->waiting_seqs--;
        }
      }
      throw ApiError(500, std::string("the engine refused the request: ") + e.what());
    }
  }

 private:
  void on_disconnect() {
    for (auto& s : seqs_) {
      if (!s->done) engine_->abort(s->engine_id);
    }
  }

  json usage_of(int64_t prompt, int64_t completion, int64_t cached) const {
    json u = {{"prompt_tokens", prompt},
              {"completion_tokens", completion},
              {"total_tokens", prompt + completion}};
    if (cached > 0) u["prompt_tokens_details"] = {{"cached_tokens", cached}};
    return u;
  }

  json total_usage() const {
    int64_t prompt = 0, completion = 0, cached = 0;
    // A prompt shared by n sequences counts once (as OpenAI counts it).
    for (const auto& s : seqs_) {
      if (s->index % req_.n == 0) {
        prompt += static_cast<int64_t>(s->prompt_ids.size());
        cached += s->cached_tokens;
      }
      completion += s->completion_tokens;
    }
    return usage_of(prompt, completion, cached);
  }

  // A token as the logprobs show it: its text (`text`, when the caller has it), or
  // "token_id:<id>" with return_tokens_as_token_ids.
  std::string shown(int32_t id, const std::string& text) const {
    return req_.return_tokens_as_token_ids ? "token_id:" + std::to_string(id) : text;
  }
  std::string shown(int32_t id) const {
    return req_.return_tokens_as_token_ids ? "token_id:" + std::to_string(id)
                                           : tok_->token_text(id);
  }

  void add_logprob(Sequence& s, json& lp, int32_t id, const engine::RequestOutput& out, size_t k,
                   const std::string& token_text) {
    const json logprob = k < out.logprobs.size() ? json(out.logprobs[k]) : json();
    std::vector<engine::TopLogprob> top;
    if (k < out.top_logprobs.size()) top = out.top_logprobs[k];
    const std::string token = shown(id, token_text);
    if (req_.chat) {
      auto bytes_of = [](const std::string& t) {
        json b = json::array();
        for (unsigned char c : t) b.push_back(c);
        return b;
      };
      json alts = json::array();
      for (const auto& t : top) {
        const std::string tt = shown(t.id);
        alts.push_back({{"token", tt}, {"logprob", t.logprob}, {"bytes", bytes_of(tt)}});
      }
      lp["content"].push_back({{"token", token},
                               {"logprob", logprob},
                               {"bytes", bytes_of(token)},
                               {"top_logprobs", alts}});
    } else {
      json alts = json::object();
      for (const auto& t : top) alts[shown(t.id)] = t.logprob;
      lp["tokens"].push_back(token);
      lp["token_logprobs"].push_back(logprob);
      lp["top_logprobs"].push_back(req_.top_logprobs > 0 ? alts : json());
      lp["text_offset"].push_back(s.text_offset);
    }
    s.text_offset += token_text.size();
  }

  // The prompt's scores: vLLM's prompt_logprobs list (null for the first token, then {id:
  // {logprob, rank, decoded_token}} for the token and the most likely ones), and with echo and
  // logprobs the prompt's tokens ahead of the generated ones in the logprobs.
  void add_prompt_scores(Sequence& s, json& lp, const std::vector<engine::PromptLogprob>& scores) {
    if (req_.prompt_logprobs) {
      s.prompt_logprobs = json::array({nullptr});
      for (const auto& e : scores) {
        json d = json::object();
        for (size_t j = 0; j < e.top.size(); ++j) {
          d[std::to_string(e.top[j].id)] = {{"logprob", e.top[j].logprob},
                                            {"rank", static_cast<int>(j) + 1},
                                            {"decoded_token", shown(e.top[j].id)}};
        }
        d[std::to_string(e.id)] = {
            {"logprob", e.logprob}, {"rank", e.rank}, {"decoded_token", shown(e.id)}};
        s.prompt_logprobs.push_back(std::move(d));
      }
    }
    if (!(req_.echo && req_.logprobs && !req_.chat) || s.prompt_ids.empty()) return;
    size_t offset = 0;
    for (size_t i = 0; i < s.prompt_ids.size(); ++i) {
      const int32_t id = s.prompt_ids[i];
      const std::string text = tok_->token_text(id);
      lp["tokens"].push_back(shown(id, text));
      lp["text_offset"].push_back(offset);
      offset += text.size();
      if (i == 0 || i - 1 >= scores.size()) {
        lp["token_logprobs"].push_back(nullptr);
        lp["top_logprobs"].push_back(nullptr);
        continue;
      }
      const auto& e = scores[i - 1];
      lp["token_logprobs"].push_back(e.logprob);
      json alts = json::object();
      for (size_t j = 0; j < e.top.size() && static_cast<int>(j) < req_.top_logprobs; ++j) {
        alts[shown(e.top[j].id)] = e.top[j].logprob;
      }
      alts[shown(e.id)] = e.logprob;
      lp["top_logprobs"].push_back(std::move(alts));
    }
  }

  void on_output(int idx, const engine::RequestOutput& out) {
    Sequence& s = *seqs_[idx];
    if (s.done) return;  // e.g. the engine's "abort" after a stop string ended it here
    const auto now = Clock::now();
    const LabelValues model = {model_};
    if (!s.first_output) {
      s.first_output = true;
      server_->waiting_seqs--;
      server_->queue_time->observe(model, seconds(now - arrival_));
    }
    s.cached_tokens = std::max(s.cached_tokens, out.cached_prompt_tokens);

    std::string delta;
    json lp_delta;
    if (req_.logprobs) {
      lp_delta = req_.chat ? json{{"content", json::array()}}
                           : json{{"tokens", json::array()},
                                  {"token_logprobs", json::array()},
                                  {"top_logprobs", json::array()},
                                  {"text_offset", json::array()}};
    }
    if (req_.params.prompt_logprobs >= 0 && !s.prompt_scored &&
        (!out.new_token_ids.empty() || out.finished)) {
      s.prompt_scored = true;
      add_prompt_scores(s, lp_delta, out.prompt_logprobs);
    }
    bool stopped = false;
    // Echo without generation: the engine's one token is not part of the answer.
    const size_t n_new = req_.echo_only ? 0 : out.new_token_ids.size();
    for (size_t k = 0; k < n_new; ++k) {
      const int32_t id = out.new_token_ids[k];
      if (!s.has_token) {
        server_->ttft->observe(model, seconds(now - arrival_));
      } else {
        server_->itl->observe(model, seconds(now - s.last_token) / static_cast<double>(n_new));
      }
      s.has_token = true;
      s.completion_tokens++;
      if (req_.logprobs) add_logprob(s, lp_delta, id, out, k, tok_->token_text(id));
      // The end of sequence that ends the answer is not part of its text (with special tokens
      // kept it would read "</s>"), as vLLM; with ignore_eos it is an ordinary token.
      const bool ends = out.finished && k + 1 == n_new && !req_.params.ignore_eos &&
                        std::find(eos_.begin(), eos_.end(), id) != eos_.end();
      auto r = s.stopper->step(ends ? std::string() : s.decoder->step(id));
      delta += r.text;
      if (r.stopped) {
        stopped = true;
        s.finish_reason = "stop";
        s.stop_reason = req_.params.stop[r.stop_index];
        break;
      }
      if (guided_) {
        s.guided_ids.push_back(id);
        if (guided_->complete(std::span<const int32_t>(s.guided_ids))) {
          // The text is a choice no other choice extends: the answer is complete.
          auto f = s.stopper->step(s.decoder->flush());
          delta += f.text;
          if (!f.stopped) delta += s.stopper->finish();
          stopped = true;
          s.finish_reason = "stop";
          break;
        }
      }
    }
    if (n_new > 0) s.last_token = now;
    if (stopped) {
      engine_->abort(s.engine_id);  // the engine does not know stop strings
    } else if (out.finished) {
      auto r = s.stopper->step(s.decoder->flush());
      delta += r.text;
      if (r.stopped) {
        s.finish_reason = "stop";
        s.stop_reason = req_.params.stop[r.stop_index];
      } else {
        delta += s.stopper->finish();
        s.finish_reason = out.finish_reason.empty() ? "stop" : out.finish_reason;
        if (s.finish_reason == "stop" && n_new > 0) {
          const int32_t last = out.new_token_ids.back();
          const auto& ids = req_.params.stop_token_ids;
          if (std::find(ids.begin(), ids.end(), last) != ids.end()) s.stop_reason = last;
        }
        if (s.finish_reason == "error") {
          s.error = out.error.empty() ? "the engine failed this request" : out.error;
        }
      }
    }
    const bool finished_now = stopped || out.finished;
    if (finished_now) s.done = true;

    if (req_.stream && tools_) {
      // Content goes out until a call starts (or may be starting); the calls go out at
      // the end, whole, in the last chunk.
      s.tool_text += delta;
      json calls;
      if (finished_now) {
        const ParsedToolCalls parsed = tools_->parse(s.tool_text);
        if (parsed.called) {
          calls = tool_calls_json(parsed.calls, true);
          if (s.finish_reason == "stop" || s.finish_reason == "length")
            s.finish_reason = "tool_calls";
          s.tool_text = parsed.content;
        }
      }
      const size_t upto = finished_now ? s.tool_text.size() : tools_->content_prefix(s.tool_text);
      const std::string out_text =
          upto > s.tool_sent ? s.tool_text.substr(s.tool_sent, upto - s.tool_sent) : "";
      s.tool_sent = std::max(s.tool_sent, upto);
      emit_chunk(s, out_text, lp_delta, finished_now, calls);
    } else if (req_.stream) {
      emit_chunk(s, delta, lp_delta, finished_now);
    } else {
      s.text += delta;
      if (req_.logprobs) {
        for (auto& [k, v] : lp_delta.items()) {
          for (auto& x : v) s.logprobs[k].push_back(x);
        }
      }
    }
    if (finished_now) finish_sequence(s);
  }

  void send_sse(const json& j) { ex_->send_chunk("data: " + dump_json(j) + "\n\n"); }

  void ensure_stream() {
    if (stream_started_) return;
    stream_started_ = true;
    server_->count(route_, 200);
    ex_->start_stream(200, "text/event-stream", {{"Cache-Control", "no-cache"}});
  }

  // OpenAI's tool_calls list (with `index` per call in stream deltas).
  static json tool_calls_json(const std::vector<ToolCall>& calls, bool indexed) {
    json out = json::array();
    for (size_t i = 0; i < calls.size(); ++i) {
      json c = {{"id", calls[i].id},
                {"type", "function"},
                {"function", {{"name", calls[i].name}, {"arguments", calls[i].arguments}}}};
      if (indexed) c["index"] = i;
      out.push_back(std::move(c));
    }
    return out;
  }

  void emit_chunk(Sequence& s, const std::string& delta, const json& lp, bool finished,
                  const json& tool_calls = json()) {
    if (!s.error.empty()) return;  // errors are reported at the end
    std::string text = delta;
    if (!s.started_text && req_.echo && !req_.chat) text = s.prompt_text + text;
    const bool has_lp = req_.logprobs && !lp.empty() &&
                        (req_.chat ? !lp["content"].empty() : !lp["tokens"].empty());
    const bool first = !s.started_text;
    if (text.empty() && !finished && !has_lp && !(first && req_.chat)) return;
    ensure_stream();
    s.started_text = true;
    json choice = {{"index", s.index}};
    if (req_.chat) {
      json d = json::object();
      if (first) d["role"] = "assistant";
      if (!text.empty() || first) d["content"] = text;
      if (!tool_calls.is_null()) d["tool_calls"] = tool_calls;
      choice["delta"] = d;
    } else {
      choice["text"] = text;
    }
    choice["logprobs"] = has_lp ? lp : json();
    choice["finish_reason"] = finished ? json(s.finish_reason) : json();
    if (finished) choice["stop_reason"] = s.stop_reason;
    json chunk = {{"id", id_},
                  {"object", req_.chat ? "chat.completion.chunk" : "text_completion"},
                  {"created", created_},
                  {"model", model_},
                  {"choices", json::array({choice})}};
    if (req_.include_usage) {
      chunk["usage"] = req_.continuous_usage_stats
                           ? usage_of(static_cast<int64_t>(s.prompt_ids.size()),
                                      s.completion_tokens, s.cached_tokens)
                           : json();
    }
    send_sse(chunk);
  }

  void finish_sequence(Sequence& s) {
    const LabelValues model = {model_};
    const auto now = Clock::now();
    server_->e2e->observe(model, seconds(now - arrival_));
    server_->request_success->inc({model_, s.finish_reason});
    server_->prompt_tokens->inc(model, static_cast<double>(s.prompt_ids.size()));
    server_->generation_tokens->inc(model, static_cast<double>(s.completion_tokens));
    server_->cached_prompt_tokens->inc(model, static_cast<double>(s.cached_tokens));
    server_->prompt_len->observe(model, static_cast<double>(s.prompt_ids.size()));
    server_->output_len->observe(model, static_cast<double>(s.completion_tokens));
    if (--remaining_ == 0) finalize();
  }

  void finalize() {
    if (failed_) {  // already answered (start() threw)
      auto lease = std::make_shared<BackendCache::Lease>(std::move(lease_));
      server_->io.post_blocking([lease] {});
      return;
    }
    std::string error;
    for (const auto& s : seqs_) {
      if (!s->error.empty()) error = s->error;
    }
    if (req_.stream) {
      ensure_stream();
      if (!error.empty()) {
        send_sse(json::parse(error_json(500, error)));
      }
      if (req_.include_usage) {
        send_sse({{"id", id_},
                  {"object", req_.chat ? "chat.completion.chunk" : "text_completion"},
                  {"created", created_},
                  {"model", model_},
                  {"choices", json::array()},
                  {"usage", total_usage()}});
      }
      ex_->send_chunk("data: [DONE]\n\n");
      ex_->end_stream();
    } else if (!error.empty()) {
      server_->reply(*ex_, route_, error_response(500, error));
    } else {
      json choices = json::array();
      for (const auto& s : seqs_) {
        json c = {{"index", s->index},
                  {"logprobs", req_.logprobs ? s->logprobs : json()},
                  {"finish_reason", s->finish_reason},
                  {"stop_reason", s->stop_reason}};
        if (req_.chat) {
          c["message"] = {{"role", "assistant"}, {"content", s->text}};
          if (tools_) {
            const ParsedToolCalls parsed = tools_->parse(s->text);
            if (parsed.called) {
              c["message"]["content"] = parsed.content.empty() ? json() : json(parsed.content);
              c["message"]["tool_calls"] = tool_calls_json(parsed.calls, false);
              if (s->finish_reason == "stop" || s->finish_reason == "length") {
                c["finish_reason"] = "tool_calls";
              }
            }
          }
        } else {
          c["text"] = req_.echo ? s->prompt_text + s->text : s->text;
          if (req_.prompt_logprobs) c["prompt_logprobs"] = s->prompt_logprobs;
        }
        choices.push_back(std::move(c));
      }
      HttpResponse r;
      json resp = {
          {"id", id_},           {"object", req_.chat ? "chat.completion" : "text_completion"},
          {"created", created_}, {"model", model_},
          {"choices", choices},  {"usage", total_usage()}};
      // One prompt for every choice of a chat: its scores once, as vLLM.
      if (req_.chat && req_.prompt_logprobs && !seqs_.empty()) {
        resp["prompt_logprobs"] = seqs_.front()->prompt_logprobs;
      }
      r.body = dump_json(resp);
      server_->reply(*ex_, route_, std::move(r));
    }
    // Let go of the backend off the I/O thread: if it was evicted meanwhile, this closes it.
    auto lease = std::make_shared<BackendCache::Lease>(std::move(lease_));
    server_->io.post_blocking([lease] {});
  }

  std::shared_ptr<ApiServer::Impl> server_;
  std::shared_ptr<Exchange> ex_;
  GenerationRequest req_;
  BackendCache::Lease lease_;
  ServingBackend* backend_ = nullptr;
  engine::EngineClient* engine_ = nullptr;
  const ServingTokenizer* tok_ = nullptr;
  std::string model_, route_, id_;
  int64_t created_ = 0;
  Clock::time_point arrival_;
  std::vector<std::unique_ptr<Sequence>> seqs_;
  int remaining_ = 0;
  bool stream_started_ = false;
  bool failed_ = false;
  // Chat with tools under --tool-call-parser: the format the answers are read in.
  const ToolCallFormat* tools_ = nullptr;
  std::vector<int32_t> eos_;                        // the tokenizer's end-of-sequence ids
  std::shared_ptr<const OutputConstraint> guided_;  // guided_choice / JSON mode, else null
};

void ApiServer::Impl::handle_generate(const std::shared_ptr<Exchange>& ex, bool chat) {
  if (draining) throw ApiError(503, "the server is shutting down");
  json body = parse_json_body(ex->request().body);
  GenerationRequest req = parse_generation_request(body, chat, opt.max_n);
  const ModelSpec& spec = resolve_model(req.model, &req.lora);
  const std::string route = chat ? "/v1/chat/completions" : "/v1/completions";
  // A full queue is refused before any model load.
  if (waiting_seqs.load() >= static_cast<int64_t>(opt.max_waiting)) {
    throw ApiError(429, "the server's waiting queue is full; retry later", "",
                   {{"Retry-After", std::to_string(opt.retry_after_s)}});
  }
  auto self = shared_from_this();
  with_backend(
      ex, route, spec,
      [self, ex, chat, body = std::move(body),
       req = std::move(req)](BackendCache::Lease lease) mutable {
        // The model's sampling defaults fill the fields the request left out; the
        // request is read again with them, so they are checked as the client's are.
        const json defaults = static_cast<ServingBackend&>(*lease.get()).sampling_defaults();
        bool missing = false;
        for (const auto& [k, v] : defaults.items()) {
          const bool given = body.contains(k) && !body[k].is_null();
          const bool max_given = k == "max_tokens" && body.contains("max_completion_tokens") &&
                                 !body["max_completion_tokens"].is_null();
          if (!given && !max_given) {
            body[k] = v;
            missing = true;
          }
        }
        if (missing) {
          const std::string lora = req.lora;
          req = parse_generation_request(body, chat, self->opt.max_n);
          req.lora = lora;
        }
        self->start_generation(ex, std::move(req), std::move(lease));
      });
}

void ApiServer::Impl::start_generation(const std::shared_ptr<Exchange>& ex, GenerationRequest req,
                                       BackendCache::Lease lease) {
  auto gen = std::make_shared<Generation>(shared_from_this(), ex, std::move(req), std::move(lease));
  gen->start();  // throws ApiError before anything is submitted
}

}  // namespace tessera::serving

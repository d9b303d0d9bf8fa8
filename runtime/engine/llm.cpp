#include "runtime/engine/llm.h"

#include <chrono>
#include <memory>
#include <optional>
#include <unordered_map>

#include "common/error.h"
#include "runtime/engine/output_processor.h"
#include "runtime/tokenizers/incremental_decoder.h"
#include "runtime/tokenizers/tokenizer.h"

namespace tessera::engine {

std::vector<CompletedRequest> generate(EngineCore& core, std::vector<EngineRequest> requests,
                                       const std::function<void(const Progress&)>& progress,
                                       GenerateSummary* summary,
                                       const tokenizers::Tokenizer* tokenizer) {
  if (!core.leader()) {
    core.serve();
    return {};
  }
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  auto now = [&] { return std::chrono::duration<double>(Clock::now() - t0).count(); };
  std::vector<CompletedRequest> results(requests.size());
  Progress prog;
  prog.total = static_cast<int64_t>(requests.size());
  bool finished_any = false;
  const auto before = core.scheduler_stats();
  const auto tokens_before = core.runner().stats().tokens;
  const auto sparse_before = core.runner().stats().sparse;
  // Per request: the streaming detokenizer and the stop strings over its text.
  struct TextState {
    std::optional<tokenizers::IncrementalDecoder> decoder;
    std::optional<OutputProcessor> stops;
    bool stopped = false;
  };
  std::vector<TextState> text(requests.size());
  try {
    for (size_t i = 0; i < requests.size(); ++i) {
      CompletedRequest& res = results[i];
      res.id = requests[i].id;
      res.prompt_ids = requests[i].prompt_ids;
      TextState& ts = text[i];
      const auto& params = requests[i].params;
      std::string refused;
      if (tokenizer != nullptr) {
        ts.decoder.emplace(*tokenizer, res.prompt_ids, params.skip_special_tokens);
        try {
          ts.stops.emplace(params);
        } catch (const Error& e) {
          refused = e.message();
        }
      } else if (!params.stop.empty()) {
        refused = "stop strings need a tokenizer (the model folder's tokenizer.json)";
      }
      if (!refused.empty()) {
        res.finish_reason = "error";
        res.error = "request \"" + res.id + "\": " + refused;
        ++prog.finished;
        finished_any = true;
        continue;
      }
      core.add_request(std::move(requests[i]), [&res, &ts, &prog, &finished_any, &now,
                                                &core](const RequestOutput& o) {
        if (!o.new_token_ids.empty() && res.output_ids.empty()) res.first_token_s = now();
        res.output_ids.insert(res.output_ids.end(), o.new_token_ids.begin(), o.new_token_ids.end());
        res.prompt_logprobs.insert(res.prompt_logprobs.end(), o.prompt_logprobs.begin(),
                                   o.prompt_logprobs.end());
        prog.output_tokens += static_cast<int64_t>(o.new_token_ids.size());
        if (ts.decoder && !ts.stopped) {
          for (int32_t id : o.new_token_ids) {
            const TextDelta d = ts.stops->step(ts.decoder->step(id));
            res.text += d.text;
            if (d.stopped) {
              ts.stopped = true;
              res.stop_index = d.stop_index;
              // The engine knows stop ids, not strings: end the request here (its final output
              // comes with the next step, unless this token already finished it).
              if (!o.finished) core.abort(res.id, scheduler::FinishReason::kStop);
              break;
            }
          }
          if (o.finished && !ts.stopped) {
            const TextDelta d = ts.stops->step(ts.decoder->flush());
            res.text += d.text;
            if (d.stopped) {
              ts.stopped = true;
              res.stop_index = d.stop_index;
            } else {
              res.text += ts.stops->finish();
            }
          }
        }
        if (o.finished) {
          res.finish_reason = ts.stopped && o.finish_reason != "error" ? "stop" : o.finish_reason;
          res.error = o.error;
          res.cached_prompt_tokens = o.cached_prompt_tokens;
          res.finished_s = now();
          ++prog.finished;
          finished_any = true;
        }
      });
    }
    while (core.has_unfinished()) {
      core.step();
      if (finished_any && progress) {
        prog.seconds = now();
        progress(prog);
      }
      finished_any = false;
    }
  } catch (const Error& e) {
    core.fail_workers(e.message());
    throw CollectiveError(e.message(), __FILE__, __LINE__);
  } catch (const std::exception& e) {
    core.fail_workers(e.what());
    throw CollectiveError(e.what(), __FILE__, __LINE__);
  }
  core.release_workers();
  if (summary != nullptr) {
    const auto after = core.scheduler_stats();
    GenerateSummary& s = *summary;
    s = {};
    s.seconds = now();
    s.requests = static_cast<int64_t>(results.size());
    for (const auto& r : results) {
      if (r.finish_reason == "error") ++s.failed;
      s.prompt_tokens += static_cast<int64_t>(r.prompt_ids.size());
      s.output_tokens += static_cast<int64_t>(r.output_ids.size());
    }
    s.computed_tokens = core.runner().stats().tokens - tokens_before;
    s.steps = after.steps - before.steps;
    s.preemptions = after.preemptions - before.preemptions;
    s.prefix_hit_tokens = after.prefix_hit_tokens - before.prefix_hit_tokens;
    const auto& sp = core.runner().stats().sparse;
    s.sparse.rows = sp.rows - sparse_before.rows;
    s.sparse.tokens_read = sp.tokens_read - sparse_before.tokens_read;
    s.sparse.tokens_context = sp.tokens_context - sparse_before.tokens_context;
    s.sparse.kv_bytes_read = sp.kv_bytes_read - sparse_before.kv_bytes_read;
    s.sparse.kv_bytes_dense = sp.kv_bytes_dense - sparse_before.kv_bytes_dense;
  }
  return results;
}

}  // namespace tessera::engine

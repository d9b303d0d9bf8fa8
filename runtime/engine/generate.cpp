#include "runtime/engine/generate.h"

#include <torch/types.h>

#include <chrono>
#include <memory>
#include <optional>

#include "common/error.h"
#include "common/logging.h"
#include "runtime/models/decoder_model.h"
#include "runtime/models/model_folder.h"
#include "runtime/tokenizer.h"
#include "sharding/communicator.h"

namespace tessera::engine {

namespace {

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// Runs `fn` on every rank; if any rank throws, every rank throws the lowest failing rank's
// message (agreed over `comm`), so no rank is left waiting in a collective.
template <typename Fn>
void on_all_ranks(sharding::Communicator* comm, Fn&& fn) {
  std::string err;
  try {
    fn();
  } catch (const Error& e) {
    err = e.message();
  } catch (const std::exception& e) {
    err = e.what();
  }
  if (comm != nullptr) err = comm->agree_on_error(err);
  if (!err.empty()) throw CollectiveError(err, __FILE__, __LINE__);
}

}  // namespace

GenerateResult generate(const GenerateRequest& req, sharding::Communicator* comm) {
  TESSERA_CHECK(req.max_tokens >= 0, "max_tokens must be >= 0, got ", req.max_tokens);
  TESSERA_CHECK(req.prefill_chunk > 0, "prefill_chunk must be positive, got ", req.prefill_chunk);
  const int rank = comm ? comm->rank() : 0;
  GenerateResult res;
  res.tp_size = comm ? comm->size() : 1;
  const auto t_load = Clock::now();

  // Rank 0 writes the built-in model first (others would only redo identical work).
  std::optional<models::ModelFolder> folder;
  if (rank == 0 || req.model != "tiny") {
    on_all_ranks(comm, [&] { folder = models::ModelFolder::resolve(req.model); });
  } else {
    on_all_ranks(comm, [] {});
  }
  models::ModelConfig config;
  std::unique_ptr<models::DecoderModel> model;
  runtime::ByteTokenizer tokenizer;
  on_all_ranks(comm, [&] {
    if (!folder) folder = models::ModelFolder::resolve(req.model);
    res.model_dir = folder->dir();
    config = models::ModelConfig::from_file(folder->config_json());
    config.check_tensor_parallel(res.tp_size);
    TESSERA_CHECK(config.vocab_size >= runtime::ByteTokenizer::kVocabSize, "model '", req.model,
                  "' has vocab_size=", config.vocab_size,
                  " but only the byte tokenizer (258 ids) is available so far");
    models::WeightLoader weights(*folder);
    model = std::make_unique<models::DecoderModel>(config, weights, comm);
    res.weight_bytes_read = weights.bytes_loaded();
    res.prompt_ids = tokenizer.encode(req.prompt);
    // Compared without forming the sum: max_tokens may be as large as INT64_MAX.
    const int64_t prompt_tokens = static_cast<int64_t>(res.prompt_ids.size());
    TESSERA_CHECK(prompt_tokens <= config.max_position_embeddings &&
                      req.max_tokens <= config.max_position_embeddings - prompt_tokens,
                  "prompt (", prompt_tokens, " tokens) + max_tokens (", req.max_tokens,
                  ") exceeds max_position_embeddings=", config.max_position_embeddings);
  });
  res.load_ms = ms_since(t_load);

  const int64_t prompt_len = static_cast<int64_t>(res.prompt_ids.size());
  const int64_t max_len = prompt_len + std::max<int64_t>(req.max_tokens, 1);
  caches::ContiguousKVCache cache(
      model->cache_config(1, max_len, std::min(req.prefill_chunk, prompt_len)));
  res.kv_cache_bytes = cache.config().kv_bytes();
  torch::NoGradGuard no_grad;

  // Greedy choice on rank 0, broadcast to the group (the leader samples; every rank must feed the
  // same token even if logits differed in the last bit).
  auto choose = [&](const torch::Tensor& last_logits) {
    torch::Tensor next = last_logits.argmax(-1).reshape({1}).to(torch::kLong).contiguous();
    if (comm != nullptr && comm->size() > 1) comm->broadcast(next, 0);
    return next.item<int64_t>();
  };

  const auto t_prefill = Clock::now();
  auto ids = torch::tensor(res.prompt_ids, torch::kLong).view({1, -1});
  auto pos = torch::arange(prompt_len, torch::kLong).view({1, -1});
  torch::Tensor logits;
  for (int64_t start = 0; start < prompt_len; start += req.prefill_chunk) {
    const int64_t n = std::min(req.prefill_chunk, prompt_len - start);
    logits = model->forward(ids.narrow(1, start, n), pos.narrow(1, start, n), cache);
  }
  res.prefill_ms = ms_since(t_prefill);

  const auto t_decode = Clock::now();
  for (int64_t i = 0; i < req.max_tokens; ++i) {
    const int64_t next = choose(logits[0][-1]);
    res.output_ids.push_back(next);
    if (req.stop_at_eos && next == config.eos_token_id) break;
    if (i + 1 == req.max_tokens) break;
    auto tok = torch::full({1, 1}, next, torch::kLong);
    auto p = torch::full({1, 1}, prompt_len + i, torch::kLong);
    logits = model->forward(tok, p, cache);
  }
  res.decode_ms = ms_since(t_decode);
  res.text = tokenizer.decode(res.output_ids);
  log::info("generated {} tokens: prefill {:.1f} ms, decode {:.1f} ms", res.output_ids.size(),
            res.prefill_ms, res.decode_ms);
  return res;
}

}  // namespace tessera::engine

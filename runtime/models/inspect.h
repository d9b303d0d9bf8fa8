// `tessera inspect`: what a model costs in memory, from its folder alone (config.json and the
// safetensors headers; no weights read, no torch). Per layer: parameter bytes per dtype as stored,
// and KV-cache bytes per token as the cache specs of caches/ size them (full attention, sliding
// window); per tensor-parallel rank, for a weight dtype, KV format and context length: the weights,
// the KV cache of `batch` sequences at max_model_len, and their sum.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "caches/kv_cache_spec.h"
#include "common/dtype.h"

namespace tessera::models {

struct InspectOptions {
  int tp = 1;
  std::optional<DType> dtype;  // weights (and KV) in this dtype; default: as stored
  caches::KVQuant kv_quant = caches::KVQuant::kNone;
  int64_t max_model_len = 0;  // default: the config's max_position_embeddings
  int64_t batch = 1;          // sequences of max_model_len held at once
  // Tokens one step computes (chunked prefill): bounds what a sliding-window layer holds beside its
  // window. Default: min(max_model_len, 2048).
  int64_t max_num_batched_tokens = 0;
  int64_t block_size = 16;  // KV cache page size in tokens
};

struct InspectLayer {
  std::string name;  // "layer 3", or "embed_tokens", "lm_head", "norm", "other"
  struct Bytes {
    int64_t params = 0;
    int64_t bytes = 0;
  };
  std::map<std::string, Bytes> by_dtype;  // as stored, keyed by dtype name
  int64_t params = 0;
  int64_t params_per_rank = 0;        // split by tp where the decoder splits it
  int64_t weight_bytes_per_rank = 0;  // in options.dtype (as stored by default)
  // Decoder layers only (0 otherwise).
  std::string kv_spec;                  // caches' description of the layer's spec (one rank)
  int64_t kv_bytes_per_token = 0;       // whole model width (all KV heads)
  int64_t kv_bytes_per_token_rank = 0;  // one rank's KV heads
  int64_t kv_bytes_per_rank = 0;        // one rank, batch sequences at max_model_len
};

struct InspectReport {
  std::string model_dir;
  std::string model_type;
  int64_t num_layers = 0;
  InspectOptions options;
  std::string weight_dtype;  // the dtype of the per-rank estimate ("as stored" when mixed)
  std::string kv_dtype;      // KV elements: a float dtype or int8 / fp8_e4m3
  std::vector<InspectLayer> layers;
  std::map<std::string, InspectLayer::Bytes> total_by_dtype;
  int64_t params = 0;
  int64_t weight_bytes_per_rank = 0;
  int64_t kv_bytes_per_token = 0;       // all layers, whole model
  int64_t kv_bytes_per_token_rank = 0;  // all layers, one rank
  int64_t kv_bytes_per_rank = 0;
  int64_t total_bytes_per_rank() const { return weight_bytes_per_rank + kv_bytes_per_rank; }
  nlohmann::json to_json() const;
  std::string table() const;
};

// `model`: "tiny" or a model folder (models::ModelFolder). Throws one line naming the field when
// tp does not divide the heads or the MLP, or an option is out of range.
InspectReport inspect_model(const std::string& model, const InspectOptions& options);

// Whether the decoder splits this tensor over tensor-parallel ranks (q/k/v/o projections and
// their biases, gate/up/down projections); everything else is replicated.
bool is_tensor_parallel(const std::string& name);

}  // namespace tessera::models

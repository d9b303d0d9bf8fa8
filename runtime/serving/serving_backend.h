// What the backend cache holds for the API server: an engine, its tokenizer, and (for encoder
// models, which the models branch adds) an embedder. A backend without an embedder answers
// /v1/embeddings with "model is not an encoder"; one without an engine refuses generation.
#pragma once

#include <nlohmann/json.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/engine/engine_client.h"
#include "runtime/serving/backend_cache.h"
#include "runtime/serving/tokenizer.h"

namespace tessera::serving {

// The hook for encoder models: token ids in, one vector per input out (callback on any thread).
class EmbeddingClient {
 public:
  virtual ~EmbeddingClient() = default;
  using Done = std::function<void(std::vector<std::vector<float>> vectors, std::string error)>;
  virtual void embed(std::vector<std::vector<int32_t>> inputs, Done done) = 0;
  virtual int64_t max_input_len() const = 0;
  virtual int64_t dimensions() const = 0;  // the width of each vector
  // A sequence-classification head (/classify): its labels in id order (empty: none), its score
  // function ("softmax" / "sigmoid") and the logits of each input.
  virtual std::vector<std::string> labels() const { return {}; }
  virtual std::string score_function() const { return "softmax"; }
  virtual void classify(std::vector<std::vector<int32_t>> inputs, Done done) {
    (void)inputs;
    done({}, "the model has no sequence-classification head");
  }
};

class ServingBackend : public Backend {
 public:
  virtual engine::EngineClient* engine() = 0;  // nullptr: encoder only
  virtual const ServingTokenizer& tokenizer() const = 0;
  virtual EmbeddingClient* embedder() { return nullptr; }
  // Requests to an adapter's backend carry this LoRA name (an engine may serve several adapters).
  virtual std::string lora() const { return ""; }
  // Sampling fields a request that leaves them out gets (vLLM's generation_config defaults: the
  // model folder's generation_config.json), e.g. {"temperature": 0.6, "top_p": 0.9}; "max_tokens"
  // for its max_new_tokens. Empty: the API's own defaults.
  virtual nlohmann::json sampling_defaults() const { return nlohmann::json::object(); }
};

using ServingBackendLoader = std::function<std::shared_ptr<ServingBackend>(const ModelSpec&)>;

}  // namespace tessera::serving

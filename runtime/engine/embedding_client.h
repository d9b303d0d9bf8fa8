// Encoder models (BERT, ModernBERT) behind a torch-free seam for serving and the CLI: token ids
// (or texts, tokenized as sentence-transformers tokenizes them) in, one vector per input out — a
// sentence embedding pooled and normalised as the model folder's sentence-transformers modules
// say, or a sequence classifier's logits. Requests from any thread are queued and run in packed
// batches (no padding) of up to max_batch_tokens; under tensor parallelism the leader broadcasts
// each batch to the group, whose other ranks run EncoderService::serve() meanwhile.
//
// Serving's hook (runtime/serving/serving_backend.h, serving::EmbeddingClient) has the signature
// of EmbeddingClient::embed and max_input_len(): an adapter forwards both.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tessera::sharding {
class Communicator;
}

namespace tessera::engine {

struct EncoderInput {
  std::vector<int32_t> ids;          // special tokens included
  std::vector<int32_t> token_types;  // empty = all 0
  int64_t prompt_length = 0;         // leading prompt tokens (left out of pooling when the
                                     // model's Pooling says include_prompt = false)
  std::string lora;                  // a named adapter of EncoderOptions::loras ("" = none)
};

enum class EncoderTask : uint8_t { kEmbed, kClassify };

// One input's classifier logits as probabilities, as the head's score function says (EncoderInfo::
// score_function): "sigmoid" per label, otherwise a softmax over the labels (max-shifted, in
// double). `tessera classify` and the server's /classify both use it.
inline std::vector<double> classifier_scores(const std::vector<float>& logits,
                                             const std::string& score_function) {
  std::vector<double> p(logits.size());
  if (logits.empty()) return p;
  if (score_function == "sigmoid") {
    for (size_t i = 0; i < logits.size(); ++i) p[i] = 1.0 / (1.0 + std::exp(-double(logits[i])));
    return p;
  }
  const double m = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (size_t i = 0; i < logits.size(); ++i) sum += p[i] = std::exp(double(logits[i]) - m);
  for (auto& x : p) x /= sum;
  return p;
}

struct EncoderOptions {
  std::string model;                 // a Hugging Face / sentence-transformers folder
  int64_t load_memory_budget = 0;    // bytes; 0 = unbounded (WeightLoadOptions::memory_budget)
  bool load_progress = false;        // progress bar on stderr while loading (leader only)
  std::string attention;             // "" = the config's (dense unless tessera_attention says),
                                     // "dense" or "cluster"
  int64_t cluster_size = 0;          // 0 = the config's / default
  int64_t nearest_clusters = 0;      // 0 = the config's / default
  int64_t max_batch_tokens = 16384;  // tokens per packed forward
  int device = -1;                   // CUDA device index, -1 = CPU
  std::string lora;                  // a PEFT LoRA folder merged into the weights ("" = none;
                                     // BERT), read by every rank
  // Named adapters (NAME, PATH) kept unmerged: each input picks one (EncoderInput::lora) and a
  // batch mixes them through the segmented LoRA kernel. Not together with `lora`.
  std::vector<std::pair<std::string, std::string>> loras;
};

struct EncoderInfo {
  std::string model_dir;     // the folder holding config.json and the weights
  std::string model_type;    // "bert", "modernbert"
  std::string architecture;  // architectures[0]
  int64_t hidden_size = 0;
  int64_t dimensions = 0;     // embedding width (pooling modes x hidden_size)
  int64_t max_input_len = 0;  // tokens per input after truncation (specials included)
  std::string pooling;        // "mean", "cls", "cls+max", ...
  bool normalize = false;
  bool include_prompt = true;
  std::string attention;     // "dense" or "cluster"
  int64_t weight_bytes = 0;  // this rank's
  int tp_size = 1;
  // Sequence classification (has_classifier): labels in id order, the score function
  // ("softmax" / "sigmoid") and the config's problem_type ("unset" when absent).
  bool has_classifier = false;
  std::vector<std::string> labels;
  std::string score_function;
  std::string problem_type;
  std::string lora;  // the merged adapter's folder ("" = none)
};

class EmbeddingClient {
 public:
  // vectors: one per input, in input order; error: "" or one line naming the input and cause.
  using Done = std::function<void(std::vector<std::vector<float>> vectors, std::string error)>;
  virtual ~EmbeddingClient() = default;

  // Queues inputs; `done` runs on the thread that runs the batch (the service's loop). A bad
  // input (unknown id, too long, ...) fails its request alone.
  virtual void submit(EncoderTask task, std::vector<EncoderInput> inputs, Done done) = 0;
  // Token ids -> sentence embeddings (serving::EmbeddingClient's signature).
  void embed(std::vector<std::vector<int32_t>> inputs, Done done);
  virtual const EncoderInfo& info() const = 0;
  int64_t max_input_len() const { return info().max_input_len; }

  // Text -> ids as sentence-transformers tokenizes: `prompt` prepended, whitespace stripped,
  // lowercased when sentence_bert_config.json says do_lower_case, special tokens added and the
  // whole truncated to max_input_len (the last special tokens kept). prompt_length counts the
  // prompt's tokens with the leading special token, as SentenceTransformer.encode does.
  virtual EncoderInput tokenize(std::string_view text, const std::string& prompt = "") const = 0;
  // The prompt text of a prompt name ("" = the model's default prompt, "" when it has none).
  virtual std::string prompt(const std::string& prompt_name) const = 0;
};

// The service every rank of the tensor-parallel group constructs (collectively: a checkpoint or
// config error on any rank is agreed and thrown as tessera::CollectiveError on all). The leader
// (tp rank 0, or no group) takes requests; the other ranks call serve().
class EncoderService final : public EmbeddingClient {
 public:
  // `control` spans the same ranks as `tp` over CPU tensors (MPI) for the batch broadcast; null:
  // `tp` itself.
  EncoderService(const EncoderOptions& options, sharding::Communicator* tp,
                 sharding::Communicator* control = nullptr);
  ~EncoderService() override;  // stop() on the leader

  bool leader() const;
  void submit(EncoderTask task, std::vector<EncoderInput> inputs, Done done) override;
  const EncoderInfo& info() const override;
  EncoderInput tokenize(std::string_view text, const std::string& prompt = "") const override;
  std::string prompt(const std::string& prompt_name) const override;
  // The mean loss transformers' *ForSequenceClassification computes for these logits (one row
  // per input, from EncoderTask::kClassify) and labels: class ids (integer_labels, one per
  // input), or values (one per input for one label, else one per label). Throws naming the
  // label that does not fit.
  double classifier_loss(const std::vector<std::vector<float>>& logits,
                         const std::vector<std::vector<double>>& labels, bool integer_labels) const;

  // Leader: runs everything queued on this thread (batched), then returns. The blocking form
  // queues and runs at once; it throws the request's error (use it when nothing runs the loop).
  void run_pending();
  std::vector<std::vector<float>> run(EncoderTask task, std::vector<EncoderInput> inputs);
  // Leader: runs the loop on a thread of its own (for a single rank, or an MPI library that
  // allows it), or on this one until stop().
  void start();
  void run_loop();
  // Leader: ends the loop and releases the other ranks' serve().
  void stop();
  // Other ranks: follow the leader's batches until it stops.
  void serve();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera::engine

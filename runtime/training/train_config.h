// Configuration of a training run (`tessera train`): read from a JSON or TOML file and/or flags,
// each key checked by name and value, so a typo or a bad value ends the run with one line before
// anything is built. Torch-free.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace tessera::training {

enum class OptimizerKind { kAdamW, kSgd };
const char* optimizer_name(OptimizerKind kind);

struct TrainConfig {
  // --- what is trained ---------------------------------------------------------------------------
  std::string model = "digits";  // "digits" (cluster-attention classifier) | "lm" (decoder)
  std::string data;              // data file; "" = the model's default (see default_data_path)
  // Classifier shape (model "digits").
  int64_t dim = 48;
  int64_t depth = 2;
  int64_t heads = 4;
  int64_t mlp_ratio = 2;
  int64_t cluster_size = 8;  // tokens per cluster (balanced Hilbert clusters)
  int64_t nearest = 3;       // k nearest clusters each token attends to
  bool augment = false;      // random shifts by up to one pixel (keyed by sample position)
  // Decoder shape (model "lm").
  int64_t lm_layers = 2;
  int64_t lm_hidden = 128;
  int64_t lm_heads = 4;
  int64_t lm_kv_heads = 2;
  int64_t lm_intermediate = 256;
  int64_t seq_len = 128;
  int64_t lm_window = 0;  // sliding window of the odd layers (0 = every layer full), as the tiny
                          // model's full / sliding(16) alternation

  // --- schedule ----------------------------------------------------------------------------------
  int64_t steps = 100;
  int64_t global_batch = 64;  // samples (classifier) or sequences (lm) per optimizer step
  int64_t micro_batch = 0;    // per rank and forward; 0 = global_batch / dp (no accumulation)
  OptimizerKind optimizer = OptimizerKind::kAdamW;
  double lr = 3e-3;
  double min_lr = 0.0;  // the cosine's floor
  int64_t warmup_steps = 0;
  double weight_decay = 0.0;  // decoupled (AdamW) / L2 (SGD); matrices only
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double momentum = 0.9;   // SGD
  double clip_grad = 0.0;  // max global gradient norm; 0 = off
  bool bf16 = false;       // CPU bf16 autocast for the forward
  uint64_t seed = 0;

  // --- parallelism -------------------------------------------------------------------------------
  int64_t tp = 1;          // tensor-parallel ranks (heads and MLP split)
  bool zero = false;       // ZeRO-1: optimizer state sharded over the data-parallel ranks
  double bucket_mb = 1.0;  // gradient bucket cap (MiB)

  // --- output ------------------------------------------------------------------------------------
  std::string checkpoint_dir;     // "" = no checkpoints
  int64_t checkpoint_every = 0;   // steps; 0 = only at the end (when checkpoint_dir is set)
  int64_t keep_checkpoints = 1;   // complete checkpoints kept (older ones removed after a new one)
  bool resume = false;            // continue from checkpoint_dir's latest checkpoint
  std::string log;                // JSONL loss log ("" = none)
  int64_t eval_every = 0;         // classifier test accuracy every N steps (0 = at the end only)
  std::string progress = "auto";  // "auto" (a bar when stderr is a terminal) | "on" | "off"

  // Keys as in the config file / flag names with '-' → '_'. Unknown keys, wrong types and bad
  // values throw naming the key and the value.
  static TrainConfig from_json(const nlohmann::json& j, const TrainConfig& base);
  static TrainConfig from_json(const nlohmann::json& j) { return from_json(j, TrainConfig()); }
  // A .json or .toml file (chosen by extension; TOML: `key = value` lines, # comments, strings,
  // numbers, booleans, and [section] headers whose keys are read as section.key, which no key
  // here has).
  static nlohmann::json read_file(const std::string& path);
  nlohmann::json to_json() const;
  // Checks the values on their own (positivity, ranges, names). Throws naming the key.
  void validate() const;
  // Checks what depends on the job: world_size = dp * tp; global_batch divisible by
  // dp * micro_batch. Returns the accumulation steps. Throws naming the numbers.
  int64_t accumulation_steps(int world_size) const;
  int64_t micro_batch_for(int world_size) const;
};

// The default data file of a model: sklearn's digits for "digits" (Debian's python3-sklearn, else
// a scikit-learn of a python3 on PATH), the KJV text for "lm".
std::string default_data_path(const std::string& model);
// The digits file: `debian_path` if it exists, else sklearn/datasets/data/digits.csv.gz under
// lib/python3*/{site,dist}-packages of the parent of a `path_env` directory (a venv's bin/), of
// /usr/local or of /usr; `debian_path` when none has it (the error then names the usual place).
std::string find_sklearn_digits(const std::string& debian_path, const char* path_env);

// Learning rate at optimizer step `step` (0-based): linear warm-up to `lr` over warmup_steps, then
// a half cosine from lr to min_lr over the remaining steps.
double learning_rate(const TrainConfig& c, int64_t step);

}  // namespace tessera::training

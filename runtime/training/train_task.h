// What the trainer trains: a model with its data. The trainer asks for the loss of a micro-batch
// by its position in the global sample stream (so any split over ranks sees the same samples),
// and for evaluation metrics now and then. One implementation per model (digits classifier,
// decoder LM).
#pragma once

#include <torch/types.h>

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "runtime/training/sharded_params.h"
#include "runtime/training/train_config.h"
#include "sharding/communicator.h"

namespace tessera::training {

class TrainTask {
 public:
  virtual ~TrainTask() = default;
  virtual ShardedParams& params() = 0;
  // Mean loss over the samples at stream positions [begin, begin + count) (scalar, float32).
  virtual torch::Tensor loss(int64_t begin, int64_t count) = 0;
  // Units the throughput counts: samples (1 per sample) or tokens (per sequence).
  virtual int64_t units_per_sample() const { return 1; }
  virtual const char* unit_name() const { return "samples"; }
  // Metrics on held-out data; collective over `world` (each data-parallel rank takes its share).
  virtual nlohmann::json evaluate(sharding::Communicator& world, int dp_rank, int dp_size) = 0;
  // config.json of the checkpoint.
  virtual nlohmann::json model_config() const = 0;
  // Called after the parameters were loaded from a checkpoint or changed by the optimizer.
  virtual void parameters_changed() {}
};

// The task for config.model: "digits" (digits_task.cpp) or "lm".
std::unique_ptr<TrainTask> make_digits_task(const TrainConfig& config, sharding::Communicator* tp);
std::unique_ptr<TrainTask> make_lm_task(const TrainConfig& config, sharding::Communicator* tp);
std::unique_ptr<TrainTask> make_task(const TrainConfig& config, sharding::Communicator* tp);

}  // namespace tessera::training

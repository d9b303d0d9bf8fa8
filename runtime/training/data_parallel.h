// Data-parallel training state: the parameters live in flat per-bucket buffers, their gradients
// are views into flat gradient buckets, and an autograd post-hook on every parameter's gradient
// accumulator marks it ready during backward. A bucket whose parameters are all ready is reduced
// at once through the Communicator's asynchronous collectives (in bucket order, the same on every
// rank), so communication overlaps the rest of the backward; finish_backward() waits for what is
// still in flight before the optimizer step.
//   DDP:    all-reduce each bucket; every rank steps the whole model.
//   ZeRO-1: reduce-scatter each bucket (padded to a multiple of the data-parallel size), each rank
//           keeps optimizer state for and steps only its 1/dp part of every bucket, then the
//           updated parameters are all-gathered.
// Buckets hold parameters in reverse registration order (about the order backward produces
// their gradients, as in PyTorch DDP), capped at bucket_mb, and never mix tensor-parallel-sharded
// parameters with replicated ones (the global gradient norm counts the former over the TP group
// and the latter once).
#pragma once

#include <torch/types.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "runtime/training/train_config.h"
#include "sharding/communicator.h"

namespace tessera::training {

struct ParamInfo {
  std::string name;
  torch::Tensor param;      // fp32 leaf that requires grad
  bool tp_sharded = false;  // this rank holds a slice that differs from the other TP ranks'
  bool decay = false;       // weight decay applies (matrices)
};

struct OptimizerOptions {
  OptimizerKind kind = OptimizerKind::kAdamW;
  double weight_decay = 0.0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double momentum = 0.9;
  double clip_grad = 0.0;  // 0 = no clipping
  double bucket_mb = 1.0;
  bool zero = false;
};

// Seconds spent per phase, summed since the last reset (for `tessera bench train`).
struct DataParallelTimes {
  double exposed_comm_s = 0;  // waiting for reductions after backward returned
  double step_s = 0;          // clipping, optimizer step, ZeRO all-gather
  int64_t buckets_launched_in_backward = 0;
  int64_t buckets_launched_after = 0;
};

class DataParallel {
 public:
  // `dp` (data-parallel group) and `tp` (tensor-parallel group) may be null for a single rank.
  // Moves every parameter into the flat buffers (param.set_data), so call it before training.
  DataParallel(std::vector<ParamInfo> params, const OptimizerOptions& options,
               sharding::Communicator* dp, sharding::Communicator* tp);
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  // Before each micro-batch's backward: `sync` = the last micro-batch of the step (only its
  // backward reduces gradients; earlier ones accumulate locally, like DDP's no_sync()).
  void prepare_backward(bool sync);
  // After each micro-batch's backward: on the sync one, launches the buckets no hook launched
  // (unused parameters) and waits for every reduction. With `overlap` false, nothing was launched
  // during backward and everything is reduced here (the baseline `tessera bench train` measures).
  void finish_backward();
  void set_overlap(bool on) { overlap_ = on; }
  // Measurement only (`tessera bench train`): a barrier before the exposed wait is timed, so that
  // exposed_comm_s counts communication left after every rank's backward ended, not the time a
  // fast rank waits for a slow one.
  void set_align_before_wait(bool on) { align_ = on; }

  // Clips to the global gradient norm (when clip_grad > 0), steps the optimizer with learning rate
  // `lr`, all-gathers the parameters (ZeRO) and zeroes the gradients. Returns the global gradient
  // norm before clipping.
  double step(double lr);
  int64_t optimizer_steps() const { return steps_; }

  // Optimizer state as full per-parameter tensors ("exp_avg.<name>", "exp_avg_sq.<name>" or
  // "momentum_buffer.<name>") in registration order. Collective over dp with ZeRO (gathers).
  std::vector<std::pair<std::string, torch::Tensor>> optimizer_state();
  // The inverse; throws naming a missing or mis-shaped entry.
  void load_optimizer_state(const std::vector<std::pair<std::string, torch::Tensor>>& state,
                            int64_t steps);

  const std::vector<ParamInfo>& params() const { return params_; }
  int num_buckets() const { return static_cast<int>(buckets_.size()); }
  // Parameter names of bucket b, in the order they sit in it.
  std::vector<std::string> bucket_names(int b) const;
  DataParallelTimes& times() { return times_; }

 private:
  struct Bucket;
  void on_grad_ready(int param_index);
  void launch_ready();
  void launch(int b);
  void poll();
  void wait_all();
  double grad_norm_sq();

  std::vector<ParamInfo> params_;
  OptimizerOptions opt_;
  sharding::Communicator* dp_ = nullptr;
  sharding::Communicator* tp_ = nullptr;
  int dp_size_ = 1, dp_rank_ = 0;
  std::vector<std::unique_ptr<Bucket>> buckets_;
  std::vector<int> bucket_of_;                            // per parameter
  std::vector<std::shared_ptr<void>> grad_accumulators_;  // keeps the hooked nodes alive
  bool sync_ = false;
  bool overlap_ = true;
  bool align_ = false;
  bool in_backward_ = false;
  int next_launch_ = 0;
  int64_t steps_ = 0;
  DataParallelTimes times_;
};

}  // namespace tessera::training

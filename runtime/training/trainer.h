// The training loop behind `tessera train`: process groups (dp x tp) from the world, the task,
// data parallelism with overlapped gradient reduction (DataParallel, ZeRO-1 optional), micro-batch
// accumulation, warm-up + cosine learning rate, global-norm clipping, optional bf16 autocast,
// checkpoints every N steps (and on a preemption warning), --resume, a JSONL loss log and a
// progress bar. Every rank runs it; rank 0 reports.
#pragma once

#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "runtime/training/train_config.h"
#include "sharding/communicator.h"

namespace tessera::training {

// Exit status of a run that checkpointed and stopped because it was asked to (a preemption
// warning, SIGTERM): the job may be requeued with --resume.
inline constexpr int kPreemptedExitCode = 76;

struct TrainHooks {
  // Polled on every rank at each step boundary; when any rank says true, the run writes a
  // checkpoint (if it has a checkpoint_dir) and returns with preempted = true. The seam for
  // launch/signals (SIGUSR1 / SIGTERM as flags).
  std::function<bool()> stop_requested;
  // Called on rank 0 after every step with the JSON record written to the log.
  std::function<void(const nlohmann::json&)> on_step;
};

struct TrainResult {
  int64_t first_step = 0;  // 0, or the checkpoint's step when resumed
  int64_t steps_done = 0;  // the step count reached
  double last_loss = 0;
  nlohmann::json metrics;  // the last evaluation
  bool preempted = false;
  double seconds = 0;
  std::string last_checkpoint;
};

// Collective over `world` (an MPI communicator). Throws CollectiveError for bad configs and a
// non-finite loss (every rank together, one message).
TrainResult train(const TrainConfig& config, sharding::Communicator& world,
                  const TrainHooks& hooks = {});

}  // namespace tessera::training

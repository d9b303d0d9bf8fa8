// The leader's messages to the other ranks of its tensor-parallel group, over the group's
// Communicator: each engine step's plan as bytes (scheduler::StepPlan::encode), "done" when a
// generation ends (the workers return to their caller), or an error that ends the group together.
// A message is a broadcast of its header [kind, length] (int64) and then, if any, of its bytes.
// While the engine is idle the leader pings the group now and then (a header, then a barrier):
// the other ranks wait for plans inside a collective the watchdog watches, so without pings an
// idle group would be ended by its own watchdog, and a stopped or dead rank of an idle group
// would go unnoticed until the next request.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <torch/types.h>

#include "sharding/communicator.h"

namespace tessera::engine {

class PlanChannel {
 public:
  enum class Kind : int64_t { kPlan = 1, kDone = 2, kError = 3, kPing = 4 };
  struct Message {
    Kind kind = Kind::kDone;
    std::vector<uint8_t> bytes;  // the plan, or the error text
  };

  // `comm` spans the group, root = its rank 0 (null or size 1: nothing to send).
  explicit PlanChannel(sharding::Communicator* comm);

  bool active() const { return comm_ != nullptr; }
  // Leader (rank 0 of the group).
  void send(Kind kind, std::span<const uint8_t> bytes = {});
  void send_error(const std::string& message);
  // A ping, then a barrier of the group (every rank answers or the watchdog ends the job).
  void ping();
  // The other ranks: blocks until the leader's next message (a ping's barrier is done here).
  Message receive();

  int64_t messages() const { return messages_; }
  int64_t bytes_sent() const { return bytes_; }

 private:
  sharding::Communicator* comm_ = nullptr;
  torch::Tensor header_;  // [2] int64
  torch::Tensor payload_;
  int64_t messages_ = 0;
  int64_t bytes_ = 0;
};

}  // namespace tessera::engine

// The engine behind the thread-safe EngineClient (runtime/engine/engine_client.h) that serving
// codes against: requests and aborts from any thread are queued and taken in by the engine loop
// between steps; outputs go to the requests' callbacks on the engine thread. The loop runs on a
// thread of its own (start()) or on the caller's (run(), e.g. the main thread when MPI allows
// only that one to communicate); the other ranks of the group serve plans meanwhile.
#pragma once

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "runtime/engine/engine_client.h"
#include "runtime/engine/engine_core.h"

namespace tessera::engine {

class AsyncEngine final : public EngineClient {
 public:
  // `core` must be the group's leader.
  explicit AsyncEngine(EngineCore& core);
  ~AsyncEngine() override;  // stop() + join

  void add_request(EngineRequest request,
                   std::function<void(const RequestOutput&)> on_output) override;
  void abort(const std::string& id) override;
  EngineStats stats() const override;
  int64_t max_model_len() const override { return max_model_len_; }

  // Runs the loop on a new thread.
  void start();
  // Runs the loop on this thread until stop(); then releases the other ranks. Rethrows what the
  // loop threw (after telling the other ranks).
  void run();
  // Ends the loop after the current step (requests still in flight are aborted).
  void stop();

 private:
  struct Pending {
    EngineRequest request;
    std::function<void(const RequestOutput&)> on_output;
  };
  void loop();

  EngineCore& core_;
  const int64_t max_model_len_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Pending> pending_;
  std::deque<std::string> aborts_;
  bool stop_ = false;
  EngineStats stats_{};
  std::thread thread_;
  std::exception_ptr error_;
};

}  // namespace tessera::engine
